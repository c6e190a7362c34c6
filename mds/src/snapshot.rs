//! Snapshots: how a member that is behind the leader's compacted log gets the whole state.
//!
//! - Leader: raft-rs asks [`crate::store::RaftLog`] for a snapshot → a RocksDB checkpoint
//!   (hard links, consistent at the applied index) named `snap/out-*`. The transport streams
//!   the state column families from it in chunks (`RaftPeer.InstallSnapshot`) and deletes it.
//! - Receiver: [`Incoming`] checks every chunk and writes it to `snap/in-*`, synced; then the
//!   MsgSnapshot is stepped with data naming that file. When raft-rs hands the snapshot back in
//!   a Ready, [`crate::store::RaftLog::restore_snapshot`] replaces the state with the file's.
//!
//! What travels inside `Snapshot.data` is a local descriptor ([`Descriptor`]), never the state.
//!
//! Record format, in chunks and in files: `[cf u8][key len u32 BE][key][value len u32 BE][value]`,
//! where `cf` is the column family's position in [`Cf::ALL`] (never the Raft log's).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::MdsError;
use crate::store::{Cf, Db};

/// Column families that make up the state machine (everything but the Raft log).
pub fn state_cfs() -> impl Iterator<Item = Cf> {
    Cf::ALL.into_iter().filter(|cf| *cf != Cf::Raft)
}

/// Bytes of records per streamed chunk (about; a chunk always holds whole records).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Longest key or value a record may carry (the state holds nothing near this).
const MAX_FIELD: usize = 16 << 20;

/// What `Snapshot.data` names on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    /// A checkpoint this node made to send (`snap/out-*`).
    Out(String),
    /// A snapshot this node received (`snap/in-*`).
    In(String),
}

impl Descriptor {
    /// The bytes put in `Snapshot.data`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Descriptor::Out(n) => [b"out:".as_slice(), n.as_bytes()].concat(),
            Descriptor::In(n) => [b"in:".as_slice(), n.as_bytes()].concat(),
        }
    }

    /// Reads `Snapshot.data`; names are plain file names, never paths.
    pub fn decode(b: &[u8]) -> Result<Descriptor, MdsError> {
        let s = std::str::from_utf8(b)
            .map_err(|_| MdsError::Corrupt("snapshot descriptor is not UTF-8".into()))?;
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| MdsError::Corrupt(format!("snapshot descriptor {s:?}")))?;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(MdsError::Corrupt(format!("snapshot file name {name:?}")));
        }
        match kind {
            "out" => Ok(Descriptor::Out(name.to_string())),
            "in" => Ok(Descriptor::In(name.to_string())),
            _ => Err(MdsError::Corrupt(format!("snapshot descriptor {s:?}"))),
        }
    }
}

fn cf_code(cf: Cf) -> u8 {
    Cf::ALL.iter().position(|c| *c == cf).unwrap_or(0) as u8
}

fn state_cf(code: u8) -> Option<Cf> {
    Cf::ALL
        .get(code as usize)
        .copied()
        .filter(|cf| *cf != Cf::Raft)
}

/// One state record: column family, key, value.
pub type Record<'a> = (Cf, &'a [u8], &'a [u8]);

/// Appends one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, cf: Cf, key: &[u8], value: &[u8]) {
    out.push(cf_code(cf));
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// Splits `data` into records; anything malformed (a cut record, an unknown or Raft column
/// family) is an error naming what is wrong.
pub fn parse_records(mut data: &[u8]) -> Result<Vec<Record<'_>>, String> {
    fn field<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let len = data
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b) as usize)
            .ok_or("record cut inside a length")?;
        if len > MAX_FIELD {
            return Err(format!("record field of {len} bytes"));
        }
        let v = data.get(4..4 + len).ok_or("record cut inside a field")?;
        *data = &data[4 + len..];
        Ok(v)
    }
    let mut out = Vec::new();
    while let Some((&code, rest)) = data.split_first() {
        let cf = state_cf(code).ok_or_else(|| format!("record for column family {code}"))?;
        data = rest;
        let key = field(&mut data)?;
        let value = field(&mut data)?;
        out.push((cf, key, value));
    }
    Ok(out)
}

/// Makes a checkpoint of the whole database under `snap_dir` and returns its name.
pub fn checkpoint(db: &Db, snap_dir: &Path, index: u64) -> Result<String, MdsError> {
    std::fs::create_dir_all(snap_dir)?;
    let name = format!("out-{index}-{:016x}", rand::random::<u64>());
    db.checkpoint(&snap_dir.join(&name))?;
    Ok(name)
}

/// Streams the state column families of checkpoint `name` as chunks of records to `sink`
/// (which returns false when the receiver is gone). Returns (records, CRC-32 of all bytes).
pub fn read_checkpoint(
    snap_dir: &Path,
    name: &str,
    mut sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<(u64, u32), MdsError> {
    let db = Db::open_read_only(&snap_dir.join(name))?;
    let mut crc = crc32fast::Hasher::new();
    let mut records = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
    for cf in state_cfs() {
        for kv in db.scan(cf, b"", b"") {
            let (k, v) = kv?;
            encode_record(&mut chunk, cf, &k, &v);
            records += 1;
            if chunk.len() >= CHUNK_BYTES {
                crc.update(&chunk);
                if !sink(std::mem::take(&mut chunk)) {
                    return Err(MdsError::Shutdown);
                }
            }
        }
    }
    if !chunk.is_empty() {
        crc.update(&chunk);
        if !sink(chunk) {
            return Err(MdsError::Shutdown);
        }
    }
    Ok((records, crc.finalize()))
}

/// A snapshot being received: checked chunk by chunk, written to `snap/in-*.part`, and only
/// given its final name when the totals match. Dropped unfinished, the file is removed.
pub struct Incoming {
    dir: PathBuf,
    part: PathBuf,
    file: Option<File>,
    crc: crc32fast::Hasher,
    records: u64,
}

impl Incoming {
    /// Starts a new file under `snap_dir`.
    pub fn create(snap_dir: &Path) -> Result<Incoming, MdsError> {
        std::fs::create_dir_all(snap_dir)?;
        let part = snap_dir.join(format!("in-{:016x}.part", rand::random::<u64>()));
        let file = File::create(&part)?;
        Ok(Incoming {
            dir: snap_dir.to_path_buf(),
            part,
            file: Some(file),
            crc: crc32fast::Hasher::new(),
            records: 0,
        })
    }

    /// Checks and writes one chunk.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.records += parse_records(data)?.len() as u64;
        self.crc.update(data);
        let f = self.file.as_mut().ok_or("snapshot file already finished")?;
        f.write_all(data)
            .map_err(|e| format!("writing snapshot: {e}"))
    }

    /// Checks the totals, syncs the file and names it after the snapshot's (index, term).
    /// Returns the file name.
    pub fn finish(
        mut self,
        records: u64,
        crc: u32,
        index: u64,
        term: u64,
    ) -> Result<String, String> {
        let got = std::mem::take(&mut self.crc).finalize();
        if records != self.records || crc != got {
            return Err(format!(
                "snapshot totals differ: {} records crc {got:08x}, sender says {records} crc {crc:08x}",
                self.records
            ));
        }
        let f = self.file.take().ok_or("snapshot file already finished")?;
        f.sync_all().map_err(|e| format!("syncing snapshot: {e}"))?;
        let name = format!("in-{index}-{term}-{:016x}", rand::random::<u64>());
        std::fs::rename(&self.part, self.dir.join(&name))
            .map_err(|e| format!("naming snapshot: {e}"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing snapshot directory: {e}"))?;
        Ok(name)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// Replaces the state column families with the records of received snapshot file `name`.
/// Writes are not synced; the caller's final synced batch makes them durable (RocksDB's one
/// WAL keeps them in order).
pub fn load_state(db: &Db, snap_dir: &Path, name: &str) -> Result<(), MdsError> {
    const BATCH_BYTES: usize = 4 << 20;
    for cf in state_cfs() {
        let mut b = db.batch();
        let mut n = 0;
        for kv in db.scan(cf, b"", b"") {
            let (k, _) = kv?;
            b.delete(cf, &k);
            n += 1;
            if n % 10_000 == 0 {
                std::mem::replace(&mut b, db.batch()).commit(false)?;
            }
        }
        b.commit(false)?;
    }
    let mut r = BufReader::with_capacity(1 << 20, File::open(snap_dir.join(name))?);
    let mut b = db.batch();
    let mut pending = 0usize;
    let mut head = [0u8; 5];
    loop {
        // Records are read one by one: [cf][key len] then key, [value len], value.
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let cf = state_cf(head[0])
            .ok_or_else(|| MdsError::Corrupt(format!("snapshot {name}: bad column family")))?;
        let key = read_field(
            &mut r,
            u32::from_be_bytes([head[1], head[2], head[3], head[4]]),
        )
        .map_err(|e| MdsError::Corrupt(format!("snapshot {name}: {e}")))?;
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| MdsError::Corrupt(format!("snapshot {name}: {e}")))?;
        let value = read_field(&mut r, u32::from_be_bytes(len))
            .map_err(|e| MdsError::Corrupt(format!("snapshot {name}: {e}")))?;
        b.put(cf, &key, &value);
        pending += key.len() + value.len();
        if pending >= BATCH_BYTES {
            std::mem::replace(&mut b, db.batch()).commit(false)?;
            pending = 0;
        }
    }
    b.commit(false)
}

fn read_field(r: &mut impl Read, len: u32) -> std::io::Result<Vec<u8>> {
    let len = len as usize;
    if len > MAX_FIELD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("field of {len} bytes"),
        ));
    }
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Removes what an earlier run left under `snap_dir` (checkpoints being sent, partial and
/// received files), except the file `keep`.
pub fn clean(snap_dir: &Path, keep: Option<&str>) {
    let Ok(rd) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if Some(name.to_string_lossy().as_ref()) == keep {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Removes received snapshot files once one is installed (partial ones still being written
/// and checkpoints being sent stay).
pub fn remove_received(snap_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("in-") && !name.ends_with(".part") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A digest of the state column families and the applied index, to compare members.
pub fn state_digest(db: &Db) -> Result<(u64, u64), MdsError> {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut applied = 0;
    for cf in state_cfs() {
        for kv in db.scan(cf, b"", b"") {
            let (k, v) = kv?;
            if cf == Cf::Meta && &*k == b"applied" {
                applied = v.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b));
                continue;
            }
            h.write_u8(cf_code(cf));
            h.write(&k);
            h.write(&v);
        }
    }
    Ok((applied, h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_are_refused() {
        let mut b = Vec::new();
        encode_record(&mut b, Cf::Inodes, b"k1", b"v1");
        encode_record(&mut b, Cf::Sessions, b"", b"value");
        let r = parse_records(&b).unwrap();
        assert_eq!(
            r,
            vec![
                (Cf::Inodes, b"k1".as_slice(), b"v1".as_slice()),
                (Cf::Sessions, b"".as_slice(), b"value".as_slice())
            ]
        );
        assert!(parse_records(&b[..b.len() - 1]).is_err(), "cut record");
        let mut raft = Vec::new();
        encode_record(&mut raft, Cf::Raft, b"hs", b"x");
        assert!(parse_records(&raft).is_err(), "the Raft log is never state");
        assert!(parse_records(&[200, 0, 0, 0, 0]).is_err());
        assert!(Descriptor::decode(b"in:../etc").is_err());
        assert!(Descriptor::decode(b"in:a/b").is_err());
        assert_eq!(
            Descriptor::decode(&Descriptor::In("in-1".into()).encode()).unwrap(),
            Descriptor::In("in-1".into())
        );
    }

    #[test]
    fn checkpoint_streams_into_another_database() {
        let dir = tempfile::tempdir().unwrap();
        let src = Db::open(&dir.path().join("a")).unwrap();
        let mut b = src.batch();
        for i in 0..5000u32 {
            b.put(Cf::Inodes, &i.to_be_bytes(), &vec![7u8; 300]);
        }
        b.put(Cf::Meta, b"applied", &42u64.to_be_bytes());
        b.put(Cf::Raft, b"hs", b"not state");
        b.commit(true).unwrap();
        let snap = dir.path().join("snap");
        let name = checkpoint(&src, &snap, 42).unwrap();
        let mut inc = Incoming::create(&snap).unwrap();
        let mut chunks = 0;
        let (records, crc) = read_checkpoint(&snap, &name, |c| {
            chunks += 1;
            inc.write(&c).is_ok()
        })
        .unwrap();
        assert_eq!(records, 5001);
        assert!(chunks > 1, "1.5 MB of records come in more than one chunk");
        // Wrong totals are refused.
        let bad = Incoming::create(&snap).unwrap();
        assert!(bad.finish(1, 0, 42, 1).is_err());
        let file = inc.finish(records, crc, 42, 1).unwrap();

        let dst = Db::open(&dir.path().join("b")).unwrap();
        let mut b = dst.batch();
        b.put(Cf::Inodes, b"stale", b"gone after install");
        b.commit(false).unwrap();
        load_state(&dst, &snap, &file).unwrap();
        assert_eq!(dst.get(Cf::Inodes, b"stale").unwrap(), None);
        assert_eq!(state_digest(&src).unwrap(), state_digest(&dst).unwrap());
        assert_eq!(state_digest(&dst).unwrap().0, 42);
        assert_eq!(dst.get(Cf::Raft, b"hs").unwrap(), None);
        clean(&snap, Some(&file));
        assert!(snap.join(&file).exists());
        assert!(!snap.join(&name).exists());
    }
}
