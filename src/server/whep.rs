//! WHEP (WebRTC-HTTP Egress Protocol, RFC 9725) on the HTTP listener: `POST /<stream>/whep` with
//! an SDP offer answers `201 Created` with the SDP answer and the session's resource in
//! `Location` (`/<stream>/whep/<id>`); `DELETE` of the resource ends the session. The media goes
//! over the WebRTC output's UDP port ([`crate::server::webrtc`]); the answer is complete
//! (ICE-lite, host candidates in it), so trickle ICE (`PATCH`) is answered 405.
//!
//! The play rules are those of RTSP and RTMP: the `on_play` hook, else `[auth]` play (a
//! credential in the query string: `POST /live/x/whep?key=...`), then the stream is looked up
//! or started on demand (pulls, GB INVITE).
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::auth;
use crate::hub::NotLive;
use crate::server::http::{HttpState, Peer};
use crate::server::webrtc::OpenError;

/// Longest SDP offer read (a browser's is 4-8 KB).
const MAX_OFFER: usize = 64 << 10;

static REFUSE_LOG: std::sync::Mutex<crate::util::RateLimit> =
    std::sync::Mutex::new(crate::util::RateLimit::new(std::time::Duration::from_secs(10)));

pub fn routes() -> Router<HttpState> {
    Router::new().route("/whep/{*path}", any(whep))
}

/// What the internal path names: the stream, and the session resource if any.
fn parse(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/whep/")?;
    if let Some(stream) = rest.strip_suffix("/whep") {
        return (!stream.is_empty()).then(|| (stream.to_string(), None));
    }
    let (head, resource) = rest.rsplit_once('/')?;
    let stream = head.strip_suffix("/whep")?;
    if stream.is_empty() || resource.is_empty() {
        return None;
    }
    Some((stream.to_string(), Some(resource.to_string())))
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (status, msg.into()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn refused(stream: &str, peer: std::net::SocketAddr, msg: &str) {
    if let Some(suppressed) = REFUSE_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(Instant::now()) {
        tracing::info!(%stream, %peer, suppressed, "WHEP refused: {msg}");
    }
}

async fn whep(State(st): State<HttpState>, req: Request) -> Response {
    let Some((stream, resource)) = parse(req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "not a WHEP path");
    };
    let peer = req.extensions().get::<Peer>().map(|p| p.0).unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let Some(webrtc) = st.webrtc.clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "WebRTC is disabled ([webrtc] enabled = false)");
    };
    match (req.method().clone(), resource) {
        (Method::DELETE, Some(resource)) => match webrtc.close(&stream, &resource).await {
            true => StatusCode::OK.into_response(),
            false => text(StatusCode::NOT_FOUND, "no such WHEP session"),
        },
        (Method::POST, None) => offer(st, webrtc, stream, peer, req).await,
        (Method::OPTIONS, _) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST, DELETE"));
            r
        }
        (_, Some(_)) => {
            // PATCH (trickle ICE, ICE restart): the answer already holds every candidate.
            let mut r =
                text(StatusCode::METHOD_NOT_ALLOWED, "trickle ICE is not supported: use the answer's candidates");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("DELETE"));
            r
        }
        (_, None) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "POST an SDP offer");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
            r
        }
    }
}

async fn offer(
    st: HttpState,
    webrtc: std::sync::Arc<crate::server::webrtc::WebRtc>,
    stream: String,
    peer: std::net::SocketAddr,
    req: Request,
) -> Response {
    let sdp_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp")));
    if !sdp_type {
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the offer must be sent as application/sdp");
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match axum::body::to_bytes(req.into_body(), MAX_OFFER).await {
        Ok(b) => b,
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "the offer is too large (64 KiB at most)"),
    };
    let Ok(sdp) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the offer is not UTF-8");
    };
    // The play rules (D97): the cc's hook when it answers, else [auth].
    let notifier = st.hub.notifier();
    let decision = notifier
        .authorize(crate::notify::AccessRequest {
            kind: crate::notify::AccessKind::Play,
            stream: stream.clone(),
            protocol: "webrtc",
            peer,
            params: (!query.is_empty()).then(|| query.clone()),
        })
        .await;
    match decision {
        crate::notify::Decision::Allow => {}
        crate::notify::Decision::Deny(why) => {
            refused(&stream, peer, &format!("denied by the control center: {why}"));
            return text(StatusCode::FORBIDDEN, format!("denied by the control center: {why}"));
        }
        crate::notify::Decision::Fallback(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if let Err(e) = auth::check(&st.cfg.auth, auth::Action::Play, &stream, &query, peer.ip(), now) {
                refused(&stream, peer, &e.to_string());
                return text(StatusCode::FORBIDDEN, format!("authentication failed: {e}"));
            }
        }
    }
    if webrtc.is_full() {
        webrtc.stats.refused_full.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        refused(&stream, peer, "webrtc.max_sessions reached");
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many WebRTC sessions");
    }
    let s = match st.hub.get_or_demand(&stream).await {
        Ok(s) => s,
        Err(NotLive::Unknown) => return text(StatusCode::NOT_FOUND, format!("no such stream: {stream}")),
        Err(NotLive::Failed(why)) => return text(StatusCode::NOT_FOUND, format!("{stream}: {why}")),
    };
    match webrtc.open(sdp, &s, peer).await {
        Ok(o) => {
            let location = format!("/{stream}/whep/{}", o.resource);
            let mut r = Response::new(Body::from(o.answer));
            *r.status_mut() = StatusCode::CREATED;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            r
        }
        Err(e @ (OpenError::Full(_) | OpenError::FullSource(_) | OpenError::Stopped)) => {
            refused(&stream, peer, &e.to_string());
            text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ OpenError::BadOffer(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ OpenError::NoCodec(_)) => text(StatusCode::NOT_ACCEPTABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn paths_name_the_stream_and_the_resource() {
        assert_eq!(parse("/whep/gb/3402/whep"), Some(("gb/3402".into(), None)));
        assert_eq!(parse("/whep/live/whep/abc"), Some(("live".into(), Some("abc".into()))));
        assert_eq!(parse("/whep/whep"), None);
        assert_eq!(parse("/whep/x/whep/"), None);
        assert_eq!(parse("/whep/x/y"), None);
    }
}
