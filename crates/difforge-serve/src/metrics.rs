//! Prometheus metrics, in the text exposition format at GET /metrics.

use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub queue_wait: Histogram,
    pub compute: Histogram,
    pub queue_depth: IntGauge,
    pub batch_images: Histogram,
    pub images: IntCounter,
    pub images_by_class: IntCounterVec,
    pub memory: Gauge,
    pub output_mean: Gauge,
    pub output_drift: Gauge,
    pub output_fd: Gauge,
    pub drift_images: IntCounter,
    pub drift_dropped: IntCounter,
    pub reloads: IntCounterVec,
    /// Requests dropped before or during their batch: nobody waited for them any more.
    pub abandoned: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            requests: IntCounterVec::new(Opts::new("difforge_http_requests_total", "HTTP requests by endpoint and status"), &["endpoint", "status"])?,
            queue_wait: Histogram::with_opts(
                HistogramOpts::new("difforge_queue_wait_seconds", "Time a generation request waited in the queue").buckets(latency_buckets()),
            )?,
            compute: Histogram::with_opts(HistogramOpts::new("difforge_compute_seconds", "Model time of a batch").buckets(latency_buckets()))?,
            queue_depth: IntGauge::new("difforge_queue_depth", "Generation requests waiting")?,
            batch_images: Histogram::with_opts(
                HistogramOpts::new("difforge_batch_images", "Requested images per model batch").buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )?,
            images: IntCounter::new("difforge_images_generated_total", "Images generated")?,
            images_by_class: IntCounterVec::new(
                Opts::new("difforge_images_by_class_total", "Images generated per class (\"none\": unconditional)"),
                &["class"],
            )?,
            memory: Gauge::new("difforge_resident_memory_bytes", "Resident memory of the server process (host memory; the model lives there on CPU)")?,
            output_mean: Gauge::new("difforge_output_mean_pixel", "Mean pixel value of the recently generated images, on [-1, 1]")?,
            output_drift: Gauge::new("difforge_output_drift", "|recent output mean - training data mean| in training standard deviations")?,
            output_fd: Gauge::new(
                "difforge_output_fd_effnet",
                "FD-EffNet of the last drift_window generated images against the validation images (feature_drift_every > 0)",
            )?,
            drift_images: IntCounter::new("difforge_feature_drift_images_total", "Generated images the feature drift monitor has scored")?,
            drift_dropped: IntCounter::new("difforge_feature_drift_dropped_total", "Generated images the feature drift monitor skipped because it was behind")?,
            reloads: IntCounterVec::new(Opts::new("difforge_reloads_total", "Model reloads by result"), &["result"])?,
            abandoned: IntCounterVec::new(
                Opts::new(
                    "difforge_abandoned_requests_total",
                    "Generation requests given up because nobody waited for them (timed out, client gone, shutdown), by when",
                ),
                &["when"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.abandoned.clone()))?;
        m.registry.register(Box::new(m.queue_wait.clone()))?;
        m.registry.register(Box::new(m.compute.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.batch_images.clone()))?;
        m.registry.register(Box::new(m.images.clone()))?;
        m.registry.register(Box::new(m.images_by_class.clone()))?;
        m.registry.register(Box::new(m.memory.clone()))?;
        m.registry.register(Box::new(m.output_mean.clone()))?;
        m.registry.register(Box::new(m.output_drift.clone()))?;
        m.registry.register(Box::new(m.output_fd.clone()))?;
        m.registry.register(Box::new(m.drift_images.clone()))?;
        m.registry.register(Box::new(m.drift_dropped.clone()))?;
        m.registry.register(Box::new(m.reloads.clone()))?;
        Ok(m)
    }

    pub fn render(&self) -> String {
        self.memory.set(resident_bytes() as f64);
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// VmRSS of this process (Linux), in bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}
