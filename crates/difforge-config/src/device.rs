//! The device a config or flag names: "auto", "cpu", "cuda" or "cuda:N". Parsing only; the model
//! crate checks that the device exists and prepares libtorch for it.

use difforge_core::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when there is one, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses `value`; errors name `key` (e.g. `train.device` or `--device`).
    pub fn parse(key: &str, value: &str) -> Result<DeviceChoice, ConfigError> {
        match value {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match value.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(ConfigError::new(key, format!("\"{value}\""), "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_key() {
        assert_eq!(DeviceChoice::parse("k", "cuda:2"), Ok(DeviceChoice::Cuda(2)));
        assert_eq!(DeviceChoice::parse("k", "auto"), Ok(DeviceChoice::Auto));
        let e = DeviceChoice::parse("--device", "tpu").unwrap_err();
        assert_eq!(e.to_string(), "--device \"tpu\": expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"");
    }
}
