//! Daemon processes of an all-in-one cluster.
//!
//! Layout of a data directory: `cluster.json` (members and their ports, the mount point),
//! and one directory per daemon (`mds.0`, `osd.N`, `client.N`) holding its `pid`, `addr`
//! and `log`. `up` starts only daemons that are not running, in dependency order: MDS, then
//! OSDs, then the client mount.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shoal_client::mount::{lazy_unmount, mounted_fstype, wait_mounted};

/// One daemon's identity and the port it keeps across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Raft id (MDS) or OSD id.
    pub id: u64,
    /// TCP port on 127.0.0.1 (0 until first started).
    pub port: u16,
}

/// What `DIR/cluster.json` remembers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Metadata service members.
    pub mds: Vec<Member>,
    /// Object storage daemons.
    pub osds: Vec<Member>,
    /// Where `up` mounts the cluster (client.0), if anywhere.
    pub mount: Option<PathBuf>,
    /// Copies per object the cluster was created with.
    #[serde(default)]
    pub replicas: u32,
    /// Seconds without a heartbeat before the MDS marks an OSD down (0: the MDS default).
    #[serde(default)]
    pub osd_grace_secs: u64,
    /// Seconds an OSD stays down before it is marked out (0: the MDS default).
    #[serde(default)]
    pub osd_out_secs: u64,
    /// Seconds a silent client session lasts (0: the MDS default).
    #[serde(default)]
    pub session_timeout_secs: u64,
    /// Host labels the OSDs are spread over (OSD i on `host-<i % hosts>`); 0: one per OSD.
    #[serde(default)]
    pub hosts: u32,
    /// Raft log entries each MDS holds before compacting them into a snapshot (0: the MDS
    /// default).
    #[serde(default)]
    pub mds_log_entries: u64,
    /// Milliseconds a client's lease on an inode lasts (0: the MDS default).
    #[serde(default)]
    pub lease_ms: u64,
}

/// The failure-domain label of OSD `id` when OSDs are spread over `hosts` labels (0: one
/// label per OSD).
pub fn host_label(hosts: u32, id: u64) -> String {
    match hosts {
        0 => format!("host-{id}"),
        h => format!("host-{}", id % h as u64),
    }
}

impl ClusterFile {
    /// Reads `DIR/cluster.json`; `None` if the directory holds no cluster yet.
    pub fn load(dir: &Path) -> anyhow::Result<Option<ClusterFile>> {
        let path = dir.join("cluster.json");
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `DIR/cluster.json` atomically.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join("cluster.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, dir.join("cluster.json"))?;
        Ok(())
    }

    /// The MDS addresses, as clients and OSDs are given them.
    pub fn mds_addrs(&self) -> Vec<String> {
        self.mds
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect()
    }
}

/// A TCP port on 127.0.0.1 that is free now (the kernel picks it; it stays free unless
/// another program binds it before the daemon does).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Where the Shoal binaries are: beside this executable (or its parent, for test binaries
/// that live in `target/*/deps`).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let mut candidates = vec![dir.join(name)];
    if dir.ends_with("deps") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join(name));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "cannot find {name} beside {}; build the workspace first",
                exe.display()
            )
        })
}

/// The pid recorded for a daemon, if it is alive (not a zombie, and still a Shoal binary).
pub fn running_pid(dir: &Path, name: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(dir.join(name).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name: state first.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("shoal-")
        .then_some(pid)
}

/// Holds `DIR/names.lock` exclusively until dropped, for choosing a daemon name and starting
/// it (its pid file then claims the name).
pub fn lock_names(dir: &Path) -> anyhow::Result<fs::File> {
    let path = dir.join("names.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(f)
}

/// Starts a daemon with its output appended to `DIR/<name>/log`; records its pid.
pub fn spawn(dir: &Path, name: &str, exe: &Path, args: &[OsString]) -> anyhow::Result<Child> {
    let home = dir.join(name);
    fs::create_dir_all(&home)?;
    let _ = fs::remove_file(home.join("addr"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("log"))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: Ctrl-C on `shoal up` reaches us, and we stop daemons in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    shoal_proto::pidfile::write(&home.join("pid"), child.id())?;
    Ok(child)
}

/// Waits for a daemon to write `DIR/<name>/addr`, failing early if it exits.
pub fn wait_addr(
    dir: &Path,
    name: &str,
    child: &mut Child,
    limit: Duration,
) -> anyhow::Result<String> {
    let path = dir.join(name).join("addr");
    let start = Instant::now();
    loop {
        if let Ok(a) = fs::read_to_string(&path) {
            if !a.trim().is_empty() {
                return Ok(a.trim().to_string());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited ({status}) during start; see {}",
                dir.join(name).join("log").display()
            );
        }
        if start.elapsed() > limit {
            bail!("{name} did not start within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM, then SIGKILL after `grace`, and waits for the process to go.
pub fn stop_pid(pid: i32, grace: Duration) {
    // SAFETY: kill has no memory effects; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if zombie {
            return;
        }
        if start.elapsed() > grace {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a daemon by name if it runs.
pub fn stop(dir: &Path, name: &str) {
    if let Some(pid) = running_pid(dir, name) {
        stop_pid(pid, Duration::from_secs(10));
    }
}

/// Unmounts `mnt` (stopping the client that serves it) and clears a stale mount.
pub fn unmount(dir: Option<&Path>, client: &str, mnt: &Path) -> anyhow::Result<()> {
    if let Some(dir) = dir {
        stop(dir, client);
    }
    let stale = matches!(fs::metadata(mnt), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    if stale || mounted_fstype(mnt).is_some_and(|t| t.starts_with("fuse")) {
        lazy_unmount(mnt)?;
    }
    Ok(())
}

/// Starts a client mount of `mds` at `mnt` as daemon `DIR/<name>` and waits until it is live.
pub fn start_mount(
    dir: &Path,
    name: &str,
    mds: &[String],
    mnt: &Path,
    options: &[String],
) -> anyhow::Result<Child> {
    fs::create_dir_all(mnt).with_context(|| format!("creating mount point {}", mnt.display()))?;
    let mnt = mnt.canonicalize()?;
    if mounted_fstype(&mnt).is_some_and(|t| t.starts_with("fuse")) && fs::metadata(&mnt).is_ok() {
        bail!("{} is already mounted", mnt.display());
    }
    let pid_file = dir.join(name).join("pid");
    let mut args: Vec<OsString> = vec![
        "--mds".into(),
        mds.join(",").into(),
        mnt.clone().into(),
        "--pid-file".into(),
        pid_file.into(),
    ];
    for o in options {
        args.push("-o".into());
        args.push(o.into());
    }
    let mut child = spawn(dir, name, &bin_path("shoal-fuse")?, &args)?;
    wait_mounted(&mnt, &mut child, Duration::from_secs(60))?;
    Ok(child)
}
