//! A thread for work that may hold a core for a while (building the read models as of a past
//! moment) without taking it from the threads that answer check-ins: it runs at the lowest
//! scheduling priority (nice 19), and blocking work it starts — the file log's reads, the
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

/// Nice 19 for the calling thread (on Linux the nice value is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority and gettid take plain integers and touch no memory of ours.
        let result =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        if result != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the background thread's priority"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn the_background_thread_runs_at_the_lowest_priority() {
        let background = Background::start("test-nice").unwrap();
        // SAFETY: as in `lower_priority`.
        let nice = background
            .run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            .await
            .unwrap();
        assert_eq!(nice, 19);
    }
}
