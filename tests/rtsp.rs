//! RTSP egress end to end: a fixture sent over RTP into gbgate, then real players (ffprobe,
//! GStreamer, raw sockets) reading it back over RTSP on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::server::Gateway;
use gbgate::sim::send::{send_file, SendOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    gw: Gateway,
    rtsp: SocketAddr,
}

async fn start_rtsp() -> Setup {
    start_rtsp_with(test_config()).await
}

async fn start_rtsp_with(cfg: gbgate::config::Config) -> Setup {
    let gw = start(cfg).await;
    let rtsp = gw.rtsp_addr.expect("RTSP is enabled by default");
    Setup { gw, rtsp }
}

async fn run(cmd: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    run_program(cmd, args, limit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_sees_codecs_resolution_and_rate_over_tcp_and_udp() {
    let s = start_rtsp().await;
    let cases = [
        // Audio leaves as AAC-LC 11025 Hz mono by default ([audio] output = "aac").
        ("h264_g711a_8k", 0x0BEB_C201u32, "h264", 352, 288, "aac", "11025"),
        ("h265_aac_16k", 0x0BEB_C202, "hevc", 352, 288, "aac", "11025"),
        ("h264_g711u_16k", 0x0BEB_C203, "h264", 1280, 720, "aac", "11025"),
    ];
    for (fixture, ssrc, vcodec, w, h, acodec, rate) in cases {
        let name = feed(&s.gw, fixture, ssrc, 4).await;
        let url = format!("rtsp://{}/{name}", s.rtsp);
        for transport in ["tcp", "udp"] {
            let streams = ffprobe_streams(&url, transport).await;
            let v = streams.iter().find(|x| x["width"].is_number()).unwrap_or_else(|| panic!("{streams:?}"));
            let a = streams.iter().find(|x| x["sample_rate"].is_string()).unwrap_or_else(|| panic!("{streams:?}"));
            assert_eq!(v["codec_name"], vcodec, "{fixture} {transport}");
            assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(w), Some(h)), "{fixture} {transport}");
            assert_eq!(a["codec_name"], acodec, "{fixture} {transport}");
            assert_eq!(a["sample_rate"], rate, "{fixture} {transport}");
            println!("{fixture} over {transport}: {vcodec} {w}x{h} + {acodec} {rate} Hz");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_keeps_g711_with_its_detected_rate() {
    let mut cfg = test_config();
    cfg.audio.output = gbgate::config::AudioOutput::Passthrough;
    let s = start_rtsp_with(cfg).await;
    for (fixture, ssrc, acodec, rate) in
        [("h264_g711a_8k", 0x0BEB_C211u32, "pcm_alaw", "8000"), ("h264_g711u_16k", 0x0BEB_C213, "pcm_mulaw", "16000")]
    {
        let name = feed(&s.gw, fixture, ssrc, 4).await;
        let streams = ffprobe_streams(&format!("rtsp://{}/{name}", s.rtsp), "tcp").await;
        let a = streams.iter().find(|x| x["sample_rate"].is_string()).unwrap_or_else(|| panic!("{streams:?}"));
        assert_eq!((a["codec_name"].as_str(), a["sample_rate"].as_str()), (Some(acodec), Some(rate)), "{fixture}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sent_video_frame_is_decoded_in_order_over_tcp_and_udp() {
    every_frame_in_order(start_rtsp().await, &["tcp", "udp"], 0x0BEB_C301).await;
}

/// With per-frame writes (`merge_write = "0s"`, lowest latency), nothing is lost or reordered
/// either; the default merges 200 ms of media per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_frame_writes_deliver_every_frame_in_order() {
    let mut cfg = test_config();
    cfg.rtsp.merge_write = gbgate::config::HumanDuration(Duration::ZERO);
    let gw = start(cfg).await;
    let rtsp = gw.rtsp_addr.unwrap();
    every_frame_in_order(Setup { gw, rtsp }, &["tcp"], 0x0BEB_C311).await;
}

async fn every_frame_in_order(s: Setup, transports: &[&str], ssrc: u32) {
    for (i, &transport) in transports.iter().enumerate() {
        let name = feed(&s.gw, "h264_g711a_8k", ssrc + i as u32, 3).await;
        // The player joins at once: the GOP cache still starts at the first keyframe, so the
        // whole stream (3 loops x 50 frames) should arrive.
        let frames = ffprobe_frames(&format!("rtsp://{}/{name}", s.rtsp), transport).await;
        let keys = frames.iter().filter(|f| f.1).count();
        println!("{transport}: {} video frames decoded, {keys} keyframes", frames.len());
        assert!(frames[0].1, "first decoded frame is a keyframe");
        // ffmpeg may report the very first frame without a pts (before RTCP sync).
        let bad: Vec<_> = frames[1..]
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[1].0 <= w[0].0)
            .map(|(i, w)| (i, w[0].0, w[1].0))
            .collect();
        assert!(bad.is_empty(), "pts strictly increasing: {bad:?} of {:?}", &frames[..5]);
        // Frames start at a GOP boundary: whole GOPs of 25 frames.
        assert_eq!(frames.len() % 25, 0, "{transport}: {} frames", frames.len());
        assert!(frames.len() >= 125, "{transport}: {} frames", frames.len());
        let step: Vec<i64> = frames[1..].windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(step.iter().all(|d| *d == step[0]), "constant frame step: {step:?}");
    }
}

/// Runs `gst-launch-1.0 ARGS` (30 s at most) and succeeds when the pipeline reached EOS without
/// an error, returning its output.
///
/// One error after EOS is GStreamer's, not the server's, and is tolerated. When gst-launch
/// goes to NULL right after EOS, rtspsrc (1.22) queues PAUSE, and then its CLOSE command
/// flushes the connection while that PAUSE is being written. It then reports "Could not send
/// message. (Received end-of-file)" from `gst_rtspsrc_pause`. Its debug log shows the flush
/// 34 us before the PAUSE was sent. The server never receives that PAUSE, and it answers the
/// TEARDOWN that follows. Any other error, or no EOS, fails.
async fn gst_launch(args: &[&str]) -> Result<String, String> {
    let (ok, out, err) = run("gst-launch-1.0", args, Duration::from_secs(30)).await;
    let eos = out.contains("Got EOS from element \"pipeline0\"");
    if ok && eos {
        return Ok(out);
    }
    let errors: Vec<&str> = err.split("ERROR: ").skip(1).collect();
    let teardown_race_only = !errors.is_empty()
        && errors.iter().all(|e| {
            e.contains("Received end-of-file")
                && (e.contains("gst_rtspsrc_pause ()") || e.contains("gst_rtspsrc_try_send ()"))
        })
        && errors.iter().any(|e| e.contains("gst_rtspsrc_pause ()"));
    if eos && teardown_race_only {
        println!("note: gst's own PAUSE/CLOSE race at teardown, after EOS (tolerated)");
        return Ok(out);
    }
    Err(format!("ok={ok} eos={eos}\n{out}\n{err}"))
}

/// The first GStreamer run on a fresh machine scans every plugin into its registry, which can
/// take many seconds on a loaded CI box; do it before any stream starts its clock.
async fn warm_gstreamer() {
    let (ok, _, err) = run("gst-inspect-1.0", &["rtspsrc"], Duration::from_secs(120)).await;
    assert!(ok, "gst-inspect-1.0 rtspsrc: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_plays_over_tcp_and_udp() {
    warm_gstreamer().await;
    let s = start_rtsp().await;
    for (i, fixture) in ["h264_g711a_8k", "h265_aac_16k"].into_iter().enumerate() {
        // 120 s of stream, far longer than the four gst runs need; the sender stops with the test.
        let name = feed(&s.gw, fixture, 0x0BEB_C401 + i as u32, 60).await;
        let url = format!("location=rtsp://{}/{name}", s.rtsp);
        for proto in ["protocols=tcp", "protocols=udp"] {
            let t = Instant::now();
            let run = gst_launch(&["rtspsrc", &url, proto, "!", "decodebin", "!", "fakesink", "num-buffers=25"]).await;
            if let Err(e) = run {
                panic!("gst {fixture} {proto} after {:?}: {e}", t.elapsed());
            }
            println!("gstreamer {fixture} {proto}: 25 decoded buffers in {:?}", t.elapsed());
        }
    }
}

/// When the camera stops, players get an RTCP BYE and end cleanly (EOS, exit 0) soon after,
/// instead of an error on a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_see_a_clean_end_when_the_camera_stops() {
    warm_gstreamer().await;
    let s = start_rtsp().await;
    for (i, proto) in ["tcp", "udp"].into_iter().enumerate() {
        // 2 loops = 4 s of stream over RTP/TCP: the stream ends when the sender closes.
        let name = feed(&s.gw, "h264_g711a_8k", 0x0BEB_C501 + i as u32, 2).await;
        let url = format!("location=rtsp://{}/{name}", s.rtsp);
        let t = Instant::now();
        let protocols = format!("protocols={proto}");
        let run = gst_launch(&["rtspsrc", &url, &protocols, "!", "decodebin", "!", "fakesink"]).await;
        if let Err(e) = run {
            panic!("gst {proto}: {e}");
        }
        // The stream lasts 4 s. Without BYE, gst over UDP waits forever and over TCP ends after 7 s.
        assert!(t.elapsed() < Duration::from_millis(6500), "gst {proto} took {:?} to end", t.elapsed());
        println!("gstreamer {proto}: EOS {:?} after joining a 4 s stream", t.elapsed());
    }
}

/// Reads one RTSP response (head + body) from a raw socket, leaving interleaved data alone.
async fn read_response(sock: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).to_string();
                pending.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut b)).await.expect("response").unwrap();
        assert!(n > 0, "connection closed");
        pending.extend_from_slice(&b[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

async fn request(sock: &mut TcpStream, pending: &mut Vec<u8>, text: &str) -> (String, String) {
    sock.write_all(text.as_bytes()).await.unwrap();
    read_response(sock, pending).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_socket_session_and_unknown_stream() {
    let s = start_rtsp().await;
    let mut sock = TcpStream::connect(s.rtsp).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = request(
        &mut sock,
        &mut pending,
        &format!("DESCRIBE rtsp://{}/rtp/DEADBEEF RTSP/1.0\r\nCSeq: 1\r\n\r\n", s.rtsp),
    )
    .await;
    assert!(head.starts_with("RTSP/1.0 404"), "{head}");
    assert_eq!(header(&head, "CSeq"), Some("1"));

    let name = feed(&s.gw, "h264_g711a_8k", 0x0BEB_C501, 3).await;
    let url = format!("rtsp://{}/{name}", s.rtsp);
    let (head, _) = request(&mut sock, &mut pending, &format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 2\r\n\r\n")).await;
    assert!(head.starts_with("RTSP/1.0 200 OK"), "{head}");
    assert!(header(&head, "Public").unwrap().contains("DESCRIBE"));
    let (head, sdp) = request(
        &mut sock,
        &mut pending,
        &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 3\r\nAccept: application/sdp\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    assert!(sdp.contains("a=rtpmap:96 H264/90000") && sdp.contains("sprop-parameter-sets="), "{sdp}");
    // G.711 leaves as AAC-LC 11025 Hz mono.
    assert!(sdp.contains("MPEG4-GENERIC/11025/1") && sdp.contains("a=control:trackID=1"), "{sdp}");
    let (head, _) = request(
        &mut sock,
        &mut pending,
        &format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let session = header(&head, "Session").unwrap().to_string();
    assert!(session.ends_with(";timeout=60"), "{session}");
    let id = session.split(';').next().unwrap().to_string();
    let (head, _) =
        request(&mut sock, &mut pending, &format!("PLAY {url} RTSP/1.0\r\nCSeq: 5\r\nSession: wrong\r\n\r\n")).await;
    assert!(head.starts_with("RTSP/1.0 454"), "{head}");
    let play_sent = Instant::now();
    let (head, _) =
        request(&mut sock, &mut pending, &format!("PLAY {url} RTSP/1.0\r\nCSeq: 6\r\nSession: {id}\r\n\r\n")).await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let info = header(&head, "RTP-Info").unwrap();
    assert!(info.starts_with(&format!("url={url}/trackID=0;seq=")) && info.contains("rtptime="), "{info}");
    assert_eq!(header(&head, "Range"), Some("npt=0.000-"));
    let seq0: u16 = info.split("seq=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();

    // Interleaved frames: only channel 0 (RTP; audio was not set up) and 1 (RTCP).
    let mut first: Option<Vec<u8>> = None;
    let mut rtp_count = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && rtp_count < 60 {
        while pending.len() < 4 {
            let mut b = [0u8; 65536];
            let n = sock.read(&mut b).await.unwrap();
            assert!(n > 0);
            pending.extend_from_slice(&b[..n]);
        }
        assert_eq!(pending[0], b'$', "interleaved frame");
        let len = u16::from_be_bytes([pending[2], pending[3]]) as usize;
        while pending.len() < 4 + len {
            let mut b = [0u8; 65536];
            let n = sock.read(&mut b).await.unwrap();
            pending.extend_from_slice(&b[..n]);
        }
        let ch = pending[1];
        let pkt: Vec<u8> = pending[4..4 + len].to_vec();
        pending.drain(..4 + len);
        assert!(ch == 0 || ch == 1, "channel {ch}");
        if ch == 0 {
            assert_eq!(pkt[1] & 0x7f, 96);
            if first.is_none() {
                println!("time from PLAY to the first keyframe RTP packet: {:?}", play_sent.elapsed());
                assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]), seq0);
                first = Some(pkt);
            }
            rtp_count += 1;
        } else {
            assert_eq!(pkt[1], 200, "RTCP SR");
        }
    }
    let first = first.expect("RTP arrived");
    let nal = first[12];
    let key = match nal & 0x1f {
        5 | 7 | 8 => true,
        24 => matches!(first[15] & 0x1f, 5 | 7),
        28 => matches!(first[13] & 0x1f, 5) && first[13] & 0x80 != 0,
        _ => false,
    };
    assert!(key, "first packet is part of a keyframe: {:02x?}", &first[12..16]);

    let (head, _) =
        request(&mut sock, &mut pending, &format!("GET_PARAMETER {url} RTSP/1.0\r\nCSeq: 7\r\nSession: {id}\r\n\r\n"))
            .await
            .skip_data();
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let (head, _) =
        request(&mut sock, &mut pending, &format!("TEARDOWN {url} RTSP/1.0\r\nCSeq: 8\r\nSession: {id}\r\n\r\n"))
            .await
            .skip_data();
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");

    // Garbage gets a 400 and a closed connection, not a crash.
    let mut bad = TcpStream::connect(s.rtsp).await.unwrap();
    bad.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut text)).await.unwrap().unwrap();
    assert!(text.starts_with(b"RTSP/1.0 400"), "{}", String::from_utf8_lossy(&text));
}

trait SkipData {
    fn skip_data(self) -> (String, String);
}
impl SkipData for (String, String) {
    /// A response read while RTP was flowing may carry interleaved bytes before it: keep the
    /// text from the status line on.
    fn skip_data(self) -> (String, String) {
        let head = match self.0.find("RTSP/1.0 ") {
            Some(i) => self.0[i..].to_string(),
            None => self.0,
        };
        (head, self.1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_does_not_delay_others() {
    let s = start_rtsp().await;
    // 10 loops = 20 s of stream, so a disconnect before then is the write deadline at work.
    let name = feed(&s.gw, "h264_g711u_16k", 0x0BEB_C601, 10).await;
    let url = format!("rtsp://{}/{name}", s.rtsp);
    // The stalled player: a small receive buffer, PLAY, then never read again.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.rtsp.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut stalled = TcpStream::from_std(sock.into()).unwrap();
    let mut pending = Vec::new();
    let (head, _) = request(
        &mut stalled,
        &mut pending,
        &format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    let id = header(&head, "Session").unwrap().split(';').next().unwrap().to_string();
    stalled.write_all(format!("PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {id}\r\n\r\n").as_bytes()).await.unwrap();
    let stalled_since = Instant::now();
    // Wait until it is playing (subscribed; from then on it reads nothing).
    let stream = s.gw.hub.get(&name).expect("live");
    let rtsp_players = |st: &gbgate::hub::Stream| st.subscriber_counts().get("rtsp").copied().unwrap_or(0);
    while rtsp_players(&stream) == 0 {
        assert!(stalled_since.elapsed() < Duration::from_secs(10), "the stalled player never played");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile another player gets the stream promptly.
    let t = Instant::now();
    let streams = ffprobe_streams(&url, "tcp").await;
    println!("second player probed in {:?} while the first is stalled", t.elapsed());
    assert!(streams.iter().any(|v| v["width"] == 1280), "{streams:?}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // The stalled player is disconnected once its writes block for WRITE_TIMEOUT, well before
    // the stream ends.
    // Keep not reading until the server dropped the player (stream still live until ~20 s), then
    // drain: a server that dropped us gives the kernel-buffered bytes and EOF at once.
    while rtsp_players(&stream) > 0 {
        assert!(stalled_since.elapsed() < Duration::from_secs(18), "the stalled player was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.gw.hub.get(&name).is_some(), "the stream is still live when the player is dropped");
    let (closed, total) = read_until_closed(&mut stalled, Duration::from_secs(30)).await;
    println!("stalled player disconnected after {:?}, {total} bytes were queued for it", stalled_since.elapsed());
    assert!(closed);
    assert!(stalled_since.elapsed() < Duration::from_secs(18), "disconnected before the stream ended");
    assert!(total < 2 << 20, "bounded: {total} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_times_out_and_connection_limit_answers_503() {
    let mut cfg = test_config();
    cfg.rtsp.session_timeout = gbgate::config::HumanDuration(Duration::from_secs(2));
    cfg.rtsp.max_connections = 1;
    let gw = start(cfg).await;
    let addr = gw.rtsp_addr.unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = request(&mut first, &mut pending, "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");

    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut text)).await.unwrap().unwrap();
    assert!(text.starts_with(b"RTSP/1.0 503"), "{}", String::from_utf8_lossy(&text));

    let t = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), first.read_to_end(&mut rest)).await.unwrap().unwrap();
    println!("idle connection closed after {:?} (timeout 2 s)", t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(1500));
}

/// Opens `count` TCP connections to `to` from 127.0.0.2 (another host) that never send a byte.
async fn idle_sockets(to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        out.push(s.connect(to).await.unwrap());
    }
    out
}

/// How many of `socks` the server closed (read gives EOF or a reset) by `deadline`.
async fn closed_by(socks: Vec<TcpStream>, deadline: tokio::time::Instant) -> usize {
    let waits = socks.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // a 503 before the close
                Err(_) => return false,
            }
        }
    });
    futures_util::future::join_all(waits).await.into_iter().filter(|c| *c).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_host_are_closed_and_real_players_still_play() {
    let mut cfg = test_config();
    // Caps small enough that, without eviction, 300 idle sockets would lock everybody out.
    cfg.rtsp.max_connections = 100;
    cfg.api.max_connections = 100;
    let s = start_rtsp_with(cfg).await;
    let name = feed(&s.gw, "h264_g711a_8k", 0x0BEBC301, 20).await;
    let api = s.gw.api_addr;
    let t = Instant::now();
    let rtsp_idle = idle_sockets(s.rtsp, 300).await;
    let api_idle = idle_sockets(api, 300).await;
    // A real player from another address plays, and the API answers, while the idle sockets are open.
    let streams = ffprobe_streams(&format!("rtsp://{}/{name}", s.rtsp), "tcp").await;
    assert!(streams.iter().any(|v| v["codec_name"] == "h264"), "{streams:?}");
    let (status, body) = http_get(api, "/api/v1/streams").await;
    assert_eq!(status, 200, "{body}");
    // Every idle socket is closed: the request deadline is 5 s.
    let deadline = tokio::time::Instant::from_std(t) + Duration::from_secs(12);
    let (rtsp_closed, api_closed) = tokio::join!(closed_by(rtsp_idle, deadline), closed_by(api_idle, deadline));
    println!("closed after {:?}: rtsp {rtsp_closed}/300, api {api_closed}/300", t.elapsed());
    assert_eq!((rtsp_closed, api_closed), (300, 300));
    // The API counts what the listeners did with them.
    let (_, l) = http_get(api, "/api/v1/listeners").await;
    for name in ["rtsp", "api"] {
        let dropped = ["refused", "evicted", "timed_out"].iter().map(|k| l[name][k].as_u64().unwrap()).sum::<u64>();
        assert!(dropped >= 300, "{name}: {l}");
        assert!(l[name]["evicted"].as_u64().unwrap() > 0 && l[name]["timed_out"].as_u64().unwrap() > 0, "{l}");
    }
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rtsp_request_is_closed_after_the_request_timeout() {
    let mut cfg = test_config();
    cfg.rtsp.request_timeout = gbgate::config::HumanDuration(Duration::from_secs(1));
    let s = start_rtsp_with(cfg).await;
    let mut sock = TcpStream::connect(s.rtsp).await.unwrap();
    let mut pending = Vec::new();
    let (head, _) = request(&mut sock, &mut pending, "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").await;
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    // A session that completed a request may idle (session_timeout, 60 s) ...
    let mut buf = [0u8; 64];
    assert!(tokio::time::timeout(Duration::from_millis(1500), sock.read(&mut buf)).await.is_err());
    // ... but a request that trickles in a byte at a time is cut at the request timeout.
    let t = Instant::now();
    let closed = async {
        for b in b"OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n" {
            if sock.write_all(&[*b]).await.is_err() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    };
    assert!(closed.await, "the slow request was never cut");
    assert!(t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    s.gw.stop().await;
}

/// An RTP dump of `secs` s of 25 fps H.264 and G.711A 8 kHz whose audio clock lies (360-byte
/// packets, PTS step 92 ms): the G.711 rate stays undecided until 1.5 s of arrival time is seen.
fn lying_audio_clock_dump(dir: &std::path::Path, secs: usize, ssrc: u32) -> std::path::PathBuf {
    use gbgate::media::Codec;
    use gbgate::sim::synth::{rtp_dump, split_annexb_aus, Anomaly, SynthInput};
    let video = dir.join("v.h264");
    let lavfi = format!("testsrc2=size=160x120:rate=25:duration={secs}");
    let st = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i", &lavfi])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-threads", "1"])
        .args(["-bsf:v", "h264_metadata=aud=insert", "-f", "h264"])
        .arg(&video)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success());
    let aus = split_annexb_aus(&std::fs::read(&video).unwrap(), Codec::H264);
    let audio = vec![0xD5u8; secs * 8000]; // A-law silence
    let input = SynthInput {
        video_codec: Codec::H264,
        video: &aus[..secs * 25],
        audio_codec: Codec::G711A,
        audio: &audio,
        g711_rate: 8000,
        anomaly: Anomaly::FastAudioClock,
        ssrc,
    };
    let path = dir.join("lying_audio_clock.rtp");
    std::fs::write(&path, rtp_dump(&input)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_in_the_first_300_ms_of_a_g711_stream_lists_the_aac_track_and_ffprobe_gets_audio() {
    let s = start_rtsp().await;
    let dir = tempfile::tempdir().unwrap();
    let ssrc = 0x0BEB_C601;
    let path = lying_audio_clock_dump(dir.path(), 6, ssrc);
    let opts = SendOptions {
        to: s.gw.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(ssrc),
        loops: 1,
        duration: None,
        flood: false,
        linger: Duration::from_millis(300),
    };
    tokio::spawn(async move { send_file(&path, &opts).await.unwrap() });
    let name = format!("rtp/{ssrc:08X}");
    let t = Instant::now();
    while s.gw.hub.get(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "stream {name} did not appear");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let url = format!("rtsp://{}/{name}", s.rtsp);
    // A real player that starts with the stream, while the G.711 rate is still undecided.
    let probe_url = url.clone();
    let probe = tokio::spawn(async move {
        let args = ["-v", "error", "-rtsp_transport", "tcp", "-read_intervals", "%+4", "-select_streams", "a"];
        let args: Vec<&str> =
            args.iter().copied().chain(["-show_entries", "packet=pts", "-of", "json", &probe_url]).collect();
        run_program("ffprobe", &args, Duration::from_secs(30)).await
    });
    let started = s.gw.hub.get(&name).unwrap().started_at;
    let mut sock = TcpStream::connect(s.rtsp).await.unwrap();
    let mut pending = Vec::new();
    let t = Instant::now();
    let (head, sdp) = request(&mut sock, &mut pending, &format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n")).await;
    let (took, age) = (t.elapsed(), started.elapsed().unwrap());
    println!("DESCRIBE answered in {took:?}, {age:?} after the stream started");
    assert!(head.starts_with("RTSP/1.0 200"), "{head}");
    // The AAC output track (AAC-LC 11025 Hz mono: config 1508), without waiting for audio.
    assert!(sdp.contains("m=audio") && sdp.contains("MPEG4-GENERIC/11025/1"), "{sdp}");
    assert!(sdp.to_ascii_lowercase().contains("config=1508"), "{sdp}");
    assert!(age < Duration::from_millis(300), "the DESCRIBE was not early: {age:?}");
    assert!(took < Duration::from_millis(250), "DESCRIBE waited {took:?}");
    let (ok, out, err) = probe.await.unwrap();
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let packets = v["packets"].as_array().map_or(0, Vec::len);
    println!("ffprobe: {packets} audio packets");
    assert!(packets > 10, "the early player got no audio: {out}");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_players_tool_keeps_its_session_alive_past_the_session_timeout() {
    let mut cfg = test_config();
    cfg.rtsp.session_timeout = gbgate::config::HumanDuration(Duration::from_secs(2));
    let s = start_rtsp_with(cfg).await;
    // 4 loops = 8 s of stream: four session timeouts.
    let name = feed(&s.gw, "h264_g711a_8k", 0x0BEB_C701, 4).await;
    let opts = gbgate::sim::players::PlayersOptions {
        url: format!("rtsp://{}/{name}", s.rtsp),
        count: 1,
        duration: Duration::from_secs(6),
        stall: 0,
    };
    let report = gbgate::sim::players::run_players(&opts).await.unwrap();
    let p = &report.players[0];
    println!("player: {} video frames, closed early {}", p.video_frames, p.closed_early);
    assert!(p.error.is_none() && !p.closed_early, "the session timed out under the player: {:?}", p.error);
    assert!(p.video_frames >= 100, "{} frames in 6 s", p.video_frames);
    s.gw.stop().await;
}
