//! Audio to AAC-LC (11025 Hz mono by default), sans-IO: audio [`Frame`]s in, AAC frames out.
//!
//! ```text
//! G.711A/U ─ table ─┐                       ┌─ gap: silence ─┐
//! AAC ── symphonia ─┴─▶ mono f32 ─▶ resampler* ─▶ AacEncoder (syom | fdk-aac) ─▶ AAC Frame
//! ```
//! *the shared-table polyphase filter of [`crate::media::resample`] for the G.711 rates (8 and
//! 16 kHz, D182), rubato's FFT resampler (20 ms chunks) for the others.
//!
//! Output timestamps come from the output sample count (`base + n * 90000 / rate`), anchored on
//! the (already repaired) timestamp of the first input sample, so they are exactly smooth. A
//! forward gap in the input timeline (audio realigned by [`crate::media::timestamps`]) is filled
//! with silence up to [`MAX_SILENCE_TICKS`], beyond which the encoder restarts on the new time.
//! The encoder's priming frame and the resampler's delay are dropped, so decoded output starts
//! with the first input sample at the first output timestamp.
//!
//! A frame that cannot be decoded is counted and lost; the transcoder keeps going. An encoder
//! error rebuilds the encoder (the next frame starts a new timeline).
use std::sync::Arc;

use bytes::Bytes;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use serde::Serialize;

use crate::media::resample::{Polyphase, Table};
use crate::media::{g711, AudioConfig, Codec, CodecConfig, Frame};

/// Longest input gap filled with silence; longer gaps restart the output timeline.
pub const MAX_SILENCE_TICKS: i64 = 2 * 90_000;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("AAC encoder ({encoder}): {msg}")]
    Encoder { encoder: &'static str, msg: String },
    #[error("resampler {from} Hz -> {to} Hz: {msg}")]
    Resampler { from: u32, to: u32, msg: String },
    #[error("{codec} decoder: {msg}")]
    Decoder { codec: Codec, msg: String },
    #[error("unsupported audio input {0}")]
    Unsupported(String),
}

/// An AAC-LC encoder: mono f32 PCM in `[-1, 1]` in, raw AAC frames (no ADTS) out.
pub trait AacEncoder: Send {
    fn name(&self) -> &'static str;
    /// The AudioSpecificConfig (FLV sequence header, SDP `config=`).
    fn asc(&self) -> Bytes;
    /// Whole frames at the start of the output that carry only encoder priming (dropped).
    fn priming_frames(&self) -> usize;
    /// Feeds samples of any count; each completed raw AAC frame is passed to `out`.
    fn encode(&mut self, pcm: &[f32], out: &mut dyn FnMut(&[u8])) -> Result<(), AudioError>;
}

pub use crate::config::EncoderKind;

/// Builds an encoder of `kind`.
pub fn new_encoder(kind: EncoderKind, rate: u32, bitrate: u32) -> Result<Box<dyn AacEncoder>, AudioError> {
    match kind {
        EncoderKind::Syom => Ok(Box::new(SyomEncoder::new(rate, bitrate)?)),
        #[cfg(feature = "fdk-aac")]
        EncoderKind::Fdk => Ok(Box::new(FdkEncoder::new(rate, bitrate)?)),
        #[cfg(not(feature = "fdk-aac"))]
        EncoderKind::Fdk => Err(AudioError::Encoder {
            encoder: "fdk-aac",
            msg: "gbgate was built without the `fdk-aac` cargo feature".into(),
        }),
    }
}

/// The pure-Rust, MIT-licensed `syom` encoder (default: redistributable).
pub struct SyomEncoder {
    enc: syom::Encoder,
    rate: u32,
    bitrate: u32,
}

/// The syom quality VBR level whose average rate on camera speech is closest to `bitrate` (bit/s),
/// measured on the real G.711 recording of benches/audio.rs at 11025 Hz mono (D147): level 0
/// 17.9 kbit/s, 1 24.5, 2 30.8, 3 36.3, 4 40.2, 5 41.9, 6 53.1, 7+ 64.3.
pub fn syom_quality_for(bitrate: u32) -> u8 {
    // Upper bitrate of each level: halfway to the next level's measured average.
    const UPPER: [u32; 7] = [21_000, 27_500, 33_500, 38_000, 41_000, 47_000, 58_000];
    UPPER.iter().position(|&u| bitrate <= u).unwrap_or(UPPER.len()) as u8
}

impl SyomEncoder {
    pub fn new(rate: u32, bitrate: u32) -> Result<Self, AudioError> {
        // Quality VBR, not ABR: one quantisation pass per frame instead of the ABR rate loop's
        // search, about 3x less CPU, and at the same average rate a higher SNR (D147).
        let opts = syom::EncodeOptions::default()
            .with_bitrate_bps(bitrate)
            .with_quality(syom_quality_for(bitrate))
            .with_container(syom::EncodeContainer::Raw);
        let enc = syom::Encoder::new(rate, 1, &opts)
            .map_err(|e| AudioError::Encoder { encoder: "syom", msg: e.to_string() })?;
        Ok(SyomEncoder { enc, rate, bitrate })
    }
}

impl AacEncoder for SyomEncoder {
    fn name(&self) -> &'static str {
        "syom"
    }
    fn asc(&self) -> Bytes {
        Bytes::copy_from_slice(self.enc.asc())
    }
    fn priming_frames(&self) -> usize {
        1 // syom LC: 1024 samples of priming
    }
    fn encode(&mut self, pcm: &[f32], out: &mut dyn FnMut(&[u8])) -> Result<(), AudioError> {
        let r = self.enc.feed(&[pcm], |f| {
            out(f.payload);
            Ok(())
        });
        if let Err(e) = r {
            // A failed syom encoder stays failed: start a fresh one for what follows.
            if let Ok(fresh) = SyomEncoder::new(self.rate, self.bitrate) {
                *self = fresh;
            }
            return Err(AudioError::Encoder { encoder: "syom", msg: e.to_string() });
        }
        Ok(())
    }
}

/// Fraunhofer FDK AAC (`fdk-aac` cargo feature). Its licence grants no patents and is
/// GPL-incompatible, so it is not the default of a redistributable daemon.
#[cfg(feature = "fdk-aac")]
pub struct FdkEncoder {
    enc: fdk_aac::enc::Encoder,
    asc: Bytes,
    pending: Vec<i16>,
    buf: Vec<u8>,
}

#[cfg(feature = "fdk-aac")]
impl FdkEncoder {
    pub fn new(rate: u32, bitrate: u32) -> Result<Self, AudioError> {
        use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};
        let err = |e: fdk_aac::enc::EncoderError| AudioError::Encoder { encoder: "fdk-aac", msg: format!("{e:?}") };
        let enc = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(bitrate),
            sample_rate: rate,
            transport: Transport::Raw,
            channels: ChannelMode::Mono,
            audio_object_type: AudioObjectType::Mpeg4LowComplexity,
        })
        .map_err(err)?;
        let info = enc.info().map_err(err)?;
        let asc = Bytes::copy_from_slice(&info.confBuf[..info.confSize as usize]);
        Ok(FdkEncoder { enc, asc, pending: Vec::with_capacity(2048), buf: vec![0; 8192] })
    }
}

#[cfg(feature = "fdk-aac")]
impl AacEncoder for FdkEncoder {
    fn name(&self) -> &'static str {
        "fdk-aac"
    }
    fn asc(&self) -> Bytes {
        self.asc.clone()
    }
    fn priming_frames(&self) -> usize {
        // FDK's AAC-LC delay is 2048 samples (two frames) at these settings: measured by the
        // quality bench, whose best alignment against the input was 1024 samples late with one
        // frame skipped and 0 with two.
        FDK_PRIMING_FRAMES
    }
    fn encode(&mut self, pcm: &[f32], out: &mut dyn FnMut(&[u8])) -> Result<(), AudioError> {
        self.pending.extend(pcm.iter().map(|&s| (s * 32767.0) as i16));
        let mut used = 0;
        while self.pending.len() - used >= 1024 {
            let r = self
                .enc
                .encode(&self.pending[used..used + 1024], &mut self.buf)
                .map_err(|e| AudioError::Encoder { encoder: "fdk-aac", msg: format!("{e:?}") })?;
            used += r.input_consumed.max(1);
            if r.output_size > 0 {
                out(&self.buf[..r.output_size]);
            }
        }
        self.pending.drain(..used);
        Ok(())
    }
}

#[cfg(feature = "fdk-aac")]
const FDK_PRIMING_FRAMES: usize = 2;

/// Counters of one stream's audio transcoding.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TranscodeStats {
    pub encoder: &'static str,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Input frames lost: undecodable, or an encoder error.
    pub errors: u64,
    /// Milliseconds of silence inserted to fill input gaps.
    pub silence_ms: u64,
    /// The output timeline restarted (a gap too long to fill, an encoder rebuilt).
    pub restarts: u64,
}

/// Decodes AAC input frames with symphonia (also used by the WebRTC output's AAC to G.711).
pub struct AacDecoder {
    asc: Bytes,
    dec: Box<dyn symphonia::core::codecs::audio::AudioDecoder>,
    pcm: Vec<f32>,
}

impl AacDecoder {
    pub fn new(cfg: &AudioConfig) -> Result<Self, AudioError> {
        use symphonia::core::codecs::audio::well_known::CODEC_ID_AAC;
        use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoderOptions};
        let asc = cfg.asc.clone().ok_or_else(|| AudioError::Unsupported("AAC without AudioSpecificConfig".into()))?;
        let mut p = AudioCodecParameters::new();
        p.for_codec(CODEC_ID_AAC).with_sample_rate(cfg.sample_rate).with_extra_data(asc.to_vec().into_boxed_slice());
        let dec = symphonia::default::get_codecs()
            .make_audio_decoder(&p, &AudioDecoderOptions::default())
            .map_err(|e| AudioError::Decoder { codec: Codec::Aac, msg: e.to_string() })?;
        Ok(AacDecoder { asc, dec, pcm: Vec::with_capacity(4096) })
    }

    /// Decodes one raw frame, downmixed to mono, appended to `out`. Returns the channel count.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<f32>) -> Result<(), AudioError> {
        use symphonia::core::packet::PacketRef;
        use symphonia::core::units::{Duration, Timestamp};
        let buf = self
            .dec
            .decode_ref(&PacketRef::new(0, Timestamp::new(0), Duration::new(1024), data))
            .map_err(|e| AudioError::Decoder { codec: Codec::Aac, msg: e.to_string() })?;
        let ch = buf.num_planes().max(1);
        buf.copy_to_vec_interleaved(&mut self.pcm);
        let scale = 1.0 / ch as f32;
        out.extend(self.pcm.chunks_exact(ch).map(|s| s.iter().sum::<f32>() * scale));
        Ok(())
    }
}

/// Resamples mono f32 from one rate to the output rate, delay removed: the polyphase filter where
/// it is made for the ratio (D182), else rubato's FFT resampler in 20 ms input chunks.
pub struct Rate {
    from: u32,
    to: u32,
    fft: Option<Fft<f32>>,
    /// The G.711 rates' own filter (D182); rubato's FFT resampler for the other ratios.
    poly: Option<Polyphase>,
    chunk: usize,
    fifo: Vec<f32>,
    out: Vec<f32>,
    skip: usize,
    /// Real input samples taken, and output samples given (after the delay was skipped).
    taken: u64,
    given: u64,
}

impl Rate {
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        let mut r = Rate::idle(from, to);
        if from == to {
            return Ok(r);
        }
        if let Some(table) = Table::shared(from, to) {
            r.chunk = table.lookahead();
            r.poly = Some(Polyphase::new(table));
            return Ok(r);
        }
        r.with_fft()
    }

    /// rubato's FFT resampler for any ratio (the comparison in benches/audio.rs).
    pub fn new_fft(from: u32, to: u32) -> Result<Self, AudioError> {
        let r = Rate::idle(from, to);
        if from == to {
            return Ok(r);
        }
        r.with_fft()
    }

    /// No resampler yet (a pass-through when `from == to`).
    fn idle(from: u32, to: u32) -> Self {
        Rate {
            from,
            to,
            fft: None,
            poly: None,
            chunk: 0,
            fifo: Vec::new(),
            out: Vec::new(),
            skip: 0,
            taken: 0,
            given: 0,
        }
    }

    fn with_fft(mut self) -> Result<Self, AudioError> {
        let (from, to) = (self.from, self.to);
        let r = &mut self;
        // 20 ms chunks; 40 ms for rates such as 11025 Hz that have no whole 20 ms.
        r.chunk = match from {
            0 => return Err(r.err("the input rate must be a multiple of 25 Hz")),
            f if f.is_multiple_of(50) => f as usize / 50,
            f if f.is_multiple_of(25) => f as usize / 25,
            _ => return Err(r.err("the input rate must be a multiple of 25 Hz")),
        };
        let fft = Fft::<f32>::new(from as usize, to as usize, r.chunk, 1, FixedSync::Input).map_err(|e| r.err(e))?;
        r.out = vec![0f32; fft.output_frames_max()];
        r.skip = fft.output_delay();
        r.fifo.reserve(r.chunk * 2);
        r.fft = Some(fft);
        Ok(self)
    }

    fn err(&self, msg: impl std::fmt::Display) -> AudioError {
        AudioError::Resampler { from: self.from, to: self.to, msg: msg.to_string() }
    }

    /// Resamples `input`, appending the output to `dst`.
    pub fn process(&mut self, input: &[f32], dst: &mut Vec<f32>) -> Result<(), AudioError> {
        self.taken += input.len() as u64;
        if let Some(poly) = &mut self.poly {
            let start = dst.len();
            poly.process(input, dst);
            self.given += (dst.len() - start) as u64;
            return Ok(());
        }
        let Some(fft) = &mut self.fft else {
            dst.extend_from_slice(input);
            self.given += input.len() as u64;
            return Ok(());
        };
        self.fifo.extend_from_slice(input);
        let mut pos = 0;
        let mut failed = None;
        while self.fifo.len() - pos >= self.chunk {
            let n_out = fft.output_frames_next();
            let r = InterleavedSlice::new(&self.fifo[pos..pos + self.chunk], 1, self.chunk)
                .map_err(|e| e.to_string())
                .and_then(|inp| {
                    let mut outp =
                        InterleavedSlice::new_mut(&mut self.out[..n_out], 1, n_out).map_err(|e| e.to_string())?;
                    fft.process_into_buffer(&inp, &mut outp, None).map_err(|e| e.to_string())
                });
            pos += self.chunk;
            match r {
                Ok((_, n)) => {
                    let skip = self.skip.min(n);
                    self.skip -= skip;
                    dst.extend_from_slice(&self.out[skip..n]);
                    self.given += (n - skip) as u64;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.fifo.drain(..pos);
        match failed {
            Some(e) => Err(self.err(e)),
            None => Ok(()),
        }
    }

    /// Pushes out what the resampler still holds, for a clean rate change.
    fn drain(&mut self, dst: &mut Vec<f32>) -> Result<(), AudioError> {
        if self.fft.is_none() && self.poly.is_none() {
            return Ok(());
        }
        let want = self.taken * u64::from(self.to) / u64::from(self.from);
        let zeros = vec![0f32; self.chunk];
        for _ in 0..8 {
            if self.given >= want {
                break;
            }
            let (taken, start) = (self.taken, dst.len());
            self.process(&zeros, dst)?;
            self.taken = taken;
            let extra = (self.given.saturating_sub(want) as usize).min(dst.len() - start);
            dst.truncate(dst.len() - extra);
            self.given -= extra as u64;
        }
        Ok(())
    }
}

/// Audio frames of one stream in, AAC-LC frames at the output rate out.
pub struct AudioTranscoder {
    kind: EncoderKind,
    out_rate: u32,
    bitrate: u32,
    encoder: Box<dyn AacEncoder>,
    config: Arc<CodecConfig>,
    aac_in: Option<AacDecoder>,
    rate: Option<Rate>,
    /// Decoded mono PCM at the input rate (scratch).
    pcm: Vec<f32>,
    /// Resampled PCM (scratch).
    res: Vec<f32>,
    /// Output timeline: timestamp of output sample 0, and frames emitted/to skip.
    base: Option<i64>,
    emitted: u64,
    skip: usize,
    /// Input timeline: where the next input frame should start (90 kHz).
    next_in: Option<i64>,
    stats: TranscodeStats,
    /// rubato for every ratio (benches/audio.rs compares it with the polyphase filter).
    rubato_only: bool,
}

impl AudioTranscoder {
    pub fn new(kind: EncoderKind, out_rate: u32, bitrate: u32) -> Result<Self, AudioError> {
        let encoder = new_encoder(kind, out_rate, bitrate)?;
        let config =
            Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: out_rate, channels: 1, asc: Some(encoder.asc()) }));
        let skip = encoder.priming_frames();
        let stats = TranscodeStats { encoder: encoder.name(), ..Default::default() };
        Ok(AudioTranscoder {
            kind,
            out_rate,
            bitrate,
            encoder,
            config,
            aac_in: None,
            rate: None,
            pcm: Vec::with_capacity(4096),
            res: Vec::with_capacity(4096),
            base: None,
            emitted: 0,
            skip,
            next_in: None,
            stats,
            rubato_only: false,
        })
    }

    /// Resamples with rubato's FFT resampler even at the G.711 rates: the comparison in
    /// benches/audio.rs, not a setting.
    #[doc(hidden)]
    pub fn use_rubato_resampler(&mut self) {
        self.rubato_only = true;
        self.rate = None;
    }

    fn new_rate(&self, from: u32) -> Result<Rate, AudioError> {
        if self.rubato_only {
            Rate::new_fft(from, self.out_rate)
        } else {
            Rate::new(from, self.out_rate)
        }
    }

    pub fn stats(&self) -> &TranscodeStats {
        &self.stats
    }

    /// The output configuration (AAC-LC, `out_rate`, mono, with its AudioSpecificConfig).
    pub fn config(&self) -> &Arc<CodecConfig> {
        &self.config
    }

    /// Transcodes one audio frame whose (repaired) timestamp is `frame.pts` and whose samples are
    /// at `in_rate` Hz (G.711: the detected rate; AAC: its config). Output frames go to `out`.
    /// On error that frame is lost (counted) and the transcoder stays usable.
    pub fn push(&mut self, frame: &Frame, in_rate: u32, out: &mut Vec<Frame>) -> Result<(), AudioError> {
        self.stats.frames_in += 1;
        let r = self.push_inner(frame, in_rate, out);
        if r.is_err() {
            self.stats.errors += 1;
        }
        r
    }

    fn push_inner(&mut self, frame: &Frame, in_rate: u32, out: &mut Vec<Frame>) -> Result<(), AudioError> {
        self.pcm.clear();
        match frame.codec {
            Codec::G711A => self.pcm.extend(frame.data.iter().map(|&b| f32::from(g711::ALAW[b as usize]) / 32768.0)),
            Codec::G711U => self.pcm.extend(frame.data.iter().map(|&b| f32::from(g711::ULAW[b as usize]) / 32768.0)),
            Codec::Aac => {
                let CodecConfig::Audio(cfg) = frame.config.as_ref() else {
                    return Err(AudioError::Unsupported("AAC frame without an audio config".into()));
                };
                if self.aac_in.as_ref().is_none_or(|d| Some(&d.asc) != cfg.asc.as_ref()) {
                    self.aac_in = None;
                    self.aac_in = Some(AacDecoder::new(cfg)?);
                }
                let dec = self.aac_in.as_mut().expect("set above");
                dec.decode(&frame.data, &mut self.pcm)?;
            }
            c => return Err(AudioError::Unsupported(c.to_string())),
        }
        let in_samples = self.pcm.len() as i64;
        let dur = in_samples * 90_000 / i64::from(in_rate.max(1));
        self.res.clear();
        // Rate change: let the old resampler finish first, so no input is lost.
        if self.rate.as_ref().is_some_and(|r| r.from != in_rate) {
            if let Some(mut old) = self.rate.take() {
                old.drain(&mut self.res)?;
            }
        }
        if self.rate.is_none() {
            self.rate = Some(self.new_rate(in_rate)?);
        }
        // Input timeline: fill a forward gap with silence, restart beyond MAX_SILENCE_TICKS.
        match self.next_in {
            Some(next) if frame.pts - next > 90 => {
                let gap = frame.pts - next;
                if gap > MAX_SILENCE_TICKS {
                    self.restart(frame.pts);
                } else {
                    let n = (gap * i64::from(self.out_rate) / 90_000) as usize;
                    self.res.resize(self.res.len() + n, 0.0);
                    self.stats.silence_ms += (gap / 90) as u64;
                }
            }
            None => self.restart(frame.pts),
            _ => {}
        }
        self.next_in = Some(frame.pts.max(self.next_in.unwrap_or(i64::MIN)) + dur);
        let pcm = std::mem::take(&mut self.pcm);
        let r = self.rate.as_mut().expect("set above").process(&pcm, &mut self.res);
        self.pcm = pcm;
        r?;
        for s in &mut self.res {
            *s = s.clamp(-1.0, 1.0);
        }
        self.encode(out)
    }

    fn restart(&mut self, at: i64) {
        if self.base.is_some() {
            self.stats.restarts += 1;
            if let Ok(enc) = new_encoder(self.kind, self.out_rate, self.bitrate) {
                self.skip = enc.priming_frames();
                self.encoder = enc;
            }
            if let Some(r) = &self.rate {
                self.rate = self.new_rate(r.from).ok();
            }
        }
        self.base = Some(at);
        self.emitted = 0;
    }

    fn encode(&mut self, out: &mut Vec<Frame>) -> Result<(), AudioError> {
        let mut raw: Vec<Bytes> = Vec::new();
        let r = self.encoder.encode(&self.res, &mut |f| raw.push(Bytes::copy_from_slice(f)));
        let base = self.base.unwrap_or(0);
        for data in raw {
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            let ts = base + (self.emitted * 1024 * 90_000 / u64::from(self.out_rate)) as i64;
            self.emitted += 1;
            self.stats.frames_out += 1;
            out.push(Frame {
                codec: Codec::Aac,
                pts: ts,
                dts: ts,
                keyframe: true,
                data,
                config: self.config.clone(),
                cache: Default::default(),
            });
        }
        if r.is_err() {
            // The encoder was rebuilt: a new timeline starts with the next frame.
            self.stats.restarts += 1;
            self.skip = self.encoder.priming_frames();
            self.next_in = None;
            self.base = None;
        }
        r
    }
}

/// Test and measurement helpers: decode raw AAC frames, estimate a tone's frequency.
pub mod analysis {
    use super::*;

    /// Decodes raw AAC frames (as the transcoder emits them) to mono f32 with symphonia.
    pub fn decode_aac(asc: &Bytes, rate: u32, frames: &[Bytes]) -> Result<Vec<f32>, AudioError> {
        let cfg = AudioConfig { sample_rate: rate, channels: 1, asc: Some(asc.clone()) };
        let mut dec = AacDecoder::new(&cfg)?;
        let mut out = Vec::new();
        for f in frames {
            dec.decode(f, &mut out)?;
        }
        Ok(out)
    }

    /// `pcm` resampled to `to` exactly as the transcoder does (the reference for SNR).
    pub fn resample(pcm: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
        let mut r = Rate::new(from, to)?;
        let mut out = Vec::with_capacity(pcm.len() * to as usize / from as usize + 1024);
        r.process(pcm, &mut out)?;
        Ok(out)
    }

    /// Transcodes G.711A `data` at `rate` with `kind`, decodes the AAC with symphonia and returns
    /// (SNR dB against the resampled input, lag in samples, AAC bytes).
    pub fn g711_snr(data: &[u8], rate: u32, kind: EncoderKind) -> Result<(f64, i64, usize), AudioError> {
        g711_snr_with(data, rate, kind, false)
    }

    /// [`g711_snr`] with rubato as the resampler (before D182) when `rubato`, for comparison.
    pub fn g711_snr_with(
        data: &[u8],
        rate: u32,
        kind: EncoderKind,
        rubato: bool,
    ) -> Result<(f64, i64, usize), AudioError> {
        let cfg = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: rate, channels: 1, asc: None }));
        let mut t = AudioTranscoder::new(kind, 11_025, 24_000)?;
        if rubato {
            t.use_rubato_resampler();
        }
        let mut out = Vec::new();
        for (i, c) in data.chunks(rate as usize / 25).enumerate() {
            let f = Frame {
                codec: Codec::G711A,
                pts: i as i64 * 3600,
                dts: i as i64 * 3600,
                keyframe: true,
                data: Bytes::copy_from_slice(c),
                config: cfg.clone(),
                cache: Default::default(),
            };
            t.push(&f, rate, &mut out)?;
        }
        let CodecConfig::Audio(acfg) = t.config().as_ref() else { unreachable!("audio config") };
        let frames: Vec<Bytes> = out.iter().map(|f| f.data.clone()).collect();
        let bytes = frames.iter().map(|f| f.len()).sum();
        let decoded = decode_aac(acfg.asc.as_ref().expect("asc"), 11_025, &frames)?;
        let pcm: Vec<f32> = data.iter().map(|&b| f32::from(g711::ALAW[b as usize]) / 32768.0).collect();
        let mut r = if rubato { Rate::new_fft(rate, 11_025)? } else { Rate::new(rate, 11_025)? };
        let mut reference = Vec::with_capacity(pcm.len() * 11_025 / rate as usize + 1024);
        r.process(&pcm, &mut reference)?;
        let (snr, lag) = snr_db(&reference, &decoded, 2048);
        Ok((snr, lag, bytes))
    }

    /// The frequency of a tone in `pcm` at `rate`, from rising zero crossings.
    pub fn tone_frequency(pcm: &[f32], rate: u32) -> f64 {
        let crossings: Vec<usize> = (1..pcm.len()).filter(|&i| pcm[i - 1] < 0.0 && pcm[i] >= 0.0).collect();
        match (crossings.first(), crossings.last()) {
            (Some(&a), Some(&b)) if b > a => (crossings.len() - 1) as f64 * f64::from(rate) / (b - a) as f64,
            _ => 0.0,
        }
    }

    /// SNR (dB) of `out` against `reference` at the best lag within `max_lag` samples; returns (snr, lag).
    pub fn snr_db(reference: &[f32], out: &[f32], max_lag: usize) -> (f64, i64) {
        let n = reference.len().min(out.len()).saturating_sub(2 * max_lag);
        let window = n.min(200_000);
        let at = |lag: i64, i: usize| out[(max_lag as i64 + i as i64 + lag) as usize];
        let mut best = (f64::MIN, 0i64);
        for lag in -(max_lag as i64)..=max_lag as i64 {
            let c: f64 =
                (0..window).step_by(4).map(|i| f64::from(reference[max_lag + i]) * f64::from(at(lag, i))).sum();
            if c > best.0 {
                best = (c, lag);
            }
        }
        let lag = best.1;
        let (mut sig, mut err) = (0f64, 0f64);
        for i in 0..n {
            let r = f64::from(reference[max_lag + i]);
            let e = r - f64::from(at(lag, i));
            sig += r * r;
            err += e * e;
        }
        (10.0 * (sig / err.max(1e-20)).log10(), lag)
    }
}

#[cfg(test)]
mod tests {
    use super::analysis::*;

    #[test]
    fn the_g711_rates_use_the_polyphase_filter_and_others_rubato() {
        for from in [8_000, 16_000] {
            let r = Rate::new(from, 11_025).unwrap();
            assert!(r.poly.is_some() && r.fft.is_none(), "{from} Hz");
        }
        let r = Rate::new(44_100, 11_025).unwrap();
        assert!(r.poly.is_none() && r.fft.is_some());
        let r = Rate::new_fft(8_000, 11_025).unwrap();
        assert!(r.poly.is_none() && r.fft.is_some());
    }
    use super::*;

    fn tone(rate: u32, secs: f64, freq: f64, amp: f64) -> Vec<i16> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n).map(|i| ((i as f64 * freq * 2.0 * std::f64::consts::PI / f64::from(rate)).sin() * amp) as i16).collect()
    }

    fn frame(codec: Codec, pts: i64, data: Vec<u8>, config: Arc<CodecConfig>) -> Frame {
        Frame { codec, pts, dts: pts, keyframe: true, data: Bytes::from(data), config, cache: Default::default() }
    }

    fn g711_frames(codec: Codec, rate: u32, pcm: &[i16]) -> Vec<Frame> {
        let cfg = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: rate, channels: 1, asc: None }));
        let per = rate as usize / 25;
        pcm.chunks(per)
            .enumerate()
            .map(|(i, c)| {
                let enc = if codec == Codec::G711A { g711::linear_to_alaw } else { g711::linear_to_ulaw };
                frame(codec, 1000 + i as i64 * 3600, c.iter().map(|&s| enc(s)).collect(), cfg.clone())
            })
            .collect()
    }

    /// Transcodes, checks output timestamps are exactly sample-derived, decodes, returns PCM.
    fn transcode(frames: &[Frame], rate: u32) -> (Vec<f32>, Vec<Frame>) {
        let mut t = AudioTranscoder::new(EncoderKind::Syom, 11_025, 24_000).unwrap();
        let mut out = Vec::new();
        for f in frames {
            t.push(f, rate, &mut out).unwrap();
        }
        for (i, f) in out.iter().enumerate() {
            assert_eq!(f.pts, 1000 + (i as u64 * 1024 * 90_000 / 11_025) as i64);
        }
        assert_eq!(t.stats().frames_out, out.len() as u64);
        let CodecConfig::Audio(cfg) = t.config().as_ref() else { panic!() };
        assert_eq!(cfg.asc.as_deref(), Some(&[0x15, 0x08][..]), "AAC-LC 11025 Hz mono");
        let data: Vec<Bytes> = out.iter().map(|f| f.data.clone()).collect();
        (decode_aac(cfg.asc.as_ref().unwrap(), 11_025, &data).unwrap(), out)
    }

    #[test]
    fn bitrate_picks_the_nearest_vbr_level() {
        assert_eq!(syom_quality_for(8_000), 0);
        assert_eq!(syom_quality_for(24_000), 1, "the default bitrate");
        assert_eq!(syom_quality_for(32_000), 2);
        assert_eq!(syom_quality_for(128_000), 7);
    }

    #[test]
    fn g711_8k_and_16k_tones_come_out_at_1khz_11025() {
        for (codec, rate) in [(Codec::G711A, 8_000), (Codec::G711U, 16_000)] {
            let frames = g711_frames(codec, rate, &tone(rate, 3.0, 1000.0, 12_000.0));
            let (pcm, out) = transcode(&frames, rate);
            let f = tone_frequency(&pcm[2048..], 11_025);
            assert!((f - 1000.0).abs() < 2.0, "{codec} {rate}: {f} Hz");
            // 3 s in, all but the encoder's buffered tail (< 2 frames) out.
            let secs = out.len() as f64 * 1024.0 / 11_025.0;
            assert!((2.8..=3.0).contains(&secs), "{codec}: {secs} s");
        }
    }

    #[test]
    fn aac_16k_input_is_decoded_and_reencoded() {
        // Make AAC 16 kHz input with syom itself.
        let mut enc = SyomEncoder::new(16_000, 32_000).unwrap();
        let asc = enc.asc();
        let pcm: Vec<f32> = tone(16_000, 3.0, 1000.0, 12_000.0).iter().map(|&s| f32::from(s) / 32768.0).collect();
        let mut raw = Vec::new();
        enc.encode(&pcm, &mut |f| raw.push(f.to_vec())).unwrap();
        let cfg = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 16_000, channels: 1, asc: Some(asc) }));
        let frames: Vec<Frame> = raw
            .into_iter()
            .enumerate()
            .map(|(i, d)| frame(Codec::Aac, 1000 + (i as i64 * 1024 * 90_000 / 16_000), d, cfg.clone()))
            .collect();
        let (pcm, _) = transcode(&frames, 16_000);
        let f = tone_frequency(&pcm[4096..], 11_025);
        assert!((f - 1000.0).abs() < 2.0, "{f} Hz");
    }

    #[test]
    fn broken_frames_are_lost_not_fatal_and_gaps_are_filled() {
        let mut t = AudioTranscoder::new(EncoderKind::Syom, 11_025, 24_000).unwrap();
        let mut out = Vec::new();
        // AAC whose AudioSpecificConfig is unusable, then garbage under a good one.
        let bad = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 16_000, channels: 1, asc: None }));
        assert!(t.push(&frame(Codec::Aac, 0, vec![0x21; 50], bad), 16_000, &mut out).is_err());
        let odd = Arc::new(CodecConfig::Audio(AudioConfig {
            sample_rate: 16_000,
            channels: 1,
            asc: Some(Bytes::from_static(&[0x14, 0x08])),
        }));
        let _ = t.push(&frame(Codec::Aac, 0, vec![0xFF; 50], odd), 16_000, &mut out);
        assert!(t.stats().errors >= 1);
        out.clear();
        // G.711 continues, with a 1 s hole in its timeline: filled with silence.
        let mut frames = g711_frames(Codec::G711A, 8_000, &tone(8_000, 4.0, 1000.0, 12_000.0));
        frames.retain(|f| !(26_000..116_000).contains(&f.pts));
        for f in &frames {
            t.push(f, 8_000, &mut out).unwrap();
        }
        assert!(t.stats().silence_ms >= 900, "{:?}", t.stats());
        for w in out.windows(2) {
            let d = w[1].pts - w[0].pts;
            assert!((8359..=8360).contains(&d), "{d}");
        }
    }
}
