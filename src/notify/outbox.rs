//! The callback outbox, sans-IO: events in (already serialised, with their sequence number),
//! POSTs due out, outcomes back in, `now` passed in. The driver in `notify/mod.rs` owns the HTTP
//! client and the clock.
//!
//! Policy (D94):
//! - One queue per target URL, sent one at a time in sequence order: a target sees `seq` rise
//!   (a retried event keeps its `seq` and stays at the head, so nothing overtakes it).
//! - Every queued body counts against one byte budget for all targets. Over it, the oldest
//!   queued event (lowest `seq`) is dropped first and counted; an event in flight is not dropped
//!   (its bytes still count until its answer comes back).
//! - A failed POST is retried after `retry_initial`, doubling up to `retry_max`, at most
//!   `retries` times; then the event is given up (counted as failed) and the next one goes.
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

/// The kinds of callback, as named in the JSON `event` field and in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    GatewayStarted,
    StreamState,
    UnknownSsrc,
    TrafficReport,
    OnPublish,
    OnPlay,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::GatewayStarted,
        EventKind::StreamState,
        EventKind::UnknownSsrc,
        EventKind::TrafficReport,
        EventKind::OnPublish,
        EventKind::OnPlay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::GatewayStarted => "gateway_started",
            EventKind::StreamState => "stream_state",
            EventKind::UnknownSsrc => "unknown_ssrc",
            EventKind::TrafficReport => "traffic_report",
            EventKind::OnPublish => "on_publish",
            EventKind::OnPlay => "on_play",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Bytes of bodies held (queued and in flight), all targets together.
    pub max_bytes: usize,
    /// Retries of one event after its first attempt.
    pub retries: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

#[derive(Debug)]
struct Item {
    seq: u64,
    kind: EventKind,
    body: Bytes,
    /// Attempts made so far.
    attempts: u32,
    due: Instant,
}

#[derive(Debug)]
struct Target {
    url: String,
    queue: VecDeque<Item>,
    in_flight: Option<Item>,
}

/// One POST to make now. `target` is handed back in [`Outbox::complete`].
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub target: usize,
    pub url: String,
    pub body: Bytes,
    pub seq: u64,
    pub kind: EventKind,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// How a POST ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The cc answered 2xx.
    Delivered,
    /// Anything else: refused, timed out, non-2xx.
    Failed,
}

/// Counters of one event kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KindCounters {
    /// Events put in the outbox.
    pub emitted: u64,
    /// Events the cc accepted (2xx).
    pub sent: u64,
    /// POSTs repeated after a failure.
    pub retried: u64,
    /// Events dropped unsent because the outbox was full.
    pub dropped: u64,
    /// Events given up after the last retry.
    pub failed: u64,
}

/// What the outbox holds and has done.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboxStats {
    /// Events waiting (in flight included).
    pub queued: usize,
    pub queued_bytes: usize,
    pub max_bytes: usize,
    pub emitted: u64,
    pub sent: u64,
    pub retried: u64,
    pub dropped: u64,
    pub failed: u64,
    pub by_event: BTreeMap<&'static str, KindCounters>,
}

#[derive(Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    targets: Vec<Target>,
    bytes: usize,
    counters: BTreeMap<EventKind, KindCounters>,
}

impl Outbox {
    pub fn new(cfg: OutboxConfig) -> Outbox {
        Outbox {
            cfg,
            targets: Vec::new(),
            bytes: 0,
            counters: EventKind::ALL.iter().map(|k| (*k, Default::default())).collect(),
        }
    }

    fn count(&mut self, kind: EventKind) -> &mut KindCounters {
        self.counters.entry(kind).or_default()
    }

    /// Queues `body` (event `seq` of `kind`) for `url`. Sequence numbers must rise across calls.
    /// Returns how many events were dropped to make room (the new one included when it alone is
    /// larger than the whole budget).
    pub fn push(&mut self, url: &str, seq: u64, kind: EventKind, body: Bytes, now: Instant) -> usize {
        self.count(kind).emitted += 1;
        if body.len() > self.cfg.max_bytes {
            self.count(kind).dropped += 1;
            return 1;
        }
        let t = match self.targets.iter().position(|t| t.url == url) {
            Some(i) => i,
            None => {
                self.targets.push(Target { url: url.to_string(), queue: VecDeque::new(), in_flight: None });
                self.targets.len() - 1
            }
        };
        self.bytes += body.len();
        self.targets[t].queue.push_back(Item { seq, kind, body, attempts: 0, due: now });
        let mut dropped = 0;
        while self.bytes > self.cfg.max_bytes {
            // The oldest queued event is the lowest seq among the queue heads (each queue is in
            // seq order). In-flight events are not candidates; the new event is queued, so one
            // exists unless only in-flight bodies fill the budget.
            let Some(oldest) = (0..self.targets.len())
                .filter(|i| !self.targets[*i].queue.is_empty())
                .min_by_key(|i| self.targets[*i].queue[0].seq)
            else {
                break;
            };
            let item = self.targets[oldest].queue.pop_front().expect("non-empty");
            self.bytes -= item.body.len();
            self.count(item.kind).dropped += 1;
            dropped += 1;
        }
        dropped
    }

    /// The POSTs to start now: the due head of every target that has nothing in flight.
    pub fn poll(&mut self, now: Instant) -> Vec<Dispatch> {
        let mut out = Vec::new();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if t.in_flight.is_some() || t.queue.front().is_none_or(|h| h.due > now) {
                continue;
            }
            let mut item = t.queue.pop_front().expect("checked");
            item.attempts += 1;
            out.push(Dispatch {
                target: i,
                url: t.url.clone(),
                body: item.body.clone(),
                seq: item.seq,
                kind: item.kind,
                attempt: item.attempts,
            });
            t.in_flight = Some(item);
        }
        out
    }

    /// The answer to the POST in flight to `target`.
    pub fn complete(&mut self, target: usize, outcome: Outcome, now: Instant) {
        let Some(item) = self.targets.get_mut(target).and_then(|t| t.in_flight.take()) else {
            return;
        };
        match outcome {
            Outcome::Delivered => {
                self.bytes -= item.body.len();
                self.count(item.kind).sent += 1;
            }
            Outcome::Failed if item.attempts > self.cfg.retries => {
                self.bytes -= item.body.len();
                self.count(item.kind).failed += 1;
            }
            Outcome::Failed => {
                self.count(item.kind).retried += 1;
                let due = now + self.backoff(item.attempts);
                self.targets[target].queue.push_front(Item { due, ..item });
            }
        }
    }

    /// Delay before the retry that follows attempt number `attempts` (1-based).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self.cfg.retry_initial.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        doubled.min(self.cfg.retry_max)
    }

    /// When [`Outbox::poll`] next has something to start (`None`: nothing queued, or only
    /// targets with a POST in flight).
    pub fn next_due(&self) -> Option<Instant> {
        self.targets.iter().filter(|t| t.in_flight.is_none()).filter_map(|t| t.queue.front().map(|h| h.due)).min()
    }

    /// Whether nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.targets.iter().all(|t| t.queue.is_empty() && t.in_flight.is_none())
    }

    pub fn stats(&self) -> OutboxStats {
        let mut s = OutboxStats {
            queued: self.targets.iter().map(|t| t.queue.len() + usize::from(t.in_flight.is_some())).sum(),
            queued_bytes: self.bytes,
            max_bytes: self.cfg.max_bytes,
            ..Default::default()
        };
        for (kind, c) in &self.counters {
            s.emitted += c.emitted;
            s.sent += c.sent;
            s.retried += c.retried;
            s.dropped += c.dropped;
            s.failed += c.failed;
            s.by_event.insert(kind.as_str(), c.clone());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(max_bytes: usize, retries: u32) -> Outbox {
        Outbox::new(OutboxConfig {
            max_bytes,
            retries,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(350),
        })
    }

    fn body(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn one_in_flight_per_target_in_seq_order() {
        let now = Instant::now();
        let mut o = outbox(1000, 3);
        o.push("http://a/", 1, EventKind::StreamState, body(10), now);
        o.push("http://b/", 2, EventKind::TrafficReport, body(10), now);
        o.push("http://a/", 3, EventKind::StreamState, body(10), now);
        let d = o.poll(now);
        assert_eq!(d.iter().map(|d| (d.url.as_str(), d.seq)).collect::<Vec<_>>(), [("http://a/", 1), ("http://b/", 2)]);
        assert!(o.poll(now).is_empty(), "a target has one POST in flight at a time");
        o.complete(d[0].target, Outcome::Delivered, now);
        let d2 = o.poll(now);
        assert_eq!(d2.len(), 1);
        assert_eq!(d2[0].seq, 3);
        assert_eq!(o.stats().sent, 1);
        assert_eq!(o.stats().queued, 2);
    }

    #[test]
    fn a_failed_event_is_retried_with_backoff_keeping_its_seq_and_place() {
        let now = Instant::now();
        let mut o = outbox(1000, 2);
        o.push("http://a/", 7, EventKind::StreamState, body(10), now);
        o.push("http://a/", 8, EventKind::StreamState, body(10), now);
        let d = o.poll(now);
        o.complete(d[0].target, Outcome::Failed, now);
        assert_eq!(o.next_due(), Some(now + Duration::from_millis(100)));
        assert!(o.poll(now + Duration::from_millis(99)).is_empty(), "seq 8 must not overtake the retried 7");
        let d = o.poll(now + Duration::from_millis(100));
        assert_eq!((d[0].seq, d[0].attempt), (7, 2));
        o.complete(d[0].target, Outcome::Failed, now);
        assert_eq!(o.next_due(), Some(now + Duration::from_millis(200)), "backoff doubles");
        let d = o.poll(now + Duration::from_millis(200));
        assert_eq!((d[0].seq, d[0].attempt), (7, 3));
        // Third failure: retries (2) used up, given up; 8 goes next.
        o.complete(d[0].target, Outcome::Failed, now);
        let s = o.stats();
        assert_eq!((s.failed, s.retried), (1, 2));
        let d = o.poll(now);
        assert_eq!(d[0].seq, 8);
    }

    #[test]
    fn backoff_is_capped() {
        let o = outbox(1000, 10);
        assert_eq!(o.backoff(1), Duration::from_millis(100));
        assert_eq!(o.backoff(2), Duration::from_millis(200));
        assert_eq!(o.backoff(3), Duration::from_millis(350));
        assert_eq!(o.backoff(60), Duration::from_millis(350));
    }

    #[test]
    fn over_budget_the_oldest_queued_event_goes_first_never_the_one_in_flight() {
        let now = Instant::now();
        let mut o = outbox(100, 3);
        o.push("http://a/", 1, EventKind::StreamState, body(40), now);
        let d = o.poll(now);
        assert_eq!(d[0].seq, 1);
        o.push("http://b/", 2, EventKind::TrafficReport, body(40), now);
        o.push("http://a/", 3, EventKind::StreamState, body(10), now);
        assert_eq!(o.push("http://a/", 4, EventKind::StreamState, body(40), now), 1);
        let s = o.stats();
        assert_eq!(s.by_event["traffic_report"].dropped, 1, "seq 2 was the oldest queued");
        assert_eq!(s.queued_bytes, 90);
        assert_eq!(s.queued, 3);
        // A body larger than the whole budget is dropped at once.
        assert_eq!(o.push("http://a/", 5, EventKind::TrafficReport, body(101), now), 1);
        assert_eq!(o.stats().dropped, 2);
        // Delivering the in-flight one frees its bytes.
        o.complete(d[0].target, Outcome::Delivered, now);
        assert_eq!(o.stats().queued_bytes, 50);
    }

    #[test]
    fn a_dead_target_keeps_the_outbox_bounded() {
        let mut now = Instant::now();
        let mut o = outbox(10_000, 1000);
        for seq in 0..100_000u64 {
            o.push("http://dead/", seq, EventKind::StreamState, body(100), now);
            for d in o.poll(now) {
                o.complete(d.target, Outcome::Failed, now);
            }
            now += Duration::from_millis(1);
            assert!(o.stats().queued_bytes <= 10_000);
        }
        let s = o.stats();
        assert!(s.dropped > 99_000, "{s:?}");
        assert_eq!(s.emitted, 100_000);
        assert_eq!(s.dropped + s.queued as u64 + s.failed + s.sent, 100_000);
    }
}
