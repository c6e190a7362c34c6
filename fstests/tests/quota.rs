//! Quotas on directory trees through real mounts: limits set with xattrs, usage counted by
//! the MDS, EDQUOT on every mount, statfs inside the tree.

use std::fs;
use std::io::Write;
use std::path::Path;

use shoal_fstests::{get_xattr, set_xattr, TestCluster};

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// statvfs(2): (total bytes, free bytes, inodes, free inodes).
fn statvfs(p: &Path) -> (u64, u64, u64, u64) {
    // SAFETY: a zeroed plain struct filled by the call, and a NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(shoal_fstests::cpath(p).as_ptr(), &mut s) };
    assert_eq!(r, 0, "statvfs {}", p.display());
    let f = s.f_frsize as u64;
    (
        s.f_blocks as u64 * f,
        s.f_bavail as u64 * f,
        s.f_files as u64,
        s.f_ffree as u64,
    )
}

#[test]
fn a_directory_quota_holds_on_every_mount() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let (qa, qb) = (c.path("q"), m2.join("q"));
    fs::create_dir(&qa).unwrap();
    fs::write(qa.join("before"), vec![1u8; 100_000]).unwrap();
    set_xattr(&qa, "shoal.quota.max_bytes", "1048576").unwrap();
    set_xattr(&qa, "shoal.quota.max_files", "10").unwrap();
    assert_eq!(get_xattr(&qb, "shoal.quota.max_bytes").unwrap(), "1048576");
    assert_eq!(get_xattr(&qb, "shoal.dir.rbytes").unwrap(), "100000");
    assert_eq!(
        set_xattr(&qa.join("before"), "shoal.quota.max_bytes", "1"),
        Err(libc::EINVAL)
    );
    assert_eq!(
        set_xattr(&qa, "shoal.quota.max_bytes", "many"),
        Err(libc::EINVAL)
    );

    // One mount writes most of it; the other is refused what goes past, at the write.
    fs::write(qa.join("a"), vec![2u8; 600_000]).unwrap();
    let mut b = fs::File::create(qb.join("b")).unwrap();
    assert_eq!(errno_of(b.write_all(&vec![3u8; 600_000])), libc::EDQUOT);
    b.write_all(&vec![3u8; 300_000]).unwrap();
    drop(b);
    assert_eq!(get_xattr(&qa, "shoal.dir.rbytes").unwrap(), "1000000");
    assert_eq!(get_xattr(&qa, "shoal.dir.rfiles").unwrap(), "3");
    // The first mount sees the quota full too, also when growing with truncate.
    let a = fs::OpenOptions::new()
        .write(true)
        .open(qa.join("a"))
        .unwrap();
    assert_eq!(errno_of(a.set_len(700_000)), libc::EDQUOT);
    assert_eq!(fs::metadata(qa.join("a")).unwrap().len(), 600_000);
    drop(a);

    // statfs inside the tree reports the quota; outside, the cluster.
    let (total, free, files, ffree) = statvfs(&qb);
    assert_eq!(total, 1 << 20, "size = the quota");
    assert!(free <= (1 << 20) - 1_000_000, "free {free}");
    assert_eq!((files, ffree), (10, 7));
    assert!(statvfs(&m2).0 > 1 << 20, "the root is not limited");

    // Creates stop at the inode limit, on both mounts.
    for i in 0..7 {
        fs::write(qb.join(format!("n{i}")), b"").unwrap();
    }
    assert_eq!(errno_of(fs::write(qa.join("n7"), b"")), libc::EDQUOT);
    assert_eq!(errno_of(fs::create_dir(qb.join("d"))), libc::EDQUOT);

    // Removing gives room back; moving a file out takes its usage along.
    fs::remove_file(qb.join("n0")).unwrap();
    fs::rename(qa.join("a"), c.path("a")).unwrap();
    assert_eq!(get_xattr(&qb, "shoal.dir.rbytes").unwrap(), "400000");
    assert_eq!(get_xattr(&qb, "shoal.dir.rfiles").unwrap(), "8");
    fs::write(qb.join("c"), vec![4u8; 600_000]).unwrap();
    assert_eq!(fs::read(qa.join("c")).unwrap().len(), 600_000);
    // A tree does not move across the boundary (mv copies it instead).
    fs::create_dir(c.path("tree")).unwrap();
    assert_eq!(
        errno_of(fs::rename(c.path("tree"), qa.join("tree"))),
        libc::EXDEV
    );
}

#[test]
fn tree_usage_counts_what_every_mount_just_wrote() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    fs::create_dir(c.path("t")).unwrap();
    // Closes under a write lease leave data and sizes to the background: reading the usage,
    // on this mount or another, or setting a first quota, counts them all the same.
    for round in 0..3u64 {
        let (writer, reader) = if round % 2 == 0 {
            (m2.join("t"), c.path("t"))
        } else {
            (c.path("t"), m2.join("t"))
        };
        for i in 0..20u64 {
            fs::write(writer.join(format!("f{round}-{i}")), vec![7u8; 10_000]).unwrap();
        }
        let want = (round + 1) * 20;
        assert_eq!(
            get_xattr(&reader, "shoal.dir.rfiles").unwrap(),
            want.to_string()
        );
        assert_eq!(
            get_xattr(&reader, "shoal.dir.rbytes").unwrap(),
            (want * 10_000).to_string()
        );
    }
    for i in 0..20u64 {
        fs::write(m2.join(format!("t/g{i}")), vec![1u8; 5_000]).unwrap();
    }
    set_xattr(&c.path("t"), "shoal.quota.max_files", "1000").unwrap();
    assert_eq!(get_xattr(&m2.join("t"), "shoal.dir.rfiles").unwrap(), "80");
    assert_eq!(
        get_xattr(&c.path("t"), "shoal.dir.rbytes").unwrap(),
        (600_000 + 100_000).to_string()
    );
}

#[test]
fn volumes_are_created_resized_listed_and_removed_from_the_cli() {
    let c = TestCluster::start();
    let ls = |c: &TestCluster| -> serde_json::Value {
        let out = c.shoal_ok(&["volume", "ls", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let create = [
        "volume",
        "create",
        "media",
        "--size",
        "1MiB",
        "--max-files",
        "5",
    ];
    c.shoal_ok(&create);
    // The same again is a no-op; other limits are refused; bad names are refused.
    c.shoal_ok(&create);
    let clash = c.shoal(&["volume", "create", "media", "--size", "2MiB"]);
    assert!(!clash.status.success());
    assert!(String::from_utf8_lossy(&clash.stderr).contains("exists with 1048576 bytes"));
    for bad in ["..", "a/b", ".x", &"n".repeat(129)] {
        let out = c.shoal(&["volume", "create", bad, "--size", "1M"]);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid volume name"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad_size = c.shoal(&["volume", "create", "x", "--size", "ten"]);
    assert!(!bad_size.status.success());

    // The volume is a directory with the quota, seen through the mount.
    let v = c.path("volumes/media");
    assert_eq!(get_xattr(&v, "shoal.quota.max_bytes").unwrap(), "1048576");
    fs::write(v.join("clip"), vec![7u8; 700_000]).unwrap();
    assert_eq!(
        errno_of(fs::write(v.join("clip2"), vec![7u8; 700_000])),
        libc::EDQUOT
    );
    let vols = ls(&c);
    assert_eq!(vols[0]["name"], "media");
    assert_eq!(vols[0]["max_bytes"], 1 << 20);
    assert_eq!(vols[0]["max_files"], 5);
    assert_eq!(vols[0]["used_bytes"], 700_000);
    assert_eq!(vols[0]["files"], 2);
    let table = String::from_utf8(c.shoal_ok(&["volume", "ls"]).stdout).unwrap();
    assert!(
        table.contains("media") && table.contains("1.0 MiB"),
        "{table}"
    );

    // Resized, the write fits.
    c.shoal_ok(&["volume", "resize", "media", "--size", "2MiB"]);
    fs::write(v.join("clip2"), vec![7u8; 700_000]).unwrap();
    assert_eq!(ls(&c)[0]["max_bytes"], 2 << 20);
    assert_eq!(ls(&c)[0]["max_files"], 5, "unchanged");
    assert!(!c
        .shoal(&["volume", "resize", "nope", "--size", "1M"])
        .status
        .success());

    // Removed with everything in it, its data gone from the OSDs too.
    fs::create_dir_all(v.join("a/b")).unwrap();
    fs::write(v.join("a/b/deep"), b"x").unwrap();
    c.shoal_ok(&["volume", "rm", "media"]);
    assert!(!v.exists());
    assert_eq!(ls(&c).as_array().unwrap().len(), 0);
    c.shoal_ok(&["volume", "rm", "media"]);
    let start = std::time::Instant::now();
    while !c.object_files().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "objects left: {:?}",
            c.object_files()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_mount_of_a_volume_shows_only_that_volume_and_its_quota() {
    use std::os::unix::fs::MetadataExt;
    let c = TestCluster::start();
    c.shoal_ok(&["volume", "create", "vol1", "--size", "2MiB"]);
    fs::write(c.path("outside"), b"not in the volume").unwrap();
    let mnt = c.root.path().join("vm");
    let m = mnt.to_str().unwrap();
    c.shoal_ok(&["mount", "--volume", "vol1", m]);

    // The volume's directory is the mount's root; nothing outside it shows.
    fs::write(mnt.join("a"), b"in the volume").unwrap();
    fs::create_dir(mnt.join("sub")).unwrap();
    fs::rename(mnt.join("a"), mnt.join("sub/a")).unwrap();
    assert_eq!(
        fs::read(c.path("volumes/vol1/sub/a")).unwrap(),
        b"in the volume"
    );
    let names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["sub"]);
    assert!(!mnt.join("outside").exists());
    assert_eq!(fs::metadata(&mnt).unwrap().ino(), 1, "the root is inode 1");
    assert_eq!(
        fs::canonicalize(mnt.join("sub/../..")).unwrap(),
        c.root.path().canonicalize().unwrap(),
        "'..' of the root leaves the mount, not into the cluster's tree"
    );
    // Changes through the whole-namespace mount show in the volume's.
    fs::write(c.path("volumes/vol1/b"), b"from outside").unwrap();
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"from outside");
    // Its users cannot lift it from inside.
    assert_eq!(
        set_xattr(&mnt, "shoal.quota.max_bytes", "0"),
        Err(libc::EPERM)
    );
    // Its quota is the size df shows, and holds: a write fills it up to the limit, no more.
    assert_eq!(statvfs(&mnt).0, 2 << 20);
    assert_eq!(
        errno_of(fs::write(mnt.join("big"), vec![0u8; 3 << 20])),
        libc::EDQUOT
    );
    let used: u64 = get_xattr(&mnt, "shoal.dir.rbytes")
        .unwrap()
        .parse()
        .unwrap();
    assert!(used <= 2 << 20, "{used} bytes in a volume of 2 MiB");

    // A volume that does not exist cannot be mounted, nor an invalid name.
    let other = c.root.path().join("vm2");
    let out = c.shoal(&["mount", "--volume", "nope", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let out = c.shoal(&["mount", "--volume", "../x", other.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid volume name"));
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .output();
}
