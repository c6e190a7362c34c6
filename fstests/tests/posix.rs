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
        if !shoal_fstests::root_or_skip("the POSIX checks switch users") {
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

    /// Makes `plain` and `striped` (on Shoal, with small striped objects; a plain directory
    /// locally) and returns their names.
    fn layout_dirs(&self) -> [&'static str; 2] {
        fs::create_dir(self.dir.join("plain")).unwrap();
        if self.site == "shoal" {
            shoal_fstests::striped_dir(&self.dir.join("striped"));
        } else {
            fs::create_dir(self.dir.join("striped")).unwrap();
        }
        ["plain", "striped"]
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
        // Each op by BOB on a file of ALICE's, 6777 before, leaves it 777.
        let ops: [(&str, &[&str]); 4] = [
            ("write", &["more"]),
            ("truncate", &["0"]),
            ("overwrite", &[]),
            ("fallocate", &["8192"]),
        ];
        for (op, rest) in ops {
            c.file_of(op, ALICE_ID, ALICE_ID, 0o6777);
            let path = c.p(op);
            let args: Vec<&str> = [op, path.as_str()]
                .into_iter()
                .chain(rest.iter().copied())
                .collect();
            c.expect(BOB, &args, "ok");
            assert_eq!(c.field(op, "mode"), "777", "[{}] {op}", c.site);
        }
        // Without group-execute, setgid stays for a writer in the file's group, and goes
        // for one outside it.
        c.file_of("g", ALICE_ID, ALICE_ID, 0o6766);
        c.expect(BOB_IN_ALICE_GROUP, &["write", &c.p("g"), "more"], "ok");
        assert_eq!(c.field("g", "mode"), "2766", "[{}] write, g-x", c.site);
        c.expect(BOB, &["write", &c.p("g"), "more"], "ok");
        assert_eq!(c.field("g", "mode"), "766", "[{}] write, g-x", c.site);
        // A chown of a directory keeps them.
        c.dir_of("d", ALICE_ID, ALICE_ID, 0o2775);
        c.expect(ROOT, &["chown", &c.p("d"), &BOB_ID.to_string(), "-1"], "ok");
        assert_eq!(c.field("d", "mode"), "2775", "[{}] chown dir", c.site);
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
        c.expect(ROOT, &["truncate", &c.p("r"), "1"], "ok");
        assert_eq!(c.field("r", "mode"), "6777", "[{}] root truncate", c.site);
        // Written data is all there after the clearing write.
        c.expect(BOB, &["read", &c.p("write")], "ok xmore");
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
        // access(2) checks the real ids, faccessat(AT_EACCESS) the effective ones: here a
        // process whose real uid is root runs with Bob's or Alice's effective ids.
        let secret = c.p("home/secret");
        let bob = "60002:60002";
        c.expect(ROOT, &["euid", bob, "access", &secret, "r"], "ok");
        c.expect(ROOT, &["euid", bob, "eaccess", &secret, "r"], "EACCES");
        c.expect(
            ROOT,
            &["euid", "60001:60001", "eaccess", &secret, "rw"],
            "ok",
        );
        c.expect(
            ROOT,
            &["euid", "60001:60001", "eaccess", &secret, "x"],
            "EACCES",
        );
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

#[test]
fn posix_acls_grant_and_deny_through_named_entries_and_the_mask() {
    let Some(s) = Sites::new() else { return };
    s.each("acl", |c| {
        c.file_of("f", 0, 0, 0o600);
        let f = c.p("f");
        c.expect(ALICE, &["read", &f], "EACCES");
        let acl = "u::rw-,u:60001:r--,g::---,m::r--,o::---";
        c.expect(ROOT, &["setacl", &f, "access", acl], "ok");
        assert_eq!(
            c.field("f", "mode"),
            "640",
            "[{}] mask = group bits",
            c.site
        );
        c.expect(ROOT, &["getacl", &f, "access"], &format!("ok {acl}"));
        c.expect(ALICE, &["read", &f], "ok x");
        c.expect(ALICE, &["write", &f, "y"], "EACCES");
        c.expect(BOB, &["read", &f], "EACCES");
        // chmod rewrites the mask, which limits the named entries.
        c.expect(ROOT, &["chmod", &f, "600"], "ok");
        c.expect(
            ROOT,
            &["getacl", &f, "access"],
            "ok u::rw-,u:60001:r--,g::---,m::---,o::---",
        );
        c.expect(ALICE, &["read", &f], "EACCES");
        c.expect(ROOT, &["chmod", &f, "660"], "ok");
        c.expect(ALICE, &["read", &f], "ok x");
        c.expect(ALICE, &["write", &f, "y"], "EACCES");
        // A named group entry counts for members of that group.
        let g_acl = "u::rw-,g::---,g:60001:rw-,m::rw-,o::---";
        c.expect(ROOT, &["setacl", &f, "access", g_acl], "ok");
        c.expect(BOB_IN_ALICE_GROUP, &["write", &f, "y"], "ok");
        c.expect(BOB, &["write", &f, "y"], "EACCES");
        // Removing the ACL leaves the mode bits alone.
        c.expect(ROOT, &["rmacl", &f, "access"], "ok");
        c.expect(ROOT, &["getacl", &f, "access"], "ENODATA");
        assert_eq!(c.field("f", "mode"), "660", "[{}] after removal", c.site);
        c.expect(BOB_IN_ALICE_GROUP, &["write", &f, "y"], "EACCES");
        // An ACL of mode bits only sets the mode and is not kept.
        c.file_of("g", ALICE_ID, ALICE_ID, 0o600);
        let g = c.p("g");
        c.expect(
            ALICE,
            &["setacl", &g, "access", "u::rwx,g::r--,o::---"],
            "ok",
        );
        assert_eq!(c.field("g", "mode"), "740", "[{}] equivalent ACL", c.site);
        c.expect(ROOT, &["getacl", &g, "access"], "ENODATA");
        // Setting an ACL clears setgid unless the caller is in the file's group (through a
        // supplementary group counts) or privileged, as chmod does.
        for (who, keeps) in [(ALICE, false), ("60001:60001:60002", true), (ROOT, true)] {
            c.file_of("sg", ALICE_ID, BOB_ID, 0o2770);
            let sg = c.p("sg");
            c.expect(
                who,
                &["setacl", &sg, "access", "u::rwx,g::r-x,o::---"],
                "ok",
            );
            let want = if keeps { "2750" } else { "750" };
            assert_eq!(
                c.field("sg", "mode"),
                want,
                "[{}] setgid after an ACL set by {who}",
                c.site
            );
            fs::remove_file(c.dir.join("sg")).unwrap();
        }
        // Only the owner (or root) sets an ACL; default ACLs are for directories; an ACL
        // with named entries needs a mask.
        c.expect(
            BOB,
            &["setacl", &g, "access", "u::rw-,g::---,o::---"],
            "EPERM",
        );
        c.expect(
            ROOT,
            &["setacl", &g, "default", "u::rwx,g::r-x,o::r-x"],
            "EACCES",
        );
        c.expect(
            ROOT,
            &["setacl", &g, "access", "u::rw-,u:60002:r--,g::---,o::---"],
            "EINVAL",
        );
    });
}

#[test]
fn posix_default_acls_are_inherited_instead_of_the_umask() {
    let Some(s) = Sites::new() else { return };
    s.each("acl-default", |c| {
        c.dir_of("d", 0, 0, 0o755);
        let default = "u::rwx,u:60001:rwx,g::r-x,m::rwx,o::r-x";
        c.expect(ROOT, &["setacl", &c.p("d"), "default", default], "ok");
        c.expect(ROOT, &["getacl", &c.p("d"), "access"], "ENODATA");
        // A file: no umask; its mode restricts the inherited owner, mask and other entries.
        c.expect(
            ROOT,
            &["--umask", "077", "create", &c.p("d/f"), "666"],
            "ok",
        );
        assert_eq!(c.field("d/f", "mode"), "664", "[{}] file mode", c.site);
        c.expect(
            ROOT,
            &["getacl", &c.p("d/f"), "access"],
            "ok u::rw-,u:60001:rwx,g::r-x,m::rw-,o::r--",
        );
        c.expect(ROOT, &["getacl", &c.p("d/f"), "default"], "ENODATA");
        c.expect(ALICE, &["write", &c.p("d/f"), "a"], "ok");
        c.expect(BOB, &["write", &c.p("d/f"), "b"], "EACCES");
        // A directory also inherits the default ACL, and hands it on.
        c.expect(ROOT, &["--umask", "077", "mkdir", &c.p("d/s"), "777"], "ok");
        assert_eq!(c.field("d/s", "mode"), "775", "[{}] dir mode", c.site);
        c.expect(
            ROOT,
            &["getacl", &c.p("d/s"), "default"],
            &format!("ok {default}"),
        );
        c.expect(ALICE, &["create", &c.p("d/s/a"), "640"], "ok");
        assert_eq!(c.field("d/s/a", "mode"), "640", "[{}] nested", c.site);
        c.expect(
            ROOT,
            &["getacl", &c.p("d/s/a"), "access"],
            "ok u::rw-,u:60001:rwx,g::r-x,m::r--,o::---",
        );
        // A default ACL of mode bits only: no access ACL on the new file, still no umask.
        c.dir_of("m", 0, 0, 0o755);
        c.expect(
            ROOT,
            &["setacl", &c.p("m"), "default", "u::rwx,g::r-x,o::---"],
            "ok",
        );
        c.expect(
            ROOT,
            &["--umask", "077", "create", &c.p("m/f"), "666"],
            "ok",
        );
        assert_eq!(
            c.field("m/f", "mode"),
            "640",
            "[{}] minimal default",
            c.site
        );
        c.expect(ROOT, &["getacl", &c.p("m/f"), "access"], "ENODATA");
        // Without a default ACL the umask applies.
        c.dir_of("e", 0, 0, 0o777);
        c.expect(
            ROOT,
            &["--umask", "027", "create", &c.p("e/f"), "666"],
            "ok",
        );
        assert_eq!(c.field("e/f", "mode"), "640", "[{}] umask", c.site);
        c.expect(ROOT, &["--umask", "027", "mkdir", &c.p("e/s"), "777"], "ok");
        assert_eq!(c.field("e/s", "mode"), "750", "[{}] umask", c.site);
        // Removing the default ACL: new files get the umask again.
        c.expect(ROOT, &["rmacl", &c.p("d"), "default"], "ok");
        c.expect(
            ROOT,
            &["--umask", "077", "create", &c.p("d/g"), "666"],
            "ok",
        );
        assert_eq!(
            c.field("d/g", "mode"),
            "600",
            "[{}] default removed",
            c.site
        );
    });
}

/// fallocate(2) on `f`; the errno on failure.
fn fallocate(f: &fs::File, mode: i32, off: u64, len: u64) -> Result<(), i32> {
    shoal_fstests::fallocate(f, mode, off, len).map_err(|e| e.raw_os_error().unwrap_or(0))
}

#[test]
fn posix_fallocate_punches_zeroes_and_grows_like_a_local_filesystem() {
    use libc::{FALLOC_FL_COLLAPSE_RANGE as COLLAPSE, FALLOC_FL_ZERO_RANGE as ZERO};
    use libc::{FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH};
    const MIB: u64 = 1 << 20;
    let Some(s) = Sites::new() else { return };
    s.each("fallocate", |c| {
        for name in c.layout_dirs() {
            let path = c.dir.join(name).join("f");
            let mut model: Vec<u8> = (0..10 * MIB + 123)
                .map(|i| (i * 31 % 251) as u8 + 1)
                .collect();
            fs::write(&path, &model).unwrap();
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let check = |model: &[u8], what: &str| {
                let got = fs::read(&path).unwrap();
                assert_eq!(
                    got.len(),
                    model.len(),
                    "[{}/{name}] size after {what}",
                    c.site
                );
                if let Some(at) = got.iter().zip(model).position(|(a, b)| a != b) {
                    panic!("[{}/{name}] after {what}: first difference at {at}", c.site);
                }
            };
            let zero = |model: &mut Vec<u8>, off: u64, len: u64| {
                let end = (off + len).min(model.len() as u64);
                if off < end {
                    model[off as usize..end as usize].fill(0);
                }
            };
            // A hole across whole objects and into the middle of others; the size stays.
            fallocate(&f, PUNCH | KEEP, MIB + 100, 8 * MIB - 107).unwrap();
            zero(&mut model, MIB + 100, 8 * MIB - 107);
            check(&model, "punch");
            // Past the end: only the part inside the file is zeroed.
            let size = model.len() as u64;
            fallocate(&f, PUNCH | KEEP, size - 1000, 2 * MIB).unwrap();
            zero(&mut model, size - 1000, 2 * MIB);
            check(&model, "punch past the end");
            fallocate(&f, ZERO, 500, 1000).unwrap();
            zero(&mut model, 500, 1000);
            check(&model, "zero range");
            // ZERO_RANGE without KEEP_SIZE and mode 0 grow the file; KEEP_SIZE does not.
            fallocate(&f, ZERO, size + 100, 5000).unwrap();
            model.resize(size as usize + 5100, 0);
            check(&model, "zero range past the end");
            fallocate(&f, ZERO | KEEP, 0, 20 * MIB).unwrap();
            model.fill(0);
            check(&model, "zero range, keep size");
            fallocate(&f, 0, 0, 12 * MIB).unwrap();
            model.resize(12 * MIB as usize, 0);
            check(&model, "allocate");
            fallocate(&f, KEEP, 0, 16 * MIB).unwrap();
            check(&model, "allocate, keep size");
            // Data written into a hole reads back.
            std::os::unix::fs::FileExt::write_all_at(&f, b"written", 5 * MIB).unwrap();
            model[5 * MIB as usize..5 * MIB as usize + 7].copy_from_slice(b"written");
            check(&model, "write into the hole");
            // A hole punch must keep the size.
            assert_eq!(fallocate(&f, PUNCH, 0, 4096), Err(libc::EOPNOTSUPP));
            if c.site == "shoal" {
                // Documented in docs/posix.md: collapse and insert are not supported.
                assert_eq!(fallocate(&f, COLLAPSE, 0, MIB), Err(libc::EOPNOTSUPP));
            }
        }
    });
}

/// lseek(2) on `f`; the errno on failure.
fn lseek(f: &fs::File, off: u64, whence: i32) -> Result<u64, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok(r as u64)
}

#[test]
fn posix_seek_data_and_seek_hole_find_the_written_ranges() {
    use libc::{ENXIO, SEEK_DATA as DATA, SEEK_HOLE as HOLE};
    use std::os::unix::fs::FileExt;
    const MIB: u64 = 1 << 20;
    let Some(s) = Sites::new() else { return };
    s.each("seek", |c| {
        for name in c.layout_dirs() {
            let path = c.dir.join(name).join("f");
            let f = fs::File::create(&path).unwrap();
            // Whole 4 KiB blocks, so a block-based filesystem and Shoal's objects agree.
            f.write_all_at(&[1; 4096], 8 * MIB).unwrap();
            f.write_all_at(&[2; 8192], 20 * MIB).unwrap();
            f.set_len(32 * MIB).unwrap();
            let f = fs::File::open(&path).unwrap();
            let cases = [
                (0, DATA, Ok(8 * MIB)),
                (0, HOLE, Ok(0)),
                (8 * MIB, HOLE, Ok(8 * MIB + 4096)),
                (8 * MIB + 100, DATA, Ok(8 * MIB + 100)),
                (8 * MIB + 4096, DATA, Ok(20 * MIB)),
                (20 * MIB + 100, HOLE, Ok(20 * MIB + 8192)),
                (20 * MIB + 8192, DATA, Err(ENXIO)),
                (20 * MIB + 8192, HOLE, Ok(20 * MIB + 8192)),
                (32 * MIB - 1, HOLE, Ok(32 * MIB - 1)),
                (32 * MIB, DATA, Err(ENXIO)),
                (32 * MIB, HOLE, Err(ENXIO)),
            ];
            for (off, whence, want) in cases {
                let got = lseek(&f, off, whence);
                let w = if whence == DATA {
                    "SEEK_DATA"
                } else {
                    "SEEK_HOLE"
                };
                assert_eq!(got, want, "[{}/{name}] {w} from {off}", c.site);
            }
            // A file with no data at all is one hole.
            let empty = c.dir.join(name).join("empty");
            let e = fs::File::create(&empty).unwrap();
            e.set_len(MIB).unwrap();
            assert_eq!(lseek(&e, 0, DATA), Err(ENXIO), "[{}/{name}]", c.site);
            assert_eq!(lseek(&e, 10, HOLE), Ok(10), "[{}/{name}]", c.site);
        }
    });
}

#[test]
fn posix_huge_sparse_files_are_written_found_truncated_and_removed() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let Some(s) = Sites::new() else { return };
    let far = 1u64 << 40; // 1 TiB: within ext4's 16 TiB limit
    s.each("huge", |c| {
        let path = c.dir.join("f");
        let f = fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all_at(b"far out", far).unwrap();
        assert_eq!(f.metadata().unwrap().len(), far + 7, "[{}]", c.site);
        let mut buf = [9u8; 8];
        f.read_exact_at(&mut buf, far - 1).unwrap();
        assert_eq!(&buf, b"\0far out", "[{}]", c.site);
        assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(far), "[{}]", c.site);
        // Cut in the middle: the data is gone, reading the rest gives zeros.
        f.set_len(far / 2).unwrap();
        f.set_len(far + 7).unwrap();
        f.read_exact_at(&mut buf[..7], far).unwrap();
        assert_eq!(&buf[..7], &[0; 7], "[{}] after truncating over it", c.site);
        f.write_all_at(b"again", far).unwrap();
        assert!(f.metadata().unwrap().blocks() > 0, "[{}]", c.site);
        drop(f);
        fs::remove_file(&path).unwrap();
    });
    // Shoal goes on to the largest size a signed off_t holds (ext4 stops at 16 TiB: EFBIG).
    let path = s.cluster.mnt.join("huge/max");
    let f = fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let max = i64::MAX as u64;
    f.write_all_at(b"z", max - 1).unwrap();
    assert_eq!(f.metadata().unwrap().len(), max);
    // One byte more would overflow off_t: the kernel refuses it before Shoal sees it.
    let err = f.write_all_at(b"z", max).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let mut b = [9u8; 2];
    f.read_exact_at(&mut b, max - 2).unwrap();
    assert_eq!(b, [0, b'z']);
    let object_start = (max - 1) / (4 << 20) * (4 << 20);
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(object_start));
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(0));
    // Punching the whole file and cutting it to zero touch only the objects that exist.
    shoal_fstests::fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        max,
    )
    .unwrap();
    f.read_exact_at(&mut b, max - 2).unwrap();
    assert_eq!(b, [0, 0]);
    f.write_all_at(b"z", max - 1).unwrap();
    f.set_len(0).unwrap();
    f.set_len(max).unwrap();
    f.read_exact_at(&mut b, max - 2).unwrap();
    assert_eq!(b, [0, 0]);
    f.write_all_at(b"z", max - 1).unwrap();
    let prefix = format!("{:016x}.", f.metadata().unwrap().ino());
    let objects_left = || {
        s.cluster
            .object_files()
            .iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .count()
    };
    assert_eq!(objects_left(), 3, "one object, three copies");
    drop(f);
    fs::remove_file(&path).unwrap();
    // An unlink made under the directory's lease deletes the data once it landed, in the
    // background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while objects_left() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(objects_left(), 0, "unlink deletes every copy");
}

/// open(2) of `p` with `flags` (mode 0644); the errno on failure. Closes what it opens.
fn open_errno(p: &Path, flags: i32) -> Result<(), i32> {
    let c = shoal_fstests::cpath(p);
    // SAFETY: a NUL-terminated path; the descriptor is closed at once.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

/// This process's umask, read without changing it (other tests run in parallel threads).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap();
    u32::from_str_radix(line.trim(), 8).unwrap()
}

#[test]
fn posix_open_flags_special_files_and_utimensat() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Some(s) = Sites::new() else { return };
    s.each("open", |c| {
        let d = &c.dir;
        fs::write(d.join("f"), b"data").unwrap();
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        let site = c.site;
        let at = |rel: &str| d.join(rel);
        assert_eq!(
            open_errno(&at("l"), libc::O_RDONLY | libc::O_NOFOLLOW),
            Err(libc::ELOOP),
            "[{site}]"
        );
        assert_eq!(
            open_errno(&at("f"), libc::O_RDONLY | libc::O_DIRECTORY),
            Err(libc::ENOTDIR),
            "[{site}]"
        );
        assert_eq!(
            open_errno(d, libc::O_RDONLY | libc::O_DIRECTORY),
            Ok(()),
            "[{site}]"
        );
        assert_eq!(open_errno(d, libc::O_WRONLY), Err(libc::EISDIR), "[{site}]");
        let excl = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
        assert_eq!(open_errno(&at("f"), excl), Err(libc::EEXIST), "[{site}]");
        // O_EXCL does not follow a dangling symlink to create its target.
        assert_eq!(
            open_errno(&at("dangling"), excl),
            Err(libc::EEXIST),
            "[{site}]"
        );
        assert!(!at("nowhere").exists(), "[{site}]");
        // Without O_EXCL it does.
        assert_eq!(
            open_errno(&at("dangling"), libc::O_CREAT | libc::O_WRONLY),
            Ok(()),
            "[{site}]"
        );
        assert!(at("nowhere").is_file(), "[{site}]");
        assert_eq!(
            open_errno(&at("f"), libc::O_WRONLY | libc::O_TRUNC),
            Ok(()),
            "[{site}]"
        );
        assert_eq!(fs::metadata(at("f")).unwrap().len(), 0, "[{site}] O_TRUNC");
        // O_DIRECT: aligned writes and reads bypass the page cache and land where asked.
        {
            use std::os::unix::fs::{FileExt, OpenOptionsExt};
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(at("f"))
                .unwrap();
            let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
            // SAFETY: an 8 KiB block aligned for O_DIRECT, written in full before any read
            // and freed below; the slice does not outlive it.
            let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), 8192) };
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            f.write_all_at(buf, 4096).unwrap();
            let want = buf.to_vec();
            buf.fill(0);
            f.read_exact_at(buf, 4096).unwrap();
            let same = buf[..] == want[..];
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(buf.as_mut_ptr(), layout) };
            assert!(same, "[{site}] O_DIRECT read back");
            assert_eq!(
                fs::metadata(at("f")).unwrap().len(),
                4096 + 8192,
                "[{site}]"
            );
            let plain = fs::read(at("f")).unwrap();
            assert_eq!(
                &plain[4096..],
                &want[..],
                "[{site}] O_DIRECT data seen by read(2)"
            );
        }
        if site == "shoal" {
            // Documented in docs/posix.md: no O_TMPFILE.
            assert_eq!(
                open_errno(d, libc::O_TMPFILE | libc::O_RDWR),
                Err(libc::EOPNOTSUPP)
            );
        }

        // mknod: the type and the device number are kept.
        let cases = [
            ("fifo", libc::S_IFIFO, 0),
            ("chr", libc::S_IFCHR, libc::makedev(1, 3)),
            ("blk", libc::S_IFBLK, libc::makedev(7, 129)),
            ("sock", libc::S_IFSOCK, 0),
        ];
        for (name, kind, dev) in cases {
            let p = shoal_fstests::cpath(&at(name));
            // SAFETY: a NUL-terminated path.
            let r = unsafe { libc::mknod(p.as_ptr(), kind | 0o640, dev) };
            assert_eq!(
                r,
                0,
                "[{site}] mknod {name}: {}",
                std::io::Error::last_os_error()
            );
            let m = fs::symlink_metadata(at(name)).unwrap();
            let ft = m.file_type();
            let right = match name {
                "fifo" => ft.is_fifo(),
                "chr" => ft.is_char_device(),
                "blk" => ft.is_block_device(),
                _ => ft.is_socket(),
            };
            assert!(right, "[{site}] {name} has type {ft:?}");
            assert_eq!(m.rdev(), dev, "[{site}] {name} rdev");
            assert_eq!(m.mode() & 0o7777, 0o640 & !umask(), "[{site}] {name} mode");
        }

        // utimensat: UTIME_OMIT leaves a time alone; times keep their nanoseconds.
        let p = shoal_fstests::cpath(&at("f"));
        let set = |atime: libc::timespec, mtime: libc::timespec| {
            let ts = [atime, mtime];
            // SAFETY: a NUL-terminated path and two timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) }
        };
        let ts = |sec, nsec| libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        assert_eq!(
            set(
                ts(1_000_000_000, 123_456_789),
                ts(1_100_000_000, 987_654_321)
            ),
            0
        );
        assert_eq!(set(ts(0, libc::UTIME_OMIT), ts(1_200_000_000, 5)), 0);
        let m = fs::metadata(at("f")).unwrap();
        assert_eq!(
            (m.atime(), m.atime_nsec()),
            (1_000_000_000, 123_456_789),
            "[{site}] atime kept"
        );
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (1_200_000_000, 5),
            "[{site}] mtime set"
        );
        assert_eq!(set(ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)), 0);
        let m2 = fs::metadata(at("f")).unwrap();
        assert!(m2.atime() > 1_600_000_000, "[{site}] UTIME_NOW");
        assert_eq!(
            (m2.mtime(), m2.mtime_nsec()),
            (1_200_000_000, 5),
            "[{site}] mtime kept"
        );
        // Symlinks' own times, through AT_SYMLINK_NOFOLLOW.
        let l = shoal_fstests::cpath(&at("l"));
        let two = [ts(1_000_000_000, 0), ts(1_000_000_001, 7)];
        // SAFETY: a NUL-terminated path and two timespecs.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                l.as_ptr(),
                two.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "[{site}] utimensat on a symlink");
        let lm = fs::symlink_metadata(at("l")).unwrap();
        assert_eq!(
            (lm.mtime(), lm.mtime_nsec()),
            (1_000_000_001, 7),
            "[{site}] symlink mtime"
        );
        assert_eq!(
            fs::metadata(at("f")).unwrap().mtime(),
            1_200_000_000,
            "[{site}] target untouched"
        );
    });
}

#[test]
fn posix_concurrent_o_append_writers_never_interleave() {
    const WRITERS: usize = 4;
    const RECORDS: usize = 300;
    const LEN: usize = 100;
    let Some(s) = Sites::new() else { return };
    s.each("append", |c| {
        let path = c.dir.join("log");
        fs::write(&path, b"").unwrap();
        std::thread::scope(|scope| {
            for w in 0..WRITERS {
                let path = &path;
                scope.spawn(move || {
                    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
                    for r in 0..RECORDS {
                        let mut rec = format!("{w}:{r:05}:").into_bytes();
                        rec.resize(LEN - 1, b'a' + w as u8);
                        rec.push(b'\n');
                        std::io::Write::write_all(&mut f, &rec).unwrap();
                    }
                });
            }
        });
        let data = fs::read(&path).unwrap();
        assert_eq!(
            data.len(),
            WRITERS * RECORDS * LEN,
            "[{}] every append landed",
            c.site
        );
        let mut next = [0usize; WRITERS];
        for rec in data.chunks(LEN) {
            let text = String::from_utf8_lossy(rec);
            let w: usize = text[..1]
                .parse()
                .unwrap_or_else(|_| panic!("[{}] torn record {text:?}", c.site));
            assert_eq!(
                text[2..7].parse::<usize>().ok(),
                Some(next[w]),
                "[{}] record {text:?}",
                c.site
            );
            assert!(
                rec[8..LEN - 1].iter().all(|&b| b == b'a' + w as u8),
                "[{}] mixed {text:?}",
                c.site
            );
            next[w] += 1;
        }
    });
}

#[test]
fn posix_readdir_while_entries_come_and_go() {
    use std::collections::{HashMap, HashSet};
    let Some(s) = Sites::new() else { return };
    s.each("readdir", |c| {
        // Long names: the listing takes many getdents calls.
        let name = |i: usize| format!("entry-{i:05}-{}", "x".repeat(80));
        for i in 0..2000 {
            fs::write(c.dir.join(name(i)), b"").unwrap();
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut removed = HashSet::new();
        let mut step = 0;
        for e in fs::read_dir(&c.dir).unwrap() {
            *seen
                .entry(e.unwrap().file_name().into_string().unwrap())
                .or_default() += 1;
            step += 1;
            if step % 100 == 0 {
                // Remove some entries, add others, while the listing is under way.
                for k in 0..10 {
                    let victim = (step * 7 + k * 131) % 2000;
                    if removed.insert(victim) {
                        fs::remove_file(c.dir.join(name(victim))).unwrap();
                    }
                    fs::write(c.dir.join(name(2000 + step + k)), b"").unwrap();
                }
            }
        }
        let dup: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
        assert!(dup.is_empty(), "[{}] listed twice: {dup:?}", c.site);
        // Every entry that was there all along is listed.
        for i in (0..2000).filter(|i| !removed.contains(i)) {
            assert!(
                seen.contains_key(&name(i)),
                "[{}] {} missing",
                c.site,
                name(i)
            );
        }
    });
}

#[test]
fn posix_xattr_namespaces_as_users() {
    let Some(s) = Sites::new() else { return };
    s.each("xattr", |c| {
        c.file_of("f", ALICE_ID, ALICE_ID, 0o644);
        let f = c.p("f");
        // user.*: writing needs write permission, reading needs read permission.
        c.expect(ALICE, &["setxattr", &f, "user.a", "1"], "ok");
        c.expect(BOB, &["setxattr", &f, "user.b", "2"], "EACCES");
        c.expect(BOB, &["getxattr", &f, "user.a"], "ok 1");
        c.file_of("secret", ALICE_ID, ALICE_ID, 0o600);
        c.expect(ALICE, &["setxattr", &c.p("secret"), "user.a", "1"], "ok");
        c.expect(BOB, &["getxattr", &c.p("secret"), "user.a"], "EACCES");
        // trusted.*: only root sets it, and others neither read nor list it.
        c.expect(ALICE, &["setxattr", &f, "trusted.t", "x"], "EPERM");
        c.expect(ROOT, &["setxattr", &f, "trusted.t", "x"], "ok");
        c.expect(ALICE, &["getxattr", &f, "trusted.t"], "ENODATA");
        c.expect(ROOT, &["getxattr", &f, "trusted.t"], "ok x");
        c.expect(ALICE, &["listxattr", &f], "ok user.a");
        c.expect(ROOT, &["listxattr", &f], "ok trusted.t,user.a");
        // user.* xattrs are for regular files and directories only.
        fs::create_dir(c.dir.join("d")).unwrap();
        c.expect(ROOT, &["setxattr", &c.p("d"), "user.d", "1"], "ok");
        std::os::unix::fs::symlink("f", c.dir.join("l")).unwrap();
        c.expect(ROOT, &["setxattr", &c.p("l"), "user.l", "1"], "EPERM");
        c.expect(ROOT, &["setxattr", &f, "bogus.x", "1"], "EOPNOTSUPP");
    });
}
