//! Writing to players from the publishing side (D183). A player that keeps up is in *direct
//! mode*: the publisher packetises each frame for it under the stream's lock (which orders the
//! bytes) and, once that lock is released, writes them with one non-blocking `writev`, as
//! ZLMediaKit does from the publisher's event loop, so the player's task is not woken per frame. A write that would block or is partial leaves direct mode: what was not
//! written waits here (at most the frame and its held audio) for the player's task, which writes
//! it with the usual deadline, drains its queue (the hub's slow-player policy applies there) and
//! re-enters direct mode once caught up.
//!
//! The player's packetiser state lives under the same lock as the mode, so the publisher and the
//! player's task never packetise or write at the same time; the task leaves direct mode before
//! it writes anything of its own (replies, RTCP, control messages), so nothing interleaves with a
//! frame.
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use super::batch::Batch;
use crate::hub::{DirectSink, Offer, Subscription};
use crate::media::Frame;

/// Frames (a video frame with the audio held for it counts once) the publisher wrote to a
/// player itself, over all players.
pub static DIRECT_WRITES: AtomicU64 = AtomicU64::new(0);
/// Times a player left direct mode because its socket did not take a whole frame.
pub static DIRECT_FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Players in direct mode at most, all streams together. UDP ingest publishes from one receive
/// thread (D153), which then makes every direct write: this bounds that thread's extra work (at
/// 2 Mbit/s about 5 % of a core per 300 players, so ~20 % at the cap). Players beyond it are
/// written by their own tasks, as before.
pub const MAX_DIRECT_PLAYERS: usize = 1024;
static DIRECT_PLAYERS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_DIRECT_PLAYERS`] places, given back when dropped.
pub(crate) struct DirectPlace(());

impl DirectPlace {
    /// A place if there is one left.
    pub fn take() -> Option<DirectPlace> {
        DIRECT_PLAYERS
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < MAX_DIRECT_PLAYERS).then_some(n + 1))
            .ok()
            .map(|_| DirectPlace(()))
    }
}

impl Drop for DirectPlace {
    fn drop(&mut self) {
        DIRECT_PLAYERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Packetises frames into a player's output.
pub(crate) trait Packer: Send {
    /// Appends `frame` in the player's wire format; returns whether video was appended.
    fn append(&mut self, frame: &Frame, out: &mut Batch) -> bool;
}

pub(crate) struct State<P> {
    /// Whether the publisher writes to this player.
    on: bool,
    /// The player's socket; `None` once the player's task ended (no file descriptor is kept).
    sock: Option<Arc<OwnedWriteHalf>>,
    /// Bytes of frames packetised for a direct write and not written yet: until the publisher
    /// flushes them (after releasing the stream's lock), or what the socket did not take, for the
    /// player's task.
    pending: Batch,
    /// Frames in `pending` not yet written, for `DIRECT_WRITES`.
    pending_frames: u64,
    pub packer: P,
}

/// One player's direct-write side, shared by its task and the publisher.
pub(crate) struct Direct<P> {
    state: Mutex<State<P>>,
    /// Wakes the player's task when a frame fell back to it.
    wake: Notify,
}

impl<P: Packer> Direct<P> {
    pub fn new(sock: Arc<OwnedWriteHalf>, packer: P) -> Arc<Direct<P>> {
        Arc::new(Direct {
            state: Mutex::new(State {
                on: false,
                sock: Some(sock),
                pending: Batch::default(),
                pending_frames: 0,
                packer,
            }),
            wake: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters direct mode if nothing waits for the player (its output `out` is written, its
    /// queue and GOP backlog are empty); returns whether it is direct now.
    pub fn resume(&self, sub: &Subscription, out: &Batch) -> bool {
        let mut st = self.lock();
        if !st.on && out.is_empty() && st.pending.is_empty() && st.sock.is_some() && sub.caught_up() {
            st.on = true;
        }
        st.on
    }

    /// Leaves direct mode; whatever the publisher packetised and did not write (not flushed yet,
    /// or not taken by the socket) is appended to `out` (which holds nothing published after
    /// it, as the player was direct until now).
    pub fn leave(&self, out: &mut Batch) {
        let mut st = self.lock();
        st.on = false;
        st.pending_frames = 0;
        if !st.pending.is_empty() {
            if out.is_empty() {
                std::mem::swap(out, &mut st.pending);
            } else {
                out.append(&mut st.pending);
            }
        }
    }

    /// The player's task ends: the publisher neither writes nor keeps the socket open.
    pub fn close(&self) {
        let mut st = self.lock();
        st.on = false;
        st.sock = None;
        st.pending.clear();
        st.pending_frames = 0;
    }

    /// Resolves when the publisher handed a frame back to the player's task.
    pub async fn fell_back(&self) {
        self.wake.notified().await
    }
}

impl<P: Packer> DirectSink for Direct<P> {
    fn offer(&self, held: &mut Vec<Frame>, frame: &Frame, queue: &mut dyn FnMut(&mut Vec<Frame>) -> bool) -> Offer {
        let mut guard = self.lock();
        if !guard.on {
            // Queued under this lock: see `DirectSink::offer`.
            return if queue(held) { Offer::Kept } else { Offer::Gone };
        }
        let st = &mut *guard;
        if st.sock.is_none() {
            return Offer::Gone;
        }
        for h in held.drain(..) {
            st.packer.append(&h, &mut st.pending);
        }
        st.packer.append(frame, &mut st.pending);
        if st.pending.is_empty() {
            return Offer::Kept;
        }
        st.pending_frames += 1;
        Offer::Flush
    }

    fn flush(&self) {
        let mut guard = self.lock();
        let st = &mut *guard;
        // Another publishing thread flushed it already, or the player's task took it over.
        if !st.on || st.pending.is_empty() {
            return;
        }
        let Some(sock) = st.sock.as_ref() else { return };
        // One non-blocking `writev` (a few for a frame of more than MAX_IOV pieces): the work per
        // frame and player is what the player's task would have done.
        match st.pending.try_write(sock) {
            Ok(true) => {
                DIRECT_WRITES.fetch_add(std::mem::take(&mut st.pending_frames), Ordering::Relaxed);
            }
            // Would block, partial, or an error: the task writes the rest (or meets the error).
            Ok(false) | Err(_) => {
                st.on = false;
                st.pending_frames = 0;
                DIRECT_FALLBACKS.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
        }
    }
}

/// A player's write half shared with its [`Direct`] side: the task writes through this (waiting
/// for writability), the publisher with `try_write_vectored`.
pub(crate) struct SharedWrite(pub Arc<OwnedWriteHalf>);

impl AsyncWrite for SharedWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let s: &tokio::net::TcpStream = (*self.0).as_ref();
        loop {
            std::task::ready!(s.poll_write_ready(cx))?;
            match s.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s: &tokio::net::TcpStream = (*self.0).as_ref();
        Poll::Ready(socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write))
    }
}
