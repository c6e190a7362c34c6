//! Shoal's metadata service.
//!
//! - [`store`]: the RocksDB database — Raft log and hard state ([`store::RaftLog`]) and the
//!   state machine's column families.
//! - [`command`]: what a log entry carries, and what applying it returns.
//! - [`fsm`]: the namespace state machine (inodes, dentries, xattrs, symlinks, orphans, the
//!   OSD map); applies commands, answers reads.
//! - [`acl`]: POSIX ACL values; how new inodes inherit them and chmod keeps them in step.
//! - [`leases`]: which sessions may cache what; revocations pushed on their streams.
//! - [`recovery`]: what a writer that went away left past the recorded size, found on the OSDs.
//! - [`node`]: the thread that owns the raft-rs `RawNode` and runs the ready loop.
//! - [`service`]: the gRPC `Mds` service; reads go to the state machine, writes to the node.
//! - [`snapshot`]: state snapshots for members behind the compacted log (checkpoint, chunked
//!   stream, crash-safe install).
//! - [`transport`]: Raft messages between members over gRPC.
//! - [`config`]: the daemon's settings; [`run`] starts everything.
//!
//! A mutation: gRPC handler → `NodeHandle::propose` → Raft log (synced RocksDB write) →
//! commit → `Fsm::apply` (one WriteBatch with the applied index) → reply.

pub mod acl;
pub mod command;
pub mod config;
pub mod error;
pub mod fsm;
pub mod leases;
pub mod node;
pub mod recovery;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod transport;

use std::net::SocketAddr;

use shoal_proto::mds::mds_server::MdsServer;
use shoal_proto::mds::raft_peer_server::RaftPeerServer;
use tracing::{info, warn};

pub use config::MdsConfig;
pub use error::MdsError;

use crate::command::Pool;
use crate::node::{Node, NodeConfig};
use crate::service::NewCluster;

/// Runs the MDS until `shutdown` resolves.
pub async fn run(
    cfg: MdsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let db = store::Db::open(&cfg.data_dir.join("db")).context("opening the MDS database")?;
    info!("database open");
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let members = if cfg.peers.is_empty() {
        vec![(cfg.id, addr.to_string())]
    } else {
        cfg.peers.clone()
    };
    let node_cfg = NodeConfig {
        id: cfg.id,
        members,
        tick: cfg.tick,
        election_ticks: cfg.election_ticks,
        heartbeat_ticks: cfg.heartbeat_ticks,
        snap_dir: cfg.data_dir.join("snap"),
        join: cfg.join,
        fixed_election_timeout: false,
        compact_entries: cfg.log_compact_entries,
        keep_entries: cfg.log_keep_entries,
    };
    // Fault injection: `DATA/drop-peers` lists members whose Raft traffic is dropped.
    let filter = transport::PeerFilter::default();
    let follow = tokio::spawn(filter.clone().follow_file(cfg.data_dir.join("drop-peers")));
    let (node, join) = Node::start(&node_cfg, db.clone(), filter.clone())?;
    let fsm = fsm::Fsm::new(db);

    // Serve at once: peers need the Raft service to elect a leader. The leader creates the
    // root directory and the pool of a new cluster (see `MdsService::monitor`).
    std::fs::write(cfg.data_dir.join("addr"), addr.to_string())?;
    info!(%addr, id = cfg.id, "mds serving");
    let settings = service::MapSettings {
        osd_grace: cfg.osd_grace,
        osd_out_after: cfg.osd_out_after,
        session_timeout: cfg.session_timeout,
        lease: cfg.lease,
        new_cluster: NewCluster {
            root_uid: cfg.root_uid,
            root_gid: cfg.root_gid,
            pool: Pool {
                size: cfg.pool_size,
                min_size: match cfg.pool_min_size {
                    0 => shoal_proto::placement::default_min_size(cfg.pool_size),
                    n => n,
                },
                pg_count: shoal_proto::placement::DEFAULT_PG_COUNT,
            },
        },
    };
    let svc = service::MdsService::new(node.clone(), fsm, settings);
    let monitor = tokio::spawn(svc.clone().monitor());
    let result = tonic::transport::Server::builder()
        .add_service(
            RaftPeerServer::new(transport::RaftPeerService::new(
                node.clone(),
                node_cfg.snap_dir.clone(),
                filter,
            ))
            .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
        )
        .add_service(
            MdsServer::new(svc)
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(shoal_proto::incoming(listener), shutdown)
        .await;
    monitor.abort();
    follow.abort();
    node.shutdown();
    if join.join().is_err() {
        warn!("raft thread panicked");
    }
    result.context("grpc server")
}
