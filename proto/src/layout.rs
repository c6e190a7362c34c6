//! File striping: which object holds which byte of a file (Ceph's layout semantics).
//!
//! A file is cut into stripe units of `stripe_unit` bytes dealt round-robin over
//! `stripe_count` objects; once each object of that set holds `object_size` bytes the next
//! set of `stripe_count` objects starts. With the default layout (4 MiB objects, one stripe
//! unit per object, stripe count 1) byte `b` lives in object `b / 4 MiB` at `b % 4 MiB`.

use crate::limits::libc_consts::EINVAL;
use crate::mds::Layout;

/// Default object size: 4 MiB.
pub const DEFAULT_OBJECT_SIZE: u32 = 4 << 20;
/// Largest object size accepted.
pub const MAX_OBJECT_SIZE: u32 = 64 << 20;
/// Stripe units are multiples of this.
pub const STRIPE_ALIGN: u32 = 4096;
/// Most extents one object write (`WriteRequest` with its `more`) may carry.
pub const MAX_WRITE_EXTENTS: usize = 4096;

/// The layout new files get unless their directory says otherwise.
pub fn default_layout() -> Layout {
    Layout {
        object_size: DEFAULT_OBJECT_SIZE,
        stripe_unit: DEFAULT_OBJECT_SIZE,
        stripe_count: 1,
    }
}

/// Checks a layout; EINVAL when it cannot be used.
pub fn validate(l: &Layout) -> Result<(), i32> {
    let ok = l.stripe_unit >= STRIPE_ALIGN
        && l.stripe_unit.is_multiple_of(STRIPE_ALIGN)
        && l.object_size >= l.stripe_unit
        && l.object_size <= MAX_OBJECT_SIZE
        && l.object_size.is_multiple_of(l.stripe_unit)
        && l.stripe_count >= 1
        && l.stripe_count <= 256;
    if ok {
        Ok(())
    } else {
        Err(EINVAL)
    }
}

/// The virtual xattr holding a regular file's layout.
pub const FILE_LAYOUT_XATTR: &str = "shoal.layout";
/// The virtual xattr holding the layout a directory gives the files created in it.
pub const DIR_LAYOUT_XATTR: &str = "shoal.dir.layout";

/// One field of a layout, as its own virtual xattr (`shoal.layout.stripe_unit`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `object_size`
    ObjectSize,
    /// `stripe_unit`
    StripeUnit,
    /// `stripe_count`
    StripeCount,
}

const FIELDS: [(&str, Field); 3] = [
    ("object_size", Field::ObjectSize),
    ("stripe_unit", Field::StripeUnit),
    ("stripe_count", Field::StripeCount),
];

/// Which layout xattr `name` is: (a directory's?, one field or the whole layout). `None` for
/// any other name.
pub fn layout_xattr(name: &[u8]) -> Option<(bool, Option<Field>)> {
    let name = std::str::from_utf8(name).ok()?;
    for (prefix, dir) in [(DIR_LAYOUT_XATTR, true), (FILE_LAYOUT_XATTR, false)] {
        if name == prefix {
            return Some((dir, None));
        }
        if let Some(field) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
        {
            return FIELDS
                .iter()
                .find(|(n, _)| *n == field)
                .map(|(_, f)| (dir, Some(*f)));
        }
    }
    None
}

fn field_value(l: &Layout, f: Field) -> u32 {
    match f {
        Field::ObjectSize => l.object_size,
        Field::StripeUnit => l.stripe_unit,
        Field::StripeCount => l.stripe_count,
    }
}

/// A layout xattr's value: `object_size=N stripe_unit=N stripe_count=N`, or one number.
pub fn format_layout(l: &Layout, field: Option<Field>) -> String {
    match field {
        Some(f) => field_value(l, f).to_string(),
        None => FIELDS
            .iter()
            .map(|(n, f)| format!("{n}={}", field_value(l, *f)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `cur` changed by a layout xattr value: a number for one field, or `key=value` pairs
/// (any subset, space separated) for the whole layout. EINVAL if it does not parse or the
/// result is not a usable layout.
pub fn parse_layout(cur: &Layout, field: Option<Field>, value: &[u8]) -> Result<Layout, i32> {
    let text = std::str::from_utf8(value).map_err(|_| EINVAL)?;
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let mut l = *cur;
    let mut set = |f: Field, v: &str| -> Result<(), i32> {
        let v: u32 = v.trim().parse().map_err(|_| EINVAL)?;
        match f {
            Field::ObjectSize => l.object_size = v,
            Field::StripeUnit => l.stripe_unit = v,
            Field::StripeCount => l.stripe_count = v,
        }
        Ok(())
    };
    match field {
        Some(f) => set(f, text)?,
        None => {
            let mut any = false;
            for pair in text.split_whitespace() {
                let (k, v) = pair.split_once('=').ok_or(EINVAL)?;
                let f = FIELDS
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, f)| *f)
                    .ok_or(EINVAL)?;
                set(f, v)?;
                any = true;
            }
            if !any {
                return Err(EINVAL);
            }
        }
    }
    validate(&l)?;
    Ok(l)
}

/// The name of object `objno` of inode `ino`, as OSDs store it.
pub fn object_name(ino: u64, objno: u64) -> String {
    format!("{ino:016x}.{objno:08x}")
}

/// Parses an object name back into (ino, objno); None if it is not one.
pub fn parse_object_name(name: &str) -> Option<(u64, u64)> {
    let (ino, objno) = name.split_once('.')?;
    if ino.len() != 16 || objno.len() < 8 || objno.len() > 16 {
        return None;
    }
    Some((
        u64::from_str_radix(ino, 16).ok()?,
        u64::from_str_radix(objno, 16).ok()?,
    ))
}

/// A piece of a file range that lies in one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Object number within the file.
    pub objno: u64,
    /// Offset within the object.
    pub obj_off: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of this piece within the caller's buffer (relative to the range start).
    pub buf_off: u64,
}

/// Maps file bytes `[off, off+len)` to object extents, in file order. Adjacent pieces that
/// continue each other in the same object are merged.
pub fn file_to_extents(l: &Layout, off: u64, len: u64) -> Vec<Extent> {
    let su = l.stripe_unit as u64;
    let sc = l.stripe_count as u64;
    let per_object = (l.object_size / l.stripe_unit) as u64;
    let mut out: Vec<Extent> = Vec::new();
    let mut cur = off;
    let end = off.saturating_add(len);
    while cur < end {
        let blockno = cur / su;
        let in_block = cur % su;
        let stripeno = blockno / sc;
        let stripepos = blockno % sc;
        let objectset = stripeno / per_object;
        let objno = objectset * sc + stripepos;
        let obj_off = (stripeno % per_object) * su + in_block;
        let n = (su - in_block).min(end - cur);
        let buf_off = cur - off;
        match out.last_mut() {
            Some(last) if last.objno == objno && last.obj_off + last.len == obj_off => {
                last.len += n
            }
            _ => out.push(Extent {
                objno,
                obj_off,
                len: n,
                buf_off,
            }),
        }
        cur += n;
    }
    out
}

/// The file offset of byte `obj_off` of object `objno`.
pub fn object_to_file(l: &Layout, objno: u64, obj_off: u64) -> u64 {
    let su = l.stripe_unit as u64;
    let sc = l.stripe_count as u64;
    let per_object = (l.object_size / l.stripe_unit) as u64;
    let objectset = objno / sc;
    let stripepos = objno % sc;
    let stripeno = objectset * per_object + obj_off / su;
    (stripeno * sc + stripepos) * su + obj_off % su
}

/// How many bytes of object `objno` lie below file size `size`: the length the object
/// must be cut to when the file is truncated to `size` (0 means delete it).
pub fn object_len_below(l: &Layout, objno: u64, size: u64) -> u64 {
    let su = l.stripe_unit as u64;
    let per_object = (l.object_size / l.stripe_unit) as u64;
    let mut keep = 0;
    // File offsets grow with the object offset, so stop at the first unit at or past `size`.
    for unit in 0..per_object {
        let start = object_to_file(l, objno, unit * su);
        if start >= size {
            break;
        }
        keep = unit * su + (size - start).min(su);
    }
    keep
}

/// The lowest object number that can hold file offset `off` or any byte beyond it: the first
/// object of `off`'s object set (every object of an earlier set ends before it).
pub fn first_object_at(l: &Layout, off: u64) -> u64 {
    let set_bytes = l.object_size as u64 * l.stripe_count as u64;
    (off / set_bytes) * l.stripe_count as u64
}

/// An upper bound on the pieces [`file_to_extents`] makes of `len` bytes at `off`, computed
/// without making them: callers that would walk a huge sparse range ask the OSDs which
/// objects exist instead.
pub fn extents_bound(l: &Layout, len: u64) -> u64 {
    len / l.stripe_unit as u64 + 2
}

/// The pieces of object `objno` that lie in file bytes `[off, off+len)`, in object order.
/// Work is bounded by the object's stripe units, however large the range.
pub fn object_extents_in_range(l: &Layout, objno: u64, off: u64, len: u64) -> Vec<Extent> {
    let su = l.stripe_unit as u64;
    let per_object = (l.object_size / l.stripe_unit) as u64;
    let end = off.saturating_add(len);
    let mut out: Vec<Extent> = Vec::new();
    for unit in 0..per_object {
        let start = object_to_file(l, objno, unit * su);
        let (lo, hi) = (start.max(off), start.saturating_add(su).min(end));
        if lo >= hi {
            continue;
        }
        let obj_off = unit * su + (lo - start);
        match out.last_mut() {
            Some(last) if last.obj_off + last.len == obj_off => last.len += hi - lo,
            _ => out.push(Extent {
                objno,
                obj_off,
                len: hi - lo,
                buf_off: lo - off,
            }),
        }
    }
    out
}

/// The file ranges `[start, end)` that hold the first `size` bytes of object `objno`, in
/// file order.
pub fn object_file_ranges(l: &Layout, objno: u64, size: u64) -> Vec<(u64, u64)> {
    let su = l.stripe_unit as u64;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut obj_off = 0;
    while obj_off < size.min(l.object_size as u64) {
        let n = (su - obj_off % su).min(size - obj_off);
        let start = object_to_file(l, objno, obj_off);
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 += n,
            _ => out.push((start, start + n)),
        }
        obj_off += n;
    }
    out
}

/// The objects that hold any byte of `[from, to)`, each once, ascending.
pub fn objects_in_range(l: &Layout, from: u64, to: u64) -> Vec<u64> {
    if to <= from {
        return Vec::new();
    }
    let mut objs: Vec<u64> = file_to_extents(l, from, to - from)
        .iter()
        .map(|e| e.objno)
        .collect();
    objs.sort_unstable();
    objs.dedup();
    objs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lay(os: u32, su: u32, sc: u32) -> Layout {
        Layout {
            object_size: os,
            stripe_unit: su,
            stripe_count: sc,
        }
    }

    #[test]
    fn default_layout_is_one_object_per_4mib() {
        let l = default_layout();
        let e = file_to_extents(&l, (4 << 20) - 10, 20);
        assert_eq!(
            e,
            vec![
                Extent {
                    objno: 0,
                    obj_off: (4 << 20) - 10,
                    len: 10,
                    buf_off: 0
                },
                Extent {
                    objno: 1,
                    obj_off: 0,
                    len: 10,
                    buf_off: 10
                },
            ]
        );
        assert_eq!(object_len_below(&l, 0, 100), 100);
        assert_eq!(object_len_below(&l, 1, 100), 0);
        assert_eq!(object_len_below(&l, 0, 5 << 20), 4 << 20);
        assert_eq!(object_len_below(&l, 1, 5 << 20), 1 << 20);
    }

    #[test]
    fn striping_round_trips_and_covers_every_byte_once() {
        for l in [
            lay(16384, 4096, 3),
            lay(8192, 8192, 1),
            lay(16384, 4096, 1),
            lay(65536, 4096, 4),
        ] {
            validate(&l).unwrap();
            let total = 200_000u64;
            let mut seen = std::collections::HashSet::new();
            let mut covered = 0;
            for e in file_to_extents(&l, 1234, total) {
                for i in 0..e.len {
                    let f = object_to_file(&l, e.objno, e.obj_off + i);
                    assert_eq!(f, 1234 + e.buf_off + i, "layout {l:?}");
                    assert!(seen.insert((e.objno, e.obj_off + i)));
                }
                covered += e.len;
            }
            assert_eq!(covered, total);
        }
    }

    #[test]
    fn truncate_lengths_match_byte_ownership() {
        let l = lay(16384, 4096, 3);
        let size = 50_000;
        for objno in 0..12 {
            let keep = object_len_below(&l, objno, size);
            for b in 0..l.object_size as u64 {
                let below = object_to_file(&l, objno, b) < size;
                // Every byte below `keep` that maps under `size` is kept, none above it does.
                if b >= keep {
                    assert!(!below, "obj {objno} byte {b} keep {keep}");
                }
            }
            if keep > 0 {
                assert!(object_to_file(&l, objno, keep - 1) < size);
            }
        }
        assert_eq!(objects_in_range(&l, 0, 4096 * 4), vec![0, 1, 2]);
    }

    #[test]
    fn validation() {
        assert!(validate(&default_layout()).is_ok());
        assert_eq!(validate(&lay(4096, 8192, 1)), Err(EINVAL));
        assert_eq!(validate(&lay(12288, 8192, 1)), Err(EINVAL));
        assert_eq!(validate(&lay(8192, 4096, 0)), Err(EINVAL));
        assert_eq!(validate(&lay(8192, 1000, 1)), Err(EINVAL));
    }

    #[test]
    fn layout_xattrs_parse_and_format() {
        assert_eq!(layout_xattr(b"shoal.layout"), Some((false, None)));
        assert_eq!(
            layout_xattr(b"shoal.dir.layout.stripe_count"),
            Some((true, Some(Field::StripeCount)))
        );
        assert_eq!(layout_xattr(b"shoal.layout.pool"), None);
        assert_eq!(layout_xattr(b"user.x"), None);
        let d = default_layout();
        assert_eq!(
            format_layout(&d, None),
            "object_size=4194304 stripe_unit=4194304 stripe_count=1"
        );
        let l = parse_layout(&d, None, b"stripe_unit=65536 stripe_count=4").unwrap();
        assert_eq!(l, lay(4 << 20, 65536, 4));
        assert_eq!(format_layout(&l, Some(Field::StripeUnit)), "65536");
        assert_eq!(
            parse_layout(&l, Some(Field::ObjectSize), b"1048576").unwrap(),
            lay(1 << 20, 65536, 4)
        );
        for bad in [
            &b"stripe_unit=1000"[..],
            b"bogus=1",
            b"",
            b"stripe_count=x",
            b"object_size",
        ] {
            assert_eq!(parse_layout(&d, None, bad), Err(EINVAL), "{bad:?}");
        }
        assert_eq!(
            parse_layout(&d, Some(Field::StripeCount), b"0"),
            Err(EINVAL)
        );
    }

    #[test]
    fn object_pieces_match_the_file_mapping() {
        for l in [
            lay(1 << 20, 1 << 20, 1),
            lay(1 << 20, 64 << 10, 4),
            lay(64 << 10, 4096, 3),
        ] {
            for (off, len) in [
                (0, 5 << 20),
                (12345, 3 << 20),
                ((1 << 20) - 7, 9000),
                (7, 0),
            ] {
                let all = file_to_extents(&l, off, len);
                for objno in 0..16 {
                    let mut want: Vec<(u64, u64)> = all
                        .iter()
                        .filter(|e| e.objno == objno)
                        .map(|e| (e.obj_off, e.len))
                        .collect();
                    want.sort_unstable();
                    let got: Vec<(u64, u64)> = object_extents_in_range(&l, objno, off, len)
                        .iter()
                        .map(|e| (e.obj_off, e.len))
                        .collect();
                    let total = |v: &[(u64, u64)]| v.iter().map(|p| p.1).sum::<u64>();
                    assert_eq!(total(&got), total(&want), "{l:?} {off} {len} {objno}");
                    assert_eq!(got.first().map(|p| p.0), want.first().map(|p| p.0));
                }
            }
            // The file ranges of an object's bytes map back to that object, in order.
            for objno in 0..8 {
                let ranges = object_file_ranges(&l, objno, l.object_size as u64 - 5);
                let mut next = 0;
                for (a, b) in ranges {
                    for e in file_to_extents(&l, a, b - a) {
                        assert_eq!((e.objno, e.obj_off), (objno, next));
                        next += e.len;
                    }
                }
                assert_eq!(next, l.object_size as u64 - 5);
            }
        }
        // Far out: bounded work, no overflow.
        let l = default_layout();
        let top = (1u64 << 63) - 1;
        let objno = (top - 1) / (4 << 20);
        let e = object_extents_in_range(&l, objno, 0, top);
        assert_eq!(e.len(), 1);
        assert_eq!(object_file_ranges(&l, objno, 1)[0].0, objno * (4 << 20));
    }

    #[test]
    fn object_names() {
        let n = object_name(0x10000000001, 3);
        assert_eq!(n, "0000010000000001.00000003");
        assert_eq!(parse_object_name(&n), Some((0x10000000001, 3)));
        assert_eq!(parse_object_name("../etc/passwd"), None);
        assert_eq!(parse_object_name("zz"), None);
    }
}
