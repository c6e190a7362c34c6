//! Shoal's client: the library that speaks to the cluster, and its FUSE mount.
//!
//! - [`cluster`]: connections to the MDS and OSDs; retries across daemon restarts; striped,
//!   parallel object I/O placed by the OSD map.
//! - [`client`]: filesystem operations by inode number and the state of files open on this
//!   mount (unflushed size/mtime, unlinked-while-open).
//! - [`fuse`]: the fuser `Filesystem` that turns kernel requests into [`client`] calls.
//! - [`mount`]: mount options, the `mount.fuse.shoal` helper, and [`mount::run`] that serves a
//!   mount until it is unmounted or told to stop.
//! - [`error`]: the client's error type and its errno.
//!
//! A write: kernel → `ShoalFs::write` → tokio task → `Client::write` → one `Osd.Write` per
//! object in parallel (fdatasync'd on the OSD) → reply; the new size reaches the MDS at flush.

pub mod client;
pub mod cluster;
pub mod error;
pub mod fuse;
pub mod mount;

pub use client::Client;
pub use cluster::Cluster;
pub use error::ClientError;
