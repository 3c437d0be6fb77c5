//! What the control center sends to create a channel, and its checks: every error names the
//! field at fault (`source.rtsp.url: ...`).
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PullTransport;
use crate::proto::sip::sdp::MediaTransport;

/// Longest id (it is also the stream name and a URL path segment).
pub const MAX_ID: usize = 64;
/// Longest source or push URL.
pub const MAX_URL: usize = 2048;
/// Pushes per channel.
pub const MAX_PUSH: usize = 8;
/// Default receive timeout (the issue: GB receive `timeout`, 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/v1/channels` body, as stored (D100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    pub id: String,
    pub source: SourceSpec,
    #[serde(default)]
    pub push: Vec<String>,
    #[serde(default)]
    pub record: bool,
    #[serde(default)]
    pub on_demand: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Start at once (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
}

/// One key: the source kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SourceSpec {
    #[serde(rename = "gb28181")]
    Gb28181(GbSource),
    #[serde(rename = "rtp")]
    Rtp(RtpSource),
    #[serde(rename = "rtsp")]
    Rtsp(RtspSource),
    #[serde(rename = "rtmp")]
    Rtmp(RtmpSource),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbSource {
    pub device_id: String,
    pub channel_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<MediaTransport>,
    /// A recording (Playback) instead of live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playback: Option<Playback>,
}

/// Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playback {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtpSource {
    /// 10 decimal digits (GB form).
    pub ssrc: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspSource {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<PullTransport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtmpSource {
    pub url: String,
}

/// A field that fails its check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), message: message.into() }
}

/// The checked figures of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub timeout: Duration,
    pub idle_stop: Option<Duration>,
    /// The `rtp` source's SSRC.
    pub ssrc: Option<u32>,
}

/// Whether `id` may name a channel (and its hub stream): 1-64 of `A-Z a-z 0-9 - _ . ~`, not `.`
/// or `..`.
pub fn id_ok(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && id != "."
        && id != ".."
}

fn gb_id(field: &str, v: &str) -> Result<(), FieldError> {
    if v.len() == 20 && v.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(bad(field, format!("{:?} is not a 20-digit GB code", clip(v))))
    }
}

/// A peer's text cut for an error message.
fn clip(v: &str) -> String {
    v.chars().take(80).collect()
}

fn url(field: &str, v: &str, scheme: &str) -> Result<(), FieldError> {
    if v.len() > MAX_URL {
        return Err(bad(field, format!("longer than {MAX_URL} bytes")));
    }
    let parsed = url::Url::parse(v).map_err(|e| bad(field, format!("{:?} is not a URL: {e}", clip(v))))?;
    if parsed.scheme() != scheme {
        return Err(bad(field, format!("{:?} is not an {scheme}:// URL", clip(v))));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad(field, format!("{:?} has no host", clip(v))));
    }
    Ok(())
}

fn duration(field: &str, v: &str, min: Duration, max: Duration) -> Result<Duration, FieldError> {
    let d = humantime::parse_duration(v)
        .map_err(|e| bad(field, format!("{:?} is not a duration like \"10s\" or \"5m\": {e}", clip(v))))?;
    if d < min || d > max {
        return Err(bad(field, format!("{v} is outside {min:?}..={max:?}")));
    }
    Ok(d)
}

/// Parses the 10-digit GB form of an SSRC.
pub fn parse_ssrc(v: &str) -> Option<u32> {
    (v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse::<u32>().ok())?
}

impl ChannelSpec {
    /// Checks every field; `recording` says whether `[record] dir` is set.
    pub fn check(&self, recording: bool) -> Result<Checked, FieldError> {
        if !id_ok(&self.id) {
            return Err(bad("id", format!("{:?}: 1-{MAX_ID} characters of A-Z a-z 0-9 - _ . ~", clip(&self.id))));
        }
        let mut ssrc = None;
        match &self.source {
            SourceSpec::Gb28181(g) => {
                gb_id("source.gb28181.device_id", &g.device_id)?;
                gb_id("source.gb28181.channel_id", &g.channel_id)?;
                if let Some(p) = g.playback {
                    if p.start == 0 || p.end <= p.start {
                        return Err(bad("source.gb28181.playback", "start and end are unix seconds, start < end"));
                    }
                    if self.on_demand {
                        return Err(bad("on_demand", "a playback channel cannot be on demand"));
                    }
                }
            }
            SourceSpec::Rtp(r) => {
                ssrc = Some(parse_ssrc(&r.ssrc).ok_or_else(|| {
                    bad("source.rtp.ssrc", format!("{:?} is not a 10-digit SSRC (0..4294967295)", clip(&r.ssrc)))
                })?);
                if self.on_demand {
                    return Err(bad("on_demand", "an rtp source is pushed by the camera: it cannot start on demand"));
                }
            }
            SourceSpec::Rtsp(r) => url("source.rtsp.url", &r.url, "rtsp")?,
            SourceSpec::Rtmp(r) => url("source.rtmp.url", &r.url, "rtmp")?,
        }
        if self.push.len() > MAX_PUSH {
            return Err(bad("push", format!("at most {MAX_PUSH} pushes")));
        }
        for (i, p) in self.push.iter().enumerate() {
            url(&format!("push[{i}]"), p, "rtmp")?;
        }
        if self.record {
            if !recording {
                return Err(bad("record", "recording needs [record] dir in the configuration"));
            }
            if matches!(self.source, SourceSpec::Rtsp(_) | SourceSpec::Rtmp(_)) {
                return Err(bad("record", "raw RTP recording is for gb28181 and rtp sources"));
            }
        }
        let timeout = match &self.timeout {
            Some(t) => duration("timeout", t, Duration::from_secs(1), Duration::from_secs(3600))?,
            None => DEFAULT_TIMEOUT,
        };
        let idle_stop = match &self.idle_stop {
            Some(t) => Some(duration("idle_stop", t, Duration::from_secs(1), Duration::from_secs(86_400))?),
            None => None,
        };
        Ok(Checked { timeout, idle_stop, ssrc })
    }

    pub fn autostart(&self) -> bool {
        self.autostart.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> ChannelSpec {
        serde_json::from_value(v).unwrap()
    }

    fn field(v: serde_json::Value) -> String {
        spec(v).check(false).unwrap_err().to_string()
    }

    #[test]
    fn every_error_names_its_field() {
        let gb =
            serde_json::json!({"gb28181": {"device_id": "34020000001320000001", "channel_id": "34020000001320000001"}});
        let ok = spec(serde_json::json!({"id": "cam1", "source": gb, "timeout": "5s"})).check(false).unwrap();
        assert_eq!(ok.timeout, Duration::from_secs(5));
        assert!(field(serde_json::json!({"id": "a/b", "source": gb})).starts_with("id: "));
        let e = field(serde_json::json!({"id": "c", "source": {"gb28181": {"device_id": "1", "channel_id": "x"}}}));
        assert!(e.starts_with("source.gb28181.device_id: \"1\" is not a 20-digit"), "{e}");
        let e = field(serde_json::json!({"id": "c", "source": {"rtp": {"ssrc": "4294967296"}}}));
        assert!(e.starts_with("source.rtp.ssrc: "), "{e}");
        let e = field(serde_json::json!({"id": "c", "source": {"rtsp": {"url": "http://x/y"}}}));
        assert!(e.starts_with("source.rtsp.url: \"http://x/y\" is not an rtsp:// URL"), "{e}");
        let e = field(
            serde_json::json!({"id": "c", "source": {"rtmp": {"url": "rtmp://h/a/b"}}, "push": ["rtmp://h/a", "nope"]}),
        );
        assert!(e.starts_with("push[1]: "), "{e}");
        let e = field(serde_json::json!({"id": "c", "source": gb, "timeout": "soon"}));
        assert!(e.starts_with("timeout: "), "{e}");
        let e = field(serde_json::json!({"id": "c", "source": gb, "idle_stop": "0s"}));
        assert!(e.starts_with("idle_stop: "), "{e}");
        let e = field(serde_json::json!({"id": "c", "source": gb, "record": true}));
        assert!(e.starts_with("record: "), "{e}");
        assert_eq!(parse_ssrc("0600000001"), Some(600_000_001));
        assert_eq!(parse_ssrc("600000001"), None);
    }
}
