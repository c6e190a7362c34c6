//! The object store: one file per object on local disk, with a crc32 per 4 KiB block beside it.
//!
//! Layout under the OSD's data directory:
//! `objects/<shard>/<name>` holds the object's bytes, `objects/<shard>/<name>.crc` holds one
//! little-endian crc32 per [`BLOCK`] of the object (the last block's crc covers only the bytes
//! the object has). `<shard>` is two hex digits of the name's hash, to keep directories small.
//!
//! Invariants:
//! - Every byte handed out was checked against its block's crc; a mismatch, or a crc file that
//!   does not cover the object, is [`StoreError::Corrupt`] (EIO to the application).
//! - A write or truncate returns only after data and crcs are fdatasync'd.
//! - Operations on one object are serialized by a lock stripe, so a reader never sees a block
//!   whose data and crc are from different writes.
//!
//! Known limit: a crash between the data write and the crc write leaves the touched blocks
//! unreadable (EIO), not silently old or new; replication (a later layer) repairs them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;
use shoal_proto::layout::{parse_object_name, MAX_OBJECT_SIZE};
use shoal_proto::placement::stable_hash;

/// Checksum granularity.
pub const BLOCK: u64 = 4096;
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

/// Objects on one local directory.
pub struct ObjectStore {
    root: PathBuf,
    locks: Vec<RwLock<()>>,
    objects: AtomicU64,
    bytes: AtomicU64,
}

/// Counters the OSD reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Number of objects.
    pub objects: u64,
    /// Sum of object sizes.
    pub bytes: u64,
}

fn crc_of_zeros(len: u64) -> u32 {
    const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    crc32fast::hash(&ZEROS[..len as usize])
}

impl ObjectStore {
    /// Opens (creating if needed) the store under `dir`, counting what is there.
    pub fn open(dir: &Path) -> io::Result<ObjectStore> {
        let root = dir.join("objects");
        fs::create_dir_all(&root)?;
        let (mut objects, mut bytes) = (0, 0);
        for shard in fs::read_dir(&root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(shard.path())? {
                let e = e?;
                let name = e.file_name();
                let name = name.to_string_lossy();
                if parse_object_name(&name).is_some() {
                    objects += 1;
                    bytes += e.metadata()?.len();
                }
            }
        }
        Ok(ObjectStore {
            root,
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            objects: AtomicU64::new(objects),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// Current object count and bytes.
    pub fn usage(&self) -> Usage {
        Usage {
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The directory objects live under (for capacity queries).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn paths(&self, object: &str) -> Result<(PathBuf, PathBuf, usize)> {
        if parse_object_name(object).is_none() {
            return Err(StoreError::BadName(object.to_string()));
        }
        let h = stable_hash(object.as_bytes());
        let dir = self.root.join(format!("{:02x}", h & 0xff));
        Ok((
            dir.join(object),
            dir.join(format!("{object}.crc")),
            (h >> 8) as usize % LOCK_STRIPES,
        ))
    }

    fn check_range(offset: u64, len: u64) -> Result<()> {
        let max = MAX_OBJECT_SIZE as u64;
        if offset.checked_add(len).is_none_or(|end| end > max) {
            return Err(StoreError::TooLarge { offset, len, max });
        }
        Ok(())
    }

    /// Writes `data` at `offset`, zero-filling any gap; returns the object's new size.
    pub fn write(&self, object: &str, offset: u64, data: &[u8]) -> Result<u64> {
        Self::check_range(offset, data.len() as u64)?;
        let (path, crc_path, stripe) = self.paths(object)?;
        let _guard = self.locks[stripe]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let io = |source| StoreError::Io {
            object: object.to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let existed = path.exists();
        let opts = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .clone()
        };
        let file = opts().open(&path).map_err(io)?;
        let crcs = opts().open(&crc_path).map_err(io)?;
        let old_size = file.metadata().map_err(io)?.len();
        if !existed {
            self.objects.fetch_add(1, Ordering::Relaxed);
        }
        if data.is_empty() {
            return Ok(old_size);
        }
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
                    let old = self.read_verified(object, &file, &crcs, b, old_size)?;
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
        file.write_all_at(data, offset).map_err(io)?;
        crcs.write_all_at(&sums, first * 4).map_err(io)?;
        file.sync_data().map_err(io)?;
        crcs.sync_data().map_err(io)?;
        self.bytes.fetch_add(new_size - old_size, Ordering::Relaxed);
        Ok(new_size)
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
        let corrupt = |detail: String| StoreError::Corrupt {
            object: object.to_string(),
            detail,
        };
        let io = |source| StoreError::Io {
            object: object.to_string(),
            source,
        };
        file.read_exact_at(buf, first * BLOCK)
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => corrupt("object shorter than expected".into()),
                _ => io(e),
            })?;
        let nblocks = buf.len().div_ceil(BLOCK as usize);
        let mut sums = vec![0u8; nblocks * 4];
        crcs.read_exact_at(&mut sums, first * 4)
            .map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => corrupt("checksums missing".into()),
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
                return Err(corrupt(format!(
                    "checksum mismatch in block {} (stored {want:08x}, computed {got:08x})",
                    first + i as u64
                )));
            }
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`. `None` if the object does not exist; shorter than
    /// `len` where the object ends.
    pub fn read(&self, object: &str, offset: u64, len: u64) -> Result<Option<Bytes>> {
        Self::check_range(offset, len)?;
        let (path, crc_path, stripe) = self.paths(object)?;
        let _guard = self.locks[stripe].read().unwrap_or_else(|p| p.into_inner());
        let io = |source| StoreError::Io {
            object: object.to_string(),
            source,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let crcs = match File::open(&crc_path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::Corrupt {
                    object: object.to_string(),
                    detail: "checksum file missing".into(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().map_err(io)?.len();
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

    /// Sets the object's size, dropping or zero-filling its tail. Creates it if missing.
    pub fn truncate(&self, object: &str, size: u64) -> Result<()> {
        Self::check_range(size, 0)?;
        let (path, crc_path, stripe) = self.paths(object)?;
        let _guard = self.locks[stripe]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let io = |source| StoreError::Io {
            object: object.to_string(),
            source,
        };
        let exists = path.exists();
        if !exists && size == 0 {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let opts = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .clone()
        };
        let file = opts().open(&path).map_err(io)?;
        let crcs = opts().open(&crc_path).map_err(io)?;
        let old_size = file.metadata().map_err(io)?.len();
        if old_size == size {
            return Ok(());
        }
        if !exists {
            self.objects.fetch_add(1, Ordering::Relaxed);
        }
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
                let mut block = self.read_verified(object, &file, &crcs, b, old_size)?;
                block.resize((BLOCK).min(size - b * BLOCK) as usize, 0);
                sums.extend_from_slice(&crc32fast::hash(&block).to_le_bytes());
                b += 1;
            }
            while b * BLOCK < size {
                let len = BLOCK.min(size - b * BLOCK);
                sums.extend_from_slice(&crc_of_zeros(len).to_le_bytes());
                b += 1;
            }
        }
        file.set_len(size).map_err(io)?;
        crcs.write_all_at(&sums, first * 4).map_err(io)?;
        crcs.set_len(size.div_ceil(BLOCK) * 4).map_err(io)?;
        file.sync_data().map_err(io)?;
        crcs.sync_data().map_err(io)?;
        if size > old_size {
            self.bytes.fetch_add(size - old_size, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(
                (old_size - size).min(self.bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        Ok(())
    }

    /// Removes the object; removing a missing object is not an error.
    pub fn delete(&self, object: &str) -> Result<()> {
        let (path, crc_path, stripe) = self.paths(object)?;
        let _guard = self.locks[stripe]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let io = |source| StoreError::Io {
            object: object.to_string(),
            source,
        };
        let size = match fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        for p in [&crc_path, &path] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        if let Some(size) = size {
            let _ = self
                .objects
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(size))
                });
        }
        Ok(())
    }

    /// Where an object's data file lives (tests use it to damage objects on purpose).
    pub fn data_path(&self, object: &str) -> Result<PathBuf> {
        Ok(self.paths(object)?.0)
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
    fn random_writes_and_truncates_match_a_reference() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(0);
        let mut reference: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for step in 0..300 {
            if step % 17 == 16 {
                let size = rng.gen_range(0..200_000u64);
                store.truncate(&obj, size).unwrap();
                reference.resize(size as usize, 0);
            } else {
                let off = rng.gen_range(0..150_000u64);
                let len = rng.gen_range(0..20_000usize);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let size = store.write(&obj, off, &data).unwrap();
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
    fn a_flipped_byte_is_an_error_never_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let obj = name(1);
        let data = vec![0x5au8; 3 * BLOCK as usize + 100];
        store.write(&obj, 0, &data).unwrap();
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
            store.write(&obj, BLOCK + 1, b"x"),
            Err(StoreError::Corrupt { .. })
        ));
        // A full overwrite of the block repairs it.
        store
            .write(&obj, BLOCK, &vec![1u8; BLOCK as usize])
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
            store.write(&name(2), MAX_OBJECT_SIZE as u64, b"a"),
            Err(StoreError::TooLarge { .. })
        ));
        store.delete(&name(2)).unwrap();
        store.write(&name(3), 10, b"abc").unwrap();
        let reopened = ObjectStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.usage(),
            Usage {
                objects: 1,
                bytes: 13
            }
        );
        reopened.delete(&name(3)).unwrap();
        assert_eq!(
            reopened.usage(),
            Usage {
                objects: 0,
                bytes: 0
            }
        );
    }
}
