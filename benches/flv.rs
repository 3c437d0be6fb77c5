//! FLV egress per player: what one second of a 2 Mbit/s stream (25 H.264 frames of 10,000 bytes,
//! 11 AAC frames) costs to turn into a player's bytes, for an RTMP player (rml_rtmp's chunk
//! serialiser) and an HTTP-FLV player (`proto::flv_file` tag headers around the same bodies).
//! Both start from the shared tag bodies (`frame.cache.flv`), already built as in a real fan-out.
//!
//! Run with `cargo bench --bench flv`.
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gbgate::frame::{AudioConfig, Codec, CodecConfig, Frame, FrameCache, VideoConfig};
use gbgate::proto::flv::HevcFlv;
use gbgate::proto::flv_file;
use gbgate::proto::flv_flow::{FlvFlow, Out};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig};

fn one_second() -> Vec<Frame> {
    let video = Arc::new(CodecConfig::Video(VideoConfig {
        vps: None,
        sps: Bytes::from_static(&[0x67, 0x42, 0xC0, 0x1E, 0x95, 0xA0, 0x58, 0x25, 0x90]),
        pps: Bytes::from_static(&[0x68, 0xCE, 0x3C, 0x80]),
        width: 1280,
        height: 720,
        profile: 66,
        level: 30,
    }));
    let audio = Arc::new(CodecConfig::Audio(AudioConfig {
        sample_rate: 11025,
        channels: 1,
        asc: Some(Bytes::from_static(&[0x14, 0x08])),
    }));
    let mut frames = Vec::new();
    for i in 0..25i64 {
        let mut data = vec![0, 0, 0x27, 0x0C, if i == 0 { 0x65 } else { 0x41 }];
        data.resize(10_000, 0x55);
        let dts = i * 3600;
        frames.push(Frame {
            codec: Codec::H264,
            pts: dts,
            dts,
            keyframe: i == 0,
            data: Bytes::from(data),
            config: video.clone(),
            cache: FrameCache::default(),
        });
        if i % 2 == 0 && i < 22 {
            frames.push(Frame {
                codec: Codec::Aac,
                pts: dts,
                dts,
                keyframe: true,
                data: Bytes::from(vec![0x21; 120]),
                config: audio.clone(),
                cache: FrameCache::default(),
            });
        }
    }
    // The shared bodies, as the first player of a fan-out builds them.
    for f in &frames {
        let _ = gbgate::proto::flv::cached_frame_tag(f, HevcFlv::Enhanced);
    }
    frames
}

fn flv_egress(c: &mut Criterion) {
    let frames = one_second();
    let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
    let mut g = c.benchmark_group("flv_egress_1s_2mbit");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("http_flv", |b| {
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let mut flow = FlvFlow::new("bench", HevcFlv::Enhanced);
            buf.clear();
            for f in &frames {
                flow.push(f, &mut out);
                for o in out.drain(..) {
                    flv_file::put_out(&mut buf, &o);
                }
            }
            black_box(buf.len())
        })
    });
    g.bench_function("rtmp", |b| {
        let (mut session, _) = ServerSession::new(ServerSessionConfig::new()).unwrap();
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            let mut flow = FlvFlow::new("bench", HevcFlv::Enhanced);
            buf.clear();
            for f in &frames {
                flow.push(f, &mut out);
                for o in out.drain(..) {
                    let p = match o {
                        Out::Meta(_) => continue,
                        Out::Video(b, ts) => session.send_video_data(1, b, ts, false),
                        Out::Audio(b, ts) => session.send_audio_data(1, b, ts, false),
                    };
                    buf.extend_from_slice(&p.unwrap().bytes);
                }
            }
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, flv_egress);
criterion_main!(benches);
