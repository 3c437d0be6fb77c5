//! RTMP play client: pulls one stream from an origin (`rtmp://host[:port]/app/key`) and yields
//! it as [`Frame`]s, for the relay (D84) to publish into the hub.
//!
//! The connection is the push's (`super::rtmp`): the client handshake, then an rml_rtmp
//! `ClientSession` that only ever reads what our guard (`proto::rtmp_guard`, D30) let through.
//! connect, createStream and play are each bounded by [`PullOptions::timeout`]; so is every
//! later read (an origin that stops sending ends the pull). FLV tag bodies become frames through
//! [`FlvDemuxer`] (read from the guard, whatever their message stream id: ffmpeg's `-listen`
//! server sends them on stream 0) (H.264, H.265 in both Enhanced RTMP and the legacy codec id 12, AAC, G.711);
//! timestamps are repaired and audio transcoded downstream, by the media stage of the publisher.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::warn;

use super::pull::{PullError, PullOptions};
use super::rtmp::RtmpClientError;
use crate::frame::Frame;
use crate::proto::flv::FlvDemuxer;
use crate::proto::rtmp_guard::RtmpCommandGuard;
use crate::util::io::write_timeout;
use crate::util::RateLimit;

/// Bytes read from the origin at a time; the frames of one read are queued, so the queue is
/// bounded by what one read can hold.
const READ_BUF: usize = 64 * 1024;

/// A playing RTMP pull.
pub struct RtmpPull {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    session: ClientSession,
    guard: RtmpCommandGuard,
    buf: Vec<u8>,
    timeout: Duration,
    peer: SocketAddr,
    /// `app/key`, for the log.
    what: String,
    demux: FlvDemuxer,
    /// The origin's audio/video messages of one read (reused).
    media: Vec<crate::proto::rtmp_chunk::Message>,
    frames: VecDeque<Frame>,
    /// Set once the origin accepted the connect request.
    connected: bool,
    /// Set once the origin accepted the play request.
    playing: bool,
    /// Why the origin ended the stream (onStatus), once it did.
    ended: Option<String>,
    wire_bytes: u64,
    tag_errors: u64,
    tag_log: RateLimit,
}

/// What one step of the setup waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    Play,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Play => "play",
        }
    }
}

fn client_error(step: &str, e: RtmpClientError) -> PullError {
    match e {
        RtmpClientError::Timeout(t) => PullError::NoAnswer(format!("{step}: nothing within {t:?}")),
        RtmpClientError::Handshake(m) if m.contains("closed") => {
            PullError::Refused(format!("{step}: the origin closed the connection"))
        }
        RtmpClientError::Io(e) => io_error(step, &e),
        e => PullError::Protocol(format!("{step}: {e}")),
    }
}

fn io_error(step: &str, e: &std::io::Error) -> PullError {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut => PullError::NoAnswer(format!("{step}: {e}")),
        ConnectionRefused => PullError::Refused(format!("{step}: connection refused")),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
            PullError::Refused(format!("{step}: the origin closed the connection"))
        }
        _ => PullError::Refused(format!("{step}: {e}")),
    }
}

/// Connects to `url`, handshakes and asks to play its key; resolves once the origin accepted
/// (`NetStream.Play.Start`) or sent media. Each step is bounded by `opts.timeout`.
pub async fn connect(url: &str, opts: &PullOptions) -> Result<RtmpPull, PullError> {
    let (addr, app, key, tc_url) =
        super::rtmp_push::parse_url(url).map_err(|e| PullError::Protocol(format!("URL: {e:#}")))?;
    let timeout = opts.timeout;
    let sock = tokio::time::timeout(timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| PullError::NoAnswer(format!("connect to {addr}: nothing within {timeout:?}")))?
        .map_err(|e| io_error(&format!("connect to {addr}"), &e))?;
    let _ = sock.set_nodelay(true);
    let peer = sock.peer_addr().map_err(|e| io_error("connect", &e))?;
    let mut sock = sock;
    let leftover = super::rtmp::handshake(&mut sock, timeout).await.map_err(|e| client_error("RTMP handshake", e))?;
    let (rd, wr) = sock.into_split();
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(tc_url);
    let (session, results) =
        ClientSession::new(config).map_err(|e| PullError::Protocol(format!("RTMP session: {e:?}")))?;
    let mut p = RtmpPull {
        rd,
        wr,
        session,
        guard: RtmpCommandGuard::default(),
        buf: vec![0u8; READ_BUF],
        timeout,
        peer,
        what: format!("{app}/{key}"),
        demux: FlvDemuxer::new(),
        media: Vec::new(),
        frames: VecDeque::new(),
        connected: false,
        playing: false,
        ended: None,
        wire_bytes: 0,
        tag_errors: 0,
        tag_log: RateLimit::new(Duration::from_secs(30)),
    };
    p.send(results).await?;
    if !leftover.is_empty() {
        p.input(&leftover, Step::Connect).await?;
    }
    let r = p.session.request_connection(app).map_err(|e| PullError::Protocol(format!("connect: {e:?}")))?;
    p.send(vec![r]).await?;
    p.wait(Step::Connect).await?;
    let r = p.session.request_playback(key).map_err(|e| PullError::Protocol(format!("play: {e:?}")))?;
    p.send(vec![r]).await?;
    p.wait(Step::Play).await?;
    Ok(p)
}

impl RtmpPull {
    /// The origin's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Bytes read from the origin since the last call.
    pub fn take_wire_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.wire_bytes)
    }

    /// FLV tags that could not be read (unsupported codec, bad configuration record ...).
    pub fn tag_errors(&self) -> u64 {
        self.tag_errors
    }

    /// The next frame, in the order the origin sent it. An origin silent for the timeout, or
    /// that closes or ends the stream, is [`PullError::Ended`].
    pub async fn next_frame(&mut self) -> Result<Frame, PullError> {
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Ok(f);
            }
            if let Some(why) = &self.ended {
                return Err(PullError::Ended(why.clone()));
            }
            let n = self.read("play").await.map_err(|e| match e {
                PullError::NoAnswer(m) | PullError::Refused(m) => PullError::Ended(m),
                e => e,
            })?;
            // The buffer is lent out while the session reads it (no copy per read).
            let buf = std::mem::take(&mut self.buf);
            let r = self.input(&buf[..n], Step::Play).await;
            self.buf = buf;
            r?;
        }
    }

    async fn read(&mut self, step: &str) -> Result<usize, PullError> {
        // A `next_frame` cancelled while it had lent the buffer out left an empty one.
        if self.buf.len() < READ_BUF {
            self.buf.resize(READ_BUF, 0);
        }
        let n = tokio::time::timeout(self.timeout, self.rd.read(&mut self.buf))
            .await
            .map_err(|_| PullError::NoAnswer(format!("{step}: nothing from the origin within {:?}", self.timeout)))?
            .map_err(|e| io_error(step, &e))?;
        if n == 0 {
            return Err(PullError::Refused(format!("{step}: the origin closed the connection")));
        }
        self.wire_bytes += n as u64;
        Ok(n)
    }

    async fn send(&mut self, results: Vec<rml_rtmp::sessions::ClientSessionResult>) -> Result<(), PullError> {
        let (bytes, events) = super::rtmp::split_results(results);
        if !bytes.is_empty() {
            write_timeout(&mut self.wr, &bytes, self.timeout).await.map_err(|e| io_error("send", &e))?;
        }
        for e in events {
            self.event(e)?;
        }
        Ok(())
    }

    /// Feeds the origin's bytes through the guard into the session, answers what it must.
    async fn input(&mut self, bytes: &[u8], step: Step) -> Result<(), PullError> {
        let mut media = std::mem::take(&mut self.media);
        let results = super::rtmp::handle_input_media(&mut self.session, &mut self.guard, bytes, &mut media)
            .map_err(|e| PullError::Protocol(format!("{}: {e}", step.name())));
        // Media is read from the guard, whatever its message stream id (see `filter_media`);
        // the session's own media events are ignored.
        for m in media.drain(..) {
            let r = match m.type_id {
                9 => self.demux.video(m.timestamp, &m.data),
                _ => self.demux.audio(m.timestamp, &m.data),
            };
            self.tag(r);
        }
        self.media = media;
        self.send(results?).await
    }

    /// Reads until the setup step is done; each read and the whole step bounded by the timeout.
    async fn wait(&mut self, step: Step) -> Result<(), PullError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let done = match step {
                Step::Connect => self.connected,
                // Some servers send media before `NetStream.Play.Start` (rml_rtmp allows it).
                Step::Play => self.playing || !self.frames.is_empty(),
            };
            if done {
                return Ok(());
            }
            if let Some(why) = &self.ended {
                return Err(PullError::Refused(format!("{}: {why}", step.name())));
            }
            if Instant::now() >= deadline {
                return Err(PullError::NoAnswer(format!(
                    "{} {}: no answer within {:?}",
                    step.name(),
                    self.what,
                    self.timeout
                )));
            }
            let n = self.read(step.name()).await?;
            let buf = std::mem::take(&mut self.buf);
            let r = self.input(&buf[..n], step).await;
            self.buf = buf;
            r?;
        }
    }

    fn event(&mut self, e: ClientSessionEvent) -> Result<(), PullError> {
        match e {
            ClientSessionEvent::ConnectionRequestAccepted => self.connected = true,
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                return Err(PullError::Refused(format!("connect rejected: {}", clip(&description))));
            }
            ClientSessionEvent::PlaybackRequestAccepted => self.playing = true,
            ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                let code = clip(&code);
                // NetStream.Play.StreamNotFound / Failed / Rejected refuse the play; Stop,
                // UnpublishNotify and Play.Complete end it.
                if code.contains("NotFound") || code.contains("Failed") || code.contains("Rejected") {
                    if self.playing {
                        self.ended = Some(format!("the origin said {code}"));
                    } else {
                        return Err(PullError::Refused(format!("play {}: {code}", self.what)));
                    }
                } else if code.ends_with(".Stop") || code.contains("Unpublish") || code.ends_with(".Complete") {
                    self.ended = Some(format!("the origin said {code}"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn tag(&mut self, r: Result<Option<Frame>, crate::proto::flv::FlvError>) {
        match r {
            Ok(Some(f)) => self.frames.push_back(f),
            Ok(None) => {}
            Err(e) => {
                self.tag_errors += 1;
                if let Some(suppressed) = self.tag_log.check(Instant::now()) {
                    warn!(origin = %self.peer, stream = %self.what, suppressed, "RTMP pull: tag ignored: {e}");
                }
            }
        }
    }
}

/// A peer's text, bounded and printable, for errors players and the log see.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use tokio::io::AsyncWriteExt;

    /// A server that completes the handshake, then writes `then`, then holds the connection.
    async fn origin(then: Vec<u8>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hs = Handshake::new(PeerType::Server);
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                match hs.process_bytes(&buf[..n]).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        s.write_all(&response_bytes).await.unwrap()
                    }
                    HandshakeProcessResult::Completed { response_bytes, .. } => {
                        s.write_all(&response_bytes).await.unwrap();
                        break;
                    }
                }
            }
            let _ = s.write_all(&then).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    fn opts() -> PullOptions {
        PullOptions { timeout: Duration::from_millis(700), ..Default::default() }
    }

    #[tokio::test]
    async fn a_hostile_origin_is_a_named_error_not_a_panic() {
        // A chunk header announcing a 16 MiB message (over the guard's limit), then garbage.
        let mut huge = vec![0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0];
        huge.extend(std::iter::repeat_n(0xAB, 4096));
        let addr = origin(huge).await;
        let e = connect(&format!("rtmp://{addr}/live/x"), &opts()).await.err().expect("refused");
        assert!(
            matches!(e, PullError::Protocol(ref m) if m.contains("too long") || m.contains("exceed") || m.contains("limit")),
            "{e}"
        );
        // An AMF0 command with one value (rml_rtmp 0.8 panics on it without the guard).
        let amf = [0x02, 0x00, 0x07, b'_', b'r', b'e', b's', b'u', b'l', b't'];
        let mut short = vec![0x03, 0, 0, 0, 0, 0, amf.len() as u8, 20, 0, 0, 0, 0];
        short.extend_from_slice(&amf);
        let addr = origin(short).await;
        let e = connect(&format!("rtmp://{addr}/live/x"), &opts()).await.err().expect("refused");
        assert!(matches!(e, PullError::Protocol(ref m) if m.contains("value(s)")), "{e}");
        // Silence after the handshake: no answer to connect, within the timeout.
        let addr = origin(Vec::new()).await;
        let t0 = Instant::now();
        let e = connect(&format!("rtmp://{addr}/live/x"), &opts()).await.err().expect("no answer");
        assert!(matches!(e, PullError::NoAnswer(_)), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn nobody_listening_is_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = connect(&format!("rtmp://127.0.0.1:{port}/live/x"), &opts()).await.err().unwrap();
        assert!(matches!(e, PullError::Refused(ref m) if m.contains("connection refused")), "{e}");
        let e = connect("http://h/x", &opts()).await.err().unwrap();
        assert!(matches!(e, PullError::Protocol(_)), "{e}");
    }
}
