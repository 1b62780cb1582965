//! The T5 encoder (SD3's third text encoder) against transformers 4.57.1's `T5EncoderModel` on
//! a tiny random one (tools/make_t5_fixtures.py): gated-GELU, relative position buckets in both
//! directions past the exact range, RMS norms, a padded prompt with its attention mask; and its
//! tokenizer against T5TokenizerFast on a tiny `tokenizer.json` (tools/make_t5_tokenizer_fixture.py).

use difforge_nn::sd::load::read_config;
use difforge_nn::sd::t5_encoder::{T5Config, T5Encoder};
use difforge_nn::sd::t5_tokenizer::T5Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5")
}

fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tiny_t5_matches_transformers_with_and_without_a_mask() {
    let model = T5Encoder::load(&fixtures().join("tiny-t5"), Device::Cpu).unwrap();
    let refs: HashMap<String, Tensor> = Tensor::read_safetensors(fixtures().join("tiny-t5-reference.safetensors")).unwrap().into_iter().collect();
    let ids = &refs["input_ids"];
    let masked = tch::no_grad(|| model.forward(ids, Some(&refs["attention_mask"])));
    let d = max_difference(&masked, &refs["last_hidden_state"]);
    assert!(d < 1e-5, "masked: {d}");
    let unmasked = tch::no_grad(|| model.forward(ids, None));
    let d = max_difference(&unmasked, &refs["unmasked_last_hidden_state"]);
    assert!(d < 1e-5, "unmasked: {d}");
    // The mask matters (the padded prompt's real tokens attend only to each other).
    assert!(max_difference(&masked, &unmasked) > 1e-3);
}

#[test]
fn configs_out_of_range_are_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("tiny-t5/config.json")).unwrap()).unwrap();
    for (field, value, expected) in [
        ("num_heads", serde_json::json!(0), "num_heads = 0"),
        ("d_model", serde_json::json!(1_000_000_000), "d_model = 1000000000"),
        ("relative_attention_num_buckets", serde_json::json!(2), "relative_attention_num_buckets = 2"),
        ("feed_forward_proj", serde_json::json!("swiglu"), "feed_forward_proj"),
    ] {
        let mut config = original.clone();
        config[field] = value;
        std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        let err = read_config::<T5Config>(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains(expected), "{field}: {err}");
    }
}

#[test]
fn the_tokenizer_gives_t5_tokenizer_fasts_ids_padded_and_cut_as_sd3_asks() {
    let tokenizer = T5Tokenizer::load(&fixtures().join("tiny-t5-tokenizer")).unwrap();
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("tiny-t5-tokenizer-reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let (prompt, max_length) = (case["prompt"].as_str().unwrap(), case["max_length"].as_u64().unwrap() as usize);
        let want: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let tokens = tokenizer.encode(prompt, max_length).unwrap();
        assert_eq!(tokens.ids, want, "{prompt:?} at {max_length}");
        let end = want.iter().position(|&i| i == 1).unwrap();
        assert_eq!(tokens.len, end + 1, "{prompt:?}: up to </s>");
        // What was cut is reported; only a full sequence can have lost anything.
        assert!(tokens.truncated.is_none() || tokens.len == max_length, "{prompt:?} at {max_length}: {:?}", tokens.truncated);
    }
    let long = tokenizer.encode(&"a cat ".repeat(20), 32).unwrap();
    assert!(long.truncated.as_deref().is_some_and(|t| t.trim_end().ends_with("cat")), "{:?}", long.truncated);
    assert_eq!(tokenizer.encode("a cat", 32).unwrap().truncated, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spiece.model"), b"x").unwrap();
    let err = T5Tokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("spiece.model") && err.contains("tokenizer.json"), "{err}");
}
