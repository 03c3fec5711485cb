//! A coarse timer for the per-request deadlines of the edge threads: hyper's header-read
//! timeout, the upstream response timeout and the streamed body's idle timeout.
//!
//! Every request arms and disarms these, and tokio's timer wakes its own driver (an eventfd
//! write and an extra trip through `epoll_wait`) whenever a re-armed deadline is earlier than the
//! one it parked for — measured here, almost once per request, ~6% of the gateway's CPU. These
//! deadlines are seconds to minutes long, so they need no millisecond precision: each edge
//! thread keeps its sleeps in a list that one ticker task checks every [`TICK`]. A deadline
//! fires up to one tick late, never early.
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_millis(100);

struct Entry {
    deadline: Mutex<Instant>,
    waker: Mutex<Option<Waker>>,
}

thread_local! {
    /// This thread's armed sleeps, and whether its ticker runs.
    static ARMED: RefCell<(Vec<Weak<Entry>>, bool)> = const { RefCell::new((Vec::new(), false)) };
}

/// Ticks while the thread has armed sleeps; ends when none is left (restarted on demand).
async fn ticker() {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let (due, idle) = ARMED.with(|a| {
            let mut a = a.borrow_mut();
            let mut due = Vec::new();
            a.0.retain(|w| {
                let Some(e) = w.upgrade() else { return false };
                if *e.deadline.lock().unwrap_or_else(PoisonError::into_inner) <= now {
                    due.push(e);
                }
                true
            });
            let idle = a.0.is_empty();
            if idle {
                a.1 = false;
            }
            (due, idle)
        });
        for e in due {
            if let Some(w) = e.waker.lock().unwrap_or_else(PoisonError::into_inner).take() {
                w.wake();
            }
        }
        if idle {
            return;
        }
    }
}

/// A sleep checked by the thread's ticker. `Send + Sync` as hyper requires; it must be polled on
/// a thread that runs a tokio runtime (an edge thread).
pub struct CoarseSleep {
    entry: Arc<Entry>,
    armed: AtomicBool,
}

impl CoarseSleep {
    pub fn until(deadline: Instant) -> Self {
        Self {
            entry: Arc::new(Entry { deadline: Mutex::new(deadline), waker: Mutex::new(None) }),
            armed: AtomicBool::new(false),
        }
    }

    pub fn after(d: Duration) -> Self {
        Self::until(Instant::now() + d)
    }

    /// Moves the deadline; cheap (no timer wheel, no wake-up).
    pub fn reset(&self, deadline: Instant) {
        *self.entry.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
    }

    fn arm(&self) {
        if self.armed.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(&self.entry);
        let start = ARMED.with(|a| {
            let mut a = a.borrow_mut();
            a.0.push(weak);
            !std::mem::replace(&mut a.1, true)
        });
        if start {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(ticker());
                }
                Err(_) => {
                    // No runtime on this thread: nothing would ever tick. Let the next arm try.
                    ARMED.with(|a| a.borrow_mut().1 = false);
                    self.armed.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if *self.entry.deadline.lock().unwrap_or_else(PoisonError::into_inner) <= Instant::now() {
            return Poll::Ready(());
        }
        {
            let mut w = self.entry.waker.lock().unwrap_or_else(PoisonError::into_inner);
            match w.as_ref() {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        self.arm();
        Poll::Pending
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

/// hyper's timer on the edge threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep::after(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<CoarseSleep>() {
            Some(s) => s.reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_after_the_deadline_never_before() {
        let start = Instant::now();
        CoarseSleep::after(Duration::from_millis(250)).await;
        assert!(start.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reset_moves_the_deadline_later() {
        let start = Instant::now();
        let s = CoarseSleep::after(Duration::from_millis(50));
        s.reset(Instant::now() + Duration::from_millis(300));
        s.await;
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_sleep_is_forgotten_and_the_ticker_stops() {
        let s = CoarseSleep::after(Duration::from_secs(60));
        let mut s = Box::pin(s);
        assert!(futures_poll_once(s.as_mut()).is_pending());
        drop(s);
        tokio::time::sleep(TICK * 3).await;
        assert!(ARMED.with(|a| a.borrow().0.is_empty() && !a.borrow().1));
    }

    fn futures_poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        f.poll(&mut cx)
    }
}
