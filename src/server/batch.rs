//! How RTSP and RTMP players batch their writes (D14): one write per video frame, or one per
//! `merge_write` interval for a merging player. The rule is shared so both outputs behave alike.
use std::time::Duration;

/// A player's audio waits for the next video frame (at most this long), so each write carries a
/// video frame and the audio around it: half the writes and wake-ups per player.
pub(crate) const AUDIO_HOLD: Duration = Duration::from_millis(100);
/// A batch this large is written at once whatever it holds (a GOP burst at play).
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Whether a batch that just took frames waits: `None` writes it now, `Some(wait)` holds it at
/// most `wait`. The first media write (the cached GOP) never waits; without merging, a batch goes
/// with each video frame (or each frame when there is no video).
pub(crate) fn hold(
    merge: Duration,
    video_sent: bool,
    has_video: bool,
    wrote_media: bool,
    batch_len: usize,
) -> Option<Duration> {
    let due = if merge.is_zero() { video_sent || !has_video } else { !wrote_media };
    if due || batch_len >= BATCH_BYTES {
        None
    } else if merge.is_zero() {
        Some(AUDIO_HOLD)
    } else {
        Some(merge)
    }
}

/// A GOP burst can grow a player's batch buffer far beyond what steady state needs (about one
/// merge interval of media): give that memory back.
pub(crate) fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > 2 * BATCH_BYTES {
        buf.shrink_to(BATCH_BYTES);
    }
}

/// Sleeps until `at`, or forever when there is nothing held.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_frame_mode_writes_with_video_and_holds_audio() {
        let zero = Duration::ZERO;
        assert_eq!(hold(zero, true, true, true, 100), None);
        assert_eq!(hold(zero, false, true, true, 100), Some(AUDIO_HOLD));
        assert_eq!(hold(zero, false, false, true, 100), None, "audio-only stream");
        assert_eq!(hold(zero, false, true, true, BATCH_BYTES), None, "full batch");
    }

    #[test]
    fn merging_mode_holds_all_but_the_first_write() {
        let merge = Duration::from_millis(200);
        assert_eq!(hold(merge, true, true, false, 100), None, "the cached GOP goes at once");
        assert_eq!(hold(merge, true, true, true, 100), Some(merge));
        assert_eq!(hold(merge, true, true, true, BATCH_BYTES), None);
    }
}
