//! A subscriber's live frame queue (D195): bounded in frames, one producer (the stream's
//! publisher, under the stream's lock) and one consumer (the subscriber's task).
//!
//! It replaces a `tokio::sync::mpsc` channel per subscriber. tokio's channel stores its values
//! in blocks of 32 slots (2.4 kB of `Frame`s) and keeps emptied blocks for reuse, so each of 300
//! players held two to four blocks whatever its queue's length. Here the frames sit in one
//! `VecDeque` that is as long as the queue gets (a 200 ms merge interval: about 10 frames, 0.7
//! kB), given back when it empties after a burst. Held audio and the frame it waited for go in
//! under one lock with one wake-up.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::media::Frame;

/// An emptied queue with room for more than this many frames gives the room back (after a
/// burst, e.g. a player that stalled); steady state needs a merge interval's worth.
const KEEP_SLOTS: usize = 32;

struct State {
    frames: VecDeque<Frame>,
    /// The sending side (the stream's slot for this subscriber) is gone: the stream ended or
    /// the subscriber was disconnected.
    sender_gone: bool,
    /// The subscription was dropped: frames for it are refused.
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the consumer; a wake-up with nobody waiting is kept for its next wait.
    wake: Notify,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue of at most `capacity` frames (at least 1).
pub(crate) fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { frames: VecDeque::new(), sender_gone: false, receiver_gone: false }),
        wake: Notify::new(),
        capacity: capacity.max(1),
    });
    (QueueTx(shared.clone()), QueueRx(shared))
}

/// What became of the frame given to [`QueueTx::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Queued,
    /// The queue was full: the frame was not queued.
    Full,
    /// The subscription is gone.
    Closed,
    /// No frame was given.
    Nothing,
}

/// The publisher's end. Dropping it ends the subscription once its queue is drained.
pub(crate) struct QueueTx(Arc<Shared>);

impl QueueTx {
    /// Queues `held` in order, then `frame`, under one lock, and wakes the consumer once. Frames
    /// that find the queue full are not queued: `held` ones are counted in the first value; the
    /// second says what became of `frame`. `held` is emptied either way.
    pub(crate) fn send(&self, held: &mut Vec<Frame>, frame: Option<&Frame>) -> (u64, Sent) {
        let mut st = self.0.lock();
        if st.receiver_gone {
            held.clear();
            return (0, Sent::Closed);
        }
        let room = self.0.capacity.saturating_sub(st.frames.len());
        let lost = held.len().saturating_sub(room) as u64;
        let mut queued = room > 0 && !held.is_empty();
        // What does not fit is dropped with the drain.
        st.frames.extend(held.drain(..).take(room));
        let sent = match frame {
            None => Sent::Nothing,
            Some(_) if st.frames.len() >= self.0.capacity => Sent::Full,
            Some(f) => {
                st.frames.push_back(f.clone());
                queued = true;
                Sent::Queued
            }
        };
        drop(st);
        if queued {
            self.0.wake.notify_one();
        }
        (lost, sent)
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.wake.notify_one();
    }
}

/// Why [`QueueRx::try_recv`] returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Empty {
    /// Nothing queued yet.
    Now,
    /// Nothing queued and nothing will be: the sending side is gone.
    Ended,
}

/// The subscriber's end.
pub(crate) struct QueueRx(Arc<Shared>);

impl QueueRx {
    pub(crate) fn try_recv(&self) -> Result<Frame, Empty> {
        let mut st = self.0.lock();
        match st.frames.pop_front() {
            Some(f) => {
                if st.frames.is_empty() && st.frames.capacity() > KEEP_SLOTS {
                    st.frames = VecDeque::new();
                }
                Ok(f)
            }
            None if st.sender_gone => Err(Empty::Ended),
            None => Err(Empty::Now),
        }
    }

    /// The next frame; `None` once the sending side is gone and the queue is drained.
    /// Cancel-safe: a frame is taken only by the poll that returns it.
    pub(crate) async fn recv(&self) -> Option<Frame> {
        loop {
            match self.try_recv() {
                Ok(f) => return Some(f),
                Err(Empty::Ended) => return None,
                // A wake-up sent since the check above is kept by `Notify` for this wait.
                Err(Empty::Now) => self.0.wake.notified().await,
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().frames.is_empty()
    }

    /// Slots allocated, for the tests.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.0.lock().frames.capacity()
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.receiver_gone = true;
        // The frames (and the media they hold) go now, not when the stream next publishes.
        st.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pts: i64) -> Frame {
        crate::hub::tests::video(pts, true, 5)
    }

    fn pts(rx: &QueueRx) -> Vec<i64> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|f| f.pts).collect()
    }

    #[test]
    fn held_frames_then_the_frame_in_order_and_bounded() {
        let (tx, rx) = queue(3);
        let mut held = vec![frame(1), frame(2)];
        assert_eq!(tx.send(&mut held, Some(&frame(3))), (0, Sent::Queued));
        assert!(held.is_empty());
        // Full: held frames beyond the room are lost, and so is the frame.
        let mut held = vec![frame(4)];
        assert_eq!(tx.send(&mut held, Some(&frame(5))), (1, Sent::Full));
        assert!(held.is_empty());
        assert_eq!(pts(&rx), [1, 2, 3]);
        assert_eq!(rx.try_recv().unwrap_err(), Empty::Now);
        // Room again: the first held frame fits, the second and the frame do not.
        let (tx, rx) = queue(1);
        let mut held = vec![frame(6), frame(7)];
        assert_eq!(tx.send(&mut held, Some(&frame(8))), (1, Sent::Full));
        assert_eq!(pts(&rx), [6]);
    }

    #[test]
    fn ends_after_the_sender_goes_and_refuses_after_the_receiver_goes() {
        let (tx, rx) = queue(8);
        tx.send(&mut vec![], Some(&frame(1)));
        drop(tx);
        // What was queued is still delivered, then the end.
        assert_eq!(rx.try_recv().unwrap().pts, 1);
        assert_eq!(rx.try_recv().unwrap_err(), Empty::Ended);
        let (tx, rx) = queue(8);
        drop(rx);
        assert_eq!(tx.send(&mut vec![frame(1)], Some(&frame(2))), (0, Sent::Closed));
    }

    #[test]
    fn an_emptied_queue_gives_back_the_room_of_a_burst_only() {
        let (tx, rx) = queue(512);
        for i in 0..10 {
            tx.send(&mut vec![], Some(&frame(i)));
        }
        assert_eq!(pts(&rx).len(), 10);
        let steady = rx.capacity();
        assert!(steady > 0 && steady <= KEEP_SLOTS, "a merge interval's room is kept: {steady}");
        for i in 0..200 {
            tx.send(&mut vec![], Some(&frame(i)));
        }
        assert!(rx.capacity() >= 200);
        assert_eq!(pts(&rx).len(), 200);
        assert_eq!(rx.capacity(), 0, "a burst's room goes back once drained");
    }

    #[tokio::test]
    async fn recv_waits_for_a_frame_and_for_the_end() {
        let (tx, rx) = queue(8);
        let rx = Arc::new(rx);
        let waiter = {
            let rx = rx.clone();
            tokio::spawn(async move { (rx.recv().await.map(|f| f.pts), rx.recv().await.map(|f| f.pts)) })
        };
        tokio::task::yield_now().await;
        tx.send(&mut vec![], Some(&frame(7)));
        drop(tx);
        assert_eq!(waiter.await.unwrap(), (Some(7), None));
    }
}
