//! Starting the node's FUSE clients, here or in the mounter.
//!
//! A container runtime stops every process of a container when it restarts it, so a
//! `shoal-fuse` the node plugin started itself would die with the plugin's container. In a pod,
//! the node plugin therefore asks the mounter (`shoal-csi --mode mounter`, a second container
//! of the same pod that does nothing else and so has no reason to restart) to start them: it
//! serves one request per connection on a unix socket, a JSON line naming the volume, the
//! staging path and whether it is read-only, and answers a JSON line once the volume is mounted
//! or has failed to. The plugin can then restart, crash or be upgraded while the pods' mounts
//! serve on. Without `--mounter` the plugin starts the clients itself (outside containers they
//! outlive it too: each runs in a session of its own).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::node::{key, Staged};
use crate::{check, internal};

/// How long a new FUSE mount may take to come up.
pub const MOUNT_WAIT: Duration = Duration::from_secs(60);

/// The longest request line the mounter reads.
const MAX_REQUEST: u64 = 64 * 1024;

/// Starts `shoal-fuse` processes.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `shoal-fuse` binary.
    pub fuse_bin: PathBuf,
    /// MDS addresses the mounts connect to.
    pub mds: Vec<String>,
    /// Where the mounts' logs (`log/`) and pid files (`pid/`) go.
    pub state_dir: PathBuf,
}

impl Launcher {
    fn dir(&self, kind: &str) -> Result<PathBuf, Status> {
        let d = self.state_dir.join(kind);
        std::fs::create_dir_all(&d).map_err(|e| internal("state directory", e))?;
        Ok(d)
    }

    /// Mounts volume `s` at its (empty, unmounted) staging path with a new `shoal-fuse` in a
    /// session of its own, and waits until the mount is up.
    pub fn mount(&self, s: &Staged) -> Result<(), Status> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir("log")?.join(format!("{}.log", s.volume_id)))
            .map_err(|e| internal("mount log", e))?;
        let err = log.try_clone().map_err(|e| internal("mount log", e))?;
        let mut cmd = Command::new(&self.fuse_bin);
        cmd.arg("--mds")
            .arg(self.mds.join(","))
            .arg("--pid-file")
            .arg(
                self.dir("pid")?
                    .join(key(&s.staging).replace(".json", ".pid")),
            )
            .arg("-o")
            .arg(format!("volume={}", s.volume_id));
        if s.read_only {
            cmd.arg("-o").arg("ro");
        }
        // SAFETY: setsid in the child between fork and exec touches no memory of ours.
        let mut child = unsafe {
            cmd.arg(&s.staging)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .pre_exec(|| {
                    // Its own session: a signal to the starter's process group or session
                    // leaves the mount serving.
                    libc::setsid();
                    Ok(())
                })
                .spawn()
        }
        .map_err(|e| internal("starting shoal-fuse", e))?;
        let mounted = shoal_client::mount::wait_mounted(&s.staging, &mut child, MOUNT_WAIT);
        // Reaps it whenever it exits (at once if it did not mount).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        mounted
            .map_err(|e| Status::unavailable(format!("mounting volume {}: {e:#}", s.volume_id)))?;
        info!(volume = %s.volume_id, path = %s.staging.display(), "volume mounted");
        Ok(())
    }
}

/// The mounter's answer.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    /// A gRPC status code (0: mounted).
    code: i32,
    /// Why not, if not.
    message: String,
}

/// Asks the mounter at `socket` to mount `s` (blocking until it answers).
pub fn ask(socket: &Path, s: &Staged) -> Result<(), Status> {
    let unavailable = |e: std::io::Error| {
        Status::unavailable(format!("the mounter at {}: {e}", socket.display()))
    };
    let mut conn = UnixStream::connect(socket).map_err(unavailable)?;
    conn.set_read_timeout(Some(MOUNT_WAIT + Duration::from_secs(30)))
        .map_err(unavailable)?;
    let mut line = serde_json::to_vec(s).map_err(|e| internal("mount request", e))?;
    line.push(b'\n');
    conn.write_all(&line).map_err(unavailable)?;
    let mut answer = String::new();
    BufReader::new(&conn)
        .take(MAX_REQUEST)
        .read_line(&mut answer)
        .map_err(unavailable)?;
    let r: Reply = serde_json::from_str(&answer).map_err(|e| {
        Status::unavailable(format!(
            "the mounter at {} answered {answer:?}: {e}",
            socket.display()
        ))
    })?;
    match Code::from(r.code) {
        Code::Ok => Ok(()),
        code => Err(Status::new(code, r.message)),
    }
}

/// Serves mount requests on `socket` until the process ends.
pub async fn serve(socket: &Path, launcher: Launcher) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    info!(socket = %socket.display(), "shoal-csi mounter serving");
    let launcher = Arc::new(launcher);
    // One mount at a time (the plugin sends one at a time anyway).
    let one = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "mounter accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (launcher, one) = (launcher.clone(), one.clone());
        tokio::spawn(async move {
            let (rd, mut wr) = conn.into_split();
            let mut line = String::new();
            let read = tokio::io::BufReader::new(rd)
                .take(MAX_REQUEST)
                .read_line(&mut line)
                .await;
            let result = match read {
                Err(e) => Err(Status::invalid_argument(format!(
                    "reading the request: {e}"
                ))),
                Ok(_) => match request(&line) {
                    Err(e) => Err(e),
                    Ok(s) => {
                        let _one = one.lock().await;
                        tokio::task::spawn_blocking(move || launcher.mount(&s))
                            .await
                            .unwrap_or_else(|e| Err(internal("mount task", e)))
                    }
                },
            };
            let reply = match result {
                Ok(()) => Reply {
                    code: 0,
                    message: String::new(),
                },
                Err(e) => {
                    warn!(error = %e.message(), "mount refused or failed");
                    Reply {
                        code: e.code() as i32,
                        message: e.message().to_string(),
                    }
                }
            };
            if let Ok(mut out) = serde_json::to_vec(&reply) {
                out.push(b'\n');
                let _ = wr.write_all(&out).await;
            }
        });
    }
}

/// A request line, checked as the node service checks its own arguments.
fn request(line: &str) -> Result<Staged, Status> {
    let s: Staged = serde_json::from_str(line)
        .map_err(|e| Status::invalid_argument(format!("a mount request: {e}")))?;
    check::volume_id(&s.volume_id)?;
    let staging = check::path("staging", &s.staging.to_string_lossy())?;
    if staging != s.staging {
        return Err(Status::invalid_argument("staging: not a plain path"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_like_rpc_arguments() {
        let ok = r#"{"boot":"b","volume_id":"pvc-1","staging":"/var/lib/k/st","read_only":false}"#;
        assert_eq!(request(ok).expect("a good request").volume_id, "pvc-1");
        for bad in [
            "",
            "not json",
            r#"{"boot":"b","volume_id":"../x","staging":"/s","read_only":false}"#,
            r#"{"boot":"b","volume_id":"v","staging":"relative","read_only":false}"#,
            r#"{"boot":"b","volume_id":"v","staging":"/a/../b","read_only":false}"#,
            r#"{"boot":"b","volume_id":"","staging":"/s","read_only":false}"#,
        ] {
            let e = request(bad).expect_err(bad);
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
    }
}
