//! `difforge serve`: a checkpoint behind an HTTP API. Requests are validated, queued in a
//! bounded queue (429 when full), merged into batches by one worker thread that owns the model,
//! and answered as PNG or JSON. Prometheus metrics, bearer-key auth, hot reload and graceful
//! shutdown come with it.

pub mod auth;
pub mod config;
pub mod connections;
pub mod drift;
pub mod feature_drift;
pub mod loaded;
pub mod metrics;
pub mod request;
pub mod routes;
pub mod server;
pub mod worker;

pub use config::ServeConfig;
pub use server::{serve, ServeError, ServeOptions};
