//! How RTSP and RTMP players batch their writes (D14): one write per video frame, or one per
//! `merge_write` interval for a merging player. The rule is shared so both outputs behave alike.
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::frame::{FrameCache, FrameCacheInner};
use tokio::io::AsyncWrite;

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

/// Payloads shorter than this are copied next to the headers rather than referenced: an iovec
/// entry costs the kernel about as much as copying a few hundred bytes (AAC frames, SPS/PPS).
const COPY_BELOW: usize = 256;
/// iovec entries per `writev`: a 200 ms batch of a 2 Mbit/s stream is about 80 (the kernel's
/// limit is 1,024). The array lives on the stack only while one write is polled, never in the task.
const MAX_IOV: usize = 128;

/// One piece of a [`Batch`].
#[derive(Debug)]
enum Part {
    /// `head[start..end]`: bytes of this player (RTP/interleave headers, RTMP chunk headers).
    Own { start: u32, end: u32 },
    /// Bytes `start..end` of payload `idx` of `keep[keep]`, a payload shared by every player of
    /// the frame: referenced, not copied, and not even reference-counted per packet (D177).
    Shared { keep: u32, idx: u32, start: u32, end: u32 },
}

/// What keeps the shared payloads of a [`Batch`] alive: one reference per frame or message,
/// however many packets or chunks of it the batch holds. A reference count bumped per packet by
/// 300 players on two cores was 4-5 % of gbgate's per-frame fan-out samples (the cache line of
/// the frame's counter moving between cores), more than packetising.
#[derive(Debug)]
enum Keep {
    /// One buffer (an FLV tag, one payload).
    Bytes(Bytes),
    /// A frame's RTP payloads (`Frame::cache.rtp`, already filled).
    Rtp(FrameCache),
}

impl Keep {
    fn get(&self, idx: u32) -> &[u8] {
        match self {
            Keep::Bytes(b) => b,
            // Filled by `rtp_pack::frame_payloads` before it was kept; a OnceLock is never emptied.
            Keep::Rtp(c) => c.rtp.get().and_then(|v| v.get(idx as usize)).map_or(&[][..], |p| &p.body[..]),
        }
    }
}

/// A player's pending output (D162): its own small headers are copied into one buffer, the
/// frames' shared payloads are only referenced, and the whole is written with `writev`. Per
/// player this holds a few kB of headers and references instead of a copy of every frame (up to
/// 64-128 kB each before), and the payload is copied once, by the kernel, instead of twice.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    head: Vec<u8>,
    parts: Vec<Part>,
    keep: Vec<Keep>,
    len: usize,
    /// Bytes of `parts[0]` already written (a partial `writev`).
    sent: usize,
}

impl Batch {
    /// Bytes held (not yet written).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends this player's own bytes (copied).
    pub fn own(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = self.head.len() as u32;
        self.head.extend_from_slice(bytes);
        let end = self.head.len() as u32;
        self.len += bytes.len();
        // Contiguous own bytes are one iovec entry.
        if let Some(Part::Own { end: last, .. }) = self.parts.last_mut() {
            if *last == start {
                *last = end;
                return;
            }
        }
        self.parts.push(Part::Own { start, end });
    }

    /// Appends a shared payload: referenced, or copied when small.
    pub fn shared(&mut self, bytes: &Bytes) {
        self.shared_range(bytes, 0, bytes.len());
    }

    /// Appends `bytes[start..end]` of a shared buffer: referenced (the buffer is kept once for
    /// consecutive ranges of it, e.g. the chunks of one RTMP message), or copied when small.
    pub fn shared_range(&mut self, bytes: &Bytes, start: usize, end: usize) {
        if end - start < COPY_BELOW {
            self.own(&bytes[start..end]);
            return;
        }
        let same =
            matches!(self.keep.last(), Some(Keep::Bytes(b)) if b.as_ptr() == bytes.as_ptr() && b.len() == bytes.len());
        if !same {
            self.keep.push(Keep::Bytes(bytes.clone()));
        }
        self.push_shared(0, start, end);
    }

    /// Appends RTP payload `idx` of a frame whose payloads `rtp_pack::frame_payloads` made:
    /// referenced (the frame's cache is kept once for all its packets), or copied when small.
    pub fn rtp_payload(&mut self, cache: &FrameCache, idx: usize) {
        let Some(payload) = cache.rtp.get().and_then(|v| v.get(idx)) else { return };
        // The payload's own few bytes (FU indicator and header, D181), then its body: a slice of
        // the frame's data.
        self.own(payload.head());
        let body = &payload.body;
        if body.len() < COPY_BELOW {
            self.own(body);
            return;
        }
        let same = matches!(self.keep.last(), Some(Keep::Rtp(c)) if std::ptr::eq::<FrameCacheInner>(&**c, &**cache));
        if !same {
            self.keep.push(Keep::Rtp(cache.clone()));
        }
        self.push_shared(idx as u32, 0, body.len());
    }

    fn push_shared(&mut self, idx: u32, start: usize, end: usize) {
        let keep = (self.keep.len() - 1) as u32;
        self.len += end - start;
        self.parts.push(Part::Shared { keep, idx, start: start as u32, end: end as u32 });
    }

    /// Forgets everything held, keeping (bounded) capacity for the next batch.
    pub fn clear(&mut self) {
        self.head.clear();
        self.parts.clear();
        self.keep.clear();
        self.len = 0;
        self.sent = 0;
        // A GOP burst at play may have grown these: steady state needs a few kB.
        if self.head.capacity() > 16 * 1024 {
            self.head.shrink_to(4 * 1024);
        }
        if self.parts.capacity() > 1024 {
            self.parts.shrink_to(128);
        }
        // One entry per frame (40 bytes): a GOP burst leaves dozens, steady state needs a few.
        if self.keep.capacity() > 32 {
            self.keep.shrink_to(8);
        }
    }

    /// The bytes held, in order.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for (i, p) in self.parts.iter().enumerate() {
            let skip = if i == 0 { self.sent } else { 0 };
            v.extend_from_slice(&self.slice(p)[skip..]);
        }
        v
    }

    fn slice<'a>(&'a self, p: &'a Part) -> &'a [u8] {
        match p {
            Part::Own { start, end } => &self.head[*start as usize..*end as usize],
            Part::Shared { keep, idx, start, end } => {
                &self.keep[*keep as usize].get(*idx)[*start as usize..*end as usize]
            }
        }
    }

    /// Fills `iov` with what is left to write; returns the entries used.
    fn iovecs<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, p) in self.parts.iter().take(iov.len()).enumerate() {
            let skip = if i == 0 { self.sent } else { 0 };
            iov[i] = IoSlice::new(&self.slice(p)[skip..]);
            n += 1;
        }
        n
    }

    /// Marks `n` bytes written from the front.
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        let mut done = 0;
        for p in &self.parts {
            let left = self.slice(p).len() - if done == 0 { self.sent } else { 0 };
            if n < left {
                self.sent = if done == 0 { self.sent + n } else { n };
                break;
            }
            n -= left;
            done += 1;
            self.sent = 0;
        }
        self.parts.drain(..done);
    }

    /// Writes everything held with `writev`, then clears. Not cancel-safe: the caller bounds it
    /// with a deadline and drops the connection when it expires.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        while !self.parts.is_empty() {
            let n = std::future::poll_fn(|cx| {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let used = self.iovecs(&mut iov);
                Pin::new(&mut *w).poll_write_vectored(cx, &iov[..used])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        self.clear();
        Ok(())
    }

    /// Moves everything `other` holds to the end of this batch, in order.
    pub fn append(&mut self, other: &mut Batch) {
        let off = self.keep.len() as u32;
        for (i, p) in other.parts.iter().enumerate() {
            let skip = if i == 0 { other.sent } else { 0 };
            match p {
                Part::Own { .. } => self.own(&other.slice(p)[skip..]),
                Part::Shared { keep, idx, start, end } => {
                    self.len += (*end - *start) as usize - skip;
                    self.parts.push(Part::Shared {
                        keep: keep + off,
                        idx: *idx,
                        start: start + skip as u32,
                        end: *end,
                    });
                }
            }
        }
        self.keep.append(&mut other.keep);
        other.clear();
    }

    /// Writes what it can without blocking (D183); returns whether everything was written (then
    /// the batch is cleared). Bounded: a batch of one frame is one or two `writev`s.
    pub fn try_write(&mut self, w: &tokio::net::tcp::OwnedWriteHalf) -> io::Result<bool> {
        while !self.parts.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let used = self.iovecs(&mut iov);
            let n = match w.try_write_vectored(&iov[..used]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        self.clear();
        Ok(true)
    }

    /// Writes everything held with blocking `writev`s of the same shape as [`Batch::write_to`],
    /// then clears; returns the `writev` calls made. For the fan-out floor tool (`gbgate floor`),
    /// which must write exactly what a player's task writes.
    pub fn write_blocking<W: std::io::Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut calls = 0;
        while !self.parts.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let used = self.iovecs(&mut iov);
            let n = match w.write_vectored(&iov[..used]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            calls += 1;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        self.clear();
        Ok(calls)
    }

    /// [`Batch::write_to`] with a deadline: a peer that accepts nothing for `limit` is an error.
    pub async fn write_timeout<W: AsyncWrite + Unpin>(&mut self, w: &mut W, limit: Duration) -> io::Result<()> {
        // The deadline's timer is made only if the write has to wait (D177): a player that keeps
        // up writes at once, and a timer per write (a clock read, a runtime handle, dropped
        // unused) was per-frame work for nothing. The deadline then runs from the first wait.
        let mut write = std::pin::pin!(self.write_to(w));
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(r) = write.as_mut().poll(cx) {
                return std::task::Poll::Ready(r);
            }
            let d = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match d.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("send stalled for {limit:?}"),
                ))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// Per-frame writes (`merge_write = "0s"`): whether audio held for the next video frame must go
/// now, because it has waited [`AUDIO_HOLD`] (D177). No timer is armed per audio frame: held
/// audio goes with the next video frame, or, when video stops, with the next frame after
/// `AUDIO_HOLD` (audio keeps coming every 93 ms at 11025 Hz) or before any other event. `held_at`
/// is when the batch began holding; cleared when this says so.
pub(crate) fn held_too_long(held_at: &mut Option<tokio::time::Instant>) -> bool {
    let now = tokio::time::Instant::now();
    let since = *held_at.get_or_insert(now);
    if now.duration_since(since) >= AUDIO_HOLD {
        *held_at = None;
        true
    } else {
        false
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

    /// A writer that takes at most `max` bytes per call, through `poll_write_vectored`.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut left = self.max;
            for b in bufs {
                let n = b.len().min(left);
                self.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            self.calls += 1;
            std::task::Poll::Ready(Ok(self.max - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut left = self.max;
            for b in bufs {
                let n = b.len().min(left);
                self.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            self.calls += 1;
            Ok(self.max - left)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Batch {
        fn write_blocking_for_test(&mut self, w: &mut Trickle) {
            self.write_blocking(w).unwrap();
        }
    }

    /// Partial vectored writes resume mid-part, in order, and nothing is copied twice or lost;
    /// large payloads are referenced (not copied into the player's buffer), small ones copied.
    #[tokio::test]
    async fn a_batch_survives_partial_writes_in_order() {
        let big = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let small = Bytes::from_static(b"aac!");
        let mut b = Batch::default();
        let mut want = Vec::new();
        for i in 0..300u32 {
            b.own(&i.to_be_bytes());
            want.extend_from_slice(&i.to_be_bytes());
            let p = if i % 3 == 0 { &small } else { &big };
            b.shared(p);
            want.extend_from_slice(p);
        }
        assert_eq!(b.len(), want.len());
        assert!(b.head.len() < 2 * 1024, "payloads are referenced, not copied: {}", b.head.len());
        assert_eq!(b.to_vec(), want);
        for max in [1, 7, 4099, 1 << 20] {
            let mut b2 = Batch::default();
            for p in &b.parts {
                match p {
                    Part::Own { .. } => b2.own(b.slice(p)),
                    Part::Shared { .. } => b2.shared(&Bytes::copy_from_slice(b.slice(p))),
                }
            }
            let mut w = Trickle { got: Vec::new(), max, calls: 0 };
            b2.write_to(&mut w).await.unwrap();
            assert_eq!(w.got, want, "writing {max} bytes per call");
            assert!(b2.is_empty() && b2.parts.is_empty());
            if max == 1 << 20 {
                // 300 shared + ~300 own entries, MAX_IOV per call.
                assert!(w.calls <= 600 / MAX_IOV + 1, "{} calls", w.calls);
            }
        }
    }

    /// A frame's RTP packets and a message's chunks keep their source once, not once per
    /// packet or chunk (D177), and are written in order.
    #[test]
    fn shared_sources_are_kept_once_per_frame() {
        // Payloads as the packetiser makes them (D181): a small head of their own (here an FU
        // indicator and header) and a body that is a slice of the frame.
        let payloads: Vec<crate::frame::RtpPayload> = (0..5u8)
            .map(|i| crate::frame::RtpPayload::new(&[0x7c, i], Bytes::from(vec![i; 1000 + i as usize])))
            .collect();
        let cache = crate::frame::FrameCache::default();
        cache.rtp.set(payloads.clone()).unwrap();
        let tag = Bytes::from((0..9000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut b = Batch::default();
        let mut want = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            b.own(b"$h");
            want.extend_from_slice(b"$h");
            b.rtp_payload(&cache, i);
            want.extend_from_slice(p.head());
            want.extend_from_slice(&p.body);
        }
        for (s, e) in [(0, 4096), (4096, 8192), (8192, 9000)] {
            b.own(b"c");
            want.extend_from_slice(b"c");
            b.shared_range(&tag, s, e);
            want.extend_from_slice(&tag[s..e]);
        }
        assert_eq!(b.keep.len(), 2, "one frame cache and one tag kept");
        assert!(b.head.len() < 32, "payloads referenced, not copied");
        assert_eq!(b.to_vec(), want);
        let mut w = Trickle { got: Vec::new(), max: 777, calls: 0 };
        b.write_blocking_for_test(&mut w);
        assert_eq!(w.got, want);
        assert!(b.keep.is_empty());
    }

    /// Per-frame mode holds audio without a timer: it is due once it has waited AUDIO_HOLD,
    /// judged when the next frame comes (the hold's start is set back; no time is measured).
    #[test]
    fn held_audio_is_due_after_the_hold_without_a_timer() {
        let mut held_at = None;
        assert!(!held_too_long(&mut held_at), "the first audio frame is held");
        assert!(held_at.is_some());
        let now = tokio::time::Instant::now();
        held_at = Some(now - AUDIO_HOLD / 2);
        assert!(!held_too_long(&mut held_at), "still within the hold");
        held_at = Some(now - AUDIO_HOLD);
        assert!(held_too_long(&mut held_at), "held for AUDIO_HOLD: goes now");
        assert!(held_at.is_none(), "the next hold starts afresh");
    }

    /// A batch moved behind another after a partial write (D183: a direct write's remainder
    /// taken by the player's task) keeps its bytes in order, resuming mid-part.
    #[test]
    fn append_keeps_a_partly_written_batch_in_order() {
        let big = Bytes::from((0..3000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut rest = Batch::default();
        rest.own(b"$hdr");
        rest.shared(&big);
        rest.own(b"$two");
        rest.shared_range(&big, 100, 2900);
        let whole = rest.to_vec();
        // 4 header bytes and 1000 payload bytes went out already.
        rest.advance(1004);
        let mut out = Batch::default();
        out.own(b"first");
        out.shared(&big);
        let mut want = out.to_vec();
        want.extend_from_slice(&whole[1004..]);
        out.append(&mut rest);
        assert!(rest.is_empty() && rest.keep.is_empty());
        assert_eq!(out.len(), want.len());
        assert_eq!(out.to_vec(), want);
        let mut w = Trickle { got: Vec::new(), max: 999, calls: 0 };
        out.write_blocking_for_test(&mut w);
        assert_eq!(w.got, want);
        // Into an empty batch, too.
        let mut rest = Batch::default();
        rest.shared(&big);
        rest.advance(10);
        let mut out = Batch::default();
        out.append(&mut rest);
        assert_eq!(out.to_vec(), &big[10..]);
    }

    #[test]
    fn merging_mode_holds_all_but_the_first_write() {
        let merge = Duration::from_millis(200);
        assert_eq!(hold(merge, true, true, false, 100), None, "the cached GOP goes at once");
        assert_eq!(hold(merge, true, true, true, 100), Some(merge));
        assert_eq!(hold(merge, true, true, true, BATCH_BYTES), None);
    }
}
