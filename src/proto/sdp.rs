//! SDP session descriptions (RFC 8866) as RTSP uses them (RFC 2326 C.1, RFC 7826 appendix D):
//! the media sections of an ANNOUNCE body or a DESCRIBE answer. Sans-IO and bounded: a peer's
//! description is clamped to [`MAX_MEDIA`] sections, [`MAX_FMTP`] format parameters per section
//! and [`MAX_VALUE`] bytes per value; numbers out of range fall back to defaults. Never panics.
//!
//! (GB28181's own SDP dialect, with `y=` and `f=` lines, is `proto::sip::sdp`.)

/// Media sections kept; later ones are ignored (counted in [`Sdp::ignored_media`]).
pub const MAX_MEDIA: usize = 8;
/// Format parameters kept per media section.
pub const MAX_FMTP: usize = 32;
/// Bytes kept of one value (a control URL, an fmtp value such as `sprop-parameter-sets`).
pub const MAX_VALUE: usize = 4096;
/// Lines looked at; the rest of a huge description is ignored.
pub const MAX_LINES: usize = 1024;
/// Channel count accepted from an `a=rtpmap` (RFC 8866 6.6 encoding parameters).
pub const MAX_CHANNELS: u8 = 8;
/// Clock rates accepted from an `a=rtpmap`; anything else is treated as missing.
pub const CLOCK_RATE_RANGE: std::ops::RangeInclusive<u32> = 1000..=1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Video,
    Audio,
    /// `application`, `text`, ... (kept so that track indexes match the description).
    Other,
}

/// One `m=` section, reduced to its first payload format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpMedia {
    pub kind: MediaKind,
    /// The `m=` port (0 in RTSP descriptions).
    pub port: u16,
    /// `RTP/AVP`, `RTP/AVP/TCP`, `RTP/SAVP`, ...
    pub protocol: String,
    /// The first payload type of the `m=` line.
    pub payload_type: u8,
    /// Encoding name from `a=rtpmap`, upper-cased (`H264`, `MPEG4-GENERIC`, `PCMA`); for the static
    /// payload types 0 and 8 without an rtpmap, `PCMU`/`PCMA` (RFC 3551 table 4).
    pub encoding: String,
    /// Clock rate from `a=rtpmap` (0 when absent or out of [`CLOCK_RATE_RANGE`]).
    pub clock_rate: u32,
    /// Channels from `a=rtpmap` (1 when absent), clamped to 1..=[`MAX_CHANNELS`].
    pub channels: u8,
    /// `a=fmtp` parameters of the payload type, keys lower-cased, in order.
    pub fmtp: Vec<(String, String)>,
    /// `a=control`, as written (relative or absolute).
    pub control: Option<String>,
}

impl SdpMedia {
    /// An fmtp parameter by name (case-insensitive).
    pub fn fmtp(&self, key: &str) -> Option<&str> {
        self.fmtp.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// The absolute URL of this track for SETUP: its control resolved against `base`
    /// (the Content-Base / request URL) as RFC 2326 C.1.1 describes.
    pub fn control_url(&self, base: &str) -> String {
        resolve_control(base, self.control.as_deref())
    }
}

/// A parsed session description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level `a=control`.
    pub control: Option<String>,
    /// Session name (`s=`).
    pub name: String,
    pub media: Vec<SdpMedia>,
    /// Media sections beyond [`MAX_MEDIA`] or with an unusable `m=` line.
    pub ignored_media: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP has no usable media section")]
    NoMedia,
}

/// Keeps at most [`MAX_VALUE`] bytes of `s`, cut on a character boundary.
fn clip(s: &str) -> String {
    if s.len() <= MAX_VALUE {
        return s.to_string();
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Parses an `m=` line's value: `<media> <port>[/<n>] <proto> <fmt> ...`.
fn parse_m(v: &str) -> Option<SdpMedia> {
    let mut it = v.split_ascii_whitespace();
    let kind = match it.next()? {
        k if k.eq_ignore_ascii_case("video") => MediaKind::Video,
        k if k.eq_ignore_ascii_case("audio") => MediaKind::Audio,
        _ => MediaKind::Other,
    };
    let port = it.next()?.split('/').next()?.parse::<u16>().unwrap_or(0);
    let protocol = clip(it.next()?);
    let payload_type = it.next()?.parse::<u8>().ok().filter(|pt| *pt < 128)?;
    let (encoding, clock_rate) = match payload_type {
        0 => ("PCMU".to_string(), 8000),
        8 => ("PCMA".to_string(), 8000),
        _ => (String::new(), 0),
    };
    Some(SdpMedia {
        kind,
        port,
        protocol,
        payload_type,
        encoding,
        clock_rate,
        channels: 1,
        fmtp: Vec::new(),
        control: None,
    })
}

/// `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]` for the section's payload type.
fn apply_rtpmap(m: &mut SdpMedia, v: &str) {
    let Some((pt, rest)) = v.trim().split_once(|c: char| c.is_ascii_whitespace()) else { return };
    if pt.parse::<u8>().ok() != Some(m.payload_type) {
        return;
    }
    let mut parts = rest.trim().split('/');
    let name = parts.next().unwrap_or("").trim();
    if name.is_empty() {
        return;
    }
    m.encoding = clip(name).to_ascii_uppercase();
    m.clock_rate =
        parts.next().and_then(|r| r.trim().parse::<u32>().ok()).filter(|r| CLOCK_RATE_RANGE.contains(r)).unwrap_or(0);
    m.channels =
        parts.next().and_then(|c| c.trim().parse::<u32>().ok()).map_or(1, |c| c.clamp(1, MAX_CHANNELS as u32) as u8);
}

/// `a=fmtp:<pt> k=v;k=v` for the section's payload type.
fn apply_fmtp(m: &mut SdpMedia, v: &str) {
    let Some((pt, rest)) = v.trim().split_once(|c: char| c.is_ascii_whitespace()) else { return };
    if pt.parse::<u8>().ok() != Some(m.payload_type) {
        return;
    }
    for p in rest.split(';') {
        if m.fmtp.len() >= MAX_FMTP {
            break;
        }
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, val) = p.split_once('=').unwrap_or((p, ""));
        let k = clip(k.trim()).to_ascii_lowercase();
        if m.fmtp.iter().any(|(old, _)| *old == k) {
            continue;
        }
        m.fmtp.push((k, clip(val.trim())));
    }
}

/// Parses an SDP body. Unknown lines are ignored; sections without a usable `m=` line are
/// skipped (and counted), so one odd section does not make a whole description unusable.
pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let mut sdp = Sdp::default();
    // None: session level; Some(None): inside a skipped media section.
    let mut cur: Option<Option<SdpMedia>> = None;
    let finish = |sdp: &mut Sdp, cur: Option<Option<SdpMedia>>| match cur {
        Some(Some(m)) if sdp.media.len() < MAX_MEDIA => sdp.media.push(m),
        Some(_) => sdp.ignored_media += 1,
        None => {}
    };
    for line in text.split('\n').take(MAX_LINES) {
        let line = line.trim_end_matches('\r');
        let Some((k, v)) = line.split_once('=') else { continue };
        match k.trim() {
            "m" => {
                finish(&mut sdp, cur.take());
                cur = Some(parse_m(v));
            }
            "s" if cur.is_none() => sdp.name = clip(v.trim()),
            "a" => {
                let (attr, val) = v.split_once(':').unwrap_or((v, ""));
                let attr = attr.trim();
                match &mut cur {
                    None => {
                        if attr.eq_ignore_ascii_case("control") {
                            sdp.control = Some(clip(val.trim()));
                        }
                    }
                    Some(None) => {}
                    Some(Some(m)) => {
                        if attr.eq_ignore_ascii_case("rtpmap") {
                            apply_rtpmap(m, val);
                        } else if attr.eq_ignore_ascii_case("fmtp") {
                            apply_fmtp(m, val);
                        } else if attr.eq_ignore_ascii_case("control") {
                            m.control = Some(clip(val.trim()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    finish(&mut sdp, cur.take());
    if sdp.media.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(sdp)
}

/// Resolves a control attribute against a base URL (RFC 2326 C.1.1): `*` or none is the base
/// itself, an absolute `rtsp://` URL is used as is, anything else is appended after a `/`.
pub fn resolve_control(base: &str, control: Option<&str>) -> String {
    match control.map(str::trim) {
        None | Some("") | Some("*") => base.to_string(),
        Some(c) if c.contains("://") => c.to_string(),
        Some(c) => {
            if base.ends_with('/') {
                format!("{base}{c}")
            } else {
                format!("{base}/{c}")
            }
        }
    }
}

/// Decodes hex digits (the `config=` fmtp of RFC 3640 / RFC 6416); `None` on a bad digit.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_VALUE {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some((digit(p[0])? << 4) | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ffmpeg 5.1 sends in an ANNOUNCE for H.264 + AAC.
    const FFMPEG: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
a=tool:libavformat 59.27.100\r\nm=video 0 RTP/AVP 96\r\nb=AS:200\r\na=rtpmap:96 H264/90000\r\n\
a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z2QADKzZQUH7ARAAAAMAEAAAAwPA8UKZYA==,aOvjyyLA; profile-level-id=64000C\r\n\
a=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\nb=AS:128\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\n\
a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=121056E500\r\n\
a=control:streamid=1\r\n";

    #[test]
    fn parses_ffmpeg_announce() {
        let sdp = parse(FFMPEG.as_bytes()).unwrap();
        assert_eq!(sdp.name, "No Name");
        assert_eq!(sdp.media.len(), 2);
        let v = &sdp.media[0];
        assert_eq!((v.kind, v.payload_type, v.encoding.as_str(), v.clock_rate), (MediaKind::Video, 96, "H264", 90000));
        assert_eq!(v.fmtp("packetization-mode"), Some("1"));
        assert_eq!(v.fmtp("Sprop-Parameter-Sets"), Some("Z2QADKzZQUH7ARAAAAMAEAAAAwPA8UKZYA==,aOvjyyLA"));
        assert_eq!(v.control.as_deref(), Some("streamid=0"));
        let a = &sdp.media[1];
        assert_eq!(
            (a.kind, a.encoding.as_str(), a.clock_rate, a.channels),
            (MediaKind::Audio, "MPEG4-GENERIC", 44100, 2)
        );
        assert_eq!(a.fmtp("config"), Some("121056E500"));
        assert_eq!(decode_hex(a.fmtp("config").unwrap()), Some(vec![0x12, 0x10, 0x56, 0xE5, 0x00]));
        assert_eq!(a.control_url("rtsp://h/live/x"), "rtsp://h/live/x/streamid=1");
        assert_eq!(a.control_url("rtsp://h/live/x/"), "rtsp://h/live/x/streamid=1");
    }

    #[test]
    fn static_payload_types_and_clamps() {
        let body = "v=0\nm=audio 0 RTP/AVP 8\na=control:rtsp://h/a/t1\nm=audio 0 RTP/AVP 0 8\n\
m=audio 0 RTP/AVP 97\na=rtpmap:97 PCMA/99999999/300\n";
        let sdp = parse(body.as_bytes()).unwrap();
        assert_eq!((sdp.media[0].encoding.as_str(), sdp.media[0].clock_rate), ("PCMA", 8000));
        assert_eq!(sdp.media[0].control_url("rtsp://x/"), "rtsp://h/a/t1");
        assert_eq!(sdp.media[1].encoding, "PCMU");
        assert_eq!((sdp.media[2].clock_rate, sdp.media[2].channels), (0, MAX_CHANNELS));
        assert_eq!(resolve_control("rtsp://h/a", Some("*")), "rtsp://h/a");
    }

    #[test]
    fn bounds_and_errors() {
        assert_eq!(parse(b"v=0\r\ns=x\r\n"), Err(SdpError::NoMedia));
        assert_eq!(parse(b"\xff\xfe"), Err(SdpError::NotText));
        let mut many = String::from("v=0\r\n");
        for i in 0..50 {
            many.push_str(&format!(
                "m=video 0 RTP/AVP {}\r\na=fmtp:{} {}\r\n",
                96 + i % 20,
                96 + i % 20,
                "k=v;".repeat(100)
            ));
        }
        many.push_str("m=video x\r\nm=video 0 RTP/AVP 300\r\n");
        let sdp = parse(many.as_bytes()).unwrap();
        assert_eq!(sdp.media.len(), MAX_MEDIA);
        assert_eq!(sdp.ignored_media, 50 - MAX_MEDIA + 2);
        assert!(sdp.media.iter().all(|m| m.fmtp.len() <= MAX_FMTP));
        let long = format!("m=audio 0 RTP/AVP 97\r\na=control:{}\r\n", "é".repeat(MAX_VALUE));
        let sdp = parse(long.as_bytes()).unwrap();
        assert!(sdp.media[0].control.as_ref().unwrap().len() <= MAX_VALUE);
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
