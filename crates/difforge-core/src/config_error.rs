//! Bad input, typed: which key (or command-line flag) was wrong, what value it had and what was
//! expected. Every crate returns it for configuration and argument problems, and the caller
//! decides how the key is shown (a config key, or the flag that set it) and maps it to exit code 2.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the input came from (a file, "the built-in digits config"), if known.
    pub origin: Option<String>,
    /// The key, e.g. `train.lr`, or a flag, e.g. `--steps`.
    pub key: String,
    /// The value given, as written (empty when the problem is not one value).
    pub value: String,
    /// What was expected, or what is wrong.
    pub expected: String,
}

impl ConfigError {
    /// `key = value: expected ...`
    pub fn new(key: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> ConfigError {
        ConfigError { origin: None, key: key.into(), value: value.to_string(), expected: expected.into() }
    }

    /// `key: problem`, for problems that are not about one value (a missing key, a conflict).
    pub fn problem(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError { origin: None, key: key.into(), value: String::new(), expected: problem.into() }
    }

    /// The same error, shown under another key (e.g. the flag that set a config key).
    pub fn with_key(mut self, key: impl Into<String>) -> ConfigError {
        self.key = key.into();
        self
    }

    /// The same error, renamed when `rename` knows the key.
    pub fn rename_key(self, rename: impl Fn(&str) -> Option<&'static str>) -> ConfigError {
        match rename(&self.key) {
            Some(k) => self.with_key(k),
            None => self,
        }
    }

    pub fn with_origin(mut self, origin: impl Into<String>) -> ConfigError {
        self.origin = Some(origin.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        let value = if self.key.starts_with("--") { format!(" {}", self.value) } else { format!(" = {}", self.value) };
        match (self.value.is_empty(), self.key.is_empty()) {
            (_, true) => write!(f, "{}", self.expected),
            (true, false) => write!(f, "{}: {}", self.key, self.expected),
            (false, false) => write!(f, "{}{value}: expected {}", self.key, self.expected),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks that a float is finite and within `lo..=hi`, naming the key. A `lo` of
/// `f64::MIN_POSITIVE` means "above zero", and is said so.
pub fn check_range(key: &str, value: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        return Ok(());
    }
    let expected = if lo == f64::MIN_POSITIVE {
        format!("a number above 0, at most {}", short_number(hi))
    } else {
        format!("a number in {}..={}", short_number(lo), short_number(hi))
    };
    Err(ConfigError::new(key, short_number(value), expected))
}

/// A number as people write it: plain in the usual range, in exponent form when it is very
/// small or large (`{}` would print hundreds of digits for 1e-300).
pub fn short_number(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude != 0.0 && magnitude.is_finite() && !(1e-4..1e15).contains(&magnitude) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_print_short() {
        let err = check_range("diffusion.huber_c", 0.0, f64::MIN_POSITIVE, 1e3).unwrap_err().to_string();
        assert_eq!(err, "diffusion.huber_c = 0: expected a number above 0, at most 1000");
        let err = check_range("k", 1e-300, 1e-6, 1e20).unwrap_err().to_string();
        assert_eq!(err, "k = 1e-300: expected a number in 1e-6..=1e20");
    }

    #[test]
    fn renders_key_value_and_expectation() {
        let e = ConfigError::new("train.lr", -1.0, "0 < lr < 1");
        assert_eq!(e.to_string(), "train.lr = -1: expected 0 < lr < 1");
        assert_eq!(e.clone().with_key("--lr").to_string(), "--lr -1: expected 0 < lr < 1");
        assert_eq!(ConfigError::problem("lora", "needs finetune.from").with_origin("x.toml").to_string(), "x.toml: lora: needs finetune.from");
        assert!(check_range("k", f64::NAN, 0.0, 1.0).is_err());
        assert!(check_range("k", 0.5, 0.0, 1.0).is_ok());
    }
}
