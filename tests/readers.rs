//! Capture readers against the shared fixtures and against pcap/pcapng/rtpdump files built here.
use crate::common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use etherparse::PacketBuilder;
use gbgate::probe::reader::{detect_format, read_capture, Capture, CaptureFormat, CaptureItem, Transport};
use gbgate::proto::rtp::{write_packet, RtpPacket};

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("GBGATE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.join("fixtures").is_dir() {
        Some(dir.join("fixtures"))
    } else {
        common::missing("readers", "../shared/fixtures (set GBGATE_SHARED)");
        None
    }
}

/// RTP packets per flow: flow -> (packets, SSRCs, first seq, last seq).
fn flows(cap: &Capture) -> BTreeMap<String, (usize, Vec<u32>, u16, u16)> {
    let mut m: BTreeMap<String, (usize, Vec<u32>, u16, u16)> = BTreeMap::new();
    for item in &cap.items {
        if let CaptureItem::Rtp { flow, packet, .. } = item {
            let p = RtpPacket::parse(packet.clone()).expect("reader returns parseable RTP");
            let e = m.entry(flow.clone()).or_insert((0, Vec::new(), p.seq, p.seq));
            e.0 += 1;
            if !e.1.contains(&p.ssrc) {
                e.1.push(p.ssrc);
            }
            e.3 = p.seq;
        }
    }
    m
}

fn rtp_packets(cap: &Capture) -> Vec<Bytes> {
    cap.items
        .iter()
        .filter_map(|i| match i {
            CaptureItem::Rtp { packet, .. } => Some(packet.clone()),
            CaptureItem::Ps(_) => None,
        })
        .collect()
}

#[test]
fn synthetic_rtp_dumps_give_readme_packet_counts() {
    let Some(fx) = shared() else { return };
    let table: [(&str, usize, u32); 10] = [
        ("h264_g711a_8k", 388, 0x05F5E101),
        ("h264_g711u_16k", 388, 0x05F5E102),
        ("h265_aac_16k", 362, 0x05F5E103),
        ("h265_g711a_8k", 398, 0x05F5E104),
        ("h264_video_only", 288, 0x05F5E105),
        ("g711a_8k_audio_only", 100, 0x05F5E106),
        ("h264_g711a_8k_wrap", 390, 0x05F5E107),
        ("h264_g711a_8k_faults", 384, 0x05F5E108),
        ("ffmpeg_vob_h264", 74, 100000009),
        ("ffmpeg_mpeg1_h264", 66, 100000009),
    ];
    for (name, packets, ssrc) in table {
        let cap = read_capture(&fx.join(format!("synthetic/{name}.rtp"))).unwrap();
        assert_eq!(cap.format, CaptureFormat::RtpDump, "{name}");
        assert!(cap.warnings.is_empty(), "{name}: {:?}", cap.warnings);
        let f = flows(&cap);
        assert_eq!(f.len(), 1, "{name}");
        assert_eq!(f["file"].0, packets, "{name}");
        assert_eq!(f["file"].1, vec![ssrc], "{name}");
        assert!(cap
            .items
            .iter()
            .all(|i| matches!(i, CaptureItem::Rtp { transport: Transport::File, time_us: None, .. })));
        // The clean dumps concatenate to the .ps (README).
        if !name.ends_with("faults") {
            let ps: Vec<u8> =
                rtp_packets(&cap).into_iter().flat_map(|p| RtpPacket::parse(p).unwrap().payload.to_vec()).collect();
            let file = std::fs::read(fx.join(format!("synthetic/{name}.ps"))).unwrap();
            assert_eq!(ps, file, "{name}");
        }
    }
}

#[test]
fn ps_files_are_read_in_chunks() {
    let Some(fx) = shared() else { return };
    for (rel, garbage) in [
        ("synthetic/h264_g711a_8k.ps", None),
        ("synthetic/ffmpeg_mpeg1_h264.ps", None),
        ("real/avstackdocs/hik_d1_h264_01e168e1.ps", None),
        ("real/avstackdocs/hik_1080p15_h264_02c27467.ps", Some(1651)),
        ("real/spvmn-tool/Audio_G711_PS2.mpg", None),
    ] {
        let path = fx.join(rel);
        let cap = read_capture(&path).unwrap();
        assert_eq!(cap.format, CaptureFormat::RawPs, "{rel}");
        let mut all = Vec::new();
        for item in &cap.items {
            let CaptureItem::Ps(chunk) = item else { panic!("{rel}: RTP item in a PS file") };
            assert!(chunk.len() <= 65536);
            all.extend_from_slice(chunk);
        }
        assert_eq!(all, std::fs::read(&path).unwrap(), "{rel}");
        match garbage {
            None => assert!(cap.warnings.is_empty(), "{rel}: {:?}", cap.warnings),
            Some(n) => assert_eq!(cap.warnings, vec![format!("{n} bytes before the first pack header (00 00 01 BA)")]),
        }
    }
}

#[test]
fn real_rtp_dumps() {
    let Some(fx) = shared() else { return };
    for (rel, packets, ssrc) in [
        ("real/avstackdocs/hik_d1_h264_01e168e1.rtp", 3096, 0x05F5ED76u32),
        ("real/avstackdocs/gb_live_media_udp_hik_nonps.rtp", 1561, 0x0396A9CA),
        ("real/avstackdocs/hik_1080p15_h264_02c27467.gbsend.rtp", 2723, 100000101),
        ("real/spvmn-tool/Audio_G711_PS2.gbsend.rtp", 0, 100000102),
    ] {
        let cap = read_capture(&fx.join(rel)).unwrap();
        assert_eq!(cap.format, CaptureFormat::RtpDump, "{rel}");
        assert!(cap.warnings.is_empty(), "{rel}: {:?}", cap.warnings);
        let f = flows(&cap);
        println!("{rel}: {} packets", f["file"].0);
        if packets > 0 {
            assert_eq!(f["file"].0, packets, "{rel}");
        }
        assert_eq!(f["file"].1, vec![ssrc], "{rel}");
    }
}

#[test]
fn hik_nonps_pcapng_has_one_udp_flow() {
    let Some(fx) = shared() else { return };
    let cap = read_capture(&fx.join("real/avstackdocs/gb_live_media_udp_hik_nonps.pcapng")).unwrap();
    assert_eq!(cap.format, CaptureFormat::Pcapng);
    let f = flows(&cap);
    println!("{f:?} {:?}", cap.warnings);
    assert_eq!(f.len(), 1);
    let (n, ssrcs, first, last) = &f["udp 10.64.49.218:5514->10.64.49.44:5494"];
    assert_eq!((*n, ssrcs.clone(), *first, *last), (1561, vec![0x0396A9CA], 35727, 37287));
    let times: Vec<u64> = cap
        .items
        .iter()
        .filter_map(|i| match i {
            CaptureItem::Rtp { time_us, transport: Transport::Udp, .. } => *time_us,
            _ => None,
        })
        .collect();
    assert_eq!(times.len(), 1561);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let span = times[times.len() - 1] - times[0];
    assert!((7_000_000..8_000_000).contains(&span), "capture spans {span} us");
    // The same packets as in our dump of it (made in arrival order).
    let dump = read_capture(&fx.join("real/avstackdocs/gb_live_media_udp_hik_nonps.rtp")).unwrap();
    assert_eq!(rtp_packets(&cap), rtp_packets(&dump));
}

#[test]
fn rtsp_captures_give_their_rtp_flows() {
    let Some(fx) = shared() else { return };
    let cap = read_capture(&fx.join("real/avstackdocs/rtsp/rtsp_h265_udp.pcap")).unwrap();
    assert_eq!(cap.format, CaptureFormat::Pcap);
    let f = flows(&cap);
    println!("rtsp_h265_udp.pcap: {f:?} {:?}", cap.warnings);
    assert_eq!(f.values().map(|v| v.0).collect::<Vec<_>>(), vec![870]);

    let cap = read_capture(&fx.join("real/avstackdocs/rtsp/rtsp_h265_pcma_onvifmeta_udp.pcapng")).unwrap();
    assert_eq!(cap.format, CaptureFormat::Pcapng);
    let f = flows(&cap);
    println!("rtsp_h265_pcma_onvifmeta_udp.pcapng: {f:?} {:?}", cap.warnings);
    let mut counts: Vec<usize> = f.values().map(|v| v.0).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![262, 2048]);
}

#[test]
fn sip_captures_have_no_rtp() {
    let Some(fx) = shared() else { return };
    let dir = fx.join("real/avstackdocs/sip");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert_eq!(names.len(), 21);
    for path in names {
        let cap = read_capture(&path).unwrap();
        assert_eq!(cap.format, CaptureFormat::Pcapng, "{path:?}");
        assert!(cap.items.is_empty(), "{path:?}: {:?}", flows(&cap));
    }
}

#[test]
fn truncated_shared_files_keep_what_was_read() {
    let Some(fx) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (rel, cut) in [
        ("real/avstackdocs/gb_live_media_udp_hik_nonps.pcapng", 1_000_001),
        ("real/avstackdocs/rtsp/rtsp_h265_udp.pcap", 500_001),
        ("synthetic/h264_g711a_8k.rtp", 100_001),
    ] {
        let data = std::fs::read(fx.join(rel)).unwrap();
        let path = dir.path().join("cut");
        std::fs::write(&path, &data[..cut]).unwrap();
        let cap = read_capture(&path).unwrap();
        assert!(!cap.items.is_empty(), "{rel}");
        assert!(cap.warnings.iter().any(|w| w.contains("truncated")), "{rel}: {:?}", cap.warnings);
    }
}

// ---- files built here ----

/// Compares packet lists by sequence numbers first, so a failure prints something readable.
fn same_packets(got: &[Vec<u8>], want: &[Vec<u8>]) {
    let seqs = |v: &[Vec<u8>]| v.iter().map(|p| u16::from_be_bytes([p[2], p[3]])).collect::<Vec<_>>();
    assert_eq!(seqs(got), seqs(want));
    for (g, w) in got.iter().zip(want) {
        assert!(g == w, "packet seq {} differs", u16::from_be_bytes([w[2], w[3]]));
    }
}

fn rtp(seq: u16, ssrc: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seq as u8)).collect();
    write_packet(&mut v, 96, seq % 3 == 2, seq, seq as u32 * 3600, ssrc, &payload);
    v
}

const CAM: [u8; 4] = [192, 168, 1, 64];
const GW: [u8; 4] = [192, 168, 1, 10];

fn udp_frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
        .ipv4(CAM, GW, 64)
        .udp(sport, dport)
        .write(&mut f, payload)
        .unwrap();
    f
}

fn tcp_frame(seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
        .ipv4(CAM, GW, 64)
        .tcp(40000, 30000, seq, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    b.write(&mut f, payload).unwrap();
    f
}

/// The RFC 4571 stream of `pkts` cut into segments of awkward sizes that straddle records.
fn tcp_segments(pkts: &[Vec<u8>], isn: u32) -> Vec<(u32, Vec<u8>)> {
    let mut stream = Vec::new();
    for p in pkts {
        stream.extend_from_slice(&(p.len() as u16).to_be_bytes());
        stream.extend_from_slice(p);
    }
    let mut segs = Vec::new();
    let mut pos = 0;
    let sizes = [700usize, 1460, 33, 1000, 1460, 5];
    let mut k = 0;
    while pos < stream.len() {
        let end = (pos + sizes[k % sizes.len()]).min(stream.len());
        segs.push((isn.wrapping_add(1).wrapping_add(pos as u32), stream[pos..end].to_vec()));
        pos = end;
        k += 1;
    }
    segs
}

/// Capture order: SYN, then segments with swaps, retransmissions and an overlapping resend.
fn tcp_capture_order(segs: &[(u32, Vec<u8>)], isn: u32) -> Vec<Vec<u8>> {
    let mut frames = vec![tcp_frame(isn, true, &[])];
    let mut order: Vec<usize> = (0..segs.len()).collect();
    for i in (1..order.len() - 1).step_by(4) {
        order.swap(i, i + 1); // out of order
    }
    for (n, &i) in order.iter().enumerate() {
        frames.push(tcp_frame(segs[i].0, false, &segs[i].1));
        if n % 5 == 3 {
            frames.push(tcp_frame(segs[i].0, false, &segs[i].1)); // retransmission
        }
        if n % 7 == 6 && segs[i].1.len() > 10 {
            // overlapping resend: the tail of this segment only
            let half = segs[i].1.len() / 2;
            frames.push(tcp_frame(segs[i].0.wrapping_add(half as u32), false, &segs[i].1[half..]));
        }
    }
    frames
}

#[test]
fn own_pcap_udp_and_tcp_round_trip() {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::DataLink;

    let udp_pkts: Vec<Vec<u8>> =
        (0..50).map(|s| rtp(65500u16.wrapping_add(s), 0x0BEBC201, 200 + s as usize * 7)).collect();
    let tcp_pkts: Vec<Vec<u8>> = (0..40).map(|s| rtp(s, 0x0BEBC202, 900 + s as usize * 37)).collect();
    let isn = 0xFFFF_F000; // sequence numbers wrap inside the stream
    let segs = tcp_segments(&tcp_pkts, isn);

    let mut frames: Vec<Vec<u8>> = Vec::new();
    frames.push(udp_frame(137, 137, b"\x80\x00NetBIOS-ish noise that starts like RTP but is alone"));
    frames.push(udp_frame(5060, 5060, b"REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n"));
    for p in &udp_pkts {
        frames.push(udp_frame(15060, 30000, p));
    }
    // RTCP SR on the next port: not RTP.
    frames.push(udp_frame(15061, 30001, &[0x80, 200, 0, 6, 0x0B, 0xEB, 0xC2, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]));
    frames.extend(tcp_capture_order(&segs, isn));

    let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            Duration::from_micros(1_700_000_000_000_000 + i as u64 * 1000),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
    let buf = w.into_writer();
    assert_eq!(detect_format(&buf), Some(CaptureFormat::Pcap));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.pcap");
    std::fs::write(&path, &buf).unwrap();
    let cap = read_capture(&path).unwrap();
    assert!(cap.warnings.is_empty(), "{:?}", cap.warnings);

    let by_flow = |flow: &str| -> Vec<Vec<u8>> {
        cap.items
            .iter()
            .filter_map(|i| match i {
                CaptureItem::Rtp { flow: f, packet, .. } if f == flow => Some(packet.to_vec()),
                _ => None,
            })
            .collect()
    };
    same_packets(&by_flow("udp 192.168.1.64:15060->192.168.1.10:30000"), &udp_pkts);
    same_packets(&by_flow("tcp 192.168.1.64:40000->192.168.1.10:30000"), &tcp_pkts);
    assert_eq!(flows(&cap).len(), 2);
    let first = cap.items.iter().find_map(|i| match i {
        CaptureItem::Rtp { time_us, transport: Transport::Udp, .. } => *time_us,
        _ => None,
    });
    assert_eq!(first, Some(1_700_000_000_000_000 + 2000));
}

#[test]
fn own_pcapng_tcp_with_missing_segment_resyncs() {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::DataLink;

    let tcp_pkts: Vec<Vec<u8>> = (0..30).map(|s| rtp(s, 0x0BEBC203, 1200 + s as usize * 11)).collect();
    let isn = 1000;
    let mut segs = tcp_segments(&tcp_pkts, isn);
    segs.remove(10); // a segment the capture missed
    let mut frames = tcp_capture_order(&segs, isn);
    let udp_pkts: Vec<Vec<u8>> = (0..10).map(|s| rtp(s, 0x0BEBC204, 160)).collect();
    for p in &udp_pkts {
        frames.push(udp_frame(15062, 30002, p));
    }

    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
    let idb = InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen: 0xFFFF, options: vec![] };
    w.write_pcapng_block(idb).unwrap();
    for (i, f) in frames.iter().enumerate() {
        // pcap-file 2 writes `timestamp.as_nanos()` as raw units; the default unit is 1 us.
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(5_000_000 + i as u64),
            original_len: f.len() as u32,
            data: f.as_slice().into(),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
    }
    let buf = w.into_inner();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.pcapng");
    std::fs::write(&path, &buf).unwrap();
    let cap = read_capture(&path).unwrap();
    assert_eq!(cap.format, CaptureFormat::Pcapng);
    let f = flows(&cap);
    assert_eq!(f["udp 192.168.1.64:15062->192.168.1.10:30002"].0, 10);
    let tcp = &f["tcp 192.168.1.64:40000->192.168.1.10:30000"];
    // Only the packets touched by the hole are lost; the walker picks up after it.
    assert!(tcp.0 >= 26 && tcp.0 < 30, "{tcp:?}");
    assert!(cap.warnings.iter().any(|w| w.contains("not captured")), "{:?}", cap.warnings);
    let got: Vec<Vec<u8>> = rtp_packets(&cap).iter().map(|b| b.to_vec()).collect();
    for p in got.iter().filter(|p| p[11] == 0x03) {
        assert!(tcp_pkts.contains(p), "a TCP packet that was never sent");
    }
    let t0 = cap.items.iter().find_map(|i| match i {
        CaptureItem::Rtp { time_us, .. } => *time_us,
        _ => None,
    });
    assert!(t0.is_some_and(|t| (5_000_000..5_001_000).contains(&t)), "{t0:?}");
}

#[test]
fn own_rtptools_dump() {
    let pkts: Vec<Vec<u8>> = (0..20).map(|s| rtp(s, 0x0BEBC205, 300)).collect();
    let mut f = b"#!rtpplay1.0 192.168.1.10/30000\n".to_vec();
    f.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    f.extend_from_slice(&250_000u32.to_be_bytes());
    f.extend_from_slice(&[192, 168, 1, 64, 0x75, 0x30, 0, 0]);
    for (i, p) in pkts.iter().enumerate() {
        f.extend_from_slice(&((p.len() + 8) as u16).to_be_bytes());
        f.extend_from_slice(&(p.len() as u16).to_be_bytes());
        f.extend_from_slice(&(i as u32 * 40).to_be_bytes());
        f.extend_from_slice(p);
        if i == 5 {
            // An RTCP record (plen 0) in between.
            let rtcp = [0x80u8, 200, 0, 1, 0, 0, 0, 1];
            f.extend_from_slice(&16u16.to_be_bytes());
            f.extend_from_slice(&0u16.to_be_bytes());
            f.extend_from_slice(&200u32.to_be_bytes());
            f.extend_from_slice(&rtcp);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.rtpdump");
    std::fs::write(&path, &f).unwrap();
    let cap = read_capture(&path).unwrap();
    assert_eq!(cap.format, CaptureFormat::RtpTools);
    let got: Vec<Vec<u8>> = rtp_packets(&cap).iter().map(|b| b.to_vec()).collect();
    same_packets(&got, &pkts);
    let CaptureItem::Rtp { time_us, flow, .. } = &cap.items[3] else { panic!() };
    assert_eq!(*time_us, Some(1_700_000_000_250_000 + 120_000));
    assert_eq!(flow, "rtpdump 192.168.1.10/30000");
    // Truncated last record: what came before survives.
    std::fs::write(&path, &f[..f.len() - 5]).unwrap();
    let cap = read_capture(&path).unwrap();
    assert_eq!(rtp_packets(&cap).len(), 19);
    assert!(cap.warnings.iter().any(|w| w.contains("truncated packet at offset")), "{:?}", cap.warnings);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nonsense.bin");
    std::fs::write(&path, b"hello world, not a capture").unwrap();
    let e = read_capture(&path).unwrap_err().to_string();
    assert!(e.contains("nonsense.bin") && e.contains("unrecognised"), "{e}");
    let e = read_capture(&dir.path().join("missing.pcap")).unwrap_err().to_string();
    assert!(e.contains("missing.pcap"), "{e}");
    // Over the size cap (a sparse file, nothing is read).
    let big = dir.path().join("big.pcap");
    std::fs::File::create(&big).unwrap().set_len(gbgate::probe::reader::MAX_FILE_SIZE + 1).unwrap();
    let e = read_capture(&big).unwrap_err().to_string();
    assert!(e.contains("big.pcap") && e.contains("limit"), "{e}");
    std::fs::write(&path, [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]).unwrap();
    let e = read_capture(&path).unwrap_err().to_string();
    assert!(e.contains("truncated global header"), "{e}");
}

/// The project's own fixtures agree with their expected.json (checked structurally, by lengths).
#[test]
fn own_fixtures_match_expected_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let list = doc["fixtures"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    for fx in list {
        let name = fx["name"].as_str().unwrap();
        let n = |k: &str| fx[k].as_u64().unwrap() as usize;
        let cap = read_capture(&dir.join(format!("{name}.rtp"))).unwrap();
        assert_eq!(cap.format, CaptureFormat::RtpDump);
        let pkts: Vec<RtpPacket> = rtp_packets(&cap).into_iter().map(|p| RtpPacket::parse(p).unwrap()).collect();
        assert_eq!(pkts.len(), n("rtp_packets"), "{name}");
        assert!(pkts.iter().all(|p| p.ssrc as usize == n("ssrc") && p.payload.len() <= 1400));
        assert_eq!(pkts.iter().filter(|p| p.marker).count(), n("packs"), "{name}");
        assert!(pkts.iter().enumerate().all(|(i, p)| p.seq as usize == i));
        let ps = std::fs::read(dir.join(format!("{name}.ps"))).unwrap();
        let joined: Vec<u8> = pkts.iter().flat_map(|p| p.payload.to_vec()).collect();
        assert_eq!(joined, ps, "{name}");

        // Walk the PS by its length fields: pack headers are 14 bytes, everything else has len16.
        let (mut pos, mut packs, mut psm, mut vpes_pts, mut apes, mut vpes) = (0, 0, 0, 0, 0, 0);
        while pos < ps.len() {
            assert_eq!(&ps[pos..pos + 3], &[0, 0, 1], "{name} at {pos}");
            let id = ps[pos + 3];
            if id == 0xBA {
                packs += 1;
                pos += 14;
                continue;
            }
            let len = u16::from_be_bytes([ps[pos + 4], ps[pos + 5]]) as usize;
            match id {
                0xBC => psm += 1,
                0xE0 => {
                    vpes += 1;
                    vpes_pts += usize::from(ps[pos + 7] & 0x80 != 0);
                    assert!(len - 3 - ps[pos + 8] as usize <= 65_000);
                }
                0xC0 => apes += 1,
                _ => {}
            }
            pos += 6 + len;
        }
        assert_eq!(pos, ps.len());
        assert_eq!(packs, n("packs"), "{name}");
        assert_eq!(psm, n("keyframes"), "{name}");
        assert_eq!(vpes_pts, n("video_frames"), "{name}");
        assert_eq!(apes, n("audio_frames"), "{name}");
        if n("max_video_frame_bytes") > 65_000 {
            assert!(vpes > vpes_pts, "{name}: a large frame must span several PES");
        }
    }
}

/// Bit flips, bogus lengths and truncations of real captures never panic the readers.
#[test]
fn mutated_captures_never_panic() {
    let Some(fx) = shared() else { return };
    let mut seed = 0x9E37_79B9u32;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    for rel in [
        "real/avstackdocs/gb_live_media_udp_hik_nonps.pcapng",
        "real/avstackdocs/rtsp/rtsp_h265_udp.pcap",
        "real/avstackdocs/sip/sip_20_live_invite_signaling.pcapng",
        "synthetic/h264_g711a_8k.rtp",
    ] {
        let data = std::fs::read(fx.join(rel)).unwrap();
        let data = &data[..data.len().min(60_000)];
        for _ in 0..150 {
            let mut v = data.to_vec();
            for _ in 0..1 + rnd() % 8 {
                let i = rnd() % v.len();
                v[i] = rnd() as u8;
            }
            if rnd() % 2 == 0 {
                v.truncate(rnd() % (v.len() + 1));
            }
            let _ = gbgate::probe::reader::read_capture_bytes(Path::new(rel), Bytes::from(v));
        }
    }
}

/// Raw IP (v4 and v6) and Linux cooked v2 link types, written by a hand-made big-endian pcap.
#[test]
fn other_link_types_and_ipv6() {
    let pkts: Vec<Vec<u8>> = (0..5).map(|s| rtp(s, 0x0BEBC206, 100)).collect();
    let ip4 = |p: &[u8]| {
        let mut f = Vec::new();
        PacketBuilder::ipv4(CAM, GW, 64).udp(15070, 30004).write(&mut f, p).unwrap();
        f
    };
    let ip6 = |p: &[u8]| {
        let mut f = Vec::new();
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        (a[15], b[15]) = (1, 2);
        PacketBuilder::ipv6(a, b, 64).udp(15072, 30006).write(&mut f, p).unwrap();
        f
    };
    let sll2 = |p: &[u8]| {
        let mut f = vec![0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
        f.extend_from_slice(&ip4(p));
        f
    };
    type MakeFrame<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
    let cases: [(u32, MakeFrame, &str); 3] = [
        (101, &ip4, "udp 192.168.1.64:15070->192.168.1.10:30004"),
        (101, &ip6, "udp [::1]:15072->[::2]:30006"),
        (276, &sll2, "udp 192.168.1.64:15070->192.168.1.10:30004"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (linktype, frame, flow) in cases {
        let mut f = vec![0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        f.extend_from_slice(&linktype.to_be_bytes());
        for (i, p) in pkts.iter().enumerate() {
            let fr = frame(p);
            for v in [10 + i as u32, 0, fr.len() as u32, fr.len() as u32] {
                f.extend_from_slice(&v.to_be_bytes());
            }
            f.extend_from_slice(&fr);
        }
        let path = dir.path().join("lt.pcap");
        std::fs::write(&path, &f).unwrap();
        let cap = read_capture(&path).unwrap();
        assert!(cap.warnings.is_empty(), "{linktype}: {:?}", cap.warnings);
        let got: Vec<Vec<u8>> = rtp_packets(&cap).iter().map(|b| b.to_vec()).collect();
        same_packets(&got, &pkts);
        let CaptureItem::Rtp { flow: f0, time_us, .. } = &cap.items[0] else { panic!() };
        assert_eq!((f0.as_str(), *time_us), (flow, Some(10_000_000)));
    }
}
