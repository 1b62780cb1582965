//! The one thread that owns the model. It takes requests from the bounded queue, merges the
//! compatible ones (same sampler, steps and guidance) into a batch of at most `max_batch`
//! images, waiting at most `max_wait_ms` for company, runs the batch and sends each request its
//! own images back.

use crate::config::ServeConfig;
use crate::drift::Rolling;
use crate::loaded::{Loaded, ModelInfo};
use crate::metrics::Metrics;
use crate::request::Generate;
use difforge_model::generate::generate_until;
use difforge_model::{Condition, ConditionKind, GenerateSpec, ModelError, Weights};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Images of one request: planar floats in [-1, 1], `n` x C x H x W.
#[derive(Debug)]
pub struct Images {
    pub data: Vec<f32>,
    pub count: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Why a queued request got no images.
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    /// It waited past its deadline.
    TimedOut,
    /// The model was reloaded while it waited, and the new one cannot serve it (409).
    /// The field the reloaded model cannot serve, and why.
    Conflict(&'static str, String),
    /// The model failed on its batch (500).
    Failed(String),
    /// The server is shutting down and its deadline for work has passed (503).
    ShuttingDown,
}

pub struct Job {
    pub request: Generate,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub reply: tokio::sync::oneshot::Sender<Result<Images, JobError>>,
}

/// State shared by the worker and the HTTP handlers.
pub struct Shared {
    /// Locked by the worker for each batch; a reload swaps the model between batches, so
    /// requests in flight finish on the model they started with.
    pub model: Mutex<Loaded>,
    pub info: RwLock<ModelInfo>,
    pub metrics: Metrics,
    pub rolling: Mutex<Rolling>,
    /// The feature-space drift monitor, when `feature_drift_every` > 0.
    pub feature_drift: Option<crate::feature_drift::FeatureDrift>,
    pub ready: AtomicBool,
    pub worker_alive: AtomicBool,
    /// Set at SIGTERM/SIGINT: when work must stop so that every waiting request can still be
    /// answered (503) before the connections are closed.
    pub work_until: Mutex<Option<Instant>>,
}

impl Shared {
    /// Work stops at `deadline`: the batch running then is cancelled at its next step, and
    /// every request not yet done is answered 503.
    pub fn stop_work_at(&self, deadline: Instant) {
        *self.work_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
    }

    fn past_work_deadline(&self) -> bool {
        self.work_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|d| Instant::now() >= d)
    }
}

impl Job {
    /// Nobody will read this job's images: its deadline passed or its handler is gone (timed
    /// out, or the client disconnected).
    fn abandoned(&self, now: Instant) -> bool {
        now >= self.deadline || self.reply.is_closed()
    }
}

/// Requests that can share a batch agree on these (every sampler setting and the image size).
fn batch_key(g: &Generate) -> (&'static str, usize, [u64; 5], Option<[i64; 2]>) {
    let s = &g.sampler;
    let [lo, hi] = s.guidance_interval.unwrap_or([-1.0, -1.0]);
    (s.sampler.name(), s.steps, [s.guidance.to_bits(), s.eta.to_bits(), s.guidance_rescale.to_bits(), lo.to_bits(), hi.to_bits()], g.size)
}

struct Worker {
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    cfg: ServeConfig,
    pending: VecDeque<Job>,
}

impl Worker {
    fn next(&mut self, wait: Option<Duration>) -> Option<Job> {
        if let Some(j) = self.pending.pop_front() {
            return Some(j);
        }
        let job = match wait {
            None => self.rx.recv().ok(),
            Some(d) => self.rx.recv_timeout(d).ok(),
        };
        if job.is_some() {
            self.shared.metrics.queue_depth.dec();
        }
        job
    }

    /// The first waiting request and those that can join it.
    fn collect(&mut self, first: Job) -> Vec<Job> {
        let key = batch_key(&first.request);
        let mut images = first.request.n;
        let mut batch = vec![first];
        if !self.cfg.batching {
            return batch;
        }
        let until = Instant::now() + Duration::from_millis(self.cfg.max_wait_ms);
        let mut skipped = VecDeque::new();
        while images < self.cfg.max_batch {
            let left = until.saturating_duration_since(Instant::now());
            // Queued requests are taken first, then the queue is watched until `until`.
            let job = match self.pending.pop_front() {
                Some(j) => Some(j),
                None if left.is_zero() => match self.rx.try_recv() {
                    Ok(j) => {
                        self.shared.metrics.queue_depth.dec();
                        Some(j)
                    }
                    Err(_) => None,
                },
                None => match self.rx.recv_timeout(left) {
                    Ok(j) => {
                        self.shared.metrics.queue_depth.dec();
                        Some(j)
                    }
                    Err(_) => None,
                },
            };
            let Some(job) = job else { break };
            if batch_key(&job.request) == key && images + job.request.n <= self.cfg.max_batch {
                images += job.request.n;
                batch.push(job);
            } else {
                skipped.push_back(job);
            }
        }
        skipped.extend(self.pending.drain(..));
        self.pending = skipped;
        batch
    }

    fn run(&mut self, jobs: Vec<Job>) {
        let now = Instant::now();
        let stopping = self.shared.past_work_deadline();
        let (live, given_up): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !stopping && !j.abandoned(now));
        if !given_up.is_empty() {
            self.shared.metrics.abandoned.with_label_values(&["queued"]).inc_by(given_up.len() as u64);
        }
        for j in given_up {
            let _ = j.reply.send(Err(if stopping { JobError::ShuttingDown } else { JobError::TimedOut }));
        }
        // One lock for the check and the batch: a reload between them would hand the batch
        // to a model its requests were not checked against.
        let loaded = self.shared.model.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.refuse_unservable(live, &loaded);
        if live.is_empty() {
            return;
        }
        for j in &live {
            self.shared.metrics.queue_wait.observe(now.duration_since(j.enqueued).as_secs_f64());
        }
        // Checked before each denoising step: the batch goes on while anyone waits for it.
        let stop = || self.shared.past_work_deadline() || live.iter().all(|j| j.abandoned(Instant::now()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.compute(&live, &loaded, &stop)));
        drop(loaded);
        match outcome {
            Ok(Ok(Some(per_job))) => {
                for (job, images) in live.into_iter().zip(per_job) {
                    let _ = job.reply.send(Ok(images));
                }
            }
            Ok(Ok(None)) => {
                let stopping = self.shared.past_work_deadline();
                tracing::info!("a batch of {} request(s) was cancelled: {}", live.len(), if stopping { "shutting down" } else { "nobody waits for it" });
                self.shared.metrics.abandoned.with_label_values(&["running"]).inc_by(live.len() as u64);
                for job in live {
                    let _ = job.reply.send(Err(if stopping { JobError::ShuttingDown } else { JobError::TimedOut }));
                }
            }
            Ok(Err(e)) => {
                tracing::error!("the model refused a batch of {} request(s): {e}", live.len());
                for job in live {
                    let _ = job.reply.send(Err(JobError::Failed(format!("the model refused this batch: {e}"))));
                }
            }
            Err(_) => {
                tracing::error!("the model failed on a batch of {} request(s)", live.len());
                for job in live {
                    let _ = job.reply.send(Err(JobError::Failed("the model failed on this batch".into())));
                }
            }
        }
    }

    /// Answers 409 to requests the current model cannot serve (validated against the model
    /// that was loaded when they arrived, which a reload has since replaced) and keeps the rest.
    fn refuse_unservable(&self, jobs: Vec<Job>, loaded: &Loaded) -> Vec<Job> {
        if jobs.is_empty() {
            return jobs;
        }
        let (kind, sizes) = (loaded.info.kind, loaded.info.size_rule(self.cfg.max_side));
        // The field the new model cannot serve, if any.
        let unservable = |r: &Generate| -> Option<&'static str> {
            let field = match (&r.condition, &r.negative) {
                (Condition::Class(_), _) => "class",
                (_, Some(_)) if kind != ConditionKind::Text => return Some("negative_prompt"),
                _ => "prompt",
            };
            if kind.check(field, &r.condition).is_err() {
                return Some(field);
            }
            let size = r.size.unwrap_or(sizes.own);
            sizes.check(size).err().map(|e| if e.field == "width" { "width" } else { "height" })
        };
        let (ok, refused): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| unservable(&j.request).is_none());
        for j in refused {
            let field = unservable(&j.request).unwrap_or("prompt");
            let why = format!("the model was reloaded while this request waited, and the new one cannot serve its `{field}`");
            let _ = j.reply.send(Err(JobError::Conflict(field, why)));
        }
        ok
    }

    /// Each job's images, or None when `stop` cancelled the batch.
    fn compute(&self, jobs: &[Job], loaded: &Loaded, stop: &dyn Fn() -> bool) -> Result<Option<Vec<Images>>, String> {
        let mut conditions = Vec::new();
        let mut negatives = Vec::new();
        let mut seeds = Vec::new();
        for j in jobs {
            let r = &j.request;
            conditions.extend(std::iter::repeat_n(r.condition.clone(), r.n));
            let negative = r.negative.clone().map_or(Condition::Unconditional, Condition::Text);
            negatives.extend(std::iter::repeat_n(negative, r.n));
            seeds.extend((0..r.n as u64).map(|k| r.seed.wrapping_add(k)));
        }
        if jobs.iter().all(|j| j.request.negative.is_none()) {
            negatives.clear(); // the family's null for every image
        }
        let total = seeds.len();
        let start = Instant::now();
        let spec = GenerateSpec {
            conditions,
            seeds,
            sampler: &jobs[0].request.sampler,
            weights: Weights::Ema,
            // Without batching every image runs alone: still a fixed size, so still repeatable.
            max_batch: if self.cfg.batching { self.cfg.max_batch } else { 1 },
            fixed_batch: true,
            negatives,
            size: jobs[0].request.size,
        };
        let images = match generate_until(&loaded.model, &spec, stop) {
            Ok(images) => images,
            Err(ModelError::Cancelled) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(monitor) = &self.shared.feature_drift {
            monitor.offer(&images);
        }
        let m = &self.shared.metrics;
        m.compute.observe(start.elapsed().as_secs_f64());
        m.batch_images.observe(total as f64);
        m.images.inc_by(total as u64);
        let (_, c, h, w) = images.size4().map_err(|e| e.to_string())?;
        let (c, h, w) = (c as usize, h as usize, w as usize);
        let data = difforge_model::images::to_vec(&images).map_err(|e| e.to_string())?;
        let per = c * h * w;
        {
            let mut rolling = self.shared.rolling.lock().unwrap_or_else(|p| p.into_inner());
            for img in data.chunks(per) {
                rolling.push(img.iter().map(|&v| f64::from(v)).sum::<f64>() / per as f64);
            }
            if let Some(mean) = rolling.mean() {
                m.output_mean.set(mean);
            }
            if let Some(d) = loaded.reference.as_ref().and_then(|r| rolling.drift(r)) {
                m.output_drift.set(d);
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        let mut offset = 0;
        for j in jobs {
            let n = j.request.n;
            let label = match &j.request.condition {
                Condition::Class(c) => c.to_string(),
                Condition::Text(_) => "prompt".to_string(),
                Condition::Unconditional => "none".to_string(),
            };
            m.images_by_class.with_label_values(&[label.as_str()]).inc_by(n as u64);
            out.push(Images { data: data[offset * per..(offset + n) * per].to_vec(), count: n, channels: c, height: h, width: w });
            offset += n;
        }
        Ok(Some(out))
    }
}

/// The running worker thread.
pub struct WorkerHandle {
    thread: std::thread::JoinHandle<()>,
    /// Closed when the thread ends.
    done: Receiver<()>,
}

impl WorkerHandle {
    /// Waits at most `limit` for the worker to end; false if it is still running.
    pub fn finished_within(self, limit: Duration) -> bool {
        match self.done.recv_timeout(limit) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            _ => {
                let _ = self.thread.join();
                true
            }
        }
    }
}

/// Starts the worker; it ends when every sender is dropped and the queue is drained.
pub fn spawn(shared: Arc<Shared>, rx: Receiver<Job>, cfg: ServeConfig) -> WorkerHandle {
    let (ended, done) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("difforge-worker".into())
        .spawn(move || {
            let _ended = ended; // dropped when the thread ends, however it ends
            let mut w = Worker { shared: shared.clone(), rx, cfg, pending: VecDeque::new() };
            while let Some(first) = w.next(None) {
                let batch = w.collect(first);
                w.run(batch);
            }
            shared.worker_alive.store(false, Ordering::SeqCst);
        })
        .expect("the worker thread starts");
    WorkerHandle { thread, done }
}
