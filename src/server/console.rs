//! The web console (D141-D146): a few static files from `web/`, compiled into the binary, served at
//! `/` (devices, channels, streams) and `/play?stream=<name>` (the player), and the read-only
//! slice of the API they read, `GET /console/api/v1/{streams,devices,channels}`, behind the API's
//! own rules (Host, token; the gateway's own host only when there is no token).
//!
//! Routes are under `/ui` (the console's namespace of the HTTP listener, see `server::http`).
use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::server::api::Policy;
use crate::server::api_error::ApiError;
use crate::server::http::{HttpState, Peer};

/// A file of `web/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};
const PLAY: Asset =
    Asset { name: "play.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../../web/play.html") };

/// What `/console/<name>` serves.
const ASSETS: [Asset; 4] = [
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../../web/style.css") },
    Asset {
        name: "player.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/player.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/console.js"),
    },
    Asset {
        name: "play.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/play.js"),
    },
];

/// The API collections the console reads (GET only): the same JSON as `/api/v1/<name>`.
pub const READABLE: [&str; 3] = ["streams", "devices", "channels"];

/// Only our own scripts, styles and fetches; `blob:` media for MSE; no framing (D142).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";
/// The player page may be embedded in another site's page (`<iframe src=".../play?stream=..">`):
/// it holds no data and no action but playing.
const CSP_PLAYER: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                          media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/ui/", get(|| async { file(&INDEX) }))
        .route("/ui/play", get(|| async { framable(file(&PLAY)) }))
        .route("/ui/console/{name}", get(asset))
        .route("/ui/console/api/v1/{*name}", get(read_api).fallback(read_only))
        // Not a router-wide fallback: the outputs' routers are merged, and only one may have one.
        .route("/ui/{*rest}", get(not_found))
}

fn file(a: &Asset) -> Response {
    let mut r = a.body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    // The files change with the binary: a browser revalidates instead of keeping an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure_headers(h);
    r
}

fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // A play link may carry its credential (`?key=`): it must not leak to other sites.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Lets other sites frame the player page (only it).
fn framable(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP_PLAYER));
    h.remove(header::X_FRAME_OPTIONS);
    r
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => file(a),
        None => not_found().await,
    }
}

async fn not_found() -> Response {
    let mut r =
        ApiError::not_found("no such page: the console is at /, the player at /play?stream=<name>").into_response();
    secure_headers(r.headers_mut());
    r
}

async fn read_only() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "not_found",
        "the console's API is read-only: write to the API's own port",
    )
    .into_response()
}

/// The gateway's own host, as `[auth]` understands it (127.0.0.1 and ::1, not the rest of 127/8).
fn own_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST),
    }
}

/// Whether the request may read the console's data (D141); `Err` is the answer.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
pub fn admit(policy: &Policy, peer: Option<IpAddr>, parts: &axum::http::request::Parts) -> Result<(), Response> {
    policy.check(parts)?;
    if policy.token.is_none() && !peer.is_some_and(own_host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unauthorized",
            "without [api] token the console's data is shown on this host only (open it at 127.0.0.1), \
             as the API listens on loopback only",
        )
        .into_response());
    }
    Ok(())
}

/// `GET /console/api/v1/<name>`: the API's own answer to `GET /api/v1/<name>`, for the names the
/// console reads, after the API's checks.
async fn read_api(State(state): State<HttpState>, Path(name): Path<String>, req: axum::extract::Request) -> Response {
    let (parts, _) = req.into_parts();
    if !READABLE.contains(&name.as_str()) {
        return ApiError::not_found(format!("the console reads only {}", READABLE.join(", "))).into_response();
    }
    let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
    // The policy as SIGHUP last set it, not the start-up config (a reloaded token applies here too).
    let policy = state.api_policy.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(r) = admit(&policy, peer, &parts) {
        tracing::debug!(uri = %parts.uri, ?peer, status = r.status().as_u16(), "console API request refused");
        return r;
    }
    // A fresh request: nothing of the browser's (cookies, token, Origin) goes on to the API.
    let Ok(inner) = axum::http::Request::builder()
        .method(Method::GET)
        .uri(format!("/api/v1/{name}"))
        .body(axum::body::Body::empty())
    else {
        return ApiError::not_found(format!("no such collection {name:?}")).into_response();
    };
    let mut r = match tower::ServiceExt::oneshot(state.api.clone(), inner).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> axum::http::request::Parts {
        let mut b = axum::http::Request::builder().method("GET").uri("/ui/console/api/v1/streams");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn status(p: &Policy, peer: &str, headers: &[(&str, &str)]) -> u16 {
        admit(p, Some(peer.parse().unwrap()), &parts(headers)).err().map_or(200, |r| r.status().as_u16())
    }

    #[test]
    fn the_console_data_follows_the_api_rules() {
        let open = Policy { token: None, hosts: vec![], allowed_origins: vec![] };
        let h = ("host", "127.0.0.1:8088");
        assert_eq!(status(&open, "127.0.0.1", &[h]), 200);
        assert_eq!(status(&open, "::1", &[h]), 200);
        assert_eq!(status(&open, "127.0.0.2", &[h]), 403, "another host, no token");
        assert_eq!(status(&open, "192.0.2.7", &[h]), 403);
        assert_eq!(status(&open, "127.0.0.1", &[("host", "evil.example:8088")]), 421, "DNS rebinding");
        let token = Policy {
            token: Some("0123456789abcdef".into()),
            hosts: vec!["gw.example".into()],
            allowed_origins: vec![],
        };
        let bearer = ("authorization", "Bearer 0123456789abcdef");
        assert_eq!(status(&token, "192.0.2.7", &[h]), 401);
        assert_eq!(status(&token, "127.0.0.1", &[h]), 401, "the token is asked of this host too");
        assert_eq!(status(&token, "192.0.2.7", &[h, bearer]), 200);
        assert_eq!(status(&token, "192.0.2.7", &[("host", "gw.example:8088"), bearer]), 200);
        assert_eq!(status(&token, "192.0.2.7", &[("authorization", "Bearer nope")]), 401);
    }

    #[test]
    fn every_page_and_script_is_served_with_its_type() {
        for a in ASSETS.iter().chain([&INDEX, &PLAY]) {
            assert!(!a.body.is_empty(), "{}", a.name);
            let r = file(a);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        }
        // The console is never framed (its token form); the player page may be embedded.
        let console = file(&INDEX);
        assert!(console.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
        assert_eq!(console.headers()[header::X_FRAME_OPTIONS], "DENY");
        let player = framable(file(&PLAY));
        assert!(!player.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors"));
        assert!(!player.headers().contains_key(header::X_FRAME_OPTIONS));
        // Pages load only their own files: no CDN, no inline script (the CSP forbids both).
        for page in [&INDEX, &PLAY] {
            let html = std::str::from_utf8(page.body).unwrap();
            for src in html.split("src=\"").skip(1).chain(html.split("href=\"").skip(1)) {
                let url = &src[..src.find('"').unwrap()];
                assert!(
                    url.starts_with("/console/")
                        || url.starts_with('/') && !url.starts_with("//")
                        || url.starts_with("data:")
                        || url == "#",
                    "{url}"
                );
            }
            assert!(!html.contains("<script>"), "no inline script in {}", page.name);
        }
    }
}
