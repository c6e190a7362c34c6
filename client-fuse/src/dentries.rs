//! The kernel's directory entries of a mount.
//!
//! The kernel may keep an entry (a name in a directory, or its absence) while this mount holds
//! its lease on the directory: path walks then ask the mount nothing. When the mount loses
//! what it knew of a directory (a revocation, an evicted session, a change of its own that
//! failed halfway), it drops every entry the kernel keeps at once with
//! `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16 and later), before it acks. That notification takes no
//! lock. Dropping one name with `FUSE_NOTIFY_INVAL_ENTRY` instead waits for the directory's
//! lock, which a create of this mount in that directory holds while it waits for the MDS,
//! which may be waiting for this very ack: two mounts creating in one directory stalled each
//! other that way until their leases ran out.
//!
//! Where the kernel lacks the notification, or the mount is asked not to (`-o noentrycache`),
//! the kernel keeps no entries and asks the mount at every path walk, which answers from its
//! own lease cache.
//!
//! A dropped entry the kernel finds a mount stacked on is unmounted there (as when a name
//! changes under an NFS mount): mounts stacked on directories inside a Shoal mount want
//! `-o noentrycache`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tracing::error;

/// `FUSE_NOTIFY_INC_EPOCH`: every entry the kernel holds of the connection is stale.
const NOTIFY_INC_EPOCH: i32 = 8;

/// Whether, and through which descriptor, the kernel keeps this mount's entries.
#[derive(Debug, Default)]
pub struct KernelEntries {
    /// The FUSE connection's device, once the kernel took a first drop.
    dev: OnceLock<OwnedFd>,
    /// A drop failed: the kernel is given no more entries (those it has run out with their
    /// leases).
    broken: AtomicBool,
}

impl KernelEntries {
    /// Lets the kernel keep entries of the FUSE connection on `dev` if it can drop them all
    /// at once; a first drop tells. Returns whether it can.
    pub fn start(&self, dev: BorrowedFd<'_>) -> io::Result<bool> {
        let dev = dev.try_clone_to_owned()?;
        match notify_inc_epoch(&dev) {
            Ok(()) => {
                let _ = self.dev.set(dev);
                Ok(true)
            }
            // Kernels before 6.16 refuse the notification.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the kernel may keep entries now.
    pub fn kept(&self) -> bool {
        self.dev.get().is_some() && !self.broken.load(Ordering::Relaxed)
    }

    /// Every entry the kernel keeps is stale from now on: it asks the mount at its next use.
    pub fn drop_all(&self) {
        let Some(dev) = self.dev.get() else { return };
        if let Err(e) = notify_inc_epoch(dev) {
            if !self.broken.swap(true, Ordering::Relaxed) {
                error!(error = %e, "cannot drop the kernel's directory entries; it keeps none from now on");
            }
        }
    }
}

/// Writes `FUSE_NOTIFY_INC_EPOCH` to the FUSE device: a bare `fuse_out_header` (length,
/// then the notification's code where a reply has its error, then 0 where a reply has the
/// request it answers).
fn notify_inc_epoch(dev: &OwnedFd) -> io::Result<()> {
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&NOTIFY_INC_EPOCH.to_ne_bytes());
    // SAFETY: writes 16 bytes from a live buffer to a descriptor this value owns.
    let n = unsafe { libc::write(dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_kept_before_start() {
        let k = KernelEntries::default();
        assert!(!k.kept());
        k.drop_all();
        assert!(!k.kept());
    }

    #[test]
    fn a_descriptor_that_refuses_the_drop_keeps_nothing() {
        // /dev/null takes any write; a pipe's read end refuses it (EBADF): not a FUSE device.
        let (r, _w) = std::io::pipe().unwrap();
        let k = KernelEntries::default();
        let fd: OwnedFd = r.into();
        assert!(k.start(std::os::fd::AsFd::as_fd(&fd)).is_err());
        assert!(!k.kept());
    }
}
