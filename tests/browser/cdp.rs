//! Headless Chromium (the Debian package) driven over the Chrome DevTools Protocol through
//! `--remote-debugging-pipe`: JSON messages separated by NUL on the browser's file descriptors 3
//! (commands in) and 4 (answers and events out). A shell maps our stdin/stdout pipes onto those
//! descriptors, so no WebDriver, Python package or WebSocket client is needed.
#![allow(dead_code)]
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// One CDP answer may take this long (a screenshot, a navigation).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the page's console and exceptions kept for a failing test's message.
const LOG_LINES: usize = 200;

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    /// The pages' console messages and uncaught exceptions, newest last (bounded).
    pub log: Vec<String>,
    pgid: u32,
    dir: tempfile::TempDir,
}

/// A page (tab) attached with a flat session.
#[derive(Clone, Debug)]
pub struct Page {
    pub session: String,
    pub target: String,
}

impl Browser {
    /// Starts headless Chromium with a fresh profile.
    pub async fn launch() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("chromium.log")).unwrap();
        let profile = dir.path().join("profile");
        let mut child = Command::new("sh")
            .arg("-c")
            // fd 3 <- our stdin (commands), fd 4 -> our stdout (answers); the browser's own
            // stdin/stdout go nowhere.
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg("chromium")
            .args([
                "--headless",
                // Tests run as root in a container: Chromium's sandbox needs user namespaces.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--autoplay-policy=no-user-gesture-required",
                "--window-size=1280,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let pgid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser { child, stdin, rx, next_id: 0, log: Vec::new(), pgid, dir }
    }

    /// Sends one command (to the browser, or to a page's session) and waits for its answer;
    /// events met meanwhile are logged (console, exceptions) or dropped.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.stdin.write_all(&bytes).await.map_err(|e| format!("{method}: chromium's pipe: {e}"))?;
        self.stdin.flush().await.map_err(|e| format!("{method}: chromium's pipe: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(format!("{method}: chromium exited; its log:\n{}", self.stderr_tail())),
                Err(_) => return Err(format!("{method}: no answer from chromium in {CALL_TIMEOUT:?}")),
            };
            if m["id"].as_u64() == Some(id) {
                return match m.get("error") {
                    Some(e) => Err(format!("{method}: {e}")),
                    None => Ok(m["result"].clone()),
                };
            }
            self.note_event(&m);
        }
    }

    fn note_event(&mut self, m: &Value) {
        let line = match m["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = m["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["value"].as_str().map_or_else(|| a["description"].to_string(), str::to_string))
                    .collect();
                format!("console.{}: {}", m["params"]["type"].as_str().unwrap_or("log"), args.join(" "))
            }
            Some("Runtime.exceptionThrown") => {
                let d = &m["params"]["exceptionDetails"];
                format!("exception: {} {}", d["text"], d["exception"]["description"])
            }
            Some("Log.entryAdded") => {
                let e = &m["params"]["entry"];
                format!("log.{}: {} {}", e["level"].as_str().unwrap_or(""), e["text"], e["url"])
            }
            _ => return,
        };
        if self.log.len() >= LOG_LINES {
            self.log.remove(0);
        }
        self.log.push(line);
    }

    /// Opens `url` in a new tab and attaches to it.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await.unwrap();
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached =
            self.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true })).await.unwrap();
        let page = Page { session: attached["sessionId"].as_str().unwrap().to_string(), target };
        for domain in ["Runtime.enable", "Page.enable", "Log.enable"] {
            self.call(Some(&page.session), domain, json!({})).await.unwrap();
        }
        self.call(Some(&page.session), "Page.navigate", json!({ "url": url })).await.unwrap();
        page
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, page: &Page, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {}", ex["exception"]["description"].as_str().unwrap_or(&ex.to_string())));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expr` every 100 ms until `done` holds for its value or `limit` passes;
    /// returns the last value and whether it held.
    pub async fn wait_eval(
        &mut self,
        page: &Page,
        expr: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (bool, Value) {
        let start = Instant::now();
        loop {
            let v = self.eval(page, expr).await.unwrap_or_else(|e| json!({ "eval_error": e }));
            if done(&v) {
                return (true, v);
            }
            if start.elapsed() > limit {
                return (false, v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page area `(x, y, width, height)` in CSS pixels at scale 1.
    pub async fn screenshot(&mut self, page: &Page, clip: (f64, f64, f64, f64)) -> Vec<u8> {
        use base64::Engine;
        let (x, y, width, height) = clip;
        let r = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({ "format": "png", "clip": { "x": x, "y": y, "width": width, "height": height, "scale": 1 } }),
            )
            .await
            .unwrap();
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap()
    }

    /// The last lines of Chromium's own stderr log.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The pages' console log and Chromium's stderr, for a failure message.
    pub fn diagnostics(&self) -> String {
        format!("page log:\n{}\nchromium:\n{}", self.log.join("\n"), self.stderr_tail())
    }

    /// Closes the browser and every process it started (its process group).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.call(None, "Browser.close", json!({}))).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await;
        self.kill_group();
    }

    fn kill_group(&mut self) {
        if self.pgid != 0 {
            // Renderer and GPU processes share the browser's process group (`process_group(0)`).
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pgid)])
                .stderr(Stdio::null())
                .status();
            self.pgid = 0;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill_group();
    }
}
