//! `sample.cuda_graphs`: the network's forward pass of a sampling run captured in a CUDA graph at
//! its first step and replayed at every later one, so a step costs one launch instead of one per
//! kernel (what dominates small networks on fast cards).
//!
//! The graphs live for one [`generate`](crate::generate::generate) call: they read the model's
//! weights where they are, so a graph kept longer could outlive weights that a reload or a merge
//! replaced. A run captures one graph per input shape it meets (the conditional batch, and the
//! doubled batch of classifier-free guidance), at most [`MAX_GRAPHS`].
//!
//! A captured graph is trusted only after its first replay matched the eager forward pass on the
//! same inputs; a capture that fails or disagrees turns the graphs off for the rest of the call,
//! with a warning, and the eager result is used.

use difforge_diffusion::Denoiser;
use difforge_native::CudaGraph;
use difforge_nn::Conditioning;
use std::cell::{Cell, RefCell};
use tch::{Device, Kind, Tensor};

/// Input shapes captured per call, at most: a sampling run meets one or two.
const MAX_GRAPHS: usize = 4;
/// Eager forward passes before a capture (cuDNN's algorithm choice and workspaces happen there).
const WARMUP: usize = 2;
/// How far a replay may be from the eager forward pass, relative to the largest output value.
const AGREEMENT: f64 = 1e-3;

/// One captured forward pass and its static inputs and output.
struct Captured {
    graph: CudaGraph,
    x: Tensor,
    t: Tensor,
    cond: Conditioning,
    out: Tensor,
}

impl Captured {
    fn fits(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> bool {
        let sig = |ts: Vec<&Tensor>| ts.iter().map(|t| (t.size(), t.kind())).collect::<Vec<_>>();
        sig(vec![&self.x, &self.t]) == sig(vec![x, t]) && sig(self.cond.tensors()) == sig(cond.tensors())
    }

    /// Copies the inputs in, replays, and returns a copy of the output (the next replay
    /// overwrites the graph's own).
    fn run(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor, String> {
        let pairs = [(&self.x, x), (&self.t, t)].into_iter().chain(self.cond.tensors().into_iter().zip(cond.tensors()));
        for (dst, src) in pairs {
            dst.shallow_clone().copy_(src);
        }
        self.graph.replay().map_err(|e| e.to_string())?;
        Ok(self.out.copy())
    }
}

/// A denoiser (a model's, or a Stable Diffusion pipeline's UNet) whose forward passes replay
/// CUDA graphs.
pub struct GraphedDenoiser<D: Denoiser> {
    inner: D,
    device: usize,
    graphs: RefCell<Vec<Captured>>,
    /// Set when a capture failed or disagreed: eager from then on.
    off: Cell<bool>,
}

impl<D: Denoiser> GraphedDenoiser<D> {
    /// Graphs over `inner` on `device`; None (with a warning) when the device is not CUDA.
    pub fn new(inner: D, device: Device) -> Option<GraphedDenoiser<D>> {
        match device {
            Device::Cuda(n) => Some(GraphedDenoiser { inner, device: n, graphs: RefCell::new(Vec::new()), off: Cell::new(false) }),
            other => {
                tracing::warn!("sample.cuda_graphs: sampling on {other:?}, not a CUDA device; running eagerly");
                None
            }
        }
    }

    /// Captures the forward pass for these inputs' shapes; returns the eager output of the same
    /// inputs (this step's prediction) once the replay matched it.
    fn capture(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<(Captured, Tensor), String> {
        let (sx, st, sc) = (x.copy(), t.copy(), cond.copy());
        let mut out = None;
        let graph = CudaGraph::capture(self.device, WARMUP, || {
            out = Some(self.inner.predict(&sx, &st, &sc));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        let out = out.ok_or("the capture ran nothing")?;
        let captured = Captured { graph, x: sx, t: st, cond: sc, out };
        let eager = self.inner.predict(x, t, cond);
        let replayed = captured.run(x, t, cond)?;
        let scale = eager.abs().max().double_value(&[]).max(1e-12);
        let diff = (&replayed - &eager).abs().max().to_kind(Kind::Double).double_value(&[]);
        // A NaN difference fails too.
        if diff.is_nan() || diff > AGREEMENT * scale {
            return Err(format!("the graph's output differs from the eager forward pass by {diff} (largest value {scale})"));
        }
        Ok((captured, eager))
    }
}

impl<D: Denoiser> Denoiser for GraphedDenoiser<D> {
    fn predict(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        if self.off.get() {
            return self.inner.predict(x, t, cond);
        }
        if let Some(g) = self.graphs.borrow().iter().find(|g| g.fits(x, t, cond)) {
            match g.run(x, t, cond) {
                Ok(out) => return out,
                Err(e) => tracing::warn!("sample.cuda_graphs: a replay failed ({e}); running eagerly"),
            }
            self.off.set(true);
            return self.inner.predict(x, t, cond);
        }
        if self.graphs.borrow().len() >= MAX_GRAPHS {
            return self.inner.predict(x, t, cond);
        }
        match self.capture(x, t, cond) {
            Ok((captured, out)) => {
                self.graphs.borrow_mut().push(captured);
                out
            }
            Err(e) => {
                tracing::warn!("sample.cuda_graphs: {e}; running eagerly");
                self.off.set(true);
                self.inner.predict(x, t, cond)
            }
        }
    }

    fn prepare(&self, cond: &Conditioning) -> Option<Conditioning> {
        self.inner.prepare(cond)
    }
}
