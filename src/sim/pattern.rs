//! A synthetic test pattern for `gbgate sim --media synthetic`: moving colour bars coded as H.264
//! I_PCM macroblocks (raw samples, no encoder needed), muxed into PS by gbgate's own `PsMuxer`
//! and split into RTP by its `RtpPacketizer`. Every frame is an IDR, so a player starts at once.
use bytes::Bytes;

use crate::media::frame::Codec;
use crate::proto::ps::mux::{PsMuxer, RtpPacketizer};

pub const WIDTH_MB: u32 = 8;
pub const HEIGHT_MB: u32 = 6;
pub const FPS: u32 = 25;

/// MSB-first bit writer with Exp-Golomb codes.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn new() -> Bits {
        Bits { out: Vec::new(), acc: 0, n: 0 }
    }
    fn put(&mut self, bits: u32, v: u64) {
        for i in (0..bits).rev() {
            self.acc = (self.acc << 1) | ((v >> i) & 1);
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                self.acc = 0;
                self.n = 0;
            }
        }
    }
    fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        self.put(len - 1, 0);
        self.put(len, x);
    }
    fn se(&mut self, v: i32) {
        self.ue(if v > 0 { (2 * v - 1) as u32 } else { (-2 * v) as u32 });
    }
    fn align_zero(&mut self) {
        while self.n != 0 {
            self.put(1, 0);
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        debug_assert_eq!(self.n, 0);
        self.out.extend_from_slice(b);
    }
    fn trailing(mut self) -> Vec<u8> {
        self.put(1, 1);
        self.align_zero();
        self.out
    }
}

/// Adds emulation-prevention bytes and an Annex B start code.
fn nal(header: u8, rbsp: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0, 1, header]);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

fn sps_pps(out: &mut Vec<u8>) {
    let mut s = Bits::new();
    s.put(8, 66); // Baseline
    s.put(8, 0xC0); // constraint_set0/1
    s.put(8, 30); // level 3.0
    s.ue(0); // sps id
    s.ue(0); // log2_max_frame_num - 4
    s.ue(2); // pic_order_cnt_type 2
    s.ue(1); // max_num_ref_frames
    s.put(1, 0);
    s.ue(WIDTH_MB - 1);
    s.ue(HEIGHT_MB - 1);
    s.put(1, 1); // frame_mbs_only
    s.put(1, 1); // direct_8x8_inference
    s.put(1, 0); // no cropping
    s.put(1, 0); // no VUI
    nal(0x67, &s.trailing(), out);
    let mut p = Bits::new();
    p.ue(0);
    p.ue(0);
    p.put(1, 0); // CAVLC
    p.put(1, 0);
    p.ue(0); // one slice group
    p.ue(0);
    p.ue(0);
    p.put(1, 0);
    p.put(2, 0);
    p.se(0);
    p.se(0);
    p.se(0);
    p.put(1, 1); // deblocking_filter_control_present
    p.put(1, 0);
    p.put(1, 0);
    nal(0x68, &p.trailing(), out);
}

/// One IDR access unit (SPS, PPS, slice) of frame `index`, Annex B.
pub fn frame(index: u32) -> Vec<u8> {
    let mut out = Vec::new();
    sps_pps(&mut out);
    let mut s = Bits::new();
    s.ue(0); // first_mb_in_slice
    s.ue(7); // I slice (all)
    s.ue(0); // pps id
    s.put(4, 0); // frame_num
    s.ue(index % 2); // idr_pic_id differs between consecutive IDRs
    s.put(1, 0); // no_output_of_prior_pics
    s.put(1, 0); // long_term_reference
    s.se(0); // slice_qp_delta
    s.ue(1); // deblocking off
    let shift = index * 2;
    for mby in 0..HEIGHT_MB {
        for mbx in 0..WIDTH_MB {
            s.ue(25); // I_PCM
            s.align_zero();
            let mut mb = [0u8; 384];
            for y in 0..16u32 {
                for x in 0..16u32 {
                    let px = mbx * 16 + x + shift;
                    // Bars 16 px wide, sliding right; a darker band per MB row.
                    let luma = 40 + ((px / 16) % 8) * 25 - (mby * 16 + y) / 8;
                    mb[(y * 16 + x) as usize] = luma.clamp(16, 235) as u8;
                }
            }
            let (cb, cr) = (64 + ((mbx + shift / 16) % 8) as u8 * 16, 192 - ((mbx + shift / 16) % 8) as u8 * 16);
            mb[256..320].fill(cb);
            mb[320..384].fill(cr);
            s.bytes(&mb);
        }
    }
    nal(0x65, &s.trailing(), &mut out);
    out
}

/// `seconds` of the pattern as RTP packets with their 90 kHz offsets (PS, PT 96).
pub fn rtp_packets(seconds: u32) -> Vec<(u32, Bytes)> {
    let mut mux = PsMuxer::new(Some(Codec::H264), None);
    let mut rtp = RtpPacketizer { ssrc: 0, seq: 0, payload_type: 96, max_payload: 1400 };
    let step = 90_000 / FPS;
    let mut out = Vec::new();
    for i in 0..seconds * FPS {
        let ts = i * step;
        let mut ps = Vec::new();
        mux.write_frame(Codec::H264, i64::from(ts), i64::from(ts), true, &frame(i), &mut ps);
        let mut pkts = Vec::new();
        rtp.packetize(&ps, ts, &mut pkts);
        out.extend(pkts.into_iter().map(|p| (ts, p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h264;
    use crate::media::ingest::StreamIngest;
    use crate::proto::rtp::RtpPacket;

    #[test]
    fn pattern_demuxes_into_keyframes_with_its_resolution() {
        let sps = frame(0);
        let sps_nal = crate::codec::nal::annexb_nals(&sps).next().unwrap();
        let info = h264::parse_sps(sps_nal).unwrap();
        assert_eq!((info.width, info.height), (WIDTH_MB * 16, HEIGHT_MB * 16));
        let mut ingest = StreamIngest::new(64, 100_000);
        let mut frames = Vec::new();
        for (i, (_, p)) in rtp_packets(1).into_iter().enumerate() {
            ingest.push_rtp(RtpPacket::parse(p).unwrap(), i as u64 * 1000, &mut frames);
        }
        ingest.finish(&mut frames);
        assert!(frames.len() >= 24, "{}", frames.len());
        assert!(frames.iter().all(|f| f.keyframe));
    }
}
