//! Client I/O first: background recovery yields to client load.
//!
//! Every client op at a primary and every replica op counts as client load while it is in
//! flight and for [`QUIET`] after it ends. Background recovery takes one of `max_active` slots
//! per object. While clients are busy it runs one object at a time across the OSD and then
//! pauses, so that it occupies at most `busy_share` percent of the time; when clients are
//! quiet it runs at full speed. Recovery of an object a client is waiting for is not
//! throttled: it is part of that client's op.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// How long after the last client op the OSD still counts as busy.
pub const QUIET: Duration = Duration::from_millis(250);

/// Client load seen by this OSD and the recovery slots that yield to it.
pub struct Qos {
    start: Instant,
    inflight: AtomicU32,
    /// When the last client op ended, in ms since `start`.
    last_ms: AtomicU64,
    slots: Semaphore,
    busy_slot: Semaphore,
    busy_share: u32,
}

/// A client op in flight; counts as load until dropped.
pub struct ClientOp<'a>(&'a Qos);

impl Drop for ClientOp<'_> {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The right to recover one object now; [`RecoveryTurn::finish`] pauses if clients are busy.
pub struct RecoveryTurn<'a> {
    _slot: SemaphorePermit<'a>,
    busy: Option<SemaphorePermit<'a>>,
    started: Instant,
    share: u32,
}

impl RecoveryTurn<'_> {
    /// Ends the turn; under client load, first waits out the rest of recovery's share.
    pub async fn finish(self) {
        if self.busy.is_some() {
            tokio::time::sleep(pause_after(self.started.elapsed(), self.share)).await;
        }
    }
}

/// How long recovery pauses after working for `worked` so that it takes `share` percent of
/// the time.
pub fn pause_after(worked: Duration, share: u32) -> Duration {
    let share = share.clamp(1, 100);
    worked * (100 - share) / share
}

impl Qos {
    /// `max_active` recovery objects at a time when clients are quiet (at least 1);
    /// `busy_share` percent of the time for recovery while they are busy (1..=100; 100 gives
    /// recovery an equal footing).
    pub fn new(max_active: u32, busy_share: u32) -> Qos {
        Qos {
            start: Instant::now(),
            inflight: AtomicU32::new(0),
            last_ms: AtomicU64::new(0),
            slots: Semaphore::new(max_active.max(1) as usize),
            busy_slot: Semaphore::new(1),
            busy_share: busy_share.clamp(1, 100),
        }
    }

    fn now_ms(&self) -> u64 {
        // Never 0, so an OSD that has seen no client op yet is quiet.
        self.start.elapsed().as_millis() as u64 + QUIET.as_millis() as u64 + 1
    }

    /// Marks a client op in flight until the guard drops.
    pub fn client_op(&self) -> ClientOp<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        ClientOp(self)
    }

    /// Whether clients are using this OSD now or did within [`QUIET`].
    pub fn busy(&self) -> bool {
        self.inflight.load(Ordering::Relaxed) > 0
            || self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed))
                < QUIET.as_millis() as u64
    }

    /// Waits for a turn to recover one object.
    pub async fn recovery_turn(&self) -> Option<RecoveryTurn<'_>> {
        let slot = self.slots.acquire().await.ok()?;
        let busy = if self.busy_share < 100 && self.busy() {
            Some(self.busy_slot.acquire().await.ok()?)
        } else {
            None
        };
        Some(RecoveryTurn {
            _slot: slot,
            busy,
            started: Instant::now(),
            share: self.busy_share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_keeps_recovery_to_its_share() {
        let w = Duration::from_millis(40);
        assert_eq!(pause_after(w, 100), Duration::ZERO);
        assert_eq!(pause_after(w, 20), Duration::from_millis(160));
        assert_eq!(pause_after(w, 50), w);
        // Out-of-range shares are clamped, never divide by zero.
        assert_eq!(pause_after(w, 0), w * 99);
        assert_eq!(pause_after(w, 500), Duration::ZERO);
    }

    #[tokio::test]
    async fn busy_while_a_client_op_runs_and_shortly_after() {
        let q = Qos::new(2, 20);
        assert!(!q.busy(), "no client op yet");
        let op = q.client_op();
        assert!(q.busy());
        drop(op);
        assert!(q.busy(), "still busy within QUIET");
        tokio::time::sleep(QUIET + Duration::from_millis(50)).await;
        assert!(!q.busy());
    }

    #[tokio::test]
    async fn busy_recovery_runs_one_object_at_a_time() {
        let q = Qos::new(4, 20);
        let _op = q.client_op();
        let first = q.recovery_turn().await.expect("a turn");
        let second = tokio::time::timeout(Duration::from_millis(50), q.recovery_turn()).await;
        assert!(second.is_err(), "a second busy turn must wait");
        drop(first);
        let quiet = Qos::new(2, 20);
        let a = quiet.recovery_turn().await.expect("a turn");
        let b = tokio::time::timeout(Duration::from_millis(50), quiet.recovery_turn()).await;
        assert!(b.is_ok(), "two turns at once when clients are quiet");
        drop(a);
    }
}
