//! A decoded, preprocessed image kept in memory as 8-bit interleaved pixels (a quarter of the
//! memory of floats), converted to [-1, 1] floats only when a batch is assembled.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    /// Row-major, channels interleaved: `data[(y * width + x) * channels + c]`.
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn get(&self, x: u32, y: u32, c: u32) -> u8 {
        self.data[((y * self.width + x) * self.channels + c) as usize]
    }

    /// These pixels with `mask` (the same width and height) as one more channel, last.
    pub fn with_mask(&self, mask: &image::GrayImage) -> Pixels {
        let c = self.channels as usize;
        let data = self.data.chunks_exact(c).zip(mask.as_raw()).flat_map(|(p, &m)| p.iter().copied().chain(std::iter::once(m))).collect();
        Pixels { width: self.width, height: self.height, channels: self.channels + 1, data }
    }

    /// A `side` x `side` window at (x0, y0) as planar floats in [-1, 1] (C, H, W order).
    pub fn crop_to_planar(&self, x0: u32, y0: u32, side: u32) -> Vec<f32> {
        self.window_to_planar(x0, y0, side, side)
    }

    /// A `width` x `height` window at (x0, y0) as planar floats in [-1, 1] (C, H, W order).
    pub fn window_to_planar(&self, x0: u32, y0: u32, width: u32, height: u32) -> Vec<f32> {
        let (c, w, h) = (self.channels as usize, width as usize, height as usize);
        let mut out = vec![0f32; c * w * h];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let v = self.get(x0 + x as u32, y0 + y as u32, ch as u32);
                    out[ch * w * h + y * w + x] = f32::from(v) / 127.5 - 1.0;
                }
            }
        }
        out
    }
}
