//! Load runs: many timed requests at once, closed loop or open loop, on the backend's runtime.

use super::ApiBackend;
use crate::backend::{Measurement, RunError};
use std::time::{Duration, Instant};

impl ApiBackend {
    /// Issue many requests for a load run and hand each result to `done` as it finishes:
    /// closed loop (`concurrency` clients back to back) or open loop (gamma arrivals). Stops
    /// after `n` requests or `duration`. Request `i` sends prompt `i % len` with that prompt's
    /// max new tokens. Returns (wall seconds, most requests in flight).
    pub fn run_load(
        &self,
        prompts: &[(String, u32)],
        plan: crate::bench::load::LoadPlan,
        done: &mut dyn FnMut(usize, Result<Measurement, RunError>),
    ) -> (f64, usize) {
        use crate::bench::load::{arrivals, LoadMode};
        let (n, mode, duration, seed) = (plan.requests, plan.mode, plan.duration, plan.seed);
        use std::cell::{Cell, RefCell};
        let done = RefCell::new(done);
        let in_flight = Cell::new(0usize);
        let max_in_flight = Cell::new(0usize);
        let next = Cell::new(0usize);
        self.rt.block_on(async {
            let start = Instant::now();
            let over = || {
                duration.is_some_and(|d| start.elapsed() >= d)
                    || crate::bench::interrupt::requested()
            };
            let one = |i: usize| {
                let (done, in_flight, max_in_flight) = (&done, &in_flight, &max_in_flight);
                async move {
                    in_flight.set(in_flight.get() + 1);
                    max_in_flight.set(max_in_flight.get().max(in_flight.get()));
                    // Connected inside the clock, as load runs always were: a load client's
                    // arrival-to-first-token includes its connection setup.
                    let (prompt, max_new_tokens) = &prompts[i % prompts.len()];
                    let r = self
                        .stream_one(prompt, *max_new_tokens, super::stream::Connection::Fresh)
                        .await;
                    in_flight.set(in_flight.get() - 1);
                    (done.borrow_mut())(i, r);
                }
            };
            match mode {
                LoadMode::Closed { concurrency } => {
                    let worker = || async {
                        loop {
                            let i = next.get();
                            if i >= n || over() {
                                break;
                            }
                            next.set(i + 1);
                            one(i).await;
                        }
                    };
                    futures_util::future::join_all((0..concurrency).map(|_| worker())).await;
                }
                LoadMode::Open { rate, burstiness } => {
                    let times = arrivals(n, rate, burstiness, seed);
                    futures_util::future::join_all(times.into_iter().enumerate().map(|(i, t)| {
                        let one = &one;
                        let over = &over;
                        async move {
                            tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into())
                                .await;
                            if !over() {
                                one(i).await;
                            }
                        }
                    }))
                    .await;
                }
            }
            (start.elapsed().as_secs_f64(), max_in_flight.get())
        })
    }
}
