//! Callbacks to a control center (cc): JSON POSTs of gateway and stream events, and the
//! `on_publish`/`on_play` access hooks (D93..D99).
//!
//! [`Notifier::emit`] never blocks and never awaits: it serialises the event and puts it in the
//! sans-IO [`outbox::Outbox`] (bounded in bytes, oldest dropped first); one background task
//! POSTs what is due, one event at a time per target, with retries. A slow or dead cc costs a
//! mutex and a `Vec` per event on the caller's side, nothing more.
//!
//! Layer: below the hub; imports only util and config.
pub mod outbox;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use crate::config::CallbacksConfig;
pub use outbox::{EventKind, OutboxStats};
pub use state::StartReason;

/// A stream's state as reported in `stream_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// A channel is starting its source (no hub stream yet).
    Starting,
    /// The first frame arrived.
    Live,
    /// No frame for `[callbacks] stall_after`.
    Stalled,
    /// Frames again after `stalled`.
    Resumed,
    /// The stream ended (reason says why).
    Stopped,
    /// A channel could not start its source.
    Failed,
}

/// One GB ingest stream in a `traffic_report`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrafficStream {
    pub stream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The SSRC in its 10-digit GB form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssrc: Option<String>,
    /// First source address.
    pub source: String,
    /// `udp` or `tcp`.
    pub transport: String,
    /// Totals since the stream started.
    pub bytes: u64,
    pub packets: u64,
    pub lost: u64,
    /// Bits per second over the last interval.
    pub bitrate: u64,
    /// Players watching now (all protocols).
    pub players: usize,
    /// Timestamp repairs since the stream started.
    pub timestamp_repairs: u64,
}

/// An event to POST. Serialised with an `event` field naming its kind, plus `instance_id`,
/// `seq` and `time` added by the notifier.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    GatewayStarted {
        version: String,
        instance_id: String,
        start_reason: StartReason,
        /// The channels restored (their API views).
        channels: Vec<serde_json::Value>,
    },
    StreamState {
        stream: String,
        /// The channel the stream belongs to; filled from [`Notifier::bind_channel`] when `None`.
        channel: Option<String>,
        state: StreamState,
        reason: String,
    },
    UnknownSsrc {
        /// 10-digit GB form.
        ssrc: String,
        source: SocketAddr,
        /// `udp` or `tcp`.
        transport: String,
        #[serde(serialize_with = "rfc3339")]
        first_seen: SystemTime,
    },
    TrafficReport {
        /// The period the bitrates cover, in milliseconds.
        interval_ms: u64,
        streams: Vec<TrafficStream>,
    },
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::GatewayStarted { .. } => EventKind::GatewayStarted,
            Event::StreamState { .. } => EventKind::StreamState,
            Event::UnknownSsrc { .. } => EventKind::UnknownSsrc,
            Event::TrafficReport { .. } => EventKind::TrafficReport,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

/// What an access hook asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    Publish,
    Play,
}

/// An `on_publish` / `on_play` question.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRequest {
    #[serde(skip)]
    pub kind: AccessKind,
    pub stream: String,
    /// `rtmp`, `rtsp`, `http-flv` or `ws-flv`.
    pub protocol: &'static str,
    pub peer: SocketAddr,
    /// The query string of the URL the client used (credentials such as `sign=` included: the
    /// cc may check its own tokens), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

/// The cc's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// No hook configured, or the cc failed (timeout, refused, 5xx, unreadable answer): the
    /// configured `[auth]` rule decides. The text says why (empty when no hook).
    Fallback(String),
}

/// Access hook counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthorizeStats {
    pub asked: u64,
    pub allowed: u64,
    pub denied: u64,
    pub fallback: u64,
}

/// Everything the notifier counts, for `/metrics` and `GET /api/v1/callbacks`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NotifierSnapshot {
    pub enabled: bool,
    pub instance_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_reason: Option<StartReason>,
    /// Target of each event kind (credentials redacted).
    pub targets: std::collections::BTreeMap<&'static str, String>,
    pub report_interval_ms: u64,
    pub outbox: OutboxStats,
    pub authorize: AuthorizeStats,
    /// `unknown_ssrc` events not sent because the SSRC was reported within the interval.
    pub unknown_ssrc_suppressed: u64,
    /// The last delivery failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The handle every layer holds. Cheap to clone; [`Notifier::disabled`] does nothing at all.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    /// Dropped with the last handle: the sender task ends (it holds `inner` itself).
    _alive: Option<Arc<tokio_util::sync::DropGuard>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("enabled", &self.inner.is_some()).finish()
    }
}

/// Distinct SSRCs remembered for the once-per-interval rule; beyond it, the oldest are forgotten.
const MAX_SSRCS_REMEMBERED: usize = 4096;
/// Bytes read of a cc's answer.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

struct Core {
    outbox: outbox::Outbox,
    seq: u64,
    /// SSRC -> when it was last reported.
    ssrc_reported: HashMap<u32, Instant>,
    last_error: Option<String>,
}

type HttpClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Full<Bytes>>;

struct Inner {
    cfg: CallbacksConfig,
    instance_id: String,
    start_reason: StartReason,
    state_file: Option<std::path::PathBuf>,
    core: Mutex<Core>,
    wake: tokio::sync::Notify,
    /// Told when the outbox becomes empty (for `flush`).
    drained: tokio::sync::Notify,
    channels: Mutex<HashMap<String, String>>,
    client: HttpClient,
    unknown_ssrc_suppressed: AtomicU64,
    auth: [AtomicU64; 4],
    log_limit: Mutex<crate::util::RateLimit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Notifier {
    /// A notifier that sends nothing (no `[callbacks]` target).
    pub fn disabled() -> Notifier {
        Notifier { inner: None, _alive: None }
    }

    /// Starts the notifier for `cfg` (disabled when no event has a target): reads and rewrites
    /// the start-reason state file, and spawns the sender task (call within a tokio runtime).
    /// `sip_db` places the default state file next to the SIP database.
    pub fn start(cfg: &CallbacksConfig, sip_db: Option<&std::path::Path>) -> Notifier {
        if !cfg.enabled() {
            return Notifier::disabled();
        }
        let instance_id = random_id();
        let state_file = cfg.state_file.clone().or_else(|| sip_db.map(|db| db.with_file_name("gbgate-state.json")));
        let start_reason = state::begin(state_file.as_deref(), env!("CARGO_PKG_VERSION"), &instance_id);
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.timeout.0));
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            instance_id,
            start_reason,
            state_file,
            core: Mutex::new(Core {
                outbox: outbox::Outbox::new(outbox::OutboxConfig {
                    max_bytes: cfg.outbox_bytes,
                    retries: cfg.retries,
                    retry_initial: cfg.retry_initial.0,
                    retry_max: cfg.retry_max.0,
                }),
                seq: 0,
                ssrc_reported: HashMap::new(),
                last_error: None,
            }),
            wake: tokio::sync::Notify::new(),
            drained: tokio::sync::Notify::new(),
            channels: Mutex::new(HashMap::new()),
            client,
            unknown_ssrc_suppressed: AtomicU64::new(0),
            auth: Default::default(),
            log_limit: Mutex::new(crate::util::RateLimit::new(Duration::from_secs(10))),
        });
        tracing::info!(instance_id = %inner.instance_id, start_reason = ?inner.start_reason, "callbacks on");
        let alive = tokio_util::sync::CancellationToken::new();
        tokio::spawn(send_loop(inner.clone(), alive.clone()));
        Notifier { inner: Some(inner), _alive: Some(Arc::new(alive.drop_guard())) }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// This process's random instance id (empty when disabled).
    pub fn instance_id(&self) -> &str {
        self.inner.as_ref().map_or("", |i| &i.instance_id)
    }

    pub fn start_reason(&self) -> Option<StartReason> {
        self.inner.as_ref().map(|i| i.start_reason)
    }

    /// `traffic_report` period (and the unknown-SSRC window).
    pub fn report_interval(&self) -> Option<Duration> {
        self.inner.as_ref().filter(|i| i.target(EventKind::TrafficReport).is_some()).map(|i| i.cfg.report_interval.0)
    }

    /// How long a live stream may go without a frame before it is `stalled`, when `stream_state`
    /// has a target.
    pub fn stall_after(&self) -> Option<Duration> {
        self.inner.as_ref().filter(|i| i.target(EventKind::StreamState).is_some()).map(|i| i.cfg.stall_after.0)
    }

    /// Whether events of `kind` go anywhere (lets emitters skip building them).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.inner.as_ref().is_some_and(|i| i.target(kind).is_some())
    }

    /// `gateway_started` with this process's version, instance id and start reason.
    pub fn gateway_started(&self, channels: Vec<serde_json::Value>) {
        if let Some(i) = &self.inner {
            self.emit(Event::GatewayStarted {
                version: env!("CARGO_PKG_VERSION").to_string(),
                instance_id: i.instance_id.clone(),
                start_reason: i.start_reason,
                channels,
            });
        }
    }

    /// Queues `event` for its target. Never blocks on the network; over the outbox budget the
    /// oldest queued events are dropped (counted).
    pub fn emit(&self, mut event: Event) {
        let Some(inner) = &self.inner else { return };
        let kind = event.kind();
        let Some(url) = inner.target(kind) else { return };
        let now = Instant::now();
        if let Event::StreamState { stream, channel, .. } = &mut event {
            if channel.is_none() {
                *channel = lock(&inner.channels).get(stream.as_str()).cloned();
            }
        }
        let mut core = lock(&inner.core);
        if let Event::UnknownSsrc { ssrc, .. } = &event {
            let key = ssrc.parse::<u32>().unwrap_or(0);
            if !ssrc_gate(&mut core.ssrc_reported, key, now, inner.cfg.report_interval.0) {
                inner.unknown_ssrc_suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        core.seq += 1;
        let seq = core.seq;
        let body = inner.body(&event, seq);
        let dropped = core.outbox.push(url, seq, kind, body, now);
        drop(core);
        if dropped > 0 {
            inner.log(|| format!("callback outbox full: {dropped} oldest event(s) dropped"));
        }
        inner.wake.notify_one();
    }

    /// Names the channel stream `stream` belongs to, for its `stream_state` events.
    pub fn bind_channel(&self, stream: &str, channel: &str) {
        if let Some(i) = &self.inner {
            lock(&i.channels).insert(stream.to_string(), channel.to_string());
        }
    }

    pub fn unbind_channel(&self, stream: &str) {
        if let Some(i) = &self.inner {
            lock(&i.channels).remove(stream);
        }
    }

    /// The channel `stream` is bound to.
    pub fn channel_of(&self, stream: &str) -> Option<String> {
        self.inner.as_ref().and_then(|i| lock(&i.channels).get(stream).cloned())
    }

    /// Asks the cc's `on_publish` / `on_play` hook, within `[callbacks] authorize_timeout`.
    /// Without a hook this returns [`Decision::Fallback`] at once.
    pub async fn authorize(&self, req: AccessRequest) -> Decision {
        let Some(inner) = &self.inner else { return Decision::Fallback(String::new()) };
        let kind = match req.kind {
            AccessKind::Publish => EventKind::OnPublish,
            AccessKind::Play => EventKind::OnPlay,
        };
        let Some(url) = inner.target(kind) else { return Decision::Fallback(String::new()) };
        let seq = {
            let mut core = lock(&inner.core);
            core.seq += 1;
            core.seq
        };
        let mut body = serde_json::to_value(&req).unwrap_or_default();
        decorate(&mut body, kind, &inner.instance_id, seq);
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        inner.auth[0].fetch_add(1, Ordering::Relaxed);
        let answer = post(&inner.client, url, body, inner.cfg.authorize_timeout.0, true).await;
        let decision = match answer {
            Ok((status, body)) => decide(status, &body),
            Err(e) => Decision::Fallback(e),
        };
        let slot = match &decision {
            Decision::Allow => 1,
            Decision::Deny(_) => 2,
            Decision::Fallback(_) => 3,
        };
        inner.auth[slot].fetch_add(1, Ordering::Relaxed);
        if let Decision::Fallback(why) = &decision {
            inner.log(|| format!("{} hook failed ({why}); the [auth] rule decides", kind.as_str()));
        }
        tracing::debug!(stream = %req.stream, peer = %req.peer, ?decision, "{} answered", kind.as_str());
        decision
    }

    /// Waits until every queued event is delivered or given up, or `deadline`; then marks the
    /// shutdown clean in the state file (the next start reports `restart`, not `crash`).
    pub async fn flush(&self, deadline: Instant) {
        let Some(inner) = &self.inner else { return };
        loop {
            let drained = inner.drained.notified();
            if lock(&inner.core).outbox.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), drained).await.is_err() {
                let left = lock(&inner.core).outbox.stats().queued;
                tracing::warn!(left, "callback outbox not empty at the shutdown deadline");
                break;
            }
        }
        state::end(inner.state_file.as_deref(), env!("CARGO_PKG_VERSION"), &inner.instance_id);
    }

    pub fn snapshot(&self) -> NotifierSnapshot {
        let Some(inner) = &self.inner else { return NotifierSnapshot::default() };
        let core = lock(&inner.core);
        let a = |i: usize| inner.auth[i].load(Ordering::Relaxed);
        NotifierSnapshot {
            enabled: true,
            instance_id: inner.instance_id.clone(),
            start_reason: Some(inner.start_reason),
            targets: EventKind::ALL.iter().filter_map(|k| inner.target(*k).map(|u| (k.as_str(), redact(u)))).collect(),
            report_interval_ms: inner.cfg.report_interval.0.as_millis() as u64,
            outbox: core.outbox.stats(),
            authorize: AuthorizeStats { asked: a(0), allowed: a(1), denied: a(2), fallback: a(3) },
            unknown_ssrc_suppressed: inner.unknown_ssrc_suppressed.load(Ordering::Relaxed),
            last_error: core.last_error.clone(),
        }
    }
}

impl Inner {
    fn target(&self, kind: EventKind) -> Option<&str> {
        let c = &self.cfg;
        let own = match kind {
            EventKind::GatewayStarted => &c.gateway_started,
            EventKind::StreamState => &c.stream_state,
            EventKind::UnknownSsrc => &c.unknown_ssrc,
            EventKind::TrafficReport => &c.traffic_report,
            EventKind::OnPublish => &c.on_publish,
            EventKind::OnPlay => &c.on_play,
        };
        // `url` is the default of every event, the access hooks included (issue 10); an event's
        // own key set to "" turns that event off (D97).
        match own.as_deref() {
            Some("") => None,
            Some(u) => Some(u),
            None => c.url.as_deref().filter(|u| !u.is_empty()),
        }
    }

    fn body(&self, event: &Event, seq: u64) -> Bytes {
        let mut v = serde_json::to_value(event).unwrap_or_default();
        decorate(&mut v, event.kind(), &self.instance_id, seq);
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    fn log(&self, text: impl FnOnce() -> String) {
        if let Some(suppressed) = lock(&self.log_limit).check(Instant::now()) {
            tracing::warn!(suppressed, "{}", text());
        }
    }
}

/// Adds the envelope fields every callback carries.
fn decorate(v: &mut serde_json::Value, kind: EventKind, instance_id: &str, seq: u64) {
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), kind.as_str().into());
        o.insert("instance_id".into(), instance_id.into());
        o.insert("seq".into(), seq.into());
        o.insert("time".into(), humantime::format_rfc3339_millis(SystemTime::now()).to_string().into());
    }
}

/// Whether an unknown SSRC may be reported now (once per `interval`); remembers at most
/// [`MAX_SSRCS_REMEMBERED`] SSRCs (a flood of random SSRCs forgets the oldest, never grows).
fn ssrc_gate(seen: &mut HashMap<u32, Instant>, ssrc: u32, now: Instant, interval: Duration) -> bool {
    if seen.get(&ssrc).is_some_and(|t| now.duration_since(*t) < interval) {
        return false;
    }
    if seen.len() >= MAX_SSRCS_REMEMBERED && !seen.contains_key(&ssrc) {
        seen.retain(|_, t| now.duration_since(*t) < interval);
        if seen.len() >= MAX_SSRCS_REMEMBERED {
            // All recent: forget the oldest one.
            if let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                seen.remove(&oldest);
            }
        }
    }
    seen.insert(ssrc, now);
    true
}

/// The cc's answer to an access hook (D97): 2xx with `{"allow": true|false, "reason"?}`; 401/403
/// deny; anything else (an empty body included: a cc whose generic `url` acknowledges every POST
/// must not open the gateway) falls back to `[auth]`.
fn decide(status: u16, body: &[u8]) -> Decision {
    match status {
        200..=299 => {
            if body.iter().all(|b| b.is_ascii_whitespace()) {
                return Decision::Fallback("an answer without a decision".into());
            }
            #[derive(serde::Deserialize)]
            struct Answer {
                allow: bool,
                #[serde(default)]
                reason: Option<String>,
            }
            match serde_json::from_slice::<Answer>(body) {
                Ok(Answer { allow: true, .. }) => Decision::Allow,
                Ok(Answer { allow: false, reason }) => {
                    Decision::Deny(clip(reason.as_deref().unwrap_or("denied by the control center")))
                }
                Err(e) => Decision::Fallback(format!("unreadable answer: {e}")),
            }
        }
        401 | 403 => Decision::Deny(format!("denied by the control center (HTTP {status})")),
        s => Decision::Fallback(format!("HTTP {s}")),
    }
}

/// A peer's text, bounded for logs and error messages.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// `url` with any `user:password@` removed.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(invalid)".into(),
    }
}

fn random_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One JSON POST, bounded in time (connect + answer) and in answer size. For an event only the
/// status counts; for an access hook (`read_answer`) an answer over [`MAX_ANSWER_BYTES`] is an
/// error, never a truncated "allow".
async fn post(
    client: &HttpClient,
    url: &str,
    body: Bytes,
    timeout: Duration,
    read_answer: bool,
) -> Result<(u16, Bytes), String> {
    use http_body_util::BodyExt;
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("gbgate/", env!("CARGO_PKG_VERSION")))
        .body(http_body_util::Full::new(body))
        .map_err(|e| format!("bad request: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("POST {}: {e}", redact(url)))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await;
        match (body, read_answer) {
            (Ok(b), _) => Ok((status, b.to_bytes())),
            // Read (bounded) so the connection can be reused, but only the status counts.
            (Err(_), false) => Ok((status, Bytes::new())),
            (Err(e), true) => Err(format!("reading the answer: {e}")),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("POST {}: no answer within {}", redact(url), humantime::format_duration(timeout)))?
}

/// The sender task: starts what the outbox says is due, feeds outcomes back.
async fn send_loop(inner: Arc<Inner>, alive: tokio_util::sync::CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, outbox::Outcome, Option<String>)>();
    loop {
        let (dispatches, next) = {
            let mut core = lock(&inner.core);
            let d = core.outbox.poll(Instant::now());
            (d, core.outbox.next_due())
        };
        // At most one POST per target is in flight, so the tasks and the channel are bounded
        // by the number of targets (at most six).
        for d in dispatches {
            let (inner, tx) = (inner.clone(), tx.clone());
            tokio::spawn(async move {
                let result = post(&inner.client, &d.url, d.body, inner.cfg.timeout.0, false).await;
                let (outcome, err) = match result {
                    Ok((s, _)) if (200..300).contains(&s) => (outbox::Outcome::Delivered, None),
                    Ok((s, _)) => (outbox::Outcome::Failed, Some(format!("POST {}: HTTP {s}", redact(&d.url)))),
                    Err(e) => (outbox::Outcome::Failed, Some(e)),
                };
                if let Some(e) = &err {
                    inner.log(|| format!("{} seq {} attempt {}: {e}", d.kind.as_str(), d.seq, d.attempt));
                }
                let _ = tx.send((d.target, outcome, err));
            });
        }
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = alive.cancelled() => return,
            _ = inner.wake.notified() => {}
            Some((target, outcome, err)) = rx.recv() => {
                let mut core = lock(&inner.core);
                core.outbox.complete(target, outcome, Instant::now());
                if err.is_some() {
                    core.last_error = err;
                }
                if core.outbox.is_empty() {
                    inner.drained.notify_waiters();
                }
            }
            _ = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_decisions() {
        assert!(matches!(decide(200, b""), Decision::Fallback(_)));
        assert_eq!(decide(200, br#"{"allow": true}"#), Decision::Allow);
        assert_eq!(decide(200, br#"{"allow": false, "reason": "no"}"#), Decision::Deny("no".into()));
        assert!(matches!(decide(403, b""), Decision::Deny(_)));
        assert!(matches!(decide(500, b""), Decision::Fallback(_)));
        assert!(matches!(decide(200, b"yes"), Decision::Fallback(_)));
        assert!(matches!(decide(200, br#"{"allow": "yes"}"#), Decision::Fallback(_)));
    }

    #[test]
    fn unknown_ssrcs_once_per_interval_and_bounded() {
        let now = Instant::now();
        let iv = Duration::from_secs(1);
        let mut seen = HashMap::new();
        assert!(ssrc_gate(&mut seen, 7, now, iv));
        assert!(!ssrc_gate(&mut seen, 7, now + Duration::from_millis(999), iv));
        assert!(ssrc_gate(&mut seen, 7, now + iv, iv));
        for s in 0..10_000 {
            ssrc_gate(&mut seen, s, now + iv, iv);
        }
        assert!(seen.len() <= MAX_SSRCS_REMEMBERED);
    }

    #[test]
    fn bodies_carry_the_envelope() {
        let mut v = serde_json::to_value(Event::StreamState {
            stream: "cam1".into(),
            channel: Some("c1".into()),
            state: StreamState::Stalled,
            reason: "no data for 5s".into(),
        })
        .unwrap();
        decorate(&mut v, EventKind::StreamState, "abc", 9);
        assert_eq!(v["event"], "stream_state");
        assert_eq!(v["state"], "stalled");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["instance_id"], "abc");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("http://u:p@cc:80/x"), "http://cc/x");
    }
}
