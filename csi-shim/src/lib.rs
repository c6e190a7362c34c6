//! Shoal's CSI driver: Kubernetes provisions, expands, mounts and measures Shoal volumes
//! through it (CSI v1.12 over a unix socket, `proto/csi.proto`).
//!
//! - [`identity`]: who the plugin is and what it offers.
//! - [`controller`]: volumes (`/volumes/NAME` with a quota, see `shoal_client::volumes`):
//!   create (idempotent by name), delete, expand, list, capacity, capability checks.
//! - [`node`]: one FUSE mount per volume per node at the staging path (a `shoal-fuse` process
//!   in its own session, so it outlives a restart of the plugin), bind mounts into pods, stats,
//!   and the repair of mounts whose client died.
//! - [`mounter`]: starting the FUSE clients, here or in the mounter, a container of their own
//!   that a restart of the plugin's container leaves running.
//! - [`mounts`]: the system calls and `/proc/self/mountinfo` reading behind them.
//! - [`check`]: argument checks every RPC starts with (ids, paths, capabilities).

// Every RPC answers a tonic::Status, large or not (as the MDS and OSD services do).
#![allow(clippy::result_large_err)]

pub mod check;
pub mod controller;
pub mod identity;
pub mod mounter;
pub mod mounts;
pub mod node;

/// An INTERNAL status saying what failed and why.
pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(format!("{what}: {e}"))
}

/// The driver's name, as the CSIDriver object and StorageClasses name it.
pub const DRIVER_NAME: &str = "csi.shoal.io";
