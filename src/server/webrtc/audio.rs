//! Audio for WebRTC players (sans-IO): the hub's audio frames in, 20 ms G.711 packets at 8 kHz out.
//!
//! Browsers and WebRTC stacks all decode PCMA/PCMU (RFC 7874 makes them mandatory), and no
//! well-kept pure-Rust Opus encoder exists (D137). G.711 of the stream's own law at 8 kHz passes
//! through untouched; anything else (the hub's AAC-LC 11025 Hz mono, G.711 at 16 kHz, the other
//! law) is decoded, resampled to 8 kHz and encoded with the G.711 tables.
//!
//! RTP time comes from the output sample count, anchored on the first input frame's timestamp,
//! and is re-anchored when the input timeline jumps (a gap or a restart of the source).
use crate::frame::{AudioConfig, Codec, CodecConfig, Frame};
use crate::media::audio::{AacDecoder, AudioError, Rate};
use crate::media::g711;

/// Output rate: G.711's only rate on WebRTC.
pub const RATE: u32 = 8000;
/// Samples in one output packet (20 ms).
pub const PACKET: usize = 160;
/// An input timestamp this far (90 kHz) from where the output timeline expects it re-anchors.
const REANCHOR_TICKS: i64 = 90_000 / 5;
/// Decoded samples held at most (2 s): a burst from the GOP cache fits, a runaway does not.
const MAX_PENDING: usize = 2 * RATE as usize;

/// G.711 law of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    A,
    U,
}

/// One output packet: 160 G.711 bytes and its RTP time (8 kHz, relative to the session's base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub rtp_time: i64,
    pub data: Vec<u8>,
}

enum Decoder {
    None,
    Aac(Box<AacDecoder>),
}

/// Converts one player's audio. Each player has its own: AAC decoding is stateful.
pub struct AudioOut {
    law: Law,
    /// The current input form: codec, rate (and the decoder and resampler built for it).
    input: Option<(Codec, u32)>,
    dec: Decoder,
    rate: Option<Rate>,
    pcm: Vec<f32>,
    decoded: Vec<f32>,
    /// RTP time (8 kHz) of `pcm[0]`, relative to the session base.
    next_time: Option<i64>,
    pub errors: u64,
}

impl AudioOut {
    pub fn new(law: Law) -> AudioOut {
        AudioOut {
            law,
            input: None,
            dec: Decoder::None,
            rate: None,
            pcm: Vec::new(),
            decoded: Vec::new(),
            next_time: None,
            errors: 0,
        }
    }

    pub fn law(&self) -> Law {
        self.law
    }

    /// Whether frames of `codec` pass through as they are.
    pub fn passes_through(&self, codec: Codec, rate: u32) -> bool {
        rate == RATE && matches!((codec, self.law), (Codec::G711A, Law::A) | (Codec::G711U, Law::U))
    }

    /// Feeds one audio frame; `base` is the session's base timestamp (90 kHz). Complete 20 ms
    /// packets are appended to `out`. A frame that cannot be decoded is counted and skipped.
    pub fn push(&mut self, frame: &Frame, base: i64, out: &mut Vec<Packet>) {
        if let Err(e) = self.push_inner(frame, base, out) {
            self.errors += 1;
            if self.errors == 1 || self.errors.is_power_of_two() {
                tracing::debug!("WebRTC audio: {e} ({} errors)", self.errors);
            }
        }
    }

    fn push_inner(&mut self, frame: &Frame, base: i64, out: &mut Vec<Packet>) -> Result<(), AudioError> {
        let cfg = match frame.config.as_ref() {
            CodecConfig::Audio(a) => a.clone(),
            CodecConfig::Video(_) => return Err(AudioError::Unsupported("video config on an audio frame".into())),
        };
        let rate = cfg.sample_rate.clamp(1, 192_000);
        if self.input != Some((frame.codec, rate)) {
            self.reset(frame.codec, &cfg)?;
        }
        // 8 kHz ticks since the base, from the frame's own clock.
        let at = (frame.pts - base).saturating_mul(i64::from(RATE)) / 90_000;
        if self.passes_through(frame.codec, rate) {
            self.pcm.clear();
            for (i, chunk) in frame.data.chunks(PACKET).enumerate() {
                out.push(Packet { rtp_time: at + (i * PACKET) as i64, data: chunk.to_vec() });
            }
            self.next_time = Some(at + frame.data.len() as i64);
            return Ok(());
        }
        self.decoded.clear();
        match (&mut self.dec, frame.codec) {
            (Decoder::Aac(d), Codec::Aac) => d.decode(&frame.data, &mut self.decoded)?,
            (_, Codec::G711A) => {
                self.decoded.extend(frame.data.iter().map(|&b| f32::from(g711::alaw_to_linear(b)) / 32768.0))
            }
            (_, Codec::G711U) => {
                self.decoded.extend(frame.data.iter().map(|&b| f32::from(g711::ulaw_to_linear(b)) / 32768.0))
            }
            _ => return Err(AudioError::Unsupported(format!("{} audio", frame.codec))),
        }
        // Where the output timeline expects this frame to start.
        let expected = self.next_time.map(|t| t + self.pcm.len() as i64);
        if expected.is_none_or(|e| (e - at).abs() * 90_000 / i64::from(RATE) > REANCHOR_TICKS) {
            self.pcm.clear();
            self.next_time = Some(at);
        }
        match &mut self.rate {
            Some(r) => r.process(&self.decoded, &mut self.pcm)?,
            None => self.pcm.extend_from_slice(&self.decoded),
        }
        if self.pcm.len() > MAX_PENDING {
            let extra = self.pcm.len() - MAX_PENDING;
            self.pcm.drain(..extra);
            self.next_time = self.next_time.map(|t| t + extra as i64);
        }
        let mut t = self.next_time.unwrap_or(at);
        let whole = self.pcm.len() / PACKET * PACKET;
        for chunk in self.pcm[..whole].chunks_exact(PACKET) {
            let data = chunk
                .iter()
                .map(|&s| {
                    let v = (s * 32767.0).clamp(-32768.0, 32767.0) as i16;
                    match self.law {
                        Law::A => g711::linear_to_alaw(v),
                        Law::U => g711::linear_to_ulaw(v),
                    }
                })
                .collect();
            out.push(Packet { rtp_time: t, data });
            t += PACKET as i64;
        }
        self.pcm.drain(..whole);
        self.next_time = Some(t);
        Ok(())
    }

    fn reset(&mut self, codec: Codec, cfg: &AudioConfig) -> Result<(), AudioError> {
        let rate = cfg.sample_rate.clamp(1, 192_000);
        self.input = Some((codec, rate));
        self.pcm.clear();
        self.next_time = None;
        self.dec = Decoder::None;
        self.rate = None;
        if self.passes_through(codec, rate) {
            return Ok(());
        }
        if codec == Codec::Aac {
            self.dec = Decoder::Aac(Box::new(AacDecoder::new(cfg)?));
        }
        if rate != RATE {
            self.rate = Some(Rate::new(rate, RATE)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::frame::FrameCache;

    fn g711(codec: Codec, rate: u32, pts: i64, n: usize) -> Frame {
        let cfg = CodecConfig::Audio(AudioConfig { sample_rate: rate, channels: 1, asc: None });
        Frame {
            codec,
            pts,
            dts: pts,
            keyframe: true,
            data: Bytes::from(vec![0xd5; n]),
            config: Arc::new(cfg),
            cache: FrameCache::default(),
        }
    }

    #[test]
    fn same_law_passes_through_and_other_law_is_converted() {
        let mut a = AudioOut::new(Law::A);
        let mut out = Vec::new();
        a.push(&g711(Codec::G711A, 8000, 90_000, 320), 0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].rtp_time, 8000);
        assert_eq!(out[1].rtp_time, 8160);
        assert!(out.iter().all(|p| p.data.iter().all(|&b| b == 0xd5)));

        let mut u = AudioOut::new(Law::U);
        let mut out = Vec::new();
        u.push(&g711(Codec::G711A, 8000, 0, 160), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_ne!(out[0].data[0], 0xd5, "converted to µ-law");
    }

    #[test]
    fn g711_16k_is_resampled_to_8k_with_a_continuous_timeline() {
        let mut a = AudioOut::new(Law::A);
        let mut out = Vec::new();
        for i in 0..50 {
            // 20 ms frames of 16 kHz
            a.push(&g711(Codec::G711A, 16_000, i * 1800, 320), 0, &mut out);
        }
        assert!(out.len() >= 45, "{} packets", out.len());
        for w in out.windows(2) {
            assert_eq!(w[1].rtp_time - w[0].rtp_time, PACKET as i64);
        }
    }
}
