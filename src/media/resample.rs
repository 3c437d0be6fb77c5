//! A polyphase FIR resampler for the camera audio rates (D182): G.711 at 8000 or 16000 Hz to the
//! AAC output rate (11025 Hz: 441/320 and 441/640), or to WebRTC's 48000 Hz.
//!
//! Why not rubato (which stays for the other ratios): with one resampler per camera, what costs is
//! not the arithmetic but the state. rubato's FFT resampler keeps per instance its FFT plans and
//! scratch buffers and works on whole chunks; at 300 cameras those instances no longer fit the
//! caches. Here the filter table is built once per rate pair and shared by every stream
//! (`Arc<Table>`), and a stream's state is the last few input samples and a phase. The filter is
//! short because G.711 carries nothing above 3.4 kHz (ITU-T G.712's channel): a Kaiser-windowed
//! sinc of 16 input samples when upsampling passes 0-3.4 kHz within 0.3 dB and is at least 44 dB
//! down from 4.6 kHz, where the first image of a 3.4 kHz tone would land (D191: below A-law's own
//! quantisation noise, so a longer filter buys nothing audible).
//!
//! The filter is centred on each output instant, so output sample `n` is the input at time
//! `n * from / to` with no delay to skip; it waits for `taps / 2` input samples of look-ahead.
use std::sync::{Arc, Mutex, OnceLock};

/// The polyphase filter of one rate pair, shared by every stream that resamples it.
#[derive(Debug)]
pub struct Table {
    /// Output samples per `m` input samples, in lowest terms (`to / from = l / m`).
    l: usize,
    m: usize,
    /// Taps per phase, a multiple of 8 (the dot product's lane count).
    taps: usize,
    /// `l` phases of `taps` coefficients, phase-major, each already ordered for a forward dot
    /// product with the input window.
    coeffs: Vec<f32>,
}

/// A built table and its `(from, to)` rates.
type SharedTable = ((u32, u32), Arc<Table>);

/// Largest number of phases worth a table (the rates that matter have 441 or fewer).
const MAX_PHASES: usize = 1024;
/// Taps per phase when upsampling; downsampling widens the filter by `from / to` (D191).
const UP_TAPS: usize = 16;
/// Kaiser window shape when upsampling: with 16 taps and the cutoff at 3.92 kHz (of 8 kHz), the
/// telephone band's top (3.4 kHz) within 0.3 dB and every image from 4.6 kHz up at least 44 dB
/// down, below G.711's own quantisation noise (A-law's SNR is at most ~38 dB).
const UP_BETA: f64 = 3.8;
/// Upsampling cutoff, in cycles per input sample.
const UP_CUTOFF: f64 = 0.49;
/// Kaiser window shape when downsampling (16 kHz: 24 taps, ~56 dB of stopband).
const DOWN_BETA: f64 = 4.55;

impl Table {
    /// The shared table for `from -> to`, or `None` for ratios this filter is not made for
    /// (downsampling by more than 2, or more than [`MAX_PHASES`] phases): those use rubato.
    pub fn shared(from: u32, to: u32) -> Option<Arc<Table>> {
        static TABLES: OnceLock<Mutex<Vec<SharedTable>>> = OnceLock::new();
        if from == 0 || to == 0 || from == to || u64::from(from) > 2 * u64::from(to) {
            return None;
        }
        let g = gcd(from, to);
        let (l, m) = ((to / g) as usize, (from / g) as usize);
        if l > MAX_PHASES {
            return None;
        }
        let tables = TABLES.get_or_init(|| Mutex::new(Vec::new()));
        let mut tables = tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = tables.iter().find(|(k, _)| *k == (from, to)) {
            return Some(t.clone());
        }
        let t = Arc::new(Table::build(from, to, l, m));
        tables.push(((from, to), t.clone()));
        Some(t)
    }

    fn build(from: u32, to: u32, l: usize, m: usize) -> Table {
        let (from_hz, to_hz) = (f64::from(from), f64::from(to));
        // Cutoff in cycles per input sample: just under the input's Nyquist when upsampling,
        // under the output's when downsampling (with room for the transition band).
        let (cutoff, taps, beta) = if to >= from {
            (UP_CUTOFF, UP_TAPS, UP_BETA)
        } else {
            let widen = (from_hz / to_hz * UP_TAPS as f64).ceil() as usize;
            (0.4444 * to_hz / from_hz, widen.div_ceil(8) * 8, DOWN_BETA)
        };
        let half = taps as f64 / 2.0;
        let i0_beta = bessel_i0(beta);
        let mut coeffs = vec![0f32; l * taps];
        for p in 0..l {
            let row = &mut coeffs[p * taps..(p + 1) * taps];
            let mut sum = 0f64;
            let mut vals = vec![0f64; taps];
            for (i, v) in vals.iter_mut().enumerate() {
                // Distance, in input samples, from window sample `i` to the output instant.
                let tau = p as f64 / l as f64 + half - 1.0 - i as f64;
                let x = tau / half;
                let w = if x.abs() >= 1.0 { 0.0 } else { bessel_i0(beta * (1.0 - x * x).sqrt()) / i0_beta };
                *v = 2.0 * cutoff * sinc(2.0 * cutoff * tau) * w;
                sum += *v;
            }
            // Unity gain at DC in every phase, so a constant stays constant.
            for (c, v) in row.iter_mut().zip(&vals) {
                *c = (*v / sum) as f32;
            }
        }
        Table { l, m, taps, coeffs }
    }

    /// Input samples of look-ahead each output waits for.
    pub fn lookahead(&self) -> usize {
        self.taps / 2
    }
}

/// One stream's resampler: the shared table, the input window and where the next output falls.
#[derive(Debug)]
pub struct Polyphase {
    table: Arc<Table>,
    /// Input samples not yet behind every future output's window; starts with `taps / 2 - 1`
    /// zeros so the first output is centred on the first input sample.
    window: Vec<f32>,
    /// The next output's instant: `window[at]` plus `phase / l` of a sample.
    at: usize,
    phase: usize,
}

impl Polyphase {
    pub fn new(table: Arc<Table>) -> Polyphase {
        let lead = table.taps / 2 - 1;
        let mut window = Vec::with_capacity(table.taps + 1024);
        window.resize(lead, 0.0);
        Polyphase { table, window, at: lead, phase: 0 }
    }

    /// Resamples `input`, appending the output to `dst`; outputs whose window is not complete
    /// wait for the next call.
    pub fn process(&mut self, input: &[f32], dst: &mut Vec<f32>) {
        self.window.extend_from_slice(input);
        let Table { l, m, taps, ref coeffs } = *self.table;
        let half = taps / 2;
        dst.reserve((input.len() * l).div_ceil(m) + 1);
        while self.at + half < self.window.len() {
            let start = self.at + 1 - half;
            let c = &coeffs[self.phase * taps..(self.phase + 1) * taps];
            dst.push(dot(c, &self.window[start..start + taps]));
            // No division per sample: `m / l` is under 3 for every table (`Table::shared`).
            self.phase += m;
            while self.phase >= l {
                self.phase -= l;
                self.at += 1;
            }
        }
        // Keep only what a future output's window can still reach.
        let keep_from = (self.at + 1).saturating_sub(half).min(self.window.len());
        self.window.drain(..keep_from);
        self.at -= keep_from;
    }
}

/// `c · x` over equal lengths that are a multiple of 8, in 8 lanes so it vectorises.
///
/// Keep it a loop over runtime-length chunks (D198): a dot product of a length fixed at compile
/// time (`&[f32; 16]`, const generics) is fully unrolled and then compiled to scalar `mulss`/`addss`
/// instead of `mulps`/`addps`, and measured 1.2-1.7x slower in two rounds.
#[inline]
fn dot(c: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (cc, xx) in c.chunks_exact(8).zip(x.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += cc[k] * xx[k];
        }
    }
    // Pairwise, so the sum is a short tree of adds rather than a chain of eight.
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The zeroth-order modified Bessel function of the first kind (power series; converges fast
/// for the window's arguments).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as f32).collect()
    }

    /// Resamples `input` in 40 ms pieces, as the transcoder feeds it.
    fn run(from: u32, to: u32, input: &[f32]) -> Vec<f32> {
        let mut r = Polyphase::new(Table::shared(from, to).expect("a polyphase ratio"));
        let mut out = Vec::new();
        for piece in input.chunks(from as usize / 25) {
            r.process(piece, &mut out);
        }
        out
    }

    /// Amplitude of `freq` in `x` (a single-bin DFT), over whole samples.
    fn amplitude(x: &[f32], freq: f64, rate: u32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            re += f64::from(s) * (w * i as f64).cos();
            im += f64::from(s) * (w * i as f64).sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn output_count_follows_the_ratio_and_tables_are_shared() {
        for (from, to) in [(8000, 11025), (16000, 11025), (8000, 48000), (16000, 48000)] {
            let out = run(from, to, &vec![0.0; from as usize * 3]);
            let want = 3 * to as usize;
            // All but the look-ahead's worth of output is out.
            let la = Table::shared(from, to).unwrap().lookahead() * to as usize / from as usize + 1;
            assert!(out.len() <= want && out.len() + la >= want, "{from}->{to}: {} of {want}", out.len());
        }
        assert!(Arc::ptr_eq(&Table::shared(8000, 11025).unwrap(), &Table::shared(8000, 11025).unwrap()));
        assert!(Table::shared(44100, 11025).is_none(), "downsampling by 4 is rubato's");
        assert!(Table::shared(8000, 8000).is_none());
    }

    #[test]
    fn a_tone_keeps_its_frequency_level_and_timing() {
        // 1 kHz at 8 kHz: at 11025 Hz the same tone, the same level, no delay (centred filter).
        let input = tone(1000.0, 8000, 8000 * 2);
        let out = run(8000, 11025, &input);
        let want = tone(1000.0, 11025, out.len());
        let err: f64 =
            out[100..out.len() - 100].iter().zip(&want[100..]).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()
                / (out.len() - 200) as f64;
        let snr = 10.0 * (0.125 / err).log10();
        assert!(snr > 45.0, "1 kHz through 8000->11025: SNR {snr:.1} dB against the ideal tone");
        // The telephone band's top passes within 0.5 dB.
        let top = run(8000, 11025, &tone(3400.0, 8000, 16000));
        let a = amplitude(&top[200..top.len() - 200], 3400.0, 11025);
        assert!((a / 0.5).log10().abs() * 20.0 < 0.5, "3.4 kHz at {a:.3} of 0.5");
    }

    #[test]
    fn images_and_aliases_are_below_g711_noise() {
        // Upsampling a tone at f leaves an image at 8000 - f: 4.6 to 5.5 kHz for the band's top,
        // and above the output's Nyquist (folded back to 11025 - (8000 - f)) for lower tones.
        // Every one at least 44 dB down: under A-law's own quantisation noise (~38 dB SNR).
        for f in [3400.0, 3200.0, 3000.0, 2500.0, 2000.0, 1000.0] {
            let out = run(8000, 11025, &tone(f, 8000, 16000));
            let img = 8000.0 - f;
            let at = if img > 5512.5 { 11025.0 - img } else { img };
            let image = amplitude(&out[200..out.len() - 200], at, 11025);
            assert!(20.0 * (image / 0.5).log10() < -44.0, "image of {f} Hz at {at} Hz: {image:e}");
        }
        // Downsampling 16 kHz: a 7 kHz tone would alias to 11025 - 7000 = 4025 Hz.
        let out = run(16000, 11025, &tone(7000.0, 16000, 32000));
        let alias = amplitude(&out[200..out.len() - 200], 4025.0, 11025);
        assert!(20.0 * (alias / 0.5).log10() < -50.0, "alias at 4025 Hz: {alias:e}");
        // While 4 kHz at 16 kHz passes.
        let out = run(16000, 11025, &tone(4000.0, 16000, 32000));
        let a = amplitude(&out[200..out.len() - 200], 4000.0, 11025);
        assert!((a / 0.5).log10().abs() * 20.0 < 0.5, "4 kHz at {a:.3} of 0.5");
    }

    #[test]
    fn piece_sizes_do_not_change_the_output() {
        let input = tone(440.0, 8000, 8000);
        let whole = {
            let mut r = Polyphase::new(Table::shared(8000, 11025).unwrap());
            let mut out = Vec::new();
            r.process(&input, &mut out);
            out
        };
        let mut r = Polyphase::new(Table::shared(8000, 11025).unwrap());
        let mut pieces = Vec::new();
        let mut rest = &input[..];
        for n in [1usize, 7, 160, 3, 320].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*n).min(rest.len());
            r.process(&rest[..n], &mut pieces);
            rest = &rest[n..];
        }
        assert_eq!(whole, pieces);
        assert!(r.window.len() <= r.table.taps + 1, "state stays bounded: {}", r.window.len());
    }
}
