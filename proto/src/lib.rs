//! Shoal's wire contract, shared by every daemon and client.
//!
//! - [`mds`], [`osd`], [`csi`]: the generated gRPC services and messages (`proto/*.proto`).
//! - [`error`]: how a POSIX errno travels inside a `tonic::Status`, both directions.
//! - [`layout`]: file striping math — which object holds which byte of a file, and object names.
//! - [`placement`]: which OSD stores an object, a pure function of the OSD map.
//! - [`limits`]: name and size limits both ends enforce.
//! - [`pidfile`]: daemon pid files, written whole.
//! - [`quota`]: the names of the quota xattrs.
//! - [`listing`]: a file's objects as one OSD lists them (clients and the MDS ask every OSD).
//! - [`request`]: request ids that make MDS mutations exactly-once across retries.
//! - [`bulk`]: data-carrying messages framed without copying the data, and calls sending them.
//! - [`malloc`]: allocator settings that keep the data path's buffers in the heap.
//!
//! Both ends of a wire compute striping and placement with this crate, so they always agree.

pub mod batch;
pub mod bulk;
pub mod datachan;
pub mod error;
pub mod layout;
pub mod limits;
pub mod listing;
pub mod malloc;
pub mod pidfile;
pub mod placement;
pub mod quota;
pub mod request;

/// Metadata service messages and gRPC stubs (`proto/mds.proto`).
#[allow(clippy::all, missing_docs)]
pub mod mds {
    tonic::include_proto!("shoal.mds");
}

/// Object storage daemon messages and gRPC stubs (`proto/osd.proto`).
#[allow(clippy::all, missing_docs)]
pub mod osd {
    tonic::include_proto!("shoal.osd");
}

/// The Container Storage Interface v1 (`proto/csi.proto`), served by `shoal-csi`.
#[allow(clippy::all, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// Largest gRPC message any Shoal endpoint accepts or sends: a data RPC carries up to one
/// object (4 MiB by default, 64 MiB at most) plus framing.
pub const MAX_MESSAGE_BYTES: usize = 80 << 20;

/// Most operations one batch call (`Osd.ReadBatch`, `Osd.RepOpBatch`) may carry, and most
/// bytes the reads of one `Osd.ReadBatch` may ask for together.
pub const MAX_BATCH: usize = 256;
pub const MAX_READ_BATCH_BYTES: u64 = 16 << 20;

/// HTTP/2 flow-control windows of the data path (mounts and OSDs, both ends): a stream may
/// have a whole 4 MiB object and more in flight, and a connection several such streams,
/// instead of hyper's defaults (1 MiB per connection on a server), which hold a large
/// read or write, and the calls beside it, to a window update per megabyte.
pub const DATA_STREAM_WINDOW: u32 = 8 << 20;
/// See [`DATA_STREAM_WINDOW`].
pub const DATA_CONN_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame an OSD accepts (data in fewer, larger frames; hyper's default is
/// 16 KiB).
pub const DATA_MAX_FRAME: u32 = 1 << 20;

/// The connections a daemon's gRPC server accepts on `listener`, with Nagle's algorithm off
/// (tonic sets it only on listeners it binds itself): small replies and stream messages are
/// sent at once instead of waiting out the peer's delayed ACK.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    })
}
