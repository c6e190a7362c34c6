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

use http_body_util::BodyExt;
use prost::Message;
use shoal_proto::bulk;
use shoal_proto::osd::ReadRequest;
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
    let msg = bulk::message_of(&body).ok_or_else(|| {
        Status::internal("a read request that is not one uncompressed gRPC message")
    })?;
    let r = ReadRequest::decode(msg)
        .map_err(|e| Status::internal(format!("a malformed read request: {e}")))?;
    let data = osd
        .client_read(r.object, r.offset, r.len as u64, r.epoch, r.session)
        .await?;
    let mut reply = crate::service::read_reply(data);
    let data = std::mem::take(&mut reply.data);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = bulk::body(bulk::frames(&reply, 1, &[data]), Some(trailers));
    let mut resp = http::Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}
