//! G.711 A-law and µ-law (ITU-T G.711), by table.
//!
//! Hand-written on purpose: decoding is one 256-entry lookup per byte, computed at compile time,
//! which is faster and smaller than going through symphonia's PCM codec (bit-exact with it and
//! with ffmpeg: both use the same reference expansion). The encoders are for test tools.

/// A-law byte to linear 16-bit PCM.
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0f) as i16) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t
    } else {
        -t
    }
}

/// µ-law byte to linear 16-bit PCM.
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let mut t = (((u & 0x0f) as i16) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw { alaw_to_linear(i as u8) } else { ulaw_to_linear(i as u8) };
        i += 1;
    }
    t
}

pub static ALAW: [i16; 256] = table(true);
pub static ULAW: [i16; 256] = table(false);

/// Linear 16-bit PCM to A-law.
pub fn linear_to_alaw(pcm: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut v = i32::from(pcm) >> 3;
    let mask = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = SEG_END.iter().position(|&e| v <= e).unwrap_or(8) as i32;
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut aval = seg << 4;
    aval |= if seg < 2 { (v >> 1) & 0xF } else { (v >> seg) & 0xF };
    (aval ^ mask) as u8
}

/// Linear 16-bit PCM to µ-law.
pub fn linear_to_ulaw(pcm: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    let mut v = i32::from(pcm) >> 2;
    let mask = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = v.min(8159) + (0x84 >> 2);
    let seg = SEG_END.iter().position(|&e| v <= e).unwrap_or(8) as i32;
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    (((seg << 4) | ((v >> (seg + 1)) & 0xF)) ^ mask) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Reference points of the G.711 expansion (same as ffmpeg's pcm_alaw/pcm_mulaw).
        assert_eq!(ALAW[0xD5], 8);
        assert_eq!(ALAW[0x55], -8);
        assert_eq!(ALAW[0xAA], 32256);
        assert_eq!(ALAW[0x2A], -32256);
        assert_eq!(ULAW[0xFF], 0);
        assert_eq!(ULAW[0x80], 32124);
        assert_eq!(ULAW[0x00], -32124);
    }

    #[test]
    fn encode_inverts_decode() {
        for b in 0..=255u8 {
            assert_eq!(linear_to_alaw(ALAW[b as usize]), b, "alaw {b:#x}");
            // µ-law has two zeros (0x7F and 0xFF); encoding 0 gives 0xFF.
            if b != 0x7F {
                assert_eq!(linear_to_ulaw(ULAW[b as usize]), b, "ulaw {b:#x}");
            }
        }
    }

    #[test]
    fn tables_are_monotonic_in_magnitude() {
        let mut a: Vec<i16> = ALAW.to_vec();
        a.sort_unstable();
        a.dedup();
        assert_eq!(a.len(), 256);
    }
}
