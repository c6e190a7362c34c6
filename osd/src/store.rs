//! The object store: one file per object on local disk, holding its version, a crc32 per
//! 4 KiB block and its bytes.
//!
//! Layout under the OSD's data directory: `objects/<shard>/<name>.obj` starts with a 16-byte
//! header (magic `SHO2`, flags, version), then one little-endian crc32 per [`BLOCK`] of the
//! object (the last block's crc covers only the bytes the object has), with room for the
//! largest object's; the object's bytes start at [`DATA`] (a sparse gap in between). The
//! object's size is the file's length less [`DATA`]. A deleted object leaves a tombstone
//! instead, `<name>.del`: a header with the deleted flag (in a block of its own; what the
//! object held past it is cut off in idle time), so peering can tell "deleted at version v"
//! from "never had it". Where a crash left both, the higher version is the
//! object's state and the other file goes at open. `<shard>` is two hex digits of the name's
//! hash, to keep directories small. One file per object means one create, one open and one
//! fdatasync per change. Stores of the earlier layout (`<name>` and `<name>.crc`) are
//! converted at open.
//!
//! Invariants:
//! - Every byte handed out was checked against its block's crc; a mismatch, or a header that
//!   is not one, is [`StoreError::Corrupt`] (EIO, or a repair from a replica).
//! - A write, truncate, delete or install returns only after it is durable: fdatasync'd in
//!   place, or its journal record fdatasync'd.
//! - Operations on one object are serialized by a lock stripe, so a reader never sees a block
//!   whose data and crc are from different writes.
//! - The in-memory index holds every object's version, tombstones included, and the live
//!   objects of each file in object-number order; it is rebuilt from the headers at open.
//! - Reads keep a few objects' files open (with their sizes) per lock stripe; every change
//!   empties its stripe's list under the write lock before it touches a file, so a kept file
//!   is never one a change since renamed, resized, retired or reused as a spare.
//!
//! A crash between the data write and the crc write leaves the touched blocks unreadable (EIO),
//! never silently old or new; the copy is then repaired from a replica.
//!
//! Durability: a small change (a write of less than [`DIRECT_MIN`] bytes, a truncate, a
//! delete) is applied to the object's files unsynced and made durable by its record in the
//! [`crate::journal`], one fdatasync shared by every change under way; a large write or an
//! install is synced in place (fdatasync of the file, and of its directory after a rename),
//! a large write's aligned extents written with direct I/O (no page-cache copy to write back).
//! Large reads are direct too; small ones go through the page cache.
//! Records left at open are replayed, so what was acknowledged is there whatever part of the
//! files a crash kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_proto::layout::{parse_object_name, MAX_OBJECT_SIZE};
use shoal_proto::placement::{object_pg, stable_hash};
use tracing::{info, warn};

use crate::journal::{Change, Journal, Lsn, Replayed};

/// Checksum granularity.
pub const BLOCK: u64 = 4096;
const HEADER: u64 = 16;
/// Where an object's bytes start in its file: past the header and the checksums of the
/// largest object, on a page boundary.
pub const DATA: u64 = (HEADER + MAX_OBJECT_SIZE as u64 / BLOCK * 4).div_ceil(4096) * 4096;
const MAGIC: [u8; 4] = *b"SHO2";
/// The earlier layout's checksum files (`<name>.crc`) start with this magic.
const OLD_MAGIC: [u8; 4] = *b"SHC1";
const FLAG_DELETED: u32 = 1;
const LOCK_STRIPES: usize = 256;
const SHARDS: u32 = 256;
/// Spare files kept at most (files of removed objects beyond it are deleted).
pub const SPARES_MAX: usize = 16_384;
/// Bytes that tombstones whose cut is left for idle time may hold on disk, at most; past it
/// a delete cuts its own file (so deleting frees space even on an OSD never idle).
const UNCUT_MAX_BYTES: u64 = 256 << 20;
/// Writes of this many bytes or more are synced in place rather than journaled (their data
/// would be written twice).
pub const DIRECT_MIN: usize = 128 << 10;
/// How long journal records wait for a checkpoint by default.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// How a change is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durable {
    /// fdatasync of the object's file (and directory, after a rename) before returning.
    InPlace,
    /// A journal record, waited for after the object's lock is let go.
    Journal,
    /// Not at all: a replay at open, synced as a whole when it ends.
    Replay,
}

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

/// A change made to the store whose journal record may not be durable yet: it is
/// acknowledged only after [`ObjectStore::settled`] returns for it. Lets a caller apply many
/// changes and wait once for the group they went out in.
#[derive(Debug, Clone, Copy, Default)]
#[must_use = "a change is durable only once settled"]
pub struct Pending(Option<Lsn>);

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
    /// Empty files under `objects/spare/` a new object takes by a rename, instead of the
    /// filesystem allocating an inode while a client waits.
    spares: Mutex<Vec<PathBuf>>,
    spare_seq: std::sync::atomic::AtomicU64,
    spares_ran_out: std::sync::atomic::AtomicU64,
    /// Objects whose tombstone may still hold the object's bytes: a journaled delete only
    /// stamps the header, and idle time cuts the file ([`ObjectStore::cut_tombstones`]).
    uncut: Mutex<Uncut>,
    journal: Arc<Journal>,
    /// Replaying the journal at open: changes are redone whatever their files hold.
    replaying: AtomicBool,
    /// Per lock stripe, objects' files kept open for reads, newest last (see the invariants).
    kept: Vec<Mutex<Vec<KeptFile>>>,
    /// Files kept open per stripe at most (from the open-files limit at open).
    kept_per_stripe: usize,
}

/// Tombstones left holding their object's bytes, each once, with what they hold on disk.
#[derive(Default)]
struct Uncut {
    objects: Vec<(String, u64)>,
    listed: HashSet<String>,
    bytes: u64,
}

impl Uncut {
    /// Lists `object`, holding `bytes` (true if it is listed already); false if that would
    /// pass [`UNCUT_MAX_BYTES`].
    fn add(&mut self, object: &str, bytes: u64) -> bool {
        if self.listed.contains(object) {
            return true;
        }
        if self.bytes + bytes > UNCUT_MAX_BYTES {
            return false;
        }
        self.bytes += bytes;
        self.listed.insert(object.to_string());
        self.objects.push((object.to_string(), bytes));
        true
    }

    fn take(&mut self) -> Option<String> {
        let (object, bytes) = self.objects.pop()?;
        self.bytes -= bytes;
        self.listed.remove(&object);
        Some(object)
    }
}

/// An object's file a read opened and checked, kept open for the next reads.
struct KeptFile {
    object: String,
    file: Arc<File>,
    size: u64,
}

/// Object files the store keeps open for reads: a quarter of the process's open-files limit
/// at most, and no more than four per lock stripe.
fn kept_per_stripe() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the plain struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    (lim.rlim_cur as usize / 4 / LOCK_STRIPES).min(4)
}

/// One object's file, its tombstone's, and its lock stripe.
struct Paths {
    obj: PathBuf,
    tomb: PathBuf,
    stripe: usize,
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// fsyncs the directory `path` is in, so a rename into it is durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
}

/// Removes a file that may already be gone.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens `path` for a change, creating it, and its directory if that went (a disk swapped
/// under a running OSD).
fn open_creating(path: &Path, truncate: bool) -> io::Result<File> {
    let open = || rw().truncate(truncate).open(path);
    match open() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            open()
        }
        r => r,
    }
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

/// Makes `file` the tombstone of `version`: its first block is the header stamped deleted,
/// then zeros. The header goes out as a whole block, so a file whose first page is not
/// cached (a replica's copy, say) is not read from disk first as a 16-byte write would be.
/// Returns the bytes the file holds on disk past that block (an object's, for
/// [`cut_tombstone`]), or 0 if it ends there.
fn stamp_tombstone(file: &File, version: u64) -> io::Result<u64> {
    let mut block = [0u8; BLOCK as usize];
    block[..HEADER as usize].copy_from_slice(&header(version, true));
    file.write_all_at(&block, 0)?;
    Ok(past_block(&file.metadata()?))
}

/// What a file holds on disk past its first block (its length past it if its allocation
/// is not known), or 0 if it ends there.
fn past_block(m: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    if m.len() <= BLOCK {
        return 0;
    }
    let on_disk = m.blocks() * 512;
    on_disk.saturating_sub(BLOCK).max(1)
}

/// Cuts a tombstone's file to its one block, freeing what the object held. Freeing blocks
/// is the costly part of a delete (ext4's extent work, and with `discard` a wait for the
/// device), so a journaled delete leaves it for idle time ([`ObjectStore::cut_tombstones`]).
fn cut_tombstone(file: &File) -> io::Result<()> {
    file.set_len(BLOCK)
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

/// The first [`HEADER`] bytes of `path`, if it has that many.
fn read_header(path: &Path) -> Option<[u8; HEADER as usize]> {
    let mut h = [0u8; HEADER as usize];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut h, 0))
        .ok()?;
    Some(h)
}

/// The crc32s of `data` per block, as stored.
fn block_sums(data: &[u8]) -> Vec<u8> {
    data.chunks(BLOCK as usize)
        .flat_map(|c| crc32fast::hash(c).to_le_bytes())
        .collect()
}

/// Alignment of offsets, lengths and memory for direct I/O.
const DIRECT_ALIGN: usize = 4096;
/// Direct writes go through an aligned buffer this large at most at a time.
const DIRECT_CHUNK: usize = 1 << 20;

thread_local! {
    /// Each thread's aligned staging buffer for direct writes, kept between writes: pages
    /// the process already touched cost nothing to write into, where fresh ones (a new page
    /// cache folio, a new allocation) cost a first touch that on this VM is most of a
    /// buffered write's CPU.
    static STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens an object's file a second time for direct I/O, or None where the filesystem does
/// not do it (tmpfs): the write is then buffered.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Writes `data` at `at` of a file opened for direct I/O, through the thread's aligned
/// staging buffer unless `data` is aligned itself. `at` and `data.len()` are multiples of
/// [`DIRECT_ALIGN`].
fn write_direct(file: &File, data: &[u8], at: u64) -> io::Result<()> {
    if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
        return file.write_all_at(data, at);
    }
    STAGING.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < DIRECT_CHUNK + DIRECT_ALIGN {
            buf.resize(DIRECT_CHUNK + DIRECT_ALIGN, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let mut done = 0;
        for chunk in data.chunks(DIRECT_CHUNK) {
            let staged = &mut buf[start..start + chunk.len()];
            staged.copy_from_slice(chunk);
            file.write_all_at(staged, at + done)?;
            done += chunk.len() as u64;
        }
        Ok(())
    })
}

/// Where in an object's file the checksums of `len` bytes from block `first` on are, and
/// how many bytes they take.
fn checksums_of(first: u64, len: usize) -> (u64, usize) {
    (HEADER + first * 4, len.div_ceil(BLOCK as usize) * 4)
}

fn rw() -> OpenOptions {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .clone()
}

/// Converts the objects of one shard directory kept in the earlier layout (`<name>` with its
/// bytes, `<name>.crc` with the header and checksums) to this one, keeping versions,
/// checksums and tombstones as they were (a damaged checksum file stays damaged). Each new
/// file is written beside, synced and renamed in before the old ones go, so a crash midway
/// converts again at the next open. True if it converted anything.
fn convert_shard(shard: &Path, names: &[String]) -> io::Result<bool> {
    let present: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut old: Vec<&str> = names
        .iter()
        .map(|n| n.strip_suffix(".crc").unwrap_or(n))
        .filter(|n| parse_object_name(n).is_some())
        .collect();
    old.sort_unstable();
    old.dedup();
    for &object in &old {
        let (data_path, crc_path) = (shard.join(object), shard.join(format!("{object}.crc")));
        let done = present.contains(format!("{object}.obj").as_str())
            || present.contains(format!("{object}.del").as_str());
        if !done {
            let mut head = fs::read(&crc_path).unwrap_or_default();
            let tomb = head.len() >= HEADER as usize
                && head[..4] == OLD_MAGIC
                && u32::from_le_bytes([head[4], head[5], head[6], head[7]]) & FLAG_DELETED != 0;
            if head.len() >= 4 && head[..4] == OLD_MAGIC {
                head[..4].copy_from_slice(&MAGIC);
            }
            head.truncate(DATA as usize);
            let data = match fs::read(&data_path) {
                Ok(d) => Some(d),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let (target, body) = match (tomb, data) {
                (true, _) => (format!("{object}.del"), None),
                (false, Some(d)) => (format!("{object}.obj"), Some(d)),
                // Checksums without bytes: the earlier layout ignored these too.
                (false, None) => {
                    remove_if_present(&crc_path)?;
                    continue;
                }
            };
            let tmp = shard.join(format!("{target}.tmp"));
            let f = File::create(&tmp)?;
            if let Some(body) = &body {
                // No valid header (a damaged or missing checksum file) reads as damaged.
                head.resize(head.len().max(HEADER as usize), 0);
                f.write_all_at(&head, 0)?;
                f.write_all_at(body, DATA)?;
                f.set_len(DATA + body.len() as u64)?;
            } else {
                f.write_all_at(&head[..HEADER as usize], 0)?;
            }
            f.sync_data()?;
            fs::rename(&tmp, shard.join(&target))?;
        }
        remove_if_present(&data_path)?;
        remove_if_present(&crc_path)?;
    }
    if !old.is_empty() {
        File::open(shard)?.sync_all()?;
    }
    Ok(!old.is_empty())
}

/// The names in a shard directory, less the temporary files a crash left (removed here).
fn shard_names(shard: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(shard)? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.ends_with(".tmp") {
            fs::remove_file(e.path())?;
        } else {
            names.push(name);
        }
    }
    Ok(names)
}

/// Indexes one shard directory. An object may have more than one file where a crash cut a
/// change short (an object and its tombstone; a tombstone's file renamed to the object's
/// whose rename did not last, or the other way): the header with the higher version wins,
/// goes under the name its state calls for, and the others go.
/// Tombstones still holding an object's bytes (a crash came before idle time cut them) are
/// added to `uncut`, or cut here once it holds [`UNCUT_MAX_BYTES`].
fn load_shard(shard: &Path, index: &mut Index, uncut: &mut Uncut) -> io::Result<()> {
    let mut names = shard_names(shard)?;
    if convert_shard(shard, &names)? {
        names = shard_names(shard)?;
    }
    // Each file's state, path, and (a tombstone's) bytes held past its block.
    let mut found: HashMap<&str, Vec<(ObjMeta, PathBuf, u64)>> = HashMap::new();
    for n in &names {
        let Some(object) = n.strip_suffix(".obj").or_else(|| n.strip_suffix(".del")) else {
            continue;
        };
        if parse_object_name(object).is_none() {
            continue;
        }
        let path = shard.join(n);
        let stat = fs::metadata(&path)?;
        let len = stat.len();
        let meta = match read_header(&path).and_then(|h| parse_header(&h)) {
            Some((version, true)) => ObjMeta {
                version,
                deleted: true,
                size: 0,
            },
            // A tombstone's file with a bad header says nothing.
            None if n.ends_with(".del") => continue,
            // A damaged header: version 0 makes every other copy newer.
            parsed => ObjMeta {
                version: parsed.map_or(0, |(v, _)| v),
                deleted: false,
                size: len.saturating_sub(DATA),
            },
        };
        let held = if meta.deleted { past_block(&stat) } else { 0 };
        found.entry(object).or_default().push((meta, path, held));
    }
    for (object, mut files) in found {
        // Highest version first; at a tie the live file.
        files.sort_by_key(|(m, _, _)| std::cmp::Reverse((m.version, !m.deleted)));
        let mut files = files.into_iter();
        let Some((meta, path, held)) = files.next() else {
            continue;
        };
        for (_, other, _) in files {
            remove_if_present(&other)?;
        }
        let want = shard.join(format!(
            "{object}.{}",
            if meta.deleted { "del" } else { "obj" }
        ));
        if path != want {
            fs::rename(&path, &want)?;
        }
        if held > 0 && !uncut.add(object, held) {
            cut_tombstone(&OpenOptions::new().write(true).open(&want)?)?;
        }
        index.set(object, Some(meta));
    }
    Ok(())
}

/// `len` bytes of `file` from `at` on, read straight into a new buffer (not zeroed first: a
/// large read's buffer is written once, by the kernel). `UnexpectedEof` if the file ends
/// before.
fn read_exact_fresh(file: &File, len: usize, at: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if pread_append(file, &mut buf, len, len, at)? < len {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Reads from `file` at `at` into `buf`'s spare capacity (unzeroed), past what it holds,
/// until `min` bytes came or the file ended, asking for up to `max` in all (a direct read
/// asks for whole aligned blocks); returns how many bytes it read. `buf` gets room for `max`
/// more if it lacks it (so a caller that made that room keeps its buffer where it is).
fn pread_append(
    file: &File,
    buf: &mut Vec<u8>,
    min: usize,
    max: usize,
    at: u64,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    buf.reserve(max);
    let base = buf.len();
    let mut done = 0;
    while done < min {
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `max - done` bytes, all within the spare capacity (of
        // at least that length), and `set_len` below covers only the bytes it wrote.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                max - done,
                (at + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => {
                done += n as usize;
                // SAFETY: the kernel initialised these `n` bytes.
                unsafe { buf.set_len(base + done) };
            }
        }
    }
    Ok(done)
}

impl ObjectStore {
    /// Opens (creating if needed) the store under `dir` and indexes what is there. Leftovers
    /// of a change a crash interrupted are removed, and objects of the earlier layout
    /// converted.
    pub fn open(dir: &Path) -> io::Result<ObjectStore> {
        Self::open_with(dir, CHECKPOINT_EVERY)
    }

    /// [`ObjectStore::open`], checkpointing the journal once its oldest record is
    /// `checkpoint_every` old.
    pub fn open_with(dir: &Path, checkpoint_every: Duration) -> io::Result<ObjectStore> {
        let root = dir.join("objects");
        let mut index = Index::default();
        let mut uncut = Uncut::default();
        for shard in 0..SHARDS {
            let shard = root.join(format!("{shard:02x}"));
            fs::create_dir_all(&shard)?;
            load_shard(&shard, &mut index, &mut uncut)?;
        }
        let spare_dir = root.join("spare");
        fs::create_dir_all(&spare_dir)?;
        let mut spares = Vec::new();
        let mut seq = 0u64;
        for e in fs::read_dir(&spare_dir)? {
            let e = e?;
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                seq = seq.max(n + 1);
                spares.push(e.path());
            }
        }
        let (journal, records) = Journal::open(&dir.join("journal"), &root)?;
        let store = ObjectStore {
            root,
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            index: Mutex::new(index),
            spares: Mutex::new(spares),
            spare_seq: std::sync::atomic::AtomicU64::new(seq),
            spares_ran_out: std::sync::atomic::AtomicU64::new(0),
            uncut: Mutex::new(uncut),
            journal,
            replaying: AtomicBool::new(false),
            kept: (0..LOCK_STRIPES).map(|_| Mutex::new(Vec::new())).collect(),
            kept_per_stripe: kept_per_stripe(),
        };
        store.replay(records);
        // The replayed changes are synced and their segments go.
        store.journal.checkpoint()?;
        Journal::checkpoint_every(&store.journal, checkpoint_every);
        Ok(store)
    }

    /// Redoes the journal's records in order, but none of an object's older than its last
    /// `Synced` record (a change made in place after them is durable already).
    fn replay(&self, records: Vec<crate::journal::Record>) {
        if records.is_empty() {
            return;
        }
        let last_synced: HashMap<&str, usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.change == Replayed::Synced)
            .map(|(i, r)| (r.object.as_str(), i))
            .collect();
        self.replaying.store(true, Ordering::Relaxed);
        let mut redone = 0;
        for (i, r) in records.iter().enumerate() {
            if last_synced.get(r.object.as_str()).is_some_and(|&s| i <= s) {
                continue;
            }
            let (o, v) = (r.object.as_str(), r.version);
            let done = match &r.change {
                Replayed::Write(extents) => {
                    let parts: Vec<(u64, &[u8])> =
                        extents.iter().map(|(off, d)| (*off, &d[..])).collect();
                    self.write_extents(o, &parts, v).map(|_| ())
                }
                Replayed::Truncate(size) => self.truncate(o, *size, v),
                Replayed::Delete => self.delete(o, v),
                Replayed::Remove => self.remove(o),
                Replayed::Synced => Ok(()),
            };
            match done {
                Ok(()) => redone += 1,
                // The copy is then behind or damaged: peering or a read repairs it.
                Err(e) => warn!(object = o, error = %e, "cannot redo a journaled change"),
            }
        }
        self.replaying.store(false, Ordering::Relaxed);
        info!(records = records.len(), redone, "journal replayed");
    }

    fn durable_by(&self, in_place: bool) -> Durable {
        if self.replaying.load(Ordering::Relaxed) {
            Durable::Replay
        } else if in_place {
            Durable::InPlace
        } else {
            Durable::Journal
        }
    }

    /// Journals `change` (already applied) when `how` says so; the record's number to wait
    /// for once the object's lock is let go.
    fn journal(
        &self,
        object: &str,
        how: Durable,
        version: u64,
        change: Change<'_>,
    ) -> Result<Option<Lsn>> {
        if how != Durable::Journal {
            return Ok(None);
        }
        let lsn = self
            .journal
            .append(object, version, change)
            .map_err(Self::io_err(object))?;
        Ok(Some(lsn))
    }

    /// Waits for a journal record (outside the object's lock, so the group takes others).
    fn wait(&self, object: &str, lsn: Option<Lsn>) -> Result<()> {
        match lsn {
            Some(l) => self.journal.wait(l).map_err(Self::io_err(object)),
            None => Ok(()),
        }
    }

    /// Returns once a change to `object` made by a `*_pending` call is durable.
    pub fn settled(&self, object: &str, pending: Pending) -> Result<()> {
        self.wait(object, pending.0)
    }

    /// Before a change made in place: if the object has journal records not yet
    /// checkpointed, their changes (in its files, unsynced) are synced and a `Synced` record
    /// made durable, so a replay does not lay them over the change. Under the object's lock.
    fn settle(&self, object: &str, p: &Paths) -> Result<()> {
        if !self.journal.is_dirty(object) {
            return Ok(());
        }
        let io = Self::io_err(object);
        for path in [&p.obj, &p.tomb] {
            match File::open(path) {
                Ok(f) => f.sync_data().map_err(&io)?,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        sync_dir(&p.obj).map_err(&io)?;
        let lsn = self
            .journal
            .append(object, 0, Change::Synced)
            .map_err(&io)?;
        self.journal.wait(lsn).map_err(&io)?;
        self.journal.forget(object);
        Ok(())
    }

    /// Checkpoints the journal now (tests; the store does so by itself).
    pub fn checkpoint(&self) -> io::Result<()> {
        self.journal.checkpoint()
    }

    /// Journal segment files present (tests).
    pub fn journal_segments(&self) -> usize {
        self.journal.segments()
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times a new object found no spare file (and made its own).
    pub fn spares_ran_out(&self) -> u64 {
        self.spares_ran_out.load(Ordering::Relaxed)
    }

    /// How many spare files the store holds.
    pub fn spare_count(&self) -> usize {
        self.spares().len()
    }

    /// Makes up to `n` spare files, stopping at [`SPARES_MAX`]; returns how many it made.
    /// Meant for idle time: it is the inode allocation a new object would otherwise wait
    /// for.
    /// The pool's lock is taken once, at the end: the files are made without it.
    pub fn make_spares(&self, n: usize) -> io::Result<usize> {
        let room = SPARES_MAX.saturating_sub(self.spare_count());
        let mut made = Vec::with_capacity(n.min(room));
        let mut result = Ok(());
        for _ in 0..n.min(room) {
            let path = self.new_spare_path();
            match open_creating(&path, true) {
                Ok(_) => made.push(path),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let count = made.len();
        self.spares().extend(made);
        result.map(|()| count)
    }

    /// A name for one more spare file.
    fn new_spare_path(&self) -> PathBuf {
        let seq = self
            .spare_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join("spare").join(seq.to_string())
    }

    /// Puts an object's file (a removed one's) in the spare pool, or deletes it when the pool
    /// is full.
    fn retire(&self, path: &Path) -> io::Result<()> {
        if self.spare_count() >= SPARES_MAX {
            return remove_if_present(path);
        }
        let file = match OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        file.set_len(0)?;
        let to = self.new_spare_path();
        if fs::rename(path, &to).is_err() {
            // The spare directory went (a disk swapped under a running OSD): just delete.
            return remove_if_present(path);
        }
        self.spares().push(to);
        Ok(())
    }

    /// Moves a spare file to `to`; false if none is left.
    fn take_spare(&self, to: &Path) -> bool {
        loop {
            let Some(spare) = self.spares().pop() else {
                self.spares_ran_out.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            // A spare that went meanwhile (a wiped directory) is skipped.
            if fs::rename(&spare, to).is_ok() {
                return true;
            }
        }
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
        let dir = self.root.join(format!("{:02x}", h % SHARDS as u64));
        Ok(Paths {
            obj: dir.join(format!("{object}.obj")),
            tomb: dir.join(format!("{object}.del")),
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

    /// The write lock of a stripe, for a change: the files reads kept open in it are
    /// dropped first.
    fn write_lock(&self, stripe: usize) -> std::sync::RwLockWriteGuard<'_, ()> {
        let guard = self.locks[stripe]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        self.kept_in(stripe).clear();
        guard
    }

    fn kept_in(&self, stripe: usize) -> std::sync::MutexGuard<'_, Vec<KeptFile>> {
        self.kept[stripe].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`ObjectStore::open_read`] through the files kept open in the object's stripe, keeping
    /// the one it opens. Under the stripe's read lock.
    fn open_read_kept(&self, object: &str, p: &Paths) -> Result<Option<(Arc<File>, u64)>> {
        if let Some(k) = self.kept_in(p.stripe).iter().find(|k| k.object == object) {
            return Ok(Some((k.file.clone(), k.size)));
        }
        let Some((file, size)) = self.open_read(object, p)? else {
            return Ok(None);
        };
        let file = Arc::new(file);
        if self.kept_per_stripe > 0 {
            let mut kept = self.kept_in(p.stripe);
            if !kept.iter().any(|k| k.object == object) {
                if kept.len() >= self.kept_per_stripe {
                    kept.remove(0);
                }
                kept.push(KeptFile {
                    object: object.to_string(),
                    file: file.clone(),
                    size,
                });
            }
        }
        Ok(Some((file, size)))
    }

    /// Opens an object's file for a change: (file, old size, whether it was renamed into
    /// place). A tombstone or a missing object opens as empty: the tombstone's own file, or a
    /// spare, renamed to the object's name (a new file only when neither is there); its
    /// header comes with the change. Until then a crash leaves it a tombstone or empty.
    fn open_rw(&self, object: &str, p: &Paths) -> Result<(File, u64, bool)> {
        let io = Self::io_err(object);
        let renamed = match self.meta(object) {
            Some(m) if !m.deleted => false,
            Some(_) => fs::rename(&p.tomb, &p.obj).is_ok() || self.take_spare(&p.obj),
            None => self.take_spare(&p.obj),
        };
        let file = open_creating(&p.obj, false).map_err(&io)?;
        let len = file.metadata().map_err(&io)?.len();
        if len == 0 {
            return Ok((file, 0, renamed));
        }
        let mut h = [0u8; HEADER as usize];
        let header = file
            .read_exact_at(&mut h, 0)
            .ok()
            .and_then(|()| parse_header(&h));
        if self.replaying.load(Ordering::Relaxed) && !matches!(header, Some((_, true))) {
            // A crash may have kept any part of the changes being redone: the redo writes the
            // header and every byte it covers again.
            return Ok((file, len.saturating_sub(DATA), renamed));
        }
        if header.is_none() && len < HEADER {
            return Err(Self::corrupt(object, "header missing"));
        }
        match header {
            Some((_, false)) if len >= DATA => Ok((file, len - DATA, renamed)),
            Some((_, false)) => Err(Self::corrupt(object, "file shorter than its header")),
            Some((_, true)) => {
                file.set_len(0).map_err(&io)?;
                Ok((file, 0, renamed))
            }
            None => Err(Self::corrupt(object, "bad header")),
        }
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
        let (size, pending) = self.write_extents_pending(object, extents, version)?;
        self.settled(object, pending)?;
        Ok(size)
    }

    /// [`ObjectStore::write_extents`] without waiting for its journal record.
    pub fn write_extents_pending(
        &self,
        object: &str,
        extents: &[(u64, &[u8])],
        version: u64,
    ) -> Result<(u64, Pending)> {
        for (offset, data) in extents {
            Self::check_range(*offset, data.len() as u64)?;
        }
        let bytes: usize = extents.iter().map(|(_, d)| d.len()).sum();
        let how = self.durable_by(bytes >= DIRECT_MIN);
        let p = self.paths(object)?;
        let guard = self.write_lock(p.stripe);
        if how == Durable::InPlace {
            self.settle(object, &p)?;
        }
        let (file, mut size, renamed) = self.open_rw(object, &p)?;
        // A write synced in place skips the page cache where it can: the sync then only
        // has the header, checksums and the file's extents left to write.
        let direct = (how == Durable::InPlace)
            .then(|| open_direct(&p.obj))
            .flatten();
        for (offset, data) in extents {
            size = self.put(object, &file, direct.as_ref(), size, *offset, data)?;
        }
        if size == 0 {
            // An empty object still spans its header and checksums.
            file.set_len(DATA).map_err(Self::io_err(object))?;
        }
        self.seal(object, &p, &file, version, size, renamed, how)?;
        let lsn = self.journal(object, how, version, Change::Write(extents))?;
        drop(guard);
        Ok((size, Pending(lsn)))
    }

    /// Writes `data` at `offset` of an object of `old_size` bytes with its checksums, unsynced
    /// (the bytes through `direct` when given and they are aligned); returns the new size.
    fn put(
        &self,
        object: &str,
        file: &File,
        direct: Option<&File>,
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
                    let old = self.read_kept(object, file, b, old_size)?;
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
        let aligned = (offset as usize | data.len()).is_multiple_of(DIRECT_ALIGN);
        match direct {
            Some(d) if aligned => match write_direct(d, data, DATA + offset) {
                // A filesystem that opens for direct I/O and then refuses it: buffered.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    file.write_all_at(data, DATA + offset).map_err(&io)?
                }
                r => r.map_err(&io)?,
            },
            _ => file.write_all_at(data, DATA + offset).map_err(&io)?,
        }
        file.write_all_at(&sums, HEADER + first * 4).map_err(&io)?;
        Ok(new_size)
    }

    /// Finishes a change in place: stamps the version, syncs if `how` says so (the
    /// directory too when the file was `renamed` into place), drops a tombstone the object
    /// had, and records the object's new state in the index.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &self,
        object: &str,
        p: &Paths,
        file: &File,
        version: u64,
        size: u64,
        renamed: bool,
        how: Durable,
    ) -> Result<()> {
        let io = Self::io_err(object);
        file.write_all_at(&header(version, false), 0).map_err(&io)?;
        if how == Durable::InPlace {
            file.sync_data().map_err(&io)?;
            if renamed {
                sync_dir(&p.obj).map_err(&io)?;
            }
        }
        if self.meta(object).is_some_and(|m| m.deleted) && !renamed {
            // Left by a crash from here, the tombstone loses to the newer version at open.
            remove_if_present(&p.tomb).map_err(&io)?;
        }
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

    /// The old bytes of block `b` a change keeps part of: verified, except in a replay,
    /// where they may be from a later change a crash kept part of (which the replay redoes
    /// next) and are taken as they are.
    fn read_kept(&self, object: &str, file: &File, b: u64, size: u64) -> Result<Vec<u8>> {
        if !self.replaying.load(Ordering::Relaxed) {
            return self.read_verified(object, file, b, size);
        }
        let bs = b * BLOCK;
        let mut block = vec![0u8; (BLOCK).min(size - bs) as usize];
        let mut got = 0;
        while got < block.len() {
            match file.read_at(&mut block[got..], DATA + bs + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io_err(object)(e)),
            }
        }
        Ok(block)
    }

    /// Reads block `b` of an object whose size is `size` and checks it against its crc.
    fn read_verified(&self, object: &str, file: &File, b: u64, size: u64) -> Result<Vec<u8>> {
        let bs = b * BLOCK;
        let len = (BLOCK).min(size - bs) as usize;
        self.read_blocks(object, file, b, len)
    }

    /// `len` bytes of the object from block `first` on, every block in them verified. They end
    /// at a block boundary or at the object's end.
    fn read_blocks(&self, object: &str, file: &File, first: u64, len: usize) -> Result<Vec<u8>> {
        let io = Self::io_err(object);
        let buf =
            read_exact_fresh(file, len, DATA + first * BLOCK).map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => Self::corrupt(object, "object shorter than expected"),
                _ => io(e),
            })?;
        self.verify(object, file, first, &buf)?;
        Ok(buf)
    }

    /// Reads `len` bytes from block `first` on with direct I/O into a buffer of its own,
    /// verified: the bytes go from the disk into the buffer, not through new page-cache pages
    /// and a copy. Returns the buffer and where the bytes start in it; None where the file
    /// cannot be opened for direct I/O or the read is refused (the caller reads buffered).
    fn read_blocks_direct(
        &self,
        object: &str,
        p: &Paths,
        file: &File,
        first: u64,
        len: usize,
    ) -> Option<Result<(Vec<u8>, usize)>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p.obj)
            .ok()?;
        // The block checksums are read through the page cache once the data came: ask for
        // them now, so that the two disk reads overlap instead of following one another.
        let (sums_at, sums_len) = checksums_of(first, len);
        // SAFETY: posix_fadvise reads its arguments only; a failure loses a hint, no more.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                sums_at as libc::off_t,
                sums_len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        let want = len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        // Only the bytes before the first aligned address are zeroed; the kernel writes the
        // rest. Past the end of the file it stops short: the last block may be partial.
        let mut buf: Vec<u8> = Vec::with_capacity(want + DIRECT_ALIGN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        buf.resize(start, 0);
        match pread_append(&direct, &mut buf, len, want, DATA + first * BLOCK) {
            Ok(n) if n < len => {
                return Some(Err(Self::corrupt(object, "object shorter than expected")))
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return None,
            Err(e) => return Some(Err(Self::io_err(object)(e))),
        }
        let r = self.verify(object, file, first, &buf[start..start + len]);
        Some(r.map(|()| (buf, start)))
    }

    /// Checks `buf`, the bytes of an object from block `first` on, against their stored
    /// checksums.
    fn verify(&self, object: &str, file: &File, first: u64, buf: &[u8]) -> Result<()> {
        let io = Self::io_err(object);
        let (sums_at, sums_len) = checksums_of(first, buf.len());
        let mut sums = vec![0u8; sums_len];
        file.read_exact_at(&mut sums, sums_at)
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
    fn open_read(&self, object: &str, p: &Paths) -> Result<Option<(File, u64)>> {
        let io = Self::io_err(object);
        let file = match File::open(&p.obj) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| Self::corrupt(object, "header missing"))?;
        if !matches!(parse_header(&h), Some((_, false))) {
            return Err(Self::corrupt(object, "bad header"));
        }
        let len = file.metadata().map_err(&io)?.len();
        let Some(size) = len.checked_sub(DATA) else {
            return Err(Self::corrupt(object, "file shorter than its header"));
        };
        // No write makes an object this large: a damaged file must not size a buffer.
        if size > MAX_OBJECT_SIZE as u64 {
            return Err(Self::corrupt(object, "larger than any object can be"));
        }
        Ok(Some((file, size)))
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
        let Some((file, size)) = self.open_read_kept(object, p)? else {
            return Ok(None);
        };
        let end = (offset + len).min(size);
        if offset >= end {
            return Ok(Some(Bytes::new()));
        }
        let first = offset / BLOCK;
        let aligned_end = end.div_ceil(BLOCK) * BLOCK;
        let blocks = (aligned_end.min(size) - first * BLOCK) as usize;
        let skip = (offset - first * BLOCK) as usize;
        let n = (end - offset) as usize;
        if blocks >= DIRECT_MIN {
            if let Some(r) = self.read_blocks_direct(object, p, &file, first, blocks) {
                let (buf, start) = r?;
                return Ok(Some(Bytes::from(buf).slice(start + skip..start + skip + n)));
            }
        }
        let buf = self.read_blocks(object, &file, first, blocks)?;
        Ok(Some(Bytes::from(buf).slice(skip..skip + n)))
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
        let Some((file, size)) = self.open_read(object, &p)? else {
            return Ok(Some((meta, Bytes::new())));
        };
        let buf = match size {
            0 => Vec::new(),
            _ => self.read_blocks(object, &file, 0, size as usize)?,
        };
        Ok(Some((ObjMeta { size, ..meta }, Bytes::from(buf))))
    }

    /// Sets the object's size, dropping or zero-filling its tail, and stamps `version`.
    /// Creates it if missing.
    pub fn truncate(&self, object: &str, size: u64, version: u64) -> Result<()> {
        let pending = self.truncate_pending(object, size, version)?;
        self.settled(object, pending)
    }

    /// [`ObjectStore::truncate`] without waiting for its journal record.
    pub fn truncate_pending(&self, object: &str, size: u64, version: u64) -> Result<Pending> {
        Self::check_range(size, 0)?;
        let how = self.durable_by(false);
        let p = self.paths(object)?;
        let guard = self.write_lock(p.stripe);
        let io = Self::io_err(object);
        let (file, old_size, renamed) = self.open_rw(object, &p)?;
        let mut sums = Vec::new();
        let first;
        if size < old_size {
            // The new last block keeps a prefix of a verified old block.
            first = size / BLOCK;
            if !size.is_multiple_of(BLOCK) {
                let old = self.read_kept(object, &file, first, old_size)?;
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
                    let mut block = self.read_kept(object, &file, b, old_size)?;
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
        // Checksums past the new end stay, unread: a later growth writes its own.
        file.set_len(DATA + size).map_err(&io)?;
        file.write_all_at(&sums, HEADER + first * 4).map_err(&io)?;
        self.seal(object, &p, &file, version, size, renamed, how)?;
        let lsn = self.journal(object, how, version, Change::Truncate(size))?;
        drop(guard);
        Ok(Pending(lsn))
    }

    /// Deletes the object, leaving a tombstone at `version`.
    pub fn delete(&self, object: &str, version: u64) -> Result<()> {
        let pending = self.delete_pending(object, version)?;
        self.settled(object, pending)
    }

    /// [`ObjectStore::delete`] without waiting for its journal record.
    pub fn delete_pending(&self, object: &str, version: u64) -> Result<Pending> {
        self.install_pending(
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
    /// whatever the store held: how deletes, recovery and repair bring a copy up to date.
    pub fn install(&self, object: &str, meta: ObjMeta, data: &[u8]) -> Result<()> {
        let pending = self.install_pending(object, meta, data)?;
        self.settled(object, pending)
    }

    fn install_pending(&self, object: &str, meta: ObjMeta, data: &[u8]) -> Result<Pending> {
        Self::check_range(0, data.len() as u64)?;
        // A tombstone is journaled; a whole object is written beside and synced in place.
        let how = self.durable_by(!meta.deleted);
        let sync = how == Durable::InPlace;
        let p = self.paths(object)?;
        let guard = self.write_lock(p.stripe);
        let io = Self::io_err(object);
        if sync {
            self.settle(object, &p)?;
        }
        // A live object's own file, to become its tombstone (gone if the disk was wiped
        // under a running OSD: a new tombstone then).
        let own = match self.meta(object) {
            Some(m) if meta.deleted && !m.deleted => {
                match OpenOptions::new().write(true).open(&p.obj) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == ErrorKind::NotFound => None,
                    Err(e) => return Err(io(e)),
                }
            }
            _ => None,
        };
        if let Some(file) = own {
            // Stamped deleted in its own file, synced, then renamed: the file is the
            // tombstone from the sync on, whatever its name (no inode freed or made). The
            // object's bytes after the header block go in idle time.
            self.stamp(object, &file, meta.version).map_err(&io)?;
            if sync {
                file.sync_data().map_err(&io)?;
            }
            fs::rename(&p.obj, &p.tomb).map_err(&io)?;
        } else if meta.deleted {
            // Over an older tombstone in place (one not cut yet is in `uncut` already), or a
            // new one.
            let tomb = open_creating(&p.tomb, false).map_err(&io)?;
            stamp_tombstone(&tomb, meta.version).map_err(&io)?;
            if sync {
                tomb.sync_data().map_err(&io)?;
            }
            remove_if_present(&p.obj).map_err(&io)?;
        } else {
            // A new file written beside the old one, synced, then renamed over it.
            let tmp = with_suffix(&p.obj, ".tmp");
            let file = open_creating(&tmp, true).map_err(&io)?;
            let mut head = header(meta.version, false).to_vec();
            head.extend_from_slice(&block_sums(data));
            file.write_all_at(&head, 0).map_err(&io)?;
            file.write_all_at(data, DATA).map_err(&io)?;
            file.set_len(DATA + data.len() as u64).map_err(&io)?;
            file.sync_data().map_err(&io)?;
            fs::rename(&tmp, &p.obj).map_err(&io)?;
            remove_if_present(&p.tomb).map_err(&io)?;
            let dir = p.obj.parent().unwrap_or(&self.root);
            File::open(dir).and_then(|d| d.sync_all()).map_err(&io)?;
        }
        self.index().set(
            object,
            Some(ObjMeta {
                size: if meta.deleted { 0 } else { data.len() as u64 },
                ..meta
            }),
        );
        let lsn = match meta.deleted {
            true => self.journal(object, how, meta.version, Change::Delete)?,
            false => None,
        };
        drop(guard);
        Ok(Pending(lsn))
    }

    /// [`stamp_tombstone`], leaving the cut of what follows the header block to idle time
    /// when there is any (the journal record, not the file's length, makes the delete).
    fn stamp(&self, object: &str, file: &File, version: u64) -> io::Result<()> {
        let held = stamp_tombstone(file, version)?;
        if held > 0 && !self.uncut().add(object, held) {
            cut_tombstone(file)?;
        }
        Ok(())
    }

    fn uncut(&self) -> std::sync::MutexGuard<'_, Uncut> {
        self.uncut.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tombstones that may still hold their object's bytes.
    pub fn uncut_count(&self) -> usize {
        self.uncut().objects.len()
    }

    /// Cuts up to `n` tombstones left holding their object's bytes to their header block
    /// (meant for idle time); returns how many it took from the list. An object written again
    /// meanwhile is skipped: its file is its own.
    pub fn cut_tombstones(&self, n: usize) -> io::Result<usize> {
        let mut done = 0;
        while done < n {
            let Some(object) = self.uncut().take() else {
                break;
            };
            done += 1;
            let Ok(p) = self.paths(&object) else {
                continue;
            };
            let _guard = self.write_lock(p.stripe);
            if !self.meta(&object).is_some_and(|m| m.deleted) {
                continue;
            }
            let file = match OpenOptions::new().write(true).open(&p.tomb) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if file.metadata()?.len() > BLOCK {
                cut_tombstone(&file)?;
            }
        }
        Ok(done)
    }

    /// Forgets the object entirely, tombstone included (a stray copy, or a tombstone every
    /// replica has).
    pub fn remove(&self, object: &str) -> Result<()> {
        let p = self.paths(object)?;
        let guard = self.write_lock(p.stripe);
        let io = Self::io_err(object);
        self.retire(&p.tomb).map_err(&io)?;
        self.retire(&p.obj).map_err(&io)?;
        self.index().set(object, None);
        // So that a replay does not bring back what went before it.
        let lsn = self.journal(object, self.durable_by(false), 0, Change::Remove)?;
        drop(guard);
        self.wait(object, lsn)
    }

    /// When this copy of an object last changed (its file's mtime); `None` if it has no file
    /// (a tombstone) or the name is not an object's.
    pub fn changed_at(&self, object: &str) -> Option<std::time::SystemTime> {
        let path = self.paths(object).ok()?.obj;
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    /// Where an object's file lives (tests use it to damage objects on purpose; its bytes
    /// start at [`DATA`]).
    pub fn data_path(&self, object: &str) -> Result<PathBuf> {
        Ok(self.paths(object)?.obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn name(n: u64) -> String {
        shoal_proto::layout::object_name(7, n)
    }

    #[test]
    fn fresh_reads_return_exactly_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            read_exact_fresh(&f, 50_000, 1234).unwrap(),
            &data[1234..51234]
        );
        assert_eq!(read_exact_fresh(&f, 0, 7).unwrap(), Vec::<u8>::new());
        let short = read_exact_fresh(&f, 10, 99_995).unwrap_err();
        assert_eq!(short.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn files_kept_open_for_reads_never_outlive_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ObjectStore::open(dir.path()).unwrap();
        // Whatever this process's open-files limit allows.
        store.kept_per_stripe = 2;
        // Objects of one lock stripe, more than it keeps files for.
        let stripe = store.paths(&name(0)).unwrap().stripe;
        let same: Vec<String> = (0..20_000)
            .map(name)
            .filter(|n| store.paths(n).unwrap().stripe == stripe)
            .take(store.kept_per_stripe + 3)
            .collect();
        assert_eq!(same.len(), store.kept_per_stripe + 3);
        let read = |o: &str| store.read(o, 0, 100).unwrap().map(|b| b.to_vec());
        for (i, o) in same.iter().enumerate() {
            store
                .write(o, 0, format!("object {i}").as_bytes(), 1)
                .unwrap();
        }
        for _ in 0..2 {
            for (i, o) in same.iter().enumerate() {
                assert_eq!(read(o).unwrap(), format!("object {i}").as_bytes());
            }
        }
        assert!(store.kept_in(stripe).len() <= store.kept_per_stripe);
        // A removed object's file becomes a spare the next new object takes: a read of the
        // first finds nothing, of the second its own bytes.
        let (a, b) = (&same[0], &same[1]);
        assert!(read(a).is_some());
        let spares = store.spare_count();
        store.remove(a).unwrap();
        assert_eq!(store.spare_count(), spares + 1);
        let fresh = (20_000..40_000)
            .map(name)
            .find(|n| store.paths(n).unwrap().stripe == stripe)
            .unwrap();
        store.write(&fresh, 0, b"new", 1).unwrap();
        assert_eq!(store.spare_count(), spares, "the new object took the spare");
        assert_eq!(read(a), None);
        assert_eq!(read(&fresh).unwrap(), b"new");
        // Truncates, writes and deletes are seen by the next read.
        assert_eq!(read(b).unwrap(), b"object 1");
        store.truncate(b, 3, 2).unwrap();
        assert_eq!(read(b).unwrap(), b"obj");
        store.write(b, 3, b"ect one", 3).unwrap();
        assert_eq!(read(b).unwrap(), b"object one");
        store.delete(b, 4).unwrap();
        assert_eq!(read(b), None);
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
    fn direct_and_buffered_writes_mixed_match_a_reference_before_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let obj = name(3);
        let mut reference: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        {
            let store = ObjectStore::open(dir.path()).unwrap();
            for step in 1..=60u64 {
                // Aligned large writes (direct), unaligned large ones and small ones (buffered,
                // journaled) over the same blocks, some from an unaligned slice of memory.
                let (off, len) = match step % 3 {
                    0 => (
                        rng.gen_range(0..200u64) * 4096,
                        rng.gen_range(32..160usize) * 4096,
                    ),
                    1 => (
                        rng.gen_range(0..800_000u64),
                        rng.gen_range(DIRECT_MIN..300_000),
                    ),
                    _ => (rng.gen_range(0..900_000u64), rng.gen_range(1..9000usize)),
                };
                let skew = (step % 2) as usize;
                let backing: Vec<u8> = (0..len + skew).map(|_| rng.gen()).collect();
                let data = &backing[skew..];
                let size = store.write(&obj, off, data, step).unwrap();
                let end = off as usize + len;
                if reference.len() < end {
                    reference.resize(end, 0);
                }
                reference[off as usize..end].copy_from_slice(data);
                assert_eq!(size, reference.len() as u64, "step {step}");
                let at = rng.gen_range(0..reference.len() as u64);
                let got = store.read(&obj, at, 70_000).unwrap().unwrap();
                let want_end = (at as usize + 70_000).min(reference.len());
                assert_eq!(&got[..], &reference[at as usize..want_end], "step {step}");
            }
            let all = store.read(&obj, 0, 4 << 20).unwrap().unwrap();
            assert_eq!(&all[..], &reference[..]);
        }
        // Reopened (journal replayed over what the files hold): the same bytes, verified,
        // through large reads (direct) at unaligned offsets, up to the partial last block.
        let store = ObjectStore::open(dir.path()).unwrap();
        let all = store.read(&obj, 0, 4 << 20).unwrap().unwrap();
        assert_eq!(&all[..], &reference[..]);
        assert_eq!(store.meta(&obj).unwrap().version, 60);
        for _ in 0..20 {
            let at = rng.gen_range(0..reference.len() as u64);
            let len = rng.gen_range(DIRECT_MIN as u64..(1 << 20));
            let got = store.read(&obj, at, len).unwrap().unwrap();
            let end = ((at + len) as usize).min(reference.len());
            assert_eq!(&got[..], &reference[at as usize..end]);
        }
        // A flipped byte is an error through a large read too, never wrong bytes.
        let path = store.data_path(&obj).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, DATA + 300_000).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], DATA + 300_000).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let bad = store.read(&obj, 200_000, 400_000);
        assert!(matches!(bad, Err(StoreError::Corrupt { .. })), "{bad:?}");
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
        raw[(DATA + BLOCK) as usize + 7] ^= 0x01;
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
    fn tombstones_are_cut_to_their_header_block_in_idle_time_or_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let (big, small, again) = (name(40), name(41), name(42));
        store.write(&big, 0, &vec![5u8; 300_000], 1).unwrap();
        store.write(&small, 0, b"abc", 1).unwrap();
        store.write(&again, 0, b"first", 1).unwrap();
        for o in [&big, &small, &again] {
            store.delete(o, 2).unwrap();
        }
        // A delete over a tombstone restamps it with the newer version.
        store.delete(&small, 5).unwrap();
        // Written again before idle time: its file is its own, and not cut.
        store.write(&again, 0, b"second", 3).unwrap();
        let len = |o: &String| fs::metadata(store.paths(o).unwrap().tomb).unwrap().len();
        assert!(len(&big) > 300_000, "the delete left the bytes for later");
        assert_eq!(store.uncut_count(), 3);
        let check = |store: &ObjectStore| {
            for (object, version) in [(&big, 2), (&small, 5)] {
                let deleted = ObjMeta {
                    version,
                    deleted: true,
                    size: 0,
                };
                assert_eq!(store.meta(object), Some(deleted), "{object}");
                assert!(store.read(object, 0, 10).unwrap().is_none());
            }
            let back = store.read(&again, 0, 100).unwrap().unwrap();
            assert_eq!(&back[..], b"second");
        };
        check(&store);
        // A restart before the cut finds the tombstones still holding bytes.
        drop(store);
        let store = ObjectStore::open(dir.path()).unwrap();
        check(&store);
        // (The journal's replay may list the object written again too: a cut skips it.)
        let listed = store.uncut_count();
        assert!(listed >= 2, "{listed}");
        assert_eq!(store.cut_tombstones(1).unwrap(), 1);
        assert_eq!(store.cut_tombstones(100).unwrap(), listed - 1);
        assert_eq!(store.uncut_count(), 0);
        for o in [&big, &small] {
            let tomb = store.paths(o).unwrap().tomb;
            assert_eq!(fs::metadata(&tomb).unwrap().len(), BLOCK, "{o}");
        }
        check(&store);
        drop(store);
        check(&ObjectStore::open(dir.path()).unwrap());
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

    /// Writes an object as the earlier layout kept it: bytes in `<name>`, header and
    /// checksums in `<name>.crc`.
    fn write_old(root: &Path, object: &str, data: Option<&[u8]>, version: u64, deleted: bool) {
        let shard = root
            .join("objects")
            .join(format!("{:02x}", stable_hash(object.as_bytes()) & 0xff));
        fs::create_dir_all(&shard).unwrap();
        let mut crc = OLD_MAGIC.to_vec();
        crc.extend_from_slice(&(if deleted { FLAG_DELETED } else { 0 }).to_le_bytes());
        crc.extend_from_slice(&version.to_le_bytes());
        if let Some(d) = data {
            crc.extend_from_slice(&block_sums(d));
            fs::write(shard.join(object), d).unwrap();
        }
        fs::write(shard.join(format!("{object}.crc")), crc).unwrap();
    }

    #[test]
    fn a_store_of_the_earlier_layout_is_converted_at_open_losing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        write_old(dir.path(), &name(1), Some(&big), 7, false);
        write_old(dir.path(), &name(2), Some(b""), 3, false);
        write_old(dir.path(), &name(3), None, 9, true);
        // A damaged checksum file: the copy reads as damaged, at version 0.
        write_old(dir.path(), &name(4), Some(b"abc"), 2, false);
        let p4 = ObjectStore::open(dir.path())
            .unwrap()
            .data_path(&name(4))
            .unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            &store.read(&name(1), 0, 1 << 20).unwrap().unwrap()[..],
            &big[..]
        );
        assert_eq!(store.meta(&name(1)).unwrap().version, 7);
        assert_eq!(store.read(&name(2), 0, 10).unwrap().unwrap().len(), 0);
        assert_eq!(
            store.meta(&name(3)),
            Some(ObjMeta {
                version: 9,
                deleted: true,
                size: 0
            })
        );
        assert_eq!(
            store.usage(),
            Usage {
                objects: 3,
                bytes: 70_003
            }
        );
        // Nothing of the earlier layout is left.
        let left: Vec<_> = fs::read_dir(p4.parent().unwrap().parent().unwrap())
            .unwrap()
            .flat_map(|s| fs::read_dir(s.unwrap().path()).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".obj") && !n.ends_with(".del"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        drop(store);
        // Damage name(4)'s header (as a bad checksum file was): version 0, reads fail.
        let mut raw = fs::read(&p4).unwrap();
        raw[0] ^= 0xff;
        fs::write(&p4, raw).unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(store.meta(&name(4)).unwrap().version, 0);
        assert!(matches!(
            store.read(&name(4), 0, 3),
            Err(StoreError::Corrupt { .. })
        ));
        // A write over it is refused too (its size is not to be trusted); an install heals.
        assert!(matches!(
            store.write(&name(4), 0, b"new", 3),
            Err(StoreError::Corrupt { .. })
        ));
        store
            .install(
                &name(4),
                ObjMeta {
                    version: 5,
                    deleted: false,
                    size: 0,
                },
                b"xyz",
            )
            .unwrap();
        assert_eq!(&store.read(&name(4), 0, 3).unwrap().unwrap()[..], b"xyz");
    }

    #[test]
    fn what_a_crash_leaves_is_settled_at_open_by_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let (a, b) = (name(20), name(21));
        store.write(&a, 0, b"old", 1).unwrap();
        store.write(&b, 0, b"new", 1).unwrap();
        let (pa, pb) = (store.paths(&a).unwrap(), store.paths(&b).unwrap());
        // a: deleted at 2, the crash before its file went; b: written at 3 over a tombstone
        // of 2 the crash left.
        let keep = fs::read(&pa.obj).unwrap();
        store.delete(&a, 2).unwrap();
        fs::write(&pa.obj, keep).unwrap();
        store.delete(&b, 2).unwrap();
        let tomb = fs::read(&pb.tomb).unwrap();
        store.write(&b, 0, b"back", 3).unwrap();
        fs::write(&pb.tomb, tomb).unwrap();
        fs::write(with_suffix(&pa.obj, ".tmp"), b"half").unwrap();
        drop(store);
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            store.meta(&a).map(|m| (m.version, m.deleted)),
            Some((2, true))
        );
        assert_eq!(
            store.meta(&b).map(|m| (m.version, m.deleted)),
            Some((3, false))
        );
        assert_eq!(&store.read(&b, 0, 10).unwrap().unwrap()[..], b"back");
        assert!(!pa.obj.exists() && !pb.tomb.exists());
        assert!(!with_suffix(&pa.obj, ".tmp").exists());
        // A shard directory removed under a running store comes back with the next write.
        fs::remove_dir_all(pa.obj.parent().unwrap()).unwrap();
        store.write(&a, 0, b"again", 4).unwrap();
        assert_eq!(&store.read(&a, 0, 10).unwrap().unwrap()[..], b"again");
        // So does a delete of an object whose file went that way.
        fs::remove_file(&pa.obj).unwrap();
        store.delete(&a, 5).unwrap();
        assert_eq!(
            store.meta(&a).map(|m| (m.version, m.deleted)),
            Some((5, true))
        );
        assert!(pa.tomb.exists());
    }

    #[test]
    fn new_objects_take_spare_files_and_deletes_keep_the_file_as_the_tombstone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(store.make_spares(3).unwrap(), 3);
        let spare_inos: HashSet<u64> = fs::read_dir(dir.path().join("objects/spare"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().ino())
            .collect();
        let a = name(30);
        store.write(&a, 0, b"first", 1).unwrap();
        assert_eq!(store.spare_count(), 2);
        let p = store.paths(&a).unwrap();
        let ino = fs::metadata(&p.obj).unwrap().ino();
        assert!(spare_inos.contains(&ino), "the object took a spare's file");
        // A delete stamps that file and renames it; a write after it takes it back.
        store.delete(&a, 2).unwrap();
        assert!(!p.obj.exists());
        assert_eq!(fs::metadata(&p.tomb).unwrap().ino(), ino);
        assert_eq!(store.cut_tombstones(10).unwrap(), 1);
        assert_eq!(fs::metadata(&p.tomb).unwrap().len(), BLOCK);
        store.write(&a, 1, b"again", 3).unwrap();
        assert!(!p.tomb.exists());
        assert_eq!(fs::metadata(&p.obj).unwrap().ino(), ino);
        assert_eq!(&store.read(&a, 0, 10).unwrap().unwrap()[..], b"\0again");
        // A delete whose rename a crash lost: the stamped file is the tombstone at open.
        store.delete(&a, 4).unwrap();
        fs::rename(&p.tomb, &p.obj).unwrap();
        // A write that took a tombstone's file, whose rename a crash lost: the object.
        let d = name(33);
        store.write(&d, 0, b"kept", 1).unwrap();
        store.delete(&d, 2).unwrap();
        store.write(&d, 0, b"back", 3).unwrap();
        let pd = store.paths(&d).unwrap();
        fs::rename(&pd.obj, &pd.tomb).unwrap();
        // Removed objects' files go back to the pool, empty; spares survive a reopen.
        let b = name(31);
        let before = store.spare_count();
        store.write(&b, 0, b"stray", 1).unwrap();
        assert_eq!(store.spare_count(), before - 1);
        store.remove(&b).unwrap();
        assert_eq!(store.spare_count(), before);
        drop(store);
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            store.meta(&a).map(|m| (m.version, m.deleted)),
            Some((4, true))
        );
        assert!(p.tomb.exists() && !p.obj.exists());
        assert_eq!(&store.read(&d, 0, 10).unwrap().unwrap()[..], b"back");
        assert!(pd.obj.exists() && !pd.tomb.exists());
        assert_eq!(store.spare_count(), before);
        assert_eq!(
            store.usage(),
            Usage {
                objects: 1,
                bytes: 4
            }
        );
        store.make_spares(1).unwrap();
        let c = name(32);
        store.write(&c, 0, b"xyz", 1).unwrap();
        assert_eq!(&store.read(&c, 0, 10).unwrap().unwrap()[..], b"xyz");
        assert_eq!(store.spare_count(), before);
    }

    /// The journal's open segment (the newest).
    fn newest_segment(dir: &Path) -> PathBuf {
        let mut segs: Vec<PathBuf> = fs::read_dir(dir.join("journal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segs.sort();
        segs.pop().expect("a segment")
    }

    #[test]
    fn journaled_changes_come_back_whatever_their_files_lost() {
        let dir = tempfile::tempdir().unwrap();
        // No checkpoint while the test runs: the records are what brings the changes back.
        let store = ObjectStore::open_with(dir.path(), Duration::from_secs(3600)).unwrap();
        let (a, b, c, d) = (name(40), name(41), name(42), name(43));
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        store.write(&a, 0, &body, 1).unwrap();
        store.write(&a, 5000, b"patched", 2).unwrap();
        store.write(&b, 0, &body, 1).unwrap();
        store.truncate(&b, 4100, 2).unwrap();
        store.write(&c, 0, b"gone", 1).unwrap();
        store.delete(&c, 2).unwrap();
        store.write(&d, 0, b"stray", 1).unwrap();
        store.remove(&d).unwrap();
        let (pa, pb, pc) = (
            store.paths(&a).unwrap(),
            store.paths(&b).unwrap(),
            store.paths(&c).unwrap(),
        );
        drop(store);
        // What a power cut may leave of unsynced files: a's header and a block torn, b
        // never renamed into place, c's tombstone never written.
        let f = rw().open(&pa.obj).unwrap();
        f.write_all_at(&[0xEE; 100], 0).unwrap();
        f.write_all_at(&[0xEE; 300], DATA + 4990).unwrap();
        fs::remove_file(&pb.obj).unwrap();
        fs::remove_file(&pc.tomb).unwrap();
        // And the last group's write, cut short after its record.
        fs::OpenOptions::new()
            .append(true)
            .open(newest_segment(dir.path()))
            .unwrap()
            .write_all_at(b"SJR1\x05\0\0\0half", 0)
            .unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let mut want = body.clone();
        want[5000..5007].copy_from_slice(b"patched");
        assert_eq!(store.read(&a, 0, 20_000).unwrap().unwrap(), want);
        assert_eq!(store.meta(&a).map(|m| m.version), Some(2));
        assert_eq!(store.read(&b, 0, 20_000).unwrap().unwrap(), body[..4100]);
        assert_eq!(
            store.meta(&c).map(|m| (m.version, m.deleted)),
            Some((2, true))
        );
        assert!(pc.tomb.exists());
        assert_eq!(store.meta(&d), None);
        // Replayed, synced and trimmed: one empty segment is left.
        assert_eq!(store.journal_segments(), 1);
        assert_eq!(fs::metadata(newest_segment(dir.path())).unwrap().len(), 0);
    }

    #[test]
    fn a_change_synced_in_place_is_not_undone_by_older_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open_with(dir.path(), Duration::from_secs(3600)).unwrap();
        let (a, b) = (name(50), name(51));
        // Journaled, then overwritten by a large write and by an install, both in place.
        store.write(&a, 0, &[b'a'; 100], 1).unwrap();
        let big = vec![b'B'; DIRECT_MIN];
        store.write(&a, 0, &big, 2).unwrap();
        store.write(&b, 0, &[b'a'; 100], 1).unwrap();
        let meta = ObjMeta {
            version: 2,
            deleted: false,
            size: 50,
        };
        store.install(&b, meta, &[b'I'; 50]).unwrap();
        // A journaled change after them is redone on top.
        store.write(&a, 10, b"late", 3).unwrap();
        drop(store);
        let store = ObjectStore::open(dir.path()).unwrap();
        let mut want = big.clone();
        want[10..14].copy_from_slice(b"late");
        assert_eq!(store.read(&a, 0, big.len() as u64).unwrap().unwrap(), want);
        assert_eq!(store.meta(&a).map(|m| m.version), Some(3));
        assert_eq!(store.read(&b, 0, 200).unwrap().unwrap(), vec![b'I'; 50]);
        assert_eq!(store.meta(&b).map(|m| m.version), Some(2));
    }

    #[test]
    fn a_checkpoint_trims_the_journal_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open_with(dir.path(), Duration::from_secs(3600)).unwrap();
        for i in 0..50 {
            store
                .write(&name(60 + i), 0, format!("obj {i}").as_bytes(), 1)
                .unwrap();
        }
        assert!(fs::metadata(newest_segment(dir.path())).unwrap().len() > 0);
        store.checkpoint().unwrap();
        assert_eq!(store.journal_segments(), 1);
        assert_eq!(fs::metadata(newest_segment(dir.path())).unwrap().len(), 0);
        store.write(&name(60), 0, b"after", 2).unwrap();
        drop(store);
        let store = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            &store.read(&name(60), 0, 10).unwrap().unwrap()[..],
            b"after"
        );
        for i in 1..50 {
            let got = store.read(&name(60 + i), 0, 10).unwrap().unwrap();
            assert_eq!(got, format!("obj {i}").as_bytes());
        }
    }
}
