//! The pull clients the relay drives, behind one face: `connect`, `next_frame`, `peer`.
use std::net::SocketAddr;

use crate::client::pull::{PullError, PullOptions};
use crate::client::rtmp_pull::{self, RtmpPull};
use crate::frame::Frame;
use crate::hub::Transport;

/// One connected pull source.
pub enum PullSource {
    Rtmp(Box<RtmpPull>),
}

impl PullSource {
    /// Connects to `url` by its scheme. (`rtsp://` entries are refused by the config check while
    /// the RTSP pull client is not built in; this arm says so rather than fail silently.)
    pub async fn connect(url: &str, opts: &PullOptions) -> Result<PullSource, PullError> {
        match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()).as_deref() {
            Some("rtmp") => Ok(PullSource::Rtmp(Box::new(rtmp_pull::connect(url, opts).await?))),
            Some("rtsp") => Err(PullError::Protocol("rtsp pull not built into this gbgate".into())),
            _ => Err(PullError::Protocol(format!("unsupported URL scheme in {}", super::redact(url)))),
        }
    }

    pub async fn next_frame(&mut self) -> Result<Frame, PullError> {
        match self {
            PullSource::Rtmp(p) => p.next_frame().await,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        match self {
            PullSource::Rtmp(p) => p.peer(),
        }
    }

    /// How the hub lists the stream's source.
    pub fn transport(&self) -> Transport {
        match self {
            PullSource::Rtmp(_) => Transport::Rtmp,
        }
    }
}
