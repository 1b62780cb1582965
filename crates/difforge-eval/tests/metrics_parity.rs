//! Parity of the feature-distribution metrics with the Python reference packages (pytorch-fid,
//! torch-fidelity, torchmetrics, prdc), on fixed feature sets written by
//! `tools/make_metric_fixtures.py` into `tests/fixtures/metrics.json`, plus the properties and
//! input errors that no fixture covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_eval::metrics::{frechet_distance, kid, manifold, mmd2_unbiased, Gaussian, Kid, KidConfig, PolyKernel};
use difforge_eval::EvalError;
use serde_json::Value;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

struct Fixture {
    doc: Value,
    sets: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut sets = HashMap::new();
    for (name, set) in doc["sets"].as_object().unwrap() {
        let rows = set["rows"].as_i64().unwrap();
        let cols = set["cols"].as_i64().unwrap();
        // The values are multiples of 1/64: exact in JSON, f64 and f32 alike.
        let data: Vec<f32> = set["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(data.len() as i64, rows * cols, "set {name}");
        sets.insert(name.clone(), Tensor::from_slice(&data).reshape([rows, cols]));
    }
    Fixture { doc, sets }
}

impl Fixture {
    fn set(&self, case: &Value, key: &str) -> &Tensor {
        &self.sets[case[key].as_str().unwrap()]
    }
}

fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(f64::MIN_POSITIVE)
}

fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
    let e = rel_err(got, want);
    eprintln!("{what}: rust {got:.17e} reference {want:.17e} rel err {e:.2e}");
    assert!(e <= tol, "{what}: rust {got} vs reference {want} (relative error {e:.3e} > {tol:e})");
}

fn kernel_of(case: &Value) -> PolyKernel {
    PolyKernel { degree: case["degree"].as_u64().unwrap() as u32, gamma: case["gamma"].as_f64(), coef0: case["coef0"].as_f64().unwrap() }
}

#[test]
fn frechet_distance_matches_pytorch_fid_and_torch_fidelity() {
    let fx = fixture();
    for case in fx.doc["frechet"].as_array().unwrap() {
        let a = Gaussian::fit(fx.set(case, "real")).unwrap();
        let b = Gaussian::fit(fx.set(case, "fake")).unwrap();
        let fd = frechet_distance(&a, &b).unwrap();
        let name = format!("FD {} vs {}", case["real"], case["fake"]);
        assert_rel(fd, case["pytorch_fid"].as_f64().unwrap(), 1e-6, &format!("{name} (pytorch-fid)"));
        assert_rel(fd, case["torch_fidelity"].as_f64().unwrap(), 1e-6, &format!("{name} (torch-fidelity)"));
    }
}

#[test]
fn kid_on_whole_sets_matches_torch_fidelity_and_torchmetrics() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx.doc["kid"].as_array().unwrap() {
        if case.get("draws").is_some() {
            continue;
        }
        // One subset as large as both sets: the draw is a permutation, so our generator's
        // subsets give the same value as torch-fidelity's.
        let config = KidConfig { subsets: 1, subset_size: case["subset_size"].as_u64().unwrap() as usize, seed: 7, kernel: kernel_of(case) };
        let k = kid(fx.set(case, "real"), fx.set(case, "fake"), &config).unwrap();
        let name = format!("KID {} vs {}", case["real"], case["fake"]);
        assert_rel(k.mean, case["torch_fidelity"]["mean"].as_f64().unwrap(), 1e-6, &format!("{name} (torch-fidelity)"));
        assert_rel(k.mean, case["torchmetrics"]["mean"].as_f64().unwrap(), 1e-6, &format!("{name} (torchmetrics)"));
        assert_eq!(k.std, 0.0);
        assert_eq!((k.subsets, k.subset_size), (1, config.subset_size));
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn kid_on_torch_fidelity_subsets_matches_per_subset_mean_and_std() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx.doc["kid"].as_array().unwrap() {
        let Some(draws) = case.get("draws") else {
            continue;
        };
        let (real, fake) = (fx.set(case, "real"), fx.set(case, "fake"));
        let kernel = kernel_of(case);
        let per_subset = case["mmd2_per_subset"].as_array().unwrap();
        let mut values = Vec::new();
        for (i, (draw, want)) in draws.as_array().unwrap().iter().zip(per_subset).enumerate() {
            let pick = |set: &Tensor, key: &str| {
                let idx: Vec<i64> = draw[key].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                set.index_select(0, &Tensor::from_slice(&idx))
            };
            let v = mmd2_unbiased(&pick(real, "real"), &pick(fake, "fake"), &kernel).unwrap();
            assert_rel(v, want.as_f64().unwrap(), 1e-6, &format!("MMD^2 subset {i} {} vs {}", case["real"], case["fake"]));
            values.push(v);
        }
        let size = case["subset_size"].as_u64().unwrap() as usize;
        let k = Kid::from_mmd2(&values, size).unwrap();
        let name = format!("KID {} vs {} ({} subsets of {size})", case["real"], case["fake"], values.len());
        assert_rel(k.mean, case["torch_fidelity"]["mean"].as_f64().unwrap(), 1e-6, &format!("{name} mean"));
        if values.len() > 1 {
            assert_rel(k.std, case["torch_fidelity"]["std"].as_f64().unwrap(), 1e-6, &format!("{name} std"));
        }
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn kid_clamps_the_subset_size_and_is_seeded() {
    let fx = fixture();
    let (real, fake) = (&fx.sets["real"], &fx.sets["fake_shift"]);
    let config = KidConfig { subsets: 10, ..KidConfig::default() };
    let a = kid(real, fake, &config).unwrap();
    assert_eq!((a.subsets, a.subset_size), (10, 200), "1000 clamps to the 200 fake rows");
    assert_eq!(a, kid(real, fake, &config).unwrap(), "same seed, same subsets");
    let other = kid(real, fake, &KidConfig { seed: config.seed + 1, ..config.clone() }).unwrap();
    assert_ne!(a.mean, other.mean, "another seed draws other subsets of the 240 real rows");
    // Whatever the draw, the estimate stays near torch-fidelity's numbers for this pair.
    let reference = fx.doc["kid"].as_array().unwrap().iter().find(|c| c["fake"] == "fake_shift" && c["subset_size"] == 200).unwrap()["torch_fidelity"]["mean"]
        .as_f64()
        .unwrap();
    assert!(rel_err(a.mean, reference) < 0.05, "{} vs {reference}", a.mean);
}

#[test]
fn manifold_metrics_match_prdc() {
    let fx = fixture();
    for case in fx.doc["prdc"].as_array().unwrap() {
        let k = case["nearest_k"].as_u64().unwrap() as usize;
        let m = manifold(fx.set(case, "real"), fx.set(case, "fake"), k).unwrap();
        let name = format!("prdc {} vs {} k={k}", case["real"], case["fake"]);
        eprintln!("{name}: {m:?}");
        // Fractions of counts: the same division of the same integers, so bit-identical to
        // prdc. The generator checked prdc's values against these counts exactly; comparing with
        // the counts here keeps the check exact, because serde_json (without its
        // `float_roundtrip` feature) may read a 16-digit decimal one ulp off.
        let (n_real, n_fake) = (m.real as f64, m.fake as f64);
        let count = |key: &str| case[key].as_u64().unwrap() as f64;
        assert_eq!(m.precision, count("precision_count") / n_fake, "{name} precision");
        assert_eq!(m.recall, count("recall_count") / n_real, "{name} recall");
        assert_eq!(m.coverage, count("coverage_count") / n_real, "{name} coverage");
        for (key, got) in [("precision", m.precision), ("recall", m.recall), ("coverage", m.coverage)] {
            let want = case[key].as_f64().unwrap();
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want, "{name} {key}: {got} vs prdc {want}");
        }
        let want_density = case["density"].as_f64().unwrap();
        assert!((m.density - want_density).abs() <= 1e-9, "{name} density {} vs {want_density}", m.density);
        let (p, r) = (m.precision, m.recall);
        assert!((m.f1 - 2.0 * p * r / (p + r)).abs() < 1e-15);
        assert_eq!((m.real, m.fake, m.k), (fx.set(case, "real").size()[0] as usize, fx.set(case, "fake").size()[0] as usize, k));
    }
}

#[test]
fn identical_sets_have_zero_frechet_distance() {
    let fx = fixture();
    for name in ["real", "real_corr", "fake_corr"] {
        let g = Gaussian::fit(&fx.sets[name]).unwrap();
        let fd = frechet_distance(&g, &g).unwrap();
        eprintln!("FD {name} vs itself: {fd:e}");
        assert!(fd.abs() < 1e-6, "FD of {name} with itself is {fd}");
    }
}

#[test]
fn a_larger_shift_gives_a_larger_frechet_distance() {
    let fx = fixture();
    let real = &fx.sets["real"];
    let g = Gaussian::fit(real).unwrap();
    let fd = |shift: f64| frechet_distance(&g, &Gaussian::fit(&(real + shift)).unwrap()).unwrap();
    let (small, large) = (fd(0.25), fd(1.0));
    assert!(small < large, "{small} !< {large}");
    // A pure shift leaves the covariance alone: FD = D * shift^2.
    assert!((large - 32.0).abs() < 1e-6, "{large}");
    assert!((small - 2.0).abs() < 1e-6, "{small}");
}

#[test]
fn gaussian_statistics_round_trip_through_safetensors() {
    let fx = fixture();
    let g = Gaussian::fit(&fx.sets["real_corr"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real_corr.safetensors");
    g.save(&path).unwrap();
    let back = Gaussian::load(&path).unwrap();
    assert_eq!(back.n, 240);
    assert!(back.mean.equal(&g.mean) && back.cov.equal(&g.cov));
    let other = Gaussian::fit(&fx.sets["fake_corr"]).unwrap();
    assert_eq!(frechet_distance(&back, &other).unwrap(), frechet_distance(&g, &other).unwrap());
    // Named tensors, for callers that keep several statistics in one file.
    let named = g.to_tensors();
    assert_eq!(Gaussian::from_tensors(&named).unwrap().n, 240);
    assert!(matches!(Gaussian::load(&dir.path().join("missing.safetensors")), Err(EvalError::Read { .. })));
}

fn input_error<T: std::fmt::Debug>(r: Result<T, EvalError>, what: &str, needle: &str) {
    match r {
        Err(EvalError::Input(msg)) => {
            eprintln!("{what}: {msg}");
            assert!(msg.contains(needle), "{what}: message {msg:?} lacks {needle:?}");
        }
        other => panic!("{what}: expected an input error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_input_errors_not_panics() {
    let cpu = (Kind::Float, Device::Cpu);
    let a = Tensor::randn([50, 8], cpu);
    let wide = Tensor::randn([50, 9], cpu);
    let one_row = Tensor::randn([1, 8], cpu);
    let three_rows = Tensor::randn([3, 8], cpu);
    let flat = Tensor::randn([8], cpu);
    let ints = Tensor::ones([50, 8], (Kind::Int64, Device::Cpu));
    let nan = Tensor::full([50, 8], f64::NAN, cpu);

    input_error(Gaussian::fit(&one_row), "fit on 1 row", "got 1");
    input_error(Gaussian::fit(&flat), "fit on a vector", "2-D");
    input_error(Gaussian::fit(&ints), "fit on integers", "floating point");
    input_error(Gaussian::fit(&nan), "fit on NaN", "NaN");
    let (ga, gw) = (Gaussian::fit(&a).unwrap(), Gaussian::fit(&wide).unwrap());
    input_error(frechet_distance(&ga, &gw), "FD of 8 vs 9 dims", "8 and 9");

    let config = KidConfig::default();
    input_error(kid(&a, &wide, &config), "KID of 8 vs 9 dims", "9");
    input_error(kid(&a, &one_row, &config), "KID with a 1-row set", "1 fake rows");
    input_error(kid(&a, &a, &KidConfig { subsets: 0, ..config.clone() }), "KID with 0 subsets", "0");
    input_error(mmd2_unbiased(&a, &three_rows, &PolyKernel::default()), "MMD^2 of unequal sizes", "50 and 3");

    input_error(manifold(&a, &wide, 3), "manifold of 8 vs 9 dims", "9");
    input_error(manifold(&a, &three_rows, 3), "manifold with 3 fake rows, k=3", "fake set has 3 rows");
    input_error(manifold(&three_rows, &a, 3), "manifold with 3 real rows, k=3", "real set has 3 rows");
    input_error(manifold(&a, &a, 0), "manifold with k=0", "k");
}
