//! The OSD daemon's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one OSD. Every field has a default suited to a one-host cluster.
#[derive(Debug, Clone)]
pub struct OsdConfig {
    /// The OSD's id in the cluster map.
    pub id: u32,
    /// Directory holding `objects/`, the `addr` file and the pid file.
    pub data_dir: PathBuf,
    /// Address to serve gRPC on; port 0 picks a free one (written to `data_dir/addr`).
    pub listen: SocketAddr,
    /// Metadata service addresses to register with (any member; the leader answers).
    pub mds: Vec<String>,
    /// Failure-domain label (defaults to `host-<id>` so each OSD is its own domain).
    pub host: String,
    /// How often usage is reported; it doubles as the heartbeat.
    pub report_interval: Duration,
    /// How often every PG this OSD is primary of re-peers (compares every copy's version).
    pub light_scrub_interval: Duration,
    /// Objects recovered at a time while no client uses this OSD.
    pub recovery_max_active: u32,
    /// Percent of the time background recovery may take while clients use this OSD (one
    /// object at a time, then a pause); 100 puts recovery on an equal footing with clients.
    pub recovery_busy_share: u32,
    /// How old the journal's oldest record may get before a checkpoint syncs the store and
    /// trims the journal (a bound on what a restart replays).
    pub checkpoint_interval: Duration,
}

impl Default for OsdConfig {
    fn default() -> Self {
        OsdConfig {
            id: 0,
            data_dir: PathBuf::from("osd-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mds: Vec::new(),
            host: String::new(),
            report_interval: Duration::from_secs(2),
            light_scrub_interval: Duration::from_secs(300),
            recovery_max_active: 2,
            recovery_busy_share: 20,
            checkpoint_interval: crate::store::CHECKPOINT_EVERY,
        }
    }
}

impl OsdConfig {
    /// Rejects settings the OSD cannot run with.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.mds.is_empty(), "at least one MDS address is needed");
        anyhow::ensure!(
            !self.report_interval.is_zero(),
            "report_interval must be positive"
        );
        anyhow::ensure!(
            self.recovery_max_active >= 1,
            "recovery_max_active must be at least 1"
        );
        anyhow::ensure!(
            !self.checkpoint_interval.is_zero(),
            "checkpoint_interval must be positive"
        );
        anyhow::ensure!(
            (1..=100).contains(&self.recovery_busy_share),
            "recovery_busy_share is a percentage from 1 to 100"
        );
        Ok(())
    }
}
