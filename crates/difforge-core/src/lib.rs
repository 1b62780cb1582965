//! Small pieces shared by every difforge crate: writing files so that they are never seen
//! half-written, content hashes, and the derivation of independent random streams from one seed.

pub mod atomic;
pub mod hash;
pub mod seed;

pub use atomic::{write_atomic, write_atomic_with};
pub use hash::{sha256_file, sha256_hex};
pub use seed::{derive_seed, rng_for, Stream};
