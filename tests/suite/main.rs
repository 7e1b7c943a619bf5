//! The integration tests, one test binary: each module was its own binary before, and every one
//! of them compiled `helpers` again and linked ttft's library again (on 2 cores, about 90 s of
//! a cold test build). Tests that time real work take `helpers::serial()`, which holds across
//! the modules now; a module's features are its `cfg` here (the fast tier is `tests/fast.rs`).

mod helpers;

#[cfg(all(feature = "llama", feature = "torch"))]
mod cli;
mod connection;
mod dataset;
#[cfg(all(feature = "llama", feature = "torch"))]
mod depth;
#[cfg(all(feature = "llama", feature = "torch"))]
mod edges;
mod faults;
#[cfg(feature = "torch")]
mod hf_backend;
#[cfg(feature = "torch")]
mod hf_parity;
mod ignore_eos;
#[cfg(feature = "llama")]
mod llama_backends;
mod load_chat;
mod load_open;
mod load_workloads;
mod openai_cache;
#[cfg(all(feature = "llama", feature = "torch"))]
mod roofline;
#[cfg(all(feature = "llama", feature = "torch"))]
mod statistics;
mod turns;
mod waits;
