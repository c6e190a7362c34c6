//! Leases: which client sessions may cache what (soft state, kept on the leader).
//!
//! A read lease on an inode lets a session cache its attributes, its data pages and, for a
//! directory, its entries; a write lease lets one session keep the size and mtime of its
//! writes locally. Leases last [`Leases::duration`] from the grant; a session that renews
//! (`LeaseUp.renew`, answered with `LeaseDown.renewed`) keeps its read leases for one
//! duration past its last renewal, up to [`HOLD_MAX`] after each grant, so a mount that keeps
//! answering keeps what it cached, and one that stops loses it within a duration. Leases are
//! revoked early when
//! another session changes what they cover: the change is applied, every other holder is sent
//! a [`LeaseDown`] on its `Leases` stream, and the change is answered once each holder acked
//! (after dropping its caches and, for a write lease, sending its size) or its lease ran out.
//!
//! Invariants:
//! - A grant is recorded before the state it covers is read, so a change applied after that
//!   read finds the holder and revokes it.
//! - A revocation keeps the holder on record until it acks: a second change to the same inode
//!   waits for the same holder too, never answering before it dropped its caches.
//! - A read lease is never granted while another session holds a live write lease on the
//!   inode: that lease is revoked first (its size reaches the MDS), and the inode counts as
//!   contended for [`CONTENDED`], during which no write lease is granted (writes go
//!   synchronous while readers and writers share a file).
//! - Only a session with its stream open here gets leases: one that cannot hear revocations
//!   would hold every change to what it reads until its leases ran out.
//! - A new leader answers no change before one lease duration after it took over, since it
//!   cannot know what its predecessor granted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_proto::mds::LeaseDown;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::node::NodeHandle;

/// After a write lease was revoked for a reader, no write lease on that inode for this long.
pub const CONTENDED: Duration = Duration::from_secs(1);

/// A read lease lasts at most this long after its grant, however often it is renewed (what
/// the table holds stays bounded by what sessions looked at lately).
pub const HOLD_MAX: Duration = shoal_proto::limits::LEASE_HOLD_MAX;

/// What one session holds on one inode.
#[derive(Debug, Clone, Copy)]
struct Held {
    read_until: Option<Instant>,
    write_until: Option<Instant>,
    /// When the newest grant was made (a revocation issued later covers it).
    granted: Instant,
}

impl Held {
    /// When it ends, given when its session's renewals run out.
    fn end(&self, renewed: Option<Instant>) -> Option<Instant> {
        let read = self.read_until.map(|r| {
            r.max(renewed.unwrap_or(r))
                .min(self.granted + HOLD_MAX)
                .max(r)
        });
        read.max(self.write_until)
    }

    fn live(&self, now: Instant, renewed: Option<Instant>) -> bool {
        self.end(renewed).is_some_and(|e| e > now)
    }

    fn writes(&self, now: Instant) -> bool {
        self.write_until.is_some_and(|e| e > now)
    }
}

/// A revocation waiting for its ack.
struct Pending {
    acked: watch::Sender<bool>,
    session: u64,
    ino: u64,
    issued: Instant,
}

#[derive(Default)]
struct Inner {
    by_ino: HashMap<u64, HashMap<u64, Held>>,
    /// Each session's open stream: (stream number, sender).
    streams: HashMap<u64, (u64, mpsc::UnboundedSender<LeaseDown>)>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    contended: HashMap<u64, Instant>,
    /// Until when each renewing session's read leases last.
    renewed: HashMap<u64, Instant>,
    /// Per session, revocations that ran out before it acked.
    late: HashMap<u64, u64>,
    /// The term this node was first seen leading, and when.
    leading: Option<(u64, Instant)>,
    last_prune: Option<Instant>,
}

impl Inner {
    fn renewed(&self, session: u64) -> Option<Instant> {
        self.renewed.get(&session).copied()
    }
}

/// Whether a session other than `session` holds a live write lease on `ino`.
fn other_writes(g: &Inner, ino: u64, session: Option<u64>, now: Instant) -> bool {
    g.by_ino
        .get(&ino)
        .is_some_and(|h| h.iter().any(|(s, h)| Some(*s) != session && h.writes(now)))
}

/// `session`'s hold on `ino`, granted anew at `now` (the caller sets what it grants).
fn hold(g: &mut Inner, ino: u64, session: u64, now: Instant) -> &mut Held {
    let h = g
        .by_ino
        .entry(ino)
        .or_default()
        .entry(session)
        .or_insert(Held {
            read_until: None,
            write_until: None,
            granted: now,
        });
    h.granted = now;
    h
}

/// The lease table.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Mutex<Inner>>,
    duration: Duration,
}

impl Leases {
    /// An empty table granting leases of `duration`.
    pub fn new(duration: Duration) -> Leases {
        Leases {
            inner: Arc::default(),
            duration,
        }
    }

    /// How long a lease lasts.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `session` can be granted leases now.
    pub fn may_hold_any(&self, session: Option<u64>) -> bool {
        session.is_some_and(|s| self.may_hold(&self.inner(), s))
    }

    /// Whether `session` can be granted leases: leases are on, and it can hear revocations.
    fn may_hold(&self, g: &Inner, session: u64) -> bool {
        !self.duration.is_zero() && g.streams.contains_key(&session)
    }

    fn ms(&self) -> u32 {
        self.duration.as_millis().min(u32::MAX as u128) as u32
    }

    /// Grants `session` a read lease on `ino`, first revoking another session's write lease
    /// on it (also for a caller that gets no lease: what it reads must include the writer's
    /// writes). Returns the lease in milliseconds (0: none).
    pub async fn grant_read(&self, session: Option<u64>, ino: u64) -> u32 {
        for _ in 0..3 {
            {
                let now = Instant::now();
                let mut g = self.inner();
                if !other_writes(&g, ino, session, now) {
                    let Some(session) = session.filter(|s| self.may_hold(&g, *s)) else {
                        return 0;
                    };
                    hold(&mut g, ino, session, now).read_until = Some(now + self.duration);
                    return self.ms();
                }
                g.contended.insert(ino, now);
            }
            self.revoke(ino, Vec::new(), session, true).await;
        }
        0
    }

    /// `session` is about to read or change what another session's write lease on `ino`
    /// covers (if one holds it): no write lease on it is granted for [`CONTENDED`] (a grant
    /// that raced the revocation would outlive it).
    pub fn contend(&self, ino: u64, session: Option<u64>) {
        let now = Instant::now();
        let mut g = self.inner();
        if other_writes(&g, ino, session, now) {
            g.contended.insert(ino, now);
        }
    }

    /// Whether `session` may be granted the write lease on `ino` as far as the session and
    /// the inode's recent history go (others' leases are checked by [`Leases::grant_write`]).
    pub fn may_write(&self, session: Option<u64>, ino: u64) -> bool {
        let Some(session) = session else { return false };
        let now = Instant::now();
        let g = self.inner();
        self.may_hold(&g, session)
            && g.contended
                .get(&ino)
                .is_none_or(|t| now.duration_since(*t) >= CONTENDED)
    }

    /// Grants `session` the write lease on `ino` if no other session holds a live lease on it
    /// and it was not contended lately. Returns the lease in milliseconds (0: none).
    pub fn grant_write(&self, session: Option<u64>, ino: u64) -> u32 {
        let Some(session) = session else { return 0 };
        if !self.may_write(Some(session), ino) {
            return 0;
        }
        let now = Instant::now();
        let mut g = self.inner();
        let others = g.by_ino.get(&ino).is_some_and(|h| {
            h.iter()
                .any(|(s, h)| *s != session && h.live(now, g.renewed(*s)))
        });
        if others {
            return 0;
        }
        hold(&mut g, ino, session, now).write_until = Some(now + self.duration);
        self.ms()
    }

    /// Holds the write lease on `ino` for `session` from now, before the entry that marks the
    /// file with it is proposed, so no recovery clears that mark meanwhile;
    /// [`Leases::grant_write`] then confirms it or [`Leases::release_write`] drops it.
    pub fn reserve_write(&self, session: u64, ino: u64) {
        let now = Instant::now();
        hold(&mut self.inner(), ino, session, now).write_until = Some(now + self.duration);
    }

    /// `session` gave its write lease on `ino` back (its writes are recorded).
    pub fn release_write(&self, session: Option<u64>, ino: u64) {
        let Some(session) = session else { return };
        if let Some(h) = self
            .inner()
            .by_ino
            .get_mut(&ino)
            .and_then(|h| h.get_mut(&session))
        {
            h.write_until = None;
        }
    }

    /// Whether `session` holds a live write lease on `ino`.
    pub fn writing(&self, ino: u64, session: u64) -> bool {
        let now = Instant::now();
        self.inner()
            .by_ino
            .get(&ino)
            .and_then(|h| h.get(&session))
            .is_some_and(|h| h.writes(now))
    }

    /// The inodes a session other than `except` holds a live write lease on.
    pub fn written(&self, except: Option<u64>) -> Vec<u64> {
        let now = Instant::now();
        self.inner()
            .by_ino
            .iter()
            .filter(|(_, h)| h.iter().any(|(s, h)| Some(*s) != except && h.writes(now)))
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Revokes the leases other sessions than `except` hold on `ino` (only write leases if
    /// `only_write`), telling them to drop their cached `names` in it too; returns once each
    /// acked or its lease ran out.
    pub async fn revoke(&self, ino: u64, names: Vec<Bytes>, except: Option<u64>, only_write: bool) {
        let waits: Vec<(u64, u64, watch::Receiver<bool>, Instant)> = {
            let now = Instant::now();
            let mut g = self.inner();
            let Some(holders) = g.by_ino.get(&ino) else {
                return;
            };
            // Renewals after this do not extend what is revoked: the holder hears of the
            // revocation before it hears of them (one stream, in order).
            let targets: Vec<(u64, Instant)> = holders
                .iter()
                .filter(|(s, h)| Some(**s) != except && h.live(now, g.renewed(**s)))
                .filter(|(_, h)| !only_write || h.writes(now))
                .filter_map(|(s, h)| Some((*s, h.end(g.renewed(*s))?)))
                .collect();
            let mut waits = Vec::with_capacity(targets.len());
            for (session, until) in targets {
                g.next_id += 1;
                let id = g.next_id;
                let (tx, rx) = watch::channel(false);
                g.pending.insert(
                    id,
                    Pending {
                        acked: tx,
                        session,
                        ino,
                        issued: now,
                    },
                );
                let down = LeaseDown {
                    id,
                    ino,
                    names: names.clone(),
                    renewed: 0,
                };
                if let Some((_, tx)) = g.streams.get(&session) {
                    let _ = tx.send(down);
                }
                waits.push((id, session, rx, until));
            }
            waits
        };
        for (id, session, mut rx, until) in waits {
            let acked = tokio::time::timeout_at(until.into(), rx.wait_for(|a| *a)).await;
            if acked.is_err() {
                debug!(ino, id, session, "lease ran out before the holder acked");
                *self.inner().late.entry(session).or_default() += 1;
            }
            // Acked or run out: either way the hold ends (renewals do not revive it).
            self.ack(id);
        }
    }

    /// A holder acked revocation `id`: its hold ends unless it was granted anew since.
    pub fn ack(&self, id: u64) {
        let mut g = self.inner();
        let Some(p) = g.pending.remove(&id) else {
            return;
        };
        let _ = p.acked.send(true);
        if let Some(h) = g.by_ino.get_mut(&p.ino) {
            if h.get(&p.session)
                .is_some_and(|held| held.granted <= p.issued)
            {
                h.remove(&p.session);
            }
            if h.is_empty() {
                g.by_ino.remove(&p.ino);
            }
        }
    }

    /// `session` renewed its read leases (renewal `seq`): they last a duration from now.
    pub fn renew(&self, session: u64, seq: u64) {
        let mut g = self.inner();
        let until = Instant::now() + self.duration;
        g.renewed.insert(session, until);
        if let Some((_, tx)) = g.streams.get(&session) {
            let _ = tx.send(LeaseDown {
                renewed: seq,
                ..Default::default()
            });
        }
    }

    /// A session opened its stream: revocations go there from now on.
    pub fn attach(&self, session: u64) -> (u64, mpsc::UnboundedReceiver<LeaseDown>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = self.inner();
        g.next_id += 1;
        let n = g.next_id;
        g.streams.insert(session, (n, tx));
        (n, rx)
    }

    /// A session's stream `n` ended.
    pub fn detach(&self, session: u64, n: u64) {
        let mut g = self.inner();
        if g.streams.get(&session).is_some_and(|(m, _)| *m == n) {
            g.streams.remove(&session);
        }
    }

    /// A session ended: what it held goes.
    pub fn forget_session(&self, session: u64) {
        let mut g = self.inner();
        g.streams.remove(&session);
        g.renewed.remove(&session);
        g.late.remove(&session);
        g.by_ino.retain(|_, h| {
            h.remove(&session);
            !h.is_empty()
        });
    }

    /// Waits, on a leader that took over less than a lease ago, until its predecessor's
    /// grants have run out.
    pub async fn settle(&self, node: &NodeHandle) {
        let since = self.note_leading(node);
        if let Some(since) = since {
            tokio::time::sleep_until((since + self.duration).into()).await;
        }
    }

    /// Records when this node was first seen leading its current term; returns it.
    pub fn note_leading(&self, node: &NodeHandle) -> Option<Instant> {
        let st = node.status();
        if st.leader_id != st.id {
            return None;
        }
        let mut g = self.inner();
        match g.leading {
            Some((term, since)) if term == st.term => Some(since),
            _ => {
                let now = Instant::now();
                g.leading = Some((st.term, now));
                Some(now)
            }
        }
    }

    /// Drops expired holds and contention marks (called now and then).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut g = self.inner();
        if g.last_prune
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        g.last_prune = Some(now);
        g.renewed.retain(|_, until| *until > now);
        let renewed = std::mem::take(&mut g.renewed);
        g.by_ino.retain(|_, h| {
            h.retain(|s, held| held.live(now, renewed.get(s).copied()));
            !h.is_empty()
        });
        g.renewed = renewed;
        g.contended
            .retain(|_, t| now.duration_since(*t) < CONTENDED);
    }

    /// Revocations each session did not ack in time, for `shoal status`.
    pub fn late_acks(&self) -> HashMap<u64, u64> {
        self.inner().late.clone()
    }

    /// Live holds per session, for `shoal status`.
    pub fn per_session(&self) -> HashMap<u64, u32> {
        let now = Instant::now();
        let g = self.inner();
        let mut out: HashMap<u64, u32> = HashMap::new();
        for h in g.by_ino.values() {
            for (s, held) in h {
                if held.live(now, g.renewed(*s)) {
                    *out.entry(*s).or_default() += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revocation_waits_for_the_ack_and_a_writer_yields_to_a_reader() {
        let l = Leases::new(Duration::from_secs(5));
        assert_eq!(l.grant_read(Some(1), 10).await, 0, "no stream, no lease");
        let (_, mut rx) = l.attach(1);
        let (_, mut rx2) = l.attach(2);
        assert_eq!(l.grant_read(Some(1), 10).await, 5000);
        assert_eq!(l.grant_read(None, 10).await, 0);
        // Session 2 changes inode 10: session 1 is told, and the change waits for its ack.
        let l2 = l.clone();
        let revoke = tokio::spawn(async move {
            l2.revoke(10, vec![Bytes::from_static(b"n")], Some(2), false)
                .await
        });
        let down = rx.recv().await.expect("a revocation");
        assert_eq!((down.ino, down.names.len()), (10, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!revoke.is_finished(), "answered before the holder acked");
        l.ack(down.id);
        revoke.await.expect("the revoking task");
        assert!(l.per_session().is_empty(), "the acked hold is gone");

        // A writer's lease is revoked for a reader, and the inode then refuses write leases.
        assert_eq!(l.grant_write(Some(1), 11), 5000);
        assert_eq!(l.grant_write(Some(2), 11), 0, "exclusive");
        let l3 = l.clone();
        let reader = tokio::spawn(async move { l3.grant_read(Some(2), 11).await });
        let down = rx.recv().await.expect("a revocation");
        assert_eq!(down.ino, 11);
        l.ack(down.id);
        assert_eq!(reader.await.expect("the reading task"), 5000);
        assert_eq!(l.grant_write(Some(1), 11), 0, "contended");

        // A reader that can hold no lease still makes the writer send its size first.
        assert_eq!(l.grant_write(Some(2), 12), 5000);
        assert!(l.writing(12, 2));
        let l4 = l.clone();
        let anonymous = tokio::spawn(async move { l4.grant_read(None, 12).await });
        let down = rx2.recv().await.expect("a revocation for the writer");
        assert_eq!(down.ino, 12);
        l.ack(down.id);
        assert_eq!(anonymous.await.expect("the reading task"), 0, "no lease");
        assert!(!l.writing(12, 2));
        // A writer that gives its lease back holds it no more.
        assert_eq!(l.grant_write(Some(2), 13), 5000);
        l.release_write(Some(2), 13);
        assert!(!l.writing(13, 2));
    }

    #[tokio::test]
    async fn a_silent_holder_holds_a_change_only_until_its_lease_ends() {
        let l = Leases::new(Duration::from_millis(300));
        let (_, _rx1) = l.attach(1);
        let (_, _rx3) = l.attach(3);
        assert_eq!(l.grant_read(Some(1), 10).await, 300);
        let t = Instant::now();
        // No ack: the revocation ends when the lease does.
        l.revoke(10, Vec::new(), None, false).await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert_eq!(l.late_acks().get(&1), Some(&1), "counted as late");
        // The holder itself is not revoked by its own change.
        assert_eq!(l.grant_read(Some(3), 12).await, 300);
        let t = Instant::now();
        l.revoke(12, Vec::new(), Some(3), false).await;
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn renewals_keep_read_leases_and_never_stretch_a_revocation() {
        let l = Leases::new(Duration::from_millis(300));
        let (_, mut rx) = l.attach(1);
        let (_, _rx2) = l.attach(2);
        assert_eq!(l.grant_read(Some(1), 10).await, 300);
        // Renewed every 100 ms, the lease outlives its duration several times over.
        for seq in 1..=8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            l.renew(1, seq);
            let reply = rx.recv().await.expect("a renewal reply");
            assert_eq!((reply.id, reply.renewed), (0, seq));
        }
        assert_eq!(l.per_session().get(&1), Some(&1), "renewed, still held");
        assert_eq!(
            l.grant_write(Some(2), 10),
            0,
            "a live reader blocks a writer"
        );

        // A silent holder keeps renewing but never acks: the change waits one duration at
        // most, renewals after the revocation notwithstanding.
        let l2 = l.clone();
        let t = Instant::now();
        let revoke = tokio::spawn(async move { l2.revoke(10, Vec::new(), Some(2), false).await });
        let mut seq = 100;
        while !revoke.is_finished() {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "renewals stretched a revocation"
            );
            seq += 1;
            l.renew(1, seq);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert_eq!(
            l.per_session().get(&1),
            None,
            "a revoked hold is not renewed"
        );

        // Without renewals a lease ends with its duration.
        assert_eq!(l.grant_read(Some(2), 11).await, 300);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(l.per_session().get(&2), None, "not renewed, gone");
    }
}
