//! The GB28181 SDP dialect: `y=` (SSRC), `f=`, `u=`, `a=setup`, `a=downloadspeed`. Generic SDP
//! parsers drop or reject `y=`/`f=`, so this is hand-written and lenient: unknown lines are
//! skipped, never an error.
use core::net::IpAddr;
use std::fmt::Write as _;

/// How media flows for one session, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediaTransport {
    Udp,
    /// The gateway listens; the camera connects (`a=setup:passive` in our offer).
    TcpPassive,
    /// The gateway connects to the camera (`a=setup:active` in our offer).
    TcpActive,
}

impl std::str::FromStr for MediaTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(MediaTransport::Udp),
            "tcp-passive" | "tcp_passive" | "passive" => Ok(MediaTransport::TcpPassive),
            "tcp-active" | "tcp_active" | "active" => Ok(MediaTransport::TcpActive),
            other => Err(format!("unknown transport {other:?} (udp, tcp-passive, tcp-active)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Play,
    Playback,
    Download,
}

impl SessionKind {
    pub fn name(self) -> &'static str {
        match self {
            SessionKind::Play => "Play",
            SessionKind::Playback => "Playback",
            SessionKind::Download => "Download",
        }
    }
}

/// The parts of a GB SDP offer or answer that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GbSdp {
    pub origin_user: String,
    pub kind: SessionKind,
    pub connection: Option<IpAddr>,
    pub port: u16,
    /// `TCP/RTP/AVP` in the media line.
    pub tcp: bool,
    /// `a=setup:` value (`active`/`passive`), only meaningful with `tcp`.
    pub setup: Option<String>,
    /// The `y=` value parsed as the SSRC (10 decimal digits).
    pub ssrc: Option<u32>,
    /// `t=` start/end (epoch seconds for playback; 0 0 for live).
    pub time: (u64, u64),
    /// `u=` (playback: `<channel>:<n>`).
    pub uri: Option<String>,
    pub download_speed: Option<u32>,
    pub sendonly: bool,
    /// The G.711 sample rate announced by `f=` (PS itself carries none).
    pub g711_rate: Option<u32>,
    /// `a=rtcp:<port> [IN IP4 <addr>]` (RFC 3605): where the device takes RTCP, when not at the
    /// RTP port + 1 (RFC 3550 11).
    pub rtcp_port: Option<u16>,
    pub rtcp_addr: Option<IpAddr>,
    /// `a=rtcp-mux` (RFC 5761): RTCP shares the RTP port (over TCP: the same connection).
    pub rtcp_mux: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is not text")]
    NotText,
    #[error("SDP has no video media line")]
    NoMedia,
    #[error("SDP body of {0} bytes is too large")]
    TooLarge(usize),
}

pub const MAX_SDP: usize = 8 * 1024;

/// Parses an SDP body leniently (any line order, `\n` or `\r\n`, unknown lines ignored).
pub fn parse(body: &[u8]) -> Result<GbSdp, SdpError> {
    if body.len() > MAX_SDP {
        return Err(SdpError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let mut sdp = GbSdp {
        origin_user: String::new(),
        kind: SessionKind::Play,
        connection: None,
        port: 0,
        tcp: false,
        setup: None,
        ssrc: None,
        time: (0, 0),
        uri: None,
        download_speed: None,
        sendonly: false,
        g711_rate: None,
        rtcp_port: None,
        rtcp_addr: None,
        rtcp_mux: false,
    };
    let mut media = false;
    let mut media_connection = None;
    for line in text.lines() {
        let line = line.trim();
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim();
        match k {
            "o" => sdp.origin_user = v.split_whitespace().next().unwrap_or("").to_string(),
            // 2022 audits report `DoWnload`; match names case-insensitively.
            "s" => {
                sdp.kind = match v.to_ascii_lowercase().as_str() {
                    "playback" => SessionKind::Playback,
                    "download" => SessionKind::Download,
                    _ => SessionKind::Play,
                }
            }
            "c" => {
                let ip = v.split_whitespace().nth(2).and_then(|s| s.split('/').next()).and_then(|s| s.parse().ok());
                if media {
                    media_connection = ip;
                } else {
                    sdp.connection = ip;
                }
            }
            "t" => {
                let mut it = v.split_whitespace().map(|s| s.parse::<u64>().unwrap_or(0));
                sdp.time = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            }
            "u" => sdp.uri = Some(v.to_string()),
            "m" => {
                let mut it = v.split_whitespace();
                if it.next().is_some_and(|m| m.eq_ignore_ascii_case("video")) && !media {
                    media = true;
                    sdp.port = it.next().and_then(|p| p.split('/').next()?.parse().ok()).unwrap_or(0);
                    sdp.tcp = it.next().is_some_and(|p| p.to_ascii_uppercase().starts_with("TCP"));
                }
            }
            "a" => {
                let (name, value) = v.split_once(':').unwrap_or((v, ""));
                match name.to_ascii_lowercase().as_str() {
                    "setup" => sdp.setup = Some(value.trim().to_ascii_lowercase()),
                    "sendonly" => sdp.sendonly = true,
                    "downloadspeed" => sdp.download_speed = value.trim().parse().ok(),
                    "rtcp" => {
                        let mut it = value.split_whitespace();
                        sdp.rtcp_port = it.next().and_then(|p| p.parse().ok()).filter(|p| *p != 0);
                        sdp.rtcp_addr = it.nth(2).and_then(|a| a.parse().ok());
                    }
                    "rtcp-mux" => sdp.rtcp_mux = true,
                    _ => {}
                }
            }
            "y" => sdp.ssrc = v.parse::<u32>().ok(),
            "f" => sdp.g711_rate = g711_rate_of_f(v),
            _ => {}
        }
    }
    if !media {
        return Err(SdpError::NoMedia);
    }
    if media_connection.is_some() {
        sdp.connection = media_connection;
    }
    Ok(sdp)
}

/// The G.711 sample rate of an `f=` value `v/codec/res/fps/rateType/kbps` + `a/codec/kbps/rate`
/// (GB/T 28181-2016 annex F: audio codec 1 = G.711; sample rate 1 = 8 kHz, 3 = 16 kHz). Only the
/// two rates gbgate can decode are returned; empty or zero fields (wvp's `f=`) give `None`.
pub fn g711_rate_of_f(v: &str) -> Option<u32> {
    let audio = &v[v.rfind("a/")? + 2..];
    let mut it = audio.split('/').map(str::trim);
    let (codec, _kbps, rate) = (it.next()?, it.next()?, it.next()?);
    if codec != "1" {
        return None;
    }
    match rate {
        "1" => Some(8_000),
        "3" => Some(16_000),
        _ => None,
    }
}

/// The `y=` form of an SSRC: 10 decimal digits.
pub fn ssrc_text(ssrc: u32) -> String {
    format!("{ssrc:010}")
}

/// Mints a GB SSRC: digit 0 live(0)/history(1), digits 1-5 = domain chars 4..9, then a 4-digit
/// sequence number.
pub fn mint_ssrc(history: bool, domain: &str, seq: u32) -> u32 {
    let mid: u32 = domain.get(3..8).and_then(|s| s.parse().ok()).unwrap_or(0);
    u32::from(history) * 1_000_000_000 + mid * 10_000 + seq % 10_000
}

/// Our offer to a device (INVITE body).
pub struct Offer<'a> {
    pub gateway_id: &'a str,
    pub ip: IpAddr,
    pub port: u16,
    pub kind: SessionKind,
    pub channel: &'a str,
    pub transport: MediaTransport,
    pub ssrc: u32,
    pub time: (u64, u64),
    pub download_speed: Option<u32>,
}

pub fn offer(o: &Offer<'_>) -> String {
    let ipv = if o.ip.is_ipv6() { "IP6" } else { "IP4" };
    let mut s = String::new();
    let _ = write!(s, "v=0\r\no={} 0 0 IN {ipv} {}\r\ns={}\r\n", o.gateway_id, o.ip, o.kind.name());
    if o.kind != SessionKind::Play {
        let _ = write!(s, "u={}:0\r\n", o.channel);
    }
    let _ = write!(s, "c=IN {ipv} {}\r\nt={} {}\r\n", o.ip, o.time.0, o.time.1);
    let proto = if o.transport == MediaTransport::Udp { "RTP/AVP" } else { "TCP/RTP/AVP" };
    let _ = write!(s, "m=video {} {proto} 96 97 98 99\r\na=recvonly\r\n", o.port);
    s.push_str(
        "a=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\na=rtpmap:99 H265/90000\r\n",
    );
    match o.transport {
        MediaTransport::Udp => {}
        MediaTransport::TcpPassive => s.push_str("a=setup:passive\r\na=connection:new\r\n"),
        MediaTransport::TcpActive => s.push_str("a=setup:active\r\na=connection:new\r\n"),
    }
    if let Some(speed) = o.download_speed {
        let _ = write!(s, "a=downloadspeed:{speed}\r\n");
    }
    let _ = write!(s, "y={}\r\n", ssrc_text(o.ssrc));
    s
}

/// A device's answer (the simulator's 200 OK body).
pub struct Answer<'a> {
    pub device_id: &'a str,
    pub ip: IpAddr,
    pub port: u16,
    pub kind: SessionKind,
    pub tcp: bool,
    /// Our role when `tcp`: "active" (we connect) or "passive" (we listen).
    pub setup: Option<&'a str>,
    pub ssrc: u32,
    pub time: (u64, u64),
}

pub fn answer(a: &Answer<'_>) -> String {
    let ipv = if a.ip.is_ipv6() { "IP6" } else { "IP4" };
    let mut s = String::new();
    let _ = write!(s, "v=0\r\no={} 0 0 IN {ipv} {}\r\ns={}\r\n", a.device_id, a.ip, a.kind.name());
    let _ = write!(s, "c=IN {ipv} {}\r\nt={} {}\r\n", a.ip, a.time.0, a.time.1);
    let proto = if a.tcp { "TCP/RTP/AVP" } else { "RTP/AVP" };
    let _ = write!(s, "m=video {} {proto} 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\n", a.port);
    if let Some(setup) = a.setup {
        let _ = write!(s, "a=setup:{setup}\r\n");
    }
    let _ = write!(s, "y={}\r\nf=\r\n", ssrc_text(a.ssrc));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrc_forms() {
        assert_eq!(mint_ssrc(false, "3402000000", 1), 200_000_001);
        assert_eq!(mint_ssrc(true, "3402000000", 1), 1_200_000_001);
        assert_eq!(ssrc_text(200_000_001), "0200000001");
        assert_eq!(mint_ssrc(true, "9999999999", 9999), 1_999_999_999);
    }

    #[test]
    fn offer_round_trips_and_answers_parse() {
        let text = offer(&Offer {
            gateway_id: "34020000002000000001",
            ip: "192.168.1.10".parse().unwrap(),
            port: 30000,
            kind: SessionKind::Playback,
            channel: "34020000001310000001",
            transport: MediaTransport::TcpPassive,
            ssrc: 1_200_000_002,
            time: (1_714_804_996, 1_714_806_986),
            download_speed: None,
        });
        let p = parse(text.as_bytes()).unwrap();
        assert_eq!(p.kind, SessionKind::Playback);
        assert_eq!(p.port, 30000);
        assert!(p.tcp);
        assert_eq!(p.setup.as_deref(), Some("passive"));
        assert_eq!(p.ssrc, Some(1_200_000_002));
        assert_eq!(p.time, (1_714_804_996, 1_714_806_986));
        assert_eq!(p.uri.as_deref(), Some("34020000001310000001:0"));
        // Hikvision answer (gb28181.md §5): setup:active on UDP, its own y=.
        let hik = "v=0\no=34020000001320000003 1073 1073 IN IP4 192.168.137.11\ns=Play\nc=IN IP4 192.168.137.11\nt=0 0\nm=video 15060 RTP/AVP 96\na=setup:active\na=sendonly\na=rtpmap:96 PS/90000\na=username:34020000001320000003\ny=0000630886\nf=\n";
        let h = parse(hik.as_bytes()).unwrap();
        assert_eq!(h.ssrc, Some(630_886));
        assert!(!h.tcp);
        assert_eq!(h.connection, Some("192.168.137.11".parse().unwrap()));
        assert_eq!((h.rtcp_port, h.rtcp_addr, h.rtcp_mux), (None, None, false));
        // RFC 3605 a=rtcp with and without an address; rtcp-mux.
        let r = parse(b"v=0\nc=IN IP4 10.0.0.1\nm=video 5000 RTP/AVP 96\na=rtcp:5003 IN IP4 10.0.0.9\na=rtcp-mux\n")
            .unwrap();
        assert_eq!((r.rtcp_port, r.rtcp_addr, r.rtcp_mux), (Some(5003), Some("10.0.0.9".parse().unwrap()), true));
        let r = parse(b"m=video 5000 RTP/AVP 96\na=rtcp:5001\n").unwrap();
        assert_eq!((r.rtcp_port, r.rtcp_addr), (Some(5001), None));
        assert_eq!(parse(b"m=video 5000 RTP/AVP 96\na=rtcp:99999 IN IP4 x\n").unwrap().rtcp_port, None);
        assert!(parse(b"v=0\r\n").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn f_line_gives_the_g711_rate() {
        assert_eq!(g711_rate_of_f("v/2/5/25/1/2048a/1/64/1"), Some(8_000));
        assert_eq!(g711_rate_of_f("v/2/6/25/2/4096a/1/64/3"), Some(16_000));
        assert_eq!(g711_rate_of_f("v/0/0/0/0/0a/0/0/0"), None);
        assert_eq!(g711_rate_of_f(""), None);
        assert_eq!(g711_rate_of_f("v/2/5/25/1/2048a/3/8/1"), None, "G.729 is not G.711");
        assert_eq!(g711_rate_of_f("v/2/5/25/1/2048a/1/64/4"), None, "32 kHz is not decodable");
        let answer = "v=0\no=x 0 0 IN IP4 10.0.0.1\ns=Play\nc=IN IP4 10.0.0.1\nt=0 0\nm=video 9 RTP/AVP 96\ny=0100000001\nf=v/2/5/25/1/2048a/1/64/3\n";
        assert_eq!(parse(answer.as_bytes()).unwrap().g711_rate, Some(16_000));
    }
}
