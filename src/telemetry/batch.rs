//! Log lines reach stdout in batches, not one `write` each.
//!
//! Writing every JSON line straight to stdout cost a system call per line, and
//! at tens of thousands of requests per second the workers also queued on
//! stdout's lock: together about 17 % of the server's samples on the
//! `/health/live` path (docs/performance.md). Here a line is copied into a
//! shared buffer, which a flusher thread writes out every [`FLUSH_EVERY`], so
//! a request thread never makes a system call to log. Nothing is dropped:
//!
//! - a `WARN` or `ERROR` line is written out before the call that logs it
//!   returns, with everything buffered before it;
//! - when the buffer holds [`MAX_PENDING`] bytes (the output is slower than
//!   the logging), the thread that logs writes it out itself: the output pushes
//!   back, as plain stdout would;
//! - dropping the [`Flusher`] (at shutdown) and a panic write out what is left.
//!
//! Lines keep their order: one lock serialises the writes out, and a batch is
//! taken from the buffer under it.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How often the flusher writes out what was logged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// Buffered bytes at which the logging thread writes out itself.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Output {
    sink: Box<dyn Write + Send>,
    /// The batch being written; swapped with the buffer, so both keep their
    /// capacity from batch to batch.
    spare: Vec<u8>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    output: Mutex<Output>,
}

impl Shared {
    /// Write out everything buffered so far.
    fn flush(&self) {
        let mut output = lock(&self.output);
        let Output { sink, spare } = &mut *output;
        std::mem::swap(&mut *lock(&self.pending), spare);
        if !spare.is_empty() {
            // A log line that cannot be written has nowhere to be reported.
            let _ = sink.write_all(spare);
            spare.clear();
        }
        let _ = sink.flush();
    }
}

/// A [`MakeWriter`] whose lines go out in batches; cheap to clone.
#[derive(Clone)]
pub struct Batched {
    shared: Arc<Shared>,
}

/// Runs the flusher thread; dropping it stops the thread and writes out the
/// rest.
pub struct Flusher {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Batched {
    /// Batches for `sink`, written out by a thread of its own.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn new(sink: impl Write + Send + 'static) -> std::io::Result<(Self, Flusher)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            output: Mutex::new(Output {
                sink: Box::new(sink),
                spare: Vec::with_capacity(64 * 1024),
            }),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                    for_thread.flush();
                }
                for_thread.flush();
            })?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            Flusher {
                shared,
                stop: Some(stop),
                thread: Some(thread),
            },
        ))
    }

    /// One line of this level (see [`MakeWriter::make_writer_for`]).
    pub fn line(&self, level: Level) -> Line<'_> {
        Line {
            shared: &self.shared,
            urgent: urgent(level),
        }
    }

    /// Write out everything buffered so far, now.
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// Write out what is buffered when a thread panics, before the panic
    /// message (the process may be about to abort).
    pub fn flush_on_panic(&self) {
        let shared = self.shared.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Not if this thread panicked while writing out: it holds the lock.
            if let Ok(mut output) = shared.output.try_lock() {
                let Output { sink, spare } = &mut *output;
                std::mem::swap(&mut *lock(&shared.pending), spare);
                let _ = sink.write_all(spare);
                spare.clear();
                let _ = sink.flush();
            }
            previous(info);
        }));
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.flush();
    }
}

/// One line's writer: appends to the buffer; written out when dropped if the
/// line is urgent.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut pending = lock(&self.shared.pending);
            pending.extend_from_slice(buf);
            pending.len() >= MAX_PENDING
        };
        if full {
            self.shared.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.shared.flush();
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.urgent {
            self.shared.flush();
        }
    }
}

/// Lines of this level are written out before the call that logs them returns.
fn urgent(level: Level) -> bool {
    level <= Level::WARN
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        self.line(*meta.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting the writes it gets.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut s = lock(&self.0);
            s.0.extend_from_slice(buf);
            s.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).0.clone()).unwrap_or_default()
        }
        fn writes(&self) -> usize {
            lock(&self.0).1
        }
    }

    fn line(w: &Batched, text: &str) {
        let _ = w.make_writer().write_all(text.as_bytes());
    }

    #[test]
    fn lines_go_out_in_order_in_few_writes_and_the_rest_at_shutdown() {
        let sink = Sink::default();
        let (w, flusher) = Batched::new(sink.clone()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..1000 {
            line(&w, &format!("{i}\n"));
        }
        w.flush();
        let expected: String = (0..1000).map(|i| format!("{i}\n")).collect();
        assert_eq!(sink.text(), expected);
        assert!(
            sink.writes() < 10,
            "{} writes for 1000 lines",
            sink.writes()
        );
        line(&w, "last\n");
        drop(flusher);
        assert!(sink.text().ends_with("999\nlast\n"));
    }

    #[test]
    fn the_flusher_writes_out_without_being_asked() {
        let sink = Sink::default();
        let (w, _flusher) = Batched::new(sink.clone()).unwrap_or_else(|e| panic!("{e}"));
        line(&w, "a\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "a\n");
    }

    #[test]
    fn a_warning_goes_out_before_the_call_returns_with_what_came_before() {
        let sink = Sink::default();
        let (w, _flusher) = Batched::new(sink.clone()).unwrap_or_else(|e| panic!("{e}"));
        line(&w, "info\n");
        assert!(urgent(Level::WARN) && urgent(Level::ERROR) && !urgent(Level::INFO));
        let _ = Line {
            shared: &w.shared,
            urgent: urgent(Level::WARN),
        }
        .write_all(b"warn\n");
        assert_eq!(sink.text(), "info\nwarn\n");
    }

    #[test]
    fn a_full_buffer_is_written_out_by_the_thread_that_logs() {
        let sink = Sink::default();
        let (w, _flusher) = Batched::new(sink.clone()).unwrap_or_else(|e| panic!("{e}"));
        let big = "x".repeat(MAX_PENDING);
        line(&w, &big);
        assert_eq!(sink.text().len(), MAX_PENDING);
    }
}
