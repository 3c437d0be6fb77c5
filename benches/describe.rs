//! RTSP DESCRIBE: what answering one costs on the server, from a live stream in the hub to the
//! SDP text. The stream holds a 2 s GOP of a 2 Mbit/s 720p camera (50 H.264 frames, the first a
//! keyframe with its parameter sets, and its audio), and is more than 2 s old, as a stream a
//! player joins usually is. Two cases: G.711 transcoded to AAC (the AAC track announced by the
//! media stage) and G.711 passed through.
//!
//! One iteration = `server::rtsp::stream_tracks` (the lookup DESCRIBE awaits) + the session's
//! DESCRIBE answer (SDP) serialised to bytes. Run with `cargo bench --bench describe`.
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use gbgate::config::HubConfig;
use gbgate::frame::{AudioConfig, Codec, CodecConfig, Frame, FrameCache, VideoConfig};
use gbgate::hub::{Hub, Source, Takeover, Transport};
use gbgate::proto::rtsp::{Env, Input, Parser, ServerSession, TrackDesc};

/// The session's environment: the tracks the driver looked up.
struct Tracks(Option<Vec<TrackDesc>>);

impl Env for Tracks {
    fn tracks(&mut self, _stream: &str) -> Option<Vec<TrackDesc>> {
        self.0.take()
    }
    fn bind_udp(&mut self, _index: usize) -> Option<(u16, u16)> {
        None
    }
    fn random(&mut self) -> u32 {
        4
    }
}

fn video_config() -> Arc<CodecConfig> {
    Arc::new(CodecConfig::Video(VideoConfig {
        vps: None,
        sps: Bytes::from_static(&[0x67, 0x64, 0x00, 0x1F, 0xAC, 0xD9, 0x40, 0x50, 0x05, 0xBB, 0x01, 0x10]),
        pps: Bytes::from_static(&[0x68, 0xEB, 0xE3, 0xCB, 0x22, 0xC0]),
        width: 1280,
        height: 720,
        profile: 100,
        level: 31,
    }))
}

/// A stream `name` with a 2 s GOP (and `audio` frames every 40 ms / 93 ms), aged past 2 s.
fn live_stream(hub: &Hub, name: &str, aac: bool) {
    let source = Source { transport: Transport::Udp, peer: SocketAddr::from(([127, 0, 0, 1], 9)), ssrc: Some(1) };
    let stream = hub.create(name, source, Takeover::Refuse).expect("stream");
    let video = video_config();
    let (codec, audio, step) = match aac {
        true => (
            Codec::Aac,
            Arc::new(CodecConfig::Audio(AudioConfig {
                sample_rate: 11025,
                channels: 1,
                asc: Some(Bytes::from_static(&[0x13, 0x88])),
            })),
            8359i64,
        ),
        false => (
            Codec::G711A,
            Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None })),
            3600,
        ),
    };
    if aac {
        stream.announce_audio(codec, audio.clone());
    }
    let mut audio_pts = 0i64;
    for i in 0..50i64 {
        let pts = i * 3600;
        let size = if i == 0 { 60_000 } else { 9_000 };
        stream.publish(Frame {
            codec: Codec::H264,
            pts,
            dts: pts,
            keyframe: i == 0,
            data: Bytes::from(vec![0x55; size]),
            config: video.clone(),
            cache: FrameCache::default(),
        });
        while audio_pts <= pts {
            stream.publish(Frame {
                codec,
                pts: audio_pts,
                dts: audio_pts,
                keyframe: true,
                data: Bytes::from(vec![0x21; if aac { 90 } else { 320 }]),
                config: audio.clone(),
                cache: FrameCache::default(),
            });
            audio_pts += step;
        }
    }
}

fn describe(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let hub = Hub::new(HubConfig::default(), 16);
    live_stream(&hub, "rtp/05F5E101", true);
    live_stream(&hub, "rtp/05F5E102", false);
    // Streams a player joins are usually older than 2 s (younger ones may still settle tracks).
    std::thread::sleep(Duration::from_millis(2100));
    let mut g = c.benchmark_group("describe");
    for (case, name) in [("aac_announced", "rtp/05F5E101"), ("g711_passthrough", "rtp/05F5E102")] {
        let uri = format!("rtsp://127.0.0.1:554/{name}");
        let request = format!("DESCRIBE {uri} RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n");
        g.bench_function(case, |b| {
            b.iter(|| {
                let mut parser = Parser::new();
                parser.push(request.as_bytes());
                let Ok(Some(Input::Request(req))) = parser.next_input() else { panic!("request") };
                let tracks = rt.block_on(gbgate::server::rtsp::stream_tracks(&hub, name)).expect("live");
                let mut session = ServerSession::new("1".into(), 60);
                let (resp, _) = session.handle(&req, &mut Tracks(Some(tracks)));
                assert_eq!(resp.status, 200);
                black_box(resp.to_bytes())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = describe
}
criterion_main!(benches);
