//! Comparisons off the I/O path: a bounded queue served by low-priority threads of their own,
//! so comparing two large answers never holds up a worker's connections.
//!
//! A worker hands a comparison over with [`ComparisonQueue::submit`], which never waits: when
//! [`MAX_QUEUED`] comparisons or [`MAX_QUEUED_BYTES`] of their bodies are already waiting,
//! it refuses, and the caller drops the copy and counts it `overload` (as it does over
//! `shadow.max_in_flight`). The threads run at nice 10, below the workers (Linux: the nice
//! value is per thread), and end when the last handle to the queue is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tracing::debug;

/// Comparisons waiting at most.
pub const MAX_QUEUED: usize = 256;

/// Body bytes of the waiting comparisons at most (a comparison holds up to three answers of
/// up to `shadow.max_body_bytes` each). 16 MiB is ~30 ms of work for one comparison thread on
/// 64 KiB JSON pairs (~0.55 GB/s): enough to ride out a burst; under sustained overload a
/// deeper queue only holds memory (`make bench`, 64 KiB with 100 % shadow: peak RSS 123 MiB
/// with 64 MiB here, 78 MiB with 16).
pub const MAX_QUEUED_BYTES: usize = 16 << 20;

/// How much lower than the workers the comparison threads run.
const NICE: i32 = 10;

type Work = Box<dyn FnOnce() + Send>;

/// A handle to the queue (cheap to clone).
#[derive(Clone)]
pub struct ComparisonQueue {
    tx: SyncSender<(usize, Work)>,
    /// Body bytes that may still be queued (taken on submit, given back when work starts).
    free_bytes: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ComparisonQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComparisonQueue")
            .field("free_bytes", &self.free_bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ComparisonQueue {
    /// The queue and its `threads` threads (at least one).
    pub fn start(threads: usize) -> Self {
        Self::with_limits(threads, MAX_QUEUED, MAX_QUEUED_BYTES)
    }

    fn with_limits(threads: usize, max_queued: usize, max_bytes: usize) -> Self {
        let (tx, rx) = sync_channel::<(usize, Work)>(max_queued);
        let rx = Arc::new(Mutex::new(rx));
        let free_bytes = Arc::new(AtomicUsize::new(max_bytes));
        for i in 0..threads.max(1) {
            let (rx, free_bytes) = (rx.clone(), free_bytes.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cutover-compare-{i}"))
                .spawn(move || serve(&rx, &free_bytes));
            if let Err(e) = spawned {
                debug!(error = %e, "cannot start a comparison thread");
            }
        }
        ComparisonQueue { tx, free_bytes }
    }

    /// Queue `work`, which holds `bytes` of bodies; `false` (and `work` dropped) when the
    /// queue is full or the threads are gone.
    pub fn submit(&self, bytes: usize, work: impl FnOnce() + Send + 'static) -> bool {
        // Taking a share of the free bytes is one atomic step.
        let taken = self
            .free_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(bytes)
            });
        if taken.is_err() {
            return false;
        }
        match self.tx.try_send((bytes, Box::new(work))) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.free_bytes.fetch_add(bytes, Ordering::AcqRel);
                false
            }
        }
    }
}

fn serve(rx: &Mutex<Receiver<(usize, Work)>>, free_bytes: &AtomicUsize) {
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        debug!(error = %e, "comparison thread keeps the workers' priority");
    }
    loop {
        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((bytes, work)) = next else {
            return;
        };
        free_bytes.fetch_add(bytes, Ordering::AcqRel);
        work();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    /// Whether `f` returns true within `limit` (polled every millisecond).
    fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn work_runs_on_a_comparison_thread() {
        let queue = ComparisonQueue::start(1);
        let (tx, rx) = channel();
        assert!(queue.submit(10, move || {
            let name = std::thread::current().name().map(str::to_string);
            let _ = tx.send(name);
        }));
        let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some("cutover-compare-0"));
    }

    #[test]
    fn a_full_queue_refuses_without_waiting_and_takes_work_again_once_served() {
        let queue = ComparisonQueue::with_limits(1, 2, 1 << 20);
        // The thread is held by the first job; two more fill the queue.
        let (release, held) = channel::<()>();
        let (started_tx, started) = channel::<()>();
        assert!(queue.submit(1, move || {
            let _ = started_tx.send(());
            let _ = held.recv();
        }));
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(queue.submit(1, || {}));
        assert!(queue.submit(1, || {}));
        assert!(!queue.submit(1, || {}), "a third waiting job is refused");
        drop(release);
        assert!(
            accepted_and_run(&queue, 1),
            "the queue takes work again once served"
        );
    }

    /// Whether the queue takes work of `bytes` within 10 s, and runs it.
    fn accepted_and_run(queue: &ComparisonQueue, bytes: usize) -> bool {
        let (tx, rx) = channel();
        let accepted = eventually(Duration::from_secs(10), || {
            let tx = tx.clone();
            queue.submit(bytes, move || {
                let _ = tx.send(());
            })
        });
        accepted && rx.recv_timeout(Duration::from_secs(10)).is_ok()
    }

    #[test]
    fn the_byte_bound_refuses_large_bodies_and_gives_its_share_back() {
        let queue = ComparisonQueue::with_limits(1, 16, 100);
        assert!(!queue.submit(101, || {}), "over the byte bound");
        assert!(accepted_and_run(&queue, 100));
        assert!(
            accepted_and_run(&queue, 100),
            "the bytes are free again once the work started"
        );
    }
}
