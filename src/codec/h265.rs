//! H.265 NAL types, SPS parsing and access-unit boundary detection.
//!
//! The SPS parser is a small hand-written bit reader rather than `scuffle-h265`: we only need the
//! fields up to the conformance window, and scuffle's `cropped_width()` subtracts unchecked
//! (a crafted SPS can overflow and panic), which a demuxer fed by cameras must never do.
use super::nal::{unescape_rbsp, BitReader};

pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;
pub const NAL_AUD: u8 = 35;
pub const NAL_PREFIX_SEI: u8 = 39;

#[inline]
pub fn nal_type(header0: u8) -> u8 {
    (header0 >> 1) & 0x3F
}

#[inline]
pub fn is_vcl(t: u8) -> bool {
    t < 32
}

/// IRAP pictures (BLA/IDR/CRA, 16..=21; 22..23 reserved IRAP) are random-access points.
#[inline]
pub fn is_irap(t: u8) -> bool {
    (16..=23).contains(&t)
}

/// Whether a NAL (from its 2-byte header on) starts a new AU, H.265 §7.4.2.4.4: VPS/SPS/PPS/AUD/
/// prefix SEI/reserved 41..44/unspecified 48..55 after a slice, or a slice with
/// first_slice_segment_in_pic_flag = 1. Needs 3 bytes for slices.
pub fn starts_au(nal: &[u8], au_has_vcl: bool) -> bool {
    let Some(&h) = nal.first() else { return false };
    if !au_has_vcl {
        return false;
    }
    let t = nal_type(h);
    // nuh_layer_id > 0 (layered extensions) belongs to the current AU.
    let layer = nal.get(1).map_or(0, |b| ((h & 1) << 5) | (b >> 3));
    if layer != 0 {
        return false;
    }
    match t {
        0..=31 => nal.get(2).is_some_and(|b| b & 0x80 != 0),
        32..=35 | 39 | 41..=44 | 48..=55 => true,
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub width: u32,
    pub height: u32,
    pub profile: u8,
    pub level: u8,
    /// `sps_max_num_reorder_pics` of the highest sub-layer (B-frame reorder depth), if it parsed.
    pub reorder: Option<u32>,
}

/// Bit depths, POC length and sub-layer ordering info (H.265 7.3.2.2.1), after the conformance
/// window: the highest sub-layer's `sps_max_num_reorder_pics`.
fn reorder_pics(r: &mut BitReader, max_sub_layers_minus1: u32) -> Option<u32> {
    r.ue()?; // bit_depth_luma_minus8
    r.ue()?; // bit_depth_chroma_minus8
    r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
    let all_layers = r.bit()? == 1;
    let mut reorder = 0;
    for _ in if all_layers { 0 } else { max_sub_layers_minus1 }..=max_sub_layers_minus1 {
        r.ue()?; // sps_max_dec_pic_buffering_minus1
        reorder = r.ue()?;
        r.ue()?; // sps_max_latency_increase_plus1
    }
    (reorder <= 16).then_some(reorder)
}

fn skip_profile_tier_level(r: &mut BitReader, max_sub_layers_minus1: u32) -> Option<(u8, u8)> {
    // general_profile_space(2) tier(1) profile_idc(5)
    r.skip(3)?;
    let profile = r.bits(5)? as u8;
    // compatibility flags(32) + progressive/interlaced/non-packed/frame-only(4) + 43 + 1 bits
    r.skip(32 + 4 + 43 + 1)?;
    let level = r.bits(8)? as u8;
    let mut sub_profile = [false; 8];
    let mut sub_level = [false; 8];
    for i in 0..max_sub_layers_minus1 as usize {
        sub_profile[i] = r.bit()? == 1;
        sub_level[i] = r.bit()? == 1;
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.skip(2)?;
        }
    }
    for i in 0..max_sub_layers_minus1 as usize {
        if sub_profile[i] {
            r.skip(88)?;
        }
        if sub_level[i] {
            r.skip(8)?;
        }
    }
    Some((profile, level))
}

/// Parses an SPS NAL (from its 2-byte header on). `None` unless it looks like a valid SPS.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if nal.len() < 4 || nal[0] & 0x80 != 0 || nal_type(nal[0]) != NAL_SPS {
        return None;
    }
    let mut rbsp = Vec::new();
    unescape_rbsp(&nal[2..], &mut rbsp);
    let mut r = BitReader::new(&rbsp);
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)?;
    if max_sub_layers_minus1 > 6 {
        return None;
    }
    r.skip(1)?; // temporal_id_nesting
    let (profile, level) = skip_profile_tier_level(&mut r, max_sub_layers_minus1)?;
    if r.ue()? > 15 {
        return None; // sps_seq_parameter_set_id
    }
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc > 3 {
        return None;
    }
    let mut separate_colour_plane = false;
    if chroma_format_idc == 3 {
        separate_colour_plane = r.bit()? == 1;
    }
    let w = r.ue()?;
    let h = r.ue()?;
    if w == 0 || h == 0 || w > 16888 || h > 16888 {
        return None;
    }
    let (mut width, mut height) = (w, h);
    if r.bit()? == 1 {
        let (l, rt, t, b) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let chroma = if separate_colour_plane { 0 } else { chroma_format_idc };
        let (sw, sh) = match chroma {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        width = w.checked_sub(l.checked_add(rt)?.checked_mul(sw)?)?;
        height = h.checked_sub(t.checked_add(b)?.checked_mul(sh)?)?;
    }
    let reorder = reorder_pics(&mut r, max_sub_layers_minus1);
    Some(SpsInfo { width, height, profile, level, reorder })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS of the synthetic H.265 fixtures (x265, Main, 640x360), copied from h265_aac_16k.ps.
    const FIXTURE_SPS: &str = "42010101600000030090000003000003003fa005020171f2e5ba4a4c2f016808000003000800000300c840";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn parses_fixture_sps() {
        let info = parse_sps(&hex(FIXTURE_SPS)).expect("sps");
        assert_eq!((info.width, info.height), (640, 360));
        assert_eq!(info.profile, 1);
        assert_eq!(info.level, 0x3f);
        assert_eq!(info.reorder, Some(0));
        // libx265 defaults (B-frames): ffprobe says has_b_frames=2.
        let b = parse_sps(&hex("42010101600000030090000003000003001ea014207965959a4932bc05a02000000300200000030321"));
        assert_eq!(b.map(|i| (i.width, i.height, i.reorder)), Some((160, 120, Some(2))));
        // truncations never panic
        let full = hex(FIXTURE_SPS);
        for n in 0..full.len() {
            let _ = parse_sps(&full[..n]);
        }
    }

    #[test]
    fn au_boundaries_and_irap() {
        assert!(starts_au(&[0x40, 0x01], true)); // VPS
        assert!(!starts_au(&[0x40, 0x01], false));
        assert!(starts_au(&[0x02, 0x01, 0x80], true)); // TRAIL_R, first slice segment
        assert!(!starts_au(&[0x02, 0x01, 0x40], true));
        assert!(!starts_au(&[0x50, 0x01], true)); // suffix SEI
        assert!(is_irap(nal_type(0x28))); // IDR_N_LP = 20
        assert!(is_irap(nal_type(0x2a))); // CRA = 21
        assert!(!is_irap(nal_type(0x02)));
    }
}
