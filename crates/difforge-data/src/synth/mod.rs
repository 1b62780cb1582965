//! Synthetic captioned datasets, generated from a seed: small, fully known sets whose captions
//! can be checked against the pixels (see the shape judge in difforge-eval), for measuring whether
//! a text-to-image model draws what it is asked for.

pub mod attributes;
pub mod raster;
pub mod shapes;

pub use attributes::{Background, Colour, Combo, Kind, Named, Position, Shape, Size};
pub use shapes::{default_withhold, generate, parse_withhold, render, ShapesConfig, ShapesManifest, ShapesReport};
