//! Real tools inside the mount: git, a C compiler, and fsx (the File System eXerciser).

use std::process::Command;

use shoal_fstests::TestCluster;

fn run(dir: &std::path::Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{cmd} is needed for this test (scripts/deps.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn git_init_add_commit() {
    let c = TestCluster::start();
    let repo = c.path("repo");
    std::fs::create_dir(&repo).unwrap();
    run(&repo, "git", &["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    std::fs::create_dir(repo.join("src")).unwrap();
    std::fs::write(repo.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    run(&repo, "git", &["add", "."]);
    let id = [
        "-c",
        "user.name=Shoal Test",
        "-c",
        "user.email=test@shoal.invalid",
    ];
    let mut args = id.to_vec();
    args.extend(["commit", "-q", "-m", "first"]);
    run(&repo, "git", &args);
    std::fs::write(repo.join("README"), "hello again\n").unwrap();
    let mut args = id.to_vec();
    args.extend(["commit", "-q", "-am", "second"]);
    run(&repo, "git", &args);
    assert_eq!(
        run(&repo, "git", &["log", "--format=%s"]),
        "second\nfirst\n"
    );
    assert_eq!(run(&repo, "git", &["status", "--porcelain"]), "");
    run(&repo, "git", &["fsck", "--strict"]);
    assert_eq!(run(&repo, "git", &["show", "HEAD~1:README"]), "hello\n");
}

#[test]
fn gcc_compiles_and_runs_a_program() {
    let c = TestCluster::start();
    let dir = c.path("cc");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("hello.c"),
        "#include <stdio.h>\nint main(void) { long s = 0; for (int i = 1; i <= 100; i++) s += i; printf(\"sum=%ld\\n\", s); return 0; }\n",
    )
    .unwrap();
    run(&dir, "gcc", &["-O2", "-o", "hello", "hello.c"]);
    assert_eq!(run(&dir, "./hello", &[]), "sum=5050\n");
}

/// fsx's operations, weighted: reads and writes through pread/pwrite and shared mappings,
/// truncates, holes, fallocate, copy_file_range, sendfile, fsyncs, cache invalidation and
/// reopens, on a file of up to 6 MiB in pieces of up to 256 KiB.
const FSX_CONFIG: &str = "flen = 6291456
[opsize]
max = 262144
[weights]
close_open = 2
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 2
punch_hole = 3
sendfile = 1
posix_fadvise = 1
copy_file_range = 2
";

/// fsx checks every read against its own model of the file. A striped layout (1 MiB objects,
/// 64 KiB units over 4) puts most operations across object boundaries. `SHOAL_FSX_SEED`
/// replays a run, `SHOAL_FSX_OPS` lengthens it.
#[test]
fn fsx_finds_every_byte_where_it_left_it() {
    let fsx = shoal_fstests::tool("fsx");
    let seed: u64 = std::env::var("SHOAL_FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let ops = std::env::var("SHOAL_FSX_OPS").unwrap_or_else(|_| "600".into());
    let c = TestCluster::start();
    let dir = c.path("striped");
    shoal_fstests::striped_dir(&dir);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("fsx.toml");
    std::fs::write(&config, FSX_CONFIG).unwrap();
    let out = Command::new(fsx)
        .arg("-f")
        .arg(&config)
        .args(["-N", &ops, "-S", &seed.to_string(), "-P"])
        .arg(work.path())
        .arg(dir.join("fsxfile"))
        .output()
        .expect("run fsx");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("All operations completed A-OK"),
        "fsx failed (seed {seed}; replay with SHOAL_FSX_SEED={seed}):\n{text}"
    );
}

#[test]
fn the_benchmark_harness_compares_a_mount_with_a_local_directory() {
    let c = TestCluster::start();
    let local = c.root.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let json = c.root.path().join("bench.json");
    let png = c.root.path().join("bench.png");
    let m2 = c.mount_again("mnt2");
    let out = Command::new(shoal_fstests::bin("shoal-bench"))
        .arg("run")
        .arg("--quick")
        .arg("--target")
        .arg(&local)
        .args(["--label", "local", "--second", "-"])
        .arg("--target")
        .arg(&c.mnt)
        .args(["--label", "shoal", "--second"])
        .arg(&m2)
        .arg("--library")
        .arg(&c.data)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&png)
        .arg("--rss-of")
        .arg(&c.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shoal-bench run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| seq_write | MB/s |"), "{table}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(
        targets.len(),
        3,
        "the local directory, the mount and the library"
    );
    let names = |t: &serde_json::Value| -> Vec<String> {
        t["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&targets[0]), names(&targets[1]), "the same workloads");
    for want in [
        "seq_write",
        "seq_read",
        "rand_read_4k",
        "rand_write_4k",
        "create",
        "stat",
        "two_mount_pingpong",
        "two_mount_share",
    ] {
        assert!(
            names(&targets[1]).iter().any(|n| n == want),
            "{want} measured"
        );
    }
    // The library runs every workload that needs no directory path.
    let lib = names(&targets[2]);
    let mounted: Vec<String> = names(&targets[1])
        .into_iter()
        .filter(|n| n != "untar" && !n.starts_with("two_mount"))
        .collect();
    assert_eq!(lib, mounted, "the library's workloads");
    assert_eq!(targets[2]["label"], "shoal-library");
    assert!(table.contains("| shoal-library / local |"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("| two_mount_share |") && l.contains("| — |")),
        "{table}"
    );
    for t in targets {
        for m in t["metrics"].as_array().unwrap() {
            let v = m["value"].as_f64().unwrap();
            assert!(v.is_finite() && v >= 0.0, "{m}");
        }
    }
    // A chart, and the peak memory of every daemon and the mount, each nonzero.
    let plot = std::fs::read(&png).expect("the chart was written");
    assert!(plot.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    let rss = r["rss_peak_kib"].as_object().expect("peak RSS reported");
    for name in ["mds.0", "osd.0", "client.0"] {
        let kib = rss.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(kib > 1024, "{name}: {kib} KiB");
    }
    assert!(table.contains("| mds.0 |"), "{table}");
    // Its scratch directories are gone from both targets.
    assert_eq!(std::fs::read_dir(&c.mnt).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
}
