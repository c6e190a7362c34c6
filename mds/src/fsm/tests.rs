//! State-machine tests driven directly, without Raft or a network.

use super::*;
use crate::command::{Bootstrap, RequestId, TakeInodes};

struct Harness {
    _dir: tempfile::TempDir,
    fsm: Fsm,
    index: u64,
}

fn ts(sec: i64) -> Timespec {
    Timespec { sec, nsec: 0 }
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let fsm = Fsm::new(Db::open(dir.path()).unwrap());
        let mut h = Harness {
            _dir: dir,
            fsm,
            index: 0,
        };
        h.run(Op::Bootstrap(Bootstrap { uid: 0, gid: 0 })).unwrap();
        h
    }

    fn run(&mut self, op: Op) -> Result<Applied, MdsError> {
        self.run_as(op, None)
    }

    fn run_as(&mut self, op: Op, req: Option<RequestId>) -> Result<Applied, MdsError> {
        self.index += 1;
        let cmd = Command {
            now: Some(ts(self.index as i64)),
            op: Some(op),
            req,
        };
        self.fsm.apply(self.index, &cmd).unwrap()
    }

    fn mk(&mut self, parent: u64, name: &str, kind: FileKind) -> Result<Attr, MdsError> {
        match self.run(Op::MakeNode(pb::MakeNodeRequest {
            parent,
            name: name.as_bytes().to_vec().into(),
            kind: kind as i32,
            perm: 0o644,
            exclusive: true,
            target: if kind == FileKind::Symlink {
                b"t".to_vec().into()
            } else {
                Default::default()
            },
            ..Default::default()
        }))? {
            Applied::Attr(a) => Ok(a),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn rename(
        &mut self,
        p: u64,
        n: &str,
        np: u64,
        nn: &str,
        flags: u32,
    ) -> Result<Applied, MdsError> {
        self.run(Op::Rename(pb::RenameRequest {
            parent: p,
            name: n.as_bytes().to_vec().into(),
            new_parent: np,
            new_name: nn.as_bytes().to_vec().into(),
            flags,
        }))
    }

    fn unlink(&mut self, p: u64, n: &str, dir: bool) -> Result<Applied, MdsError> {
        self.run(Op::Unlink(pb::UnlinkRequest {
            parent: p,
            name: n.as_bytes().to_vec().into(),
            dir,
            ..Default::default()
        }))
    }

    fn names(&self, dir: u64) -> Vec<String> {
        let r = self.fsm.readdir(dir, 0, 4096).unwrap();
        r.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, MdsError>) -> i32 {
    match r {
        Err(MdsError::Fs { errno, .. }) => errno,
        other => panic!("expected an errno, got {other:?}"),
    }
}

#[test]
fn create_lookup_and_counts() {
    let mut h = Harness::new();
    let d = h.mk(ROOT_INO, "d", FileKind::Directory).unwrap();
    let f = h.mk(d.ino, "f", FileKind::Regular).unwrap();
    assert_eq!(h.fsm.lookup(d.ino, b"f").unwrap().ino, f.ino);
    assert_eq!(h.fsm.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(errno(h.mk(d.ino, "f", FileKind::Regular)), libc::EEXIST);
    assert_eq!(errno(h.mk(f.ino, "x", FileKind::Regular)), libc::ENOTDIR);
    assert_eq!(
        errno(h.mk(d.ino, &"n".repeat(256), FileKind::Regular)),
        libc::ENAMETOOLONG
    );
    assert_eq!(h.fsm.files().unwrap(), 3);
    assert_eq!(
        h.fsm.applied_index().unwrap(),
        h.index,
        "failed commands still advance applied"
    );
}

#[test]
fn rename_rules() {
    let mut h = Harness::new();
    let a = h.mk(ROOT_INO, "a", FileKind::Directory).unwrap();
    let b = h.mk(a.ino, "b", FileKind::Directory).unwrap();
    h.mk(b.ino, "inner", FileKind::Regular).unwrap();
    let e = h.mk(ROOT_INO, "e", FileKind::Directory).unwrap();
    let f = h.mk(ROOT_INO, "f", FileKind::Regular).unwrap();
    let g = h.mk(ROOT_INO, "g", FileKind::Regular).unwrap();

    assert_eq!(
        errno(h.rename(ROOT_INO, "a", b.ino, "x", 0)),
        libc::EINVAL,
        "into own subtree"
    );
    assert_eq!(
        errno(h.rename(ROOT_INO, "e", a.ino, "b", 0)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(h.rename(ROOT_INO, "f", ROOT_INO, "e", 0)),
        libc::EISDIR
    );
    assert_eq!(
        errno(h.rename(ROOT_INO, "e", ROOT_INO, "f", 0)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(h.rename(ROOT_INO, "f", ROOT_INO, "g", RENAME_NOREPLACE)),
        libc::EEXIST
    );

    // File over file: the replaced one is orphaned for purge.
    match h.rename(ROOT_INO, "f", ROOT_INO, "g", 0).unwrap() {
        Applied::Removed(Some(o)) => assert_eq!(o.ino, g.ino),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.fsm.lookup(ROOT_INO, b"g").unwrap().ino, f.ino);
    // Dir over empty dir, across parents: link counts follow.
    let before = h.fsm.getattr(ROOT_INO).unwrap().nlink;
    h.rename(a.ino, "b", ROOT_INO, "e", 0).unwrap();
    assert_eq!(
        h.fsm.getattr(ROOT_INO).unwrap().nlink,
        before,
        "one dir in, one replaced"
    );
    assert_eq!(h.fsm.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(h.fsm.getattr(b.ino).unwrap().parent, ROOT_INO);
    assert_eq!(errno(h.fsm.getattr(e.ino)), libc::ENOENT);
    assert_eq!(h.names(ROOT_INO), vec!["a", "g", "e"]);

    // Exchange.
    h.rename(ROOT_INO, "a", ROOT_INO, "g", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(h.fsm.lookup(ROOT_INO, b"g").unwrap().ino, a.ino);
    assert_eq!(h.fsm.lookup(ROOT_INO, b"a").unwrap().ino, f.ino);
}

#[test]
fn unlink_and_links() {
    let mut h = Harness::new();
    let f = h.mk(ROOT_INO, "f", FileKind::Regular).unwrap();
    let d = h.mk(ROOT_INO, "d", FileKind::Directory).unwrap();
    h.mk(d.ino, "x", FileKind::Symlink).unwrap();
    let l = h
        .run(Op::Link(pb::LinkRequest {
            ino: f.ino,
            new_parent: d.ino,
            new_name: b"f2".to_vec().into(),
        }))
        .unwrap();
    assert!(matches!(l, Applied::Attr(ref a) if a.nlink == 2));
    assert_eq!(errno(h.unlink(ROOT_INO, "d", false)), libc::EISDIR);
    assert_eq!(errno(h.unlink(ROOT_INO, "f", true)), libc::ENOTDIR);
    assert_eq!(errno(h.unlink(ROOT_INO, "d", true)), libc::ENOTEMPTY);
    assert!(matches!(
        h.unlink(ROOT_INO, "f", false).unwrap(),
        Applied::Removed(None)
    ));
    assert_eq!(h.fsm.getattr(f.ino).unwrap().nlink, 1);
    match h.unlink(d.ino, "f2", false).unwrap() {
        Applied::Removed(Some(a)) => assert_eq!((a.ino, a.nlink), (f.ino, 0)),
        other => panic!("{other:?}"),
    }
    // Orphan readable until purged.
    assert_eq!(h.fsm.getattr(f.ino).unwrap().nlink, 0);
    h.run(Op::Purge(pb::PurgeRequest { ino: f.ino })).unwrap();
    assert_eq!(errno(h.fsm.getattr(f.ino)), libc::ENOENT);
    // Purged with a batch's changes, as a client queues them: only orphans go.
    let g = h.mk(d.ino, "g", FileKind::Regular).unwrap();
    let kept = h.mk(d.ino, "kept", FileKind::Regular).unwrap();
    assert!(matches!(
        h.unlink(d.ino, "g", false).unwrap(),
        Applied::Removed(Some(_))
    ));
    let purge = |ino| pb::BatchOp {
        op: Some(pb::batch_op::Op::Purge(pb::PurgeRequest { ino })),
    };
    let batch = pb::BatchRequest {
        ops: vec![purge(g.ino), purge(kept.ino)],
        ..Default::default()
    };
    let id = RequestId {
        session: 9,
        seq: 1,
        oldest: 1,
    };
    match h.run_as(Op::Batch(batch), Some(id)) {
        Ok(Applied::Batch(r)) => {
            assert_eq!(r.len(), 2);
            assert!(r.iter().all(|x| x.as_ref().is_ok_and(|(a, _)| a.ino == 0)));
        }
        other => panic!("batch: {other:?}"),
    }
    assert_eq!(errno(h.fsm.getattr(g.ino)), libc::ENOENT);
    assert_eq!(
        h.fsm.getattr(kept.ino).unwrap().nlink,
        1,
        "linked: not purged"
    );
    h.unlink(d.ino, "kept", false).unwrap();
    h.run(Op::Purge(pb::PurgeRequest { ino: kept.ino }))
        .unwrap();
    h.unlink(d.ino, "x", false).unwrap();
    h.unlink(ROOT_INO, "d", true).unwrap();
    assert_eq!(h.fsm.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(h.fsm.files().unwrap(), 1);
}

#[test]
fn an_empty_file_the_caller_has_not_open_goes_with_its_last_name() {
    let mut h = Harness::new();
    let gone = |h: &mut Harness, name: &str| {
        h.run(Op::Unlink(pb::UnlinkRequest {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec().into(),
            purge_empty: true,
            ..Default::default()
        }))
        .expect("unlink")
    };
    let e = h.mk(ROOT_INO, "empty", FileKind::Regular).expect("create");
    assert!(matches!(gone(&mut h, "empty"), Applied::Removed(None)));
    assert_eq!(errno(h.fsm.getattr(e.ino)), libc::ENOENT, "deleted at once");
    // One with data becomes an orphan for its objects to be deleted first.
    let f = h.mk(ROOT_INO, "full", FileKind::Regular).expect("create");
    h.run(Op::SetAttr(pb::SetAttrRequest {
        ino: f.ino,
        grow_size: Some(10),
        ..Default::default()
    }))
    .expect("grow");
    match gone(&mut h, "full") {
        Applied::Removed(Some(a)) => assert_eq!((a.ino, a.size), (f.ino, 10)),
        other => panic!("expected an orphan: {other:?}"),
    }
    assert_eq!(h.fsm.getattr(f.ino).expect("orphan").nlink, 0);
}

#[test]
fn readdir_cookies_are_stable() {
    let mut h = Harness::new();
    for i in 0..10 {
        h.mk(ROOT_INO, &format!("f{i}"), FileKind::Regular).unwrap();
    }
    let first = h.fsm.readdir(ROOT_INO, 0, 4).unwrap();
    assert_eq!(first.entries.len(), 4);
    assert!(!first.eof);
    // Remove an entry already listed and one not yet listed, add a new one, then resume.
    h.unlink(ROOT_INO, "f1", false).unwrap();
    h.unlink(ROOT_INO, "f7", false).unwrap();
    h.mk(ROOT_INO, "new", FileKind::Regular).unwrap();
    let rest = h
        .fsm
        .readdir(ROOT_INO, first.entries.last().unwrap().cookie, 100)
        .unwrap();
    let names: Vec<_> = rest
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(names, vec!["f4", "f5", "f6", "f8", "f9", "new"]);
    assert!(rest.eof);
}

#[test]
fn xattrs_and_setattr() {
    let mut h = Harness::new();
    let f = h.mk(ROOT_INO, "f", FileKind::Regular).unwrap();
    let set = |flags| {
        Op::SetXattr(pb::SetXattrRequest {
            ino: f.ino,
            name: b"user.a".to_vec().into(),
            value: b"1".to_vec().into(),
            flags,
            acl_caller: None,
        })
    };
    assert_eq!(errno(h.run(set(XATTR_REPLACE))), libc::ENODATA);
    h.run(set(XATTR_CREATE)).unwrap();
    assert_eq!(errno(h.run(set(XATTR_CREATE))), libc::EEXIST);
    assert_eq!(h.fsm.getxattr(f.ino, b"user.a").unwrap(), b"1");
    assert_eq!(h.fsm.listxattr(f.ino).unwrap(), vec![b"user.a".to_vec()]);
    h.run(Op::RemoveXattr(pb::RemoveXattrRequest {
        ino: f.ino,
        name: b"user.a".to_vec().into(),
        acl_caller: None,
    }))
    .unwrap();
    assert_eq!(errno(h.fsm.getxattr(f.ino, b"user.a")), libc::ENODATA);

    let r = h.run(Op::SetAttr(pb::SetAttrRequest {
        ino: f.ino,
        size: Some(100),
        perm: Some(0o100600),
        ..Default::default()
    }));
    match r.unwrap() {
        Applied::Attr(a) => {
            assert_eq!((a.size, a.perm), (100, 0o600));
            assert_eq!(a.mtime, a.ctime);
        }
        other => panic!("{other:?}"),
    }
    let r = h.run(Op::SetAttr(pb::SetAttrRequest {
        ino: f.ino,
        grow_size: Some(50),
        ..Default::default()
    }));
    assert!(matches!(r.unwrap(), Applied::Attr(a) if a.size == 100));
    let r = h.run(Op::SetAttr(pb::SetAttrRequest {
        ino: ROOT_INO,
        size: Some(0),
        ..Default::default()
    }));
    assert_eq!(errno(r), libc::EISDIR);
}

#[test]
fn osd_map_epochs_pool_checks_and_out_marking() {
    let mut h = Harness::new();
    let pool = |size, min_size, pg_count| {
        Op::SetPool(Pool {
            size,
            min_size,
            pg_count,
        })
    };
    for bad in [(0, 0, 256), (2, 3, 256), (3, 2, 0), (3, 2, (1 << 16) + 1)] {
        assert_eq!(
            errno(h.run(pool(bad.0, bad.1, bad.2))),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(h.run(pool(3, 2, 256)).unwrap(), Applied::Epoch(1));
    let boot = pb::OsdBootRequest {
        id: 4,
        addr: "127.0.0.1:9".into(),
        host: "h".into(),
        ..Default::default()
    };
    assert_eq!(h.run(Op::OsdBoot(boot.clone())).unwrap(), Applied::Epoch(2));
    let mark = |up, in_cluster| {
        Op::SetOsdState(SetOsdState {
            id: 4,
            up,
            in_cluster,
        })
    };
    assert_eq!(h.run(mark(false, true)).unwrap(), Applied::Epoch(3));
    // No change, no new epoch.
    assert_eq!(h.run(mark(false, true)).unwrap(), Applied::Epoch(3));
    let (_, osds) = h.fsm.osds().unwrap();
    assert!(!osds[0].up && osds[0].in_cluster && osds[0].down_since > 0);
    assert_eq!(h.run(mark(false, false)).unwrap(), Applied::Epoch(4));
    // A boot brings it back up and in, in a new epoch.
    assert_eq!(h.run(Op::OsdBoot(boot)).unwrap(), Applied::Epoch(5));
    let (epoch, osds) = h.fsm.osds().unwrap();
    assert_eq!(epoch, 5);
    assert!(osds[0].up && osds[0].in_cluster && osds[0].up_from == 5);
    assert_eq!(
        errno(h.run(Op::SetOsdState(SetOsdState {
            id: 9,
            up: true,
            in_cluster: true
        }))),
        libc::ENOENT
    );
}

#[test]
fn retried_requests_get_their_first_reply() {
    let mut h = Harness::new();
    let mk = |name: &str| {
        Op::MakeNode(pb::MakeNodeRequest {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec().into(),
            kind: FileKind::Regular as i32,
            perm: 0o644,
            exclusive: true,
            ..Default::default()
        })
    };
    let id = |seq, oldest| RequestId {
        session: 7,
        seq,
        oldest,
    };
    let first = h.run_as(mk("f"), Some(id(1, 1))).unwrap();
    // The same request again (a retry after a lost reply): same inode, no EEXIST, one file.
    let again = h.run_as(mk("f"), Some(id(1, 1))).unwrap();
    assert_eq!(first, again);
    // A new request for the same name is a new create: EEXIST.
    assert_eq!(errno(h.run_as(mk("f"), Some(id(2, 1)))), libc::EEXIST);
    // Its retry gets the same error back, not a different outcome.
    assert_eq!(errno(h.run_as(mk("f"), Some(id(2, 1)))), libc::EEXIST);
    // Another session's request number 1 is its own.
    let other = RequestId {
        session: 8,
        seq: 1,
        oldest: 1,
    };
    assert!(matches!(
        h.run_as(mk("g"), Some(other)),
        Ok(Applied::Attr(_))
    ));
    // Once the client says it waits for nothing below 3, replies 1 and 2 are dropped.
    h.run_as(mk("h"), Some(id(3, 3))).unwrap();
    let kept = h.fsm.session_window(7).unwrap().replies;
    assert_eq!(kept.len(), 1, "only request 3's reply is kept");
    assert_eq!(kept[0].seq, 3);
    assert_eq!(h.fsm.files().unwrap(), 4, "root, f, g, h");
}

#[test]
fn eviction_blocklists_in_a_new_epoch_and_refuses_the_session() {
    let mut h = Harness::new();
    let (before, _) = h.fsm.osds().expect("osd map");
    let lock = |session| {
        Op::SetLock(pb::LockRequest {
            ino: ROOT_INO,
            session,
            owner: 1,
            start: 0,
            end: u64::MAX,
            kind: pb::LockKind::Write as i32,
            pid: 1,
        })
    };
    h.run(lock(7)).expect("session 7 takes a lock");
    let evict = |session| {
        Op::Evict(pb::EndSessionRequest {
            session,
            evict: true,
        })
    };
    let Ok(Applied::Epoch(epoch)) = h.run(evict(7)) else {
        panic!("an eviction answers its epoch");
    };
    assert_eq!(epoch, before + 1);
    assert!(h.fsm.blocklisted(7).expect("blocklist lookup"));
    assert_eq!(h.fsm.blocklist().expect("blocklist scan"), vec![7]);
    // Evicting again changes nothing and answers the same epoch.
    assert_eq!(
        h.run(evict(7)).expect("a repeated eviction"),
        Applied::Epoch(epoch)
    );
    assert_eq!(h.fsm.osds().expect("osd map").0, epoch);
    // The evicted session's lock stays until the session is ended (after the OSDs know).
    assert_eq!(
        h.fsm
            .locks_per_session()
            .expect("locks per session")
            .get(&7),
        Some(&1)
    );
    // It can take no lock and make no change any more; other sessions can.
    assert!(matches!(h.run(lock(7)), Err(MdsError::Evicted(7))));
    let id = |session| RequestId {
        session,
        seq: 1,
        oldest: 1,
    };
    let mk = Op::MakeNode(pb::MakeNodeRequest {
        parent: ROOT_INO,
        name: b"f".to_vec().into(),
        kind: FileKind::Regular as i32,
        perm: 0o644,
        ..Default::default()
    });
    assert!(matches!(
        h.run_as(mk.clone(), Some(id(7))),
        Err(MdsError::Evicted(7))
    ));
    assert!(matches!(h.run_as(mk, Some(id(8))), Ok(Applied::Attr(_))));
    h.run(Op::EndSession(pb::EndSessionRequest {
        session: 7,
        evict: false,
    }))
    .expect("ending the evicted session");
    assert_eq!(
        h.fsm
            .locks_per_session()
            .expect("locks per session")
            .get(&7),
        None
    );
}

#[test]
fn a_writer_mark_follows_the_write_lease_and_recovery_only_grows() {
    let mut h = Harness::new();
    let f = h.mk(ROOT_INO, "f", FileKind::Regular).expect("create f");
    let mut seq = 0;
    let mut as_session = |h: &mut Harness, session: u64, r: pb::SetAttrRequest| {
        seq += 1;
        let id = RequestId {
            session,
            seq,
            oldest: seq,
        };
        match h.run_as(Op::SetAttr(r), Some(id)) {
            Ok(Applied::Attr(a)) => a,
            other => panic!("setattr: {other:?}"),
        }
    };
    let grow = |size, mark| pb::SetAttrRequest {
        ino: f.ino,
        grow_size: Some(size),
        want_write_lease: mark,
        mark_writer: mark,
        ..Default::default()
    };
    // Session 5 is granted the lease: marked. Another session's size leaves the mark alone.
    let a = as_session(&mut h, 5, grow(10, true));
    assert_eq!((a.writer, a.writer_mark, a.size), (5, 1, 10));
    let a = as_session(&mut h, 6, grow(20, false));
    assert_eq!((a.writer, a.size), (5, 20), "another session's size");
    // The writer's own size without the lease clears it.
    let a = as_session(&mut h, 5, grow(30, false));
    assert_eq!((a.writer, a.size), (0, 30), "the lease went back");
    let a = as_session(&mut h, 5, grow(30, true));
    assert_eq!((a.writer, a.writer_mark), (5, 2));
    // The lease given back on its own (nothing unsent): the mark goes, no time moves.
    let release = pb::SetAttrRequest {
        ino: f.ino,
        release_write_lease: true,
        ..Default::default()
    };
    let b = as_session(&mut h, 5, release);
    assert_eq!(
        (b.writer, b.size, b.mtime, b.ctime),
        (0, 30, a.mtime, a.ctime)
    );
    let a = as_session(&mut h, 5, grow(30, true));
    assert_eq!((a.writer, a.writer_mark), (5, 3));
    let b = as_session(&mut h, 6, release);
    assert_eq!(b.writer, 5, "only the writer gives its lease back");

    let recover = |mark, end, mtime: Option<Timespec>| {
        Op::RecoverWrites(RecoverWrites {
            ino: f.ino,
            writer_mark: mark,
            end,
            mtime,
        })
    };
    // A probe for an older mark changes nothing.
    let stale = h
        .run(recover(2, 500, Some(ts(1_000))))
        .expect("a stale recovery applies as a no-op");
    assert!(matches!(stale, Applied::Attr(a) if a.writer == 5 && a.size == 30));
    // The current one: the size grows to what the OSDs hold, the mtime moves up, no mark.
    let before = h.fsm.getattr(f.ino).expect("f exists");
    match h
        .run(recover(3, 500, Some(ts(1_000))))
        .expect("the recovery applies")
    {
        Applied::Attr(a) => {
            assert_eq!((a.writer, a.size), (0, 500));
            assert_eq!(a.mtime, Some(ts(1_000)));
            let sec = |t: Option<Timespec>| t.expect("every inode has a ctime").sec;
            assert!(sec(a.ctime) > sec(before.ctime));
        }
        other => panic!("{other:?}"),
    }
    // Marked again: a probe finding less than recorded shrinks nothing and keeps the mtime.
    let a = as_session(&mut h, 5, grow(40, true));
    match h
        .run(recover(a.writer_mark, 7, Some(ts(3))))
        .expect("a recovery finding less applies")
    {
        Applied::Attr(b) => {
            assert_eq!((b.writer, b.size, b.mtime), (0, 500, a.mtime));
            assert_eq!(b.ctime, a.ctime, "nothing changed");
        }
        other => panic!("{other:?}"),
    }
    // Marked, then its mtime set back in time (as tar does after writing): data written
    // before that change does not move mtime forward again; data written after does.
    let a = as_session(&mut h, 5, grow(500, true));
    let old = Timespec { sec: 2, nsec: 9 };
    let utimes = pb::SetAttrRequest {
        ino: f.ino,
        mtime: Some(pb::SetTime {
            now: false,
            time: Some(old),
        }),
        ..Default::default()
    };
    let set = as_session(&mut h, 5, utimes);
    let changed = set.ctime.expect("every inode has a ctime");
    let before_change = Some(Timespec {
        sec: changed.sec - 1,
        nsec: 0,
    });
    match h
        .run(recover(a.writer_mark, 500, before_change))
        .expect("applies")
    {
        Applied::Attr(b) => assert_eq!((b.writer, b.mtime), (0, Some(old)), "written before"),
        other => panic!("{other:?}"),
    }
    let a = as_session(&mut h, 5, grow(500, true));
    let later = Some(Timespec {
        sec: changed.sec + 100,
        nsec: 0,
    });
    match h.run(recover(a.writer_mark, 500, later)).expect("applies") {
        Applied::Attr(b) => assert_eq!(b.mtime, later, "written after"),
        other => panic!("{other:?}"),
    }
}

impl Harness {
    fn setx(&mut self, ino: u64, name: &[u8], value: &str) -> Result<Applied, MdsError> {
        self.run(Op::SetXattr(pb::SetXattrRequest {
            ino,
            name: name.to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            acl_caller: Some(pb::AclCaller {
                groups: Vec::new(),
                privileged: true,
            }),
            ..Default::default()
        }))
    }

    fn usage(&self, dir: u64) -> (u64, u64) {
        let get = |n| {
            String::from_utf8(self.fsm.getxattr(dir, n).unwrap())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        (get(quota::RBYTES), get(quota::RFILES))
    }

    fn size(&mut self, ino: u64, size: u64) -> Result<Applied, MdsError> {
        self.run(Op::SetAttr(pb::SetAttrRequest {
            ino,
            size: Some(size),
            ..Default::default()
        }))
    }
}

#[test]
fn in_tree_finds_inodes_below_a_directory_through_walks_and_realms() {
    let mut h = Harness::new();
    let top = h.mk(ROOT_INO, "top", FileKind::Directory).unwrap().ino;
    let a = h.mk(top, "a", FileKind::Regular).unwrap().ino;
    let vol = h.mk(top, "vol", FileKind::Directory).unwrap().ino;
    let deep = h.mk(vol, "deep", FileKind::Directory).unwrap().ino;
    let b = h.mk(deep, "b", FileKind::Regular).unwrap().ino;
    let out = h.mk(ROOT_INO, "out", FileKind::Regular).unwrap().ino;
    let all = [a, vol, deep, b, out, top, 999_999];
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    // Walked: every inode below, and the directory itself.
    assert_eq!(
        sorted(h.fsm.in_tree(top, &all).unwrap()),
        sorted(vec![a, vol, deep, b, top])
    );
    // A realm answers by its members' chains, and a walk does not enter a nested realm
    // but still finds what is in it.
    h.setx(vol, quota::MAX_FILES, "100").unwrap();
    assert_eq!(
        sorted(h.fsm.in_tree(vol, &all).unwrap()),
        sorted(vec![deep, b, vol])
    );
    assert_eq!(
        sorted(h.fsm.in_tree(top, &all).unwrap()),
        sorted(vec![a, vol, deep, b, top])
    );
    assert!(h.fsm.in_tree(deep, &[a, out]).unwrap().is_empty());
    assert!(h.fsm.in_tree(top, &[]).unwrap().is_empty());
}

#[test]
fn quotas_count_the_tree_and_refuse_growth_past_a_limit() {
    let mut h = Harness::new();
    let vol = h.mk(ROOT_INO, "vol", FileKind::Directory).unwrap().ino;
    // Usage already there is counted when the first limit is set.
    let old = h.mk(vol, "old", FileKind::Regular).unwrap().ino;
    h.size(old, 1000).unwrap();
    let sub = h.mk(vol, "sub", FileKind::Directory).unwrap().ino;
    assert_eq!(
        h.usage(vol),
        (1000, 2),
        "a directory that is not a realm is walked"
    );
    h.setx(vol, quota::MAX_BYTES, "5000").unwrap();
    h.setx(vol, quota::MAX_FILES, "4").unwrap();
    assert_eq!(h.usage(vol), (1000, 2));
    assert_eq!(h.fsm.getattr(old).unwrap().realm, vol, "the tree is tagged");
    assert_eq!(h.fsm.getxattr(vol, quota::MAX_BYTES).unwrap(), b"5000");

    // Growth and creates are charged, up to the limits.
    let f = h.mk(sub, "f", FileKind::Regular).unwrap();
    assert_eq!(f.realm, vol);
    h.size(f.ino, 4000).unwrap();
    assert_eq!(h.usage(vol), (5000, 3));
    assert_eq!(errno(h.size(f.ino, 4001)), libc::EDQUOT);
    let grow = Op::SetAttr(pb::SetAttrRequest {
        ino: f.ino,
        grow_size: Some(4001),
        ..Default::default()
    });
    assert_eq!(errno(h.run(grow)), libc::EDQUOT);
    assert_eq!(h.fsm.getattr(f.ino).unwrap().size, 4000, "nothing applied");
    assert_eq!(
        h.fsm.quota_room(&h.fsm.getattr(f.ino).unwrap()).unwrap(),
        Some(0)
    );
    h.mk(vol, "g", FileKind::Regular).unwrap();
    assert_eq!(errno(h.mk(vol, "h", FileKind::Symlink)), libc::EDQUOT);
    // Shrinking and removing give room back; the root's tree is not limited.
    h.size(f.ino, 10).unwrap();
    h.unlink(vol, "g", false).unwrap();
    assert_eq!(h.usage(vol), (1010, 3));
    assert_eq!(
        h.fsm.quota_room(&h.fsm.getattr(f.ino).unwrap()).unwrap(),
        Some(3990)
    );
    let outside = h.mk(ROOT_INO, "big", FileKind::Regular).unwrap().ino;
    h.size(outside, 1 << 40).unwrap();
    assert_eq!(h.fsm.getattr(outside).unwrap().realm, 0);

    // A nested quota counts in both; its own limit applies first.
    h.setx(sub, quota::MAX_BYTES, "100").unwrap();
    assert_eq!(h.usage(sub), (10, 1));
    assert_eq!(errno(h.size(f.ino, 101)), libc::EDQUOT);
    h.size(f.ino, 100).unwrap();
    assert_eq!(h.usage(vol), (1100, 3));
    assert_eq!(h.fsm.quota_over(f.ino).unwrap().unwrap().max_bytes, 100);

    // Files move their usage across a quota boundary; trees and links do not move.
    h.rename(sub, "f", vol, "f", 0).unwrap();
    assert_eq!(h.usage(sub), (0, 0));
    assert_eq!(h.usage(vol), (1100, 3));
    assert_eq!(h.fsm.getattr(f.ino).unwrap().realm, vol);
    h.rename(vol, "f", ROOT_INO, "f", 0).unwrap();
    assert_eq!(h.usage(vol), (1000, 2), "moved out of the realm");
    h.mk(vol, "d", FileKind::Directory).unwrap();
    assert_eq!(errno(h.rename(vol, "d", ROOT_INO, "d", 0)), libc::EXDEV);
    let link = Op::Link(pb::LinkRequest {
        ino: old,
        new_parent: ROOT_INO,
        new_name: b"l".to_vec().into(),
    });
    assert_eq!(errno(h.run(link)), libc::EXDEV);
    h.unlink(vol, "d", true).unwrap();

    // Only root changes quotas; a tree with a file linked twice cannot get one.
    let unprivileged = Op::SetXattr(pb::SetXattrRequest {
        ino: vol,
        name: quota::MAX_BYTES.to_vec().into(),
        value: b"1".to_vec().into(),
        ..Default::default()
    });
    assert_eq!(errno(h.run(unprivileged)), libc::EPERM);
    let linked = h.mk(ROOT_INO, "linked", FileKind::Directory).unwrap().ino;
    let twice = h.mk(linked, "f", FileKind::Regular).unwrap().ino;
    h.run(Op::Link(pb::LinkRequest {
        ino: twice,
        new_parent: linked,
        new_name: b"g".to_vec().into(),
    }))
    .unwrap();
    assert_eq!(errno(h.setx(linked, quota::MAX_BYTES, "10")), libc::EMLINK);

    // Bad values and targets are refused; removing a limit lifts it.
    assert_eq!(errno(h.setx(vol, quota::MAX_BYTES, "lots")), libc::EINVAL);
    assert_eq!(errno(h.setx(old, quota::MAX_BYTES, "1")), libc::EINVAL);
    assert_eq!(errno(h.setx(vol, quota::RBYTES, "1")), libc::EPERM);
    h.run(Op::RemoveXattr(pb::RemoveXattrRequest {
        ino: vol,
        name: quota::MAX_FILES.to_vec().into(),
        acl_caller: Some(pb::AclCaller {
            groups: Vec::new(),
            privileged: true,
        }),
    }))
    .unwrap();
    assert_eq!(errno(h.fsm.getxattr(vol, quota::MAX_FILES)), libc::ENODATA);
    for i in 0..5 {
        h.mk(vol, &format!("n{i}"), FileKind::Regular).unwrap();
    }
}

#[test]
fn a_new_file_asked_with_the_write_lease_is_marked_with_its_creator() {
    let mut h = Harness::new();
    let create = |name: &str, kind: FileKind, exclusive: bool| pb::MakeNodeRequest {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec().into(),
        kind: kind as i32,
        perm: 0o644,
        exclusive,
        want_write_lease: true,
        mark_writer: true,
        ..Default::default()
    };
    let id = |seq| RequestId {
        session: 9,
        seq,
        oldest: seq,
    };
    let made = |r: Result<Applied, MdsError>| match r {
        Ok(Applied::Attr(a)) => a,
        other => panic!("make_node: {other:?}"),
    };
    let f = made(h.run_as(
        Op::MakeNode(create("f", FileKind::Regular, true)),
        Some(id(1)),
    ));
    assert_eq!((f.writer, f.writer_mark), (9, 1));
    let give_back = |ino, writer_mark| {
        Op::ReleaseWrites(pb::ReleaseWritesRequest {
            files: vec![pb::WriterMark { ino, writer_mark }],
        })
    };
    // A give-back of another mark (sent late, a lease granted since), or by another
    // session, leaves the mark; the writer's own with its mark clears it.
    h.run_as(give_back(f.ino, 2), Some(id(2))).expect("applies");
    h.run(give_back(f.ino, 1)).expect("applies");
    assert_eq!(h.fsm.getattr(f.ino).expect("f").writer, 9, "kept");
    h.run_as(give_back(f.ino, 1), Some(id(3))).expect("applies");
    assert_eq!(h.fsm.getattr(f.ino).expect("f").writer, 0, "given back");
    // A file gone meanwhile is no failure.
    h.run_as(give_back(999_999, 1), Some(id(4)))
        .expect("a missing file is skipped");
    // An existing file opened by a create comes as it is, unmarked.
    let again = made(h.run_as(
        Op::MakeNode(create("f", FileKind::Regular, false)),
        Some(id(5)),
    ));
    assert_eq!((again.ino, again.writer, again.writer_mark), (f.ino, 0, 1));
    // One still marked by the same session is marked anew (an old give-back then misses).
    let h2 = made(h.run_as(
        Op::MakeNode(create("h", FileKind::Regular, true)),
        Some(id(10)),
    ));
    let again = made(h.run_as(
        Op::MakeNode(create("h", FileKind::Regular, false)),
        Some(id(11)),
    ));
    assert_eq!((again.ino, again.writer, again.writer_mark), (h2.ino, 9, 2));
    // Only regular files, and only for a session.
    let d = made(h.run_as(
        Op::MakeNode(create("d", FileKind::Directory, true)),
        Some(id(6)),
    ));
    assert_eq!(d.writer, 0);
    let g = made(h.run(Op::MakeNode(create("g", FileKind::Regular, true))));
    assert_eq!(g.writer, 0);
}

#[test]
fn a_batch_makes_files_with_taken_numbers_each_change_on_its_own() {
    let mut h = Harness::new();
    let d = h.mk(ROOT_INO, "d", FileKind::Directory).unwrap();
    let id = |session, seq| RequestId {
        session,
        seq,
        oldest: seq,
    };
    let first = match h.run_as(Op::TakeInodes(TakeInodes { count: 4 }), Some(id(9, 1))) {
        Ok(Applied::Inodes(f)) => f,
        other => panic!("take_inodes: {other:?}"),
    };
    // Numbers handed out are never handed out again, whoever asks.
    let other = h.mk(ROOT_INO, "other", FileKind::Regular).unwrap();
    assert!(other.ino >= first + 4, "{} reused", other.ino);
    let create = |name: &str, ino: u64| pb::BatchOp {
        op: Some(pb::batch_op::Op::MakeNode(pb::MakeNodeRequest {
            parent: d.ino,
            name: name.as_bytes().to_vec().into(),
            kind: FileKind::Regular as i32,
            perm: 0o666,
            umask: 0o022,
            exclusive: true,
            mark_writer: true,
            ino,
            time: Some(ts(3)),
            ..Default::default()
        })),
    };
    let size = |ino: u64, size: u64| pb::BatchOp {
        op: Some(pb::batch_op::Op::SetAttr(pb::SetAttrRequest {
            ino,
            grow_size: Some(size),
            ..Default::default()
        })),
    };
    let ops = vec![
        create("a", first),
        size(first, 4096),
        // Taken by no one / twice / another session's: refused, the rest applies.
        create("b", first + 100),
        create("c", first),
        create("a", first + 1),
        create("e", first + 2),
    ];
    let results = match h.run_as(
        Op::Batch(pb::BatchRequest {
            ops,
            ..Default::default()
        }),
        Some(id(9, 2)),
    ) {
        Ok(Applied::Batch(r)) => r,
        other => panic!("batch: {other:?}"),
    };
    assert_eq!(results.len(), 6);
    let a = results[0].clone().expect("a made").0;
    assert_eq!(
        h.fsm.getattr(d.ino).unwrap().mtime,
        Some(ts(3)),
        "changed when a was made"
    );
    assert_eq!(
        (a.ino, a.perm, a.writer, a.writer_mark),
        (first, 0o644, 9, 1)
    );
    assert_eq!(a.mtime, Some(ts(3)), "made at the client's time");
    let sized = results[1].clone().expect("a sized").0;
    assert_eq!(
        (sized.size, sized.writer),
        (4096, 0),
        "size sent, lease back"
    );
    assert_eq!(results[2].clone().unwrap_err().0, libc::EINVAL);
    assert_eq!(results[3].clone().unwrap_err().0, libc::EEXIST);
    assert_eq!(results[4].clone().unwrap_err().0, libc::EEXIST);
    assert_eq!(results[5].clone().expect("e made").0.ino, first + 2);
    assert_eq!(h.names(d.ino), vec!["a", "e"]);
    assert_eq!(h.fsm.lookup(d.ino, b"a").unwrap().size, 4096);
    // The refused create of "a" with another number left no inode behind.
    assert!(h.fsm.getattr(first + 1).is_err());
    assert_eq!(h.fsm.getattr(d.ino).unwrap().nlink, 2);
    // Another session cannot use this one's numbers; a retry gets the first reply.
    let again = h.run_as(
        Op::Batch(pb::BatchRequest {
            ops: vec![create("x", first + 3)],
            ..Default::default()
        }),
        Some(id(8, 1)),
    );
    match again {
        Ok(Applied::Batch(r)) => assert_eq!(r[0].clone().unwrap_err().0, libc::EINVAL),
        other => panic!("batch: {other:?}"),
    }
    let retried = h.run_as(
        Op::Batch(pb::BatchRequest {
            ops: vec![],
            ..Default::default()
        }),
        Some(id(9, 2)),
    );
    match retried {
        Ok(Applied::Batch(r)) => assert_eq!(r.len(), 6, "the stored reply"),
        other => panic!("batch: {other:?}"),
    }
    // A new range keeps the one before usable; the one before that goes.
    let take = |h: &mut Harness, seq| match h
        .run_as(Op::TakeInodes(TakeInodes { count: 2 }), Some(id(9, seq)))
    {
        Ok(Applied::Inodes(f)) => f,
        other => panic!("take_inodes: {other:?}"),
    };
    let second = take(&mut h, 20);
    let third = take(&mut h, 21);
    let made = |h: &mut Harness, seq, name: &str, ino| match h.run_as(
        Op::Batch(pb::BatchRequest {
            ops: vec![create(name, ino)],
            ..Default::default()
        }),
        Some(id(9, seq)),
    ) {
        Ok(Applied::Batch(r)) => r[0].clone().map(|a| a.0.ino).map_err(|e| e.0),
        other => panic!("batch: {other:?}"),
    };
    assert_eq!(made(&mut h, 22, "s", second), Ok(second));
    assert_eq!(made(&mut h, 23, "t", third), Ok(third));
    assert_eq!(made(&mut h, 24, "u", first + 3), Err(libc::EINVAL));
    // Only a session takes numbers, a bounded count of them.
    assert_eq!(
        errno(h.run(Op::TakeInodes(TakeInodes { count: 4 }))),
        libc::EINVAL
    );
    assert_eq!(
        errno(h.run_as(Op::TakeInodes(TakeInodes { count: 0 }), Some(id(9, 3)))),
        libc::EINVAL
    );
}

#[test]
fn a_batch_makes_directories_and_files_in_them_in_order() {
    let mut h = Harness::new();
    let d = h.mk(ROOT_INO, "d", FileKind::Directory).unwrap();
    let id = |seq| RequestId {
        session: 9,
        seq,
        oldest: seq,
    };
    let first = match h.run_as(Op::TakeInodes(TakeInodes { count: 8 }), Some(id(1))) {
        Ok(Applied::Inodes(f)) => f,
        other => panic!("take_inodes: {other:?}"),
    };
    let make = |parent: u64, name: &str, kind: FileKind, ino: u64| pb::BatchOp {
        op: Some(pb::batch_op::Op::MakeNode(pb::MakeNodeRequest {
            parent,
            name: name.as_bytes().to_vec().into(),
            kind: kind as i32,
            perm: 0o777,
            umask: 0o022,
            exclusive: true,
            ino,
            target: if kind == FileKind::Symlink {
                b"t".to_vec().into()
            } else {
                Default::default()
            },
            time: Some(ts(3)),
            ..Default::default()
        })),
    };
    let ops = vec![
        make(d.ino, "sub", FileKind::Directory, first),
        make(first, "f", FileKind::Regular, first + 1),
        make(d.ino, "link", FileKind::Symlink, first + 2),
    ];
    let results = match h.run_as(
        Op::Batch(pb::BatchRequest {
            ops,
            ..Default::default()
        }),
        Some(id(2)),
    ) {
        Ok(Applied::Batch(r)) => r,
        other => panic!("batch: {other:?}"),
    };
    let sub = results[0].clone().expect("sub made").0;
    assert_eq!(
        (sub.ino, sub.kind, sub.perm, sub.nlink, sub.parent),
        (first, FileKind::Directory as i32, 0o755, 2, d.ino)
    );
    assert_eq!(results[1].clone().expect("f made").0.ino, first + 1);
    assert_eq!(h.names(first), vec!["f"]);
    assert_eq!(
        results[2].clone().unwrap_err().0,
        libc::EINVAL,
        "only files and directories"
    );
    assert_eq!(h.names(d.ino), vec!["sub"]);
    assert_eq!(h.fsm.getattr(d.ino).unwrap().nlink, 3);
    // Removals, each on its own: empty directories, and files (an empty one purged at once
    // if asked, another left as an orphan whose data the client deletes).
    let rm = |parent: u64, name: &str, dir: bool| pb::BatchOp {
        op: Some(pb::batch_op::Op::Unlink(pb::UnlinkRequest {
            parent,
            name: name.as_bytes().to_vec().into(),
            dir,
            purge_empty: !dir && name == "g",
        })),
    };
    let ops = vec![
        make(first, "empty", FileKind::Directory, first + 3),
        make(first, "g", FileKind::Regular, first + 6),
        rm(d.ino, "sub", true),
        rm(first, "f", true),
        rm(first, "empty", true),
        rm(first, "f", false),
        rm(first, "g", false),
        rm(first, "g", false),
    ];
    let results = match h.run_as(
        Op::Batch(pb::BatchRequest {
            ops,
            ..Default::default()
        }),
        Some(id(3)),
    ) {
        Ok(Applied::Batch(r)) => r,
        other => panic!("batch: {other:?}"),
    };
    assert_eq!(results[2].clone().unwrap_err().0, libc::ENOTEMPTY);
    assert_eq!(results[3].clone().unwrap_err().0, libc::ENOTDIR);
    let (parent, orphan) = results[4].clone().expect("empty removed");
    assert_eq!((parent.ino, parent.nlink, orphan), (first, 2, None));
    assert!(h.fsm.getattr(first + 3).is_err());
    let (parent, orphan) = results[5].clone().expect("f removed");
    assert_eq!(parent.ino, first);
    assert_eq!(orphan.map(|o| o.ino), Some(first + 1), "f left to purge");
    assert_eq!(results[6].clone().expect("g removed").1, None, "g purged");
    assert_eq!(results[7].clone().unwrap_err().0, libc::ENOENT);
    assert!(h.names(first).is_empty());
    assert!(h.fsm.getattr(first + 1).is_ok(), "f stays until purged");
    assert!(h.fsm.getattr(first + 6).is_err());
    // A tree removed in one batch: each rmdir sees the removals before it.
    for (seq, ops) in [
        (
            4,
            vec![
                make(d.ino, "p", FileKind::Directory, first + 4),
                make(first + 4, "q", FileKind::Directory, first + 5),
            ],
        ),
        (5, vec![rm(first + 4, "q", true), rm(d.ino, "p", true)]),
    ] {
        match h.run_as(
            Op::Batch(pb::BatchRequest {
                ops,
                ..Default::default()
            }),
            Some(id(seq)),
        ) {
            Ok(Applied::Batch(r)) => assert!(r.iter().all(|r| r.is_ok()), "{r:?}"),
            other => panic!("batch: {other:?}"),
        }
    }
    assert_eq!(h.names(d.ino), vec!["sub"]);
}
