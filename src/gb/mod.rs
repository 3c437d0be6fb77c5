//! GB/T 28181 signalling: registrar, keepalive, queries, live/playback sessions and play on
//! demand. The protocol pieces are sans-IO (`proto::sip`); so is [`core`], which owns the device
//! table, the transactions and the sessions (messages, commands and `now` in, outputs out). The
//! one task of [`driver`] runs it with the sockets ([`transport`]) and persistence ([`store`]).
pub mod core;
pub mod driver;
pub mod localtime;
pub mod store;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::hub::{Hub, StreamDemand};
use crate::proto::sip::manscdp::{CatalogItem, DeviceInfo, RecordItem};
use crate::proto::sip::sdp::MediaTransport;

/// What the registrar knows about a device; persisted, and shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub online: bool,
    /// "udp" or "tcp": how the device talks SIP to us.
    pub transport: String,
    /// The source address of its last request (what we send to: NAT-safe).
    pub addr: SocketAddr,
    pub contact: String,
    pub user_agent: String,
    /// Registration lifetime granted (seconds) and when it was granted (unix seconds).
    pub expires: u64,
    pub registered_at: u64,
    /// Unix seconds of the last keepalive (or registration).
    pub last_keepalive: u64,
    pub info: Option<DeviceInfo>,
    pub channels: Vec<CatalogItem>,
    /// Unix seconds when the catalog was last completed.
    pub catalog_at: Option<u64>,
}

/// What the signalling core refused, dropped or evicted because of a peer (issue 8); shown by
/// `GET /api/v1/gb/counters`. Every one of these also logs, rate-limited.
#[derive(Debug, Default, Serialize)]
pub struct GbCounters {
    /// Requests naming a registered device that came from another address or transport (403).
    pub foreign_source_refused: AtomicU64,
    /// Catalog messages refused: not answering our query and not a well-formed notification.
    pub catalogs_refused: AtomicU64,
    /// Catalogs with no item that would have erased a known channel list.
    pub empty_catalogs_ignored: AtomicU64,
    /// Catalog / RecordInfo aggregations not opened (per-device or global bound reached).
    pub aggregations_refused: AtomicU64,
    /// Items beyond an aggregation's bound, dropped.
    pub aggregation_items_dropped: AtomicU64,
    /// Devices removed to make room (longest offline first), and REGISTERs refused with 503
    /// because every candidate was online.
    pub devices_evicted: AtomicU64,
    pub registers_refused: AtomicU64,
    /// Requests to devices not sent: the destination's (or background queries') share of the
    /// transaction table was used up.
    pub transactions_refused: AtomicU64,
    /// Store writes dropped because the writer's queue was full.
    pub store_writes_dropped: AtomicU64,
}

/// A change of state other modules can react to (the control-center issue turns them into
/// callbacks). Delivered on a bounded broadcast channel: a lagging subscriber loses the oldest.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GbEvent {
    Registered { device: String },
    Unregistered { device: String },
    Online { device: String },
    Offline { device: String, reason: String },
    Catalog { device: String, channels: usize },
    SessionStarted { device: String, channel: String, stream: String },
    SessionEnded { device: String, channel: String, stream: String, reason: String },
}

/// A media session as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub stream: String,
    pub device: String,
    pub channel: String,
    pub kind: &'static str,
    pub transport: MediaTransport,
    pub ssrc: String,
    pub established: bool,
}

/// A session that ended, and why (the last [`ENDED_KEPT`] are kept for the API).
#[derive(Debug, Clone, Serialize)]
pub struct EndedSession {
    pub stream: String,
    pub device: String,
    pub channel: String,
    pub reason: String,
    /// Unix seconds.
    pub ended_at: u64,
}

/// Ended sessions kept for `GET /api/v1/gb/sessions`.
pub const ENDED_KEPT: usize = 64;

/// What a successful INVITE gives back.
#[derive(Debug, Clone, Serialize)]
pub struct PlayInfo {
    pub stream: String,
    pub ssrc: String,
    pub device: String,
    pub channel: String,
    /// The stream was already playing (no new INVITE).
    pub existing: bool,
}

/// Why a request to a device failed; the text names the failed step.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GbError {
    #[error("no device: {0}")]
    NoDevice(String),
    #[error("device {0} is offline")]
    Offline(String),
    #[error("no answer: {0}")]
    NoAnswer(String),
    #[error("refused by the device: {0}")]
    Refused(String),
    #[error("no media: {0}")]
    NoMedia(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("bad request: {0}")]
    Bad(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, GbError>>;

/// A history session request (Playback / Download).
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub device: Option<String>,
    pub channel: String,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    /// `Some(speed)` makes it a Download.
    pub download_speed: Option<u32>,
    pub transport: Option<MediaTransport>,
}

/// Playback control (INFO with MANSRTSP).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum PlaybackControl {
    Play,
    Pause,
    Scale { scale: f32 },
    Seek { seconds: u64 },
}

pub enum Command {
    Play {
        device: Option<String>,
        channel: String,
        transport: Option<MediaTransport>,
        reply: Reply<PlayInfo>,
    },
    History {
        req: HistoryRequest,
        reply: Reply<PlayInfo>,
    },
    Stop {
        stream: String,
        reply: Reply<()>,
    },
    Control {
        stream: String,
        control: PlaybackControl,
        reply: Reply<()>,
    },
    Ptz {
        device: Option<String>,
        channel: String,
        ptz_cmd: String,
        reply: Reply<()>,
    },
    RecordInfo {
        device: Option<String>,
        channel: String,
        start: String,
        end: String,
        reply: Reply<Vec<RecordItem>>,
    },
    Sessions {
        reply: oneshot::Sender<Vec<SessionView>>,
    },
    /// New device passwords (SIGHUP reload, D112): the default one and the per-device ones.
    SetPasswords {
        password: String,
        passwords: BTreeMap<String, String>,
    },
    /// DeviceStatus or DeviceInfo, answered with the response's fields.
    Query {
        device: String,
        cmd: QueryKind,
        reply: Reply<BTreeMap<String, String>>,
    },
}

/// Queries whose answer is one MESSAGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    DeviceStatus,
    DeviceInfo,
}

impl QueryKind {
    pub fn cmd_type(self) -> &'static str {
        match self {
            QueryKind::DeviceStatus => "DeviceStatus",
            QueryKind::DeviceInfo => "DeviceInfo",
        }
    }
}

/// The handle other modules (API, hub on-demand) use.
#[derive(Clone)]
pub struct Gb {
    devices: Arc<RwLock<BTreeMap<String, DeviceRecord>>>,
    cmd: mpsc::Sender<Command>,
    events: broadcast::Sender<GbEvent>,
    hub: Arc<Hub>,
    pub sip_addr: SocketAddr,
    media_timeout: Duration,
    counters: Arc<GbCounters>,
    sip_counters: Arc<transport::SipCounters>,
    /// Admission of SIP-over-TCP connections (shown in `GET /api/v1/listeners` as `sip`).
    pub sip_tcp: Arc<crate::util::admit::Admission>,
    ended: Arc<std::sync::Mutex<std::collections::VecDeque<EndedSession>>>,
    /// The `[sip] db` database, open once and shared with upper layers' tables (D100). Weak:
    /// the store owns it, and a `Gb` handle left somewhere (the hub's demand list) must not keep
    /// the file locked after the gateway stopped (an in-process restart opens it again).
    db: Option<std::sync::Weak<redb::Database>>,
}

impl Gb {
    /// The open `[sip] db` database (`None`: memory only).
    pub fn database(&self) -> Option<Arc<redb::Database>> {
        self.db.as_ref().and_then(std::sync::Weak::upgrade)
    }

    pub fn devices(&self) -> Vec<DeviceRecord> {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Registered devices online and offline, without copying the table (for `/metrics`).
    pub fn device_counts(&self) -> (usize, usize) {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let online = devices.values().filter(|d| d.online).count();
        (online, devices.len() - online)
    }

    pub fn device(&self, id: &str) -> Option<DeviceRecord> {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// What was refused or dropped because of peers, and the SIP sockets' counters.
    pub fn counters(&self) -> serde_json::Value {
        serde_json::json!({ "core": &*self.counters, "sockets": &*self.sip_counters })
    }

    /// The last sessions that ended, newest last, with why.
    pub fn ended_sessions(&self) -> Vec<EndedSession> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Subscribes to state changes.
    pub fn events(&self) -> broadcast::Receiver<GbEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, GbError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.try_send(make(tx)).map_err(|_| GbError::Busy("signalling queue full".into()))?;
        rx.await.map_err(|_| GbError::Busy("signalling stopped".into()))?
    }

    /// INVITEs a live stream (or returns the running one); resolves when the device answered.
    pub async fn play(
        &self,
        device: Option<String>,
        channel: &str,
        transport: Option<MediaTransport>,
    ) -> Result<PlayInfo, GbError> {
        let channel = channel.to_string();
        self.ask(|reply| Command::Play { device, channel, transport, reply }).await
    }

    pub async fn history(&self, req: HistoryRequest) -> Result<PlayInfo, GbError> {
        self.ask(|reply| Command::History { req, reply }).await
    }

    pub async fn stop(&self, stream: &str) -> Result<(), GbError> {
        let stream = stream.to_string();
        self.ask(|reply| Command::Stop { stream, reply }).await
    }

    pub async fn control(&self, stream: &str, control: PlaybackControl) -> Result<(), GbError> {
        let stream = stream.to_string();
        self.ask(|reply| Command::Control { stream, control, reply }).await
    }

    pub async fn ptz(&self, device: Option<String>, channel: &str, ptz_cmd: String) -> Result<(), GbError> {
        let channel = channel.to_string();
        self.ask(|reply| Command::Ptz { device, channel, ptz_cmd, reply }).await
    }

    pub async fn record_info(
        &self,
        device: Option<String>,
        channel: &str,
        start: String,
        end: String,
    ) -> Result<Vec<RecordItem>, GbError> {
        let channel = channel.to_string();
        self.ask(|reply| Command::RecordInfo { device, channel, start, end, reply }).await
    }

    /// Asks a device for its DeviceStatus or DeviceInfo; resolves with the answer's fields.
    pub async fn query(&self, device: &str, cmd: QueryKind) -> Result<BTreeMap<String, String>, GbError> {
        let device = device.to_string();
        self.ask(|reply| Command::Query { device, cmd, reply }).await
    }

    /// Replaces the device passwords (`[sip] password`, resolved as at start, and
    /// `[sip.passwords]`) for the registrations from now on; false when the core is gone.
    pub fn set_passwords(&self, password: String, passwords: BTreeMap<String, String>) -> bool {
        self.cmd.try_send(Command::SetPasswords { password, passwords }).is_ok()
    }

    pub async fn sessions(&self) -> Vec<SessionView> {
        let (tx, rx) = oneshot::channel();
        if self.cmd.try_send(Command::Sessions { reply: tx }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Waits until `stream` is live with a keyframe in its GOP cache.
    pub async fn wait_keyframe(&self, stream: &str) -> Result<(), GbError> {
        let deadline = tokio::time::Instant::now() + self.media_timeout;
        let mut seen = false;
        loop {
            if let Some(s) = self.hub.get(stream) {
                seen = true;
                // Asked for: a stream nobody watched keeps its GOP cache again (D157).
                s.want_gop_cache();
                if s.gop_cache_usage().0 > 0 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GbError::NoMedia(if seen {
                    format!("no keyframe on {stream} within {:?}", self.media_timeout)
                } else {
                    format!("no RTP for {stream} within {:?}", self.media_timeout)
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Live GB channels on demand: `gb/<channel id>`.
impl StreamDemand for Gb {
    fn handles(&self, name: &str) -> bool {
        name.strip_prefix("gb/").is_some_and(|c| !c.is_empty() && !c.contains('/'))
    }

    fn demand(&self, name: &str) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let gb = self.clone();
        let channel = name.trim_start_matches("gb/").to_string();
        Box::pin(async move {
            let info = gb.play(None, &channel, None).await.map_err(|e| e.to_string())?;
            gb.wait_keyframe(&info.stream).await.map_err(|e| e.to_string())
        })
    }
}

pub use self::driver::{resolve_password, start, GbStartError, PASSWORD_FILE};
