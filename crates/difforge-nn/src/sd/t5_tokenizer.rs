//! T5's tokenizer as Stable Diffusion 3's pipeline uses it for its third text encoder: the
//! folder's `tokenizer.json` (transformers 5 saves only that; a folder with only
//! `spiece.model` is refused with what to do), the prompt's pieces, then `</s>`, padded with
//! `<pad>` to `max_sequence_length` (256 in diffusers' pipeline, 77 in its training scripts);
//! a longer prompt is cut to fit, `</s>` kept, and what was cut is returned for a warning.

use super::tokenizer::Tokens;
use crate::NnError;
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    eos_id: u32,
    pad_id: u32,
}

impl T5Tokenizer {
    /// Loads `dir/tokenizer.json`; errors name the file or say what is missing.
    pub fn load(dir: &Path) -> Result<T5Tokenizer, NnError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            let why = if dir.join("spiece.model").is_file() {
                "has only spiece.model: difforge reads tokenizer.json (save the tokenizer once with transformers' T5TokenizerFast.save_pretrained)"
            } else {
                "has no tokenizer.json"
            };
            return Err(NnError::Invalid(format!("T5 tokenizer folder {}: {why}", dir.display())));
        }
        let invalid = |e: String| NnError::Load { path: path.clone(), reason: e };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| invalid(e.to_string()))?;
        // Truncation and padding happen here, so that what was cut can be reported.
        inner.with_truncation(None).map_err(|e| invalid(e.to_string()))?;
        inner.with_padding(None);
        let id = |token: &str| inner.token_to_id(token).ok_or_else(|| invalid(format!("no {token} token in the vocabulary")));
        let (eos_id, pad_id) = (id("</s>")?, id("<pad>")?);
        Ok(T5Tokenizer { inner, eos_id, pad_id })
    }

    /// `prompt` as exactly `max_length` ids (at least 1): its pieces, `</s>`, padding.
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<Tokens, NnError> {
        if max_length == 0 {
            return Err(NnError::Invalid("a T5 sequence holds at least its end token (max_length >= 1)".into()));
        }
        let encoding = self.inner.encode(prompt, false).map_err(|e| NnError::Invalid(format!("cannot tokenize prompt {prompt:?}: {e}")))?;
        let body = encoding.get_ids();
        let keep = body.len().min(max_length - 1);
        let truncated = if keep < body.len() {
            Some(self.inner.decode(&body[keep..], true).map_err(|e| NnError::Invalid(format!("cannot decode the cut tokens: {e}")))?)
        } else {
            None
        };
        let mut ids: Vec<i64> = body[..keep].iter().map(|&i| i64::from(i)).collect();
        ids.push(i64::from(self.eos_id));
        let len = ids.len();
        ids.resize(max_length, i64::from(self.pad_id));
        Ok(Tokens { ids, len, truncated })
    }
}
