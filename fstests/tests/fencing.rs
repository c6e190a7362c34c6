//! Eviction and fencing: a client that stops answering loses its session after the session
//! timeout, its locks go to others only once the OSDs refuse it, and a write it still had in
//! hand never lands. The mount itself recovers with a new session.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_fstests::{lockable, open_rw, wait_released, Frozen, Holder, TestCluster};
use shoal_proto::error::WireError;

/// Write-locks all of `f` (F_SETLK); the errno on failure.
fn lock_all(f: &fs::File) -> Result<(), i32> {
    // SAFETY: a zeroed flock filled in below, passed to fcntl on an open descriptor.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Reads the first 4096 bytes of inode `ino` straight from an OSD as client session
/// `session`: how many there are, or how the OSD refused.
fn read_as(c: &TestCluster, ino: u64, session: u64) -> Result<usize, WireError> {
    crate::read_object(c, ino, 0, 4096, session).map(|d| d.len())
}

/// A cluster with a 3 s session timeout mounted twice: (cluster, second mount, file `f`
/// through the first mount holding `content`, the same file through the second).
fn two_mounts(content: &[u8]) -> (TestCluster, PathBuf, PathBuf, PathBuf) {
    let c = TestCluster::start_args(&["--osds", "3", "--session-timeout", "3"]);
    let m2 = c.mount_again("mnt2");
    let (a, b) = (c.path("f"), m2.join("f"));
    fs::write(&a, content).unwrap();
    (c, m2, a, b)
}

/// The sessions a `shoal status --json` answer lists as evicted.
fn evicted(status: &serde_json::Value) -> Vec<u64> {
    status["evicted"]
        .as_array()
        .map(|b| b.iter().filter_map(|s| s.as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn a_frozen_lock_holder_is_evicted_fenced_and_its_late_write_never_lands() {
    let (c, m2, a, b) = two_mounts(&[b'a'; 8192]);

    // A process on the second mount write-locks the file; then that mount's client freezes
    // (SIGSTOP) and the process starts a write under its lock, which waits in the kernel.
    let mut holder = Holder::start(&b);
    assert!(!lockable(&a), "the lock is enforced across mounts");
    let client = c.pid("client.1");
    let frozen = Frozen::stop(client);
    holder.write();

    // After the session timeout (3 s) the frozen client is evicted: the lock goes to the
    // first mount, which writes under it.
    let timeout = Duration::from_secs(3);
    wait_released(Instant::now(), timeout, "the frozen client's lock", || {
        lockable(&a)
    });
    let mine = open_rw(&a);
    lock_all(&mine).unwrap();
    mine.write_all_at(&[b'F'; 4096], 0).unwrap();
    mine.sync_all().unwrap();
    let status = c.status();
    let evicted = evicted(&status);
    assert_eq!(
        evicted.len(),
        1,
        "the evicted session is blocklisted: {status}"
    );
    // The OSD holding the file's first object refuses that session, not others.
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&a).unwrap());
    assert_eq!(
        read_as(&c, ino, evicted[0]),
        Err(shoal_proto::error::WireError::Evicted {
            session: evicted[0]
        })
    );
    assert_eq!(read_as(&c, ino, 0), Ok(4096));

    // The frozen client wakes up: the write it had in hand is refused (EIO) and never lands.
    drop(frozen);
    assert_eq!(holder.said(), "EIO", "a write under a lost lock must fail");
    std::thread::sleep(Duration::from_millis(500));
    let want: Vec<u8> = [vec![b'F'; 4096], vec![b'a'; 4096]].concat();
    assert!(fs::read(&a).unwrap() == want, "the late write landed");

    // What the old session had open stays failed; the mount goes on with a new session.
    holder.write();
    assert_eq!(holder.said(), "EIO", "an evicted handle stays failed");
    drop(holder);
    assert!(
        fs::read(&b).unwrap() == want,
        "the second mount reads again"
    );
    fs::write(m2.join("new"), b"after eviction").unwrap();
    assert_eq!(fs::read(c.path("new")).unwrap(), b"after eviction");
    drop(mine);
    assert!(lockable(&b), "the new session takes locks");
    let _ = Command::new("umount").arg("-l").arg(&m2).output();
}

#[test]
fn a_killed_writers_synced_writes_keep_their_size_and_its_lock_goes() {
    let (c, m2, a, b) = two_mounts(b"");
    let theirs: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(c.path("theirs"), &theirs).unwrap();

    // A process on the second mount locks the file and writes blocks out to the second
    // 4 MiB object, then fsyncs. The first write takes the write lease; the others' data and
    // size stay with that mount's client until the fsync, and the size stays there after it
    // (fsync keeps the lease). One more write returns before the client is killed.
    let mut holder = Holder::start(&b);
    let offsets = [0u64, 4096, 1 << 20, (4 << 20) - 2048, (5 << 20) + 12345];
    let mut before_last = std::time::SystemTime::now();
    for off in offsets {
        before_last = std::time::SystemTime::now();
        holder.write_at(off);
        assert_eq!(holder.said(), "ok", "write at {off}");
    }
    holder.sync();
    assert_eq!(holder.said(), "ok", "fsync");
    let unsynced = 6 << 20;
    holder.write_at(unsynced);
    assert_eq!(holder.said(), "ok", "the write after fsync");
    let end = offsets[offsets.len() - 1] + 4096;
    c.kill9("client.1");
    let killed = Instant::now();

    // Its lock goes after the session timeout (3 s).
    wait_released(
        killed,
        Duration::from_secs(3),
        "the killed writer's lock",
        || lockable(&a),
    );
    // Every synced write counts: the size, the bytes and the mtime. The last write may have
    // died with the client (as with a page cache), but not in part.
    let meta = fs::metadata(&a).unwrap();
    assert!(
        meta.len() == end || meta.len() == unsynced + 4096,
        "the size {} covers the killed writer's synced writes ({end})",
        meta.len()
    );
    let got = fs::read(&a).unwrap();
    for off in offsets {
        let at = off as usize;
        assert!(
            got[at..at + 4096].iter().all(|&x| x == b'Z'),
            "the block written at {off}"
        );
    }
    assert!(
        got[8192..1 << 20].iter().all(|&x| x == 0),
        "a hole reads as zeros"
    );
    assert_eq!(got.len() as u64, meta.len());
    if meta.len() > end {
        assert!(
            got[end as usize..unsynced as usize].iter().all(|&x| x == 0)
                && got[unsynced as usize..].iter().all(|&x| x == b'Z'),
            "the unsynced write landed in part"
        );
    }
    let mtime = meta.modified().unwrap();
    assert!(
        mtime + Duration::from_millis(50) >= before_last,
        "the mtime {mtime:?} is behind the last write at {before_last:?}"
    );
    // Another client's file is untouched, and this mount goes on writing the file.
    assert_eq!(fs::read(c.path("theirs")).unwrap(), theirs);
    let size = meta.len();
    let mine = open_rw(&a);
    lock_all(&mine).unwrap();
    mine.write_all_at(b"after", size).unwrap();
    drop(mine);
    assert_eq!(fs::metadata(&a).unwrap().len(), size + 5);
    drop(holder);
    let _ = Command::new("umount").arg("-l").arg(&m2).output();
}

/// Waits until `shoal status` lists one evicted session and every up OSD works at a map that
/// blocklists it (the eviction is complete: the OSDs refuse it); returns the session.
fn wait_fenced(c: &TestCluster) -> u64 {
    let start = Instant::now();
    loop {
        let st = c.status();
        let evicted = evicted(&st);
        let epoch = st["osd_epoch"].as_u64().unwrap();
        let behind = st["osds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["up"].as_bool() == Some(true))
            .any(|o| o["map_epoch"].as_u64().unwrap_or(0) < epoch);
        if evicted.len() == 1 && !behind {
            return evicted[0];
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the frozen client was never fenced: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_frozen_writer_without_a_lock_is_fenced_and_its_returned_writes_count() {
    let (c, _m2, a, b) = two_mounts(&[b'a'; 8192]);

    // A process on the second mount writes past the end (its client keeps the new size under
    // its write lease), then writes further on, which that client keeps under the lease
    // (data and size). Then the client freezes and the process starts a write at offset 0,
    // which waits in the kernel.
    let mut writer = Holder::start_as("write-lines", &b);
    writer.write_at(8192);
    assert_eq!(writer.said(), "ok");
    writer.write_at(16384);
    assert_eq!(writer.said(), "ok");
    let client = c.pid("client.1");
    let frozen = Frozen::stop(client);
    writer.write_at(0);

    // This mount writes meanwhile; once the frozen client's lease ran out, the size its
    // returned writes reached on the OSDs is found there: the first one's, and the kept
    // one's only if the frozen client sent it before it froze.
    let mine = open_rw(&a);
    mine.write_all_at(&[b'F'; 4096], 0).unwrap();
    let size = fs::metadata(&a).unwrap().len();
    assert!(
        size == 12288 || size == 20480,
        "the frozen writer's size: {size}"
    );
    mine.write_all_at(&[b'F'; 4096], 16384).unwrap();
    mine.sync_all().unwrap();
    wait_fenced(&c);

    // It wakes up: the write it had in hand fails with EIO and never lands, nor does the
    // data it kept, and so does the next write on that descriptor and its fsync; its mount
    // reads what the others wrote.
    drop(frozen);
    assert_eq!(
        writer.said(),
        "EIO",
        "a write of an evicted client must fail"
    );
    std::thread::sleep(Duration::from_millis(500));
    let want: Vec<u8> = [
        vec![b'F'; 4096],
        vec![b'a'; 4096],
        vec![b'Z'; 4096],
        vec![0; 4096],
        vec![b'F'; 4096],
    ]
    .concat();
    let got = fs::read(&a).unwrap();
    let runs = |v: &[u8]| -> Vec<(u8, usize)> {
        v.chunk_by(|x, y| x == y).map(|r| (r[0], r.len())).collect()
    };
    assert_eq!(runs(&got), runs(&want), "a late write landed");
    writer.write_at(0);
    assert_eq!(writer.said(), "EIO", "an evicted descriptor stays failed");
    writer.sync();
    assert_eq!(writer.said(), "EIO", "its fsync reports the loss");
    assert_eq!(
        runs(&fs::read(&b).unwrap()),
        runs(&want),
        "the resumed mount reads the others' data"
    );
}

#[test]
fn data_kept_past_a_frozen_writers_lease_is_dropped_not_landed_over_newer_writes() {
    // Leases of 6 s (kept data goes out on its own after 1.5 s) and sessions of 60 s: the
    // frozen client outlives its lease but is not evicted.
    let c = TestCluster::start_args(&["--osds", "3", "--lease-ms", "6000"]);
    let m2 = c.mount_again("mnt2");
    let (a, b) = (c.path("f"), m2.join("f"));
    // Written through the second mount: the first mount has held no lease on it, so there
    // is nothing to revoke and the second mount gets the write lease at once (and keeps it
    // past the close, which leaves the data to the background).
    fs::write(&b, [b'a'; 8192]).unwrap();

    // A process on the second mount writes past the end and fsyncs (all of it lands, the
    // lease stays), then over the first block, which its client keeps; then the client
    // freezes.
    let mut writer = Holder::start_as("write-lines", &b);
    writer.write_at(8192);
    assert_eq!(writer.said(), "ok");
    writer.sync();
    assert_eq!(writer.said(), "ok");
    writer.write_at(0);
    assert_eq!(writer.said(), "ok");
    let client = c.pid("client.1");
    let frozen = Frozen::stop(client);

    // This mount writes the same block; the MDS waits out the frozen client's lease first.
    let mine = open_rw(&a);
    mine.write_all_at(&[b'F'; 4096], 0).unwrap();
    mine.sync_all().unwrap();

    // The client wakes up: what it kept under the lease it lost never lands, and the
    // writer's fsync reports the loss.
    drop(frozen);
    writer.sync();
    assert_eq!(writer.said(), "EIO", "an fsync after kept data was lost");
    std::thread::sleep(Duration::from_millis(500));
    let mut want: Vec<u8> = [vec![b'F'; 4096], vec![b'a'; 4096], vec![b'Z'; 4096]].concat();
    assert!(fs::read(&a).unwrap() == want, "kept data landed late");

    // The session lives on: the same descriptor writes, and both mounts read it.
    writer.write_at(4096);
    assert_eq!(writer.said(), "ok");
    writer.sync();
    assert_eq!(writer.said(), "ok", "the loss is reported once");
    want[4096..8192].fill(b'Z');
    assert!(fs::read(&a).unwrap() == want);
    assert!(fs::read(&b).unwrap() == want);
}
