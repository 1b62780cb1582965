//! Which GPU each process of a data-parallel run takes on its node.
//!
//! The ranks of a node see either all of its GPUs (torchrun, `difforge launch`: rank r takes
//! GPU r) or a GPU of their own each (SLURM's `--gpus-per-task=1` binds one GPU to each task,
//! which the task then sees as its only one, `cuda:0`, while it still counts every task of the
//! node in its local world). The number of GPUs a process sees cannot tell the second case from
//! several ranks crowded onto one GPU, which NCCL refuses; so the launcher's word decides it
//! (`SLURM_GPUS_PER_TASK`), or the user's (`train.device = "cuda:0"` with one visible GPU, as
//! for `srun --gpu-bind`), and without either one visible GPU for several NCCL ranks is an error
//! that says what to change. Gloo moves tensors through the host and lets ranks share a GPU. An
//! explicit `cuda:N` where each NCCL rank sees several GPUs would put them all on one.

use difforge_core::ConfigError;
use difforge_native::dist::Backend;

/// What decides a rank's GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuPlacement {
    /// The CUDA devices this process sees (after CUDA_VISIBLE_DEVICES and the launcher's binding).
    pub device_count: usize,
    /// The processes of the run on this node, and this one's place among them.
    pub local_size: usize,
    pub local_rank: usize,
    /// The index of an explicit `cuda:N` in the config; None for `cuda` or `auto`.
    pub requested: Option<usize>,
    pub backend: Backend,
    /// The launcher bound GPUs of its own to each task (SLURM's `--gpus-per-task`): the GPUs this
    /// process sees are no other rank's.
    pub gpus_per_task: bool,
}

/// The CUDA device index of this rank, or an error under `train.device` (whose value, as
/// written, is `device`) saying what would work.
pub fn rank_gpu(p: &GpuPlacement, device: &str) -> Result<usize, ConfigError> {
    let refuse = |expected: String| Err(ConfigError::new("train.device", format!("\"{device}\""), expected));
    if p.device_count == 0 {
        return refuse("a CUDA device: this process sees none".into());
    }
    // The ranks of this node see the same several GPUs: one named GPU would be all of theirs.
    let shared = p.local_size > 1 && p.device_count > 1 && !p.gpus_per_task;
    match p.requested {
        Some(n) if n >= p.device_count => refuse(format!("a device that exists: this process sees {} CUDA device(s)", p.device_count)),
        Some(n) if shared && p.backend == Backend::Nccl => refuse(format!(
            "\"cuda\" (each rank takes the GPU of its local rank): cuda:{n} would put all {} NCCL ranks of this node on one GPU, which NCCL refuses",
            p.local_size
        )),
        Some(n) => Ok(n),
        None if p.local_size <= p.device_count => Ok(p.local_rank),
        None if p.gpus_per_task => Ok(0),
        None if p.device_count == 1 && p.backend == Backend::Gloo => Ok(0),
        None if p.device_count == 1 => refuse(format!(
            "one GPU per NCCL rank: the {} ranks of this node each see one GPU, the same one unless the launcher bound a GPU to each task; if it did (srun --gpu-bind), say so with train.device = \"cuda:0\", otherwise run one rank per GPU (srun --gpus-per-task=1) or set train.dist_backend = \"gloo\"",
            p.local_size
        )),
        None => refuse(format!(
            "one GPU per rank: local rank {} of {} needs GPU {}, this process sees {}; run at most {} ranks on this node or give each task its own GPU (srun --gpus-per-task=1)",
            p.local_rank, p.local_size, p.local_rank, p.device_count, p.device_count
        )),
    }
}

/// Whether the launcher bound GPUs to each task: SLURM sets SLURM_GPUS_PER_TASK for
/// `--gpus-per-task` (and then gives each task only its own GPUs).
pub fn gpus_per_task_from_env(get: &dyn Fn(&str) -> Option<String>) -> bool {
    get("SLURM_GPUS_PER_TASK").is_some_and(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(
        device_count: usize,
        local_size: usize,
        local_rank: usize,
        requested: Option<usize>,
        backend: Backend,
        gpus_per_task: bool,
    ) -> Result<usize, String> {
        let p = GpuPlacement { device_count, local_size, local_rank, requested, backend, gpus_per_task };
        rank_gpu(&p, "cuda").map_err(|e| e.to_string())
    }

    #[test]
    fn each_rank_takes_its_gpu_where_it_can() {
        use Backend::{Gloo, Nccl};
        // (GPUs seen, local ranks, local rank, cuda:N, backend, GPUs bound per task) -> GPU
        let cases = [
            ((4, 4, 3, None, Nccl, false), 3), // torchrun on a 4-GPU node
            ((8, 4, 2, None, Nccl, false), 2), // more GPUs than ranks
            ((1, 1, 0, None, Nccl, false), 0), // one rank per node
            ((1, 4, 3, None, Nccl, true), 0),  // srun --gpus-per-task=1: each task sees its own
            ((2, 4, 3, None, Nccl, true), 0),  // --gpus-per-task=2
            ((1, 4, 3, None, Gloo, false), 0), // Gloo may share the one GPU
            ((4, 1, 0, Some(2), Nccl, false), 2),
            ((4, 4, 1, Some(2), Gloo, false), 2),
            ((1, 4, 1, Some(0), Nccl, true), 0),
            ((1, 4, 1, Some(0), Nccl, false), 0), // the user says each task has its own GPU
        ];
        for ((count, size, rank, req, backend, per_task), want) in cases {
            assert_eq!(place(count, size, rank, req, backend, per_task), Ok(want), "{:?}", (count, size, rank, req, backend, per_task));
        }
    }

    #[test]
    fn crowded_or_missing_gpus_are_named_errors() {
        use Backend::{Gloo, Nccl};
        let cases = [
            ((1, 4, 1, None, Nccl, false), "say so with train.device = \"cuda:0\""),
            ((2, 4, 3, None, Nccl, false), "local rank 3 of 4 needs GPU 3, this process sees 2"),
            ((2, 4, 3, None, Gloo, false), "local rank 3 of 4 needs GPU 3"),
            ((4, 4, 1, Some(1), Nccl, false), "cuda:1 would put all 4 NCCL ranks of this node on one GPU"),
            ((4, 2, 1, Some(4), Gloo, false), "this process sees 4 CUDA device(s)"),
            ((0, 2, 0, None, Nccl, false), "this process sees none"),
        ];
        for ((count, size, rank, req, backend, per_task), want) in cases {
            let err = place(count, size, rank, req, backend, per_task).unwrap_err();
            assert!(err.starts_with("train.device = \"cuda\": expected") && err.contains(want), "{err}");
        }
    }

    #[test]
    fn slurm_says_when_it_binds_gpus_to_tasks() {
        assert!(gpus_per_task_from_env(&|v| (v == "SLURM_GPUS_PER_TASK").then(|| "1".to_string())));
        assert!(!gpus_per_task_from_env(&|v| (v == "SLURM_GPUS_PER_TASK").then(|| " ".to_string())));
        assert!(!gpus_per_task_from_env(&|_| None));
    }
}
