//! Directory listings the mount takes itself, of directories whose entries it knows all of
//! under a live lease (see `Client::start_listing`), and the offsets the kernel gets for
//! their entries.
//!
//! An offset names the listing and the entry: [`LOCAL`] set, the listing's number above bit
//! 32, the entry's index + 3 below ("." and ".." are 1 and 2). The MDS's cookies count up from
//! 3 in each directory and never reach [`LOCAL`], so an offset says which of the two it came
//! from even on another handle of the directory: nfsd opens a directory anew for each of its
//! READDIRs and seeks to where the last one ended. A listing whose handles all closed is
//! kept for [`KEEP`] after its last use, for such a reopen to go on in it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::mds::DirEntry;

/// Set in the offsets of listings taken here.
pub const LOCAL: u64 = 1 << 62;
/// Listing numbers wrap at this many bits (30: far more listings than are ever kept).
const ID_BITS: u32 = 30;
/// A listing no open handle took is kept this long after its last use.
const KEEP: Duration = Duration::from_secs(30);
/// Nor more of them than this (the least recently used go first).
const CLOSED_MAX: usize = 256;

/// One listing's entries, in offset order.
pub type Entries = Arc<Vec<DirEntry>>;

struct Listing {
    entries: Entries,
    /// When it was last used after the handle that took it closed.
    closed: Option<Instant>,
}

/// The listings taken here.
#[derive(Default)]
pub struct Listings {
    next: u64,
    by_id: HashMap<u64, Listing>,
    /// The listing each open handle took last.
    by_handle: HashMap<u64, u64>,
}

/// The offset of entry `index` of listing `id`.
pub fn offset(id: u64, index: usize) -> u64 {
    LOCAL | (id << 32) | (index as u64 + 3)
}

/// The listing an offset names and the index of the entry after the one it names; None if
/// it is not a local listing's offset.
pub fn position(offset: u64) -> Option<(u64, usize)> {
    if offset & LOCAL == 0 {
        return None;
    }
    let id = (offset >> 32) & ((1 << ID_BITS) - 1);
    let at = (offset & 0xffff_ffff).saturating_sub(2);
    Some((id, at as usize))
}

impl Listings {
    /// Keeps `entries` as the listing handle `fh` just took; returns its number. The listing
    /// the handle took before is as if closed.
    pub fn start(&mut self, fh: u64, entries: Entries) -> u64 {
        let now = Instant::now();
        self.prune(now);
        let id = self.next;
        self.next = (self.next + 1) & ((1 << ID_BITS) - 1);
        self.by_id.insert(
            id,
            Listing {
                entries,
                closed: None,
            },
        );
        if let Some(old) = self.by_handle.insert(fh, id) {
            self.closed(old, now);
        }
        id
    }

    /// Handle `fh` went on (its first call was not listed here): what it took before is as if
    /// closed.
    pub fn restart(&mut self, fh: u64) {
        if let Some(old) = self.by_handle.remove(&fh) {
            self.closed(old, Instant::now());
        }
    }

    /// Listing `id`, if still kept.
    pub fn get(&mut self, id: u64) -> Option<Entries> {
        let l = self.by_id.get_mut(&id)?;
        if let Some(c) = &mut l.closed {
            *c = Instant::now();
        }
        Some(l.entries.clone())
    }

    /// Handle `fh` closed.
    pub fn close(&mut self, fh: u64) {
        if let Some(id) = self.by_handle.remove(&fh) {
            let now = Instant::now();
            self.closed(id, now);
            self.prune(now);
        }
    }

    fn closed(&mut self, id: u64, now: Instant) {
        // Another open handle may have taken it since its number wrapped: not likely, and a
        // listing dropped early only makes a later call fail (EINVAL), not list wrongly.
        if let Some(l) = self.by_id.get_mut(&id) {
            l.closed = Some(now);
        }
    }

    /// Drops closed listings unused for [`KEEP`], and the least recently used past
    /// [`CLOSED_MAX`].
    fn prune(&mut self, now: Instant) {
        self.by_id
            .retain(|_, l| l.closed.is_none_or(|c| now.duration_since(c) < KEEP));
        let mut closed: Vec<(Instant, u64)> = self
            .by_id
            .iter()
            .filter_map(|(id, l)| l.closed.map(|c| (c, *id)))
            .collect();
        if closed.len() > CLOSED_MAX {
            closed.sort_unstable();
            for (_, id) in &closed[..closed.len() - CLOSED_MAX] {
                self.by_id.remove(id);
            }
        }
    }

    /// Listings kept (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Entries {
        Arc::new(
            (0..n)
                .map(|i| DirEntry {
                    name: format!("e{i}").into_bytes().into(),
                    ino: i as u64 + 100,
                    kind: 1,
                    cookie: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn offsets_name_their_listing_and_never_look_like_mds_cookies() {
        for (id, index) in [(0, 0), (7, 99_999), ((1 << ID_BITS) - 1, 5)] {
            let o = offset(id, index);
            assert!(o < 1 << 63, "a valid loff_t");
            assert!(o > 2);
            assert_eq!(position(o), Some((id, index + 1)), "goes on after it");
        }
        // MDS cookies (and ".", "..") are not local.
        for cookie in [0, 1, 2, 3, 1 << 40] {
            assert_eq!(position(cookie), None);
        }
    }

    #[test]
    fn a_listing_outlives_its_handle_for_a_reopen_then_goes() {
        let mut l = Listings::default();
        let a = l.start(1, entries(3));
        let b = l.start(2, entries(5));
        assert_ne!(a, b);
        assert_eq!(l.get(a).unwrap().len(), 3);
        // Closed: still there for a reopen that seeks into it.
        l.close(1);
        assert_eq!(l.get(a).unwrap().len(), 3);
        // A handle's new listing (rewinddir) closes its old one.
        let c = l.start(2, entries(1));
        assert_eq!(l.get(c).unwrap().len(), 1);
        assert!(l.get(b).is_some());
        // Past the cap, the least recently used closed listings go; open ones stay.
        for fh in 10..10 + CLOSED_MAX as u64 + 10 {
            l.start(fh, entries(1));
            l.close(fh);
        }
        assert!(l.get(a).is_none() && l.get(b).is_none());
        assert!(l.get(c).is_some(), "handle 2 is open");
        assert!(l.len() <= CLOSED_MAX + 1);
    }
}
