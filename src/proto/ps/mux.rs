//! PS muxer (sans-IO): one MPEG-2 pack per access unit / audio frame, laid out the way GB28181
//! cameras lay it out (docs/gb28181.md §7), plus an RTP packetizer for the result.
//!
//! ```text
//! keyframe / first pack:  [pack hdr 14][system hdr 0xBB][PSM 0xBC][PES 0xE0|0xC0 ...]
//! otherwise:              [pack hdr 14][PES ...]
//! ```
use bytes::Bytes;

use crate::frame::{Codec, MediaKind};

/// Largest PES payload we write. Cameras stay well below the 65,535-byte PES length limit.
pub const MAX_PES_PAYLOAD: usize = 65_000;

/// program_mux_rate and rate_bound, in units of 50 B/s. Cameras write a fixed 0x3FFF.
const MUX_RATE: u32 = 0x3FFF;

const PTS_MASK: i64 = (1 << 33) - 1;

pub const VIDEO_STREAM_ID: u8 = 0xE0;
pub const AUDIO_STREAM_ID: u8 = 0xC0;

/// PSM stream_type for a codec (GB/T 28181 values; 0x0F is AAC in ADTS).
pub fn stream_type(codec: Codec) -> u8 {
    match codec {
        Codec::H264 => 0x1B,
        Codec::H265 => 0x24,
        Codec::G711A => 0x90,
        Codec::G711U => 0x91,
        Codec::Aac => 0x0F,
    }
}

/// A GB28181-style PS muxer. Holds only the configured streams and whether a pack was written.
#[derive(Debug, Clone)]
pub struct PsMuxer {
    video: Option<Codec>,
    audio: Option<Codec>,
    first: bool,
}

impl PsMuxer {
    /// video: Some(Codec::H264|H265); audio: Some(Codec::G711A|G711U|Aac) (AAC input is ADTS).
    /// A codec of the wrong kind is ignored, so the PSM never lists e.g. G.711 as a video stream.
    pub fn new(video: Option<Codec>, audio: Option<Codec>) -> Self {
        PsMuxer {
            video: video.filter(|c| c.kind() == MediaKind::Video),
            audio: audio.filter(|c| c.kind() == MediaKind::Audio),
            first: true,
        }
    }

    /// Appends one pack carrying one access unit / audio frame to `out`.
    ///
    /// `data` is Annex B for video (AUDs kept as given), raw bytes for G.711, ADTS for AAC.
    /// `pts`/`dts` are 90 kHz and written modulo 2^33; SCR = dts.
    pub fn write_frame(&mut self, codec: Codec, pts: i64, dts: i64, keyframe: bool, data: &[u8], out: &mut Vec<u8>) {
        let is_video = codec.kind() == MediaKind::Video;
        write_pack_header(out, dts);
        // Decoders joining mid-stream need the PSM at each random-access point.
        if self.first || (is_video && keyframe) {
            self.write_system_header(out);
            self.write_psm(out);
        }
        self.first = false;
        let stream_id = if is_video { VIDEO_STREAM_ID } else { AUDIO_STREAM_ID };
        write_pes(out, stream_id, pts, dts, data);
    }

    fn write_system_header(&self, out: &mut Vec<u8>) {
        let n = self.video.is_some() as u8 + self.audio.is_some() as u8;
        out.extend_from_slice(&[0, 0, 1, 0xBB]);
        out.extend_from_slice(&(6 + 3 * n as u16).to_be_bytes());
        // marker, rate_bound(22), marker
        let rb = (1 << 23) | (MUX_RATE << 1) | 1;
        out.extend_from_slice(&rb.to_be_bytes()[1..]);
        // audio_bound(6) fixed_flag CSPS_flag
        out.push((self.audio.is_some() as u8) << 2);
        // system_audio_lock, system_video_lock, marker, video_bound(5)
        out.push(0xE0 | self.video.is_some() as u8);
        // packet_rate_restriction_flag=0, reserved 7 bits
        out.push(0x7F);
        if self.video.is_some() {
            // '11', P-STD_buffer_bound_scale=1, size_bound=1024 (x 1024 B)
            out.extend_from_slice(&[VIDEO_STREAM_ID, 0xE4, 0x00]);
        }
        if self.audio.is_some() {
            // '11', scale=0, size_bound=64 (x 128 B)
            out.extend_from_slice(&[AUDIO_STREAM_ID, 0xC0, 0x40]);
        }
    }

    fn write_psm(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let mut es_map = Vec::with_capacity(8);
        for (codec, id) in [(self.video, VIDEO_STREAM_ID), (self.audio, AUDIO_STREAM_ID)] {
            if let Some(c) = codec {
                es_map.extend_from_slice(&[stream_type(c), id, 0, 0]);
            }
        }
        out.extend_from_slice(&[0, 0, 1, 0xBC]);
        // cni..ps_info_length(4) + es_map_length(2) + es_map + CRC(4)
        out.extend_from_slice(&(10 + es_map.len() as u16).to_be_bytes());
        // current_next_indicator=1, single_extension_stream_flag=0, reserved, version 0;
        // reserved(7) + marker; program_stream_info_length=0
        out.extend_from_slice(&[0xA0, 0xFF, 0, 0]);
        out.extend_from_slice(&(es_map.len() as u16).to_be_bytes());
        out.extend_from_slice(&es_map);
        let crc = crc32_mpeg2(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
}

/// 14-byte MPEG-2 pack header: SCR = `scr` mod 2^33 (extension 0), mux_rate 0x3FFF, no stuffing.
pub fn write_pack_header(out: &mut Vec<u8>, scr: i64) {
    let s = (scr & PTS_MASK) as u64;
    out.extend_from_slice(&[
        0,
        0,
        1,
        0xBA,
        0x40 | (((s >> 30) & 7) << 3) as u8 | 0x04 | ((s >> 28) & 3) as u8,
        (s >> 20) as u8,
        ((((s >> 15) & 0x1F) << 3) as u8) | 0x04 | ((s >> 13) & 3) as u8,
        (s >> 5) as u8,
        (((s & 0x1F) << 3) as u8) | 0x04, // SCR_ext high bits 0
        0x01,                             // SCR_ext low bits 0, marker
        (MUX_RATE >> 14) as u8,
        (MUX_RATE >> 6) as u8,
        ((MUX_RATE << 2) as u8) | 0x03,
        0xF8, // reserved, stuffing length 0
    ]);
}

/// The 5-byte PTS/DTS field: `prefix` is 0b0010 (PTS only), 0b0011 (PTS before DTS), 0b0001 (DTS).
pub fn encode_timestamp(prefix: u8, ts: i64) -> [u8; 5] {
    let t = (ts & PTS_MASK) as u64;
    [
        (prefix << 4) | (((t >> 30) & 7) << 1) as u8 | 1,
        (t >> 22) as u8,
        (((t >> 15) & 0x7F) << 1) as u8 | 1,
        (t >> 7) as u8,
        ((t & 0x7F) << 1) as u8 | 1,
    ]
}

/// Writes `data` as one or more PES packets; only the first carries PTS (and DTS when it differs).
fn write_pes(out: &mut Vec<u8>, stream_id: u8, pts: i64, dts: i64, data: &[u8]) {
    let with_dts = (pts & PTS_MASK) != (dts & PTS_MASK);
    let mut chunks = data.chunks(MAX_PES_PAYLOAD);
    let first = chunks.next().unwrap_or(&[]);
    let mut hdr = [0u8; 10];
    let hdr_len = if with_dts {
        hdr[..5].copy_from_slice(&encode_timestamp(0b0011, pts));
        hdr[5..].copy_from_slice(&encode_timestamp(0b0001, dts));
        10
    } else {
        hdr[..5].copy_from_slice(&encode_timestamp(0b0010, pts));
        5
    };
    let flags = if with_dts { 0xC0 } else { 0x80 };
    // 0x84: '10' marker bits + data_alignment_indicator: the PES starts an access unit.
    write_pes_packet(out, stream_id, 0x84, flags, &hdr[..hdr_len], first);
    for chunk in chunks {
        write_pes_packet(out, stream_id, 0x80, 0x00, &[], chunk);
    }
}

fn write_pes_packet(out: &mut Vec<u8>, stream_id: u8, b6: u8, b7: u8, hdr: &[u8], payload: &[u8]) {
    out.extend_from_slice(&[0, 0, 1, stream_id]);
    let len = 3 + hdr.len() + payload.len();
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[b6, b7, hdr.len() as u8]);
    out.extend_from_slice(hdr);
    out.extend_from_slice(payload);
}

/// CRC-32/MPEG-2: poly 0x04C11DB7, init 0xFFFFFFFF, not reflected, no final xor.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04C1_1DB7 } else { crc << 1 };
        }
    }
    crc
}

/// Splits PS bytes into RTP packets (GB28181: `max_payload` 1400), marker on the last one.
#[derive(Debug, Clone)]
pub struct RtpPacketizer {
    pub ssrc: u32,
    pub seq: u16,
    pub payload_type: u8,
    pub max_payload: usize,
}

impl RtpPacketizer {
    /// Appends one packet per `max_payload` chunk of `ps` to `out`, all with `timestamp`.
    /// An empty `ps` yields no packets.
    pub fn packetize(&mut self, ps: &[u8], timestamp: u32, out: &mut Vec<Bytes>) {
        let max = self.max_payload.max(1);
        let n = ps.len().div_ceil(max);
        for (i, chunk) in ps.chunks(max).enumerate() {
            let mut pkt = Vec::with_capacity(12 + chunk.len());
            crate::proto::rtp::write_packet(
                &mut pkt,
                self.payload_type,
                i + 1 == n,
                self.seq,
                timestamp,
                self.ssrc,
                chunk,
            );
            self.seq = self.seq.wrapping_add(1);
            out.push(Bytes::from(pkt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtp::RtpPacket;

    fn decode_ts(b: &[u8]) -> u64 {
        (((b[0] as u64 >> 1) & 7) << 30)
            | ((b[1] as u64) << 22)
            | ((b[2] as u64 >> 1) << 15)
            | ((b[3] as u64) << 7)
            | (b[4] as u64 >> 1)
    }

    fn decode_scr(h: &[u8]) -> u64 {
        let b = &h[4..10];
        (((b[0] as u64 >> 3) & 7) << 30)
            | ((b[0] as u64 & 3) << 28)
            | ((b[1] as u64) << 20)
            | ((b[2] as u64 >> 3) << 15)
            | ((b[2] as u64 & 3) << 13)
            | ((b[3] as u64) << 5)
            | (b[4] as u64 >> 3)
    }

    #[test]
    fn pack_header_layout_and_scr() {
        let mut out = Vec::new();
        write_pack_header(&mut out, 0);
        // Byte-identical to the reference fixtures' first pack header.
        assert_eq!(out, [0, 0, 1, 0xBA, 0x44, 0, 4, 0, 4, 1, 0, 0xFF, 0xFF, 0xF8]);
        for scr in [1i64, 896_400, 0x1_2345_6789, (1 << 33) - 1, (1 << 33) + 5, -1] {
            let mut out = Vec::new();
            write_pack_header(&mut out, scr);
            assert_eq!(out.len(), 14);
            assert_eq!(out[4] & 0xC4, 0x44, "'01' prefix and marker");
            assert_eq!(out[6] & 0x04, 0x04);
            assert_eq!(out[8] & 0x04, 0x04);
            assert_eq!(out[9] & 0x01, 0x01);
            assert_eq!(out[12] & 0x03, 0x03);
            assert_eq!(out[13] & 0x07, 0, "no stuffing");
            assert_eq!(decode_scr(&out), (scr & PTS_MASK) as u64);
        }
        // The docs' example: SCR 896400 encodes as 44 00 DD 6C 84 01 (doc's MS writer, ext 0).
        let mut out = Vec::new();
        write_pack_header(&mut out, 896_400);
        assert_eq!(&out[4..10], &[0x44, 0x00, 0xDD, 0x6C, 0x84, 0x01]);
    }

    #[test]
    fn pts_encoding_and_wrap() {
        // docs §7: PTS 900000 = 21 00 37 77 41
        assert_eq!(encode_timestamp(2, 900_000), [0x21, 0x00, 0x37, 0x77, 0x41]);
        assert_eq!(encode_timestamp(2, 0), [0x21, 0, 1, 0, 1]);
        assert_eq!(decode_ts(&encode_timestamp(2, (1 << 33) - 1)), (1 << 33) - 1);
        assert_eq!(encode_timestamp(2, 1 << 33), encode_timestamp(2, 0));
        assert_eq!(encode_timestamp(2, (1 << 33) + 3600), encode_timestamp(2, 3600));
        assert_eq!(decode_ts(&encode_timestamp(2, -3600)), (1 << 33) - 3600);
    }

    #[test]
    fn psm_matches_reference_fixture_bytes() {
        // First 60 bytes of shared/fixtures/synthetic/h264_g711a_8k.ps (pack, system header, PSM, PES hdr).
        let reference: [u8; 52] = [
            0x00, 0x00, 0x01, 0xba, 0x44, 0x00, 0x04, 0x00, 0x04, 0x01, 0x00, 0xff, 0xff, 0xf8, 0x00, 0x00, 0x01, 0xbb,
            0x00, 0x0c, 0x80, 0x7f, 0xff, 0x04, 0xe1, 0x7f, 0xe0, 0xe4, 0x00, 0xc0, 0xc0, 0x40, 0x00, 0x00, 0x01, 0xbc,
            0x00, 0x12, 0xa0, 0xff, 0x00, 0x00, 0x00, 0x08, 0x1b, 0xe0, 0x00, 0x00, 0x90, 0xc0, 0x00, 0x00,
        ];
        let mut m = PsMuxer::new(Some(Codec::H264), Some(Codec::G711A));
        let mut out = Vec::new();
        m.write_frame(Codec::H264, 0, 0, true, &[0, 0, 1, 0x06], &mut out);
        assert_eq!(&out[..52], &reference[..]);
        assert_eq!(&out[52..56], &[0x4b, 0xfc, 0xc7, 0x50], "PSM CRC");
        assert_eq!(&out[56..69], &[0, 0, 1, 0xE0, 0, 12, 0x84, 0x80, 5, 0x21, 0, 1, 0]);
        // CRC over the PSM including its CRC is 0 for CRC-32/MPEG-2.
        assert_eq!(crc32_mpeg2(&out[32..56]), 0);
        // Known check value of CRC-32/MPEG-2.
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);

        // Audio-only and H.265+AAC PSMs as in the other reference fixtures.
        let mut m = PsMuxer::new(None, Some(Codec::G711A));
        let mut out = Vec::new();
        m.write_frame(Codec::G711A, 0, 0, true, &[0xD5; 4], &mut out);
        assert_eq!(&out[14..32], &[0, 0, 1, 0xbb, 0, 9, 0x80, 0x7f, 0xff, 4, 0xe0, 0x7f, 0xc0, 0xc0, 0x40, 0, 0, 1]);
        assert_eq!(&out[41..49], &[0x90, 0xc0, 0, 0, 0x4c, 0xb9, 0x95, 0xfc]);
        let mut m = PsMuxer::new(Some(Codec::H265), Some(Codec::Aac));
        let mut out = Vec::new();
        m.write_frame(Codec::Aac, 0, 0, true, &[0xFF, 0xF1], &mut out);
        assert_eq!(&out[44..56], &[0x24, 0xe0, 0, 0, 0x0f, 0xc0, 0, 0, 0x5f, 0xe6, 0x92, 0x9a]);
    }

    #[test]
    fn psm_only_on_first_pack_and_video_keyframes() {
        let mut m = PsMuxer::new(Some(Codec::H264), Some(Codec::G711U));
        let count = |b: &[u8], id: u8| b.windows(4).filter(|w| w == &[0, 0, 1, id]).count();
        let mut out = Vec::new();
        m.write_frame(Codec::G711U, 0, 0, true, &[0x7F; 320], &mut out);
        assert_eq!(count(&out, 0xBC), 1);
        let mut out = Vec::new();
        m.write_frame(Codec::G711U, 3600, 3600, true, &[0x7F; 320], &mut out);
        assert_eq!((count(&out, 0xBB), count(&out, 0xBC), count(&out, 0xC0)), (0, 0, 1));
        let mut out = Vec::new();
        m.write_frame(Codec::H264, 3600, 3600, false, &[0, 0, 0, 1, 0x41], &mut out);
        assert_eq!((count(&out, 0xBC), count(&out, 0xE0)), (0, 1));
        let mut out = Vec::new();
        m.write_frame(Codec::H264, 7200, 7200, true, &[0, 0, 0, 1, 0x65], &mut out);
        assert_eq!((count(&out, 0xBB), count(&out, 0xBC)), (1, 1));
    }

    #[test]
    fn large_frame_splits_into_pes_with_pts_on_first_only() {
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
        let mut m = PsMuxer::new(Some(Codec::H265), None);
        let mut out = Vec::new();
        m.write_frame(Codec::H265, 7200, 3600, false, &data, &mut out);
        // pack 14, sys hdr 6+9, PSM 6+14 (first pack), then PES.
        let mut pos = 14 + 15 + 20;
        let mut payload = Vec::new();
        let mut pes = Vec::new();
        while pos < out.len() {
            assert_eq!(&out[pos..pos + 4], &[0, 0, 1, 0xE0]);
            let len = u16::from_be_bytes([out[pos + 4], out[pos + 5]]) as usize;
            let hl = out[pos + 8] as usize;
            pes.push((out[pos + 6], out[pos + 7], hl));
            if out[pos + 7] & 0x80 != 0 {
                assert_eq!(decode_ts(&out[pos + 9..]), 7200);
                assert_eq!(out[pos + 9] >> 4, 3);
                assert_eq!(decode_ts(&out[pos + 14..]), 3600);
                assert_eq!(out[pos + 14] >> 4, 1);
            }
            payload.extend_from_slice(&out[pos + 9 + hl..pos + 6 + len]);
            assert!(len - 3 - hl <= MAX_PES_PAYLOAD);
            pos += 6 + len;
        }
        assert_eq!(pos, out.len());
        assert_eq!(payload, data);
        assert_eq!(pes, vec![(0x84, 0xC0, 10), (0x80, 0, 0), (0x80, 0, 0)]);
        // SCR = dts
        assert_eq!(decode_scr(&out), 3600);
    }

    #[test]
    fn packetizer_sizes_marker_and_seq_wrap() {
        let mut p = RtpPacketizer { ssrc: 0x05F5E101, seq: 65534, payload_type: 96, max_payload: 1400 };
        let ps: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        p.packetize(&ps, 0xFFFF_FFF0, &mut out);
        let pkts: Vec<RtpPacket> = out.iter().map(|b| RtpPacket::parse(b.clone()).unwrap()).collect();
        assert_eq!(pkts.iter().map(|p| p.payload.len()).collect::<Vec<_>>(), vec![1400, 1400, 200]);
        assert_eq!(pkts.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![65534, 65535, 0]);
        assert_eq!(pkts.iter().map(|p| p.marker).collect::<Vec<_>>(), vec![false, false, true]);
        assert!(pkts.iter().all(|p| p.timestamp == 0xFFFF_FFF0 && p.ssrc == 0x05F5E101 && p.payload_type == 96));
        assert_eq!(pkts.iter().flat_map(|p| p.payload.to_vec()).collect::<Vec<_>>(), ps);
        assert_eq!(p.seq, 1);
        // Exactly max_payload: one packet with the marker.
        let mut out = Vec::new();
        p.packetize(&ps[..1400], 1, &mut out);
        assert_eq!(out.len(), 1);
        assert!(RtpPacket::parse(out[0].clone()).unwrap().marker);
        let mut out = Vec::new();
        p.packetize(&[], 1, &mut out);
        assert!(out.is_empty());
    }
}
