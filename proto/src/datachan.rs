//! A gRPC channel for the data path that takes large HTTP/2 frames.
//!
//! An HTTP/2 peer sends DATA frames no larger than the receiver allows (16 KiB unless it says
//! more), and tonic's `Channel` has no setting for it: an OSD answered a 1 MiB read in 64
//! frames, each its own `writev` at the OSD and its own pass through HTTP/2 at the mount.
//! [`DataChannel`] is one HTTP/2 connection to a daemon that allows frames of
//! [`DATA_MAX_FRAME`], with the data path's wide windows; it connects when first used, and
//! again on the first call after the connection broke. Generated clients take it as they take
//! a `Channel`, and [`crate::bulk::unary`] calls through it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::BoxBody;
use tonic::Status;

use crate::{DATA_CONN_WINDOW, DATA_MAX_FRAME, DATA_STREAM_WINDOW};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings on an open connection, and how long one may go unanswered before it is dropped.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// A lazily connected HTTP/2 connection to `addr`, shared by its clones.
#[derive(Clone)]
pub struct DataChannel {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    authority: http::uri::Authority,
    conn: tokio::sync::Mutex<Conn>,
    /// Connection attempts made (for tests).
    attempts: std::sync::atomic::AtomicU64,
}

/// The connection, or how the last attempt to make one failed.
#[derive(Default)]
struct Conn {
    sender: Option<SendRequest<BoxBody>>,
    failed: Option<(Instant, Status)>,
}

impl DataChannel {
    /// A channel to `addr` ("host:port"); nothing is connected yet.
    pub fn new(addr: &str) -> Result<DataChannel, String> {
        let authority = addr
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| a.port().is_some())
            .ok_or_else(|| format!("bad address {addr:?}: want host:port"))?;
        Ok(DataChannel {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                authority,
                conn: tokio::sync::Mutex::new(Conn::default()),
                attempts: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The open connection, or a new one if there is none or it broke. A call that waited
    /// while an attempt began and failed fails with it rather than trying again, so calls
    /// queued behind an unreachable daemon wait for one attempt, not one each.
    async fn sender(&self) -> Result<SendRequest<BoxBody>, Status> {
        let asked = Instant::now();
        let mut conn = self.inner.conn.lock().await;
        if let Some(s) = conn.sender.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        conn.sender = None;
        if let Some((at, why)) = &conn.failed {
            if *at >= asked {
                return Err(why.clone());
            }
        }
        let tried = self.inner.connect().await;
        conn.failed = tried.as_ref().err().map(|e| (Instant::now(), e.clone()));
        let s = tried?;
        conn.sender = Some(s.clone());
        Ok(s)
    }
}

impl Inner {
    async fn connect(&self) -> Result<SendRequest<BoxBody>, Status> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let failed = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!("connecting to {}: {e}", self.addr))
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| failed(&"timed out"))?
            .map_err(|e| failed(&e))?;
        tcp.set_nodelay(true).map_err(|e| failed(&e))?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(DATA_STREAM_WINDOW)
            .initial_connection_window_size(DATA_CONN_WINDOW)
            .max_frame_size(DATA_MAX_FRAME)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| failed(&e))?;
        // Runs the connection until it closes; the sender then reports it closed.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, Status>> + Send>>;

impl tower_service::Service<http::Request<BoxBody>> for DataChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<BoxBody>) -> ResponseFuture {
        let ch = self.clone();
        Box::pin(async move {
            // Generated clients name the path alone; HTTP/2 wants the scheme and authority.
            let mut uri = req.uri().clone().into_parts();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(ch.inner.authority.clone());
            *req.uri_mut() = http::Uri::from_parts(uri)
                .map_err(|e| Status::internal(format!("a request's path: {e}")))?;
            let lost = |e: hyper::Error| {
                Status::unavailable(format!("the connection to {}: {e}", ch.inner.addr))
            };
            let mut s = ch.sender().await?;
            s.ready().await.map_err(lost)?;
            s.send_request(req).await.map_err(lost)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk;
    use crate::osd::osd_client::OsdClient;
    use crate::osd::{ReadReply, ReadRequest};
    use http_body_util::BodyExt;
    use prost::Message;
    use tokio::net::TcpListener;
    use tonic::Code;

    /// Answers every call with a `ReadReply` of the asked length, its data framed by `bulk`.
    async fn serve(listener: TcpListener) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            conns.spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let r = ReadRequest::decode(bulk::message_of(&body).unwrap()).unwrap();
                        let data: Vec<u8> = (0..r.len as usize).map(|i| (i % 251) as u8).collect();
                        let reply = ReadReply {
                            exists: true,
                            ..Default::default()
                        };
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = bulk::frames(&reply, 1, &[bytes::Bytes::from(data)]);
                        Ok::<_, hyper::Error>(http::Response::new(bulk::body(
                            frames,
                            Some(trailers),
                        )))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }

    async fn read(ch: &DataChannel, len: u32) -> Result<ReadReply, Status> {
        let req = ReadRequest {
            len,
            ..Default::default()
        };
        let frames = bulk::frames(&req, 0, &[]);
        bulk::unary(ch, "/shoal.osd.Osd/Read", frames, 8 << 20).await
    }

    fn pattern_of(r: &ReadReply, len: usize) -> bool {
        r.exists
            && r.data.len() == len
            && r.data
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8)
    }

    #[test]
    fn addresses_without_a_port_are_refused() {
        for bad in ["", "osd0", "127.0.0.1", "http://127.0.0.1:80/x"] {
            assert!(DataChannel::new(bad).is_err(), "{bad:?}");
        }
        assert!(DataChannel::new("127.0.0.1:6800").is_ok());
    }

    #[tokio::test]
    async fn large_replies_come_whole_and_a_restarted_server_is_found_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ch = DataChannel::new(&addr.to_string()).unwrap();
        let server = tokio::spawn(serve(listener));
        for len in [0usize, 5, 3 << 20] {
            let r = read(&ch, len as u32).await.unwrap();
            assert!(pattern_of(&r, len), "{len} bytes");
        }
        // A generated client over the same connection.
        let mut stub = OsdClient::new(ch.clone());
        let r = stub
            .read(ReadRequest {
                len: 1 << 20,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(pattern_of(&r, 1 << 20));

        // The server goes: calls fail as unavailable (the client retries those).
        server.abort();
        let _ = server.await;
        let failed = read(&ch, 10).await.unwrap_err();
        let failed = match failed.code() {
            // The first call may still have found the old connection open.
            Code::Unavailable => failed,
            _ => read(&ch, 10).await.unwrap_err(),
        };
        assert_eq!(failed.code(), Code::Unavailable, "{failed}");

        // It comes back on the same port: the next call connects again.
        let listener = TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(serve(listener));
        let r = read(&ch, 4096).await.unwrap();
        assert!(pattern_of(&r, 4096));
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_on_a_failed_attempt_fail_with_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ch = DataChannel::new(&addr.to_string()).unwrap();
        // Hold the connection's lock so that every call below waits for the same attempt.
        let held = ch.inner.conn.lock().await;
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let ch = ch.clone();
                tokio::spawn(async move { read(&ch, 1).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        for c in calls {
            let e = c.await.unwrap().unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "{e}");
        }
        let attempts = ch.inner.attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(attempts, 1, "one attempt for fifty calls");
        // A call that comes after the failure tries again.
        assert!(read(&ch, 1).await.is_err());
        let attempts = ch.inner.attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let ch = DataChannel::new(&addr.to_string()).unwrap();
        let e = read(&ch, 1).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
    }
}
