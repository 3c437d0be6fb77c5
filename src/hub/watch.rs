//! The hub's callback watcher (D96): stalls of live streams, and the periodic `traffic_report`
//! of GB ingest streams. One task; it only reads the hub, and `emit` never waits.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Hub, Stream, Transport};
use crate::notify::{Event, Notifier, TrafficStream};

/// How often stalls are looked for.
const STALL_TICK: Duration = Duration::from_millis(250);

/// Runs until `shutdown`. Does nothing when neither `stream_state` nor `traffic_report` has a target.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let notifier = hub.notifier();
    let (stall_after, report_every) = (notifier.stall_after(), notifier.report_interval());
    if stall_after.is_none() && report_every.is_none() {
        return;
    }
    let mut traffic = Traffic::default();
    let start = tokio::time::Instant::now();
    let mut next_report = report_every.map(|d| start + d);
    let mut tick = tokio::time::interval(STALL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if let Some(after) = stall_after {
            for s in hub.list() {
                s.check_stall(now, after);
            }
        }
        if let (Some(every), Some(at)) = (report_every, next_report) {
            if tokio::time::Instant::now() >= at {
                // The next report is one period after this one was due (no drift, no burst).
                next_report = Some(at + every);
                let streams = traffic.report(&hub.list(), &notifier, now);
                notifier.emit(Event::TrafficReport { interval_ms: every.as_millis() as u64, streams });
            }
        }
    }
}

/// What the last report saw of each stream, for bitrates.
#[derive(Default)]
struct Traffic {
    /// Stream name -> (its start time, bytes, when).
    last: HashMap<String, (SystemTime, u64, Instant)>,
}

impl Traffic {
    fn report(&mut self, streams: &[Arc<Stream>], notifier: &Notifier, now: Instant) -> Vec<TrafficStream> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for s in streams
            .iter()
            .filter(|s| matches!(s.source.transport, Transport::Udp | Transport::Tcp) && s.copy_of().is_none())
        {
            let st = s.stats();
            let r = &st.media.repair;
            let bitrate = match self.last.get(&s.name) {
                Some((started, bytes, at)) if *started == s.started_at && now > *at => {
                    let secs = now.duration_since(*at).as_secs_f64();
                    (st.bytes_in.saturating_sub(*bytes) as f64 * 8.0 / secs) as u64
                }
                _ => {
                    let secs = s.started_at.elapsed().unwrap_or_default().as_secs_f64().max(0.001);
                    (st.bytes_in as f64 * 8.0 / secs) as u64
                }
            };
            seen.insert(s.name.clone(), (s.started_at, st.bytes_in, now));
            out.push(TrafficStream {
                stream: s.name.clone(),
                channel: notifier.channel_of(&s.name),
                ssrc: s.source.ssrc.map(|x| format!("{x:010}")),
                source: s.source.peer.to_string(),
                transport: if s.source.transport == Transport::Udp { "udp" } else { "tcp" }.into(),
                bytes: st.bytes_in,
                packets: st.packets,
                lost: st.lost,
                bitrate,
                players: s.subscriber_count(),
                timestamp_repairs: r.video_zero_steps + r.video_back_steps + r.video_jumps + r.audio_realigned,
            });
        }
        // Only the streams still live are remembered: the map never outgrows the hub.
        self.last = seen;
        out
    }
}
