//! Talking to the cluster: the MDS (with retries across restarts) and the OSDs (striped,
//! parallel object I/O, each object's requests sent to its PG's primary by the OSD map).
//!
//! Retries: a call that fails at the transport level (daemon down, connection reset) or that
//! the OSD cannot serve yet (its PG is peering or has fewer than min_size copies up) is retried
//! with backoff until `retry_for` has passed, refreshing the OSD map in between. An OSD that
//! placed the request by a newer map says so; the client fetches that map and resends at once.
//! A call answered with an errno is never retried.
//!
//! Sessions: the mount's session names every request (MDS calls in metadata, OSD calls in
//! the request). When a daemon says the session was evicted, the cluster starts a new one
//! (subscribers of [`Cluster::watch_session`] hear of it); an MDS call is then retried once
//! under the new session, an OSD call fails (it belongs to a file opened in the old one).
//! Known limit: a mutation whose reply was lost is re-sent, which is not yet exactly-once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use futures::{stream, Stream, StreamExt};
use shoal_proto::bulk::Rope;
use shoal_proto::datachan::DataChannel;
use shoal_proto::error::{status_errno, WireError};
use shoal_proto::layout::{
    extents_bound, file_to_extents, first_object_at, object_extents_in_range, object_len_below,
    object_name, objects_in_range, MAX_WRITE_EXTENTS,
};
use shoal_proto::mds::mds_client::MdsClient;
use shoal_proto::mds::{GetOsdMapRequest, Layout, LeaseDown, LeaseUp, OsdMap};
use shoal_proto::osd::{
    DeleteRequest, Extent, ReadRequest, TruncateRequest, WriteRequest, ZeroRequest,
};
use shoal_proto::placement::Placement;
use shoal_proto::request::ReqId;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::{debug, trace, warn};

use crate::error::ClientError;
use crate::osdbatch::{DeleteCall, OsdBatches, OsdConn, ReadCall, WriteCall, WriteOp};
use crate::readcache::ReadCache;

/// The OSD map as the client uses it: placement inputs and a channel per OSD.
struct MapView {
    placement: Placement,
    clients: HashMap<u32, (String, OsdConn)>,
}

/// Ranges spanning more object pieces than this are cut or zeroed only where the OSDs list
/// objects, instead of object number by object number.
const WALK_MAX: u64 = 4096;

/// Connections to one cluster.
pub struct Cluster {
    /// MDS members by address; calls go to `mds_at` (the leader, as far as we know).
    mds: RwLock<Vec<(String, Mds)>>,
    mds_at: AtomicUsize,
    /// This mount's session (shared with the MDS clients' interceptors), and its request
    /// numbers for exactly-once mutations.
    session: Arc<AtomicU64>,
    /// Tells tasks that follow the session (heartbeats, the lease stream) of a new one.
    renewed: tokio::sync::watch::Sender<u64>,
    next_seq: AtomicU64,
    /// Request numbers sent and not yet answered.
    in_flight: Mutex<BTreeSet<u64>>,
    map: RwLock<Arc<MapView>>,
    retry_for: Duration,
    /// File data read here, kept for small reads under the files' read leases; every
    /// change of a file's data through this cluster drops what was read of it before.
    read_cache: ReadCache,
    /// Small reads, writes and deletes queued behind calls still out to their OSD (see
    /// [`crate::osdbatch`]).
    batches: OsdBatches,
    gate: Gate,
}

/// Changes this mount made on its own under directory leases (see `crate::dirops`) and has
/// not sent yet: every other call to the MDS waits until those made before it have landed,
/// so the MDS sees this mount's changes in the order it made them.
struct Gate {
    /// Changes queued so far, ever.
    queued: AtomicU64,
    /// Of those, how many were sent and answered (or failed).
    landed: tokio::sync::watch::Sender<u64>,
    /// Asks the sender to send what is queued now.
    wake: tokio::sync::Notify,
}

/// Waits for every change of `changes`, failed or not, then reports the first failure: none
/// lands after the caller returns (and marks the file changed for the kept reads).
async fn all_done(changes: impl Stream<Item = Result<(), ClientError>>) -> Result<(), ClientError> {
    let done: Vec<Result<(), ClientError>> = changes.collect().await;
    done.into_iter().collect()
}

/// Refuses a layout the striping math cannot use (it comes from the MDS, never from the
/// kernel, but a damaged record must be an error, not a division by zero).
fn usable(layout: &Layout) -> Result<(), ClientError> {
    shoal_proto::layout::validate(layout)
        .map_err(|_| ClientError::Protocol(format!("unusable file layout {layout:?}")))
}

fn channel(addr: &str) -> Result<Channel, ClientError> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::Protocol(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(shoal_proto::DATA_STREAM_WINDOW)
        .initial_connection_window_size(shoal_proto::DATA_CONN_WINDOW);
    Ok(ep.connect_lazy())
}

/// Names the mount's current session on every MDS call, so reads can be granted leases.
#[derive(Clone)]
pub struct SessionTag(Arc<AtomicU64>);

impl tonic::service::Interceptor for SessionTag {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        let session = self.0.load(Ordering::Relaxed);
        shoal_proto::request::insert_session(r.metadata_mut(), session);
        Ok(r)
    }
}

/// An MDS connection that names the session.
pub type Mds = MdsClient<InterceptedService<Channel, SessionTag>>;

fn mds_client(addr: &str, session: &Arc<AtomicU64>) -> Result<Mds, ClientError> {
    Ok(
        MdsClient::with_interceptor(channel(addr)?, SessionTag(session.clone()))
            .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
    )
}

impl Cluster {
    /// Connects (lazily) to the MDS at `mds` addresses and loads the OSD map.
    pub async fn connect(mds: &[String], retry_for: Duration) -> Result<Arc<Cluster>, ClientError> {
        if mds.is_empty() {
            return Err(ClientError::Protocol("no MDS address given".into()));
        }
        let first = rand::random::<u64>().max(1);
        let session = Arc::new(AtomicU64::new(first));
        let mds = mds
            .iter()
            .map(|a| Ok((a.clone(), mds_client(a, &session)?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        let cluster = Arc::new(Cluster {
            mds: RwLock::new(mds),
            mds_at: AtomicUsize::new(0),
            session,
            renewed: tokio::sync::watch::Sender::new(first),
            next_seq: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
            map: RwLock::new(Arc::new(MapView {
                placement: Placement::default(),
                clients: HashMap::new(),
            })),
            retry_for,
            read_cache: ReadCache::new(crate::readcache::DEFAULT_BYTES),
            batches: OsdBatches::default(),
            gate: Gate {
                queued: AtomicU64::new(0),
                landed: tokio::sync::watch::Sender::new(0),
                wake: tokio::sync::Notify::new(),
            },
        });
        cluster.refresh_map().await?;
        Ok(cluster)
    }

    /// File data kept for small reads (see [`crate::readcache`]).
    pub fn read_cache(&self) -> &ReadCache {
        &self.read_cache
    }

    /// The MDS member calls go to now.
    fn mds_member(&self) -> (usize, Mds) {
        let members = self.mds.read().unwrap_or_else(|p| p.into_inner());
        let i = self.mds_at.load(Ordering::Relaxed) % members.len().max(1);
        (i, members[i].1.clone())
    }

    /// Points calls at `leader` (added to the members if new), or at the member after
    /// `failed` when the leader is unknown.
    fn switch_mds(&self, failed: usize, leader: Option<&str>) -> Result<(), ClientError> {
        let mut members = self.mds.write().unwrap_or_else(|p| p.into_inner());
        let next = match leader {
            Some(addr) => match members.iter().position(|(a, _)| a == addr) {
                Some(i) => i,
                None => {
                    members.push((addr.to_string(), mds_client(addr, &self.session)?));
                    members.len() - 1
                }
            },
            None => (failed + 1) % members.len().max(1),
        };
        // Only move on if nobody else already did.
        let _ = self
            .mds_at
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
        Ok(())
    }

    /// `n` more changes were queued to be sent in the background.
    pub fn changes_queued(&self, n: u64) {
        self.gate.queued.fetch_add(n, Ordering::SeqCst);
    }

    /// `n` queued changes were sent and answered, or failed.
    pub fn changes_landed(&self, n: u64) {
        self.gate.landed.send_modify(|l| *l += n);
    }

    /// Asks the sender to send what is queued (or take inode numbers) now.
    pub fn wake_sender(&self) {
        self.gate.wake.notify_one();
    }

    /// Waits until the sender is asked to send (or a while passes).
    pub async fn changes_wanted(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.gate.wake.notified()).await;
    }

    /// Waits until every change queued before now has landed, asking for them to be sent.
    /// Returns whether there were any to wait for.
    pub async fn changes_settled(&self) -> bool {
        let want = self.gate.queued.load(Ordering::SeqCst);
        let mut landed = self.gate.landed.subscribe();
        if *landed.borrow() >= want {
            return false;
        }
        self.gate.wake.notify_one();
        let _ = landed.wait_for(|l| *l >= want).await;
        true
    }

    /// [`Cluster::changes_settled`] before call `what`.
    async fn settled_for(&self, what: &str) {
        if self.changes_settled().await {
            debug!(op = what, "waited for queued changes");
        }
    }

    /// Calls the MDS leader, following redirects from followers and retrying transport
    /// failures (trying each member in turn) until the retry window closes. Waits first
    /// for the changes queued before it (see [`Cluster::changes_settled`]).
    pub async fn mds<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClientError>
    where
        F: Fn(Mds) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.settled_for(what).await;
        self.mds_now(what, f).await
    }

    /// [`Cluster::mds`] without waiting for queued changes: for the calls that send them and
    /// for those about the session itself (heartbeats, leases, the map).
    pub async fn mds_now<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClientError>
    where
        F: Fn(Mds) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut hops = 0;
        let mut renewed = false;
        loop {
            let (i, client) = self.mds_member();
            let last = match f(client).await {
                Ok(r) => {
                    trace!(
                        op = what,
                        us = start.elapsed().as_micros() as u64,
                        "mds call"
                    );
                    return Ok(r.into_inner());
                }
                Err(status) => match status_errno(&status) {
                    WireError::NotLeader {
                        leader: Some(leader),
                    } => {
                        // A typed redirect: go to the leader at once (members that disagree
                        // about the leader during an election get the usual backoff).
                        debug!(op = what, %leader, "mds redirect");
                        self.switch_mds(i, Some(&leader))?;
                        hops += 1;
                        if hops <= 2 && start.elapsed() < self.retry_for {
                            continue;
                        }
                        format!("redirected to {leader}")
                    }
                    WireError::NotLeader { leader: None } => {
                        self.switch_mds(i, None)?;
                        "no mds leader elected".to_string()
                    }
                    WireError::Transport(m) => {
                        self.switch_mds(i, None)?;
                        m
                    }
                    WireError::Evicted { session } => {
                        // Our session was evicted: carry on under a new one (once; a request
                        // that names the old session in its body fails).
                        self.evicted(session);
                        if renewed {
                            return Err(ClientError::Evicted(session));
                        }
                        renewed = true;
                        continue;
                    }
                    other => return Err(other.into()),
                },
            };
            if start.elapsed() >= self.retry_for {
                return Err(ClientError::Unavailable {
                    what: format!("mds {what}"),
                    last,
                });
            }
            debug!(op = what, error = %last, "mds unavailable, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Calls the MDS with a mutation, exactly once: every attempt carries the same request
    /// id, so a retry after a lost reply (a leader failover) gets the first attempt's reply
    /// instead of applying the mutation again.
    pub async fn mds_mutate<Q, T, F, Fut>(&self, what: &str, req: Q, f: F) -> Result<T, ClientError>
    where
        Q: Clone,
        F: Fn(Mds, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.settled_for(what).await;
        self.mds_mutate_now(what, req, f).await
    }

    /// [`Cluster::mds_mutate`] without waiting for queued changes (it sends them).
    pub async fn mds_mutate_now<Q, T, F, Fut>(
        &self,
        what: &str,
        req: Q,
        f: F,
    ) -> Result<T, ClientError>
    where
        Q: Clone,
        F: Fn(Mds, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.in_flight().insert(seq);
        // Answered, failed or abandoned: the MDS may forget the reply once it learns so.
        struct Done<'a>(&'a Cluster, u64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.in_flight().remove(&self.1);
            }
        }
        let _done = Done(self, seq);
        self.mds_now(what, |c| {
            let oldest = self.in_flight().first().copied().unwrap_or(seq).min(seq);
            let mut r = Request::new(req.clone());
            ReqId {
                session: self.session(),
                seq,
                oldest,
            }
            .insert(r.metadata_mut());
            f(c, r)
        })
        .await
    }

    /// Opens this session's lease stream at the leader: acks go into the returned sender,
    /// revocations come out of the stream.
    pub async fn open_leases(
        &self,
    ) -> Result<
        (
            futures::channel::mpsc::UnboundedSender<LeaseUp>,
            tonic::Streaming<LeaseDown>,
        ),
        ClientError,
    > {
        let session = self.session();
        self.mds_now("leases", |mut c| async move {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            let hello = LeaseUp {
                session,
                ..Default::default()
            };
            tx.unbounded_send(hello)
                .map_err(|_| Status::internal("lease channel closed"))?;
            let down = c.leases(rx).await?;
            Ok(Response::new((tx, down.into_inner())))
        })
        .await
    }

    /// This mount's session id (request ids, heartbeats, locks).
    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Relaxed)
    }

    /// A daemon refused `session` as evicted: if it is still ours, starts a new session.
    pub fn evicted(&self, session: u64) {
        let new = rand::random::<u64>().max(1);
        let swapped =
            self.session
                .compare_exchange(session, new, Ordering::Relaxed, Ordering::Relaxed);
        if swapped.is_ok() {
            warn!(
                old = format!("{session:x}"),
                new = format!("{new:x}"),
                "this mount's session was evicted: files it had open fail with EIO; \
                 going on with a new session"
            );
            self.renewed.send_replace(new);
        }
    }

    /// Follows the session: changes when an evicted one is replaced.
    pub fn watch_session(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewed.subscribe()
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the OSD map and (re)connects to OSDs whose address changed.
    pub async fn refresh_map(&self) -> Result<(), ClientError> {
        let map: OsdMap = self
            .mds_now("get_osd_map", |mut c| async move {
                c.get_osd_map(GetOsdMapRequest {}).await
            })
            .await?;
        let old = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut clients = HashMap::new();
        for o in &map.osds {
            let client = match old.clients.get(&o.id) {
                Some((addr, c)) if *addr == o.addr => c.clone(),
                _ => OsdConn::new(DataChannel::new(&o.addr).map_err(ClientError::Protocol)?),
            };
            clients.insert(o.id, (o.addr.clone(), client));
        }
        let mut view = self.map.write().unwrap_or_else(|p| p.into_inner());
        // Two refreshes may race; never step back to an older map.
        if map.epoch >= view.placement.epoch {
            *view = Arc::new(MapView {
                placement: Placement::from_map(&map),
                clients,
            });
        }
        Ok(())
    }

    /// The OSD map epoch the client currently uses.
    pub fn map_epoch(&self) -> u64 {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .placement
            .epoch
    }

    /// Calls the primary of `object`'s PG with the map epoch it was placed by, retrying
    /// transport failures and unavailable PGs with map refreshes.
    async fn osd<T, F, Fut>(&self, object: &str, f: F) -> Result<T, ClientError>
    where
        F: Fn(u32, OsdConn, u64) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let (epoch, target) = {
                let map = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
                let pl = &map.placement;
                let target = pl
                    .primary(pl.pg_of(object))
                    .and_then(|id| map.clients.get(&id).map(|(_, c)| (id, c.clone())));
                (pl.epoch, target)
            };
            let last = match target {
                None => format!("no OSD of the object's PG is up at map epoch {epoch}"),
                Some((id, client)) => match f(id, client, epoch).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(status) => match status_errno(&status) {
                        WireError::Transport(m) => format!("osd.{id}: {m}"),
                        WireError::Remap { epoch: theirs, .. } if theirs > epoch => {
                            // Placed by an old map: fetch the new one and resend at once.
                            debug!(object, osd = id, theirs, "osd map moved on");
                            if let Err(e) = self.refresh_map().await {
                                warn!(error = %e, "cannot refresh the osd map");
                            }
                            continue;
                        }
                        WireError::Remap { message, .. } => format!("osd.{id}: {message}"),
                        WireError::Evicted { session } => {
                            self.evicted(session);
                            return Err(ClientError::Evicted(session));
                        }
                        other => return Err(other.into()),
                    },
                },
            };
            if start.elapsed() >= self.retry_for {
                return Err(ClientError::Unavailable {
                    what: format!("object {object}"),
                    last,
                });
            }
            debug!(object, error = %last, "osd unreachable, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if let Err(e) = self.refresh_map().await {
                warn!(error = %e, "cannot refresh the osd map");
            }
        }
    }

    /// Writes `data` at file offset `off` of inode `ino` for `session`: one request per
    /// object, all in parallel; each carries a slice of `data` (no copy).
    pub async fn write(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        off: u64,
        data: Bytes,
    ) -> Result<(), ClientError> {
        self.write_runs(session, ino, layout, &[(off, Rope::from(data))], false)
            .await
    }

    /// Writes non-overlapping `runs` (file offset, bytes) of inode `ino` for `session`: the
    /// pieces that fall in one object go in one request (one version and one sync on each of
    /// its OSDs), all objects in parallel, the first piece of each sent from the run's own
    /// buffers (no copy). Every request is waited for, failed or not, so none lands after the
    /// caller's next write. `whole`: the runs are the whole file (one, at 0), which the read
    /// cache may then keep.
    pub async fn write_runs(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        runs: &[(u64, Rope)],
        whole: bool,
    ) -> Result<(), ClientError> {
        usable(layout)?;
        let mut changing = self.read_cache.changing(ino);
        let mut objects: BTreeMap<u64, Vec<(u64, Rope)>> = BTreeMap::new();
        for (off, data) in runs {
            for e in file_to_extents(layout, *off, data.len() as u64) {
                let piece = data.slice(e.buf_off as usize, (e.buf_off + e.len) as usize);
                objects.entry(e.objno).or_default().push((e.obj_off, piece));
            }
        }
        let requests = objects.into_iter().flat_map(|(objno, pieces)| {
            let object = object_name(ino, objno);
            pieces
                .chunks(MAX_WRITE_EXTENTS)
                .map(|c| (object.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        });
        let sent = futures::future::join_all(requests.map(|(object, mut pieces)| {
            let (offset, data) = pieces.remove(0);
            let more: Vec<Extent> = pieces
                .iter()
                .map(|(offset, data)| Extent {
                    offset: *offset,
                    data: data.join(),
                })
                .collect();
            async move {
                self.osd(&object, |id, c, epoch| {
                    let op = WriteOp {
                        req: WriteRequest {
                            object: object.clone(),
                            offset,
                            data: Bytes::new(),
                            epoch,
                            session,
                            more: more.clone(),
                        },
                        data: data.clone(),
                    };
                    let writes = &self.batches.writes;
                    async move { writes.call(id, WriteCall(c), op).await.map(Response::new) }
                })
                .await
            }
        }))
        .await;
        sent.into_iter().try_for_each(|r| r.map(|_| ()))?;
        if let (true, [(0, data)]) = (whole, runs) {
            if data.len() as u64 <= crate::readcache::BLOCK {
                changing.wrote_whole(&data.join());
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `off` for `session` (the caller bounds it by the file size);
    /// holes and missing objects read as zeros.
    pub async fn read(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        off: u64,
        len: u64,
    ) -> Result<Bytes, ClientError> {
        usable(layout)?;
        let extents = file_to_extents(layout, off, len);
        if let [e] = extents.as_slice() {
            // One object: hand its bytes through unless it is short.
            let data = self
                .read_extent(session, ino, e.objno, e.obj_off, e.len)
                .await?;
            if data.len() as u64 == len {
                return Ok(data);
            }
        }
        let pieces = try_join_all(
            extents
                .iter()
                .map(|e| self.read_extent(session, ino, e.objno, e.obj_off, e.len)),
        )
        .await?;
        let mut out = BytesMut::zeroed(len as usize);
        for (e, piece) in extents.iter().zip(pieces) {
            let at = e.buf_off as usize;
            out[at..at + piece.len()].copy_from_slice(&piece);
        }
        Ok(out.freeze())
    }

    async fn read_extent(
        &self,
        session: u64,
        ino: u64,
        objno: u64,
        obj_off: u64,
        len: u64,
    ) -> Result<Bytes, ClientError> {
        let object = object_name(ino, objno);
        let reply = self
            .osd(&object, |id, c, epoch| {
                let req = ReadRequest {
                    object: object.clone(),
                    offset: obj_off,
                    len: len as u32,
                    epoch,
                    session,
                };
                let reads = &self.batches.reads;
                async move { reads.call(id, ReadCall(c), req).await.map(Response::new) }
            })
            .await?;
        if reply.data.len() as u64 > len {
            return Err(ClientError::Protocol(format!(
                "object {object}: asked {len} bytes, got {}",
                reply.data.len()
            )));
        }
        Ok(reply.data)
    }

    /// Every live object of inode `ino` numbered `from` or more, with its size, as the up
    /// OSDs hold them (each asked in parallel; the largest size of any copy).
    pub async fn file_objects(
        &self,
        ino: u64,
        from: u64,
    ) -> Result<BTreeMap<u64, u64>, ClientError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner()).clone();
            let ids = map.placement.up_ids();
            // A PG with no member up may hold objects no up OSD lists: not an answer.
            let pl = &map.placement;
            let dark = (0..pl.pg_count).find(|&pg| pl.primary(pg).is_none());
            let lists = futures::future::join_all(ids.iter().map(|id| {
                let client = map.clients.get(id).map(|(_, c)| c.stub.clone());
                async move {
                    let Some(c) = client else {
                        return Err(Status::unavailable("no address"));
                    };
                    shoal_proto::listing::list_file(c, ino, from, false).await
                }
            }))
            .await;
            let mut found: BTreeMap<u64, u64> = BTreeMap::new();
            let mut failed = dark.map(|pg| format!("pg {pg} has no OSD up"));
            for (id, list) in ids.iter().zip(lists) {
                match list {
                    Ok(objects) => {
                        for o in objects {
                            let s = found.entry(o.objno).or_default();
                            *s = (*s).max(o.size);
                        }
                    }
                    Err(status) => failed = Some(format!("osd.{id}: {}", status.message())),
                }
            }
            let Some(last) = failed else {
                return Ok(found);
            };
            if start.elapsed() >= self.retry_for {
                return Err(ClientError::Unavailable {
                    what: format!("the objects of inode {ino}"),
                    last,
                });
            }
            debug!(ino, error = %last, "cannot list a file's objects, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if let Err(e) = self.refresh_map().await {
                warn!(error = %e, "cannot refresh the osd map");
            }
        }
    }

    /// Cuts the objects of a file that shrinks from `old_size` to `new_size`: objects wholly
    /// past the end are deleted, the one holding the new end is shortened. A range of a few
    /// thousand objects is walked object by object (a tombstone for each); a larger one, a
    /// sparse file's, only where the OSDs list objects.
    pub async fn truncate(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        new_size: u64,
        old_size: u64,
    ) -> Result<(), ClientError> {
        usable(layout)?;
        let _changing = self.read_cache.changing(ino);
        let cuts: Vec<(u64, u64)> =
            if extents_bound(layout, old_size.saturating_sub(new_size)) <= WALK_MAX {
                objects_in_range(layout, new_size, old_size)
                    .into_iter()
                    .map(|objno| (objno, object_len_below(layout, objno, new_size)))
                    .collect()
            } else {
                self.file_objects(ino, first_object_at(layout, new_size))
                    .await?
                    .into_iter()
                    .filter_map(|(objno, size)| {
                        let keep = object_len_below(layout, objno, new_size);
                        (keep < size).then_some((objno, keep))
                    })
                    .collect()
            };
        let changes = stream::iter(cuts.into_iter().map(|(objno, keep)| {
            let object = object_name(ino, objno);
            async move {
                if keep == 0 {
                    self.delete_object(session, &object).await
                } else {
                    self.osd(&object, |_, c, epoch| {
                        let req = TruncateRequest {
                            object: object.clone(),
                            size: keep,
                            epoch,
                            session,
                        };
                        async move { c.stub.clone().truncate(req).await }
                    })
                    .await
                    .map(|_| ())
                }
            }
        }))
        .buffer_unordered(64);
        all_done(changes).await
    }

    /// Zeroes `len` bytes at file offset `off` (a punched hole): objects the range covers
    /// whole are deleted, the others zeroed in place by their primaries, which cut an object
    /// short where the range reaches its end. A huge range is zeroed only where the OSDs
    /// list objects.
    pub async fn zero_range(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        off: u64,
        len: u64,
    ) -> Result<(), ClientError> {
        usable(layout)?;
        let _changing = self.read_cache.changing(ino);
        let mut by_object: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        if extents_bound(layout, len) <= WALK_MAX {
            for e in file_to_extents(layout, off, len) {
                by_object
                    .entry(e.objno)
                    .or_default()
                    .push((e.obj_off, e.len));
            }
        } else {
            let objects = self.file_objects(ino, first_object_at(layout, off)).await?;
            for (objno, size) in objects {
                let pieces: Vec<(u64, u64)> = object_extents_in_range(layout, objno, off, len)
                    .into_iter()
                    .filter(|e| e.obj_off < size)
                    .map(|e| (e.obj_off, e.len))
                    .collect();
                if !pieces.is_empty() {
                    by_object.insert(objno, pieces);
                }
            }
        }
        let changes = stream::iter(by_object.into_iter().map(|(objno, pieces)| {
            let object = object_name(ino, objno);
            async move {
                let covered: u64 = pieces.iter().map(|&(_, len)| len).sum();
                if covered >= u64::from(layout.object_size) {
                    return self.delete_object(session, &object).await;
                }
                for (offset, len) in pieces {
                    self.osd(&object, |_, c, epoch| {
                        let req = ZeroRequest {
                            object: object.clone(),
                            offset,
                            len,
                            epoch,
                            session,
                        };
                        async move { c.stub.clone().zero(req).await }
                    })
                    .await?;
                }
                Ok(())
            }
        }))
        .buffer_unordered(64);
        all_done(changes).await
    }

    /// Deletes every object of a file of `size` bytes.
    pub async fn delete_data(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        size: u64,
    ) -> Result<(), ClientError> {
        self.truncate(session, ino, layout, 0, size).await
    }

    async fn delete_object(&self, session: u64, object: &str) -> Result<(), ClientError> {
        self.osd(object, |id, c, epoch| {
            let req = DeleteRequest {
                object: object.to_string(),
                epoch,
                session,
            };
            let deletes = &self.batches.deletes;
            async move {
                deletes
                    .call(id, DeleteCall(c), req)
                    .await
                    .map(Response::new)
            }
        })
        .await
        .map(|_| ())
    }
}
