//! The namespace: many files, trees, renames, links, symlinks, xattrs, modes and times.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use shoal_fstests::TestCluster;

fn errno_of(r: std::io::Result<()>) -> i32 {
    r.expect_err("the call should fail")
        .raw_os_error()
        .unwrap_or(0)
}

#[test]
fn ten_thousand_files_in_one_directory() {
    let c = TestCluster::start();
    let dir = c.path("many");
    fs::create_dir(&dir).unwrap();
    const N: usize = 10_000;
    // Four writers, so the MDS can batch their log appends.
    std::thread::scope(|s| {
        for t in 0..4 {
            let dir = &dir;
            s.spawn(move || {
                for i in (t..N).step_by(4) {
                    File::create(dir.join(format!("f{i:05}"))).unwrap();
                }
            });
        }
    });
    let names: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), N);
    assert!(names.iter().all(|n| n.starts_with('f') && n.len() == 6));
    let mut inos = BTreeSet::new();
    for n in &names {
        let m = fs::metadata(dir.join(n)).unwrap();
        assert!(m.is_file());
        assert_eq!(m.len(), 0);
        inos.insert(m.ino());
    }
    assert_eq!(inos.len(), N, "every file has its own inode");
    for n in &names {
        fs::remove_file(dir.join(n)).unwrap();
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    fs::remove_dir(&dir).unwrap();
}

#[test]
fn nested_tree_and_directory_rules() {
    let c = TestCluster::start();
    let deep = c.path("a/b/c/d/e/f/g/h");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"leaf").unwrap();
    for i in 0..5 {
        for j in 0..5 {
            let d = c.path(&format!("t/{i}/{j}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("f"), format!("{i}{j}")).unwrap();
        }
    }
    assert_eq!(fs::read(c.path("a/b/c/d/e/f/g/h/leaf")).unwrap(), b"leaf");
    assert_eq!(fs::read_to_string(c.path("t/3/4/f")).unwrap(), "34");
    // A directory's link count: 2 plus one per subdirectory.
    assert_eq!(fs::metadata(c.path("t")).unwrap().nlink(), 2 + 5);
    // rmdir of a non-empty directory fails; of an empty one works.
    assert_eq!(errno_of(fs::remove_dir(c.path("t/0"))), libc::ENOTEMPTY);
    fs::remove_dir_all(c.path("t")).unwrap();
    assert!(!c.path("t").exists());
    // Names: too long, already there, not a directory.
    let long = "x".repeat(256);
    assert_eq!(
        errno_of(File::create(c.path(&long)).map(drop)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno_of(fs::create_dir(c.path("a"))), libc::EEXIST);
    assert_eq!(errno_of(fs::create_dir(deep.join("leaf/x"))), libc::ENOTDIR);
    assert_eq!(
        fs::metadata(c.path("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn rename_cases() {
    let c = TestCluster::start();
    let p = |s: &str| c.path(s);
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    // Over a file: the target's contents are replaced.
    fs::rename(p("a"), p("b")).unwrap();
    assert!(!p("a").exists());
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    // A directory over an empty directory, across parents.
    fs::create_dir_all(p("d1/sub")).unwrap();
    fs::write(p("d1/sub/x"), b"x").unwrap();
    fs::create_dir_all(p("d2/empty")).unwrap();
    fs::rename(p("d1/sub"), p("d2/empty")).unwrap();
    assert_eq!(fs::read(p("d2/empty/x")).unwrap(), b"x");
    assert!(!p("d1/sub").exists());
    // Over a non-empty directory: ENOTEMPTY.
    fs::create_dir_all(p("d3/full")).unwrap();
    fs::write(p("d3/full/y"), b"y").unwrap();
    fs::create_dir(p("d4")).unwrap();
    assert_eq!(errno_of(fs::rename(p("d4"), p("d3/full"))), libc::ENOTEMPTY);
    // A directory into its own subtree: EINVAL.
    assert_eq!(
        errno_of(fs::rename(p("d2"), p("d2/empty/inside"))),
        libc::EINVAL
    );
    // File over directory and directory over file.
    assert_eq!(errno_of(fs::rename(p("b"), p("d4"))), libc::EISDIR);
    assert_eq!(errno_of(fs::rename(p("d4"), p("b"))), libc::ENOTDIR);
    // Cross-directory file rename keeps the inode; ".." follows a moved directory.
    let ino = fs::metadata(p("b")).unwrap().ino();
    fs::rename(p("b"), p("d3/b2")).unwrap();
    assert_eq!(fs::metadata(p("d3/b2")).unwrap().ino(), ino);
    fs::rename(p("d4"), p("d3/d4")).unwrap();
    assert_eq!(
        fs::metadata(p("d3/d4/..")).unwrap().ino(),
        fs::metadata(p("d3")).unwrap().ino()
    );
    let names: BTreeSet<String> = fs::read_dir(p("d3"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        ["b2", "d4", "full"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn hard_links_symlinks_xattrs_modes_times() {
    let c = TestCluster::start();
    let p = |s: &str| c.path(s);
    fs::write(p("f"), b"data").unwrap();
    fs::hard_link(p("f"), p("g")).unwrap();
    fs::create_dir(p("d")).unwrap();
    fs::hard_link(p("f"), p("d/h")).unwrap();
    assert_eq!(fs::metadata(p("f")).unwrap().nlink(), 3);
    assert_eq!(
        fs::metadata(p("g")).unwrap().ino(),
        fs::metadata(p("f")).unwrap().ino()
    );
    fs::remove_file(p("f")).unwrap();
    assert_eq!(fs::metadata(p("g")).unwrap().nlink(), 2);
    assert_eq!(fs::read(p("d/h")).unwrap(), b"data");
    assert_eq!(errno_of(fs::hard_link(p("d"), p("dlink"))), libc::EPERM);

    std::os::unix::fs::symlink("d/h", p("s")).unwrap();
    assert_eq!(fs::read_link(p("s")).unwrap(), Path::new("d/h"));
    assert_eq!(fs::read(p("s")).unwrap(), b"data");
    assert!(fs::symlink_metadata(p("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    std::os::unix::fs::symlink("nowhere", p("dangling")).unwrap();
    assert_eq!(
        fs::read(p("dangling")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // chmod and utimes persist; ctime moves on chmod.
    fs::set_permissions(p("g"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(p("g")).unwrap().mode() & 0o7777, 0o640);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(p("g"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::metadata(p("g")).unwrap().mtime(), 1_000_000_000);
    // A write after utimes moves mtime forward again, and survives close.
    let mut f = File::options().append(true).open(p("g")).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert!(fs::metadata(p("g")).unwrap().mtime() > 1_000_000_000);
    assert_eq!(fs::read(p("g")).unwrap(), b"data!");

    // xattrs through the real syscalls.
    let path = std::ffi::CString::new(p("g").into_os_string().into_encoded_bytes()).unwrap();
    let name = c"user.color";
    // SAFETY: valid C strings and buffers for each call.
    unsafe {
        assert_eq!(
            libc::setxattr(path.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0),
            0
        );
        let mut buf = [0u8; 16];
        let n = libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(n, 4);
        assert_eq!(&buf[..4], b"blue");
        let n = libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(&buf[..n as usize], b"user.color\0");
        // XATTR_CREATE on an existing name fails; remove then get fails with ENODATA.
        assert_eq!(
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                b"red".as_ptr().cast(),
                3,
                libc::XATTR_CREATE
            ),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(libc::removexattr(path.as_ptr(), name.as_ptr()), 0);
        assert_eq!(
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len()
            ),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    }

    // mknod: a fifo.
    let fifo = std::ffi::CString::new(p("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(p("fifo")).unwrap().file_type()
    ));
}

/// Lists `dir` through libc: `first` entries on one handle, then the rest on another after
/// seekdir to the first's telldir. Names and kinds.
fn list_in_two_handles(dir: &Path, first: usize) -> Vec<(String, &'static str)> {
    use std::ffi::{CStr, CString};
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut out = Vec::new();
    let read = |d: *mut libc::DIR, n: usize, out: &mut Vec<(String, &'static str)>| {
        while out.len() < n {
            // SAFETY: `d` is an open directory stream; the entry is read before the next call.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                return;
            }
            // SAFETY: a non-null entry from readdir, its name NUL-terminated.
            let (name, kind) = unsafe { (CStr::from_ptr((*e).d_name.as_ptr()), (*e).d_type) };
            let name = name.to_str().unwrap().to_string();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match kind {
                libc::DT_DIR => "dir",
                libc::DT_LNK => "symlink",
                libc::DT_REG => "file",
                k => panic!("{name}: d_type {k}"),
            };
            out.push((name, kind));
        }
    };
    // SAFETY: a valid C path; the streams are closed below.
    let d = unsafe { libc::opendir(path.as_ptr()) };
    assert!(!d.is_null(), "opendir");
    read(d, first, &mut out);
    // SAFETY: an open stream.
    let at = unsafe { libc::telldir(d) };
    // SAFETY: closed once.
    unsafe { libc::closedir(d) };
    // SAFETY: as above.
    let d = unsafe { libc::opendir(path.as_ptr()) };
    assert!(!d.is_null(), "opendir again");
    // SAFETY: an open stream, a position telldir gave for this directory.
    unsafe { libc::seekdir(d, at) };
    read(d, usize::MAX, &mut out);
    // SAFETY: closed once.
    unsafe { libc::closedir(d) };
    out
}

#[test]
fn a_directory_made_here_is_listed_here_without_the_mds() {
    use std::collections::BTreeMap;
    let c = TestCluster::start();
    fs::create_dir(c.path("t")).unwrap();
    fs::create_dir(c.path("t/sub")).unwrap();
    let n = 1500;
    for i in 0..n {
        fs::write(c.path(&format!("t/f{i:04}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("f0000", c.path("t/link")).unwrap();
    fs::remove_file(c.path("t/f0007")).unwrap();
    // Every change landed at the MDS, so a listing there would see the same.
    File::open(c.path("t")).unwrap().sync_all().unwrap();
    let kind = |t: fs::FileType| -> &'static str {
        match (t.is_dir(), t.is_symlink()) {
            (true, _) => "dir",
            (_, true) => "symlink",
            _ => "file",
        }
    };
    let mut want: BTreeMap<String, &str> = (0..n)
        .filter(|&i| i != 7)
        .map(|i| (format!("f{i:04}"), "file"))
        .collect();
    want.insert("sub".into(), "dir");
    want.insert("link".into(), "symlink");
    let list = move |p: &Path| -> Vec<(String, &'static str)> {
        fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    kind(e.file_type().unwrap()),
                )
            })
            .collect()
    };
    let once = |listed: Vec<(String, &'static str)>| -> BTreeMap<String, &'static str> {
        let mut got = BTreeMap::new();
        for (name, k) in listed {
            assert!(got.insert(name.clone(), k).is_none(), "{name} listed twice");
        }
        got
    };
    // With the MDS frozen, the listing (many getdents calls, each entry's type from the
    // listing itself) comes from what this mount knows.
    let frozen = shoal_fstests::Frozen::stop(c.pid("mds.0"));
    let dir = c.path("t");
    let lister = std::thread::spawn(move || list(&dir));
    let start = std::time::Instant::now();
    while !lister.is_finished() && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let listed_alone = lister.is_finished();
    drop(frozen);
    let seen = lister.join().unwrap();
    assert!(listed_alone, "the listing waited for the frozen MDS");
    assert_eq!(once(seen), want);
    // A position taken on one handle goes on in another, as nfsd reopens a directory for
    // each of its requests and seeks to where the last one ended.
    assert_eq!(once(list_in_two_handles(&c.path("t"), 500)), want);
    // Entries removed while a listing is under way (one listed already, one not yet) make
    // no other go missing or come twice.
    let mut seen = Vec::new();
    let mut gone = vec!["f1400".to_string()];
    for (i, e) in fs::read_dir(c.path("t")).unwrap().enumerate() {
        let e = e.unwrap();
        seen.push((
            e.file_name().into_string().unwrap(),
            kind(e.file_type().unwrap()),
        ));
        if i == 100 {
            let listed = seen[0].0.clone();
            assert_ne!(listed, "f1400");
            fs::remove_file(c.path(&format!("t/{listed}"))).unwrap();
            fs::remove_file(c.path("t/f1400")).unwrap();
            gone.push(listed);
        }
    }
    let got = once(seen);
    for name in want.keys().filter(|n| !gone.contains(n)) {
        assert!(got.contains_key(name), "{name} missing");
    }
    // A new listing, here and through the MDS on another mount, has the removals.
    want.retain(|name, _| !gone.contains(name));
    assert_eq!(once(list(&c.path("t"))), want);
    let m2 = c.mount_again("mnt2");
    assert_eq!(once(list(&m2.join("t"))), want);
}

#[test]
fn a_listing_sees_every_change_made_before_it_on_either_mount() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    fs::create_dir(c.path("d")).unwrap();
    let n = 3000;
    for i in 0..n {
        fs::File::create(c.path(&format!("d/e{i:05}"))).unwrap();
    }
    let list = |p: std::path::PathBuf| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let mut want: Vec<String> = (0..n).map(|i| format!("e{i:05}")).collect();
    // Listed here (many kernel calls, fewer pages from the MDS), on the other mount.
    assert_eq!(list(c.path("d")), want);
    for i in (0..n).step_by(3) {
        fs::remove_file(m2.join(format!("d/e{i:05}"))).unwrap();
    }
    fs::File::create(m2.join("d/new")).unwrap();
    want.retain(|e| e[1..].parse::<usize>().unwrap() % 3 != 0);
    want.push("new".into());
    want.sort();
    assert_eq!(list(c.path("d")), want, "after changes on the other mount");
    assert_eq!(list(m2.join("d")), want);
    // And after changes here.
    for i in (1..n).step_by(3) {
        fs::remove_file(c.path(&format!("d/e{i:05}"))).unwrap();
    }
    want.retain(|e| e == "new" || e[1..].parse::<usize>().unwrap() % 3 != 1);
    assert_eq!(list(c.path("d")), want, "after changes here");
    assert_eq!(list(m2.join("d")), want);
}
