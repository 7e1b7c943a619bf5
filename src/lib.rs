//! ttft: one binary that measures the time to first token of the same model three ways and puts
//! them side by side: in-process llama.cpp (`inproc`), llama.cpp's HTTP server (`api`), and a Hugging
//! Face checkpoint on libtorch (`hf`). See the README for the definition of every number.

pub mod app;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
#[cfg(feature = "torch")]
pub mod models;
pub mod report;
pub mod secret;
pub mod settings;
