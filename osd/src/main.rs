//! `shoal-osd`: the object storage daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shoal_osd::OsdConfig;

/// Shoal object storage daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This OSD's id in the cluster map.
    #[arg(long)]
    id: u32,
    /// State directory (objects live under DATA/objects).
    #[arg(long)]
    data: PathBuf,
    /// gRPC listen address (port 0: any free port, written to DATA/addr).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Metadata service address(es), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    mds: Vec<String>,
    /// Failure-domain label (default host-<id>).
    #[arg(long, default_value = "")]
    host: String,
    /// Seconds between usage reports (the heartbeat).
    #[arg(long, default_value_t = 2)]
    report_secs: u64,
    /// Objects recovered at a time while no client uses this OSD.
    #[arg(long, default_value_t = 2, env = "SHOAL_RECOVERY_MAX_ACTIVE")]
    recovery_max_active: u32,
    /// Percent of the time recovery may take while clients use this OSD (1-100; 100 = no
    /// priority for clients).
    #[arg(long, default_value_t = 20, env = "SHOAL_RECOVERY_BUSY_SHARE")]
    recovery_busy_share: u32,
    /// Seconds the journal's oldest record may wait for a checkpoint (which syncs the objects
    /// and trims the journal; a restart replays at most this much).
    #[arg(long, default_value_t = 5, env = "SHOAL_OSD_CHECKPOINT_SECS")]
    checkpoint_secs: u64,
}

fn main() -> anyhow::Result<()> {
    shoal_proto::malloc::keep_large_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.data)?;
    shoal_proto::pidfile::write(&args.data.join("pid"), std::process::id())?;
    let cfg = OsdConfig {
        id: args.id,
        data_dir: args.data,
        listen: args.listen,
        mds: args.mds,
        host: args.host,
        report_interval: Duration::from_secs(args.report_secs),
        recovery_max_active: args.recovery_max_active,
        recovery_busy_share: args.recovery_busy_share,
        checkpoint_interval: Duration::from_secs(args.checkpoint_secs),
        ..OsdConfig::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(shoal_osd::run(cfg, shutdown_signal()))
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
