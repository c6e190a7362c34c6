//! Placement: object → placement group → OSD, a pure function of the OSD map.
//!
//! An object's PG is a stable hash of its name modulo the pool's PG count. A PG's OSD is the
//! one with the highest hash of (pg, osd id) among all OSDs in the map (rendezvous hashing),
//! so adding an OSD moves only the PGs it wins. Down OSDs keep their PGs: their objects are
//! unavailable until they return (replication arrives with the placement-group issue).

/// PGs in the default pool.
pub const DEFAULT_PG_COUNT: u32 = 128;

/// 64-bit FNV-1a, then a splitmix finaliser for good low bits.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The PG an object belongs to.
pub fn object_pg(object: &str, pg_count: u32) -> u32 {
    (stable_hash(object.as_bytes()) % pg_count.max(1) as u64) as u32
}

/// The OSD that stores a PG: the highest rendezvous score among `osd_ids`.
pub fn pg_osd(pg: u32, osd_ids: impl IntoIterator<Item = u32>) -> Option<u32> {
    osd_ids
        .into_iter()
        .max_by_key(|&id| (mix(((pg as u64) << 32) ^ id as u64 ^ 0x5bd1_e995), id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn objects_spread_evenly() {
        let osds = [0u32, 1, 2];
        let mut per: HashMap<u32, u32> = HashMap::new();
        for i in 0..30_000u64 {
            let name = crate::layout::object_name(i / 7 + 1, i % 7);
            let pg = object_pg(&name, 1024);
            *per.entry(pg_osd(pg, osds).unwrap()).or_default() += 1;
        }
        let max = *per.values().max().unwrap() as f64;
        let min = *per.values().min().unwrap() as f64;
        assert!(max / min < 1.25, "{per:?}");
    }

    #[test]
    fn adding_an_osd_moves_only_its_share() {
        let before: Vec<u32> = (0..1024).map(|pg| pg_osd(pg, [0, 1, 2]).unwrap()).collect();
        let after: Vec<u32> = (0..1024)
            .map(|pg| pg_osd(pg, [0, 1, 2, 3]).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(after.iter().zip(&before).all(|(a, b)| a == b || *a == 3));
        assert!((150..360).contains(&moved), "moved {moved}");
    }

    #[test]
    fn no_osds_no_placement() {
        assert_eq!(pg_osd(1, []), None);
    }
}
