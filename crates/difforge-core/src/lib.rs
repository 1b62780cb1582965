//! Small pieces shared by every difforge crate: writing files so that they are never seen
//! half-written, content hashes, the derivation of independent random streams from one seed,
//! typed configuration errors, enums chosen by name, and progress bars.

pub mod atomic;
pub mod choice;
pub mod config_error;
pub mod hash;
pub mod progress;
pub mod seed;
pub mod text_file;

pub use atomic::{write_atomic, write_atomic_with};
pub use choice::{one_of, Choice};
pub use config_error::{check_range, short_number, ConfigError};
pub use hash::{sha256_file, sha256_hex};
pub use progress::Progress;
pub use seed::{derive_seed, rng_for, Stream};
pub use text_file::{read_text_capped, utf8_text};

/// The generator every seeded stream uses.
pub type StreamRng = rand_chacha::ChaCha8Rng;

#[doc(hidden)]
pub use serde;
