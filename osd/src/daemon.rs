//! The OSD's shared state and its client-facing data path: the OSD map it works at, per-object
//! ordering, and primary-copy replication.
//!
//! A client mutation reaches the PG's primary, which (under the object's lock) stamps a new
//! version, applies it locally and sends it to every other acting member in parallel, and
//! answers once `min_size` copies are durable. A replica applies an op only on top of the
//! version the primary had (`prior_version`); a replica that missed something refuses and is
//! recorded as missing the object, to be brought up to date by recovery.
//!
//! Versions are `max(previous + 1, epoch << 32)` (saturating): a primary in a newer epoch always writes
//! newer versions than any earlier primary, so "highest version wins" during peering.

// `tonic::Status` is what these paths hand back to gRPC handlers; boxing it would only add a
// conversion at every call.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use shoal_proto::batch::{answers, Batch, Batcher, Limits};
use shoal_proto::datachan::DataChannel;
use shoal_proto::error::{evicted_status, remap_status, status_errno, WireError};
use shoal_proto::layout::MAX_WRITE_EXTENTS;
use shoal_proto::mds::mds_client::MdsClient;
use shoal_proto::mds::{GetOsdMapRequest, OsdMap};
use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::osd::{
    Empty, Extent, ObjectCopy, PullRequest, RepKind, RepOpBatchRequest, RepOpRequest,
};
use shoal_proto::placement::{stable_hash, Placement};
use tokio::sync::{Notify, OwnedMutexGuard};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::applyq::{queued, ApplyQueue};
use crate::peering::PgInfo;
use crate::qos::Qos;
use crate::store::{ObjMeta, ObjectStore, Pending, StoreError};

const OBJECT_LOCKS: usize = 1024;
/// Reads up to this size run on the runtime's thread when the object is not being changed.
const INLINE_READ_MAX: u64 = 64 << 10;
/// How long a client op waits for its PG to finish peering before asking the client to retry.
const PEERING_WAIT: Duration = Duration::from_secs(5);

/// A mutation a client asks of an object.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Write bytes at offsets, in order, as one change (at least one extent).
    Write { extents: Vec<(u64, Bytes)> },
    /// Set the size.
    Truncate { size: u64 },
    /// Remove the object.
    Delete,
    /// Zero a range, cutting the object where the range reaches its end.
    Zero { offset: u64, len: u64 },
}

/// Placement by the map an OSD works at, and connections to its peers.
pub struct MapState {
    /// Placement answers for the map.
    pub placement: Placement,
    peers: HashMap<u32, (String, OsdClient<DataChannel>, DataChannel)>,
    /// Evicted client sessions, refused.
    blocklist: HashSet<u64>,
    /// What placement and peering depend on: the pool and each OSD's address, state and
    /// boot epoch. A new map that changes none of it (only the blocklist) needs no peering.
    shape: MapShape,
}

/// The parts of a map peering depends on (see [`MapState::shape`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct MapShape {
    pool: (u32, u32, u32),
    osds: Vec<(u32, String, String, bool, bool, u64)>,
}

impl MapShape {
    fn of(map: &OsdMap) -> MapShape {
        let mut osds: Vec<_> = map
            .osds
            .iter()
            .map(|o| {
                let (id, addr, host) = (o.id, o.addr.clone(), o.host.clone());
                (id, addr, host, o.up, o.in_cluster, o.up_from)
            })
            .collect();
        osds.sort();
        MapShape {
            pool: (map.pg_count, map.size, map.min_size),
            osds,
        }
    }
}

/// The OSD's state, shared by the gRPC service, the heartbeat and the recovery tasks.
pub struct Osd {
    /// This OSD's id.
    pub id: u32,
    /// Local objects.
    pub store: Arc<ObjectStore>,
    mds: Vec<String>,
    map: RwLock<Arc<MapState>>,
    refreshing: tokio::sync::Mutex<()>,
    locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// PGs this OSD is primary of, as last peered.
    pub pgs: Mutex<HashMap<u32, PgInfo>>,
    /// Woken when a PG finishes peering.
    pub peered: Notify,
    /// Client load, and the recovery turns that yield to it.
    pub qos: Qos,
    /// Set when the map says this OSD is down while it runs: the heartbeat boots again.
    pub wrongly_down: std::sync::atomic::AtomicBool,
    /// Held shared by each client change at its primary, from the check that this OSD is
    /// the primary at the current map until the change is applied and replicated; held
    /// exclusively while this OSD lists its objects for peering. A listing at a new epoch
    /// thus holds every change a primary of an older epoch acknowledged or still applies, and
    /// a change that starts after it sees the new map.
    pub epoch_gate: tokio::sync::RwLock<()>,
    /// Small replica ops queued behind calls still out to their replica.
    reps: Batcher<RepCall>,
    /// Small changes to the store, applied in groups.
    applyq: Arc<ApplyQueue>,
}

/// Small replica ops (64 KiB of data or less) to one OSD with two calls out to it already
/// wait and go together in one `Osd.RepOpBatch` call (see [`shoal_proto::batch`]). One that
/// goes alone is framed by [`shoal_proto::bulk`]: its data is not copied into the request.
#[derive(Clone)]
struct RepCall {
    stub: OsdClient<DataChannel>,
    channel: DataChannel,
}

/// `Osd.RepOp`, and the number of `RepOpRequest.data` (see `proto/osd.proto`).
const REP_OP_PATH: &str = "/shoal.osd.Osd/RepOp";
const REP_OP_DATA_FIELD: u32 = 8;

/// Replica ops carrying up to this many bytes may wait to go with others.
const SMALL_REP_OP: u64 = 64 << 10;

impl Batch for RepCall {
    type Req = RepOpRequest;
    type Rep = ();

    fn weight(r: &RepOpRequest) -> Option<u64> {
        let bytes = r.data.len() as u64 + r.more.iter().map(|e| e.data.len() as u64).sum::<u64>();
        (bytes <= SMALL_REP_OP).then_some(bytes.max(1))
    }

    async fn one(&self, mut req: RepOpRequest) -> Result<(), Status> {
        let data = std::mem::take(&mut req.data);
        let frames = shoal_proto::bulk::frames(&req, REP_OP_DATA_FIELD, &[data]);
        shoal_proto::bulk::unary::<Empty, _, _>(&self.channel, REP_OP_PATH, frames, 64 << 10)
            .await
            .map(|_| ())
    }

    async fn many(&self, ops: Vec<RepOpRequest>) -> Result<Vec<Option<()>>, Status> {
        let n = ops.len();
        let r = self
            .stub
            .clone()
            .rep_op_batch(RepOpBatchRequest { ops })
            .await?
            .into_inner();
        Ok(answers(vec![(); n], r.failed))
    }
}

/// A peer's channel: data-path HTTP/2 settings, large frames (see [`DataChannel`]).
fn channel(addr: &str) -> Result<DataChannel, Status> {
    DataChannel::new(addr).map_err(|e| Status::internal(format!("a peer's address: {e}")))
}

/// The next version of an object written at `epoch`.
pub fn next_version(prior: u64, epoch: u64) -> u64 {
    prior.saturating_add(1).max(epoch.saturating_mul(1 << 32))
}

/// The version a replica must hold for an op stamped on top of `meta`.
pub fn version_of(meta: Option<ObjMeta>) -> u64 {
    meta.map_or(0, |m| m.version)
}

impl Osd {
    /// A new OSD state over `store`, talking to the MDS at `mds`.
    /// Background recovery follows `qos`.
    pub fn new(id: u32, store: Arc<ObjectStore>, mds: Vec<String>, qos: Qos) -> Arc<Osd> {
        Arc::new(Osd {
            id,
            applyq: ApplyQueue::new(store.clone()),
            store,
            mds,
            map: RwLock::new(Arc::new(MapState {
                placement: Placement::default(),
                peers: HashMap::new(),
                blocklist: HashSet::new(),
                shape: MapShape::default(),
            })),
            refreshing: tokio::sync::Mutex::new(()),
            reps: Batcher::new(Limits {
                in_flight: 2,
                max_count: 64,
                max_weight: 4 << 20,
            }),
            locks: (0..OBJECT_LOCKS)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            pgs: Mutex::new(HashMap::new()),
            peered: Notify::new(),
            qos,
            wrongly_down: std::sync::atomic::AtomicBool::new(false),
            epoch_gate: tokio::sync::RwLock::new(()),
        })
    }

    /// The map the OSD works at now.
    pub fn map(&self) -> Arc<MapState> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Epoch of the current map.
    pub fn epoch(&self) -> u64 {
        self.map().placement.epoch
    }

    /// A client for peer `id`, if the map knows it.
    pub fn peer(&self, id: u32) -> Option<OsdClient<DataChannel>> {
        self.map().peers.get(&id).map(|(_, c, _)| c.clone())
    }

    /// Makes sure the OSD works at `epoch` or newer, fetching the map if it is behind.
    /// Only one fetch runs at a time; callers that arrive meanwhile share its result.
    pub async fn ensure_epoch(self: &Arc<Self>, epoch: u64) {
        if self.epoch() >= epoch {
            return;
        }
        let _one = self.refreshing.lock().await;
        if self.epoch() >= epoch {
            return;
        }
        if let Err(e) = self.fetch_map().await {
            warn!(error = %e, "cannot fetch the osd map");
        }
    }

    async fn fetch_map(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut last = None;
        for addr in &self.mds {
            let result = async {
                let mut c = MdsClient::connect(format!("http://{addr}")).await?;
                anyhow::Ok(c.get_osd_map(GetOsdMapRequest {}).await?.into_inner())
            }
            .await;
            match result {
                Ok(map) => {
                    self.install_map(map)?;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no MDS address")))
    }

    /// Refuses a client request from an evicted session (the map this OSD works at lists
    /// it). Callers first bring the OSD up to the epoch the client placed the request by.
    pub fn check_session(&self, session: u64) -> Result<(), Status> {
        if session != 0 && self.map().blocklist.contains(&session) {
            return Err(evicted_status(session));
        }
        Ok(())
    }

    /// Adopts `map` if it is newer than the current one, then re-peers (or, when only the
    /// blocklist changed, carries the PGs over to the new epoch as they are).
    pub fn install_map(self: &Arc<Self>, map: OsdMap) -> anyhow::Result<()> {
        let old = self.map();
        if map.epoch <= old.placement.epoch {
            return Ok(());
        }
        let mut peers = HashMap::new();
        for o in &map.osds {
            let (client, ch) = match old.peers.get(&o.id) {
                Some((addr, c, ch)) if *addr == o.addr => (c.clone(), ch.clone()),
                _ => {
                    let ch = channel(&o.addr)?;
                    let c = OsdClient::new(ch.clone())
                        .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES);
                    (c, ch)
                }
            };
            peers.insert(o.id, (o.addr.clone(), client, ch));
        }
        let me_down = map.osds.iter().any(|o| o.id == self.id && !o.up);
        let placement = Placement::from_map(&map);
        let epoch = placement.epoch;
        let shape = MapShape::of(&map);
        let same_shape = shape == old.shape;
        let blocklist = map.blocklist.iter().copied().collect();
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(MapState {
            placement,
            peers,
            blocklist,
            shape,
        });
        if me_down {
            warn!(
                osd = self.id,
                epoch, "the map says this osd is down; booting again"
            );
            self.wrongly_down
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if same_shape && !me_down && self.carry_pgs(old.placement.epoch, epoch) {
            info!(
                osd = self.id,
                epoch, "new osd map (blocklist only; pgs stay active)"
            );
            return Ok(());
        }
        info!(osd = self.id, epoch, "new osd map");
        let me = self.clone();
        tokio::spawn(async move { me.peer_all(epoch).await });
        Ok(())
    }

    /// Moves every PG this OSD is primary of from epoch `from` to `to` without peering, when
    /// all of them are active at `from` and none is recovering; false (nothing changed)
    /// otherwise, and the caller peers.
    fn carry_pgs(&self, from: u64, to: u64) -> bool {
        let m = self.map();
        let pl = &m.placement;
        let mine: Vec<u32> = (0..pl.pg_count)
            .filter(|&pg| pl.primary(pg) == Some(self.id))
            .collect();
        {
            let mut pgs = self.pgs.lock().unwrap_or_else(|p| p.into_inner());
            let ready = mine.iter().all(|pg| {
                pgs.get(pg)
                    .is_some_and(|i| i.epoch == from && !i.recovering)
            });
            if !ready || pgs.len() != mine.len() {
                return false;
            }
            for info in pgs.values_mut() {
                info.epoch = to;
            }
        }
        self.peered.notify_waiters();
        true
    }

    /// The lock that orders every change to `object` on this OSD.
    pub async fn lock_object(&self, object: &str) -> OwnedMutexGuard<()> {
        let i = (stable_hash(object.as_bytes()) >> 16) as usize % OBJECT_LOCKS;
        self.locks[i].clone().lock_owned().await
    }

    /// Runs store work on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Applies a mutation to the local store: a small one through the apply queue, a large
    /// one (synced in place) on the blocking pool. Returns the object's size.
    async fn apply_local(
        &self,
        object: String,
        mutation: Mutation,
        version: u64,
    ) -> Result<u64, Status> {
        if queued(&mutation) {
            let r = self.applyq.apply(object, mutation, version).await;
            r.map_err(Status::from)
        } else {
            self.blocking(move |s| apply(s, &object, &mutation, version))
                .await
        }
    }

    /// Waits until this OSD is the active primary of `object`'s PG at a map no older than
    /// `client_epoch`; returns the map and the PG.
    async fn primary_of(
        self: &Arc<Self>,
        object: &str,
        client_epoch: u64,
    ) -> Result<(Arc<MapState>, u32), Status> {
        self.ensure_epoch(client_epoch).await;
        let deadline = tokio::time::Instant::now() + PEERING_WAIT;
        loop {
            let m = self.map();
            let pl = &m.placement;
            let pg = pl.pg_of(object);
            if pl.primary(pg) != Some(self.id) {
                return Err(remap_status(
                    pl.epoch,
                    format!(
                        "osd.{} is not the primary of pg {pg} at epoch {}",
                        self.id, pl.epoch
                    ),
                ));
            }
            let acting = pl.acting(pg).len() as u32;
            if acting < pl.min_size {
                return Err(Status::unavailable(format!(
                    "pg {pg} has {acting} of {} copies up (min_size {})",
                    pl.size, pl.min_size
                )));
            }
            let notified = self.peered.notified();
            if self.pg_active(pg, pl.epoch) {
                return Ok((m, pg));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Status::unavailable(format!("pg {pg} is still peering")));
            }
        }
    }

    fn pg_active(&self, pg: u32, epoch: u64) -> bool {
        self.pgs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pg)
            .is_some_and(|p| p.epoch == epoch)
    }

    /// A client read at the primary: the local copy, brought up to date first if peering
    /// found it behind, and repaired from a replica if it fails its checksums.
    pub async fn client_read(
        self: &Arc<Self>,
        object: String,
        offset: u64,
        len: u64,
        client_epoch: u64,
        session: u64,
    ) -> Result<Option<Bytes>, Status> {
        let _load = self.qos.client_op();
        let (_m, pg) = self.primary_of(&object, client_epoch).await?;
        self.check_session(session)?;
        if self.locally_missing(pg, &object) {
            let _g = self.lock_object(&object).await;
            self.recover_object(pg, &object).await?;
        }
        let o = object.clone();
        // A small read of an object no change holds is a few page-cache reads: done here,
        // without the hand-off to the blocking pool and back (two thread switches).
        let now = (len <= INLINE_READ_MAX)
            .then(|| self.store.try_read(&object, offset, len))
            .flatten();
        let first = match now {
            Some(r) => r.map_err(Status::from),
            None => self.blocking(move |s| s.read(&o, offset, len)).await,
        };
        match first {
            Err(st) if is_corrupt(&st) => {
                let _g = self.lock_object(&object).await;
                self.repair_local(pg, &object).await?;
                let o = object.clone();
                self.blocking(move |s| s.read(&o, offset, len)).await
            }
            other => other,
        }
    }

    /// A client mutation at the primary; returns the object's size afterwards.
    pub async fn client_mutate(
        self: &Arc<Self>,
        object: String,
        mutation: Mutation,
        client_epoch: u64,
        session: u64,
    ) -> Result<u64, Status> {
        let _load = self.qos.client_op();
        // A listing for peering at a newer map that came in meanwhile (see `epoch_gate`)
        // may not hold this change: it starts again under that map.
        let (m, pg, _g, _gate) = loop {
            let (m, pg) = self.primary_of(&object, client_epoch).await?;
            let g = self.lock_object(&object).await;
            let gate = self.epoch_gate.read().await;
            if self.map().placement.epoch == m.placement.epoch {
                break (m, pg, g, gate);
            }
        };
        // Checked under the object's lock, so a write that got past it is applied before a
        // newer map's client (one that saw the eviction) gets to the object.
        self.check_session(session)?;
        if self.locally_missing(pg, &object) {
            self.recover_object(pg, &object).await?;
        }
        let meta = self.store.meta(&object);
        let live = meta.filter(|m| !m.deleted);
        match (&mutation, live) {
            // Nothing to delete or cut: no new version, nothing to replicate.
            (Mutation::Delete | Mutation::Zero { .. }, None)
            | (Mutation::Truncate { size: 0 }, None) => return Ok(0),
            _ => {}
        }
        let prior = version_of(meta);
        let version = next_version(prior, m.placement.epoch);
        let acting = m.placement.acting(pg);
        let local = self.apply_local(object.clone(), mutation.clone(), version);
        let replicas = join_all(acting.iter().filter(|&&id| id != self.id).map(|&id| {
            let req = RepOpRequest {
                object: object.clone(),
                epoch: m.placement.epoch,
                from: self.id,
                version,
                prior_version: prior,
                kind: match &mutation {
                    Mutation::Write { .. } => RepKind::RepWrite,
                    Mutation::Truncate { .. } => RepKind::RepTruncate,
                    Mutation::Delete => RepKind::RepDelete,
                    Mutation::Zero { .. } => RepKind::RepZero,
                } as i32,
                offset: match &mutation {
                    Mutation::Write { extents } => extents.first().map_or(0, |e| e.0),
                    Mutation::Zero { offset, .. } => *offset,
                    _ => 0,
                },
                data: match &mutation {
                    Mutation::Write { extents } => {
                        extents.first().map(|e| e.1.clone()).unwrap_or_default()
                    }
                    _ => Bytes::new(),
                },
                more: match &mutation {
                    Mutation::Write { extents } => extents
                        .iter()
                        .skip(1)
                        .map(|(offset, data)| Extent {
                            offset: *offset,
                            data: data.clone(),
                        })
                        .collect(),
                    _ => Vec::new(),
                },
                size: match &mutation {
                    Mutation::Truncate { size } => *size,
                    Mutation::Zero { len, .. } => *len,
                    _ => 0,
                },
            };
            let call = self.map().peers.get(&id).map(|(_, c, ch)| RepCall {
                stub: c.clone(),
                channel: ch.clone(),
            });
            async move {
                let Some(call) = call else {
                    return (id, Err(Status::unavailable(format!("osd.{id} unknown"))));
                };
                (id, self.reps.call(id, call, req).await)
            }
        }));
        let (local, replicas) = tokio::join!(local, replicas);
        let mut durable = 0u32;
        let mut newer_epoch = None;
        let mut behind = Vec::new();
        for (id, r) in replicas {
            match r {
                Ok(()) => durable += 1,
                Err(st) => {
                    if let WireError::Remap { epoch, .. } = status_errno(&st) {
                        newer_epoch = Some(epoch);
                    }
                    debug!(osd = id, object = %object, error = %st.message(), "replica behind");
                    behind.push(id);
                }
            }
        }
        let size = match local {
            Ok(size) => {
                durable += 1;
                size
            }
            Err(st) => {
                if is_corrupt(&st) {
                    // The local copy is damaged: take a good one from a replica; the client's
                    // retry then applies its change on top.
                    self.mark_missing(pg, &object, &[self.id]);
                    self.repair_local(pg, &object).await?;
                    return Err(Status::unavailable(format!(
                        "object {object}: local copy repaired, retry"
                    )));
                }
                return Err(st);
            }
        };
        self.mark_missing(pg, &object, &behind);
        if let Some(epoch) = newer_epoch {
            self.ensure_epoch(epoch).await;
        }
        if durable < m.placement.min_size {
            return Err(Status::unavailable(format!(
                "object {object}: {durable} copies durable, {} needed",
                m.placement.min_size
            )));
        }
        Ok(size)
    }

    /// A replica applying a primary's op.
    pub async fn replica_op(self: &Arc<Self>, r: RepOpRequest) -> Result<(), Status> {
        let _load = self.qos.client_op();
        self.ensure_epoch(r.epoch).await;
        let m = self.map();
        let pl = &m.placement;
        let pg = pl.pg_of(&r.object);
        if pl.epoch > r.epoch && pl.primary(pg) != Some(r.from) {
            return Err(remap_status(
                pl.epoch,
                format!(
                    "osd.{} is not the primary of pg {pg} at epoch {}",
                    r.from, pl.epoch
                ),
            ));
        }
        let have = version_of(self.store.meta(&r.object));
        if have != r.prior_version {
            return Err(Status::failed_precondition(format!(
                "object {}: copy at version {have:#x}, op expects {:#x}",
                r.object, r.prior_version
            )));
        }
        let mutation = match RepKind::try_from(r.kind) {
            Ok(RepKind::RepWrite) => Mutation::Write {
                extents: write_extents(r.offset, r.data, r.more)?,
            },
            Ok(RepKind::RepTruncate) => Mutation::Truncate { size: r.size },
            Ok(RepKind::RepDelete) => Mutation::Delete,
            Ok(RepKind::RepZero) => Mutation::Zero {
                offset: r.offset,
                len: r.size,
            },
            Err(_) => return Err(Status::invalid_argument(format!("bad op kind {}", r.kind))),
        };
        self.apply_local(r.object, mutation, r.version)
            .await
            .map(|_| ())
    }

    /// Fetches a whole object from peer `from`.
    pub async fn pull_from(&self, from: u32, object: &str) -> Result<ObjectCopy, Status> {
        let mut c = self
            .peer(from)
            .ok_or_else(|| Status::unavailable(format!("osd.{from} unknown")))?;
        Ok(c.pull(PullRequest {
            object: object.to_string(),
            epoch: self.epoch(),
        })
        .await?
        .into_inner())
    }
}

/// A write's extents from the wire: the first in `offset`/`data`, the rest in `more`.
pub fn write_extents(
    offset: u64,
    data: Bytes,
    more: Vec<Extent>,
) -> Result<Vec<(u64, Bytes)>, Status> {
    if more.len() >= MAX_WRITE_EXTENTS {
        return Err(Status::invalid_argument(format!(
            "a write of {} extents (at most {MAX_WRITE_EXTENTS})",
            more.len() + 1
        )));
    }
    let mut extents = Vec::with_capacity(more.len() + 1);
    extents.push((offset, data));
    extents.extend(more.into_iter().map(|e| (e.offset, e.data)));
    Ok(extents)
}

/// Applies a mutation to the local store at `version`; returns the object's size.
pub fn apply(s: &ObjectStore, object: &str, m: &Mutation, version: u64) -> Result<u64, StoreError> {
    let (size, pending) = apply_pending(s, object, m, version)?;
    s.settled(object, pending)?;
    Ok(size)
}

/// [`apply`] without waiting for the change's journal record: the object's size, and what
/// to settle before acknowledging it.
pub fn apply_pending(
    s: &ObjectStore,
    object: &str,
    m: &Mutation,
    version: u64,
) -> Result<(u64, Pending), StoreError> {
    match m {
        Mutation::Write { extents } => {
            let parts: Vec<(u64, &[u8])> = extents.iter().map(|(o, d)| (*o, &d[..])).collect();
            s.write_extents_pending(object, &parts, version)
        }
        Mutation::Truncate { size } => Ok((*size, s.truncate_pending(object, *size, version)?)),
        Mutation::Delete => Ok((0, s.delete_pending(object, version)?)),
        Mutation::Zero { offset, len } => {
            // Callers hold the object's lock, so its size cannot move underneath.
            let size = s.meta(object).filter(|m| !m.deleted).map_or(0, |m| m.size);
            let end = offset.saturating_add(*len);
            if *offset >= size || end >= size {
                // Nothing past the end to keep: cut there (a range wholly past the end
                // only stamps the version, so every copy moves to it alike).
                let keep = (*offset).min(size);
                Ok((keep, s.truncate_pending(object, keep, version)?))
            } else {
                let zeros = vec![0u8; *len as usize];
                s.write_extents_pending(object, &[(*offset, &zeros)], version)
            }
        }
    }
}

/// Whether a status says a stored copy failed its checksums.
pub fn is_corrupt(st: &Status) -> bool {
    st.code() == tonic::Code::DataLoss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_within_and_across_epochs_and_never_overflow() {
        assert_eq!(next_version(0, 1), 1 << 32);
        assert_eq!(next_version(1 << 32, 1), (1 << 32) + 1);
        // A newer epoch beats anything an older one wrote.
        assert!(next_version((1 << 32) + 5000, 2) > (1 << 32) + 5001);
        // A damaged header claiming the largest version cannot panic the OSD.
        assert_eq!(next_version(u64::MAX, 3), u64::MAX);
        assert_eq!(next_version(0, u64::MAX), u64::MAX);
    }

    #[test]
    fn zeroing_keeps_the_middle_cuts_at_the_end_and_stamps_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = ObjectStore::open(dir.path()).unwrap();
        let obj = shoal_proto::layout::object_name(9, 0);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        s.write(&obj, 0, &data, 1).unwrap();
        let zero = |offset, len, version| apply(&s, &obj, &Mutation::Zero { offset, len }, version);
        // Inside: zeros, same size.
        assert_eq!(zero(5000, 10_000, 2).unwrap(), 100_000);
        let got = s.read(&obj, 0, 200_000).unwrap().unwrap();
        assert!(got[5000..15_000].iter().all(|&b| b == 0));
        assert_eq!(&got[..5000], &data[..5000]);
        assert_eq!(&got[15_000..], &data[15_000..]);
        // Reaching the end: cut there.
        assert_eq!(zero(60_000, u64::MAX, 3).unwrap(), 60_000);
        assert_eq!(s.meta(&obj).unwrap().size, 60_000);
        // Wholly past the end: nothing changes but the version.
        assert_eq!(zero(70_000, 10, 4).unwrap(), 60_000);
        let m = s.meta(&obj).unwrap();
        assert_eq!((m.size, m.version), (60_000, 4));
        let got = s.read(&obj, 0, 200_000).unwrap().unwrap();
        assert_eq!(&got[15_000..60_000], &data[15_000..60_000]);
    }
}
