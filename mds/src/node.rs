//! The Raft node: one thread owns the `RawNode`, the log and the state machine, and is fed
//! proposals and ticks over a channel (never a `RawNode` behind a mutex).
//!
//! Flow of a mutation: a gRPC handler calls [`NodeHandle::propose`] → the node thread proposes
//! it with a context naming (node, incarnation, proposal id) → once the entry is committed and
//! applied, the result goes back over the proposal's oneshot. Proposals that arrive together
//! are appended to the log in one synced RocksDB write.
//!
//! Messages for peers go out through [`Transport`] (gRPC, one queue per peer); messages from
//! peers arrive as [`NodeMsg::Raft`].
//!
//! Reads are linearizable: [`NodeHandle::read_barrier`] waits until the node knows it is still
//! the leader and has applied everything committed when the read arrived. It knows through
//! ReadIndex (a heartbeat round to a quorum; reads that arrive together share one) or through
//! its lease: once a quorum has answered a round sent at time t, no member votes for another
//! leader before t + an election timeout (check-quorum keeps followers loyal that long after
//! hearing from their leader, and a restarted member refuses votes for its first election
//! timeout), so until t + [`Node::lease`] reads are served at the current commit index with no
//! round at all. A round renews the lease while reads keep coming.
//!
//! A proposal remembers the log index it was given; if another entry is applied at that index
//! (a new leader overwrote it), the proposer is told at once to retry, instead of waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message as RaftMessage, MessageType,
};
use raft::{RawNode, StateRole};
use shoal_proto::mds::Timespec;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::command::{Applied, Command, Op, RequestId};
use crate::error::MdsError;
use crate::fsm::Fsm;
use crate::snapshot::Descriptor;
use crate::store::{Db, RaftLog};
use crate::transport::{PeerFilter, Transport};

/// What the node thread receives.
pub enum NodeMsg {
    /// Order and apply a command; the result goes to `reply`.
    Propose {
        /// The command, already stamped with its time.
        cmd: Command,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Applied, MdsError>>,
    },
    /// Raft messages from a peer, with its (id, address) when the batch named them.
    Raft(Vec<RaftMessage>, Option<(u64, String)>),
    /// A peer could not be reached.
    Unreachable(u64),
    /// A snapshot message was delivered to `to`, or failed.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether it was delivered.
        ok: bool,
    },
    /// Confirm leadership and wait until everything committed so far is applied.
    Read {
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<(), MdsError>>,
    },
    /// Add or remove a member (one at a time); answered once the change is applied.
    ChangeMembers {
        /// The change (AddNode with the address as context, or RemoveNode).
        cc: ConfChange,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Applied, MdsError>>,
    },
    /// Stop the node.
    Shutdown,
}

/// What the leader knows of one member's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberProgress {
    /// Member id.
    pub id: u64,
    /// Highest index known to be replicated to it.
    pub matched: u64,
    /// Heard from within the last election timeout.
    pub active: bool,
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
    /// Index of the last log entry.
    pub last_index: u64,
    /// Index of the first entry still in the log (earlier ones were compacted).
    pub first_index: u64,
    /// Each member's replication progress (filled on the leader only).
    pub progress: Vec<MemberProgress>,
    /// Every member's (id, address).
    pub members: std::sync::Arc<[(u64, String)]>,
}

/// Where the node's outgoing Raft messages go, and the member addresses it knows:
/// [`Transport`] in the daemon, an in-memory network in the simulation test.
pub trait Outbox: Send {
    /// Sends messages to their peers (never blocks).
    fn send(&mut self, msgs: Vec<RaftMessage>);
    /// Adds member `id` at `addr`, or moves it there.
    fn set_member(&mut self, id: u64, addr: &str) -> Result<(), String>;
    /// Forgets member `id`.
    fn remove_member(&mut self, id: u64);
    /// The address of member `id`.
    fn addr(&self, id: u64) -> Option<&str>;
    /// Every member's (id, address), by id.
    fn members(&self) -> std::sync::Arc<[(u64, String)]>;
}

impl Outbox for Transport {
    fn send(&mut self, msgs: Vec<RaftMessage>) {
        Transport::send(self, msgs)
    }
    fn set_member(&mut self, id: u64, addr: &str) -> Result<(), String> {
        Transport::set_member(self, id, addr)
    }
    fn remove_member(&mut self, id: u64) {
        Transport::remove_member(self, id)
    }
    fn addr(&self, id: u64) -> Option<&str> {
        Transport::addr(self, id)
    }
    fn members(&self) -> std::sync::Arc<[(u64, String)]> {
        Transport::members(self)
    }
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
/// How long a quorum's answer to a round sent at t lets the leader serve reads alone: members
/// vote for no one else for `election_ticks` ticks after hearing from it, and ticks are never
/// early, only late; one tick and a fifth of the rest are kept as margin for granularity and
/// clock rates.
fn lease_for(tick: Duration, election_ticks: usize) -> Duration {
    let ticks = u32::try_from(election_ticks.saturating_sub(1)).unwrap_or(u32::MAX);
    tick.saturating_mul(ticks) * 4 / 5
}

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
    /// Proposes `op`, stamped with the current time, and waits for it to be applied. With
    /// `req`, a retry of the same client request returns the first reply instead of applying
    /// `op` again.
    pub async fn propose(&self, op: Op, req: Option<RequestId>) -> Result<Applied, MdsError> {
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
                req,
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

    /// Waits until this node has confirmed it is the leader and applied everything that was
    /// committed when the call arrived (ReadIndex); then a read of the state machine is
    /// linearizable.
    pub async fn read_barrier(&self) -> Result<(), MdsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(NodeMsg::Read { reply })
            .map_err(|_| MdsError::Shutdown)?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(MdsError::NotLeader { leader: None }),
        }
    }

    /// Adds or removes a member through a Raft conf change and waits until it is applied.
    pub async fn change_members(&self, cc: ConfChange) -> Result<Vec<u64>, MdsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(NodeMsg::ChangeMembers { cc, reply })
            .map_err(|_| MdsError::Shutdown)?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(Ok(Applied::Voters(v)))) => Ok(v),
            Ok(Ok(Ok(_))) => Err(MdsError::Corrupt("membership change without voters".into())),
            Ok(Ok(Err(e))) => Err(e),
            _ => Err(MdsError::NotLeader { leader: None }),
        }
    }

    /// Hands Raft messages from a peer (whose id and address `from` names, when known) to
    /// the node.
    pub fn step(
        &self,
        msgs: Vec<RaftMessage>,
        from: Option<(u64, String)>,
    ) -> Result<(), MdsError> {
        self.tx
            .send(NodeMsg::Raft(msgs, from))
            .map_err(|_| MdsError::Shutdown)
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
    /// Members of a brand-new group, (id, address), this node included (the voters are
    /// ignored once the log exists; the addresses are how peers are reached).
    pub members: Vec<(u64, String)>,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Where snapshots being sent or received live.
    pub snap_dir: std::path::PathBuf,
    /// Use a fixed election timeout instead of a random one (the deterministic simulation
    /// varies timing through its seed instead).
    pub fixed_election_timeout: bool,
    /// Start outside any configuration and wait to be added (`members` names only this
    /// node); ignored once the database has a configuration.
    pub join: bool,
    /// Applied entries the log may hold before it is compacted.
    pub compact_entries: u64,
    /// Newest applied entries kept by a compaction (so a member a little behind catches up
    /// from the log instead of a snapshot).
    pub keep_entries: u64,
}

/// Called with (index, term, data) of every entry applied.
type ApplyObserver = Box<dyn FnMut(u64, u64, &[u8]) + Send>;

/// A read waiting for its ReadIndex confirmation.
type ReadWaiter = oneshot::Sender<Result<(), MdsError>>;

/// The node thread's state.
pub struct Node {
    raw: RawNode<RaftLog>,
    fsm: Fsm,
    rx: std_mpsc::Receiver<NodeMsg>,
    status_tx: watch::Sender<NodeStatus>,
    /// Proposals awaiting their entry: log index → (proposal id, reply).
    pending: BTreeMap<u64, (u64, oneshot::Sender<Result<Applied, MdsError>>)>,
    next_proposal: u64,
    incarnation: u64,
    tick: Duration,
    transport: Box<dyn Outbox>,
    /// Sees every applied entry (index, term, data); the simulation test checks agreement.
    observer: Option<ApplyObserver>,
    /// Reads that arrived since the last ReadIndex request.
    reads_new: Vec<ReadWaiter>,
    /// Reads whose ReadIndex request is out: request id → (when asked, term, waiters).
    reads_asked: HashMap<u64, (Instant, u64, Vec<ReadWaiter>)>,
    /// Reads confirmed at an index: they proceed once it is applied.
    reads_ready: Vec<(u64, Vec<ReadWaiter>)>,
    next_read: u64,
    was_leader: bool,
    /// Until when this leader may serve reads without a round (see the module docs).
    lease_until: Option<Instant>,
    /// How long a confirmed round keeps the lease: a margin below the election timeout.
    lease: Duration,
    /// Ticks since this node started.
    ticks: usize,
    /// Vote requests are dropped until `ticks` reaches this (an election timeout): a
    /// restarted member forgot which leader it heard from last, and must not help elect
    /// another while that leader's lease may still hold.
    quiet_ticks: usize,
    /// Compact the whole applied log at the end of this ready (after a member was added).
    compact_all: bool,
    compact_entries: u64,
    keep_entries: u64,
}

impl Node {
    /// Opens the log and state machine and starts the node thread.
    pub fn start(
        cfg: &NodeConfig,
        db: Db,
        filter: PeerFilter,
    ) -> Result<(NodeHandle, std::thread::JoinHandle<()>), MdsError> {
        let (tx, rx) = std_mpsc::channel();
        let transport = Transport::start(cfg.id, &cfg.members, &cfg.snap_dir, tx.clone(), filter)
            .map_err(MdsError::Corrupt)?;
        let (node, handle) = Node::open(cfg, db, Box::new(transport), tx, rx)?;
        let join = std::thread::Builder::new()
            .name("mds-raft".into())
            .spawn(move || node.run())
            .map_err(|e| MdsError::Corrupt(format!("cannot spawn raft thread: {e}")))?;
        Ok((handle, join))
    }

    /// Opens the log and state machine into a node that sends through `outbox` and is fed
    /// through `rx` (whose sender is `tx`), without starting its thread.
    fn open(
        cfg: &NodeConfig,
        db: Db,
        outbox: Box<dyn Outbox>,
        tx: std_mpsc::Sender<NodeMsg>,
        rx: std_mpsc::Receiver<NodeMsg>,
    ) -> Result<(Node, NodeHandle), MdsError> {
        let fsm = Fsm::new(db.clone());
        // A joining member starts with no configuration: it learns it from the leader's
        // snapshot once the group adds it.
        let ids: Vec<u64> = if cfg.join {
            Vec::new()
        } else {
            fsm.seed_members(&cfg.members)?;
            cfg.members.iter().map(|(id, _)| *id).collect()
        };
        let mut log = RaftLog::open(db, &ids, &cfg.snap_dir)?;
        let applied = fsm.applied_index()?;
        // A node killed between applying entries and persisting the commit index that covered
        // them (older versions applied first): those entries were committed, so the commit
        // index moves up to what was applied.
        if applied > log.hard_state().commit {
            if applied > log.last_entry_index() {
                return Err(MdsError::Corrupt(format!(
                    "state machine applied {applied} but the log ends at {}",
                    log.last_entry_index()
                )));
            }
            warn!(
                applied,
                commit = log.hard_state().commit,
                "raising the persisted commit index to the applied index"
            );
            log.set_commit(applied)?;
        }
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            // A fixed timeout (for the deterministic simulation) or raft-rs's random one.
            max_election_tick: if cfg.fixed_election_timeout {
                cfg.election_ticks + 1
            } else {
                0
            },
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            // ReadIndex confirms leadership with a quorum round; the node keeps its own lease
            // on top (measured from when a round was sent, see `ask_reads`), because raft-rs's
            // LeaseBased option trusts check-quorum, which may leave a deposed leader serving
            // reads for up to an election timeout after its successor was elected.
            read_only_option: raft::ReadOnlyOption::Safe,
            // Followers learn a new commit index from the next append or heartbeat instead of
            // an empty append (and its answer) after every commit: half the messages per
            // batch. Only the leader serves clients, so a follower applying a little later
            // costs nothing but catch-up time if it is elected.
            skip_bcast_commit: true,
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
        let (status_tx, status) = watch::channel(NodeStatus {
            id: cfg.id,
            ..Default::default()
        });
        let mut node = Node {
            raw,
            fsm,
            rx,
            status_tx,
            pending: BTreeMap::new(),
            next_proposal: 1,
            incarnation: rand::random(),
            tick: cfg.tick,
            transport: outbox,
            reads_new: Vec::new(),
            reads_asked: HashMap::new(),
            lease_until: None,
            lease: lease_for(cfg.tick, cfg.election_ticks),
            ticks: 0,
            quiet_ticks: cfg.election_ticks,
            reads_ready: Vec::new(),
            next_read: 1,
            was_leader: false,
            compact_all: false,
            compact_entries: cfg.compact_entries.max(1),
            keep_entries: cfg.keep_entries,
            observer: None,
        };
        node.load_members()?;
        info!(id = cfg.id, applied, "raft node starting");
        Ok((node, NodeHandle { tx, status }))
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
                self.tick();
                next_tick = Instant::now() + self.tick;
            }
            self.ask_reads();
            if let Err(e) = self.on_ready() {
                // Storage failures leave the node unable to make progress safely.
                error!(error = %e, "raft ready loop failed; stopping the node");
                break;
            }
            self.release_reads();
            self.publish_status();
        }
        self.stop();
    }

    fn stop(&mut self) {
        for (_, (_, reply)) in std::mem::take(&mut self.pending) {
            let _ = reply.send(Err(MdsError::Shutdown));
        }
        info!("raft node stopped");
    }

    /// The address of the leader this node knows of, if another node.
    fn leader_addr(&self) -> Option<String> {
        let leader = self.raw.raft.leader_id;
        (leader != 0 && leader != self.raw.raft.id)
            .then(|| self.transport.addr(leader).map(|a| a.to_string()))
            .flatten()
    }

    /// The NotLeader error naming the leader this node knows of.
    fn not_leader(&self) -> MdsError {
        MdsError::NotLeader {
            leader: self.leader_addr(),
        }
    }

    fn tick(&mut self) {
        self.ticks = self.ticks.saturating_add(1);
        self.raw.tick();
    }

    /// Serves the reads that arrived since the last call: at once under a valid lease (also
    /// renewing it when half spent), otherwise with one ReadIndex request for all of them.
    fn ask_reads(&mut self) {
        let leader = self.raw.raft.state == StateRole::Leader;
        if self.was_leader && !leader {
            // Deposed: confirmations in flight will never come.
            self.lease_until = None;
            let leader = self.leader_addr();
            for w in self
                .reads_asked
                .drain()
                .flat_map(|(_, (_, _, w))| w)
                .chain(self.reads_ready.drain(..).flat_map(|(_, w)| w))
            {
                let _ = w.send(Err(MdsError::NotLeader {
                    leader: leader.clone(),
                }));
            }
        }
        self.was_leader = leader;
        if self.reads_new.is_empty() {
            return;
        }
        if !leader {
            let leader = self.leader_addr();
            for w in self.reads_new.drain(..) {
                let _ = w.send(Err(MdsError::NotLeader {
                    leader: leader.clone(),
                }));
            }
            return;
        }
        let now = Instant::now();
        let mut waiters = std::mem::take(&mut self.reads_new);
        if let Some(until) = self.lease_until.filter(|u| now < *u) {
            let committed = self.raw.raft.raft_log.committed;
            self.reads_ready.push((committed, waiters));
            let renewing = self
                .reads_asked
                .values()
                .any(|(at, ..)| *at + self.lease / 2 > now);
            if until.saturating_duration_since(now) > self.lease / 2 || renewing {
                return;
            }
            waiters = Vec::new();
        }
        let id = self.next_read;
        self.next_read += 1;
        self.reads_asked
            .insert(id, (now, self.raw.raft.term, waiters));
        self.raw.read_index(id.to_be_bytes().to_vec());
    }

    /// Lets reads whose confirmed index is applied proceed.
    fn release_reads(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].0 <= applied {
                for w in self.reads_ready.swap_remove(i).1 {
                    let _ = w.send(Ok(()));
                }
            } else {
                i += 1;
            }
        }
    }

    fn on_msg(&mut self, msg: NodeMsg) {
        match msg {
            NodeMsg::Propose { cmd, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                let ctx = self.proposal_context(id);
                match self.raw.propose(ctx, cmd.encode_to_vec()) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.pending.insert(index, (id, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(MdsError::Raft(e)));
                    }
                }
            }
            NodeMsg::Raft(msgs, from) => {
                if let Some((id, addr)) = from {
                    if self.transport.addr(id) != Some(addr.as_str()) {
                        info!(peer = id, %addr, "learned a member's address");
                        if let Err(e) = self.transport.set_member(id, &addr) {
                            warn!(peer = id, error = %e, "unusable member address");
                        }
                    }
                }
                for mut m in msgs {
                    if self.ticks < self.quiet_ticks
                        && matches!(
                            m.get_msg_type(),
                            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                        )
                    {
                        debug!(from = m.from, "vote request dropped: just started");
                        continue;
                    }
                    // A leader that believes we hold entries we do not (our data directory
                    // was wiped) sends a commit index beyond our log, which raft-rs treats
                    // as fatal. Keep our commit index instead: the heartbeat still counts,
                    // and the leader's next append finds our log short and sends a snapshot.
                    if m.get_msg_type() == MessageType::MsgHeartbeat
                        && m.commit > self.raw.raft.raft_log.last_index()
                    {
                        warn!(
                            leader = m.from,
                            commit = m.commit,
                            last_index = self.raw.raft.raft_log.last_index(),
                            "the leader believes this member holds entries it lacks (wiped?)"
                        );
                        m.commit = self.raw.raft.raft_log.committed;
                    }
                    if let Err(e) = self.raw.step(m) {
                        // A message from a removed member or for another term: harmless.
                        warn!(error = %e, "raft message refused");
                    }
                }
            }
            NodeMsg::Unreachable(id) => self.raw.report_unreachable(id),
            NodeMsg::SnapshotSent { to, ok } => self.raw.report_snapshot(
                to,
                if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                },
            ),
            NodeMsg::Read { reply } => self.reads_new.push(reply),
            NodeMsg::ChangeMembers { cc, reply } => self.propose_member_change(cc, reply),
            NodeMsg::Shutdown => {}
        }
    }

    /// Sends Raft messages to peers.
    fn send(&mut self, msgs: Vec<RaftMessage>) {
        self.transport.send(msgs);
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
        for rs in ready.take_read_states() {
            let id = rs
                .request_ctx
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some((asked, term, waiters)) = self.reads_asked.remove(&id) {
                // A quorum answered a round sent after `asked` while we led in `term`.
                if term == self.raw.raft.term && self.raw.raft.state == StateRole::Leader {
                    let until = asked + self.lease;
                    self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
                }
                self.reads_ready.push((rs.index, waiters));
            }
        }
        if !ready.snapshot().is_empty() {
            // A snapshot from the leader: its state replaces ours before any later entry.
            let snap = ready.snapshot();
            let name = match Descriptor::decode(&snap.data)? {
                Descriptor::In(name) => name,
                Descriptor::Out(name) => {
                    return Err(MdsError::Corrupt(format!(
                        "asked to install our own outgoing snapshot {name}"
                    )))
                }
            };
            let meta = snap.get_metadata().clone();
            info!(
                index = meta.index,
                term = meta.term,
                "installing a snapshot"
            );
            self.raw.mut_store().restore_snapshot(&meta, &name)?;
            self.load_members()?;
            info!(index = meta.index, "snapshot installed");
        }
        // New entries and the hard state (with the commit index) are made durable first: the
        // state machine's applied index must never be ahead of the persisted commit index, or
        // raft-rs refuses to start after a crash. They must also precede the messages that
        // depend on them.
        self.raw.mut_store().append(ready.entries(), ready.hs())?;
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
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
        self.maybe_compact()
    }

    /// Drops applied entries once the log holds more than `compact_entries` of them, keeping
    /// the newest `keep_entries`.
    fn maybe_compact(&mut self) -> Result<(), MdsError> {
        let applied = self.raw.raft.raft_log.applied;
        if std::mem::take(&mut self.compact_all) {
            return self.raw.mut_store().compact(applied);
        }
        let first = self.raw.store().first_entry_index();
        if applied.saturating_sub(first) < self.compact_entries {
            return Ok(());
        }
        let to = applied.saturating_sub(self.keep_entries);
        self.raw.mut_store().compact(to)
    }

    /// Records a membership change applied at `index`: the member list in the state (which
    /// snapshots carry) and the transport. After an addition the whole applied log is
    /// compacted, so the new member, whose log is empty, starts from a snapshot whose
    /// configuration includes it rather than replaying entries from before it existed.
    fn member_changed(&mut self, index: u64, cc: &ConfChange) -> Result<(), MdsError> {
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let addr = std::str::from_utf8(&cc.context).unwrap_or_default();
                if addr.is_empty() {
                    self.fsm.apply_empty(index)?;
                } else {
                    self.fsm.apply_member_change(index, id, Some(addr))?;
                    if let Err(e) = self.transport.set_member(id, addr) {
                        warn!(member = id, error = %e, "unusable member address");
                    }
                }
                info!(member = id, addr, index, "member added");
                self.compact_all = true;
            }
            ConfChangeType::RemoveNode => {
                self.fsm.apply_member_change(index, id, None)?;
                if id != self.raw.raft.id {
                    self.transport.remove_member(id);
                }
                info!(member = id, index, "member removed");
            }
        }
        Ok(())
    }

    /// Points the transport at the addresses the state holds (after start or a snapshot).
    fn load_members(&mut self) -> Result<(), MdsError> {
        for (id, addr) in self.fsm.mds_members()? {
            if self.transport.addr(id) != Some(addr.as_str()) {
                if let Err(e) = self.transport.set_member(id, &addr) {
                    warn!(member = id, error = %e, "unusable member address");
                }
            }
        }
        Ok(())
    }

    /// Starts a membership change if this node leads and no other change is in flight.
    fn propose_member_change(
        &mut self,
        cc: ConfChange,
        reply: oneshot::Sender<Result<Applied, MdsError>>,
    ) {
        let r = &self.raw.raft;
        let busy = |m: &str| MdsError::fs(libc::EBUSY, m.to_string());
        let refused = if r.state != StateRole::Leader {
            Some(self.not_leader())
        } else if r.has_pending_conf() {
            Some(busy("another membership change is still in progress"))
        } else if cc.get_change_type() == ConfChangeType::RemoveNode && cc.node_id == r.id {
            Some(busy(
                "this member is the leader; stop it and remove it once another leads",
            ))
        } else {
            None
        };
        if let Some(e) = refused {
            let _ = reply.send(Err(e));
            return;
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        let ctx = self.proposal_context(id);
        match self.raw.propose_conf_change(ctx, cc) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.pending.insert(index, (id, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(MdsError::Raft(e)));
            }
        }
    }

    /// The context that marks a proposal as ours: (node, incarnation, proposal id).
    fn proposal_context(&self, id: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.raw.raft.id.to_be_bytes());
        ctx.extend_from_slice(&self.incarnation.to_be_bytes());
        ctx.extend_from_slice(&id.to_be_bytes());
        ctx
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), MdsError> {
        for e in entries {
            if let Some(f) = self.observer.as_mut() {
                f(e.index, e.term, &e.data);
            }
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {
                    self.fsm.apply_empty(e.index)?;
                    None
                }
                EntryType::EntryNormal => Some(match Command::decode(e.data.as_ref()) {
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
                }),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| MdsError::Corrupt(format!("conf change: {err}")))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    let mut voters = cs.voters.clone();
                    voters.sort_unstable();
                    self.raw.mut_store().set_conf_state(cs)?;
                    self.member_changed(e.index, &cc)?;
                    Some(Ok(Applied::Voters(voters)))
                }
                EntryType::EntryConfChangeV2 => {
                    // Never proposed by Shoal (joint changes are not used); applied as raft-rs
                    // defines it so a log holding one stays readable.
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| MdsError::Corrupt(format!("conf change: {err}")))?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                    self.fsm.apply_empty(e.index)?;
                    Some(Ok(Applied::Done))
                }
            };
            self.settle(e.index, &e.context, outcome);
        }
        Ok(())
    }

    /// Answers the proposal waiting for log slot `index`, if it is ours. Proposals of ours
    /// whose slot holds another entry (a new leader overwrote them) never take effect: their
    /// proposers are told to retry.
    fn settle(&mut self, index: u64, ctx: &[u8], mut outcome: Option<Result<Applied, MdsError>>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (at, (id, reply)) = entry.remove_entry();
            let word = |i: usize| {
                ctx.get(i * 8..i * 8 + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            let ours = at == index
                && ctx.len() == 24
                && word(0) == Some(self.raw.raft.id)
                && word(1) == Some(self.incarnation)
                && word(2) == Some(id);
            if ours {
                if let Some(o) = outcome.take() {
                    let _ = reply.send(o);
                    break;
                }
            }
            let _ = reply.send(Err(self.not_leader()));
        }
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let progress = if r.state == StateRole::Leader {
            let mut p: Vec<MemberProgress> = r
                .prs()
                .iter()
                .map(|(id, pr)| MemberProgress {
                    id: *id,
                    matched: pr.matched,
                    active: *id == r.id || pr.recent_active,
                })
                .collect();
            p.sort_by_key(|m| m.id);
            p
        } else {
            Vec::new()
        };
        let st = NodeStatus {
            id: r.id,
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: r.raft_log.applied,
            voters: {
                let mut v = self.raw.store().conf_state().voters.clone();
                v.sort_unstable();
                v
            },
            last_index: r.raft_log.last_index(),
            first_index: self.raw.store().first_entry_index(),
            progress,
            members: self.transport.members(),
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

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_ends_before_any_member_may_vote_for_another_leader() {
        let tick = Duration::from_millis(100);
        // Members refuse votes for 10 ticks after hearing from the leader, i.e. at least 9
        // tick lengths; the lease keeps a fifth of that as margin.
        assert_eq!(lease_for(tick, 10), Duration::from_millis(720));
        assert!(lease_for(tick, 10) < tick * 9);
        assert_eq!(lease_for(tick, 1), Duration::ZERO);
        assert_eq!(lease_for(tick, 0), Duration::ZERO);
    }
}
