//! `GET /metrics`: the gateway's counters in the Prometheus text format (0.0.4), collected at
//! scrape time from what the drivers already count (D118). Nothing here runs on the media path.
use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::server::api::ApiState;
use crate::server::api_error::ApiError;

/// What one scrape reads.
struct Gateway(ApiState);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gateway")
    }
}

/// Longest stream name given its own series: names come from peers (an RTMP publisher's can be
/// megabytes), and cutting them could make two series the same.
const MAX_LABEL_BYTES: usize = 256;

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A family of counters (the encoder appends `_total`).
fn counters<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn counter_f(e: &mut DescriptorEncoder, name: &str, help: &str, samples: Vec<(Labels, f64)>) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<'a, L: EncodeLabelSet + 'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn n(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Gateway {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let e = &mut e;
        gauges(e, "gbgate_build_info", "The running version.", [(vec![("version", env!("CARGO_PKG_VERSION"))], 1)])?;

        // Streams and players.
        let streams = s.hub.list();
        gauge(e, "gbgate_streams", "Live streams in the hub.", n(streams.len()))?;
        gauge(e, "gbgate_streams_max", "The hub's stream limit ([rtp] max_streams).", n(s.hub.max_streams()))?;
        // The GOP caches against their global budget (D157).
        let (gop_used, gop_max, gop_evictions) = s.hub.gop_budget().usage();
        gauge(e, "gbgate_gop_cache_bytes", "Bytes held by every stream's GOP cache together.", n(gop_used))?;
        gauge(
            e,
            "gbgate_gop_cache_budget_bytes",
            "The GOP caches' global budget ([hub] gop_cache_total_bytes).",
            n(gop_max),
        )?;
        gauge(
            e,
            "gbgate_gop_cache_streams",
            "Streams whose GOP cache holds something.",
            n(s.hub.gop_budget().streams()),
        )?;
        counter(
            e,
            "gbgate_gop_cache_evictions",
            "GOP caches emptied to stay within the global budget.",
            gop_evictions,
        )?;
        let (hits, misses) = s.hub.gop_budget().starts();
        counter(e, "gbgate_gop_cache_hits", "Players of video streams that started at a cached keyframe.", hits)?;
        counter(e, "gbgate_gop_cache_misses", "Players of video streams that waited for the next keyframe.", misses)?;
        counter(
            e,
            "gbgate_direct_writes",
            "Frames the publisher wrote to a caught-up player itself (D183).",
            crate::server::direct::DIRECT_WRITES.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        counter(
            e,
            "gbgate_direct_fallbacks",
            "Times a player's socket did not take a whole frame and its task took over (D183).",
            crate::server::direct::DIRECT_FALLBACKS.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        let mut players: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut per_stream = Vec::with_capacity(streams.len().min(s.metrics_streams));
        // The oldest streams keep their series: a stream labelled once stays labelled while it lives.
        let mut by_age: Vec<_> = streams.iter().collect();
        by_age.sort_by_key(|st| st.started_at);
        for st in by_age {
            let counts = st.subscriber_counts();
            for (proto, c) in &counts {
                *players.entry(proto).or_default() += c;
            }
            if per_stream.len() < s.metrics_streams && st.name.len() <= MAX_LABEL_BYTES {
                per_stream.push((st.name.as_str(), st.stats(), counts, st.drops()));
            }
        }
        for proto in ["rtsp", "rtmp", "http-flv", "ws-flv"] {
            players.entry(proto).or_default();
        }
        gauges(
            e,
            "gbgate_players",
            "Players (and pushes, recorders) of all streams, by protocol.",
            players.iter().map(|(p, c)| (vec![("protocol", *p)], n(*c))),
        )?;
        gauge(
            e,
            "gbgate_stream_series_omitted",
            "Live streams without per-stream series ([api] metrics_streams reached, or a name over 256 bytes; their traffic still counts in the totals).",
            n(streams.len() - per_stream.len()),
        )?;
        let st = |f: fn(&crate::hub::StreamStats) -> u64| {
            per_stream.iter().map(move |(name, stats, _, _)| (vec![("stream", *name)], f(stats))).collect::<Vec<_>>()
        };
        counters(e, "gbgate_stream_bytes", "Bytes received for the stream.", st(|x| x.bytes_in))?;
        counters(e, "gbgate_stream_packets", "Packets received for the stream.", st(|x| x.packets))?;
        counters(e, "gbgate_stream_lost", "RTP packets lost (sequence gaps).", st(|x| x.lost))?;
        counters(
            e,
            "gbgate_stream_timestamp_repairs",
            "Timestamps repaired (video steps, jumps and PTS fixes; audio realigned or dropped ahead).",
            st(|x| {
                let r = &x.media.repair;
                r.video_zero_steps
                    + r.video_back_steps
                    + r.video_jumps
                    + r.video_pts_fixed
                    + r.audio_realigned
                    + r.audio_dropped_ahead
            }),
        )?;
        counters(
            e,
            "gbgate_stream_dropped_frames",
            "Frames the ingest dropped (undecodable, oversized, queue full).",
            st(|x| x.dropped_frames + x.oversize_drops + x.queue_drops),
        )?;
        counters(
            e,
            "gbgate_stream_transcode_errors",
            "Audio frames the transcoder lost (undecodable input or encoder error).",
            st(|x| x.media.transcode.as_ref().map_or(0, |t| t.errors)),
        )?;
        counters(
            e,
            "gbgate_stream_subscriber_drops",
            "Frames not delivered to slow players (they resumed at the next keyframe).",
            per_stream.iter().map(|(name, _, _, d)| (vec![("stream", *name)], *d)),
        )?;
        gauges(
            e,
            "gbgate_stream_players",
            "Players of the stream, by protocol.",
            per_stream.iter().flat_map(|(name, _, counts, _)| {
                counts.iter().map(move |(p, c)| (vec![("stream", *name), ("protocol", *p)], n(*c)))
            }),
        )?;

        // RTP ingest, all streams together (monotonic across stream ends).
        let rtp = s.rtp.snapshot();
        counter(e, "gbgate_rtp_udp_datagrams", "RTP datagrams received over UDP.", rtp.datagrams)?;
        counter(e, "gbgate_rtp_udp_bytes", "RTP bytes received over UDP.", rtp.datagram_bytes)?;
        counter(e, "gbgate_rtp_bad_packets", "Packets that were not RTP.", rtp.bad_packets)?;
        counter(e, "gbgate_rtp_unknown_ssrc_packets", "Packets of SSRCs nobody announced.", rtp.unknown_ssrc_packets)?;
        counter(e, "gbgate_rtp_streams_created", "RTP streams created.", rtp.streams_created)?;
        counter(e, "gbgate_rtp_streams_refused", "RTP streams refused (limits).", rtp.streams_refused)?;
        counter(e, "gbgate_rtp_queue_drops", "Packets dropped: a stream's queue was full.", rtp.queue_drops)?;
        counter(
            e,
            "gbgate_rtp_budget_drops",
            "Packets dropped: the global buffer budget was used up.",
            rtp.budget_drops,
        )?;
        counter(
            e,
            "gbgate_rtp_foreign_packets",
            "Packets with a live stream's SSRC from another source, dropped.",
            rtp.foreign_ssrc_packets,
        )?;
        counter(e, "gbgate_rtp_tcp_connections", "RTP over TCP connections accepted.", rtp.tcp_connections)?;
        counter(e, "gbgate_rtp_tcp_refused", "RTP over TCP connections refused.", rtp.tcp_refused)?;
        counter(
            e,
            "gbgate_rtp_tcp_slow_closed",
            "RTP over TCP connections closed for being slow.",
            rtp.tcp_slow_closed,
        )?;
        gauge(e, "gbgate_rtp_buffered_bytes", "Bytes all RTP streams hold now.", n(rtp.buffered_bytes))?;
        gauge(e, "gbgate_rtp_unknown_streams", "Live streams of unannounced SSRCs.", n(rtp.unknown_streams))?;

        // Listeners: admission (every TCP listener), then each protocol's own refusals.
        let adm: Vec<_> = s.listeners.iter().map(|(name, a)| (*name, a.snapshot())).collect();
        gauges(
            e,
            "gbgate_listener_connections",
            "Open connections per listener.",
            adm.iter().map(|(l, a)| (vec![("listener", *l)], n(a.open))),
        )?;
        let each = |f: fn(&crate::util::admit::AdmitSnapshot) -> u64| {
            adm.iter().map(move |(l, a)| (vec![("listener", *l)], f(a))).collect::<Vec<_>>()
        };
        counters(e, "gbgate_listener_admitted", "Connections admitted.", each(|a| a.admitted))?;
        counters(e, "gbgate_listener_refused", "Connections refused (global or per-source cap).", each(|a| a.refused))?;
        counters(e, "gbgate_listener_evicted", "Idle connections closed to make room.", each(|a| a.evicted))?;
        counters(e, "gbgate_listener_timed_out", "Connections closed for being too slow.", each(|a| a.timed_out))?;
        let rtmp = s.rtmp.snapshot();
        let rtsp = s.rtsp_ingest.snapshot();
        let flv = s.http_flv.snapshot();
        counters(
            e,
            "gbgate_publish_refused",
            "Publish requests refused (name taken or reserved, limits), by protocol.",
            [(vec![("protocol", "rtmp")], rtmp.publish_refused), (vec![("protocol", "rtsp")], rtsp.publish_refused)],
        )?;
        counters(
            e,
            "gbgate_auth_refused",
            "Publish and play requests refused for their credential, by protocol.",
            [
                (vec![("protocol", "rtmp")], rtmp.auth_refused),
                (vec![("protocol", "rtsp")], rtsp.auth_refused),
                (vec![("protocol", "http-flv")], flv.auth_refused),
            ],
        )?;
        counter(
            e,
            "gbgate_rtmp_refused_connections",
            "RTMP connections closed for what they sent.",
            rtmp.refused_connections,
        )?;
        counter(e, "gbgate_rtmp_oversized_messages", "RTMP messages refused for their size.", rtmp.oversized_messages)?;
        counter(e, "gbgate_rtmp_setup_timeouts", "RTMP connections that did not set up in time.", rtmp.setup_timeouts)?;
        gauge(e, "gbgate_rtmp_connections", "Open RTMP connections.", n(rtmp.connections))?;
        counter(
            e,
            "gbgate_flv_skipped_frames",
            "Frames HTTP-FLV/WebSocket-FLV players dropped, finding more than [http] max_queue_bytes queued.",
            flv.skipped_frames,
        )?;
        counter(e, "gbgate_flv_too_slow", "FLV players cut off by the hub for being too slow.", flv.too_slow)?;
        let hls = s.hls.snapshot();
        gauge(e, "gbgate_hls_segmenters", "HLS segmenters running (streams watched over HLS).", n(hls.segmenters))?;
        gauge(e, "gbgate_hls_bytes", "Bytes the HLS segmenters hold (segments, parts, init segments).", n(hls.bytes))?;
        gauge(e, "gbgate_hls_sessions", "HLS viewer sessions.", n(hls.sessions))?;
        counter(
            e,
            "gbgate_hls_auth_refused",
            "HLS play requests refused by [auth] or the on_play hook.",
            hls.auth_refused,
        )?;
        counter(
            e,
            "gbgate_hls_segmenters_stopped_idle",
            "HLS segmenters stopped after [hls] idle_timeout without requests.",
            hls.segmenters_stopped_idle,
        )?;
        gauge(e, "gbgate_rtsp_publishers", "RTSP publishers (ANNOUNCE/RECORD) now.", n(rtsp.publishers))?;
        counter(
            e,
            "gbgate_rtsp_udp_refused",
            "RTSP publisher UDP SETUPs refused (port pairs used up).",
            rtsp.udp_refused,
        )?;

        // GB28181 signalling.
        if let Some(gb) = &s.gb {
            let (online, offline) = gb.device_counts();
            gauges(
                e,
                "gbgate_sip_devices",
                "Registered GB28181 devices, by state.",
                [(vec![("state", "online")], n(online)), (vec![("state", "offline")], n(offline))],
            )?;
            // Every field of the signalling counters is a count of events (GbCounters, SipCounters).
            let v = gb.counters();
            for (group, help) in
                [("core", "GB28181 core refusals and drops"), ("sockets", "SIP messages on the sockets")]
            {
                let Some(fields) = v[group].as_object() else { continue };
                for (field, value) in fields {
                    let (Some(value), true) =
                        (value.as_u64(), field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                    else {
                        continue;
                    };
                    counter(e, &format!("gbgate_sip_{group}_{field}"), &format!("{help}: {field}."), value)?;
                }
            }
        }

        // Audio transcoding.
        let load = s.rtp.audio_load().unwrap_or_default();
        gauge(e, "gbgate_transcode_workers", "Audio transcoding threads.", n(load.workers))?;
        gauge(e, "gbgate_transcode_streams", "Streams whose audio is transcoded.", n(load.streams))?;
        gauge(e, "gbgate_transcode_queued_frames", "Audio frames waiting for a transcoder.", n(load.queued_frames))?;
        let workers: Vec<String> = (0..load.busy_seconds.len()).map(|i| i.to_string()).collect();
        counter_f(
            e,
            "gbgate_transcode_busy_seconds",
            "Time each transcoding thread spent working (its rate is the thread's load, 0..1).",
            workers.iter().zip(&load.busy_seconds).map(|(w, s)| (vec![("worker", w.as_str())], *s)).collect(),
        )?;

        // Callbacks to the control center.
        let cb = s.hub.notifier().snapshot();
        gauge(e, "gbgate_callbacks_enabled", "1 when [callbacks] is configured.", i64::from(cb.enabled))?;
        gauge(e, "gbgate_callbacks_queued", "Callback events waiting in the outbox.", n(cb.outbox.queued))?;
        gauge(e, "gbgate_callbacks_queued_bytes", "Bytes of the events in the outbox.", n(cb.outbox.queued_bytes))?;
        gauge(e, "gbgate_callbacks_max_bytes", "The outbox's byte budget.", n(cb.outbox.max_bytes))?;
        let kinds: Vec<_> = cb.outbox.by_event.iter().collect();
        let by_kind = |f: fn(&crate::notify::outbox::KindCounters) -> u64| {
            kinds.iter().map(move |(k, c)| (vec![("event", **k)], f(c))).collect::<Vec<_>>()
        };
        counters(e, "gbgate_callbacks_emitted", "Callback events put in the outbox.", by_kind(|c| c.emitted))?;
        counters(e, "gbgate_callbacks_sent", "Callback events the control center accepted.", by_kind(|c| c.sent))?;
        counters(e, "gbgate_callbacks_retried", "Callback POSTs repeated after a failure.", by_kind(|c| c.retried))?;
        counters(
            e,
            "gbgate_callbacks_dropped",
            "Callback events dropped unsent (outbox full, oldest first).",
            by_kind(|c| c.dropped),
        )?;
        counters(
            e,
            "gbgate_callbacks_failed",
            "Callback events given up after the last retry.",
            by_kind(|c| c.failed),
        )?;
        let a = &cb.authorize;
        counters(
            e,
            "gbgate_callbacks_authorize",
            "on_publish / on_play questions, by outcome.",
            [
                (vec![("result", "allowed")], a.allowed),
                (vec![("result", "denied")], a.denied),
                (vec![("result", "fallback")], a.fallback),
            ],
        )?;
        if let Some(w) = &s.webrtc {
            let w = w.snapshot();
            gauge(e, "gbgate_webrtc_sessions", "WebRTC (WHEP) sessions now.", n(w.sessions))?;
            counter(e, "gbgate_webrtc_opened", "WebRTC sessions opened.", w.opened)?;
            counter(e, "gbgate_webrtc_refused_full", "WHEP offers refused: max_sessions reached.", w.refused_full)?;
            counter(e, "gbgate_webrtc_timed_out", "WebRTC sessions ended by a connect or idle timeout.", w.timed_out)?;
            counter(
                e,
                "gbgate_webrtc_unrouted_datagrams",
                "Datagrams on the WebRTC port nobody's.",
                w.unrouted_datagrams,
            )?;
            counter(e, "gbgate_webrtc_queue_drops", "Datagrams dropped from slow sessions' queues.", w.queue_drops)?;
        }
        Ok(())
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Gateway(state)));
    let mut text = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        return ApiError::internal(format!("cannot encode the metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
}
