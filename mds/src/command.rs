//! What goes through the Raft log: a [`Command`] is one mutation, stamped by the leader with
//! the time it takes effect so every replica applies it identically.

use shoal_proto::mds as pb;

/// One log entry's payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// When the mutation happens, chosen by the proposing leader.
    #[prost(message, optional, tag = "1")]
    pub now: Option<pb::Timespec>,
    /// The mutation.
    #[prost(
        oneof = "Op",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22"
    )]
    pub op: Option<Op>,
    /// The client request this mutation answers, for exactly-once retries.
    #[prost(message, optional, tag = "20")]
    pub req: Option<RequestId>,
}

/// A client request's identity in the log (see `shoal_proto::request`).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RequestId {
    /// The client's session.
    #[prost(uint64, tag = "1")]
    pub session: u64,
    /// The request's number.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// The lowest number the client still waits for.
    #[prost(uint64, tag = "3")]
    pub oldest: u64,
}

impl From<shoal_proto::request::ReqId> for RequestId {
    fn from(r: shoal_proto::request::ReqId) -> RequestId {
        RequestId {
            session: r.session,
            seq: r.seq,
            oldest: r.oldest,
        }
    }
}

/// The MDS members' addresses, kept in the state so a snapshot carries them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberList {
    /// (id, address) pairs, by id.
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<MemberAddr>,
}

/// One member of a [`MemberList`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAddr {
    /// Raft id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// gRPC address.
    #[prost(string, tag = "2")]
    pub addr: String,
}

/// The replies one client session may still retry, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionWindow {
    /// Request numbers, ascending, with their replies.
    #[prost(message, repeated, tag = "1")]
    pub replies: Vec<WindowEntry>,
}

/// One request's reply in a [`SessionWindow`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct WindowEntry {
    /// The request's number.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Its reply.
    #[prost(message, optional, tag = "2")]
    pub reply: Option<StoredReply>,
}

/// A reply kept for retries of the request that produced it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredReply {
    /// 0 done, 1 attr, 2 removed, 3 epoch, 4 error, 5 batch, 6 inodes.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The inode of `Attr` and `Removed`.
    #[prost(message, optional, tag = "2")]
    pub attr: Option<pb::Attr>,
    /// The epoch of `Epoch`.
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
    /// The errno of an error.
    #[prost(int32, tag = "4")]
    pub errno: i32,
    /// The message of an error.
    #[prost(string, tag = "5")]
    pub message: String,
    /// Each op's reply of a `Batch` (kind 5).
    #[prost(message, repeated, tag = "6")]
    pub batch: Vec<StoredReply>,
    /// The first number of a `TakeInodes` (kind 6).
    #[prost(uint64, tag = "7")]
    pub first: u64,
    /// A batch's unlink: the file left to purge.
    #[prost(message, optional, tag = "8")]
    pub orphan: Option<pb::Attr>,
}

impl StoredReply {
    /// The reply to keep for `outcome`; `None` for outcomes that are not filesystem results.
    pub fn of(outcome: &Result<Applied, crate::error::MdsError>) -> Option<StoredReply> {
        use crate::error::MdsError;
        let r = StoredReply::default();
        Some(match outcome {
            Ok(Applied::Done) => r,
            Ok(Applied::Attr(a)) => StoredReply {
                kind: 1,
                attr: Some(*a),
                ..r
            },
            Ok(Applied::Removed(a)) => StoredReply {
                kind: 2,
                attr: *a,
                ..r
            },
            Ok(Applied::Epoch(e)) => StoredReply {
                kind: 3,
                epoch: *e,
                ..r
            },
            Err(MdsError::Fs { errno, message }) => StoredReply {
                kind: 4,
                errno: *errno,
                message: message.clone(),
                ..r
            },
            Ok(Applied::Batch(results)) => StoredReply {
                kind: 5,
                batch: results
                    .iter()
                    .map(|o| match o {
                        Ok((a, orphan)) => StoredReply {
                            kind: 1,
                            attr: Some(*a),
                            orphan: *orphan,
                            ..StoredReply::default()
                        },
                        Err((errno, message)) => StoredReply {
                            kind: 4,
                            errno: *errno,
                            message: message.clone(),
                            ..StoredReply::default()
                        },
                    })
                    .collect(),
                ..r
            },
            Ok(Applied::Inodes(first)) => StoredReply {
                kind: 6,
                first: *first,
                ..r
            },
            // Membership changes carry no client request id.
            Ok(Applied::Voters(_)) | Err(_) => return None,
        })
    }

    /// The outcome this reply stands for.
    pub fn outcome(self) -> Result<Applied, crate::error::MdsError> {
        match self.kind {
            0 => Ok(Applied::Done),
            1 => self.attr.map(Applied::Attr).ok_or_else(|| {
                crate::error::MdsError::Corrupt("stored reply without its inode".into())
            }),
            2 => Ok(Applied::Removed(self.attr)),
            3 => Ok(Applied::Epoch(self.epoch)),
            5 => Ok(Applied::Batch(
                self.batch
                    .into_iter()
                    .map(|b| match (b.kind, b.attr) {
                        (1, Some(a)) => Ok((a, b.orphan)),
                        _ => Err((b.errno, b.message)),
                    })
                    .collect(),
            )),
            6 => Ok(Applied::Inodes(self.first)),
            4 => Err(crate::error::MdsError::Fs {
                errno: self.errno,
                message: self.message,
            }),
            k => Err(crate::error::MdsError::Corrupt(format!(
                "stored reply of unknown kind {k}"
            ))),
        }
    }
}

/// What one op of a batch did: the inode it made or changed (for an unlink, the parent), and
/// the file an unlink left to purge.
pub type BatchDone = (pb::Attr, Option<pb::Attr>);

/// The mutations the state machine knows.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// Create the root directory if the namespace has none.
    #[prost(message, tag = "2")]
    Bootstrap(Bootstrap),
    /// Change attributes.
    #[prost(message, tag = "3")]
    SetAttr(pb::SetAttrRequest),
    /// Create a file, directory, symlink or special file.
    #[prost(message, tag = "4")]
    MakeNode(pb::MakeNodeRequest),
    /// Remove a name (unlink or rmdir).
    #[prost(message, tag = "5")]
    Unlink(pb::UnlinkRequest),
    /// Rename.
    #[prost(message, tag = "6")]
    Rename(pb::RenameRequest),
    /// Add a hard link.
    #[prost(message, tag = "7")]
    Link(pb::LinkRequest),
    /// Set an xattr.
    #[prost(message, tag = "8")]
    SetXattr(pb::SetXattrRequest),
    /// Remove an xattr.
    #[prost(message, tag = "9")]
    RemoveXattr(pb::RemoveXattrRequest),
    /// Forget an orphaned inode whose data is gone.
    #[prost(message, tag = "10")]
    Purge(pb::PurgeRequest),
    /// An OSD announces itself (address, host, capacity).
    #[prost(message, tag = "11")]
    OsdBoot(pb::OsdBootRequest),
    /// No-op used to confirm leadership.
    #[prost(message, tag = "12")]
    Noop(Noop),
    /// Mark an OSD up/down or in/out (the leader's failure detector).
    #[prost(message, tag = "13")]
    SetOsdState(SetOsdState),
    /// Set the pool's replication settings.
    #[prost(message, tag = "14")]
    SetPool(Pool),
    /// Take, change or release a byte-range lock.
    #[prost(message, tag = "15")]
    SetLock(pb::LockRequest),
    /// End a client session: release its locks.
    #[prost(message, tag = "16")]
    EndSession(pb::EndSessionRequest),
    /// Fence a client session: put it on the blocklist (a new OSD map epoch).
    #[prost(message, tag = "17")]
    Evict(pb::EndSessionRequest),
    /// Record what a file's writer left on the OSDs, and clear its mark.
    #[prost(message, tag = "18")]
    RecoverWrites(RecoverWrites),
    /// Write leases a session gave back together: the files' writer marks go.
    #[prost(message, tag = "19")]
    ReleaseWrites(pb::ReleaseWritesRequest),
    /// Hand a session a range of inode numbers for the files it makes under directory leases.
    #[prost(message, tag = "21")]
    TakeInodes(TakeInodes),
    /// Changes a session made under its directory leases, each applied on its own.
    #[prost(message, tag = "22")]
    Batch(pb::BatchRequest),
}

/// Payload of [`Op::TakeInodes`].
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TakeInodes {
    /// How many numbers.
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// Payload of [`Op::RecoverWrites`]: what the OSDs hold of a file marked with a writer that
/// went away (see `recovery`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecoverWrites {
    /// The file.
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    /// The mark probed for: a newer one is left alone.
    #[prost(uint64, tag = "2")]
    pub writer_mark: u64,
    /// One past the last byte the OSDs hold: the size grows to it.
    #[prost(uint64, tag = "3")]
    pub end: u64,
    /// The newest change of any object: the mtime moves up to it.
    #[prost(message, optional, tag = "4")]
    pub mtime: Option<pb::Timespec>,
}

/// An evicted session on the blocklist.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct BlockEntry {
    /// The OSD map epoch that first listed it.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// When it was evicted (seconds since the Unix epoch, leader's clock).
    #[prost(int64, tag = "2")]
    pub at: i64,
}

/// A held lock, stored under (ino, session, owner, start).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockRecord {
    /// Last byte, inclusive.
    #[prost(uint64, tag = "1")]
    pub end: u64,
    /// `pb::LockKind` (read or write).
    #[prost(int32, tag = "2")]
    pub kind: i32,
    /// The owning process on its client.
    #[prost(uint32, tag = "3")]
    pub pid: u32,
}

/// Payload of [`Op::SetOsdState`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetOsdState {
    /// OSD id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// New up state.
    #[prost(bool, tag = "2")]
    pub up: bool,
    /// New in state.
    #[prost(bool, tag = "3")]
    pub in_cluster: bool,
}

/// The data pool's settings.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Pool {
    /// Copies per object.
    #[prost(uint32, tag = "1")]
    pub size: u32,
    /// Copies durable before a write is acknowledged.
    #[prost(uint32, tag = "2")]
    pub min_size: u32,
    /// Placement groups.
    #[prost(uint32, tag = "3")]
    pub pg_count: u32,
}

/// Payload of [`Op::Bootstrap`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bootstrap {
    /// Owner of the root directory.
    #[prost(uint32, tag = "1")]
    pub uid: u32,
    /// Group of the root directory.
    #[prost(uint32, tag = "2")]
    pub gid: u32,
}

/// Payload of [`Op::Noop`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Noop {}

/// What applying a command returns to the proposer.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Nothing to return.
    Done,
    /// The inode the command created or changed.
    Attr(pb::Attr),
    /// A name was removed; a regular file that lost its last link is returned to be purged.
    Removed(Option<pb::Attr>),
    /// The OSD map's new epoch.
    Epoch(u64),
    /// The MDS voters after a membership change, by id.
    Voters(Vec<u64>),
    /// Each op of a batch: the inode it made or changed (for an unlink, the parent) and the
    /// file an unlink left to purge, or its error (errno, message).
    Batch(Vec<Result<BatchDone, (i32, String)>>),
    /// The first of the inode numbers handed out.
    Inodes(u64),
}

/// A persisted OSD map entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OsdRecord {
    /// OSD id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// gRPC address.
    #[prost(string, tag = "2")]
    pub addr: String,
    /// Failure-domain label.
    #[prost(string, tag = "3")]
    pub host: String,
    /// Capacity reported at boot.
    #[prost(uint64, tag = "4")]
    pub capacity_bytes: u64,
    /// Answering heartbeats.
    #[prost(bool, tag = "5")]
    pub up: bool,
    /// Part of the data placement.
    #[prost(bool, tag = "6")]
    pub in_cluster: bool,
    /// When it was marked down (seconds since the epoch, leader's clock); 0 while up.
    #[prost(int64, tag = "7")]
    pub down_since: i64,
    /// Map epoch of its last boot.
    #[prost(uint64, tag = "8")]
    pub up_from: u64,
}
