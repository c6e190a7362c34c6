//! `shoal-mds`: the metadata service daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shoal_mds::MdsConfig;

/// Shoal metadata service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Raft id of this node.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// State directory.
    #[arg(long)]
    data: PathBuf,
    /// gRPC listen address (port 0: any free port, written to DATA/addr).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Members of a new group, this node included: ID=HOST:PORT,... (default: a group of one).
    #[arg(long, value_delimiter = ',', value_parser = parse_member)]
    peers: Vec<(u64, String)>,
    /// Start as a new member waiting to be added to a running group (`shoal mds add ADDR`)
    /// instead of founding one.
    #[arg(long, conflicts_with = "peers")]
    join: bool,
    /// Seconds without a heartbeat before an OSD is marked down.
    #[arg(long, default_value_t = 10)]
    osd_grace_secs: u64,
    /// Seconds an OSD stays down before it is marked out and its PGs move elsewhere.
    #[arg(long, default_value_t = 600)]
    osd_out_secs: u64,
    /// Seconds a client session may stay silent before it is ended and its locks released.
    #[arg(long, default_value_t = 60)]
    session_timeout_secs: u64,
    /// Milliseconds a client may cache attributes, entries and pages under a lease before it
    /// asks again (0: no caching, every call goes to the MDS).
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Applied entries the Raft log may hold before it is compacted.
    #[arg(long, default_value_t = 20_000)]
    log_compact_entries: u64,
    /// Newest entries a compaction keeps (members further behind get a snapshot).
    #[arg(long, default_value_t = 5_000)]
    log_keep_entries: u64,
    /// Copies per object (used when the cluster is created).
    #[arg(long, default_value_t = 3)]
    pool_size: u32,
    /// Copies durable before a write is acknowledged (default: a majority of pool-size).
    #[arg(long, default_value_t = 0)]
    pool_min_size: u32,
}

fn main() -> anyhow::Result<()> {
    shoal_proto::malloc::keep_large_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    tracing::info!(data = %args.data.display(), "shoal-mds starting");
    std::fs::create_dir_all(&args.data)?;
    shoal_proto::pidfile::write(&args.data.join("pid"), std::process::id())?;
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let cfg = MdsConfig {
        id: args.id,
        data_dir: args.data,
        listen: args.listen,
        peers: args.peers,
        join: args.join,
        osd_grace: Duration::from_secs(args.osd_grace_secs),
        osd_out_after: Duration::from_secs(args.osd_out_secs),
        session_timeout: Duration::from_secs(args.session_timeout_secs),
        lease: Duration::from_millis(args.lease_ms),
        log_compact_entries: args.log_compact_entries,
        log_keep_entries: args.log_keep_entries,
        pool_size: args.pool_size,
        pool_min_size: args.pool_min_size,
        root_uid: uid,
        root_gid: gid,
        ..MdsConfig::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(shoal_mds::run(cfg, shutdown_signal()))
}

/// Parses `ID=HOST:PORT`.
fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT"))?;
    let id: u64 = id
        .parse()
        .map_err(|_| format!("{s:?}: the id must be a positive number"))?;
    if id == 0 || addr.is_empty() || !addr.contains(':') {
        return Err(format!("{s:?}: expected ID=HOST:PORT with a non-zero id"));
    }
    Ok((id, addr.to_string()))
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
