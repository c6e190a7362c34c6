//! Byte-range locks (fcntl, and flock as whole-file locks) held at the MDS, in the `locks`
//! column family under (ino, session, owner, start).
//!
//! Semantics are POSIX record locks per lock owner: a new lock replaces whatever the same
//! owner held over its range (splitting ranges as needed), unlocking cuts ranges, and
//! adjacent or overlapping ranges of the same kind merge. Two owners conflict when their
//! ranges overlap and either lock is a write lock. The owner is the kernel's lock owner on
//! one client session (a process's file table for fcntl, an open file for flock).

use std::collections::BTreeMap;

use prost::Message;
use shoal_proto::mds::{self as pb, LockKind};

use super::{fs, Txn};
use crate::command::{Applied, LockRecord};
use crate::error::MdsError;
use crate::store::{Cf, Db};

/// One owner's lock: bytes `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

/// A lock as stored, with its holder.
#[derive(Debug, Clone, Copy)]
struct Held {
    session: u64,
    owner: u64,
    range: Range,
}

fn key(ino: u64, session: u64, owner: u64, start: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    for part in [ino, session, owner, start] {
        k.extend_from_slice(&part.to_be_bytes());
    }
    k
}

fn word(k: &[u8], i: usize) -> Result<u64, MdsError> {
    k.get(i * 8..i * 8 + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| MdsError::Corrupt(format!("lock key of {} bytes", k.len())))
}

fn decode(k: &[u8], v: &[u8]) -> Result<(u64, Held), MdsError> {
    let rec = LockRecord::decode(v).map_err(|e| MdsError::Corrupt(format!("lock record: {e}")))?;
    let kind = LockKind::try_from(rec.kind)
        .map_err(|_| MdsError::Corrupt(format!("lock kind {}", rec.kind)))?;
    Ok((
        word(k, 0)?,
        Held {
            session: word(k, 1)?,
            owner: word(k, 2)?,
            range: Range {
                start: word(k, 3)?,
                end: rec.end,
                kind,
                pid: rec.pid,
            },
        },
    ))
}

/// Every lock on `ino`.
fn held_on(db: &Db, ino: u64) -> Result<Vec<Held>, MdsError> {
    let prefix = ino.to_be_bytes();
    db.scan(Cf::Locks, &prefix, &prefix)
        .map(|r| r.and_then(|(k, v)| decode(&k, &v).map(|(_, h)| h)))
        .collect()
}

fn conflicts(a: &Range, b: &Range) -> bool {
    a.start <= b.end && b.start <= a.end && (a.kind == LockKind::Write || b.kind == LockKind::Write)
}

/// One owner's ranges after setting `new` (kind `Unlock` cuts), sorted and merged.
pub fn apply(own: &[Range], new: Range) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(own.len() + 2);
    for r in own {
        if r.end < new.start || r.start > new.end {
            out.push(*r);
            continue;
        }
        if r.start < new.start {
            out.push(Range {
                end: new.start - 1,
                ..*r
            });
        }
        if r.end > new.end {
            out.push(Range {
                start: new.end + 1,
                ..*r
            });
        }
    }
    if new.kind != LockKind::Unlock {
        out.push(new);
    }
    out.sort_by_key(|r| r.start);
    let mut merged: Vec<Range> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(m) if m.kind == r.kind && m.end.saturating_add(1) >= r.start => {
                m.end = m.end.max(r.end);
                m.pid = new.pid;
            }
            _ => merged.push(r),
        }
    }
    merged
}

fn requested(r: &pb::LockRequest) -> Result<Range, MdsError> {
    let kind = LockKind::try_from(r.kind)
        .or_else(|_| fs(libc::EINVAL, format!("unknown lock kind {}", r.kind)))?;
    if r.start > r.end {
        return fs(libc::EINVAL, "lock range ends before it starts");
    }
    Ok(Range {
        start: r.start,
        end: r.end,
        kind,
        pid: r.pid,
    })
}

/// Applies a SetLock: EAGAIN when another owner holds a conflicting lock.
pub(super) fn set_lock(t: &mut Txn<'_>, r: &pb::LockRequest) -> Result<Applied, MdsError> {
    let new = requested(r)?;
    t.inode(r.ino)?;
    let held = held_on(t.db, r.ino)?;
    let mine = |h: &Held| h.session == r.session && h.owner == r.owner;
    if new.kind != LockKind::Unlock && held.iter().any(|h| !mine(h) && conflicts(&h.range, &new)) {
        return fs(libc::EAGAIN, "a conflicting lock is held");
    }
    let own: Vec<Range> = held.iter().filter(|h| mine(h)).map(|h| h.range).collect();
    for r0 in &own {
        t.delete(Cf::Locks, &key(r.ino, r.session, r.owner, r0.start));
    }
    for n in apply(&own, new) {
        let rec = LockRecord {
            end: n.end,
            kind: n.kind as i32,
            pid: n.pid,
        };
        t.put(
            Cf::Locks,
            &key(r.ino, r.session, r.owner, n.start),
            rec.encode_to_vec(),
        );
    }
    Ok(Applied::Done)
}

/// The first lock of another owner that conflicts with the request (kind `Unlock`: none).
pub(super) fn get_lock(db: &Db, r: &pb::LockRequest) -> Result<pb::LockReply, MdsError> {
    let want = requested(r)?;
    Txn::new(db).inode(r.ino)?;
    let found = held_on(db, r.ino)?
        .into_iter()
        .find(|h| !(h.session == r.session && h.owner == r.owner) && conflicts(&h.range, &want));
    Ok(match found {
        Some(h) => pb::LockReply {
            kind: h.range.kind as i32,
            start: h.range.start,
            end: h.range.end,
            pid: h.range.pid,
            session: h.session,
        },
        None => pb::LockReply::default(),
    })
}

/// Releases every lock of `session`.
pub(super) fn end_session(t: &mut Txn<'_>, session: u64) -> Result<Applied, MdsError> {
    let keys: Vec<Vec<u8>> =
        t.db.scan(Cf::Locks, &[], &[])
            .filter_map(|r| match r {
                Ok((k, _)) => (word(&k, 1).ok() == Some(session)).then(|| Ok(k.to_vec())),
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
    for k in keys {
        t.delete(Cf::Locks, &k);
    }
    Ok(Applied::Done)
}

/// Locks held per session.
pub(super) fn per_session(db: &Db) -> Result<BTreeMap<u64, u32>, MdsError> {
    let mut out = BTreeMap::new();
    for r in db.scan(Cf::Locks, &[], &[]) {
        let (k, _) = r?;
        *out.entry(word(&k, 1)?).or_default() += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, kind: LockKind) -> Range {
        Range {
            start,
            end,
            kind,
            pid: 7,
        }
    }

    #[test]
    fn an_owners_ranges_split_replace_and_merge() {
        use LockKind::{Read, Unlock, Write};
        let own = apply(&[], r(0, 99, Write));
        assert_eq!(own, vec![r(0, 99, Write)]);
        // A read lock in the middle splits the write lock in three.
        let own = apply(&own, r(10, 19, Read));
        assert_eq!(own, vec![r(0, 9, Write), r(10, 19, Read), r(20, 99, Write)]);
        // Unlocking across two ranges cuts both.
        let own = apply(&own, r(15, 29, Unlock));
        assert_eq!(own, vec![r(0, 9, Write), r(10, 14, Read), r(30, 99, Write)]);
        // Adjacent ranges of one kind merge.
        let own = apply(&own, r(10, 29, Write));
        assert_eq!(own, vec![r(0, 99, Write)]);
        // To the end of the file and beyond, then everything released.
        let own = apply(&own, r(50, u64::MAX, Read));
        assert_eq!(own, vec![r(0, 49, Write), r(50, u64::MAX, Read)]);
        assert_eq!(apply(&own, r(0, u64::MAX, Unlock)), vec![]);
    }

    #[test]
    fn conflicts_need_an_overlap_and_a_writer() {
        use LockKind::{Read, Write};
        assert!(conflicts(&r(0, 9, Write), &r(9, 20, Read)));
        assert!(!conflicts(&r(0, 9, Write), &r(10, 20, Write)));
        assert!(!conflicts(&r(0, 9, Read), &r(5, 20, Read)));
        assert!(conflicts(
            &r(0, u64::MAX, Read),
            &r(u64::MAX, u64::MAX, Write)
        ));
    }
}
