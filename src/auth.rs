//! Publish and play authentication (sans-IO): a stream name, the query string the client sent,
//! its address and the time in; granted or refused out. Used by the RTMP server; RTSP can call
//! the same [`check`].
//!
//! Two credentials, either accepted (`[auth]` in the config):
//! - a signed URL with an expiry, the scheme Chinese live clouds use (Tencent's "txSecret"):
//!   `?txSecret=<MD5 hex of secret + stream + txTime>&txTime=<expiry, unix seconds in hex>`,
//!   where `stream` is the gbgate stream name (`live/cam1`: app and key, as the API shows it);
//! - a static key: `?key=<one of [auth] keys>`.
//!
//! The host itself (127.0.0.1, ::1) is exempt unless `loopback_exempt = false`; other addresses,
//! including the rest of 127.0.0.0/8 (tests use 127.0.0.2 as "another host"), are not.
use std::net::IpAddr;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Publishing needs a credential (default on).
    pub publish: bool,
    /// Playing needs a credential (default off).
    pub play: bool,
    /// 127.0.0.1 and ::1 need no credential.
    pub loopback_exempt: bool,
    /// Secret of signed URLs (`txSecret`); empty: signed URLs are not accepted.
    pub secret: String,
    /// Static keys accepted as `?key=...`.
    pub keys: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { publish: true, play: false, loopback_exempt: true, secret: String::new(), keys: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Play,
}

/// Why a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// No credential is needed for this action.
    Open,
    /// The gateway's own host.
    Loopback,
    Signed,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a credential is required (txSecret and txTime, or key)")]
    Missing,
    #[error("a credential is required, and none is configured ([auth] secret or keys)")]
    NotConfigured,
    #[error("the signed URL expired at {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("txTime is not hexadecimal unix seconds")]
    BadTime,
    #[error("wrong txSecret")]
    BadSignature,
    #[error("unknown key")]
    BadKey,
}

/// `secret + stream + tx_time`, MD5, lowercase hex.
pub fn signature(secret: &str, stream: &str, tx_time: &str) -> String {
    let digest = Md5::new().chain_update(secret).chain_update(stream).chain_update(tx_time).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The query string that signs `stream` until `expiry` (unix seconds).
pub fn signed_query(secret: &str, stream: &str, expiry: u64) -> String {
    let tx_time = format!("{expiry:X}");
    format!("txSecret={}&txTime={tx_time}", signature(secret, stream, &tx_time))
}

/// The value of `name` in a query string (`a=1&b=2`), undecoded.
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Equal without an early exit, so the time taken does not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_own_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST),
    }
}

/// `[auth]` as the listeners read it on each request; a SIGHUP reload replaces it (D112).
/// Cheap to clone (one rule set shared).
#[derive(Debug, Clone, Default)]
pub struct SharedAuth(std::sync::Arc<std::sync::RwLock<AuthConfig>>);

impl SharedAuth {
    pub fn new(cfg: AuthConfig) -> SharedAuth {
        SharedAuth(std::sync::Arc::new(std::sync::RwLock::new(cfg)))
    }

    /// The rules now.
    pub fn get(&self) -> AuthConfig {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, cfg: AuthConfig) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = cfg;
    }
}

/// What [`check`] reads its rules from: a fixed [`AuthConfig`] or the reloadable [`SharedAuth`].
pub trait AuthRules {
    fn with_rules<R>(&self, f: impl FnOnce(&AuthConfig) -> R) -> R;
}

impl AuthRules for AuthConfig {
    fn with_rules<R>(&self, f: impl FnOnce(&AuthConfig) -> R) -> R {
        f(self)
    }
}

impl AuthRules for SharedAuth {
    fn with_rules<R>(&self, f: impl FnOnce(&AuthConfig) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Checks one request. `query` is what followed `?` (empty if nothing); `now` is unix seconds.
pub fn check(
    rules: &impl AuthRules,
    action: Action,
    stream: &str,
    query: &str,
    peer: IpAddr,
    now: u64,
) -> Result<Granted, AuthError> {
    rules.with_rules(|cfg| check_rules(cfg, action, stream, query, peer, now))
}

fn check_rules(
    cfg: &AuthConfig,
    action: Action,
    stream: &str,
    query: &str,
    peer: IpAddr,
    now: u64,
) -> Result<Granted, AuthError> {
    let required = match action {
        Action::Publish => cfg.publish,
        Action::Play => cfg.play,
    };
    if !required {
        return Ok(Granted::Open);
    }
    if cfg.loopback_exempt && is_own_host(peer) {
        return Ok(Granted::Loopback);
    }
    if cfg.secret.is_empty() && cfg.keys.is_empty() {
        return Err(AuthError::NotConfigured);
    }
    if let Some(key) = param(query, "key") {
        return match cfg.keys.iter().any(|k| !k.is_empty() && same(k.as_bytes(), key.as_bytes())) {
            true => Ok(Granted::Key),
            false => Err(AuthError::BadKey),
        };
    }
    let (Some(secret), Some(tx_time)) = (param(query, "txSecret"), param(query, "txTime")) else {
        return Err(AuthError::Missing);
    };
    if cfg.secret.is_empty() {
        return Err(AuthError::BadSignature);
    }
    if tx_time.is_empty() || tx_time.len() > 16 {
        return Err(AuthError::BadTime);
    }
    let expiry = u64::from_str_radix(tx_time, 16).map_err(|_| AuthError::BadTime)?;
    // The signature first: an expiry is only worth reporting on a genuine URL.
    let want = signature(&cfg.secret, stream, tx_time);
    if !same(want.as_bytes(), secret.to_ascii_lowercase().as_bytes()) {
        return Err(AuthError::BadSignature);
    }
    if now > expiry {
        return Err(AuthError::Expired { expiry, now });
    }
    Ok(Granted::Signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig { secret: "s3cret".into(), keys: vec!["k1".into()], ..Default::default() }
    }

    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn signature_is_md5_of_secret_stream_and_hex_time() {
        // MD5("s3cret" + "live/cam1" + "6B49D200"), computed independently (python hashlib).
        assert_eq!(signature("s3cret", "live/cam1", "6B49D200"), "22e154d57c3796970be1f2ddefd77c6c");
        let q = signed_query("s3cret", "live/cam1", 0x6B49D200);
        assert!(q.ends_with("&txTime=6B49D200"), "{q}");
    }

    #[test]
    fn publishing_needs_a_valid_unexpired_credential_from_other_hosts() {
        let c = cfg();
        let ok = signed_query("s3cret", "live/cam1", NOW + 60);
        assert_eq!(check(&c, Action::Publish, "live/cam1", &ok, OTHER, NOW), Ok(Granted::Signed));
        assert_eq!(check(&c, Action::Publish, "live/cam1", "", OTHER, NOW), Err(AuthError::Missing));
        // Signed for another stream, or altered, or expired.
        assert_eq!(check(&c, Action::Publish, "live/cam2", &ok, OTHER, NOW), Err(AuthError::BadSignature));
        let wrong = ok.replace("txSecret=", "txSecret=0");
        assert_eq!(check(&c, Action::Publish, "live/cam1", &wrong, OTHER, NOW), Err(AuthError::BadSignature));
        let old = signed_query("s3cret", "live/cam1", NOW - 1);
        assert_eq!(
            check(&c, Action::Publish, "live/cam1", &old, OTHER, NOW),
            Err(AuthError::Expired { expiry: NOW - 1, now: NOW })
        );
        let bad_time = "txSecret=00&txTime=zz";
        assert_eq!(check(&c, Action::Publish, "live/cam1", bad_time, OTHER, NOW), Err(AuthError::BadTime));
        assert_eq!(check(&c, Action::Publish, "x", "key=k1", OTHER, NOW), Ok(Granted::Key));
        assert_eq!(check(&c, Action::Publish, "x", "key=k2", OTHER, NOW), Err(AuthError::BadKey));
    }

    #[test]
    fn the_host_itself_is_exempt_unless_configured_and_play_is_open_by_default() {
        let mut c = cfg();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        assert_eq!(check(&c, Action::Publish, "x", "", lo, NOW), Ok(Granted::Loopback));
        assert_eq!(check(&c, Action::Publish, "x", "", lo6, NOW), Ok(Granted::Loopback));
        assert_eq!(check(&c, Action::Play, "x", "", OTHER, NOW), Ok(Granted::Open));
        c.loopback_exempt = false;
        assert_eq!(check(&c, Action::Publish, "x", "", lo, NOW), Err(AuthError::Missing));
        c.play = true;
        assert_eq!(check(&c, Action::Play, "x", "key=k1", OTHER, NOW), Ok(Granted::Key));
        assert_eq!(check(&c, Action::Play, "x", "", OTHER, NOW), Err(AuthError::Missing));
        // Nothing configured: refused, never open.
        let none = AuthConfig::default();
        assert_eq!(check(&none, Action::Publish, "x", "", OTHER, NOW), Err(AuthError::NotConfigured));
    }
}
