//! Admission of TCP connections to a listener (D60; RTSP, API, SIP over TCP): a global cap, a cap per source address, and
//! room for newcomers. A connection is *pending* until it completes its first request; pending
//! connections are the ones sacrificed when a cap is reached (oldest first), so idle sockets
//! opened by one host cannot lock real players and operators out, and each driver closes a
//! pending connection whose first request does not complete within its deadline.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections from this source address")]
    PerSource,
    #[error("connection limit reached")]
    Full,
}

#[derive(Default)]
struct State {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Pending connections by admission order: (source, eviction token).
    pending: BTreeMap<u64, (IpAddr, CancellationToken)>,
    next: u64,
}

/// Counters of one listener's admissions, for the API and logs.
#[derive(Debug, Default)]
pub struct AdmitCounters {
    pub admitted: AtomicU64,
    /// Refused at accept: every connection of the source was active, or every connection was.
    pub refused: AtomicU64,
    /// Pending connections closed to make room for a newcomer.
    pub evicted: AtomicU64,
    /// Closed by their driver for not completing a request in time.
    pub timed_out: AtomicU64,
}

/// What `GET /api/v1/listeners` shows of one listener.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdmitSnapshot {
    pub open: usize,
    /// Open connections that have not completed a request.
    pub pending: usize,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub admitted: u64,
    pub refused: u64,
    pub evicted: u64,
    pub timed_out: u64,
}

/// The admission state of one listener.
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<State>,
    pub counters: AdmitCounters,
}

/// One admitted connection. Dropping it frees its slot.
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
    /// Cancelled when the connection is evicted to make room: its driver must close it.
    pub evicted: CancellationToken,
    /// The slot was already given back (eviction frees it at once, so the newcomer fits).
    released: bool,
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            state: Mutex::new(State::default()),
            counters: AdmitCounters::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source`, evicting the oldest pending connection (of the same
    /// source when that source is at its cap) when a cap is reached.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refused> {
        let mut st = self.lock();
        if st.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            let victim = st.pending.iter().find(|(_, (ip, _))| *ip == source).map(|(id, _)| *id);
            let Some(victim) = victim else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::PerSource);
            };
            self.evict(&mut st, victim);
        }
        if st.total >= self.max_total {
            let Some(victim) = st.pending.keys().next().copied() else {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Full);
            };
            self.evict(&mut st, victim);
        }
        st.total += 1;
        *st.per_source.entry(source).or_insert(0) += 1;
        let id = st.next;
        st.next += 1;
        let evicted = CancellationToken::new();
        st.pending.insert(id, (source, evicted.clone()));
        self.counters.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket { admission: self.clone(), source, id, evicted, released: false })
    }

    fn evict(&self, st: &mut State, id: u64) {
        if let Some((ip, token)) = st.pending.remove(&id) {
            token.cancel();
            Self::release(st, ip);
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release(st: &mut State, ip: IpAddr) {
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_source.remove(&ip);
            }
        }
    }

    pub fn snapshot(&self) -> AdmitSnapshot {
        let (open, pending) = {
            let st = self.lock();
            (st.total, st.pending.len())
        };
        let c = &self.counters;
        AdmitSnapshot {
            open,
            pending,
            max_connections: self.max_total,
            max_connections_per_source: self.max_per_source,
            admitted: c.admitted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Open connections (admitted, not closed, not evicted).
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Open connections that have not completed a request yet.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Ticket {
    /// The connection completed a request: it is no longer first in line for eviction.
    pub fn established(&self) {
        self.admission.lock().pending.remove(&self.id);
    }

    /// Whether the connection has not completed a request yet.
    pub fn is_pending(&self) -> bool {
        self.admission.lock().pending.contains_key(&self.id)
    }

    /// Counts a connection its driver closes for not completing a request in time.
    pub fn timed_out(&self) {
        self.admission.counters.timed_out.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.released || self.evicted.is_cancelled() {
            // An evicted ticket's slot was given back when it was evicted.
            return;
        }
        self.released = true;
        let mut st = self.admission.lock();
        st.pending.remove(&self.id);
        Admission::release(&mut st, self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_at_its_cap_loses_its_oldest_pending_connection_not_others() {
        let a = Admission::new(10, 2);
        let first = a.admit(ip(2)).unwrap();
        let second = a.admit(ip(2)).unwrap();
        let other = a.admit(ip(1)).unwrap();
        let third = a.admit(ip(2)).unwrap();
        assert!(first.evicted.is_cancelled() && !second.evicted.is_cancelled() && !other.evicted.is_cancelled());
        assert_eq!(a.open(), 3);
        // Every connection of the source is established: the next one is refused.
        second.established();
        third.established();
        assert_eq!(a.admit(ip(2)).err(), Some(Refused::PerSource));
        drop(first);
        assert_eq!(a.open(), 3, "an evicted ticket's slot is not given back twice");
        drop((second, third, other));
        assert_eq!((a.open(), a.pending()), (0, 0));
    }

    #[test]
    fn when_full_the_oldest_pending_connection_makes_room() {
        let a = Admission::new(3, 3);
        let live = a.admit(ip(1)).unwrap();
        live.established();
        let idle1 = a.admit(ip(2)).unwrap();
        let idle2 = a.admit(ip(3)).unwrap();
        let newcomer = a.admit(ip(4)).unwrap();
        assert!(idle1.evicted.is_cancelled() && !idle2.evicted.is_cancelled() && !live.evicted.is_cancelled());
        newcomer.established();
        idle2.established();
        assert_eq!(a.admit(ip(5)).err(), Some(Refused::Full));
        assert_eq!(a.counters.evicted.load(Ordering::Relaxed), 1);
    }
}
