//! Exactly-once MDS mutations: every mutation a client sends carries its request id in the
//! `shoal-req` metadata — the client's session, the request's sequence number, and the lowest
//! sequence number the client still waits for. A retry reuses the id, so the MDS answers it
//! with the reply it stored the first time instead of applying the mutation twice; replies
//! below the lowest outstanding number are no longer needed and are dropped.

use tonic::metadata::MetadataMap;

/// Metadata key carrying the request id.
pub const REQ_KEY: &str = "shoal-req";

/// A mutation's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqId {
    /// The client's session (random per mount).
    pub session: u64,
    /// This request's number within the session (from 1).
    pub seq: u64,
    /// The lowest number the client has not yet seen answered (≤ `seq`).
    pub oldest: u64,
}

impl ReqId {
    /// Puts the id into a request's metadata.
    pub fn insert(&self, md: &mut MetadataMap) {
        let v = format!("{:x}:{:x}:{:x}", self.session, self.seq, self.oldest);
        if let Ok(v) = v.parse() {
            md.insert(REQ_KEY, v);
        }
    }

    /// Reads the id from a request's metadata: `None` if absent, an error if malformed.
    pub fn from_metadata(md: &MetadataMap) -> Result<Option<ReqId>, String> {
        let Some(v) = md.get(REQ_KEY) else {
            return Ok(None);
        };
        let s = v
            .to_str()
            .map_err(|_| "shoal-req is not text".to_string())?;
        let mut parts = s.split(':').map(|p| u64::from_str_radix(p, 16));
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(session)), Some(Ok(seq)), Some(Ok(oldest)), None)
                if session != 0 && seq != 0 && oldest <= seq =>
            {
                Ok(Some(ReqId {
                    session,
                    seq,
                    oldest,
                }))
            }
            _ => Err(format!("malformed shoal-req {s:?}")),
        }
    }
}

/// Metadata key naming the caller's session on reads, so the MDS can grant it leases.
pub const SESSION_KEY: &str = "shoal-session";

/// Puts the session into a request's metadata.
pub fn insert_session(md: &mut MetadataMap, session: u64) {
    if let Ok(v) = format!("{session:x}").parse() {
        md.insert(SESSION_KEY, v);
    }
}

/// The session a request names: its `shoal-session`, else its request id's, else none.
pub fn session_of(md: &MetadataMap) -> Option<u64> {
    let named = md
        .get(SESSION_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .filter(|&s| s != 0);
    named.or_else(|| ReqId::from_metadata(md).ok().flatten().map(|id| id.session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let id = ReqId {
            session: 0xdead_beef,
            seq: 42,
            oldest: 40,
        };
        let mut md = MetadataMap::new();
        assert_eq!(ReqId::from_metadata(&md), Ok(None));
        id.insert(&mut md);
        assert_eq!(ReqId::from_metadata(&md), Ok(Some(id)));
        for bad in ["", "1:2", "1:2:3:4", "x:1:1", "0:1:1", "1:0:0", "1:2:3"] {
            let mut md = MetadataMap::new();
            md.insert(REQ_KEY, bad.parse().unwrap());
            assert!(ReqId::from_metadata(&md).is_err(), "{bad:?} accepted");
        }
    }
}
