//! SIGHUP reload (D112): the new configuration is compared with the running one key by key;
//! what can change safely at runtime is applied, everything else that changed is logged and
//! shown (`GET /api/v1/config/reload`) as "needs a restart: <keys>". An invalid file changes
//! nothing: the running configuration stays and the error is logged and shown.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tracing::{error, info, warn};

use super::api::{Policy, SharedPolicy};
use crate::client::rtmp_push::StaticPushes;
use crate::config::Config;

/// Keys (or key prefixes: a table and everything under it) applied without a restart.
pub const RELOADABLE: &[&str] = &[
    "log.level",
    "api.token",
    "api.hosts",
    "api.allowed_origins",
    "rtmp.push",
    "rtmp.push_timeout",
    "auth",
    "sip.password",
    "sip.passwords",
];

/// Applies a new log filter; `Err` says why it was refused. Set by the binary, which owns the
/// subscriber.
pub type LogHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the last reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// RFC 3339 UTC.
    pub at: String,
    pub ok: bool,
    /// Why the new file was refused (the running configuration was kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Changed keys applied at once.
    pub applied: Vec<String>,
    /// Changed keys that take effect only after a restart.
    pub needs_restart: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadStatus {
    pub reloads: u64,
    pub failed: u64,
    pub last: Option<ReloadOutcome>,
}

/// The running configuration and what a reload reaches.
pub struct Reloader {
    current: Mutex<Config>,
    policy: SharedPolicy,
    pushes: Arc<StaticPushes>,
    /// `[auth]` as RTMP and RTSP read it.
    auth: Vec<crate::auth::SharedAuth>,
    /// The SIP core (device passwords); `None` without `[sip]`.
    gb: Option<crate::gb::Gb>,
    log_hook: Mutex<Option<LogHook>>,
    status: Mutex<ReloadStatus>,
}

/// `a.b.c` -> value of every leaf table entry; arrays are one value (`rtmp.push`, `pull`).
fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn flat(cfg: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    match toml::Value::try_from(cfg) {
        Ok(v) => flatten("", &v, &mut out),
        Err(e) => error!("cannot compare configurations: {e}"),
    }
    out
}

/// The keys whose values differ (added and removed keys included), sorted. Values are never
/// shown: some are secrets.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (flat(old), flat(new));
    let mut keys: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

fn reloadable(key: &str) -> bool {
    RELOADABLE.iter().any(|r| key == *r || key.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')))
}

fn now_text() -> String {
    let ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("{}Z", crate::util::format_time(i64::try_from(ms).unwrap_or(i64::MAX), true))
}

impl Reloader {
    pub fn new(
        cfg: Config,
        policy: SharedPolicy,
        pushes: Arc<StaticPushes>,
        auth: Vec<crate::auth::SharedAuth>,
        gb: Option<crate::gb::Gb>,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            current: Mutex::new(cfg),
            policy,
            pushes,
            auth,
            gb,
            log_hook: Mutex::new(None),
            status: Mutex::new(ReloadStatus::default()),
        })
    }

    pub fn set_log_hook(&self, hook: LogHook) {
        *self.log_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, outcome: ReloadOutcome) -> ReloadOutcome {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.reloads += 1;
        if !outcome.ok {
            s.failed += 1;
        }
        s.last = Some(outcome.clone());
        outcome
    }

    /// The new file could not be read or is invalid: nothing changes.
    pub fn refused(&self, error: String) -> ReloadOutcome {
        error!("configuration reload refused, the running configuration stays: {error}");
        self.record(ReloadOutcome {
            at: now_text(),
            ok: false,
            error: Some(error),
            applied: vec![],
            needs_restart: vec![],
        })
    }

    /// Applies what can change at runtime of a valid new configuration.
    pub fn apply(&self, new: Config) -> ReloadOutcome {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let changed = changed_keys(&current, &new);
        let (mut applied, mut needs_restart): (Vec<String>, Vec<String>) =
            changed.into_iter().partition(|k| reloadable(k));
        if applied.iter().any(|k| k == "log.level") {
            let hook = self.log_hook.lock().unwrap_or_else(|e| e.into_inner());
            let r = match hook.as_ref() {
                Some(h) => h(&new.log.level),
                None => Err("no log filter to change".into()),
            };
            if let Err(e) = r {
                warn!("log.level not applied: {e}");
                applied.retain(|k| k != "log.level");
                needs_restart.push("log.level".into());
            }
        }
        if applied.iter().any(|k| k.starts_with("api.")) {
            *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Policy::of(&new.api);
        }
        if applied.iter().any(|k| k.starts_with("auth.")) {
            for a in &self.auth {
                a.set(new.auth.clone());
            }
        }
        if applied.iter().any(|k| k == "sip.password" || k.starts_with("sip.passwords")) {
            // Resolved as at start: unset reads (or generates) the password file next to the db.
            let r = crate::gb::resolve_password(&new.sip);
            match (&self.gb, r) {
                (Some(gb), Ok(p)) if gb.set_passwords(p.clone(), new.sip.passwords.clone()) => {}
                (_, r) => {
                    let why = r.err().map_or("SIP is off or stopping".to_string(), |e| e.to_string());
                    warn!("SIP passwords not applied: {why}");
                    let (sip, rest): (Vec<String>, Vec<String>) =
                        applied.drain(..).partition(|k| k == "sip.password" || k.starts_with("sip.passwords"));
                    applied = rest;
                    needs_restart.extend(sip);
                }
            }
        }
        if applied.iter().any(|k| k.starts_with("rtmp.push")) {
            self.pushes.reload(&new.rtmp);
        }
        // Seam for `[callbacks]` (issue 10, H1): `notifier.reload(&new.callbacks)` goes here and
        // "callbacks" into RELOADABLE.
        // What was not applied keeps its running value, so the next reload reports it again.
        let mut next = new;
        keep_running(&current, &mut next, &needs_restart);
        *current = next;
        if applied.is_empty() && needs_restart.is_empty() {
            info!("configuration reloaded: nothing changed");
        } else {
            info!(applied = ?applied, "configuration reloaded");
        }
        if !needs_restart.is_empty() {
            warn!("configuration reloaded; needs a restart: {}", needs_restart.join(", "));
        }
        self.record(ReloadOutcome { at: now_text(), ok: true, error: None, applied, needs_restart })
    }
}

/// Puts the running values of the keys that need a restart back into `next` (a section at a
/// time: cheap, and the sections are plain data).
fn keep_running(running: &Config, next: &mut Config, needs_restart: &[String]) {
    let Ok(toml::Value::Table(run)) = toml::Value::try_from(running) else { return };
    let Ok(toml::Value::Table(mut new)) = toml::Value::try_from(&*next) else { return };
    for key in needs_restart {
        let mut path = key.split('.').peekable();
        let (mut src, mut dst) = (&run, &mut new);
        while let Some(part) = path.next() {
            if path.peek().is_none() {
                match src.get(part) {
                    Some(v) => {
                        dst.insert(part.to_string(), v.clone());
                    }
                    None => {
                        dst.remove(part);
                    }
                }
                break;
            }
            let (Some(toml::Value::Table(s)), Some(toml::Value::Table(d))) = (src.get(part), dst.get_mut(part)) else {
                break;
            };
            src = s;
            dst = d;
        }
    }
    if let Ok(c) = toml::Value::Table(new).try_into::<Config>() {
        *next = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_split_into_applied_and_needing_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.api.token = Some("0123456789abcdef".into());
        new.rtp.listen = "127.0.0.1:12000".parse().unwrap();
        new.log.level = "debug".into();
        let keys = changed_keys(&old, &new);
        assert_eq!(keys, ["api.token", "log.level", "rtp.listen"]);
        assert!(reloadable("api.token") && reloadable("log.level") && reloadable("rtmp.push"));
        assert!(!reloadable("rtp.listen") && !reloadable("rtmp.push_timeoutx") && !reloadable("api"));
        // What needs a restart keeps its running value.
        let mut next = new.clone();
        keep_running(&old, &mut next, &["rtp.listen".into()]);
        assert_eq!(next.rtp.listen, old.rtp.listen);
        assert_eq!(next.api.token, new.api.token);
        assert_eq!(changed_keys(&old, &next), ["api.token", "log.level"]);
    }
}
