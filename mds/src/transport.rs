//! Raft traffic between MDS members over gRPC (`RaftPeer.Step`, `RaftPeer.InstallSnapshot`).
//!
//! The node thread hands outgoing messages to [`Transport::send`], which never blocks: each
//! peer has a task with a queue that sends whatever is queued as one batch, over one
//! long-lived `Step` stream per peer (no answer per batch: Raft's replies travel on the
//! peer's own stream). When the stream fails or its queue is full, batches are dropped (Raft
//! retransmits) and the node is told the peer is unreachable, so raft-rs stops pipelining
//! to it; the stream is reopened after a short pause. Snapshot messages go their own way:
//! a task streams the checkpoint they name in chunks, then reports the outcome to the node.
//! Incoming traffic is decoded by [`RaftPeerService`] and stepped into the node.
//!
//! Every batch names its sender's address, so a member added later can answer members it was
//! never told about. A [`PeerFilter`] drops traffic to and from chosen members (fault
//! injection: `DATA/drop-peers` holds their ids).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use shoal_proto::mds::raft_peer_client::RaftPeerClient;
use shoal_proto::mds::raft_peer_server::RaftPeer;
use shoal_proto::mds::{RaftAck, RaftBatch, SnapshotChunk};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::node::{NodeHandle, NodeMsg};
use crate::snapshot::{self, Descriptor, Incoming};

/// Messages per batch at most (a batch also stays under the gRPC message limit because
/// raft-rs caps each append at `max_size_per_msg`).
const MAX_BATCH: usize = 64;

/// Members whose traffic is dropped, both ways (fault injection for tests).
#[derive(Clone, Default)]
pub struct PeerFilter {
    blocked: Arc<RwLock<HashSet<u64>>>,
}

impl PeerFilter {
    /// Whether traffic with `id` is dropped.
    pub fn blocks(&self, id: u64) -> bool {
        self.blocked
            .read()
            .map(|b| b.contains(&id))
            .unwrap_or(false)
    }

    /// Replaces the blocked set.
    pub fn set(&self, ids: HashSet<u64>) {
        if let Ok(mut b) = self.blocked.write() {
            if *b != ids {
                info!(blocked = ?ids, "raft peer filter changed");
                *b = ids;
            }
        }
    }

    /// Keeps the blocked set equal to the ids listed in `file` (comma or space separated;
    /// a missing file blocks nobody), checked every 100 ms.
    pub async fn follow_file(self, file: PathBuf) {
        loop {
            let ids = std::fs::read_to_string(&file)
                .map(|s| {
                    s.split(|c: char| c == ',' || c.is_whitespace())
                        .filter_map(|t| t.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            self.set(ids);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Peer {
    addr: String,
    queue: mpsc::UnboundedSender<RaftMessage>,
    /// For snapshots (no per-call timeout: a stream may take long).
    snap_client: RaftPeerClient<Channel>,
}

/// Outgoing Raft messages, one queue and task per peer.
pub struct Transport {
    me: u64,
    my_addr: String,
    peers: HashMap<u64, Peer>,
    members: Arc<[(u64, String)]>,
    rt: tokio::runtime::Handle,
    node: std::sync::mpsc::Sender<NodeMsg>,
    snap_dir: PathBuf,
    filter: PeerFilter,
}

impl Transport {
    /// Starts a sender task per peer in `members` (id, address) on the current runtime.
    /// Failures are reported to the node through `node`.
    pub fn start(
        me: u64,
        members: &[(u64, String)],
        snap_dir: &Path,
        node: std::sync::mpsc::Sender<NodeMsg>,
        filter: PeerFilter,
    ) -> Result<Transport, String> {
        let mut t = Transport {
            me,
            my_addr: members
                .iter()
                .find(|(id, _)| *id == me)
                .map(|(_, a)| a.clone())
                .unwrap_or_default(),
            peers: HashMap::new(),
            members: Arc::from(Vec::new()),
            rt: tokio::runtime::Handle::current(),
            node,
            snap_dir: snap_dir.to_path_buf(),
            filter,
        };
        for (id, addr) in members {
            t.set_member(*id, addr)?;
        }
        Ok(t)
    }

    /// Adds member `id` at `addr`, or moves it there.
    pub fn set_member(&mut self, id: u64, addr: &str) -> Result<(), String> {
        if id == self.me {
            self.my_addr = addr.to_string();
        } else if self.peers.get(&id).map(|p| p.addr.as_str()) != Some(addr) {
            let ep = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("bad address {addr:?} of mds {id}: {e}"))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                // Streams live long and carry no per-call timeout; keepalives find a peer
                // that vanished without closing its connection.
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true);
            let client = |ep: Endpoint| {
                RaftPeerClient::new(ep.connect_lazy())
                    .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
            };
            let _guard = self.rt.enter();
            let peer_client = client(ep);
            let (queue, rx) = mpsc::unbounded_channel();
            self.rt.spawn(peer_loop(
                self.me,
                self.my_addr.clone(),
                id,
                peer_client.clone(),
                rx,
                self.node.clone(),
                self.filter.clone(),
            ));
            self.peers.insert(
                id,
                Peer {
                    addr: addr.to_string(),
                    queue,
                    snap_client: peer_client,
                },
            );
        }
        self.refresh_members();
        Ok(())
    }

    /// Forgets member `id` (its sender task ends with its queue).
    pub fn remove_member(&mut self, id: u64) {
        if self.peers.remove(&id).is_some() {
            self.refresh_members();
        }
    }

    fn refresh_members(&mut self) {
        let mut m: Vec<(u64, String)> = self
            .peers
            .iter()
            .map(|(id, p)| (*id, p.addr.clone()))
            .collect();
        if !self.my_addr.is_empty() {
            m.push((self.me, self.my_addr.clone()));
        }
        m.sort();
        self.members = m.into();
    }

    /// Queues messages for their peers.
    pub fn send(&self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            let Some(peer) = self.peers.get(&m.to) else {
                warn!(
                    from = self.me,
                    to = m.to,
                    "no address for raft peer; dropped"
                );
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(peer, m);
            } else {
                let _ = peer.queue.send(m);
            }
        }
    }

    /// Streams the checkpoint a MsgSnapshot names, then tells the node how it went.
    fn send_snapshot(&self, peer: &Peer, m: RaftMessage) {
        let to = m.to;
        let node = self.node.clone();
        let name = match Descriptor::decode(&m.get_snapshot().data) {
            Ok(Descriptor::Out(name)) => name,
            other => {
                warn!(
                    to,
                    ?other,
                    "snapshot message without a checkpoint; not sent"
                );
                let _ = node.send(NodeMsg::SnapshotSent { to, ok: false });
                return;
            }
        };
        let client = peer.snap_client.clone();
        let (me, my_addr) = (self.me, self.my_addr.clone());
        let dir = self.snap_dir.clone();
        let filter = self.filter.clone();
        self.rt.spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let ok = if filter.blocks(to) {
                false
            } else {
                match stream_snapshot(client, me, my_addr, m, &dir, &name).await {
                    Ok(records) => {
                        info!(to, index, records, "snapshot sent");
                        true
                    }
                    Err(e) => {
                        warn!(to, index, error = %e, "snapshot not delivered");
                        false
                    }
                }
            };
            let _ =
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir.join(name))).await;
            let _ = node.send(NodeMsg::SnapshotSent { to, ok });
        });
    }

    /// The address of member `id`.
    pub fn addr(&self, id: u64) -> Option<&str> {
        if id == self.me {
            return Some(self.my_addr.as_str());
        }
        self.peers.get(&id).map(|p| p.addr.as_str())
    }

    /// Every member's (id, address), this node included, by id.
    pub fn members(&self) -> Arc<[(u64, String)]> {
        self.members.clone()
    }
}

/// Sends the header, then the checkpoint's records in chunks, then the totals.
async fn stream_snapshot(
    mut client: RaftPeerClient<Channel>,
    me: u64,
    my_addr: String,
    mut m: RaftMessage,
    dir: &Path,
    name: &str,
) -> Result<u64, String> {
    m.mut_snapshot().data = Default::default();
    let header = m.write_to_bytes().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    tx.send(SnapshotChunk {
        from: me,
        from_addr: my_addr,
        message: header.into(),
        ..Default::default()
    })
    .await
    .map_err(|_| "stream closed")?;
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    let reader = tokio::task::spawn_blocking(move || {
        let sent = snapshot::read_checkpoint(&dir, &name, |data| {
            tx.blocking_send(SnapshotChunk {
                data: data.into(),
                ..Default::default()
            })
            .is_ok()
        });
        if let Ok((records, crc32)) = sent {
            let _ = tx.blocking_send(SnapshotChunk {
                done: true,
                records,
                crc32,
                ..Default::default()
            });
        }
        sent
    });
    let call = client
        .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let read = reader.await.map_err(|e| e.to_string())?;
    call.map_err(|e| e.message().to_string())?;
    read.map(|(records, _)| records).map_err(|e| e.to_string())
}

/// Batches queued for one peer's stream at most; beyond that the peer is not keeping up (or
/// the connection is dead and not yet known to be), so batches are dropped and the node told.
const STREAM_QUEUE: usize = 256;

/// Pause before reopening a stream that failed, so a dead peer is not redialled in a loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Sends one peer's messages: batches of whatever is queued, over one long-lived `Step`
/// stream, reopened when it fails. Every failure or dropped batch is reported to the node as
/// `Unreachable`, so raft-rs stops pipelining to the peer and probes it instead.
async fn peer_loop(
    me: u64,
    my_addr: String,
    id: u64,
    client: RaftPeerClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<RaftMessage>,
    node: std::sync::mpsc::Sender<NodeMsg>,
    filter: PeerFilter,
) {
    loop {
        let (tx, stream) = mpsc::channel::<RaftBatch>(STREAM_QUEUE);
        let mut c = client.clone();
        let mut call = tokio::spawn(async move {
            c.step(tokio_stream::wrappers::ReceiverStream::new(stream))
                .await
        });
        let ended = loop {
            tokio::select! {
                res = &mut call => break Some(res),
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if filter.blocks(id) {
                        let _ = node.send(NodeMsg::Unreachable(id));
                        continue;
                    }
                    let messages = batch
                        .iter()
                        .filter_map(|m| m.write_to_bytes().ok().map(Into::into))
                        .collect();
                    let req = RaftBatch {
                        from: me,
                        messages,
                        from_addr: my_addr.clone(),
                    };
                    match tx.try_send(req) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let _ = node.send(NodeMsg::Unreachable(id));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break None,
                    }
                }
            }
        };
        let why = match ended {
            Some(Ok(Ok(_))) => "stream closed by the peer".to_string(),
            Some(Ok(Err(e))) => e.message().to_string(),
            Some(Err(e)) => e.to_string(),
            None => "stream closed".to_string(),
        };
        debug!(peer = id, error = %why, "raft stream to peer ended; reopening");
        // Whatever was queued meanwhile is lost; Raft sends it again.
        while rx.try_recv().is_ok() {}
        let _ = node.send(NodeMsg::Unreachable(id));
        tokio::time::sleep(RECONNECT_PAUSE).await;
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}

/// The receiving side: decodes batches and snapshots and steps them into the node.
pub struct RaftPeerService {
    node: NodeHandle,
    snap_dir: PathBuf,
    filter: PeerFilter,
}

impl RaftPeerService {
    /// Serves Raft traffic into `node`; received snapshots go under `snap_dir`.
    pub fn new(node: NodeHandle, snap_dir: PathBuf, filter: PeerFilter) -> RaftPeerService {
        RaftPeerService {
            node,
            snap_dir,
            filter,
        }
    }

    fn sender(from: u64, addr: String) -> Option<(u64, String)> {
        (from != 0 && !addr.is_empty()).then_some((from, addr))
    }
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn step(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            if self.filter.blocks(batch.from) {
                return Err(Status::unavailable("traffic from this member is dropped"));
            }
            let mut msgs = Vec::with_capacity(batch.messages.len());
            for b in &batch.messages {
                let m = RaftMessage::parse_from_bytes(b).map_err(|e| {
                    Status::invalid_argument(format!(
                        "undecodable raft message from {}: {e}",
                        batch.from
                    ))
                })?;
                msgs.push(m);
            }
            self.node
                .step(msgs, Self::sender(batch.from, batch.from_addr))
                .map_err(Status::from)?;
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        if self.filter.blocks(first.from) {
            return Err(Status::unavailable("traffic from this member is dropped"));
        }
        let mut msg = RaftMessage::parse_from_bytes(&first.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot header: {e}")))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot || !msg.has_snapshot() {
            return Err(Status::invalid_argument(
                "snapshot stream without a snapshot",
            ));
        }
        let (index, term) = {
            let meta = msg.get_snapshot().get_metadata();
            (meta.index, meta.term)
        };
        let mut incoming = Incoming::create(&self.snap_dir).map_err(Status::from)?;
        let mut chunk = first;
        let name = loop {
            incoming
                .write(&chunk.data)
                .map_err(|e| Status::invalid_argument(format!("snapshot chunk: {e}")))?;
            if chunk.done {
                let (records, crc) = (chunk.records, chunk.crc32);
                break tokio::task::spawn_blocking(move || {
                    incoming.finish(records, crc, index, term)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(Status::invalid_argument)?;
            }
            chunk = stream
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("snapshot stream ended early"))?;
        };
        info!(from = msg.from, index, term, file = %name, "snapshot received");
        msg.mut_snapshot().data = Descriptor::In(name).encode().into();
        self.node.step(vec![msg], None).map_err(Status::from)?;
        Ok(Response::new(RaftAck {}))
    }
}
