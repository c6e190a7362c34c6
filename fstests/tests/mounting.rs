//! Mounting as the system's tools do: `mount -t fuse.shoal SOURCE DIR -o OPTS` through
//! `/sbin/mount.fuse.shoal`, `findmnt`, remounts, `umount SOURCE`, two volumes side by side,
//! file handles across remounts, and a cluster that cannot be reached. Root only (mount(8)).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shoal_fstests::{bin, run_ok, TestCluster};

/// Whether this runs as root; the tests say so and pass otherwise.
fn root() -> bool {
    shoal_fstests::root_or_skip("mount(8) and umount(8) need root")
}

/// Points /sbin/mount.fuse.shoal at this build's shoal-fuse, as the setup command does.
fn install_helper() {
    let sbin = Path::new("/sbin/mount.fuse.shoal");
    if fs::read_link(sbin).ok().as_deref() != Some(bin("shoal-fuse").as_path()) {
        let _ = fs::remove_file(sbin);
        std::os::unix::fs::symlink(bin("shoal-fuse"), sbin).unwrap();
    }
}

/// Mount points made by a test, detached when it ends however it ends.
struct Mounts {
    dir: tempfile::TempDir,
    made: Vec<PathBuf>,
}

impl Mounts {
    fn new() -> Mounts {
        install_helper();
        Mounts {
            dir: tempfile::tempdir().unwrap(),
            made: Vec::new(),
        }
    }

    /// An empty directory to mount on.
    fn point(&mut self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir(&p).unwrap();
        self.made.push(p.clone());
        p
    }

    /// `mount -t fuse.shoal SOURCE MNT -o OPTS`.
    fn mount(&self, source: &str, mnt: &Path, opts: &str) -> Output {
        Command::new("mount")
            .args(["-t", "fuse.shoal", source])
            .arg(mnt)
            .args(["-o", opts])
            .output()
            .unwrap()
    }

    fn mount_ok(&self, source: &str, mnt: &Path, opts: &str) {
        let out = self.mount(source, mnt, opts);
        assert!(
            out.status.success(),
            "mount {source} -o {opts}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.made.iter().rev() {
            while findmnt(p).is_some() {
                if !Command::new("umount")
                    .arg("-l")
                    .arg(p)
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    break;
                }
            }
        }
    }
}

/// What findmnt says of the mount at `mnt`: (source, fstype, options).
fn findmnt(mnt: &Path) -> Option<(String, String, String)> {
    let out = Command::new("findmnt")
        .args(["-n", "-r", "-o", "SOURCE,FSTYPE,OPTIONS", "--mountpoint"])
        .arg(mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The topmost mount is listed last.
    let line = text.lines().last()?;
    let mut f = line.split(' ');
    Some((
        f.next()?.to_string(),
        f.next()?.to_string(),
        f.next()?.to_string(),
    ))
}

fn options_of(mnt: &Path) -> Vec<String> {
    findmnt(mnt)
        .map(|(_, _, o)| o.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// The pids of the shoal-fuse processes serving `mnt`.
fn clients_of(mnt: &Path) -> Vec<u32> {
    let want = mnt.to_string_lossy().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"shoal-fuse") || a.ends_with(b"mount.fuse.shoal"))
                    && args.contains(&want.as_bytes())
            })
        })
        .collect()
}

fn mds_addr(c: &TestCluster) -> String {
    fs::read_to_string(c.data.join("mds.0/addr"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn mount_t_fuse_shoal_takes_a_free_source_and_umount_takes_it_back() {
    if !root() {
        return;
    }
    let c = TestCluster::start();
    fs::write(c.path("hello"), b"from the cluster").unwrap();
    let mut m = Mounts::new();
    let a = m.point("a");
    m.mount_ok("shoal-test", &a, &format!("mds={}", mds_addr(&c)));
    let (source, fstype, opts) = findmnt(&a).expect("mounted");
    assert_eq!(source, "shoal-test");
    assert_eq!(fstype, "fuse.shoal");
    // mount(8)'s defaults: suid, dev, relatime.
    for o in ["nosuid", "nodev", "noatime"] {
        assert!(!opts.split(',').any(|x| x == o), "{o} present: {opts}");
    }
    assert!(opts.split(',').any(|x| x == "relatime"), "{opts}");
    assert_eq!(fs::read(a.join("hello")).unwrap(), b"from the cluster");
    // df shows the source too.
    let df = Command::new("df").arg(&a).output().unwrap();
    assert!(String::from_utf8_lossy(&df.stdout).contains("shoal-test"));

    // By data directory; a type of exactly "fuse" when asked; options reach the kernel.
    let b = m.point("b");
    let opts = format!(
        "data={},nosubtype,nodev,nosuid,noatime,noexec",
        c.data.display()
    );
    m.mount_ok("shoal-raw", &b, &opts);
    let (source, fstype, opts) = findmnt(&b).expect("mounted");
    assert_eq!((source.as_str(), fstype.as_str()), ("shoal-raw", "fuse"));
    for o in ["noatime", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing: {opts}");
    }
    assert_eq!(fs::read(b.join("hello")).unwrap(), b"from the cluster");

    // umount by source: the mount goes, and so does its client.
    assert_eq!(clients_of(&a).len(), 1, "one client serves it");
    let out = Command::new("umount").arg("shoal-test").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(findmnt(&a).is_none(), "still mounted");
    let start = Instant::now();
    while !clients_of(&a).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the client stays"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(findmnt(&b).is_some(), "the other mount stays");

    // An /etc/fstab line, as the README shows one.
    let f = m.point("f");
    let fstab = m.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "shoal-fstab  {}  fuse.shoal  _netdev,data={}  0 0\n",
            f.display(),
            c.data.display()
        ),
    )
    .unwrap();
    run_ok(Command::new("mount").arg("--fstab").arg(&fstab).arg(&f));
    assert_eq!(findmnt(&f).unwrap().0, "shoal-fstab");
    assert_eq!(fs::read(f.join("hello")).unwrap(), b"from the cluster");
}

#[test]
fn remount_read_only_and_back_in_place() {
    if !root() {
        return;
    }
    let c = TestCluster::start();
    let mut m = Mounts::new();
    let a = m.point("a");
    m.mount_ok("shoal-rw", &a, &format!("mds={},allow_other", mds_addr(&c)));
    fs::write(a.join("f"), b"one").unwrap();
    let clients = clients_of(&a);
    assert_eq!(clients.len(), 1);
    let remount = |how: &str| {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,{how}")])
                .arg(&a),
        );
    };
    remount("ro");
    // Only what was asked changes: mount(8)'s suid and dev stay.
    let now = options_of(&a);
    assert!(
        !now.iter().any(|o| o == "nosuid" || o == "nodev"),
        "{now:?}"
    );
    assert!(
        options_of(&a).iter().any(|o| o == "ro"),
        "{:?}",
        options_of(&a)
    );
    let err = fs::write(a.join("f"), b"two").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::create_dir(a.join("d")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(fs::read(a.join("f")).unwrap(), b"one", "reads still work");
    remount("rw");
    assert!(options_of(&a).iter().any(|o| o == "rw"));
    fs::write(a.join("f"), b"two").unwrap();
    assert_eq!(fs::read(c.path("f")).unwrap(), b"two");
    assert_eq!(clients_of(&a), clients, "the same client, not a second one");
    assert_eq!(findmnt(&a).unwrap().0, "shoal-rw");
}

#[test]
fn a_test_and_a_scratch_volume_side_by_side() {
    if !root() {
        return;
    }
    let c = TestCluster::start();
    for v in ["test", "scratch"] {
        c.shoal_ok(&["volume", "create", v, "--size", "1GiB"]);
    }
    let mut m = Mounts::new();
    let (t, s) = (m.point("test"), m.point("scratch"));
    let data = c.data.display().to_string();
    m.mount_ok("shoal-test", &t, &format!("data={data},volume=test"));
    m.mount_ok("shoal-scratch", &s, &format!("data={data},volume=scratch"));
    fs::write(t.join("in-test"), b"t").unwrap();
    fs::create_dir_all(s.join("tree/deeper")).unwrap();
    fs::write(s.join("tree/deeper/in-scratch"), b"s").unwrap();
    assert!(!t.join("tree").exists() && !s.join("in-test").exists());
    // Emptied, unmounted by source and mounted again: an empty, working volume.
    for e in fs::read_dir(&s).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    assert!(Command::new("umount")
        .arg("shoal-scratch")
        .status()
        .unwrap()
        .success());
    m.mount_ok("shoal-scratch", &s, &format!("data={data},volume=scratch"));
    assert_eq!(fs::read_dir(&s).unwrap().count(), 0);
    fs::write(s.join("again"), b"x").unwrap();
    fs::set_permissions(s.join("again"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::read(t.join("in-test")).unwrap(), b"t");
    assert_eq!(findmnt(&t).unwrap().0, "shoal-test");
}

#[test]
fn an_unreachable_cluster_fails_the_mount_with_the_reason() {
    if !root() {
        return;
    }
    let mut m = Mounts::new();
    let a = m.point("a");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let out = m.mount("shoal-nowhere", &a, &format!("mds=127.0.0.1:{port}"));
    assert!(!out.status.success(), "mounted an unreachable cluster");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.contains(&port.to_string()),
        "{err}"
    );
    assert!(findmnt(&a).is_none());
    // Neither a cluster nor a source that names one.
    let out = m.mount("shoal-nothing", &a, "rw");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mds=") && err.contains("data="), "{err}");
}

/// `struct file_handle` with room for any handle FUSE makes.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    f_handle: [u8; 128],
}

/// name_to_handle_at(2) of `p`: (handle type, handle bytes).
fn handle_of(p: &Path) -> std::io::Result<(i32, Vec<u8>)> {
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0i32;
    let path = shoal_fstests::cpath(p);
    // SAFETY: a valid path, a handle buffer of the size it announces, an int for the id.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((h.kind, h.f_handle[..h.bytes as usize].to_vec()))
}

/// open_by_handle_at(2) on the mount at `mnt`, read whole.
fn read_by_handle(mnt: &Path, kind: i32, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut h = Handle {
        bytes: bytes.len() as u32,
        kind,
        f_handle: [0; 128],
    };
    h.f_handle[..bytes.len()].copy_from_slice(bytes);
    let dir = fs::File::open(mnt)?;
    // SAFETY: an open directory, a handle as name_to_handle_at made it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned from here.
    let mut f = unsafe { fs::File::from_raw_fd(fd as i32) };
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn file_handles_stay_valid_across_a_remount() {
    if !root() {
        return;
    }
    let c = TestCluster::start();
    let mut m = Mounts::new();
    let a = m.point("a");
    let opts = format!("mds={}", mds_addr(&c));
    m.mount_ok("shoal-handles", &a, &opts);
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), b"by handle").unwrap();
    let (kind, bytes) = handle_of(&a.join("d/f")).unwrap();
    let (dkind, dbytes) = handle_of(&a.join("d")).unwrap();
    assert_eq!(read_by_handle(&a, kind, &bytes).unwrap(), b"by handle");
    assert!(Command::new("umount").arg(&a).status().unwrap().success());
    m.mount_ok("shoal-handles", &a, &opts);
    // A new client, which has never looked the file up, opens it by its handle.
    assert_eq!(read_by_handle(&a, kind, &bytes).unwrap(), b"by handle");
    assert_eq!(
        handle_of(&a.join("d/f")).unwrap(),
        (kind, bytes.clone()),
        "stable"
    );
    assert_eq!(handle_of(&a.join("d")).unwrap(), (dkind, dbytes));
    // A removed file's handle is stale.
    fs::remove_file(a.join("d/f")).unwrap();
    assert!(Command::new("umount").arg(&a).status().unwrap().success());
    m.mount_ok("shoal-handles", &a, &opts);
    let err = read_by_handle(&a, kind, &bytes).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
}

#[test]
fn mounts_started_at_once_take_names_of_their_own() {
    let c = TestCluster::start();
    let mnts: Vec<PathBuf> = (0..3)
        .map(|i| c.root.path().join(format!("at-once-{i}")))
        .collect();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let runs: Vec<_> = mnts
            .iter()
            .map(|m| s.spawn(|| c.shoal(&["mount", m.to_str().unwrap()])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut names: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{o:?}");
            let said = String::from_utf8_lossy(&o.stdout);
            said.trim()
                .rsplit_once(" as ")
                .unwrap_or_else(|| panic!("no name in {said:?}"))
                .1
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["client.1", "client.2", "client.3"]);
    // Each name's pid is its own mount's: a file written through one is seen by the others.
    let mut pids: Vec<i32> = names.iter().map(|n| c.pid(n)).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{pids:?}");
    fs::write(mnts[0].join("f"), b"one").unwrap();
    for m in &mnts {
        assert_eq!(fs::read(m.join("f")).unwrap(), b"one");
    }
}
