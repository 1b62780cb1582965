//! How a single-file checkpoint's tensor names follow from diffusers': rule tables of modules
//! (a diffusers prefix, the original's prefix, and renames of the names below it), and the few
//! tensors whose layout differs between the two (1x1 convolutions, a transposed projection,
//! OpenCLIP's fused q/k/v). The tables are written in one direction, diffusers to original; the
//! other direction is their inverse over a network's variables (see `single_file`).

/// How a tensor differs between the original layout and diffusers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reshape {
    Same,
    /// A 1x1 convolution's (O, I, 1, 1) weight in the original, a linear layer's (O, I) in
    /// diffusers (the VAE's mid-block attention).
    Conv1x1,
    /// OpenCLIP multiplies by `text_projection` (x @ P); transformers' linear layer holds P's
    /// transpose.
    Transpose,
    /// Part `n` (q, k, v) of OpenCLIP's fused `in_proj`, stacked along the first dimension.
    Third(u8),
}

impl Reshape {
    /// The original tensor's shape for a diffusers tensor of shape `shape`.
    pub fn original_shape(self, shape: &[i64]) -> Vec<i64> {
        match (self, shape) {
            (Reshape::Conv1x1, [o, i]) => vec![*o, *i, 1, 1],
            (Reshape::Transpose, [a, b]) => vec![*b, *a],
            (Reshape::Third(_), [n, rest @ ..]) => [&[3 * n][..], rest].concat(),
            _ => shape.to_vec(),
        }
    }

    /// Whether a file's tensor of shape `found` fits a variable of diffusers shape `shape`:
    /// the original shape, or for 1x1 convolutions also the linear one (some files hold that,
    /// and diffusers reads both).
    pub fn fits(self, found: &[i64], shape: &[i64]) -> bool {
        found == self.original_shape(shape).as_slice() || (self == Reshape::Conv1x1 && found == shape)
    }
}

/// One rename of the names below a module: `diffusers` (a dotted prefix of the rest of the key,
/// or all of it) becomes `original`.
#[derive(Debug, Clone, Copy)]
pub struct Rename {
    pub diffusers: &'static str,
    pub original: &'static str,
    pub reshape: Reshape,
}

/// A rename that keeps the tensor as it is.
pub const fn rename(diffusers: &'static str, original: &'static str) -> Rename {
    Rename { diffusers, original, reshape: Reshape::Same }
}

/// A module in both layouts: a key under `diffusers` is the key under `original` with the rest
/// renamed by the first entry of `renames` it starts with; without renames the rest is kept.
#[derive(Debug, Clone)]
pub struct Rule {
    pub diffusers: String,
    pub original: String,
    pub renames: &'static [Rename],
}

impl Rule {
    pub fn new(diffusers: impl Into<String>, original: impl Into<String>, renames: &'static [Rename]) -> Rule {
        Rule { diffusers: diffusers.into(), original: original.into(), renames }
    }
}

/// One component's rules.
#[derive(Debug, Clone, Default)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// The original name of diffusers tensor `key` and how the tensor changes, by the rule with
    /// the longest matching prefix; None when no rule (or none of its renames) covers the key.
    pub fn original(&self, key: &str) -> Option<(String, Reshape)> {
        let rule = self.0.iter().filter(|r| below(key, &r.diffusers).is_some()).max_by_key(|r| r.diffusers.len())?;
        let rest = below(key, &rule.diffusers)?;
        if rule.renames.is_empty() {
            return Some((join(&rule.original, rest), Reshape::Same));
        }
        let (rename, tail) = rule.renames.iter().find_map(|n| below(rest, n.diffusers).map(|tail| (n, tail)))?;
        Some((join(&join(&rule.original, rename.original), tail), rename.reshape))
    }
}

/// The rest of `key` below the dotted prefix `prefix` ("" when they are equal); an empty prefix
/// covers every key.
fn below<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(key);
    }
    match key.strip_prefix(prefix)? {
        "" => Some(""),
        rest => rest.strip_prefix('.'),
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}.{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESNET: &[Rename] = &[rename("norm1", "in_layers.0"), Rename { diffusers: "to_q.weight", original: "q.weight", reshape: Reshape::Conv1x1 }];

    #[test]
    fn the_longest_prefix_wins_and_renames_must_cover_the_rest() {
        let rules = Rules(vec![Rule::new("a", "x", &[]), Rule::new("a.b", "y.z", RESNET), Rule::new("p.weight", "q", &[])]);
        assert_eq!(rules.original("a.c.weight"), Some(("x.c.weight".into(), Reshape::Same)));
        assert_eq!(rules.original("a.b.norm1.bias"), Some(("y.z.in_layers.0.bias".into(), Reshape::Same)));
        assert_eq!(rules.original("a.b.to_q.weight"), Some(("y.z.q.weight".into(), Reshape::Conv1x1)));
        assert_eq!(rules.original("a.b.conv9.bias"), None, "a module with renames takes only what they name");
        assert_eq!(rules.original("p.weight"), Some(("q".into(), Reshape::Same)));
        assert_eq!(rules.original("ab.weight"), None, "prefixes end at a dot");
    }

    #[test]
    fn original_shapes() {
        assert_eq!(Reshape::Conv1x1.original_shape(&[4, 3]), vec![4, 3, 1, 1]);
        assert!(Reshape::Conv1x1.fits(&[4, 3], &[4, 3]) && Reshape::Conv1x1.fits(&[4, 3, 1, 1], &[4, 3]));
        assert_eq!(Reshape::Transpose.original_shape(&[4, 3]), vec![3, 4]);
        assert_eq!(Reshape::Third(1).original_shape(&[4, 3]), vec![12, 3]);
        assert_eq!(Reshape::Third(2).original_shape(&[4]), vec![12]);
    }
}
