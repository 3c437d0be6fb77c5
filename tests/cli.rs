//! The `gbgate` binary as a user runs it: check-config, probe (against ffprobe), run + send.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn gbgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gbgate"))
}

#[test]
fn check_config_prints_the_effective_config_and_names_bad_keys() {
    let out =
        gbgate().args(["check-config", concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gbgate.toml")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[rtp]") && text.contains("listen = \"0.0.0.0:10000\"") && text.contains("timeout = \"10s\"")
    );

    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        ("[rtp]\nmax_streams = 0\n", "rtp.max_streams"),
        ("[rtp]\nlisten_addr = \"0.0.0.0:1\"\n", "listen_addr"),
        ("[rtp]\ntimeout = \"soon\"\n", "timeout"),
        ("[rtp]\nunknown_ssrc = \"maybe\"\n", "unknown_ssrc"),
        ("[api]\ntoken = \"short\"\n", "api.token"),
        ("[rtsp]\nrequest_timeout = \"0s\"\n", "rtsp.request_timeout"),
        ("[api]\nmax_connections_per_source = 0\n", "api.max_connections_per_source"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let out = gbgate().arg("check-config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "error for {body:?} must name {key}: {err}");
    }
}

/// What ffprobe decodes from a program stream: (codec, width, height, frames, keyframes).
fn ffprobe_video(ps: &Path) -> Option<(String, u64, u64, u64, u64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-f", "mpeg", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,width,height:frame=key_frame", "-of", "json"])
        .arg(ps)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let stream = v["streams"].as_array()?.first()?.clone();
    let frames = v["frames"].as_array().cloned().unwrap_or_default();
    let codec = match stream["codec_name"].as_str()? {
        "hevc" => "h265".to_string(),
        other => other.to_string(),
    };
    let keys = frames.iter().filter(|f| f["key_frame"] == 1).count() as u64;
    Some((codec, stream["width"].as_u64()?, stream["height"].as_u64()?, frames.len() as u64, keys))
}

/// The program stream an RTP dump carries: payloads in sequence order, duplicates removed.
fn ps_of_rtp_dump(dump: &Path, out: &Path) {
    let mut packets: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut ext = 0u64;
    let mut last: Option<u16> = None;
    for p in read_rtp_dump(dump) {
        let seq = u16::from_be_bytes([p[2], p[3]]);
        ext = match last {
            None => 1 << 20,
            Some(l) => (ext as i64 + i64::from(seq.wrapping_sub(l) as i16)) as u64,
        };
        last = Some(seq);
        let cc = (p[0] & 0x0f) as usize;
        packets.push((ext, p[12 + 4 * cc..].to_vec()));
    }
    packets.sort_by_key(|(s, _)| *s);
    packets.dedup_by_key(|(s, _)| *s);
    let ps: Vec<u8> = packets.into_iter().flat_map(|(_, p)| p).collect();
    std::fs::write(out, ps).unwrap();
}

fn probe_json(file: &Path) -> Value {
    let out = gbgate().args(["probe", "--json"]).arg(file).output().unwrap();
    assert!(out.status.success(), "probe {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks probe's view of `file` against ffprobe's decode of the same program stream, and the
/// audio frame count against the fixture's documented value.
fn check_fixture(file: &Path, audio: Option<(&str, u64)>, tmp: &Path) {
    let report = probe_json(file);
    let streams = report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{}: {report}", file.display());
    let s = &streams[0];
    let ps = if file.extension().is_some_and(|e| e == "rtp") {
        let ps = tmp.join(format!("{}.ps", file.file_name().unwrap().to_string_lossy()));
        ps_of_rtp_dump(file, &ps);
        ps
    } else {
        file.to_path_buf()
    };
    match ffprobe_video(&ps) {
        Some((codec, w, h, frames, keys)) => {
            let v = &s["video"];
            let ours = (v["codec"].as_str().unwrap_or("none"), v["width"].as_u64(), v["height"].as_u64());
            assert_eq!(ours, (codec.as_str(), Some(w), Some(h)), "{}", file.display());
            assert_eq!(v["frames"].as_u64(), Some(frames), "{}: frames vs ffprobe", file.display());
            assert_eq!(v["keyframes"].as_u64(), Some(keys), "{}: keyframes vs ffprobe", file.display());
        }
        None => assert!(s["video"].is_null(), "{}: ffprobe finds no video, probe did: {s}", file.display()),
    }
    match audio {
        Some((codec, frames)) => {
            assert_eq!(s["audio"]["codec"], codec, "{}", file.display());
            assert_eq!(s["audio"]["frames"].as_u64(), Some(frames), "{}: audio frames", file.display());
        }
        None => assert!(s["audio"].is_null(), "{}: {s}", file.display()),
    }
}

#[test]
fn probe_matches_ffprobe_on_the_projects_own_fixtures() {
    if !require_tool("probe_matches_ffprobe_on_the_projects_own_fixtures", "ffprobe") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in ["h264_g711a_8k", "h265_aac_16k", "h264_g711u_16k", "h265_g711a_8k"] {
        let exp = expected(name);
        let audio = (exp["audio_codec"].as_str().unwrap(), exp["audio_frames"].as_u64().unwrap());
        for ext in ["ps", "rtp"] {
            check_fixture(&own_fixture(&format!("{name}.{ext}")), Some(audio), tmp.path());
        }
        let report = probe_json(&own_fixture(&format!("{name}.rtp")));
        assert_eq!(report["streams"][0]["ssrc"], exp["ssrc"]);
        assert_eq!(report["streams"][0]["audio"]["sample_rate"], exp["sample_rate"]);
        assert_eq!(report["streams"][0]["packets"], exp["rtp_packets"]);
    }
}

#[test]
fn probe_matches_ffprobe_on_the_shared_fixtures() {
    let Some(dir) = shared_or_skip("probe_matches_ffprobe_on_the_shared_fixtures") else { return };
    if !require_tool("probe_matches_ffprobe_on_the_shared_fixtures", "ffprobe") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let syn = |f: &str| dir.join("synthetic").join(f);
    let real = |f: &str| dir.join("real").join(f);
    // Audio frame counts as the fixture READMEs document them.
    let cases: Vec<(PathBuf, Option<(&str, u64)>)> = vec![
        (syn("h264_g711a_8k.ps"), Some(("g711a", 100))),
        (syn("h264_g711a_8k.rtp"), Some(("g711a", 100))),
        (syn("h264_g711u_16k.ps"), Some(("g711u", 100))),
        (syn("h264_g711u_16k.rtp"), Some(("g711u", 100))),
        (syn("h265_aac_16k.ps"), Some(("aac", 64))),
        (syn("h265_aac_16k.rtp"), Some(("aac", 64))),
        (syn("h265_g711a_8k.ps"), Some(("g711a", 100))),
        (syn("h265_g711a_8k.rtp"), Some(("g711a", 100))),
        (syn("h264_video_only.ps"), None),
        (syn("h264_video_only.rtp"), None),
        (syn("g711a_8k_audio_only.ps"), Some(("g711a", 100))),
        (syn("g711a_8k_audio_only.rtp"), Some(("g711a", 100))),
        (syn("h264_g711a_8k_wrap.ps"), Some(("g711a", 100))),
        (syn("h264_g711a_8k_wrap.rtp"), Some(("g711a", 100))),
        (syn("h264_g711a_8k_faults.ps"), Some(("g711a", 100))),
        (syn("ffmpeg_vob_h264.ps"), None),
        (syn("ffmpeg_vob_h264.rtp"), None),
        (syn("ffmpeg_mpeg1_h264.ps"), None),
        (syn("ffmpeg_mpeg1_h264.rtp"), None),
        (real("avstackdocs/hik_d1_h264_01e168e1.ps"), None),
        (real("avstackdocs/hik_d1_h264_01e168e1.rtp"), None),
        (real("avstackdocs/hik_1080p15_h264_02c27467.ps"), None),
        (real("avstackdocs/hik_1080p15_h264_02c27467.gbsend.rtp"), None),
        // Audio only, one G.711A frame per PES (README: 35 353 PES, 2 of them without a PES header).
        (real("spvmn-tool/Audio_G711_PS2.mpg"), Some(("g711a", 35_353))),
    ];
    for (file, audio) in cases {
        check_fixture(&file, audio, tmp.path());
    }
    // The faulty capture: loss is reported as the README says (12 lost, 8 duplicates, 21 reordered).
    let r = probe_json(&syn("h264_g711a_8k_faults.rtp"));
    let s = &r["streams"][0];
    assert_eq!((s["lost"].as_u64(), s["duplicates"].as_u64(), s["reordered"].as_u64()), (Some(12), Some(8), Some(21)));
    assert!(s["anomalies"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("jumped forward")), "{s}");
    // RTP labelled PS that is not PS: no crash, a clear "no PS sync".
    let r = probe_json(&real("avstackdocs/gb_live_media_udp_hik_nonps.pcapng"));
    let s = &r["streams"][0];
    assert_eq!(s["ssrc"], 0x0396A9CA);
    assert_eq!(s["packets"], 1561);
    assert!(s["video"].is_null() && s["audio"].is_null());
    assert!(s["anomalies"][0].as_str().unwrap().starts_with("no PS sync"), "{s}");
    // The 1080p capture starts mid-PES: the garbage is reported.
    let r = probe_json(&real("avstackdocs/hik_1080p15_h264_02c27467.ps"));
    let text = r["streams"][0]["anomalies"].to_string();
    assert!(text.contains("1651 garbage bytes"), "{text}");
}

#[test]
fn probe_reads_pcaps_and_says_what_is_wrong_with_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"this is not a capture of anything at all").unwrap();
    let out = gbgate().args(["probe"]).arg(&junk).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognised format"));
    let out = gbgate().args(["probe", "/nonexistent/file.ps"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.ps"));
    // Text output of a good file names codecs and counts.
    let out = gbgate().args(["probe"]).arg(own_fixture("h264_g711a_8k.rtp")).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("video    h264 352x288, 50 frames, 2 keyframes"), "{text}");
    assert!(text.contains("audio    g711a 8000 Hz 1 ch, 50 frames"), "{text}");
}

#[test]
fn the_binary_runs_receives_a_camera_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Every listener on a port the kernel picks: another gbgate on the default ports is no problem.
    let cfg = dir.path().join("gbgate.toml");
    let mut text = String::new();
    for section in ["rtp", "api", "rtsp", "rtmp", "sip", "http", "webrtc"] {
        text += &format!("[{section}]\nlisten = \"127.0.0.1:0\"\n");
    }
    std::fs::write(&cfg, text).unwrap();
    let ports = dir.path().join("ports.json");
    let mut child = gbgate()
        .args(["run", "-c"])
        .arg(&cfg)
        .arg("--ports-file")
        .arg(&ports)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let bound: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            break serde_json::from_str(&text).unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
            panic!("gbgate exited ({status}) before listening: {log}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "gbgate did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let addr = |k: &str| -> std::net::SocketAddr { bound[k].as_str().unwrap().parse().unwrap() };
    let (api_addr, rtp) = (addr("api"), addr("rtp").port());
    for k in ["rtsp", "rtmp", "sip", "http", "webrtc"] {
        assert_ne!(addr(k).port(), 0, "{k}: {bound}");
    }
    let out = gbgate()
        .args(["send", "--to", &format!("127.0.0.1:{rtp}"), "--tcp", "--ssrc", "0100000001", "--linger", "3s"])
        .arg(own_fixture("h264_g711a_8k.rtp"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exp = expected("h264_g711a_8k");
    let mut seen = Value::Null;
    while start.elapsed() < Duration::from_secs(15) {
        let (_, body) = http_get_blocking(api_addr, "/api/v1/streams");
        if let Some(s) = body["streams"].as_array().and_then(|l| l.first()) {
            seen = s.clone();
            if s["video"]["frames"] == exp["video_frames"] && s["audio"]["frames"] == exp["audio_frames"] {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen["name"], "rtp/05F5E101", "{seen}");
    assert_eq!(seen["source"]["transport"], "tcp");
    assert_eq!(seen["video"]["frames"], 50, "{seen}");
    let sender = out.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&sender.stdout), String::from_utf8_lossy(&sender.stderr));
    assert!(sender.status.success() && said.contains("sent 104 packets"), "{said}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "gbgate exits cleanly on SIGTERM: {status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("gbgate started") && log.contains("shutting down"), "{log}");
    assert!(log.contains("stream=rtp/05F5E101"), "logs carry the stream id: {log}");
}
