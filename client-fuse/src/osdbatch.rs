//! Small reads, writes and deletes to one OSD that arrive while two calls of their kind to it
//! are still out go together in one `Osd.ReadBatch`, `Osd.WriteBatch` or `Osd.DeleteBatch`
//! call (see [`shoal_proto::batch`]): under many parallel small operations (random 4 KiB
//! I/O from several threads, asynchronous direct I/O, the data of a tar's small files, an
//! rm -rf's deletes) the mount and the OSD pay one gRPC call for many, and a lone caller
//! waits for nothing.

use shoal_proto::batch::{answers, Batch, Batcher, Limits};
use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::osd::{
    DeleteBatchRequest, DeleteRequest, ReadBatchRequest, ReadReply, ReadRequest, WriteBatchRequest,
    WriteReply, WriteRequest,
};
use tonic::transport::Channel;
use tonic::Status;

/// Reads and writes up to this long may wait to go with others.
pub const SMALL: u32 = 64 << 10;

/// Two calls out per OSD, then batches of up to 64 operations and 4 MiB.
const LIMITS: Limits = Limits {
    in_flight: 2,
    max_count: 64,
    max_weight: 4 << 20,
};

/// Reads through one OSD's client.
#[derive(Clone)]
pub struct ReadCall(pub OsdClient<Channel>);

impl Batch for ReadCall {
    type Req = ReadRequest;
    type Rep = ReadReply;

    fn weight(req: &ReadRequest) -> Option<u64> {
        (req.len <= SMALL).then_some(req.len as u64)
    }

    async fn one(&self, req: ReadRequest) -> Result<ReadReply, Status> {
        Ok(self.0.clone().read(req).await?.into_inner())
    }

    async fn many(&self, reads: Vec<ReadRequest>) -> Result<Vec<Option<ReadReply>>, Status> {
        let r = self
            .0
            .clone()
            .read_batch(ReadBatchRequest { reads })
            .await?
            .into_inner();
        Ok(answers(r.replies, r.failed))
    }
}

/// Writes through one OSD's client.
#[derive(Clone)]
pub struct WriteCall(pub OsdClient<Channel>);

impl Batch for WriteCall {
    type Req = WriteRequest;
    type Rep = WriteReply;

    fn weight(req: &WriteRequest) -> Option<u64> {
        let bytes =
            req.data.len() as u64 + req.more.iter().map(|e| e.data.len() as u64).sum::<u64>();
        (bytes <= SMALL as u64).then_some(bytes)
    }

    async fn one(&self, req: WriteRequest) -> Result<WriteReply, Status> {
        Ok(self.0.clone().write(req).await?.into_inner())
    }

    async fn many(&self, writes: Vec<WriteRequest>) -> Result<Vec<Option<WriteReply>>, Status> {
        let r = self
            .0
            .clone()
            .write_batch(WriteBatchRequest { writes })
            .await?
            .into_inner();
        Ok(answers(r.replies, r.failed))
    }
}

/// Deletes through one OSD's client.
#[derive(Clone)]
pub struct DeleteCall(pub OsdClient<Channel>);

impl Batch for DeleteCall {
    type Req = DeleteRequest;
    type Rep = ();

    fn weight(_: &DeleteRequest) -> Option<u64> {
        Some(1)
    }

    async fn one(&self, req: DeleteRequest) -> Result<(), Status> {
        self.0.clone().delete(req).await.map(|_| ())
    }

    async fn many(&self, deletes: Vec<DeleteRequest>) -> Result<Vec<Option<()>>, Status> {
        let n = deletes.len();
        let r = self
            .0
            .clone()
            .delete_batch(DeleteBatchRequest { deletes })
            .await?
            .into_inner();
        Ok(answers(vec![(); n], r.failed))
    }
}

/// The mount's queues of small operations, one per kind.
pub struct OsdBatches {
    pub reads: Batcher<ReadCall>,
    pub writes: Batcher<WriteCall>,
    pub deletes: Batcher<DeleteCall>,
}

impl Default for OsdBatches {
    fn default() -> Self {
        OsdBatches {
            reads: Batcher::new(LIMITS),
            writes: Batcher::new(LIMITS),
            deletes: Batcher::new(LIMITS),
        }
    }
}
