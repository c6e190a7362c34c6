//! Serving a mount: option parsing, stale-mount cleanup, the `mount.fuse.shoal` helper, and
//! [`run`], which serves until the filesystem is unmounted or the process is told to stop.
//!
//! `mount -t fuse.shoal SOURCE MNT -o OPTS` runs `mount.fuse.shoal SOURCE MNT -o OPTS` (a link
//! to `shoal-fuse`). SOURCE is any name the user picks: the mount shows it as its source
//! (`findmnt`, `df`) and `umount SOURCE` unmounts it. The cluster comes from `-o
//! mds=ADDR[,ADDR...]` (MDS members) or `-o data=DIR` (a `shoal up` data directory, whose
//! `mds.*/addr` files name them); without either, SOURCE itself must be one of those. The
//! helper checks the cluster answers, starts the mount in the background and returns once it
//! is live, as mount(8) expects; `-o remount,...` changes the live mount's flags in place.
//!
//! As root the mount is made with mount(2) directly, of type `fuse.shoal` (`fuse` with `-o
//! nosubtype`, which some test harnesses require); otherwise through fusermount3.
//!
//! `-o noentrycache`: the kernel keeps no directory entries (see [`crate::dentries`]), for
//! mounts stacked on directories inside this one. `-o readcache=SIZE` (256m by default, 0:
//! none): file data kept for small reads (see [`crate::readcache`]). Files created in directories
//! the mount made are made by the mount and sent in batches (see `client::dirops`); `-o
//! nodirleases` turns that off (`-o dirleases`, the default, on).

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
    /// The mount's source as the system shows it (default `shoal:ADDRS`).
    pub fsname: Option<String>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            mds: Vec::new(),
            mountpoint: PathBuf::new(),
            options: Vec::new(),
            retry_for: Duration::from_secs(60),
            pid_file: None,
            fsname: None,
        }
    }
}

/// The single options in `-o` lists. A `mds=` option's address list goes on across commas
/// (`mds=A:1,B:2,ro`): items after it that look like `HOST:PORT` belong to it.
pub fn option_items(opts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_mds = false;
    for o in opts
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let address = !o.contains('=')
            && o.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        match out.last_mut() {
            Some(last) if in_mds && address => {
                last.push(',');
                last.push_str(o);
            }
            _ => {
                in_mds = o.starts_with("mds=");
                out.push(o.to_string());
            }
        }
    }
    out
}

/// The value of the last `-o KEY=VALUE` option.
fn option_value(opts: &[String], key: &str) -> Option<String> {
    option_items(opts)
        .iter()
        .rev()
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// Whether option `name` is given.
fn has_option(opts: &[String], name: &str) -> bool {
    option_items(opts).iter().any(|o| o == name)
}

/// The MDS addresses a mount names: `-o mds=ADDR[,ADDR]`, `-o data=DIR`, or else its source
/// (`ADDR[,ADDR]` or a data directory).
pub fn cluster_of(source: &str, opts: &[String]) -> anyhow::Result<Vec<String>> {
    if let Some(addrs) = option_value(opts, "mds") {
        return resolve_source(&addrs).context("-o mds=");
    }
    if let Some(dir) = option_value(opts, "data") {
        if !Path::new(&dir).is_dir() {
            bail!("-o data={dir}: not a directory");
        }
        return resolve_source(&dir).context("-o data=");
    }
    resolve_source(source).with_context(|| {
        format!(
            "no cluster named: give -o mds=ADDR[,ADDR] or -o data=DIR (or a source {source:?} \
             that is one)"
        )
    })
}

/// The kernel's mount flags (MS_*) for the options, starting from nosuid and nodev.
pub fn mount_flags(opts: &[String]) -> libc::c_ulong {
    mount_flags_from(libc::MS_NOSUID | libc::MS_NODEV, opts)
}

/// The kernel's mount flags (MS_*) for the options, starting from `flags`.
fn mount_flags_from(mut flags: libc::c_ulong, opts: &[String]) -> libc::c_ulong {
    for o in option_items(opts) {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "suid" => flags &= !libc::MS_NOSUID,
            "nosuid" => flags |= libc::MS_NOSUID,
            "dev" => flags &= !libc::MS_NODEV,
            "nodev" => flags |= libc::MS_NODEV,
            "exec" => flags &= !libc::MS_NOEXEC,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => {
                flags = (flags | libc::MS_NOATIME) & !(libc::MS_RELATIME | libc::MS_STRICTATIME)
            }
            "relatime" => {
                flags = (flags | libc::MS_RELATIME) & !(libc::MS_NOATIME | libc::MS_STRICTATIME)
            }
            "strictatime" => {
                flags = (flags | libc::MS_STRICTATIME) & !(libc::MS_NOATIME | libc::MS_RELATIME)
            }
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "diratime" => flags &= !libc::MS_NODIRATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "async" => flags &= !libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            _ => {}
        }
    }
    flags
}

/// Options Shoal reads itself, and generic ones mount(8) and fstab pass along, none of which
/// go to the kernel as such.
fn shoal_or_generic(o: &str) -> bool {
    matches!(
        o,
        "defaults"
            | "auto"
            | "noauto"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "nofail"
            | "remount"
            | "nosubtype"
            | "noentrycache"
            | "dirleases"
            | "nodirleases"
            | "default_permissions"
            | "allow_other"
            | "allow_root"
    ) || ["volume=", "rasize=", "readcache=", "mds=", "data=", "x-"]
        .iter()
        .any(|p| o.starts_with(p))
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
    for o in option_items(opts) {
        match o.as_str() {
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
            "relatime" | "strictatime" | "nodiratime" | "diratime" | "sync" | "async"
            | "dirsync" => {}
            o if shoal_or_generic(o) => {}
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
    size_option(opts, "rasize", DEFAULT_RASIZE)
}

/// `-o readcache=BYTES` (as `rasize`; 0: none): how much file data read the mount keeps
/// for small reads under the files' read leases (see [`crate::readcache`]).
pub fn readcache_option(opts: &[String]) -> anyhow::Result<u64> {
    size_option(opts, "readcache", crate::readcache::DEFAULT_BYTES)
}

/// `-o NAME=BYTES` (a `k`, `m` or `g` suffix allowed), rounded up to 4 KiB, at most 1 GiB;
/// `default` when not given.
fn size_option(opts: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    let Some(v) = option_value(opts, name) else {
        return Ok(default);
    };
    let v = v.as_str();
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
        .with_context(|| format!("{name}={v}: not a size of at most 1 GiB"))?;
    Ok(bytes.div_ceil(4096) * 4096)
}

/// The volume a mount shows (`-o volume=NAME`), if one is named.
pub fn volume_option(opts: &[String]) -> Option<String> {
    option_value(opts, "volume")
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
    let c = cpath(path)?;
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
    let readcache = readcache_option(&cfg.options)?;
    let shoal = rt.block_on(Session::start(
        &cfg.mds,
        cfg.retry_for,
        volume.as_deref(),
        &mnt.display().to_string(),
        notifier.clone(),
    ))?;
    shoal
        .client()
        .cluster()
        .read_cache()
        .set_capacity(readcache);
    shoal
        .client()
        .set_dir_leases(!cfg.options.iter().any(|o| o == "nodirleases"));
    let fs = ShoalFs::new(
        shoal.client().clone(),
        rt.handle().clone(),
        notifier.clone(),
    );
    let fsname = cfg
        .fsname
        .clone()
        .unwrap_or_else(|| format!("shoal:{}", cfg.mds.join(",")));
    let (options, acl) = fuse_options(&cfg.options, &fsname);
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = acl;
    config.n_threads = Some(2);
    let fstype = if has_option(&cfg.options, "nosubtype") {
        "fuse"
    } else {
        "fuse.shoal"
    };
    // SAFETY: geteuid cannot fail and touches no memory.
    let mounted = if unsafe { libc::geteuid() } == 0 {
        let allow_other = acl != SessionACL::Owner;
        kernel_mount(&mnt, &fsname, fstype, &cfg.options, allow_other)?
    } else {
        None
    };
    let (session, mut unmounter) = if let Some(fd) = mounted {
        let session = fuser::Session::from_fd(fs, fd, acl, config)
            .with_context(|| format!("serving the mount at {}", mnt.display()));
        match session {
            Ok(s) => (s, Unmounter::Kernel(mnt.clone())),
            Err(e) => {
                let _ = lazy_unmount(&mnt);
                return Err(e);
            }
        }
    } else {
        let mut session = fuser::Session::new(fs, &mnt, &config)
            .with_context(|| format!("mounting at {}", mnt.display()))?;
        let u = session.unmount_callable();
        (session, Unmounter::Fuser(u))
    };
    let _ = notifier.set(session.notifier());
    if !has_option(&cfg.options, "noentrycache") {
        use std::os::fd::AsFd;
        match shoal.client().kernel_entries().start(session.as_fd()) {
            Ok(true) => info!("the kernel keeps directory entries under the leases"),
            Ok(false) => {
                info!("the kernel cannot drop its directory entries at once; it keeps none")
            }
            Err(e) => {
                warn!(error = %e, "cannot drop the kernel's directory entries; it keeps none")
            }
        }
    }
    if let Some(p) = &cfg.pid_file {
        shoal_proto::pidfile::write(p, std::process::id())?;
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

/// `path` for a system call.
fn cpath(path: &Path) -> anyhow::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))
}

/// How a mount is taken down when its client is told to stop.
enum Unmounter {
    /// Mounted with mount(2) here: umount(2).
    Kernel(PathBuf),
    /// Mounted by fuser (fusermount3).
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    fn unmount(&mut self) -> anyhow::Result<()> {
        match self {
            Unmounter::Kernel(mnt) => {
                let c = cpath(mnt)?;
                // SAFETY: a NUL-terminated path.
                if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                    bail!(
                        "umount {}: {}",
                        mnt.display(),
                        std::io::Error::last_os_error()
                    );
                }
                Ok(())
            }
            Unmounter::Fuser(u) => Ok(u.unmount()?),
        }
    }
}

/// Mounts a FUSE filesystem at `mnt` with mount(2) (root only): source `fsname`, type
/// `fstype` (`fuse` or `fuse.SUBTYPE`), the flags the options ask for; returns the
/// /dev/fuse descriptor the kernel now sends the mount's requests to. None where mount(2)
/// is not allowed (EPERM: a container without CAP_SYS_ADMIN), for fusermount3 to try.
fn kernel_mount(
    mnt: &Path,
    fsname: &str,
    fstype: &str,
    opts: &[String],
    allow_other: bool,
) -> anyhow::Result<Option<std::os::fd::OwnedFd>> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("opening /dev/fuse (is the fuse module loaded?)")?;
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let c = |s: &str| CString::new(s).with_context(|| format!("{s:?} holds a NUL byte"));
    let (source, target) = (c(fsname)?, cpath(mnt)?);
    let (fstype, data) = (c(fstype)?, c(&data)?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            mount_flags(opts),
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            warn!("mount(2) is not permitted here; trying fusermount3");
            return Ok(None);
        }
        bail!("mount(2) at {}: {e}", mnt.display());
    }
    Ok(Some(dev.into()))
}

/// `mount -o remount,OPTS MNT`: the live mount's flags change in place (a plain kernel
/// remount; the client serving it goes on). Flags the options do not name keep their
/// current value.
fn remount(mnt: &Path, opts: &[String]) -> anyhow::Result<()> {
    let current =
        mountinfo_line(mnt).with_context(|| format!("nothing mounted at {}", mnt.display()))?;
    // The mount's own options (field 6), then the ones asked for, later ones winning.
    // (mountinfo names nosuid and nodev when set, never suid and dev: start from neither.)
    let mut all = vec![current.split(' ').nth(5).unwrap_or_default().to_string()];
    all.extend(opts.iter().cloned());
    let flags = mount_flags_from(0, &all) | libc::MS_REMOUNT;
    let target = cpath(mnt)?;
    // SAFETY: a NUL-terminated path; the other pointers may be null for a remount.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "remount of {}: {}",
            mnt.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
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
    let mnt = mnt
        .canonicalize()
        .with_context(|| format!("mount point {}", mnt.display()))?;
    if has_option(&opts, "remount") {
        return remount(&mnt, &opts);
    }
    let mds = cluster_of(&source, &opts)?;
    // Refused here, with the reason, rather than by the daemon after mount(8) returned.
    rasize_option(&opts)?;
    check_reachable(&mds)?;
    let exe = std::env::current_exe()?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let mut cmd = Command::new(exe);
    cmd.arg("--mds")
        .arg(mds.join(","))
        .arg("--fsname")
        .arg(source.as_ref())
        .arg(&mnt)
        // mount(8) drops `suid` and `dev`, its defaults, and passes `nosuid` and `nodev`
        // when asked: so its defaults, not FUSE's, hold here (later options win).
        .args(["-o", "suid,dev"]);
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

/// How long the helper waits for the cluster to answer before it gives up on the mount.
const REACH_WAIT: Duration = Duration::from_secs(10);

/// Fails with the reason unless the MDS group at `mds` answers within [`REACH_WAIT`].
fn check_reachable(mds: &[String]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(
            REACH_WAIT + Duration::from_secs(1),
            crate::cluster::Cluster::connect(mds, REACH_WAIT),
        )
        .await
    })
    .map_err(|_| anyhow::anyhow!("no answer in {REACH_WAIT:?}"))
    .and_then(|r| r.map(drop).map_err(anyhow::Error::from))
    .with_context(|| format!("cannot reach the Shoal cluster at {}", mds.join(",")))
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
    fn mds_addresses_run_on_across_commas_and_name_the_cluster() {
        let opts = vec!["rw,mds=10.0.0.1:7000,10.0.0.2:7000,[::1]:7000,volume=v".to_string()];
        assert_eq!(
            option_items(&opts),
            vec![
                "rw",
                "mds=10.0.0.1:7000,10.0.0.2:7000,[::1]:7000",
                "volume=v"
            ]
        );
        assert_eq!(
            cluster_of("shoal-test", &opts).unwrap(),
            vec!["10.0.0.1:7000", "10.0.0.2:7000", "[::1]:7000"]
        );
        assert_eq!(volume_option(&opts).as_deref(), Some("v"));
        // Without mds= or data=, the source must name the cluster itself.
        assert_eq!(cluster_of("127.0.0.1:1", &[]).unwrap(), vec!["127.0.0.1:1"]);
        let err = format!(
            "{:#}",
            cluster_of("shoal-test", &["ro".to_string()]).unwrap_err()
        );
        assert!(err.contains("mds=") && err.contains("data="), "{err}");
        let err = format!(
            "{:#}",
            cluster_of("x", &["data=/no/such/dir".to_string()]).unwrap_err()
        );
        assert!(err.contains("/no/such/dir"), "{err}");
        assert!(cluster_of("x", &["mds=nohost".to_string()]).is_err());
    }

    #[test]
    fn mount_flags_follow_the_options_in_order() {
        let f = |o: &str| mount_flags(&[o.to_string()]);
        let base = libc::MS_NOSUID | libc::MS_NODEV;
        assert_eq!(f(""), base);
        assert_eq!(f("suid,dev"), 0);
        assert_eq!(f("suid,dev,nosuid"), libc::MS_NOSUID);
        assert_eq!(f("ro"), base | libc::MS_RDONLY);
        assert_eq!(f("ro,rw"), base);
        assert_eq!(f("noatime,relatime"), base | libc::MS_RELATIME);
        assert_eq!(
            f("relatime,noatime,noexec"),
            base | libc::MS_NOATIME | libc::MS_NOEXEC
        );
        assert_eq!(
            f("mds=1.2.3.4:5,_netdev,volume=x"),
            base,
            "not kernel flags"
        );
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
