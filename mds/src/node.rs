//! The Raft node: one thread owns the `RawNode`, the log and the state machine, and is fed
//! proposals and ticks over a channel (never a `RawNode` behind a mutex).
//!
//! Flow of a mutation: a gRPC handler calls [`NodeHandle::propose`] → the node thread proposes
//! it with a context naming (node, incarnation, proposal id) → once the entry is committed and
//! applied, the result goes back over the proposal's oneshot. Proposals that arrive together
//! are appended to the log in one synced RocksDB write.
//!
//! This issue runs a group of one voter; messages for peers have nowhere to go yet, and the
//! transport slot in [`Node::send`] is where the multi-node MDS plugs in.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message as RaftMessage};
use raft::{RawNode, StateRole};
use shoal_proto::mds::Timespec;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::command::{Applied, Command, Op};
use crate::error::MdsError;
use crate::fsm::Fsm;
use crate::store::{Db, RaftLog};

/// What the node thread receives.
pub enum NodeMsg {
    /// Order and apply a command; the result goes to `reply`.
    Propose {
        /// The command, already stamped with its time.
        cmd: Command,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Applied, MdsError>>,
    },
    /// Stop the node.
    Shutdown,
}

/// What the node publishes about itself after every step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's Raft id.
    pub id: u64,
    /// The leader's id, 0 when unknown.
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Highest committed index.
    pub commit: u64,
    /// Highest applied index.
    pub applied: u64,
    /// Voter ids.
    pub voters: Vec<u64>,
}

/// The handle gRPC handlers use.
#[derive(Clone)]
pub struct NodeHandle {
    tx: std_mpsc::Sender<NodeMsg>,
    status: watch::Receiver<NodeStatus>,
}

/// How long a proposal may wait for leadership and for its entry to apply.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The current wall-clock time as a protocol timestamp.
pub fn now() -> Timespec {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timespec {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

impl NodeHandle {
    /// Proposes `op`, stamped with the current time, and waits for it to be applied.
    pub async fn propose(&self, op: Op) -> Result<Applied, MdsError> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut status = self.status.clone();
        loop {
            // Wait for a leader before proposing, so start-up does not bounce clients.
            if status.borrow().leader_id == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, status.changed()).await;
                if status.borrow().leader_id == 0 {
                    if Instant::now() >= deadline {
                        return Err(MdsError::NotLeader { leader: None });
                    }
                    continue;
                }
            }
            let (reply, rx) = oneshot::channel();
            let cmd = Command {
                now: Some(now()),
                op: Some(op.clone()),
            };
            self.tx
                .send(NodeMsg::Propose { cmd, reply })
                .map_err(|_| MdsError::Shutdown)?;
            let left = deadline.saturating_duration_since(Instant::now());
            return match tokio::time::timeout(left, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(MdsError::NotLeader { leader: None }),
                Err(_) => Err(MdsError::NotLeader { leader: None }),
            };
        }
    }

    /// The node's latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// Asks the node thread to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(NodeMsg::Shutdown);
    }
}

/// Settings of the Raft node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id (non-zero).
    pub id: u64,
    /// Voters of a brand-new group (ignored once the log exists).
    pub initial_voters: Vec<u64>,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
}

/// The node thread's state.
pub struct Node {
    raw: RawNode<RaftLog>,
    fsm: Fsm,
    rx: std_mpsc::Receiver<NodeMsg>,
    status_tx: watch::Sender<NodeStatus>,
    pending: HashMap<u64, oneshot::Sender<Result<Applied, MdsError>>>,
    next_proposal: u64,
    incarnation: u64,
    tick: Duration,
}

impl Node {
    /// Opens the log and state machine and starts the node thread.
    pub fn start(
        cfg: &NodeConfig,
        db: Db,
    ) -> Result<(NodeHandle, std::thread::JoinHandle<()>), MdsError> {
        let fsm = Fsm::new(db.clone());
        let applied = fsm.applied_index()?;
        let log = RaftLog::open(db, &cfg.initial_voters)?;
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let voters = log.conf_state().voters.clone();
        let mut raw = RawNode::new(&raft_cfg, log, &logger)?;
        // A group of one elects itself at once instead of waiting out an election timeout.
        if voters == [cfg.id] {
            raw.campaign()?;
        }
        let (tx, rx) = std_mpsc::channel();
        let (status_tx, status) = watch::channel(NodeStatus {
            id: cfg.id,
            ..Default::default()
        });
        let node = Node {
            raw,
            fsm,
            rx,
            status_tx,
            pending: HashMap::new(),
            next_proposal: 1,
            incarnation: rand::random(),
            tick: cfg.tick,
        };
        info!(id = cfg.id, applied, "raft node starting");
        let join = std::thread::Builder::new()
            .name("mds-raft".into())
            .spawn(move || node.run())
            .map_err(|e| MdsError::Corrupt(format!("cannot spawn raft thread: {e}")))?;
        Ok((NodeHandle { tx, status }, join))
    }

    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(NodeMsg::Shutdown) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(m) => {
                    self.on_msg(m);
                    // Take everything already queued so it shares one log write.
                    while let Ok(m) = self.rx.try_recv() {
                        if matches!(m, NodeMsg::Shutdown) {
                            return self.stop();
                        }
                        self.on_msg(m);
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick = Instant::now() + self.tick;
            }
            if let Err(e) = self.on_ready() {
                // Storage failures leave the node unable to make progress safely.
                error!(error = %e, "raft ready loop failed; stopping the node");
                break;
            }
            self.publish_status();
        }
        self.stop();
    }

    fn stop(&mut self) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(MdsError::Shutdown));
        }
        info!("raft node stopped");
    }

    fn on_msg(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Propose { cmd, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let leader = Some(self.raw.raft.leader_id).filter(|&l| l != 0);
                    let _ = reply.send(Err(MdsError::NotLeader { leader }));
                    return;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                let mut ctx = Vec::with_capacity(24);
                ctx.extend_from_slice(&self.raw.raft.id.to_be_bytes());
                ctx.extend_from_slice(&self.incarnation.to_be_bytes());
                ctx.extend_from_slice(&id.to_be_bytes());
                match self.raw.propose(ctx, cmd.encode_to_vec()) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(MdsError::Raft(e)));
                    }
                }
            }
            NodeMsg::Shutdown => {}
        }
    }

    /// Sends Raft messages to peers. A group of one has none.
    fn send(&mut self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            warn!(to = m.to, "no transport to peer yet; dropping raft message");
        }
    }

    /// The ready loop, in the order raft-rs requires.
    fn on_ready(&mut self) -> Result<(), MdsError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        // Messages that need no persistence go out first, in parallel with our own write.
        let msgs = ready.take_messages();
        self.send(msgs);
        if !ready.snapshot().is_empty() {
            // Snapshots are never produced yet (see RaftLog::snapshot); receiving one is a bug.
            return Err(MdsError::Corrupt("unexpected raft snapshot".into()));
        }
        // Entries committed earlier are applied before new ones are appended.
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        // New entries and hard state must be durable before the messages that depend on them.
        self.raw.mut_store().append(ready.entries(), ready.hs())?;
        let persisted = ready.take_persisted_messages();
        self.send(persisted);
        let mut light = self.raw.advance(ready);
        // The commit index is persisted no later than the entries it covers are applied.
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), MdsError> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {
                    self.fsm.apply_empty(e.index)?;
                }
                EntryType::EntryNormal => {
                    let outcome = match Command::decode(e.data.as_ref()) {
                        Ok(cmd) => self.fsm.apply(e.index, &cmd)?,
                        Err(err) => {
                            // Every replica decodes the same bytes the same way, so skipping
                            // keeps them identical.
                            self.fsm.apply_empty(e.index)?;
                            Err(MdsError::Corrupt(format!(
                                "undecodable command at {}: {err}",
                                e.index
                            )))
                        }
                    };
                    self.reply(&e.context, outcome);
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| MdsError::Corrupt(format!("conf change: {err}")))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                    self.fsm.apply_empty(e.index)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| MdsError::Corrupt(format!("conf change: {err}")))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                    self.fsm.apply_empty(e.index)?;
                }
            }
        }
        Ok(())
    }

    fn reply(&mut self, ctx: &[u8], outcome: Result<Applied, MdsError>) {
        if ctx.len() != 24 {
            return;
        }
        let word =
            |i: usize| u64::from_be_bytes(ctx[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        if word(0) != self.raw.raft.id || word(1) != self.incarnation {
            return;
        }
        if let Some(reply) = self.pending.remove(&word(2)) {
            let _ = reply.send(outcome);
        }
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let st = NodeStatus {
            id: r.id,
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: r.raft_log.applied,
            voters: self.raw.store().conf_state().voters.clone(),
        };
        self.status_tx.send_if_modified(|cur| {
            if *cur != st {
                *cur = st;
                true
            } else {
                false
            }
        });
    }
}
