//! Dialogs and media sessions: INVITE, its answers and ACK, BYE, the end of a session and its
//! timers.
use super::*;

impl Core {
    pub(super) fn on_response(&mut self, resp: Response, peer: Peer) {
        let code = resp.status_code.code();
        let Some(key) = sip::transaction_key(&resp.headers) else { return };
        let is_invite = sip::cseq(&resp.headers).is_some_and(|(_, m)| m == "INVITE");
        match self.tx.client_response(&key, code) {
            Some(p) => self.on_final(p, &resp, peer, code),
            None if is_invite && (200..300).contains(&code) && !self.tx.has_client(&key) => {
                // A retransmitted 200 (our ACK was lost) or one for a session we gave up on.
                let call_id = sip::header(&resp.headers, "Call-ID").unwrap_or("").to_string();
                let known = self.by_call.get(&call_id).cloned();
                self.ack(&resp, peer);
                if known.is_none() {
                    self.bye_unknown(&resp, peer);
                }
            }
            None => {}
        }
    }

    /// ACK for a 2xx: a new transaction, CSeq number of the INVITE, To with the device's tag.
    pub(super) fn ack(&mut self, resp: &Response, peer: Peer) {
        let call_id = sip::header(&resp.headers, "Call-ID").unwrap_or("").to_string();
        let to = sip::header(&resp.headers, "To").unwrap_or("").to_string();
        let from_tag = sip::header(&resp.headers, "From").and_then(sip::tag).unwrap_or("").to_string();
        let cseq = sip::cseq(&resp.headers).map_or(1, |c| c.0);
        let uri = sip::header(&resp.headers, "Contact")
            .map(|c| sip::uri_of(c).to_string())
            .unwrap_or_else(|| format!("sip:{}@{}", sip::uri_user(&to).unwrap_or(""), peer.addr()));
        let _ =
            self.send_request(peer, Method::Ack, &uri, to, &call_id, &from_tag, cseq, vec![], None, Vec::new(), None);
    }

    pub(super) fn bye_unknown(&mut self, resp: &Response, peer: Peer) {
        let call_id = sip::header(&resp.headers, "Call-ID").unwrap_or("").to_string();
        let to = sip::header(&resp.headers, "To").unwrap_or("").to_string();
        let from_tag = sip::header(&resp.headers, "From").and_then(sip::tag).unwrap_or("").to_string();
        let cseq = sip::cseq(&resp.headers).map_or(1, |c| c.0).saturating_add(1);
        let uri = format!("sip:{}@{}", sip::uri_user(&to).unwrap_or(""), peer.addr());
        let pending = Pending::InDialog { what: "BYE", reply: None };
        let _ = self.send_request(
            peer,
            Method::Bye,
            &uri,
            to,
            &call_id,
            &from_tag,
            cseq,
            vec![],
            None,
            Vec::new(),
            Some(pending),
        );
    }

    pub(super) fn on_final(&mut self, p: Pending, resp: &Response, peer: Peer, code: u16) {
        match p {
            Pending::Query { device, cmd, .. } => {
                if code >= 300 {
                    if let Some(suppressed) = self.peer_log.check(self.now) {
                        info!(%device, cmd, code, suppressed, "query refused");
                    }
                }
            }
            Pending::InDialog { what, reply } => {
                debug!(what, code, "in-dialog request answered");
                if let Some(r) = reply {
                    let _ = r.send(if code < 300 { Ok(()) } else { Err(GbError::Refused(format!("{what}: {code}"))) });
                }
            }
            Pending::Control { reply } => {
                let _ = reply.send(if code < 300 { Ok(()) } else { Err(GbError::Refused(format!("status {code}"))) });
            }
            Pending::Invite { stream } => {
                if (200..300).contains(&code) {
                    self.ack(resp, peer);
                    if self.sessions.contains_key(&stream) {
                        self.established(&stream, resp, peer);
                    } else {
                        self.bye_unknown(resp, peer);
                    }
                } else {
                    // The ACK of a non-2xx belongs to the INVITE transaction (same branch).
                    self.ack_non_2xx(resp, peer);
                    if let Some(s) = self.sessions.get_mut(&stream) {
                        let err = GbError::Refused(format!("INVITE answered {code}"));
                        for w in s.waiters.drain(..) {
                            let _ = w.send(Err(err.clone()));
                        }
                    }
                    self.end_session(&stream, &format!("INVITE answered {code}"), false);
                }
            }
        }
    }

    pub(super) fn ack_non_2xx(&mut self, resp: &Response, peer: Peer) {
        let Some(via) = sip::header(&resp.headers, "Via") else { return };
        let branch = sip::top_via(&resp.headers).and_then(|v| v.branch).unwrap_or_default();
        let call_id = sip::header(&resp.headers, "Call-ID").unwrap_or("").to_string();
        let to = sip::header(&resp.headers, "To").unwrap_or("").to_string();
        let from = sip::header(&resp.headers, "From").unwrap_or("").to_string();
        let cseq = sip::cseq(&resp.headers).map_or(1, |c| c.0);
        let uri = format!("sip:{}@{}", sip::uri_user(&to).unwrap_or(""), peer.addr());
        let _ = via;
        let req = sip::request(OutRequest {
            method: Method::Ack,
            uri: &uri,
            transport: peer.via(),
            via_host: &self.via_host(peer.addr()),
            branch: &branch,
            from,
            to,
            call_id: &call_id,
            cseq,
            extra: vec![],
            content_type: None,
            body: Vec::new(),
        });
        if let Ok(req) = req {
            self.send(peer, req.to_bytes());
        }
    }

    pub(super) fn established(&mut self, stream: &str, resp: &Response, peer: Peer) {
        let answer = sdp::parse(&resp.body).ok();
        let to = sip::header(&resp.headers, "To").unwrap_or("").to_string();
        let contact = sip::header(&resp.headers, "Contact").map(|c| sip::uri_of(c).to_string());
        let Some(s) = self.sessions.get_mut(stream) else { return };
        s.state = SessionState::Established;
        s.to_header = to;
        if let Some(c) = contact {
            s.remote_uri = c;
        }
        let now = self.now;
        s.answered = Some(now);
        s.last_watched = now;
        if let Some(a) = &answer {
            if let Some(rate) = a.g711_rate {
                self.media.hint_g711_rate(stream, rate);
            }
            if s.transport == MediaTransport::Udp {
                self.media.expect_port(stream, a.port);
            }
            let rtcp_ip = a.rtcp_addr.or(a.connection).unwrap_or(peer.addr().ip());
            self.media.expect_rtcp(stream, a.rtcp_port.map(|p| SocketAddr::new(rtcp_ip, p)), a.rtcp_mux);
            // Hikvision answers with its own y= and sends that SSRC: re-key to it (wvp).
            if let Some(new) = a.ssrc.filter(|n| *n != s.ssrc && *n != 0) {
                info!(stream, offered = %sdp::ssrc_text(s.ssrc), answered = %sdp::ssrc_text(new), "answer re-keys the session");
                self.media.withdraw(s.ssrc);
                s.ssrc = new;
                // TCP active needs no SSRC (the connection names the stream). A device-chosen SSRC
                // another session already uses cannot route: the source address binds it instead.
                match self.media.announced_name(new) {
                    _ if s.transport == MediaTransport::TcpActive => {}
                    Some(other) if other != stream => {
                        warn!(stream, other = %other, ssrc = %sdp::ssrc_text(new), "answered SSRC already in use: binding by source address");
                    }
                    _ => self.media.announce(new, stream),
                }
            }
            if s.transport == MediaTransport::TcpActive && a.port == 0 {
                warn!(stream, "answer with m= port 0: cannot connect (TCP active)");
            } else if s.transport == MediaTransport::TcpActive {
                let target = SocketAddr::new(a.connection.unwrap_or(peer.addr().ip()), a.port);
                // Private c= behind NAT: fall back to the signalling source IP (wvp #1261).
                let fallback = SocketAddr::new(peer.addr().ip(), a.port);
                self.media.connect_active(stream, target, fallback);
                s.active = true;
            }
        } else if s.transport == MediaTransport::TcpActive {
            warn!(stream, "answer without a usable SDP: cannot connect (TCP active)");
        }
        let info = PlayInfo {
            stream: s.stream.clone(),
            ssrc: sdp::ssrc_text(s.ssrc),
            device: s.device.clone(),
            channel: s.channel.clone(),
            existing: false,
        };
        for w in s.waiters.drain(..) {
            let _ = w.send(Ok(info.clone()));
        }
        info!(stream, device = %s.device, channel = %s.channel, transport = ?s.transport, "session established");
        let e = GbEvent::SessionStarted {
            device: s.device.clone(),
            channel: s.channel.clone(),
            stream: stream.to_string(),
        };
        self.event(e);
    }

    pub(super) fn on_timeout(&mut self, p: Pending) {
        match p {
            Pending::Query { device, cmd, .. } => {
                if let Some(suppressed) = self.peer_log.check(self.now) {
                    info!(%device, cmd, suppressed, "query: no answer");
                }
            }
            Pending::InDialog { what, reply } => {
                debug!(what, "in-dialog request: no answer");
                if let Some(r) = reply {
                    let _ = r.send(Err(GbError::NoAnswer(what.to_string())));
                }
            }
            Pending::Control { reply } => {
                let _ = reply.send(Err(GbError::NoAnswer("no answer to the control".into())));
            }
            Pending::Invite { stream } => self.fail_invite(&stream, "no answer to INVITE"),
        }
    }

    pub(super) fn fail_invite(&mut self, stream: &str, why: &str) {
        if let Some(s) = self.sessions.get_mut(stream) {
            let err = GbError::NoAnswer(why.to_string());
            for w in s.waiters.drain(..) {
                let _ = w.send(Err(err.clone()));
            }
        }
        self.end_session(stream, why, false);
    }

    pub(super) fn find_device(&self, device: Option<&str>, channel: &str) -> Result<String, GbError> {
        let id = match device {
            Some(d) => {
                if !self.devices.contains_key(d) {
                    return Err(GbError::NoDevice(format!("device {d} is unknown")));
                }
                d.to_string()
            }
            None => self
                .devices
                .values()
                .filter(|d| d.rec.id == channel || d.rec.channels.iter().any(|c| c.device_id == channel))
                // Prefer an online owner.
                .max_by_key(|d| d.rec.online)
                .map(|d| d.rec.id.clone())
                .ok_or_else(|| GbError::NoDevice(format!("no device has channel {channel}")))?,
        };
        if !self.devices[&id].rec.online {
            return Err(GbError::Offline(id));
        }
        Ok(id)
    }

    pub(super) fn mint_ssrc(&mut self, history: bool) -> u32 {
        loop {
            self.ssrc_seq = (self.ssrc_seq + 1) % 10_000;
            let ssrc = sdp::mint_ssrc(history, &self.sip.domain, self.ssrc_seq);
            if !self.sessions.values().any(|s| s.ssrc == ssrc) {
                return ssrc;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn invite(
        &mut self,
        device: &str,
        channel: &str,
        kind: SessionKind,
        transport: MediaTransport,
        time: (u64, u64),
        download_speed: Option<u32>,
        reply: Reply<PlayInfo>,
    ) {
        if self.sessions.len() >= self.gb.max_sessions {
            let _ = reply.send(Err(GbError::Busy(format!("{} sessions", self.sessions.len()))));
            return;
        }
        let history = kind != SessionKind::Play;
        let ssrc = self.mint_ssrc(history);
        let stream = match kind {
            SessionKind::Play => format!("gb/{channel}"),
            SessionKind::Playback => format!("gb/playback/{}", sdp::ssrc_text(ssrc)),
            SessionKind::Download => format!("gb/download/{}", sdp::ssrc_text(ssrc)),
        };
        let d = &self.devices[device];
        let peer = d.peer();
        let dev_addr = d.rec.addr;
        let ip = self.media.local_ip(dev_addr);
        let body = sdp::offer(&sdp::Offer {
            gateway_id: &self.sip.id,
            ip,
            port: self.rtp_port,
            kind,
            channel,
            transport,
            ssrc,
            time,
            download_speed,
        });
        // Announce before the INVITE: a camera may send media before our ACK.
        self.media.announce(ssrc, &stream);
        if transport != MediaTransport::TcpActive {
            self.media.expect_source(dev_addr.ip(), transport == MediaTransport::TcpPassive, &stream);
        }
        let call_id = random_token(24);
        let from_tag = random_token(10);
        let uri = format!("sip:{channel}@{dev_addr}");
        let to = format!("<sip:{channel}@{}>", self.sip.domain);
        let contact = format!("<sip:{}@{}>", self.sip.id, SocketAddr::new(ip, self.sip_addr.port()));
        let subject = format!("{channel}:{},{}:0", sdp::ssrc_text(ssrc), self.sip.id);
        let now = self.now;
        self.sessions.insert(
            stream.clone(),
            Session {
                kind,
                device: device.to_string(),
                channel: channel.to_string(),
                stream: stream.clone(),
                ssrc,
                transport,
                call_id: call_id.clone(),
                from_tag: from_tag.clone(),
                to_header: to.clone(),
                cseq: 1,
                remote_uri: uri.clone(),
                state: SessionState::Inviting,
                waiters: vec![reply],
                started: now,
                answered: None,
                media_seen: false,
                last_watched: now,
                active: false,
            },
        );
        self.by_call.insert(call_id.clone(), stream.clone());
        info!(%stream, %device, %channel, ssrc = %sdp::ssrc_text(ssrc), ?transport, kind = kind.name(), "INVITE");
        let r = self.send_request(
            peer,
            Method::Invite,
            &uri,
            to,
            &call_id,
            &from_tag,
            1,
            vec![("Contact", contact), ("Subject", subject)],
            Some("APPLICATION/SDP"),
            body.into_bytes(),
            Some(Pending::Invite { stream: stream.clone() }),
        );
        if let Err(e) = r {
            self.fail_invite(&stream, &e.to_string());
        }
    }

    /// Ends a session: BYE when asked and established, withdraw its SSRC, end its stream.
    pub(super) fn end_session(&mut self, stream: &str, reason: &str, send_bye: bool) {
        let Some(mut s) = self.sessions.remove(stream) else { return };
        self.by_call.remove(&s.call_id);
        self.media.withdraw(s.ssrc);
        self.media.withdraw_name(stream);
        if s.active {
            self.media.stop_active(stream);
        }
        self.media.end_stream(stream, reason);
        for w in s.waiters.drain(..) {
            let _ = w.send(Err(GbError::NoAnswer(reason.to_string())));
        }
        if send_bye && s.state == SessionState::Established {
            if let Some(d) = self.devices.get(&s.device) {
                let peer = d.peer();
                let pending = Pending::InDialog { what: "BYE", reply: None };
                let _ = self.send_request(
                    peer,
                    Method::Bye,
                    &s.remote_uri,
                    s.to_header.clone(),
                    &s.call_id,
                    &s.from_tag,
                    s.cseq.saturating_add(1),
                    vec![],
                    None,
                    Vec::new(),
                    Some(pending),
                );
            }
        }
        info!(stream, device = %s.device, reason, "session ended");
        let ended = EndedSession {
            stream: stream.to_string(),
            device: s.device.clone(),
            channel: s.channel.clone(),
            reason: reason.to_string(),
            ended_at: self.unix(),
        };
        self.outputs.push(Output::Ended(ended));
        self.event(GbEvent::SessionEnded {
            device: s.device.clone(),
            channel: s.channel.clone(),
            stream: stream.to_string(),
            reason: reason.to_string(),
        });
    }

    pub(super) fn end_device_sessions(&mut self, device: &str, reason: &str) {
        let streams: Vec<String> =
            self.sessions.values().filter(|s| s.device == device).map(|s| s.stream.clone()).collect();
        for s in streams {
            self.end_session(&s, reason, true);
        }
    }

    pub(super) fn transport_for(&self, device: &str, asked: Option<MediaTransport>) -> MediaTransport {
        asked.or_else(|| self.gb.transports.get(device).copied()).unwrap_or(self.gb.transport)
    }

    /// Sessions: INVITE deadline, first media, the stream's end, nobody watching.
    pub(super) fn session_timers(&mut self, now: Instant) {
        // Sessions: INVITE deadline, first media, and nobody watching.
        let mut to_end = Vec::new();
        for s in self.sessions.values_mut() {
            match s.state {
                SessionState::Inviting => {
                    if now.duration_since(s.started) > self.gb.invite_timeout.0 {
                        to_end.push((s.stream.clone(), "no answer to INVITE".to_string(), false));
                    }
                }
                SessionState::Established => {
                    let stream = self.media.stream_state(&s.stream);
                    if s.media_seen && stream.is_none() {
                        // Its stream ended (RTP timeout over UDP, connection closed over TCP):
                        // the session is dead too, and a new play must INVITE again.
                        to_end.push((s.stream.clone(), "media stopped (the stream ended)".into(), true));
                        continue;
                    }
                    if !s.media_seen {
                        s.media_seen = stream.is_some_and(|st| st.keyframe);
                        if !s.media_seen {
                            if s.answered.is_some_and(|a| now.duration_since(a) > self.gb.media_timeout.0) {
                                to_end.push((s.stream.clone(), "no media after the answer".into(), true));
                            }
                            // Players are parked until the first keyframe: idle time starts then.
                            continue;
                        }
                        s.last_watched = now;
                    }
                    if stream.is_some_and(|st| st.subscribers > 0) {
                        s.last_watched = now;
                    } else if s.kind == SessionKind::Play && now.duration_since(s.last_watched) > self.gb.idle_stop.0 {
                        to_end.push((s.stream.clone(), "nobody watching (idle_stop)".into(), true));
                    }
                }
            }
        }
        for (stream, reason, bye) in to_end {
            if !bye {
                self.fail_invite(&stream, &reason);
            } else {
                self.end_session(&stream, &reason, true);
            }
        }
    }
}
