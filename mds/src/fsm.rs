//! The namespace state machine: applies committed [`Command`]s to RocksDB and answers reads.
//!
//! Layout of the state (column families in [`crate::store::Cf`]):
//! - `inodes`: ino → `Attr`; directories keep their parent (for `..` and loop checks) and the
//!   next readdir cookie.
//! - `dentries`: (parent, name) → (ino, kind, cookie); `dir_index`: (parent, cookie) →
//!   (ino, kind, name). The two always change together.
//! - `orphans`: regular files with no names left, kept until a client purges their data.
//! - `locks`: byte-range locks by (ino, session, owner, start) (`locks`).
//! - `blocklist`: evicted sessions, refused here and (through the OSD map) by the OSDs; an
//!   entry is kept for [`BLOCKLIST_KEEP_SECS`].
//!
//! Invariants: a directory's `nlink` is 2 + its subdirectories; a file's `nlink` is its number
//! of dentries; every command is applied as one batch together with the applied index, so a
//! crash never leaves half an operation.

use std::collections::BTreeMap;

use prost::Message;
use shoal_proto::layout;
use shoal_proto::limits::{self, check_name};
use shoal_proto::mds::{self as pb, Attr, FileKind, Timespec};

use crate::acl;
use crate::command::{
    Applied, BlockEntry, Command, MemberAddr, MemberList, Op, OsdRecord, Pool, RecoverWrites,
    SessionWindow, SetOsdState, StoredReply, WindowEntry,
};
use crate::error::MdsError;
use crate::store::{Cf, Db};

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Replies kept per client session at most (a client has far fewer requests in flight).
pub const SESSION_WINDOW_MAX: usize = 4096;
/// How long an evicted session stays on the blocklist: far longer than any client can stay
/// frozen or partitioned and still hold a request it has not sent.
pub const BLOCKLIST_KEEP_SECS: i64 = 24 * 3600;
/// First cookie handed to a directory entry (1 and 2 stand for "." and "..").
pub const FIRST_COOKIE: u64 = 3;

const KEY_APPLIED: &[u8] = b"applied";
const KEY_NEXT_INO: &[u8] = b"next_ino";
const KEY_FILES: &[u8] = b"files";
const KEY_OSD_EPOCH: &[u8] = b"osd_epoch";
const KEY_POOL: &[u8] = b"pool";
const KEY_MEMBERS: &[u8] = b"mds_members";
/// Prefix of a session's ranges of inode numbers (TakeInodes): its newest two, each `first`
/// and `end`, big-endian.
const KEY_INODES: &[u8] = b"inodes/";

const S_ISGID: u32 = 0o2000;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;

fn fs<T>(errno: i32, msg: impl Into<String>) -> Result<T, MdsError> {
    Err(MdsError::fs(errno, msg))
}

fn be(ino: u64) -> [u8; 8] {
    ino.to_be_bytes()
}

fn key2(a: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rest.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, MdsError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| MdsError::Corrupt("short record".into()))
}

/// A directory entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dentry {
    ino: u64,
    kind: i32,
    cookie: u64,
}

impl Dentry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17);
        v.extend_from_slice(&self.ino.to_be_bytes());
        v.push(self.kind as u8);
        v.extend_from_slice(&self.cookie.to_be_bytes());
        v
    }

    fn decode(b: &[u8]) -> Result<Dentry, MdsError> {
        if b.len() != 17 {
            return Err(MdsError::Corrupt("dentry length".into()));
        }
        Ok(Dentry {
            ino: u64_at(b, 0)?,
            kind: b[8] as i32,
            cookie: u64_at(b, 9)?,
        })
    }
}

fn is_dir(a: &Attr) -> bool {
    a.kind == FileKind::Directory as i32
}

/// A pending write: the column family and the new value (`None`: delete).
type PendingWrite = (Cf, Option<Vec<u8>>);

/// A key of [`Txn::writes`].
type WriteKey = (u8, Vec<u8>);

/// Pending writes of one command, read back by later steps of the same command.
struct Txn<'a> {
    db: &'a Db,
    writes: BTreeMap<WriteKey, PendingWrite>,
    /// While a step that may fail on its own runs (one op of a batch): what each of its
    /// writes replaced, to undo it.
    undo: Option<Vec<(WriteKey, Option<PendingWrite>)>>,
}

impl<'a> Txn<'a> {
    fn new(db: &'a Db) -> Txn<'a> {
        Txn {
            db,
            writes: BTreeMap::new(),
            undo: None,
        }
    }

    /// Runs `f` as one step: if it fails, its writes are undone and the others stay.
    fn step<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, MdsError>) -> Result<T, MdsError> {
        self.undo = Some(Vec::new());
        let r = f(self);
        let undo = self.undo.take().unwrap_or_default();
        if r.is_err() {
            for (k, old) in undo.into_iter().rev() {
                match old {
                    Some(w) => self.writes.insert(k, w),
                    None => self.writes.remove(&k),
                };
            }
        }
        r
    }

    fn write(&mut self, cf: Cf, key: &[u8], value: Option<Vec<u8>>) {
        let k = (cf as u8, key.to_vec());
        let old = self.writes.insert(k.clone(), (cf, value));
        if let Some(u) = self.undo.as_mut() {
            u.push((k, old));
        }
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, MdsError> {
        match self.writes.get(&(cf as u8, key.to_vec())) {
            Some((_, v)) => Ok(v.clone()),
            None => self.db.get(cf, key),
        }
    }

    fn put(&mut self, cf: Cf, key: &[u8], value: Vec<u8>) {
        self.write(cf, key, Some(value));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.write(cf, key, None);
    }

    fn counter(&self, key: &[u8], default: u64) -> Result<u64, MdsError> {
        match self.get(Cf::Meta, key)? {
            Some(b) => u64_at(&b, 0),
            None => Ok(default),
        }
    }

    fn set_counter(&mut self, key: &[u8], v: u64) {
        self.put(Cf::Meta, key, v.to_be_bytes().to_vec());
    }

    fn inode(&self, ino: u64) -> Result<Attr, MdsError> {
        match self.inode_if_any(ino)? {
            Some(a) => Ok(a),
            None => fs(libc::ENOENT, format!("no inode {ino}")),
        }
    }

    /// Inode `ino`, if it exists.
    fn inode_if_any(&self, ino: u64) -> Result<Option<Attr>, MdsError> {
        self.get(Cf::Inodes, &be(ino))?
            .map(|b| {
                Attr::decode(b.as_slice())
                    .map_err(|e| MdsError::Corrupt(format!("inode {ino}: {e}")))
            })
            .transpose()
    }

    fn put_inode(&mut self, a: &Attr) {
        self.put(Cf::Inodes, &be(a.ino), a.encode_to_vec());
    }

    fn dir(&self, ino: u64) -> Result<Attr, MdsError> {
        let a = self.inode(ino)?;
        if !is_dir(&a) {
            return fs(libc::ENOTDIR, format!("inode {ino} is not a directory"));
        }
        Ok(a)
    }

    fn dentry(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, MdsError> {
        self.get(Cf::Dentries, &key2(parent, name))?
            .map(|b| Dentry::decode(&b))
            .transpose()
    }

    fn add_dentry(&mut self, parent: &mut Attr, name: &[u8], ino: u64, kind: i32) {
        let cookie = parent.next_cookie.max(FIRST_COOKIE);
        parent.next_cookie = cookie + 1;
        let d = Dentry { ino, kind, cookie };
        self.put(Cf::Dentries, &key2(parent.ino, name), d.encode());
        let mut idx = Vec::with_capacity(9 + name.len());
        idx.extend_from_slice(&ino.to_be_bytes());
        idx.push(kind as u8);
        idx.extend_from_slice(name);
        self.put(Cf::DirIndex, &key2(parent.ino, &cookie.to_be_bytes()), idx);
    }

    fn remove_dentry(&mut self, parent: u64, name: &[u8], d: &Dentry) {
        self.delete(Cf::Dentries, &key2(parent, name));
        self.delete(Cf::DirIndex, &key2(parent, &d.cookie.to_be_bytes()));
    }

    /// Whether directory `ino` has no entries, this command's own changes included (a batch
    /// removes a directory's subdirectories before the directory).
    fn dir_is_empty(&self, ino: u64) -> Result<bool, MdsError> {
        let prefix = be(ino);
        let cf = Cf::DirIndex as u8;
        let pending = self
            .writes
            .range((cf, prefix.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && k.starts_with(&prefix));
        for (_, (_, v)) in pending {
            if v.is_some() {
                return Ok(false);
            }
        }
        for r in self.db.scan(Cf::DirIndex, &prefix, &prefix) {
            let (k, _) = r?;
            if !matches!(self.writes.get(&(cf, k.to_vec())), Some((_, None))) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Drops an inode and everything hanging off it.
    fn destroy_inode(&mut self, ino: u64) -> Result<(), MdsError> {
        self.delete(Cf::Inodes, &be(ino));
        self.delete(Cf::Symlinks, &be(ino));
        self.delete(Cf::Orphans, &be(ino));
        let prefix = be(ino);
        let names: Vec<Box<[u8]>> = self
            .db
            .scan(Cf::Xattrs, &prefix, &prefix)
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in names {
            self.delete(Cf::Xattrs, &k);
        }
        let files = self.counter(KEY_FILES, 0)?;
        self.set_counter(KEY_FILES, files.saturating_sub(1));
        Ok(())
    }

    /// Takes one link away from `victim` (already removed from its directory). Returns the
    /// inode when it is a regular file that lost its last link and now awaits purge.
    fn drop_link(&mut self, mut victim: Attr, now: &Timespec) -> Result<Option<Attr>, MdsError> {
        if is_dir(&victim) {
            quota::charge(self, victim.realm, 0, -1, false)?;
            quota::forget(self, victim.ino);
            self.destroy_inode(victim.ino)?;
            return Ok(None);
        }
        victim.nlink = victim.nlink.saturating_sub(1);
        victim.ctime = Some(*now);
        if victim.nlink > 0 {
            self.put_inode(&victim);
            return Ok(None);
        }
        // Gone from the tree: its realms no longer count it (nor what an open handle still
        // writes to it).
        quota::charge(self, victim.realm, -quota::usage_of(&victim), -1, false)?;
        victim.realm = 0;
        if victim.kind == FileKind::Regular as i32 {
            self.put_inode(&victim);
            self.put(Cf::Orphans, &be(victim.ino), Vec::new());
            return Ok(Some(victim));
        }
        self.destroy_inode(victim.ino)?;
        Ok(None)
    }

    fn commit(self, applied: u64) -> Result<(), MdsError> {
        let mut b = self.db.batch();
        for ((_, key), (cf, v)) in self.writes {
            match v {
                Some(v) => b.put(cf, &key, &v),
                None => b.delete(cf, &key),
            }
        }
        b.put(Cf::Meta, KEY_APPLIED, &applied.to_be_bytes());
        // Not synced: the Raft log is, and anything after `applied` is replayed from it.
        b.commit(false)
    }
}

/// The state machine over the MDS database.
#[derive(Clone)]
pub struct Fsm {
    db: Db,
}

impl Fsm {
    /// Wraps the database.
    pub fn new(db: Db) -> Fsm {
        Fsm { db }
    }

    /// The database the state lives in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The index of the last applied log entry.
    pub fn applied_index(&self) -> Result<u64, MdsError> {
        match self.db.get(Cf::Meta, KEY_APPLIED)? {
            Some(b) => u64_at(&b, 0),
            None => Ok(0),
        }
    }

    /// Records an entry that changes no state (an empty entry or a conf change).
    pub fn apply_empty(&self, index: u64) -> Result<(), MdsError> {
        Txn::new(&self.db).commit(index)
    }

    /// Applies one committed command at log `index`. A filesystem error (say EEXIST) is a
    /// normal outcome: the entry is still applied (its index recorded), nothing else changes.
    /// Only storage failures are returned as `Err` on the outer result.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<Result<Applied, MdsError>, MdsError> {
        // A retried request gets the reply its first application produced.
        let mut window = match cmd.req {
            Some(r) => Some(self.session_window(r.session)?),
            None => None,
        };
        if let (Some(r), Some(w)) = (cmd.req, &window) {
            if let Some(e) = w.replies.iter().find(|e| e.seq == r.seq) {
                let stored = e.reply.clone().unwrap_or_default();
                Txn::new(&self.db).commit(index)?;
                return Ok(stored.outcome());
            }
        }
        // An evicted session changes nothing any more (a request it sent before it was
        // fenced and that was ordered after is refused too).
        if let Some(r) = cmd.req {
            if self.blocklisted(r.session)? {
                Txn::new(&self.db).commit(index)?;
                return Ok(Err(MdsError::Evicted(r.session)));
            }
        }
        let mut txn = Txn::new(&self.db);
        let now = cmd.now.unwrap_or_default();
        let result = match &cmd.op {
            Some(op) => apply_op(&mut txn, op, cmd.req.map(|r| r.session), &now),
            None => fs(libc::EINVAL, "empty command"),
        };
        let result = match result {
            // Storage or decoding trouble: not an outcome of the command.
            Err(e) if !matches!(e, MdsError::Fs { .. } | MdsError::Evicted(_)) => return Err(e),
            r => r,
        };
        // A failed mutation changes nothing but the applied index (and its stored reply).
        let mut txn = if result.is_ok() {
            txn
        } else {
            Txn::new(&self.db)
        };
        if let (Some(r), Some(w)) = (cmd.req, window.as_mut()) {
            // Replies the client no longer waits for are dropped; the window stays bounded
            // even for a client that never moves its oldest number on.
            w.replies.retain(|e| e.seq >= r.oldest);
            if let Some(stored) = StoredReply::of(&result) {
                let at = w.replies.partition_point(|e| e.seq < r.seq);
                w.replies.insert(
                    at,
                    WindowEntry {
                        seq: r.seq,
                        reply: Some(stored),
                    },
                );
            }
            let excess = w.replies.len().saturating_sub(SESSION_WINDOW_MAX);
            w.replies.drain(..excess);
            txn.put(Cf::Sessions, &be(r.session), w.encode_to_vec());
        }
        txn.commit(index)?;
        Ok(result)
    }

    /// Whether `session` was evicted (and is still on the blocklist).
    pub fn blocklisted(&self, session: u64) -> Result<bool, MdsError> {
        Ok(self.db.get(Cf::Blocklist, &be(session))?.is_some())
    }

    /// The evicted sessions on the blocklist.
    pub fn blocklist(&self) -> Result<Vec<u64>, MdsError> {
        self.db
            .scan(Cf::Blocklist, &[], &[])
            .map(|r| r.and_then(|(k, _)| u64_at(&k, 0)))
            .collect()
    }

    /// The replies session `session` may still retry.
    fn session_window(&self, session: u64) -> Result<SessionWindow, MdsError> {
        match self.db.get(Cf::Sessions, &be(session))? {
            Some(b) => SessionWindow::decode(b.as_slice())
                .map_err(|e| MdsError::Corrupt(format!("session window: {e}"))),
            None => Ok(SessionWindow::default()),
        }
    }

    // ---- reads (served from the applied state) ----

    /// Attributes of an inode.
    pub fn getattr(&self, ino: u64) -> Result<Attr, MdsError> {
        Txn::new(&self.db).inode(ino)
    }

    /// Resolves `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, MdsError> {
        let t = Txn::new(&self.db);
        t.dir(parent)?;
        if name.len() > limits::NAME_MAX {
            return fs(libc::ENAMETOOLONG, "name too long");
        }
        match t.dentry(parent, name)? {
            Some(d) => t.inode(d.ino),
            None => fs(
                libc::ENOENT,
                format!("{} not found", String::from_utf8_lossy(name)),
            ),
        }
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, MdsError> {
        let t = Txn::new(&self.db);
        let a = t.inode(ino)?;
        if a.kind != FileKind::Symlink as i32 {
            return fs(libc::EINVAL, "not a symlink");
        }
        t.get(Cf::Symlinks, &be(ino))?
            .ok_or_else(|| MdsError::Corrupt(format!("symlink {ino} has no target")))
    }

    /// Up to `limit` entries of directory `ino` after cookie `after`.
    pub fn readdir(&self, ino: u64, after: u64, limit: u32) -> Result<pb::ReadDirReply, MdsError> {
        let t = Txn::new(&self.db);
        t.dir(ino)?;
        let prefix = be(ino);
        let start = key2(ino, &(after.saturating_add(1)).to_be_bytes());
        let limit = limit.clamp(1, 4096) as usize;
        let mut entries = Vec::new();
        let mut eof = true;
        for r in self.db.scan(Cf::DirIndex, &prefix, &start) {
            let (k, v) = r?;
            if entries.len() == limit {
                eof = false;
                break;
            }
            if v.len() < 9 || k.len() != 16 {
                return Err(MdsError::Corrupt("dir index record".into()));
            }
            entries.push(pb::DirEntry {
                name: v[9..].to_vec().into(),
                ino: u64_at(&v, 0)?,
                kind: v[8] as i32,
                cookie: u64_at(&k, 8)?,
            });
        }
        Ok(pb::ReadDirReply { entries, eof })
    }

    /// One xattr's value (the layout xattrs are computed from the inode).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MdsError> {
        check_xattr_name(name)?;
        let t = Txn::new(&self.db);
        let a = t.inode(ino)?;
        if let Some((dir, field)) = layout::layout_xattr(name) {
            layout_target(&a, dir, libc::ENODATA)?;
            let l = a.layout.unwrap_or_else(layout::default_layout);
            return Ok(layout::format_layout(&l, field).into_bytes());
        }
        if quota::is_quota_xattr(name) {
            return quota::get(&t, &a, name);
        }
        t.get(Cf::Xattrs, &key2(ino, name))?
            .ok_or_else(|| MdsError::fs(libc::ENODATA, "no such xattr"))
    }

    /// The names of an inode's xattrs.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, MdsError> {
        Txn::new(&self.db).inode(ino)?;
        let prefix = be(ino);
        self.db
            .scan(Cf::Xattrs, &prefix, &prefix)
            .map(|r| r.map(|(k, _)| k[8..].to_vec()))
            .collect()
    }

    /// The first lock another owner holds that conflicts with `r` (GetLock).
    pub fn get_lock(&self, r: &pb::LockRequest) -> Result<pb::LockReply, MdsError> {
        locks::get_lock(&self.db, r)
    }

    /// Locks held, per client session.
    pub fn locks_per_session(&self) -> Result<BTreeMap<u64, u32>, MdsError> {
        locks::per_session(&self.db)
    }

    /// Bytes files in `a`'s realm may still grow by (`None`: no byte quota over it).
    pub fn quota_room(&self, a: &Attr) -> Result<Option<u64>, MdsError> {
        if a.realm == 0 {
            return Ok(None);
        }
        quota::room(&Txn::new(&self.db), a.realm)
    }

    /// Whether a client may make entries in directory `ino` alone, under a directory lease:
    /// they count in no quota and it hands down no default ACL, so what a create makes there
    /// follows from the directory's attributes and the caller's request only.
    pub fn may_lease_dir(&self, ino: u64) -> Result<bool, MdsError> {
        let t = Txn::new(&self.db);
        let Some(a) = t.inode_if_any(ino)? else {
            return Ok(false);
        };
        Ok(is_dir(&a)
            && a.nlink > 0
            && quota::child_realm(&t, &a)? == 0
            && t.get(Cf::Xattrs, &key2(ino, acl::DEFAULT))?.is_none())
    }

    /// Whether `session` may make a file numbered `ino` in a batch: one of the numbers it
    /// took, not used yet.
    pub fn may_make(&self, session: u64, ino: u64) -> bool {
        let t = Txn::new(&self.db);
        taken_by(&t, session, ino).unwrap_or(false) && matches!(t.inode_if_any(ino), Ok(None))
    }

    /// Which of `inos` are in the tree of directory `dir`, itself included (see
    /// `quota::in_tree`).
    pub fn in_tree(&self, dir: u64, inos: &[u64]) -> Result<Vec<u64>, MdsError> {
        if inos.is_empty() {
            return Ok(Vec::new());
        }
        quota::in_tree(&Txn::new(&self.db), dir, inos)
    }

    /// The innermost quota with a limit over inode `ino` (itself, for a directory with one).
    pub fn quota_over(&self, ino: u64) -> Result<Option<pb::Quota>, MdsError> {
        let t = Txn::new(&self.db);
        let a = t.inode(ino)?;
        quota::limiting(&t, &a)
    }

    /// Number of inodes in the namespace.
    pub fn files(&self) -> Result<u64, MdsError> {
        Txn::new(&self.db).counter(KEY_FILES, 0)
    }

    /// The MDS members' addresses, by id.
    pub fn mds_members(&self) -> Result<Vec<(u64, String)>, MdsError> {
        Ok(match self.db.get(Cf::Meta, KEY_MEMBERS)? {
            Some(b) => MemberList::decode(b.as_slice())
                .map_err(|e| MdsError::Corrupt(format!("member list: {e}")))?
                .members
                .into_iter()
                .map(|m| (m.id, m.addr))
                .collect(),
            None => Vec::new(),
        })
    }

    fn put_members(t: &mut Txn, mut members: Vec<(u64, String)>) {
        members.sort();
        let list = MemberList {
            members: members
                .into_iter()
                .map(|(id, addr)| MemberAddr { id, addr })
                .collect(),
        };
        t.put(Cf::Meta, KEY_MEMBERS, list.encode_to_vec());
    }

    /// Records the member list of a group that has none yet (a new group's members are all
    /// started with the same list, so they record the same). Not an applied entry.
    pub fn seed_members(&self, members: &[(u64, String)]) -> Result<(), MdsError> {
        if !self.mds_members()?.is_empty() {
            return Ok(());
        }
        let mut t = Txn::new(&self.db);
        Self::put_members(&mut t, members.to_vec());
        let mut b = self.db.batch();
        for ((_, key), (cf, v)) in t.writes {
            if let Some(v) = v {
                b.put(cf, &key, &v);
            }
        }
        b.commit(true)
    }

    /// Applies a membership change at log `index`: member `id` is now at `addr`, or with
    /// `None` is no longer a member.
    pub fn apply_member_change(
        &self,
        index: u64,
        id: u64,
        addr: Option<&str>,
    ) -> Result<(), MdsError> {
        let mut members: Vec<(u64, String)> = self
            .mds_members()?
            .into_iter()
            .filter(|(m, _)| *m != id)
            .collect();
        if let Some(a) = addr {
            members.push((id, a.to_string()));
        }
        let mut t = Txn::new(&self.db);
        Self::put_members(&mut t, members);
        t.commit(index)
    }

    /// Whether the root directory exists yet.
    pub fn bootstrapped(&self) -> Result<bool, MdsError> {
        Ok(self.db.get(Cf::Inodes, &be(ROOT_INO))?.is_some())
    }

    /// The pool's settings, if they were ever set.
    pub fn pool(&self) -> Result<Option<Pool>, MdsError> {
        self.db
            .get(Cf::Meta, KEY_POOL)?
            .map(|v| {
                Pool::decode(v.as_slice()).map_err(|e| MdsError::Corrupt(format!("pool: {e}")))
            })
            .transpose()
    }

    /// The persisted OSD records and the map's epoch.
    pub fn osds(&self) -> Result<(u64, Vec<OsdRecord>), MdsError> {
        let t = Txn::new(&self.db);
        let epoch = t.counter(KEY_OSD_EPOCH, 0)?;
        let osds = self
            .db
            .scan(Cf::Osds, &[], &[])
            .map(|r| {
                r.and_then(|(_, v)| {
                    OsdRecord::decode(&*v)
                        .map_err(|e| MdsError::Corrupt(format!("osd record: {e}")))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((epoch, osds))
    }
}

/// Applies `op`, sent by client `session` if it came from one.
fn apply_op(
    t: &mut Txn<'_>,
    op: &Op,
    session: Option<u64>,
    now: &Timespec,
) -> Result<Applied, MdsError> {
    match op {
        Op::Noop(_) => Ok(Applied::Done),
        Op::Bootstrap(b) => bootstrap(t, b.uid, b.gid, now),
        Op::SetAttr(r) => setattr(t, r, session, now).map(Applied::Attr),
        Op::MakeNode(r) => make_node(t, r, session, now).map(Applied::Attr),
        Op::Unlink(r) => unlink(t, r, now).map(Applied::Removed),
        Op::Rename(r) => rename(t, r, now).map(Applied::Removed),
        Op::Link(r) => link(t, r, now).map(Applied::Attr),
        Op::SetXattr(r) => setxattr(t, r, now),
        Op::RemoveXattr(r) => removexattr(t, r, now),
        Op::Purge(r) => purge(t, r.ino),
        Op::OsdBoot(r) => osd_boot(t, r),
        Op::SetOsdState(r) => set_osd_state(t, r, now),
        Op::SetPool(p) => set_pool(t, p),
        Op::SetLock(r) => {
            if t.get(Cf::Blocklist, &be(r.session))?.is_some() {
                return Err(MdsError::Evicted(r.session));
            }
            locks::set_lock(t, r)
        }
        Op::EndSession(r) => locks::end_session(t, r.session),
        Op::Evict(r) => evict(t, r.session, now),
        Op::RecoverWrites(r) => recover_writes(t, r, now),
        Op::ReleaseWrites(r) => release_writes(t, r, session),
        Op::TakeInodes(r) => take_inodes(t, r.count, session),
        Op::Batch(r) => batch(t, r, session, now),
    }
}

fn later_of(a: Timespec, b: Timespec) -> Timespec {
    if (b.sec, b.nsec) > (a.sec, a.nsec) {
        b
    } else {
        a
    }
}

fn inodes_key(session: u64) -> Vec<u8> {
    [KEY_INODES, &be(session)].concat()
}

/// Hands `session` the next `count` inode numbers: the files it makes under directory leases
/// take theirs from it (see [`batch`]). The range before stays usable (the session may have
/// creates made with it on their way); older ones are forgotten.
fn take_inodes(t: &mut Txn<'_>, count: u32, session: Option<u64>) -> Result<Applied, MdsError> {
    let Some(s) = session else {
        return fs(libc::EINVAL, "inode numbers go to client sessions only");
    };
    if count == 0 || count > limits::TAKE_INODES_MAX {
        return fs(
            libc::EINVAL,
            format!(
                "{count} inode numbers asked for, 1 to {} at once",
                limits::TAKE_INODES_MAX
            ),
        );
    }
    let first = t.counter(KEY_NEXT_INO, ROOT_INO + 1)?;
    let end = first + u64::from(count);
    t.set_counter(KEY_NEXT_INO, end);
    let mut ranges = t.get(Cf::Meta, &inodes_key(s))?.unwrap_or_default();
    ranges.drain(..ranges.len().saturating_sub(16));
    ranges.extend_from_slice(&[be(first), be(end)].concat());
    t.put(Cf::Meta, &inodes_key(s), ranges);
    Ok(Applied::Inodes(first))
}

/// Whether `ino` is in one of the ranges [`take_inodes`] last gave `session`.
fn taken_by(t: &Txn<'_>, session: u64, ino: u64) -> Result<bool, MdsError> {
    let ranges = t.get(Cf::Meta, &inodes_key(session))?.unwrap_or_default();
    for r in ranges.chunks(16) {
        if u64_at(r, 0)? <= ino && ino < u64_at(r, 8)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies the changes `session` made under its directory leases, each on its own: one that
/// fails (its error is its result) changes nothing, and the ones after it still apply.
fn batch(
    t: &mut Txn<'_>,
    r: &pb::BatchRequest,
    session: Option<u64>,
    now: &Timespec,
) -> Result<Applied, MdsError> {
    let Some(s) = session else {
        return fs(libc::EINVAL, "a batch comes from a client session");
    };
    if r.ops.len() > limits::BATCH_MAX {
        return fs(
            libc::EINVAL,
            format!(
                "{} changes in one batch, at most {}",
                r.ops.len(),
                limits::BATCH_MAX
            ),
        );
    }
    let mut out = Vec::with_capacity(r.ops.len());
    for op in &r.ops {
        let result = t.step(|t| match &op.op {
            Some(pb::batch_op::Op::MakeNode(m)) => {
                if m.ino == 0 || !taken_by(t, s, m.ino)? {
                    return fs(
                        libc::EINVAL,
                        format!("inode {} is not one this session took", m.ino),
                    );
                }
                if m.kind != FileKind::Regular as i32 && m.kind != FileKind::Directory as i32 {
                    return fs(
                        libc::EINVAL,
                        "a batch creates regular files and directories only",
                    );
                }
                Ok((make_node(t, m, session, now)?, None))
            }
            Some(pb::batch_op::Op::SetAttr(a)) => Ok((setattr(t, a, session, now)?, None)),
            Some(pb::batch_op::Op::Unlink(u)) => {
                let orphan = unlink(t, u, now)?;
                Ok((t.inode(u.parent)?, orphan))
            }
            // Inode 0 in the result: no attributes to answer with.
            Some(pb::batch_op::Op::Purge(p)) => purge(t, p.ino).map(|_| (Attr::default(), None)),
            None => fs(libc::EINVAL, "an empty change"),
        });
        out.push(match result {
            Ok(a) => Ok(a),
            Err(MdsError::Fs { errno, message }) => Err((errno, message)),
            Err(e) => return Err(e),
        });
    }
    Ok(Applied::Batch(out))
}

/// Clears the writer mark of each file still marked by `session` with the mark given (its
/// write lease came back with nothing unsent); files gone since are skipped.
fn release_writes(
    t: &mut Txn<'_>,
    r: &pb::ReleaseWritesRequest,
    session: Option<u64>,
) -> Result<Applied, MdsError> {
    let Some(s) = session else {
        return Ok(Applied::Done);
    };
    for f in &r.files {
        let Some(mut a) = t.inode_if_any(f.ino)? else {
            continue;
        };
        if a.writer == s && a.writer_mark == f.writer_mark {
            a.writer = 0;
            t.put_inode(&a);
        }
    }
    Ok(Applied::Done)
}

/// Records what a file's departed writer left on the OSDs (size and mtime only move up) and
/// clears its mark, unless the file was marked again since the probe.
fn recover_writes(t: &mut Txn<'_>, r: &RecoverWrites, now: &Timespec) -> Result<Applied, MdsError> {
    let mut a = t.inode(r.ino)?;
    if a.writer == 0 || a.writer_mark != r.writer_mark {
        return Ok(Applied::Attr(a));
    }
    let used = quota::usage_of(&a);
    a.writer = 0;
    let mut changed = false;
    let end = r.end.min(limits::FILE_SIZE_MAX);
    if end > a.size {
        a.size = end;
        changed = true;
    }
    if let Some(m) = r.mtime {
        let old = a.mtime.unwrap_or_default();
        // Writes older than the last attribute change (a utimes after them) leave mtime be.
        let changed_at = a.ctime.unwrap_or_default();
        if (m.sec, m.nsec) > (old.sec, old.nsec)
            && (m.sec, m.nsec) > (changed_at.sec, changed_at.nsec)
        {
            a.mtime = Some(m);
            changed = true;
        }
    }
    if changed {
        a.ctime = Some(*now);
    }
    // What the writer wrote counts even past a quota: it returned to the application.
    quota::charge(t, a.realm, quota::usage_of(&a) - used, 0, false)?;
    t.put_inode(&a);
    Ok(Applied::Attr(a))
}

/// Puts `session` on the blocklist in a new OSD map epoch (which the OSDs refuse it from),
/// and drops entries older than [`BLOCKLIST_KEEP_SECS`]. Evicting it again changes nothing.
fn evict(t: &mut Txn<'_>, session: u64, now: &Timespec) -> Result<Applied, MdsError> {
    if let Some(b) = t.get(Cf::Blocklist, &be(session))? {
        let e = BlockEntry::decode(b.as_slice())
            .map_err(|e| MdsError::Corrupt(format!("blocklist entry: {e}")))?;
        return Ok(Applied::Epoch(e.epoch));
    }
    let expired: Vec<Vec<u8>> = t
        .db
        .scan(Cf::Blocklist, &[], &[])
        .filter_map(|r| match r {
            Ok((k, v)) => match BlockEntry::decode(&*v) {
                Ok(e) if now.sec.saturating_sub(e.at) > BLOCKLIST_KEEP_SECS => Some(Ok(k.to_vec())),
                Ok(_) => None,
                Err(e) => Some(Err(MdsError::Corrupt(format!("blocklist entry: {e}")))),
            },
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    for k in expired {
        t.delete(Cf::Blocklist, &k);
    }
    let epoch = t.counter(KEY_OSD_EPOCH, 0)? + 1;
    let entry = BlockEntry { epoch, at: now.sec };
    t.put(Cf::Blocklist, &be(session), entry.encode_to_vec());
    t.set_counter(KEY_OSD_EPOCH, epoch);
    Ok(Applied::Epoch(epoch))
}

fn bootstrap(t: &mut Txn<'_>, uid: u32, gid: u32, now: &Timespec) -> Result<Applied, MdsError> {
    if t.get(Cf::Inodes, &be(ROOT_INO))?.is_some() {
        return Ok(Applied::Done);
    }
    let root = Attr {
        ino: ROOT_INO,
        kind: FileKind::Directory as i32,
        perm: 0o755,
        nlink: 2,
        uid,
        gid,
        atime: Some(*now),
        mtime: Some(*now),
        ctime: Some(*now),
        layout: Some(layout::default_layout()),
        next_cookie: FIRST_COOKIE,
        parent: ROOT_INO,
        ..Default::default()
    };
    t.put_inode(&root);
    t.set_counter(KEY_NEXT_INO, ROOT_INO + 1);
    t.set_counter(KEY_FILES, 1);
    Ok(Applied::Attr(root))
}

/// Whether `r` changes any attribute (one that only gives a write lease back changes none).
pub fn changes_attrs(r: &pb::SetAttrRequest) -> bool {
    r.perm.is_some()
        || r.uid.is_some()
        || r.gid.is_some()
        || r.size.is_some()
        || r.grow_size.is_some()
        || r.atime.is_some()
        || r.mtime.is_some()
}

/// Changes attributes for `session`. A size sent by the file's writer records its writes
/// (its mark goes), and `mark_writer` marks the file with the session about to get the write
/// lease (see `recovery`).
fn setattr(
    t: &mut Txn<'_>,
    r: &pb::SetAttrRequest,
    session: Option<u64>,
    now: &Timespec,
) -> Result<Attr, MdsError> {
    let mut a = t.inode(r.ino)?;
    let used = quota::usage_of(&a);
    if let Some(s) = session {
        if (r.grow_size.is_some() || r.release_write_lease) && a.writer == s {
            a.writer = 0;
        }
        if r.mark_writer {
            a.writer = s;
            a.writer_mark += 1;
        }
    }
    if let Some(perm) = r.perm {
        a.perm = perm & 0o7777;
        // The access ACL's owner, mask and other entries follow the mode bits.
        let key = key2(r.ino, acl::ACCESS);
        if let Some(mut acl) = t.get(Cf::Xattrs, &key)?.and_then(|v| acl::Acl::parse(&v)) {
            acl.chmod(a.perm);
            t.put(Cf::Xattrs, &key, acl.encode());
        }
    }
    if let Some(uid) = r.uid {
        a.uid = uid;
    }
    if let Some(gid) = r.gid {
        a.gid = gid;
    }
    if let Some(size) = r.size {
        if is_dir(&a) {
            return fs(libc::EISDIR, "cannot truncate a directory");
        }
        if a.kind != FileKind::Regular as i32 {
            return fs(libc::EINVAL, "cannot truncate a special file");
        }
        if size > limits::FILE_SIZE_MAX {
            return fs(libc::EFBIG, "size too large");
        }
        a.size = size;
        a.mtime = Some(*now);
    }
    if let Some(grow) = r.grow_size {
        if a.kind != FileKind::Regular as i32 {
            return fs(libc::EINVAL, "not a regular file");
        }
        a.size = a.size.max(grow.min(limits::FILE_SIZE_MAX));
        a.mtime = Some(*now);
    }
    if let Some(at) = &r.atime {
        a.atime = Some(if at.now {
            *now
        } else {
            at.time.unwrap_or_default()
        });
    }
    if let Some(mt) = &r.mtime {
        a.mtime = Some(if mt.now {
            *now
        } else {
            mt.time.unwrap_or_default()
        });
    }
    if changes_attrs(r) {
        a.ctime = Some(*now);
    }
    let grown = quota::usage_of(&a) - used;
    quota::charge(t, a.realm, grown, 0, grown > 0)?;
    t.put_inode(&a);
    Ok(a)
}

/// Makes a node (or, for a create without `exclusive`, returns the regular file of that
/// name). A new regular file asked for with `mark_writer` is marked with `session`, about to
/// get its write lease.
fn make_node(
    t: &mut Txn<'_>,
    r: &pb::MakeNodeRequest,
    session: Option<u64>,
    now: &Timespec,
) -> Result<Attr, MdsError> {
    check_name(&r.name).or_else(|e| fs(e, "bad name"))?;
    let mut parent = t.dir(r.parent)?;
    if parent.nlink == 0 {
        return fs(libc::ENOENT, "directory was removed");
    }
    let kind = FileKind::try_from(r.kind).unwrap_or(FileKind::Unspecified);
    if kind == FileKind::Unspecified {
        return fs(libc::EINVAL, "unknown file kind");
    }
    if let Some(d) = t.dentry(r.parent, &r.name)? {
        let mut existing = t.inode(d.ino)?;
        if !r.exclusive && kind == FileKind::Regular && existing.kind == FileKind::Regular as i32 {
            if r.mark_writer && session.is_some_and(|s| s == existing.writer) {
                // Already this session's: marked anew, so a give-back of the old mark sent
                // meanwhile leaves the lease this create is granted.
                existing.writer_mark += 1;
                t.put_inode(&existing);
            }
            return Ok(existing);
        }
        return fs(libc::EEXIST, "name exists");
    }
    if kind == FileKind::Symlink {
        if r.target.is_empty() {
            return fs(libc::ENOENT, "empty symlink target");
        }
        if r.target.len() > limits::SYMLINK_MAX {
            return fs(libc::ENAMETOOLONG, "symlink target too long");
        }
    }
    let realm = quota::child_realm(t, &parent)?;
    quota::charge(t, realm, 0, 1, true)?;
    let ino = if r.ino != 0 {
        // Taken ahead by the client (checked by the batch): used once only.
        if t.inode_if_any(r.ino)?.is_some() {
            return fs(libc::EEXIST, format!("inode {} exists", r.ino));
        }
        r.ino
    } else {
        let ino = t.counter(KEY_NEXT_INO, ROOT_INO + 1)?;
        t.set_counter(KEY_NEXT_INO, ino + 1);
        ino
    };
    // Made by the client earlier (a batch): its own time, never after the entry's.
    let born = match r.time {
        Some(at) if r.ino != 0 && (at.sec, at.nsec) < (now.sec, now.nsec) => at,
        _ => *now,
    };
    let dir = kind == FileKind::Directory;
    let inherited = if kind == FileKind::Symlink {
        acl::Inherited {
            perm: 0o777,
            access: None,
            default: None,
        }
    } else {
        let default = t.get(Cf::Xattrs, &key2(r.parent, acl::DEFAULT))?;
        acl::inherit(default.as_deref(), r.perm & 0o7777, r.umask, dir)
    };
    for (name, value) in [
        (acl::ACCESS, inherited.access),
        (acl::DEFAULT, inherited.default),
    ] {
        if let Some(v) = value {
            t.put(Cf::Xattrs, &key2(ino, name), v);
        }
    }
    let mut perm = inherited.perm;
    let mut gid = r.gid;
    // A setgid directory hands its group down, and its setgid bit to subdirectories.
    if parent.perm & S_ISGID != 0 {
        gid = parent.gid;
        if kind == FileKind::Directory {
            perm |= S_ISGID;
        }
    }
    let mut attr = Attr {
        ino,
        kind: kind as i32,
        perm,
        nlink: if dir { 2 } else { 1 },
        uid: r.uid,
        gid,
        size: if kind == FileKind::Symlink {
            r.target.len() as u64
        } else {
            0
        },
        rdev: r.rdev,
        atime: Some(born),
        mtime: Some(born),
        ctime: Some(born),
        layout: match kind {
            FileKind::Regular | FileKind::Directory => {
                Some(parent.layout.unwrap_or_else(layout::default_layout))
            }
            _ => None,
        },
        next_cookie: if dir { FIRST_COOKIE } else { 0 },
        parent: if dir { parent.ino } else { 0 },
        writer: 0,
        writer_mark: 0,
        realm,
    };
    if let Some(s) = session.filter(|_| r.mark_writer && kind == FileKind::Regular) {
        attr.writer = s;
        attr.writer_mark = 1;
    }
    if kind == FileKind::Symlink {
        t.put(Cf::Symlinks, &be(ino), r.target.to_vec());
    }
    t.add_dentry(&mut parent, &r.name, ino, kind as i32);
    if dir {
        parent.nlink += 1;
    }
    // A file the client made earlier changed the directory then (as it showed), unless
    // something recorded since changed it later.
    let changed = Some(if r.ino != 0 {
        later_of(parent.mtime.unwrap_or_default(), born)
    } else {
        *now
    });
    parent.mtime = changed;
    parent.ctime = changed;
    t.put_inode(&parent);
    t.put_inode(&attr);
    let files = t.counter(KEY_FILES, 0)?;
    t.set_counter(KEY_FILES, files + 1);
    Ok(attr)
}

fn unlink(
    t: &mut Txn<'_>,
    r: &pb::UnlinkRequest,
    now: &Timespec,
) -> Result<Option<Attr>, MdsError> {
    let mut parent = t.dir(r.parent)?;
    if r.name.as_ref() == b"." {
        return fs(libc::EINVAL, "cannot remove .");
    }
    if r.name.as_ref() == b".." {
        return fs(libc::ENOTEMPTY, "cannot remove ..");
    }
    if r.name.len() > limits::NAME_MAX {
        return fs(libc::ENAMETOOLONG, "name too long");
    }
    let d = t
        .dentry(r.parent, &r.name)?
        .ok_or_else(|| MdsError::fs(libc::ENOENT, "no such entry"))?;
    let victim = t.inode(d.ino)?;
    if r.dir {
        if !is_dir(&victim) {
            return fs(libc::ENOTDIR, "not a directory");
        }
        if !t.dir_is_empty(victim.ino)? {
            return fs(libc::ENOTEMPTY, "directory not empty");
        }
        parent.nlink = parent.nlink.saturating_sub(1);
    } else if is_dir(&victim) {
        return fs(libc::EISDIR, "is a directory");
    }
    t.remove_dentry(r.parent, &r.name, &d);
    parent.mtime = Some(*now);
    parent.ctime = Some(*now);
    t.put_inode(&parent);
    match t.drop_link(victim, now)? {
        // Nothing to delete on the OSDs and no one to wait for: gone at once.
        Some(v) if r.purge_empty && v.size == 0 && v.writer == 0 => {
            purge(t, v.ino)?;
            Ok(None)
        }
        orphan => Ok(orphan),
    }
}

/// Fails with EINVAL when `dir` lies inside the tree rooted at `ancestor`.
fn check_not_inside(t: &Txn<'_>, ancestor: u64, mut dir: u64) -> Result<(), MdsError> {
    // Bounded walk up the parent pointers: a corrupt cycle cannot hang the state machine.
    for _ in 0..100_000 {
        if dir == ancestor {
            return fs(libc::EINVAL, "cannot move a directory into itself");
        }
        if dir == ROOT_INO {
            return Ok(());
        }
        dir = t.inode(dir)?.parent;
    }
    Err(MdsError::Corrupt("directory parent chain too long".into()))
}

fn rename(
    t: &mut Txn<'_>,
    r: &pb::RenameRequest,
    now: &Timespec,
) -> Result<Option<Attr>, MdsError> {
    check_name(&r.new_name).or_else(|e| fs(e, "bad new name"))?;
    if r.name.len() > limits::NAME_MAX {
        return fs(libc::ENAMETOOLONG, "name too long");
    }
    if r.flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || r.flags == RENAME_NOREPLACE | RENAME_EXCHANGE
    {
        return fs(libc::EINVAL, "unknown rename flags");
    }
    t.dir(r.parent)?;
    t.dir(r.new_parent)?;
    let src = t
        .dentry(r.parent, &r.name)?
        .ok_or_else(|| MdsError::fs(libc::ENOENT, "no such entry"))?;
    let dst = t.dentry(r.new_parent, &r.new_name)?;
    let mut moved = t.inode(src.ino)?;
    if let Some(d) = dst {
        if r.flags & RENAME_NOREPLACE != 0 {
            return fs(libc::EEXIST, "target exists");
        }
        if d.ino == src.ino {
            return Ok(None); // Two names of one inode: POSIX says do nothing.
        }
    } else if r.flags & RENAME_EXCHANGE != 0 {
        return fs(libc::ENOENT, "exchange target does not exist");
    }
    if is_dir(&moved) && r.parent != r.new_parent {
        check_not_inside(t, moved.ino, r.new_parent)?;
    }
    let (from, to) = (
        quota::child_realm(t, &t.dir(r.parent)?)?,
        quota::child_realm(t, &t.dir(r.new_parent)?)?,
    );
    if from != to {
        // A file moves its usage along; a tree (or a file with other links) would have to be
        // walked and retagged: EXDEV, and mv copies it instead.
        if is_dir(&moved) || moved.nlink > 1 || r.flags & RENAME_EXCHANGE != 0 {
            return fs(libc::EXDEV, "cannot move this across a quota boundary");
        }
        // Out of the old realms first: the realms above both only check what they held.
        let used = quota::usage_of(&moved);
        quota::charge(t, from, -used, -1, false)?;
        quota::charge(t, to, used, 1, true)?;
        moved.realm = to;
    }

    if let (true, Some(d)) = (r.flags & RENAME_EXCHANGE != 0, dst.as_ref()) {
        let mut other = t.inode(d.ino)?;
        if is_dir(&other) && r.parent != r.new_parent {
            check_not_inside(t, other.ino, r.parent)?;
        }
        t.remove_dentry(r.parent, &r.name, &src);
        t.remove_dentry(r.new_parent, &r.new_name, d);
        let mut p = t.dir(r.parent)?;
        t.add_dentry(&mut p, &r.name, other.ino, other.kind);
        t.put_inode(&p);
        let mut np = t.dir(r.new_parent)?;
        t.add_dentry(&mut np, &r.new_name, moved.ino, moved.kind);
        t.put_inode(&np);
        if r.parent != r.new_parent {
            let (md, od) = (is_dir(&moved), is_dir(&other));
            let mut p = t.dir(r.parent)?;
            let mut np = t.dir(r.new_parent)?;
            p.nlink = p.nlink + od as u32 - md as u32;
            np.nlink = np.nlink + md as u32 - od as u32;
            t.put_inode(&p);
            t.put_inode(&np);
            if md {
                moved.parent = r.new_parent;
            }
            if od {
                other.parent = r.parent;
            }
        }
        other.ctime = Some(*now);
        t.put_inode(&other);
        moved.ctime = Some(*now);
        t.put_inode(&moved);
        touch_dirs(t, r.parent, r.new_parent, now)?;
        return Ok(None);
    }

    let mut orphan = None;
    if let Some(d) = dst {
        let victim = t.inode(d.ino)?;
        if is_dir(&moved) {
            if !is_dir(&victim) {
                return fs(libc::ENOTDIR, "target is not a directory");
            }
            if !t.dir_is_empty(victim.ino)? {
                return fs(libc::ENOTEMPTY, "target directory not empty");
            }
            let mut np = t.dir(r.new_parent)?;
            np.nlink = np.nlink.saturating_sub(1);
            t.put_inode(&np);
        } else if is_dir(&victim) {
            return fs(libc::EISDIR, "target is a directory");
        }
        t.remove_dentry(r.new_parent, &r.new_name, &d);
        orphan = t.drop_link(victim, now)?;
    }
    t.remove_dentry(r.parent, &r.name, &src);
    let mut np = t.dir(r.new_parent)?;
    t.add_dentry(&mut np, &r.new_name, moved.ino, moved.kind);
    t.put_inode(&np);
    if is_dir(&moved) && r.parent != r.new_parent {
        let mut p = t.dir(r.parent)?;
        p.nlink = p.nlink.saturating_sub(1);
        t.put_inode(&p);
        let mut np = t.dir(r.new_parent)?;
        np.nlink += 1;
        t.put_inode(&np);
        moved.parent = r.new_parent;
    }
    moved.ctime = Some(*now);
    t.put_inode(&moved);
    touch_dirs(t, r.parent, r.new_parent, now)?;
    Ok(orphan)
}

fn touch_dirs(t: &mut Txn<'_>, a: u64, b: u64, now: &Timespec) -> Result<(), MdsError> {
    for ino in [a, b] {
        let mut d = t.dir(ino)?;
        d.mtime = Some(*now);
        d.ctime = Some(*now);
        t.put_inode(&d);
    }
    Ok(())
}

fn link(t: &mut Txn<'_>, r: &pb::LinkRequest, now: &Timespec) -> Result<Attr, MdsError> {
    check_name(&r.new_name).or_else(|e| fs(e, "bad name"))?;
    let mut a = t.inode(r.ino)?;
    if is_dir(&a) {
        return fs(libc::EPERM, "cannot hard-link a directory");
    }
    if a.nlink == 0 {
        return fs(libc::ENOENT, "file was removed");
    }
    let mut np = t.dir(r.new_parent)?;
    if t.dentry(r.new_parent, &r.new_name)?.is_some() {
        return fs(libc::EEXIST, "name exists");
    }
    if quota::child_realm(t, &np)? != a.realm {
        return fs(libc::EXDEV, "a hard link cannot cross a quota boundary");
    }
    if a.nlink >= u32::MAX - 1 {
        return fs(libc::EMLINK, "too many links");
    }
    t.add_dentry(&mut np, &r.new_name, a.ino, a.kind);
    np.mtime = Some(*now);
    np.ctime = Some(*now);
    t.put_inode(&np);
    a.nlink += 1;
    a.ctime = Some(*now);
    t.put_inode(&a);
    Ok(a)
}

/// Checks an xattr name's length and namespace: `user.`, `trusted.`, `security.`, the POSIX
/// ACLs, and Shoal's layout names; any other namespace is EOPNOTSUPP, as on local filesystems.
fn check_xattr_name(name: &[u8]) -> Result<(), MdsError> {
    if name.is_empty() || name.len() > limits::XATTR_NAME_MAX {
        return fs(libc::ERANGE, "bad xattr name length");
    }
    let known = [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
        || name == acl::ACCESS
        || name == acl::DEFAULT
        || layout::layout_xattr(name).is_some()
        || quota::is_quota_xattr(name);
    if !known {
        return fs(libc::EOPNOTSUPP, "unsupported xattr namespace");
    }
    Ok(())
}

/// Checks that a layout xattr fits the inode: `shoal.dir.layout` on directories,
/// `shoal.layout` on regular files; `errno` otherwise.
fn layout_target(a: &Attr, dir: bool, errno: i32) -> Result<(), MdsError> {
    let kind = if dir {
        FileKind::Directory
    } else {
        FileKind::Regular
    };
    if a.kind != kind as i32 {
        return fs(
            errno,
            if dir {
                "shoal.dir.layout is for directories"
            } else {
                "shoal.layout is for regular files"
            },
        );
    }
    Ok(())
}

/// Sets a file's or directory's layout through its virtual xattr. A file's layout changes only
/// while it holds no data, since its objects are cut by it.
fn set_layout(
    t: &mut Txn<'_>,
    r: &pb::SetXattrRequest,
    dir: bool,
    field: Option<layout::Field>,
    now: &Timespec,
) -> Result<Applied, MdsError> {
    let mut a = t.inode(r.ino)?;
    layout_target(&a, dir, libc::EINVAL)?;
    if !dir && a.size > 0 {
        return fs(
            libc::ENOTEMPTY,
            "a file's layout can change only while it is empty",
        );
    }
    let cur = a.layout.unwrap_or_else(layout::default_layout);
    let new = layout::parse_layout(&cur, field, &r.value)
        .map_err(|e| MdsError::fs(e, "invalid layout"))?;
    a.layout = Some(new);
    a.ctime = Some(*now);
    t.put_inode(&a);
    Ok(Applied::Attr(a))
}

fn setxattr(t: &mut Txn<'_>, r: &pb::SetXattrRequest, now: &Timespec) -> Result<Applied, MdsError> {
    check_xattr_name(&r.name)?;
    if let Some((dir, field)) = layout::layout_xattr(&r.name) {
        return set_layout(t, r, dir, field, now);
    }
    if quota::is_quota_xattr(&r.name) {
        let a = t.inode(r.ino)?;
        return quota::set(t, a, &r.name, Some(&r.value), r.acl_caller.as_ref(), now)
            .map(Applied::Attr);
    }
    if r.value.len() > limits::XATTR_VALUE_MAX {
        return fs(libc::E2BIG, "xattr value too large");
    }
    let mut a = t.inode(r.ino)?;
    let key = key2(r.ino, &r.name);
    let exists = t.get(Cf::Xattrs, &key)?.is_some();
    if r.flags & XATTR_CREATE != 0 && exists {
        return fs(libc::EEXIST, "xattr exists");
    }
    if r.flags & XATTR_REPLACE != 0 && !exists {
        return fs(libc::ENODATA, "no such xattr");
    }
    let name: &[u8] = &r.name;
    if name == acl::ACCESS || name == acl::DEFAULT {
        let Some(parsed) = acl::Acl::parse(&r.value) else {
            return fs(libc::EINVAL, "not a valid POSIX ACL");
        };
        if a.kind == FileKind::Symlink as i32 {
            return fs(libc::EOPNOTSUPP, "symlinks have no ACLs");
        }
        if name == acl::DEFAULT && !is_dir(&a) {
            return fs(libc::EACCES, "only directories have a default ACL");
        }
        if name == acl::ACCESS {
            // The ACL sets the mode bits; one that says no more than them is not kept.
            let (bits, extended) = parsed.mode();
            a.perm = (a.perm & !0o777) | bits;
            if let Some(c) = &r.acl_caller {
                if !c.privileged && !c.groups.contains(&a.gid) {
                    a.perm &= !S_ISGID;
                }
            }
            a.ctime = Some(*now);
            t.put_inode(&a);
            if extended {
                t.put(Cf::Xattrs, &key, r.value.to_vec());
            } else {
                t.delete(Cf::Xattrs, &key);
            }
            return Ok(Applied::Attr(a));
        }
    }
    t.put(Cf::Xattrs, &key, r.value.to_vec());
    a.ctime = Some(*now);
    t.put_inode(&a);
    Ok(Applied::Done)
}

fn removexattr(
    t: &mut Txn<'_>,
    r: &pb::RemoveXattrRequest,
    now: &Timespec,
) -> Result<Applied, MdsError> {
    check_xattr_name(&r.name)?;
    let mut a = t.inode(r.ino)?;
    if quota::is_quota_xattr(&r.name) {
        quota::set(t, a, &r.name, None, r.acl_caller.as_ref(), now)?;
        return Ok(Applied::Done);
    }
    if let Some((dir, field)) = layout::layout_xattr(&r.name) {
        // A directory's layout can be dropped (new files get the default); a file's cannot.
        layout_target(&a, dir, libc::ENODATA)?;
        if !dir || field.is_some() {
            return fs(libc::EINVAL, "a layout can be changed, not removed");
        }
        a.layout = Some(layout::default_layout());
        a.ctime = Some(*now);
        t.put_inode(&a);
        return Ok(Applied::Done);
    }
    let key = key2(r.ino, &r.name);
    if t.get(Cf::Xattrs, &key)?.is_none() {
        let name: &[u8] = &r.name;
        if name == acl::ACCESS || name == acl::DEFAULT {
            // Removing an ACL that is not there succeeds, as on local filesystems.
            return Ok(Applied::Done);
        }
        return fs(libc::ENODATA, "no such xattr");
    }
    t.delete(Cf::Xattrs, &key);
    a.ctime = Some(*now);
    t.put_inode(&a);
    Ok(Applied::Done)
}

fn purge(t: &mut Txn<'_>, ino: u64) -> Result<Applied, MdsError> {
    if t.get(Cf::Orphans, &be(ino))?.is_none() {
        return Ok(Applied::Done); // Already purged, or linked again: nothing to do.
    }
    let a = t.inode(ino)?;
    if a.nlink > 0 {
        t.delete(Cf::Orphans, &be(ino));
        return Ok(Applied::Done);
    }
    t.destroy_inode(ino)?;
    Ok(Applied::Done)
}

/// A boot always starts a new epoch: the OSD lost its in-memory PG state, so its PGs re-peer.
fn osd_boot(t: &mut Txn<'_>, r: &pb::OsdBootRequest) -> Result<Applied, MdsError> {
    let epoch = t.counter(KEY_OSD_EPOCH, 0)? + 1;
    let rec = OsdRecord {
        id: r.id,
        addr: r.addr.clone(),
        host: r.host.clone(),
        capacity_bytes: r.capacity_bytes,
        up: true,
        in_cluster: true,
        down_since: 0,
        up_from: epoch,
    };
    t.put(Cf::Osds, &r.id.to_be_bytes(), rec.encode_to_vec());
    t.set_counter(KEY_OSD_EPOCH, epoch);
    Ok(Applied::Epoch(epoch))
}

fn osd_record(t: &Txn<'_>, id: u32) -> Result<Option<OsdRecord>, MdsError> {
    t.get(Cf::Osds, &id.to_be_bytes())?
        .map(|v| {
            OsdRecord::decode(v.as_slice())
                .map_err(|e| MdsError::Corrupt(format!("osd record: {e}")))
        })
        .transpose()
}

fn set_osd_state(t: &mut Txn<'_>, r: &SetOsdState, now: &Timespec) -> Result<Applied, MdsError> {
    let Some(mut rec) = osd_record(t, r.id)? else {
        return fs(limits::libc_consts::ENOENT, format!("no osd.{}", r.id));
    };
    let mut epoch = t.counter(KEY_OSD_EPOCH, 0)?;
    if rec.up == r.up && rec.in_cluster == r.in_cluster {
        return Ok(Applied::Epoch(epoch));
    }
    if rec.up && !r.up {
        rec.down_since = now.sec;
    } else if r.up {
        rec.down_since = 0;
    }
    rec.up = r.up;
    rec.in_cluster = r.in_cluster;
    epoch += 1;
    t.put(Cf::Osds, &r.id.to_be_bytes(), rec.encode_to_vec());
    t.set_counter(KEY_OSD_EPOCH, epoch);
    Ok(Applied::Epoch(epoch))
}

fn set_pool(t: &mut Txn<'_>, p: &Pool) -> Result<Applied, MdsError> {
    let pgs_ok = (1..=shoal_proto::placement::MAX_PG_COUNT).contains(&p.pg_count);
    if p.size == 0 || p.min_size == 0 || p.min_size > p.size || !pgs_ok {
        return fs(
            limits::libc_consts::EINVAL,
            format!(
                "invalid pool: size {} min_size {} pg_count {}",
                p.size, p.min_size, p.pg_count
            ),
        );
    }
    let epoch = t.counter(KEY_OSD_EPOCH, 0)? + 1;
    t.put(Cf::Meta, KEY_POOL, p.encode_to_vec());
    t.set_counter(KEY_OSD_EPOCH, epoch);
    Ok(Applied::Epoch(epoch))
}

mod locks;
pub mod quota;

#[cfg(test)]
mod tests;
