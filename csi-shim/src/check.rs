//! Argument checks: every RPC validates what it is given before it touches anything, and a bad
//! argument is INVALID_ARGUMENT with a message saying which and why.

use std::path::{Component, Path, PathBuf};

use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_proto::csi::volume_capability::AccessType;
use shoal_proto::csi::VolumeCapability;
use tonic::Status;

/// File system types a volume capability may name: Shoal mounts are FUSE mounts.
const FS_TYPES: [&str; 3] = ["", "shoal", "fuse.shoal"];

/// The longest path accepted.
const PATH_MAX: usize = 4095;

/// A volume id: a volume name (`shoal_client::volumes::check_name`), so it cannot walk out of
/// `/volumes/`.
pub fn volume_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    shoal_client::volumes::check_name(id)
        .map_err(|e| Status::invalid_argument(format!("volume_id: {e}")))?;
    Ok(id)
}

/// A path the CO hands over (staging or target): absolute, without `..`, not too long.
pub fn path(what: &str, p: &str) -> Result<PathBuf, Status> {
    if p.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    let path = Path::new(p);
    if !path.is_absolute() || p.len() > PATH_MAX || p.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{what} must be an absolute path: {p:?}"
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Status::invalid_argument(format!(
            "{what} must not contain '..': {p:?}"
        )));
    }
    Ok(path.to_path_buf())
}

/// Why a capability cannot be served, if it cannot.
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    match &cap.access_type {
        Some(AccessType::Mount(m)) if FS_TYPES.contains(&m.fs_type.as_str()) => {}
        Some(AccessType::Mount(m)) => {
            return Some(format!(
                "fs_type {:?}: Shoal volumes are mounted as fuse.shoal",
                m.fs_type
            ))
        }
        Some(AccessType::Block(_)) => {
            return Some("block access: Shoal volumes are file systems".into())
        }
        None => return Some("a capability needs an access type (mount)".into()),
    }
    let mode = cap.access_mode.as_ref().map(|m| m.mode());
    match mode {
        None | Some(Mode::Unknown) => Some("a capability needs an access mode".into()),
        Some(_) => None,
    }
}

/// A required list of capabilities, all of them supported.
pub fn capabilities(caps: &[VolumeCapability]) -> Result<(), Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities are required"));
    }
    for c in caps {
        capability(Some(c))?;
    }
    Ok(())
}

/// A required capability, supported.
pub fn capability(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    match unsupported(cap) {
        Some(why) => Err(Status::invalid_argument(format!(
            "unsupported volume capability: {why}"
        ))),
        None => Ok(cap),
    }
}

/// Whether a capability asks for read-only access.
pub fn read_only_mode(cap: &VolumeCapability) -> bool {
    matches!(
        cap.access_mode.as_ref().map(|m| m.mode()),
        Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: access,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn mount(fs: &str) -> Option<AccessType> {
        Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn ids_and_paths_cannot_escape() {
        assert!(volume_id("pvc-1234").is_ok());
        for bad in ["", "..", "../etc", "a/b", ".hidden"] {
            assert_eq!(
                volume_id(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
        assert!(path("target_path", "/var/lib/kubelet/pods/x/mount").is_ok());
        for bad in ["", "relative/p", "/a/../../etc", "/a/\0b"] {
            assert_eq!(
                path("target_path", bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mount_capabilities_in_every_mode_are_served_and_block_is_not() {
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            assert_eq!(unsupported(&cap(mount(""), mode)), None, "{mode:?}");
        }
        assert!(unsupported(&cap(mount("ext4"), Mode::MultiNodeMultiWriter)).is_some());
        let block = Some(AccessType::Block(BlockVolume {}));
        assert!(unsupported(&cap(block, Mode::SingleNodeWriter)).is_some());
        assert!(unsupported(&cap(mount(""), Mode::Unknown)).is_some());
        assert!(capabilities(&[]).is_err());
        assert!(read_only_mode(&cap(mount(""), Mode::MultiNodeReaderOnly)));
        assert!(!read_only_mode(&cap(mount(""), Mode::MultiNodeMultiWriter)));
    }
}
