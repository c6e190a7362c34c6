//! Shoal's object storage daemon.
//!
//! - [`store`]: objects as local files with a version and a crc32 per 4 KiB block beside them;
//!   every read is verified, every change durable before it is acknowledged.
//! - [`journal`]: the store's write-ahead journal: small changes are made durable by a group
//!   commit of their redo records, checkpointed by a `syncfs` every few seconds and replayed
//!   at open.
//! - [`applyq`]: small changes applied in groups on the blocking pool, with one journal wait
//!   per group.
//! - [`daemon`]: the OSD's shared state — its OSD map, per-object ordering, and the primary's
//!   data path (primary-copy replication to the PG's acting set).
//! - [`peering`]: peering on each new map, recovery and backfill, strays, deep scrub.
//! - [`service`]: the gRPC `Osd` service (client I/O, replication, peering, scrub).
//! - [`config`]: the daemon's settings; [`run`] starts everything.
//!
//! At start the OSD registers with the MDS (`OsdBoot`: id, address, host, capacity), then
//! reports usage and its PGs' states every few seconds; those reports are its heartbeat, and
//! their replies carry the map epoch, so the OSD fetches a new map only when there is one.

pub mod applyq;
pub mod config;
pub mod daemon;
pub mod fastread;
pub mod journal;
pub mod peering;
pub mod qos;
pub mod service;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_proto::error::WireError;
use shoal_proto::mds::mds_client::MdsClient;
use shoal_proto::mds::{OsdBootRequest, OsdReportRequest};
use shoal_proto::osd::osd_server::OsdServer;
use tracing::{info, warn};

pub use config::OsdConfig;

/// Size and free space of the filesystem under a path.
#[derive(Debug, Clone)]
pub struct DiskSpace {
    /// Total bytes.
    pub capacity: u64,
    /// Bytes available to us.
    pub free: u64,
    /// Identifies the filesystem, so co-located OSDs are not counted twice.
    pub device: String,
}

/// Asks the kernel about the filesystem holding `path`.
pub fn disk_space(path: &Path) -> std::io::Result<DiskSpace> {
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; `c` is a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let dev = std::fs::metadata(path)?.dev();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    Ok(DiskSpace {
        capacity: st.f_blocks as u64 * st.f_frsize as u64,
        free: st.f_bavail as u64 * st.f_frsize as u64,
        device: format!("{}:{dev}", host.trim()),
    })
}

/// Runs the OSD until `shutdown` resolves.
pub async fn run(
    cfg: OsdConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = Arc::new(
        store::ObjectStore::open_with(&cfg.data_dir, cfg.checkpoint_interval)
            .with_context(|| format!("opening objects under {}", cfg.data_dir.display()))?,
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    std::fs::write(cfg.data_dir.join("addr"), addr.to_string())?;
    info!(%addr, osd = cfg.id, "osd serving");

    let qos = qos::Qos::new(cfg.recovery_max_active, cfg.recovery_busy_share);
    let osd = daemon::Osd::new(cfg.id, store, cfg.mds.clone(), qos);
    let reporter = tokio::spawn(report_loop(cfg.clone(), addr.to_string(), osd.clone()));
    let idle = tokio::spawn(idle_loop(osd.clone()));
    let svc = service::OsdService::new(osd.clone());
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(shoal_proto::DATA_STREAM_WINDOW)
        .initial_connection_window_size(shoal_proto::DATA_CONN_WINDOW)
        .max_frame_size(shoal_proto::DATA_MAX_FRAME)
        .add_service(fastread::FastRead::new(
            OsdServer::new(svc)
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
            osd,
        ))
        .serve_with_incoming_shutdown(shoal_proto::incoming(listener), shutdown)
        .await;
    reporter.abort();
    idle.abort();
    result.context("serving gRPC")
}

/// Spare files the OSD keeps ready for new objects at first (see `ObjectStore::make_spares`);
/// each time new objects found none, twice as many, up to `store::SPARES_MAX`.
const SPARES_TARGET: usize = 4096;
/// Spares made per turn, between which client ops come first (a few milliseconds of work
/// where ext4's inode allocation is slow).
const SPARES_PER_TURN: usize = 4;

/// Tombstones cut per turn, between which client ops come first.
const CUTS_PER_TURN: usize = 8;

/// One thread at the lowest CPU priority (`SCHED_IDLE`) for the OSD's idle-time work that
/// holds no lock a client op needs: it runs only on a core nothing else wants, so an OSD
/// making spares never slows the client work it shares the machine with (on a 2-core host
/// three OSDs making spares at once took every core for the first seconds after a start).
struct IdleThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl IdleThread {
    fn start() -> std::io::Result<IdleThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("osd-idle".into())
            .spawn(move || {
                // SAFETY: sched_param is plain old data; pid 0 is the calling thread.
                let ok = unsafe {
                    let param: libc::sched_param = std::mem::zeroed();
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                };
                if !ok {
                    warn!(error = %std::io::Error::last_os_error(), "idle-time work runs at normal priority");
                }
                while let Ok(job) = queue.recv() {
                    job();
                }
            })?;
        Ok(IdleThread { jobs })
    }

    /// Runs `f` on the thread; None if the thread is gone.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

/// Work left for while no client uses this OSD, a turn at a time, turns back to back while
/// it stays quiet:
/// - first, making spare files up to the target, so that a new object's file is a rename
///   instead of an inode allocation while a client waits (on ext4 without a journal that
///   allocation costs 0.15-0.5 ms of CPU, growing with recent deletes: ext4 passes over
///   recently deleted inodes). Each OSD of a 3-OSD pool with 3 copies takes every object,
///   so a tar of 3,500 files needs as many spares on each;
/// - then cutting deleted objects' files to their tombstone's block
///   (`ObjectStore::cut_tombstones`): freeing an object's blocks is most of a delete's cost
///   (ext4's extent work, and with the `discard` mount option a wait for the device), which
///   otherwise held up the changes queued behind each delete.
async fn idle_loop(osd: Arc<daemon::Osd>) {
    let mut target = SPARES_TARGET;
    let mut ran_out = 0;
    let mut pause = std::time::Duration::from_millis(100);
    let idle = IdleThread::start()
        .map_err(|e| warn!(error = %e, "no idle-priority thread: spares made on the blocking pool"))
        .ok();
    loop {
        tokio::time::sleep(pause).await;
        pause = std::time::Duration::from_millis(100);
        let now_out = osd.store.spares_ran_out();
        if now_out > ran_out {
            ran_out = now_out;
            target = (target * 2).min(store::SPARES_MAX);
        }
        if osd.qos.busy() {
            continue;
        }
        // Spares first: they spare the next burst of creates its inode allocations, where a
        // cut only gives space back.
        let store = osd.store.clone();
        let work = if store.spare_count() < target {
            match &idle {
                Some(t) => t.run(move || store.make_spares(SPARES_PER_TURN)).await,
                None => tokio::task::spawn_blocking(move || store.make_spares(SPARES_PER_TURN))
                    .await
                    .ok(),
            }
        } else if store.uncut_count() > 0 {
            // A cut holds its object's stripe lock: at normal priority, so a write waiting
            // for that lock never waits for a thread that gets no core.
            tokio::task::spawn_blocking(move || store.cut_tombstones(CUTS_PER_TURN))
                .await
                .ok()
        } else {
            continue;
        };
        match work {
            // More left: the next turn right after a look at client load.
            Some(Ok(_)) => pause = std::time::Duration::from_millis(1),
            Some(Err(e)) => {
                warn!(error = %e, "cannot make spare files or cut deleted objects' files");
                pause = std::time::Duration::from_secs(10);
            }
            None => {}
        }
    }
}

/// Registers with the MDS, then reports usage and PG states forever; registers again if the
/// MDS forgot us or marked us down while we run. A re-peer every few minutes doubles as a
/// light scrub (every copy's version compared).
async fn report_loop(cfg: OsdConfig, addr: String, osd: Arc<daemon::Osd>) {
    use std::sync::atomic::Ordering;
    let host = if cfg.host.is_empty() {
        format!("host-{}", cfg.id)
    } else {
        cfg.host.clone()
    };
    let mut booted = false;
    let mut next = 0usize;
    let mut last_peer = tokio::time::Instant::now();
    loop {
        let usage = osd.store.usage();
        let disk = disk_space(osd.store.root()).unwrap_or(DiskSpace {
            capacity: 0,
            free: 0,
            device: String::new(),
        });
        if osd.wrongly_down.swap(false, Ordering::Relaxed) {
            booted = false;
        }
        let mds = &cfg.mds[next % cfg.mds.len()];
        let result = async {
            let mut client = MdsClient::connect(format!("http://{mds}")).await?;
            if !booted {
                let reply = client
                    .osd_boot(OsdBootRequest {
                        id: cfg.id,
                        addr: addr.clone(),
                        host: host.clone(),
                        capacity_bytes: disk.capacity,
                        used_bytes: usage.bytes,
                    })
                    .await?;
                let epoch = reply.get_ref().epoch;
                info!(osd = cfg.id, epoch, "registered with the mds");
                booted = true;
                osd.ensure_epoch(epoch).await;
            }
            let reported = osd.epoch();
            let reply = client
                .osd_report(OsdReportRequest {
                    id: cfg.id,
                    capacity_bytes: disk.capacity,
                    used_bytes: usage.bytes,
                    free_bytes: disk.free,
                    device: disk.device.clone(),
                    epoch: reported,
                    pgs: osd.pg_stats(),
                })
                .await?;
            osd.ensure_epoch(reply.get_ref().epoch).await;
            // A new map: say so at once (an eviction waits for every OSD to have it).
            anyhow::Ok(osd.epoch() > reported)
        }
        .await;
        let result = match result {
            Ok(true) => continue,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let redirect = e.downcast_ref::<tonic::Status>().and_then(|st| {
                match shoal_proto::error::status_errno(st) {
                    WireError::NotLeader { leader } => Some(leader),
                    _ => None,
                }
            });
            match redirect {
                // A follower: go to the leader it names, or try the next member.
                Some(leader) => {
                    next = leader
                        .and_then(|l| cfg.mds.iter().position(|a| *a == l))
                        .unwrap_or(next + 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    warn!(osd = cfg.id, mds = %mds, error = %e, "cannot reach the mds; will retry");
                    next += 1;
                    // If the MDS lost its state or we were never acknowledged, register again.
                    booted = false;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            continue;
        }
        if last_peer.elapsed() >= cfg.light_scrub_interval {
            last_peer = tokio::time::Instant::now();
            let (o, epoch) = (osd.clone(), osd.epoch());
            tokio::spawn(async move { o.peer_all(epoch).await });
        }
        tokio::time::sleep(cfg.report_interval).await;
    }
}
