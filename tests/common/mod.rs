//! Shared helpers for the integration tests: fixture lookup, an in-process gateway on loopback
//! ports chosen by the kernel, and a minimal HTTP/1.0 client for the API.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gbgate::config::Config;
use gbgate::server::Gateway;
use serde_json::Value;

/// The project's own fixtures (always present).
pub fn own_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// `../shared/fixtures` (or `$GBGATE_SHARED/fixtures`), when present.
pub fn shared_fixtures() -> Option<PathBuf> {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    if beside.is_dir() {
        return Some(beside);
    }
    let env = std::env::var_os("GBGATE_SHARED").map(|p| PathBuf::from(p).join("fixtures"))?;
    env.is_dir().then_some(env)
}

/// `CI=true` (or `1`): every peer and fixture the tests use must be present.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Something a test needs is missing: with `CI=true` the test fails; elsewhere it says it is
/// skipped (the caller then returns). `.ci/run` and `tools/test.sh` install everything.
pub fn missing(test: &str, what: &str) {
    if strict() {
        panic!("{test}: {what} is missing and CI=true: install it (tools/test.sh does) instead of skipping");
    }
    println!("{test}: skipped: {what} is missing (tools/test.sh installs it)");
}

/// Returns the shared fixtures folder, or reports it missing (fails under `CI=true`).
pub fn shared_or_skip(test: &str) -> Option<PathBuf> {
    let dir = shared_fixtures();
    if dir.is_none() {
        missing(test, "../shared/fixtures (or $GBGATE_SHARED/fixtures)");
    }
    dir
}

/// Whether the program `tool` can be started; reports it missing (fails under `CI=true`).
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        missing(test, tool);
    }
    found
}

/// A config listening on kernel-chosen loopback ports.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.rtp.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.rtsp.listen = "127.0.0.1:0".parse().unwrap();
    cfg.rtmp.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.webrtc.listen = "127.0.0.1:0".parse().unwrap();
    cfg.sip.listen = "127.0.0.1:0".parse().unwrap();
    // Unset, the gateway generates a device password (hole 4); the tests that need one set it.
    cfg.sip.password = Some(String::new());
    // A stop waits for the cameras' answers to its BYEs (D110); tests whose cameras are gone
    // before the stop should not wait the production 10 s.
    cfg.shutdown.timeout = gbgate::config::HumanDuration(Duration::from_secs(2));
    cfg
}

pub async fn start(cfg: Config) -> Gateway {
    // `GBGATE_TEST_LOG=debug` shows the gateway's log in a failing test's output.
    if let Ok(filter) = std::env::var("GBGATE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    Gateway::start(cfg).await.expect("gateway starts")
}

/// GET `path` from the API, returns (status, JSON body). Blocking; call via spawn_blocking.
pub fn http_get_blocking(api: SocketAddr, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(api).expect("connect API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {api}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

pub async fn http_get(api: SocketAddr, path: &str) -> (u16, Value) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get_blocking(api, &path)).await.unwrap()
}

/// The streams the API lists, by name.
pub async fn streams(api: SocketAddr) -> Vec<Value> {
    let (status, body) = http_get(api, "/api/v1/streams").await;
    assert_eq!(status, 200);
    body["streams"].as_array().cloned().unwrap_or_default()
}

/// Polls the API until `done` holds for the stream list or `timeout` passes; returns the last list.
pub async fn wait_streams(api: SocketAddr, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let list = streams(api).await;
        if done(&list) || start.elapsed() > timeout {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a `[u16 BE len][RTP]` dump.
pub fn read_rtp_dump(path: &std::path::Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 <= data.len() {
        let n = u16::from_be_bytes([data[i], data[i + 1]]) as usize;
        if i + 2 + n > data.len() {
            break;
        }
        out.push(data[i + 2..i + 2 + n].to_vec());
        i += 2 + n;
    }
    out
}

/// Expected values of one of the project's fixtures (fixtures/expected.json).
pub fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(own_fixture("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let list = v.as_array().cloned().or_else(|| v["fixtures"].as_array().cloned()).expect("expected.json list");
    list.into_iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("{name} not in expected.json"))
}

/// Runs a program to completion with a time limit (killed when it is exceeded or the test ends);
/// returns (exit status ok, stdout bytes, stderr).
pub async fn run_program_bytes<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    cmd: &str,
    args: &[S],
    limit: Duration,
) -> (bool, Vec<u8>, String) {
    let child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd} {args:?} did not finish in {limit:?}"))
        .unwrap();
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into())
}

/// As [`run_program_bytes`], with stdout as text.
pub async fn run_program<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    cmd: &str,
    args: &[S],
    limit: Duration,
) -> (bool, String, String) {
    let (ok, out, err) = run_program_bytes(cmd, args, limit).await;
    (ok, String::from_utf8_lossy(&out).into(), err)
}

/// Sends `request` (a whole raw HTTP/1.0 request) to `addr` and returns (status, head, body).
/// Blocking; the server closes after answering an HTTP/1.0 request.
pub fn http_raw_blocking(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

pub async fn http_raw(addr: SocketAddr, request: String) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || http_raw_blocking(addr, &request)).await.unwrap()
}

/// A raw HTTP/1.0 request with the given extra header lines (each ending in `\r\n`) and body.
pub fn http_request(method: &str, path: &str, host: &str, headers: &str, body: &str) -> String {
    format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// Polls `GET path` until `done` holds for its body or `timeout` passes; returns the last body.
pub async fn wait_json(api: SocketAddr, path: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, body) = http_get(api, path).await;
        if done(&body) || start.elapsed() > timeout {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records which stream names players have asked for (RTSP DESCRIBE, RTMP play: both ask the
/// hub's on-demand handlers first), without starting anything: a test can wait until its
/// players have asked before the stream exists, instead of sleeping.
#[derive(Default)]
pub struct AskedFor(std::sync::Mutex<std::collections::HashSet<String>>);

impl gbgate::hub::StreamDemand for AskedFor {
    fn handles(&self, name: &str) -> bool {
        self.0.lock().unwrap().insert(name.to_string());
        false
    }
    fn demand(&self, _: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        Box::pin(async { Err("not handled".to_string()) })
    }
}

impl AskedFor {
    pub fn watch(hub: &gbgate::hub::Hub) -> std::sync::Arc<AskedFor> {
        let asked = std::sync::Arc::new(AskedFor::default());
        hub.add_demand(asked.clone());
        asked
    }

    /// Waits until every one of `names` was asked for.
    pub async fn wait(&self, names: &[String], timeout: Duration) {
        let start = Instant::now();
        loop {
            let missing: Vec<&String> = {
                let asked = self.0.lock().unwrap();
                names.iter().filter(|n| !asked.contains(*n)).collect()
            };
            if missing.is_empty() {
                return;
            }
            assert!(start.elapsed() < timeout, "no player asked for {missing:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Resident memory (KiB) of process `pid`, from /proc (Linux); 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    gbgate::sim::attack::process_usage(pid).map_or(0, |(rss, _)| rss)
}

/// Polls `f` every 50 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A TCP port the kernel had free a moment ago, for peers that cannot bind port 0 and report
/// it (`ffmpeg -listen 1`, VLC's RTSP server). Another process may take it first: callers check
/// the peer came up ([`listening`]) and try again on another port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether another process listens on IPv4 TCP `port` (`/proc/net/tcp`, state 0A = LISTEN).
/// A listener of this process does not count: the port was chosen for a peer process, and a
/// gateway of another test, binding port 0 meanwhile, may have been given the same number.
pub fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // Field 9 is the socket's inode; this process's descriptors link to `socket:[inode]`.
    let ours = |inode: &str| {
        let target = std::path::PathBuf::from(format!("socket:[{inode}]"));
        std::fs::read_dir("/proc/self/fd")
            .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == target)))
            .unwrap_or(false)
    };
    table.lines().filter(|l| l.contains(&needle)).filter_map(|l| l.split_whitespace().nth(9)).any(|inode| !ours(inode))
}

/// Waits up to `limit` for something to listen on `port`.
pub async fn wait_listening(port: u16, limit: Duration) -> bool {
    wait_for(limit, || listening(port)).await
}

/// A TCP port on 127.0.0.1 that refuses connections for as long as the returned socket lives:
/// bound but never listening, so no other process can take the port meanwhile. Drop the socket
/// right before a peer that must bind the port itself starts.
pub fn refusing_port() -> (socket2::Socket, u16) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    (sock, port)
}

/// Waits (10 s at most) until `count` devices are online with a catalog; fails naming `what`.
pub async fn wait_devices_with_catalogs(gw: &Gateway, count: usize, what: &str) {
    let gb = gw.gb.clone().expect("SIP is enabled");
    let ready = wait_for(Duration::from_secs(10), || {
        gb.devices().iter().filter(|d| d.online && !d.channels.is_empty()).count() == count
    })
    .await;
    assert!(ready, "{what}");
}

/// An `ffmpeg -listen 1` RTMP receiver (`rtmp://127.0.0.1:PORT/live/cam`) writing `out`: ffmpeg
/// cannot listen on port 0, so a free port is tried, and another when a process took it first.
pub async fn rtmp_receiver(out: &std::path::Path) -> (u16, std::process::Child) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i"])
            .arg(format!("rtmp://127.0.0.1:{port}/live/cam"))
            .args(["-c", "copy"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ffmpeg");
        if wait_listening(port, Duration::from_secs(10)).await && child.try_wait().unwrap().is_none() {
            return (port, child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("the ffmpeg receiver could not listen on any of 5 ports");
}

/// One camera sending an RTP dump to `to` over TCP (RFC 4571) with SSRC `ssrc`, `loops` times,
/// holding the connection `linger` after the last packet.
pub fn tcp_camera(to: SocketAddr, ssrc: u32, loops: u32, linger: Duration) -> gbgate::sim::send::SendOptions {
    gbgate::sim::send::SendOptions {
        to,
        tcp: true,
        count: 1,
        ssrc_base: Some(ssrc),
        loops,
        duration: None,
        flood: false,
        linger,
    }
}

/// Reads `stream` until the gateway closes it (or `idle` passes without a byte); returns whether
/// it was closed and the bytes read meanwhile.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, idle: Duration) -> (bool, usize) {
    use tokio::io::AsyncReadExt;
    let mut total = 0usize;
    let mut b = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(idle, stream.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, total),
            Ok(Ok(n)) => total += n,
            Err(_) => return (false, total),
        }
    }
}

/// Sends the RTP dump at `path` to the gateway's RTP port over TCP (RFC 4571) as one camera with
/// SSRC `ssrc`, `loops` times, on a background task.
pub fn send_in_background(gw: &Gateway, path: PathBuf, ssrc: u32, loops: u32) -> tokio::task::JoinHandle<()> {
    let opts = tcp_camera(gw.rtp_addr, ssrc, loops, Duration::from_millis(200));
    tokio::spawn(async move {
        gbgate::sim::send::send_file(&path, &opts).await.expect("send fixture");
    })
}

/// Sends the own fixture `fixture` (.rtp) over RTP/TCP with SSRC `ssrc`, `loops` times, on a
/// background task; returns the stream name once the hub has it.
pub async fn feed(gw: &Gateway, fixture: &str, ssrc: u32, loops: u32) -> String {
    let path = own_fixture(&format!("{fixture}.rtp"));
    let opts = tcp_camera(gw.rtp_addr, ssrc, loops, Duration::from_millis(500));
    tokio::spawn(async move { gbgate::sim::send::send_file(&path, &opts).await.unwrap() });
    let name = format!("rtp/{ssrc:08X}");
    let t = Instant::now();
    while gw.hub.get(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "stream {name} did not appear");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    name
}

/// The streams ffprobe finds in an RTSP URL over `transport` (codec, size, sample rate).
pub async fn ffprobe_streams(url: &str, transport: &str) -> Vec<Value> {
    let args =
        ["-v", "error", "-rtsp_transport", transport, "-show_entries", "stream=codec_name,width,height,sample_rate"];
    let (ok, out, err) =
        run_program("ffprobe", &[&args[..], &["-of", "json", url]].concat(), Duration::from_secs(30)).await;
    assert!(ok, "ffprobe {url} over {transport} failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["streams"].as_array().cloned().unwrap_or_default()
}

/// Decoded video frames (pts, key) of a whole RTSP play over `transport`.
pub async fn ffprobe_frames(url: &str, transport: &str) -> Vec<(i64, bool)> {
    let args = ["-v", "error", "-rtsp_transport", transport, "-select_streams", "v:0"];
    let args = [&args[..], &["-show_entries", "frame=pts,key_frame", "-of", "json", url]].concat();
    let (ok, out, err) = run_program("ffprobe", &args, Duration::from_secs(60)).await;
    assert!(ok, "ffprobe frames {url}: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["pts"].as_i64().unwrap_or(-1), f["key_frame"].as_i64() == Some(1)))
        .collect()
}
