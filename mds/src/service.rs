//! The `Mds` gRPC service: reads are served from the applied state, mutations go through the
//! Raft node. Also tracks OSD liveness from their reports (soft state, kept on the leader).
// `tonic::Status` is the error type of the generated service trait; boxing it here would only
// add a conversion at every handler.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{ConfChange, ConfChangeType};
use shoal_proto::limits::{check_name, BATCH_MAX, RELEASES_MAX};
use shoal_proto::mds::mds_server::Mds;
use shoal_proto::mds::*;
use shoal_proto::placement::{default_min_size, DEFAULT_PG_COUNT, DEFAULT_SIZE};
use shoal_proto::quota::{RBYTES, RFILES};
use shoal_proto::request::{session_of, ReqId};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::command::{Applied, Bootstrap, Op, Pool, RecoverWrites, SetOsdState, TakeInodes};
use crate::error::MdsError;
use crate::fsm::{Fsm, ROOT_INO};
use crate::leases::Leases;
use crate::node::NodeHandle;
use crate::recovery::{needs_recovery, Prober};

/// Usage and last report of one OSD.
#[derive(Debug, Clone)]
struct Liveness {
    last_heard: Instant,
    capacity: u64,
    used: u64,
    free: u64,
    device: String,
    /// The OSD map epoch it last said it works at.
    epoch: u64,
}

/// What the leader learns from heartbeats: soft state, rebuilt from reports after a restart.
#[derive(Default)]
struct Reports {
    osds: HashMap<u32, Liveness>,
    /// Latest stat of each PG, from the primary at the newest epoch.
    pgs: HashMap<u32, PgStat>,
    /// Per OSD, the recovered-copies total it last reported.
    recovered_total: HashMap<u32, u64>,
    /// (when, copies recovered) for the recovery rate.
    recovered_log: VecDeque<(Instant, u64)>,
}

/// A client session as the leader last heard it (soft state).
#[derive(Debug, Clone)]
struct Seen {
    last_heard: Instant,
    host: String,
    mount_point: String,
}

/// What the leader creates in a brand-new cluster.
#[derive(Debug, Clone)]
pub struct NewCluster {
    /// Owner of the root directory.
    pub root_uid: u32,
    /// Group of the root directory.
    pub root_gid: u32,
    /// The data pool's settings.
    pub pool: Pool,
}

/// Failure-detector and pool settings of the service.
#[derive(Debug, Clone)]
pub struct MapSettings {
    /// An OSD not heard from for this long is marked down.
    pub osd_grace: Duration,
    /// An OSD down for this long is marked out, and its PGs move.
    pub osd_out_after: Duration,
    /// A client session silent this long is ended (its locks released).
    pub session_timeout: Duration,
    /// How long a lease lasts.
    pub lease: Duration,
    /// The root directory and pool of a new cluster.
    pub new_cluster: NewCluster,
}

/// The service state shared by all handlers.
#[derive(Clone)]
pub struct MdsService {
    node: NodeHandle,
    fsm: Fsm,
    settings: MapSettings,
    started: Instant,
    reports: Arc<Mutex<Reports>>,
    sessions: Arc<Mutex<HashMap<u64, Seen>>>,
    /// Sessions being evicted now (waiting for the OSDs to learn the blocklist).
    evicting: Arc<Mutex<HashSet<u64>>>,
    leases: Leases,
    /// Asks the OSDs what departed writers left (one recovery per file at a time).
    prober: Arc<Prober>,
    recovering: Arc<Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>>,
}

type Reply<T> = Result<Response<T>, Status>;

const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Rounds of revocations before a tree's usage is read (see `MdsService::usage_settled`).
const USAGE_ROUNDS: usize = 4;
/// The extended attribute that gives an executable file capabilities.
const CAPABILITIES: &[u8] = b"security.capability";

fn attr_of(a: Applied) -> Result<Attr, Status> {
    match a {
        Applied::Attr(attr) => Ok(attr),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

/// What a change touched: inodes, and the names changed in each (for directories).
type Touched = Vec<(u64, Vec<Bytes>)>;

fn orphan(a: Applied) -> Result<Option<Orphaned>, Status> {
    match a {
        Applied::Removed(o) => Ok(o.map(|attr| Orphaned { attr: Some(attr) })),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

fn epoch_of(a: Applied) -> Result<u64, Status> {
    match a {
        Applied::Epoch(e) => Ok(e),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

fn name_ok(name: &[u8]) -> Result<(), Status> {
    check_name(name).map_err(|e| MdsError::fs(e, "invalid name").into())
}

impl MdsService {
    /// Builds the service over a running node.
    pub fn new(node: NodeHandle, fsm: Fsm, settings: MapSettings) -> MdsService {
        MdsService {
            node,
            fsm,
            started: Instant::now(),
            reports: Arc::default(),
            sessions: Arc::default(),
            evicting: Arc::default(),
            leases: Leases::new(settings.lease),
            prober: Arc::default(),
            recovering: Arc::default(),
            settings,
        }
    }

    /// After a change by `session` was applied: revokes other sessions' leases on what it
    /// touched, and, on a new leader, waits out its predecessor's grants.
    async fn changed(&self, session: Option<u64>, mut touched: Touched) {
        touched.sort_by_key(|(ino, _)| *ino);
        touched.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1.append(&mut b.1);
                true
            } else {
                false
            }
        });
        let revokes = touched
            .into_iter()
            .filter(|(ino, _)| *ino != 0)
            .map(|(ino, names)| self.leases.revoke(ino, names, session, false));
        futures::future::join_all(revokes).await;
        self.leases.settle(&self.node).await;
    }

    /// `ino`'s attributes under a read lease for `session`, granted before they are read.
    async fn leased(&self, session: Option<u64>, ino: u64) -> Result<(Attr, u32), Status> {
        let ms = self.leases.grant_read(session, ino).await;
        Ok((self.current(session, ino).await?, ms))
    }

    /// `ino`'s attributes as `session` may see them: including what another session that
    /// held its write lease and went away left on the OSDs. If the OSDs cannot say, the
    /// recorded attributes (the mark stays for the next access), or with `strict` an error.
    async fn current(&self, session: Option<u64>, ino: u64) -> Result<Attr, Status> {
        self.current_as(session, ino, false).await
    }

    async fn current_as(
        &self,
        session: Option<u64>,
        ino: u64,
        strict: bool,
    ) -> Result<Attr, Status> {
        let attr = self.fsm.getattr(ino)?;
        if !needs_recovery(&attr, session, |w| self.leases.writing(ino, w)) {
            return Ok(attr);
        }
        // One recovery per file at a time; the others then find it done.
        self.one_at_a_time(ino, self.recover(session, ino, strict))
            .await
    }

    /// Runs `f` while no recovery of file `ino` runs (nor another such `f`).
    async fn one_at_a_time<T>(&self, ino: u64, f: impl std::future::Future<Output = T>) -> T {
        let one = self
            .recovering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ino)
            .or_default()
            .clone();
        let result = {
            let _one = one.lock().await;
            f.await
        };
        let mut map = self.recovering.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits for it.
        if Arc::strong_count(&one) == 2 {
            map.remove(&ino);
        }
        result
    }

    async fn recover(&self, session: Option<u64>, ino: u64, strict: bool) -> Result<Attr, Status> {
        // A predecessor may have granted the writer a lease that is still running.
        self.leases.settle(&self.node).await;
        let attr = self.fsm.getattr(ino)?;
        if !needs_recovery(&attr, session, |w| self.leases.writing(ino, w)) {
            return Ok(attr);
        }
        let layout = attr
            .layout
            .unwrap_or_else(shoal_proto::layout::default_layout);
        let map = self.osd_map()?;
        let extent = match self.prober.file_extent(&map, ino, &layout).await {
            Ok(e) => e,
            Err(e) if strict => return Err(e.into()),
            Err(e) => {
                warn!(ino, writer = attr.writer, error = %e,
                    "cannot find what the file's departed writer left; keeping the recorded size");
                return Ok(attr);
            }
        };
        let after = attr_of(
            self.propose(Op::RecoverWrites(RecoverWrites {
                ino,
                writer_mark: attr.writer_mark,
                end: extent.end,
                mtime: extent.mtime,
            }))
            .await?,
        )?;
        info!(
            ino,
            writer = attr.writer,
            size = after.size,
            recorded = attr.size,
            "recorded what a departed writer left"
        );
        Ok(after)
    }

    /// Before `session` changes `ino`: other sessions' write leases on it are revoked (their
    /// sizes reach the MDS first) and what departed writers left is recorded, so the change
    /// comes after every write that returned (or fails while the OSDs cannot say).
    async fn writes_settled(&self, session: Option<u64>, ino: u64) -> Result<(), Status> {
        if ino == 0 {
            return Ok(());
        }
        self.leases.revoke(ino, Vec::new(), session, true).await;
        match self.current_as(session, ino, true).await {
            // Gone already: the change itself will say so.
            Err(e) if shoal_proto::error::status_errno(&e).errno() == libc::ENOENT => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    /// Before `session` reads or changes the entries of directory `dir`: another session's
    /// directory lease on it is revoked, so the entries that session made under it reach the
    /// MDS first (its batch lands before the holder acks).
    async fn entries_settled(&self, session: Option<u64>, dir: u64) {
        if dir != 0 {
            self.leases.contend(dir, session);
            self.leases.revoke(dir, Vec::new(), session, true).await;
        }
    }

    /// Before `session` reads the usage of directory `dir`'s tree or sets a quota on it
    /// (a first one counts the tree): other sessions' write leases on what is in it are
    /// revoked, so the sizes and entries they keep reach the MDS first. Again while a round
    /// finds leases the last one did not revoke (a directory lease's creates, landing, come
    /// with write leases on the new files), a few rounds at most. (A tree too large or odd
    /// to walk gets its own error from the call itself.)
    async fn usage_settled(&self, session: Option<u64>, dir: u64) {
        let mut done = std::collections::HashSet::new();
        for _ in 0..USAGE_ROUNDS {
            let written: Vec<u64> = self
                .leases
                .written(session)
                .into_iter()
                .filter(|ino| !done.contains(ino))
                .collect();
            let Ok(inos) = self.fsm.in_tree(dir, &written) else {
                return;
            };
            if inos.is_empty() {
                return;
            }
            let revokes = inos
                .iter()
                .map(|&ino| self.leases.revoke(ino, Vec::new(), session, true));
            futures::future::join_all(revokes).await;
            done.extend(inos);
        }
    }

    /// The directory lease on `dir` for `session`, if it may have one (see
    /// `Fsm::may_lease_dir`) and no other session holds a lease on it. Milliseconds (0: none).
    fn grant_dir(&self, session: Option<u64>, dir: u64) -> u32 {
        if !self.fsm.may_lease_dir(dir).unwrap_or(false) {
            return 0;
        }
        self.leases.grant_write(session, dir)
    }

    /// Before a call on ACL `name` of `ino`: other sessions' write leases on it are revoked,
    /// so a mode change one of them keeps with its lease reaches the MDS first (the access
    /// ACL follows the mode, and setting one sets the mode).
    async fn acl_settled(&self, session: Option<u64>, ino: u64, name: &[u8]) {
        if name.starts_with(b"system.posix_acl") {
            self.leases.revoke(ino, Vec::new(), session, true).await;
        }
    }

    /// `SetAttr.keep_mark`: grants `session` the write lease on `ino` again if the file is
    /// still marked with it under `mark`. The lease is reserved before the mark is checked a
    /// second time, so no recovery clears the mark between the check and the grant.
    async fn keep_write_lease(
        &self,
        session: Option<u64>,
        ino: u64,
        mark: u64,
    ) -> Reply<AttrReply> {
        self.node.read_barrier().await?;
        let marked = |a: &Attr| Some(a.writer) == session && a.writer_mark == mark;
        let mut attr = self.fsm.getattr(ino)?;
        let mut write_lease_ms = 0;
        if let Some(s) = session.filter(|_| marked(&attr) && self.leases.may_write(session, ino)) {
            self.leases.reserve_write(s, ino);
            attr = self.fsm.getattr(ino)?;
            if marked(&attr) {
                write_lease_ms = self.leases.grant_write(session, ino);
            }
        }
        Ok(Response::new(AttrReply {
            quota_room: self.fsm.quota_room(&attr)?,
            attr: Some(attr),
            lease_ms: 0,
            write_lease_ms,
            dir: None,
            dir_lease_ms: 0,
            no_capabilities: false,
        }))
    }

    /// An entry's reply: `ino`'s attributes under a read lease, which the directory's lease
    /// (`dir_ms`, granted before the entry was read) caps.
    /// An entry's reply: `ino`'s attributes and the lease on it and its directory; with
    /// `dir`, the directory's attributes too (after a change of its entries).
    async fn entry_reply(
        &self,
        session: Option<u64>,
        dir_ms: u32,
        ino: u64,
        dir: Option<u64>,
    ) -> Reply<AttrReply> {
        let (attr, ms) = if dir_ms > 0 {
            self.leased(session, ino).await?
        } else {
            (self.current(session, ino).await?, 0)
        };
        let dir = match dir {
            Some(d) if dir_ms > 0 => Some(self.fsm.getattr(d)?),
            _ => None,
        };
        Ok(Response::new(AttrReply {
            quota_room: self.fsm.quota_room(&attr)?,
            attr: Some(attr),
            lease_ms: ms.min(dir_ms),
            write_lease_ms: 0,
            dir,
            dir_lease_ms: 0,
            no_capabilities: false,
        }))
    }

    /// The write lease on a file `made` marked with `session` as its writer (a create that
    /// asked for it): granted unless the mark went meanwhile (no one else knew the file, but
    /// a listing may have found it). Without the grant the mark stays, and the file's next
    /// look finds the writer gone and its (absent) writes on the OSDs.
    fn grant_new_writer(&self, session: u64, made: &Attr) -> Result<u32, Status> {
        self.leases.reserve_write(session, made.ino);
        let ms = self.leases.grant_write(Some(session), made.ino);
        let now = self.fsm.getattr(made.ino)?;
        if ms == 0 || now.writer != session || now.writer_mark != made.writer_mark {
            self.leases.release_write(Some(session), made.ino);
            return Ok(0);
        }
        Ok(ms)
    }

    /// The inode `name` in `parent` names now, if any (what a change is about to touch).
    fn child(&self, parent: u64, name: &[u8]) -> u64 {
        self.fsm.lookup(parent, name).map_or(0, |a| a.ino)
    }

    async fn propose(&self, op: Op) -> Result<Applied, Status> {
        Ok(self.node.propose(op, None).await?)
    }

    /// Proposes a client's mutation, built from its request body, under the request id the
    /// client sent (if any).
    async fn propose_for<T>(
        &self,
        req: Request<T>,
        op: impl FnOnce(T) -> Op,
    ) -> Result<Applied, Status> {
        let id = ReqId::from_metadata(req.metadata()).map_err(Status::invalid_argument)?;
        Ok(self
            .node
            .propose(op(req.into_inner()), id.map(Into::into))
            .await?)
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, Reports> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn osd_map(&self) -> Result<OsdMap, MdsError> {
        let (epoch, records) = self.fsm.osds()?;
        let pool = self.fsm.pool()?.unwrap_or(Pool {
            size: DEFAULT_SIZE,
            min_size: default_min_size(DEFAULT_SIZE),
            pg_count: DEFAULT_PG_COUNT,
        });
        let reports = self.reports();
        let now = Instant::now();
        let osds = records
            .into_iter()
            .map(|r| {
                let l = reports.osds.get(&r.id);
                let heard = l.map(|l| now.duration_since(l.last_heard));
                OsdInfo {
                    id: r.id,
                    addr: r.addr,
                    host: r.host,
                    up: r.up,
                    in_cluster: r.in_cluster,
                    up_from: r.up_from,
                    // Unknown (0) until this leader has a report: never a false "disk full".
                    capacity_bytes: l.map_or(0, |l| l.capacity),
                    used_bytes: l.map_or(0, |l| l.used),
                    free_bytes: l.map_or(0, |l| l.free),
                    last_heard_ms: heard.map_or(0, |h| h.as_millis() as u64),
                    device: l.map_or_else(String::new, |l| l.device.clone()),
                    map_epoch: l.map_or(0, |l| l.epoch),
                }
            })
            .collect();
        Ok(OsdMap {
            epoch,
            osds,
            pg_count: pool.pg_count,
            size: pool.size,
            min_size: pool.min_size,
            blocklist: self.fsm.blocklist()?,
        })
    }

    fn heard(&self, r: &OsdReportRequest) {
        let mut rep = self.reports();
        rep.osds.insert(
            r.id,
            Liveness {
                last_heard: Instant::now(),
                capacity: r.capacity_bytes,
                used: r.used_bytes,
                free: r.free_bytes,
                device: r.device.clone(),
                epoch: r.epoch,
            },
        );
        let total: u64 = r.pgs.iter().map(|p| p.recovered).sum();
        let last = rep.recovered_total.insert(r.id, total).unwrap_or(0);
        let delta = total.checked_sub(last).unwrap_or(total);
        let now = Instant::now();
        if delta > 0 {
            rep.recovered_log.push_back((now, delta));
        }
        while rep
            .recovered_log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            rep.recovered_log.pop_front();
        }
        for p in &r.pgs {
            let newer = rep.pgs.get(&p.pg).is_none_or(|old| old.epoch <= p.epoch);
            if newer {
                rep.pgs.insert(p.pg, p.clone());
            }
        }
    }

    /// The leader's duties: creates the root directory and the pool of a new cluster, then
    /// runs the failure detector (silent OSDs down after the grace period, down OSDs out
    /// after the out interval). Runs until the process ends.
    pub async fn monitor(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // The term this node leads and since when: OSDs it has not heard from yet get a grace
        // period from then, not from the process start.
        let mut leading: Option<(u64, Instant)> = None;
        loop {
            tick.tick().await;
            let st = self.node.status();
            if st.leader_id != st.id {
                leading = None;
                continue;
            }
            let since = match leading {
                Some((term, since)) if term == st.term => since,
                _ => {
                    leading = Some((st.term, Instant::now()));
                    Instant::now()
                }
            };
            self.leases.note_leading(&self.node);
            self.leases.prune();
            if let Err(e) = self.new_cluster().await {
                warn!(error = %e.message(), "cannot set up the new cluster yet");
                continue;
            }
            if let Err(e) = self.check_osds(since.max(self.started)).await {
                warn!(error = %e.message(), "osd failure check failed");
            }
            if let Err(e) = self.check_sessions(since.max(self.started)).await {
                warn!(error = %e.message(), "session check failed");
            }
        }
    }

    /// Creates the root directory and the pool if the namespace has none (a new cluster).
    async fn new_cluster(&self) -> Result<(), Status> {
        let nc = &self.settings.new_cluster;
        if !self.fsm.bootstrapped()? {
            self.propose(Op::Bootstrap(Bootstrap {
                uid: nc.root_uid,
                gid: nc.root_gid,
            }))
            .await?;
            info!("created the root directory");
        }
        if self.fsm.pool()?.is_none() {
            self.propose(Op::SetPool(nc.pool)).await?;
            info!(
                size = nc.pool.size,
                min_size = nc.pool.min_size,
                "created the pool"
            );
        }
        Ok(())
    }

    async fn check_osds(&self, leading_since: Instant) -> Result<(), Status> {
        let (_, records) = self.fsm.osds()?;
        let now = Instant::now();
        let wall = crate::node::now().sec;
        for r in records {
            let heard = self
                .reports()
                .osds
                .get(&r.id)
                .map(|l| l.last_heard)
                // Heard of by a previous leader: give it a grace period from our election.
                .unwrap_or(leading_since);
            let silent = now.duration_since(heard);
            let change = if r.up && silent > self.settings.osd_grace {
                warn!(
                    osd = r.id,
                    silent_ms = silent.as_millis() as u64,
                    "marking osd down"
                );
                Some((false, r.in_cluster))
            } else if !r.up
                && r.in_cluster
                // A clock that went backwards counts as no time down.
                && wall.saturating_sub(r.down_since).max(0) as u64
                    >= self.settings.osd_out_after.as_secs()
            {
                warn!(osd = r.id, "osd down too long: marking it out");
                Some((false, false))
            } else {
                None
            };
            if let Some((up, in_cluster)) = change {
                let epoch = epoch_of(
                    self.propose(Op::SetOsdState(SetOsdState {
                        id: r.id,
                        up,
                        in_cluster,
                    }))
                    .await?,
                )?;
                info!(osd = r.id, up, in_cluster, epoch, "osd map changed");
            }
        }
        Ok(())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Seen>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session a request names, refused if it was evicted.
    fn session(&self, md: &tonic::metadata::MetadataMap) -> Result<Option<u64>, Status> {
        match session_of(md) {
            Some(s) if self.fsm.blocklisted(s)? => Err(MdsError::Evicted(s).into()),
            other => Ok(other),
        }
    }

    /// Evicts sessions silent for the session timeout: those this leader heard from, and
    /// those holding locks (counted from our election if a previous leader heard them).
    /// Each eviction runs on its own task, as it waits for the OSDs.
    async fn check_sessions(&self, leading_since: Instant) -> Result<(), Status> {
        let timeout = self.settings.session_timeout;
        let now = Instant::now();
        let holders = self.fsm.locks_per_session()?;
        let mut silent: Vec<(u64, Duration)> = self
            .seen()
            .iter()
            .map(|(id, s)| (*id, now.duration_since(s.last_heard)))
            .filter(|(_, d)| *d > timeout)
            .collect();
        for id in holders.keys() {
            if !self.seen().contains_key(id) && now.duration_since(leading_since) > timeout {
                silent.push((*id, now.duration_since(leading_since)));
            }
        }
        for (session, quiet) in silent {
            if !self.evicting().insert(session) {
                continue;
            }
            warn!(
                session,
                locks = holders.get(&session).copied().unwrap_or(0),
                silent_ms = quiet.as_millis() as u64,
                "client session timed out: evicting it"
            );
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.evict(session).await {
                    warn!(session, error = %e.message(), "eviction not finished; will retry");
                }
                me.evicting().remove(&session);
            });
        }
        Ok(())
    }

    fn evicting(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.evicting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evicts `session`: blocklists it in a new OSD map epoch (from then on the MDS refuses
    /// it), waits until every up OSD works at that epoch (so they refuse it too), then ends
    /// it, releasing its locks. Only then can another client take them: a frozen or
    /// partitioned client can never write under a lock that went to someone else.
    async fn evict(&self, session: u64) -> Result<(), Status> {
        let epoch = epoch_of(
            self.propose(Op::Evict(EndSessionRequest {
                session,
                evict: true,
            }))
            .await?,
        )?;
        self.seen().remove(&session);
        self.leases.forget_session(session);
        self.osds_at(epoch).await?;
        self.propose(Op::EndSession(EndSessionRequest {
            session,
            evict: false,
        }))
        .await?;
        info!(session, epoch, "client session evicted and fenced");
        Ok(())
    }

    /// Waits until every OSD that is up in the map has reported working at `epoch` or a
    /// newer one. An OSD that stops reporting is marked down after the grace period (and
    /// refetches the map when it boots again), so this ends; it gives up after twice that.
    async fn osds_at(&self, epoch: u64) -> Result<(), Status> {
        let deadline = Instant::now() + self.settings.osd_grace * 2 + Duration::from_secs(5);
        loop {
            let (_, records) = self.fsm.osds()?;
            let behind: Vec<u32> = {
                let rep = self.reports();
                records
                    .iter()
                    .filter(|r| r.up)
                    .filter(|r| rep.osds.get(&r.id).is_none_or(|l| l.epoch < epoch))
                    .map(|r| r.id)
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Status::unavailable(format!(
                    "osds {behind:?} have not reached map epoch {epoch}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sessions for `shoal status`: those heard from and those holding locks.
    fn session_infos(&self) -> Result<Vec<SessionInfo>, Status> {
        let holders = self.fsm.locks_per_session()?;
        let leases = self.leases.per_session();
        let late = self.leases.late_acks();
        let now = Instant::now();
        let mut out: BTreeMap<u64, SessionInfo> = BTreeMap::new();
        for (id, s) in self.seen().iter() {
            out.insert(
                *id,
                SessionInfo {
                    session: *id,
                    host: s.host.clone(),
                    mount_point: s.mount_point.clone(),
                    silent_ms: now.duration_since(s.last_heard).as_millis() as u64,
                    locks: 0,
                    leases: 0,
                    late_acks: 0,
                },
            );
        }
        fn info(out: &mut BTreeMap<u64, SessionInfo>, id: u64) -> &mut SessionInfo {
            out.entry(id).or_insert_with(|| SessionInfo {
                session: id,
                ..Default::default()
            })
        }
        for (id, n) in holders {
            info(&mut out, id).locks = n;
        }
        for (id, n) in leases {
            info(&mut out, id).leases = n;
        }
        for (id, n) in late {
            if let Some(s) = out.get_mut(&id) {
                s.late_acks = n;
            }
        }
        Ok(out.into_values().collect())
    }

    fn pg_stats(&self, map: &OsdMap) -> (Vec<PgStat>, f64) {
        let rep = self.reports();
        let mut pgs: Vec<PgStat> = rep
            .pgs
            .values()
            .filter(|p| p.pg < map.pg_count)
            .cloned()
            .collect();
        pgs.sort_by_key(|p| p.pg);
        let recovered: u64 = rep.recovered_log.iter().map(|(_, n)| n).sum();
        (pgs, recovered as f64 / RATE_WINDOW.as_secs_f64())
    }
}

#[tonic::async_trait]
impl Mds for MdsService {
    async fn lookup(&self, req: Request<LookupRequest>) -> Reply<AttrReply> {
        let session = self.session(req.metadata())?;
        let r = req.into_inner();
        // The entry is cached under the directory's lease, the attributes under the child's.
        let dir_ms = self.leases.grant_read(session, r.parent).await;
        self.node.read_barrier().await?;
        let child = self.fsm.lookup(r.parent, &r.name)?.ino;
        self.entry_reply(session, dir_ms, child, None).await
    }

    async fn get_attr(&self, req: Request<GetAttrRequest>) -> Reply<AttrReply> {
        let session = self.session(req.metadata())?;
        let ino = req.into_inner().ino;
        let lease_ms = self.leases.grant_read(session, ino).await;
        self.node.read_barrier().await?;
        let attr = self.current(session, ino).await?;
        Ok(Response::new(AttrReply {
            quota_room: self.fsm.quota_room(&attr)?,
            attr: Some(attr),
            lease_ms,
            write_lease_ms: 0,
            dir: None,
            dir_lease_ms: 0,
            no_capabilities: false,
        }))
    }

    async fn set_attr(&self, mut req: Request<SetAttrRequest>) -> Reply<AttrReply> {
        let session = self.session(req.metadata())?;
        if let Some(mark) = req.get_ref().keep_mark {
            return self
                .keep_write_lease(session, req.get_ref().ino, mark)
                .await;
        }
        let r = req.get_ref();
        let (ino, want_write) = (r.ino, r.want_write_lease);
        let (sends_size, releases) = (r.grow_size.is_some(), r.release_write_lease);
        // Only the lease goes back: nothing changes that others cache.
        let release_only = !crate::fsm::changes_attrs(r);
        self.writes_settled(session, ino).await?;
        // The file is marked with the writer in the same entry that records its size, and the
        // lease is held from before that entry, so no recovery clears the mark while a grant
        // depends on it: a write lease is never held without the mark that lets its writes be
        // found.
        let writer = session.filter(|_| want_write && self.leases.may_write(session, ino));
        if let Some(w) = writer {
            self.leases.reserve_write(w, ino);
        }
        let mark = writer.is_some();
        req.get_mut().mark_writer = mark;
        // A size sent without the mark clears it: the lease goes back with it.
        let gives_back = (sends_size || releases) && !mark;
        let applied = match self.propose_for(req, Op::SetAttr).await {
            Ok(a) => attr_of(a)?,
            Err(e) => {
                if mark {
                    self.leases.release_write(session, ino);
                }
                return Err(e);
            }
        };
        if gives_back {
            self.leases.release_write(session, ino);
        }
        if !release_only {
            self.changed(session, vec![(ino, Vec::new())]).await;
        }
        let mut write_lease_ms = if mark {
            self.leases.grant_write(session, ino)
        } else {
            0
        };
        if write_lease_ms > 0 {
            // The grant rests on the mark this request made (a retried request makes none
            // anew: its first attempt's mark may be gone).
            let now = self.fsm.getattr(ino)?;
            if now.writer != applied.writer || now.writer_mark != applied.writer_mark {
                write_lease_ms = 0;
            }
        }
        if mark && write_lease_ms == 0 {
            // Marked but not granted (another session took a lease meanwhile): this entry
            // recorded all the writer did, so the mark can go without asking the OSDs.
            self.leases.release_write(session, ino);
            self.propose(Op::RecoverWrites(RecoverWrites {
                ino,
                writer_mark: applied.writer_mark,
                end: 0,
                mtime: None,
            }))
            .await?;
        }
        let (attr, lease_ms) = self.leased(session, ino).await?;
        Ok(Response::new(AttrReply {
            quota_room: self.fsm.quota_room(&attr)?,
            attr: Some(attr),
            lease_ms,
            write_lease_ms,
            dir: None,
            dir_lease_ms: 0,
            no_capabilities: false,
        }))
    }

    async fn release_writes(&self, req: Request<ReleaseWritesRequest>) -> Reply<Empty> {
        let session = self.session(req.metadata())?;
        let files: Vec<u64> = req.get_ref().files.iter().map(|f| f.ino).collect();
        if files.len() > RELEASES_MAX {
            return Err(Status::invalid_argument(format!(
                "{} write leases given back at once, at most {RELEASES_MAX}",
                files.len()
            )));
        }
        self.propose_for(req, Op::ReleaseWrites).await?;
        // The leases go where their marks went; one granted again since stays.
        for ino in files {
            let still = self
                .fsm
                .getattr(ino)
                .is_ok_and(|a| Some(a.writer) == session);
            if !still {
                self.leases.release_write(session, ino);
            }
        }
        Ok(Response::new(Empty {}))
    }

    async fn make_node(&self, mut req: Request<MakeNodeRequest>) -> Reply<AttrReply> {
        name_ok(&req.get_ref().name)?;
        let session = self.session(req.metadata())?;
        let r = req.get_mut();
        let (parent, name) = (r.parent, r.name.clone());
        let want_dir = r.want_dir_lease;
        // A new file comes marked with the writer in its own entry, so its first writes can
        // stay with the client: no entry of its own for the mark, no size sent at once.
        r.mark_writer = r.want_write_lease
            && r.kind == FileKind::Regular as i32
            && self.leases.may_hold_any(session);
        // Numbers and times of a client's own choosing come in batches only.
        r.ino = 0;
        r.time = None;
        self.entries_settled(session, parent).await;
        let made = attr_of(self.propose_for(req, Op::MakeNode).await?)?;
        self.changed(session, vec![(parent, vec![name])]).await;
        let dir_lease_ms = match want_dir {
            true if made.kind == FileKind::Directory as i32 => self.grant_dir(session, made.ino),
            true => self.grant_dir(session, parent),
            false => 0,
        };
        let write_lease_ms = match session {
            Some(s) if made.writer == s => {
                // Not while a recovery another look started may clear the mark afterwards.
                self.one_at_a_time(made.ino, async { self.grant_new_writer(s, &made) })
                    .await?
            }
            _ => 0,
        };
        let dir_ms = self.leases.grant_read(session, parent).await;
        let mut reply = self
            .entry_reply(session, dir_ms, made.ino, Some(parent))
            .await?;
        reply.get_mut().write_lease_ms = write_lease_ms;
        reply.get_mut().dir_lease_ms = dir_lease_ms;
        if reply.get_ref().lease_ms > 0 && made.kind == FileKind::Regular as i32 {
            // Read after the lease was granted (by `entry_reply`).
            let caps = self.fsm.getxattr(made.ino, CAPABILITIES);
            reply.get_mut().no_capabilities =
                matches!(caps, Err(MdsError::Fs { errno, .. }) if errno == libc::ENODATA);
        }
        Ok(reply)
    }

    async fn take_inodes(&self, req: Request<TakeInodesRequest>) -> Reply<TakeInodesReply> {
        let count = req.get_ref().count;
        let first = match self
            .propose_for(req, |r| Op::TakeInodes(TakeInodes { count: r.count }))
            .await?
        {
            Applied::Inodes(first) => first,
            other => {
                return Err(Status::internal(format!(
                    "unexpected apply result {other:?}"
                )))
            }
        };
        Ok(Response::new(TakeInodesReply { first, count }))
    }

    async fn batch(&self, mut req: Request<BatchRequest>) -> Reply<BatchReply> {
        let session = self.session(req.metadata())?;
        let Some(s) = session else {
            return Err(Status::invalid_argument(
                "a batch comes from a client session",
            ));
        };
        let r = req.get_mut();
        if r.ops.len() > BATCH_MAX || r.renew_dirs.len() > BATCH_MAX {
            return Err(Status::invalid_argument(format!(
                "{} changes and {} directory renewals in one batch, at most {BATCH_MAX} of each",
                r.ops.len(),
                r.renew_dirs.len()
            )));
        }
        let renew = std::mem::take(&mut r.renew_dirs);
        let dir_leases = |inos: BTreeSet<u64>| -> Vec<DirLease> {
            inos.into_iter()
                .map(|ino| DirLease {
                    ino,
                    lease_ms: self.grant_dir(session, ino),
                })
                .collect()
        };
        if r.ops.is_empty() {
            // Renewals alone: nothing to log.
            return Ok(Response::new(BatchReply {
                results: Vec::new(),
                dirs: dir_leases(renew.into_iter().collect()),
            }));
        }
        let mut dirs: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
        let mut changed = Vec::new();
        let mut gives_back = Vec::new();
        let mut marked = Vec::new();
        // Directories made, whose lease the client asked for, and removed.
        let mut made_dirs = HashSet::new();
        let mut removed = Vec::new();
        // Files unlinked: as for an unlink alone, data written elsewhere is recorded first.
        let mut unlinked = Vec::new();
        for op in &mut r.ops {
            match &mut op.op {
                Some(batch_op::Op::MakeNode(m)) => {
                    name_ok(&m.name)?;
                    dirs.entry(m.parent).or_default().push(m.name.clone());
                    if m.kind == FileKind::Directory as i32 && m.want_dir_lease {
                        made_dirs.insert(m.ino);
                    }
                    // Held only on numbers the session took for files not made yet, so no
                    // client can hold an existing file through a batch. Marked even where
                    // no lease can be granted now (a leader that just took over, before the
                    // session's lease stream is back): the client wrote the file before its
                    // create landed, and the mark lets it keep the lease for that data once
                    // the stream is back, unless another session found the file first.
                    m.mark_writer = m.want_write_lease && self.fsm.may_make(s, m.ino);
                    if m.mark_writer {
                        marked.push(m.ino);
                    }
                }
                Some(batch_op::Op::SetAttr(a)) => {
                    // Records what the client did to its own new files: no lease is asked
                    // for or kept here.
                    a.mark_writer = false;
                    a.want_write_lease = false;
                    a.keep_mark = None;
                    changed.push(a.ino);
                    if a.grow_size.is_some() || a.release_write_lease {
                        gives_back.push(a.ino);
                    }
                }
                Some(batch_op::Op::Purge(_)) => {}
                Some(batch_op::Op::Unlink(u)) => {
                    name_ok(&u.name)?;
                    dirs.entry(u.parent).or_default().push(u.name.clone());
                    // Made earlier in this batch, it has no number yet, nor anyone's lease.
                    let child = self.child(u.parent, &u.name);
                    if child != 0 {
                        removed.push(child);
                        if !u.dir {
                            unlinked.push(child);
                        }
                    }
                }
                None => {}
            }
        }
        // Others' leases go first, as for the same changes one by one (none is expected: the
        // caller held the directories alone and made the files itself).
        for &d in dirs.keys() {
            self.entries_settled(session, d).await;
        }
        for &ino in changed.iter().chain(&unlinked) {
            self.writes_settled(session, ino).await?;
        }
        for &ino in &marked {
            self.leases.reserve_write(s, ino);
        }
        let results = match self.propose_for(req, Op::Batch).await {
            Ok(Applied::Batch(results)) => results,
            Ok(other) => {
                return Err(Status::internal(format!(
                    "unexpected apply result {other:?}"
                )))
            }
            Err(e) => {
                for &ino in &marked {
                    self.leases.release_write(session, ino);
                }
                return Err(e);
            }
        };
        let touched = dirs
            .iter()
            .map(|(d, names)| (*d, names.clone()))
            .chain(changed.iter().chain(&removed).map(|&i| (i, Vec::new())))
            .collect();
        self.changed(session, touched).await;
        let mut out = Vec::with_capacity(results.len());
        for result in results {
            out.push(match result {
                // A purge: nothing to answer with.
                Ok((attr, _)) if attr.ino == 0 => BatchResult {
                    reply: Some(AttrReply::default()),
                    ..BatchResult::default()
                },
                Ok((attr, orphan)) => {
                    // Applied: what follows cannot fail the batch (the client would take
                    // every change as lost).
                    let write_lease_ms = if marked.contains(&attr.ino) && attr.writer == s {
                        self.one_at_a_time(attr.ino, async { self.grant_new_writer(s, &attr) })
                            .await
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    let lease_ms = self.leases.grant_read(session, attr.ino).await;
                    let attr = self.fsm.getattr(attr.ino).unwrap_or(attr);
                    BatchResult {
                        reply: Some(AttrReply {
                            quota_room: self.fsm.quota_room(&attr).unwrap_or(None),
                            attr: Some(attr),
                            lease_ms,
                            write_lease_ms,
                            dir: None,
                            dir_lease_ms: 0,
                            no_capabilities: false,
                        }),
                        errno: 0,
                        message: String::new(),
                        orphan: orphan.map(|a| Orphaned { attr: Some(a) }),
                    }
                }
                Err((errno, message)) => BatchResult {
                    reply: None,
                    errno,
                    message,
                    orphan: None,
                },
            });
        }
        // Marked files whose create failed (the reservation goes) and sizes sent (as a
        // SetAttr's, they give the write lease back): held only where the mark still is.
        for &ino in marked.iter().chain(&gives_back) {
            if !self.fsm.getattr(ino).is_ok_and(|a| a.writer == s) {
                self.leases.release_write(session, ino);
            }
        }
        // The leases of the directories the batch changed, made (those it did make), as for a
        // mkdir, and was asked to renew: each once.
        let made = out
            .iter()
            .filter_map(|r| r.reply.as_ref()?.attr.as_ref())
            .map(|a| a.ino)
            .filter(|ino| made_dirs.contains(ino));
        let dirs = dir_leases(dirs.keys().copied().chain(made).chain(renew).collect());
        Ok(Response::new(BatchReply { results: out, dirs }))
    }

    async fn unlink(&self, req: Request<UnlinkRequest>) -> Reply<UnlinkReply> {
        let session = self.session(req.metadata())?;
        let (parent, name) = (req.get_ref().parent, req.get_ref().name.clone());
        self.entries_settled(session, parent).await;
        let child = self.child(parent, &name);
        // An unlinked file's data is purged up to its recorded size.
        self.writes_settled(session, child).await?;
        let orphan = orphan(self.propose_for(req, Op::Unlink).await?)?;
        self.changed(session, vec![(parent, vec![name]), (child, Vec::new())])
            .await;
        // Read after the change: a later change by another client revokes the caller's
        // lease on the directory, if it holds one, and with it what this shows.
        let dir = self.fsm.getattr(parent).ok();
        Ok(Response::new(UnlinkReply {
            orphan,
            changed: vec![child],
            dir,
        }))
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Reply<RenameReply> {
        name_ok(&req.get_ref().new_name)?;
        let session = self.session(req.metadata())?;
        let r = req.get_ref();
        self.entries_settled(session, r.parent).await;
        self.entries_settled(session, r.new_parent).await;
        let replaced = self.child(r.new_parent, &r.new_name);
        let moved = self.child(r.parent, &r.name);
        let touched = vec![
            (moved, Vec::new()),
            (replaced, Vec::new()),
            (r.parent, vec![r.name.clone()]),
            (r.new_parent, vec![r.new_name.clone()]),
        ];
        self.writes_settled(session, replaced).await?;
        let orphan = orphan(self.propose_for(req, Op::Rename).await?)?;
        self.changed(session, touched).await;
        Ok(Response::new(RenameReply {
            orphan,
            changed: vec![moved, replaced],
        }))
    }

    async fn link(&self, req: Request<LinkRequest>) -> Reply<AttrReply> {
        name_ok(&req.get_ref().new_name)?;
        let session = self.session(req.metadata())?;
        let r = req.get_ref();
        let (ino, parent) = (r.ino, r.new_parent);
        let touched = vec![(parent, vec![r.new_name.clone()]), (ino, Vec::new())];
        self.entries_settled(session, parent).await;
        attr_of(self.propose_for(req, Op::Link).await?)?;
        self.changed(session, touched).await;
        let dir_ms = self.leases.grant_read(session, parent).await;
        self.entry_reply(session, dir_ms, ino, Some(parent)).await
    }

    async fn read_link(&self, req: Request<ReadLinkRequest>) -> Reply<ReadLinkReply> {
        self.node.read_barrier().await?;
        let target = self.fsm.readlink(req.into_inner().ino)?;
        Ok(Response::new(ReadLinkReply {
            target: target.into(),
        }))
    }

    async fn read_dir(&self, req: Request<ReadDirRequest>) -> Reply<ReadDirReply> {
        let session = self.session(req.metadata())?;
        self.entries_settled(session, req.get_ref().ino).await;
        self.node.read_barrier().await?;
        let r = req.into_inner();
        Ok(Response::new(self.fsm.readdir(r.ino, r.after, r.limit)?))
    }

    async fn stat_fs(&self, req: Request<StatFsRequest>) -> Reply<StatFsReply> {
        self.node.read_barrier().await?;
        let ino = req.into_inner().ino;
        // Each device counts once: OSDs sharing a disk share its capacity and free space. Every
        // byte is stored `size` times, so what files can use is the raw space over `size`.
        let map = self.osd_map()?;
        let mut devices = std::collections::HashSet::new();
        let (mut capacity, mut free, mut used) = (0u64, 0u64, 0u64);
        for o in map.osds.iter().filter(|o| o.up) {
            used += o.used_bytes;
            if o.device.is_empty() || devices.insert(o.device.as_str()) {
                capacity += o.capacity_bytes;
                free += o.free_bytes;
            }
        }
        let copies = map.size.max(1) as u64;
        let (capacity, used, free) = (capacity / copies, used / copies, free / copies);
        // Inside a tree under a quota, the quota is the filesystem's size (df in a volume).
        if let Some(q) = self.fsm.quota_over(ino.max(ROOT_INO))? {
            let capacity = if q.max_bytes > 0 {
                q.max_bytes
            } else {
                capacity
            };
            return Ok(Response::new(StatFsReply {
                capacity_bytes: capacity,
                used_bytes: q.rbytes,
                free_bytes: capacity.saturating_sub(q.rbytes).min(free),
                files: q.rfiles,
                max_files: q.max_files,
            }));
        }
        Ok(Response::new(StatFsReply {
            capacity_bytes: capacity,
            used_bytes: used,
            free_bytes: free,
            files: self.fsm.files()?,
            max_files: 0,
        }))
    }

    async fn get_xattr(&self, req: Request<GetXattrRequest>) -> Reply<GetXattrReply> {
        let session = self.session(req.metadata())?;
        self.acl_settled(session, req.get_ref().ino, &req.get_ref().name)
            .await;
        if [RBYTES, RFILES].contains(&&req.get_ref().name[..]) {
            self.usage_settled(session, req.get_ref().ino).await;
        }
        self.node.read_barrier().await?;
        let r = req.into_inner();
        let value = self.fsm.getxattr(r.ino, &r.name)?;
        Ok(Response::new(GetXattrReply {
            value: value.into(),
        }))
    }

    async fn set_xattr(&self, req: Request<SetXattrRequest>) -> Reply<Empty> {
        let session = self.session(req.metadata())?;
        let ino = req.get_ref().ino;
        // A default ACL or a quota set on a directory ends a directory lease on it too.
        self.entries_settled(session, ino).await;
        if shoal_proto::quota::is_limit(&req.get_ref().name) {
            self.usage_settled(session, ino).await;
        }
        self.propose_for(req, Op::SetXattr).await?;
        self.changed(session, vec![(ino, Vec::new())]).await;
        Ok(Response::new(Empty {}))
    }

    async fn list_xattr(&self, req: Request<ListXattrRequest>) -> Reply<ListXattrReply> {
        self.node.read_barrier().await?;
        let names = self.fsm.listxattr(req.into_inner().ino)?;
        Ok(Response::new(ListXattrReply {
            names: names.into_iter().map(Into::into).collect(),
        }))
    }

    async fn remove_xattr(&self, req: Request<RemoveXattrRequest>) -> Reply<Empty> {
        let session = self.session(req.metadata())?;
        let ino = req.get_ref().ino;
        self.entries_settled(session, ino).await;
        self.propose_for(req, Op::RemoveXattr).await?;
        self.changed(session, vec![(ino, Vec::new())]).await;
        Ok(Response::new(Empty {}))
    }

    async fn purge(&self, req: Request<PurgeRequest>) -> Reply<Empty> {
        self.propose_for(req, Op::Purge).await?;
        Ok(Response::new(Empty {}))
    }

    async fn osd_boot(&self, req: Request<OsdBootRequest>) -> Reply<OsdBootReply> {
        let r = req.into_inner();
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "bad OSD address {:?}",
                r.addr
            )));
        }
        let report = OsdReportRequest {
            id: r.id,
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            free_bytes: r.capacity_bytes.saturating_sub(r.used_bytes),
            ..Default::default()
        };
        let id = r.id;
        let epoch = epoch_of(self.propose(Op::OsdBoot(r)).await?)?;
        info!(osd = id, epoch, "osd booted");
        self.heard(&report);
        Ok(Response::new(OsdBootReply { epoch }))
    }

    async fn osd_report(&self, req: Request<OsdReportRequest>) -> Reply<OsdReportReply> {
        self.node.read_barrier().await?;
        let r = req.into_inner();
        let (epoch, records) = self.fsm.osds()?;
        if !records.iter().any(|o| o.id == r.id) {
            return Err(Status::not_found(format!("osd.{} has not booted", r.id)));
        }
        self.heard(&r);
        Ok(Response::new(OsdReportReply { epoch }))
    }

    async fn get_osd_map(&self, _req: Request<GetOsdMapRequest>) -> Reply<OsdMap> {
        self.node.read_barrier().await?;
        Ok(Response::new(self.osd_map()?))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Reply<StatusReply> {
        // Status must answer during an outage too: a follower sends the caller to the leader
        // it knows of, and with no leader anywhere any member reports its own view (leader 0).
        let st = self.node.status();
        if st.leader_id != 0 && st.leader_id != st.id {
            let leader = st
                .members
                .iter()
                .find(|(id, _)| *id == st.leader_id)
                .map(|(_, a)| a.clone());
            return Err(MdsError::NotLeader { leader }.into());
        }
        let map = self.osd_map()?;
        let (pgs, recovery_per_sec) = self.pg_stats(&map);
        let members = st
            .voters
            .iter()
            .map(|id| {
                let addr = st
                    .members
                    .iter()
                    .find(|(m, _)| m == id)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
                let p = st.progress.iter().find(|p| p.id == *id);
                let matched = p.map_or(0, |p| p.matched);
                MdsMember {
                    id: *id,
                    addr,
                    leader: *id == st.leader_id,
                    matched,
                    lag: st.last_index.saturating_sub(matched),
                    active: p.is_some_and(|p| p.active),
                }
            })
            .collect();
        Ok(Response::new(StatusReply {
            members,
            leader_id: st.leader_id,
            term: st.term,
            commit_index: st.commit,
            applied_index: st.applied,
            osd_map: Some(map),
            files: self.fsm.files()?,
            pgs,
            recovery_per_sec,
            bootstrapped: self.fsm.bootstrapped()?,
            log_first_index: st.first_index,
            self_id: st.id,
            sessions: self.session_infos()?,
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Reply<HeartbeatReply> {
        // Only the leader keeps sessions; a follower sends the client there.
        self.node.read_barrier().await?;
        let r = req.into_inner();
        if self.fsm.blocklisted(r.session)? {
            return Err(MdsError::Evicted(r.session).into());
        }
        self.seen().insert(
            r.session,
            Seen {
                last_heard: Instant::now(),
                host: r.host,
                mount_point: r.mount_point,
            },
        );
        Ok(Response::new(HeartbeatReply {
            timeout_ms: self.settings.session_timeout.as_millis() as u32,
        }))
    }

    async fn set_lock(&self, req: Request<LockRequest>) -> Reply<Empty> {
        self.propose_for(req, Op::SetLock).await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_lock(&self, req: Request<LockRequest>) -> Reply<LockReply> {
        self.node.read_barrier().await?;
        Ok(Response::new(self.fsm.get_lock(&req.into_inner())?))
    }

    async fn end_session(&self, req: Request<EndSessionRequest>) -> Reply<Empty> {
        // Idempotent, so no request id is needed (`shoal client evict` sends none).
        let r = req.into_inner();
        if r.evict {
            self.evict(r.session).await?;
            return Ok(Response::new(Empty {}));
        }
        self.propose(Op::EndSession(r)).await?;
        self.seen().remove(&r.session);
        self.leases.forget_session(r.session);
        Ok(Response::new(Empty {}))
    }

    type LeasesStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<LeaseDown, Status>> + Send + 'static>,
    >;

    async fn leases(&self, req: Request<Streaming<LeaseUp>>) -> Reply<Self::LeasesStream> {
        // Only the leader keeps leases; a follower sends the client there.
        self.node.read_barrier().await?;
        let mut up = req.into_inner();
        let first = up
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a lease stream starts with its session"))?;
        let session = first.session;
        if session == 0 {
            return Err(Status::invalid_argument("session 0 is not a session"));
        }
        if self.fsm.blocklisted(session)? {
            return Err(MdsError::Evicted(session).into());
        }
        let (n, rx) = self.leases.attach(session);
        let leases = self.leases.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = up.next().await {
                if m.ack != 0 {
                    leases.ack(m.ack);
                }
                if m.renew != 0 {
                    leases.renew(session, m.renew);
                }
            }
            leases.detach(session, n);
        });
        let down = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(down)))
    }

    async fn change_members(
        &self,
        req: Request<ChangeMembersRequest>,
    ) -> Reply<ChangeMembersReply> {
        let r = req.into_inner();
        let mut cc = ConfChange::default();
        match (r.add_id, r.remove_id) {
            (0, 0) | (1.., 1..) => {
                return Err(Status::invalid_argument(
                    "name one member to add or one to remove",
                ))
            }
            (id, 0) => {
                if r.add_addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(Status::invalid_argument(format!(
                        "{:?} is not an IP:PORT address",
                        r.add_addr
                    )));
                }
                if self.node.status().voters.contains(&id) {
                    return Err(Status::already_exists(format!(
                        "mds.{id} is already a member"
                    )));
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
                cc.context = r.add_addr.into_bytes().into();
            }
            (0, id) => {
                let st = self.node.status();
                if !st.voters.contains(&id) {
                    return Err(Status::not_found(format!("mds id {id} is not a member")));
                }
                if st.voters.len() == 1 {
                    return Err(Status::failed_precondition(
                        "the last member cannot be removed",
                    ));
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
            }
        }
        let voters = self.node.change_members(cc).await?;
        Ok(Response::new(ChangeMembersReply { voters }))
    }
}
