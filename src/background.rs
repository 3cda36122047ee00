//! A thread for work that may hold a core for a while (building the read models as of a past
//! moment) without taking it from the threads that answer check-ins: it runs at a low
//! scheduling priority ([`BACKGROUND_NICE`], as the indexes' compactions, so that neither
//! starves the other, and both yield to the HTTP threads), and blocking work it starts — the file log's reads, the
//! decoding of a snapshot — runs inline on it rather than on the shared blocking pool, so
//! that all of it yields to the rest of the server.

use std::cell::Cell;
use std::sync::mpsc;

thread_local! {
    static BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// Runs blocking work `f`: inline on the background thread, else on tokio's blocking pool.
pub async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if BACKGROUND.get() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}

type Job = Box<dyn FnOnce() + Send>;

/// The background thread; jobs run one at a time, in order.
#[derive(Debug)]
pub struct Background {
    jobs: mpsc::Sender<Job>,
}

/// The background thread is gone (it could not start).
#[derive(Debug, thiserror::Error)]
#[error("the background thread is not running")]
pub struct Gone;

impl Background {
    /// Starts the thread (named `name`). Its priority is lowered where the platform allows.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                lower_priority();
                BACKGROUND.set(true);
                for job in rx {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }
}

/// [`BACKGROUND_NICE`] for the calling thread (on Linux the nice value is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority and gettid take plain integers and touch no memory of ours.
        let result = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                BACKGROUND_NICE,
            )
        };
        if result != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the background thread's priority"
            );
        }
    }
}

/// The scheduling priority (nice) of background work: the as-of thread, and the threads
/// fjall starts for the indexes (flushes and compactions). A thread at nice 0 that wants a
/// core gets about nine tenths of it against one at nice 10, so check-ins come first; the
/// as-of thread and compactions share alike (at nice 19 beside a nice-10 compaction, one
/// table as of a moment took 3.5 s instead of 0.4 s; a starved compaction slows every
/// index read).
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers to `nice` the threads of this process named `name` that run at a higher priority
/// (threads that a library starts, like fjall's workers, which offer no hook). Linux only;
/// best effort: a thread that cannot be reniced is logged and left as it is.
pub fn lower_threads_named(name: &str, nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<libc::id_t>().ok())
            else {
                continue;
            };
            let named = std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name);
            if !named {
                continue;
            }
            // SAFETY: getpriority and setpriority take plain integers and touch no memory
            // of ours; a thread that ended meanwhile makes them fail, which is harmless.
            unsafe {
                if libc::getpriority(libc::PRIO_PROCESS, tid) < nice
                    && libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
                {
                    tracing::warn!(
                        thread = name,
                        error = %std::io::Error::last_os_error(),
                        "could not lower a worker thread's priority"
                    );
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (name, nice);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_named_so_are_lowered_and_others_left_alone() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Two parked threads, one of them named as a library's worker.
        let park = |name: &'static str| {
            let ready_tx = ready_tx.clone();
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    // SAFETY: gettid takes nothing and touches no memory.
                    let tid = unsafe { libc::gettid() } as libc::id_t;
                    ready_tx.send((name, tid)).unwrap();
                    std::thread::park();
                })
                .unwrap()
        };
        let workers = [park("ll-test:worker"), park("ll-test:other")];
        let tids: std::collections::HashMap<_, _> =
            (0..2).map(|_| ready_rx.recv().unwrap()).collect();
        // SAFETY: as in `lower_threads_named`.
        let nice = |tid| unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        // SAFETY: gettid takes nothing and touches no memory.
        let own = nice(unsafe { libc::gettid() } as libc::id_t);
        lower_threads_named("ll-test:worker", 19);
        assert_eq!(nice(tids["ll-test:worker"]), 19);
        assert_eq!(
            nice(tids["ll-test:other"]),
            own,
            "another thread was left alone"
        );
        for w in workers {
            w.thread().unpark();
            w.join().unwrap();
        }
    }

    #[tokio::test]
    async fn work_runs_on_the_background_thread_and_offloads_inline_there() {
        let background = Background::start("test-background").unwrap();
        let (name, inline_name) = background
            .run(|| {
                let here = std::thread::current().name().map(str::to_owned);
                let inline = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(offload(|| std::thread::current().name().map(str::to_owned)))
                    .unwrap();
                (here, inline)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-background"));
        assert_eq!(inline_name, name, "offloaded work ran inline");
        // Elsewhere, offloaded work goes to the blocking pool.
        let pooled = offload(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_ne!(pooled.as_deref(), Some("test-background"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_background_thread_runs_at_the_background_priority() {
        let background = Background::start("test-nice").unwrap();
        // SAFETY: as in `lower_priority`.
        let nice = background
            .run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            .await
            .unwrap();
        assert_eq!(nice, BACKGROUND_NICE);
    }
}
