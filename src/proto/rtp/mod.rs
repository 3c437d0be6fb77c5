//! RTP (RFC 3550): packet parsing, reordering with loss accounting, and TCP framing (RFC 4571).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! |                           timestamp                           |
//! |           synchronization source (SSRC) identifier            |
//! |            contributing source (CSRC) identifiers (CC x 32)   |
//! |   extension (X=1): profile(16) length(16) + length x 32 bits  |
//! |   payload ...                          | padding (P=1) | count |
//! ```
use bytes::Bytes;

pub mod reorder;
pub mod tcp;

/// A parsed RTP packet. `payload` is a zero-copy slice of the datagram, padding removed.
#[derive(Debug, Clone)]
pub struct RtpPacket {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet of {len} bytes is shorter than its header ({needed} bytes)")]
    TooShort { len: usize, needed: usize },
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTP padding count {padding} exceeds the {available} bytes after the header")]
    BadPadding { padding: usize, available: usize },
    #[error("RTCP packet (payload type {0}) on the RTP port")]
    Rtcp(u8),
}

impl RtpPacket {
    /// Parses one RTP packet, including CSRC list, header extension and padding.
    pub fn parse(buf: Bytes) -> Result<RtpPacket, RtpError> {
        let len = buf.len();
        if len < 12 {
            return Err(RtpError::TooShort { len, needed: 12 });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let b1 = buf[1];
        // RTCP SR/RR/SDES/BYE/APP (200..=204) share the port in some camera stacks (RFC 5761).
        if (200..=204).contains(&b1) {
            return Err(RtpError::Rtcp(b1));
        }
        let csrc_count = (b0 & 0x0f) as usize;
        let mut offset = 12 + 4 * csrc_count;
        if len < offset {
            return Err(RtpError::TooShort { len, needed: offset });
        }
        if b0 & 0x10 != 0 {
            if len < offset + 4 {
                return Err(RtpError::TooShort { len, needed: offset + 4 });
            }
            let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]) as usize;
            offset += 4 + 4 * words;
            if len < offset {
                return Err(RtpError::TooShort { len, needed: offset });
            }
        }
        let mut end = len;
        if b0 & 0x20 != 0 {
            let padding = buf[len - 1] as usize;
            if padding == 0 || padding > len - offset {
                return Err(RtpError::BadPadding { padding, available: len - offset });
            }
            end -= padding;
        }
        Ok(RtpPacket {
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            seq: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7f,
            payload: buf.slice(offset..end),
        })
    }

    /// Peeks the SSRC of a datagram without a full parse (used to route datagrams to streams).
    pub fn peek_ssrc(buf: &[u8]) -> Option<u32> {
        if buf.len() < 12 || buf[0] >> 6 != 2 {
            return None;
        }
        Some(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]))
    }
}

/// Writes an RTP header + payload (no CSRC, no extension). Used by the simulator and tests.
pub fn write_packet(out: &mut Vec<u8>, pt: u8, marker: bool, seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) {
    out.push(0x80);
    out.push(if marker { 0x80 } else { 0 } | (pt & 0x7f));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csrc_extension_and_padding() {
        // V=2 P=1 X=1 CC=2, M=1 PT=96, seq 0xfffe, ts 0x01020304, ssrc 0x05F5E101
        let mut p = vec![0xB2, 0xE0, 0xff, 0xfe, 1, 2, 3, 4, 0x05, 0xF5, 0xE1, 0x01];
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]); // extension, 1 word
        p.extend_from_slice(b"payload");
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let pkt = RtpPacket::parse(Bytes::from(p)).unwrap();
        assert_eq!(pkt.ssrc, 0x05F5E101);
        assert_eq!(pkt.seq, 0xfffe);
        assert_eq!(pkt.timestamp, 0x01020304);
        assert!(pkt.marker);
        assert_eq!(pkt.payload_type, 96);
        assert_eq!(&pkt.payload[..], b"payload");
    }

    #[test]
    fn rejects_truncated_and_bad_input() {
        assert!(matches!(RtpPacket::parse(Bytes::from_static(&[0x80, 96, 0])), Err(RtpError::TooShort { .. })));
        let mut p = vec![0x8F, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[0; 8]); // claims 15 CSRCs, has 2
        assert!(matches!(RtpPacket::parse(Bytes::from(p)), Err(RtpError::TooShort { .. })));
        assert!(matches!(RtpPacket::parse(Bytes::from_static(&[0x40; 20])), Err(RtpError::BadVersion(1))));
        let mut p = vec![0xA0, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 200];
        assert!(matches!(RtpPacket::parse(Bytes::from(p.clone())), Err(RtpError::BadPadding { .. })));
        p[1] = 200;
        assert!(matches!(RtpPacket::parse(Bytes::from(p)), Err(RtpError::Rtcp(200))));
    }

    #[test]
    fn write_then_parse_round_trips() {
        let mut out = Vec::new();
        write_packet(&mut out, 96, true, 7, 3600, 0x0BEBC201, b"abc");
        let pkt = RtpPacket::parse(Bytes::from(out)).unwrap();
        assert_eq!((pkt.seq, pkt.timestamp, pkt.ssrc, pkt.marker), (7, 3600, 0x0BEBC201, true));
        assert_eq!(&pkt.payload[..], b"abc");
    }
}
