//! The pull clients the relay drives, behind one face: `connect`, `next_frame`, `peer`.
use std::net::SocketAddr;

use crate::client::pull::{PullError, PullOptions};
use crate::client::rtmp_pull::{self, RtmpPull};
use crate::client::rtsp_pull::{self, RtspPull};
use crate::frame::Frame;
use crate::hub::Transport;

/// One connected pull source.
pub enum PullSource {
    Rtmp(Box<RtmpPull>),
    Rtsp(Box<RtspPull>),
}

impl PullSource {
    /// Connects to `url` by its scheme (`opts.transport` matters to RTSP only).
    pub async fn connect(url: &str, opts: &PullOptions) -> Result<PullSource, PullError> {
        match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()).as_deref() {
            Some("rtmp") => Ok(PullSource::Rtmp(Box::new(rtmp_pull::connect(url, opts).await?))),
            Some("rtsp") => Ok(PullSource::Rtsp(Box::new(rtsp_pull::connect(url, opts).await?))),
            _ => Err(PullError::Protocol(format!("unsupported URL scheme in {}", super::redact(url)))),
        }
    }

    pub async fn next_frame(&mut self) -> Result<Frame, PullError> {
        match self {
            PullSource::Rtmp(p) => p.next_frame().await,
            PullSource::Rtsp(p) => p.next_frame().await,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        match self {
            PullSource::Rtmp(p) => p.peer(),
            PullSource::Rtsp(p) => p.peer(),
        }
    }

    /// How the hub lists the stream's source.
    pub fn transport(&self) -> Transport {
        match self {
            PullSource::Rtmp(_) => Transport::Rtmp,
            PullSource::Rtsp(_) => Transport::Rtsp,
        }
    }

    /// Ends the pull politely: RTSP sends TEARDOWN (bounded by the pull's timeout); RTMP just
    /// closes the connection.
    pub async fn close(self) {
        match self {
            PullSource::Rtmp(p) => drop(p),
            PullSource::Rtsp(p) => p.close().await,
        }
    }
}
