//! Replays the RTP packets of a capture as N cameras, over UDP or TCP (RFC 4571), in real time.
//!
//! Each camera gets its own SSRC (`ssrc_base + i`), its own socket (so its own source address),
//! and continuous sequence numbers and RTP timestamps across loops. Cameras are staggered over one
//! frame period so their packets do not arrive in lock-step bursts.
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::probe::reader::{read_capture, CaptureItem};
use crate::proto::rtp::RtpPacket;

/// A gap between two packets' timestamps longer than this (a jump in the source) is replayed as
/// one frame period, so a capture with a +10 s jump does not stall the sender for 10 s.
const MAX_GAP_US: u64 = 200_000;
const FRAME_US: u64 = 40_000;

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub to: SocketAddr,
    pub tcp: bool,
    pub count: usize,
    /// SSRC of camera 0 (camera i uses base + i). `None`: keep the capture's SSRC (count must be 1).
    pub ssrc_base: Option<u32>,
    /// Replay the capture this many times (>= 1).
    pub loops: u32,
    /// Stop after this long even if loops remain.
    pub duration: Option<Duration>,
    /// Send as fast as possible instead of in real time.
    pub flood: bool,
    /// Keep TCP connections open this long after the last packet (a paused camera), so the
    /// gateway keeps the streams live.
    pub linger: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct SendReport {
    pub packets: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// The latest any packet left after its due time (real-time mode): how far the sender
    /// itself fell behind.
    pub max_late: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Read(#[from] crate::probe::reader::ReadError),
    #[error("{0}: no RTP packets in it (send replays .rtp dumps, rtpdump or pcap files)")]
    NoRtp(String),
    #[error("camera {camera}: {source}")]
    Io { camera: usize, source: std::io::Error },
}

/// One packet of the template, with its send time relative to the start of the capture.
struct TemplatePacket {
    at_us: u64,
    data: Bytes,
}

struct Template {
    packets: Vec<TemplatePacket>,
    /// Length of one pass, including one frame period before the next loop starts.
    period_us: u64,
    seq_span: u16,
    ts_span: u32,
}

fn load_template(path: &Path) -> Result<Template, SendError> {
    let capture = read_capture(path)?;
    let mut raw: Vec<Bytes> = Vec::new();
    let mut first_ssrc = None;
    for item in capture.items {
        if let CaptureItem::Rtp { packet, .. } = item {
            let Ok(p) = RtpPacket::parse(packet.clone()) else { continue };
            // Only the first SSRC of the capture: one camera's stream.
            if *first_ssrc.get_or_insert(p.ssrc) == p.ssrc {
                raw.push(packet);
            }
        }
    }
    if raw.is_empty() {
        return Err(SendError::NoRtp(path.display().to_string()));
    }
    let mut packets = Vec::with_capacity(raw.len());
    let mut at_us = 0u64;
    let mut prev_ts: Option<u32> = None;
    let (mut ts_first, mut ts_last) = (0u32, 0u32);
    for data in raw {
        let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        if let Some(prev) = prev_ts {
            let delta = ts.wrapping_sub(prev) as i32;
            let gap = if delta < 0 { 0 } else { u64::from(delta as u32) * 1_000_000 / 90_000 };
            at_us += if gap > MAX_GAP_US { FRAME_US } else { gap };
        } else {
            ts_first = ts;
        }
        ts_last = ts;
        prev_ts = Some(ts);
        packets.push(TemplatePacket { at_us, data });
    }
    Ok(Template {
        period_us: at_us + FRAME_US,
        seq_span: packets.len() as u16,
        ts_span: ts_last.wrapping_sub(ts_first).wrapping_add(3600),
        packets,
    })
}

enum CameraSocket {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

struct Camera {
    ssrc: Option<u32>,
    offset_us: u64,
    next: usize,
    pass: u32,
    socket: CameraSocket,
    out: Vec<u8>,
}

/// Replays `path` according to `opts`. Returns what was sent.
///
/// The cameras are split over one thread per core, each with its own runtime, so a thousand
/// cameras (~220,000 datagrams/s) are not held to one core by the sender itself (D156).
pub async fn send_file(path: &Path, opts: &SendOptions) -> Result<SendReport, SendError> {
    let template = std::sync::Arc::new(load_template(path)?);
    let count = opts.count.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count).max(1);
    if threads == 1 {
        return send_cameras(&template, opts, (0..count).collect()).await;
    }
    let start = Instant::now();
    // Threads of their own, awaited without blocking this runtime (a test may run the gateway
    // under test on it).
    let mut waits = Vec::with_capacity(threads);
    for t in 0..threads {
        let (template, opts) = (template.clone(), opts.clone());
        // Camera i goes to thread i % threads: each thread's cameras stay staggered.
        let cameras: Vec<usize> = (t..count).step_by(threads).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("send-{t}"))
            .spawn(move || {
                let first = cameras[0];
                let r = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(send_cameras(&template, &opts, cameras)),
                    Err(source) => Err(SendError::Io { camera: first, source }),
                };
                let _ = tx.send(r);
            })
            .map_err(|source| SendError::Io { camera: t, source })?;
        waits.push(rx);
    }
    let mut results = Vec::with_capacity(threads);
    for rx in waits {
        results.push(rx.await.unwrap_or_else(|_| {
            Err(SendError::Io { camera: 0, source: std::io::Error::other("sender thread panicked") })
        }));
    }
    let mut report = SendReport::default();
    for r in results {
        let r = r?;
        report.packets += r.packets;
        report.bytes += r.bytes;
        report.max_late = report.max_late.max(r.max_late);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Sends the cameras numbered `ids` (of `opts.count`) on the current runtime.
async fn send_cameras(template: &Template, opts: &SendOptions, ids: Vec<usize>) -> Result<SendReport, SendError> {
    let count = opts.count.max(1);
    let mut cameras = Vec::with_capacity(ids.len());
    for i in ids {
        let socket = if opts.tcp {
            let s = TcpStream::connect(opts.to).await.map_err(|source| SendError::Io { camera: i, source })?;
            let _ = s.set_nodelay(true);
            CameraSocket::Tcp(s)
        } else {
            let bind: SocketAddr = if opts.to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
            let s = UdpSocket::bind(bind).await.map_err(|source| SendError::Io { camera: i, source })?;
            CameraSocket::Udp(s)
        };
        cameras.push(Camera {
            ssrc: opts.ssrc_base.map(|b| b.wrapping_add(i as u32)),
            offset_us: if opts.flood { 0 } else { i as u64 * FRAME_US / count as u64 },
            next: 0,
            pass: 0,
            socket,
            out: Vec::with_capacity(64 * 1024),
        });
    }
    let loops = opts.loops.max(1);
    let start = Instant::now();
    let deadline = opts.duration.map(|d| start + d);
    let mut report = SendReport::default();
    let mut scratch = Vec::with_capacity(2048);
    loop {
        let now_us = start.elapsed().as_micros() as u64;
        let mut next_due = u64::MAX;
        let mut active = 0;
        for (i, cam) in cameras.iter_mut().enumerate() {
            // In flood mode each camera sends a burst per round so cameras interleave.
            let mut budget = if opts.flood { 64 } else { usize::MAX };
            while cam.pass < loops && budget > 0 {
                budget -= 1;
                let p = &template.packets[cam.next];
                let due = cam.offset_us + u64::from(cam.pass) * template.period_us + p.at_us;
                if !opts.flood && due > now_us {
                    next_due = next_due.min(due);
                    break;
                }
                if !opts.flood {
                    report.max_late = report.max_late.max(Duration::from_micros(now_us - due));
                }
                scratch.clear();
                scratch.extend_from_slice(&p.data);
                rewrite(&mut scratch, cam.ssrc, cam.pass, template);
                report.packets += 1;
                report.bytes += scratch.len() as u64;
                match &mut cam.socket {
                    CameraSocket::Udp(s) => {
                        // Loopback UDP can report ENOBUFS/ECONNREFUSED under load: a lost
                        // datagram, like on a real network, not a reason to stop. The
                        // non-blocking send skips a readiness future per datagram.
                        if let Err(e) = s.try_send_to(&scratch, opts.to) {
                            if e.kind() == std::io::ErrorKind::WouldBlock {
                                let _ = s.send_to(&scratch, opts.to).await;
                            }
                        }
                    }
                    CameraSocket::Tcp(_) => {
                        cam.out.extend_from_slice(&(scratch.len() as u16).to_be_bytes());
                        cam.out.extend_from_slice(&scratch);
                    }
                }
                cam.next += 1;
                if cam.next == template.packets.len() {
                    cam.next = 0;
                    cam.pass += 1;
                }
            }
            if let CameraSocket::Tcp(s) = &mut cam.socket {
                if !cam.out.is_empty() {
                    s.write_all(&cam.out).await.map_err(|source| SendError::Io { camera: i, source })?;
                    cam.out.clear();
                }
            }
            if cam.pass < loops {
                active += 1;
            }
        }
        if active == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if !opts.flood && next_due != u64::MAX {
            tokio::time::sleep_until((start + Duration::from_micros(next_due)).into()).await;
        }
    }
    report.elapsed = start.elapsed();
    if opts.tcp && !opts.linger.is_zero() {
        tokio::time::sleep(opts.linger).await;
    }
    for cam in &mut cameras {
        if let CameraSocket::Tcp(s) = &mut cam.socket {
            let _ = s.shutdown().await;
        }
    }
    Ok(report)
}

/// Gives a template packet this camera's SSRC and this pass's sequence numbers and timestamps.
fn rewrite(pkt: &mut [u8], ssrc: Option<u32>, pass: u32, t: &Template) {
    if let Some(ssrc) = ssrc {
        pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
    if pass > 0 {
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]).wrapping_add(t.seq_span.wrapping_mul(pass as u16));
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]).wrapping_add(t.ts_span.wrapping_mul(pass));
        pkt[4..8].copy_from_slice(&ts.to_be_bytes());
    }
}
