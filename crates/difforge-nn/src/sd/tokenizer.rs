//! CLIP's BPE tokenizer for Stable Diffusion prompts, giving the ids transformers gives.
//!
//! A checkpoint's `tokenizer/` (and SDXL's `tokenizer_2/`) folder comes in two forms:
//! - `vocab.json` + `merges.txt` + `special_tokens_map.json` (+ `tokenizer_config.json`), as SD 1.5 ships it. From these
//!   the same pipeline is built as transformers' `CLIPTokenizerFast` converter (`CLIPConverter` in
//!   `convert_slow_tokenizer.py`, transformers 4.57.1): normalizer NFC, `\s+` → one space, lowercase; pre-tokenizer
//!   CLIP's split pattern (matches kept, the rest dropped) then byte-level without a prefix space; BPE with the `</w>`
//!   end-of-word suffix and `<|endoftext|>` as unknown token; start and end tokens around the prompt.
//! - a single `tokenizer.json` (a saved fast tokenizer), read as it is.
//!
//! When both are present the first is used: diffusers' SD pipelines load the slow `CLIPTokenizer`, which reads
//! exactly those files, and tokenizer.json files written before transformers 4.17 carry an older, different pipeline.
//!
//! [`ClipTokenizer::embedded`] builds the first form from CLIP's merges compiled into the binary (the vocabulary follows
//! from them), for a single-file checkpoint, which holds no tokenizer.
//!
//! Every prompt becomes exactly [`MAX_LENGTH`] ids: start token, the prompt's tokens, end token, then padding. A prompt
//! longer than that keeps its first 75 tokens, and [`Tokens::truncated`] gives the dropped text so that the caller can
//! warn about it (transformers truncates silently). SD 1.x pads with the end token, SD 2.x and SDXL's second tokenizer
//! with `!` (id 0): the pad token is read from the folder, as transformers reads it.
//!
//! The one known difference from diffusers: transformers' slow `CLIPTokenizer` first runs `ftfy.fix_text` when ftfy is
//! installed (curly quotes straightened, full-width forms and ligatures folded, control characters dropped); the fast
//! pipeline, and this one, do not. The fixtures list the strings where the two differ.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use serde_json::Value;
use tch::Tensor;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior, Tokenizer,
};

use super::bpe_learn::learn_merges;
use crate::NnError;

/// Ids per prompt: the CLIP text encoder's 77 positions.
pub const MAX_LENGTH: usize = 77;

/// CLIP's word split (transformers' `CLIPConverter`). The slow tokenizer's pattern begins with
/// `<\|startoftext\|>|<\|endoftext\|>|`; here those two are added special tokens, cut out before this split runs, as in
/// the fast tokenizer.
const CLIP_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// transformers keeps merges.txt lines 1..=49152-256-2: line 0 is the `#version` header, and CLIP's vocabulary has
/// 49152 - 256 - 2 merges (256 byte tokens and two special tokens make up the rest of the 49408 ids).
const N_MERGES: usize = 49152 - 256 - 2;

/// The end-of-word suffix CLIP's BPE vocabulary uses; decoded text has it turned back into a space.
const END_OF_WORD: &str = "</w>";

/// One prompt's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Exactly [`MAX_LENGTH`] ids: start token, the prompt's tokens, end token, padding.
    pub ids: Vec<i64>,
    /// How many of `ids` come before the padding (start and end token included): the attention mask's ones.
    pub len: usize,
    /// The text of the prompt tokens that did not fit, decoded (`None` when everything fit), for a warning such as
    /// "these words were dropped: ...".
    pub truncated: Option<String>,
}

/// CLIP's tokenizer as Stable Diffusion uses it; see the module documentation.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// A special token as the folder's JSON names it: a plain string, or an object with `content` (transformers'
/// serialised `AddedToken`) and perhaps `normalized`.
#[derive(Debug, Clone)]
struct TokenSpec {
    content: String,
    normalized: Option<bool>,
}

/// The special tokens a folder's `special_tokens_map.json` and `tokenizer_config.json` name.
#[derive(Debug, Default)]
struct SpecialTokens {
    bos: Option<TokenSpec>,
    eos: Option<TokenSpec>,
    unk: Option<TokenSpec>,
    pad: Option<TokenSpec>,
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> NnError {
    NnError::Invalid(format!("tokenizer file {}: {reason}", path.display()))
}

fn read_text(path: &Path) -> Result<String, NnError> {
    fs::read_to_string(path).map_err(|e| invalid(path, e))
}

fn read_json(path: &Path) -> Result<Value, NnError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| invalid(path, e))
}

fn token_spec(value: Option<&Value>, path: &Path, key: &str) -> Result<Option<TokenSpec>, NnError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(TokenSpec { content: s.clone(), normalized: None })),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(TokenSpec { content: s.clone(), normalized: o.get("normalized").and_then(Value::as_bool) })),
            _ => Err(invalid(path, format!("`{key}` has no \"content\" string"))),
        },
        Some(_) => Err(invalid(path, format!("`{key}` is neither a string nor an object with \"content\""))),
    }
}

impl SpecialTokens {
    /// Reads `special_tokens_map.json` then `tokenizer_config.json` (both optional). The first wins, as in transformers'
    /// `from_pretrained`: SD 2.x ships `pad_token` "<|endoftext|>" in tokenizer_config.json but "!" in
    /// special_tokens_map.json, and pads with "!".
    fn read(dir: &Path) -> Result<Self, NnError> {
        let mut out = Self::default();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let json = read_json(&path)?;
            let Value::Object(map) = &json else {
                return Err(invalid(&path, "not a JSON object"));
            };
            for (key, slot) in [("bos_token", &mut out.bos), ("eos_token", &mut out.eos), ("unk_token", &mut out.unk), ("pad_token", &mut out.pad)] {
                if slot.is_none() {
                    *slot = token_spec(map.get(key), &path, key)?;
                }
            }
        }
        Ok(out)
    }
}

fn spec_or(spec: &Option<TokenSpec>, default: &str) -> TokenSpec {
    spec.clone().unwrap_or_else(|| TokenSpec { content: default.to_string(), normalized: None })
}

/// `vocab.json` as a token → id map.
fn read_vocab(path: &Path) -> Result<Vocab, NnError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| invalid(path, e))
}

/// `merges.txt` as transformers' `CLIPTokenizer` reads it: the text stripped, split into lines, lines 1..=N_MERGES
/// kept (line 0 is the `#version` header, later lines are ignored), each split on whitespace into a pair. `source` names
/// the text in errors.
fn parse_merges(text: &str, source: &Path) -> Result<Vec<(String, String)>, NnError> {
    let mut merges = Vec::with_capacity(N_MERGES);
    for (i, line) in text.trim().split('\n').enumerate().skip(1).take(N_MERGES) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => return Err(invalid(source, format!("line {} is not two tokens separated by a space: {line:?}", i + 1))),
        }
    }
    Ok(merges)
}

/// The pipeline transformers' `CLIPConverter` builds from a vocabulary and merges, wherever they were read from:
/// `vocab_source` and `merges_source` name them in errors.
fn clip_pipeline(vocab: Vocab, merges: Vec<(String, String)>, unk: &str, vocab_source: &Path, merges_source: &Path) -> Result<Tokenizer, NnError> {
    if !vocab.contains_key(unk) {
        return Err(invalid(vocab_source, format!("has no unknown token {unk:?}")));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(END_OF_WORD.to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| invalid(merges_source, e))?;
    let mut tok = Tokenizer::new(bpe);
    let (normalizer, pre_tokenizer) = clip_text_steps().map_err(|e| invalid(vocab_source, e))?;
    tok.with_normalizer(Some(normalizer));
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// What CLIP does to a prompt before BPE: NFC, `\s+` → one space, lowercase; then CLIP's split
/// pattern (matches kept, the rest dropped) and byte-level characters without a prefix space.
fn clip_text_steps() -> Result<(NormalizerSequence, PreTokenizerSequence), String> {
    let replace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| e.to_string())?;
    let normalizer = NormalizerSequence::new(vec![NFC.into(), replace.into(), Lowercase.into()]);
    let split = Split::new(SplitPattern::Regex(CLIP_SPLIT.into()), SplitDelimiterBehavior::Removed, true).map_err(|e| e.to_string())?;
    // ByteLevel(add_prefix_space=False) with transformers' defaults: offsets trimmed, GPT-2's own regex split kept (it
    // changes nothing after CLIP's split, but it is what the fast tokenizer runs).
    Ok((normalizer, PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, true, true).into()])))
}

/// The words BPE sees in `texts` (in byte-level characters), with their counts.
fn clip_words(texts: &[String]) -> Result<BTreeMap<String, u64>, String> {
    let (normalizer, pre_tokenizer) = clip_text_steps()?;
    let mut words = BTreeMap::new();
    for text in texts {
        let mut normalized = NormalizedString::from(text.as_str());
        normalizer.normalize(&mut normalized).map_err(|e| e.to_string())?;
        let mut pieces = PreTokenizedString::from(normalized);
        pre_tokenizer.pre_tokenize(&mut pieces).map_err(|e| e.to_string())?;
        for (word, _, _) in pieces.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(word.to_string()).or_default() += 1;
        }
    }
    Ok(words)
}

/// The pipeline from a folder's `vocab.json` and `merges.txt`.
fn folder_pipeline(dir: &Path, specials: &SpecialTokens) -> Result<Tokenizer, NnError> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let vocab = read_vocab(&vocab_path)?;
    let merges = parse_merges(&read_text(&merges_path)?, &merges_path)?;
    clip_pipeline(vocab, merges, &spec_or(&specials.unk, "<|endoftext|>").content, &vocab_path, &merges_path)
}

/// CLIP's merges (the header line and the N_MERGES merges of OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`, MIT
/// licence: assets/LICENSE-clip-bpe.txt), gzip-compressed: about 200 KiB in the binary instead of 500 KiB. The
/// vocabulary is not stored, it follows from the merges (see [`clip_vocab`]).
const EMBEDDED_MERGES_GZ: &[u8] = include_bytes!("../../assets/clip_merges.txt.gz");

/// What errors of the built-in tokenizer name in place of a file.
const EMBEDDED_SOURCE: &str = "(built in) clip_merges.txt.gz";

/// GPT-2's byte → printable character map (`bytes_to_unicode` in openai/gpt-2 `src/encoder.py`, copied by CLIP's
/// `simple_tokenizer.py` and transformers): bytes that are printable Latin-1 characters map to themselves, the other 68
/// to U+0100 onwards in byte order. Returned in GPT-2's order (the printable bytes first), which is CLIP's vocabulary
/// order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map: Vec<(u8, char)> = (0..=255u8).filter(|&b| printable(b)).map(|b| (b, char::from(b))).collect();
    let others = (0..=255u8).filter(|&b| !printable(b));
    map.extend(others.zip('\u{100}'..));
    map
}

/// CLIP's vocabulary as its `SimpleTokenizer` (and transformers' `CLIPTokenizer`, whose vocab.json is this) builds it:
/// the 256 byte characters, the same with `</w>`, each merge joined, then the start and end tokens: 49408 ids.
fn clip_vocab(merges: &[(String, String)]) -> Vocab {
    clip_vocab_in_order(merges).into_iter().zip(0u32..).collect()
}

/// [`clip_vocab`]'s tokens in id order. A token two merges make (possible with learnt merges, not in CLIP's) keeps
/// its first id, so the ids stay contiguous.
fn clip_vocab_in_order(merges: &[(String, String)]) -> Vec<String> {
    let bytes: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let words = bytes.iter().map(|c| format!("{c}{END_OF_WORD}"));
    let joined = merges.iter().map(|(a, b)| format!("{a}{b}"));
    let specials = ["<|startoftext|>", "<|endoftext|>"].map(String::from);
    let mut seen = std::collections::HashSet::new();
    bytes.iter().cloned().chain(words).chain(joined).chain(specials).filter(|t| seen.insert(t.clone())).collect()
}

/// Writes a transformers `CLIPTokenizer` folder for `merges` (whose text, header line included, is `merges_text`):
/// their CLIP vocabulary in id order (the same bytes for the same merges), the start and end tokens, end-token padding
/// (as SD 1.x). Returns the vocabulary's size.
fn write_folder(dir: &Path, merges: &[(String, String)], merges_text: String) -> Result<usize, NnError> {
    let vocab = clip_vocab_in_order(merges);
    let entries: Vec<String> = vocab.iter().zip(0..).map(|(token, id)| format!("{}: {id}", Value::from(token.as_str()))).collect();
    let vocab_json = format!("{{{}}}", entries.join(", "));
    let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
    let (bos_id, eos_id) = (vocab.len() - 2, vocab.len() - 1);
    let special = |content: &str| serde_json::json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false});
    let special_map = serde_json::json!({"bos_token": special(bos), "eos_token": special(eos), "pad_token": eos, "unk_token": special(eos)});
    let mut decoder = serde_json::Map::new();
    for (id, content) in [(bos_id, bos), (eos_id, eos)] {
        let mut token = special(content);
        token["special"] = Value::Bool(true);
        decoder.insert(id.to_string(), token);
    }
    let config = serde_json::json!({
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": bos,
        "clean_up_tokenization_spaces": false,
        "do_lower_case": true,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "pad_token": eos,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": eos,
    });
    fs::create_dir_all(dir).map_err(|e| invalid(dir, e))?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    for (name, text) in
        [("vocab.json", vocab_json), ("merges.txt", merges_text), ("special_tokens_map.json", pretty(&special_map)), ("tokenizer_config.json", pretty(&config))]
    {
        fs::write(dir.join(name), text).map_err(|e| invalid(&dir.join(name), e))?;
    }
    Ok(vocab.len())
}

/// The padding of [`ClipTokenizer::embedded`], which a folder would give in its special_tokens_map.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedPad {
    /// `<|endoftext|>`, as SD 1.x and SDXL's first tokenizer (`tokenizer/`) pad.
    EndToken,
    /// `!` (id 0), as SD 2.x and SDXL's second tokenizer (`tokenizer_2/`) pad; registered as a special token, so that
    /// every `!` of a prompt is its own token, as with a folder whose pad token is "!".
    Bang,
}

impl ClipTokenizer {
    /// Loads a tokenizer folder (a checkpoint's `tokenizer/` or `tokenizer_2/`): `vocab.json` + `merges.txt` (with
    /// `special_tokens_map.json` / `tokenizer_config.json` when present), else `tokenizer.json`. Errors name the file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, NnError> {
        let dir = dir.as_ref();
        let specials = SpecialTokens::read(dir)?;
        let json_path = dir.join("tokenizer.json");
        let (inner, source): (Tokenizer, PathBuf) = if dir.join("vocab.json").is_file() {
            (folder_pipeline(dir, &specials)?, dir.join("vocab.json"))
        } else if json_path.is_file() {
            let mut tok = Tokenizer::from_file(&json_path).map_err(|e| invalid(&json_path, e))?;
            // Truncation and padding are done here (so that what was dropped can be reported), not by the file's settings.
            tok.with_truncation(None).map_err(|e| invalid(&json_path, e))?;
            tok.with_padding(None);
            (tok, json_path.clone())
        } else {
            let hint = if dir.join("tokenizer").is_dir() { " (this looks like a model folder: pass its tokenizer/ folder)" } else { "" };
            return Err(NnError::Invalid(format!("tokenizer folder {}: has neither vocab.json + merges.txt nor tokenizer.json{hint}", dir.display())));
        };
        Self::finish(inner, &specials, &source)
    }

    /// CLIP's tokenizer built into the binary, for a checkpoint that holds none (an SD single-file checkpoint): the
    /// same ids as a folder with CLIP's vocab.json and merges.txt and the given pad token, with no file read.
    pub fn embedded(pad: EmbeddedPad) -> Result<Self, NnError> {
        let source = Path::new(EMBEDDED_SOURCE);
        let mut text = String::new();
        GzDecoder::new(EMBEDDED_MERGES_GZ).read_to_string(&mut text).map_err(|e| invalid(source, e))?;
        let merges = parse_merges(&text, source)?;
        let vocab = clip_vocab(&merges);
        // CLIP's folders name the start, end and unknown tokens `finish` falls back on; only the pad token differs between
        // SD versions.
        let pad = match pad {
            EmbeddedPad::EndToken => None,
            EmbeddedPad::Bang => Some(TokenSpec { content: "!".to_string(), normalized: None }),
        };
        let specials = SpecialTokens { pad, ..SpecialTokens::default() };
        let inner = clip_pipeline(vocab, merges, "<|endoftext|>", source, source)?;
        Self::finish(inner, &specials, source)
    }

    /// Writes CLIP's tokenizer built into the binary as a transformers `CLIPTokenizer` folder
    /// (vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json; end-token
    /// padding, as SD 1.x), for a model made from scratch: transformers, diffusers and
    /// [`ClipTokenizer::load`] read it, and it gives the ids of [`ClipTokenizer::embedded`].
    /// Returns the vocabulary's size.
    pub fn write_embedded(dir: &Path) -> Result<usize, NnError> {
        let source = Path::new(EMBEDDED_SOURCE);
        let mut merges_text = String::new();
        GzDecoder::new(EMBEDDED_MERGES_GZ).read_to_string(&mut merges_text).map_err(|e| invalid(source, e))?;
        write_folder(dir, &parse_merges(&merges_text, source)?, merges_text)
    }

    /// Writes a CLIP-form tokenizer folder (as [`ClipTokenizer::write_embedded`]) whose merges are learnt from
    /// `texts` (a training set's captions) instead of CLIP's: pairs seen at least twice, at most `max_merges` of
    /// them. Its vocabulary is CLIP's 512 byte tokens, the learnt merges and the start and end tokens, so frequent
    /// caption words are one token each and any other text still tokenizes. Returns the vocabulary's size.
    pub fn write_learned(dir: &Path, texts: &[String], max_merges: usize) -> Result<usize, NnError> {
        let words = clip_words(texts).map_err(|e| NnError::Invalid(format!("cannot split the captions into words: {e}")))?;
        let merges = learn_merges(&words, END_OF_WORD, 2, max_merges);
        let mut merges_text = String::from("#version: 0.2\n");
        for (a, b) in &merges {
            merges_text.push_str(&format!("{a} {b}\n"));
        }
        write_folder(dir, &merges, merges_text)
    }

    /// The special tokens registered and their ids found, for either pipeline; `source` names the vocabulary in errors.
    fn finish(mut inner: Tokenizer, specials: &SpecialTokens, source: &Path) -> Result<Self, NnError> {
        // A tokenizer.json's own padding token, if it has one, when the folder's JSON files name none.
        let json_pad = inner.get_padding().map(|p| TokenSpec { content: p.pad_token.clone(), normalized: None });
        let bos = spec_or(&specials.bos, "<|startoftext|>");
        let eos = spec_or(&specials.eos, "<|endoftext|>");
        let unk = spec_or(&specials.unk, "<|endoftext|>");
        // No pad token named anywhere: transformers' CLIPTokenizer defaults to the end token.
        let pad = specials.pad.clone().or(json_pad).unwrap_or_else(|| eos.clone());

        // Every special token becomes an added special token, as transformers registers them: they are cut out of the
        // prompt before anything else (a literal "<|endoftext|>" in a prompt is that token, and with SD 2.x's "!" pad
        // token every "!" is its own token, not part of a BPE merge such as "!!!"). transformers' CLIPTokenizer turns
        // plain-string start, end and unknown tokens into AddedTokens that match normalized (lowercased) text, while a
        // plain-string pad token matches raw text; a serialised AddedToken says which it is.
        let mut present: Vec<String> = inner.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        for (spec, normalized_default) in [(&bos, true), (&eos, true), (&unk, true), (&pad, false)] {
            if inner.token_to_id(&spec.content).is_none() {
                return Err(invalid(source, format!("has no token {:?} (a special token of the folder)", spec.content)));
            }
            if !present.contains(&spec.content) {
                let token = AddedToken::from(spec.content.clone(), true).normalized(spec.normalized.unwrap_or(normalized_default));
                inner.add_special_tokens(&[token]);
                present.push(spec.content.clone());
            }
        }
        let id = |spec: &TokenSpec| inner.token_to_id(&spec.content).ok_or_else(|| invalid(source, format!("has no token {:?}", spec.content)));
        let (bos_id, eos_id, pad_id) = (id(&bos)?, id(&eos)?, id(&pad)?);
        if inner.get_post_processor().is_none() {
            // What the converter sets (RobertaProcessing is its way of getting start and end tokens with byte-level
            // BPE); `encode` adds them itself, this is for users of `inner()`.
            inner.with_post_processor(Some(
                RobertaProcessing::new((eos.content.clone(), eos_id), (bos.content.clone(), bos_id)).trim_offsets(false).add_prefix_space(false),
            ));
        }
        Ok(Self { inner, bos_id, eos_id, pad_id })
    }

    /// One prompt as [`MAX_LENGTH`] ids; see [`Tokens`].
    pub fn encode(&self, prompt: &str) -> Result<Tokens, NnError> {
        // Without special tokens: start and end are placed here, around the part of the prompt that fits.
        let encoding = self.inner.encode(prompt, false).map_err(|e| NnError::Invalid(format!("cannot tokenize prompt {prompt:?}: {e}")))?;
        let body = encoding.get_ids();
        let keep = body.len().min(MAX_LENGTH - 2);
        let truncated = if keep < body.len() { Some(self.decode(&body[keep..])?) } else { None };
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(i64::from(self.bos_id));
        ids.extend(body[..keep].iter().map(|&i| i64::from(i)));
        ids.push(i64::from(self.eos_id));
        let len = ids.len();
        ids.resize(MAX_LENGTH, i64::from(self.pad_id));
        Ok(Tokens { ids, len, truncated })
    }

    /// Prompts as an Int64 tensor of shape (B, [`MAX_LENGTH`]). Truncation is not reported here: use
    /// [`ClipTokenizer::encode`] and [`tokens_tensor`] to warn about it.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Tensor, NnError> {
        let tokens = prompts.iter().map(|p| self.encode(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(tokens_tensor(&tokens))
    }

    /// Ids back to text, as transformers' `CLIPTokenizerFast.decode` gives it: byte-level decoding, every `</w>` a
    /// space, the ends trimmed. Special tokens are kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String, NnError> {
        let text = self.inner.decode(ids, false).map_err(|e| NnError::Invalid(format!("cannot decode token ids: {e}")))?;
        Ok(text.replace(END_OF_WORD, " ").trim().to_string())
    }

    /// The start token's id (49406 in CLIP's vocabulary).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The end token's id (49407 in CLIP's vocabulary).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The padding id: the end token for SD 1.x, `!` (0) for SD 2.x and SDXL's second tokenizer.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The underlying `tokenizers` pipeline.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Encoded prompts as an Int64 tensor of shape (B, [`MAX_LENGTH`]).
pub fn tokens_tensor(tokens: &[Tokens]) -> Tensor {
    let flat: Vec<i64> = tokens.iter().flat_map(|t| t.ids.iter().copied()).collect();
    Tensor::from_slice(&flat).view([tokens.len() as i64, MAX_LENGTH as i64])
}
