//! AAC in ADTS: header parsing, AudioSpecificConfig building, splitting a buffer into frames.

pub const SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsHeader {
    /// audio object type (profile + 1): 2 = AAC-LC.
    pub object_type: u8,
    pub sampling_index: u8,
    pub sample_rate: u32,
    pub channel_config: u8,
    /// 7, or 9 with CRC.
    pub header_len: usize,
    /// Header included.
    pub frame_len: usize,
    /// Raw data blocks in the frame (each 1024 samples).
    pub blocks: u8,
}

/// Parses an ADTS header at the start of `b`. Validates sync, layer 0, sampling index and lengths.
pub fn parse_adts(b: &[u8]) -> Option<AdtsHeader> {
    if b.len() < 7 || b[0] != 0xFF || b[1] & 0xF6 != 0xF0 {
        return None;
    }
    let protection_absent = b[1] & 1 == 1;
    let object_type = ((b[2] >> 6) & 3) + 1;
    let sampling_index = (b[2] >> 2) & 0x0F;
    let sample_rate = *SAMPLE_RATES.get(sampling_index as usize)?;
    let channel_config = ((b[2] & 1) << 2) | (b[3] >> 6);
    let frame_len = (((b[3] & 3) as usize) << 11) | ((b[4] as usize) << 3) | ((b[5] >> 5) as usize);
    let header_len = if protection_absent { 7 } else { 9 };
    if frame_len < header_len {
        return None;
    }
    Some(AdtsHeader {
        object_type,
        sampling_index,
        sample_rate,
        channel_config,
        header_len,
        frame_len,
        blocks: (b[6] & 3) + 1,
    })
}

/// 2-byte AudioSpecificConfig: object type (5 bits), sampling index (4), channel config (4).
pub fn audio_specific_config(h: &AdtsHeader) -> [u8; 2] {
    let v: u16 = ((h.object_type as u16 & 0x1F) << 11)
        | ((h.sampling_index as u16 & 0x0F) << 7)
        | ((h.channel_config as u16 & 0x0F) << 3);
    v.to_be_bytes()
}

/// True when `b` looks like ADTS: a valid header whose frame either fills the buffer exactly,
/// runs past its end, or is followed by another ADTS sync word. Used to sniff AAC labelled G.711.
pub fn looks_like_adts(b: &[u8]) -> bool {
    let Some(h) = parse_adts(b) else { return false };
    if h.frame_len >= b.len() {
        return true;
    }
    parse_adts(&b[h.frame_len..]).is_some() || b.len() - h.frame_len < 7 && b[h.frame_len] == 0xFF
}

/// Splits `b` into complete ADTS frames: calls `f(header, raw_payload, offset)` for each and returns
/// the number of bytes consumed (a trailing partial frame is not consumed). Non-ADTS bytes
/// are skipped up to the next sync word (returned count includes them) — `skipped` is added to.
pub fn split_adts(b: &[u8], skipped: &mut u64, mut f: impl FnMut(&AdtsHeader, &[u8], usize)) -> usize {
    let mut pos = 0;
    while pos < b.len() {
        match parse_adts(&b[pos..]) {
            Some(h) => {
                if pos + h.frame_len > b.len() {
                    break;
                }
                f(&h, &b[pos + h.header_len..pos + h.frame_len], pos);
                pos += h.frame_len;
            }
            None => {
                if b.len() - pos < 7 && b[pos] == 0xFF {
                    break; // maybe a header split across PES
                }
                // resync on the next 0xFF
                let next = memchr::memchr(0xFF, &b[pos + 1..]).map_or(b.len(), |i| pos + 1 + i);
                *skipped += (next - pos) as u64;
                pos = next;
            }
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adts(len: usize) -> Vec<u8> {
        // AAC-LC, 16000 Hz (index 8), mono, no CRC
        let mut v = vec![0xFF, 0xF1, 0x60, 0x40, 0, 0, 0xFC];
        v[3] |= ((len >> 11) & 3) as u8;
        v[4] = ((len >> 3) & 0xFF) as u8;
        v[5] = (((len & 7) << 5) as u8) | 0x1F;
        v.resize(len, 0xAB);
        v
    }

    #[test]
    fn parses_header_and_asc() {
        let f = adts(100);
        let h = parse_adts(&f).unwrap();
        assert_eq!((h.object_type, h.sample_rate, h.channel_config, h.frame_len, h.header_len), (2, 16000, 1, 100, 7));
        assert_eq!(audio_specific_config(&h), [0x14, 0x08]);
        assert!(parse_adts(&[0xFF, 0xF7, 0x60, 0x40, 0, 0, 0]).is_none()); // layer != 0
        assert!(parse_adts(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).is_none());
        // mu-law silence
    }

    #[test]
    fn splits_frames_keeping_partial_tail() {
        let mut b = adts(50);
        b.extend(adts(60));
        b.extend(&adts(40)[..20]);
        let mut got = vec![];
        let mut skipped = 0;
        let used = split_adts(&b, &mut skipped, |_, raw, off| got.push((raw.len(), off)));
        assert_eq!(got, vec![(43, 0), (53, 50)]);
        assert_eq!(used, 110);
        assert!(looks_like_adts(&b));
        assert!(!looks_like_adts(&[0xD5; 320]));
    }
}
