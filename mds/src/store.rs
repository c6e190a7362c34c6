//! The MDS's one RocksDB database: the Raft log and hard state ([`RaftLog`]) and the state
//! machine's column families (see [`Cf`]).
//!
//! Invariants:
//! - Log entries and hard state are written with `sync` before the messages that depend on
//!   them leave the node (the ready loop orders this).
//! - Every state-machine apply is one `WriteBatch` that also records the applied index, so
//!   after a crash the state is exactly "everything up to applied", and Raft replays the rest.

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
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
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 10] = [
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

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
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
}

impl RaftLog {
    /// Loads the log's state from the database. A fresh database gets `voters` as its first
    /// configuration (a new cluster bootstraps; a restarted one keeps what it had).
    pub fn open(db: Db, voters: &[u64]) -> Result<RaftLog, MdsError> {
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
                b.put(
                    Cf::Raft,
                    KEY_CONF_STATE,
                    &cs.write_to_bytes().map_err(|e| corrupt("conf state", e))?,
                );
                b.commit(true)?;
                cs
            }
        };
        let (snap_index, snap_term) = match db.get(Cf::Raft, KEY_SNAPSHOT_META)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            ),
            Some(_) => return Err(MdsError::Corrupt("snapshot metadata length".into())),
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
                    last_index = u64::from_be_bytes(k[1..].try_into().expect("8 bytes"));
                }
            }
        }
        Ok(RaftLog {
            db,
            hard_state,
            conf_state,
            snap_index,
            snap_term,
            last_index,
        })
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

    /// Appends entries (truncating any conflicting suffix) and the hard state, durably.
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
                b.put(
                    Cf::Raft,
                    &entry_key(e.index),
                    &e.write_to_bytes().map_err(|e| corrupt("entry", e))?,
                );
            }
        }
        if let Some(hs) = hs {
            b.put(
                Cf::Raft,
                KEY_HARD_STATE,
                &hs.write_to_bytes().map_err(|e| corrupt("hard state", e))?,
            );
        }
        b.commit(true)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (raft requires it persisted no later than applying).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), MdsError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    /// Records a configuration applied from a conf change.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), MdsError> {
        let mut b = self.db.batch();
        b.put(
            Cf::Raft,
            KEY_CONF_STATE,
            &cs.write_to_bytes().map_err(|e| corrupt("conf state", e))?,
        );
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

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Log compaction and snapshot transfer arrive with the multi-node MDS; until then the
        // whole log is kept and no follower can fall behind it.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
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
            let mut log = RaftLog::open(db, &[1]).unwrap();
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
        let log = RaftLog::open(db, &[7]).unwrap();
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
}
