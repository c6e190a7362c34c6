//! `shoal-fuse`: mounts a Shoal cluster. Installed as `mount.fuse.shoal` (or `mount.shoal`) it
//! is the mount(8) helper, so `mount -t fuse.shoal` and /etc/fstab work.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shoal_client::mount::{self, MountConfig};

/// Mount a Shoal filesystem.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// MDS address(es), comma-separated, or a cluster data directory.
    #[arg(long)]
    mds: String,
    /// Where to mount.
    mountpoint: PathBuf,
    /// Mount options (ro, allow_other, noatime, ...).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Seconds a call is retried while a daemon is unreachable.
    #[arg(long, default_value_t = 60)]
    retry_secs: u64,
    /// Write our pid here once mounted.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// The mount's source as findmnt and df show it (default: shoal:ADDRS).
    #[arg(long)]
    fsname: Option<String>,
}

fn main() -> anyhow::Result<()> {
    shoal_proto::malloc::keep_large_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let argv: Vec<_> = std::env::args_os().collect();
    let name = argv
        .first()
        .and_then(|a| {
            PathBuf::from(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if name.starts_with("mount.") {
        // mount(8) shows what a helper prints: the reason, without a backtrace.
        if let Err(e) = mount::helper_main(&argv) {
            eprintln!("{name}: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let args = Args::parse();
    let cfg = MountConfig {
        mds: mount::resolve_source(&args.mds)?,
        mountpoint: args.mountpoint,
        options: args.options,
        retry_for: Duration::from_secs(args.retry_secs),
        pid_file: args.pid_file,
        fsname: args.fsname,
    };
    mount::run(cfg, shutdown_signal())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
