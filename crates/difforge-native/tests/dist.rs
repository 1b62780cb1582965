//! c10d process groups for real: two ranks, each on its own thread with its own Gloo group,
//! meet through a TCPStore on loopback and run every collective the trainer uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_native::dist::{Backend, GroupOptions, ProcessGroup, ReduceOp};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn options(port: u16, rank: usize, world: usize, timeout: Duration) -> GroupOptions {
    GroupOptions {
        backend: Backend::Gloo,
        store_host: "127.0.0.1".into(),
        store_port: port,
        rank,
        world,
        store_server: rank == 0,
        store_prefix: String::new(),
        gloo_interface: None,
        gloo_host: Some("127.0.0.1".into()),
        timeout,
        fingerprint: format!("world={world}"),
        cuda_device: None,
    }
}

/// Runs `body(group)` on `world` threads, one rank each, and returns their results in rank order.
fn run_ranks<T: Send + 'static>(world: usize, body: fn(ProcessGroup) -> T) -> Vec<T> {
    let port = free_port();
    let threads: Vec<_> =
        (0..world).map(|rank| std::thread::spawn(move || body(ProcessGroup::new(&options(port, rank, world, Duration::from_secs(30))).unwrap()))).collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn two_ranks_reduce_broadcast_gather_and_meet() {
    let results = run_ranks(2, |g| {
        let r = g.rank() as f32;
        let a = Tensor::from_slice(&[1.0 + r, 10.0 * r, -r]);
        let b = Tensor::full([1000], f64::from(r) + 0.5, (Kind::Float, tch::Device::Cpu));
        g.all_reduce(&[&a, &b], ReduceOp::Sum).unwrap();
        let m = Tensor::from_slice(&[r, -r]);
        g.all_reduce(&[&m], ReduceOp::Max).unwrap();
        let c = Tensor::from_slice(&[r + 7.0; 4]);
        g.broadcast(&[&c], 1).unwrap();
        let gathered = g.all_gather(&Tensor::from_slice(&[r, r * 2.0])).unwrap();
        g.barrier().unwrap();
        let counter = g.store_add("test/counter", 1).unwrap();
        let v = |t: &Tensor| Vec::<f32>::try_from(t).unwrap();
        (v(&a), v(&b), v(&m), v(&c), gathered.iter().map(v).collect::<Vec<_>>(), counter)
    });
    for (a, b, m, c, gathered, counter) in &results {
        assert_eq!(a, &[3.0, 10.0, -1.0]);
        assert!(b.iter().all(|&x| x == 2.0), "{:?}", &b[..4]);
        assert_eq!(m, &[1.0, 0.0]);
        assert_eq!(c, &[8.0; 4], "broadcast from rank 1");
        assert_eq!(gathered, &vec![vec![0.0, 0.0], vec![1.0, 2.0]]);
        assert!(*counter == 1 || *counter == 2);
    }
    assert_ne!(results[0].5, results[1].5, "the store counter is shared");
}

#[test]
fn a_rank_that_never_comes_ends_the_rendezvous_with_an_error() {
    let port = free_port();
    let start = Instant::now();
    let err = ProcessGroup::new(&options(port, 0, 2, Duration::from_secs(2))).err().expect("rank 1 never joins");
    let msg = err.to_string();
    assert!(msg.contains("rank 0 of 2") && msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("frame #"), "the C++ stack is left out: {msg}");
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
}

/// Ranks started with different world sizes (2 and 3) both fail at once, each naming what the
/// other was started with (before, rank 0 ended after five timeouts in Gloo's connectFullMesh).
#[test]
fn ranks_started_with_different_world_sizes_fail_at_once_naming_both() {
    let port = free_port();
    let start = Instant::now();
    let timeout = Duration::from_secs(20);
    let ranks: Vec<_> = [(0, 2), (1, 3)]
        .into_iter()
        .map(|(rank, world)| std::thread::spawn(move || ProcessGroup::new(&options(port, rank, world, timeout)).err().map(|e| e.to_string())))
        .collect();
    for rank in ranks {
        let msg = rank.join().unwrap().expect("a mismatched rank must not join");
        assert!(msg.contains("world=2") && msg.contains("world=3") && msg.contains("WORLD_SIZE"), "{msg}");
    }
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[test]
fn a_rank_outside_the_world_is_refused() {
    let err = ProcessGroup::new(&options(1, 2, 2, Duration::from_secs(1))).err().unwrap();
    assert!(err.to_string().contains("rank 2 is outside a world of 2"), "{err}");
}
