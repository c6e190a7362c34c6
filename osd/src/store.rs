//! The object store: one file per object on local disk, with its version and a crc32 per
//! 4 KiB block beside it.
//!
//! Layout under the OSD's data directory:
//! `objects/<shard>/<name>` holds the object's bytes; `objects/<shard>/<name>.crc` starts with
//! a 16-byte header (magic `SHC1`, flags, version) followed by one little-endian crc32 per
//! [`BLOCK`] of the object (the last block's crc covers only the bytes the object has).
//! A deleted object leaves a tombstone: a header with the deleted flag and no data file, so
//! peering can tell "deleted at version v" from "never had it". `<shard>` is two hex digits of
//! the name's hash, to keep directories small.
//!
//! Invariants:
//! - Every byte handed out was checked against its block's crc; a mismatch, or a crc file that
//!   does not cover the object, is [`StoreError::Corrupt`] (EIO, or a repair from a replica).
//! - A write, truncate, delete or install returns only after it is fdatasync'd.
//! - Operations on one object are serialized by a lock stripe, so a reader never sees a block
//!   whose data and crc are from different writes.
//! - The in-memory index holds every object's version, tombstones included, and the live
//!   objects of each file in object-number order; it is rebuilt from the headers at open.
//!
//! A crash between the data write and the crc write leaves the touched blocks unreadable (EIO),
//! never silently old or new; the copy is then repaired from a replica.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use bytes::Bytes;
use shoal_proto::layout::{parse_object_name, MAX_OBJECT_SIZE};
use shoal_proto::placement::{object_pg, stable_hash};

/// Checksum granularity.
pub const BLOCK: u64 = 4096;
const HEADER: u64 = 16;
const MAGIC: [u8; 4] = *b"SHC1";
const FLAG_DELETED: u32 = 1;
const LOCK_STRIPES: usize = 256;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object name is not one Shoal produces.
    #[error("invalid object name {0:?}")]
    BadName(String),
    /// The request reaches past the largest object Shoal makes.
    #[error("offset {offset} + {len} is past the largest object ({max} bytes)")]
    TooLarge {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Stored bytes do not match their checksum, or the checksums are missing.
    #[error("object {object}: {detail}")]
    Corrupt {
        /// Object name.
        object: String,
        /// What mismatched.
        detail: String,
    },
    /// The local filesystem failed.
    #[error("object {object}: {source}")]
    Io {
        /// Object name.
        object: String,
        /// The underlying error.
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// What the store knows of one object without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjMeta {
    /// Version of the last change (0: unknown, e.g. a damaged header).
    pub version: u64,
    /// A tombstone: deleted at `version`.
    pub deleted: bool,
    /// Bytes in the object.
    pub size: u64,
}

/// Counters the OSD reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Number of objects (tombstones not counted).
    pub objects: u64,
    /// Sum of object sizes.
    pub bytes: u64,
}

#[derive(Default)]
struct Index {
    objects: HashMap<String, ObjMeta>,
    /// Live objects by (inode, object number), with their sizes: a file's objects in order.
    by_file: BTreeMap<(u64, u64), u64>,
    live: u64,
    bytes: u64,
}

impl Index {
    fn set(&mut self, object: &str, meta: Option<ObjMeta>) {
        let old = match meta {
            Some(m) => self.objects.insert(object.to_string(), m),
            None => self.objects.remove(object),
        };
        let key = parse_object_name(object);
        if let Some(o) = old.filter(|o| !o.deleted) {
            self.live = self.live.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(o.size);
            if let Some(k) = key {
                self.by_file.remove(&k);
            }
        }
        if let Some(n) = meta.filter(|n| !n.deleted) {
            self.live += 1;
            self.bytes += n.size;
            if let Some(k) = key {
                self.by_file.insert(k, n.size);
            }
        }
    }
}

/// Objects on one local directory.
pub struct ObjectStore {
    root: PathBuf,
    locks: Vec<RwLock<()>>,
    index: Mutex<Index>,
}

/// One object's two files and its lock stripe.
struct Paths {
    data: PathBuf,
    crc: PathBuf,
    stripe: usize,
}

fn crc_of_zeros(len: u64) -> u32 {
    const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    crc32fast::hash(&ZEROS[..len as usize])
}

fn header(version: u64, deleted: bool) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&(if deleted { FLAG_DELETED } else { 0 }).to_le_bytes());
    h[8..].copy_from_slice(&version.to_le_bytes());
    h
}

/// Parses a header: Some((version, deleted)) if it is one.
fn parse_header(h: &[u8]) -> Option<(u64, bool)> {
    if h.len() < HEADER as usize || h[..4] != MAGIC {
        return None;
    }
    let flags = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let version = u64::from_le_bytes(h[8..16].try_into().ok()?);
    Some((version, flags & FLAG_DELETED != 0))
}

/// The crc32s of `data` per block, as stored.
fn block_sums(data: &[u8]) -> Vec<u8> {
    data.chunks(BLOCK as usize)
        .flat_map(|c| crc32fast::hash(c).to_le_bytes())
        .collect()
}

fn rw() -> OpenOptions {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .clone()
}

impl ObjectStore {
    /// Opens (creating if needed) the store under `dir` and indexes what is there. Leftovers
    /// of an install a crash interrupted are removed.
    pub fn open(dir: &Path) -> io::Result<ObjectStore> {
        let root = dir.join("objects");
        fs::create_dir_all(&root)?;
        let mut index = Index::default();
        for shard in fs::read_dir(&root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(shard.path())? {
                let e = e?;
                let file = e.file_name();
                let file = file.to_string_lossy();
                if file.ends_with(".tmp") {
                    fs::remove_file(e.path())?;
                    continue;
                }
                let Some(name) = file.strip_suffix(".crc") else {
                    continue;
                };
                if parse_object_name(name).is_none() {
                    continue;
                }
                let mut h = [0u8; HEADER as usize];
                let parsed = File::open(e.path())
                    .and_then(|f| f.read_exact_at(&mut h, 0))
                    .ok()
                    .and_then(|_| parse_header(&h));
                let data = shard.path().join(name);
                let size = fs::metadata(&data).map(|m| m.len()).ok();
                let meta = match parsed {
                    Some((version, true)) => {
                        // A delete that crashed before removing the data file.
                        if size.is_some() {
                            fs::remove_file(&data)?;
                        }
                        ObjMeta {
                            version,
                            deleted: true,
                            size: 0,
                        }
                    }
                    // A damaged header: version 0 makes every other copy newer.
                    Some((_, false)) | None if size.is_some() => ObjMeta {
                        version: parsed.map_or(0, |p| p.0),
                        deleted: false,
                        size: size.unwrap_or(0),
                    },
                    _ => continue,
                };
                index.set(name, Some(meta));
            }
        }
        Ok(ObjectStore {
            root,
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current object count and bytes.
    pub fn usage(&self) -> Usage {
        let i = self.index();
        Usage {
            objects: i.live,
            bytes: i.bytes,
        }
    }

    /// The directory objects live under (for capacity queries).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The object's version, tombstone flag and size, if the store has it.
    pub fn meta(&self, object: &str) -> Option<ObjMeta> {
        self.index().objects.get(object).copied()
    }

    /// Live objects of inode `ino` numbered `from` or more, ascending, at most `limit`, with
    /// their sizes.
    pub fn file_objects(&self, ino: u64, from: u64, limit: usize) -> Vec<(u64, u64)> {
        self.index()
            .by_file
            .range((ino, from)..=(ino, u64::MAX))
            .take(limit)
            .map(|(&(_, objno), &size)| (objno, size))
            .collect()
    }

    /// Every object (tombstones included) whose PG, at `pg_count` PGs, is in `pgs`.
    pub fn list(&self, pgs: &HashSet<u32>, pg_count: u32) -> Vec<(String, u32, ObjMeta)> {
        self.index()
            .objects
            .iter()
            .filter_map(|(name, m)| {
                let pg = object_pg(name, pg_count);
                pgs.contains(&pg).then(|| (name.clone(), pg, *m))
            })
            .collect()
    }

    /// Live objects per PG, at `pg_count` PGs.
    pub fn count_by_pg(&self, pg_count: u32) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        for (name, m) in self.index().objects.iter() {
            if !m.deleted {
                *out.entry(object_pg(name, pg_count)).or_default() += 1;
            }
        }
        out
    }

    fn paths(&self, object: &str) -> Result<Paths> {
        if parse_object_name(object).is_none() {
            return Err(StoreError::BadName(object.to_string()));
        }
        let h = stable_hash(object.as_bytes());
        let dir = self.root.join(format!("{:02x}", h & 0xff));
        Ok(Paths {
            data: dir.join(object),
            crc: dir.join(format!("{object}.crc")),
            stripe: (h >> 8) as usize % LOCK_STRIPES,
        })
    }

    fn io_err(object: &str) -> impl Fn(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            object: object.to_string(),
            source,
        }
    }

    fn corrupt(object: &str, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            object: object.to_string(),
            detail: detail.into(),
        }
    }

    fn check_range(offset: u64, len: u64) -> Result<()> {
        let max = MAX_OBJECT_SIZE as u64;
        if offset.checked_add(len).is_none_or(|end| end > max) {
            return Err(StoreError::TooLarge { offset, len, max });
        }
        Ok(())
    }

    fn write_lock(&self, stripe: usize) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.locks[stripe]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Opens an object's files for a change: (data, crcs, old size). A tombstone or a missing
    /// object opens as empty.
    fn open_rw(&self, object: &str, p: &Paths) -> Result<(File, File, u64)> {
        let io = Self::io_err(object);
        if let Some(dir) = p.data.parent() {
            fs::create_dir_all(dir).map_err(&io)?;
        }
        let file = rw().open(&p.data).map_err(&io)?;
        let crcs = rw().open(&p.crc).map_err(&io)?;
        let old_size = file.metadata().map_err(&io)?.len();
        let crc_len = crcs.metadata().map_err(&io)?.len();
        if crc_len == 0 && old_size > 0 {
            return Err(Self::corrupt(object, "checksum file missing"));
        }
        if crc_len > 0 {
            let mut h = [0u8; HEADER as usize];
            crcs.read_exact_at(&mut h, 0).map_err(&io)?;
            match parse_header(&h) {
                Some((_, true)) => {
                    crcs.set_len(HEADER).map_err(&io)?;
                    file.set_len(0).map_err(&io)?;
                    return Ok((file, crcs, 0));
                }
                Some(_) => {}
                None => return Err(Self::corrupt(object, "bad checksum header")),
            }
        }
        Ok((file, crcs, old_size))
    }

    /// Writes `data` at `offset`, zero-filling any gap, and stamps `version`; returns the
    /// object's new size.
    pub fn write(&self, object: &str, offset: u64, data: &[u8], version: u64) -> Result<u64> {
        self.write_extents(object, &[(offset, data)], version)
    }

    /// Writes each extent in order (a later one wins where they overlap), zero-filling any
    /// gap, as one change: one `version` and one sync for all; returns the object's new size.
    pub fn write_extents(
        &self,
        object: &str,
        extents: &[(u64, &[u8])],
        version: u64,
    ) -> Result<u64> {
        for (offset, data) in extents {
            Self::check_range(*offset, data.len() as u64)?;
        }
        let p = self.paths(object)?;
        let _guard = self.write_lock(p.stripe);
        let (file, crcs, mut size) = self.open_rw(object, &p)?;
        for (offset, data) in extents {
            size = self.put(object, &file, &crcs, size, *offset, data)?;
        }
        self.seal(object, &file, &crcs, version, size)?;
        Ok(size)
    }

    /// Writes `data` at `offset` of an object of `old_size` bytes with its checksums, unsynced;
    /// returns the new size.
    fn put(
        &self,
        object: &str,
        file: &File,
        crcs: &File,
        old_size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        if data.is_empty() {
            return Ok(old_size);
        }
        let io = Self::io_err(object);
        let end = offset + data.len() as u64;
        let new_size = old_size.max(end);
        let first = offset.min(old_size) / BLOCK;
        let last = (end - 1) / BLOCK;
        let mut sums = Vec::with_capacity((last - first + 1) as usize * 4);
        for b in first..=last {
            let (bs, be) = (b * BLOCK, ((b + 1) * BLOCK).min(new_size));
            let crc = if bs >= offset && be <= end {
                // Wholly overwritten: checksum the caller's bytes in place.
                crc32fast::hash(&data[(bs - offset) as usize..(be - offset) as usize])
            } else if bs >= old_size && (be <= offset || bs >= end) {
                crc_of_zeros(be - bs)
            } else {
                // Partly kept: merge the verified old bytes with the new ones.
                let mut block = vec![0u8; (be - bs) as usize];
                if bs < old_size {
                    let old = self.read_verified(object, file, crcs, b, old_size)?;
                    block[..old.len()].copy_from_slice(&old);
                }
                let (ws, we) = (offset.max(bs), end.min(be));
                if ws < we {
                    block[(ws - bs) as usize..(we - bs) as usize]
                        .copy_from_slice(&data[(ws - offset) as usize..(we - offset) as usize]);
                }
                crc32fast::hash(&block)
            };
            sums.extend_from_slice(&crc.to_le_bytes());
        }
        file.write_all_at(data, offset).map_err(&io)?;
        crcs.write_all_at(&sums, HEADER + first * 4).map_err(&io)?;
        Ok(new_size)
    }

    /// Finishes a change in place: stamps the version, syncs data and checksums, and records
    /// the object's new state in the index.
    fn seal(&self, object: &str, file: &File, crcs: &File, version: u64, size: u64) -> Result<()> {
        let io = Self::io_err(object);
        crcs.write_all_at(&header(version, false), 0).map_err(&io)?;
        sync_both(file, crcs).map_err(&io)?;
        self.index().set(
            object,
            Some(ObjMeta {
                version,
                deleted: false,
                size,
            }),
        );
        Ok(())
    }

    /// Reads block `b` of an object whose size is `size` and checks it against its crc.
    fn read_verified(
        &self,
        object: &str,
        file: &File,
        crcs: &File,
        b: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let bs = b * BLOCK;
        let len = (BLOCK).min(size - bs) as usize;
        let mut block = vec![0u8; len];
        self.read_blocks(object, file, crcs, b, &mut block)?;
        Ok(block)
    }

    /// Fills `buf` from the object starting at block `first` and verifies every block in it.
    /// `buf` ends at a block boundary or at the object's end.
    fn read_blocks(
        &self,
        object: &str,
        file: &File,
        crcs: &File,
        first: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let io = Self::io_err(object);
        file.read_exact_at(buf, first * BLOCK)
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => Self::corrupt(object, "object shorter than expected"),
                _ => io(e),
            })?;
        let nblocks = buf.len().div_ceil(BLOCK as usize);
        let mut sums = vec![0u8; nblocks * 4];
        crcs.read_exact_at(&mut sums, HEADER + first * 4)
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => Self::corrupt(object, "checksums missing"),
                _ => io(e),
            })?;
        for (i, (chunk, sum)) in buf
            .chunks(BLOCK as usize)
            .zip(sums.chunks_exact(4))
            .enumerate()
        {
            let want = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
            let got = crc32fast::hash(chunk);
            if want != got {
                return Err(Self::corrupt(
                    object,
                    format!(
                        "checksum mismatch in block {} (stored {want:08x}, computed {got:08x})",
                        first + i as u64
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Opens an object for reading: None if it does not exist or is a tombstone.
    fn open_read(&self, object: &str, p: &Paths) -> Result<Option<(File, File, u64)>> {
        let io = Self::io_err(object);
        let file = match File::open(&p.data) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let crcs = match File::open(&p.crc) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Self::corrupt(object, "checksum file missing"))
            }
            Err(e) => return Err(io(e)),
        };
        let mut h = [0u8; HEADER as usize];
        crcs.read_exact_at(&mut h, 0)
            .map_err(|_| Self::corrupt(object, "checksum header missing"))?;
        match parse_header(&h) {
            None => return Err(Self::corrupt(object, "bad checksum header")),
            Some((_, true)) => return Ok(None),
            Some(_) => {}
        }
        let size = file.metadata().map_err(&io)?.len();
        // No write makes an object this large: a damaged file must not size a buffer.
        if size > MAX_OBJECT_SIZE as u64 {
            return Err(Self::corrupt(object, "larger than any object can be"));
        }
        Ok(Some((file, crcs, size)))
    }

    /// Reads up to `len` bytes at `offset`. `None` if the object does not exist; shorter than
    /// `len` where the object ends.
    pub fn read(&self, object: &str, offset: u64, len: u64) -> Result<Option<Bytes>> {
        Self::check_range(offset, len)?;
        let p = self.paths(object)?;
        let _guard = self.locks[p.stripe]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        self.read_locked(object, &p, offset, len)
    }

    /// [`ObjectStore::read`] unless a change holds the object's lock (it may be syncing):
    /// then None, without waiting. For callers that must not block long.
    pub fn try_read(&self, object: &str, offset: u64, len: u64) -> Option<Result<Option<Bytes>>> {
        if let Err(e) = Self::check_range(offset, len) {
            return Some(Err(e));
        }
        let p = match self.paths(object) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let _guard = match self.locks[p.stripe].try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(g)) => g.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.read_locked(object, &p, offset, len))
    }

    fn read_locked(&self, object: &str, p: &Paths, offset: u64, len: u64) -> Result<Option<Bytes>> {
        let Some((file, crcs, size)) = self.open_read(object, p)? else {
            return Ok(None);
        };
        let end = (offset + len).min(size);
        if offset >= end {
            return Ok(Some(Bytes::new()));
        }
        let first = offset / BLOCK;
        let aligned_end = end.div_ceil(BLOCK) * BLOCK;
        let mut buf = vec![0u8; (aligned_end.min(size) - first * BLOCK) as usize];
        self.read_blocks(object, &file, &crcs, first, &mut buf)?;
        let skip = (offset - first * BLOCK) as usize;
        Ok(Some(
            Bytes::from(buf).slice(skip..skip + (end - offset) as usize),
        ))
    }

    /// The whole object, verified, with its metadata: what recovery copies. `None` if the
    /// store has neither the object nor its tombstone.
    pub fn read_copy(&self, object: &str) -> Result<Option<(ObjMeta, Bytes)>> {
        let Some(meta) = self.meta(object) else {
            return Ok(None);
        };
        if meta.deleted {
            return Ok(Some((meta, Bytes::new())));
        }
        let p = self.paths(object)?;
        let _guard = self.locks[p.stripe]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        // Re-read the version under the lock: the index may have moved on.
        let meta = self.meta(object).unwrap_or(meta);
        let Some((file, crcs, size)) = self.open_read(object, &p)? else {
            return Ok(Some((meta, Bytes::new())));
        };
        let mut buf = vec![0u8; size as usize];
        if size > 0 {
            self.read_blocks(object, &file, &crcs, 0, &mut buf)?;
        }
        Ok(Some((ObjMeta { size, ..meta }, Bytes::from(buf))))
    }

    /// Sets the object's size, dropping or zero-filling its tail, and stamps `version`.
    /// Creates it if missing.
    pub fn truncate(&self, object: &str, size: u64, version: u64) -> Result<()> {
        Self::check_range(size, 0)?;
        let p = self.paths(object)?;
        let _guard = self.write_lock(p.stripe);
        let io = Self::io_err(object);
        let (file, crcs, old_size) = self.open_rw(object, &p)?;
        let mut sums = Vec::new();
        let first;
        if size < old_size {
            // The new last block keeps a prefix of a verified old block.
            first = size / BLOCK;
            if !size.is_multiple_of(BLOCK) {
                let old = self.read_verified(object, &file, &crcs, first, old_size)?;
                sums.extend_from_slice(
                    &crc32fast::hash(&old[..(size % BLOCK) as usize]).to_le_bytes(),
                );
            }
        } else {
            // The old last block grows with zeros; new blocks are zeros.
            first = old_size / BLOCK;
            let mut b = first;
            if old_size % BLOCK != 0 {
                // A partial last block: rechecksummed when it grows, kept when the size stays.
                if size > old_size {
                    let mut block = self.read_verified(object, &file, &crcs, b, old_size)?;
                    block.resize((BLOCK).min(size - b * BLOCK) as usize, 0);
                    sums.extend_from_slice(&crc32fast::hash(&block).to_le_bytes());
                }
                b += 1;
            }
            while b * BLOCK < size {
                let len = BLOCK.min(size - b * BLOCK);
                sums.extend_from_slice(&crc_of_zeros(len).to_le_bytes());
                b += 1;
            }
        }
        file.set_len(size).map_err(&io)?;
        crcs.write_all_at(&sums, HEADER + first * 4).map_err(&io)?;
        crcs.set_len(HEADER + size.div_ceil(BLOCK) * 4)
            .map_err(&io)?;
        self.seal(object, &file, &crcs, version, size)
    }

    /// Deletes the object, leaving a tombstone at `version`.
    pub fn delete(&self, object: &str, version: u64) -> Result<()> {
        self.install(
            object,
            ObjMeta {
                version,
                deleted: true,
                size: 0,
            },
            &[],
        )
    }

    /// Replaces the object with `data` at `meta.version` (or a tombstone when `meta.deleted`),
    /// whatever the store held: how recovery and repair bring a copy up to date. New files
    /// are written beside the old ones, synced, then renamed over them.
    pub fn install(&self, object: &str, meta: ObjMeta, data: &[u8]) -> Result<()> {
        Self::check_range(0, data.len() as u64)?;
        let p = self.paths(object)?;
        let _guard = self.write_lock(p.stripe);
        let io = Self::io_err(object);
        let dir = p.data.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(&io)?;
        let tmp = |path: &Path| {
            let mut s = path.as_os_str().to_owned();
            s.push(".tmp");
            PathBuf::from(s)
        };
        let crc_tmp = tmp(&p.crc);
        {
            let crcs = File::create(&crc_tmp).map_err(&io)?;
            crcs.write_all_at(&header(meta.version, meta.deleted), 0)
                .map_err(&io)?;
            if !meta.deleted {
                crcs.write_all_at(&block_sums(data), HEADER).map_err(&io)?;
            }
            crcs.sync_data().map_err(&io)?;
        }
        if meta.deleted {
            // The tombstone lands first; a crash before the data file goes is cleaned at open.
            fs::rename(&crc_tmp, &p.crc).map_err(&io)?;
            match fs::remove_file(&p.data) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        } else {
            let data_tmp = tmp(&p.data);
            let file = File::create(&data_tmp).map_err(&io)?;
            file.write_all_at(data, 0).map_err(&io)?;
            file.sync_data().map_err(&io)?;
            fs::rename(&data_tmp, &p.data).map_err(&io)?;
            fs::rename(&crc_tmp, &p.crc).map_err(&io)?;
        }
        File::open(&dir).and_then(|d| d.sync_all()).map_err(&io)?;
        self.index().set(
            object,
            Some(ObjMeta {
                size: if meta.deleted { 0 } else { data.len() as u64 },
                ..meta
            }),
        );
        Ok(())
    }

    /// Forgets the object entirely, tombstone included (a stray copy, or a tombstone every
    /// replica has).
    pub fn remove(&self, object: &str) -> Result<()> {
        let p = self.paths(object)?;
        let _guard = self.write_lock(p.stripe);
        let io = Self::io_err(object);
        for path in [&p.crc, &p.data] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        self.index().set(object, None);
        Ok(())
    }

    /// When this copy of an object last changed (its data file's mtime); `None` if it has no
    /// data file or the name is not an object's.
    pub fn changed_at(&self, object: &str) -> Option<std::time::SystemTime> {
        let path = self.paths(object).ok()?.data;
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    /// Where an object's data file lives (tests use it to damage objects on purpose).
    pub fn data_path(&self, object: &str) -> Result<PathBuf> {
        Ok(self.paths(object)?.data)
    }
}

/// fdatasyncs both files at once, the second from a scoped thread: the filesystem then
/// commits both in one journal transaction where it can, instead of one after the other.
fn sync_both(a: &File, b: &File) -> std::io::Result<()> {
    std::thread::scope(|s| {
        // Without a thread (none to be had), one after the other.
        let Ok(other) = std::thread::Builder::new().spawn_scoped(s, || b.sync_data()) else {
            return a.sync_data().and_then(|()| b.sync_data());
        };
        let first = a.sync_data();
        let second = other
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("sync thread panicked")));
        first.and(second)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn name(n: u64) -> String {
        shoal_proto::layout::object_name(7, n)
    }

    #[test]
    fn random_writes_and_truncates_match_a_reference() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(0);
        let mut reference: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for step in 0..300 {
            if step % 17 == 16 {
                let size = rng.gen_range(0..200_000u64);
                store.truncate(&obj, size, step).unwrap();
                reference.resize(size as usize, 0);
            } else {
                let off = rng.gen_range(0..150_000u64);
                let len = rng.gen_range(0..20_000usize);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let size = store.write(&obj, off, &data, step).unwrap();
                let end = off as usize + len;
                if len > 0 && reference.len() < end {
                    reference.resize(end, 0);
                }
                reference[off as usize..off as usize + len].copy_from_slice(&data);
                assert_eq!(size, reference.len() as u64);
            }
            let off = rng.gen_range(0..210_000u64);
            let len = rng.gen_range(0..50_000u64);
            let got = store.read(&obj, off, len).unwrap().unwrap();
            let want = reference
                .get(off as usize..(off + len).min(reference.len() as u64) as usize)
                .unwrap_or(&[]);
            assert_eq!(&got[..], want, "step {step}");
        }
        let all = store.read(&obj, 0, 1 << 20).unwrap().unwrap();
        assert_eq!(&all[..], &reference[..]);
        assert_eq!(store.usage().bytes, reference.len() as u64);
    }

    #[test]
    fn several_extents_are_one_change_in_order_and_a_bad_one_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(1);
        let mut reference: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for step in 1..60u64 {
            let count = rng.gen_range(1..20);
            let mut bufs = Vec::new();
            for _ in 0..count {
                // Overlapping, unaligned and block-sized pieces, in any order.
                let off = rng.gen_range(0..300_000u64);
                let len = if rng.gen_bool(0.5) {
                    4096
                } else {
                    rng.gen_range(0..9000)
                };
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                bufs.push((off, data));
            }
            let extents: Vec<(u64, &[u8])> = bufs.iter().map(|(o, d)| (*o, &d[..])).collect();
            let size = store.write_extents(&obj, &extents, step).unwrap();
            for (off, data) in &bufs {
                let end = *off as usize + data.len();
                if !data.is_empty() && reference.len() < end {
                    reference.resize(end, 0);
                }
                reference[*off as usize..end].copy_from_slice(data);
            }
            assert_eq!(size, reference.len() as u64, "step {step}");
            assert_eq!(store.meta(&obj).unwrap().version, step);
        }
        let all = store.read(&obj, 0, 1 << 20).unwrap().unwrap();
        assert_eq!(&all[..], &reference[..]);
        // A piece past the object limit refuses the whole change before writing any of it.
        let max = MAX_OBJECT_SIZE as u64;
        let bad = store.write_extents(&obj, &[(0, &[9u8; 10][..]), (max, &[1u8][..])], 99);
        assert!(matches!(bad, Err(StoreError::TooLarge { .. })), "{bad:?}");
        assert_eq!(
            &store.read(&obj, 0, 1 << 20).unwrap().unwrap()[..],
            &reference[..]
        );
        assert_eq!(store.meta(&obj).unwrap().version, 59);
    }

    #[test]
    fn try_read_reads_like_read_and_never_waits_for_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(3);
        store.write(&obj, 100, b"hello", 1).unwrap();
        let got = store.try_read(&obj, 98, 10).unwrap().unwrap().unwrap();
        assert_eq!(&got[..], b"\0\0hello");
        assert!(store.try_read(&name(4), 0, 10).unwrap().unwrap().is_none());
        assert!(store.try_read("bad name", 0, 10).unwrap().is_err());
        let stripe = store.paths(&obj).unwrap().stripe;
        let held = store.write_lock(stripe);
        assert!(
            store.try_read(&obj, 0, 10).is_none(),
            "a change holds the object"
        );
        drop(held);
        assert!(store.try_read(&obj, 0, 10).is_some());
    }

    #[test]
    fn truncating_to_the_same_unaligned_size_keeps_the_data_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(2);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 13) as u8 + 1).collect();
        store.write(&obj, 0, &data, 1).unwrap();
        store.truncate(&obj, 10_000, 2).unwrap();
        assert_eq!(
            &store.read(&obj, 0, 20_000).unwrap().unwrap()[..],
            &data[..]
        );
        assert_eq!(store.meta(&obj).unwrap().version, 2);
    }

    #[test]
    fn a_flipped_byte_is_an_error_never_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(1);
        let data = vec![0x5au8; 3 * BLOCK as usize + 100];
        store.write(&obj, 0, &data, 1).unwrap();
        let path = store.data_path(&obj).unwrap();
        let mut raw = fs::read(&path).unwrap();
        raw[BLOCK as usize + 7] ^= 0x01;
        fs::write(&path, &raw).unwrap();
        // Untouched blocks still read; any read covering block 1 fails.
        assert_eq!(
            store.read(&obj, 0, BLOCK).unwrap().unwrap().len(),
            BLOCK as usize
        );
        assert!(matches!(
            store.read(&obj, BLOCK + 10, 5),
            Err(StoreError::Corrupt { .. })
        ));
        // A partial overwrite must not launder the bad block into a valid checksum.
        assert!(matches!(
            store.write(&obj, BLOCK + 1, b"x", 2),
            Err(StoreError::Corrupt { .. })
        ));
        // A full overwrite of the block repairs it.
        store
            .write(&obj, BLOCK, &vec![1u8; BLOCK as usize], 3)
            .unwrap();
        assert_eq!(store.read(&obj, BLOCK, 1).unwrap().unwrap()[0], 1);
    }

    #[test]
    fn missing_objects_bad_names_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        assert!(store.read(&name(2), 0, 10).unwrap().is_none());
        assert!(matches!(
            store.read("../etc/passwd", 0, 1),
            Err(StoreError::BadName(_))
        ));
        assert!(matches!(
            store.write(&name(2), MAX_OBJECT_SIZE as u64, b"a", 1),
            Err(StoreError::TooLarge { .. })
        ));
        store.delete(&name(2), 1).unwrap();
        store.write(&name(3), 10, b"abc", 1).unwrap();
        let reopened = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.usage(),
            Usage {
                objects: 1,
                bytes: 13
            }
        );
        reopened.delete(&name(3), 2).unwrap();
        assert_eq!(
            reopened.usage(),
            Usage {
                objects: 0,
                bytes: 0
            }
        );
    }

    #[test]
    fn versions_tombstones_and_installs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let (a, b) = (name(10), name(11));
        store.write(&a, 0, b"hello", 5).unwrap();
        store.truncate(&a, 3, 6).unwrap();
        store.write(&b, 0, b"gone soon", 1).unwrap();
        store.delete(&b, 2).unwrap();
        assert!(store.read(&b, 0, 10).unwrap().is_none());
        let data = vec![7u8; 10_000];
        let c = name(12);
        store
            .install(
                &c,
                ObjMeta {
                    version: 9,
                    deleted: false,
                    size: 0,
                },
                &data,
            )
            .unwrap();
        let reopened = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.meta(&a),
            Some(ObjMeta {
                version: 6,
                deleted: false,
                size: 3
            })
        );
        assert_eq!(
            reopened.meta(&b),
            Some(ObjMeta {
                version: 2,
                deleted: true,
                size: 0
            })
        );
        let (meta, copy) = reopened.read_copy(&c).unwrap().unwrap();
        assert_eq!((meta.version, &copy[..]), (9, &data[..]));
        assert_eq!(reopened.usage().objects, 2);
        let pgs: HashSet<u32> = (0..8).collect();
        assert_eq!(reopened.list(&pgs, 8).len(), 3);
        // A write after a delete brings the object back.
        reopened.write(&b, 2, b"x", 3).unwrap();
        assert_eq!(&reopened.read(&b, 0, 10).unwrap().unwrap()[..], b"\0\0x");
        reopened.remove(&b).unwrap();
        assert_eq!(reopened.meta(&b), None);
    }

    #[test]
    fn a_files_live_objects_are_listed_in_order_across_name_widths() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let far = 1u64 << 40; // a nine-digit and wider object number sorts after 0xffffffff
        for n in [far, 3, 0xffff_ffff, 1] {
            store.write(&name(n), 0, b"abc", 1).unwrap();
        }
        store
            .write(&shoal_proto::layout::object_name(8, 0), 0, b"other file", 1)
            .unwrap();
        store.delete(&name(3), 2).unwrap();
        let want = vec![(1, 3), (0xffff_ffff, 3), (far, 3)];
        assert_eq!(store.file_objects(7, 0, 100), want);
        assert_eq!(store.file_objects(7, 2, 1), vec![(0xffff_ffff, 3)]);
        // Rebuilt the same at open; tombstones are not listed.
        let reopened = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(reopened.file_objects(7, 0, 100), want);
        assert_eq!(reopened.file_objects(8, 0, 100), vec![(0, 10)]);
    }
}
