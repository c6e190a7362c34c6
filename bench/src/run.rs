//! `shoal-bench run`: the same workloads against each mounted directory given, one after the
//! other, and a table of each target's figures with its ratio to the first target's.
//!
//! Workloads, each in a scratch directory `TARGET/.shoal-bench.PID` removed afterwards:
//! sequential write (1 MiB blocks, fsync at the end) and read (caches dropped first when run
//! as root); random 4 KiB reads and writes from several threads (O_DIRECT where the target
//! takes it); create, stat and unlink of many empty files; mkdir and rmdir of a tree; 4 KiB
//! small files written and read back; readdir of a large directory; extraction of a tar of a
//! source tree (`--tar`; by default, when run inside this repository, its files and the
//! sources of crates it depends on, see [`source_tar`]; the median of five extractions, each
//! from cold);
//! two clients on one directory (`--second`: another mount of the target's filesystem), a
//! ping-pong of files and both writing and reading each other's files at once.
//! `--quick` shrinks everything to seconds (what CI runs); the figures then mean little.
//! `--plot FILE.png` draws the figures; `--rss-of DIR` reports the peak memory of a `shoal up`
//! cluster's daemons and mounts during the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::Rng;

use crate::target::{Dir, Library, Target};

const MIB: usize = 1 << 20;

/// `shoal-bench run`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A mounted directory to measure (repeat; ratios are to the first).
    #[arg(long = "target", required = true)]
    pub targets: Vec<PathBuf>,
    /// Also measure a Shoal cluster through the client library, without FUSE (after the
    /// targets): its MDS addresses (`ADDR[,ADDR]`) or a `shoal up` data directory. The
    /// workloads that need a directory path (tar, two mounts) are left out there.
    #[arg(long)]
    pub library: Option<String>,
    /// The library target's name.
    #[arg(long, default_value = "shoal-library")]
    pub library_label: String,
    /// A second mount of each target's filesystem, in order (`--second -` for none): the
    /// two-client workload writes through the target and reads through this one (without
    /// it, both clients use the target).
    #[arg(long = "second")]
    pub seconds: Vec<PathBuf>,
    /// A name for each target, in order (default: the path).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Small sizes and short runs (seconds in all): checks the harness, not the speed.
    #[arg(long)]
    pub quick: bool,
    /// A tar file to extract (default, when run in this repository: its files and the sources
    /// of the crates it depends on from Cargo's registry, 3,500 files; with --quick, its files).
    #[arg(long)]
    pub tar: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the results as a Markdown table here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Draw a bar chart per metric into this PNG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A `shoal up` data directory: the peak resident memory of each of its daemons and
    /// mounts (`DIR/*/pid`) during the run is reported against the limits (MDS and OSDs
    /// 1 GiB, clients 512 MiB).
    #[arg(long)]
    pub rss_of: Option<PathBuf>,
    /// Run only these workloads (comma-separated; default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Workload>,
}

/// A group of workloads `--only` can pick.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Sequential write and read.
    Seq,
    /// Random 4 KiB reads and writes.
    Random,
    /// Create, stat, readdir, unlink, a directory tree, small files.
    Metadata,
    /// Extracting a tar.
    Untar,
    /// Two clients on one directory.
    TwoMounts,
}

/// Peak resident memory of processes, sampled every 200 ms on a thread of its own.
struct RssWatch {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(String, u64)>>>,
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl RssWatch {
    /// Watches every `DIR/NAME/pid` there is now.
    fn start(dir: &Path) -> anyhow::Result<RssWatch> {
        let mut procs = Vec::new();
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let Ok(pid) = fs::read_to_string(e.path().join("pid")) else {
                continue;
            };
            if let Ok(pid) = pid.trim().parse::<u32>() {
                procs.push((e.file_name().to_string_lossy().into_owned(), pid));
            }
        }
        if procs.is_empty() {
            bail!("no daemon pid files under {}", dir.display());
        }
        procs.sort();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = vec![0u64; procs.len()];
            while !halt.load(Ordering::Relaxed) {
                for (i, (_, pid)) in procs.iter().enumerate() {
                    peak[i] = peak[i].max(rss_kib(*pid).unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            procs.into_iter().map(|(n, _)| n).zip(peak).collect()
        });
        Ok(RssWatch {
            stop,
            thread: Some(thread),
        })
    }

    /// Each process's peak, in KiB.
    fn finish(mut self) -> Vec<(String, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// The memory limit of a `shoal up` process by its directory's name, in MiB.
fn rss_limit_mib(name: &str) -> u64 {
    if name.starts_with("client") {
        512
    } else {
        1024
    }
}

/// Sizes of one run.
struct Sizes {
    seq_mib: usize,
    rand_file_mib: usize,
    rand_secs: f64,
    threads: usize,
    files: usize,
    tree: (usize, usize),
    small: usize,
    /// Tar extractions, of which the median counts (see [`untar`]).
    untars: usize,
    /// The pause before each timed phase (see [`cold`]).
    rest: Duration,
}

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                seq_mib: 16,
                rand_file_mib: 8,
                rand_secs: 0.5,
                threads: 2,
                files: 200,
                tree: (4, 5),
                small: 100,
                untars: 1,
                rest: Duration::from_millis(100),
            }
        } else {
            Sizes {
                seq_mib: 1024,
                rand_file_mib: 256,
                rand_secs: 10.0,
                threads: 4,
                files: 10_000,
                tree: (20, 99),
                small: 5_000,
                untars: 5,
                rest: Duration::from_secs(1),
            }
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    /// Whether more is better (rates) or less (times).
    pub higher_is_better: bool,
    pub value: f64,
}

fn rate(name: &'static str, unit: &'static str, n: f64, took: Duration) -> Metric {
    Metric {
        name,
        unit,
        higher_is_better: true,
        value: n / took.as_secs_f64().max(1e-9),
    }
}

fn time(name: &'static str, took: Duration) -> Metric {
    Metric {
        name,
        unit: "s",
        higher_is_better: false,
        value: took.as_secs_f64(),
    }
}

/// Steps done and to do, for the progress bar.
static STEPS: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// Shows a step starting, with a bar of the steps done so far.
fn progress(target: &str, what: &str) {
    let done = STEPS.0.fetch_add(1, Ordering::Relaxed);
    let total = STEPS.1.load(Ordering::Relaxed).max(done + 1);
    let filled = (done * 20 / total) as usize;
    eprintln!(
        "[{}{}] {done}/{total} {target}: {what}",
        "#".repeat(filled),
        ".".repeat(20 - filled)
    );
}

/// Drops the kernel's page cache (root only; otherwise reads may come from it).
fn drop_caches() -> bool {
    // SAFETY: sync(2) has no memory effects.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Every timed phase starts from the same state, as in the maintainers' fsbench: what the
/// phases before left to do in the background given `s.rest` to finish (a filesystem freeing
/// what an unlink removed, say), dirty data synced, and the kernel's page, dentry and inode
/// caches dropped. So no figure depends on the phases before it: neither a cache they left
/// warm nor their leftovers written back by the `sync` a timed phase ends with.
fn cold(s: &Sizes) {
    std::thread::sleep(s.rest);
    drop_caches();
}

fn seq<T: Target>(t: &T, s: &Sizes, out: &mut Vec<Metric>) -> anyhow::Result<()> {
    let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    cold(s);
    let start = Instant::now();
    let f = t.create("seq")?;
    for i in 0..s.seq_mib {
        t.write_at(&f, (i * MIB) as u64, &block)?;
    }
    t.sync(&f)?;
    t.close(f)?;
    out.push(rate(
        "seq_write",
        "MB/s",
        (s.seq_mib * MIB) as f64 / 1e6,
        start.elapsed(),
    ));
    cold(s);
    let mut buf = vec![0u8; MIB];
    let start = Instant::now();
    let f = t.open("seq", false)?;
    let mut total = 0usize;
    loop {
        let n = t.read_at(&f, total as u64, &mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    t.close(f)?;
    if total != s.seq_mib * MIB {
        bail!("read back {total} bytes of {}", s.seq_mib * MIB);
    }
    out.push(rate(
        "seq_read",
        "MB/s",
        total as f64 / 1e6,
        start.elapsed(),
    ));
    t.unlink("seq")?;
    Ok(())
}

/// 4 KiB-aligned buffer (O_DIRECT needs aligned memory).
struct Aligned {
    ptr: *mut u8,
}

impl Aligned {
    fn new() -> Aligned {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("4 KiB layout");
        // SAFETY: a non-zero layout; freed in Drop with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: 4096 bytes allocated in `new`, owned here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, 4096) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("4 KiB layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

fn random_io<T: Target>(t: &T, s: &Sizes, out: &mut Vec<Metric>) -> anyhow::Result<()> {
    let block = vec![7u8; MIB];
    let f = t.create("rand")?;
    for i in 0..s.rand_file_mib {
        t.write_at(&f, (i * MIB) as u64, &block)?;
    }
    t.sync(&f)?;
    t.close(f)?;
    let blocks = (s.rand_file_mib * MIB / 4096) as u64;
    for (name, write) in [("rand_read_4k", false), ("rand_write_4k", true)] {
        cold(s);
        let ops = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        std::thread::scope(|sc| -> anyhow::Result<()> {
            let mut workers = Vec::new();
            for _ in 0..s.threads {
                workers.push(sc.spawn(|| -> anyhow::Result<()> {
                    let f = t.open("rand", true)?;
                    let mut rng = rand::thread_rng();
                    let mut buf = Aligned::new();
                    let mut run = || -> anyhow::Result<()> {
                        while !stop.load(Ordering::Relaxed) {
                            let off = rng.gen_range(0..blocks) * 4096;
                            if write {
                                t.write_at(&f, off, buf.buf())?;
                            } else if t.read_at(&f, off, buf.buf())? != 4096 {
                                bail!("short read at {off}");
                            }
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    };
                    // Closed whatever happened; the first failure is the one reported.
                    let ran = run();
                    ran.and(t.close(f))
                }));
            }
            std::thread::sleep(Duration::from_secs_f64(s.rand_secs));
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
            }
            Ok(())
        })?;
        out.push(rate(
            name,
            "IOPS",
            ops.load(Ordering::Relaxed) as f64,
            start.elapsed(),
        ));
    }
    t.unlink("rand")?;
    Ok(())
}

fn metadata<T: Target>(t: &T, s: &Sizes, out: &mut Vec<Metric>) -> anyhow::Result<()> {
    t.mkdir("files")?;
    let name = |i: usize| format!("files/f{i:06}");
    cold(s);
    let start = Instant::now();
    for i in 0..s.files {
        t.close(t.create(&name(i))?)?;
    }
    out.push(rate("create", "ops/s", s.files as f64, start.elapsed()));
    cold(s);
    let start = Instant::now();
    for i in 0..s.files {
        t.stat(&name(i))?;
    }
    out.push(rate("stat", "ops/s", s.files as f64, start.elapsed()));
    cold(s);
    let start = Instant::now();
    let listed = t.count("files")?;
    out.push(time("readdir", start.elapsed()));
    if listed != s.files {
        bail!("readdir listed {listed} of {} files", s.files);
    }
    cold(s);
    let start = Instant::now();
    for i in 0..s.files {
        t.unlink(&name(i))?;
    }
    out.push(rate("unlink", "ops/s", s.files as f64, start.elapsed()));
    t.rmdir("files")?;

    let (top, sub) = s.tree;
    let n = (top * (sub + 1)) as f64;
    cold(s);
    let start = Instant::now();
    t.mkdir("tree")?;
    for i in 0..top {
        t.mkdir(&format!("tree/d{i}"))?;
        for j in 0..sub {
            t.mkdir(&format!("tree/d{i}/s{j}"))?;
        }
    }
    out.push(rate("mkdir_tree", "ops/s", n, start.elapsed()));
    cold(s);
    let start = Instant::now();
    for i in 0..top {
        for j in 0..sub {
            t.rmdir(&format!("tree/d{i}/s{j}"))?;
        }
        t.rmdir(&format!("tree/d{i}"))?;
    }
    out.push(rate("rmdir_tree", "ops/s", n, start.elapsed()));
    t.rmdir("tree")?;

    t.mkdir("small")?;
    let data = vec![0x33u8; 4096];
    cold(s);
    let start = Instant::now();
    for i in 0..s.small {
        t.write_file(&format!("small/s{i}"), &data)?;
    }
    out.push(rate(
        "small_write_4k",
        "files/s",
        s.small as f64,
        start.elapsed(),
    ));
    cold(s);
    let mut buf = vec![0u8; 8192];
    let start = Instant::now();
    for i in 0..s.small {
        if t.read_file(&format!("small/s{i}"), &mut buf)? != 4096 {
            bail!("small file s{i} is not 4 KiB");
        }
    }
    out.push(rate(
        "small_read_4k",
        "files/s",
        s.small as f64,
        start.elapsed(),
    ));
    for i in 0..s.small {
        t.unlink(&format!("small/s{i}"))?;
    }
    t.rmdir("small")?;
    Ok(())
}

/// Files the default tar holds at least (unless `--quick`): about as many as the 3,491 of the
/// maintainers' fsbench tree, so that one extraction takes long enough to measure steadily.
const TAR_FILES: usize = 3_500;

/// The default tar: a real source tree, made once in a temporary directory. This repository's
/// tracked files and, unless `quick`, the sources of the crates its `Cargo.lock` pins, as
/// Cargo's registry holds them, whole crates in name order until [`TAR_FILES`] files. Returns
/// the tar and what it holds; None outside a git checkout.
fn source_tar(scratch: &Path, quick: bool) -> anyhow::Result<Option<(PathBuf, String)>> {
    let files = Command::new("git").args(["ls-files", "-z"]).output();
    let Some(files) = files
        .ok()
        .filter(|o| o.status.success() && !o.stdout.is_empty())
    else {
        return Ok(None);
    };
    let mut count = files.stdout.iter().filter(|&&b| b == 0).count();
    let list = scratch.join("files");
    fs::write(&list, &files.stdout)?;
    let mut crates = Vec::new();
    if !quick {
        for (dir, name) in locked_sources()? {
            if count >= TAR_FILES {
                break;
            }
            count += files_under(&dir.join(&name));
            crates.push((dir, name));
        }
    }
    let tar = scratch.join("source.tar");
    let mut cmd = Command::new("tar");
    cmd.arg("-cf").arg(&tar);
    for (dir, name) in &crates {
        cmd.arg("-C").arg(dir).arg(name);
    }
    let here = std::env::current_dir()?;
    cmd.arg("-C").arg(&here).arg("--null").arg("-T").arg(&list);
    if !cmd.status()?.success() {
        return Ok(None);
    }
    let what = format!(
        "{count} files: this repository and the sources of {} crates it depends on",
        crates.len()
    );
    Ok(Some((tar, what)))
}

/// The registry crates `Cargo.lock` (at the top of this checkout) pins whose sources Cargo's
/// registry holds, in name order: (registry source directory, `NAME-VERSION`).
fn locked_sources() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let top = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()?;
    let top = PathBuf::from(String::from_utf8_lossy(&top.stdout).trim());
    let Ok(lock) = fs::read_to_string(top.join("Cargo.lock")) else {
        return Ok(Vec::new());
    };
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    // Absolute: tar takes each relative -C from the one before.
    let Some(home) = home.and_then(|h| fs::canonicalize(h).ok()) else {
        return Ok(Vec::new());
    };
    let mut registries: Vec<PathBuf> = fs::read_dir(home.join("registry/src"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    registries.sort();
    let mut out: Vec<(PathBuf, String)> = locked_registry_crates(&lock)
        .into_iter()
        .filter_map(|name| {
            let dir = registries.iter().find(|r| r.join(&name).is_dir())?;
            Some((dir.clone(), name))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// `NAME-VERSION` of each package from a registry in a `Cargo.lock`'s text.
fn locked_registry_crates(lock: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut name, mut version, mut registry) = (None, None, false);
    let mut done = |name: &mut Option<&str>, version: &mut Option<&str>, registry: &mut bool| {
        if let (Some(n), Some(v), true) = (name.take(), version.take(), *registry) {
            out.push(format!("{n}-{v}"));
        }
        *registry = false;
    };
    for line in lock.lines() {
        let line = line.trim();
        // Every table (a package, or a `[[patch.unused]]` after them) ends the one before.
        if line.starts_with('[') {
            done(&mut name, &mut version, &mut registry);
        }
        let value = |key: &str| {
            line.strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix('='))
                .map(|r| r.trim().trim_matches('"'))
        };
        if let Some(v) = value("name") {
            name = Some(v);
        } else if let Some(v) = value("version") {
            version = Some(v);
        } else if let Some(v) = value("source") {
            registry = v.starts_with("registry+");
        }
    }
    done(&mut name, &mut version, &mut registry);
    out
}

/// Regular files and symlinks under `dir`, at any depth.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// The median of `s.untars` extractions, each into a new directory and from cold: a single
/// sample of a small tar is mostly what else the machine did at that moment.
fn untar(dir: &Path, tar: &Path, s: &Sizes, out: &mut Vec<Metric>) -> anyhow::Result<()> {
    let mut took = Vec::with_capacity(s.untars);
    for round in 0..s.untars {
        let d = dir.join(format!("untar{round}"));
        fs::create_dir(&d)?;
        cold(s);
        let start = Instant::now();
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(&d)
            .status()?
            .success();
        // SAFETY: sync(2) has no memory effects.
        unsafe { libc::sync() };
        if !ok {
            bail!("tar could not extract {}", tar.display());
        }
        took.push(start.elapsed());
        fs::remove_dir_all(&d)?;
    }
    took.sort_unstable();
    out.push(time("untar", took[took.len() / 2]));
    Ok(())
}

/// Waits until `ok` holds (what another mount does shows on this one), 30 s at most.
fn wait_until(what: impl std::fmt::Display, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} never showed the other mount's change");
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Waits until `path` holds exactly `want` (another mount is writing it).
fn wait_for(path: &Path, want: &[u8]) -> anyhow::Result<()> {
    wait_until(path.display(), || {
        fs::read(path).is_ok_and(|got| got == want)
    })
}

/// Two clients on one directory: `a` and `b` are the same directory seen through two mounts
/// (or twice the same path, for a target with no second mount). A ping-pong (a file written
/// on one is read back whole on the other, which answers with a file of its own: rounds/s,
/// the cost of coherence between clients), then both writing files into the directory at once
/// and each reading the other's (files/s).
fn two_mounts(a: &Path, b: &Path, s: &Sizes, out: &mut Vec<Metric>) -> anyhow::Result<()> {
    let n = (s.small / 5).max(10);
    let (da, db) = (a.join("shared"), b.join("shared"));
    fs::create_dir(&da)?;
    wait_until(db.display(), || db.is_dir())?;
    let ping: Vec<u8> = (0..4096).map(|i| (i % 241) as u8).collect();
    let pong: Vec<u8> = (0..4096).map(|i| (i % 239) as u8).collect();
    cold(s);
    let start = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let other = sc.spawn(|| -> anyhow::Result<()> {
            for i in 0..n {
                wait_for(&db.join(format!("ping{i}")), &ping)?;
                fs::write(db.join(format!("pong{i}")), &pong)?;
            }
            Ok(())
        });
        for i in 0..n {
            fs::write(da.join(format!("ping{i}")), &ping)?;
            wait_for(&da.join(format!("pong{i}")), &pong)?;
        }
        other
            .join()
            .map_err(|_| anyhow::anyhow!("the second client panicked"))?
    })?;
    out.push(rate(
        "two_mount_pingpong",
        "rounds/s",
        n as f64,
        start.elapsed(),
    ));

    let start = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let side = |mine: &Path, theirs: &Path, me: &'static str, them: &'static str| {
            let (mine, theirs) = (mine.to_path_buf(), theirs.to_path_buf());
            let data = &ping;
            sc.spawn(move || -> anyhow::Result<()> {
                for i in 0..n {
                    fs::write(mine.join(format!("{me}{i}")), data)?;
                }
                for i in 0..n {
                    wait_for(&theirs.join(format!("{them}{i}")), data)?;
                }
                Ok(())
            })
        };
        let x = side(&da, &da, "a", "b");
        let y = side(&db, &db, "b", "a");
        for t in [x, y] {
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    out.push(rate(
        "two_mount_share",
        "files/s",
        (4 * n) as f64,
        start.elapsed(),
    ));
    fs::remove_dir_all(&da)?;
    Ok(())
}

/// Every workload picked against the mounted directory `target` (a scratch directory in it).
fn measure(
    target: &Path,
    second: Option<&Path>,
    label: &str,
    s: &Sizes,
    tar: Option<&Path>,
    only: &[Workload],
) -> anyhow::Result<Vec<Metric>> {
    let scratch = scratch_name();
    let dir = target.join(&scratch);
    fs::create_dir(&dir).with_context(|| format!("{} is not writable", target.display()))?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let other = second.map_or_else(|| dir.clone(), |m| m.join(&scratch));
    workloads(&Dir(dir), Some(&other), label, s, tar, only)
}

/// The scratch directory's name in each target.
fn scratch_name() -> String {
    format!(".shoal-bench.{}", std::process::id())
}

/// Every workload picked against the cluster at `mds` through the client library.
fn measure_library(
    mds: &[String],
    label: &str,
    s: &Sizes,
    only: &[Workload],
) -> anyhow::Result<Vec<Metric>> {
    let lib = Library::start(mds, &scratch_name())?;
    let out = workloads(&lib, None, label, s, None, only);
    let cleaned = lib.finish();
    let out = out?;
    cleaned?;
    Ok(out)
}

/// Whether `w` is to run.
fn picked(only: &[Workload], w: Workload) -> bool {
    only.is_empty() || only.contains(&w)
}

/// The workloads picked against `t`; those that need a directory path (tar, two mounts) only
/// where it has one. `other`: the scratch directory through a second mount.
fn workloads<T: Target>(
    t: &T,
    other: Option<&Path>,
    label: &str,
    s: &Sizes,
    tar: Option<&Path>,
    only: &[Workload],
) -> anyhow::Result<Vec<Metric>> {
    let runs = |w: Workload| picked(only, w);
    let mut out = Vec::new();
    if runs(Workload::Seq) {
        progress(label, "sequential write and read");
        seq(t, s, &mut out)?;
    }
    if runs(Workload::Random) {
        progress(label, "random 4 KiB reads and writes");
        random_io(t, s, &mut out)?;
    }
    if runs(Workload::Metadata) {
        progress(
            label,
            "metadata: create, stat, readdir, unlink, mkdir and rmdir, small files",
        );
        metadata(t, s, &mut out)?;
    }
    let Some(dir) = t.dir() else {
        return Ok(out);
    };
    if let Some(tar) = tar.filter(|_| runs(Workload::Untar)) {
        progress(label, "tar extraction");
        untar(dir, tar, s, &mut out)?;
    }
    if runs(Workload::TwoMounts) {
        progress(label, "two clients on one directory");
        two_mounts(dir, other.unwrap_or(dir), s, &mut out)?;
    }
    Ok(out)
}

/// Every metric any target measured, in the order first seen, with each target's figure
/// (None where it did not measure it).
pub fn rows(results: &[Vec<Metric>]) -> Vec<(&Metric, Vec<Option<f64>>)> {
    let mut rows: Vec<(&Metric, Vec<Option<f64>>)> = Vec::new();
    for (t, r) in results.iter().enumerate() {
        for m in r {
            let i = match rows.iter().position(|(x, _)| x.name == m.name) {
                Some(i) => i,
                None => {
                    rows.push((m, vec![None; results.len()]));
                    rows.len() - 1
                }
            };
            rows[i].1[t] = Some(m.value);
        }
    }
    rows
}

/// `v` as a ratio to `base` (for times, base / v, so a ratio above 1 is always better).
pub fn ratio(m: &Metric, base: f64, v: f64) -> f64 {
    if m.higher_is_better {
        v / base.max(1e-12)
    } else {
        base / v.max(1e-12)
    }
}

/// The results table: each metric, each target's figure and its ratio to the first target
/// (for times, first / this, so a ratio above 1 is always better).
fn table(labels: &[String], results: &[Vec<Metric>]) -> String {
    let mut md = String::from("| metric | unit |");
    for l in labels {
        md += &format!(" {l} |");
    }
    for l in labels.iter().skip(1) {
        md += &format!(" {l} / {} |", labels[0]);
    }
    md += "\n|---|---|";
    md += &"---:|".repeat(labels.len() * 2 - 1);
    md += "\n";
    for (m, values) in rows(results) {
        md += &format!("| {} | {} |", m.name, m.unit);
        // Times are short: milliseconds show.
        let digits = if m.higher_is_better { 1 } else { 3 };
        for v in &values {
            match v {
                Some(v) => md += &format!(" {v:.digits$} |"),
                None => md += " — |",
            }
        }
        for v in values.iter().skip(1) {
            match (values[0], v) {
                (Some(base), Some(v)) => md += &format!(" {:.2} |", ratio(m, base, *v)),
                _ => md += " — |",
            }
        }
        md += "\n";
    }
    md
}

/// `shoal-bench run`.
pub fn run(a: &RunArgs) -> anyhow::Result<()> {
    let mut labels: Vec<String> = a
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            a.labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| t.display().to_string())
        })
        .collect();
    let library = a
        .library
        .as_deref()
        .map(shoal_client::mount::resolve_source)
        .transpose()
        .context("--library")?;
    let sizes = Sizes::of(a.quick);
    let scratch = tempfile::tempdir()?;
    let (tar, tar_what) = match &a.tar {
        Some(t) => (Some(t.clone()), t.display().to_string()),
        None => match source_tar(scratch.path(), a.quick)? {
            Some((t, what)) => (Some(t), what),
            None => (None, String::new()),
        },
    };
    if !drop_caches() {
        eprintln!("note: not root, so caches are not dropped before reads");
    }
    let watch = a.rss_of.as_deref().map(RssWatch::start).transpose()?;
    let count = |ws: &[Workload]| ws.iter().filter(|&&w| picked(&a.only, w)).count();
    let common = count(&[Workload::Seq, Workload::Random, Workload::Metadata]);
    let dir_only = count(&[Workload::TwoMounts])
        + usize::from(tar.is_some() && picked(&a.only, Workload::Untar));
    let steps = (common + dir_only) * a.targets.len() + common * usize::from(library.is_some());
    STEPS.1.store(steps as u64, Ordering::Relaxed);
    let mut results = Vec::new();
    for (i, (t, l)) in a.targets.iter().zip(&labels).enumerate() {
        let second = a.seconds.get(i).filter(|p| p.as_os_str() != "-");
        results.push(measure(
            t,
            second.map(|p| p.as_path()),
            l,
            &sizes,
            tar.as_deref(),
            &a.only,
        )?);
    }
    let mut names: Vec<String> = a.targets.iter().map(|t| t.display().to_string()).collect();
    if let Some(mds) = &library {
        labels.push(a.library_label.clone());
        names.push(format!("library:{}", mds.join(",")));
        results.push(measure_library(mds, &a.library_label, &sizes, &a.only)?);
    }
    let rss = watch.map(RssWatch::finish).unwrap_or_default();
    let mut md = table(&labels, &results);
    if tar.is_some() && picked(&a.only, Workload::Untar) {
        md += &format!("\nuntar: {tar_what}\n");
    }
    if !rss.is_empty() {
        md += "\n| process | peak RSS (MiB) | limit (MiB) |\n|---|---:|---:|\n";
        for (name, kib) in &rss {
            let limit = rss_limit_mib(name);
            let over = if kib / 1024 > limit { " (over)" } else { "" };
            md += &format!("| {name} | {:.1}{over} | {limit} |\n", *kib as f64 / 1024.0);
        }
    }
    print!("{md}");
    if let Some(p) = &a.plot {
        crate::plot::plot(p, &labels, &results)?;
    }
    if let Some(p) = &a.markdown {
        fs::write(p, &md)?;
    }
    if let Some(p) = &a.json {
        let v: Vec<serde_json::Value> = labels
            .iter()
            .zip(&names)
            .zip(&results)
            .map(|((l, t), r)| serde_json::json!({ "label": l, "target": t, "metrics": r }))
            .collect();
        fs::write(
            p,
            serde_json::to_vec_pretty(&serde_json::json!({
                "quick": a.quick,
                "untar": tar_what,
                "targets": v,
                "rss_peak_kib": rss.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            }))?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_takes_the_registry_crates_a_lock_file_pins() {
        let lock = r#"
version = 4

[[package]]
name = "shoal-bench"
version = "0.1.0"
dependencies = [
 "anyhow",
]

[[package]]
name = "anyhow"
version = "1.0.98"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "e16d2d3311acee920a9eb8d33b8cbc1787ce4a264e85f964c2404b969bdcd487"

[[package]]
name = "mine"
version = "0.2.0"
source = "git+https://example.org/mine#abc"

[[package]]
name = "bytes"
version = "1.10.1"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[patch.unused]]
name = "patched"
version = "9.9.9"
"#;
        assert_eq!(
            locked_registry_crates(lock),
            vec!["anyhow-1.0.98".to_string(), "bytes-1.10.1".to_string()]
        );
        assert!(locked_registry_crates("").is_empty());
        assert!(locked_registry_crates("[[package]]\nname = \"x\"\n").is_empty());
    }

    #[test]
    fn a_metric_a_target_did_not_measure_shows_a_dash() {
        let m = |name, v| Metric {
            name,
            unit: "ops/s",
            higher_is_better: true,
            value: v,
        };
        let results = vec![
            vec![m("create", 100.0), m("two_mount_share", 10.0)],
            vec![m("create", 200.0)],
        ];
        let t = table(&["shoal".into(), "library".into()], &results);
        assert!(
            t.contains("| create | ops/s | 100.0 | 200.0 | 2.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| two_mount_share | ops/s | 10.0 | — | — |"),
            "{t}"
        );
        let r = rows(&results);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].1, vec![Some(10.0), None]);
    }

    #[test]
    fn the_table_gives_ratios_to_the_first_target_better_above_one() {
        let m = |v, hi| Metric {
            name: if hi { "create" } else { "untar" },
            unit: if hi { "ops/s" } else { "s" },
            higher_is_better: hi,
            value: v,
        };
        let results = vec![
            vec![m(100.0, true), m(2.0, false)],
            vec![m(50.0, true), m(4.0, false)],
        ];
        let t = table(&["local".into(), "shoal".into()], &results);
        assert!(
            t.contains("| create | ops/s | 100.0 | 50.0 | 0.50 |"),
            "{t}"
        );
        assert!(t.contains("| untar | s | 2.000 | 4.000 | 0.50 |"), "{t}");
        assert!(t.starts_with("| metric | unit | local | shoal | shoal / local |"));
    }
}
