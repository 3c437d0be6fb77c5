//! Configuration: TOML, unknown keys rejected, one place for defaults, `validate()` naming the key.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A duration written as "10s", "500ms", "5m" or "1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(HumanDuration).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {text:?} ({e}); write e.g. \"10s\" or \"5m\""))
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub rtp: RtpConfig,
    pub api: ApiConfig,
    pub rtsp: RtspConfig,
    pub rtmp: RtmpConfig,
    /// `[http]`: the HTTP media listener (HTTP-FLV, WebSocket-FLV, HLS, WHEP, the web console).
    pub http: HttpConfig,
    /// `[hls]`: HLS (fMP4, Low-Latency) on the HTTP listener (see [`crate::server::hls`]).
    pub hls: HlsConfig,
    pub sip: SipConfig,
    pub gb: GbConfig,
    pub hub: HubConfig,
    pub log: LogConfig,
    /// `[record]`: raw RTP recording of streams matching a name pattern (D89).
    pub record: RecordConfig,
    pub audio: AudioConfig,
    /// `[auth]`: publish and play credentials (see [`crate::auth`]).
    pub auth: crate::auth::AuthConfig,
    /// `[[pull]]`: RTMP/RTSP sources pulled at boot or on demand (see [`crate::relay`]).
    pub pull: Vec<PullConfig>,
    /// `[shutdown]`: how long a graceful stop (SIGTERM) may take.
    pub shutdown: ShutdownConfig,
    /// `[callbacks]`: events POSTed to a control center (see [`crate::notify`], D93..).
    pub callbacks: CallbacksConfig,
    /// `[webrtc]`: WebRTC playback (WHEP on the HTTP listener, media on one UDP port; D135..).
    pub webrtc: WebRtcConfig,
    /// `[process]`: the process itself (D194: start-up code pages handed back).
    pub process: ProcessConfig,
}

/// `[process]`: read once at start (a reload does not apply it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Once this long after start-up, page out the binary's code and read-only data (Linux
    /// `MADV_PAGEOUT`): start-up touched 10-12 MB of it, the media path keeps 4-5 MB (D194).
    pub release_startup_code: bool,
    /// How long after start-up (listeners bound, channels restored) the release runs, so that
    /// start-up's tail (boot pulls, the first callbacks) is over too (1s to 1h).
    pub release_startup_code_after: HumanDuration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig { release_startup_code: true, release_startup_code_after: HumanDuration(Duration::from_secs(10)) }
    }
}

/// `[shutdown]`: the graceful stop's deadline (D110). Within it gbgate BYEs every GB session and
/// waits for the answers, ends every push cleanly and flushes the callback outbox; what is still
/// running then is cut and named in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout: HumanDuration(Duration::from_secs(10)) }
    }
}

/// How an RTSP pull asks for RTP. `Auto` tries TCP interleaved first and falls back to UDP when
/// the server refuses it (VLC answers 461 Unsupported Transport), and the other way round.
/// (Defined here, below the clients, for `[[pull]] transport`; `client::pull` re-exports it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullTransport {
    #[default]
    Auto,
    Tcp,
    Udp,
}

/// One `[[pull]]` table: a fixed stream (`name`) or a template (`match`), pulled from `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// The stream name of a fixed pull (`"cam1"`, `"live/cam1"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A template: names matching this pattern (`*` matches any run, `"live/*"`) are pulled on
    /// demand from `url` with `{path}` replaced by the requested name.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `rtmp://host[:port]/app/key` or `rtsp://[user:pass@]host[:port]/path`; `{path}` is the
    /// requested stream name.
    pub url: String,
    /// RTSP only: how RTP is asked for (`auto`: TCP, falling back to UDP; `tcp`; `udp`).
    #[serde(default)]
    pub transport: PullTransport,
    /// A fixed pull starts only when a player asks (templates always do).
    #[serde(default)]
    pub on_demand: bool,
    /// With no player (nor push) for this long the pull stops. Unset: on-demand pulls stop after
    /// [`DEFAULT_PULL_IDLE_STOP`], fixed pulls never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<HumanDuration>,
    /// Attempts a player waits for before it is told the stream is not found.
    #[serde(default = "default_pull_retries")]
    pub retries: u32,
    /// Between the starts of two attempts (a fixed pull that keeps failing backs off from here to 30 s).
    #[serde(default = "default_pull_retry_interval")]
    pub retry_interval: HumanDuration,
    /// Bounds the connection, each request, and the wait for the first keyframe of an attempt.
    #[serde(default = "default_pull_timeout")]
    pub timeout: HumanDuration,
}

/// The idle stop of an on-demand pull whose `idle_stop` is unset.
pub const DEFAULT_PULL_IDLE_STOP: Duration = Duration::from_secs(300);

fn default_pull_retries() -> u32 {
    5
}
fn default_pull_retry_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_pull_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl PullConfig {
    /// Started only by a player's demand (templates, and fixed pulls with `on_demand`).
    pub fn is_on_demand(&self) -> bool {
        self.on_demand || self.pattern.is_some()
    }

    /// How long without a player the pull lives; `None`: for ever.
    pub fn idle_stop(&self) -> Option<Duration> {
        match self.idle_stop {
            Some(d) => Some(d.0),
            None if self.is_on_demand() => Some(DEFAULT_PULL_IDLE_STOP),
            None => None,
        }
    }

    /// The source URL of stream `name`.
    pub fn url_for(&self, name: &str) -> String {
        self.url.replace("{path}", name)
    }

    /// What the log and the API call this entry.
    pub fn label(&self) -> String {
        match (&self.name, &self.pattern) {
            (Some(n), _) => format!("name {n:?}"),
            (None, Some(p)) => format!("match {p:?}"),
            _ => "unnamed".into(),
        }
    }

    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let bad = |key: &'static str, what: String| ConfigError::Invalid {
            key,
            message: format!("[[pull]] #{} ({}): {what}", index + 1, self.label()),
        };
        match (&self.name, &self.pattern) {
            (Some(_), Some(_)) => return Err(bad("pull.match", "give `name` or `match`, not both".into())),
            (None, None) => return Err(bad("pull.name", "each [[pull]] needs `name` or `match`".into())),
            _ => {}
        }
        let names = self.name.iter().map(|n| ("pull.name", n)).chain(self.pattern.iter().map(|p| ("pull.match", p)));
        for (key, n) in names {
            if n.is_empty() || n.len() > 256 || n.starts_with('/') || n.chars().any(|c| c.is_control() || c == ' ') {
                return Err(bad(key, format!("{n:?} is not a stream name (1-256 characters, no spaces)")));
            }
            let lower = n.to_ascii_lowercase();
            if lower.starts_with("gb/") || lower.starts_with("rtp/") {
                return Err(bad(key, format!("{n:?}: names under gb/ and rtp/ belong to GB28181/RTP sources")));
            }
        }
        // `{path}` (a player's name, for templates) goes in the path, never in the host.
        let authority = self.url.split_once("://").map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        if authority.contains("{path}") {
            return Err(bad("pull.url", "`{path}` may only appear after the host (in the path)".into()));
        }
        let url = url::Url::parse(&self.url_for("x")).map_err(|e| bad("pull.url", format!("{:?}: {e}", self.url)))?;
        match url.scheme() {
            "rtmp" => {
                // rtmp://host[:port]/app/key: the app is the first path segment.
                if url.path().trim_start_matches('/').split('/').next().is_none_or(str::is_empty) {
                    return Err(bad("pull.url", format!("no app in {:?} (rtmp://host/app/key)", self.url)));
                }
            }
            "rtsp" => {}
            s => return Err(bad("pull.url", format!("scheme {s}:// (rtmp:// or rtsp://)"))),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("pull.url", "no host".into()));
        }
        if !(1..=100).contains(&self.retries) {
            return Err(bad("pull.retries", format!("{} (1 to 100)", self.retries)));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.retry_interval.0) {
            return Err(bad("pull.retry_interval", "between 100ms and 60s".into()));
        }
        if !(Duration::from_millis(500)..=Duration::from_secs(60)).contains(&self.timeout.0) {
            return Err(bad("pull.timeout", "between 500ms and 60s".into()));
        }
        if self.idle_stop.is_some_and(|d| d.0 < Duration::from_secs(1)) {
            return Err(bad("pull.idle_stop", "at least 1s".into()));
        }
        Ok(())
    }
}

/// What leaves gbgate as audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioOutput {
    /// Transcode every stream's audio to AAC-LC, `rate` Hz, mono.
    Aac,
    /// Send the camera's audio as it is (G.711 is then not sent over RTMP).
    Passthrough,
}

/// `[audio]`: audio transcoding and G.711 rate detection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    pub output: AudioOutput,
    /// Output sample rate of the AAC (Hz).
    pub rate: u32,
    /// AAC bitrate (bit/s).
    pub bitrate: u32,
    /// "syom" (pure Rust, default) or "fdk" (needs the `fdk-aac` cargo feature).
    pub encoder: EncoderKind,
    /// G.711 sample rate: 0 = detect (PS carries none), or 8000 / 16000 to force it.
    pub g711_rate: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            output: AudioOutput::Aac,
            rate: 11_025,
            bitrate: 24_000,
            encoder: EncoderKind::Syom,
            g711_rate: 0,
        }
    }
}

/// Which streams keep a GOP cache (`[hub] gop_cache`, D157).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GopCacheMode {
    /// Streams with players now, or started, watched or asked for (on-demand starts, the API's
    /// play) within `gop_cache_idle`: the first player of a stream nobody watched for longer waits
    /// for its next keyframe.
    Watched,
    /// Every stream (each one's first player starts at once), within `gop_cache_total_bytes`.
    Always,
}

/// What to do with an RTP stream whose SSRC nobody announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSsrc {
    /// Create a stream named `rtp/<SSRC as 8 upper-case hex digits>`.
    Publish,
    /// Count and log it, create nothing.
    Report,
    /// Ignore it silently (still counted).
    Drop,
}

/// When RTP streams send RTCP receiver reports to their source (`[rtp] rtcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtcpMode {
    /// GB sessions whose SDP answer implies RTCP: UDP (RTP/AVP: to `a=rtcp`, else the port the
    /// camera's RTCP came from, else its RTP port + 1), TCP only with `a=rtcp-mux`.
    Auto,
    /// Every RTP stream, unannounced ones included (TCP: on the connection).
    Always,
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// UDP and TCP are both bound on this one address.
    pub listen: SocketAddr,
    pub unknown_ssrc: UnknownSsrc,
    /// Upper bound on concurrent RTP streams (UDP SSRCs plus TCP connections).
    pub max_streams: usize,
    /// A stream with no data for this long ends.
    pub timeout: HumanDuration,
    /// Socket receive buffer asked of the kernel (bytes); the kernel may cap it (net.core.rmem_max).
    pub recv_buffer: usize,
    /// Packets held by the reorder buffer before a gap is declared lost.
    pub reorder_packets: usize,
    /// Longest a packet waits in the reorder buffer for a missing predecessor.
    pub reorder_delay: HumanDuration,
    /// Packets queued from the socket to one stream's task; beyond it packets are dropped and counted.
    pub stream_queue: usize,
    /// Concurrent TCP connections accepted on the RTP port.
    pub max_tcp_connections: usize,
    /// A UDP stream is bound to the source address of its first datagram; its SSRC from another
    /// address is dropped, unless the bound source has been quiet this long (the camera moved).
    pub rebind_after: HumanDuration,
    /// Streams of SSRCs nobody announced (counted within `max_streams`): the rest is kept for
    /// announced sessions (GB INVITEs, API channels).
    pub max_unknown_streams: usize,
    /// Streams of unannounced SSRCs from one source IP.
    pub max_unknown_per_source: usize,
    /// Largest access unit (bytes) reassembled per stream; larger ones are dropped and counted.
    pub max_access_unit: usize,
    /// Payload bytes one stream's reorder buffer may hold waiting for a gap.
    pub reorder_bytes: usize,
    /// Bytes queued from the socket to one stream's task (besides `stream_queue` packets).
    pub stream_queue_bytes: usize,
    /// All RTP streams together: queued, reordered and reassembly bytes. Beyond it packets are
    /// dropped and streams shed their partial access units (counted as `budget_drops`).
    pub max_buffered_bytes: usize,
    /// RTP over TCP: the first RFC 4571 frame must arrive within this of the connection, and each
    /// later frame within this of its first byte (a deadline per frame, not per read).
    pub tcp_frame_timeout: HumanDuration,
    /// Concurrent RTP/TCP connections from one source IP.
    pub max_tcp_per_source: usize,
    /// RTCP receiver reports to the camera (RFC 3550 6.4.2): `auto`, `always` or `off`.
    pub rtcp: RtcpMode,
    /// Interval between receiver reports of one stream (clamped to 1..60 s).
    pub rtcp_interval: HumanDuration,
    /// UDP: after a receive that found datagrams, the receive thread waits this long before the
    /// next, so each wake-up takes a batch (D153). Adds at most this much latency; 0 = take
    /// each datagram as it arrives (one wake-up per datagram or burst).
    pub udp_batch_wait: HumanDuration,
}

impl Default for RtpConfig {
    fn default() -> Self {
        RtpConfig {
            listen: "0.0.0.0:10000".parse().expect("literal"),
            unknown_ssrc: UnknownSsrc::Publish,
            max_streams: 1000,
            timeout: HumanDuration(Duration::from_secs(10)),
            recv_buffer: 8 * 1024 * 1024,
            reorder_packets: 64,
            reorder_delay: HumanDuration(Duration::from_millis(100)),
            stream_queue: 2048,
            max_tcp_connections: 1000,
            rebind_after: HumanDuration(Duration::from_secs(2)),
            max_unknown_streams: 200,
            max_unknown_per_source: 16,
            max_access_unit: 4 << 20,
            reorder_bytes: 1 << 20,
            stream_queue_bytes: 2 << 20,
            max_buffered_bytes: 512 << 20,
            tcp_frame_timeout: HumanDuration(Duration::from_secs(5)),
            max_tcp_per_source: 64,
            rtcp: RtcpMode::Auto,
            rtcp_interval: HumanDuration(Duration::from_secs(5)),
            udp_batch_wait: HumanDuration(Duration::from_millis(1)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Without a `token` this must be a loopback address (the gateway refuses to start otherwise).
    pub listen: SocketAddr,
    /// Bearer token: when set, every endpoint but `/healthz` and `/metrics` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Host names the API answers to besides IP literals and `localhost` (DNS rebinding defence).
    pub hosts: Vec<String>,
    /// Origins (`http://console.example:3000`) allowed to write besides the API's own.
    pub allowed_origins: Vec<String>,
    /// A connection that has not sent a request's head within this long is closed.
    pub header_timeout: HumanDuration,
    /// Concurrent API connections (when full, the oldest one without a request is closed first).
    pub max_connections: usize,
    /// Concurrent API connections per source address.
    pub max_connections_per_source: usize,
    /// Streams with their own series in `GET /metrics` (the oldest first); the rest count only
    /// in the totals. Bounds the scrape's cardinality.
    pub metrics_streams: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".parse().expect("literal"),
            token: None,
            hosts: Vec::new(),
            allowed_origins: Vec::new(),
            header_timeout: HumanDuration(Duration::from_secs(5)),
            max_connections: 256,
            max_connections_per_source: 32,
            metrics_streams: 200,
        }
    }
}

/// The SIP side of GB/T 28181: registrar and controller for cameras and NVRs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// `false` leaves SIP off (no registrar, no play on demand).
    pub enabled: bool,
    /// UDP and TCP are both bound on this address.
    pub listen: SocketAddr,
    /// Our 20-digit GB code (type 200: central signalling server).
    pub id: String,
    /// SIP domain and digest realm (normally the first 10 digits of `id`).
    pub domain: String,
    /// Default password of every device (digest MD5). Unset: generated at first start and kept
    /// in `gbgate-sip-password` next to `db` (issue 8, hole 4). `""` written out explicitly:
    /// devices register without a challenge.
    pub password: Option<String>,
    /// Per-device passwords, by device ID, overriding `password`.
    pub passwords: std::collections::BTreeMap<String, String>,
    /// The address devices reach us at, put in Contact, Via and SDP `c=`. Default: the listen
    /// address when it is not a wildcard, else the local address of the route to each device.
    pub advertise: Option<std::net::IpAddr>,
    /// How long a nonce stays valid after it is issued.
    pub nonce_ttl: HumanDuration,
    /// Failed authentications allowed per device ID and source IP per minute; beyond it that
    /// device's REGISTERs from that IP are dropped (devices with the right password behind the
    /// same NAT are not). Ten times as many per IP, all IDs together, stop IDs it has not
    /// registered yet (a password guesser rotating IDs).
    pub auth_failures_per_minute: u32,
    /// Upper bound of known devices. When full, the longest-offline device gives way.
    pub max_devices: usize,
    /// Devices registered from one source IP; beyond it that IP's longest-offline device gives
    /// way, or the REGISTER gets 503.
    pub max_devices_per_source: usize,
    /// DeviceInfo + Catalog queries sent after registrations, per second, all devices together
    /// (more wait for a later tick); a device is not asked again within a minute.
    pub queries_per_second: u32,
    /// Upper bound of pending SIP transactions (each side).
    pub max_transactions: usize,
    /// Pending client transactions towards one IP (so one peer cannot fill the table; queries
    /// after registrations may take half of it at most).
    pub max_transactions_per_peer: usize,
    /// Concurrent SIP-over-TCP connections.
    pub max_tcp_connections: usize,
    /// SIP-over-TCP connections from one source IP (a NAT of many devices needs more). When a cap
    /// is reached, the oldest connection that has not sent a whole message yet makes room.
    pub max_tcp_connections_per_source: usize,
    /// A SIP-over-TCP connection must deliver its first whole message within this.
    pub tcp_request_timeout: HumanDuration,
    /// A SIP-over-TCP connection with no whole message for this long is closed (a device sends a
    /// keepalive every `[gb] keepalive_interval`; bytes that never make a message do not count).
    pub tcp_idle_timeout: HumanDuration,
    /// Embedded database (redb) keeping registrations and device facts across restarts.
    /// Unset: kept in memory only.
    pub db: Option<std::path::PathBuf>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            listen: "0.0.0.0:5060".parse().expect("literal"),
            id: "34020000002000000001".into(),
            domain: "3402000000".into(),
            password: None,
            passwords: Default::default(),
            advertise: None,
            nonce_ttl: HumanDuration(Duration::from_secs(300)),
            auth_failures_per_minute: 10,
            max_devices: 10_000,
            max_devices_per_source: 500,
            queries_per_second: 20,
            max_transactions: 4096,
            max_transactions_per_peer: 256,
            max_tcp_connections: 2000,
            max_tcp_connections_per_source: 64,
            tcp_request_timeout: HumanDuration(Duration::from_secs(5)),
            tcp_idle_timeout: HumanDuration(Duration::from_secs(180)),
            db: None,
        }
    }
}

/// GB28181 device and session policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GbConfig {
    /// Expected keepalive interval of devices ...
    pub keepalive_interval: HumanDuration,
    /// ... and how many may be missed before the device is offline.
    pub keepalive_misses: u32,
    /// A live stream nobody watches for this long is ended with BYE.
    pub idle_stop: HumanDuration,
    /// Media transport of live INVITEs: "udp", "tcp-passive" (the camera connects to our RTP
    /// port) or "tcp-active" (we connect to the camera).
    pub transport: crate::proto::sip::sdp::MediaTransport,
    /// Per-device transport overrides, by device ID.
    pub transports: std::collections::BTreeMap<String, crate::proto::sip::sdp::MediaTransport>,
    /// How long an INVITE may wait for its final answer.
    pub invite_timeout: HumanDuration,
    /// How long after the answer the first keyframe may take before the session is torn down.
    pub media_timeout: HumanDuration,
    /// Catalog aggregation ends after this long without a new part (devices that never reach SumNum).
    pub catalog_timeout: HumanDuration,
    /// Query DeviceInfo and Catalog when a device registers.
    pub query_on_register: bool,
    /// Concurrent media sessions (live, playback, download).
    pub max_sessions: usize,
}

impl Default for GbConfig {
    fn default() -> Self {
        GbConfig {
            keepalive_interval: HumanDuration(Duration::from_secs(60)),
            keepalive_misses: 3,
            idle_stop: HumanDuration(Duration::from_secs(60)),
            transport: crate::proto::sip::sdp::MediaTransport::Udp,
            transports: Default::default(),
            invite_timeout: HumanDuration(Duration::from_secs(8)),
            media_timeout: HumanDuration(Duration::from_secs(10)),
            catalog_timeout: HumanDuration(Duration::from_secs(10)),
            query_on_register: true,
            max_sessions: 1000,
        }
    }
}

/// The RTSP server (players: `rtsp://HOST:PORT/<stream name>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    pub listen: SocketAddr,
    /// `false` leaves the port closed.
    pub enabled: bool,
    /// A session with no request (or RTCP) for this long is closed.
    pub session_timeout: HumanDuration,
    /// Largest RTP payload sent to players.
    pub max_payload: usize,
    /// Concurrent RTSP connections. When full, the oldest connection that has not completed a
    /// request is closed to make room.
    pub max_connections: usize,
    /// Concurrent RTSP connections per source address.
    pub max_connections_per_source: usize,
    /// A connection that has not completed its first request within this long is closed, and so
    /// is one whose request in progress stalls this long.
    pub request_timeout: HumanDuration,
    /// Merged write: an interleaved (TCP) player's media is written at most once per this interval
    /// (0: once per video frame). Fewer, larger writes and wakeups halve the CPU per player, at
    /// the price of up to this much latency (SRS merges 350 ms by default). The first write after
    /// PLAY (the cached GOP) never waits.
    pub merge_write: HumanDuration,
    /// At `merge_write = "0s"`, the publisher writes each frame to interleaved players that keep
    /// up itself, without waking their tasks (D183); off: every frame goes through the player's task.
    pub direct_write: bool,
    /// An RTSP publisher (ANNOUNCE/RECORD) that sends no media for this long is disconnected and
    /// its stream ends; so is one that announced and did not RECORD within it.
    pub publish_timeout: HumanDuration,
    /// UDP receive port pairs bound for RTSP publishers' tracks, all publishers together; a UDP
    /// SETUP beyond it is refused (461: the publisher may retry over TCP).
    pub max_record_udp_tracks: usize,
}

impl Default for RtspConfig {
    fn default() -> Self {
        RtspConfig {
            listen: "0.0.0.0:8554".parse().expect("literal"),
            enabled: true,
            session_timeout: HumanDuration(Duration::from_secs(60)),
            max_payload: 1400,
            max_connections: 2000,
            max_connections_per_source: 64,
            request_timeout: HumanDuration(Duration::from_secs(5)),
            merge_write: HumanDuration(Duration::from_millis(200)),
            direct_write: true,
            publish_timeout: HumanDuration(Duration::from_secs(10)),
            max_record_udp_tracks: 512,
        }
    }
}

/// How H.265 is carried in FLV (defined by the FLV muxer, which config sits above).
pub use crate::proto::flv::HevcFlv;

/// Which AAC encoder builds the output audio (`fdk` needs the `fdk-aac` cargo feature). Defined
/// here, not in media/, because config sits below media (media reads its settings from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    #[default]
    Syom,
    Fdk,
}

/// One static RTMP push: every stream matching `stream` is pushed to `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// A stream name, or a pattern with `*` (e.g. `"rtp/*"`, `"*"`).
    pub stream: String,
    /// `rtmp://host[:port]/app/key`; `{stream}` is replaced by the stream name.
    pub url: String,
}

/// The RTMP server (play and publish: `rtmp://HOST:PORT/<stream name>`) and static pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    pub enabled: bool,
    pub hevc: HevcFlv,
    /// Timeout of each step of a push (connect, handshake, connect, publish) and of a stalled send.
    pub push_timeout: HumanDuration,
    pub push: Vec<PushConfig>,
    /// Concurrent RTMP connections.
    pub max_connections: usize,
    /// Merged write for players, as `[rtsp] merge_write`.
    pub merge_write: HumanDuration,
    /// Direct writes from the publishing side at `merge_write = "0s"`, as `[rtsp] direct_write`.
    pub direct_write: bool,
    /// Longest RTMP message a peer may send (a 4K keyframe is a few MB); refused at its chunk header.
    pub max_message_bytes: usize,
    /// Bytes of partially received messages held by all RTMP connections together.
    pub max_partial_bytes: usize,
    /// A connection must complete the handshake, connect and publish/play within this.
    pub setup_timeout: HumanDuration,
    /// Concurrent connections from one source address; when reached, its oldest connection that
    /// is not yet publishing or playing makes room (as `[rtsp]`, D60).
    pub max_connections_per_source: usize,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        RtmpConfig {
            listen: "0.0.0.0:1935".parse().expect("literal"),
            enabled: true,
            hevc: HevcFlv::Enhanced,
            push_timeout: HumanDuration(Duration::from_secs(5)),
            push: Vec::new(),
            max_connections: 2000,
            merge_write: HumanDuration(Duration::from_millis(200)),
            direct_write: true,
            max_message_bytes: 8 << 20,
            max_partial_bytes: 128 << 20,
            setup_timeout: HumanDuration(Duration::from_secs(5)),
            max_connections_per_source: 64,
        }
    }
}

/// The HTTP media listener: browser outputs (HTTP-FLV `/<stream>.flv`, WebSocket-FLV on the same
/// path, HLS, WHEP) and the web console. Separate from the control API, which keeps its own
/// listener, token and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `false` leaves the port closed.
    pub enabled: bool,
    /// Concurrent connections (players and page loads). When full, the oldest connection that
    /// has not completed a request is closed to make room.
    pub max_connections: usize,
    /// Concurrent connections per source address.
    pub max_connections_per_source: usize,
    /// A connection must send each request head within this (the first one included).
    pub header_timeout: HumanDuration,
    /// Merged write for HTTP-FLV and WebSocket-FLV players, as `[rtsp] merge_write`.
    pub merge_write: HumanDuration,
    /// H.265 in HTTP-FLV when the player does not ask (`?hevc=enhanced|legacy`); unset: `[rtmp] hevc`.
    pub hevc: Option<HevcFlv>,
    /// Media an FLV player may find queued when it next writes (at least 256 KiB); beyond it the
    /// player skips to the newest keyframe it holds (or the next).
    pub max_queue_bytes: usize,
    /// A write to a player that makes no progress for this long disconnects it.
    pub write_timeout: HumanDuration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8088".parse().expect("literal"),
            enabled: true,
            max_connections: 2000,
            max_connections_per_source: 64,
            header_timeout: HumanDuration(Duration::from_secs(5)),
            merge_write: HumanDuration(Duration::from_millis(200)),
            hevc: None,
            max_queue_bytes: 4 << 20,
            write_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// HLS on the HTTP listener: `GET /<stream>/index.m3u8`, fMP4 segments and LL-HLS parts, made
/// only while someone watches (D129..D134).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// `false`: HLS requests get 404.
    pub enabled: bool,
    /// Partial segments (LL-HLS parts) are at most about this long.
    pub part_duration: HumanDuration,
    /// A segment ends at the first video keyframe after this much media.
    pub segment_duration: HumanDuration,
    /// A segment with no keyframe is cut at this length anyway.
    pub max_segment_duration: HumanDuration,
    /// Complete segments kept in the playlist and in memory.
    pub segments: usize,
    /// Bytes one stream's segmenter keeps (segments, parts, init segments); the oldest segments
    /// leave the window to stay within it.
    pub max_bytes_per_stream: usize,
    /// Segmenters running at once (each one is a stream somebody watches over HLS).
    pub max_streams: usize,
    /// Viewer sessions at once, all streams together.
    pub max_sessions: usize,
    /// Viewer sessions at once from one address.
    pub max_sessions_per_source: usize,
    /// A stream's segmenter stops, and a viewer session ends, when no request came for this long.
    pub idle_timeout: HumanDuration,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig {
            enabled: true,
            part_duration: HumanDuration(Duration::from_millis(500)),
            segment_duration: HumanDuration(Duration::from_secs(2)),
            max_segment_duration: HumanDuration(Duration::from_secs(10)),
            segments: 7,
            max_bytes_per_stream: 32 << 20,
            max_streams: 64,
            max_sessions: 10_000,
            max_sessions_per_source: 64,
            idle_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// The GOP cache of one stream holds at most this many bytes ...
    pub gop_cache_bytes: usize,
    /// ... and at most this much media time.
    pub gop_cache_duration: HumanDuration,
    /// Every stream's GOP cache together. Beyond it, the stream whose cache grows empties it (its
    /// next players start at its next keyframe); counted in `GET /api/v1/rtp` as `gop_budget_clears`.
    pub gop_cache_total_bytes: usize,
    /// Which streams keep a GOP cache (D157): `watched` (players now, within `gop_cache_idle`, or
    /// asked for by an on-demand start) or `always` (every stream, within the budget).
    pub gop_cache: GopCacheMode,
    /// How long a `watched` stream keeps its cache after it started, its last player left or it
    /// was last asked for.
    pub gop_cache_idle: HumanDuration,
    /// Frames queued per subscriber; a subscriber that falls this far behind skips to the next keyframe.
    pub subscriber_queue: usize,
    /// A subscriber that had to skip this many times within a minute is disconnected.
    pub max_skips_per_minute: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            gop_cache_bytes: 8 * 1024 * 1024,
            gop_cache_duration: HumanDuration(Duration::from_secs(10)),
            gop_cache_total_bytes: 256 * 1024 * 1024,
            gop_cache: GopCacheMode::Watched,
            gop_cache_idle: HumanDuration(Duration::from_secs(30)),
            subscriber_queue: 512,
            max_skips_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. "info" or "gbgate=debug". Overridden by RUST_LOG.
    pub level: String,
    /// Per-stream event logs go to `<dir>/<stream>/<local date>.log` (D90). Unset: systemd's
    /// `$LOGS_DIRECTORY` when set, else no per-stream logs.
    pub dir: Option<std::path::PathBuf>,
    /// Per-stream logs on or off (with `dir` or `$LOGS_DIRECTORY` set).
    pub streams: bool,
    /// Per-stream log files older than this many days are deleted.
    pub keep_days: u32,
    /// Lines per minute one stream may write on average (token bucket refill) ...
    pub lines_per_minute: u32,
    /// ... and in a burst (bucket size). Suppressed lines are counted and reported.
    pub burst: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), dir: None, streams: true, keep_days: 14, lines_per_minute: 30, burst: 20 }
    }
}

/// `[record]`: raw RTP recording (D89), in the `[u16 big-endian length][RTP packet]` format
/// `gbgate probe` and `gbgate send` read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// Recordings go to `<dir>/<stream name, / as _>/<UTC start>.rtp`. Unset: no recording.
    pub dir: Option<std::path::PathBuf>,
    /// Stream name patterns to record (`*` any characters, `?` one), e.g. `["gb/*", "rtp/*"]`.
    pub streams: Vec<String>,
    /// A new file when the current one would exceed this many bytes ...
    pub segment_bytes: u64,
    /// ... or is this old.
    pub segment_duration: HumanDuration,
    /// Oldest files of a stream are deleted to keep its recordings within this ...
    pub max_bytes_per_stream: u64,
    /// ... and all recordings within this (files of ended streams included).
    pub max_bytes_total: u64,
    /// Bytes waiting for the disk writer, all streams together; beyond it packets are dropped
    /// and counted (ingest never waits for the disk).
    pub queue_bytes: usize,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            dir: None,
            streams: Vec::new(),
            segment_bytes: 64 << 20,
            segment_duration: HumanDuration(Duration::from_secs(600)),
            max_bytes_per_stream: 1 << 30,
            max_bytes_total: 10 << 30,
            queue_bytes: 16 << 20,
        }
    }
}

/// `[callbacks]`: JSON POSTs to a control center (D93..D99). `url` is the default target of every
/// event, the access hooks included; each event's own key overrides it, "" turns it off. No
/// target for an event: it is not sent (and `on_publish`/`on_play` without a target add no
/// latency: the `[auth]` rule decides).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbacksConfig {
    pub url: Option<String>,
    pub gateway_started: Option<String>,
    pub stream_state: Option<String>,
    pub unknown_ssrc: Option<String>,
    pub traffic_report: Option<String>,
    /// Asked before an RTMP publish or RTSP ANNOUNCE is let in (defaults to `url`; "" = never).
    pub on_publish: Option<String>,
    /// Asked before an RTSP or RTMP player is let in (defaults to `url`; "" = never).
    pub on_play: Option<String>,
    /// `traffic_report` period, and the window in which one SSRC is reported once.
    pub report_interval: HumanDuration,
    /// One POST (connect, send, answer) must finish within this.
    pub timeout: HumanDuration,
    /// Failed POSTs of one event retried this many times (with doubling backoff) before it is dropped.
    pub retries: u32,
    /// First retry delay; doubled per attempt up to `retry_max`.
    pub retry_initial: HumanDuration,
    pub retry_max: HumanDuration,
    /// Bytes of JSON bodies waiting to be sent, all targets together; beyond it the oldest are
    /// dropped (counted).
    pub outbox_bytes: usize,
    /// `on_publish`/`on_play` answer deadline; past it the `[auth]` rule decides.
    pub authorize_timeout: HumanDuration,
    /// A live stream that received no frame for this long is reported `stalled` (once; `resumed`
    /// when frames come back).
    pub stall_after: HumanDuration,
    /// Where the start reason is kept (version + clean-shutdown marker). Unset: next to
    /// `[sip] db` as `gbgate-state.json`, else no file (every start is a `first_start`).
    pub state_file: Option<std::path::PathBuf>,
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        CallbacksConfig {
            url: None,
            gateway_started: None,
            stream_state: None,
            unknown_ssrc: None,
            traffic_report: None,
            on_publish: None,
            on_play: None,
            report_interval: HumanDuration(Duration::from_secs(30)),
            timeout: HumanDuration(Duration::from_secs(5)),
            retries: 5,
            retry_initial: HumanDuration(Duration::from_secs(1)),
            retry_max: HumanDuration(Duration::from_secs(60)),
            outbox_bytes: 4 << 20,
            authorize_timeout: HumanDuration(Duration::from_secs(2)),
            stall_after: HumanDuration(Duration::from_secs(5)),
            state_file: None,
        }
    }
}

impl CallbacksConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let urls = [
            ("callbacks.url", &self.url),
            ("callbacks.gateway_started", &self.gateway_started),
            ("callbacks.stream_state", &self.stream_state),
            ("callbacks.unknown_ssrc", &self.unknown_ssrc),
            ("callbacks.traffic_report", &self.traffic_report),
            ("callbacks.on_publish", &self.on_publish),
            ("callbacks.on_play", &self.on_play),
        ];
        for (key, url) in urls {
            if let Some(u) = url.as_deref().filter(|u| !u.is_empty()) {
                let parsed = url::Url::parse(u)
                    .map_err(|e| ConfigError::Invalid { key, message: format!("{u:?} is not a URL ({e})") })?;
                if parsed.scheme() != "http" || parsed.host_str().is_none() {
                    return Err(ConfigError::Invalid { key, message: format!("{u:?}: only http://host[:port]/path") });
                }
            }
        }
        let at_least = |key: &'static str, v: Duration, min: Duration| {
            if v < min {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("at least {}", humantime::format_duration(min)),
                });
            }
            Ok(())
        };
        at_least("callbacks.report_interval", self.report_interval.0, Duration::from_millis(500))?;
        at_least("callbacks.timeout", self.timeout.0, Duration::from_millis(50))?;
        at_least("callbacks.authorize_timeout", self.authorize_timeout.0, Duration::from_millis(50))?;
        at_least("callbacks.retry_initial", self.retry_initial.0, Duration::from_millis(10))?;
        at_least("callbacks.retry_max", self.retry_max.0, self.retry_initial.0)?;
        at_least("callbacks.stall_after", self.stall_after.0, Duration::from_millis(500))?;
        if self.retries > 100 {
            return Err(ConfigError::Invalid { key: "callbacks.retries", message: "at most 100".into() });
        }
        if self.outbox_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid { key: "callbacks.outbox_bytes", message: "at least 65536".into() });
        }
        Ok(())
    }

    /// Whether any event has a target.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
            || self.gateway_started.is_some()
            || self.stream_state.is_some()
            || self.unknown_ssrc.is_some()
            || self.traffic_report.is_some()
            || self.on_publish.is_some()
            || self.on_play.is_some()
    }
}

impl Config {
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_string(), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    fn validate_hls(&self) -> Result<(), ConfigError> {
        let h = &self.hls;
        let within = |key: &'static str, d: Duration, lo: Duration, hi: Duration| {
            if (lo..=hi).contains(&d) {
                Ok(())
            } else {
                Err(ConfigError::Invalid { key, message: format!("between {lo:?} and {hi:?}") })
            }
        };
        let ms = Duration::from_millis;
        within("hls.part_duration", h.part_duration.0, ms(100), ms(2000))?;
        within("hls.segment_duration", h.segment_duration.0, h.part_duration.0, ms(30_000))?;
        within("hls.max_segment_duration", h.max_segment_duration.0, h.segment_duration.0, ms(60_000))?;
        within("hls.idle_timeout", h.idle_timeout.0, ms(1000), ms(3_600_000))?;
        if !(2..=100).contains(&h.segments) {
            return Err(ConfigError::Invalid { key: "hls.segments", message: "between 2 and 100".into() });
        }
        if h.max_bytes_per_stream < 1 << 20 {
            return Err(ConfigError::Invalid { key: "hls.max_bytes_per_stream", message: "at least 1048576".into() });
        }
        for (key, v) in [
            ("hls.max_streams", h.max_streams),
            ("hls.max_sessions", h.max_sessions),
            ("hls.max_sessions_per_source", h.max_sessions_per_source),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid { key, message: "must be positive".into() });
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn positive(key: &'static str, v: usize) -> Result<(), ConfigError> {
            if v == 0 {
                return Err(ConfigError::Invalid { key, message: "must be greater than 0".into() });
            }
            Ok(())
        }
        positive("rtp.max_streams", self.rtp.max_streams)?;
        let t = self.shutdown.timeout.0;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&t) {
            return Err(ConfigError::Invalid { key: "shutdown.timeout", message: "between 1s and 300s".into() });
        }
        let t = self.process.release_startup_code_after.0;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&t) {
            return Err(ConfigError::Invalid {
                key: "process.release_startup_code_after",
                message: "between 1s and 1h".into(),
            });
        }
        let r = &self.record;
        if r.segment_bytes < 4096 || r.max_bytes_per_stream < r.segment_bytes || r.max_bytes_total < r.segment_bytes {
            return Err(ConfigError::Invalid {
                key: "record.segment_bytes",
                message: "at least 4096, and at most record.max_bytes_per_stream and record.max_bytes_total".into(),
            });
        }
        if r.segment_duration.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid { key: "record.segment_duration", message: "at least 100ms".into() });
        }
        positive("record.queue_bytes", r.queue_bytes)?;
        positive("log.keep_days", self.log.keep_days as usize)?;
        positive("log.lines_per_minute", self.log.lines_per_minute as usize)?;
        positive("log.burst", self.log.burst as usize)?;
        positive("rtp.reorder_packets", self.rtp.reorder_packets)?;
        positive("rtp.stream_queue", self.rtp.stream_queue)?;
        positive("rtp.max_tcp_connections", self.rtp.max_tcp_connections)?;
        positive("sip.max_devices", self.sip.max_devices)?;
        positive("sip.max_tcp_connections_per_source", self.sip.max_tcp_connections_per_source)?;
        if self.sip.tcp_request_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid { key: "sip.tcp_request_timeout", message: "at least 100ms".into() });
        }
        if self.sip.tcp_idle_timeout.0 < self.sip.tcp_request_timeout.0 {
            return Err(ConfigError::Invalid {
                key: "sip.tcp_idle_timeout",
                message: "at least sip.tcp_request_timeout".into(),
            });
        }
        positive("sip.max_devices_per_source", self.sip.max_devices_per_source)?;
        positive("sip.queries_per_second", self.sip.queries_per_second as usize)?;
        positive("sip.max_transactions", self.sip.max_transactions)?;
        positive("sip.max_transactions_per_peer", self.sip.max_transactions_per_peer)?;
        positive("rtp.max_tcp_per_source", self.rtp.max_tcp_per_source)?;
        positive("rtp.max_unknown_per_source", self.rtp.max_unknown_per_source)?;
        positive("rtp.stream_queue_bytes", self.rtp.stream_queue_bytes)?;
        positive("rtp.max_buffered_bytes", self.rtp.max_buffered_bytes)?;
        if self.rtp.max_access_unit < 64 << 10 {
            return Err(ConfigError::Invalid { key: "rtp.max_access_unit", message: "at least 65536".into() });
        }
        if self.rtp.udp_batch_wait.0 > Duration::from_millis(20) {
            return Err(ConfigError::Invalid { key: "rtp.udp_batch_wait", message: "at most 20ms".into() });
        }
        if self.rtp.tcp_frame_timeout.0 < Duration::from_millis(500) {
            return Err(ConfigError::Invalid { key: "rtp.tcp_frame_timeout", message: "at least 500ms".into() });
        }
        positive("hub.gop_cache_bytes", self.hub.gop_cache_bytes)?;
        positive("hub.gop_cache_total_bytes", self.hub.gop_cache_total_bytes)?;
        positive("hub.subscriber_queue", self.hub.subscriber_queue)?;
        positive("rtmp.max_connections_per_source", self.rtmp.max_connections_per_source)?;
        positive("rtmp.max_partial_bytes", self.rtmp.max_partial_bytes)?;
        // An RTMP message length is 24 bits; below 64 KiB a keyframe of any real stream is refused.
        if !(64 << 10..=0xFF_FFFF).contains(&self.rtmp.max_message_bytes) {
            return Err(ConfigError::Invalid {
                key: "rtmp.max_message_bytes",
                message: "between 65536 and 16777215".into(),
            });
        }
        if self.rtmp.setup_timeout.0 < Duration::from_millis(500) {
            return Err(ConfigError::Invalid { key: "rtmp.setup_timeout", message: "at least 500ms".into() });
        }
        positive("api.max_connections", self.api.max_connections)?;
        positive("api.max_connections_per_source", self.api.max_connections_per_source)?;
        positive("rtsp.max_connections", self.rtsp.max_connections)?;
        positive("http.max_connections", self.http.max_connections)?;
        self.validate_hls()?;
        positive("http.max_connections_per_source", self.http.max_connections_per_source)?;
        // Below a merge interval of a high-bitrate stream a player would skip all the time.
        if self.http.max_queue_bytes < 256 << 10 {
            return Err(ConfigError::Invalid { key: "http.max_queue_bytes", message: "at least 262144".into() });
        }
        if self.http.write_timeout.0 < Duration::from_millis(500) {
            return Err(ConfigError::Invalid { key: "http.write_timeout", message: "at least 500ms".into() });
        }
        positive("rtsp.max_connections_per_source", self.rtsp.max_connections_per_source)?;
        for (key, d) in [
            ("api.header_timeout", self.api.header_timeout.0),
            ("rtsp.request_timeout", self.rtsp.request_timeout.0),
            ("http.header_timeout", self.http.header_timeout.0),
        ] {
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&d) {
                return Err(ConfigError::Invalid { key, message: "between 100ms and 60s".into() });
            }
        }
        // A bearer token is the only thing between the network and the cameras' controls.
        if self.api.token.as_ref().is_some_and(|t| t.chars().count() < 16) {
            return Err(ConfigError::Invalid { key: "api.token", message: "at least 16 characters".into() });
        }
        if self.rtp.reorder_packets > 4096 {
            return Err(ConfigError::Invalid { key: "rtp.reorder_packets", message: "at most 4096".into() });
        }
        if self.rtp.timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid { key: "rtp.timeout", message: "at least 100ms".into() });
        }
        if self.rtp.reorder_delay.0 > Duration::from_secs(2) {
            return Err(ConfigError::Invalid { key: "rtp.reorder_delay", message: "at most 2s".into() });
        }
        // A merging player reads its queue only once per interval: keep it well inside the queue.
        for (key, merge) in [
            ("rtsp.merge_write", self.rtsp.merge_write.0),
            ("rtmp.merge_write", self.rtmp.merge_write.0),
            ("http.merge_write", self.http.merge_write.0),
        ] {
            if merge > Duration::from_secs(1) {
                return Err(ConfigError::Invalid { key, message: "at most 1s".into() });
            }
        }
        if !(200..=65_000).contains(&self.rtsp.max_payload) {
            return Err(ConfigError::Invalid { key: "rtsp.max_payload", message: "between 200 and 65000".into() });
        }
        for push in &self.rtmp.push {
            if !push.url.starts_with("rtmp://") {
                return Err(ConfigError::Invalid {
                    key: "rtmp.push.url",
                    message: format!("{:?} is not an rtmp:// URL", push.url),
                });
            }
            if push.stream.is_empty() {
                return Err(ConfigError::Invalid { key: "rtmp.push.stream", message: "empty".into() });
            }
        }
        const AAC_RATES: [u32; 12] =
            [8000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 64_000, 88_200, 96_000];
        if !AAC_RATES.contains(&self.audio.rate) {
            return Err(ConfigError::Invalid {
                key: "audio.rate",
                message: format!("{} is not an AAC sample rate", self.audio.rate),
            });
        }
        if !(8_000..=128_000).contains(&self.audio.bitrate) {
            return Err(ConfigError::Invalid { key: "audio.bitrate", message: "between 8000 and 128000".into() });
        }
        if ![0, 8_000, 16_000].contains(&self.audio.g711_rate) {
            return Err(ConfigError::Invalid { key: "audio.g711_rate", message: "0 (detect), 8000 or 16000".into() });
        }
        if self.audio.encoder == EncoderKind::Fdk && !cfg!(feature = "fdk-aac") {
            return Err(ConfigError::Invalid {
                key: "audio.encoder",
                message: "\"fdk\" needs gbgate built with `--features fdk-aac`".into(),
            });
        }
        let digits =
            |s: &str, n: std::ops::RangeInclusive<usize>| n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(&self.sip.id, 20..=20) {
            return Err(ConfigError::Invalid { key: "sip.id", message: "must be 20 decimal digits".into() });
        }
        if !digits(&self.sip.domain, 8..=10) {
            return Err(ConfigError::Invalid { key: "sip.domain", message: "must be 8 to 10 decimal digits".into() });
        }
        positive("sip.max_devices", self.sip.max_devices)?;
        positive("sip.max_transactions", self.sip.max_transactions)?;
        positive("gb.max_sessions", self.gb.max_sessions)?;
        if self.gb.keepalive_misses == 0 {
            return Err(ConfigError::Invalid { key: "gb.keepalive_misses", message: "must be greater than 0".into() });
        }
        if self.gb.keepalive_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid { key: "gb.keepalive_interval", message: "at least 100ms".into() });
        }
        if self.sip.advertise.is_some_and(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid {
                key: "sip.advertise",
                message: "must be a reachable address, not 0.0.0.0".into(),
            });
        }
        if self.hub.gop_cache_duration.0 > Duration::from_secs(120) {
            return Err(ConfigError::Invalid { key: "hub.gop_cache_duration", message: "at most 120s".into() });
        }
        for (i, p) in self.pull.iter().enumerate() {
            p.validate(i)?;
            if let Some(n) = &p.name {
                if self.pull[..i].iter().any(|q| q.name.as_ref() == Some(n)) {
                    return Err(ConfigError::Invalid {
                        key: "pull.name",
                        message: format!("[[pull]] #{}: {n:?} is pulled twice", i + 1),
                    });
                }
            }
        }
        self.callbacks.validate()?;
        self.webrtc.validate()?;
        Ok(())
    }
}

/// WebRTC playback (WHEP, D135..): ICE-lite on one UDP port shared by every session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// The UDP address of every session's media (port 0: any free port, see `--ports-file`).
    pub listen: SocketAddr,
    pub enabled: bool,
    /// Addresses put in the answer's host candidates instead of the listen address (the public
    /// address behind a NAT, or each interface's when listening on 0.0.0.0). Empty: the listen
    /// address, or, when that is unspecified, the local address of the route to the player.
    pub advertise: Vec<std::net::IpAddr>,
    /// Concurrent sessions; more are refused with 503.
    pub max_sessions: usize,
    /// Concurrent sessions from one player address (503 beyond it).
    pub max_sessions_per_source: usize,
    /// A session that has not completed ICE and DTLS within this is ended.
    pub connect_timeout: HumanDuration,
    /// A session that receives nothing (consent checks, RTCP) for this long is ended.
    pub idle_timeout: HumanDuration,
    /// Bytes a session may have waiting to be sent; beyond it the session skips to the next
    /// keyframe.
    pub max_queue_bytes: usize,
    /// Pacing of each session's output, bits per second (bursts of 1/8 s are let through).
    pub max_bitrate: u64,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            listen: "0.0.0.0:8189".parse().expect("literal"),
            enabled: true,
            advertise: Vec::new(),
            max_sessions: 500,
            max_sessions_per_source: 32,
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(10)),
            max_queue_bytes: 4 << 20,
            max_bitrate: 50_000_000,
        }
    }
}

impl WebRtcConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: &str| Err(ConfigError::Invalid { key, message: message.into() });
        if self.max_sessions == 0 {
            return bad("webrtc.max_sessions", "must be greater than 0");
        }
        if self.max_sessions_per_source == 0 {
            return bad("webrtc.max_sessions_per_source", "must be greater than 0");
        }
        for (key, d) in
            [("webrtc.connect_timeout", self.connect_timeout.0), ("webrtc.idle_timeout", self.idle_timeout.0)]
        {
            if !(Duration::from_millis(500)..=Duration::from_secs(300)).contains(&d) {
                return bad(key, "between 500ms and 300s");
            }
        }
        if self.max_queue_bytes < 64 << 10 {
            return bad("webrtc.max_queue_bytes", "at least 65536");
        }
        if self.max_bitrate < 100_000 {
            return bad("webrtc.max_bitrate", "at least 100000");
        }
        if self.advertise.iter().any(|a| a.is_unspecified()) {
            return bad("webrtc.advertise", "an unspecified address (0.0.0.0, ::) cannot be a candidate");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_file_parses() {
        Config::default().validate().unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gbgate.toml")).unwrap();
        let cfg = Config::from_toml(&text, "conf/gbgate.toml").unwrap();
        assert_eq!(cfg.rtp.timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.rtp.unknown_ssrc, UnknownSsrc::Publish);
    }

    #[test]
    fn udp_batch_wait_defaults_to_1ms_and_is_capped() {
        assert_eq!(Config::default().rtp.udp_batch_wait.0, Duration::from_millis(1));
        Config::from_toml("[rtp]\nudp_batch_wait = \"0s\"\n", "t.toml").unwrap();
        let err = Config::from_toml("[rtp]\nudp_batch_wait = \"50ms\"\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("udp_batch_wait"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::from_toml("[rtp]\nlistne = \"0.0.0.0:1\"\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn pull_tables_parse_and_errors_name_the_key() {
        let cfg = Config::from_toml(
            "[[pull]]\nname = \"cam1\"\nurl = \"rtmp://o:1935/live/cam1\"\n\n[[pull]]\nmatch = \"live/*\"\nurl = \"rtmp://o/{path}\"\nidle_stop = \"2s\"\n",
            "t.toml",
        )
        .unwrap();
        let (fixed, template) = (&cfg.pull[0], &cfg.pull[1]);
        assert_eq!((fixed.retries, fixed.retry_interval.0, fixed.idle_stop()), (5, Duration::from_secs(1), None));
        assert!(!fixed.is_on_demand() && template.is_on_demand());
        assert_eq!(template.idle_stop(), Some(Duration::from_secs(2)));
        assert_eq!(template.url_for("live/x"), "rtmp://o/live/x");
        let rtsp = Config::from_toml(
            "[[pull]]\nname = \"c\"\nurl = \"rtsp://u:p@o:554/ch1\"\ntransport = \"udp\"\n",
            "t.toml",
        );
        assert_eq!(rtsp.unwrap().pull[0].transport, PullTransport::Udp);
        let cases = [
            ("url = \"rtmp://o/a/b\"", "pull.name"),
            ("name = \"a\"\nmatch = \"b*\"\nurl = \"rtmp://o/a/b\"", "pull.match"),
            ("name = \"a\"\nurl = \"http://o/a\"", "pull.url"),
            ("match = \"*\"\nurl = \"rtmp://{path}/a/b\"", "after the host"),
            ("name = \"gb/1\"\nurl = \"rtmp://o/a/b\"", "pull.name"),
            ("name = \"a\"\nurl = \"rtmp://o/a/b\"\nretries = 0", "pull.retries"),
            ("name = \"a\"\nurl = \"rtmp://o/a/b\"\nretry_interval = \"1ms\"", "pull.retry_interval"),
            ("name = \"a\"\nurl = \"rtmp://o/a/b\"\nidle_stop = \"10ms\"", "pull.idle_stop"),
        ];
        for (table, key) in cases {
            let err = Config::from_toml(&format!("[[pull]]\n{table}\n"), "t.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{table}: {err}");
        }
        let err = Config::from_toml("[[pull]]\nname = \"a\"\nurl = \"rtmp://o/a/b\"\nurk = 1\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("urk"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = Config::from_toml("[rtp]\ntimeout = \"ten\"\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
        let err = Config::from_toml("[rtp]\nmax_streams = 0\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("rtp.max_streams"), "{err}");
    }
}
