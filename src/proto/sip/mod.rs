//! SIP for GB/T 28181, sans-IO: message parsing and building on rsip as maintained inside
//! rsipstack (plain rsip 0.4 corrupts GB2312 bodies and cannot frame TCP), RFC 3261 transactions
//! with timers as data, MD5 digest, the GB SDP dialect and MANSCDP XML.
//!
//! Messages are parsed with `rsip`, then read through the small helpers below by header *name*
//! (rsip maps compact forms to full names), so vendor quirks in one header never fail the rest.
//! Outgoing messages are rsip values serialised with `to_bytes()` (never `to_string()`, which
//! is lossy for non-UTF-8 bodies).
pub mod digest;
pub mod manscdp;
pub mod sdp;
pub mod transaction;

use core::net::SocketAddr;
use std::fmt::Write as _;

pub use rsipstack::rsip;
use rsipstack::rsip::headers::make_header;
use rsipstack::rsip::{Headers, Method, Request, Response, SipMessage, StatusCode, Uri, Version};

/// Largest SIP message accepted (headers plus body), over UDP and TCP alike.
pub const MAX_MESSAGE: usize = 65_535;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SipError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("not a SIP message: {0}")]
    Parse(String),
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    #[error("malformed URI {0:?}")]
    Uri(String),
}

/// Parses one datagram or one framed TCP message.
pub fn parse(buf: &[u8]) -> Result<SipMessage, SipError> {
    if buf.len() > MAX_MESSAGE {
        return Err(SipError::TooLarge(buf.len()));
    }
    let msg = SipMessage::try_from(buf).map_err(|e| SipError::Parse(truncate(&e.to_string(), 160)))?;
    validate(&msg)?;
    Ok(msg)
}

/// Checks the headers every handler relies on (Via, From, To, Call-ID, CSeq), once, here.
pub fn validate(msg: &SipMessage) -> Result<(), SipError> {
    let headers = headers_of(msg);
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if header(headers, name).is_none() {
            return Err(SipError::Header(name_static(name)));
        }
    }
    if cseq(headers).is_none() {
        return Err(SipError::Header("CSeq"));
    }
    Ok(())
}

fn name_static(name: &str) -> &'static str {
    match name {
        "Via" => "Via",
        "From" => "From",
        "To" => "To",
        "Call-ID" => "Call-ID",
        _ => "CSeq",
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The value of the first header called `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name().eq_ignore_ascii_case(name)).map(|h| h.value().trim())
}

/// The values of every header called `name`, in order.
pub fn headers_named<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers.iter().filter(|h| h.name().eq_ignore_ascii_case(name)).map(|h| h.value().trim()).collect()
}

// Ranges every number a peer sends is held to (issue 8, hole 5). A value outside is clamped
// where a smaller one still means the same thing to the peer (a registrar may shorten Expires,
// RFC 3261 §10.3 step 7) and refused where it cannot (CSeq). Arithmetic on these values is
// checked or saturating all the same.

/// Longest registration granted (one day); a longer Expires is answered with this one.
pub const MAX_EXPIRES: u64 = 86_400;
/// Largest CSeq number: RFC 3261 §8.1.1.5 wants it below 2^31, so +1 never overflows a u32.
pub const MAX_CSEQ: u32 = (1 << 31) - 1;
/// Largest SumNum / item count believed from one Catalog or RecordInfo answer.
pub const MAX_SUM_NUM: u32 = 10_000;

/// A decimal number of a peer, saturated at `max`; `None` unless it is all ASCII digits (a sign,
/// a fraction or garbage is not a number). `Expires: 18446744073709551615` gives `max`.
pub fn clamped_number(v: &str, max: u64) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.bytes().fold(0u64, |acc, b| acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))).min(max))
}

/// The registration lifetime asked for: the Expires header, else the Contact's `expires`
/// parameter, clamped to [0, MAX_EXPIRES].
pub fn expires(headers: &Headers) -> Option<u64> {
    header(headers, "Expires").and_then(|v| clamped_number(v, MAX_EXPIRES)).or_else(|| {
        header(headers, "Contact").and_then(|c| param(c, "expires")).and_then(|v| clamped_number(v, MAX_EXPIRES))
    })
}

/// `(number, method)` of the CSeq header; `None` above [`MAX_CSEQ`] (the message is refused).
pub fn cseq(headers: &Headers) -> Option<(u32, String)> {
    let v = header(headers, "CSeq")?;
    let mut it = v.split_whitespace();
    let n = it.next()?.parse().ok().filter(|n| *n <= MAX_CSEQ)?;
    let m = it.next()?.to_ascii_uppercase();
    Some((n, m))
}

/// A `;name=value` parameter of a header value (outside `<...>`), case-insensitive name.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let tail = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    tail.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `tag` of a From/To value.
pub fn tag(value: &str) -> Option<&str> {
    param(value, "tag").filter(|t| !t.is_empty())
}

/// The user part of the URI in a From/To/Contact value or of a bare URI (`sip:USER@host`).
pub fn uri_user(value: &str) -> Option<&str> {
    let uri = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    let rest = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:")).unwrap_or(uri);
    let at = rest.find('@')?;
    let user = &rest[..at];
    let user = user.split(':').next().unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

/// The URI inside `<...>` of a From/To/Contact value, or the value up to its first `;`.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The host:port of a SIP URI (`sip:user@host:port;params`), when it is an IP address.
pub fn uri_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("sip:").unwrap_or(uri);
    let rest = rest.rsplit('@').next()?;
    let hostport = rest.split([';', '>', '?']).next()?;
    if let Ok(a) = hostport.parse() {
        return Some(a);
    }
    let ip: core::net::IpAddr = hostport.parse().ok()?;
    Some(SocketAddr::new(ip, 5060))
}

/// The top Via of a message, split into what transactions and responses need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopVia {
    pub transport: String,
    pub sent_by: String,
    pub branch: Option<String>,
    pub rport: bool,
}

pub fn top_via(headers: &Headers) -> Option<TopVia> {
    let v = header(headers, "Via")?;
    // Several Vias may share one header line.
    let v = v.split(',').next()?.trim();
    let (proto, rest) = v.split_once(char::is_whitespace)?;
    let transport = proto.rsplit('/').next()?.trim().to_ascii_uppercase();
    let mut parts = rest.trim().split(';');
    let sent_by = parts.next()?.trim().to_string();
    let mut branch = None;
    let mut rport = false;
    for p in parts {
        let (k, val) = p.split_once('=').unwrap_or((p, ""));
        let k = k.trim();
        if k.eq_ignore_ascii_case("branch") {
            branch = Some(val.trim().to_string());
        } else if k.eq_ignore_ascii_case("rport") {
            rport = true;
        }
    }
    Some(TopVia { transport, sent_by, branch, rport })
}

/// The transaction key of a message: top Via branch + CSeq method (ACK matches its INVITE for
/// non-2xx; callers decide). Devices without an RFC 3261 branch get Call-ID+CSeq instead.
pub fn transaction_key(headers: &Headers) -> Option<String> {
    let (n, method) = cseq(headers)?;
    let method = if method == "ACK" { "INVITE".to_string() } else { method };
    match top_via(headers)?.branch {
        Some(b) if b.starts_with("z9hG4bK") => Some(format!("{b}|{method}")),
        _ => Some(format!("{}|{n}|{method}", header(headers, "Call-ID")?)),
    }
}

/// Rewrites the top Via for a response: `received` always, and `rport=<port>` when the client
/// asked for it (RFC 3581), so replies reach a device behind NAT at the address it sent from.
pub fn via_with_received(via: &str, source: SocketAddr) -> String {
    let (first, others) = match via.split_once(',') {
        Some((a, b)) => (a.trim(), Some(b)),
        None => (via.trim(), None),
    };
    let mut out = String::new();
    for (i, p) in first.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        let key = p.split('=').next().unwrap_or("").trim();
        if i > 0 && key.eq_ignore_ascii_case("rport") {
            let _ = write!(out, "rport={}", source.port());
        } else if i > 0 && key.eq_ignore_ascii_case("received") {
            out.pop();
            continue;
        } else {
            out.push_str(p);
        }
    }
    let _ = write!(out, ";received={}", source.ip());
    if let Some(o) = others {
        out.push(',');
        out.push_str(o);
    }
    out
}

/// Builds a response to `req`: Via (with received/rport), From, To (with `to_tag` when it had
/// none), Call-ID and CSeq copied; Content-Length set from `body`.
pub fn response(
    req: &Request,
    code: u16,
    to_tag: &str,
    source: SocketAddr,
    extra: Vec<(&str, String)>,
    body: Vec<u8>,
) -> Response {
    let mut headers = Headers::default();
    let vias = headers_named(&req.headers, "Via");
    for (i, v) in vias.iter().enumerate() {
        let v = if i == 0 { via_with_received(v, source) } else { v.to_string() };
        headers.push(make_header("Via", v));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(v) = header(&req.headers, name) {
            headers.push(make_header(name, v.to_string()));
        }
    }
    if let Some(to) = header(&req.headers, "To") {
        let to = if tag(to).is_none() && code > 100 { format!("{to};tag={to_tag}") } else { to.to_string() };
        headers.push(make_header("To", to));
    }
    for (name, value) in extra {
        headers.push(make_header(name, value));
    }
    headers.push(make_header("Content-Length", body.len().to_string()));
    Response { status_code: StatusCode::from(code), wire_reason: None, version: Version::V2, headers, body }
}

/// Everything an outgoing request needs; the Via branch is minted by the caller.
#[derive(Debug, Clone)]
pub struct OutRequest<'a> {
    pub method: Method,
    pub uri: &'a str,
    /// `SIP/2.0/UDP` or `SIP/2.0/TCP`.
    pub transport: &'a str,
    /// The host:port put in Via (our advertised address).
    pub via_host: &'a str,
    pub branch: &'a str,
    pub from: String,
    pub to: String,
    pub call_id: &'a str,
    pub cseq: u32,
    pub extra: Vec<(&'a str, String)>,
    pub content_type: Option<&'a str>,
    pub body: Vec<u8>,
}

pub fn request(r: OutRequest<'_>) -> Result<Request, SipError> {
    let uri = Uri::try_from(r.uri).map_err(|_| SipError::Uri(r.uri.to_string()))?;
    let mut headers = Headers::default();
    headers.push(make_header("Via", format!("SIP/2.0/{} {};rport;branch={}", r.transport, r.via_host, r.branch)));
    headers.push(make_header("From", r.from));
    headers.push(make_header("To", r.to));
    headers.push(make_header("Call-ID", r.call_id.to_string()));
    headers.push(make_header("CSeq", format!("{} {}", r.cseq, r.method)));
    headers.push(make_header("Max-Forwards", "70".into()));
    for (name, value) in r.extra {
        headers.push(make_header(name, value));
    }
    if let Some(ct) = r.content_type {
        headers.push(make_header("Content-Type", ct.to_string()));
    }
    headers.push(make_header("Content-Length", r.body.len().to_string()));
    Ok(Request { method: r.method, uri, version: Version::V2, headers, body: r.body })
}

/// The reason phrase used in logs for a status code.
pub fn status_code(resp: &Response) -> u16 {
    resp.status_code.code()
}

/// Reads the header list of any message.
pub fn headers_of(msg: &SipMessage) -> &Headers {
    match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    }
}

/// A random token of `n` lowercase hex digits from caller-provided randomness (sans-IO: the
/// caller owns the RNG).
pub fn hex_token(random: u128, n: usize) -> String {
    let s = format!("{random:032x}");
    s[..n.min(32)].to_string()
}

/// GB "local time" form used in the REGISTER 200 `Date`: `yyyy-MM-ddTHH:mm:ss.SSS`.
pub fn gb_date(unix_ms: i64, utc_offset_secs: i64) -> String {
    crate::util::format_time(unix_ms.saturating_add(utc_offset_secs.saturating_mul(1000)), true)
}

/// Parses a GB time `yyyy-MM-ddTHH:mm:ss` (trailing fraction, `Z` or `+08:00` ignored: devices
/// vary, wvp PR #1336) into seconds since the epoch of the same local clock.
pub fn parse_gb_time(s: &str) -> Option<i64> {
    crate::util::parse_time(s)
}

/// Formats seconds of a local clock as `yyyy-MM-ddTHH:mm:ss`.
pub fn format_gb_time(secs: i64) -> String {
    crate::util::format_time(secs.saturating_mul(1000), false)
}

/// The request's method as an upper-case string (rsip's Display).
pub fn method_name(m: &Method) -> String {
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK385701375\r\n\
From: <sip:34020000001320000001@3402000000>;tag=1840661473\r\n\
To: <sip:34020000001320000001@3402000000>\r\n\
Call-ID: 418133739\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:34020000001320000001@192.168.1.64:5060>\r\n\
Max-Forwards: 70\r\n\
User-Agent: IP Camera\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn register_parses_and_response_copies_headers_with_rport() {
        let SipMessage::Request(req) = parse(REGISTER).unwrap() else { panic!("request") };
        assert_eq!(req.method, Method::Register);
        assert_eq!(uri_user(header(&req.headers, "From").unwrap()), Some("34020000001320000001"));
        assert_eq!(cseq(&req.headers), Some((1, "REGISTER".into())));
        let src: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let resp = response(&req, 401, "abc", src, vec![], Vec::new());
        let bytes = resp.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 401"), "{text}");
        assert!(text.contains("rport=40000;branch=z9hG4bK385701375;received=10.0.0.9"), "{text}");
        assert!(text.contains("tag=abc"), "{text}");
        let SipMessage::Response(back) = parse(&bytes).unwrap() else { panic!("response") };
        assert_eq!(back.status_code.code(), 401);
    }

    #[test]
    fn compact_headers_and_gb2312_body_survive() {
        let mut msg = b"MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\ni: x\r\nCSeq: 2 MESSAGE\r\n\
c: Application/MANSCDP+xml\r\nl: 4\r\n\r\n"
            .to_vec();
        msg.extend_from_slice(&[0xC3, 0xFB, 0xB3, 0xC6]);
        let SipMessage::Request(req) = parse(&msg).unwrap() else { panic!() };
        assert_eq!(req.body, vec![0xC3, 0xFB, 0xB3, 0xC6]);
        assert_eq!(header(&req.headers, "Call-ID"), Some("x"));
        assert!(top_via(&req.headers).unwrap().branch.unwrap().starts_with("z9hG4bK"));
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        assert!(parse(b"hello").is_err());
        assert!(parse(&vec![b'A'; MAX_MESSAGE + 1]).is_err());
        assert!(parse(b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\n").is_err());
    }

    #[test]
    fn peer_numbers_are_clamped() {
        assert_eq!(clamped_number("18446744073709551615", MAX_EXPIRES), Some(MAX_EXPIRES));
        assert_eq!(clamped_number("99999999999999999999999999", MAX_EXPIRES), Some(MAX_EXPIRES));
        assert_eq!(clamped_number(" 3600 ", MAX_EXPIRES), Some(3600));
        assert_eq!(clamped_number("-1", MAX_EXPIRES), None);
        assert_eq!(clamped_number("", MAX_EXPIRES), None);
        let text = std::str::from_utf8(REGISTER).unwrap();
        let big = text.replace("CSeq: 1 REGISTER", "CSeq: 4294967295 REGISTER");
        assert!(parse(big.as_bytes()).is_err(), "CSeq above 2^31-1 is refused");
        let max = text.replace("CSeq: 1 REGISTER", "CSeq: 2147483647 REGISTER");
        assert!(parse(max.as_bytes()).is_ok());
        let huge = text.replace("Expires: 3600", "Expires: 18446744073709551615");
        let SipMessage::Request(req) = parse(huge.as_bytes()).unwrap() else { panic!("request") };
        assert_eq!(expires(&req.headers), Some(MAX_EXPIRES));
        for cl in ["18446744073709551615", "4294967296", "99999", "-1"] {
            let m = text.replace("Content-Length: 0", &format!("Content-Length: {cl}"));
            let _ = parse(format!("{m}abc").as_bytes()); // no panic, whatever the verdict
        }
    }

    #[test]
    fn gb_times() {
        assert_eq!(gb_date(1_795_226_400_123, 0), "2026-11-21T02:00:00.123");
        let t = parse_gb_time("2024-05-04T14:43:16").unwrap();
        assert_eq!(format_gb_time(t), "2024-05-04T14:43:16");
        assert_eq!(parse_gb_time("2024-05-04T14:43:16+08:00"), Some(t));
        assert_eq!(parse_gb_time("garbage"), None);
    }
}
