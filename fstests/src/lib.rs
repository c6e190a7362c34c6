//! The test-cluster kit: starts a real all-in-one cluster (`shoal up --detach`: MDS, OSDs and
//! a FUSE client as separate processes on loopback) in a temporary directory, and tears it
//! down in `Drop` even when a test fails.
//!
//! Binaries are found beside the test executable (`target/<profile>/`), so run
//! `cargo build --workspace --bins` before the tests (the README's test command does).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running cluster with one mount.
pub struct TestCluster {
    /// Holds `data/` and `mnt/`; removed on drop.
    pub root: tempfile::TempDir,
    /// The cluster's state directory (`shoal up --data`).
    pub data: PathBuf,
    /// Where client.0 mounts it.
    pub mnt: PathBuf,
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe
        .parent()
        .expect("test executable directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A tool `./test.sh` installs from crates.io into the target directory's `tools/bin`.
pub fn tool(name: &str) -> PathBuf {
    let debug = bin("shoal")
        .parent()
        .expect("a target directory")
        .to_path_buf();
    let p = debug
        .parent()
        .expect("the target directory")
        .join("tools/bin")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: ./test.sh installs it (cargo install --root <target>/tools)",
        p.display()
    );
    p
}

/// Runs `cmd` and asserts it succeeded, showing its output if not.
pub fn run_ok(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    check(cmd.output().expect("command runs"), &what)
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TestCluster {
    /// Starts a cluster with `osds` OSDs and mounts it.
    pub fn start_with(osds: usize) -> TestCluster {
        Self::start_args(&["--osds", &osds.to_string()])
    }

    /// Starts a cluster with extra `shoal up` arguments and mounts it.
    pub fn start_args(extra: &[&str]) -> TestCluster {
        Self::start_env(extra, &[])
    }

    /// [`TestCluster::start_args`], the daemons started with environment variables `env`
    /// set (settings the CLI does not pass on, such as `SHOAL_OSD_CHECKPOINT_SECS`).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> TestCluster {
        let mut root = tempfile::Builder::new()
            .prefix("shoal-test-")
            .tempdir()
            .expect("temp dir");
        // SHOAL_TEST_KEEP=1 keeps each test's daemon logs and data for a post-mortem.
        root.disable_cleanup(std::env::var_os("SHOAL_TEST_KEEP").is_some());
        let data = root.path().join("data");
        let mnt = root.path().join("mnt");
        let c = TestCluster { root, data, mnt };
        let mut args = vec!["up", "--mount", c.mnt.to_str().unwrap(), "--detach"];
        args.extend_from_slice(extra);
        let out = Command::new(bin("shoal"))
            .args(&args)
            .arg("--data")
            .arg(&c.data)
            .envs(env.iter().copied())
            .output()
            .expect("running shoal");
        check(out, &format!("shoal {}", args.join(" ")));
        c
    }

    /// Starts the default cluster (1 MDS, 3 OSDs) and mounts it.
    pub fn start() -> TestCluster {
        Self::start_with(3)
    }

    /// Runs `shoal ARGS --data DATA` and returns its output.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(bin("shoal"))
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .output()
            .expect("running shoal")
    }

    /// Runs `shoal ARGS --data DATA`, asserting success.
    pub fn shoal_ok(&self, args: &[&str]) -> Output {
        check(self.shoal(args), &format!("shoal {}", args.join(" ")))
    }

    /// `shoal up --detach` again: restarts whatever is not running.
    pub fn up(&self) {
        self.shoal_ok(&["up", "--detach"]);
    }

    /// The pid of daemon `name` (`mds.0`, `osd.1`, `client.0`).
    pub fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.data.join(name).join("pid"))
            .unwrap_or_else(|e| panic!("pid of {name}: {e}"))
            .trim()
            .parse()
            .expect("pid file holds a number")
    }

    /// SIGKILLs daemon `name` and waits until it is gone.
    pub fn kill9(&self, name: &str) {
        let pid = self.pid(name);
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let start = Instant::now();
        while alive(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} did not die"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Mounts the cluster a second time at `ROOT/name` (another client, its own session).
    pub fn mount_again(&self, name: &str) -> PathBuf {
        let m = self.root.path().join(name);
        self.shoal_ok(&["mount", m.to_str().unwrap()]);
        m
    }

    /// As [`Self::mount_again`], with mount options `opts` (`-o`).
    pub fn mount_again_with(&self, name: &str, opts: &str) -> PathBuf {
        let m = self.root.path().join(name);
        self.shoal_ok(&["mount", "-o", opts, m.to_str().unwrap()]);
        m
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `shoal status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        // The host disk the tests share may be nearly full; that is not what they judge.
        let out = self.shoal_ok(&["status", "--json", "--nearfull-ratio", "1"]);
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Waits until `shoal status` reports every PG active+clean; panics with the last status
    /// after `limit`.
    pub fn wait_clean(&self, limit: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let st = self.status();
            if st["pgs"]["all_clean"] == true {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "PGs not clean after {limit:?}: {}",
                serde_json::to_string_pretty(&st["pgs"]).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Files of one daemon's live objects (`osd.1`): `<name>.obj`, not tombstones.
    pub fn object_files_of(&self, osd: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.data.join(osd).join("objects"), &mut out);
        out.retain(|p| p.extension().is_some_and(|e| e == "obj"));
        out
    }

    /// Files of every OSD's live objects (`<name>.obj`, not tombstones).
    pub fn object_files(&self) -> Vec<PathBuf> {
        self.files_of_osds("obj")
    }

    /// Every OSD's tombstones of deleted objects (`<name>.del`).
    pub fn tombstone_files(&self) -> Vec<PathBuf> {
        self.files_of_osds("del")
    }

    /// Files under every OSD's `objects/` whose extension is `ext`.
    fn files_of_osds(&self, ext: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for osd in std::fs::read_dir(&self.data)
            .into_iter()
            .flatten()
            .flatten()
        {
            if !osd.file_name().to_string_lossy().starts_with("osd.") {
                continue;
            }
            walk(&osd.path().join("objects"), &mut out);
        }
        out.retain(|p| p.extension().is_some_and(|e| e == ext));
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Whether the tests run as root; if not, says which check `needs` it and is skipped.
pub fn root_or_skip(needs: &str) -> bool {
    // SAFETY: geteuid has no memory effects.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("not root, skipped: {needs}");
    }
    root
}

/// A process stopped (SIGSTOP) until this is dropped (SIGCONT), so a failing test leaves no
/// frozen daemon behind.
pub struct Frozen(i32);

impl Frozen {
    /// Stops `pid` and waits until every one of its threads has stopped: SIGSTOP takes
    /// effect asynchronously, and on a loaded machine a thread woken just before can still
    /// answer a request meanwhile.
    pub fn stop(pid: i32) -> Frozen {
        // SAFETY: kill only sends a signal.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        let frozen = Frozen(pid);
        let start = Instant::now();
        loop {
            let states: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.flatten()
                        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                        .collect()
                })
                .unwrap_or_default();
            // The state follows the parenthesised command name.
            let stopped = states.iter().all(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            });
            if stopped && !states.is_empty() {
                return frozen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{pid} never stopped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Whether any thread of a process is still running (not exited, not a zombie). A SIGKILLed
/// process's main thread can be a zombie while other threads still exit and hold its files
/// (a RocksDB lock, say), so every thread is checked.
pub fn alive(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
    })
}

impl TestCluster {
    /// Prints each daemon's last warnings and errors, so a failure in CI (where the cluster's
    /// directory goes with the test) leaves its daemons' side in the test's output.
    fn print_warnings(&self) {
        for e in std::fs::read_dir(&self.data)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(log) = std::fs::read_to_string(e.path().join("log")) else {
                continue;
            };
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            let name = e.file_name().to_string_lossy().into_owned();
            eprintln!(
                "---- {name}: last warnings and errors ({} in all)",
                lines.len()
            );
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{name}: {l}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_warnings();
        }
        let _ = Command::new(bin("shoal"))
            .arg("down")
            .arg("--data")
            .arg(&self.data)
            .output();
        // Whatever is left (a test that killed the client): detach it so the temp dir goes.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        for e in std::fs::read_dir(&self.data)
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(p) = std::fs::read_to_string(e.path().join("pid")) {
                if let Ok(pid) = p.trim().parse::<i32>() {
                    if alive(pid) {
                        // SAFETY: kill has no memory effects.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// Whether another process can write-lock `p` right now (it takes the lock and exits).
pub fn lockable(p: &Path) -> bool {
    let out = Command::new(bin("shoal-fsop"))
        .args(["setlk", p.to_str().unwrap(), "w", "0", "0"])
        .output()
        .expect("run shoal-fsop");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(said == "ok" || said == "EAGAIN", "setlk said {said:?}");
    said == "ok"
}

/// `shoal-fsop hold-write` (or `write-lines`): a process with a file open (and write-locked),
/// writing 4096 bytes of `Z` where asked, or fsyncing; killed when dropped.
pub struct Holder {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Holder {
    /// Opens and write-locks `p`.
    pub fn start(p: &Path) -> Holder {
        Holder::start_as("hold-write", p)
    }

    /// `shoal-fsop CMD P`: `hold-write` (under a lock) or `write-lines` (without).
    pub fn start_as(cmd: &str, p: &Path) -> Holder {
        let mut child = Command::new(bin("shoal-fsop"))
            .args([cmd, p.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn shoal-fsop");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut h = Holder { child, out };
        assert_eq!(
            h.said(),
            "ok",
            "the file is open (and locked, with hold-write)"
        );
        h
    }

    /// Asks for one write (4096 bytes of `Z` at offset 0).
    pub fn write(&mut self) {
        self.write_at(0);
    }

    /// Asks for one write of 4096 bytes of `Z` at `off`.
    pub fn write_at(&mut self, off: u64) {
        self.ask(&off.to_string());
    }

    /// Asks for an fsync of the descriptor.
    pub fn sync(&mut self) {
        self.ask("sync");
    }

    fn ask(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the holder printed.
    pub fn said(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `data` to a new file `p` and fsyncs it: on the OSDs when it returns (a close
/// leaves the data to the background).
pub fn write_synced(p: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Opens `p` for reading and writing.
pub fn open_rw(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// Opens `p` for reading and writing with O_DIRECT: every read and write goes to the mount
/// (use [`direct_read`] and [`direct_write`], which align the buffers).
pub fn open_direct(p: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", p.display()))
}

/// A 4 KiB-aligned buffer of `len` bytes (a multiple of 4096), as O_DIRECT needs.
struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn new(len: usize) -> Aligned {
        assert!(len.is_multiple_of(4096) && len > 0, "O_DIRECT length {len}");
        let v = vec![0u8; len + 4096];
        let skip = v.as_ptr().align_offset(4096);
        Aligned(v, skip)
    }

    fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.0[self.1..self.1 + len]
    }
}

/// `len` bytes at `off` read with one pread on an O_DIRECT descriptor (both aligned to 4 KiB);
/// fewer at the end of the file.
pub fn direct_read(f: &std::fs::File, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = Aligned::new(len);
    let n = f
        .read_at(b.buf(len), off)
        .unwrap_or_else(|e| panic!("O_DIRECT read of {len} at {off}: {e}"));
    b.buf(n).to_vec()
}

/// Writes `data` at `off` with one pwrite on an O_DIRECT descriptor (both aligned to 4 KiB).
pub fn direct_write(f: &std::fs::File, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let mut b = Aligned::new(data.len());
    b.buf(data.len()).copy_from_slice(data);
    f.write_all_at(b.buf(data.len()), off)
        .unwrap_or_else(|e| panic!("O_DIRECT write of {} at {off}: {e}", data.len()));
}

/// Linux native AIO (`io_submit`, what fio's libaio engine and databases use): every
/// operation of a batch is in flight at once on one O_DIRECT descriptor, so the mount sees
/// them together rather than one after another.
pub mod aio {
    use std::os::fd::AsRawFd;

    use super::Aligned;

    /// `struct iocb` of `linux/aio_abi.h` (little-endian field order).
    #[repr(C)]
    struct Iocb {
        data: u64,
        key: u32,
        rw_flags: i32,
        opcode: u16,
        reqprio: i16,
        fildes: u32,
        buf: u64,
        nbytes: u64,
        offset: i64,
        reserved2: u64,
        flags: u32,
        resfd: u32,
    }

    /// `struct io_event`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Event {
        data: u64,
        obj: u64,
        res: i64,
        res2: i64,
    }

    const PREAD: u16 = 0;
    const PWRITE: u16 = 1;

    /// Submits one operation per buffer (`opcode` at each offset) in a single `io_submit` and
    /// waits for them all; each one's result (bytes moved, or a negative errno).
    fn run(f: &std::fs::File, opcode: u16, ops: &mut [(u64, Aligned, usize)]) -> Vec<i64> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context into `ctx`.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, ops.len() as libc::c_long, &mut ctx) };
        assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
        let mut iocbs: Vec<Iocb> = ops
            .iter_mut()
            .enumerate()
            .map(|(i, (off, buf, len))| Iocb {
                data: i as u64,
                key: 0,
                rw_flags: 0,
                opcode,
                reqprio: 0,
                fildes: f.as_raw_fd() as u32,
                buf: buf.buf(*len).as_mut_ptr() as u64,
                nbytes: *len as u64,
                offset: *off as i64,
                reserved2: 0,
                flags: 0,
                resfd: 0,
            })
            .collect();
        let mut ptrs: Vec<*mut Iocb> = iocbs.iter_mut().map(|c| c as *mut Iocb).collect();
        // SAFETY: every iocb and the buffer it names outlive the operations, which are all
        // reaped below before either is dropped.
        let submitted = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                ctx,
                ptrs.len() as libc::c_long,
                ptrs.as_mut_ptr(),
            )
        };
        assert_eq!(
            submitted,
            ops.len() as libc::c_long,
            "io_submit: {}",
            std::io::Error::last_os_error()
        );
        let mut results = vec![i64::MIN; ops.len()];
        let mut events = vec![Event::default(); ops.len()];
        let mut reaped = 0;
        while reaped < ops.len() {
            // SAFETY: `events` has room for every operation still in flight.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    ctx,
                    1 as libc::c_long,
                    (ops.len() - reaped) as libc::c_long,
                    events.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            assert!(n > 0, "io_getevents: {}", std::io::Error::last_os_error());
            for e in &events[..n as usize] {
                results[e.data as usize] = e.res;
            }
            reaped += n as usize;
        }
        // SAFETY: no operation of the context is in flight any more.
        unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
        results
    }

    /// Writes each `(offset, bytes)` (both 4 KiB-aligned) with every write in flight at once.
    pub fn write_all(f: &std::fs::File, writes: &[(u64, &[u8])]) {
        let mut ops: Vec<(u64, Aligned, usize)> = writes
            .iter()
            .map(|(off, data)| {
                let mut b = Aligned::new(data.len());
                b.buf(data.len()).copy_from_slice(data);
                (*off, b, data.len())
            })
            .collect();
        for (i, r) in run(f, PWRITE, &mut ops).into_iter().enumerate() {
            let (off, len) = (writes[i].0, writes[i].1.len());
            assert_eq!(r, len as i64, "async O_DIRECT write of {len} at {off}");
        }
    }

    /// Reads each `(offset, length)` (both 4 KiB-aligned) with every read in flight at once;
    /// a read past the end of the file comes back short.
    pub fn read_all(f: &std::fs::File, reads: &[(u64, usize)]) -> Vec<Vec<u8>> {
        let mut ops: Vec<(u64, Aligned, usize)> = reads
            .iter()
            .map(|&(off, len)| (off, Aligned::new(len), len))
            .collect();
        let results = run(f, PREAD, &mut ops);
        ops.iter_mut()
            .zip(results)
            .map(|((off, b, len), r)| {
                assert!(
                    r >= 0,
                    "async O_DIRECT read of {len} at {off}: errno {}",
                    -r
                );
                b.buf(r as usize).to_vec()
            })
            .collect()
    }
}

/// Polls `free` every 200 ms until it says yes, as a lock held by a client that stopped
/// answering must become: not before `timeout` could have passed (less a second of slack),
/// and within 30 s. `what` names the lock for the failure message.
pub fn wait_released(
    since: Instant,
    timeout: Duration,
    what: &str,
    mut free: impl FnMut() -> bool,
) {
    while !free() {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{what} was never released"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        since.elapsed() + Duration::from_secs(1) >= timeout,
        "{what} was released before the session could time out: {:?}",
        since.elapsed()
    );
}

/// A path as a C string.
pub fn cpath(p: &std::path::Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// setxattr(2) of a text value; the errno on failure.
pub fn set_xattr(p: &std::path::Path, name: &str, value: &str) -> Result<(), i32> {
    set_xattr_bytes(p, name, value.as_bytes())
}

/// setxattr(2); the errno on failure.
pub fn set_xattr_bytes(p: &std::path::Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// getxattr(2) of a text value (up to 256 bytes); the errno on failure.
pub fn get_xattr(p: &std::path::Path, name: &str) -> Result<String, i32> {
    get_xattr_bytes(p, name).map(|v| String::from_utf8(v).unwrap())
}

/// getxattr(2) of a value of up to 256 bytes; the errno on failure.
pub fn get_xattr_bytes(p: &std::path::Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::getxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// fallocate(2) on an open file.
pub fn fallocate(f: &std::fs::File, mode: i32, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor.
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes `dir` on a Shoal mount with a small striped layout (1 MiB objects, 64 KiB units over
/// 4 objects), so most byte ranges cross object boundaries.
pub fn striped_dir(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    set_xattr(
        dir,
        "shoal.dir.layout",
        "object_size=1048576 stripe_unit=65536 stripe_count=4",
    )
    .unwrap();
}
