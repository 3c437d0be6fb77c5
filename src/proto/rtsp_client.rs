//! RTSP 1.0 client session, sans-IO (RFC 2326): the pull side of the relay (D80, D81).
//!
//! The driver owns the sockets and the clock. It feeds server bytes into [`Reader`], hands every
//! [`Incoming::Response`] to [`Client::on_response`] and writes the requests the client returns.
//! The client walks OPTIONS -> DESCRIBE -> SETUP per track -> PLAY, answers `401` once with Digest
//! (RFC 2617, MD5, `qop=auth` or none) or Basic from the URL's `user:password`, switches TCP <->
//! UDP once when the server refuses the first transport (`461`), and keeps the session alive at
//! half its timeout (RFC 2326 12.37). Everything a server says is bounded: heads and bodies by
//! [`rtsp::MAX_HEAD`]/[`rtsp::MAX_BODY`], ids and counts clamped.
use bytes::{Buf, Bytes, BytesMut};

use crate::proto::rtsp::{self, MAX_BODY, MAX_HEAD};
use crate::proto::sip::digest;

pub const DEFAULT_PORT: u16 = 554;
/// Tracks set up per session (one video, one audio, and some slack for odd SDPs).
pub const MAX_TRACKS: usize = 4;
/// Session ids longer than this are refused (RFC 2326 3.4 asks for at least 8 octets; no bound).
pub const MAX_SESSION_ID: usize = 256;
/// Bounds on the session timeout a server announces, seconds (default 60, RFC 2326 12.37).
pub const MIN_TIMEOUT_S: u64 = 2;
pub const MAX_TIMEOUT_S: u64 = 3600;
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// Answers to unknown CSeqs ignored before the server is declared broken.
const MAX_STRAY_ANSWERS: u32 = 16;

/// The lower transport RTP comes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    /// Interleaved in the RTSP connection (`$` frames, RFC 2326 10.12).
    Tcp,
    /// A UDP port pair per track.
    Udp,
}

impl Lower {
    pub fn other(self) -> Lower {
        match self {
            Lower::Tcp => Lower::Udp,
            Lower::Udp => Lower::Tcp,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Lower::Tcp => "tcp",
            Lower::Udp => "udp",
        }
    }
}

/// Why the session failed. The driver maps these onto the pull causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0}")]
    Url(String),
    /// The server answered `status` to `method`.
    #[error("{method} answered {status} {reason}")]
    Status { method: &'static str, status: u16, reason: String },
    #[error("{0}")]
    Auth(String),
    /// The server broke the protocol (malformed or oversized answer, bad Transport ...).
    #[error("{0}")]
    Protocol(String),
    /// The server forgot our session while playing (454 to a keep-alive).
    #[error("session lost: {0}")]
    SessionLost(String),
}

/// A parsed `rtsp://[user[:password]@]host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspUrl {
    /// Host name or address, IPv6 without brackets.
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The URL without credentials: what requests carry.
    pub url: String,
}

pub fn parse_url(s: &str) -> Result<RtspUrl, ClientError> {
    let bad = |why: &str| ClientError::Url(format!("{}: {why}", redact(s)));
    let mut u = url::Url::parse(s.trim()).map_err(|e| bad(&e.to_string()))?;
    if !u.scheme().eq_ignore_ascii_case("rtsp") {
        return Err(bad("only rtsp:// is supported"));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(bad("no host")),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = u.port().unwrap_or(DEFAULT_PORT);
    let user = Some(percent_decode(u.username())).filter(|s| !s.is_empty());
    let password = u.password().map(percent_decode);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    Ok(RtspUrl { host, port, user, password, url: u.to_string() })
}

/// `s` with any `user:password@` replaced, for logs and errors.
pub fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(at)) if at > i && !s[i + 3..at].contains('/') => format!("{}***@{}", &s[..i + 3], &s[at + 1..]),
        _ => s.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One answer of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn cseq(&self) -> Option<u32> {
        self.header("CSeq").and_then(|v| v.trim().parse().ok())
    }
}

/// What the server -> client byte stream carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Response(Answer),
    /// A `$`-framed packet (RFC 2326 10.12): RTP on even channels, RTCP on odd ones by our SETUP.
    Interleaved {
        channel: u8,
        data: Bytes,
    },
    /// A request from the server (some cameras send GET_PARAMETER or ANNOUNCE); answer it with
    /// [`not_implemented`] so it does not wait.
    Request {
        method: String,
        cseq: Option<u32>,
    },
}

/// Incremental reader of the server -> client stream. Holds at most one head ([`MAX_HEAD`]), one
/// body ([`MAX_BODY`]) or one interleaved frame (64 KiB) beyond what the driver just pushed.
#[derive(Debug, Default)]
pub struct Reader {
    buf: BytesMut,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. An error leaves the
    /// stream unsynchronised: close the connection.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, ClientError> {
        while matches!(self.buf.first(), Some(b'\r' | b'\n')) {
            self.buf.advance(1);
        }
        let Some(&first) = self.buf.first() else { return Ok(None) };
        if first == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let channel = self.buf[1];
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            self.buf.advance(4);
            return Ok(Some(Incoming::Interleaved { channel, data: self.buf.split_to(len).freeze() }));
        }
        if !first.is_ascii_alphabetic() {
            return Err(ClientError::Protocol(format!("unexpected byte 0x{first:02x} between messages")));
        }
        let Some(head_end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_HEAD {
                return Err(ClientError::Protocol(format!("answer head over {MAX_HEAD} bytes")));
            }
            return Ok(None);
        };
        if head_end > MAX_HEAD {
            return Err(ClientError::Protocol(format!("answer head over {MAX_HEAD} bytes")));
        }
        let malformed = || ClientError::Protocol("malformed answer".into());
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| malformed())?;
        let mut lines = head.split("\r\n");
        let line = lines.next().ok_or_else(malformed)?;
        let mut headers = Vec::new();
        for l in lines {
            // RFC 2326 4.2 allows folded headers; no server we know sends them: refuse.
            let (k, v) = l.split_once(':').ok_or_else(malformed)?;
            let k = k.trim();
            if k.is_empty() || headers.len() >= 128 {
                return Err(malformed());
            }
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let len = match headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
            Some((_, v)) => v.parse::<usize>().map_err(|_| malformed())?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(ClientError::Protocol(format!("answer body of {len} bytes, over {MAX_BODY}")));
        }
        if self.buf.len() < head_end + 4 + len {
            return Ok(None);
        }
        let msg = if let Some(rest) = line.strip_prefix("RTSP/") {
            // "RTSP/1.0 200 OK": the reason phrase may be missing or hold spaces.
            let mut parts = rest.splitn(3, ' ');
            let _version = parts.next();
            let status = parts.next().and_then(|s| s.parse::<u16>().ok()).filter(|s| (100..1000).contains(s));
            let status = status.ok_or_else(malformed)?;
            let reason: String = parts.next().unwrap_or("").chars().take(64).collect();
            Incoming::Response(Answer { status, reason, headers, body: Bytes::new() })
        } else {
            let method: String = line.split(' ').next().unwrap_or("").chars().take(32).collect();
            let cseq =
                headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("cseq")).and_then(|(_, v)| v.trim().parse().ok());
            Incoming::Request { method, cseq }
        };
        self.buf.advance(head_end + 4);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(match msg {
            Incoming::Response(a) => Incoming::Response(Answer { body, ..a }),
            other => other,
        }))
    }
}

/// The answer to a request from the server.
pub fn not_implemented(cseq: Option<u32>) -> Vec<u8> {
    let mut s = String::from("RTSP/1.0 501 Not Implemented\r\n");
    if let Some(c) = cseq {
        s.push_str(&format!("CSeq: {c}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// How a set-up track's RTP reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackTransport {
    Tcp {
        rtp_channel: u8,
        rtcp_channel: u8,
    },
    /// `server_*` are the server's ports from its answer (`None` if it gave none: RTCP then has
    /// nowhere to go).
    Udp {
        client_rtp: u16,
        client_rtcp: u16,
        server_rtp: Option<u16>,
        server_rtcp: Option<u16>,
    },
}

/// One track the driver asked to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Absolute control URL.
    pub url: String,
    /// Filled by the SETUP answer.
    pub transport: Option<TrackTransport>,
    /// The SSRC the server announced in `Transport` (`ssrc=`), if any.
    pub ssrc: Option<u32>,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this request.
    Send(Vec<u8>),
    /// DESCRIBE answered: parse `sdp`, resolve its controls against `base`
    /// ([`crate::proto::sdp::resolve_control`]) and call [`Client::setup`].
    Described { sdp: Bytes, base: String },
    /// Bind an RTP/RTCP UDP pair for track `index`, then call [`Client::udp_ports`].
    NeedUdpPorts { index: usize },
    /// PLAY answered 200: media flows on [`Client::tracks`].
    Playing,
    /// Nothing to do.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Options,
    Describe,
    /// Waiting for the driver's tracks.
    Described,
    Setup(usize),
    Play,
    Playing,
    Teardown,
}

#[derive(Debug, Clone)]
struct Pending {
    cseq: u32,
    method: &'static str,
    uri: String,
    extra: Vec<(&'static str, String)>,
    authorized: bool,
    /// Times this request was re-sent after a 401.
    retries: u8,
    sent_ms: u64,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic(String),
    Digest { challenge: String, nc: u32 },
}

/// Counters the driver shows in its stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub requests: u64,
    pub keepalives: u64,
    /// Set when the first transport was refused (461) and the other one used.
    pub fell_back: Option<(Lower, Lower)>,
    pub stray_answers: u32,
}

/// The client side of one RTSP session (one TCP connection).
pub struct Client {
    url: RtspUrl,
    lower: Lower,
    fallback: bool,
    state: State,
    cseq: u32,
    pending: Option<Pending>,
    auth: Auth,
    cnonce: String,
    session: Option<String>,
    timeout_s: u64,
    tracks: Vec<Track>,
    aggregate: String,
    /// The server lists GET_PARAMETER in `Public`; otherwise keep alive with OPTIONS.
    get_parameter: bool,
    next_keepalive_ms: u64,
    stats: ClientStats,
    user_agent: String,
}

impl Client {
    /// `first` is the transport asked for first; with `fallback` the other one is asked for when
    /// the server refuses it. `seed` makes the Digest cnonce (the driver's randomness).
    pub fn new(url: RtspUrl, first: Lower, fallback: bool, seed: u64) -> Client {
        Client {
            aggregate: url.url.clone(),
            url,
            lower: first,
            fallback,
            state: State::Options,
            cseq: 0,
            pending: None,
            auth: Auth::None,
            cnonce: format!("{seed:016x}"),
            session: None,
            timeout_s: DEFAULT_TIMEOUT_S,
            tracks: Vec::new(),
            get_parameter: false,
            next_keepalive_ms: u64::MAX,
            stats: ClientStats::default(),
            user_agent: format!("gbgate/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn lower(&self) -> Lower {
        self.lower
    }
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }
    pub fn session_timeout_s(&self) -> u64 {
        self.timeout_s
    }
    pub fn url(&self) -> &RtspUrl {
        &self.url
    }
    /// When the request in flight was sent (the driver bounds the wait for its answer).
    pub fn pending_since_ms(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.sent_ms)
    }

    /// The first request (OPTIONS).
    pub fn start(&mut self, now_ms: u64) -> Vec<u8> {
        self.state = State::Options;
        let url = self.url.url.clone();
        self.request("OPTIONS", url, vec![], now_ms)
    }

    fn request(
        &mut self,
        method: &'static str,
        uri: String,
        extra: Vec<(&'static str, String)>,
        now_ms: u64,
    ) -> Vec<u8> {
        self.send(Pending { cseq: 0, method, uri, extra, authorized: false, retries: 0, sent_ms: now_ms })
    }

    fn send(&mut self, mut p: Pending) -> Vec<u8> {
        self.cseq = self.cseq.wrapping_add(1);
        self.stats.requests += 1;
        p.cseq = self.cseq;
        let mut s =
            format!("{} {} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: {}\r\n", p.method, p.uri, p.cseq, self.user_agent);
        p.authorized = false;
        if let Some(a) = self.authorization(p.method, &p.uri) {
            s.push_str(&format!("Authorization: {a}\r\n"));
            p.authorized = true;
        }
        if let Some(id) = &self.session {
            s.push_str(&format!("Session: {id}\r\n"));
        }
        for (k, v) in &p.extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        self.pending = Some(p);
        s.into_bytes()
    }

    fn authorization(&mut self, method: &str, uri: &str) -> Option<String> {
        match &mut self.auth {
            Auth::None => None,
            Auth::Basic(b) => Some(format!("Basic {b}")),
            Auth::Digest { challenge, nc } => {
                *nc = nc.wrapping_add(1);
                let (user, pw) = (self.url.user.as_deref()?, self.url.password.as_deref().unwrap_or(""));
                digest::answer_nc(challenge, method, uri, user, pw, &self.cnonce, *nc)
            }
        }
    }

    /// Takes the server's answer to the request in flight.
    pub fn on_response(&mut self, a: Answer, now_ms: u64) -> Result<Step, ClientError> {
        let Some(p) = self.pending.take() else {
            return self.stray();
        };
        if a.cseq().is_some_and(|c| c != p.cseq) {
            self.pending = Some(p);
            return self.stray();
        }
        if a.status == 401 {
            return self.unauthorized(&a, p, now_ms);
        }
        let method = p.method;
        let status_err =
            |a: &Answer| ClientError::Status { method, status: a.status, reason: a.reason.chars().take(64).collect() };
        match self.state {
            State::Options => {
                // A server that refuses OPTIONS may still DESCRIBE (RFC 2326 10.1 makes it optional).
                if a.status == 200 {
                    self.get_parameter = a
                        .header("Public")
                        .is_some_and(|v| v.split(',').any(|m| m.trim().eq_ignore_ascii_case("GET_PARAMETER")));
                }
                self.state = State::Describe;
                let url = self.url.url.clone();
                Ok(Step::Send(self.request("DESCRIBE", url, vec![("Accept", "application/sdp".into())], now_ms)))
            }
            State::Describe => {
                if a.status != 200 {
                    return Err(status_err(&a));
                }
                if a.body.is_empty() {
                    return Err(ClientError::Protocol("DESCRIBE answer without SDP".into()));
                }
                // RFC 2326 C.1.1: Content-Base, else Content-Location, else the request URL.
                let base = a
                    .header("Content-Base")
                    .or_else(|| a.header("Content-Location"))
                    .map(str::trim)
                    .filter(|b| b.len() > 7 && b[..7].eq_ignore_ascii_case("rtsp://") && b.len() <= 2048)
                    .unwrap_or(&p.uri)
                    .to_string();
                self.aggregate = base.clone();
                self.state = State::Described;
                Ok(Step::Described { sdp: a.body, base })
            }
            State::Setup(i) => {
                if a.status == 461 && i == 0 && self.fallback && self.stats.fell_back.is_none() {
                    // RFC 2326 12.39: the transport was refused; ask for the other one (VLC's
                    // server refuses interleaved TCP, some cameras refuse UDP).
                    let from = self.lower;
                    self.lower = from.other();
                    self.stats.fell_back = Some((from, self.lower));
                    return Ok(self.setup_step(0, now_ms));
                }
                if a.status != 200 {
                    return Err(status_err(&a));
                }
                self.take_session(&a)?;
                let t = a
                    .header("Transport")
                    .ok_or_else(|| ClientError::Protocol("SETUP answer without Transport".into()))?;
                let (tt, ssrc) = parse_transport(t, &p, self.lower)?;
                if let TrackTransport::Tcp { rtp_channel, rtcp_channel } = tt {
                    let clash = self.tracks[..i].iter().any(|t| match t.transport {
                        Some(TrackTransport::Tcp { rtp_channel: a, rtcp_channel: b }) => {
                            [a, b].contains(&rtp_channel) || [a, b].contains(&rtcp_channel)
                        }
                        _ => false,
                    });
                    if clash || rtp_channel == rtcp_channel {
                        return Err(ClientError::Protocol(format!("SETUP answer reuses interleaved channels: {t}")));
                    }
                }
                self.tracks[i].transport = Some(tt);
                self.tracks[i].ssrc = ssrc;
                if i + 1 < self.tracks.len() {
                    return Ok(self.setup_step(i + 1, now_ms));
                }
                self.state = State::Play;
                let url = self.aggregate.clone();
                Ok(Step::Send(self.request("PLAY", url, vec![("Range", "npt=0.000-".into())], now_ms)))
            }
            State::Play => {
                if a.status != 200 {
                    return Err(status_err(&a));
                }
                self.state = State::Playing;
                self.next_keepalive_ms = now_ms.saturating_add(self.keepalive_interval_ms());
                Ok(Step::Playing)
            }
            State::Playing => {
                match a.status {
                    200 => {}
                    454 => return Err(ClientError::SessionLost(format!("{} answered 454", p.method))),
                    // A server without GET_PARAMETER: OPTIONS keeps most alive (RFC 2326 12.37 leaves it open).
                    _ if p.method == "GET_PARAMETER" => self.get_parameter = false,
                    _ => {}
                }
                Ok(Step::Idle)
            }
            State::Described | State::Teardown => Ok(Step::Idle),
        }
    }

    fn stray(&mut self) -> Result<Step, ClientError> {
        self.stats.stray_answers += 1;
        if self.stats.stray_answers > MAX_STRAY_ANSWERS {
            return Err(ClientError::Protocol("too many answers to requests never sent".into()));
        }
        Ok(Step::Idle)
    }

    fn unauthorized(&mut self, a: &Answer, mut p: Pending, now_ms: u64) -> Result<Step, ClientError> {
        if self.url.user.is_none() {
            return Err(ClientError::Auth(format!("{} needs credentials and the URL has none", p.method)));
        }
        let challenges: Vec<&str> = a.headers_named("WWW-Authenticate").collect();
        let digest =
            challenges.iter().find(|c| c.trim_start().get(..6).is_some_and(|s| s.eq_ignore_ascii_case("digest")));
        let basic = challenges.iter().any(|c| c.trim_start().get(..5).is_some_and(|s| s.eq_ignore_ascii_case("basic")));
        let usable_digest = digest.filter(|c| digest::parse_challenge(c).is_some());
        // RFC 2617 3.2.1: `stale=true` means the credentials were right and the nonce old.
        let stale =
            usable_digest.is_some_and(|c| c.to_ascii_lowercase().replace([' ', '"'], "").contains("stale=true"));
        // A request that carried credentials and is challenged again (not for a stale nonce) was
        // refused: retrying would only lock the account on some cameras.
        if p.authorized && !stale || p.retries >= 2 {
            return Err(ClientError::Auth(format!("{} credentials refused", p.method)));
        }
        self.auth = match (usable_digest, basic) {
            (Some(c), _) => Auth::Digest { challenge: c.chars().take(1024).collect(), nc: 0 },
            (None, true) => {
                use base64::Engine as _;
                let pw = self.url.password.as_deref().unwrap_or("");
                let user = self.url.user.as_deref().unwrap_or("");
                Auth::Basic(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
            }
            (None, false) if digest.is_some() => {
                return Err(ClientError::Auth("server offers only an unsupported Digest algorithm".into()))
            }
            (None, false) => return Err(ClientError::Auth("401 without a Digest or Basic challenge".into())),
        };
        p.retries += 1;
        p.sent_ms = now_ms;
        Ok(Step::Send(self.send(p)))
    }

    fn take_session(&mut self, a: &Answer) -> Result<(), ClientError> {
        let Some(v) = a.header("Session") else {
            return match self.session {
                Some(_) => Ok(()),
                None => Err(ClientError::Protocol("SETUP answer without Session".into())),
            };
        };
        let mut parts = v.split(';');
        let id = parts.next().unwrap_or("").trim();
        if id.is_empty() || id.len() > MAX_SESSION_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Protocol("bad Session id".into()));
        }
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("timeout") {
                    if let Ok(t) = val.trim().parse::<u64>() {
                        self.timeout_s = t.clamp(MIN_TIMEOUT_S, MAX_TIMEOUT_S);
                    }
                }
            }
        }
        self.session = Some(id.to_string());
        Ok(())
    }

    /// The driver parsed the SDP: set up these tracks (absolute control URLs, at most
    /// [`MAX_TRACKS`]) and PLAY `aggregate` (the session-level control, resolved; `None`: the base).
    pub fn setup(&mut self, urls: Vec<String>, aggregate: Option<String>, now_ms: u64) -> Result<Step, ClientError> {
        if self.state != State::Described {
            return Err(ClientError::Protocol("setup before DESCRIBE".into()));
        }
        if urls.is_empty() {
            return Err(ClientError::Protocol("no track to set up".into()));
        }
        self.tracks = urls.into_iter().take(MAX_TRACKS).map(|url| Track { url, transport: None, ssrc: None }).collect();
        if let Some(a) = aggregate {
            self.aggregate = a;
        }
        Ok(self.setup_step(0, now_ms))
    }

    fn setup_step(&mut self, i: usize, now_ms: u64) -> Step {
        self.state = State::Setup(i);
        match self.lower {
            Lower::Tcp => {
                let ch = (2 * i) as u8;
                let spec = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", ch, ch + 1);
                let url = self.tracks[i].url.clone();
                Step::Send(self.request("SETUP", url, vec![("Transport", spec)], now_ms))
            }
            Lower::Udp => Step::NeedUdpPorts { index: i },
        }
    }

    /// The UDP pair the driver bound for track `index`: the SETUP request.
    pub fn udp_ports(&mut self, index: usize, rtp: u16, rtcp: u16, now_ms: u64) -> Result<Vec<u8>, ClientError> {
        if self.state != State::Setup(index) || self.lower != Lower::Udp {
            return Err(ClientError::Protocol("udp_ports out of turn".into()));
        }
        let spec = format!("RTP/AVP;unicast;client_port={rtp}-{rtcp}");
        let url = self.tracks[index].url.clone();
        Ok(self.request("SETUP", url, vec![("Transport", spec)], now_ms))
    }

    fn keepalive_interval_ms(&self) -> u64 {
        self.timeout_s * 1000 / 2
    }

    /// When the next keep-alive is due (`None` before PLAY).
    pub fn next_keepalive_ms(&self) -> Option<u64> {
        (self.state == State::Playing).then_some(self.next_keepalive_ms)
    }

    /// A keep-alive request if one is due and none is in flight (RFC 2326 12.37: before the
    /// session timeout; we use half of it).
    pub fn poll_keepalive(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        if self.state != State::Playing || now_ms < self.next_keepalive_ms {
            return None;
        }
        if let Some(p) = &self.pending {
            // An answer owed for a whole session timeout will not come (some servers drop
            // keep-alives they do not like); stop waiting so that the session is kept alive.
            if now_ms.saturating_sub(p.sent_ms) < self.timeout_s * 1000 {
                return None;
            }
            self.pending = None;
        }
        self.next_keepalive_ms = now_ms.saturating_add(self.keepalive_interval_ms());
        self.stats.keepalives += 1;
        let method = if self.get_parameter { "GET_PARAMETER" } else { "OPTIONS" };
        let url = self.aggregate.clone();
        Some(self.request(method, url, vec![], now_ms))
    }

    /// TEARDOWN, when a session exists.
    pub fn teardown(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        self.session.as_ref()?;
        if self.state == State::Teardown {
            return None;
        }
        self.state = State::Teardown;
        let url = self.aggregate.clone();
        Some(self.request("TEARDOWN", url, vec![], now_ms))
    }
}

/// Parses the server's `Transport` answer for the request `p` (which carried ours).
fn parse_transport(v: &str, p: &Pending, lower: Lower) -> Result<(TrackTransport, Option<u32>), ClientError> {
    let bad = || ClientError::Protocol(format!("bad Transport answer: {}", v.chars().take(200).collect::<String>()));
    // A server may list several; the first is the one it chose.
    let spec = v.split(',').next().unwrap_or("");
    let proto = spec.split(';').next().unwrap_or("").trim().to_ascii_uppercase();
    let tcp = proto.ends_with("/TCP");
    if tcp != (lower == Lower::Tcp) {
        return Err(bad());
    }
    let asked = p.extra.iter().find(|(k, _)| *k == "Transport").map(|(_, v)| v.as_str()).unwrap_or("");
    let pair = |s: &str| -> Option<(u32, Option<u32>)> {
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, Some(b.trim().parse().ok()?)),
            None => (s.trim().parse().ok()?, None),
        };
        Some((a, b))
    };
    let find = |params: &str, key: &str| -> Option<String> {
        params.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim().to_string())
        })
    };
    // RFC 2326 12.39: `ssrc` is 8 hex digits.
    let ssrc = find(spec, "ssrc").filter(|h| h.len() <= 8).and_then(|h| u32::from_str_radix(&h, 16).ok());
    if tcp {
        let (a, b) = match find(spec, "interleaved").or_else(|| find(asked, "interleaved")) {
            Some(s) => pair(&s).ok_or_else(bad)?,
            None => return Err(bad()),
        };
        let b = b.unwrap_or(a + 1);
        if a > 255 || b > 255 {
            return Err(bad());
        }
        Ok((TrackTransport::Tcp { rtp_channel: a as u8, rtcp_channel: b as u8 }, ssrc))
    } else {
        let (ca, cb) = find(asked, "client_port").and_then(|s| pair(&s)).ok_or_else(bad)?;
        let port = |x: u32| u16::try_from(x).ok().filter(|p| *p != 0);
        let (sa, sb) = match find(spec, "server_port").and_then(|s| pair(&s)) {
            Some((a, b)) => (port(a), b.and_then(port).or_else(|| port(a + 1))),
            None => (None, None),
        };
        Ok((
            TrackTransport::Udp {
                client_rtp: port(ca).ok_or_else(bad)?,
                client_rtcp: cb.and_then(port).ok_or_else(bad)?,
                server_rtp: sa,
                server_rtcp: sb,
            },
            ssrc,
        ))
    }
}

/// For errors and logs: the reason phrase the server gave, or ours.
pub fn reason_of(a: &Answer) -> &str {
    if a.reason.is_empty() {
        rtsp::reason(a.status)
    } else {
        &a.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sdp::resolve_control;

    fn answer(text: &str) -> Answer {
        let mut r = Reader::new();
        r.push(text.as_bytes());
        match r.next_message().unwrap().unwrap() {
            Incoming::Response(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn sent(step: Step) -> String {
        match step {
            Step::Send(b) => String::from_utf8(b).unwrap(),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn header<'a>(req: &'a str, name: &str) -> Option<&'a str> {
        req.lines().find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
    }

    #[test]
    fn urls_credentials_and_controls() {
        let u = parse_url("rtsp://ad%40min:p%3Ass@10.0.0.1:8554/live/ch1?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 8554));
        assert_eq!((u.user.as_deref(), u.password.as_deref()), (Some("ad@min"), Some("p:ss")));
        assert_eq!(u.url, "rtsp://10.0.0.1:8554/live/ch1?x=1");
        let v = parse_url("rtsp://[::1]/s").unwrap();
        assert_eq!((v.host.as_str(), v.port, v.user.clone()), ("::1", 554, None));
        assert!(parse_url("http://x/s").is_err());
        assert!(parse_url("rtsp://").is_err());
        assert_eq!(redact("rtsp://a:b@h/s"), "rtsp://***@h/s");
        assert_eq!(resolve_control("rtsp://h/s/", Some("trackID=1")), "rtsp://h/s/trackID=1");
        assert_eq!(resolve_control("rtsp://h/s", Some("stream=0")), "rtsp://h/s/stream=0");
        assert_eq!(resolve_control("rtsp://h/s", Some("rtsp://o/x")), "rtsp://o/x");
        assert_eq!(resolve_control("rtsp://h/s/", Some("*")), "rtsp://h/s/");
        assert_eq!(resolve_control("rtsp://h/s/", None), "rtsp://h/s/");
    }

    #[test]
    fn reader_splits_answers_interleaved_frames_and_server_requests() {
        let mut r = Reader::new();
        let mut bytes = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 3\r\n\r\nv=0".to_vec();
        bytes.extend_from_slice(&[b'$', 1, 0, 2, 0xaa, 0xbb]);
        bytes.extend_from_slice(b"\r\nGET_PARAMETER rtsp://x RTSP/1.0\r\nCSeq: 9\r\n\r\n");
        // Byte by byte: every split point must be handled.
        let mut got = Vec::new();
        for b in &bytes {
            r.push(&[*b]);
            while let Some(m) = r.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Incoming::Response(a) if a.status == 200 && &a.body[..] == b"v=0"));
        assert_eq!(got[1], Incoming::Interleaved { channel: 1, data: Bytes::from_static(&[0xaa, 0xbb]) });
        assert_eq!(got[2], Incoming::Request { method: "GET_PARAMETER".into(), cseq: Some(9) });
        assert_eq!(r.buffered(), 0);
        assert!(String::from_utf8(not_implemented(Some(9))).unwrap().contains("CSeq: 9"));
    }

    #[test]
    fn reader_bounds_heads_and_bodies() {
        let mut r = Reader::new();
        r.push(&vec![b'A'; MAX_HEAD + 10]);
        assert!(r.next_message().is_err());
        let mut r = Reader::new();
        r.push(format!("RTSP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).as_bytes());
        assert!(r.next_message().is_err());
        let mut r = Reader::new();
        r.push(b"\x00garbage");
        assert!(r.next_message().is_err());
        let mut r = Reader::new();
        r.push(b"RTSP/1.0 abc OK\r\n\r\n");
        assert!(r.next_message().is_err());
        let mut r = Reader::new();
        r.push(b"RTSP/1.0 200\r\nCSeq: 1\r\n\r\n");
        assert!(matches!(r.next_message().unwrap(), Some(Incoming::Response(a)) if a.reason.is_empty()));
    }

    /// OPTIONS, DESCRIBE (401 -> Digest), SETUP (461 -> UDP), SETUP, PLAY, keep-alive, TEARDOWN.
    #[test]
    fn full_session_with_digest_and_tcp_to_udp_fallback() {
        let url = parse_url("rtsp://user:pass@127.0.0.1:8554/s").unwrap();
        let mut c = Client::new(url, Lower::Tcp, true, 0x1234);
        let opt = String::from_utf8(c.start(0)).unwrap();
        assert!(opt.starts_with("OPTIONS rtsp://127.0.0.1:8554/s RTSP/1.0\r\nCSeq: 1\r\n"), "{opt}");
        let d = sent(
            c.on_response(answer("RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE, GET_PARAMETER\r\n\r\n"), 1)
                .unwrap(),
        );
        assert!(d.starts_with("DESCRIBE ") && header(&d, "Authorization").is_none(), "{d}");
        let ch = "Digest realm=\"r\", nonce=\"n1\", qop=\"auth\"";
        let d2 = sent(
            c.on_response(answer(&format!("RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Basic realm=\"r\"\r\nWWW-Authenticate: {ch}\r\n\r\n")), 2)
                .unwrap(),
        );
        let auth = header(&d2, "Authorization").unwrap();
        let p = digest::parse(auth).unwrap();
        assert_eq!((p.uri.as_str(), p.nc.as_deref()), ("rtsp://127.0.0.1:8554/s", Some("00000001")));
        assert!(digest::verify("DESCRIBE", "pass", &p));
        assert_eq!(header(&d2, "CSeq"), Some("3"));
        let sdp = "v=0\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=0\r\n";
        let step = c
            .on_response(
                answer(&format!(
                    "RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Base: rtsp://127.0.0.1:8554/s/\r\nContent-Length: {}\r\n\r\n{sdp}",
                    sdp.len()
                )),
                3,
            )
            .unwrap();
        let Step::Described { base, .. } = step else { panic!("{step:?}") };
        let tracks = vec![resolve_control(&base, Some("trackID=0")), resolve_control(&base, Some("trackID=1"))];
        let s = sent(c.setup(tracks, None, 4).unwrap());
        assert!(s.starts_with("SETUP rtsp://127.0.0.1:8554/s/trackID=0 "), "{s}");
        assert_eq!(header(&s, "Transport"), Some("RTP/AVP/TCP;unicast;interleaved=0-1"));
        // Every request under the nonce counts up.
        assert!(header(&s, "Authorization").unwrap().contains("nc=00000002"));
        let step = c.on_response(answer("RTSP/1.0 461 Unsupported transport\r\nCSeq: 4\r\n\r\n"), 5).unwrap();
        assert_eq!(step, Step::NeedUdpPorts { index: 0 });
        assert_eq!(c.stats().fell_back, Some((Lower::Tcp, Lower::Udp)));
        let s = String::from_utf8(c.udp_ports(0, 5000, 5001, 6).unwrap()).unwrap();
        assert_eq!(header(&s, "Transport"), Some("RTP/AVP;unicast;client_port=5000-5001"));
        let step = c
            .on_response(
                answer("RTSP/1.0 200 OK\r\nCSeq: 5\r\nSession: ABCDEF12;timeout=1000000\r\nTransport: RTP/AVP/UDP;unicast;client_port=5000-5001;server_port=6000-6001;ssrc=DEADBEEF\r\n\r\n"),
                7,
            )
            .unwrap();
        assert_eq!(step, Step::NeedUdpPorts { index: 1 });
        assert_eq!(c.session_timeout_s(), MAX_TIMEOUT_S);
        assert_eq!(
            c.tracks()[0].transport,
            Some(TrackTransport::Udp {
                client_rtp: 5000,
                client_rtcp: 5001,
                server_rtp: Some(6000),
                server_rtcp: Some(6001)
            })
        );
        assert_eq!(c.tracks()[0].ssrc, Some(0xDEADBEEF));
        let s = String::from_utf8(c.udp_ports(1, 5002, 5003, 8).unwrap()).unwrap();
        assert_eq!(header(&s, "Session"), Some("ABCDEF12"));
        let p = sent(
            c.on_response(
                answer("RTSP/1.0 200 OK\r\nCSeq: 6\r\nSession: ABCDEF12\r\nTransport: RTP/AVP;unicast;client_port=5002-5003;server_port=6002\r\n\r\n"),
                9,
            )
            .unwrap(),
        );
        assert!(p.starts_with("PLAY rtsp://127.0.0.1:8554/s/ "), "{p}");
        assert!(matches!(c.tracks()[1].transport, Some(TrackTransport::Udp { server_rtcp: Some(6003), .. })));
        // A stale answer (wrong CSeq) is ignored, not taken for the PLAY answer.
        assert_eq!(c.on_response(answer("RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"), 10).unwrap(), Step::Idle);
        assert_eq!(c.on_response(answer("RTSP/1.0 200 OK\r\nCSeq: 7\r\n\r\n"), 10).unwrap(), Step::Playing);
        let due = c.next_keepalive_ms().unwrap();
        assert_eq!(due, 10 + MAX_TIMEOUT_S * 500);
        assert!(c.poll_keepalive(due - 1).is_none());
        let k = String::from_utf8(c.poll_keepalive(due).unwrap()).unwrap();
        assert!(k.starts_with("GET_PARAMETER rtsp://127.0.0.1:8554/s/ "), "{k}");
        assert!(c.poll_keepalive(due + 10).is_none(), "one keep-alive in flight at a time");
        assert!(c.poll_keepalive(due + MAX_TIMEOUT_S * 500 + 10).is_none());
        // A server without GET_PARAMETER: the next keep-alive is OPTIONS.
        assert_eq!(
            c.on_response(answer("RTSP/1.0 501 Not Implemented\r\nCSeq: 8\r\n\r\n"), due + 1).unwrap(),
            Step::Idle
        );
        let k = String::from_utf8(c.poll_keepalive(due * 3).unwrap()).unwrap();
        assert!(k.starts_with("OPTIONS "), "{k}");
        assert!(matches!(
            c.on_response(answer("RTSP/1.0 454 Session Not Found\r\nCSeq: 9\r\n\r\n"), due * 3),
            Err(ClientError::SessionLost(_))
        ));
        let t = String::from_utf8(c.teardown(due * 3).unwrap()).unwrap();
        assert!(t.starts_with("TEARDOWN ") && header(&t, "Session") == Some("ABCDEF12"), "{t}");
        assert!(c.teardown(due * 3).is_none());
    }

    fn to_describe(c: &mut Client) -> String {
        let _ = c.start(0);
        sent(c.on_response(answer("RTSP/1.0 404 Not Found\r\nCSeq: 1\r\n\r\n"), 0).unwrap())
    }

    #[test]
    fn auth_failures_are_auth_errors() {
        // No credentials in the URL.
        let mut c = Client::new(parse_url("rtsp://h/s").unwrap(), Lower::Tcp, true, 1);
        to_describe(&mut c);
        let e = c.on_response(
            answer("RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\r\n"),
            0,
        );
        assert!(matches!(e, Err(ClientError::Auth(_))), "{e:?}");
        // Wrong credentials: challenged again after answering.
        let mut c = Client::new(parse_url("rtsp://u:bad@h/s").unwrap(), Lower::Tcp, true, 1);
        to_describe(&mut c);
        let r = sent(
            c.on_response(
                answer("RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\r\n"),
                0,
            )
            .unwrap(),
        );
        assert_eq!(header(&r, "Authorization"), Some("Basic dTpiYWQ="));
        let e = c.on_response(
            answer("RTSP/1.0 401 Unauthorized\r\nCSeq: 3\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\r\n"),
            0,
        );
        assert!(matches!(e, Err(ClientError::Auth(_))), "{e:?}");
        // A stale nonce is answered once more.
        let mut c = Client::new(parse_url("rtsp://u:p@h/s").unwrap(), Lower::Tcp, true, 1);
        to_describe(&mut c);
        let ch = "RTSP/1.0 401 Unauthorized\r\nCSeq: {}\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n\", stale=TRUE\r\n\r\n";
        let _ = sent(c.on_response(answer(&ch.replace("{}", "2")), 0).unwrap());
        let _ = sent(c.on_response(answer(&ch.replace("{}", "3")), 0).unwrap());
        assert!(matches!(c.on_response(answer(&ch.replace("{}", "4")), 0), Err(ClientError::Auth(_))));
        // Only an algorithm we do not speak.
        let mut c = Client::new(parse_url("rtsp://u:p@h/s").unwrap(), Lower::Tcp, true, 1);
        to_describe(&mut c);
        let e = c.on_response(
            answer("RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256\r\n\r\n"),
            0,
        );
        assert!(matches!(e, Err(ClientError::Auth(m)) if m.contains("algorithm")));
    }

    #[test]
    fn refusals_and_hostile_transports() {
        let described = |fallback: bool| {
            let mut c = Client::new(parse_url("rtsp://h/s").unwrap(), Lower::Tcp, fallback, 1);
            to_describe(&mut c);
            let step = c.on_response(answer("RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 3\r\n\r\nv=0"), 0).unwrap();
            assert_eq!(step, Step::Described { sdp: Bytes::from_static(b"v=0"), base: "rtsp://h/s".into() });
            let _ = sent(c.setup(vec!["rtsp://h/s/a".into(), "rtsp://h/s/b".into()], None, 0).unwrap());
            c
        };
        // Without fallback a 461 is a refusal.
        let mut c = described(false);
        let e = c.on_response(answer("RTSP/1.0 461 Unsupported Transport\r\nCSeq: 3\r\n\r\n"), 0).unwrap_err();
        assert!(matches!(e, ClientError::Status { status: 461, method: "SETUP", .. }), "{e:?}");
        // Channels out of range, reused, missing Session, wrong lower transport.
        for bad in [
            "Session: a\r\nTransport: RTP/AVP/TCP;interleaved=300-301",
            "Transport: RTP/AVP/TCP;interleaved=0-1",
            "Session: a\r\nTransport: RTP/AVP;unicast;server_port=1-2",
            "Session: \r\nTransport: RTP/AVP/TCP;interleaved=0-1",
        ] {
            let mut c = described(true);
            let r = c.on_response(answer(&format!("RTSP/1.0 200 OK\r\nCSeq: 3\r\n{bad}\r\n\r\n")), 0);
            assert!(matches!(r, Err(ClientError::Protocol(_))), "{bad}: {r:?}");
        }
        let mut c = described(true);
        let ok = "RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: a;timeout=0\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n";
        let _ = sent(c.on_response(answer(ok), 0).unwrap());
        assert_eq!(c.session_timeout_s(), MIN_TIMEOUT_S);
        let clash =
            "RTSP/1.0 200 OK\r\nCSeq: 4\r\nSession: a\r\nTransport: RTP/AVP/TCP;unicast;interleaved=1-2\r\n\r\n";
        assert!(matches!(c.on_response(answer(clash), 0), Err(ClientError::Protocol(_))));
        // Answers to nothing are bounded.
        let mut c = described(true);
        for _ in 0..MAX_STRAY_ANSWERS {
            assert_eq!(c.on_response(answer("RTSP/1.0 200 OK\r\nCSeq: 99\r\n\r\n"), 0).unwrap(), Step::Idle);
        }
        assert!(c.on_response(answer("RTSP/1.0 200 OK\r\nCSeq: 99\r\n\r\n"), 0).is_err());
    }
}
