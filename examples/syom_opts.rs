//! syom's public encoder options on the 73 s camera recording (docs/performance.md §13l, D190):
//! for each, the SNR and rate of the decoded AAC against the resampled input (as
//! `analysis::g711_snr`), the encoder's CPU per second of audio on one stream, and the same with N
//! encoders (default 300) fed the recording in turn, 40 ms at a time, as the server's audio workers
//! do. CPU is this thread's scheduler time, so other processes on the machine do not count.
//!
//! Run: `cargo run --release --example syom_opts -- base tonality pns@1 ...` (`NAME[+NAME..][@LEVEL]`,
//! names as in `opts`, level = the quality VBR level, default 1; env `REPS` (10), `N` (300),
//! `FROM`/`LEN` (seconds of the recording for the N-encoder loop)). `-- resample`: the resampler
//! alone, 8 kHz -> 11025 Hz, one stream and 300 in turn (D191).
use bytes::Bytes;
use gbgate::media::audio::analysis;

/// This thread's CPU time, from the scheduler (Linux): descheduled time is not counted. Updated at
/// the scheduler tick, so only spans of many ticks are timed with it.
struct CpuTime(u64);
impl CpuTime {
    fn now() -> Self {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        CpuTime(s.split_whitespace().next().unwrap().parse().unwrap())
    }
    fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(CpuTime::now().0 - self.0)
    }
}

fn opts(name: &str, q: u8) -> syom::EncodeOptions {
    let mut o = syom::EncodeOptions::default()
        .with_bitrate_bps(24_000)
        .with_quality(q)
        .with_container(syom::EncodeContainer::Raw);
    for part in name.split('+') {
        o = match part {
            "base" => o,
            "lookahead" => o.with_lookahead(true),
            "tonality" => o.with_tonality(true),
            "ath" => o.with_ath(true),
            "refine" => o.with_band_refine(true),
            "pns" => o.with_pns(true),
            "group" => o.with_short_group(true),
            "stns" => o.with_short_tns(true),
            "intensity" => o.with_intensity(true),
            p => panic!("{p}"),
        };
    }
    o
}

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/real/avstackdocs/gb_device_audio_8k.g711a");
    let data = std::fs::read(path).unwrap();
    let pcm: Vec<f32> = data.iter().map(|&b| f32::from(gbgate::media::g711::ALAW[b as usize]) / 32768.0).collect();
    let reference = analysis::resample(&pcm, 8_000, 11_025).unwrap();
    let secs = data.len() as f64 / 8000.0;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reps: usize = std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let n_enc: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    if args.first().map(String::as_str) == Some("resample") {
        // The resampler alone (D191): 8 kHz -> 11025 Hz, one stream over the recording (mean of
        // REPS), and 300 streams fed 40 ms in turn over 10 s, CPU per second of audio.
        let mut one = 0.0;
        for _ in 0..reps {
            let mut r = gbgate::media::audio::Rate::new(8_000, 11_025).unwrap();
            let mut out = Vec::with_capacity(pcm.len() * 2);
            let t = CpuTime::now();
            for c in pcm.chunks(320) {
                r.process(c, &mut out).unwrap();
            }
            one += t.elapsed().as_secs_f64() / reps as f64;
        }
        let mut rs: Vec<_> = (0..300).map(|_| gbgate::media::audio::Rate::new(8_000, 11_025).unwrap()).collect();
        let mut out = Vec::with_capacity(1024);
        let t = CpuTime::now();
        for c in pcm[..80_000].chunks(320) {
            for r in rs.iter_mut() {
                out.clear();
                r.process(c, &mut out).unwrap();
            }
        }
        let many = t.elapsed().as_secs_f64() / 300.0 / 10.0;
        println!("resample 8k->11025: one {:.4} ms/s  300x {:.4} ms/s", one * 1000.0 / secs, many * 1000.0);
        return;
    }
    for spec in &args {
        let (name, q) = spec.split_once('@').map(|(n, q)| (n, q.parse().unwrap())).unwrap_or((spec.as_str(), 1));
        let o = opts(name, q);
        let mut one = 0.0;
        let mut frames: Vec<Bytes> = Vec::new();
        let mut asc = Bytes::new();
        for _ in 0..reps {
            let mut enc = syom::Encoder::new(11_025, 1, &o).unwrap();
            asc = Bytes::copy_from_slice(enc.asc());
            frames.clear();
            let t = CpuTime::now();
            for c in reference.chunks(441) {
                enc.feed(&[c], |f| {
                    frames.push(Bytes::copy_from_slice(f.payload));
                    Ok(())
                })
                .unwrap();
            }
            one += t.elapsed().as_secs_f64() / reps as f64;
        }
        // N encoders fed in turn (their state competing for the caches, as in the server).
        let mut encs: Vec<syom::Encoder> = (0..n_enc).map(|_| syom::Encoder::new(11_025, 1, &o).unwrap()).collect();
        let from: usize = std::env::var("FROM").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let len: usize = std::env::var("LEN").ok().and_then(|s| s.parse().ok()).unwrap_or(80);
        let seg = &reference[(from * 11_025).min(reference.len())..((from + len) * 11_025).min(reference.len())];
        let t = CpuTime::now();
        for c in seg.chunks(441) {
            for e in encs.iter_mut() {
                e.feed(&[c], |_| Ok(())).unwrap();
            }
        }
        let many = t.elapsed().as_secs_f64() / n_enc as f64 / (seg.len() as f64 / 11_025.0);
        let decoded = analysis::decode_aac(&asc, 11_025, &frames[1..]).unwrap();
        let (snr, lag) = analysis::snr_db(&reference, &decoded, 2048);
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        println!(
            "{spec:28} SNR {snr:5.1} dB lag {lag:5} rate {:5.1} kbit/s  enc {:.3} ms/s  {n_enc}x {:.3} ms/s",
            bytes as f64 * 8.0 / secs / 1000.0,
            one * 1000.0 / secs,
            many * 1000.0
        );
    }
}
