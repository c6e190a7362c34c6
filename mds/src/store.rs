//! The MDS's one RocksDB database: the Raft log and hard state ([`RaftLog`]) and the state
//! machine's column families (see [`Cf`]).
//!
//! Invariants:
//! - Log entries and hard state are written with `sync` before the messages that depend on
//!   them leave the node (the ready loop orders this).
//! - Every state-machine apply is one `WriteBatch` that also records the applied index, so
//!   after a crash the state is exactly "everything up to applied", and Raft replays the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::error::MdsError;

/// A key and value read from RocksDB.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Column families of the MDS database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Raft log entries (`l` + index) and hard/conf state (`hs`, `cs`).
    Raft,
    /// Applied index, inode counter, file count.
    Meta,
    /// ino → `Attr`.
    Inodes,
    /// (parent ino, name) → (child ino, kind, cookie).
    Dentries,
    /// (parent ino, cookie) → (child ino, kind, name): readdir order with stable cookies.
    DirIndex,
    /// (ino, name) → value.
    Xattrs,
    /// ino → symlink target.
    Symlinks,
    /// ino → (): regular files with no links left whose data awaits deletion.
    Orphans,
    /// osd id → `OsdRecord`.
    Osds,
    /// client session → `SessionWindow`: replies its retries may still ask for.
    Sessions,
    /// (ino, session, owner, start) → `LockRecord`: byte-range locks held.
    Locks,
    /// evicted client session → `BlockEntry`: sessions the MDS and OSDs refuse.
    Blocklist,
    /// directory ino → `Quota`: its limits and what its tree uses.
    Quotas,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 13] = [
        Cf::Raft,
        Cf::Meta,
        Cf::Inodes,
        Cf::Dentries,
        Cf::DirIndex,
        Cf::Xattrs,
        Cf::Symlinks,
        Cf::Orphans,
        Cf::Osds,
        Cf::Sessions,
        Cf::Locks,
        Cf::Blocklist,
        Cf::Quotas,
    ];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Raft => "raft",
            Cf::Meta => "meta",
            Cf::Inodes => "inodes",
            Cf::Dentries => "dentries",
            Cf::DirIndex => "dir_index",
            Cf::Xattrs => "xattrs",
            Cf::Symlinks => "symlinks",
            Cf::Orphans => "orphans",
            Cf::Osds => "osds",
            Cf::Sessions => "sessions",
            Cf::Locks => "locks",
            Cf::Blocklist => "blocklist",
            Cf::Quotas => "quotas",
        }
    }
}

/// Shared handle to the database.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DB>,
}

impl Db {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Db, MdsError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Db {
            inner: Arc::new(db),
        })
    }

    /// Opens a checkpoint of the database read-only (to stream it to another member).
    pub fn open_read_only(dir: &Path) -> Result<Db, MdsError> {
        let opts = Options::default();
        let names = Cf::ALL.iter().map(|cf| cf.name());
        let db = DB::open_cf_for_read_only(&opts, dir, names, false)?;
        Ok(Db {
            inner: Arc::new(db),
        })
    }

    /// Makes a consistent copy of the whole database at `dir` (hard links where it can).
    pub fn checkpoint(&self, dir: &Path) -> Result<(), MdsError> {
        rocksdb::checkpoint::Checkpoint::new(&self.inner)?.create_checkpoint(dir)?;
        Ok(())
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every Cf is created at open, so the handle always exists.
        self.inner
            .cf_handle(cf.name())
            .expect("column family created at open")
    }

    /// Reads one key.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, MdsError> {
        Ok(self.inner.get_cf(self.cf(cf), key)?)
    }

    /// Iterates keys starting with `prefix`, from `start` (which must begin with `prefix`).
    pub fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, MdsError>> + '_ {
        let prefix = prefix.to_vec();
        self.inner
            .iterator_cf(
                self.cf(cf),
                rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
            )
            .map(|r| r.map_err(MdsError::from))
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
    }

    /// Starts a batch on this database.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            db: self,
            wb: WriteBatch::default(),
        }
    }
}

/// A `WriteBatch` bound to the database's column families.
pub struct Batch<'a> {
    db: &'a Db,
    wb: WriteBatch,
}

impl Batch<'_> {
    /// Sets a key.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.wb.put_cf(self.db.cf(cf), key, value);
    }

    /// Sets a key to an encoded protobuf message (`what` names it in an error).
    pub fn put_pb(
        &mut self,
        cf: Cf,
        key: &[u8],
        msg: &impl PbMessage,
        what: &str,
    ) -> Result<(), MdsError> {
        let v = msg.write_to_bytes().map_err(|e| corrupt(what, e))?;
        self.put(cf, key, &v);
        Ok(())
    }

    /// Deletes a key.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.wb.delete_cf(self.db.cf(cf), key);
    }

    /// Deletes keys in `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.wb.delete_range_cf(self.db.cf(cf), from, to);
    }

    /// Writes the batch atomically; with `sync` it is on disk when this returns.
    pub fn commit(self, sync: bool) -> Result<(), MdsError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.inner.write_opt(self.wb, &wo)?;
        Ok(())
    }
}

const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_CONF_STATE: &[u8] = b"cs";
const KEY_SNAPSHOT_META: &[u8] = b"snap";
/// Set while a received snapshot replaces the state: (file name, snapshot metadata).
const KEY_INSTALLING: &[u8] = b"installing";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The big-endian u64 at the start of `b`, if it is long enough.
fn be_u64(b: &[u8]) -> Option<u64> {
    b.first_chunk::<8>().map(|c| u64::from_be_bytes(*c))
}

fn snap_meta(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

fn encode_installing(name: &str, meta: &SnapshotMetadata) -> Result<Vec<u8>, MdsError> {
    let m = meta
        .write_to_bytes()
        .map_err(|e| corrupt("snapshot metadata", e))?;
    let mut v = Vec::with_capacity(4 + name.len() + m.len());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&m);
    Ok(v)
}

fn decode_installing(b: &[u8]) -> Result<(String, SnapshotMetadata), MdsError> {
    let bad = || MdsError::Corrupt("snapshot install marker".into());
    let len = b
        .first_chunk::<4>()
        .map(|l| u32::from_be_bytes(*l) as usize)
        .ok_or_else(bad)?;
    let name = b
        .get(4..4 + len)
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or_else(bad)?;
    let meta = SnapshotMetadata::parse_from_bytes(&b[4 + len..]).map_err(|_| bad())?;
    Ok((name.to_string(), meta))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> MdsError {
    MdsError::Corrupt(format!("{what}: {e}"))
}

/// The Raft log in RocksDB: raft-rs reads it through [`raft::Storage`]; the ready loop
/// appends to it. Owned by the `RawNode`; first/last index are cached.
pub struct RaftLog {
    db: Db,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into a snapshot (0, 0 when none).
    snap_index: u64,
    snap_term: u64,
    last_index: u64,
    /// Where snapshots being sent or received live.
    snap_dir: PathBuf,
}

impl RaftLog {
    /// Loads the log's state from the database. A fresh database gets `voters` as its first
    /// configuration (a new cluster bootstraps; a restarted one keeps what it had). A snapshot
    /// install that a crash interrupted is done again from its file in `snap_dir`; anything
    /// else left there is removed.
    pub fn open(db: Db, voters: &[u64], snap_dir: &Path) -> Result<RaftLog, MdsError> {
        let resume = match db.get(Cf::Raft, KEY_INSTALLING)? {
            Some(b) => Some(decode_installing(&b)?),
            None => None,
        };
        crate::snapshot::clean(snap_dir, resume.as_ref().map(|(n, _)| n.as_str()));
        let hard_state = match db.get(Cf::Raft, KEY_HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let conf_state = match db.get(Cf::Raft, KEY_CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?,
            None => {
                let cs = ConfState {
                    voters: voters.to_vec(),
                    ..Default::default()
                };
                let mut b = db.batch();
                b.put_pb(Cf::Raft, KEY_CONF_STATE, &cs, "conf state")?;
                b.commit(true)?;
                cs
            }
        };
        let (snap_index, snap_term) = match db.get(Cf::Raft, KEY_SNAPSHOT_META)? {
            Some(b) => match (b.len(), be_u64(&b), b.get(8..).and_then(be_u64)) {
                (16, Some(index), Some(term)) => (index, term),
                _ => return Err(MdsError::Corrupt("snapshot metadata length".into())),
            },
            None => (0, 0),
        };
        // The last entry is the highest `l` key.
        let mut last_index = snap_index;
        {
            let mut it = db.inner.iterator_cf(
                db.cf(Cf::Raft),
                rocksdb::IteratorMode::From(&entry_key(u64::MAX), rocksdb::Direction::Reverse),
            );
            if let Some(r) = it.next() {
                let (k, _) = r?;
                if k.len() == 9 && k[0] == b'l' {
                    last_index = be_u64(&k[1..]).unwrap_or(last_index);
                }
            }
        }
        let mut log = RaftLog {
            db,
            hard_state,
            conf_state,
            snap_index,
            snap_term,
            last_index,
            snap_dir: snap_dir.to_path_buf(),
        };
        if let Some((name, meta)) = resume {
            tracing::warn!(file = %name, index = meta.index, "finishing an interrupted snapshot install");
            log.restore_snapshot(&meta, &name)?;
        }
        Ok(log)
    }

    /// Index of the first entry still in the log (entries before it are in the state).
    pub fn first_entry_index(&self) -> u64 {
        self.snap_index + 1
    }

    /// Drops entries up to `to` (which must be applied): the state machine holds their effect.
    pub fn compact(&mut self, to: u64) -> Result<(), MdsError> {
        let to = to.min(self.last_index);
        if to <= self.snap_index {
            return Ok(());
        }
        let term = raft::Storage::term(self, to)
            .map_err(|e| MdsError::Corrupt(format!("term of entry {to}: {e}")))?;
        let mut b = self.db.batch();
        for i in self.snap_index + 1..=to {
            b.delete(Cf::Raft, &entry_key(i));
        }
        b.put(Cf::Raft, KEY_SNAPSHOT_META, &snap_meta(to, term));
        // Not synced: losing it keeps entries that are still valid.
        b.commit(false)?;
        self.snap_index = to;
        self.snap_term = term;
        Ok(())
    }

    /// Replaces the state and the log with received snapshot file `name`. Crash-safe: the
    /// `installing` marker is durable before the old state is touched, and cleared in the
    /// final synced batch.
    pub fn restore_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        name: &str,
    ) -> Result<(), MdsError> {
        let mut b = self.db.batch();
        b.put(Cf::Raft, KEY_INSTALLING, &encode_installing(name, meta)?);
        b.commit(true)?;
        crate::snapshot::load_state(&self.db, &self.snap_dir, name)?;
        let mut b = self.db.batch();
        let prefix = [b'l'];
        for kv in self.db.scan(Cf::Raft, &prefix, &prefix) {
            let (k, _) = kv?;
            b.delete(Cf::Raft, &k);
        }
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let cs = meta.get_conf_state().clone();
        b.put(
            Cf::Raft,
            KEY_SNAPSHOT_META,
            &snap_meta(meta.index, meta.term),
        );
        b.put_pb(Cf::Raft, KEY_HARD_STATE, &hs, "hard state")?;
        b.put_pb(Cf::Raft, KEY_CONF_STATE, &cs, "conf state")?;
        b.delete(Cf::Raft, KEY_INSTALLING);
        b.commit(true)?;
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.last_index = meta.index;
        self.hard_state = hs;
        self.conf_state = cs;
        crate::snapshot::remove_received(&self.snap_dir);
        Ok(())
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index of the last entry in the log.
    pub fn last_entry_index(&self) -> u64 {
        self.last_index
    }

    /// The current configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Appends entries (truncating any conflicting suffix) and the hard state; entries, term and
    /// vote durably.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), MdsError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut b = self.db.batch();
        if let Some(first) = entries.first() {
            if first.index <= self.last_index {
                b.delete_range(
                    Cf::Raft,
                    &entry_key(first.index),
                    &entry_key(self.last_index + 1),
                );
            }
            for e in entries {
                b.put_pb(Cf::Raft, &entry_key(e.index), e, "entry")?;
            }
        }
        if let Some(hs) = hs {
            b.put_pb(Cf::Raft, KEY_HARD_STATE, hs, "hard state")?;
        }
        // Entries, term and vote must be durable before any message depends on them. A hard
        // state whose only change is the commit index needs no sync (see `set_commit`): the
        // leader learns it again from a quorum, and the WAL keeps it ahead of what is applied.
        let vote_changed =
            hs.is_some_and(|h| h.term != self.hard_state.term || h.vote != self.hard_state.vote);
        b.commit(!entries.is_empty() || vote_changed)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (raft requires it persisted no later than applying). Not
    /// synced: the entries it covers are applied by later writes to the same RocksDB WAL, so
    /// whatever survives a crash, the commit index is never behind the applied index. Term
    /// and vote are synced by [`RaftLog::append`] before any message depends on them.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), MdsError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut b = self.db.batch();
        b.put_pb(Cf::Raft, KEY_HARD_STATE, &hs, "hard state")?;
        b.commit(false)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Records a configuration applied from a conf change.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), MdsError> {
        let mut b = self.db.batch();
        b.put_pb(Cf::Raft, KEY_CONF_STATE, &cs, "conf state")?;
        b.commit(true)?;
        self.conf_state = cs;
        Ok(())
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        let bytes = self
            .db
            .get(Cf::Raft, &entry_key(index))
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        Entry::parse_from_bytes(&bytes)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        for i in low..high {
            out.push(self.read_entry(i)?);
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// A snapshot of the state as applied now: a checkpoint the transport streams to `to`.
    /// Any failure is "temporarily unavailable" (raft-rs retries later; other errors are
    /// fatal to it).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let applied = crate::fsm::Fsm::new(self.db.clone())
            .applied_index()
            .map_err(|_| unavailable())?;
        if applied == 0 || applied < request_index {
            return Err(unavailable());
        }
        let term = self.term(applied).map_err(|_| unavailable())?;
        let name = crate::snapshot::checkpoint(&self.db, &self.snap_dir, applied).map_err(|e| {
            tracing::warn!(error = %e, to, "cannot make a snapshot checkpoint");
            unavailable()
        })?;
        let mut snap = Snapshot {
            data: crate::snapshot::Descriptor::Out(name).encode().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 3].into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let mut log = RaftLog::open(db, &[1], &dir.path().join("snap")).unwrap();
            assert_eq!(log.last_index().unwrap(), 0);
            log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
                .unwrap();
            let hs = HardState {
                term: 2,
                commit: 1,
                ..Default::default()
            };
            log.append(&[entry(2, 2)], Some(&hs)).unwrap();
            assert_eq!(log.last_index().unwrap(), 2);
        }
        let db = Db::open(dir.path()).unwrap();
        let log = RaftLog::open(db, &[7], &dir.path().join("snap")).unwrap();
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        assert_eq!(log.hard_state().term, 2);
        assert_eq!(
            log.conf_state().voters,
            vec![1],
            "bootstrap voters are kept"
        );
        assert!(log.term(3).is_err());
        let es = log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            es.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 2)]
        );
    }

    #[test]
    fn compaction_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        {
            let db = Db::open(dir.path()).unwrap();
            let mut log = RaftLog::open(db, &[1], &snap).unwrap();
            let es: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5)).collect();
            log.append(&es, None).unwrap();
            log.compact(6).unwrap();
            assert_eq!(log.first_index().unwrap(), 7);
            assert_eq!(
                log.term(6).unwrap(),
                2,
                "the compacted point keeps its term"
            );
            assert_eq!(
                log.term(5).unwrap_err(),
                raft::Error::Store(StorageError::Compacted)
            );
            assert!(log
                .entries(5, 8, None, GetEntriesContext::empty(false))
                .is_err());
            log.compact(3).unwrap();
            assert_eq!(log.first_index().unwrap(), 7, "compaction never goes back");
        }
        let db = Db::open(dir.path()).unwrap();
        let log = RaftLog::open(db.clone(), &[1], &snap).unwrap();
        assert_eq!(log.first_index().unwrap(), 7);
        assert_eq!(log.last_index().unwrap(), 10);
        assert_eq!(db.get(Cf::Raft, &entry_key(6)).unwrap(), None);
        let es = log
            .entries(7, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 4);
    }

    #[test]
    fn interrupted_snapshot_install_is_finished_at_open() {
        use crate::snapshot;
        let dir = tempfile::tempdir().unwrap();
        let src = Db::open(&dir.path().join("src")).unwrap();
        let mut b = src.batch();
        for i in 0..100u32 {
            b.put(Cf::Dentries, &i.to_be_bytes(), b"entry");
        }
        b.put(Cf::Meta, b"applied", &50u64.to_be_bytes());
        b.commit(true).unwrap();
        let snap = dir.path().join("dst-snap");
        let out = snapshot::checkpoint(&src, &snap, 50).unwrap();
        let mut inc = snapshot::Incoming::create(&snap).unwrap();
        let (records, crc) =
            snapshot::read_checkpoint(&snap, &out, |c| inc.write(&c).is_ok()).unwrap();
        let name = inc.finish(records, crc, 50, 3).unwrap();
        let mut meta = SnapshotMetadata {
            index: 50,
            term: 3,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        // Killed after the marker and half the state: opening finishes the job.
        let dst = Db::open(&dir.path().join("dst")).unwrap();
        let mut b = dst.batch();
        b.put(
            Cf::Raft,
            KEY_INSTALLING,
            &encode_installing(&name, &meta).unwrap(),
        );
        b.put(Cf::Dentries, b"half", b"written");
        b.commit(true).unwrap();
        let log = RaftLog::open(dst.clone(), &[1], &snap).unwrap();
        assert_eq!(log.first_index().unwrap(), 51);
        assert_eq!(log.term(50).unwrap(), 3);
        assert_eq!(log.hard_state().commit, 50);
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(dst.get(Cf::Raft, KEY_INSTALLING).unwrap(), None);
        assert_eq!(dst.get(Cf::Dentries, b"half").unwrap(), None);
        assert_eq!(
            snapshot::state_digest(&src).unwrap(),
            snapshot::state_digest(&dst).unwrap()
        );
        assert!(
            !snap.join(&name).exists(),
            "the received file is removed once installed"
        );
    }
}
