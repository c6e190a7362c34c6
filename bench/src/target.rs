//! What `shoal-bench run`'s workloads run against: a mounted directory (system calls through
//! the kernel, and FUSE for a FUSE mount), or Shoal through its client library, which is the
//! same client a mount runs with no kernel and no FUSE in between, so the difference between
//! the two is FUSE's own cost.
//!
//! Paths are relative to the target's scratch directory, `/`-separated.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use shoal_client::{OpenFile, Session};

/// The operations the workloads make.
pub trait Target: Sync {
    /// An open file.
    type File: Send + Sync;
    /// Creates (or opens) a file for writing and reading.
    fn create(&self, rel: &str) -> anyhow::Result<Self::File>;
    /// Opens an existing file for reading; with `direct`, for reading and writing bypassing
    /// the kernel's page cache (O_DIRECT) where the target takes it.
    fn open(&self, rel: &str, direct: bool) -> anyhow::Result<Self::File>;
    /// Writes all of `data` at `off`.
    fn write_at(&self, f: &Self::File, off: u64, data: &[u8]) -> anyhow::Result<()>;
    /// Reads into `buf` at `off`; the bytes read (fewer at the end of the file).
    fn read_at(&self, f: &Self::File, off: u64, buf: &mut [u8]) -> anyhow::Result<usize>;
    /// fsync.
    fn sync(&self, f: &Self::File) -> anyhow::Result<()>;
    /// close, with what it reports.
    fn close(&self, f: Self::File) -> anyhow::Result<()>;
    /// stat.
    fn stat(&self, rel: &str) -> anyhow::Result<()>;
    fn mkdir(&self, rel: &str) -> anyhow::Result<()>;
    fn rmdir(&self, rel: &str) -> anyhow::Result<()>;
    fn unlink(&self, rel: &str) -> anyhow::Result<()>;
    /// How many entries a directory lists.
    fn count(&self, rel: &str) -> anyhow::Result<usize>;
    /// The scratch directory as a path, for workloads that need one (tar, a second mount);
    /// None through the library.
    fn dir(&self) -> Option<&Path>;

    /// A whole file written and closed.
    fn write_file(&self, rel: &str, data: &[u8]) -> anyhow::Result<()> {
        let f = self.create(rel)?;
        self.write_at(&f, 0, data)?;
        self.close(f)
    }

    /// The first `buf.len()` bytes of a file, and how many there were.
    fn read_file(&self, rel: &str, buf: &mut [u8]) -> anyhow::Result<usize> {
        let f = self.open(rel, false)?;
        let mut n = 0;
        while n < buf.len() {
            match self.read_at(&f, n as u64, &mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        self.close(f)?;
        Ok(n)
    }
}

/// A mounted (or local) directory.
pub struct Dir(pub PathBuf);

impl Target for Dir {
    type File = File;

    fn create(&self, rel: &str) -> anyhow::Result<File> {
        Ok(fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(self.0.join(rel))?)
    }

    fn open(&self, rel: &str, direct: bool) -> anyhow::Result<File> {
        let p = self.0.join(rel);
        let mut o = fs::OpenOptions::new();
        o.read(true).write(direct);
        if direct {
            if let Ok(f) = o.clone().custom_flags(libc::O_DIRECT).open(&p) {
                return Ok(f);
            }
        }
        Ok(o.open(&p)?)
    }

    fn write_at(&self, f: &File, off: u64, data: &[u8]) -> anyhow::Result<()> {
        Ok(f.write_all_at(data, off)?)
    }

    fn read_at(&self, f: &File, off: u64, buf: &mut [u8]) -> anyhow::Result<usize> {
        Ok(f.read_at(buf, off)?)
    }

    fn sync(&self, f: &File) -> anyhow::Result<()> {
        Ok(f.sync_all()?)
    }

    fn close(&self, f: File) -> anyhow::Result<()> {
        drop(f);
        Ok(())
    }

    fn stat(&self, rel: &str) -> anyhow::Result<()> {
        fs::metadata(self.0.join(rel))?;
        Ok(())
    }

    fn mkdir(&self, rel: &str) -> anyhow::Result<()> {
        Ok(fs::create_dir(self.0.join(rel))?)
    }

    fn rmdir(&self, rel: &str) -> anyhow::Result<()> {
        Ok(fs::remove_dir(self.0.join(rel))?)
    }

    fn unlink(&self, rel: &str) -> anyhow::Result<()> {
        Ok(fs::remove_file(self.0.join(rel))?)
    }

    fn count(&self, rel: &str) -> anyhow::Result<usize> {
        Ok(fs::read_dir(self.0.join(rel))?.count())
    }

    fn dir(&self) -> Option<&Path> {
        Some(&self.0)
    }
}

/// Shoal through its client library: a session of its own, no mount.
pub struct Library {
    // Dropped before the runtime: its background tasks stop first.
    session: Session,
    rt: tokio::runtime::Runtime,
    /// The scratch directory, from the cluster's root.
    base: String,
}

impl Library {
    /// A session with the cluster whose MDS members are `mds`, and a scratch directory
    /// `name` in its root.
    pub fn start(mds: &[String], name: &str) -> anyhow::Result<Library> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("shoal-library")
            .build()?;
        let session = rt.block_on(Session::start(
            mds,
            Duration::from_secs(60),
            None,
            "shoal-bench (library)",
            Arc::new(OnceLock::new()),
        ))?;
        let lib = Library {
            session,
            rt,
            base: name.to_string(),
        };
        lib.rt
            .block_on(lib.session.mkdir(name, 0o755))
            .with_context(|| format!("creating {name} through the library"))?;
        Ok(lib)
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    /// Removes the scratch directory and all in it, and ends the session.
    pub fn finish(self) -> anyhow::Result<()> {
        let s = &self.session;
        self.rt.block_on(async {
            // What the workloads' closes left to the background went, or the run fails.
            s.sync_closed().await?;
            let mut dirs = vec![self.base.clone()];
            let mut order = Vec::new();
            while let Some(d) = dirs.pop() {
                for name in s.list(&d).await? {
                    let p = format!("{d}/{}", String::from_utf8_lossy(&name));
                    if s.stat(&p).await?.kind == shoal_proto::mds::FileKind::Directory as i32 {
                        dirs.push(p);
                    } else {
                        s.remove(&p, false).await?;
                    }
                }
                order.push(d);
            }
            for d in order.iter().rev() {
                s.remove(d, true).await?;
            }
            s.end().await;
            anyhow::Ok(())
        })
    }
}

impl Target for Library {
    type File = OpenFile;

    fn create(&self, rel: &str) -> anyhow::Result<OpenFile> {
        Ok(self
            .rt
            .block_on(self.session.create(&self.path(rel), 0o644))?)
    }

    fn open(&self, rel: &str, _direct: bool) -> anyhow::Result<OpenFile> {
        Ok(self.rt.block_on(self.session.open(&self.path(rel)))?)
    }

    fn write_at(&self, f: &OpenFile, off: u64, data: &[u8]) -> anyhow::Result<()> {
        // One copy, as the FUSE layer makes out of the kernel's request.
        let n = self
            .rt
            .block_on(f.write_at(off, Bytes::copy_from_slice(data)))?;
        anyhow::ensure!(
            n as usize == data.len(),
            "short write: {n} of {}",
            data.len()
        );
        Ok(())
    }

    fn read_at(&self, f: &OpenFile, off: u64, buf: &mut [u8]) -> anyhow::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let got = self.rt.block_on(f.read_at(off, len))?;
        buf[..got.len()].copy_from_slice(&got);
        Ok(got.len())
    }

    fn sync(&self, f: &OpenFile) -> anyhow::Result<()> {
        Ok(self.rt.block_on(f.sync())?)
    }

    fn close(&self, f: OpenFile) -> anyhow::Result<()> {
        // As a close through the mount: what it kept goes in the background.
        Ok(self.rt.block_on(f.close_behind())?)
    }

    fn stat(&self, rel: &str) -> anyhow::Result<()> {
        self.rt.block_on(self.session.stat(&self.path(rel)))?;
        Ok(())
    }

    fn mkdir(&self, rel: &str) -> anyhow::Result<()> {
        self.rt
            .block_on(self.session.mkdir(&self.path(rel), 0o755))?;
        Ok(())
    }

    fn rmdir(&self, rel: &str) -> anyhow::Result<()> {
        Ok(self
            .rt
            .block_on(self.session.remove(&self.path(rel), true))?)
    }

    fn unlink(&self, rel: &str) -> anyhow::Result<()> {
        Ok(self
            .rt
            .block_on(self.session.remove(&self.path(rel), false))?)
    }

    fn count(&self, rel: &str) -> anyhow::Result<usize> {
        Ok(self.rt.block_on(self.session.list(&self.path(rel)))?.len())
    }

    fn dir(&self) -> Option<&Path> {
        None
    }
}
