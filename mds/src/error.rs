//! The MDS's error type and its one conversion to `tonic::Status`.

use shoal_proto::error::errno_status;
use tonic::Status;

/// Everything that can go wrong in the MDS.
#[derive(Debug, thiserror::Error)]
pub enum MdsError {
    /// A filesystem error the application should see as this errno (ENOENT, EEXIST, ...).
    #[error("{message} (errno {errno})")]
    Fs {
        /// The POSIX errno.
        errno: i32,
        /// What was wrong, for logs and the client's error text.
        message: String,
    },
    /// This node cannot order writes or answer reads now: it is not the Raft leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's address, when known.
        leader: Option<String>,
    },
    /// The client session was evicted: the MDS refuses it from now on.
    #[error("session {0:x} was evicted")]
    Evicted(u64),
    /// RocksDB failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A local file (a snapshot being sent or received) could not be read or written.
    #[error("file: {0}")]
    Io(#[from] std::io::Error),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The OSDs could not be asked what they hold (a dark PG, an OSD not answering).
    #[error("osds: {0}")]
    Osd(String),
    /// A record on disk could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The node is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl MdsError {
    /// A filesystem error.
    pub fn fs(errno: i32, message: impl Into<String>) -> MdsError {
        MdsError::Fs {
            errno,
            message: message.into(),
        }
    }
}

impl From<MdsError> for Status {
    fn from(e: MdsError) -> Status {
        match e {
            MdsError::Fs { errno, message } => errno_status(errno, message),
            MdsError::NotLeader { leader } => {
                shoal_proto::error::not_leader_status(leader.as_deref())
            }
            MdsError::Evicted(session) => shoal_proto::error::evicted_status(session),
            MdsError::Storage(e) => errno_status(libc::EIO, format!("mds storage: {e}")),
            MdsError::Io(e) => errno_status(libc::EIO, format!("mds file: {e}")),
            MdsError::Raft(e) => Status::unavailable(format!("raft: {e}")),
            MdsError::Osd(m) => Status::unavailable(format!("osds: {m}")),
            MdsError::Corrupt(m) => errno_status(libc::EIO, format!("mds corrupt record: {m}")),
            MdsError::Shutdown => Status::unavailable("mds shutting down"),
        }
    }
}
