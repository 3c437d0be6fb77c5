//! RTSP pull client end to end against RTSP servers we did not write (VLC, GStreamer's
//! gst-rtsp-server) and against gbgate itself, on 127.0.0.1.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use gbgate::client::pull::{PullError, PullOptions, PullTransport};
use gbgate::client::rtsp_pull::{self, RtspPull};
use gbgate::frame::{Codec, Frame};
use gbgate::hub::{Source, Takeover, Transport};
use gbgate::server::publish::Publisher;
use gbgate::sim::send::{send_file, SendOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn opts(transport: PullTransport) -> PullOptions {
    PullOptions { transport, timeout: Duration::from_secs(5) }
}

/// Connects, retrying while the server is still starting (connection refused), within `limit`.
async fn connect_retrying(url: &str, o: &PullOptions, limit: Duration) -> Result<RtspPull, PullError> {
    let start = Instant::now();
    loop {
        match rtsp_pull::connect(url, o).await {
            Err(PullError::Refused(m)) if m.contains("connect") && start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// What a pull delivered in `span` (or until `done` holds).
#[derive(Default, Debug)]
struct Seen {
    video: u64,
    video_keyframes: u64,
    audio: u64,
    codecs: Vec<Codec>,
}

async fn collect(pull: &mut RtspPull, span: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let end = Instant::now() + span;
    while Instant::now() < end && !done(&seen) {
        let f: Frame = match tokio::time::timeout_at(end.into(), pull.next_frame()).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("pull ended: {e} after {seen:?}")),
            Err(_) => break,
        };
        if !seen.codecs.contains(&f.codec) {
            seen.codecs.push(f.codec);
        }
        match f.kind() {
            gbgate::frame::MediaKind::Video => {
                seen.video += 1;
                seen.video_keyframes += f.keyframe as u64;
            }
            gbgate::frame::MediaKind::Audio => seen.audio += 1,
        }
    }
    seen
}

/// A test H.264 (no B-frames) + AAC mp4 in a directory user `nobody` can read (VLC refuses root).
async fn vlc_input() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.mp4");
    let (ok, _, err) = run_program(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-bf",
            "0",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            file.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(ok, "ffmpeg: {err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, file)
}

/// Feeds the fixture `file` into `gw` as a camera sending RTP over TCP with `ssrc` (20 loops),
/// and waits for its stream; returns the feeding task and the stream's name.
async fn feed(
    gw: &gbgate::server::Gateway,
    file: &str,
    ssrc: u32,
    linger: Duration,
) -> (tokio::task::JoinHandle<()>, String) {
    let send = SendOptions {
        to: gw.rtp_addr,
        tcp: true,
        count: 1,
        ssrc_base: Some(ssrc),
        loops: 20,
        duration: None,
        flood: false,
        linger,
    };
    let path = own_fixture(file);
    let feeder = tokio::spawn(async move {
        let _ = send_file(&path, &send).await;
    });
    let name = format!("rtp/{ssrc:08X}");
    assert!(wait_for(Duration::from_secs(5), || gw.hub.get(&name).is_some()).await, "{name} did not appear");
    (feeder, name)
}

/// VLC's RTSP server (`#rtp{sdp=rtsp://...}`) serving `file` on a port the kernel just had free,
/// run as `nobody` (VLC refuses root). VLC cannot bind port 0 and say which it got: when another
/// process took the port first (VLC never listens, or exits), it is tried again on another one.
async fn spawn_vlc(file: &std::path::Path) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut vlc = Command::new("runuser")
            .args(["-u", "nobody", "--", "cvlc", "-I", "dummy", file.to_str().unwrap(), "--sout"])
            .arg(format!("#rtp{{sdp=rtsp://127.0.0.1:{port}/s}}"))
            .args(["--sout-keep", "--loop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cvlc");
        if wait_listening(port, Duration::from_secs(15)).await && vlc.try_wait().unwrap().is_none() {
            return (vlc, port);
        }
        let _ = vlc.kill().await;
    }
    panic!("VLC could not listen on any of 5 ports");
}

/// VLC's RTSP server answers 461 to interleaved TCP: Auto falls back to UDP and gets H.264 with a
/// keyframe and AAC, and sends receiver reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlc_refuses_tcp_so_auto_pulls_over_udp() {
    let t = "vlc_refuses_tcp_so_auto_pulls_over_udp";
    if !require_tool(t, "ffmpeg") || !require_tool(t, "cvlc") || !require_tool(t, "runuser") {
        return;
    }
    let (_dir, file) = vlc_input().await;
    let (_vlc, port) = spawn_vlc(&file).await;
    let url = format!("rtsp://127.0.0.1:{port}/s");
    let mut pull = connect_retrying(&url, &opts(PullTransport::Auto), Duration::from_secs(15)).await.expect("pull VLC");
    let s = pull.stats();
    assert!(s.fell_back && s.transport == "udp", "expected the 461 fallback to UDP: {s:?}");
    let seen = collect(&mut pull, Duration::from_secs(15), |s| s.video_keyframes >= 1 && s.audio >= 20).await;
    assert!(seen.codecs.contains(&Codec::H264) && seen.video_keyframes >= 1, "{seen:?}");
    assert!(seen.codecs.contains(&Codec::Aac) && seen.audio >= 20, "{seen:?}");
    // The first report goes out half an interval (2.5 s) after the first packet.
    let _ = collect(&mut pull, Duration::from_secs(4), |_| false).await;
    let s = pull.stats();
    println!("VLC pull: {s:?}");
    assert!(s.rr_sent >= 2 && s.packets > 100, "{s:?}");
    // Strict TCP is refused outright, naming the cause.
    match rtsp_pull::connect(&url, &opts(PullTransport::Tcp)).await {
        Err(PullError::Refused(m)) => assert!(m.contains("461"), "{m}"),
        other => panic!("strict TCP against VLC: {:?}", other.map(|p| p.stats())),
    }
    pull.close().await;
}

/// gst-rtsp-server (tests/rtsp_pull_gst_server.py): Digest auth, H.264 + AAC.
struct Gst {
    _child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Gst {
    async fn start(protocols: &str, session_timeout: u32) -> Gst {
        Gst::start_with(protocols, session_timeout, "digest").await
    }

    async fn start_with(protocols: &str, session_timeout: u32, auth: &str) -> Gst {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rtsp_pull_gst_server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["user", "s3cret", protocols, &session_timeout.to_string(), auth])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(15), out.next_line())
            .await
            .expect("GStreamer RTSP server starts")
            .unwrap()
            .expect("port line");
        let port = first.strip_prefix("port ").expect("port line").parse().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                l.lock().unwrap().push(line);
            }
        });
        Gst { _child: child, port, lines }
    }

    fn url(&self, creds: &str) -> String {
        format!("rtsp://{creds}@127.0.0.1:{}/test", self.port)
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

fn gst_available(t: &str) -> bool {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(t, "/usr/bin/python3 with gi and GstRtspServer (gir1.2-gst-rtsp-server-1.0)");
    }
    ok
}

async fn pull_gst(gst: &Gst, transport: PullTransport, want: &str) -> RtspPull {
    let mut pull = rtsp_pull::connect(&gst.url("user:s3cret"), &opts(transport)).await.expect("pull gst-rtsp-server");
    assert_eq!(pull.stats().transport, want, "{:?}", pull.stats());
    let seen = collect(&mut pull, Duration::from_secs(15), |s| s.video_keyframes >= 1 && s.audio >= 10).await;
    assert!(seen.codecs.contains(&Codec::H264) && seen.video_keyframes >= 1, "{transport:?}: {seen:?}");
    assert!(seen.codecs.contains(&Codec::Aac) && seen.audio >= 10, "{transport:?}: {seen:?}");
    pull
}

/// Digest over TCP and UDP, receiver reports counted by the server, keep-alive requests inside a
/// short session timeout, TEARDOWN; wrong and missing credentials are authentication failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_server_with_digest_over_tcp_and_udp() {
    let t = "gstreamer_server_with_digest_over_tcp_and_udp";
    if !gst_available(t) {
        return;
    }
    let gst = Gst::start("any", 4).await;
    for (transport, want) in [(PullTransport::Tcp, "tcp"), (PullTransport::Udp, "udp")] {
        let (rr_before, ka_before) = (gst.count("rtcp 201"), gst.count("request GET_PARAMETER"));
        let mut pull = pull_gst(&gst, transport, want).await;
        // Past the second report (2.5 s, then every 5 s) and keep-alives (every 2 s for a 4 s timeout).
        let rb_before = gst.count("rb ");
        let _ = collect(&mut pull, Duration::from_secs(8), |_| false).await;
        let s = pull.stats();
        println!("gst-rtsp-server pull over {want}: {s:?}");
        assert!(s.rr_sent >= 1 && s.keepalives >= 2 && !s.fell_back, "{want}: {s:?}");
        let ok = wait_for(Duration::from_secs(3), || gst.count("rtcp 201") > rr_before).await;
        assert!(ok, "{want}: the server received no receiver report: {:?}", gst.lines.lock().unwrap());
        // The report blocks as GStreamer's RTCP parser reads them (RFC 3550 6.4.1): the server's
        // SSRC, no loss on loopback, a running extended sequence number, and once an SR was
        // received, its LSR with a DLSR under the sender's longest report interval (units of
        // 1/65536 s): RFC 3550 6.3.1 randomises the 5 s minimum by [0.5, 1.5] / (e - 3/2), so an
        // SR may come up to 6.16 s after the last (a CI run saw a DLSR of 6.12 s).
        let blocks: Vec<Vec<i64>> = gst.lines.lock().unwrap()[..]
            .iter()
            .filter_map(|l| l.strip_prefix("rb "))
            .skip(rb_before)
            .map(|l| l.split(' ').map(|v| v.parse().unwrap_or_else(|_| panic!("{want}: rb {l}"))).collect())
            .collect();
        println!("{want}: report blocks {blocks:?}");
        assert!(!blocks.is_empty(), "{want}: no report block");
        for b in &blocks {
            let [ssrc, fraction, lost, ext_seq, _jitter, lsr, dlsr] = b[..] else { panic!("{b:?}") };
            assert!(ssrc != 0 && fraction == 0 && lost == 0 && ext_seq > 0, "{want}: {b:?}");
            assert!(lsr == 0 && dlsr == 0 || dlsr < 7 * 65536, "{want}: {b:?}");
        }
        assert!(blocks.iter().any(|b| b[5] != 0), "{want}: no block carries an LSR: {blocks:?}");
        // gst-rtsp-server lists GET_PARAMETER in Public: that is the keep-alive it must see.
        assert!(gst.count("request GET_PARAMETER") >= ka_before + 2, "{want}: keep-alives not received");
        let teardowns = gst.count("teardown");
        pull.close().await;
        assert!(wait_for(Duration::from_secs(3), || gst.count("teardown") > teardowns).await, "{want}: no TEARDOWN");
    }
    for creds in ["user:wrong", "nobody:s3cret"] {
        match rtsp_pull::connect(&gst.url(creds), &opts(PullTransport::Auto)).await {
            Err(PullError::Auth(m)) => assert!(m.contains("refused"), "{m}"),
            other => panic!("{creds}: {:?}", other.map(|p| p.stats())),
        }
    }
    let no_creds = format!("rtsp://127.0.0.1:{}/test", gst.port);
    assert!(matches!(rtsp_pull::connect(&no_creds, &opts(PullTransport::Auto)).await, Err(PullError::Auth(_))));
}

/// A server that takes only one lower transport: `udp` (UDP preferred) against a TCP-only server
/// falls back to TCP, `auto` against a UDP-only one to UDP, and `tcp` (strict) against the
/// UDP-only one is refused with the 461 in the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_server_refusing_one_transport() {
    let t = "gstreamer_server_refusing_one_transport";
    if !gst_available(t) {
        return;
    }
    let tcp_only = Gst::start("tcp", 60).await;
    let pull = pull_gst(&tcp_only, PullTransport::Udp, "tcp").await;
    assert!(pull.stats().fell_back);
    drop(pull);
    let udp_only = Gst::start("udp", 60).await;
    let pull = pull_gst(&udp_only, PullTransport::Auto, "udp").await;
    assert!(pull.stats().fell_back);
    match rtsp_pull::connect(&udp_only.url("user:s3cret"), &opts(PullTransport::Tcp)).await {
        Err(PullError::Refused(m)) => assert!(m.contains("461"), "{m}"),
        other => panic!("{:?}", other.map(|p| p.stats())),
    }
}

/// gbgate pulls from gbgate: a fixture fed into the gateway, pulled over TCP and UDP, and the pulled
/// frames published as a new hub stream that ffprobe reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gbgate_pulls_gbgate_over_tcp_and_udp() {
    let t = "gbgate_pulls_gbgate_over_tcp_and_udp";
    if !require_tool(t, "ffprobe") {
        return;
    }
    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let (feeder, name) = feed(&gw, "h264_g711a_8k.rtp", 0x0A11_0001u32, Duration::from_millis(500)).await;
    let url = format!("rtsp://{rtsp}/{name}");
    for (transport, want) in [(PullTransport::Tcp, "tcp"), (PullTransport::Udp, "udp")] {
        let mut pull = connect_retrying(&url, &opts(transport), Duration::from_secs(5)).await.expect("pull gbgate");
        assert_eq!(pull.stats().transport, want);
        assert_eq!(pull.peer(), rtsp);
        let seen = collect(&mut pull, Duration::from_secs(15), |s| s.video_keyframes >= 1 && s.audio >= 10).await;
        // gbgate serves the camera's H.264 and its audio as AAC (D11).
        assert!(seen.codecs.contains(&Codec::H264) && seen.video_keyframes >= 1, "{want}: {seen:?}");
        assert!(seen.codecs.contains(&Codec::Aac) && seen.audio >= 10, "{want}: {seen:?}");
        if transport == PullTransport::Udp {
            // Published back into the hub under a new name, read by a real player.
            let stream = gw
                .hub
                .create(
                    "pulled/cam",
                    Source { transport: Transport::Rtsp, peer: pull.peer(), ssrc: None },
                    Takeover::Refuse,
                )
                .expect("create pulled/cam");
            let mut publisher = Publisher::new(stream, &gw.rtp);
            let probe_url = format!("rtsp://{rtsp}/pulled/cam");
            let probe = tokio::spawn(async move {
                run_program(
                    "ffprobe",
                    &[
                        "-v",
                        "error",
                        "-rtsp_transport",
                        "tcp",
                        "-show_entries",
                        "stream=codec_name",
                        "-of",
                        "csv=p=0",
                        &probe_url,
                    ],
                    Duration::from_secs(25),
                )
                .await
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !probe.is_finished() && tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(200), pull.next_frame()).await {
                    Ok(Ok(f)) => publisher.frame(f),
                    Ok(Err(e)) => panic!("pull ended while publishing: {e}"),
                    Err(_) => {}
                }
            }
            let (ok, out, err) = probe.await.unwrap();
            assert!(ok, "ffprobe of the pulled stream: {err}");
            assert!(out.contains("h264") && out.contains("aac"), "{out}");
            publisher.finish(&gw.hub);
        }
        pull.close().await;
    }
    feeder.abort();
}

/// A hostile or broken server (a raw socket, one behaviour per connection): every failure is a
/// named cause within the deadline, never a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servers_get_named_causes_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn serve(behaviour: &'static str) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            match behaviour {
                "silent" => tokio::time::sleep(Duration::from_secs(30)).await,
                "404" => {
                    // OPTIONS refused is tolerated; DESCRIBE refused is the answer.
                    for cseq in 1.. {
                        let a = format!("RTSP/1.0 404 Stream Not Found\r\nCSeq: {cseq}\r\n\r\n");
                        if s.write_all(a.as_bytes()).await.is_err() || s.read(&mut buf).await.unwrap_or(0) == 0 {
                            break;
                        }
                    }
                }
                "garbage" => {
                    let _ = s.write_all(b"\x00\x01\x02 not rtsp at all\r\n\r\n").await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                "huge head" => {
                    let _ = s.write_all(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nX: ").await;
                    let _ = s.write_all(&vec![b'a'; 64 * 1024]).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                "trickle" => {
                    // Interleaved frames forever, never an answer.
                    for _ in 0..300 {
                        if s.write_all(&[b'$', 0, 0, 4, 0x80, 0x60, 0, 1]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                "close" => {}
                _ => unreachable!(),
            }
        });
        addr
    }
    let o = PullOptions { transport: PullTransport::Auto, timeout: Duration::from_secs(1) };
    for (behaviour, want) in [
        ("silent", "no answer"),
        ("404", "refused"),
        ("garbage", "protocol error"),
        ("huge head", "protocol error"),
        ("trickle", "no answer"),
        ("close", "source ended"),
    ] {
        let addr = serve(behaviour).await;
        let t0 = Instant::now();
        let r = rtsp_pull::connect(&format!("rtsp://{addr}/s"), &o).await;
        let e = r.err().unwrap_or_else(|| panic!("{behaviour}: connected"));
        assert!(e.to_string().starts_with(want), "{behaviour}: {e}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{behaviour}: took {:?}", t0.elapsed());
    }
    // Nobody listening (the port held, bound but not listening, so nothing else takes it).
    let (_refusing, port) = refusing_port();
    let e = rtsp_pull::connect(&format!("rtsp://127.0.0.1:{port}/s"), &o).await.err().unwrap();
    assert!(matches!(e, PullError::Refused(_)), "{e}");
}

/// gbgate's RTSP server ends a session after `rtsp.session_timeout` without a request or RTCP:
/// at 3 s (keep-alive every 1.5 s, receiver reports only every 5 s) the pull lives on keep-alives
/// alone; when the camera stops, the pull ends with `Ended`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_a_short_gbgate_session_and_the_end_is_ended() {
    let mut cfg = test_config();
    cfg.rtsp.session_timeout = gbgate::config::HumanDuration(Duration::from_secs(3));
    let gw = start(cfg).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let (feeder, name) = feed(&gw, "h264_g711a_8k.rtp", 0x0A11_0002u32, Duration::from_millis(100)).await;
    let url = format!("rtsp://{rtsp}/{name}");
    let mut pull =
        connect_retrying(&url, &opts(PullTransport::Tcp), Duration::from_secs(5)).await.expect("pull gbgate");
    let seen = collect(&mut pull, Duration::from_secs(9), |_| false).await;
    let s = pull.stats();
    println!("gbgate pull with a 3 s session: {s:?} {seen:?}");
    assert!(s.keepalives >= 4 && seen.video > 100, "{s:?} {seen:?}");
    feeder.abort();
    let t0 = Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(20), pull.next_frame()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => break e,
            Err(_) => panic!("the pull did not end within 20 s of the camera stopping"),
        }
    };
    println!("ended after {:?}: {end}", t0.elapsed());
    assert!(matches!(end, PullError::Ended(_)), "{end}");
}

/// Loopback never reorders, so a scripted server (461 to TCP, then UDP) sends a G.711 track with
/// every pair of packets swapped: the reorder buffer must hand every frame over, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_packets_out_of_order_come_out_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PACKETS: u16 = 41;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_port = udp.local_addr().unwrap().port();
        let mut client_port = 0u16;
        let mut buf = vec![0u8; 8192];
        let mut pending = String::new();
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            pending.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(end) = pending.find("\r\n\r\n") {
                let req: String = pending.drain(..end + 4).collect();
                let method = req.split(' ').next().unwrap().to_string();
                let cseq = req.lines().find_map(|l| l.strip_prefix("CSeq: ")).unwrap_or("0").to_string();
                let transport = req.lines().find_map(|l| l.strip_prefix("Transport: ")).unwrap_or("").to_string();
                let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=audio 0 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=control:trackID=0\r\n";
                let answer = match method.as_str() {
                    "DESCRIBE" => format!(
                        "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                        sdp.len()
                    ),
                    "SETUP" if transport.contains("TCP") => format!("RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n"),
                    "SETUP" => {
                        let ports = transport.split("client_port=").nth(1).unwrap();
                        client_port = ports.split('-').next().unwrap().parse().unwrap();
                        format!(
                            "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 0123456789\r\nTransport: RTP/AVP;unicast;client_port={ports};server_port={server_port}-{}\r\n\r\n",
                            server_port + 1
                        )
                    }
                    _ => format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 0123456789\r\n\r\n"),
                };
                s.write_all(answer.as_bytes()).await.unwrap();
                if method == "PLAY" {
                    let to = std::net::SocketAddr::from(([127, 0, 0, 1], client_port));
                    for i in 0..PACKETS {
                        // 0, 2, 1, 4, 3, ... 40, 39 (the first packet anchors the sequence).
                        let seq = if i == 0 { 0 } else { ((i - 1) ^ 1) + 1 };
                        let mut pkt = Vec::new();
                        gbgate::proto::rtp::write_packet(
                            &mut pkt,
                            8,
                            false,
                            seq,
                            u32::from(seq) * 160,
                            0x5eed,
                            &[0xd5; 160],
                        );
                        udp.send_to(&pkt, to).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
    });
    let mut pull = rtsp_pull::connect(&format!("rtsp://{addr}/s"), &opts(PullTransport::Auto)).await.expect("connect");
    assert!(pull.stats().fell_back && pull.stats().transport == "udp", "{:?}", pull.stats());
    let mut pts = Vec::new();
    while pts.len() < PACKETS as usize {
        match tokio::time::timeout(Duration::from_secs(3), pull.next_frame()).await {
            Ok(Ok(f)) => pts.push(f.pts),
            other => panic!("after {} frames: {:?}", pts.len(), other.map(|r| r.map(|f| f.pts))),
        }
    }
    assert!(pts.windows(2).all(|w| w[1] - w[0] == 1800), "{pts:?}");
    assert_eq!(pull.stats().lost, 0);
}

/// Basic authentication (gst-rtsp-server offering only Basic): the right password plays (and a
/// dropped pull tears its session down), a wrong one is an authentication failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gstreamer_server_with_basic_auth() {
    let t = "gstreamer_server_with_basic_auth";
    if !gst_available(t) {
        return;
    }
    let gst = Gst::start_with("any", 60, "basic").await;
    // Dropped without close(): TEARDOWN still goes out (from a task).
    drop(pull_gst(&gst, PullTransport::Auto, "tcp").await);
    assert!(wait_for(Duration::from_secs(3), || gst.count("teardown") == 1).await, "no TEARDOWN on drop");
    match rtsp_pull::connect(&gst.url("user:wrong"), &opts(PullTransport::Auto)).await {
        Err(PullError::Auth(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("{:?}", other.map(|p| p.stats())),
    }
}

/// H.265 and AAC from gbgate (the H.265 fixture fed in), over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gbgate_h265_pulled() {
    let gw = start(test_config()).await;
    let rtsp = gw.rtsp_addr.unwrap();
    let (feeder, name) = feed(&gw, "h265_aac_16k.rtp", 0x0A11_0003u32, Duration::from_millis(100)).await;
    let url = format!("rtsp://{rtsp}/{name}");
    let mut pull = connect_retrying(&url, &opts(PullTransport::Tcp), Duration::from_secs(5)).await.expect("pull");
    let seen = collect(&mut pull, Duration::from_secs(15), |s| s.video_keyframes >= 1 && s.audio >= 10).await;
    assert!(seen.codecs.contains(&Codec::H265) && seen.video_keyframes >= 1, "{seen:?}");
    assert!(seen.codecs.contains(&Codec::Aac) && seen.audio >= 10, "{seen:?}");
    feeder.abort();
}

/// ffprobe's view of `url` from gbgate: (video codec, audio codec, audio sample rate, channels).
async fn probe_codecs(url: &str) -> (String, String, String, String) {
    let mut args = vec!["-v", "error"];
    if url.starts_with("rtsp") {
        args.extend(["-rtsp_transport", "tcp"]);
    }
    args.extend(["-show_entries", "stream=codec_name,sample_rate,channels", "-of", "json", url]);
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(40)).await;
    assert!(ok, "ffprobe {url}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let field = |s: &serde_json::Value, k: &str| s[k].as_str().map(String::from).unwrap_or_else(|| s[k].to_string());
    let video = streams.iter().find(|s| s["sample_rate"].is_null()).map(|s| field(s, "codec_name")).unwrap_or_default();
    let audio = streams.iter().find(|s| !s["sample_rate"].is_null());
    let (codec, rate, channels) =
        audio.map(|s| (field(s, "codec_name"), field(s, "sample_rate"), field(s, "channels"))).unwrap_or_default();
    (video, codec, rate, channels)
}

/// The whole relay path with servers we did not write: `[[pull]]` entries naming VLC's RTSP
/// server (which refuses TCP: the pull falls back to UDP) and GStreamer's (Digest credentials in
/// the URL) are pulled on demand when a player asks gbgate for them, and ffprobe reads each back
/// from gbgate (over RTSP and over RTMP) as H.264 with AAC 11025 Hz mono.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_read_streams_pulled_from_vlc_and_gstreamer() {
    let t = "players_read_streams_pulled_from_vlc_and_gstreamer";
    if !require_tool(t, "ffmpeg") || !require_tool(t, "cvlc") || !require_tool(t, "runuser") || !gst_available(t) {
        return;
    }
    let (_dir, file) = vlc_input().await;
    let (_vlc, vlc_port) = spawn_vlc(&file).await;
    let gst = Gst::start("any", 30).await;
    let entries = format!(
        "[[pull]]\nname = \"vlc/cam\"\nurl = \"rtsp://127.0.0.1:{vlc_port}/s\"\non_demand = true\n\
         [[pull]]\nname = \"gst/cam\"\nurl = \"{}\"\ntransport = \"udp\"\non_demand = true\n",
        gst.url("user:s3cret")
    );
    #[derive(serde::Deserialize)]
    struct Pulls {
        pull: Vec<gbgate::config::PullConfig>,
    }
    let pulls: Pulls = toml::from_str(&entries).unwrap();
    let mut cfg = test_config();
    cfg.sip.enabled = false;
    cfg.pull = pulls.pull;
    cfg.validate().expect("valid config");
    let gw = start(cfg.clone()).await;
    gbgate::relay::Relay::start(cfg.pull.clone(), gw.hub.clone(), gw.rtp.clone(), gw.shutdown.clone());
    let rtsp = gw.rtsp_addr.unwrap();
    let rtmp = gw.rtmp_addr.unwrap();
    // VLC may still be starting: the on-demand series (5 x 1 s) covers it.
    for (name, url) in [("vlc/cam", format!("rtsp://{rtsp}/vlc/cam")), ("gst/cam", format!("rtmp://{rtmp}/gst/cam"))] {
        let (video, audio, rate, channels) = probe_codecs(&url).await;
        println!("{name} via {url}: {video} {audio} {rate} Hz x{channels}");
        assert_eq!(video, "h264", "{name}");
        assert_eq!((audio.as_str(), rate.as_str(), channels.as_str()), ("aac", "11025", "1"), "{name}");
        let s = gw.hub.get(name).unwrap_or_else(|| panic!("{name} is not live"));
        assert_eq!(s.source.transport, gbgate::hub::Transport::Rtsp, "{name}");
    }
    let (status, body) = http_get(gw.api_addr, "/api/v1/pulls").await;
    assert_eq!(status, 200);
    let text = body.to_string();
    assert!(!text.contains("s3cret"), "the API shows a pull's password: {text}");
    gw.stop().await;
}
