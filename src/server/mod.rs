//! Thin tokio drivers around the sans-IO modules, and the daemon's wiring.
pub mod api;
pub mod rtmp;
pub mod rtp;

use std::net::SocketAddr;
use std::sync::Arc;

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
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for RTP on {addr} (config key rtp.listen): {source}")]
    Rtp { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for the API on {addr} (config key api.listen): {source}")]
    Api { addr: SocketAddr, source: std::io::Error },
}

impl Gateway {
    /// Binds every listener and starts serving. Ports 0 in the config are allowed (tests).
    pub async fn start(cfg: Config) -> Result<Gateway, StartError> {
        let shutdown = CancellationToken::new();
        let hub = Hub::new(cfg.hub.clone(), cfg.rtp.max_streams);
        let rtp_shared = RtpShared::new();
        let (udp, tcp, rtp_addr) =
            rtp::bind(&cfg.rtp).await.map_err(|source| StartError::Rtp { addr: cfg.rtp.listen, source })?;
        let api_listener = tokio::net::TcpListener::bind(cfg.api.listen)
            .await
            .map_err(|source| StartError::Api { addr: cfg.api.listen, source })?;
        let api_addr = api_listener.local_addr().map_err(|source| StartError::Api { addr: cfg.api.listen, source })?;
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(rtp::serve(
            udp,
            tcp,
            cfg.rtp.clone(),
            hub.clone(),
            rtp_shared.clone(),
            shutdown.clone(),
        )));
        let router = api::router(api::ApiState { hub: hub.clone(), rtp: rtp_shared.clone() }, rtp_addr);
        let api_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = api::serve(api_listener, router, api_shutdown).await {
                tracing::error!("API server failed: {e}");
            }
        }));
        info!(rtp = %rtp_addr, api = %api_addr, "gbgate started");
        Ok(Gateway { hub, rtp: rtp_shared, rtp_addr, api_addr, shutdown, tasks })
    }

    /// Stops every listener and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
