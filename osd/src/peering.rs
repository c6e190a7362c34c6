//! Peering, recovery, backfill and scrub, all driven by each PG's primary.
//!
//! Peering (on every new map epoch, for each PG this OSD is primary of): ask every up OSD what
//! it holds of the PG (object, version, tombstone), take the highest version of each object as
//! the truth, and record which acting members are behind (`missing`) and which OSDs outside
//! the acting set still hold copies (`strays`). The PG is then active: client I/O resumes at
//! once, and an object a client touches is recovered first if the primary itself is behind.
//!
//! Recovery pushes the newest copy of each missing object to the members that lack it, at most
//! a few objects at a time per OSD so client I/O keeps priority. A member that had nothing of a
//! non-empty PG is being backfilled. Once a PG is clean, strays are told to drop their copies.
//!
//! Deep scrub reads every copy of every object (each block checked against its crc32) and
//! compares their digests; a copy that is damaged or differs from the newest good one is
//! counted as inconsistent and replaced.
//!
//! Known limit: peering trusts the up OSDs; a write acknowledged only by OSDs that are all down
//! at peering time is found when they return (their higher version wins), not before.

// `tonic::Status` is what these paths hand back to gRPC handlers; boxing it would only add a
// conversion at every call.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use shoal_proto::mds::PgStat;
use shoal_proto::osd::{
    DigestRequest, DropPgRequest, ListPgsRequest, ObjectCopy, ObjectEntry, PushRequest, ScrubReply,
};
use tonic::Status;
use tracing::{info, warn};

use crate::daemon::Osd;
use crate::store::ObjMeta;

const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// An object some acting members lack at its newest version.
#[derive(Debug, Clone)]
pub struct Missing {
    /// The newest version found.
    pub version: u64,
    /// Whether the newest version is a tombstone.
    pub deleted: bool,
    /// OSDs that hold the newest version.
    pub holders: Vec<u32>,
    /// Acting members that need it.
    pub need: Vec<u32>,
}

/// A PG as its primary knows it after peering.
#[derive(Debug, Clone, Default)]
pub struct PgInfo {
    /// The map epoch it was peered at.
    pub epoch: u64,
    /// Acting set, primary first.
    pub acting: Vec<u32>,
    /// Copies per object wanted.
    pub size: u32,
    /// Objects in the PG (tombstones not counted).
    pub objects: u64,
    /// Objects some member lacks.
    pub missing: HashMap<String, Missing>,
    /// OSDs outside the acting set holding copies.
    pub strays: Vec<u32>,
    /// A member started from nothing.
    pub backfill: bool,
    /// A recovery task is running.
    pub recovering: bool,
    /// Copies recovered (cumulative over the OSD's life).
    pub recovered: u64,
    /// Bad copies found by scrub and not repaired.
    pub inconsistent: u64,
    /// Bad copies repaired (cumulative).
    pub repaired: u64,
}

impl PgInfo {
    /// The state word `shoal status` shows.
    pub fn state(&self, min_size: u32) -> String {
        let mut s = String::from(if (self.acting.len() as u32) < min_size {
            "inactive"
        } else {
            "active"
        });
        let undersized = (self.acting.len() as u32) < self.size;
        if undersized {
            s.push_str("+undersized");
        }
        if undersized || !self.missing.is_empty() {
            s.push_str("+degraded");
        }
        if !self.missing.is_empty() {
            s.push_str(if self.backfill {
                "+backfilling"
            } else {
                "+recovering"
            });
        }
        if !undersized && self.missing.is_empty() {
            s.push_str("+clean");
        }
        if self.inconsistent > 0 {
            s.push_str("+inconsistent");
        }
        s
    }
}

fn copy_meta(c: &ObjectCopy) -> ObjMeta {
    ObjMeta {
        version: c.version,
        deleted: c.deleted,
        size: c.data.len() as u64,
    }
}

impl Osd {
    fn pgs_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PgInfo>> {
        self.pgs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Peers every PG this OSD is primary of at `epoch` (skipped if a newer map arrived).
    pub async fn peer_all(self: &Arc<Self>, epoch: u64) {
        let m = self.map();
        let pl = &m.placement;
        if pl.epoch != epoch {
            return;
        }
        let mine: Vec<u32> = (0..pl.pg_count)
            .filter(|&pg| pl.primary(pg) == Some(self.id))
            .collect();
        self.pgs_lock().retain(|pg, _| mine.contains(pg));
        if mine.is_empty() {
            self.peered.notify_waiters();
            return;
        }
        let set: HashSet<u32> = mine.iter().copied().collect();
        // After the changes in flight under an older map (see `Osd::epoch_gate`).
        let drained = self.epoch_gate.write().await;
        let mut listings: Vec<(u32, Vec<ObjectEntry>)> = vec![(
            self.id,
            self.store
                .list(&set, pl.pg_count)
                .into_iter()
                .map(|(object, pg, meta)| ObjectEntry {
                    object,
                    pg,
                    version: meta.version,
                    deleted: meta.deleted,
                    size: meta.size,
                })
                .collect(),
        )];
        drop(drained);
        let peers = pl.up_ids().into_iter().filter(|&id| id != self.id);
        let remote = join_all(peers.map(|id| {
            let client = self.peer(id);
            let req = ListPgsRequest {
                pgs: mine.clone(),
                pg_count: pl.pg_count,
                epoch,
            };
            async move {
                let mut c = client?;
                match tokio::time::timeout(LIST_TIMEOUT, c.list_pgs(req)).await {
                    Ok(Ok(r)) => Some((id, r.into_inner().entries)),
                    Ok(Err(e)) => {
                        warn!(osd = id, error = %e.message(), "peer did not list its pgs");
                        None
                    }
                    Err(_) => {
                        warn!(osd = id, "peer did not list its pgs in time");
                        None
                    }
                }
            }
        }))
        .await;
        listings.extend(remote.into_iter().flatten());

        // pg -> object -> copies
        let mut by_pg: HashMap<u32, HashMap<String, Vec<(u32, ObjMeta)>>> = HashMap::new();
        for (osd, entries) in listings {
            for e in entries {
                if !set.contains(&e.pg) {
                    continue;
                }
                by_pg
                    .entry(e.pg)
                    .or_default()
                    .entry(e.object)
                    .or_default()
                    .push((
                        osd,
                        ObjMeta {
                            version: e.version,
                            deleted: e.deleted,
                            size: e.size,
                        },
                    ));
            }
        }
        let mut infos = HashMap::new();
        for &pg in &mine {
            let acting = pl.acting(pg);
            let objects = by_pg.remove(&pg).unwrap_or_default();
            let mut info = PgInfo {
                epoch,
                acting: acting.clone(),
                size: pl.size,
                ..PgInfo::default()
            };
            let mut strays = HashSet::new();
            let mut holding: HashSet<u32> = HashSet::new();
            for (object, copies) in objects {
                let newest = copies
                    .iter()
                    .map(|(_, m)| *m)
                    .max_by_key(|m| (m.version, !m.deleted))
                    .unwrap_or_default();
                for (osd, _) in &copies {
                    holding.insert(*osd);
                    if !acting.contains(osd) {
                        strays.insert(*osd);
                    }
                }
                if !newest.deleted {
                    info.objects += 1;
                }
                let version_on = |id: u32| {
                    copies
                        .iter()
                        .find(|(o, _)| *o == id)
                        .map(|(_, m)| m.version)
                };
                let need: Vec<u32> = acting
                    .iter()
                    .copied()
                    .filter(|&id| match version_on(id) {
                        Some(v) => v < newest.version,
                        // Never had it: only a live object needs copying.
                        None => !newest.deleted,
                    })
                    .collect();
                if !need.is_empty() {
                    let holders = copies
                        .iter()
                        .filter(|(_, m)| m.version == newest.version)
                        .map(|(o, _)| *o)
                        .collect();
                    info.missing.insert(
                        object,
                        Missing {
                            version: newest.version,
                            deleted: newest.deleted,
                            holders,
                            need,
                        },
                    );
                }
            }
            info.backfill = info.objects > 0 && acting.iter().any(|id| !holding.contains(id));
            info.strays = strays.into_iter().collect();
            infos.insert(pg, info);
        }
        if self.epoch() != epoch {
            return;
        }
        let mut to_recover = Vec::new();
        {
            let mut pgs = self.pgs_lock();
            for (pg, mut info) in infos {
                if let Some(old) = pgs.get(&pg) {
                    info.recovered = old.recovered;
                    info.repaired = old.repaired;
                    info.recovering = old.recovering;
                }
                if (!info.missing.is_empty() || !info.strays.is_empty()) && !info.recovering {
                    info.recovering = true;
                    to_recover.push(pg);
                }
                pgs.insert(pg, info);
            }
        }
        self.peered.notify_waiters();
        let missing: usize = self.pgs_lock().values().map(|p| p.missing.len()).sum();
        info!(osd = self.id, epoch, pgs = mine.len(), missing, "peered");
        for pg in to_recover {
            let me = self.clone();
            tokio::spawn(async move { me.recover_pg(pg).await });
        }
    }

    /// Whether peering found this OSD's own copy of `object` behind.
    pub fn locally_missing(&self, pg: u32, object: &str) -> bool {
        self.pgs_lock()
            .get(&pg)
            .and_then(|p| p.missing.get(object))
            .is_some_and(|m| m.need.contains(&self.id))
    }

    /// Records that `ids` lack the primary's current copy of `object`, and makes sure the
    /// PG's recovery runs.
    pub fn mark_missing(self: &Arc<Self>, pg: u32, object: &str, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        let meta = self.store.meta(object).unwrap_or_default();
        let start = {
            let mut pgs = self.pgs_lock();
            let Some(info) = pgs.get_mut(&pg) else {
                return;
            };
            let holders = if ids.contains(&self.id) {
                Vec::new()
            } else {
                vec![self.id]
            };
            let entry = info
                .missing
                .entry(object.to_string())
                .or_insert_with(|| Missing {
                    version: meta.version,
                    deleted: meta.deleted,
                    holders,
                    need: Vec::new(),
                });
            if !ids.contains(&self.id) {
                entry.version = meta.version;
                entry.deleted = meta.deleted;
                entry.holders = vec![self.id];
            }
            for id in ids {
                if !entry.need.contains(id) {
                    entry.need.push(*id);
                }
            }
            !std::mem::replace(&mut info.recovering, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.recover_pg(pg).await });
        }
    }

    /// Background recovery of one PG: every missing object, a few at a time across the OSD;
    /// then strays drop their copies once the PG is clean.
    async fn recover_pg(self: Arc<Self>, pg: u32) {
        loop {
            let (epoch, objects) = {
                let pgs = self.pgs_lock();
                let Some(info) = pgs.get(&pg) else { return };
                (info.epoch, info.missing.keys().cloned().collect::<Vec<_>>())
            };
            let mut failed = 0;
            for object in &objects {
                if self.epoch() != epoch {
                    break;
                }
                let Some(turn) = self.qos.recovery_turn().await else {
                    return;
                };
                let g = self.lock_object(object).await;
                if let Err(e) = self.recover_object(pg, object).await {
                    failed += 1;
                    warn!(pg, object = %object, error = %e.message(), "recovery failed; will retry");
                }
                drop(g);
                turn.finish().await;
            }
            let done = {
                let mut pgs = self.pgs_lock();
                let Some(info) = pgs.get_mut(&pg) else { return };
                if info.epoch != epoch || info.missing.is_empty() {
                    true
                } else if failed == objects.len() {
                    // Nothing moved: wait for a new map (or the next attempt) instead of spinning.
                    info.recovering = false;
                    return;
                } else {
                    false
                }
            };
            if done {
                break;
            }
        }
        self.drop_strays(pg).await;
        if let Some(info) = self.pgs_lock().get_mut(&pg) {
            info.recovering = false;
        }
    }

    async fn drop_strays(&self, pg: u32) {
        let (strays, clean) = {
            let pgs = self.pgs_lock();
            let Some(info) = pgs.get(&pg) else { return };
            (
                info.strays.clone(),
                info.missing.is_empty() && info.acting.len() as u32 >= info.size,
            )
        };
        if !clean || strays.is_empty() {
            return;
        }
        let m = self.map();
        let mut dropped = Vec::new();
        for id in strays {
            let Some(mut c) = self.peer(id) else { continue };
            let req = DropPgRequest {
                pg,
                pg_count: m.placement.pg_count,
                epoch: m.placement.epoch,
            };
            match c.drop_pg(req).await {
                Ok(_) => dropped.push(id),
                Err(e) => warn!(pg, osd = id, error = %e.message(), "stray did not drop the pg"),
            }
        }
        if let Some(info) = self.pgs_lock().get_mut(&pg) {
            info.strays.retain(|s| !dropped.contains(s));
        }
    }

    /// Brings every member that lacks `object` up to date. The caller holds the object lock.
    pub async fn recover_object(self: &Arc<Self>, pg: u32, object: &str) -> Result<(), Status> {
        let Some(miss) = self
            .pgs_lock()
            .get(&pg)
            .and_then(|p| p.missing.get(object).cloned())
        else {
            return Ok(());
        };
        let copy = self.newest_copy(object, &miss).await?;
        let mut done = Vec::new();
        if miss.need.contains(&self.id) {
            let (o, c) = (object.to_string(), copy.clone());
            self.blocking(move |s| s.install(&o, copy_meta(&c), &c.data))
                .await?;
            done.push(self.id);
        }
        let pushes = join_all(miss.need.iter().filter(|&&id| id != self.id).map(|&id| {
            let client = self.peer(id);
            let req = PushRequest {
                copy: Some(copy.clone()),
                epoch: self.epoch(),
            };
            async move {
                let mut c = client?;
                c.push(req).await.ok().map(|_| id)
            }
        }))
        .await;
        done.extend(pushes.into_iter().flatten());
        let mut pgs = self.pgs_lock();
        if let Some(info) = pgs.get_mut(&pg) {
            info.recovered += done.len() as u64;
            if let Some(m) = info.missing.get_mut(object) {
                m.need.retain(|id| !done.contains(id));
                if m.need.is_empty() {
                    info.missing.remove(object);
                }
            }
            if info.missing.contains_key(object) {
                return Err(Status::unavailable(format!(
                    "object {object}: some copies could not be recovered yet"
                )));
            }
        }
        Ok(())
    }

    /// The newest copy of an object: the local one if this OSD holds it, else pulled from a
    /// holder.
    async fn newest_copy(&self, object: &str, miss: &Missing) -> Result<ObjectCopy, Status> {
        if miss.holders.contains(&self.id) {
            let o = object.to_string();
            match self.blocking(move |s| s.read_copy(&o)).await {
                Ok(Some((meta, data))) if meta.version >= miss.version => {
                    return Ok(ObjectCopy {
                        object: object.to_string(),
                        version: meta.version,
                        deleted: meta.deleted,
                        data,
                    })
                }
                Ok(_) => {}
                Err(e) => warn!(object, error = %e.message(), "local copy unreadable"),
            }
        }
        let mut last = Status::unavailable(format!("no holder of {object} answers"));
        for &id in miss.holders.iter().filter(|&&id| id != self.id) {
            match self.pull_from(id, object).await {
                Ok(c) if c.version >= miss.version => return Ok(c),
                Ok(c) => {
                    last = Status::unavailable(format!(
                        "osd.{id} has {object} at {:#x}, older than {:#x}",
                        c.version, miss.version
                    ))
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Replaces a damaged local copy with the newest good copy an acting peer holds. The
    /// caller holds the object lock.
    pub async fn repair_local(self: &Arc<Self>, pg: u32, object: &str) -> Result<(), Status> {
        let acting = self.map().placement.acting(pg);
        let mut best: Option<ObjectCopy> = None;
        for &id in acting.iter().filter(|&&id| id != self.id) {
            if let Ok(c) = self.pull_from(id, object).await {
                if best.as_ref().is_none_or(|b| c.version > b.version) {
                    best = Some(c);
                }
            }
        }
        let Some(copy) = best else {
            return Err(shoal_proto::error::errno_status(
                shoal_proto::limits::libc_consts::EIO,
                format!("object {object}: local copy damaged and no replica has a good one"),
            ));
        };
        let (o, c) = (object.to_string(), copy);
        self.blocking(move |s| s.install(&o, copy_meta(&c), &c.data))
            .await?;
        warn!(pg, object, "repaired a damaged local copy from a replica");
        let mut pgs = self.pgs_lock();
        if let Some(info) = pgs.get_mut(&pg) {
            info.repaired += 1;
            if let Some(m) = info.missing.get_mut(object) {
                m.need.retain(|id| *id != self.id);
            }
        }
        Ok(())
    }

    /// Scrubs every PG this OSD is primary of. Light: compare versions (a re-peering). Deep:
    /// read and checksum every copy, compare digests, and replace bad copies.
    pub async fn scrub(self: &Arc<Self>, deep: bool) -> Result<ScrubReply, Status> {
        let epoch = self.epoch();
        if !deep {
            self.peer_all(epoch).await;
            let pgs = self.pgs_lock();
            return Ok(ScrubReply {
                objects: pgs.values().map(|p| p.objects).sum(),
                inconsistent: pgs.values().map(|p| p.missing.len() as u64).sum(),
                repaired: 0,
            });
        }
        let mut reply = ScrubReply::default();
        let pgs: Vec<(u32, Vec<u32>)> = self
            .pgs_lock()
            .iter()
            .map(|(pg, i)| (*pg, i.acting.clone()))
            .collect();
        let pg_count = self.map().placement.pg_count;
        for (pg, acting) in pgs {
            let set: HashSet<u32> = [pg].into();
            let mut objects: HashSet<String> = self
                .store
                .list(&set, pg_count)
                .into_iter()
                .map(|(o, _, _)| o)
                .collect();
            for &id in acting.iter().filter(|&&id| id != self.id) {
                if let Some(mut c) = self.peer(id) {
                    let req = ListPgsRequest {
                        pgs: vec![pg],
                        pg_count,
                        epoch,
                    };
                    if let Ok(r) = c.list_pgs(req).await {
                        objects.extend(r.into_inner().entries.into_iter().map(|e| e.object));
                    }
                }
            }
            let mut bad_in_pg = 0;
            for object in objects {
                let _g = self.lock_object(&object).await;
                reply.objects += 1;
                let (bad, fixed) = self.scrub_object(pg, &object, &acting).await;
                reply.inconsistent += bad;
                reply.repaired += fixed;
                bad_in_pg += bad - fixed;
            }
            if let Some(info) = self.pgs_lock().get_mut(&pg) {
                info.inconsistent = bad_in_pg;
            }
        }
        info!(
            osd = self.id,
            objects = reply.objects,
            inconsistent = reply.inconsistent,
            repaired = reply.repaired,
            "deep scrub done"
        );
        Ok(reply)
    }

    /// Compares every acting copy of one object; returns (bad copies, repaired copies).
    async fn scrub_object(self: &Arc<Self>, pg: u32, object: &str, acting: &[u32]) -> (u64, u64) {
        let digests = join_all(acting.iter().map(|&id| {
            let client = self.peer(id);
            let req = DigestRequest {
                object: object.to_string(),
                epoch: self.epoch(),
            };
            async move {
                let mut c = client?;
                c.digest(req).await.ok().map(|r| (id, r.into_inner()))
            }
        }))
        .await;
        let digests: Vec<_> = digests.into_iter().flatten().collect();
        // The reference: the newest intact copy, the primary's if it is one of them.
        let newest = digests
            .iter()
            .filter(|(_, d)| d.exists && d.intact)
            .map(|(_, d)| d.version)
            .max();
        let Some(newest) = newest else {
            return (0, 0);
        };
        let good = |d: &shoal_proto::osd::DigestReply| d.exists && d.intact && d.version == newest;
        let reference = digests
            .iter()
            .filter(|(_, d)| good(d))
            .min_by_key(|(id, _)| (*id != self.id, *id))
            .map(|(id, d)| (*id, d.crc, d.size, d.deleted));
        let Some((ref_id, crc, size, deleted)) = reference else {
            return (0, 0);
        };
        let bad: Vec<u32> = acting
            .iter()
            .copied()
            .filter(|id| {
                digests
                    .iter()
                    .find(|(d_id, _)| d_id == id)
                    .is_none_or(|(_, d)| {
                        !good(d) || d.crc != crc || d.size != size || d.deleted != deleted
                    })
            })
            .collect();
        if bad.is_empty() {
            return (0, 0);
        }
        warn!(
            pg,
            object,
            ?bad,
            reference = ref_id,
            "scrub found bad copies"
        );
        let copy = if ref_id == self.id {
            let o = object.to_string();
            match self.blocking(move |s| s.read_copy(&o)).await {
                Ok(Some((meta, data))) => Some(ObjectCopy {
                    object: object.to_string(),
                    version: meta.version,
                    deleted: meta.deleted,
                    data,
                }),
                _ => None,
            }
        } else {
            self.pull_from(ref_id, object).await.ok()
        };
        let Some(copy) = copy else {
            return (bad.len() as u64, 0);
        };
        let mut fixed = 0;
        for id in &bad {
            let ok = if *id == self.id {
                let (o, c) = (object.to_string(), copy.clone());
                self.blocking(move |s| s.install(&o, copy_meta(&c), &c.data))
                    .await
                    .is_ok()
            } else if let Some(mut c) = self.peer(*id) {
                c.push(PushRequest {
                    copy: Some(copy.clone()),
                    epoch: self.epoch(),
                })
                .await
                .is_ok()
            } else {
                false
            };
            if ok {
                fixed += 1;
            }
        }
        if let Some(info) = self.pgs_lock().get_mut(&pg) {
            info.repaired += fixed;
        }
        (bad.len() as u64, fixed)
    }

    /// This OSD's PGs for the heartbeat.
    pub fn pg_stats(&self) -> Vec<PgStat> {
        let m = self.map();
        let min_size = m.placement.min_size;
        let current = m.placement.epoch;
        let counts = self.store.count_by_pg(m.placement.pg_count);
        let pgs = self.pgs_lock();
        (0..m.placement.pg_count)
            .filter(|&pg| m.placement.primary(pg) == Some(self.id))
            .map(|pg| match pgs.get(&pg).filter(|i| i.epoch == current) {
                Some(i) => PgStat {
                    pg,
                    state: i.state(min_size),
                    objects: counts.get(&pg).copied().unwrap_or(0),
                    missing: i.missing.values().map(|m| m.need.len() as u64).sum(),
                    recovered: i.recovered,
                    acting: i.acting.clone(),
                    epoch: current,
                    inconsistent: i.inconsistent,
                    repaired: i.repaired,
                    primary: self.id,
                },
                None => PgStat {
                    pg,
                    state: "peering".into(),
                    acting: m.placement.acting(pg),
                    epoch: current,
                    primary: self.id,
                    ..PgStat::default()
                },
            })
            .collect()
    }

    /// Forgets this OSD's copies of a PG it no longer serves.
    pub async fn drop_pg(self: &Arc<Self>, r: DropPgRequest) -> Result<(), Status> {
        self.ensure_epoch(r.epoch).await;
        let m = self.map();
        if m.placement.acting(r.pg).contains(&self.id)
            || m.placement.mapping(r.pg).contains(&self.id)
        {
            return Err(Status::failed_precondition(format!(
                "osd.{} serves pg {} at epoch {}",
                self.id, r.pg, m.placement.epoch
            )));
        }
        let set: HashSet<u32> = [r.pg].into();
        let objects = self.store.list(&set, r.pg_count.max(1));
        let n = objects.len();
        for (object, _, _) in objects {
            let _g = self.lock_object(&object).await;
            self.blocking(move |s| s.remove(&object)).await?;
        }
        info!(
            osd = self.id,
            pg = r.pg,
            objects = n,
            "dropped stray pg copy"
        );
        Ok(())
    }
}
