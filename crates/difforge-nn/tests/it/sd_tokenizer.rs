//! The CLIP tokenizer against transformers 4.57.1 (fixtures: tools/make_tokenizer_fixtures.py): both folder forms
//! (vocab.json + merges.txt, and a single tokenizer.json) and the built-in one on every fixture string, both padding forms,
//! the truncation report, and errors that name the file.

use std::fs;
use std::path::Path;

use crate::sd_reference::fixture;
use difforge_nn::sd::tokenizer::{tokens_tensor, ClipTokenizer, EmbeddedPad, MAX_LENGTH};
use serde_json::Value;
use tch::Kind;

struct Case {
    text: String,
    ids: Vec<i64>,
    len: usize,
}

/// The cases of one section of expected_ids.json, padded back to MAX_LENGTH with the section's pad id.
fn cases(section: &str) -> Vec<Case> {
    let path = fixture("clip-tokenizer").join("expected_ids.json");
    let json: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(json["max_length"].as_u64(), Some(MAX_LENGTH as u64));
    let pad = json[section]["pad_id"].as_i64().unwrap();
    json[section]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut ids: Vec<i64> = c["ids"].as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect();
            let len = c["len"].as_u64().unwrap() as usize;
            assert_eq!(ids.len(), len);
            ids.resize(MAX_LENGTH, pad);
            Case { text: c["text"].as_str().unwrap().to_string(), ids, len }
        })
        .collect()
}

/// Every case through `tok`; all mismatches listed at once.
fn check(tok: &ClipTokenizer, form: &str, cases: &[Case]) {
    let mut wrong = Vec::new();
    for case in cases {
        let got = tok.encode(&case.text).unwrap();
        assert_eq!(got.ids.len(), MAX_LENGTH);
        if got.ids != case.ids || got.len != case.len {
            wrong.push(format!("{:?}\n  got      {:?}\n  expected {:?}", case.text, &got.ids[..got.len], &case.ids[..case.len]));
        }
        // Only a prompt that filled all 75 places can have lost words.
        assert!(got.truncated.is_none() || got.len == MAX_LENGTH, "{:?}", case.text);
    }
    assert!(wrong.is_empty(), "{form}: {} of {} strings differ from transformers:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

#[test]
fn both_forms_give_transformers_ids() {
    let agree = cases("pad_end");
    let differs = cases("slow_differs");
    assert!(agree.len() >= 500, "{} cases", agree.len());
    for dir in ["clip-tokenizer", "clip-tokenizer-json"] {
        let tok = ClipTokenizer::load(fixture(dir)).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (49406, 49407, 49407), "{dir}");
        check(&tok, dir, &agree);
        // Where transformers' slow tokenizer (ftfy first) differs, the fast pipeline's ids, which this one follows.
        check(&tok, &format!("{dir} (slow differs)"), &differs);
    }
}

/// SD 2.x's tokenizer/ files: tokenizer_config.json says pad "<|endoftext|>", special_tokens_map.json says "!", and
/// transformers (special_tokens_map.json first) pads with "!" and makes every "!" its own token.
#[test]
fn pad_with_bang_as_sd2() {
    let bang = cases("pad_bang");
    assert!(bang.len() >= 45 && bang.iter().any(|c| c.len == MAX_LENGTH) && bang.iter().any(|c| c.text.contains("!!")));
    let src = fixture("clip-tokenizer");
    let mut map: Value = serde_json::from_str(&fs::read_to_string(src.join("special_tokens_map.json")).unwrap()).unwrap();
    map["pad_token"] = "!".into();
    let map = serde_json::to_string_pretty(&map).unwrap();

    let sd2 = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        fs::copy(src.join(name), sd2.path().join(name)).unwrap();
    }
    fs::write(sd2.path().join("special_tokens_map.json"), &map).unwrap();
    let tok = ClipTokenizer::load(sd2.path()).unwrap();
    assert_eq!(tok.pad_id(), 0);
    check(&tok, "vocab.json + merges.txt, pad !", &bang);

    // The single-file form with the same special_tokens_map.json beside it.
    let json = tempfile::tempdir().unwrap();
    fs::copy(fixture("clip-tokenizer-json").join("tokenizer.json"), json.path().join("tokenizer.json")).unwrap();
    fs::write(json.path().join("special_tokens_map.json"), &map).unwrap();
    let tok = ClipTokenizer::load(json.path()).unwrap();
    assert_eq!(tok.pad_id(), 0);
    check(&tok, "tokenizer.json, pad !", &bang);

    // tokenizer_config.json alone, the pad token as a serialised AddedToken object.
    let obj = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        fs::copy(src.join(name), obj.path().join(name)).unwrap();
    }
    let config = r#"{"pad_token": {"__type": "AddedToken", "content": "!", "lstrip": false, "normalized": false, "rstrip": false}}"#;
    fs::write(obj.path().join("tokenizer_config.json"), config).unwrap();
    let tok = ClipTokenizer::load(obj.path()).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (49406, 49407, 0));
    check(&tok, "tokenizer_config.json object pad !", &bang);
}

/// The built-in tokenizer stands in for the folder a single-file checkpoint lacks: same vocabulary, and the same ids as
/// the folder (and transformers) on every fixture string, with either pad token.
#[test]
fn embedded_matches_the_folder() {
    let folder = ClipTokenizer::load(fixture("clip-tokenizer")).unwrap();
    let end = ClipTokenizer::embedded(EmbeddedPad::EndToken).unwrap();
    assert_eq!((end.bos_id(), end.eos_id(), end.pad_id()), (49406, 49407, 49407));
    assert_eq!(end.inner().get_vocab(true), folder.inner().get_vocab(true));
    let agree = cases("pad_end");
    let differs = cases("slow_differs");
    for case in agree.iter().chain(&differs) {
        assert_eq!(end.encode(&case.text).unwrap(), folder.encode(&case.text).unwrap(), "{:?}", case.text);
    }
    check(&end, "embedded", &agree);
    check(&end, "embedded (slow differs)", &differs);

    let bang = ClipTokenizer::embedded(EmbeddedPad::Bang).unwrap();
    assert_eq!((bang.bos_id(), bang.eos_id(), bang.pad_id()), (49406, 49407, 0));
    check(&bang, "embedded, pad !", &cases("pad_bang"));
}

/// The folder a model made from scratch gets: CLIP's files, read back as transformers reads them (the fixture folder's
/// vocabulary and ids).
#[test]
fn the_written_clip_folder_is_clips() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ClipTokenizer::write_embedded(dir.path()).unwrap(), 49408);
    let written = ClipTokenizer::load(dir.path()).unwrap();
    let folder = ClipTokenizer::load(fixture("clip-tokenizer")).unwrap();
    assert_eq!(written.inner().get_vocab(true), folder.inner().get_vocab(true));
    assert_eq!((written.bos_id(), written.eos_id(), written.pad_id()), (49406, 49407, 49407));
    check(&written, "written", &cases("pad_end"));
}

/// A tokenizer learnt from a small caption set: each frequent caption word one token, start and end tokens last, the
/// same bytes every time, and text it never saw still tokenized (down to bytes, never to the unknown token).
#[test]
fn a_tokenizer_learnt_from_captions_has_whole_word_tokens() {
    let colours = ["red", "green", "blue"];
    let kinds = ["circle", "square", "triangle"];
    let captions: Vec<String> = colours.iter().flat_map(|c| kinds.iter().map(move |k| format!("a small {c} {k} at the top left, on white!"))).collect();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let size = ClipTokenizer::write_learned(a.path(), &captions, 10_000).unwrap();
    assert_eq!(ClipTokenizer::write_learned(b.path(), &captions, 10_000).unwrap(), size);
    for file in ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"] {
        assert_eq!(fs::read(a.path().join(file)).unwrap(), fs::read(b.path().join(file)).unwrap(), "{file}");
    }
    let tok = ClipTokenizer::load(a.path()).unwrap();
    assert!((514..600).contains(&size), "512 byte tokens, the captions' merges, start and end: {size}");
    assert_eq!((tok.bos_id() as usize, tok.eos_id() as usize, tok.pad_id() as usize), (size - 2, size - 1, size - 1));
    for caption in &captions {
        let t = tok.encode(caption).unwrap();
        // a small red circle at the top left , on white ! : 12 words and marks, plus start and end.
        assert_eq!(t.len, 14, "{caption}: {:?}", &t.ids[..t.len]);
        assert_eq!(
            tok.decode(&t.ids[1..t.len - 1].iter().map(|&i| i as u32).collect::<Vec<_>>()).unwrap().trim(),
            caption.replace(',', " ,").replace('!', " !")
        );
    }
    let unseen = tok.encode("a zebra").unwrap();
    assert!(unseen.len > 4 && !unseen.ids[1..unseen.len - 1].contains(&(tok.eos_id() as i64)), "{:?}", unseen.ids);
}

#[test]
fn truncation_reports_the_dropped_words() {
    let tok = ClipTokenizer::load(fixture("clip-tokenizer")).unwrap();
    // 80 one-token words, then four more: 84 prompt tokens, 75 fit.
    let long = format!("{}these words are dropped", "a ".repeat(80));
    let t = tok.encode(&long).unwrap();
    assert_eq!((t.len, t.ids[MAX_LENGTH - 1]), (MAX_LENGTH, 49407));
    assert_eq!(t.truncated.as_deref(), Some("a a a a a these words are dropped"));

    let fits = "a ".repeat(75);
    assert_eq!(tok.encode(&fits).unwrap().truncated, None);
    let one_over = format!("{fits} Final!");
    assert_eq!(tok.encode(&one_over).unwrap().truncated.as_deref(), Some("final !"));
    let short = tok.encode("a photo of an astronaut riding a horse on mars").unwrap();
    assert_eq!((short.truncated, short.len), (None, 12));
    let empty = tok.encode("").unwrap();
    assert_eq!((empty.len, &empty.ids[..3]), (2, &[49406_i64, 49407, 49407][..]));
}

#[test]
fn encode_batch_and_decode() {
    let tok = ClipTokenizer::load(fixture("clip-tokenizer-json")).unwrap();
    let batch = tok.encode_batch(&["a photo of a cat", "", "(masterpiece:1.2), 🐶"]).unwrap();
    assert_eq!((batch.size(), batch.kind()), (vec![3, MAX_LENGTH as i64], Kind::Int64));
    let one = tok.encode("(masterpiece:1.2), 🐶").unwrap();
    assert_eq!(Vec::<i64>::try_from(batch.get(2)).unwrap(), one.ids);
    assert_eq!(tokens_tensor(&[]).size(), vec![0, MAX_LENGTH as i64]);
    let ids: Vec<u32> = one.ids[1..one.len - 1].iter().map(|&i| i as u32).collect();
    assert_eq!(tok.decode(&ids).unwrap(), "( masterpiece : 1 . 2 ), 🐶");
}

fn err(dir: &Path) -> String {
    ClipTokenizer::load(dir).unwrap_err().to_string()
}

#[test]
fn errors_name_the_file() {
    let src = fixture("clip-tokenizer");
    let dir = tempfile::tempdir().unwrap();
    assert!(err(dir.path()).contains("neither vocab.json + merges.txt nor tokenizer.json"), "{}", err(dir.path()));

    fs::write(dir.path().join("vocab.json"), "{not json").unwrap();
    fs::copy(src.join("merges.txt"), dir.path().join("merges.txt")).unwrap();
    assert!(err(dir.path()).contains("vocab.json"), "{}", err(dir.path()));

    fs::copy(src.join("vocab.json"), dir.path().join("vocab.json")).unwrap();
    fs::write(dir.path().join("merges.txt"), "#version: 0.2\ni n\nt h e\n").unwrap();
    assert!(err(dir.path()).contains("merges.txt") && err(dir.path()).contains("line 3"), "{}", err(dir.path()));
    fs::write(dir.path().join("merges.txt"), "#version: 0.2\ni n\nzzzqqq xxxyyy\n").unwrap();
    assert!(err(dir.path()).contains("merges.txt"), "{}", err(dir.path()));

    fs::copy(src.join("merges.txt"), dir.path().join("merges.txt")).unwrap();
    fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": "<pad>"}"#).unwrap();
    assert!(err(dir.path()).contains("<pad>"), "{}", err(dir.path()));
    fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": 7}"#).unwrap();
    assert!(err(dir.path()).contains("special_tokens_map.json") && err(dir.path()).contains("pad_token"), "{}", err(dir.path()));
    fs::write(dir.path().join("special_tokens_map.json"), "{}").unwrap();
    assert!(ClipTokenizer::load(dir.path()).is_ok());

    let json = tempfile::tempdir().unwrap();
    fs::write(json.path().join("tokenizer.json"), "{}").unwrap();
    assert!(err(json.path()).contains("tokenizer.json"), "{}", err(json.path()));
}
