//! File data: large files, random offsets, sparse files past 4 GiB, truncate, fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use rand::{Rng, RngCore, SeedableRng};
use shoal_fstests::{aio, fallocate, open_direct, TestCluster};

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[test]
fn a_256_mib_file_reads_back_byte_exact() {
    let c = TestCluster::start();
    let path = c.path("big");
    let chunk = 1 << 20;
    let mut f = File::create(&path).unwrap();
    for i in 0..256u64 {
        f.write_all(&random_bytes(i, chunk)).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(&path).unwrap().len(), 256 << 20);
    // A fresh open drops the kernel's cached pages, so these bytes come from the OSDs.
    let mut f = File::open(&path).unwrap();
    let mut buf = vec![0u8; chunk];
    for i in 0..256u64 {
        f.read_exact(&mut buf).unwrap();
        assert!(buf == random_bytes(i, chunk), "MiB {i} differs");
    }
    assert_eq!(f.read(&mut buf).unwrap(), 0, "no bytes past the end");
    // 64 objects of 4 MiB, three copies each, spread over all three OSDs.
    let objects = c.object_files();
    assert_eq!(objects.len(), 64 * 3);
    for osd in ["osd.0", "osd.1", "osd.2"] {
        assert!(
            objects.iter().any(|p| p.starts_with(c.data.join(osd))),
            "{osd} holds no object"
        );
    }
}

#[test]
fn random_writes_match_a_local_reference() {
    let c = TestCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let ref_path = dir.path().join("ref");
    let reference = File::create(&ref_path).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(c.path("rand"))
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    const SPAN: u64 = 24 << 20;
    for _ in 0..600 {
        let off = rng.gen_range(0..SPAN);
        let len = rng.gen_range(1..300_000usize);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        f.write_all_at(&data, off).unwrap();
        reference.write_all_at(&data, off).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let want = fs::read(&ref_path).unwrap();
    let got = fs::read(c.path("rand")).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "contents differ from the reference");
    // Reads at random offsets and sizes, including across object boundaries and past EOF.
    let f = File::open(c.path("rand")).unwrap();
    for _ in 0..300 {
        let off = rng.gen_range(0..want.len() as u64 + 1000);
        let len = rng.gen_range(1..2_000_000usize);
        let mut buf = vec![0u8; len];
        let n = read_full_at(&f, &mut buf, off);
        let end = (off as usize + len).min(want.len());
        let expect = want.get(off as usize..end).unwrap_or(&[]);
        assert_eq!(&buf[..n], expect, "read at {off}+{len}");
    }
}

#[test]
fn direct_io_submitted_together_lands_whole_and_reads_back() {
    // Asynchronous O_DIRECT (libaio): the kernel sends the mount every operation of a batch
    // at once, up to its background limit, and the mount answers each on its own.
    const SLOT: u64 = 64 << 10;
    const SIZE: u64 = 8 << 20;
    let c = TestCluster::start();
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = random_bytes(seed, SIZE as usize);
    fs::write(c.path("f"), &model).unwrap();
    let f = open_direct(&c.path("f"));

    // 64 writes of 4-64 KiB in distinct 64 KiB slots, one across the boundary between the
    // file's two 4 MiB objects, and two that extend the file.
    let boundary = SIZE / 2;
    let mut slots: Vec<u64> = (0..SIZE / SLOT)
        .filter(|&s| s * SLOT != boundary && (s + 1) * SLOT != boundary)
        .collect();
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    for _ in 0..61 {
        let slot = slots.swap_remove(rng.gen_range(0..slots.len()));
        let blocks = rng.gen_range(1..=16u64);
        let off = slot * SLOT + rng.gen_range(0..=16 - blocks) * 4096;
        writes.push((off, random_bytes(rng.gen(), (blocks * 4096) as usize)));
    }
    writes.push((boundary - 8192, random_bytes(rng.gen(), 16384)));
    writes.push((SIZE, random_bytes(rng.gen(), SLOT as usize)));
    writes.push((SIZE + SLOT, random_bytes(rng.gen(), SLOT as usize)));
    let batch: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, d.as_slice())).collect();
    aio::write_all(&f, &batch);
    model.resize((SIZE + 2 * SLOT) as usize, 0);
    for (off, data) in &writes {
        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);

    // 128 reads in one batch, some across the boundary, some past the end.
    let reads: Vec<(u64, usize)> = (0..128)
        .map(|i| match i {
            0 => (boundary - 4096, 8192),
            1 => (model.len() as u64 - 4096, 16384),
            2 => (model.len() as u64 + 4096, 4096),
            _ => (
                rng.gen_range(0..model.len() as u64 / 4096) * 4096,
                rng.gen_range(1..=32usize) * 4096,
            ),
        })
        .collect();
    for ((off, len), got) in reads.iter().zip(aio::read_all(&f, &reads)) {
        let end = (*off as usize + len).min(model.len());
        let want = model.get(*off as usize..end).unwrap_or(&[]);
        assert!(got == want, "async O_DIRECT read of {len} at {off}");
    }
    drop(f);
    // Another mount reads what the OSDs hold.
    let m2 = c.mount_again("mnt2");
    assert!(
        fs::read(m2.join("f")).unwrap() == model,
        "the file on another mount"
    );
}

/// The files of every OSD's copy of object `objno` of inode `ino`.
fn copies(c: &TestCluster, ino: u64, objno: u64) -> Vec<std::path::PathBuf> {
    let name = format!("{ino:016x}.{objno:08x}.obj");
    c.object_files()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
        .collect()
}

/// The version each OSD's copy of object `objno` of inode `ino` is at (from its file's
/// header: magic, flags, version).
fn copy_versions(c: &TestCluster, ino: u64, objno: u64) -> Vec<u64> {
    copies(c, ino, objno)
        .iter()
        .map(|file| {
            let mut h = [0u8; 16];
            std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(file).unwrap(), &mut h, 0)
                .unwrap();
            u64::from_le_bytes(h[8..16].try_into().unwrap())
        })
        .collect()
}

#[test]
fn scattered_writes_to_one_object_land_as_one_change_per_flush() {
    // Leases of 20 s: kept data goes out a quarter of a lease after it was kept at the
    // latest, so a loop slowed by a busy machine still sends it all at the fsync.
    let c = TestCluster::start_args(&["--lease-ms", "20000"]);
    let path = c.path("scattered");
    let f = File::create(&path).unwrap();
    let mut want = random_bytes(1, 4 << 20);
    f.write_all_at(&want, 0).unwrap();
    f.sync_all().unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
    let before = copy_versions(&c, ino, 0);
    assert_eq!(before.len(), 3, "three copies of the first object");
    // 300 writes all over the object, some overlapping, some not block-aligned: kept under
    // the write lease, they reach the OSDs at fsync.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for i in 0..300u64 {
        let off = if i % 3 == 0 {
            rng.gen_range(0..(4 << 20) - 10_000u64)
        } else {
            rng.gen_range(0..1024u64) * 4096
        };
        let len = if i % 3 == 0 {
            rng.gen_range(1..10_000)
        } else {
            4096
        };
        let data = random_bytes(100 + i, len);
        f.write_all_at(&data, off).unwrap();
        want[off as usize..off as usize + len].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    let after = copy_versions(&c, ino, 0);
    assert_eq!(after.len(), 3);
    for (b, a) in before.iter().zip(&after) {
        // A version counts changes within an OSD map epoch (the high 32 bits).
        let changes = if a >> 32 == b >> 32 {
            a - b
        } else {
            a & 0xffff_ffff
        };
        assert!(
            (1..=3).contains(&changes),
            "300 writes made {changes} changes of the object ({b:#x} -> {a:#x})"
        );
    }
    // Every copy holds the written bytes, and so does a mount that never saw the writes.
    for file in copies(&c, ino, 0) {
        let data = &fs::read(&file).unwrap()[shoal_osd::store::DATA as usize..];
        assert!(data == want, "{} differs", file.display());
    }
    drop(f);
    let other = c.mount_again("other");
    assert!(
        fs::read(other.join("scattered")).unwrap() == want,
        "contents differ"
    );
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[test]
fn sparse_file_past_5_gib_and_truncate() {
    let c = TestCluster::start();
    let path = c.path("sparse");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let far = (5u64 << 30) + 12345;
    let tail = random_bytes(1, 3 << 20);
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&tail, far).unwrap();
    f.sync_all().unwrap();
    let size = far + tail.len() as u64;
    assert_eq!(fs::metadata(&path).unwrap().len(), size);
    drop(f);

    let f = File::open(&path).unwrap();
    let mut buf = vec![0u8; tail.len()];
    assert_eq!(read_full_at(&f, &mut buf, far), tail.len());
    assert!(buf == tail);
    // Holes read as zeros, before 4 GiB and past it.
    for off in [4096u64, 1 << 30, (4u64 << 30) - 10, 4u64 << 30, far - 100] {
        let mut hole = vec![0xffu8; 64];
        assert_eq!(read_full_at(&f, &mut hole, off), 64);
        assert!(hole.iter().all(|&b| b == 0), "hole at {off} is not zeros");
    }
    let mut head = [0u8; 4];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"head");
    drop(f);

    // Truncate down into the tail, then up again: the cut bytes come back as zeros.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let cut = far + 1000;
    f.set_len(cut).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), cut);
    f.set_len(far + 5000).unwrap();
    let mut buf = vec![0xffu8; 5000];
    assert_eq!(read_full_at(&f, &mut buf, far), 5000);
    assert_eq!(&buf[..1000], &tail[..1000]);
    assert!(
        buf[1000..].iter().all(|&b| b == 0),
        "truncated bytes came back"
    );
    // Back to the same cut, where the object already ends inside a block: its bytes stay
    // readable (a fresh open drops the cached pages, so they come from the OSDs).
    f.set_len(cut).unwrap();
    let fresh = File::open(&path).unwrap();
    let mut again = vec![0u8; 1000];
    assert_eq!(read_full_at(&fresh, &mut again, far), 1000);
    assert_eq!(&again[..], &tail[..1000]);
    drop(fresh);
    // Truncate to 2 bytes frees the far objects.
    f.set_len(2).unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"he");
    assert_eq!(
        c.object_files().len(),
        3,
        "objects past the new end are deleted (one object left, three copies)"
    );
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"llo").unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"hello");
}

#[test]
fn statfs_reports_real_capacity_and_unlinked_open_files_live_until_close() {
    let c = TestCluster::start();
    // statfs: the OSDs share this host's disk, so the cluster reports that disk once, and
    // every byte is stored three times, so files can use a third of it.
    let st = statvfs(&c.mnt);
    let local = statvfs(&c.data);
    let cap = st.f_blocks * st.f_frsize;
    let local_cap = local.f_blocks * local.f_frsize / 3;
    assert!(cap > 0);
    assert!(
        cap.abs_diff(local_cap) <= local_cap / 100,
        "cluster {cap} vs disk {local_cap}"
    );

    // A file unlinked while open stays readable and writable until its last close.
    let path = c.path("doomed");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let data = random_bytes(3, 5 << 20);
    f.write_all(&data).unwrap();
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    f.write_all(b"more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), data.len() + 4);
    assert!(back[..data.len()] == data[..]);
    // (Written under the write lease: sent to the OSDs by fsync.)
    f.sync_all().unwrap();
    assert!(!c.object_files().is_empty());
    drop(f);
    // Last close: its objects are deleted. FUSE sends the release after close() returns.
    let start = std::time::Instant::now();
    while !c.object_files().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "objects remain: {:?}",
            c.object_files()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn statvfs(p: &std::path::Path) -> libc::statvfs {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain old data, valid pointers for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st
}

/// One file on the mount and its twin on local disk, changed alike.
struct Twins {
    shoal: File,
    local: File,
    /// Operations so far, for the failure message (the seed replays them).
    log: Vec<String>,
    seed: u64,
}

impl Twins {
    fn size(&self) -> u64 {
        self.local.metadata().unwrap().len()
    }

    fn fail(&self, what: &str) -> ! {
        let tail = self.log.len().saturating_sub(12);
        panic!(
            "{what} (seed {}; replay with SHOAL_FS_SEED={}); last operations:\n{}",
            self.seed,
            self.seed,
            self.log[tail..].join("\n")
        );
    }

    /// Runs `op` on both files; both must succeed or fail alike.
    fn both(&mut self, name: String, op: impl Fn(&File) -> std::io::Result<()>) {
        let (a, b) = (op(&self.shoal), op(&self.local));
        self.log.push(name);
        if a.as_ref().err().map(|e| e.raw_os_error()) != b.as_ref().err().map(|e| e.raw_os_error())
        {
            self.fail(&format!("shoal gave {a:?}, local disk {b:?}"));
        }
    }

    /// SEEK_DATA and SEEK_HOLE from `off` on the mount: whatever they call a hole must read
    /// as zeros on local disk, and they must land inside the file.
    fn check_holes(&mut self, off: u64) {
        use std::os::fd::AsRawFd;
        let size = self.size();
        if off >= size {
            return;
        }
        self.log.push(format!("seek {off}"));
        let seek = |from: u64, whence: i32| {
            // SAFETY: a plain system call on an open descriptor.
            let r = unsafe { libc::lseek(self.shoal.as_raw_fd(), from as i64, whence) };
            match r {
                r if r >= 0 => Ok(r as u64),
                _ => Err(std::io::Error::last_os_error().raw_os_error()),
            }
        };
        let data_from = |from: u64| match seek(from, libc::SEEK_DATA) {
            Ok(d) if d >= from && d < size => Ok(d),
            Err(Some(libc::ENXIO)) => Ok(size),
            other => Err(format!(
                "SEEK_DATA from {from} in a file of {size}: {other:?}"
            )),
        };
        let hole = match seek(off, libc::SEEK_HOLE) {
            Ok(h) if h >= off && h <= size => h,
            other => self.fail(&format!(
                "SEEK_HOLE from {off} in a file of {size}: {other:?}"
            )),
        };
        let mut zero_ranges = Vec::new();
        match data_from(off) {
            Ok(d) => zero_ranges.push((off, d)),
            Err(e) => self.fail(&e),
        }
        if hole < size {
            match data_from(hole) {
                Ok(d) if d > hole => zero_ranges.push((hole, d)),
                Ok(d) => self.fail(&format!("SEEK_HOLE said {hole}, SEEK_DATA from it {d}")),
                Err(e) => self.fail(&e),
            }
        }
        for (a, b) in zero_ranges {
            let mut buf = vec![0u8; (b - a) as usize];
            let n = read_full_at(&self.local, &mut buf, a);
            if let Some(at) = buf[..n].iter().position(|&x| x != 0) {
                self.fail(&format!(
                    "{} is data, but the mount calls [{a}, {b}) a hole",
                    a + at as u64
                ));
            }
        }
    }

    fn compare(&mut self, off: u64, len: usize) {
        let mut a = vec![0u8; len];
        let mut b = vec![0u8; len];
        let (na, nb) = (
            read_full_at(&self.shoal, &mut a, off),
            read_full_at(&self.local, &mut b, off),
        );
        self.log.push(format!("read {off} {len}"));
        if na != nb {
            self.fail(&format!("read at {off}+{len}: {na} bytes, local disk {nb}"));
        }
        if let Some(at) = a[..na].iter().zip(&b[..nb]).position(|(x, y)| x != y) {
            self.fail(&format!(
                "read at {off}+{len}: first difference at {}",
                off as usize + at
            ));
        }
    }
}

/// Maps `[off, off + len)` of `f` shared and hands it to `each`; unmaps after msync.
fn with_map(f: &File, off: u64, len: usize, each: impl FnOnce(&mut [u8])) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of `len` bytes of an open file, used only inside this
    // call, then synced and unmapped; the caller keeps the range inside the file.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            off as libc::off_t,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        each(std::slice::from_raw_parts_mut(p.cast::<u8>(), len));
        let synced = libc::msync(p, len, libc::MS_SYNC);
        let err = std::io::Error::last_os_error();
        libc::munmap(p, len);
        if synced != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Seeded random writes, reads, truncates, punched holes, zeroed ranges, shared-mmap writes
/// and reads, SEEK_DATA/SEEK_HOLE, fsyncs and reopens on a striped file, each applied to a twin on local disk and
/// compared byte for byte. `SHOAL_FS_SEED` replays a run; `SHOAL_FS_OPS` makes it longer.
#[test]
fn random_operations_match_a_local_file() {
    use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH};
    let seed = std::env::var("SHOAL_FS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let ops: usize = std::env::var("SHOAL_FS_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    eprintln!("random_operations_match_a_local_file: SHOAL_FS_SEED={seed}");
    let c = TestCluster::start();
    let dir = c.path("striped");
    shoal_fstests::striped_dir(&dir);
    let local_dir = tempfile::tempdir().unwrap();
    let open = |p: &std::path::Path| {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    };
    let (sp, lp) = (dir.join("f"), local_dir.path().join("f"));
    let mut t = Twins {
        shoal: open(&sp),
        local: open(&lp),
        log: Vec::new(),
        seed,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const SPAN: u64 = 12 << 20;
    const PAGE: u64 = 4096;
    for _ in 0..ops {
        let off = rng.gen_range(0..SPAN);
        let len = rng.gen_range(1..400_000u64);
        match rng.gen_range(0..100) {
            0..=34 => {
                let data = random_bytes(rng.gen(), len as usize);
                t.both(format!("write {off} {len}"), |f| f.write_all_at(&data, off));
            }
            35..=49 => t.compare(off, len as usize),
            50..=54 => t.check_holes(off),
            55..=61 => {
                let size = rng.gen_range(0..SPAN);
                t.both(format!("truncate {size}"), |f| f.set_len(size));
            }
            62..=69 => t.both(format!("punch {off} {len}"), |f| {
                fallocate(f, PUNCH | KEEP, off, len)
            }),
            70..=74 => {
                let keep = if rng.gen() { KEEP } else { 0 };
                t.both(format!("zero-range {off} {len} keep={keep}"), |f| {
                    fallocate(f, libc::FALLOC_FL_ZERO_RANGE | keep, off, len)
                });
            }
            75..=86 => {
                // Shared mappings stay inside the file.
                let size = t.size();
                if size < PAGE {
                    continue;
                }
                let moff = rng.gen_range(0..size / PAGE) * PAGE;
                let mlen = rng.gen_range(1..=(size - moff).min(300_000)) as usize;
                if rng.gen() {
                    let data = random_bytes(rng.gen(), mlen);
                    t.both(format!("mmap-write {moff} {mlen}"), |f| {
                        with_map(f, moff, mlen, |m| m.copy_from_slice(&data))
                    });
                } else {
                    let mut seen = [Vec::new(), Vec::new()];
                    for (i, f) in [&t.shoal, &t.local].into_iter().enumerate() {
                        with_map(f, moff, mlen, |m| seen[i] = m.to_vec()).unwrap();
                    }
                    t.log.push(format!("mmap-read {moff} {mlen}"));
                    if seen[0] != seen[1] {
                        t.fail(&format!("mmap read at {moff}+{mlen} differs"));
                    }
                }
            }
            87..=93 => t.both("fsync".into(), |f| f.sync_all()),
            _ => {
                // A new open drops the kernel's cached pages: later reads come from the OSDs.
                t.log.push("reopen".into());
                t.shoal = open(&sp);
                t.local = open(&lp);
            }
        }
    }
    let size = t.size();
    assert_eq!(fs::metadata(&sp).unwrap().len(), size, "sizes differ");
    t.shoal = open(&sp);
    t.compare(0, size as usize);
}
