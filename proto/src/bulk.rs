//! gRPC messages that carry file data, framed without copying the data.
//!
//! tonic encodes a message into one buffer, so every byte of a write's data is copied once
//! more on each hop that sends it (the mount's `Osd.Write`, the primary's `Osd.RepOp` to each
//! replica), and an `Osd.Read` reply's on the OSD. Here such a message goes as a short
//! prefix — the gRPC frame header, the message's other fields, the data field's key and
//! length — followed by the data's own buffers as further HTTP/2 body chunks, which HTTP/2
//! sends without copying them. A protobuf field may come in any order, so the receiver decodes
//! the message as any other: the calls and replies built here are plain gRPC on the wire.
//!
//! - [`frames`]: a message as that prefix and its data chunks;
//! - [`unary`]: a unary call whose request is such frames, over a tonic `Channel` or a
//!   [`crate::datachan::DataChannel`];
//! - [`message_of`]: the one message of a gRPC body, for the server side ([`frames`] for its
//!   reply).

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::BoxBody;
use tonic::codegen::StdError;
use tonic::{Code, Status};
use tower_service::Service;

/// Bytes held as a sequence of buffers, sliced and sent without copying them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rope {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Rope {
    /// Appends `b`.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push(b);
        }
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its buffers, in order, none empty.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Bytes `[from, to)` of it (clipped to its length), sharing its buffers.
    pub fn slice(&self, from: usize, to: usize) -> Rope {
        let to = to.min(self.len);
        let mut out = Rope::default();
        let mut at = 0;
        for c in &self.chunks {
            let end = at + c.len();
            if end > from && at < to {
                out.push(c.slice(from.max(at) - at..to.min(end) - at));
            }
            if end >= to {
                break;
            }
            at = end;
        }
        out
    }

    /// All of it as one buffer: its one buffer as it is, else a copy.
    pub fn join(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut buf = BytesMut::with_capacity(self.len);
                for c in many {
                    buf.extend_from_slice(c);
                }
                buf.freeze()
            }
        }
    }
}

impl From<Bytes> for Rope {
    fn from(b: Bytes) -> Rope {
        let mut r = Rope::default();
        r.push(b);
        r
    }
}

/// `head` (a message whose data field is left empty) followed by `data` as its bytes field
/// number `field`, as one gRPC frame: the prefix, then each non-empty chunk of `data` as it
/// is.
pub fn frames(head: &impl Message, field: u32, data: &[Bytes]) -> Vec<Bytes> {
    let data_len: usize = data.iter().map(Bytes::len).sum();
    let mut key = BytesMut::with_capacity(16);
    if data_len > 0 {
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut key);
        prost::encoding::encode_varint(data_len as u64, &mut key);
    }
    let head_len = head.encoded_len();
    let len = head_len + key.len() + data_len;
    let mut prefix = BytesMut::with_capacity(5 + head_len + key.len());
    prefix.put_u8(0);
    prefix.put_u32(len as u32);
    head.encode_raw(&mut prefix);
    prefix.put_slice(&key);
    let mut out = Vec::with_capacity(1 + data.len());
    out.push(prefix.freeze());
    out.extend(data.iter().filter(|d| !d.is_empty()).cloned());
    out
}

/// The message of a body holding one uncompressed gRPC frame; None if it is not one.
pub fn message_of(body: &[u8]) -> Option<&[u8]> {
    let (head, rest) = body.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    (head[0] == 0 && rest.len() == len).then_some(rest)
}

/// A gRPC body of `frames` (the chunks of [`frames`]).
pub fn body(frames: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> tonic::body::BoxBody {
    let mut out: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = frames
        .into_iter()
        .map(|f| Ok(http_body::Frame::data(f)))
        .collect();
    if let Some(t) = trailers {
        out.push(Ok(http_body::Frame::trailers(t)));
    }
    tonic::body::boxed(http_body_util::StreamBody::new(futures::stream::iter(out)))
}

/// Calls unary method `path` (as "/package.Service/Method") over `channel` with the request
/// `frames` (see [`frames`]) and decodes its reply, taking at most `max_reply` bytes of it.
/// Errors come as tonic's client gives them: the server's status with its metadata, or a
/// transport failure as UNAVAILABLE or UNKNOWN.
pub async fn unary<R, S, B>(
    channel: &S,
    path: &'static str,
    frames: Vec<Bytes>,
    max_reply: usize,
) -> Result<R, Status>
where
    R: Message + Default,
    S: Service<http::Request<BoxBody>, Response = http::Response<B>> + Clone,
    S::Error: Into<StdError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body(frames, None))
        .map_err(|e| Status::internal(format!("building a request to {path}: {e}")))?;
    let mut ch = channel.clone();
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let resp = ch
        .call(req)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let (parts, body) = resp.into_parts();
    // An error comes as headers alone ("trailers-only").
    if let Some(s) = Status::from_header_map(&parts.headers) {
        if s.code() != Code::Ok {
            return Err(s);
        }
    }
    let got = http_body_util::Limited::new(body, max_reply.saturating_add(5))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!("{path}: a reply over {max_reply} bytes"))
            } else {
                Status::from_error(e)
            }
        })?;
    let status = got.trailers().and_then(Status::from_header_map);
    match status {
        Some(s) if s.code() != Code::Ok => return Err(s),
        Some(_) => {}
        None if parts.status != http::StatusCode::OK => {
            return Err(Status::unavailable(format!(
                "{path}: HTTP status {} without a gRPC status",
                parts.status
            )))
        }
        None => {
            return Err(Status::unknown(format!(
                "{path}: a reply without a gRPC status"
            )))
        }
    }
    let bytes = got.to_bytes();
    let msg = message_of(&bytes).ok_or_else(|| {
        Status::internal(format!(
            "{path}: a reply that is not one uncompressed gRPC message"
        ))
    })?;
    R::decode(msg).map_err(|e| Status::internal(format!("{path}: a malformed reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::osd::{ReadReply, WriteRequest};

    #[test]
    fn a_message_in_parts_decodes_as_the_message() {
        for data in [
            vec![],
            vec![Bytes::from_static(b"x")],
            vec![
                Bytes::from(vec![7u8; 300_000]),
                Bytes::new(),
                Bytes::from(vec![9u8; 5]),
            ],
        ] {
            let joined: Vec<u8> = data.concat();
            let head = WriteRequest {
                object: "0000000000000001.00000002".into(),
                offset: 4096,
                epoch: 3,
                session: 9,
                ..Default::default()
            };
            let parts = frames(&head, 3, &data);
            let whole = parts.concat();
            let msg = message_of(&whole).unwrap();
            let want = WriteRequest {
                data: Bytes::from(joined.clone()),
                ..head
            };
            assert_eq!(WriteRequest::decode(msg).unwrap(), want);
            let sent: usize = parts[1..].iter().map(Bytes::len).sum();
            assert_eq!(sent, joined.len(), "the data goes as it is");
            assert!(parts[1..].iter().all(|p| !p.is_empty()));
            let reply = ReadReply {
                exists: true,
                ..Default::default()
            };
            let whole = frames(&reply, 1, &data).concat();
            let got = ReadReply::decode(message_of(&whole).unwrap()).unwrap();
            assert_eq!(&got.data[..], &joined[..]);
            assert!(got.exists);
        }
    }

    #[test]
    fn a_rope_slices_across_its_buffers_and_joins_to_its_bytes() {
        let mut r = Rope::default();
        for (i, n) in [3usize, 0, 5, 1, 7].into_iter().enumerate() {
            r.push(Bytes::from(vec![b'a' + i as u8; n]));
        }
        let flat = b"aaacccccdeeeeeee".to_vec();
        assert_eq!(r.len(), flat.len());
        assert_eq!(r.chunks().len(), 4, "empty buffers are not kept");
        for from in 0..=flat.len() {
            for to in from..=flat.len() + 2 {
                let s = r.slice(from, to);
                assert_eq!(&s.join()[..], &flat[from..to.min(flat.len())]);
                assert_eq!(s.len(), to.min(flat.len()) - from);
                assert!(s.chunks().iter().all(|c| !c.is_empty()));
            }
        }
        let one = r.slice(3, 8);
        assert_eq!(one.chunks().len(), 1);
        assert_eq!(
            one.join().as_ptr(),
            r.chunks()[1].as_ptr(),
            "one buffer is not copied"
        );
        assert!(Rope::default().join().is_empty());
    }

    #[test]
    fn bodies_that_are_not_one_plain_message_are_refused() {
        let framed = frames(&WriteRequest::default(), 3, &[Bytes::from_static(b"abc")]).concat();
        assert!(message_of(&framed).is_some());
        let mut compressed = framed.clone();
        compressed[0] = 1;
        assert!(message_of(&compressed).is_none());
        assert!(message_of(&framed[..framed.len() - 1]).is_none());
        assert!(message_of(&framed[..3]).is_none());
        let two = [&framed[..], &framed[..]].concat();
        assert!(message_of(&two).is_none());
    }
}
