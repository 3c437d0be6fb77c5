use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::config::HumanDuration;
use crate::media::{AudioConfig, Codec, CodecConfig, VideoConfig};

pub(super) fn video(pts: i64, key: bool, size: usize) -> Frame {
    Frame {
        codec: Codec::H264,
        pts,
        dts: pts,
        keyframe: key,
        data: Bytes::from(vec![0u8; size]),
        config: Arc::new(CodecConfig::Video(VideoConfig::default())),
        cache: Default::default(),
    }
}

fn audio(pts: i64) -> Frame {
    Frame {
        codec: Codec::G711A,
        pts,
        dts: pts,
        keyframe: true,
        data: Bytes::from_static(&[0xd5; 320]),
        config: Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None })),
        cache: Default::default(),
    }
}

fn source() -> Source {
    Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(1) }
}

fn hub(queue: usize) -> Arc<Hub> {
    let cfg = HubConfig {
        gop_cache_bytes: 1 << 20,
        gop_cache_duration: HumanDuration(Duration::from_secs(10)),
        gop_cache_total_bytes: 1 << 30,
        subscriber_queue: queue,
        max_skips_per_minute: 3,
        ..HubConfig::default()
    };
    Hub::new(cfg, 2)
}

#[tokio::test]
async fn new_subscriber_starts_at_cached_gop_without_gap() {
    let hub = hub(64);
    let s = hub.create("a", source(), Takeover::Refuse).unwrap();
    s.publish(video(0, false, 10)); // before any keyframe: not cached
    s.publish(video(3600, true, 10));
    s.publish(audio(3600));
    s.publish(video(7200, false, 10));
    let mut sub = s.subscribe();
    s.publish(video(10800, false, 10));
    let got: Vec<i64> = [(); 4].iter().map(|_| 0).collect();
    let mut pts = Vec::new();
    for _ in got {
        pts.push(sub.recv().await.unwrap().pts);
    }
    assert_eq!(pts, vec![3600, 3600, 7200, 10800]);
}

#[tokio::test]
async fn slow_subscriber_skips_to_next_keyframe_and_fast_one_loses_nothing() {
    let hub = hub(4);
    let s = hub.create("a", source(), Takeover::Refuse).unwrap();
    let mut slow = s.subscribe();
    let mut fast = s.subscribe();
    let mut fast_got = Vec::new();
    let mut slow_got = Vec::new();
    for i in 0..10 {
        s.publish(video(i * 3600, i == 0 || i == 8, 10));
        fast_got.push(fast.recv().await.unwrap().pts / 3600);
        if i == 7 {
            // The slow one wakes up after falling 4 frames behind, and drains what it has.
            for _ in 0..4 {
                slow_got.push(slow.recv().await.unwrap().pts / 3600);
            }
        }
    }
    assert_eq!(fast_got, (0..10).collect::<Vec<_>>());
    assert_eq!(fast.drops(), 0);
    // It held 0..3, lost 4..7 and resumed at keyframe 8.
    for _ in 0..2 {
        slow_got.push(slow.recv().await.unwrap().pts / 3600);
    }
    assert_eq!(slow_got, vec![0, 1, 2, 3, 8, 9]);
    assert_eq!(slow.drops(), 4);
    assert_eq!(s.drops(), 4);
    assert_eq!(s.subscriber_count(), 2);
}

#[tokio::test]
async fn subscriber_that_keeps_falling_behind_is_disconnected() {
    let hub = hub(1);
    let s = hub.create("a", source(), Takeover::Refuse).unwrap();
    let mut sub = s.subscribe();
    for i in 0..40 {
        s.publish(video(i * 3600, i % 2 == 0, 10));
    }
    assert_eq!(s.subscriber_count(), 0);
    assert_eq!(sub.recv().await.unwrap().pts, 0);
    assert_eq!(sub.recv().await.unwrap_err(), SubscriptionEnded::TooSlow);
}

#[tokio::test]
async fn removing_a_stream_ends_subscriptions_and_limit_holds() {
    let hub = hub(8);
    let a = hub.create("a", source(), Takeover::Refuse).unwrap();
    hub.create("b", source(), Takeover::Refuse).unwrap();
    assert_eq!(hub.create("c", source(), Takeover::Refuse).err(), Some(PublishError::TooManyStreams(2)));
    let mut sub = a.subscribe();
    hub.remove(&a);
    assert_eq!(sub.recv().await.unwrap_err(), SubscriptionEnded::StreamEnded);
    assert!(hub.get("a").is_none());
    hub.create("c", source(), Takeover::Refuse).unwrap();
}

#[test]
fn gop_cache_is_bounded_and_restarts_at_keyframe() {
    let mut gop = GopCache::new(1000, Duration::from_secs(10));
    gop.push(video(0, true, 400));
    gop.push(video(3600, false, 400));
    assert_eq!(gop.len(), 2);
    gop.push(video(7200, false, 400)); // 1200 bytes > 1000: overflow
    assert_eq!(gop.len(), 0);
    gop.push(video(10800, false, 10));
    assert_eq!(gop.len(), 0);
    gop.push(video(14400, true, 10));
    assert_eq!((gop.len(), gop.bytes()), (1, 10));
    let mut gop = GopCache::new(1 << 20, Duration::from_secs(1));
    for i in 0..30 {
        gop.push(video(i * 3600, i == 0, 10));
    }
    assert_eq!(gop.len(), 0, "a GOP longer than the duration bound is dropped");
}

#[test]
fn audio_only_cache_is_a_short_window() {
    let mut gop = GopCache::new(1 << 20, Duration::from_secs(10));
    for i in 0..100 {
        gop.push(audio(i * 3600));
    }
    let first = gop.frames().next().unwrap().pts;
    assert!(99 * 3600 - first <= 45000 && gop.len() >= 12, "window of 0.5 s, got {}", gop.len());
}

#[tokio::test]
async fn a_live_name_belongs_to_its_source() {
    let hub = hub(8);
    let camera = hub.create("gb/1", source(), Takeover::SameSource).unwrap();
    let mut sub = camera.subscribe();
    // Another address with the camera's SSRC (over TCP), and an RTMP publisher: both refused.
    let intruder = Source { transport: Transport::Tcp, peer: "127.0.0.2:9".parse().unwrap(), ssrc: Some(1) };
    let err = hub.create("gb/1", intruder, Takeover::SameSource).err();
    assert!(matches!(err, Some(PublishError::NameTaken { .. })), "{err:?}");
    let rtmp = Source { transport: Transport::Rtmp, peer: "127.0.0.1:2".parse().unwrap(), ssrc: None };
    assert!(hub.create("gb/1", rtmp, Takeover::Refuse).is_err());
    // Another SSRC from the camera's own IP is not the same source either.
    let other_ssrc = Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(2) };
    assert!(hub.create("gb/1", other_ssrc, Takeover::SameSource).is_err());
    assert_eq!(hub.takeovers_refused(), 3);
    assert!(Arc::ptr_eq(&hub.get("gb/1").unwrap(), &camera));
    camera.publish(video(0, true, 10));
    assert_eq!(sub.recv().await.unwrap().pts, 0);
    // The same camera reconnecting over TCP from a new port gets its name back.
    let back = Source { transport: Transport::Tcp, peer: "127.0.0.1:7".parse().unwrap(), ssrc: Some(1) };
    let again = hub.create("gb/1", back, Takeover::SameSource).unwrap();
    assert!(!Arc::ptr_eq(&again, &camera));
    assert_eq!(sub.recv().await.unwrap_err(), SubscriptionEnded::StreamEnded);
}

#[test]
fn gop_caches_share_one_byte_budget() {
    let cfg = HubConfig {
        gop_cache_bytes: 1 << 20,
        gop_cache_duration: HumanDuration(Duration::from_secs(10)),
        gop_cache_total_bytes: 10_000,
        subscriber_queue: 8,
        max_skips_per_minute: 3,
        ..HubConfig::default()
    };
    let hub = Hub::new(cfg, 8);
    let a = hub.create("a", source(), Takeover::Refuse).unwrap();
    let b = hub.create("b", source(), Takeover::Refuse).unwrap();
    a.publish(video(0, true, 6_000));
    assert_eq!(hub.gop_budget().usage(), (6_000, 10_000, 0));
    // b's keyframe would take the total over 10,000: b's cache is emptied, a's is kept.
    b.publish(video(0, true, 6_000));
    assert_eq!(hub.gop_budget().usage(), (6_000, 10_000, 1));
    assert_eq!(a.gop_cache_usage().1, 6_000);
    assert_eq!(b.gop_cache_usage().1, 0);
    // A new keyframe of a replaces its cache (the accounting follows), and closing gives it back.
    a.publish(video(3600, true, 2_000));
    assert_eq!(hub.gop_budget().usage().0, 2_000);
    hub.remove(&a);
    drop(a);
    assert_eq!(hub.gop_budget().usage().0, 0);
    b.publish(video(3600, true, 6_000));
    assert_eq!(hub.gop_budget().usage().0, 6_000);
    hub.remove(&b);
    assert_eq!(hub.gop_budget().usage().0, 0);
}

#[test]
fn viewers_replace_their_label_subscriptions_in_the_counts() {
    let hub = hub(8);
    let s = hub.create("v", source(), Takeover::Refuse).unwrap();
    let _rtsp = s.subscribe_as("rtsp");
    let _segmenter = s.subscribe_as("hls");
    assert_eq!(s.subscriber_counts().get("hls"), Some(&1));
    let a = s.add_viewer("hls");
    let b = s.add_viewer("hls");
    let c = s.add_viewer("hls");
    assert_eq!(s.subscriber_counts().get("hls"), Some(&3));
    assert_eq!(s.subscriber_counts().get("rtsp"), Some(&1));
    drop((a, b));
    assert_eq!(s.subscriber_counts().get("hls"), Some(&1));
    drop(c);
    assert_eq!(s.subscriber_counts().get("hls"), None, "a segmenter alone is no viewer");
    assert_eq!(s.subscriber_count(), 2, "the subscriptions still hold the stream");
}

/// A player subscription gets a video stream's audio with the next video frame (one wake-up per
/// video frame, D178), in order, none lost; once video stops, audio goes at once, and what is
/// held goes before the end of the stream. A plain subscription gets every frame at once.
#[tokio::test]
async fn player_subscriptions_get_audio_with_the_next_video_frame() {
    let hub = hub(64);
    let s = hub.create("a", source(), Takeover::Refuse).unwrap();
    s.publish(video(0, true, 10));
    let mut player = s.subscribe_player("rtsp");
    let mut plain = s.subscribe_as("rtsp");
    let drain = |sub: &mut Subscription| {
        let mut got = Vec::new();
        while let Some(Ok(f)) = sub.try_recv() {
            got.push((f.kind(), f.pts));
        }
        got
    };
    assert_eq!(drain(&mut player), vec![(MediaKind::Video, 0)], "the cached GOP");
    assert_eq!(drain(&mut plain), vec![(MediaKind::Video, 0)]);
    s.publish(audio(1000));
    s.publish(audio(2000));
    assert_eq!(drain(&mut player), vec![], "audio waits for the next video frame");
    assert_eq!(drain(&mut plain), vec![(MediaKind::Audio, 1000), (MediaKind::Audio, 2000)]);
    s.publish(video(3600, false, 10));
    assert_eq!(
        drain(&mut player),
        vec![(MediaKind::Audio, 1000), (MediaKind::Audio, 2000), (MediaKind::Video, 3600)],
        "in order, with the video frame"
    );
    // Video stops: after AUDIO_WAITS_FOR_VIDEO audio is no longer held.
    std::thread::sleep(AUDIO_WAITS_FOR_VIDEO + Duration::from_millis(20));
    s.publish(audio(3000));
    assert_eq!(drain(&mut player), vec![(MediaKind::Audio, 3000)]);
    // Held audio is delivered before the end.
    s.publish(video(7200, false, 10));
    s.publish(audio(4000));
    hub.remove(&s);
    assert_eq!(drain(&mut player), vec![(MediaKind::Video, 7200), (MediaKind::Audio, 4000)]);
    assert_eq!(player.drops(), 0);
    assert!(matches!(player.recv().await, Err(SubscriptionEnded::StreamEnded)));
}

// D188: the GOP backlog's room goes with its last frame, by `recv` and by `try_recv`, and the
// frames still come in order, backlog first.
#[tokio::test]
async fn the_gop_backlogs_room_is_given_back_with_its_last_frame() {
    let hub = hub(64);
    for try_recv in [false, true] {
        let s = hub.create(if try_recv { "b" } else { "a" }, source(), Takeover::Refuse).unwrap();
        s.publish(video(0, true, 10));
        for i in 1..40 {
            s.publish(video(i * 3600, false, 10));
        }
        let mut sub = s.subscribe();
        assert!(sub.backlog_capacity() >= 40);
        s.publish(video(1000 * 3600, false, 10));
        for i in 0..40 {
            let f = if try_recv { sub.try_recv().unwrap().unwrap() } else { sub.recv().await.unwrap() };
            assert_eq!(f.pts, i * 3600);
            assert_eq!(sub.backlog_capacity() == 0, i == 39, "frame {i}");
        }
        let f = if try_recv { sub.try_recv().unwrap().unwrap() } else { sub.recv().await.unwrap() };
        assert_eq!(f.pts, 1000 * 3600);
    }
}
