//! The thin tokio driver of the signalling core: it owns the SIP sockets, the device database,
//! the API's device snapshot, the event channel and the clock, feeds the sans-IO [`Core`] its
//! inputs and carries out its [`Output`]s. The core reaches RTP through [`MediaPort`], which the
//! server implements over its RTP side and the hub (`server::gb_media`) and hands in: gb never
//! imports a driver above it.
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::core::{Core, CoreSetup, MediaPort, Output};
use super::store::Store;
use super::transport::{self, Inbound, SipSender};
use super::{DeviceRecord, EndedSession, Gb, GbCounters, GbEvent, ENDED_KEPT};
use crate::config::{Config, SipConfig};
use crate::hub::Hub;
use crate::proto::sip;

#[derive(Debug, thiserror::Error)]
pub enum GbStartError {
    #[error("cannot listen for SIP on {addr} (config key sip.listen): {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("SIP password file {path}: {source}")]
    Password { path: std::path::PathBuf, source: std::io::Error },
}

/// Name of the generated password's file, in the directory of `sip.db`.
pub const PASSWORD_FILE: &str = "gbgate-sip-password";

/// The default device password. Configured: as is (`""` = no authentication, said loudly).
/// Unset: read from [`PASSWORD_FILE`] next to `sip.db`, or generated there (mode 0600) and
/// logged once; with no `sip.db` there is nowhere to keep it, so one is generated for this run.
/// A gateway never accepts unauthenticated devices by default (issue 8, hole 4).
pub fn resolve_password(sip: &SipConfig) -> Result<String, GbStartError> {
    if let Some(p) = &sip.password {
        if p.is_empty() {
            warn!("[sip] password = \"\": any device registers without authentication");
        }
        return Ok(p.clone());
    }
    let generated = || sip::hex_token(rand::random(), 16);
    let Some(db) = &sip.db else {
        let p = generated();
        warn!(password = %p, "[sip] password unset and no [sip] db to keep one: generated for this run only; set [sip] password");
        return Ok(p);
    };
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let path = dir.join(PASSWORD_FILE);
    let err = |source| GbStartError::Password { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            info!(file = %path.display(), "SIP device password read (set [sip] password to choose one)");
            return Ok(text.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let p = generated();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path).map_err(err)?, format!("{p}\n").as_bytes()).map_err(err)?;
    warn!(password = %p, file = %path.display(), "[sip] password unset: generated one for devices, stored in the file (logged only this once)");
    Ok(p)
}

/// Starts the SIP sockets and the signalling task; registers play on demand with the hub.
/// `media` is the RTP side as the core reaches it; `rtp_addr` the RTP port put in SDP offers.
pub async fn start(
    cfg: &Config,
    hub: Arc<Hub>,
    media: Box<dyn MediaPort>,
    rtp_addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(Gb, tokio::task::JoinHandle<()>), GbStartError> {
    let (udp, tcp, sip_addr) = transport::bind(cfg.sip.listen)
        .await
        .map_err(|source| GbStartError::Listen { addr: cfg.sip.listen, source })?;
    let password = resolve_password(&cfg.sip)?;
    let counters = Arc::new(GbCounters::default());
    let (store, stored) = match &cfg.sip.db {
        Some(path) => Store::open(path, counters.clone())?,
        None => (Store::memory(), Vec::new()),
    };
    // The sockets outlive the gateway's shutdown signal until the core has sent its BYEs and
    // they are flushed: the driver cancels `sockets` when it is done (SIGTERM lost a BYE when
    // the sockets closed first and the closed queue was taken for the end).
    let sockets = CancellationToken::new();
    let tcp_limits = transport::TcpLimits {
        admission: crate::util::admit::Admission::new(
            cfg.sip.max_tcp_connections,
            cfg.sip.max_tcp_connections_per_source,
        ),
        request_timeout: cfg.sip.tcp_request_timeout.0,
        idle_timeout: cfg.sip.tcp_idle_timeout.0,
    };
    let sip_tcp = tcp_limits.admission.clone();
    let (out, inbound) = transport::start(udp, tcp, tcp_limits, 4096, sockets.clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(1024);
    let now = Instant::now();
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let setup = CoreSetup {
        sip: cfg.sip.clone(),
        gb: cfg.gb.clone(),
        password,
        rtp_port: rtp_addr.port(),
        sip_addr,
        stored,
        counters: counters.clone(),
        unix_ms,
        utc_offset: super::localtime::utc_offset(unix_ms / 1000),
    };
    let core = Core::new(setup, media, now);
    let snapshot: BTreeMap<String, DeviceRecord> = core.snapshot().into_iter().map(|d| (d.id.clone(), d)).collect();
    let shared = Arc::new(RwLock::new(snapshot));
    let ended = Arc::new(Mutex::new(VecDeque::new()));
    let gb = Gb {
        devices: shared.clone(),
        cmd: cmd_tx,
        events: events.clone(),
        hub: hub.clone(),
        sip_addr,
        media_timeout: cfg.gb.media_timeout.0,
        counters,
        sip_counters: out.counters.clone(),
        sip_tcp,
        ended: ended.clone(),
        db: store.database().as_ref().map(Arc::downgrade),
    };
    hub.add_demand(Arc::new(gb.clone()));
    info!(sip = %sip_addr, id = %cfg.sip.id, domain = %cfg.sip.domain, "GB28181 signalling started");
    let stop_limit = cfg.shutdown.timeout.0.saturating_sub(Duration::from_millis(500));
    let driver = Driver { core, out, store, shared, events, ended, stop_limit };
    let task = tokio::spawn(driver.run(inbound, cmd_rx, shutdown, sockets));
    Ok((gb, task))
}

struct Driver {
    core: Core,
    out: Arc<SipSender>,
    store: Store,
    shared: Arc<RwLock<BTreeMap<String, DeviceRecord>>>,
    events: broadcast::Sender<GbEvent>,
    ended: Arc<Mutex<VecDeque<EndedSession>>>,
    /// How long a graceful stop waits for the BYEs' answers.
    stop_limit: Duration,
}

impl Driver {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut cmds: mpsc::Receiver<super::Command>,
        shutdown: CancellationToken,
        sockets: CancellationToken,
    ) {
        let _close_sockets = sockets.drop_guard();
        loop {
            let wake = self.core.poll_timeout();
            let go_on = tokio::select! {
                biased;
                _ = shutdown.cancelled() => false,
                m = inbound.recv() => match m {
                    Some(Inbound::Message(msg, peer)) => { self.core.handle_message(*msg, peer, Instant::now()); true }
                    Some(Inbound::Closed(conn)) => { self.core.handle_closed(conn, Instant::now()); true }
                    None => false,
                },
                c = cmds.recv() => match c {
                    Some(c) => { self.core.handle_command(c, Instant::now()); true }
                    None => false,
                },
                _ = tokio::time::sleep_until(wake.into()) => { self.core.on_wake(Instant::now()); true }
            };
            if !go_on {
                self.drain(&mut inbound).await;
                return;
            }
            self.apply();
        }
    }

    /// Every way out BYEs every session, then keeps handling answers and timers (UDP
    /// retransmissions) until each BYE is answered and each INVITE in flight resolved (a late
    /// 200 OK is ACKed and BYEd), or the stop deadline; then waits (briefly) until the TCP
    /// connections have written what is queued, before the sockets close. A SIGTERM used to
    /// send each BYE once and quit: a lost datagram or a camera answering an INVITE a moment
    /// later kept streaming to a gateway that was gone.
    async fn drain(&mut self, inbound: &mut mpsc::Receiver<Inbound>) {
        let start = Instant::now();
        let deadline = start + self.stop_limit;
        self.core.stop(start);
        self.apply();
        let mut open = true;
        while !self.core.stopped() && Instant::now() < deadline {
            let wake = self.core.poll_timeout().min(deadline);
            tokio::select! {
                biased;
                m = inbound.recv(), if open => match m {
                    Some(Inbound::Message(msg, peer)) => self.core.handle_message(*msg, peer, Instant::now()),
                    Some(Inbound::Closed(conn)) => self.core.handle_closed(conn, Instant::now()),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wake.into()) => self.core.on_wake(Instant::now()),
            }
            self.apply();
        }
        match self.core.stop_pending() {
            0 => info!("GB28181: every session ended and BYEd in {:?}", start.elapsed()),
            n => warn!(
                "GB28181: stop deadline ({:?}, [shutdown] timeout) passed with {n} BYEs/INVITEs unanswered",
                self.stop_limit
            ),
        }
        self.out.flush(Duration::from_millis(500)).await;
    }

    fn apply(&mut self) {
        for o in self.core.take_outputs() {
            match o {
                Output::Send(peer, bytes) => self.out.send(peer, bytes),
                Output::Publish(rec) => {
                    self.shared.write().unwrap_or_else(|e| e.into_inner()).insert(rec.id.clone(), rec);
                }
                Output::Unpublish(id) => {
                    self.shared.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
                }
                Output::Persist(rec) => self.store.put(&rec),
                Output::Delete(id) => self.store.delete(&id),
                Output::Event(e) => {
                    let _ = self.events.send(e);
                }
                Output::Ended(e) => {
                    let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
                    if ended.len() >= ENDED_KEPT {
                        ended.pop_front();
                    }
                    ended.push_back(e);
                }
            }
        }
    }
}
