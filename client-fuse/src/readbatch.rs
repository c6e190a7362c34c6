//! Small reads to one OSD that arrive while two calls to it are still out go together in one
//! `Osd.ReadBatch` call (see [`shoal_proto::batch`]): under many parallel small reads (random
//! 4 KiB reads from several threads, asynchronous direct I/O) the mount and the OSD pay one
//! gRPC call for many reads, and a lone reader waits for nothing.

use shoal_proto::batch::{Batch, Batcher, Limits};
use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::osd::{ReadBatchRequest, ReadReply, ReadRequest};
use tonic::transport::Channel;
use tonic::Status;

/// Reads up to this long may wait to go with others.
pub const SMALL: u32 = 64 << 10;

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
        let mut out: Vec<Option<ReadReply>> = r.replies.into_iter().map(Some).collect();
        for i in r.failed {
            if let Some(slot) = out.get_mut(i as usize) {
                *slot = None;
            }
        }
        Ok(out)
    }
}

/// The mount's small-read queues: two calls out per OSD, then batches of up to 64 reads.
pub fn read_batcher() -> Batcher<ReadCall> {
    Batcher::new(Limits {
        in_flight: 2,
        max_count: 64,
        max_weight: 4 << 20,
    })
}
