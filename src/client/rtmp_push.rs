//! Static RTMP pushes (`[[rtmp.push]]`): every hub stream matching an entry is published to the
//! entry's URL by a [`PushSet`] (the one push implementation, `client::push`), started when the
//! stream appears and stopped when it is gone or the entry is removed (SIGHUP reload).
//! [`StaticPushes`] holds them for the API (`GET /api/v1/pushes`) and for the shutdown.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::push::{PushNotifier, PushOptions, PushSet, PushView};
use crate::config::{PushConfig, RtmpConfig};
use crate::hub::Hub;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);

/// True if `name` matches `pattern`, where `*` matches any run of characters (including '/').
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The push URL of one stream: `{stream}` replaced by the stream name.
pub fn push_url(entry: &PushConfig, stream: &str) -> String {
    entry.url.replace("{stream}", stream)
}

/// `rtmp://host[:port]/app/key...` -> (`host:port`, app, key, tcUrl), read by a URL parser
/// (`rtmp://[::1]/live/x` is host `::1`, port 1935). A query (`?txSecret=..`) stays on the key,
/// where origins look for it.
pub fn parse_url(text: &str) -> anyhow::Result<(String, String, String, String)> {
    let url = url::Url::parse(text).with_context(|| format!("push URL {text}"))?;
    if url.scheme() != "rtmp" {
        bail!("not an rtmp:// URL: {text}");
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("no host in {text}"))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let addr = format!("{host}:{}", url.port().unwrap_or(1935));
    let path = url.path().trim_start_matches('/');
    let (app, key) = path.split_once('/').unwrap_or((path, ""));
    if app.is_empty() {
        bail!("no app in {text}");
    }
    let key = match url.query() {
        Some(q) => format!("{key}?{q}"),
        None => key.to_string(),
    };
    Ok((addr, app.to_string(), key, format!("rtmp://{authority}/{app}")))
}

/// How long a push waits before reconnecting: 1 s doubling to 30 s, back to 1 s after a push that
/// was healthy (publishing accepted and media sent for [`HEALTHY_AFTER`]), however short.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

/// A push that has sent media this long after its publish was accepted counts as healthy.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(3);

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait after an attempt that ended; `healthy` if it had been healthy.
    pub fn after(&mut self, healthy: bool) -> Duration {
        if healthy {
            self.next = BACKOFF_MIN;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

/// The `[[rtmp.push]]` pushes: the entries (replaced on reload) and a [`PushSet`] per (stream, URL).
pub struct StaticPushes {
    entries: Mutex<(Vec<PushConfig>, PushOptions)>,
    sets: Mutex<BTreeMap<(String, String), Arc<PushSet>>>,
}

/// One static push as `GET /api/v1/pushes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StaticPushView {
    pub stream: String,
    #[serde(flatten)]
    pub push: PushView,
}

impl StaticPushes {
    pub fn new(cfg: &RtmpConfig) -> Arc<StaticPushes> {
        Arc::new(StaticPushes {
            entries: Mutex::new((cfg.push.clone(), PushOptions::of(cfg))),
            sets: Mutex::new(BTreeMap::new()),
        })
    }

    /// New entries (SIGHUP): pushes of removed or changed entries stop, new ones start within
    /// one poll.
    pub fn reload(&self, cfg: &RtmpConfig) {
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = (cfg.push.clone(), PushOptions::of(cfg));
    }

    pub fn views(&self) -> Vec<StaticPushView> {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.iter()
            .flat_map(|((stream, _), set)| {
                set.views().into_iter().map(|push| StaticPushView { stream: stream.clone(), push })
            })
            .collect()
    }

    /// Stops every push (cleanly, each within its deadline, all at once); returns how many were cut.
    pub async fn stop_all(&self) -> usize {
        let sets: Vec<_> =
            std::mem::take(&mut *self.sets.lock().unwrap_or_else(|e| e.into_inner())).into_values().collect();
        futures_util::future::join_all(sets.iter().map(|s| s.stop())).await.into_iter().sum()
    }

    /// One pass: starts the pushes that should run, stops the others.
    fn sync(&self, hub: &Arc<Hub>, shutdown: &CancellationToken) {
        let (entries, opts) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut want = BTreeMap::new();
        for stream in hub.list() {
            for entry in entries.iter().filter(|e| matches(&e.stream, &stream.name)) {
                want.insert((stream.name.clone(), push_url(entry, &stream.name)), ());
            }
        }
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<_> = sets.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
        for key in gone {
            if let Some(set) = sets.remove(&key) {
                tokio::spawn(async move { set.stop().await });
            }
        }
        // Push failures and recoveries become stream_state callbacks (D113).
        let notifier: PushNotifier = hub.notifier().into();
        for (key, ()) in want {
            if sets.contains_key(&key) {
                continue;
            }
            info!(stream = %key.0, url = %super::push::redact(&key.1), "RTMP push ([[rtmp.push]]) starts");
            let set =
                PushSet::start_with(hub.clone(), &key.0, vec![key.1.clone()], notifier.clone(), shutdown.clone(), opts);
            sets.insert(key, Arc::new(set));
        }
    }
}

/// Keeps a push per (matching stream, push entry) until `shutdown`, then stops them cleanly.
pub async fn run_pushes(hub: Arc<Hub>, pushes: Arc<StaticPushes>, shutdown: CancellationToken) {
    loop {
        pushes.sync(&hub, &shutdown);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    pushes.stop_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_urls() {
        assert!(matches("rtp/*", "rtp/0BEBC201"));
        assert!(matches("*", "live/a/b"));
        assert!(!matches("rtp/*", "live/x"));
        assert!(matches("a*c*e", "abcde"));
        assert!(!matches("a*c*e", "abde"));
        assert!(matches("live/x", "live/x"));
        let e = PushConfig { stream: "*".into(), url: "rtmp://h/app/{stream}".into() };
        assert_eq!(push_url(&e, "rtp/1"), "rtmp://h/app/rtp/1");
        let (addr, app, key, tc) = parse_url("rtmp://127.0.0.1:1936/live/rtp/1").unwrap();
        assert_eq!((addr.as_str(), app.as_str(), key.as_str()), ("127.0.0.1:1936", "live", "rtp/1"));
        assert_eq!(tc, "rtmp://127.0.0.1:1936/live");
        assert_eq!(parse_url("rtmp://h/live").unwrap().0, "h:1935");
        assert!(parse_url("http://h/x").is_err());
        // IPv6 literals, ports and queries (issue 8: `[::1]` was read as a host with no port).
        let (addr, app, key, tc) = parse_url("rtmp://[::1]/app/key").unwrap();
        assert_eq!((addr.as_str(), app.as_str(), key.as_str()), ("[::1]:1935", "app", "key"));
        assert_eq!(tc, "rtmp://[::1]/app");
        assert!(addr.parse::<std::net::SocketAddr>().is_ok());
        assert_eq!(parse_url("rtmp://[::1]:1936/app/k").unwrap().0, "[::1]:1936");
        let (_, _, key, _) = parse_url("rtmp://h/live/cam1?txSecret=ab&txTime=FF").unwrap();
        assert_eq!(key, "cam1?txSecret=ab&txTime=FF");
        assert!(parse_url("rtmp:///live/x").is_err());
        assert!(parse_url("rtmp://h/").is_err());
    }

    #[test]
    fn the_backoff_doubles_and_resets_after_a_healthy_push() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.after(false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        // A push that dropped after 18 s of healthy publishing retries at once, not in 30 s.
        assert_eq!(b.after(true), Duration::from_secs(1));
        assert_eq!(b.after(false), Duration::from_secs(2));
    }
}
