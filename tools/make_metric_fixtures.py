#!/usr/bin/env python
"""Reference numbers for difforge-eval's feature-distribution metrics.

Writes crates/difforge-eval/tests/fixtures/metrics.json, which
crates/difforge-eval/tests/metrics_parity.rs checks the Rust metrics against:

- Frechet distance from pytorch-fid (`calculate_frechet_distance`) and from torch-fidelity
  (`fid_statistics_to_metric`), both given float64 mean and covariance (ddof=1) of the float32
  features;
- KID from torch-fidelity (`kid_features_to_metric`) and torchmetrics (`poly_mmd`);
- precision, recall, density and coverage from prdc (`compute_prdc`).

Run from the repository root with the project's Python environment:

    source env.sh && $PYTHON tools/make_metric_fixtures.py

Deterministic: every feature set comes from its own numpy RandomState seed. Feature values are
rounded to multiples of 1/64, which float32, float64 and short JSON decimals all hold exactly, so
the Rust test reads the very float32 values the references saw. On that grid every squared
distance is an exact binary fraction in float64 (and in float32 at these sizes), so prdc's strict
`<` comparisons and the Rust ones see the same numbers, ties included; the script checks this
by recomputing the prdc counts exactly with integers before it writes anything.

Why the KID references are fed float64 features: torch-fidelity converts its feature tensor to
numpy as it is, so float32 features give a float32 kernel matrix and float32 sums, which carry
relative errors up to ~5e-6 on these MMD^2 values (a difference of large kernel sums). The Rust
metric computes in float64; the float32-pipeline value is recorded as well, for information only.
Likewise torch-fidelity's own `fid_features_to_statistics` keeps the mean in float32 (numpy.mean
of float32), so its FD on float32 features is recorded separately from the float64 references.

KID subsets: torch-fidelity draws each subset with `RandomState(rng_seed).choice(n, size,
replace=False)`, first set 1 then set 2, subset after subset. With one subset as large as both
sets, the draw is a permutation and MMD^2 does not depend on it; otherwise the fixture records
the drawn indices so the Rust test can evaluate exactly those subsets.
"""

from __future__ import annotations

import contextlib
import io
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

import prdc
import pytorch_fid.fid_score as pytorch_fid_score
import torch_fidelity.metric_fid as tf_fid
import torch_fidelity.metric_kid as tf_kid
import torchmetrics.image.kid as tm_kid

OUT = Path(__file__).resolve().parent.parent / "crates/difforge-eval/tests/fixtures/metrics.json"
GRID = 64  # values are multiples of 1/GRID
DIM = 32
TF_SEED = 2020  # torch-fidelity's default rng_seed


def quantise(x: np.ndarray) -> np.ndarray:
    return (np.round(x * GRID) / GRID).astype(np.float32)


def make_sets() -> dict[str, np.ndarray]:
    sets = {}
    rs = np.random.RandomState(1)
    sets["real"] = quantise(rs.standard_normal((240, DIM)))
    rs = np.random.RandomState(2)
    # Shifted mean and a wider spread: a plainly different distribution.
    sets["fake_shift"] = quantise(0.4 + 1.25 * rs.standard_normal((200, DIM)))
    # Correlated Gaussians: features = z @ A with singular values spanning ~2.5 decades, so the
    # covariance has a condition number around 1e5 and S1 S2 is far from symmetric.
    rs = np.random.RandomState(3)
    q, _ = np.linalg.qr(rs.standard_normal((DIM, DIM)))
    scales = np.logspace(0.5, -2.0, DIM)
    a = (q * scales) @ q.T
    sets["real_corr"] = quantise(rs.standard_normal((240, DIM)) @ a)
    # The same principal axes with a flatter spectrum and a small shift: overlapping manifolds.
    rs = np.random.RandomState(4)
    b = (q * np.logspace(0.4, -1.5, DIM)) @ q.T
    sets["fake_corr"] = quantise(0.1 + rs.standard_normal((240, DIM)) @ b)
    # Close to "real": a small shift and scale, so every metric lands mid-range.
    rs = np.random.RandomState(5)
    sets["fake_near"] = quantise(0.1 + 1.05 * rs.standard_normal((200, DIM)))
    return sets


def stats64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = x.astype(np.float64)
    return x64.mean(axis=0), np.cov(x64, rowvar=False)


def frechet_case(sets, real: str, fake: str) -> dict:
    mu1, s1 = stats64(sets[real])
    mu2, s2 = stats64(sets[fake])
    fd_pytorch_fid = float(pytorch_fid_score.calculate_frechet_distance(mu1, s1, mu2, s2))
    fd_tf = tf_fid.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)[
        tf_fid.KEY_METRIC_FID
    ]
    # torch-fidelity's own statistics from float32 features: its mean stays float32.
    st1 = tf_fid.fid_features_to_statistics(torch.from_numpy(sets[real]))
    st2 = tf_fid.fid_features_to_statistics(torch.from_numpy(sets[fake]))
    fd_tf32 = tf_fid.fid_statistics_to_metric(st1, st2, False)[tf_fid.KEY_METRIC_FID]
    return {
        "real": real,
        "fake": fake,
        "pytorch_fid": fd_pytorch_fid,
        "torch_fidelity": float(fd_tf),
        "torch_fidelity_float32_statistics": float(fd_tf32),
    }


def numpy_draws(n1: int, n2: int, subsets: int, size: int, seed: int) -> list[dict]:
    # The same calls, in the same order, as torch_fidelity.metric_kid.kid_features_to_metric.
    rng = np.random.RandomState(seed)
    draws = []
    for _ in range(subsets):
        i1 = rng.choice(n1, size, replace=False)
        i2 = rng.choice(n2, size, replace=False)
        draws.append({"real": i1.tolist(), "fake": i2.tolist()})
    return draws


def kid_case(sets, real: str, fake: str, subsets: int, size: int, degree=3, gamma=None, coef0=1) -> dict:
    x, y = sets[real], sets[fake]
    kw = dict(
        kid_subsets=subsets,
        kid_subset_size=size,
        kid_kernel="poly",
        kid_kernel_poly_degree=degree,
        kid_kernel_poly_gamma=gamma,
        kid_kernel_poly_coef0=coef0,
        rng_seed=TF_SEED,
        verbose=False,
    )
    x64 = torch.from_numpy(x.astype(np.float64))
    y64 = torch.from_numpy(y.astype(np.float64))
    ref = tf_kid.kid_features_to_metric(x64, y64, **kw)
    ref32 = tf_kid.kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), **kw)
    case = {
        "real": real,
        "fake": fake,
        "subsets": subsets,
        "subset_size": size,
        "degree": degree,
        "gamma": gamma,
        "coef0": coef0,
        "torch_fidelity": {"mean": ref[tf_kid.KEY_METRIC_KID_MEAN], "std": ref[tf_kid.KEY_METRIC_KID_STD]},
        "torch_fidelity_float32": {
            "mean": ref32[tf_kid.KEY_METRIC_KID_MEAN],
            "std": ref32[tf_kid.KEY_METRIC_KID_STD],
        },
    }
    whole = subsets == 1 and size == len(x) == len(y)
    if not whole:
        draws = numpy_draws(len(x), len(y), subsets, size, TF_SEED)
        # Check that the recorded draws are the ones torch-fidelity used.
        mmds = [
            tf_kid.kernel_mmd(
                x.astype(np.float64)[d["real"]], y.astype(np.float64)[d["fake"]], **kw
            )
            for d in draws
        ]
        assert float(np.mean(mmds)) == case["torch_fidelity"]["mean"], "draw replay differs from torch-fidelity"
        case["draws"] = draws
        case["mmd2_per_subset"] = [float(m) for m in mmds]
    else:
        g = None if gamma is None else float(gamma)
        tm = tm_kid.poly_mmd(x64, y64, degree=degree, gamma=g, coef=float(coef0))
        case["torchmetrics"] = {"mean": float(tm), "std": 0.0}
    return case


def exact_prdc(x: np.ndarray, y: np.ndarray, k: int) -> dict:
    """prdc's definitions on exact integer squared distances (units of 1/GRID^2)."""
    xi = np.round(x.astype(np.float64) * GRID).astype(np.int64)
    yi = np.round(y.astype(np.float64) * GRID).astype(np.int64)

    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    rr = np.sort(sq(xi, xi), axis=1)[:, k]  # (k+1)-th smallest, the zero self-distance included
    ff = np.sort(sq(yi, yi), axis=1)[:, k]
    rf = sq(xi, yi)
    inside = rf < rr[:, None]
    return {
        "precision_count": int(inside.any(axis=0).sum()),
        "recall_count": int((rf < ff[None, :]).any(axis=1).sum()),
        "density_count": int(inside.sum()),
        "coverage_count": int((rf.min(axis=1) < rr).sum()),
        "boundary_ties": int((rf == rr[:, None]).sum() + (rf == ff[None, :]).sum()),
    }


def prdc_case(sets, real: str, fake: str, k: int) -> dict:
    x, y = sets[real], sets[fake]
    ref = prdc.compute_prdc(real_features=x, fake_features=y, nearest_k=k)
    ex = exact_prdc(x, y, k)
    n_real, n_fake = len(x), len(y)
    # The fixture is only useful if prdc's float32 distances decided every comparison the way
    # exact arithmetic does; otherwise the Rust (float64) answer could legitimately differ.
    assert ref["precision"] == ex["precision_count"] / n_fake, (ref, ex)
    assert ref["recall"] == ex["recall_count"] / n_real, (ref, ex)
    assert ref["coverage"] == ex["coverage_count"] / n_real, (ref, ex)
    assert abs(ref["density"] - ex["density_count"] / (k * n_fake)) < 1e-12, (ref, ex)
    return {
        "real": real,
        "fake": fake,
        "nearest_k": k,
        "precision": float(ref["precision"]),
        "recall": float(ref["recall"]),
        "density": float(ref["density"]),
        "coverage": float(ref["coverage"]),
        **ex,
    }


def set_json(x: np.ndarray) -> dict:
    # Multiples of 1/64 print exactly, in at most 6 decimals, as Python floats.
    vals = [float(v) for v in x.reshape(-1)]
    for v in vals:
        assert v * GRID == round(v * GRID)
    return {"rows": int(x.shape[0]), "cols": int(x.shape[1]), "data": vals}


def main() -> None:
    sets = make_sets()
    # prdc prints the set sizes on every call; keep stdout for this script's summary.
    with contextlib.redirect_stdout(io.StringIO()):
        frechet = [
            frechet_case(sets, "real", "fake_shift"),
            frechet_case(sets, "real_corr", "fake_corr"),
            frechet_case(sets, "real", "real_corr"),
            frechet_case(sets, "real", "fake_near"),
        ]
        kid = [
            kid_case(sets, "real_corr", "fake_corr", 1, 240),
            kid_case(sets, "real", "real_corr", 1, 240, degree=2, gamma=0.05, coef0=0.5),
            kid_case(sets, "real", "fake_shift", 1, 200),
            kid_case(sets, "real", "fake_shift", 5, 100),
            kid_case(sets, "real", "fake_near", 4, 150),
        ]
        manifold = [
            prdc_case(sets, "real", "fake_shift", 3),
            prdc_case(sets, "real", "fake_near", 3),
            prdc_case(sets, "fake_shift", "real", 3),
            prdc_case(sets, "real_corr", "fake_corr", 3),
            prdc_case(sets, "real_corr", "fake_corr", 5),
        ]
    doc = {
        "generator": "tools/make_metric_fixtures.py",
        "versions": {
            p: version(p)
            for p in ["numpy", "scipy", "scikit-learn", "torch", "pytorch-fid", "torch-fidelity", "torchmetrics", "prdc"]
        },
        "torch_fidelity_rng_seed": TF_SEED,
        "notes": (
            "Feature values are multiples of 1/64 (exact in f32). FD and KID references are fed float64 "
            "statistics/features; the *_float32* fields are what each package gives on float32 input, "
            "for information. prdc counts were checked against exact integer arithmetic."
        ),
        "sets": {name: set_json(x) for name, x in sets.items()},
        "frechet": frechet,
        "kid": kid,
        "prdc": manifold,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, separators=(",", ":"))
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text) / 1024:.0f} KiB)")
    for c in frechet:
        print("FD", c["real"], c["fake"], c["pytorch_fid"], c["torch_fidelity"], c["torch_fidelity_float32_statistics"])
    for c in kid:
        print("KID", c["real"], c["fake"], c["subsets"], c["subset_size"], c["torch_fidelity"], c["torch_fidelity_float32"], c.get("torchmetrics"))
    for c in manifold:
        print("PRDC", c["real"], c["fake"], c["nearest_k"], c["precision"], c["recall"], c["density"], c["coverage"], "ties", c["boundary_ties"])


if __name__ == "__main__":
    main()
