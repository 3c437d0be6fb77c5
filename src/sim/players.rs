//! A load of RTSP (TCP interleaved) or RTMP players: `gbgate players URL --count N`.
//!
//! Each player does OPTIONS, DESCRIBE, SETUP (every track, interleaved), PLAY, then reads `$`
//! frames and counts video frames (RTP marker bits on the first track's channel). It measures the
//! time from sending PLAY to the first video RTP packet, and whether that packet belongs to a
//! keyframe. `stall` players stop reading after PLAY, to show they do not slow the others.
//!
//! With an `rtmp://host:port/app/key` URL each player handshakes, connects to `app` and plays
//! `key`; every video message that is not a sequence header (or other non-frame packet) is one
//! frame, and the time is measured from the play request to the first video keyframe.
//!
//! With an `http://host:port/<stream>.flv` URL each player sends one GET and reads the FLV byte
//! stream (chunked or not): frames are counted as for RTMP, and the time runs from the request to
//! the first video keyframe.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult};

use crate::proto::rtmp_guard::RtmpCommandGuard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest interval between an RTSP player's GET_PARAMETER keepalives (a third of the session
/// timeout the server announces, when shorter).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Between two measured joins: the previous connection's teardown is over on the server.
const JOIN_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct PlayersOptions {
    pub url: String,
    pub count: usize,
    pub duration: Duration,
    /// How many of the players stop reading right after PLAY.
    pub stall: usize,
}

/// What one reading player saw.
#[derive(Debug, Clone, Default)]
pub struct PlayerResult {
    pub video_frames: u64,
    pub video_packets: u64,
    /// Video RTP sequence numbers skipped (packets this player never got).
    pub video_seq_gaps: u64,
    /// RTMP only: video messages whose timestamp went backwards.
    pub video_ts_regressions: u64,
    pub audio_packets: u64,
    pub bytes: u64,
    /// From sending PLAY to the first video RTP packet (RTMP: to the first video keyframe).
    pub first_video: Option<Duration>,
    /// The first video packet carries (part of) an IDR/IRAP picture or parameter sets (RTMP: the
    /// first video frame after the sequence header is a keyframe).
    pub first_is_key: bool,
    /// From starting the TCP connect to the first video packet (RTMP, HTTP-FLV: keyframe): the
    /// whole join as a user sees it (connect, DESCRIBE, SETUPs, PLAY / handshake, connect, play).
    pub join: Option<Duration>,
    /// RTSP: from sending DESCRIBE to its complete answer.
    pub describe: Option<Duration>,
    /// The connection was closed by the server before the end of the run.
    pub closed_early: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PlayersReport {
    pub players: Vec<PlayerResult>,
    /// Stalled players the server disconnected before the end of the run.
    pub stalled_disconnected: usize,
    pub stalled: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlayersError {
    #[error("bad URL {0:?} (want rtsp://ip:port/path, rtmp://ip:port/app/key or http://ip:port/<stream>.flv)")]
    BadUrl(String),
}

/// What the players play.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Rtsp {
        url: String,
    },
    Rtmp {
        app: String,
        key: String,
        tc_url: String,
    },
    /// HTTP-FLV: the request path (with its query).
    HttpFlv {
        path: String,
    },
}

fn parse_url(url: &str) -> Result<(SocketAddr, Target), PlayersError> {
    let bad = || PlayersError::BadUrl(url.into());
    if let Some(rest) = url.strip_prefix("http://") {
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let addr: SocketAddr = host.parse().map_err(|_| bad())?;
        if !path.split('?').next().unwrap_or("").ends_with(".flv") {
            return Err(bad());
        }
        return Ok((addr, Target::HttpFlv { path: format!("/{path}") }));
    }
    let (rest, rtmp) = match (url.strip_prefix("rtsp://"), url.strip_prefix("rtmp://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(bad()),
    };
    let (host, path) = rest.split_once('/').ok_or_else(bad)?;
    let addr: SocketAddr = host.parse().map_err(|_| bad())?;
    if !rtmp {
        return Ok((addr, Target::Rtsp { url: url.to_string() }));
    }
    let (app, key) = path.split_once('/').ok_or_else(bad)?;
    if app.is_empty() || key.is_empty() {
        return Err(bad());
    }
    Ok((addr, Target::Rtmp { app: app.into(), key: key.into(), tc_url: format!("rtmp://{host}/{app}") }))
}

/// One RTSP exchange over the connection: sends `request`, returns (status, headers+body text).
pub(crate) async fn exchange(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: String,
) -> Result<(u16, String), String> {
    sock.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    loop {
        // Skip interleaved data that may precede the response (after PLAY).
        while buf.first() == Some(&b'$') && buf.len() >= 4 {
            let n = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < 4 + n {
                break;
            }
            buf.drain(..4 + n);
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Ok((status, format!("{head}\r\n\r\n{body}")));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the RTSP exchange".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Track controls from an SDP, in order, and whether the first is video.
pub(crate) fn sdp_tracks(sdp: &str, base: &str) -> Vec<(String, bool)> {
    let mut tracks = Vec::new();
    let mut kind_video = false;
    let mut in_media = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_media = true;
            kind_video = m.starts_with("video");
        } else if let (true, Some(c)) = (in_media, line.strip_prefix("a=control:")) {
            let url =
                if c.starts_with("rtsp://") { c.to_string() } else { format!("{}/{}", base.trim_end_matches('/'), c) };
            tracks.push((url, kind_video));
        }
    }
    tracks
}

/// Whether an RTP payload starts (or is a fragment of) a keyframe / parameter sets.
fn is_key_payload(payload: &[u8], hevc: bool) -> bool {
    let Some(&b0) = payload.first() else { return false };
    if hevc {
        let t = (b0 >> 1) & 0x3f;
        let inner = match t {
            49 => payload.get(2).map(|b| b & 0x3f),
            48 => payload.get(4).map(|b| (b >> 1) & 0x3f),
            _ => Some(t),
        };
        inner.is_some_and(|t| (16..=23).contains(&t) || (32..=34).contains(&t))
    } else {
        let t = b0 & 0x1f;
        let inner = match t {
            28 => payload.get(1).map(|b| b & 0x1f),
            24 => payload.get(3).map(|b| b & 0x1f),
            _ => Some(t),
        };
        inner.is_some_and(|t| t == 5 || t == 7 || t == 8)
    }
}

async fn connect(addr: SocketAddr, stall: bool) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if stall {
        // A stalled player with a small window, like a slow client on a thin link, so the
        // server feels the back-pressure within seconds instead of after megabytes.
        socket.set_recv_buffer_size(16 * 1024)?;
    }
    let sock = socket.connect(addr).await?;
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

/// Holds a stalled player's connection open without reading until `deadline`, then drains it:
/// true if the server had disconnected it (EOF once the kernel buffers are read); one that did
/// not keeps streaming.
async fn stalled_until(sock: &mut TcpStream, deadline: Instant) -> bool {
    tokio::time::sleep_until(deadline.into()).await;
    let drain = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), drain).await.unwrap_or(false)
}

async fn run_player(addr: SocketAddr, url: String, duration: Duration, stall: bool, join_only: bool) -> PlayerResult {
    let mut r = PlayerResult::default();
    let started = Instant::now();
    let deadline = started + duration;
    let mut sock = match connect(addr, stall).await {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(format!("connect: {e}"));
            return r;
        }
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut cseq = 0;
    let mut req = |method: &str, url: &str, extra: &str| {
        cseq += 1;
        format!("{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\nUser-Agent: gbgate-players\r\n{extra}\r\n")
    };
    let describe_sent = Instant::now();
    let sdp = match exchange(&mut sock, &mut buf, req("DESCRIBE", &url, "Accept: application/sdp\r\n")).await {
        Ok((200, text)) => {
            r.describe = Some(describe_sent.elapsed());
            text
        }
        Ok((status, _)) => {
            r.error = Some(format!("DESCRIBE answered {status}"));
            return r;
        }
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let hevc = sdp.contains("H265/90000");
    let tracks = sdp_tracks(&sdp, &url);
    let mut session = String::new();
    let mut keepalive = KEEPALIVE;
    let mut video_channel = None;
    for (i, (control, is_video)) in tracks.iter().enumerate() {
        let ch = 2 * i;
        let mut extra = format!("Transport: RTP/AVP/TCP;unicast;interleaved={}-{}\r\n", ch, ch + 1);
        if !session.is_empty() {
            extra.push_str(&format!("Session: {session}\r\n"));
        }
        match exchange(&mut sock, &mut buf, req("SETUP", control, &extra)).await {
            Ok((200, text)) => {
                if session.is_empty() {
                    let value = header(&text, "session").unwrap_or("");
                    session = value.split(';').next().unwrap_or("").to_string();
                    // `Session: id;timeout=60`: keep alive three times per timeout.
                    if let Some(t) =
                        value.split(';').find_map(|p| p.trim().strip_prefix("timeout=")?.parse::<u64>().ok())
                    {
                        keepalive = Duration::from_secs(t.max(1)).div_f64(3.0).min(KEEPALIVE);
                    }
                }
                if *is_video && video_channel.is_none() {
                    video_channel = Some(ch as u8);
                }
            }
            Ok((status, _)) => {
                r.error = Some(format!("SETUP answered {status}"));
                return r;
            }
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        }
    }
    let play_sent = Instant::now();
    match exchange(&mut sock, &mut buf, req("PLAY", &url, &format!("Session: {session}\r\nRange: npt=0.000-\r\n")))
        .await
    {
        Ok((200, _)) => {}
        Ok((status, _)) => {
            r.error = Some(format!("PLAY answered {status}"));
            return r;
        }
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    }
    if stall {
        r.closed_early = stalled_until(&mut sock, deadline).await;
        return r;
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut last_seq: Option<u16> = None;
    // Like a real player, keep the session alive (RFC 2326 12.37: a session with no request for
    // its timeout, 60 s by default, is closed by the server).
    let mut next_keepalive = Instant::now() + keepalive;
    loop {
        if Instant::now() >= next_keepalive {
            next_keepalive = Instant::now() + keepalive;
            let ka = req("GET_PARAMETER", &url, &format!("Session: {session}\r\n"));
            if let Err(e) = sock.write_all(ka.as_bytes()).await {
                r.closed_early = true;
                r.error = Some(e.to_string());
                break;
            }
        }
        // Parse complete interleaved frames.
        let mut i = 0;
        while buf.len() >= i + 4 {
            if buf[i] != b'$' {
                // An RTSP response (e.g. to nothing) or junk: skip to the next '$'.
                match buf[i..].iter().position(|b| *b == b'$') {
                    Some(p) => {
                        i += p;
                        continue;
                    }
                    None => {
                        i = buf.len();
                        break;
                    }
                }
            }
            let ch = buf[i + 1];
            let n = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
            if buf.len() < i + 4 + n {
                break;
            }
            let pkt = &buf[i + 4..i + 4 + n];
            r.bytes += n as u64;
            if Some(ch) == video_channel && n >= 12 {
                r.video_packets += 1;
                let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
                if let Some(last) = last_seq {
                    r.video_seq_gaps += u64::from(seq.wrapping_sub(last).wrapping_sub(1));
                }
                last_seq = Some(seq);
                let cc = (pkt[0] & 0x0f) as usize;
                if r.first_video.is_none() {
                    r.first_video = Some(play_sent.elapsed());
                    r.join = Some(started.elapsed());
                    r.first_is_key = pkt.get(12 + 4 * cc..).is_some_and(|p| is_key_payload(p, hevc));
                }
                if pkt[1] & 0x80 != 0 {
                    r.video_frames += 1;
                }
            } else if ch % 2 == 0 && n >= 12 {
                r.audio_packets += 1;
            }
            i += 4 + n;
        }
        buf.drain(..i);
        let now = Instant::now();
        if now >= deadline || (join_only && r.first_video.is_some()) {
            break;
        }
        let wake = deadline.min(next_keepalive.max(now));
        match tokio::time::timeout(wake - now, sock.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                r.closed_early = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                r.closed_early = true;
                r.error = Some(e.to_string());
                break;
            }
            Err(_) if Instant::now() < deadline => {}
            Err(_) => break,
        }
    }
    let teardown = req("TEARDOWN", &url, &format!("Session: {session}\r\n"));
    let _ = sock.write_all(teardown.as_bytes()).await;
    r
}

/// What an FLV video tag body is: `None` for a sequence header or another non-frame packet,
/// `Some(keyframe)` for a coded frame. Handles legacy (codec id in the low nibble) and enhanced
/// RTMP (0x80 flag, frame type in bits 4-6, packet type in the low nibble).
fn flv_video_frame(data: &[u8]) -> Option<bool> {
    let b0 = *data.first()?;
    if b0 & 0x80 != 0 {
        let key = (b0 >> 4) & 0x07 == 1;
        // 1 CodedFrames, 3 CodedFramesX; 0 SequenceStart, 2 SequenceEnd, 4 Metadata, 5 MPEG2TS.
        return matches!(b0 & 0x0f, 1 | 3).then_some(key);
    }
    let key = b0 >> 4 == 1;
    match b0 & 0x0f {
        // AVC / HEVC (legacy 12): AVCPacketType 0 = sequence header, 1 = NALUs, 2 = end.
        7 | 12 => (data.get(1) == Some(&1)).then_some(key),
        _ => Some(key),
    }
}

fn rtmp_input(
    session: &mut ClientSession,
    guard: &mut RtmpCommandGuard,
    bytes: &[u8],
) -> Result<Vec<ClientSessionResult>, String> {
    crate::client::rtmp::handle_input(session, guard, bytes).map_err(|e| e.to_string())
}

/// Writes the outbound bytes of `results` and returns their events.
async fn rtmp_send(sock: &mut TcpStream, results: Vec<ClientSessionResult>) -> Result<Vec<ClientSessionEvent>, String> {
    let (bytes, events) = crate::client::rtmp::split_results(results);
    if !bytes.is_empty() {
        sock.write_all(&bytes).await.map_err(|e| e.to_string())?;
    }
    Ok(events)
}

/// One read during the RTMP set-up, bounded by `deadline`.
async fn setup_read(sock: &mut TcpStream, chunk: &mut [u8], deadline: Instant) -> Result<usize, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, sock.read(chunk)).await {
        Ok(Ok(0)) => Err("connection closed during the RTMP set-up".to_string()),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("RTMP set-up timed out".to_string()),
    }
}

/// Handshake, connect and play request; returns the session, the time the play request was
/// sent and the events raised so far (which may already include media).
async fn rtmp_start(
    sock: &mut TcpStream,
    app: &str,
    key: &str,
    tc_url: &str,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<(ClientSession, RtmpCommandGuard, Instant, Vec<ClientSessionEvent>), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let leftover = crate::client::rtmp::handshake(sock, left).await.map_err(|e| e.to_string())?;
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(tc_url.to_string());
    let (mut session, results) = ClientSession::new(config).map_err(|e| format!("RTMP: {e:?}"))?;
    let mut guard = RtmpCommandGuard::default();
    let mut pending = vec![results];
    if !leftover.is_empty() {
        pending.push(rtmp_input(&mut session, &mut guard, &leftover)?);
    }
    pending.push(vec![session.request_connection(app.to_string()).map_err(|e| format!("RTMP: {e:?}"))?]);
    let mut play_sent = None;
    let mut after_play = Vec::new();
    loop {
        for results in std::mem::take(&mut pending) {
            for e in rtmp_send(sock, results).await? {
                match e {
                    ClientSessionEvent::ConnectionRequestAccepted if play_sent.is_none() => {
                        let req = session.request_playback(key.to_string()).map_err(|e| format!("RTMP: {e:?}"))?;
                        play_sent = Some(Instant::now());
                        pending.push(vec![req]);
                    }
                    ClientSessionEvent::ConnectionRequestRejected { description } => {
                        return Err(format!("connect rejected: {description}"));
                    }
                    e if play_sent.is_some() => after_play.push(e),
                    _ => {}
                }
            }
        }
        if !pending.is_empty() {
            continue;
        }
        if let Some(t) = play_sent {
            return Ok((session, guard, t, after_play));
        }
        let n = setup_read(sock, chunk, deadline).await?;
        pending.push(rtmp_input(&mut session, &mut guard, &chunk[..n])?);
    }
}

struct RtmpCount {
    started: Instant,
    play_sent: Instant,
    first_frame_seen: bool,
    last_ts: Option<u32>,
}

impl RtmpCount {
    fn event(&mut self, r: &mut PlayerResult, e: ClientSessionEvent) -> Result<(), String> {
        match e {
            ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                r.video_packets += 1;
                r.bytes += data.len() as u64;
                if let Some(key) = flv_video_frame(&data) {
                    r.video_frames += 1;
                    if !self.first_frame_seen {
                        self.first_frame_seen = true;
                        r.first_is_key = key;
                    }
                    if key && r.first_video.is_none() {
                        r.first_video = Some(self.play_sent.elapsed());
                        r.join = Some(self.started.elapsed());
                    }
                    if self.last_ts.is_some_and(|l| timestamp.value < l) {
                        r.video_ts_regressions += 1;
                    }
                    self.last_ts = Some(timestamp.value);
                }
            }
            ClientSessionEvent::AudioDataReceived { data, .. } => {
                r.audio_packets += 1;
                r.bytes += data.len() as u64;
            }
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                return Err(format!("play rejected: {description}"));
            }
            _ => {}
        }
        Ok(())
    }
}

async fn run_rtmp_player(
    addr: SocketAddr,
    app: String,
    key: String,
    tc_url: String,
    duration: Duration,
    stall: bool,
    join_only: bool,
) -> PlayerResult {
    let mut r = PlayerResult::default();
    let started = Instant::now();
    let deadline = started + duration;
    let mut sock = match connect(addr, stall).await {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(format!("connect: {e}"));
            return r;
        }
    };
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut session, mut guard, play_sent, events) =
        match rtmp_start(&mut sock, &app, &key, &tc_url, &mut chunk, deadline).await {
            Ok(s) => s,
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        };
    if stall {
        r.closed_early = stalled_until(&mut sock, deadline).await;
        return r;
    }
    let mut count = RtmpCount { started, play_sent, first_frame_seen: false, last_ts: None };
    for e in events {
        if let Err(e) = count.event(&mut r, e) {
            r.error = Some(e);
            return r;
        }
    }
    loop {
        let now = Instant::now();
        if now >= deadline || (join_only && r.first_video.is_some()) {
            break;
        }
        let n = match tokio::time::timeout(deadline - now, sock.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                r.closed_early = true;
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                r.closed_early = true;
                r.error = Some(e.to_string());
                break;
            }
            Err(_) => break,
        };
        let step = async {
            let results = rtmp_input(&mut session, &mut guard, &chunk[..n])?;
            for e in rtmp_send(&mut sock, results).await? {
                count.event(&mut r, e)?;
            }
            Ok::<(), String>(())
        };
        if let Err(e) = step.await {
            r.error = Some(e);
            break;
        }
    }
    r
}

/// Incremental reader of an HTTP-FLV response: the head, then the body (de-chunked when chunked),
/// then FLV tags.
#[derive(Default)]
struct FlvReader {
    raw: Vec<u8>,
    head_done: bool,
    chunked: bool,
    /// Bytes left in the current chunk (chunked bodies).
    chunk_left: usize,
    body: Vec<u8>,
    /// The 13-byte file header was consumed.
    file_header: bool,
}

/// One FLV tag: type, timestamp (ms), body.
type FlvTag = (u8, u32, Vec<u8>);

impl FlvReader {
    /// Feeds bytes; returns the complete tags, or an error for a refused request or bad framing.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<FlvTag>, String> {
        self.raw.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else { return Ok(Vec::new()) };
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            let status = head.split_whitespace().nth(1).unwrap_or("");
            if status != "200" {
                return Err(format!("HTTP {status}"));
            }
            self.chunked = header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        if !self.chunked {
            self.body.append(&mut self.raw);
        } else {
            loop {
                if self.chunk_left > 0 {
                    let n = self.chunk_left.min(self.raw.len());
                    self.body.extend_from_slice(&self.raw[..n]);
                    self.raw.drain(..n);
                    self.chunk_left -= n;
                    if self.chunk_left > 0 {
                        break;
                    }
                    // The chunk's trailing CRLF is consumed with the next size line.
                }
                let start = usize::from(self.raw.starts_with(b"\r\n")) * 2;
                let Some(eol) = find(&self.raw[start..], b"\r\n") else { break };
                let line = std::str::from_utf8(&self.raw[start..start + eol]).map_err(|_| "bad chunk size")?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                self.raw.drain(..start + eol + 2);
                if size == 0 {
                    break;
                }
                self.chunk_left = size;
            }
        }
        if !self.file_header {
            if self.body.len() < 13 {
                return Ok(Vec::new());
            }
            if &self.body[..3] != b"FLV" {
                return Err("not FLV".into());
            }
            self.body.drain(..13);
            self.file_header = true;
        }
        let mut tags = Vec::new();
        let mut i = 0;
        while self.body.len() >= i + 11 {
            let b = &self.body[i..];
            let size = u32::from_be_bytes([0, b[1], b[2], b[3]]) as usize;
            if b.len() < 11 + size + 4 {
                break;
            }
            let ts = u32::from_be_bytes([b[7], b[4], b[5], b[6]]);
            tags.push((b[0], ts, b[11..11 + size].to_vec()));
            i += 11 + size + 4;
        }
        self.body.drain(..i);
        Ok(tags)
    }
}

async fn run_flv_player(
    addr: SocketAddr,
    path: String,
    duration: Duration,
    stall: bool,
    join_only: bool,
) -> PlayerResult {
    let mut r = PlayerResult::default();
    let started = Instant::now();
    let deadline = started + duration;
    let mut sock = match connect(addr, stall).await {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(format!("connect: {e}"));
            return r;
        }
    };
    let asked = Instant::now();
    if let Err(e) = sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await {
        r.error = Some(format!("request: {e}"));
        return r;
    }
    if stall {
        r.closed_early = stalled_until(&mut sock, deadline).await;
        return r;
    }
    let mut reader = FlvReader::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut last_ts: Option<u32> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || (join_only && r.first_video.is_some()) {
            break;
        }
        let n = match tokio::time::timeout(deadline - now, sock.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                r.closed_early = true;
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                r.closed_early = true;
                r.error = Some(e.to_string());
                break;
            }
            Err(_) => break,
        };
        r.bytes += n as u64;
        let tags = match reader.feed(&chunk[..n]) {
            Ok(t) => t,
            Err(e) => {
                r.error = Some(e);
                break;
            }
        };
        for (kind, ts, body) in tags {
            match kind {
                9 => {
                    let Some(key) = flv_video_frame(&body) else { continue };
                    r.video_packets += 1;
                    r.video_frames += 1;
                    if r.first_video.is_none() {
                        r.first_video = Some(asked.elapsed());
                        r.join = Some(started.elapsed());
                        r.first_is_key = key;
                    }
                    if last_ts.is_some_and(|l| ts < l) {
                        r.video_ts_regressions += 1;
                    }
                    last_ts = Some(ts);
                }
                8 => r.audio_packets += 1,
                _ => {}
            }
        }
    }
    r
}

/// One player of `target` (`join_only`: until its first video packet).
async fn run_one(addr: SocketAddr, target: &Target, duration: Duration, stall: bool, join_only: bool) -> PlayerResult {
    match target {
        Target::Rtsp { url } => run_player(addr, url.clone(), duration, stall, join_only).await,
        Target::Rtmp { app, key, tc_url } => {
            run_rtmp_player(addr, app.clone(), key.clone(), tc_url.clone(), duration, stall, join_only).await
        }
        Target::HttpFlv { path } => run_flv_player(addr, path.clone(), duration, stall, join_only).await,
    }
}

/// Join-measuring mode: `joins` players of `url` one after another, each from its TCP connect
/// until its first video packet (RTMP, HTTP-FLV: keyframe), at most `each`, with a short pause
/// between joins so each one meets a server in steady state.
pub async fn run_joins(url: &str, joins: usize, each: Duration) -> Result<PlayersReport, PlayersError> {
    let (addr, target) = parse_url(url)?;
    let mut report = PlayersReport::default();
    for _ in 0..joins {
        report.players.push(run_one(addr, &target, each, false, true).await);
        tokio::time::sleep(JOIN_PAUSE).await;
    }
    Ok(report)
}

/// `url` with its stream name's trailing hex number (a GB stream `rtp/05F5E101`) plus `i`: one
/// player per camera of `gbgate send --count N` (`gbgate players --spread`).
pub fn spread_url(url: &str, i: usize) -> Result<String, PlayersError> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (head, last) = base.rsplit_once('/').ok_or_else(|| PlayersError::BadUrl(url.into()))?;
    let (stem, ext) = last.split_once('.').map_or((last, None), |(s, e)| (s, Some(e)));
    let n = u32::from_str_radix(stem, 16).map_err(|_| PlayersError::BadUrl(url.into()))?;
    let mut out = format!("{head}/{:0width$X}", n.wrapping_add(i as u32), width = stem.len());
    if let Some(e) = ext {
        out = format!("{out}.{e}");
    }
    if let Some(q) = query {
        out = format!("{out}?{q}");
    }
    Ok(out)
}

/// Runs `count` players against `url` for `duration` (with `spread`, player i plays
/// [`spread_url`]`(url, i)`).
pub async fn run_players_spread(opts: &PlayersOptions, spread: bool) -> Result<PlayersReport, PlayersError> {
    if !spread {
        return run_players(opts).await;
    }
    let mut tasks = Vec::with_capacity(opts.count);
    for i in 0..opts.count {
        let (addr, target) = parse_url(&spread_url(&opts.url, i)?)?;
        let duration = opts.duration;
        tasks.push(tokio::spawn(async move { run_one(addr, &target, duration, false, false).await }));
    }
    let mut report = PlayersReport::default();
    for t in tasks {
        report
            .players
            .push(t.await.unwrap_or_else(|e| PlayerResult { error: Some(e.to_string()), ..Default::default() }));
    }
    Ok(report)
}

/// Runs `count` players against `url` for `duration`.
pub async fn run_players(opts: &PlayersOptions) -> Result<PlayersReport, PlayersError> {
    let (addr, target) = parse_url(&opts.url)?;
    let mut tasks = Vec::with_capacity(opts.count + opts.stall);
    for i in 0..opts.count + opts.stall {
        let stall = i >= opts.count;
        let (target, duration) = (target.clone(), opts.duration);
        tasks.push(tokio::spawn(async move { run_one(addr, &target, duration, stall, false).await }));
    }
    let mut report = PlayersReport { stalled: opts.stall, ..Default::default() };
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap_or_else(|e| PlayerResult { error: Some(e.to_string()), ..Default::default() });
        if i >= opts.count {
            report.stalled_disconnected += usize::from(r.closed_early);
        } else {
            report.players.push(r);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_payloads_are_recognised_in_fragments_and_aggregates() {
        assert!(is_key_payload(&[0x65, 0x88], false)); // IDR
        assert!(is_key_payload(&[0x7c, 0x85], false)); // FU-A carrying IDR
        assert!(is_key_payload(&[0x78, 0x00, 0x10, 0x67], false)); // STAP-A starting with SPS
        assert!(!is_key_payload(&[0x41, 0x9a], false)); // P slice
        assert!(is_key_payload(&[0x62, 0x01, 0x93], true)); // H.265 FU carrying IDR_N_LP (19)
        assert!(is_key_payload(&[0x40, 0x01], true)); // VPS
        assert!(!is_key_payload(&[0x02, 0x01], true)); // TRAIL_R
    }

    #[test]
    fn sdp_tracks_resolve_relative_controls() {
        let sdp =
            "v=0\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=0\r\nm=audio 0 RTP/AVP 8\r\na=control:trackID=1\r\n";
        let t = sdp_tracks(sdp, "rtsp://127.0.0.1:8554/rtp/0BEBC201");
        assert_eq!(t[0], ("rtsp://127.0.0.1:8554/rtp/0BEBC201/trackID=0".to_string(), true));
        assert!(!t[1].1);
    }

    #[test]
    fn flv_video_frames_and_keyframes() {
        assert_eq!(flv_video_frame(&[0x17, 0x00, 0, 0, 0]), None); // AVC sequence header
        assert_eq!(flv_video_frame(&[0x17, 0x01, 0, 0, 0]), Some(true));
        assert_eq!(flv_video_frame(&[0x27, 0x01, 0, 0, 0]), Some(false));
        assert_eq!(flv_video_frame(&[0x17, 0x02, 0, 0, 0]), None); // end of sequence
        assert_eq!(flv_video_frame(&[0x90, b'h', b'v', b'c', b'1']), None); // enhanced SequenceStart
        assert_eq!(flv_video_frame(&[0x91, b'h', b'v', b'c', b'1']), Some(true)); // CodedFrames key
        assert_eq!(flv_video_frame(&[0xa3, b'h', b'v', b'c', b'1']), Some(false)); // CodedFramesX inter
        assert_eq!(flv_video_frame(&[]), None);
    }

    #[test]
    fn spread_urls_count_up_the_stream_number() {
        assert_eq!(spread_url("rtsp://127.0.0.1:8554/rtp/05F5E101", 0).unwrap(), "rtsp://127.0.0.1:8554/rtp/05F5E101");
        assert_eq!(spread_url("rtsp://127.0.0.1:8554/rtp/05F5E101", 15).unwrap(), "rtsp://127.0.0.1:8554/rtp/05F5E110");
        assert_eq!(
            spread_url("http://127.0.0.1:80/rtp/05F5E1FF.flv?a=1", 1).unwrap(),
            "http://127.0.0.1:80/rtp/05F5E200.flv?a=1"
        );
        assert!(spread_url("rtsp://127.0.0.1:8554/live/cam", 1).is_err());
    }

    #[test]
    fn urls_select_the_protocol() {
        let (addr, t) = parse_url("rtmp://127.0.0.1:1935/rtp/05F5E101").unwrap();
        assert_eq!(addr.port(), 1935);
        assert_eq!(
            t,
            Target::Rtmp { app: "rtp".into(), key: "05F5E101".into(), tc_url: "rtmp://127.0.0.1:1935/rtp".into() }
        );
        assert!(matches!(parse_url("rtsp://127.0.0.1:8554/rtp/1").unwrap().1, Target::Rtsp { .. }));
        assert!(parse_url("rtmp://127.0.0.1:1935/rtp").is_err());
        assert!(parse_url("http://127.0.0.1/x").is_err());
        assert_eq!(
            parse_url("http://127.0.0.1:8088/rtp/05F5E101.flv?hevc=legacy").unwrap().1,
            Target::HttpFlv { path: "/rtp/05F5E101.flv?hevc=legacy".into() }
        );
        assert!(parse_url("http://127.0.0.1:8088/rtp/05F5E101").is_err());
    }

    #[test]
    fn flv_reader_dechunks_and_splits_tags_fed_bytewise() {
        let mut tag = vec![9, 0, 0, 5, 0, 0, 40, 0, 0, 0, 0, 0x17, 1, 0, 0, 0];
        tag.extend_from_slice(&16u32.to_be_bytes());
        let mut flv = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        flv.extend_from_slice(&tag);
        flv.extend_from_slice(&tag);
        let (a, b) = flv.split_at(20);
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [a, b] {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut r = FlvReader::default();
        let mut tags = Vec::new();
        for byte in &wire {
            tags.extend(r.feed(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(tags.len(), 2);
        assert_eq!((tags[0].0, tags[0].1, flv_video_frame(&tags[0].2)), (9, 40, Some(true)));
        assert!(FlvReader::default().feed(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }
}
