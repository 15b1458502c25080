//! The ViT image encoder of SAM and MedSAM (ViT-B: image 1024², patch 16,
//! width 768, 12 blocks of 12 heads; global attention in blocks 2, 5, 8, 11,
//! 14×14 windows elsewhere; decomposed relative position biases; SAM's neck to
//! a 256-channel 64×64 embedding).
//!
//! Global attention over 64×64 tokens would need a `[12, 4096, 4096]` bias
//! (≈ 0.8 GB); queries are processed in chunks of image rows so that one
//! chunk's bias stays under [`VitConfig::max_bias_bytes`] (default [`BIAS_CHUNK_BYTES`]).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::common::{INIT, MlpBlock, Neck, linear};

/// Default upper bound of the attention-bias memory of one query chunk (global attention).
pub const BIAS_CHUNK_BYTES: usize = 64 << 20;

/// Sizes of a ViT encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Input image side (square), pixels.
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
    pub out_chans: usize,
    /// Window side of the windowed blocks (tokens).
    pub window_size: usize,
    /// Blocks with global attention.
    pub global_attn_indexes: Vec<usize>,
    /// Upper bound of the attention-bias memory of one query chunk.
    pub max_bias_bytes: usize,
}

impl VitConfig {
    /// SAM / MedSAM ViT-B.
    pub fn vit_b() -> Self {
        Self {
            img_size: 1024,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4,
            out_chans: 256,
            window_size: 14,
            global_attn_indexes: vec![2, 5, 8, 11],
            max_bias_bytes: BIAS_CHUNK_BYTES,
        }
    }

    /// Side of the token grid (= of the output embedding).
    pub fn embedding_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Build the encoder (parameters zero until loaded).
    pub fn init(&self, device: &Device) -> Vit {
        let g = self.embedding_size();
        let d = self.embed_dim;
        let p = self.patch_size;
        Vit {
            patch_embed: VitPatchEmbed {
                proj: Conv2dConfig::new([self.in_chans, d], [p, p])
                    .with_stride([p, p])
                    .with_initializer(INIT)
                    .init(device),
            },
            pos_embed: INIT.init([1, g, g, d], device),
            blocks: (0..self.depth)
                .map(|i| {
                    let window = if self.global_attn_indexes.contains(&i) {
                        0
                    } else {
                        self.window_size
                    };
                    let side = if window == 0 { g } else { window };
                    let ln = || LayerNormConfig::new(d).with_epsilon(1e-6).init(device);
                    VitBlock {
                        norm1: ln(),
                        attn: VitAttention {
                            qkv: linear(d, 3 * d, device),
                            proj: linear(d, d, device),
                            rel_pos_h: INIT.init([2 * side - 1, d / self.num_heads], device),
                            rel_pos_w: INIT.init([2 * side - 1, d / self.num_heads], device),
                            num_heads: self.num_heads,
                            max_bias_bytes: self.max_bias_bytes,
                        },
                        norm2: ln(),
                        mlp: MlpBlock::new(d, d * self.mlp_ratio, device),
                        window_size: window,
                    }
                })
                .collect(),
            neck: Neck::new(d, self.out_chans, device),
        }
    }
}

/// The ViT image encoder.
#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: VitPatchEmbed,
    /// `[1, G, G, D]` absolute position embedding.
    pub pos_embed: Param<Tensor<4>>,
    pub blocks: Vec<VitBlock>,
    pub neck: Neck,
}

impl Vit {
    /// Image `[B, 3, S, S]` (normalised) → embedding `[B, 256, S/16, S/16]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let mut x = self.patch_embed.forward(image) + self.pos_embed.val();
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.neck.forward(x.permute([0, 3, 1, 2]))
    }
}

/// Non-overlapping patches → tokens, channels last.
#[derive(Module, Debug)]
pub struct VitPatchEmbed {
    pub proj: Conv2d,
}

impl VitPatchEmbed {
    /// `[B, 3, S, S] → [B, G, G, D]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.proj.forward(x).permute([0, 2, 3, 1])
    }
}

/// Pre-norm transformer block, windowed (`window_size > 0`) or global attention.
#[derive(Module, Debug)]
pub struct VitBlock {
    pub norm1: LayerNorm,
    pub attn: VitAttention,
    pub norm2: LayerNorm,
    pub mlp: MlpBlock,
    pub window_size: usize,
}

impl VitBlock {
    /// Tokens `[B, H, W, D]` → same shape.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, d] = x.dims();
        let y = self.norm1.forward(x.clone());
        let y = if self.window_size == 0 {
            self.attn.forward(y)
        } else {
            let ws = self.window_size;
            let (pad_h, pad_w) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
            let (ph, pw) = (h + pad_h, w + pad_w);
            let (nh, nw) = (ph / ws, pw / ws);
            let y = if pad_h > 0 || pad_w > 0 {
                y.pad([(0, pad_h), (0, pad_w), (0, 0)], PadMode::Constant(0.0))
            } else {
                y
            };
            let windows =
                y.reshape([b, nh, ws, nw, ws, d])
                    .swap_dims(2, 3)
                    .reshape([b * nh * nw, ws, ws, d]);
            let out = self
                .attn
                .forward(windows)
                .reshape([b, nh, nw, ws, ws, d])
                .swap_dims(2, 3)
                .reshape([b, ph, pw, d]);
            if pad_h > 0 || pad_w > 0 {
                out.slice([0..b, 0..h, 0..w, 0..d])
            } else {
                out
            }
        };
        let x = x + y;
        x.clone() + self.mlp.forward_gelu(self.norm2.forward(x))
    }
}

/// Multi-head self-attention over a token grid with decomposed relative position
/// biases (one table for row offsets, one for column offsets).
#[derive(Module, Debug)]
pub struct VitAttention {
    pub qkv: Linear,
    pub proj: Linear,
    /// `[2·H − 1, head_dim]`.
    pub rel_pos_h: Param<Tensor<2>>,
    /// `[2·W − 1, head_dim]`.
    pub rel_pos_w: Param<Tensor<2>>,
    pub num_heads: usize,
    pub max_bias_bytes: usize,
}

/// `table[q − k + n − 1]` for every (q, k) pair: `[n, n, C]`.
fn rel_pos_table(table: Tensor<2>, n: usize) -> Tensor<3> {
    let c = table.dims()[1];
    let idx: Vec<i64> = (0..n)
        .flat_map(|q| (0..n).map(move |k| (q + n - 1 - k) as i64))
        .collect();
    let device = table.device();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n * n]), &device);
    table.select(0, idx).reshape([n, n, c])
}

impl VitAttention {
    /// Tokens `[B, H, W, D]` → same shape.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, d] = x.dims();
        let heads = self.num_heads;
        let hd = d / heads;
        let n = h * w;
        // [B, N, 3, heads, hd] → [3, B, heads, N, hd]
        let qkv = self
            .qkv
            .forward(x.reshape([b, n, d]))
            .reshape([b, n, 3, heads, hd])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..b, 0..heads, 0..n, 0..hd])
                .reshape([b, heads, n, hd])
        };
        let (q, k, v) = (part(0), part(1), part(2));

        // Decomposed relative position terms: rel_h[b, qh, qw, kh], rel_w[b, qh, qw, kw].
        let bh = b * heads;
        let rq = q.clone().reshape([bh, h, w, hd]);
        let rh = rel_pos_table(self.rel_pos_h.val(), h); // [h(q), h(k), hd]
        let rw = rel_pos_table(self.rel_pos_w.val(), w); // [w(q), w(k), hd]
        let rel_h = rq
            .clone()
            .swap_dims(0, 1)
            .reshape([h, bh * w, hd])
            .matmul(rh.swap_dims(1, 2))
            .reshape([h, bh, w, h])
            .swap_dims(0, 1); // [bh, qh, qw, kh]
        let rel_w = rq
            .permute([2, 0, 1, 3])
            .reshape([w, bh * h, hd])
            .matmul(rw.swap_dims(1, 2))
            .reshape([w, bh, h, w])
            .permute([1, 2, 0, 3]); // [bh, qh, qw, kw]

        let options = AttentionModuleOptions {
            scale: Some((hd as f64).powf(-0.5)),
            ..Default::default()
        };
        // Queries in chunks of whole image rows to bound the bias memory.
        let row_bytes = bh * w * n * 4;
        let rows = (self.max_bias_bytes / row_bytes.max(1)).clamp(1, h);
        let mut outs = Vec::new();
        let mut r0 = 0;
        while r0 < h {
            let r1 = (r0 + rows).min(h);
            let nq = (r1 - r0) * w;
            let bias =
                rel_h
                    .clone()
                    .slice([0..bh, r0..r1, 0..w, 0..h])
                    .reshape([bh, r1 - r0, w, h, 1])
                    + rel_w.clone().slice([0..bh, r0..r1, 0..w, 0..w]).reshape([
                        bh,
                        r1 - r0,
                        w,
                        1,
                        w,
                    ]);
            let bias = bias.reshape([b, heads, nq, n]);
            let qc = q.clone().slice([0..b, 0..heads, r0 * w..r1 * w, 0..hd]);
            outs.push(attention(
                qc,
                k.clone(),
                v.clone(),
                None,
                Some(bias),
                options,
            ));
            r0 = r1;
        }
        let out = Tensor::cat(outs, 2); // [B, heads, N, hd]
        self.proj.forward(out.swap_dims(1, 2).reshape([b, h, w, d]))
    }
}
