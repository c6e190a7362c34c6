//! Cluster health from the MDS's `Status` answer.

use std::time::Duration;

use serde::Serialize;
use shoal_proto::mds::mds_client::MdsClient;
use shoal_proto::mds::{StatusReply, StatusRequest};

/// Used space above which the cluster warns.
const NEARFULL: f64 = 0.85;

/// One OSD as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OsdStatus {
    /// OSD id.
    pub id: u32,
    /// gRPC address.
    pub addr: String,
    /// Failure-domain label.
    pub host: String,
    /// Heard from within the grace period.
    pub up: bool,
    /// Bytes of objects it stores.
    pub used_bytes: u64,
    /// Size of its disk.
    pub capacity_bytes: u64,
    /// Free space on its disk.
    pub free_bytes: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR`.
    pub health: String,
    /// Why the health is not OK.
    pub reasons: Vec<String>,
    /// MDS member ids.
    pub mds_members: Vec<u64>,
    /// Current leader (0: none).
    pub mds_leader: u64,
    /// Raft term.
    pub term: u64,
    /// Raft commit index.
    pub commit_index: u64,
    /// Index applied to the namespace.
    pub applied_index: u64,
    /// OSD map epoch.
    pub osd_epoch: u64,
    /// OSDs.
    pub osds: Vec<OsdStatus>,
    /// Inodes in the namespace.
    pub files: u64,
}

/// Judges a `Status` answer.
pub fn report(st: &StatusReply) -> Report {
    let map = st.osd_map.clone().unwrap_or_default();
    let osds: Vec<OsdStatus> = map
        .osds
        .iter()
        .map(|o| OsdStatus {
            id: o.id,
            addr: o.addr.clone(),
            host: o.host.clone(),
            up: o.up,
            used_bytes: o.used_bytes,
            capacity_bytes: o.capacity_bytes,
            free_bytes: o.free_bytes,
        })
        .collect();
    let mut err = Vec::new();
    let mut warn = Vec::new();
    if st.leader_id == 0 {
        err.push("the MDS has no leader".to_string());
    }
    if osds.is_empty() {
        err.push("no OSDs have registered".to_string());
    }
    let down: Vec<String> = osds
        .iter()
        .filter(|o| !o.up)
        .map(|o| format!("osd.{}", o.id))
        .collect();
    if !down.is_empty() {
        // Without replication, an OSD that is down makes its objects unavailable.
        err.push(format!("{} down: {}", down.len(), down.join(", ")));
    }
    for o in osds.iter().filter(|o| o.up && o.capacity_bytes > 0) {
        let used = 1.0 - o.free_bytes as f64 / o.capacity_bytes as f64;
        if used > NEARFULL {
            warn.push(format!("osd.{} disk {:.0}% full", o.id, used * 100.0));
        }
    }
    let health = if !err.is_empty() {
        "HEALTH_ERR"
    } else if !warn.is_empty() {
        "HEALTH_WARN"
    } else {
        "HEALTH_OK"
    };
    err.extend(warn);
    Report {
        health: health.to_string(),
        reasons: err,
        mds_members: st.members.iter().map(|m| m.id).collect(),
        mds_leader: st.leader_id,
        term: st.term,
        commit_index: st.commit_index,
        applied_index: st.applied_index,
        osd_epoch: map.epoch,
        osds,
        files: st.files,
    }
}

/// Asks the first MDS that answers.
pub async fn fetch(addrs: &[String]) -> anyhow::Result<StatusReply> {
    let mut last = None;
    for a in addrs {
        let attempt = async {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{a}"))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5));
            let mut c = MdsClient::new(ep.connect().await?);
            anyhow::Ok(c.status(StatusRequest {}).await?.into_inner())
        };
        match attempt.await {
            Ok(st) => return Ok(st),
            Err(e) => last = Some(anyhow::anyhow!("{a}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no MDS address")))
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The human-readable report.
pub fn render(r: &Report) -> String {
    let mut out = format!("health: {}\n", r.health);
    for reason in &r.reasons {
        out += &format!("  - {reason}\n");
    }
    out += &format!(
        "mds: {} member(s) {:?}, leader {}, term {}, commit {}, applied {}\n",
        r.mds_members.len(),
        r.mds_members,
        if r.mds_leader == 0 {
            "none".to_string()
        } else {
            r.mds_leader.to_string()
        },
        r.term,
        r.commit_index,
        r.applied_index
    );
    let up = r.osds.iter().filter(|o| o.up).count();
    out += &format!(
        "osd: {} total, {} up, map epoch {}\n",
        r.osds.len(),
        up,
        r.osd_epoch
    );
    for o in &r.osds {
        out += &format!(
            "  osd.{:<3} {:<4} {:<21} {:<10} used {:>10}  disk {:>10} free of {:>10}\n",
            o.id,
            if o.up { "up" } else { "down" },
            o.addr,
            o.host,
            gib(o.used_bytes),
            gib(o.free_bytes),
            gib(o.capacity_bytes)
        );
    }
    out += &format!("files: {}\n", r.files);
    out
}
