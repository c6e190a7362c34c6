//! The client's one error type and its mapping to an errno for the application.

use shoal_proto::error::WireError;
use shoal_proto::limits::libc_consts::{EIO, ETIMEDOUT};

/// What a client operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A daemon answered with a filesystem error; the application sees this errno.
    #[error("errno {errno}: {message}")]
    Errno {
        /// The POSIX errno.
        errno: i32,
        /// The daemon's explanation.
        message: String,
    },
    /// No daemon answered within the retry window.
    #[error("{what}: no answer within the retry window: {last}")]
    Unavailable {
        /// Which daemon or operation.
        what: String,
        /// The last transport error seen.
        last: String,
    },
    /// The session was evicted (the mount goes on with a new one; this call belonged to the
    /// old one).
    #[error("session {0:x} was evicted")]
    Evicted(u64),
    /// A daemon sent something malformed or failed without an errno.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The errno an application should see.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Errno { errno, .. } => *errno,
            ClientError::Unavailable { .. } => ETIMEDOUT,
            ClientError::Protocol(_) | ClientError::Evicted(_) => EIO,
        }
    }

    /// A filesystem error with this errno.
    pub fn errno_msg(errno: i32, message: impl Into<String>) -> ClientError {
        ClientError::Errno {
            errno,
            message: message.into(),
        }
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> ClientError {
        match e {
            WireError::Errno { errno, message } => ClientError::Errno { errno, message },
            WireError::Transport(m) => ClientError::Unavailable {
                what: "daemon".into(),
                last: m,
            },
            e @ WireError::Remap { .. } => ClientError::Unavailable {
                what: "osd".into(),
                last: e.to_string(),
            },
            e @ WireError::NotLeader { .. } => ClientError::Unavailable {
                what: "mds".into(),
                last: e.to_string(),
            },
            WireError::Evicted { session } => ClientError::Evicted(session),
            WireError::Server { code, message } => {
                ClientError::Protocol(format!("server error {code:?}: {message}"))
            }
        }
    }
}
