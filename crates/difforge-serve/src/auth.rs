//! Bearer API keys. Keys come from a file (one per line) or DIFFORGE_API_KEYS (comma-separated);
//! a key written as `admin:KEY` may also call /admin/*. Keys are compared in constant time
//! (as SHA-256 digests, so lengths do not leak either) and never logged.

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

    /// Keys from `--api-keys-file` and DIFFORGE_API_KEYS together.
    pub fn load(file: Option<&std::path::Path>, env: Option<String>) -> Result<Keys, String> {
        let mut text = String::new();
        if let Some(path) = file {
            text = std::fs::read_to_string(path).map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
        }
        let env = env.unwrap_or_default();
        Ok(Keys::parse(text.lines().chain(env.split(','))))
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
}
