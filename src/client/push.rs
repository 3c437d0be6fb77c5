//! RTMP pushes of one hub stream to N origins: the one push implementation, used by channels
//! (`"push": [...]`) and by the static `[[rtmp.push]]` entries (`rtmp_push::run_pushes`).
//!
//! Each URL has its own task, a plain hub subscriber ("push") that never slows ingest. A task
//! waits for the stream to be live, connects, handshakes, sends connect / createStream / publish
//! (each step bounded by the push timeout), subscribes (so it starts at the GOP cache) and sends
//! metadata, sequence headers and frames; a send stalled longer than the timeout disconnects.
//! When the origin goes away it reconnects with a backoff of 1 s doubling to 30 s (back to 1 s
//! after a healthy push); when the stream ends it waits for it to come back. Every state change
//! goes to the stream's own log and to the notifier seam ([`PushNotifier`]). [`PushSet::stop`]
//! unpublishes (deleteStream) and closes every connection, bounded by a deadline.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionError, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::rtmp_push::{parse_url, Backoff, HEALTHY_AFTER};
use crate::config::{HevcFlv, RtmpConfig};
use crate::hub::{Hub, Stream};
use crate::proto::flv_flow::{FlvFlow, Out};
use crate::proto::rtmp_guard::RtmpCommandGuard;
use crate::util::io::{read_timeout, write_timeout};

/// How often a waiting push looks for its stream.
const POLL: Duration = Duration::from_millis(250);

/// How a push behaves: the per-step timeout (`rtmp.push_timeout`), how HEVC is put in FLV, and
/// how long [`PushSet::stop`] waits for the clean end before cutting the connections.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    pub timeout: Duration,
    pub hevc: HevcFlv,
    pub stop_deadline: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { timeout: Duration::from_secs(5), hevc: HevcFlv::Enhanced, stop_deadline: Duration::from_secs(3) }
    }
}

impl PushOptions {
    /// The options `[rtmp]` gives.
    pub fn of(cfg: &RtmpConfig) -> PushOptions {
        PushOptions { timeout: cfg.push_timeout.0, hevc: cfg.hevc, ..PushOptions::default() }
    }
}

/// The state of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushState {
    /// The stream is not live: the push waits for it.
    Waiting,
    Connecting,
    Pushing,
    /// The last attempt failed; the next one starts after a backoff.
    Retrying,
    Stopped,
}

impl PushState {
    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Waiting => "waiting",
            PushState::Connecting => "connecting",
            PushState::Pushing => "pushing",
            PushState::Retrying => "retrying",
            PushState::Stopped => "stopped",
        }
    }
}

/// One push as the API shows it. `url` has its credentials (password, query) redacted.
#[derive(Debug, Clone, Serialize)]
pub struct PushView {
    pub url: String,
    pub state: PushState,
    pub reason: String,
    /// RFC 3339 UTC time of the last state change.
    pub since: String,
    /// Bytes sent to the origin, over every connection.
    pub bytes: u64,
    /// Failed attempts (each followed by a reconnect).
    pub reconnects: u64,
}

/// A push state change, as the notifier is told (stream_state callbacks).
#[derive(Debug, Clone)]
pub struct PushChange {
    pub stream: String,
    /// Redacted.
    pub url: String,
    pub state: PushState,
    /// The state before this change.
    pub previous: PushState,
    /// `pushing` again after failed attempts.
    pub recovered: bool,
    pub reason: String,
}

/// Where push state changes go besides the stream's log: the seam for the callbacks notifier
/// (`stream_state` events). Cheap to clone; [`PushNotifier::default`] tells nobody.
#[derive(Clone, Default)]
pub struct PushNotifier(Option<Arc<PushHook>>);

type PushHook = dyn Fn(&PushChange) + Send + Sync;

impl PushNotifier {
    pub fn new(f: impl Fn(&PushChange) + Send + Sync + 'static) -> PushNotifier {
        PushNotifier(Some(Arc::new(f)))
    }

    fn tell(&self, change: &PushChange) {
        if let Some(f) = &self.0 {
            f(change);
        }
    }
}

/// Push changes as `stream_state` callbacks (D113): a push that fails is the stream's
/// `stalled` with the reason (e.g. "push to rtmp://h/live/x: push stalled 5s, retrying in 1s"),
/// and `resumed` when it publishes again. Waiting, connecting and stopping follow the stream's
/// own life, which the hub reports itself.
impl From<crate::notify::Notifier> for PushNotifier {
    fn from(n: crate::notify::Notifier) -> PushNotifier {
        if !n.is_enabled() {
            return PushNotifier::default();
        }
        PushNotifier::new(move |c: &PushChange| {
            use crate::notify::{Event, StreamState};
            let state = match c.state {
                PushState::Retrying => StreamState::Stalled,
                PushState::Pushing if c.recovered => StreamState::Resumed,
                _ => return,
            };
            n.emit(Event::StreamState {
                stream: c.stream.clone(),
                channel: None,
                state,
                reason: format!(
                    "push to {}: {}",
                    c.url,
                    if c.reason.is_empty() { c.state.as_str() } else { &c.reason }
                ),
            });
        })
    }
}

/// `rtmp://user:pass@host/app/key?txSecret=..` -> `rtmp://user:***@host/app/key?***`: what views
/// and logs show (passwords and signed queries are credentials; the key path stays, it names the
/// stream).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query().is_some() {
                u.set_query(Some("***"));
            }
            u.to_string()
        }
        // Unparsable: show the part before any query and userinfo.
        Err(_) => {
            let head = url.split('?').next().unwrap_or(url);
            match head.rsplit_once('@') {
                Some((_, tail)) => format!("***@{tail}"),
                None => head.to_string(),
            }
        }
    }
}

struct Status {
    state: PushState,
    reason: String,
    since: SystemTime,
}

/// One push's shared state: written by its task, read by views.
struct Shared {
    stream: String,
    url: String,
    shown: String,
    status: Mutex<Status>,
    bytes: AtomicU64,
    reconnects: AtomicU64,
    /// Failed since it last pushed.
    failing: std::sync::atomic::AtomicBool,
    notifier: PushNotifier,
}

impl Shared {
    fn set(&self, stream: Option<&Stream>, state: PushState, reason: &str) {
        let previous = {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if s.state == state && s.reason == reason {
                return;
            }
            let previous = s.state;
            *s = Status { state, reason: reason.to_string(), since: SystemTime::now() };
            previous
        };
        let recovered = match state {
            PushState::Retrying => {
                self.failing.store(true, Ordering::Relaxed);
                false
            }
            PushState::Pushing => self.failing.swap(false, Ordering::Relaxed),
            _ => false,
        };
        let text = format!(
            "RTMP push to {}: {}{}{reason}",
            self.shown,
            state.as_str(),
            if reason.is_empty() { "" } else { ": " }
        );
        match state {
            PushState::Retrying => warn!(stream = %self.stream, "{text}"),
            _ => info!(stream = %self.stream, "{text}"),
        }
        if let Some(s) = stream {
            s.event("push", &text);
        }
        self.notifier.tell(&PushChange {
            stream: self.stream.clone(),
            url: self.shown.clone(),
            state,
            previous,
            recovered,
            reason: reason.to_string(),
        });
    }

    fn view(&self) -> PushView {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let ms = s.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        PushView {
            url: self.shown.clone(),
            state: s.state,
            reason: s.reason.clone(),
            since: format!("{}Z", crate::util::format_time(i64::try_from(ms).unwrap_or(i64::MAX), true)),
            bytes: self.bytes.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// The pushes of one hub stream to N URLs, each with its own task and state.
pub struct PushSet {
    stream: String,
    pushes: Vec<Arc<Shared>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: CancellationToken,
    deadline: Duration,
}

impl PushSet {
    /// Starts pushing `stream_name` to every URL with the default options (5 s step timeout).
    /// The pushes end on [`PushSet::stop`], when `shutdown` is cancelled, or when the set is dropped.
    pub fn start(
        hub: Arc<Hub>,
        stream_name: &str,
        urls: Vec<String>,
        notifier: impl Into<PushNotifier>,
        shutdown: CancellationToken,
    ) -> PushSet {
        PushSet::start_with(hub, stream_name, urls, notifier, shutdown, PushOptions::default())
    }

    pub fn start_with(
        hub: Arc<Hub>,
        stream_name: &str,
        urls: Vec<String>,
        notifier: impl Into<PushNotifier>,
        shutdown: CancellationToken,
        opts: PushOptions,
    ) -> PushSet {
        let notifier = notifier.into();
        let stop = shutdown.child_token();
        let mut pushes = Vec::with_capacity(urls.len());
        let mut tasks = Vec::with_capacity(urls.len());
        for url in urls {
            let shared = Arc::new(Shared {
                stream: stream_name.to_string(),
                shown: redact(&url),
                url,
                status: Mutex::new(Status {
                    state: PushState::Waiting,
                    reason: String::new(),
                    since: SystemTime::now(),
                }),
                bytes: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                failing: Default::default(),
                notifier: notifier.clone(),
            });
            tasks.push(tokio::spawn(push_task(hub.clone(), shared.clone(), opts, stop.clone())));
            pushes.push(shared);
        }
        PushSet {
            stream: stream_name.to_string(),
            pushes,
            tasks: Mutex::new(tasks),
            stop,
            deadline: opts.stop_deadline,
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Every push's state, in the order of the URLs.
    pub fn views(&self) -> Vec<PushView> {
        self.pushes.iter().map(|p| p.view()).collect()
    }

    /// Ends every push cleanly (deleteStream, then the TCP close) and waits for it, at most the
    /// stop deadline; a push still running then is cut (aborted). Returns how many were cut.
    /// Idempotent.
    pub async fn stop(&self) -> usize {
        self.stop.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut cut = 0;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                cut += 1;
            }
        }
        for p in &self.pushes {
            if cut > 0 && p.status.lock().unwrap_or_else(|e| e.into_inner()).state != PushState::Stopped {
                warn!(stream = %self.stream, url = %p.shown, "RTMP push cut: it did not end within {:?}", self.deadline);
            }
            p.set(None, PushState::Stopped, "stopped");
        }
        cut
    }
}

impl Drop for PushSet {
    fn drop(&mut self) {
        // The tasks end on their own (cleanly) once cancelled.
        self.stop.cancel();
    }
}

/// How one connection ended without an error.
enum End {
    Stopped,
    StreamEnded,
}

async fn push_task(hub: Arc<Hub>, p: Arc<Shared>, opts: PushOptions, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    // The stream instance last pushed until it ended: not pushed again.
    let mut ended: Option<std::sync::Weak<Stream>> = None;
    loop {
        let stream = loop {
            if let Some(s) = hub.get(&p.stream) {
                let same = ended.as_ref().and_then(|w| w.upgrade()).is_some_and(|e| Arc::ptr_eq(&e, &s));
                if !s.is_closed() && !same {
                    break s;
                }
            }
            if p.status.lock().unwrap_or_else(|e| e.into_inner()).state != PushState::Waiting {
                p.set(None, PushState::Waiting, "the stream is not live");
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    p.set(None, PushState::Stopped, "stopped");
                    return;
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        };
        p.set(Some(&stream), PushState::Connecting, "");
        let mut healthy = false;
        match push_once(&stream, &p, opts, &stop, &mut healthy).await {
            Ok(End::Stopped) => {
                p.set(Some(&stream), PushState::Stopped, "stopped");
                return;
            }
            Ok(End::StreamEnded) => {
                ended = Some(Arc::downgrade(&stream));
                backoff = Backoff::default();
                p.set(Some(&stream), PushState::Waiting, "the stream ended");
            }
            Err(e) => {
                p.reconnects.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.after(healthy);
                let stalled = stalled_sending(&e);
                let reason = if stalled {
                    format!("push stalled {}s, retrying in {}s", opts.timeout.as_secs(), wait.as_secs())
                } else {
                    format!("{e:#}; retrying in {}s", wait.as_secs())
                };
                p.set(Some(&stream), PushState::Retrying, &reason);
                tokio::select! {
                    _ = stop.cancelled() => {
                        p.set(Some(&stream), PushState::Stopped, "stopped");
                        return;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Marker context of errors raised while media flowed (a timeout then is a stalled origin).
const SENDING: &str = "sending media";

/// True when a send of media timed out: the origin stopped reading.
fn stalled_sending(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == SENDING)
        && e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut))
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

struct Client<'a> {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    session: ClientSession,
    guard: RtmpCommandGuard,
    timeout: Duration,
    buf: Vec<u8>,
    bytes: &'a AtomicU64,
}

impl Client<'_> {
    async fn send(&mut self, results: Vec<ClientSessionResult>) -> anyhow::Result<Vec<ClientSessionEvent>> {
        let (bytes, events) = super::rtmp::split_results(results);
        if !bytes.is_empty() {
            write_timeout(&mut self.wr, &bytes, self.timeout).await?;
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
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
    p: &Shared,
    opts: PushOptions,
    stop: &CancellationToken,
    healthy: &mut bool,
) -> anyhow::Result<End> {
    let timeout = opts.timeout;
    let (addr, app, key, tc_url) = parse_url(&p.url)?;
    let sock = tokio::select! {
        _ = stop.cancelled() => return Ok(End::Stopped),
        r = tokio::time::timeout(timeout, TcpStream::connect(&addr)) => r
            .map_err(|_| anyhow!("connect to {addr}: timed out"))?
            .with_context(|| format!("connect to {addr}"))?,
    };
    let _ = sock.set_nodelay(true);
    let mut sock = sock;
    let leftover = super::rtmp::handshake(&mut sock, timeout).await?;
    let (rd, wr) = sock.into_split();
    let buf = vec![0u8; 64 * 1024];
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(tc_url);
    let (session, results) = ClientSession::new(config).map_err(session_err)?;
    let mut c = Client { rd, wr, session, guard: RtmpCommandGuard::default(), timeout, buf, bytes: &p.bytes };
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
    p.set(Some(stream), PushState::Pushing, "");

    let publishing = tokio::time::Instant::now();
    let mut sub = stream.subscribe_as("push");
    let mut flow = FlvFlow::new(&stream.name, opts.hevc);
    let mut out = Vec::new();
    let end = loop {
        tokio::select! {
            _ = stop.cancelled() => break End::Stopped,
            r = c.rd.read(&mut c.buf) => {
                let n = r?;
                if n == 0 {
                    bail!("the origin closed the connection");
                }
                let results = handle_input(&mut c.session, &mut c.guard, &c.buf[..n])?;
                c.send(results).await?;
            }
            f = sub.recv() => {
                let Ok(frame) = f else { break End::StreamEnded };
                flow.push(&frame, &mut out);
                let mut results = Vec::with_capacity(out.len());
                for o in out.drain(..) {
                    results.push(match o {
                        Out::Meta(m) => c.session.publish_metadata(&m),
                        Out::Video(b, ts) => c.session.publish_video_data(b, ts, false),
                        Out::Audio(b, ts) => c.session.publish_audio_data(b, ts, false),
                    }.map_err(session_err)?);
                }
                c.send(results).await.context(SENDING)?;
                *healthy |= publishing.elapsed() >= HEALTHY_AFTER;
            }
        }
    };
    // Unpublish cleanly (deleteStream) so the origin finalises its file, then close.
    if let Ok(results) = c.session.stop_publishing() {
        let _ = c.send(results).await;
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut c.wr).await;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact("rtmp://u:secret@h:1936/live/cam1"), "rtmp://u:***@h:1936/live/cam1");
        assert_eq!(redact("rtmp://h/live/cam1?txSecret=ab&txTime=FF"), "rtmp://h/live/cam1?***");
        assert_eq!(redact("rtmp://h/live/cam1"), "rtmp://h/live/cam1");
        assert!(!redact("not a url pass@h?key=secret").contains("secret"));
    }
}
