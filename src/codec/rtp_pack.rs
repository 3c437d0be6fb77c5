//! RTP packetisers for egress (RFC 6184 H.264, RFC 7798 H.265, RFC 3640 AAC-hbr, RFC 3551
//! G.711), SDP media sections and RTCP sender reports. Sans-IO.
//!
//! A frame is packetised once: [`frame_payloads`] fills the frame's shared cache, and every
//! player then only adds its own 12-byte RTP header (its SSRC, sequence and timestamp offset).
use std::fmt::Write as _;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{Codec, CodecConfig, Frame, RtpPayload};

/// Smallest `max_payload` the packetisers accept (room for FU headers and a few bytes).
pub const MIN_PAYLOAD: usize = 16;

/// The RTP payloads of `frame`, computed once per frame and shared through its cache: small
/// heads and slices of the frame's data (D181).
pub fn frame_payloads(frame: &Frame, max_payload: usize) -> &[RtpPayload] {
    frame.cache.rtp.get_or_init(|| packetize_shared(frame.codec, &frame.data, max_payload))
}

/// Splits one frame's data into RTP payloads of at most `max_payload` bytes, each contiguous.
pub fn packetize(codec: Codec, data: &[u8], max_payload: usize) -> Vec<Bytes> {
    packetize_shared(codec, &Bytes::copy_from_slice(data), max_payload)
        .iter()
        .map(|p| Bytes::from(p.to_vec()))
        .collect()
}

/// Splits one frame's data into RTP payloads of at most `max_payload` bytes whose bodies are
/// slices of `data` (no copy of the media; D181).
pub fn packetize_shared(codec: Codec, data: &Bytes, max_payload: usize) -> Vec<RtpPayload> {
    let max = max_payload.max(MIN_PAYLOAD);
    match codec {
        Codec::H264 => pack_nals(data, max, &H264),
        Codec::H265 => pack_nals(data, max, &H265),
        Codec::Aac => pack_aac(data, max),
        Codec::G711A | Codec::G711U => data.chunks(max).map(|c| RtpPayload::new(&[], data.slice_ref(c))).collect(),
    }
}

/// Whether payload `index` of `count` carries the marker bit: the last packet of a video frame
/// or of an AAC access unit; every G.711 packet.
pub fn marker(codec: Codec, index: usize, count: usize) -> bool {
    match codec {
        Codec::G711A | Codec::G711U => true,
        _ => index + 1 == count,
    }
}

/// Timestamp offset (in the track's clock) of the payload that starts `bytes_before` bytes into
/// the frame: G.711 packets of one frame advance by their sample count, others share the frame's.
pub fn timestamp_offset(codec: Codec, bytes_before: usize, channels: u8) -> u32 {
    match codec {
        Codec::G711A | Codec::G711U => (bytes_before / channels.max(1) as usize) as u32,
        _ => 0,
    }
}

/// A 12-byte RTP header.
pub fn rtp_header(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = (pt & 0x7f) | if marker { 0x80 } else { 0 };
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

/// An RTCP sender report (no report blocks). `ntp` is the 64-bit NTP timestamp.
pub fn rtcp_sender_report(ssrc: u32, ntp: u64, rtp_ts: u32, packets: u32, octets: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0] = 0x80;
    b[1] = 200;
    b[2..4].copy_from_slice(&6u16.to_be_bytes());
    b[4..8].copy_from_slice(&ssrc.to_be_bytes());
    b[8..16].copy_from_slice(&ntp.to_be_bytes());
    b[16..20].copy_from_slice(&rtp_ts.to_be_bytes());
    b[20..24].copy_from_slice(&packets.to_be_bytes());
    b[24..28].copy_from_slice(&octets.to_be_bytes());
    b
}

/// An RTCP BYE for one source; sent after a sender report (RFC 3550 compound packet) when the
/// stream ends, so players see a clean end of stream rather than a dropped connection.
pub fn rtcp_bye(ssrc: u32) -> [u8; 8] {
    let mut b = [0x81, 203, 0, 1, 0, 0, 0, 0];
    b[4..8].copy_from_slice(&ssrc.to_be_bytes());
    b
}

/// Converts seconds since the Unix epoch (as f64 microsecond precision) to a 64-bit NTP timestamp.
pub fn ntp_from_unix_micros(micros: u64) -> u64 {
    const UNIX_TO_NTP: u64 = 2_208_988_800;
    let secs = micros / 1_000_000 + UNIX_TO_NTP;
    let frac = ((micros % 1_000_000) << 32) / 1_000_000;
    (secs << 32) | frac
}

/// RTP payload type of a track.
pub fn payload_type(codec: Codec, config: &CodecConfig) -> u8 {
    match (codec, config) {
        (Codec::H264 | Codec::H265, _) => 96,
        (Codec::G711A, CodecConfig::Audio(a)) if a.sample_rate == 8000 && a.channels <= 1 => 8,
        (Codec::G711U, CodecConfig::Audio(a)) if a.sample_rate == 8000 && a.channels <= 1 => 0,
        _ => 97,
    }
}

/// RTP clock rate of a track.
pub fn clock_rate(codec: Codec, config: &CodecConfig) -> u32 {
    match (codec, config) {
        (Codec::H264 | Codec::H265, _) => 90_000,
        (_, CodecConfig::Audio(a)) => a.sample_rate.max(1),
        _ => 8000,
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// One SDP media section (`m=` up to and including `a=control`), CRLF line ends.
pub fn sdp_media(codec: Codec, config: &CodecConfig, control: &str) -> String {
    let pt = payload_type(codec, config);
    let mut s = String::new();
    match (codec, config) {
        (Codec::H264, CodecConfig::Video(v)) => {
            let _ = write!(s, "m=video 0 RTP/AVP {pt}\r\na=rtpmap:{pt} H264/90000\r\n");
            let _ = write!(s, "a=fmtp:{pt} packetization-mode=1");
            if v.sps.len() >= 4 {
                let _ = write!(s, ";profile-level-id={:02X}{:02X}{:02X}", v.sps[1], v.sps[2], v.sps[3]);
            }
            if !v.sps.is_empty() && !v.pps.is_empty() {
                let _ = write!(s, ";sprop-parameter-sets={},{}", b64(&v.sps), b64(&v.pps));
            }
            s.push_str("\r\n");
            if v.width > 0 && v.height > 0 {
                let _ = write!(s, "a=framesize:{pt} {}-{}\r\n", v.width, v.height);
            }
        }
        (Codec::H265, CodecConfig::Video(v)) => {
            let _ = write!(s, "m=video 0 RTP/AVP {pt}\r\na=rtpmap:{pt} H265/90000\r\n");
            let mut params = Vec::new();
            if let Some(vps) = v.vps.as_ref().filter(|v| !v.is_empty()) {
                params.push(format!("sprop-vps={}", b64(vps)));
            }
            if !v.sps.is_empty() {
                params.push(format!("sprop-sps={}", b64(&v.sps)));
            }
            if !v.pps.is_empty() {
                params.push(format!("sprop-pps={}", b64(&v.pps)));
            }
            if !params.is_empty() {
                let _ = write!(s, "a=fmtp:{pt} {}\r\n", params.join(";"));
            }
        }
        (Codec::Aac, CodecConfig::Audio(a)) => {
            let _ =
                write!(s, "m=audio 0 RTP/AVP {pt}\r\na=rtpmap:{pt} MPEG4-GENERIC/{}/{}\r\n", a.sample_rate, a.channels);
            let config: String = a.asc.as_deref().unwrap_or(&[]).iter().map(|b| format!("{b:02X}")).collect();
            let _ = write!(
                s,
                "a=fmtp:{pt} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config={config}\r\n"
            );
        }
        (Codec::G711A | Codec::G711U, CodecConfig::Audio(a)) => {
            let name = if codec == Codec::G711A { "PCMA" } else { "PCMU" };
            let _ = write!(s, "m=audio 0 RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/{}", a.sample_rate);
            if a.channels > 1 {
                let _ = write!(s, "/{}", a.channels);
            }
            s.push_str("\r\n");
        }
        // A config that does not match its codec: describe the codec with defaults.
        (Codec::H264 | Codec::H265, _) => {
            let _ = write!(s, "m=video 0 RTP/AVP {pt}\r\na=rtpmap:{pt} {}/90000\r\n", codec.name().to_uppercase());
        }
        _ => {
            let _ = write!(s, "m=audio 0 RTP/AVP {pt}\r\n");
        }
    }
    let _ = write!(s, "a=control:{control}\r\n");
    s
}

/// How one video codec's NAL units are aggregated and fragmented.
trait NalScheme {
    /// NAL header length (1 for H.264, 2 for H.265).
    fn header_len(&self) -> usize;
    /// Aggregation packet header for the given NAL units.
    fn aggregation_header(&self, nals: &[&[u8]]) -> Vec<u8>;
    /// Fragmentation unit: payload header + FU header for a NAL with header `nal`.
    fn fu_header(&self, nal: &[u8], start: bool, end: bool) -> Vec<u8>;
}

struct H264Scheme;
struct H265Scheme;
const H264: H264Scheme = H264Scheme;
const H265: H265Scheme = H265Scheme;

impl NalScheme for H264Scheme {
    fn header_len(&self) -> usize {
        1
    }
    fn aggregation_header(&self, nals: &[&[u8]]) -> Vec<u8> {
        let f = nals.iter().fold(0u8, |a, n| a | (n[0] & 0x80));
        let nri = nals.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
        vec![f | nri | 24]
    }
    fn fu_header(&self, nal: &[u8], start: bool, end: bool) -> Vec<u8> {
        let indicator = (nal[0] & 0xe0) | 28;
        let header = (nal[0] & 0x1f) | if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
        vec![indicator, header]
    }
}

impl NalScheme for H265Scheme {
    fn header_len(&self) -> usize {
        2
    }
    fn aggregation_header(&self, nals: &[&[u8]]) -> Vec<u8> {
        let f = nals.iter().fold(0u8, |a, n| a | (n[0] & 0x80));
        let layer = nals.iter().map(|n| ((n[0] & 1) << 5) | (n[1] >> 3)).min().unwrap_or(0);
        let tid = nals.iter().map(|n| n[1] & 7).filter(|t| *t > 0).min().unwrap_or(1);
        vec![f | (48 << 1) | (layer >> 5), ((layer & 0x1f) << 3) | tid]
    }
    fn fu_header(&self, nal: &[u8], start: bool, end: bool) -> Vec<u8> {
        let t = (nal[0] >> 1) & 0x3f;
        vec![(nal[0] & 0x81) | (49 << 1), nal[1], t | if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 }]
    }
}

/// Iterates 4-byte length-prefixed NAL units, skipping empty ones and stopping at a truncation.
fn avcc_nals(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if data.len() - 4 < len {
            break;
        }
        if len > 0 {
            out.push(&data[4..4 + len]);
        }
        data = &data[4 + len..];
    }
    out
}

fn pack_nals(data: &Bytes, max: usize, scheme: &dyn NalScheme) -> Vec<RtpPayload> {
    let hl = scheme.header_len();
    let nals: Vec<&[u8]> = avcc_nals(data).into_iter().filter(|n| n.len() >= hl).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < nals.len() {
        let nal = nals[i];
        if nal.len() > max {
            // Fragmentation unit.
            let fu_len = scheme.fu_header(nal, true, false).len();
            let chunk = max - fu_len;
            let body = &nal[hl..];
            let mut off = 0;
            while off < body.len() {
                let end = (off + chunk).min(body.len());
                let head = scheme.fu_header(nal, off == 0, end == body.len());
                out.push(RtpPayload::new(&head, data.slice_ref(&body[off..end])));
                off = end;
            }
            i += 1;
            continue;
        }
        // Aggregate the following NAL units that fit with this one.
        let mut size = hl + 2 + nal.len();
        let mut j = i + 1;
        while j < nals.len() && size + 2 + nals[j].len() <= max {
            size += 2 + nals[j].len();
            j += 1;
        }
        if j == i + 1 {
            out.push(RtpPayload::new(&[], data.slice_ref(nal)));
        } else {
            let mut p = BytesMut::with_capacity(size);
            p.put_slice(&scheme.aggregation_header(&nals[i..j]));
            for n in &nals[i..j] {
                p.put_u16(n.len() as u16);
                p.put_slice(n);
            }
            out.push(RtpPayload::new(&[], p.freeze()));
        }
        i = j;
    }
    out
}

/// RFC 3640 AAC-hbr: AU-headers-length (16 bits), one 16-bit AU header (13-bit size, 3-bit
/// index 0), then the AU; an AU larger than a packet is fragmented, each fragment repeating the
/// AU header with the whole AU's size.
fn pack_aac(data: &Bytes, max: usize) -> Vec<RtpPayload> {
    let size = (data.len() as u16) & 0x1fff;
    let room = max - 4;
    let mut out = Vec::new();
    let mut chunks = data.chunks(room).peekable();
    if chunks.peek().is_none() {
        return out;
    }
    for c in chunks {
        let [a, b] = (size << 3).to_be_bytes();
        out.push(RtpPayload::new(&[0, 16, a, b], data.slice_ref(c)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{AudioConfig, VideoConfig};

    fn avcc(nals: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    /// RFC 6184 depacketiser: single NAL, STAP-A, FU-A.
    fn depack_h264(payloads: &[Bytes]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            match p[0] & 0x1f {
                24 => {
                    let mut r = &p[1..];
                    while r.len() >= 2 {
                        let n = u16::from_be_bytes([r[0], r[1]]) as usize;
                        out.push(r[2..2 + n].to_vec());
                        r = &r[2 + n..];
                    }
                    assert!(r.is_empty());
                }
                28 => {
                    let (s, e) = (p[1] & 0x80 != 0, p[1] & 0x40 != 0);
                    if s {
                        assert!(fu.is_none());
                        fu = Some(vec![(p[0] & 0xe0) | (p[1] & 0x1f)]);
                    }
                    fu.as_mut().expect("FU start").extend_from_slice(&p[2..]);
                    if e {
                        out.push(fu.take().unwrap());
                    }
                }
                _ => out.push(p.to_vec()),
            }
        }
        assert!(fu.is_none());
        out
    }

    /// RFC 7798 depacketiser: single NAL, AP (48), FU (49).
    fn depack_h265(payloads: &[Bytes]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            match (p[0] >> 1) & 0x3f {
                48 => {
                    let mut r = &p[2..];
                    while r.len() >= 2 {
                        let n = u16::from_be_bytes([r[0], r[1]]) as usize;
                        out.push(r[2..2 + n].to_vec());
                        r = &r[2 + n..];
                    }
                    assert!(r.is_empty());
                }
                49 => {
                    let (s, e) = (p[2] & 0x80 != 0, p[2] & 0x40 != 0);
                    if s {
                        assert!(fu.is_none());
                        fu = Some(vec![(p[0] & 0x81) | ((p[2] & 0x3f) << 1), p[1]]);
                    }
                    fu.as_mut().expect("FU start").extend_from_slice(&p[3..]);
                    if e {
                        out.push(fu.take().unwrap());
                    }
                }
                _ => out.push(p.to_vec()),
            }
        }
        assert!(fu.is_none());
        out
    }

    fn nal(header: &[u8], len: usize, seed: u8) -> Vec<u8> {
        let mut v = header.to_vec();
        v.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        v
    }

    #[test]
    fn h264_round_trips_single_stap_and_fu_within_max_payload() {
        for max in [16usize, 100, 1400] {
            let nals = vec![
                nal(&[0x67], 20, 1),
                nal(&[0x68], 4, 2),
                nal(&[0x06], 10, 3),
                nal(&[0x65], 5000, 4),
                nal(&[0x41], 30, 5),
                nal(&[0x41], 1399, 6),
            ];
            let p = packetize(Codec::H264, &avcc(&nals), max);
            assert!(p.iter().all(|p| p.len() <= max), "max {max}");
            assert_eq!(depack_h264(&p), nals, "max {max}");
            if max == 1400 {
                assert_eq!(p[0][0] & 0x1f, 24, "SPS+PPS+SEI aggregated");
                assert_eq!(p[1][0] & 0x1f, 28, "IDR fragmented");
                assert_eq!(p[1][1] & 0x80, 0x80, "FU start");
            }
            let n = p.len();
            assert!((0..n).filter(|i| marker(Codec::H264, *i, n)).eq([n - 1]));
        }
    }

    /// D181: the cached payloads of a frame reference its data (no second copy of the video in
    /// a GOP cache), and put together they are the contiguous packets.
    #[test]
    fn cached_payload_bodies_are_slices_of_the_frame() {
        let nals = vec![nal(&[0x67], 20, 1), nal(&[0x68], 4, 2), nal(&[0x65], 5000, 4), nal(&[0x41], 900, 5)];
        let data = Bytes::from(avcc(&nals));
        for (codec, d) in [(Codec::H264, data.clone()), (Codec::Aac, data.slice(..700)), (Codec::G711A, data.clone())] {
            let shared = packetize_shared(codec, &d, 400);
            let flat: Vec<Vec<u8>> = shared.iter().map(RtpPayload::to_vec).collect();
            let contiguous: Vec<Vec<u8>> = packetize(codec, &d, 400).iter().map(|b| b.to_vec()).collect();
            assert_eq!(flat, contiguous, "{codec:?}");
            let range = d.as_ptr() as usize..d.as_ptr() as usize + d.len();
            let referenced: usize =
                shared.iter().filter(|p| range.contains(&(p.body.as_ptr() as usize))).map(|p| p.body.len()).sum();
            let copied: usize = shared.iter().map(|p| p.len()).sum::<usize>() - referenced;
            // Only heads and the aggregated parameter sets (H.264: SPS+PPS, 30 bytes) are copied.
            assert!(copied < 400, "{codec:?}: {copied} of {} bytes copied", d.len());
            assert!(referenced >= d.len() - 100, "{codec:?}: {referenced} referenced");
        }
    }

    #[test]
    fn h265_round_trips_single_ap_and_fu_within_max_payload() {
        for max in [16usize, 300, 1400] {
            let nals = vec![
                nal(&[0x40, 0x01], 20, 1),
                nal(&[0x42, 0x01], 40, 2),
                nal(&[0x44, 0x01], 6, 3),
                nal(&[0x26, 0x01], 4000, 4),
                nal(&[0x02, 0x01], 50, 5),
            ];
            let p = packetize(Codec::H265, &avcc(&nals), max);
            assert!(p.iter().all(|p| p.len() <= max), "max {max}");
            assert_eq!(depack_h265(&p), nals, "max {max}");
            if max == 1400 {
                assert_eq!((p[0][0] >> 1) & 0x3f, 48);
                assert_eq!((p[1][0] >> 1) & 0x3f, 49);
                assert_eq!(p[1][2] & 0x3f, 19);
            }
        }
    }

    #[test]
    fn aac_hbr_header_and_fragments() {
        let au: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let p = packetize(Codec::Aac, &au, 1400);
        assert_eq!(p.len(), 1);
        assert_eq!(&p[0][..4], &[0x00, 0x10, (300u16 << 3 >> 8) as u8, (300u16 << 3) as u8]);
        assert_eq!(&p[0][4..], &au[..]);
        assert!(marker(Codec::Aac, 0, 1));
        let p = packetize(Codec::Aac, &au, 100);
        assert!(p.iter().all(|p| p.len() <= 100));
        let mut joined = Vec::new();
        for x in &p {
            assert_eq!(u16::from_be_bytes([x[2], x[3]]) >> 3, 300);
            joined.extend_from_slice(&x[4..]);
        }
        assert_eq!(joined, au);
    }

    #[test]
    fn g711_splits_at_max_payload_with_markers_and_timestamps() {
        let data = vec![0xd5u8; 1000];
        let p = packetize(Codec::G711A, &data, 400);
        assert_eq!(p.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![400, 400, 200]);
        assert!((0..3).all(|i| marker(Codec::G711A, i, 3)));
        assert_eq!(timestamp_offset(Codec::G711A, 800, 1), 800);
    }

    #[test]
    fn sdp_sections() {
        let v = CodecConfig::Video(VideoConfig {
            sps: Bytes::from_static(&[0x67, 0x64, 0x00, 0x1e, 0xac]),
            pps: Bytes::from_static(&[0x68, 0xee]),
            width: 352,
            height: 288,
            ..Default::default()
        });
        let s = sdp_media(Codec::H264, &v, "trackID=0");
        assert!(s.contains("a=fmtp:96 packetization-mode=1;profile-level-id=64001E;sprop-parameter-sets=Z2QAHqw=,aO4="));
        let a = CodecConfig::Audio(AudioConfig { sample_rate: 16000, channels: 1, asc: None });
        assert!(sdp_media(Codec::G711A, &a, "trackID=1").contains("a=rtpmap:97 PCMA/16000\r\n"));
        let a8 = CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None });
        assert!(sdp_media(Codec::G711U, &a8, "trackID=1").starts_with("m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000"));
        let aac = CodecConfig::Audio(AudioConfig {
            sample_rate: 16000,
            channels: 1,
            asc: Some(Bytes::from_static(&[0x14, 0x08])),
        });
        assert!(sdp_media(Codec::Aac, &aac, "trackID=1").contains("MPEG4-GENERIC/16000/1\r\n"));
        assert!(sdp_media(Codec::Aac, &aac, "trackID=1").contains(";config=1408\r\n"));
    }

    #[test]
    fn rtcp_sr_layout() {
        let sr = rtcp_sender_report(0x01020304, ntp_from_unix_micros(1_500_000), 90000, 10, 1000);
        assert_eq!(&sr[..4], &[0x80, 200, 0, 6]);
        assert_eq!(u32::from_be_bytes([sr[8], sr[9], sr[10], sr[11]]), 2_208_988_801);
        assert_eq!(u32::from_be_bytes([sr[12], sr[13], sr[14], sr[15]]), 1 << 31);
    }
}
