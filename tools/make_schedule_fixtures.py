"""Reference betas and alphas_cumprod from diffusers' DDPMScheduler, for the schedule parity test.

Run with a Python that has torch and diffusers:
    python tools/make_schedule_fixtures.py > crates/difforge-diffusion/tests/fixtures/schedules.json
"""
import json

import diffusers
from diffusers import DDPMScheduler

out = {"diffusers": diffusers.__version__, "schedules": []}
for name, diffusers_name in [("linear", "linear"), ("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")]:
    for steps in (1000, 50):
        s = DDPMScheduler(num_train_timesteps=steps, beta_schedule=diffusers_name, beta_start=1e-4, beta_end=0.02)
        out["schedules"].append({
            "kind": name,
            "timesteps": steps,
            "beta_start": 1e-4,
            "beta_end": 0.02,
            "betas": [float(b) for b in s.betas],
            "alphas_cumprod": [float(a) for a in s.alphas_cumprod],
        })
print(json.dumps(out))
