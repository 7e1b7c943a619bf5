//! The benchmark protocol: prompts, the schedule of warm-ups and timed runs, and statistics.

pub mod backend_report;
pub mod bootstrap;
pub mod cache_bust;
pub mod chat;
pub mod conversation;
pub mod dataset;
pub mod depth;
pub mod interrupt;
pub mod load;
pub mod load_repeat;
pub mod load_report;
pub mod load_run;
pub mod load_search;
pub mod load_text;
pub mod parity;
pub mod prompts;
pub mod record;
pub mod runner;
pub mod stats;
pub mod synthetic;
pub mod turns;
