//! Shoal's client: the library that speaks to the cluster, and its FUSE mount.
//!
//! - [`cluster`]: connections to the MDS and OSDs; retries across daemon restarts; striped,
//!   parallel object I/O placed by the OSD map.
//! - [`client`]: filesystem operations by inode number and the state of files open on this
//!   mount (unflushed size/mtime, unlinked-while-open).
//! - [`dentries`]: the kernel's directory entries, kept under leases and dropped all at once.
//! - [`fuse`]: the fuser `Filesystem` that turns kernel requests into [`client`] calls.
//! - [`listings`]: directory listings the mount takes itself, and their readdir offsets.
//! - [`mount`]: mount options, the `mount.fuse.shoal` helper, and [`mount::run`] that serves a
//!   mount until it is unmounted or told to stop.
//! - [`readcache`]: file data read here, kept for small reads under the file's read lease.
//! - [`session`]: a session with the cluster and its background work (heartbeats, leases);
//!   files by path for programs that use the client as a library, without a mount.
//! - [`volumes`]: directories under `/volumes/` with a quota (`shoal volume`, the CSI driver).
//! - [`writeback`]: a file's data written under its write lease, not yet on the OSDs.
//! - [`error`]: the client's error type and its errno.
//!
//! A write under the file's write lease: kernel → `ShoalFs::write` → tokio task →
//! `Client::write` keeps the bytes → reply; they reach the OSDs (one `Osd.Write` per
//! contiguous run and object, in parallel, fdatasync'd there) at fsync, close, a revocation,
//! before the lease runs out, or once enough piled up. Without the lease the write goes to
//! the OSDs before the reply, and its new size to the MDS.

pub mod client;
pub mod cluster;
pub mod dentries;
pub mod error;
pub mod fuse;
pub mod listings;
pub mod mount;
pub mod osdbatch;
pub mod readcache;
pub mod session;
pub mod volumes;
pub mod writeback;

pub use client::Client;
pub use cluster::Cluster;
pub use error::ClientError;
pub use session::{OpenFile, Session};
