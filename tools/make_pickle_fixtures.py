"""Writes the small torch.save files that test difforge's PyTorch file reader
(crates/difforge-nn/src/torch_pickle.rs): the same state dict in the legacy format and in the zip
format, with the tricky cases real checkpoints have (views sharing one storage, a transposed view,
half and int64 tensors, a 0-d tensor, nested dicts, OrderedDict metadata, a Parameter), and a JSON
of the values the reader must give back.

Run: $PYTHON tools/make_pickle_fixtures.py   (torch only; output in crates/difforge-nn/tests/fixtures)
"""
import json
import os
from collections import OrderedDict

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "difforge-nn", "tests", "fixtures")


def state_dict():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
    sd = OrderedDict()
    sd["conv.weight"] = base                      # shares its storage with the two views below
    sd["conv.weight_t"] = base.t()                # non-contiguous view
    sd["conv.row2"] = base[2]                     # view with a storage offset
    sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)  # 0-d
    sd["half"] = torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16)
    sd["param"] = torch.nn.Parameter(torch.tensor([[1.5, 2.5]]))
    sd["nested"] = {"deep": torch.tensor([3, -4], dtype=torch.int32)}
    sd._metadata = OrderedDict({"": {"version": 1}})
    return sd


def expected(sd):
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                out[f"{k}.{k2}"] = {"shape": list(v2.shape), "values": v2.flatten().tolist()}
        else:
            out[k] = {"shape": list(v.shape), "values": v.detach().flatten().float().tolist()}
    return out


def main():
    sd = state_dict()
    torch.save(sd, os.path.join(OUT, "small_legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(sd, os.path.join(OUT, "small_zip.pth"))
    with open(os.path.join(OUT, "small_pth.json"), "w") as f:
        json.dump({"torch": torch.__version__, "tensors": expected(sd)}, f, indent=1)


if __name__ == "__main__":
    main()
