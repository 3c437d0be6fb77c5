//! Added latency, frame in -> frame out: `gbgate latency CLIP --rtp ADDR --rtsp ADDR --cameras N
//! --players M`.
//!
//! One process sends N cameras (the clip's RTP, as `gbgate send` does: SSRC base + i, staggered
//! over a frame period, looping) to a running gateway and plays the first M of them over RTSP
//! (TCP interleaved). Every video frame of the clip is known beforehand by its last 16 bytes
//! (from gbgate's own ingest of the clip), so a player recognises which frame a marked RTP packet
//! ends, and the latency of that frame is the time from the sender writing the last RTP packet of
//! the frame to the player reading the last RTP packet of it out of its socket: the gateway's
//! receive, reorder, demux, media stage, fan-out and write, plus loopback both ways. Both clocks
//! are this process's monotonic clock. The GOP burst at PLAY (old frames) is skipped: only frames
//! sent after the player's first second count.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::media::ingest::StreamIngest;
use crate::media::MediaKind;
use crate::probe::reader::{read_capture, CaptureItem};
use crate::proto::rtp::RtpPacket;

const FRAME_US: u64 = 40_000;
/// Matched frames are counted only this long after a player's PLAY (the cached GOP comes first).
const SETTLE: Duration = Duration::from_secs(1);
/// Latency samples kept per player (a 10 minute run at 25 fps).
const MAX_SAMPLES: usize = 15_000;
const KEY_LEN: usize = 16;
/// A stamp older than this belongs to an earlier pass of the clip (20 s long in tools/load.sh).
const STALE_US: u64 = 5_000_000;

#[derive(Debug, Clone)]
pub struct LatencyOptions {
    pub rtp: SocketAddr,
    pub rtsp: SocketAddr,
    pub tcp: bool,
    pub cameras: usize,
    pub players: usize,
    pub ssrc_base: u32,
    pub duration: Duration,
    /// Players start this long after the cameras (streams live, GOP cached).
    pub warmup: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct LatencyReport {
    /// Frame latencies of every player, sorted.
    pub samples: Vec<Duration>,
    /// Marked video packets whose frame was not recognised (or not yet sent).
    pub unmatched: u64,
    pub players_ok: usize,
    pub errors: Vec<String>,
    pub packets_sent: u64,
    /// The most any packet was sent after its due time: when large, the sender could not keep
    /// up and frames reached the gateway bunched (the figures then understate a real camera's).
    pub sender_late_max: Duration,
    /// Video frames of the clip that can be recognised (unique tails).
    pub known_frames: usize,
}

impl LatencyReport {
    pub fn percentile(&self, q: f64) -> Duration {
        let n = self.samples.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.samples[((n as f64 - 1.0) * q).round() as usize]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LatencyError {
    #[error(transparent)]
    Read(#[from] crate::probe::reader::ReadError),
    #[error("{0}: no RTP packets")]
    NoRtp(String),
    #[error("no video frame of the clip can be recognised by its tail")]
    NoFrames,
    #[error("camera {0}: {1}")]
    Io(usize, std::io::Error),
}

/// The clip: its packets with send offsets, and which packet completes which video frame.
struct Clip {
    packets: Vec<(u64, Bytes)>,
    period_us: u64,
    seq_span: u16,
    ts_span: u32,
    /// Packet index -> the recognisable frame it completes.
    completes: HashMap<usize, usize>,
    /// Frame tail -> frame number.
    tails: HashMap<[u8; KEY_LEN], usize>,
    frames: usize,
}

fn load_clip(path: &Path) -> Result<Clip, LatencyError> {
    let capture = read_capture(path)?;
    let mut raw = Vec::new();
    let mut first_ssrc = None;
    for item in capture.items {
        if let CaptureItem::Rtp { packet, .. } = item {
            let Ok(p) = RtpPacket::parse(packet.clone()) else { continue };
            if *first_ssrc.get_or_insert(p.ssrc) == p.ssrc {
                raw.push((packet, p));
            }
        }
    }
    if raw.is_empty() {
        return Err(LatencyError::NoRtp(path.display().to_string()));
    }
    // The frames as the gateway's ingest makes them, by PTS.
    let mut ingest = StreamIngest::new(64, 100_000);
    let mut out = Vec::new();
    for (i, (_, p)) in raw.iter().enumerate() {
        ingest.push_rtp(p.clone(), i as u64 * 100, &mut out);
    }
    ingest.finish(&mut out);
    // The last packet of a frame: the first marked packet with its timestamp (GB cameras mark the
    // end of each frame's pack), else the last packet with it.
    let mut first_marker: HashMap<u32, usize> = HashMap::new();
    let mut last_with: HashMap<u32, usize> = HashMap::new();
    for (i, (_, p)) in raw.iter().enumerate() {
        if p.marker {
            first_marker.entry(p.timestamp).or_insert(i);
        }
        last_with.insert(p.timestamp, i);
    }
    let mut tails: HashMap<[u8; KEY_LEN], usize> = HashMap::new();
    let mut ambiguous = Vec::new();
    let mut completes = HashMap::new();
    let mut frames = 0;
    for f in out.iter().filter(|f| f.kind() == MediaKind::Video && f.data.len() >= KEY_LEN) {
        let ts = f.pts as u32;
        let Some(&last) = first_marker.get(&ts).or_else(|| last_with.get(&ts)) else { continue };
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&f.data[f.data.len() - KEY_LEN..]);
        if tails.insert(key, frames).is_some() {
            ambiguous.push(key);
        }
        completes.insert(last, frames);
        frames += 1;
    }
    for k in ambiguous {
        tails.remove(&k);
    }
    if tails.is_empty() {
        return Err(LatencyError::NoFrames);
    }
    // Send offsets from the RTP timestamps, as `gbgate send` does.
    let mut packets = Vec::with_capacity(raw.len());
    let (mut at_us, mut prev) = (0u64, None::<u32>);
    let (first_ts, mut last_ts) = (raw[0].1.timestamp, raw[0].1.timestamp);
    for (data, p) in raw {
        if let Some(prev) = prev {
            let delta = p.timestamp.wrapping_sub(prev) as i32;
            let gap = if delta < 0 { 0 } else { u64::from(delta as u32) * 1_000_000 / 90_000 };
            at_us += if gap > 200_000 { FRAME_US } else { gap };
        }
        prev = Some(p.timestamp);
        last_ts = p.timestamp;
        packets.push((at_us, data));
    }
    Ok(Clip {
        period_us: at_us + FRAME_US,
        seq_span: packets.len() as u16,
        ts_span: last_ts.wrapping_sub(first_ts).wrapping_add(3600),
        packets,
        completes,
        tails,
        frames,
    })
}

/// When each camera last sent the end of each frame, in µs after `start` (0: not yet).
struct SentTimes {
    frames: usize,
    at: Vec<AtomicU64>,
}

impl SentTimes {
    fn set(&self, camera: usize, frame: usize, us: u64) {
        self.at[camera * self.frames + frame].store(us, Ordering::Relaxed);
    }
    fn get(&self, camera: usize, frame: usize) -> u64 {
        self.at[camera * self.frames + frame].load(Ordering::Relaxed)
    }
}

enum Sock {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

async fn send_cameras(
    clip: Arc<Clip>,
    opts: LatencyOptions,
    sent: Arc<SentTimes>,
    start: Instant,
    until: Instant,
) -> Result<(u64, u64), LatencyError> {
    let n = opts.cameras.max(1);
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        socks.push(match opts.tcp {
            true => {
                let s = TcpStream::connect(opts.rtp).await.map_err(|e| LatencyError::Io(i, e))?;
                let _ = s.set_nodelay(true);
                Sock::Tcp(s, Vec::with_capacity(64 * 1024))
            }
            false => Sock::Udp(UdpSocket::bind("127.0.0.1:0").await.map_err(|e| LatencyError::Io(i, e))?),
        });
    }
    // (next packet, pass) per camera; camera i starts i/n of a frame period late.
    let mut pos = vec![(0usize, 0u32); n];
    let mut scratch = Vec::with_capacity(2048);
    let mut packets = 0u64;
    let mut late_max = 0u64;
    let mut done = Vec::new();
    loop {
        let now_us = start.elapsed().as_micros() as u64;
        let mut next_due = u64::MAX;
        for (i, sock) in socks.iter_mut().enumerate() {
            let offset = i as u64 * FRAME_US / n as u64;
            loop {
                let (k, pass) = pos[i];
                let (at, data) = &clip.packets[k];
                let due = offset + u64::from(pass) * clip.period_us + at;
                if due > now_us {
                    next_due = next_due.min(due);
                    break;
                }
                scratch.clear();
                scratch.extend_from_slice(data);
                let ssrc = opts.ssrc_base.wrapping_add(i as u32);
                scratch[8..12].copy_from_slice(&ssrc.to_be_bytes());
                if pass > 0 {
                    let seq = u16::from_be_bytes([scratch[2], scratch[3]])
                        .wrapping_add(clip.seq_span.wrapping_mul(pass as u16));
                    scratch[2..4].copy_from_slice(&seq.to_be_bytes());
                    let ts = u32::from_be_bytes([scratch[4], scratch[5], scratch[6], scratch[7]])
                        .wrapping_add(clip.ts_span.wrapping_mul(pass));
                    scratch[4..8].copy_from_slice(&ts.to_be_bytes());
                }
                // How late the sender is (a sender that cannot keep up bunches frames together).
                late_max = late_max.max(now_us.saturating_sub(due));
                match sock {
                    // A lost datagram under load is what a network does: not a reason to stop.
                    Sock::Udp(s) => {
                        let _ = s.send_to(&scratch, opts.rtp).await;
                        // Stamped as soon as the datagram is handed to the kernel.
                        if let Some(&frame) = clip.completes.get(&k) {
                            sent.set(i, frame, (start.elapsed().as_micros() as u64).max(1));
                        }
                    }
                    Sock::Tcp(_, out) => {
                        out.extend_from_slice(&(scratch.len() as u16).to_be_bytes());
                        out.extend_from_slice(&scratch);
                    }
                }
                packets += 1;
                if let (Sock::Tcp(..), Some(&frame)) = (&*sock, clip.completes.get(&k)) {
                    done.push(frame);
                }
                pos[i] = if k + 1 == clip.packets.len() { (0, pass + 1) } else { (k + 1, pass) };
            }
            if let Sock::Tcp(s, out) = sock {
                if !out.is_empty() {
                    s.write_all(out).await.map_err(|e| LatencyError::Io(i, e))?;
                    out.clear();
                }
            }
            // TCP: stamped once the bytes are handed to the kernel.
            if !done.is_empty() {
                let us = start.elapsed().as_micros() as u64;
                for f in done.drain(..) {
                    sent.set(i, f, us.max(1));
                }
            }
        }
        if Instant::now() >= until {
            return Ok((packets, late_max));
        }
        if next_due != u64::MAX {
            tokio::time::sleep_until((start + Duration::from_micros(next_due)).into()).await;
        }
    }
}

struct PlayerOut {
    samples: Vec<Duration>,
    unmatched: u64,
}

async fn play(
    addr: SocketAddr,
    camera: usize,
    url: String,
    clip: Arc<Clip>,
    sent: Arc<SentTimes>,
    start: Instant,
    until: Instant,
) -> Result<PlayerOut, String> {
    let mut sock = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut cseq = 0;
    let mut req = |method: &str, url: &str, extra: &str| {
        cseq += 1;
        format!("{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\nUser-Agent: gbgate-latency\r\n{extra}\r\n")
    };
    let (status, sdp) =
        super::players::exchange(&mut sock, &mut buf, req("DESCRIBE", &url, "Accept: application/sdp\r\n")).await?;
    if status != 200 {
        return Err(format!("DESCRIBE answered {status}"));
    }
    let mut session = String::new();
    let mut video_channel = None;
    for (i, (control, is_video)) in super::players::sdp_tracks(&sdp, &url).iter().enumerate() {
        let mut extra = format!("Transport: RTP/AVP/TCP;unicast;interleaved={}-{}\r\n", 2 * i, 2 * i + 1);
        if !session.is_empty() {
            extra.push_str(&format!("Session: {session}\r\n"));
        }
        let (status, text) = super::players::exchange(&mut sock, &mut buf, req("SETUP", control, &extra)).await?;
        if status != 200 {
            return Err(format!("SETUP answered {status}"));
        }
        if session.is_empty() {
            let value = super::players::header(&text, "session").unwrap_or("");
            session = value.split(';').next().unwrap_or("").to_string();
        }
        if *is_video && video_channel.is_none() {
            video_channel = Some((2 * i) as u8);
        }
    }
    let (status, _) =
        super::players::exchange(&mut sock, &mut buf, req("PLAY", &url, &format!("Session: {session}\r\n"))).await?;
    if status != 200 {
        return Err(format!("PLAY answered {status}"));
    }
    let counting_from = Instant::now() + SETTLE;
    let mut out = PlayerOut { samples: Vec::new(), unmatched: 0 };
    let mut chunk = vec![0u8; 64 * 1024];
    // Keepalive well inside the default 60 s session timeout.
    let mut keepalive = Instant::now() + Duration::from_secs(15);
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if now >= keepalive {
            keepalive = now + Duration::from_secs(15);
            let ka = req("GET_PARAMETER", &url, &format!("Session: {session}\r\n"));
            sock.write_all(ka.as_bytes()).await.map_err(|e| e.to_string())?;
        }
        let n = match tokio::time::timeout(until.min(keepalive) - now, sock.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("closed by the server".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => continue,
        };
        // One clock reading per read: every packet in it arrived by then.
        let got_us = start.elapsed().as_micros() as u64;
        buf.extend_from_slice(&chunk[..n]);
        let mut i = 0;
        while buf.len() >= i + 4 {
            if buf[i] != b'$' {
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
            let len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
            if buf.len() < i + 4 + len {
                break;
            }
            let pkt = &buf[i + 4..i + 4 + len];
            if Some(buf[i + 1]) == video_channel && len >= 12 + KEY_LEN && pkt[1] & 0x80 != 0 {
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(&pkt[len - KEY_LEN..]);
                let sent_us = clip.tails.get(&key).map(|&f| sent.get(camera, f)).unwrap_or(0);
                if Instant::now() >= counting_from && out.samples.len() < MAX_SAMPLES {
                    // Not sent in this pass yet (a stamp from the previous loop, or none): a
                    // frame the player has but the sender has not stamped; not a latency.
                    match got_us.checked_sub(sent_us) {
                        Some(d) if sent_us > 0 && d < STALE_US => out.samples.push(Duration::from_micros(d)),
                        _ => out.unmatched += 1,
                    }
                }
            }
            i += 4 + len;
        }
        buf.drain(..i);
    }
    let _ = sock.write_all(req("TEARDOWN", &url, &format!("Session: {session}\r\n")).as_bytes()).await;
    Ok(out)
}

/// Runs the cameras and players of `opts` with `clip`; returns the latencies.
pub async fn run_latency(clip: &Path, opts: &LatencyOptions) -> Result<LatencyReport, LatencyError> {
    let clip = Arc::new(load_clip(clip)?);
    let cameras = opts.cameras.max(1);
    let sent = Arc::new(SentTimes {
        frames: clip.frames,
        at: (0..cameras * clip.frames).map(|_| AtomicU64::new(0)).collect(),
    });
    let start = Instant::now();
    let until = start + opts.warmup + opts.duration;
    let sender = tokio::spawn(send_cameras(clip.clone(), opts.clone(), sent.clone(), start, until));
    tokio::time::sleep(opts.warmup).await;
    let mut players = Vec::new();
    for cam in 0..opts.players.min(cameras) {
        let url = format!("rtsp://{}/rtp/{:08X}", opts.rtsp, opts.ssrc_base.wrapping_add(cam as u32));
        players.push(tokio::spawn(play(opts.rtsp, cam, url, clip.clone(), sent.clone(), start, until)));
    }
    let mut report = LatencyReport { known_frames: clip.tails.len(), ..Default::default() };
    for p in players {
        match p.await {
            Ok(Ok(out)) => {
                report.players_ok += 1;
                report.unmatched += out.unmatched;
                report.samples.extend(out.samples);
            }
            Ok(Err(e)) => report.errors.push(e),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    (report.packets_sent, report.sender_late_max) = match sender.await {
        Ok(r) => r.map(|(p, late)| (p, Duration::from_micros(late)))?,
        Err(e) => return Err(LatencyError::Io(0, std::io::Error::other(e.to_string()))),
    };
    report.samples.sort_unstable();
    Ok(report)
}
