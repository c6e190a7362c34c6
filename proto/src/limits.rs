//! Limits both ends enforce; the MDS refuses violations with the errno named here.

/// Longest file name in bytes (ENAMETOOLONG beyond), as on ext4.
pub const NAME_MAX: usize = 255;
/// Longest symlink target in bytes (ENAMETOOLONG beyond).
pub const SYMLINK_MAX: usize = 4095;
/// Longest xattr name in bytes (ERANGE beyond).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value in bytes (E2BIG beyond).
pub const XATTR_VALUE_MAX: usize = 65536;
/// Largest file size: 2^63 - 1 like a signed off_t; EFBIG beyond.
pub const FILE_SIZE_MAX: u64 = i64::MAX as u64;

/// A read lease lasts at most this long after its grant, however often its session renews
/// (both the MDS and the clients count so).
pub const LEASE_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Write leases one `Mds.ReleaseWrites` gives back at most.
pub const RELEASES_MAX: usize = 4096;
/// Changes one `Mds.Batch` carries at most.
pub const BATCH_MAX: usize = 4096;
/// Inode numbers one `Mds.TakeInodes` hands out at most.
pub const TAKE_INODES_MAX: u32 = 65536;

/// Checks a directory entry name: not empty, no '/', no NUL, not "." or "..", at most
/// [`NAME_MAX`] bytes.
pub fn check_name(name: &[u8]) -> Result<(), i32> {
    if name.len() > NAME_MAX {
        return Err(libc_consts::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(libc_consts::EINVAL);
    }
    Ok(())
}

/// The few errno values this crate needs, without a libc dependency (Linux numbering).
pub mod libc_consts {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const E2BIG: i32 = 7;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
    pub const ETIMEDOUT: i32 = 110;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name(b"ok"), Ok(()));
        assert_eq!(check_name(&[b'a'; 255]), Ok(()));
        assert_eq!(check_name(&[b'a'; 256]), Err(libc_consts::ENAMETOOLONG));
        assert_eq!(check_name(b""), Err(libc_consts::EINVAL));
        assert_eq!(check_name(b"."), Err(libc_consts::EINVAL));
        assert_eq!(check_name(b".."), Err(libc_consts::EINVAL));
        assert_eq!(check_name(b"a/b"), Err(libc_consts::EINVAL));
        assert_eq!(check_name(b"a\0b"), Err(libc_consts::EINVAL));
        assert_eq!(check_name("é\u{1}\x7f".as_bytes()), Ok(()));
    }
}
