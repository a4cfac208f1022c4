//! safedrift: catches fine-tuned language models that have quietly lost their
//! safety training.
//!
//! The library is the wiring between the parts: [`config`] (the TOML file),
//! [`benchmark`] (harmful-instruction sets), [`backend`] (models that answer),
//! the judges of the `safedrift-judges` crate, [`pipeline`] (one evaluation,
//! resumable), [`store`] (sled), [`metrics`] and [`stats`] (the paper's metrics
//! and paired tests), [`report`] (the Run JSON and the table), and [`distill`]
//! (training the local classifier judge).

pub mod alerts;
pub mod api;
pub mod backend;
pub mod backup;
pub mod benchmark;
pub mod config;
pub mod daemon;
pub mod distill;
pub mod evaluation;
/// The one HTTP retry policy (it lives in the lowest crate that talks HTTP).
pub use safedrift_watchers::http;
pub mod pipeline;
pub mod probes;
pub mod queue;
pub mod records;
pub mod report;
pub mod resolve;
pub mod safety_metrics;
pub mod stats;
pub mod store;
