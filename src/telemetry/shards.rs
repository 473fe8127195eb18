//! Metrics counted by each thread on its own and handed to the recorder in
//! batches, for series that every worker writes on every request.
//!
//! A recorder's counter is one atomic and a histogram one shared sample
//! buffer: when both workers add to the same series tens of thousands of
//! times a second, the cache line holding it moves between the cores on every
//! request (a build without the HTTP metrics served `/health/live` 3–6 % faster). A shard
//! is one thread's pending counts behind a mutex only that thread takes,
//! except when [`flush_all`] hands every shard's counts to the recorder,
//! which [`render_metrics`](super::render_metrics) does before each scrape,
//! so a scrape sees every count recorded before it. Its owner also flushes it
//! every few dozen samples, so a shard stays small however long nobody
//! scrapes.

use std::sync::{Arc, Mutex, PoisonError};

/// What a shard holds: counts not yet given to the recorder.
pub trait Shard: Send {
    /// Give every pending count to the recorder and forget it.
    fn flush(&mut self);
}

type Registered = Arc<Mutex<dyn Shard>>;

fn registry() -> &'static Mutex<Vec<Registered>> {
    static SHARDS: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
    &SHARDS
}

/// A new shard that [`flush_all`] reaches; keep it in a `thread_local!`.
pub fn register<T: Shard + 'static>(shard: T) -> Arc<Mutex<T>> {
    let shard = Arc::new(Mutex::new(shard));
    let registered: Registered = shard.clone();
    registry()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(registered);
    shard
}

/// Hand every shard's pending counts to the recorder. The shards of threads
/// that have ended are flushed one last time and dropped.
pub fn flush_all() {
    let mut shards = registry().lock().unwrap_or_else(PoisonError::into_inner);
    shards.retain(|shard| {
        shard.lock().unwrap_or_else(PoisonError::into_inner).flush();
        // Only the list holds it: its thread is gone, and so are its counts.
        Arc::strong_count(shard) > 1
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tally {
        pending: u64,
        flushed: Arc<Mutex<u64>>,
    }

    impl Shard for Tally {
        fn flush(&mut self) {
            *self.flushed.lock().unwrap() += std::mem::take(&mut self.pending);
        }
    }

    #[test]
    fn a_flush_hands_over_every_threads_counts_and_drops_ended_threads() {
        let flushed = Arc::new(Mutex::new(0));
        let ended: Vec<_> = (0..4)
            .map(|_| {
                let flushed = flushed.clone();
                std::thread::spawn(move || {
                    let shard = register(Tally {
                        pending: 0,
                        flushed,
                    });
                    for _ in 0..10 {
                        shard.lock().unwrap().pending += 1;
                    }
                    Arc::downgrade(&shard)
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        let alive = register(Tally {
            pending: 5,
            flushed: flushed.clone(),
        });
        flush_all();
        assert_eq!(*flushed.lock().unwrap(), 45);
        // The ended threads' shards are gone from the list; the live one stays.
        assert!(ended.iter().all(|s| s.upgrade().is_none()));
        let listed = registry()
            .lock()
            .unwrap()
            .iter()
            .filter(|s| Arc::as_ptr(s).cast::<()>() == Arc::as_ptr(&alive).cast::<()>())
            .count();
        assert_eq!(listed, 1);
        alive.lock().unwrap().pending = 2;
        flush_all();
        assert_eq!(*flushed.lock().unwrap(), 47);
    }
}
