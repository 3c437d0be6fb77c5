//! HLS (fMP4, LL-HLS) end to end on 127.0.0.1: GB/RTP fixtures in over RTP/TCP, ffprobe and
//! ffmpeg read `http://.../<stream>/index.m3u8`, and a plain HTTP client checks the LL-HLS
//! blocking reloads, the window, the idle stop and the play rules.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::config::{Config, HumanDuration};
use gbgate::server::Gateway;
use serde_json::Value;

fn name_of(ssrc: u32) -> String {
    format!("rtp/{ssrc:08X}")
}

/// One HTTP/1.0 GET: (status, head, body bytes).
fn get_blocking(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {all:?}"));
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, all[split + 4..].to_vec())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get_blocking(addr, &path)).await.unwrap()
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = get(addr, path).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Runs a command to completion off the runtime, with a time limit; returns (ok, stdout, stderr).
async fn run(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let start = Instant::now();
        // Read both pipes on threads: a chatty ffmpeg must not block on a full pipe.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let o = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let e = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let ok = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.success();
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (ok, o.join().unwrap(), e.join().unwrap())
    })
    .await
    .unwrap()
}

fn url(gw: &Gateway, stream: &str) -> String {
    format!("http://{}/{stream}/index.m3u8", gw.http_addr.expect("http listener"))
}

/// Waits until the hub has `stream` with a keyframe in its GOP cache.
async fn wait_live(gw: &Gateway, stream: &str) {
    let hub = gw.hub.clone();
    let s = stream.to_string();
    assert!(
        wait_for(Duration::from_secs(10), || hub.get(&s).is_some_and(|st| st.has_keyframe())).await,
        "{stream} never went live"
    );
}

/// `(name, value)` of the first line starting with `prefix`, e.g. the session token.
fn session_of(playlist: &str) -> String {
    let i = playlist.find("session=").expect("URIs carry the session");
    playlist[i + 8..].chars().take_while(|c| c.is_ascii_hexdigit()).collect()
}

/// The (msn, index) of every `EXT-X-PART` and the preload hint of a playlist.
fn parts(playlist: &str) -> (Vec<(u64, u64)>, (u64, u64)) {
    let uri = |l: &str| {
        let u = &l[l.find("URI=\"part").unwrap() + 9..];
        let u = &u[..u.find(".m4s").unwrap()];
        let (m, i) = u.split_once('.').unwrap();
        (m.parse().unwrap(), i.parse().unwrap())
    };
    let listed = playlist.lines().filter(|l| l.starts_with("#EXT-X-PART:")).map(uri).collect();
    let hint = playlist.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:")).map(uri).expect("a preload hint");
    (listed, hint)
}

fn extinf(playlist: &str) -> Vec<f64> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|v| v.trim_end_matches(',').parse().unwrap())
        .collect()
}

fn stream_view(gw_streams: &[Value], name: &str) -> Value {
    gw_streams.iter().find(|s| s["name"] == name).cloned().unwrap_or(Value::Null)
}

async fn ffprobe_hls(gw: &Gateway, stream: &str) -> Value {
    let mut c = Command::new("ffprobe");
    c.args(["-v", "error", "-show_entries"])
        .arg("stream=codec_name,codec_tag_string,codec_type,width,height,r_frame_rate,avg_frame_rate,sample_rate,channels")
        .args(["-of", "json", &url(gw, stream)]);
    let (ok, out, err) = run(c, Duration::from_secs(30)).await;
    assert!(ok, "ffprobe failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ffprobe JSON: {e}: {out}"))
}

fn by_type<'a>(probe: &'a Value, kind: &str) -> &'a Value {
    probe["streams"].as_array().unwrap().iter().find(|s| s["codec_type"] == kind).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_reads_h264_and_h265_hls_with_codecs_and_frame_rate() {
    let test = "ffprobe_reads_h264_and_h265_hls_with_codecs_and_frame_rate";
    if !require_tool(test, "ffprobe") {
        return;
    }
    let gw = start(test_config()).await;
    for (fixture, ssrc, codec, tag, audio) in [
        ("h264_g711a_8k.rtp", 0x0600_0001u32, "h264", "avc1", "aac"),
        ("h265_aac_16k.rtp", 0x0600_0002, "hevc", "hvc1", "aac"),
    ] {
        let sender = send_in_background(&gw, own_fixture(fixture), ssrc, 15);
        let name = name_of(ssrc);
        wait_live(&gw, &name).await;
        let probe = ffprobe_hls(&gw, &name).await;
        let v = by_type(&probe, "video");
        assert_eq!(v["codec_name"], codec, "{fixture}: {probe}");
        assert_eq!(v["codec_tag_string"], tag, "{fixture}: {probe}");
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(352), Some(288)), "{probe}");
        assert_eq!(v["r_frame_rate"], "25/1", "{fixture}: {probe}");
        let a = by_type(&probe, "audio");
        assert_eq!(a["codec_name"], audio, "{fixture}: {probe}");
        // The default audio output: AAC-LC 11025 Hz mono, from G.711 and from AAC 16 kHz alike.
        assert_eq!(a["sample_rate"], "11025", "{probe}");
        // hls.json gives a browser the codecs for MSE.
        let (status, body) = get_text(gw.http_addr.unwrap(), &format!("/{name}/hls.json")).await;
        assert_eq!(status, 200, "{body}");
        let info: Value = serde_json::from_str(&body).unwrap();
        let codecs = info["codecs"].as_str().unwrap();
        assert!(codecs.starts_with(&format!("{tag}.")) && codecs.ends_with(",mp4a.40.2"), "{info}");
        assert_eq!(info["mime"], format!("video/mp4; codecs=\"{codecs}\""));
        sender.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_for_seconds_with_continuous_timestamps_and_counts_as_a_player() {
    let test = "ffmpeg_plays_for_seconds_with_continuous_timestamps_and_counts_as_a_player";
    if !require_tool(test, "ffprobe") {
        return;
    }
    let gw = start(test_config()).await;
    let ssrc = 0x0600_0003;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 30);
    wait_live(&gw, &name).await;
    // ffprobe as a player: 8 s of packets, read in real time from the live playlist.
    let mut c = Command::new("ffprobe");
    c.args(["-v", "error", "-read_intervals", "%+8", "-show_entries", "packet=stream_index,dts_time,duration_time"])
        .args(["-of", "json", &url(&gw, &name)]);
    let probe = tokio::spawn(run(c, Duration::from_secs(40)));
    // While it plays, it is one `hls` player of the stream.
    let api = gw.api_addr;
    let n = name.clone();
    let seen = wait_json(api, "/api/v1/streams", Duration::from_secs(10), move |b| {
        stream_view(b["streams"].as_array().map_or(&[][..], |v| v), &n)["players"]["hls"] == 1
    })
    .await;
    assert_eq!(stream_view(seen["streams"].as_array().unwrap(), &name)["players"]["hls"], 1, "{seen}");
    let (_, _, metrics) = get(api, "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("gbgate_players{protocol=\"hls\"} 1"), "{metrics}");
    let (ok, out, err) = probe.await.unwrap();
    assert!(ok, "ffprobe: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let packets = v["packets"].as_array().unwrap();
    for (idx, step, what) in [(0u64, 0.040, "video"), (1, 1024.0 / 11025.0, "audio")] {
        let dts: Vec<f64> = packets
            .iter()
            .filter(|p| p["stream_index"] == idx)
            .map(|p| p["dts_time"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(dts.len() as f64 > 7.0 / step, "{what}: {} packets in 8 s", dts.len());
        let span = dts.last().unwrap() - dts[0];
        assert!(span > 7.0, "{what} spans {span} s");
        for w in dts.windows(2) {
            let d = w[1] - w[0];
            // Continuous: every step is one frame (the fixture loops seamlessly in the hub).
            assert!(d > 0.0 && d < step * 1.6, "{what}: a step of {d} s at {} ({:?})", w[0], &dts[..10]);
        }
    }
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ll_hls_blocking_reload_answers_when_the_part_is_ready() {
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0600_0004;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 20);
    wait_live(&gw, &name).await;
    let (status, pl) = get_text(http, &format!("/{name}/index.m3u8")).await;
    assert_eq!(status, 200, "{pl}");
    assert!(pl.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"), "{pl}");
    assert!(pl.contains("#EXT-X-PART-INF:PART-TARGET=0.500"), "{pl}");
    let session = session_of(&pl);
    let (listed, (msn, part)) = parts(&pl);
    assert!(!listed.is_empty(), "{pl}");
    // Ask for the hinted part's playlist: held until that part exists, well under 3 x target.
    let t = Instant::now();
    let (status, next) =
        get_text(http, &format!("/{name}/index.m3u8?session={session}&_HLS_msn={msn}&_HLS_part={part}")).await;
    let held = t.elapsed();
    assert_eq!(status, 200, "{next}");
    let (listed, _) = parts(&next);
    assert!(listed.contains(&(msn, part)), "the answer lists part {msn}.{part}: {next}");
    assert!(held > Duration::from_millis(50) && held < Duration::from_secs(3), "held {held:?}");
    // The preload hint itself: a GET of the next part is held and answered with a moof.
    let (_, (hm, hp)) = parts(&next);
    let t = Instant::now();
    let (status, head, body) = get(http, &format!("/{name}/part{hm}.{hp}.m4s?session={session}")).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(&body[4..8], b"moof");
    assert!(t.elapsed() < Duration::from_secs(3));
    // A complete segment is its parts, moof/mdat pairs.
    let seg = next.lines().find(|l| l.starts_with("seg")).unwrap().to_string();
    let (status, _, body) = get(http, &format!("/{name}/{seg}")).await;
    assert_eq!(status, 200);
    assert_eq!(&body[4..8], b"moof");
    // Too far ahead: 400 at once; a malformed directive: 400.
    let far = msn + 5;
    let (status, _) = get_text(http, &format!("/{name}/index.m3u8?session={session}&_HLS_msn={far}")).await;
    assert_eq!(status, 400);
    let (status, _) = get_text(http, &format!("/{name}/index.m3u8?session={session}&_HLS_part=1")).await;
    assert_eq!(status, 400);
    // The init segment is an ftyp + moov.
    let (status, _, init) = get(http, &format!("/{name}/init.mp4?session={session}")).await;
    assert_eq!(status, 200);
    assert_eq!(&init[4..8], b"ftyp");
    sender.abort();
}

fn idle_config(idle: Duration) -> Config {
    let mut cfg = test_config();
    cfg.hls.idle_timeout = HumanDuration(idle);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_segmenter_stops_and_frees_its_memory_after_the_idle_time() {
    let gw = start(idle_config(Duration::from_secs(2))).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0600_0005;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 20);
    wait_live(&gw, &name).await;
    let hub_stream = gw.hub.get(&name).unwrap();
    assert_eq!(hub_stream.subscriber_count(), 0, "nothing segments a stream nobody watches");
    let (status, pl) = get_text(http, &format!("/{name}/index.m3u8")).await;
    assert_eq!(status, 200, "{pl}");
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .map_or(-1.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    let (_, _, m) = get(gw.api_addr, "/metrics").await;
    let m = String::from_utf8_lossy(&m).into_owned();
    assert_eq!(metric(&m, "gbgate_hls_segmenters"), 1.0, "{m}");
    assert!(metric(&m, "gbgate_hls_bytes") > 1000.0, "{m}");
    assert_eq!(metric(&m, "gbgate_hls_sessions"), 1.0, "{m}");
    assert_eq!(hub_stream.subscriber_count(), 1, "one segmenter subscription");
    // Nobody asks any more: within the idle time (and a tick) the segmenter is gone.
    let t = Instant::now();
    let api = gw.api_addr;
    let stopped = wait_for(Duration::from_secs(6), || {
        let (_, _, m) = get_blocking(api, "/metrics");
        let m = String::from_utf8_lossy(&m).into_owned();
        metric(&m, "gbgate_hls_segmenters") == 0.0 && metric(&m, "gbgate_hls_bytes") == 0.0
    })
    .await;
    assert!(stopped, "the segmenter did not stop");
    assert!(t.elapsed() >= Duration::from_millis(1500), "stopped after {:?}, before the idle time", t.elapsed());
    let (_, _, m) = get(api, "/metrics").await;
    let m = String::from_utf8_lossy(&m).into_owned();
    assert_eq!(metric(&m, "gbgate_hls_sessions"), 0.0, "{m}");
    assert_eq!(metric(&m, "gbgate_hls_segmenters_stopped_idle_total"), 1.0, "{m}");
    // (The hub forgets a dropped subscription at its next frame.)
    let s = hub_stream.clone();
    assert!(wait_for(Duration::from_secs(2), || s.subscriber_count() == 0).await, "the subscription is gone");
    assert!(!hub_stream.subscriber_counts().contains_key("hls"));
    // A media request of the old session now finds nothing; a new playlist request starts again.
    let (status, _, _) = get(http, &format!("/{name}/init.mp4?session={}", session_of(&pl))).await;
    assert_eq!(status, 403);
    let (status, _) = get_text(http, &format!("/{name}/index.m3u8")).await;
    assert_eq!(status, 200);
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_bounded() {
    let mut cfg = test_config();
    cfg.hls.segments = 3;
    cfg.hls.segment_duration = HumanDuration(Duration::from_secs(1));
    let gw = start(cfg).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0600_0006;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 20);
    wait_live(&gw, &name).await;
    let (status, first) = get_text(http, &format!("/{name}/index.m3u8")).await;
    assert_eq!(status, 200);
    let session = session_of(&first);
    let first_seg = first.lines().find(|l| l.starts_with("seg")).unwrap().to_string();
    // Keep watching (the blocking reload of the next segment) until the window has moved on.
    let mut pl = first.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pl.contains("#EXT-X-MEDIA-SEQUENCE:3\n") && Instant::now() < deadline {
        let msn: u64 = pl.lines().find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")).unwrap().parse().unwrap();
        let n = extinf(&pl).len() as u64;
        let (status, next) =
            get_text(http, &format!("/{name}/index.m3u8?session={session}&_HLS_msn={}", msn + n)).await;
        assert_eq!(status, 200, "{next}");
        pl = next;
    }
    assert_eq!(extinf(&pl).len(), 3, "{pl}");
    assert!(extinf(&pl).iter().all(|d| (0.9..=1.1).contains(d)), "1 s GOPs: {pl}");
    let (status, _, _) = get(http, &format!("/{name}/{first_seg}")).await;
    assert_eq!(status, 404, "{first_seg} left the window");
    let view = gw.hub.get(&name).unwrap();
    assert_eq!(view.subscriber_counts().get("hls"), Some(&1));
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_stream_is_404_and_denied_play_is_403() {
    let mut cfg = test_config();
    cfg.auth.play = true;
    cfg.auth.loopback_exempt = false;
    cfg.auth.keys = vec!["viewer-key-0123456789".into()];
    cfg.hls.max_sessions_per_source = 2;
    let gw = start(cfg).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0600_0007;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 20);
    wait_live(&gw, &name).await;
    let (status, body) = get_text(http, &format!("/{name}/index.m3u8")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = get_text(http, &format!("/{name}/index.m3u8?key=wrong")).await;
    assert_eq!(status, 403);
    let (status, _) = get_text(http, &format!("/{name}/hls.json")).await;
    assert_eq!(status, 403);
    let (status, pl) = get_text(http, &format!("/{name}/index.m3u8?key=viewer-key-0123456789")).await;
    assert_eq!(status, 200, "{pl}");
    // Media without the session the playlist gave: 403; with it: 200.
    let (status, _, _) = get(http, &format!("/{name}/init.mp4")).await;
    assert_eq!(status, 403);
    let (status, _, _) = get(http, &format!("/{name}/init.mp4?session=00000000000000000000000000000000")).await;
    assert_eq!(status, 403);
    let session = session_of(&pl);
    let (status, _, _) = get(http, &format!("/{name}/init.mp4?session={session}")).await;
    assert_eq!(status, 200);
    // A reload with the same credentials from the same address is the same viewer.
    let (status, again) = get_text(http, &format!("/{name}/index.m3u8?key=viewer-key-0123456789")).await;
    assert_eq!(status, 200);
    assert_eq!(session_of(&again), session);
    let (_, _, m) = get(gw.api_addr, "/metrics").await;
    let m = String::from_utf8_lossy(&m).into_owned();
    assert!(m.contains("gbgate_hls_auth_refused_total 3"), "{m}");
    // Unknown streams and files; an unknown stream leaves no session behind.
    for i in 0..5 {
        let (status, _) = get_text(http, &format!("/rtp/0000DEA{i}/index.m3u8?key=viewer-key-0123456789")).await;
        assert_eq!(status, 404);
    }
    let (status, _) = get_text(http, &format!("/{name}/index.m3u8?key=viewer-key-0123456789&player=2")).await;
    assert_eq!(status, 200, "a second session from this address");
    let (status, body) = get_text(http, &format!("/{name}/index.m3u8?key=viewer-key-0123456789&player=3")).await;
    assert_eq!(status, 503, "max_sessions_per_source = 2: {body}");
    let (status, _) = get_text(http, &format!("/live/{}/index.m3u8?key=viewer-key-0123456789", "x".repeat(300))).await;
    assert_eq!(status, 414);
    let (status, _) = get_text(http, &format!("/{name}/index.m3u8?key={}", "k".repeat(3000))).await;
    assert_eq!(status, 414);
    let (status, _) = get_text(http, &format!("/{name}/seg1.ts?session={session}")).await;
    assert_eq!(status, 404);
    let (status, _) = get_text(http, &format!("/{name}/seg999999.m4s?session={session}")).await;
    assert_eq!(status, 404);
    sender.abort();
}

/// Time from the first playlist request to the first complete segment, and to the first part,
/// from the GOP cache (docs/performance.md quotes this test's output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_first_segment_and_part_from_the_gop_cache() {
    let gw = start(test_config()).await;
    let http = gw.http_addr.unwrap();
    let mut firsts = Vec::new();
    for (i, fixture) in ["h264_g711a_8k.rtp", "h265_aac_16k.rtp"].iter().enumerate() {
        let ssrc = 0x0600_0010 + i as u32;
        let name = name_of(ssrc);
        let sender = send_in_background(&gw, own_fixture(fixture), ssrc, 20);
        wait_live(&gw, &name).await;
        // A second and a half into the stream (GOP 1 s): the cache holds half a GOP of video, and
        // the audio, which the transcoder delivers about 200 ms after its video, has started.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        let (status, pl) = get_text(http, &format!("/{name}/index.m3u8")).await;
        let playlist = t.elapsed();
        assert_eq!(status, 200);
        let seg = pl.lines().find(|l| l.starts_with("seg")).expect("a complete segment at once").to_string();
        let (status, _, body) = get(http, &format!("/{name}/{seg}")).await;
        let segment = t.elapsed();
        assert_eq!(status, 200);
        assert!(body.len() > 1000);
        let (listed, _) = parts(&pl);
        let (m, p) = listed[0];
        let (status, _, _) = get(http, &format!("/{name}/part{m}.{p}.m4s?session={}", session_of(&pl))).await;
        assert_eq!(status, 200);
        println!("{fixture}: playlist {playlist:?}, first segment {segment:?}, first part {:?}", t.elapsed());
        firsts.push(segment);
        sender.abort();
    }
    assert!(firsts.iter().all(|d| *d < Duration::from_millis(400)), "{firsts:?}");
}

/// A GB28181 camera (gbgate's simulator, the synthetic moving pattern) is INVITEd by the first
/// HLS playlist request, ffprobe reads H.264 at 25 fps, and once nobody asks any more the
/// segmenter stops and the camera gets its BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playlist_request_invites_a_gb_channel_and_the_idle_stop_ends_it() {
    use gbgate::sim::camera::{self, SimOptions, SimStats};
    let test = "a_playlist_request_invites_a_gb_channel_and_the_idle_stop_ends_it";
    if !require_tool(test, "ffprobe") {
        return;
    }
    let mut cfg = idle_config(Duration::from_secs(2));
    cfg.sip.password = Some("12345678".into());
    cfg.gb.idle_stop = HumanDuration(Duration::from_secs(2));
    let gw = start(cfg).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut o = SimOptions::new(gw.sip_addr.unwrap(), camera::SYNTHETIC.into());
    o.first_id = "34020000001320000901".into();
    let sim = camera::spawn(o, stop.clone()).await.unwrap();
    wait_devices_with_catalogs(&gw, 1, "the camera registered with its catalog").await;
    let name = format!("gb/{}", camera::channel_id("34020000001320000901", 0));
    assert!(gw.hub.get(&name).is_none());
    let probe = ffprobe_hls(&gw, &name).await;
    let v = by_type(&probe, "video");
    assert_eq!(v["codec_name"], "h264", "{probe}");
    assert_eq!(v["r_frame_rate"], "25/1", "{probe}");
    assert_eq!(SimStats::get(&sim.invites), 1);
    assert!(
        wait_for(Duration::from_secs(10), || SimStats::get(&sim.byes_received) == 1).await,
        "BYE after the HLS idle time and [gb] idle_stop"
    );
    let (_, _, m) = get(gw.api_addr, "/metrics").await;
    let m = String::from_utf8_lossy(&m).into_owned();
    assert!(m.contains("\ngbgate_hls_segmenters 0\n") && m.contains("\ngbgate_hls_bytes 0\n"), "{m}");
    stop.cancel();
    gw.stop().await;
}

/// The cc's `on_play` hook decides for HLS viewers, once per session (not per playlist reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_on_play_hook_is_asked_once_per_session() {
    use std::sync::{Arc, Mutex};
    let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = asked.clone();
    let cc = axum::Router::new().route(
        "/on_play",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let deny = v["params"].as_str().is_some_and(|p| p.contains("deny"));
                seen.lock().unwrap().push(v);
                let answer =
                    if deny { r#"{"allow": false, "reason": "not on the list"}"# } else { r#"{"allow": true}"# };
                ([("content-type", "application/json")], answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cc_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, cc).await.unwrap() });
    let mut cfg = test_config();
    cfg.callbacks.on_play = Some(format!("http://{cc_addr}/on_play"));
    let gw = start(cfg).await;
    let http = gw.http_addr.unwrap();
    let ssrc = 0x0600_0020;
    let name = name_of(ssrc);
    let sender = send_in_background(&gw, own_fixture("h264_g711a_8k.rtp"), ssrc, 20);
    wait_live(&gw, &name).await;
    let (status, body) = get_text(http, &format!("/{name}/index.m3u8?who=deny")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not on the list"), "{body}");
    let (status, pl) = get_text(http, &format!("/{name}/index.m3u8?who=alice")).await;
    assert_eq!(status, 200, "{pl}");
    let session = session_of(&pl);
    for _ in 0..3 {
        let (status, again) = get_text(http, &format!("/{name}/index.m3u8?who=alice")).await;
        assert_eq!(status, 200);
        assert_eq!(session_of(&again), session);
        let (status, _) = get_text(http, &format!("/{name}/index.m3u8?session={session}")).await;
        assert_eq!(status, 200);
        let (status, _, _) = get(http, &format!("/{name}/init.mp4?session={session}")).await;
        assert_eq!(status, 200);
    }
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "one question per session: {asked:?}");
    assert_eq!(asked[1]["protocol"], "hls");
    assert_eq!(asked[1]["stream"], name.as_str());
    assert_eq!(asked[1]["params"], "who=alice");
    sender.abort();
}

/// A real Hikvision capture (1080p, 15 fps, from the shared fixtures) plays over HLS with its
/// size and frame rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_hikvision_1080p15_stream_reads_over_hls() {
    let test = "a_real_hikvision_1080p15_stream_reads_over_hls";
    let Some(shared) = shared_or_skip(test) else { return };
    if !require_tool(test, "ffprobe") {
        return;
    }
    let gw = start(test_config()).await;
    let ssrc = 0x0600_0030;
    let name = name_of(ssrc);
    let fixture = shared.join("real/avstackdocs/hik_1080p15_h264_02c27467.gbsend.rtp");
    let sender = send_in_background(&gw, fixture, ssrc, 5);
    wait_live(&gw, &name).await;
    let probe = ffprobe_hls(&gw, &name).await;
    let v = by_type(&probe, "video");
    assert_eq!(v["codec_name"], "h264", "{probe}");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(1920), Some(1080)), "{probe}");
    assert_eq!(v["r_frame_rate"], "15/1", "{probe}");
    sender.abort();
}
