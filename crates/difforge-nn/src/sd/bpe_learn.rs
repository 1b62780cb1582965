//! Learning BPE merges from a small caption corpus, in CLIP's form: words are sequences of
//! byte-level characters whose last symbol carries the `</w>` end-of-word suffix, and the most
//! frequent adjacent pair is merged, again and again. For a tiny vocabulary (a synthetic set's
//! captions) this gives whole-word tokens and an embedding table of a few hundred rows instead of
//! CLIP's 49,408, while every other text still tokenizes (down to single bytes) as with CLIP.

use std::collections::BTreeMap;

/// The merges learnt from `words` (each a pre-tokenized word in byte-level characters, with its
/// count): most frequent pair first (ties to the smallest pair, so the result is deterministic),
/// until no pair occurs `min_count` times or `max_merges` are learnt.
pub fn learn_merges(words: &BTreeMap<String, u64>, end_of_word: &str, min_count: u64, max_merges: usize) -> Vec<(String, String)> {
    let mut split: Vec<(Vec<String>, u64)> = words
        .iter()
        .filter(|(w, _)| !w.is_empty())
        .map(|(word, &count)| {
            let mut symbols: Vec<String> = word.chars().map(String::from).collect();
            if let Some(last) = symbols.last_mut() {
                last.push_str(end_of_word);
            }
            (symbols, count)
        })
        .collect();
    let mut merges = Vec::new();
    while merges.len() < max_merges {
        let Some((pair, count)) = most_frequent_pair(&split) else { break };
        if count < min_count {
            break;
        }
        for (symbols, _) in &mut split {
            merge_pair(symbols, &pair);
        }
        merges.push(pair);
    }
    merges
}

fn most_frequent_pair(words: &[(Vec<String>, u64)]) -> Option<((String, String), u64)> {
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (symbols, count) in words {
        for pair in symbols.windows(2) {
            *counts.entry((pair[0].as_str(), pair[1].as_str())).or_default() += count;
        }
    }
    // The first of the highest counts in pair order.
    let (pair, count) = counts.into_iter().fold(None, |best: Option<((&str, &str), u64)>, (pair, count)| match best {
        Some((_, c)) if c >= count => best,
        _ => Some((pair, count)),
    })?;
    Some(((pair.0.to_string(), pair.1.to_string()), count))
}

fn merge_pair(symbols: &mut Vec<String>, (a, b): &(String, String)) {
    let mut i = 0;
    while i + 1 < symbols.len() {
        if symbols[i] == *a && symbols[i + 1] == *b {
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for w in text.split_whitespace() {
            *out.entry(w.to_string()).or_default() += 1;
        }
        out
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn frequent_words_become_single_tokens_and_rare_pairs_stay_apart() {
        let merges = learn_merges(&words("red red red circle circle blue"), "</w>", 2, 100);
        // "re" and "ed</w>" both occur 3 times: the smaller pair first.
        assert_eq!(merges[..2], [pair("e", "d</w>"), pair("r", "ed</w>")]);
        let joined: Vec<String> = merges.iter().map(|(a, b)| format!("{a}{b}")).collect();
        assert!(joined.contains(&"red</w>".to_string()) && joined.contains(&"circle</w>".to_string()), "{joined:?}");
        assert!(!joined.iter().any(|t| t.contains('b')), "blue occurs once: {joined:?}");
    }

    #[test]
    fn the_cap_and_the_threshold_stop_learning() {
        assert_eq!(learn_merges(&words("triangle triangle"), "</w>", 2, 3).len(), 3);
        assert_eq!(learn_merges(&words("triangle triangle"), "</w>", 2, 100).len(), 7, "t-r-i-a-n-g-le</w> joined");
        assert!(learn_merges(&words("square"), "</w>", 2, 100).is_empty());
        assert!(learn_merges(&words("a b a b"), "</w>", 2, 100).is_empty(), "single-symbol words have no pairs");
    }
}
