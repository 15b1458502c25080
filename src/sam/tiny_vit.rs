//! TinyViT image encoder of LiteMedSAM (MobileSAM's TinyViT as adapted by
//! LiteMedSAM: a 1×1-conv patch embedding that keeps the full 256² resolution,
//! one MBConv stage, three windowed-attention stages with learned relative
//! position biases, and SAM's neck to a 256-channel 64×64 embedding).
//!
//! Data flow for the LiteMedSAM configuration (`[B, C, H, W]`):
//! image 3×256² → patch embed 64×256² → stage 0 (MBConv) → merge 128×128²
//! → stage 1 (windows 7) → merge 160×64² → stage 2 (windows 14) → merge
//! 320×64² (stride 1) → stage 3 (windows 7) → neck 256×64².

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, PadMode};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::common::{ConvBn, ConvSpec, INIT, Neck, linear};
use crate::device::no_pause;

/// Sizes of a TinyViT encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyVitConfig {
    /// Input image side (square), pixels.
    pub img_size: usize,
    pub in_chans: usize,
    pub embed_dims: [usize; 4],
    pub depths: [usize; 4],
    /// Attention heads of stages 1-3 (stage 0 is convolutional).
    pub num_heads: [usize; 4],
    pub window_sizes: [usize; 4],
    pub mlp_ratio: usize,
    pub mbconv_expand_ratio: usize,
    pub local_conv_size: usize,
    /// Channels of the output embedding (the neck).
    pub out_chans: usize,
}

impl TinyVitConfig {
    /// LiteMedSAM's encoder (img 256, dims [64,128,160,320], depths [2,2,6,2]).
    pub fn lite_medsam() -> Self {
        Self {
            img_size: 256,
            in_chans: 3,
            embed_dims: [64, 128, 160, 320],
            depths: [2, 2, 6, 2],
            num_heads: [2, 4, 5, 10],
            window_sizes: [7, 7, 14, 7],
            mlp_ratio: 4,
            mbconv_expand_ratio: 4,
            local_conv_size: 3,
            out_chans: 256,
        }
    }

    /// Input side length of stage `i` (the 1×1 patch embedding keeps the image size;
    /// stages 1 and 2 halve it; stage 3 keeps stage 2's).
    fn stage_resolution(&self, i: usize) -> usize {
        let halvings = if i == 3 { 2 } else { i };
        self.img_size >> halvings
    }

    /// Side length of the output embedding.
    pub fn embedding_size(&self) -> usize {
        self.stage_resolution(3)
    }

    /// Build the encoder (parameters zero until loaded).
    pub fn init(&self, device: &Device) -> TinyVit {
        let d = self.embed_dims;
        let patch_embed = PatchEmbed {
            conv1: ConvBn::new(self.in_chans, d[0] / 2, ConvSpec::POINTWISE, device),
            conv2: ConvBn::new(d[0] / 2, d[0], ConvSpec::POINTWISE, device),
        };
        let hidden = d[0] * self.mbconv_expand_ratio;
        let stage0 = ConvStage {
            blocks: (0..self.depths[0])
                .map(|_| MbConv {
                    conv1: ConvBn::new(d[0], hidden, ConvSpec::POINTWISE, device),
                    conv2: ConvBn::new(hidden, hidden, ConvSpec::depthwise3(hidden, 1), device),
                    conv3: ConvBn::new(hidden, d[0], ConvSpec::POINTWISE, device),
                })
                .collect(),
            downsample: PatchMerging::new(d[0], d[1], device),
        };
        let stage = |i: usize| AttnStage {
            blocks: (0..self.depths[i])
                .map(|_| TinyVitBlock::new(self, i, device))
                .collect(),
            downsample: (i < 3).then(|| PatchMerging::new(d[i], d[i + 1], device)),
            resolution: self.stage_resolution(i),
        };
        TinyVit {
            patch_embed,
            stage0,
            stage1: stage(1),
            stage2: stage(2),
            stage3: stage(3),
            neck: Neck::new(d[3], self.out_chans, device),
        }
    }
}

/// The TinyViT image encoder.
#[derive(Module, Debug)]
pub struct TinyVit {
    pub patch_embed: PatchEmbed,
    pub stage0: ConvStage,
    pub stage1: AttnStage,
    pub stage2: AttnStage,
    pub stage3: AttnStage,
    pub neck: Neck,
}

impl TinyVit {
    /// Fold every batch norm into its convolution (inference only; see [`ConvBn::fold_batch_norm`]).
    pub fn fold_batch_norms(self) -> Self {
        let merge = |m: PatchMerging| PatchMerging {
            conv1: m.conv1.fold_batch_norm(),
            conv2: m.conv2.fold_batch_norm(),
            conv3: m.conv3.fold_batch_norm(),
        };
        let stage = |s: AttnStage| AttnStage {
            blocks: s
                .blocks
                .into_iter()
                .map(|b| TinyVitBlock {
                    local_conv: b.local_conv.fold_batch_norm(),
                    ..b
                })
                .collect(),
            downsample: s.downsample.map(merge),
            resolution: s.resolution,
        };
        Self {
            patch_embed: PatchEmbed {
                conv1: self.patch_embed.conv1.fold_batch_norm(),
                conv2: self.patch_embed.conv2.fold_batch_norm(),
            },
            stage0: ConvStage {
                blocks: self
                    .stage0
                    .blocks
                    .into_iter()
                    .map(|b| MbConv {
                        conv1: b.conv1.fold_batch_norm(),
                        conv2: b.conv2.fold_batch_norm(),
                        conv3: b.conv3.fold_batch_norm(),
                    })
                    .collect(),
                downsample: merge(self.stage0.downsample),
            },
            stage1: stage(self.stage1),
            stage2: stage(self.stage2),
            stage3: stage(self.stage3),
            neck: self.neck,
        }
    }

    /// Image `[B, 3, S, S]` (S = img_size, values in [0, 1]) → embedding `[B, 256, S/4, S/4]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        pollster::block_on(self.forward_pausing(image, &mut no_pause))
    }

    /// [`Self::forward`], awaiting `pause()` after the patch embedding and after every
    /// block and patch merging (17 times for LiteMedSAM): where the backend computes
    /// synchronously (the CPU backend in the browser), the caller lets the page run there.
    pub async fn forward_pausing<F: Future<Output = ()>>(
        &self,
        image: Tensor<4>,
        pause: &mut impl FnMut() -> F,
    ) -> Tensor<4> {
        let x = self.patch_embed.forward(image);
        pause().await;
        let x = self.stage0.forward_pausing(x, pause).await;
        let x = self.stage1.forward_pausing(x, pause).await;
        let x = self.stage2.forward_pausing(x, pause).await;
        let x = self.stage3.forward_pausing(x, pause).await;
        self.neck.forward(x)
    }
}

/// Two 1×1 conv-BN layers with GELU between them (no downsampling).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
}

impl PatchEmbed {
    /// `[B, 3, S, S] → [B, D0, S, S]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv2.forward(gelu(self.conv1.forward(x)))
    }
}

/// Inverted residual block: 1×1 expand, 3×3 depthwise, 1×1 project, residual, GELU.
#[derive(Module, Debug)]
pub struct MbConv {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub conv3: ConvBn,
}

impl MbConv {
    /// `[B, C, H, W] → [B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = gelu(self.conv1.forward(x.clone()));
        let y = gelu(self.conv2.forward(y));
        let y = self.conv3.forward(y);
        gelu(y + x)
    }
}

/// 1×1 conv, strided 3×3 depthwise conv, 1×1 conv (GELU after the first two).
#[derive(Module, Debug)]
pub struct PatchMerging {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub conv3: ConvBn,
}

impl PatchMerging {
    /// `dim → out_dim`; stride 2, except 1 for out_dim 320/448/576 (as the reference).
    fn new(dim: usize, out_dim: usize, device: &Device) -> Self {
        let stride = if matches!(out_dim, 320 | 448 | 576) {
            1
        } else {
            2
        };
        Self {
            conv1: ConvBn::new(dim, out_dim, ConvSpec::POINTWISE, device),
            conv2: ConvBn::new(
                out_dim,
                out_dim,
                ConvSpec::depthwise3(out_dim, stride),
                device,
            ),
            conv3: ConvBn::new(out_dim, out_dim, ConvSpec::POINTWISE, device),
        }
    }

    /// `[B, C, H, W] → [B, C', H/stride, W/stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = gelu(self.conv1.forward(x));
        let x = gelu(self.conv2.forward(x));
        self.conv3.forward(x)
    }
}

/// Stage 0: MBConv blocks then patch merging.
#[derive(Module, Debug)]
pub struct ConvStage {
    pub blocks: Vec<MbConv>,
    pub downsample: PatchMerging,
}

impl ConvStage {
    /// `[B, C, H, W] → [B, C', H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        pollster::block_on(self.forward_pausing(x, &mut no_pause))
    }

    /// [`Self::forward`] with `pause()` awaited after each block and the merging.
    pub async fn forward_pausing<F: Future<Output = ()>>(
        &self,
        mut x: Tensor<4>,
        pause: &mut impl FnMut() -> F,
    ) -> Tensor<4> {
        for block in &self.blocks {
            x = block.forward(x);
            pause().await;
        }
        let x = self.downsample.forward(x);
        pause().await;
        x
    }
}

/// Stages 1-3: TinyViT blocks on tokens, then (stages 1, 2) patch merging.
#[derive(Module, Debug)]
pub struct AttnStage {
    pub blocks: Vec<TinyVitBlock>,
    pub downsample: Option<PatchMerging>,
    pub resolution: usize,
}

impl AttnStage {
    /// `[B, C, H, W] → [B, C', H', W']` (tokens inside the stage).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        pollster::block_on(self.forward_pausing(x, &mut no_pause))
    }

    /// [`Self::forward`] with `pause()` awaited after each block and the merging.
    pub async fn forward_pausing<F: Future<Output = ()>>(
        &self,
        x: Tensor<4>,
        pause: &mut impl FnMut() -> F,
    ) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        debug_assert_eq!((h, w), (self.resolution, self.resolution));
        let mut t = x.reshape([b, c, h * w]).swap_dims(1, 2);
        for block in &self.blocks {
            t = block.forward(t, h, w);
            pause().await;
        }
        let x = t.swap_dims(1, 2).reshape([b, c, h, w]);
        match &self.downsample {
            Some(m) => {
                let x = m.forward(x);
                pause().await;
                x
            }
            None => x,
        }
    }
}

/// Windowed attention with a relative position bias, a depthwise 3×3 "local
/// conv" between attention and MLP, both with residuals.
#[derive(Module, Debug)]
pub struct TinyVitBlock {
    pub attn: WindowAttention,
    pub local_conv: ConvBn,
    pub mlp: TinyMlp,
    pub window_size: usize,
}

impl TinyVitBlock {
    fn new(cfg: &TinyVitConfig, stage: usize, device: &Device) -> Self {
        let dim = cfg.embed_dims[stage];
        let ws = cfg.window_sizes[stage];
        let k = cfg.local_conv_size;
        Self {
            attn: WindowAttention::new(dim, cfg.num_heads[stage], ws, device),
            local_conv: ConvBn::new(
                dim,
                dim,
                ConvSpec {
                    kernel: k,
                    stride: 1,
                    padding: k / 2,
                    groups: dim,
                },
                device,
            ),
            mlp: TinyMlp {
                norm: LayerNormConfig::new(dim).init(device),
                fc1: linear(dim, dim * cfg.mlp_ratio, device),
                fc2: linear(dim * cfg.mlp_ratio, dim, device),
            },
            window_size: ws,
        }
    }

    /// Tokens `[B, H·W, C]` of an `H × W` grid → same shape.
    pub fn forward(&self, x: Tensor<3>, h: usize, w: usize) -> Tensor<3> {
        let [b, l, c] = x.dims();
        let ws = self.window_size;
        let attended = if h == ws && w == ws {
            self.attn.forward(x.clone())
        } else {
            // Zero-pad bottom/right to whole windows; the padded tokens take part in
            // attention as keys exactly as in the reference (no mask).
            let (pad_b, pad_r) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
            let (ph, pw) = (h + pad_b, w + pad_r);
            let (nh, nw) = (ph / ws, pw / ws);
            let grid = x.clone().reshape([b, h, w, c]);
            let grid = if pad_b > 0 || pad_r > 0 {
                grid.pad([(0, pad_b), (0, pad_r), (0, 0)], PadMode::Constant(0.0))
            } else {
                grid
            };
            let windows = grid
                .reshape([b, nh, ws, nw, ws, c])
                .swap_dims(2, 3)
                .reshape([b * nh * nw, ws * ws, c]);
            let out = self.attn.forward(windows);
            let grid = out
                .reshape([b, nh, nw, ws, ws, c])
                .swap_dims(2, 3)
                .reshape([b, ph, pw, c]);
            let grid = if pad_b > 0 || pad_r > 0 {
                grid.slice([0..b, 0..h, 0..w, 0..c])
            } else {
                grid
            };
            grid.reshape([b, l, c])
        };
        let x = x + attended;
        let map = x.swap_dims(1, 2).reshape([b, c, h, w]);
        let x = self
            .local_conv
            .forward(map)
            .reshape([b, c, l])
            .swap_dims(1, 2);
        x.clone() + self.mlp.forward(x)
    }
}

/// TinyViT's MLP: layer norm, linear, GELU, linear.
#[derive(Module, Debug)]
pub struct TinyMlp {
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl TinyMlp {
    /// `[B, N, C] → [B, N, C]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2
            .forward(gelu(self.fc1.forward(self.norm.forward(x))))
    }
}

/// Multi-head self-attention inside one window, with a learned bias per head
/// and per |Δrow|, |Δcol| offset (LeViT style). Queries, keys and values are
/// interleaved per head in the `qkv` projection.
#[derive(Module, Debug)]
pub struct WindowAttention {
    pub norm: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    /// `[heads, window²]`: bias of each offset `|Δrow|·window + |Δcol|`.
    pub attention_biases: Param<Tensor<2>>,
    /// `[window⁴]`: offset index of each (query, key) pair of a window, row-major.
    pub bias_index: Tensor<1, Int>,
    pub num_heads: usize,
}

impl WindowAttention {
    fn new(dim: usize, num_heads: usize, window: usize, device: &Device) -> Self {
        let n = window * window;
        let mut idx = Vec::with_capacity(n * n);
        for p in 0..n {
            for q in 0..n {
                let (py, px, qy, qx) = (p / window, p % window, q / window, q % window);
                idx.push((py.abs_diff(qy) * window + px.abs_diff(qx)) as i64);
            }
        }
        Self {
            norm: LayerNormConfig::new(dim).init(device),
            qkv: linear(dim, 3 * dim, device),
            proj: linear(dim, dim, device),
            attention_biases: INIT.init([num_heads, n], device),
            bias_index: Tensor::from_data(TensorData::new(idx, [n * n]), device),
            num_heads,
        }
    }

    /// Windows `[B', N, C]` (N = window²) → `[B', N, C]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let h = self.num_heads;
        let kd = c / h;
        let qkv = self
            .qkv
            .forward(self.norm.forward(x))
            .reshape([b, n, h, 3 * kd])
            .swap_dims(1, 2);
        let q = qkv.clone().slice([0..b, 0..h, 0..n, 0..kd]);
        let k = qkv.clone().slice([0..b, 0..h, 0..n, kd..2 * kd]);
        let v = qkv.slice([0..b, 0..h, 0..n, 2 * kd..3 * kd]);
        let bias = self
            .attention_biases
            .val()
            .select(1, self.bias_index.clone())
            .reshape([1, h, n, n]);
        let options = AttentionModuleOptions {
            scale: Some((kd as f64).powf(-0.5)),
            ..Default::default()
        };
        let out = attention(q, k, v, None, Some(bias), options);
        self.proj.forward(out.swap_dims(1, 2).reshape([b, n, c]))
    }
}
