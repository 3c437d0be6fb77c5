//! Hands the kernel back the pages of gbgate's own code and read-only data that only start-up
//! touched (D194).
//!
//! Start-up runs code no stream needs again (the CLI and TOML parsers, the config checks, every
//! subsystem's set-up), and each page it executes maps its whole 64 kB fault-around window of
//! the binary: 10-12 MB of a ~16 MB text stay resident for the life of the process while the
//! media path runs in 4-5 MB of it (docs/performance.md §13n). Once start-up is over,
//! `madvise(MADV_PAGEOUT)` (Linux >= 5.4) on the binary's read-only mappings drops them; what the
//! media path still uses faults back in (from the page cache, or from disk if the cache let it
//! go). The kernel skips pages another process also maps (a second gbgate, `gbgate send`), so
//! this never takes code from anyone else. This file is the binary's, not the library's, because
//! it is the one place that needs `unsafe` (the library forbids it).
use std::fmt;
use std::io;

/// What one release did: the binary's read-only mappings, and their resident kB before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    pub resident_before_kib: u64,
    pub resident_after_kib: u64,
}

impl fmt::Display for Released {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} kB of {} mapping(s) of the binary resident before, {} kB after",
            self.resident_before_kib, self.mappings, self.resident_after_kib
        )
    }
}

/// One read-only mapping of the binary: its address range and resident kB (from /proc/self/smaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    resident_kib: u64,
}

/// The read-only (not writable) mappings of `exe` in an smaps text, in address order.
fn read_only_mappings(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<usize> = None;
    for line in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]"; its fields follow as
        // "Name:   value kB" lines.
        let mut fields = line.split_ascii_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                let perms = fields.next().unwrap_or("");
                // The path is the rest of the line after four fields; it may hold spaces.
                let path = line.splitn(6, char::is_whitespace).nth(5).map(str::trim).unwrap_or("");
                current = None;
                if path == exe && perms.as_bytes().get(1) == Some(&b'-') {
                    out.push(Mapping { start, end, resident_kib: 0 });
                    current = Some(out.len() - 1);
                }
                continue;
            }
        }
        if let (Some(i), "Rss:") = (current, first) {
            out[i].resident_kib = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    out
}

fn own_mappings() -> io::Result<(String, Vec<Mapping>)> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let maps = read_only_mappings(&smaps, &exe);
    Ok((exe, maps))
}

/// Pages out the binary's read-only mappings (its code, read-only data and headers). Blocking:
/// reads /proc/self/smaps twice and has the kernel reclaim the pages, a few ms.
#[cfg(target_os = "linux")]
pub fn release_startup_code() -> io::Result<Released> {
    let (exe, maps) = own_mappings()?;
    if maps.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no read-only mapping of {exe} in /proc/self/smaps"),
        ));
    }
    for m in &maps {
        // SAFETY: the range is one of this process's own file mappings as /proc/self/smaps lists
        // it, page-aligned; MADV_PAGEOUT only reclaims pages (each faults back in when used) and
        // never changes their contents or the mapping, so no reference into it is invalidated.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_PAGEOUT) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("madvise(MADV_PAGEOUT) on {exe}: {e} (Linux >= 5.4 needed)")));
        }
    }
    let after: u64 = own_mappings()?.1.iter().map(|m| m.resident_kib).sum();
    Ok(Released {
        mappings: maps.len(),
        resident_before_kib: maps.iter().map(|m| m.resident_kib).sum(),
        resident_after_kib: after,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_code() -> io::Result<Released> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "releasing start-up code pages needs Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0400000 r--p 00000000 08:01 123 /opt/gb gate/gbgate
Size:               4096 kB
Rss:                2040 kB
Anonymous:           452 kB
55d0a0400000-55d0a1400000 r-xp 00400000 08:01 123 /opt/gb gate/gbgate
Size:              16384 kB
Rss:                9788 kB
55d0a1400000-55d0a1410000 rw-p 01400000 08:01 123 /opt/gb gate/gbgate
Rss:                  44 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 9 /usr/lib/libc.so.6
Rss:                1016 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
Rss:                 500 kB
";

    #[test]
    fn finds_the_binarys_read_only_mappings_only() {
        let maps = read_only_mappings(SMAPS, "/opt/gb gate/gbgate");
        assert_eq!(
            maps,
            vec![
                Mapping { start: 0x55d0a0000000, end: 0x55d0a0400000, resident_kib: 2040 },
                Mapping { start: 0x55d0a0400000, end: 0x55d0a1400000, resident_kib: 9788 },
            ]
        );
        assert!(read_only_mappings(SMAPS, "/opt/gb").is_empty(), "a path is matched whole");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_test_binarys_code_can_be_released() {
        // The test binary is mapped by this process only; its text pages are resident (this
        // code runs from them), and the release must leave it running.
        let released = release_startup_code().expect("madvise(MADV_PAGEOUT)");
        assert!(released.mappings >= 2, "{released}");
        assert!(released.resident_before_kib > 0, "{released}");
        assert!(released.resident_after_kib < released.resident_before_kib, "{released}");
    }
}
