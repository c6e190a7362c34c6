//! The `Osd` gRPC service over the [`ObjectStore`]. Disk work runs on the blocking pool; the
//! request's `Bytes` is handed to the store without a copy.

use std::sync::Arc;

use shoal_proto::error::errno_status;
use shoal_proto::limits::libc_consts::{EFBIG, EINVAL, EIO};
use shoal_proto::osd::osd_server::Osd;
use shoal_proto::osd::*;
use tonic::{Request, Response, Status};
use tracing::error;

use crate::store::{ObjectStore, StoreError};

/// The service state shared by all handlers.
#[derive(Clone)]
pub struct OsdService {
    id: u32,
    store: Arc<ObjectStore>,
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

impl OsdService {
    /// Builds the service over a store.
    pub fn new(id: u32, store: Arc<ObjectStore>) -> OsdService {
        OsdService { id, store }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Osd for OsdService {
    async fn write(&self, req: Request<WriteRequest>) -> Reply<WriteReply> {
        let r = req.into_inner();
        let object_size = self
            .blocking(move |s| s.write(&r.object, r.offset, &r.data))
            .await?;
        Ok(Response::new(WriteReply { object_size }))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Reply<ReadReply> {
        let r = req.into_inner();
        let data = self
            .blocking(move |s| s.read(&r.object, r.offset, r.len as u64))
            .await?;
        Ok(Response::new(ReadReply {
            exists: data.is_some(),
            data: data.unwrap_or_default(),
        }))
    }

    async fn truncate(&self, req: Request<TruncateRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        self.blocking(move |s| s.truncate(&r.object, r.size))
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        self.blocking(move |s| s.delete(&r.object)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn stat(&self, _req: Request<StatRequest>) -> Reply<StatReply> {
        let usage = self.store.usage();
        let disk =
            crate::disk_space(self.store.root()).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StatReply {
            id: self.id,
            capacity_bytes: disk.capacity,
            used_bytes: usage.bytes,
            objects: usage.objects,
        }))
    }
}
