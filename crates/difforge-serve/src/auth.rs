//! Bearer API keys. Keys come from a file (one per line) or DIFFORGE_API_KEYS (comma-separated);
//! a key written as `admin:KEY` may also call /admin/*. Keys are compared in constant time
//! (as SHA-256 digests, so lengths do not leak either) and never logged.

use difforge_core::ConfigError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    User,
    Admin,
}

#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<([u8; 32], Access)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.keys.len())
    }
}

/// A key shorter than this is refused: a secret of a few characters is guessed in seconds.
pub const MIN_KEY_CHARS: usize = 8;

/// Every key among `entries` (as [`Keys::parse`] reads them) is at least [`MIN_KEY_CHARS`]
/// long; the error names the source and the entry's position, never the key.
fn check_lengths<'a>(entries: impl IntoIterator<Item = &'a str>, source: impl Fn() -> String) -> Result<(), ConfigError> {
    for (i, entry) in entries.into_iter().enumerate() {
        let entry = entry.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let key = entry.strip_prefix("admin:").map_or(entry, str::trim);
        if key.chars().count() < MIN_KEY_CHARS {
            let why =
                format!("keys of at least {MIN_KEY_CHARS} characters (entry {} has {}; e.g. `openssl rand -hex 16` makes one)", i + 1, key.chars().count());
            return Err(ConfigError::problem(source(), why));
        }
    }
    Ok(())
}

impl Keys {
    /// Parses key entries; blank lines and lines starting with '#' are ignored.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Keys {
        let keys = entries
            .into_iter()
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .map(|e| match e.strip_prefix("admin:") {
                Some(k) => (digest(k.trim()), Access::Admin),
                None => (digest(e), Access::User),
            })
            .collect();
        Keys { keys }
    }

    /// Keys from `--api-keys-file` and DIFFORGE_API_KEYS together. A key file given explicitly
    /// must hold a key; with no key anywhere the server only starts when `no_auth` says so.
    pub fn load(file: Option<&std::path::Path>, env: Option<String>, no_auth: bool) -> Result<Keys, ConfigError> {
        let mut text = String::new();
        if let Some(path) = file {
            text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("--api-keys-file", path.display(), format!("a readable file of keys ({e})")))?;
            if Keys::parse(text.lines()).is_open() {
                return Err(ConfigError::new("--api-keys-file", path.display(), "a file with at least one key (it has only blank lines and comments)"));
            }
            check_lengths(text.lines(), || format!("--api-keys-file {}", path.display()))?;
        }
        let env = env.unwrap_or_default();
        check_lengths(env.split(','), || "DIFFORGE_API_KEYS".to_string())?;
        let keys = Keys::parse(text.lines().chain(env.split(',')));
        match (keys.is_open(), no_auth) {
            (true, false) => {
                Err(ConfigError::problem("--api-keys-file", "no API keys: give --api-keys-file or DIFFORGE_API_KEYS, or --no-auth to serve without keys"))
            }
            (false, true) => Err(ConfigError::problem("--no-auth", "API keys were given too: drop --no-auth, or the keys")),
            _ => Ok(keys),
        }
    }

    /// No keys configured: the API is open.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The access a presented key grants, if any. Every configured key is compared.
    pub fn check(&self, presented: &str) -> Option<Access> {
        let d = digest(presented);
        let mut found = None;
        for (k, access) in &self.keys {
            if bool::from(k.ct_eq(&d)) {
                found = Some(found.map_or(*access, |a: Access| if a == Access::Admin { a } else { *access }));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_admin_keys() {
        let k = Keys::parse(["alpha", "# comment", "", "admin:root-key"]);
        assert_eq!(k.check("alpha"), Some(Access::User));
        assert_eq!(k.check("root-key"), Some(Access::Admin));
        assert_eq!(k.check("alph"), None);
        assert_eq!(k.check(""), None);
        assert!(!k.is_open());
        assert!(Keys::parse(["", " "]).is_open());
        assert!(!format!("{k:?}").contains("alpha"));
    }

    #[test]
    fn short_keys_are_refused_without_being_shown() {
        let err = Keys::load(None, Some("long-enough-key,admin:x".into()), false).unwrap_err().to_string();
        assert!(err.contains("DIFFORGE_API_KEYS") && err.contains("entry 2 has 1") && !err.contains(":x"), "{err}");
        assert!(Keys::load(None, Some("long-enough-key, admin:another-long-key".into()), false).is_ok());
    }
}
