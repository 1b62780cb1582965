//! Throughput benchmarks (placeholder: being written).
