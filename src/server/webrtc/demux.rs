//! Which session a datagram on the shared UDP port belongs to (sans-IO).
//!
//! A STUN binding request names the session in its USERNAME (`<our ufrag>:<their ufrag>`, RFC
//! 8445 7.2.2); everything else (DTLS, SRTP, SRTCP) is known by its source address. An address is
//! learnt only when the session itself sends to it, which str0m does only after a binding
//! request with a valid MESSAGE-INTEGRITY: a forged USERNAME from elsewhere teaches nothing.
use std::collections::HashMap;
use std::net::SocketAddr;

/// Addresses one session may be reached from (ICE may nominate a second pair).
const MAX_ADDRS_PER_SESSION: usize = 4;

/// The local ufrag of a STUN message's USERNAME, if `d` is a STUN message that has one.
pub fn stun_local_ufrag(d: &[u8]) -> Option<&str> {
    // RFC 5389: type (2 bits 00), length, magic cookie, transaction id, then TLVs.
    if d.len() < 20 || d[0] & 0xc0 != 0 || d[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let body = d.get(20..20 + len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let n = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + n)?;
        if ty == 0x0006 {
            let user = std::str::from_utf8(value).ok()?;
            return Some(user.split_once(':').map_or(user, |(local, _)| local));
        }
        let padded = (4 + n + 3) & !3;
        rest = rest.get(padded..)?;
    }
    None
}

/// The routing tables: local ufrag and learnt addresses to session keys.
#[derive(Default)]
pub struct Demux {
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    addrs_of: HashMap<u64, Vec<SocketAddr>>,
}

impl Demux {
    pub fn add(&mut self, key: u64, ufrag: &str) {
        self.by_ufrag.insert(ufrag.to_string(), key);
    }

    pub fn remove(&mut self, key: u64, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
        for a in self.addrs_of.remove(&key).unwrap_or_default() {
            if self.by_addr.get(&a) == Some(&key) {
                self.by_addr.remove(&a);
            }
        }
    }

    /// The session `d` from `from` is for.
    pub fn lookup(&self, from: SocketAddr, d: &[u8]) -> Option<u64> {
        if let Some(ufrag) = stun_local_ufrag(d) {
            return self.by_ufrag.get(ufrag).copied();
        }
        self.by_addr.get(&from).copied()
    }

    /// Session `key` sends to `to`: datagrams from there are its own.
    pub fn learn(&mut self, key: u64, to: SocketAddr) {
        if self.by_addr.get(&to) == Some(&key) {
            return;
        }
        // The address moved to another session (a new session of the same player).
        if let Some(old) = self.by_addr.insert(to, key) {
            if let Some(v) = self.addrs_of.get_mut(&old) {
                v.retain(|a| *a != to);
            }
        }
        let v = self.addrs_of.entry(key).or_default();
        v.push(to);
        if v.len() > MAX_ADDRS_PER_SESSION {
            let gone = v.remove(0);
            if self.by_addr.get(&gone) == Some(&key) {
                self.by_addr.remove(&gone);
            }
        }
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(user: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, to walk past it.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attrs.extend_from_slice(user.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn username_names_the_session_and_sends_teach_addresses() {
        let mut d = Demux::default();
        d.add(1, "abcd");
        d.add(2, "wxyz");
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(stun_local_ufrag(&stun("abcd:peer")), Some("abcd"));
        assert_eq!(d.lookup(peer, &stun("wxyz:peer")), Some(2));
        assert_eq!(d.lookup(peer, &stun("nope:peer")), None);
        // DTLS from an address nobody sent to: nobody's.
        assert_eq!(d.lookup(peer, &[22, 254, 253, 0, 0]), None);
        d.learn(2, peer);
        assert_eq!(d.lookup(peer, &[22, 254, 253, 0, 0]), Some(2));
        d.remove(2, "wxyz");
        assert_eq!(d.lookup(peer, &[22, 254, 253, 0, 0]), None);
        assert_eq!(d.addresses(), 0);
    }

    #[test]
    fn hostile_stun_never_panics() {
        let m = stun("abcd:peer");
        for n in 0..m.len() {
            let _ = stun_local_ufrag(&m[..n]);
        }
        let mut bad = m.clone();
        bad[2] = 0xff;
        assert_eq!(stun_local_ufrag(&bad), None);
        let mut d = Demux::default();
        for i in 0..10u16 {
            d.learn(1, SocketAddr::from(([127, 0, 0, 1], 1000 + i)));
        }
        assert_eq!(d.addresses(), MAX_ADDRS_PER_SESSION);
    }
}
