//! Synthetic camera streams for tests and benchmarks: elementary streams (made by ffmpeg) muxed
//! with gbgate's own [`PsMuxer`] into an RTP dump, optionally with the timestamp anomalies seen
//! in the field written into the PS clock (PTS/SCR). RTP timestamps stay true, so `gbgate send`
//! paces the replay in real time whatever the PS clock says, as cameras do.
use bytes::Bytes;

use crate::media::Codec;
use crate::proto::ps::mux::{PsMuxer, RtpPacketizer};

/// A timestamp anomaly written into the PS clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    None,
    /// (a) Audio and video timestamps jump back 2 s for one second out of every three, then forth.
    BackAndForth,
    /// (b) Every 10th video frame repeats the previous frame's DTS.
    ZeroVideoSteps,
    /// (c) G.711 8 kHz sent as 360-byte packets (45 ms, ~22 per second) with a PTS step of
    /// 92 ms, a clock running about twice too fast that jumps back to the video every second.
    FastAudioClock,
    /// The 33-bit PS clock wraps 10 s in.
    Wrap,
    /// The camera restarts 20 s in: its clock starts over near zero.
    Restart,
    /// The clock jumps 3 hours forward 30 s in.
    HourJump,
}

impl Anomaly {
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::None => "none",
            Anomaly::BackAndForth => "back_and_forth",
            Anomaly::ZeroVideoSteps => "zero_video_steps",
            Anomaly::FastAudioClock => "fast_audio_clock",
            Anomaly::Wrap => "wrap",
            Anomaly::Restart => "restart",
            Anomaly::HourJump => "hour_jump",
        }
    }

    /// Rewrites a true 90 kHz time `t` into what the camera writes in PS.
    fn clock(self, t: i64) -> i64 {
        const S: i64 = 90_000;
        let v = match self {
            Anomaly::BackAndForth if (t / S) % 3 == 1 => t - 2 * S,
            Anomaly::Wrap => t + (1 << 33) - 10 * S,
            Anomaly::Restart if t >= 20 * S => t - 20 * S + 3600,
            Anomaly::Restart => t + 900 * S,
            Anomaly::HourJump if t >= 30 * S => t + 3 * 3600 * S,
            _ => t,
        };
        v.rem_euclid(1 << 33)
    }
}

/// One unit to mux: true time (90 kHz), codec, keyframe flag, payload.
struct Unit {
    t: i64,
    codec: Codec,
    key: bool,
    data: Bytes,
}

/// Access units of an Annex B stream with an AUD before each (ffmpeg `h264_metadata=aud=insert`),
/// with their keyframe flag.
pub fn split_annexb_aus(es: &[u8], codec: Codec) -> Vec<(Bytes, bool)> {
    let h265 = codec == Codec::H265;
    let nal_type = |b: u8| if h265 { (b >> 1) & 0x3f } else { b & 0x1f };
    let (aud, key): (u8, fn(u8) -> bool) = if h265 { (35, |t| (16..=21).contains(&t)) } else { (9, |t| t == 5) };
    let mut nals = Vec::new();
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let sc = if i > 0 && es[i - 1] == 0 { i - 1 } else { i };
            nals.push((sc, nal_type(es[i + 3])));
            i += 3;
        } else {
            i += 1;
        }
    }
    let cuts: Vec<usize> = nals.iter().filter(|n| n.1 == aud).map(|n| n.0).collect();
    let mut out = Vec::new();
    for (k, &start) in cuts.iter().enumerate() {
        let start = if k == 0 { 0 } else { start };
        let end = cuts.get(k + 1).copied().unwrap_or(es.len());
        let is_key = nals.iter().any(|&(sc, t)| sc >= start && sc < end && key(t));
        out.push((Bytes::copy_from_slice(&es[start..end]), is_key));
    }
    out
}

/// ADTS frames (with headers) and the sample rate of the first.
pub fn split_adts(data: &[u8]) -> (Vec<Bytes>, u32) {
    const RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];
    let (mut frames, mut rate, mut pos) = (Vec::new(), 0, 0);
    while pos + 7 <= data.len() {
        let h = &data[pos..pos + 7];
        if h[0] != 0xFF || h[1] & 0xF0 != 0xF0 {
            break;
        }
        let len = ((h[3] as usize & 3) << 11) | ((h[4] as usize) << 3) | (h[5] as usize >> 5);
        if len < 7 || pos + len > data.len() {
            break;
        }
        if rate == 0 {
            rate = RATES.get(((h[2] >> 2) & 0xF) as usize).copied().unwrap_or(0);
        }
        frames.push(Bytes::copy_from_slice(&data[pos..pos + len]));
        pos += len;
    }
    (frames, rate)
}

/// What to mux.
pub struct SynthInput<'a> {
    pub video_codec: Codec,
    /// Access units, 25 fps.
    pub video: &'a [(Bytes, bool)],
    pub audio_codec: Codec,
    /// G.711: raw samples; AAC: ADTS.
    pub audio: &'a [u8],
    /// G.711 sample rate (ignored for AAC).
    pub g711_rate: u32,
    pub anomaly: Anomaly,
    pub ssrc: u32,
}

/// Muxes `input` into a `[u16 BE len][RTP]` dump (the format `gbgate send` replays).
pub fn rtp_dump(input: &SynthInput) -> Vec<u8> {
    let mut units: Vec<Unit> = input
        .video
        .iter()
        .enumerate()
        .map(|(i, (d, k))| Unit { t: i as i64 * 3600, codec: input.video_codec, key: *k, data: d.clone() })
        .collect();
    if input.audio_codec == Codec::Aac {
        let (frames, rate) = split_adts(input.audio);
        for (i, d) in frames.into_iter().enumerate() {
            let t = i as i64 * 1024 * 90_000 / i64::from(rate.max(1));
            units.push(Unit { t, codec: Codec::Aac, key: true, data: d });
        }
    } else {
        let per = if input.anomaly == Anomaly::FastAudioClock { 360 } else { input.g711_rate as usize / 25 };
        for (i, c) in input.audio.chunks(per).enumerate() {
            let t = (i * per) as i64 * 90_000 / i64::from(input.g711_rate.max(1));
            units.push(Unit { t, codec: input.audio_codec, key: true, data: Bytes::copy_from_slice(c) });
        }
    }
    units.sort_by_key(|u| u.t);
    let mut muxer = PsMuxer::new(Some(input.video_codec), Some(input.audio_codec));
    let mut rtp = RtpPacketizer { ssrc: input.ssrc, seq: 0, payload_type: 96, max_payload: 1400 };
    let (mut pkts, mut pack) = (Vec::new(), Vec::new());
    let mut video_index = 0i64;
    let mut last_video_ps = 0i64;
    for u in &units {
        let ps_ts = match (input.anomaly, u.codec.kind()) {
            (Anomaly::ZeroVideoSteps, crate::media::MediaKind::Video) => {
                let ts = if video_index % 10 == 5 { last_video_ps } else { u.t };
                video_index += 1;
                last_video_ps = ts;
                ts
            }
            (Anomaly::FastAudioClock, crate::media::MediaKind::Audio) => {
                // 92 ms per packet from the last whole second of true time.
                let second = u.t / 90_000 * 90_000;
                let k = (u.t - second) * 8000 / 90_000 / 360;
                second + k * 8280
            }
            (a, _) => a.clock(u.t),
        };
        pack.clear();
        muxer.write_frame(u.codec, ps_ts, ps_ts, u.key, &u.data, &mut pack);
        rtp.packetize(&pack, u.t as u32, &mut pkts);
    }
    let mut dump = Vec::with_capacity(pkts.iter().map(|p| p.len() + 2).sum());
    for p in &pkts {
        dump.extend_from_slice(&(p.len() as u16).to_be_bytes());
        dump.extend_from_slice(p);
    }
    dump
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomaly_clocks() {
        assert_eq!(Anomaly::BackAndForth.clock(90_000 + 5), 5 - 90_000 + (1 << 33));
        assert_eq!(Anomaly::Wrap.clock(10 * 90_000), 0);
        assert_eq!(Anomaly::HourJump.clock(30 * 90_000), 30 * 90_000 + 3 * 3600 * 90_000);
        assert_eq!(Anomaly::Restart.clock(20 * 90_000), 3600);
    }
}
