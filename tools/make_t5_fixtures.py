"""A tiny random T5 encoder (transformers' T5EncoderModel, the v1.1 / XXL layout SD3 uses as its
third text encoder: RMS layer norms, gated-GELU feed-forward, relative position buckets shared
from the first layer) and its outputs, for the T5 parity test.

Run with the reference packages (tools/setup_sd_tools.sh):
    PYTHONPATH=~/.cache/difforge/sd-tools python tools/make_t5_fixtures.py crates/difforge-nn/tests/fixtures/t5
"""
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

out = Path(sys.argv[1])
torch.manual_seed(0)
config = T5Config(
    vocab_size=99,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    is_encoder_decoder=False,
    use_cache=False,
)
model = T5EncoderModel(config).eval()
# Random weights of a usable scale (the initialiser's are tiny for the norms' effect to show).
with torch.no_grad():
    for name, p in model.named_parameters():
        if "layer_norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
model.save_pretrained(out / "tiny-t5", safe_serialization=True)
# Two prompts, the second padded: positions past its length are masked out of the attention.
ids = torch.tensor([[5, 17, 42, 8, 93, 1, 3, 7, 11, 2, 60, 1], [4, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
mask = (torch.arange(ids.shape[1])[None] < torch.tensor([[12], [3]])).long()
with torch.no_grad():
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    unmasked = model(input_ids=ids).last_hidden_state
save_file({"input_ids": ids, "attention_mask": mask, "last_hidden_state": hidden.contiguous(), "unmasked_last_hidden_state": unmasked.contiguous()},
          str(out / "tiny-t5-reference.safetensors"), metadata={"transformers": transformers.__version__})
print("transformers", transformers.__version__, "->", out)
