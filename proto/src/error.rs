//! How a POSIX errno travels in a gRPC status.
//!
//! A server turns its error into `tonic::Status` with [`errno_status`]: the status code says
//! roughly what happened, the `shoal-errno` metadata says exactly which errno the application
//! should see. A client recovers it with [`status_errno`]; a status without it (a transport
//! failure, a server crash) is reported as a [`WireError::Transport`] so callers can retry.

use tonic::{Code, Status};

/// Metadata key carrying the errno.
pub const ERRNO_KEY: &str = "shoal-errno";
/// Metadata key carrying the OSD map epoch of an OSD that refused a request placed by an
/// older map (it is not the PG's primary any more, or not yet).
pub const EPOCH_KEY: &str = "shoal-epoch";

/// Metadata key naming the evicted session a server refuses (hex).
pub const EVICTED_KEY: &str = "shoal-evicted";

/// Metadata key naming the MDS leader's address when a follower refuses a request.
pub const LEADER_KEY: &str = "shoal-leader";

/// The status an MDS member that is not the leader answers: a typed redirect naming the
/// leader's address when it knows it.
pub fn not_leader_status(leader: Option<&str>) -> Status {
    let mut status = Status::new(Code::Unavailable, "not the mds leader");
    // Present even when the leader is unknown, so clients tell a redirect from a dead server.
    if let Ok(v) = leader.unwrap_or("").parse() {
        status.metadata_mut().insert(LEADER_KEY, v);
    }
    status
}

/// The status an OSD answers when a request was placed by a map it does not agree with.
pub fn remap_status(epoch: u64, message: impl Into<String>) -> Status {
    let mut status = Status::new(Code::Aborted, message);
    if let Ok(v) = epoch.to_string().parse() {
        status.metadata_mut().insert(EPOCH_KEY, v);
    }
    status
}

/// The status an MDS or OSD answers a session that was evicted (fenced).
pub fn evicted_status(session: u64) -> Status {
    let mut status = Status::new(
        Code::FailedPrecondition,
        format!("session {session:x} was evicted"),
    );
    if let Ok(v) = format!("{session:x}").parse() {
        status.metadata_mut().insert(EVICTED_KEY, v);
    }
    status
}

/// Builds the status for an errno with a human-readable message.
pub fn errno_status(errno: i32, message: impl Into<String>) -> Status {
    use crate::limits::libc_consts::*;
    let code = match errno {
        ENOENT | ENODATA => Code::NotFound,
        EEXIST => Code::AlreadyExists,
        EPERM => Code::PermissionDenied,
        EIO => Code::DataLoss,
        ENOSPC => Code::ResourceExhausted,
        ETIMEDOUT => Code::DeadlineExceeded,
        _ => Code::FailedPrecondition,
    };
    let mut status = Status::new(code, message);
    if let Ok(v) = errno.to_string().parse() {
        status.metadata_mut().insert(ERRNO_KEY, v);
    }
    status
}

/// What a failed call means to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The server answered with a filesystem error: hand this errno to the application.
    #[error("errno {errno}: {message}")]
    Errno {
        /// The POSIX errno.
        errno: i32,
        /// The server's explanation.
        message: String,
    },
    /// The OSD placed the request differently at map `epoch`: refresh the map and resend.
    #[error("placed by an old map (osd is at epoch {epoch}): {message}")]
    Remap {
        /// The OSD's map epoch.
        epoch: u64,
        /// The OSD's explanation.
        message: String,
    },
    /// The MDS member is not the leader; `leader` is the leader's address when known.
    #[error("not the mds leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's address.
        leader: Option<String>,
    },
    /// The server refused `session`: it was evicted. The client starts a new session; what
    /// the old one had open fails with EIO.
    #[error("session {session:x} was evicted")]
    Evicted {
        /// The evicted session.
        session: u64,
    },
    /// The call did not reach a server or its answer did not come back; worth retrying.
    #[error("transport: {0}")]
    Transport(String),
    /// The server answered with an error that carries no errno (a bug or a malformed request).
    #[error("server error {code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl WireError {
    /// The errno an application should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            WireError::Errno { errno, .. } => *errno,
            WireError::Transport(_)
            | WireError::Remap { .. }
            | WireError::NotLeader { .. }
            | WireError::Evicted { .. } => crate::limits::libc_consts::EIO,
            WireError::Server { .. } => crate::limits::libc_consts::EIO,
        }
    }
}

/// Classifies a status received by a client.
pub fn status_errno(status: &Status) -> WireError {
    if let Some(errno) = status
        .metadata()
        .get(ERRNO_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
    {
        return WireError::Errno {
            errno,
            message: status.message().to_string(),
        };
    }
    if let Some(epoch) = status
        .metadata()
        .get(EPOCH_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
    {
        return WireError::Remap {
            epoch,
            message: status.message().to_string(),
        };
    }
    if let Some(session) = status
        .metadata()
        .get(EVICTED_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
    {
        return WireError::Evicted { session };
    }
    if let Some(v) = status.metadata().get(LEADER_KEY) {
        let leader = v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        return WireError::NotLeader { leader };
    }
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            WireError::Transport(status.message().to_string())
        }
        code => WireError::Server {
            code,
            message: status.message().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips() {
        for errno in [1, 2, 5, 17, 22, 39, 61, 95] {
            let st = errno_status(errno, "x");
            assert_eq!(status_errno(&st).errno(), errno);
        }
        let transport = Status::unavailable("connection refused");
        assert!(matches!(status_errno(&transport), WireError::Transport(_)));
        assert_eq!(status_errno(&Status::internal("boom")).errno(), 5);
        assert_eq!(
            status_errno(&not_leader_status(Some("10.0.0.1:7000"))),
            WireError::NotLeader {
                leader: Some("10.0.0.1:7000".into())
            }
        );
        assert_eq!(
            status_errno(&not_leader_status(None)),
            WireError::NotLeader { leader: None }
        );
        assert_eq!(
            status_errno(&remap_status(9, "not primary")),
            WireError::Remap {
                epoch: 9,
                message: "not primary".into()
            }
        );
        let evicted = status_errno(&evicted_status(0xabc));
        assert_eq!(evicted, WireError::Evicted { session: 0xabc });
        assert_eq!(evicted.errno(), 5);
    }
}
