//! The threads that serve client connections: one single-threaded runtime
//! per worker, like nginx's worker processes. Each HTTP entrypoint's accept
//! loop runs on a worker too, and deals new connections out to the workers
//! in turn; a connection stays on its worker until it closes: its request
//! futures, its backend connection and its timers are all woken and polled
//! on that one thread. A shared work-stealing runtime would move a
//! connection's task between threads as its sockets become ready, paying
//! for the hand-over (and the cold caches) on every request.
//!
//! A connection dealt to the accepting worker itself is served where it
//! was accepted, with no hand-over at all: with one worker, accepting a
//! connection costs what it costs in a single-threaded server. Only those
//! dealt to another worker move their socket to that worker's reactor.
//!
//! Everything else (TCP routes, the admin API, the Proxmox pollers, wakes)
//! stays on the main runtime.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    // Dropping these ends the workers' runtimes, on their own threads.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            stops.push(stop);
            thread::Builder::new()
                .name(format!("drowsy-worker-{i}"))
                .spawn(move || {
                    // Runs the worker's tasks until the proxy is gone; the
                    // runtime is dropped here, where blocking is allowed.
                    let _ = rt.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// How many workers a proxy gets: `TOKIO_WORKER_THREADS` when set (as
    /// for the main runtime), else one per CPU.
    pub fn wanted() -> usize {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .or_else(|| thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
    }

    /// The next worker in turn (for a connection or an accept loop): its
    /// number, to tell whether it is the caller's own, and its runtime.
    pub fn next(&self) -> (usize, &Handle) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i, &self.handles[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_the_workers_and_run_on_their_threads() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.handles.len(), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names: Vec<String> = rt.block_on(async {
            let mut names = Vec::new();
            for turn in 0..4 {
                let (i, handle) = workers.next();
                assert_eq!(i, turn % 2);
                let task = handle
                    .spawn(async { thread::current().name().unwrap_or_default().to_string() });
                names.push(task.await.unwrap());
            }
            names
        });
        assert_eq!(
            names,
            [
                "drowsy-worker-0",
                "drowsy-worker-1",
                "drowsy-worker-0",
                "drowsy-worker-1"
            ]
        );
    }
}
