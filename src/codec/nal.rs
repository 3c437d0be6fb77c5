//! Annex B byte-stream helpers: start-code scanning (memchr), NAL iteration, AVCC writing.
//!
//! Scanning looks for the `01` byte with memchr and then checks the two bytes before it, which
//! keeps the hot loop inside memchr's SIMD search (compressed video has few `01` bytes).

/// Position of the first byte of the next 3-byte start code `00 00 01` in `buf`, if any.
/// A 4-byte start code `00 00 00 01` is found at its last three bytes.
///
/// memmem's packed-pair prefilter tests two of the pattern's bytes per position in one vector
/// compare, so slice data (where lone `00` or `01` bytes come every ~256 bytes) is skipped a
/// vector at a time; scanning for `01` alone stopped at each of them (profiled at 300 cameras:
/// 4.4 % of gbgate's CPU, docs/performance.md §13m).
#[inline]
pub fn find_start_code(buf: &[u8]) -> Option<usize> {
    static START_CODE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(&[0, 0, 1]));
    START_CODE.find(buf)
}

/// Strips trailing zero bytes (trailing_zero_8bits / the leading zero of a 4-byte start code).
#[inline]
pub fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let mut end = nal.len();
    while end > 0 && nal[end - 1] == 0 {
        end -= 1;
    }
    &nal[..end]
}

/// Iterates the NAL units of an Annex B buffer (without start codes, trailing zeros trimmed).
/// Bytes before the first start code are ignored.
pub fn annexb_nals(buf: &[u8]) -> AnnexBNals<'_> {
    let rest = match find_start_code(buf) {
        Some(p) => &buf[p + 3..],
        None => &[],
    };
    AnnexBNals { rest }
}

pub struct AnnexBNals<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AnnexBNals<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (nal, rest) = match find_start_code(self.rest) {
                Some(p) => (&self.rest[..p], &self.rest[p + 3..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let nal = trim_trailing_zeros(nal);
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    }
}

/// Appends `nal` to `out` as a 4-byte big-endian length followed by the NAL bytes.
#[inline]
pub fn write_avcc_nal(out: &mut Vec<u8>, nal: &[u8]) {
    out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
    out.extend_from_slice(nal);
}

/// Converts an Annex B buffer to AVCC (4-byte lengths). Convenience for tests and tools.
pub fn annexb_to_avcc(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 16);
    for nal in annexb_nals(buf) {
        write_avcc_nal(&mut out, nal);
    }
    out
}

/// Removes emulation prevention bytes (`00 00 03` -> `00 00`) into `out` (cleared first).
pub fn unescape_rbsp(nal: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(nal.len());
    let mut zeros = 0u32;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
}

/// MSB-first bit reader over an RBSP (emulation prevention already removed).
/// Every read is bounds-checked and returns `None` past the end.
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    pub fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Some(b as u32)
    }

    pub fn bits(&mut self, n: u32) -> Option<u32> {
        debug_assert!(n <= 32);
        let mut v: u32 = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        if end > self.data.len() * 8 {
            return None;
        }
        self.pos = end;
        Some(())
    }

    /// Exp-Golomb ue(v), limited to 32 leading zeros.
    pub fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0u32;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + rest as u64).min(u32::MAX as u64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_3_and_4_byte_start_codes() {
        assert_eq!(find_start_code(&[0, 0, 1, 9]), Some(0));
        assert_eq!(find_start_code(&[0, 0, 0, 1, 9]), Some(1));
        assert_eq!(find_start_code(&[1, 0, 1, 0, 0, 1]), Some(3));
        assert_eq!(find_start_code(&[0, 0]), None);
        assert_eq!(find_start_code(&[0, 1, 1, 1]), None);
        assert_eq!(find_start_code(&[]), None);
    }

    #[test]
    fn iterates_mixed_start_codes_and_writes_avcc() {
        let es = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 4];
        let nals: Vec<&[u8]> = annexb_nals(&es).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]);
        let avcc = annexb_to_avcc(&es);
        assert_eq!(&avcc[..7], &[0, 0, 0, 3, 0x67, 1, 2]);
        assert_eq!(avcc.len(), 7 + 6 + 6);
    }

    #[test]
    fn unescapes_and_reads_bits() {
        let mut out = Vec::new();
        unescape_rbsp(&[0, 0, 3, 1, 0, 0, 3], &mut out);
        assert_eq!(out, vec![0, 0, 1, 0, 0]);
        let mut r = BitReader::new(&[0b1010_0110, 0b0100_0000]);
        assert_eq!(r.ue(), Some(0));
        assert_eq!(r.ue(), Some(1)); // 010
        assert_eq!(r.ue(), Some(2)); // 011
        assert_eq!(r.ue(), Some(3)); // 00100
        assert_eq!(r.bits(32), None);
    }
}
