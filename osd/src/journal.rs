//! The OSD's write-ahead journal: small changes are made durable by one sequential append
//! shared by every change that arrives meanwhile (a group commit), instead of an fdatasync
//! of each object's file and directory.
//!
//! A journaled change is applied to the object's file first (unsynced: the page cache serves
//! reads at once), then appended here as a redo record; it is acknowledged once the group its
//! record went out in is fdatasync'd. Records go to segment files `journal/<seq>.log`; a
//! checkpoint starts a new segment, `syncfs`es the store's filesystem (every change in the
//! older segments was applied before it was appended, so all of it is then in the object
//! files) and deletes the older segments. At open, the store replays every record left, in
//! order: a record redoes its change whatever part of it reached the disk.
//!
//! Large writes and whole-object installs skip the journal (their data would be written
//! twice) and are synced in place. Before such a change to an object with records not yet
//! checkpointed, the store syncs the object's files and appends a `Synced` record for it, and
//! waits for that: a replay skips an object's records older than its last `Synced`, so it
//! never lays them over a newer change made in place.
//!
//! Record: magic `SJR1`, payload length (u32 LE), crc32 of the payload (u32 LE), payload:
//! kind (u8), version (u64 LE), name length (u16 LE), name, then by kind: a write's extent
//! count (u32 LE) and each extent's offset (u64 LE), length (u32 LE) and bytes; a truncate's
//! size (u64 LE); nothing for a delete, a removal or a `Synced`. A record that does not parse
//! or fails its crc ends its segment (a write a crash cut short: never acknowledged).
//!
//! Invariants:
//! - A change is acknowledged only after its record is fdatasync'd, in a segment whose
//!   directory entry was synced when the segment was made.
//! - Records of one object are appended in the order its changes were applied (callers hold
//!   the object's lock across both).
//! - A segment is deleted only after a `syncfs` that followed the application of all of its
//!   records.
//! - After an fdatasync of a segment fails, the journal refuses everything (the page cache's
//!   state is no longer known); a failed write only fails its group.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

const MAGIC: [u8; 4] = *b"SJR1";
const RECORD_HEAD: usize = 12;
/// A segment past this many bytes is closed after its next group, and checkpointed.
pub const SEGMENT_MAX: u64 = 64 << 20;
/// No record's payload is larger (the journal takes small changes only).
const PAYLOAD_MAX: usize = 16 << 20;
/// Failed groups remembered for their waiters.
const FAILED_KEPT: usize = 64;

const KIND_WRITE: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_REMOVE: u8 = 4;
const KIND_SYNCED: u8 = 5;

/// A change to journal, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Extents written in order.
    Write(&'a [(u64, &'a [u8])]),
    /// The object cut or grown to a size.
    Truncate(u64),
    /// The object deleted, leaving a tombstone at the record's version.
    Delete,
    /// The object forgotten, tombstone included.
    Remove,
    /// Every earlier change of the object is durable in its files.
    Synced,
}

/// A change read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Extents written in order.
    Write(Vec<(u64, Vec<u8>)>),
    /// The object cut or grown to a size.
    Truncate(u64),
    /// The object deleted at the record's version.
    Delete,
    /// The object forgotten.
    Remove,
    /// Earlier changes of the object are durable.
    Synced,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The object's name.
    pub object: String,
    /// The version the change stamped.
    pub version: u64,
    /// The change.
    pub change: Replayed,
}

/// A record's position in the journal: records are numbered from 0 as they are appended.
pub type Lsn = u64;

/// The journal of one object store.
pub struct Journal {
    dir: PathBuf,
    /// The store's root, whose filesystem a checkpoint syncs.
    root: File,
    inner: Mutex<Inner>,
    changed: Condvar,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

struct Inner {
    /// Records appended and not yet written.
    pending: Vec<u8>,
    /// The next record's number.
    next: Lsn,
    /// Every record numbered below this was written out (or failed: see `failed`).
    done: Lsn,
    /// A group is being written and synced.
    syncing: bool,
    /// The open segment, its number and length.
    seg: Arc<File>,
    seq: u64,
    len: u64,
    /// When the open segment got its first record.
    first_at: Option<Instant>,
    /// Closed segments not yet checkpointed, with the number past their last record.
    closed: Vec<(PathBuf, Lsn)>,
    /// Groups whose write failed: records `from..to` and the error.
    failed: VecDeque<(Lsn, Lsn, i32)>,
    /// An fdatasync failed: everything is refused.
    broken: Option<String>,
    /// Objects with records not yet checkpointed, with their last record's number.
    dirty: HashMap<String, Lsn>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends one encoded record to `out`.
fn encode(out: &mut Vec<u8>, object: &str, version: u64, change: Change<'_>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]);
    let body = out.len();
    let kind = match change {
        Change::Write(_) => KIND_WRITE,
        Change::Truncate(_) => KIND_TRUNCATE,
        Change::Delete => KIND_DELETE,
        Change::Remove => KIND_REMOVE,
        Change::Synced => KIND_SYNCED,
    };
    out.push(kind);
    out.extend_from_slice(&version.to_le_bytes());
    // Object names are a few dozen bytes (validated by the store before it journals).
    out.extend_from_slice(&(object.len() as u16).to_le_bytes());
    out.extend_from_slice(object.as_bytes());
    match change {
        Change::Write(extents) => {
            out.extend_from_slice(&(extents.len() as u32).to_le_bytes());
            for (offset, data) in extents {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
            }
        }
        Change::Truncate(size) => out.extend_from_slice(&size.to_le_bytes()),
        Change::Delete | Change::Remove | Change::Synced => {}
    }
    let len = (out.len() - body) as u32;
    let crc = crc32fast::hash(&out[body..]);
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Reads little-endian fields off the front of a payload.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Parses one record's payload (its crc already checked).
fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut f = Fields(payload);
    let kind = f.u8()?;
    let version = f.u64()?;
    let name_len = f.u16()? as usize;
    let object = String::from_utf8(f.take(name_len)?.to_vec()).ok()?;
    let change = match kind {
        KIND_WRITE => {
            let n = f.u32()? as usize;
            // Each extent takes at least 12 bytes: a count beyond that is damage.
            if n > f.0.len() / 12 {
                return None;
            }
            let mut extents = Vec::with_capacity(n);
            for _ in 0..n {
                let offset = f.u64()?;
                let len = f.u32()? as usize;
                extents.push((offset, f.take(len)?.to_vec()));
            }
            Replayed::Write(extents)
        }
        KIND_TRUNCATE => Replayed::Truncate(f.u64()?),
        KIND_DELETE => Replayed::Delete,
        KIND_REMOVE => Replayed::Remove,
        KIND_SYNCED => Replayed::Synced,
        _ => return None,
    };
    f.0.is_empty().then_some(Record {
        object,
        version,
        change,
    })
}

/// The records of one segment's bytes, up to the first that does not parse or fails its crc;
/// true if the segment ended there rather than at its end.
fn decode_segment(bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + RECORD_HEAD) else {
            return (out, true);
        };
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if head[..4] != MAGIC || len > PAYLOAD_MAX {
            return (out, true);
        }
        let Some(payload) = bytes.get(at + RECORD_HEAD..at + RECORD_HEAD + len) else {
            return (out, true);
        };
        if crc32fast::hash(payload) != crc {
            return (out, true);
        }
        match decode_payload(payload) {
            Some(r) => out.push(r),
            None => return (out, true),
        }
        at += RECORD_HEAD + len;
    }
    (out, false)
}

fn journal_error(broken: &str) -> io::Error {
    io::Error::other(format!(
        "the journal failed to sync ({broken}); restart the OSD"
    ))
}

impl Journal {
    /// Opens the journal under `dir` (made if missing) for the store rooted at `root`:
    /// returns it and the records the segments left hold, oldest first, for the store to
    /// replay before it takes changes. Those segments go at the first checkpoint.
    pub fn open(dir: &Path, root: &Path) -> io::Result<(Arc<Journal>, Vec<Record>)> {
        fs::create_dir_all(dir)?;
        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            segments.push((seq, e.path()));
        }
        segments.sort();
        let mut records = Vec::new();
        for (_, path) in &segments {
            let bytes = fs::read(path)?;
            let (found, cut) = decode_segment(&bytes);
            if cut {
                warn!(
                    segment = %path.display(),
                    records = found.len(),
                    "journal segment ends in a record a crash cut short; replaying up to it"
                );
            }
            records.extend(found);
        }
        let seq = segments.last().map_or(0, |(s, _)| s + 1);
        let seg = Self::make_segment(dir, seq)?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            root: File::open(root)?,
            inner: Mutex::new(Inner {
                pending: Vec::new(),
                next: 0,
                done: 0,
                syncing: false,
                seg: Arc::new(seg),
                seq,
                len: 0,
                first_at: None,
                closed: segments.into_iter().map(|(_, p)| (p, 0)).collect(),
                failed: VecDeque::new(),
                broken: None,
                dirty: HashMap::new(),
            }),
            changed: Condvar::new(),
            checkpointing: Mutex::new(()),
        };
        Ok((Arc::new(journal), records))
    }

    /// A new, empty segment whose name is durable.
    fn make_segment(dir: &Path, seq: u64) -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment_path(dir, seq))?;
        sync_dir(dir)?;
        Ok(f)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a record of `change` to `object` at `version`; [`Journal::wait`] for its
    /// number makes it durable. The caller applied the change already and holds the
    /// object's lock.
    pub fn append(&self, object: &str, version: u64, change: Change<'_>) -> io::Result<Lsn> {
        let mut g = self.lock();
        if let Some(b) = &g.broken {
            return Err(journal_error(b));
        }
        encode(&mut g.pending, object, version, change);
        let lsn = g.next;
        g.next += 1;
        g.first_at.get_or_insert_with(Instant::now);
        match g.dirty.get_mut(object) {
            Some(at) => *at = lsn,
            None => {
                g.dirty.insert(object.to_string(), lsn);
            }
        }
        Ok(lsn)
    }

    /// Returns once record `lsn` is durable: writes and syncs the pending group itself if no
    /// one else is (taking every record appended meanwhile along), else waits for that group.
    pub fn wait(&self, lsn: Lsn) -> io::Result<()> {
        let mut g = self.lock();
        loop {
            if lsn < g.done {
                return match g
                    .failed
                    .iter()
                    .find(|(from, to, _)| (*from..*to).contains(&lsn))
                {
                    Some(&(_, _, errno)) => Err(io::Error::from_raw_os_error(errno)),
                    None => Ok(()),
                };
            }
            if let Some(b) = &g.broken {
                return Err(journal_error(b));
            }
            if g.syncing {
                g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
            } else {
                g = self.write_group(g, false);
            }
        }
    }

    /// Writes and syncs every pending record as one group, then, if `close` or the segment is
    /// full, starts a new segment. Called with no group in progress.
    fn write_group<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
        close: bool,
    ) -> MutexGuard<'a, Inner> {
        g.syncing = true;
        let buf = std::mem::take(&mut g.pending);
        let (from, to) = (g.done, g.next);
        let (seg, at, seq) = (g.seg.clone(), g.len, g.seq);
        drop(g);
        let mut synced_failed = false;
        let result = if buf.is_empty() {
            Ok(())
        } else {
            seg.write_all_at(&buf, at)
                .and_then(|()| seg.sync_data().inspect_err(|_| synced_failed = true))
        };
        let written = at + buf.len() as u64;
        let next = (result.is_ok() && (close || written >= SEGMENT_MAX) && written > 0)
            .then(|| Self::make_segment(&self.dir, seq + 1));
        let mut g = self.lock();
        match &result {
            Ok(()) => g.len = written,
            Err(e) => {
                warn!(error = %e, records = to - from, "journal write failed");
                if synced_failed {
                    g.broken = Some(e.to_string());
                } else {
                    // Cut the partial group off, so the next one follows the last good record.
                    let _ = seg.set_len(at);
                }
                g.failed
                    .push_back((from, to, e.raw_os_error().unwrap_or(libc::EIO)));
                if g.failed.len() > FAILED_KEPT {
                    g.failed.pop_front();
                }
            }
        }
        g.done = to;
        match next {
            Some(Ok(file)) => {
                let old = segment_path(&self.dir, seq);
                g.closed.push((old, to));
                g.seg = Arc::new(file);
                g.seq = seq + 1;
                g.len = 0;
                g.first_at = (!g.pending.is_empty()).then(Instant::now);
            }
            Some(Err(e)) => {
                warn!(error = %e, "cannot start a journal segment; the open one goes on")
            }
            None => {}
        }
        if g.pending.is_empty() && buf.capacity() <= 4 * SEGMENT_MAX as usize / 64 {
            let mut buf = buf;
            buf.clear();
            g.pending = buf;
        }
        g.syncing = false;
        self.changed.notify_all();
        g
    }

    /// Whether `object` has records not yet checkpointed.
    pub fn is_dirty(&self, object: &str) -> bool {
        self.lock().dirty.contains_key(object)
    }

    /// `object`'s records no longer matter (a `Synced` for it is durable). The caller holds
    /// the object's lock.
    pub fn forget(&self, object: &str) {
        self.lock().dirty.remove(object);
    }

    /// Whether a checkpoint is due: a closed segment waits for one, or the open segment's
    /// first record is `every` old.
    pub fn due(&self, every: Duration) -> bool {
        let g = self.lock();
        !g.closed.is_empty() || g.first_at.is_some_and(|t| t.elapsed() >= every)
    }

    /// Closes the open segment (if it has records), syncs the store's filesystem, and deletes
    /// every closed segment: their records are all in the object files then.
    pub fn checkpoint(&self) -> io::Result<()> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = self.lock();
        while g.syncing {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(b) = &g.broken {
            return Err(journal_error(b));
        }
        if g.len > 0 || !g.pending.is_empty() {
            g = self.write_group(g, true);
        }
        let closed = std::mem::take(&mut g.closed);
        drop(g);
        if closed.is_empty() {
            return Ok(());
        }
        // SAFETY: syncfs takes a descriptor this struct owns and has no memory effects.
        if unsafe { libc::syncfs(self.root.as_raw_fd()) } != 0 {
            let e = io::Error::last_os_error();
            self.lock().closed.extend(closed);
            return Err(e);
        }
        let upto = closed.iter().map(|(_, lsn)| *lsn).max().unwrap_or(0);
        for (path, _) in &closed {
            match fs::remove_file(path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.lock().dirty.retain(|_, lsn| *lsn >= upto);
        Ok(())
    }

    /// Checkpoints in a thread of its own whenever one is due (see [`Journal::due`]),
    /// until the journal is dropped.
    pub fn checkpoint_every(journal: &Arc<Journal>, every: Duration) {
        let weak = Arc::downgrade(journal);
        let tick = every.min(Duration::from_millis(500));
        let spawned = std::thread::Builder::new()
            .name("osd-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(j) = weak.upgrade() else {
                    return;
                };
                if j.due(every) {
                    if let Err(e) = j.checkpoint() {
                        warn!(error = %e, "journal checkpoint failed; trying again");
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the checkpoint thread; checkpoints wait for full segments");
        }
    }

    /// Segment files present (tests).
    pub fn segments(&self) -> usize {
        fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                    .count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(object: &str, version: u64, change: Replayed) -> Record {
        Record {
            object: object.into(),
            version,
            change,
        }
    }

    #[test]
    fn records_read_back_as_written_and_a_torn_tail_ends_the_segment() {
        let mut buf = Vec::new();
        let ext: [(u64, &[u8]); 2] = [(0, b"hello"), (9000, b"")];
        encode(&mut buf, "a", 7, Change::Write(&ext));
        encode(&mut buf, "b", 8, Change::Truncate(123));
        encode(&mut buf, "c", 9, Change::Delete);
        encode(&mut buf, "d", 10, Change::Remove);
        encode(&mut buf, "e", 0, Change::Synced);
        let want = vec![
            rec(
                "a",
                7,
                Replayed::Write(vec![(0, b"hello".to_vec()), (9000, vec![])]),
            ),
            rec("b", 8, Replayed::Truncate(123)),
            rec("c", 9, Replayed::Delete),
            rec("d", 10, Replayed::Remove),
            rec("e", 0, Replayed::Synced),
        ];
        assert_eq!(decode_segment(&buf), (want.clone(), false));
        // Every cut inside the last record loses that record only.
        let whole = buf.len();
        let mut last = Vec::new();
        encode(&mut last, "f", 11, Change::Truncate(1));
        buf.extend_from_slice(&last);
        for cut in whole + 1..buf.len() {
            assert_eq!(
                decode_segment(&buf[..cut]),
                (want.clone(), true),
                "cut at {cut}"
            );
        }
        // A flipped byte anywhere in a record ends the segment before it.
        for i in whole..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode_segment(&bad), (want.clone(), true), "flip at {i}");
        }
        // Garbage lengths and counts are refused, never trusted to size anything.
        let mut huge = buf[..whole].to_vec();
        huge.extend_from_slice(&MAGIC);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(decode_segment(&huge), (want, true));
    }

    #[test]
    fn a_group_commit_makes_every_waiter_durable_and_checkpoints_drop_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (j, old) = Journal::open(&dir.path().join("journal"), dir.path()).unwrap();
        assert!(old.is_empty());
        let lsns: Vec<Lsn> = (0..10)
            .map(|i| j.append(&format!("o{i}"), i, Change::Truncate(i)).unwrap())
            .collect();
        assert!(j.is_dirty("o3"));
        // Waiting for the last makes all of them durable in one group.
        j.wait(lsns[9]).unwrap();
        for l in &lsns {
            j.wait(*l).unwrap();
        }
        drop(j);
        let (j, found) = Journal::open(&dir.path().join("journal"), dir.path()).unwrap();
        assert_eq!(found.len(), 10);
        assert_eq!(found[4], rec("o4", 4, Replayed::Truncate(4)));
        // The reopened journal has the old segment and its own; a checkpoint leaves its own.
        assert_eq!(j.segments(), 2);
        assert!(j.due(Duration::from_secs(3600)));
        j.checkpoint().unwrap();
        assert_eq!(j.segments(), 1);
        let l = j.append("x", 1, Change::Delete).unwrap();
        j.wait(l).unwrap();
        assert!(j.is_dirty("x"));
        j.checkpoint().unwrap();
        assert!(!j.is_dirty("x"));
        assert_eq!(j.segments(), 1);
        drop(j);
        let (_j, found) = Journal::open(&dir.path().join("journal"), dir.path()).unwrap();
        assert!(found.is_empty(), "checkpointed records are gone: {found:?}");
    }

    #[test]
    fn concurrent_writers_all_return_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("journal"), dir.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let data = [t as u8; 100];
                        let ext = [(i * 100, &data[..])];
                        let l = j.append(&format!("t{t}"), i, Change::Write(&ext)).unwrap();
                        j.wait(l).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(j);
        let (_j, found) = Journal::open(&dir.path().join("journal"), dir.path()).unwrap();
        assert_eq!(found.len(), 400);
        for t in 0..8u8 {
            let versions: Vec<u64> = found
                .iter()
                .filter(|r| r.object == format!("t{t}"))
                .map(|r| r.version)
                .collect();
            assert_eq!(versions, (0..50).collect::<Vec<_>>(), "writer {t} in order");
        }
    }
}
