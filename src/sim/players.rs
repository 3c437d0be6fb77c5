//! A load of RTSP players (TCP interleaved): `gbgate players URL --count N`.
//!
//! Each player does OPTIONS, DESCRIBE, SETUP (every track, interleaved), PLAY, then reads `$`
//! frames and counts video frames (RTP marker bits on the first track's channel). It measures the
//! time from sending PLAY to the first video RTP packet, and whether that packet belongs to a
//! keyframe. `stall` players stop reading after PLAY, to show they do not slow the others.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct PlayersOptions {
    pub url: String,
    pub count: usize,
    pub duration: Duration,
    /// How many of the players stop reading right after PLAY.
    pub stall: usize,
}

/// What one reading player saw.
#[derive(Debug, Clone, Default)]
pub struct PlayerResult {
    pub video_frames: u64,
    pub video_packets: u64,
    /// Video RTP sequence numbers skipped (packets this player never got).
    pub video_seq_gaps: u64,
    pub audio_packets: u64,
    pub bytes: u64,
    /// From sending PLAY to the first video RTP packet.
    pub first_video: Option<Duration>,
    /// The first video packet carries (part of) an IDR/IRAP picture or parameter sets.
    pub first_is_key: bool,
    /// The connection was closed by the server before the end of the run.
    pub closed_early: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PlayersReport {
    pub players: Vec<PlayerResult>,
    /// Stalled players the server disconnected before the end of the run.
    pub stalled_disconnected: usize,
    pub stalled: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlayersError {
    #[error("bad RTSP URL {0:?} (want rtsp://host:port/path)")]
    BadUrl(String),
}

fn parse_url(url: &str) -> Result<(SocketAddr, String), PlayersError> {
    let rest = url.strip_prefix("rtsp://").ok_or_else(|| PlayersError::BadUrl(url.into()))?;
    let (host, _path) = rest.split_once('/').ok_or_else(|| PlayersError::BadUrl(url.into()))?;
    let addr: SocketAddr = host.parse().map_err(|_| PlayersError::BadUrl(url.into()))?;
    Ok((addr, url.to_string()))
}

/// One RTSP exchange over the connection: sends `request`, returns (status, headers+body text).
async fn exchange(sock: &mut TcpStream, buf: &mut Vec<u8>, request: String) -> Result<(u16, String), String> {
    sock.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    loop {
        // Skip interleaved data that may precede the response (after PLAY).
        while buf.first() == Some(&b'$') && buf.len() >= 4 {
            let n = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < 4 + n {
                break;
            }
            buf.drain(..4 + n);
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Ok((status, format!("{head}\r\n\r\n{body}")));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the RTSP exchange".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Track controls from an SDP, in order, and whether the first is video.
fn sdp_tracks(sdp: &str, base: &str) -> Vec<(String, bool)> {
    let mut tracks = Vec::new();
    let mut kind_video = false;
    let mut in_media = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_media = true;
            kind_video = m.starts_with("video");
        } else if let (true, Some(c)) = (in_media, line.strip_prefix("a=control:")) {
            let url =
                if c.starts_with("rtsp://") { c.to_string() } else { format!("{}/{}", base.trim_end_matches('/'), c) };
            tracks.push((url, kind_video));
        }
    }
    tracks
}

/// Whether an RTP payload starts (or is a fragment of) a keyframe / parameter sets.
fn is_key_payload(payload: &[u8], hevc: bool) -> bool {
    let Some(&b0) = payload.first() else { return false };
    if hevc {
        let t = (b0 >> 1) & 0x3f;
        let inner = match t {
            49 => payload.get(2).map(|b| b & 0x3f),
            48 => payload.get(4).map(|b| (b >> 1) & 0x3f),
            _ => Some(t),
        };
        inner.is_some_and(|t| (16..=23).contains(&t) || (32..=34).contains(&t))
    } else {
        let t = b0 & 0x1f;
        let inner = match t {
            28 => payload.get(1).map(|b| b & 0x1f),
            24 => payload.get(3).map(|b| b & 0x1f),
            _ => Some(t),
        };
        inner.is_some_and(|t| t == 5 || t == 7 || t == 8)
    }
}

async fn run_player(addr: SocketAddr, url: String, duration: Duration, stall: bool) -> PlayerResult {
    let mut r = PlayerResult::default();
    let deadline = Instant::now() + duration;
    let connect = async {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        if stall {
            // A stalled player with a small window, like a slow client on a thin link, so the
            // server feels the back-pressure within seconds instead of after megabytes.
            socket.set_recv_buffer_size(16 * 1024)?;
        }
        socket.connect(addr).await
    };
    let mut sock = match connect.await {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(format!("connect: {e}"));
            return r;
        }
    };
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut cseq = 0;
    let mut req = |method: &str, url: &str, extra: &str| {
        cseq += 1;
        format!("{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\nUser-Agent: gbgate-players\r\n{extra}\r\n")
    };
    let sdp = match exchange(&mut sock, &mut buf, req("DESCRIBE", &url, "Accept: application/sdp\r\n")).await {
        Ok((200, text)) => text,
        Ok((status, _)) => {
            r.error = Some(format!("DESCRIBE answered {status}"));
            return r;
        }
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let hevc = sdp.contains("H265/90000");
    let tracks = sdp_tracks(&sdp, &url);
    let mut session = String::new();
    let mut video_channel = None;
    for (i, (control, is_video)) in tracks.iter().enumerate() {
        let ch = 2 * i;
        let mut extra = format!("Transport: RTP/AVP/TCP;unicast;interleaved={}-{}\r\n", ch, ch + 1);
        if !session.is_empty() {
            extra.push_str(&format!("Session: {session}\r\n"));
        }
        match exchange(&mut sock, &mut buf, req("SETUP", control, &extra)).await {
            Ok((200, text)) => {
                if session.is_empty() {
                    session = header(&text, "session").unwrap_or("").split(';').next().unwrap_or("").to_string();
                }
                if *is_video && video_channel.is_none() {
                    video_channel = Some(ch as u8);
                }
            }
            Ok((status, _)) => {
                r.error = Some(format!("SETUP answered {status}"));
                return r;
            }
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        }
    }
    let play_sent = Instant::now();
    match exchange(&mut sock, &mut buf, req("PLAY", &url, &format!("Session: {session}\r\nRange: npt=0.000-\r\n")))
        .await
    {
        Ok((200, _)) => {}
        Ok((status, _)) => {
            r.error = Some(format!("PLAY answered {status}"));
            return r;
        }
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    }
    if stall {
        // Hold the connection open without reading, then drain it: a server that disconnected us
        // shows EOF once the kernel buffers are read; one that did not keeps streaming.
        tokio::time::sleep_until(deadline.into()).await;
        let drain = async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        };
        r.closed_early = tokio::time::timeout(Duration::from_secs(2), drain).await.unwrap_or(false);
        return r;
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut last_seq: Option<u16> = None;
    loop {
        // Parse complete interleaved frames.
        let mut i = 0;
        while buf.len() >= i + 4 {
            if buf[i] != b'$' {
                // An RTSP response (e.g. to nothing) or junk: skip to the next '$'.
                match buf[i..].iter().position(|b| *b == b'$') {
                    Some(p) => {
                        i += p;
                        continue;
                    }
                    None => {
                        i = buf.len();
                        break;
                    }
                }
            }
            let ch = buf[i + 1];
            let n = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
            if buf.len() < i + 4 + n {
                break;
            }
            let pkt = &buf[i + 4..i + 4 + n];
            r.bytes += n as u64;
            if Some(ch) == video_channel && n >= 12 {
                r.video_packets += 1;
                let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
                if let Some(last) = last_seq {
                    r.video_seq_gaps += u64::from(seq.wrapping_sub(last).wrapping_sub(1));
                }
                last_seq = Some(seq);
                let cc = (pkt[0] & 0x0f) as usize;
                if r.first_video.is_none() {
                    r.first_video = Some(play_sent.elapsed());
                    r.first_is_key = pkt.get(12 + 4 * cc..).is_some_and(|p| is_key_payload(p, hevc));
                }
                if pkt[1] & 0x80 != 0 {
                    r.video_frames += 1;
                }
            } else if ch % 2 == 0 && n >= 12 {
                r.audio_packets += 1;
            }
            i += 4 + n;
        }
        buf.drain(..i);
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout(deadline - now, sock.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                r.closed_early = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                r.closed_early = true;
                r.error = Some(e.to_string());
                break;
            }
            Err(_) => break,
        }
    }
    let teardown = req("TEARDOWN", &url, &format!("Session: {session}\r\n"));
    let _ = sock.write_all(teardown.as_bytes()).await;
    r
}

/// Runs `count` players against `url` for `duration`.
pub async fn run_players(opts: &PlayersOptions) -> Result<PlayersReport, PlayersError> {
    let (addr, url) = parse_url(&opts.url)?;
    let mut tasks = Vec::with_capacity(opts.count + opts.stall);
    for i in 0..opts.count + opts.stall {
        let stall = i >= opts.count;
        tasks.push(tokio::spawn(run_player(addr, url.clone(), opts.duration, stall)));
    }
    let mut report = PlayersReport { stalled: opts.stall, ..Default::default() };
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap_or_else(|e| PlayerResult { error: Some(e.to_string()), ..Default::default() });
        if i >= opts.count {
            report.stalled_disconnected += usize::from(r.closed_early);
        } else {
            report.players.push(r);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_payloads_are_recognised_in_fragments_and_aggregates() {
        assert!(is_key_payload(&[0x65, 0x88], false)); // IDR
        assert!(is_key_payload(&[0x7c, 0x85], false)); // FU-A carrying IDR
        assert!(is_key_payload(&[0x78, 0x00, 0x10, 0x67], false)); // STAP-A starting with SPS
        assert!(!is_key_payload(&[0x41, 0x9a], false)); // P slice
        assert!(is_key_payload(&[0x62, 0x01, 0x93], true)); // H.265 FU carrying IDR_N_LP (19)
        assert!(is_key_payload(&[0x40, 0x01], true)); // VPS
        assert!(!is_key_payload(&[0x02, 0x01], true)); // TRAIL_R
    }

    #[test]
    fn sdp_tracks_resolve_relative_controls() {
        let sdp =
            "v=0\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=0\r\nm=audio 0 RTP/AVP 8\r\na=control:trackID=1\r\n";
        let t = sdp_tracks(sdp, "rtsp://127.0.0.1:8554/rtp/0BEBC201");
        assert_eq!(t[0], ("rtsp://127.0.0.1:8554/rtp/0BEBC201/trackID=0".to_string(), true));
        assert!(!t[1].1);
    }
}
