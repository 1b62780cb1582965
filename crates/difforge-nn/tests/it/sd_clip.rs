//! The CLIP text encoders against transformers 4.57.1 on the tiny fixtures: `CLIPTextModel`
//! (quick_gelu, SD 1.x) and `CLIPTextModelWithProjection` (gelu, SDXL's second encoder), as
//! transformers 4 and 5 save them.

use crate::sd_reference::{assert_close, fixture, References};
use difforge_nn::sd::clip_text::{load_weights, POSITION_IDS};
use difforge_nn::sd::{ClipTextConfig, ClipTextModel};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Encodes the fixture's reference ids and compares every reference under `prefix`; `pooled`
/// names the pooled output's key (`pooler_output` or `text_embeds`).
fn check(fixture_name: &str, component: &str, prefix: &str, pooled: &str) {
    check_folder(fixture_name, &fixture(fixture_name).join(component), prefix, pooled);
}

/// [`check`] of the encoder in `dir` against `fixture_name`'s references.
fn check_folder(fixture_name: &str, dir: &std::path::Path, prefix: &str, pooled: &str) {
    let refs = References::of(fixture_name);
    let model = ClipTextModel::load(dir, Device::Cpu).unwrap();
    let out = tch::no_grad(|| model.forward(refs.get(&format!("{prefix}.input_ids")))).unwrap();
    let key = |k: &str| format!("{prefix}.{k}");
    assert_eq!(out.hidden_states.len(), 4, "embeddings and three layers");
    assert_close(&key("last_hidden_state"), &out.last_hidden_state, refs.get(&key("last_hidden_state")));
    assert_close(&key("penultimate_hidden_state"), &out.hidden_states[2], refs.get(&key("penultimate_hidden_state")));
    assert_close(&key("clip_skip_1"), &model.clip_skip(&out, 1).unwrap(), refs.get(&key("clip_skip_1")));
    assert_close(&key(pooled), &out.pooled, refs.get(&key(pooled)));
    assert_close("clip_skip 0", &model.clip_skip(&out, 0).unwrap(), &out.last_hidden_state);
    assert!(model.clip_skip(&out, 4).is_err());
}

#[test]
fn clip_text_model_matches_transformers() {
    check("tiny-sd15", "text_encoder", "text", "pooler_output");
}

#[test]
fn clip_text_model_with_projection_matches_transformers() {
    check("tiny-sdxl", "text_encoder_2", "text2", "text_embeds");
}

/// tools/make_transformers5_fixtures.py: the same encoders saved by transformers 5.25, whose
/// `CLIPTextModel` has no `text_model.` prefix (its `CLIPTextModelWithProjection` keeps it).
#[test]
fn text_encoders_saved_by_transformers_5_match_transformers_4s_outputs() {
    let tf5 = fixture("transformers5");
    let keys: Vec<String> = Tensor::read_safetensors(tf5.join("tiny-sd15/text_encoder/model.safetensors")).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().all(|k| !k.starts_with("text_model.")) && keys.contains(&"embeddings.token_embedding.weight".to_string()), "{keys:?}");
    check_folder("tiny-sd15", &tf5.join("tiny-sd15/text_encoder"), "text", "pooler_output");
    check_folder("tiny-sdxl", &tf5.join("tiny-sdxl/text_encoder_2"), "text2", "text_embeds");
}

#[test]
fn eos_token_id_2_pools_at_the_largest_id() {
    let dir = fixture("tiny-sd15").join("text_encoder");
    let config = ClipTextConfig { eos_token_id: 2, ..difforge_nn::sd::load::read_config(&dir).unwrap() };
    let model = ClipTextModel::new(&VarStore::new(Device::Cpu).root(), &config).unwrap();
    let ids = Tensor::from_slice2(&[[5_i64, 999, 2, 7], [2, 3, 2, 2]]);
    assert_eq!(Vec::<i64>::try_from(model.eos_positions(&ids)).unwrap(), [1, 1]);
    let config = ClipTextConfig { eos_token_id: 7, ..config };
    let model = ClipTextModel::new(&VarStore::new(Device::Cpu).root(), &config).unwrap();
    assert_eq!(Vec::<i64>::try_from(model.eos_positions(&ids)).unwrap(), [3, 0], "first end token; none: 0");
}

#[test]
fn other_activations_and_bad_ids_are_refused_and_the_position_ids_buffer_is_ignored() {
    let src = fixture("tiny-sd15").join("text_encoder");
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"quick_gelu\"", "\"gelu_new\"")).unwrap();
    let e = ClipTextModel::load(dir.path(), Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("\"gelu_new\""), "{e}");

    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    tensors.push((POSITION_IDS.to_string(), Tensor::arange(77, (Kind::Int64, Device::Cpu)).unsqueeze(0)));
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let model = ClipTextModel::load(dir.path(), Device::Cpu).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _same = ClipTextModel::new(&vs.root(), model.config()).unwrap();
    load_weights(&vs, dir.path(), None).unwrap();
    assert!(!vs.variables().contains_key(POSITION_IDS));

    for (ids, why) in [
        (Tensor::zeros([2, 78], (Kind::Int64, Device::Cpu)), "1..=77 tokens"),
        (Tensor::full([1, 3], 1000, (Kind::Int64, Device::Cpu)), "outside the vocabulary"),
        (Tensor::zeros([3], (Kind::Int64, Device::Cpu)), "(batch, length)"),
        (Tensor::zeros([1, 3], (Kind::Float, Device::Cpu)), "integer token ids"),
    ] {
        let e = model.forward(&ids).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}
