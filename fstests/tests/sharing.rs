//! Several mounts of one cluster: fcntl and flock locks enforced by the MDS across clients,
//! released by close, by a clean unmount, and by the session timeout when a client dies.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_fstests::{bin, open_rw, wait_released, TestCluster};

/// Runs one `shoal-fsop` call and returns what it printed.
fn fsop(args: &[&str]) -> String {
    let out = Command::new(bin("shoal-fsop"))
        .args(args)
        .output()
        .expect("run shoal-fsop");
    assert!(
        out.status.success(),
        "shoal-fsop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts a `shoal-fsop` call in the background, its output piped.
fn fsop_spawn(args: &[&str]) -> Child {
    Command::new(bin("shoal-fsop"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn shoal-fsop")
}

/// Kills a background call when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that write-locks all of `p` and keeps the lock until it is killed.
fn hold(p: &Path) -> Reaper {
    let mut holder = Reaper(fsop_spawn(&["hold", p.to_str().unwrap()]));
    let mut line = String::new();
    BufReader::new(holder.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ok", "the holder has its lock");
    holder
}

/// fcntl F_SETLK on `f`; the errno on failure.
fn setlk(f: &fs::File, kind: i32, start: i64, len: i64) -> Result<(), i32> {
    // SAFETY: a zeroed flock filled in below, passed to fcntl on an open descriptor.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn fcntl_locks_are_enforced_across_mounts_and_released_by_close() {
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    let (a, b) = (c.path("f"), m2.join("f"));
    fs::write(&a, b"shared").unwrap();
    let bs = b.to_str().unwrap();

    // This process write-locks bytes 0..100 through the first mount.
    let f = open_rw(&a);
    setlk(&f, libc::F_WRLCK, 0, 100).unwrap();
    // Another process on the second mount: conflicting locks are refused, F_GETLK names the
    // holder and its pid, a range that does not overlap is free.
    assert_eq!(fsop(&["setlk", bs, "w", "50", "10"]), "EAGAIN");
    assert_eq!(fsop(&["setlk", bs, "r", "99", "0"]), "EAGAIN");
    assert_eq!(
        fsop(&["getlk", bs, "r", "0", "1"]),
        format!("ok w 0 100 pid={}", std::process::id())
    );
    assert_eq!(fsop(&["setlk", bs, "w", "100", "50"]), "ok");
    assert_eq!(fsop(&["getlk", bs, "w", "100", "50"]), "ok unlocked");
    // Downgrading to a read lock lets other readers in, not writers.
    setlk(&f, libc::F_RDLCK, 0, 100).unwrap();
    assert_eq!(fsop(&["setlk", bs, "r", "0", "100"]), "ok");
    assert_eq!(fsop(&["setlk", bs, "w", "0", "1"]), "EAGAIN");
    setlk(&f, libc::F_WRLCK, 0, 100).unwrap();

    // F_SETLKW waits for the holder; a signal interrupts the wait with EINTR.
    let t = Instant::now();
    assert_eq!(fsop(&["setlkw", bs, "w", "10", "10", "1"]), "EINTR");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let mut waiter = Reaper(fsop_spawn(&["setlkw", bs, "w", "0", "0"]));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiter.0.try_wait().unwrap().is_none(),
        "F_SETLKW returned while the lock was held"
    );
    // Closing any descriptor of the file releases this process's locks (POSIX), and the
    // waiter on the other mount gets its lock.
    drop(f);
    let out = waiter.0.wait_with_output_ref();
    assert_eq!(out, "ok");

    // `shoal client evict` evicts a session that holds a lock: the lock goes once the OSDs
    // refuse the session.
    fs::write(c.path("h"), b"h").unwrap();
    let holder = hold(&m2.join("h"));
    let h = open_rw(&c.path("h"));
    assert_eq!(setlk(&h, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    // A lock to the end of the file reads back as length 0.
    let got = fsop(&["getlk", c.path("h").to_str().unwrap(), "r", "5", "1"]);
    assert_eq!(got, format!("ok w 0 0 pid={}", holder.0.id()));
    let status = c.status();
    let holders: Vec<u64> = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["locks"].as_u64() == Some(1))
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(holders.len(), 1, "{status}");
    assert!(
        status["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["mount_point"]
                .as_str()
                .is_some_and(|m| m.ends_with("mnt2"))),
        "{status}"
    );
    c.shoal_ok(&["client", "evict", &format!("{:x}", holders[0])]);
    assert_eq!(setlk(&h, libc::F_WRLCK, 0, 0), Ok(()));
    drop(holder);
}

/// Reads a child's whole stdout after it exits.
trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for Child {
    fn wait_with_output_ref(&mut self) -> String {
        let mut s = String::new();
        if let Some(out) = self.stdout.as_mut() {
            std::io::Read::read_to_string(out, &mut s).unwrap();
        }
        self.wait().unwrap();
        s.trim().to_string()
    }
}

#[test]
fn appends_under_flock_from_two_mounts_lose_and_tear_nothing() {
    const PER_WRITER: usize = 60;
    let c = TestCluster::start();
    let m2 = c.mount_again("mnt2");
    fs::write(c.path("log"), b"").unwrap();
    let mut writers = Vec::new();
    for (tag, mnt) in [("a1", &c.mnt), ("a2", &c.mnt), ("b1", &m2), ("b2", &m2)] {
        let p = mnt.join("log");
        let n = PER_WRITER.to_string();
        writers.push((
            tag,
            fsop_spawn(&["append-locked", p.to_str().unwrap(), tag, &n]),
        ));
    }
    for (tag, w) in &mut writers {
        assert_eq!(w.wait_with_output_ref(), "ok", "writer {tag}");
    }
    let data = fs::read(m2.join("log")).unwrap();
    assert_eq!(data.len(), 4 * PER_WRITER * 64, "every record, once");
    let mut next = std::collections::HashMap::new();
    for rec in data.chunks(64) {
        let text = String::from_utf8_lossy(rec);
        assert!(
            rec[63] == b'\n' && rec[..63].ends_with(b"."),
            "torn record {text:?}"
        );
        let mut words = text.split(' ');
        let (tag, seq) = (words.next().unwrap(), words.next().unwrap());
        let want = next.entry(tag.to_string()).or_insert(0usize);
        assert_eq!(seq.parse::<usize>().unwrap(), *want, "order of {tag}");
        *want += 1;
    }
    assert!(next.values().all(|&n| n == PER_WRITER), "{next:?}");
}

#[test]
fn a_dead_clients_locks_go_after_the_session_timeout_and_an_unmount_frees_at_once() {
    let c = TestCluster::start_args(&["--osds", "3", "--session-timeout", "3"]);
    let m2 = c.mount_again("mnt2");
    let m3 = c.mount_again("mnt3");
    fs::write(c.path("f"), b"x").unwrap();
    fs::write(c.path("g"), b"y").unwrap();
    let f = open_rw(&c.path("f"));
    let g = open_rw(&c.path("g"));

    // A process on the third mount holds a lock; a clean unmount releases it at once.
    let holder = hold(&m3.join("g"));
    assert_eq!(setlk(&g, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    let status = c.status();
    let held: u64 = status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["locks"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 1, "{status}");
    drop(holder);
    let out = Command::new("umount").arg(&m3).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(setlk(&g, libc::F_WRLCK, 0, 0), Ok(()));

    // The second mount's client dies with a lock held: the lock stays until the session
    // times out (3 s here), then this mount can take it.
    let holder = hold(&m2.join("f"));
    c.kill9("client.1");
    let killed = Instant::now();
    assert_eq!(setlk(&f, libc::F_WRLCK, 0, 0), Err(libc::EAGAIN));
    let timeout = Duration::from_secs(3);
    wait_released(killed, timeout, "the dead client's lock", || {
        match setlk(&f, libc::F_WRLCK, 0, 0) {
            Ok(()) => true,
            Err(e) => {
                assert_eq!(e, libc::EAGAIN);
                false
            }
        }
    });
    drop(holder);
    let _ = Command::new("umount").arg("-l").arg(&m2).output();
}
