//! The stream hub: a registry of live streams, each with a GOP cache and bounded fan-out.
//!
//! Policy (moonfire-nvr / mediamtx style, see docs/architecture.md):
//! - The publisher never waits for a subscriber. Each subscriber has its own bounded queue and
//!   frames are handed over without waiting (a `Frame` clone is a few reference-count bumps;
//!   the queue is `hub::queue`, D195).
//! - A subscriber whose queue is full loses frames until the next video keyframe (counted as
//!   drops). One that has to skip more than `max_skips_per_minute` times is disconnected.
//! - A new subscriber first receives the cached GOP (from the last keyframe), so its first
//!   picture does not wait for the next keyframe. The snapshot and the registration happen under
//!   the same lock as publishing, so there is neither a gap nor a duplicate between them.
//! - Queues exist only for subscribers: a stream nobody watches holds only its GOP cache.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::HubConfig;
use crate::media::{Frame, MediaKind};
// The stats types are media's (the ingest fills them); the hub keeps one per stream.
pub use crate::media::stats::{AudioStats, StreamStats, VideoStats};

mod gop;
mod queue;
pub mod tracks;
pub mod watch;
pub use gop::GopCache;
pub use tracks::TrackHints;

/// How a stream arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// GB28181 RTP over UDP.
    Udp,
    /// GB28181 RTP over TCP (RFC 4571).
    Tcp,
    /// Published by an RTMP client (ffmpeg, OBS).
    Rtmp,
    /// Pushed or pulled over RTSP.
    Rtsp,
}

/// Where a stream comes from. `peer` is the first source address seen (a camera behind NAT may
/// later send from elsewhere; the first address is what an operator matches against SIP).
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// The RTP SSRC for GB28181 sources; `None` for RTMP/RTSP ingest.
    pub ssrc: Option<u32>,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionEnded {
    #[error("the stream ended")]
    StreamEnded,
    #[error("the subscriber fell behind too often and was disconnected")]
    TooSlow,
}

struct SubscriberSlot {
    id: u64,
    /// Who subscribed ("rtsp", "rtmp", "push", ...), for the per-protocol player counts.
    label: &'static str,
    tx: queue::QueueTx,
    needs_keyframe: bool,
    skips: VecDeque<Instant>,
    drops: Arc<AtomicU64>,
    kicked: Arc<std::sync::atomic::AtomicBool>,
    /// Audio of a video stream is handed over with the next video frame (D178): a player that
    /// writes per video frame would only hold it, so waking it per audio frame buys nothing.
    audio_with_video: bool,
    /// Audio frames waiting for the next video frame (at most [`HELD_AUDIO`]).
    held: Vec<Frame>,
    /// A player the publisher may write to itself while it keeps up (D183).
    direct: Option<Arc<dyn DirectSink>>,
}

/// A player that the publisher writes to directly while it keeps up (D183): one non-blocking
/// write per frame from the publishing side instead of a queue hand-over and a wake-up of the
/// player's task per frame and player.
pub trait DirectSink: Send + Sync {
    /// Called by the publisher, under the stream's lock, with the audio held for this player and
    /// the frame. While the player is in direct mode, packetises them into the player's pending
    /// bytes and returns [`Offer::Flush`]: the publisher then calls [`DirectSink::flush`] once it
    /// has released the stream's lock. Otherwise returns `queue(held)` as [`Offer::Kept`] or
    /// [`Offer::Gone`], `queue` called while the sink's own lock is held, so that a player
    /// switching to direct mode cannot overtake a frame that is being queued for it.
    fn offer(&self, held: &mut Vec<Frame>, frame: &Frame, queue: &mut dyn FnMut(&mut Vec<Frame>) -> bool) -> Offer;
    /// Writes what is pending without blocking, if the player is still in direct mode (what does
    /// not fit is handed to the player's task). Called outside the stream's lock: the bytes were
    /// ordered by `offer`, and whoever flushes writes all of them, so frames published from two
    /// threads (video, transcoded audio) stay in order.
    fn flush(&self);
}

/// What [`DirectSink::offer`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the player's task (or nothing to write); the player stays.
    Kept,
    /// Packetised for a direct write: flush after releasing the stream's lock.
    Flush,
    /// The player is gone.
    Gone,
}

/// Audio frames held for a subscriber until the next video frame: at 11025 Hz AAC (93 ms a
/// frame) and 25 fps video, one at a time; more means the video stopped.
const HELD_AUDIO: usize = 4;
/// Audio is held for video only while video came this recently; after that it goes at once.
const AUDIO_WAITS_FOR_VIDEO: Duration = Duration::from_millis(100);

struct Fanout {
    gop: GopCache,
    subscribers: Vec<SubscriberSlot>,
    has_video: bool,
    closed: bool,
    /// The track configs published so far (DESCRIBE answers from them, D167).
    tracks: TrackHints,
    /// Why the cache holds what it holds (D157), for the API and the stream's log.
    gop_state: GopCacheState,
    /// This stream's caches emptied to stay within the global budget.
    gop_evictions: u64,
    /// Players of this (video) stream that started at a cached keyframe / had to wait for one.
    gop_hits: u64,
    gop_misses: u64,
    /// When the last video frame was published (audio is held for video only while it flows).
    last_video: Option<Instant>,
}

/// Whether a stream keeps its GOP cache (D157), as `GET /api/v1/streams` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GopCacheState {
    /// Kept: a new player starts at the cached keyframe at once.
    Kept,
    /// Not kept: nobody watched the stream within `gop_cache_idle` (`gop_cache = "watched"`); its
    /// first player waits for the next keyframe, and the cache is kept again from then on.
    Unwatched,
    /// Emptied to stay within `gop_cache_total_bytes`; refilled from the next keyframe if there is room.
    OverBudget,
}

/// One live stream.
pub struct Stream {
    pub name: String,
    pub source: Source,
    pub started_at: SystemTime,
    fanout: Mutex<Fanout>,
    stats: Mutex<StreamStats>,
    next_subscriber: AtomicU64,
    /// Frames not delivered to some subscriber, summed over subscribers.
    drops: AtomicU64,
    /// The audio track the stream will carry, announced by its media stage before the first
    /// audio frame (D63): lets RTSP DESCRIBE list it at once.
    audio_hint: Mutex<Option<(crate::media::Codec, Arc<crate::media::CodecConfig>)>>,
    cfg: HubConfig,
    gop_budget: Arc<GopBudget>,
    /// Raw RTP recording of this stream, when `[record] streams` matches its name (D89).
    record: Option<crate::diag::record::RecordHandle>,
    /// This stream's own event log (D90).
    log: Option<Arc<crate::diag::streamlog::StreamLog>>,
    stop_logged: std::sync::atomic::AtomicBool,
    /// Callbacks (D96): `stream_state` on the first frame, a stall, its end and the stop.
    notifier: crate::notify::Notifier,
    /// [`LifeState`] as a number: new, live, stalled, stopped.
    life: std::sync::atomic::AtomicU8,
    /// When the last frame came, in ms after `born` (for stall detection).
    last_frame_ms: AtomicU64,
    born: Instant,
    /// Set when this stream repeats another one's frames (a GB channel's stream, D103): reports
    /// of ingest traffic count the original only.
    copy_of: std::sync::OnceLock<String>,
    /// Players counted without a subscription each (HLS sessions share one segmenter), by label.
    viewers: Mutex<std::collections::BTreeMap<&'static str, usize>>,
    /// When the stream was last watched or asked for (or was born), in ms after `born` plus one:
    /// a `watched` stream keeps its GOP cache until `gop_cache_idle` after that (D157).
    wanted_ms: AtomicU64,
}

/// Where a stream is in the life `stream_state` reports.
const LIFE_NEW: u8 = 0;
const LIFE_LIVE: u8 = 1;
const LIFE_STALLED: u8 = 2;
const LIFE_STOPPED: u8 = 3;

/// The bytes every stream's GOP cache holds together, bounded by `hub.gop_cache_total_bytes`
/// (issue 8, hole 16: `max_streams` x `gop_cache_bytes` alone allowed 8 GiB).
#[derive(Debug, Default)]
pub struct GopBudget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
    /// GOP caches emptied because the total was over the budget.
    clears: AtomicU64,
    /// Streams whose cache is not empty.
    streams: std::sync::atomic::AtomicUsize,
    /// Players of video streams that started at a cached keyframe / had to wait for the next one.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl GopBudget {
    /// (bytes held by all GOP caches, the budget, caches emptied to stay within it)
    pub fn usage(&self) -> (usize, usize, u64) {
        (self.used.load(Ordering::Relaxed), self.max, self.clears.load(Ordering::Relaxed))
    }

    /// Streams whose GOP cache holds something now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// (players that started at a cached keyframe, players that waited for the next keyframe)
    pub fn starts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Accounts a cache going from `before` to `after` bytes; returns the new total.
    fn account(&self, before: usize, after: usize) -> usize {
        match (before, after) {
            (0, a) if a > 0 => {
                self.streams.fetch_add(1, Ordering::Relaxed);
            }
            (b, 0) if b > 0 => {
                self.streams.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed).saturating_add(after - before)
        } else {
            self.used.fetch_sub(before - after, Ordering::Relaxed).saturating_sub(before - after)
        }
    }
}

impl Stream {
    fn new(name: String, source: Source, cfg: HubConfig, gop_budget: Arc<GopBudget>) -> Stream {
        Stream {
            gop_budget,
            name,
            source,
            started_at: SystemTime::now(),
            fanout: Mutex::new(Fanout {
                gop: GopCache::new(cfg.gop_cache_bytes, cfg.gop_cache_duration.0),
                subscribers: Vec::new(),
                has_video: false,
                closed: false,
                tracks: TrackHints::default(),
                gop_state: GopCacheState::Kept,
                gop_evictions: 0,
                gop_hits: 0,
                gop_misses: 0,
                last_video: None,
            }),
            stats: Mutex::new(StreamStats::default()),
            next_subscriber: AtomicU64::new(1),
            drops: AtomicU64::new(0),
            audio_hint: Mutex::new(None),
            cfg,
            record: None,
            log: None,
            stop_logged: std::sync::atomic::AtomicBool::new(false),
            notifier: crate::notify::Notifier::disabled(),
            life: std::sync::atomic::AtomicU8::new(LIFE_NEW),
            last_frame_ms: AtomicU64::new(0),
            born: Instant::now(),
            copy_of: std::sync::OnceLock::new(),
            viewers: Mutex::new(std::collections::BTreeMap::new()),
            // A stream's arrival counts as asking for it (a GB stream comes because of an INVITE;
            // its first player usually follows within seconds).
            wanted_ms: AtomicU64::new(1),
        }
    }

    /// Marks the stream as watched or asked for now: a `watched` stream (re)starts its GOP cache
    /// at its next keyframe and keeps it for `gop_cache_idle` (D157).
    pub fn want_gop_cache(&self) {
        self.wanted_ms.store(self.born.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// Whether the stream keeps a GOP cache now (D157).
    fn keeps_gop(&self, has_subscribers: bool, now_ms: u64) -> bool {
        if self.cfg.gop_cache == crate::config::GopCacheMode::Always || has_subscribers {
            return true;
        }
        let wanted = self.wanted_ms.load(Ordering::Relaxed);
        wanted != 0 && now_ms.saturating_sub(wanted - 1) <= self.cfg.gop_cache_idle.0.as_millis() as u64
    }

    fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Stream {
        self.notifier = notifier;
        self
    }

    fn notify_state(&self, state: crate::notify::StreamState, reason: String) {
        self.notifier.emit(crate::notify::Event::StreamState {
            stream: self.name.clone(),
            channel: None,
            state,
            reason,
        });
    }

    /// The cold path of `publish` when the stream was not live: its first frame, or frames again
    /// after a stall.
    fn frame_after(&self, life: u8, now: Instant) {
        if self.life.compare_exchange(life, LIFE_LIVE, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        match life {
            LIFE_NEW => {
                let ssrc = self.source.ssrc.map(|s| format!(" ssrc {s:010}")).unwrap_or_default();
                let from = format!("{:?} from {}{ssrc}", self.source.transport, self.source.peer).to_lowercase();
                self.notify_state(crate::notify::StreamState::Live, format!("first frame ({from})"));
            }
            LIFE_STALLED => {
                let gap = now
                    .duration_since(self.born)
                    .saturating_sub(Duration::from_millis(self.last_frame_ms.load(Ordering::Relaxed)));
                self.notify_state(crate::notify::StreamState::Resumed, format!("frames again after {}", secs(gap)));
            }
            _ => {}
        }
    }

    /// How long the stream has had no frame: `None` before its first frame.
    pub fn quiet_for(&self, now: Instant) -> Option<Duration> {
        if self.life.load(Ordering::Relaxed) == LIFE_NEW {
            return None;
        }
        let last = self.born + Duration::from_millis(self.last_frame_ms.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(last))
    }

    /// Reports the stream `stalled` when it is live and has had no frame for `after` (once, until
    /// frames come back). Called by the hub's watcher.
    pub fn check_stall(&self, now: Instant, after: Duration) {
        if self.life.load(Ordering::Relaxed) != LIFE_LIVE {
            return;
        }
        let last = self.born + Duration::from_millis(self.last_frame_ms.load(Ordering::Relaxed));
        let quiet = now.saturating_duration_since(last);
        if quiet >= after
            && self.life.compare_exchange(LIFE_LIVE, LIFE_STALLED, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.notify_state(crate::notify::StreamState::Stalled, format!("no data for {}", secs(quiet)));
        }
    }

    /// Marks this stream as a copy of stream `origin` (set once).
    pub fn mark_copy_of(&self, origin: &str) {
        let _ = self.copy_of.set(origin.to_string());
    }

    /// The stream this one repeats, if it is a copy (see [`Stream::mark_copy_of`]).
    pub fn copy_of(&self) -> Option<&str> {
        self.copy_of.get().map(String::as_str)
    }

    fn with_diag(mut self, diag: &crate::diag::Diag) -> Stream {
        self.record = diag.recorder.as_ref().and_then(|r| r.handle(&self.name));
        self.log = diag.logs.as_ref().map(|l| Arc::new(l.open(&self.name)));
        self
    }

    /// The stream's recording, if its name is recorded: the ingest hands it each RTP packet.
    pub fn record(&self) -> Option<&crate::diag::record::RecordHandle> {
        self.record.as_ref()
    }

    pub fn record_stats(&self) -> Option<crate::diag::record::RecordStats> {
        self.record.as_ref().map(|r| r.stats())
    }

    pub fn log_stats(&self) -> Option<crate::diag::streamlog::StreamLogStats> {
        self.log.as_ref().map(|l| l.stats())
    }

    /// Writes one event to the stream's own log (a no-op when per-stream logs are off). `kind`
    /// is one word (`start`, `stop`, `codec`, `loss`, `repair`, `player`, `push`, ...).
    pub fn event(&self, kind: &str, text: &str) {
        if kind == "stop" {
            self.stop_logged.store(true, Ordering::Relaxed);
            // The driver's stop reason is the `stream_state` reason too (D96).
            if self.life.swap(LIFE_STOPPED, Ordering::Relaxed) != LIFE_STOPPED {
                self.notify_state(crate::notify::StreamState::Stopped, text.to_string());
            }
        }
        if let Some(log) = &self.log {
            log.event(kind, text);
        }
    }

    /// Events a new stats snapshot shows against the previous one: codec changes, loss bursts,
    /// timestamp repairs, transcoder errors (every source publishes its stats here).
    fn stats_events(&self, old: &StreamStats, new: &StreamStats) {
        if let Some(v) = &new.video {
            if old.video.as_ref().is_none_or(|o| (o.codec, o.width, o.height) != (v.codec, v.width, v.height)) {
                self.event("codec", &format!("video {} {}x{}", v.codec, v.width, v.height));
            }
        }
        if let Some(a) = &new.audio {
            if old
                .audio
                .as_ref()
                .is_none_or(|o| (o.codec, o.sample_rate, o.channels) != (a.codec, a.sample_rate, a.channels))
            {
                self.event("codec", &format!("audio {} {} Hz {} ch", a.codec, a.sample_rate, a.channels));
            }
        }
        let lost = new.lost.saturating_sub(old.lost);
        if lost > 0 {
            self.event("loss", &format!("{lost} RTP packets lost ({} in all)", new.lost));
        }
        let (r, o) = (&new.media.repair, &old.media.repair);
        let repairs = [
            ("video timestamp went back", r.video_back_steps.saturating_sub(o.video_back_steps)),
            ("video timestamp jumped", r.video_jumps.saturating_sub(o.video_jumps)),
            ("video timestamp repeated", r.video_zero_steps.saturating_sub(o.video_zero_steps)),
            ("audio realigned to video", r.audio_realigned.saturating_sub(o.audio_realigned)),
        ];
        for (what, n) in repairs.iter().filter(|(_, n)| *n > 0) {
            self.event("repair", &format!("{what}: {n}"));
        }
        let errors = |s: &StreamStats| s.media.transcode.as_ref().map_or(0, |t| t.errors);
        let e = errors(new).saturating_sub(errors(old));
        if e > 0 {
            self.event("transcoder", &format!("{e} audio frames failed to transcode ({} in all)", errors(new)));
        }
    }

    /// Announces the audio track this stream's frames will carry (codec and output config).
    pub fn announce_audio(&self, codec: crate::media::Codec, config: Arc<crate::media::CodecConfig>) {
        *lock(&self.audio_hint) = Some((codec, config));
    }

    /// The announced audio track, if any.
    pub fn announced_audio(&self) -> Option<(crate::media::Codec, Arc<crate::media::CodecConfig>)> {
        lock(&self.audio_hint).clone()
    }

    /// Publishes one frame: into the GOP cache and to every subscriber, never waiting.
    pub fn publish(&self, frame: Frame) {
        let mut flush = Vec::new();
        {
            let mut f = lock(&self.fanout);
            self.publish_locked(frame, &mut f, &mut flush);
        }
        // The direct players' `writev`s, after the stream's lock is released: a subscribe,
        // DESCRIBE or API count does not wait for a frame's fan-out (D183).
        for d in flush {
            d.flush();
        }
    }

    fn publish_locked(&self, frame: Frame, f: &mut Fanout, flush: &mut Vec<Arc<dyn DirectSink>>) {
        let now = Instant::now();
        if f.closed {
            return;
        }
        let life = self.life.load(Ordering::Relaxed);
        if life != LIFE_LIVE {
            self.frame_after(life, now);
        }
        let now_ms = now.duration_since(self.born).as_millis() as u64;
        self.last_frame_ms.store(now_ms, Ordering::Relaxed);
        let is_video = frame.kind() == MediaKind::Video;
        f.has_video |= is_video;
        f.tracks.see(&frame);
        let has_video = f.has_video;
        let max_skips = self.cfg.max_skips_per_minute as usize;
        // A subscriber that lost frames resumes only here: a video keyframe, or any frame of an
        // audio-only stream.
        let resume_point = if has_video { is_video && frame.keyframe } else { true };
        if is_video {
            f.last_video = Some(now);
        }
        // Audio of a stream whose video flows waits for the next video frame (D178).
        let hold_audio =
            !is_video && has_video && f.last_video.is_some_and(|t| now.duration_since(t) < AUDIO_WAITS_FOR_VIDEO);
        f.subscribers.retain_mut(|s| {
            if s.needs_keyframe && !resume_point {
                s.drops.fetch_add(1, Ordering::Relaxed);
                self.drops.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if s.audio_with_video && hold_audio && s.held.len() < HELD_AUDIO {
                s.held.push(frame.clone());
                return true;
            }
            let mut held = std::mem::take(&mut s.held);
            let keep = match s.direct.take() {
                Some(d) => {
                    let offer = d.offer(&mut held, &frame, &mut |held| {
                        self.queue(s, held, &frame, now, resume_point, max_skips)
                    });
                    if offer == Offer::Flush {
                        flush.push(d.clone());
                    }
                    s.direct = Some(d);
                    offer != Offer::Gone
                }
                None => self.queue(s, &mut held, &frame, now, resume_point, max_skips),
            };
            held.clear();
            s.held = held;
            keep
        });
        let budget = &self.gop_budget;
        let before = f.gop.bytes();
        if !self.keeps_gop(!f.subscribers.is_empty(), now_ms) {
            // Nobody watched it lately: the cache would buy nothing but memory (D157).
            if f.gop_state != GopCacheState::Unwatched {
                f.gop_state = GopCacheState::Unwatched;
                f.gop.clear();
                budget.account(before, 0);
                tracing::debug!(stream = %self.name, "no player within hub.gop_cache_idle: GOP cache released");
                self.event("gop", "no player within hub.gop_cache_idle: GOP cache released");
            }
            return;
        }
        if !f.subscribers.is_empty() {
            self.wanted_ms.store(now_ms + 1, Ordering::Relaxed);
        }
        f.gop.push(frame);
        let after = f.gop.bytes();
        // Unwatched -> kept at once (filling from the next keyframe); over budget -> kept once refilled.
        if f.gop_state == GopCacheState::Unwatched || after > 0 {
            f.gop_state = GopCacheState::Kept;
        }
        let used = budget.account(before, after);
        if used > budget.max {
            // Over the shared budget: the stream that grows gives its cache back. Its next
            // players start at its next keyframe instead of at once; others are untouched.
            budget.account(after, 0);
            f.gop.clear();
            f.gop_state = GopCacheState::OverBudget;
            f.gop_evictions += 1;
            if budget.clears.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                tracing::warn!(stream = %self.name, budget = budget.max, used, evictions = budget.clears.load(Ordering::Relaxed),
                    "GOP caches over hub.gop_cache_total_bytes: this stream's cache emptied (its next player waits for a keyframe)");
            }
        }
    }

    /// Hands `held` then `frame` to a subscriber's queue; whether the subscriber stays.
    fn queue(
        &self,
        s: &mut SubscriberSlot,
        held: &mut Vec<Frame>,
        frame: &Frame,
        now: Instant,
        resume_point: bool,
        max_skips: usize,
    ) -> bool {
        // Held audio first, in order, then the frame: one lock and one wake-up for all.
        let (lost, sent) = s.tx.send(held, Some(frame));
        if lost > 0 {
            s.drops.fetch_add(lost, Ordering::Relaxed);
            self.drops.fetch_add(lost, Ordering::Relaxed);
        }
        match sent {
            queue::Sent::Queued | queue::Sent::Nothing => {
                s.needs_keyframe = false;
                true
            }
            queue::Sent::Full => {
                s.drops.fetch_add(1, Ordering::Relaxed);
                self.drops.fetch_add(1, Ordering::Relaxed);
                // A skip starts when the queue first overflows, and again each time even a
                // resume point finds it full: a subscriber that never drains keeps skipping.
                if !s.needs_keyframe || resume_point {
                    s.needs_keyframe = true;
                    while s.skips.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                        s.skips.pop_front();
                    }
                    s.skips.push_back(now);
                    if s.skips.len() > max_skips {
                        tracing::info!(stream = %self.name, subscriber = s.id, "subscriber too slow, disconnecting");
                        s.kicked.store(true, Ordering::Relaxed);
                        return false;
                    }
                }
                true
            }
            // The subscriber went away.
            queue::Sent::Closed => false,
        }
    }

    /// Subscribes: the returned subscription yields the cached GOP first, then live frames.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_as("other")
    }

    /// Subscribes under a label (`"rtsp"`, `"rtmp"`, `"push"`) counted in [`Self::subscriber_counts`].
    pub fn subscribe_as(&self, label: &'static str) -> Subscription {
        self.subscribe_with(label, false, None)
    }

    /// Like [`Self::subscribe_as`], for a player that writes audio with the next video frame
    /// anyway (RTSP/RTMP, D14): while the stream's video flows, its audio frames are handed over
    /// with the next video frame, one wake-up per video frame instead of one per frame (D178).
    pub fn subscribe_player(&self, label: &'static str) -> Subscription {
        self.subscribe_with(label, true, None)
    }

    /// Like [`Self::subscribe_player`], for a player the publisher may write to directly while
    /// it keeps up (D183).
    pub fn subscribe_direct(&self, label: &'static str, sink: Arc<dyn DirectSink>) -> Subscription {
        self.subscribe_with(label, true, Some(sink))
    }

    fn subscribe_with(
        &self,
        label: &'static str,
        audio_with_video: bool,
        direct: Option<Arc<dyn DirectSink>>,
    ) -> Subscription {
        let log = self.log.clone();
        if let Some(l) = &log {
            l.event("player", &format!("{label} joined ({} watching)", self.subscriber_count() + 1));
        }
        let (tx, rx) = queue::queue(self.cfg.subscriber_queue);
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let drops = Arc::new(AtomicU64::new(0));
        let kicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.want_gop_cache();
        let mut f = lock(&self.fanout);
        let backlog: VecDeque<Frame> = f.gop.frames().cloned().collect();
        if f.has_video {
            // Instant start or not: what the GOP cache policy (D157) is judged by.
            if backlog.front().is_some_and(|fr| fr.keyframe && fr.kind() == MediaKind::Video) {
                f.gop_hits += 1;
                self.gop_budget.hits.fetch_add(1, Ordering::Relaxed);
            } else {
                f.gop_misses += 1;
                self.gop_budget.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !f.closed {
            f.subscribers.push(SubscriberSlot {
                id,
                label,
                tx,
                needs_keyframe: false,
                skips: VecDeque::new(),
                drops: drops.clone(),
                kicked: kicked.clone(),
                audio_with_video,
                held: Vec::new(),
                direct,
            });
        }
        Subscription { id, backlog, rx, drops, kicked, log, label }
    }

    /// Whether the stream was removed or replaced (its source should stop feeding it).
    pub fn is_closed(&self) -> bool {
        lock(&self.fanout).closed
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.fanout).subscribers.len()
    }

    /// Subscribers by label, e.g. `{"rtmp": 2, "rtsp": 10}`. A label with viewers
    /// ([`Stream::add_viewer`]) counts its viewers instead of its subscriptions.
    pub fn subscriber_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for s in &lock(&self.fanout).subscribers {
            *counts.entry(s.label).or_insert(0) += 1;
        }
        for (label, n) in lock(&self.viewers).iter() {
            match n {
                0 => counts.remove(label),
                n => counts.insert(label, *n),
            };
        }
        counts
    }

    /// Counts one player under `label` until the guard drops, for outputs whose players share one
    /// subscription (HLS: one segmenter per stream, one viewer per session). Once a label has had
    /// a viewer, its count in [`Stream::subscriber_counts`] is its viewers, not its subscriptions.
    pub fn add_viewer(self: &Arc<Self>, label: &'static str) -> ViewerGuard {
        *lock(&self.viewers).entry(label).or_insert(0) += 1;
        ViewerGuard { stream: self.clone(), label }
    }

    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }

    pub fn set_stats(&self, stats: StreamStats) {
        if self.log.is_some() {
            let old = std::mem::replace(&mut *lock(&self.stats), stats.clone());
            self.stats_events(&old, &stats);
            return;
        }
        *lock(&self.stats) = stats;
    }

    pub fn stats(&self) -> StreamStats {
        lock(&self.stats).clone()
    }

    /// Whether the GOP cache starts with a video keyframe: a new player can start decoding at once.
    /// Asking counts as wanting the cache (on-demand starts poll this until it is true).
    pub fn has_keyframe(&self) -> bool {
        self.want_gop_cache();
        lock(&self.fanout).gop.frames().next().is_some_and(|f| f.keyframe && f.kind() == MediaKind::Video)
    }

    /// The codec and configuration of the cached video, if any (WebRTC picks its payload type
    /// by them before it subscribes).
    pub fn cached_video(&self) -> Option<(crate::media::Codec, Arc<crate::media::CodecConfig>)> {
        self.want_gop_cache();
        lock(&self.fanout).gop.frames().find(|f| f.kind() == MediaKind::Video).map(|f| (f.codec, f.config.clone()))
    }

    /// The track configs this stream has published (newest video config with parameter sets,
    /// newest config of the first audio codec), whatever its GOP cache holds.
    pub fn track_hints(&self) -> TrackHints {
        lock(&self.fanout).tracks.clone()
    }

    /// Number of frames and bytes in the GOP cache.
    pub fn gop_cache_usage(&self) -> (usize, usize) {
        let f = lock(&self.fanout);
        (f.gop.len(), f.gop.bytes())
    }

    /// Whether the GOP cache is kept (D157), how often it was emptied for the global budget, and
    /// how many players started at a cached keyframe / waited for the next one.
    pub fn gop_cache_state(&self) -> (GopCacheState, u64, u64, u64) {
        let f = lock(&self.fanout);
        (f.gop_state, f.gop_evictions, f.gop_hits, f.gop_misses)
    }

    fn close(&self) {
        if let Some(r) = &self.record {
            r.close();
        }
        if !self.stop_logged.swap(true, Ordering::Relaxed) {
            self.event("stop", "removed");
        }
        let mut f = lock(&self.fanout);
        f.closed = true;
        // Held audio goes before the end (D178); dropping the senders then ends every
        // subscription once its queue is drained.
        for s in &mut f.subscribers {
            s.tx.send(&mut s.held, None);
        }
        f.subscribers.clear();
        self.gop_budget.account(f.gop.bytes(), 0);
        f.gop.clear();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let f = self.fanout.get_mut().unwrap_or_else(|e| e.into_inner());
        self.gop_budget.account(f.gop.bytes(), 0);
        f.gop.clear();
    }
}

/// One counted viewer (see [`Stream::add_viewer`]).
pub struct ViewerGuard {
    stream: Arc<Stream>,
    label: &'static str,
}

impl ViewerGuard {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.stream.viewers).get_mut(self.label) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A subscriber's end: the GOP backlog, then the live queue.
pub struct Subscription {
    pub id: u64,
    backlog: VecDeque<Frame>,
    rx: queue::QueueRx,
    drops: Arc<AtomicU64>,
    kicked: Arc<std::sync::atomic::AtomicBool>,
    /// The stream's log, for the player's leaving.
    log: Option<Arc<crate::diag::streamlog::StreamLog>>,
    label: &'static str,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(l) = &self.log {
            let why = if self.kicked.load(Ordering::Relaxed) { " (too slow, disconnected)" } else { "" };
            l.event("player", &format!("{} left{why}", self.label));
        }
    }
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<Frame, SubscriptionEnded> {
        if let Some(frame) = self.next_backlog() {
            return Ok(frame);
        }
        match self.rx.recv().await {
            Some(frame) => Ok(frame),
            None if self.kicked.load(Ordering::Relaxed) => Err(SubscriptionEnded::TooSlow),
            None => Err(SubscriptionEnded::StreamEnded),
        }
    }

    /// The next frame if one is already queued: lets an output drain a burst into one write.
    pub fn try_recv(&mut self) -> Option<Result<Frame, SubscriptionEnded>> {
        if let Some(frame) = self.next_backlog() {
            return Some(Ok(frame));
        }
        match self.rx.try_recv() {
            Ok(frame) => Some(Ok(frame)),
            Err(queue::Empty::Now) => None,
            Err(queue::Empty::Ended) if self.kicked.load(Ordering::Relaxed) => Some(Err(SubscriptionEnded::TooSlow)),
            Err(queue::Empty::Ended) => Some(Err(SubscriptionEnded::StreamEnded)),
        }
    }

    /// Whether nothing is waiting for this subscriber (neither the GOP backlog nor the queue).
    /// Asked under a [`DirectSink`]'s lock before it goes direct: the publisher queues under it.
    pub fn caught_up(&self) -> bool {
        self.backlog.is_empty() && self.rx.is_empty()
    }

    /// The next frame of the GOP backlog. Its room (one slot per cached frame, ~5-10 kB) is given
    /// back with its last frame: it is never used again, and 300 players kept 2-3 MB of it (D188).
    fn next_backlog(&mut self) -> Option<Frame> {
        let frame = self.backlog.pop_front();
        if self.backlog.is_empty() && self.backlog.capacity() > 0 {
            self.backlog = VecDeque::new();
        }
        frame
    }

    /// Slots the GOP backlog holds (its allocation), for the tests of [`Self::next_backlog`].
    #[cfg(test)]
    pub(crate) fn backlog_capacity(&self) -> usize {
        self.backlog.capacity()
    }

    /// Frames this subscriber did not receive because it was too slow.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("stream limit of {0} reached")]
    TooManyStreams(usize),
    /// A live stream belongs to its source: a second publisher never replaces it.
    #[error("stream {name} is already published by {holder} ({transport:?})")]
    NameTaken { name: String, holder: SocketAddr, transport: Transport },
}

/// Who may take over a name that is still registered. A live stream belongs to its source; the
/// only exception is the same source coming back (a camera that reconnected before its old
/// connection timed out), which the caller vouches for with [`Takeover::SameSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Never replace a registered stream (every publisher that is not provably the same source).
    Refuse,
    /// Replace the registered stream only when its source has the same transport family, IP and
    /// SSRC as the new one (same camera, new connection or port).
    SameSource,
}

/// Starts streams on demand: when a player asks for a stream that is not live, the hub asks each
/// registered handler (GB28181 `gb/<channel>` today; RTSP/RTMP pull later) that claims the name.
pub trait StreamDemand: Send + Sync {
    /// Whether this handler can start `name`.
    fn handles(&self, name: &str) -> bool;
    /// Starts `name` and resolves once it is live with a keyframe, or with the failed step.
    fn demand(&self, name: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
    /// What the handler reports to the API under `key` (`"pulls"`: the relay), if anything.
    fn status(&self, _key: &str) -> Option<serde_json::Value> {
        None
    }
}

/// Why [`Hub::get_or_demand`] has no stream to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotLive {
    /// Not live, and no handler starts it.
    #[error("no such stream")]
    Unknown,
    /// A handler tried to start it and gave up; the text names the cause (the player sees it).
    #[error("{0}")]
    Failed(String),
}

/// The registry of live streams.
pub struct Hub {
    demand: RwLock<Vec<Arc<dyn StreamDemand>>>,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    cfg: HubConfig,
    max_streams: usize,
    takeovers_refused: AtomicU64,
    gop_budget: Arc<GopBudget>,
    /// Recording and per-stream logs given to each new stream (D89, D90).
    diag: RwLock<crate::diag::Diag>,
    /// Callbacks to a control center (D93): every stream's `stream_state`.
    notifier: RwLock<crate::notify::Notifier>,
}

/// RTP over UDP and over TCP are one family: a camera may switch between them on a new INVITE.
fn transport_family(t: Transport) -> u8 {
    match t {
        Transport::Udp | Transport::Tcp => 0,
        Transport::Rtmp => 1,
        Transport::Rtsp => 2,
    }
}

impl Hub {
    pub fn new(cfg: HubConfig, max_streams: usize) -> Arc<Hub> {
        let cfg_gop_total = cfg.gop_cache_total_bytes;
        Arc::new(Hub {
            demand: RwLock::new(Vec::new()),
            streams: RwLock::new(HashMap::new()),
            cfg,
            max_streams,
            takeovers_refused: AtomicU64::new(0),
            gop_budget: Arc::new(GopBudget { max: cfg_gop_total, ..Default::default() }),
            diag: RwLock::new(crate::diag::Diag::default()),
            notifier: RwLock::new(crate::notify::Notifier::disabled()),
        })
    }

    /// The first status a registered handler reports under `key` (see [`StreamDemand::status`]).
    pub fn demand_status(&self, key: &str) -> Option<serde_json::Value> {
        self.demand.read().unwrap_or_else(|e| e.into_inner()).iter().find_map(|h| h.status(key))
    }

    /// Sets the recorder and per-stream logs for streams created from now on.
    pub fn set_diag(&self, diag: crate::diag::Diag) {
        *self.diag.write().unwrap_or_else(|e| e.into_inner()) = diag;
    }

    pub fn diag(&self) -> crate::diag::Diag {
        self.diag.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the callbacks notifier, for streams created from now on and every layer above.
    pub fn set_notifier(&self, notifier: crate::notify::Notifier) {
        *self.notifier.write().unwrap_or_else(|e| e.into_inner()) = notifier;
    }

    pub fn notifier(&self) -> crate::notify::Notifier {
        self.notifier.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Registers an on-demand handler (see [`StreamDemand`]).
    pub fn add_demand(&self, handler: Arc<dyn StreamDemand>) {
        self.demand.write().unwrap_or_else(|e| e.into_inner()).push(handler);
    }

    /// The live stream `name`, or, when it is not live and a handler claims the name, the stream
    /// that handler starts (the caller is parked until it has a keyframe or the handler gives up,
    /// and is then told why: [`NotLive::Failed`]).
    pub async fn get_or_demand(&self, name: &str) -> Result<Arc<Stream>, NotLive> {
        if let Some(s) = self.get(name) {
            return Ok(s);
        }
        let handler = self
            .demand
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|h| h.handles(name))
            .cloned()
            .ok_or(NotLive::Unknown)?;
        match handler.demand(name).await {
            Ok(()) => self.get(name).ok_or(NotLive::Failed("the stream ended as it started".into())),
            // Someone else may have published it meanwhile.
            Err(step) => self.get(name).ok_or_else(|| {
                tracing::info!(stream = name, "on-demand start failed: {step}");
                NotLive::Failed(step)
            }),
        }
    }

    /// Creates a stream. A name that is still registered is refused ([`PublishError::NameTaken`],
    /// counted in [`Hub::takeovers_refused`]) unless `takeover` allows the same source back.
    pub fn create(&self, name: &str, source: Source, takeover: Takeover) -> Result<Arc<Stream>, PublishError> {
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = streams.get(name) {
            let same_source = takeover == Takeover::SameSource
                && old.source.ssrc == source.ssrc
                && old.source.peer.ip() == source.peer.ip()
                && transport_family(old.source.transport) == transport_family(source.transport);
            if !same_source {
                self.takeovers_refused.fetch_add(1, Ordering::Relaxed);
                return Err(PublishError::NameTaken {
                    name: name.to_string(),
                    holder: old.source.peer,
                    transport: old.source.transport,
                });
            }
        } else if streams.len() >= self.max_streams {
            return Err(PublishError::TooManyStreams(self.max_streams));
        }
        let diag = self.diag.read().unwrap_or_else(|e| e.into_inner()).clone();
        let stream = Arc::new(
            Stream::new(name.to_string(), source, self.cfg.clone(), self.gop_budget.clone())
                .with_diag(&diag)
                .with_notifier(self.notifier()),
        );
        let ssrc = stream.source.ssrc.map(|s| format!(" ssrc {s:010}")).unwrap_or_default();
        stream.event("start", &format!("{:?} from {}{ssrc}", stream.source.transport, stream.source.peer));
        if let Some(old) = streams.insert(name.to_string(), stream.clone()) {
            tracing::info!(stream = name, peer = %old.source.peer, "the same source reconnected; its old stream ends");
            old.close();
        }
        Ok(stream)
    }

    /// What every stream's GOP cache holds together, against `hub.gop_cache_total_bytes`.
    pub fn gop_budget(&self) -> &GopBudget {
        &self.gop_budget
    }

    /// Publish attempts refused because the name was live under another source.
    pub fn takeovers_refused(&self) -> u64 {
        self.takeovers_refused.load(Ordering::Relaxed)
    }

    /// Removes `stream` if it is still the one registered under its name.
    pub fn remove(&self, stream: &Arc<Stream>) {
        let mut streams = self.streams.write().unwrap_or_else(|e| e.into_inner());
        if streams.get(&stream.name).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            streams.remove(&stream.name);
        }
        drop(streams);
        stream.close();
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.streams.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.streams.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }
}

/// A duration as whole seconds ("10s"), or milliseconds below one second.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    format!("{}s", d.as_secs_f64().round() as u64)
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere must not take the stream down with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
