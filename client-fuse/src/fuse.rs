//! The FUSE face of the client: each kernel request is handed to a tokio task that calls
//! [`Client`] and replies from there, so slow I/O never blocks the FUSE dispatch threads.
//!
//! Inode numbers are the MDS's; FUSE's root (1) is the MDS root. Directory offsets are the
//! MDS's stable readdir cookies; 1 and 2 are "." and "..".

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use shoal_proto::limits::check_name;
use shoal_proto::mds::{
    AclCaller, Attr, DirEntry, FileKind, LockKind, MakeNodeRequest, RenameRequest, SetAttrRequest,
    SetTime, Timespec,
};
use tracing::warn;

use crate::client::{Client, LockArgs};
use crate::error::ClientError;

/// Largest write the kernel sends us in one request.
pub const MAX_WRITE: u32 = 1 << 20;
/// Requests the kernel keeps in flight in the background (readahead, asynchronous direct
/// I/O, writeback) before it makes callers wait; its default is 12.
const MAX_BACKGROUND: u16 = 64;
/// How long a close() waits for the MDS to take the file's new size.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Directory entries fetched from the MDS per readdir call.
const READDIR_PAGE: u32 = 1024;

/// The mounted filesystem.
pub struct ShoalFs {
    client: Arc<Client>,
    rt: tokio::runtime::Handle,
    /// Pushes invalidations into the kernel's caches; set once the session exists.
    notifier: Arc<OnceLock<Notifier>>,
}

fn ts_to_system(t: Option<Timespec>) -> SystemTime {
    let t = t.unwrap_or_default();
    let nsec = Duration::from_nanos(t.nsec.min(999_999_999) as u64);
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.sec as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + nsec
    }
}

fn system_to_ts(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime {
            now: true,
            time: None,
        },
        TimeOrNow::SpecificTime(t) => SetTime {
            now: false,
            time: Some(system_to_ts(t)),
        },
    })
}

/// A directory's parent from its attributes (ENOTDIR if they are not a directory's).
fn dir_parent(a: &Attr) -> Result<u64, Errno> {
    if a.kind == FileKind::Directory as i32 {
        Ok(a.parent.max(1))
    } else {
        Err(Errno::ENOTDIR)
    }
}

/// Adds "." (at offset 0) and ".." of directory `ino` to a listing from `offset`; true if the
/// kernel's buffer is full.
fn add_dots(c: &Client, ino: u64, parent: u64, offset: u64, reply: &mut ReplyDirectory) -> bool {
    let (me, parent) = if ino == c.root() {
        (1, 1)
    } else {
        (c.kernel_ino(ino), c.kernel_ino(parent))
    };
    (offset == 0 && reply.add(INodeNo(me), 1, FileType::Directory, "."))
        || reply.add(INodeNo(parent), 2, FileType::Directory, "..")
}

/// Answers a readdir of `ino` from `offset` out of listing `(id, entries)` taken here;
/// `parent`: its parent, needed only from offsets 0 and 1.
fn fill_listing(
    c: &Client,
    ino: u64,
    parent: Result<u64, Errno>,
    (id, list): &(u64, crate::listings::Entries),
    offset: u64,
    mut reply: ReplyDirectory,
) {
    if offset < 2 {
        let parent = match parent {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if add_dots(c, ino, parent, offset, &mut reply) {
            return reply.ok();
        }
    }
    let from = crate::listings::position(offset).map_or(0, |(_, at)| at);
    for (i, e) in list.iter().enumerate().skip(from) {
        match add_entry(c, &mut reply, e, crate::listings::offset(*id, i)) {
            Ok(false) => {}
            Ok(true) => break,
            Err(err) => return reply.error(errno(&err)),
        }
    }
    reply.ok()
}

/// Adds entry `e` to a listing at offset `at`; true if the kernel's buffer is full (it was
/// not added).
fn add_entry(
    c: &Client,
    reply: &mut ReplyDirectory,
    e: &DirEntry,
    at: u64,
) -> Result<bool, ClientError> {
    let kind = file_type(e.kind)?;
    let child = INodeNo(c.kernel_ino(e.ino));
    Ok(reply.add(child, at, kind, OsStr::from_bytes(&e.name)))
}

fn file_type(kind: i32) -> Result<FileType, ClientError> {
    Ok(match FileKind::try_from(kind) {
        Ok(FileKind::Regular) => FileType::RegularFile,
        Ok(FileKind::Directory) => FileType::Directory,
        Ok(FileKind::Symlink) => FileType::Symlink,
        Ok(FileKind::Fifo) => FileType::NamedPipe,
        Ok(FileKind::CharDevice) => FileType::CharDevice,
        Ok(FileKind::BlockDevice) => FileType::BlockDevice,
        Ok(FileKind::Socket) => FileType::Socket,
        Ok(FileKind::Unspecified) | Err(_) => {
            return Err(ClientError::Protocol(format!("unknown file kind {kind}")))
        }
    })
}

fn kind_of_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::Regular,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFSOCK => FileKind::Socket,
        _ => return None,
    })
}

/// Converts the MDS's attributes to FUSE's, refusing malformed ones.
pub fn fuse_attr(a: &Attr) -> Result<FileAttr, ClientError> {
    Ok(FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: ts_to_system(a.atime),
        mtime: ts_to_system(a.mtime),
        ctime: ts_to_system(a.ctime),
        crtime: ts_to_system(a.ctime),
        kind: file_type(a.kind)?,
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: MAX_WRITE,
        flags: 0,
    })
}

fn errno(e: &ClientError) -> Errno {
    match e {
        ClientError::Errno { .. } => {}
        ClientError::Unavailable { .. } | ClientError::Protocol(_) | ClientError::Evicted(_) => {
            warn!(error = %e, "request failed");
        }
    }
    Errno::from_i32(e.errno())
}

fn name_ok(name: &OsStr) -> Result<Vec<u8>, ClientError> {
    check_name(name.as_bytes()).map_err(|e| ClientError::errno_msg(e, "invalid name"))?;
    Ok(name.as_bytes().to_vec())
}

impl ShoalFs {
    /// A filesystem served by `client`, its work run on `rt`.
    /// `notifier`: where the mount puts the session's notifier once it has one (the lease
    /// stream reads it to drop the kernel's caches on revocations).
    pub fn new(
        client: Arc<Client>,
        rt: tokio::runtime::Handle,
        notifier: Arc<OnceLock<Notifier>>,
    ) -> ShoalFs {
        ShoalFs {
            client,
            rt,
            notifier,
        }
    }

    /// The cluster's inode for the kernel's `ino` (the mount's root is the volume's).
    fn cluster_ino(&self, ino: INodeNo) -> INodeNo {
        INodeNo(self.client.cluster_ino(ino.0))
    }

    /// A mount of a volume cannot change quotas (its own would be the first thing its
    /// users lift): EPERM there; elsewhere the MDS lets root change them.
    fn quota_change_allowed(&self, name: &[u8]) -> Result<(), Errno> {
        if is_quota(name) && self.client.root() != 1 {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// An unlink (`dir`: rmdir): answered here when the mount makes it under the directory's
    /// lease, else on the runtime.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let parent = self.cluster_ino(parent);
        let name = name.as_bytes().to_vec();
        let _rt = self.rt.enter();
        if self.client.unlink_at_once(parent.0, &name, dir) {
            return reply.ok();
        }
        self.go(move |c| async move { reply_empty(reply, c.unlink(parent.0, &name, dir).await) });
    }

    fn go<F>(&self, f: impl FnOnce(Arc<Client>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f(self.client.clone()));
    }

    /// Creates a non-regular node; `node` is (kind, mode, rdev, symlink target).
    fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        node: NewNode<'_>,
        reply: ReplyEntry,
    ) {
        let NewNode {
            kind,
            mode,
            umask,
            rdev,
            target,
        } = node;
        let name = match name_ok(name) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(&e)),
        };
        let mk = MakeNodeRequest {
            parent: parent.0,
            name: name.into(),
            kind: kind as i32,
            perm: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            target: Bytes::copy_from_slice(target),
            exclusive: true,
            umask,
            ..Default::default()
        };
        let r = EntryReplier { dir: parent.0 };
        // (What it queues is sent by a task on the runtime.)
        let _rt = self.rt.enter();
        if let Some(a) = self.client.make_at_once(&mk) {
            return r.reply(&self.client, reply, Ok(a));
        }
        self.go(move |c| async move { r.reply(&c, reply, c.make_node(mk).await) });
    }
}

/// A node to make: its kind, the mode and umask of the call, its device number and a
/// symlink's target.
struct NewNode<'a> {
    kind: FileKind,
    mode: u32,
    umask: u32,
    rdev: u32,
    target: &'a [u8],
}

/// Replies to entry requests in directory `dir` (0: none, the kernel keeps no entry) from
/// tasks, which cannot borrow the filesystem: the kernel keeps the entry while the mount's
/// lease on the directory lasts and the attributes while the inode's does (see
/// [`crate::dentries`] for how it drops them sooner).
struct EntryReplier {
    dir: u64,
}

impl EntryReplier {
    fn reply(&self, c: &Client, reply: ReplyEntry, r: Result<Attr, ClientError>) {
        match r.and_then(|a| kernel_attr(c, &a)) {
            Ok((a, ttl)) => {
                let entry_ttl = c.entry_ttl(self.dir);
                reply.entry_with_ttls(&ttl, &entry_ttl, &a, Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// `name` is not in the directory, as the lease on it tells: the kernel keeps the absence
    /// too (an entry of inode 0) while the lease lasts.
    fn absent(&self, c: &Client, reply: ReplyEntry) {
        let ttl = c.entry_ttl(self.dir);
        if ttl.is_zero() {
            return reply.error(Errno::ENOENT);
        }
        let none = Attr {
            kind: FileKind::Regular as i32,
            ..Attr::default()
        };
        match fuse_attr(&none) {
            Ok(a) => reply.entry_with_ttls(&Duration::ZERO, &ttl, &a, Generation(0)),
            Err(_) => reply.error(Errno::ENOENT),
        }
    }
}

/// The kernel's view of `a` (inode numbers as the mount shows them) and how long it may keep
/// it (what is left of the lease on it).
fn kernel_attr(c: &Client, a: &Attr) -> Result<(FileAttr, Duration), ClientError> {
    let mut fa = fuse_attr(a)?;
    fa.ino = INodeNo(c.kernel_ino(a.ino));
    Ok((fa, c.ttl(a.ino)))
}

/// Who sets an access ACL, for the MDS's setgid rule. FUSE passes the caller's fsuid, fsgid
/// and pid but not its supplementary groups (the kernel's FUSE_SETXATTR_EXT flag that would
/// carry the verdict is not parsed by fuser), so they are read from `/proc/PID/status`; a
/// caller gone by then counts with its fsgid only.
/// Whether `name` sets a quota limit (which needs a privileged caller).
fn is_quota(name: &[u8]) -> bool {
    shoal_proto::quota::is_limit(name)
}

fn acl_caller(req: &Request) -> AclCaller {
    let mut groups = vec![req.gid()];
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) {
        if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
            groups.extend(
                line.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
    }
    AclCaller {
        groups,
        privileged: req.uid() == 0,
    }
}

/// The kernel's lock request as Shoal's; None for an unknown lock type.
fn lock_args(owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Option<LockArgs> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return None,
    };
    // The kernel says "to the end of the file" with OFFSET_MAX (i64::MAX).
    let end = if end >= i64::MAX as u64 {
        u64::MAX
    } else {
        end
    };
    Some(LockArgs {
        owner: owner.0,
        start,
        end: end.max(start),
        kind,
        pid,
    })
}

/// Takes a lock; with `sleep` (F_SETLKW, flock without LOCK_NB) waits for conflicting
/// locks to go, until it is granted or the process gets a signal (EINTR). While it waits it
/// polls with GetLock, a read, and proposes the lock (a Raft entry) again only once nothing
/// conflicts. fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, so the process's
/// pending signals are read from /proc instead.
async fn lock_waiting(
    c: &Client,
    fh: u64,
    ino: u64,
    args: LockArgs,
    sleep: bool,
) -> Result<(), ClientError> {
    loop {
        match c.set_lock(fh, ino, args).await {
            Err(e) if sleep && e.errno() == libc::EAGAIN => {}
            other => return other,
        }
        let mut backoff = Duration::from_millis(5);
        loop {
            if signal_pending(args.pid) {
                return Err(ClientError::errno_msg(
                    libc::EINTR,
                    "interrupted while waiting for a lock",
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
            if c.get_lock(ino, args).await?.kind == LockKind::Unlock as i32 {
                break;
            }
        }
    }
}

/// Whether process `pid` has a signal pending that it does not block (or is gone).
fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

/// After a lock is granted: what other clients wrote before they unlocked must be what this
/// process sees. Drops the kernel's cached pages and attributes of the file and pushes its
/// current size (a write with O_APPEND uses the kernel's idea of the size, which otherwise
/// lasts until the attribute timeout). The kernel takes a size only with data, so the file's
/// last byte is stored into its cache.
async fn refresh_kernel_view(c: &Client, notifier: Option<&Notifier>, ino: u64) {
    let Some(n) = notifier.cloned() else { return };
    // Notifications can wait for the kernel's page locks, held by reads this mount serves:
    // never on a runtime thread.
    let inval = n.clone();
    let kino = INodeNo(c.kernel_ino(ino));
    let dropped = tokio::task::spawn_blocking(move || inval.inval_inode(kino, 0, 0));
    if let Ok(Err(e)) = dropped.await {
        warn!(ino, error = %e, "cannot invalidate the kernel's cache after a lock");
    }
    match c.tail(ino).await {
        Ok((size, last)) if !last.is_empty() => {
            // An inode the kernel has dropped meanwhile is fine (ENOENT).
            let stored = tokio::task::spawn_blocking(move || n.store(kino, size - 1, &last));
            let _ = stored.await;
        }
        Ok(_) => {}
        Err(e) => warn!(ino, error = %e, "cannot refresh a locked file's size"),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), ClientError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// The MDS revoked this mount's leases on `ino`: a write lease's size goes to the MDS, then
/// the kernel drops its cached attributes and pages of `ino`.
pub async fn on_revoke(c: &Client, notifier: Option<Notifier>, ino: u64) {
    if let Err(e) = c.revoked(ino).await {
        warn!(ino, error = %e, "cannot send a file's size for a revoked write lease");
    }
    let Some(n) = notifier else { return };
    let ino = c.kernel_ino(ino);
    // The kernel may have to wait for a call in flight on the pages: not on a runtime
    // thread. Its entries went with the lease (`Client::mark_revoked`).
    let done = tokio::task::spawn_blocking(move || {
        let _ = n.inval_inode(INodeNo(ino), 0, 0);
    });
    let _ = done.await;
}

/// The mode `a` is left with once the change `caller` makes clears setuid, and setgid where
/// group-execute makes it one or the caller is neither in the file's group nor privileged
/// (as Linux does): what a write, truncate or fallocate by an unprivileged caller clears, and
/// a chown of anything but a directory. None: nothing to clear.
fn privs_to_kill(a: &Attr, chown: bool, caller: &AclCaller) -> Option<u32> {
    const S_ISUID: u32 = 0o4000;
    const S_ISGID: u32 = 0o2000;
    const S_IXGRP: u32 = 0o0010;
    if chown && a.kind == FileKind::Directory as i32 {
        return None;
    }
    let mut kill = a.perm & S_ISUID;
    if a.perm & S_ISGID != 0
        && (a.perm & S_IXGRP != 0 || !(caller.privileged || caller.groups.contains(&a.gid)))
    {
        kill |= S_ISGID;
    }
    (kill != 0).then_some(a.perm & 0o7777 & !kill)
}

/// [`privs_to_kill`] for a change by `req`, which looks up the caller's groups only for a
/// file that has setuid or setgid (nearly none has).
fn may_kill(a: &Attr, chown: bool, req: &Request) -> Option<u32> {
    if a.perm & 0o6000 == 0 {
        return None;
    }
    privs_to_kill(a, chown, &acl_caller(req))
}

/// Clears `ino`'s setuid and setgid as a change by `caller` calls for (see
/// [`privs_to_kill`]), before the change itself.
async fn kill_privs(c: &Client, ino: u64, caller: &AclCaller) -> Result<(), ClientError> {
    let a = c.getattr(ino).await?;
    if let Some(perm) = privs_to_kill(&a, false, caller) {
        let req = SetAttrRequest {
            ino,
            perm: Some(perm),
            ..Default::default()
        };
        c.setattr(req).await?;
    }
    Ok(())
}

/// Replies with attributes the kernel keeps while the mount's lease on the inode lasts.
fn reply_attr(c: &Client, reply: ReplyAttr, r: Result<Attr, ClientError>) {
    match r.and_then(|a| kernel_attr(c, &a)) {
        Ok((a, ttl)) => reply.attr(&ttl, &a),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, ClientError>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for ShoalFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is best effort: an older kernel simply keeps its default.
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.add_capabilities(
            InitFlags::FUSE_ASYNC_READ
                | InitFlags::FUSE_BIG_WRITES
                | InitFlags::FUSE_PARALLEL_DIROPS,
        );
        // O_DIRECT reads and writes submitted asynchronously (libaio, io_uring) reach the
        // mount together instead of one at a time, up to the background limit; the client
        // answers each from its own task.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        // Shoal clears setuid and setgid itself where a write, a truncate, a fallocate or a
        // chown calls for it (see `privs_to_kill`): the kernel then neither asks for
        // security.capability before every write once an inode was found to have none (it
        // sets SB_NOSEC), nor refreshes the attributes before every chown.
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        let _ = config.set_max_background(MAX_BACKGROUND);
        // The kernel checks POSIX ACLs too, and leaves the umask to Shoal, which applies it
        // only where no default ACL is inherited. Asked for separately: a kernel without ACL
        // support still applies the umask itself, and applying it twice changes nothing.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        // Once the lease on a file ran out, the kernel checks its mtime and size before using
        // cached pages, and drops them if either changed.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        // fcntl and flock locks go to the MDS, which enforces them across clients.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        // File handles (name_to_handle_at, NFS export): they hold the inode number, which is
        // the MDS's and stable across mounts; the kernel resolves one it does not know by
        // looking up "." in it (and ".." for its parent). Not on a volume's mount: a handle
        // could name any inode of the cluster, outside the volume.
        if self.client.root() == 1 {
            let _ = config.add_capabilities(InitFlags::FUSE_EXPORT_SUPPORT);
        }
        Ok(())
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let ino = self.cluster_ino(ino);
        let Some(args) = lock_args(lock_owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        self.go(move |c| async move {
            match c.get_lock(ino.0, args).await {
                Ok(l) => {
                    let typ = match LockKind::try_from(l.kind) {
                        Ok(LockKind::Read) => libc::F_RDLCK,
                        Ok(LockKind::Write) => libc::F_WRLCK,
                        _ => libc::F_UNLCK,
                    };
                    // A lock held on another client names that client's process; "to the
                    // end" goes back to the kernel's OFFSET_MAX (it refuses anything past).
                    let end = l.end.min(i64::MAX as u64);
                    reply.locked(l.start, end, typ, l.pid)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.cluster_ino(ino);
        let Some(args) = lock_args(lock_owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let notifier = self.notifier.clone();
        self.go(move |c| async move {
            let r = lock_waiting(&c, fh.0, ino.0, args, sleep).await;
            if r.is_ok() && args.kind != LockKind::Unlock {
                refresh_kernel_view(&c, notifier.get(), ino.0).await;
            }
            reply_empty(reply, r)
        });
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = self.cluster_ino(parent);
        if name == "." || name == ".." {
            // The kernel asks so only to resolve a file handle: the inode itself, or its
            // directory's parent (the mount's root is its own parent).
            let up = name == "..";
            return self.go(move |c| async move {
                let r = async {
                    let a = c.getattr(parent.0).await?;
                    if !up || a.ino == c.root() {
                        return Ok(a);
                    }
                    if a.kind != FileKind::Directory as i32 {
                        return Err(ClientError::errno_msg(libc::ENOTDIR, "not a directory"));
                    }
                    c.getattr(a.parent.max(1)).await
                }
                .await;
                EntryReplier { dir: 0 }.reply(&c, reply, r)
            });
        }
        let name = match name_ok(name) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(&e)),
        };
        let r = EntryReplier { dir: parent.0 };
        // What the mount knows under its leases is answered here, without a runtime task.
        match self.client.cached_entry(parent.0, &name) {
            Some(Err(e)) if e.errno() == libc::ENOENT => return r.absent(&self.client, reply),
            Some(a) => return r.reply(&self.client, reply, a),
            None => {}
        }
        self.go(move |c| async move { r.reply(&c, reply, c.lookup(parent.0, &name).await) });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = self.cluster_ino(ino);
        if let Some(a) = self.client.cached_attr(ino.0) {
            return reply_attr(&self.client, reply, Ok(a));
        }
        self.go(move |c| async move { reply_attr(&c, reply, c.getattr(ino.0).await) });
    }

    fn setattr(
        &self,
        req_of: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = self.cluster_ino(ino);
        // A chown of a file clears its setuid and setgid, and so does a truncate by a caller
        // without CAP_FSETID (taken to be a caller other than root): with
        // FUSE_HANDLE_KILLPRIV_V2 the kernel leaves that to Shoal.
        let chown = uid.is_some() || gid.is_some();
        let kills = mode.is_none() && (chown || (size.is_some() && req_of.uid() != 0));
        let mut req = SetAttrRequest {
            ino: ino.0,
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            ..Default::default()
        };
        // Attributes not known here: the caller's, to clear what it calls for once they are.
        let mut unknown = None;
        if kills {
            match self.client.cached_attr(ino.0) {
                Some(a) => req.perm = may_kill(&a, chown, req_of),
                None => unknown = Some(acl_caller(req_of)),
            }
        }
        if unknown.is_none() {
            if let Some(a) = self.client.setattr_at_once(&req) {
                return reply_attr(&self.client, reply, Ok(a));
            }
        }
        self.go(move |c| async move {
            if let Some(caller) = unknown {
                match c.getattr(ino.0).await {
                    Ok(a) => req.perm = privs_to_kill(&a, chown, &caller),
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            reply_attr(&c, reply, c.setattr(req).await)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = self.cluster_ino(ino);
        self.go(move |c| async move {
            match c.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let parent = self.cluster_ino(parent);
        match kind_of_mode(mode) {
            Some(FileKind::Directory | FileKind::Symlink) | None => reply.error(Errno::EINVAL),
            Some(kind) => {
                let node = NewNode {
                    kind,
                    mode,
                    umask,
                    rdev,
                    target: &[],
                };
                self.make_node(req, parent, name, node, reply)
            }
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let parent = self.cluster_ino(parent);
        let node = NewNode {
            kind: FileKind::Directory,
            mode,
            umask,
            rdev: 0,
            target: &[],
        };
        self.make_node(req, parent, name, node, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let parent = self.cluster_ino(parent);
        let target = target.as_os_str().as_bytes();
        if target.len() > shoal_proto::limits::SYMLINK_MAX {
            return reply.error(Errno::from_i32(libc::ENAMETOOLONG));
        }
        let node = NewNode {
            kind: FileKind::Symlink,
            mode: 0o777,
            umask: 0,
            rdev: 0,
            target,
        };
        self.make_node(req, parent, link_name, node, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let parent = self.cluster_ino(parent);
        let newparent = self.cluster_ino(newparent);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let new_name = match name_ok(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(&e)),
        };
        let req = RenameRequest {
            parent: parent.0,
            name: Bytes::copy_from_slice(name.as_bytes()),
            new_parent: newparent.0,
            new_name: new_name.into(),
            flags: flags.bits(),
        };
        self.go(move |c| async move { reply_empty(reply, c.rename(req).await) });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let ino = self.cluster_ino(ino);
        let newparent = self.cluster_ino(newparent);
        let name = match name_ok(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(&e)),
        };
        let r = EntryReplier { dir: newparent.0 };
        self.go(
            move |c| async move { r.reply(&c, reply, c.link(ino.0, newparent.0, &name).await) },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.cluster_ino(ino);
        // What the lease holds needs no runtime task.
        if self.client.open_cached(ino.0).is_some() {
            let fh = FileHandle(self.client.cluster().session());
            return reply.opened(fh, FopenFlags::empty());
        }
        self.go(move |c| async move {
            match c.open(ino.0).await {
                // The handle names the session it was opened in (see `Client::handle`).
                Ok(_) => reply.opened(FileHandle(c.cluster().session()), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = self.cluster_ino(ino);
        self.go(move |c| async move {
            match c.read(fh.0, ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ino = self.cluster_ino(ino);
        // The one copy of written data: out of FUSE's request buffer into a shared Bytes that
        // every per-object request slices.
        let data = Bytes::copy_from_slice(data);
        // A write by a caller without CAP_FSETID clears setuid and setgid (the kernel marks
        // it so and leaves that to Shoal, see `init`): rare, so by the runtime.
        // Only a file with either bit (or not known here) needs the caller's groups.
        let caller = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| self.client.cached_attr(ino.0))
            .and_then(|known| match known {
                Some(a) if a.perm & 0o6000 == 0 => None,
                _ => Some(acl_caller(req)),
            });
        let kills = caller.is_some();
        // Kept under the write lease: answered here, without a runtime task.
        let _rt = self.rt.enter();
        if !kills {
            match self.client.write_at_once(fh.0, ino.0, offset, &data) {
                Some(Ok(n)) => return reply.written(n),
                Some(Err(e)) => return reply.error(errno(&e)),
                None => {}
            }
        }
        self.go(move |c| async move {
            if let Some(caller) = caller {
                if let Err(e) = kill_privs(&c, ino.0, &caller).await {
                    return reply.error(errno(&e));
                }
            }
            match c.write(fh.0, ino.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let ino = self.cluster_ino(ino);
        // (What the background sends is spawned on the runtime.)
        let _rt = self.rt.enter();
        if self
            .client
            .close_at_once(fh.0, ino.0, Some(lock_owner.0), false)
            || self.client.close_kept(fh.0, ino.0, lock_owner.0)
        {
            return reply.ok();
        }
        // The kernel flushes on every close of every copy of a descriptor, including the
        // copies a forking process closes at exec. A close waits for the data written here
        // to reach the OSDs (and reports a failure to send it), but for the MDS only briefly:
        // if the MDS is away the size stays dirty here and the flush finishes in the
        // background (fsync and release still wait for it).
        self.go(move |c| async move {
            // A close releases the closing process's fcntl locks on the file (POSIX); their
            // release sends the data and size first.
            if let Err(e) = c.release_locks(fh.0, ino.0, lock_owner.0).await {
                warn!(ino = ino.0, error = %e, "cannot release locks at close");
            }
            if let Err(e) = c.flush_data_at_close(fh.0, ino.0).await {
                return reply.error(errno(&e));
            }
            let task = tokio::spawn(async move { c.flush_handle(fh.0, ino.0).await });
            match tokio::time::timeout(FLUSH_WAIT, task).await {
                Ok(Ok(r)) => reply_empty(reply, r),
                Ok(Err(e)) => reply_empty(
                    reply,
                    Err(ClientError::Protocol(format!("flush task: {e}"))),
                ),
                Err(_) => reply.ok(),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.cluster_ino(ino);
        let _rt = self.rt.enter();
        if self
            .client
            .close_at_once(fh.0, ino.0, lock_owner.map(|o| o.0), true)
            || self
                .client
                .release_kept(fh.0, ino.0, lock_owner.map(|o| o.0))
        {
            return reply.ok();
        }
        self.go(move |c| async move {
            // The last close of an open file releases its flock lock.
            if let Some(owner) = lock_owner {
                if let Err(e) = c.release_locks(fh.0, ino.0, owner.0).await {
                    warn!(ino = ino.0, error = %e, "cannot release a flock lock at close");
                }
            }
            reply_empty(reply, c.release(fh.0, ino.0).await)
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.cluster_ino(ino);
        // Data kept under the write lease goes to the OSDs, then the size to the MDS.
        self.go(move |c| async move { reply_empty(reply, c.fsync_handle(fh.0, ino.0).await) });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.client.open_dir()), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.client.close_dir(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let ino = self.cluster_ino(ino);
        if offset == 0 {
            self.client.dir_changed_here(ino.0);
        }
        // A directory whose entries this mount knows all of is listed here, in a listing the
        // first call takes and later calls name by their offsets (see `crate::listings`), in
        // the FUSE thread where "." and ".." are known too.
        let local = match offset {
            0 => self.client.start_listing(fh.0, ino.0),
            _ => match self.client.listing_at(offset) {
                Some(Ok(l)) => Some(l),
                Some(Err(e)) => return reply.error(errno(&e)),
                None => None,
            },
        };
        let parent = match offset {
            0 | 1 => self.client.cached_attr(ino.0).map(|a| dir_parent(&a)),
            _ => Some(Ok(0)),
        };
        if let (Some(list), Some(parent)) = (&local, parent) {
            return fill_listing(&self.client, ino.0, parent, list, offset, reply);
        }
        self.go(move |c| async move {
            let parent = match offset {
                0 | 1 => match c.getattr(ino.0).await {
                    Ok(a) => dir_parent(&a),
                    Err(e) => return reply.error(errno(&e)),
                },
                _ => Ok(0),
            };
            if let Some(list) = &local {
                return fill_listing(&c, ino.0, parent, list, offset, reply);
            }
            let mut reply = reply;
            let parent = match parent {
                Ok(p) => p,
                Err(e) => return reply.error(e),
            };
            if offset < 2 && add_dots(&c, ino.0, parent, offset, &mut reply) {
                return reply.ok();
            }
            let mut after = if offset <= 2 { 0 } else { offset };
            loop {
                let mut page = match c.readdir_next(ino.0, after, READDIR_PAGE).await {
                    Ok(p) => p,
                    Err(e) => return reply.error(errno(&e)),
                };
                for (i, e) in page.entries.iter().enumerate() {
                    let full = match add_entry(&c, &mut reply, e, e.cookie) {
                        Ok(full) => full,
                        Err(err) => return reply.error(errno(&err)),
                    };
                    if full {
                        // No room: the rest of the page waits for the next call, here.
                        page.entries.drain(..i);
                        c.keep_dir_rest(ino.0, after, page);
                        return reply.ok();
                    }
                    after = e.cookie;
                }
                if page.eof || page.entries.is_empty() {
                    return reply.ok();
                }
            }
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are durable in the MDS log once they landed; those made here
        // under directory leases may still be queued.
        self.go(move |c| async move {
            c.cluster().changes_settled().await;
            reply.ok()
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let ino = self.cluster_ino(ino);
        self.go(move |c| async move {
            match c.statfs(ino.0).await {
                Ok(s) => {
                    const BSIZE: u64 = 4096;
                    // Inodes are only bounded by MDS disk space (unless a quota bounds them);
                    // report a large, stable pool.
                    let inodes = if s.max_files > 0 {
                        s.max_files
                    } else {
                        1 << 32
                    };
                    reply.statfs(
                        s.capacity_bytes / BSIZE,
                        s.free_bytes / BSIZE,
                        s.free_bytes / BSIZE,
                        inodes,
                        inodes.saturating_sub(s.files),
                        BSIZE as u32,
                        shoal_proto::limits::NAME_MAX as u32,
                        BSIZE as u32,
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let ino = self.cluster_ino(ino);
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        if let Err(e) = self.quota_change_allowed(&name) {
            return reply.error(e);
        }
        let caller =
            (name == b"system.posix_acl_access" || is_quota(&name)).then(|| acl_caller(req));
        self.go(move |c| async move {
            let r = c.setxattr(ino.0, &name, &value, flags as u32, caller);
            reply_empty(reply, r.await)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let ino = self.cluster_ino(ino);
        let name = name.as_bytes().to_vec();
        // The kernel asks for security.capability before every write: answered here while
        // the lease holds what the MDS said.
        if let Some(r) = self.client.cached_xattr(ino.0, &name) {
            return reply_xattr(reply, size, r.map(|v| v.to_vec()));
        }
        self.go(move |c| async move {
            reply_xattr(
                reply,
                size,
                c.getxattr(ino.0, &name).await.map(|v| v.to_vec()),
            )
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = self.cluster_ino(ino);
        // As local filesystems do, trusted.* names are listed only to the privileged (the
        // kernel passes FUSE's list through unfiltered; uid 0 stands in for CAP_SYS_ADMIN).
        let privileged = req.uid() == 0;
        self.go(move |c| async move {
            let r = c.listxattr(ino.0).await.map(|names| {
                let mut out = Vec::new();
                for n in names
                    .into_iter()
                    .filter(|n| privileged || !n.starts_with(b"trusted."))
                {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                out
            });
            reply_xattr(reply, size, r)
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let ino = self.cluster_ino(ino);
        let name = name.as_bytes().to_vec();
        if let Err(e) = self.quota_change_allowed(&name) {
            return reply.error(e);
        }
        let caller = is_quota(&name).then(|| acl_caller(req));
        self.go(
            move |c| async move { reply_empty(reply, c.removexattr(ino.0, &name, caller).await) },
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let ino = self.cluster_ino(ino);
        // Like a write, by a caller other than root it clears setuid and setgid (the kernel
        // leaves that to Shoal, see `init`).
        let caller = (req.uid() != 0).then(|| acl_caller(req));
        self.go(move |c| async move {
            if let Some(caller) = caller {
                if let Err(e) = kill_privs(&c, ino.0, &caller).await {
                    return reply.error(errno(&e));
                }
            }
            reply_empty(reply, c.fallocate(ino.0, offset, length, mode).await)
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let ino = self.cluster_ino(ino);
        self.go(move |c| async move {
            match c.seek_data_hole(ino.0, offset, whence).await {
                Ok(pos) => reply.offset(pos),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let parent = self.cluster_ino(parent);
        let name = match name_ok(name) {
            Ok(n) => n,
            Err(e) => return reply.error(errno(&e)),
        };
        let mk = MakeNodeRequest {
            parent: parent.0,
            name: name.into(),
            kind: FileKind::Regular as i32,
            perm: mode & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            target: Bytes::new(),
            exclusive: flags & libc::O_EXCL != 0,
            umask,
            ..Default::default()
        };
        let _rt = self.rt.enter();
        if let Some(a) = self.client.make_at_once(&mk) {
            return created(&self.client, parent.0, reply, Ok(a));
        }
        self.go(move |c| async move { created(&c, parent.0, reply, c.create(mk).await) });
    }
}

/// Answers a create in directory `parent`.
fn created(c: &Client, parent: u64, reply: ReplyCreate, r: Result<Attr, ClientError>) {
    match r.and_then(|a| kernel_attr(c, &a)) {
        Ok((a, ttl)) => {
            // One time for the entry and the attributes: the shorter.
            let ttl = ttl.min(c.entry_ttl(parent));
            let fh = FileHandle(c.cluster().session());
            reply.created(&ttl, &a, Generation(0), fh, FopenFlags::empty())
        }
        Err(e) => reply.error(errno(&e)),
    }
}
