//! RTP reorder buffer and TCP framer against the shared synthetic `.rtp` dumps
//! (`[u16 BE length][RTP packet]` records). Run in a worktree with `GBGATE_SHARED=/work/shared`.
use crate::common;
use std::path::PathBuf;

use bytes::Bytes;
use gbgate::proto::rtp::reorder::{ReorderBuffer, Reordered, RtpStats};
use gbgate::proto::rtp::tcp::{TcpFramer, MAX_BUFFERED};
use gbgate::proto::rtp::RtpPacket;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `$GBGATE_SHARED/fixtures/synthetic`, else `$CARGO_MANIFEST_DIR/../shared/fixtures/synthetic`.
fn synthetic_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("GBGATE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("fixtures/synthetic");
    if dir.is_dir() {
        Some(dir)
    } else {
        common::missing("rtp_fixtures", "../shared/fixtures (set GBGATE_SHARED)");
        None
    }
}

fn read_file(name: &str) -> Option<Vec<u8>> {
    let path = synthetic_dir()?.join(name);
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Splits an `.rtp` dump into its packets (without the length prefix).
fn split_dump(data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 <= data.len() {
        let len = u16::from_be_bytes([data[i], data[i + 1]]) as usize;
        assert!(i + 2 + len <= data.len(), "truncated record at {i}");
        out.push(Bytes::copy_from_slice(&data[i + 2..i + 2 + len]));
        i += 2 + len;
    }
    assert_eq!(i, data.len());
    out
}

fn rtp_files() -> Vec<String> {
    let Some(dir) = synthetic_dir() else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".rtp"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    names
}

/// Feeds packets in file order without time (now = 0), capacity 64, then flushes.
fn reorder(packets: &[Bytes]) -> (Vec<RtpPacket>, u64, RtpStats) {
    let mut rb = ReorderBuffer::new(64, 1_000_000);
    let mut out = Vec::new();
    for p in packets {
        rb.push(RtpPacket::parse(p.clone()).unwrap(), 0, &mut out);
    }
    rb.flush(&mut out);
    let mut delivered = Vec::new();
    let mut lost_events = 0;
    for r in out {
        match r {
            Reordered::Packet(p) => delivered.push(p),
            Reordered::Lost { count } => lost_events += count,
            Reordered::Reset => panic!("unexpected reset"),
        }
    }
    (delivered, lost_events, rb.stats().clone())
}

fn concat_payloads(pkts: &[RtpPacket]) -> Vec<u8> {
    pkts.iter().flat_map(|p| p.payload.iter().copied()).collect()
}

#[test]
fn faults_fixture_loss_duplicates_reordering() {
    let (Some(rtp), Some(ps)) = (read_file("h264_g711a_8k_faults.rtp"), read_file("h264_g711a_8k_faults.ps")) else {
        return;
    };
    let packets = split_dump(&rtp);
    assert_eq!(packets.len(), 384);
    let (delivered, lost_events, st) = reorder(&packets);
    println!("faults: {st:?}");
    assert_eq!((st.lost, st.duplicates, st.reordered), (12, 8, 21));
    assert_eq!((st.late, st.resets, st.stray), (0, 0, 0));
    assert_eq!(lost_events, 12);
    assert_eq!(delivered.len(), 388 - 12);
    assert_eq!(st.packets, delivered.len() as u64);
    // Strictly increasing seq, and the gaps add up to the declared loss.
    let mut gaps = 0;
    for w in delivered.windows(2) {
        assert!(w[1].seq > w[0].seq);
        gaps += (w[1].seq - w[0].seq - 1) as u64;
    }
    assert_eq!((delivered[0].seq, delivered.last().unwrap().seq), (0, 387));
    assert_eq!(gaps, 12);
    // The payloads are the original PS minus the lost chunks: consecutive packets are adjacent in
    // the PS, and after a gap the next payload is found a little further on.
    let mut pos = 0;
    let mut prev_seq = None;
    let mut skipped = 0;
    for p in &delivered {
        let pl = &p.payload[..];
        let gap = prev_seq.map_or(0, |s: u16| p.seq - s - 1) as usize;
        if gap == 0 {
            assert_eq!(&ps[pos..pos + pl.len()], pl, "seq {}", p.seq);
        } else {
            let found = ps[pos..]
                .windows(pl.len())
                .position(|w| w == pl)
                .unwrap_or_else(|| panic!("payload of seq {} not in PS", p.seq));
            assert!(found > 0 && found <= gap * 1400, "seq {} gap {gap}", p.seq);
            skipped += found;
            pos += found;
        }
        pos += pl.len();
        prev_seq = Some(p.seq);
    }
    assert_eq!(pos, ps.len());
    assert_eq!(concat_payloads(&delivered).len() + skipped, ps.len());
}

/// The same file with simulated arrival times (1 ms apart) and a 20 ms jitter budget, driven by
/// `poll_timeout` / `handle_timeout` like the UDP task does: gaps are released by the timer and
/// no packet waits longer than the budget.
#[test]
fn faults_fixture_with_timer() {
    let Some(rtp) = read_file("h264_g711a_8k_faults.rtp") else {
        return;
    };
    let mut rb = ReorderBuffer::new(64, 20_000);
    let mut out = Vec::new();
    let mut delivered = Vec::new();
    let mut worst_wait = 0;
    for (i, p) in split_dump(&rtp).into_iter().enumerate() {
        let now = i as u64 * 1000;
        // Fire the timer if it expired before this arrival.
        if let Some(deadline) = rb.poll_timeout() {
            if deadline <= now {
                rb.handle_timeout(deadline, &mut out);
            }
        }
        rb.push(RtpPacket::parse(p).unwrap(), now, &mut out);
        for r in out.drain(..) {
            if let Reordered::Packet(p) = r {
                // seq s arrives around s ms in this file.
                worst_wait = worst_wait.max(now.saturating_sub(p.seq as u64 * 1000));
                delivered.push(p.seq);
            }
        }
    }
    rb.flush(&mut out);
    delivered.extend(out.iter().filter_map(|r| match r {
        Reordered::Packet(p) => Some(p.seq),
        _ => None,
    }));
    let st = rb.stats();
    println!("faults with timer: {st:?}, worst wait {worst_wait} us");
    assert_eq!((st.lost, st.duplicates, st.reordered, st.late), (12, 8, 21, 0));
    assert!(delivered.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(delivered.len(), 376);
    assert!(worst_wait <= 30_000, "worst wait {worst_wait} us");
}

#[test]
fn wrap_fixture_crosses_seq_wrap_without_loss() {
    let (Some(rtp), Some(ps)) = (read_file("h264_g711a_8k_wrap.rtp"), read_file("h264_g711a_8k_wrap.ps")) else {
        return;
    };
    let packets = split_dump(&rtp);
    let (delivered, lost_events, st) = reorder(&packets);
    println!("wrap: {st:?}");
    assert_eq!(delivered.len(), 390);
    assert_eq!(lost_events, 0);
    assert_eq!((st.lost, st.duplicates, st.reordered, st.late, st.resets), (0, 0, 0, 0, 0));
    for (i, p) in delivered.iter().enumerate() {
        assert_eq!(p.seq, 65000u16.wrapping_add(i as u16));
    }
    assert_eq!(concat_payloads(&delivered), ps);
}

#[test]
fn clean_fixtures_pass_through() {
    for name in rtp_files() {
        if name.contains("faults") {
            continue;
        }
        let packets = split_dump(&read_file(&name).unwrap());
        let (delivered, lost_events, st) = reorder(&packets);
        assert_eq!(delivered.len(), packets.len(), "{name}");
        assert_eq!(lost_events, 0, "{name}");
        assert_eq!((st.lost, st.duplicates, st.reordered, st.late, st.resets), (0, 0, 0, 0, 0));
        let ps = read_file(&name.replace(".rtp", ".ps")).unwrap();
        assert_eq!(concat_payloads(&delivered), ps, "{name}");
    }
}

/// Pushes `data` in random chunks, draining after each push; checks the memory bound.
fn frame_all(data: &[u8], rng: &mut StdRng, max_chunk: usize) -> (Vec<Bytes>, TcpFramer) {
    let mut f = TcpFramer::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let n = rng.gen_range(1..=max_chunk).min(data.len() - pos);
        f.push(&data[pos..pos + n]);
        pos += n;
        while let Some(p) = f.next_packet() {
            out.push(p);
        }
        assert!(f.buffered() <= MAX_BUFFERED);
    }
    f.finish();
    while let Some(p) = f.next_packet() {
        out.push(p);
    }
    (out, f)
}

#[test]
fn tcp_framer_yields_exactly_the_file_packets() {
    let mut rng = StdRng::seed_from_u64(28181);
    for name in rtp_files() {
        let data = read_file(&name).unwrap();
        let packets = split_dump(&data);
        for max_chunk in [1, 7, 100, 1500, 4096, 70_000] {
            let (out, f) = frame_all(&data, &mut rng, max_chunk);
            assert!(out == packets, "{name} chunks <= {max_chunk}: {}", out.len());
            let st = f.stats();
            assert_eq!((st.resyncs, st.skipped_bytes, st.rtcp), (0, 0, 0), "{name}");
            assert_eq!(f.buffered(), 0);
        }
        // Re-framed RTSP-style as `$ 0 len16`, with an RTCP RR on channel 1 every 50 packets.
        let mut dollar = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            dollar.extend_from_slice(&[b'$', 0]);
            dollar.extend_from_slice(&(p.len() as u16).to_be_bytes());
            dollar.extend_from_slice(p);
            if i % 50 == 49 {
                dollar.extend_from_slice(&[b'$', 1, 0, 8, 0x80, 201, 0, 1]);
                dollar.extend_from_slice(&p[8..12]);
            }
        }
        let (out, f) = frame_all(&dollar, &mut rng, 1500);
        assert!(out == packets, "{name} interleaved: {} of {}", out.len(), packets.len());
        let st = f.stats();
        assert_eq!((st.resyncs, st.rtcp), (0, packets.len() as u64 / 50), "{name}");
    }
}

#[test]
fn tcp_framer_recovers_from_injected_corruption() {
    let mut worst = 0;
    for name in rtp_files() {
        let data = read_file(&name).unwrap();
        let packets = split_dump(&data);
        // Record start offsets, to map a byte offset to the packet it touches.
        let mut starts = Vec::new();
        let mut i = 0;
        for p in &packets {
            starts.push(i);
            i += 2 + p.len();
        }
        for seed in 0..8u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            // One length field overwritten with 0xFFFF (not the first packet: the SSRC must be
            // learnt first), and a few random bytes inserted at 3 places.
            let ffff = rng.gen_range(1..packets.len());
            let mut hits = vec![ffff];
            let mut inserts: Vec<(usize, Vec<u8>)> = (0..3)
                .map(|_| {
                    let at = rng.gen_range(starts[1]..data.len());
                    let n = rng.gen_range(1..=8);
                    (at, (0..n).map(|_| rng.gen()).collect())
                })
                .collect();
            inserts.sort();
            let mut bad = data.clone();
            bad[starts[ffff]] = 0xff;
            bad[starts[ffff] + 1] = 0xff;
            for (at, junk) in inserts.iter().rev() {
                bad.splice(at..at, junk.iter().copied());
                hits.push(starts.partition_point(|&s| s <= *at) - 1);
            }
            let (out, f) = frame_all(&bad, &mut rng, 3000);
            // Delivered packets are intact originals, in order.
            let mut next = 0;
            let mut missing = Vec::new();
            for p in &out {
                let k = packets[next..].iter().position(|q| q == p).unwrap_or_else(|| {
                    panic!(
                        "{name} seed {seed}: corrupted packet delivered after #{next} \
                             (0xFFFF at #{ffff}, inserts {:?})",
                        inserts.iter().map(|(a, j)| (*a, j.len())).collect::<Vec<_>>()
                    )
                });
                missing.extend(next..next + k);
                next += k + 1;
            }
            // Packets after the last delivered one are missing too; with the proximity check
            // below this proves the framer ends in sync (unless the tail itself was corrupted).
            missing.extend(next..packets.len());
            assert_eq!(f.buffered(), 0);
            // Only packets next to a corruption are lost, at most 3 per corruption.
            for m in &missing {
                assert!(
                    hits.iter().any(|&h| m.abs_diff(h) <= 2),
                    "{name} seed {seed}: lost packet {m}, corruption at {hits:?}"
                );
            }
            assert!(missing.len() <= 3 * hits.len(), "{name} seed {seed}: {missing:?}");
            worst = worst.max(missing.len());
            assert!(f.stats().resyncs >= 1 && f.stats().resyncs <= 4);
        }
    }
    println!("worst case: {worst} packets lost for 4 corruptions");
}

/// Throughput check (hot path target: 300k packets/s/core). Run with
/// `cargo test --release --test rtp_fixtures -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let n = 2_000_000u32;
    let payload = Bytes::from(vec![0u8; 1400]);
    let pkts: Vec<RtpPacket> = (0..n)
        .map(|i| RtpPacket {
            ssrc: 1,
            seq: i as u16,
            timestamp: i,
            marker: false,
            payload_type: 96,
            payload: payload.clone(),
        })
        .collect();
    let mut rb = ReorderBuffer::new(64, 100_000);
    let mut out = Vec::with_capacity(64);
    let t = std::time::Instant::now();
    for (i, p) in pkts.into_iter().enumerate() {
        rb.push(p, i as u64 * 3, &mut out);
        out.clear();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("reorder in-order: {:.1} M packets/s", n as f64 / dt / 1e6);
    assert_eq!(rb.stats().packets, n as u64);

    // Every 20th packet swapped with its successor: the held path.
    let mut order: Vec<u32> = (0..n).collect();
    for i in (1..n as usize - 1).step_by(20) {
        order.swap(i, i + 1);
    }
    let mut rb = ReorderBuffer::new(64, 100_000);
    let t = std::time::Instant::now();
    for (i, s) in order.into_iter().enumerate() {
        let p = RtpPacket {
            ssrc: 1,
            seq: s as u16,
            timestamp: s,
            marker: false,
            payload_type: 96,
            payload: payload.clone(),
        };
        rb.push(p, i as u64 * 3, &mut out);
        out.clear();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("reorder 5% swapped: {:.1} M packets/s", n as f64 / dt / 1e6);
    assert_eq!((rb.stats().packets, rb.stats().reordered), (n as u64, n as u64 / 20));

    // Framer: 200k frames of 1400 B pushed in 64 KiB reads.
    let mut stream = Vec::new();
    for i in 0..200_000u32 {
        let mut p = Vec::new();
        gbgate::proto::rtp::write_packet(&mut p, 96, false, i as u16, i, 1, &[0x55; 1388]);
        stream.extend_from_slice(&(p.len() as u16).to_be_bytes());
        stream.extend_from_slice(&p);
    }
    let mut f = TcpFramer::new();
    let mut frames = 0u64;
    let t = std::time::Instant::now();
    for chunk in stream.chunks(65536) {
        f.push(chunk);
        while let Some(p) = f.next_packet() {
            frames += p.len() as u64 / 1400;
        }
    }
    let dt = t.elapsed().as_secs_f64();
    println!("framer: {:.1} M frames/s, {:.0} MB/s", frames as f64 / dt / 1e6, stream.len() as f64 / dt / 1e6);
    assert_eq!(frames, 200_000);

    // Pathological reads: 1 byte at a time, over good frames and over junk with frame-like bytes.
    let mut rng = StdRng::seed_from_u64(5);
    let junk: Vec<u8> = (0..2_000_000)
        .map(|_| match rng.gen_range(0..4) {
            0 => 0x80,
            1 => 0xff,
            _ => rng.gen(),
        })
        .collect();
    for (what, data) in [("good", &stream[..2_000_000]), ("junk", &junk[..])] {
        let mut f = TcpFramer::new();
        let t = std::time::Instant::now();
        for b in data.chunks(1) {
            f.push(b);
            while f.next_packet().is_some() {}
        }
        let dt = t.elapsed().as_secs_f64();
        println!("framer 1-byte reads, {what}: {:.0} MB/s", data.len() as f64 / dt / 1e6);
    }
}

/// Ending frames at trusted RTP markers (D172) must not change any frame of a capture: the same
/// frames, bytes and timestamps come out with the markers as sent and with every marker cleared.
#[test]
fn marker_cuts_leave_every_frame_of_every_capture_unchanged() {
    use gbgate::media::ingest::StreamIngest;
    use gbgate::probe::reader::{read_capture, CaptureItem};
    let Some(synthetic) = synthetic_dir() else { return };
    let real = synthetic.join("../real");
    let mut paths: Vec<PathBuf> = rtp_files().iter().map(|n| synthetic.join(n)).collect();
    for sub in ["avstackdocs", "spvmn-tool"] {
        for e in std::fs::read_dir(real.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rtp") {
                paths.push(p);
            }
        }
    }
    let mut marker_cut_somewhere = false;
    for path in paths {
        let capture = read_capture(&path).unwrap();
        let packets: Vec<RtpPacket> = capture
            .items
            .iter()
            .filter_map(|i| match i {
                CaptureItem::Rtp { packet, .. } => RtpPacket::parse(packet.clone()).ok(),
                CaptureItem::Ps(_) => None,
            })
            .collect();
        let run = |clear: bool| {
            let mut ingest = StreamIngest::new(64, 100_000);
            let mut out = Vec::new();
            for p in &packets {
                let mut p = p.clone();
                p.marker &= !clear;
                ingest.push_rtp(p, 0, &mut out);
            }
            ingest.finish(&mut out);
            // Per track: a frame ended earlier may now leave before the other track's frame of
            // the same time, which is the point; each track's frames must be the same.
            let mut frames: Vec<_> = out.iter().map(|f| (f.codec, f.pts, f.dts, f.keyframe, f.data.clone())).collect();
            frames.sort_by_key(|f| f.0.kind() == gbgate::media::MediaKind::Audio);
            (frames, ingest.demux_stats().marker_cuts)
        };
        let (with, cuts) = run(false);
        let (without, none) = run(true);
        assert_eq!(none, 0);
        if without.is_empty() {
            // Not a program stream (the Hikvision non-PS capture): nothing to compare.
            assert!(with.is_empty());
            continue;
        }
        // A capture with losses may keep a frame more: one that was complete at its marker when
        // the loss came (without markers the loss dropped it as partial). Every other frame is
        // the same.
        let lossy = path.to_string_lossy().contains("faults");
        let mut rest = with.iter();
        let subsequence = without.iter().all(|f| rest.any(|g| g == f));
        let show = |f: Option<&(gbgate::media::Codec, i64, i64, bool, Bytes)>| f.map(|f| (f.0, f.1, f.3, f.4.len()));
        let first_diff = (0..with.len().max(without.len())).find(|&i| with.get(i) != without.get(i));
        assert!(
            if lossy { subsequence && with.len() - without.len() <= 2 } else { with == without },
            "{}: frames differ with marker cuts ({cuts} cuts, {} vs {} frames), first at {first_diff:?}: {:?} vs {:?}",
            path.display(),
            with.len(),
            without.len(),
            first_diff.and_then(|i| show(with.get(i))),
            first_diff.and_then(|i| show(without.get(i))),
        );
        println!("{}: {} frames, {cuts} ended at their marker", path.display(), with.len());
        marker_cut_somewhere |= cuts > 0;
    }
    assert!(marker_cut_somewhere, "no capture had its frames ended at their markers");
}
