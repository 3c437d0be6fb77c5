//! Presence: MESSAGEs of registered devices (only from their registered source), keepalive and
//! registration expiry.
use super::*;

impl Core {
    pub(super) fn on_message_request(&mut self, req: &Request, peer: Peer, now: Instant) {
        let unix = self.unix();
        let call_id = sip::header(&req.headers, "Call-ID").unwrap_or("").to_string();
        let m = match manscdp::parse(&req.body) {
            Ok(m) => m,
            Err(e) => {
                debug!(peer = %peer.addr(), "MESSAGE body rejected: {e}");
                return self.respond(req, peer, 400, vec![], Vec::new());
            }
        };
        // MediaStatus is matched by Call-ID: Hikvision's From is not the device ID (wvp).
        if let Some(stream) = self.by_call.get(&call_id).cloned() {
            if !self.is_session_device(&stream, peer, now) {
                return self.respond(req, peer, 403, vec![], Vec::new());
            }
            self.respond(req, peer, 200, vec![], Vec::new());
            if m.cmd_type == "MediaStatus" && m.el.text_of("NotifyType") == Some("121") {
                self.end_session(&stream, "end of file (MediaStatus 121)", true);
            }
            return;
        }
        let from_id = Self::device_id_of(req).unwrap_or_default();
        let id = if self.devices.contains_key(&from_id) { from_id } else { m.device_id.clone() };
        let Some(d) = self.devices.get_mut(&id) else {
            debug!(device = %id, cmd = %m.cmd_type, "MESSAGE from an unknown device: 404");
            return self.respond(req, peer, 404, vec![], Vec::new());
        };
        let registered_until = d.rec.registered_at.saturating_add(d.rec.expires);
        if d.rec.expires == 0 || unix > registered_until {
            return self.respond(req, peer, 404, vec![], Vec::new());
        }
        // Only from the address and transport of its registration (after our restart: the
        // stored one, D25). A NAT rebinding shows up here too: the device must REGISTER again
        // (with digest) from its new address rather than anyone moving it with one MESSAGE.
        if !d.is_source(peer) {
            let registered = d.rec.addr;
            self.refuse_foreign(&id, peer, registered, &m.cmd_type, now);
            return self.respond(req, peer, 403, vec![], Vec::new());
        }
        if let Peer::Tcp { conn, .. } = peer {
            d.conn = Some(conn);
        }
        d.last_seen = now;
        let came_online = !d.rec.online;
        if m.cmd_type == "Keepalive" || came_online {
            d.rec.last_keepalive = unix;
        }
        d.rec.online = true;
        self.respond(req, peer, 200, vec![], Vec::new());
        if came_online {
            if let Some(suppressed) = self.state_log.check(now) {
                info!(device = %id, suppressed, "back online (keepalive of a registered device)");
            }
            self.persist(&id);
            self.event(GbEvent::Online { device: id.clone() });
        } else {
            self.publish(&id);
        }
        match (m.root.as_str(), m.cmd_type.as_str()) {
            (_, "Keepalive") => {}
            ("Response", "Catalog") | ("Notify", "Catalog") => self.on_catalog(&id, &m, now),
            ("Response", "DeviceInfo") => {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.rec.info = Some(manscdp::device_info(&m));
                }
                self.persist(&id);
                self.answer_query(&id, "DeviceInfo", &m);
            }
            ("Response", "DeviceStatus") => self.answer_query(&id, "DeviceStatus", &m),
            ("Response", "RecordInfo") => self.on_record_info(&id, &m, now),
            (root, cmd) => debug!(device = %id, root, cmd, "MESSAGE acknowledged"),
        }
    }

    /// Counts and logs (rate-limited) a request naming `device` from a source that is not its own.
    pub(super) fn refuse_foreign(
        &mut self,
        device: &str,
        peer: Peer,
        registered: SocketAddr,
        what: &str,
        now: Instant,
    ) {
        self.counters.foreign_source_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.foreign_log.check(now) {
            warn!(%device, peer = %peer.addr(), transport = peer.via(), %registered, what, suppressed,
                "request of a registered device from another source refused (403): it must REGISTER from there");
        }
    }

    /// Whether an in-dialog request of `stream` comes from its device's registered source.
    pub(super) fn is_session_device(&mut self, stream: &str, peer: Peer, now: Instant) -> bool {
        let Some(dev) = self.sessions.get(stream).map(|s| s.device.clone()) else { return false };
        match self.devices.get(&dev) {
            Some(d) if d.is_source(peer) => true,
            Some(d) => {
                let registered = d.rec.addr;
                self.refuse_foreign(&dev, peer, registered, "in-dialog request", now);
                false
            }
            None => false,
        }
    }

    /// Keepalive and registration expiry (presence), each tick.
    pub(super) fn expire_devices(&mut self, now: Instant) {
        // Keepalive expiry: interval x misses without a word (wvp: min(Expires, that)).
        let limit = self.gb.keepalive_interval.0.saturating_mul(self.gb.keepalive_misses);
        let unix = self.unix();
        let gone: Vec<(String, String)> = self
            .devices
            .values()
            .filter(|d| d.rec.online)
            .filter_map(|d| {
                if now.duration_since(d.last_seen) > limit {
                    Some((d.rec.id.clone(), format!("{} keepalives missed", self.gb.keepalive_misses)))
                } else if unix > d.rec.registered_at.saturating_add(d.rec.expires) {
                    Some((d.rec.id.clone(), "registration expired".to_string()))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in gone {
            if let Some(d) = self.devices.get_mut(&id) {
                d.rec.online = false;
            }
            if let Some(suppressed) = self.state_log.check(now) {
                info!(device = %id, %reason, suppressed, "offline");
            }
            self.persist(&id);
            self.event(GbEvent::Offline { device: id.clone(), reason: reason.clone() });
            self.end_device_sessions(&id, &reason);
        }
    }
}
