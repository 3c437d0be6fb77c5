//! One WebRTC player (sans-IO): a str0m [`Rtc`] plus what it takes to feed it hub frames.
//!
//! Inputs: datagrams, frames and `now`; outputs: datagrams to send (queued here, paced by a token
//! bucket) and whether the session is over. The driver ([`super`]) owns the socket.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::Codec as RtcCodec;
use str0m::media::{Frequency, MediaKind as RtcKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};

use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::audio::{AudioOut, Law, Packet};
use crate::frame::{Codec, CodecConfig, Frame, MediaKind};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Deleted,
    ConnectTimeout,
    IdleTimeout,
    Disconnected,
    StreamEnded,
    TooSlow,
    Error,
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Deleted => "deleted",
            End::ConnectTimeout => "ICE/DTLS not completed in time",
            End::IdleTimeout => "nothing received in time",
            End::Disconnected => "ICE disconnected",
            End::StreamEnded => "stream ended",
            End::TooSlow => "too slow",
            End::Error => "WebRTC error",
            End::Shutdown => "shutdown",
        }
    }
}

/// Limits of one session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_queue_bytes: usize,
    /// Bytes per second.
    pub rate: f64,
}

/// What the offer let us send.
#[derive(Debug, Clone, Copy)]
pub struct Tracks {
    pub video: Option<(Mid, Pt, Codec)>,
    pub audio: Option<(Mid, Pt, Law)>,
}

pub struct Session {
    pub key: u64,
    pub resource: String,
    pub ufrag: String,
    pub stream: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    rtc: Rtc,
    tracks: Tracks,
    audio: Option<AudioOut>,
    limits: Limits,
    created: Instant,
    last_rx: Instant,
    connected: bool,
    /// The first frame's timestamp (90 kHz): media time 0.
    base: Option<(i64, Instant)>,
    /// Skipping to the next video keyframe (the start, or the queue overflowed).
    need_keyframe: bool,
    rtc_timeout: Instant,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    queued_bytes: usize,
    tokens: f64,
    refilled: Instant,
    pub ended: Option<End>,
    /// Destinations str0m sent to since the driver last asked (it learns them for routing).
    pub sent_to: Vec<SocketAddr>,
    pub stats: SessionStats,
    annexb: Vec<u8>,
    packets: Vec<Packet>,
    /// Frames from the last keyframe on, held until DTLS completes.
    held: VecDeque<Frame>,
    held_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SessionStats {
    pub video_frames: u64,
    pub audio_packets: u64,
    pub skipped_frames: u64,
    pub queue_drops: u64,
    pub bytes_sent: u64,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: u64,
        resource: String,
        ufrag: String,
        stream: String,
        peer: SocketAddr,
        local: SocketAddr,
        rtc: Rtc,
        tracks: Tracks,
        limits: Limits,
        now: Instant,
    ) -> Session {
        Session {
            key,
            resource,
            ufrag,
            stream,
            peer,
            local,
            rtc,
            audio: tracks.audio.map(|(_, _, law)| AudioOut::new(law)),
            tracks,
            limits,
            created: now,
            last_rx: now,
            connected: false,
            base: None,
            need_keyframe: tracks.video.is_some(),
            rtc_timeout: now,
            queue: VecDeque::new(),
            queued_bytes: 0,
            tokens: limits.rate / 8.0,
            refilled: now,
            ended: None,
            sent_to: Vec::new(),
            stats: SessionStats::default(),
            annexb: Vec::new(),
            packets: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A datagram for this session.
    pub fn receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else { return };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        if !self.rtc.accepts(&input) {
            return;
        }
        self.last_rx = now;
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(stream = %self.stream, peer = %source, "WebRTC input: {e}");
        }
        self.drain(now);
    }

    /// Time passes.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.rtc_timeout {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(stream = %self.stream, "WebRTC timeout: {e}");
                self.end(End::Error);
            }
            self.drain(now);
        }
        if !self.connected && now.duration_since(self.created) >= self.limits.connect_timeout {
            self.end(End::ConnectTimeout);
        }
        if now.duration_since(self.last_rx) >= self.limits.idle_timeout {
            self.end(End::IdleTimeout);
        }
        if !self.rtc.is_alive() {
            self.end(End::Disconnected);
        }
    }

    pub fn end(&mut self, why: End) {
        if self.ended.is_none() {
            self.ended = Some(why);
            self.rtc.disconnect();
        }
    }

    /// When [`Self::tick`] is next needed.
    pub fn deadline(&self) -> Instant {
        let mut d = self.rtc_timeout.min(self.last_rx + self.limits.idle_timeout);
        if !self.connected {
            d = d.min(self.created + self.limits.connect_timeout);
        }
        if !self.queue.is_empty() {
            d = d.min(self.refill_at());
        }
        d
    }

    /// One frame from the hub.
    pub fn frame(&mut self, now: Instant, frame: &Frame) {
        if self.ended.is_some() {
            return;
        }
        if !self.connected {
            // str0m drops media until DTLS completes: keep the frames since the last keyframe
            // (the GOP cache arrives at once) and send them when it has.
            self.hold(frame);
            return;
        }
        let video = frame.kind() == MediaKind::Video;
        if self.queued_bytes > self.limits.max_queue_bytes {
            // The player cannot take what we send: drop what waits, go on from a keyframe.
            self.stats.queue_drops += self.queue.len() as u64;
            self.queue.clear();
            self.queued_bytes = 0;
            self.need_keyframe = self.tracks.video.is_some();
        }
        if self.need_keyframe {
            if video && frame.keyframe {
                self.need_keyframe = false;
            } else {
                self.stats.skipped_frames += 1;
                return;
            }
        }
        let (base, wall0) = *self.base.get_or_insert((frame.pts, now));
        let rel = (frame.pts - base).max(0);
        let wallclock = wall0 + Duration::from_micros((rel as u64).saturating_mul(100) / 9);
        if video {
            let Some((mid, pt, codec)) = self.tracks.video else { return };
            if codec != frame.codec {
                return;
            }
            to_annexb(frame, &mut self.annexb);
            let data: Vec<u8> = std::mem::take(&mut self.annexb);
            if let Some(w) = self.rtc.writer(mid) {
                match w.write(pt, wallclock, MediaTime::from_90khz(rel as u64), data) {
                    Ok(()) => self.stats.video_frames += 1,
                    Err(e) => tracing::debug!(stream = %self.stream, "WebRTC video write: {e}"),
                }
            }
            self.drain(now);
        } else {
            let Some((mid, pt, _)) = self.tracks.audio else { return };
            let Some(audio) = self.audio.as_mut() else { return };
            self.packets.clear();
            audio.push(frame, base, &mut self.packets);
            let packets = std::mem::take(&mut self.packets);
            for p in &packets {
                let t = MediaTime::new(p.rtp_time.max(0) as u64, Frequency::EIGHT_KHZ);
                if let Some(w) = self.rtc.writer(mid) {
                    match w.write(pt, wallclock, t, p.data.clone()) {
                        Ok(()) => self.stats.audio_packets += 1,
                        Err(e) => tracing::debug!(stream = %self.stream, "WebRTC audio write: {e}"),
                    }
                }
                self.drain(now);
            }
            self.packets = packets;
        }
    }

    fn hold(&mut self, frame: &Frame) {
        let video = frame.kind() == MediaKind::Video;
        if video && frame.keyframe {
            self.held.clear();
            self.held_bytes = 0;
        } else if self.held.is_empty() && self.tracks.video.is_some() {
            return;
        }
        self.held_bytes += frame.data.len();
        self.held.push_back(frame.clone());
        if self.held_bytes > self.limits.max_queue_bytes {
            self.held.clear();
            self.held_bytes = 0;
        }
    }

    /// Polls str0m until it has nothing but a timeout: the single-mutation rule.
    pub fn drain(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if !self.sent_to.contains(&t.destination) {
                        self.sent_to.push(t.destination);
                    }
                    let bytes = t.contents.to_vec();
                    self.queued_bytes += bytes.len();
                    self.queue.push_back((t.destination, bytes));
                }
                Ok(Output::Event(e)) => self.event(e, now),
                Err(e) => {
                    tracing::debug!(stream = %self.stream, "WebRTC: {e}");
                    self.end(End::Error);
                    self.rtc_timeout = now + Duration::from_secs(1);
                    break;
                }
            }
        }
        if self.connected && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.held_bytes = 0;
            for f in &held {
                self.frame(now, f);
            }
        }
    }

    fn event(&mut self, e: Event, _now: Instant) {
        match e {
            Event::Connected => {
                self.connected = true;
                tracing::debug!(stream = %self.stream, peer = %self.peer, "WebRTC connected");
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.end(End::Disconnected),
            _ => {}
        }
    }

    fn refill_at(&self) -> Instant {
        let need = self.queue.front().map_or(0, |(_, b)| b.len()) as f64 - self.tokens;
        self.refilled + Duration::from_secs_f64((need.max(0.0) / self.limits.rate).min(1.0))
    }

    /// The datagrams due now under the pacing budget.
    pub fn due(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // A burst of 1/8 s of the rate: a GOP from the cache goes out at once on a fast link.
        self.tokens = (self.tokens + dt * self.limits.rate).min(self.limits.rate / 8.0);
        while let Some((_, b)) = self.queue.front() {
            if b.len() as f64 > self.tokens {
                break;
            }
            let Some((to, b)) = self.queue.pop_front() else { break };
            self.tokens -= b.len() as f64;
            self.queued_bytes -= b.len();
            self.stats.bytes_sent += b.len() as u64;
            out.push((to, b));
        }
    }
}

/// A frame's NAL units in Annex B form, parameter sets first on a keyframe that lacks them.
fn to_annexb(frame: &Frame, out: &mut Vec<u8>) {
    out.clear();
    if frame.keyframe {
        let has_ps = frame.nal_units().any(|n| match frame.codec {
            Codec::H264 => n.first().is_some_and(|b| b & 0x1f == 7),
            _ => n.first().is_some_and(|b| (b >> 1) & 0x3f == 33),
        });
        if let (false, CodecConfig::Video(v)) = (has_ps, frame.config.as_ref()) {
            for ps in v.vps.iter().chain([&v.sps, &v.pps]) {
                if !ps.is_empty() {
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend_from_slice(ps);
                }
            }
        }
    }
    for nal in frame.nal_units() {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
}

/// The payload types to send with, from the negotiated media (after `accept_offer`).
/// `ulaw`: the stream's audio is G.711 µ-law (passed through when the peer takes PCMU).
pub fn pick_tracks(rtc: &mut Rtc, mids: &[(Mid, RtcKind)], video: Option<(Codec, u8)>, ulaw: bool) -> Tracks {
    let mut tracks = Tracks { video: None, audio: None };
    for &(mid, kind) in mids {
        let Some(w) = rtc.writer(mid) else { continue };
        match kind {
            RtcKind::Video if tracks.video.is_none() => {
                let Some((codec, profile)) = video else { continue };
                let want = match codec {
                    Codec::H265 => RtcCodec::H265,
                    _ => RtcCodec::H264,
                };
                // packetization-mode 1 (FU-A), the stream's profile when offered.
                let mut best: Option<(u32, Pt)> = None;
                for p in w.payload_params() {
                    let spec = p.spec();
                    if spec.codec != want {
                        continue;
                    }
                    let mut score = 1;
                    if want == RtcCodec::H264 {
                        if spec.format.packetization_mode != Some(1) {
                            continue;
                        }
                        let idc = spec.format.profile_level_id.map(|v| (v >> 16) as u8);
                        if idc == Some(profile) {
                            score += 2;
                        }
                    }
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, p.pt()));
                    }
                }
                if let Some((_, pt)) = best {
                    tracks.video = Some((mid, pt, codec));
                }
            }
            RtcKind::Audio if tracks.audio.is_none() => {
                let a = w.payload_params().find(|p| p.spec().codec == RtcCodec::PCMA).map(|p| (p.pt(), Law::A));
                let u = w.payload_params().find(|p| p.spec().codec == RtcCodec::PCMU).map(|p| (p.pt(), Law::U));
                let pick = if ulaw { u.or(a) } else { a.or(u) };
                if let Some((pt, law)) = pick {
                    tracks.audio = Some((mid, pt, law));
                }
            }
            _ => {}
        }
    }
    tracks
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::frame::{FrameCache, VideoConfig};

    #[test]
    fn keyframes_get_their_parameter_sets_in_annexb() {
        let cfg = VideoConfig {
            sps: Bytes::from_static(&[0x67, 1, 2]),
            pps: Bytes::from_static(&[0x68, 3]),
            ..Default::default()
        };
        let mut data = vec![0, 0, 0, 2, 0x65, 9];
        let f = Frame {
            codec: Codec::H264,
            pts: 0,
            dts: 0,
            keyframe: true,
            data: Bytes::from(data.clone()),
            config: Arc::new(CodecConfig::Video(cfg.clone())),
            cache: FrameCache::default(),
        };
        let mut out = Vec::new();
        to_annexb(&f, &mut out);
        assert_eq!(out, [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9]);
        // In band already: not repeated.
        data.splice(0..0, [0, 0, 0, 3, 0x67, 1, 2]);
        let f = Frame { data: Bytes::from(data), ..f };
        to_annexb(&f, &mut out);
        assert_eq!(out, [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x65, 9]);
    }
}
