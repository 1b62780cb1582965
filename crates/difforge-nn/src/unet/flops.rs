//! FLOPs of one forward pass of the UNet, counted block by block from its config, so that a
//! benchmark's throughput can be put against a card's peak (model FLOPs utilisation). Checked
//! against PyTorch's FlopCounterMode on the reference UNet.

use super::UNetConfig;

/// FLOPs of 3x3 / 1x1 convolutions and linears, multiply-adds counted as 2.
fn conv(cin: i64, cout: i64, k: i64, side: i64) -> f64 {
    2.0 * (cin * cout * k * k) as f64 * (side * side) as f64
}

fn linear(cin: i64, cout: i64, tokens: i64) -> f64 {
    2.0 * (cin * cout) as f64 * tokens as f64
}

/// A residual block from `cin` to `cout` channels at `side` x `side`.
fn resblock(c: &UNetConfig, cin: i64, cout: i64, side: i64) -> f64 {
    let emb_out = if c.scale_shift { 2 * cout } else { cout };
    let skip = if cin != cout { conv(cin, cout, 1, side) } else { 0.0 };
    conv(cin, cout, 3, side) + linear(c.embed_dim(), emb_out, 1) + conv(cout, cout, 3, side) + skip
}

/// Self-attention over `side` x `side` tokens of `ch` channels: q, k, v and out projections,
/// then QK^T and AV (2 x 2 N^2 C summed over the heads).
fn attention(ch: i64, side: i64) -> f64 {
    let n = side * side;
    4.0 * linear(ch, ch, n) + 2.0 * 2.0 * (n * n) as f64 * ch as f64
}

/// FLOPs of one forward pass of the UNet for one image, block by block as
/// `UNet::new` builds it. The config must be resolved (channels and size known).
pub fn unet_forward_flops(c: &UNetConfig) -> f64 {
    let emb = c.embed_dim();
    let sides = c.level_sides();
    let levels = c.channel_mult.len();
    let size = c.image_size;
    // Time embedding MLP (the class embedding is a lookup).
    let mut f = linear(c.channels, emb, 1) + linear(emb, emb, 1);
    f += conv(c.in_channels, c.channels, 3, size);
    let mut skips = vec![c.channels];
    let mut ch = c.channels;
    for (i, &side) in sides.iter().enumerate() {
        let out = c.level_channels(i);
        for _ in 0..c.res_blocks {
            f += resblock(c, ch, out, side);
            if c.attention_resolutions.contains(&side) {
                f += attention(out, side);
            }
            ch = out;
            skips.push(ch);
        }
        if i + 1 < levels {
            // Stride-2 3x3 conv: its output is half the side.
            f += conv(ch, ch, 3, side / 2);
            skips.push(ch);
        }
    }
    let low = sides[levels - 1];
    f += 2.0 * resblock(c, ch, ch, low);
    if c.mid_attention {
        f += attention(ch, low);
    }
    for i in (0..levels).rev() {
        let out = c.level_channels(i);
        for _ in 0..=c.res_blocks {
            let skip = skips.pop().unwrap_or(0);
            f += resblock(c, ch + skip, out, sides[i]);
            if c.attention_resolutions.contains(&sides[i]) {
                f += attention(out, sides[i]);
            }
            ch = out;
        }
        if i > 0 {
            // Nearest x2, then a 3x3 conv at the doubled side.
            f += conv(ch, ch, 3, sides[i] * 2);
        }
    }
    f + conv(ch, c.out_channels, 3, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One level of 8 channels at 4x4, one residual block, no attention, additive conditioning,
    /// one input and output channel.
    fn one_level() -> UNetConfig {
        UNetConfig {
            channels: 8,
            channel_mult: vec![1],
            res_blocks: 1,
            attention_resolutions: vec![],
            mid_attention: false,
            scale_shift: false,
            heads: 1,
            groups: 4,
            in_channels: 1,
            out_channels: 1,
            image_size: 4,
            ..Default::default()
        }
    }

    #[test]
    fn flops_of_a_one_level_unet_by_hand() {
        // Embedding width 32, 16 pixels.
        let time_mlp = 2 * (8 * 32 + 32 * 32); // 2,560
        let conv_in = 2 * 8 * 9 * 16; // 2,304
        let res_8_8 = 2 * 8 * 8 * 9 * 16 + 2 * 32 * 8 + 2 * 8 * 8 * 9 * 16; // 37,376
                                                                            // Up path: two blocks of 16 -> 8 channels (skip concatenated), with a 1x1 skip conv.
        let res_16_8 = 2 * 16 * 8 * 9 * 16 + 2 * 32 * 8 + 2 * 8 * 8 * 9 * 16 + 2 * 16 * 8 * 16; // 59,904
        let conv_out = 2 * 8 * 9 * 16; // 2,304
        let want = time_mlp + conv_in + res_8_8 + 2 * res_8_8 + 2 * res_16_8 + conv_out;
        assert_eq!(want, 239_104);
        assert_eq!(unet_forward_flops(&one_level()), want as f64);
    }

    #[test]
    fn attention_scale_shift_and_levels_add_what_they_should() {
        let base = unet_forward_flops(&one_level());
        // Middle attention at 4x4 with 8 channels: four 8x8 projections of 16 tokens, plus
        // QK^T and AV: 2 * 2 * 16^2 * 8.
        let with_attn = unet_forward_flops(&UNetConfig { mid_attention: true, ..one_level() });
        assert_eq!(with_attn - base, (4 * 2 * 8 * 8 * 16 + 2 * 2 * 256 * 8) as f64);
        // Scale-shift doubles each of the 5 blocks' embedding projections (32 -> 16, not 8).
        let ss = unet_forward_flops(&UNetConfig { scale_shift: true, ..one_level() });
        assert_eq!(ss - base, (5 * 2 * 32 * 8) as f64);
        // A second level at 2x2 with 16 channels: downsample 8->8 (2x2 output), down block
        // 8->16 at 2x2 (with 1x1 skip), the middle now at 16 channels 2x2, the up path of
        // level 1 (2 blocks, 32->16 and 24->16 with skips) and its upsample conv (16 at 4x4),
        // then level 0's up path taking 16+8, then 8+8 channels.
        let two = UNetConfig { channel_mult: vec![1, 2], ..one_level() };
        let cfg = &two;
        let want = (2 * (8 * 32 + 32 * 32)) as f64
            + conv(1, 8, 3, 4)
            + resblock(cfg, 8, 8, 4)
            + conv(8, 8, 3, 2)
            + resblock(cfg, 8, 16, 2)
            + 2.0 * resblock(cfg, 16, 16, 2)
            + resblock(cfg, 32, 16, 2)
            + resblock(cfg, 24, 16, 2)
            + conv(16, 16, 3, 4)
            + resblock(cfg, 24, 8, 4)
            + resblock(cfg, 16, 8, 4)
            + conv(8, 1, 3, 4);
        assert_eq!(unet_forward_flops(&two), want);
    }

    #[test]
    fn reference_preset_flops_match_pytorchs_flop_counter() {
        // torch.utils.flop_counter.FlopCounterMode on one forward of the reference UNet(64) at
        // batch 1 (tools/bench_torch.py prints it): 2,839,347,200.
        let mut c = UNetConfig::preset("ref6m").expect("preset");
        c.out_channels = 3;
        assert_eq!(unet_forward_flops(&c), 2_839_347_200.0);
    }
}
