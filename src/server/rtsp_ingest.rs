//! RTSP publishers (ANNOUNCE/RECORD) on the RTSP port: the publish rules, the receiving side of
//! a recording session (interleaved `$` packets and UDP datagrams), and the hand-over of frames
//! to [`Publisher`]. The RTSP connection task in `server::rtsp` owns one [`Publishing`] per
//! publisher; this module keeps that task's additions in one place (D76).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::publish::Publisher;
use super::rtmp::reserved_prefix;
use super::rtp::RtpShared;
use crate::auth::{self, AuthConfig};
use crate::frame::{Codec, Frame};
use crate::hub::{Hub, PublishError, Source, Stream, Takeover, Transport};
use crate::proto::rtp::reorder::{ReorderBuffer, Reordered};
use crate::proto::rtp::RtpPacket;
use crate::proto::rtp_depack::{DepackStats, Depacketizer};
use crate::proto::rtsp::{RecordTrack, Refusal, TrackTransport};
use crate::util::RateLimit;

/// Reorder window of a UDP track (packets) and the longest a packet waits for a missing one.
const REORDER_PACKETS: usize = 256;
const REORDER_DELAY_US: u64 = 100_000;
/// Datagrams, and their bytes, queued from the UDP readers to the connection task; beyond either
/// they are dropped (counted), as a full socket buffer would drop them.
const UDP_QUEUE: usize = 1024;
const UDP_QUEUE_BYTES: usize = 2 << 20;
/// Largest datagram read (an RTP packet over a 1500-byte MTU, with room for jumbo senders).
const MAX_DATAGRAM: usize = 9000;

/// Rate limit of the warnings about refused publishers.
static PUBLISH_LOG: std::sync::Mutex<RateLimit> = std::sync::Mutex::new(RateLimit::new(Duration::from_secs(1)));

/// What every RTSP connection shares for publishing.
pub struct RtspIngest {
    /// Reloadable (SIGHUP).
    pub auth: auth::SharedAuth,
    pub media: Arc<RtpShared>,
    /// UDP receive port pairs bound for publishers now, and the bound (`rtsp.max_record_udp_tracks`).
    udp_tracks: AtomicUsize,
    max_udp_tracks: usize,
    publishers: AtomicUsize,
    publish_refused: AtomicU64,
    auth_refused: AtomicU64,
    udp_refused: AtomicU64,
    silent_closed: AtomicU64,
}

/// Counters of the RTSP publishers (`RtspIngest::snapshot`).
#[derive(Debug, Clone, Serialize)]
pub struct RtspIngestCounters {
    pub publishers: usize,
    pub udp_tracks: usize,
    pub max_udp_tracks: usize,
    /// ANNOUNCEs refused: name live or reserved, credentials, stream limit.
    pub publish_refused: u64,
    pub auth_refused: u64,
    /// UDP SETUPs refused because `max_record_udp_tracks` port pairs were bound.
    pub udp_refused: u64,
    /// Publishers closed for sending nothing for `rtsp.publish_timeout`.
    pub silent_closed: u64,
}

impl RtspIngest {
    pub fn new(auth: &AuthConfig, media: Arc<RtpShared>, max_udp_tracks: usize) -> Arc<RtspIngest> {
        Arc::new(RtspIngest {
            auth: auth::SharedAuth::new(auth.clone()),
            media,
            udp_tracks: AtomicUsize::new(0),
            max_udp_tracks,
            publishers: AtomicUsize::new(0),
            publish_refused: AtomicU64::new(0),
            auth_refused: AtomicU64::new(0),
            udp_refused: AtomicU64::new(0),
            silent_closed: AtomicU64::new(0),
        })
    }

    pub fn snapshot(&self) -> RtspIngestCounters {
        RtspIngestCounters {
            publishers: self.publishers.load(Ordering::Relaxed),
            udp_tracks: self.udp_tracks.load(Ordering::Relaxed),
            max_udp_tracks: self.max_udp_tracks,
            publish_refused: self.publish_refused.load(Ordering::Relaxed),
            auth_refused: self.auth_refused.load(Ordering::Relaxed),
            udp_refused: self.udp_refused.load(Ordering::Relaxed),
            silent_closed: self.silent_closed.load(Ordering::Relaxed),
        }
    }

    /// Takes one UDP port-pair slot for a publisher's track, if the bound allows.
    pub fn udp_slot(self: &Arc<Self>) -> Option<UdpSlot> {
        let taken = self
            .udp_tracks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.max_udp_tracks).then_some(n + 1));
        match taken {
            Ok(_) => Some(UdpSlot(self.clone())),
            Err(_) => {
                self.udp_refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The publish rules of an ANNOUNCE (the same as an RTMP publish): credentials, reserved
    /// prefixes, no take-over of a live name. Creates the hub stream. `cc_allowed`: the control
    /// center's `on_publish` hook let it in, so the `[auth]` credential is not asked (D97).
    pub fn announce(
        &self,
        hub: &Hub,
        stream: &str,
        query: &str,
        peer: SocketAddr,
        cc_allowed: bool,
    ) -> Result<Arc<Stream>, Refusal> {
        let r = self.check(hub, stream, query, peer, cc_allowed);
        if let Err(r) = &r {
            self.publish_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = PUBLISH_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now()) {
                warn!(stream, %peer, status = r.status, suppressed, "RTSP publish refused: {}", r.reason);
            }
        }
        r
    }

    fn check(
        &self,
        hub: &Hub,
        stream: &str,
        query: &str,
        peer: SocketAddr,
        cc_allowed: bool,
    ) -> Result<Arc<Stream>, Refusal> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let checked = if cc_allowed {
            Ok(auth::Granted::Open)
        } else {
            auth::check(&self.auth, auth::Action::Publish, stream, query, peer.ip(), now)
        };
        if let Err(e) = checked {
            self.auth_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal { status: 401, reason: format!("authentication failed: {e}") });
        }
        if let Some(prefix) = reserved_prefix(stream) {
            return Err(Refusal { status: 403, reason: format!("names under {prefix} belong to GB28181/RTP sources") });
        }
        let source = Source { transport: Transport::Rtsp, peer, ssrc: None };
        hub.create(stream, source, Takeover::Refuse).map_err(|e| {
            let status = match e {
                PublishError::NameTaken { .. } => 403,
                PublishError::TooManyStreams(_) => 503,
            };
            Refusal { status, reason: e.to_string() }
        })
    }
}

/// One UDP port pair of a publisher, counted against `max_record_udp_tracks` until dropped.
pub struct UdpSlot(Arc<RtspIngest>);

impl Drop for UdpSlot {
    fn drop(&mut self) {
        self.0.udp_tracks.fetch_sub(1, Ordering::Relaxed);
    }
}

struct InTrack {
    index: usize,
    depack: Depacketizer,
    /// UDP only: packets may arrive out of order (RFC 3550 A.1).
    reorder: Option<ReorderBuffer>,
}

/// A recording session: the stream's publisher and one depacketizer per announced track.
pub struct Publishing {
    publisher: Publisher,
    ingest: Arc<RtspIngest>,
    peer: SocketAddr,
    tracks: Vec<InTrack>,
    /// Interleaved channel -> index into `tracks` (RTP), or `RTCP` for a track's RTCP channel.
    channels: [u8; 256],
    udp_rx: Option<mpsc::Receiver<(usize, Bytes)>>,
    readers: Vec<JoinHandle<()>>,
    udp_dropped: Arc<AtomicU64>,
    foreign_datagrams: Arc<AtomicU64>,
    /// Bytes in the UDP queue (bounded by [`UDP_QUEUE_BYTES`]).
    queued: Arc<AtomicUsize>,
    last_media: Instant,
    bad_packets: u64,
    frames: Vec<Frame>,
    reordered: Vec<Reordered>,
    epoch: Instant,
    log: RateLimit,
}

const NONE: u8 = 255;
const RTCP: u8 = 254;

impl Publishing {
    /// Starts receiving: `udp` gives each UDP track's receiving RTP socket.
    pub fn start(
        stream: Arc<Stream>,
        ingest: Arc<RtspIngest>,
        peer: SocketAddr,
        tracks: &[RecordTrack],
        udp: impl Fn(usize) -> Option<Arc<UdpSocket>>,
        activity: impl Fn() + Send + Sync + Clone + 'static,
    ) -> Publishing {
        info!(stream = %stream.name, %peer, tracks = tracks.len(), "RTSP publish");
        ingest.publishers.fetch_add(1, Ordering::Relaxed);
        let mut channels = [NONE; 256];
        let mut ins = Vec::new();
        let udp_dropped = Arc::new(AtomicU64::new(0));
        let foreign = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        let (tx, rx) = mpsc::channel(UDP_QUEUE);
        for t in tracks {
            // ANNOUNCE kept only tracks a depacketizer exists for.
            let Ok(depack) = Depacketizer::new(&t.media) else { continue };
            let k = ins.len() as u8;
            let mut reorder = None;
            match t.transport {
                TrackTransport::Tcp { rtp_channel, rtcp_channel } => {
                    // A track's RTP channel wins over another's RTCP channel (the session refused
                    // two tracks on one RTP channel).
                    if channels[rtcp_channel as usize] == NONE {
                        channels[rtcp_channel as usize] = RTCP;
                    }
                    channels[rtp_channel as usize] = k;
                }
                TrackTransport::Udp { .. } => {
                    reorder = Some(ReorderBuffer::new(REORDER_PACKETS, REORDER_DELAY_US));
                    if let Some(sock) = udp(t.index) {
                        let counters = UdpCounters {
                            dropped: udp_dropped.clone(),
                            foreign: foreign.clone(),
                            queued: queued.clone(),
                        };
                        readers.push(tokio::spawn(udp_reader(
                            sock,
                            peer,
                            k as usize,
                            tx.clone(),
                            counters,
                            activity.clone(),
                        )));
                    }
                }
            }
            ins.push(InTrack { index: t.index, depack, reorder });
        }
        // A declared G.711 rate is a hint the media stage's detector may still correct (D55).
        for t in &ins {
            if matches!(t.depack.codec(), Codec::G711A | Codec::G711U) {
                ingest.media.hint_g711_rate(&stream.name, t.depack.clock_rate());
            }
        }
        Publishing {
            publisher: Publisher::new(stream, &ingest.media),
            ingest,
            peer,
            tracks: ins,
            channels,
            udp_rx: (!readers.is_empty()).then_some(rx),
            readers,
            udp_dropped,
            foreign_datagrams: foreign,
            queued,
            last_media: Instant::now(),
            bad_packets: 0,
            frames: Vec::new(),
            reordered: Vec::new(),
            epoch: Instant::now(),
            log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    pub fn name(&self) -> &str {
        &self.publisher.stream.name
    }

    /// How long no media arrived.
    pub fn silent_for(&self) -> Duration {
        self.last_media.elapsed()
    }

    /// Counts a publisher closed for silence.
    pub fn count_silent(&self) {
        self.ingest.silent_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// The next datagram from the UDP readers (pending forever without UDP tracks).
    pub async fn recv_udp(&mut self) -> Option<(usize, Bytes)> {
        let Some(rx) = self.udp_rx.as_mut() else { return std::future::pending().await };
        let got = rx.recv().await;
        if let Some((_, d)) = &got {
            self.queued.fetch_sub(d.len(), Ordering::Relaxed);
        }
        if got.is_none() {
            // Every reader ended (socket error): stop polling a closed queue.
            self.udp_rx = None;
        }
        got
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// An interleaved `$` packet from the RTSP connection.
    pub fn interleaved(&mut self, channel: u8, data: Bytes) {
        match self.channels[channel as usize] {
            NONE => self.bad("interleaved packet on a channel no track was set up on"),
            RTCP => {}
            k => self.packet(k as usize, data),
        }
    }

    /// One RTP packet of track `k` (UDP through its reorder buffer).
    pub fn packet(&mut self, k: usize, data: Bytes) {
        if k >= self.tracks.len() {
            return;
        }
        self.publisher.count_wire_bytes(data.len());
        // Raw RTP recording (D89): every track's packets as they arrived, told apart in the file
        // by payload type and SSRC.
        if let Some(rec) = self.publisher.stream.record() {
            rec.packet(&data);
        }
        let pkt = match RtpPacket::parse(data) {
            Ok(p) => p,
            // RTCP multiplexed on the RTP channel (RFC 5761) is not media.
            Err(crate::proto::rtp::RtpError::Rtcp(_)) => return,
            Err(e) => return self.bad(&format!("bad RTP packet: {e}")),
        };
        // Only media keeps a publisher alive (`publish_timeout`), not garbage or reports.
        self.last_media = Instant::now();
        let now = self.now_us();
        let t = &mut self.tracks[k];
        match t.reorder.as_mut() {
            None => t.depack.push(&pkt, &mut self.frames),
            Some(rb) => {
                rb.push(pkt, now, &mut self.reordered);
                Self::drain_reordered(t, &mut self.reordered, &mut self.frames);
            }
        }
        self.publish();
    }

    fn drain_reordered(t: &mut InTrack, reordered: &mut Vec<Reordered>, frames: &mut Vec<Frame>) {
        for r in reordered.drain(..) {
            match r {
                Reordered::Packet(p) => t.depack.push(&p, frames),
                // The depacketizer sees the gap in the sequence numbers itself.
                Reordered::Lost { .. } => {}
                Reordered::Reset => t.depack.reset(),
            }
        }
    }

    /// When the earliest reorder buffer wants [`Self::handle_timeout`], as an offset from now.
    pub fn next_timeout(&self) -> Option<Duration> {
        let now = self.now_us();
        self.tracks
            .iter()
            .filter_map(|t| t.reorder.as_ref()?.poll_timeout())
            .min()
            .map(|at| Duration::from_micros(at.saturating_sub(now)))
    }

    /// Releases packets that waited long enough for a missing one.
    pub fn handle_timeout(&mut self) {
        let now = self.now_us();
        for t in &mut self.tracks {
            if let Some(rb) = t.reorder.as_mut() {
                rb.handle_timeout(now, &mut self.reordered);
                Self::drain_reordered(t, &mut self.reordered, &mut self.frames);
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        if self.frames.is_empty() {
            return;
        }
        let (mut lost, mut late, mut dropped, mut oversize, mut resets, mut reordered) = (0, 0, 0, 0, 0, 0);
        for t in &self.tracks {
            let d = t.depack.stats();
            (lost, late, dropped, oversize, resets) =
                (lost + d.lost, late + d.late, dropped + d.dropped_aus, oversize + d.oversize, resets + d.restarts);
            if let Some(rb) = &t.reorder {
                let r = rb.stats();
                reordered += r.reordered;
                late += r.late + r.duplicates;
            }
        }
        let queue_drops = self.udp_dropped.load(Ordering::Relaxed);
        let foreign = self.foreign_datagrams.load(Ordering::Relaxed);
        self.publisher.update_transport_stats(|s| {
            (s.lost, s.late, s.reordered, s.seq_resets) = (lost, late, reordered, resets);
            (s.dropped_frames, s.oversize_drops, s.queue_drops, s.foreign_packets) =
                (dropped, oversize, queue_drops, foreign);
        });
        for f in self.frames.drain(..) {
            self.publisher.frame(f);
        }
    }

    fn bad(&mut self, what: &str) {
        self.bad_packets += 1;
        if let Some(suppressed) = self.log.check(Instant::now()) {
            warn!(stream = %self.publisher.stream.name, peer = %self.peer, suppressed, "RTSP publish: {what}");
        }
    }

    /// Per-track depacketizer counters (announced media index, counters).
    pub fn stats(&self) -> Vec<(usize, DepackStats)> {
        self.tracks.iter().map(|t| (t.index, t.depack.stats().clone())).collect()
    }

    /// The publisher left: the stream ends.
    pub fn finish(mut self, hub: &Hub, why: &str) {
        for r in self.readers.drain(..) {
            r.abort();
        }
        for t in &mut self.tracks {
            if let Some(rb) = t.reorder.as_mut() {
                rb.flush(&mut self.reordered);
                Self::drain_reordered(t, &mut self.reordered, &mut self.frames);
            }
        }
        self.publish();
        let tracks: Vec<String> = self
            .tracks
            .iter()
            .map(|t| {
                let s = t.depack.stats();
                format!(
                    "{}: {} packets, {} lost, {} frames, {} AUs dropped",
                    t.depack.codec(),
                    s.packets,
                    s.lost,
                    s.frames,
                    s.dropped_aus
                )
            })
            .collect();
        info!(
            stream = %self.publisher.stream.name,
            peer = %self.peer,
            bad_packets = self.bad_packets,
            udp_dropped = self.udp_dropped.load(Ordering::Relaxed),
            foreign_datagrams = self.foreign_datagrams.load(Ordering::Relaxed),
            "RTSP publish ended ({why}): {}",
            tracks.join("; ")
        );
        self.ingest.publishers.fetch_sub(1, Ordering::Relaxed);
        self.publisher.finish(hub);
    }
}

/// Reads one UDP track's RTP socket; datagrams from another host than the publisher's are
/// dropped (counted), so nobody else can inject into the stream.
struct UdpCounters {
    dropped: Arc<AtomicU64>,
    foreign: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
}

async fn udp_reader(
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    k: usize,
    tx: mpsc::Sender<(usize, Bytes)>,
    c: UdpCounters,
    activity: impl Fn(),
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
        if from.ip() != peer.ip() {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        activity();
        if c.queued.load(Ordering::Relaxed) + n > UDP_QUEUE_BYTES {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        c.queued.fetch_add(n, Ordering::Relaxed);
        match tx.try_send((k, Bytes::copy_from_slice(&buf[..n]))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                c.queued.fetch_sub(n, Ordering::Relaxed);
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
