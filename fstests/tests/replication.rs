//! Replicated data through real mounts: OSDs killed and wiped, copies damaged on disk, and the
//! cluster healing itself back to active+clean.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use shoal_fstests::{get_xattr, set_xattr, TestCluster};

/// Where an object's bytes start in its file on an OSD.
const DATA: usize = shoal_osd::store::DATA as usize;

const MIB: usize = 1 << 20;

/// Chunk `i` of a reproducible pseudo-random stream.
fn chunk(seed: u64, i: usize, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
    let mut buf = vec![0u8; len];
    rng.fill_bytes(&mut buf);
    buf
}

/// Reads `path` back and compares it, chunk by chunk, with the stream it was written from.
fn verify(path: &std::path::Path, seed: u64, chunks: usize, len: usize) {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    for i in 0..chunks {
        f.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading chunk {i}: {e}"));
        assert!(buf == chunk(seed, i, len), "chunk {i} differs");
    }
    assert_eq!(f.read(&mut buf).unwrap(), 0, "file is longer than written");
}

fn scrub_deep(c: &TestCluster) -> serde_json::Value {
    let out = c.shoal_ok(&["scrub", "--deep", "--json"]);
    serde_json::from_slice(&out.stdout).expect("scrub --json is JSON")
}

/// How many OSDs hold a data file for each object name.
fn copies_per_object(c: &TestCluster, osds: &[&str]) -> std::collections::HashMap<String, usize> {
    let mut per = std::collections::HashMap::new();
    for osd in osds {
        for p in c.object_files_of(osd) {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            *per.entry(name).or_default() += 1;
        }
    }
    per
}

#[test]
fn osd_killed_during_a_1_gib_write_then_healed_and_deep_scrubbed() {
    let c = TestCluster::start_args(&["--osds", "3", "--replicas", "3", "--osd-grace", "3"]);
    let path = c.path("big");
    let chunks = 1024;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut f = File::create(&path).unwrap();
            for i in 0..chunks {
                f.write_all(&chunk(1, i, MIB)).unwrap();
            }
            f.sync_all().unwrap();
        });
        std::thread::sleep(Duration::from_secs(2));
        c.kill9("osd.1");
        writer
            .join()
            .expect("the write completes with one OSD down");
    });
    verify(&path, 1, chunks, MIB);
    let st = c.status();
    assert_eq!(st["pool"]["size"], 3);
    assert_eq!(st["pool"]["min_size"], 2);
    assert_eq!(st["health"], "HEALTH_WARN", "{st}");

    c.up();
    let st = c.wait_clean(Duration::from_secs(180));
    assert_eq!(st["health"], "HEALTH_OK", "{st}");
    let scrub = scrub_deep(&c);
    assert!(scrub["objects"].as_u64().unwrap() >= 256, "{scrub}");
    assert_eq!(scrub["inconsistent"], 0, "{scrub}");
    // Every object has exactly three copies on disk.
    let per = copies_per_object(&c, &["osd.0", "osd.1", "osd.2"]);
    assert!(per.len() >= 256);
    assert!(per.values().all(|&n| n == 3), "{per:?}");
    verify(&path, 1, chunks, MIB);
}

#[test]
fn two_of_three_osds_down_blocks_io_then_resumes_without_remount() {
    let c = TestCluster::start_args(&["--osd-grace", "3"]);
    fs::write(c.path("before"), chunk(2, 0, 3 * MIB)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let (got, src) = (local.path().join("got"), local.path().join("src"));
    fs::write(&src, chunk(3, 0, 2 * MIB)).unwrap();
    c.kill9("osd.0");
    c.kill9("osd.2");
    // Once the map says so, PGs have fewer than min_size copies: I/O waits. The I/O runs in a
    // process of its own: a descriptor of a file with unsent data, open here, would be closed
    // (flushed, waiting for the OSDs) in every child this test spawns, at its exec.
    let start = Instant::now();
    while c.status()["health"] != "HEALTH_ERR" {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", c.status());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let script = format!(
        "cat '{}' > '{}' && dd if='{}' of='{}' bs=1M conv=fsync status=none",
        c.path("before").display(),
        got.display(),
        src.display(),
        c.path("during").display()
    );
    let mut io = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        io.try_wait().unwrap().is_none(),
        "I/O finished with two of three copies down"
    );
    // One OSD back: min_size copies are up again and the waiting I/O goes through.
    c.up();
    let started = Instant::now();
    assert!(
        io.wait().unwrap().success(),
        "the I/O failed after recovery"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        fs::read(&got).unwrap() == chunk(2, 0, 3 * MIB),
        "read wrong bytes"
    );
    assert!(fs::read(c.path("during")).unwrap() == chunk(3, 0, 2 * MIB));
    assert!(fs::read(c.path("before")).unwrap() == chunk(2, 0, 3 * MIB));
}

#[test]
fn a_flipped_byte_in_one_copy_reads_right_and_scrub_repairs_it() {
    let c = TestCluster::start();
    let data = chunk(4, 0, 100_000);
    shoal_fstests::write_synced(&c.path("victim"), &data);
    let copies = c.object_files();
    assert_eq!(copies.len(), 3, "one object, three copies");
    // Damage one copy: whichever OSD serves reads, the data comes back right.
    for (n, path) in copies.iter().enumerate() {
        let mut raw = fs::read(path).unwrap();
        raw[DATA + 50_000] ^= 0x40;
        fs::write(path, &raw).unwrap();
        let mut f = File::open(c.path("victim")).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(got == data, "wrong data with copy {n} damaged");
        let scrub = scrub_deep(&c);
        // The primary may have repaired its own copy on the read already.
        assert!(scrub["inconsistent"].as_u64().unwrap() <= 1, "{scrub}");
        assert_eq!(scrub["inconsistent"], scrub["repaired"], "{scrub}");
        let again = scrub_deep(&c);
        assert_eq!(again["inconsistent"], 0, "repair did not stick: {again}");
        assert!(
            fs::read(path).unwrap()[DATA..] == data[..],
            "copy {n} repaired on disk"
        );
    }
    // The repairs show in `shoal status` once the primaries report (every 2 s).
    let start = Instant::now();
    loop {
        let st = c.status();
        if st["pgs"]["repaired"].as_u64().unwrap() >= 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", st["pgs"]);
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn every_copy_damaged_reads_as_eio_never_wrong_bytes() {
    let c = TestCluster::start();
    let data = vec![0xabu8; 100_000];
    shoal_fstests::write_synced(&c.path("victim"), &data);
    for path in c.object_files() {
        let mut raw = fs::read(&path).unwrap();
        raw[DATA + 50_000] ^= 0x40;
        fs::write(&path, &raw).unwrap();
    }
    let mut f = File::open(c.path("victim")).unwrap();
    let mut buf = Vec::new();
    let err = f.read_to_end(&mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Bytes in intact blocks still read.
    let mut f = File::open(c.path("victim")).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0xab));
    for d in ["mds.0", "osd.0", "osd.1", "osd.2", "client.0"] {
        assert!(shoal_fstests::alive(c.pid(d)), "{d} died");
    }
    // Rewriting the file heals it.
    fs::write(c.path("victim"), &data).unwrap();
    assert_eq!(fs::read(c.path("victim")).unwrap(), data);
}

#[test]
fn a_wiped_osd_is_rebuilt_to_three_copies() {
    let c = TestCluster::start_args(&["--osd-grace", "3"]);
    fs::create_dir(c.path("d")).unwrap();
    for i in 0..20 {
        // fsynced: a close leaves the data to the background.
        let mut f = File::create(c.path(&format!("d/{i}"))).unwrap();
        f.write_all(&chunk(5, i, 300_000 + i * 1000)).unwrap();
        f.sync_all().unwrap();
    }
    let before = c.object_files_of("osd.2").len();
    assert!(before >= 20);
    c.kill9("osd.2");
    fs::remove_dir_all(c.data.join("osd.2").join("objects")).unwrap();
    c.up();
    c.wait_clean(Duration::from_secs(120));
    assert_eq!(c.object_files_of("osd.2").len(), before);
    let per = copies_per_object(&c, &["osd.0", "osd.1", "osd.2"]);
    assert!(per.values().all(|&n| n == 3), "{per:?}");
    let scrub = scrub_deep(&c);
    assert_eq!(scrub["inconsistent"], 0, "{scrub}");
    for i in 0..20 {
        assert!(fs::read(c.path(&format!("d/{i}"))).unwrap() == chunk(5, i, 300_000 + i * 1000));
    }
}

#[test]
fn a_striped_file_at_random_offsets_matches_a_reference() {
    use rand::Rng;
    use std::os::unix::fs::FileExt;
    let c = TestCluster::start();
    let path = c.path("striped");
    File::create(&path).unwrap();
    assert_eq!(
        get_xattr(&path, "shoal.layout").unwrap(),
        "object_size=4194304 stripe_unit=4194304 stripe_count=1"
    );
    set_xattr(&path, "shoal.layout", "stripe_unit=65536 stripe_count=4").unwrap();
    assert_eq!(get_xattr(&path, "shoal.layout.stripe_count").unwrap(), "4");
    assert_eq!(
        get_xattr(&path, "shoal.layout.stripe_unit").unwrap(),
        "65536"
    );
    assert_eq!(
        set_xattr(&path, "shoal.layout", "stripe_unit=1000"),
        Err(libc::EINVAL)
    );
    assert_eq!(get_xattr(&path, "shoal.dir.layout"), Err(libc::ENODATA));

    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut reference: Vec<u8> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for _ in 0..150 {
        let off = rng.gen_range(0..10 * MIB);
        let len = rng.gen_range(1..300_000);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        f.write_all_at(&data, off as u64).unwrap();
        if reference.len() < off + len {
            reference.resize(off + len, 0);
        }
        reference[off..off + len].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    // Not empty any more: the layout is fixed.
    assert_eq!(
        set_xattr(&path, "shoal.layout.stripe_count", "2"),
        Err(libc::ENOTEMPTY)
    );
    drop(f);
    let f = File::open(&path).unwrap();
    for _ in 0..100 {
        let off = rng.gen_range(0..reference.len());
        let len = rng.gen_range(1..400_000).min(reference.len() - off);
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf == reference[off..off + len], "read at {off}+{len}");
    }
    assert!(fs::read(&path).unwrap() == reference);
    // 64 KiB units dealt over 4 objects per 4 MiB object set: the file spans many objects.
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    let per = copies_per_object(&c, &["osd.0", "osd.1", "osd.2"]);
    let mine = per
        .keys()
        .filter(|n| n.starts_with(&format!("{ino:016x}.")))
        .count();
    assert!(mine >= 4, "{mine} objects");

    // A directory's layout is what new files in it get.
    let dir = c.path("wide");
    fs::create_dir(&dir).unwrap();
    set_xattr(&dir, "shoal.dir.layout.stripe_count", "3").unwrap();
    set_xattr(&dir, "shoal.dir.layout.stripe_unit", "131072").unwrap();
    fs::write(dir.join("child"), b"inherits").unwrap();
    assert_eq!(
        get_xattr(&dir.join("child"), "shoal.layout").unwrap(),
        "object_size=4194304 stripe_unit=131072 stripe_count=3"
    );
    assert_eq!(fs::read(dir.join("child")).unwrap(), b"inherits");
    assert_eq!(get_xattr(&dir, "shoal.layout"), Err(libc::ENODATA));
}

#[test]
fn a_fourth_osd_added_under_load_is_backfilled() {
    let c = TestCluster::start();
    fs::create_dir(c.path("d")).unwrap();
    let files = 24;
    for i in 0..files {
        fs::write(c.path(&format!("d/{i}")), chunk(7, i, 500_000 + i * 999)).unwrap();
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Load while the PGs move: rewrite and re-read files, checking every byte.
        let load = s.spawn(|| {
            let mut round = 0usize;
            while !stop.load(Ordering::SeqCst) {
                for i in 0..files {
                    let want = chunk(7, i, 500_000 + i * 999);
                    let got = fs::read(c.path(&format!("d/{i}"))).unwrap();
                    assert!(got == want, "file {i} read wrong during backfill");
                }
                let p = c.path(&format!("new-{round}"));
                fs::write(&p, chunk(8, round, 200_000)).unwrap();
                assert!(fs::read(&p).unwrap() == chunk(8, round, 200_000));
                round += 1;
            }
            round
        });
        std::thread::sleep(Duration::from_millis(500));
        c.shoal_ok(&["up", "--osds", "4", "--detach"]);
        c.wait_clean(Duration::from_secs(120));
        stop.store(true, Ordering::SeqCst);
        let rounds = load.join().expect("load saw only right bytes");
        assert!(rounds >= 1);
    });
    let st = c.status();
    assert_eq!(st["osds"].as_array().unwrap().len(), 4);
    assert!(!c.object_files_of("osd.3").is_empty(), "osd.3 got no PGs");
    // Strays dropped their copies: still exactly three per object, now over four OSDs.
    let per = copies_per_object(&c, &["osd.0", "osd.1", "osd.2", "osd.3"]);
    assert!(per.values().all(|&n| n == 3), "{per:?}");
    for i in 0..files {
        assert!(fs::read(c.path(&format!("d/{i}"))).unwrap() == chunk(7, i, 500_000 + i * 999));
    }
}

#[test]
fn copies_go_to_distinct_hosts_and_an_osd_down_too_long_is_replaced() {
    // Four OSDs on two host labels, two copies: every object has one copy per host.
    let c = TestCluster::start_args(&[
        "--osds",
        "4",
        "--hosts",
        "2",
        "--replicas",
        "2",
        "--osd-grace",
        "2",
        "--osd-out",
        "4",
    ]);
    fs::create_dir(c.path("d")).unwrap();
    for i in 0..16 {
        shoal_fstests::write_synced(&c.path(&format!("d/{i}")), &chunk(9, i, 200_000));
    }
    let st = c.status();
    assert_eq!(st["pool"]["size"], 2);
    assert_eq!(st["pool"]["min_size"], 1);
    let host = |osd: &str| {
        if osd == "osd.0" || osd == "osd.2" {
            0
        } else {
            1
        }
    };
    let mut hosts_of: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for osd in ["osd.0", "osd.1", "osd.2", "osd.3"] {
        for p in c.object_files_of(osd) {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            hosts_of.entry(name).or_default().push(host(osd));
        }
    }
    assert!(hosts_of.len() >= 16);
    for (name, hosts) in &hosts_of {
        let mut h = hosts.clone();
        h.sort_unstable();
        assert_eq!(h, vec![0, 1], "{name}: copies on hosts {hosts:?}");
    }

    // osd.3 dies: down after the grace period, out after the out interval, and its PGs are
    // re-replicated on the others without anyone doing anything.
    c.kill9("osd.3");
    let start = Instant::now();
    loop {
        let st = c.status();
        let osd3 = &st["osds"].as_array().unwrap()[3];
        if osd3["up"] == false && osd3["in_cluster"] == false && st["pgs"]["all_clean"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "osd.3 not replaced: {}",
            st["pgs"]["states"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let per = copies_per_object(&c, &["osd.0", "osd.1", "osd.2"]);
    for name in hosts_of.keys() {
        assert_eq!(per.get(name), Some(&2), "{name} not back to two copies");
    }
    for i in 0..16 {
        assert!(fs::read(c.path(&format!("d/{i}"))).unwrap() == chunk(9, i, 200_000));
    }
}
