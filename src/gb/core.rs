//! The signalling task: one task owns the device table, the SIP transactions and the media
//! sessions, so no state is shared under locks except the read-only device snapshot for the API.
//! Sockets feed it parsed messages; commands come from the API and the hub (play on demand); a
//! tick drives keepalive expiry, aggregation timeouts and session timers.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use super::store::Store;
use super::transport::{self, Inbound, Peer, SipSender};
use super::{
    Command, DeviceRecord, Gb, GbCounters, GbError, GbEvent, HistoryRequest, PlayInfo, PlaybackControl, Reply,
    SessionView,
};
use crate::config::{Config, GbConfig, RtpConfig, SipConfig};
use crate::hub::Hub;
use crate::proto::sip::digest::{self, NonceCheck};
use crate::proto::sip::manscdp::{self, CatalogEvent, CatalogItem, Manscdp, RecordItem};
use crate::proto::sip::rsip::{Method, Request, Response, SipMessage};
use crate::proto::sip::sdp::{self, MediaTransport, SessionKind};
use crate::proto::sip::transaction::{Action, GroupLimit, Incoming, Transactions};
use crate::proto::sip::{self, OutRequest};
use crate::server::rtp::{self as rtp_server, RtpShared};
use crate::util::RateLimit;

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

#[derive(Debug, thiserror::Error)]
pub enum GbStartError {
    #[error("cannot listen for SIP on {addr} (config key sip.listen): {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("SIP password file {path}: {source}")]
    Password { path: std::path::PathBuf, source: std::io::Error },
}

/// Name of the generated password's file, in the directory of `sip.db`.
pub const PASSWORD_FILE: &str = "gbgate-sip-password";

/// The default device password. Configured: as is (`""` = no authentication, said loudly).
/// Unset: read from [`PASSWORD_FILE`] next to `sip.db`, or generated there (mode 0600) and
/// logged once; with no `sip.db` there is nowhere to keep it, so one is generated for this run.
/// A gateway never accepts unauthenticated devices by default (issue 8, hole 4).
pub fn resolve_password(sip: &SipConfig) -> Result<String, GbStartError> {
    if let Some(p) = &sip.password {
        if p.is_empty() {
            warn!("[sip] password = \"\": any device registers without authentication");
        }
        return Ok(p.clone());
    }
    let generated = || sip::hex_token(rand::random(), 16);
    let Some(db) = &sip.db else {
        let p = generated();
        warn!(password = %p, "[sip] password unset and no [sip] db to keep one: generated for this run only; set [sip] password");
        return Ok(p);
    };
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let path = dir.join(PASSWORD_FILE);
    let err = |source| GbStartError::Password { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            info!(file = %path.display(), "SIP device password read (set [sip] password to choose one)");
            return Ok(text.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let p = generated();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path).map_err(err)?, format!("{p}\n").as_bytes()).map_err(err)?;
    warn!(password = %p, file = %path.display(), "[sip] password unset: generated one for devices, stored in the file (logged only this once)");
    Ok(p)
}

/// Starts the SIP sockets and the signalling task; registers play on demand with the hub.
pub async fn start(
    cfg: &Config,
    hub: Arc<Hub>,
    rtp: Arc<RtpShared>,
    rtp_addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(Gb, tokio::task::JoinHandle<()>), GbStartError> {
    let (udp, tcp, sip_addr) = transport::bind(cfg.sip.listen)
        .await
        .map_err(|source| GbStartError::Listen { addr: cfg.sip.listen, source })?;
    let password = resolve_password(&cfg.sip)?;
    let counters = Arc::new(GbCounters::default());
    let (store, stored) = match &cfg.sip.db {
        Some(path) => Store::open(path, counters.clone())?,
        None => (Store::memory(), Vec::new()),
    };
    // The sockets outlive the gateway's shutdown signal until the core has sent its BYEs and
    // they are flushed: the core cancels `sockets` when it is done (SIGTERM lost a BYE when the
    // sockets closed first and the core took the closed queue for the end).
    let sockets = CancellationToken::new();
    let (out, inbound) = transport::start(udp, tcp, cfg.sip.max_tcp_connections, 4096, sockets.clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(1024);
    let mut devices = HashMap::new();
    let mut snapshot = BTreeMap::new();
    let now = Instant::now();
    for mut rec in stored {
        // Nobody is online until it speaks: a keepalive from a device whose registration has
        // not expired brings it back (devices do not re-REGISTER after our restart).
        rec.online = false;
        snapshot.insert(rec.id.clone(), view(&rec));
        devices.insert(
            rec.id.clone(),
            DevState { rec, conn: None, last_seen: now, queried: None, query_due: false, reg_call_id: String::new() },
        );
    }
    let shared = Arc::new(RwLock::new(snapshot));
    let ended = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let gb = Gb {
        devices: shared.clone(),
        cmd: cmd_tx,
        events: events.clone(),
        hub: hub.clone(),
        sip_addr,
        media_timeout: cfg.gb.media_timeout.0,
        counters: counters.clone(),
        sip_counters: out.counters.clone(),
        ended: ended.clone(),
    };
    hub.add_demand(Arc::new(gb.clone()));
    let core = Core {
        sip: cfg.sip.clone(),
        password,
        gb: cfg.gb.clone(),
        rtp_cfg: cfg.rtp.clone(),
        hub,
        rtp,
        rtp_addr,
        sip_addr,
        out,
        tx: Transactions::new(cfg.sip.max_transactions),
        devices,
        shared,
        events,
        store,
        secret: sip::hex_token(rand::random(), 32),
        auth_failures: HashMap::new(),
        ip_failures: HashMap::new(),
        peer_log: LogBudget::new(20, Duration::from_secs(10)),
        state_log: LogBudget::new(50, Duration::from_secs(10)),
        query_window: (now, 0),
        auth_log: RateLimit::new(Duration::from_secs(10)),
        foreign_log: RateLimit::new(Duration::from_secs(10)),
        ended,
        catalog_log: RateLimit::new(Duration::from_secs(10)),
        counters,
        sn: 1,
        ssrc_seq: rand::random::<u32>() % 10_000,
        catalogs: HashMap::new(),
        records: HashMap::new(),
        sessions: HashMap::new(),
        by_call: HashMap::new(),
        queries: HashMap::new(),
        utc_offset: super::localtime::utc_offset(unix_now() as i64),
    };
    info!(sip = %sip_addr, id = %cfg.sip.id, domain = %cfg.sip.domain, "GB28181 signalling started");
    let task = tokio::spawn(core.run(inbound, cmd_rx, shutdown, sockets));
    Ok((gb, task))
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
    active_task: Option<tokio::task::AbortHandle>,
}

struct Core {
    sip: SipConfig,
    /// The default device password, resolved at start (`resolve_password`).
    password: String,
    gb: GbConfig,
    rtp_cfg: RtpConfig,
    hub: Arc<Hub>,
    rtp: Arc<RtpShared>,
    rtp_addr: SocketAddr,
    sip_addr: SocketAddr,
    out: Arc<SipSender>,
    tx: Transactions<Peer, Pending>,
    devices: HashMap<String, DevState>,
    shared: Arc<RwLock<BTreeMap<String, DeviceRecord>>>,
    events: broadcast::Sender<GbEvent>,
    store: Store,
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
    /// The last sessions that ended (shared with the API).
    ended: Arc<std::sync::Mutex<std::collections::VecDeque<super::EndedSession>>>,
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
}

/// A single-MESSAGE query's reply and deadline.
type PendingQuery = (Reply<BTreeMap<String, String>>, Instant);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

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
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut cmds: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
        sockets: CancellationToken,
    ) {
        let _close_sockets = sockets.drop_guard();
        let mut next_tick = Instant::now() + TICK;
        let mut actions = Vec::new();
        loop {
            let wake = self.tx.poll_timeout().map_or(next_tick, |t| t.min(next_tick));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.stop().await,
                m = inbound.recv() => match m {
                    Some(Inbound::Message(msg, peer)) => self.on_message(*msg, peer, Instant::now()),
                    Some(Inbound::Closed(conn)) => {
                        for d in self.devices.values_mut() {
                            if d.conn == Some(conn) {
                                d.conn = None;
                            }
                        }
                    }
                    None => return self.stop().await,
                },
                c = cmds.recv() => match c {
                    Some(c) => self.on_command(c, Instant::now()),
                    None => return self.stop().await,
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.tx.handle_timeout(now, &mut actions);
                    for a in actions.drain(..) {
                        match a {
                            Action::Send(peer, bytes) => self.out.send(peer, bytes),
                            Action::Timeout(p) => self.on_timeout(p),
                        }
                    }
                    if now >= next_tick {
                        next_tick = now + TICK;
                        self.tick(now);
                    }
                }
            }
        }
    }

    /// Every graceful stop ends here: BYE every session, then wait (briefly) until the TCP
    /// connections have written what is queued, before the sockets close.
    async fn stop(&mut self) {
        let streams: Vec<String> = self.sessions.keys().cloned().collect();
        for s in streams {
            self.end_session(&s, "gateway stopping", true);
        }
        self.out.flush(Duration::from_millis(500)).await;
    }

    // ----- plumbing -----

    /// The IP devices reach us at: `sip.advertise`, the listen IP, or the local address of the
    /// route to `toward` (multi-homed hosts: the wrong one makes devices drop us, SRS #2695).
    fn local_ip(&self, toward: SocketAddr) -> IpAddr {
        if let Some(ip) = self.sip.advertise {
            return ip;
        }
        if !self.sip_addr.ip().is_unspecified() {
            return self.sip_addr.ip();
        }
        let bind: SocketAddr = if toward.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        std::net::UdpSocket::bind(bind)
            .and_then(|s| {
                s.connect(toward)?;
                s.local_addr()
            })
            .map(|a| a.ip())
            .unwrap_or(self.sip_addr.ip())
    }

    fn via_host(&self, toward: SocketAddr) -> String {
        SocketAddr::new(self.local_ip(toward), self.sip_addr.port()).to_string()
    }

    fn our_uri(&self) -> String {
        format!("sip:{}@{}", self.sip.id, self.sip.domain)
    }

    fn respond(&mut self, req: &Request, peer: Peer, code: u16, extra: Vec<(&str, String)>, body: Vec<u8>) {
        let resp = sip::response(req, code, &random_token(10), peer.addr(), extra, body);
        let bytes = resp.to_bytes();
        if code >= 200 {
            if let Some(key) = server_key(req, peer) {
                self.tx.server_response(&key, &bytes, peer.reliable(), Instant::now());
            }
        }
        self.out.send(peer, bytes);
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
                self.tx.start_client_limited(key, peer, bytes.clone(), reliable, invite, p, Instant::now(), &limits)
            {
                self.counters.transactions_refused.fetch_add(1, Ordering::Relaxed);
                return Err(GbError::Busy(format!("{e} (towards {} or in total)", peer.addr().ip())));
            }
        }
        self.out.send(peer, bytes);
        Ok(())
    }

    fn publish(&mut self, id: &str) {
        if let Some(d) = self.devices.get(id) {
            self.shared.write().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), view(&d.rec));
        }
    }

    fn persist(&mut self, id: &str) {
        self.publish(id);
        if let Some(d) = self.devices.get(id) {
            self.store.put(&d.rec);
        }
    }

    fn event(&self, e: GbEvent) {
        let _ = self.events.send(e);
    }

    fn next_sn(&mut self) -> u32 {
        self.sn = self.sn.wrapping_add(1);
        self.sn
    }

    /// Sends a MANSCDP MESSAGE to a device (or one of its channels, `target`).
    fn send_manscdp(&mut self, device: &str, target: &str, body: Vec<u8>, pending: Pending) -> Result<(), GbError> {
        let d = self.devices.get(device).ok_or_else(|| GbError::NoDevice(device.to_string()))?;
        let peer = d.peer();
        let uri = format!("sip:{target}@{}", d.rec.addr);
        let to = format!("<sip:{target}@{}>", self.sip.domain);
        let call_id = random_token(20);
        self.send_request(
            peer,
            Method::Message,
            &uri,
            to,
            &call_id,
            &random_token(10),
            1,
            vec![],
            Some("Application/MANSCDP+xml"),
            body,
            Some(pending),
        )
    }

    fn query(&mut self, device: &str, cmd: &'static str, background: bool) -> Result<u32, GbError> {
        let sn = self.next_sn();
        let body = manscdp::build("Query", cmd, sn, device, "", true);
        let pending = Pending::Query { device: device.to_string(), cmd, background };
        if let Err(e) = self.send_manscdp(device, device, body, pending) {
            if let Some(suppressed) = self.peer_log.check(Instant::now()) {
                warn!(%device, suppressed, "{cmd} query not sent: {e}");
            }
            return Err(e);
        }
        Ok(sn)
    }

    /// DeviceInfo + Catalog after a registration, paced: a device at most once per QUERY_PACE,
    /// all devices together `queries_per_second`; a device whose address (or the background
    /// share) has no transaction room left stays due, without using the budget, for a later tick.
    fn send_due_queries(&mut self, now: Instant) {
        let due: Vec<(String, IpAddr)> = self
            .devices
            .values()
            .filter(|d| d.query_due && d.rec.online)
            .map(|d| (d.rec.id.clone(), d.rec.addr.ip()))
            .collect();
        let background = (self.sip.max_transactions / 2).max(1);
        for (id, ip) in due {
            if now.duration_since(self.query_window.0) >= Duration::from_secs(1) {
                self.query_window = (now, 0);
            }
            if self.query_window.1 >= self.sip.queries_per_second || self.tx.group_count("background") + 2 > background
            {
                return;
            }
            if self.tx.group_count(&format!("peer {ip}")) + 2 > self.sip.max_transactions_per_peer {
                continue;
            }
            let Some(d) = self.devices.get_mut(&id) else { continue };
            d.query_due = false;
            if d.queried.is_some_and(|t| now.duration_since(t) < QUERY_PACE) {
                continue;
            }
            d.queried = Some(now);
            self.query_window.1 += 1;
            let _ = self.query(&id, "DeviceInfo", true);
            if let Ok(sn) = self.query(&id, "Catalog", true) {
                self.start_catalog(&id, sn, now);
            }
        }
    }

    // ----- inbound -----

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
                self.out.send(peer, bytes);
                return;
            }
            Ok(Incoming::Absorb) => return,
            Err(e) => {
                if let Some(suppressed) = self.auth_log.check(now) {
                    warn!(peer = %peer.addr(), suppressed, "{e}: answering 503");
                }
                let resp = sip::response(&req, 503, &random_token(10), peer.addr(), vec![], Vec::new());
                self.out.send(peer, resp.to_bytes());
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

    fn device_id_of(req: &Request) -> Option<String> {
        sip::header(&req.headers, "From").and_then(sip::uri_user).map(str::to_string)
    }

    fn password_for(&self, id: &str) -> &str {
        self.sip.passwords.get(id).map(String::as_str).unwrap_or(&self.password)
    }

    /// Counts a failed authentication of `id` from `ip`; `true` when over the budget.
    fn auth_failed(&mut self, id: &str, ip: IpAddr, now: Instant) -> bool {
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
    fn rate_limited(&self, id: &str, ip: IpAddr, now: Instant) -> bool {
        let minute = Duration::from_secs(60);
        let budget = self.sip.auth_failures_per_minute;
        let over = |(t, n): &(Instant, u32), max: u32| now.duration_since(*t) < minute && *n >= max;
        if self.auth_failures.get(&(id.to_string(), ip)).is_some_and(|e| over(e, budget)) {
            return true;
        }
        self.ip_failures.get(&ip).is_some_and(|e| over(e, budget.saturating_mul(10)))
            && self.devices.get(id).is_none_or(|d| d.rec.addr.ip() != ip)
    }

    fn on_register(&mut self, req: &Request, peer: Peer, now: Instant) {
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
                let nonce = digest::make_nonce(&core.secret, unix_now());
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
            match digest::check_nonce(&self.secret, &params.nonce, unix_now(), self.sip.nonce_ttl.0.as_secs()) {
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
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
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
        let unix = unix_now();
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
    fn make_room(&mut self, ip: IpAddr, now: Instant) -> bool {
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
                self.shared.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
                self.store.delete(&id);
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

    fn start_catalog(&mut self, device: &str, sn: u32, now: Instant) {
        self.catalogs.retain(|(d, _), _| d != device);
        if self.catalogs.len() >= MAX_AGGREGATIONS {
            self.counters.aggregations_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(now) {
                warn!(%device, suppressed, "catalog answer not awaited: {MAX_AGGREGATIONS} aggregations open");
            }
            return;
        }
        self.catalogs.insert(
            (device.to_string(), sn),
            Aggregation { sum: u32::MAX, items: BTreeMap::new(), last: now, reply: None },
        );
    }

    fn on_message_request(&mut self, req: &Request, peer: Peer, now: Instant) {
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
        if d.rec.expires == 0 || unix_now() > registered_until {
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
            d.rec.last_keepalive = unix_now();
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
    fn refuse_foreign(&mut self, device: &str, peer: Peer, registered: SocketAddr, what: &str, now: Instant) {
        self.counters.foreign_source_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.foreign_log.check(now) {
            warn!(%device, peer = %peer.addr(), transport = peer.via(), %registered, what, suppressed,
                "request of a registered device from another source refused (403): it must REGISTER from there");
        }
    }

    /// Whether an in-dialog request of `stream` comes from its device's registered source.
    fn is_session_device(&mut self, stream: &str, peer: Peer, now: Instant) -> bool {
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

    fn answer_query(&mut self, device: &str, cmd: &'static str, m: &Manscdp) {
        if let Some((reply, _)) = self.queries.remove(&(device.to_string(), cmd, m.sn)) {
            let fields =
                m.el.children
                    .iter()
                    .filter(|c| c.children.is_empty())
                    .map(|c| (c.name.clone(), c.text.trim().to_string()))
                    .collect();
            let _ = reply.send(Ok(fields));
        }
    }

    /// A Catalog answer or notification from the device's registered source (D51). An answer is
    /// taken only under the SN of our own query; a notification (`Notify`) only with items, merged
    /// by DeviceID (Event DEL removes). Neither can erase a known list (issue 8, hole 14).
    fn on_catalog(&mut self, device: &str, m: &Manscdp, now: Instant) {
        let (sum, items) = manscdp::catalog_events(m);
        if m.root == "Notify" {
            return self.on_catalog_notify(device, m.sn, items, now);
        }
        let key = (device.to_string(), m.sn);
        let Some(agg) = self.catalogs.get_mut(&key) else {
            self.counters.catalogs_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(now) {
                warn!(%device, sn = m.sn, items = items.len(), suppressed, "Catalog answer to no query of ours (or too late): ignored");
            }
            return;
        };
        agg.sum = sum;
        agg.last = now;
        let mut dropped = 0u64;
        for (it, _) in items {
            if agg.items.len() < MAX_AGG_ITEMS || agg.items.contains_key(&it.device_id) {
                agg.items.insert(it.device_id.clone(), it);
            } else {
                dropped += 1;
            }
        }
        if agg.items.len() as u32 >= agg.sum {
            self.finish_catalog(&key);
        }
        self.items_dropped(device, "Catalog", dropped, now);
    }

    fn items_dropped(&mut self, device: &str, what: &str, dropped: u64, now: Instant) {
        if dropped == 0 {
            return;
        }
        self.counters.aggregation_items_dropped.fetch_add(dropped, Ordering::Relaxed);
        if let Some(suppressed) = self.catalog_log.check(now) {
            warn!(%device, what, dropped, suppressed, "items beyond {MAX_AGG_ITEMS} dropped");
        }
    }

    fn on_catalog_notify(&mut self, device: &str, sn: u32, items: Vec<(CatalogItem, CatalogEvent)>, now: Instant) {
        if items.is_empty() {
            self.counters.catalogs_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(now) {
                warn!(%device, sn, suppressed, "Catalog notification without items: ignored");
            }
            return;
        }
        let Some(d) = self.devices.get_mut(device) else { return };
        let mut dropped = 0u64;
        for (it, event) in items {
            let at = d.rec.channels.iter().position(|c| c.device_id == it.device_id);
            match (event, at) {
                (CatalogEvent::Delete, Some(i)) => {
                    d.rec.channels.remove(i);
                }
                (CatalogEvent::Delete, None) => {}
                (CatalogEvent::Upsert, Some(i)) => d.rec.channels[i] = it,
                (CatalogEvent::Upsert, None) if d.rec.channels.len() < MAX_AGG_ITEMS => d.rec.channels.push(it),
                (CatalogEvent::Upsert, None) => dropped += 1,
            }
        }
        d.rec.catalog_at = Some(unix_now());
        let n = d.rec.channels.len();
        if let Some(suppressed) = self.state_log.check(now) {
            info!(%device, channels = n, suppressed, "catalog notification applied");
        }
        self.persist(device);
        self.event(GbEvent::Catalog { device: device.to_string(), channels: n });
        self.items_dropped(device, "Catalog notification", dropped, now);
    }

    fn finish_catalog(&mut self, key: &(String, u32)) {
        let Some(agg) = self.catalogs.remove(key) else { return };
        let Some(d) = self.devices.get_mut(&key.0) else { return };
        let complete = agg.items.len() as u32 >= agg.sum;
        if agg.items.is_empty() && !d.rec.channels.is_empty() {
            self.counters.empty_catalogs_ignored.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.catalog_log.check(Instant::now()) {
                warn!(device = %key.0, known = d.rec.channels.len(), suppressed, "empty catalog does not erase the known channel list");
            }
            return;
        }
        if !complete && agg.items.len() < d.rec.channels.len() {
            info!(device = %key.0, got = agg.items.len(), sum = agg.sum, "partial catalog kept aside (smaller than the current list)");
            return;
        }
        d.rec.channels = agg.items.into_values().collect();
        d.rec.catalog_at = Some(unix_now());
        let n = d.rec.channels.len();
        info!(device = %key.0, channels = n, complete, "catalog updated");
        self.persist(&key.0);
        self.event(GbEvent::Catalog { device: key.0.clone(), channels: n });
    }

    fn on_record_info(&mut self, device: &str, m: &Manscdp, now: Instant) {
        let (sum, items) = manscdp::record_info(m);
        let key = (device.to_string(), m.sn);
        let Some(agg) = self.records.get_mut(&key) else { return };
        agg.sum = sum;
        agg.last = now;
        let mut dropped = 0u64;
        for it in items {
            if agg.items.len() < MAX_AGG_ITEMS {
                // De-duplicated on start+end (wvp).
                agg.items.insert(format!("{}|{}|{}", it.start_time, it.end_time, it.device_id), it);
            } else {
                dropped += 1;
            }
        }
        if agg.items.len() as u32 >= agg.sum {
            if let Some(agg) = self.records.remove(&key) {
                if let Some(r) = agg.reply {
                    let _ = r.send(Ok(agg.items.into_values().collect()));
                }
            }
        }
        self.items_dropped(device, "RecordInfo", dropped, now);
    }

    fn on_response(&mut self, resp: Response, peer: Peer) {
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
    fn ack(&mut self, resp: &Response, peer: Peer) {
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

    fn bye_unknown(&mut self, resp: &Response, peer: Peer) {
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

    fn on_final(&mut self, p: Pending, resp: &Response, peer: Peer, code: u16) {
        match p {
            Pending::Query { device, cmd, .. } => {
                if code >= 300 {
                    if let Some(suppressed) = self.peer_log.check(Instant::now()) {
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

    fn ack_non_2xx(&mut self, resp: &Response, peer: Peer) {
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
            self.out.send(peer, req.to_bytes());
        }
    }

    fn established(&mut self, stream: &str, resp: &Response, peer: Peer) {
        let answer = sdp::parse(&resp.body).ok();
        let to = sip::header(&resp.headers, "To").unwrap_or("").to_string();
        let contact = sip::header(&resp.headers, "Contact").map(|c| sip::uri_of(c).to_string());
        let (rtp, hub, rtp_cfg) = (self.rtp.clone(), self.hub.clone(), self.rtp_cfg.clone());
        let Some(s) = self.sessions.get_mut(stream) else { return };
        s.state = SessionState::Established;
        s.to_header = to;
        if let Some(c) = contact {
            s.remote_uri = c;
        }
        let now = Instant::now();
        s.answered = Some(now);
        s.last_watched = now;
        if let Some(a) = &answer {
            if let Some(rate) = a.g711_rate {
                rtp.hint_g711_rate(stream, rate);
            }
            // Hikvision answers with its own y= and sends that SSRC: re-key to it (wvp).
            if let Some(new) = a.ssrc.filter(|n| *n != s.ssrc && *n != 0) {
                info!(stream, offered = %sdp::ssrc_text(s.ssrc), answered = %sdp::ssrc_text(new), "answer re-keys the session");
                rtp.withdraw(s.ssrc);
                s.ssrc = new;
                // TCP active needs no SSRC (the connection names the stream). A device-chosen SSRC
                // another session already uses cannot route: the source address binds it instead.
                match rtp.announced_name(new) {
                    _ if s.transport == MediaTransport::TcpActive => {}
                    Some(other) if other != stream => {
                        warn!(stream, other = %other, ssrc = %sdp::ssrc_text(new), "answered SSRC already in use: binding by source address");
                    }
                    _ => rtp.announce(new, stream.to_string()),
                }
            }
            if s.transport == MediaTransport::TcpActive && a.port == 0 {
                warn!(stream, "answer with m= port 0: cannot connect (TCP active)");
            } else if s.transport == MediaTransport::TcpActive {
                let target = SocketAddr::new(a.connection.unwrap_or(peer.addr().ip()), a.port);
                // Private c= behind NAT: fall back to the signalling source IP (wvp #1261).
                let fallback = SocketAddr::new(peer.addr().ip(), a.port);
                let name = stream.to_string();
                let handle = tokio::spawn(async move {
                    if let Err(e) =
                        rtp_server::connect_active(target, Some(fallback), name.clone(), rtp_cfg, hub, rtp).await
                    {
                        warn!(stream = %name, "TCP active: {e}");
                    }
                });
                s.active_task = Some(handle.abort_handle());
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

    fn on_timeout(&mut self, p: Pending) {
        match p {
            Pending::Query { device, cmd, .. } => {
                if let Some(suppressed) = self.peer_log.check(Instant::now()) {
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

    fn fail_invite(&mut self, stream: &str, why: &str) {
        if let Some(s) = self.sessions.get_mut(stream) {
            let err = GbError::NoAnswer(why.to_string());
            for w in s.waiters.drain(..) {
                let _ = w.send(Err(err.clone()));
            }
        }
        self.end_session(stream, why, false);
    }

    // ----- sessions -----

    fn find_device(&self, device: Option<&str>, channel: &str) -> Result<String, GbError> {
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

    fn mint_ssrc(&mut self, history: bool) -> u32 {
        loop {
            self.ssrc_seq = (self.ssrc_seq + 1) % 10_000;
            let ssrc = sdp::mint_ssrc(history, &self.sip.domain, self.ssrc_seq);
            if !self.sessions.values().any(|s| s.ssrc == ssrc) {
                return ssrc;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invite(
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
        let ip = self.local_ip(dev_addr);
        let body = sdp::offer(&sdp::Offer {
            gateway_id: &self.sip.id,
            ip,
            port: self.rtp_addr.port(),
            kind,
            channel,
            transport,
            ssrc,
            time,
            download_speed,
        });
        // Announce before the INVITE: a camera may send media before our ACK.
        self.rtp.announce(ssrc, stream.clone());
        if transport != MediaTransport::TcpActive {
            self.rtp.expect_source(dev_addr.ip(), transport == MediaTransport::TcpPassive, stream.clone());
        }
        let call_id = random_token(24);
        let from_tag = random_token(10);
        let uri = format!("sip:{channel}@{dev_addr}");
        let to = format!("<sip:{channel}@{}>", self.sip.domain);
        let contact = format!("<sip:{}@{}>", self.sip.id, SocketAddr::new(ip, self.sip_addr.port()));
        let subject = format!("{channel}:{},{}:0", sdp::ssrc_text(ssrc), self.sip.id);
        let now = Instant::now();
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
                active_task: None,
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
    fn end_session(&mut self, stream: &str, reason: &str, send_bye: bool) {
        let Some(mut s) = self.sessions.remove(stream) else { return };
        self.by_call.remove(&s.call_id);
        self.rtp.withdraw(s.ssrc);
        self.rtp.withdraw_name(stream);
        if let Some(t) = s.active_task.take() {
            t.abort();
        }
        if let Some(st) = self.hub.get(stream) {
            self.hub.remove(&st);
        }
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
        {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            if ended.len() >= super::ENDED_KEPT {
                ended.pop_front();
            }
            ended.push_back(super::EndedSession {
                stream: stream.to_string(),
                device: s.device.clone(),
                channel: s.channel.clone(),
                reason: reason.to_string(),
                ended_at: unix_now(),
            });
        }
        self.event(GbEvent::SessionEnded {
            device: s.device.clone(),
            channel: s.channel.clone(),
            stream: stream.to_string(),
            reason: reason.to_string(),
        });
    }

    fn end_device_sessions(&mut self, device: &str, reason: &str) {
        let streams: Vec<String> =
            self.sessions.values().filter(|s| s.device == device).map(|s| s.stream.clone()).collect();
        for s in streams {
            self.end_session(&s, reason, true);
        }
    }

    fn transport_for(&self, device: &str, asked: Option<MediaTransport>) -> MediaTransport {
        asked.or_else(|| self.gb.transports.get(device).copied()).unwrap_or(self.gb.transport)
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

    fn history(&mut self, req: HistoryRequest, reply: Reply<PlayInfo>) {
        if req.end <= req.start {
            let _ = reply.send(Err(GbError::Bad("end must be after start".into())));
            return;
        }
        match self.find_device(req.device.as_deref(), &req.channel) {
            Ok(dev) => {
                let t = self.transport_for(&dev, req.transport);
                let kind = if req.download_speed.is_some() { SessionKind::Download } else { SessionKind::Playback };
                self.invite(&dev, &req.channel, kind, t, (req.start, req.end), req.download_speed, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// INFO with a MANSRTSP body inside the playback dialog.
    fn control(&mut self, stream: &str, control: PlaybackControl, reply: Reply<()>) {
        let Some(s) = self.sessions.get_mut(stream) else {
            let _ = reply.send(Err(GbError::Bad(format!("no session {stream}"))));
            return;
        };
        if s.state != SessionState::Established || s.kind == SessionKind::Play {
            let _ = reply.send(Err(GbError::Bad("not an established playback session".into())));
            return;
        }
        s.cseq = s.cseq.saturating_add(1);
        let rtsp_cseq = s.cseq;
        let body = match control {
            PlaybackControl::Play => format!("PLAY RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nRange: npt=now-\r\n\r\n"),
            PlaybackControl::Pause => format!("PAUSE RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nPauseTime: now\r\n\r\n"),
            PlaybackControl::Scale { scale } => {
                format!("PLAY RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nScale: {scale:.6}\r\n\r\n")
            }
            PlaybackControl::Seek { seconds } => {
                format!("PLAY RTSP/1.0\r\nCSeq: {rtsp_cseq}\r\nRange: npt={seconds}-\r\n\r\n")
            }
        };
        let (uri, to, call_id, from_tag, cseq, device) = (
            s.remote_uri.clone(),
            s.to_header.clone(),
            s.call_id.clone(),
            s.from_tag.clone(),
            s.cseq,
            s.device.clone(),
        );
        let Some(peer) = self.devices.get(&device).map(|d| d.peer()) else {
            let _ = reply.send(Err(GbError::NoDevice(device)));
            return;
        };
        let pending = Pending::InDialog { what: "INFO", reply: Some(reply) };
        let _ = self.send_request(
            peer,
            Method::Info,
            &uri,
            to,
            &call_id,
            &from_tag,
            cseq,
            vec![],
            Some("Application/MANSRTSP"),
            body.into_bytes(),
            Some(pending),
        );
    }

    fn tick(&mut self, now: Instant) {
        // Keepalive expiry: interval x misses without a word (wvp: min(Expires, that)).
        let limit = self.gb.keepalive_interval.0.saturating_mul(self.gb.keepalive_misses);
        let unix = unix_now();
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
        // Catalog and RecordInfo answers that stopped short of SumNum.
        let stale = self.gb.catalog_timeout.0;
        let done: Vec<_> =
            self.catalogs.iter().filter(|(_, a)| now.duration_since(a.last) > stale).map(|(k, _)| k.clone()).collect();
        for k in done {
            self.finish_catalog(&k);
        }
        let done: Vec<_> =
            self.records.iter().filter(|(_, a)| now.duration_since(a.last) > stale).map(|(k, _)| k.clone()).collect();
        for k in done {
            if let Some(a) = self.records.remove(&k) {
                if let Some(r) = a.reply {
                    let _ = r.send(if a.items.is_empty() && a.sum == u32::MAX {
                        Err(GbError::NoAnswer("no RecordInfo answer".into()))
                    } else {
                        Ok(a.items.into_values().collect())
                    });
                }
            }
        }
        let late: Vec<_> = self.queries.iter().filter(|(_, (_, d))| *d <= now).map(|(k, _)| k.clone()).collect();
        for k in late {
            if let Some((reply, _)) = self.queries.remove(&k) {
                let _ = reply.send(Err(GbError::NoAnswer(format!("no {} answer", k.1))));
            }
        }
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
                    let stream = self.hub.get(&s.stream);
                    if s.media_seen && stream.is_none() {
                        // Its stream ended (RTP timeout over UDP, connection closed over TCP):
                        // the session is dead too, and a new play must INVITE again.
                        to_end.push((s.stream.clone(), "media stopped (the stream ended)".into(), true));
                        continue;
                    }
                    if !s.media_seen {
                        s.media_seen = stream.as_ref().is_some_and(|st| st.gop_cache_usage().0 > 0);
                        if !s.media_seen {
                            if s.answered.is_some_and(|a| now.duration_since(a) > self.gb.media_timeout.0) {
                                to_end.push((s.stream.clone(), "no media after the answer".into(), true));
                            }
                            // Players are parked until the first keyframe: idle time starts then.
                            continue;
                        }
                        s.last_watched = now;
                    }
                    if stream.as_ref().is_some_and(|st| st.subscriber_count() > 0) {
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
        if self.auth_failures.len() > 1024 {
            self.auth_failures.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
        if self.ip_failures.len() > 1024 {
            self.ip_failures.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
        self.send_due_queries(now);
    }
}
