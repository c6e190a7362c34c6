//! The `Osd` gRPC service: client requests go to [`crate::daemon::Osd`]'s primary path,
//! replication, peering and scrub requests from other OSDs to their handlers. Disk work runs on
//! the blocking pool; a request's `Bytes` reaches the store without a copy.

use std::collections::HashSet;
use std::sync::Arc;

use shoal_proto::error::errno_status;
use shoal_proto::limits::libc_consts::{EFBIG, EINVAL, EIO};
use shoal_proto::osd::osd_server::Osd;
use shoal_proto::osd::*;
use tonic::{Request, Response, Status};
use tracing::error;

use crate::daemon::{is_corrupt, write_extents, Mutation, Osd as OsdState};
use crate::store::{ObjMeta, StoreError};

/// The service: a thin layer over [`Osd`].
#[derive(Clone)]
pub struct OsdService {
    osd: Arc<OsdState>,
}

type Reply<T> = Result<Response<T>, Status>;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match &e {
            StoreError::BadName(_) => errno_status(EINVAL, e.to_string()),
            StoreError::TooLarge { .. } => errno_status(EFBIG, e.to_string()),
            StoreError::Corrupt { .. } => {
                error!(error = %e, "corrupt object");
                errno_status(EIO, e.to_string())
            }
            StoreError::Io { source, .. } => {
                error!(error = %e, "object i/o failed");
                errno_status(source.raw_os_error().unwrap_or(EIO), e.to_string())
            }
        }
    }
}

/// Refuses a batch call of more than [`shoal_proto::MAX_BATCH`] operations (its `Status` goes
/// straight back to gRPC).
#[allow(clippy::result_large_err)]
fn check_batch(n: usize) -> Result<(), Status> {
    if n > shoal_proto::MAX_BATCH {
        return Err(errno_status(
            EINVAL,
            format!(
                "a batch of {n} operations (at most {})",
                shoal_proto::MAX_BATCH
            ),
        ));
    }
    Ok(())
}

/// What a read answers: the bytes, and whether the object exists.
pub(crate) fn read_reply(data: Option<bytes::Bytes>) -> ReadReply {
    ReadReply {
        exists: data.is_some(),
        data: data.unwrap_or_default(),
    }
}

/// The positions of the operations of a batch that failed.
fn failed_of<T>(results: &[Result<T, Status>]) -> Vec<u32> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i as u32)
        .collect()
}

impl OsdService {
    /// Builds the service over the OSD's state.
    pub fn new(osd: Arc<OsdState>) -> OsdService {
        OsdService { osd }
    }
}

#[tonic::async_trait]
impl Osd for OsdService {
    async fn write(&self, req: Request<WriteRequest>) -> Reply<WriteReply> {
        let r = req.into_inner();
        let m = Mutation::Write {
            extents: write_extents(r.offset, r.data, r.more)?,
        };
        let object_size = self
            .osd
            .client_mutate(r.object, m, r.epoch, r.session)
            .await?;
        Ok(Response::new(WriteReply { object_size }))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Reply<ReadReply> {
        let r = req.into_inner();
        let data = self
            .osd
            .client_read(r.object, r.offset, r.len as u64, r.epoch, r.session)
            .await?;
        Ok(Response::new(read_reply(data)))
    }

    async fn read_batch(&self, req: Request<ReadBatchRequest>) -> Reply<ReadBatchReply> {
        let reads = req.into_inner().reads;
        check_batch(reads.len())?;
        let bytes: u64 = reads.iter().map(|r| r.len as u64).sum();
        if bytes > shoal_proto::MAX_READ_BATCH_BYTES {
            return Err(errno_status(
                EINVAL,
                format!(
                    "a read batch of {bytes} bytes (at most {})",
                    shoal_proto::MAX_READ_BATCH_BYTES
                ),
            ));
        }
        // Each read as if it came alone; the batch only shares the call.
        let results = futures::future::join_all(reads.into_iter().map(|r| {
            self.osd
                .client_read(r.object, r.offset, r.len as u64, r.epoch, r.session)
        }))
        .await;
        let failed = failed_of(&results);
        let replies = results
            .into_iter()
            .map(|r| read_reply(r.unwrap_or_default()))
            .collect();
        Ok(Response::new(ReadBatchReply { replies, failed }))
    }

    async fn write_batch(&self, req: Request<WriteBatchRequest>) -> Reply<WriteBatchReply> {
        let writes = req.into_inner().writes;
        check_batch(writes.len())?;
        let results = futures::future::join_all(writes.into_iter().map(|r| async move {
            let m = Mutation::Write {
                extents: write_extents(r.offset, r.data, r.more)?,
            };
            self.osd
                .client_mutate(r.object, m, r.epoch, r.session)
                .await
        }))
        .await;
        let failed = failed_of(&results);
        let replies = results
            .into_iter()
            .map(|r| WriteReply {
                object_size: r.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(WriteBatchReply { replies, failed }))
    }

    async fn delete_batch(&self, req: Request<DeleteBatchRequest>) -> Reply<DeleteBatchReply> {
        let deletes = req.into_inner().deletes;
        check_batch(deletes.len())?;
        let results = futures::future::join_all(deletes.into_iter().map(|r| {
            self.osd
                .client_mutate(r.object, Mutation::Delete, r.epoch, r.session)
        }))
        .await;
        Ok(Response::new(DeleteBatchReply {
            failed: failed_of(&results),
        }))
    }

    async fn truncate(&self, req: Request<TruncateRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        let m = Mutation::Truncate { size: r.size };
        self.osd
            .client_mutate(r.object, m, r.epoch, r.session)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        self.osd
            .client_mutate(r.object, Mutation::Delete, r.epoch, r.session)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn zero(&self, req: Request<ZeroRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        let m = Mutation::Zero {
            offset: r.offset,
            len: r.len,
        };
        self.osd
            .client_mutate(r.object, m, r.epoch, r.session)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn stat(&self, _req: Request<StatRequest>) -> Reply<StatReply> {
        let usage = self.osd.store.usage();
        let disk = crate::disk_space(self.osd.store.root())
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StatReply {
            id: self.osd.id,
            capacity_bytes: disk.capacity,
            used_bytes: usage.bytes,
            objects: usage.objects,
        }))
    }

    async fn list_file(&self, req: Request<ListFileRequest>) -> Reply<ListFileReply> {
        const MAX: usize = 100_000;
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => MAX,
            n => n.min(MAX),
        };
        let mut objects: Vec<FileObject> = self
            .osd
            .store
            .file_objects(r.ino, r.from, limit + 1)
            .into_iter()
            .map(|(objno, size)| FileObject {
                objno,
                size,
                ..Default::default()
            })
            .collect();
        let more = objects.len() > limit;
        objects.truncate(limit);
        if r.with_mtime {
            // One stat per object: off the async threads.
            let osd = self.osd.clone();
            let ino = r.ino;
            objects = tokio::task::spawn_blocking(move || {
                for o in &mut objects {
                    let name = shoal_proto::layout::object_name(ino, o.objno);
                    let at = osd
                        .store
                        .changed_at(&name)
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    if let Some(d) = at {
                        o.mtime_sec = d.as_secs().min(i64::MAX as u64) as i64;
                        o.mtime_nsec = d.subsec_nanos();
                    }
                }
                objects
            })
            .await
            .map_err(|e| Status::internal(format!("listing task: {e}")))?;
        }
        Ok(Response::new(ListFileReply { objects, more }))
    }

    async fn rep_op(&self, req: Request<RepOpRequest>) -> Reply<Empty> {
        self.osd.replica_op(req.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn rep_op_batch(&self, req: Request<RepOpBatchRequest>) -> Reply<RepOpBatchReply> {
        let ops = req.into_inner().ops;
        check_batch(ops.len())?;
        // Each op as if it came alone (the primary holds each object's lock, so no two ops
        // of one object are ever in a batch); the batch only shares the call.
        let results =
            futures::future::join_all(ops.into_iter().map(|op| self.osd.replica_op(op))).await;
        Ok(Response::new(RepOpBatchReply {
            failed: failed_of(&results),
        }))
    }

    async fn list_pgs(&self, req: Request<ListPgsRequest>) -> Reply<ListPgsReply> {
        let r = req.into_inner();
        self.osd.ensure_epoch(r.epoch).await;
        let pgs: HashSet<u32> = r.pgs.into_iter().collect();
        // After the changes in flight under an older map (see `Osd::epoch_gate`).
        let _drained = self.osd.epoch_gate.write().await;
        let entries = self
            .osd
            .store
            .list(&pgs, r.pg_count.max(1))
            .into_iter()
            .map(|(object, pg, m)| ObjectEntry {
                object,
                pg,
                version: m.version,
                deleted: m.deleted,
                size: m.size,
            })
            .collect();
        Ok(Response::new(ListPgsReply { entries }))
    }

    async fn pull(&self, req: Request<PullRequest>) -> Reply<ObjectCopy> {
        let r = req.into_inner();
        let o = r.object.clone();
        match self.osd.blocking(move |s| s.read_copy(&o)).await? {
            Some((meta, data)) => Ok(Response::new(ObjectCopy {
                object: r.object,
                version: meta.version,
                deleted: meta.deleted,
                data,
            })),
            None => Err(Status::not_found(format!("no copy of {}", r.object))),
        }
    }

    async fn push(&self, req: Request<PushRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        self.osd.ensure_epoch(r.epoch).await;
        let c = r
            .copy
            .ok_or_else(|| Status::invalid_argument("push without a copy"))?;
        let meta = ObjMeta {
            version: c.version,
            deleted: c.deleted,
            size: c.data.len() as u64,
        };
        self.osd
            .blocking(move |s| s.install(&c.object, meta, &c.data))
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn drop_pg(&self, req: Request<DropPgRequest>) -> Reply<Empty> {
        self.osd.drop_pg(req.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn digest(&self, req: Request<DigestRequest>) -> Reply<DigestReply> {
        let r = req.into_inner();
        let o = r.object.clone();
        let reply = match self.osd.blocking(move |s| s.read_copy(&o)).await {
            Ok(Some((meta, data))) => DigestReply {
                exists: true,
                version: meta.version,
                deleted: meta.deleted,
                intact: true,
                crc: crc32fast::hash(&data),
                size: data.len() as u64,
            },
            Ok(None) => DigestReply::default(),
            Err(st) if is_corrupt(&st) => DigestReply {
                exists: true,
                version: self.osd.store.meta(&r.object).map_or(0, |m| m.version),
                intact: false,
                ..DigestReply::default()
            },
            Err(st) => return Err(st),
        };
        Ok(Response::new(reply))
    }

    async fn scrub(&self, req: Request<ScrubRequest>) -> Reply<ScrubReply> {
        Ok(Response::new(self.osd.scrub(req.into_inner().deep).await?))
    }
}
