//! RFC 3261 transactions as sans-IO state machines: the caller passes `now`, asks
//! [`Transactions::poll_timeout`] when to wake, and calls [`Transactions::handle_timeout`]; every
//! outcome is returned as data ([`Action`]).
//!
//! - Client side (requests we send): over UDP the request is retransmitted from T1 doubling to
//!   T2 (non-INVITE) or doubling without cap (INVITE, timer A) until a response; timer F / B
//!   (64*T1) ends it with [`Action::Timeout`]. A provisional response stops INVITE retransmission.
//! - Server side (requests we receive): the final response is cached under the transaction key,
//!   and a retransmitted request is answered from the cache (timer J/H keep it 64*T1 over UDP).
//!
//! Both tables are bounded; a full table refuses new transactions (the caller answers 503).
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// Timer B / F / H / J.
pub const TIMEOUT_64T1: Duration = Duration::from_secs(32);

/// Where a message goes; opaque to the transaction layer (a UDP address or a TCP connection).
pub trait Destination: Clone + std::fmt::Debug {}
impl<T: Clone + std::fmt::Debug> Destination for T {}

#[derive(Debug)]
pub enum Action<D, T> {
    /// Send these bytes again.
    Send(D, Vec<u8>),
    /// A client transaction got no final response in time.
    Timeout(T),
}

struct Client<D, T> {
    dest: D,
    bytes: Vec<u8>,
    reliable: bool,
    invite: bool,
    interval: Duration,
    next_send: Option<Instant>,
    deadline: Instant,
    token: T,
    /// The groups it counts in (see [`Transactions::start_client_limited`]).
    groups: Vec<String>,
}

struct Server<D> {
    dest: D,
    response: Option<Vec<u8>>,
    expires: Instant,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("transaction table full ({0} pending)")]
pub struct TableFull(pub usize);

/// A share of the client table, by group (a destination, a class of requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLimit {
    pub group: String,
    pub max: usize,
}

/// What to do with an incoming request.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A new transaction: handle the request.
    New,
    /// A retransmission already answered: send the cached response again.
    Retransmit(Vec<u8>),
    /// A retransmission still being worked on: ignore.
    Absorb,
}

pub struct Transactions<D, T> {
    clients: HashMap<String, Client<D, T>>,
    servers: HashMap<String, Server<D>>,
    max: usize,
    /// Pending client transactions per group.
    groups: HashMap<String, usize>,
}

impl<D: Destination, T> Transactions<D, T> {
    pub fn new(max: usize) -> Self {
        Transactions { clients: HashMap::new(), servers: HashMap::new(), max, groups: HashMap::new() }
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Starts a client transaction for a request the caller sends once now.
    #[allow(clippy::too_many_arguments)]
    pub fn start_client(
        &mut self,
        key: String,
        dest: D,
        bytes: Vec<u8>,
        reliable: bool,
        invite: bool,
        token: T,
        now: Instant,
    ) -> Result<(), TableFull> {
        self.start_client_limited(key, dest, bytes, reliable, invite, token, now, &[])
    }

    /// Like [`Self::start_client`], refused also when one of `limits`' groups already holds its
    /// `max` pending transactions: one destination (or one kind of request) can then never take
    /// the whole table from the others.
    #[allow(clippy::too_many_arguments)]
    pub fn start_client_limited(
        &mut self,
        key: String,
        dest: D,
        bytes: Vec<u8>,
        reliable: bool,
        invite: bool,
        token: T,
        now: Instant,
        limits: &[GroupLimit],
    ) -> Result<(), TableFull> {
        if self.clients.len() >= self.max {
            return Err(TableFull(self.clients.len()));
        }
        for l in limits {
            let n = self.groups.get(&l.group).copied().unwrap_or(0);
            if n >= l.max {
                return Err(TableFull(n));
            }
        }
        let groups: Vec<String> = limits.iter().map(|l| l.group.clone()).collect();
        for g in &groups {
            *self.groups.entry(g.clone()).or_insert(0) += 1;
        }
        let next_send = (!reliable).then_some(now + T1);
        let deadline = now + TIMEOUT_64T1;
        let client = Client { dest, bytes, reliable, invite, interval: T1, next_send, deadline, token, groups };
        if let Some(old) = self.clients.insert(key, client) {
            self.release(&old.groups);
        }
        Ok(())
    }

    /// Pending client transactions in `group`.
    pub fn group_count(&self, group: &str) -> usize {
        self.groups.get(group).copied().unwrap_or(0)
    }

    fn release(&mut self, groups: &[String]) {
        for g in groups {
            if let Some(n) = self.groups.get_mut(g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.groups.remove(g);
                }
            }
        }
    }

    /// A response arrived for client transaction `key`. Returns the token when it is final.
    pub fn client_response(&mut self, key: &str, code: u16) -> Option<T> {
        if code < 200 {
            if let Some(c) = self.clients.get_mut(key) {
                if c.invite {
                    c.next_send = None;
                } else if !c.reliable {
                    c.interval = T2;
                }
            }
            return None;
        }
        let c = self.clients.remove(key)?;
        self.release(&c.groups);
        Some(c.token)
    }

    /// Pending client transactions whose token satisfies `pred` (a graceful stop waits for its
    /// BYEs and INVITEs, not for background queries).
    pub fn count_clients(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.clients.values().filter(|c| pred(&c.token)).count()
    }

    /// Is `key` a pending client transaction (used to tell a response we wait for from a stray)?
    pub fn has_client(&self, key: &str) -> bool {
        self.clients.contains_key(key)
    }

    /// Classifies an incoming request by its transaction key.
    pub fn server_request(&mut self, key: &str, dest: D, now: Instant) -> Result<Incoming, TableFull> {
        if let Some(s) = self.servers.get_mut(key) {
            s.dest = dest;
            return Ok(match &s.response {
                Some(r) => Incoming::Retransmit(r.clone()),
                None => Incoming::Absorb,
            });
        }
        if self.servers.len() >= self.max {
            self.expire_servers(now);
        }
        if self.servers.len() >= self.max {
            // Answered entries only absorb retransmissions: the oldest one gives way. Only a
            // table full of requests still being worked on refuses.
            let oldest = self.servers.iter().filter(|(_, s)| s.response.is_some()).min_by_key(|(_, s)| s.expires);
            match oldest.map(|(k, _)| k.clone()) {
                Some(k) => {
                    self.servers.remove(&k);
                }
                None => return Err(TableFull(self.servers.len())),
            }
        }
        self.servers.insert(key.to_string(), Server { dest, response: None, expires: now + TIMEOUT_64T1 });
        Ok(Incoming::New)
    }

    /// Records the final response of server transaction `key` (sent by the caller).
    pub fn server_response(&mut self, key: &str, bytes: &[u8], reliable: bool, now: Instant) {
        if let Some(s) = self.servers.get_mut(key) {
            s.response = Some(bytes.to_vec());
            // Over TCP nothing is retransmitted; keep the entry only briefly to absorb duplicates.
            s.expires = now + if reliable { Duration::from_secs(1) } else { TIMEOUT_64T1 };
        }
    }

    fn expire_servers(&mut self, now: Instant) {
        self.servers.retain(|_, s| s.expires > now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = self.clients.values().map(|c| c.next_send.map_or(c.deadline, |n| n.min(c.deadline))).min();
        let s = self.servers.values().map(|s| s.expires).min();
        match (c, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action<D, T>>) {
        self.expire_servers(now);
        let mut done = Vec::new();
        for (key, c) in self.clients.iter_mut() {
            if c.deadline <= now {
                done.push(key.clone());
                continue;
            }
            if let Some(at) = c.next_send {
                if at <= now {
                    out.push(Action::Send(c.dest.clone(), c.bytes.clone()));
                    c.interval = if c.invite { c.interval * 2 } else { (c.interval * 2).min(T2) };
                    c.next_send = Some(now + c.interval);
                }
            }
        }
        for key in done {
            if let Some(c) = self.clients.remove(&key) {
                self.release(&c.groups);
                out.push(Action::Timeout(c.token));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_client_retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut tx: Transactions<u8, &str> = Transactions::new(4);
        tx.start_client("k".into(), 1, b"MSG".to_vec(), false, false, "query", t0).unwrap();
        let mut out = Vec::new();
        let mut sends = 0;
        while let Some(now) = tx.poll_timeout() {
            tx.handle_timeout(now, &mut out);
            for a in out.drain(..) {
                match a {
                    Action::Send(1, b) => {
                        assert_eq!(b, b"MSG");
                        sends += 1
                    }
                    Action::Timeout(t) => {
                        assert_eq!(t, "query");
                        assert_eq!(now - t0, TIMEOUT_64T1);
                        // 0.5, 1.5, 3.5, 7.5, then every 4 s up to 32 s: 4 + 6 = 10 resends.
                        assert_eq!(sends, 10);
                        return;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        panic!("no timeout");
    }

    #[test]
    fn final_response_ends_client_and_provisional_stops_invite_resends() {
        let t0 = Instant::now();
        let mut tx: Transactions<u8, u32> = Transactions::new(4);
        tx.start_client("inv".into(), 1, b"INVITE".to_vec(), false, true, 7, t0).unwrap();
        assert_eq!(tx.client_response("inv", 100), None);
        let mut out = Vec::new();
        tx.handle_timeout(t0 + Duration::from_secs(5), &mut out);
        assert!(out.is_empty());
        assert_eq!(tx.client_response("inv", 200), Some(7));
        assert_eq!(tx.client_response("inv", 200), None);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn group_limits_keep_room_for_other_destinations() {
        let t0 = Instant::now();
        let mut tx: Transactions<u8, u32> = Transactions::new(10);
        let lim = |g: &str, max| vec![GroupLimit { group: g.into(), max }];
        for i in 0..3 {
            tx.start_client_limited(format!("a{i}"), 1, vec![], false, false, i, t0, &lim("flooder", 3)).unwrap();
        }
        assert_eq!(
            tx.start_client_limited("a3".into(), 1, vec![], false, false, 3, t0, &lim("flooder", 3)),
            Err(TableFull(3))
        );
        assert!(tx.start_client_limited("b0".into(), 2, vec![], false, false, 9, t0, &lim("camera", 3)).is_ok());
        // A final response or a timeout gives the slot back.
        assert_eq!(tx.client_response("a0", 200), Some(0));
        assert_eq!(tx.group_count("flooder"), 2);
        let mut out = Vec::new();
        tx.handle_timeout(t0 + TIMEOUT_64T1, &mut out);
        assert_eq!(tx.group_count("flooder"), 0);
        assert_eq!(tx.group_count("camera"), 0);
        assert_eq!(tx.client_count(), 0);
    }

    #[test]
    fn server_side_absorbs_and_replays_and_is_bounded() {
        let t0 = Instant::now();
        let mut tx: Transactions<u8, ()> = Transactions::new(2);
        assert_eq!(tx.server_request("a", 1, t0), Ok(Incoming::New));
        assert_eq!(tx.server_request("a", 1, t0), Ok(Incoming::Absorb));
        tx.server_response("a", b"200", false, t0);
        assert_eq!(tx.server_request("a", 1, t0), Ok(Incoming::Retransmit(b"200".to_vec())));
        assert_eq!(tx.server_request("b", 1, t0), Ok(Incoming::New));
        // Full: the answered "a" gives way to "c"; with "b" and "c" both unanswered, "d" is refused.
        assert_eq!(tx.server_request("c", 1, t0), Ok(Incoming::New));
        assert_eq!(tx.server_count(), 2);
        assert_eq!(tx.server_request("d", 1, t0), Err(TableFull(2)));
        // After timer J the entries are gone and room is made.
        assert_eq!(tx.server_request("d", 1, t0 + TIMEOUT_64T1), Ok(Incoming::New));
    }
}
