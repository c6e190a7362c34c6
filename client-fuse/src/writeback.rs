//! File data written under a write lease and not yet sent to the OSDs.
//!
//! [`Extents`] holds one file's dirty bytes as non-overlapping ranges, each a slice of the
//! buffer a write brought (no copy on the way in); a newer write replaces the bytes it
//! overlaps. A flush sends them as contiguous runs, each a rope of those buffers (large
//! pieces are sent as they are, small neighbours copied together), so many small sequential
//! writes go out as a few large ones.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use shoal_proto::bulk::Rope;

/// What one piece costs beyond its bytes (map entry, buffer header), for the memory limits.
const PIECE_COST: u64 = 128;

/// Pieces shorter than this are copied together into one buffer when sent.
const JOIN_BELOW: usize = 64 << 10;

/// Keeps `part` of a piece being cut: a copy when it is less than half of it, so cut pieces
/// never hold on to much more memory than they count.
fn keep(piece: &Bytes, part: Bytes) -> Bytes {
    if part.len() * 2 < piece.len() {
        Bytes::copy_from_slice(&part)
    } else {
        part
    }
}

/// One file's dirty bytes: ranges that do not overlap, keyed by file offset.
#[derive(Debug, Default)]
pub struct Extents {
    map: BTreeMap<u64, Bytes>,
    bytes: u64,
}

impl Extents {
    /// Nothing dirty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many bytes are held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What holding them costs in memory, about: the bytes and a little per piece.
    pub fn cost(&self) -> u64 {
        self.bytes + self.map.len() as u64 * PIECE_COST
    }

    /// The end of the last byte held (0 when empty).
    pub fn end(&self) -> u64 {
        self.map
            .last_key_value()
            .map_or(0, |(off, d)| off + d.len() as u64)
    }

    /// Puts `data` at `off`; it replaces whatever it overlaps.
    pub fn insert(&mut self, off: u64, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        // Pieces starting before `end` that reach past `off` overlap; walk them from the last.
        let overlapping: Vec<u64> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(s, d)| *s + d.len() as u64 > off)
            .map(|(s, _)| *s)
            .collect();
        for start in overlapping {
            let Some(old) = self.map.remove(&start) else {
                continue;
            };
            self.bytes -= old.len() as u64;
            let old_end = start + old.len() as u64;
            if start < off {
                let head = keep(&old, old.slice(..(off - start) as usize));
                self.bytes += head.len() as u64;
                self.map.insert(start, head);
            }
            if old_end > end {
                let tail = keep(&old, old.slice((end - start) as usize..));
                self.bytes += tail.len() as u64;
                self.map.insert(end, tail);
            }
        }
        self.bytes += data.len() as u64;
        self.map.insert(off, data);
    }

    /// The pieces held within `[off, end)`, clipped to it, in file order.
    pub fn within(&self, off: u64, end: u64) -> Vec<(u64, Bytes)> {
        let first = self
            .map
            .range(..=off)
            .next_back()
            .filter(|(s, d)| *s + d.len() as u64 > off)
            .map(|(s, _)| *s)
            .unwrap_or(off);
        self.map
            .range(first..end)
            .filter_map(|(&s, d)| {
                let (a, b) = (s.max(off), (s + d.len() as u64).min(end));
                (a < b).then(|| (a, d.slice((a - s) as usize..(b - s) as usize)))
            })
            .collect()
    }

    /// Contiguous runs of what is held, each as a rope of the pieces' own buffers; pieces
    /// under [`JOIN_BELOW`] next to each other are copied together, so a run of many small
    /// writes goes as a few buffers.
    pub fn runs(&self) -> Vec<(u64, Rope)> {
        let mut runs: Vec<(u64, Rope)> = Vec::new();
        let mut small = BytesMut::new();
        let mut run_end = None;
        for (&s, d) in &self.map {
            if run_end != Some(s) {
                if let Some((_, rope)) = runs.last_mut() {
                    rope.push(small.split().freeze());
                }
                runs.push((s, Rope::default()));
            }
            let Some((_, rope)) = runs.last_mut() else {
                continue;
            };
            if d.len() < JOIN_BELOW {
                small.extend_from_slice(d);
            } else {
                rope.push(small.split().freeze());
                rope.push(d.clone());
            }
            run_end = Some(s + d.len() as u64);
        }
        if let Some((_, rope)) = runs.last_mut() {
            rope.push(small.split().freeze());
        }
        runs
    }
}

/// Whether `pieces` (in any order, overlapping or not) cover all of `[off, end)`.
pub fn covers(pieces: &[(u64, Bytes)], off: u64, end: u64) -> bool {
    let mut spans: Vec<(u64, u64)> = pieces
        .iter()
        .map(|(s, d)| (*s, s + d.len() as u64))
        .collect();
    spans.sort_unstable();
    let mut reached = off;
    for (a, b) in spans {
        if a > reached {
            break;
        }
        reached = reached.max(b);
    }
    reached >= end
}

/// `base` (the bytes of `[off, off + len)` as read, possibly shorter) with `pieces` laid over
/// it in order, later ones winning; missing bytes read as zeros.
pub fn overlay(base: Bytes, off: u64, len: u64, pieces: &[(u64, Bytes)]) -> Bytes {
    if pieces.is_empty() {
        return base;
    }
    let mut buf = BytesMut::zeroed(len as usize);
    let keep = base.len().min(len as usize);
    buf[..keep].copy_from_slice(&base[..keep]);
    for (at, data) in pieces {
        let Some(rel) = at.checked_sub(off).filter(|&r| r < len) else {
            continue;
        };
        let n = data.len().min((len - rel) as usize);
        buf[rel as usize..rel as usize + n].copy_from_slice(&data[..n]);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(byte: u8, n: usize) -> Bytes {
        Bytes::from(vec![byte; n])
    }

    /// The file as the extents say, `len` bytes from 0, holes as `.`.
    fn image(e: &Extents, len: u64) -> Vec<u8> {
        let mut v = vec![b'.'; len as usize];
        for (s, d) in e.within(0, len) {
            v[s as usize..s as usize + d.len()].copy_from_slice(&d);
        }
        v
    }

    #[test]
    fn a_newer_write_replaces_what_it_overlaps_and_bytes_are_counted_once() {
        let mut e = Extents::default();
        e.insert(0, b(b'a', 10));
        e.insert(20, b(b'b', 10));
        e.insert(5, b(b'c', 20));
        assert_eq!(image(&e, 32), b"aaaaaccccccccccccccccccccbbbbb..".to_vec());
        assert_eq!(e.bytes(), 30);
        e.insert(2, b(b'd', 2));
        assert_eq!(e.bytes(), 30);
        assert_eq!(&image(&e, 8), b"aaddaccc");
        let before = e.cost();
        e.insert(0, b(b'e', 40));
        assert_eq!(e.bytes(), 40);
        assert!(e.cost() < before, "one piece over several costs less");
        assert_eq!(e.cost(), 40 + PIECE_COST);
        assert_eq!(e.within(0, 100).len(), 1, "one piece covers all");
        assert_eq!(e.end(), 40);
    }

    #[test]
    fn within_clips_pieces_to_the_range() {
        let mut e = Extents::default();
        e.insert(10, b(b'a', 10));
        e.insert(30, b(b'b', 10));
        let got = e.within(15, 35);
        assert_eq!(got, vec![(15, b(b'a', 5)), (30, b(b'b', 5))]);
        assert!(e.within(20, 30).is_empty(), "the gap holds nothing");
        assert!(e.within(0, 10).is_empty());
    }

    #[test]
    fn runs_join_contiguous_pieces_and_keep_gaps() {
        let mut e = Extents::default();
        for i in 0..4u64 {
            e.insert(i * 4, b(b'a' + i as u8, 4));
        }
        e.insert(100, b(b'z', 3));
        let runs = e.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].0, 0);
        assert_eq!(runs[0].1.join(), Bytes::from_static(b"aaaabbbbccccdddd"));
        assert_eq!(
            runs[0].1.chunks().len(),
            1,
            "small pieces are copied together"
        );
        assert_eq!(runs[1].0, 100);
        assert_eq!(runs[1].1.join(), b(b'z', 3));
    }

    #[test]
    fn large_pieces_of_a_run_are_sent_as_they_are() {
        let big = JOIN_BELOW;
        let mut e = Extents::default();
        let pieces = [
            b(b'a', big),
            b(b'b', 10),
            b(b'c', 20),
            b(b'd', big + 1),
            b(b'e', 5),
        ];
        let mut at = 0u64;
        for p in &pieces {
            e.insert(at, p.clone());
            at += p.len() as u64;
        }
        let runs = e.runs();
        assert_eq!(runs.len(), 1);
        let rope = &runs[0].1;
        assert_eq!(&rope.join()[..], &pieces.concat()[..]);
        let lens: Vec<usize> = rope.chunks().iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![big, 30, big + 1, 5]);
        let e0 = e.within(0, 1)[0].1.as_ptr();
        assert_eq!(rope.chunks()[0].as_ptr(), e0, "a large piece is not copied");
    }

    #[test]
    fn covers_needs_every_byte_of_the_range() {
        let p = [(10, b(b'a', 5)), (0, b(b'b', 10)), (12, b(b'c', 8))];
        assert!(covers(&p, 0, 20));
        assert!(covers(&p, 3, 18));
        assert!(!covers(&p, 0, 21), "one byte past the end");
        assert!(!covers(&[(0, b(b'a', 4)), (5, b(b'b', 4))], 0, 9), "a gap");
        assert!(!covers(&[], 0, 1));
    }

    #[test]
    fn overlay_lays_pieces_over_a_short_base() {
        let got = overlay(
            Bytes::from_static(b"xxxx"),
            100,
            8,
            &[(102, b(b'a', 2)), (105, b(b'b', 10)), (90, b(b'c', 5))],
        );
        assert_eq!(&got[..], b"xxaa\0bbb");
        let same = Bytes::from_static(b"base");
        assert_eq!(overlay(same.clone(), 0, 4, &[]), same);
    }
}
