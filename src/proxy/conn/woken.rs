//! A future that is polled only when it asked to be.
//!
//! A connection's task runs the connection beside a few watchers (the
//! keep-alive and header timers, the send stall, shutdown). `select!`
//! polls every branch each time the task wakes, which is several times per
//! request, although the watchers almost never have anything new: they
//! wait for a timer or a token that has not fired. Wrapped in [`Woken`], a
//! watcher is polled again only after its own waker was called, so the
//! common wake-up (bytes from the client or the backend) costs one atomic
//! swap per watcher instead of a full poll.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    pub struct Woken<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        // The waker handed to `inner`, made once: the same waker each time
        // lets timers and notifiers skip re-registering it.
        waker: Waker,
    }
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Woken<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            // Polled the first time, so it can register its wakers.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Woken { inner, flag, waker }
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read, so a wake between the two is
        // not lost: it sets the flag this poll then sees, or wakes the task
        // again.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set and it is woken.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polls_the_inner_future_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let slot = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let ready = Arc::new(AtomicBool::new(false));
        let mut w = Box::pin(Woken::new(Probe {
            polls: polls.clone(),
            waker: slot.clone(),
            ready: ready.clone(),
        }));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll goes through"
        );
        for _ in 0..5 {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled");
        ready.store(true, Ordering::SeqCst);
        let inner_waker = slot.lock().unwrap().take().unwrap();
        inner_waker.wake();
        assert!(w.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_inside_still_fires() {
        let slept = Woken::new(tokio::time::sleep(Duration::from_secs(5)));
        tokio::time::timeout(Duration::from_secs(6), slept)
            .await
            .expect("the wrapped timer fires and wakes the task");
    }

    #[tokio::test]
    async fn a_wake_from_another_task_reaches_the_outer_task() {
        let token = tokio_util::sync::CancellationToken::new();
        let watched = Woken::new(token.clone().cancelled_owned());
        let cancel = tokio::spawn(async move {
            tokio::task::yield_now().await;
            token.cancel();
        });
        tokio::time::timeout(Duration::from_secs(10), watched)
            .await
            .expect("cancellation seen through the wrapper");
        cancel.await.unwrap();
    }
}
