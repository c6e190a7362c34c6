//! Raft traffic between MDS members over gRPC (`RaftPeer.Step`).
//!
//! The node thread hands outgoing messages to [`Transport::send`], which never blocks: each
//! peer has a task with a queue that sends everything queued since its last call as one batch.
//! A batch that cannot be delivered is dropped (Raft retransmits) and the node is told the
//! peer is unreachable, so raft-rs stops pipelining to it. Incoming batches are decoded by
//! [`RaftPeerService`] and stepped into the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use shoal_proto::mds::raft_peer_client::RaftPeerClient;
use shoal_proto::mds::raft_peer_server::RaftPeer;
use shoal_proto::mds::{RaftAck, RaftBatch};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::node::{NodeHandle, NodeMsg};

/// Messages per batch at most (a batch also stays under the gRPC message limit because
/// raft-rs caps each append at `max_size_per_msg`).
const MAX_BATCH: usize = 64;

/// Outgoing Raft messages, one queue and task per peer.
pub struct Transport {
    me: u64,
    addrs: HashMap<u64, String>,
    members: Arc<[(u64, String)]>,
    queues: HashMap<u64, mpsc::UnboundedSender<RaftMessage>>,
}

impl Transport {
    /// Starts a sender task per peer in `members` (id, address), on the current runtime.
    /// Failures are reported to the node through `node`.
    pub fn start(
        me: u64,
        members: &[(u64, String)],
        node: std::sync::mpsc::Sender<NodeMsg>,
    ) -> Result<Transport, String> {
        let mut queues = HashMap::new();
        for (id, addr) in members.iter().filter(|(id, _)| *id != me) {
            let ep = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("bad address {addr:?} of mds {id}: {e}"))?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(5))
                .tcp_nodelay(true);
            let client = RaftPeerClient::new(ep.connect_lazy())
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(peer_loop(me, *id, client, rx, node.clone()));
            queues.insert(*id, tx);
        }
        let mut sorted = members.to_vec();
        sorted.sort();
        Ok(Transport {
            me,
            addrs: members.iter().cloned().collect(),
            members: sorted.into(),
            queues,
        })
    }

    /// Queues messages for their peers.
    pub fn send(&self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            match self.queues.get(&m.to) {
                Some(q) => {
                    let _ = q.send(m);
                }
                None => warn!(
                    from = self.me,
                    to = m.to,
                    "no address for raft peer; dropped"
                ),
            }
        }
    }

    /// The address of member `id`.
    pub fn addr(&self, id: u64) -> Option<&str> {
        self.addrs.get(&id).map(String::as_str)
    }

    /// Every member's (id, address), this node included, by id.
    pub fn members(&self) -> Arc<[(u64, String)]> {
        self.members.clone()
    }
}

async fn peer_loop(
    me: u64,
    id: u64,
    mut client: RaftPeerClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<RaftMessage>,
    node: std::sync::mpsc::Sender<NodeMsg>,
) {
    let mut down = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshots = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count();
        let messages = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok().map(Into::into))
            .collect();
        match client.step(RaftBatch { from: me, messages }).await {
            Ok(_) => {
                if down {
                    debug!(peer = id, "raft peer reachable again");
                    down = false;
                }
                for _ in 0..snapshots {
                    let _ = node.send(NodeMsg::SnapshotSent { to: id, ok: true });
                }
            }
            Err(e) => {
                if !down {
                    debug!(peer = id, error = %e.message(), "raft peer unreachable");
                    down = true;
                }
                let _ = node.send(NodeMsg::Unreachable(id));
                for _ in 0..snapshots {
                    let _ = node.send(NodeMsg::SnapshotSent { to: id, ok: false });
                }
            }
        }
    }
}

/// The receiving side: decodes batches and steps them into the node.
pub struct RaftPeerService {
    node: NodeHandle,
}

impl RaftPeerService {
    /// Serves Raft traffic into `node`.
    pub fn new(node: NodeHandle) -> RaftPeerService {
        RaftPeerService { node }
    }
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn step(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = req.into_inner();
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
        self.node.step(msgs).map_err(Status::from)?;
        Ok(Response::new(RaftAck {}))
    }
}
