//! Load runs: many timed requests at once, closed loop or open loop, on the backend's runtime.
//!
//! With a cached context (`--depth`, `--turns`) the run is closed loop only (settings refuse the
//! open loop) and each client is pinned to its own llama-server slot (`id_slot`): before each of
//! its requests it primes that slot with the request's context, untimed, exactly as a single run
//! primes its one slot (see `context`), so what the timed request finds cached is its context and
//! nothing another client or an earlier request of its own left there. The slots are filled with
//! their first contexts before the run's clock starts; re-priming a slot that holds the context
//! and one earlier prompt costs one token, and a conversation's next turn the tail of the file's
//! answer that the generation did not produce.

use super::body::Ask;
use super::stream::Connection;
use super::{ApiBackend, ApiFlavor};
use crate::backend::{Measurement, RunError};
use crate::bench::interrupt;
use crate::bench::load::{arrivals, LoadMode, LoadPlan};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One request of a load run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRequest {
    /// The prompt text.
    pub prompt: String,
    /// Tokens to generate (a dataset line's `output_tokens`, else `--max-new-tokens`).
    pub max_new_tokens: u32,
    /// Token ids the client's slot holds before the request (primed untimed); empty: a cold
    /// request with the cache off.
    pub context: Vec<u32>,
}

/// What a load run sends.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadWork {
    /// Every distinct request.
    pub requests: Vec<LoadRequest>,
    /// Runs of requests one client sends in order (a conversation's turns; otherwise one request
    /// each), taken round robin by the closed loop's clients until the run's request count is
    /// issued. The open loop sends the requests round robin.
    pub jobs: Vec<Range<usize>>,
}

impl LoadWork {
    /// Whether any request needs a primed slot.
    pub fn has_context(&self) -> bool {
        self.requests.iter().any(|r| !r.context.is_empty())
    }
}

impl ApiBackend {
    /// Why this server cannot run `work` with `clients` pinned slots, if it cannot: contexts need
    /// llama-server's native endpoint and a slot per client.
    pub fn load_refusal(&self, work: &LoadWork, clients: u32) -> Option<String> {
        if !work.has_context() {
            return None;
        }
        if self.flavor == ApiFlavor::Openai || self.settings.endpoint != super::Endpoint::Completion
        {
            return Some("a cached context in a load run needs llama-server's /completion (the llama flavor): it is sent as token ids on a pinned slot".into());
        }
        match self.server_slots() {
            Some(s) if s < u64::from(clients) => Some(format!(
                "{}: {s} slots for {clients} clients, each needs its own slot for its context: lower --concurrency or start the server with --parallel {clients}",
                self.who()
            )),
            _ => None,
        }
    }

    /// Issue the requests of `work` for a load run and hand each to `done` as it finishes:
    /// closed loop (`concurrency` clients taking jobs) or open loop (gamma arrivals, each
    /// request's clock from its scheduled send). Stops after `plan.requests` requests or
    /// `plan.duration`; on Ctrl-C it sends nothing more, gives the requests in flight
    /// [`GRACE`] to finish and hands the rest over as failed. Returns (wall seconds, most
    /// requests in flight).
    pub fn run_load(
        &self,
        work: &LoadWork,
        plan: LoadPlan,
        done: &mut dyn FnMut(LoadDone),
    ) -> (f64, usize) {
        let pinned = work.has_context();
        self.rt.block_on(async {
            if let (true, LoadMode::Closed { concurrency }) = (pinned, plan.mode) {
                self.fill_slots(work, concurrency).await;
            }
            let run = Run {
                backend: self,
                work,
                plan,
                start: Instant::now(),
                done: RefCell::new(done),
                open: RefCell::default(),
                max_in_flight: Cell::new(0),
                issued: Cell::new(0),
                next_job: Cell::new(0),
                reserved: Cell::new(0),
            };
            let finished = match plan.mode {
                LoadMode::Closed { concurrency } => {
                    let clients = (0..concurrency).map(|w| run.client(pinned.then_some(w)));
                    with_grace(futures_util::future::join_all(clients))
                        .await
                        .is_some()
                }
                LoadMode::Open { rate, burstiness } => {
                    let times = arrivals(plan.requests, rate, burstiness, plan.seed);
                    with_grace(run.dispatch(&times)).await.is_some()
                }
            };
            if !finished {
                run.abandon();
            }
            (run.start.elapsed().as_secs_f64(), run.max_in_flight.get())
        })
    }

    /// `n` untimed warm-up requests before a load point, one after another (the work's first
    /// requests, round robin): never recorded; a failing one shows up in the timed requests.
    pub fn warm_up(&self, work: &LoadWork, n: u32) {
        for k in 0..n as usize {
            if interrupt::requested() {
                return;
            }
            let req = &work.requests[k % work.requests.len()];
            let _ = self.rt.block_on(self.timed_load_request(req, None));
        }
    }

    /// Before the run's clock: every client's slot primed with the context of its first job's
    /// first request (client `w` takes job `w` first), all at once, so the run's duration does
    /// not include prefilling a deep context from nothing on every slot. A failure here is
    /// ignored: the request's own priming meets it again and makes it that request's row.
    async fn fill_slots(&self, work: &LoadWork, clients: u32) {
        let firsts = (0..clients).filter_map(|w| {
            let job = work.jobs.get(w as usize % work.jobs.len())?;
            let ctx = &work.requests[job.start].context;
            (!ctx.is_empty()).then(|| self.prime_slot(ctx, w))
        });
        let _ = futures_util::future::join_all(firsts).await;
    }

    /// One timed request of a load run, on a fresh connection: a load client's
    /// arrival-to-first-token includes its connection setup, as load runs always did.
    async fn timed_load_request(
        &self,
        req: &LoadRequest,
        slot: Option<u32>,
    ) -> Result<Measurement, RunError> {
        let ask = Ask {
            prompt: &req.prompt,
            max_new_tokens: req.max_new_tokens,
            context: &req.context,
            slot,
        };
        let mut m = self.stream_one(&ask, Connection::Fresh).await?;
        super::own_counts(&mut m, req.context.len());
        Ok(m)
    }
}

/// The open loop's dispatcher stops sleeping this long before an arrival (the timer's
/// resolution is a millisecond) and yields until it is due.
const SPIN: Duration = Duration::from_micros(1500);

/// How long the requests in flight may take to finish after Ctrl-C.
pub const GRACE: Duration = Duration::from_secs(2);

/// A finished request of a load run (or one abandoned in flight after Ctrl-C).
#[derive(Debug)]
pub struct LoadDone {
    /// The request's number in the run.
    pub i: usize,
    /// Its index in `work.requests`.
    pub r: usize,
    /// What it measured.
    pub result: Result<Measurement, RunError>,
    /// When it was sent (after its slot was primed), seconds since the run's start.
    pub sent_s: f64,
    /// When it ended, seconds since the start.
    pub done_s: f64,
}

/// One load run in progress (a single-threaded runtime: cells, no locks).
struct Run<'a, 'd> {
    backend: &'a ApiBackend,
    work: &'a LoadWork,
    plan: LoadPlan,
    start: Instant,
    done: RefCell<&'d mut dyn FnMut(LoadDone)>,
    /// Requests sent and not finished: number → (request index, sent at).
    open: RefCell<BTreeMap<usize, (usize, f64)>>,
    max_in_flight: Cell<usize>,
    /// Request numbers handed out.
    issued: Cell<usize>,
    /// Closed loop: jobs taken, and requests reserved by them.
    next_job: Cell<usize>,
    reserved: Cell<usize>,
}

impl Run<'_, '_> {
    fn over(&self) -> bool {
        self.plan
            .duration
            .is_some_and(|d| self.start.elapsed() >= d)
            || interrupt::requested()
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Request `i` (index `r`): its slot primed first when it has a context (untimed), then
    /// the timed request. Open loop: `scheduled` is when it should have been sent; its TTFT and
    /// E2E count from then, and how late it went out is recorded.
    async fn one(&self, i: usize, r: usize, slot: Option<u32>, scheduled: Option<Instant>) {
        let req = &self.work.requests[r];
        let primed = match slot {
            Some(s) if !req.context.is_empty() => self.backend.prime_slot(&req.context, s).await,
            _ => Ok(()),
        };
        let sent_s = self.secs();
        self.open.borrow_mut().insert(i, (r, sent_s));
        let n = self.open.borrow().len();
        self.max_in_flight.set(self.max_in_flight.get().max(n));
        // Stamped last, right before the request's own clock starts: the bookkeeping above is
        // neither lateness nor TTFT.
        let sent = Instant::now();
        let mut result = match primed {
            Ok(()) => self.backend.timed_load_request(req, slot).await,
            Err(e) => Err(e),
        };
        if let (Ok(m), Some(at)) = (&mut result, scheduled) {
            m.count_from_schedule(sent.saturating_duration_since(at));
        }
        self.open.borrow_mut().remove(&i);
        (self.done.borrow_mut())(LoadDone {
            i,
            r,
            result,
            sent_s,
            done_s: self.secs(),
        });
    }

    /// A closed-loop client: takes a whole job and reserves its requests, so that a
    /// conversation is never cut short by another client's requests (only the run's last job,
    /// when the request count ends inside it).
    async fn client(&self, slot: Option<u32>) {
        loop {
            let job = self.work.jobs[self.next_job.get() % self.work.jobs.len()].clone();
            let n = job.len().min(self.plan.requests - self.reserved.get());
            if n == 0 || self.over() {
                return;
            }
            self.next_job.set(self.next_job.get() + 1);
            self.reserved.set(self.reserved.get() + n);
            for r in job.start..job.start + n {
                if self.over() {
                    return;
                }
                let i = self.issued.get();
                self.issued.set(i + 1);
                self.one(i, r, slot, None).await;
            }
        }
    }

    /// The open loop: one dispatcher sends each request at its arrival time and drives the
    /// requests in flight meanwhile (waking at least every 50 ms, so Ctrl-C stops it at once).
    async fn dispatch(&self, times: &[f64]) {
        let mut running = FuturesUnordered::new();
        let n = self.work.requests.len();
        'arrivals: for (i, t) in times.iter().enumerate() {
            let at = self.start + Duration::from_secs_f64(*t);
            loop {
                if self.over() {
                    break 'arrivals;
                }
                let now = Instant::now();
                if now >= at {
                    break;
                }
                // The timer wakes up to a millisecond late: it sleeps until SPIN before the
                // arrival and yields from there (the requests in flight still run meanwhile).
                let left = at - now;
                let nap = left.saturating_sub(SPIN).min(Duration::from_millis(50));
                tokio::select! {
                    biased;
                    Some(()) = running.next(), if !running.is_empty() => {}
                    () = tokio::time::sleep(nap), if !nap.is_zero() => {}
                    () = tokio::task::yield_now(), if nap.is_zero() => {}
                }
            }
            running.push(self.one(i, i % n, None, Some(at)));
        }
        while running.next().await.is_some() {}
    }

    /// After Ctrl-C and the grace period: every request still in flight becomes a failed row.
    fn abandon(&self) {
        let open = std::mem::take(&mut *self.open.borrow_mut());
        for (i, (r, sent_s)) in open {
            (self.done.borrow_mut())(LoadDone {
                i,
                r,
                result: Err(RunError::new(format!(
                    "interrupted: in flight at Ctrl-C and not finished within {} s",
                    GRACE.as_secs()
                ))),
                sent_s,
                done_s: self.secs(),
            });
        }
    }
}

/// Drive `fut` to its end, unless Ctrl-C comes: then give it [`GRACE`] more. None when it
/// did not finish.
async fn with_grace<F: std::future::Future>(fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if interrupt::requested() {
                    break;
                }
            }
        }
    }
    tokio::time::timeout(GRACE, fut).await.ok()
}
