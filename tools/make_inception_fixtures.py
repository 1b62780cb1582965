#!/usr/bin/env python3
"""Fixtures for difforge-nn's FID Inception-v3 parity test (crates/difforge-nn/tests/inception_parity.rs).

The real FID weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth) cannot be downloaded in
CI, so parity with pytorch-fid 0.3.0 is proven on deterministic random weights that have the same
key names, shapes, dtypes and file format (legacy torch.save) as the real file.

Modes
-----
weights OUT.pth [--spec FIXTURE.json]
    Writes the random weights to OUT.pth and prints "content-sha256 HEX" on stdout. Needs ONLY
    torch (CI has no pytorch-fid): the key names, shapes, dtypes and state-dict metadata are read
    from the fixture (default: crates/difforge-nn/tests/fixtures/inception.json next to this
    script's folder). The fixture records the digest, so the test can tell "torch drew other
    random numbers" from "the Rust network is wrong".

fixtures [--out FIXTURE.json]
    Needs pytorch-fid 0.3.0 (and torchvision). Records the state dict layout of pytorch-fid's
    fid_inception_v3(), writes the random weights to a temporary file, loads that file into
    pytorch-fid's own InceptionV3([3], resize_input=True, normalize_input=True,
    use_fid_inception=True) (the download is replaced by reading the file), runs it in eval mode on
    the test images and writes the fixture: layout, weights digest, image recipes with checksums
    and the expected 2048-d features.

Why a content digest and not the file's SHA-256: the legacy torch.save format names each storage
by its memory address (str(storage._cdata)) and writes the storages sorted by that name, so the
file's bytes change from run to run even for identical tensors. The digest is SHA-256 over, per
tensor in state-dict order, the line "KEY|DTYPE|SHAPE\n" followed by the raw little-endian values.

Random weights
--------------
Drawn from one torch.Generator seeded with SEED, key by key in state-dict order. Only torch.rand
is used, scaled with separate elementwise ops: unlike torch.randn (whose CPU kernel has an AVX2
path with its own math), these give the same bits on every CPU. Scales keep activations O(1)
through the ~50 layers deep paths: conv weights are He-uniform times CONV_GAIN (the BatchNorm
scales below amplify slightly on average), BN weight ~ U(0.5, 1.5), bias and running_mean
~ U(-0.1, 0.1), running_var ~ U(0.5, 1.5), fc ~ U(-1, 1)/sqrt(2048), num_batches_tracked = 0.

Test images
-----------
Built from integer pixel coordinates with float64 +, -, *, / only (so Rust computes the same bits)
and rounded to float32; see `pixel_values` (the Rust test mirrors it). Each batch records the sum
of its values and a few samples so that a mismatch in the recipe is reported as such.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

SEED = 20151205
CONV_GAIN = 0.9
FIXTURE = Path(__file__).resolve().parent.parent / "crates/difforge-nn/tests/fixtures/inception.json"

# Batches the features are checked on: (N, H, W, first pattern id). Image n of a batch uses pattern
# (first + n) % 4; the 64x64 batch is upsampled, the 299x299 image passes through the resize
# unchanged and the 320x310 one is downsampled.
BATCHES = [(3, 64, 64, 0), (1, 299, 299, 3), (1, 320, 310, 2)]
SAMPLE_POSITIONS = 8


# ---------------------------------------------------------------------------------------------
# Random weights (torch only)


def uniform(gen, shape, low, high):
    """U(low, high) from torch.rand, with exact elementwise scaling (see module docstring)."""
    u = torch.rand(shape, generator=gen, dtype=torch.float32)
    return u * (high - low) + low


def make_state_dict(spec):
    """The random state dict for the layout `spec` (list of [key, shape, dtype] and metadata)."""
    gen = torch.Generator().manual_seed(SEED)
    sd = OrderedDict()
    for key, shape, dtype in spec["state_dict"]:
        leaf = key.rsplit(".", 1)[-1]
        if dtype == "int64":
            if leaf != "num_batches_tracked":
                raise SystemExit(f"unexpected int64 tensor {key}")
            sd[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if dtype != "float32":
            raise SystemExit(f"unexpected dtype {dtype} for {key}")
        if key.endswith(".conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            bound = CONV_GAIN * math.sqrt(6.0 / fan_in)
            sd[key] = uniform(gen, shape, -bound, bound)
        elif key.endswith(".bn.weight") or key.endswith(".bn.running_var"):
            sd[key] = uniform(gen, shape, 0.5, 1.5)
        elif key.endswith(".bn.bias") or key.endswith(".bn.running_mean"):
            sd[key] = uniform(gen, shape, -0.1, 0.1)
        elif key in ("fc.weight", "fc.bias"):
            bound = 1.0 / math.sqrt(2048.0)
            sd[key] = uniform(gen, shape, -bound, bound)
        else:
            raise SystemExit(f"no recipe for tensor {key}")
    # nn.Module.state_dict() attaches per-module versions; keep them so the file is shaped like
    # the real one (they are pickled as the OrderedDict's attribute).
    sd._metadata = OrderedDict((name, {"version": version}) for name, version in spec["metadata"])
    return sd


def content_sha256(sd):
    """Digest of the tensors themselves (see module docstring), independent of file layout."""
    digest = hashlib.sha256()
    for key, tensor in sd.items():
        digest.update(f"{key}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        values = tensor.contiguous().numpy()
        digest.update(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def save_weights(spec, out):
    """Writes the random weights in the real file's (legacy) format; returns their digest."""
    sd = make_state_dict(spec)
    torch.save(sd, out, _use_new_zipfile_serialization=False)
    return content_sha256(sd)


# ---------------------------------------------------------------------------------------------
# Test images (numpy only; mirrored by the Rust test)


def hash_u32(n, c, y, x):
    """An integer hash of pixel coordinates, in uint32 arithmetic (wrapping)."""
    m = np.uint64(0xFFFFFFFF)
    h = (np.uint64(n) * np.uint64(73856093)) ^ (np.uint64(c) * np.uint64(19349663))
    h = (h ^ (y.astype(np.uint64) * np.uint64(83492791)) ^ (x.astype(np.uint64) * np.uint64(2654435761))) & m
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & m
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & m
    h ^= h >> np.uint64(16)
    return h


def pixel_values(pattern, n, c, height, width):
    """float64 H x W values in [0, 1] of channel c of image n (global index) for a pattern id.

    0: gradients (u, v, u*v); 1: paraboloid bumps centred per channel; 2: hashed noise;
    3: stripes blended with noise.
    """
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    u = x.astype(np.float64) / float(width - 1)
    v = y.astype(np.float64) / float(height - 1)
    noise = (hash_u32(n, c, y, x) >> np.uint64(8)).astype(np.float64) / 16777216.0
    if pattern == 0:
        return [u, v, u * v][c]
    if pattern == 1:
        cu, cv = [0.3, 0.5, 0.7][c], [0.6, 0.4, 0.5][c]
        du, dv = u - cu, v - cv
        return 1.0 - (du * du + dv * dv)
    if pattern == 2:
        return noise
    if pattern == 3:
        stripes = ((x // (4 + c) + y // 7) % 2).astype(np.float64)
        return 0.25 * stripes + 0.5 * noise + 0.25 * v
    raise ValueError(pattern)


def make_batch(count, height, width, first_pattern, first_index):
    images = np.zeros((count, 3, height, width), dtype=np.float32)
    for i in range(count):
        n = first_index + i
        pattern = (first_pattern + i) % 4
        for c in range(3):
            images[i, c] = pixel_values(pattern, n, c, height, width).astype(np.float32)
    return images


def sample_positions(total):
    """Flat indices sampled for the checksum: spread over the whole batch."""
    return [(k * 7919 * 104729) % total for k in range(SAMPLE_POSITIONS)]


# ---------------------------------------------------------------------------------------------
# Fixture (needs pytorch-fid)


def fid_layout():
    """State-dict layout of pytorch-fid's fid_inception_v3(), built without downloading."""
    from unittest import mock

    import pytorch_fid.inception as fi

    captured = {}

    def capture(module, state_dict, *args, **kwargs):
        captured["model"] = module

    with mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: {}), mock.patch.object(
        torch.nn.Module, "load_state_dict", capture
    ):
        fi.fid_inception_v3()
    sd = captured["model"].state_dict()
    layout = [[k, list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in sd.items()]
    metadata = []
    for name, entry in sd._metadata.items():
        if set(entry) != {"version"}:
            raise SystemExit(f"unexpected state-dict metadata {name}: {entry}")
        metadata.append([name, entry["version"]])
    return {"state_dict": layout, "metadata": metadata}


def reference_model(weights_path):
    """pytorch-fid's own InceptionV3 for FID, its weights read from `weights_path`."""
    from unittest import mock

    import pytorch_fid.inception as fi

    def from_file(*args, **kwargs):
        return torch.load(weights_path, map_location="cpu", weights_only=True)

    with mock.patch.object(fi, "load_state_dict_from_url", from_file):
        model = fi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    return model.eval()


def compact_json(obj, indent=0):
    """JSON with one element per line for lists of containers, lists of scalars on one line."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {compact_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and all(isinstance(v, (list, dict)) for v in obj):
        items = [pad + compact_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(obj, separators=(",", ":"))


def shortest_f32(value):
    """The shortest decimal that reads back as the same float32."""
    return float(np.format_float_scientific(np.float32(value), unique=True))


def write_fixtures(out):
    import pytorch_fid

    if pytorch_fid.__version__ != "0.3.0":
        raise SystemExit(f"expected pytorch-fid 0.3.0, found {pytorch_fid.__version__}")
    torch.set_num_threads(2)
    spec = fid_layout()
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "w.pth")
        digest = save_weights(spec, weights_path)
        if content_sha256(torch.load(weights_path, weights_only=True)) != digest:
            raise SystemExit("the saved weights do not read back as written")
        model = reference_model(weights_path)
        model64 = reference_model(weights_path).double()

    batches = []
    first_index = 0
    for count, height, width, first_pattern in BATCHES:
        images = make_batch(count, height, width, first_pattern, first_index)
        x = torch.from_numpy(images)
        with torch.no_grad():
            feats = model(x)[0].flatten(1).numpy()
            feats64 = model64(x.double())[0].flatten(1).numpy()
        # How far float32 rounding alone moves the features: the scale of the test's tolerance.
        f32_err = np.abs(feats - feats64).max(axis=1) / np.abs(feats64).max(axis=1)
        print(
            f"batch {count}x3x{height}x{width}: |feature| max {np.abs(feats).max(axis=1)}, "
            f"mean {feats.mean(axis=1)}, zero fraction {(feats == 0).mean(axis=1)}, "
            f"f32 vs f64 relative error {f32_err}",
            file=sys.stderr,
        )
        flat = images.reshape(-1)
        positions = sample_positions(flat.size)
        batches.append(
            {
                "shape": [count, 3, height, width],
                "first_pattern": first_pattern,
                "first_index": first_index,
                "input_sum": float(flat.astype(np.float64).sum()),
                "input_samples": [[p, float(flat[p])] for p in positions],
                "features": [[shortest_f32(v) for v in row] for row in feats],
            }
        )
        first_index += count

    fixture = OrderedDict(
        [
            ("about", "made by tools/make_inception_fixtures.py fixtures; random weights, not the real FID weights"),
            ("torch_version", torch.__version__),
            ("pytorch_fid_version", pytorch_fid.__version__),
            ("seed", SEED),
            ("weights_content_sha256", digest),
            ("batches", batches),
            ("state_dict", spec["state_dict"]),
            ("metadata", spec["metadata"]),
        ]
    )
    Path(out).write_text(compact_json(fixture) + "\n")
    print(f"wrote {out} ({Path(out).stat().st_size} bytes), weights content sha256 {digest}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    weights = sub.add_parser("weights", help="write the random weights (torch only)")
    weights.add_argument("out")
    weights.add_argument("--spec", default=str(FIXTURE))
    fixtures = sub.add_parser("fixtures", help="write the fixture JSON (needs pytorch-fid)")
    fixtures.add_argument("--out", default=str(FIXTURE))
    args = parser.parse_args()
    if args.mode == "weights":
        spec = json.loads(Path(args.spec).read_text())
        print(f"content-sha256 {save_weights(spec, args.out)}")
    else:
        write_fixtures(args.out)


if __name__ == "__main__":
    main()
