//! Cluster health from the MDS's `Status` answer.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use shoal_proto::error::{status_errno, WireError};
use shoal_proto::mds::mds_client::MdsClient;
use shoal_proto::mds::{StatusReply, StatusRequest};

/// Used share of an OSD's disk above which `status` warns, unless told otherwise.
pub const NEARFULL: f64 = 0.85;

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
    /// Part of the data placement.
    pub in_cluster: bool,
    /// Bytes of objects it stores.
    pub used_bytes: u64,
    /// Size of its disk.
    pub capacity_bytes: u64,
    /// Free space on its disk.
    pub free_bytes: u64,
    /// The map epoch it last reported working at (0: not heard yet).
    pub map_epoch: u64,
}

/// One MDS member as the leader sees it.
#[derive(Debug, Clone, Serialize)]
pub struct MdsMemberStatus {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// Whether it leads.
    pub leader: bool,
    /// Heard from by the leader recently.
    pub active: bool,
    /// Highest log index known to be on it.
    pub matched: u64,
    /// Entries it is behind the leader's log.
    pub lag: u64,
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
    /// Each member: address, role, and how far behind the leader it is.
    pub mds: Vec<MdsMemberStatus>,
    /// Raft term.
    pub term: u64,
    /// Raft commit index.
    pub commit_index: u64,
    /// Index applied to the namespace.
    pub applied_index: u64,
    /// First entry still in the leader's log (earlier ones are compacted into snapshots).
    pub log_first_index: u64,
    /// OSD map epoch.
    pub osd_epoch: u64,
    /// OSDs.
    pub osds: Vec<OsdStatus>,
    /// Inodes in the namespace.
    pub files: u64,
    /// The data pool's settings.
    pub pool: PoolStatus,
    /// Placement groups.
    pub pgs: PgSummary,
    /// Client sessions: mounts the leader hears from, and holders of locks.
    pub sessions: Vec<SessionStatus>,
    /// Evicted sessions the OSDs and the MDS refuse (the blocklist).
    pub evicted: Vec<u64>,
}

/// One client session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    /// Session id (hex in the text report).
    pub id: u64,
    /// The client's host name.
    pub host: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Milliseconds since the leader heard from it.
    pub silent_ms: u64,
    /// Byte-range and flock locks it holds.
    pub locks: u32,
    /// Inodes it holds a live lease on (may cache).
    pub leases: u32,
    /// Revocations it did not acknowledge before its lease ran out.
    pub late_acks: u64,
}

/// The data pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Copies per object.
    pub size: u32,
    /// Copies durable before a write is acknowledged.
    pub min_size: u32,
    /// Placement groups.
    pub pg_count: u32,
}

/// One PG that is not active+clean.
#[derive(Debug, Clone, Serialize)]
pub struct PgStatus {
    /// PG number.
    pub pg: u32,
    /// Its state (`unknown` when no primary reported it at the current epoch).
    pub state: String,
    /// Acting set, primary first.
    pub acting: Vec<u32>,
    /// Copies left to recover.
    pub missing: u64,
}

/// PG states summed up.
#[derive(Debug, Clone, Serialize)]
pub struct PgSummary {
    /// PGs per state.
    pub states: BTreeMap<String, u32>,
    /// Every PG reported active+clean at the current map epoch.
    pub all_clean: bool,
    /// Objects stored (each counted once).
    pub objects: u64,
    /// Object copies left to recover.
    pub missing_copies: u64,
    /// Copies recovered per second lately.
    pub recovery_per_sec: f64,
    /// Copies scrub found bad and could not yet repair.
    pub inconsistent: u64,
    /// Bad copies repaired (since the primaries started).
    pub repaired: u64,
    /// The PGs that are not active+clean.
    pub unclean: Vec<PgStatus>,
}

fn pg_summary(st: &StatusReply, map: &shoal_proto::mds::OsdMap) -> PgSummary {
    let mut by_pg: BTreeMap<u32, &shoal_proto::mds::PgStat> = BTreeMap::new();
    for p in st.pgs.iter().filter(|p| p.epoch == map.epoch) {
        by_pg.insert(p.pg, p);
    }
    let mut s = PgSummary {
        states: BTreeMap::new(),
        all_clean: map.pg_count > 0,
        objects: 0,
        missing_copies: 0,
        recovery_per_sec: st.recovery_per_sec,
        inconsistent: 0,
        repaired: st.pgs.iter().map(|p| p.repaired).sum(),
        unclean: Vec::new(),
    };
    for pg in 0..map.pg_count {
        let (state, acting, missing) = match by_pg.get(&pg) {
            Some(p) => {
                s.objects += p.objects;
                s.missing_copies += p.missing;
                s.inconsistent += p.inconsistent;
                (p.state.clone(), p.acting.clone(), p.missing)
            }
            None => ("unknown".to_string(), Vec::new(), 0),
        };
        *s.states.entry(state.clone()).or_default() += 1;
        if state != "active+clean" {
            s.all_clean = false;
            s.unclean.push(PgStatus {
                pg,
                state,
                acting,
                missing,
            });
        }
    }
    s
}

/// Judges a `Status` answer; an OSD whose disk is more than `nearfull` used (0..=1) is a warning.
pub fn report(st: &StatusReply, nearfull: f64) -> Report {
    let map = st.osd_map.clone().unwrap_or_default();
    let osds: Vec<OsdStatus> = map
        .osds
        .iter()
        .map(|o| OsdStatus {
            id: o.id,
            addr: o.addr.clone(),
            host: o.host.clone(),
            up: o.up,
            in_cluster: o.in_cluster,
            used_bytes: o.used_bytes,
            capacity_bytes: o.capacity_bytes,
            free_bytes: o.free_bytes,
            map_epoch: o.map_epoch,
        })
        .collect();
    let mut err = Vec::new();
    let mut warn = Vec::new();
    if st.leader_id == 0 {
        err.push("the MDS has no leader".to_string());
    }
    let inactive: Vec<String> = st
        .members
        .iter()
        .filter(|m| !m.active)
        .map(|m| format!("mds.{} ({})", m.id, m.addr))
        .collect();
    if !inactive.is_empty() && st.leader_id != 0 {
        warn.push(format!(
            "MDS member(s) not answering the leader: {}",
            inactive.join(", ")
        ));
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
        warn.push(format!("{} osd(s) down: {}", down.len(), down.join(", ")));
    }
    let pgs = pg_summary(st, &map);
    let count = |pred: &dyn Fn(&str) -> bool| -> u32 {
        pgs.states
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, n)| n)
            .sum()
    };
    let inactive = count(&|k| k.starts_with("inactive"));
    if inactive > 0 {
        err.push(format!(
            "{inactive} pg(s) inactive: fewer than min_size {} copies up, their I/O waits",
            map.min_size
        ));
    }
    if pgs.inconsistent > 0 {
        err.push(format!(
            "{} bad object copies found by scrub",
            pgs.inconsistent
        ));
    }
    let degraded = count(&|k| k.contains("degraded"));
    if degraded > 0 {
        warn.push(format!(
            "{degraded} pg(s) degraded, {} object copies to recover",
            pgs.missing_copies
        ));
    }
    let unknown = count(&|k| k == "unknown" || k == "peering");
    if unknown > 0 && !osds.is_empty() {
        warn.push(format!("{unknown} pg(s) peering or not yet reported"));
    }
    for o in osds.iter().filter(|o| o.up && o.capacity_bytes > 0) {
        let used = 1.0 - o.free_bytes as f64 / o.capacity_bytes as f64;
        if used > nearfull {
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
        mds: st
            .members
            .iter()
            .map(|m| MdsMemberStatus {
                id: m.id,
                addr: m.addr.clone(),
                leader: m.leader,
                active: m.active,
                matched: m.matched,
                lag: m.lag,
            })
            .collect(),
        term: st.term,
        commit_index: st.commit_index,
        applied_index: st.applied_index,
        log_first_index: st.log_first_index,
        osd_epoch: map.epoch,
        osds,
        files: st.files,
        pool: PoolStatus {
            size: map.size,
            min_size: map.min_size,
            pg_count: map.pg_count,
        },
        pgs,
        sessions: st
            .sessions
            .iter()
            .map(|s| SessionStatus {
                id: s.session,
                host: s.host.clone(),
                mount_point: s.mount_point.clone(),
                silent_ms: s.silent_ms,
                locks: s.locks,
                leases: s.leases,
                late_acks: s.late_acks,
            })
            .collect(),
        evicted: map.blocklist.clone(),
    }
}

/// What a scrub of the whole cluster found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubTotals {
    /// OSDs that scrubbed their PGs.
    pub osds: u32,
    /// Objects scrubbed.
    pub objects: u64,
    /// Bad or disagreeing copies found.
    pub inconsistent: u64,
    /// Of those, repaired.
    pub repaired: u64,
    /// OSDs that could not scrub.
    pub errors: Vec<String>,
}

/// Asks every up OSD to scrub the PGs it is primary of, all at once, and sums the answers.
pub async fn scrub(addrs: &[String], deep: bool) -> anyhow::Result<ScrubTotals> {
    let st = fetch(addrs).await?;
    let map = st.osd_map.unwrap_or_default();
    let calls = map.osds.iter().filter(|o| o.up).map(|o| async move {
        let result = async {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", o.addr))?
                .connect_timeout(Duration::from_secs(2));
            let mut c = shoal_proto::osd::osd_client::OsdClient::new(ep.connect().await?);
            let r = c
                .scrub(shoal_proto::osd::ScrubRequest { deep })
                .await?
                .into_inner();
            anyhow::Ok(r)
        }
        .await;
        (o.id, result)
    });
    let mut totals = ScrubTotals::default();
    for (id, r) in futures::future::join_all(calls).await {
        match r {
            Ok(r) => {
                totals.osds += 1;
                totals.objects += r.objects;
                totals.inconsistent += r.inconsistent;
                totals.repaired += r.repaired;
            }
            Err(e) => totals.errors.push(format!("osd.{id}: {e:#}")),
        }
    }
    Ok(totals)
}

/// Asks the leader (through whichever member answers and names it). A member that knows of
/// no leader (cut off from the others, say) answers with its own view; that view is returned
/// only when no other member knows a leader either.
pub async fn fetch(addrs: &[String]) -> anyhow::Result<StatusReply> {
    let mut leaderless = None;
    let mut last_err = None;
    for a in addrs {
        // Each member in turn; a follower's redirect leads to the leader.
        match call_leader(std::slice::from_ref(a), |mut c| async move {
            c.status(StatusRequest {}).await.map(|r| r.into_inner())
        })
        .await
        {
            Ok(st) if st.leader_id != 0 => return Ok(st),
            Ok(st) => leaderless = leaderless.or(Some(st)),
            Err(e) => last_err = Some(e),
        }
    }
    match (leaderless, last_err) {
        (Some(st), _) => Ok(st),
        (None, Some(e)) => Err(e),
        (None, None) => Err(anyhow::anyhow!("no MDS address")),
    }
}

/// Makes `call` on the first MDS that answers it, following a follower's redirect to the
/// leader it names.
pub async fn call_leader<T, F, Fut>(addrs: &[String], call: F) -> anyhow::Result<T>
where
    F: Fn(MdsClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut last = None;
    let mut queue: std::collections::VecDeque<String> = addrs.iter().cloned().collect();
    let mut tried = std::collections::HashSet::new();
    while let Some(a) = queue.pop_front() {
        if !tried.insert(a.clone()) {
            continue;
        }
        let attempt = async {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{a}"))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(15));
            let c = MdsClient::new(ep.connect().await?);
            anyhow::Ok(call(c).await?)
        };
        match attempt.await {
            Ok(st) => return Ok(st),
            Err(e) => {
                let status = e.downcast_ref::<tonic::Status>();
                match status.map(|s| (s.code(), status_errno(s))) {
                    // A follower names the leader: ask it next.
                    Some((
                        _,
                        WireError::NotLeader {
                            leader: Some(leader),
                        },
                    )) => queue.push_front(leader),
                    // A refusal on its merits (not a member, a change in progress): final.
                    Some((
                        tonic::Code::InvalidArgument
                        | tonic::Code::AlreadyExists
                        | tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition,
                        _,
                    ))
                    | Some((
                        _,
                        WireError::Errno {
                            errno: libc::EBUSY, ..
                        },
                    )) => {
                        return Err(anyhow::anyhow!(
                            "{a}: {}",
                            status.map_or("", |s| s.message())
                        ))
                    }
                    _ => {}
                }
                last = Some(anyhow::anyhow!("{a}: {e}"));
            }
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
        "mds: {} member(s) {:?}, leader {}, term {}, commit {}, applied {}, log from {}\n",
        r.mds_members.len(),
        r.mds_members,
        if r.mds_leader == 0 {
            "none".to_string()
        } else {
            r.mds_leader.to_string()
        },
        r.term,
        r.commit_index,
        r.applied_index,
        r.log_first_index
    );
    if r.mds.len() > 1 {
        for m in &r.mds {
            out += &format!(
                "  mds.{} {} {}{}\n",
                m.id,
                m.addr,
                if m.leader { "leader" } else { "follower" },
                if m.leader {
                    String::new()
                } else if m.active {
                    format!(", {} entries behind", m.lag)
                } else {
                    ", not answering".to_string()
                }
            );
        }
    }
    let up = r.osds.iter().filter(|o| o.up).count();
    out += &format!(
        "osd: {} total, {} up, map epoch {}\n",
        r.osds.len(),
        up,
        r.osd_epoch
    );
    for o in &r.osds {
        out += &format!(
            "  osd.{:<3} {:<4} {:<3} {:<21} {:<10} used {:>10}  disk {:>10} free of {:>10}  epoch {}\n",
            o.id,
            if o.up { "up" } else { "down" },
            if o.in_cluster { "in" } else { "out" },
            o.addr,
            o.host,
            gib(o.used_bytes),
            gib(o.free_bytes),
            gib(o.capacity_bytes),
            o.map_epoch
        );
    }
    out += &format!(
        "pool: size {}, min_size {}, {} pgs\n",
        r.pool.size, r.pool.min_size, r.pool.pg_count
    );
    let states: Vec<String> = r
        .pgs
        .states
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    out += &format!("pgs: {}\n", states.join(", "));
    out += &format!(
        "clients: {} session(s), {} evicted\n",
        r.sessions.len(),
        r.evicted.len()
    );
    for s in &r.sessions {
        out += &format!(
            "  {:016x} {} {}  last heard {:.1} s ago, {} lock(s), {} lease(s), {} late ack(s)\n",
            s.id,
            if s.host.is_empty() { "?" } else { &s.host },
            if s.mount_point.is_empty() {
                "?"
            } else {
                &s.mount_point
            },
            s.silent_ms as f64 / 1000.0,
            s.locks,
            s.leases,
            s.late_acks
        );
    }
    if r.pgs.missing_copies > 0 || r.pgs.recovery_per_sec > 0.0 {
        out += &format!(
            "recovery: {} object copies left, {:.1} copies/s\n",
            r.pgs.missing_copies, r.pgs.recovery_per_sec
        );
    }
    if r.pgs.repaired > 0 || r.pgs.inconsistent > 0 {
        out += &format!(
            "scrub: {} bad copies repaired, {} inconsistent\n",
            r.pgs.repaired, r.pgs.inconsistent
        );
    }
    out += &format!("objects: {}, files: {}\n", r.pgs.objects, r.files);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::mds::{MdsMember, OsdInfo, OsdMap, PgStat};

    /// One MDS, one OSD whose disk is `used` of 1000 bytes, one clean PG.
    fn reply(used: u64) -> StatusReply {
        StatusReply {
            members: vec![MdsMember {
                id: 1,
                addr: "a".into(),
                leader: true,
                active: true,
                ..Default::default()
            }],
            leader_id: 1,
            osd_map: Some(OsdMap {
                epoch: 1,
                osds: vec![OsdInfo {
                    id: 0,
                    up: true,
                    in_cluster: true,
                    capacity_bytes: 1000,
                    free_bytes: 1000 - used,
                    ..Default::default()
                }],
                pg_count: 1,
                size: 1,
                min_size: 1,
                blocklist: Vec::new(),
            }),
            pgs: vec![PgStat {
                pg: 0,
                state: "active+clean".into(),
                acting: vec![0],
                epoch: 1,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_disk_over_the_nearfull_ratio_is_a_warning() {
        let ok = report(&reply(500), NEARFULL);
        assert_eq!(ok.health, "HEALTH_OK", "{:?}", ok.reasons);
        let r = report(&reply(860), NEARFULL);
        assert_eq!(r.health, "HEALTH_WARN");
        assert_eq!(r.reasons, vec!["osd.0 disk 86% full".to_string()]);
        assert_eq!(report(&reply(860), 0.95).health, "HEALTH_OK");
        assert_eq!(report(&reply(960), 0.95).health, "HEALTH_WARN");
    }
}
