//! The client library (`shoal_client::Session`): a program using Shoal without a mount, the
//! same client a mount runs, coherent with the mounts of the same cluster.

use std::fs;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use shoal_client::mount::resolve_source;
use shoal_client::Session;
use shoal_fstests::TestCluster;

/// The errno a library call failed with (None: it did not fail).
fn errno<T>(r: Result<T, shoal_client::ClientError>) -> Option<i32> {
    r.err().map(|e| e.errno())
}

/// A library session with the cluster of `c`.
async fn library(c: &TestCluster) -> Session {
    let mds = resolve_source(c.data.to_str().unwrap()).unwrap();
    Session::start(
        &mds,
        Duration::from_secs(10),
        None,
        "library test",
        Arc::new(OnceLock::new()),
    )
    .await
    .unwrap()
}

#[test]
fn a_program_using_the_library_shares_files_with_a_mount() {
    let c = TestCluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lib = library(&c).await;
        // Written through the library, read through the mount.
        lib.mkdir("d", 0o755).await.unwrap();
        let f = lib.create("d/f", 0o644).await.unwrap();
        f.write_at(0, Bytes::from_static(b"hello")).await.unwrap();
        f.close().await.unwrap();
        assert_eq!(fs::read(c.path("d/f")).unwrap(), b"hello");
        // Written through the mount (the library holds a lease on the file), read here.
        let attr = lib.stat("./d/../d/f").await.unwrap();
        assert_eq!(attr.size, 5);
        fs::write(c.path("d/f"), b"changed!").unwrap();
        let f = lib.open("d/f").await.unwrap();
        assert_eq!(&f.read_at(0, 100).await.unwrap()[..], b"changed!");
        assert_eq!(lib.stat("d/f").await.unwrap().size, 8);
        f.close().await.unwrap();
        fs::write(c.path("d/g"), b"").unwrap();
        let mut names = lib.list("d").await.unwrap();
        names.sort();
        assert_eq!(
            names,
            vec![Bytes::from_static(b"f"), Bytes::from_static(b"g")]
        );
        // Bad paths get the errno a system call would.
        assert_eq!(errno(lib.stat("d/missing").await), Some(libc::ENOENT));
        assert_eq!(errno(lib.stat("d/f/x").await), Some(libc::ENOTDIR));
        let long = format!("d/{}", "n".repeat(256));
        assert_eq!(
            errno(lib.create(&long, 0o644).await),
            Some(libc::ENAMETOOLONG)
        );
        assert_eq!(errno(lib.create("d/..", 0o644).await), Some(libc::EINVAL));
        assert_eq!(errno(lib.open("d").await), Some(libc::EISDIR));
        assert_eq!(errno(lib.remove("d", true).await), Some(libc::ENOTEMPTY));
        // Removed here, gone there.
        lib.remove("d/f", false).await.unwrap();
        lib.remove("d/g", false).await.unwrap();
        lib.remove("d", true).await.unwrap();
        assert!(!c.path("d").exists());
        lib.end().await;
    });
    // The ended session is gone from the cluster's list; the mount's stays.
    let status = c.status();
    let sessions = status["sessions"].as_array().unwrap();
    assert!(
        sessions
            .iter()
            .all(|s| s["mount_point"].as_str() != Some("library test")),
        "{status}"
    );
}

#[test]
fn the_library_reads_writes_a_mount_kept_under_its_lease_and_not_its_own_stale_copy() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let c = TestCluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    fs::write(c.path("f"), vec![b'a'; 65536]).unwrap();
    let w = shoal_fstests::open_rw(&c.path("f"));
    let ino = w.metadata().unwrap().ino();
    rt.block_on(async {
        let lib = library(&c).await;
        let f = lib.open("f").await.unwrap();
        // Read (and kept) under the library's read lease.
        assert_eq!(&f.read_at(4096, 4096).await.unwrap()[..], &[b'a'; 4096]);
        assert_eq!(&f.read_at(4096, 4096).await.unwrap()[..], &[b'a'; 4096]);
        // The mount writes until a write stays with it under its write lease; nothing asks
        // the library's session anything before it reads next.
        let start = std::time::Instant::now();
        for byte in b'b'.. {
            w.write_all_at(&[byte; 100], 4096).unwrap();
            // (Its own runtime, on a thread of its own.)
            let on_osds = std::thread::scope(|s| {
                s.spawn(|| crate::read_object(&c, ino, 4096, 100, 0).unwrap())
                    .join()
                    .unwrap()
            });
            if on_osds != [byte; 100] {
                let got = f.read_at(4096, 4096).await.unwrap();
                assert_eq!(&got[..100], &[byte; 100], "the kept write");
                assert_eq!(&got[100..], &[b'a'; 3996]);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "the mount's writes never got kept"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        f.close().await.unwrap();
        lib.end().await;
    });
}

#[test]
fn files_the_library_closes_behind_are_seen_whole_and_a_read_past_its_end_sees_growth() {
    use std::io::Write;
    let c = TestCluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lib = library(&c).await;
        // Closed as a mount closes: the data goes in the background under the write lease,
        // and a look through the mount revokes it, which waits for the data.
        for i in 0..40usize {
            let f = lib.create(&format!("f{i}"), 0o644).await.unwrap();
            let data = Bytes::from(vec![i as u8 + 1; 3000 + i]);
            f.write_at(0, data).await.unwrap();
            f.close_behind().await.unwrap();
        }
        for i in 0..40usize {
            assert_eq!(
                fs::read(c.path(&format!("f{i}"))).unwrap(),
                vec![i as u8 + 1; 3000 + i],
                "file {i}"
            );
        }
        // A read past the end this session knows; then the mount appends (revoking the
        // session's lease), and the same read sees the new end.
        let f = lib.open("f0").await.unwrap();
        assert_eq!(f.read_at(0, 8192).await.unwrap().len(), 3000);
        let mut a = fs::OpenOptions::new()
            .append(true)
            .open(c.path("f0"))
            .unwrap();
        a.write_all(b"tail").unwrap();
        drop(a);
        let got = f.read_at(0, 8192).await.unwrap();
        assert_eq!(got.len(), 3004);
        assert_eq!(&got[3000..], b"tail");
        assert_eq!(&f.read_at(3002, 100).await.unwrap()[..], b"il");
        // Written here again and closed behind: the mount's reader sees it at once.
        f.write_at(3004, Bytes::from_static(b"more")).await.unwrap();
        f.close_behind().await.unwrap();
        let whole = fs::read(c.path("f0")).unwrap();
        assert_eq!(whole.len(), 3008);
        assert_eq!(&whole[3000..], b"tailmore");
        // A file whose create went long ago, written again and closed behind: what its
        // close kept goes by `sync_closed` (which reports no failure) and the session's end.
        let g = lib.open("f1").await.unwrap();
        g.write_at(0, Bytes::from_static(b"again")).await.unwrap();
        g.close_behind().await.unwrap();
        lib.sync_closed().await.unwrap();
        let g = lib.create("last", 0o644).await.unwrap();
        g.write_at(0, Bytes::from_static(b"at the end"))
            .await
            .unwrap();
        g.close_behind().await.unwrap();
        lib.end().await;
    });
    assert_eq!(fs::read(c.path("last")).unwrap(), b"at the end");
    let f1 = fs::read(c.path("f1")).unwrap();
    assert_eq!(&f1[..5], b"again");
    assert_eq!(&f1[5..], &[2u8; 3000 - 5 + 1][..]);
}
