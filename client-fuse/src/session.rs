//! A session with the cluster: the [`Client`] a mount serves the kernel from, with the work
//! that keeps it alive in the background (heartbeats, the lease stream with its renewals and
//! revocations, write-lease renewals, the OSD map). A mount starts one; a program that links
//! this crate starts one too and uses files by path ([`Session::create`], [`OpenFile`]),
//! with the same leases, caches and write-back as a mount, and no FUSE in between.
//!
//! Paths are relative to the session's root (the cluster's root or a volume's directory);
//! `/`-separated, `.` and empty components skipped, `..` goes up (never above the root);
//! symbolic links in them are not followed. The library checks no permissions: it acts for
//! the program as root acts on a mount.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fuser::Notifier;
use shoal_proto::mds::{
    Attr, EndSessionRequest, FileKind, HeartbeatRequest, LeaseUp, MakeNodeRequest,
};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::client::Client;
use crate::cluster::Cluster;
use crate::error::ClientError;

type Result<T> = std::result::Result<T, ClientError>;

/// Directory entries asked of the MDS per call when listing.
const LIST_PAGE: u32 = 1024;

/// A live session and its background tasks (stopped when it is dropped).
pub struct Session {
    client: Arc<Client>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Session {
    /// Connects to the MDS group at `mds` (retrying for `retry_for`) and starts a session
    /// rooted at the cluster's root, or at volume `volume`'s directory. `label` names it in
    /// `shoal status` (a mount gives its mount point). Revocations also drop what the kernel
    /// caches once `notifier` holds the mount's notifier (a library leaves it empty).
    /// Must run inside a tokio runtime, which then runs the background work.
    pub async fn start(
        mds: &[String],
        retry_for: Duration,
        volume: Option<&str>,
        label: &str,
        notifier: Arc<OnceLock<Notifier>>,
    ) -> anyhow::Result<Session> {
        use anyhow::Context;
        let cluster = Cluster::connect(mds, retry_for)
            .await
            .with_context(|| format!("connecting to the cluster at {}", mds.join(",")))?;
        // Dropped (its tasks stopped) if the start fails past this point.
        let mut session = Session {
            client: Arc::new(Client::new(cluster.clone())),
            tasks: Vec::new(),
        };
        let tasks = &mut session.tasks;
        // Keep the OSD map fresh; failures are retried at the next tick.
        let bg = cluster.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = bg.refresh_map().await;
            }
        }));
        tasks.push(tokio::spawn(heartbeats(cluster.clone(), label.to_string())));
        let root = match volume {
            Some(name) => {
                // The placeholder client, rooted at the cluster's root, finds it.
                let v = crate::volumes::get(&session.client, name)
                    .await
                    .with_context(|| format!("volume {name}"))?;
                tracing::info!(volume = %name, ino = v.ino, "session rooted at a volume");
                v.ino
            }
            None => 1,
        };
        let client = Arc::new(Client::with_root(cluster, root));
        session.client = client.clone();
        let tasks = &mut session.tasks;
        tasks.push(tokio::spawn(lease_stream(client.clone(), notifier)));
        tasks.push(tokio::spawn(follow_session(client.clone())));
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.run_changes().await }));
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                c.renew_write_leases(Duration::from_secs(1)).await;
                c.send_releases(None).await;
            }
        }));
        Ok(session)
    }

    /// The client this session serves.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Sends what closes left to the background ([`OpenFile::close_behind`]) and reports the
    /// first failure to send any of it (each failure once).
    pub async fn sync_closed(&self) -> Result<()> {
        self.client.sync_closed().await
    }

    /// Sends what closed files kept, then ends the session at the MDS (its locks and leases
    /// go at once, not after the session timeout); waits at most 5 s for the MDS.
    pub async fn end(&self) {
        // What closed files kept goes first.
        let closed = self.client.finish_all_closed();
        if tokio::time::timeout(Duration::from_secs(60), closed)
            .await
            .is_err()
        {
            warn!("closed files' writes did not all go within 60 s");
        }
        let cluster = self.client.cluster();
        let end = cluster.mds_mutate(
            "end_session",
            EndSessionRequest {
                session: cluster.session(),
                evict: false,
            },
            |mut c, r| async move { c.end_session(r).await },
        );
        if let Err(e) = async { tokio::time::timeout(Duration::from_secs(5), end).await }.await {
            warn!(error = %e, "could not end the session; the MDS will time it out");
        }
    }

    /// The attributes of what `path` names.
    pub async fn stat(&self, path: &str) -> Result<Attr> {
        let mut at = self.client.root();
        let mut attr = self.client.getattr(at).await?;
        for part in path.split('/') {
            match part {
                "" | "." => continue,
                ".." => {
                    if attr.kind != FileKind::Directory as i32 {
                        return Err(ClientError::errno_msg(libc::ENOTDIR, "not a directory"));
                    }
                    if at != self.client.root() {
                        at = attr.parent.max(1);
                        attr = self.client.getattr(at).await?;
                    }
                }
                name => {
                    if attr.kind != FileKind::Directory as i32 {
                        return Err(ClientError::errno_msg(libc::ENOTDIR, "not a directory"));
                    }
                    attr = self.client.lookup(at, name.as_bytes()).await?;
                    at = attr.ino;
                }
            }
        }
        Ok(attr)
    }

    /// The directory `path` is in (its inode) and its last component.
    async fn parent_of<'p>(&self, path: &'p str) -> Result<(u64, &'p str)> {
        let path = path.trim_end_matches('/');
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.is_empty() || name == "." || name == ".." {
            return Err(ClientError::errno_msg(
                libc::EINVAL,
                "a path must end in a name",
            ));
        }
        shoal_proto::limits::check_name(name.as_bytes())
            .map_err(|errno| ClientError::errno_msg(errno, format!("bad name {name:?}")))?;
        let d = self.stat(dir).await?;
        if d.kind != FileKind::Directory as i32 {
            return Err(ClientError::errno_msg(libc::ENOTDIR, "not a directory"));
        }
        Ok((d.ino, name))
    }

    fn new_node(parent: u64, name: &str, kind: FileKind, perm: u32) -> MakeNodeRequest {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        MakeNodeRequest {
            parent,
            name: Bytes::copy_from_slice(name.as_bytes()),
            kind: kind as i32,
            perm: perm & 0o7777,
            uid,
            gid,
            rdev: 0,
            target: Bytes::new(),
            exclusive: false,
            umask: 0,
            ..Default::default()
        }
    }

    /// Creates a directory with permissions `perm`.
    pub async fn mkdir(&self, path: &str, perm: u32) -> Result<Attr> {
        let (parent, name) = self.parent_of(path).await?;
        let req = Self::new_node(parent, name, FileKind::Directory, perm);
        self.client.make_node(req).await
    }

    /// Opens the regular file at `path`, creating it with `perm` if it does not exist (as
    /// O_CREAT without O_TRUNC).
    pub async fn create(&self, path: &str, perm: u32) -> Result<OpenFile> {
        let (parent, name) = self.parent_of(path).await?;
        let req = Self::new_node(parent, name, FileKind::Regular, perm);
        let attr = self.client.create(req).await?;
        Ok(self.opened(attr.ino))
    }

    /// Opens the regular file at `path`.
    pub async fn open(&self, path: &str) -> Result<OpenFile> {
        let attr = self.stat(path).await?;
        if attr.kind != FileKind::Regular as i32 {
            return Err(ClientError::errno_msg(libc::EISDIR, "not a regular file"));
        }
        self.client.open(attr.ino).await?;
        Ok(self.opened(attr.ino))
    }

    fn opened(&self, ino: u64) -> OpenFile {
        OpenFile {
            client: self.client.clone(),
            ino,
            // A handle names the session it was opened in (see `Client::handle`).
            fh: self.client.cluster().session(),
        }
    }

    /// Removes the file (or with `dir`, the empty directory) at `path`.
    pub async fn remove(&self, path: &str, dir: bool) -> Result<()> {
        let (parent, name) = self.parent_of(path).await?;
        self.client.unlink(parent, name.as_bytes(), dir).await
    }

    /// The names in the directory at `path` (without `.` and `..`).
    pub async fn list(&self, path: &str) -> Result<Vec<Bytes>> {
        let d = self.stat(path).await?;
        let mut names = Vec::new();
        let mut after = 0;
        loop {
            let page = self.client.readdir(d.ino, after, LIST_PAGE).await?;
            for e in &page.entries {
                names.push(e.name.clone());
                after = e.cookie;
            }
            if page.eof || page.entries.is_empty() {
                return Ok(names);
            }
        }
    }
}

/// The lock owner a library close names (see [`OpenFile::close_behind`]).
const NO_LOCK_OWNER: u64 = 0;

/// A regular file open through a [`Session`]. [`OpenFile::close`] reports what a close
/// reports; dropping it unclosed leaves it open until the session ends.
pub struct OpenFile {
    client: Arc<Client>,
    ino: u64,
    fh: u64,
}

impl OpenFile {
    /// Its inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Writes `data` at `off` (kept under the write lease, as a mount does); the bytes written.
    pub async fn write_at(&self, off: u64, data: Bytes) -> Result<u32> {
        self.client.write(self.fh, self.ino, off, data).await
    }

    /// Reads up to `len` bytes at `off`; shorter at the end of the file.
    pub async fn read_at(&self, off: u64, len: u32) -> Result<Bytes> {
        self.client.read(self.fh, self.ino, off, len).await
    }

    /// Makes what was written durable: the data on the OSDs, the size at the MDS.
    pub async fn sync(&self) -> Result<()> {
        self.client.fsync_handle(self.fh, self.ino).await
    }

    /// Closes it as a close through a mount does. Under the file's write lease (with time
    /// left), what was written goes to the OSDs and the MDS in the background, started now,
    /// as a local filesystem writes its page cache back: [`OpenFile::sync`] before the close,
    /// or the session's end, waits for it; another client that looks at the file revokes the
    /// lease, which waits for it too. A failure to send is reported by the file's next sync or
    /// close in this session, or by [`Session::sync_closed`]; [`Session::end`] sends what is
    /// left but only logs a failure. Otherwise, as [`OpenFile::close`].
    pub async fn close_behind(self) -> Result<()> {
        let (c, fh, ino) = (&self.client, self.fh, self.ino);
        // The library takes no POSIX locks: no lock owner of its own is ever held.
        if !(c.close_at_once(fh, ino, None, false) || c.close_kept(fh, ino, NO_LOCK_OWNER)) {
            return self.close().await;
        }
        if c.close_at_once(fh, ino, None, true) || c.release_kept(fh, ino, None) {
            return Ok(());
        }
        c.release(fh, ino).await
    }

    /// Closes it: its data and size are sent (a failure to send them is reported here).
    pub async fn close(self) -> Result<()> {
        let sent = async {
            self.client.flush_data_handle(self.fh, self.ino).await?;
            self.client.flush_handle(self.fh, self.ino).await
        }
        .await;
        let released = self.client.release(self.fh, self.ino).await;
        sent.and(released)
    }
}

/// Keeps the session alive at the MDS leader: a heartbeat every quarter of the session
/// timeout the MDS announces.
async fn heartbeats(cluster: Arc<Cluster>, mount_point: String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut every = Duration::from_secs(5);
    loop {
        match cluster
            .mds_now("heartbeat", |mut c| {
                // Built per attempt: after an eviction the retry names the new session.
                let req = HeartbeatRequest {
                    session: cluster.session(),
                    host: host.clone(),
                    mount_point: mount_point.clone(),
                };
                async move { c.heartbeat(req).await }
            })
            .await
        {
            Ok(r) => {
                every = (Duration::from_millis(r.timeout_ms as u64) / 4)
                    .clamp(Duration::from_millis(100), Duration::from_secs(15))
            }
            Err(e) => warn!(error = %e, "session heartbeat failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// After an eviction: forgets what the old session held.
async fn follow_session(client: Arc<Client>) {
    let mut session = client.cluster().watch_session();
    while session.changed().await.is_ok() {
        client.session_renewed();
    }
}

/// Keeps this session's lease stream open at the MDS leader (reopened after a failover or
/// under a new session), renews the session's read leases through it every quarter of a
/// lease, and carries out its revocations, each acked once done.
async fn lease_stream(client: Arc<Client>, notifier: Arc<OnceLock<Notifier>>) {
    let mut session = client.cluster().watch_session();
    loop {
        session.borrow_and_update();
        match client.cluster().open_leases().await {
            Ok((acks, mut down)) => {
                client.lease_stream_opened();
                // Renewals sent and not yet answered: (sequence, when sent).
                let mut renewals: std::collections::VecDeque<(u64, Instant)> =
                    std::collections::VecDeque::new();
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut last_renew: Option<Instant> = None;
                loop {
                    let next = tokio::select! {
                        m = down.message() => m,
                        _ = session.changed() => break,
                        _ = tick.tick() => {
                            let every = (client.lease_len() / 4).max(Duration::from_millis(100));
                            if client.lease_len().is_zero()
                                || last_renew.is_some_and(|t| t.elapsed() < every)
                            {
                                continue;
                            }
                            seq += 1;
                            let now = Instant::now();
                            last_renew = Some(now);
                            renewals.push_back((seq, now));
                            if renewals.len() > 64 {
                                renewals.pop_front();
                            }
                            let _ = acks.unbounded_send(LeaseUp {
                                renew: seq,
                                ..Default::default()
                            });
                            continue;
                        }
                    };
                    match next {
                        Ok(Some(d)) if d.id == 0 => {
                            while let Some(&(s, sent)) = renewals.front() {
                                if s > d.renewed {
                                    break;
                                }
                                renewals.pop_front();
                                if s == d.renewed {
                                    client.leases_renewed(sent);
                                }
                            }
                        }
                        Ok(Some(d)) => {
                            // Marked before any later message on the stream is read: a
                            // renewal answered after this revocation does not cover it.
                            client.mark_revoked(d.ino);
                            let (c, n, acks) =
                                (client.clone(), notifier.get().cloned(), acks.clone());
                            tokio::spawn(async move {
                                crate::fuse::on_revoke(&c, n, d.ino).await;
                                let _ = acks.unbounded_send(LeaseUp {
                                    ack: d.id,
                                    ..Default::default()
                                });
                            });
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %e, "lease stream broken");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot open the lease stream"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
