//! The names of the quota xattrs, which the MDS serves and clients set or read (see the MDS's
//! `fsm::quota` for what they mean).

/// The byte limit of a directory's tree.
pub const MAX_BYTES: &[u8] = b"shoal.quota.max_bytes";
/// The inode limit of a directory's tree.
pub const MAX_FILES: &[u8] = b"shoal.quota.max_files";
/// The sizes of the regular files below a directory (read only).
pub const RBYTES: &[u8] = b"shoal.dir.rbytes";
/// How many inodes are below a directory (read only).
pub const RFILES: &[u8] = b"shoal.dir.rfiles";

/// Whether `name` is one of the quota xattrs.
pub fn is_quota_xattr(name: &[u8]) -> bool {
    [MAX_BYTES, MAX_FILES, RBYTES, RFILES].contains(&name)
}

/// Whether `name` sets a limit (rather than reading usage).
pub fn is_limit(name: &[u8]) -> bool {
    name == MAX_BYTES || name == MAX_FILES
}
