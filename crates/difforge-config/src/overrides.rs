//! `--set key.path=value` overrides, `--grid key=v1,v2,...` value lists and their combinations,
//! and merging of TOML tables.

use difforge_core::ConfigError;

/// Parses a `--set key=value` value: TOML syntax when it parses (numbers, booleans, arrays,
/// quoted strings), otherwise a bare string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies `key.path=value` to a TOML table, creating sections as needed.
pub fn apply_set(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| ConfigError::new("--set", assignment, "key=value, e.g. train.steps=200"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::new("--set", assignment, "a key without empty segments, e.g. train.steps=200"));
    }
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        node = entry.as_table_mut().ok_or_else(|| ConfigError::new("--set", assignment, format!("`{part}` to be a section, but it is a value")))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), parse_value(raw.trim()));
    Ok(())
}

/// Copies every key of `over` into `base`, descending into tables.
pub fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A key a config gave where `fill_missing` had a default of its own, with both values.
#[derive(Debug, Clone, PartialEq)]
pub struct GivenOverDefault {
    /// The dotted key, e.g. `sample.spacing`.
    pub key: String,
    pub given: toml::Value,
    pub default: toml::Value,
}

/// Copies into `table` the keys of `defaults` (one level of sections, e.g. `[sample]`) that
/// `table` lacks; returns the keys `table` gives with another value than the default's. A
/// section that `table` has as a plain value is left alone, for the config's reader to refuse.
pub fn fill_missing(table: &mut toml::Table, defaults: toml::Table) -> Vec<GivenOverDefault> {
    let mut differing = Vec::new();
    for (section, keys) in defaults {
        let toml::Value::Table(keys) = keys else { continue };
        let Some(given) = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut() else { continue };
        for (key, default) in keys {
            match given.get(&key) {
                None => {
                    given.insert(key, default);
                }
                Some(value) if *value != default => differing.push(GivenOverDefault { key: format!("{section}.{key}"), given: value.clone(), default }),
                Some(_) => {}
            }
        }
    }
    differing
}

/// One `--grid key=v1,v2,...`: commas inside brackets or quotes do not split.
pub fn parse_grid(spec: &str) -> Result<(String, Vec<String>), ConfigError> {
    let (key, values) = spec.split_once('=').ok_or_else(|| ConfigError::new("--grid", spec, "key=v1,v2,... e.g. train.lr=1e-3,3e-4"))?;
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for ch in values.chars() {
        match ch {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    let out: Vec<String> = out.into_iter().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
    if out.is_empty() {
        return Err(ConfigError::new("--grid", spec, "at least one value after `=`"));
    }
    Ok((key.trim().to_string(), out))
}

/// Every combination, as lists of `key=value` assignments.
pub fn combinations(grid: &[(String, Vec<String>)]) -> Vec<Vec<String>> {
    grid.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.iter().flat_map(|prefix| values.iter().map(move |v| [prefix.clone(), vec![format!("{key}={v}")]].concat())).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_a_config_leaves_out() {
        let mut table: toml::Table = "[sample]\nsteps = 30\nspacing = \"trailing\"\n".parse().unwrap();
        let defaults: toml::Table = "[sample]\nsteps = 30\nspacing = \"leading\"\nsteps_offset = 1\n[diffusion]\nbeta_end = 0.012\n".parse().unwrap();
        let differing = fill_missing(&mut table, defaults);
        let expected: toml::Table = "[sample]\nsteps = 30\nspacing = \"trailing\"\nsteps_offset = 1\n[diffusion]\nbeta_end = 0.012\n".parse().unwrap();
        assert_eq!(table, expected);
        assert_eq!(differing, vec![GivenOverDefault { key: "sample.spacing".into(), given: "trailing".into(), default: "leading".into() }]);
    }
    #[test]
    fn grid_values_split_outside_brackets() {
        let (k, v) = parse_grid("model.channel_mult=[1,2],[1,2,2]").unwrap();
        assert_eq!(k, "model.channel_mult");
        assert_eq!(v, vec!["[1,2]", "[1,2,2]"]);
        assert_eq!(parse_grid("train.lr=1e-3, 3e-4").unwrap().1, vec!["1e-3", "3e-4"]);
        assert!(parse_grid("train.lr").is_err());
    }

    #[test]
    fn combinations_are_the_cartesian_product() {
        let grid = vec![("a".to_string(), vec!["1".to_string(), "2".to_string()]), ("b".to_string(), vec!["x".to_string(), "y".to_string(), "z".to_string()])];
        let c = combinations(&grid);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], vec!["a=1", "b=x"]);
        assert_eq!(c[5], vec!["a=2", "b=z"]);
    }

    #[test]
    fn set_creates_sections_and_types_values() {
        let mut t = toml::Table::new();
        apply_set(&mut t, "train.steps=200").unwrap();
        apply_set(&mut t, "model.channel_mult=[1,2]").unwrap();
        apply_set(&mut t, "data.path=some/where").unwrap();
        assert_eq!(t["train"]["steps"].as_integer(), Some(200));
        assert_eq!(t["model"]["channel_mult"].as_array().map(Vec::len), Some(2));
        assert_eq!(t["data"]["path"].as_str(), Some("some/where"));
        assert!(apply_set(&mut t, "nokey").unwrap_err().to_string().contains("key=value"));
        assert!(apply_set(&mut t, "train.steps.x=1").is_err());
    }

    #[test]
    fn merge_descends_into_tables() {
        let mut base: toml::Table = "[train]\nsteps = 1\nlr = 0.1\n".parse().unwrap();
        deep_merge(&mut base, "[train]\nsteps = 2\n[lora]\nrank = 4\n".parse().unwrap());
        assert_eq!(base["train"]["steps"].as_integer(), Some(2));
        assert_eq!(base["train"]["lr"].as_float(), Some(0.1));
        assert_eq!(base["lora"]["rank"].as_integer(), Some(4));
    }
}
