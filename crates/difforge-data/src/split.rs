//! The train/validation split: each image's stable id is hashed with the seed and the images
//! with the smallest hashes are held out. The split depends only on (ids, fraction, seed): not
//! on file order, thread count or the machine.

use difforge_core::sha256_hex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

impl Split {
    pub fn new(ids: &[String], val_fraction: f64, seed: u64) -> Split {
        let mut keyed: Vec<(String, usize)> = ids.iter().enumerate().map(|(i, id)| (sha256_hex(format!("{seed}\u{0}{id}").as_bytes()), i)).collect();
        keyed.sort();
        let n_val = ((ids.len() as f64) * val_fraction).round() as usize;
        let n_val = n_val.min(ids.len().saturating_sub(1));
        let mut val: Vec<usize> = keyed[..n_val].iter().map(|(_, i)| *i).collect();
        let mut train: Vec<usize> = keyed[n_val..].iter().map(|(_, i)| *i).collect();
        val.sort_unstable();
        train.sort_unstable();
        Split { train, val }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("img{i}")).collect()
    }

    #[test]
    fn fraction_disjoint_and_stable() {
        let a = Split::new(&ids(1000), 0.1, 42);
        assert_eq!(a.val.len(), 100);
        assert_eq!(a.train.len(), 900);
        assert!(a.val.iter().all(|v| a.train.binary_search(v).is_err()));
        assert_eq!(a, Split::new(&ids(1000), 0.1, 42));
        assert_ne!(a, Split::new(&ids(1000), 0.1, 43));
    }

    #[test]
    fn adding_images_keeps_earlier_assignments_mostly() {
        // The hash of an id does not depend on the others, so an image's side rarely changes.
        let a = Split::new(&ids(1000), 0.1, 1);
        let b = Split::new(&ids(1100), 0.1, 1);
        let kept = a.val.iter().filter(|v| b.val.contains(v)).count();
        assert!(kept >= 85, "only {kept} of 100 validation images stayed");
    }
}
