//! Shoal through real daemons and a real FUSE mount. Each test starts its own cluster.

mod coherence;
mod csi;
mod data;
mod faults;
mod fencing;
mod library;
mod mds_ha;
mod mounting;
mod namespace;
mod posix;
mod quota;
mod replication;
mod sharing;
mod tools;

use shoal_fstests::TestCluster;
use shoal_proto::error::{status_errno, WireError};
use shoal_proto::mds::mds_client::MdsClient;
use shoal_proto::mds::GetOsdMapRequest;
use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::osd::ReadRequest;
use shoal_proto::placement::Placement;

/// Reads `len` bytes at `offset` of inode `ino`'s first object straight from its primary OSD
/// (past a mount's client), as client session `session`: the bytes the OSD holds there, or
/// how it refused.
pub(crate) fn read_object(
    c: &TestCluster,
    ino: u64,
    offset: u64,
    len: u32,
    session: u64,
) -> Result<Vec<u8>, WireError> {
    let mds = std::fs::read_to_string(c.data.join("mds.0").join("addr")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut m = MdsClient::connect(format!("http://{}", mds.trim()))
            .await
            .unwrap();
        let map = m
            .get_osd_map(GetOsdMapRequest {})
            .await
            .unwrap()
            .into_inner();
        let placement = Placement::from_map(&map);
        let object = shoal_proto::layout::object_name(ino, 0);
        let primary = placement.primary(placement.pg_of(&object)).unwrap();
        let addr = &map.osds.iter().find(|o| o.id == primary).unwrap().addr;
        let mut osd = OsdClient::connect(format!("http://{addr}")).await.unwrap();
        let req = ReadRequest {
            object,
            offset,
            len,
            epoch: map.epoch,
            session,
        };
        match osd.read(req).await {
            Ok(r) => Ok(r.into_inner().data.to_vec()),
            Err(st) => Err(status_errno(&st)),
        }
    })
}
