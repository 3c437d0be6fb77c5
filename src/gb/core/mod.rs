//! The GB/T 28181 signalling core, sans-IO: SIP messages, commands and `now` go in; what to do
//! comes out as [`Output`]s (send bytes, publish/persist a device, emit an event, record an
//! ended session) and as calls on a [`MediaPort`] (announce an SSRC, end a stream, connect TCP
//! active). No socket, no task, no clock inside: `gb::driver` owns those and calls in.
//!
//! Split by job: [`registrar`] (REGISTER, digest, failure budgets, the device table's room),
//! [`presence`] (MESSAGEs of registered devices, keepalive expiry), [`catalog`] (queries and
//! their answers), [`dialogs`] (INVITE, ACK, BYE, sessions and their timers) and [`playback`]
//! (history sessions and their control). This file holds the state, the entry points and the
//! SIP plumbing they share.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span, warn};

use super::{
    Command, DeviceRecord, EndedSession, GbCounters, GbError, GbEvent, HistoryRequest, PlayInfo, PlaybackControl,
    Reply, SessionView,
};
use crate::config::{GbConfig, SipConfig};
use crate::proto::sip::digest::{self, NonceCheck};
use crate::proto::sip::manscdp::{self, CatalogEvent, CatalogItem, Manscdp, RecordItem};
use crate::proto::sip::rsip::{Method, Request, Response, SipMessage};
use crate::proto::sip::sdp::{self, MediaTransport, SessionKind};
use crate::proto::sip::transaction::{Action, GroupLimit, Incoming, Transactions};
use crate::proto::sip::{self, OutRequest};
use crate::util::RateLimit;

mod catalog;
mod dialogs;
mod playback;
mod presence;
mod registrar;

const TICK: Duration = Duration::from_millis(200);
/// Catalog / RecordInfo answers being assembled at once, all devices together ...
const MAX_AGGREGATIONS: usize = 1024;
/// ... and RecordInfo queries per device (a device has one Catalog aggregation at most: a new
/// query replaces the previous one), so one device cannot take every slot (issue 8, hole 6).
const MAX_RECORD_QUERIES_PER_DEVICE: usize = 4;
/// Items kept per aggregation, and channels kept per device (a bogus SumNum must not grow
/// memory without bound).
const MAX_AGG_ITEMS: usize = sip::MAX_SUM_NUM as usize;
/// (device ID, source IP) pairs and IPs tracked for failed authentications.
const MAX_AUTH_SOURCES: usize = 10_000;
/// The same device is not queried again (DeviceInfo + Catalog) within this long.
const QUERY_PACE: Duration = Duration::from_secs(60);

/// Log lines a peer can trigger: at most `max` per `window`, then one line saying how many were
/// left out (a flood must not become a flood of log lines, issue 8 hole 15).
struct LogBudget {
    window: Duration,
    max: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    const fn new(max: u32, window: Duration) -> Self {
        LogBudget { window, max, start: None, used: 0, suppressed: 0 }
    }

    /// `Some(lines left out before this one)` when a line may be logged now.
    fn check(&mut self, now: Instant) -> Option<u64> {
        if self.start.is_none_or(|s| now.duration_since(s) >= self.window) {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used >= self.max {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Where a message came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Udp(SocketAddr),
    Tcp { conn: u64, addr: SocketAddr },
}

impl Peer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Peer::Udp(a) | Peer::Tcp { addr: a, .. } => *a,
        }
    }
    pub fn reliable(&self) -> bool {
        matches!(self, Peer::Tcp { .. })
    }
    pub fn via(&self) -> &'static str {
        if self.reliable() {
            "TCP"
        } else {
            "UDP"
        }
    }
}

/// What the core asks the driver to do, in order.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes to the peer.
    Send(Peer, Vec<u8>),
    /// The device's record as the API shows it changed ...
    Publish(DeviceRecord),
    /// ... or the device is gone.
    Unpublish(String),
    /// Store the record (or delete it) in the device database.
    Persist(DeviceRecord),
    Delete(String),
    Event(GbEvent),
    /// A session ended (kept for the API with its reason).
    Ended(EndedSession),
}

/// A live stream as the core needs to see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// A keyframe is in the stream's GOP cache.
    pub keyframe: bool,
    pub subscribers: usize,
}

/// The RTP side and the host as the core reaches them (implemented over `server::rtp` and the
/// hub by the driver; by a recording double in the core's unit tests).
pub trait MediaPort: Send {
    /// Media with this SSRC belongs to `stream` ...
    fn announce(&mut self, ssrc: u32, stream: &str);
    /// ... (the stream an SSRC is announced for) ...
    fn announced_name(&self, ssrc: u32) -> Option<String>;
    /// ... or no longer.
    fn withdraw(&mut self, ssrc: u32);
    /// Everything announced or hinted for `stream` is forgotten.
    fn withdraw_name(&mut self, stream: &str);
    /// Media for `stream` will come from `ip` (an SSRC nobody announced binds to it).
    fn expect_source(&mut self, ip: IpAddr, tcp: bool, stream: &str);
    /// The port the device answered (SDP `m=`, UDP): its media comes from there, which tells
    /// apart two sessions of one address sending the same SSRC.
    fn expect_port(&mut self, stream: &str, port: u16);
    /// The G.711 rate the device declared (SDP `f=`), a hint for the media stage.
    fn hint_g711_rate(&mut self, stream: &str, rate: u32);
    /// What the device's SDP answer says about RTCP: its `a=rtcp` address (RFC 3605) if any, and
    /// `a=rtcp-mux` (RFC 5761). Receiver reports go there (D91).
    fn expect_rtcp(&mut self, _stream: &str, _addr: Option<SocketAddr>, _mux: bool) {}
    fn stream_state(&self, stream: &str) -> Option<StreamState>;
    /// Ends the live stream `stream` (its players see the end); `reason` is its stop reason
    /// (stream log, `stream_state` callback).
    fn end_stream(&mut self, stream: &str, reason: &str);
    /// Connects to the device for TCP-active media (`fallback`: the signalling IP, for a
    /// private `c=` behind NAT) ...
    fn connect_active(&mut self, stream: &str, target: SocketAddr, fallback: SocketAddr);
    /// ... and stops that connection.
    fn stop_active(&mut self, stream: &str);
    /// The local IP devices at `toward` reach us at (Contact, Via, SDP `c=`).
    fn local_ip(&self, toward: SocketAddr) -> IpAddr;
}

struct DevState {
    rec: DeviceRecord,
    /// The SIP-over-TCP connection the device registered on.
    conn: Option<u64>,
    last_seen: Instant,
    /// When DeviceInfo + Catalog were last asked, and whether they are waiting for budget.
    queried: Option<Instant>,
    query_due: bool,
    /// Call-ID of its last REGISTER: a new one is a new boot of the device (RFC 3261 §10.2.4
    /// keeps one Call-ID per boot for refreshes).
    reg_call_id: String,
}

impl DevState {
    /// The address and transport of its registration: the only source its requests are
    /// accepted from (a forged MESSAGE must not move it, issue 8 hole 11).
    fn is_source(&self, peer: Peer) -> bool {
        peer.addr() == self.rec.addr && peer.reliable() == (self.rec.transport == "tcp")
    }

    fn peer(&self) -> Peer {
        match self.conn {
            Some(conn) => Peer::Tcp { conn, addr: self.rec.addr },
            None => Peer::Udp(self.rec.addr),
        }
    }
}

/// What a client transaction was for (resolved on its final response or timeout).
enum Pending {
    /// `background`: sent after a registration (a share of the table at most), not asked for.
    Query {
        device: String,
        cmd: &'static str,
        background: bool,
    },
    Invite {
        stream: String,
    },
    InDialog {
        what: &'static str,
        reply: Option<Reply<()>>,
    },
    Control {
        reply: Reply<()>,
    },
}

struct Aggregation<T> {
    sum: u32,
    items: BTreeMap<String, T>,
    last: Instant,
    reply: Option<Reply<Vec<T>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    Inviting,
    Established,
}

struct Session {
    kind: SessionKind,
    device: String,
    channel: String,
    stream: String,
    ssrc: u32,
    transport: MediaTransport,
    call_id: String,
    from_tag: String,
    to_header: String,
    cseq: u32,
    remote_uri: String,
    state: SessionState,
    waiters: Vec<Reply<PlayInfo>>,
    started: Instant,
    answered: Option<Instant>,
    media_seen: bool,
    last_watched: Instant,
    /// A TCP-active connection was started for it (the media port stops it).
    active: bool,
}

pub struct Core {
    sip: SipConfig,
    /// The default device password, resolved at start (`driver::resolve_password`).
    password: String,
    gb: GbConfig,
    /// The RTP port put in SDP offers.
    rtp_port: u16,
    sip_addr: SocketAddr,
    media: Box<dyn MediaPort>,
    outputs: Vec<Output>,
    /// The time of the input being handled, and a (monotonic, unix ms) pair to derive wall-clock
    /// time from it.
    now: Instant,
    clock: (Instant, i64),
    next_tick: Instant,
    tx: Transactions<Peer, Pending>,
    devices: HashMap<String, DevState>,
    secret: String,
    /// Failed authentications per (device ID, source IP): a NAT of cameras shares an IP.
    auth_failures: HashMap<(String, IpAddr), (Instant, u32)>,
    /// ... and per IP, all IDs together (a guesser rotating IDs).
    ip_failures: HashMap<IpAddr, (Instant, u32)>,
    /// Lines a peer can trigger (refusals, failures) ...
    peer_log: LogBudget,
    /// ... and state changes it can cause (registered, offline, back online).
    state_log: LogBudget,
    /// Queries after registrations sent in the current one-second window.
    query_window: (Instant, u32),
    auth_log: RateLimit,
    /// Requests of a registered device from elsewhere (hole 11).
    foreign_log: RateLimit,
    /// Catalogs refused or trimmed (holes 6, 14).
    catalog_log: RateLimit,
    counters: Arc<GbCounters>,
    sn: u32,
    ssrc_seq: u32,
    catalogs: HashMap<(String, u32), Aggregation<CatalogItem>>,
    records: HashMap<(String, u32), Aggregation<RecordItem>>,
    sessions: HashMap<String, Session>,
    by_call: HashMap<String, String>,
    /// Single-MESSAGE answers awaited by (device, CmdType, SN), with their deadline.
    queries: HashMap<(String, &'static str, u32), PendingQuery>,
    /// The host's UTC offset (seconds) for the `Date` of REGISTER answers, read at start.
    utc_offset: i64,
    /// [`Core::stop`] was called: no new sessions, no periodic work; BYEs and the answers to
    /// INVITEs still in flight are handled until [`Core::stopped`].
    stopping: bool,
}

/// What the core starts from.
pub struct CoreSetup {
    pub sip: SipConfig,
    pub gb: GbConfig,
    pub password: String,
    pub rtp_port: u16,
    pub sip_addr: SocketAddr,
    /// Devices loaded from the store (offline until they speak).
    pub stored: Vec<DeviceRecord>,
    pub counters: Arc<GbCounters>,
    /// The unix time (ms) at `now`, and the host's UTC offset (s).
    pub unix_ms: i64,
    pub utc_offset: i64,
}

/// A single-MESSAGE query's reply and deadline.
type PendingQuery = (Reply<BTreeMap<String, String>>, Instant);

/// A device as the API shows it: a channel is online only while its device is (the stored
/// record keeps each channel's own Status for when the device is back).
fn view(rec: &DeviceRecord) -> DeviceRecord {
    let mut v = rec.clone();
    if !v.online {
        for c in &mut v.channels {
            c.online = false;
        }
    }
    v
}

/// A server transaction's key: the branch (or Call-ID + CSeq) *and* the source. Cheap devices
/// number their branches alike; without the source one device's REGISTER would be taken for a
/// retransmission of another's and answered with that one's cached response.
fn server_key(req: &Request, peer: Peer) -> Option<String> {
    sip::transaction_key(&req.headers).map(|k| format!("{}|{}|{k}", peer.via(), peer.addr()))
}

fn random_token(n: usize) -> String {
    sip::hex_token(rand::random(), n)
}

impl Core {
    pub fn new(setup: CoreSetup, media: Box<dyn MediaPort>, now: Instant) -> Core {
        let mut devices = HashMap::new();
        for mut rec in setup.stored {
            // Nobody is online until it speaks: a keepalive from a device whose registration has
            // not expired brings it back (devices do not re-REGISTER after our restart).
            rec.online = false;
            devices.insert(
                rec.id.clone(),
                DevState {
                    rec,
                    conn: None,
                    last_seen: now,
                    queried: None,
                    query_due: false,
                    reg_call_id: String::new(),
                },
            );
        }
        Core {
            tx: Transactions::new(setup.sip.max_transactions),
            sip: setup.sip,
            password: setup.password,
            gb: setup.gb,
            rtp_port: setup.rtp_port,
            sip_addr: setup.sip_addr,
            media,
            outputs: Vec::new(),
            now,
            clock: (now, setup.unix_ms),
            next_tick: now + TICK,
            devices,
            secret: sip::hex_token(rand::random(), 32),
            auth_failures: HashMap::new(),
            ip_failures: HashMap::new(),
            peer_log: LogBudget::new(20, Duration::from_secs(10)),
            state_log: LogBudget::new(50, Duration::from_secs(10)),
            query_window: (now, 0),
            auth_log: RateLimit::new(Duration::from_secs(10)),
            foreign_log: RateLimit::new(Duration::from_secs(10)),
            catalog_log: RateLimit::new(Duration::from_secs(10)),
            counters: setup.counters,
            sn: 1,
            ssrc_seq: rand::random::<u32>() % 10_000,
            catalogs: HashMap::new(),
            records: HashMap::new(),
            sessions: HashMap::new(),
            by_call: HashMap::new(),
            queries: HashMap::new(),
            utc_offset: setup.utc_offset,
            stopping: false,
        }
    }

    /// Every device as the API shows it.
    pub fn snapshot(&self) -> Vec<DeviceRecord> {
        self.devices.values().map(|d| view(&d.rec)).collect()
    }

    /// What to do, in order, since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// When [`Core::on_wake`] is due next.
    pub fn poll_timeout(&self) -> Instant {
        self.tx.poll_timeout().map_or(self.next_tick, |t| t.min(self.next_tick))
    }

    /// A parsed SIP message from `peer`.
    pub fn handle_message(&mut self, msg: SipMessage, peer: Peer, now: Instant) {
        self.now = now;
        self.on_message(msg, peer, now);
    }

    /// A command of the API or the hub.
    pub fn handle_command(&mut self, c: Command, now: Instant) {
        self.now = now;
        self.on_command(c, now);
    }

    /// A SIP-over-TCP connection closed.
    pub fn handle_closed(&mut self, conn: u64, now: Instant) {
        self.now = now;
        for d in self.devices.values_mut() {
            if d.conn == Some(conn) {
                d.conn = None;
            }
        }
    }

    /// Transaction timers and the 200 ms tick (keepalive expiry, aggregation and session
    /// deadlines, paced queries).
    pub fn on_wake(&mut self, now: Instant) {
        self.now = now;
        let mut actions = Vec::new();
        self.tx.handle_timeout(now, &mut actions);
        for a in actions {
            match a {
                Action::Send(peer, bytes) => self.send(peer, bytes),
                Action::Timeout(p) => self.on_timeout(p),
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            if !self.stopping {
                self.tick(now);
            }
        }
    }

    /// A graceful stop: BYE every established session. A session still inviting is ended too;
    /// its INVITE stays pending, so a 200 OK that arrives later is ACKed and BYEd at once
    /// (`bye_unknown`). The driver keeps feeding messages and timers (UDP retransmissions of the
    /// BYEs) until [`Core::stopped`] or its deadline.
    pub fn stop(&mut self, now: Instant) {
        self.now = now;
        self.stopping = true;
        let streams: Vec<String> = self.sessions.keys().cloned().collect();
        for s in streams {
            self.end_session(&s, "gateway stopping", true);
        }
    }

    /// After [`Core::stop`]: every BYE answered (or timed out) and no INVITE awaits an answer.
    pub fn stopped(&self) -> bool {
        self.stopping && self.stop_pending() == 0
    }

    /// Sessions, INVITEs and BYEs a stop still waits for (logged when the deadline cuts it).
    pub fn stop_pending(&self) -> usize {
        self.sessions.len()
            + self.tx.count_clients(|p| matches!(p, Pending::Invite { .. } | Pending::InDialog { what: "BYE", .. }))
    }

    fn send(&mut self, peer: Peer, bytes: Vec<u8>) {
        self.outputs.push(Output::Send(peer, bytes));
    }

    fn unix_ms(&self) -> i64 {
        let since = self.now.saturating_duration_since(self.clock.0).as_millis();
        self.clock.1.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    }

    /// Unix seconds at the input being handled.
    fn unix(&self) -> u64 {
        u64::try_from(self.unix_ms() / 1000).unwrap_or(0)
    }

    fn via_host(&self, toward: SocketAddr) -> String {
        SocketAddr::new(self.media.local_ip(toward), self.sip_addr.port()).to_string()
    }

    fn our_uri(&self) -> String {
        format!("sip:{}@{}", self.sip.id, self.sip.domain)
    }

    fn respond(&mut self, req: &Request, peer: Peer, code: u16, extra: Vec<(&str, String)>, body: Vec<u8>) {
        let resp = sip::response(req, code, &random_token(10), peer.addr(), extra, body);
        let bytes = resp.to_bytes();
        if code >= 200 {
            if let Some(key) = server_key(req, peer) {
                self.tx.server_response(&key, &bytes, peer.reliable(), self.now);
            }
        }
        self.send(peer, bytes);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        peer: Peer,
        method: Method,
        uri: &str,
        to: String,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
        extra: Vec<(&str, String)>,
        content_type: Option<&str>,
        body: Vec<u8>,
        pending: Option<Pending>,
    ) -> Result<(), GbError> {
        let branch = format!("z9hG4bK{}", random_token(16));
        let via_host = self.via_host(peer.addr());
        let from = format!("<{}>;tag={from_tag}", self.our_uri());
        let req = sip::request(OutRequest {
            method,
            uri,
            transport: peer.via(),
            via_host: &via_host,
            branch: &branch,
            from,
            to,
            call_id,
            cseq,
            extra,
            content_type,
            body,
        })
        .map_err(|e| GbError::Bad(e.to_string()))?;
        let bytes = req.to_bytes();
        if let Some(p) = pending {
            let key = format!("{branch}|{method}");
            let invite = method == Method::Invite;
            // One peer holds at most its share of the table, and queries nobody asked for
            // (after registrations) half of it: a flood of registrants never leaves a real
            // camera's INVITE "transaction table full" (issue 8, hole 15).
            let mut limits = vec![GroupLimit {
                group: format!("peer {}", peer.addr().ip()),
                max: self.sip.max_transactions_per_peer,
            }];
            if matches!(p, Pending::Query { background: true, .. }) {
                limits.push(GroupLimit { group: "background".into(), max: (self.sip.max_transactions / 2).max(1) });
            }
            let reliable = peer.reliable();
            if let Err(e) =
                self.tx.start_client_limited(key, peer, bytes.clone(), reliable, invite, p, self.now, &limits)
            {
                self.counters.transactions_refused.fetch_add(1, Ordering::Relaxed);
                return Err(GbError::Busy(format!("{e} (towards {} or in total)", peer.addr().ip())));
            }
        }
        self.send(peer, bytes);
        Ok(())
    }

    fn publish(&mut self, id: &str) {
        if let Some(d) = self.devices.get(id) {
            self.outputs.push(Output::Publish(view(&d.rec)));
        }
    }

    fn persist(&mut self, id: &str) {
        self.publish(id);
        if let Some(d) = self.devices.get(id) {
            self.outputs.push(Output::Persist(d.rec.clone()));
        }
    }

    fn event(&mut self, e: GbEvent) {
        self.outputs.push(Output::Event(e));
    }

    fn next_sn(&mut self) -> u32 {
        self.sn = self.sn.wrapping_add(1);
        self.sn
    }

    fn on_message(&mut self, msg: SipMessage, peer: Peer, now: Instant) {
        match msg {
            SipMessage::Request(req) => self.on_request(req, peer, now),
            SipMessage::Response(resp) => self.on_response(resp, peer),
        }
    }

    fn on_request(&mut self, req: Request, peer: Peer, now: Instant) {
        if req.method == Method::Ack {
            // ACKs of our non-2xx answers end nothing here; we never answer INVITE with 2xx.
            return;
        }
        // A source over its failed-authentication budget is dropped before it can take a
        // transaction slot (a flood must not crowd out real devices).
        if req.method == Method::Register {
            let id = Self::device_id_of(&req).unwrap_or_default();
            if self.rate_limited(&id, peer.addr().ip(), now) {
                if let Some(suppressed) = self.auth_log.check(now) {
                    warn!(peer = %peer.addr(), device = %id, suppressed, "REGISTER dropped: too many failed authentications");
                }
                return;
            }
        }
        let Some(key) = server_key(&req, peer) else { return };
        match self.tx.server_request(&key, peer, now) {
            Ok(Incoming::New) => {}
            Ok(Incoming::Retransmit(bytes)) => {
                self.send(peer, bytes);
                return;
            }
            Ok(Incoming::Absorb) => return,
            Err(e) => {
                if let Some(suppressed) = self.auth_log.check(now) {
                    warn!(peer = %peer.addr(), suppressed, "{e}: answering 503");
                }
                let resp = sip::response(&req, 503, &random_token(10), peer.addr(), vec![], Vec::new());
                self.send(peer, resp.to_bytes());
                return;
            }
        }
        match req.method {
            Method::Register => self.on_register(&req, peer, now),
            Method::Message => self.on_message_request(&req, peer, now),
            Method::Bye => {
                let call_id = sip::header(&req.headers, "Call-ID").unwrap_or("").to_string();
                match self.by_call.get(&call_id).cloned() {
                    Some(stream) if !self.is_session_device(&stream, peer, now) => {
                        self.respond(&req, peer, 403, vec![], Vec::new())
                    }
                    Some(stream) => {
                        self.respond(&req, peer, 200, vec![], Vec::new());
                        self.end_session(&stream, "BYE from the device", false);
                    }
                    None => self.respond(&req, peer, 481, vec![], Vec::new()),
                }
            }
            Method::Options | Method::Notify | Method::Info | Method::Cancel => {
                self.respond(&req, peer, 200, vec![], Vec::new())
            }
            _ => self.respond(
                &req,
                peer,
                405,
                vec![("Allow", "REGISTER, MESSAGE, BYE, OPTIONS, NOTIFY, INFO".into())],
                Vec::new(),
            ),
        }
    }

    fn on_command(&mut self, c: Command, now: Instant) {
        match c {
            Command::Play { device, channel, transport, reply } => {
                let stream = format!("gb/{channel}");
                if let Some(s) = self.sessions.get_mut(&stream) {
                    match s.state {
                        SessionState::Established => {
                            let _ = reply.send(Ok(PlayInfo {
                                stream,
                                ssrc: sdp::ssrc_text(s.ssrc),
                                device: s.device.clone(),
                                channel,
                                existing: true,
                            }));
                        }
                        SessionState::Inviting => s.waiters.push(reply),
                    }
                    return;
                }
                match self.find_device(device.as_deref(), &channel) {
                    Ok(dev) => {
                        let t = self.transport_for(&dev, transport);
                        self.invite(&dev, &channel, SessionKind::Play, t, (0, 0), None, reply)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::History { req, reply } => self.history(req, reply),
            Command::Stop { stream, reply } => {
                if self.sessions.contains_key(&stream) {
                    self.end_session(&stream, "stopped by request", true);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(GbError::Bad(format!("no session {stream}"))));
                }
            }
            Command::Control { stream, control, reply } => self.control(&stream, control, reply),
            Command::Ptz { device, channel, ptz_cmd, reply } => {
                match self.find_device(device.as_deref(), &channel) {
                    Ok(dev) => {
                        let sn = self.next_sn();
                        let inner = format!("<PTZCmd>{ptz_cmd}</PTZCmd>\r\n<Info>\r\n<ControlPriority>5</ControlPriority>\r\n</Info>\r\n");
                        let body = manscdp::build("Control", "DeviceControl", sn, &channel, &inner, true);
                        if let Err(e) = self.send_manscdp(&dev, &channel, body, Pending::Control { reply }) {
                            warn!(device = %dev, "PTZ not sent: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::RecordInfo { device, channel, start, end, reply } => {
                match self.find_device(device.as_deref(), &channel) {
                    Ok(dev) => {
                        let mine = self.records.keys().filter(|(d, _)| *d == dev).count();
                        if self.records.len() >= MAX_AGGREGATIONS || mine >= MAX_RECORD_QUERIES_PER_DEVICE {
                            self.counters.aggregations_refused.fetch_add(1, Ordering::Relaxed);
                            let _ = reply.send(Err(GbError::Busy("too many record queries".into())));
                            return;
                        }
                        let sn = self.next_sn();
                        // Dahua NVRs need Type=all (wvp).
                        let inner = format!(
                            "<StartTime>{}</StartTime>\r\n<EndTime>{}</EndTime>\r\n<Secrecy>0</Secrecy>\r\n<Type>all</Type>\r\n",
                            manscdp::escape(&start),
                            manscdp::escape(&end)
                        );
                        let body = manscdp::build("Query", "RecordInfo", sn, &channel, &inner, true);
                        self.records.insert(
                            (dev.clone(), sn),
                            Aggregation { sum: u32::MAX, items: BTreeMap::new(), last: now, reply: Some(reply) },
                        );
                        let p = Pending::Query { device: dev.clone(), cmd: "RecordInfo", background: false };
                        if let Err(e) = self.send_manscdp(&dev, &channel, body, p) {
                            if let Some(agg) = self.records.remove(&(dev, sn)) {
                                if let Some(r) = agg.reply {
                                    let _ = r.send(Err(e));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Query { device, cmd, reply } => {
                if !self.devices.get(&device).is_some_and(|d| d.rec.online) {
                    let _ = reply.send(Err(GbError::Offline(device)));
                    return;
                }
                if self.queries.len() >= MAX_AGGREGATIONS {
                    let _ = reply.send(Err(GbError::Busy("too many queries".into())));
                    return;
                }
                match self.query(&device, cmd.cmd_type(), false) {
                    Ok(sn) => {
                        self.queries.insert((device, cmd.cmd_type(), sn), (reply, now + self.gb.catalog_timeout.0));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::SetPasswords { password, passwords } => {
                self.password = password;
                self.sip.passwords = passwords;
                info!("device passwords reloaded");
            }
            Command::Sessions { reply } => {
                let list = self
                    .sessions
                    .values()
                    .map(|s| SessionView {
                        stream: s.stream.clone(),
                        device: s.device.clone(),
                        channel: s.channel.clone(),
                        kind: s.kind.name(),
                        transport: s.transport,
                        ssrc: sdp::ssrc_text(s.ssrc),
                        established: s.state == SessionState::Established,
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.expire_devices(now);
        self.expire_aggregations(now);
        self.session_timers(now);
        self.forget_auth_failures(now);
        self.send_due_queries(now);
    }
}

#[cfg(test)]
mod tests {
    //! The core without sockets: SIP bytes and `now` in, outputs and media-port calls out.
    use std::sync::Mutex;

    use super::*;

    /// Records what the core asked of the RTP side; a stream is "live" while in `live`.
    #[derive(Default)]
    struct Media {
        calls: Arc<Mutex<Vec<String>>>,
        live: Arc<Mutex<HashMap<String, StreamState>>>,
    }

    impl MediaPort for Media {
        fn announce(&mut self, ssrc: u32, stream: &str) {
            self.calls.lock().unwrap().push(format!("announce {ssrc} {stream}"));
        }
        fn announced_name(&self, _: u32) -> Option<String> {
            None
        }
        fn withdraw(&mut self, ssrc: u32) {
            self.calls.lock().unwrap().push(format!("withdraw {ssrc}"));
        }
        fn withdraw_name(&mut self, _: &str) {}
        fn expect_source(&mut self, ip: IpAddr, _: bool, stream: &str) {
            self.calls.lock().unwrap().push(format!("expect {ip} {stream}"));
        }
        fn expect_port(&mut self, stream: &str, port: u16) {
            self.calls.lock().unwrap().push(format!("port {stream} {port}"));
        }
        fn hint_g711_rate(&mut self, _: &str, _: u32) {}
        fn stream_state(&self, stream: &str) -> Option<StreamState> {
            self.live.lock().unwrap().get(stream).copied()
        }
        fn end_stream(&mut self, stream: &str, _: &str) {
            self.calls.lock().unwrap().push(format!("end {stream}"));
        }
        fn connect_active(&mut self, _: &str, _: SocketAddr, _: SocketAddr) {}
        fn stop_active(&mut self, _: &str) {}
        fn local_ip(&self, _: SocketAddr) -> IpAddr {
            "127.0.0.1".parse().unwrap()
        }
    }

    const DEV: &str = "34020000001320000001";
    const CAM: &str = "192.168.1.64:5060";

    type Calls = Arc<Mutex<Vec<String>>>;
    type Live = Arc<Mutex<HashMap<String, StreamState>>>;

    fn core(password: &str) -> (Core, Live, Instant, Calls) {
        let now = Instant::now();
        let media = Media::default();
        let (live, calls) = (media.live.clone(), media.calls.clone());
        let setup = CoreSetup {
            sip: SipConfig::default(),
            gb: GbConfig::default(),
            password: password.into(),
            rtp_port: 10_000,
            sip_addr: "127.0.0.1:5060".parse().unwrap(),
            stored: Vec::new(),
            counters: Arc::default(),
            unix_ms: 1_700_000_000_000,
            utc_offset: 0,
        };
        (Core::new(setup, Box::new(media), now), live, now, calls)
    }

    fn request(text: &str) -> SipMessage {
        sip::parse(text.as_bytes()).unwrap()
    }

    fn register(from: &str, branch: &str, expires: &str, auth: Option<&str>) -> SipMessage {
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        request(&format!(
            "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {from};rport;branch=z9hG4bK{branch}\r\n\
From: <sip:{DEV}@3402000000>;tag=1\r\nTo: <sip:{DEV}@3402000000>\r\nCall-ID: boot1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:{DEV}@{from}>\r\n{auth}Expires: {expires}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    /// The responses (code, message) and requests the core sent since the last call.
    fn sent(core: &mut Core) -> Vec<(Peer, SipMessage)> {
        core.take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send(p, b) => Some((p, sip::parse(&b).unwrap())),
                _ => None,
            })
            .collect()
    }

    fn code(m: &SipMessage) -> u16 {
        match m {
            SipMessage::Response(r) => r.status_code.code(),
            SipMessage::Request(_) => 0,
        }
    }

    fn registered(core: &mut Core, now: Instant) {
        let peer = Peer::Udp(CAM.parse().unwrap());
        core.handle_message(register(CAM, "r1", "18446744073709551615", None), peer, now);
        let out = sent(core);
        let SipMessage::Response(r) = &out[0].1 else { panic!("a response") };
        let www = sip::header(&r.headers, "WWW-Authenticate").expect("challenged").to_string();
        let auth =
            digest::answer(&www, "REGISTER", "sip:34020000002000000001@3402000000", DEV, "secret", "c1").unwrap();
        core.handle_message(register(CAM, "r2", "18446744073709551615", Some(&auth)), peer, now);
        let out = core.take_outputs();
        let ok = out.iter().find_map(|o| match o {
            Output::Send(_, b) => Some(sip::parse(b).unwrap()),
            _ => None,
        });
        let Some(SipMessage::Response(r)) = ok else { panic!("answered") };
        assert_eq!(r.status_code.code(), 200);
        assert_eq!(sip::header(&r.headers, "Expires"), Some("86400"), "clamped");
        assert!(out.iter().any(|o| matches!(o, Output::Persist(d) if d.id == DEV && d.online)));
        assert!(out.iter().any(|o| matches!(o, Output::Event(GbEvent::Registered { .. }))));
    }

    #[test]
    fn registration_is_challenged_and_a_forged_keepalive_is_refused() {
        let (mut core, _, now, _) = core("secret");
        registered(&mut core, now);
        let keepalive = |from: &str| {
            let body = format!("<?xml version=\"1.0\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>1</SN>\r\n<DeviceID>{DEV}</DeviceID>\r\n</Notify>\r\n");
            request(&format!(
                "MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKk\r\n\
From: <sip:{DEV}@3402000000>;tag=2\r\nTo: <sip:34020000002000000001@3402000000>\r\nCall-ID: k\r\nCSeq: 2 MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
        };
        let forger = "10.0.0.66:5060";
        core.handle_message(keepalive(forger), Peer::Udp(forger.parse().unwrap()), now);
        assert_eq!(sent(&mut core).iter().map(|(_, m)| code(m)).collect::<Vec<_>>(), vec![403]);
        assert_eq!(core.snapshot()[0].addr, CAM.parse().unwrap(), "not moved");
        core.handle_message(keepalive(CAM), Peer::Udp(CAM.parse().unwrap()), now);
        assert_eq!(sent(&mut core).iter().map(|(_, m)| code(m)).collect::<Vec<_>>(), vec![200]);
    }

    #[test]
    fn a_session_invites_and_ends_with_its_stream() {
        let (mut core, live, now, calls) = core("secret");
        registered(&mut core, now);
        let _ = core.take_outputs();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let channel = "34020000001310000001";
        core.handle_command(
            Command::Play { device: Some(DEV.into()), channel: channel.into(), transport: None, reply: tx },
            now,
        );
        let out = sent(&mut core);
        let (peer, SipMessage::Request(invite)) = &out[0] else { panic!("an INVITE") };
        assert_eq!((invite.method, peer.addr()), (Method::Invite, CAM.parse().unwrap()));
        let offer = sdp::parse(&invite.body).unwrap();
        let ok = sip::response(
            invite,
            200,
            "dev",
            peer.addr(),
            vec![],
            sdp::answer(&sdp::Answer {
                device_id: channel,
                ip: "192.168.1.64".parse().unwrap(),
                port: 15_060,
                kind: SessionKind::Play,
                tcp: false,
                setup: None,
                ssrc: offer.ssrc.unwrap(),
                time: (0, 0),
            })
            .into_bytes(),
        );
        core.handle_message(SipMessage::Response(ok), *peer, now);
        let info = rx.try_recv().expect("answered").expect("played");
        assert!(!info.existing);
        let port = format!("port {} 15060", info.stream);
        assert!(calls.lock().unwrap().contains(&port), "the answer's m= port tells this session's media apart");
        assert!(sent(&mut core).iter().any(|(_, m)| matches!(m, SipMessage::Request(r) if r.method == Method::Ack)));
        // Media arrives, then the stream ends (RTP timeout): the session ends with BYE.
        live.lock().unwrap().insert(info.stream.clone(), StreamState { keyframe: true, subscribers: 1 });
        core.on_wake(now + Duration::from_millis(250));
        live.lock().unwrap().clear();
        core.on_wake(now + Duration::from_millis(500));
        let out = core.take_outputs();
        assert!(out.iter().any(|o| matches!(o, Output::Send(_, b) if b.starts_with(b"BYE "))), "BYE");
        assert!(out.iter().any(|o| matches!(o, Output::Ended(e) if e.reason.contains("media stopped"))));
    }
}
