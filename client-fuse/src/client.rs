//! The client's view of the filesystem, by inode number: what FUSE calls, minus FUSE.
//!
//! Owns the state of files open on this mount ([`FileState`]): the data, size and mtime of
//! local writes not yet sent, and whether the file was unlinked while open.
//!
//! Invariants:
//! - Under the file's write lease a write's data stays here ([`Extents`]) until fsync, close,
//!   a revocation, a lock release, a setattr, a quarter of a lease after it was kept, or
//!   enough piled up (4 MiB starts a
//!   flush in the background, 16 MiB per file or 64 MiB per mount makes the writer wait);
//!   reads on this mount see it. Without the lease, data goes straight to the OSDs (durable
//!   when the write returns). The data always reaches the OSDs before the size and mtime
//!   reach the MDS, and no write is kept once a size or a give-back is on its way, so the
//!   MDS never hands the file to another client while data of a returned write is only here.
//! - Kept data is sent only under the lease (and session) it was kept under, which the
//!   mount keeps (`SetAttr.keep_mark`) while it has unsent writes: granted again only while
//!   the file carries this mount's writer mark, i.e. no one else wrote it or found this
//!   mount's writes since. Once the lease ran out and cannot be kept so (this mount froze,
//!   and another client took the file), the data is dropped, not sent. A failure to send data is kept per inode and
//!   reported once, by the next fsync or close of the file on this mount.
//! - The size and mtime are deferred too, and reach the MDS on flush, fsync, close and
//!   before any setattr, so an explicit utimes() or truncate is never overridden by an older
//!   write.
//! - An attribute handed out overlays the local unflushed size/mtime on the MDS's answer.
//! - A file unlinked while open here keeps its data until its last close on this mount; then
//!   its objects are deleted and the MDS purges the inode.
//! - The kernel caches attributes and entries only for as long as this mount holds a read
//!   lease on them (the TTL handed out is what is left of it), and pages only until the lease
//!   is revoked or, once it ran out, until the kernel sees the mtime change (auto-invalidate).
//!   A lease counts from when its request was sent, and not at all if a revocation of the
//!   inode arrived after that.
//! - Without a write lease, a write sends the new size and mtime to the MDS before it returns
//!   (which revokes other mounts' leases on the file); with one, they stay local until the
//!   lease is revoked, fsync, close or a setattr. Sending them gives the lease back, except
//!   at fsync and before it runs out, where it is renewed. Should this mount die holding it,
//!   the MDS finds its writes on the OSDs (the file is marked with the writer's session).
//! - A file handle names the session it was opened in (the FUSE file handle is the session
//!   id). Once that session was evicted, the handle's reads, writes, fsyncs and locks fail
//!   with EIO, and its unsent data, size and mtime are dropped: its locks may have gone to
//!   another client, so nothing done under it may land any more. Files opened after that use the new
//!   session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libc::{EBADF, EFBIG, EISDIR};
use shoal_proto::limits::LEASE_HOLD_MAX;
use shoal_proto::mds::*;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::dentries::KernelEntries;
use crate::error::ClientError;
use crate::readcache::BLOCK;
use crate::writeback::{covers, overlay, Extents};

mod dirops;

type Result<T> = std::result::Result<T, ClientError>;

/// A file open on this mount.
#[derive(Debug)]
struct FileState {
    /// Open handles on this mount.
    open: u32,
    layout: Layout,
    /// Size as last heard from the MDS.
    size: u64,
    /// Size reached by local writes the MDS has not seen yet.
    pending: Option<u64>,
    /// Time of the newest unflushed write.
    dirty_mtime: Option<Timespec>,
    /// Attribute changes made under the write lease: they go to the MDS with the size, or
    /// on their own where none is unsent, at the next size send (close, fsync, revocation).
    kept_attrs: KeptAttrs,
    /// Bumped by every write, so a flush knows whether it covered the latest one.
    generation: u64,
    /// Unlinked while open: delete its data at last close.
    orphan: bool,
    /// Until when this mount holds the file's write lease.
    write_until: Option<Instant>,
    /// The session that lease was granted to.
    lease_session: u64,
    /// The writer mark the MDS set when it granted the lease (`Attr.writer_mark`): the lease
    /// can be kept under it (`SetAttr.keep_mark`) while no one else touched the file.
    lease_mark: u64,
    /// How long the last write lease granted lasted.
    lease_len: Duration,
    /// The session the unsent size and mtime were written under.
    dirty_session: u64,
    /// Held while a size or a lease is on its way to the MDS: one at a time per file, so
    /// replies cannot overtake each other (a renewal answered after a give-back).
    sending: Arc<tokio::sync::Mutex<()>>,
    /// Data written under the write lease and not yet sent to the OSDs.
    dirty: Extents,
    /// The end of the lease `dirty` was kept under: past it, another client may have written
    /// the file, so the data is dropped rather than sent.
    kept_until: Option<Instant>,
    /// Since when `dirty` holds data.
    kept_since: Option<Instant>,
    /// What the flush in flight sends: reads still see it until the OSDs have it.
    flushing: Option<Arc<Extents>>,
    /// Held by the flush in flight: one at a time per file, so an older flush never lands
    /// after a newer one.
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// A flush in the background was asked for and has not taken the data yet.
    flush_queued: bool,
    /// A flush that failed where no caller could hear it (in the background, at a
    /// revocation): the next fsync or close reports it.
    flush_error: Option<ClientError>,
    /// The quota realm the file counts in (0: none).
    realm: u64,
    /// Bytes the file may grow by past `size` under the quotas over it, as the MDS last said
    /// (`Some(None)`: no byte quota; `None`: not known).
    quota_room: Option<Option<u64>>,
}

/// Attribute changes kept with a file's unsent size (see [`Client::keep_setattr`]).
#[derive(Debug, Clone, Default)]
struct KeptAttrs {
    perm: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<Timespec>,
    /// Set after the last write (a later write drops it: its own time wins).
    mtime: Option<Timespec>,
    /// When the last of them was made.
    ctime: Option<Timespec>,
}

impl KeptAttrs {
    fn is_empty(&self) -> bool {
        self.ctime.is_none()
    }

    /// A SetAttr of `ino` that makes these changes.
    fn request(&self, ino: u64) -> SetAttrRequest {
        let at = |t: Option<Timespec>| {
            t.map(|t| SetTime {
                now: false,
                time: Some(t),
            })
        };
        SetAttrRequest {
            ino,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            atime: at(self.atime),
            mtime: at(self.mtime),
            ..Default::default()
        }
    }
}

/// The later of two times.
fn later(a: Option<Timespec>, b: Option<Timespec>) -> Option<Timespec> {
    match (a, b) {
        (Some(x), Some(y)) if (y.sec, y.nsec) > (x.sec, x.nsec) => Some(y),
        (Some(x), _) => Some(x),
        (None, y) => y,
    }
}

impl FileState {
    /// Records a write up to `end` made under `session`, sent or kept: the size it grows the
    /// file to, the new mtime (over an explicit one kept), and a new generation.
    fn written(&mut self, session: u64, end: u64) {
        self.dirty_session = session;
        if end > self.size {
            self.pending = Some(self.pending.unwrap_or(0).max(end));
        }
        self.dirty_mtime = Some(now());
        self.kept_attrs.mtime = None;
        self.generation += 1;
    }

    /// Whether the write lease is held with time left to use it.
    fn write_leased(&self) -> bool {
        self.write_until
            .is_some_and(|u| u > Instant::now() + LEASE_MARGIN)
    }

    /// Records a write lease granted to `session` with writer `mark`, of `len`, from a
    /// request sent at `sent`.
    fn hold_write_lease(&mut self, session: u64, mark: u64, sent: Instant, len: Duration) {
        self.write_until = Some(sent + len.saturating_sub(LEASE_MARGIN));
        self.lease_session = session;
        self.lease_mark = mark;
        self.lease_len = len;
    }

    /// Whether a size, an mtime or attribute changes wait to go to the MDS.
    fn unsent(&self) -> bool {
        self.dirty_mtime.is_some() || !self.kept_attrs.is_empty()
    }

    /// The unsent size, mtime and attribute changes reached the MDS, or are dropped.
    fn size_sent(&mut self) {
        self.pending = None;
        self.dirty_mtime = None;
        self.kept_attrs = KeptAttrs::default();
    }
}

/// What a read or write needs of an open file.
struct Opened {
    layout: Layout,
    /// The size as known here, local writes included.
    size: u64,
}

/// This mount's read lease on an inode, and what it caches under it.
#[derive(Debug, Clone, Default)]
struct Lease {
    /// When the newest grant ends without renewals.
    until: Option<Instant>,
    /// When the request that brought the newest grant was sent.
    sent: Option<Instant>,
    /// When the MDS last revoked it: grants asked for before then do not count.
    revoked: Option<Instant>,
    /// Its attributes as of the newest reply that carried them (without this mount's
    /// unsent writes: [`Client::overlay`] adds those).
    attr: Option<Attr>,
    /// For a directory: entries looked up or made here (name -> inode).
    entries: HashMap<Bytes, u64>,
    /// For a directory: `entries` holds every entry (it was made here and every change to
    /// it since was made here too), so a name not in it does not exist.
    complete: bool,
    /// Extended attributes read under it (name -> value, None: it has none of that name).
    /// Every change of them revokes the lease, as attribute changes do.
    xattrs: HashMap<Bytes, Option<Bytes>>,
    /// When this mount last changed its extended attributes (a chmod rewrites the ACL):
    /// getxattr replies to requests sent before then are not kept.
    xattr_floor: Option<Instant>,
    /// Since when the lease has been held without a break (the reply that granted it came
    /// in then): a getxattr, which brings no lease of its own, is kept only if it was sent
    /// after, so the MDS read the value while it would revoke the lease on a change.
    held_since: Option<Instant>,
    /// When this mount last changed it: replies to requests sent before then may describe
    /// it as it was, so their attributes and entries are not kept.
    floor: Option<Instant>,
}

/// The session's renewals of its read leases.
#[derive(Debug, Clone, Copy, Default)]
struct Renewal {
    /// When the lease stream they go through was opened: grants from before (a previous
    /// leader's) are not renewed.
    since: Option<Instant>,
    /// Until when the newest acknowledged renewal keeps the leases.
    until: Option<Instant>,
    /// When the first renewal of the current unbroken run was sent (each sent before the
    /// one before it ran out): only leases live then were kept by it all along. A lease
    /// that ran out before (a stalled mount) may have been dropped by the MDS, which then
    /// let changes pass without revoking it: no later renewal brings it back.
    run_since: Option<Instant>,
}

/// When lease `l` ends, given the session's renewals.
fn lease_end(l: &Lease, r: Renewal) -> Option<Instant> {
    let base = l.until?;
    let sent = l.sent?;
    let renewed = r.until.filter(|_| {
        r.since.is_some_and(|since| sent >= since) && r.run_since.is_some_and(|run| base > run)
    });
    Some(renewed.map_or(base, |u| {
        base.max(u.min(sent + LEASE_HOLD_MAX - LEASE_MARGIN))
    }))
}

/// The root directory's inode.
const ROOT: u64 = 1;

/// Extended attribute values larger than this are not cached (ACLs and capabilities are
/// far smaller).
const XATTR_CACHE_MAX: usize = 4096;

/// A close leaves the writes it would send to the background only while the write lease has
/// at least this long left (it is renewed when less than a second is left).
const CLOSE_MARGIN: Duration = Duration::from_millis(500);

/// A closed new file keeping at most this much goes with its create's batch.
const GATHER_MAX: u64 = 1 << 20;

/// How long a settled file is remembered (see `Client::settled`): far longer than an MDS
/// answer takes to come back.
const SETTLED_FOR: Duration = Duration::from_secs(30);

/// How long the rest of a directory page is kept for the next readdir call (see
/// `Client::dir_rest`); a listing may miss a change made elsewhere meanwhile, as POSIX allows
/// for changes after opendir.
const DIR_REST_FOR: Duration = Duration::from_secs(1);
/// Directory pages' rests kept at most.
const DIR_REST_MAX: usize = 64;

/// Leases end this much before the MDS's reckoning.
const LEASE_MARGIN: Duration = Duration::from_millis(20);
/// How long a mount asks again to keep a write lease the MDS cannot grant yet, where the
/// file still carries its mark (see [`Client::keep_lease`]).
const KEEP_PATIENCE: Duration = Duration::from_secs(5);
const KEEP_RETRY: Duration = Duration::from_millis(100);

/// What the MDS said to keeping a write lease.
enum Keep {
    /// Held again: kept writes may be sent.
    Held,
    /// Not granted now, but the file still carries this mount's mark: no one else touched it.
    Marked,
    /// Another client found or wrote the file, or this mount let the lease go.
    Lost,
}

/// A file holding this much unsent data starts sending it in the background.
const FLUSH_AT: u64 = 4 << 20;
/// A write that leaves more than this unsent in one file waits until it is sent, so a
/// revocation's flush stays well within the lease it has left.
const FILE_DIRTY_MAX: u64 = 16 << 20;
/// Nor more than this on the whole mount.
const MOUNT_DIRTY_MAX: u64 = 64 << 20;

/// One mount's client.
pub struct Client {
    cluster: Arc<Cluster>,
    files: Mutex<HashMap<u64, FileState>>,
    /// When the state of a file a close left to the background was dropped here (its size
    /// sent), for [`SETTLED_FOR`]: an MDS answer asked for before then may predate that
    /// size, and is asked again.
    settled: Mutex<HashMap<u64, Instant>>,
    /// The rest of a directory page the kernel's buffer had no room for, by (directory,
    /// cookie it follows), for [`DIR_REST_FOR`]: the kernel's next readdir call there takes
    /// it instead of asking the MDS again. A change made here to the directory drops it.
    dir_rest: Mutex<HashMap<(u64, u64), (Instant, ReadDirReply)>>,
    /// (ino, lock owner) pairs that may hold locks, so a close asks the MDS to release
    /// locks only when there can be some.
    lockers: Mutex<std::collections::HashSet<(u64, u64)>>,
    /// Write leases this mount stopped using with nothing unsent (a close, a size sent
    /// without asking to keep the lease): inode -> (session, writer mark), given back in
    /// the background (see [`Client::send_releases`]) so the file's mark goes.
    releases: Mutex<HashMap<u64, (u64, u64)>>,
    /// Held while give-backs are on their way: a revocation waits for them before its ack.
    releasing: tokio::sync::Mutex<()>,
    leases: Mutex<HashMap<u64, Lease>>,
    /// The kernel's entries of this mount's directories, kept under the leases.
    kernel_entries: KernelEntries,
    renewal: Mutex<Renewal>,
    /// The length of the leases the MDS grants, in milliseconds (0: none seen yet).
    lease_ms: std::sync::atomic::AtomicU32,
    /// Bytes of written data held here, not yet on the OSDs (all files).
    dirty_total: AtomicU64,
    /// The directory the mount shows as its root (a volume's, or the cluster's root, 1).
    root: u64,
    /// Changes made here under directory leases, waiting to be sent (see [`dirops`]).
    dirops: Mutex<dirops::Queue>,
    /// Whether this mount asks for directory leases (on unless `-o nodirleases`).
    dir_leases: std::sync::atomic::AtomicBool,
    /// Listings taken here of directories whose entries this mount knows all of (see
    /// [`Client::start_listing`]).
    listings: Mutex<crate::listings::Listings>,
    /// The last directory handle handed out.
    dir_handles: AtomicU64,
    /// Files closed here whose create is still queued: their data (and, closed everywhere
    /// here, their size) go with the queue's next batch (see `Client::gather_closed`).
    pub(crate) closing: Mutex<Closing>,
}

/// Closed files left to the next batch of queued changes (see [`Client::gather_closed`]).
#[derive(Default)]
pub(crate) struct Closing {
    /// Their data goes (a close by a descriptor that may not be the last).
    pub flush: Vec<u64>,
    /// Closed everywhere here: their data, then their size.
    pub finish: Vec<u64>,
}

/// A byte-range lock request from the kernel (fcntl or flock).
#[derive(Debug, Clone, Copy)]
pub struct LockArgs {
    /// The kernel's lock owner (a process's file table, or an open file for flock).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (u64::MAX: to the end and beyond).
    pub end: u64,
    /// Unlock, read or write.
    pub kind: LockKind,
    /// The process asking.
    pub pid: u32,
}

fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timespec {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

/// Ends a flush of `ino`: what it sent is no longer laid over reads nor counted as held.
struct FlushDone<'a> {
    client: &'a Client,
    ino: u64,
    cost: u64,
}

impl Drop for FlushDone<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.client.files().get_mut(&self.ino) {
            s.flushing = None;
        }
        self.client
            .dirty_total
            .fetch_sub(self.cost, Ordering::Relaxed);
    }
}

fn not_open(ino: u64) -> ClientError {
    ClientError::errno_msg(EBADF, format!("inode {ino} is not open"))
}

fn attr_of(reply: AttrReply) -> Result<Attr> {
    reply
        .attr
        .ok_or_else(|| ClientError::Protocol("mds reply without attributes".into()))
}

impl Client {
    /// A client over a connected cluster.
    pub fn new(cluster: Arc<Cluster>) -> Client {
        Client::with_root(cluster, ROOT)
    }

    /// A client whose mount shows directory `root` as its root (inode 1 to the kernel).
    pub fn with_root(cluster: Arc<Cluster>, root: u64) -> Client {
        Client {
            root,
            cluster,
            files: Mutex::default(),
            settled: Mutex::default(),
            dir_rest: Mutex::default(),
            lockers: Mutex::default(),
            releases: Mutex::default(),
            releasing: tokio::sync::Mutex::const_new(()),
            leases: Mutex::default(),
            kernel_entries: KernelEntries::default(),
            renewal: Mutex::default(),
            lease_ms: std::sync::atomic::AtomicU32::new(0),
            dirty_total: AtomicU64::new(0),
            dirops: Mutex::default(),
            dir_leases: std::sync::atomic::AtomicBool::new(true),
            closing: Mutex::default(),
            listings: Mutex::default(),
            dir_handles: AtomicU64::new(0),
        }
    }

    /// Whether and how the kernel keeps this mount's directory entries.
    pub fn kernel_entries(&self) -> &KernelEntries {
        &self.kernel_entries
    }

    /// How long the kernel may keep an entry of directory `dir` (or the absence of one): what
    /// is left of the lease on `dir`, if the kernel can be made to drop it (see
    /// [`crate::dentries`]).
    pub fn entry_ttl(&self, dir: u64) -> Duration {
        if !self.kernel_entries.kept() {
            return Duration::ZERO;
        }
        self.ttl(dir)
    }

    /// The directory shown as the mount's root.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The cluster's inode for the kernel's `ino`: its root (1) is the mount's root, and the
    /// two trade numbers (a swap, so the mapping is one to one both ways).
    pub fn cluster_ino(&self, ino: u64) -> u64 {
        match ino {
            ROOT => self.root,
            i if i == self.root => ROOT,
            i => i,
        }
    }

    /// The kernel's inode for the cluster's `ino` (the mount's root shows as 1).
    pub fn kernel_ino(&self, ino: u64) -> u64 {
        self.cluster_ino(ino)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn renewal(&self) -> Renewal {
        *self.renewal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease stream was (re)opened: renewals through it cover grants from now on.
    pub fn lease_stream_opened(&self) {
        let mut r = self.renewal.lock().unwrap_or_else(|p| p.into_inner());
        *r = Renewal {
            since: Some(Instant::now()),
            until: None,
            run_since: None,
        };
        drop(r);
        // Leases may end sooner than the kernel was told (the old stream's renewals lapse).
        self.kernel_entries.drop_all();
    }

    /// The MDS acknowledged a renewal sent at `sent` through the current stream.
    pub fn leases_renewed(&self, sent: Instant) {
        let ms = self.lease_len();
        if ms.is_zero() {
            return;
        }
        let mut r = self.renewal.lock().unwrap_or_else(|p| p.into_inner());
        if r.since.is_some_and(|since| sent >= since) {
            if r.until.is_none_or(|u| sent >= u) {
                r.run_since = Some(sent);
            }
            let until = sent + ms.saturating_sub(LEASE_MARGIN);
            r.until = r.until.max(Some(until));
        }
    }

    /// How long the MDS's leases last (zero until one was granted).
    pub fn lease_len(&self) -> Duration {
        Duration::from_millis(
            self.lease_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                .into(),
        )
    }

    /// Records a read lease of `ms` on `inos` from a request sent at `sent`; returns whether
    /// it counts (no revocation of it came in since it was asked for).
    fn note_lease(&self, inos: &[u64], sent: Instant, ms: u32) -> bool {
        if ms == 0 {
            return false;
        }
        self.lease_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        let until = sent + Duration::from_millis(ms as u64).saturating_sub(LEASE_MARGIN);
        let renewal = self.renewal();
        let mut leases = self.leases();
        if leases.len() > 100_000 {
            let now = Instant::now();
            leases.retain(|_, l| {
                lease_end(l, renewal).is_some_and(|u| u > now)
                    || l.revoked
                        .is_some_and(|r| now.duration_since(r) < Duration::from_secs(60))
            });
        }
        let mut counted = true;
        let now = Instant::now();
        for &ino in inos {
            let l = leases.entry(ino).or_default();
            if l.revoked.is_some_and(|r| r >= sent) {
                counted = false;
                continue;
            }
            if lease_end(l, renewal).is_none_or(|e| e <= now) {
                // Nothing was revoked while no lease was held: what was cached under the
                // lease that ended is not to be trusted under this one.
                l.attr = None;
                l.entries.clear();
                l.complete = false;
                l.xattrs.clear();
                l.held_since = Some(now);
            }
            l.until = l.until.max(Some(until));
            l.sent = l.sent.max(Some(sent));
        }
        counted
    }

    /// Whether `l` is live now.
    fn live(l: &Lease, renewal: Renewal) -> bool {
        lease_end(l, renewal).is_some_and(|u| u > Instant::now())
    }

    /// How long the kernel may cache what it knows of `ino`: what is left of the lease.
    pub fn ttl(&self, ino: u64) -> Duration {
        let renewal = self.renewal();
        let until = self.leases().get(&ino).and_then(|l| lease_end(l, renewal));
        until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        })
    }

    /// `ino`'s attributes as cached under a live lease (this mount's unsent writes laid over).
    pub fn cached_attr(&self, ino: u64) -> Option<Attr> {
        Some(self.overlay(self.cached_raw(ino)?))
    }

    /// `ino`'s attributes as the MDS gave them, cached under a live lease.
    fn cached_raw(&self, ino: u64) -> Option<Attr> {
        let renewal = self.renewal();
        let leases = self.leases();
        let l = leases.get(&ino)?;
        if !Self::live(l, renewal) {
            return None;
        }
        l.attr
    }

    /// Extended attribute `name` of `ino` as cached under a live lease: its value, or
    /// ENODATA. None: not known here.
    pub fn cached_xattr(&self, ino: u64, name: &[u8]) -> Option<Result<Bytes>> {
        let renewal = self.renewal();
        let leases = self.leases();
        let l = leases.get(&ino).filter(|l| Self::live(l, renewal))?;
        Some(match l.xattrs.get(name)? {
            Some(v) => Ok(v.clone()),
            None => Err(ClientError::errno_msg(libc::ENODATA, "no such attribute")),
        })
    }

    /// Keeps what a getxattr sent at `sent` found of `name` (None: nothing), under a live
    /// lease that was not revoked and that this mount did not change since it was asked.
    /// Computed attributes (`shoal.*`: layouts, quota usage) change without a revocation
    /// and are never kept.
    fn keep_xattr(&self, ino: u64, name: &[u8], value: Option<Bytes>, sent: Instant) {
        if name.starts_with(b"shoal.") || value.as_ref().is_some_and(|v| v.len() > XATTR_CACHE_MAX)
        {
            return;
        }
        self.keep_xattr_read(ino, name, value, sent, false);
    }

    /// [`Client::keep_xattr`] of an answer the MDS read for a request sent at `sent`;
    /// `after_grant`: it read it after granting the lease its reply brought (so no lease need
    /// have been held when the request went).
    fn keep_xattr_read(
        &self,
        ino: u64,
        name: &[u8],
        value: Option<Bytes>,
        sent: Instant,
        after_grant: bool,
    ) {
        let renewal = self.renewal();
        let mut leases = self.leases();
        let Some(l) = leases.get_mut(&ino) else {
            return;
        };
        if Self::live(l, renewal)
            && (after_grant || l.held_since.is_some_and(|h| h <= sent))
            && l.floor.is_none_or(|f| sent >= f)
            && l.xattr_floor.is_none_or(|f| sent >= f)
            && l.revoked.is_none_or(|r| r < sent)
            && l.xattrs.len() < 64
        {
            l.xattrs.insert(Bytes::copy_from_slice(name), value);
        }
    }

    /// This mount is changing `ino` in a way that may change its extended attributes (a
    /// chmod rewrites its access ACL): what is cached of them goes, and replies to getxattr
    /// requests sent before now are not kept.
    fn xattrs_changed_here(&self, ino: u64) {
        if let Some(l) = self.leases().get_mut(&ino) {
            l.xattrs.clear();
            l.xattr_floor = Some(Instant::now());
        }
    }

    /// Entry `name` of directory `parent` as cached under live leases on both: its
    /// attributes, or ENOENT when the directory's entries are all known here and it is not
    /// one of them. None: not known here.
    pub fn cached_entry(&self, parent: u64, name: &[u8]) -> Option<Result<Attr>> {
        let renewal = self.renewal();
        let ino = {
            let leases = self.leases();
            let dir = leases.get(&parent)?;
            if !Self::live(dir, renewal) {
                return None;
            }
            match dir.entries.get(name) {
                Some(ino) => *ino,
                None if dir.complete => {
                    return Some(Err(ClientError::errno_msg(libc::ENOENT, "no such entry")))
                }
                None => return None,
            }
        };
        self.cached_attr(ino).map(Ok)
    }

    /// This mount made entry `name` in `parent` (a create or a link sent at `sent`), naming
    /// `attr`: the entry is kept, and a directory it made is known empty. Where the entry
    /// cannot be kept, the parent's entries are no longer known complete.
    /// `dir`: the directory's attributes after the change, kept too.
    fn entry_made(&self, parent: u64, name: &[u8], attr: &Attr, sent: Instant, dir: Option<Attr>) {
        self.keep_attr(attr, sent, Some((parent, name)), true);
        if let Some(d) = dir.filter(|d| d.ino == parent) {
            self.keep_attr(&d, sent, None, true);
        }
        let mut leases = self.leases();
        if let Some(d) = leases.get_mut(&parent) {
            if d.entries.get(name) != Some(&attr.ino) {
                d.complete = false;
            }
        }
        if attr.kind == FileKind::Directory as i32 && attr.nlink == 2 {
            if let Some(l) = leases.get_mut(&attr.ino) {
                if l.revoked.is_none_or(|r| r < sent) && l.entries.is_empty() {
                    l.complete = true;
                }
            }
        }
    }

    /// A change of entries of `dir` made here failed or ended in a state not known here:
    /// its entries are no longer known complete.
    fn entries_unknown(&self, dir: u64) {
        if let Some(d) = self.leases().get_mut(&dir) {
            d.complete = false;
        }
    }

    /// As [`Self::entries_unknown`], and the kernel's entries (which it updates itself after
    /// a change that succeeded) go too.
    fn entries_unknown_everywhere(&self, dir: u64) {
        self.entries_unknown(dir);
        self.kernel_entries.drop_all();
    }

    /// Keeps `attr` (from a reply to a request sent at `sent`) and, if it came from a lookup
    /// or a create, the entry naming it, unless this mount changed them since (`ours`: the
    /// reply is to that change itself) or the MDS revoked the lease after it was asked for.
    fn keep_attr(&self, attr: &Attr, sent: Instant, entry: Option<(u64, &[u8])>, ours: bool) {
        let mut leases = self.leases();
        if let Some(l) = leases.get_mut(&attr.ino) {
            if (ours || l.floor.is_none_or(|f| sent >= f)) && l.revoked.is_none_or(|r| r < sent) {
                l.attr = Some(*attr);
            }
        }
        if let Some((parent, name)) = entry {
            if let Some(d) = leases.get_mut(&parent) {
                if (ours || d.floor.is_none_or(|f| sent >= f))
                    && d.revoked.is_none_or(|r| r < sent)
                    && d.entries.len() < 100_000
                {
                    d.entries.insert(Bytes::copy_from_slice(name), attr.ino);
                } else {
                    d.complete = false;
                }
            }
        }
    }

    /// This mount changed `inos` (their attributes) and `names` (entries of directories):
    /// what is cached of them goes, and replies to requests sent before now are not kept.
    fn changed_here(&self, inos: &[u64], names: &[(u64, &[u8])]) {
        for &dir in inos.iter().chain(names.iter().map(|(d, _)| d)) {
            self.dir_changed_here(dir);
        }
        let now = Instant::now();
        let mut leases = self.leases();
        for &ino in inos.iter().filter(|&&i| i != 0) {
            if let Some(l) = leases.get_mut(&ino) {
                l.attr = None;
                l.xattrs.clear();
                l.floor = Some(now);
            }
            // Its kept data is stale by the floor; an unlinked file's memory goes too.
            self.cluster.read_cache().forget(ino);
        }
        for (dir, name) in names {
            if let Some(l) = leases.get_mut(dir) {
                l.entries.remove(*name);
                l.floor = Some(now);
            }
        }
    }

    /// The session was evicted and a new one started: leases, unsent sizes and the locks of
    /// the old one are gone.
    pub fn session_renewed(&self) {
        self.drop_queued();
        self.leases().clear();
        *self.renewal.lock().unwrap_or_else(|p| p.into_inner()) = Renewal::default();
        self.kernel_entries.drop_all();
        self.lockers().clear();
        for st in self.files().values_mut() {
            self.drop_kept(st, ClientError::Evicted(st.dirty_session));
            st.size_sent();
            st.write_until = None;
        }
    }

    /// The session to act under for a handle opened in session `fh` (0: not opened through
    /// a handle): EIO if that session was evicted.
    pub fn handle(&self, fh: u64) -> Result<u64> {
        let current = self.cluster.session();
        if fh != 0 && fh != current {
            return Err(ClientError::Evicted(fh));
        }
        Ok(if fh == 0 { current } else { fh })
    }

    /// The MDS revoked this mount's lease on `ino`: nothing of it is cached from now on, and
    /// grants asked for before now do not count.
    pub fn mark_revoked(&self, ino: u64) {
        let mut leases = self.leases();
        let l = leases.entry(ino).or_default();
        l.until = None;
        l.held_since = None;
        l.attr = None;
        l.entries.clear();
        l.complete = false;
        l.xattrs.clear();
        l.revoked = Some(Instant::now());
        drop(leases);
        // Stale from now on (its lease is gone): the memory goes too.
        self.cluster.read_cache().forget(ino);
        // After the cache: a lookup the kernel started before this drop may still be
        // answered from it, and the kernel then keeps that answer as stale.
        self.kernel_entries.drop_all();
    }

    /// The MDS revoked this mount's leases on `ino`: from now on nothing of it is cached
    /// under them, and a write lease's size and mtime go to the MDS. The caller then drops
    /// the kernel's caches and acks.
    pub async fn revoked(&self, ino: u64) -> Result<()> {
        self.mark_revoked(ino);
        self.dir_revoked(ino);
        // What this mount made under a directory lease lands before the ack (the lease may
        // have ended here already, with creates made under it still queued).
        self.cluster.changes_settled().await;
        // A write lease goes back with the data and the size, or on its own when nothing is
        // unsent, so the MDS need not look for this mount's writes on the OSDs.
        let sent = self.send_size_or_release(ino, false, true, false).await;
        self.send_releases(Some(ino)).await;
        sent
    }

    /// Keeps a failure to send a file's data for its next fsync or close (whichever comes
    /// first, on any descriptor of this mount: the file's error is per inode here).
    fn latch(&self, ino: u64, e: ClientError) {
        if let Some(s) = self.files().get_mut(&ino) {
            s.flush_error.get_or_insert(e);
        }
    }

    /// The failure to send `ino`'s writes since an fsync last reported one, if any: each
    /// close reports it too, but only an fsync takes it (a close may be another process's, at
    /// exec, whose copy of the descriptor closes first).
    fn flush_error(&self, ino: u64) -> Result<()> {
        match self.files().get(&ino).and_then(|s| s.flush_error.clone()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The failure of a flush since the last one reported, if any (reported once).
    fn take_flush_error(&self, ino: u64) -> Result<()> {
        match self
            .files()
            .get_mut(&ino)
            .and_then(|s| s.flush_error.take())
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The attributes of a reply to a request sent at `sent`: records the read lease that
    /// came with it on their inode and on `also` (a directory), and an open file's known
    /// size follows them. Returns them and the write lease granted, in milliseconds.
    fn leased_reply(&self, r: AttrReply, sent: Instant, also: Option<u64>) -> Result<(Attr, u32)> {
        let (ms, write_ms, room) = (r.lease_ms, r.write_lease_ms, r.quota_room);
        let attr = attr_of(r)?;
        let counted = match also {
            Some(dir) => self.note_lease(&[dir, attr.ino], sent, ms),
            None => self.note_lease(&[attr.ino], sent, ms),
        };
        if counted {
            self.keep_attr(&attr, sent, None, false);
        }
        if let Some(st) = self.files().get_mut(&attr.ino) {
            st.size = attr.size;
            st.realm = attr.realm;
            st.quota_room = Some(room);
        }
        Ok((attr, write_ms))
    }

    fn lockers(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(u64, u64)>> {
        self.lockers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_request(&self, ino: u64, a: &LockArgs) -> LockRequest {
        LockRequest {
            ino,
            session: self.cluster.session(),
            owner: a.owner,
            start: a.start,
            end: a.end,
            kind: a.kind as i32,
            pid: a.pid,
        }
    }

    /// Takes, changes or releases a lock; EAGAIN when another owner's lock conflicts.
    /// Before a lock is released, the size and mtime of this mount's writes reach the MDS,
    /// so whoever locks next sees them.
    pub async fn set_lock(&self, fh: u64, ino: u64, a: LockArgs) -> Result<()> {
        self.handle(fh)?;
        // A failure to send goes to the caller after the unlock: the lock goes either way.
        let mut flushed = Ok(());
        if a.kind == LockKind::Unlock {
            flushed = self.flush(ino).await;
        } else {
            self.lockers().insert((ino, a.owner));
        }
        let req = self.lock_request(ino, &a);
        self.cluster
            .mds_mutate(
                "set_lock",
                req,
                |mut c, r| async move { c.set_lock(r).await },
            )
            .await?;
        if a.kind == LockKind::Unlock && a.start == 0 && a.end == u64::MAX {
            self.lockers().remove(&(ino, a.owner));
        }
        flushed
    }

    /// The first lock of another owner that conflicts with `a` (kind Unlock: none).
    pub async fn get_lock(&self, ino: u64, a: LockArgs) -> Result<LockReply> {
        let req = self.lock_request(ino, &a);
        self.cluster
            .mds("get_lock", |mut c| async move { c.get_lock(req).await })
            .await
    }

    /// The file's size and its last byte (empty for an empty file), read from the cluster.
    pub async fn tail(&self, ino: u64) -> Result<(u64, Bytes)> {
        let attr = self.getattr(ino).await?;
        if attr.size == 0 {
            return Ok((0, Bytes::new()));
        }
        let layout = attr
            .layout
            .unwrap_or_else(shoal_proto::layout::default_layout);
        let session = self.cluster.session();
        let last = self
            .read_range(session, ino, &layout, attr.size - 1, 1, attr.size)
            .await?;
        Ok((attr.size, last))
    }

    /// A close by `owner` of a handle opened in session `fh`: releases its locks on `ino`,
    /// if it may hold any (an evicted session's are gone already).
    pub async fn release_locks(&self, fh: u64, ino: u64, owner: u64) -> Result<()> {
        if !self.lockers().contains(&(ino, owner)) || self.handle(fh).is_err() {
            return Ok(());
        }
        let all = LockArgs {
            owner,
            start: 0,
            end: u64::MAX,
            kind: LockKind::Unlock,
            pid: 0,
        };
        self.set_lock(fh, ino, all).await
    }

    /// The cluster connections.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, FileState>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lays local unflushed writes over an attribute from the MDS.
    fn overlay(&self, mut attr: Attr) -> Attr {
        if let Some(st) = self.files().get(&attr.ino) {
            if let Some(p) = st.pending {
                attr.size = attr.size.max(p);
            }
            if let Some(m) = st.dirty_mtime {
                attr.mtime = Some(m);
                attr.ctime = Some(m);
            }
            let k = &st.kept_attrs;
            attr.perm = k.perm.unwrap_or(attr.perm);
            attr.uid = k.uid.unwrap_or(attr.uid);
            attr.gid = k.gid.unwrap_or(attr.gid);
            attr.atime = k.atime.or(attr.atime);
            attr.mtime = k.mtime.or(attr.mtime);
            attr.ctime = later(attr.ctime, k.ctime);
        }
        attr
    }

    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if let Some(a) = self.cached_entry(parent, name) {
            return a;
        }
        let req = LookupRequest {
            parent,
            name: Bytes::copy_from_slice(name),
        };
        let (r, sent) = self
            .ask_settled(|| {
                let req = req.clone();
                self.cluster.mds("lookup", move |mut c| {
                    let req = req.clone();
                    async move { c.lookup(req).await }
                })
            })
            .await?;
        // The lease covers the entry (the directory's) and the child's attributes.
        let (attr, _) = self.leased_reply(r, sent, Some(parent))?;
        self.keep_attr(&attr, sent, Some((parent, name)), false);
        Ok(self.overlay(attr))
    }

    async fn getattr_raw(&self, ino: u64) -> Result<Attr> {
        let (r, sent) = self
            .ask_settled(|| {
                self.cluster.mds("getattr", move |mut c| async move {
                    c.get_attr(GetAttrRequest { ino }).await
                })
            })
            .await?;
        Ok(self.leased_reply(r, sent, None)?.0)
    }

    /// Asks the MDS with `ask`, and once more if the answer's file settled here after the
    /// question went (see `Client::settled`); returns the answer and when it was asked.
    async fn ask_settled<F, Fut>(&self, ask: F) -> Result<(AttrReply, Instant)>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<AttrReply>>,
    {
        let sent = Instant::now();
        let r = ask().await?;
        if r.attr
            .as_ref()
            .is_some_and(|a| self.settled_since(a.ino, sent))
        {
            let sent = Instant::now();
            return Ok((ask().await?, sent));
        }
        Ok((r, sent))
    }

    /// Whether a file a close left to the background settled after `sent`: an MDS answer
    /// to a request sent then may not have its size yet.
    fn settled_since(&self, ino: u64, sent: Instant) -> bool {
        let settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        settled.get(&ino).is_some_and(|&at| at >= sent)
    }

    /// A closed file whose writes a close left to the background: waits until they landed
    /// and the file settled, so a change made to it now lands after them, as after a close
    /// that waited.
    async fn settle(&self, ino: u64) {
        let closed = self.files().get(&ino).is_some_and(|s| s.open == 0);
        if closed {
            self.finish_closed(ino).await;
        }
    }

    /// [`Client::settle`] of the file `name` in `parent` names, if this mount knows it.
    async fn settle_name(&self, parent: u64, name: &[u8]) {
        let known = self
            .leases()
            .get(&parent)
            .and_then(|d| d.entries.get(name).copied());
        if let Some(ino) = known {
            self.settle(ino).await;
        }
    }

    /// A mutation answered with attributes, and the leases that came with them (the read
    /// lease also on directory `also`; the write lease, in milliseconds, returned).
    async fn leased_mutate<Q, F, Fut>(
        &self,
        what: &str,
        also: Option<u64>,
        req: Q,
        f: F,
    ) -> Result<(Attr, u32)>
    where
        Q: Clone,
        F: Fn(crate::cluster::Mds, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<tonic::Response<AttrReply>, tonic::Status>,
        >,
    {
        let sent = Instant::now();
        let r = self.cluster.mds_mutate(what, req, f).await?;
        self.leased_reply(r, sent, also)
    }

    /// A mutation that makes entry `name` in directory `parent` (a create or a link, which
    /// also changes inode `touched` unless 0), answered with the entry's attributes and the
    /// directory's: this mount's cache of the directory follows it.
    async fn make_entry<Q, F, Fut>(
        &self,
        what: &str,
        parent: u64,
        name: &[u8],
        touched: u64,
        req: Q,
        f: F,
    ) -> Result<(Attr, u32)>
    where
        Q: Clone,
        F: Fn(crate::cluster::Mds, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<tonic::Response<AttrReply>, tonic::Status>,
        >,
    {
        let sent = Instant::now();
        let r = self.cluster.mds_mutate(what, req, f).await;
        self.changed_here(&[parent, touched], &[(parent, name)]);
        let mut r = r.inspect_err(|_| self.entries_unknown_everywhere(parent))?;
        let dir = r.dir.take();
        let dir_ms = r.dir_lease_ms;
        let no_caps = r.no_capabilities;
        let (attr, write_ms) = self.leased_reply(r, sent, Some(parent))?;
        self.entry_made(parent, name, &attr, sent, dir);
        if no_caps {
            // Read after the lease on the new file was granted.
            self.keep_xattr_read(attr.ino, dirops::NO_CAPS, None, sent, true);
        }
        if dir_ms > 0 {
            // On the new directory for a mkdir, else on the parent.
            let dir = if attr.kind == FileKind::Directory as i32 {
                attr.ino
            } else {
                parent
            };
            self.dir_leased(dir, sent, dir_ms, false);
        }
        Ok((attr, write_ms))
    }

    /// The attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        if let Some(a) = self.cached_attr(ino) {
            return Ok(a);
        }
        Ok(self.overlay(self.getattr_raw(ino).await?))
    }

    /// Changes attributes. A size change cuts the file's objects first, then the MDS.
    pub async fn setattr(&self, req: SetAttrRequest) -> Result<Attr> {
        let ino = req.ino;
        self.settle(ino).await;
        if let Some(a) = self.keep_setattr(&req) {
            return Ok(a);
        }
        if let Some(a) = self.setattr_here(&req) {
            return Ok(a);
        }
        self.flush(ino).await?;
        if let Some(new_size) = req.size {
            let attr = self.getattr_raw(ino).await?;
            if attr.kind == FileKind::Directory as i32 {
                return Err(ClientError::errno_msg(
                    EISDIR,
                    "cannot truncate a directory",
                ));
            }
            if attr.kind == FileKind::Regular as i32 && new_size < attr.size {
                let layout = attr
                    .layout
                    .unwrap_or_else(shoal_proto::layout::default_layout);
                let session = self.cluster.session();
                self.cluster
                    .truncate(session, ino, &layout, new_size, attr.size)
                    .await?;
            }
        }
        // Before (nothing stale is answered while it is on its way) and after (a getxattr
        // answered meanwhile with the old ACL is not kept).
        self.xattrs_changed_here(ino);
        let r = self
            .leased_mutate("setattr", None, req, |mut c, r| async move {
                c.set_attr(r).await
            })
            .await;
        self.xattrs_changed_here(ino);
        Ok(self.overlay(r?.0))
    }

    /// A setattr answered without waiting for anything: one this mount keeps under its
    /// write lease or may answer itself, on a file that is not closed with work under way.
    /// None when it has to go the long way ([`Client::setattr`]).
    pub fn setattr_at_once(&self, req: &SetAttrRequest) -> Option<Attr> {
        if self.files().get(&req.ino).is_some_and(|s| s.open == 0) {
            return None;
        }
        self.keep_setattr(req).or_else(|| self.setattr_here(req))
    }

    /// Keeps a change of mode, owner or explicit times of a file this mount holds the write
    /// lease on, to go to the MDS with the next size send (close, fsync, a revocation...),
    /// which then gives the lease back in the same request if nothing else is unsent:
    /// extracting a file (write, futimens, fchown, fchmod, close) makes one update after the
    /// write's instead of four. No other mount can see the file's attributes without
    /// revoking that lease first, which sends them. The MDS applies such changes as given
    /// (the kernel checked the caller's permissions, and sends the mode a chown leaves).
    /// A kept mode change leaves the file's access ACL, which the MDS rewrites with the mode,
    /// as it was: calls on the file's ACL send kept changes first. Returns the attributes as
    /// they now are, or None if the change must go now.
    fn keep_setattr(&self, req: &SetAttrRequest) -> Option<Attr> {
        let explicit = |t: &Option<SetTime>| t.as_ref().is_none_or(|t| !t.now && t.time.is_some());
        let what = req.perm.is_some()
            || req.uid.is_some()
            || req.gid.is_some()
            || req.atime.is_some()
            || req.mtime.is_some();
        let other = req.size.is_some()
            || req.grow_size.is_some()
            || req.want_write_lease
            || req.release_write_lease
            || req.keep_mark.is_some();
        if !what || other || !explicit(&req.atime) || !explicit(&req.mtime) {
            return None;
        }
        let ino = req.ino;
        let cached = self.cached_raw(ino)?;
        {
            let mut files = self.files();
            let s = files.get_mut(&ino)?;
            let leased = s.write_leased();
            let session = self.cluster.session();
            if !leased || s.lease_session != session || (s.unsent() && s.dirty_session != session) {
                return None;
            }
            s.dirty_session = session;
            s.kept_until = s.kept_until.max(s.write_until);
            let time = |t: &Option<SetTime>| t.as_ref().and_then(|t| t.time);
            let k = &mut s.kept_attrs;
            k.perm = req.perm.map(|p| p & 0o7777).or(k.perm);
            k.uid = req.uid.or(k.uid);
            k.gid = req.gid.or(k.gid);
            k.atime = time(&req.atime).or(k.atime);
            k.mtime = time(&req.mtime).or(k.mtime);
            k.ctime = Some(now());
            // A size on its way now does not carry this change: it stays kept.
            s.generation += 1;
        }
        if req.perm.is_some() {
            // The access ACL, if any, changes with the mode once the MDS has it: what is
            // cached of it goes, and the next call on it sends the mode first.
            self.xattrs_changed_here(ino);
        }
        Some(self.overlay(cached))
    }

    /// Attribute changes kept under a write lease that ran out go only if the MDS keeps the
    /// lease (no one else touched the file meanwhile); otherwise they are dropped, and the
    /// file's next fsync or close reports it.
    async fn check_kept_attrs(&self, ino: u64) -> Result<()> {
        let expired = |c: &Client| {
            c.files().get(&ino).is_some_and(|s| {
                !s.kept_attrs.is_empty() && s.kept_until.is_none_or(|u| u <= Instant::now())
            })
        };
        if !expired(self) || self.keep_lease(ino, true).await.unwrap_or(false) || !expired(self) {
            return Ok(());
        }
        let e = ClientError::errno_msg(
            libc::EIO,
            "the write lease ran out and the file changed hands before its attribute changes \
             could be sent",
        );
        if let Some(s) = self.files().get_mut(&ino) {
            self.drop_kept(s, e.clone());
        }
        Err(e)
    }

    /// Attribute changes kept with `ino`'s unsent size go to the MDS now, before a call on
    /// its ACL `name`, whose answer or effect depends on them (the access ACL follows the
    /// mode, and an ACL set sets the mode). Other attributes do not wait.
    async fn send_kept_attrs(&self, ino: u64, name: &[u8]) -> Result<()> {
        if !name.starts_with(b"system.posix_acl") {
            return Ok(());
        }
        let kept = self
            .files()
            .get(&ino)
            .is_some_and(|s| !s.kept_attrs.is_empty());
        if kept {
            self.flush(ino).await?;
        }
        Ok(())
    }

    /// fallocate(2). Objects are sparse, so mode 0 and `KEEP_SIZE` reserve no space; they
    /// only grow the size (mode 0). `PUNCH_HOLE` and `ZERO_RANGE` zero the range on the OSDs
    /// (whole objects are deleted). Other modes: `EOPNOTSUPP`.
    pub async fn fallocate(&self, ino: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        use libc::{EOPNOTSUPP, FALLOC_FL_ZERO_RANGE as ZERO};
        use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH};
        if mode & !(KEEP | PUNCH | ZERO) != 0
            || (mode & PUNCH != 0 && (mode & KEEP == 0 || mode & ZERO != 0))
        {
            return Err(ClientError::errno_msg(
                EOPNOTSUPP,
                format!("fallocate mode {mode:#x} is not supported"),
            ));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= shoal_proto::limits::FILE_SIZE_MAX)
            .ok_or_else(|| ClientError::errno_msg(EFBIG, "fallocate past the largest file size"))?;
        self.flush(ino).await?;
        let attr = self.getattr_raw(ino).await?;
        if attr.kind != FileKind::Regular as i32 {
            return Err(ClientError::errno_msg(libc::ENODEV, "not a regular file"));
        }
        let zero = mode & (PUNCH | ZERO) != 0;
        if zero && off < attr.size {
            let layout = attr
                .layout
                .unwrap_or_else(shoal_proto::layout::default_layout);
            let session = self.cluster.session();
            self.cluster
                .zero_range(session, ino, &layout, off, end.min(attr.size) - off)
                .await?;
        }
        let grow = mode & KEEP == 0 && end > attr.size;
        // As on ext4: ctime always, mtime when the data or the size changed.
        let req = SetAttrRequest {
            ino,
            size: grow.then_some(end),
            mtime: (zero || grow).then_some(SetTime {
                now: true,
                time: None,
            }),
            ..Default::default()
        };
        self.setattr(req).await.map(|_| ())
    }

    /// Creates a file, directory, device, fifo, socket or symlink. A new directory comes
    /// with its directory lease when the MDS grants it: files made in it are made here.
    pub async fn make_node(&self, req: MakeNodeRequest) -> Result<Attr> {
        if let Some(attr) = self.create_here(&req) {
            return Ok(attr);
        }
        let want_dir_lease = req.kind == FileKind::Directory as i32 && self.asks_dir_leases();
        Ok(self
            .make_node_leased(MakeNodeRequest {
                want_dir_lease,
                ..req
            })
            .await?
            .0)
    }

    /// A create or mkdir made here under the directory's lease (see `create_here`), with
    /// nothing to wait for: the FUSE thread answers it itself, without a hand-off to the
    /// runtime and back. None: it takes [`Client::create`] or [`Client::make_node`].
    pub fn make_at_once(&self, req: &MakeNodeRequest) -> Option<Attr> {
        self.create_here(req).map(|a| self.overlay(a))
    }

    /// An unlink (`dir`: rmdir) made here under the directory's lease, as
    /// [`Client::make_at_once`]; false: it takes [`Client::unlink`].
    pub fn unlink_at_once(&self, parent: u64, name: &[u8], dir: bool) -> bool {
        if dir {
            self.rmdir_here(parent, name).is_some()
        } else {
            self.unlink_here(parent, name).is_some()
        }
    }

    /// [`Client::make_node`], and the write lease granted with it (milliseconds).
    async fn make_node_leased(&self, req: MakeNodeRequest) -> Result<(Attr, u32)> {
        let (parent, name) = (req.parent, req.name.clone());
        self.make_entry("make_node", parent, &name, 0, req, |mut c, r| async move {
            c.make_node(r).await
        })
        .await
    }

    /// Creates (or, without `exclusive`, opens an existing) regular file and opens it. A new
    /// file comes with its write lease: its first writes stay here too.
    pub async fn create(&self, req: MakeNodeRequest) -> Result<Attr> {
        if let Some(attr) = self.create_here(&req) {
            return Ok(self.overlay(attr));
        }
        let sent = Instant::now();
        let session = self.cluster.session();
        // The directory lease is of use only where every entry is known here.
        let want_dir_lease =
            self.asks_dir_leases() && self.leases().get(&req.parent).is_some_and(|l| l.complete);
        let (attr, write_ms) = self
            .make_node_leased(MakeNodeRequest {
                want_write_lease: true,
                want_dir_lease,
                ..req
            })
            .await?;
        self.opened(&attr);
        if write_ms > 0 {
            // As a size send's grant: a revocation's give-back waits for it, or it sees the
            // revocation and does not count.
            let sending = self.files().get(&attr.ino).map(|s| s.sending.clone());
            if let Some(sending) = sending {
                let _one = sending.lock().await;
                self.write_lease_granted(attr.ino, session, attr.writer_mark, sent, write_ms);
            }
        }
        Ok(self.overlay(attr))
    }

    /// Records the write lease on `ino` granted to `session` with writer mark `mark` by a
    /// request sent at `sent`, unless the MDS revoked this mount's leases on it since.
    /// Returns whether it counts.
    fn write_lease_granted(
        &self,
        ino: u64,
        session: u64,
        mark: u64,
        sent: Instant,
        ms: u32,
    ) -> bool {
        let revoked = self
            .leases()
            .get(&ino)
            .and_then(|l| l.revoked)
            .is_some_and(|r| r >= sent);
        if revoked || mark == 0 {
            return false;
        }
        let mut files = self.files();
        let Some(s) = files.get_mut(&ino) else {
            return false;
        };
        s.hold_write_lease(session, mark, sent, Duration::from_millis(ms as u64));
        drop(files);
        // Held again: a give-back of an older mark still queued goes (the MDS would refuse it).
        self.releases().remove(&ino);
        true
    }

    fn releases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, u64)>> {
        self.releases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This mount stops using its write lease on `ino` (in `s`) with nothing unsent: the lease
    /// is given back in the background, so the file's writer mark goes before the lease would
    /// run out (another mount's look at a marked file whose writer is gone makes the MDS look
    /// for its writes on the OSDs).
    fn stop_using_lease(&self, ino: u64, s: &mut FileState) {
        if s.write_until.take().is_some() && s.lease_mark > 0 && !self.unmark_queued(ino) {
            self.releases().insert(ino, (s.lease_session, s.lease_mark));
        }
    }

    /// Gives back the write leases queued by [`Client::stop_using_lease`] (of `only` one
    /// file, or all), all at once; each goes only if the file still has the mark it was
    /// granted with. Failures are left to the next look at the file. Returns once any batch
    /// already on its way has landed too, so a revocation's ack follows the give-back.
    pub async fn send_releases(&self, only: Option<u64>) {
        // After any batch already on its way, which may hold `only`'s.
        let _one = self.releasing.lock().await;
        let session = self.cluster.session();
        let due: Vec<(u64, u64)> = {
            let mut q = self.releases();
            let inos: Vec<u64> = match only {
                Some(ino) => q.contains_key(&ino).then_some(ino).into_iter().collect(),
                None => q.keys().copied().collect(),
            };
            inos.into_iter()
                .filter_map(|ino| q.remove(&ino).map(|(s, m)| (ino, s, m)))
                // An evicted session's marks are its successor's MDS's business.
                .filter(|&(_, s, _)| s == session)
                .map(|(ino, _, m)| (ino, m))
                .collect()
        };
        for chunk in due.chunks(shoal_proto::limits::RELEASES_MAX) {
            let req = ReleaseWritesRequest {
                files: chunk
                    .iter()
                    .map(|&(ino, writer_mark)| WriterMark { ino, writer_mark })
                    .collect(),
            };
            let r = self
                .cluster
                .mds_mutate("release_writes", req, |mut c, r| async move {
                    c.release_writes(r).await
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(files = chunk.len(), error = %e, "cannot give write leases back");
            }
        }
    }

    /// Opens a file: registers it so writes can track its size.
    pub async fn open(&self, ino: u64) -> Result<Attr> {
        if let Some(a) = self.open_cached(ino) {
            return Ok(a);
        }
        let attr = self.getattr_raw(ino).await?;
        Ok(self.open_with(attr))
    }

    /// [`Client::open`] of a file whose attributes are cached under a live lease (nothing to
    /// ask the MDS); None otherwise, and nothing is opened.
    pub fn open_cached(&self, ino: u64) -> Option<Attr> {
        Some(self.open_with(self.cached_raw(ino)?))
    }

    fn open_with(&self, attr: Attr) -> Attr {
        if attr.kind == FileKind::Regular as i32 {
            self.opened(&attr);
        }
        self.overlay(attr)
    }

    fn opened(&self, attr: &Attr) {
        let mut files = self.files();
        let st = files.entry(attr.ino).or_insert_with(|| FileState {
            open: 0,
            layout: attr
                .layout
                .unwrap_or_else(shoal_proto::layout::default_layout),
            size: attr.size,
            pending: None,
            dirty_mtime: None,
            kept_attrs: KeptAttrs::default(),
            generation: 0,
            orphan: false,
            write_until: None,
            lease_session: 0,
            lease_mark: 0,
            lease_len: Duration::ZERO,
            dirty_session: 0,
            sending: Arc::default(),
            dirty: Extents::default(),
            kept_until: None,
            kept_since: None,
            flushing: None,
            flush_lock: Arc::default(),
            flush_queued: false,
            flush_error: None,
            realm: attr.realm,
            quota_room: None,
        });
        st.open += 1;
    }

    fn open_state(&self, ino: u64) -> Result<Opened> {
        self.files()
            .get(&ino)
            .map(|s| Opened {
                layout: s.layout,
                size: s.pending.unwrap_or(0).max(s.size),
            })
            .ok_or_else(|| not_open(ino))
    }

    /// Reads `[off, off + len)` (bounded by the size already) with this mount's unsent
    /// writes laid over what the OSDs hold.
    async fn read_range(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        off: u64,
        len: u64,
        size: u64,
    ) -> Result<Bytes> {
        // Taken before the OSDs are asked: what a flush finishing meanwhile sent is then
        // either still here or already on the OSDs when they answer.
        let end = off + len;
        let pieces = match self.files().get(&ino) {
            Some(s) => {
                let mut p = s
                    .flushing
                    .as_ref()
                    .map_or_else(Vec::new, |f| f.within(off, end));
                p.extend(s.dirty.within(off, end));
                p
            }
            None => Vec::new(),
        };
        let base = if covers(&pieces, off, end) {
            Bytes::new()
        } else {
            self.read_base(session, ino, layout, off, len, size).await?
        };
        Ok(overlay(base, off, len, &pieces))
    }

    /// What the OSDs hold of `[off, off + len)` of a file of `size` bytes: a small read under
    /// the file's read lease from the blocks kept here (see [`crate::readcache`]), fetching
    /// and keeping the ones missing.
    async fn read_base(
        &self,
        session: u64,
        ino: u64,
        layout: &Layout,
        off: u64,
        len: u64,
        size: u64,
    ) -> Result<Bytes> {
        let cache = self.cluster.read_cache();
        let after = (len <= BLOCK && cache.enabled())
            .then(|| self.data_kept_after(ino))
            .flatten();
        let Some(after) = after else {
            return self.cluster.read(session, ino, layout, off, len).await;
        };
        let end = off + len;
        let mut parts = Vec::with_capacity(2);
        for idx in off / BLOCK..=(end - 1) / BLOCK {
            let (from, to) = (idx * BLOCK, ((idx + 1) * BLOCK).min(size));
            let need = end.min(to) - from;
            let data = match cache.get(ino, idx, after, need) {
                Some(d) => d,
                None if !cache.worth_fetching(ino) => {
                    return self.cluster.read(session, ino, layout, off, len).await;
                }
                None => {
                    let sent = Instant::now();
                    let d = match self
                        .cluster
                        .read(session, ino, layout, from, to - from)
                        .await
                    {
                        Ok(d) => d,
                        // The block around the read may hold what the read itself does not
                        // (a damaged checksum block elsewhere in it): ask for the read alone.
                        Err(_) => return self.cluster.read(session, ino, layout, off, len).await,
                    };
                    // Its own buffer: a kept block does not hold on to a larger reply's.
                    let d = Bytes::copy_from_slice(&d);
                    cache.put(ino, idx, d.clone(), sent);
                    d
                }
            };
            parts.push((from, data));
        }
        if let [(from, d)] = parts.as_slice() {
            return Ok(d.slice((off - from) as usize..(end - from) as usize));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for (from, d) in parts {
            let a = off.max(from) - from;
            let b = end.min(from + d.len() as u64) - from;
            out.extend_from_slice(&d[a as usize..b as usize]);
        }
        Ok(out.freeze())
    }

    /// Whether this mount may read `ino` from the OSDs and what it kept as it is: under its
    /// live read lease, or its own write lease.
    fn may_read(&self, ino: u64, session: u64) -> bool {
        if self.ttl(ino) > Duration::ZERO {
            return true;
        }
        self.files()
            .get(&ino)
            .is_some_and(|s| s.lease_session == session && s.write_leased())
    }

    /// Since when data read of `ino` may be kept and used: when this mount's unbroken read
    /// lease on it began, or when this mount last changed it, whichever is later; None
    /// without a live lease.
    fn data_kept_after(&self, ino: u64) -> Option<Instant> {
        let renewal = self.renewal();
        let leases = self.leases();
        let l = leases.get(&ino).filter(|l| Self::live(l, renewal))?;
        let held = l.held_since?;
        Some(l.floor.map_or(held, |f| f.max(held)))
    }

    /// Reads up to `len` bytes at `off` of a file open as handle `fh`.
    pub async fn read(&self, fh: u64, ino: u64, off: u64, len: u32) -> Result<Bytes> {
        let session = self.handle(fh)?;
        if !self.may_read(ino, session) {
            // Another mount may hold the file's write lease with writes it kept, or write
            // without one: a look at the MDS revokes its lease (its data reaches the OSDs
            // first) and grants this mount a read lease, which every later write revokes
            // before it returns. Through a mount the kernel has looked already (its attributes
            // went with the lease); the library's reads come here directly.
            self.getattr_raw(ino).await?;
        }
        let st = self.open_state(ino)?;
        let size = st.size;
        // The size may have grown through another mount; ask when reading past what we know,
        // unless this mount's lease on the file is live: another mount's growth revokes it
        // before that mount's write returns, so the size cached under it is the file's.
        let size = if off + len as u64 > size {
            // (The MDS's size: the one kept in the file's state; unsent writes here are laid
            // over it where it is used.)
            let fresh = match self.cached_raw(ino) {
                Some(a) => a.size,
                None => self.getattr_raw(ino).await?.size,
            };
            if let Some(s) = self.files().get_mut(&ino) {
                s.size = fresh;
            }
            fresh.max(size)
        } else {
            size
        };
        if off >= size {
            return Ok(Bytes::new());
        }
        let len = (len as u64).min(size - off);
        self.read_range(session, ino, &st.layout, off, len, size)
            .await
    }

    /// Writes `data` at `off` of a file open as handle `fh`. Under the file's write lease the
    /// data stays here until a flush (see [`Client::flush_dirty`]); without it, it is durable
    /// on the OSDs and its size known to the MDS when this returns.
    pub async fn write(self: &Arc<Self>, fh: u64, ino: u64, off: u64, data: Bytes) -> Result<u32> {
        let session = self.handle(fh)?;
        let len = data.len() as u64;
        let end = off
            .checked_add(len)
            .filter(|&e| e <= shoal_proto::limits::FILE_SIZE_MAX);
        let Some(end) = end else {
            return Err(ClientError::errno_msg(
                EFBIG,
                "write past the largest file size",
            ));
        };
        self.quota_check(ino, end).await?;
        match self.keep_write(session, ino, off, &data, end, true)? {
            Some(true) => {
                self.flush_dirty(ino).await?;
                return Ok(len as u32);
            }
            Some(false) => return Ok(len as u32),
            None => {}
        }
        // Without the lease: after whatever is still kept here, straight to the OSDs. Kept
        // data that cannot be sent is this write's business only through fsync or close.
        let _ = self.flush_dirty(ino).await;
        let layout = self.open_state(ino)?.layout;
        self.cluster.write(session, ino, &layout, off, data).await?;
        let leased = match self.files().get_mut(&ino) {
            Some(s) => {
                s.written(session, end);
                s.write_leased()
            }
            None => true,
        };
        if !leased {
            // Other mounts must see the new size and mtime once this returns: send them now,
            // asking for the write lease so the next writes need not.
            self.send_size(ino, true).await?;
        }
        Ok(len as u32)
    }

    /// A write kept under the file's write lease without waiting for anything: the bytes
    /// written, or None when it has to go the long way ([`Client::write`]): no write lease,
    /// a quota the MDS must be asked about, or as much kept already as may be. Called with
    /// the runtime entered (a flush it starts is spawned there).
    pub fn write_at_once(
        self: &Arc<Self>,
        fh: u64,
        ino: u64,
        off: u64,
        data: &Bytes,
    ) -> Option<Result<u32>> {
        let session = match self.handle(fh) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let len = data.len() as u64;
        let end = off
            .checked_add(len)
            .filter(|&e| e <= shoal_proto::limits::FILE_SIZE_MAX)?;
        if !self.quota_ok_now(ino, end) {
            return None;
        }
        match self.keep_write(session, ino, off, data, end, false) {
            Ok(Some(_)) => Some(Ok(len as u32)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Keeps `data` at `off` of open file `ino` if this mount holds its write lease under
    /// `session`; starts a background flush once enough is kept. Some(true) if the caller
    /// must now send what is kept before answering (too much kept: only when `may_wait`,
    /// else nothing is kept and the answer is None), Some(false) if kept, None without the
    /// lease. The lease is checked and the data kept under one lock, which a give-back
    /// takes before it flushes: no write is kept once the lease is on its way back.
    fn keep_write(
        self: &Arc<Self>,
        session: u64,
        ino: u64,
        off: u64,
        data: &Bytes,
        end: u64,
        may_wait: bool,
    ) -> Result<Option<bool>> {
        let (wait, start) = {
            let mut files = self.files();
            let s = files.get_mut(&ino).ok_or_else(|| not_open(ino))?;
            if s.lease_session != session || !s.write_leased() {
                return Ok(None);
            }
            if !may_wait {
                // What keeping it could bring the file and the mount to, at most.
                let len = data.len() as u64;
                let held = s.dirty.cost() + s.flushing.as_ref().map_or(0, |f| f.cost()) + len;
                let total = self.dirty_total.load(Ordering::Relaxed) + len;
                if held > FILE_DIRTY_MAX || total > MOUNT_DIRTY_MAX {
                    return Ok(None);
                }
            }
            if s.dirty_session != session && !s.dirty.is_empty() {
                // Kept under a session that was evicted since: it may not land.
                self.drop_kept(s, ClientError::Evicted(s.dirty_session));
            }
            let before = s.dirty.cost();
            s.dirty.insert(off, data.clone());
            s.kept_until = s.write_until;
            s.kept_since.get_or_insert_with(Instant::now);
            // A write over several pieces can leave fewer of them: the cost may shrink.
            let total = self.recount(before, s.dirty.cost());
            s.written(session, end);
            let held = s.dirty.cost() + s.flushing.as_ref().map_or(0, |f| f.cost());
            let wait = held > FILE_DIRTY_MAX || total > MOUNT_DIRTY_MAX;
            let start = !wait && !s.flush_queued && s.dirty.cost() >= FLUSH_AT;
            s.flush_queued |= start;
            (wait, start)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.flush_dirty(ino).await });
        }
        Ok(Some(wait))
    }

    /// Whether a write up to `end` fits every quota above file `ino` by what this mount
    /// knows, without asking the MDS (see [`Client::quota_check`]).
    fn quota_ok_now(&self, ino: u64, end: u64) -> bool {
        let files = self.files();
        let Some(s) = files.get(&ino) else {
            return true;
        };
        if end <= s.pending.unwrap_or(0).max(s.size) || s.realm == 0 {
            return true;
        }
        // The MDS's room leaves out what this mount grew the file by and has not sent yet:
        // the growth counts from the size the MDS knows.
        match s.quota_room {
            Some(None) => true,
            Some(Some(room)) => room >= end - s.size,
            None => false,
        }
    }

    /// EDQUOT if growing file `ino` to `end` would take a quota over it past its limit, as far
    /// as this mount knows (asking the MDS once when it does not know enough); the MDS checks
    /// again when the size reaches it.
    async fn quota_check(&self, ino: u64, end: u64) -> Result<()> {
        // What the mount knows of the room may be stale: asked again once before EDQUOT.
        for asked in [false, true] {
            if self.quota_ok_now(ino, end) {
                return Ok(());
            }
            if asked {
                break;
            }
            self.getattr_raw(ino).await?;
        }
        Err(ClientError::errno_msg(
            libc::EDQUOT,
            "over a quota of a directory above the file",
        ))
    }

    /// Sends the data written under the write lease to the OSDs (after the flush in flight,
    /// if any). Data that may not land any more is dropped (EIO): kept under a session that
    /// was evicted, or under a lease that ran out before it was sent (its locks or the file
    /// may belong to another client by now). A failure is also kept for the file's next
    /// fsync or close (see [`Client::take_flush_error`]).
    pub async fn flush_dirty(&self, ino: u64) -> Result<()> {
        self.flush_dirty_asking(ino, true).await
    }

    /// [`Client::flush_dirty`]; without `may_ask`, nothing that may wait for the MDS: data
    /// kept past its lease is left where it is instead of asking the MDS to keep the lease,
    /// and nothing is sent while another flush of the file is under way (for the sender of
    /// queued changes, which an MDS call waits for).
    pub(crate) async fn flush_dirty_asking(&self, ino: u64, may_ask: bool) -> Result<()> {
        let r = self.flush_dirty_once(ino, may_ask).await;
        if let Err(e) = &r {
            warn!(ino, error = %e, "cannot send a file's written data");
            self.latch(ino, e.clone());
        }
        r
    }

    async fn flush_dirty_once(&self, ino: u64, may_ask: bool) -> Result<()> {
        let Some(one) = self.files().get(&ino).map(|s| s.flush_lock.clone()) else {
            return Ok(());
        };
        let _one = if may_ask {
            one.lock().await
        } else {
            // A flush under way may be asking the MDS, which waits for the caller.
            match one.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(()),
            }
        };
        let mut asked = false;
        let (taken, session, layout) = loop {
            {
                let mut files = self.files();
                let Some(s) = files.get_mut(&ino) else {
                    return Ok(());
                };
                s.flush_queued = false;
                if s.dirty.is_empty() {
                    return Ok(());
                }
                let expired = s.kept_until.is_none_or(|u| u <= Instant::now());
                let lost = if s.dirty_session != self.cluster.session() {
                    Some(ClientError::Evicted(s.dirty_session))
                } else if expired && asked {
                    Some(ClientError::errno_msg(
                        libc::EIO,
                        "the write lease ran out and the file changed hands before the \
                         written data could be sent",
                    ))
                } else {
                    None
                };
                if let Some(e) = lost {
                    self.drop_kept(s, e.clone());
                    return Err(e);
                }
                if !expired {
                    s.kept_since = None;
                    let taken = Arc::new(std::mem::take(&mut s.dirty));
                    s.flushing = Some(taken.clone());
                    break (taken, s.dirty_session, s.layout);
                }
            }
            // The lease ran out (a slow flush before this one, a frozen mount): the kept data
            // may still go if the MDS keeps the lease, i.e. no one else touched the file.
            if !may_ask {
                return Ok(());
            }
            asked = true;
            if let Err(e) = self.keep_lease(ino, true).await {
                debug!(ino, error = %e, "cannot ask to keep a write lease");
            }
        };
        // Clears `flushing` and the count even if this future is dropped midway.
        let _done = FlushDone {
            client: self,
            ino,
            cost: taken.cost(),
        };
        // One request per object, every one waited for, so none lands after a later write.
        let runs = taken.runs();
        // The whole file as this mount knows it: then kept for reads here once it landed.
        let whole = matches!(runs.as_slice(), [(0, d)] if self
            .files()
            .get(&ino)
            .is_some_and(|s| s.size.max(s.pending.unwrap_or(0)) == d.len() as u64));
        self.cluster
            .write_runs(session, ino, &layout, &runs, whole)
            .await
    }

    /// Moves the mount's count of held bytes from a file's `before` to its `after`; the new
    /// total.
    fn recount(&self, before: u64, after: u64) -> u64 {
        if after >= before {
            self.dirty_total
                .fetch_add(after - before, Ordering::Relaxed)
                + (after - before)
        } else {
            self.dirty_total
                .fetch_sub(before - after, Ordering::Relaxed)
                .saturating_sub(before - after)
        }
    }

    /// Drops the data and attribute changes `s` keeps, which may not land: `e` goes to its
    /// next fsync or close.
    fn drop_kept(&self, s: &mut FileState, e: ClientError) {
        let dropped = std::mem::take(&mut s.dirty);
        self.dirty_total
            .fetch_sub(dropped.cost(), Ordering::Relaxed);
        s.kept_since = None;
        let attrs = std::mem::take(&mut s.kept_attrs);
        if !dropped.is_empty() || !attrs.is_empty() {
            s.flush_error.get_or_insert(e);
        }
    }

    /// lseek SEEK_DATA / SEEK_HOLE: data is what the file's objects hold (a hole inside an
    /// object reads as zeros but counts as data, which POSIX allows), holes are the rest.
    pub async fn seek_data_hole(&self, ino: u64, off: i64, whence: i32) -> Result<i64> {
        use shoal_proto::layout::{first_object_at, object_file_ranges};
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(ClientError::errno_msg(libc::EINVAL, "unknown lseek whence"));
        }
        // What is written here counts as data only once the OSDs hold it.
        self.flush_dirty(ino).await?;
        let attr = self.getattr(ino).await?;
        let off = u64::try_from(off).unwrap_or(u64::MAX);
        if off >= attr.size {
            return Err(ClientError::errno_msg(
                libc::ENXIO,
                "offset at or past the end",
            ));
        }
        let layout = attr
            .layout
            .unwrap_or_else(shoal_proto::layout::default_layout);
        let objects = self
            .cluster
            .file_objects(ino, first_object_at(&layout, off))
            .await?;
        let mut data: Vec<(u64, u64)> = objects
            .into_iter()
            .flat_map(|(objno, size)| object_file_ranges(&layout, objno, size))
            .filter_map(|(a, b)| {
                let (a, b) = (a.max(off), b.min(attr.size));
                (a < b).then_some((a, b))
            })
            .collect();
        data.sort_unstable();
        let found = if whence == libc::SEEK_DATA {
            data.first().map(|&(a, _)| a)
        } else {
            let mut hole = off;
            for (a, b) in data {
                if a > hole {
                    break;
                }
                hole = hole.max(b);
            }
            Some(hole.min(attr.size))
        };
        match found {
            Some(pos) => Ok(pos as i64),
            None => Err(ClientError::errno_msg(
                libc::ENXIO,
                "no data past the offset",
            )),
        }
    }

    /// Sends local writes (the data, then the size and mtime) to the cluster, giving the
    /// write lease back.
    pub async fn flush(&self, ino: u64) -> Result<()> {
        self.send_size(ino, false).await
    }

    /// The data part of a close of handle `fh`: local writes reach the OSDs, and a flush
    /// that failed since the last fsync or close is reported. EIO if its session was evicted.
    pub async fn flush_data_handle(&self, fh: u64, ino: u64) -> Result<()> {
        self.handle(fh)?;
        let sent = self.flush_dirty(ino).await;
        self.flush_error(ino).and(sent)
    }

    /// [`Client::flush_data_handle`] for a close through the kernel, except that data kept
    /// past its write lease is left to the size part of the close, which waits for the MDS
    /// only briefly: such data goes only once the MDS keeps the lease, and the close may be
    /// another process's at exec (its copy of the descriptor), which must not hang on an MDS
    /// that is away (say, while that very process restarts it).
    pub async fn flush_data_at_close(&self, fh: u64, ino: u64) -> Result<()> {
        self.handle(fh)?;
        let past = self.files().get(&ino).is_some_and(|s| {
            !s.dirty.is_empty() && s.kept_until.is_none_or(|u| u <= Instant::now())
        });
        if past {
            return self.flush_error(ino);
        }
        self.flush_data_handle(fh, ino).await
    }

    /// The size part of a close of handle `fh`: EIO if its session was evicted.
    pub async fn flush_handle(&self, fh: u64, ino: u64) -> Result<()> {
        self.handle(fh)?;
        self.flush(ino).await
    }

    /// fsync of handle `fh`: data, size and mtime reach the cluster, and a write lease is
    /// renewed rather than given back (the writer is likely to go on writing).
    pub async fn fsync_handle(&self, fh: u64, ino: u64) -> Result<()> {
        self.handle(fh)?;
        // The file's create, if it was made here and not sent yet.
        self.cluster.changes_settled().await;
        let leased = self.files().get(&ino).is_some_and(|s| s.write_leased());
        let sent = self.send_size(ino, leased).await;
        self.take_flush_error(ino).and(sent)
    }

    /// Sends local writes to the cluster, asking for the write lease if `want_lease`;
    /// otherwise the lease goes back with them (and, if `release` and nothing is unsent, on
    /// its own).
    async fn send_size(&self, ino: u64, want_lease: bool) -> Result<()> {
        self.send_size_or_release(ino, want_lease, false, false)
            .await
    }

    /// [`Client::send_size`], or with `release` the lease goes back even with nothing
    /// unsent; with `closed_only`, nothing is done once the file is open here again (its
    /// handle's fsync or close sends, and it may be using the lease).
    async fn send_size_or_release(
        &self,
        ino: u64,
        want_lease: bool,
        release: bool,
        closed_only: bool,
    ) -> Result<()> {
        let Some(sending) = self.files().get(&ino).map(|s| s.sending.clone()) else {
            return Ok(());
        };
        let _one = sending.lock().await;
        let mut want_lease = want_lease;
        loop {
            let had_lease = {
                let mut files = self.files();
                let Some(s) = files.get_mut(&ino) else {
                    return Ok(());
                };
                if closed_only && s.open > 0 {
                    return Ok(());
                }
                if s.unsent() && s.dirty_session != self.cluster.session() {
                    // Written under an evicted session: dropped (see the module docs).
                    let e = ClientError::Evicted(s.dirty_session);
                    self.drop_kept(s, e.clone());
                    s.size_sent();
                    return Err(e);
                }
                if !(s.unsent() || release && s.write_until.is_some()) {
                    if !want_lease {
                        self.stop_using_lease(ino, s);
                    }
                    return Ok(());
                }
                // The lease is not used while a size is on its way (a renewal may be refused):
                // writes meanwhile go to the OSDs and send their own sizes after this one.
                s.write_until.take().is_some()
            };
            // The data first: the MDS may hand the file to another client once it has this.
            self.flush_dirty(ino).await?;
            self.check_kept_attrs(ino).await?;
            let (pending, generation, kept, written) = {
                let files = self.files();
                let Some(s) = files.get(&ino) else {
                    return Ok(());
                };
                if !(s.unsent() || release && had_lease) {
                    return Ok(());
                }
                (
                    s.dirty_mtime.map(|_| s.pending.unwrap_or(s.size)),
                    s.generation,
                    s.kept_attrs.clone(),
                    s.dirty_mtime,
                )
            };
            // The MDS grows the size, then applies the kept changes over it. The mtime is the
            // last write's, as this mount showed it meanwhile (not the time of this send,
            // which may come well after a close left it to the background).
            let mut req = SetAttrRequest {
                ino,
                grow_size: pending,
                want_write_lease: want_lease,
                // A size gives the lease back by itself.
                release_write_lease: pending.is_none() && !want_lease,
                ..kept.request(ino)
            };
            if req.mtime.is_none() {
                req.mtime = written.map(|t| SetTime {
                    now: false,
                    time: Some(t),
                });
            }
            let sent = Instant::now();
            let session = self.cluster.session();
            // (Never while keeping the lease: that asks the MDS.)
            let answer =
                match self.size_here(&req) {
                    // Queued after the file's create, which was not sent yet.
                    Some(a) => Ok((a, 0)),
                    None => {
                        self.leased_mutate("flush", None, req, |mut c, r| async move {
                            c.set_attr(r).await
                        })
                        .await
                    }
                };
            let (mark, write_ms) = match answer {
                Ok((a, ms)) => (a.writer_mark, ms),
                Err(e) if e.errno() == libc::EDQUOT => {
                    self.over_quota(ino, generation, pending, &e).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let revoked = self
                .leases()
                .get(&ino)
                .and_then(|l| l.revoked)
                .is_some_and(|r| r >= sent);
            let leased = write_ms > 0 && !revoked;
            let again = {
                let mut files = self.files();
                let Some(s) = files.get_mut(&ino) else {
                    return Ok(());
                };
                let covered = s.generation == generation;
                if covered {
                    s.size_sent();
                } else {
                    // None can be kept while a send is on its way (the lease is taken): the
                    // ones kept all went with it.
                    s.kept_attrs = KeptAttrs::default();
                }
                // Without a new grant the lease went back with the size.
                s.write_until = None;
                if leased {
                    let len = Duration::from_millis(write_ms as u64);
                    s.hold_write_lease(session, mark, sent, len);
                    self.releases().remove(&ino);
                }
                // Writes that returned meanwhile under the lease just lost: their size goes too.
                !leased && !covered && s.unsent()
            };
            if !again {
                return Ok(());
            }
            want_lease = false;
        }
    }

    /// A size sent to the MDS went past a quota (this mount's room was out of date): the
    /// growth is not recorded, so what was written past the recorded size is cut from the
    /// OSDs and the write lease goes back (clearing the file's writer mark, so no recovery
    /// brings those bytes back); the file's next fsync or close reports it.
    async fn over_quota(&self, ino: u64, generation: u64, pending: Option<u64>, e: &ClientError) {
        let (cut, kept) = {
            let mut files = self.files();
            let Some(s) = files.get_mut(&ino) else {
                return;
            };
            // Only the size went past the quota: kept attribute changes go with the give-back.
            let kept = std::mem::take(&mut s.kept_attrs);
            if s.generation == generation {
                s.size_sent();
            }
            s.flush_error.get_or_insert(e.clone());
            s.write_until = None;
            let cut = pending
                .filter(|&p| p > s.size)
                .map(|p| (s.size, p, s.layout, s.dirty_session));
            (cut, kept)
        };
        if let Some((size, end, layout, session)) = cut {
            if let Err(e) = self
                .cluster
                .truncate(session, ino, &layout, size, end)
                .await
            {
                warn!(ino, error = %e, "cannot cut data written past a quota");
            }
        }
        let give_back = SetAttrRequest {
            ino,
            release_write_lease: true,
            ..kept.request(ino)
        };
        let r = self
            .cluster
            .mds_mutate("release", give_back, |mut c, r| async move {
                c.set_attr(r).await
            })
            .await;
        self.changed_here(&[ino], &[]);
        if let Err(e) = r {
            warn!(ino, error = %e, "cannot give a write lease back");
        }
    }

    /// Asks the MDS to keep this mount's write lease on `ino` under the mark it was granted
    /// with (`SetAttr.keep_mark`), even if it ran out: granted only while no one else touched
    /// the file. Returns whether it holds the lease now; what it keeps may then be sent.
    ///
    /// `patient`: while the file still carries this mount's mark but the MDS grants no lease
    /// yet (a leader that just took over, before this session's lease stream is back), asks
    /// again for up to [`KEEP_PATIENCE`]: what is kept would otherwise be dropped.
    async fn keep_lease(&self, ino: u64, patient: bool) -> Result<bool> {
        let mut first_answer: Option<Instant> = None;
        loop {
            let r = self.keep_lease_once(ino).await?;
            // Patience counts from the first answer: the first call may itself have waited
            // for queued changes or an MDS restart, and a clock started before it could run
            // out on that one answer (the data kept then dropped: EIO at fsync).
            let since = *first_answer.get_or_insert_with(Instant::now);
            match r {
                Keep::Held => return Ok(true),
                Keep::Marked if patient && since.elapsed() < KEEP_PATIENCE => {
                    tokio::time::sleep(KEEP_RETRY).await;
                }
                Keep::Marked | Keep::Lost => return Ok(false),
            }
        }
    }

    async fn keep_lease_once(&self, ino: u64) -> Result<Keep> {
        let (mark, session) = match self.files().get(&ino) {
            Some(s) if s.lease_session == self.cluster.session() && s.lease_mark > 0 => {
                (s.lease_mark, s.lease_session)
            }
            s => {
                debug!(ino, state = ?s.map(|s| (s.lease_session, s.lease_mark)),
                    "no write lease to keep");
                return Ok(Keep::Lost);
            }
        };
        let req = SetAttrRequest {
            ino,
            want_write_lease: true,
            keep_mark: Some(mark),
            ..Default::default()
        };
        // The lease counts from when the request that got it went, after any wait for queued
        // changes or for an MDS that was away: counted from before them, it could be over on
        // arrival, and what it was asked for dropped.
        let last_sent = std::sync::Mutex::new(Instant::now());
        let r = self
            .cluster
            .mds("keep lease", |mut c| {
                *last_sent.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                async move { c.set_attr(req).await }
            })
            .await?;
        let sent = *last_sent.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = self
            .leases()
            .get(&ino)
            .and_then(|l| l.revoked)
            .is_some_and(|r| r >= sent);
        let mut files = self.files();
        let Some(s) = files.get_mut(&ino) else {
            return Ok(Keep::Lost);
        };
        if revoked || s.lease_session != session || s.lease_mark != mark {
            debug!(
                ino,
                revoked, "write lease not kept: revoked or given back meanwhile"
            );
            return Ok(Keep::Lost);
        }
        if r.write_lease_ms == 0 {
            let marked = r
                .attr
                .is_some_and(|a| a.writer == session && a.writer_mark == mark);
            debug!(ino, marked, writer = ?r.attr.map(|a| (a.writer, a.writer_mark)), mark,
                "write lease not kept now");
            return Ok(if marked { Keep::Marked } else { Keep::Lost });
        }
        let len = Duration::from_millis(r.write_lease_ms as u64);
        let until = sent + len.saturating_sub(LEASE_MARGIN);
        if until <= Instant::now() {
            // Granted, but counted from when the request went it is over already (it waited
            // at an MDS that was stopped, say): the file still carries the mark, ask again.
            return Ok(Keep::Marked);
        }
        // A lease taken for a size or a give-back on its way stays taken (no write is kept
        // meanwhile); what is kept already may be sent under it.
        if s.write_until.is_some() {
            s.write_until = s.write_until.max(Some(until));
        }
        s.kept_until = s.kept_until.max(Some(until));
        s.lease_len = len;
        Ok(Keep::Held)
    }

    /// Keeps the write leases of files with unsent writes that end within `within`, and
    /// sends the data kept for a quarter of a lease (so little is left for a revocation to
    /// send). All files at once; a failure to send data is reported by the file's next fsync
    /// or close.
    pub async fn renew_write_leases(&self, within: Duration) {
        let now = Instant::now();
        let soon = now + within;
        let (due, aged): (Vec<u64>, Vec<u64>) = {
            let files = self.files();
            let due = files
                .iter()
                .filter(|(_, s)| {
                    let unsent = s.unsent() || s.flushing.is_some();
                    unsent && s.write_until.is_some_and(|u| u < soon)
                })
                .map(|(ino, _)| *ino)
                .collect();
            let aged = files
                .iter()
                .filter(|(_, s)| {
                    let age = (s.lease_len / 4).max(Duration::from_millis(100));
                    !s.flush_queued && s.kept_since.is_some_and(|k| now.duration_since(k) >= age)
                })
                .map(|(ino, _)| *ino)
                .collect();
            (due, aged)
        };
        let renewals = due.into_iter().map(|ino| async move {
            match self.keep_lease(ino, false).await {
                Ok(true) => {}
                // Refused (another mount wants the file: the MDS revokes the lease, and the
                // revocation sends everything) or the MDS is away: sent the usual way.
                Ok(false) | Err(_) => {
                    if let Err(e) = self.send_size(ino, false).await {
                        warn!(ino, error = %e, "cannot send a file's writes before its lease ends");
                    }
                }
            }
        });
        let flushes = aged.into_iter().map(|ino| async move {
            let _ = self.flush_dirty(ino).await;
        });
        // Closed files whose writes did not go yet (an MDS away, say) are tried again.
        let closed = self.closed_files();
        let closed = closed.into_iter().map(|ino| self.finish_closed(ino));
        futures::future::join3(
            futures::future::join_all(renewals),
            futures::future::join_all(flushes),
            futures::future::join_all(closed),
        )
        .await;
    }

    /// Closes handle `fh`; the last close of an unlinked file deletes its data.
    pub async fn release(&self, fh: u64, ino: u64) -> Result<()> {
        let flushed = self.flush_handle(fh, ino).await;
        let last = {
            let mut files = self.files();
            match files.get_mut(&ino) {
                Some(s) if s.open > 1 => {
                    s.open -= 1;
                    None
                }
                Some(_) => files.remove(&ino),
                None => None,
            }
        };
        if let Some(st) = &last {
            // Kept only if its flush failed, which `flushed` reports.
            self.dirty_total
                .fetch_sub(st.dirty.cost(), Ordering::Relaxed);
        }
        if let Some(st) = last.filter(|s| s.orphan) {
            let size = st.size.max(st.pending.unwrap_or(0));
            self.purge(ino, &st.layout, size).await?;
        }
        flushed
    }

    /// A close (`last`: the release of handle `fh`; otherwise a flush by lock owner `owner`)
    /// that has nothing to send, release or report: nothing written here waits, no lock of
    /// the closing owner may be held, no failure waits to be reported, and the release of an
    /// unlinked file's last handle is not due. Such a close is done here at once (the
    /// bookkeeping of [`Client::release`]) and true is returned; otherwise nothing changes.
    pub fn close_at_once(&self, fh: u64, ino: u64, owner: Option<u64>, last: bool) -> bool {
        if self.handle(fh).is_err() || owner.is_some_and(|o| self.lockers().contains(&(ino, o))) {
            return false;
        }
        let mut files = self.files();
        let Some(s) = files.get_mut(&ino) else {
            return !last;
        };
        let quiet = s.dirty.is_empty()
            && s.flushing.is_none()
            && !s.unsent()
            && s.flush_error.is_none()
            && !(last && s.open <= 1 && s.orphan);
        if !quiet {
            return false;
        }
        // As a size send with nothing to send: the write lease, unused, goes back later.
        self.stop_using_lease(ino, s);
        if last {
            if s.open > 1 {
                s.open -= 1;
            } else {
                files.remove(&ino);
            }
        }
        true
    }

    /// A close (a FUSE flush of handle `fh` by lock owner `owner`) of a file whose write
    /// lease this mount holds with time left, with nothing to report: the data kept here goes
    /// to the OSDs in the background, started now, instead of before the close returns (as a
    /// local filesystem writes its page cache back; fsync still waits for it). The lease stays
    /// held, so no other mount sees the file before the data and size landed. True: done.
    pub fn close_kept(self: &Arc<Self>, fh: u64, ino: u64, owner: u64) -> bool {
        if self.handle(fh).is_err() || self.lockers().contains(&(ino, owner)) {
            return false;
        }
        let start = {
            let mut files = self.files();
            let Some(s) = files.get_mut(&ino) else {
                return false;
            };
            if !self.keeps_after_close(s) {
                return false;
            }
            let start = !s.dirty.is_empty() && !s.flush_queued;
            s.flush_queued |= start;
            (start, s.dirty.cost() <= GATHER_MAX)
        };
        if let (true, small) = start {
            if !(small && self.gather_closed(ino, false)) {
                let me = self.clone();
                tokio::spawn(async move { me.flush_dirty(ino).await });
            }
        }
        true
    }

    /// Leaves what a close of new file `ino` kept to the next batch of queued changes, which
    /// its create is in (`finish`: its size too); false if its create went already. A tar's
    /// or a build's small files then reach each OSD in a few batched calls, one journal
    /// group for many, and their sizes go in the batch with their creates (see
    /// `Client::send_changes`).
    fn gather_closed(&self, ino: u64, finish: bool) -> bool {
        let mut q = self.dirops();
        if !q.runner || q.create_of(ino).is_none() {
            return false;
        }
        let mut c = self.closing.lock().unwrap_or_else(|p| p.into_inner());
        if finish {
            c.finish.push(ino);
        } else {
            c.flush.push(ino);
        }
        true
    }

    /// The last close (release of handle `fh`) of a file [`Client::close_kept`] would leave:
    /// its state stays here, closed, until the background has sent the data and the size and
    /// given the lease back ([`Client::finish_closed`]). True: done.
    pub fn release_kept(self: &Arc<Self>, fh: u64, ino: u64, owner: Option<u64>) -> bool {
        if self.handle(fh).is_err() || owner.is_some_and(|o| self.lockers().contains(&(ino, o))) {
            return false;
        }
        {
            let mut files = self.files();
            let Some(s) = files.get_mut(&ino) else {
                return false;
            };
            if s.open != 1 || !s.unsent() || !self.keeps_after_close(s) {
                return false;
            }
            s.open = 0;
        }
        if !self.gather_closed(ino, true) {
            let me = self.clone();
            tokio::spawn(async move { me.finish_closed(ino).await });
        }
        true
    }

    /// Queues the size, mtime and kept attribute changes of closed file `ino`, whose data
    /// went, after its create (still queued): no MDS call, so the sender of the queue may
    /// make it. False: they go the long way ([`Client::finish_closed`]).
    pub(crate) fn queue_closed_size(&self, ino: u64) -> bool {
        let Some(sending) = self.files().get(&ino).map(|s| s.sending.clone()) else {
            return false;
        };
        let Ok(_one) = sending.try_lock() else {
            return false;
        };
        let (req, generation) = {
            let mut files = self.files();
            let Some(s) = files.get_mut(&ino) else {
                return false;
            };
            let live = s.kept_until.is_none_or(|u| u > Instant::now());
            if s.open > 0
                || !s.unsent()
                || !s.dirty.is_empty()
                || s.flushing.is_some()
                || !live
                || s.dirty_session != self.cluster.session()
                || s.flush_error.is_some()
                || s.orphan
            {
                return false;
            }
            let pending = s.dirty_mtime.map(|_| s.pending.unwrap_or(s.size));
            let mut req = SetAttrRequest {
                ino,
                grow_size: pending,
                // A size gives the lease back by itself.
                release_write_lease: pending.is_none(),
                ..s.kept_attrs.request(ino)
            };
            if req.mtime.is_none() {
                req.mtime = s.dirty_mtime.map(|t| SetTime {
                    now: false,
                    time: Some(t),
                });
            }
            (req, s.generation)
        };
        if self.size_here(&req).is_none() {
            return false;
        }
        if let Some(s) = self.files().get_mut(&ino) {
            if s.generation == generation {
                s.size_sent();
            } else {
                s.kept_attrs = KeptAttrs::default();
            }
            s.write_until = None;
        }
        true
    }

    /// Whether a close of `s` may leave its writes to the background: the write lease is
    /// held for a while yet (kept data goes only under it), under this session, and no
    /// failure waits to be reported, nor an unlinked file's purge.
    fn keeps_after_close(&self, s: &FileState) -> bool {
        let soon = Instant::now() + CLOSE_MARGIN;
        s.write_until.is_some_and(|u| u > soon)
            && s.kept_until.is_none_or(|u| u > soon)
            && s.dirty_session == self.cluster.session()
            && s.flush_error.is_none()
            && !s.orphan
            // Usage under a quota is counted from the sizes the MDS has: they go at close.
            && s.realm == 0
    }

    /// Sends what a closed file (open nowhere here) kept, gives its write lease back, and
    /// forgets it; an unlinked one is purged then. A failure stays with the file for its next
    /// fsync or close here (unless it was unlinked).
    pub(crate) async fn finish_closed(&self, ino: u64) {
        // (Nothing goes once it is open here again: that handle's fsync or close sends.)
        if let Err(e) = self.send_size_or_release(ino, false, false, true).await {
            warn!(ino, error = %e, "cannot send a closed file's writes");
            self.latch(ino, e);
        }
        let gone = {
            let mut files = self.files();
            let done = files.get(&ino).is_some_and(|s| {
                s.open == 0
                    && !s.unsent()
                    && s.flushing.is_none()
                    && s.dirty.is_empty()
                    && (s.flush_error.is_none() || s.orphan)
            });
            if done {
                files.remove(&ino)
            } else {
                None
            }
        };
        if gone.is_some() {
            let now = Instant::now();
            let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            // Pruned at each power of two from 1,024 on, so each file's share stays constant
            // however many files settle within SETTLED_FOR.
            if settled.len() >= 1024 && settled.len().is_power_of_two() {
                settled.retain(|_, at| now.duration_since(*at) < SETTLED_FOR);
            }
            settled.insert(ino, now);
        }
        if let Some(st) = gone.filter(|s| s.orphan) {
            let size = st.size.max(st.pending.unwrap_or(0));
            if let Err(e) = self.purge(ino, &st.layout, size).await {
                warn!(ino, error = %e, "cannot purge an unlinked file");
            }
        }
    }

    /// Sends what every closed file kept (at unmount).
    pub async fn finish_all_closed(&self) {
        let closed = self.closed_files();
        futures::future::join_all(closed.into_iter().map(|ino| self.finish_closed(ino))).await;
    }

    /// Sends what every closed file kept, then reports the first failure to send that a
    /// closed file holds. Each failure is reported once (as an fsync or close reports it); what
    /// failed to go stays here and is sent again later.
    pub async fn sync_closed(&self) -> Result<()> {
        self.finish_all_closed().await;
        let mut files = self.files();
        let mut first = None;
        for s in files.values_mut().filter(|s| s.open == 0) {
            if let Some(e) = s.flush_error.take() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Before this mount reads a tree's usage or sets a first quota on it, which count the
    /// sizes and entries the MDS has: the writes closes left to the background and the
    /// queued creates reach the MDS (an open file's size goes at its close, as with CephFS).
    async fn usage_sent(&self) {
        self.finish_all_closed().await;
        self.cluster.changes_settled().await;
    }

    /// Files closed here whose writes a close left to the background.
    fn closed_files(&self) -> Vec<u64> {
        let files = self.files();
        files
            .iter()
            .filter(|(_, s)| s.open == 0)
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Deletes an orphan's objects, then queues the purge of its inode.
    async fn purge(&self, ino: u64, layout: &Layout, size: u64) -> Result<()> {
        let session = self.cluster.session();
        self.cluster.delete_data(session, ino, layout, size).await?;
        if !self.queue_purge(ino) {
            self.cluster
                .mds_mutate("purge", PurgeRequest { ino }, |mut c, r| async move {
                    c.purge(r).await
                })
                .await?;
        }
        self.changed_here(&[ino], &[]);
        Ok(())
    }

    /// A file lost its last link: purge it now, or at its last close here.
    pub(super) async fn on_orphan(&self, orphan: Option<Orphaned>) -> Result<()> {
        let Some(attr) = orphan.and_then(|o| o.attr) else {
            return Ok(());
        };
        {
            let mut files = self.files();
            if let Some(st) = files.get_mut(&attr.ino) {
                st.orphan = true;
                return Ok(());
            }
        }
        let layout = attr
            .layout
            .unwrap_or_else(shoal_proto::layout::default_layout);
        if let Err(e) = self.purge(attr.ino, &layout, attr.size).await {
            // The name is gone either way; the inode stays listed as an orphan on the MDS.
            warn!(ino = attr.ino, error = %e, "cannot purge an unlinked file");
        }
        Ok(())
    }

    /// Removes a name (`dir`: rmdir).
    pub async fn unlink(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        if !dir {
            self.settle_name(parent, name).await;
        }
        let here = if dir {
            self.rmdir_here(parent, name)
        } else {
            self.unlink_here(parent, name)
        };
        if here.is_some() {
            return Ok(());
        }
        // A file this mount knows and has not open (nor data of it kept) may go with its
        // name if it is empty: one entry instead of an unlink and a purge.
        let known = self
            .leases()
            .get(&parent)
            .and_then(|d| d.entries.get(name).copied());
        let purge_empty = !dir && known.is_some_and(|ino| !self.files().contains_key(&ino));
        let req = UnlinkRequest {
            parent,
            name: Bytes::copy_from_slice(name),
            dir,
            purge_empty,
        };
        let sent = Instant::now();
        let r = self
            .cluster
            .mds_mutate("unlink", req, |mut c, r| async move { c.unlink(r).await })
            .await;
        self.changed_here(&[parent], &[(parent, name)]);
        let r = r.inspect_err(|_| self.entries_unknown_everywhere(parent))?;
        self.changed_here(&r.changed, &[]);
        if let Some(d) = r.dir.as_ref().filter(|d| d.ino == parent) {
            self.keep_attr(d, sent, None, true);
        }
        self.on_orphan(r.orphan).await
    }

    /// Renames, with renameat2 flags.
    pub async fn rename(&self, req: RenameRequest) -> Result<()> {
        self.settle_name(req.parent, &req.name).await;
        self.settle_name(req.new_parent, &req.new_name).await;
        let (from, to) = (
            (req.parent, req.name.clone()),
            (req.new_parent, req.new_name.clone()),
        );
        let r = self
            .cluster
            .mds_mutate("rename", req, |mut c, r| async move { c.rename(r).await })
            .await;
        self.changed_here(&[from.0, to.0], &[(from.0, &from.1), (to.0, &to.1)]);
        // The new name now names the moved inode (exchanged, the old one names the other).
        self.entries_unknown(to.0);
        self.entries_unknown(from.0);
        // The kernel moves its entries itself once the rename succeeded, but a name moved to
        // another directory keeps the time it had in the first one, whose lease may outlast
        // this mount's lease on the second.
        let r = r.inspect_err(|_| self.kernel_entries.drop_all())?;
        if from.0 != to.0 {
            self.kernel_entries.drop_all();
        }
        self.changed_here(&r.changed, &[]);
        self.on_orphan(r.orphan).await
    }

    /// Adds a hard link.
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        self.settle(ino).await;
        let req = LinkRequest {
            ino,
            new_parent,
            new_name: Bytes::copy_from_slice(new_name),
        };
        let (attr, _) = self
            .make_entry(
                "link",
                new_parent,
                new_name,
                ino,
                req,
                |mut c, r| async move { c.link(r).await },
            )
            .await?;
        Ok(self.overlay(attr))
    }

    /// A symlink's target.
    pub async fn readlink(&self, ino: u64) -> Result<Bytes> {
        let r = self
            .cluster
            .mds("readlink", |mut c| async move {
                c.read_link(ReadLinkRequest { ino }).await
            })
            .await?;
        Ok(r.target)
    }

    /// One page of directory `ino` after cookie `after`: the rest of the page the last call
    /// ended in there (see `Client::dir_rest`), or at most `limit` entries from the MDS.
    pub async fn readdir_next(&self, ino: u64, after: u64, limit: u32) -> Result<ReadDirReply> {
        let kept = self.dir_rests().remove(&(ino, after));
        match kept {
            Some((at, page)) if at.elapsed() < DIR_REST_FOR => Ok(page),
            _ => self.readdir(ino, after, limit).await,
        }
    }

    fn dir_rests(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), (Instant, ReadDirReply)>> {
        self.dir_rest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps what the kernel's buffer had no room for of a page of directory `ino`: the
    /// entries after cookie `after`.
    pub fn keep_dir_rest(&self, ino: u64, after: u64, rest: ReadDirReply) {
        let now = Instant::now();
        let mut rests = self.dir_rests();
        if rests.len() >= DIR_REST_MAX {
            rests.retain(|_, (at, _)| now.duration_since(*at) < DIR_REST_FOR);
            if rests.len() >= DIR_REST_MAX {
                return;
            }
        }
        rests.insert((ino, after), (now, rest));
    }

    /// A change made here to directory `dir`, or a listing of it starting anew: its kept page
    /// rests go (a listing sees every change made before it started).
    pub fn dir_changed_here(&self, dir: u64) {
        let mut rests = self.dir_rests();
        if !rests.is_empty() {
            rests.retain(|&(d, _), _| d != dir);
        }
    }

    /// A new directory handle (opendir).
    pub fn open_dir(&self) -> u64 {
        self.dir_handles.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Directory handle `fh` is closed (see [`crate::listings`] for how long its listing
    /// stays).
    pub fn close_dir(&self, fh: u64) {
        self.listings_map().close(fh);
    }

    fn listings_map(&self) -> std::sync::MutexGuard<'_, crate::listings::Listings> {
        self.listings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A listing of directory `dir` from its start, through handle `fh`: taken here when this
    /// mount knows all of its entries under a live lease (see [`Client::local_listing`]), and
    /// kept for the later calls, which go on in it (as of this call, as a listing read from
    /// the MDS is). Its number and entries; None: the MDS lists it.
    pub fn start_listing(&self, fh: u64, dir: u64) -> Option<(u64, crate::listings::Entries)> {
        let Some(entries) = self.local_listing(dir).map(Arc::new) else {
            self.listings_map().restart(fh);
            return None;
        };
        let id = self.listings_map().start(fh, entries.clone());
        Some((id, entries))
    }

    /// The listing a readdir offset names: None if it is not a listing's taken here (an MDS
    /// cookie), EINVAL if that listing is no longer kept.
    pub fn listing_at(&self, offset: u64) -> Option<Result<(u64, crate::listings::Entries)>> {
        let (id, _) = crate::listings::position(offset)?;
        Some(match self.listings_map().get(id) {
            Some(entries) => Ok((id, entries)),
            None => Err(ClientError::errno_msg(
                libc::EINVAL,
                "the directory listing this position belongs to is no longer kept",
            )),
        })
    }

    /// One page of a directory, after cookie `after`.
    pub async fn readdir(&self, ino: u64, after: u64, limit: u32) -> Result<ReadDirReply> {
        self.cluster
            .mds("readdir", |mut c| async move {
                c.read_dir(ReadDirRequest { ino, after, limit }).await
            })
            .await
    }

    /// Capacity and usage of the cluster, or of the quota over `ino`'s tree if it has one.
    pub async fn statfs(&self, ino: u64) -> Result<StatFsReply> {
        self.cluster
            .mds("statfs", |mut c| async move {
                c.stat_fs(StatFsRequest { ino }).await
            })
            .await
    }

    /// An extended attribute's value.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Bytes> {
        if let Some(r) = self.cached_xattr(ino, name) {
            return r;
        }
        self.send_kept_attrs(ino, name).await?;
        if [shoal_proto::quota::RBYTES, shoal_proto::quota::RFILES].contains(&name) {
            self.usage_sent().await;
        }
        let req = GetXattrRequest {
            ino,
            name: Bytes::copy_from_slice(name),
        };
        let sent = Instant::now();
        let r = self
            .cluster
            .mds("getxattr", |mut c| {
                let req = req.clone();
                async move { c.get_xattr(req).await }
            })
            .await;
        match r {
            Ok(r) => {
                self.keep_xattr(ino, name, Some(r.value.clone()), sent);
                Ok(r.value)
            }
            Err(e) => {
                if e.errno() == libc::ENODATA {
                    self.keep_xattr(ino, name, None, sent);
                }
                Err(e)
            }
        }
    }

    /// Sets an extended attribute (flags: XATTR_CREATE / XATTR_REPLACE).
    /// Sets an extended attribute; `acl_caller` says who sets an access ACL (the setgid rule).
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        acl_caller: Option<AclCaller>,
    ) -> Result<()> {
        self.settle(ino).await;
        // A quota, default ACL or layout of a directory changes what files made in it get:
        // none is made here alone from now on.
        self.dir_revoked(ino);
        if shoal_proto::layout::layout_xattr(name).is_some() {
            // The MDS refuses a new layout for a file with data: let it see our writes.
            self.flush(ino).await?;
        }
        if shoal_proto::quota::is_limit(name) {
            self.usage_sent().await;
        }
        self.send_kept_attrs(ino, name).await?;
        let req = SetXattrRequest {
            ino,
            name: Bytes::copy_from_slice(name),
            value: Bytes::copy_from_slice(value),
            flags,
            acl_caller,
        };
        let r = self
            .cluster
            .mds_mutate(
                "setxattr",
                req,
                |mut c, r| async move { c.set_xattr(r).await },
            )
            .await;
        // Again: a lease granted by a batch that landed before it (one this call waited
        // for, with the directory's own create) predates the change.
        self.dir_revoked(ino);
        self.changed_here(&[ino], &[]);
        r?;
        if shoal_proto::layout::layout_xattr(name).is_some() {
            // An open (still empty) file now stripes by its new layout.
            let attr = self.getattr_raw(ino).await?;
            if let (Some(st), Some(l)) = (self.files().get_mut(&ino), attr.layout) {
                st.layout = l;
            }
        }
        Ok(())
    }

    /// The names of a file's extended attributes.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Bytes>> {
        let r = self
            .cluster
            .mds("listxattr", |mut c| async move {
                c.list_xattr(ListXattrRequest { ino }).await
            })
            .await?;
        Ok(r.names)
    }

    /// Removes an extended attribute.
    pub async fn removexattr(
        &self,
        ino: u64,
        name: &[u8],
        acl_caller: Option<AclCaller>,
    ) -> Result<()> {
        self.settle(ino).await;
        self.dir_revoked(ino);
        self.send_kept_attrs(ino, name).await?;
        let req = RemoveXattrRequest {
            ino,
            name: Bytes::copy_from_slice(name),
            acl_caller,
        };
        let r = self
            .cluster
            .mds_mutate("removexattr", req, |mut c, r| async move {
                c.remove_xattr(r).await
            })
            .await;
        self.changed_here(&[ino], &[]);
        r.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_keeps_only_leases_live_when_its_unbroken_run_began() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let lease = |granted: Instant| Lease {
            until: Some(granted + 2 * s),
            sent: Some(granted),
            ..Lease::default()
        };
        let run = |since: Instant, run_since: Instant, until: Instant| Renewal {
            since: Some(since),
            until: Some(until),
            run_since: Some(run_since),
        };
        // Granted at t0, renewed by a run that began at t0 + 1 s: kept to the run's end.
        let l = lease(t0 + s / 2);
        assert_eq!(lease_end(&l, run(t0, t0 + s, t0 + 9 * s)), Some(t0 + 9 * s));
        // A run that began after the lease ran out (the mount stalled): not brought back.
        assert_eq!(
            lease_end(&l, run(t0, t0 + 5 * s, t0 + 9 * s)),
            Some(t0 + s / 2 + 2 * s)
        );
        // Granted before the stream the renewals go through was opened: not kept by them.
        assert_eq!(
            lease_end(&l, run(t0 + s, t0 + s, t0 + 9 * s)),
            Some(t0 + s / 2 + 2 * s)
        );
        // No renewal yet: the grant's own end.
        let none = Renewal {
            since: Some(t0),
            ..Renewal::default()
        };
        assert_eq!(lease_end(&l, none), Some(t0 + s / 2 + 2 * s));
    }
}
