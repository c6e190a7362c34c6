//! The coherence promise across mounts of one cluster: after a call returns on one mount,
//! the next call on another sees its effect (data, size, mtime, names, attributes), while
//! both mounts keep caching under leases the MDS revokes on conflict.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use shoal_fstests::{direct_read, direct_write, open_direct, open_rw, Frozen, TestCluster};

/// Rounds of the write-here/read-there check (`SHOAL_COHERENCE_ROUNDS` overrides).
fn rounds() -> usize {
    std::env::var("SHOAL_COHERENCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn errno_of(r: std::io::Result<fs::Metadata>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_write_on_one_mount_is_read_at_once_on_another() {
    const SPAN: u64 = 1 << 20;
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; SPAN as usize];
    rng.fill(&mut model[..]);
    fs::write(c.path("f"), &model).unwrap();
    let a = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.path("f"))
        .unwrap();
    let b = fs::File::open(m2.join("f")).unwrap();
    // Both mounts have the file's pages and attributes cached.
    let mut buf = vec![0u8; SPAN as usize];
    b.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == model, "the second mount reads the first one's file");
    let n = rounds();
    let start = Instant::now();
    for i in 0..n {
        let len = rng.gen_range(1..=8192usize);
        // Mostly inside the file, sometimes past its end (the size grows).
        let off = rng.gen_range(0..model.len() as u64 + 4096);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        a.write_all_at(&data, off).unwrap();
        let end = off as usize + len;
        if end > model.len() {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        let mut got = vec![0u8; len];
        b.read_exact_at(&mut got, off)
            .unwrap_or_else(|e| panic!("round {i}: read {len} at {off}: {e}"));
        assert!(
            got == data,
            "round {i} (seed {seed}): {len} bytes at {off} read stale on the other mount"
        );
        if i % 50 == 0 {
            let size = b.metadata().unwrap().len();
            assert_eq!(
                size,
                model.len() as u64,
                "round {i}: size behind the writer"
            );
        }
    }
    println!("{n} rounds in {:?}", start.elapsed());
    // The whole file, read there, is the model.
    let mut all = vec![0u8; model.len()];
    b.read_exact_at(&mut all, 0).unwrap();
    assert!(all == model, "the whole file differs on the other mount");
    // mtime seen there is the writer's.
    let (ma, mb) = (a.metadata().unwrap(), b.metadata().unwrap());
    assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()));
}

/// The 4 KiB-aligned span around `[off, end)` read with O_DIRECT from `f`, and what `model`
/// holds there (less at the end of the file).
fn aligned_span<'a>(f: &fs::File, model: &'a [u8], off: u64, end: u64) -> (Vec<u8>, &'a [u8]) {
    let a = off / 4096 * 4096;
    let e = end.div_ceil(4096) * 4096;
    let got = direct_read(f, a, (e - a) as usize);
    (got, &model[a as usize..e.min(model.len() as u64) as usize])
}

#[test]
fn direct_reads_on_another_mount_see_every_returned_write_and_their_own_changes() {
    const SPAN: usize = 1 << 20;
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; SPAN];
    rng.fill(&mut model[..]);
    fs::write(c.path("f"), &model).unwrap();
    let w = open_rw(&c.path("f"));
    let ino = w.metadata().unwrap().ino();
    let r = open_direct(&m2.join("f"));
    assert!(direct_read(&r, 0, SPAN) == model, "the reader's first look");

    // Writes that stay with the writer's mount under its write lease (a write takes it once
    // the reader's lease is gone and the file is no longer contended, 1 s after the reader
    // last looked; the writes after it are kept). O_DIRECT reads ask the kernel nothing
    // about the file: the reader's mount must take the lease back before it reads the OSDs
    // or its own copy.
    for round in 0..3 {
        let start = Instant::now();
        loop {
            let off = rng.gen_range(0..SPAN as u64 - 8192);
            let data: Vec<u8> = (0..rng.gen_range(1..=8192)).map(|_| rng.gen()).collect();
            w.write_all_at(&data, off).unwrap();
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
            let on_osds = crate::read_object(&c, ino, 0, SPAN as u32, 0).unwrap();
            if on_osds[off as usize..off as usize + data.len()] == data[..] {
                assert!(
                    start.elapsed() < Duration::from_secs(8),
                    "round {round}: writes never got kept"
                );
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let (got, want) = aligned_span(&r, &model, off, off + data.len() as u64);
            assert!(got == want, "round {round}: kept write at {off} unseen");
            break;
        }
    }
    // Many writes, each followed by a look at its blocks and at a block read before.
    let looked = rng.gen_range(0..SPAN as u64 / 4096) * 4096;
    for i in 0..rounds() / 20 {
        let len = rng.gen_range(1..=8192usize);
        let off = rng.gen_range(0..model.len() as u64 + 4096);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        w.write_all_at(&data, off).unwrap();
        let end = off as usize + len;
        if end > model.len() {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        let (got, want) = aligned_span(&r, &model, off, end as u64);
        assert!(
            got == want,
            "round {i} (seed {seed}): {len} bytes at {off} read stale on the other mount"
        );
        let (got, want) = aligned_span(&r, &model, looked, looked + 4096);
        assert!(got == want, "round {i}: block {looked}");
    }

    // The reader's own changes: an O_DIRECT write, a cut and a growth by ftruncate.
    direct_write(&r, 8192, &[9u8; 4096]);
    model[8192..12288].fill(9);
    assert!(direct_read(&r, 8192, 4096) == [9u8; 4096], "its own write");
    r.set_len(4096).unwrap();
    r.set_len(16384).unwrap();
    model.truncate(4096);
    model.resize(16384, 0);
    assert!(direct_read(&r, 0, 16384) == model, "cut and grown here");
    // And the writer's: the reader sees zeros where the file was cut and grown.
    w.set_len(2048).unwrap();
    w.set_len(8192).unwrap();
    model.truncate(2048);
    model.resize(8192, 0);
    assert!(direct_read(&r, 0, 8192) == model, "cut and grown there");
    drop(w);
    assert!(fs::read(c.path("f")).unwrap() == model);
}

/// An O_DIRECT read of 4 KiB at `off` of `p` from another thread: the bytes, or None if it
/// did not return within `within` (the thread then finishes whenever it can).
fn direct_read_within(p: &std::path::Path, off: u64, within: Duration) -> Option<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(direct_read(&open_direct(&p), off, 4096));
    });
    rx.recv_timeout(within).ok()
}

#[test]
fn small_reads_are_answered_from_blocks_kept_under_the_lease_until_a_write_anywhere() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let plain = c.mount_again_with("plain", "readcache=0");
    fs::write(c.path("f"), vec![b'a'; 256 << 10]).unwrap();
    let wait = Duration::from_millis(700);
    let osds = || osds_stopped(&c);
    // Read once on each mount: the block around it is kept, except with readcache=0.
    for m in [&m2, &plain] {
        assert_eq!(
            direct_read(&open_direct(&m.join("f")), 8192, 4096),
            [b'a'; 4096]
        );
    }
    let frozen = osds();
    let kept = direct_read_within(&m2.join("f"), 8192 + 4096, wait);
    let uncached = direct_read_within(&plain.join("f"), 8192, wait);
    drop(frozen);
    assert_eq!(
        kept,
        Some(vec![b'a'; 4096]),
        "answered with the OSDs stopped"
    );
    assert_eq!(uncached, None, "readcache=0 keeps nothing");
    // Another mount writes: the kept block goes with the lease.
    let w = open_rw(&c.path("f"));
    w.write_all_at(&[b'b'; 4096], 8192).unwrap();
    let frozen = osds();
    let after = direct_read_within(&m2.join("f"), 8192, wait);
    drop(frozen);
    assert_eq!(after, None, "a block kept before the write answered");
    assert_eq!(
        direct_read(&open_direct(&m2.join("f")), 8192, 4096),
        [b'b'; 4096]
    );
    // So does a block this mount wrote over.
    let r = open_direct(&m2.join("f"));
    assert_eq!(direct_read(&r, 65536, 4096), [b'a'; 4096]);
    direct_write(&r, 65536, &[b'c'; 4096]);
    assert_eq!(direct_read(&r, 65536, 4096), [b'c'; 4096]);
}

#[test]
fn a_small_file_written_here_is_read_back_from_what_this_mount_sent() {
    let c = TestCluster::start();
    let p = c.path("small");
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(&[b's'; 4096]).unwrap();
    // The data lands on the OSDs: this mount now knows what they hold.
    f.sync_all().unwrap();
    drop(f);
    let frozen = osds_stopped(&c);
    let kept = direct_read_within(&p, 0, Duration::from_millis(700));
    drop(frozen);
    assert_eq!(
        kept,
        Some(vec![b's'; 4096]),
        "answered with the OSDs stopped"
    );
    // Another mount's write takes the lease, and what was kept goes with it.
    let m2 = c.mount_again("mnt2");
    fs::write(m2.join("small"), [b't'; 4096]).unwrap();
    assert_eq!(direct_read(&open_direct(&p), 0, 4096), [b't'; 4096]);
    // A file larger than a kept block is read from the OSDs.
    let big = c.path("big");
    let mut f = fs::File::create(&big).unwrap();
    f.write_all(&vec![b'b'; 128 << 10]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let frozen = osds_stopped(&c);
    let read = direct_read_within(&big, 0, Duration::from_millis(700));
    drop(frozen);
    assert_eq!(read, None, "a large file's block was kept");
}

/// The cluster's three OSDs, stopped until the returned values drop.
fn osds_stopped(c: &TestCluster) -> Vec<Frozen> {
    (0..3)
        .map(|i| Frozen::stop(c.pid(&format!("osd.{i}"))))
        .collect()
}

/// Sets `p`'s mtime through a descriptor of it (futimens), as tar does after writing.
fn set_mtime(p: &std::path::Path, when: std::time::SystemTime) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[test]
fn a_close_under_the_write_lease_leaves_the_data_to_the_background() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let p = c.path("f");
    let f = fs::File::create(&p).unwrap();
    f.write_all_at(&[b'a'; 4096], 0).unwrap();
    f.sync_all().unwrap();
    // With every OSD stopped, a write and its close return: the data stays with this mount.
    let frozen = osds_stopped(&c);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f.write_all_at(&[b'b'; 8192], 4096).unwrap();
        drop(f);
        let _ = tx.send(());
    });
    let closed = rx.recv_timeout(Duration::from_secs(3));
    // This mount answers the new size meanwhile.
    let size = fs::metadata(&p).unwrap().len();
    drop(frozen);
    assert!(closed.is_ok(), "the close waited for the OSDs");
    assert_eq!(size, 12288);
    // Another mount's look waits for the data to land, then reads all of it.
    let want = [vec![b'a'; 4096], vec![b'b'; 8192]].concat();
    assert!(
        fs::read(m2.join("f")).unwrap() == want,
        "the other mount reads every write"
    );
    // A change after the close lands after the data: the late size does not undo it.
    fs::write(&p, b"xyz").unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    set_mtime(&p, when);
    let meta = fs::metadata(m2.join("f")).unwrap();
    assert_eq!((meta.len(), meta.modified().unwrap()), (3, when));
    assert_eq!(fs::read(m2.join("f")).unwrap(), b"xyz");
}

#[test]
fn a_new_file_comes_with_its_write_lease_and_gives_it_back_once_closed() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    // Created, then written: the first write stays with this mount too.
    let mut f = fs::File::create(c.path("new")).unwrap();
    f.write_all(b"first").unwrap();
    let ino = f.metadata().unwrap().ino();
    assert_eq!(
        crate::read_object(&c, ino, 0, 4096, 0),
        Ok(Vec::new()),
        "the first write went to the OSDs"
    );
    // Another mount's look takes the lease back with the data.
    assert_eq!(fs::read(m2.join("new")).unwrap(), b"first");
    drop(f);
    // Files created and closed here (empty, written, written and synced): once their leases
    // would have run out, another mount's look finds no writer whose writes the MDS must
    // look for on the OSDs (it logs each such recovery).
    for i in 0..10 {
        let mut f = fs::File::create(c.path(&format!("e{i}"))).unwrap();
        if i % 3 > 0 {
            f.write_all(b"data").unwrap();
        }
        if i % 3 == 2 {
            f.sync_all().unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(2500));
    for i in 0..10 {
        let len = if i % 3 > 0 { 4 } else { 0 };
        assert_eq!(fs::metadata(m2.join(format!("e{i}"))).unwrap().len(), len);
    }
    let log = fs::read_to_string(c.data.join("mds.0").join("log")).unwrap();
    assert!(
        !log.contains("departed writer left"),
        "a closed file kept its writer mark:\n{log}"
    );
}

#[test]
fn a_writer_keeps_its_data_under_its_lease_until_fsync_or_another_mount_reads() {
    // A long lease, so nothing sends the kept data on its own while the test looks.
    let c = TestCluster::start_args(&["--lease-ms", "10000"]);
    let m2 = c.mount_again("mnt2");
    let p = c.path("f");
    // Written and fsynced: on the OSDs, and the write lease stays with this mount.
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&[b'a'; 8192], 0).unwrap();
    f.sync_all().unwrap();
    let ino = fs::metadata(&p).unwrap().ino();
    let on_osds = || crate::read_object(&c, ino, 0, 1 << 20, 0).unwrap();
    assert!(on_osds() == [b'a'; 8192], "fsync lands the data");

    // The next writes (partial pages, one over another, one past the end) stay with this
    // mount's client.
    let mut want = vec![b'a'; 8192];
    let writes: [(u64, u8, usize); 4] = [
        (10, b'b', 100),
        (1000, b'c', 100),
        (1050, b'd', 50),
        (8192, b'e', 5000),
    ];
    for (off, byte, len) in writes {
        f.write_all_at(&vec![byte; len], off).unwrap();
        let end = off as usize + len;
        want.resize(want.len().max(end), 0);
        want[off as usize..end].fill(byte);
    }
    let sent = vec![b'a'; 8192];
    assert!(
        on_osds() == sent,
        "nothing written after the fsync is on the OSDs"
    );

    // This mount reads them (a fresh open drops the kernel's pages, so the reads come to
    // the client, which lays the kept data over what the OSDs hold); still nothing sent.
    let mut g = fs::File::open(&p).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut g, &mut got).unwrap();
    assert!(got == want, "the writer reads its own kept writes");
    assert!(on_osds() == sent, "reading sends nothing");

    // Another mount's read revokes the write lease: the data reaches the OSDs first.
    assert!(
        fs::read(m2.join("f")).unwrap() == want,
        "the other mount reads every returned write"
    );
    assert!(
        on_osds() == want,
        "the OSDs hold the data after the revocation"
    );
    assert_eq!(fs::metadata(m2.join("f")).unwrap().len(), want.len() as u64);

    // Once the file is no longer contended (1 s), a write takes the lease back, and the
    // writes after it are kept again; fsync sends them.
    let start = Instant::now();
    let mut byte = b'0';
    loop {
        f.write_all_at(&[byte], 4000).unwrap();
        want[4000] = byte;
        if on_osds()[4000] != byte {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "writes never got kept again"
        );
        std::thread::sleep(Duration::from_millis(100));
        byte += 1;
    }
    f.sync_all().unwrap();
    assert!(on_osds() == want, "fsync sends it");
    drop((f, g));
    assert!(fs::read(m2.join("f")).unwrap() == want);
}

#[test]
fn namespace_changes_on_one_mount_are_seen_at_once_on_another() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let (a, b) = (&c.mnt, &m2);
    for i in 0..100 {
        let (f, g) = (format!("f{i}"), format!("g{i}"));
        // The second mount looks first, so it holds a negative answer or a cached entry.
        assert_eq!(errno_of(fs::metadata(b.join(&f))), Some(libc::ENOENT));
        fs::write(a.join(&f), b"x").unwrap();
        let st = fs::metadata(b.join(&f)).expect("created file seen");
        assert_eq!(st.len(), 1, "round {i}");
        // setattr: mode, size, times.
        fs::set_permissions(a.join(&f), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(fs::metadata(b.join(&f)).unwrap().mode() & 0o777, 0o600);
        fs::OpenOptions::new()
            .write(true)
            .open(a.join(&f))
            .unwrap()
            .set_len(5000 + i)
            .unwrap();
        assert_eq!(fs::metadata(b.join(&f)).unwrap().len(), 5000 + i);
        // rename: the old name is gone there, the new one names the same inode.
        let ino = fs::metadata(b.join(&f)).unwrap().ino();
        fs::rename(a.join(&f), a.join(&g)).unwrap();
        assert_eq!(errno_of(fs::metadata(b.join(&f))), Some(libc::ENOENT));
        assert_eq!(fs::metadata(b.join(&g)).unwrap().ino(), ino);
        // link and unlink move nlink.
        fs::hard_link(a.join(&g), a.join(&f)).unwrap();
        assert_eq!(fs::metadata(b.join(&g)).unwrap().nlink(), 2);
        fs::remove_file(a.join(&f)).unwrap();
        assert_eq!(fs::metadata(b.join(&g)).unwrap().nlink(), 1);
        assert_eq!(errno_of(fs::metadata(b.join(&f))), Some(libc::ENOENT));
        // A directory replaces the file under the same name.
        fs::remove_file(a.join(&g)).unwrap();
        assert_eq!(errno_of(fs::metadata(b.join(&g))), Some(libc::ENOENT));
        fs::create_dir(a.join(&g)).unwrap();
        assert!(fs::metadata(b.join(&g)).unwrap().is_dir(), "round {i}");
        fs::write(a.join(&g).join("in"), b"y").unwrap();
        assert_eq!(fs::read(b.join(&g).join("in")).unwrap(), b"y");
    }
}

#[test]
fn capabilities_set_on_one_mount_show_on_the_mount_that_made_the_file() {
    use shoal_fstests::{get_xattr_bytes, set_xattr_bytes};
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    fs::create_dir(c.path("d")).unwrap();
    let name = "security.capability";
    // Revision 2, effective, CAP_NET_RAW permitted.
    let caps: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    for i in 0..20 {
        let f = format!("d/f{i}");
        // The second mount looks in the directory, so the first makes its files at the MDS,
        // whose reply says the new file has no capabilities (the kernel asks before a write).
        assert_eq!(errno_of(fs::metadata(m2.join(&f))), Some(libc::ENOENT));
        fs::write(c.path(&f), b"data").unwrap();
        assert_eq!(
            get_xattr_bytes(&c.path(&f), name),
            Err(libc::ENODATA),
            "round {i}"
        );
        set_xattr_bytes(&m2.join(&f), name, &caps).unwrap();
        assert_eq!(
            get_xattr_bytes(&c.path(&f), name).as_deref(),
            Ok(&caps[..]),
            "round {i}"
        );
        assert_eq!(fs::read(m2.join(&f)).unwrap(), b"data");
    }
}

#[test]
fn extended_attribute_changes_on_one_mount_are_seen_at_once_on_another() {
    use shoal_fstests::{cpath, get_xattr, set_xattr};
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let (a, b) = (c.path("x"), m2.join("x"));
    fs::write(&a, b"data").unwrap();
    let remove = |p: &std::path::Path| {
        let n = std::ffi::CString::new("user.k").unwrap();
        // SAFETY: valid NUL-terminated strings.
        assert_eq!(
            unsafe { libc::removexattr(cpath(p).as_ptr(), n.as_ptr()) },
            0
        );
    };
    for i in 0..50 {
        // The second mount reads first (and again), so it holds the answer under its lease.
        for _ in 0..2 {
            assert_eq!(get_xattr(&b, "user.k"), Err(libc::ENODATA), "round {i}");
            assert_eq!(get_xattr(&b, "security.capability"), Err(libc::ENODATA));
        }
        let v = format!("v{i}");
        set_xattr(&a, "user.k", &v).unwrap();
        assert_eq!(
            get_xattr(&b, "user.k").as_deref(),
            Ok(v.as_str()),
            "round {i}"
        );
        // A change made on the mount that cached the value is seen there too.
        set_xattr(&b, "user.k", "mine").unwrap();
        assert_eq!(get_xattr(&b, "user.k").as_deref(), Ok("mine"));
        assert_eq!(get_xattr(&a, "user.k").as_deref(), Ok("mine"));
        remove(&a);
        assert_eq!(get_xattr(&b, "user.k"), Err(libc::ENODATA), "round {i}");
    }
    // Computed attributes are never answered from a cache: a layout set on one mount.
    let d = c.path("d");
    fs::create_dir(&d).unwrap();
    let before = get_xattr(&m2.join("d"), "shoal.dir.layout.stripe_count").unwrap();
    set_xattr(&d, "shoal.dir.layout.stripe_count", "3").unwrap();
    assert_ne!(before, "3");
    assert_eq!(
        get_xattr(&m2.join("d"), "shoal.dir.layout.stripe_count").as_deref(),
        Ok("3")
    );
}

#[test]
fn tail_follows_appends_on_another_mount() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    fs::write(c.path("log"), b"").unwrap();
    // Polling tail (FUSE has no inotify events from other hosts), every 100 ms.
    let mut tail = Command::new("tail")
        .args(["-f", "---disable-inotify", "-s", "0.1"])
        .arg(m2.join("log"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("tail");
    let out = tail.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(c.path("log"))
        .unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let line = format!("record {i}");
        let sent = Instant::now();
        writeln!(log, "{line}").unwrap();
        let (got, at) = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("tail did not show {line:?} within 5 s"));
        assert_eq!(got, line);
        worst = worst.max(at.duration_since(sent));
        std::thread::sleep(Duration::from_millis(30));
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        worst < Duration::from_secs(1),
        "an append took {worst:?} to show on the other mount"
    );
}

/// One SQLite writer: `n` transactions, each adding a row and bumping a shared counter.
const SQLITE_WRITER: &str = r#"
import sqlite3, sys
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, timeout=120, isolation_level=None)
for i in range(n):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO rows (who, i) VALUES (?, ?)", (who, i))
    db.execute("UPDATE counter SET n = n + 1")
    db.execute("COMMIT")
print("ok")
"#;

#[test]
fn sqlite_on_two_mounts_keeps_every_transaction() {
    // SHOAL_SQLITE_TXNS overrides the total (about 140 ms a transaction; the full run of
    // 10,000 is for a run by hand).
    let total: usize = std::env::var("SHOAL_SQLITE_TXNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let db = c.path("app.db");
    let setup = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); \
             d.executescript('CREATE TABLE rows (id INTEGER PRIMARY KEY, who TEXT, i INT); \
             CREATE TABLE counter (n INT); INSERT INTO counter VALUES (0);'); d.close()",
        ])
        .arg(&db)
        .status()
        .expect("python3");
    assert!(setup.success());
    let start = Instant::now();
    // Two processes on each mount, all writing at once.
    let per = total / 4;
    let writers: Vec<_> = [("a1", &c.mnt), ("a2", &c.mnt), ("b1", &m2), ("b2", &m2)]
        .into_iter()
        .map(|(who, mnt)| {
            let child = Command::new("python3")
                .args(["-c", SQLITE_WRITER])
                .arg(mnt.join("app.db"))
                .args([who, &per.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3");
            (who, child)
        })
        .collect();
    for (who, w) in writers {
        let out = w.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "writer {who}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("{} transactions in {:?}", per * 4, start.elapsed());
    // Checked through the second mount.
    let check = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); \
             print(d.execute('PRAGMA integrity_check').fetchone()[0], \
             d.execute('SELECT count(*) FROM rows').fetchone()[0], \
             d.execute('SELECT n FROM counter').fetchone()[0], \
             d.execute('SELECT count(DISTINCT who || \":\" || i) FROM rows').fetchone()[0])",
        ])
        .arg(m2.join("app.db"))
        .output()
        .expect("python3");
    let n = per * 4;
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("ok {n} {n} {n}"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Field `field` of the session mounted at `mnt`, as `shoal status --json` lists it.
fn session_field(c: &TestCluster, mnt: &std::path::Path, field: &str) -> u64 {
    let st = c.status();
    let want = mnt.to_str().unwrap();
    st["sessions"]
        .as_array()
        .expect("sessions listed")
        .iter()
        .find(|s| s["mount_point"] == want)
        .and_then(|s| s[field].as_u64())
        .unwrap_or_else(|| panic!("no session at {want} with {field}: {st}"))
}

#[test]
fn a_mount_keeps_what_it_cached_while_it_renews_and_still_sees_every_change() {
    // Leases of 400 ms: the checks below run over many of them.
    let c = TestCluster::start_args(&["--lease-ms", "400"]);
    let m2 = c.mount_again("mnt2");
    let (a, b) = (&c.mnt, &m2);
    fs::create_dir(a.join("d")).unwrap();
    for i in 0..50 {
        fs::write(a.join(format!("d/f{i}")), b"v1").unwrap();
    }
    // B looks at everything once, then keeps it past many lease lengths: its renewals keep
    // its leases at the MDS (without them the count falls to 0 within 400 ms).
    for i in 0..50 {
        assert_eq!(fs::metadata(b.join(format!("d/f{i}"))).unwrap().len(), 2);
    }
    std::thread::sleep(Duration::from_secs(2));
    let held = session_field(&c, b, "leases");
    assert!(held >= 50, "B holds {held} leases after 2 s of renewals");
    // Whatever B caches, A's changes are seen at once: attributes, sizes, names.
    for i in 0..50 {
        let (f, g) = (format!("d/f{i}"), format!("d/g{i}"));
        match i % 4 {
            0 => fs::set_permissions(a.join(&f), fs::Permissions::from_mode(0o640)).unwrap(),
            1 => fs::write(a.join(&f), b"version two").unwrap(),
            2 => fs::rename(a.join(&f), a.join(&g)).unwrap(),
            _ => fs::remove_file(a.join(&f)).unwrap(),
        }
        match i % 4 {
            0 => assert_eq!(fs::metadata(b.join(&f)).unwrap().mode() & 0o777, 0o640),
            1 => assert_eq!(fs::read(b.join(&f)).unwrap(), b"version two"),
            2 => {
                assert_eq!(errno_of(fs::metadata(b.join(&f))), Some(libc::ENOENT));
                assert_eq!(fs::metadata(b.join(&g)).unwrap().len(), 2);
            }
            _ => assert_eq!(errno_of(fs::metadata(b.join(&f))), Some(libc::ENOENT)),
        }
    }
    // A directory B made knows its names: a missing one is answered on B alone, until A
    // creates it there.
    fs::create_dir(b.join("made-by-b")).unwrap();
    fs::write(b.join("made-by-b/own"), b"b").unwrap();
    for round in 0..20 {
        let name = format!("made-by-b/x{round}");
        assert_eq!(errno_of(fs::metadata(b.join(&name))), Some(libc::ENOENT));
        std::thread::sleep(Duration::from_millis(50));
        fs::write(a.join(&name), b"from a").unwrap();
        assert_eq!(fs::read(b.join(&name)).unwrap(), b"from a", "round {round}");
        fs::remove_file(a.join(&name)).unwrap();
        assert_eq!(errno_of(fs::metadata(b.join(&name))), Some(libc::ENOENT));
    }
    assert_eq!(fs::read(b.join("made-by-b/own")).unwrap(), b"b");
    // B's own changes show on B itself at once too (its cache follows what it does).
    fs::write(b.join("d/mine"), b"12345").unwrap();
    assert_eq!(fs::metadata(b.join("d/mine")).unwrap().len(), 5);
    fs::hard_link(b.join("d/mine"), b.join("d/mine2")).unwrap();
    assert_eq!(fs::metadata(b.join("d/mine")).unwrap().nlink(), 2);
    fs::remove_file(b.join("d/mine2")).unwrap();
    assert_eq!(fs::metadata(b.join("d/mine")).unwrap().nlink(), 1);
    fs::rename(b.join("d/mine"), b.join("d/yours")).unwrap();
    assert_eq!(errno_of(fs::metadata(b.join("d/mine"))), Some(libc::ENOENT));
    assert_eq!(fs::metadata(a.join("d/yours")).unwrap().len(), 5);
}

#[test]
fn two_mounts_creating_in_one_directory_ack_every_revocation() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let (a, b) = (c.mnt.clone(), m2.clone());
    fs::create_dir(a.join("shared")).unwrap();
    // Each mount creates, writes and removes files in the directory while the other does:
    // every change revokes the other's lease on it, and each revocation must be acked at
    // once, not waited out (which took a lease per file when acking waited for the
    // kernel's directory lock held by the mount's own create).
    let work = |root: std::path::PathBuf, me: &'static str| {
        std::thread::spawn(move || {
            for i in 0..60 {
                let p = root.join(format!("shared/{me}{i}"));
                fs::write(&p, me.as_bytes()).unwrap();
                if i % 3 == 0 {
                    fs::remove_file(&p).unwrap();
                }
            }
        })
    };
    let (x, y) = (work(a.clone(), "a"), work(b.clone(), "b"));
    x.join().expect("mount a's writer");
    y.join().expect("mount b's writer");
    for (mnt, other) in [(&a, "b"), (&b, "a")] {
        for i in 0..60 {
            let p = mnt.join(format!("shared/{other}{i}"));
            match i % 3 {
                0 => assert_eq!(errno_of(fs::metadata(&p)), Some(libc::ENOENT), "{p:?}"),
                _ => assert_eq!(fs::read(&p).unwrap(), other.as_bytes(), "{p:?}"),
            }
        }
    }
    assert_eq!(
        session_field(&c, &a, "late_acks"),
        0,
        "mount a let revocations run out"
    );
    assert_eq!(
        session_field(&c, &b, "late_acks"),
        0,
        "mount b let revocations run out"
    );
}

/// stat(2) of `p` from another thread: its errno (None: it exists), or None if it did not
/// return within `within` (the thread then finishes whenever it can).
fn stat_within(p: &std::path::Path, within: Duration) -> Option<Option<i32>> {
    let (tx, rx) = mpsc::channel();
    let p = p.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(errno_of(fs::metadata(&p)));
    });
    rx.recv_timeout(within).ok()
}

#[test]
fn the_kernel_keeps_names_and_absent_names_under_the_leases_unless_told_not_to() {
    // Long leases: the kernel keeps what it was told for what is left of them.
    let c = TestCluster::start_args(&["--lease-ms", "20000"]);
    let plain = c.mount_again_with("plain", "noentrycache");
    let watcher = c.mount_again("watcher");
    for (mnt, client, kept) in [(&c.mnt, "client.0", true), (&plain, "client.1", false)] {
        let d = mnt.join("d").join(client);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
        assert_eq!(errno_of(fs::metadata(d.join("f"))), None);
        assert_eq!(
            errno_of(fs::metadata(d.join("missing"))),
            Some(libc::ENOENT)
        );
        // With the mount's process stopped, only the kernel can answer.
        let frozen = Frozen::stop(c.pid(client));
        let wait = Duration::from_millis(700);
        let (f, missing) = (
            stat_within(&d.join("f"), wait),
            stat_within(&d.join("missing"), wait),
        );
        drop(frozen);
        if kept {
            assert_eq!(f, Some(None), "{client}: the kernel keeps the name");
            assert_eq!(
                missing,
                Some(Some(libc::ENOENT)),
                "{client}: and the absent one"
            );
        } else {
            assert_eq!(f, None, "{client}: the kernel asked the stopped mount");
            assert_eq!(missing, None, "{client}: for the absent name too");
        }
    }
    // What the kernel keeps goes as soon as another mount changes a name anywhere.
    let d = c.mnt.join("d").join("client.0");
    let seen = |p: &std::path::Path| errno_of(fs::metadata(p));
    fs::write(watcher.join("d/client.0/missing"), b"y").unwrap();
    assert_eq!(seen(&d.join("missing")), None, "a name made elsewhere");
    fs::remove_file(watcher.join("d/client.0/f")).unwrap();
    assert_eq!(
        seen(&d.join("f")),
        Some(libc::ENOENT),
        "a name removed elsewhere"
    );
    fs::rename(watcher.join("d/client.0"), watcher.join("d/moved")).unwrap();
    assert_eq!(seen(&d), Some(libc::ENOENT), "a directory moved elsewhere");
    assert_eq!(seen(&c.mnt.join("d/moved/missing")), None);
}

/// What tar does after writing a file, on descriptor `fd`: futimens (mtime only), fchown,
/// fchmod; the calls' results.
fn tar_attrs(fd: i32) -> [i32; 3] {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
    ];
    // SAFETY: plain syscalls; the caller keeps `fd` open until they return.
    unsafe {
        [
            libc::futimens(fd, times.as_ptr()),
            libc::fchown(fd, 4321, 8765),
            libc::fchmod(fd, 0o640),
        ]
    }
}

/// `st` shows what [`tar_attrs`] set, and `len` bytes.
fn check_tar_attrs(st: fs::Metadata, len: u64, on: &str) {
    assert_eq!(st.mode() & 0o7777, 0o640, "{on}");
    assert_eq!((st.uid(), st.gid()), (4321, 8765), "{on}");
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_000_000_000, 5), "{on}");
    assert_eq!(st.len(), len, "{on}");
}

/// Runs [`tar_attrs`] on `fd` with the MDS of `c` stopped: they can only return if the mount
/// keeps them. Asserts they succeeded and returned with the MDS away.
fn tar_attrs_kept(c: &TestCluster, fd: i32) {
    let (tx, rx) = mpsc::channel();
    let mds = Frozen::stop(c.pid("mds.0"));
    std::thread::spawn(move || {
        let _ = tx.send(tar_attrs(fd));
    });
    let kept = rx.recv_timeout(Duration::from_millis(700));
    drop(mds);
    let done = kept.unwrap_or_else(|_| rx.recv().unwrap());
    assert_eq!(done, [0, 0, 0]);
    assert!(kept.is_ok(), "the changes waited for the MDS");
}

#[test]
fn mode_owner_and_times_set_under_the_write_lease_are_seen_everywhere_and_go_with_the_data() {
    use std::os::fd::AsRawFd;
    if !shoal_fstests::root_or_skip("chown needs root") {
        return;
    }
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    // One write: it goes to the OSDs and takes the write lease; the changes after it are
    // kept under the lease with nothing else unsent. The other mount's look takes the lease
    // back with them: the data's own time must not come back over the mtime set.
    let mut f = fs::File::create(c.mnt.join("once")).unwrap();
    f.write_all(b"extracted").unwrap();
    tar_attrs_kept(&c, f.as_raw_fd());
    check_tar_attrs(fs::metadata(c.mnt.join("once")).unwrap(), 9, "this mount");
    check_tar_attrs(fs::metadata(m2.join("once")).unwrap(), 9, "another mount");
    drop(f);
    check_tar_attrs(fs::metadata(m2.join("once")).unwrap(), 9, "after close");

    // Two writes: the second is kept under the lease, and the changes go with its size.
    let (p, q) = (c.mnt.join("kept"), m2.join("kept"));
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(b"extr").unwrap();
    f.write_all(b"acted").unwrap();
    tar_attrs_kept(&c, f.as_raw_fd());
    check_tar_attrs(fs::metadata(&p).unwrap(), 9, "this mount");
    check_tar_attrs(fs::metadata(&q).unwrap(), 9, "another mount");
    assert_eq!(fs::read(&q).unwrap(), b"extracted");
    // A write after them moves mtime on.
    f.write_all(b"!").unwrap();
    drop(f);
    let st = fs::metadata(&q).unwrap();
    assert!(st.mtime() > 1_000_000_000, "a later write's time wins");
    assert_eq!((st.mode() & 0o7777, st.uid(), st.len()), (0o640, 4321, 10));

    // Closed with only changes kept: they reach the MDS with the close (a fresh mount
    // asks the MDS, and this one no longer holds anything of the file).
    let mut f = fs::File::create(c.mnt.join("closed")).unwrap();
    f.write_all(b"extracted").unwrap();
    tar_attrs_kept(&c, f.as_raw_fd());
    drop(f);
    let m3 = c.mount_again("mnt3");
    check_tar_attrs(
        fs::metadata(m3.join("closed")).unwrap(),
        9,
        "a mount made after",
    );
}

/// Runs `f` on another thread while the MDS is stopped, and waits at most 5 s for it to
/// return: None if it did not (it waited for the MDS). The MDS goes on after.
fn while_mds_stopped<T: Send + 'static>(
    c: &TestCluster,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let _mds = Frozen::stop(c.pid("mds.0"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

/// A cluster with leases long enough to outlast an MDS stop on a loaded machine; a mount
/// (`mnt1`) that made directory `d`, holds its lease and has made `d/first` there; another
/// mount (`mnt2`). Returns (cluster, mnt1, mnt2).
fn leased_dir() -> (TestCluster, std::path::PathBuf, std::path::PathBuf) {
    let c = TestCluster::start_args(&["--lease-ms", "10000"]);
    let m2 = c.mount_again("mnt2");
    let m1 = c.mount_again("mnt1");
    fs::create_dir(m1.join("d")).unwrap();
    fs::write(m1.join("d/first"), b"1").unwrap();
    // Inode numbers are taken in the background once the directory lease is granted.
    std::thread::sleep(Duration::from_millis(1000));
    (c, m1, m2)
}

#[test]
fn files_made_in_a_directory_made_here_answer_at_once_and_land_before_another_mount_looks() {
    let (c, m1, m2) = leased_dir();
    let dir = m1.join("d");
    // With the MDS stopped, creates (empty or written) made under the directory's lease
    // still return.
    let made = while_mds_stopped(&c, move || {
        for i in 0..40 {
            let mut f = fs::File::create(dir.join(format!("f{i}"))).unwrap();
            if i % 2 == 1 {
                f.write_all(format!("data {i}").as_bytes()).unwrap();
            }
        }
        fs::metadata(dir.join("f39")).unwrap().len()
    });
    assert_eq!(made, Some(7), "creates waited for the MDS");
    // Modes and times set after close, while the create may still wait to be sent.
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for i in 40..60 {
        let p = m1.join(format!("d/f{i}"));
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(format!("data {i}").as_bytes()).unwrap();
        drop(f);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        set_mtime(&p, when);
    }
    // Another mount's look at the directory brings them all, contents and modes included.
    let mut names: Vec<String> = fs::read_dir(m2.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
    want.push("first".into());
    want.sort();
    assert_eq!(names, want);
    for i in 0..60 {
        let p = m2.join(format!("d/f{i}"));
        let want = if i % 2 == 1 || i >= 40 {
            format!("data {i}").into_bytes()
        } else {
            Vec::new()
        };
        assert_eq!(fs::read(&p).unwrap(), want, "f{i}");
        let meta = fs::metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode, if i >= 40 { 0o600 } else { 0o644 }, "f{i}");
        if i >= 40 {
            assert_eq!(meta.modified().unwrap(), when, "f{i}");
        }
    }
    // The other mount looked: the lease is gone, creates here go to the MDS, and a name
    // made on either side exists for the other at once.
    fs::write(m1.join("d/after"), b"a").unwrap();
    assert_eq!(fs::read(m2.join("d/after")).unwrap(), b"a");
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m2.join("d/f3"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
}

#[test]
fn small_files_closed_before_their_creates_went_land_with_them_even_if_the_mount_dies() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    fs::create_dir(m2.join("t")).unwrap();
    fs::write(m2.join("t/warm"), b"w").unwrap();
    // Inode numbers are taken in the background once the directory lease is granted.
    std::thread::sleep(Duration::from_millis(500));
    // As a tar extracts: small files made, written, closed, then given a mode and a time,
    // faster than the creates go to the MDS. Their data and sizes go with that batch.
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_200_000_000);
    let body = |i: usize| -> Vec<u8> { (0..(i * 37) % 5000).map(|j| (i + j) as u8).collect() };
    for i in 0..150 {
        let p = m2.join(format!("t/f{i}"));
        fs::write(&p, body(i)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        set_mtime(&p, when);
    }
    // Well past a batch's wait: the mount dies without unmounting, and everything it closed
    // is found whole from the other mount.
    std::thread::sleep(Duration::from_millis(1500));
    c.kill9("client.1");
    for i in 0..150 {
        let p = c.path(&format!("t/f{i}"));
        assert_eq!(fs::read(&p).unwrap(), body(i), "f{i}");
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "f{i}");
        assert_eq!(meta.modified().unwrap(), when, "f{i}");
    }
    let _ = Command::new("umount").arg("-l").arg(&m2).output();
}

#[test]
fn a_create_on_another_mount_finds_a_name_made_here_and_unmounting_lands_the_rest() {
    let c = TestCluster::start();
    let m2 = c.mount_again_with("mnt2", "dirleases");
    fs::create_dir(m2.join("d")).unwrap();
    fs::write(m2.join("d/warm"), b"w").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fs::write(m2.join("d/x"), b"made on mnt2").unwrap();
    // The exclusive create on the first mount revokes the directory lease, which lands x.
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(c.path("d/x"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    assert_eq!(fs::read(c.path("d/x")).unwrap(), b"made on mnt2");
    // A new directory, many files, and the mount goes at once: every file is there after.
    fs::create_dir(m2.join("e")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..200 {
        fs::write(m2.join(format!("e/g{i}")), format!("{i}")).unwrap();
    }
    assert!(Command::new("umount").arg(&m2).status().unwrap().success());
    for i in 0..200 {
        assert_eq!(
            fs::read_to_string(c.path(&format!("e/g{i}"))).unwrap(),
            format!("{i}"),
            "g{i}"
        );
    }
}

#[test]
fn a_directory_lease_in_use_is_renewed_so_removals_after_a_pause_answer_at_once() {
    let c = TestCluster::start_args(&["--lease-ms", "4000"]);
    let m2 = c.mount_again("mnt2");
    let d = c.path("d");
    fs::create_dir(&d).unwrap();
    for i in 0..20 {
        fs::write(d.join(format!("f{i}")), b"").unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    // Longer than a lease: the directories' leases are renewed, as they were used lately.
    std::thread::sleep(Duration::from_secs(5));
    // The way to it is looked up again (the root is not held here).
    assert!(fs::metadata(&d).unwrap().is_dir());
    let left = while_mds_stopped(&c, move || {
        for i in 0..20 {
            fs::remove_file(d.join(format!("f{i}"))).unwrap();
        }
        fs::remove_dir(d.join("sub")).unwrap();
    });
    assert!(left.is_some(), "removals waited for the MDS");
    assert_eq!(fs::read_dir(c.path("d")).unwrap().count(), 0);
    // Another mount's look lands them.
    assert_eq!(fs::read_dir(m2.join("d")).unwrap().count(), 0);
}

#[test]
fn a_tree_made_in_a_directory_made_here_answers_at_once_and_lands_whole() {
    let (c, m1, m2) = leased_dir();
    let d = m1.join("d");
    // With the MDS stopped, directories made under the lease, and files and directories
    // made in them, still answer.
    let made = while_mds_stopped(&c, move || {
        fs::DirBuilder::new()
            .mode(0o750)
            .create(d.join("a"))
            .unwrap();
        fs::create_dir_all(d.join("a/b/c")).unwrap();
        for sub in ["a", "a/b", "a/b/c"] {
            for i in 0..3 {
                fs::write(d.join(format!("{sub}/f{i}")), format!("{sub} {i}")).unwrap();
            }
        }
        // Empty directories made here go here too.
        fs::create_dir_all(d.join("a/b/tmp/x")).unwrap();
        fs::remove_dir(d.join("a/b/tmp/x")).unwrap();
        fs::remove_dir(d.join("a/b/tmp")).unwrap();
        let a = fs::metadata(d.join("a")).unwrap();
        (a.nlink(), a.permissions().mode() & 0o7777)
    });
    assert_eq!(
        made,
        Some((3, 0o750)),
        "mkdirs or rmdirs waited for the MDS"
    );
    assert!(!m1.join("d/a/b/tmp").exists());
    // An rmdir goes to the MDS after the mkdir it undoes.
    fs::create_dir(m1.join("d/a/b/gone")).unwrap();
    fs::remove_dir(m1.join("d/a/b/gone")).unwrap();
    for sub in ["a", "a/b", "a/b/c"] {
        let mut names: Vec<String> = fs::read_dir(m2.join("d").join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
        if sub != "a/b/c" {
            want.push(if sub == "a" { "b" } else { "c" }.into());
        }
        want.sort();
        assert_eq!(names, want, "{sub}");
        for i in 0..3 {
            let p = m2.join(format!("d/{sub}/f{i}"));
            assert_eq!(fs::read(&p).unwrap(), format!("{sub} {i}").into_bytes());
        }
    }
    let d2 = fs::metadata(m2.join("d")).unwrap();
    assert_eq!(d2.nlink(), 3, "d holds a");
    let c2 = fs::metadata(m2.join("d/a/b/c")).unwrap();
    assert_eq!(c2.nlink(), 2);
    assert!(!m2.join("d/a/b/gone").exists());
    // The other mount looked: a directory made there now is seen here at once.
    fs::create_dir(m2.join("d/a/other")).unwrap();
    assert!(m1.join("d/a/other").is_dir());
}

#[test]
fn files_removed_in_a_directory_held_here_go_at_once_and_their_data_after() {
    let (c, m1, m2) = leased_dir();
    let d = m1.join("d");
    fs::create_dir(d.join("sub")).unwrap();
    let before = c.object_files().len();
    for i in 0..10 {
        fs::File::create(d.join(format!("e{i}"))).unwrap();
        shoal_fstests::write_synced(&d.join(format!("w{i}")), &[i as u8 + 1; 4096]);
    }
    // A second name keeps w0's data.
    fs::hard_link(d.join("w0"), d.join("keep")).unwrap();
    let opened = fs::File::open(d.join("w1")).unwrap();
    fs::File::open(&d).unwrap().sync_all().unwrap();
    let written = c.object_files().len() - before;
    assert!(
        written >= 10,
        "{written} object files for ten written files"
    );
    let here = d.clone();
    // With the MDS stopped, files removed under the directory's lease still go, and what
    // cannot be removed says why.
    let removed = while_mds_stopped(&c, move || {
        let d = here;
        for i in 0..10 {
            fs::remove_file(d.join(format!("e{i}"))).unwrap();
            if i != 1 {
                fs::remove_file(d.join(format!("w{i}"))).unwrap();
            }
        }
        let missing = fs::remove_file(d.join("e0"))
            .err()
            .and_then(|e| e.raw_os_error());
        let dir = fs::remove_file(d.join("sub"))
            .err()
            .and_then(|e| e.raw_os_error());
        let keep = fs::metadata(d.join("keep")).unwrap().nlink();
        (missing, dir, keep)
    });
    assert_eq!(
        removed,
        Some((Some(libc::ENOENT), Some(libc::EISDIR), 1)),
        "removals waited for the MDS, or answered wrong"
    );
    // A file open here goes to the MDS, and its data stays until it is closed.
    fs::remove_file(d.join("w1")).unwrap();
    let mut names: Vec<String> = fs::read_dir(m2.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["first", "keep", "sub"]);
    assert_eq!(fs::read(m2.join("d/keep")).unwrap(), vec![1u8; 4096]);
    assert_eq!(fs::metadata(m2.join("d/keep")).unwrap().nlink(), 1);
    let mut buf = vec![0u8; 4096];
    opened.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, vec![2u8; 4096], "the open file's data went");
    drop(opened);
    // The removed files' objects go once their removal landed: what is left is keep's.
    let left = before + written / 10;
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.object_files().len() > left && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.object_files().len(),
        left,
        "removed files' objects are left"
    );
    // Their tombstones hold one block each once the OSDs have a quiet moment: the space the
    // data held is given back.
    let held = || -> Vec<(std::path::PathBuf, u64)> {
        c.tombstone_files()
            .into_iter()
            .filter_map(|p| Some((p.clone(), fs::metadata(&p).ok()?.len())))
            .filter(|(_, len)| *len > 4096)
            .collect()
    };
    assert!(
        c.tombstone_files().len() >= 9,
        "a tombstone per removed file's copy"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !held().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(held(), [], "tombstones still hold their object's bytes");
}
