//! Class accuracy of a class-conditional model: a classifier trained on real data labels the
//! samples, and the labels are compared with the classes the samples were asked for.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub samples: usize,
    /// Fraction of samples labelled as the class asked for.
    pub accuracy: f64,
    pub per_class: Vec<ClassScore>,
    /// confusion[asked][predicted]
    pub confusion: Vec<Vec<u64>>,
    pub class_names: Vec<String>,
    /// The classifier's own accuracy on its held-out real images (how far to trust it).
    pub classifier_val_accuracy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    pub class: String,
    /// Of the samples labelled this class, the fraction asked for it.
    pub precision: f64,
    /// Of the samples asked for this class, the fraction labelled it.
    pub recall: f64,
    pub f1: f64,
    /// Samples asked for this class.
    pub support: u64,
}

/// Scores `predicted` labels against `asked` classes (both indices into `class_names`; entries
/// outside it are counted as wrong and left out of the matrix).
pub fn class_report(asked: &[i64], predicted: &[i64], class_names: &[String], classifier_val_accuracy: f64) -> ClassReport {
    let k = class_names.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let in_range = |c: i64| c >= 0 && (c as usize) < k;
    for (&a, &p) in asked.iter().zip(predicted) {
        if in_range(a) && in_range(p) {
            confusion[a as usize][p as usize] += 1;
        }
    }
    let per_class = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let labelled: u64 = confusion.iter().map(|row| row[c]).sum();
            let ratio = |a: f64, b: u64| if b == 0 { 0.0 } else { a / b as f64 };
            let (precision, recall) = (ratio(tp, labelled), ratio(tp, support));
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassScore { class: class_names[c].clone(), precision, recall, f1, support }
        })
        .collect();
    let correct = asked.iter().zip(predicted).filter(|(a, p)| a == p).count();
    ClassReport {
        samples: asked.len(),
        accuracy: if asked.is_empty() { 0.0 } else { correct as f64 / asked.len() as f64 },
        per_class,
        confusion,
        class_names: class_names.to_vec(),
        classifier_val_accuracy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_recall_and_confusion() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // asked a,a,a,a,b,b,c,c ; predicted a,a,a,b,b,b,c,a
        let asked = [0, 0, 0, 0, 1, 1, 2, 2];
        let pred = [0, 0, 0, 1, 1, 1, 2, 0];
        let r = class_report(&asked, &pred, &names, 0.99);
        assert_eq!(r.accuracy, 6.0 / 8.0);
        assert_eq!(r.confusion, vec![vec![3, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        let a = &r.per_class[0];
        assert_eq!((a.precision, a.recall, a.support), (0.75, 0.75, 4));
        let b = &r.per_class[1];
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12 && b.recall == 1.0);
        assert!((b.f1 - 0.8).abs() < 1e-12);
        assert_eq!(r.per_class[2].recall, 0.5);
    }
}
