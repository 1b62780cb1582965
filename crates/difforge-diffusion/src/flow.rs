//! Flow matching (rectified flow), as Stable Diffusion 3 / 3.5 train and sample it: the forward
//! process x_sigma = (1 - sigma) x0 + sigma eps, whose velocity eps - x0 the model predicts;
//! diffusers' `FlowMatchEulerDiscreteScheduler` schedules (static or resolution-dependent shift,
//! `shift_terminal`) to the float32 values it computes; the training timestep densities and loss
//! weightings of diffusers' `training_utils` (`compute_density_for_timestep_sampling`,
//! `compute_loss_weighting_for_sd3`); and the Euler step.

use tch::Tensor;

/// The shift map sigma -> s sigma / (1 + (s - 1) sigma): s > 1 spends more steps at high noise
/// (SD3 uses 3.0).
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// How the sampling sigmas are shifted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shift {
    /// [`shift_sigma`] with this factor (`shift`, `use_dynamic_shifting = false`).
    Static(f64),
    /// diffusers' exponential time shift by `mu` (`use_dynamic_shifting = true`; the pipeline
    /// derives mu from the image's token count between `base_shift` and `max_shift`).
    Dynamic { mu: f64 },
}

/// `FlowMatchEulerDiscreteScheduler`'s settings (what a `scheduler_config.json` holds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowMatchConfig {
    pub train_timesteps: usize,
    /// The static shift (also applied to the training schedule unless shifting is dynamic).
    pub shift: f64,
    pub dynamic_shifting: bool,
    /// Stretch the sampling schedule so that its last sigma before 0 is this.
    pub shift_terminal: Option<f64>,
}

impl Default for FlowMatchConfig {
    fn default() -> Self {
        FlowMatchConfig { train_timesteps: 1000, shift: 1.0, dynamic_shifting: false, shift_terminal: None }
    }
}

/// A sampling schedule: `sigmas` has one more entry than `timesteps` (the final 0).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f32>,
}

/// numpy's `linspace(start, stop, n)` (endpoint included), to its float64 values.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

impl FlowMatchConfig {
    /// The training schedule, descending: sigma_i = (N - i) / N for i in 0..N, shifted (unless
    /// shifting is dynamic), in float32 as diffusers computes it. A training step draws an index
    /// into it.
    pub fn train_sigmas(&self) -> Vec<f32> {
        let n = self.train_timesteps;
        (0..n)
            .map(|i| {
                let sigma = (n - i) as f32 / n as f32;
                if self.dynamic_shifting {
                    sigma
                } else {
                    let s = self.shift as f32;
                    s * sigma / (1.0 + (s - 1.0) * sigma)
                }
            })
            .collect()
    }

    /// The schedule of `steps` sampling steps, as `set_timesteps` makes it: evenly spaced
    /// between the training schedule's first and last timesteps, shifted again (diffusers shifts
    /// the already-shifted ends' span), stretched to `shift_terminal`, then float32. `mu` is
    /// needed with dynamic shifting.
    pub fn sampling(&self, steps: usize, mu: Option<f64>) -> Result<FlowSchedule, String> {
        if steps == 0 {
            return Err("at least one sampling step".into());
        }
        let train = self.train_sigmas();
        let n = self.train_timesteps as f64;
        let (first, last) = (f64::from(train[0]), f64::from(train[train.len() - 1]));
        let unshifted: Vec<f64> = linspace(first * n, last * n, steps).into_iter().map(|t| t / n).collect();
        let mut sigmas: Vec<f64> = match (self.dynamic_shifting, mu) {
            (false, _) => unshifted.iter().map(|&s| shift_sigma(s, self.shift)).collect(),
            (true, Some(mu)) => unshifted.iter().map(|&s| mu.exp() / (mu.exp() + (1.0 / s - 1.0))).collect(),
            (true, None) => return Err("dynamic shifting needs mu (from the image's size)".into()),
        };
        if let Some(terminal) = self.shift_terminal {
            let scale = (1.0 - sigmas[steps - 1]) / (1.0 - terminal);
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("shift_terminal {terminal} cannot stretch a {steps}-step schedule"));
            }
            sigmas = sigmas.iter().map(|s| 1.0 - (1.0 - s) / scale).collect();
        }
        let sigmas32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        let timesteps = sigmas32.iter().map(|&s| s * self.train_timesteps as f32).collect();
        Ok(FlowSchedule { sigmas: sigmas32.into_iter().chain([0.0]).collect(), timesteps })
    }
}

/// The training index of a uniform draw `u` in [0, 1): diffusers' `(u * N).long()`.
pub fn train_index(u: f64, train_timesteps: usize) -> usize {
    ((u * train_timesteps as f64) as usize).min(train_timesteps - 1)
}

/// diffusers' `mode` density: a uniform `u` bent towards the middle (scale 1.29 in SD3's paper).
pub fn mode_density(u: f64, scale: f64) -> f64 {
    let c = (std::f64::consts::PI * u / 2.0).cos();
    1.0 - u - scale * (c * c - 1.0 + u)
}

/// The logit-normal density's draw: sigmoid of a normal draw `z` with `mean` and `std`.
pub fn logit_normal(z: f64, mean: f64, std: f64) -> f64 {
    1.0 / (1.0 + (-(mean + std * z)).exp())
}

/// How the loss of a step at `sigma` is weighted (`compute_loss_weighting_for_sd3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowWeighting {
    None,
    /// 1 / sigma^2.
    SigmaSqrt,
    /// 2 / (pi (1 - 2 sigma + 2 sigma^2)).
    Cosmap,
}

impl FlowWeighting {
    pub fn weight(self, sigma: f64) -> f64 {
        match self {
            FlowWeighting::None => 1.0,
            FlowWeighting::SigmaSqrt => sigma.powi(-2),
            FlowWeighting::Cosmap => 2.0 / (std::f64::consts::PI * (1.0 - 2.0 * sigma + 2.0 * sigma * sigma)),
        }
    }
}

/// x_sigma = (1 - sigma) x0 + sigma eps, and the velocity target eps - x0.
pub fn noised(x0: &Tensor, eps: &Tensor, sigma: &Tensor) -> (Tensor, Tensor) {
    let x_t = x0 * (-sigma + 1.0) + eps * sigma;
    (x_t, eps - x0)
}

/// One Euler step of the flow from `sigma` to `sigma_next` with the predicted velocity `v`, in
/// float32 as diffusers' scheduler takes it: x + (sigma_next - sigma) v.
pub fn euler_step(x: &Tensor, v: &Tensor, sigma: f32, sigma_next: f32) -> Tensor {
    let dt = f64::from(sigma_next - sigma);
    x.to_kind(tch::Kind::Float) + v.to_kind(tch::Kind::Float) * dt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_exactly_where_numpy_does() {
        assert_eq!(linspace(1000.0, 1.0, 4), vec![1000.0, 667.0, 334.0, 1.0]);
        assert_eq!(linspace(5.0, 1.0, 1), vec![5.0]);
    }

    #[test]
    fn shift_and_weightings_at_known_points() {
        assert_eq!(shift_sigma(0.5, 3.0), 0.75);
        assert_eq!(shift_sigma(1.0, 3.0), 1.0);
        assert_eq!(FlowWeighting::SigmaSqrt.weight(0.5), 4.0);
        assert!((FlowWeighting::Cosmap.weight(0.5) - 4.0 / std::f64::consts::PI).abs() < 1e-12);
        assert_eq!(mode_density(0.0, 1.29), 1.0);
        assert!((mode_density(1.0, 0.0)).abs() < 1e-12);
        assert_eq!(logit_normal(0.0, 0.0, 1.0), 0.5);
        assert_eq!(train_index(0.9999999, 1000), 999);
    }

    #[test]
    fn the_velocity_carries_x0_to_eps() {
        let (x0, eps) = (Tensor::from_slice(&[1.0f32, -2.0]), Tensor::from_slice(&[0.5f32, 0.5]));
        let (x_t, v) = noised(&x0, &eps, &Tensor::from(0.25f32));
        // Moving the rest of the way along v from sigma 0.25 lands on eps.
        let end = euler_step(&x_t, &v, 0.25, 1.0);
        assert!(end.allclose(&eps, 1e-6, 1e-6, false));
    }
}
