//! Data-parallel training over PyTorch's c10d (difforge-native's process groups): every process
//! holds the whole model, trains on its share of each global batch, and the gradients are
//! averaged with one all-reduce of the flat gradient buffer before the (identical) optimiser
//! step on every rank. Parameters, moments and EMA are copied from rank 0 at the start, so the
//! ranks stay equal bit for bit: an all-reduce gives every rank the same sum.
//!
//! A rank that dies or hangs must not leave the others waiting forever: every collective has the
//! run's timeout, and when one fails the survivors look at heartbeats each rank leaves in the
//! rendezvous store to name the rank that stopped.

use crate::error::TrainError;
use crate::world::World;
use difforge_config::{DistBackend, TrainConfig};
use difforge_native::dist::{Backend, GroupOptions, ProcessGroup, ReduceOp};
use difforge_native::NativeError;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// How often each rank bumps its heartbeat counter, and how long the survivors of a failed
/// collective watch the counters before naming the ranks whose counter stood still.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
const HEARTBEAT_WATCH: Duration = Duration::from_millis(2_500);

/// Which rows of every global batch this process trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole batch (one process).
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// This shard's rows of `n` rows: equal consecutive parts when `count` divides `n` (training
    /// batches, checked when the group is joined), parts differing by one row otherwise
    /// (validation pairs).
    pub fn rows(&self, n: usize) -> Range<usize> {
        self.index * n / self.count..(self.index + 1) * n / self.count
    }
}

/// The process group of a multi-process run, with its heartbeat.
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    world: World,
    backend: Backend,
    device: Device,
    timeout: Duration,
    alive: Arc<AtomicBool>,
    /// Time spent in gradient all-reduces (nanoseconds) and their number, for the summary.
    reduce_ns: AtomicU64,
    reduces: AtomicU64,
}

/// The backend a config asks for on `device`.
pub(crate) fn backend_for(t: &TrainConfig, device: Device) -> Backend {
    match (t.dist_backend, device) {
        (DistBackend::Gloo, _) | (DistBackend::Auto, Device::Cpu) => Backend::Gloo,
        _ => Backend::Nccl,
    }
}

fn heartbeat_key(rank: usize) -> String {
    format!("difforge/heartbeat/{rank}")
}

/// The per-step batch must split evenly over the ranks (each trains on B / W rows).
pub fn check_batch(t: &TrainConfig, world: &World) -> Result<(), TrainError> {
    if world.size > 1 && !t.batch_size.is_multiple_of(world.size) {
        return Err(difforge_core::ConfigError::new(
            "train.batch_size",
            t.batch_size,
            format!("a multiple of the {} processes of this run (the batch is global: each process trains on batch_size / processes)", world.size),
        )
        .into());
    }
    Ok(())
}

impl DataParallel {
    /// Joins the run's process group (None for a single process): rank 0 hosts the rendezvous
    /// store unless torchrun's agent does.
    /// `config_hash` identifies the run's config: ranks started with different configs (or
    /// world sizes, or backends) are refused at the rendezvous.
    pub fn join(world: &World, t: &TrainConfig, config_hash: &str, device: Device) -> Result<Option<DataParallel>, TrainError> {
        if !world.is_distributed() {
            return Ok(None);
        }
        check_batch(t, world)?;
        let backend = backend_for(t, device);
        if backend == Backend::Nccl && !device.is_cuda() {
            return Err(difforge_core::ConfigError::new("train.dist_backend", "\"nccl\"", "gloo (or auto) on the CPU: NCCL reduces CUDA tensors only").into());
        }
        let loopback = world.master_addr == "localhost" || world.master_addr.starts_with("127.");
        let options = GroupOptions {
            backend,
            store_host: world.master_addr.clone(),
            store_port: world.master_port,
            rank: world.rank,
            world: world.size,
            store_server: world.rank == 0 && !world.agent_store,
            store_prefix: if world.agent_store { format!("/worker/attempt_{}", world.restart_count) } else { String::new() },
            gloo_interface: std::env::var("GLOO_SOCKET_IFNAME").ok().and_then(|v| v.split(',').next().map(str::to_string)).filter(|v| !v.is_empty()),
            gloo_host: loopback.then(|| "127.0.0.1".to_string()),
            timeout: Duration::from_secs(t.dist_timeout_s),
            fingerprint: format!("world={} backend={} config={}", world.size, backend.name(), &config_hash[..config_hash.len().min(12)]),
            cuda_device: match (backend, device) {
                (Backend::Nccl, Device::Cuda(n)) => Some(n),
                _ => None,
            },
        };
        let group = Arc::new(ProcessGroup::new(&options).map_err(|e| TrainError::Other(e.to_string()))?);
        let alive = Arc::new(AtomicBool::new(true));
        spawn_heartbeat(group.clone(), alive.clone());
        tracing::info!("rank {} of {} joined the {backend:?} group at {}:{}", world.rank, world.size, world.master_addr, world.master_port);
        Ok(Some(DataParallel {
            group,
            world: world.clone(),
            backend,
            device,
            timeout: options.timeout,
            alive,
            reduce_ns: AtomicU64::new(0),
            reduces: AtomicU64::new(0),
        }))
    }

    pub fn rank(&self) -> usize {
        self.world.rank
    }

    pub fn size(&self) -> usize {
        self.world.size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn shard(&self) -> Shard {
        Shard { index: self.world.rank, count: self.world.size }
    }

    /// Copies rank 0's tensors into every rank's (parameters, moments and EMA at the start).
    pub fn broadcast_from_main(&self, tensors: &[&Tensor]) -> Result<(), TrainError> {
        tch::no_grad(|| self.group.broadcast(tensors, 0)).map_err(|e| self.failed("copying rank 0's weights", e))
    }

    /// Averages the flat gradient buffer and this rank's loss over the ranks; returns the mean
    /// loss. One collective for the gradients, one for the loss, whatever the model's size.
    pub fn average_gradients(&self, grads: &Tensor, loss: f64) -> Result<f64, TrainError> {
        let loss_t = Tensor::from_slice(&[loss]).to_device(self.device);
        let start = Instant::now();
        self.group.all_reduce(&[grads, &loss_t], ReduceOp::Sum).map_err(|e| self.failed("averaging gradients", e))?;
        self.reduce_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.reduces.fetch_add(1, Ordering::Relaxed);
        let w = self.world.size as f64;
        let _ = grads.shallow_clone().g_div_scalar_(w);
        Ok(loss_t.double_value(&[0]) / w)
    }

    /// The mean wall time of one gradient all-reduce so far, in milliseconds (it includes waiting
    /// for the slowest rank to arrive).
    pub fn mean_reduce_ms(&self) -> f64 {
        self.reduce_ns.load(Ordering::Relaxed) as f64 / 1e6 / self.reduces.load(Ordering::Relaxed).max(1) as f64
    }

    /// Sums `values` over the ranks, in place (validation losses computed in parts).
    pub fn sum(&self, values: &mut [f64], what: &str) -> Result<(), TrainError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.group.all_reduce(&[&t], ReduceOp::Sum).map_err(|e| self.failed(what, e))?;
        let summed = Vec::<f64>::try_from(&t.to_device(Device::Cpu)).map_err(TrainError::Torch)?;
        values.copy_from_slice(&summed);
        Ok(())
    }

    /// True on every rank when `flag` is true on any (an interrupt that reached one rank).
    pub fn any(&self, flag: bool, what: &str) -> Result<bool, TrainError> {
        let t = Tensor::from_slice(&[i32::from(flag)]).to_device(self.device);
        self.group.all_reduce(&[&t], ReduceOp::Max).map_err(|e| self.failed(what, e))?;
        Ok(t.int64_value(&[0]) != 0)
    }

    /// Rank 0's `flag` on every rank (a decision only rank 0 can take, such as an evaluation's).
    pub fn main_says(&self, flag: bool, what: &str) -> Result<bool, TrainError> {
        let t = Tensor::from_slice(&[i32::from(flag)]).to_device(self.device);
        self.group.broadcast(&[&t], 0).map_err(|e| self.failed(what, e))?;
        Ok(t.int64_value(&[0]) != 0)
    }

    /// Waits until every rank is here (the others wait while rank 0 writes).
    pub fn barrier(&self, what: &str) -> Result<(), TrainError> {
        self.group.barrier().map_err(|e| self.failed(what, e))
    }

    /// Every rank's `value`, in rank order.
    pub fn gather(&self, value: f64, what: &str) -> Result<Vec<f64>, TrainError> {
        let t = Tensor::from_slice(&[value]).to_device(self.device);
        let all = self.group.all_gather(&t).map_err(|e| self.failed(what, e))?;
        Ok(all.iter().map(|t| t.to_kind(Kind::Double).double_value(&[0])).collect())
    }

    /// The error of a failed collective, naming the ranks that stopped when the heartbeats tell.
    fn failed(&self, what: &str, e: NativeError) -> TrainError {
        let diagnosis = self.diagnose();
        let waited = if e.0.contains("timed out") { format!(" (train.dist_timeout_s = {})", self.timeout.as_secs()) } else { String::new() };
        TrainError::Other(format!("rank {} of {}: {what} failed: {e}{waited}; {diagnosis}", self.world.rank, self.world.size))
    }

    /// Which ranks stopped: those whose heartbeat counter does not move while we watch. The
    /// store lives in rank 0's process: if rank 0 hangs, reading it would hang too, so the
    /// reading runs on its own thread with a deadline.
    fn diagnose(&self) -> String {
        let store = format!("{}:{}", self.world.master_addr, self.world.master_port);
        let (group, size) = (self.group.clone(), self.world.size);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let read = || -> Option<Vec<i64>> { (0..size).map(|r| group.store_add(&heartbeat_key(r), 0).ok()).collect() };
            let before = read();
            std::thread::sleep(HEARTBEAT_WATCH);
            let _ = tx.send(before.zip(read()));
        });
        match rx.recv_timeout(HEARTBEAT_WATCH + Duration::from_secs(5)) {
            Err(_) => format!("the rendezvous store at {store} (hosted by rank 0) does not answer: rank 0 is hung or unreachable"),
            Ok(None) => format!("the rendezvous store at {store} (hosted by rank 0) is gone: rank 0 stopped"),
            Ok(Some((before, after))) => {
                let stopped: Vec<String> = (0..size).filter(|&r| r != self.world.rank && before[r] == after[r]).map(|r| format!("rank {r}")).collect();
                if stopped.is_empty() {
                    "every rank's heartbeat still moves: one is stuck (see the ranks' logs)".to_string()
                } else {
                    format!("{} stopped (no heartbeat for {:.1} s)", stopped.join(", "), HEARTBEAT_WATCH.as_secs_f64())
                }
            }
        }
    }
}

/// Bumps this rank's heartbeat counter in the store until `alive` goes false or the store does.
fn spawn_heartbeat(group: Arc<ProcessGroup>, alive: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let key = heartbeat_key(group.rank());
        while alive.load(Ordering::Relaxed) {
            if group.store_add(&key, 1).is_err() {
                return;
            }
            std::thread::sleep(HEARTBEAT_EVERY);
        }
    });
}

impl Drop for DataParallel {
    /// Stops the heartbeat without waiting for it: a store read cannot be interrupted, and when
    /// rank 0 hangs it would never return.
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_a_batch_into_equal_consecutive_rows() {
        assert_eq!(Shard::WHOLE.rows(8), 0..8);
        let parts: Vec<_> = (0..4).map(|index| Shard { index, count: 4 }.rows(8)).collect();
        assert_eq!(parts, vec![0..2, 2..4, 4..6, 6..8]);
        let uneven: Vec<_> = (0..3).map(|index| Shard { index, count: 3 }.rows(8)).collect();
        assert_eq!(uneven, vec![0..2, 2..5, 5..8]);
    }

    #[test]
    fn a_batch_that_does_not_split_evenly_is_refused_by_name() {
        let world = World { size: 3, ..World::single() };
        let t = TrainConfig { batch_size: 8, ..TrainConfig::default() };
        let err = check_batch(&t, &world).unwrap_err().to_string();
        assert!(err.contains("train.batch_size") && err.contains("3 processes"), "{err}");
        assert!(check_batch(&TrainConfig { batch_size: 9, ..t }, &world).is_ok());
    }
}
