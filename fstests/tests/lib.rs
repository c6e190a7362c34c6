//! Shoal through real daemons and a real FUSE mount. Each test starts its own cluster.

mod coherence;
mod data;
mod faults;
mod fencing;
mod mds_ha;
mod namespace;
mod posix;
mod replication;
mod sharing;
mod tools;
