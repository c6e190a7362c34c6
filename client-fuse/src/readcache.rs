//! File data this mount read from the OSDs, kept for small reads (random 4 KiB reads,
//! O_DIRECT ones included) while the mount holds the file's read lease.
//!
//! A small read fetches the aligned [`BLOCK`] around it and keeps it. A kept block answers a
//! later read only if it was asked for after the mount's unbroken lease on the file began
//! (the caller passes that instant) and after this mount last changed the file's data on the
//! OSDs (a write, a flush of kept writes, a cut or a hole: [`ReadCache::changing`]). Another
//! mount cannot change the data without revoking the lease first (its write takes the write
//! lease, which is exclusive, or sends its size before it returns, which revokes), so a block
//! never answers with data older than a write that returned anywhere. Blocks are dropped
//! least recently used first past the capacity (`-o readcache=SIZE`, 0: none).
//!
//! A file whose fetched blocks seldom answer a second read (random reads over a file much
//! larger than the cache) stops being fetched a block at a time for a while: its small reads
//! ask the OSDs for their own bytes alone ([`ReadCache::worth_fetching`]), which moves a
//! sixteenth of the bytes off the disks and through the network.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A small read fetches and keeps the block of this size around it (aligned to it).
pub const BLOCK: u64 = 64 << 10;
/// What a mount keeps unless told otherwise.
pub const DEFAULT_BYTES: u64 = 256 << 20;
/// Bookkeeping per block, counted against the capacity with its bytes.
const OVERHEAD: u64 = 128;
/// Past this many files changed here, changes older than [`FLOOR_KEEP`] are forgotten;
/// blocks asked for before the newest forgotten one are never kept. (A few MiB at most; at
/// 4,096, writing 5,000 small files within a minute dropped every block kept before the
/// 4,097th, the written files' data included.)
const FLOORS_MAX: usize = 65_536;
const FLOOR_KEEP: Duration = Duration::from_secs(60);
/// Blocks of a file fetched before its reuse is judged.
const JUDGE_AFTER: u32 = 64;
/// A file whose kept blocks answered fewer than one read in this many fetches is read
/// without fetching blocks...
const REUSE_MIN_RATIO: u32 = 4;
/// ...for this many small reads, then judged again.
const BYPASS_READS: u32 = 2048;
/// Files whose reuse is tracked at most (the tracking starts over past it).
const REUSE_FILES_MAX: usize = 4096;

/// Kept blocks of files' data.
#[derive(Debug)]
pub struct ReadCache {
    capacity: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (inode, block number) -> block.
    blocks: BTreeMap<(u64, u64), Block>,
    /// Use order: tick -> key; the first is the least recently used.
    order: BTreeMap<u64, (u64, u64)>,
    tick: u64,
    bytes: u64,
    /// When this mount last changed each file's data.
    floors: HashMap<u64, Instant>,
    /// The newest floor forgotten.
    forgotten: Option<Instant>,
    /// Files with changes under way here: (changes started so far, changes not finished).
    changing: HashMap<u64, (u64, u32)>,
    /// How files' fetched blocks get reused.
    reuse: HashMap<u64, Reuse>,
}

/// A file's fetched blocks and the reads they answered since it was last judged; or, when
/// `bypass` is above 0, the small reads left that ask for their own bytes alone.
#[derive(Debug, Default, Clone, Copy)]
struct Reuse {
    fetched: u32,
    hits: u32,
    bypass: u32,
}

#[derive(Debug)]
struct Block {
    data: Bytes,
    /// When the read that brought it was sent.
    sent: Instant,
    tick: u64,
}

fn cost(data: &Bytes) -> u64 {
    data.len() as u64 + OVERHEAD
}

impl Inner {
    /// Whether data of `ino` read by a request sent at `sent` is as new as this mount's
    /// changes to it.
    fn after_changes(&self, ino: u64, sent: Instant) -> bool {
        self.floors.get(&ino).is_none_or(|f| sent > *f) && self.forgotten.is_none_or(|f| sent > f)
    }

    fn remove(&mut self, key: (u64, u64)) {
        if let Some(b) = self.blocks.remove(&key) {
            self.order.remove(&b.tick);
            self.bytes -= cost(&b.data);
        }
    }

    fn remove_file(&mut self, ino: u64) {
        let keys: Vec<_> = self
            .blocks
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.remove(k);
        }
    }

    fn evict_to(&mut self, capacity: u64) {
        while self.bytes > capacity {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(b) = self.blocks.remove(&key) {
                self.bytes -= cost(&b.data);
            }
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

/// Marks a file's data changed when dropped: when the change finished, failed or was given
/// up (its requests may still land).
pub struct Changing<'a> {
    cache: &'a ReadCache,
    ino: u64,
    /// Which of the file's changes here this is.
    number: u64,
    /// Block 0 as the change leaves it on the OSDs, once it landed (see
    /// [`Changing::wrote_whole`]).
    whole: Option<Bytes>,
}

impl Changing<'_> {
    /// The change landed, and it wrote the whole file, `data`, no larger than a block: it is
    /// kept as the file's block 0 when the change ends, unless another change of the file
    /// started here meanwhile (which of the two landed last is not known).
    pub fn wrote_whole(&mut self, data: &[u8]) {
        if data.len() as u64 <= BLOCK && !data.is_empty() {
            // Its own buffer: a kept block does not hold on to a larger one.
            self.whole = Some(Bytes::copy_from_slice(data));
        }
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.cache.changed(self.ino);
        let mut g = self.cache.inner();
        let alone = match g.changing.get_mut(&self.ino) {
            Some((started, unfinished)) => {
                // No other change of the file started here since this one, nor is under way.
                let alone = *started == self.number && *unfinished == 1;
                *unfinished -= 1;
                if *unfinished == 0 {
                    g.changing.remove(&self.ino);
                }
                alone
            }
            None => false,
        };
        drop(g);
        if let Some(data) = self.whole.take().filter(|_| alone) {
            // After the floor `changed` just set: kept as if read now. A change that started
            // before this one and is still under way drops it when it ends.
            self.cache.put(self.ino, 0, data, Instant::now());
        }
    }
}

impl ReadCache {
    /// A cache of at most `capacity` bytes (0: keeps nothing).
    pub fn new(capacity: u64) -> ReadCache {
        ReadCache {
            capacity: AtomicU64::new(capacity),
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the capacity, dropping blocks past it.
    pub fn set_capacity(&self, capacity: u64) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.inner().evict_to(capacity);
    }

    /// Whether it keeps anything: room for one block at least (a smaller cache would only
    /// make small reads fetch whole blocks).
    pub fn enabled(&self) -> bool {
        self.capacity.load(Ordering::Relaxed) >= BLOCK + OVERHEAD
    }

    /// Bytes kept, bookkeeping included.
    pub fn bytes(&self) -> u64 {
        self.inner().bytes
    }

    /// Block `idx` of file `ino` if it holds at least `len` bytes and was asked for after
    /// `after` and after this mount's last change of the file's data.
    pub fn get(&self, ino: u64, idx: u64, after: Instant, len: u64) -> Option<Bytes> {
        let mut g = self.inner();
        let b = g.blocks.get(&(ino, idx))?;
        let (sent, tick, short) = (b.sent, b.tick, (b.data.len() as u64) < len);
        if sent <= after || !g.after_changes(ino, sent) || short {
            g.remove((ino, idx));
            return None;
        }
        let fresh = g.next_tick();
        g.order.remove(&tick);
        g.order.insert(fresh, (ino, idx));
        if let Some(r) = g.reuse.get_mut(&ino) {
            r.hits = r.hits.saturating_add(1);
        }
        let b = g.blocks.get_mut(&(ino, idx))?;
        b.tick = fresh;
        Some(b.data.clone())
    }

    /// Whether a small read of file `ino` that the kept blocks cannot answer should fetch
    /// and keep its whole block (false while the file's blocks seldom answered a second
    /// read: see the module docs). Counts the read.
    pub fn worth_fetching(&self, ino: u64) -> bool {
        let mut g = self.inner();
        match g.reuse.get_mut(&ino) {
            Some(r) if r.bypass > 0 => {
                r.bypass -= 1;
                false
            }
            _ => true,
        }
    }

    /// Keeps block `idx` of file `ino`, read by a request sent at `sent`.
    pub fn put(&self, ino: u64, idx: u64, data: Bytes, sent: Instant) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        if data.is_empty() || cost(&data) > capacity {
            return;
        }
        let mut g = self.inner();
        if !g.after_changes(ino, sent) {
            return;
        }
        g.remove((ino, idx));
        if g.reuse.len() >= REUSE_FILES_MAX && !g.reuse.contains_key(&ino) {
            g.reuse.clear();
        }
        let r = g.reuse.entry(ino).or_default();
        r.fetched += 1;
        if r.fetched >= JUDGE_AFTER {
            if r.hits.saturating_mul(REUSE_MIN_RATIO) < r.fetched {
                r.bypass = BYPASS_READS;
            }
            (r.fetched, r.hits) = (0, 0);
        }
        let tick = g.next_tick();
        g.bytes += cost(&data);
        g.order.insert(tick, (ino, idx));
        g.blocks.insert((ino, idx), Block { data, sent, tick });
        g.evict_to(capacity);
    }

    /// This mount is changing file `ino`'s data on the OSDs: what was read before the
    /// returned guard drops is not kept.
    pub fn changing(&self, ino: u64) -> Changing<'_> {
        let mut g = self.inner();
        let e = g.changing.entry(ino).or_insert((0, 0));
        e.0 += 1;
        e.1 += 1;
        let number = e.0;
        drop(g);
        Changing {
            cache: self,
            ino,
            number,
            whole: None,
        }
    }

    /// This mount changed file `ino`'s data on the OSDs: what was read before now is not kept.
    pub fn changed(&self, ino: u64) {
        let mut g = self.inner();
        let now = Instant::now();
        g.remove_file(ino);
        g.floors.insert(ino, now);
        if g.floors.len() > FLOORS_MAX {
            let old = now.checked_sub(FLOOR_KEEP).unwrap_or(now);
            let newest_old = g.floors.values().filter(|f| **f < old).max().copied();
            g.floors.retain(|_, f| *f >= old);
            g.forgotten = g.forgotten.max(newest_old);
            if g.floors.len() > FLOORS_MAX {
                g.floors.clear();
                g.forgotten = Some(now);
            }
        }
    }

    /// Frees what is kept of file `ino` (its lease went).
    pub fn forget(&self, ino: u64) {
        self.inner().remove_file(ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(b: u8, len: usize) -> Bytes {
        Bytes::from(vec![b; len])
    }

    #[test]
    fn a_block_answers_only_reads_under_the_lease_it_was_read_in_and_after_changes_here() {
        let c = ReadCache::new(1 << 20);
        let before = Instant::now();
        let sent = Instant::now();
        c.put(1, 0, block(1, 100), sent);
        assert_eq!(c.get(1, 0, before, 100), Some(block(1, 100)));
        assert_eq!(c.get(1, 0, before, 101), None, "too short for the read");
        c.put(1, 0, block(1, 100), sent);
        // A lease that began after the read: the block is stale and goes.
        assert_eq!(c.get(1, 0, Instant::now(), 1), None);
        assert_eq!(c.bytes(), 0);
        // A change here drops the file's blocks and refuses reads sent before it.
        c.put(1, 0, block(1, 100), Instant::now());
        c.put(2, 0, block(2, 100), Instant::now());
        let early = Instant::now();
        drop(c.changing(1));
        assert_eq!(c.get(1, 0, before, 1), None);
        c.put(1, 0, block(1, 100), early);
        assert_eq!(
            c.get(1, 0, before, 1),
            None,
            "a read sent before the change"
        );
        assert_eq!(
            c.get(2, 0, before, 1),
            Some(block(2, 100)),
            "other files stay"
        );
        c.put(1, 1, block(3, 10), Instant::now());
        assert_eq!(c.get(1, 1, before, 10), Some(block(3, 10)));
        c.forget(1);
        assert_eq!(c.get(1, 1, before, 10), None);
    }

    #[test]
    fn the_least_recently_used_blocks_go_past_the_capacity() {
        let c = ReadCache::new(3 * (1000 + OVERHEAD));
        let before = Instant::now();
        for i in 0..3 {
            c.put(7, i, block(i as u8, 1000), Instant::now());
        }
        assert!(c.get(7, 0, before, 1).is_some());
        c.put(7, 3, block(3, 1000), Instant::now());
        assert!(
            c.get(7, 1, before, 1).is_none(),
            "the least recently used went"
        );
        for i in [0, 2, 3] {
            assert!(c.get(7, i, before, 1).is_some(), "block {i}");
        }
        assert_eq!(c.bytes(), 3 * (1000 + OVERHEAD));
        c.set_capacity(1000 + OVERHEAD);
        assert_eq!(c.bytes(), 1000 + OVERHEAD);
        assert!(!c.enabled(), "no room for a whole block");
        c.set_capacity(BLOCK + OVERHEAD);
        assert!(c.enabled());
        c.set_capacity(0);
        assert!(!c.enabled());
        c.put(7, 9, block(9, 1), Instant::now());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_file_whose_blocks_are_seldom_read_twice_is_read_without_blocks_for_a_while() {
        let c = ReadCache::new(1 << 30);
        let before = Instant::now();
        // Sequential small reads: each block answers the reads after the first in it.
        for i in 0..(2 * JUDGE_AFTER as u64) {
            assert!(c.worth_fetching(1));
            c.put(1, i, block(1, 10), Instant::now());
            for _ in 0..3 {
                assert!(c.get(1, i, before, 1).is_some());
            }
        }
        assert!(c.worth_fetching(1), "reused blocks keep being fetched");
        // Random reads: no block answers a second read.
        for i in 0..JUDGE_AFTER as u64 {
            assert!(c.worth_fetching(2), "read {i}");
            c.put(2, i, block(2, 10), Instant::now());
        }
        for _ in 0..BYPASS_READS {
            assert!(!c.worth_fetching(2));
        }
        // Then judged again.
        assert!(c.worth_fetching(2));
        assert!(c.worth_fetching(1), "other files are judged on their own");
    }

    #[test]
    fn forgotten_changes_refuse_every_read_sent_before_them() {
        let c = ReadCache::new(1 << 20);
        let early = Instant::now();
        for ino in 0..=FLOORS_MAX as u64 {
            c.changed(ino);
        }
        // Too recent to forget one by one: all were forgotten at once.
        c.put(1_000_000, 0, block(1, 10), early);
        assert_eq!(c.bytes(), 0);
        c.put(1_000_000, 0, block(1, 10), Instant::now());
        assert!(c.get(1_000_000, 0, early, 1).is_some());
    }
}
