//! The `Mds` gRPC service: reads are served from the applied state, mutations go through the
//! Raft node. Also tracks OSD liveness from their reports (soft state, kept on the leader).
// `tonic::Status` is the error type of the generated service trait; boxing it here would only
// add a conversion at every handler.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::limits::check_name;
use shoal_proto::mds::mds_server::Mds;
use shoal_proto::mds::*;
use shoal_proto::placement::DEFAULT_PG_COUNT;
use tonic::{Request, Response, Status};

use crate::command::{Applied, Op};
use crate::error::MdsError;
use crate::fsm::Fsm;
use crate::node::NodeHandle;

/// Usage and last report of one OSD.
#[derive(Debug, Clone)]
struct Liveness {
    last_heard: Instant,
    capacity: u64,
    used: u64,
    free: u64,
    device: String,
}

/// The service state shared by all handlers.
#[derive(Clone)]
pub struct MdsService {
    node: NodeHandle,
    fsm: Fsm,
    addr: String,
    osd_grace: Duration,
    liveness: Arc<Mutex<HashMap<u32, Liveness>>>,
}

type Reply<T> = Result<Response<T>, Status>;

fn attr_reply(a: Applied) -> Reply<AttrReply> {
    match a {
        Applied::Attr(attr) => Ok(Response::new(AttrReply { attr: Some(attr) })),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

fn orphan(a: Applied) -> Result<Option<Orphaned>, Status> {
    match a {
        Applied::Removed(o) => Ok(o.map(|attr| Orphaned { attr: Some(attr) })),
        other => Err(Status::internal(format!(
            "unexpected apply result {other:?}"
        ))),
    }
}

fn name_ok(name: &[u8]) -> Result<(), Status> {
    check_name(name).map_err(|e| MdsError::fs(e, "invalid name").into())
}

impl MdsService {
    /// Builds the service over a running node.
    pub fn new(node: NodeHandle, fsm: Fsm, addr: String, osd_grace: Duration) -> MdsService {
        MdsService {
            node,
            fsm,
            addr,
            osd_grace,
            liveness: Arc::default(),
        }
    }

    async fn propose(&self, op: Op) -> Result<Applied, Status> {
        Ok(self.node.propose(op).await?)
    }

    fn osd_map(&self) -> Result<OsdMap, MdsError> {
        let (epoch, records) = self.fsm.osds()?;
        let live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let osds = records
            .into_iter()
            .map(|r| {
                let l = live.get(&r.id);
                let heard = l.map(|l| now.duration_since(l.last_heard));
                OsdInfo {
                    id: r.id,
                    addr: r.addr,
                    host: r.host,
                    up: heard.is_some_and(|h| h < self.osd_grace),
                    capacity_bytes: l.map_or(r.capacity_bytes, |l| l.capacity),
                    used_bytes: l.map_or(0, |l| l.used),
                    free_bytes: l.map_or(0, |l| l.free),
                    last_heard_ms: heard.map_or(0, |h| h.as_millis() as u64),
                    device: l.map_or_else(String::new, |l| l.device.clone()),
                }
            })
            .collect();
        Ok(OsdMap {
            epoch,
            osds,
            pg_count: DEFAULT_PG_COUNT,
        })
    }

    fn heard(&self, r: OsdReportRequest) {
        let mut live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(
            r.id,
            Liveness {
                last_heard: Instant::now(),
                capacity: r.capacity_bytes,
                used: r.used_bytes,
                free: r.free_bytes,
                device: r.device,
            },
        );
    }
}

#[tonic::async_trait]
impl Mds for MdsService {
    async fn lookup(&self, req: Request<LookupRequest>) -> Reply<AttrReply> {
        let r = req.into_inner();
        let attr = self.fsm.lookup(r.parent, &r.name)?;
        Ok(Response::new(AttrReply { attr: Some(attr) }))
    }

    async fn get_attr(&self, req: Request<GetAttrRequest>) -> Reply<AttrReply> {
        let attr = self.fsm.getattr(req.into_inner().ino)?;
        Ok(Response::new(AttrReply { attr: Some(attr) }))
    }

    async fn set_attr(&self, req: Request<SetAttrRequest>) -> Reply<AttrReply> {
        attr_reply(self.propose(Op::SetAttr(req.into_inner())).await?)
    }

    async fn make_node(&self, req: Request<MakeNodeRequest>) -> Reply<AttrReply> {
        let r = req.into_inner();
        name_ok(&r.name)?;
        attr_reply(self.propose(Op::MakeNode(r)).await?)
    }

    async fn unlink(&self, req: Request<UnlinkRequest>) -> Reply<UnlinkReply> {
        let orphan = orphan(self.propose(Op::Unlink(req.into_inner())).await?)?;
        Ok(Response::new(UnlinkReply { orphan }))
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Reply<RenameReply> {
        let r = req.into_inner();
        name_ok(&r.new_name)?;
        let orphan = orphan(self.propose(Op::Rename(r)).await?)?;
        Ok(Response::new(RenameReply { orphan }))
    }

    async fn link(&self, req: Request<LinkRequest>) -> Reply<AttrReply> {
        let r = req.into_inner();
        name_ok(&r.new_name)?;
        attr_reply(self.propose(Op::Link(r)).await?)
    }

    async fn read_link(&self, req: Request<ReadLinkRequest>) -> Reply<ReadLinkReply> {
        let target = self.fsm.readlink(req.into_inner().ino)?;
        Ok(Response::new(ReadLinkReply {
            target: target.into(),
        }))
    }

    async fn read_dir(&self, req: Request<ReadDirRequest>) -> Reply<ReadDirReply> {
        let r = req.into_inner();
        Ok(Response::new(self.fsm.readdir(r.ino, r.after, r.limit)?))
    }

    async fn stat_fs(&self, _req: Request<StatFsRequest>) -> Reply<StatFsReply> {
        // Each device counts once: OSDs sharing a disk share its capacity and free space.
        let map = self.osd_map()?;
        let mut devices = std::collections::HashSet::new();
        let (mut capacity, mut free, mut used) = (0u64, 0u64, 0u64);
        for o in map.osds.iter().filter(|o| o.up) {
            used += o.used_bytes;
            if o.device.is_empty() || devices.insert(o.device.as_str()) {
                capacity += o.capacity_bytes;
                free += o.free_bytes;
            }
        }
        Ok(Response::new(StatFsReply {
            capacity_bytes: capacity,
            used_bytes: used,
            free_bytes: free,
            files: self.fsm.files()?,
        }))
    }

    async fn get_xattr(&self, req: Request<GetXattrRequest>) -> Reply<GetXattrReply> {
        let r = req.into_inner();
        let value = self.fsm.getxattr(r.ino, &r.name)?;
        Ok(Response::new(GetXattrReply {
            value: value.into(),
        }))
    }

    async fn set_xattr(&self, req: Request<SetXattrRequest>) -> Reply<Empty> {
        self.propose(Op::SetXattr(req.into_inner())).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_xattr(&self, req: Request<ListXattrRequest>) -> Reply<ListXattrReply> {
        let names = self.fsm.listxattr(req.into_inner().ino)?;
        Ok(Response::new(ListXattrReply {
            names: names.into_iter().map(Into::into).collect(),
        }))
    }

    async fn remove_xattr(&self, req: Request<RemoveXattrRequest>) -> Reply<Empty> {
        self.propose(Op::RemoveXattr(req.into_inner())).await?;
        Ok(Response::new(Empty {}))
    }

    async fn purge(&self, req: Request<PurgeRequest>) -> Reply<Empty> {
        self.propose(Op::Purge(req.into_inner())).await?;
        Ok(Response::new(Empty {}))
    }

    async fn osd_boot(&self, req: Request<OsdBootRequest>) -> Reply<OsdBootReply> {
        let r = req.into_inner();
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "bad OSD address {:?}",
                r.addr
            )));
        }
        let report = OsdReportRequest {
            id: r.id,
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            free_bytes: r.capacity_bytes.saturating_sub(r.used_bytes),
            device: String::new(),
        };
        let epoch = match self.propose(Op::OsdBoot(r)).await? {
            Applied::Epoch(e) => e,
            other => {
                return Err(Status::internal(format!(
                    "unexpected apply result {other:?}"
                )))
            }
        };
        self.heard(report);
        Ok(Response::new(OsdBootReply { epoch }))
    }

    async fn osd_report(&self, req: Request<OsdReportRequest>) -> Reply<Empty> {
        let r = req.into_inner();
        let (_, records) = self.fsm.osds()?;
        if !records.iter().any(|o| o.id == r.id) {
            return Err(Status::not_found(format!("osd.{} has not booted", r.id)));
        }
        self.heard(r);
        Ok(Response::new(Empty {}))
    }

    async fn get_osd_map(&self, _req: Request<GetOsdMapRequest>) -> Reply<OsdMap> {
        Ok(Response::new(self.osd_map()?))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Reply<StatusReply> {
        let st = self.node.status();
        let members = st
            .voters
            .iter()
            .map(|&id| MdsMember {
                id,
                addr: if id == st.id {
                    self.addr.clone()
                } else {
                    String::new()
                },
                leader: id == st.leader_id,
            })
            .collect();
        Ok(Response::new(StatusReply {
            members,
            leader_id: st.leader_id,
            term: st.term,
            commit_index: st.commit,
            applied_index: st.applied,
            osd_map: Some(self.osd_map()?),
            files: self.fsm.files()?,
        }))
    }
}
