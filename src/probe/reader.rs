//! Capture readers for `gbgate probe FILE`: raw PS, our `[u16 len][RTP]` dump, rtptools
//! rtpdump, pcap and pcapng (UDP RTP, and TCP RTP with RFC 4571 or `$` framing).
//!
//! Input is untrusted: every length is checked, nothing here panics on bad bytes. Damage after
//! the file header (truncated or bogus records) ends the read with a warning, not an error, so
//! the probe still reports on what came before it.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};

use crate::proto::rtp::RtpPacket;

/// Files are read whole; beyond this the probe is the wrong tool.
pub const MAX_FILE_SIZE: u64 = 2 << 30;
/// RawPs files are handed out in chunks of this size.
pub const PS_CHUNK: usize = 64 * 1024;
/// How far into a file `detect_format` looks for a pack header after leading garbage.
const PS_SNIFF: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    RawPs,
    /// Our `[u16 BE len][RTP]` dump, which is also the GB28181 TCP wire format (RFC 4571).
    RtpDump,
    /// rtptools `rtpdump`: `#!rtpplay1.0 addr/port\n` + RD_hdr + RD_packet records.
    RtpTools,
    Pcap,
    Pcapng,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    File,
}

#[derive(Debug, Clone)]
pub enum CaptureItem {
    /// One RTP packet. `flow` identifies where it came from (`udp a:p->b:p`, `tcp a:p->b:p`,
    /// `file`, `rtpdump addr/port`); `time_us` is the capture time when the format has one.
    Rtp { flow: String, transport: Transport, time_us: Option<u64>, packet: Bytes },
    /// A chunk of raw program stream (RawPs files), at most [`PS_CHUNK`] bytes.
    Ps(Bytes),
}

/// Everything read from one file. `warnings` notes damage and skipped data, one line each.
#[derive(Debug, Clone)]
pub struct Capture {
    pub format: CaptureFormat,
    pub items: Vec<CaptureItem>,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {size} bytes is over the {max} byte limit of the probe")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: unrecognised format (not PS, RTP dump, rtpdump, pcap or pcapng)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: at offset {offset}: {what}")]
    Malformed { path: PathBuf, offset: usize, what: String },
}

/// Guesses the format from the start of a file (magic numbers, then structure).
pub fn detect_format(head: &[u8]) -> Option<CaptureFormat> {
    match head.get(..4) {
        Some(
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xd4, 0xc3, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d] | [0x4d, 0x3c, 0xb2, 0xa1],
        ) => return Some(CaptureFormat::Pcap),
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => return Some(CaptureFormat::Pcapng),
        Some([0, 0, 1, 0xba]) => return Some(CaptureFormat::RawPs),
        _ => {}
    }
    if head.starts_with(b"#!rtpplay1.0") {
        return Some(CaptureFormat::RtpTools);
    }
    if looks_length_framed(head) {
        return Some(CaptureFormat::RtpDump);
    }
    // A PS file cut mid-PES (e.g. hik_1080p15) starts with garbage before the first pack.
    if memchr::memmem::find(&head[..head.len().min(PS_SNIFF)], &[0, 0, 1, 0xba]).is_some() {
        return Some(CaptureFormat::RawPs);
    }
    None
}

/// True when the buffer starts with a chain of `[u16 len][V=2 ...]` records: three of them, or
/// fewer when the buffer ends (exactly or inside a record whose header looked right).
fn looks_length_framed(buf: &[u8]) -> bool {
    let mut pos = 0;
    for n in 0..3 {
        if pos == buf.len() {
            return n > 0;
        }
        let Some(len) = buf.get(pos..pos + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
            return n > 0;
        };
        if len < 12 {
            return false;
        }
        match buf.get(pos + 2) {
            Some(b) if b >> 6 == 2 => {}
            Some(_) => return false,
            None => return n > 0,
        }
        if pos + 2 + len > buf.len() {
            return true;
        }
        pos += 2 + len;
    }
    true
}

/// Reads a whole capture file into RTP packets or PS chunks.
pub fn read_capture(path: &Path) -> Result<Capture, ReadError> {
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_SIZE {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size, max: MAX_FILE_SIZE });
    }
    let data = Bytes::from(std::fs::read(path).map_err(io)?);
    read_capture_bytes(path, data)
}

/// As [`read_capture`], from bytes already in memory; `path` is only used in messages.
pub fn read_capture_bytes(path: &Path, data: Bytes) -> Result<Capture, ReadError> {
    let format = detect_format(&data).ok_or_else(|| ReadError::UnknownFormat { path: path.to_path_buf() })?;
    let mut cap = Capture { format, items: Vec::new(), warnings: Vec::new() };
    match format {
        CaptureFormat::RawPs => read_raw_ps(&data, &mut cap),
        CaptureFormat::RtpDump => read_rtp_dump(&data, &mut cap),
        CaptureFormat::RtpTools => read_rtptools(path, &data, &mut cap)?,
        CaptureFormat::Pcap => {
            let mut net = Net::default();
            read_pcap(path, &data, &mut net, &mut cap.warnings)?;
            net.finish(&mut cap);
        }
        CaptureFormat::Pcapng => {
            let mut net = Net::default();
            read_pcapng(path, &data, &mut net, &mut cap.warnings)?;
            net.finish(&mut cap);
        }
    }
    Ok(cap)
}

fn malformed(path: &Path, offset: usize, what: impl Into<String>) -> ReadError {
    ReadError::Malformed { path: path.to_path_buf(), offset, what: what.into() }
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

fn is_rtp(rec: &[u8]) -> bool {
    rec.len() >= 12 && rec[0] >> 6 == 2 && !(200..=204).contains(&rec[1])
}

/// A zero-copy sub-slice of `data` when `s` lies inside it, else a copy.
fn sub(data: &Bytes, s: &[u8]) -> Bytes {
    let start = (s.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
    if start <= data.len() && s.len() <= data.len() - start {
        data.slice(start..start + s.len())
    } else {
        Bytes::copy_from_slice(s)
    }
}

fn read_raw_ps(data: &Bytes, cap: &mut Capture) {
    match memchr::memmem::find(data, &[0, 0, 1, 0xba]) {
        Some(0) => {}
        Some(n) => cap.warnings.push(format!("{n} bytes before the first pack header (00 00 01 BA)")),
        None => cap.warnings.push("no pack header (00 00 01 BA) in the file".into()),
    }
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + PS_CHUNK).min(data.len());
        cap.items.push(CaptureItem::Ps(data.slice(pos..end)));
        pos = end;
    }
}

fn read_rtp_dump(data: &Bytes, cap: &mut Capture) {
    let mut pos = 0;
    let mut not_rtp = 0usize;
    while pos < data.len() {
        if data.len() - pos < 2 {
            cap.warnings.push(format!("truncated record length at offset {pos}"));
            break;
        }
        let len = be16(&data[pos..]);
        if len == 0 {
            // RFC 4571 streams with a zero length are broken; nothing after it is trustworthy.
            cap.warnings.push(format!("zero-length record at offset {pos}; stopped"));
            break;
        }
        if pos + 2 + len > data.len() {
            cap.warnings
                .push(format!("truncated record at offset {pos}: length {len}, {} bytes left", data.len() - pos - 2));
            break;
        }
        let rec = data.slice(pos + 2..pos + 2 + len);
        if is_rtp(&rec) {
            cap.items.push(CaptureItem::Rtp {
                flow: "file".into(),
                transport: Transport::File,
                time_us: None,
                packet: rec,
            });
        } else {
            not_rtp += 1;
        }
        pos += 2 + len;
    }
    if not_rtp > 0 {
        cap.warnings.push(format!("{not_rtp} records are not RTP (RTCP or not version 2); skipped"));
    }
}

fn read_rtptools(path: &Path, data: &Bytes, cap: &mut Capture) -> Result<(), ReadError> {
    let line_end = memchr::memchr(b'\n', &data[..data.len().min(1024)])
        .ok_or_else(|| malformed(path, 0, "rtpdump: no end of the #!rtpplay1.0 line"))?;
    let addr = String::from_utf8_lossy(&data[12..line_end]).trim().to_string();
    let flow = if addr.is_empty() { "rtpdump".to_string() } else { format!("rtpdump {addr}") };
    let mut pos = line_end + 1;
    // RD_hdr_t: struct timeval start (sec, usec), source address, port, padding.
    let Some(hdr) = data.get(pos..pos + 16) else {
        return Err(malformed(path, pos, "rtpdump: truncated file header (RD_hdr_t)"));
    };
    let start_us = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as u64 * 1_000_000
        + u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as u64;
    pos += 16;
    let mut rtcp = 0usize;
    while pos < data.len() {
        // RD_packet_t: length (incl. this 8-byte header), plen (0 = RTCP), offset ms.
        let Some(h) = data.get(pos..pos + 8) else {
            cap.warnings.push(format!("truncated packet header at offset {pos}"));
            break;
        };
        let len = be16(h);
        let plen = be16(&h[2..]);
        let offset_ms = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as u64;
        if len < 8 {
            cap.warnings.push(format!("bogus packet length {len} at offset {pos}; stopped"));
            break;
        }
        if pos + len > data.len() {
            cap.warnings
                .push(format!("truncated packet at offset {pos}: length {len}, {} bytes left", data.len() - pos));
            break;
        }
        let pkt = data.slice(pos + 8..pos + len);
        if plen == 0 || !is_rtp(&pkt) {
            rtcp += 1;
        } else {
            cap.items.push(CaptureItem::Rtp {
                flow: flow.clone(),
                transport: Transport::Udp,
                time_us: Some(start_us + offset_ms * 1000),
                packet: pkt,
            });
        }
        pos += len;
    }
    if rtcp > 0 {
        cap.warnings.push(format!("{rtcp} RTCP/non-RTP records skipped"));
    }
    Ok(())
}

fn read_pcap(path: &Path, data: &Bytes, net: &mut Net, warnings: &mut Vec<String>) -> Result<(), ReadError> {
    if data.len() < 24 {
        return Err(malformed(path, 0, "pcap: truncated global header"));
    }
    let (le, nanos) = match [data[0], data[1], data[2], data[3]] {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err(malformed(path, 0, "pcap: bad magic")),
    };
    let rd = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    // The upper bits of the link type field carry FCS information.
    let linktype = rd(&data[20..]) & 0xFFFF;
    let mut pos = 24;
    let mut idx = 0;
    while pos < data.len() {
        if data.len() - pos < 16 {
            warnings.push(format!("truncated pcap record header at offset {pos}"));
            break;
        }
        let r = &data[pos..pos + 16];
        let (sec, frac, incl) = (rd(r) as u64, rd(&r[4..]) as u64, rd(&r[8..]) as usize);
        if incl > data.len() - pos - 16 {
            warnings.push(format!(
                "truncated pcap record at offset {pos}: {incl} bytes captured, {} left",
                data.len() - pos - 16
            ));
            break;
        }
        let time = sec * 1_000_000 + if nanos { frac / 1000 } else { frac };
        net.frame(linktype, data, &data[pos + 16..pos + 16 + incl], Some(time), idx, warnings);
        pos += 16 + incl;
        idx += 1;
    }
    Ok(())
}

fn read_pcapng(path: &Path, data: &Bytes, net: &mut Net, warnings: &mut Vec<String>) -> Result<(), ReadError> {
    let mut le = true;
    // Per interface of the current section: link type and timestamp units per second.
    let mut ifaces: Vec<(u32, u64)> = Vec::new();
    let mut pos = 0;
    let mut idx = 0;
    let mut unknown_iface = 0usize;
    while pos < data.len() {
        if data.len() - pos < 12 {
            warnings.push(format!("truncated pcapng block at offset {pos}"));
            break;
        }
        let b = &data[pos..];
        let rd = |o: usize, le: bool| {
            let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let is_shb = b[..4] == [0x0a, 0x0d, 0x0d, 0x0a];
        if is_shb {
            le = match b[8..12] {
                [0x4d, 0x3c, 0x2b, 0x1a] => true,
                [0x1a, 0x2b, 0x3c, 0x4d] => false,
                _ if pos == 0 => return Err(malformed(path, pos, "pcapng: bad byte-order magic")),
                _ => {
                    warnings.push(format!("bad pcapng section header at offset {pos}; stopped"));
                    break;
                }
            };
            ifaces.clear();
        } else if pos == 0 {
            return Err(malformed(path, 0, "pcapng: first block is not a section header"));
        }
        let btype = rd(0, le);
        let blen = rd(4, le) as usize;
        if blen < 12 || !blen.is_multiple_of(4) {
            warnings.push(format!("bogus pcapng block length {blen} at offset {pos}; stopped"));
            break;
        }
        if blen > b.len() {
            warnings.push(format!("truncated pcapng block at offset {pos}: length {blen}, {} bytes left", b.len()));
            break;
        }
        let body = &b[8..blen - 4];
        let rdb = |o: usize| rd(8 + o, le);
        let rd16 = |o: usize| {
            let a = [body[o], body[o + 1]];
            if le {
                u16::from_le_bytes(a)
            } else {
                u16::from_be_bytes(a)
            }
        };
        match btype {
            // Interface Description Block
            1 if body.len() >= 8 => {
                let linktype = rd16(0) as u32;
                ifaces.push((linktype, if_tsresol(&body[8..], le)));
            }
            // Enhanced Packet Block
            6 if body.len() >= 20 => {
                let iface = rdb(0) as usize;
                let ts = ((rdb(4) as u64) << 32) | rdb(8) as u64;
                let caplen = (rdb(12) as usize).min(body.len() - 20);
                match ifaces.get(iface) {
                    Some(&(linktype, units)) => {
                        let time = (ts as u128 * 1_000_000 / units as u128) as u64;
                        net.frame(linktype, data, &body[20..20 + caplen], Some(time), idx, warnings);
                    }
                    None => unknown_iface += 1,
                }
                idx += 1;
            }
            // Simple Packet Block: interface 0, no timestamp.
            3 if body.len() >= 4 => {
                let caplen = (rdb(0) as usize).min(body.len() - 4);
                match ifaces.first() {
                    Some(&(linktype, _)) => net.frame(linktype, data, &body[4..4 + caplen], None, idx, warnings),
                    None => unknown_iface += 1,
                }
                idx += 1;
            }
            // Obsolete Packet Block
            2 if body.len() >= 20 => {
                let iface = rd16(0) as usize;
                let ts = ((rdb(4) as u64) << 32) | rdb(8) as u64;
                let caplen = (rdb(12) as usize).min(body.len() - 20);
                match ifaces.get(iface) {
                    Some(&(linktype, units)) => {
                        let time = (ts as u128 * 1_000_000 / units as u128) as u64;
                        net.frame(linktype, data, &body[20..20 + caplen], Some(time), idx, warnings);
                    }
                    None => unknown_iface += 1,
                }
                idx += 1;
            }
            _ => {}
        }
        pos += blen;
    }
    if unknown_iface > 0 {
        warnings.push(format!("{unknown_iface} packets refer to an undeclared interface; skipped"));
    }
    Ok(())
}

/// Timestamp units per second from an IDB's options (if_tsresol, code 9); default microseconds.
fn if_tsresol(mut opts: &[u8], le: bool) -> u64 {
    while opts.len() >= 4 {
        let (code, len) = if le {
            (u16::from_le_bytes([opts[0], opts[1]]), u16::from_le_bytes([opts[2], opts[3]]) as usize)
        } else {
            (u16::from_be_bytes([opts[0], opts[1]]), u16::from_be_bytes([opts[2], opts[3]]) as usize)
        };
        if code == 0 {
            break;
        }
        if code == 9 && len == 1 && opts.len() > 4 {
            let v = opts[4];
            return if v & 0x80 == 0 { 10u64.pow(u32::from(v.min(19))) } else { 1u64 << (v & 0x7f).min(63) };
        }
        let skip = 4 + len.div_ceil(4) * 4;
        opts = opts.get(skip..).unwrap_or(&[]);
    }
    1_000_000
}

struct Datagram {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Bytes,
    time: Option<u64>,
    idx: usize,
}

struct Segment {
    seq: u32,
    syn: bool,
    payload: Bytes,
    time: Option<u64>,
    idx: usize,
}

/// Collects UDP datagrams and TCP segments; RTP is picked out once the whole file is seen,
/// because telling RTP from other UDP needs the flow's history.
#[derive(Default)]
struct Net {
    udp: Vec<Datagram>,
    tcp: HashMap<(SocketAddr, SocketAddr), Vec<Segment>>,
    tcp_order: Vec<(SocketAddr, SocketAddr)>,
    bad_linktypes: Vec<u32>,
    fragments: usize,
}

impl Net {
    fn frame(
        &mut self,
        linktype: u32,
        data: &Bytes,
        frame: &[u8],
        time: Option<u64>,
        idx: usize,
        warnings: &mut Vec<String>,
    ) {
        let sliced = match linktype {
            1 => SlicedPacket::from_ethernet(frame).ok(),
            113 => SlicedPacket::from_linux_sll(frame).ok(),
            // Linux cooked v2: 20-byte header, protocol (EtherType) first.
            276 => {
                frame.get(20..).and_then(|rest| SlicedPacket::from_ether_type(EtherType(be16(frame) as u16), rest).ok())
            }
            // Raw IP (12 is DLT_RAW on some BSDs, 14 on others), IPv4, IPv6.
            101 | 12 | 14 | 228 | 229 => SlicedPacket::from_ip(frame).ok(),
            // BSD loopback / OpenBSD loop: 4-byte address family, then IP.
            0 | 108 => frame.get(4..).and_then(|f| SlicedPacket::from_ip(f).ok()),
            _ => {
                if !self.bad_linktypes.contains(&linktype) {
                    self.bad_linktypes.push(linktype);
                    warnings.push(format!("unsupported link type {linktype}; its packets are skipped"));
                }
                None
            }
        };
        let Some(p) = sliced else { return };
        let (src_ip, dst_ip, fragmented) = match &p.net {
            Some(NetSlice::Ipv4(s)) => (
                IpAddr::V4(s.header().source_addr()),
                IpAddr::V4(s.header().destination_addr()),
                s.is_payload_fragmented(),
            ),
            Some(NetSlice::Ipv6(s)) => (
                IpAddr::V6(s.header().source_addr()),
                IpAddr::V6(s.header().destination_addr()),
                s.is_payload_fragmented(),
            ),
            _ => return,
        };
        if fragmented {
            self.fragments += 1;
            return;
        }
        match &p.transport {
            Some(TransportSlice::Udp(u)) => self.udp.push(Datagram {
                src: SocketAddr::new(src_ip, u.source_port()),
                dst: SocketAddr::new(dst_ip, u.destination_port()),
                payload: sub(data, u.payload()),
                time,
                idx,
            }),
            Some(TransportSlice::Tcp(t)) if t.syn() || !t.payload().is_empty() => {
                let key = (SocketAddr::new(src_ip, t.source_port()), SocketAddr::new(dst_ip, t.destination_port()));
                let segs = self.tcp.entry(key).or_insert_with(|| {
                    self.tcp_order.push(key);
                    Vec::new()
                });
                segs.push(Segment {
                    seq: t.sequence_number(),
                    syn: t.syn(),
                    payload: sub(data, t.payload()),
                    time,
                    idx,
                });
            }
            _ => {}
        }
    }

    fn finish(self, cap: &mut Capture) {
        if self.fragments > 0 {
            cap.warnings.push(format!("{} IP fragments not reassembled; skipped", self.fragments));
        }
        // (capture index of the frame that completed the packet, item)
        let mut out: Vec<(usize, CaptureItem)> = Vec::new();
        udp_rtp(self.udp, &mut out);
        for key in self.tcp_order {
            let segs = self.tcp.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            tcp_rtp(key, segs, &mut out, &mut cap.warnings);
        }
        out.sort_by_key(|(idx, _)| *idx);
        cap.items.extend(out.into_iter().map(|(_, item)| item));
    }
}

/// A (flow, SSRC) counts as RTP when it has at least two packets and most consecutive ones
/// advance the sequence number a little: random UDP (DNS, NetBIOS) hardly ever does.
fn plausible_ssrcs<'a>(pkts: impl Iterator<Item = &'a [u8]>) -> Vec<u32> {
    let mut st: HashMap<u32, (u16, usize, usize)> = HashMap::new(); // ssrc -> (last seq, packets, steady)
    for p in pkts.filter(|p| is_rtp(p)) {
        let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let e = st.entry(ssrc).or_insert((seq.wrapping_sub(1), 0, 0));
        let step = seq.wrapping_sub(e.0);
        if (1..=64).contains(&step) || step > 65535 - 64 {
            e.2 += 1;
        }
        e.0 = seq;
        e.1 += 1;
    }
    let mut v: Vec<u32> =
        st.into_iter().filter(|(_, (_, n, steady))| *n >= 2 && *steady * 2 > *n).map(|(s, _)| s).collect();
    v.sort_unstable();
    v
}

fn udp_rtp(udp: Vec<Datagram>, out: &mut Vec<(usize, CaptureItem)>) {
    let mut flows: HashMap<(SocketAddr, SocketAddr), Vec<usize>> = HashMap::new();
    for (i, d) in udp.iter().enumerate() {
        flows.entry((d.src, d.dst)).or_default().push(i);
    }
    let mut keep = vec![false; udp.len()];
    for idxs in flows.values() {
        let ssrcs = plausible_ssrcs(idxs.iter().map(|&i| &udp[i].payload[..]));
        for &i in idxs {
            let p = &udp[i].payload;
            keep[i] = is_rtp(p) && ssrcs.binary_search(&u32::from_be_bytes([p[8], p[9], p[10], p[11]])).is_ok();
        }
    }
    for (d, keep) in udp.into_iter().zip(keep) {
        if keep && RtpPacket::parse(d.payload.clone()).is_ok() {
            out.push((
                d.idx,
                CaptureItem::Rtp {
                    flow: format!("udp {}->{}", d.src, d.dst),
                    transport: Transport::Udp,
                    time_us: d.time,
                    packet: d.payload,
                },
            ));
        }
    }
}

/// One contiguous run of a TCP byte stream, with (position, frame index, time) of each segment
/// that contributed to it.
struct Run {
    data: Vec<u8>,
    marks: Vec<(usize, usize, Option<u64>)>,
}

/// Puts one direction of a TCP connection back in sequence order. Retransmitted and
/// overlapping bytes are taken from the first copy; a hole starts a new run.
fn reassemble(segs: &[Segment], flow: &str, warnings: &mut Vec<String>) -> Vec<Run> {
    let Some(first) = segs.first() else {
        return Vec::new();
    };
    // Unwrap 32-bit sequence numbers step by step so streams crossing 2^32 stay ordered.
    let (mut prev_seq, mut prev_off) = (first.seq, 0i64);
    let mut placed: Vec<(i64, usize)> = Vec::with_capacity(segs.len()); // (stream offset, segment)
    let mut syn_end = None;
    for (i, s) in segs.iter().enumerate() {
        let off = prev_off + i64::from(s.seq.wrapping_sub(prev_seq) as i32);
        (prev_seq, prev_off) = (s.seq, off);
        if s.syn {
            syn_end.get_or_insert(off + 1);
        }
        placed.push((off + i64::from(s.syn), i));
    }
    placed.sort_by_key(|&(off, i)| (off, i));
    let mut cursor = syn_end.unwrap_or(placed[0].0);
    let mut runs: Vec<Run> = Vec::new();
    let mut missing = 0i64;
    for (off, i) in placed {
        let s = &segs[i];
        let end = off + s.payload.len() as i64;
        if s.payload.is_empty() || end <= cursor {
            continue;
        }
        if off > cursor || runs.is_empty() {
            missing += (off - cursor).max(0);
            runs.push(Run { data: Vec::new(), marks: Vec::new() });
            cursor = cursor.max(off);
        }
        let Some(run) = runs.last_mut() else { continue };
        run.marks.push((run.data.len(), s.idx, s.time));
        run.data.extend_from_slice(&s.payload[(cursor - off) as usize..]);
        cursor = end;
    }
    // A packet is only complete once every byte before it has arrived: make the marks
    // monotonic so that packets of one connection stay in stream order.
    let mut latest: Option<(usize, Option<u64>)> = None;
    for m in runs.iter_mut().flat_map(|r| r.marks.iter_mut()) {
        match latest {
            Some((idx, time)) if idx > m.1 => (m.1, m.2) = (idx, time),
            _ => latest = Some((m.1, m.2)),
        }
    }
    if missing > 0 {
        warnings.push(format!(
            "{flow}: {missing} bytes of the TCP stream were not captured; resynchronised after each hole"
        ));
    }
    runs
}

/// Framing of one record at `pos`: `$ ch len16` (RTSP interleaved) or `len16` (RFC 4571).
/// Returns (header length, body length) candidates, the `$` form first.
fn record_candidates(s: &[u8], pos: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let dollar = (s[pos] == b'$' && s.len() - pos >= 4).then(|| (4, be16(&s[pos + 2..])));
    let plain = (s.len() - pos >= 2).then(|| (2, be16(&s[pos..])));
    dollar.into_iter().chain(plain)
}

/// A complete, well-formed record at `pos` (RTP or RTCP: length >= 8, version 2).
fn record_at(s: &[u8], pos: usize) -> Option<Range<usize>> {
    record_candidates(s, pos)
        .map(|(h, len)| pos + h..pos + h + len)
        .find(|r| r.len() >= 8 && r.end <= s.len() && s[r.start] >> 6 == 2)
}

/// Splits an RFC 4571 / `$`-interleaved byte stream into records: a plain length-chain walk
/// that, on a bad record, skips ahead to the next spot where two records chain (a packet cut
/// by the end of the capture is skipped the same way). Returns the records and how many bytes
/// were skipped. (The full resynchronising framer is
/// crate::proto::rtp::tcp; this is kept to one function so it can be swapped for it.)
fn walk_framed(s: &[u8]) -> (Vec<Range<usize>>, usize) {
    let chains = |p: usize| match record_at(s, p) {
        Some(r) => r.end == s.len() || record_at(s, r.end).is_some() || s.len() - r.end < 4,
        None => false,
    };
    let mut recs = Vec::new();
    let (mut pos, mut skipped) = (0, 0);
    while pos < s.len() {
        if let Some(r) = record_at(s, pos) {
            pos = r.end;
            recs.push(r);
            continue;
        }
        match (pos + 1..s.len()).find(|&p| chains(p)) {
            Some(p) => {
                skipped += p - pos;
                pos = p;
            }
            None => {
                skipped += s.len() - pos;
                break;
            }
        }
    }
    (recs, skipped)
}

fn tcp_rtp(
    key: (SocketAddr, SocketAddr),
    segs: &[Segment],
    out: &mut Vec<(usize, CaptureItem)>,
    warnings: &mut Vec<String>,
) {
    let flow = format!("tcp {}->{}", key.0, key.1);
    let mut local_warnings = Vec::new();
    let runs = reassemble(segs, &flow, &mut local_warnings);
    let mut found: Vec<(usize, Option<u64>, Bytes)> = Vec::new();
    let mut skipped = 0;
    for run in &runs {
        let (recs, sk) = walk_framed(&run.data);
        skipped += sk;
        let buf = Bytes::copy_from_slice(&run.data);
        for r in recs {
            // The packet is complete when the segment holding its last byte arrived.
            let m = run.marks.partition_point(|&(p, _, _)| p < r.end) - 1;
            let (_, idx, time) = run.marks[m];
            found.push((idx, time, buf.slice(r)));
        }
    }
    let ssrcs = plausible_ssrcs(found.iter().map(|(_, _, p)| &p[..]));
    if ssrcs.is_empty() {
        return; // SIP, RTSP text, anything else: not an RTP flow.
    }
    warnings.extend(local_warnings);
    if skipped > 0 {
        warnings.push(format!("{flow}: {skipped} bytes skipped outside RTP framing"));
    }
    for (idx, time, packet) in found {
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if is_rtp(&packet) && ssrcs.binary_search(&ssrc).is_ok() && RtpPacket::parse(packet.clone()).is_ok() {
            let item = CaptureItem::Rtp { flow: flow.clone(), transport: Transport::Tcp, time_us: time, packet };
            out.push((idx, item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ssrc: u32, len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        crate::proto::rtp::write_packet(&mut v, 96, false, seq, seq as u32 * 3600, ssrc, &vec![0xAB; len]);
        v
    }

    #[test]
    fn detects_by_magic_and_structure() {
        assert_eq!(detect_format(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0]), Some(CaptureFormat::Pcap));
        assert_eq!(detect_format(&[0xa1, 0xb2, 0x3c, 0x4d]), Some(CaptureFormat::Pcap));
        assert_eq!(detect_format(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0]), Some(CaptureFormat::Pcapng));
        assert_eq!(detect_format(b"#!rtpplay1.0 127.0.0.1/5000\n"), Some(CaptureFormat::RtpTools));
        assert_eq!(detect_format(&[0, 0, 1, 0xba, 0x44]), Some(CaptureFormat::RawPs));
        let mut dump = Vec::new();
        for seq in 0..3 {
            let p = rtp(seq, 1, 100);
            dump.extend_from_slice(&(p.len() as u16).to_be_bytes());
            dump.extend_from_slice(&p);
        }
        assert_eq!(detect_format(&dump), Some(CaptureFormat::RtpDump));
        assert_eq!(detect_format(&dump[..150]), Some(CaptureFormat::RtpDump));
        // A dump whose payload contains a pack header is still a dump.
        dump[20..24].copy_from_slice(&[0, 0, 1, 0xba]);
        assert_eq!(detect_format(&dump), Some(CaptureFormat::RtpDump));
        let mut garbage = vec![0x55u8; 1651];
        garbage.extend_from_slice(&[0, 0, 1, 0xba, 0x44]);
        assert_eq!(detect_format(&garbage), Some(CaptureFormat::RawPs));
        assert_eq!(detect_format(&[0x55; 100]), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn walker_skips_rtcp_text_and_resyncs() {
        let mut s = Vec::new();
        let mut want = Vec::new();
        for seq in 0..4u16 {
            let p = rtp(seq, 7, 50 + seq as usize);
            s.extend_from_slice(&(p.len() as u16).to_be_bytes());
            s.extend_from_slice(&p);
            want.push(p);
            if seq == 1 {
                s.extend_from_slice(b"garbage\r\n"); // lost sync here
            }
        }
        let (recs, skipped) = walk_framed(&s);
        assert_eq!(skipped, 9);
        let got: Vec<&[u8]> = recs.iter().map(|r| &s[r.clone()]).collect();
        assert_eq!(got, want.iter().map(|v| &v[..]).collect::<Vec<_>>());
        // `$` interleaved, with an RTCP record on channel 1 and a truncated tail.
        let mut s = Vec::new();
        let p = rtp(1, 9, 20);
        s.extend_from_slice(&[b'$', 0, 0, p.len() as u8]);
        s.extend_from_slice(&p);
        s.extend_from_slice(&[b'$', 1, 0, 8, 0x80, 200, 0, 1, 0, 0, 0, 9]);
        s.extend_from_slice(&[b'$', 0, 0, p.len() as u8]);
        s.extend_from_slice(&p[..10]);
        let (recs, skipped) = walk_framed(&s);
        assert_eq!(recs.len(), 2);
        assert_eq!(&s[recs[0].clone()], &p[..]);
        assert_eq!(skipped, 14);
    }

    #[test]
    fn never_panics_on_junk() {
        let mut seed = 0x1234_5678u32;
        for n in 0..3000usize {
            let len = n % 300;
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            // Give every parser a chance at it.
            let heads: [&[u8]; 4] = [&[0xd4, 0xc3, 0xb2, 0xa1], &[0x0a, 0x0d, 0x0d, 0x0a], b"#!rtpplay1.0", &[0, 0x20]];
            let head = heads[n % 4];
            let k = head.len().min(v.len());
            v[..k].copy_from_slice(&head[..k]);
            let _ = read_capture_bytes(Path::new("junk"), Bytes::from(v.clone()));
            let _ = walk_framed(&v);
        }
    }
}
