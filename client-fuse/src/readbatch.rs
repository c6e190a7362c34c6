//! Small reads to one OSD that arrive while earlier calls to it are still out go together in
//! one `Osd.ReadBatch` call. Under many parallel small reads (random 4 KiB reads from several
//! threads, asynchronous direct I/O) the mount and the OSD then pay one gRPC call — its
//! headers, its stream, its task, its socket writes — for many reads. A read that finds fewer
//! than [`IN_FLIGHT`] calls out to its OSD goes alone at once, so a lone reader waits for
//! nothing.
//!
//! A batch changes nothing a read sees: each read in it is checked and served by the OSD as if
//! it came alone (map epoch, session, recovery, checksums). A read the batch could not answer
//! (the batch call failed, or the OSD listed the read as failed) is asked again alone, so its
//! own error — a newer map, an eviction, EIO — reaches the caller's retry logic unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::osd::{ReadBatchRequest, ReadReply, ReadRequest};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Response, Status};

/// Reads up to this long may wait to go with others.
pub const SMALL: u32 = 64 << 10;
/// Calls out at once to one OSD before small reads to it queue.
const IN_FLIGHT: usize = 2;
/// Reads per batch call at most (within `shoal_proto::MAX_READ_BATCH` and its byte limit).
const MAX_BATCH: usize = 64;

/// Where a queued read's answer goes: its reply, or None to ask again alone.
type Answer = oneshot::Sender<Option<ReadReply>>;

/// One OSD's calls out and the small reads waiting for one to end.
#[derive(Default)]
struct Queue {
    out: usize,
    waiting: Vec<(ReadRequest, Answer)>,
}

type Queues = Arc<Mutex<HashMap<u32, Queue>>>;

fn lock(q: &Queues) -> MutexGuard<'_, HashMap<u32, Queue>> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mount's small-read queues, one per OSD.
#[derive(Default)]
pub struct ReadBatcher {
    queues: Queues,
}

impl ReadBatcher {
    /// Reads `req` from OSD `osd` (through `client`), alone or with others queued for it.
    pub async fn read(
        &self,
        osd: u32,
        mut client: OsdClient<Channel>,
        req: ReadRequest,
    ) -> Result<Response<ReadReply>, Status> {
        if req.len > SMALL {
            return client.read(req).await;
        }
        let waiting = {
            let mut queues = lock(&self.queues);
            let q = queues.entry(osd).or_default();
            if q.out < IN_FLIGHT {
                q.out += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                q.waiting.push((req.clone(), tx));
                Some(rx)
            }
        };
        let Some(answer) = waiting else {
            // Released when the call ends or the caller gives up: either way the reads
            // queued meanwhile go next.
            let _slot = Slot {
                queues: self.queues.clone(),
                osd,
                client: client.clone(),
            };
            return client.read(req).await;
        };
        match answer.await {
            Ok(Some(reply)) => Ok(Response::new(reply)),
            _ => client.read(req).await,
        }
    }

    /// Reads queued now, over all OSDs (for tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        lock(&self.queues).values().map(|q| q.waiting.len()).sum()
    }
}

/// One call out to an OSD. When it ends, the reads that queued meanwhile go in the next
/// call, which takes its place; with none queued the place is free.
struct Slot {
    queues: Queues,
    osd: u32,
    client: OsdClient<Channel>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let batch: Vec<(ReadRequest, Answer)> = {
            let mut queues = lock(&self.queues);
            let Some(q) = queues.get_mut(&self.osd) else {
                return;
            };
            if q.waiting.is_empty() {
                q.out = q.out.saturating_sub(1);
                return;
            }
            let n = q.waiting.len().min(MAX_BATCH);
            q.waiting.drain(..n).collect()
        };
        let next = Slot {
            queues: self.queues.clone(),
            osd: self.osd,
            client: self.client.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(send(next, batch));
            }
            // No runtime to send from (it is shutting down): the waiters ask alone, and
            // `next` frees the place as it drops.
            Err(_) => drop(batch),
        }
    }
}

/// Sends `batch` as one call in `slot`'s place and hands each read its answer.
async fn send(slot: Slot, batch: Vec<(ReadRequest, Answer)>) {
    let mut client = slot.client.clone();
    let (reads, answers): (Vec<ReadRequest>, Vec<Answer>) = batch.into_iter().unzip();
    let n = reads.len();
    let replies = match client.read_batch(ReadBatchRequest { reads }).await {
        Ok(r) => {
            let r = r.into_inner();
            (r.replies.len() == n).then_some(r)
        }
        Err(_) => None,
    };
    drop(slot);
    match replies {
        Some(r) => {
            let mut failed = vec![false; n];
            for i in r.failed {
                if let Some(f) = failed.get_mut(i as usize) {
                    *f = true;
                }
            }
            for ((answer, reply), failed) in answers.into_iter().zip(r.replies).zip(failed) {
                let _ = answer.send((!failed).then_some(reply));
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

    fn req(len: u32) -> ReadRequest {
        ReadRequest {
            object: "0000000000000002.00000000.obj".into(),
            offset: 0,
            len,
            epoch: 1,
            session: 1,
        }
    }

    /// A client of an address nothing listens at: every call fails at once.
    fn dead_client() -> OsdClient<Channel> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        OsdClient::new(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy(),
        )
    }

    #[tokio::test]
    async fn reads_queue_only_behind_calls_out_and_all_get_an_answer() {
        let b = ReadBatcher::default();
        let c = dead_client();
        // Two calls out take both places; the rest queue behind them. Every call fails
        // (nothing listens), and each read still gets its own answer: the batch's failure
        // sends each one alone, whose own error comes back.
        let reads = (0..10).map(|_| b.read(7, c.clone(), req(4096)));
        let results = futures::future::join_all(reads).await;
        assert_eq!(results.len(), 10);
        assert!(results.iter().all(|r| r.is_err()));
        assert_eq!(b.queued(), 0, "no read left queued");
        let out = lock(&b.queues).get(&7).map(|q| q.out);
        assert_eq!(out, Some(0), "every place freed");
    }

    #[tokio::test]
    async fn a_large_read_never_queues() {
        let b = ReadBatcher::default();
        let r = b.read(3, dead_client(), req(SMALL + 1)).await;
        assert!(r.is_err());
        assert!(
            lock(&b.queues).get(&3).is_none(),
            "a large read takes no place"
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_frees_its_place() {
        let b = ReadBatcher::default();
        let c = dead_client();
        for _ in 0..5 {
            // Dropped before it is polled to the end.
            let f = b.read(1, c.clone(), req(4096));
            drop(tokio::time::timeout(std::time::Duration::from_nanos(1), f).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let out = lock(&b.queues).get(&1).map(|q| q.out).unwrap_or(0);
        assert_eq!(out, 0, "places left taken");
    }
}
