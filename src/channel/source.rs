//! The I/O of each source kind: start it into the channel's hub stream, keep it running, tear
//! it down (BYE, TEARDOWN). The driver in `super` feeds the outcomes to the state machine.
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::pull::{PullError, PullOptions};
use crate::frame::Frame;
use crate::gb::{Gb, HistoryRequest};
use crate::hub::{Source, Stream, Subscription, Takeover};
use crate::media::MediaKind;
use crate::relay::source::PullSource;
use crate::server::publish::Publisher;

use super::spec::SourceSpec;
use super::{Chan, Inner};

/// How often a live channel looks at its stream (idle stop, stats, the RTP stream's life).
const TICK: Duration = Duration::from_millis(200);

/// A started source.
// One per running channel, moved once into `run`: the size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Live {
    /// An RTSP or RTMP pull publishing into the channel's stream.
    Pull { src: PullSource, publisher: Publisher, stream: Arc<Stream> },
    /// A GB session (`gb/<channel>` or a playback stream) forwarded into the channel's stream.
    Gb { gb: Gb, gb_stream: String, src: Arc<Stream>, sub: Subscription, out: Arc<Stream>, playback: bool },
    /// A camera pushing RTP with the announced SSRC: the RTP server publishes it under the id.
    Rtp { stream: Arc<Stream> },
}

/// Why a live source ended.
pub(super) enum End {
    Stop,
    NoData(Duration),
    Ended(String),
    Finished(String),
    Idle(Duration),
}

fn is_video_keyframe(f: &Frame) -> bool {
    f.keyframe && f.kind() == MediaKind::Video
}

/// Starts the channel's source; resolves once its hub stream has a keyframe. `Ok` carries how it
/// went live (the reason shown with `live`).
pub(super) async fn connect(inner: &Inner, chan: &Chan) -> Result<(Live, String), String> {
    let timeout = chan.checked.timeout;
    match &chan.spec.source {
        SourceSpec::Rtsp(r) => {
            let opts = PullOptions { transport: r.transport.unwrap_or_default(), timeout };
            pull(inner, chan, &r.url, &opts).await
        }
        SourceSpec::Rtmp(r) => pull(inner, chan, &r.url, &PullOptions { timeout, ..Default::default() }).await,
        SourceSpec::Rtp(_) => {
            let ssrc = chan.checked.ssrc.unwrap_or(0);
            // Announced while the channel runs (withdrawn when it stops): the RTP server names
            // the camera's stream by the channel id.
            inner.rtp.announce(ssrc, chan.spec.id.clone());
            // A camera that pushed before the channel existed is published as `rtp/<SSRC hex>`
            // (the cc learns of it by `unknown_ssrc` and creates the channel): end that stream,
            // so its next packets start the channel's stream.
            if let Some(unknown) = inner.hub.get(&crate::server::rtp::unknown_stream_name(ssrc)) {
                if unknown.source.ssrc == Some(ssrc) {
                    unknown.event("stop", &format!("claimed by channel {}", chan.spec.id));
                    inner.hub.remove(&unknown);
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if let Some(s) = inner.hub.get(&chan.spec.id) {
                    if s.source.ssrc == Some(ssrc) && s.has_keyframe() {
                        let how = format!("RTP from {} ({:?})", s.source.peer, s.source.transport).to_lowercase();
                        return Ok((Live::Rtp { stream: s }, how));
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "no RTP with SSRC {} within {}",
                        crate::server::rtp::ssrc_text(ssrc),
                        super::machine::secs(timeout)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        SourceSpec::Gb28181(g) => {
            let gb = inner.gb.clone().ok_or("SIP is disabled ([sip] enabled = false)")?;
            let info = match g.playback {
                Some(p) => gb
                    .history(HistoryRequest {
                        device: Some(g.device_id.clone()),
                        channel: g.channel_id.clone(),
                        start: p.start,
                        end: p.end,
                        download_speed: None,
                        transport: g.transport,
                    })
                    .await
                    .map_err(|e| e.to_string())?,
                None => {
                    gb.play(Some(g.device_id.clone()), &g.channel_id, g.transport).await.map_err(|e| e.to_string())?
                }
            };
            let fail = |e: String| {
                let gb = gb.clone();
                let stream = info.stream.clone();
                async move {
                    // The channel owns the session it asked for: BYE it.
                    let _ = gb.stop(&stream).await;
                    Err(e)
                }
            };
            // Media is due within the channel's timeout, not the gateway's default.
            let deadline = tokio::time::Instant::now() + timeout;
            let src = loop {
                if let Some(s) = inner.hub.get(&info.stream).filter(|s| s.has_keyframe()) {
                    break s;
                }
                if tokio::time::Instant::now() >= deadline {
                    let seen = inner.hub.get(&info.stream).is_some();
                    let what = if seen { "no keyframe" } else { "no RTP" };
                    return fail(format!("{what} from the device within {}", super::machine::secs(timeout))).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut sub = src.subscribe_as("channel");
            let out = match inner.hub.create(&chan.spec.id, src.source.clone(), Takeover::Refuse) {
                Ok(o) => o,
                Err(e) => return fail(e.to_string()).await,
            };
            out.mark_copy_of(&src.name);
            if let Some((codec, config)) = src.announced_audio() {
                out.announce_audio(codec, config);
            }
            // The subscription starts at the GOP cache's keyframe: forward until the channel's
            // stream has it, so a player asking now starts at once.
            while !out.has_keyframe() {
                match tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + TICK), sub.recv()).await {
                    Ok(Ok(f)) => out.publish(f),
                    _ => {
                        inner.hub.remove(&out);
                        return fail("the device's stream ended before its first keyframe".into()).await;
                    }
                }
            }
            out.set_stats(src.stats());
            let how =
                format!("{} from {} over {}", if g.playback.is_some() { "playback" } else { "live" }, info.device, {
                    let t = src.source.transport;
                    format!("{t:?}").to_lowercase()
                });
            Ok((Live::Gb { gb, gb_stream: info.stream, src, sub, out, playback: g.playback.is_some() }, how))
        }
    }
}

/// An RTSP/RTMP pull: connect, wait for the first video keyframe, publish (as the relay does).
async fn pull(inner: &Inner, chan: &Chan, url: &str, opts: &PullOptions) -> Result<(Live, String), String> {
    let mut src = PullSource::connect(url, opts).await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let key = loop {
        match tokio::time::timeout_at(deadline, src.next_frame()).await {
            Ok(Ok(f)) if is_video_keyframe(&f) => break f,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no video keyframe within {}", super::machine::secs(opts.timeout))),
        }
    };
    let source = Source { transport: src.transport(), peer: src.peer(), ssrc: None };
    let stream = inner.hub.create(&chan.spec.id, source, Takeover::Refuse).map_err(|e| e.to_string())?;
    let mut publisher = Publisher::new(stream.clone(), &inner.rtp);
    publisher.frame(key);
    while !stream.has_keyframe() {
        match tokio::time::timeout_at(deadline, src.next_frame()).await {
            Ok(Ok(f)) => publisher.frame(f),
            r => {
                let e = match r {
                    Ok(Err(e)) => e,
                    _ => PullError::NoKeyframe("the keyframe did not reach the hub".into()),
                };
                publisher.finish(&inner.hub);
                src.close().await;
                return Err(e.to_string());
            }
        }
    }
    let how = format!("pulling from {}", src.peer());
    Ok((Live::Pull { src, publisher, stream }, how))
}

/// Watches whether anybody plays the channel's stream, for `idle_stop`.
struct IdleWatch {
    after: Option<Duration>,
    since: Option<Instant>,
}

impl IdleWatch {
    fn idle(&mut self, stream: &Stream, now: Instant) -> Option<Duration> {
        let after = self.after?;
        if stream.subscriber_count() > 0 {
            self.since = None;
            return None;
        }
        (now.duration_since(*self.since.get_or_insert(now)) >= after).then_some(after)
    }
}

/// Runs a live source until it ends, is idle, or `stop`; then tears it down.
pub(super) async fn run(inner: &Inner, chan: &Chan, live: Live, stop: &tokio_util::sync::CancellationToken) -> End {
    let timeout = chan.checked.timeout;
    let mut idle = IdleWatch { after: chan.checked.idle_stop, since: None };
    match live {
        Live::Pull { mut src, mut publisher, stream } => {
            let mut next_check = Instant::now() + TICK;
            let end = loop {
                let r = tokio::select! {
                    _ = stop.cancelled() => break End::Stop,
                    r = tokio::time::timeout(timeout, src.next_frame()) => r,
                };
                match r {
                    Ok(Ok(f)) => publisher.frame(f),
                    Ok(Err(e)) => break End::Ended(e.to_string()),
                    Err(_) => break End::NoData(timeout),
                }
                let now = Instant::now();
                if now >= next_check {
                    next_check = now + TICK;
                    if stream.is_closed() {
                        break End::Ended("the stream was removed from the hub".into());
                    }
                    if let Some(d) = idle.idle(&stream, now) {
                        break End::Idle(d);
                    }
                }
            };
            stream.event("stop", &format!("channel {}: {}", chan.spec.id, end_text(&end)));
            publisher.finish(&inner.hub);
            src.close().await;
            end
        }
        Live::Gb { gb, gb_stream, src, mut sub, out, playback } => {
            let mut tick = tokio::time::interval(TICK);
            let mut last_frame = Instant::now();
            let end = loop {
                tokio::select! {
                    _ = stop.cancelled() => break End::Stop,
                    r = sub.recv() => match r {
                        Ok(f) => {
                            last_frame = Instant::now();
                            out.publish(f);
                        }
                        Err(e) => {
                            // Why the device's session ended, as the signalling recorded it.
                            let why = gb
                                .ended_sessions()
                                .into_iter()
                                .rev()
                                .find(|s| s.stream == gb_stream)
                                .map(|s| s.reason)
                                .unwrap_or_else(|| e.to_string());
                            if playback {
                                break End::Finished(format!("playback ended: {why}"));
                            }
                            break End::Ended(why);
                        }
                    },
                    _ = tick.tick() => {
                        let now = Instant::now();
                        out.set_stats(src.stats());
                        if now.duration_since(last_frame) >= timeout {
                            break End::NoData(timeout);
                        }
                        if out.is_closed() {
                            break End::Ended("the stream was removed from the hub".into());
                        }
                        if let Some(d) = idle.idle(&out, now) {
                            break End::Idle(d);
                        }
                    }
                }
            };
            drop(sub);
            out.event("stop", &format!("channel {}: {}", chan.spec.id, end_text(&end)));
            inner.hub.remove(&out);
            if !matches!(end, End::Finished(_)) {
                // BYE (also on no data: the device may be sending somewhere else).
                if let Err(e) = gb.stop(&gb_stream).await {
                    tracing::debug!(channel = %chan.spec.id, "BYE of {gb_stream}: {e}");
                }
            }
            end
        }
        Live::Rtp { stream } => {
            let mut tick = tokio::time::interval(TICK);
            let mut packets = stream.stats().packets;
            let mut last_data = Instant::now();
            let end = loop {
                tokio::select! {
                    _ = stop.cancelled() => break End::Stop,
                    _ = tick.tick() => {}
                }
                let now = Instant::now();
                if stream.is_closed() {
                    break End::Ended("the camera's RTP stream ended".into());
                }
                let p = stream.stats().packets;
                if p != packets {
                    (packets, last_data) = (p, now);
                } else if now.duration_since(last_data) >= timeout {
                    break End::NoData(timeout);
                }
                if let Some(d) = idle.idle(&stream, now) {
                    break End::Idle(d);
                }
            };
            if matches!(end, End::Stop | End::Idle(_)) {
                // The camera keeps sending: the stream goes, and the SSRC is withdrawn by the
                // driver, so its packets are no longer published under the id.
                stream.event("stop", &format!("channel {}: {}", chan.spec.id, end_text(&end)));
                inner.hub.remove(&stream);
            }
            end
        }
    }
}

fn end_text(end: &End) -> String {
    match end {
        End::Stop => "stopped".into(),
        End::NoData(d) => format!("no data for {}", super::machine::secs(*d)),
        End::Ended(r) | End::Finished(r) => r.clone(),
        End::Idle(d) => format!("idle stop: no player for {}", super::machine::secs(*d)),
    }
}
