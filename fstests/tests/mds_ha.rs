//! A three-member MDS group through real mounts: the leader killed under load, members
//! restarted one by one; clients fail over by themselves and every acknowledged operation
//! takes effect exactly once.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_fstests::{lockable, Holder, TestCluster};

/// The daemon name (`mds.N`) of the current leader (waiting for one, as during an election
/// `shoal status` may find no member to answer).
fn leader(c: &TestCluster) -> String {
    let start = Instant::now();
    loop {
        let out = c.shoal(&["status", "--json", "--nearfull-ratio", "1"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(m) = st["mds"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["leader"] == true))
        {
            let id = m["id"].as_u64().expect("member id");
            return format!("mds.{}", id - 1);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no leader: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every member answers the leader and none is behind.
fn wait_members_caught_up(c: &TestCluster, limit: Duration) {
    wait_n_members_caught_up(c, 3, limit);
}

/// Waits until the group has `n` members, all answering the leader and none behind.
fn wait_n_members_caught_up(c: &TestCluster, n: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let st = c.status();
        let ms = st["mds"].as_array().cloned().unwrap_or_default();
        if ms.len() == n && ms.iter().all(|m| m["active"] == true && m["lag"] == 0) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "members not caught up: {}",
            st["mds"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one client did: names it created (final name after an optional rename).
#[derive(Default)]
struct Log {
    /// (final name, content) of every create that returned success.
    files: Vec<(String, String)>,
    /// Operations that failed, with the error.
    errors: Vec<String>,
    /// Creates that succeeded after the leader was killed.
    after_kill: usize,
}

/// Creates files as fast as it can; every third one is renamed. Stops at `stop`.
fn churn(dir: &Path, tag: &str, stop: &AtomicBool, killed: &AtomicBool) -> Log {
    let mut log = Log::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let name = format!("{tag}-{i}");
        let content = format!("{tag} file {i}\n");
        if let Err(e) = fs::write(dir.join(&name), &content) {
            log.errors.push(format!("create {name}: {e}"));
            continue;
        }
        let mut final_name = name.clone();
        if i.is_multiple_of(3) {
            let renamed = format!("{tag}-r{i}");
            match fs::rename(dir.join(&name), dir.join(&renamed)) {
                Ok(()) => final_name = renamed,
                Err(e) => log.errors.push(format!("rename {name}: {e}")),
            }
        }
        log.files.push((final_name, content));
        if killed.load(Ordering::Relaxed) {
            log.after_kill += 1;
        }
    }
    log
}

#[test]
fn leader_killed_while_two_clients_create_and_rename() {
    let c = TestCluster::start_args(&["--mds", "3"]);
    let second: PathBuf = c.root.path().join("mnt2");
    c.shoal_ok(&["mount", second.to_str().unwrap()]);
    fs::create_dir(c.path("d")).unwrap();
    let (d1, d2) = (c.path("d"), second.join("d"));
    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(false);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| churn(&d1, "a", &stop, &killed));
        let b = s.spawn(|| churn(&d2, "b", &stop, &killed));
        std::thread::sleep(Duration::from_secs(2));
        let old = leader(&c);
        c.kill9(&old);
        killed.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.errors.is_empty(), "client A saw errors: {:?}", a.errors);
    assert!(b.errors.is_empty(), "client B saw errors: {:?}", b.errors);
    assert!(
        a.after_kill > 0 && b.after_kill > 0,
        "both clients must go on after the failover: {} and {}",
        a.after_kill,
        b.after_kill
    );
    // Every acknowledged create exists exactly once, under its final name, with its bytes;
    // nothing else exists (no duplicate, no half-done rename).
    let expected: HashSet<String> = a
        .files
        .iter()
        .chain(&b.files)
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(expected.len(), a.files.len() + b.files.len());
    let listed: Vec<String> = fs::read_dir(&d1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let on_disk: HashSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), on_disk.len(), "a name is listed twice");
    let missing: Vec<_> = expected.difference(&on_disk).collect();
    let extra: Vec<_> = on_disk.difference(&expected).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert!(
        extra.is_empty(),
        "present but never acknowledged: {extra:?}"
    );
    for (name, content) in a.files.iter().chain(&b.files) {
        assert_eq!(
            &fs::read_to_string(d1.join(name)).unwrap(),
            content,
            "{name}"
        );
    }
    // The killed member comes back and catches up.
    c.up();
    wait_members_caught_up(&c, Duration::from_secs(60));
}

#[test]
fn rolling_restart_of_every_member_while_a_client_writes() {
    let c = TestCluster::start_args(&["--mds", "3"]);
    let dir = c.path("w");
    fs::create_dir(&dir).unwrap();
    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(true);
    let log = std::thread::scope(|s| {
        let w = s.spawn(|| churn(&dir, "w", &stop, &killed));
        for m in ["mds.0", "mds.1", "mds.2"] {
            std::thread::sleep(Duration::from_secs(1));
            c.kill9(m);
            std::thread::sleep(Duration::from_secs(1));
            c.up();
            wait_members_caught_up(&c, Duration::from_secs(60));
        }
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap()
    });
    assert!(
        log.errors.is_empty(),
        "the client saw errors: {:?}",
        log.errors
    );
    assert!(
        log.files.len() > 10,
        "only {} files written",
        log.files.len()
    );
    for (name, content) in &log.files {
        assert_eq!(
            &fs::read_to_string(dir.join(name)).unwrap(),
            content,
            "{name}"
        );
    }
}

#[test]
fn status_reports_a_lost_quorum_and_the_group_recovers() {
    let c = TestCluster::start_args(&["--mds", "3"]);
    fs::write(c.path("before"), b"1").unwrap();
    let old = leader(&c);
    let others: Vec<String> = ["mds.0", "mds.1", "mds.2"]
        .iter()
        .map(|s| s.to_string())
        .filter(|m| *m != old)
        .collect();
    // Two of three gone: the survivor steps down (check-quorum) and says so.
    for m in &others {
        c.kill9(m);
    }
    let start = Instant::now();
    let st = loop {
        let st = c.status();
        if st["mds_leader"] == 0 {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a lone member still leads: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["health"], "HEALTH_ERR", "{st}");
    c.up();
    wait_members_caught_up(&c, Duration::from_secs(60));
    fs::write(c.path("after"), b"2").unwrap();
    assert_eq!(fs::read(c.path("before")).unwrap(), b"1");
}

/// The (applied index, state digest) of every MDS member, read from their databases after
/// they were all killed at once on a quiet cluster.
fn member_states(c: &TestCluster) -> Vec<(u64, u64)> {
    for m in ["mds.0", "mds.1", "mds.2"] {
        c.kill9(m);
    }
    ["mds.0", "mds.1", "mds.2"]
        .iter()
        .map(|m| {
            let db = shoal_mds::store::Db::open(&c.data.join(m).join("db")).expect("open db");
            shoal_mds::snapshot::state_digest(&db).expect("digest")
        })
        .collect()
}

#[test]
fn wiped_follower_rejoins_by_snapshot() {
    // A short log: the leader compacts long before the wiped member comes back.
    let c = TestCluster::start_args(&["--mds", "3", "--mds-log-entries", "100"]);
    let dir = c.path("many");
    fs::create_dir(&dir).unwrap();
    // Each file synced: its create and size are entries of their own, not one batch.
    let write_synced = |i: usize| {
        let mut f = fs::File::create(dir.join(format!("f{i}"))).unwrap();
        f.write_all(format!("{i}").as_bytes()).unwrap();
        f.sync_all().unwrap();
    };
    for i in 0..300 {
        write_synced(i);
    }
    let old = leader(&c);
    let wiped = ["mds.0", "mds.1", "mds.2"]
        .into_iter()
        .find(|m| *m != old)
        .unwrap();
    c.kill9(wiped);
    fs::remove_dir_all(c.data.join(wiped)).unwrap();
    for i in 300..400 {
        write_synced(i);
    }
    let st = c.status();
    assert!(
        st["log_first_index"].as_u64().unwrap() > 100,
        "the leader's log must be compacted: {st}"
    );
    c.up();
    wait_members_caught_up(&c, Duration::from_secs(60));
    let log = fs::read_to_string(c.data.join(wiped).join("log")).unwrap();
    assert!(log.contains("snapshot installed"), "{wiped} log:\n{log}");
    // More work after the snapshot reaches it through the log.
    fs::write(dir.join("after"), b"x").unwrap();
    wait_members_caught_up(&c, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let states = member_states(&c);
    assert!(
        states.iter().all(|s| *s == states[0]),
        "members differ (applied, digest): {states:?}"
    );
    // The namespace is whole with the rejoined member in the group.
    c.up();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 401);
    assert_eq!(fs::read_to_string(dir.join("f399")).unwrap(), "399");
}

type MdsClient = shoal_proto::mds::mds_client::MdsClient<tonic::transport::Channel>;

/// Runs `f` with a gRPC client connected straight to member `name` (no redirects, no retries).
fn at_member<T, F: std::future::Future<Output = T>>(
    c: &TestCluster,
    name: &str,
    f: impl FnOnce(MdsClient) -> F,
) -> T {
    let addr = fs::read_to_string(c.data.join(name).join("addr")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = MdsClient::connect(format!("http://{}", addr.trim()))
            .await
            .unwrap();
        f(client).await
    })
}

/// Status as member `name` sees it (`leader` 0 when it knows of none; a follower that knows
/// the leader redirects, reported as leader u64::MAX).
fn member_view(c: &TestCluster, name: &str) -> shoal_proto::mds::StatusReply {
    at_member(c, name, |mut client| async move {
        match client.status(shoal_proto::mds::StatusRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(_) => shoal_proto::mds::StatusReply {
                leader_id: u64::MAX,
                ..Default::default()
            },
        }
    })
}

/// A mkdir sent straight to member `name`.
fn mkdir_at(c: &TestCluster, name: &str, dir: &str) -> Result<(), (tonic::Code, String)> {
    let req = shoal_proto::mds::MakeNodeRequest {
        parent: 1,
        name: dir.as_bytes().to_vec().into(),
        kind: shoal_proto::mds::FileKind::Directory as i32,
        perm: 0o755,
        exclusive: true,
        ..Default::default()
    };
    at_member(c, name, |mut client| async move {
        client
            .make_node(req)
            .await
            .map(|_| ())
            .map_err(|e| (e.code(), e.message().to_string()))
    })
}

#[test]
fn partitioned_leader_stops_acknowledging_and_the_majority_goes_on() {
    let c = TestCluster::start_args(&["--mds", "3"]);
    fs::write(c.path("before"), b"1").unwrap();
    let old = leader(&c);
    let old_id: u64 = old.trim_start_matches("mds.").parse::<u64>().unwrap() + 1;
    let others: Vec<u64> = (1..=3).filter(|i| *i != old_id).collect();
    // Cut the leader off from both others (its transport drops traffic both ways); clients
    // still reach it.
    fs::write(
        c.data.join(&old).join("drop-peers"),
        format!("{},{}", others[0], others[1]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let frozen = member_view(&c, &old).commit_index;
    // A write sent to the old leader is never acknowledged while it is cut off.
    let sent = Instant::now();
    let r = mkdir_at(&c, &old, "to-old-leader");
    let e = r.expect_err("the partitioned leader acknowledged a write");
    assert_eq!(e.0, tonic::Code::Unavailable, "{e:?}");
    assert!(sent.elapsed() < Duration::from_secs(15));
    // It steps down (check-quorum) and its commit index stays where it was.
    let start = Instant::now();
    loop {
        let v = member_view(&c, &old);
        assert!(
            v.commit_index <= frozen,
            "old leader committed alone: {v:?}"
        );
        if v.leader_id == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "old leader still leads"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The majority elected a leader among themselves, and the mount goes on through it.
    let new = leader(&c);
    assert_ne!(new, old);
    fs::write(c.path("during"), b"2").unwrap();
    let v = member_view(&c, &old);
    assert!(
        v.commit_index <= frozen,
        "old leader committed alone: {v:?}"
    );
    // Heal: the old leader rejoins as a follower and its unacknowledged entry is gone.
    fs::remove_file(c.data.join(&old).join("drop-peers")).unwrap();
    wait_members_caught_up(&c, Duration::from_secs(30));
    assert_eq!(
        leader(&c),
        new,
        "the healed member must not disrupt the new leader"
    );
    assert!(!c.path("to-old-leader").exists());
    assert_eq!(fs::read(c.path("before")).unwrap(), b"1");
    assert_eq!(fs::read(c.path("during")).unwrap(), b"2");
}

/// A `shoal-mds --join` daemon outside the cluster's data directory, killed on drop.
struct Joiner {
    child: std::process::Child,
    addr: String,
}

impl Joiner {
    fn start(dir: &Path, id: u64) -> Joiner {
        fs::create_dir_all(dir).unwrap();
        let log = fs::File::create(dir.join("log")).unwrap();
        let child = std::process::Command::new(shoal_fstests::bin("shoal-mds"))
            .args(["--id", &id.to_string(), "--join", "--data"])
            .arg(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        let addr = loop {
            if let Ok(a) = fs::read_to_string(dir.join("addr")) {
                break a.trim().to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "joiner never served"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Joiner { child, addr }
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn members_are_added_and_removed_one_at_a_time() {
    let c = TestCluster::start_args(&["--mds", "3"]);
    fs::create_dir(c.path("d")).unwrap();
    for i in 0..50 {
        fs::write(c.path(&format!("d/f{i}")), format!("{i}")).unwrap();
    }
    let joiner = Joiner::start(&c.root.path().join("mds-new"), 4);
    let out = c.shoal_ok(&["mds", "add", &joiner.addr]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("members now [1, 2, 3, 4]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_n_members_caught_up(&c, 4, Duration::from_secs(60));
    let st = c.status();
    let new = st["mds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 4)
        .cloned()
        .unwrap();
    assert_eq!(new["addr"], joiner.addr.as_str(), "{st}");
    // Bad requests are refused with a reason, and change nothing.
    let again = c.shoal(&["mds", "add", &joiner.addr]);
    assert!(!again.status.success());
    let unknown = c.shoal(&["mds", "remove", "9"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("not a member"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let lead = leader(&c);
    let lead_id: u64 = lead.trim_start_matches("mds.").parse::<u64>().unwrap() + 1;
    let refused = c.shoal(&["mds", "remove", &lead_id.to_string()]);
    assert!(!refused.status.success(), "the leader removed itself");

    // Remove an original follower; the group is {leader, other, 4}.
    let gone = (1..=3).find(|i| *i != lead_id).unwrap();
    let out = c.shoal_ok(&["mds", "remove", &gone.to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed mds id"));
    c.kill9(&format!("mds.{}", gone - 1));
    wait_n_members_caught_up(&c, 3, Duration::from_secs(30));
    let ids: Vec<u64> = c.status()["mds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&4) && !ids.contains(&gone), "{ids:?}");
    // The new member votes: with the leader killed, it and the last original elect one.
    c.kill9(&lead);
    fs::write(c.path("d/after"), b"ok").unwrap();
    assert_eq!(fs::read(c.path("d/after")).unwrap(), b"ok");
    assert_eq!(fs::read_dir(c.path("d")).unwrap().count(), 51);
}

/// The addresses of the three members.
fn member_addrs(c: &TestCluster) -> Vec<String> {
    (0..3)
        .map(|i| {
            let a = fs::read_to_string(c.data.join(format!("mds.{i}")).join("addr")).unwrap();
            a.trim().to_string()
        })
        .collect()
}

/// A client session of its own (as on another host), outside the mount, so its reads are
/// never answered from a kernel cache.
async fn session(addrs: &[String]) -> shoal_client::Client {
    let cluster = shoal_client::Cluster::connect(addrs, Duration::from_secs(60))
        .await
        .expect("connect a client session");
    shoal_client::Client::new(cluster)
}

fn set_perm(ino: u64, perm: u32) -> shoal_proto::mds::SetAttrRequest {
    shoal_proto::mds::SetAttrRequest {
        ino,
        perm: Some(perm),
        ..Default::default()
    }
}

/// Successive distinct permission values.
fn perm_value(k: u32) -> u32 {
    0o400 | (k % 0o400)
}

#[test]
fn a_read_after_a_completed_setattr_sees_it_across_failovers() {
    let c = TestCluster::start_args(&["--mds", "3"]);
    fs::write(c.path("f"), b"x").unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(c.path("f")).unwrap());
    let addrs = member_addrs(&c);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (writer, reader) = rt.block_on(async { (session(&addrs).await, session(&addrs).await) });

    // 1. The leader is killed while one session sets attributes and another reads them back.
    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(false);
    let (done, after_kill) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            rt.block_on(async {
                let (mut k, mut after) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let want = perm_value(k);
                    writer.setattr(set_perm(ino, want)).await.expect("setattr");
                    let got = reader.getattr(ino).await.expect("getattr").perm & 0o7777;
                    assert_eq!(got, want, "stale read after setattr {k}");
                    if killed.load(Ordering::Relaxed) {
                        after += 1;
                    }
                }
                (k, after)
            })
        });
        std::thread::sleep(Duration::from_secs(2));
        c.kill9(&leader(&c));
        killed.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap()
    });
    assert!(
        done > 20 && after_kill > 10,
        "too few rounds: {done}, {after_kill} after the kill"
    );
    c.up();
    wait_members_caught_up(&c, Duration::from_secs(60));

    // 2. The leader is cut off from the others while the reader still talks to it. Writes go
    // to the majority as soon as it has a leader; every read that follows a completed write
    // must see it, whichever member answers (the old leader may answer only while no other
    // can have been elected).
    let old = leader(&c);
    let old_id: usize = old.trim_start_matches("mds.").parse::<usize>().unwrap() + 1;
    rt.block_on(async {
        reader
            .getattr(ino)
            .await
            .expect("getattr at the old leader")
    });
    let majority: Vec<String> = (1..=3)
        .filter(|i| *i != old_id)
        .map(|i| addrs[i - 1].clone())
        .collect();
    fs::write(
        c.data.join(&old).join("drop-peers"),
        (1..=3)
            .filter(|i| *i != old_id)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
    .unwrap();
    let started = Instant::now();
    let writes = rt.block_on(async {
        let mut clients = Vec::new();
        for a in &majority {
            clients.push(MdsClient::connect(format!("http://{a}")).await.unwrap());
        }
        let (mut k, mut writes) = (1000u32, 0u32);
        while started.elapsed() < Duration::from_secs(6) {
            k += 1;
            let want = perm_value(k);
            let mut written = false;
            for cl in clients.iter_mut() {
                let mut req = tonic::Request::new(set_perm(ino, want));
                req.set_timeout(Duration::from_millis(500));
                if cl.set_attr(req).await.is_ok() {
                    written = true;
                    break;
                }
            }
            if !written {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            writes += 1;
            let got = reader.getattr(ino).await.expect("getattr").perm & 0o7777;
            assert_eq!(
                got,
                want,
                "stale read {:?} after the partition: the old leader answered after a newer write",
                started.elapsed()
            );
        }
        writes
    });
    assert!(writes > 10, "the majority took only {writes} writes");
    fs::remove_file(c.data.join(&old).join("drop-peers")).unwrap();
    wait_members_caught_up(&c, Duration::from_secs(30));
}

#[test]
fn a_group_of_five_survives_losing_two_members() {
    let c = TestCluster::start_args(&["--mds", "5"]);
    wait_n_members_caught_up(&c, 5, Duration::from_secs(30));
    fs::write(c.path("before"), b"1").unwrap();
    let old = leader(&c);
    let follower = (0..5)
        .map(|i| format!("mds.{i}"))
        .find(|m| *m != old)
        .unwrap();
    c.kill9(&old);
    c.kill9(&follower);
    // Three of five are a majority: a new leader is elected and the mount goes on.
    fs::write(c.path("during"), b"2").unwrap();
    fs::create_dir(c.path("d")).unwrap();
    fs::rename(c.path("during"), c.path("d/during")).unwrap();
    assert_ne!(leader(&c), old);
    c.up();
    wait_n_members_caught_up(&c, 5, Duration::from_secs(60));
    assert_eq!(fs::read(c.path("before")).unwrap(), b"1");
    assert_eq!(fs::read(c.path("d/during")).unwrap(), b"2");
}

#[test]
fn sessions_locks_and_unrecorded_writes_move_with_the_leader() {
    let c = TestCluster::start_args(&["--mds", "3", "--session-timeout", "3"]);
    let m2 = c.mount_again("mnt2");
    let (a, b) = (c.path("f"), m2.join("f"));
    fs::write(&a, b"").unwrap();
    // A process on the second mount locks the file and writes; under its write lease the
    // new size stays with that mount.
    let mut holder = Holder::start(&b);
    for off in [0, 1 << 20] {
        holder.write_at(off);
        assert_eq!(holder.said(), "ok");
    }
    let old = leader(&c);
    c.kill9(&old);
    let new = leader(&c);
    assert_ne!(old, new);

    // Past twice the session timeout under the new leader: no mount was evicted, the lock is
    // still held, and both sessions are heard from.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        assert!(!lockable(&a), "the lock went during the failover");
        std::thread::sleep(Duration::from_millis(500));
    }
    let st = c.status();
    assert_eq!(st["evicted"].as_array().map_or(0, |e| e.len()), 0, "{st}");
    let sessions = st["sessions"].as_array().unwrap();
    let heard = sessions
        .iter()
        .filter(|s| s["silent_ms"].as_u64().unwrap() < 3000 && s["host"] != "")
        .count();
    assert_eq!(heard, 2, "both mounts heartbeat the new leader: {st}");

    // What the writer did under the old leader's lease is seen, and so is what it does now.
    assert_eq!(fs::metadata(&a).unwrap().len(), (1 << 20) + 4096);
    holder.write_at(2 << 20);
    assert_eq!(holder.said(), "ok");
    assert_eq!(fs::metadata(&a).unwrap().len(), (2 << 20) + 4096);
    let got = fs::read(&a).unwrap();
    assert!(got[2 << 20..].iter().all(|&x| x == b'Z'));
    drop(holder);
    assert!(lockable(&a), "a closed holder's lock is free");
    c.up();
    wait_members_caught_up(&c, Duration::from_secs(60));
}
