//! Hostile RTMP peers against the real `gbgate` binary (a subprocess, so that an abort, which no
//! in-process test can survive or catch, shows as the process dying), with a live camera stream
//! and a real ffprobe as the legitimate users.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `gbgate run` subprocess on kernel-chosen loopback ports, its log collected.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    rtp: SocketAddr,
    api: SocketAddr,
    rtmp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts gbgate with `extra` appended to a loopback-only config.
    fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gbgate.toml");
        let mut text = String::new();
        for section in ["rtp", "api", "rtsp", "sip", "http", "webrtc"] {
            text.push_str(&format!("[{section}]\nlisten = \"127.0.0.1:0\"\n"));
        }
        text.push_str("[rtmp]\nlisten = \"127.0.0.1:0\"\n");
        text.push_str(extra);
        std::fs::write(&cfg, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gbgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let start = Instant::now();
        let started = loop {
            if let Some(line) = log.lock().unwrap().lines().find(|l| l.contains("gbgate started")) {
                break line.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "gbgate did not start: {}", log.lock().unwrap());
            assert!(child.try_wait().unwrap().is_none(), "gbgate exited: {}", log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        };
        let addr = |key: &str| -> SocketAddr {
            let at = started.find(&format!(" {key}=")).unwrap_or_else(|| panic!("{key} in {started}")) + key.len() + 2;
            let v = started[at..].split_whitespace().next().unwrap();
            let v = v.trim_start_matches("Some(").trim_end_matches(')');
            v.parse().unwrap_or_else(|e| panic!("{key}={v}: {e}"))
        };
        Daemon { rtp: addr("rtp"), api: addr("api"), rtmp: addr("rtmp"), child, log, _dir: dir }
    }

    /// Still running, and still running a second later (an abort takes a moment to reap).
    fn alive(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends the 8 kHz fixture as a camera over RTP/TCP, looping, in a `gbgate send` subprocess.
    fn camera(&self, ssrc: &str, loops: u32) -> Child {
        Command::new(env!("CARGO_BIN_EXE_gbgate"))
            .args(["send", "--to", &self.rtp.to_string(), "--tcp", "--ssrc", ssrc, "--loop", &loops.to_string()])
            .arg(own_fixture("h264_g711a_8k.rtp"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn wait_stream(&self, name: &str) {
        let api = self.api;
        let start = Instant::now();
        loop {
            let (_, body) = http_get(api, "/api/v1/streams").await;
            if body["streams"].as_array().is_some_and(|l| l.iter().any(|s| s["name"] == name)) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{name} never went live: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client side of the RTMP handshake (the library's); returns the bytes sent after it.
async fn client_handshake(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    gbgate::client::rtmp::handshake(s, Duration::from_secs(10)).await.expect("RTMP handshake")
}

/// One message as chunk bytes, at the default 128-byte chunk size.
fn chunks(type_id: u8, data: Vec<u8>) -> Vec<u8> {
    let payload = MessagePayload {
        timestamp: RtmpTimestamp::new(0),
        type_id,
        message_stream_id: 0,
        data: bytes::Bytes::from(data),
    };
    ChunkSerializer::new().serialize(&payload, false, false).unwrap().bytes
}

/// Waits until the server closes `s` (EOF or reset); false if it is still open after `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// ffprobe of an RTMP URL reading two seconds: the number of video frames it read.
async fn ffprobe_frames(url: &str) -> Result<u64, String> {
    let out = tokio::process::Command::new("ffprobe")
        .args(["-v", "error", "-read_intervals", "%+2", "-count_frames", "-select_streams", "v"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.map_err(|_| "ffprobe timed out".to_string())?;
    let out = out.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse().map_err(|_| format!("ffprobe: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// Hole 1: one AMF0 command nesting a strict array 10,000 deep (48 KiB) overflowed a tokio
/// worker's stack in rml_amf0's recursive decoder and aborted the process, before any
/// authentication. Now the connection is closed, and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_amf0_command_closes_its_connection_and_the_gateway_keeps_serving() {
    let mut gw = Daemon::start("");
    let mut camera = gw.camera("0100000001", 20);
    gw.wait_stream("rtp/05F5E101").await;

    let deep = gbgate::proto::amf0::nested_strict_arrays(10_000);
    assert!(deep.len() >= 48 * 1024);
    for type_id in [20u8, 18] {
        let mut bad = tokio::net::TcpStream::connect(gw.rtmp).await.unwrap();
        client_handshake(&mut bad).await;
        // The server may close while the message is still being written.
        let _ = bad.write_all(&chunks(type_id, deep.clone())).await;
        assert!(closed_within(&mut bad, Duration::from_secs(5)).await, "type {type_id}: connection left open");
        assert!(gw.alive(), "gbgate died on a deep AMF0 message (type {type_id}): {}", gw.log());
    }
    let frames = ffprobe_frames(&format!("rtmp://{}/rtp/05F5E101", gw.rtmp)).await;
    assert!(gw.alive(), "gbgate died: {}", gw.log());
    assert!(frames.as_ref().is_ok_and(|&f| f > 0), "ffprobe after the attack: {frames:?}");
    assert!(gw.log().contains("AMF0 nesting deeper than 32"), "the refusal is logged: {}", gw.log());
    let _ = camera.kill();
    let _ = camera.wait();
}

/// The first `len` bytes of a message announced as `announced` bytes long (a 128-byte chunk
/// stream of video, type 9).
fn partial_message(announced: usize, len: usize) -> Vec<u8> {
    let mut wire = chunks(9, vec![0x17; announced]);
    // The whole message's chunks, cut after `len` payload bytes (12-byte header, then 1-byte
    // headers every 128 bytes).
    let cut = 12 + len + len.saturating_sub(1) / 128;
    wire.truncate(cut);
    wire
}

async fn rtmp_counters(api: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(api, "/api/v1/rtmp").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Hole 16: RTMP held an unfinished message twice per connection, without a bound (30
/// connections x 12 MiB gave +656 MiB). A message longer than `rtmp.max_message_bytes` is refused
/// at its chunk header; unfinished messages of all connections share `rtmp.max_partial_bytes`,
/// and what exceeds it closes that connection only; both are counted, and the memory is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_budget_exceeding_messages_close_only_their_connection() {
    const MIB: usize = 1 << 20;
    let mut gw = Daemon::start(&format!("max_message_bytes = {}\nmax_partial_bytes = {}\n", MIB, 5 * MIB / 2));
    let mut camera = gw.camera("0100000002", 20);
    gw.wait_stream("rtp/05F5E102").await;

    // A 12 MiB message: refused from its header alone.
    let mut big = tokio::net::TcpStream::connect(gw.rtmp).await.unwrap();
    client_handshake(&mut big).await;
    big.write_all(&partial_message(12 * MIB, 100)).await.unwrap();
    assert!(closed_within(&mut big, Duration::from_secs(5)).await, "a 12 MiB message was accepted");
    let c = rtmp_counters(gw.api).await;
    assert_eq!(c["oversized_messages"], 1, "{c}");
    assert!(gw.log().contains("rtmp.max_message_bytes"), "the reason is logged: {}", gw.log());

    // Three connections each hold most of a 1 MiB message: two fit the 2.5 MiB budget, the third
    // does not and is closed; the first two stay open.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.rtmp).await.unwrap();
        client_handshake(&mut s).await;
        s.write_all(&partial_message(MIB, MIB - 1000)).await.unwrap();
        holders.push(s);
    }
    let start = Instant::now();
    while rtmp_counters(gw.api).await["partial_bytes"].as_u64().unwrap() < 2 * MIB as u64 - 2000 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", rtmp_counters(gw.api).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = tokio::net::TcpStream::connect(gw.rtmp).await.unwrap();
    client_handshake(&mut third).await;
    let _ = third.write_all(&partial_message(MIB, MIB - 1000)).await;
    assert!(closed_within(&mut third, Duration::from_secs(5)).await, "the budget was exceeded");
    let c = rtmp_counters(gw.api).await;
    assert_eq!(c["budget_exhausted"], 1, "{c}");
    assert!(c["partial_bytes"].as_u64().unwrap() <= 5 * MIB as u64 / 2, "{c}");
    for s in &mut holders {
        assert!(!closed_within(s, Duration::from_millis(300)).await, "a connection within the budget was closed");
    }

    // Others are unaffected: a player still plays the camera.
    let frames = ffprobe_frames(&format!("rtmp://{}/rtp/05F5E102", gw.rtmp)).await;
    assert!(frames.as_ref().is_ok_and(|&f| f > 0), "ffprobe: {frames:?}");
    // The memory comes back when the holders go.
    drop(holders);
    let start = Instant::now();
    while rtmp_counters(gw.api).await["partial_bytes"] != 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", rtmp_counters(gw.api).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rtmp_counters(gw.api).await["refused_connections"], 2);
    assert!(gw.alive());
    let _ = camera.kill();
    let _ = camera.wait();
}

/// A TCP connection to `to` from `from` (127.0.0.x stands for another host).
async fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    sock.connect(to).await
}

/// Hole 12 (RTMP): a connection that has not published or played within `rtmp.setup_timeout`
/// is closed, whether it sent nothing or stopped after the handshake (never timed out before);
/// one address holds at most `rtmp.max_connections_per_source` (its oldest idle connection makes
/// room); a real player still plays while 200 idle connections are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_by_the_setup_deadline_and_limited_per_address() {
    let mut gw = Daemon::start("setup_timeout = \"2s\"\nmax_connections_per_source = 16\n");
    let mut camera = gw.camera("0100000003", 20);
    gw.wait_stream("rtp/05F5E103").await;

    // 200 idle connections from 200 addresses: half silent, half after a complete handshake.
    let opened = Instant::now();
    let mut idle = Vec::new();
    for i in 0..200u32 {
        let from = std::net::Ipv4Addr::new(127, 0, 1 + (i / 200) as u8, 2 + (i % 200) as u8);
        let mut s = connect_from(from, gw.rtmp).await.unwrap();
        if i % 2 == 1 {
            gbgate::client::rtmp::handshake(&mut s, Duration::from_secs(5)).await.unwrap();
        }
        idle.push(s);
    }
    // One address opening 40: it keeps 16; each newcomer beyond closes its oldest idle one.
    let greedy = std::net::Ipv4Addr::new(127, 0, 2, 2);
    let mut greedy_socks = Vec::new();
    for _ in 0..40 {
        greedy_socks.push(connect_from(greedy, gw.rtmp).await.unwrap());
    }
    // A real player while they are all open.
    let frames = ffprobe_frames(&format!("rtmp://{}/rtp/05F5E103", gw.rtmp)).await;
    assert!(frames.as_ref().is_ok_and(|&f| f > 0), "ffprobe with 200 idle connections open: {frames:?}");

    // All of them closed by the deadline (2 s after they opened; slack for a loaded machine).
    for (i, s) in idle.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        assert!(closed_within(s, left).await, "idle connection {i} still open after {:?}", opened.elapsed());
    }
    for (i, s) in greedy_socks.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        assert!(closed_within(s, left).await, "connection {i} of the greedy address still open");
    }
    let (_, listeners) = http_get(gw.api, "/api/v1/listeners").await;
    assert_eq!(listeners["rtmp"]["evicted"], 24, "{listeners}");
    let start = Instant::now();
    while rtmp_counters(gw.api).await["setup_timeouts"].as_u64().unwrap() < 216 {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", rtmp_counters(gw.api).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.alive());
    let _ = camera.kill();
    let _ = camera.wait();
}

/// Hole 16 as reported: 30 connections each sending most of a 12 MiB message grew the gateway by
/// 656 MiB. With the defaults (8 MiB messages, 128 MiB for all unfinished ones) they are refused
/// at their headers and the gateway's memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_connections_sending_12_mib_messages_do_not_grow_the_gateway() {
    let mut gw = Daemon::start("");
    let pid = gw.child.id();
    let before = rss_kib(pid);
    let message = partial_message(12 << 20, (12 << 20) - 4096);
    let mut socks = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (rtmp, message) = (gw.rtmp, message.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(rtmp).await.unwrap();
            client_handshake(&mut s).await;
            let _ = s.write_all(&message).await;
            s
        }));
    }
    for t in tasks {
        socks.push(t.await.unwrap());
    }
    // Measured while the 30 connections are still within their setup time (5 s), when the
    // unfinished messages would be held.
    let during = rss_kib(pid);
    println!("gbgate RSS {before} KiB before, {during} KiB with 30 x 12 MiB sent");
    assert!(during < before + 64 * 1024, "RSS grew from {before} to {during} KiB");
    for s in &mut socks {
        assert!(closed_within(s, Duration::from_secs(2)).await, "a 12 MiB message's connection stayed open");
    }
    assert_eq!(rtmp_counters(gw.api).await["oversized_messages"], 30);
    assert!(gw.alive());
}
