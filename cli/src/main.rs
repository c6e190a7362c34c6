//! `shoal`: start, stop, mount and inspect a Shoal cluster.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shoal_cli::procs::{self, ClusterFile, Member};
use shoal_cli::status;

/// Shoal: a distributed POSIX filesystem.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start (or restart the stopped parts of) an all-in-one cluster on 127.0.0.1.
    Up(UpArgs),
    /// Unmount and stop every daemon of a cluster.
    Down(DataArg),
    /// Mount the cluster once more at MNT.
    Mount(MountArgs),
    /// Show MDS members, OSDs, PG states and a health word.
    Status(StatusArgs),
    /// Change the MDS group's membership, one member at a time.
    #[command(subcommand)]
    Mds(MdsCmd),
    /// Client sessions (listed by `shoal status`).
    #[command(subcommand)]
    Client(ClientCmd),
    /// Volumes: directories under /volumes/ with a quota on bytes and files, each mountable
    /// on its own (`shoal mount --volume NAME`).
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Scrub every PG now: compare the versions of all copies, or with --deep read every
    /// block of every copy, verify its crc32, compare the copies and repair bad ones.
    Scrub(ScrubArgs),
}

#[derive(Args, Debug)]
struct ScrubArgs {
    /// Cluster state directory (used unless --mds is given).
    #[arg(long, default_value = "shoal-data")]
    data: PathBuf,
    /// MDS address(es), comma-separated.
    #[arg(long)]
    mds: Option<String>,
    /// Read and compare every copy, not only versions.
    #[arg(long)]
    deep: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum MdsCmd {
    /// Add the MDS at ADDR (started with `shoal-mds --join --id N --listen ADDR`) to the
    /// group; it catches up from a snapshot of the leader.
    Add {
        /// The new member's address (IP:PORT).
        addr: String,
        #[command(flatten)]
        at: ClusterArg,
    },
    /// Remove member ID from the group (not the current leader); stop its daemon afterwards.
    Remove {
        /// The member's Raft id.
        id: u64,
        #[command(flatten)]
        at: ClusterArg,
    },
}

#[derive(Subcommand, Debug)]
enum VolumeCmd {
    /// Create volume NAME with a quota (creating it again with the same quota is a no-op).
    Create {
        /// 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'.
        name: String,
        /// Its size: the byte quota (e.g. 10GiB, 500M, 1048576).
        #[arg(long)]
        size: String,
        /// The most files and directories it may hold (default: no limit).
        #[arg(long)]
        max_files: Option<u64>,
        #[command(flatten)]
        at: ClusterArg,
    },
    /// Change volume NAME's quota.
    Resize {
        /// The volume.
        name: String,
        /// Its new size.
        #[arg(long)]
        size: String,
        /// Its new file limit (0: none; default: unchanged).
        #[arg(long)]
        max_files: Option<u64>,
        #[command(flatten)]
        at: ClusterArg,
    },
    /// List the volumes with their quota and usage.
    Ls {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: ClusterArg,
    },
    /// Remove volume NAME and everything in it.
    Rm {
        /// The volume.
        name: String,
        #[command(flatten)]
        at: ClusterArg,
    },
}

#[derive(Subcommand, Debug)]
enum ClientCmd {
    /// Evict client session ID (hex, as `shoal status` prints it): the OSDs and the MDS
    /// refuse it from now on, then its locks are released. The mount notices, fails what the
    /// old session had open with EIO, and carries on with a new session.
    Evict {
        /// The session id.
        id: String,
        #[command(flatten)]
        at: ClusterArg,
    },
}

#[derive(Args, Debug)]
struct ClusterArg {
    /// Cluster state directory (used unless --mds is given).
    #[arg(long, default_value = "shoal-data")]
    data: PathBuf,
    /// MDS address(es), comma-separated.
    #[arg(long)]
    mds: Option<String>,
}

#[derive(Args, Debug)]
struct DataArg {
    /// Cluster state directory.
    #[arg(long, default_value = "shoal-data")]
    data: PathBuf,
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Cluster state directory.
    #[arg(long, default_value = "shoal-data")]
    data: PathBuf,
    /// Mount the filesystem here.
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Number of MDS nodes (default 1).
    #[arg(long)]
    mds: Option<usize>,
    /// Number of OSDs (default 3).
    #[arg(long)]
    osds: Option<usize>,
    /// Copies of every object (default: 3, or the number of OSDs if fewer). Set when the
    /// cluster is created.
    #[arg(long)]
    replicas: Option<u32>,
    /// Spread the OSDs over this many host labels (OSD i on host-<i mod H>), as if they ran
    /// on H machines; copies of an object always go to different hosts. Default: one host
    /// per OSD. Set when the cluster is created.
    #[arg(long)]
    hosts: Option<u32>,
    /// Seconds without a heartbeat before an OSD is marked down (default 10).
    #[arg(long)]
    osd_grace: Option<u64>,
    /// Seconds an OSD stays down before it is marked out and its data re-replicated
    /// elsewhere (default 600).
    #[arg(long)]
    osd_out: Option<u64>,
    /// Seconds a client session may stay silent before the MDS ends it and releases its
    /// locks (default 60).
    #[arg(long)]
    session_timeout: Option<u64>,
    /// Raft log entries each MDS holds before it compacts them into its state (a member
    /// further behind catches up by snapshot; default 20000).
    #[arg(long)]
    mds_log_entries: Option<u64>,
    /// Milliseconds a client's lease on an inode lasts: how long it may cache what it read,
    /// and keep what it wrote, before asking again (default 2000).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Return once everything is up instead of staying in the foreground.
    #[arg(long)]
    detach: bool,
}

#[derive(Args, Debug)]
struct MountArgs {
    /// Cluster state directory (used unless --mds is given).
    #[arg(long, default_value = "shoal-data")]
    data: PathBuf,
    /// MDS address(es), comma-separated, instead of a data directory.
    #[arg(long)]
    mds: Option<String>,
    /// Mount volume NAME (see `shoal volume`) instead of the whole namespace: the volume's
    /// directory is the mount's root, and `df` shows its quota.
    #[arg(long)]
    volume: Option<String>,
    /// Mount options, comma-separated, as `mount -o` takes them (see the README), e.g.
    /// `ro,noentrycache`.
    #[arg(short = 'o', long)]
    options: Option<String>,
    /// Where to mount.
    mountpoint: PathBuf,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Cluster state directory (used unless --mds is given).
    #[arg(long, default_value = "shoal-data")]
    data: PathBuf,
    /// MDS address(es), comma-separated.
    #[arg(long)]
    mds: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Warn when an OSD's disk is more than this share used (0 to 1).
    #[arg(long, default_value_t = status::NEARFULL, value_parser = ratio)]
    nearfull_ratio: f64,
}

/// Parses a share between 0 and 1.
fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up(a) => up(a),
        Cmd::Down(a) => down(&a.data),
        Cmd::Mount(a) => mount(a),
        Cmd::Status(a) => status_cmd(a),
        Cmd::Scrub(a) => scrub_cmd(a),
        Cmd::Mds(c) => mds_cmd(c),
        Cmd::Client(c) => client_cmd(c),
        Cmd::Volume(v) => volume_cmd(v),
    };
    if let Err(e) = result {
        eprintln!("shoal: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    Ok(p.canonicalize()?)
}

fn port_of(addr: &str) -> anyhow::Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("bad address {addr:?}"))
}

/// Polls the MDS until `ready` holds for its status.
fn wait_status(
    addrs: &[String],
    what: &str,
    limit: Duration,
    ready: impl Fn(&shoal_proto::mds::StatusReply) -> bool,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let start = Instant::now();
    loop {
        match rt.block_on(status::fetch(addrs)) {
            Ok(st) if ready(&st) => return Ok(()),
            Ok(_) => {}
            Err(e) if start.elapsed() > limit => {
                return Err(e.context(format!("waiting for {what}")))
            }
            Err(_) => {}
        }
        if start.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.data)?;
    let mut cf = match ClusterFile::load(&dir)? {
        Some(cf) => {
            if a.mds.is_some_and(|n| n != cf.mds.len())
                || a.osds.is_some_and(|n| n < cf.osds.len())
                || a.replicas.is_some_and(|r| r != cf.replicas)
                || a.hosts.is_some_and(|h| h != cf.hosts)
            {
                bail!(
                    "{} holds a cluster of {} MDS and {} OSDs with {} replicas; only adding OSDs is supported so far",
                    dir.display(),
                    cf.mds.len(),
                    cf.osds.len(),
                    cf.replicas
                );
            }
            let mut cf = cf;
            // More OSDs: new members join, and PGs backfill onto them.
            while a.osds.is_some_and(|n| n > cf.osds.len()) {
                let id = cf.osds.iter().map(|o| o.id + 1).max().unwrap_or(0);
                cf.osds.push(Member { id, port: 0 });
            }
            cf
        }
        None => {
            let (n_mds, n_osds) = (a.mds.unwrap_or(1), a.osds.unwrap_or(3));
            if n_osds == 0 {
                bail!("--osds must be at least 1");
            }
            let replicas = a.replicas.unwrap_or(3.min(n_osds as u32));
            if !(1..=16).contains(&replicas) {
                bail!("--replicas must be 1 to 16");
            }
            if replicas as usize > n_osds {
                bail!("--replicas {replicas} needs at least {replicas} OSDs (each copy on its own host)");
            }
            let hosts = a.hosts.unwrap_or(0);
            if hosts > 0 && replicas > hosts {
                bail!("--replicas {replicas} needs at least {replicas} hosts (--hosts {hosts})");
            }
            ClusterFile {
                mds: (1..=n_mds as u64)
                    .map(|id| Member { id, port: 0 })
                    .collect(),
                osds: (0..n_osds as u64)
                    .map(|id| Member { id, port: 0 })
                    .collect(),
                mount: None,
                replicas,
                osd_grace_secs: 0,
                osd_out_secs: 0,
                session_timeout_secs: 0,
                hosts,
                mds_log_entries: 0,
                lease_ms: 0,
            }
        }
    };
    if let Some(g) = a.osd_grace {
        cf.osd_grace_secs = g;
    }
    if let Some(o) = a.osd_out {
        cf.osd_out_secs = o;
    }
    if let Some(t) = a.session_timeout {
        if t == 0 {
            bail!("--session-timeout must be at least 1 second");
        }
        cf.session_timeout_secs = t;
    }
    if let Some(n) = a.mds_log_entries {
        if n < 4 {
            bail!("--mds-log-entries must be at least 4");
        }
        cf.mds_log_entries = n;
    }
    if let Some(ms) = a.lease_ms {
        if !(100..=600_000).contains(&ms) {
            bail!("--lease-ms must be between 100 and 600000");
        }
        cf.lease_ms = ms;
    }
    if !matches!(cf.mds.len(), 1 | 3 | 5) {
        bail!("--mds must be 1, 3 or 5 (a Raft group needs an odd number of members)");
    }
    // Members find each other by address, so every port is chosen before any member starts.
    for m in cf.mds.iter_mut().filter(|m| m.port == 0) {
        m.port = procs::free_port()?;
    }
    let peers = cf
        .mds
        .iter()
        .map(|m| format!("{}=127.0.0.1:{}", m.id, m.port))
        .collect::<Vec<_>>()
        .join(",");
    if let Some(m) = &a.mount {
        cf.mount = Some(absolute(m)?);
    }
    let mut children: Vec<(String, Child)> = Vec::new();
    let limit = Duration::from_secs(60);

    for (i, m) in cf.mds.iter_mut().enumerate() {
        let name = format!("mds.{i}");
        if procs::running_pid(&dir, &name).is_some() {
            continue;
        }
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            m.id.to_string().into(),
            "--data".into(),
            dir.join(&name).into(),
            "--listen".into(),
            format!("127.0.0.1:{}", m.port).into(),
            "--peers".into(),
            peers.clone().into(),
        ];
        for (flag, v) in [
            ("--pool-size", cf.replicas as u64),
            ("--osd-grace-secs", cf.osd_grace_secs),
            ("--osd-out-secs", cf.osd_out_secs),
            ("--session-timeout-secs", cf.session_timeout_secs),
            ("--log-compact-entries", cf.mds_log_entries),
            ("--log-keep-entries", cf.mds_log_entries / 4),
            ("--lease-ms", cf.lease_ms),
        ] {
            if v > 0 {
                args.push(flag.into());
                args.push(v.to_string().into());
            }
        }
        let mut child = procs::spawn(&dir, &name, &procs::bin_path("shoal-mds")?, &args)?;
        m.port = port_of(&procs::wait_addr(&dir, &name, &mut child, limit)?)?;
        children.push((name, child));
    }
    cf.save(&dir)?;
    let mds = cf.mds_addrs();
    wait_status(&mds, "an MDS leader", limit, |st| {
        st.leader_id != 0 && st.bootstrapped
    })?;

    let hosts = cf.hosts;
    for o in cf.osds.iter_mut() {
        let name = format!("osd.{}", o.id);
        if procs::running_pid(&dir, &name).is_some() {
            continue;
        }
        let args: Vec<OsString> = vec![
            "--id".into(),
            o.id.to_string().into(),
            "--data".into(),
            dir.join(&name).into(),
            "--listen".into(),
            format!("127.0.0.1:{}", o.port).into(),
            "--mds".into(),
            mds.join(",").into(),
            "--host".into(),
            procs::host_label(hosts, o.id).into(),
        ];
        let mut child = procs::spawn(&dir, &name, &procs::bin_path("shoal-osd")?, &args)?;
        o.port = port_of(&procs::wait_addr(&dir, &name, &mut child, limit)?)?;
        children.push((name, child));
    }
    cf.save(&dir)?;
    let n_osds = cf.osds.len();
    wait_status(&mds, "every OSD to report", limit, |st| {
        st.osd_map
            .as_ref()
            .is_some_and(|m| m.osds.iter().filter(|o| o.up).count() == n_osds)
    })?;

    if let Some(mnt) = &cf.mount {
        let live = procs::running_pid(&dir, "client.0").is_some() && fs::metadata(mnt).is_ok();
        if !live {
            procs::unmount(Some(&dir), "client.0", mnt)?;
            fs::create_dir_all(dir.join("client.0"))?;
            fs::write(
                dir.join("client.0").join("mountpoint"),
                mnt.as_os_str().as_encoded_bytes(),
            )?;
            let child = procs::start_mount(&dir, "client.0", &mds, mnt, &[])?;
            children.push(("client.0".into(), child));
        }
    }

    let rt = runtime()?;
    if let Ok(st) = rt.block_on(status::fetch(&mds)) {
        print!("{}", status::render(&status::report(&st, status::NEARFULL)));
    }
    match &cf.mount {
        Some(m) => println!(
            "Shoal is up: data in {}, mounted at {}",
            dir.display(),
            m.display()
        ),
        None => println!(
            "Shoal is up: data in {}, MDS at {}",
            dir.display(),
            mds.join(",")
        ),
    }
    if a.detach {
        return Ok(());
    }
    println!("Press Ctrl-C to stop it.");
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    // Reap daemons that exit, and say so.
                    children.retain_mut(|(name, child)| match child.try_wait() {
                        Ok(Some(status)) => {
                            eprintln!("shoal: {name} exited ({status}); `shoal up` restarts it");
                            false
                        }
                        _ => true,
                    });
                }
            }
        }
        anyhow::Ok(())
    })?;
    println!("stopping...");
    down(&dir)?;
    for (_, mut child) in children {
        let _ = child.wait();
    }
    Ok(())
}

fn down(data: &Path) -> anyhow::Result<()> {
    let dir = data
        .canonicalize()
        .with_context(|| format!("no cluster at {}", data.display()))?;
    let Some(cf) = ClusterFile::load(&dir)? else {
        bail!("no cluster at {} (cluster.json missing)", dir.display());
    };
    let mut names: Vec<String> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("client."))
        .collect();
    names.sort();
    for name in &names {
        let mnt = fs::read(dir.join(name).join("mountpoint"))
            .ok()
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
        match mnt {
            Some(m) => procs::unmount(Some(&dir), name, &m)?,
            None => procs::stop(&dir, name),
        }
    }
    for o in &cf.osds {
        procs::stop(&dir, &format!("osd.{}", o.id));
    }
    for i in 0..cf.mds.len() {
        procs::stop(&dir, &format!("mds.{i}"));
    }
    println!("Shoal at {} is down", dir.display());
    Ok(())
}

fn mount(a: MountArgs) -> anyhow::Result<()> {
    if let Some(v) = &a.volume {
        shoal_client::volumes::check_name(v)?;
    }
    let mut options: Vec<String> = a.volume.iter().map(|v| format!("volume={v}")).collect();
    options.extend(a.options.iter().cloned());
    match a.mds {
        Some(addrs) => {
            let mds = shoal_client::mount::resolve_source(&addrs)?;
            fs::create_dir_all(&a.mountpoint)?;
            let mnt = a.mountpoint.canonicalize()?;
            let mut cmd = std::process::Command::new(procs::bin_path("shoal-fuse")?);
            use std::os::unix::process::CommandExt;
            for o in &options {
                cmd.arg("-o").arg(o);
            }
            let mut child = cmd
                .arg("--mds")
                .arg(mds.join(","))
                .arg(&mnt)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()?;
            shoal_client::mount::wait_mounted(&mnt, &mut child, Duration::from_secs(60))?;
            println!(
                "mounted at {} (stop with: umount {})",
                mnt.display(),
                mnt.display()
            );
        }
        None => {
            let dir = a
                .data
                .canonicalize()
                .with_context(|| format!("no cluster at {}", a.data.display()))?;
            let Some(cf) = ClusterFile::load(&dir)? else {
                bail!("no cluster at {} (cluster.json missing)", dir.display());
            };
            // Two `shoal mount`s at once would both pick the first free name.
            let _names = procs::lock_names(&dir)?;
            let name = (1..)
                .map(|n| format!("client.{n}"))
                .find(|n| procs::running_pid(&dir, n).is_none())
                .context("no free client name")?;
            fs::create_dir_all(dir.join(&name))?;
            let mnt = absolute(&a.mountpoint)?;
            fs::write(
                dir.join(&name).join("mountpoint"),
                mnt.as_os_str().as_encoded_bytes(),
            )?;
            procs::start_mount(&dir, &name, &cf.mds_addrs(), &mnt, &options)?;
            println!("mounted at {} as {name}", mnt.display());
        }
    }
    Ok(())
}

/// MDS addresses from --mds, or from the cluster file in DATA.
fn mds_addrs(mds: Option<String>, data: &Path) -> anyhow::Result<Vec<String>> {
    Ok(match mds {
        Some(m) => shoal_client::mount::resolve_source(&m)?,
        None => {
            let Some(cf) = ClusterFile::load(data)? else {
                bail!(
                    "no cluster at {} (cluster.json missing); use --mds ADDR",
                    data.display()
                );
            };
            cf.mds_addrs()
        }
    })
}

fn scrub_cmd(a: ScrubArgs) -> anyhow::Result<()> {
    let addrs = mds_addrs(a.mds, &a.data)?;
    let rt = runtime()?;
    let totals = rt.block_on(status::scrub(&addrs, a.deep))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&totals)?);
    } else {
        println!(
            "{} scrub: {} objects on {} OSDs, {} bad copies found, {} repaired",
            if a.deep { "deep" } else { "light" },
            totals.objects,
            totals.osds,
            totals.inconsistent,
            totals.repaired
        );
        for e in &totals.errors {
            println!("  - {e}");
        }
    }
    if !totals.errors.is_empty() || totals.repaired < totals.inconsistent {
        std::process::exit(1);
    }
    Ok(())
}

fn mds_cmd(c: MdsCmd) -> anyhow::Result<()> {
    use shoal_proto::mds::{ChangeMembersRequest, StatusRequest};
    let rt = runtime()?;
    let (req, at) = match c {
        MdsCmd::Add { addr, at } => {
            // The new daemon says who it is; it must not belong to a group yet.
            let joiner = rt
                .block_on(status::call_leader(
                    std::slice::from_ref(&addr),
                    |mut c| async move { c.status(StatusRequest {}).await.map(|r| r.into_inner()) },
                ))
                .with_context(|| format!("no MDS answers at {addr}"))?;
            if !joiner.members.is_empty() || joiner.leader_id != 0 {
                bail!(
                    "the MDS at {addr} (id {}) already belongs to a group",
                    joiner.self_id
                );
            }
            let req = ChangeMembersRequest {
                add_id: joiner.self_id,
                add_addr: addr,
                remove_id: 0,
            };
            (req, at)
        }
        MdsCmd::Remove { id, at } => {
            let req = ChangeMembersRequest {
                remove_id: id,
                ..Default::default()
            };
            (req, at)
        }
    };
    let addrs = mds_addrs(at.mds, &at.data)?;
    let what = if req.add_id != 0 {
        format!("added mds id {} at {}", req.add_id, req.add_addr)
    } else {
        format!("removed mds id {}", req.remove_id)
    };
    let reply = rt.block_on(status::call_leader(&addrs, |mut c| {
        let req = req.clone();
        async move { c.change_members(req).await.map(|r| r.into_inner()) }
    }))?;
    println!("{what}; members now {:?}", reply.voters);
    Ok(())
}

fn client_cmd(c: ClientCmd) -> anyhow::Result<()> {
    let ClientCmd::Evict { id, at } = c;
    let session = u64::from_str_radix(id.trim_start_matches("0x"), 16)
        .ok()
        .filter(|&s| s != 0)
        .with_context(|| format!("{id:?} is not a session id (hex, from `shoal status`)"))?;
    let addrs = mds_addrs(at.mds, &at.data)?;
    let rt = runtime()?;
    rt.block_on(status::call_leader(&addrs, |mut c| async move {
        let req = shoal_proto::mds::EndSessionRequest {
            session,
            evict: true,
        };
        c.end_session(req).await.map(|r| r.into_inner())
    }))?;
    println!("evicted session {session:016x}: fenced at the OSDs, its locks released");
    Ok(())
}

fn volume_cmd(v: VolumeCmd) -> anyhow::Result<()> {
    use shoal_cli::volume::{self, parse_size};
    use shoal_client::volumes;
    let at = match &v {
        VolumeCmd::Create { at, .. }
        | VolumeCmd::Resize { at, .. }
        | VolumeCmd::Ls { at, .. }
        | VolumeCmd::Rm { at, .. } => at,
    };
    let addrs = mds_addrs(at.mds.clone(), &at.data)?;
    let rt = runtime()?;
    rt.block_on(async {
        let c = volume::connect(&addrs).await?;
        match v {
            VolumeCmd::Create {
                name,
                size,
                max_files,
                ..
            } => volume::create(&c, &name, parse_size(&size)?, max_files.unwrap_or(0)).await,
            VolumeCmd::Resize {
                name,
                size,
                max_files,
                ..
            } => {
                let v = volumes::resize(&c, &name, parse_size(&size)?, max_files).await?;
                println!("volume {}: {}", v.name, volume::human(v.max_bytes));
                Ok(())
            }
            VolumeCmd::Ls { json, .. } => {
                let vols = volumes::list(&c).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&vols)?);
                } else {
                    print!("{}", volume::render(&vols));
                }
                Ok(())
            }
            VolumeCmd::Rm { name, .. } => {
                if volumes::remove(&c, &name).await? {
                    println!("volume {name} removed");
                } else {
                    println!("no volume {name}: nothing to remove");
                }
                Ok(())
            }
        }
    })
}

fn status_cmd(a: StatusArgs) -> anyhow::Result<()> {
    let addrs = mds_addrs(a.mds, &a.data)?;
    let rt = runtime()?;
    match rt.block_on(status::fetch(&addrs)) {
        Ok(st) => {
            let r = status::report(&st, a.nearfull_ratio);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", status::render(&r));
            }
            Ok(())
        }
        Err(e) => {
            let reason = format!("no MDS answers at {}: {e:#}", addrs.join(","));
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"health": "HEALTH_ERR", "reasons": [reason]})
                );
            } else {
                println!("health: HEALTH_ERR\n  - {reason}");
            }
            std::process::exit(1);
        }
    }
}
