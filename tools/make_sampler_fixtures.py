"""Step-by-step references from diffusers' Euler, Euler ancestral, PNDM and DPM-Solver++
multistep schedulers with Stable Diffusion's settings, for crates/difforge-diffusion/tests/sampler_parity.rs.

Each case runs its steps (10 but for two PNDM cases) on a (1, 4, 8, 8) latent with fixed random
model outputs and records, per step, the scheduler's input sample, the model output, the noise it
drew (Euler ancestral) and its output, all in diffusers' own space (sigma space for the Euler
schedulers: x0 + sigma * eps; PNDM's and DPM-Solver's is difforge's x_t).

Run with the SD tools environment (diffusers 0.35.2):
    PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_sampler_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file

import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_ancestral_module
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "difforge-diffusion", "tests", "fixtures", "sd_samplers.safetensors")
SHAPE = (1, 4, 8, 8)
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
# Stable Diffusion 1.x's PNDM: PLMS without the Runge-Kutta warm-up, last step to alpha_bar[0].
PNDM = dict(skip_prk_steps=True, set_alpha_to_one=False)

# (name, class, steps, timestep_spacing, steps_offset, prediction_type, extra settings); the Rust
# test lists the same cases.
CASES = [
    ("euler_leading_eps", EulerDiscreteScheduler, 10, "leading", 1, "epsilon", {}),
    ("euler_trailing_eps", EulerDiscreteScheduler, 10, "trailing", 0, "epsilon", {}),
    ("euler_leading_v", EulerDiscreteScheduler, 10, "leading", 1, "v_prediction", {}),
    ("euler_trailing_v_zsnr", EulerDiscreteScheduler, 10, "trailing", 0, "v_prediction", dict(rescale_betas_zero_snr=True)),
    ("euler_a_leading_eps", EulerAncestralDiscreteScheduler, 10, "leading", 1, "epsilon", {}),
    ("euler_a_trailing_eps", EulerAncestralDiscreteScheduler, 10, "trailing", 0, "epsilon", {}),
    ("euler_a_leading_v", EulerAncestralDiscreteScheduler, 10, "leading", 1, "v_prediction", {}),
    ("pndm_leading_eps", PNDMScheduler, 10, "leading", 1, "epsilon", PNDM),
    # 1000 / 7 is no integer: PNDM steps to t - 1000 // 7, not to the next timestep.
    ("pndm_trailing7_eps", PNDMScheduler, 7, "trailing", 0, "epsilon", PNDM),
    ("pndm_linspace2_eps", PNDMScheduler, 2, "linspace", 0, "epsilon", PNDM),
    # DPM-Solver++(2M) with diffusers' defaults; 25 steps is past its short-schedule threshold (15).
    ("dpm_leading_eps", DPMSolverMultistepScheduler, 10, "leading", 1, "epsilon", {}),
    ("dpm_leading25_eps", DPMSolverMultistepScheduler, 25, "leading", 1, "epsilon", {}),
    ("dpm_linspace_v", DPMSolverMultistepScheduler, 10, "linspace", 0, "v_prediction", {}),
    ("dpm_trailing_v_zsnr", DPMSolverMultistepScheduler, 10, "trailing", 0, "v_prediction", dict(rescale_betas_zero_snr=True)),
    ("dpm_karras_eps", DPMSolverMultistepScheduler, 20, "leading", 1, "epsilon", dict(use_karras_sigmas=True)),
    ("dpm_karras_v", DPMSolverMultistepScheduler, 10, "leading", 1, "v_prediction", dict(use_karras_sigmas=True)),
]

# Every noise tensor the ancestral scheduler draws, in order.
drawn = []
_randn_tensor = euler_ancestral_module.randn_tensor


def recording_randn_tensor(*args, **kwargs):
    noise = _randn_tensor(*args, **kwargs)
    drawn.append(noise.clone())
    return noise


euler_ancestral_module.randn_tensor = recording_randn_tensor


def run(name, cls, steps, spacing, offset, prediction, extra, seed):
    scheduler = cls(**SD, timestep_spacing=spacing, steps_offset=offset, prediction_type=prediction, **extra)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen) * scheduler.init_noise_sigma
    samples, outputs, prevs = [], [], []
    drawn.clear()
    step_gen = torch.Generator().manual_seed(seed + 1000)
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)
        out = torch.randn(SHAPE, generator=gen)
        kwargs = {} if cls is PNDMScheduler else dict(generator=step_gen)
        prev = scheduler.step(out, t, x, **kwargs).prev_sample
        samples.append(x)
        outputs.append(out)
        prevs.append(prev)
        x = prev
    refs = {
        f"{name}.timesteps": scheduler.timesteps.to(torch.int64),
        f"{name}.init_noise_sigma": torch.tensor([float(scheduler.init_noise_sigma)]),
        f"{name}.samples": torch.stack(samples),
        f"{name}.model_outputs": torch.stack(outputs),
        f"{name}.prev_samples": torch.stack(prevs),
    }
    assert torch.equal(scheduler.timesteps, scheduler.timesteps.round()), "integer timesteps only"
    if hasattr(scheduler, "sigmas"):
        refs[f"{name}.sigmas"] = scheduler.sigmas.to(torch.float32)
    if drawn:
        assert len(drawn) == steps
        refs[f"{name}.noise"] = torch.stack(drawn)
    return refs


def main():
    refs = {}
    for seed, case in enumerate(CASES):
        refs.update(run(*case, seed=seed))
    refs = {k: v.contiguous() for k, v in refs.items()}
    save_file(refs, OUT, metadata={"diffusers": diffusers.__version__})
    print(f"wrote {len(refs)} tensors to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
