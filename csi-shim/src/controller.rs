//! The Controller service: a CSI volume is a Shoal volume (`/volumes/NAME`, its byte quota
//! the volume's capacity), its id the name. Create is idempotent by name; delete of an unknown
//! id succeeds; expand raises the quota (no node step); list pages by index.
//!
//! StorageClass parameters: `maxFiles` (a file quota), `mode` (octal permissions of the
//! volume's root, 0777 by default so pods of any uid share it), `layout` (striping of the
//! files made in it, as `shoal.dir.layout` takes it), `replicas` (must equal the pool's copy
//! count: replication is per cluster). The sidecars' own `csi.storage.k8s.io/*` keys are
//! ignored; any other key is refused.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_client::volumes::{self, Volume as ShoalVolume, VolumeError};
use shoal_client::{Client, ClientError};
use shoal_proto::csi::controller_server::Controller;
use shoal_proto::csi::controller_service_capability::{rpc, Rpc, Type as CapType};
use shoal_proto::csi::validate_volume_capabilities_response::Confirmed;
use shoal_proto::csi::*;
use tonic::{Request, Response, Status};

use crate::check;

/// A volume's size when the CO asks for none.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// Keys of the CO's sidecars that reach CreateVolume's parameters.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// The controller, over a client of the cluster.
pub struct ControllerService {
    /// The cluster.
    pub client: Arc<Client>,
}

/// A Shoal error as a gRPC status.
pub fn status(e: VolumeError) -> Status {
    match e {
        VolumeError::BadName(_) | VolumeError::NoSize => Status::invalid_argument(e.to_string()),
        VolumeError::Exists { .. } => Status::already_exists(e.to_string()),
        VolumeError::NotFound(_) => Status::not_found(e.to_string()),
        VolumeError::Cluster(c) => cluster_status(c),
    }
}

fn cluster_status(c: ClientError) -> Status {
    match c.errno() {
        libc::ENOSPC | libc::EDQUOT => Status::resource_exhausted(c.to_string()),
        libc::ETIMEDOUT => Status::unavailable(c.to_string()),
        libc::EINVAL => Status::invalid_argument(c.to_string()),
        _ => Status::internal(c.to_string()),
    }
}

/// What CreateVolume's parameters ask for.
#[derive(Debug, Default, PartialEq)]
struct Params {
    max_files: u64,
    mode: u32,
    layout: Option<String>,
    replicas: Option<u32>,
}

fn params(p: &HashMap<String, String>) -> Result<Params, Status> {
    let mut out = Params {
        mode: 0o777,
        ..Default::default()
    };
    for (k, v) in p {
        let bad = |what: &str| Status::invalid_argument(format!("parameter {k}={v:?}: {what}"));
        match k.as_str() {
            "maxFiles" => out.max_files = v.parse().map_err(|_| bad("a whole number"))?,
            "mode" => {
                out.mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad("octal permissions such as 0777"))?
            }
            "layout" => {
                let base = shoal_proto::layout::default_layout();
                shoal_proto::layout::parse_layout(&base, None, v.as_bytes())
                    .map_err(|_| bad("a layout such as \"stripe_unit=65536 stripe_count=4\""))?;
                out.layout = Some(v.clone());
            }
            "replicas" => {
                out.replicas = Some(v.parse().map_err(|_| bad("a whole number"))?);
            }
            k if k.starts_with(SIDECAR_PREFIX) => {}
            _ => return Err(bad("unknown (known: maxFiles, mode, layout, replicas)")),
        }
    }
    Ok(out)
}

/// The size a capacity range asks for (`None`: the default), or why it cannot be met.
fn wanted(range: Option<&CapacityRange>) -> Result<(u64, Option<u64>), Status> {
    let Some(r) = range else {
        return Ok((DEFAULT_SIZE, None));
    };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument(
            "capacity_range must not be negative",
        ));
    }
    let (req, lim) = (r.required_bytes as u64, r.limit_bytes as u64);
    if lim > 0 && req > lim {
        return Err(Status::out_of_range(format!(
            "capacity_range: required {req} exceeds limit {lim}"
        )));
    }
    let size = match (req, lim) {
        (0, 0) => DEFAULT_SIZE,
        (0, l) => l.min(DEFAULT_SIZE),
        (r, _) => r,
    };
    Ok((size, (lim > 0).then_some(lim)))
}

fn csi_volume(v: &ShoalVolume) -> Volume {
    Volume {
        capacity_bytes: v.max_bytes.min(i64::MAX as u64) as i64,
        volume_id: v.name.clone(),
        volume_context: [("volume".to_string(), v.name.clone())].into(),
        ..Default::default()
    }
}

impl ControllerService {
    async fn pool_size(&self) -> Result<u32, Status> {
        let map = self
            .client
            .cluster()
            .mds("osd map", |mut m| async move {
                m.get_osd_map(shoal_proto::mds::GetOsdMapRequest {}).await
            })
            .await
            .map_err(cluster_status)?;
        Ok(map.size)
    }

    async fn existing(&self, id: &str) -> Result<ShoalVolume, Status> {
        volumes::get(&self.client, id).await.map_err(status)
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        r: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let r = r.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let name = check::volume_id(&r.name)?;
        check::capabilities(&r.volume_capabilities)?;
        if r.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volumes from snapshots or clones are not supported",
            ));
        }
        let (size, limit) = wanted(r.capacity_range.as_ref())?;
        let p = params(&r.parameters)?;
        if let Some(n) = p.replicas {
            let pool = self.pool_size().await?;
            if n != pool {
                return Err(Status::invalid_argument(format!(
                    "parameter replicas={n}: the cluster keeps {pool} copies of every object \
                     (replication is per cluster, not per volume)"
                )));
            }
        }
        match volumes::get(&self.client, name).await {
            Ok(v) if v.max_bytes > 0 => {
                // The same name again: the existing volume if it meets the request.
                let required = r
                    .capacity_range
                    .as_ref()
                    .map_or(0, |c| c.required_bytes.max(0) as u64);
                let fits = v.max_bytes >= required
                    && limit.is_none_or(|l| v.max_bytes <= l)
                    && v.max_files == p.max_files;
                if !fits {
                    return Err(Status::already_exists(format!(
                        "volume {name} exists with {} bytes and {} files",
                        v.max_bytes, v.max_files
                    )));
                }
                return Ok(Response::new(CreateVolumeResponse {
                    volume: Some(csi_volume(&v)),
                }));
            }
            Ok(_) | Err(VolumeError::NotFound(_)) => {}
            Err(e) => return Err(status(e)),
        }
        let layout = p.layout.as_deref();
        let v = volumes::create(&self.client, name, size, p.max_files, p.mode, layout)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(csi_volume(&v)),
        }))
    }

    async fn delete_volume(
        &self,
        r: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let id = check::volume_id(&r.get_ref().volume_id)?;
        volumes::remove(&self.client, id).await.map_err(status)?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _r: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no controller publish: every node mounts the cluster itself",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _r: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no controller publish: every node mounts the cluster itself",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = r.into_inner();
        let id = check::volume_id(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        self.existing(id).await?;
        if let Some(why) = r.volume_capabilities.iter().find_map(check::unsupported) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            }));
        }
        if let Err(e) = params(&r.parameters) {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.message().to_string(),
            }));
        }
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: r.volume_context,
                volume_capabilities: r.volume_capabilities,
                parameters: r.parameters,
                mutable_parameters: Default::default(),
            }),
            message: String::new(),
        }))
    }

    async fn list_volumes(
        &self,
        r: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let r = r.into_inner();
        if r.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries must not be negative"));
        }
        let all = volumes::list(&self.client).await.map_err(status)?;
        let start = if r.starting_token.is_empty() {
            0
        } else {
            r.starting_token
                .parse::<usize>()
                .ok()
                .filter(|&i| i <= all.len())
                .ok_or_else(|| {
                    Status::aborted(format!(
                        "starting_token {:?} is not valid",
                        r.starting_token
                    ))
                })?
        };
        let take = if r.max_entries == 0 {
            all.len()
        } else {
            r.max_entries as usize
        };
        let end = start.saturating_add(take).min(all.len());
        let entries = all[start..end]
            .iter()
            .map(|v| list_volumes_response::Entry {
                volume: Some(csi_volume(v)),
                status: None,
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token: if end < all.len() {
                end.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_capacity(
        &self,
        _r: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let s = self.client.statfs(0).await.map_err(cluster_status)?;
        Ok(Response::new(GetCapacityResponse {
            available_capacity: s.free_bytes.min(i64::MAX as u64) as i64,
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _r: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let caps = [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::ListVolumes,
            rpc::Type::GetCapacity,
            rpc::Type::ExpandVolume,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn controller_expand_volume(
        &self,
        r: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = check::volume_id(&r.volume_id)?;
        let range = r
            .capacity_range
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let (size, limit) = wanted(Some(range))?;
        let v = self.existing(id).await?;
        if let Some(l) = limit {
            if v.max_bytes > l {
                return Err(Status::out_of_range(format!(
                    "volume {id} holds {} bytes already, more than the limit {l}",
                    v.max_bytes
                )));
            }
        }
        // Never shrinks: a smaller request is already met.
        let v = if size > v.max_bytes {
            volumes::resize(&self.client, id, size, None)
                .await
                .map_err(status)?
        } else {
            v
        };
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes: v.max_bytes.min(i64::MAX as u64) as i64,
            node_expansion_required: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_are_checked() {
        let p = params(&map(&[
            ("maxFiles", "1000"),
            ("mode", "0755"),
            ("layout", "stripe_unit=65536 stripe_count=4"),
            ("csi.storage.k8s.io/pvc/name", "media"),
        ]))
        .unwrap();
        assert_eq!((p.max_files, p.mode), (1000, 0o755));
        assert_eq!(params(&map(&[])).unwrap().mode, 0o777);
        for bad in [
            ("maxFiles", "many"),
            ("mode", "999"),
            ("mode", "77777"),
            ("layout", "stripe_unit=3"),
            ("replicas", "three"),
            ("speed", "fast"),
        ] {
            let e = params(&map(&[bad])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains(bad.0), "{}", e.message());
        }
    }

    #[test]
    fn capacity_ranges_pick_a_size_or_are_refused() {
        let r = |req, lim| CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(wanted(None).unwrap(), (DEFAULT_SIZE, None));
        assert_eq!(wanted(Some(&r(5 << 30, 0))).unwrap(), (5 << 30, None));
        assert_eq!(
            wanted(Some(&r(0, 1 << 20))).unwrap(),
            (1 << 20, Some(1 << 20))
        );
        assert_eq!(wanted(Some(&r(1, 2))).unwrap(), (1, Some(2)));
        assert_eq!(
            wanted(Some(&r(3, 2))).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            wanted(Some(&r(-1, 0))).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
