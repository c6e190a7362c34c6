//! Serving a mount: option parsing, stale-mount cleanup, the `mount.fuse.shoal` helper, and
//! [`run`], which serves until the filesystem is unmounted or the process is told to stop.
//!
//! `mount -t fuse.shoal SOURCE MNT -o OPTS` runs `mount.fuse.shoal SOURCE MNT -o OPTS` (a link
//! to `shoal-fuse`). SOURCE is `ADDR[,ADDR...]` of MDS members, or a cluster's data directory
//! (`shoal up --data DIR`), whose `mds.*/addr` files name them. The helper starts the mount in
//! the background and returns once it is live, as mount(8) expects.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fuser::{MountOption, Notifier, SessionACL};
use tracing::{info, warn};

use crate::fuse::ShoalFs;
use crate::session::Session;

/// Everything a mount needs.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// MDS addresses.
    pub mds: Vec<String>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// `-o` options (comma-separated lists allowed).
    pub options: Vec<String>,
    /// How long a call is retried while a daemon is unreachable before the application gets
    /// ETIMEDOUT.
    pub retry_for: Duration,
    /// Written with our pid once mounted.
    pub pid_file: Option<PathBuf>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            mds: Vec::new(),
            mountpoint: PathBuf::new(),
            options: Vec::new(),
            retry_for: Duration::from_secs(60),
            pid_file: None,
        }
    }
}

/// The mount options and access mode for a list of `-o` options; unknown ones are reported
/// and ignored, as mount(8) passes generic ones (`_netdev`, `noauto`, `user`, ...) along.
pub fn fuse_options(opts: &[String], fsname: &str) -> (Vec<MountOption>, SessionACL) {
    let mut out = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("shoal".into()),
        MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let mut acl = if root {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    for o in opts
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        match o {
            "ro" => out.push(MountOption::RO),
            "rw" => out.push(MountOption::RW),
            "allow_other" => acl = SessionACL::All,
            "allow_root" => acl = SessionACL::RootAndOwner,
            "noatime" => out.push(MountOption::NoAtime),
            "nosuid" => out.push(MountOption::NoSuid),
            "suid" => out.push(MountOption::Suid),
            "nodev" => out.push(MountOption::NoDev),
            "dev" => out.push(MountOption::Dev),
            "noexec" => out.push(MountOption::NoExec),
            "exec" => out.push(MountOption::Exec),
            "defaults" | "auto" | "noauto" | "_netdev" | "user" | "nouser" | "users" | "nofail" => {
            }
            // Shoal's own: which tree the mount shows (see `volume_option`), how far the
            // kernel reads ahead (`rasize_option`).
            o if o.starts_with("volume=") || o.starts_with("rasize=") => {}
            other => warn!(option = other, "ignoring unknown mount option"),
        }
    }
    (out, acl)
}

/// How far the kernel reads ahead of sequential reads unless `-o rasize=` says otherwise:
/// 4 MiB, which doubles a 1 GiB sequential read here against the kernel's 128 KiB (reads
/// are spread over many objects and OSDs in parallel).
pub const DEFAULT_RASIZE: u64 = 4 << 20;

/// `-o rasize=BYTES` (a `k`, `m` or `g` suffix allowed; 0: the kernel's default), rounded
/// up to 4 KiB, at most 1 GiB.
pub fn rasize_option(opts: &[String]) -> anyhow::Result<u64> {
    let Some(v) = opts
        .iter()
        .flat_map(|s| s.split(','))
        .filter_map(|o| o.strip_prefix("rasize="))
        .next_back()
    else {
        return Ok(DEFAULT_RASIZE);
    };
    let (num, unit) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let bytes = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&b| b <= 1 << 30)
        .with_context(|| format!("rasize={v}: not a size of at most 1 GiB"))?;
    Ok(bytes.div_ceil(4096) * 4096)
}

/// The volume a mount shows (`-o volume=NAME`), if one is named.
pub fn volume_option(opts: &[String]) -> Option<String> {
    opts.iter()
        .flat_map(|s| s.split(','))
        .filter_map(|o| o.strip_prefix("volume="))
        .next_back()
        .map(str::to_string)
}

/// MDS addresses from a mount source: `ADDR[,ADDR...]` or a cluster data directory.
pub fn resolve_source(source: &str) -> anyhow::Result<Vec<String>> {
    let dir = Path::new(source);
    if dir.is_dir() {
        let mut addrs = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("mds.") {
                if let Ok(a) = std::fs::read_to_string(e.path().join("addr")) {
                    addrs.push(a.trim().to_string());
                }
            }
        }
        if addrs.is_empty() {
            bail!("{source} holds no mds.*/addr: is it a Shoal data directory?");
        }
        addrs.sort();
        return Ok(addrs);
    }
    let addrs: Vec<String> = source
        .split(',')
        .map(|s| s.trim().trim_start_matches("shoal://").to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for a in &addrs {
        if !a.contains(':') {
            bail!("mount source {a:?} is not HOST:PORT nor a data directory");
        }
    }
    if addrs.is_empty() {
        bail!("empty mount source");
    }
    Ok(addrs)
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The line of /proc/self/mountinfo of the topmost mount at `path`, if any.
fn mountinfo_line(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines()
        .rev()
        .find(|line| {
            line.split(' ')
                .nth(4)
                .is_some_and(|mnt| unescape_mountinfo(mnt) == want)
        })
        .map(str::to_string)
}

/// The filesystem type mounted at `path`, if any.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    let line = mountinfo_line(path)?;
    // Fields after the " - " separator: fstype, source, options.
    Some(line.split(" - ").nth(1)?.split(' ').next()?.to_string())
}

/// The device number (`MAJOR:MINOR`) of the mount at `path`, if any.
pub fn mounted_device(path: &Path) -> Option<String> {
    Some(mountinfo_line(path)?.split(' ').nth(2)?.to_string())
}

/// Sets how far the kernel reads ahead on the mount at `path` (its backing device's
/// `read_ahead_kb`). Call once the mount answers: the kernel's FUSE handshake resets it.
pub fn set_readahead(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let dev =
        mounted_device(path).with_context(|| format!("nothing mounted at {}", path.display()))?;
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    std::fs::write(&knob, (bytes / 1024).to_string()).with_context(|| format!("writing {knob}"))
}

/// Unmounts a mount left behind by a client that died ("Transport endpoint is not
/// connected"), so the directory can be mounted again.
pub fn clear_stale_mount(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(path = %path.display(), "clearing a stale mount");
            lazy_unmount(path)
        }
        _ => Ok(()),
    }
}

/// Detaches whatever is mounted at `path` (root: umount2; otherwise fusermount3 -uz).
pub fn lazy_unmount(path: &Path) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .context("running fusermount3")?;
    if !status.success() {
        bail!("cannot unmount {}", path.display());
    }
    Ok(())
}

/// Mounts and serves until unmounted or until `shutdown` resolves (then unmounts).
pub fn run(
    cfg: MountConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal-client")
        .build()?;
    clear_stale_mount(&cfg.mountpoint)?;
    let mnt = cfg
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", cfg.mountpoint.display()))?;
    let notifier: Arc<OnceLock<Notifier>> = Arc::default();
    let volume = volume_option(&cfg.options);
    let rasize = rasize_option(&cfg.options)?;
    let shoal = rt.block_on(Session::start(
        &cfg.mds,
        cfg.retry_for,
        volume.as_deref(),
        &mnt.display().to_string(),
        notifier.clone(),
    ))?;
    let fs = ShoalFs::new(
        shoal.client().clone(),
        rt.handle().clone(),
        notifier.clone(),
    );
    let (options, acl) = fuse_options(&cfg.options, &format!("shoal:{}", cfg.mds.join(",")));
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = acl;
    config.n_threads = Some(2);
    let mut session = fuser::Session::new(fs, &mnt, &config)
        .with_context(|| format!("mounting at {}", mnt.display()))?;
    let _ = notifier.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    if let Some(p) = &cfg.pid_file {
        std::fs::write(p, std::process::id().to_string())?;
    }
    info!(mountpoint = %mnt.display(), "mounted");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })?;
    if rasize > 0 {
        let at = mnt.clone();
        rt.spawn_blocking(move || {
            // Answered once the kernel's handshake is done, which would undo an earlier
            // setting.
            let _ = std::fs::metadata(&at);
            match set_readahead(&at, rasize) {
                Ok(()) => info!(bytes = rasize, "readahead set"),
                Err(e) => warn!(error = %format!("{e:#}"), "cannot set the mount's readahead"),
            }
        });
    }
    let served = rt.block_on(async {
        tokio::pin!(rx);
        tokio::select! {
            r = &mut rx => {
                info!("unmounted");
                r.unwrap_or(Ok(())).context("fuse session")
            }
            _ = shutdown => {
                info!("stopping: unmounting");
                if let Err(e) = unmounter.unmount() {
                    warn!(error = %e, "unmount failed; detaching");
                    lazy_unmount(&mnt)?;
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
                Ok(())
            }
        }
    });
    // Unmounted: end the session so its locks go at once, not after the timeout.
    rt.block_on(shoal.end());
    served
}

/// `mount.fuse.shoal SOURCE MNT [-o OPTS] [-n] [-s] [-f] [-v]`: starts `shoal-fuse` in the
/// background and returns once the mount is live.
pub fn helper_main(args: &[OsString]) -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => opts.push(
                it.next()
                    .and_then(|o| o.to_str())
                    .context("-o needs an option list")?
                    .to_string(),
            ),
            Some(s) if s.starts_with("-o") => opts.push(s[2..].to_string()),
            Some("-n" | "-s" | "-f" | "-v" | "-N") => {}
            Some(s) if s.starts_with('-') && s.len() > 1 && !s.contains(':') => {
                bail!("unknown flag {s}")
            }
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [source, mnt] = positional.as_slice() else {
        bail!("usage: mount.fuse.shoal SOURCE MOUNTPOINT [-o OPTIONS]");
    };
    let source = source.to_string_lossy();
    let mds = resolve_source(&source)?;
    // Refused here, with the reason, rather than by the daemon after mount(8) returned.
    rasize_option(&opts)?;
    let mnt = mnt
        .canonicalize()
        .with_context(|| format!("mount point {}", mnt.display()))?;
    let exe = std::env::current_exe()?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let mut cmd = Command::new(exe);
    cmd.arg("--mds").arg(mds.join(",")).arg(&mnt);
    for o in &opts {
        cmd.arg("-o").arg(o);
    }
    // Its own process group: the mount outlives the shell that ran mount(8).
    let mut child = cmd
        .process_group(0)
        .arg0("shoal-fuse")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting shoal-fuse")?;
    wait_mounted(&mnt, &mut child, Duration::from_secs(30))
}

/// Waits until a FUSE filesystem is mounted at `mnt`, failing if `child` exits first.
pub fn wait_mounted(
    mnt: &Path,
    child: &mut std::process::Child,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if mounted_fstype(mnt).is_some_and(|t| t.starts_with("fuse")) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "shoal-fuse exited ({status}) before {} was mounted",
                mnt.display()
            );
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            bail!("{} not mounted after {limit:?}", mnt.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_option_is_read_and_not_passed_to_the_kernel() {
        let opts = vec!["rw,volume=media".to_string(), "noatime".to_string()];
        assert_eq!(volume_option(&opts).as_deref(), Some("media"));
        assert_eq!(volume_option(&["ro".to_string()]), None);
        let (kernel, _) = fuse_options(&opts, "shoal:x");
        assert!(!format!("{kernel:?}").contains("media"), "{kernel:?}");
    }

    #[test]
    fn rasize_takes_sizes_with_units_and_refuses_nonsense() {
        let o = |v: &str| rasize_option(&[format!("rw,rasize={v}")]);
        assert_eq!(rasize_option(&["rw".to_string()]).unwrap(), DEFAULT_RASIZE);
        assert_eq!(o("8m").unwrap(), 8 << 20);
        assert_eq!(o("512K").unwrap(), 512 << 10);
        assert_eq!(o("1000").unwrap(), 4096, "rounded up to a page");
        assert_eq!(o("0").unwrap(), 0);
        assert_eq!(o("1g").unwrap(), 1 << 30);
        for bad in ["2g", "", "x", "-1", "4mb", "99999999999999999999"] {
            assert!(o(bad).is_err(), "rasize={bad}");
        }
        let (kernel, _) = fuse_options(&["rasize=8m".to_string()], "shoal:x");
        assert!(!format!("{kernel:?}").contains("rasize"), "{kernel:?}");
    }
}
