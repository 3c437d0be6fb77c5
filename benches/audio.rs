//! Audio transcoding cost per stream: CPU time to turn one second of camera audio into AAC-LC
//! 11025 Hz mono (G.711 decode + resampler + encoder + timestamp repair), per encoder; and the
//! resampler alone, the polyphase filter (D182) against rubato, one stream and 300 in turn.
//! Input: the real G.711A recording in ../shared/fixtures (`gb_device_audio_8k.g711a`), or a
//! generated tone when it is absent. Run: `cargo bench --bench audio` (add `--features fdk-aac`
//! for the FDK rows). Each iteration transcodes 10 s of audio, so time/iter / 10 = CPU per second.
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gbgate::config::AudioConfig as Settings;
use gbgate::media::audio::{AudioTranscoder, EncoderKind, Rate};
use gbgate::media::pipeline::MediaPipeline;
use gbgate::media::{AudioConfig, Codec, CodecConfig, Frame};

fn input_8k() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/real/avstackdocs/gb_device_audio_8k.g711a");
    match std::fs::read(&path) {
        Ok(d) => d[..80_000.min(d.len())].to_vec(),
        Err(_) => (0..80_000)
            .map(|i| gbgate::media::g711::linear_to_alaw(((i as f64 * 0.785).sin() * 8000.0) as i16))
            .collect(),
    }
}

fn frames(data: &[u8], rate: u32, codec: Codec) -> Vec<Frame> {
    let cfg = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: rate, channels: 1, asc: None }));
    let per = rate as usize / 25;
    data.chunks(per)
        .enumerate()
        .map(|(i, c)| Frame {
            codec,
            pts: i as i64 * 3600,
            dts: i as i64 * 3600,
            keyframe: true,
            data: Bytes::copy_from_slice(c),
            config: cfg.clone(),
            cache: Default::default(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let g8 = input_8k();
    // 16 kHz: each 8 kHz sample twice (10 s as well).
    let g16: Vec<u8> = g8.iter().flat_map(|&b| [b, b]).collect();
    let mut kinds = vec![EncoderKind::Syom];
    if cfg!(feature = "fdk-aac") {
        kinds.push(EncoderKind::Fdk);
    }
    // Quality first (printed, not timed): SNR of the decoded AAC against the resampled input.
    if let Ok(full) = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/real/avstackdocs/gb_device_audio_8k.g711a"),
    ) {
        for (&kind, rubato) in kinds.iter().flat_map(|k| [(k, false), (k, true)]) {
            let with = if rubato { "+rubato" } else { "" };
            match gbgate::media::audio::analysis::g711_snr_with(&full, 8_000, kind, rubato) {
                Ok((snr, lag, bytes)) => println!(
                    "quality {kind:?}{with}: gb_device_audio_8k.g711a ({:.1} s) SNR {snr:.1} dB, lag {lag} samples, {:.1} kbit/s",
                    full.len() as f64 / 8000.0,
                    bytes as f64 * 8.0 / (full.len() as f64 / 8000.0) / 1000.0
                ),
                Err(e) => println!("quality {kind:?}{with}: {e}"),
            }
        }
    }
    let mut g = c.benchmark_group("transcode_10s");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10));
    for kind in kinds {
        for (label, data, rate) in [("g711a_8k", &g8, 8_000u32), ("g711a_16k", &g16, 16_000)] {
            let input = frames(data, rate, Codec::G711A);
            g.bench_function(format!("{kind:?}/{label}"), |b| {
                b.iter(|| {
                    let mut t = AudioTranscoder::new(kind, 11_025, 24_000).unwrap();
                    let mut out = Vec::with_capacity(128);
                    for f in &input {
                        t.push(f, rate, &mut out).unwrap();
                    }
                    out.len()
                })
            });
        }
    }
    // The same with rubato resampling (before D182), in the same run.
    for (label, data, rate) in [("g711a_8k", &g8, 8_000u32), ("g711a_16k", &g16, 16_000)] {
        let input = frames(data, rate, Codec::G711A);
        g.bench_function(format!("Syom+rubato/{label}"), |b| {
            b.iter(|| {
                let mut t = AudioTranscoder::new(EncoderKind::Syom, 11_025, 24_000).unwrap();
                t.use_rubato_resampler();
                let mut out = Vec::with_capacity(128);
                for f in &input {
                    t.push(f, rate, &mut out).unwrap();
                }
                out.len()
            })
        });
    }
    // The whole media stage as the server runs it (rate detection + repair + syom).
    let input = frames(&g8, 8_000, Codec::G711A);
    g.bench_function("pipeline/g711a_8k", |b| {
        b.iter(|| {
            let mut p = MediaPipeline::new(&Settings::default());
            let mut out = Vec::with_capacity(128);
            for (i, f) in input.iter().enumerate() {
                p.push(f.clone(), Some(i as u64 * 40_000), &mut out);
            }
            out.len()
        })
    });
    g.finish();
    // The resampler alone: 10 s of mono f32 at 8 and 16 kHz to 11025 Hz, fed in 40 ms frames;
    // `Rate::new` (the polyphase filter for these rates, D182) against rubato's FFT resampler.
    let to_pcm = |data: &[u8]| -> Vec<f32> {
        data.iter().map(|&b| f32::from(gbgate::media::g711::ALAW[b as usize]) / 32768.0).collect()
    };
    type MakeRate = fn(u32, u32) -> Result<Rate, gbgate::media::audio::AudioError>;
    let resamplers: [(&str, MakeRate); 2] = [("polyphase", Rate::new), ("rubato", Rate::new_fft)];
    // Quality (printed): each resampler on pure tones against the ideal tone at 11025 Hz. rubato's
    // delay compensation is whole samples and leaves it half an output sample late, so each is
    // scored at its best of three alignments (0 and +-0.5 sample).
    for (name, make) in resamplers {
        for (from, freq) in [(8_000u32, 1_000.0f64), (8_000, 3_000.0), (16_000, 1_000.0), (16_000, 4_000.0)] {
            let input: Vec<f32> = (0..from as usize * 2)
                .map(|i| (0.5 * (std::f64::consts::TAU * freq * i as f64 / f64::from(from)).sin()) as f32)
                .collect();
            let mut r = make(from, 11_025).unwrap();
            let mut out = Vec::new();
            for c in input.chunks(from as usize / 25) {
                r.process(c, &mut out).unwrap();
            }
            let snr = [-0.5f64, 0.0, 0.5]
                .iter()
                .map(|shift| {
                    let span = 400..out.len() - 400;
                    let err: f64 = span
                        .clone()
                        .map(|n| {
                            let want = 0.5 * (std::f64::consts::TAU * freq * (n as f64 + shift) / 11_025.0).sin();
                            (f64::from(out[n]) - want).powi(2)
                        })
                        .sum::<f64>()
                        / span.len() as f64;
                    10.0 * (0.125 / err).log10()
                })
                .fold(f64::MIN, f64::max);
            println!(
                "resampler {name}: {freq} Hz tone at {from} Hz -> 11025 Hz: SNR {snr:.1} dB against the ideal tone"
            );
        }
    }
    let mut g = c.benchmark_group("resample_10s");
    g.sample_size(20);
    g.throughput(Throughput::Elements(10));
    for (label, data, rate) in [("8k", &g8, 8_000u32), ("16k", &g16, 16_000)] {
        let pcm = to_pcm(data);
        let per = rate as usize / 25;
        for (name, make) in resamplers {
            g.bench_function(format!("{name}/{label}"), |b| {
                let mut out = Vec::with_capacity(pcm.len() * 2);
                b.iter(|| {
                    let mut r = make(rate, 11_025).unwrap();
                    out.clear();
                    for c in pcm.chunks(per) {
                        r.process(c, &mut out).unwrap();
                    }
                    out.len()
                })
            });
        }
    }
    g.finish();
    // As the server runs them: 300 streams' resamplers, each fed its next 40 ms frame in turn
    // (their state competes for the caches); 1 s of audio per stream per iteration.
    let mut g = c.benchmark_group("resample_300_streams_1s");
    g.sample_size(10);
    g.throughput(Throughput::Elements(300));
    let pcm = to_pcm(&g8[..8_000]);
    for (name, make) in resamplers {
        g.bench_function(format!("{name}/8k"), |b| {
            let mut rates: Vec<Rate> = (0..300).map(|_| make(8_000, 11_025).unwrap()).collect();
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                let mut n = 0;
                for c in pcm.chunks(320) {
                    for r in rates.iter_mut() {
                        out.clear();
                        r.process(c, &mut out).unwrap();
                        n += out.len();
                    }
                }
                n
            })
        });
    }
    g.finish();
    // As the server runs them: 300 cameras' transcoders, each given its next 40 ms G.711 frame in
    // turn; 1 s of audio per camera per iteration, so time / 300 = CPU per camera-second (the
    // issue's target, 0.02 % of a core per camera, is 0.2 ms per camera-second: 60 ms here).
    let mut g = c.benchmark_group("transcode_300_cameras_1s");
    g.sample_size(10);
    g.throughput(Throughput::Elements(300));
    let input = frames(&g8[..8_000 * 4], 8_000, Codec::G711A);
    for rubato in [false, true] {
        let name = if rubato { "Syom+rubato/g711a_8k" } else { "Syom/g711a_8k" };
        g.bench_function(name, |b| {
            let mut ts: Vec<AudioTranscoder> = (0..300)
                .map(|_| {
                    let mut t = AudioTranscoder::new(EncoderKind::Syom, 11_025, 24_000).unwrap();
                    if rubato {
                        t.use_rubato_resampler();
                    }
                    t
                })
                .collect();
            let mut out = Vec::with_capacity(16);
            let mut at = 0usize;
            b.iter(|| {
                // The next second (25 frames) of the 4 s clip for every camera, timestamps running on.
                for _ in 0..25 {
                    let f = &input[at % input.len()];
                    let f = Frame { pts: at as i64 * 3600, dts: at as i64 * 3600, ..f.clone() };
                    for t in ts.iter_mut() {
                        out.clear();
                        t.push(&f, 8_000, &mut out).unwrap();
                    }
                    at += 1;
                }
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
