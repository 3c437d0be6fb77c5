//! Thin tokio drivers around the sans-IO modules, and the daemon's wiring.
/// Connection admission lives below the drivers so the SIP transport (in gb) can use it too.
pub use crate::util::admit;
pub mod api;
pub mod api_error;
pub mod audio_pool;
pub(crate) mod batch;
pub mod console;
pub(crate) mod direct;
pub mod gb_media;
pub mod hls;
pub mod http;
pub mod http_flv;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod rtmp;
pub mod rtp;
pub mod rtsp;
pub mod rtsp_ingest;
pub mod webrtc;
pub mod whep;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::hub::Hub;
use rtp::RtpShared;

/// A running gateway: its shared state and the addresses it actually bound.
pub struct Gateway {
    pub hub: Arc<Hub>,
    pub rtp: Arc<RtpShared>,
    pub rtp_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// `None` when `[rtsp] enabled = false`.
    pub rtsp_addr: Option<SocketAddr>,
    /// `None` when `[rtmp] enabled = false`.
    pub rtmp_addr: Option<SocketAddr>,
    /// The HTTP media listener (HTTP-FLV, HLS, WHEP, console); `None` when `[http] enabled = false`.
    pub http_addr: Option<SocketAddr>,
    /// The WebRTC output's UDP address; `None` when `[webrtc]` or `[http]` is disabled.
    pub webrtc_addr: Option<SocketAddr>,
    pub webrtc: Option<Arc<webrtc::WebRtc>>,
    /// The RTMP listener's budget and counters.
    pub rtmp: Arc<rtmp::RtmpShared>,
    /// RTSP publishers' counters (ANNOUNCE/RECORD).
    pub rtsp_ingest: Arc<rtsp_ingest::RtspIngest>,
    /// GB28181 signalling; `None` when `[sip] enabled = false`.
    pub gb: Option<crate::gb::Gb>,
    pub sip_addr: Option<SocketAddr>,
    /// The `[[rtmp.push]]` pushes.
    pub pushes: Arc<crate::client::rtmp_push::StaticPushes>,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// `[shutdown] timeout`.
    stop_timeout: Duration,
    /// SIGHUP reloads (D112).
    pub reloader: Arc<reload::Reloader>,
    upper: api::UpperRoutes,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for RTP on {addr} (config key rtp.listen): {source}")]
    Rtp { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for the API on {addr} (config key api.listen): {source}")]
    Api { addr: SocketAddr, source: std::io::Error },
    #[error(
        "the API would listen on {0} without a token: set [api] token, or keep [api] listen on loopback (127.0.0.1)"
    )]
    ApiUnprotected(SocketAddr),
    #[error("cannot listen for RTSP on {addr} (config key rtsp.listen): {source}")]
    Rtsp { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for RTMP on {addr} (config key rtmp.listen): {source}")]
    Rtmp { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for HTTP on {addr} (config key http.listen): {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for WebRTC on {addr} (config key webrtc.listen): {source}")]
    WebRtc { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Sip(#[from] crate::gb::GbStartError),
}

impl Gateway {
    /// Binds every listener and starts serving. Ports 0 in the config are allowed (tests).
    pub async fn start(cfg: Config) -> Result<Gateway, StartError> {
        let shutdown = CancellationToken::new();
        let hub = Hub::new(cfg.hub.clone(), cfg.rtp.max_streams);
        hub.set_diag(crate::diag::Diag {
            recorder: crate::diag::record::Recorder::start(&cfg.record),
            logs: crate::diag::streamlog::StreamLogs::dir_of(&cfg.log).and_then(|dir| {
                let clock = Arc::new(crate::diag::streamlog::SystemClock(crate::gb::localtime::utc_offset));
                crate::diag::streamlog::StreamLogs::start(dir, &cfg.log, clock)
            }),
        });
        // Callbacks (D93): before any listener, so every stream has the notifier.
        hub.set_notifier(crate::notify::Notifier::start(&cfg.callbacks, cfg.sip.db.as_deref()));
        let rtp_shared = RtpShared::with_audio(cfg.audio.clone());
        let (udp, tcp, rtp_addr) =
            rtp::bind(&cfg.rtp).await.map_err(|source| StartError::Rtp { addr: cfg.rtp.listen, source })?;
        if cfg.api.token.as_deref().is_none_or(str::is_empty) && !cfg.api.listen.ip().is_loopback() {
            return Err(StartError::ApiUnprotected(cfg.api.listen));
        }
        let api_listener = tokio::net::TcpListener::bind(cfg.api.listen)
            .await
            .map_err(|source| StartError::Api { addr: cfg.api.listen, source })?;
        let api_addr = api_listener.local_addr().map_err(|source| StartError::Api { addr: cfg.api.listen, source })?;
        let rtsp_listener = if cfg.rtsp.enabled {
            let addr = cfg.rtsp.listen;
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Rtsp { addr, source })?;
            Some(l)
        } else {
            None
        };
        let rtsp_addr = match &rtsp_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Rtsp { addr: cfg.rtsp.listen, source })?),
            None => None,
        };
        let rtmp_listener = if cfg.rtmp.enabled {
            let addr = cfg.rtmp.listen;
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Rtmp { addr, source })?)
        } else {
            None
        };
        let rtmp_addr = match &rtmp_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Rtmp { addr: cfg.rtmp.listen, source })?),
            None => None,
        };
        let http_listener = if cfg.http.enabled {
            let addr = cfg.http.listen;
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Http { addr, source })?)
        } else {
            None
        };
        let http_addr = match &http_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Http { addr: cfg.http.listen, source })?),
            None => None,
        };
        let http_flv = Arc::new(http_flv::FlvShared::default());
        let http_admission = admit::Admission::new(cfg.http.max_connections, cfg.http.max_connections_per_source);
        let rtsp_admission = admit::Admission::new(cfg.rtsp.max_connections, cfg.rtsp.max_connections_per_source);
        let api_admission = admit::Admission::new(cfg.api.max_connections, cfg.api.max_connections_per_source);
        let rtmp_admission = admit::Admission::new(cfg.rtmp.max_connections, cfg.rtmp.max_connections_per_source);
        let mut tasks = Vec::new();
        let rtmp_shared = rtmp::RtmpShared::new(&cfg.rtmp, &cfg.auth, rtp_shared.clone());
        let rtsp_ingest = rtsp_ingest::RtspIngest::new(&cfg.auth, rtp_shared.clone(), cfg.rtsp.max_record_udp_tracks);
        if let Some(l) = rtmp_listener {
            tasks.push(tokio::spawn(rtmp::serve(
                l,
                hub.clone(),
                cfg.rtmp.clone(),
                rtmp_shared.clone(),
                rtmp_admission.clone(),
                shutdown.clone(),
            )));
        }
        // Runs even without entries: a SIGHUP reload may add some.
        let pushes = crate::client::rtmp_push::StaticPushes::new(&cfg.rtmp);
        tasks.push(tokio::spawn(crate::client::rtmp_push::run_pushes(hub.clone(), pushes.clone(), shutdown.clone())));
        if let Some(l) = rtsp_listener {
            tasks.push(tokio::spawn(rtsp::serve(
                l,
                hub.clone(),
                cfg.rtsp.clone(),
                rtsp_admission.clone(),
                rtsp_ingest.clone(),
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::hub::watch::run(hub.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(rtp::serve(
            udp,
            tcp,
            cfg.rtp.clone(),
            hub.clone(),
            rtp_shared.clone(),
            shutdown.clone(),
        )));
        let gb = if cfg.sip.enabled {
            let (gb, task) = crate::gb::start(
                &cfg,
                hub.clone(),
                Box::new(gb_media::RtpMedia::new(hub.clone(), rtp_shared.clone(), cfg.rtp.clone(), &cfg.sip)),
                rtp_addr,
                shutdown.clone(),
            )
            .await?;
            tasks.push(task);
            Some(gb)
        } else {
            None
        };
        let sip_addr = gb.as_ref().map(|g| g.sip_addr);
        let policy: api::SharedPolicy = Arc::new(std::sync::RwLock::new(api::Policy::of(&cfg.api)));
        let reloader = reload::Reloader::new(
            cfg.clone(),
            policy.clone(),
            pushes.clone(),
            vec![rtmp_shared.auth.clone(), rtsp_ingest.auth.clone()],
            gb.clone(),
        );
        // WHEP is served by the HTTP listener: without it the UDP port would be useless.
        let webrtc = if cfg.webrtc.enabled && http_listener.is_some() {
            let w = webrtc::WebRtc::start(&cfg.webrtc, shutdown.clone())
                .await
                .map_err(|source| StartError::WebRtc { addr: cfg.webrtc.listen, source })?;
            Some(w)
        } else {
            None
        };
        let webrtc_addr = webrtc.as_ref().map(|w| w.local_addr());
        let upper = api::UpperRoutes::default();
        let hls_shared = hls::HlsShared::new(&cfg.hls);
        let router = api::router(
            api::ApiState {
                hub: hub.clone(),
                rtp: rtp_shared.clone(),
                gb: gb.clone(),
                rtmp: rtmp_shared.clone(),
                rtsp_ingest: rtsp_ingest.clone(),
                listeners: [
                    ("api", api_admission.clone()),
                    ("rtsp", rtsp_admission),
                    ("rtmp", rtmp_admission),
                    ("http", http_admission.clone()),
                ]
                .into_iter()
                .chain(gb.as_ref().map(|g| ("sip", g.sip_tcp.clone())))
                .collect(),
                metrics_streams: cfg.api.metrics_streams,
                upper: upper.clone(),
                hls: hls_shared.clone(),
                pushes: pushes.clone(),
                reload: reloader.clone(),
                http_flv: http_flv.clone(),
                webrtc: webrtc.clone(),
            },
            rtp_addr,
        );
        // The console reads a few collections of the API on the HTTP listener (D141).
        let console_api = router.clone();
        let router = api::protect_shared(router, policy.clone());
        match cfg.api.token.as_deref().is_none_or(str::is_empty) {
            true => info!(api = %api_addr, "API has no token ([api] token): it listens on loopback only"),
            false => info!(api = %api_addr, "API requires a bearer token"),
        }
        let (api_shutdown, limits) = (shutdown.clone(), api::ConnLimits::of(&cfg.api));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = api::serve(api_listener, router, api_admission, limits, api_shutdown).await {
                tracing::error!("API server failed: {e}");
            }
        }));
        if let Some(l) = http_listener {
            let state = http::HttpState {
                hub: hub.clone(),
                cfg: Arc::new(cfg.clone()),
                gb: gb.clone(),
                flv: http_flv.clone(),
                shutdown: shutdown.clone(),
                hls: hls_shared,
                webrtc: webrtc.clone(),
                api: console_api,
                api_policy: policy.clone(),
            };
            tasks.push(tokio::spawn(http::serve(
                l,
                http::router(state),
                http_admission,
                http::ConnLimits::of(&cfg.http),
                shutdown.clone(),
            )));
        }
        info!(rtp = %rtp_addr, api = %api_addr, rtsp = ?rtsp_addr, rtmp = ?rtmp_addr, http = ?http_addr, sip = ?sip_addr, "gbgate started");
        Ok(Gateway {
            hub,
            rtp: rtp_shared,
            rtp_addr,
            api_addr,
            rtsp_addr,
            rtmp_addr,
            http_addr,
            webrtc_addr,
            webrtc,
            rtmp: rtmp_shared,
            rtsp_ingest,
            gb,
            sip_addr,
            pushes,
            shutdown,
            tasks,
            stop_timeout: cfg.shutdown.timeout.0,
            reloader,
            upper,
        })
    }

    /// Adds an upper layer's routes (the channels) to the API: served behind the same token,
    /// Host and Origin policy; routes of the API itself take precedence (D101).
    pub fn mount(&self, routes: axum::Router) {
        *self.upper.write().unwrap_or_else(|e| e.into_inner()) = Some(routes);
    }

    /// The graceful stop (SIGTERM, D110), bounded by `[shutdown] timeout`: every task sees the
    /// shutdown signal at once; the GB driver BYEs every session and waits for the answers
    /// (`gb::driver`), the pushes unpublish and close (`PushSet::stop`), the listeners close.
    /// What has not ended by the deadline is cut (aborted) and the log says what. Returns the
    /// number of tasks cut.
    pub async fn stop(self) -> usize {
        let started = tokio::time::Instant::now();
        let deadline = started + self.stop_timeout;
        self.shutdown.cancel();
        let mut cut = 0;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                cut += 1;
            }
        }
        // Events of the shutdown itself (streams stopped, BYEs, pushes) go out with what is
        // left of the deadline, at least half a second (D95, D110).
        let flush_until = deadline.max(tokio::time::Instant::now() + Duration::from_millis(500));
        self.hub.notifier().flush(flush_until.into_std()).await;
        let unsent = self.hub.notifier().snapshot().outbox.queued;
        // What the recorder and the per-stream logs still buffer reaches the disk (D89, D90).
        let diag = self.hub.diag();
        let flushed = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(1)),
            tokio::task::spawn_blocking(move || {
                if let Some(r) = diag.recorder {
                    r.flush();
                }
                if let Some(l) = diag.logs {
                    l.flush();
                }
            }),
        )
        .await
        .is_ok();
        let took = started.elapsed();
        let mut short = Vec::new();
        if cut > 0 {
            short.push(format!("{cut} tasks (listeners, GB sessions' BYEs or pushes: see above)"));
        }
        if unsent > 0 {
            short.push(format!("{unsent} callback events unsent"));
        }
        if !flushed {
            short.push("the recordings' and stream logs' flush".into());
        }
        match short.is_empty() {
            true => info!("stopped in {took:?}"),
            false => tracing::warn!(
                "stopped in {took:?}: the shutdown deadline ({:?}, [shutdown] timeout) cut short: {}",
                self.stop_timeout,
                short.join("; ")
            ),
        }
        cut
    }
}
