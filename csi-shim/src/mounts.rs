//! Mount plumbing for the node service: what is mounted where (`/proc/self/mountinfo`),
//! whether a FUSE mount's client still answers, bind mounts and unmounts.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The file system type (`fuse` or `fuse.shoal` for Shoal's mounts, depending on how
    /// they were mounted; a bind mount shows its source's).
    pub fstype: String,
    /// The mount source (`shoal:ADDRS` for Shoal's).
    pub source: String,
}

impl Mount {
    /// Whether it is a Shoal FUSE mount (or a bind mount of one).
    pub fn is_shoal(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with("shoal:")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    // Three octal digits: at most 0o777, of which mountinfo only writes byte values.
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |a, d| a * 8 + (d - b'0') as u32);
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("");
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// What is mounted now.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The mount at exactly `p`, if any (the last one mounted there).
pub fn mount_at(p: &Path) -> io::Result<Option<Mount>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.point == p))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// How long a mount may take to answer statfs before it counts as slow (its client waits
/// for the cluster), which is not dead.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Whether the mount at `p` answers: a FUSE mount whose client died fails with ENOTCONN.
/// Asked with statfs, which the kernel always sends to the client (a stat may be answered
/// from cached attributes); one that is merely slow counts as alive.
pub fn answers(p: &Path) -> bool {
    !matches!(
        statvfs_within(p, ANSWER_WAIT).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOTCONN))
    )
}

/// statvfs(2) of `p` on a thread of its own, waiting at most `limit` (`None`: no answer in
/// time; the thread finishes on its own), so a hung mount never blocks the caller.
pub fn statvfs_within(p: &Path, limit: Duration) -> io::Result<Option<libc::statvfs>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = p.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(statvfs(&path));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// `p` with symlinks resolved (its parent's, if `p` itself cannot be resolved, as for a
/// mount whose client died), as `/proc/self/mountinfo` names mount points.
pub fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    match (p.parent().map(std::fs::canonicalize), p.file_name()) {
        (Some(Ok(d)), Some(name)) => d.join(name),
        _ => p.to_path_buf(),
    }
}

/// statvfs(2) of `p`.
pub fn statvfs(p: &Path) -> io::Result<libc::statvfs> {
    let c = cpath(p)?;
    // SAFETY: a zeroed plain struct the call fills, and a NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0 {
        Ok(s)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bind-mounts `src` at `dst` (an existing directory), read-only if asked.
pub fn bind(src: &Path, dst: &Path, read_only: bool) -> io::Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: mount(2) with NUL-terminated paths and no data.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if read_only {
        // A bind mount takes read-only only on a remount of itself.
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            let _ = unmount(dst);
            return Err(e);
        }
    }
    Ok(())
}

/// Whether the mount at `p` is read-only.
pub fn read_only(p: &Path) -> bool {
    statvfs(p).is_ok_and(|s| s.f_flag & libc::ST_RDONLY != 0)
}

/// Unmounts whatever is mounted at `p`; a mount that is busy or whose client died is detached
/// (lazily unmounted). `Ok(false)`: nothing was mounted there.
pub fn unmount(p: &Path) -> io::Result<bool> {
    let c = cpath(p)?;
    // SAFETY: umount2(2) with a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => {
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(true)
            } else {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
                    _ => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_read_with_escapes() {
        let text =
            "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - fuse.shoal shoal:127.0.0.1:9 rw\n\
                    40 35 98:0 /vol /var/lib/k/pod rw shared:2 - fuse.shoal shoal:x rw,user_id=0\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "fuse.shoal");
        assert_eq!(m[0].source, "shoal:127.0.0.1:9");
        assert_eq!(m[1].point, PathBuf::from("/var/lib/k/pod"));
        assert!(m[0].is_shoal() && m[1].is_shoal());
        let plain = parse_mountinfo("1 2 0:1 / /x rw - fuse sshfs#h:/ rw\n");
        assert!(!plain[0].is_shoal(), "another FUSE file system");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
