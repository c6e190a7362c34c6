//! Recovering what a writer left unrecorded: a client holding a file's write lease keeps the
//! size and mtime of its writes locally (its data is already on the OSDs). If it goes away
//! without sending them (killed, evicted, or its lease simply ran out), the file stays marked
//! with its session (`Attr.writer`), and before another session reads or changes the file the
//! leader asks every up OSD which objects of it they hold ([`Prober::file_extent`]): the end of
//! the last byte any object holds becomes the size if it is larger, and the newest change of
//! any object the mtime if it is newer (CephFS probes the objects the same way).
//!
//! Invariants:
//! - A probe is an answer only if every placement group has an OSD up and every up OSD
//!   answered: a dark PG may hold the last object.
//! - The recorded size only grows from a probe, and the mark is cleared only if it is still
//!   the one probed for (`Attr.writer_mark`), so a writer that took the lease again meanwhile
//!   stays marked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shoal_proto::layout::{first_object_at, object_to_file};
use shoal_proto::limits::FILE_SIZE_MAX;
use shoal_proto::mds::{Attr, Layout, OsdMap, Timespec};
use shoal_proto::osd::osd_client::OsdClient;
use shoal_proto::placement::Placement;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::error::MdsError;

/// How long one probe may take before it gives up (the file then keeps its mark).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the OSDs hold of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// One past the last byte any object holds (0: no objects).
    pub end: u64,
    /// The newest change to any copy of any object.
    pub mtime: Option<Timespec>,
}

/// Whether `attr`'s writer mark must be settled before `session` reads or changes the file:
/// another session's mark, whose write lease is not live (`writer_live`, asked only then).
pub fn needs_recovery(
    attr: &Attr,
    session: Option<u64>,
    writer_live: impl FnOnce(u64) -> bool,
) -> bool {
    attr.writer != 0 && Some(attr.writer) != session && !writer_live(attr.writer)
}

/// One past the last file byte of an object `objno` holding `size` bytes; `None` for an
/// object no file of this layout can have (larger than an object, or past the largest file).
fn object_end(layout: &Layout, objno: u64, size: u64) -> Option<u64> {
    if size == 0 {
        return Some(0);
    }
    let last = first_object_at(layout, FILE_SIZE_MAX).saturating_add(layout.stripe_count as u64);
    if size > layout.object_size as u64 || objno > last {
        return None;
    }
    Some(object_to_file(layout, objno, size - 1).saturating_add(1))
}

fn newer(a: Option<Timespec>, b: Timespec) -> Option<Timespec> {
    match a {
        Some(a) if (a.sec, a.nsec) >= (b.sec, b.nsec) => Some(a),
        _ => Some(b),
    }
}

/// Asks OSDs what they hold of files (connections kept by OSD id and address).
#[derive(Default)]
pub struct Prober {
    clients: Mutex<HashMap<u32, (String, OsdClient<Channel>)>>,
}

impl Prober {
    fn client(&self, id: u32, addr: &str) -> Result<OsdClient<Channel>, MdsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, c)) = clients.get(&id) {
            if a == addr {
                return Ok(c.clone());
            }
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| MdsError::Osd(format!("bad address {addr:?} of osd.{id}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let c = OsdClient::new(ep.connect_lazy());
        clients.insert(id, (addr.to_string(), c.clone()));
        Ok(c)
    }

    /// What the OSDs of `map` hold of inode `ino` laid out by `layout`.
    pub async fn file_extent(
        &self,
        map: &OsdMap,
        ino: u64,
        layout: &Layout,
    ) -> Result<Extent, MdsError> {
        shoal_proto::layout::validate(layout)
            .map_err(|_| MdsError::Corrupt(format!("unusable layout {layout:?} of {ino}")))?;
        let placement = Placement::from_map(map);
        if let Some(pg) = (0..placement.pg_count).find(|&pg| placement.primary(pg).is_none()) {
            return Err(MdsError::Osd(format!("pg {pg} has no OSD up")));
        }
        let asks = map.osds.iter().filter(|o| o.up).map(|o| {
            let client = self.client(o.id, &o.addr);
            let id = o.id;
            async move {
                let objects = shoal_proto::listing::list_file(client?, ino, 0, true)
                    .await
                    .map_err(|s| MdsError::Osd(format!("osd.{id}: {}", s.message())))?;
                Ok::<_, MdsError>(objects)
            }
        });
        let lists = tokio::time::timeout(PROBE_TIMEOUT, futures::future::try_join_all(asks))
            .await
            .map_err(|_| MdsError::Osd(format!("listing the objects of {ino} timed out")))??;
        let mut out = Extent {
            end: 0,
            mtime: None,
        };
        for o in lists.into_iter().flatten() {
            let Some(end) = object_end(layout, o.objno, o.size) else {
                warn!(
                    ino,
                    objno = o.objno,
                    size = o.size,
                    "an osd lists an impossible object"
                );
                continue;
            };
            out.end = out.end.max(end);
            if o.mtime_sec != 0 || o.mtime_nsec != 0 {
                let t = Timespec {
                    sec: o.mtime_sec,
                    nsec: o.mtime_nsec,
                };
                out.mtime = newer(out.mtime, t);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_last_byte_maps_back_into_the_file() {
        let plain = shoal_proto::layout::default_layout();
        assert_eq!(object_end(&plain, 0, 0), Some(0));
        assert_eq!(object_end(&plain, 0, 10), Some(10));
        let os = plain.object_size as u64;
        assert_eq!(object_end(&plain, 2, 5), Some(2 * os + 5));
        assert_eq!(object_end(&plain, 2, os + 1), None, "larger than an object");
        assert_eq!(
            object_end(&plain, u64::MAX, 1),
            None,
            "past the largest file"
        );
        assert!(object_end(&plain, FILE_SIZE_MAX / os, 1).is_some());
        // Striped: 4 objects of 1 MiB in stripes of 64 KiB units.
        let striped = Layout {
            object_size: 1 << 20,
            stripe_unit: 64 << 10,
            stripe_count: 4,
        };
        // The second object's first unit holds file bytes 64 KiB..128 KiB.
        assert_eq!(object_end(&striped, 1, 100), Some((64 << 10) + 100));
        // Its second unit is in the next stripe: file bytes 5 × 64 KiB on.
        assert_eq!(
            object_end(&striped, 1, (64 << 10) + 1),
            Some(5 * (64 << 10) + 1)
        );
        assert_eq!(object_end(&striped, u64::MAX - 1, 1 << 20), None);
    }

    #[test]
    fn only_another_sessions_mark_without_a_live_lease_needs_recovery() {
        let a = Attr {
            writer: 7,
            ..Default::default()
        };
        let live = |w: u64| w == 7;
        let gone = |_: u64| false;
        assert!(needs_recovery(&a, Some(8), gone));
        assert!(needs_recovery(&a, None, gone));
        assert!(!needs_recovery(&a, Some(7), gone), "its own writes");
        assert!(
            !needs_recovery(&a, Some(8), live),
            "the writer still holds its lease"
        );
        assert!(!needs_recovery(&Attr::default(), Some(8), gone), "no mark");
    }
}
