//! The web console and its player in headless Chromium (the Debian package), driven over the
//! DevTools protocol (tests/browser/cdp.rs), against the gbgate binary and a simulated camera
//! (`gbgate sim --media synthetic`: moving colour bars, H.264 128x96).
//!
//! - the console lists the camera (online, its catalog channel) and its stream, with counters that
//!   refresh;
//! - `/play?stream=gb/<channel>` plays over WebRTC (WHEP) and, forced with `&via=hls`, over LL-HLS
//!   through the page's MSE loader: the video element's time advances, its picture has the
//!   pattern's size, and two screenshots of it show different, many-coloured pictures;
//! - the console's data follows the API's rules (Host, token; loopback only without a token).
#[path = "browser/cdp.rs"]
mod cdp;
use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{http_raw, http_request, require_tool, wait_json};
use cdp::Browser;
use serde_json::Value;

const PASSWORD: &str = "12345678";
const DEVICE: &str = "34020000001320000001";
const TOKEN: &str = "console-test-token-0123456789";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gbgate binary with every listener on a kernel-chosen loopback port, and one simulated camera.
struct Setup {
    api: SocketAddr,
    http: SocketAddr,
    /// The camera's catalog channel, played as `gb/<channel>`.
    channel: String,
    token: Option<&'static str>,
    log: std::path::PathBuf,
    _sim: Proc,
    _gbgate: Proc,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// `api_extra`: more `[api]` keys; `extra`: more sections.
    async fn start(test: &str, api_extra: &str, extra: &str) -> Option<Setup> {
        Setup::start_with(test, api_extra, "", extra).await
    }

    /// As [`Setup::start`], with more `[webrtc]` keys.
    async fn start_with(test: &str, api_extra: &str, webrtc_extra: &str, extra: &str) -> Option<Setup> {
        if !require_tool(test, "chromium") || !require_tool(test, "ffmpeg") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("gbgate.toml");
        std::fs::write(
            &conf,
            format!(
                "[rtp]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n{api_extra}\n\
                 [rtsp]\nlisten = \"127.0.0.1:0\"\n[rtmp]\nlisten = \"127.0.0.1:0\"\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n[webrtc]\nlisten = \"127.0.0.1:0\"\n{webrtc_extra}\n\
                 [sip]\nlisten = \"127.0.0.1:0\"\npassword = \"{PASSWORD}\"\n{extra}\n"
            ),
        )
        .unwrap();
        let ports = dir.path().join("ports.json");
        let log = dir.path().join("gbgate.log");
        let gbgate = Proc(
            Command::new(env!("CARGO_BIN_EXE_gbgate"))
                .args(["run", "--config"])
                .arg(&conf)
                .arg("--ports-file")
                .arg(&ports)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn gbgate"),
        );
        let t0 = Instant::now();
        let p: Value = loop {
            if let Some(v) = std::fs::read_to_string(&ports).ok().and_then(|t| serde_json::from_str(&t).ok()) {
                break v;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no ports file: {}", read(&log));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr = |k: &str| -> SocketAddr {
            p[k].as_str().unwrap_or_else(|| panic!("{k} in the ports file: {p}")).parse().unwrap()
        };
        let sim = Proc(
            Command::new(env!("CARGO_BIN_EXE_gbgate"))
                .args(["sim", "--server", &addr("sip").to_string(), "--password", PASSWORD])
                .args(["--id", DEVICE, "--media", "synthetic", "--keepalive", "5s"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn gbgate sim"),
        );
        let token = api_extra.contains("token").then_some(TOKEN);
        let setup = Setup {
            api: addr("api"),
            http: addr("http"),
            channel: gbgate::sim::camera::channel_id(DEVICE, 0),
            token,
            log,
            _sim: sim,
            _gbgate: gbgate,
            _dir: dir,
        };
        let body = setup
            .wait_api("/api/v1/devices", Duration::from_secs(20), |b| {
                b["devices"][0]["online"] == true
                    && b["devices"][0]["channels"].as_array().is_some_and(|c| !c.is_empty())
            })
            .await;
        assert_eq!(
            body["devices"][0]["channels"][0]["device_id"],
            setup.channel.as_str(),
            "the camera registered: {body}"
        );
        Some(setup)
    }

    /// Polls an API path (with the token when the gateway has one).
    async fn wait_api(&self, path: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        match self.token {
            None => wait_json(self.api, path, limit, done).await,
            Some(t) => {
                let start = Instant::now();
                loop {
                    let req =
                        http_request("GET", path, &self.api.to_string(), &format!("Authorization: Bearer {t}\r\n"), "");
                    let (_, _, body) = http_raw(self.api, req).await;
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    if done(&v) || start.elapsed() > limit {
                        return v;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn log(&self) -> String {
        read(&self.log)
    }
}

fn read(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Text of the rows matching a CSS selector.
fn rows_text(selector: &str) -> String {
    format!("Array.from(document.querySelectorAll({selector:?})).map(r => r.innerText).join('\\n')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lists_the_simulated_camera_its_catalog_channel_and_its_stream_with_live_counters() {
    let Some(s) = Setup::start("console_lists", "", "").await else { return };
    // A stream of the camera: the API's play (INVITE) waits for its first keyframe.
    let path = format!("/api/v1/devices/{DEVICE}/channels/{}/play", s.channel);
    let (status, _, body) = http_raw(s.api, http_request("POST", &path, &s.api.to_string(), "", "")).await;
    assert_eq!(status, 200, "play: {body}");
    let stream = format!("gb/{}", s.channel);

    let mut b = Browser::launch().await;
    let page = b.open(&s.url("/")).await;
    let device_row = format!("tr[data-device='{DEVICE}']");
    let (ok, text) = b
        .wait_eval(&page, &rows_text(&device_row), Duration::from_secs(10), |v| {
            v.as_str().is_some_and(|t| t.contains("online") && t.contains("udp"))
        })
        .await;
    assert!(ok, "the console shows the camera online: {text}\n{}", b.diagnostics());
    let (ok, text) = b
        .wait_eval(&page, &rows_text(&format!("tr[data-channel='{}']", s.channel)), Duration::from_secs(5), |v| {
            v.as_str().is_some_and(|t| t.contains("on"))
        })
        .await;
    assert!(ok, "the console shows the camera's catalog channel: {text}\n{}", b.diagnostics());
    // The stream row, and its input rate: a number only once two refreshes saw bytes arrive.
    let stream_row = format!("tr[data-stream='{stream}']");
    let rate = format!(
        "(() => {{ const r = document.querySelector({stream_row:?}); return r ? r.cells[4].innerText : null; }})()"
    );
    let (ok, v) = b
        .wait_eval(&page, &rate, Duration::from_secs(10), |v| {
            v.as_str().and_then(|t| t.parse::<u64>().ok()).is_some_and(|kbps| kbps > 0)
        })
        .await;
    assert!(ok, "the console shows {stream} with a refreshing input rate: {v}\n{}", b.diagnostics());
    let (_, text) = b.wait_eval(&page, &rows_text(&stream_row), Duration::ZERO, |_| true).await;
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(text.contains("h264 128x96"), "the stream's codec and size: {text}");
    // The filter narrows the tables: a channel id that is not there hides the camera.
    let filter = |text: &str| {
        format!(
            "(() => {{ const f = document.getElementById('filter'); f.value = {text:?}; \
             f.dispatchEvent(new Event('input')); return document.querySelectorAll('#devices tbody tr').length; }})()"
        )
    };
    assert_eq!(b.eval(&page, &filter("no-such-camera")).await.unwrap(), 0);
    assert_eq!(b.eval(&page, &filter(&s.channel)).await.unwrap(), 2, "the camera and its matching channel");
    assert_eq!(b.eval(&page, &filter("")).await.unwrap(), 2);
    // Its play link opens the player page on that stream.
    let href =
        b.eval(&page, &format!("document.querySelector({stream_row:?} + ' a').getAttribute('href')")).await.unwrap();
    assert_eq!(href.as_str().unwrap(), format!("/play?stream=gb%2F{}", s.channel));
    // Its play button plays it in the console, on the first transport that works.
    b.eval(&page, &format!("document.querySelector({stream_row:?} + ' button').click(); true")).await.unwrap();
    let (ok, v) = b
        .wait_eval(&page, PLAYER_STATE, Duration::from_secs(30), |v| {
            v["state"] == "playing" && v["width"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(ok, "the console's player plays {stream}: {v}\n{}", b.diagnostics());
    save_screenshot(&mut b, &page, "console").await;
    b.close().await;
}

/// `GET path` from the source address `from` (127.0.0.2 plays "another host"), with extra header
/// lines; returns (status, body).
async fn get_from(from: [u8; 4], to: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let req = http_request("GET", path, &to.to_string(), headers, "");
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        sock.connect(&to.into()).unwrap();
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_data_follows_the_api_rules_host_token_and_this_host_only_without_a_token() {
    // Without [api] token: this host (127.0.0.1) reads, another host (127.0.0.2) does not.
    let Some(s) = Setup::start("console_rules", "", "").await else { return };
    let (status, body) = get_from([127, 0, 0, 1], s.http, "/console/api/v1/devices", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(DEVICE), "the API's device list: {body}");
    let (status, body) = get_from([127, 0, 0, 2], s.http, "/console/api/v1/devices", "").await;
    assert_eq!(status, 403, "another host without a token: {body}");
    // The pages themselves hold no data and are served to anyone.
    let (status, body) = get_from([127, 0, 0, 2], s.http, "/", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("/console/console.js"), "{body}");
    drop(s);

    let Some(s) = Setup::start("console_rules", &format!("token = \"{TOKEN}\""), "").await else { return };
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    for from in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let (status, body) = get_from(from, s.http, "/console/api/v1/streams", "").await;
        assert_eq!(status, 401, "no token from {from:?}: {body}");
        let (status, body) = get_from(from, s.http, "/console/api/v1/devices", &bearer).await;
        assert_eq!(status, 200, "the token from {from:?}: {body}");
        assert!(body.contains(DEVICE), "{body}");
    }
    let host = format!("Host: evil.example:{}\r\n{bearer}", s.http.port());
    let req = format!("GET /console/api/v1/devices HTTP/1.0\r\n{host}\r\n");
    let (status, _, _) = http_raw(s.http, req).await;
    assert_eq!(status, 421, "a rebinding Host");
    // Only the console's collections, and only reads.
    let (status, _) = get_from([127, 0, 0, 1], s.http, "/console/api/v1/gb/counters", &bearer).await;
    assert_eq!(status, 404);
    let post = http_request("POST", "/console/api/v1/devices", &s.http.to_string(), &bearer, "");
    let (status, _, _) = http_raw(s.http, post).await;
    assert_eq!(status, 405, "the console's API is read-only");

    // The page asks for the token, keeps it in the tab, and then lists the camera.
    let mut b = Browser::launch().await;
    let page = b.open(&s.url("/")).await;
    let (ok, v) =
        b.wait_eval(&page, "!document.getElementById('auth').hidden", Duration::from_secs(10), |v| v == true).await;
    assert!(ok, "the token form shows: {v}\n{}", b.diagnostics());
    let submit = format!(
        "document.getElementById('token').value = {TOKEN:?}; document.getElementById('token-form').requestSubmit(); true"
    );
    b.eval(&page, &submit).await.unwrap();
    let device_row = format!("tr[data-device='{DEVICE}']");
    let (ok, text) = b
        .wait_eval(&page, &rows_text(&device_row), Duration::from_secs(10), |v| {
            v.as_str().is_some_and(|t| t.contains("online"))
        })
        .await;
    assert!(ok, "with the token the console lists the camera: {text}\n{}", b.diagnostics());
    let kept = b.eval(&page, "[sessionStorage.getItem('gbgate.token'), location.href]").await.unwrap();
    assert_eq!(kept[0], TOKEN, "kept in sessionStorage");
    assert!(!kept[1].as_str().unwrap().contains(TOKEN), "never in the URL: {kept}");
    assert!(b.eval(&page, "document.getElementById('auth').hidden").await.unwrap() == true);
    b.close().await;
}

/// What the test reads of the player: transport, state, the status line, the video's time and size.
const PLAYER_STATE: &str = "(() => { const v = document.getElementById('video'); const p = window.gbPlayer; \
     return { transport: p && p.transport, state: p && p.state, status: document.getElementById('player-status').textContent, \
     time: v.currentTime, width: v.videoWidth, height: v.videoHeight }; })()";

/// Opens `/play?stream=...&via=...` and checks that `transport` plays the moving pattern.
async fn plays(s: &Setup, via: &str, transport: &str, protocol: &str) {
    let stream = format!("gb/{}", s.channel);
    let mut b = Browser::launch().await;
    let opened = Instant::now();
    let page = b.open(&s.url(&format!("/play?stream={stream}&via={via}"))).await;
    let (ok, v) = b
        .wait_eval(&page, PLAYER_STATE, Duration::from_secs(20), |v| {
            v["state"] == "playing" && v["width"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(ok, "{transport} plays: {v}\n{}\ngbgate:\n{}", b.diagnostics(), s.log());
    // Page load, the GB INVITE on demand, the transport's setup and two looks at a moving picture.
    println!("{transport}: playing {} ms after the page was opened", opened.elapsed().as_millis());
    assert_eq!(v["transport"], transport, "{v}");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(128), Some(96)), "the pattern's size: {v}");
    // The time advances: a second later it is further on.
    let t0 = v["time"].as_f64().unwrap();
    let (ok, v) = b
        .wait_eval(&page, PLAYER_STATE, Duration::from_secs(5), |v| v["time"].as_f64().unwrap_or(0.0) > t0 + 1.0)
        .await;
    assert!(ok, "{transport}: currentTime advances past {t0} + 1 s: {v}\n{}", b.diagnostics());
    // The gateway counts the browser as a player of that protocol.
    let players = s
        .wait_api(&format!("/api/v1/streams/{stream}"), Duration::from_secs(5), |b| {
            b["players"][protocol].as_u64().unwrap_or(0) >= 1
        })
        .await;
    assert!(players["players"][protocol].as_u64().unwrap_or(0) >= 1, "{protocol} player counted: {players}");
    // Two screenshots of the video element: pictures (not one flat colour) that move.
    let rect = b
        .eval(&page, "(() => { const r = document.getElementById('video').getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
        .await
        .unwrap();
    let r: Vec<f64> = rect.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().round()).collect();
    let clip = (r[0], r[1], r[2], r[3]);
    let first = pixels(&b.screenshot(&page, clip).await).await;
    let t1 = b.eval(&page, "document.getElementById('video').currentTime").await.unwrap().as_f64().unwrap();
    b.wait_eval(&page, "document.getElementById('video').currentTime", Duration::from_secs(5), |v| {
        v.as_f64().unwrap_or(0.0) > t1 + 0.5
    })
    .await;
    let second = pixels(&b.screenshot(&page, clip).await).await;
    save_screenshot(&mut b, &page, &format!("play-{via}")).await;
    for (n, shot) in [&first, &second].iter().enumerate() {
        let colours = shot.colours();
        assert!(colours >= 8, "{transport}: screenshot {n} has {colours} colours: not the colour bars");
        let lit = shot.lit_fraction();
        assert!(lit > 0.2, "{transport}: screenshot {n} is {:.0}% dark: no picture", (1.0 - lit) * 100.0);
    }
    let changed = first.changed_fraction(&second);
    assert!(
        changed > 0.05,
        "{transport}: the two screenshots differ in {:.1}% of pixels: the pattern does not move",
        changed * 100.0
    );
    if protocol == "webrtc" {
        // Leaving the page deletes the WHEP resource: the gateway lets the player go at once,
        // not after its idle timeout (10 s).
        let left = Instant::now();
        b.call(Some(&page.session), "Page.navigate", serde_json::json!({ "url": "about:blank" })).await.unwrap();
        let after = s
            .wait_api(&format!("/api/v1/streams/{stream}"), Duration::from_secs(5), |b| {
                b["players"]["webrtc"].as_u64().unwrap_or(0) == 0
            })
            .await;
        assert_eq!(
            after["players"]["webrtc"].as_u64().unwrap_or(0),
            0,
            "the session ended when the page left: {after}"
        );
        assert!(left.elapsed() < Duration::from_secs(5), "{:?}", left.elapsed());
    }
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_page_plays_the_camera_over_webrtc() {
    let Some(s) = Setup::start("play_webrtc", "", "").await else { return };
    plays(&s, "webrtc", "WebRTC", "webrtc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_page_plays_the_camera_over_the_hls_fallback() {
    let Some(s) = Setup::start("play_hls", "", "").await else { return };
    plays(&s, "hls", "HLS", "hls").await;
}

/// The whole page as `$GBGATE_SCREENSHOTS/<name>.png`, for a person to look at
/// (`GBGATE_SCREENSHOTS=/tmp/shots cargo test --test console`).
async fn save_screenshot(b: &mut Browser, page: &cdp::Page, name: &str) {
    if let Some(dir) = std::env::var_os("GBGATE_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        let png = b.screenshot(page, (0.0, 0.0, 1280.0, 900.0)).await;
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// A screenshot decoded to RGB by ffmpeg.
struct Pixels {
    rgb: Vec<u8>,
}

async fn pixels(png: &[u8]) -> Pixels {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shot.png");
    std::fs::write(&file, png).unwrap();
    let (ok, rgb, err) = common::run_program_bytes(
        "ffmpeg",
        &["-v", "error", "-i", file.to_str().unwrap(), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        Duration::from_secs(20),
    )
    .await;
    assert!(ok && !rgb.is_empty(), "ffmpeg decodes the screenshot: {err}");
    Pixels { rgb }
}

impl Pixels {
    fn px(&self) -> impl Iterator<Item = &[u8]> {
        self.rgb.chunks_exact(3)
    }
    /// Distinct colours, at 4 bits per channel (scaling blends neighbours).
    fn colours(&self) -> usize {
        self.px().map(|p| (p[0] >> 4, p[1] >> 4, p[2] >> 4)).collect::<std::collections::HashSet<_>>().len()
    }
    /// Pixels brighter than the black around the picture.
    fn lit_fraction(&self) -> f64 {
        let n = self.rgb.len() / 3;
        self.px().filter(|p| p.iter().map(|&c| u32::from(c)).sum::<u32>() > 60).count() as f64 / n.max(1) as f64
    }
    fn changed_fraction(&self, other: &Pixels) -> f64 {
        let n = self.rgb.len().min(other.rgb.len()) / 3;
        let changed =
            self.px().zip(other.px()).filter(|(a, b)| a.iter().zip(b.iter()).any(|(x, y)| x.abs_diff(*y) > 24)).count();
        changed as f64 / n.max(1) as f64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_page_plays_the_camera_over_http_flv_remuxed_in_the_page() {
    let Some(s) = Setup::start("play_flv", "", "").await else { return };
    plays(&s, "flv", "HTTP-FLV", "http-flv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_play_link_carries_its_play_credential_to_the_media_requests() {
    // [auth] play with a key, asked of this host too: the link works with its key, not without.
    let auth = "[auth]\nplay = true\nloopback_exempt = false\nkeys = [\"viewer-key-0123\"]";
    let Some(s) = Setup::start("play_credential", "", auth).await else { return };
    let stream = format!("gb/{}", s.channel);
    let mut b = Browser::launch().await;
    let page = b.open(&s.url(&format!("/play?stream={stream}&via=flv"))).await;
    let (ok, v) = b.wait_eval(&page, PLAYER_STATE, Duration::from_secs(20), |v| v["state"] == "failed").await;
    assert!(ok, "no key: refused: {v}\n{}", b.diagnostics());
    let status = v["status"].as_str().unwrap_or_default();
    assert!(status.contains("HTTP 403") || status.contains("HTTP 401"), "the refusal in words: {status}");
    let page = b.open(&s.url(&format!("/play?stream={stream}&via=flv&key=viewer-key-0123"))).await;
    let (ok, v) = b
        .wait_eval(&page, PLAYER_STATE, Duration::from_secs(20), |v| {
            v["state"] == "playing" && v["width"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(ok, "with its key the link plays: {v}\n{}", b.diagnostics());
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_falls_back_from_webrtc_to_hls_and_says_why() {
    // WebRTC switched off: the WHEP offer is refused, and the player goes on with HLS.
    let Some(s) = Setup::start_with("fallback", "", "enabled = false", "").await else { return };
    let stream = format!("gb/{}", s.channel);
    let mut b = Browser::launch().await;
    let page = b.open(&s.url(&format!("/play?stream={stream}"))).await;
    let (ok, v) = b
        .wait_eval(&page, PLAYER_STATE, Duration::from_secs(30), |v| {
            v["state"] == "playing" && v["width"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert!(ok, "the fallback plays: {v}\n{}\ngbgate:\n{}", b.diagnostics(), s.log());
    assert_eq!(v["transport"], "HLS", "{v}");
    let status = v["status"].as_str().unwrap_or_default();
    assert!(status.contains("after WebRTC failed: the WHEP offer was refused: HTTP"), "why, in words: {status}");
    b.close().await;
}
