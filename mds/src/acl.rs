//! POSIX access control lists as the kernel hands them over: the `system.posix_acl_access` and
//! `system.posix_acl_default` xattrs.
//!
//! The kernel checks permissions against them (the mount negotiates `FUSE_POSIX_ACL`); the state
//! machine keeps them consistent with the mode bits, as a local filesystem does:
//! - a new inode under a directory with a default ACL inherits it, restricted by the requested
//!   mode, instead of having the umask applied; a new directory also inherits the default ACL;
//! - chmod rewrites the owner, mask (or group) and other entries of the access ACL;
//! - setting an access ACL sets the mode bits it implies, and one that says no more than the
//!   mode bits is not stored.
//!
//! Value layout: a little-endian `u32` version (2), then entries of `u16` tag, `u16` permission
//! bits and `u32` id, ordered by tag and id.

/// The access ACL's xattr name.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// A directory's default ACL's xattr name.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// The id the owner, owning group, mask and other entries carry.
const UNDEFINED_ID: u32 = u32::MAX;

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A valid ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

/// What a new inode gets from its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// Its permission bits (with any setuid, setgid and sticky bits asked for).
    pub perm: u32,
    /// Its access ACL, when the inherited one says more than `perm`.
    pub access: Option<Vec<u8>>,
    /// Its default ACL (directories only).
    pub default: Option<Vec<u8>>,
}

impl Acl {
    /// Parses and checks an xattr value; `None` when it is malformed or not a valid ACL
    /// (wrong version, entries out of order, a missing required entry, bad permission bits).
    pub fn parse(b: &[u8]) -> Option<Acl> {
        let version = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        let body = &b[4..];
        if version != VERSION || body.is_empty() || !body.len().is_multiple_of(8) {
            return None;
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        valid(&entries).then_some(Acl { entries })
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The mode bits (0o777) the ACL implies, and whether it says more than they can
    /// (named users or groups, or a mask).
    pub fn mode(&self) -> (u32, bool) {
        let mut mode = 0;
        let mut extended = false;
        for e in &self.entries {
            let p = u32::from(e.perm);
            match e.tag {
                USER_OBJ => mode |= p << 6,
                GROUP_OBJ => mode |= p << 3,
                OTHER => mode |= p,
                // The mask comes after the owning group: it stands for the group bits.
                MASK => {
                    mode = (mode & !0o070) | p << 3;
                    extended = true;
                }
                _ => extended = true,
            }
        }
        (mode, extended)
    }

    /// Restricts a freshly inherited ACL by the mode a creator asked for; returns the new
    /// inode's mode (the bits above 0o777 kept from `mode`) and whether the ACL says more.
    fn restrict(&mut self, mode: u32) -> (u32, bool) {
        let extended = self.each_class(mode, |perm, bits| *perm &= bits);
        ((mode & !0o777) | self.mode().0, extended)
    }

    /// Rewrites the owner, mask (or owning group when there is no mask) and other entries
    /// from new mode bits, as chmod does.
    pub fn chmod(&mut self, mode: u32) {
        self.each_class(mode, |perm, bits| *perm = bits);
    }

    /// Calls `op` with the owner, mask (or owning group when there is no mask) and other
    /// entries and the matching rwx bits of `mode`; returns whether other entries exist.
    fn each_class(&mut self, mode: u32, op: impl Fn(&mut u16, u16)) -> bool {
        let group_tag = if self.has(MASK) { MASK } else { GROUP_OBJ };
        let mut others = false;
        for e in self.entries.iter_mut() {
            let bits = match e.tag {
                USER_OBJ => mode >> 6,
                OTHER => mode,
                t if t == group_tag => mode >> 3,
                _ => {
                    others = true;
                    continue;
                }
            };
            op(&mut e.perm, (bits & 7) as u16);
        }
        others
    }

    fn has(&self, tag: u16) -> bool {
        self.entries.iter().any(|e| e.tag == tag)
    }
}

/// The kernel's rules: one owner, owning group and other entry; named users, then named
/// groups, each ascending by id; a mask whenever there are named entries; only rwx bits.
fn valid(entries: &[Entry]) -> bool {
    // Tags in the order they must come, and whether each may repeat.
    const ORDER: [(u16, bool); 6] = [
        (USER_OBJ, false),
        (USER, true),
        (GROUP_OBJ, false),
        (GROUP, true),
        (MASK, false),
        (OTHER, false),
    ];
    let mut at = 0;
    let mut last: Option<Entry> = None;
    let mut named = false;
    for e in entries {
        if e.perm & !7 != 0 {
            return false;
        }
        let Some(pos) = ORDER.iter().position(|(t, _)| *t == e.tag) else {
            return false;
        };
        if pos < at {
            return false;
        }
        if pos == at {
            if let Some(prev) = last.filter(|p| p.tag == e.tag) {
                // A repeat: only named entries, with ids strictly ascending.
                if !ORDER[pos].1 || e.id <= prev.id {
                    return false;
                }
            }
        }
        if ORDER[pos].1 {
            named = true;
        } else if e.id != UNDEFINED_ID && e.id != 0 {
            // Some tools leave 0 in the id of the unnamed entries; the kernel ignores it.
            return false;
        }
        at = pos;
        last = Some(*e);
    }
    let count = |t: u16| entries.iter().filter(|e| e.tag == t).count();
    count(USER_OBJ) == 1
        && count(GROUP_OBJ) == 1
        && count(OTHER) == 1
        && count(MASK) <= 1
        && (!named || count(MASK) == 1)
}

/// What a new inode of the given kind gets under a directory whose default ACL is
/// `parent_default` (`None` if it has none): the umask applies only without one. A default ACL
/// that does not parse counts as none.
pub fn inherit(parent_default: Option<&[u8]>, perm: u32, umask: u32, dir: bool) -> Inherited {
    let parsed = parent_default.and_then(|v| Acl::parse(v).map(|a| (v, a)));
    match parsed {
        None => Inherited {
            perm: perm & !(umask & 0o777),
            access: None,
            default: None,
        },
        Some((raw, mut acl)) => {
            let (perm, extended) = acl.restrict(perm);
            Inherited {
                perm,
                access: extended.then(|| acl.encode()),
                default: dir.then(|| raw.to_vec()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    fn acl(entries: &[Entry]) -> Acl {
        Acl {
            entries: entries.to_vec(),
        }
    }

    /// user::rwx user:1000:r-x group::r-x group:50:rwx mask::rwx other::---
    fn extended() -> Acl {
        acl(&[
            e(USER_OBJ, 7, UNDEFINED_ID),
            e(USER, 5, 1000),
            e(GROUP_OBJ, 5, UNDEFINED_ID),
            e(GROUP, 7, 50),
            e(MASK, 7, UNDEFINED_ID),
            e(OTHER, 0, UNDEFINED_ID),
        ])
    }

    fn minimal(mode: u32) -> Acl {
        acl(&[
            e(USER_OBJ, ((mode >> 6) & 7) as u16, UNDEFINED_ID),
            e(GROUP_OBJ, ((mode >> 3) & 7) as u16, UNDEFINED_ID),
            e(OTHER, (mode & 7) as u16, UNDEFINED_ID),
        ])
    }

    #[test]
    fn values_round_trip_and_bad_ones_are_refused() {
        let a = extended();
        assert_eq!(Acl::parse(&a.encode()), Some(a.clone()));
        let v = a.encode();
        assert_eq!(Acl::parse(&v[..v.len() - 1]), None, "torn entry");
        assert_eq!(Acl::parse(&v[..4]), None, "no entries");
        assert_eq!(Acl::parse(&[]), None);
        let mut wrong_version = v.clone();
        wrong_version[0] = 1;
        assert_eq!(Acl::parse(&wrong_version), None);
        // Named entries need a mask.
        let no_mask = acl(&[
            e(USER_OBJ, 7, UNDEFINED_ID),
            e(USER, 5, 1000),
            e(GROUP_OBJ, 5, UNDEFINED_ID),
            e(OTHER, 0, UNDEFINED_ID),
        ]);
        assert_eq!(Acl::parse(&no_mask.encode()), None);
        // Out of order, duplicated, unsorted ids, bad bits.
        let mut swapped = extended();
        swapped.entries.swap(0, 1);
        assert_eq!(Acl::parse(&swapped.encode()), None);
        let mut twice = extended();
        twice.entries.insert(0, e(USER_OBJ, 7, UNDEFINED_ID));
        assert_eq!(Acl::parse(&twice.encode()), None);
        let mut unsorted = extended();
        unsorted.entries.insert(2, e(USER, 1, 999));
        assert_eq!(Acl::parse(&unsorted.encode()), None);
        let mut sorted = extended();
        sorted.entries.insert(2, e(USER, 1, 1001));
        assert!(Acl::parse(&sorted.encode()).is_some());
        let mut bits = extended();
        bits.entries[0].perm = 8;
        assert_eq!(Acl::parse(&bits.encode()), None);
        assert!(Acl::parse(&minimal(0o640).encode()).is_some());
    }

    #[test]
    fn the_mode_an_acl_implies() {
        assert_eq!(minimal(0o640).mode(), (0o640, false));
        // With a mask, the group bits are the mask's.
        let mut a = extended();
        a.entries[4].perm = 4;
        assert_eq!(a.mode(), (0o740, true));
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other() {
        let mut a = extended();
        a.chmod(0o751);
        assert_eq!(a.mode(), (0o751, true));
        // The owning group and named entries keep their bits; the mask limits them.
        assert_eq!(a.entries[2].perm, 5);
        assert_eq!(a.entries[3].perm, 7);
        let mut m = minimal(0o777);
        m.chmod(0o604);
        assert_eq!(m, minimal(0o604));
    }

    #[test]
    fn new_inodes_inherit_the_default_acl_restricted_by_their_mode() {
        // No default ACL: the umask applies.
        let plain = inherit(None, 0o4777, 0o022, false);
        assert_eq!(
            plain,
            Inherited {
                perm: 0o4755,
                access: None,
                default: None
            }
        );
        // An extended default ACL: no umask; the mask takes the group bits of the mode.
        let d = extended().encode();
        let file = inherit(Some(&d), 0o666, 0o077, false);
        assert_eq!(file.perm, 0o660);
        let access = Acl::parse(file.access.as_deref().unwrap()).unwrap();
        assert_eq!(access.mode(), (0o660, true));
        assert_eq!(
            access.entries[1],
            e(USER, 5, 1000),
            "named entries unchanged"
        );
        assert_eq!(file.default, None, "files get no default ACL");
        let sub = inherit(Some(&d), 0o2777, 0o077, true);
        assert_eq!(sub.perm, 0o2770);
        assert_eq!(sub.default.as_deref(), Some(&d[..]));
        // A default ACL of mode bits only: no access ACL is stored, still no umask.
        let m = minimal(0o750).encode();
        let f = inherit(Some(&m), 0o666, 0o077, false);
        assert_eq!((f.perm, f.access), (0o640, None));
        // A corrupt default ACL counts as none.
        assert_eq!(inherit(Some(b"junk"), 0o666, 0o022, false).perm, 0o644);
    }
}
