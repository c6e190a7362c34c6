//! Quotas on directory trees, as CephFS has them: a directory with a quota is a *realm*; every
//! inode below it records the nearest realm above it (`Attr.realm`), and each realm keeps what
//! its tree uses (`Quota.rbytes`, the sizes of its regular files; `rfiles`, its inodes) and
//! the realm it sits in (`Quota.parent`). A change charges the inode's realm and every realm
//! above it, in the same transaction, and one that would take any of them past a limit fails
//! with EDQUOT. Inodes outside every realm (realm 0) cost nothing.
//!
//! Set through virtual xattrs on a directory: `shoal.quota.max_bytes`, `shoal.quota.max_files`
//! (decimal; 0 or removing it: no limit); read `shoal.dir.rbytes` and `shoal.dir.rfiles` on any
//! directory (kept for realms, counted by a walk of the tree for others). A directory becomes
//! a realm when a first limit is set on it (its tree is walked once to count it and to tag
//! its inodes; a tree holding a file with several links is refused), and stays one until it
//! is removed. Only a privileged caller (root) changes a limit. Hard links and renames of directories
//! between realms fail with EXDEV (as in CephFS; `mv` copies instead); other renames move
//! their usage.
//! Usage is counted from the sizes the MDS has: the service revokes other sessions' write
//! leases on the tree ([`in_tree`]) before it reads the usage or sets a limit.

use prost::Message;
use shoal_proto::mds::{self as pb, Attr, FileKind};

use super::{be, fs, is_dir, Txn};
use crate::error::MdsError;
use crate::store::Cf;

pub use shoal_proto::quota::{is_quota_xattr, MAX_BYTES, MAX_FILES, RBYTES, RFILES};

/// Inodes a walk of a tree visits at most (setting a first quota, or reading the usage of a
/// directory that is not a realm): larger trees get their quota before they fill up.
pub const WALK_MAX: u64 = 200_000;

/// Realms above one another at most: deeper chains are corrupt.
const CHAIN_MAX: usize = 1000;

/// The quota of directory `ino`, if it is a realm.
pub(super) fn realm(t: &Txn<'_>, ino: u64) -> Result<Option<pb::Quota>, MdsError> {
    t.get(Cf::Quotas, &be(ino))?
        .map(|b| {
            pb::Quota::decode(b.as_slice())
                .map_err(|e| MdsError::Corrupt(format!("quota of {ino}: {e}")))
        })
        .transpose()
}

fn put_realm(t: &mut Txn<'_>, ino: u64, q: &pb::Quota) {
    t.put(Cf::Quotas, &be(ino), q.encode_to_vec());
}

/// The realm the entries of directory `dir` count in.
pub(super) fn child_realm(t: &Txn<'_>, dir: &Attr) -> Result<u64, MdsError> {
    Ok(if realm(t, dir.ino)?.is_some() {
        dir.ino
    } else {
        dir.realm
    })
}

/// `realm` and the realms above it, innermost first.
fn chain(t: &Txn<'_>, mut realm_ino: u64) -> Result<Vec<(u64, pb::Quota)>, MdsError> {
    let mut out = Vec::new();
    while realm_ino != 0 {
        if out.len() >= CHAIN_MAX {
            return Err(MdsError::Corrupt("quota realms nest too deep".into()));
        }
        // A realm whose record is gone (its directory was removed) ends the chain: counting
        // stops there rather than failing the entry on every member.
        let Some(q) = realm(t, realm_ino)? else {
            tracing::warn!(realm = realm_ino, "an inode counts in a realm that is gone");
            break;
        };
        let parent = q.parent;
        out.push((realm_ino, q));
        realm_ino = parent;
    }
    Ok(out)
}

fn add(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d as u64)
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

/// Charges `bytes` and `files` (either may be negative) to `realm` and the realms above it.
/// With `enforce`, a growth past any of their limits fails with EDQUOT and charges nothing.
pub(super) fn charge(
    t: &mut Txn<'_>,
    realm_ino: u64,
    bytes: i64,
    files: i64,
    enforce: bool,
) -> Result<(), MdsError> {
    if realm_ino == 0 || (bytes == 0 && files == 0) {
        return Ok(());
    }
    let realms = chain(t, realm_ino)?;
    if enforce {
        for (ino, q) in &realms {
            if bytes > 0 && q.max_bytes > 0 && q.rbytes.saturating_add(bytes as u64) > q.max_bytes {
                return fs(
                    libc::EDQUOT,
                    format!("over the byte quota of directory {ino} ({})", q.max_bytes),
                );
            }
            if files > 0 && q.max_files > 0 && q.rfiles.saturating_add(files as u64) > q.max_files {
                return fs(
                    libc::EDQUOT,
                    format!("over the file quota of directory {ino} ({})", q.max_files),
                );
            }
        }
    }
    for (ino, mut q) in realms {
        q.rbytes = add(q.rbytes, bytes);
        q.rfiles = add(q.rfiles, files);
        put_realm(t, ino, &q);
    }
    Ok(())
}

/// What an inode counts for in its realm: its size if a regular file, and itself.
pub(super) fn usage_of(a: &Attr) -> i64 {
    if a.kind == FileKind::Regular as i32 {
        a.size.min(i64::MAX as u64) as i64
    } else {
        0
    }
}

/// Bytes a file in `realm` may still grow by: what the tightest byte quota above it has
/// left (`None`: no byte quota).
pub(super) fn room(t: &Txn<'_>, realm_ino: u64) -> Result<Option<u64>, MdsError> {
    Ok(chain(t, realm_ino)?
        .iter()
        .filter(|(_, q)| q.max_bytes > 0)
        .map(|(_, q)| q.max_bytes.saturating_sub(q.rbytes))
        .min())
}

/// The innermost realm with a limit that `ino` is in (itself, for a directory with a quota):
/// (its quota) for statfs.
pub(super) fn limiting(t: &Txn<'_>, a: &Attr) -> Result<Option<pb::Quota>, MdsError> {
    let start = if is_dir(a) {
        child_realm(t, a)?
    } else {
        a.realm
    };
    Ok(chain(t, start)?
        .into_iter()
        .map(|(_, q)| q)
        .find(|q| q.max_bytes > 0 || q.max_files > 0))
}

/// The entries of directory `dir`: (ino) of each.
fn children(t: &Txn<'_>, dir: u64) -> Result<Vec<u64>, MdsError> {
    let prefix = be(dir);
    t.db.scan(Cf::DirIndex, &prefix, &prefix)
        .map(|r| {
            r.and_then(|(_, v)| {
                super::u64_at(&v, 0).map_err(|_| MdsError::Corrupt("dir index entry".into()))
            })
        })
        .collect()
}

/// Walks the tree below `dir`, calling `visit` on each inode once (hard links once) down to,
/// but not into, realms other than `dir`'s own. Returns (bytes, inodes) below `dir`,
/// counting nested realms by their records. At most [`WALK_MAX`] inodes; a file with several
/// links is EMLINK (it could count in two trees).
fn walk(
    t: &Txn<'_>,
    dir: u64,
    mut visit: impl FnMut(&Attr, Option<pb::Quota>),
) -> Result<(u64, u64), MdsError> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![dir];
    while let Some(d) = todo.pop() {
        for ino in children(t, d)? {
            if !seen.insert(ino) {
                continue;
            }
            if seen.len() as u64 > WALK_MAX {
                return fs(
                    libc::E2BIG,
                    format!("more than {WALK_MAX} inodes below directory {dir}"),
                );
            }
            let a = t.inode(ino)?;
            if !is_dir(&a) && a.nlink > 1 {
                return fs(
                    libc::EMLINK,
                    format!(
                        "inode {ino} below directory {dir} has several links: \
                         a quota needs each file in one tree"
                    ),
                );
            }
            files += 1;
            bytes += usage_of(&a) as u64;
            let nested = if is_dir(&a) { realm(t, ino)? } else { None };
            if let Some(q) = &nested {
                bytes += q.rbytes;
                files += q.rfiles;
            } else if is_dir(&a) {
                todo.push(ino);
            }
            visit(&a, nested);
        }
    }
    Ok((bytes, files))
}

/// Which of `inos` are in the tree of directory `dir` (itself included): by their realm
/// chains if `dir` is a realm, otherwise by a walk of the tree (and the chains of the realms
/// nested in it, which the walk does not enter).
pub(super) fn in_tree(t: &Txn<'_>, dir: u64, inos: &[u64]) -> Result<Vec<u64>, MdsError> {
    use std::collections::HashSet;
    let mut found = HashSet::new();
    let mut realms = HashSet::new();
    if realm(t, dir)?.is_some() {
        realms.insert(dir);
    } else {
        let wanted: HashSet<u64> = inos.iter().copied().collect();
        walk(t, dir, |a, nested| {
            if wanted.contains(&a.ino) {
                found.insert(a.ino);
            }
            if nested.is_some() {
                realms.insert(a.ino);
            }
        })?;
    }
    let mut out = Vec::new();
    for &ino in inos {
        let below = if ino == dir || found.contains(&ino) {
            true
        } else if realms.is_empty() {
            false
        } else {
            match t.inode_if_any(ino)? {
                Some(a) => chain(t, a.realm)?.iter().any(|(r, _)| realms.contains(r)),
                None => false,
            }
        };
        if below {
            out.push(ino);
        }
    }
    Ok(out)
}

/// `shoal.dir.rbytes` / `shoal.dir.rfiles` and the limits, as read by getxattr.
pub(super) fn get(t: &Txn<'_>, a: &Attr, name: &[u8]) -> Result<Vec<u8>, MdsError> {
    if !is_dir(a) {
        return fs(libc::ENODATA, "quotas and tree usage are on directories");
    }
    let q = realm(t, a.ino)?;
    let value = match (name, &q) {
        (MAX_BYTES, Some(q)) if q.max_bytes > 0 => q.max_bytes,
        (MAX_FILES, Some(q)) if q.max_files > 0 => q.max_files,
        (MAX_BYTES | MAX_FILES, _) => return fs(libc::ENODATA, "no such quota"),
        (RBYTES, Some(q)) => q.rbytes,
        (RFILES, Some(q)) => q.rfiles,
        _ => {
            let (bytes, files) = walk(t, a.ino, |_, _| {})?;
            if name == RBYTES {
                bytes
            } else {
                files
            }
        }
    };
    Ok(value.to_string().into_bytes())
}

/// Sets (`value` Some) or removes a limit on directory `a`; a first limit makes it a realm.
pub(super) fn set(
    t: &mut Txn<'_>,
    mut a: Attr,
    name: &[u8],
    value: Option<&[u8]>,
    caller: Option<&pb::AclCaller>,
    now: &pb::Timespec,
) -> Result<Attr, MdsError> {
    if name == RBYTES || name == RFILES {
        return fs(libc::EPERM, "tree usage is read only");
    }
    if !caller.is_some_and(|c| c.privileged) {
        return fs(libc::EPERM, "only root changes quotas");
    }
    if !is_dir(&a) {
        return fs(libc::EINVAL, "quotas are set on directories");
    }
    let limit = match value {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .map(|s| s.trim_end_matches('\0').trim())
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| MdsError::fs(libc::EINVAL, "a quota is a decimal number"))?,
        None => 0,
    };
    let mut q = match realm(t, a.ino)? {
        Some(q) => q,
        None if value.is_none() => return fs(libc::ENODATA, "no such quota"),
        None if limit == 0 => return Ok(a),
        None => {
            // A new realm: tag every inode of the tree with it and count what it holds
            // (its usage already counts in the realms above, through it from now on).
            let mut tagged = Vec::new();
            let mut nested = Vec::new();
            let (rbytes, rfiles) = walk(t, a.ino, |child, q| {
                if let Some(q) = q {
                    nested.push((child.ino, q));
                }
                tagged.push(*child);
            })?;
            for mut c in tagged {
                c.realm = a.ino;
                t.put_inode(&c);
            }
            for (ino, mut nq) in nested {
                nq.parent = a.ino;
                put_realm(t, ino, &nq);
            }
            pb::Quota {
                max_bytes: 0,
                max_files: 0,
                rbytes,
                rfiles,
                parent: a.realm,
            }
        }
    };
    if name == MAX_BYTES {
        q.max_bytes = limit;
    } else {
        q.max_files = limit;
    }
    put_realm(t, a.ino, &q);
    a.ctime = Some(*now);
    t.put_inode(&a);
    Ok(a)
}

/// A directory that is removed takes its realm record with it.
pub(super) fn forget(t: &mut Txn<'_>, ino: u64) {
    t.delete(Cf::Quotas, &be(ino));
}
