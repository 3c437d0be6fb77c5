//! Static RTMP pushes (`[[rtmp.push]]`): every hub stream matching an entry is published to the
//! entry's URL by its own task, a plain hub subscriber ("push") that never slows ingest.
//!
//! A push task connects, handshakes, sends connect / createStream / publish (each step bounded by
//! `rtmp.push_timeout`), subscribes to the stream (so it starts at the GOP cache) and sends
//! metadata, sequence headers and frames; a send stalled longer than `push_timeout` disconnects.
//! When the origin goes away it reconnects with a backoff of 1 s doubling to 30 s (back to 1 s
//! after a push that was healthy: publishing and sending media for 3 s), resubscribing
//! (so it restarts at a keyframe). It stops when the stream ends.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionError, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{HevcFlv, PushConfig, RtmpConfig};
use crate::hub::{Hub, Stream};
use crate::proto::flv_flow::{FlvFlow, Out};
use crate::proto::rtmp_guard::RtmpCommandGuard;
use crate::util::io::{read_timeout, write_timeout};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);

/// True if `name` matches `pattern`, where `*` matches any run of characters (including '/').
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The push URL of one stream: `{stream}` replaced by the stream name.
pub fn push_url(entry: &PushConfig, stream: &str) -> String {
    entry.url.replace("{stream}", stream)
}

/// `rtmp://host[:port]/app/key...` -> (`host:port`, app, key, tcUrl), read by a URL parser
/// (`rtmp://[::1]/live/x` is host `::1`, port 1935). A query (`?txSecret=..`) stays on the key,
/// where origins look for it.
pub fn parse_url(text: &str) -> anyhow::Result<(String, String, String, String)> {
    let url = url::Url::parse(text).with_context(|| format!("push URL {text}"))?;
    if url.scheme() != "rtmp" {
        bail!("not an rtmp:// URL: {text}");
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("no host in {text}"))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let addr = format!("{host}:{}", url.port().unwrap_or(1935));
    let path = url.path().trim_start_matches('/');
    let (app, key) = path.split_once('/').unwrap_or((path, ""));
    if app.is_empty() {
        bail!("no app in {text}");
    }
    let key = match url.query() {
        Some(q) => format!("{key}?{q}"),
        None => key.to_string(),
    };
    Ok((addr, app.to_string(), key, format!("rtmp://{authority}/{app}")))
}

/// How long a push waits before reconnecting: 1 s doubling to 30 s, back to 1 s after a push that
/// was healthy (publishing accepted and media sent for [`HEALTHY_AFTER`]), however short.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

/// A push that has sent media this long after its publish was accepted counts as healthy.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(3);

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait after an attempt that ended; `healthy` if it had been healthy.
    pub fn after(&mut self, healthy: bool) -> Duration {
        if healthy {
            self.next = BACKOFF_MIN;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// Keeps one push task per (matching stream, push entry) until `shutdown`.
pub async fn run_pushes(hub: Arc<Hub>, cfg: RtmpConfig, shutdown: CancellationToken) {
    if cfg.push.is_empty() {
        return;
    }
    // (stream name, entry index) -> (the stream pushed, its task)
    let mut tasks: HashMap<(String, usize), (Arc<Stream>, JoinHandle<()>)> = HashMap::new();
    loop {
        let streams = hub.list();
        for stream in &streams {
            for (i, entry) in cfg.push.iter().enumerate() {
                if !matches(&entry.stream, &stream.name) {
                    continue;
                }
                let key = (stream.name.clone(), i);
                if tasks.get(&key).is_some_and(|(s, _)| Arc::ptr_eq(s, stream)) {
                    continue;
                }
                if let Some((_, old)) = tasks.remove(&key) {
                    old.abort();
                }
                let url = push_url(entry, &stream.name);
                info!(stream = %stream.name, %url, "RTMP push starts");
                stream.event("push", &format!("RTMP push to {url} starts"));
                let task =
                    tokio::spawn(push_task(stream.clone(), url, cfg.push_timeout.0, cfg.hevc, shutdown.child_token()));
                tasks.insert(key, (stream.clone(), task));
            }
        }
        // Forget streams that are gone and whose task finished.
        tasks.retain(|(name, _), (s, t)| {
            !t.is_finished() || streams.iter().any(|x| x.name == *name && Arc::ptr_eq(x, s))
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    for (_, (_, t)) in tasks {
        let _ = t.await;
    }
}

async fn push_task(stream: Arc<Stream>, url: String, timeout: Duration, hevc: HevcFlv, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let mut healthy = false;
        let wait = match push_once(&stream, &url, timeout, hevc, &shutdown, &mut healthy).await {
            Ok(()) => {
                info!(stream = %stream.name, %url, "RTMP push finished");
                stream.event("push", &format!("RTMP push to {url} finished"));
                return;
            }
            Err(e) => {
                let wait = backoff.after(healthy);
                warn!(stream = %stream.name, %url, "RTMP push failed: {e:#}; retrying in {wait:?}");
                stream.event("push", &format!("RTMP push to {url} failed: {e:#}; retrying in {wait:?}"));
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // A stream that ended while we were away is not pushed again.
        if stream.subscribe_as("push").recv().await.is_err() {
            return;
        }
    }
}

fn session_err(e: ClientSessionError) -> anyhow::Error {
    anyhow!("RTMP client: {e:?}")
}

fn handle_input(
    session: &mut ClientSession,
    guard: &mut RtmpCommandGuard,
    bytes: &[u8],
) -> anyhow::Result<Vec<ClientSessionResult>> {
    super::rtmp::handle_input(session, guard, bytes).context("from the origin")
}

struct Client {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    session: ClientSession,
    guard: RtmpCommandGuard,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, results: Vec<ClientSessionResult>) -> anyhow::Result<Vec<ClientSessionEvent>> {
        let (bytes, events) = super::rtmp::split_results(results);
        if !bytes.is_empty() {
            write_timeout(&mut self.wr, &bytes, self.timeout).await?;
        }
        Ok(events)
    }

    /// Reads until `want` is raised (each read bounded by the timeout); fails on a rejection.
    async fn wait_for(&mut self, want: fn(&ClientSessionEvent) -> bool, step: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let n = read_timeout(&mut self.rd, &mut self.buf, left).await.with_context(|| step.to_string())?;
            let results = handle_input(&mut self.session, &mut self.guard, &self.buf[..n])?;
            for e in self.send(results).await? {
                if want(&e) {
                    return Ok(());
                }
                if let ClientSessionEvent::ConnectionRequestRejected { description } = e {
                    bail!("{step}: rejected: {description}");
                }
            }
        }
    }
}

async fn push_once(
    stream: &Arc<Stream>,
    url: &str,
    timeout: Duration,
    hevc: HevcFlv,
    shutdown: &CancellationToken,
    healthy: &mut bool,
) -> anyhow::Result<()> {
    let (addr, app, key, tc_url) = parse_url(url)?;
    let sock = tokio::time::timeout(timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| anyhow!("connect to {addr}: timed out"))?
        .with_context(|| format!("connect to {addr}"))?;
    let _ = sock.set_nodelay(true);
    let mut sock = sock;
    let leftover = super::rtmp::handshake(&mut sock, timeout).await?;
    let (rd, wr) = sock.into_split();
    let buf = vec![0u8; 64 * 1024];
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(tc_url);
    let (session, results) = ClientSession::new(config).map_err(session_err)?;
    let mut c = Client { rd, wr, session, guard: RtmpCommandGuard::default(), timeout, buf };
    c.send(results).await?;
    if !leftover.is_empty() {
        let results = handle_input(&mut c.session, &mut c.guard, &leftover)?;
        c.send(results).await?;
    }
    let r = c.session.request_connection(app).map_err(session_err)?;
    c.send(vec![r]).await?;
    c.wait_for(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted), "connect").await?;
    let r = c.session.request_publishing(key, PublishRequestType::Live).map_err(session_err)?;
    c.send(vec![r]).await?;
    c.wait_for(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted), "publish").await?;
    info!(stream = %stream.name, %url, "RTMP push publishing");
    stream.event("push", &format!("RTMP push to {url} publishing"));

    let publishing = tokio::time::Instant::now();
    let mut sub = stream.subscribe_as("push");
    let mut flow = FlvFlow::new(&stream.name, hevc);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = c.rd.read(&mut c.buf) => {
                let n = r?;
                if n == 0 {
                    bail!("the origin closed the connection");
                }
                let results = handle_input(&mut c.session, &mut c.guard, &c.buf[..n])?;
                c.send(results).await?;
            }
            f = sub.recv() => {
                let Ok(frame) = f else { break };
                flow.push(&frame, &mut out);
                let mut results = Vec::with_capacity(out.len());
                for o in out.drain(..) {
                    results.push(match o {
                        Out::Meta(m) => c.session.publish_metadata(&m),
                        Out::Video(b, ts) => c.session.publish_video_data(b, ts, false),
                        Out::Audio(b, ts) => c.session.publish_audio_data(b, ts, false),
                    }.map_err(session_err)?);
                }
                c.send(results).await?;
                *healthy |= publishing.elapsed() >= HEALTHY_AFTER;
            }
        }
    }
    // The stream ended (or shutdown): unpublish cleanly so the origin finalises its file.
    if let Ok(results) = c.session.stop_publishing() {
        let _ = c.send(results).await;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut c.wr).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_urls() {
        assert!(matches("rtp/*", "rtp/0BEBC201"));
        assert!(matches("*", "live/a/b"));
        assert!(!matches("rtp/*", "live/x"));
        assert!(matches("a*c*e", "abcde"));
        assert!(!matches("a*c*e", "abde"));
        assert!(matches("live/x", "live/x"));
        let e = PushConfig { stream: "*".into(), url: "rtmp://h/app/{stream}".into() };
        assert_eq!(push_url(&e, "rtp/1"), "rtmp://h/app/rtp/1");
        let (addr, app, key, tc) = parse_url("rtmp://127.0.0.1:1936/live/rtp/1").unwrap();
        assert_eq!((addr.as_str(), app.as_str(), key.as_str()), ("127.0.0.1:1936", "live", "rtp/1"));
        assert_eq!(tc, "rtmp://127.0.0.1:1936/live");
        assert_eq!(parse_url("rtmp://h/live").unwrap().0, "h:1935");
        assert!(parse_url("http://h/x").is_err());
        // IPv6 literals, ports and queries (issue 8: `[::1]` was read as a host with no port).
        let (addr, app, key, tc) = parse_url("rtmp://[::1]/app/key").unwrap();
        assert_eq!((addr.as_str(), app.as_str(), key.as_str()), ("[::1]:1935", "app", "key"));
        assert_eq!(tc, "rtmp://[::1]/app");
        assert!(addr.parse::<std::net::SocketAddr>().is_ok());
        assert_eq!(parse_url("rtmp://[::1]:1936/app/k").unwrap().0, "[::1]:1936");
        let (_, _, key, _) = parse_url("rtmp://h/live/cam1?txSecret=ab&txTime=FF").unwrap();
        assert_eq!(key, "cam1?txSecret=ab&txTime=FF");
        assert!(parse_url("rtmp:///live/x").is_err());
        assert!(parse_url("rtmp://h/").is_err());
    }

    #[test]
    fn the_backoff_doubles_and_resets_after_a_healthy_push() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.after(false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        // A push that dropped after 18 s of healthy publishing retries at once, not in 30 s.
        assert_eq!(b.after(true), Duration::from_secs(1));
        assert_eq!(b.after(false), Duration::from_secs(2));
    }
}
