//! The MDS daemon's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one MDS node. Every field has a default suited to a one-host cluster.
#[derive(Debug, Clone)]
pub struct MdsConfig {
    /// Raft id of this node (non-zero).
    pub id: u64,
    /// Directory holding the database (`db/`), the `addr` file and the pid file.
    pub data_dir: PathBuf,
    /// Address to serve gRPC on; port 0 picks a free one (written to `data_dir/addr`).
    pub listen: SocketAddr,
    /// Members of a new group as (id, address), this node included; empty: a group of one.
    /// Peers are reached at these addresses.
    pub peers: Vec<(u64, String)>,
    /// Start outside any configuration, to be added by `shoal mds add` (a new database only).
    pub join: bool,
    /// Raft tick length.
    pub tick: Duration,
    /// Ticks without hearing a leader before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries the Raft log may hold before it is compacted.
    pub log_compact_entries: u64,
    /// Newest entries a compaction keeps, so a member a little behind catches up from the log.
    pub log_keep_entries: u64,
    /// An OSD not heard from for this long is marked down.
    pub osd_grace: Duration,
    /// An OSD down for this long is marked out and its PGs move elsewhere.
    pub osd_out_after: Duration,
    /// A client session not heard from for this long is ended and its locks released.
    pub session_timeout: Duration,
    /// How long a client may cache under a lease before it asks again (0: no caching).
    pub lease: Duration,
    /// Copies per object for a new cluster's pool.
    pub pool_size: u32,
    /// Copies durable before a write is acknowledged (0: a majority of `pool_size`).
    pub pool_min_size: u32,
    /// Owner of a new namespace's root directory.
    pub root_uid: u32,
    /// Group of a new namespace's root directory.
    pub root_gid: u32,
}

impl Default for MdsConfig {
    fn default() -> Self {
        MdsConfig {
            id: 1,
            data_dir: PathBuf::from("mds-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: Vec::new(),
            join: false,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 3,
            log_compact_entries: 20_000,
            log_keep_entries: 5_000,
            osd_grace: Duration::from_secs(10),
            osd_out_after: Duration::from_secs(600),
            session_timeout: Duration::from_secs(60),
            lease: Duration::from_secs(2),
            pool_size: shoal_proto::placement::DEFAULT_SIZE,
            pool_min_size: 0,
            root_uid: 0,
            root_gid: 0,
        }
    }
}

impl MdsConfig {
    /// Rejects settings the node cannot run with.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.id != 0, "mds id must be non-zero");
        anyhow::ensure!(
            self.peers.is_empty() || self.peers.iter().any(|(id, _)| *id == self.id),
            "the member list must include this node (id {})",
            self.id
        );
        let mut ids: Vec<u64> = self.peers.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        anyhow::ensure!(ids.len() == self.peers.len(), "member ids must be unique");
        anyhow::ensure!(!ids.contains(&0), "member ids must be non-zero");
        anyhow::ensure!(
            self.heartbeat_ticks >= 1,
            "heartbeat_ticks must be at least 1"
        );
        anyhow::ensure!(
            self.election_ticks > self.heartbeat_ticks,
            "election_ticks must exceed heartbeat_ticks"
        );
        anyhow::ensure!(!self.tick.is_zero(), "tick must be positive");
        anyhow::ensure!(
            self.session_timeout >= Duration::from_secs(1),
            "the session timeout must be at least 1 s"
        );
        anyhow::ensure!(
            self.lease <= Duration::from_secs(60),
            "a lease lasts at most 60 s"
        );
        anyhow::ensure!(
            !(self.join && self.peers.len() > 1),
            "a joining member takes no --peers: the group it joins tells it its members"
        );
        anyhow::ensure!(
            self.log_compact_entries >= 1 && self.log_keep_entries < self.log_compact_entries,
            "log_keep_entries must be below log_compact_entries (at least 1)"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.pool_size),
            "pool size must be 1 to 16 copies"
        );
        anyhow::ensure!(
            self.pool_min_size <= self.pool_size,
            "pool min_size cannot exceed its size"
        );
        Ok(())
    }
}
