//! Audio transcoding off the async reactor. Decoding, resampling and AAC encoding cost about
//! 50 µs per camera frame (docs/performance.md §7); hundreds of streams doing that inside tokio
//! tasks would delay every socket served by the same worker threads. Instead, each stream is
//! bound to one of a few OS threads, which transcodes its frames in order and publishes the AAC
//! to the hub. Queues are bounded per stream and per thread: a worker that falls behind drops
//! audio (counted), never video, and never blocks the stream task.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use tracing::{error, warn};

use crate::config::AudioConfig as AudioSettings;
use crate::hub::Stream;
use crate::media::audio::TranscodeStats;
use crate::media::pipeline::{AudioOffload, TranscodeSlot};
use crate::media::Frame;

/// Frames queued per worker thread, all streams together.
const WORKER_QUEUE: usize = 4096;
/// Frames queued per stream: about 2 s of 40 ms camera frames.
const STREAM_IN_FLIGHT: usize = 50;

pub struct AudioPool {
    workers: Vec<SyncSender<Job>>,
    next: AtomicUsize,
    load: Arc<Load>,
}

/// How busy the pool is, for `/metrics` (D118): atomics touched once per audio frame.
#[derive(Default)]
struct Load {
    /// Frames submitted and not transcoded yet, all streams together.
    queued: AtomicUsize,
    /// Streams bound to a worker now.
    streams: AtomicUsize,
    /// Nanoseconds each worker spent transcoding.
    busy_ns: Vec<AtomicU64>,
}

/// A snapshot of [`AudioPool`]'s load.
#[derive(Debug, Clone, Default)]
pub struct AudioLoad {
    pub workers: usize,
    pub streams: usize,
    pub queued_frames: usize,
    /// Seconds each worker spent transcoding since it started (its rate is the worker's load).
    pub busy_seconds: Vec<f64>,
}

struct Job {
    audio: Arc<StreamAudio>,
    frame: Frame,
    rate: u32,
}

impl AudioPool {
    /// Starts `threads` workers (at least one). They exit when the pool and every stream bound
    /// to it are dropped.
    pub fn new(threads: usize) -> Arc<AudioPool> {
        let threads = threads.max(1);
        let load = Arc::new(Load { busy_ns: (0..threads).map(|_| AtomicU64::new(0)).collect(), ..Load::default() });
        let workers = (0..threads)
            .filter_map(|i| {
                let (tx, rx) = sync_channel::<Job>(WORKER_QUEUE);
                let load = load.clone();
                match std::thread::Builder::new().name(format!("gbgate-audio-{i}")).spawn(move || work(rx, &load, i)) {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        error!("cannot start audio worker {i}: {e}");
                        None
                    }
                }
            })
            .collect();
        Arc::new(AudioPool { workers, next: AtomicUsize::new(0), load })
    }

    pub fn load(&self) -> AudioLoad {
        AudioLoad {
            workers: self.workers.len(),
            streams: self.load.streams.load(Ordering::Relaxed),
            queued_frames: self.load.queued.load(Ordering::Relaxed),
            busy_seconds: self.load.busy_ns.iter().map(|n| n.load(Ordering::Relaxed) as f64 / 1e9).collect(),
        }
    }

    /// One worker per core, at most 4: transcoding all streams costs a fraction of one core.
    pub fn for_this_machine() -> Arc<AudioPool> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.min(4))
    }

    /// Binds a stream to a worker (round robin); `None` if no worker could be started.
    pub fn stream(&self, stream: Arc<Stream>, settings: &AudioSettings) -> Option<Arc<StreamAudio>> {
        if self.workers.is_empty() {
            return None;
        }
        let worker = self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()].clone();
        self.load.streams.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(StreamAudio {
            stream,
            worker,
            slot: Mutex::new(TranscodeSlot::new(settings)),
            in_flight: AtomicUsize::new(0),
            load: self.load.clone(),
        }))
    }
}

/// One stream's transcoder, owned by its worker thread.
pub struct StreamAudio {
    stream: Arc<Stream>,
    worker: SyncSender<Job>,
    slot: Mutex<TranscodeSlot>,
    in_flight: AtomicUsize,
    load: Arc<Load>,
}

impl Drop for StreamAudio {
    fn drop(&mut self) {
        self.load.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AudioOffload for StreamAudio {
    fn submit(self: Arc<Self>, frame: Frame, rate: u32) -> bool {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= STREAM_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let worker = self.worker.clone();
        match worker.try_send(Job { audio: self.clone(), frame, rate }) {
            Ok(()) => {
                self.load.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }

    fn stats(&self) -> Option<TranscodeStats> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).stats()
    }
}

/// After a worker has emptied its queue it sleeps this long before it waits again, so frames
/// submitted meanwhile are taken as one batch: a sender only wakes a worker that is blocked in
/// `recv`, and at 300 cameras one wake-up per 40 ms frame was 7,500 context switches a second
/// (D150). Audio is held at most this much longer; the players' audio waits for video anyway
/// (D14).
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

fn work(rx: Receiver<Job>, load: &Load, index: usize) {
    let mut out = Vec::with_capacity(8);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            transcode(job, &mut out, load, index);
            next = rx.try_recv().ok();
        }
        std::thread::sleep(BATCH_WAIT);
    }
}

fn transcode(job: Job, out: &mut Vec<Frame>, load: &Load, index: usize) {
    let started = std::time::Instant::now();
    {
        let mut slot = job.audio.slot.lock().unwrap_or_else(|e| e.into_inner());
        let (frame, rate) = (job.frame, job.rate);
        // Decoders and encoders are third-party code: a panic on one frame disables
        // transcoding for that stream only (its audio then passes through).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.push(frame, rate, out)));
        if r.is_err() {
            warn!(stream = %job.audio.stream.name, "audio transcoder panicked; this stream's audio now passes through");
            slot.disable();
            out.clear();
        }
    }
    for f in out.drain(..) {
        job.audio.stream.publish(f);
    }
    job.audio.in_flight.fetch_sub(1, Ordering::AcqRel);
    load.queued.fetch_sub(1, Ordering::Relaxed);
    load.busy_ns[index].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::config::HubConfig;
    use crate::hub::{Hub, Source, Transport};
    use crate::media::{AudioConfig, Codec, CodecConfig};

    fn g711_frame(i: i64) -> Frame {
        let cfg = Arc::new(CodecConfig::Audio(AudioConfig { sample_rate: 8000, channels: 1, asc: None }));
        // 40 ms of a 500 Hz A-law tone.
        let data: Vec<u8> = (0..320)
            .map(|n| {
                let t = (i * 320 + n) as f64 / 8000.0;
                crate::media::g711::linear_to_alaw(((t * 500.0 * std::f64::consts::TAU).sin() * 8000.0) as i16)
            })
            .collect();
        Frame {
            codec: Codec::G711A,
            pts: i * 3600,
            dts: i * 3600,
            keyframe: true,
            data: Bytes::from(data),
            config: cfg,
            cache: Default::default(),
        }
    }

    #[tokio::test]
    async fn worker_transcodes_in_order_and_publishes_aac() {
        let hub = Hub::new(HubConfig::default(), 4);
        let source = Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(1) };
        let stream = hub.create("a", source, crate::hub::Takeover::Refuse).unwrap();
        let mut sub = stream.subscribe();
        let pool = AudioPool::new(2);
        let audio = pool.stream(stream.clone(), &AudioSettings::default()).unwrap();
        // 2 s of audio, submitted at the pace a camera would not exceed (the worker keeps up).
        for i in 0..50 {
            while audio.in_flight.load(Ordering::Acquire) >= STREAM_IN_FLIGHT {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(audio.clone().submit(g711_frame(i), 8000));
        }
        let mut pts = Vec::new();
        while pts.len() < 15 {
            let f = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await.unwrap().unwrap();
            assert_eq!(f.codec, Codec::Aac);
            assert!(matches!(&*f.config, CodecConfig::Audio(a) if a.sample_rate == 11_025 && a.channels == 1));
            pts.push(f.pts);
        }
        assert!(pts.windows(2).all(|w| w[1] > w[0]), "in order: {pts:?}");
        // The worker may still be on the last inputs: wait for it, then every one was transcoded.
        let t = std::time::Instant::now();
        while audio.in_flight.load(Ordering::Acquire) > 0 && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(audio.stats().unwrap().frames_in, 50);
    }

    #[test]
    fn a_worker_that_falls_behind_drops_audio_instead_of_queueing_without_bound() {
        let hub = Hub::new(HubConfig::default(), 4);
        let source = Source { transport: Transport::Udp, peer: "127.0.0.1:1".parse().unwrap(), ssrc: Some(1) };
        let stream = hub.create("a", source, crate::hub::Takeover::Refuse).unwrap();
        let pool = AudioPool::new(1);
        let audio = pool.stream(stream, &AudioSettings::default()).unwrap();
        // Hold the stream's transcoder so the worker cannot make progress.
        let guard = audio.slot.lock().unwrap();
        let accepted = (0..200).filter(|&i| audio.clone().submit(g711_frame(i), 8000)).count();
        drop(guard);
        assert!(accepted <= STREAM_IN_FLIGHT + 1, "accepted {accepted}");
        assert!(accepted >= STREAM_IN_FLIGHT - 1, "accepted {accepted}");
    }
}
