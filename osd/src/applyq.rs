//! Small changes to the local store go through one queue: a task on the blocking pool takes
//! every change queued, applies them in order, and only then waits for the journal group
//! their records went out in and answers each; while it waits, the next task applies what
//! came meanwhile. Many small changes (a tar's files, a batch of replica ops) thus cost one
//! hand-off to the blocking pool and one journal wait per group instead of one per change.
//!
//! Large writes (synced in place) take the blocking pool directly, so their fsync never
//! holds up the queue.
//!
//! Invariants:
//! - At most one task applies at a time, and it applies changes in the order they were
//!   queued; callers order changes to one object (the primary's object lock, a replica's
//!   one op at a time per object), so the queue keeps that order.
//! - A change is answered only after [`ObjectStore::settled`] returned for it: it is durable.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::daemon::{apply_pending, Mutation};
use crate::store::{ObjectStore, StoreError, DIRECT_MIN};

struct Job {
    object: String,
    mutation: Mutation,
    version: u64,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    /// A task is taking or applying jobs.
    applying: bool,
}

/// The queue of one store.
pub struct ApplyQueue {
    store: Arc<ObjectStore>,
    state: Mutex<State>,
}

/// Whether a mutation is small enough to be journaled, and so to take the queue.
pub fn queued(m: &Mutation) -> bool {
    match m {
        Mutation::Write { extents } => {
            extents.iter().map(|(_, d)| d.len()).sum::<usize>() < DIRECT_MIN
        }
        Mutation::Zero { len, .. } => *len < DIRECT_MIN as u64,
        Mutation::Truncate { .. } | Mutation::Delete => true,
    }
}

impl ApplyQueue {
    /// A queue in front of `store`.
    pub fn new(store: Arc<ObjectStore>) -> Arc<ApplyQueue> {
        Arc::new(ApplyQueue {
            store,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `mutation` to `object` at `version` once the changes queued before it are
    /// applied; returns the object's size once the change is durable. Called from the
    /// runtime.
    pub async fn apply(
        self: &Arc<Self>,
        object: String,
        mutation: Mutation,
        version: u64,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut st = self.lock();
            st.jobs.push(Job {
                object: object.clone(),
                mutation,
                version,
                reply,
            });
            !std::mem::replace(&mut st.applying, true)
        };
        if start {
            let (q, handle) = (self.clone(), Handle::current());
            handle.clone().spawn_blocking(move || q.drain(handle));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Io {
                object,
                source: std::io::Error::other("the store's apply task ended"),
            })
        })
    }

    /// Applies every job queued, hands the queue to a new task if more came meanwhile, then
    /// waits for the jobs' journal records and answers them.
    fn drain(self: Arc<Self>, handle: Handle) {
        let jobs = std::mem::take(&mut self.lock().jobs);
        let applied: Vec<_> = jobs
            .into_iter()
            .map(|j| {
                let r = apply_pending(&self.store, &j.object, &j.mutation, j.version);
                (j, r)
            })
            .collect();
        let more = {
            let mut st = self.lock();
            st.applying = !st.jobs.is_empty();
            st.applying
        };
        if more {
            let (q, h) = (self.clone(), handle.clone());
            handle.spawn_blocking(move || q.drain(h));
        }
        for (job, r) in applied {
            let r = r.and_then(|(size, pending)| {
                self.store.settled(&job.object, pending).map(|()| size)
            });
            let _ = job.reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shoal_proto::layout::object_name;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_changes_apply_in_order_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ObjectStore::open(dir.path()).unwrap());
        let q = ApplyQueue::new(store.clone());
        // Many objects at once, and a chain of changes to one object in order.
        let writes = (0..200u64).map(|i| {
            let q = q.clone();
            async move {
                let data = Bytes::from(vec![i as u8 + 1; 1000 + i as usize]);
                let m = Mutation::Write {
                    extents: vec![(0, data)],
                };
                q.apply(object_name(i + 1, 0), m, 7).await
            }
        });
        let sizes = futures::future::join_all(writes).await;
        for (i, s) in sizes.into_iter().enumerate() {
            assert_eq!(s.unwrap(), 1000 + i as u64);
        }
        let obj = object_name(1000, 0);
        let one = |m, v| q.apply(obj.clone(), m, v);
        let w = |at: u64, n: usize, b: u8| Mutation::Write {
            extents: vec![(at, Bytes::from(vec![b; n]))],
        };
        assert_eq!(one(w(0, 5000, 1), 1).await.unwrap(), 5000);
        assert_eq!(one(w(4000, 3000, 2), 2).await.unwrap(), 7000);
        assert_eq!(
            one(Mutation::Truncate { size: 4500 }, 3).await.unwrap(),
            4500
        );
        let zero = Mutation::Zero {
            offset: 100,
            len: 100,
        };
        assert_eq!(one(zero, 4).await.unwrap(), 4500);
        let got = store.read(&obj, 0, 10_000).unwrap().unwrap();
        assert_eq!(got.len(), 4500);
        assert!(got[..100].iter().all(|&b| b == 1));
        assert!(got[100..200].iter().all(|&b| b == 0));
        assert!(got[200..4000].iter().all(|&b| b == 1));
        assert!(got[4000..].iter().all(|&b| b == 2));
        assert_eq!(store.meta(&obj).unwrap().version, 4);
        assert_eq!(one(Mutation::Delete, 5).await.unwrap(), 0);
        assert!(store.meta(&obj).unwrap().deleted);
        // A bad name fails its own change only.
        let bad = q.apply("not-an-object".into(), w(0, 10, 1), 1).await;
        assert!(matches!(bad, Err(StoreError::BadName(_))));
        for i in 0..200u64 {
            let m = store.meta(&object_name(i + 1, 0)).unwrap();
            assert_eq!((m.size, m.version), (1000 + i, 7));
        }
    }

    #[test]
    fn only_changes_the_journal_takes_are_queued() {
        let w = |n| Mutation::Write {
            extents: vec![
                (0, Bytes::from(vec![0u8; n])),
                (n as u64, Bytes::from(vec![0u8; n])),
            ],
        };
        assert!(queued(&w(DIRECT_MIN / 2 - 1)));
        assert!(!queued(&w(DIRECT_MIN / 2)));
        assert!(queued(&Mutation::Delete));
        assert!(queued(&Mutation::Truncate { size: 1 << 40 }));
        assert!(!queued(&Mutation::Zero {
            offset: 0,
            len: DIRECT_MIN as u64
        }));
    }
}
