use tch::Tensor;

difforge_core::choice! {
    /// The non-linearity used throughout a network.
    pub enum Activation {
        Silu = "silu",
        Gelu = "gelu",
        Mish = "mish",
    }
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu("none"),
            Activation::Mish => x.mish(),
        }
    }
}
