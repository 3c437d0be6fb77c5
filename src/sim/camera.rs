//! `gbgate sim`: GB28181 cameras in one process. Each camera registers with digest auth, sends
//! keepalives, answers Catalog/DeviceInfo/DeviceStatus/RecordInfo, PTZ controls, and INVITEs
//! (live, playback, download) with PS over RTP from a capture file, over UDP, TCP passive or
//! TCP active; BYE stops the media. Field quirks can be switched on: Hikvision (answer with its
//! own SSRC), Dahua (send SSRC 0), GB2312 channel names.
//!
//! Used by people to validate a deployment, and by the tests as the device peer.
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::probe::reader::{read_capture, CaptureItem};
use crate::proto::rtp::RtpPacket;
use crate::proto::sip::manscdp::{self, CatalogItem};
use crate::proto::sip::rsip::{Method, Request, SipMessage};
use crate::proto::sip::sdp::{self, SessionKind};
use crate::proto::sip::{self, digest, OutRequest};

/// A vendor behaviour to mimic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Quirk {
    #[default]
    None,
    /// Answer with our own `y=` and send that SSRC (Hikvision).
    Hikvision,
    /// Send SSRC 0 whatever `y=` said (Dahua).
    Dahua,
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The gateway's SIP address.
    pub server: SocketAddr,
    pub server_id: String,
    pub domain: String,
    pub password: String,
    pub count: usize,
    /// ID of camera 0; camera i adds i to the serial.
    pub first_id: String,
    pub channels: usize,
    pub keepalive: Duration,
    pub expires: u32,
    /// RTP capture replayed as media (RTP dump, rtpdump or pcap).
    pub media: PathBuf,
    pub quirk: Quirk,
    /// Channel names in Chinese, sent GB2312-encoded.
    pub gb2312_names: bool,
    /// Local address the cameras bind (their SIP, RTP and TCP-active listeners).
    pub local_ip: IpAddr,
    /// Playback/download sessions end with MediaStatus 121 after this long.
    pub playback_length: Duration,
    /// `false`: stopping is a crash (power cut, reboot): media stops, no BYE, no unregister.
    pub unregister_on_stop: bool,
    /// How long a camera thinks before answering an INVITE (a slow camera; the tests race a
    /// SIGTERM against it).
    pub answer_delay: Duration,
}

impl SimOptions {
    pub fn new(server: SocketAddr, media: PathBuf) -> SimOptions {
        SimOptions {
            server,
            server_id: "34020000002000000001".into(),
            domain: "3402000000".into(),
            password: "12345678".into(),
            count: 1,
            first_id: "34020000001320000001".into(),
            channels: 1,
            keepalive: Duration::from_secs(60),
            expires: 3600,
            media,
            quirk: Quirk::None,
            gb2312_names: false,
            local_ip: "127.0.0.1".parse().expect("literal"),
            playback_length: Duration::from_secs(5),
            unregister_on_stop: true,
            answer_delay: Duration::ZERO,
        }
    }
}

/// What the simulated cameras did, summed over cameras (the tests read it).
#[derive(Debug, Default)]
pub struct SimStats {
    pub registered: AtomicU64,
    pub register_failures: AtomicU64,
    pub keepalives: AtomicU64,
    pub catalog_queries: AtomicU64,
    pub invites: AtomicU64,
    pub acks: AtomicU64,
    pub byes_received: AtomicU64,
    pub infos: AtomicU64,
    pub ptz: AtomicU64,
    pub media_packets: AtomicU64,
    pub media_status_sent: AtomicU64,
    /// RTCP receiver reports the gateway sent us (UDP to our `a=rtcp` port, or in the TCP stream).
    pub rtcp_rr_received: AtomicU64,
    /// RTCP sender reports we sent back to where the reports came from.
    pub rtcp_sr_sent: AtomicU64,
    pub last_ptz: std::sync::Mutex<String>,
    /// While set, the cameras keep their sessions but send no media (an encoder that hung, a
    /// cable cut on the media path): what the gateway's receive timeout is for.
    pub media_muted: std::sync::atomic::AtomicBool,
}

impl SimStats {
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Read(#[from] crate::probe::reader::ReadError),
    #[error("{0}: no RTP packets in it")]
    NoRtp(String),
    #[error("bad camera id {0:?}: must be 20 digits")]
    BadId(String),
    #[error("camera socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One RTP packet of the media template and its offset from the first (90 kHz ticks).
struct MediaTemplate {
    packets: Vec<(u32, Bytes)>,
    span: u32,
}

/// `--media synthetic`: the moving-bars pattern through gbgate's PS muxer (2 s, looped).
pub const SYNTHETIC: &str = "synthetic";

fn load_media(path: &Path) -> Result<Arc<MediaTemplate>, SimError> {
    if path.as_os_str() == SYNTHETIC {
        let packets = super::pattern::rtp_packets(2);
        let span = 2 * 90_000;
        return Ok(Arc::new(MediaTemplate { packets, span }));
    }
    let cap = read_capture(path)?;
    let mut packets = Vec::new();
    let mut first: Option<(u32, u32)> = None;
    for item in cap.items {
        if let CaptureItem::Rtp { packet, .. } = item {
            let Ok(p) = RtpPacket::parse(packet.clone()) else { continue };
            let (ssrc, ts0) = *first.get_or_insert((p.ssrc, p.timestamp));
            if p.ssrc == ssrc {
                packets.push((p.timestamp.wrapping_sub(ts0), packet));
            }
        }
    }
    if packets.is_empty() {
        return Err(SimError::NoRtp(path.display().to_string()));
    }
    let span = packets.last().map_or(0, |p| p.0) + 3600;
    Ok(Arc::new(MediaTemplate { packets, span }))
}

/// Runs `opts.count` cameras until `stop`. Returns the shared stats at once.
pub async fn spawn(opts: SimOptions, stop: CancellationToken) -> Result<Arc<SimStats>, SimError> {
    let media = load_media(&opts.media)?;
    let stats = Arc::new(SimStats::default());
    let base: u128 = opts.first_id.parse().map_err(|_| SimError::BadId(opts.first_id.clone()))?;
    if opts.first_id.len() != 20 {
        return Err(SimError::BadId(opts.first_id.clone()));
    }
    for i in 0..opts.count {
        let id = format!("{:020}", base + i as u128);
        let socket = UdpSocket::bind(SocketAddr::new(opts.local_ip, 0)).await?;
        let cam = Camera::new(id.clone(), i, opts.clone(), socket, media.clone(), stats.clone(), stop.clone());
        tokio::spawn(cam.run().instrument(tracing::info_span!("sim", camera = %id)));
    }
    Ok(stats)
}

/// A channel ID of camera `id`: type 131 (camera), serial offset by the channel index.
pub fn channel_id(id: &str, index: usize) -> String {
    let serial: u64 = id.get(14..).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (center, net) = (id.get(..10).unwrap_or("3402000000"), id.get(13..14).unwrap_or("0"));
    format!("{center}131{net}{:06}", (serial * 100 + index as u64) % 1_000_000)
}

struct Dialog {
    stop: CancellationToken,
    kind: SessionKind,
    /// Where to send media once ACKed (UDP, TCP passive).
    start: Option<MediaStart>,
    call_id: String,
    from: String,
    to: String,
}

enum MediaStart {
    /// Target, SSRC, the RTP socket (its port was answered) and the RTCP one (port + 1).
    Udp(SocketAddr, u32, UdpSocket, Option<UdpSocket>),
    TcpConnect(SocketAddr, u32),
}

/// An RTP socket and, when the port above it was free, an RTCP socket at RTP + 1 (RFC 3550 11).
async fn bind_rtp_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, Option<UdpSocket>)> {
    for _ in 0..16 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let Some(next) = rtp.local_addr()?.port().checked_add(1) else { continue };
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, next)).await {
            return Ok((rtp, Some(rtcp)));
        }
    }
    Ok((UdpSocket::bind(SocketAddr::new(ip, 0)).await?, None))
}

/// The camera's side of RTCP: counts the gateway's receiver reports and answers each with a
/// sender report for `ssrc` to where it came from (symmetric RTCP, RFC 4961).
fn on_rtcp_from_gateway(buf: &[u8], ssrc: u32, stats: &SimStats, packets: u32) -> Option<Vec<u8>> {
    use crate::proto::rtcp;
    let rrs = rtcp::packets(buf).filter(|p| matches!(p, Ok(rtcp::RtcpPacket::ReceiverReport { .. }))).count();
    if rrs == 0 {
        return None;
    }
    stats.rtcp_rr_received.fetch_add(rrs as u64, Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ntp = rtcp::ntp_from_unix_micros(now.as_micros() as u64);
    stats.rtcp_sr_sent.fetch_add(1, Ordering::Relaxed);
    Some(rtcp::rtcp_sender_report(ssrc, ntp, 0, packets, 0).to_vec())
}

struct Camera {
    id: String,
    index: usize,
    opts: SimOptions,
    socket: Arc<UdpSocket>,
    media: Arc<MediaTemplate>,
    stats: Arc<SimStats>,
    stop: CancellationToken,
    cseq: u32,
    call_id: String,
    from_tag: String,
    registered: bool,
    dialogs: HashMap<String, Dialog>,
    /// Requests already answered (retransmissions get the same answer again).
    answered: VecDeque<(String, Vec<u8>)>,
    /// Our MESSAGEs not yet answered, by transaction key: (bytes, next resend, resends so far).
    /// Resent like an RFC 3261 UDP client (0.5 s doubling, 6 times) so a loaded gateway that
    /// drops a datagram still gets the whole catalog.
    unanswered: HashMap<String, (Vec<u8>, Instant, u32)>,
}

impl Camera {
    fn new(
        id: String,
        index: usize,
        opts: SimOptions,
        socket: UdpSocket,
        media: Arc<MediaTemplate>,
        stats: Arc<SimStats>,
        stop: CancellationToken,
    ) -> Camera {
        Camera {
            id,
            index,
            opts,
            socket: Arc::new(socket),
            media,
            stats,
            stop,
            cseq: 0,
            call_id: sip::hex_token(rand::random(), 20),
            from_tag: sip::hex_token(rand::random(), 10),
            registered: false,
            dialogs: HashMap::new(),
            answered: VecDeque::new(),
            unanswered: HashMap::new(),
        }
    }

    fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or_else(|_| SocketAddr::new(self.opts.local_ip, 0))
    }

    fn our_uri(&self) -> String {
        format!("sip:{}@{}", self.id, self.opts.domain)
    }

    fn server_uri(&self) -> String {
        format!("sip:{}@{}", self.opts.server_id, self.opts.domain)
    }

    async fn send(&self, bytes: Vec<u8>) {
        if let Err(e) = self.socket.send_to(&bytes, self.opts.server).await {
            debug!("send failed: {e}");
        }
    }

    fn request(
        &mut self,
        method: Method,
        uri: &str,
        call_id: &str,
        extra: Vec<(&str, String)>,
        ct: Option<&str>,
        body: Vec<u8>,
    ) -> Vec<u8> {
        self.cseq += 1;
        let local = self.local().to_string();
        let branch = format!("z9hG4bK{}", sip::hex_token(rand::random(), 16));
        let req = sip::request(OutRequest {
            method,
            uri,
            transport: "UDP",
            via_host: &local,
            branch: &branch,
            from: format!("<{}>;tag={}", self.our_uri(), self.from_tag),
            to: format!("<{}>", if call_id == self.call_id { self.our_uri() } else { self.server_uri() }),
            call_id,
            cseq: self.cseq,
            extra,
            content_type: ct,
            body,
        });
        req.map(|r| r.to_bytes()).unwrap_or_default()
    }

    async fn register(&mut self, auth: Option<String>, expires: u32) {
        let uri = self.server_uri();
        let call_id = self.call_id.clone();
        let mut extra = vec![
            ("Contact", format!("<sip:{}@{}>", self.id, self.local())),
            ("Expires", expires.to_string()),
            ("User-Agent", "gbgate-sim".to_string()),
        ];
        if let Some(a) = auth {
            extra.push(("Authorization", a));
        }
        let bytes = self.request(Method::Register, &uri, &call_id, extra, None, Vec::new());
        self.send(bytes).await;
    }

    /// REGISTER with Expires 0, answering the challenge; gives up after a second.
    async fn unregister(&mut self, buf: &mut [u8]) {
        self.register(None, 0).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, self.socket.recv_from(buf)).await {
            let Ok(SipMessage::Response(resp)) = sip::parse(&buf[..n]) else { continue };
            if sip::cseq(&resp.headers).is_none_or(|c| c.1 != "REGISTER") {
                continue;
            }
            match resp.status_code.code() {
                401 => {
                    let Some(ch) = sip::header(&resp.headers, "WWW-Authenticate") else { return };
                    let uri = self.server_uri();
                    let auth = digest::answer(ch, "REGISTER", &uri, &self.id, &self.opts.password, "0a4f113b");
                    self.register(auth, 0).await;
                }
                _ => return,
            }
        }
    }

    async fn message(&mut self, body: Vec<u8>) {
        let uri = self.server_uri();
        let call_id = sip::hex_token(rand::random(), 20);
        let bytes = self.request(Method::Message, &uri, &call_id, vec![], Some("Application/MANSCDP+xml"), body);
        if let Ok(SipMessage::Request(r)) = sip::parse(&bytes) {
            if let Some(key) = sip::transaction_key(&r.headers) {
                if self.unanswered.len() < 256 {
                    self.unanswered.insert(key, (bytes.clone(), Instant::now() + Duration::from_millis(500), 0));
                }
            }
        }
        self.send(bytes).await;
    }

    async fn resend_unanswered(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        self.unanswered.retain(|_, (bytes, next, tries)| {
            if *next > now {
                return true;
            }
            if *tries >= 6 {
                return false;
            }
            *tries += 1;
            *next = now + Duration::from_millis(500 << (*tries).min(3));
            due.push(bytes.clone());
            true
        });
        for b in due {
            self.send(b).await;
        }
        self.unanswered.values().map(|v| v.1).min()
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        let mut next_register = Instant::now();
        let mut next_keepalive = Instant::now() + self.opts.keepalive;
        let mut sn = 0u32;
        loop {
            let mut wake = if self.registered { next_keepalive.min(next_register) } else { next_register };
            if let Some(t) = self.unanswered.values().map(|v| v.1).min() {
                wake = wake.min(t);
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    for d in self.dialogs.values() { d.stop.cancel(); }
                    if self.registered && self.opts.unregister_on_stop {
                        self.unregister(&mut buf).await;
                    }
                    return;
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    self.resend_unanswered().await;
                    let now = Instant::now();
                    if now >= next_register {
                        self.register(None, self.opts.expires).await;
                        // Retry soon until registered, then refresh at half the lifetime.
                        next_register = now + if self.registered {
                            Duration::from_secs(u64::from(self.opts.expires / 2).max(1))
                        } else {
                            Duration::from_secs(3)
                        };
                    }
                    if self.registered && now >= next_keepalive {
                        sn += 1;
                        let body = manscdp::build("Notify", "Keepalive", sn, &self.id, "<Status>OK</Status>\r\n", true);
                        self.message(body).await;
                        self.stats.keepalives.fetch_add(1, Ordering::Relaxed);
                        next_keepalive = now + self.opts.keepalive;
                    }
                }
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, _from)) = r else { continue };
                    let Ok(msg) = sip::parse(&buf[..n]) else { continue };
                    match msg {
                        SipMessage::Response(resp) => {
                            let code = resp.status_code.code();
                            let method = sip::cseq(&resp.headers).map(|c| c.1).unwrap_or_default();
                            if method != "REGISTER" {
                                if let Some(key) = sip::transaction_key(&resp.headers) {
                                    self.unanswered.remove(&key);
                                }
                                continue;
                            }
                            match code {
                                200 => {
                                    if !self.registered {
                                        self.registered = true;
                                        self.stats.registered.fetch_add(1, Ordering::Relaxed);
                                        info!("registered");
                                        next_keepalive = Instant::now() + self.opts.keepalive;
                                        next_register = Instant::now() + Duration::from_secs(u64::from(self.opts.expires / 2).max(1));
                                    }
                                }
                                401 => {
                                    let Some(ch) = sip::header(&resp.headers, "WWW-Authenticate") else { continue };
                                    let cnonce = sip::hex_token(rand::random(), 8);
                                    let uri = self.server_uri();
                                    let auth = digest::answer(ch, "REGISTER", &uri, &self.id, &self.opts.password, &cnonce);
                                    self.register(auth, self.opts.expires).await;
                                }
                                _ => {
                                    self.stats.register_failures.fetch_add(1, Ordering::Relaxed);
                                    warn!(code, "registration refused");
                                }
                            }
                        }
                        SipMessage::Request(req) => self.on_request(req).await,
                    }
                }
            }
        }
    }

    async fn reply(&mut self, req: &Request, code: u16, extra: Vec<(&str, String)>, body: Vec<u8>) {
        let tag = format!("{}{}", self.from_tag, self.index);
        let resp = sip::response(req, code, &tag, self.opts.server, extra, body);
        let bytes = resp.to_bytes();
        if let Some(key) = sip::transaction_key(&req.headers) {
            if self.answered.len() >= 64 {
                self.answered.pop_front();
            }
            self.answered.push_back((key, bytes.clone()));
        }
        self.send(bytes).await;
    }

    async fn on_request(&mut self, req: Request) {
        if req.method != Method::Ack {
            if let Some(key) = sip::transaction_key(&req.headers) {
                if let Some((_, bytes)) = self.answered.iter().find(|(k, _)| *k == key) {
                    let bytes = bytes.clone();
                    self.send(bytes).await;
                    return;
                }
            }
        }
        let call_id = sip::header(&req.headers, "Call-ID").unwrap_or("").to_string();
        match req.method {
            Method::Message => {
                self.reply(&req, 200, vec![], Vec::new()).await;
                let Ok(m) = manscdp::parse(&req.body) else { return };
                self.on_manscdp(m).await;
            }
            Method::Invite => self.on_invite(req).await,
            Method::Ack => {
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = self.dialogs.get_mut(&call_id) {
                    if let Some(start) = d.start.take() {
                        let kind = d.kind;
                        let stop = d.stop.clone();
                        let (from, to) = (d.from.clone(), d.to.clone());
                        self.start_media(start, stop, kind, call_id, from, to);
                    }
                }
            }
            Method::Bye => {
                self.stats.byes_received.fetch_add(1, Ordering::Relaxed);
                info!(%call_id, "BYE received");
                if let Some(d) = self.dialogs.remove(&call_id) {
                    d.stop.cancel();
                    self.reply(&req, 200, vec![], Vec::new()).await;
                } else {
                    self.reply(&req, 481, vec![], Vec::new()).await;
                }
            }
            Method::Info => {
                self.stats.infos.fetch_add(1, Ordering::Relaxed);
                let cseq = String::from_utf8_lossy(&req.body)
                    .lines()
                    .find_map(|l| l.strip_prefix("CSeq:").map(|v| v.trim().to_string()))
                    .unwrap_or_else(|| "0".into());
                let body = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n").into_bytes();
                self.reply(&req, 200, vec![("Content-Type", "Application/MANSRTSP".into())], body).await;
            }
            _ => self.reply(&req, 200, vec![], Vec::new()).await,
        }
    }

    fn channels(&self) -> Vec<CatalogItem> {
        (0..self.opts.channels)
            .map(|c| CatalogItem {
                device_id: channel_id(&self.id, c),
                name: if self.opts.gb2312_names {
                    format!("大门口摄像机{}", c + 1)
                } else {
                    format!("Camera {}", c + 1)
                },
                manufacturer: "gbgate-sim".into(),
                model: "SIM-1".into(),
                parent_id: self.id.clone(),
                civil_code: self.id[..6].to_string(),
                address: "Loopback & Co".into(),
                parental: false,
                online: true,
                ptz_type: Some(1),
            })
            .collect()
    }

    async fn on_manscdp(&mut self, m: manscdp::Manscdp) {
        match (m.root.as_str(), m.cmd_type.as_str()) {
            ("Query", "Catalog") => {
                self.stats.catalog_queries.fetch_add(1, Ordering::Relaxed);
                let items = self.channels();
                // Split like NVRs do (2 items per MESSAGE) so the gateway must aggregate by SumNum.
                for chunk in items.chunks(2) {
                    let body = manscdp::catalog_response(m.sn, &self.id, items.len(), chunk, true);
                    self.message(body).await;
                }
            }
            ("Query", "DeviceInfo") => {
                let inner = format!(
                    "<DeviceName>sim {}</DeviceName>\r\n<Result>OK</Result>\r\n<Manufacturer>gbgate-sim</Manufacturer>\r\n<Model>SIM-1</Model>\r\n<Firmware>1.0</Firmware>\r\n<Channel>{}</Channel>\r\n",
                    self.index, self.opts.channels
                );
                let body = manscdp::build("Response", "DeviceInfo", m.sn, &self.id, &inner, true);
                self.message(body).await;
            }
            ("Query", "DeviceStatus") => {
                let inner = "<Result>OK</Result>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n<Encode>ON</Encode>\r\n<Record>OFF</Record>\r\n";
                let body = manscdp::build("Response", "DeviceStatus", m.sn, &self.id, inner, true);
                self.message(body).await;
            }
            ("Query", "RecordInfo") => {
                let start = m.el.text_of("StartTime").and_then(sip::parse_gb_time).unwrap_or(0);
                let end = m.el.text_of("EndTime").and_then(sip::parse_gb_time).unwrap_or(start + 3600);
                // Two recordings covering the first and last tenth of the range.
                let tenth = ((end - start) / 10).max(1);
                let mut inner = "<Name>sim</Name>\r\n<SumNum>2</SumNum>\r\n<RecordList Num=\"2\">\r\n".to_string();
                for (a, b) in [(start, start + tenth), (end - tenth, end)] {
                    inner.push_str(&format!(
                        "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>sim</Name>\r\n<FilePath>{a}_{b}</FilePath>\r\n<Address>sim</Address>\r\n<StartTime>{}</StartTime>\r\n<EndTime>{}</EndTime>\r\n<Secrecy>0</Secrecy>\r\n<Type>time</Type>\r\n</Item>\r\n",
                        m.device_id,
                        sip::format_gb_time(a),
                        sip::format_gb_time(b)
                    ));
                }
                inner.push_str("</RecordList>\r\n");
                let body = manscdp::build("Response", "RecordInfo", m.sn, &m.device_id, &inner, true);
                self.message(body).await;
            }
            ("Control", "DeviceControl") => {
                if let Some(cmd) = m.el.text_of("PTZCmd") {
                    self.stats.ptz.fetch_add(1, Ordering::Relaxed);
                    *self.stats.last_ptz.lock().unwrap_or_else(|e| e.into_inner()) = cmd.to_string();
                    info!(ptz = cmd, "PTZ command");
                }
            }
            _ => {}
        }
    }

    fn sending_ssrc(&self, offered: u32) -> (u32, u32) {
        // (answered y=, SSRC put in RTP)
        match self.opts.quirk {
            Quirk::None => (offered, offered),
            Quirk::Hikvision => {
                // The camera's own choice: unique per camera (derived from its ID), live form.
                let serial: u32 = self.id.get(12..).and_then(|s| s.parse().ok()).unwrap_or(self.index as u32);
                let own = 600_000 + serial % 400_000;
                (own, own)
            }
            Quirk::Dahua => (offered, 0),
        }
    }

    async fn on_invite(&mut self, req: Request) {
        self.stats.invites.fetch_add(1, Ordering::Relaxed);
        if !self.opts.answer_delay.is_zero() {
            tokio::time::sleep(self.opts.answer_delay).await;
        }
        let call_id = sip::header(&req.headers, "Call-ID").unwrap_or("").to_string();
        let Ok(offer) = sdp::parse(&req.body) else {
            return self.reply(&req, 488, vec![], Vec::new()).await;
        };
        let Some(ip) = offer.connection else {
            return self.reply(&req, 488, vec![], Vec::new()).await;
        };
        let target = SocketAddr::new(ip, offer.port);
        let (answer_ssrc, rtp_ssrc) = self.sending_ssrc(offer.ssrc.unwrap_or(0));
        let stop = self.stop.child_token();
        let mut port = 0;
        let mut setup = None;
        let mut rtcp_line = None;
        let start = if !offer.tcp {
            // Media leaves from its own socket, like a camera's encoder does; its port is the
            // answered one, RTCP is taken at the port above (`a=rtcp`, RFC 3605).
            let Ok((rtp, rtcp)) = bind_rtp_pair(self.opts.local_ip).await else {
                return self.reply(&req, 500, vec![], Vec::new()).await;
            };
            port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
            if let Some(r) = &rtcp {
                rtcp_line = r.local_addr().ok().map(|a| format!("a=rtcp:{}\r\n", a.port()));
            }
            Some(MediaStart::Udp(target, rtp_ssrc, rtp, rtcp))
        } else if offer.setup.as_deref() == Some("active") {
            // The gateway connects to us: listen now, answer our port.
            let listener = match TcpListener::bind(SocketAddr::new(self.opts.local_ip, 0)).await {
                Ok(l) => l,
                Err(_) => return self.reply(&req, 500, vec![], Vec::new()).await,
            };
            port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            setup = Some("passive");
            let (media, stats, stop2, kind) = (self.media.clone(), self.stats.clone(), stop.clone(), offer.kind);
            let end = self.playback_end(kind);
            tokio::spawn(async move {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop2.cancelled() => return,
                };
                if let Ok((sock, _)) = accepted {
                    let _ = stream_tcp(sock, media, rtp_ssrc, stats, stop2, end).await;
                }
            });
            None
        } else {
            setup = Some("active");
            Some(MediaStart::TcpConnect(target, rtp_ssrc))
        };
        if offer.tcp {
            // RTCP in the same TCP stream (RFC 5761 over RFC 4571).
            rtcp_line = Some("a=rtcp-mux\r\n".to_string());
        }
        let mut body = sdp::answer(&sdp::Answer {
            device_id: &self.id,
            ip: self.opts.local_ip,
            port,
            kind: offer.kind,
            tcp: offer.tcp,
            setup,
            ssrc: answer_ssrc,
            time: offer.time,
        });
        if let Some(line) = rtcp_line {
            body.push_str(&line);
        }
        let from = sip::header(&req.headers, "From").unwrap_or("").to_string();
        let to = format!("{};tag={}{}", sip::header(&req.headers, "To").unwrap_or(""), self.from_tag, self.index);
        self.dialogs.insert(
            call_id.clone(),
            Dialog { stop: stop.clone(), kind: offer.kind, start, call_id: call_id.clone(), from, to },
        );
        let contact = format!("<sip:{}@{}>", self.id, self.local());
        self.reply(
            &req,
            200,
            vec![("Contact", contact), ("Content-Type", "APPLICATION/SDP".into())],
            body.into_bytes(),
        )
        .await;
        if self.dialogs.len() > 64 {
            self.dialogs.retain(|_, d| !d.stop.is_cancelled());
        }
        let _ = self.dialogs.get(&call_id).map(|d| &d.call_id);
    }

    fn playback_end(&self, kind: SessionKind) -> Option<Duration> {
        (kind != SessionKind::Play).then_some(self.opts.playback_length)
    }

    fn start_media(
        &mut self,
        start: MediaStart,
        stop: CancellationToken,
        kind: SessionKind,
        call_id: String,
        from: String,
        to: String,
    ) {
        let (media, stats) = (self.media.clone(), self.stats.clone());
        let end = self.playback_end(kind);
        let socket = self.socket.clone();
        let server = self.opts.server;
        let id = self.id.clone();
        let stats2 = stats.clone();
        tokio::spawn(async move {
            let r = match start {
                MediaStart::Udp(target, ssrc, rtp, rtcp) => {
                    stream_udp(rtp, rtcp, target, media, ssrc, stats, stop.clone(), end).await
                }
                MediaStart::TcpConnect(target, ssrc) => match TcpStream::connect(target).await {
                    Ok(sock) => stream_tcp(sock, media, ssrc, stats, stop.clone(), end).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = r {
                debug!("media ended: {e}");
            }
            // End of a recording: MediaStatus 121 in the dialog (a MESSAGE with its Call-ID).
            if end.is_some() && !stop.is_cancelled() {
                let body = manscdp::build("Notify", "MediaStatus", 1, &id, "<NotifyType>121</NotifyType>\r\n", true);
                let branch = format!("z9hG4bK{}", sip::hex_token(rand::random(), 16));
                let via = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let uri = sip::uri_of(&from).to_string();
                // In-dialog from the device: its From is the INVITE's To and vice versa.
                if let Ok(req) = sip::request(OutRequest {
                    method: Method::Message,
                    uri: &uri,
                    transport: "UDP",
                    via_host: &via,
                    branch: &branch,
                    from: to,
                    to: from,
                    call_id: &call_id,
                    cseq: 20,
                    extra: vec![],
                    content_type: Some("Application/MANSCDP+xml"),
                    body,
                }) {
                    let _ = socket.send_to(&req.to_bytes(), server).await;
                    stats2.media_status_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Yields the template's packets forever (or until `end`), rewritten for `ssrc` with continuous
/// sequence numbers and timestamps, each with its send time.
struct Pacer {
    media: Arc<MediaTemplate>,
    ssrc: u32,
    i: usize,
    loops: u32,
    seq: u16,
    start: tokio::time::Instant,
}

impl Pacer {
    fn new(media: Arc<MediaTemplate>, ssrc: u32) -> Pacer {
        Pacer { media, ssrc, i: 0, loops: 0, seq: rand::random(), start: tokio::time::Instant::now() }
    }

    fn next(&mut self) -> (tokio::time::Instant, Vec<u8>) {
        if self.i >= self.media.packets.len() {
            self.i = 0;
            self.loops += 1;
        }
        let (offset, pkt) = &self.media.packets[self.i];
        self.i += 1;
        let ts = offset.wrapping_add(self.media.span.wrapping_mul(self.loops));
        let mut p = pkt.to_vec();
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        let at = self.start + Duration::from_micros(u64::from(ts) * 1000 / 90);
        (at, p)
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_udp(
    sock: UdpSocket,
    rtcp: Option<UdpSocket>,
    target: SocketAddr,
    media: Arc<MediaTemplate>,
    ssrc: u32,
    stats: Arc<SimStats>,
    stop: CancellationToken,
    end: Option<Duration>,
) -> std::io::Result<()> {
    let mut pacer = Pacer::new(media, ssrc);
    let deadline = end.map(|d| tokio::time::Instant::now() + d);
    let mut rtcp_buf = vec![0u8; 1500];
    let mut sent = 0u32;
    loop {
        let (at, p) = pacer.next();
        if deadline.is_some_and(|d| at > d) {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => break,
                _ = stop.cancelled() => return Ok(()),
                r = async { rtcp.as_ref().expect("guarded").recv_from(&mut rtcp_buf).await }, if rtcp.is_some() => {
                    if let (Ok((n, from)), Some(r)) = (r, &rtcp) {
                        if let Some(sr) = on_rtcp_from_gateway(&rtcp_buf[..n], ssrc, &stats, sent) {
                            let _ = r.send_to(&sr, from).await;
                        }
                    }
                }
            }
        }
        if stats.media_muted.load(Ordering::Relaxed) {
            continue;
        }
        sock.send_to(&p, target).await?;
        sent = sent.wrapping_add(1);
        stats.media_packets.fetch_add(1, Ordering::Relaxed);
    }
}

async fn stream_tcp(
    sock: TcpStream,
    media: Arc<MediaTemplate>,
    ssrc: u32,
    stats: Arc<SimStats>,
    stop: CancellationToken,
    end: Option<Duration>,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut sock) = sock.into_split();
    let mut pacer = Pacer::new(media, ssrc);
    let deadline = end.map(|d| tokio::time::Instant::now() + d);
    // What the gateway writes back: RFC 4571 frames of RTCP (bounded: a frame is <= 64 KiB).
    let mut inbound: Vec<u8> = Vec::new();
    let mut rd_buf = vec![0u8; 4096];
    let mut sent = 0u32;
    let mut reading = true;
    loop {
        let (at, p) = pacer.next();
        if deadline.is_some_and(|d| at > d) {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => break,
                _ = stop.cancelled() => return Ok(()),
                r = rd.read(&mut rd_buf), if reading => match r {
                    Ok(0) | Err(_) => reading = false,
                    Ok(n) => {
                        inbound.extend_from_slice(&rd_buf[..n]);
                        while inbound.len() >= 2 && inbound.len() >= 2 + u16::from_be_bytes([inbound[0], inbound[1]]) as usize {
                            let len = u16::from_be_bytes([inbound[0], inbound[1]]) as usize;
                            let frame: Vec<u8> = inbound.drain(..2 + len).skip(2).collect();
                            if let Some(sr) = on_rtcp_from_gateway(&frame, ssrc, &stats, sent) {
                                let mut framed = (sr.len() as u16).to_be_bytes().to_vec();
                                framed.extend_from_slice(&sr);
                                sock.write_all(&framed).await?;
                            }
                        }
                    }
                },
            }
        }
        if stats.media_muted.load(Ordering::Relaxed) {
            continue;
        }
        sent = sent.wrapping_add(1);
        // RFC 4571: 2-byte length, then the packet.
        let mut framed = Vec::with_capacity(p.len() + 2);
        framed.extend_from_slice(&(p.len() as u16).to_be_bytes());
        framed.extend_from_slice(&p);
        sock.write_all(&framed).await?;
        stats.media_packets.fetch_add(1, Ordering::Relaxed);
    }
}
