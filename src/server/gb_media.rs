//! The GB signalling core's view of the RTP side ([`MediaPort`]), implemented here over the RTP
//! server's shared state and the hub, so the gb module never imports this driver layer.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tracing::warn;

use super::rtp::RtpShared;
use crate::config::{RtpConfig, SipConfig};
use crate::gb::core::{MediaPort, StreamState};
use crate::hub::Hub;

/// [`MediaPort`] over the RTP server's shared state and the hub.
pub struct RtpMedia {
    hub: Arc<Hub>,
    rtp: Arc<RtpShared>,
    rtp_cfg: RtpConfig,
    advertise: Option<IpAddr>,
    /// The SIP listen address (its IP, when not a wildcard, is what devices reach).
    sip_addr: SocketAddr,
    /// TCP-active connections by stream.
    active: HashMap<String, tokio::task::AbortHandle>,
}

impl RtpMedia {
    pub fn new(hub: Arc<Hub>, rtp: Arc<RtpShared>, rtp_cfg: RtpConfig, sip: &SipConfig) -> Self {
        RtpMedia { hub, rtp, rtp_cfg, advertise: sip.advertise, sip_addr: sip.listen, active: HashMap::new() }
    }
}

impl MediaPort for RtpMedia {
    fn announce(&mut self, ssrc: u32, stream: &str) {
        self.rtp.announce(ssrc, stream.to_string());
    }

    fn announced_name(&self, ssrc: u32) -> Option<String> {
        self.rtp.announced_name(ssrc)
    }

    fn withdraw(&mut self, ssrc: u32) {
        self.rtp.withdraw(ssrc);
    }

    fn withdraw_name(&mut self, stream: &str) {
        self.rtp.withdraw_name(stream);
    }

    fn expect_source(&mut self, ip: IpAddr, tcp: bool, stream: &str) {
        self.rtp.expect_source(ip, tcp, stream.to_string());
    }

    fn expect_port(&mut self, stream: &str, port: u16) {
        self.rtp.expect_port(stream, port);
    }

    fn hint_g711_rate(&mut self, stream: &str, rate: u32) {
        self.rtp.hint_g711_rate(stream, rate);
    }

    fn expect_rtcp(&mut self, stream: &str, addr: Option<SocketAddr>, mux: bool) {
        self.rtp.expect_rtcp(stream, addr, mux);
    }

    fn stream_state(&self, stream: &str) -> Option<StreamState> {
        self.hub
            .get(stream)
            .map(|s| StreamState { keyframe: s.gop_cache_usage().0 > 0, subscribers: s.subscriber_count() })
    }

    fn end_stream(&mut self, stream: &str, reason: &str) {
        if let Some(st) = self.hub.get(stream) {
            // The session's reason (BYE from the device, idle stop, ...) is the stream's (D96).
            st.event("stop", reason);
            self.hub.remove(&st);
        }
    }

    fn connect_active(&mut self, stream: &str, target: SocketAddr, fallback: SocketAddr) {
        let (rtp, hub, cfg, name) = (self.rtp.clone(), self.hub.clone(), self.rtp_cfg.clone(), stream.to_string());
        let handle = tokio::spawn(async move {
            if let Err(e) = super::rtp::connect_active(target, Some(fallback), name.clone(), cfg, hub, rtp).await {
                warn!(stream = %name, "TCP active: {e}");
            }
        });
        if let Some(old) = self.active.insert(stream.to_string(), handle.abort_handle()) {
            old.abort();
        }
        self.active.retain(|_, h| !h.is_finished());
    }

    fn stop_active(&mut self, stream: &str) {
        if let Some(h) = self.active.remove(stream) {
            h.abort();
        }
    }

    /// `sip.advertise`, the listen IP, or the local address of the route to `toward`
    /// (multi-homed hosts: the wrong one makes devices drop us, SRS #2695).
    fn local_ip(&self, toward: SocketAddr) -> IpAddr {
        if let Some(ip) = self.advertise {
            return ip;
        }
        if !self.sip_addr.ip().is_unspecified() {
            return self.sip_addr.ip();
        }
        let bind: SocketAddr = if toward.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        std::net::UdpSocket::bind(bind)
            .and_then(|s| {
                s.connect(toward)?;
                s.local_addr()
            })
            .map(|a| a.ip())
            .unwrap_or(self.sip_addr.ip())
    }
}
