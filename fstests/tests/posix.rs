//! POSIX conformance by system call, through the Shoal mount AND in a local directory: every
//! check runs on both, so a check that fails locally is wrong itself. Calls run as root or as
//! unprivileged users (numeric ids, no passwd entries needed) in a `shoal-fsop` process of
//! their own, which prints `ok` or the errno's name.
//!
//! Permission checks are the kernel's (`default_permissions`); Shoal must give it attributes
//! that are right and fresh (owners, modes, setuid/setgid clearing, setgid inheritance).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_fstests::{bin, TestCluster};

/// Unprivileged users (uid:gid[:supplementary groups]).
const ALICE: &str = "60001:60001";
const BOB: &str = "60002:60002";
/// Bob, also in Alice's group.
const BOB_IN_ALICE_GROUP: &str = "60002:60002:60001";
const ROOT: &str = "0:0";
const ALICE_ID: u32 = 60001;
const BOB_ID: u32 = 60002;

/// Runs one call as `user` and returns what `shoal-fsop` printed (`ok ...` or an errno name).
fn fsop(user: &str, args: &[&str]) -> String {
    let out = Command::new(bin("shoal-fsop"))
        .arg("--as")
        .arg(user)
        .args(args)
        .output()
        .expect("run shoal-fsop");
    assert!(
        out.status.success(),
        "shoal-fsop {args:?} as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Where the checks run: a local directory and the Shoal mount.
struct Sites {
    cluster: TestCluster,
    local: tempfile::TempDir,
}

impl Sites {
    /// None (the check is skipped) unless running as root, which switching users needs.
    fn new() -> Option<Sites> {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the POSIX checks switch users, which needs root");
            return None;
        }
        let cluster = TestCluster::start();
        // Other users must be able to reach the mount point.
        fs::set_permissions(cluster.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let local = tempfile::Builder::new()
            .prefix("shoal-posix-local-")
            .tempdir()
            .unwrap();
        fs::set_permissions(local.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Some(Sites { cluster, local })
    }

    /// Runs `check` in a fresh directory (mode 0777) of each site, labelled.
    fn each(&self, name: &str, check: impl Fn(&Checker)) {
        for (site, base) in [
            ("local", self.local.path().to_path_buf()),
            ("shoal", self.cluster.mnt.clone()),
        ] {
            let dir = base.join(name);
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
            check(&Checker { site, dir });
        }
    }
}

/// One site's directory for a check.
struct Checker {
    site: &'static str,
    dir: PathBuf,
}

impl Checker {
    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).to_string_lossy().into_owned()
    }

    /// Asserts that `args` (paths relative to the check's directory are made absolute by the
    /// caller through `p`) run as `user` print `want` (or start with it, for `ok ...`).
    fn expect(&self, user: &str, args: &[&str], want: &str) {
        let got = fsop(user, args);
        assert!(
            got == want || (want == "ok" && got.starts_with("ok ")),
            "[{}] {args:?} as {user}: got {got}, want {want}",
            self.site
        );
    }

    /// `stat` of `rel` as root, e.g. `mode=644 uid=0 gid=0 nlink=1 size=0`.
    fn stat(&self, rel: &str) -> String {
        let got = fsop(ROOT, &["stat", &self.p(rel)]);
        got.strip_prefix("ok ")
            .unwrap_or_else(|| panic!("[{}] stat {rel}: {got}", self.site))
            .to_string()
    }

    fn field(&self, rel: &str, name: &str) -> String {
        let st = self.stat(rel);
        st.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in {st}"))
    }

    /// Creates `rel` as root, owned by `uid:gid` with `mode`.
    fn file_of(&self, rel: &str, uid: u32, gid: u32, mode: u32) {
        let p = self.dir.join(rel);
        fs::write(&p, b"x").unwrap();
        chown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn dir_of(&self, rel: &str, uid: u32, gid: u32, mode: u32) {
        let p = self.dir.join(rel);
        fs::create_dir(&p).unwrap();
        chown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn posix_chmod_and_chown_rules() {
    let Some(s) = Sites::new() else { return };
    s.each("chmod", |c| {
        c.file_of("f", ALICE_ID, ALICE_ID, 0o644);
        let f = c.p("f");
        // Only the owner (or root) changes the mode.
        c.expect(BOB, &["chmod", &f, "777"], "EPERM");
        c.expect(ALICE, &["chmod", &f, "600"], "ok");
        assert_eq!(c.field("f", "mode"), "600", "[{}]", c.site);
        c.expect(ROOT, &["chmod", &f, "640"], "ok");
        // Only root gives a file away.
        c.expect(ALICE, &["chown", &f, &BOB_ID.to_string(), "-1"], "EPERM");
        c.expect(BOB, &["chown", &f, &BOB_ID.to_string(), "-1"], "EPERM");
        // The owner may change the group only to one of its own groups.
        c.expect(ALICE, &["chown", &f, "-1", &BOB_ID.to_string()], "EPERM");
        c.file_of("g", BOB_ID, BOB_ID, 0o644);
        let g = c.p("g");
        c.expect(
            BOB_IN_ALICE_GROUP,
            &["chown", &g, "-1", &ALICE_ID.to_string()],
            "ok",
        );
        assert_eq!(c.field("g", "gid"), ALICE_ID.to_string(), "[{}]", c.site);
        c.expect(ROOT, &["chown", &g, &ALICE_ID.to_string(), "0"], "ok");
        assert!(
            c.stat("g").contains(&format!("uid={ALICE_ID} gid=0")),
            "[{}] {}",
            c.site,
            c.stat("g")
        );
        // chmod by an owner outside the file's group drops setgid.
        c.file_of("h", ALICE_ID, 0, 0o644);
        c.expect(ALICE, &["chmod", &c.p("h"), "2755"], "ok");
        assert_eq!(c.field("h", "mode"), "755", "[{}]", c.site);
    });
}

#[test]
fn posix_setuid_and_setgid_are_cleared_by_unprivileged_writes_and_chown() {
    let Some(s) = Sites::new() else { return };
    s.each("killpriv", |c| {
        c.file_of("w", ALICE_ID, ALICE_ID, 0o6777);
        c.expect(BOB, &["write", &c.p("w"), "more"], "ok");
        assert_eq!(c.field("w", "mode"), "777", "[{}] write", c.site);
        c.file_of("t", ALICE_ID, ALICE_ID, 0o6777);
        c.expect(BOB, &["truncate", &c.p("t"), "0"], "ok");
        assert_eq!(c.field("t", "mode"), "777", "[{}] truncate", c.site);
        // A chown, even by the owner to its own group, clears setuid (and setgid, since
        // group-execute is set).
        c.file_of("o", ALICE_ID, ALICE_ID, 0o6755);
        c.expect(
            ALICE,
            &["chown", &c.p("o"), "-1", &ALICE_ID.to_string()],
            "ok",
        );
        assert_eq!(c.field("o", "mode"), "755", "[{}] chown", c.site);
        // Root writing keeps them.
        c.file_of("r", ALICE_ID, ALICE_ID, 0o6777);
        c.expect(ROOT, &["write", &c.p("r"), "more"], "ok");
        assert_eq!(c.field("r", "mode"), "6777", "[{}] root write", c.site);
    });
}

#[test]
fn posix_setgid_directories_pass_their_group_on() {
    let Some(s) = Sites::new() else { return };
    s.each("setgid", |c| {
        c.dir_of("d", ALICE_ID, ALICE_ID, 0o2777);
        c.expect(BOB, &["mkdir", &c.p("d/sub"), "755"], "ok");
        c.expect(BOB, &["create", &c.p("d/file"), "644"], "ok");
        let sub = c.stat("d/sub");
        assert!(
            sub.contains(&format!("uid={BOB_ID} gid={ALICE_ID}")) && sub.starts_with("mode=2755"),
            "[{}] subdirectory: {sub}",
            c.site
        );
        let file = c.stat("d/file");
        assert!(
            file.contains(&format!("uid={BOB_ID} gid={ALICE_ID}")) && file.starts_with("mode=644"),
            "[{}] file: {file}",
            c.site
        );
    });
}

#[test]
fn posix_sticky_directories_restrict_unlink_and_rename() {
    let Some(s) = Sites::new() else { return };
    s.each("sticky", |c| {
        c.dir_of("tmp", 0, 0, 0o1777);
        c.expect(ALICE, &["create", &c.p("tmp/a"), "666"], "ok");
        c.expect(BOB, &["unlink", &c.p("tmp/a")], "EPERM");
        c.expect(BOB, &["rename", &c.p("tmp/a"), &c.p("tmp/b")], "EPERM");
        c.expect(ALICE, &["rename", &c.p("tmp/a"), &c.p("tmp/b")], "ok");
        c.expect(ROOT, &["unlink", &c.p("tmp/b")], "ok");
        c.expect(ALICE, &["create", &c.p("tmp/c"), "666"], "ok");
        c.expect(ALICE, &["unlink", &c.p("tmp/c")], "ok");
        // The directory's owner may remove anything in it.
        c.dir_of("mine", ALICE_ID, ALICE_ID, 0o1777);
        c.expect(BOB, &["create", &c.p("mine/x"), "666"], "ok");
        c.expect(ALICE, &["unlink", &c.p("mine/x")], "ok");
    });
}

#[test]
fn posix_mode_bits_and_groups_decide_access() {
    let Some(s) = Sites::new() else { return };
    s.each("access", |c| {
        c.dir_of("home", ALICE_ID, ALICE_ID, 0o755);
        // Writing into a directory takes write permission on it.
        c.expect(BOB, &["create", &c.p("home/x"), "644"], "EACCES");
        c.expect(ALICE, &["create", &c.p("home/x"), "644"], "ok");
        c.expect(BOB, &["unlink", &c.p("home/x")], "EACCES");
        // Reading a file takes read permission; the group's bits apply to members through
        // supplementary groups.
        c.file_of("home/secret", ALICE_ID, ALICE_ID, 0o640);
        c.expect(BOB, &["read", &c.p("home/secret")], "EACCES");
        c.expect(BOB_IN_ALICE_GROUP, &["read", &c.p("home/secret")], "ok");
        c.expect(
            BOB_IN_ALICE_GROUP,
            &["write", &c.p("home/secret"), "y"],
            "EACCES",
        );
        c.expect(ROOT, &["write", &c.p("home/secret"), "y"], "ok");
        // Searching a directory takes execute permission on it.
        c.dir_of("closed", ALICE_ID, ALICE_ID, 0o700);
        c.file_of("closed/f", ALICE_ID, ALICE_ID, 0o644);
        c.expect(BOB, &["stat", &c.p("closed/f")], "EACCES");
        c.expect(ALICE, &["stat", &c.p("closed/f")], "ok");
        c.expect(BOB, &["access", &c.p("home/secret"), "r"], "EACCES");
        c.expect(
            BOB_IN_ALICE_GROUP,
            &["access", &c.p("home/secret"), "r"],
            "ok",
        );
        c.expect(
            BOB_IN_ALICE_GROUP,
            &["access", &c.p("home/secret"), "w"],
            "EACCES",
        );
        // Root reads and writes anything, but executes only what someone may execute.
        c.expect(ROOT, &["access", &c.p("home/secret"), "rw"], "ok");
        c.expect(ROOT, &["access", &c.p("home/secret"), "x"], "EACCES");
    });
}

#[test]
fn posix_name_and_symlink_target_limits() {
    let Some(s) = Sites::new() else { return };
    s.each("names", |c| {
        let longest = "n".repeat(255);
        c.expect(ROOT, &["create", &c.p(&longest), "644"], "ok");
        c.expect(
            ROOT,
            &["create", &c.p(&"n".repeat(256)), "644"],
            "ENAMETOOLONG",
        );
        c.expect(
            ROOT,
            &["mkdir", &c.p(&"d".repeat(256)), "755"],
            "ENAMETOOLONG",
        );
        // Any byte but NUL and '/' may be in a name.
        let odd = "\u{1}\t \\*?\"'<>|:é\u{7f}";
        c.expect(ROOT, &["create", &c.p(odd), "644"], "ok");
        c.expect(ROOT, &["stat", &c.p(odd)], "ok");
        let target = "t".repeat(4095);
        c.expect(ROOT, &["symlink", &target, &c.p("long")], "ok");
        assert_eq!(
            fs::read_link(c.dir.join("long")).unwrap().as_os_str().len(),
            4095,
            "[{}]",
            c.site
        );
        c.expect(
            ROOT,
            &["symlink", &"t".repeat(4096), &c.p("too-long")],
            "ENAMETOOLONG",
        );
        // A link to a directory is refused; a dangling symlink is fine.
        c.dir_of("dir", 0, 0, 0o755);
        c.expect(ROOT, &["link", &c.p("dir"), &c.p("dir2")], "EPERM");
        c.expect(ROOT, &["symlink", "nowhere", &c.p("dangling")], "ok");
        c.expect(ROOT, &["read", &c.p("dangling")], "ENOENT");
    });
}

#[test]
fn posix_timestamps_of_create_link_rename_and_chmod() {
    let Some(s) = Sites::new() else { return };
    let nap = || std::thread::sleep(Duration::from_millis(30));
    let times = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(p).unwrap();
        (
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
            m.atime(),
        )
    };
    s.each("times", |c| {
        let d = c.dir.join("d");
        fs::create_dir(&d).unwrap();
        let (dm0, dc0, _) = times(&d);
        nap();
        fs::write(d.join("f"), b"1").unwrap();
        let (dm1, dc1, _) = times(&d);
        assert!(dm1 > dm0 && dc1 > dc0, "[{}] create: parent times", c.site);
        let (fm, fc, _) = times(&d.join("f"));
        nap();
        fs::hard_link(d.join("f"), d.join("g")).unwrap();
        let (fm2, fc2, _) = times(&d.join("f"));
        assert!(fm2 == fm && fc2 > fc, "[{}] link: ctime only", c.site);
        nap();
        fs::rename(d.join("g"), d.join("h")).unwrap();
        let (_, fc3, _) = times(&d.join("f"));
        assert!(fc3 > fc2, "[{}] rename: the moved inode's ctime", c.site);
        let (dm2, _, _) = times(&d);
        assert!(dm2 > dm1, "[{}] rename: parent mtime", c.site);
        nap();
        fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        let (fm4, fc4, _) = times(&d.join("f"));
        assert!(fm4 == fm2 && fc4 > fc3, "[{}] chmod: ctime only", c.site);
        nap();
        fs::write(d.join("f"), b"22").unwrap();
        let (fm5, fc5, _) = times(&d.join("f"));
        assert!(
            fm5 > fm4 && fc5 > fc4,
            "[{}] write: mtime and ctime",
            c.site
        );
        // utimensat(NULL) needs ownership or write permission.
        c.file_of("u", ALICE_ID, ALICE_ID, 0o644);
        c.expect(BOB, &["utime-now", &c.p("u")], "EACCES");
        c.expect(ALICE, &["utime-now", &c.p("u")], "ok");
        c.file_of("v", ALICE_ID, ALICE_ID, 0o666);
        c.expect(BOB, &["utime-now", &c.p("v")], "ok");
    });
}
