//! Small calls to one peer that arrive while earlier calls to it are still out go together in
//! one batch call. Under many parallel small operations (random 4 KiB reads from several
//! threads, a tar's small files replicated to the same OSDs) the caller and the peer then pay
//! one gRPC call — its headers, its stream, its task, its socket writes — for many. A call
//! that finds fewer than `in_flight` calls out to its peer goes alone at once, so a lone
//! caller waits for nothing.
//!
//! A batch changes nothing an operation does: the peer serves each one as if it came alone.
//! One the batch could not answer (the batch call failed, or the peer reported that operation
//! as failed) is sent again alone, so its own error — a newer map, an eviction, EIO — reaches
//! the caller's handling unchanged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tonic::Status;

/// How one kind of call goes to a peer, alone or in a batch.
pub trait Batch: Clone + Send + Sync + 'static {
    type Req: Clone + Send + 'static;
    type Rep: Send + 'static;
    /// What `req` weighs towards a batch's limit (its bytes); None: it never waits.
    fn weight(req: &Self::Req) -> Option<u64>;
    /// Sends `req` alone.
    fn one(&self, req: Self::Req) -> impl Future<Output = Result<Self::Rep, Status>> + Send;
    /// Sends `reqs` in one call: one answer per request, in order, None for each the peer
    /// could not serve.
    fn many(
        &self,
        reqs: Vec<Self::Req>,
    ) -> impl Future<Output = Result<Vec<Option<Self::Rep>>, Status>> + Send;
}

/// A batch reply's answers: each reply in order, None at the positions `failed` lists (a
/// position past the replies is ignored).
pub fn answers<T>(replies: Vec<T>, failed: Vec<u32>) -> Vec<Option<T>> {
    let mut out: Vec<Option<T>> = replies.into_iter().map(Some).collect();
    for i in failed {
        if let Some(slot) = out.get_mut(i as usize) {
            *slot = None;
        }
    }
    out
}

/// How many calls go out to a peer at once before small ones queue, and how large a batch
/// may grow.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub in_flight: usize,
    pub max_count: usize,
    pub max_weight: u64,
}

/// Where a queued request's answer goes: its reply, or None to send it again alone.
type Answer<B> = oneshot::Sender<Option<<B as Batch>::Rep>>;

/// One peer's calls out and the requests waiting for one to end.
struct Queue<B: Batch> {
    out: usize,
    waiting: Vec<(B::Req, u64, Answer<B>)>,
}

impl<B: Batch> Default for Queue<B> {
    fn default() -> Self {
        Queue {
            out: 0,
            waiting: Vec::new(),
        }
    }
}

type Queues<B> = Arc<Mutex<HashMap<u32, Queue<B>>>>;

fn lock<B: Batch>(q: &Queues<B>) -> MutexGuard<'_, HashMap<u32, Queue<B>>> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues of one kind of call, one per peer.
pub struct Batcher<B: Batch> {
    queues: Queues<B>,
    limits: Limits,
}

impl<B: Batch> Batcher<B> {
    pub fn new(limits: Limits) -> Batcher<B> {
        Batcher {
            queues: Arc::new(Mutex::new(HashMap::new())),
            limits,
        }
    }

    /// Sends `req` to peer `peer` through `via`, alone or with others queued for it.
    pub async fn call(&self, peer: u32, via: B, req: B::Req) -> Result<B::Rep, Status> {
        let Some(weight) = B::weight(&req) else {
            return via.one(req).await;
        };
        let waiting = {
            let mut queues = lock(&self.queues);
            let q = queues.entry(peer).or_default();
            if q.out < self.limits.in_flight {
                q.out += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                q.waiting.push((req.clone(), weight, tx));
                Some(rx)
            }
        };
        let Some(answer) = waiting else {
            // Released when the call ends or the caller gives up: either way the requests
            // queued meanwhile go next.
            let _slot = Slot {
                queues: self.queues.clone(),
                limits: self.limits,
                peer,
                via: via.clone(),
            };
            return via.one(req).await;
        };
        match answer.await {
            Ok(Some(reply)) => Ok(reply),
            _ => via.one(req).await,
        }
    }

    /// Requests queued now, over all peers, and calls out.
    #[cfg(test)]
    fn load(&self) -> (usize, usize) {
        let q = lock(&self.queues);
        (
            q.values().map(|q| q.waiting.len()).sum(),
            q.values().map(|q| q.out).sum(),
        )
    }
}

/// One call out to a peer. When it ends, the requests that queued meanwhile go in the next
/// call, which takes its place; with none queued the place is free.
struct Slot<B: Batch> {
    queues: Queues<B>,
    limits: Limits,
    peer: u32,
    via: B,
}

impl<B: Batch> Drop for Slot<B> {
    fn drop(&mut self) {
        let batch: Vec<(B::Req, u64, Answer<B>)> = {
            let mut queues = lock(&self.queues);
            let Some(q) = queues.get_mut(&self.peer) else {
                return;
            };
            // A request whose caller gave up is not sent, as a call it dropped would not be.
            q.waiting.retain(|(_, _, answer)| !answer.is_closed());
            if q.waiting.is_empty() {
                q.out = q.out.saturating_sub(1);
                return;
            }
            let (mut n, mut weight) = (0, 0);
            while n < q.waiting.len()
                && n < self.limits.max_count
                && (n == 0 || weight + q.waiting[n].1 <= self.limits.max_weight)
            {
                weight += q.waiting[n].1;
                n += 1;
            }
            q.waiting.drain(..n).collect()
        };
        let next = Slot {
            queues: self.queues.clone(),
            limits: self.limits,
            peer: self.peer,
            via: self.via.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(send(next, batch));
            }
            // No runtime to send from (it is shutting down): the waiters send alone, and
            // `next` frees the place as it drops.
            Err(_) => drop(batch),
        }
    }
}

/// Sends `batch` as one call in `slot`'s place and hands each request its answer.
async fn send<B: Batch>(slot: Slot<B>, batch: Vec<(B::Req, u64, Answer<B>)>) {
    let (reqs, answers): (Vec<B::Req>, Vec<Answer<B>>) =
        batch.into_iter().map(|(r, _, a)| (r, a)).unzip();
    let n = reqs.len();
    let replies = match slot.via.many(reqs).await {
        Ok(r) if r.len() == n => Some(r),
        _ => None,
    };
    drop(slot);
    match replies {
        Some(replies) => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = answer.send(reply);
            }
        }
        None => {
            for answer in answers {
                let _ = answer.send(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::join_all;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A peer that doubles numbers after a short wait, fails odd ones when asked to, and
    /// counts its calls.
    #[derive(Clone, Default)]
    struct Doubler {
        ones: Arc<AtomicUsize>,
        batches: Arc<Mutex<Vec<usize>>>,
        fail_odd: bool,
        down: bool,
    }

    impl Batch for Doubler {
        type Req = u64;
        type Rep = u64;
        fn weight(req: &u64) -> Option<u64> {
            (*req < 1000).then_some(*req)
        }
        async fn one(&self, req: u64) -> Result<u64, Status> {
            self.ones.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.down {
                return Err(Status::unavailable("down"));
            }
            if self.fail_odd && req % 2 == 1 {
                return Err(Status::data_loss(format!("{req} is odd")));
            }
            Ok(req * 2)
        }
        async fn many(&self, reqs: Vec<u64>) -> Result<Vec<Option<u64>>, Status> {
            self.batches.lock().unwrap().push(reqs.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.down {
                return Err(Status::unavailable("down"));
            }
            Ok(reqs
                .iter()
                .map(|r| (!(self.fail_odd && r % 2 == 1)).then_some(r * 2))
                .collect())
        }
    }

    fn limits() -> Limits {
        Limits {
            in_flight: 2,
            max_count: 8,
            max_weight: 100,
        }
    }

    #[tokio::test]
    async fn calls_past_the_ones_out_go_together_and_each_gets_its_own_answer() {
        let b = Batcher::new(limits());
        let peer = Doubler::default();
        let calls = (0..20u64).map(|i| b.call(1, peer.clone(), i));
        let got = join_all(calls).await;
        for (i, r) in got.into_iter().enumerate() {
            assert_eq!(r.unwrap(), i as u64 * 2);
        }
        // Two went alone; the other 18 in batches of at most 8.
        assert_eq!(peer.ones.load(Ordering::SeqCst), 2);
        let batches = peer.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 18, "{batches:?}");
        assert!(batches.iter().all(|&n| n <= 8), "{batches:?}");
        assert_eq!(b.load(), (0, 0), "nothing queued or out once all answered");
    }

    #[tokio::test]
    async fn a_batch_stays_within_its_weight() {
        let b = Batcher::new(limits());
        let peer = Doubler::default();
        // 40 + 40 fit in 100, a third 40 does not.
        let calls = (0..8).map(|_| b.call(1, peer.clone(), 40));
        assert!(join_all(calls)
            .await
            .iter()
            .all(|r| r.as_ref().ok() == Some(&80)));
        let batches = peer.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|&n| n <= 2), "{batches:?}");
    }

    #[tokio::test]
    async fn what_a_batch_could_not_answer_is_sent_alone_and_its_own_error_returns() {
        let b = Batcher::new(limits());
        let peer = Doubler {
            fail_odd: true,
            ..Doubler::default()
        };
        let got = join_all((0..12u64).map(|i| b.call(1, peer.clone(), i))).await;
        for (i, r) in got.into_iter().enumerate() {
            match r {
                Ok(v) => assert!(i % 2 == 0 && v == i as u64 * 2),
                Err(st) => {
                    assert_eq!(i % 2, 1);
                    assert_eq!(st.message(), format!("{i} is odd"));
                }
            }
        }
        // A whole batch call failing: every one of its requests goes alone.
        let down = Doubler {
            down: true,
            ..Doubler::default()
        };
        let got = join_all((0..6u64).map(|i| b.call(2, down.clone(), i))).await;
        assert!(got
            .iter()
            .all(|r| r.as_ref().unwrap_err().message() == "down"));
        assert_eq!(
            down.ones.load(Ordering::SeqCst),
            6,
            "2 first, then 4 again alone"
        );
    }

    #[tokio::test]
    async fn a_heavy_call_never_queues_and_a_caller_that_gives_up_frees_its_place() {
        let b = Batcher::new(limits());
        let peer = Doubler::default();
        assert_eq!(b.call(1, peer.clone(), 5000).await.unwrap(), 10_000);
        assert_eq!(b.load(), (0, 0));
        for i in 0..5 {
            let f = b.call(1, peer.clone(), i);
            assert!(tokio::time::timeout(Duration::from_millis(1), f)
                .await
                .is_err());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.load(), (0, 0), "places left taken");
    }

    #[tokio::test]
    async fn a_queued_request_whose_caller_gave_up_is_not_sent() {
        let b = Batcher::new(limits());
        let peer = Doubler::default();
        let (first, second) = (b.call(1, peer.clone(), 1), b.call(1, peer.clone(), 2));
        let (mut first, mut second) = (Box::pin(first), Box::pin(second));
        // Both places taken, then one request queued and given up on.
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        let gave_up = b.call(1, peer.clone(), 3);
        assert!(tokio::time::timeout(Duration::from_millis(1), gave_up)
            .await
            .is_err());
        assert_eq!(b.load(), (1, 2));
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (2, 4));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            peer.batches.lock().unwrap().is_empty(),
            "nothing sent for it"
        );
        assert_eq!(b.load(), (0, 0));
    }
}
