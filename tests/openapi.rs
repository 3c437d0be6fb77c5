//! The OpenAPI document (docs/openapi.json, served at `GET /api/v1/openapi.json`) cannot drift
//! from the routers (D119): its (method, path) set equals the set of `.route(...)` calls in the
//! sources of every router, it is self-consistent (references resolve, path parameters are
//! declared), and every documented operation reaches a handler of a running `gbgate run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// Routes documented from the contracts whose handlers live on another branch that has
/// not been merged yet. Each must be absent from the routers (so this list empties itself: once
/// the branch is merged, the test fails until the entry is removed here).
const PENDING_MERGE: &[(&str, &str)] = &[];

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("docs/openapi.json is JSON")
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{path}: {method} is not an HTTP method");
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `.route("path", get(..).post(..))` in `src`: the path literal and the method routers
/// chained at the top level of the second argument (handlers' own calls are nested deeper).
/// axum's `{*rest}` becomes OpenAPI's `{rest}`. Ways of adding routes this cannot read
/// (`nest`, `route_service`, a path that is not a literal) fail the test instead.
fn routed() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // The HTTP media listener's routes (HTTP-FLV, HLS, WHEP, console: `Router<HttpState>`)
        // are not the API's, and are not in its document.
        if text.contains("HttpState") {
            continue;
        }
        for unread in [".nest(", ".nest_service(", ".route_service(", ".merge("] {
            assert!(!text.contains(unread), "{}: `{unread}` adds routes this test cannot see", file.display());
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let args = rest.trim_start();
            let lit = args.strip_prefix('"').unwrap_or_else(|| {
                panic!("{}: a .route( whose path is not a literal: {}", file.display(), &args[..60.min(args.len())])
            });
            let end = lit.find('"').unwrap();
            let path = lit[..end].replace("{*", "{");
            let after = lit[end + 1..].trim_start().strip_prefix(',').expect("a comma after the path");
            // Walk the second argument up to its closing parenthesis.
            let (mut depth, mut ident, mut methods) = (0i32, String::new(), Vec::new());
            let mut in_str = false;
            let mut prev = ' ';
            for c in after.chars() {
                if in_str {
                    if c == '"' && prev != '\\' {
                        in_str = false;
                    }
                    prev = c;
                    continue;
                }
                match c {
                    '"' => in_str = true,
                    '(' | '[' | '{' => {
                        if depth == 0 && METHODS.contains(&ident.as_str()) {
                            methods.push(ident.clone());
                        }
                        depth += 1;
                    }
                    ')' | ']' | '}' => {
                        depth -= 1;
                        if depth < 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                if c.is_ascii_alphanumeric() || c == '_' {
                    ident.push(c);
                } else {
                    ident.clear();
                }
                prev = c;
            }
            assert!(!methods.is_empty(), "{}: no method router for {path}", file.display());
            for m in methods {
                assert!(out.insert((m.clone(), path.clone())), "{m} {path} routed twice");
            }
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_routers() {
    let doc = document();
    let documented = documented(&doc);
    let routed = routed();
    assert!(routed.len() > 20, "the route scan found too little: {routed:?}");
    let pending: BTreeSet<_> = PENDING_MERGE.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let merged: Vec<_> = pending.intersection(&routed).collect();
    assert!(merged.is_empty(), "now routed: remove from PENDING_MERGE: {merged:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes missing from docs/openapi.json: {undocumented:?}");
    let unrouted: Vec<_> = documented.difference(&routed).filter(|r| !pending.contains(*r)).collect();
    assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

fn resolve<'a>(doc: &'a Value, r: &str) -> &'a Value {
    let ptr = r.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {r}"));
    doc.pointer(ptr).unwrap_or_else(|| panic!("$ref {r} does not resolve"))
}

#[test]
fn the_document_is_consistent() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "OpenAPI 3.1");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        resolve(&doc, r);
    }
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let in_path: BTreeSet<String> =
            path.split('{').skip(1).map(|s| s.split('}').next().unwrap().to_string()).collect();
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            assert!(ids.insert(op["operationId"].as_str().unwrap_or_else(|| panic!("{at}: no operationId"))));
            let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{at}: no responses"));
            assert!(responses.keys().any(|c| c.starts_with('2')), "{at}: no success response");
            let mut declared = BTreeSet::new();
            for p in op["parameters"].as_array().into_iter().flatten() {
                let p = if p["$ref"].is_string() { resolve(&doc, p["$ref"].as_str().unwrap()) } else { p };
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{at}: path parameter {p}");
                    declared.insert(p["name"].as_str().unwrap().to_string());
                }
            }
            assert_eq!(declared, in_path, "{at}: path parameters");
            // Open endpoints say so; every other one inherits the bearer requirement.
            let open = op.get("security").is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()));
            assert_eq!(open, path == "/healthz" || path == "/metrics", "{at}: security");
            if !open {
                assert!(responses.contains_key("401"), "{at}: 401");
            }
        }
    }
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
}

/// A sample for each path parameter: enough to reach the handler (which may then answer 404
/// for an unknown device or stream: that is the handler speaking, not the router).
fn sample(param: &str) -> &'static str {
    match param {
        "id" => "34020000001320000001",
        "ch" => "34020000001310000001",
        "name" | "stream" => "gb/34020000001310000001",
        _ => "x",
    }
}

#[test]
fn every_documented_operation_reaches_a_handler_of_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gbgate.toml");
    let mut text = String::new();
    for section in ["rtp", "rtsp", "rtmp", "http", "webrtc", "sip", "api"] {
        text += &format!("[{section}]\nlisten = \"127.0.0.1:0\"\n");
    }
    // [api] comes last: its token; [sip] before it: no device password (none registers).
    text = text.replace("[api]", "password = \"\"\n[api]") + "token = \"0123456789abcdef-token\"\n";
    std::fs::write(&cfg, text).unwrap();
    let ports = dir.path().join("ports.json");
    let mut child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_gbgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .arg("--ports-file")
            .arg(&ports)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let bound: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            break serde_json::from_str(&text).unwrap();
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut log = String::new();
            std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut log).unwrap();
            panic!("gbgate exited ({status}) before listening: {log}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "gbgate did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let api: std::net::SocketAddr = bound["api"].as_str().unwrap().parse().unwrap();
    let host = api.to_string();
    let auth = "Authorization: Bearer 0123456789abcdef-token\r\nContent-Type: application/json\r\n";

    // The served document is the file.
    let (status, _, body) = http_raw_blocking(api, &http_request("GET", "/api/v1/openapi.json", &host, auth, ""));
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served, document());

    let pending: BTreeSet<_> = PENDING_MERGE.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let mut answers = BTreeMap::new();
    for (method, path) in documented(&served) {
        if pending.contains(&(method.clone(), path.clone())) {
            continue;
        }
        let mut concrete = path.clone();
        while let Some(i) = concrete.find('{') {
            let j = concrete[i..].find('}').unwrap() + i;
            let name = concrete[i + 1..j].to_string();
            concrete.replace_range(i..=j, sample(&name));
        }
        // Writes get an empty JSON object: every handler refuses it or acts on nothing (no
        // device, no session), so the run has no side effects.
        let body = if method == "get" { "" } else { "{}" };
        let req = http_request(&method.to_uppercase(), &concrete, &host, auth, body);
        let (status, _, text) = http_raw_blocking(api, &req);
        let routed = status != 405 && !(status == 404 && text.contains("no such endpoint"));
        assert!(routed, "{method} {path} ({concrete}): {status} {text}");
        assert_ne!(status, 401, "{method} {path}: the token was refused: {text}");
        if !(200..300).contains(&status) {
            let e: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {status} {text}"));
            assert!(e["code"].is_string() && e["error"].is_string(), "{method} {path}: {text}");
        }
        answers.insert(format!("{method} {path}"), status);
    }
    assert!(answers.len() > 20, "{answers:?}");
    // An undocumented path does get the router's 404, so the check above can fail.
    let (status, _, text) = http_raw_blocking(api, &http_request("GET", "/api/v1/undocumented", &host, auth, ""));
    assert!(status == 404 && text.contains("no such endpoint"), "{status} {text}");
}

/// The gateway process, killed when the test ends however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
