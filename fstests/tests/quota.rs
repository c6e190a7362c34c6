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
