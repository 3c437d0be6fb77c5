//! The fan-out floor (issue 12, D176): `gbgate floor CLIP --proto rtsp|rtmp --connections N`.
//!
//! What any server must do per frame when it writes each frame to each player at once
//! (`merge_write = "0s"`), and nothing else: one thread, N loopback TCP connections, and per 40 ms
//! video frame of the clip one blocking `writev` (two for a frame past 128 iovec entries) per
//! connection, of the same bytes and iovec shape a gbgate player task writes: the same
//! [`Batch`](crate::server::batch::Batch), the frame's RTP payloads from the project's packetiser
//! behind each player's 16-byte `$`/RTP header (RTSP interleaved), or the frame's FLV tag in
//! 4,096-byte chunks behind gbgate's chunk headers (RTMP). No task, no timer per player, no queue,
//! no wake-up but the one per frame; the readers are a separate process (this binary again, with
//! `--drain`) that only drains, with the 64 KiB reads of `gbgate players`.
//!
//! Audio: gbgate's players carry AAC at 11025 Hz (one 1024-sample frame every 92.9 ms, about
//! 279 bytes at 24 kbit/s), held until the next video frame (`batch::AUDIO_HOLD`). The floor does
//! not run the transcoder: it puts a 279-byte AAC-sized payload in front of the video frame due
//! after each audio period, so the writes carry what gbgate's carry, in the same shape.
//!
//! The process reports its own CPU (`/proc/self/stat`, and `schedstat` in ns) over the window
//! after a warm-up: the kernel's loopback TCP send path, the receivers' wake-ups and the copies,
//! i.e. the floor under gbgate's per-frame fan-out figure of `tools/fanout.sh`.
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::rtp_pack;
use crate::media::ingest::StreamIngest;
use crate::media::MediaKind;
use crate::probe::reader::{read_capture, CaptureItem};
use crate::proto::flv::{self, HevcFlv};
use crate::proto::rtp::RtpPacket;
use crate::server::batch::Batch;
use crate::server::rtmp::{put_media, MediaChunks};

/// The clip's frame period (tools/load.sh's clip is 25 fps).
const FRAME: Duration = Duration::from_micros(40_000);
/// One AAC frame at 11025 Hz: 1024 samples.
const AUDIO_PERIOD: Duration = Duration::from_micros(1024 * 1_000_000 / 11_025);
/// An AAC frame at 24 kbit/s, 11025 Hz (gbgate's default output).
const AAC_BYTES: usize = 279;
/// The players' send buffer in gbgate (rtsp.rs `SEND_BUFFER`, rtmp.rs `PLAYER_SEND_BUFFER`).
const SEND_BUFFER: usize = 256 * 1024;
/// `gbgate players` reads this much at a time.
const DRAIN_READ: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorProto {
    Rtsp,
    Rtmp,
}

#[derive(Debug, Clone)]
pub struct FloorOptions {
    pub proto: FloorProto,
    pub connections: usize,
    /// The measured window.
    pub duration: Duration,
    /// Writing before the window (connections settle, buffers grow).
    pub warmup: Duration,
    /// RTP payload size (gbgate's `[rtsp] max_payload`, 1400 by default).
    pub max_payload: usize,
}

#[derive(Debug, Clone, Default)]
pub struct FloorReport {
    pub connections: usize,
    /// Video frames written to each connection in the window.
    pub frames: u64,
    /// `writev` calls in the window, all connections.
    pub writevs: u64,
    /// Bytes written in the window, all connections.
    pub bytes: u64,
    pub window: Duration,
    /// This process's CPU in the window, % of one core, from `/proc/self/stat` (clock ticks, as
    /// tools/fanout.sh reads gbgate's) and from `schedstat` (ns).
    pub cpu_pct: f64,
    pub cpu_pct_ns: f64,
    /// The drain process's CPU in the window, % of one core (clock ticks).
    pub drain_cpu_pct: f64,
    /// Bytes the drain process read in all, against those written in all.
    pub drained: u64,
    pub written: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error(transparent)]
    Read(#[from] crate::probe::reader::ReadError),
    #[error("the clip has no H.264 video frames")]
    NoVideo,
    #[error("{0}: {1}")]
    Io(&'static str, io::Error),
}

/// One video frame of the clip in the output forms the floor writes.
struct ClipFrame {
    /// The frame's cache with its RTP payloads (RTSP), shared by all connections.
    rtp: crate::frame::FrameCache,
    packets: usize,
    /// FLV tag body (RTMP), shared.
    flv: Bytes,
}

fn load_frames(clip: &Path, max_payload: usize) -> Result<Vec<ClipFrame>, FloorError> {
    let capture = read_capture(clip)?;
    let mut ingest = StreamIngest::new(64, 100_000);
    let mut out = Vec::new();
    let mut first_ssrc = None;
    let mut i = 0u64;
    for item in capture.items {
        if let CaptureItem::Rtp { packet, .. } = item {
            let Ok(p) = RtpPacket::parse(packet) else { continue };
            if *first_ssrc.get_or_insert(p.ssrc) == p.ssrc {
                ingest.push_rtp(p, i * 100, &mut out);
                i += 1;
            }
        }
    }
    ingest.finish(&mut out);
    let frames: Vec<ClipFrame> = out
        .iter()
        .filter(|f| f.kind() == MediaKind::Video)
        .filter_map(|f| {
            let flv = flv::cached_frame_tag(f, HevcFlv::Enhanced)?;
            let packets = rtp_pack::frame_payloads(f, max_payload).len();
            Some(ClipFrame { rtp: f.cache.clone(), packets, flv })
        })
        .collect();
    if frames.is_empty() {
        return Err(FloorError::NoVideo);
    }
    Ok(frames)
}

/// One connection's own state: what a player task keeps per track.
struct Conn {
    sock: TcpStream,
    out: Batch,
    video_seq: u16,
    audio_seq: u16,
    ssrc: u32,
}

/// The process's CPU so far, in clock ticks (utime + stime).
fn ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

/// This process's CPU so far in ns, all threads (`schedstat`).
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

fn clock_ticks() -> f64 {
    // Linux's USER_HZ is 100 on every architecture gbgate runs on.
    100.0
}

/// Runs the floor: spawns the drain process, accepts its connections, writes the clip to all.
pub fn run_floor(clip: &Path, opts: &FloorOptions) -> Result<FloorReport, FloorError> {
    let frames = load_frames(clip, opts.max_payload)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| FloorError::Io("listen", e))?;
    let addr = listener.local_addr().map_err(|e| FloorError::Io("listen", e))?;
    let exe = std::env::current_exe().map_err(|e| FloorError::Io("current_exe", e))?;
    let mut child = Command::new(exe)
        .args(["floor", "--drain", &addr.to_string(), "--connections", &opts.connections.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| FloorError::Io("spawn the drain process", e))?;
    let child_pid = child.id().to_string();
    let mut conns = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let (sock, _) = listener.accept().map_err(|e| FloorError::Io("accept", e))?;
        let _ = sock.set_nodelay(true);
        let _ = socket2::SockRef::from(&sock).set_send_buffer_size(SEND_BUFFER);
        conns.push(Conn { sock, out: Batch::default(), video_seq: 0, audio_seq: 0, ssrc: 0x1000 + i as u32 });
    }
    let audio = Bytes::from(vec![0x21u8; AAC_BYTES + 4]); // RFC 3640: AU-headers-length, one AU header
    let audio_flv = Bytes::from(vec![0xAFu8; AAC_BYTES + 2]); // FLV AAC: 2-byte tag header
    let start = Instant::now();
    let window_start = start + opts.warmup;
    let end = window_start + opts.duration;
    let mut report = FloorReport { connections: opts.connections, ..FloorReport::default() };
    let (mut c0, mut n0, mut d0, mut t0) = (None, 0, 0, start);
    let mut next_audio = Duration::ZERO;
    let mut written = 0u64;
    for k in 0u64.. {
        let due = start + FRAME * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if c0.is_none() && Instant::now() >= window_start {
            (c0, n0, d0, t0) = (Some(ticks("self")), cpu_ns(), ticks(&child_pid), Instant::now());
        }
        if Instant::now() >= end {
            break;
        }
        let at = FRAME * k as u32;
        let with_audio = at >= next_audio;
        if with_audio {
            next_audio += AUDIO_PERIOD;
        }
        let frame = &frames[(k as usize) % frames.len()];
        let ts90 = (k as u32).wrapping_mul(3600);
        let (mut calls, mut bytes) = (0u64, 0u64);
        for c in &mut conns {
            match opts.proto {
                FloorProto::Rtsp => {
                    if with_audio {
                        c.audio_seq = c.audio_seq.wrapping_add(1);
                        rtp_head(&mut c.out, 2, 97, true, c.audio_seq, ts90 / 8, c.ssrc + 1, audio.len());
                        c.out.shared(&audio);
                    }
                    let n = frame.packets;
                    let payloads = frame.rtp.rtp.get().map(Vec::as_slice).unwrap_or(&[]);
                    for (i, p) in payloads.iter().enumerate() {
                        c.video_seq = c.video_seq.wrapping_add(1);
                        rtp_head(&mut c.out, 0, 96, i + 1 == n, c.video_seq, ts90, c.ssrc, p.len());
                        c.out.rtp_payload(&frame.rtp, i);
                    }
                }
                FloorProto::Rtmp => {
                    let ms = (k as u32).wrapping_mul(40);
                    if with_audio {
                        put_media(&mut c.out, MediaChunks::AUDIO, 1, ms, &audio_flv);
                    }
                    put_media(&mut c.out, MediaChunks::VIDEO, 1, ms, &frame.flv);
                }
            }
            bytes += c.out.len() as u64;
            calls += c.out.write_blocking(&mut c.sock).map_err(|e| FloorError::Io("write", e))? as u64;
        }
        written += bytes;
        if c0.is_some() {
            report.frames += 1;
            report.writevs += calls;
            report.bytes += bytes;
        }
    }
    let (c1, n1, d1, t1) = (ticks("self"), cpu_ns(), ticks(&child_pid), Instant::now());
    let window = t1.duration_since(t0).as_secs_f64().max(1e-3);
    report.window = t1.duration_since(t0);
    report.cpu_pct = (c1 - c0.unwrap_or(c1)) as f64 / clock_ticks() / window * 100.0;
    report.cpu_pct_ns = (n1 - n0) as f64 / 1e9 / window * 100.0;
    report.drain_cpu_pct = d1.saturating_sub(d0) as f64 / clock_ticks() / window * 100.0;
    report.written = written;
    drop(conns);
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    let _ = child.wait();
    report.drained = text.trim().parse().unwrap_or(0);
    Ok(report)
}

/// The head of one interleaved RTP packet as a gbgate RTSP player appends it: `$`, channel,
/// length and the RTP header are the player's own 16 bytes; the payload follows, shared.
#[allow(clippy::too_many_arguments)]
fn rtp_head(out: &mut Batch, channel: u8, pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, len: usize) {
    let mut own = [0u8; 16];
    own[0] = b'$';
    own[1] = channel;
    own[2..4].copy_from_slice(&((12 + len) as u16).to_be_bytes());
    own[4..].copy_from_slice(&rtp_pack::rtp_header(pt, marker, seq, ts, ssrc));
    out.own(&own);
}

/// The drain side: `count` connections to `to`, each read in 64 KiB reads until the writer
/// closes it. Returns the bytes read in all.
pub async fn run_drain(to: SocketAddr, count: usize) -> io::Result<u64> {
    use tokio::io::AsyncReadExt;
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let mut sock = tokio::net::TcpStream::connect(to).await?;
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; DRAIN_READ];
            let mut n = 0u64;
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k as u64,
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    Ok(total)
}
