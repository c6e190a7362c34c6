//! Daemons killed with SIGKILL mid-session, the CLI's restart paths, and the mount(8) helper.
//! (Damaged copies on disk are in `replication.rs`.)

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_fstests::{bin, Frozen, TestCluster};

fn content(i: usize) -> Vec<u8> {
    format!("file {i} ").repeat(1000 + i).into_bytes()
}

/// Writes, fsyncs and records files until told to stop; every recorded file was acknowledged.
fn writer(c: &TestCluster, stop: &AtomicBool, done: &Mutex<Vec<usize>>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut f = File::create(c.path(&format!("w/{i}"))).unwrap();
        f.write_all(&content(i)).unwrap();
        f.sync_all().unwrap();
        done.lock().unwrap().push(i);
        i += 1;
    }
}

fn check_all(c: &TestCluster, done: &[usize]) {
    assert!(!done.is_empty());
    for &i in done {
        assert_eq!(
            fs::read(c.path(&format!("w/{i}"))).unwrap(),
            content(i),
            "file {i}"
        );
    }
}

#[test]
fn mds_killed_mid_write_loses_nothing_acknowledged() {
    let c = TestCluster::start();
    fs::create_dir(c.path("w")).unwrap();
    let stop = AtomicBool::new(false);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| writer(&c, &stop, &done));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            c.kill9("mds.0");
            std::thread::sleep(Duration::from_millis(300));
            c.up();
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let done = done.into_inner().unwrap();
    check_all(&c, &done);
    // Nothing half-applied: every listed name is a complete file, and nothing extra.
    assert!(fs::read_dir(c.path("w")).unwrap().count() <= done.len() + 1);
    assert_eq!(c.wait_clean(Duration::from_secs(60))["health"], "HEALTH_OK");
}

#[test]
fn each_osd_killed_and_restarted_keeps_fsynced_data() {
    let c = TestCluster::start();
    fs::create_dir(c.path("w")).unwrap();
    let stop = AtomicBool::new(false);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| writer(&c, &stop, &done));
        for osd in ["osd.0", "osd.1", "osd.2"] {
            std::thread::sleep(Duration::from_millis(500));
            let before = c.pid(osd);
            c.kill9(osd);
            std::thread::sleep(Duration::from_millis(300));
            c.up();
            assert_ne!(c.pid(osd), before, "{osd} was restarted");
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    check_all(&c, &done.into_inner().unwrap());
}

#[test]
fn osds_killed_before_their_object_files_reached_the_disk_replay_their_journals() {
    // No checkpoint meanwhile: only the journals hold what follows.
    let c = TestCluster::start_env(&[], &[("SHOAL_OSD_CHECKPOINT_SECS", "3600")]);
    fs::create_dir(c.path("w")).unwrap();
    let n = 20;
    for i in 0..n {
        let mut f = File::create(c.path(&format!("w/{i}"))).unwrap();
        f.write_all(&content(i)).unwrap();
        f.sync_all().unwrap();
    }
    for osd in ["osd.0", "osd.1", "osd.2"] {
        c.kill9(osd);
    }
    // What a power cut leaves of object files no one synced: none of their changes.
    let files = c.object_files();
    assert!(files.len() >= 3 * n, "{} object files", files.len());
    for f in &files {
        OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    c.up();
    // Read by a mount that kept nothing of them.
    let other = c.mount_again("other");
    for i in 0..n {
        assert_eq!(
            fs::read(other.join(format!("w/{i}"))).unwrap(),
            content(i),
            "file {i}"
        );
    }
    assert_eq!(c.wait_clean(Duration::from_secs(60))["health"], "HEALTH_OK");
}

#[test]
fn a_close_at_exec_does_not_wait_for_an_mds_that_is_away_and_the_data_lands_after() {
    let c = TestCluster::start_args(&["--osds", "3", "--lease-ms", "1000"]);
    let path = c.path("kept");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"first ").unwrap();
    f.sync_all().unwrap();
    // Kept here under the write lease, which then runs out while the MDS is stopped.
    f.write_all(b"second").unwrap();
    let frozen = Frozen::stop(c.pid("mds.0"));
    std::thread::sleep(Duration::from_millis(2500));
    // Spawning a process closes this process's copy of the descriptor at exec: that close
    // may not wait for the MDS (it could be the very command that restarts it).
    let start = Instant::now();
    let out = Command::new("true").output().unwrap();
    assert!(out.status.success());
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "a close at exec waited {took:?} for a stopped MDS"
    );
    drop(frozen);
    // No one else touched the file: the MDS keeps the lease, and the data lands.
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"first second");
    let other = c.mount_again("mnt2");
    assert_eq!(fs::read(other.join("kept")).unwrap(), b"first second");
}

#[test]
fn client_killed_then_remounted_by_up() {
    let c = TestCluster::start();
    let mut f = File::create(c.path("kept")).unwrap();
    f.write_all(b"survives the client").unwrap();
    f.sync_all().unwrap();
    drop(f);
    c.kill9("client.0");
    // The dead mount answers with an error, never with data.
    assert!(fs::read(c.path("kept")).is_err());
    let others = (c.pid("mds.0"), c.pid("osd.0"));
    c.up();
    assert_eq!(fs::read(c.path("kept")).unwrap(), b"survives the client");
    // Only the missing daemon was started.
    assert_eq!((c.pid("mds.0"), c.pid("osd.0")), others);
}

#[test]
fn up_twice_status_and_second_mount() {
    let c = TestCluster::start();
    let pids: Vec<i32> = ["mds.0", "osd.0", "osd.1", "osd.2", "client.0"]
        .iter()
        .map(|d| c.pid(d))
        .collect();
    c.up();
    let again: Vec<i32> = ["mds.0", "osd.0", "osd.1", "osd.2", "client.0"]
        .iter()
        .map(|d| c.pid(d))
        .collect();
    assert_eq!(pids, again, "up on a running cluster starts nothing");
    let st = c.wait_clean(Duration::from_secs(60));
    assert_eq!(st["health"], "HEALTH_OK");
    assert_eq!(st["osds"].as_array().unwrap().len(), 3);
    assert_eq!(st["mds_leader"], 1);
    let text = String::from_utf8(c.shoal_ok(&["status", "--nearfull-ratio", "1"]).stdout).unwrap();
    assert!(
        text.contains("HEALTH_OK") && text.contains("osd.2"),
        "{text}"
    );

    // A second mount sees the first one's files.
    fs::write(c.path("shared"), b"one namespace").unwrap();
    let second = c.root.path().join("mnt2");
    c.shoal_ok(&["mount", second.to_str().unwrap()]);
    assert_eq!(fs::read(second.join("shared")).unwrap(), b"one namespace");
    let out = Command::new("umount").arg(&second).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel's readahead on the mount at `mnt` (its device's read_ahead_kb), once it is
/// `want` or after 10 s.
fn readahead_kb(mnt: &std::path::Path, want: u64) -> u64 {
    let dev = shoal_client::mount::mounted_device(mnt).expect("mounted");
    let start = std::time::Instant::now();
    loop {
        let kb: u64 = fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if kb == want || start.elapsed() > std::time::Duration::from_secs(10) {
            return kb;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn mounts_read_ahead_4_mib_or_what_rasize_says() {
    if !shoal_fstests::root_or_skip("the readahead knob is root's") {
        return;
    }
    let c = TestCluster::start();
    assert_eq!(readahead_kb(&c.mnt, 4096), 4096, "the default");
    let tmp = tempfile::tempdir().unwrap();
    let helper = tmp.path().join("mount.fuse.shoal");
    std::os::unix::fs::symlink(bin("shoal-fuse"), &helper).unwrap();
    let mount = |name: &str, opts: &str| {
        let mnt = tmp.path().join(name);
        fs::create_dir(&mnt).unwrap();
        let out = Command::new(&helper)
            .arg(&c.data)
            .arg(&mnt)
            .args(["-o", opts])
            .output()
            .unwrap();
        (mnt, out)
    };
    let (m1, out) = mount("m1", "rw,rasize=1m");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(readahead_kb(&m1, 1024), 1024);
    // A sequential read through it reads what was written.
    let data: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 253) as u8).collect();
    fs::write(c.path("seq"), &data).unwrap();
    assert!(fs::read(m1.join("seq")).unwrap() == data, "contents differ");
    assert!(Command::new("umount").arg(&m1).status().unwrap().success());
    // A size that is none fails the mount with the reason.
    let (m2, out) = mount("m2", "rasize=lots");
    assert!(!out.status.success(), "mounted with rasize=lots");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rasize=lots"), "{err}");
    assert!(shoal_client::mount::mounted_fstype(&m2).is_none());
}

#[test]
fn mount_helper_and_mount_t_fuse_shoal() {
    let c = TestCluster::start();
    fs::write(c.path("hello"), b"via helper").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The helper as mount(8) calls it: argv[0] mount.fuse.shoal, SOURCE MNT -o OPTIONS.
    let helper = tmp.path().join("mount.fuse.shoal");
    std::os::unix::fs::symlink(bin("shoal-fuse"), &helper).unwrap();
    let mnt = tmp.path().join("m1");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new(&helper)
        .arg(&c.data)
        .arg(&mnt)
        .args(["-o", "rw,noatime,_netdev"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"via helper");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());

    // mount -t fuse.shoal through /sbin/mount.fuse.shoal, as /etc/fstab uses it (root only).
    if !shoal_fstests::root_or_skip("mount -t fuse.shoal") {
        return;
    }
    let sbin = std::path::Path::new("/sbin/mount.fuse.shoal");
    if fs::read_link(sbin).ok().as_deref() != Some(bin("shoal-fuse").as_path()) {
        let _ = fs::remove_file(sbin);
        std::os::unix::fs::symlink(bin("shoal-fuse"), sbin).unwrap();
    }
    let addr = fs::read_to_string(c.data.join("mds.0/addr")).unwrap();
    let mnt = tmp.path().join("m2");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "fuse.shoal", addr.trim()])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = OpenOptions::new()
        .read(true)
        .open(mnt.join("hello"))
        .unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "via helper");
    drop(f);
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
}
