//! Registration (REGISTER, digest, failure budgets, room in the device table).
use super::*;

impl Core {
    pub(super) fn device_id_of(req: &Request) -> Option<String> {
        sip::header(&req.headers, "From").and_then(sip::uri_user).map(str::to_string)
    }

    pub(super) fn password_for(&self, id: &str) -> &str {
        self.sip.passwords.get(id).map(String::as_str).unwrap_or(&self.password)
    }

    /// Counts a failed authentication of `id` from `ip`; `true` when over the budget.
    pub(super) fn auth_failed(&mut self, id: &str, ip: IpAddr, now: Instant) -> bool {
        let minute = Duration::from_secs(60);
        let key = (id.to_string(), ip);
        if self.auth_failures.len() >= MAX_AUTH_SOURCES && !self.auth_failures.contains_key(&key) {
            self.auth_failures.retain(|_, (t, _)| now.duration_since(*t) < minute);
            if self.auth_failures.len() >= MAX_AUTH_SOURCES {
                return true;
            }
        }
        if self.ip_failures.len() >= MAX_AUTH_SOURCES && !self.ip_failures.contains_key(&ip) {
            self.ip_failures.retain(|_, (t, _)| now.duration_since(*t) < minute);
        }
        if self.ip_failures.len() < MAX_AUTH_SOURCES || self.ip_failures.contains_key(&ip) {
            let e = self.ip_failures.entry(ip).or_insert((now, 0));
            if now.duration_since(e.0) >= minute {
                *e = (now, 0);
            }
            e.1 = e.1.saturating_add(1);
        }
        let e = self.auth_failures.entry(key).or_insert((now, 0));
        if now.duration_since(e.0) >= minute {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 > self.sip.auth_failures_per_minute
    }

    /// Whether a REGISTER of `id` from `ip` is dropped unanswered: that pair used its failure
    /// budget, or the IP used ten budgets and `id` is not registered from it (a guesser rotating
    /// IDs; the devices behind the same NAT that authenticated keep refreshing).
    pub(super) fn rate_limited(&self, id: &str, ip: IpAddr, now: Instant) -> bool {
        let minute = Duration::from_secs(60);
        let budget = self.sip.auth_failures_per_minute;
        let over = |(t, n): &(Instant, u32), max: u32| now.duration_since(*t) < minute && *n >= max;
        if self.auth_failures.get(&(id.to_string(), ip)).is_some_and(|e| over(e, budget)) {
            return true;
        }
        self.ip_failures.get(&ip).is_some_and(|e| over(e, budget.saturating_mul(10)))
            && self.devices.get(id).is_none_or(|d| d.rec.addr.ip() != ip)
    }

    pub(super) fn on_register(&mut self, req: &Request, peer: Peer, now: Instant) {
        let ip = peer.addr().ip();
        let Some(id) = Self::device_id_of(req) else {
            return self.respond(req, peer, 400, vec![], Vec::new());
        };
        let span = info_span!("register", device = %id, peer = %peer.addr());
        let _g = span.enter();
        let contact = sip::header(&req.headers, "Contact").unwrap_or("").to_string();
        // Clamped to [0, MAX_EXPIRES]: the answer's Expires tells the device what it got.
        let Some(expires) = sip::expires(&req.headers) else {
            return self.respond(req, peer, 400, vec![], Vec::new());
        };
        let password = self.password_for(&id).to_string();
        if !password.is_empty() {
            let challenge = |stale: bool, core: &Core| {
                let nonce = digest::make_nonce(&core.secret, self.unix());
                vec![("WWW-Authenticate", digest::challenge(&core.sip.domain, &nonce, stale))]
            };
            let Some(auth) = sip::header(&req.headers, "Authorization") else {
                let h = challenge(false, self);
                return self.respond(req, peer, 401, h, Vec::new());
            };
            let params = match digest::parse(auth) {
                Ok(p) => p,
                Err(e) => {
                    debug!("bad Authorization ({e}): challenging again");
                    let h = challenge(false, self);
                    return self.respond(req, peer, 401, h, Vec::new());
                }
            };
            if params.realm != self.sip.domain {
                let h = challenge(false, self);
                return self.respond(req, peer, 401, h, Vec::new());
            }
            match digest::check_nonce(&self.secret, &params.nonce, self.unix(), self.sip.nonce_ttl.0.as_secs()) {
                NonceCheck::Valid => {}
                NonceCheck::Stale => {
                    let h = challenge(true, self);
                    return self.respond(req, peer, 401, h, Vec::new());
                }
                NonceCheck::Forged => {
                    let h = challenge(false, self);
                    return self.respond(req, peer, 401, h, Vec::new());
                }
            }
            if !digest::verify("REGISTER", &password, &params) {
                let over = self.auth_failed(&id, ip, now);
                if let Some(suppressed) = self.peer_log.check(now) {
                    info!(over_limit = over, suppressed, "REGISTER with a wrong password: 403");
                }
                return self.respond(req, peer, 403, vec![], Vec::new());
            }
        }
        let now_ms = self.unix_ms();
        let date = sip::gb_date(now_ms, self.utc_offset);
        if expires == 0 {
            self.respond(
                req,
                peer,
                200,
                vec![("Contact", contact.clone()), ("Expires", "0".into()), ("Date", date)],
                Vec::new(),
            );
            if let Some(d) = self.devices.get_mut(&id) {
                d.rec.online = false;
                d.rec.expires = 0;
                if let Some(suppressed) = self.state_log.check(now) {
                    info!(suppressed, "unregistered");
                }
                self.persist(&id);
                self.event(GbEvent::Unregistered { device: id.clone() });
                self.end_device_sessions(&id, "device unregistered");
            }
            return;
        }
        if !self.devices.contains_key(&id) && !self.make_room(ip, now) {
            return self.respond(req, peer, 503, vec![], Vec::new());
        }
        let conn = match peer {
            Peer::Tcp { conn, .. } => Some(conn),
            Peer::Udp(_) => None,
        };
        let ua = sip::header(&req.headers, "User-Agent").unwrap_or("").to_string();
        let unix = self.unix();
        // A new Call-ID while we still hold sessions: the device restarted (a camera rebooted
        // mid-play). Its dialogs are gone on its side; end ours (BYE to where they lived) so the
        // next play INVITEs afresh instead of waiting on a dead session.
        let call_id = sip::header(&req.headers, "Call-ID").unwrap_or("").to_string();
        if self.devices.get(&id).is_some_and(|d| !d.reg_call_id.is_empty() && d.reg_call_id != call_id) {
            self.end_device_sessions(&id, "device registered again (restarted)");
        }
        let entry = self.devices.entry(id.clone()).or_insert_with(|| DevState {
            rec: DeviceRecord {
                id: id.clone(),
                online: false,
                transport: String::new(),
                addr: peer.addr(),
                contact: String::new(),
                user_agent: String::new(),
                expires: 0,
                registered_at: 0,
                last_keepalive: 0,
                info: None,
                channels: Vec::new(),
                catalog_at: None,
            },
            conn: None,
            last_seen: now,
            queried: None,
            query_due: false,
            reg_call_id: String::new(),
        });
        let was_online = entry.rec.online;
        entry.reg_call_id = call_id;
        entry.rec.online = true;
        entry.rec.transport = if conn.is_some() { "tcp" } else { "udp" }.into();
        entry.rec.addr = peer.addr();
        entry.rec.contact = contact.clone();
        entry.rec.user_agent = ua;
        entry.rec.expires = expires;
        entry.rec.registered_at = unix;
        entry.rec.last_keepalive = unix;
        entry.conn = conn;
        entry.last_seen = now;
        self.respond(
            req,
            peer,
            200,
            vec![("Contact", contact), ("Expires", expires.to_string()), ("Date", date)],
            Vec::new(),
        );
        self.persist(&id);
        if !was_online {
            if let Some(suppressed) = self.state_log.check(now) {
                info!(expires, suppressed, "registered");
            }
            self.event(GbEvent::Registered { device: id.clone() });
            self.event(GbEvent::Online { device: id.clone() });
            if self.gb.query_on_register {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.query_due = true;
                }
                self.send_due_queries(now);
            }
        }
    }

    /// Room for one more device registering from `ip` (issue 8, hole 13): over
    /// `max_devices_per_source` that IP's longest-offline device gives way, and in a full table
    /// the longest-offline device of any source (deleted from the store too). `false` (503)
    /// when every candidate is online or has a session.
    pub(super) fn make_room(&mut self, ip: IpAddr, now: Instant) -> bool {
        let from_ip = self.devices.values().filter(|d| d.rec.addr.ip() == ip).count();
        let (scope, max) = if from_ip >= self.sip.max_devices_per_source {
            (Some(ip), "max_devices_per_source")
        } else if self.devices.len() >= self.sip.max_devices {
            (None, "max_devices")
        } else {
            return true;
        };
        let victim = self
            .devices
            .values()
            .filter(|d| !d.rec.online && scope.is_none_or(|ip| d.rec.addr.ip() == ip))
            .filter(|d| !self.sessions.values().any(|s| s.device == d.rec.id))
            .min_by_key(|d| d.rec.last_keepalive.max(d.rec.registered_at))
            .map(|d| d.rec.id.clone());
        match victim {
            Some(id) => {
                self.devices.remove(&id);
                self.outputs.push(Output::Unpublish(id.clone()));
                self.outputs.push(Output::Delete(id.clone()));
                self.catalogs.retain(|(d, _), _| *d != id);
                self.counters.devices_evicted.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.peer_log.check(now) {
                    info!(evicted = %id, %ip, limit = max, suppressed, "device table: the longest-offline device gives way");
                }
                true
            }
            None => {
                self.counters.registers_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.peer_log.check(now) {
                    warn!(%ip, limit = max, suppressed, "device table full of online devices: 503");
                }
                false
            }
        }
    }

    /// Failure counts older than their minute are forgotten once the maps grow.
    pub(super) fn forget_auth_failures(&mut self, now: Instant) {
        if self.auth_failures.len() > 1024 {
            self.auth_failures.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
        if self.ip_failures.len() > 1024 {
            self.ip_failures.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
    }
}
