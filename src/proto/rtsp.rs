//! RTSP 1.0 server session, sans-IO: bytes in -> requests / interleaved frames; a request ->
//! a response plus actions for the driver (start/stop playing or recording, close).
//!
//! A session is a player (DESCRIBE, SETUP, PLAY) or a publisher (ANNOUNCE, SETUP with
//! `mode=record`, RECORD; RFC 2326 10.3, 10.11, C.1): never both.
//!
//! The driver supplies what needs the outside world through [`Env`]: the tracks of a stream
//! (looked up before the request is handed in), the publish decision, UDP port binding and
//! randomness.
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::rtp_pack;
use crate::frame::{Codec, CodecConfig};
use crate::proto::rtp_depack::Depacketizer;
use crate::proto::sdp::{self, Sdp, SdpMedia};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the connection read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Request(Request),
    /// A `$`-framed interleaved packet (RTCP receiver reports from the player).
    Interleaved {
        channel: u8,
        data: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed RTSP request")]
    Malformed,
    #[error("RTSP request too large")]
    TooLarge,
}

/// Incremental parser of the client -> server byte stream.
#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held, waiting for the rest of a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After an error the
    /// stream cannot be resynchronised: answer 400 and close.
    pub fn next_input(&mut self) -> Result<Option<Input>, ParseError> {
        // Tolerate stray CR/LF between messages.
        while matches!(self.buf.first(), Some(b'\r' | b'\n')) {
            self.buf.advance(1);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let channel = self.buf[1];
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            self.buf.advance(4);
            let data = self.buf.split_to(len).freeze();
            return Ok(Some(Input::Interleaved { channel, data }));
        }
        let Some(head_end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_HEAD {
                return Err(ParseError::TooLarge);
            }
            return Ok(None);
        };
        if head_end > MAX_HEAD {
            return Err(ParseError::TooLarge);
        }
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| ParseError::Malformed)?;
        let mut lines = head.split("\r\n");
        let line = lines.next().ok_or(ParseError::Malformed)?;
        let mut parts = line.split(' ').filter(|p| !p.is_empty());
        let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseError::Malformed);
        };
        if !version.starts_with("RTSP/") || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') {
            return Err(ParseError::Malformed);
        }
        let mut headers = Vec::new();
        for l in lines {
            let (k, v) = l.split_once(':').ok_or(ParseError::Malformed)?;
            let k = k.trim();
            if k.is_empty() {
                return Err(ParseError::Malformed);
            }
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let len = match headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
            Some((_, v)) => v.parse::<usize>().map_err(|_| ParseError::Malformed)?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(ParseError::TooLarge);
        }
        if self.buf.len() < head_end + 4 + len {
            return Ok(None);
        }
        let req = Request { method: method.to_string(), uri: uri.to_string(), headers, body: Bytes::new() };
        self.buf.advance(head_end + 4);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Input::Request(Request { body, ..req })))
    }
}

/// A response, written with [`Response::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// A reason phrase other than the standard one (RFC 2326 §7.1.1 lets a server choose it):
    /// a 404 of a stream that could not be pulled says why.
    pub reason: Option<String>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: String::new(), reason: None }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Response {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("RTSP/1.0 {} {}\r\n", self.status, self.reason.as_deref().unwrap_or(reason(self.status)));
        for (k, v) in &self.headers {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        if !self.body.is_empty() {
            let _ = write!(s, "Content-Length: {}\r\n", self.body.len());
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        s.into_bytes()
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        _ => "Unknown",
    }
}

/// One track of a stream as described to players.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackDesc {
    pub codec: Codec,
    pub config: Arc<CodecConfig>,
}

impl TrackDesc {
    pub fn payload_type(&self) -> u8 {
        rtp_pack::payload_type(self.codec, &self.config)
    }
    pub fn clock_rate(&self) -> u32 {
        rtp_pack::clock_rate(self.codec, &self.config)
    }
}

/// Where one track is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackTransport {
    Tcp { rtp_channel: u8, rtcp_channel: u8 },
    Udp { client_rtp: u16, client_rtcp: u16, server_rtp: u16, server_rtcp: u16 },
}

/// A set-up track: its transport and the RTP numbering this session uses for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSetup {
    pub index: usize,
    pub desc: TrackDesc,
    pub transport: TrackTransport,
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub seq: u16,
    /// RTP timestamp of the play start (npt 0).
    pub rtptime: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Ready,
    Playing,
    Recording,
}

/// One track a publisher set up: the SDP media it announced and where its packets arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordTrack {
    /// Index of the media section in the announced SDP.
    pub index: usize,
    pub media: SdpMedia,
    /// For UDP, `server_rtp`/`server_rtcp` are the receiving ports; `client_*` where the
    /// publisher sends from.
    pub transport: TrackTransport,
}

/// Why the driver refused an ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Said in the response body (text/plain) and logged.
    pub reason: String,
}

/// What the driver must do after sending the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start (or resume) sending the set-up tracks of `stream`.
    Play {
        stream: String,
        tracks: Vec<TrackSetup>,
    },
    Pause,
    /// Start receiving the announced tracks of `stream` (the driver created it at ANNOUNCE).
    Record {
        stream: String,
        tracks: Vec<RecordTrack>,
    },
    /// Stop sending (or, for a publisher, end the stream) and forget the session.
    Teardown,
    /// Close the connection after the response.
    Close,
}

/// What the session needs from its driver.
pub trait Env {
    /// The tracks of a live stream, `None` if there is no such stream.
    fn tracks(&mut self, stream: &str) -> Option<Vec<TrackDesc>>;
    /// Binds an RTP/RTCP socket pair for track `index`; returns the server ports.
    fn bind_udp(&mut self, index: usize) -> Option<(u16, u16)>;
    fn random(&mut self) -> u32;
    /// Why `stream` has no tracks, when there is more to say than "not found" (a pull on demand
    /// that failed names its cause).
    fn why_missing(&mut self, _stream: &str) -> Option<String> {
        None
    }
    /// A publisher announced `stream` (`query`: the URI's query string, for credentials) with
    /// this description: the driver checks the publish rules and creates the stream, or refuses.
    fn announce(&mut self, stream: &str, query: &str, sdp: &Sdp) -> Result<(), Refusal> {
        let _ = (stream, query, sdp);
        Err(Refusal { status: 405, reason: "this server takes no RTSP publishers".into() })
    }
}

/// 404 for `name`, saying why when the environment knows (in the reason phrase, which players
/// log, and in a text body). The cause is one line of printable text.
fn not_found(env: &mut dyn Env, name: &str) -> Response {
    let Some(why) = env.why_missing(name) else { return Response::new(404) };
    let why: String = why.chars().map(|c| if c.is_control() { ' ' } else { c }).take(400).collect();
    let mut r = Response::new(404).header("Content-Type", "text/plain");
    r.reason = Some(format!("Not Found ({why})"));
    r.body = format!("{name}: {why}\r\n");
    r
}

/// The query string of a request URI (`key=...`, `txSecret=...&txTime=...`), without `?`.
pub fn uri_query(uri: &str) -> &str {
    let q = uri.split_once('?').map_or("", |(_, q)| q);
    q.split('#').next().unwrap_or("")
}

/// What ANNOUNCE left for SETUP and RECORD.
#[derive(Debug)]
struct Announced {
    stream: String,
    media: Vec<SdpMedia>,
    /// Which media sections a depacketizer exists for (others are set up but ignored).
    usable: Vec<bool>,
}

/// The stream name and optional track index of a request URI: `rtsp://host:port/<name>[/trackID=N]`.
pub fn parse_uri(uri: &str) -> Option<(String, Option<usize>)> {
    let rest = match uri.find("://") {
        Some(i) => {
            let after = &uri[i + 3..];
            let slash = after.find('/')?;
            &after[slash + 1..]
        }
        None => uri.strip_prefix('/')?,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = rest.trim_end_matches('/');
    let (name, track) = match rest.rsplit_once('/') {
        Some((name, last)) if last.starts_with("trackID=") => (name, last["trackID=".len()..].parse::<usize>().ok()),
        _ => match rest.strip_prefix("trackID=") {
            Some(_) => return None,
            None => (rest, None),
        },
    };
    if name.is_empty() {
        return None;
    }
    Some((name.to_string(), track))
}

/// Base URL for `Content-Base` and `RTP-Info`: the request URI without a track suffix, with `/`.
fn base_url(uri: &str) -> String {
    let u = uri.trim_end_matches('/');
    let u = match u.rsplit_once('/') {
        Some((b, last)) if last.starts_with("trackID=") => b,
        _ => u,
    };
    format!("{u}/")
}

/// One RTSP session: the state machine of RFC 2326 for a single player connection.
#[derive(Debug)]
pub struct ServerSession {
    id: String,
    timeout_secs: u64,
    state: State,
    stream: Option<String>,
    base: String,
    tracks: Vec<TrackDesc>,
    /// The stream whose tracks DESCRIBE found (reused by the following SETUP).
    described: Option<String>,
    setups: Vec<TrackSetup>,
    announced: Option<Announced>,
    record_setups: Vec<RecordTrack>,
}

pub const PUBLIC: &str =
    "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

impl ServerSession {
    pub fn new(id: String, timeout_secs: u64) -> ServerSession {
        ServerSession {
            id,
            timeout_secs,
            state: State::Init,
            stream: None,
            base: String::new(),
            tracks: Vec::new(),
            described: None,
            setups: Vec::new(),
            announced: None,
            record_setups: Vec::new(),
        }
    }

    /// The stream this session publishes (after a successful ANNOUNCE).
    pub fn publishing(&self) -> Option<&str> {
        self.announced.as_ref().map(|a| a.stream.as_str())
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn setups(&self) -> &[TrackSetup] {
        &self.setups
    }

    /// The stream a request needs looked up before [`Self::handle`] (DESCRIBE, and a SETUP
    /// that starts a session), so the driver can fetch its tracks asynchronously first.
    pub fn stream_needed(&self, req: &Request) -> Option<String> {
        if self.announced.is_some() {
            return None;
        }
        match req.method.as_str() {
            "DESCRIBE" => parse_uri(&req.uri).map(|(n, _)| n),
            "SETUP" if self.stream.is_none() => {
                parse_uri(&req.uri).map(|(n, _)| n).filter(|n| self.described.as_ref() != Some(n))
            }
            _ => None,
        }
    }

    /// The response to a request that could not be parsed.
    pub fn bad_request() -> Response {
        Response::new(400).header("Connection", "close")
    }

    /// Handles one request.
    pub fn handle(&mut self, req: &Request, env: &mut dyn Env) -> (Response, Vec<Action>) {
        let cseq = req.header("CSeq").map(str::to_string);
        let (mut resp, actions) = self.dispatch(req, env);
        let mut headers = Vec::with_capacity(resp.headers.len() + 3);
        if let Some(c) = cseq {
            headers.push(("CSeq".to_string(), c));
        }
        headers.push(("Server".to_string(), "gbgate".to_string()));
        headers.append(&mut resp.headers);
        resp.headers = headers;
        (resp, actions)
    }

    fn session_header(&self) -> String {
        format!("{};timeout={}", self.id, self.timeout_secs)
    }

    /// 454 unless the request names this session (a request without Session is let through).
    fn check_session(&self, req: &Request) -> Result<(), Response> {
        match req.header("Session") {
            Some(s) if s.split(';').next().unwrap_or("").trim() != self.id => Err(Response::new(454)),
            _ => Ok(()),
        }
    }

    fn dispatch(&mut self, req: &Request, env: &mut dyn Env) -> (Response, Vec<Action>) {
        match req.method.as_str() {
            "OPTIONS" => (Response::new(200).header("Public", PUBLIC), vec![]),
            "GET_PARAMETER" | "SET_PARAMETER" => {
                if let Err(r) = self.check_session(req) {
                    return (r, vec![]);
                }
                let mut r = Response::new(200);
                if !self.setups.is_empty() {
                    r = r.header("Session", self.session_header());
                }
                (r, vec![])
            }
            "DESCRIBE" => (self.describe(req, env), vec![]),
            "ANNOUNCE" => (self.announce(req, env), vec![]),
            "SETUP" if self.announced.is_some() => (self.setup_record(req, env), vec![]),
            "SETUP" => (self.setup(req, env), vec![]),
            "RECORD" => self.record(req),
            "PLAY" if self.announced.is_some() => {
                (Response::new(455).header("Allow", "SETUP, RECORD, TEARDOWN"), vec![])
            }
            "PLAY" => self.play(req),
            "PAUSE" => {
                if self.setups.is_empty() {
                    return (Response::new(454), vec![]);
                }
                if let Err(r) = self.check_session(req) {
                    return (r, vec![]);
                }
                if self.state == State::Init {
                    return (Response::new(455).header("Allow", "SETUP, TEARDOWN"), vec![]);
                }
                let was_playing = self.state == State::Playing;
                self.state = State::Ready;
                let r = Response::new(200).header("Session", self.session_header());
                (r, if was_playing { vec![Action::Pause] } else { vec![] })
            }
            "TEARDOWN" => {
                if let Err(r) = self.check_session(req) {
                    return (r, vec![]);
                }
                self.state = State::Init;
                self.setups.clear();
                self.stream = None;
                self.described = None;
                // A publisher's stream ends with its session; the connection may announce again.
                self.announced = None;
                self.record_setups.clear();
                (Response::new(200), vec![Action::Teardown])
            }
            "REDIRECT" => (Response::new(405).header("Allow", PUBLIC), vec![]),
            _ => (Response::new(501).header("Public", PUBLIC), vec![]),
        }
    }

    /// ANNOUNCE (RFC 2326 10.3): the publisher's SDP. The stream is created here, so a second
    /// publisher of a live name is refused before it sets anything up.
    fn announce(&mut self, req: &Request, env: &mut dyn Env) -> Response {
        if self.announced.is_some() || self.state != State::Init || !self.setups.is_empty() {
            return Response::new(455).header("Allow", "SETUP, RECORD, TEARDOWN");
        }
        let Some((name, _)) = parse_uri(&req.uri) else {
            return Response::new(404);
        };
        let media_type = |t: &str| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/sdp");
        if req.header("Content-Type").is_some_and(|t| !media_type(t)) {
            return Response::new(415);
        }
        let Ok(desc) = sdp::parse(&req.body) else {
            return text(Response::new(400), "the ANNOUNCE body is not an SDP with media");
        };
        let usable: Vec<bool> = desc.media.iter().map(|m| Depacketizer::new(m).is_ok()).collect();
        if !usable.iter().any(|u| *u) {
            let what: Vec<&str> = desc.media.iter().map(|m| m.encoding.as_str()).collect();
            return text(Response::new(415), &format!("no supported track (H264, H265, AAC, PCMA, PCMU) in {what:?}"));
        }
        if let Err(r) = env.announce(&name, uri_query(&req.uri), &desc) {
            return text(Response::new(r.status), &r.reason);
        }
        self.announced = Some(Announced { stream: name, media: desc.media, usable });
        Response::new(200)
    }

    /// SETUP of an announced track: which media section the URI names (its `a=control`).
    fn setup_record(&mut self, req: &Request, env: &mut dyn Env) -> Response {
        if !self.record_setups.is_empty() {
            if let Err(r) = self.check_session(req) {
                return r;
            }
        }
        if self.state == State::Recording {
            return Response::new(455).header("Allow", "RECORD, TEARDOWN");
        }
        let Some(a) = &self.announced else { return Response::new(455) };
        let Some(index) = record_track_index(&req.uri, &a.media) else {
            return Response::new(404);
        };
        let media = a.media[index].clone();
        let Some(spec) = req.header("Transport") else {
            return Response::new(461);
        };
        let Some(transport) = choose_transport(spec, index, env) else {
            return Response::new(461);
        };
        let reply = match transport {
            TrackTransport::Tcp { rtp_channel, rtcp_channel } => {
                format!("RTP/AVP/TCP;unicast;interleaved={rtp_channel}-{rtcp_channel};mode=record")
            }
            TrackTransport::Udp { client_rtp, client_rtcp, server_rtp, server_rtcp } => format!(
                "RTP/AVP;unicast;client_port={client_rtp}-{client_rtcp};server_port={server_rtp}-{server_rtcp};mode=record"
            ),
        };
        if let TrackTransport::Tcp { rtp_channel, .. } = transport {
            // Two tracks on one channel could not be told apart.
            if self.record_setups.iter().any(|t| {
                t.index != index
                    && matches!(t.transport, TrackTransport::Tcp { rtp_channel: c, .. } if c == rtp_channel)
            }) {
                return Response::new(461);
            }
        }
        self.record_setups.retain(|t| t.index != index);
        self.record_setups.push(RecordTrack { index, media, transport });
        self.record_setups.sort_by_key(|t| t.index);
        self.state = State::Ready;
        Response::new(200).header("Transport", reply).header("Session", self.session_header())
    }

    /// RECORD (RFC 2326 10.11): media flows from now on.
    fn record(&mut self, req: &Request) -> (Response, Vec<Action>) {
        let Some(a) = &self.announced else {
            return (Response::new(455).header("Allow", "ANNOUNCE"), vec![]);
        };
        if self.record_setups.is_empty() {
            return (Response::new(455).header("Allow", "SETUP"), vec![]);
        }
        if let Err(r) = self.check_session(req) {
            return (r, vec![]);
        }
        let r = Response::new(200).header("Session", self.session_header());
        if self.state == State::Recording {
            return (r, vec![]);
        }
        self.state = State::Recording;
        let tracks: Vec<RecordTrack> = self.record_setups.iter().filter(|t| a.usable[t.index]).cloned().collect();
        (r, vec![Action::Record { stream: a.stream.clone(), tracks }])
    }

    fn describe(&mut self, req: &Request, env: &mut dyn Env) -> Response {
        let Some((name, _)) = parse_uri(&req.uri) else {
            return Response::new(404);
        };
        let Some(tracks) = env.tracks(&name).filter(|t| !t.is_empty()) else {
            return not_found(env, &name);
        };
        let mut sdp = String::from("v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\n");
        let _ = write!(sdp, "s={name}\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=tool:gbgate\r\na=range:npt=0-\r\n");
        for (i, t) in tracks.iter().enumerate() {
            sdp.push_str(&rtp_pack::sdp_media(t.codec, &t.config, &format!("trackID={i}")));
        }
        if self.stream.is_none() {
            self.tracks = tracks;
            self.described = Some(name);
        }
        let mut r =
            Response::new(200).header("Content-Base", base_url(&req.uri)).header("Content-Type", "application/sdp");
        r.body = sdp;
        r
    }

    fn setup(&mut self, req: &Request, env: &mut dyn Env) -> Response {
        let Some((name, track)) = parse_uri(&req.uri) else {
            return Response::new(404);
        };
        if self.stream.is_some() {
            if let Err(r) = self.check_session(req) {
                return r;
            }
        }
        if self.state == State::Playing {
            return Response::new(455).header("Allow", "PLAY, PAUSE, TEARDOWN");
        }
        match &self.stream {
            Some(s) if *s != name => return Response::new(459),
            Some(_) => {}
            None => {
                if self.described.as_ref() != Some(&name) {
                    let Some(tracks) = env.tracks(&name).filter(|t| !t.is_empty()) else {
                        return not_found(env, &name);
                    };
                    self.tracks = tracks;
                }
                self.base = base_url(&req.uri);
            }
        }
        let index = match track {
            Some(i) => i,
            None if self.tracks.len() == 1 => 0,
            None => return Response::new(459),
        };
        let Some(desc) = self.tracks.get(index).cloned() else {
            return Response::new(404);
        };
        let Some(spec) = req.header("Transport") else {
            return Response::new(461);
        };
        let Some(transport) = choose_transport(spec, index, env) else {
            return Response::new(461);
        };
        let ssrc = env.random();
        let setup = TrackSetup { index, desc, transport, ssrc, seq: env.random() as u16, rtptime: env.random() };
        let reply = match transport {
            TrackTransport::Tcp { rtp_channel, rtcp_channel } => {
                format!("RTP/AVP/TCP;unicast;interleaved={rtp_channel}-{rtcp_channel};ssrc={ssrc:08X}")
            }
            TrackTransport::Udp { client_rtp, client_rtcp, server_rtp, server_rtcp } => format!(
                "RTP/AVP;unicast;client_port={client_rtp}-{client_rtcp};server_port={server_rtp}-{server_rtcp};ssrc={ssrc:08X}"
            ),
        };
        self.setups.retain(|s| s.index != index);
        self.setups.push(setup);
        self.setups.sort_by_key(|s| s.index);
        self.stream = Some(name);
        if self.state == State::Init {
            self.state = State::Ready;
        }
        Response::new(200).header("Transport", reply).header("Session", self.session_header())
    }

    fn play(&mut self, req: &Request) -> (Response, Vec<Action>) {
        if self.setups.is_empty() {
            return (Response::new(454), vec![]);
        }
        if let Err(r) = self.check_session(req) {
            return (r, vec![]);
        }
        if let Some((name, Some(_))) = parse_uri(&req.uri) {
            if self.setups.len() > 1 && Some(&name) == self.stream.as_ref() {
                return (Response::new(459), vec![]);
            }
        }
        let was = self.state;
        self.state = State::Playing;
        let info: Vec<String> = self
            .setups
            .iter()
            .map(|s| format!("url={}trackID={};seq={};rtptime={}", self.base, s.index, s.seq, s.rtptime))
            .collect();
        let r = Response::new(200)
            .header("Range", "npt=0.000-")
            .header("RTP-Info", info.join(","))
            .header("Session", self.session_header());
        if was == State::Playing {
            return (r, vec![]);
        }
        let stream = self.stream.clone().unwrap_or_default();
        (r, vec![Action::Play { stream, tracks: self.setups.clone() }])
    }
}

/// A response with a plain-text explanation in its body.
fn text(r: Response, why: &str) -> Response {
    let mut r = r.header("Content-Type", "text/plain");
    r.body = format!("{why}\r\n");
    r
}

/// The announced media section a SETUP URI names: the one whose `a=control` ends the URI
/// (`.../live/x/streamid=0`, `.../stream=1`, or the absolute control URL), else the only one.
/// ffmpeg appends the control to the whole announce URL, query string included.
fn record_track_index(uri: &str, media: &[SdpMedia]) -> Option<usize> {
    let uri = uri.trim_end_matches('/');
    let mut found = None;
    for (i, m) in media.iter().enumerate() {
        let Some(c) = m.control.as_deref().map(str::trim).filter(|c| !c.is_empty() && *c != "*") else { continue };
        let c = c.trim_end_matches('/');
        let hit =
            if c.contains("://") { uri == c } else { uri.strip_suffix(c).is_some_and(|head| head.ends_with('/')) };
        // The longest control that matches wins (`stream=1` vs `stream=11`).
        if hit && found.is_none_or(|(_, len)| c.len() > len) {
            found = Some((i, c.len()));
        }
    }
    match found {
        Some((i, _)) => Some(i),
        None if media.len() == 1 => Some(0),
        None => None,
    }
}

/// Picks the first acceptable transport of a `Transport:` header.
fn choose_transport(spec: &str, index: usize, env: &mut dyn Env) -> Option<TrackTransport> {
    for t in spec.split(',') {
        let mut params = t.split(';').map(str::trim);
        let proto = params.next().unwrap_or("").to_ascii_uppercase();
        let rest: Vec<&str> = params.collect();
        let param = |name: &str| {
            rest.iter().find_map(|p| p.split_once('=').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        };
        if rest.iter().any(|p| p.eq_ignore_ascii_case("multicast")) {
            continue;
        }
        let pair = |v: &str| -> Option<(u16, u16)> {
            match v.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => {
                    let a: u16 = v.trim().parse().ok()?;
                    Some((a, a.checked_add(1)?))
                }
            }
        };
        match proto.as_str() {
            "RTP/AVP/TCP" => {
                let (a, b) = match param("interleaved") {
                    Some(v) => {
                        let (a, b) = pair(v)?;
                        (u8::try_from(a).ok()?, u8::try_from(b).ok()?)
                    }
                    None => ((index * 2) as u8, (index * 2 + 1) as u8),
                };
                return Some(TrackTransport::Tcp { rtp_channel: a, rtcp_channel: b });
            }
            "RTP/AVP" | "RTP/AVP/UDP" => {
                let Some((a, b)) = param("client_port").and_then(pair) else { continue };
                let (sa, sb) = env.bind_udp(index)?;
                return Some(TrackTransport::Udp { client_rtp: a, client_rtcp: b, server_rtp: sa, server_rtcp: sb });
            }
            _ => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{AudioConfig, VideoConfig};

    struct TestEnv {
        n: u32,
    }
    impl Env for TestEnv {
        fn tracks(&mut self, stream: &str) -> Option<Vec<TrackDesc>> {
            (stream == "rtp/0BEBC201").then(|| {
                vec![
                    TrackDesc {
                        codec: Codec::H264,
                        config: Arc::new(CodecConfig::Video(VideoConfig {
                            sps: Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e]),
                            pps: Bytes::from_static(&[0x68, 0xce]),
                            ..Default::default()
                        })),
                    },
                    TrackDesc {
                        codec: Codec::G711A,
                        config: Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None })),
                    },
                ]
            })
        }
        fn bind_udp(&mut self, index: usize) -> Option<(u16, u16)> {
            Some((40000 + 2 * index as u16, 40001 + 2 * index as u16))
        }
        fn random(&mut self) -> u32 {
            self.n += 1;
            self.n * 1000
        }
    }

    /// A driver that lets `live/x` be published once and refuses `live/taken`.
    struct PublishEnv {
        inner: TestEnv,
        announced: Vec<(String, String, usize)>,
    }
    impl Env for PublishEnv {
        fn tracks(&mut self, s: &str) -> Option<Vec<TrackDesc>> {
            self.inner.tracks(s)
        }
        fn bind_udp(&mut self, index: usize) -> Option<(u16, u16)> {
            self.inner.bind_udp(index)
        }
        fn random(&mut self) -> u32 {
            self.inner.random()
        }
        fn announce(&mut self, stream: &str, query: &str, sdp: &Sdp) -> Result<(), Refusal> {
            if stream == "live/taken" {
                return Err(Refusal {
                    status: 403,
                    reason: "stream live/taken is already published by 10.0.0.1:5000".into(),
                });
            }
            self.announced.push((stream.into(), query.into(), sdp.media.len()));
            Ok(())
        }
    }

    const FFMPEG_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nt=0 0\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:streamid=0\r\n\
m=application 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\na=control:streamid=1\r\n\
m=audio 0 RTP/AVP 8\r\na=control:streamid=2\r\n";

    fn announce_req(uri: &str, body: &str) -> Request {
        let mut r = req("ANNOUNCE", uri, &[("CSeq", "2"), ("Content-Type", "application/sdp")]);
        r.body = Bytes::copy_from_slice(body.as_bytes());
        r
    }

    #[test]
    fn publisher_announce_setup_record_teardown() {
        let mut env = PublishEnv { inner: TestEnv { n: 0 }, announced: vec![] };
        let mut s = ServerSession::new("pub".into(), 60);
        let base = "rtsp://127.0.0.1:8554/live/x?key=k";
        let (r, _) = s.handle(&announce_req(base, FFMPEG_SDP), &mut env);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(env.announced, vec![("live/x".to_string(), "key=k".to_string(), 3)]);
        assert_eq!(s.publishing(), Some("live/x"));
        // ffmpeg appends the control to the whole URL, query included.
        let t = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")];
        let (r, _) = s.handle(&req("SETUP", &format!("{base}/streamid=0"), &t), &mut env);
        assert_eq!(r.status, 200);
        assert_eq!(r.get("Transport"), Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"));
        let (r, _) = s.handle(
            &req(
                "SETUP",
                &format!("{base}/streamid=1"),
                &[("Session", "pub"), ("Transport", "RTP/AVP/TCP;interleaved=2-3")],
            ),
            &mut env,
        );
        assert_eq!(r.status, 200);
        // Two tracks on one interleaved channel could not be told apart.
        let clash = [("Session", "pub"), ("Transport", "RTP/AVP/TCP;interleaved=0-1")];
        assert_eq!(s.handle(&req("SETUP", &format!("{base}/streamid=2"), &clash), &mut env).0.status, 461);
        let udp = [("Session", "pub"), ("Transport", "RTP/AVP/UDP;unicast;client_port=6000-6001;mode=record")];
        let (r, _) = s.handle(&req("SETUP", &format!("{base}/streamid=2"), &udp), &mut env);
        assert!(r.get("Transport").unwrap().contains("server_port=40004-40005"), "{r:?}");
        assert_eq!(s.handle(&req("SETUP", &format!("{base}/streamid=9"), &udp), &mut env).0.status, 404);
        assert_eq!(s.handle(&req("PLAY", base, &[("Session", "pub")]), &mut env).0.status, 455);
        assert_eq!(s.handle(&req("RECORD", base, &[("Session", "nope")]), &mut env).0.status, 454);
        let (r, a) = s.handle(&req("RECORD", base, &[("Session", "pub")]), &mut env);
        assert_eq!(r.status, 200);
        // The metadata track has no depacketizer: set up, not recorded.
        let [Action::Record { stream, tracks }] = &a[..] else { panic!("{a:?}") };
        assert_eq!(stream, "live/x");
        assert_eq!(tracks.iter().map(|t| t.index).collect::<Vec<_>>(), vec![0, 2]);
        assert!(matches!(tracks[1].transport, TrackTransport::Udp { client_rtp: 6000, server_rtp: 40004, .. }));
        assert_eq!(s.state(), State::Recording);
        assert_eq!(s.handle(&req("SETUP", &format!("{base}/streamid=0"), &t), &mut env).0.status, 455);
        assert_eq!(s.handle(&announce_req(base, FFMPEG_SDP), &mut env).0.status, 455);
        let (r, a) = s.handle(&req("TEARDOWN", base, &[("Session", "pub")]), &mut env);
        assert_eq!((r.status, a), (200, vec![Action::Teardown]));
        assert_eq!(s.publishing(), None);
    }

    #[test]
    fn announce_refusals() {
        let mut env = PublishEnv { inner: TestEnv { n: 0 }, announced: vec![] };
        let mut s = ServerSession::new("pub".into(), 60);
        let (r, _) = s.handle(&announce_req("rtsp://h/live/taken", FFMPEG_SDP), &mut env);
        assert_eq!(r.status, 403);
        assert!(r.body.contains("already published by 10.0.0.1:5000"), "{r:?}");
        assert_eq!(s.handle(&announce_req("rtsp://h/live/x", "v=0\r\n"), &mut env).0.status, 400);
        let only_jpeg = "m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n";
        assert_eq!(s.handle(&announce_req("rtsp://h/live/x", only_jpeg), &mut env).0.status, 415);
        let mut r = announce_req("rtsp://h/live/x", FFMPEG_SDP);
        r.headers[1].1 = "text/plain".into();
        assert_eq!(s.handle(&r, &mut env).0.status, 415);
        r.headers[1].1 = "Application/SDP; charset=utf-8".into();
        let mut other = ServerSession::new("p2".into(), 60);
        assert_eq!(other.handle(&r, &mut env).0.status, 200);
        env.announced.clear();
        assert_eq!(s.handle(&req("RECORD", "rtsp://h/live/x", &[]), &mut env).0.status, 455);
        assert!(env.announced.is_empty());
        // A driver without publishing support (the default) refuses with 405.
        let mut plain = TestEnv { n: 0 };
        assert_eq!(s.handle(&announce_req("rtsp://h/live/x", FFMPEG_SDP), &mut plain).0.status, 405);
    }

    const URL: &str = "rtsp://127.0.0.1:8554/rtp/0BEBC201";

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            uri: uri.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn uri_parsing() {
        assert_eq!(parse_uri(URL), Some(("rtp/0BEBC201".into(), None)));
        assert_eq!(parse_uri(&format!("{URL}/trackID=1")), Some(("rtp/0BEBC201".into(), Some(1))));
        assert_eq!(parse_uri(&format!("{URL}/")), Some(("rtp/0BEBC201".into(), None)));
        assert_eq!(parse_uri("rtsp://h/"), None);
        assert_eq!(parse_uri("*"), None);
        assert_eq!(base_url(&format!("{URL}/trackID=1")), format!("{URL}/"));
    }

    #[test]
    fn full_sequence_tcp() {
        let mut env = TestEnv { n: 0 };
        let mut s = ServerSession::new("abc".into(), 60);
        let (r, _) = s.handle(&req("OPTIONS", URL, &[("CSeq", "1")]), &mut env);
        assert_eq!((r.status, r.get("CSeq")), (200, Some("1")));
        let (r, _) = s.handle(&req("DESCRIBE", URL, &[("CSeq", "2")]), &mut env);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("sprop-parameter-sets=Z0LAHg==,aM4="), "{}", r.body);
        assert!(r.body.contains("a=rtpmap:8 PCMA/8000"));
        let (r, _) = s.handle(
            &req(
                "SETUP",
                &format!("{URL}/trackID=0"),
                &[("CSeq", "3"), ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            ),
            &mut env,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.get("Session"), Some("abc;timeout=60"));
        assert!(r.get("Transport").unwrap().starts_with("RTP/AVP/TCP;unicast;interleaved=0-1;ssrc="));
        let (r, _) = s.handle(
            &req(
                "SETUP",
                &format!("{URL}/trackID=1"),
                &[("CSeq", "4"), ("Session", "abc"), ("Transport", "RTP/AVP;unicast;client_port=5000-5001")],
            ),
            &mut env,
        );
        assert_eq!(r.status, 200);
        assert!(r.get("Transport").unwrap().contains("server_port=40002-40003"));
        let (r, _) = s.handle(&req("PLAY", URL, &[("CSeq", "5"), ("Session", "zzz")]), &mut env);
        assert_eq!(r.status, 454);
        let (r, a) = s.handle(&req("PLAY", URL, &[("CSeq", "5"), ("Session", "abc")]), &mut env);
        assert_eq!(r.status, 200);
        assert!(r.get("RTP-Info").unwrap().contains(&format!("url={URL}/trackID=0;seq=")));
        assert!(matches!(&a[..], [Action::Play { tracks, .. }] if tracks.len() == 2));
        let (r, _) = s.handle(&req("SETUP", &format!("{URL}/trackID=0"), &[("Session", "abc")]), &mut env);
        assert_eq!(r.status, 455);
        let (r, a) = s.handle(&req("PAUSE", URL, &[("Session", "abc")]), &mut env);
        assert_eq!((r.status, a), (200, vec![Action::Pause]));
        let (r, _) = s.handle(&req("GET_PARAMETER", URL, &[("Session", "abc")]), &mut env);
        assert_eq!(r.status, 200);
        let (r, a) = s.handle(&req("TEARDOWN", URL, &[("Session", "abc")]), &mut env);
        assert_eq!((r.status, a), (200, vec![Action::Teardown]));
        let (r, _) = s.handle(&req("PLAY", URL, &[]), &mut env);
        assert_eq!(r.status, 454);
    }

    #[test]
    fn errors() {
        let mut env = TestEnv { n: 0 };
        let mut s = ServerSession::new("abc".into(), 60);
        assert_eq!(s.handle(&req("DESCRIBE", "rtsp://h/nope", &[]), &mut env).0.status, 404);
        assert_eq!(s.handle(&req("SETUP", URL, &[("Transport", "RTP/AVP/TCP")]), &mut env).0.status, 459);
        let t = [("Transport", "RAW/RAW/UDP;unicast")];
        assert_eq!(s.handle(&req("SETUP", &format!("{URL}/trackID=0"), &t), &mut env).0.status, 461);
        assert_eq!(s.handle(&req("SETUP", &format!("{URL}/trackID=9"), &t), &mut env).0.status, 404);
        assert_eq!(s.handle(&req("PAUSE", URL, &[]), &mut env).0.status, 454);
        assert_eq!(s.handle(&req("FOO", URL, &[]), &mut env).0.status, 501);
    }

    const STREAM: &[u8] = b"OPTIONS rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\n\r\n$\x01\x00\x03abcSET_PARAMETER rtsp://h/a RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 5\r\n\r\nhello\r\nTEARDOWN rtsp://h/a RTSP/1.0\r\nCSeq: 3\r\n\r\n";

    fn parse_all(chunks: &[&[u8]]) -> Vec<Input> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            while let Some(i) = p.next_input().unwrap() {
                out.push(i);
            }
        }
        out
    }

    #[test]
    fn every_split_point_parses_the_same() {
        let whole = parse_all(&[STREAM]);
        assert_eq!(whole.len(), 4);
        assert!(matches!(&whole[1], Input::Interleaved { channel: 1, data } if &data[..] == b"abc"));
        assert!(matches!(&whole[2], Input::Request(r) if &r.body[..] == b"hello"));
        for i in 0..=STREAM.len() {
            assert_eq!(parse_all(&[&STREAM[..i], &STREAM[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"OPTIONS rtsp://h/a HTTP/1.1 x\r\n\r\n",
            b"OPTIONS * RTSP/1.0\r\nnocolon\r\n\r\n",
            b"OPTIONS * RTSP/1.0\r\nContent-Length: -1\r\n\r\n",
            b"OPTIONS * RTSP/1.0\r\nContent-Length: 99999999\r\n\r\n",
            b"\xff\xfe RTSP/1.0\r\n\r\n",
        ] {
            let mut p = Parser::new();
            p.push(bad);
            assert!(p.next_input().is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut p = Parser::new();
        p.push(&vec![b'A'; MAX_HEAD + 10]);
        assert_eq!(p.next_input(), Err(ParseError::TooLarge));
        assert!(ServerSession::bad_request().to_bytes().starts_with(b"RTSP/1.0 400 Bad Request\r\n"));
    }
}
