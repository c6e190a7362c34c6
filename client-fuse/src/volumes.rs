//! Volumes: directories under `/volumes/` with a quota, as Kubernetes' RWX volumes and
//! `shoal volume` use them. Built on the namespace calls of [`Client`] (the quota is the
//! directory's `shoal.quota.*` xattrs), so a volume is an ordinary tree anyone can inspect.
//!
//! Creating is idempotent: the same name with the same limits answers the existing volume;
//! with other limits it is refused ([`VolumeError::Exists`]), as the CSI spec asks.

use bytes::Bytes;
use shoal_proto::layout::DIR_LAYOUT_XATTR;
use shoal_proto::mds::{FileKind, MakeNodeRequest};
use shoal_proto::quota::{MAX_BYTES, MAX_FILES, RBYTES, RFILES};

use crate::client::Client;
use crate::error::ClientError;

/// The directory under the root that holds the volumes.
pub const VOLUMES_DIR: &str = "volumes";
/// The longest volume name.
pub const NAME_MAX: usize = 128;

const ROOT: u64 = 1;

/// A volume and what it uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// Its name (the directory's, under `/volumes/`).
    pub name: String,
    /// The directory's inode.
    pub ino: u64,
    /// Byte quota (0: none).
    pub max_bytes: u64,
    /// Inode quota (0: none).
    pub max_files: u64,
    /// Bytes its files hold.
    pub used_bytes: u64,
    /// Inodes in it.
    pub files: u64,
}

/// What a volume operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is not one a volume may have.
    #[error("invalid volume name {0:?}: 1 to {NAME_MAX} letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    /// A volume of that name exists with other limits.
    #[error("volume {name:?} exists with {max_bytes} bytes and {max_files} files")]
    Exists {
        /// Its name.
        name: String,
        /// Its byte quota.
        max_bytes: u64,
        /// Its inode quota.
        max_files: u64,
    },
    /// No volume of that name.
    #[error("no volume {0:?}")]
    NotFound(String),
    /// A byte quota of 0 (a volume always has a size).
    #[error("a volume's size must be at least 1 byte")]
    NoSize,
    /// The cluster failed the call.
    #[error(transparent)]
    Cluster(#[from] ClientError),
}

type Result<T> = std::result::Result<T, VolumeError>;

/// Checks a volume name: 1 to [`NAME_MAX`] of `[A-Za-z0-9._-]`, not starting with `.` (so
/// never `.`, `..` or a hidden name) and no `/`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.to_string()))
    }
}

fn errno(r: &std::result::Result<impl Sized, ClientError>) -> i32 {
    r.as_ref().err().map_or(0, |e| e.errno())
}

/// A number an xattr holds, 0 when it is not set.
async fn number(c: &Client, ino: u64, name: &[u8]) -> Result<u64> {
    match c.getxattr(ino, name).await {
        Ok(v) => Ok(std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)),
        Err(e) if e.errno() == libc::ENODATA => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Sets (or, with 0, lifts) a quota xattr, as the administrator.
async fn set_number(c: &Client, ino: u64, name: &[u8], v: u64) -> Result<()> {
    let admin = || {
        Some(shoal_proto::mds::AclCaller {
            groups: Vec::new(),
            privileged: true,
        })
    };
    let r = if v == 0 {
        c.removexattr(ino, name, admin()).await
    } else {
        c.setxattr(ino, name, v.to_string().as_bytes(), 0, admin())
            .await
    };
    match r {
        Err(e) if v == 0 && e.errno() == libc::ENODATA => Ok(()),
        r => Ok(r?),
    }
}

/// A directory `name` in `parent`, made with `perm` if missing: its inode.
async fn ensure_dir(c: &Client, parent: u64, name: &str, perm: u32) -> Result<u64> {
    let made = c
        .make_node(MakeNodeRequest {
            parent,
            name: Bytes::copy_from_slice(name.as_bytes()),
            kind: FileKind::Directory as i32,
            perm,
            exclusive: true,
            ..Default::default()
        })
        .await;
    if errno(&made) == libc::EEXIST {
        let a = c.lookup(parent, name.as_bytes()).await?;
        if a.kind != FileKind::Directory as i32 {
            return Err(ClientError::errno_msg(
                libc::ENOTDIR,
                format!("{name} exists and is not a directory"),
            )
            .into());
        }
        return Ok(a.ino);
    }
    Ok(made?.ino)
}

/// The inode of `/volumes` (made if missing).
async fn volumes_dir(c: &Client) -> Result<u64> {
    ensure_dir(c, ROOT, VOLUMES_DIR, 0o755).await
}

/// Reads volume `name`, whose directory is `ino`.
async fn describe(c: &Client, name: &str, ino: u64) -> Result<Volume> {
    Ok(Volume {
        name: name.to_string(),
        ino,
        max_bytes: number(c, ino, MAX_BYTES).await?,
        max_files: number(c, ino, MAX_FILES).await?,
        used_bytes: number(c, ino, RBYTES).await?,
        files: number(c, ino, RFILES).await?,
    })
}

/// Volume `name`, if it exists.
pub async fn get(c: &Client, name: &str) -> Result<Volume> {
    check_name(name)?;
    let dir = volumes_dir(c).await?;
    let found = c.lookup(dir, name.as_bytes()).await;
    match found {
        Ok(a) if a.kind == FileKind::Directory as i32 => describe(c, name, a.ino).await,
        Ok(_) => Err(VolumeError::NotFound(name.to_string())),
        Err(e) if e.errno() == libc::ENOENT => Err(VolumeError::NotFound(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Creates volume `name` with a quota of `max_bytes` and `max_files` (0: none), its root
/// directory made with `perm` and, if given, the striping `layout` of the files made in it;
/// the same call again answers the existing volume. The byte quota is set last: a volume
/// without one is a create that stopped half way, which the next create finishes.
pub async fn create(
    c: &Client,
    name: &str,
    max_bytes: u64,
    max_files: u64,
    perm: u32,
    layout: Option<&str>,
) -> Result<Volume> {
    check_name(name)?;
    if max_bytes == 0 {
        return Err(VolumeError::NoSize);
    }
    let dir = volumes_dir(c).await?;
    let ino = ensure_dir(c, dir, name, perm).await?;
    let v = describe(c, name, ino).await?;
    if v.max_bytes == 0 {
        // Made now (or by a create that stopped half way): it gets its layout and quota.
        if let Some(l) = layout {
            c.setxattr(ino, DIR_LAYOUT_XATTR.as_bytes(), l.as_bytes(), 0, None)
                .await?;
        }
        set_number(c, ino, MAX_FILES, max_files).await?;
        set_number(c, ino, MAX_BYTES, max_bytes).await?;
        return describe(c, name, ino).await;
    }
    if v.max_bytes != max_bytes || v.max_files != max_files {
        return Err(VolumeError::Exists {
            name: name.to_string(),
            max_bytes: v.max_bytes,
            max_files: v.max_files,
        });
    }
    Ok(v)
}

/// Changes volume `name`'s quota (`max_files` None: unchanged).
pub async fn resize(
    c: &Client,
    name: &str,
    max_bytes: u64,
    max_files: Option<u64>,
) -> Result<Volume> {
    if max_bytes == 0 {
        return Err(VolumeError::NoSize);
    }
    let v = get(c, name).await?;
    set_number(c, v.ino, MAX_BYTES, max_bytes).await?;
    if let Some(f) = max_files {
        set_number(c, v.ino, MAX_FILES, f).await?;
    }
    describe(c, name, v.ino).await
}

/// Every volume, by name.
pub async fn list(c: &Client) -> Result<Vec<Volume>> {
    let dir = volumes_dir(c).await?;
    let mut out = Vec::new();
    for (name, ino, kind) in entries(c, dir).await? {
        if kind != FileKind::Directory as i32 {
            continue;
        }
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        if check_name(&name).is_ok() {
            out.push(describe(c, &name, ino).await?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes volume `name` and everything in it (file data included). Removing a volume
/// that does not exist succeeds (`Ok(false)`).
pub async fn remove(c: &Client, name: &str) -> Result<bool> {
    let v = match get(c, name).await {
        Ok(v) => v,
        Err(VolumeError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    remove_tree(c, v.ino).await?;
    let dir = volumes_dir(c).await?;
    let r = c.unlink(dir, name.as_bytes(), true).await;
    if errno(&r) != libc::ENOENT {
        r?;
    }
    Ok(true)
}

/// The entries of directory `ino`: (name, ino, kind).
async fn entries(c: &Client, ino: u64) -> Result<Vec<(Vec<u8>, u64, i32)>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = c.readdir(ino, after, 1024).await?;
        for e in &page.entries {
            after = after.max(e.cookie);
            out.push((e.name.to_vec(), e.ino, e.kind));
        }
        if page.eof || page.entries.is_empty() {
            return Ok(out);
        }
    }
}

/// Empties directory `ino`: files are unlinked (their data deleted), directories emptied
/// and removed, depth first without recursion.
async fn remove_tree(c: &Client, ino: u64) -> Result<()> {
    // (directory, whether its entries were already removed).
    let mut stack = vec![(ino, false)];
    let mut parents: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            continue;
        }
        stack.push((dir, true));
        for (name, child, kind) in entries(c, dir).await? {
            if kind == FileKind::Directory as i32 {
                parents.push((dir, child, name));
                stack.push((child, false));
            } else {
                let r = c.unlink(dir, &name, false).await;
                if errno(&r) != libc::ENOENT {
                    r?;
                }
            }
        }
    }
    // Deepest first: each directory was pushed after its parent.
    for (parent, _, name) in parents.into_iter().rev() {
        let r = c.unlink(parent, &name, true).await;
        if errno(&r) != libc::ENOENT {
            r?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_plain_and_bounded() {
        for ok in [
            "a",
            "pvc-0f3c2a1e-9a4b-4c6d-8e2f-1a2b3c4d5e6f",
            "db_1.data",
            "X-9",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(NAME_MAX + 1);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(
                matches!(check_name(bad), Err(VolumeError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(check_name(&"a".repeat(NAME_MAX)).is_ok());
    }
}
