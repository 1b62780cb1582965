//! The FID Inception-v3 against pytorch-fid 0.3.0 itself, on random weights (the real ones cannot
//! be downloaded here) saved in the real file's format. The fixture (made by
//! `tools/make_inception_fixtures.py fixtures`) holds the state-dict layout, a digest of the
//! random weights, recipes for the test images and pytorch-fid's features for them; this test
//! regenerates the weights with `tools/make_inception_fixtures.py weights` (needs only torch:
//! `$PYTHON`, default `python3`), loads them through the torch.save reader and compares.
//!
//! The fixture is parsed by the small JSON reader at the bottom because this crate has no
//! serde_json dev-dependency.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use difforge_nn::features::inception::FidInception;
use difforge_nn::NnError;
use tch::{Device, Kind, Tensor};

/// |rust - pytorch-fid| <= TOLERANCE * max|pytorch-fid| for every feature of every image. Both run
/// the same libtorch kernels; float32 against float64 differs by about 1e-6 on these images.
const TOLERANCE: f64 = 1e-4;

fn fixture() -> json::Value {
    json::parse(include_str!("../fixtures/inception.json"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn features_match_pytorch_fid() {
    let fx = fixture();
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.pth");
    let digest = write_random_weights(&weights);
    let recorded = fx.get("weights_content_sha256").str();
    assert_eq!(
        digest,
        recorded,
        "the random weights differ from those the fixture was made with (torch {} then, see `$PYTHON -c 'import \
         torch; print(torch.__version__)'` now): torch drew other numbers, so the features cannot match; \
         regenerate with `tools/make_inception_fixtures.py fixtures`",
        fx.get("torch_version").str()
    );
    let generated = start.elapsed();

    let net = FidInception::load(&weights, Device::Cpu).expect("the random FID weights load");
    let loaded = start.elapsed();

    let mut worst = (0.0f64, String::new());
    for (b, batch) in fx.get("batches").arr().iter().enumerate() {
        let images = batch_images(batch);
        let features = net.features(&images);
        let expected = batch.get("features").arr();
        assert_eq!(features.size(), [expected.len() as i64, 2048], "batch {b}");
        assert_eq!(features.kind(), Kind::Float);
        for (i, row) in expected.iter().enumerate() {
            let ours = Vec::<f32>::try_from(features.get(i as i64)).unwrap();
            let theirs: Vec<f64> = row.arr().iter().map(json::Value::num).collect();
            let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.1, "batch {b} image {i}: reference features are degenerate (max {scale})");
            let (at, diff) =
                ours.iter()
                    .zip(&theirs)
                    .map(|(&o, &t)| (f64::from(o) - t).abs())
                    .enumerate()
                    .fold((0, 0.0f64), |best, (k, d)| if d > best.1 { (k, d) } else { best });
            let rel = diff / scale;
            let shape = batch.get("shape").arr().iter().map(|v| v.num() as i64).collect::<Vec<_>>();
            let what = format!("batch {b} ({shape:?}) image {i}, feature {at}: {} vs {}", ours[at], theirs[at]);
            println!("{what}: relative error {rel:.3e}");
            assert!(rel <= TOLERANCE, "{what}: relative error {rel:.3e} > {TOLERANCE:e}");
            if rel >= worst.0 {
                worst = (rel, what);
            }
        }
    }
    println!(
        "worst relative error {:.3e} ({}); weights generated in {:.1?}, loaded in {:.1?}, features in {:.1?}",
        worst.0,
        worst.1,
        generated,
        loaded - generated,
        start.elapsed() - loaded
    );
}

/// Runs the fixture script's `weights` mode and returns the digest it reports.
fn write_random_weights(out: &Path) -> String {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = repo_root().join("tools/make_inception_fixtures.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg("weights")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (set PYTHON to a Python with torch, e.g. `source env.sh`): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "`{python} {} weights` failed ({}); it needs torch (set PYTHON, e.g. `source env.sh`):\n{}{}",
        script.display(),
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("content-sha256 "))
        .unwrap_or_else(|| panic!("the weights script printed no digest:\n{stdout}"))
        .trim()
        .to_string()
}

/// One batch of test images, rebuilt from its recipe exactly as the script builds it, and
/// checked against the recorded sum and samples.
fn batch_images(batch: &json::Value) -> Tensor {
    let shape: Vec<usize> = batch.get("shape").arr().iter().map(|v| v.num() as usize).collect();
    let (count, height, width) = (shape[0], shape[2], shape[3]);
    let first_pattern = batch.get("first_pattern").num() as usize;
    let first_index = batch.get("first_index").num() as u32;
    let mut values = Vec::with_capacity(count * 3 * height * width);
    for i in 0..count {
        for c in 0..3 {
            for y in 0..height {
                for x in 0..width {
                    let pattern = (first_pattern + i) % 4;
                    values.push(pixel(pattern, first_index + i as u32, c, y, x, height, width) as f32);
                }
            }
        }
    }
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    let recorded = batch.get("input_sum").num();
    assert!((sum - recorded).abs() <= 1e-9 * recorded.abs(), "test images differ from the script's: sum {sum} vs {recorded}");
    for sample in batch.get("input_samples").arr() {
        let (at, value) = (sample.arr()[0].num() as usize, sample.arr()[1].num());
        assert_eq!(f64::from(values[at]), value, "test image value {at} differs from the script's");
    }
    Tensor::from_slice(&values).view([count as i64, 3, height as i64, width as i64])
}

/// Mirror of `pixel_values` in tools/make_inception_fixtures.py: the same float64 operations in
/// the same order, so the same bits.
fn pixel(pattern: usize, n: u32, c: usize, y: usize, x: usize, height: usize, width: usize) -> f64 {
    let u = x as f64 / (width - 1) as f64;
    let v = y as f64 / (height - 1) as f64;
    let noise = f64::from(hash_u32(n, c as u32, y as u32, x as u32) >> 8) / 16777216.0;
    match pattern {
        0 => [u, v, u * v][c],
        1 => {
            let (du, dv) = (u - [0.3, 0.5, 0.7][c], v - [0.6, 0.4, 0.5][c]);
            1.0 - (du * du + dv * dv)
        }
        2 => noise,
        3 => {
            let stripes = ((x / (4 + c) + y / 7) % 2) as f64;
            0.25 * stripes + 0.5 * noise + 0.25 * v
        }
        _ => unreachable!("pattern {pattern}"),
    }
}

fn hash_u32(n: u32, c: u32, y: u32, x: u32) -> u32 {
    let mut h = n.wrapping_mul(73856093) ^ c.wrapping_mul(19349663) ^ y.wrapping_mul(83492791) ^ x.wrapping_mul(2654435761);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846CA68B);
    h ^= h >> 16;
    h
}

/// The layout of pytorch-fid's state dict, filled with zeros (keys in file order).
fn zero_state_dict(fx: &json::Value) -> Vec<(String, Tensor)> {
    fx.get("state_dict")
        .arr()
        .iter()
        .map(|entry| {
            let e = entry.arr();
            let shape: Vec<i64> = e[1].arr().iter().map(|v| v.num() as i64).collect();
            let kind = match e[2].str() {
                "float32" => Kind::Float,
                "int64" => Kind::Int64,
                other => panic!("unexpected dtype {other}"),
            };
            (e[0].str().to_string(), Tensor::zeros(shape, (kind, Device::Cpu)))
        })
        .collect()
}

fn load_error(tensors: Vec<(String, Tensor)>) -> String {
    match FidInception::from_state_dict(tensors, Device::Cpu) {
        Ok(_) => panic!("a wrong state dict was accepted"),
        Err(e @ NnError::Load { .. }) => e.to_string(),
        Err(e) => panic!("expected a load error, got {e}"),
    }
}

#[test]
fn state_dict_keys_and_shapes_are_checked() {
    let fx = fixture();
    let full = zero_state_dict(&fx);
    let copy =
        |keep: &dyn Fn(&str) -> bool| -> Vec<(String, Tensor)> { full.iter().filter(|(k, _)| keep(k)).map(|(k, t)| (k.clone(), t.shallow_clone())).collect() };

    // The exact layout of pytorch-fid's weight file loads, and so does it without the unused head
    // and BatchNorm counters.
    let net = FidInception::from_state_dict(copy(&|_| true), Device::Cpu).unwrap();
    assert_eq!(net.features(&Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu))).size(), [1, 2048]);
    FidInception::from_state_dict(copy(&|k| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked")), Device::Cpu).unwrap();

    let missing = "Mixed_6c.branch7x7dbl_3.bn.running_var";
    let msg = load_error(copy(&|k| k != missing));
    assert!(msg.contains(missing) && msg.contains("[160]"), "{msg}");

    let key = "Mixed_7c.branch3x3_2b.conv.weight";
    let mut wrong = copy(&|k| k != key);
    wrong.push((key.to_string(), Tensor::zeros([384, 384, 1, 3], (Kind::Float, Device::Cpu))));
    let msg = load_error(wrong);
    assert!(msg.contains(key) && msg.contains("[384, 384, 3, 1]") && msg.contains("[384, 384, 1, 3]"), "{msg}");

    // torchvision's ImageNet Inception: same main key names, but an auxiliary head and 1000 classes.
    let mut aux = copy(&|_| true);
    aux.push(("AuxLogits.conv0.conv.weight".to_string(), Tensor::zeros([128, 768, 1, 1], (Kind::Float, Device::Cpu))));
    let msg = load_error(aux);
    assert!(msg.contains("AuxLogits.conv0.conv.weight"), "{msg}");
    let mut imagenet = copy(&|k| !k.starts_with("fc."));
    imagenet.push(("fc.weight".to_string(), Tensor::zeros([1000, 2048], (Kind::Float, Device::Cpu))));
    let msg = load_error(imagenet);
    assert!(msg.contains("fc.weight") && msg.contains("1008"), "{msg}");
}

/// Just enough JSON for the fixture (objects, arrays, numbers, strings).
mod json {
    #[derive(Debug)]
    pub enum Value {
        Num(f64),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> &Value {
            match self {
                Value::Obj(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_else(|| panic!("fixture has no {key}")),
                other => panic!("expected an object with {key}, found {other:?}"),
            }
        }

        pub fn arr(&self) -> &[Value] {
            match self {
                Value::Arr(items) => items,
                other => panic!("expected an array, found {other:?}"),
            }
        }

        pub fn num(&self) -> f64 {
            match self {
                Value::Num(v) => *v,
                other => panic!("expected a number, found {other:?}"),
            }
        }

        pub fn str(&self) -> &str {
            match self {
                Value::Str(s) => s,
                other => panic!("expected a string, found {other:?}"),
            }
        }
    }

    pub fn parse(text: &str) -> Value {
        let mut p = Parser { bytes: text.as_bytes(), at: 0 };
        let value = p.value();
        p.skip_space();
        assert_eq!(p.at, p.bytes.len(), "trailing text in JSON");
        value
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn skip_space(&mut self) {
            while matches!(self.bytes.get(self.at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
                self.at += 1;
            }
        }

        fn next(&mut self) -> u8 {
            self.skip_space();
            let b = *self.bytes.get(self.at).expect("JSON ends early");
            self.at += 1;
            b
        }

        fn value(&mut self) -> Value {
            match self.next() {
                b'{' => {
                    let mut items = Vec::new();
                    self.skip_space();
                    if self.bytes[self.at] == b'}' {
                        self.at += 1;
                        return Value::Obj(items);
                    }
                    loop {
                        assert_eq!(self.next(), b'"', "JSON object key expected at {}", self.at);
                        let key = self.string();
                        assert_eq!(self.next(), b':', "JSON ':' expected at {}", self.at);
                        items.push((key, self.value()));
                        match self.next() {
                            b',' => {}
                            b'}' => return Value::Obj(items),
                            c => panic!("unexpected {:?} in JSON object at {}", c as char, self.at),
                        }
                    }
                }
                b'[' => {
                    let mut items = Vec::new();
                    self.skip_space();
                    if self.bytes[self.at] == b']' {
                        self.at += 1;
                        return Value::Arr(items);
                    }
                    loop {
                        items.push(self.value());
                        match self.next() {
                            b',' => {}
                            b']' => return Value::Arr(items),
                            c => panic!("unexpected {:?} in JSON array at {}", c as char, self.at),
                        }
                    }
                }
                b'"' => Value::Str(self.string()),
                _ => {
                    let start = self.at - 1;
                    while matches!(self.bytes.get(self.at), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                        self.at += 1;
                    }
                    let text = std::str::from_utf8(&self.bytes[start..self.at]).unwrap();
                    Value::Num(text.parse().unwrap_or_else(|_| panic!("bad JSON number {text:?}")))
                }
            }
        }

        /// The rest of a string whose opening quote was consumed.
        fn string(&mut self) -> String {
            let mut out = Vec::new();
            loop {
                let b = self.bytes[self.at];
                self.at += 1;
                match b {
                    b'"' => return String::from_utf8(out).expect("JSON strings are UTF-8"),
                    b'\\' => {
                        let e = self.bytes[self.at];
                        self.at += 1;
                        let c = match e {
                            b'n' => '\n',
                            b't' => '\t',
                            b'r' => '\r',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'u' => {
                                let hex = std::str::from_utf8(&self.bytes[self.at..self.at + 4]).unwrap();
                                self.at += 4;
                                char::from_u32(u32::from_str_radix(hex, 16).unwrap()).expect("no surrogates in the fixture")
                            }
                            other => other as char,
                        };
                        out.extend_from_slice(c.to_string().as_bytes());
                    }
                    other => out.push(other),
                }
            }
        }
    }
}
