//! Dedicated tenants' worker processes: the control plane's side (`pool`), the worker's side
//! (`serve`, and `link` for its store calls), and the framed protocol between them (`frames`).
//!
//! A dedicated tenant's agent work runs in `bulkhead worker --tenant T`, a process serving
//! that tenant alone. `bulkhead serve` authenticates the request as always, then forwards it
//! over a Unix socket the worker connected to at start (its peer credentials checked against
//! the child it spawned). The worker is handed its tenant's data keys and never the
//! key-encryption key; it builds every context from its own tenant's record, so nothing it
//! receives can name another tenant.

pub mod frames;
pub mod link;
pub mod pool;
pub mod serve;

pub use pool::{WorkerError, WorkerView, Workers};
