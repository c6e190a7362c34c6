//! The `shoal` command's logic.
//!
//! - [`procs`]: starting, finding and stopping daemons of an all-in-one cluster: one process
//!   each, state under `DIR/<name>/` (`pid`, `addr`, `log`), ports remembered in
//!   `DIR/cluster.json` so a restarted daemon comes back where clients expect it.
//! - [`status`]: the cluster's health from the MDS's `Status`, as text or JSON.

pub mod procs;
pub mod status;
pub mod volume;
