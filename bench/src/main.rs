//! `shoal-bench`: measurements of Shoal through real mounts.
//!
//! `shoal-bench run --target A --target B ...` compares mounted filesystems: the same
//! workloads against each, and each one's ratio to the first (see `run`).
//!
//! `shoal-bench recovery` answers "does client I/O keep its speed while the cluster heals?":
//! it starts a 3-OSD, 3-replica cluster, fills it, measures sequential write and read
//! throughput through the mount, then wipes one OSD's disk, restarts it and measures the same
//! workloads while that OSD is rebuilt. Each run reports the ratios of the two, and how fast
//! recovery moved meanwhile. With `--compare` it runs a second cluster whose OSDs give
//! recovery an equal share (no client priority), so the effect of the priority is visible in
//! the same run.
//!
//! `shoal-bench mds` answers "what does a replicated MDS cost?": the create rate (empty files,
//! several threads, through a mount) of a cluster with one MDS and of one with three, started
//! one after the other in the same run, and the ratio.
//!
//! `shoal-bench idle-mount` answers "does a second mount cost a client that works alone?":
//! on one cluster, sequential writes, small random writes, creates and stats through one
//! mount, then the same with a second mount present that has looked at the tree and the
//! directory worked in and sits idle, then alone again (`--rounds` repeats the pair); it
//! reports each workload's mean rate with the second mount over the mean of the runs alone.

mod plot;
mod run;
mod target;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rand::RngCore;
use shoal_fstests::TestCluster;

const MIB: usize = 1 << 20;
/// Files of the fill and of the write workload are this large.
const FILE_MIB: usize = 64;

/// Shoal benchmarks through real mounts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The same workloads against each mounted directory given, with ratios to the first.
    Run(Box<run::RunArgs>),
    /// Client throughput while an OSD is rebuilt, against the same cluster healthy.
    Recovery(RecoveryArgs),
    /// Create rate with one MDS against three (a Raft group), in the same run.
    Mds(MdsArgs),
    /// One client's speed alone, and with a second, idle mount of the same cluster.
    IdleMount(IdleArgs),
}

#[derive(Args, Debug, Clone)]
struct IdleArgs {
    /// Sequential write per run, MiB (64 KiB writes, then fsync).
    #[arg(long, default_value_t = 256)]
    write_mib: usize,
    /// Small files created, then stat'ed, per run; also the count of random 4 KiB writes.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Runs with the idle mount, each between two runs alone (alone, with, alone, ...).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct MdsArgs {
    /// Files each thread creates.
    #[arg(long, default_value_t = 500)]
    files: usize,
    /// Threads creating at once (each in its own directory).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct RecoveryArgs {
    /// Data written before the OSD is wiped (what recovery has to rebuild), MiB.
    #[arg(long, default_value_t = 3072)]
    fill_mib: usize,
    /// Length of each measured window (write, then read), seconds.
    #[arg(long, default_value_t = 8)]
    window_secs: u64,
    /// Also run a cluster whose recovery gets an equal share of the OSDs, and compare.
    #[arg(long)]
    compare: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run::run(&a),
        Cmd::Recovery(a) => recovery(&a),
        Cmd::Mds(a) => mds_bench(&a),
        Cmd::IdleMount(a) => idle_mount(&a),
    }
}

/// Rates of one run of the single-client workloads in `dir`: sequential write MB/s, random
/// 4 KiB writes/s, creates/s, stats/s.
fn single_client_run(dir: &Path, a: &IdleArgs) -> anyhow::Result<[f64; 4]> {
    use std::os::unix::fs::FileExt;
    fs::create_dir_all(dir)?;
    let block = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut f = File::create(dir.join("seq"))?;
    for _ in 0..a.write_mib * 16 {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let seq = (a.write_mib * MIB) as f64 / 1e6 / start.elapsed().as_secs_f64();
    let mut rng = rand::thread_rng();
    let start = Instant::now();
    for _ in 0..a.ops {
        let off = (rng.next_u64() % (a.write_mib as u64 * 256)) * 4096;
        f.write_all_at(&block[..4096], off)?;
    }
    f.sync_all()?;
    let random = a.ops as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..a.ops {
        File::create(dir.join(format!("f{i}")))?;
    }
    let creates = a.ops as f64 / start.elapsed().as_secs_f64();
    // Past the leases the creates came with, so each stat asks the MDS (cached stats would
    // measure only how many leases happened to be left).
    std::thread::sleep(Duration::from_millis(2500));
    let start = Instant::now();
    for i in 0..a.ops {
        fs::metadata(dir.join(format!("f{i}")))?;
    }
    let stats = a.ops as f64 / start.elapsed().as_secs_f64();
    Ok([seq, random, creates, stats])
}

fn idle_mount(a: &IdleArgs) -> anyhow::Result<()> {
    if a.write_mib == 0 || a.ops == 0 || a.rounds == 0 {
        bail!("--write-mib, --ops and --rounds must be at least 1");
    }
    let c = TestCluster::start();
    let mut alone = Vec::new();
    let mut shared = Vec::new();
    for round in 0..a.rounds {
        eprintln!("round {}: alone...", round + 1);
        alone.push(single_client_run(&c.path(&format!("alone{round}")), a)?);
        let m2 = c.mount_again(&format!("idle{round}"));
        // The idle mount has seen the tree and the directory the client works in (it holds
        // their entries and attributes), and then rests.
        let dir = c.path(&format!("shared{round}"));
        fs::create_dir(&dir)?;
        for e in fs::read_dir(&m2)? {
            fs::metadata(e?.path())?;
        }
        fs::read_dir(m2.join(format!("shared{round}")))?.count();
        eprintln!("round {}: with an idle second mount...", round + 1);
        shared.push(single_client_run(&dir, a)?);
        let umount = std::process::Command::new("umount").arg(&m2).status()?;
        if !umount.success() {
            bail!("umount {} failed", m2.display());
        }
    }
    eprintln!("alone, last...");
    alone.push(single_client_run(&c.path("alone-last"), a)?);
    let names = ["seq_write_mb_s", "rand_4k_writes_s", "creates_s", "stats_s"];
    let mean =
        |runs: &[[f64; 4]], i: usize| runs.iter().map(|r| r[i]).sum::<f64>() / runs.len() as f64;
    let ratio = |i: usize| mean(&shared, i) / mean(&alone, i);
    if a.json {
        let mut m = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let each = |runs: &[[f64; 4]]| runs.iter().map(|r| round(r[i])).collect::<Vec<_>>();
            m.insert(
                n.to_string(),
                serde_json::json!({"alone": each(&alone), "with_idle_mount": each(&shared),
                    "ratio": round(ratio(i))}),
            );
        }
        println!("{}", serde_json::Value::Object(m));
    } else {
        println!(
            "one client alone ({} runs) and with a second idle mount ({} runs); ratio: mean with / mean alone",
            alone.len(),
            shared.len()
        );
        for (i, n) in names.iter().enumerate() {
            println!(
                "  {n:<18} alone {:>9.1}   with idle mount {:>9.1}   ratio {:.2}",
                mean(&alone, i),
                mean(&shared, i),
                ratio(i)
            );
        }
    }
    Ok(())
}

/// Creates `files` empty files in each of `threads` directories under `root`; returns
/// creates per second.
fn create_rate(root: &Path, threads: usize, files: usize) -> anyhow::Result<f64> {
    for t in 0..threads {
        fs::create_dir(root.join(format!("t{t}")))?;
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let dir = root.join(format!("t{t}"));
                s.spawn(move || -> std::io::Result<()> {
                    for i in 0..files {
                        File::create(dir.join(format!("f{i}")))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a create thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    // Every create took effect.
    let n: usize = (0..threads)
        .map(|t| fs::read_dir(root.join(format!("t{t}"))).map(|d| d.count()))
        .sum::<std::io::Result<usize>>()?;
    if n != threads * files {
        bail!("{n} files found, {} created", threads * files);
    }
    Ok((threads * files) as f64 / secs)
}

fn mds_bench(a: &MdsArgs) -> anyhow::Result<()> {
    if a.threads == 0 || a.files == 0 {
        bail!("--threads and --files must be at least 1");
    }
    let mut rates = Vec::new();
    for n in ["1", "3"] {
        eprintln!("creating {} files with {n} MDS...", a.threads * a.files);
        let c = TestCluster::start_args(&["--mds", n]);
        rates.push(create_rate(&c.mnt, a.threads, a.files)?);
    }
    let ratio = rates[1] / rates[0];
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "files": a.threads * a.files,
                "threads": a.threads,
                "creates_per_sec": {"mds1": rates[0], "mds3": rates[1]},
                "ratio_3_to_1": ratio,
            })
        );
    } else {
        println!("create rate, {} threads x {} files", a.threads, a.files);
        println!("  1 MDS : {:>8.0} creates/s", rates[0]);
        println!("  3 MDS : {:>8.0} creates/s  ({ratio:.2}x)", rates[1]);
    }
    Ok(())
}

/// Throughput of one window, and what recovery did meanwhile.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    mb_per_sec: f64,
    /// Copies still to recover at the start and at the end of the window.
    missing_before: u64,
    missing_after: u64,
    secs: f64,
}

impl Window {
    /// A window that started at `start` and moved `bytes`, ending now.
    fn ended(c: &TestCluster, bytes: u64, start: Instant, missing_before: u64) -> Window {
        let secs = start.elapsed().as_secs_f64();
        Window {
            mb_per_sec: bytes as f64 / 1e6 / secs,
            missing_before,
            missing_after: missing(c),
            secs,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mb_per_sec": round(self.mb_per_sec),
            "missing_before": self.missing_before,
            "missing_after": self.missing_after,
            "secs": round(self.secs),
        })
    }
}

/// One cluster's run: healthy and recovering windows.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    write_healthy: Window,
    read_healthy: Window,
    write_recovering: Window,
    read_recovering: Window,
    /// Seconds from the OSD's restart until every PG was clean again.
    rebuild_secs: f64,
    /// Copies the rebuild had to make.
    rebuilt_copies: u64,
}

impl Run {
    fn write_ratio(&self) -> f64 {
        self.write_recovering.mb_per_sec / self.write_healthy.mb_per_sec.max(f64::MIN_POSITIVE)
    }
    fn read_ratio(&self) -> f64 {
        self.read_recovering.mb_per_sec / self.read_healthy.mb_per_sec.max(f64::MIN_POSITIVE)
    }
    /// Whether recovery was still under way when both recovering windows ended.
    fn overlapped(&self) -> bool {
        self.write_recovering.missing_before > 0 && self.read_recovering.missing_after > 0
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "healthy": {"write": self.write_healthy.json(), "read": self.read_healthy.json()},
            "recovering": {"write": self.write_recovering.json(), "read": self.read_recovering.json()},
            "write_ratio": round(self.write_ratio()),
            "read_ratio": round(self.read_ratio()),
            "recovery_overlapped_windows": self.overlapped(),
            "rebuild_secs": round(self.rebuild_secs),
            "rebuilt_copies": self.rebuilt_copies,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn recovery(a: &RecoveryArgs) -> anyhow::Result<()> {
    if a.fill_mib < FILE_MIB || a.window_secs == 0 {
        bail!("--fill-mib must be at least {FILE_MIB} and --window-secs positive");
    }
    let prioritized = recovery_run(a, None)?;
    let equal = if a.compare {
        Some(recovery_run(a, Some("100"))?)
    } else {
        None
    };
    if a.json {
        let mut out = serde_json::json!({ "prioritized": prioritized.json() });
        if let Some(e) = &equal {
            out["equal_share"] = e.json();
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "fill {} MiB, 3 OSDs, 3 replicas, {} s windows; one OSD wiped and rebuilt",
        a.fill_mib, a.window_secs
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8} {:>10}",
        "recovery",
        "write MB/s",
        "(healthy)",
        "ratio",
        "read MB/s",
        "(healthy)",
        "ratio",
        "rebuild s"
    );
    let mut rows = vec![("client first", prioritized)];
    if let Some(e) = equal {
        rows.push(("equal share", e));
    }
    for (name, r) in rows {
        println!(
            "{:<22} {:>12.1} {:>12.1} {:>8.2} {:>12.1} {:>12.1} {:>8.2} {:>10.1}{}",
            name,
            r.write_recovering.mb_per_sec,
            r.write_healthy.mb_per_sec,
            r.write_ratio(),
            r.read_recovering.mb_per_sec,
            r.read_healthy.mb_per_sec,
            r.read_ratio(),
            r.rebuild_secs,
            if r.overlapped() {
                ""
            } else {
                "  (recovery ended inside a window: use a larger --fill-mib)"
            }
        );
    }
    Ok(())
}

/// One cluster: fill, measure healthy, wipe osd.2, measure while it is rebuilt.
/// `share` sets the OSDs' recovery share under client load (percent), if given.
fn recovery_run(a: &RecoveryArgs, share: Option<&str>) -> anyhow::Result<Run> {
    match share {
        // SAFETY (edition 2021: safe fn): set before any thread of ours runs; the cluster's
        // daemons inherit it.
        Some(s) => std::env::set_var("SHOAL_RECOVERY_BUSY_SHARE", s),
        None => std::env::remove_var("SHOAL_RECOVERY_BUSY_SHARE"),
    }
    let c = TestCluster::start_args(&["--osds", "3", "--replicas", "3", "--osd-grace", "3"]);
    let window = Duration::from_secs(a.window_secs);
    eprintln!("# filling {} MiB", a.fill_mib);
    let fill_dir = c.path("fill");
    fs::create_dir(&fill_dir)?;
    let mut block = vec![0u8; MIB];
    rand::thread_rng().fill_bytes(&mut block);
    let mut fill = Vec::new();
    for i in 0..a.fill_mib / FILE_MIB {
        let p = fill_dir.join(format!("f{i}"));
        write_file(&p, &mut block, FILE_MIB, None)?;
        fill.push(p);
    }
    c.wait_clean(Duration::from_secs(120));

    eprintln!("# healthy windows");
    let write_healthy = write_window(&c, "healthy", &mut block, window)?;
    let read_healthy = read_window(&c, &fill, window)?;

    eprintln!("# wiping osd.2 and restarting it");
    c.kill9("osd.2");
    fs::remove_dir_all(c.data.join("osd.2").join("objects"))?;
    let restarted = Instant::now();
    c.up();
    let started = Instant::now();
    let rebuilt_copies = loop {
        let m = missing(&c);
        if m > 0 {
            break m;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("recovery did not start within 60 s of the restart");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("# recovering windows ({rebuilt_copies} copies to rebuild)");
    let write_recovering = write_window(&c, "recovering", &mut block, window)?;
    let read_recovering = read_window(&c, &fill, window)?;
    c.wait_clean(Duration::from_secs(1800));
    let rebuild_secs = restarted.elapsed().as_secs_f64();
    // Everything written stayed readable and whole.
    for p in &fill {
        let n = fs::metadata(p)?.len();
        if n != (FILE_MIB * MIB) as u64 {
            bail!("{} has {n} bytes after the rebuild", p.display());
        }
    }
    Ok(Run {
        write_healthy,
        read_healthy,
        write_recovering,
        read_recovering,
        rebuild_secs,
        rebuilt_copies,
    })
}

/// Copies the cluster still has to recover.
fn missing(c: &TestCluster) -> u64 {
    c.status()["pgs"]["missing_copies"].as_u64().unwrap_or(0)
}

/// Writes `mib` MiB of `block` (each MiB stamped with its index) and fsyncs; stops early at
/// `until`. Returns the bytes written.
fn write_file(
    p: &Path,
    block: &mut [u8],
    mib: usize,
    until: Option<Instant>,
) -> anyhow::Result<u64> {
    let mut f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
    let mut n = 0u64;
    for i in 0..mib {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(block)
            .with_context(|| format!("writing {}", p.display()))?;
        n += block.len() as u64;
    }
    f.sync_all()
        .with_context(|| format!("fsync of {}", p.display()))?;
    Ok(n)
}

/// Sequential writes of 64 MiB files, 1 MiB at a time, each fsynced, for `window`.
fn write_window(
    c: &TestCluster,
    tag: &str,
    block: &mut [u8],
    window: Duration,
) -> anyhow::Result<Window> {
    let dir = c.path(tag);
    fs::create_dir(&dir)?;
    let missing_before = missing(c);
    let start = Instant::now();
    let until = start + window;
    let mut bytes = 0;
    let mut i = 0;
    while Instant::now() < until {
        bytes += write_file(&dir.join(format!("w{i}")), block, FILE_MIB, Some(until))?;
        i += 1;
    }
    Ok(Window::ended(c, bytes, start, missing_before))
}

/// Sequential reads of the fill files (page cache dropped first), for `window` or until all
/// are read.
fn read_window(c: &TestCluster, files: &[PathBuf], window: Duration) -> anyhow::Result<Window> {
    drop_caches()?;
    let missing_before = missing(c);
    let start = Instant::now();
    let mut buf = vec![0u8; MIB];
    let mut bytes = 0u64;
    'files: for p in files {
        let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        loop {
            if start.elapsed() >= window {
                break 'files;
            }
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.display()))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    Ok(Window::ended(c, bytes, start, missing_before))
}

/// Empties the page cache so reads reach the cluster (needs root).
fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync has no memory effects.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (run as root)")?;
    Ok(())
}
