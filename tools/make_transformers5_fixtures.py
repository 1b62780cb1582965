"""Text encoders of the tiny SD fixtures as transformers 5 saves them (tests: difforge-nn
`it/sd_transformers5.rs`, difforge `it/text_to_image.rs`).

transformers 5 made `CLIPTextModel`'s module tree flat: a model created in it (from a config,
as training from scratch, diffusers' own tests or any new encoder do) saves its weights without
the `text_model.` prefix (`embeddings.token_embedding.weight`, `encoder.layers.0...`), while
`CLIPTextModelWithProjection` (SDXL's second encoder) keeps it. A model loaded from a 4.x folder
is saved back with the prefix, so the fixture is made as a new model is: built from the 4.x
folder's config, given its weights with `load_state_dict`, saved with `save_pretrained`. The
weights are the 4.x fixture's, so a folder with these encoders must give the 4.x folder's image.

Writes crates/difforge-nn/tests/fixtures/sd/transformers5/{tiny-sd15,tiny-sdxl}/text_encoder*/
(config.json, model.safetensors) and checks the key layouts it expects.

Needs torch 2.11 (the project venv) and transformers 5.25.0 beside it:
  ~/.cache/difforge/torch-2.11.0/bin/pip install --target ~/.cache/difforge/tf5-tools transformers==5.25.0
Run: PYTHONPATH=~/.cache/difforge/tf5-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_transformers5_fixtures.py
"""
from pathlib import Path

import transformers
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = Path(__file__).resolve().parent.parent
SD = ROOT / "crates" / "difforge-nn" / "tests" / "fixtures" / "sd"
OUT = SD / "transformers5"
ENCODERS = [("tiny-sd15", "text_encoder", CLIPTextModel), ("tiny-sdxl", "text_encoder", CLIPTextModel),
            ("tiny-sdxl", "text_encoder_2", CLIPTextModelWithProjection)]


def keys(path):
    with safe_open(str(path), "pt") as f:
        return sorted(f.keys())


def main():
    assert transformers.__version__.startswith("5."), transformers.__version__
    for model, encoder, cls in ENCODERS:
        src = SD / model / encoder
        loaded = cls.from_pretrained(src)
        fresh = cls(CLIPTextConfig.from_pretrained(src))
        # The 4.x names with the prefix that 5.x's flat CLIPTextModel lacks.
        state = {k: v for k, v in loaded.state_dict().items()}
        own = set(fresh.state_dict())
        mapped = {k if k in own else k.removeprefix("text_model."): v for k, v in state.items()}
        fresh.load_state_dict(mapped, strict=True)
        out = OUT / model / encoder
        fresh.save_pretrained(out)
        saved = keys(out / "model.safetensors")
        prefixed = all(k.startswith("text_model.") or k == "text_projection.weight" for k in saved)
        print(f"{model}/{encoder}: {cls.__name__}, {len(saved)} tensors, text_model. prefix: {prefixed}")
        assert prefixed == (cls is CLIPTextModelWithProjection), saved[:3]


if __name__ == "__main__":
    main()
