"""Reference sigmas and timesteps from diffusers' FlowMatchEulerDiscreteScheduler (the SD3 / 3.5
scheduler), for the flow-matching parity test: the training schedule a scheduler is built with,
and the sampling schedule of set_timesteps, with a static shift, with resolution-dependent
("dynamic") shifting and with shift_terminal; plus one Euler step.

Run with the reference packages (tools/setup_sd_tools.sh):
    PYTHONPATH=~/.cache/difforge/sd-tools python tools/make_flow_match_fixtures.py \
        > crates/difforge-diffusion/tests/fixtures/flow_match.json
"""
import json

import diffusers
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

out = {"diffusers": diffusers.__version__, "cases": []}
configs = [
    {"num_train_timesteps": 1000, "shift": 1.0},
    {"num_train_timesteps": 1000, "shift": 3.0},  # SD3 and 3.5's scheduler_config.json
    {"num_train_timesteps": 1000, "shift": 3.0, "shift_terminal": 0.02},
    {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    {"num_train_timesteps": 50, "shift": 2.5},
]
for config in configs:
    # One step with shift_terminal divides by zero in diffusers (its sigmas are NaN): not a case.
    for steps in (4, 28) if "shift_terminal" in config else (1, 4, 28):
        s = FlowMatchEulerDiscreteScheduler(**config)
        # The training schedule, once per config.
        train_sigmas = [float(v) for v in s.sigmas] if steps == 4 else None
        mu = 0.8 if config.get("use_dynamic_shifting") else None
        s.set_timesteps(steps, mu=mu)
        out["cases"].append({
            "config": config,
            "steps": steps,
            "mu": mu,
            "train_sigmas": train_sigmas,
            "sigmas": [float(v) for v in s.sigmas],
            "timesteps": [float(v) for v in s.timesteps],
        })

# One Euler step in float32: x_next = x + (sigma_next - sigma) v.
s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
s.set_timesteps(4)
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, generator=g)
v = torch.randn(2, 3, generator=g)
step = s.step(v, s.timesteps[1], x, return_dict=False)  # the first call seeks the index of timesteps[1]
out["euler"] = {"shift": 3.0, "steps": 4, "index": 1, "x": x.flatten().tolist(), "v": v.flatten().tolist(), "next": step[0].flatten().tolist()}
print(json.dumps(out))
