//! `Osd.Read` answered without copying the object's bytes into the reply message.
//!
//! tonic encodes a reply into one buffer, which copies every byte read (a sequential read's
//! megabytes). This layer in front of the generated service answers `Osd.Read` itself: the
//! reply's gRPC frame is written as a short prefix (the frame header, the other fields and the
//! data field's key and length) followed by the read's own buffer as a second body chunk,
//! which HTTP/2 sends without copying it (a protobuf field may come in any order, so the
//! client decodes it as any other reply). Every other call, and a request this layer cannot
//! parse, goes to the generated service as before; errors are answered as tonic answers them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use shoal_proto::osd::{ReadReply, ReadRequest};
use tonic::body::BoxBody;
use tonic::server::NamedService;
use tonic::Status;

use crate::daemon::Osd;

/// The path of the call this layer answers.
const READ_PATH: &str = "/shoal.osd.Osd/Read";

/// Largest read request body taken (a request is an object name and three numbers).
const REQUEST_MAX: usize = 64 << 10;

/// The generated OSD service `S`, with `Osd.Read` answered by [`FastRead`] itself.
#[derive(Clone)]
pub struct FastRead<S> {
    inner: S,
    osd: Arc<Osd>,
}

impl<S> FastRead<S> {
    /// Wraps `inner`, reading from `osd`.
    pub fn new(inner: S, osd: Arc<Osd>) -> FastRead<S> {
        FastRead { inner, osd }
    }
}

impl<S: NamedService> NamedService for FastRead<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower_service::Service<http::Request<BoxBody>> for FastRead<S>
where
    S: tower_service::Service<
            http::Request<BoxBody>,
            Response = http::Response<BoxBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let plain = req.uri().path() != READ_PATH
            || req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|e| e != "identity");
        if plain {
            return Box::pin(self.inner.call(req));
        }
        let osd = self.osd.clone();
        Box::pin(async move { Ok(read(osd, req).await.unwrap_or_else(Status::into_http)) })
    }
}

/// Serves one `Osd.Read`.
async fn read(
    osd: Arc<Osd>,
    req: http::Request<BoxBody>,
) -> Result<http::Response<BoxBody>, Status> {
    let body = http_body_util::Limited::new(req.into_body(), REQUEST_MAX)
        .collect()
        .await
        .map_err(|e| Status::internal(format!("reading the request: {e}")))?
        .to_bytes();
    let msg = message_of(&body).ok_or_else(|| {
        Status::internal("a read request that is not one uncompressed gRPC message")
    })?;
    let r = ReadRequest::decode(msg)
        .map_err(|e| Status::internal(format!("a malformed read request: {e}")))?;
    let data = osd
        .client_read(r.object, r.offset, r.len as u64, r.epoch, r.session)
        .await?;
    let (prefix, data) = reply_frame(crate::service::read_reply(data));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut frames = vec![Ok::<_, Status>(http_body::Frame::data(prefix))];
    if !data.is_empty() {
        frames.push(Ok(http_body::Frame::data(data)));
    }
    frames.push(Ok(http_body::Frame::trailers(trailers)));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut resp = http::Response::new(tonic::body::boxed(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// The message of a request body holding one uncompressed gRPC frame; None if it is not one.
fn message_of(body: &[u8]) -> Option<&[u8]> {
    let (head, rest) = body.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    (head[0] == 0 && rest.len() == len).then_some(rest)
}

/// `reply` as a gRPC frame in two parts: everything up to the bytes of `data` (field 1),
/// then those bytes themselves.
fn reply_frame(mut reply: ReadReply) -> (Bytes, Bytes) {
    let data = std::mem::take(&mut reply.data);
    let rest = reply.encode_to_vec();
    let mut key = BytesMut::with_capacity(16);
    if !data.is_empty() {
        // Field 1, length-delimited.
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut key);
        prost::encoding::encode_varint(data.len() as u64, &mut key);
    }
    let len = rest.len() + key.len() + data.len();
    let mut prefix = BytesMut::with_capacity(5 + rest.len() + key.len());
    prefix.put_u8(0);
    prefix.put_u32(len as u32);
    prefix.put_slice(&rest);
    prefix.put_slice(&key);
    (prefix.freeze(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_in_two_parts_decodes_as_the_reply() {
        for data in [
            Bytes::new(),
            Bytes::from_static(b"x"),
            Bytes::from(vec![7u8; 300_000]),
        ] {
            for exists in [false, true] {
                let reply = ReadReply {
                    data: data.clone(),
                    exists,
                };
                let (prefix, body) = reply_frame(reply.clone());
                let whole = [&prefix[..], &body[..]].concat();
                let msg = message_of(&whole).unwrap();
                assert_eq!(ReadReply::decode(msg).unwrap(), reply);
                assert_eq!(body.len(), data.len(), "the bytes go as they are");
            }
        }
    }

    #[test]
    fn requests_that_are_not_one_plain_message_are_refused() {
        let req = ReadRequest {
            object: "o".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(req.len() as u32).to_be_bytes());
        framed.extend_from_slice(&req);
        assert_eq!(message_of(&framed).unwrap(), &req[..]);
        let mut compressed = framed.clone();
        compressed[0] = 1;
        assert!(message_of(&compressed).is_none());
        assert!(message_of(&framed[..framed.len() - 1]).is_none());
        assert!(message_of(&framed[..3]).is_none());
        let mut two = framed.clone();
        two.extend_from_slice(&framed);
        assert!(message_of(&two).is_none());
    }
}
