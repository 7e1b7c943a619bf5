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
use crate::bench::load::{arrivals, LoadMode, LoadPlan};
use std::cell::{Cell, RefCell};
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
    /// One job per request.
    pub fn single(requests: Vec<LoadRequest>) -> Self {
        let jobs = (0..requests.len()).map(|i| i..i + 1).collect();
        Self { requests, jobs }
    }

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

    /// Issue the requests of `work` for a load run and hand each result to `done(i, r, result)`
    /// as it finishes, `i` the request's number in the run and `r` its index in `work.requests`:
    /// closed loop (`concurrency` clients taking jobs) or open loop (gamma arrivals). Stops after
    /// `plan.requests` requests or `plan.duration`. Returns (wall seconds, most requests in
    /// flight).
    pub fn run_load(
        &self,
        work: &LoadWork,
        plan: LoadPlan,
        done: &mut dyn FnMut(usize, usize, Result<Measurement, RunError>),
    ) -> (f64, usize) {
        let done = RefCell::new(done);
        let in_flight = Cell::new(0usize);
        let max_in_flight = Cell::new(0usize);
        let issued = Cell::new(0usize);
        let pinned = work.has_context();
        self.rt.block_on(async {
            if let (true, LoadMode::Closed { concurrency }) = (pinned, plan.mode) {
                self.fill_slots(work, concurrency).await;
            }
            let start = Instant::now();
            let over = || {
                plan.duration.is_some_and(|d| start.elapsed() >= d)
                    || crate::bench::interrupt::requested()
            };
            // The next request number.
            let number = || {
                let i = issued.get();
                issued.set(i + 1);
                i
            };
            let one = |i: usize, r: usize, slot: Option<u32>| {
                let (done, in_flight, max_in_flight) = (&done, &in_flight, &max_in_flight);
                async move {
                    let req = &work.requests[r];
                    let primed = match slot {
                        Some(s) if !req.context.is_empty() => {
                            self.prime_slot(&req.context, s).await
                        }
                        _ => Ok(()),
                    };
                    in_flight.set(in_flight.get() + 1);
                    max_in_flight.set(max_in_flight.get().max(in_flight.get()));
                    let result = match primed {
                        Ok(()) => self.timed_load_request(req, slot).await,
                        Err(e) => Err(e),
                    };
                    in_flight.set(in_flight.get() - 1);
                    (done.borrow_mut())(i, r, result);
                }
            };
            match plan.mode {
                LoadMode::Closed { concurrency } => {
                    // A client takes a whole job and reserves its requests, so that a
                    // conversation is never cut short by another client's requests (only the
                    // run's last job, when the request count ends inside it).
                    let (next_job, reserved) = (Cell::new(0usize), Cell::new(0usize));
                    let worker = |w: u32| {
                        let (one, over, number) = (&one, &over, &number);
                        let (next_job, reserved) = (&next_job, &reserved);
                        async move {
                            let slot = pinned.then_some(w);
                            loop {
                                let job = &work.jobs[next_job.get() % work.jobs.len()];
                                let n = job.len().min(plan.requests - reserved.get());
                                if n == 0 || over() {
                                    break;
                                }
                                next_job.set(next_job.get() + 1);
                                reserved.set(reserved.get() + n);
                                for r in job.start..job.start + n {
                                    if over() {
                                        return;
                                    }
                                    one(number(), r, slot).await;
                                }
                            }
                        }
                    };
                    futures_util::future::join_all((0..concurrency).map(worker)).await;
                }
                LoadMode::Open { rate, burstiness } => {
                    let times = arrivals(plan.requests, rate, burstiness, plan.seed);
                    let n = work.requests.len();
                    futures_util::future::join_all(times.into_iter().enumerate().map(|(i, t)| {
                        let (one, over) = (&one, &over);
                        async move {
                            tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into())
                                .await;
                            if !over() {
                                one(i, i % n, None).await;
                            }
                        }
                    }))
                    .await;
                }
            }
            (start.elapsed().as_secs_f64(), max_in_flight.get())
        })
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
