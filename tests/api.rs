//! The HTTP API's trust boundary (issue 8 hole 17 and the API token of hole 3), over raw HTTP.

use std::time::Duration;

use crate::common::*;
use gbgate::sim::camera::{self, SimOptions, SimStats};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_move_a_camera_or_rebind_the_api_host() {
    let mut cfg = test_config();
    cfg.sip.password = Some("12345678".into());
    let gw = start(cfg).await;
    let stop = CancellationToken::new();
    let mut o = SimOptions::new(gw.sip_addr.unwrap(), own_fixture("h264_g711a_8k.rtp"));
    o.password = "12345678".into();
    let stats = camera::spawn(o, stop.clone()).await.unwrap();
    let gb = gw.gb.clone().unwrap();
    let dev = "34020000001320000001";
    let ch = camera::channel_id(dev, 0);
    assert!(wait_for(Duration::from_secs(5), || gb.device(dev).is_some_and(|d| !d.channels.is_empty())).await);
    let api = gw.api_addr;
    let host = api.to_string();
    let ptz = format!("/api/v1/devices/{dev}/channels/{ch}/ptz");
    let body = r#"{"action":"right","speed":31}"#;

    // The cross-site "simple request" a page can send without a CORS preflight.
    let req = http_request("POST", &ptz, &host, "Content-Type: text/plain\r\nOrigin: http://evil\r\n", body);
    let (status, _, text) = http_raw(api, req).await;
    assert_eq!(status, 403, "foreign origin: {text}");
    assert!(text.starts_with(r#"{"code":"unauthorized","error":"writes from origin"#), "{text}");
    // The same from our own origin, still not JSON.
    let own = format!("Origin: http://{host}\r\n");
    let req = http_request("POST", &ptz, &host, &format!("Content-Type: text/plain\r\n{own}"), body);
    let (status, _, text) = http_raw(api, req).await;
    assert_eq!(status, 415, "text/plain write: {text}");
    assert!(text.contains(r#""code":"bad_json""#), "{text}");
    assert!(text.contains("application/json"), "{text}");
    let req = http_request("POST", &ptz, &host, "Content-Type: application/x-www-form-urlencoded\r\n", body);
    assert_eq!(http_raw(api, req).await.0, 415, "form write");
    // JSON from a foreign origin (a page on another port of this host is foreign too).
    for origin in ["http://evil", "null", &format!("http://127.0.0.1:{}", api.port() ^ 1)] {
        let req =
            http_request("POST", &ptz, &host, &format!("Content-Type: application/json\r\nOrigin: {origin}\r\n"), body);
        assert_eq!(http_raw(api, req).await.0, 403, "origin {origin}");
    }
    // DNS rebinding: the page's own name pointed at 127.0.0.1.
    for verb in ["GET", "POST"] {
        let path = if verb == "GET" { "/api/v1/streams" } else { ptz.as_str() };
        let req = http_request(verb, path, "evil.example:8080", "Content-Type: application/json\r\n", "");
        let (status, _, text) = http_raw(api, req).await;
        assert_eq!(status, 421, "{verb} with Host evil.example: {text}");
        assert!(text.contains(r#""code":"unauthorized""#), "{text}");
    }
    assert_eq!(SimStats::get(&stats.ptz), 0, "no refused request reached the camera");

    // Malformed JSON: 400 naming the problem.
    let req = http_request("POST", &ptz, &host, "Content-Type: application/json\r\n", r#"{"action":"right","#);
    let (status, _, text) = http_raw(api, req).await;
    assert_eq!(status, 400, "{text}");
    let err: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["code"], "bad_json", "{text}");
    assert!(err["error"].as_str().unwrap().contains("bad JSON body") && text.contains("EOF"), "{text}");
    // Wrong types and unknown fields: the message names the field and the position.
    let playback = format!("/api/v1/devices/{dev}/channels/{ch}/playback");
    let play = format!("/api/v1/devices/{dev}/channels/{ch}/play");
    let control = "/api/v1/gb/sessions/gb/x".to_string();
    for (path, body, says) in [
        (
            &playback,
            r#"{"start":"yesterday","end":2}"#,
            "start: invalid type: string \"yesterday\", expected u64 at line 1 column 20",
        ),
        (&play, r#"{"transport":"udp","tcp":true}"#, "unknown field `tcp`"),
        (&play, r#"{"transport":"carrier pigeon"}"#, "transport: unknown variant `carrier pigeon`"),
        (&control, r#"{"action":"seek","seconds":-3}"#, "bad control: invalid value: integer `-3`"),
        (&control, r#"{"action":"pause"} {}"#, "trailing characters at line 1 column 20"),
        (&ptz, r#"[1,2"#, "[0]: invalid type: integer `1`, expected a string at line 1 column 2"),
    ] {
        let req = http_request("POST", path, &host, "Content-Type: application/json\r\n", body);
        let (status, _, text) = http_raw(api, req).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(err["code"], "bad_json", "{text}");
        assert!(err["error"].as_str().unwrap().contains(says), "{path} {body}: {text}");
    }
    // An oversized body is refused (one byte over, so the answer is not raced by a reset for
    // unread bytes).
    let mut big = format!(r#"{{"action":"right","pad":"{}"}}"#, "x".repeat(65_536));
    big.replace_range(65_500..big.len() - 2, "");
    big.insert_str(65_500, &"y".repeat(65_537 - big.len()));
    assert_eq!(big.len(), 65_537);
    let req = http_request("POST", &ptz, &host, "Content-Type: application/json\r\n", &big);
    let (status, _, text) = http_raw(api, req).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(r#""code":"bad_json""#) && text.contains("larger than 65536 bytes"), "{text}");
    // A wrong query parameter names it; an unknown route and a wrong method say so.
    let records = format!("/api/v1/devices/{dev}/channels/{ch}/records?start=2026-01-01T00:00:00");
    let (status, _, text) = http_raw(api, http_request("GET", &records, &host, "", "")).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#""code":"invalid_field""#) && text.contains("missing field `end`"), "{text}");
    let (status, _, text) = http_raw(api, http_request("GET", "/api/v1/nothing", &host, "", "")).await;
    assert_eq!(
        (status, text.as_str()),
        (404, r#"{"code":"not_found","error":"no such endpoint: GET /api/v1/nothing"}"#)
    );
    let (status, _, text) = http_raw(api, http_request("DELETE", "/api/v1/streams", &host, "", "")).await;
    assert_eq!(status, 405, "{text}");
    assert!(text.contains(r#""code":"not_found""#), "{text}");
    let (status, _, text) = http_raw(api, http_request("GET", "/api/v1/devices/nobody", &host, "", "")).await;
    assert_eq!((status, text.as_str()), (404, r#"{"code":"not_found","error":"no device \"nobody\""}"#));

    // The legitimate client (same origin or none, JSON, localhost name) still moves the camera.
    let named = format!("localhost:{}", api.port());
    let own = format!("Origin: http://{named}\r\n");
    let req = http_request("POST", &ptz, &named, &format!("Content-Type: application/json\r\n{own}"), body);
    let (status, _, text) = http_raw(api, req).await;
    assert_eq!(status, 200, "{text}");
    assert!(wait_for(Duration::from_secs(3), || SimStats::get(&stats.ptz) == 1).await);
    stop.cancel();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_is_required_when_set_and_without_one_the_api_stays_on_loopback() {
    // No token and a non-loopback listen address: refused at start, with the way out named.
    let mut cfg = test_config();
    cfg.sip.enabled = false;
    cfg.api.listen = "0.0.0.0:0".parse().unwrap();
    let err = gbgate::server::Gateway::start(cfg.clone()).await.err().expect("an unprotected public API is refused");
    assert!(err.to_string().contains("[api] token"), "{err}");

    cfg.api.token = Some("s3cret-token-0123456789".into());
    let gw = start(cfg).await;
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], gw.api_addr.port()));
    let host = api.to_string();
    let get = |auth: &str| http_request("GET", "/api/v1/streams", &host, auth, "");
    let (status, head, body) = http_raw(api, get("")).await;
    assert_eq!(status, 401);
    assert_eq!(body, r#"{"code":"unauthorized","error":"missing or wrong bearer token ([api] token)"}"#);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    assert_eq!(http_raw(api, get("Authorization: Bearer wrong-token!\r\n")).await.0, 401);
    assert_eq!(http_raw(api, get("Authorization: Basic czNjcmV0LXRva2Vu\r\n")).await.0, 401);
    let (status, _, body) = http_raw(api, get("Authorization: Bearer s3cret-token-0123456789\r\n")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"streams\""), "{body}");
    // A write without the token is refused before anything else is looked at.
    let req = http_request("POST", "/api/v1/gb/sessions/x", &host, "Content-Type: application/json\r\n", "{}");
    assert_eq!(http_raw(api, req).await.0, 401);
    // Health checks need no token.
    let (status, _, body) = http_raw(api, http_request("GET", "/healthz", &host, "", "")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Neither does a Prometheus scrape.
    let (status, _, body) = http_raw(api, http_request("GET", "/metrics", &host, "", "")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE gbgate_streams gauge"), "{body}");
    // Every other endpoint does, the unknown ones too (nothing is learned about the routes).
    for path in ["/api/v1/openapi.json", "/api/v1/listeners", "/api/v1/nothing"] {
        let (status, _, body) = http_raw(api, http_request("GET", path, &host, "", "")).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    gw.stop().await;
}
