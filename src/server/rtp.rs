//! RTP on ONE port: UDP demultiplexed by SSRC, TCP (RFC 4571) demultiplexed by connection.
//!
//! UDP: one thread owns the socket and a routing table SSRC -> stream (D152, D153). It reads in
//! batches (`udp_batch_wait`) and ingests each datagram itself: parsed once (zero-copy), then
//! reordered, demuxed and published under the stream's lock, with no queue and no task wake-up
//! per packet. Each stream's task keeps its timers (reorder deadline, idle flush, stats, RTCP).
//!
//! An unknown SSRC is put on probation before a stream is created for it: it must send a second
//! packet with a nearby sequence number. A flood of random SSRCs (one packet each) therefore
//! creates no streams and cannot lock real cameras out of the stream limit; what the probation
//! table holds is bounded and evicted oldest-first.
//!
//! TCP: each accepted connection is one stream, named by the SSRC of its first packet, driven by
//! the connection's own task (the camera connects to us: GB28181 "TCP passive").
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::{AudioConfig, AudioOutput};
use crate::config::{RtcpMode, RtpConfig, UnknownSsrc};
use crate::hub::{Hub, Source, Stream, Takeover, Transport};
use crate::media::ingest::StreamIngest;
use crate::media::pipeline::MediaPipeline;
use crate::proto::rtcp;
use crate::proto::rtp::tcp::TcpFramer;
use crate::proto::rtp::{RtpError, RtpPacket};
use crate::server::audio_pool::AudioPool;
use crate::util::RateLimit;

/// How often a stream task refreshes the figures the API shows.
const STATS_INTERVAL: Duration = Duration::from_millis(250);
/// A stream quiet for this long delivers its pending frame (see `StreamIngest::flush_idle`).
const IDLE_FLUSH: Duration = Duration::from_millis(200);
/// Unknown SSRCs waiting for their second packet.
const PROBATION_CAPACITY: usize = 1024;
/// Datagrams kept per SSRC on probation (handed to the stream once it is created).
const PROBATION_PACKETS: usize = 4;
/// SSRCs one source IP may have on probation at once (a quarter of the table).
const PROBATION_PER_SOURCE: usize = PROBATION_CAPACITY / 4;
/// Payload bytes probation holds in all (1024 x 4 full-size datagrams would be 256 MiB).
const PROBATION_BYTES: usize = 4 << 20;
/// Unknown SSRCs remembered for the API in `report` mode.
const REPORTED_CAPACITY: usize = 256;

/// Server-wide counters (per-stream figures live in the hub).
#[derive(Debug, Default)]
pub struct RtpCounters {
    pub datagrams: AtomicU64,
    pub datagram_bytes: AtomicU64,
    /// Datagrams or TCP frames that are not RTP (too short, wrong version, bad padding).
    pub bad_packets: AtomicU64,
    pub rtcp: AtomicU64,
    /// Unknown SSRCs seen in `report` and `drop` modes (packets).
    pub unknown_ssrc_packets: AtomicU64,
    /// Unknown SSRCs that never sent a second packet before being evicted from probation.
    pub probation_evicted: AtomicU64,
    /// Streams refused because `max_streams` was reached.
    pub streams_refused: AtomicU64,
    pub streams_created: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub tcp_resyncs: AtomicU64,
    /// Packets dropped because a stream's queue was full.
    pub queue_drops: AtomicU64,
    /// Datagrams carrying a live UDP stream's SSRC from another source address, dropped (a
    /// spoofer, or a second sender of the same SSRC nobody expected).
    pub foreign_ssrc_packets: AtomicU64,
    /// UDP streams whose source moved to a new address after the old one went quiet.
    pub ssrc_rebinds: AtomicU64,
    /// Two sessions' media with the same SSRC (two channels of one device answering the same
    /// `y=`), told apart by source address.
    pub ssrc_clashes: AtomicU64,
    /// Streams refused because their name is live under another source (hub `NameTaken`): an
    /// RTP/TCP connection sending a live camera's SSRC from another address, for example.
    pub takeovers_refused: AtomicU64,
    /// Media for a GB session (announced SSRC) from an address other than the one the device
    /// signalled from: dropped (UDP) or the connection closed (TCP).
    pub foreign_source_refused: AtomicU64,
    /// Unannounced streams refused because their budget (`max_unknown_streams`, or
    /// `max_unknown_per_source` for one IP) was spent on streams that are still sending.
    pub unknown_refused: AtomicU64,
    /// Unannounced streams ended to make room (idle ones first).
    pub unknown_evicted: AtomicU64,
    /// Packets dropped, or partial access units shed, because `max_buffered_bytes` was reached.
    pub budget_drops: AtomicU64,
    /// RTP/TCP connections closed because a frame (the first, or a later one) did not complete
    /// within `tcp_frame_timeout`: slow-drip clients.
    pub tcp_slow_closed: AtomicU64,
    /// RTCP receiver reports sent to sources (D91).
    pub rtcp_rr_sent: AtomicU64,
    /// RTCP sender reports received from sources.
    pub rtcp_sr_received: AtomicU64,
    /// RTCP datagrams whose sender SSRC matched no live stream.
    pub rtcp_unrouted: AtomicU64,
    /// UDP receive calls that returned datagrams (D173): UDP datagrams (RTP and RTCP) over this
    /// is the batch `recvmmsg` takes.
    pub udp_receive_calls: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RtpCountersSnapshot {
    pub datagrams: u64,
    pub datagram_bytes: u64,
    pub bad_packets: u64,
    pub rtcp: u64,
    pub unknown_ssrc_packets: u64,
    pub probation_evicted: u64,
    pub streams_refused: u64,
    pub streams_created: u64,
    pub tcp_connections: u64,
    pub tcp_refused: u64,
    pub tcp_resyncs: u64,
    pub queue_drops: u64,
    pub foreign_ssrc_packets: u64,
    pub ssrc_rebinds: u64,
    pub ssrc_clashes: u64,
    pub takeovers_refused: u64,
    pub foreign_source_refused: u64,
    pub unknown_streams: usize,
    pub unknown_refused: u64,
    pub unknown_evicted: u64,
    pub budget_drops: u64,
    pub tcp_slow_closed: u64,
    pub rtcp_rr_sent: u64,
    pub rtcp_sr_received: u64,
    pub rtcp_unrouted: u64,
    pub udp_receive_calls: u64,
    /// Bytes all RTP streams hold now: queued, reordered, reassembly, probation.
    pub buffered_bytes: usize,
    pub max_buffered_bytes: usize,
    pub unknown_ssrcs: Vec<UnknownSsrcReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnknownSsrcReport {
    #[serde(serialize_with = "serialize_ssrc")]
    pub ssrc: u32,
    pub peer: SocketAddr,
    pub packets: u64,
}

enum Claim {
    Bound(String),
    Ambiguous,
    Nobody,
}

/// The `unknown_ssrc` callback for an SSRC nobody announced, whatever `[rtp] unknown_ssrc` does
/// with its packets (D96); the notifier lets one SSRC through once per report interval.
fn notify_unknown(notifier: &crate::notify::Notifier, ssrc: u32, peer: SocketAddr, transport: &str) {
    if notifier.wants(crate::notify::EventKind::UnknownSsrc) {
        notifier.emit(crate::notify::Event::UnknownSsrc {
            ssrc: format!("{ssrc:010}"),
            source: peer,
            transport: transport.into(),
            first_seen: std::time::SystemTime::now(),
        });
    }
}

/// Milliseconds on a process-wide monotonic clock (for activity stamps shared between tasks).
fn mono_ms() -> u64 {
    mono_ms_at(Instant::now())
}

/// [`mono_ms`] at `at`: per packet, the time the receive batch was taken, not one more clock read.
fn mono_ms_at(at: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_millis() as u64
}

/// Over the global byte budget, a stream holding more than this for reassembly sheds it.
const SHED_ABOVE: usize = 1 << 20;

/// An unannounced stream quiet this long may be ended to make room for another.
const UNKNOWN_IDLE_MS: u64 = 1000;

/// Sessions expecting media by source IP (bounded; oldest dropped first).
const EXPECTED_CAPACITY: usize = 4096;

struct ExpectedSource {
    ip: std::net::IpAddr,
    tcp: bool,
    name: String,
    /// UDP: the port the device answered (SDP `m=`), where it normally sends from.
    port: Option<u16>,
}

/// State shared between the RTP tasks and the API.
pub struct RtpShared {
    pub counters: RtpCounters,
    /// SSRCs announced by signalling (INVITE), mapped to the stream name to publish under.
    announced: RwLock<HashMap<u32, String>>,
    /// Sessions waiting for media from a source IP whatever its SSRC (Dahua sends SSRC 0,
    /// Hikvision its own): the first unknown SSRC from that IP is bound to the session.
    expected: std::sync::Mutex<VecDeque<ExpectedSource>>,
    reported: std::sync::Mutex<VecDeque<UnknownSsrcReport>>,
    /// `[audio]`: what each stream's media stage does with audio.
    pub audio: AudioConfig,
    /// Transcoding workers, started with the first stream that needs them.
    audio_pool: std::sync::OnceLock<Arc<AudioPool>>,
    /// G.711 sample rates announced by signalling (SDP `f=`), by stream name.
    g711_rates: std::sync::Mutex<HashMap<String, u32>>,
    /// The IP each GB session's device signalled from, by stream name: its media must come
    /// from there (issue 8, hole 2). Kept until the session is withdrawn, so a reconnect works.
    signalled: std::sync::Mutex<HashMap<String, std::net::IpAddr>>,
    /// One rate limit for the refusals a peer can trigger (log lines, not counters).
    refusal_log: std::sync::Mutex<RateLimit>,
    /// Live streams of SSRCs nobody announced: they have their own budget, so announced
    /// sessions always find a slot (issue 8, hole 9).
    unknown: std::sync::Mutex<Vec<UnknownStream>>,
    /// `[rtp] max_unknown_streams` and `max_unknown_per_source`.
    unknown_limits: std::sync::Mutex<(usize, usize)>,
    /// Bytes all RTP streams hold (queues, reorder buffers, reassembly, probation), and the
    /// global budget for them (`[rtp] max_buffered_bytes`; issue 8, holes 7, 16 and 18).
    buffered: std::sync::atomic::AtomicUsize,
    max_buffered: std::sync::atomic::AtomicUsize,
    /// What each GB session's SDP answer said about RTCP, by stream name (D91).
    rtcp_hints: std::sync::Mutex<HashMap<String, RtcpHint>>,
    /// The UDP socket, for the stream tasks' receiver reports (sent from the RTP port).
    udp_socket: std::sync::OnceLock<Arc<std::net::UdpSocket>>,
}

/// A session's SDP answer on RTCP: `a=rtcp` (RFC 3605) and `a=rtcp-mux` (RFC 5761).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpHint {
    pub addr: Option<SocketAddr>,
    pub mux: bool,
}

struct UnknownStream {
    ip: std::net::IpAddr,
    stream: Arc<Stream>,
    stats: Arc<RouteStats>,
}

impl RtpShared {
    pub fn new() -> Arc<RtpShared> {
        Self::with_audio(AudioConfig::default())
    }

    pub fn with_audio(audio: AudioConfig) -> Arc<RtpShared> {
        Arc::new(RtpShared {
            counters: RtpCounters::default(),
            announced: RwLock::new(HashMap::new()),
            expected: std::sync::Mutex::new(VecDeque::new()),
            reported: std::sync::Mutex::new(VecDeque::new()),
            audio,
            audio_pool: std::sync::OnceLock::new(),
            g711_rates: std::sync::Mutex::new(HashMap::new()),
            signalled: std::sync::Mutex::new(HashMap::new()),
            refusal_log: std::sync::Mutex::new(RateLimit::new(Duration::from_secs(10))),
            unknown: std::sync::Mutex::new(Vec::new()),
            unknown_limits: std::sync::Mutex::new({
                let d = RtpConfig::default();
                (d.max_unknown_streams, d.max_unknown_per_source)
            }),
            buffered: std::sync::atomic::AtomicUsize::new(0),
            max_buffered: std::sync::atomic::AtomicUsize::new(RtpConfig::default().max_buffered_bytes),
            rtcp_hints: std::sync::Mutex::new(HashMap::new()),
            udp_socket: std::sync::OnceLock::new(),
        })
    }

    /// The G.711 rate signalling announced for stream `name` (SDP `f=`): a hint for that stream's
    /// next media stage, which detection still corrects (`[audio] g711_rate` in the config wins).
    pub fn hint_g711_rate(&self, name: &str, rate: u32) {
        let mut rates = self.g711_rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() < EXPECTED_CAPACITY || rates.contains_key(name) {
            rates.insert(name.to_string(), rate);
        }
    }

    /// The transcoding pool's load, once it has started (D118).
    pub fn audio_load(&self) -> Option<crate::server::audio_pool::AudioLoad> {
        self.audio_pool.get().map(|p| p.load())
    }

    /// A stream's media stage; its audio is transcoded on the worker pool, off the reactor.
    pub fn media_pipeline(&self, stream: &Arc<Stream>) -> MediaPipeline {
        let offload = match self.audio.output {
            AudioOutput::Passthrough => None,
            AudioOutput::Aac => {
                self.audio_pool.get_or_init(AudioPool::for_this_machine).stream(stream.clone(), &self.audio)
            }
        };
        let mut pipeline = match offload {
            Some(offload) => MediaPipeline::with_offload(&self.audio, offload),
            None => MediaPipeline::new(&self.audio),
        };
        if let Some(rate) = self.g711_rates.lock().unwrap_or_else(|e| e.into_inner()).get(&stream.name) {
            pipeline.set_g711_rate(*rate);
        }
        pipeline
    }

    /// Announces that media with `ssrc` is expected and should be published as `name`.
    pub fn announce(&self, ssrc: u32, name: String) {
        self.announced.write().unwrap_or_else(|e| e.into_inner()).insert(ssrc, name);
    }

    pub fn withdraw(&self, ssrc: u32) {
        self.announced.write().unwrap_or_else(|e| e.into_inner()).remove(&ssrc);
    }

    /// Withdraws every announcement and expected source of stream `name` (session ended).
    /// What stream `name`'s SDP answer said about RTCP (see [`RtcpHint`]).
    pub fn expect_rtcp(&self, name: &str, addr: Option<SocketAddr>, mux: bool) {
        let mut hints = self.rtcp_hints.lock().unwrap_or_else(|e| e.into_inner());
        if hints.len() < EXPECTED_CAPACITY || hints.contains_key(name) {
            hints.insert(name.to_string(), RtcpHint { addr, mux });
        }
    }

    pub fn rtcp_hint(&self, name: &str) -> Option<RtcpHint> {
        self.rtcp_hints.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied()
    }

    pub fn withdraw_name(&self, name: &str) {
        self.rtcp_hints.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.announced.write().unwrap_or_else(|e| e.into_inner()).retain(|_, n| n != name);
        self.g711_rates.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.signalled.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.forget_expected(name);
    }

    fn signalled_ip(&self, name: &str) -> Option<std::net::IpAddr> {
        self.signalled.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied()
    }

    /// Whether media for `name` may come from `ip`: a GB session's media comes from the address
    /// its device signalled from (`expect_source`); other streams have no such binding. A refusal
    /// is counted and logged (rate-limited).
    fn source_allowed(&self, name: &str, peer: SocketAddr) -> bool {
        let signalled = self.signalled.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied();
        match signalled {
            Some(ip) if ip != peer.ip() => {
                self.counters.foreign_source_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) =
                    self.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now())
                {
                    warn!(stream = name, %peer, signalled = %ip, suppressed, "media for a GB session from an address its device did not signal from: refused");
                }
                false
            }
            _ => true,
        }
    }

    /// Reserves `n` bytes of the global budget; false (and nothing reserved) when it is spent.
    fn reserve(&self, n: usize) -> bool {
        let max = self.max_buffered.load(Ordering::Relaxed);
        let prev = self.buffered.fetch_add(n, Ordering::Relaxed);
        if prev.saturating_add(n) > max {
            self.buffered.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, n: usize) {
        self.buffered.fetch_sub(n, Ordering::Relaxed);
    }

    /// Sets the budget of unannounced streams (`serve` does it from the config).
    pub fn set_unknown_limits(&self, total: usize, per_source: usize) {
        *self.unknown_limits.lock().unwrap_or_else(|e| e.into_inner()) = (total, per_source);
    }

    fn now_ms(&self) -> u64 {
        mono_ms()
    }

    fn unknown_live(&self) -> usize {
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        u.retain(|x| !x.stream.is_closed());
        u.len()
    }

    /// Whether an unannounced stream from `ip` may start. At the budget (all of them, or those of
    /// this IP), the stream of that group that has been quiet longest is ended to make room if
    /// it has been quiet for a second; otherwise the new one is refused (counted).
    fn admit_unknown(&self, ip: std::net::IpAddr, hub: &Hub) -> bool {
        let (total, per_source) = *self.unknown_limits.lock().unwrap_or_else(|e| e.into_inner());
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        u.retain(|x| !x.stream.is_closed());
        let from_ip = u.iter().filter(|x| x.ip == ip).count();
        // The group that must give way: this IP's streams, or everyone's.
        let only_ip = if from_ip >= per_source {
            Some(ip)
        } else if u.len() >= total {
            None
        } else {
            return true;
        };
        let group = |x: &UnknownStream| only_ip.is_none_or(|ip| x.ip == ip);
        let now = self.now_ms();
        let idlest = u
            .iter()
            .enumerate()
            .filter(|(_, x)| group(x))
            .min_by_key(|(_, x)| x.stats.last_packet_ms.load(Ordering::Relaxed))
            .map(|(i, x)| (i, now.saturating_sub(x.stats.last_packet_ms.load(Ordering::Relaxed))));
        match idlest {
            Some((i, quiet_ms)) if quiet_ms >= UNKNOWN_IDLE_MS => {
                let evicted = u.swap_remove(i);
                drop(u);
                self.counters.unknown_evicted.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) =
                    self.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now())
                {
                    info!(stream = %evicted.stream.name, quiet_ms, suppressed, "unannounced stream ended to make room");
                }
                hub.remove(&evicted.stream);
                true
            }
            _ => {
                drop(u);
                self.counters.unknown_refused.fetch_add(1, Ordering::Relaxed);
                self.counters.streams_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) =
                    self.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now())
                {
                    warn!(%ip, suppressed, total, per_source, "unannounced stream refused: its budget is spent");
                }
                false
            }
        }
    }

    fn track_unknown(&self, ip: std::net::IpAddr, stream: &Arc<Stream>, stats: &Arc<RouteStats>) {
        stats.last_packet_ms.store(self.now_ms(), Ordering::Relaxed);
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        u.push(UnknownStream { ip, stream: stream.clone(), stats: stats.clone() });
    }

    /// The hub is full and an announced session needs a slot: end the unannounced stream that
    /// has been quiet longest. Returns whether one was ended.
    fn evict_for_announced(&self, hub: &Hub) -> bool {
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        u.retain(|x| !x.stream.is_closed());
        let Some(i) =
            u.iter().enumerate().min_by_key(|(_, x)| x.stats.last_packet_ms.load(Ordering::Relaxed)).map(|(i, _)| i)
        else {
            return false;
        };
        let evicted = u.swap_remove(i);
        drop(u);
        self.counters.unknown_evicted.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now()) {
            info!(stream = %evicted.stream.name, suppressed, "unannounced stream ended: an announced session needs its slot");
        }
        hub.remove(&evicted.stream);
        true
    }

    /// Creates the hub stream for an RTP source. Unannounced streams (`unknown`) spend their own
    /// budget; announced ones may end an unannounced stream when the hub is full.
    fn create_stream(
        &self,
        hub: &Hub,
        name: &str,
        source: Source,
        unknown: bool,
        stats: &Arc<RouteStats>,
    ) -> Option<Arc<Stream>> {
        let peer = source.peer;
        if unknown && !self.admit_unknown(peer.ip(), hub) {
            return None;
        }
        let mut result = hub.create(name, source.clone(), Takeover::SameSource);
        if !unknown
            && matches!(result, Err(crate::hub::PublishError::TooManyStreams(_)))
            && self.evict_for_announced(hub)
        {
            result = hub.create(name, source, Takeover::SameSource);
        }
        match result {
            Ok(stream) => {
                self.counters.streams_created.fetch_add(1, Ordering::Relaxed);
                if unknown {
                    self.track_unknown(peer.ip(), &stream, stats);
                }
                Some(stream)
            }
            Err(e) => {
                self.refused(name, peer, &e);
                None
            }
        }
    }

    /// Counts and logs (rate-limited) a stream the hub refused.
    fn refused(&self, name: &str, peer: SocketAddr, e: &crate::hub::PublishError) {
        self.counters.streams_refused.fetch_add(1, Ordering::Relaxed);
        if matches!(e, crate::hub::PublishError::NameTaken { .. }) {
            self.counters.takeovers_refused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(suppressed) = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now()) {
            warn!(stream = name, %peer, suppressed, "stream refused: {e}");
        }
    }

    /// Expects media for `name` from `ip`, over TCP or UDP, with an SSRC nobody announced (see
    /// `expected`).
    pub fn expect_source(&self, ip: std::net::IpAddr, tcp: bool, name: String) {
        {
            let mut signalled = self.signalled.lock().unwrap_or_else(|e| e.into_inner());
            if signalled.len() < EXPECTED_CAPACITY || signalled.contains_key(&name) {
                signalled.insert(name.clone(), ip);
            }
        }
        let mut e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        e.retain(|x| x.name != name);
        if e.len() >= EXPECTED_CAPACITY {
            e.pop_front();
        }
        e.push_back(ExpectedSource { ip, tcp, name, port: None });
    }

    /// The port a session's device answered (SDP `m=` over UDP): cameras send from it, so two
    /// sessions on one address that send the same SSRC (Hikvision channels) are told apart even
    /// when the second one's media arrives first.
    pub fn expect_port(&self, name: &str, port: u16) {
        let mut e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(x) = e.iter_mut().find(|x| x.name == name && !x.tcp) {
            x.port = Some(port).filter(|p| *p != 0);
        }
    }

    /// Media with `name`'s announced SSRC from `peer`, while `name` expects another port and
    /// another session on that address expects exactly this one: it is that session's media.
    fn claim_by_port(&self, name: &str, peer: SocketAddr) -> Option<String> {
        let mut e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        let mine = e.iter().find(|x| x.name == name)?.port?;
        if mine == peer.port() {
            return None;
        }
        let i = e.iter().position(|x| x.name != name && !x.tcp && x.ip == peer.ip() && x.port == Some(peer.port()))?;
        e.remove(i).map(|x| x.name)
    }

    fn forget_expected(&self, name: &str) {
        self.expected.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| x.name != name);
    }

    /// Binds an unannounced SSRC from `ip` to the one session expecting media from there. With
    /// several (cameras behind one NAT address, or a Hikvision answer not yet processed) the
    /// packet cannot be attributed: it is dropped, and a later one binds once the other sessions
    /// have their media.
    fn claim_source(&self, ip: std::net::IpAddr, tcp: bool, port: Option<u16>) -> Claim {
        let mut e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        // A session that answered this very source port wins over the others on the address.
        if let Some(port) = port {
            let mut by_port = e.iter().enumerate().filter(|(_, x)| x.ip == ip && x.tcp == tcp && x.port == Some(port));
            if let (Some((i, _)), None) = (by_port.next(), by_port.next()) {
                return e.remove(i).map_or(Claim::Nobody, |x| Claim::Bound(x.name));
            }
        }
        let mut found = e.iter().enumerate().filter(|(_, x)| x.ip == ip && x.tcp == tcp).map(|(i, _)| i);
        match (found.next(), found.next()) {
            (None, _) => Claim::Nobody,
            (Some(i), None) => e.remove(i).map_or(Claim::Nobody, |x| Claim::Bound(x.name)),
            (Some(_), Some(_)) => Claim::Ambiguous,
        }
    }

    pub fn announced_name(&self, ssrc: u32) -> Option<String> {
        self.announced.read().unwrap_or_else(|e| e.into_inner()).get(&ssrc).cloned()
    }

    fn report_unknown(&self, ssrc: u32, peer: SocketAddr) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reported.iter_mut().find(|r| r.ssrc == ssrc) {
            r.packets += 1;
            return;
        }
        if reported.len() >= REPORTED_CAPACITY {
            reported.pop_front();
        }
        reported.push_back(UnknownSsrcReport { ssrc, peer, packets: 1 });
    }

    pub fn snapshot(&self) -> RtpCountersSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RtpCountersSnapshot {
            datagrams: get(&c.datagrams),
            datagram_bytes: get(&c.datagram_bytes),
            bad_packets: get(&c.bad_packets),
            rtcp: get(&c.rtcp),
            rtcp_rr_sent: get(&c.rtcp_rr_sent),
            rtcp_sr_received: get(&c.rtcp_sr_received),
            rtcp_unrouted: get(&c.rtcp_unrouted),
            udp_receive_calls: get(&c.udp_receive_calls),
            unknown_ssrc_packets: get(&c.unknown_ssrc_packets),
            probation_evicted: get(&c.probation_evicted),
            streams_refused: get(&c.streams_refused),
            streams_created: get(&c.streams_created),
            tcp_connections: get(&c.tcp_connections),
            tcp_refused: get(&c.tcp_refused),
            tcp_resyncs: get(&c.tcp_resyncs),
            queue_drops: get(&c.queue_drops),
            foreign_ssrc_packets: get(&c.foreign_ssrc_packets),
            ssrc_rebinds: get(&c.ssrc_rebinds),
            ssrc_clashes: get(&c.ssrc_clashes),
            takeovers_refused: get(&c.takeovers_refused),
            foreign_source_refused: get(&c.foreign_source_refused),
            unknown_streams: self.unknown_live(),
            unknown_refused: get(&c.unknown_refused),
            unknown_evicted: get(&c.unknown_evicted),
            budget_drops: get(&c.budget_drops),
            tcp_slow_closed: get(&c.tcp_slow_closed),
            buffered_bytes: self.buffered.load(Ordering::Relaxed),
            max_buffered_bytes: self.max_buffered.load(Ordering::Relaxed),
            unknown_ssrcs: self.reported.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect(),
        }
    }
}

/// The stream name for an unannounced SSRC: `rtp/` + 8 upper-case hex digits (as wvp/ZLM name them).
pub fn unknown_stream_name(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

/// Binds UDP and TCP on the same address. Returns the bound address (useful with port 0).
pub async fn bind(cfg: &RtpConfig) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    crate::util::bind_same_port(cfg.listen, || bind_once(cfg))
}

fn bind_once(cfg: &RtpConfig) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    let addr = cfg.listen;
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let tcp = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    let tcp = TcpListener::from_std(tcp.into())?;
    let bound = tcp.local_addr()?;
    let udp = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if let Err(e) = udp.set_recv_buffer_size(cfg.recv_buffer) {
        warn!("cannot set SO_RCVBUF to {}: {e}", cfg.recv_buffer);
    }
    let granted = udp.recv_buffer_size().unwrap_or(0);
    if granted < cfg.recv_buffer {
        info!(asked = cfg.recv_buffer, granted, "UDP receive buffer capped by the kernel (raise net.core.rmem_max)");
    }
    udp.set_nonblocking(true)?;
    udp.bind(&bound.into())?;
    let udp = UdpSocket::from_std(udp.into())?;
    Ok((udp, tcp, bound))
}

/// Runs the UDP and TCP sides until `shutdown`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    cfg: RtpConfig,
    hub: Arc<Hub>,
    shared: Arc<RtpShared>,
    shutdown: CancellationToken,
) {
    // Whatever the config says, a fifth of the slots stays for announced sessions.
    let total = cfg.max_unknown_streams.min(cfg.max_streams - cfg.max_streams / 5);
    shared.set_unknown_limits(total, cfg.max_unknown_per_source);
    shared.max_buffered.store(cfg.max_buffered_bytes, Ordering::Relaxed);
    // A thread of its own, not `spawn_blocking`: dropping a runtime waits for its blocking
    // tasks, and this loop ends only at `shutdown`.
    let udp_task = match udp.into_std() {
        Ok(udp) => {
            let (cfg, hub, shared, shutdown) = (cfg.clone(), hub.clone(), shared.clone(), shutdown.clone());
            let span = tracing::Span::current();
            let runtime = tokio::runtime::Handle::current();
            let (done, ended) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new().name("rtp-udp".into()).spawn(move || {
                // Streams' tasks are spawned from this thread onto the runtime.
                let _runtime = runtime.enter();
                span.in_scope(|| serve_udp(udp, cfg, hub, shared, shutdown));
                let _ = done.send(());
            });
            match spawned {
                Ok(_) => Some(ended),
                Err(e) => {
                    warn!("RTP/UDP not served: cannot start its thread: {e}");
                    None
                }
            }
        }
        Err(e) => {
            warn!("RTP/UDP not served: {e}");
            None
        }
    };
    let tcp_task = tokio::spawn(serve_tcp(tcp, cfg, hub, shared, shutdown));
    if let Some(udp_task) = udp_task {
        let _ = udp_task.await;
    }
    let _ = tcp_task.await;
}

struct Pending {
    peer: SocketAddr,
    last_seq: u16,
    packets: Vec<RtpPacket>,
}

/// Unknown SSRCs that sent one packet; promoted to a stream by a second, nearby packet.
struct Probation {
    pending: HashMap<u32, Pending>,
    order: VecDeque<u32>,
    /// Payload bytes held (each datagram owns its buffer: see `serve_udp`).
    bytes: usize,
    /// SSRCs on probation per source IP: a flood from one address evicts its own entries, not
    /// the first packet of a camera elsewhere.
    per_ip: HashMap<std::net::IpAddr, usize>,
}

fn payload_bytes(packets: &[RtpPacket]) -> usize {
    packets.iter().map(|p| p.payload.len()).sum()
}

impl Probation {
    fn new() -> Probation {
        Probation { pending: HashMap::new(), order: VecDeque::new(), bytes: 0, per_ip: HashMap::new() }
    }

    /// Removes `ssrc`'s entry (not from `order`: callers do that).
    fn take(&mut self, ssrc: u32) -> Option<Pending> {
        let p = self.pending.remove(&ssrc)?;
        self.bytes -= payload_bytes(&p.packets);
        let ip = p.peer.ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(p)
    }

    fn evict_oldest(&mut self, counters: &RtpCounters) {
        if let Some(old) = self.order.pop_front() {
            self.take(old);
            counters.probation_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Evicts the oldest entry from `ip`.
    fn evict_oldest_of(&mut self, ip: std::net::IpAddr, counters: &RtpCounters) {
        let pending = &self.pending;
        if let Some(i) = self.order.iter().position(|s| pending.get(s).is_some_and(|p| p.peer.ip() == ip)) {
            if let Some(old) = self.order.remove(i) {
                self.take(old);
                counters.probation_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Returns the packets to publish when `packet` completes probation for its SSRC.
    fn offer(&mut self, packet: RtpPacket, peer: SocketAddr, counters: &RtpCounters) -> Option<Vec<RtpPacket>> {
        let (ssrc, seq) = (packet.ssrc, packet.seq);
        if let Some(p) = self.pending.get_mut(&ssrc) {
            let step = packet.seq.wrapping_sub(p.last_seq);
            // A second packet from the same host continuing the sequence proves a real sender.
            if p.peer.ip() == peer.ip() && (1..=64).contains(&step) {
                let mut p = self.take(ssrc).expect("present");
                self.order.retain(|s| *s != ssrc);
                p.packets.push(packet);
                return Some(p.packets);
            }
            if p.packets.len() < PROBATION_PACKETS && self.bytes + packet.payload.len() <= PROBATION_BYTES {
                self.bytes += packet.payload.len();
                p.packets.push(packet);
            }
            p.last_seq = seq;
            return None;
        }
        if self.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= PROBATION_PER_SOURCE {
            self.evict_oldest_of(peer.ip(), counters);
        }
        if self.pending.len() >= PROBATION_CAPACITY {
            self.evict_oldest(counters);
        }
        while self.bytes + packet.payload.len() > PROBATION_BYTES && !self.order.is_empty() {
            self.evict_oldest(counters);
        }
        self.bytes += packet.payload.len();
        *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
        self.order.push_back(ssrc);
        self.pending.insert(ssrc, Pending { peer, last_seq: packet.seq, packets: vec![packet] });
        None
    }
}

/// Per-stream figures the socket task counts and the stream task publishes.
#[derive(Debug, Default)]
struct RouteStats {
    queue_drops: AtomicU64,
    /// When the stream last received a packet, in ms since `RtpShared::epoch` (idle squatters
    /// are evicted first).
    last_packet_ms: AtomicU64,
    /// Datagrams with this stream's SSRC from another source address, dropped.
    foreign: AtomicU64,
    /// The stream's task has ended: the receive task must route this SSRC afresh.
    ended: std::sync::atomic::AtomicBool,
    /// RTCP datagrams from the source, with their address, for the stream task (bounded).
    rtcp_in: std::sync::Mutex<VecDeque<(Bytes, SocketAddr)>>,
}

/// Datagrams the receive loop takes in one drain before it checks for shutdown again.
const DRAIN_MAX: usize = 1024;
/// How often the idle receive loop looks for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// RTCP datagrams a stream's inbox holds between two stream-task ticks; more are dropped.
const RTCP_INBOX: usize = 8;

impl RouteStats {
    fn push_rtcp(&self, datagram: Bytes, from: SocketAddr) -> bool {
        let mut q = self.rtcp_in.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= RTCP_INBOX {
            return false;
        }
        q.push_back((datagram, from));
        true
    }
}

/// A UDP stream as the receive task sees it. Its packets are reordered, demuxed and published
/// right there, in the receive task (D152): no queue and no task wake-up per packet. The
/// stream's own task keeps only its timers (reorder deadline, idle flush, stats, RTCP, timeout).
struct Route {
    core: Arc<std::sync::Mutex<StreamCore>>,
    stats: Arc<RouteStats>,
    /// Wakes the stream's task when a packet gives it an earlier deadline (a reorder gap).
    timer: Arc<tokio::sync::Notify>,
}

impl Route {
    fn is_closed(&self) -> bool {
        self.stats.ended.load(Ordering::Relaxed)
    }

    /// Ingests a packet for the stream. `Err` gives the packet back when the stream has ended.
    fn forward(&self, packet: RtpPacket, shared: &RtpShared, now: Instant) -> Result<(), RtpPacket> {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        if core.ended {
            return Err(packet);
        }
        let had_deadline = core.ingest.poll_timeout().is_some();
        core.push(std::iter::once(packet), shared, now);
        if !had_deadline && core.ingest.poll_timeout().is_some() {
            self.timer.notify_one();
        }
        Ok(())
    }
}

/// A UDP stream routed by SSRC, bound to the source address (IP *and* port) of its first
/// datagram: the SSRC alone is 32 bits anyone can copy.
struct Binding {
    route: Route,
    peer: SocketAddr,
    last_seen: Instant,
    /// A GB session's media stays bound to the IP its device signalled from (D41): it may move
    /// port, never host.
    signalled: Option<std::net::IpAddr>,
}

/// What to do with a datagram whose SSRC is bound to another source address.
#[derive(Debug, PartialEq, Eq)]
enum Foreign {
    /// The bound source has been quiet longer than `rebind_after`: the camera moved.
    Rebind,
    /// The bound source is still sending: drop it.
    Drop,
}

impl Binding {
    fn judge(&self, peer: SocketAddr, now: Instant, rebind_after: Duration) -> Foreign {
        if self.signalled.is_some_and(|ip| ip != peer.ip()) {
            return Foreign::Drop;
        }
        if now.saturating_duration_since(self.last_seen) > rebind_after {
            Foreign::Rebind
        } else {
            Foreign::Drop
        }
    }
}

/// The UDP receive loop, on a thread of its own (D153). It waits (blocking) for a datagram,
/// then takes every datagram queued, without blocking, up to 32 per `recvmmsg` (D173),
/// ingesting each inline (`Route::forward`); after a drain that found datagrams it sleeps
/// `udp_batch_wait` so the next drain finds a batch: one wake-up per batch instead of one per
/// datagram (or per camera burst). Nothing else polls the socket, so arrivals during the sleep
/// wake nobody.
fn serve_udp(
    socket: std::net::UdpSocket,
    cfg: RtpConfig,
    hub: Arc<Hub>,
    shared: Arc<RtpShared>,
    shutdown: CancellationToken,
) {
    if let Ok(clone) = socket.try_clone() {
        let _ = shared.udp_socket.set(Arc::new(clone));
    }
    // Stream tasks send receiver reports on this socket while the loop below may have it in
    // blocking mode: a full send buffer then waits at most this long.
    let _ = socket.set_write_timeout(Some(Duration::from_millis(1)));
    let _ = socket.set_read_timeout(Some(SHUTDOWN_POLL));
    let mut routes: HashMap<u32, Binding> = HashMap::new();
    // Streams bound by source address (SSRC 0 or an SSRC other than the announced one).
    let mut addr_routes: HashMap<SocketAddr, Route> = HashMap::new();
    let mut probation = Probation::new();
    // Each datagram is copied out of the receive slots into its own exact-size buffer: a packet
    // held in probation, a reorder buffer then pins its own bytes only, never a shared 64 KiB
    // receive buffer (issue 8, hole 7), so every byte bound below is a bound on memory.
    let mut batch = UdpBatch::new(&socket);
    let mut bad_log = RateLimit::new(Duration::from_secs(10));
    let mut unknown_log = RateLimit::new(Duration::from_secs(10));
    let mut foreign_log = RateLimit::new(Duration::from_secs(10));
    let rebind_after = cfg.rebind_after.0;
    let batch_wait = cfg.udp_batch_wait.0;
    let counters = &shared.counters;
    let notifier = hub.notifier();
    let mut on_datagram = |data: &[u8], peer: SocketAddr, now: Instant| {
        let n = data.len();
        // RTCP (RFC 5761 4: PT 200..=204 in the second byte) goes to its stream by sender SSRC.
        if n >= 8 && (rtcp::PT_SR..=rtcp::PT_APP).contains(&data[1]) {
            counters.rtcp.fetch_add(1, Ordering::Relaxed);
            let ssrc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            let routed = routes
                .get(&ssrc)
                .filter(|b| b.peer.ip() == peer.ip())
                .is_some_and(|b| b.route.stats.push_rtcp(Bytes::copy_from_slice(data), peer));
            if !routed {
                counters.rtcp_unrouted.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let datagram = Bytes::copy_from_slice(data);
        counters.datagrams.fetch_add(1, Ordering::Relaxed);
        counters.datagram_bytes.fetch_add(datagram.len() as u64, Ordering::Relaxed);
        let packet = match RtpPacket::parse(datagram) {
            // A big header (extension) around a small payload: keep the payload only, so that
            // the byte budgets, which count payloads, count what the packet holds.
            Ok(mut p) if n - p.payload.len() > 256 => {
                p.payload = Bytes::copy_from_slice(&p.payload);
                p
            }
            Ok(p) => p,
            Err(RtpError::Rtcp(_)) => {
                counters.rtcp.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = bad_log.check(now) {
                    warn!(%peer, suppressed, "not an RTP packet: {e}");
                }
                return;
            }
        };
        let ssrc = packet.ssrc;
        let packet = match addr_routes.get(&peer) {
            Some(route) => match route.forward(packet, &shared, now) {
                Ok(()) => return,
                Err(p) => {
                    addr_routes.remove(&peer);
                    p
                }
            },
            None => packet,
        };
        // A live stream with this SSRC: from its own source the datagram is forwarded; from
        // anywhere else it is another session's media (claimed by address below), a camera that
        // moved (its old address quiet), or a spoofer (dropped, counted).
        let mut clash_with = None;
        let packet = match routes.get_mut(&ssrc) {
            Some(b) if b.route.is_closed() => {
                // The stream ended (timeout, replaced): the SSRC is new again, under the same
                // rules as any other new SSRC below.
                routes.remove(&ssrc);
                packet
            }
            Some(b) if b.peer == peer => {
                b.last_seen = now;
                match b.route.forward(packet, &shared, now) {
                    Ok(()) => return,
                    Err(p) => {
                        routes.remove(&ssrc);
                        p
                    }
                }
            }
            Some(b) => {
                clash_with = Some(b.peer);
                packet
            }
            None => packet,
        };
        if let Some(bound) = clash_with {
            // Another session waiting for media from this IP: the same SSRC answered for two
            // channels of one device (Hikvision). Bind this source address to that session.
            if let Claim::Bound(name) = shared.claim_source(peer.ip(), false, Some(peer.port())) {
                counters.ssrc_clashes.fetch_add(1, Ordering::Relaxed);
                warn!(ssrc = %ssrc_text(ssrc), %peer, other = %bound, stream = %name, "two sessions send the same SSRC: told apart by source address");
                if let Some(route) = start_udp_stream(name, vec![packet], peer, &cfg, &hub, &shared, false) {
                    addr_routes.retain(|_, r| !r.is_closed());
                    addr_routes.insert(peer, route);
                }
                return;
            }
            let Some(b) = routes.get_mut(&ssrc) else { return };
            match b.judge(peer, now, rebind_after) {
                Foreign::Rebind => {
                    counters.ssrc_rebinds.fetch_add(1, Ordering::Relaxed);
                    info!(ssrc = %ssrc_text(ssrc), from = %b.peer, to = %peer, "the stream's source went quiet and came back from a new address: rebound");
                    b.peer = peer;
                    b.last_seen = now;
                    if let Err(_p) = b.route.forward(packet, &shared, now) {
                        routes.remove(&ssrc);
                    }
                }
                Foreign::Drop => {
                    b.route.stats.foreign.fetch_add(1, Ordering::Relaxed);
                    counters.foreign_ssrc_packets.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = foreign_log.check(now) {
                        warn!(ssrc = %ssrc_text(ssrc), %peer, bound = %b.peer, suppressed, "a live stream's SSRC from another source address: dropped");
                    }
                }
            }
            return;
        }
        if let Some(name) = shared.announced_name(ssrc) {
            if let Some(other) = shared.claim_by_port(&name, peer) {
                // The SSRC is announced for `name`, but the port says it is `other`'s media.
                counters.ssrc_clashes.fetch_add(1, Ordering::Relaxed);
                warn!(ssrc = %ssrc_text(ssrc), %peer, stream = %other, announced_for = %name, "two sessions send the same SSRC: told apart by the answered port");
                if let Some(route) = start_udp_stream(other, vec![packet], peer, &cfg, &hub, &shared, false) {
                    addr_routes.retain(|_, r| !r.is_closed());
                    addr_routes.insert(peer, route);
                }
                return;
            }
            if !shared.source_allowed(&name, peer) {
                return;
            }
            shared.forget_expected(&name);
            let signalled = shared.signalled_ip(&name);
            if let Some(route) = start_udp_stream(name, vec![packet], peer, &cfg, &hub, &shared, false) {
                routes.retain(|_, b| !b.route.is_closed());
                routes.insert(ssrc, Binding { route, peer, last_seen: now, signalled });
            }
            return;
        }
        match shared.claim_source(peer.ip(), false, Some(peer.port())) {
            Claim::Bound(name) => {
                info!(ssrc = %ssrc_text(ssrc), %peer, stream = %name, "SSRC not the announced one: bound by source address");
                if let Some(route) = start_udp_stream(name, vec![packet], peer, &cfg, &hub, &shared, false) {
                    addr_routes.retain(|_, r| !r.is_closed());
                    addr_routes.insert(peer, route);
                }
                return;
            }
            Claim::Ambiguous => {
                counters.unknown_ssrc_packets.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Claim::Nobody => notify_unknown(&notifier, ssrc, peer, "udp"),
        }
        match cfg.unknown_ssrc {
            UnknownSsrc::Publish => {
                if let Some(packets) = probation.offer(packet, peer, counters) {
                    info!(ssrc = %ssrc_text(ssrc), %peer, "unknown SSRC: publishing");
                    let name = unknown_stream_name(ssrc);
                    if let Some(route) = start_udp_stream(name, packets, peer, &cfg, &hub, &shared, true) {
                        routes.retain(|_, b| !b.route.is_closed());
                        routes.insert(ssrc, Binding { route, peer, last_seen: now, signalled: None });
                    }
                }
            }
            UnknownSsrc::Report => {
                counters.unknown_ssrc_packets.fetch_add(1, Ordering::Relaxed);
                shared.report_unknown(ssrc, peer);
                if let Some(suppressed) = unknown_log.check(now) {
                    warn!(ssrc = %ssrc_text(ssrc), %peer, suppressed, "RTP from an unknown SSRC (not published)");
                }
            }
            UnknownSsrc::Drop => {
                counters.unknown_ssrc_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Streams that ended leave closed routes behind; sweep them now and then.
        if routes.len() > 64 && counters.datagrams.load(Ordering::Relaxed).is_multiple_of(4096) {
            routes.retain(|_, b| !b.route.is_closed());
        }
    };
    let mut blocking = false;
    while !shutdown.is_cancelled() {
        if blocking {
            // Idle: wait in the kernel for the next datagram (or the shutdown poll) without
            // taking it, then take it with the rest below: a blocking `recvmmsg` would wait for a
            // whole batch, not for the first datagram.
            match socket.peek_from(&mut [0u8; 1]) {
                Ok(_) => {
                    blocking = false;
                    let _ = socket.set_nonblocking(true);
                }
                Err(e) if is_timeout(&e) => continue,
                Err(e) => {
                    debug!("UDP receive error: {e}");
                    continue;
                }
            }
        }
        // Drain what is queued, without blocking, a batch per call; at most DRAIN_MAX so
        // shutdown is seen.
        let mut got = 0usize;
        while got < DRAIN_MAX {
            match batch.recv(&socket, &mut on_datagram) {
                Ok(n) => {
                    got += n;
                    counters.udp_receive_calls.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => break,
                // ICMP port unreachable and the like surface here on some systems: not fatal.
                Err(e) => {
                    debug!("UDP receive error: {e}");
                    break;
                }
            }
        }
        if got == 0 {
            // Nothing queued: wait in the kernel (above).
            blocking = true;
            let _ = socket.set_nonblocking(false);
        } else if got < DRAIN_MAX && !batch_wait.is_zero() {
            std::thread::sleep(batch_wait);
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Datagrams one `recvmmsg` takes at most (quinn-udp's batch: 32 on Linux).
const UDP_SLOTS: usize = quinn_udp::BATCH_SIZE;
/// One receive slot: the largest UDP payload, as the single 64 KiB buffer before D173, so no
/// datagram is truncated, and a GRO super-datagram (at most 64 KiB) fits whole.
const UDP_SLOT: usize = 65536;

/// The receive buffers of the UDP port (D173): `UDP_SLOTS` slots of `UDP_SLOT` bytes, filled by
/// one `recvmmsg` through quinn-udp (which keeps the unsafe code out of this crate). 2 MiB of
/// address space, fixed; only the pages the kernel writes become resident (the first 4 KiB of
/// each slot for camera-sized datagrams).
struct UdpBatch {
    /// `None` when quinn-udp could not set the socket up: one `recv_from` per call instead.
    state: Option<quinn_udp::UdpSocketState>,
    storage: Vec<u8>,
    metas: Vec<quinn_udp::RecvMeta>,
}

impl UdpBatch {
    fn new(socket: &std::net::UdpSocket) -> Self {
        // quinn-udp's receive takes no per-socket state (Linux: `recvmmsg` on the socket it is
        // given), but making the state on a socket turns on UDP GRO, IP_PKTINFO, IP_RECVTOS and
        // SO_TIMESTAMPNS there: control messages for every datagram that nothing here reads
        // (~6 % of gbgate's CPU at 300 cameras, performance.md 13f). So the state is made on a
        // throwaway socket and ours keeps its options: no GRO, one datagram per slot (the
        // stride split below stays, for a socket that has GRO on after all).
        let made = socket
            .local_addr()
            .and_then(|a| std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 0)))
            .and_then(|spare| quinn_udp::UdpSocketState::new((&spare).into()));
        // Drains must not block: a blocking `recvmmsg` waits for a whole batch.
        let _ = socket.set_nonblocking(true);
        let state = match made {
            Ok(state) => Some(state),
            Err(e) => {
                warn!("UDP RTP port: batched receive unavailable, one datagram per call: {e}");
                None
            }
        };
        // Zeroed fresh pages from the allocator: slots never written cost no memory.
        Self { state, storage: vec![0u8; UDP_SLOTS * UDP_SLOT], metas: vec![quinn_udp::RecvMeta::default(); UDP_SLOTS] }
    }

    /// One receive call (a batch of up to `UDP_SLOTS` buffers): hands every datagram to `each`
    /// with its own source address and the time it was taken; returns how many there were.
    fn recv(
        &mut self,
        socket: &std::net::UdpSocket,
        mut each: impl FnMut(&[u8], SocketAddr, Instant),
    ) -> std::io::Result<usize> {
        let Some(state) = &self.state else {
            let (n, peer) = socket.recv_from(&mut self.storage[..UDP_SLOT])?;
            each(&self.storage[..n], peer, Instant::now());
            return Ok(1);
        };
        let mut slots = self.storage.chunks_exact_mut(UDP_SLOT);
        let mut bufs: [std::io::IoSliceMut<'_>; UDP_SLOTS] =
            std::array::from_fn(|_| std::io::IoSliceMut::new(slots.next().unwrap_or_default()));
        let n = state.recv(socket.into(), &mut bufs, &mut self.metas)?;
        let now = Instant::now();
        let mut datagrams = 0;
        for (buf, meta) in bufs.iter().zip(&self.metas).take(n) {
            for datagram in gro_datagrams(&buf[..meta.len.min(buf.len())], meta.stride) {
                datagrams += 1;
                each(datagram, meta.addr, now);
            }
        }
        Ok(datagrams)
    }
}

/// The datagrams of one receive buffer: `stride` bytes each (the last may be shorter) when the
/// kernel coalesced a source's datagrams (GRO), else the whole buffer. An empty buffer is one
/// empty datagram (counted as not RTP, as before).
fn gro_datagrams(data: &[u8], stride: usize) -> impl Iterator<Item = &[u8]> {
    // 0 (never from quinn-udp, which sets the length when there was no GRO): the whole buffer.
    let stride = if stride == 0 { data.len() } else { stride }.clamp(1, data.len().max(1));
    (0..data.len().div_ceil(stride).max(1)).map(move |i| &data[i * stride..((i + 1) * stride).min(data.len())])
}

/// The GB form of an SSRC (10 decimal digits, as in SDP `y=`), used in logs and the API.
pub fn ssrc_text(ssrc: u32) -> String {
    format!("{ssrc:010}")
}

/// Serializes an SSRC in its 10-digit GB form: as a number, `0200000002` would lose its zero.
pub fn serialize_ssrc<S: serde::Serializer>(ssrc: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ssrc_text(*ssrc))
}

/// A stream's source as the API shows it: the SSRC in its 10-digit GB form, as in
/// `/api/v1/gb/sessions`.
pub fn serialize_source<S: serde::Serializer>(source: &Source, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct View<'a> {
        transport: crate::hub::Transport,
        peer: SocketAddr,
        ssrc: Option<&'a str>,
    }
    let ssrc = source.ssrc.map(ssrc_text);
    View { transport: source.transport, peer: source.peer, ssrc: ssrc.as_deref() }.serialize(s)
}

fn start_udp_stream(
    name: String,
    packets: Vec<RtpPacket>,
    peer: SocketAddr,
    cfg: &RtpConfig,
    hub: &Arc<Hub>,
    shared: &Arc<RtpShared>,
    unknown: bool,
) -> Option<Route> {
    let ssrc = packets.first().map(|p| p.ssrc)?;
    let source = Source { transport: Transport::Udp, peer, ssrc: Some(ssrc) };
    let stats = Arc::new(RouteStats::default());
    let stream = shared.create_stream(hub, &name, source, unknown, &stats)?;
    let core = StreamCore::new(stream.clone(), cfg, shared.media_pipeline(&stream), stats.clone());
    let route = Route {
        core: Arc::new(std::sync::Mutex::new(core)),
        stats: stats.clone(),
        timer: Arc::new(tokio::sync::Notify::new()),
    };
    let now = Instant::now();
    for p in packets {
        let _ = route.forward(p, shared, now);
    }
    let span = tracing::info_span!("stream", stream = %name, ssrc = %ssrc_text(ssrc), %peer, transport = "udp");
    let (hub, cfg, shared) = (hub.clone(), cfg.clone(), shared.clone());
    let (core, timer) = (route.core.clone(), route.timer.clone());
    tokio::spawn(
        async move {
            info!("stream started");
            let reason = run_udp_stream(&core, &timer, &cfg, &shared).await;
            stream.event("stop", &reason);
            hub.remove(&stream);
            info!("stream ended: {reason}");
        }
        .instrument(span),
    );
    Some(route)
}

/// Where a stream's packets come from: the UDP receive task (which ingests them itself), or the
/// stream's own TCP connection.
// One per stream task, never moved around in bulk: boxing the TCP side would buy nothing.
#[allow(clippy::large_enum_variant)]
enum PacketSource {
    Udp,
    Tcp {
        socket: TcpStream,
        framer: TcpFramer,
        shared: Arc<RtpShared>,
        first: Option<RtpPacket>,
        /// Framer resyncs already added to the server-wide counter.
        resyncs_counted: u64,
        /// RTCP frames received on the connection (RFC 4571 carries both), for the stream task.
        rtcp_in: Vec<Bytes>,
    },
}

impl PacketSource {
    /// Receives the next batch of packets into `batch`. `Ok(false)` means the source ended.
    async fn recv(&mut self, batch: &mut Vec<RtpPacket>) -> Result<bool, String> {
        match self {
            // UDP packets never reach a stream task: the receive task ingests them (D152).
            PacketSource::Udp => std::future::pending().await,
            PacketSource::Tcp { socket, framer, shared, first, resyncs_counted, rtcp_in } => {
                if let Some(p) = first.take() {
                    batch.push(p);
                }
                while let Some(frame) = framer.next_packet() {
                    match RtpPacket::parse(frame) {
                        Ok(p) => batch.push(p),
                        Err(_) => {
                            shared.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if batch.len() >= 64 {
                        break;
                    }
                }
                while let Some(frame) = framer.take_rtcp() {
                    shared.counters.rtcp.fetch_add(1, Ordering::Relaxed);
                    if rtcp_in.len() < RTCP_INBOX {
                        rtcp_in.push(frame);
                    }
                }
                let resyncs = framer.stats().resyncs;
                if resyncs > *resyncs_counted {
                    shared.counters.tcp_resyncs.fetch_add(resyncs - *resyncs_counted, Ordering::Relaxed);
                    *resyncs_counted = resyncs;
                }
                if !batch.is_empty() {
                    return Ok(true);
                }
                let n = read_into_framer(socket, framer).await.map_err(|e| format!("TCP read error: {e}"))?;
                if n == 0 {
                    if !framer.is_finished() {
                        // The camera closed: what waited behind a suspicious length comes out now.
                        framer.finish();
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Ok(true)
            }
        }
    }
}

/// Most one TCP read takes: a P-frame of a 2 Mbit/s camera in one read, an I-frame in a few.
const TCP_READ_CHUNK: usize = 16 * 1024;

/// Reads what the connection has straight into the framer's buffer (D179): no read buffer of
/// its own per connection, no copy out of one, and the framer holds memory only while a frame
/// is incomplete (it gives its buffer back when drained), so an idle RFC 4571 connection costs
/// about what a UDP stream does. Waits for readiness first so nothing is allocated while
/// waiting. `Ok(0)` at the end of the stream. Cancel-safe (`readable`, then a non-blocking read).
async fn read_into_framer(socket: &TcpStream, framer: &mut TcpFramer) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read_buf(framer.read_space(TCP_READ_CHUNK)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => framer.release_if_empty(),
            r => return r,
        }
    }
}

/// Passes demuxed frames through the media stage and publishes what comes out. Timestamp repair
/// runs here (microseconds); audio transcoding is handed to the worker pool, which publishes the
/// AAC itself (D11).
fn publish_all(stream: &Stream, media: &mut Media, now_us: u64) {
    for frame in media.demuxed.drain(..) {
        media.pipeline.push(frame, Some(now_us), &mut media.out);
    }
    if let Some((codec, config)) = media.pipeline.announced_audio() {
        if stream.announced_audio().is_none() {
            stream.announce_audio(codec, config);
        }
    }
    for frame in media.out.drain(..) {
        stream.publish(frame);
    }
}

/// One stream's media stage and its frame buffers.
struct Media {
    pipeline: MediaPipeline,
    demuxed: Vec<crate::media::Frame>,
    out: Vec<crate::media::Frame>,
}

/// One stream's ingest state: reorder, demux, media stage, its share of the byte budget, RTCP
/// receiver statistics. A TCP stream's task owns it; a UDP stream's is shared between the UDP
/// receive task, which pushes packets into it, and the stream's task, which runs its timers.
struct StreamCore {
    stream: Arc<Stream>,
    ingest: StreamIngest,
    media: Media,
    /// Bytes of the global budget this stream's reassembly holds (see `account`).
    reserved: usize,
    epoch: Instant,
    last_data: Instant,
    idle_flushed: bool,
    rtcp: Option<RtcpLink>,
    route_stats: Arc<RouteStats>,
    record_buf: Vec<u8>,
    /// The stream has ended (UDP: the receive task gives its packets back, see `Route::forward`).
    ended: bool,
}

impl StreamCore {
    fn new(stream: Arc<Stream>, cfg: &RtpConfig, pipeline: MediaPipeline, route_stats: Arc<RouteStats>) -> StreamCore {
        let ingest = StreamIngest::new(cfg.reorder_packets, cfg.reorder_delay.0.as_micros() as u64)
            .with_byte_limits(cfg.max_access_unit, cfg.reorder_bytes);
        StreamCore {
            stream,
            ingest,
            media: Media { pipeline, demuxed: Vec::with_capacity(16), out: Vec::with_capacity(16) },
            reserved: 0,
            epoch: Instant::now(),
            last_data: Instant::now(),
            idle_flushed: true,
            rtcp: (cfg.rtcp != RtcpMode::Off).then(|| RtcpLink::new(cfg)),
            route_stats,
            record_buf: Vec::new(),
            ended: false,
        }
    }

    fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Reorders, demuxes and publishes `packets`, received at `now`.
    fn push(&mut self, packets: impl IntoIterator<Item = RtpPacket>, shared: &RtpShared, now: Instant) {
        self.last_data = now;
        self.route_stats.last_packet_ms.store(mono_ms_at(now), Ordering::Relaxed);
        self.idle_flushed = false;
        let now_us = self.us(now);
        // Recording (D89): nothing per packet when it is off.
        let recorder = self.stream.record();
        for packet in packets {
            if let Some(rec) = recorder {
                record_packet(rec, &packet, &mut self.record_buf);
            }
            if let Some(l) = &mut self.rtcp {
                l.receiver.on_rtp(packet.ssrc, packet.seq, packet.timestamp, now_us);
            }
            self.ingest.push_rtp(packet, now_us, &mut self.media.demuxed);
        }
        account(&mut self.ingest, &mut self.reserved, shared, &mut self.media.demuxed);
        publish_all(&self.stream, &mut self.media, now_us);
    }

    /// When the stream next needs its task: a reorder deadline, the idle flush, an RTCP report,
    /// or the next stats refresh.
    fn next_wake(&self, next_stats: Instant) -> Instant {
        let mut wake = next_stats;
        if let Some(us) = self.ingest.poll_timeout() {
            wake = wake.min(self.epoch + Duration::from_micros(us));
        }
        if let Some(due) = self.rtcp.as_ref().and_then(|l| l.receiver.poll_timeout()) {
            wake = wake.min(self.epoch + Duration::from_micros(due));
        }
        if !self.idle_flushed {
            wake = wake.min(self.last_data + IDLE_FLUSH);
        }
        wake
    }

    /// Runs what is due at `now`: reorder deadline, idle flush, RTCP.
    fn on_timer(&mut self, now: Instant, source: &mut PacketSource, shared: &RtpShared, mode: RtcpMode) {
        let now_us = self.us(now);
        if self.ingest.poll_timeout().is_some_and(|us| us <= now_us) {
            self.ingest.handle_timeout(now_us, &mut self.media.demuxed);
            publish_all(&self.stream, &mut self.media, now_us);
        }
        if !self.idle_flushed && now >= self.last_data + IDLE_FLUSH {
            self.idle_flushed = true;
            self.ingest.flush_idle(&mut self.media.demuxed);
            publish_all(&self.stream, &mut self.media, now_us);
        }
        if let Some(l) = &mut self.rtcp {
            l.tick(source, &self.stream, &self.route_stats, shared, mode, now_us);
        }
    }

    fn publish_stats(&self) {
        publish_stats(&self.stream, &self.ingest, &self.media.pipeline, &self.route_stats, self.rtcp.as_ref());
    }

    /// Why the stream should end now, checked at each stats refresh.
    fn should_end(&self, now: Instant, timeout: Duration) -> Option<String> {
        // Ended by signalling (BYE) or replaced: free the route so the camera's next session
        // from the same address is routed afresh.
        if self.stream.is_closed() {
            return Some("the stream was ended or replaced".to_string());
        }
        if now.saturating_duration_since(self.last_data) >= timeout {
            return Some(format!("no data for {}", humantime::format_duration(timeout)));
        }
        None
    }

    /// Delivers what is still held, releases the budget, publishes the last stats.
    fn finish(&mut self, shared: &RtpShared) {
        self.ended = true;
        self.route_stats.ended.store(true, Ordering::Relaxed);
        let now_us = self.us(Instant::now());
        self.ingest.finish(&mut self.media.demuxed);
        publish_all(&self.stream, &mut self.media, now_us);
        shared.release(self.reserved);
        self.reserved = 0;
        self.media.pipeline.finish(&mut self.media.out);
        publish_all(&self.stream, &mut self.media, now_us);
        self.publish_stats();
    }
}

/// Runs a UDP stream's timers until it ends; its packets are ingested by the receive task
/// (`Route::forward`). Wakes a few times a second, or at once when a packet opens a reorder gap.
async fn run_udp_stream(
    core: &std::sync::Mutex<StreamCore>,
    timer: &tokio::sync::Notify,
    cfg: &RtpConfig,
    shared: &RtpShared,
) -> String {
    let lock = || core.lock().unwrap_or_else(|e| e.into_inner());
    let mut next_stats = Instant::now() + STATS_INTERVAL;
    let mut source = PacketSource::Udp;
    let reason = loop {
        let wake = lock().next_wake(next_stats);
        tokio::select! {
            _ = timer.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        let mut c = lock();
        c.on_timer(now, &mut source, shared, cfg.rtcp);
        if now >= next_stats {
            next_stats = now + STATS_INTERVAL;
            c.publish_stats();
            if let Some(reason) = c.should_end(now, cfg.timeout.0) {
                break reason;
            }
        }
    };
    lock().finish(shared);
    reason
}

/// Drives one RTP/TCP stream until its connection ends or goes quiet for `cfg.timeout`.
/// Returns why it ended.
async fn run_stream(
    mut source: PacketSource,
    stream: &Arc<Stream>,
    cfg: &RtpConfig,
    pipeline: MediaPipeline,
    route_stats: Arc<RouteStats>,
    shared: &RtpShared,
) -> String {
    let mut core = StreamCore::new(stream.clone(), cfg, pipeline, route_stats);
    let mut batch = Vec::with_capacity(64);
    let mut next_stats = Instant::now() + STATS_INTERVAL;
    // When the frame now being received started (bytes buffered, not yet complete).
    let mut partial_since: Option<Instant> = None;
    let frame_timeout = cfg.tcp_frame_timeout.0;
    let reason = loop {
        let wake = core.next_wake(next_stats);
        tokio::select! {
            r = source.recv(&mut batch) => match r {
                Ok(true) => {
                    if let PacketSource::Tcp { framer, .. } = &source {
                        partial_since = match (framer.buffered(), batch.is_empty(), partial_since) {
                            (0, _, _) => None,
                            // A frame completed and the next one has begun.
                            (_, false, _) => Some(Instant::now()),
                            (_, true, since) => since.or_else(|| Some(Instant::now())),
                        };
                    }
                    if !batch.is_empty() {
                        core.push(batch.drain(..), shared, Instant::now());
                    }
                }
                Ok(false) => break "the source closed".to_string(),
                Err(e) => break e,
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                core.on_timer(now, &mut source, shared, cfg.rtcp);
                if now >= next_stats {
                    next_stats = now + STATS_INTERVAL;
                    core.publish_stats();
                    if let Some(reason) = core.should_end(now, cfg.timeout.0) {
                        break reason;
                    }
                    if partial_since.is_some_and(|t| now.duration_since(t) >= frame_timeout) {
                        shared.counters.tcp_slow_closed.fetch_add(1, Ordering::Relaxed);
                        break format!("a frame took longer than {} to arrive", humantime::format_duration(frame_timeout));
                    }
                }
            }
        }
    };
    core.finish(shared);
    reason
}

/// Hands one packet to the stream's recording as an RTP packet: the fixed header rebuilt from
/// the parsed fields, then the payload (CSRCs, header extension and padding are not kept: the
/// parse dropped them; D89).
fn record_packet(rec: &crate::diag::record::RecordHandle, p: &RtpPacket, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&crate::codec::rtp_pack::rtp_header(p.payload_type, p.marker, p.seq, p.timestamp, p.ssrc));
    buf.extend_from_slice(&p.payload);
    rec.packet(buf);
}

/// One stream's RTCP with its source (D91): receiver statistics, the camera's sender reports,
/// and receiver reports sent where its SDP answer asks (UDP) or on its connection (TCP).
struct RtcpLink {
    receiver: rtcp::Receiver,
    /// UDP: the port the camera's own RTCP came from (symmetric RTCP, RFC 4961).
    learned_port: Option<u16>,
    /// RFC 4571 bytes not yet written: a TCP write never blocks the stream task.
    tcp_out: Vec<u8>,
    log: RateLimit,
}

impl RtcpLink {
    fn new(cfg: &RtpConfig) -> RtcpLink {
        let interval = cfg.rtcp_interval.0.as_micros().min(u64::MAX as u128) as u64;
        RtcpLink {
            receiver: rtcp::Receiver::new(rand::random(), "gbgate", 90_000, interval),
            learned_port: None,
            tcp_out: Vec::new(),
            log: RateLimit::new(Duration::from_secs(60)),
        }
    }

    /// Takes in what the source sent, sends a report when one is due, flushes pending TCP bytes.
    fn tick(
        &mut self,
        source: &mut PacketSource,
        stream: &Stream,
        route: &RouteStats,
        shared: &RtpShared,
        mode: RtcpMode,
        now_us: u64,
    ) {
        let peer = stream.source.peer;
        let mut srs = 0;
        match source {
            PacketSource::Udp => {
                let inbox: Vec<_> = route.rtcp_in.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
                for (datagram, from) in inbox {
                    srs += self.receiver.on_rtcp(&datagram, now_us);
                    // Only the RTP source's host may move where reports go (routing checked it).
                    if from.ip() == peer.ip() {
                        self.learned_port = Some(from.port());
                    }
                }
            }
            PacketSource::Tcp { rtcp_in, .. } => {
                for frame in rtcp_in.drain(..) {
                    srs += self.receiver.on_rtcp(&frame, now_us);
                }
            }
        }
        if srs > 0 {
            shared.counters.rtcp_sr_received.fetch_add(srs as u64, Ordering::Relaxed);
        }
        let tcp = matches!(source, PacketSource::Tcp { .. });
        if self.receiver.poll_timeout().is_some_and(|due| now_us >= due) {
            let hint = shared.rtcp_hint(&stream.name);
            match self.target(mode, tcp, hint, peer) {
                None => self.receiver.skip_report(now_us),
                Some(dst) => {
                    let Some(report) = self.receiver.poll_report(now_us) else { return };
                    shared.counters.rtcp_rr_sent.fetch_add(1, Ordering::Relaxed);
                    match dst {
                        Some(addr) => {
                            if let Some(sock) = shared.udp_socket.get() {
                                if let Err(e) = sock.send_to(&report, addr) {
                                    if let Some(suppressed) = self.log.check(Instant::now()) {
                                        debug!(%addr, suppressed, "RTCP receiver report not sent: {e}");
                                    }
                                }
                            }
                        }
                        // A report still unwritten is replaced by none: the next one is fresher.
                        None if self.tcp_out.is_empty() => {
                            self.tcp_out.extend_from_slice(&(report.len() as u16).to_be_bytes());
                            self.tcp_out.extend_from_slice(&report);
                        }
                        None => {}
                    }
                }
            }
        }
        if let (PacketSource::Tcp { socket, .. }, false) = (&*source, self.tcp_out.is_empty()) {
            match socket.try_write(&self.tcp_out) {
                Ok(n) => {
                    self.tcp_out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.tcp_out.clear();
                    if let Some(suppressed) = self.log.check(Instant::now()) {
                        debug!(suppressed, "RTCP receiver report not written: {e}");
                    }
                }
            }
        }
    }

    /// Where a report goes: `Some(Some(addr))` over UDP, `Some(None)` on the TCP connection,
    /// `None` nowhere. Over UDP the destination host is always the RTP source's (a device's SDP
    /// must not aim our reports at a third party); the port is `a=rtcp`'s, else the one its RTCP
    /// came from, else RTP + 1 (RFC 3550 11).
    fn target(
        &self,
        mode: RtcpMode,
        tcp: bool,
        hint: Option<RtcpHint>,
        peer: SocketAddr,
    ) -> Option<Option<SocketAddr>> {
        let asked = match mode {
            RtcpMode::Off => false,
            RtcpMode::Always => true,
            RtcpMode::Auto if tcp => hint.is_some_and(|h| h.mux),
            RtcpMode::Auto => hint.is_some() || self.learned_port.is_some(),
        };
        if !asked {
            return None;
        }
        if tcp {
            return Some(None);
        }
        let port =
            hint.and_then(|h| h.addr.map(|a| a.port())).or(self.learned_port).or_else(|| peer.port().checked_add(1))?;
        Some(Some(SocketAddr::new(peer.ip(), port)))
    }
}

/// Keeps this stream's share of the global byte budget equal to what its reassembly holds. When
/// the budget is spent, a stream holding more than a reorder window's worth sheds its partial
/// access unit (counted in `budget_drops`) instead of growing.
fn account(ingest: &mut StreamIngest, reserved: &mut usize, shared: &RtpShared, out: &mut Vec<crate::media::Frame>) {
    let held = ingest.held_bytes();
    if held <= *reserved {
        shared.release(*reserved - held);
        *reserved = held;
        return;
    }
    if shared.reserve(held - *reserved) {
        *reserved = held;
        return;
    }
    if held > SHED_ABOVE {
        shared.counters.budget_drops.fetch_add(1, Ordering::Relaxed);
        ingest.shed(out);
    }
    // What it still holds is counted even over the budget (bounded by the per-stream caps).
    let held = ingest.held_bytes();
    if held >= *reserved {
        shared.buffered.fetch_add(held - *reserved, Ordering::Relaxed);
    } else {
        shared.release(*reserved - held);
    }
    *reserved = held;
}

fn publish_stats(
    stream: &Stream,
    ingest: &StreamIngest,
    media: &MediaPipeline,
    route: &RouteStats,
    rtcp: Option<&RtcpLink>,
) {
    let mut stats = ingest.stream_stats();
    stats.rtcp = rtcp.map(|l| l.receiver.counters());
    stats.media = media.stats();
    stats.queue_drops = route.queue_drops.load(Ordering::Relaxed);
    stats.foreign_packets = route.foreign.load(Ordering::Relaxed);
    stream.set_stats(stats);
}

async fn serve_tcp(
    listener: TcpListener,
    cfg: RtpConfig,
    hub: Arc<Hub>,
    shared: Arc<RtpShared>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_tcp_connections));
    let per_source: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let mut refused_log = RateLimit::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => { backoff = Duration::from_millis(10); r }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning (mini-redis style).
                    warn!("TCP accept error: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // One address may hold only so many connections: room stays for everyone else.
        let Some(per_source) = SourceSlot::take(&per_source, peer.ip(), cfg.max_tcp_per_source) else {
            shared.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = refused_log.check(Instant::now()) {
                warn!(%peer, suppressed, limit = cfg.max_tcp_per_source, "RTP/TCP connection refused: too many from this address");
            }
            continue;
        };
        shared.counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let _ = socket.set_nodelay(true);
        let (cfg, hub, shared, shutdown) = (cfg.clone(), hub.clone(), shared.clone(), shutdown.clone());
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = run_tcp_connection(socket, peer, cfg, hub, shared, None) => {}
                    _ = shutdown.cancelled() => {}
                }
                drop(permit);
                drop(per_source);
            }
            .instrument(tracing::info_span!("rtp_tcp", %peer)),
        );
    }
}

/// A connection counted against its source address; the count drops with it.
struct SourceSlot {
    counts: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl SourceSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<SourceSlot> {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { counts: counts.clone(), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

async fn run_tcp_connection(
    socket: TcpStream,
    peer: SocketAddr,
    cfg: RtpConfig,
    hub: Arc<Hub>,
    shared: Arc<RtpShared>,
    name_given: Option<String>,
) {
    let mut framer = TcpFramer::new().keep_rtcp(RTCP_INBOX);
    let first_deadline = Instant::now() + cfg.tcp_frame_timeout.0;
    // Wait for the first RTP packet to learn the SSRC (and so the stream name).
    let first = loop {
        if let Some(frame) = framer.next_packet() {
            match RtpPacket::parse(frame) {
                Ok(p) => break p,
                Err(_) => {
                    shared.counters.bad_packets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        // One deadline for the whole first frame: a byte now and then does not extend it.
        match tokio::time::timeout_at(first_deadline.into(), read_into_framer(&socket, &mut framer)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!("TCP read error before the first packet: {e}");
                return;
            }
            Err(_) => {
                shared.counters.tcp_slow_closed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) =
                    shared.refusal_log.lock().unwrap_or_else(|e| e.into_inner()).check(Instant::now())
                {
                    info!(%peer, suppressed, "no complete RTP frame within {} on a new TCP connection; closing", humantime::format_duration(cfg.tcp_frame_timeout.0));
                }
                return;
            }
        }
    };
    let ssrc = first.ssrc;
    let mut name = name_given.or_else(|| shared.announced_name(ssrc));
    // An unannounced SSRC on a connection from a device with a session waiting: bind it, waiting a
    // little while other sessions from the same address are still unresolved.
    for _ in 0..30 {
        if name.is_some() {
            break;
        }
        match shared.claim_source(peer.ip(), true, None) {
            Claim::Bound(n) => name = Some(n),
            Claim::Ambiguous => tokio::time::sleep(Duration::from_millis(100)).await,
            Claim::Nobody => break,
        }
        name = name.or_else(|| shared.announced_name(ssrc));
    }
    let unknown = name.is_none();
    if unknown {
        notify_unknown(&hub.notifier(), ssrc, peer, "tcp");
    }
    let name = match name {
        Some(name) => {
            if !shared.source_allowed(&name, peer) {
                return;
            }
            shared.forget_expected(&name);
            name
        }
        None => match cfg.unknown_ssrc {
            UnknownSsrc::Publish => unknown_stream_name(ssrc),
            UnknownSsrc::Report => {
                shared.counters.unknown_ssrc_packets.fetch_add(1, Ordering::Relaxed);
                shared.report_unknown(ssrc, peer);
                warn!(ssrc = %ssrc_text(ssrc), "TCP RTP from an unknown SSRC (not published); closing");
                return;
            }
            UnknownSsrc::Drop => {
                shared.counters.unknown_ssrc_packets.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let route_stats = Arc::new(RouteStats::default());
    let source = Source { transport: Transport::Tcp, peer, ssrc: Some(ssrc) };
    let Some(stream) = shared.create_stream(&hub, &name, source, unknown, &route_stats) else { return };
    let span = tracing::info_span!("stream", stream = %name, ssrc = %ssrc_text(ssrc), transport = "tcp");
    async {
        info!("stream started");
        let resyncs_counted = framer.stats().resyncs;
        if resyncs_counted > 0 {
            shared.counters.tcp_resyncs.fetch_add(resyncs_counted, Ordering::Relaxed);
        }
        let pipeline = shared.media_pipeline(&stream);
        let shared2 = shared.clone();
        let source =
            PacketSource::Tcp { socket, framer, shared, first: Some(first), resyncs_counted, rtcp_in: Vec::new() };
        let reason = run_stream(source, &stream, &cfg, pipeline, route_stats, &shared2).await;
        stream.event("stop", &reason);
        hub.remove(&stream);
        info!("stream ended: {reason}");
    }
    .instrument(span)
    .await
}

/// GB28181 "TCP active": the gateway connects to the camera's listener (`target`, else
/// `fallback`: the signalling source IP when the answered address is private or wrong) and reads
/// RFC 4571 framed RTP on that connection, published as `name`. Returns when the stream ends.
pub async fn connect_active(
    target: SocketAddr,
    fallback: Option<SocketAddr>,
    name: String,
    cfg: RtpConfig,
    hub: Arc<Hub>,
    shared: Arc<RtpShared>,
) -> Result<(), String> {
    let mut last_err = String::new();
    for addr in std::iter::once(target).chain(fallback.filter(|f| *f != target)) {
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
            Ok(Ok(socket)) => {
                shared.counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
                let _ = socket.set_nodelay(true);
                run_tcp_connection(socket, addr, cfg, hub, shared, Some(name))
                    .instrument(tracing::info_span!("rtp_tcp_active", peer = %addr))
                    .await;
                return Ok(());
            }
            Ok(Err(e)) => last_err = format!("connect to {addr}: {e}"),
            Err(_) => last_err = format!("connect to {addr}: timed out"),
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::HubConfig;
    use crate::media::{AudioConfig as TrackAudio, Codec, CodecConfig, Frame};

    fn probe_packet(ssrc: u32, seq: u16) -> RtpPacket {
        RtpPacket { ssrc, seq, timestamp: 0, marker: false, payload_type: 96, payload: Bytes::from_static(&[0; 100]) }
    }

    #[test]
    fn a_coalesced_buffer_splits_at_the_stride_and_a_plain_one_is_one_datagram() {
        let data: Vec<u8> = (0..100u8).collect();
        let parts: Vec<&[u8]> = gro_datagrams(&data, 40).collect();
        assert_eq!(parts, [&data[..40], &data[40..80], &data[80..]]);
        assert_eq!(gro_datagrams(&data, 100).collect::<Vec<_>>(), [&data[..]]);
        // No GRO: quinn-udp sets the stride to the length; 0 is treated the same.
        assert_eq!(gro_datagrams(&data, 0).count(), 1);
        // An empty datagram is still one datagram (counted as not RTP, as before D173).
        assert_eq!(gro_datagrams(&[], 0).collect::<Vec<_>>(), [&[] as &[u8]]);
    }

    #[test]
    fn a_flood_from_one_address_evicts_its_own_probation_entries_only() {
        let counters = RtpCounters::default();
        let mut p = Probation::new();
        let camera: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let flooder: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        assert!(p.offer(probe_packet(1, 10), camera, &counters).is_none());
        for ssrc in 100..100_000 {
            assert!(p.offer(probe_packet(ssrc, 1), flooder, &counters).is_none());
        }
        assert_eq!(p.per_ip[&flooder.ip()], PROBATION_PER_SOURCE);
        assert!(p.bytes <= PROBATION_BYTES);
        // The camera's first packet survived the flood: its second completes probation.
        let packets = p.offer(probe_packet(1, 11), camera, &counters).expect("promoted");
        assert_eq!(packets.len(), 2);
        assert!(counters.probation_evicted.load(Ordering::Relaxed) >= 99_000);
    }

    #[test]
    fn a_signalled_g711_rate_replaces_detection_for_that_stream_only() {
        let shared = RtpShared::new();
        let hub = Hub::new(HubConfig::default(), 4);
        let source =
            |ssrc| Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(ssrc) };
        let hinted = hub.create("gb/34020000001320000001", source(1), Takeover::Refuse).unwrap();
        let other = hub.create("gb/34020000001320000002", source(2), Takeover::Refuse).unwrap();
        shared.hint_g711_rate(&hinted.name, 16_000);
        let frame = Frame {
            codec: Codec::G711A,
            pts: 0,
            dts: 0,
            keyframe: true,
            data: Bytes::from_static(&[0xd5; 320]),
            config: Arc::new(CodecConfig::Audio(TrackAudio { sample_rate: 8000, channels: 1, asc: None })),
            cache: Default::default(),
        };
        let mut out = Vec::new();
        let mut p = shared.media_pipeline(&hinted);
        p.push(frame.clone(), Some(0), &mut out);
        let stats = p.stats();
        assert_eq!((stats.g711_rate, stats.g711_rate_source), (Some(16_000), Some("signalled")));
        let mut p = shared.media_pipeline(&other);
        p.push(frame, Some(0), &mut out);
        assert_eq!(p.stats().g711_rate, None, "still detecting");
        shared.withdraw_name(&hinted.name);
        assert!(shared.g711_rates.lock().unwrap().is_empty());
    }

    #[test]
    fn a_signalled_8k_rate_is_corrected_when_the_camera_sends_16k() {
        let shared = RtpShared::new();
        let hub = Hub::new(HubConfig::default(), 4);
        let src = Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(1) };
        let s = hub.create("gb/34020000001310000001", src, Takeover::Refuse).unwrap();
        shared.hint_g711_rate(&s.name, 8_000);
        let mut p = shared.media_pipeline(&s);
        let mut out = Vec::new();
        // 640 bytes every 40 ms (PTS and arrival): 16 kHz.
        for i in 0..75u64 {
            let frame = Frame {
                codec: Codec::G711A,
                pts: i as i64 * 3600,
                dts: i as i64 * 3600,
                keyframe: true,
                data: Bytes::from_static(&[0xd5; 640]),
                config: Arc::new(CodecConfig::Audio(TrackAudio { sample_rate: 8000, channels: 1, asc: None })),
                cache: Default::default(),
            };
            p.push(frame, Some(i * 40_000), &mut out);
        }
        let stats = p.stats();
        assert_eq!((stats.g711_rate, stats.g711_rate_source), (Some(16_000), Some("detected")));
    }
}
