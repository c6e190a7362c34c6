//! Files this mount makes alone, under directory leases: creates that answer at once.
//!
//! A directory lease (`MakeNodeRequest.want_dir_lease`, granted with a mkdir on the new
//! directory, or with a create on its parent) means no other session reads or changes the
//! directory's entries without revoking the lease first, and the MDS grants it only where a
//! new file's attributes follow from the directory's and the request's alone (no quota, no
//! default ACL). Under it, with the directory's entries all known here, a create of a regular
//! file needs no round trip: the mount takes the inode number from a range the MDS handed its
//! session (`Mds.TakeInodes`), answers the kernel with the attributes the MDS will give the
//! file, holds the new file's write lease, and queues the create. Attribute changes of a file
//! whose create is still queued join the queue (its size and times at close, a utimes, a
//! chmod or chown), and a file closed unwritten goes without its write lease. A mkdir is made
//! the same way, and the new directory is held under its own lease from the start (the batch
//! that lands it asks for that lease), so whole trees are made here. Removals go the same way:
//! an empty directory held here, and a file not open here whose kind and links are known (its
//! data deleted in the background once the unlink landed).
//!
//! Queued changes go to the MDS in the background, many in one `Mds.Batch` (one Raft entry),
//! at most [`SEND_AFTER`] after the first of them was queued. Every other call to the MDS
//! waits until the changes queued before it have landed (`Cluster::changes_settled`), so the
//! MDS sees this mount's changes in the order it made them; a revocation of a directory lease
//! lands them before it is acked, so another mount that looks finds them. A small file
//! closed while its create is queued leaves its data to the batch as well: the sender sends
//! the data of all such files at once, then queues their sizes after their creates
//! ([`Client::send_closed`]), so a tar's files reach the OSDs in batched calls and the MDS in
//! one entry with their sizes.
//!
//! As on a local filesystem, a create is durable once it landed: within [`SEND_AFTER`], at
//! the next fsync of the file or its directory, or when the mount ends. One the MDS refused
//! (a session evicted meanwhile) is reported at the file's next fsync or close, and the
//! directory's entries are asked of the MDS again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use shoal_proto::limits::BATCH_MAX;
use shoal_proto::mds::*;

use super::{now, Client, Lease, LEASE_MARGIN};
use crate::error::ClientError;

/// A queued change goes to the MDS at most this long after it was made (long enough for a
/// file's close, whose data goes to the OSDs first, to join its create).
pub const SEND_AFTER: Duration = Duration::from_millis(100);
/// Files unlinked here whose data is deleted at once, at most.
const PURGES: usize = 16;
/// Inode numbers taken at once.
const TAKE: u32 = 4096;
/// More are taken when fewer than this are left.
const LOW: u64 = 1024;
/// A directory lease with less than this left is not used: what is queued under it goes
/// well before it ends.
const DIR_MARGIN: Duration = Duration::from_millis(500);
/// A directory lease is renewed once less than half of it is left, while this mount made or
/// removed something under it within this long (as a read lease, it is not held for what is
/// no longer used).
const RENEW_WHILE_USED: Duration = shoal_proto::limits::LEASE_HOLD_MAX;

/// Extended attributes a new file is known not to have.
pub(super) const NO_CAPS: &[u8] = b"security.capability";
const NO_ACL: &[u8] = b"system.posix_acl_access";
const NO_DEFAULT_ACL: &[u8] = b"system.posix_acl_default";

/// What waits to be sent, and what this mount may make alone.
#[derive(Default)]
pub(super) struct Queue {
    ops: Vec<BatchOp>,
    /// How many changes were taken from the front of `ops` so far: `ops[i]` is change
    /// number `sent + i`.
    sent: u64,
    /// Files whose create is in `ops`: its change number, and their attributes as the MDS
    /// will record them once `ops` landed.
    made: HashMap<u64, (u64, Attr)>,
    /// When the oldest change in `ops` was queued.
    since: Option<Instant>,
    /// Directory leases held.
    dirs: HashMap<u64, DirHeld>,
    /// Inode numbers taken and not used, ranges `[next, end)` in the order they are used.
    numbers: VecDeque<(u64, u64)>,
    /// [`Client::run_changes`] is sending what is queued (a client without a session's
    /// background work, as the CLI's and the CSI driver's, has no one to send it).
    pub(super) runner: bool,
}

/// Marks the queue as without a sender when [`Client::run_changes`] stops (its task is
/// aborted with the session).
struct Running<'a>(&'a Client);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.dirops().runner = false;
    }
}

/// A directory lease held here.
#[derive(Clone, Copy)]
struct DirHeld {
    /// Until when (the margin taken off).
    until: Instant,
    /// How long the last grant was for.
    len: Duration,
    /// When this mount last made or removed an entry under it, or asked for it with a change.
    used: Instant,
}

impl Queue {
    fn left(&self) -> u64 {
        self.numbers.iter().map(|(n, e)| e - n).sum()
    }

    fn number(&mut self) -> Option<u64> {
        while let Some((next, end)) = self.numbers.front_mut() {
            if next < end {
                let n = *next;
                *next += 1;
                return Some(n);
            }
            self.numbers.pop_front();
        }
        None
    }

    /// Whether this mount holds the lease on directory `dir` with time left to use it at
    /// `now`; if so, it counts as used now.
    fn holds(&mut self, dir: u64, now: Instant) -> bool {
        match self.dirs.get_mut(&dir) {
            Some(h) if h.until > now + DIR_MARGIN => {
                h.used = now;
                true
            }
            _ => false,
        }
    }

    /// Holds the lease on `dir` for `len`, until `until`; `used`: it was asked for with a
    /// change.
    fn hold_dir(&mut self, dir: u64, len: Duration, until: Instant, used: bool) {
        let now = Instant::now();
        let h = self.dirs.entry(dir).or_insert(DirHeld {
            until,
            len,
            used: now,
        });
        (h.until, h.len) = (until, len);
        if used {
            h.used = now;
        }
    }

    /// The directory leases to renew now (at most [`BATCH_MAX`]); those no longer used and
    /// run out are forgotten.
    fn renewals(&mut self, now: Instant) -> Vec<u64> {
        self.dirs
            .retain(|_, h| h.until > now || now.duration_since(h.used) < RENEW_WHILE_USED);
        self.dirs
            .iter()
            .filter(|(_, h)| {
                h.until < now + h.len / 2 && now.duration_since(h.used) < RENEW_WHILE_USED
            })
            .map(|(d, _)| *d)
            .take(BATCH_MAX)
            .collect()
    }

    /// Whether inode numbers should be taken now.
    fn wants_numbers(&self) -> bool {
        self.left() < LOW && !self.dirs.is_empty()
    }

    /// Queues `op`; a create with the attributes it makes.
    fn push(&mut self, op: batch_op::Op, made: Option<Attr>) {
        if let Some(attr) = made {
            let seq = self.sent + self.ops.len() as u64;
            self.made.insert(attr.ino, (seq, attr));
        }
        self.ops.push(BatchOp { op: Some(op) });
        self.since.get_or_insert_with(Instant::now);
    }

    /// Takes up to `n` changes from the front: they are on their way.
    fn take(&mut self, n: usize) -> Vec<BatchOp> {
        let ops: Vec<BatchOp> = self.ops.drain(..n.min(self.ops.len())).collect();
        for op in &ops {
            if let Some(batch_op::Op::MakeNode(m)) = &op.op {
                self.made.remove(&m.ino);
            }
        }
        self.sent += ops.len() as u64;
        self.since = (!self.ops.is_empty()).then(Instant::now);
        ops
    }

    /// The queued create of `ino`, if it was not sent yet.
    pub(super) fn create_of(&mut self, ino: u64) -> Option<&mut MakeNodeRequest> {
        let (seq, _) = self.made.get(&ino)?;
        let i = usize::try_from(seq.checked_sub(self.sent)?).ok()?;
        match self.ops.get_mut(i)?.op.as_mut()? {
            batch_op::Op::MakeNode(m) => Some(m),
            _ => None,
        }
    }
}

/// `attr` after `req` (no size change), as the MDS will record it at `at`.
fn changed_attr(attr: &mut Attr, req: &SetAttrRequest, at: Timespec) {
    if let Some(p) = req.perm {
        attr.perm = p & 0o7777;
    }
    attr.uid = req.uid.unwrap_or(attr.uid);
    attr.gid = req.gid.unwrap_or(attr.gid);
    let time = |t: &SetTime| if t.now { at } else { t.time.unwrap_or(at) };
    if let Some(t) = &req.atime {
        attr.atime = Some(time(t));
    }
    if let Some(t) = &req.mtime {
        attr.mtime = Some(time(t));
    }
    if let Some(g) = req.grow_size {
        attr.size = attr.size.max(g);
        attr.mtime = Some(at);
    }
    attr.ctime = Some(at);
}

/// Directory `d` as it is after `name` was removed from it at `at` (`dir`: a subdirectory,
/// whose ".." linked to it).
fn entry_removed(d: &mut Lease, name: &[u8], dir: bool, at: Timespec) {
    d.entries.remove(name);
    if let Some(a) = d.attr.as_mut() {
        if dir {
            a.nlink = a.nlink.saturating_sub(1);
        }
        a.mtime = Some(at);
        a.ctime = Some(at);
    }
}

/// `req` with "now" replaced by `at`: the change happened here, now, not when it lands.
fn explicit_times(mut req: SetAttrRequest, at: Timespec) -> SetAttrRequest {
    if req.grow_size.is_some() && req.mtime.is_none() {
        // Written until now: the MDS would stamp the time it records the size at.
        req.mtime = Some(SetTime {
            now: true,
            time: None,
        });
    }
    for t in [&mut req.atime, &mut req.mtime].into_iter().flatten() {
        if t.now {
            *t = SetTime {
                now: false,
                time: Some(at),
            };
        }
    }
    req
}

impl Client {
    /// Whether this mount asks for directory leases (on unless `-o nodirleases`).
    pub fn set_dir_leases(&self, on: bool) {
        self.dir_leases
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn asks_dir_leases(&self) -> bool {
        self.dir_leases.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn dirops(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.dirops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The MDS granted this mount the directory lease on `dir` for `ms` from `sent` (0: it
    /// holds none); `renewal`: asked for as a renewal, not with a change.
    pub(super) fn dir_leased(&self, dir: u64, sent: Instant, ms: u32, renewal: bool) {
        let mut q = self.dirops();
        if renewal && !q.dirs.contains_key(&dir) {
            // Dropped since it was asked for.
            return;
        }
        // A revocation that came in since it was asked for ends it (checked under the queue's
        // lock, which the revocation takes after marking the lease revoked).
        let revoked = self
            .leases()
            .get(&dir)
            .and_then(|l| l.revoked)
            .is_some_and(|r| r >= sent);
        if ms == 0 || revoked {
            q.dirs.remove(&dir);
            return;
        }
        let len = Duration::from_millis(ms.into());
        q.hold_dir(dir, len, sent + len.saturating_sub(LEASE_MARGIN), !renewal);
        if q.left() < LOW {
            drop(q);
            // Numbers to make files with, before the first create needs them.
            self.cluster.wake_sender();
        }
    }

    /// The directory lease on `dir` (if any) was revoked: nothing more is made there alone.
    pub(super) fn dir_revoked(&self, dir: u64) {
        self.dirops().dirs.remove(&dir);
    }

    /// Creates regular file or directory `req.name` here, under the lease on its directory,
    /// and queues the create; None if it must go to the MDS (no lease, entries not all known,
    /// the name known to exist, no inode number left). A directory made here is held under
    /// its own lease from the start (no other session can know it before its create lands,
    /// and the batch that lands it asks for the lease): files are made in it here too.
    pub(super) fn create_here(&self, req: &MakeNodeRequest) -> Option<Attr> {
        let dir = req.kind == FileKind::Directory as i32;
        if !(dir || req.kind == FileKind::Regular as i32) || req.rdev != 0 || !req.target.is_empty()
        {
            return None;
        }
        let lease_ms = self.lease_ms.load(std::sync::atomic::Ordering::Relaxed);
        if lease_ms == 0 {
            return None;
        }
        let started = Instant::now();
        let at = now();
        let session = self.cluster.session();
        // The queue stays locked until the create is queued and counted: a revocation of the
        // directory's lease (which takes it after marking the lease revoked) either finds the
        // lease revoked here or waits for this create to land.
        let mut q = self.dirops();
        if !q.holds(req.parent, started) || q.ops.len() >= BATCH_MAX || q.left() == 0 {
            return None;
        }
        let attr = {
            let renewal = self.renewal();
            let mut leases = self.leases();
            let d = leases.get_mut(&req.parent)?;
            if !Self::live(d, renewal)
                || !d.complete
                || d.entries.contains_key(&req.name)
                || d.entries.len() >= 100_000
            {
                return None;
            }
            let parent = d.attr.as_mut()?;
            let ino = q.number()?;
            let setgid = parent.perm & 0o2000 != 0;
            let perm = req.perm & 0o7777 & !(req.umask & 0o777);
            let attr = Attr {
                ino,
                kind: req.kind,
                // A setgid directory hands its setgid bit to subdirectories.
                perm: if dir && setgid { perm | 0o2000 } else { perm },
                nlink: if dir { 2 } else { 1 },
                uid: req.uid,
                gid: if setgid { parent.gid } else { req.gid },
                size: 0,
                rdev: 0,
                atime: Some(at),
                mtime: Some(at),
                ctime: Some(at),
                layout: Some(
                    parent
                        .layout
                        .unwrap_or_else(shoal_proto::layout::default_layout),
                ),
                next_cookie: 0,
                parent: if dir { req.parent } else { 0 },
                writer: if dir { 0 } else { session },
                writer_mark: if dir { 0 } else { 1 },
                realm: 0,
            };
            parent.mtime = Some(at);
            parent.ctime = Some(at);
            if dir {
                parent.nlink += 1;
            }
            d.entries.insert(req.name.clone(), ino);
            attr
        };
        let ino = attr.ino;
        // Its own lease: no other session can know of it until the create lands.
        self.note_lease(&[ino], started, lease_ms);
        self.keep_attr(&attr, started, None, true);
        if let Some(l) = self.leases().get_mut(&ino) {
            // It has no extended attributes: the kernel's look for capabilities before each
            // write, and for ACLs, need not wait for the create to land.
            for name in [NO_CAPS, NO_ACL, NO_DEFAULT_ACL] {
                l.xattrs.insert(bytes::Bytes::from_static(name), None);
            }
            if dir {
                // Empty, and held alone: files are made in it here too.
                l.complete = true;
            }
        }
        if dir {
            let len = Duration::from_millis(lease_ms.into()).saturating_sub(LEASE_MARGIN);
            q.hold_dir(ino, len, started + len, true);
        }
        let create = MakeNodeRequest {
            ino,
            time: Some(at),
            exclusive: true,
            want_write_lease: !dir,
            mark_writer: false,
            want_dir_lease: dir,
            ..req.clone()
        };
        q.push(batch_op::Op::MakeNode(create), Some(attr));
        self.cluster.changes_queued(1);
        drop(q);
        self.dir_changed_here(req.parent);
        if dir {
            return Some(attr);
        }
        // Open, with its write lease (if the create lands first, the MDS's grant lasts longer
        // than this one, which counts from before it).
        self.opened(&attr);
        self.write_lease_granted(ino, session, 1, started, lease_ms);
        Some(attr)
    }

    /// Removes empty directory `name` of `parent` here, under the leases on both, and queues
    /// the rmdir; None if it must go to the MDS (a lease missing or about to end, an entry
    /// not known, the directory not known empty).
    pub(super) fn rmdir_here(&self, parent: u64, name: &[u8]) -> Option<()> {
        let started = Instant::now();
        let at = now();
        // Locked until the rmdir is queued, as for a create (see `create_here`).
        let mut q = self.dirops();
        if q.ops.len() >= BATCH_MAX {
            return None;
        }
        {
            let renewal = self.renewal();
            let mut leases = self.leases();
            let ino = {
                let d = leases.get(&parent)?;
                if !Self::live(d, renewal) || !d.complete || !q.holds(parent, started) {
                    return None;
                }
                *d.entries.get(name)?
            };
            let child = leases.get(&ino)?;
            let empty = Self::live(child, renewal)
                && child.complete
                && child.entries.is_empty()
                && child
                    .attr
                    .is_some_and(|a| a.kind == FileKind::Directory as i32);
            if !empty || !q.holds(ino, started) {
                return None;
            }
            let child = leases.get_mut(&ino)?;
            child.attr = None;
            child.complete = false;
            entry_removed(leases.get_mut(&parent)?, name, true, at);
            q.dirs.remove(&ino);
        }
        self.queue_removal(&mut q, parent, name, true);
        Some(())
    }

    /// Directory `dir`'s entries, when this mount knows all of them under a live lease on it
    /// and the kind of each (a kind never changes: any attributes seen of the inode, or its
    /// queued create, tell it); their cookies are left 0. None: the MDS lists it.
    pub(super) fn local_listing(&self, dir: u64) -> Option<Vec<DirEntry>> {
        let q = self.dirops();
        let renewal = self.renewal();
        let leases = self.leases();
        let d = leases.get(&dir)?;
        if !Self::live(d, renewal) || !d.complete {
            return None;
        }
        d.entries
            .iter()
            .map(|(name, &ino)| {
                let kind = match q.made.get(&ino) {
                    Some((_, a)) => a.kind,
                    None => leases.get(&ino)?.attr?.kind,
                };
                Some(DirEntry {
                    name: name.clone(),
                    ino,
                    kind,
                    cookie: 0,
                })
            })
            .collect()
    }

    /// Unlinks file `name` of `parent` here, under the lease on `parent`, and queues the
    /// unlink; None if it must go to the MDS (the lease missing or about to end, the entry
    /// or its attributes not known, a directory, the file open here). A file that loses its
    /// last link goes with its unlink if it is empty; otherwise the batch's reply names it
    /// and its data is deleted then, in the background.
    pub(super) fn unlink_here(&self, parent: u64, name: &[u8]) -> Option<()> {
        let started = Instant::now();
        let at = now();
        // Locked until the unlink is queued, as for a create (see `create_here`).
        let mut q = self.dirops();
        if q.ops.len() >= BATCH_MAX || !q.holds(parent, started) {
            return None;
        }
        let renewal = self.renewal();
        let ino = {
            let leases = self.leases();
            let d = leases.get(&parent)?;
            if !Self::live(d, renewal) || !d.complete {
                return None;
            }
            let ino = *d.entries.get(name)?;
            // Its kind as the MDS will see it: made here and not landed yet, or under a live
            // lease.
            let attr = match q.made.get(&ino) {
                Some((_, a)) => *a,
                None => leases
                    .get(&ino)
                    .filter(|l| Self::live(l, renewal))
                    .and_then(|l| l.attr)?,
            };
            if attr.kind == FileKind::Directory as i32 {
                return None;
            }
            ino
        };
        // Not open here: an open file's data stays until its last close, which the unlink
        // sent alone arranges.
        if self.files().contains_key(&ino) {
            return None;
        }
        let gone = {
            let mut leases = self.leases();
            // The links as the MDS will count them (another mount's new link to the file
            // would have revoked the lease on it).
            let gone = match leases.get_mut(&ino) {
                Some(l) => match l.attr.as_mut() {
                    Some(a) if a.nlink > 1 => {
                        a.nlink -= 1;
                        a.ctime = Some(at);
                        false
                    }
                    _ => {
                        l.attr = None;
                        l.xattrs.clear();
                        true
                    }
                },
                None => true,
            };
            entry_removed(leases.get_mut(&parent)?, name, false, at);
            gone
        };
        if gone {
            // Data of it read here earlier is of no use now.
            self.cluster.read_cache().forget(ino);
        }
        self.queue_removal(&mut q, parent, name, false);
        Some(())
    }

    /// Queues the removal of `name` from `parent` (`dir`: an rmdir); a file that loses its
    /// last link goes with it if it is empty.
    fn queue_removal(&self, q: &mut Queue, parent: u64, name: &[u8], dir: bool) {
        let unlink = UnlinkRequest {
            parent,
            name: bytes::Bytes::copy_from_slice(name),
            dir,
            purge_empty: !dir,
        };
        q.push(batch_op::Op::Unlink(unlink), None);
        self.cluster.changes_queued(1);
        self.dir_changed_here(parent);
    }

    /// A change of attributes (no size) of a file whose create is still queued: queued too,
    /// and answered with the attributes it gives. None: it goes to the MDS.
    pub(super) fn setattr_here(&self, req: &SetAttrRequest) -> Option<Attr> {
        if req.size.is_some()
            || req.grow_size.is_some()
            || req.want_write_lease
            || req.release_write_lease
            || req.keep_mark.is_some()
        {
            return None;
        }
        self.queue_change(req)
    }

    /// A file's size, times and kept attributes sent at close while its create is still
    /// queued: queued after it, with the write lease going back. None: it goes to the MDS.
    pub(super) fn size_here(&self, req: &SetAttrRequest) -> Option<Attr> {
        if req.want_write_lease || req.keep_mark.is_some() || req.size.is_some() {
            return None;
        }
        self.queue_change(req)
    }

    fn queue_change(&self, req: &SetAttrRequest) -> Option<Attr> {
        let at = now();
        let mut q = self.dirops();
        let (_, attr) = q.made.get_mut(&req.ino)?;
        changed_attr(attr, req, at);
        if req.grow_size.is_some() || req.release_write_lease {
            attr.writer = 0;
        }
        let attr = *attr;
        q.push(batch_op::Op::SetAttr(explicit_times(*req, at)), None);
        drop(q);
        self.keep_attr(&attr, Instant::now(), None, true);
        self.cluster.changes_queued(1);
        Some(self.overlay(attr))
    }

    /// This mount stops using the write lease on new file `ino` before its create was sent:
    /// the create goes without it. False: the create was sent (the lease goes back itself).
    pub(super) fn unmark_queued(&self, ino: u64) -> bool {
        let mut q = self.dirops();
        let Some(m) = q.create_of(ino) else {
            return false;
        };
        m.want_write_lease = false;
        if let Some((_, a)) = q.made.get_mut(&ino) {
            a.writer = 0;
        }
        true
    }

    /// Queues the purge of orphan `ino`, whose data is deleted: it goes with the next batch
    /// rather than as a log entry of its own (an `rm -rf` purges thousands). False if no one
    /// sends this client's queue: the caller purges it itself.
    pub(super) fn queue_purge(&self, ino: u64) -> bool {
        let mut q = self.dirops();
        if !q.runner {
            return false;
        }
        q.push(batch_op::Op::Purge(PurgeRequest { ino }), None);
        drop(q);
        self.cluster.changes_queued(1);
        true
    }

    /// Sends what is queued (and takes inode numbers when few are left), then returns.
    pub async fn send_changes(self: &Arc<Self>) {
        self.send_closed().await;
        let (ops, take, renew_dirs) = {
            let mut q = self.dirops();
            // Decided before the queue is taken: every change made with the numbers of the
            // range the MDS forgets at this take is in this batch or an earlier one.
            let take = q.wants_numbers();
            (q.take(BATCH_MAX), take, q.renewals(Instant::now()))
        };
        if !ops.is_empty() || !renew_dirs.is_empty() {
            let n = ops.len() as u64;
            let sent = Instant::now();
            let req = BatchRequest {
                ops: ops.clone(),
                renew_dirs: renew_dirs.clone(),
            };
            let r = self
                .cluster
                .mds_mutate_now("batch", req, |mut c, r| async move { c.batch(r).await })
                .await;
            match r {
                Ok(reply) => {
                    let orphans = self.batch_landed(&ops, &renew_dirs, reply, sent);
                    if !orphans.is_empty() {
                        // Their data goes in the background, a few files at a time (a file
                        // opened since by a handle kept elsewhere: at its last close).
                        let me = self.clone();
                        tokio::spawn(async move {
                            futures::stream::iter(orphans)
                                .for_each_concurrent(PURGES, |o| me.on_orphan(Some(o)).map(drop))
                                .await
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(changes = ops.len(), error = %e, "queued changes failed");
                    for op in &ops {
                        self.change_failed(op, e.clone());
                    }
                    self.dirops().dirs.clear();
                }
            }
            self.cluster.changes_landed(n);
        }
        if take {
            let session = self.cluster.session();
            let r = self
                .cluster
                .mds_mutate_now(
                    "take_inodes",
                    TakeInodesRequest { count: TAKE },
                    |mut c, r| async move { c.take_inodes(r).await },
                )
                .await;
            match r {
                // Numbers taken by a session evicted meanwhile are not this one's.
                Ok(t) if self.cluster.session() == session => {
                    let mut q = self.dirops();
                    // The MDS keeps this range and the one before; older ones are used up.
                    while q.numbers.len() > 1 {
                        q.numbers.pop_front();
                    }
                    q.numbers.push_back((t.first, t.first + u64::from(t.count)));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot take inode numbers"),
            }
        }
    }

    /// Sends the data of the files closed since the last batch whose creates it holds (all at
    /// once: the OSD calls of many small files go batched), then queues their sizes after
    /// their creates. Nothing here waits for the MDS, which would wait for this sender: data
    /// kept past its lease, and a size that cannot be queued, go the long way in the
    /// background ([`Client::finish_closed`]).
    async fn send_closed(self: &Arc<Self>) {
        let closing = std::mem::take(&mut *self.closing.lock().unwrap_or_else(|p| p.into_inner()));
        if closing.flush.is_empty() && closing.finish.is_empty() {
            return;
        }
        let all = closing.flush.iter().chain(&closing.finish);
        futures::future::join_all(all.map(|&ino| self.flush_dirty_asking(ino, false))).await;
        for ino in closing.finish {
            // Queued or not, the rest of the close (the lease, forgetting the file) follows.
            self.queue_closed_size(ino);
            let me = self.clone();
            tokio::spawn(async move { me.finish_closed(ino).await });
        }
    }

    /// Takes in what the MDS made of a batch; returns the files its unlinks left to purge.
    fn batch_landed(
        &self,
        ops: &[BatchOp],
        renewed: &[u64],
        reply: BatchReply,
        sent: Instant,
    ) -> Vec<Orphaned> {
        let mut orphans = Vec::new();
        // A directory the batch changed counts as used, one only renewed does not.
        let renewed: std::collections::HashSet<u64> = renewed.iter().copied().collect();
        for d in &reply.dirs {
            self.dir_leased(d.ino, sent, d.lease_ms, renewed.contains(&d.ino));
        }
        for (i, op) in ops.iter().enumerate() {
            let Some(r) = reply.results.get(i) else {
                self.change_failed(op, ClientError::Protocol("a batch reply fell short".into()));
                continue;
            };
            let Some(answer) = r.reply.filter(|_| r.errno == 0) else {
                let e = ClientError::errno_msg(r.errno, &r.message);
                self.change_failed(op, e);
                continue;
            };
            orphans.extend(r.orphan);
            let (ms, write_ms) = (answer.lease_ms, answer.write_lease_ms);
            let Some(attr) = answer.attr else { continue };
            self.note_lease(&[attr.ino], sent, ms);
            self.keep_attr(&attr, sent, None, true);
            if let Some(batch_op::Op::MakeNode(m)) = &op.op {
                if m.want_write_lease {
                    let session = self.cluster.session();
                    let mut files = self.files();
                    if let Some(s) = files.get_mut(&attr.ino) {
                        if write_ms > 0 && s.write_until.is_some() {
                            let len = Duration::from_millis(write_ms.into());
                            s.hold_write_lease(session, attr.writer_mark, sent, len);
                        } else if write_ms == 0 {
                            // Not granted (a leader that just took over): writes go to the
                            // OSDs from now on. What was kept before the create landed goes
                            // only under the lease kept again by the mark the file carries,
                            // unless another mount found the file meanwhile.
                            tracing::debug!(
                                ino = attr.ino,
                                writer = attr.writer,
                                mark = attr.writer_mark,
                                "created without its write lease"
                            );
                            s.write_until = None;
                            s.lease_session = session;
                            s.lease_mark = if attr.writer == session {
                                attr.writer_mark
                            } else {
                                0
                            };
                            s.kept_until = s.kept_until.map(|k| k.min(sent));
                        }
                    }
                }
            }
        }
        orphans
    }

    /// A queued change did not land: the file's next fsync or close reports it, and what
    /// this mount knew of it and of its directory goes.
    fn change_failed(&self, op: &BatchOp, e: ClientError) {
        match &op.op {
            Some(batch_op::Op::MakeNode(m)) => {
                tracing::warn!(ino = m.ino, name = %String::from_utf8_lossy(&m.name),
                    error = %e, "a create made here did not land");
                self.changed_here(&[m.ino], &[(m.parent, &m.name)]);
                self.entries_unknown_everywhere(m.parent);
                self.latch(m.ino, e);
                if let Some(s) = self.files().get_mut(&m.ino) {
                    s.write_until = None;
                }
            }
            Some(batch_op::Op::SetAttr(a)) => {
                tracing::warn!(ino = a.ino, error = %e, "an attribute change made here did not land");
                self.changed_here(&[a.ino], &[]);
                self.latch(a.ino, e);
            }
            Some(batch_op::Op::Unlink(u)) => {
                tracing::warn!(name = %String::from_utf8_lossy(&u.name), error = %e,
                    "a removal made here did not land");
                self.changed_here(&[u.parent], &[(u.parent, &u.name)]);
                self.entries_unknown_everywhere(u.parent);
            }
            // The inode stays listed as an orphan at the MDS (its data is gone).
            Some(batch_op::Op::Purge(p)) => {
                tracing::warn!(ino = p.ino, error = %e, "a purge did not land");
            }
            None => {}
        }
    }

    /// The session was evicted: what was queued under it is lost, reported per file.
    pub(super) fn drop_queued(&self) {
        let ops: Vec<BatchOp> = {
            let mut q = self.dirops();
            q.dirs.clear();
            q.numbers.clear();
            q.take(usize::MAX)
        };
        let session = self.cluster.session();
        for op in &ops {
            self.change_failed(op, ClientError::Evicted(session));
        }
        self.cluster.changes_landed(ops.len() as u64);
    }

    /// Sends queued changes as they come due, until the session ends.
    pub async fn run_changes(self: &Arc<Self>) {
        self.dirops().runner = true;
        let _running = Running(self);
        loop {
            let wait = match self.dirops().since {
                Some(t) => SEND_AFTER.saturating_sub(t.elapsed()),
                None => Duration::from_millis(200),
            };
            self.cluster.changes_wanted(wait).await;
            let due = {
                let mut q = self.dirops();
                !q.ops.is_empty() || q.wants_numbers() || !q.renewals(Instant::now()).is_empty()
            };
            if due {
                self.send_changes().await;
            }
        }
    }
}
