//! A seeded, single-threaded simulation of a three-member group: the real [`Node`] (ready
//! loop, RocksDB log, state machine, compaction, snapshots) over an in-memory network that
//! loses, delays and reorders messages, with members crashed and reopened from their data
//! directories. Every applied entry is checked against what any other member applied at that
//! index, and at the end, with the network healed, every member holds the same state.
//!
//! A failure names its seed; `SHOAL_RAFT_SEED=N cargo test -p shoal-mds sim` replays it, and
//! `SHOAL_RAFT_SEEDS=N` runs more seeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{Message as RaftMessage, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_proto::mds::{self as pb, Timespec};

use super::{Node, NodeConfig, NodeMsg, Outbox};
use crate::command::{Bootstrap, Command, Op};
use crate::snapshot::{self, Descriptor, Incoming};
use crate::store::Db;

const MEMBERS: u64 = 3;

/// Messages a member sent, collected by the simulation after each step.
#[derive(Clone, Default)]
struct SimOutbox {
    sent: Arc<Mutex<Vec<RaftMessage>>>,
    members: Arc<[(u64, String)]>,
}

impl Outbox for SimOutbox {
    fn send(&mut self, msgs: Vec<RaftMessage>) {
        self.sent.lock().unwrap().extend(msgs);
    }
    fn set_member(&mut self, _id: u64, _addr: &str) -> Result<(), String> {
        Ok(())
    }
    fn remove_member(&mut self, _id: u64) {}
    fn addr(&self, id: u64) -> Option<&str> {
        self.members
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, a)| a.as_str())
    }
    fn members(&self) -> Arc<[(u64, String)]> {
        self.members.clone()
    }
}

/// What was applied at each index, by whoever applied it first: (term, data).
type Applied = Arc<Mutex<BTreeMap<u64, (u64, Vec<u8>)>>>;

struct Member {
    id: u64,
    dir: tempfile::TempDir,
    node: Option<Node>,
    outbox: SimOutbox,
    /// Steps left until a crashed member comes back.
    down_for: u32,
}

struct Sim {
    rng: StdRng,
    members: Vec<Member>,
    /// In flight: (steps left before delivery, message).
    net: Vec<(u32, RaftMessage)>,
    applied: Applied,
    violations: Arc<Mutex<Vec<String>>>,
    proposals: u64,
    crashes: u32,
    snapshots: u32,
}

fn config(id: u64, dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        id,
        members: (1..=MEMBERS).map(|i| (i, format!("sim-{i}:1"))).collect(),
        tick: Duration::from_millis(100),
        election_ticks: 10,
        heartbeat_ticks: 3,
        snap_dir: dir.join("snap"),
        fixed_election_timeout: true,
        join: false,
        compact_entries: 40,
        keep_entries: 10,
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            members: Vec::new(),
            net: Vec::new(),
            applied: Arc::default(),
            violations: Arc::default(),
            proposals: 0,
            crashes: 0,
            snapshots: 0,
        };
        for id in 1..=MEMBERS {
            let dir = tempfile::tempdir().unwrap();
            let outbox = SimOutbox {
                sent: Arc::default(),
                members: (1..=MEMBERS).map(|i| (i, format!("sim-{i}:1"))).collect(),
            };
            sim.members.push(Member {
                id,
                dir,
                node: None,
                outbox,
                down_for: 0,
            });
            sim.open(id as usize - 1);
        }
        sim
    }

    /// Opens member `i` from its data directory, as a restarted daemon would.
    fn open(&mut self, i: usize) {
        let m = &mut self.members[i];
        let db = Db::open(&m.dir.path().join("db")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (mut node, _handle) = Node::open(
            &config(m.id, m.dir.path()),
            db,
            Box::new(m.outbox.clone()),
            tx,
            rx,
        )
        .unwrap();
        let (applied, violations, id) = (self.applied.clone(), self.violations.clone(), m.id);
        node.observer = Some(Box::new(move |index, term, data: &[u8]| {
            let mut a = applied.lock().unwrap();
            match a.get(&index) {
                Some((t, d)) if *t != term || d.as_slice() != data => {
                    violations.lock().unwrap().push(format!(
                        "member {id} applied entry {index} of term {term}, another applied term {t}"
                    ));
                }
                Some(_) => {}
                None => {
                    a.insert(index, (term, data.to_vec()));
                }
            }
        }));
        m.node = Some(node);
    }

    /// One step: ticks, maybe a proposal, maybe a crash, message delivery, ready loops.
    /// `faults` enables loss, delay, reordering and crashes.
    fn step(&mut self, faults: bool, proposals: bool) {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            match m.node.as_mut() {
                // Timing skew: a member sometimes misses a tick.
                Some(n) if !faults || self.rng.gen_bool(0.9) => {
                    n.tick();
                }
                Some(_) => {}
                None => {
                    m.down_for = m.down_for.saturating_sub(1);
                    if m.down_for == 0 {
                        self.open(i);
                    }
                }
            }
        }
        if proposals && self.rng.gen_bool(0.5) {
            // Mostly to the leader, as clients do once redirected; sometimes to anyone.
            let leader = self.members.iter().position(|m| {
                m.node
                    .as_ref()
                    .is_some_and(|n| n.raw.raft.state == raft::StateRole::Leader)
            });
            let i = match leader {
                Some(l) if self.rng.gen_bool(0.8) => l,
                _ => self.rng.gen_range(0..self.members.len()),
            };
            self.propose(i);
        }
        if faults && self.rng.gen_bool(0.01) {
            let i = self.rng.gen_range(0..self.members.len());
            if self.members.iter().filter(|m| m.node.is_none()).count() == 0 {
                // Crash: the node and its database are dropped mid-flight; what it synced
                // is what it has.
                self.members[i].node = None;
                self.crashes += 1;
                self.members[i].down_for = self.rng.gen_range(5..60);
            }
        }
        self.deliver(faults);
        for m in &mut self.members {
            if let Some(n) = m.node.as_mut() {
                n.ask_reads();
                n.on_ready().unwrap();
                n.release_reads();
            }
        }
        for m in &self.members {
            let sent = std::mem::take(&mut *m.outbox.sent.lock().unwrap());
            for msg in sent {
                let delay = if faults { self.rng.gen_range(0..4) } else { 0 };
                self.net.push((delay, msg));
            }
        }
    }

    fn propose(&mut self, i: usize) {
        self.proposals += 1;
        let Some(n) = self.members[i].node.as_mut() else {
            return;
        };
        let cmd = Command {
            now: Some(Timespec {
                sec: self.proposals as i64,
                nsec: 0,
            }),
            // The root is created by whichever Bootstrap applies first; later ones fail
            // with EEXIST, which is an outcome like any other.
            op: Some(if self.proposals % 50 == 1 {
                Op::Bootstrap(Bootstrap { uid: 0, gid: 0 })
            } else {
                Op::MakeNode(pb::MakeNodeRequest {
                    parent: 1,
                    name: format!("n{}", self.proposals).into_bytes().into(),
                    kind: pb::FileKind::Directory as i32,
                    perm: 0o755,
                    exclusive: true,
                    ..Default::default()
                })
            }),
            req: None,
        };
        let (reply, _rx) = tokio::sync::oneshot::channel();
        n.on_msg(NodeMsg::Propose { cmd, reply });
    }

    fn deliver(&mut self, faults: bool) {
        if faults {
            // Reordering: shuffle what is in flight.
            for i in (1..self.net.len()).rev() {
                let j = self.rng.gen_range(0..=i);
                self.net.swap(i, j);
            }
        }
        let mut keep = Vec::new();
        for (delay, msg) in std::mem::take(&mut self.net) {
            if delay > 0 {
                keep.push((delay - 1, msg));
                continue;
            }
            if faults && self.rng.gen_bool(0.1) {
                self.report_lost(&msg);
                continue;
            }
            self.deliver_one(msg);
        }
        self.net = keep;
    }

    /// A lost snapshot must be reported to its sender, as the transport does.
    fn report_lost(&mut self, msg: &RaftMessage) {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.finish_snapshot(msg, false);
        }
    }

    fn finish_snapshot(&mut self, msg: &RaftMessage, ok: bool) {
        let from = &mut self.members[msg.from as usize - 1];
        if let Ok(Descriptor::Out(name)) = Descriptor::decode(&msg.get_snapshot().data) {
            let _ = std::fs::remove_dir_all(from.dir.path().join("snap").join(name));
        }
        if let Some(n) = from.node.as_mut() {
            n.on_msg(NodeMsg::SnapshotSent { to: msg.to, ok });
        }
    }

    fn deliver_one(&mut self, mut msg: RaftMessage) {
        let to = msg.to as usize - 1;
        if self.members[to].node.is_none() {
            self.report_lost(&msg);
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // What the transport does: stream the sender's checkpoint into a received file.
            let from_snap = self.members[msg.from as usize - 1].dir.path().join("snap");
            let to_snap = self.members[to].dir.path().join("snap");
            let Ok(Descriptor::Out(name)) = Descriptor::decode(&msg.get_snapshot().data) else {
                panic!("snapshot message without a checkpoint");
            };
            let mut inc = Incoming::create(&to_snap).unwrap();
            let (records, crc) =
                snapshot::read_checkpoint(&from_snap, &name, |c| inc.write(&c).is_ok()).unwrap();
            let meta = msg.get_snapshot().get_metadata();
            let file = inc.finish(records, crc, meta.index, meta.term).unwrap();
            self.finish_snapshot(&msg, true);
            self.snapshots += 1;
            msg.mut_snapshot().data = Descriptor::In(file).encode().into();
        }
        if let Some(n) = self.members[to].node.as_mut() {
            n.on_msg(NodeMsg::Raft(vec![msg], None));
        }
    }

    fn check(&self, seed: u64) {
        let v = self.violations.lock().unwrap();
        assert!(
            v.is_empty(),
            "seed {seed}: {v:?}\nreplay with SHOAL_RAFT_SEED={seed} cargo test -p shoal-mds sim"
        );
    }
}

/// Runs one seed; returns (crashes, snapshots delivered).
fn run(seed: u64) -> (u32, u32) {
    let mut sim = Sim::new(seed);
    for _ in 0..1000 {
        sim.step(true, true);
        sim.check(seed);
    }
    // Heal: everyone up, nothing lost, until the members agree.
    for i in 0..sim.members.len() {
        if sim.members[i].node.is_none() {
            sim.open(i);
        }
    }
    let mut settled = false;
    for _ in 0..600 {
        sim.step(false, false);
        sim.check(seed);
        let nodes: Vec<&Node> = sim.members.iter().filter_map(|m| m.node.as_ref()).collect();
        let leader = nodes
            .iter()
            .find(|n| n.raw.raft.state == raft::StateRole::Leader);
        if let Some(l) = leader {
            let commit = l.raw.raft.raft_log.committed;
            if nodes.iter().all(|n| n.raw.raft.raft_log.applied == commit) && sim.net.is_empty() {
                settled = true;
                break;
            }
        }
    }
    assert!(
        settled,
        "seed {seed}: the healed group never converged\nreplay with SHOAL_RAFT_SEED={seed}"
    );
    let digests: Vec<(u64, u64)> = sim
        .members
        .iter()
        .map(|m| snapshot::state_digest(m.node.as_ref().unwrap().fsm.db()).unwrap())
        .collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "seed {seed}: members hold different states {digests:?}\nreplay with SHOAL_RAFT_SEED={seed}"
    );
    let applied = sim.applied.lock().unwrap();
    assert!(
        applied.len() > 200,
        "seed {seed}: only {} entries applied; the simulation made no progress",
        applied.len()
    );
    (sim.crashes, sim.snapshots)
}

#[test]
fn sim_random_faults_keep_members_in_agreement() {
    let seeds: Vec<u64> = match std::env::var("SHOAL_RAFT_SEED") {
        Ok(s) => vec![s.parse().expect("SHOAL_RAFT_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SHOAL_RAFT_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(8u64);
            (1..=n).collect()
        }
    };
    let (mut crashes, mut snapshots) = (0, 0);
    for seed in &seeds {
        let (c, s) = run(*seed);
        crashes += c;
        snapshots += s;
    }
    eprintln!(
        "{} seeds: {crashes} crashes, {snapshots} snapshots delivered",
        seeds.len()
    );
    // The faults the test claims to inject did happen.
    if seeds.len() > 1 {
        assert!(
            crashes > 0 && snapshots > 0,
            "crashes {crashes}, snapshots {snapshots}"
        );
    }
}
