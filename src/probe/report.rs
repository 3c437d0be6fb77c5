//! What `gbgate probe` tells: per stream, what the gateway's own ingest pipeline saw.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::media::ingest::StreamIngest;
use crate::media::pipeline::{MediaPipeline, MediaStats};
use crate::media::{Codec, CodecConfig, Frame, MediaKind};
use crate::probe::reader::{read_capture, CaptureFormat, CaptureItem, ReadError};
use crate::proto::rtp::RtpPacket;

/// Reorder window used for captures (no wall clock in a file: loss is declared by count).
const PROBE_REORDER_PACKETS: usize = 64;
const PROBE_REORDER_DELAY_US: u64 = 200_000;
/// A forward timestamp step longer than this is reported as a jump.
const JUMP_TICKS: i64 = 90_000;

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub file: String,
    pub format: String,
    pub warnings: Vec<String>,
    pub streams: Vec<StreamReport>,
}

#[derive(Debug, Serialize)]
pub struct StreamReport {
    /// `None` for a raw PS file.
    pub ssrc: Option<u32>,
    pub flow: Option<String>,
    pub video: Option<VideoReport>,
    pub audio: Option<AudioReport>,
    pub packets: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub duration_ms: u64,
    pub anomalies: Vec<String>,
    /// What the gateway's media stage (timestamp repair, G.711 rate detection, audio to AAC)
    /// did to this stream, running the same code as the live server.
    pub media: MediaStats,
    /// Timestamps after repair: backward or zero steps left (always 0 unless repair is broken).
    pub repaired_non_monotonic: u64,
}

#[derive(Debug, Serialize)]
pub struct VideoReport {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub keyframes: u64,
    pub first_pts: i64,
    pub last_pts: i64,
}

#[derive(Debug, Serialize)]
pub struct AudioReport {
    pub codec: Codec,
    pub sample_rate: u32,
    pub channels: u8,
    pub frames: u64,
    pub first_pts: i64,
    pub last_pts: i64,
}

/// Timestamp behaviour of one track, measured on the frames the demuxer emitted.
#[derive(Debug, Default)]
struct TrackAudit {
    frames: u64,
    keyframes: u64,
    first: Option<i64>,
    last: i64,
    backward: u64,
    repeated: u64,
    jumps: u64,
    largest_jump: i64,
    steps: BTreeMap<i64, u64>,
}

impl TrackAudit {
    fn add(&mut self, frame: &Frame) {
        self.frames += 1;
        self.keyframes += u64::from(frame.keyframe);
        if let Some(_first) = self.first {
            let step = frame.pts - self.last;
            if step < 0 {
                self.backward += 1;
            } else if step == 0 {
                self.repeated += 1;
            } else if step > JUMP_TICKS {
                self.jumps += 1;
                self.largest_jump = self.largest_jump.max(step);
            }
            if self.steps.len() < 64 || self.steps.contains_key(&step) {
                *self.steps.entry(step).or_default() += 1;
            }
        } else {
            self.first = Some(frame.pts);
        }
        self.last = frame.pts;
    }

    /// The most common PTS step (the nominal frame duration).
    fn usual_step(&self) -> i64 {
        self.steps.iter().filter(|(s, _)| **s > 0).max_by_key(|(_, n)| **n).map_or(0, |(s, _)| *s)
    }

    fn span_ticks(&self) -> i64 {
        self.first.map_or(0, |first| (self.last - first).max(0) + self.usual_step())
    }

    fn describe(&self, track: &str, out: &mut Vec<String>) {
        if self.backward > 0 {
            out.push(format!("{track} timestamps went backwards {} times", self.backward));
        }
        if self.repeated > 0 {
            out.push(format!("{track} timestamps repeated {} times (zero step)", self.repeated));
        }
        if self.jumps > 0 {
            out.push(format!(
                "{track} timestamps jumped forward {} times (largest {:.3} s)",
                self.jumps,
                self.largest_jump as f64 / 90_000.0
            ));
        }
    }
}

struct StreamProbe {
    ssrc: Option<u32>,
    flow: Option<String>,
    ingest: StreamIngest,
    video: TrackAudit,
    audio: TrackAudit,
    frames: Vec<Frame>,
    media: MediaPipeline,
    /// Capture time of the packet being processed (none for files without times).
    now_us: Option<u64>,
    repaired: Vec<Frame>,
    last_out: [Option<i64>; 2],
    non_monotonic: u64,
}

impl StreamProbe {
    fn new(ssrc: Option<u32>, flow: Option<String>) -> StreamProbe {
        StreamProbe {
            ssrc,
            flow,
            ingest: StreamIngest::new(PROBE_REORDER_PACKETS, PROBE_REORDER_DELAY_US),
            video: TrackAudit::default(),
            audio: TrackAudit::default(),
            frames: Vec::new(),
            media: MediaPipeline::new(&crate::config::AudioConfig::default()),
            now_us: None,
            repaired: Vec::new(),
            last_out: [None, None],
            non_monotonic: 0,
        }
    }

    fn audit(&mut self) {
        for frame in self.frames.drain(..) {
            match frame.kind() {
                MediaKind::Video => self.video.add(&frame),
                MediaKind::Audio => self.audio.add(&frame),
            }
            self.media.push(frame, self.now_us, &mut self.repaired);
        }
        self.check_repaired();
    }

    fn check_repaired(&mut self) {
        for f in self.repaired.drain(..) {
            let last = &mut self.last_out[usize::from(f.kind() == MediaKind::Audio)];
            if last.is_some_and(|l| f.dts <= l) {
                self.non_monotonic += 1;
            }
            *last = Some(f.dts);
        }
    }

    fn finish(mut self) -> StreamReport {
        self.ingest.finish(&mut self.frames);
        self.audit();
        self.media.finish(&mut self.repaired);
        self.check_repaired();
        let demux = self.ingest.demux_stats();
        let rtp = self.ingest.rtp_stats();
        let mut anomalies = Vec::new();
        if demux.packs == 0 && demux.bytes > 0 {
            anomalies.push(format!("no PS sync: no pack header (00 00 01 BA) in {} bytes; not MPEG-PS?", demux.bytes));
        }
        anomalies.extend(demux.anomalies());
        self.video.describe("video", &mut anomalies);
        self.audio.describe("audio", &mut anomalies);
        let video = self.ingest.video_config().zip(self.ingest.video_codec()).map(|(cfg, codec)| {
            let (width, height) = match cfg.as_ref() {
                CodecConfig::Video(v) => (v.width, v.height),
                CodecConfig::Audio(_) => (0, 0),
            };
            VideoReport {
                codec,
                width,
                height,
                frames: self.video.frames,
                keyframes: self.video.keyframes,
                first_pts: self.video.first.unwrap_or(0),
                last_pts: self.video.last,
            }
        });
        let audio = self.ingest.audio_config().zip(self.ingest.audio_codec()).map(|(cfg, codec)| {
            let (sample_rate, channels) = match cfg.as_ref() {
                CodecConfig::Audio(a) => (a.sample_rate, a.channels),
                CodecConfig::Video(_) => (0, 0),
            };
            AudioReport {
                codec,
                sample_rate,
                channels,
                frames: self.audio.frames,
                first_pts: self.audio.first.unwrap_or(0),
                last_pts: self.audio.last,
            }
        });
        let span = self.video.span_ticks().max(self.audio.span_ticks());
        StreamReport {
            ssrc: self.ssrc,
            flow: self.flow,
            video,
            audio,
            packets: rtp.packets,
            lost: rtp.lost,
            duplicates: rtp.duplicates,
            reordered: rtp.reordered,
            duration_ms: (span.max(0) as u64) / 90,
            anomalies,
            media: self.media.stats(),
            repaired_non_monotonic: self.non_monotonic,
        }
    }
}

/// Probes a capture file: every RTP stream in it (by flow and SSRC), or the one raw PS stream.
pub fn probe_file(path: &Path) -> Result<ProbeReport, ReadError> {
    let capture = read_capture(path)?;
    let mut streams: Vec<StreamProbe> = Vec::new();
    let mut index: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let mut not_rtp = 0u64;
    for item in capture.items {
        match item {
            CaptureItem::Ps(chunk) => {
                if streams.is_empty() {
                    streams.push(StreamProbe::new(None, None));
                }
                let s = &mut streams[0];
                s.ingest.push_ps(&chunk, &mut s.frames);
                s.audit();
            }
            CaptureItem::Rtp { flow, time_us, packet, .. } => {
                let packet = match RtpPacket::parse(packet) {
                    Ok(p) => p,
                    Err(_) => {
                        not_rtp += 1;
                        continue;
                    }
                };
                let key = (flow, packet.ssrc);
                let i = match index.get(&key) {
                    Some(i) => *i,
                    None => {
                        streams.push(StreamProbe::new(Some(packet.ssrc), Some(key.0.clone())));
                        index.insert(key, streams.len() - 1);
                        streams.len() - 1
                    }
                };
                let s = &mut streams[i];
                s.now_us = time_us;
                // Without capture times, loss is declared by count alone (time stands still).
                s.ingest.push_rtp(packet, time_us.unwrap_or(0), &mut s.frames);
                s.audit();
            }
        }
    }
    let mut warnings = capture.warnings;
    if not_rtp > 0 {
        warnings.push(format!("{not_rtp} records were not valid RTP packets"));
    }
    Ok(ProbeReport {
        file: path.display().to_string(),
        format: format_name(capture.format).to_string(),
        warnings,
        streams: streams.into_iter().map(StreamProbe::finish).collect(),
    })
}

fn format_name(f: CaptureFormat) -> &'static str {
    match f {
        CaptureFormat::RawPs => "ps",
        CaptureFormat::RtpDump => "rtp-dump (u16 length framed, RFC 4571)",
        CaptureFormat::RtpTools => "rtpdump (rtptools)",
        CaptureFormat::Pcap => "pcap",
        CaptureFormat::Pcapng => "pcapng",
    }
}

/// The human-readable form.
pub fn render_text(report: &ProbeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: {}", report.file, report.format);
    for w in &report.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    if report.streams.is_empty() {
        let _ = writeln!(s, "  no media streams found");
    }
    for st in &report.streams {
        let _ = match (st.ssrc, &st.flow) {
            (Some(ssrc), Some(flow)) => writeln!(s, "\nstream SSRC {ssrc} (0x{ssrc:08X}) {flow}"),
            _ => writeln!(s, "\nprogram stream"),
        };
        if st.ssrc.is_some() {
            let _ = writeln!(
                s,
                "  rtp      {} packets, {} lost, {} duplicates, {} reordered",
                st.packets, st.lost, st.duplicates, st.reordered
            );
        }
        match &st.video {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "  video    {} {}x{}, {} frames, {} keyframes, pts {}..{}",
                    v.codec, v.width, v.height, v.frames, v.keyframes, v.first_pts, v.last_pts
                );
            }
            None => {
                let _ = writeln!(s, "  video    none");
            }
        }
        match &st.audio {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "  audio    {} {} Hz {} ch, {} frames, pts {}..{}",
                    a.codec, a.sample_rate, a.channels, a.frames, a.first_pts, a.last_pts
                );
            }
            None => {
                let _ = writeln!(s, "  audio    none");
            }
        }
        let _ = writeln!(s, "  duration {:.3} s", st.duration_ms as f64 / 1000.0);
        let m = &st.media;
        let r = &m.repair;
        let _ = writeln!(
            s,
            "  repair   video: {} zero steps, {} back steps, {} jumps re-anchored, {} PTS fixed; \
             audio: {} raw PTS ignored (time from samples), {} realigned, {} dropped ahead; \
             {} non-monotonic after repair",
            r.video_zero_steps,
            r.video_back_steps,
            r.video_jumps,
            r.video_pts_fixed,
            r.audio_ts_mismatches,
            r.audio_realigned,
            r.audio_dropped_ahead,
            st.repaired_non_monotonic
        );
        if let Some(rate) = m.g711_rate {
            let _ = writeln!(s, "  g711     {rate} Hz ({})", m.g711_rate_source.unwrap_or("-"));
        }
        if let Some(t) = &m.transcode {
            let _ = writeln!(
                s,
                "  aac out  {} frames from {} ({}), {} errors, {} ms silence filled, {} restarts",
                t.frames_out, t.frames_in, t.encoder, t.errors, t.silence_ms, t.restarts
            );
        }
        if st.anomalies.is_empty() {
            let _ = writeln!(s, "  anomalies: none");
        } else {
            let _ = writeln!(s, "  anomalies:");
            for a in &st.anomalies {
                let _ = writeln!(s, "    - {a}");
            }
        }
    }
    s
}
