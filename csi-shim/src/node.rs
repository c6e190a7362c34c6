//! The Node service. A volume is staged once per node: a `shoal-fuse` process mounts it
//! (`-o volume=ID`) at the staging path, started in a session of its own or, in a pod, by the
//! mounter container ([`crate::mounter`]), so it keeps serving when the plugin restarts. Publishing bind-mounts the staging path into a pod's target path
//! (read-only when asked). What is staged and published is recorded in the state directory,
//! so a restarted plugin finds its mounts again, and a mount whose client died (ENOTCONN) is
//! mounted again at the same path, and its bind mounts redone, by the next stage or publish
//! of it or by [`NodeService::repair`], which runs every few seconds.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_proto::csi::node_server::Node;
use shoal_proto::csi::node_service_capability::{rpc, Rpc, Type as CapType};
use shoal_proto::csi::volume_usage::Unit;
use shoal_proto::csi::*;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::mounter::{self, Launcher};
use crate::{check, internal, mounts};

/// Who starts the node's FUSE clients.
#[derive(Debug, Clone)]
pub enum Launch {
    /// The plugin itself.
    Here(Launcher),
    /// The mounter serving this socket (see [`crate::mounter`]).
    Mounter(PathBuf),
}

/// The node service.
pub struct NodeService {
    /// This node's id (its name in the CO).
    pub node_id: String,
    /// Who starts the FUSE clients.
    pub launch: Launch,
    /// Records of what is staged and published (`staged/`, `published/`), and the mounts'
    /// logs (`log/`) and pids (`pid/`).
    pub state_dir: PathBuf,
    /// One change of mounts at a time.
    pub busy: tokio::sync::Mutex<()>,
}

/// This boot of the machine: records of an earlier one describe mounts that are gone.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A record of the state directory.
pub trait Record: for<'de> Deserialize<'de> {
    /// The boot it was made in.
    fn boot(&self) -> &str;
}

impl Record for Staged {
    fn boot(&self) -> &str {
        &self.boot
    }
}

impl Record for Published {
    fn boot(&self) -> &str {
        &self.boot
    }
}

/// A staged volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Staged {
    /// The boot it was staged in.
    #[serde(default)]
    pub boot: String,
    /// The volume.
    pub volume_id: String,
    /// Where its FUSE mount is.
    pub staging: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A volume published into a pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Published {
    /// The boot it was published in.
    #[serde(default)]
    pub boot: String,
    /// The volume.
    pub volume_id: String,
    /// Its staging path (the bind mount's source).
    pub staging: PathBuf,
    /// The pod's path.
    pub target: PathBuf,
    /// Bound read-only.
    pub read_only: bool,
}

/// FNV-1a of a path: the record's file name (paths are too long for file names).
pub(crate) fn key(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = p
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{h:016x}.json")
}

impl NodeService {
    fn dir(&self, kind: &str) -> std::io::Result<PathBuf> {
        let d = self.state_dir.join(kind);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn save<T: Serialize>(&self, kind: &str, path: &Path, rec: &T) -> Result<(), Status> {
        let d = self.dir(kind).map_err(|e| internal("state directory", e))?;
        let tmp = d.join(format!(".{}", key(path)));
        let body = serde_json::to_vec(rec).map_err(|e| internal("state record", e))?;
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, d.join(key(path))))
            .map_err(|e| internal("state record", e))
    }

    fn forget(&self, kind: &str, path: &Path) {
        if let Ok(d) = self.dir(kind) {
            let _ = std::fs::remove_file(d.join(key(path)));
        }
    }

    /// Every record of `kind` (`staged` or `published`) of this boot; those of an earlier
    /// boot (their mounts went with it) are deleted.
    pub fn records<T: Record>(&self, kind: &str) -> Vec<T> {
        let Ok(d) = self.dir(kind) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(d) else {
            return Vec::new();
        };
        let boot = boot_id();
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            match serde_json::from_slice::<T>(&bytes) {
                Ok(r) if r.boot() == boot => out.push(r),
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        out
    }

    /// Whether a healthy Shoal mount is at `p`.
    fn mounted_ok(p: &Path) -> Result<bool, Status> {
        let m = mounts::mount_at(p).map_err(|e| internal("reading mounts", e))?;
        Ok(m.is_some_and(|m| m.is_shoal()) && mounts::answers(p))
    }

    /// Mounts volume `s` at its staging path with a new `shoal-fuse` (started here or by the
    /// mounter), first detaching a mount there whose client died.
    fn mount_volume(&self, s: &Staged) -> Result<(), Status> {
        if mounts::mount_at(&s.staging)
            .map_err(|e| internal("reading mounts", e))?
            .is_some()
        {
            warn!(path = %s.staging.display(), "a mount whose client died: mounting again");
            mounts::unmount(&s.staging).map_err(|e| internal("detaching a dead mount", e))?;
        }
        std::fs::create_dir_all(&s.staging).map_err(|e| internal("staging path", e))?;
        match &self.launch {
            Launch::Here(l) => l.mount(s)?,
            Launch::Mounter(socket) => mounter::ask(socket, s)?,
        }
        info!(volume = %s.volume_id, path = %s.staging.display(), "volume staged");
        Ok(())
    }

    /// Binds `p.staging` at `p.target`, first detaching a bind of a dead mount there.
    fn bind(p: &Published) -> Result<(), Status> {
        if mounts::mount_at(&p.target)
            .map_err(|e| internal("reading mounts", e))?
            .is_some()
        {
            mounts::unmount(&p.target).map_err(|e| internal("detaching a dead bind", e))?;
        }
        std::fs::create_dir_all(&p.target).map_err(|e| internal("target path", e))?;
        mounts::bind(&p.staging, &p.target, p.read_only).map_err(|e| internal("bind mount", e))
    }

    /// Mounts again what a dead client left (staging paths, then the pods' bind mounts of
    /// them): what the records list and the mount table shows broken or missing. Returns
    /// how many mounts it redid.
    pub async fn repair(&self) -> usize {
        let _one = self.busy.lock().await;
        let mut redone = 0;
        for s in self.records::<Staged>("staged") {
            if Self::mounted_ok(&s.staging).unwrap_or(true) {
                continue;
            }
            match tokio::task::block_in_place(|| self.mount_volume(&s)) {
                Ok(()) => redone += 1,
                Err(e) => {
                    warn!(volume = %s.volume_id, error = %e.message(), "cannot mount again");
                    continue;
                }
            }
        }
        for p in self.records::<Published>("published") {
            if !p.target.parent().is_some_and(|d| d.exists()) {
                // The pod's directory is gone: so is the pod.
                self.forget("published", &p.target);
                continue;
            }
            let healthy = mounts::mount_at(&p.target)
                .ok()
                .flatten()
                .is_some_and(|_| mounts::answers(&p.target));
            if healthy || !Self::mounted_ok(&p.staging).unwrap_or(false) {
                continue;
            }
            match Self::bind(&p) {
                Ok(()) => redone += 1,
                Err(e) => {
                    warn!(target = %p.target.display(), error = %e.message(), "cannot bind again")
                }
            }
        }
        redone
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        r: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = check::volume_id(&r.volume_id)?;
        let staging = check::path("staging_target_path", &r.staging_target_path)?;
        let cap = check::capability(r.volume_capability.as_ref())?;
        let s = Staged {
            boot: boot_id(),
            volume_id: id.to_string(),
            staging: mounts::resolve(&staging),
            read_only: check::read_only_mode(cap),
        };
        let _one = self.busy.lock().await;
        if let Some(old) = self
            .records::<Staged>("staged")
            .into_iter()
            .find(|o| o.staging == s.staging)
        {
            if old != s {
                return Err(Status::already_exists(format!(
                    "{} has volume {} staged (read-only {})",
                    s.staging.display(),
                    old.volume_id,
                    old.read_only
                )));
            }
        }
        if !Self::mounted_ok(&s.staging)? {
            tokio::task::block_in_place(|| self.mount_volume(&s))?;
        }
        self.save("staged", &s.staging, &s)?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        r: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let r = r.into_inner();
        check::volume_id(&r.volume_id)?;
        let staging = mounts::resolve(&check::path("staging_target_path", &r.staging_target_path)?);
        let _one = self.busy.lock().await;
        mounts::unmount(&staging).map_err(|e| internal("unmounting", e))?;
        self.forget("staged", &staging);
        // The CO made the directory; an empty one left behind is harmless.
        let _ = std::fs::remove_dir(&staging);
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        r: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        let id = check::volume_id(&r.volume_id)?;
        let staging = check::path("staging_target_path", &r.staging_target_path)?;
        let target = check::path("target_path", &r.target_path)?;
        let cap = check::capability(r.volume_capability.as_ref())?;
        let p = Published {
            boot: boot_id(),
            volume_id: id.to_string(),
            staging: mounts::resolve(&staging),
            target: mounts::resolve(&target),
            read_only: r.readonly || check::read_only_mode(cap),
        };
        let _one = self.busy.lock().await;
        let staged = self
            .records::<Staged>("staged")
            .into_iter()
            .find(|s| s.staging == p.staging && s.volume_id == p.volume_id)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "volume {id} is not staged at {}",
                    p.staging.display()
                ))
            })?;
        if !Self::mounted_ok(&p.staging)? {
            // Its client died: mount it again first.
            tokio::task::block_in_place(|| self.mount_volume(&staged))?;
        }
        if let Some(old) = self
            .records::<Published>("published")
            .into_iter()
            .find(|o| o.target == p.target)
        {
            if old != p {
                return Err(Status::already_exists(format!(
                    "{} is published with other settings (volume {}, read-only {})",
                    p.target.display(),
                    old.volume_id,
                    old.read_only
                )));
            }
        }
        let bound = mounts::mount_at(&p.target)
            .map_err(|e| internal("reading mounts", e))?
            .is_some();
        if !bound || !mounts::answers(&p.target) {
            Self::bind(&p)?;
        }
        self.save("published", &p.target, &p)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        check::volume_id(&r.volume_id)?;
        let target = mounts::resolve(&check::path("target_path", &r.target_path)?);
        let _one = self.busy.lock().await;
        mounts::unmount(&target).map_err(|e| internal("unmounting", e))?;
        self.forget("published", &target);
        // The plugin made the target directory: it removes it (only an empty one).
        let _ = std::fs::remove_dir(&target);
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let r = r.into_inner();
        check::volume_id(&r.volume_id)?;
        let path = mounts::resolve(&check::path("volume_path", &r.volume_path)?);
        let mounted = mounts::mount_at(&path)
            .map_err(|e| internal("reading mounts", e))?
            .is_some();
        if !mounted {
            return Err(Status::not_found(format!(
                "no volume is mounted at {}",
                path.display()
            )));
        }
        let s = match mounts::statvfs_within(&path, mounts::ANSWER_WAIT) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Ok(Response::new(NodeGetVolumeStatsResponse {
                    usage: Vec::new(),
                    volume_condition: Some(VolumeCondition {
                        abnormal: true,
                        message: format!(
                            "the volume's mount did not answer within {:?}",
                            mounts::ANSWER_WAIT
                        ),
                    }),
                }))
            }
            Err(e) => {
                return Ok(Response::new(NodeGetVolumeStatsResponse {
                    usage: Vec::new(),
                    volume_condition: Some(VolumeCondition {
                        abnormal: true,
                        message: format!("the volume's mount does not answer: {e}"),
                    }),
                }))
            }
        };
        let f = s.f_frsize as u64;
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        let bytes = VolumeUsage {
            total: n(s.f_blocks as u64 * f),
            available: n(s.f_bavail as u64 * f),
            used: n((s.f_blocks as u64).saturating_sub(s.f_bfree as u64) * f),
            unit: Unit::Bytes as i32,
        };
        let inodes = VolumeUsage {
            total: n(s.f_files as u64),
            available: n(s.f_ffree as u64),
            used: n((s.f_files as u64).saturating_sub(s.f_ffree as u64)),
            unit: Unit::Inodes as i32,
        };
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage: vec![bytes, inodes],
            volume_condition: Some(VolumeCondition {
                abnormal: false,
                message: String::new(),
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        _r: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "a volume grows with its quota: nothing to do on the node",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let caps = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::VolumeCondition,
            rpc::Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(CapType::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn node_get_info(
        &self,
        _r: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_stable_and_distinct() {
        let a = key(Path::new("/var/lib/kubelet/pods/1/volumes/x/mount"));
        assert_eq!(a, key(Path::new("/var/lib/kubelet/pods/1/volumes/x/mount")));
        assert_ne!(a, key(Path::new("/var/lib/kubelet/pods/2/volumes/x/mount")));
        assert!(a.len() < 64 && a.ends_with(".json"));
    }
}
