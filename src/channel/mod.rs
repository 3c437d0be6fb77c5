//! Channels (issue 10, D100-D105): what a control center creates on the gateway. A channel has
//! an id (also its hub stream's name), a source (GB28181 live or playback, a camera pushing RTP
//! with a known SSRC, an RTSP or RTMP pull), RTMP pushes and raw RTP recording. Channels are
//! kept in the `[sip] db` database and come back after a restart, the started ones started.
//!
//! The top layer: above the relay, the servers and the GB signalling. Each running channel has
//! one driver task around its sans-IO [`machine::Machine`].
pub mod api;
pub mod machine;
mod source;
pub mod spec;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gb::Gb;
use crate::hub::{Hub, StreamDemand};
use crate::server::rtp::RtpShared;
use machine::{Input, Machine, Next, State};
use spec::{ChannelSpec, Checked, SourceSpec};
use store::{ChannelStore, Stored};

/// Channels one gateway keeps; more are refused (409 would lie: 400 on `id` names the bound).
pub const MAX_CHANNELS: usize = 4096;
/// How long a player of an on-demand channel waits for it to go live.
const DEMAND_WAIT: Duration = Duration::from_secs(30);
/// How long a stop waits for the driver to tear its source down (BYE, TEARDOWN).
const STOP_WAIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why an operation on channels failed; the API maps each to its status and code.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Invalid(#[from] spec::FieldError),
    #[error("channel {0:?} exists")]
    Exists(String),
    #[error("no channel {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

struct Status {
    m: Machine,
    /// Should run (persisted): started and not stopped.
    run: bool,
}

/// The driver of a started channel.
struct Run {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Chan {
    spec: ChannelSpec,
    checked: Checked,
    st: Mutex<Status>,
    /// Bumped on every state change (a player waiting for an on-demand channel watches it).
    changed: watch::Sender<u64>,
    demand: Notify,
    run: Mutex<Option<Run>>,
    /// Why the driver was told to stop ("stopped by the API", "deleted").
    stop_reason: Mutex<Option<String>>,
    pushes: Mutex<Option<Arc<crate::client::push::PushSet>>>,
}

impl Chan {
    fn stream(&self) -> &str {
        &self.spec.id
    }
}

pub(crate) struct Inner {
    hub: Arc<Hub>,
    rtp: Arc<RtpShared>,
    gb: Option<Gb>,
    store: ChannelStore,
    shutdown: CancellationToken,
    chans: Mutex<BTreeMap<String, Arc<Chan>>>,
    /// API writes one at a time: the database sees them in the order the API answered them.
    ops: tokio::sync::Mutex<()>,
}

/// The channel manager; cheap to clone.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

/// A channel as the API shows it (the "Channel REST" contract).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    pub id: String,
    pub stream: String,
    pub source: SourceSpec,
    pub push: Vec<serde_json::Value>,
    pub record: bool,
    pub on_demand: bool,
    pub idle_stop: Option<String>,
    pub timeout: String,
    pub autostart: bool,
    pub state: State,
    pub reason: String,
    /// RFC 3339 UTC of the last state change.
    pub since: String,
    /// Started and not stopped (started again after a restart).
    pub running: bool,
    /// Kept in the database (`false`: no `[sip] db`, memory only).
    pub persistent: bool,
}

impl Channels {
    /// The manager, with the database (`None`: memory only). Nothing starts before [`restore`].
    ///
    /// [`restore`]: Channels::restore
    pub fn new(
        hub: Arc<Hub>,
        rtp: Arc<RtpShared>,
        gb: Option<Gb>,
        db: Option<Arc<redb::Database>>,
        shutdown: CancellationToken,
    ) -> Channels {
        let store = ChannelStore::new(db);
        if !store.persistent() {
            warn!("no [sip] db: channels are kept in memory only and are lost on restart");
        }
        let channels = Channels {
            inner: Arc::new(Inner {
                hub: hub.clone(),
                rtp,
                gb,
                store,
                shutdown,
                chans: Mutex::new(BTreeMap::new()),
                ops: tokio::sync::Mutex::new(()),
            }),
        };
        hub.add_demand(Arc::new(channels.clone()));
        channels
    }

    /// Loads the stored channels and starts the ones that ran; returns their views.
    pub fn restore(&self) -> Result<Vec<ChannelView>, ChannelError> {
        let stored = self.inner.store.load()?;
        let recording = self.inner.hub.diag().recorder.is_some();
        for s in stored {
            let checked = match s.spec.check(recording) {
                Ok(c) => c,
                Err(e) => {
                    // Kept in the database (a config change may make it valid again), not run.
                    warn!(channel = %s.spec.id, "stored channel not restored: {e}");
                    continue;
                }
            };
            let chan = self.inner.insert(s.spec, checked);
            if s.run {
                self.inner.start_driver(&chan);
            }
        }
        let views = self.list();
        info!(channels = views.len(), running = views.iter().filter(|v| v.running).count(), "channels restored");
        Ok(views)
    }

    pub fn persistent(&self) -> bool {
        self.inner.store.persistent()
    }

    /// `gateway_started`, listing the channels restored (emitted once, after [`Channels::restore`]).
    pub fn gateway_started(&self, restored: &[ChannelView]) {
        let views = restored.iter().map(|v| serde_json::to_value(v).unwrap_or_default()).collect();
        self.inner.hub.notifier().gateway_started(views);
    }

    pub fn list(&self) -> Vec<ChannelView> {
        let chans: Vec<_> = lock(&self.inner.chans).values().cloned().collect();
        chans.iter().map(|c| self.inner.view(c)).collect()
    }

    pub fn get(&self, id: &str) -> Option<ChannelView> {
        let chan = lock(&self.inner.chans).get(id).cloned()?;
        Some(self.inner.view(&chan))
    }

    /// Creates (and, unless `autostart` is false, starts) a channel.
    pub async fn create(&self, spec: ChannelSpec) -> Result<ChannelView, ChannelError> {
        let _op = self.inner.ops.lock().await;
        let recording = self.inner.hub.diag().recorder.is_some();
        let checked = spec.check(recording)?;
        if matches!(spec.source, SourceSpec::Gb28181(_)) && self.inner.gb.is_none() {
            return Err(ChannelError::Unavailable("source.gb28181: SIP is disabled ([sip] enabled = false)".into()));
        }
        {
            let chans = lock(&self.inner.chans);
            if chans.contains_key(&spec.id) {
                return Err(ChannelError::Exists(spec.id));
            }
            if chans.len() >= MAX_CHANNELS {
                return Err(ChannelError::Invalid(spec::FieldError {
                    field: "id".into(),
                    message: format!("this gateway already has {MAX_CHANNELS} channels"),
                }));
            }
        }
        let run = spec.autostart();
        self.inner.store.write(&spec.id, Some(&Stored { spec: spec.clone(), run })).await?;
        info!(channel = %spec.id, "channel created");
        let chan = self.inner.insert(spec, checked);
        if run {
            self.inner.start_driver(&chan);
        }
        Ok(self.inner.view(&chan))
    }

    pub async fn start(&self, id: &str) -> Result<ChannelView, ChannelError> {
        let _op = self.inner.ops.lock().await;
        let chan = self.inner.chan(id)?;
        self.inner.store.write(id, Some(&Stored { spec: chan.spec.clone(), run: true })).await?;
        self.inner.start_driver(&chan);
        Ok(self.inner.view(&chan))
    }

    pub async fn stop(&self, id: &str) -> Result<ChannelView, ChannelError> {
        let _op = self.inner.ops.lock().await;
        let chan = self.inner.chan(id)?;
        self.inner.store.write(id, Some(&Stored { spec: chan.spec.clone(), run: false })).await?;
        self.inner.stop_driver(&chan, "stopped by the API").await;
        Ok(self.inner.view(&chan))
    }

    pub async fn delete(&self, id: &str) -> Result<(), ChannelError> {
        let _op = self.inner.ops.lock().await;
        let chan = self.inner.chan(id)?;
        self.inner.store.write(id, None).await?;
        self.inner.stop_driver(&chan, "deleted").await;
        lock(&self.inner.chans).remove(id);
        if let Some(r) = self.inner.hub.diag().recorder {
            r.remove_name(&record_name(&chan.spec));
        }
        self.inner.hub.notifier().unbind_channel(chan.stream());
        self.inner.hub.notifier().unbind_channel(&record_name(&chan.spec));
        info!(channel = %id, "channel deleted");
        Ok(())
    }

    /// Ends every driver (gbgate stops): BYE, TEARDOWN and the pushes' clean end; the stored
    /// run state stays, so they start again with the next process.
    pub async fn shutdown(&self) {
        let chans: Vec<_> = lock(&self.inner.chans).values().cloned().collect();
        let stops = chans.iter().map(|c| self.inner.stop_driver(c, "gbgate is shutting down"));
        futures_util::future::join_all(stops).await;
    }
}

/// The stream name the raw RTP recording must match for a channel (D104): a GB live session's
/// packets arrive on `gb/<channel>`, a camera pushing RTP on the channel's own stream.
fn record_name(spec: &ChannelSpec) -> String {
    match &spec.source {
        SourceSpec::Gb28181(g) if g.playback.is_none() => format!("gb/{}", g.channel_id),
        _ => spec.id.clone(),
    }
}

impl Inner {
    fn chan(&self, id: &str) -> Result<Arc<Chan>, ChannelError> {
        lock(&self.chans).get(id).cloned().ok_or_else(|| ChannelError::NotFound(id.to_string()))
    }

    fn insert(&self, spec: ChannelSpec, checked: Checked) -> Arc<Chan> {
        if spec.record {
            if let Some(r) = self.hub.diag().recorder {
                r.add_name(&record_name(&spec));
            }
        }
        // The channel's stream, and for a GB live channel the session's stream its media arrives
        // on (the hub's `stream_state` of `gb/<channel>`, e.g. BYE from the device, names it).
        self.hub.notifier().bind_channel(&spec.id, &spec.id);
        self.hub.notifier().bind_channel(&record_name(&spec), &spec.id);
        let chan = Arc::new(Chan {
            spec,
            checked,
            st: Mutex::new(Status { m: Machine::new(unix_ms()), run: false }),
            changed: watch::channel(0).0,
            demand: Notify::new(),
            run: Mutex::new(None),
            stop_reason: Mutex::new(None),
            pushes: Mutex::new(None),
        });
        lock(&self.chans).insert(chan.spec.id.clone(), chan.clone());
        chan
    }

    fn view(&self, c: &Chan) -> ChannelView {
        let st = lock(&c.st);
        let push = match &*lock(&c.pushes) {
            Some(p) => p.views().into_iter().map(|v| serde_json::to_value(v).unwrap_or_default()).collect(),
            None => c
                .spec
                .push
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "url": crate::client::push::redact(u), "state": "stopped",
                        "reason": "the channel is not running", "since": crate::server::api::rfc3339(
                            UNIX_EPOCH + Duration::from_millis(st.m.since_ms())),
                        "bytes": 0, "reconnects": 0,
                    })
                })
                .collect(),
        };
        ChannelView {
            id: c.spec.id.clone(),
            stream: c.spec.id.clone(),
            source: redacted_source(&c.spec.source),
            push,
            record: c.spec.record,
            on_demand: c.spec.on_demand,
            idle_stop: c.checked.idle_stop.map(machine::secs),
            timeout: machine::secs(c.checked.timeout),
            autostart: c.spec.autostart(),
            state: st.m.state(),
            reason: st.m.reason().to_string(),
            since: crate::server::api::rfc3339(UNIX_EPOCH + Duration::from_millis(st.m.since_ms())),
            running: st.run,
            persistent: self.store.persistent(),
        }
    }

    /// Feeds the machine; logs the change, and tells the callbacks every transition but `live`
    /// (the hub tells that one for the stream): starting, stalled and stopped carry the channel's
    /// own reason ("no data for 10s, retrying in 1s", "start failed: ...", "idle stop ..."), for
    /// which the hub has no stream or no words.
    fn apply(&self, c: &Chan, input: Input) -> Next {
        let was_live = matches!(input, Input::NoData { .. } | Input::Ended { .. });
        let (next, state, reason) = {
            let mut st = lock(&c.st);
            let next = st.m.on(input, unix_ms());
            (next, st.m.state(), st.m.reason().to_string())
        };
        c.changed.send_modify(|v| *v += 1);
        info!(channel = %c.spec.id, state = state.as_str(), "channel {}: {reason}", state.as_str());
        use crate::notify::{Event, StreamState};
        let s = match state {
            State::Starting => Some(StreamState::Starting),
            // A start that failed, or a live source that went away: retrying either way.
            State::Stalled if was_live => Some(StreamState::Stalled),
            State::Stalled => Some(StreamState::Failed),
            State::Stopped | State::Idle => Some(StreamState::Stopped),
            State::Live => None,
        };
        if let Some(state) = s {
            self.hub.notifier().emit(Event::StreamState {
                stream: c.spec.id.clone(),
                channel: Some(c.spec.id.clone()),
                state,
                reason,
            });
        }
        next
    }

    fn start_driver(self: &Arc<Self>, chan: &Arc<Chan>) {
        let mut run = lock(&chan.run);
        if run.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return;
        }
        lock(&chan.st).run = true;
        *lock(&chan.stop_reason) = None;
        let stop = self.shutdown.child_token();
        // The pushes and the first transition before the API answers: the view it returns
        // already says `starting` and lists the pushes.
        if !chan.spec.push.is_empty() {
            let set = crate::client::push::PushSet::start(
                self.hub.clone(),
                chan.stream(),
                chan.spec.push.clone(),
                push_notifier(self.hub.notifier(), &chan.spec.id),
                stop.clone(),
            );
            *lock(&chan.pushes) = Some(Arc::new(set));
        }
        let next = self.apply(chan, Input::Start { on_demand: chan.spec.on_demand });
        let task = tokio::spawn(drive(self.clone(), chan.clone(), stop.clone(), next));
        *run = Some(Run { stop, task });
    }

    async fn stop_driver(&self, chan: &Arc<Chan>, reason: &str) {
        let run = lock(&chan.run).take();
        if reason != "gbgate is shutting down" {
            lock(&chan.st).run = false;
        }
        let Some(run) = run else { return };
        *lock(&chan.stop_reason) = Some(reason.to_string());
        run.stop.cancel();
        let mut task = run.task;
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            warn!(channel = %chan.spec.id, "channel did not stop within {STOP_WAIT:?}: aborted");
            task.abort();
        }
    }
}

/// Source URLs without credentials, for the API.
fn redacted_source(s: &SourceSpec) -> SourceSpec {
    let mut s = s.clone();
    match &mut s {
        SourceSpec::Rtsp(r) => r.url = crate::client::push::redact(&r.url),
        SourceSpec::Rtmp(r) => r.url = crate::client::push::redact(&r.url),
        _ => {}
    }
    s
}

/// Push states become `stream_state` events of the channel (the hub has no stream event for
/// them): "push rtmp://o/live/x: retrying: ...".
fn push_notifier(notifier: crate::notify::Notifier, channel: &str) -> crate::client::push::PushNotifier {
    use crate::client::push::PushState as P;
    use crate::notify::StreamState as S;
    let channel = channel.to_string();
    crate::client::push::PushNotifier::new(move |c| {
        let state = match c.state {
            P::Waiting | P::Connecting => S::Starting,
            P::Pushing => S::Live,
            P::Retrying => S::Stalled,
            P::Stopped => S::Stopped,
        };
        let reason = match c.reason.as_str() {
            "" => format!("push {}: {}", c.url, c.state.as_str()),
            r => format!("push {}: {}: {r}", c.url, c.state.as_str()),
        };
        notifier.emit(crate::notify::Event::StreamState {
            stream: c.stream.clone(),
            channel: Some(channel.clone()),
            state,
            reason,
        });
    })
}

/// The task of a started channel.
async fn drive(inner: Arc<Inner>, chan: Arc<Chan>, stop: CancellationToken, mut next: Next) {
    loop {
        next = match next {
            Next::Connect => {
                let r = tokio::select! {
                    _ = stop.cancelled() => {
                        // Stopped while the INVITE was under way: the session it may have
                        // opened is the channel's; BYE it rather than leave it to the idle timer.
                        if let (SourceSpec::Gb28181(g), Some(gb)) = (&chan.spec.source, &inner.gb) {
                            if g.playback.is_none() {
                                let _ = gb.stop(&format!("gb/{}", g.channel_id)).await;
                            }
                        }
                        break;
                    }
                    r = source::connect(&inner, &chan) => r,
                };
                match r {
                    Ok((live, how)) => {
                        inner.apply(&chan, Input::Up { how });
                        match source::run(&inner, &chan, live, &stop).await {
                            source::End::Stop => break,
                            source::End::NoData(after) => inner.apply(&chan, Input::NoData { after }),
                            source::End::Ended(reason) => inner.apply(&chan, Input::Ended { reason }),
                            source::End::Finished(reason) => inner.apply(&chan, Input::Finished { reason }),
                            source::End::Idle(after) => inner.apply(&chan, Input::IdleStop { after }),
                        }
                    }
                    Err(reason) => inner.apply(&chan, Input::Failed { reason }),
                }
            }
            Next::RetryIn(wait) => tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => Next::Connect,
            },
            Next::WaitDemand => tokio::select! {
                _ = stop.cancelled() => break,
                _ = chan.demand.notified() => inner.apply(&chan, Input::Demand),
            },
            // `Run` is handled with `Up` above.
            Next::Run => Next::Connect,
            Next::Halt => break,
        };
    }
    if let SourceSpec::Rtp(_) = chan.spec.source {
        inner.rtp.withdraw(chan.checked.ssrc.unwrap_or(0));
    }
    let pushes = lock(&chan.pushes).clone();
    if let Some(p) = pushes {
        p.stop().await;
    }
    if stop.is_cancelled() {
        let reason = lock(&chan.stop_reason).clone().unwrap_or_else(|| "gbgate is shutting down".into());
        inner.apply(&chan, Input::Stop { reason });
    } else {
        // It halted by itself (idle stop, playback finished): not started again after a restart.
        lock(&chan.st).run = false;
        let stored = Stored { spec: chan.spec.clone(), run: false };
        if let Err(e) = inner.store.write(&chan.spec.id, Some(&stored)).await {
            warn!(channel = %chan.spec.id, "{e}");
        }
    }
}

impl StreamDemand for Channels {
    fn handles(&self, name: &str) -> bool {
        lock(&self.inner.chans).get(name).is_some_and(|c| c.spec.on_demand)
    }

    fn demand(&self, name: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let chan = lock(&self.inner.chans).get(name).cloned();
        Box::pin(async move {
            let chan = chan.ok_or("no such channel")?;
            if !lock(&chan.st).run {
                return Err(format!("channel {} is stopped", chan.spec.id));
            }
            let mut rx = chan.changed.subscribe();
            chan.demand.notify_one();
            let deadline = tokio::time::Instant::now() + DEMAND_WAIT;
            loop {
                let (state, reason) = {
                    let st = lock(&chan.st);
                    (st.m.state(), st.m.reason().to_string())
                };
                match state {
                    State::Live => return Ok(()),
                    State::Stalled | State::Stopped => return Err(format!("channel {}: {reason}", chan.spec.id)),
                    _ => {}
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err("the channel is gone".into()) },
                    _ = tokio::time::sleep_until(deadline) => return Err(format!("channel {} did not start within {DEMAND_WAIT:?}", chan.spec.id)),
                }
            }
        })
    }
}
