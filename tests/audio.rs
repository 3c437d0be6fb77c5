//! Audio to AAC-LC 11025 Hz mono and timestamp repair, end to end with real ffmpeg/ffprobe on
//! 127.0.0.1. Inputs are made at test time (ffmpeg lavfi, deterministic) and muxed with gbgate's
//! own PsMuxer (`sim::synth`), anomalies written into the PS clock; `send_file` replays them in
//! real time. Streams run in parallel: this file takes about 70 s.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::media::audio::analysis::tone_frequency;
use gbgate::media::Codec;
use gbgate::server::Gateway;
use gbgate::sim::send::{send_file, SendOptions};
use gbgate::sim::synth::{rtp_dump, split_annexb_aus, Anomaly, SynthInput};
use serde_json::Value;

/// Elementary streams shared by the tests: (dir, 60 s of 25 fps H.264 access units).
fn inputs() -> &'static (PathBuf, Vec<(bytes::Bytes, bool)>) {
    static DIR: OnceLock<(PathBuf, Vec<(bytes::Bytes, bool)>)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gbgate-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ff = |args: &[&str]| {
            let st = std::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
                .args(args)
                .status()
                .expect("ffmpeg runs");
            assert!(st.success(), "ffmpeg {args:?}");
        };
        let video = dir.join("v.h264");
        ff(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-t",
            "60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ]
        .iter()
        .copied()
        .chain(["-g", "25", "-bf", "0", "-threads", "1", "-bsf:v", "h264_metadata=aud=insert", "-f", "h264"])
        .chain([video.to_str().unwrap()])
        .collect::<Vec<_>>());
        for (name, rate, fmt) in
            [("a8k.alaw", "8000", "alaw"), ("u16k.mulaw", "16000", "mulaw"), ("aac16k.adts", "16000", "adts")]
        {
            let tone = format!("sine=frequency=1000:sample_rate={rate}:duration=60");
            let mut args = vec!["-f", "lavfi", "-i", &tone, "-ac", "1", "-ar", rate];
            if fmt == "adts" {
                args.extend(["-c:a", "aac", "-b:a", "32k"]);
            }
            let out = dir.join(name);
            args.extend(["-f", fmt, out.to_str().unwrap()]);
            ff(&args);
        }
        let aus = split_annexb_aus(&std::fs::read(&video).unwrap(), Codec::H264);
        assert!(aus.len() >= 1500, "{} video frames", aus.len());
        (dir, aus)
    })
}

/// Writes an RTP dump of `secs` seconds of video + the given audio with `anomaly`.
fn make_dump(name: &str, secs: usize, audio: &str, codec: Codec, rate: u32, anomaly: Anomaly, ssrc: u32) -> PathBuf {
    let (dir, aus) = inputs();
    let raw = std::fs::read(dir.join(audio)).unwrap();
    let audio_bytes = if codec == Codec::Aac {
        // Whole ADTS frames covering `secs`.
        let (frames, _) = gbgate::sim::synth::split_adts(&raw);
        let n = secs * rate as usize / 1024;
        frames[..n.min(frames.len())].concat()
    } else {
        raw[..secs * rate as usize].to_vec()
    };
    let input = SynthInput {
        video_codec: Codec::H264,
        video: &aus[..secs * 25],
        audio_codec: codec,
        audio: &audio_bytes,
        g711_rate: rate,
        anomaly,
        ssrc,
    };
    let path = dir.join(format!("{name}.rtp"));
    std::fs::write(&path, rtp_dump(&input)).unwrap();
    path
}

fn send_in_background(gw: &Gateway, path: PathBuf, ssrc: u32) -> tokio::task::JoinHandle<()> {
    let opts = SendOptions {
        to: gw.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(ssrc),
        loops: 1,
        duration: None,
        flood: false,
        linger: Duration::from_millis(300),
    };
    tokio::spawn(async move {
        send_file(&path, &opts).await.expect("send");
    })
}

/// Runs a command with a time limit; returns (ok, stdout bytes, stderr).
async fn run(cmd: &str, args: &[String], limit: Duration) -> (bool, Vec<u8>, String) {
    run_program_bytes(cmd, args, limit).await
}

/// Decodes the audio of `url` to mono s16le PCM at its own rate; returns (PCM, ffmpeg's stderr).
async fn decode_audio(url: String, limit: Duration) -> (Vec<f32>, String) {
    let mut args: Vec<String> = vec!["-hide_banner".into(), "-nostdin".into()];
    if url.starts_with("rtsp") {
        args.extend(["-rtsp_transport".into(), "tcp".into()]);
    }
    args.extend(["-i".into(), url.clone(), "-vn".into(), "-f".into(), "s16le".into(), "-ac".into(), "1".into()]);
    args.push("-".into());
    let (ok, out, err) = run("ffmpeg", &args, limit).await;
    assert!(ok, "ffmpeg {url}: {err}");
    let pcm = out.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect();
    (pcm, err)
}

/// The longest run of near-silence (samples) after the first `skip` samples.
fn longest_silence(pcm: &[f32], skip: usize) -> usize {
    let (mut best, mut run) = (0, 0);
    for &s in pcm.iter().skip(skip) {
        if s.abs() < 0.02 {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

fn assert_aac_11025_mono(stderr: &str, what: &str) {
    let line = stderr.lines().find(|l| l.contains("Audio:")).unwrap_or_else(|| panic!("{what}: no audio: {stderr}"));
    assert!(line.contains("aac") && line.contains("11025 Hz") && line.contains("mono"), "{what}: {line}");
}

async fn wait_stream(gw: &Gateway, name: &str) {
    let t = Instant::now();
    while gw.hub.get(name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "stream {name} did not appear");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g711a_8k_g711u_16k_and_aac_16k_leave_as_aac_11025_mono_1khz_over_rtmp_and_rtsp() {
    const SECS: usize = 30;
    let cases = [
        ("g711a_8k", "a8k.alaw", Codec::G711A, 8_000u32, 0x0C00_0001u32),
        ("g711u_16k", "u16k.mulaw", Codec::G711U, 16_000, 0x0C00_0002),
        ("aac_16k", "aac16k.adts", Codec::Aac, 16_000, 0x0C00_0003),
    ];
    let gw = start(test_config()).await;
    let asked = AskedFor::watch(&gw.hub);
    let (rtmp, rtsp) = (gw.rtmp_addr.unwrap(), gw.rtsp_addr.unwrap());
    let mut jobs = Vec::new();
    for (label, audio, codec, rate, ssrc) in cases {
        let path = make_dump(label, SECS, audio, codec, rate, Anomaly::None, ssrc);
        let name = format!("rtp/{ssrc:08X}");
        // RTMP: the player asks before the stream exists, so it sees all of it.
        let rtmp_play = tokio::spawn(decode_audio(format!("rtmp://{rtmp}/{name}"), Duration::from_secs(60)));
        jobs.push((label, rtmp_play, path, name, ssrc));
    }
    asked.wait(&jobs.iter().map(|j| j.3.clone()).collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let mut rtsp_plays = Vec::new();
    for (_, _, path, name, ssrc) in &jobs {
        send_in_background(&gw, path.clone(), *ssrc);
        wait_stream(&gw, name).await;
        rtsp_plays.push(tokio::spawn(decode_audio(format!("rtsp://{rtsp}/{name}"), Duration::from_secs(60))));
    }
    // While they run: the API shows what the media stage does, once every rate is detected and
    // 10 s of audio went through the encoder.
    let names: Vec<String> = jobs.iter().map(|j| j.3.clone()).collect();
    let settled = |s: &Value| {
        let m = &s["media"];
        m["transcode"]["frames_out"].as_u64().is_some_and(|n| n * 1024 >= 10 * 11_025)
            && (s["audio"]["codec"] == "aac" || m["g711_rate_source"] == "detected")
    };
    let mine = |l: &[Value]| -> Vec<Value> {
        l.iter().filter(|s| names.iter().any(|n| s["name"] == n.as_str())).cloned().collect()
    };
    let list = wait_streams(gw.api_addr, Duration::from_secs(25), |l| {
        let m = mine(l);
        m.len() == 3 && m.iter().all(settled)
    })
    .await;
    let streams_seen = mine(&list);
    assert_eq!(streams_seen.len(), 3, "{streams_seen:?}");
    for ((label, rtmp_play, _, _, _), rtsp_play) in jobs.into_iter().zip(rtsp_plays) {
        let (pcm, err) = rtmp_play.await.unwrap();
        assert_aac_11025_mono(&err, &format!("{label} rtmp"));
        let secs = pcm.len() as f64 / 11_025.0;
        assert!((secs - SECS as f64).abs() <= SECS as f64 * 0.01, "{label} rtmp: {secs:.3} s of audio");
        let f = tone_frequency(&pcm[11_025..pcm.len() - 11_025], 11_025);
        assert!((f - 1000.0).abs() < 5.0, "{label} rtmp: tone at {f:.1} Hz");
        let gap = longest_silence(&pcm[..pcm.len() - 2048], 4096);
        assert!(gap <= 1024, "{label} rtmp: {gap} samples of silence");
        let (pcm2, err2) = rtsp_play.await.unwrap();
        assert_aac_11025_mono(&err2, &format!("{label} rtsp"));
        let secs2 = pcm2.len() as f64 / 11_025.0;
        assert!((27.0..=SECS as f64 * 1.01).contains(&secs2), "{label} rtsp: {secs2:.3} s of audio");
        let f2 = tone_frequency(&pcm2[11_025..pcm2.len() - 11_025], 11_025);
        assert!((f2 - 1000.0).abs() < 5.0, "{label} rtsp: tone at {f2:.1} Hz");
        println!("{label}: rtmp {secs:.3} s, {f:.1} Hz, longest silence {gap}; rtsp {secs2:.3} s, {f2:.1} Hz");
    }
    for s in &streams_seen {
        let media = &s["media"];
        println!("{}: media {media}", s["name"]);
        assert_eq!(media["transcode"]["encoder"], "syom", "{s}");
        assert_eq!(media["transcode"]["errors"], 0, "{s}");
        if s["audio"]["codec"] != "aac" {
            assert_eq!(media["g711_rate_source"], "detected", "{s}");
        }
    }
    let by_name = |n: u32| streams_seen.iter().find(|s| s["name"] == format!("rtp/{n:08X}").as_str());
    assert_eq!(by_name(0x0C00_0001).map(|s| s["media"]["g711_rate"].clone()), Some(Value::from(8000)));
    assert_eq!(by_name(0x0C00_0002).map(|s| s["media"]["g711_rate"].clone()), Some(Value::from(16000)));
    gw.stop().await;
}

/// ffprobe packets of a play: (stream kind, pts ms).
async fn probe_packets(url: String) -> Vec<(String, i64)> {
    let args: Vec<String> =
        ["-v", "error", "-show_entries", "stream=index,codec_type:packet=stream_index,pts", "-of", "json"]
            .iter()
            .map(|s| s.to_string())
            .chain([url.clone()])
            .collect();
    let (ok, out, err) = run("ffprobe", &args, Duration::from_secs(100)).await;
    assert!(ok, "ffprobe {url}: {err}");
    let v: Value = serde_json::from_slice(&out).unwrap();
    let kinds: Vec<(Value, String)> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["index"].clone(), s["codec_type"].as_str().unwrap_or("").to_string()))
        .collect();
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let kind = kinds.iter().find(|k| k.0 == p["stream_index"])?.1.clone();
            Some((kind, p["pts"].as_i64()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_streams_come_out_monotonic_aligned_and_complete() {
    const SECS: usize = 60;
    let anomalies = [
        Anomaly::BackAndForth,
        Anomaly::ZeroVideoSteps,
        Anomaly::FastAudioClock,
        Anomaly::Wrap,
        Anomaly::Restart,
        Anomaly::HourJump,
    ];
    let gw = start(test_config()).await;
    let asked = AskedFor::watch(&gw.hub);
    let rtmp = gw.rtmp_addr.unwrap();
    let mut jobs = Vec::new();
    for (i, anomaly) in anomalies.into_iter().enumerate() {
        let ssrc = 0x0D00_0001 + i as u32;
        let path = make_dump(anomaly.name(), SECS, "a8k.alaw", Codec::G711A, 8_000, anomaly, ssrc);
        let name = format!("rtp/{ssrc:08X}");
        let probe = tokio::spawn(probe_packets(format!("rtmp://{rtmp}/{name}")));
        jobs.push((anomaly, probe, path, name, ssrc));
    }
    asked.wait(&jobs.iter().map(|j| j.3.clone()).collect::<Vec<_>>(), Duration::from_secs(10)).await;
    for (_, _, path, _, ssrc) in &jobs {
        send_in_background(&gw, path.clone(), *ssrc);
    }
    // The API near the end of each stream (its repair counters complete): 2 s before the end.
    let names: Vec<String> = jobs.iter().map(|j| j.3.clone()).collect();
    let near_end = |s: &Value| s["video"]["frames"].as_u64().is_some_and(|n| n >= (SECS as u64 - 2) * 25);
    let list = wait_streams(gw.api_addr, Duration::from_secs(SECS as u64 + 20), |l| {
        names.iter().all(|n| l.iter().any(|s| s["name"] == n.as_str() && near_end(s)))
    })
    .await;
    let api: Vec<Option<Value>> =
        names.iter().map(|n| list.iter().find(|s| s["name"] == n.as_str()).cloned()).collect();
    for ((anomaly, probe, _, _, _), api) in jobs.into_iter().zip(api) {
        let packets = probe.await.unwrap();
        let video: Vec<i64> = packets.iter().filter(|p| p.0 == "video").map(|p| p.1).collect();
        let audio: Vec<i64> = packets.iter().filter(|p| p.0 == "audio").map(|p| p.1).collect();
        let what = anomaly.name();
        assert_eq!(video.len(), SECS * 25, "{what}: every video frame");
        assert!(video.windows(2).all(|w| w[1] > w[0]), "{what}: video not monotonic: {video:?}");
        assert!(audio.windows(2).all(|w| w[1] > w[0]), "{what}: audio not monotonic: {audio:?}");
        // Audio frame k carries 1024 samples at 11025 Hz; video frame i is i / 25 s of true time.
        // Offsets of each track's output time from its true time, first and last 5 s:
        let a_off = |k: usize| audio[k] as f64 - k as f64 * 1024.0 * 1000.0 / 11_025.0;
        let v_off = |i: usize| video[i] as f64 - i as f64 * 40.0;
        let mean = |f: &dyn Fn(usize) -> f64, r: std::ops::Range<usize>| r.clone().map(f).sum::<f64>() / r.len() as f64;
        let (na, nv) = (audio.len(), video.len());
        let w = 50;
        let drift =
            (mean(&a_off, na - w..na) - mean(&v_off, nv - 125..nv)) - (mean(&a_off, 0..w) - mean(&v_off, 0..125));
        let expected_audio = SECS as f64 * 11_025.0 / 1024.0;
        println!(
            "{what}: {nv} video, {na} audio packets, A/V drift {drift:.1} ms; api {:?}",
            api.as_ref().map(|s| &s["media"])
        );
        assert!(drift.abs() < 40.0, "{what}: A/V drift {drift:.1} ms");
        assert!(na as f64 >= expected_audio * 0.98, "{what}: {na} audio frames of ~{expected_audio:.0}");
        let repair = api.as_ref().map(|s| s["media"]["repair"].clone()).unwrap_or_default();
        let counted = |k: &str| repair[k].as_u64().unwrap_or(0);
        match anomaly {
            Anomaly::BackAndForth => assert!(counted("video_back_steps") > 0 && counted("video_jumps") > 0, "{repair}"),
            Anomaly::ZeroVideoSteps => assert!(counted("video_zero_steps") > 100, "{repair}"),
            Anomaly::FastAudioClock => assert!(counted("audio_ts_mismatches") > 100, "{repair}"),
            Anomaly::Restart => assert!(counted("video_back_steps") >= 1, "{repair}"),
            Anomaly::HourJump => assert!(counted("video_jumps") >= 1, "{repair}"),
            Anomaly::Wrap | Anomaly::None => {}
        }
    }
    gw.stop().await;
}
