//! Small reads, writes and deletes to one OSD that arrive while two calls of their kind to it
//! are still out go together in one `Osd.ReadBatch`, `Osd.WriteBatch` or `Osd.DeleteBatch`
//! call (see [`shoal_proto::batch`]): under many parallel small operations (random 4 KiB
//! I/O from several threads, asynchronous direct I/O, the data of a tar's small files, an
//! rm -rf's deletes) the mount and the OSD pay one gRPC call for many, and a lone caller
//! waits for nothing.

use shoal_proto::batch::{answers, Batch, Batcher, Limits};
use shoal_proto::bulk::{self, Rope};
use shoal_proto::datachan::DataChannel;
use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::osd::{
    DeleteBatchRequest, DeleteRequest, ReadBatchRequest, ReadReply, ReadRequest, WriteBatchRequest,
    WriteReply, WriteRequest,
};
use tonic::Status;

/// Reads and writes up to this long may wait to go with others.
pub const SMALL: u32 = 64 << 10;

/// Two calls out per OSD, then batches of up to 64 operations and 4 MiB.
const LIMITS: Limits = Limits {
    in_flight: 2,
    max_count: 64,
    max_weight: 4 << 20,
};

/// One OSD's client: the generated stub, and its channel for calls framed by
/// [`shoal_proto::bulk`].
#[derive(Clone)]
pub struct OsdConn {
    pub stub: OsdClient<DataChannel>,
    pub channel: DataChannel,
}

impl OsdConn {
    /// A client over `channel`.
    pub fn new(channel: DataChannel) -> OsdConn {
        OsdConn {
            stub: OsdClient::new(channel.clone())
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
            channel,
        }
    }
}

/// Reads through one OSD's client.
#[derive(Clone)]
pub struct ReadCall(pub OsdConn);

impl Batch for ReadCall {
    type Req = ReadRequest;
    type Rep = ReadReply;

    fn weight(req: &ReadRequest) -> Option<u64> {
        (req.len <= SMALL).then_some(req.len as u64)
    }

    async fn one(&self, req: ReadRequest) -> Result<ReadReply, Status> {
        Ok(self.0.stub.clone().read(req).await?.into_inner())
    }

    async fn many(&self, reads: Vec<ReadRequest>) -> Result<Vec<Option<ReadReply>>, Status> {
        let r = self
            .0
            .stub
            .clone()
            .read_batch(ReadBatchRequest { reads })
            .await?
            .into_inner();
        Ok(answers(r.replies, r.failed))
    }
}

/// A write: its request, with the data of its first extent held apart as a rope (the
/// request's own `data` is empty), sent without copying it.
#[derive(Clone, Debug)]
pub struct WriteOp {
    pub req: WriteRequest,
    pub data: Rope,
}

/// Writes through one OSD's client.
#[derive(Clone)]
pub struct WriteCall(pub OsdConn);

impl Batch for WriteCall {
    type Req = WriteOp;
    type Rep = WriteReply;

    fn weight(op: &WriteOp) -> Option<u64> {
        let more: u64 = op.req.more.iter().map(|e| e.data.len() as u64).sum();
        let bytes = op.data.len() as u64 + more;
        (bytes <= SMALL as u64).then_some(bytes)
    }

    async fn one(&self, op: WriteOp) -> Result<WriteReply, Status> {
        let frames = bulk::frames(&op.req, WRITE_DATA_FIELD, op.data.chunks());
        bulk::unary(&self.0.channel, WRITE_PATH, frames, REPLY_MAX).await
    }

    async fn many(&self, ops: Vec<WriteOp>) -> Result<Vec<Option<WriteReply>>, Status> {
        let writes = ops
            .into_iter()
            .map(|op| WriteRequest {
                data: op.data.join(),
                ..op.req
            })
            .collect();
        let r = self
            .0
            .stub
            .clone()
            .write_batch(WriteBatchRequest { writes })
            .await?
            .into_inner();
        Ok(answers(r.replies, r.failed))
    }
}

/// `Osd.Write`, and the number of `WriteRequest.data` (see `proto/osd.proto`).
const WRITE_PATH: &str = "/shoal.osd.Osd/Write";
const WRITE_DATA_FIELD: u32 = 3;
/// Largest reply taken to a call sent by [`bulk::unary`] (a write's reply is one number).
const REPLY_MAX: usize = 64 << 10;

/// Deletes through one OSD's client.
#[derive(Clone)]
pub struct DeleteCall(pub OsdConn);

impl Batch for DeleteCall {
    type Req = DeleteRequest;
    type Rep = ();

    fn weight(_: &DeleteRequest) -> Option<u64> {
        Some(1)
    }

    async fn one(&self, req: DeleteRequest) -> Result<(), Status> {
        self.0.stub.clone().delete(req).await.map(|_| ())
    }

    async fn many(&self, deletes: Vec<DeleteRequest>) -> Result<Vec<Option<()>>, Status> {
        let n = deletes.len();
        let r = self
            .0
            .stub
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
