//! The relay: `[[pull]]` sources pulled into the hub at boot or when a player asks (D84-D88).
//!
//! A layer above the servers and the pull clients. Each pulled name has one [`Slot`] with one
//! driver task, which alone connects, publishes (through [`Publisher`], never taking over a live
//! name) and stops the pull: many players asking at once join the slot's attempt series instead
//! of starting their own (single flight, D85). A player that asks for a name that is not live is
//! parked on the slot's watch channel, bounded per name and in total (D86), until the series
//! gives a stream with a keyframe in its GOP cache (it then starts from that keyframe) or gives
//! up, with the cause (D88). With nobody subscribed to it (players and pushes alike) for the
//! entry's `idle_stop`, a pull stops and releases its socket, hub stream and GOP cache (D87).
pub mod source;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::pull::{PullError, PullOptions};
use crate::config::PullConfig;
use crate::frame::Frame;
use crate::hub::{Hub, Source, Stream, StreamDemand, Takeover};
use crate::media::MediaKind;
use crate::server::publish::Publisher;
use crate::server::rtp::RtpShared;
use crate::util::RateLimit;
use source::PullSource;

/// Players parked waiting for one name; more are refused at once (counted).
pub const MAX_PARKED_PER_NAME: usize = 256;
/// Players parked waiting for any pull.
pub const MAX_PARKED_TOTAL: usize = 4096;
/// Names the relay keeps a slot for (live, starting, or failed and kept for the API); a stopped
/// template pull gives its slot up to a new name when full.
pub const MAX_SLOTS: usize = 1024;
/// Attempts remembered per slot for the API.
const ATTEMPTS_KEPT: usize = 16;
/// A fixed pull that keeps failing waits up to this between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a live pull looks at its subscriber count.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// What a pull is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    /// Not running (on demand and not asked for, or stopped when idle).
    Idle,
    /// The first attempt of a series.
    Connecting,
    /// Publishing into the hub.
    Live,
    /// A later attempt of a series.
    Retrying,
    /// Every attempt of the last series failed (on demand); the next player starts a new one.
    Failed,
}

/// One attempt, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    /// 1-based within its series.
    pub attempt: u32,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub ended_ms: u64,
    /// `None` when the attempt went live.
    pub error: Option<String>,
}

#[derive(Debug)]
struct SlotState {
    state: PullState,
    /// A driver task exists (it may be parked in `Idle`, waiting for a demand: fixed pulls).
    running: bool,
    attempt: u32,
    attempts: u64,
    failures: u64,
    series: u64,
    last_error: Option<String>,
    log: VecDeque<AttemptRecord>,
    live_since_ms: Option<u64>,
    peer: Option<SocketAddr>,
    idle_stops: u64,
    ended: u64,
}

/// Everything about one pulled name.
struct Slot {
    name: String,
    entry: usize,
    url: String,
    st: Mutex<SlotState>,
    /// Bumped on every state change; parked players wait on it.
    changed: watch::Sender<u64>,
    /// Wakes a fixed pull stopped when idle.
    wake: Notify,
    parked: AtomicUsize,
    frames: AtomicU64,
    /// Rate limit of a fixed pull's failure log (it retries for ever).
    fail_log: Mutex<RateLimit>,
}

impl Slot {
    fn update(&self, f: impl FnOnce(&mut SlotState)) {
        f(&mut lock(&self.st));
        self.changed.send_modify(|v| *v += 1);
    }
}

/// Relay-wide counters.
#[derive(Debug, Default, Serialize)]
pub struct RelayCounters {
    /// Players that asked for a pulled name that was not live.
    pub demands: AtomicU64,
    /// Of those, the ones that joined an attempt series already under way (single flight).
    pub joined: AtomicU64,
    /// Attempt series started (each is one or more connections to the source).
    pub series: AtomicU64,
    pub attempts: AtomicU64,
    pub attempt_failures: AtomicU64,
    /// Players refused because too many were already parked (per name or in total).
    pub parked_refused: AtomicU64,
    /// Demands refused because `MAX_SLOTS` names were busy.
    pub slots_refused: AtomicU64,
    pub idle_stops: AtomicU64,
    /// Live pulls that ended because the source stopped.
    pub ended: AtomicU64,
}

struct Inner {
    entries: Vec<PullConfig>,
    hub: Arc<Hub>,
    media: Arc<RtpShared>,
    shutdown: CancellationToken,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    parked_total: AtomicUsize,
    counters: RelayCounters,
    refuse_log: Mutex<RateLimit>,
    /// [`MAX_PARKED_PER_NAME`] and [`MAX_PARKED_TOTAL`] (smaller in unit tests).
    max_parked: (usize, usize),
}

/// The pull manager (a [`StreamDemand`] handler of the hub).
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

/// Leaves the parked counts when a waiting player stops waiting (answered or gone).
struct Parked<'a> {
    slot: &'a Slot,
    inner: &'a Inner,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.slot.parked.fetch_sub(1, Ordering::Relaxed);
        self.inner.parked_total.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether a requested name may be put in a template's URL (`{path}`): 1-200 characters of
/// `A-Z a-z 0-9 - _ . ~ /`, no empty, `.` or `..` segment.
pub fn template_safe(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b))
        && name.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// `url` without credentials: the password of `user:pass@` and the query (`?txSecret=..`).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => format!("{}:***@{host}", user.split(':').next().unwrap_or("")),
        None => authority.to_string(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_string(),
    };
    match scheme {
        "" => format!("{authority}{path}"),
        s => format!("{s}://{authority}{path}"),
    }
}

impl Relay {
    /// Starts the fixed pulls and registers the relay with the hub for on-demand names.
    pub fn start(entries: Vec<PullConfig>, hub: Arc<Hub>, media: Arc<RtpShared>, shutdown: CancellationToken) -> Relay {
        Self::start_with(entries, hub, media, shutdown, (MAX_PARKED_PER_NAME, MAX_PARKED_TOTAL))
    }

    fn start_with(
        entries: Vec<PullConfig>,
        hub: Arc<Hub>,
        media: Arc<RtpShared>,
        shutdown: CancellationToken,
        max_parked: (usize, usize),
    ) -> Relay {
        let relay = Relay {
            inner: Arc::new(Inner {
                entries,
                hub: hub.clone(),
                media,
                shutdown,
                slots: Mutex::new(HashMap::new()),
                parked_total: AtomicUsize::new(0),
                counters: RelayCounters::default(),
                refuse_log: Mutex::new(RateLimit::new(Duration::from_secs(10))),
                max_parked,
            }),
        };
        for (i, e) in relay.inner.entries.iter().enumerate() {
            let Some(name) = &e.name else { continue };
            let slot = relay.inner.new_slot(name, i);
            lock(&relay.inner.slots).insert(name.clone(), slot.clone());
            if !e.is_on_demand() {
                info!(stream = %name, url = %redact(&slot.url), "pull starts");
                lock(&slot.st).running = true;
                relay.inner.counters.series.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(drive(relay.inner.clone(), slot));
            }
        }
        hub.add_demand(Arc::new(relay.clone()));
        relay
    }

    /// Relay-wide counters.
    pub fn counters(&self) -> &RelayCounters {
        &self.inner.counters
    }

    /// What `GET /api/v1/pulls` shows.
    pub fn snapshot(&self) -> serde_json::Value {
        let inner = &self.inner;
        let mut slots: Vec<Arc<Slot>> = lock(&inner.slots).values().cloned().collect();
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        let pulls: Vec<serde_json::Value> = slots
            .iter()
            .map(|s| {
                let e = &inner.entries[s.entry];
                let st = lock(&s.st);
                serde_json::json!({
                    "name": s.name,
                    "match": e.pattern,
                    "url": redact(&s.url),
                    "on_demand": e.is_on_demand(),
                    "idle_stop_ms": e.idle_stop().map(|d| d.as_millis() as u64),
                    "retries": e.retries,
                    "state": st.state,
                    "attempt": st.attempt,
                    "attempts": st.attempts,
                    "failures": st.failures,
                    "series": st.series,
                    "last_error": st.last_error,
                    "attempt_log": st.log,
                    "live_since_ms": st.live_since_ms,
                    "peer": st.peer,
                    "parked": s.parked.load(Ordering::Relaxed),
                    "frames": s.frames.load(Ordering::Relaxed),
                    "idle_stops": st.idle_stops,
                    "ended": st.ended,
                })
            })
            .collect();
        let entries: Vec<serde_json::Value> = inner
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name, "match": e.pattern, "url": redact(&e.url), "on_demand": e.is_on_demand(),
                    "transport": e.transport, "retries": e.retries,
                    "retry_interval_ms": e.retry_interval.0.as_millis() as u64,
                    "idle_stop_ms": e.idle_stop().map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        serde_json::json!({
            "entries": entries,
            "pulls": pulls,
            "parked": inner.parked_total.load(Ordering::Relaxed),
            "max_parked_per_name": inner.max_parked.0,
            "max_parked": inner.max_parked.1,
            "counters": &inner.counters,
        })
    }
}

impl Inner {
    /// The entry serving `name`: a fixed name first, then the first template that matches.
    fn entry_for(&self, name: &str) -> Option<usize> {
        let fixed = self.entries.iter().position(|e| e.name.as_deref() == Some(name));
        fixed.or_else(|| {
            // A player's name goes into a template's URL: only plain path characters, so that
            // it cannot add a query, a userinfo or a `..` to the origin's URL.
            template_safe(name).then(|| {
                self.entries
                    .iter()
                    .position(|e| e.pattern.as_deref().is_some_and(|p| crate::client::rtmp_push::matches(p, name)))
            })?
        })
    }

    fn new_slot(&self, name: &str, entry: usize) -> Arc<Slot> {
        Arc::new(Slot {
            name: name.to_string(),
            entry,
            url: self.entries[entry].url_for(name),
            st: Mutex::new(SlotState {
                state: PullState::Idle,
                running: false,
                attempt: 0,
                attempts: 0,
                failures: 0,
                series: 0,
                last_error: None,
                log: VecDeque::new(),
                live_since_ms: None,
                peer: None,
                idle_stops: 0,
                ended: 0,
            }),
            changed: watch::channel(0).0,
            wake: Notify::new(),
            parked: AtomicUsize::new(0),
            frames: AtomicU64::new(0),
            fail_log: Mutex::new(RateLimit::new(Duration::from_secs(30))),
        })
    }

    fn refused(&self, name: &str, why: String) -> String {
        if let Some(suppressed) = lock(&self.refuse_log).check(Instant::now()) {
            warn!(stream = %name, suppressed, "pull on demand refused: {why}");
        }
        why
    }

    /// A player asks for `name`, which is not live: start or join its pull and wait for the
    /// outcome.
    async fn demand(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let entry = self.entry_for(name).ok_or_else(|| "no [[pull]] for this name".to_string())?;
        self.counters.demands.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(name) {
                Some(s) => s.clone(),
                None => {
                    if slots.len() >= MAX_SLOTS {
                        // Make room: a template pull that is not running.
                        let spare = slots
                            .iter()
                            .find(|(_, s)| self.entries[s.entry].name.is_none() && !lock(&s.st).running)
                            .map(|(n, _)| n.clone());
                        match spare {
                            Some(n) => {
                                slots.remove(&n);
                            }
                            None => {
                                self.counters.slots_refused.fetch_add(1, Ordering::Relaxed);
                                return Err(self.refused(name, format!("too many pulls ({MAX_SLOTS}) under way")));
                            }
                        }
                    }
                    let s = self.new_slot(name, entry);
                    slots.insert(name.to_string(), s.clone());
                    s
                }
            }
        };
        // Parked players are bounded per name and in total; beyond, refused at once.
        let per_name = slot.parked.fetch_add(1, Ordering::Relaxed);
        let total = self.parked_total.fetch_add(1, Ordering::Relaxed);
        let _parked = Parked { slot: &slot, inner: self };
        if per_name >= self.max_parked.0 || total >= self.max_parked.1 {
            self.counters.parked_refused.fetch_add(1, Ordering::Relaxed);
            return Err(self.refused(
                name,
                format!("too many players waiting ({per_name} for this name, {total} in all): try again later"),
            ));
        }
        let retries = self.entries[slot.entry].retries as u64;
        let mut rx = slot.changed.subscribe();
        let start_failures = {
            let mut st = lock(&slot.st);
            match st.state {
                PullState::Live => return Ok(()),
                PullState::Connecting | PullState::Retrying => {
                    self.counters.joined.fetch_add(1, Ordering::Relaxed);
                }
                PullState::Idle | PullState::Failed => {
                    st.state = PullState::Connecting;
                    st.attempt = 0;
                    self.counters.series.fetch_add(1, Ordering::Relaxed);
                    if st.running {
                        // A fixed pull stopped when idle: its task waits for this.
                        slot.wake.notify_one();
                    } else {
                        st.running = true;
                        info!(stream = %name, url = %redact(&slot.url), "pull on demand starts");
                        tokio::spawn(drive(self.clone(), slot.clone()));
                    }
                }
            }
            st.failures
        };
        slot.changed.send_modify(|v| *v += 1);
        loop {
            {
                let st = lock(&slot.st);
                let cause = || st.last_error.clone().unwrap_or_else(|| "the pull stopped".into());
                match st.state {
                    PullState::Live => return Ok(()),
                    PullState::Failed => {
                        return Err(format!("pull of {name} failed after {} attempt(s): {}", st.attempt, cause()))
                    }
                    PullState::Idle if !st.running => return Err(format!("pull of {name} stopped: {}", cause())),
                    // A fixed pull retries for ever; a player waits for `retries` of its attempts.
                    _ if st.failures.saturating_sub(start_failures) >= retries => {
                        return Err(format!("pull of {name} failed {retries} time(s): {}", cause()))
                    }
                    _ => {}
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err("the relay stopped".into()) },
                _ = self.shutdown.cancelled() => return Err("gbgate is shutting down".into()),
            }
        }
    }
}

impl StreamDemand for Relay {
    fn handles(&self, name: &str) -> bool {
        self.inner.entry_for(name).is_some()
    }

    fn demand(&self, name: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let (inner, name) = (self.inner.clone(), name.to_string());
        Box::pin(async move { inner.demand(&name).await })
    }

    fn status(&self, key: &str) -> Option<serde_json::Value> {
        (key == "pulls").then(|| self.snapshot())
    }
}

/// A pull that went live: its source and where its frames go.
struct Live {
    src: PullSource,
    publisher: Publisher,
    stream: Arc<Stream>,
}

/// How a live pull ended.
enum End {
    Shutdown,
    Idle(Duration),
    Ended(PullError),
}

/// The one task of a slot: attempt series, live publishing, idle stop; for fixed pulls, for ever.
async fn drive(inner: Arc<Inner>, slot: Arc<Slot>) {
    let entry = &inner.entries[slot.entry];
    let fixed = !entry.is_on_demand();
    let (retries, interval) = (entry.retries, entry.retry_interval.0);
    let opts = PullOptions { transport: entry.transport, timeout: entry.timeout.0 };
    let name = slot.name.clone();
    let mut first_wait = Duration::ZERO;
    loop {
        slot.update(|st| st.series += 1);
        let mut backoff = interval;
        let mut next_start = tokio::time::Instant::now() + first_wait;
        let mut n = 0u32;
        let live = loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return stopped(&slot, None),
                _ = tokio::time::sleep_until(next_start) => {}
            }
            n += 1;
            // Attempts of a series start `retry_interval` apart, however long each took.
            next_start = tokio::time::Instant::now() + if fixed { backoff } else { interval };
            slot.update(|st| {
                st.state = if n == 1 { PullState::Connecting } else { PullState::Retrying };
                st.attempt = n;
                st.attempts += 1;
            });
            inner.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let started_ms = unix_ms();
            let r = tokio::select! {
                _ = inner.shutdown.cancelled() => return stopped(&slot, None),
                r = attempt(&inner, &slot, &opts) => r,
            };
            match r {
                Ok(live) => {
                    slot.update(|st| {
                        push_log(st, AttemptRecord { attempt: n, started_ms, ended_ms: unix_ms(), error: None });
                        st.state = PullState::Live;
                        st.live_since_ms = Some(unix_ms());
                        st.peer = Some(live.src.peer());
                    });
                    info!(stream = %name, origin = %live.src.peer(), attempt = n, "pull live");
                    break live;
                }
                Err(e) => {
                    inner.counters.attempt_failures.fetch_add(1, Ordering::Relaxed);
                    let give_up = !fixed && n >= retries;
                    slot.update(|st| {
                        push_log(
                            st,
                            AttemptRecord { attempt: n, started_ms, ended_ms: unix_ms(), error: Some(e.to_string()) },
                        );
                        st.failures += 1;
                        st.last_error = Some(e.to_string());
                        if give_up {
                            st.state = PullState::Failed;
                            st.running = false;
                        }
                    });
                    if fixed {
                        // Retries for ever: the log is rate-limited, the API counts every one.
                        if let Some(suppressed) = lock(&slot.fail_log).check(Instant::now()) {
                            warn!(stream = %name, url = %redact(&slot.url), suppressed, "pull attempt {n}: {e}; next in {backoff:?}");
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX.max(interval));
                    } else {
                        warn!(stream = %name, url = %redact(&slot.url), "pull attempt {n}/{retries}: {e}");
                    }
                    if give_up {
                        warn!(stream = %name, "pull on demand gave up after {n} attempt(s): {e}");
                        return;
                    }
                }
            }
        };
        let end = run_live(&inner, &slot, live).await;
        first_wait = interval;
        match end {
            End::Shutdown => return stopped(&slot, None),
            End::Idle(after) => {
                inner.counters.idle_stops.fetch_add(1, Ordering::Relaxed);
                info!(stream = %name, "no player for {after:?}: pull stopped (idle_stop)");
                if !fixed {
                    return stopped(&slot, Some(()));
                }
                // A fixed pull comes back when a player asks.
                slot.update(|st| {
                    st.state = PullState::Idle;
                    st.idle_stops += 1;
                    st.live_since_ms = None;
                });
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return stopped(&slot, None),
                    _ = slot.wake.notified() => {}
                }
                first_wait = Duration::ZERO;
            }
            End::Ended(e) => {
                inner.counters.ended.fetch_add(1, Ordering::Relaxed);
                warn!(stream = %name, "pulled source ended: {e}");
                slot.update(|st| {
                    st.last_error = Some(e.to_string());
                    st.ended += 1;
                    st.live_since_ms = None;
                    // Not live any more: a player asking now waits for the reconnection.
                    st.state = PullState::Retrying;
                });
                if !fixed {
                    return stopped(&slot, None);
                }
            }
        }
    }
}

/// The slot's task ends (`idle`: by idle stop).
fn stopped(slot: &Slot, idle: Option<()>) {
    slot.update(|st| {
        st.state = PullState::Idle;
        st.running = false;
        st.live_since_ms = None;
        st.idle_stops += idle.is_some() as u64;
    });
}

fn push_log(st: &mut SlotState, r: AttemptRecord) {
    if st.log.len() >= ATTEMPTS_KEPT {
        st.log.pop_front();
    }
    st.log.push_back(r);
}

fn is_video_keyframe(f: &Frame) -> bool {
    f.keyframe && f.kind() == MediaKind::Video
}

/// One attempt: connect, wait for the first video keyframe (frames before it are dropped: a
/// player must start there), create the hub stream and publish it. Succeeds once the keyframe
/// is in the stream's GOP cache. Everything is bounded by the entry's `timeout`.
async fn attempt(inner: &Inner, slot: &Slot, opts: &PullOptions) -> Result<Live, PullError> {
    let mut src = PullSource::connect(&slot.url, opts).await?;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut media = false;
    let key = loop {
        let f = match tokio::time::timeout_at(deadline, src.next_frame()).await {
            Ok(f) => f?,
            Err(_) if media => {
                return Err(PullError::NoKeyframe(format!("no video keyframe within {:?}", opts.timeout)))
            }
            Err(_) => return Err(PullError::NoAnswer(format!("no media within {:?}", opts.timeout))),
        };
        if is_video_keyframe(&f) {
            break f;
        }
        media = true;
    };
    let source = Source { transport: src.transport(), peer: src.peer(), ssrc: None };
    // A pull never takes a live name over (a publisher that came meanwhile keeps it).
    let stream =
        inner.hub.create(&slot.name, source, Takeover::Refuse).map_err(|e| PullError::Refused(e.to_string()))?;
    let mut publisher = Publisher::new(stream.clone(), &inner.media);
    publisher.frame(key);
    slot.frames.fetch_add(1, Ordering::Relaxed);
    // The media stage may hold the keyframe a little (timestamp repair): feed it until it is out.
    while !stream.has_keyframe() {
        match tokio::time::timeout_at(deadline, src.next_frame()).await {
            Ok(Ok(f)) => {
                publisher.frame(f);
                slot.frames.fetch_add(1, Ordering::Relaxed);
            }
            r => {
                let e = match r {
                    Ok(Err(e)) => e,
                    _ => PullError::NoKeyframe("the keyframe did not reach the hub".into()),
                };
                stream.event("stop", &format!("pull attempt failed: {e}"));
                publisher.finish(&inner.hub);
                return Err(e);
            }
        }
    }
    Ok(Live { src, publisher, stream })
}

/// Publishes a live pull until its source ends, nobody watches for `idle_stop`, or shutdown.
async fn run_live(inner: &Inner, slot: &Slot, live: Live) -> End {
    let Live { mut src, mut publisher, stream } = live;
    let idle_stop = inner.entries[slot.entry].idle_stop();
    let frame_timeout = inner.entries[slot.entry].timeout.0;
    let mut idle_since: Option<Instant> = None;
    let mut next_check = Instant::now();
    let end = loop {
        // A source that trickles bytes but no frame (each read within the client's timeout)
        // ends too: a frame is due within the timeout.
        let r = tokio::select! {
            _ = inner.shutdown.cancelled() => break End::Shutdown,
            r = tokio::time::timeout(frame_timeout, src.next_frame()) => r.unwrap_or_else(|_| {
                Err(PullError::Ended(format!("no frame for {frame_timeout:?}")))
            }),
        };
        match r {
            Ok(f) => {
                publisher.frame(f);
                slot.frames.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => break End::Ended(e),
        }
        // The stream's lock is taken a few times a second, not per frame.
        let now = Instant::now();
        if now < next_check {
            continue;
        }
        next_check = now + IDLE_CHECK;
        if stream.is_closed() {
            break End::Ended(PullError::Ended("the stream was removed from the hub".into()));
        }
        if let Some(idle) = idle_stop {
            // Every subscriber counts (players and static pushes), and so does a player parked
            // between asking and subscribing.
            if stream.subscriber_count() == 0 && slot.parked.load(Ordering::Relaxed) == 0 {
                if now.duration_since(*idle_since.get_or_insert(now)) >= idle {
                    break End::Idle(idle);
                }
            } else {
                idle_since = None;
            }
        }
    };
    // The stream's own log says why it stopped (D90).
    let why = match &end {
        End::Shutdown => "gbgate is shutting down".to_string(),
        End::Idle(d) => format!("no player for {d:?} (idle_stop)"),
        End::Ended(e) => format!("the source ended: {e}"),
    };
    stream.event("stop", &format!("pull stopped: {why}"));
    // Releases the hub stream (and its GOP cache), then the source (RTSP: TEARDOWN).
    publisher.finish(&inner.hub);
    src.close().await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_go_into_a_template_url() {
        assert!(template_safe("live/cam-1_a.b~c"));
        for bad in ["", "live/../admin", "live/x?secret=1", "live/x#f", "a@evil/x", "live//x", "/x", "x/", "live/%2e"] {
            assert!(!template_safe(bad), "{bad:?}");
        }
    }

    /// A relay of templates `a/*` and `b/*` towards a port where nothing listens, with room for
    /// 2 parked players per name and 3 in all.
    fn small_relay() -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let entries = ["a/*", "b/*"]
            .map(|m| {
                toml::from_str::<PullConfig>(&format!(
                    "match = {m:?}\nurl = \"rtmp://127.0.0.1:{port}/{{path}}\"\nretries = 3\nretry_interval = \"300ms\"\n"
                ))
                .unwrap()
            })
            .to_vec();
        let hub = Hub::new(crate::config::HubConfig::default(), 10);
        let media = RtpShared::with_audio(crate::config::AudioConfig::default());
        Relay::start_with(entries, hub, media, CancellationToken::new(), (2, 3))
    }

    #[tokio::test]
    async fn parked_players_are_bounded_per_name_and_in_total() {
        let relay = small_relay();
        let ask = |name: &'static str| {
            let r = relay.clone();
            tokio::spawn(async move { r.inner.demand(name).await })
        };
        let (a1, a2) = (ask("a/x"), ask("a/x"));
        let t0 = Instant::now();
        while relay.inner.parked_total.load(Ordering::Relaxed) < 2 {
            assert!(t0.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A third player of a/x is refused at once; b/y still has room, then the total is full.
        let e = relay.inner.demand("a/x").await.unwrap_err();
        assert!(e.contains("too many players waiting"), "{e}");
        let b1 = ask("b/y");
        while relay.inner.parked_total.load(Ordering::Relaxed) < 3 {
            assert!(t0.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = relay.inner.demand("b/z").await.unwrap_err();
        assert!(e.contains("too many players waiting"), "{e}");
        assert_eq!(relay.counters().parked_refused.load(Ordering::Relaxed), 2);
        // The parked ones get the cause once the 3 attempts failed, and leave the counts.
        for h in [a1, a2, b1] {
            let e = h.await.unwrap().unwrap_err();
            assert!(e.contains("failed after 3 attempt(s): refused"), "{e}");
        }
        assert_eq!(relay.inner.parked_total.load(Ordering::Relaxed), 0);
        let c = relay.counters();
        // a/x: one series joined once; b/y: one series. The refused ones started nothing.
        assert_eq!((c.series.load(Ordering::Relaxed), c.joined.load(Ordering::Relaxed)), (2, 1));
        assert_eq!(c.attempts.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact("rtsp://admin:secret@10.0.0.1:554/ch1"), "rtsp://admin:***@10.0.0.1:554/ch1");
        assert_eq!(redact("rtmp://o/live/x?txSecret=ab&txTime=1"), "rtmp://o/live/x?***");
        assert_eq!(redact("rtmp://o:1935/live/{path}"), "rtmp://o:1935/live/{path}");
        assert_eq!(redact("rtsp://u:p@h"), "rtsp://u:***@h");
    }
}
