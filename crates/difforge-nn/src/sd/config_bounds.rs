//! Bounds on what a component's `config.json` may ask for, checked when the file is read and
//! before anything is allocated: a broken or hostile file (`norm_num_groups: 0`,
//! `layers_per_block: 100000`, `max_position_embeddings: 1e9`) is an error naming the file and
//! field, not a division by zero or an allocation that ends the process. The upper bounds are
//! far above any published model (SDXL's UNet: 1,280 channels, 10 transformer layers); what
//! passes them is still refused when the weights it implies exceed the machine's memory.

use difforge_core::ConfigError;

/// A config read from a component folder that can say whether its sizes are buildable.
pub trait ComponentConfig {
    /// The first field out of range, as a config error naming the field.
    fn check_sizes(&self) -> Result<(), ConfigError>;
}

/// Configs read only for a few fields (a CLIPModel's top level): the typed towers check theirs.
impl ComponentConfig for serde_json::Value {
    fn check_sizes(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `value` within `lo..=hi`, or an error naming `field`.
pub fn within(field: &str, value: i64, lo: i64, hi: i64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(field, value, format!("{lo}..={hi}")))
    }
}

/// Each (field, value, most) within `1..=most`: the sizes of a config, first failing one named.
pub fn sizes_within(sizes: &[(&str, i64, i64)]) -> Result<(), ConfigError> {
    sizes.iter().try_for_each(|&(field, value, most)| within(field, value, 1, most))
}

/// Each of `values` within `lo..=hi`.
pub fn each_within(field: &str, values: &[i64], lo: i64, hi: i64) -> Result<(), ConfigError> {
    values.iter().try_for_each(|&v| within(field, v, lo, hi))
}

/// A positive finite epsilon (layer and group norms divide by it).
pub fn positive_eps(field: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(ConfigError::new(field, value, "a positive number below 1"))
    }
}

/// Refuses a network whose weights (at least `parameters` float32 values, a lower bound the
/// caller computes from the config) would not fit in this machine's memory.
pub fn fits_in_memory(parameters: f64) -> Result<(), ConfigError> {
    let Some(total) = machine_memory_bytes() else { return Ok(()) };
    let needed = parameters * 4.0;
    if needed > total as f64 {
        let gb = |b: f64| b / 1e9;
        return Err(ConfigError::problem(
            "(the sizes together)",
            format!("imply at least {:.1} GB of float32 weights, more than this machine's {:.1} GB of memory", gb(needed), gb(total as f64)),
        ));
    }
    Ok(())
}

/// The machine's memory (`MemTotal`), when the system says.
fn machine_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field_and_memory_is_compared_with_the_machine() {
        assert!(within("norm_num_groups", 0, 1, 4096).unwrap_err().to_string().contains("norm_num_groups = 0: expected 1..=4096"));
        assert!(each_within("layers", &[2, 100_000], 1, 64).is_err());
        assert!(positive_eps("norm_eps", f64::NAN).is_err() && positive_eps("norm_eps", 1e-5).is_ok());
        fits_in_memory(1e6).unwrap();
        if machine_memory_bytes().is_some() {
            assert!(fits_in_memory(1e18).unwrap_err().to_string().contains("GB of float32 weights"));
        }
    }
}
