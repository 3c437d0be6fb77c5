//! H.264 NAL types, SPS parsing (via `h264-reader`) and access-unit boundary detection.
use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::rbsp::{decode_nal, BitReader};

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

#[inline]
pub fn nal_type(header: u8) -> u8 {
    header & 0x1F
}

/// Slice NAL types (non-IDR, partition A, IDR).
#[inline]
pub fn is_vcl(t: u8) -> bool {
    matches!(t, 1 | 2 | 5)
}

/// Whether a NAL starts a new access unit, given whether the pending AU already has a slice.
/// H.264 §7.4.1.2.3: AUD, SPS, PPS, SEI and types 14..=18 after a slice start a new AU; so does
/// a slice whose first_mb_in_slice is 0 (ue(v) == 0 is the single bit `1`).
/// `nal` is the NAL starting at its header byte; at least 2 bytes are needed for slices.
pub fn starts_au(nal: &[u8], au_has_vcl: bool) -> bool {
    let Some(&h) = nal.first() else { return false };
    let t = nal_type(h);
    if !au_has_vcl {
        return false;
    }
    match t {
        6..=9 | 14..=18 => true,
        1 | 2 | 5 => nal.get(1).is_some_and(|b| b & 0x80 != 0),
        _ => false,
    }
}

/// What the gateway needs from an SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub width: u32,
    pub height: u32,
    pub profile: u8,
    pub level: u8,
}

/// Parses an SPS NAL (starting with its header byte `0x67`-like). `None` if it is not a valid SPS.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if nal.len() < 4 || nal_type(nal[0]) != NAL_SPS || nal[0] & 0x80 != 0 {
        return None;
    }
    let rbsp = decode_nal(nal).ok()?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])).ok()?;
    let (width, height) = sps.pixel_dimensions().ok()?;
    Some(SpsInfo { width, height, profile: sps.profile_idc.into(), level: sps.level_idc })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS of the synthetic fixtures (x264, Main, 640x360), copied from h264_g711a_8k.ps.
    pub const FIXTURE_SPS: &[u8] = &[
        0x67, 0x4d, 0x40, 0x1e, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00,
        0x03, 0x00, 0xc8, 0x3c, 0x58, 0xba, 0x80,
    ];

    #[test]
    fn parses_fixture_sps() {
        let info = parse_sps(FIXTURE_SPS).expect("sps");
        assert_eq!((info.width, info.height), (640, 360));
        assert_eq!(info.profile, 77);
        assert_eq!(info.level, 30);
        assert!(parse_sps(&[0x67, 0xff]).is_none());
        assert!(parse_sps(&[0x68, 0xee, 0x3c, 0x80]).is_none());
    }

    #[test]
    fn au_boundaries() {
        assert!(!starts_au(&[0x65, 0x88], false));
        assert!(starts_au(&[0x41, 0x9a], true)); // first_mb == 0
        assert!(!starts_au(&[0x41, 0x1a], true)); // second slice of the picture
        assert!(starts_au(&[0x09, 0xf0], true));
        assert!(starts_au(&[0x67], true));
        assert!(!starts_au(&[0x0c], true)); // filler data
        assert!(!starts_au(&[0x41], true)); // header byte only: not decidable -> no
    }
}
