//! The HTTP media listener (`[http]`): browser outputs and the web console, on their own port,
//! apart from the control API (its token, limits and one-request connections do not fit players).
//!
//! Stream names contain `/` (`gb/34020000001320000001`), which axum's router cannot match before
//! a suffix (`/{*stream}.flv`). So each request's path is mapped once, by its suffix, into the
//! internal namespace of exactly one output ([`internal_path`]), and each output module routes
//! under its own prefix with ordinary axum routes:
//!
//! | public path                                   | internal path           | module     |
//! |-----------------------------------------------|-------------------------|------------|
//! | `/<stream>.flv` (HTTP-FLV and WebSocket-FLV)  | `/flv/<stream>`         | `http_flv` |
//! | `/<stream>/<file>.{m3u8,m4s,mp4,m4a,m4v,ts,aac}`, `/<stream>/hls.json` | `/hls/<stream>/<file>` | `hls` |
//! | `/<stream>/whep`, `/<stream>/whep/<resource>` | `/whep/<same path>`     | `whep`     |
//! | anything else (`/`, `/play?stream=..`, assets) | `/ui/<same path>`      | `console`  |
//!
//! Every path lands in one namespace, so a client cannot reach a module's route by writing its
//! internal path (`/flv/x` is the console's `/ui/flv/x`). The query string is kept.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::Hub;
use crate::server::admit::{Admission, Ticket};

/// What the outputs of the HTTP listener share.
#[derive(Clone)]
pub struct HttpState {
    pub hub: Arc<Hub>,
    /// The whole configuration (`[http]`, `[auth]`, `[rtmp] hevc`, ...), as the gateway started.
    pub cfg: Arc<Config>,
    /// GB28181 signalling (devices, channels), for the console; `None` when `[sip] enabled = false`.
    pub gb: Option<crate::gb::Gb>,
    /// The HTTP-FLV and WebSocket-FLV counters.
    pub flv: Arc<crate::server::http_flv::FlvShared>,
    /// Cancelled when the gateway stops: live responses end.
    pub shutdown: CancellationToken,
    /// The HLS segmenters and viewer sessions.
    pub hls: Arc<crate::server::hls::HlsShared>,
    /// The WebRTC output (WHEP); `None` when `[webrtc] enabled = false`.
    pub webrtc: Option<Arc<crate::server::webrtc::WebRtc>>,
    /// The API's router without its policy layer: the console hands it its read-only requests
    /// after the same checks (D141).
    pub api: Router,
    /// The API's policy as SIGHUP last set it (token, hosts, origins): the console applies it.
    pub api_policy: crate::server::api::SharedPolicy,
}

/// The router of the HTTP listener: each output's routes under its internal prefix.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(crate::server::http_flv::routes())
        .merge(crate::server::hls::routes())
        .merge(crate::server::whep::routes())
        .merge(crate::server::console::routes())
        .with_state(state)
}

/// HLS files by extension (playlists, CMAF init and media segments and parts).
const HLS_EXTENSIONS: [&str; 7] = ["m3u8", "m4s", "mp4", "m4a", "m4v", "ts", "aac"];

/// Maps a public request path to the internal path of the output that serves it (see the module
/// documentation).
pub fn internal_path(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if let Some(stream) = rest.strip_suffix(".flv").filter(|s| !s.is_empty()) {
        return format!("/flv/{stream}");
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let hls = n >= 2
        && segments[..n - 1].iter().all(|s| !s.is_empty())
        && (segments[n - 1] == "hls.json"
            || segments[n - 1].rsplit_once('.').is_some_and(|(stem, ext)| {
                !stem.is_empty() && HLS_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
            }));
    if hls {
        return format!("/hls/{rest}");
    }
    let whep = (n >= 2 && segments[n - 1] == "whep") || (n >= 3 && segments[n - 2] == "whep");
    if whep && !segments[0].is_empty() {
        return format!("/whep/{rest}");
    }
    format!("/ui/{rest}")
}

fn rewrite<B>(mut req: hyper::Request<B>) -> hyper::Request<B> {
    let uri = req.uri();
    let path = internal_path(uri.path());
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if let Ok(pq) = pq.parse::<axum::http::Uri>() {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = pq.path_and_query().cloned();
        if let Ok(u) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    } else {
        // Unparsable after the mapping (cannot happen for a path that parsed): nothing matches.
        *req.uri_mut() = axum::http::Uri::from_static("/invalid");
    }
    req
}

/// Limits of the HTTP listener's connections; the caps are in its [`Admission`].
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    /// A connection whose writes make no progress this long is closed.
    pub write_timeout: Duration,
}

impl ConnLimits {
    pub fn of(cfg: &crate::config::HttpConfig) -> ConnLimits {
        ConnLimits {
            header_timeout: cfg.header_timeout.0.max(Duration::from_millis(100)),
            write_timeout: cfg.write_timeout.0.max(Duration::from_millis(100)),
        }
    }
}

/// Rate limit of the warnings about refused connections.
static ACCEPT_LOG: std::sync::Mutex<crate::util::RateLimit> =
    std::sync::Mutex::new(crate::util::RateLimit::new(Duration::from_secs(10)));

/// Serves the HTTP listener until `shutdown`: each connection is admitted (per-source and global
/// caps; the oldest connection that has not completed a request makes room), must send its first
/// request head within `header_timeout`, and later heads within the same time (keep-alive is
/// allowed: HLS players fetch many small files).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    admission: Arc<Admission>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(e) => {
                if let Some(suppressed) =
                    ACCEPT_LOG.lock().unwrap_or_else(|p| p.into_inner()).check(std::time::Instant::now())
                {
                    tracing::warn!(%peer, suppressed, "HTTP connection refused: {e}");
                }
                continue;
            }
        };
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tokio::spawn(async move { connection(sock, peer, router, limits, ticket, shutdown).await });
    }
}

/// The peer of a request, for the play rules and the hooks (an extension every request carries).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The connection's admission slot (an extension every request carries): a handler that takes
/// the connection over (a WebSocket upgrade) keeps it until it closes, so upgraded connections
/// stay counted and capped.
#[derive(Clone)]
pub struct ConnHold(pub Arc<Ticket>);

/// Kernel send buffer per connection (the kernel doubles it): about 2 s of a 2 Mbit/s stream, so
/// a player that stops reading blocks our writes soon and `write_timeout` finds it (as RTMP).
const SEND_BUFFER: usize = 256 * 1024;

/// The socket, noting since when a write has been blocked (ms since `epoch`, 0: not blocked), so
/// the connection's driver can drop a peer that accepts nothing for `write_timeout`.
struct WatchedIo {
    inner: tokio::net::TcpStream,
    epoch: tokio::time::Instant,
    blocked_since: Arc<std::sync::atomic::AtomicU64>,
}

impl WatchedIo {
    fn note<T>(&self, r: &std::task::Poll<T>) {
        use std::sync::atomic::Ordering;
        if r.is_pending() {
            if self.blocked_since.load(Ordering::Relaxed) == 0 {
                let ms = self.epoch.elapsed().as_millis() as u64 + 1;
                self.blocked_since.store(ms, Ordering::Relaxed);
            }
        } else {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for WatchedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn connection(
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    ticket: Ticket,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use std::sync::atomic::Ordering;
    let _ = sock.set_nodelay(true);
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(SEND_BUFFER);
    let ticket = Arc::new(ticket);
    let seen = ticket.clone();
    let blocked_since = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let epoch = tokio::time::Instant::now();
    let io = WatchedIo { inner: sock, epoch, blocked_since: blocked_since.clone() };
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        seen.established();
        let router = router.clone();
        let mut req = rewrite(req.map(axum::body::Body::new));
        req.extensions_mut().insert(Peer(peer));
        req.extensions_mut().insert(ConnHold(seen.clone()));
        async move { tower::ServiceExt::oneshot(router, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let first = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(first);
    let mut first_done = false;
    let mut stall_check = tokio::time::interval_at(epoch + limits.write_timeout, limits.write_timeout / 2);
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if r.is_err_and(|e| e.is_timeout()) {
                    ticket.timed_out();
                }
                return;
            }
            _ = ticket.evicted.cancelled() => return,
            _ = &mut first, if !first_done => {
                first_done = true;
                if ticket.is_pending() {
                    ticket.timed_out();
                    return;
                }
            }
            _ = stall_check.tick() => {
                let since = blocked_since.load(Ordering::Relaxed);
                let now = epoch.elapsed().as_millis() as u64 + 1;
                if since != 0 && now.saturating_sub(since) >= limits.write_timeout.as_millis() as u64 {
                    // A peer that accepts nothing (a stalled player) gives its slot back.
                    ticket.timed_out();
                    tracing::debug!(%peer, "HTTP connection closed: writes stalled {:?}", limits.write_timeout);
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                // A live body (a player) never completes: it is cut after a short grace.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::internal_path;

    #[test]
    fn public_paths_map_to_one_output_each() {
        assert_eq!(internal_path("/gb/34020000001320000001.flv"), "/flv/gb/34020000001320000001");
        assert_eq!(internal_path("/live.flv"), "/flv/live");
        assert_eq!(internal_path("/rtp/0600000001/index.m3u8"), "/hls/rtp/0600000001/index.m3u8");
        assert_eq!(internal_path("/live/seg12.m4s"), "/hls/live/seg12.m4s");
        assert_eq!(internal_path("/gb/1/hls.json"), "/hls/gb/1/hls.json");
        assert_eq!(internal_path("/gb/1/whep"), "/whep/gb/1/whep");
        assert_eq!(internal_path("/gb/1/whep/abc"), "/whep/gb/1/whep/abc");
        assert_eq!(internal_path("/"), "/ui/");
        assert_eq!(internal_path("/play"), "/ui/play");
        assert_eq!(internal_path("/app.js"), "/ui/app.js");
        // Internal paths written by a client stay in the console's namespace.
        assert_eq!(internal_path("/flv/x"), "/ui/flv/x");
        assert_eq!(internal_path("/.flv"), "/ui/.flv");
        assert_eq!(internal_path("/index.m3u8"), "/ui/index.m3u8", "no stream");
        assert_eq!(internal_path("//index.m3u8"), "/ui//index.m3u8", "empty stream");
        assert_eq!(internal_path("/whep"), "/ui/whep");
    }
}
