"""A tiny T5-style tokenizer (`tokenizer.json` only, as transformers 5 saves `tokenizer_3/`):
a Unigram model trained on a few captions, with T5's specials (<pad> 0, </s> 1, <unk> 2), its
Metaspace pre-tokenizer and the "$A </s>" post-processor; and the ids transformers'
T5TokenizerFast gives for some prompts, padded to max_length as SD3's pipeline asks.

Run with the reference packages (tools/setup_sd_tools.sh):
    PYTHONPATH=~/.cache/difforge/sd-tools python tools/make_t5_tokenizer_fixture.py crates/difforge-nn/tests/fixtures/t5
"""
import json
import sys
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import T5TokenizerFast

out = Path(sys.argv[1]) / "tiny-t5-tokenizer"
out.mkdir(parents=True, exist_ok=True)
corpus = [
    "a red square at the top left on a white background",
    "a small blue circle in the middle of a black background",
    "two green triangles, large and small, on a grey background",
    "a photo of a dog on a sofa", "a painting of a cat in the snow",
] * 20
tok = Tokenizer(models.Unigram())
tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
tok.train_from_iterator(corpus, trainer)
tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
tok.save(str(out / "tokenizer.json"))

t5 = T5TokenizerFast(tokenizer_file=str(out / "tokenizer.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
prompts = ["a red square", "A Photo of a DOG on a sofa,  in the snow", "", "zebra \u00e9t\u00e9 \u2603 " + "a cat " * 20]
cases = []
for max_length in (8, 32):
    for p in prompts:
        ids = t5(p, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True, return_tensors=None)["input_ids"]
        cases.append({"prompt": p, "max_length": max_length, "ids": ids})
(Path(sys.argv[1]) / "tiny-t5-tokenizer-reference.json").write_text(json.dumps({"transformers": transformers.__version__, "cases": cases}, indent=1))
print("vocab", tok.get_vocab_size(), "->", out)
