//! `shoal-csi`: Shoal's CSI driver, serving Identity and the Controller and/or Node services
//! on a unix socket (`--endpoint`), as kubelet and the CSI sidecars expect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use shoal_csi::controller::ControllerService;
use shoal_csi::identity::IdentityService;
use shoal_csi::mounter::{self, Launcher};
use shoal_csi::node::{Launch, NodeService};
use shoal_proto::csi::controller_server::ControllerServer;
use shoal_proto::csi::identity_server::IdentityServer;
use shoal_proto::csi::node_server::NodeServer;
use tracing::{info, warn};

/// Which services this plugin process serves.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    /// Identity and Controller (the controller Deployment).
    Controller,
    /// Identity and Node (the node DaemonSet).
    Node,
    /// All three.
    All,
    /// Only start the node's FUSE clients when the node plugin asks (on `--mounter`): a
    /// container of its own in the node plugin's pod, so the clients outlive restarts of the
    /// plugin's container.
    Mounter,
}

/// Shoal's CSI driver.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The socket to serve: unix:///PATH or PATH.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// MDS address(es) of the cluster (comma-separated), or its data directory.
    #[arg(long, env = "SHOAL_MDS")]
    mds: String,
    /// This node's id (the node service; default: the host name).
    #[arg(long, env = "NODE_ID")]
    node_id: Option<String>,
    /// Where the node service records what it staged and published, and its mounts' logs.
    #[arg(long, default_value = "/var/lib/shoal-csi")]
    state_dir: PathBuf,
    /// The shoal-fuse binary (default: beside this one, else from PATH).
    #[arg(long)]
    fuse_bin: Option<PathBuf>,
    /// The mounter's socket: the node plugin asks the mounter listening there to start its
    /// FUSE clients (without it, it starts them itself); `--mode mounter` serves it.
    #[arg(long)]
    mounter: Option<PathBuf>,
    /// Seconds between checks for mounts whose client died.
    #[arg(long, default_value_t = 10)]
    repair_secs: u64,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn fuse_bin(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("shoal-fuse")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("shoal-fuse"))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let socket = PathBuf::from(
        args.endpoint
            .strip_prefix("unix://")
            .unwrap_or(&args.endpoint),
    );
    if !socket.is_absolute() {
        anyhow::bail!(
            "--endpoint must be an absolute unix socket path: {}",
            args.endpoint
        );
    }
    let mds = shoal_client::mount::resolve_source(&args.mds)?;
    let launcher = Launcher {
        fuse_bin: fuse_bin(args.fuse_bin.clone()),
        mds: mds.clone(),
        state_dir: args.state_dir.clone(),
    };
    if args.mode == Mode::Mounter {
        let Some(at) = &args.mounter else {
            anyhow::bail!("--mode mounter needs --mounter SOCKET");
        };
        return mounter::serve(at, launcher).await;
    }
    let controller = args.mode != Mode::Node;
    let node = args.mode != Mode::Controller;

    let client = if controller {
        let cluster = shoal_client::Cluster::connect(&mds, Duration::from_secs(60))
            .await
            .with_context(|| format!("connecting to the cluster at {}", mds.join(",")))?;
        Some(Arc::new(shoal_client::Client::new(cluster)))
    } else {
        None
    };
    let identity = IdentityService {
        controller: client.clone(),
    };
    let node_svc = node.then(|| {
        Arc::new(NodeService {
            node_id: args.node_id.clone().unwrap_or_else(host_name),
            launch: match &args.mounter {
                Some(at) => Launch::Mounter(at.clone()),
                None => Launch::Here(launcher),
            },
            state_dir: args.state_dir.clone(),
            busy: tokio::sync::Mutex::new(()),
        })
    });
    if let Some(n) = &node_svc {
        // Finds its mounts again: what the records list and is broken is mounted again,
        // at once and then every few seconds.
        let n = n.clone();
        let every = Duration::from_secs(args.repair_secs.max(1));
        tokio::spawn(async move {
            loop {
                let redone = n.repair().await;
                if redone > 0 {
                    info!(redone, "mounts whose client died were mounted again");
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            warn!(error = %e, "cannot remove an old socket")
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    info!(socket = %socket.display(), mode = ?args.mode, "shoal-csi serving");

    let mut router = tonic::transport::Server::builder().add_service(IdentityServer::new(identity));
    if let Some(c) = client {
        router = router.add_service(ControllerServer::new(ControllerService { client: c }));
    }
    if let Some(n) = node_svc {
        router = router.add_service(NodeServer::from_arc(n));
    }
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        // The mounts stay: their shoal-fuse processes serve on while the plugin is away.
        info!("shoal-csi stopping; mounts keep serving");
    };
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
