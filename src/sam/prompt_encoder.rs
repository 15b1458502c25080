//! SAM's prompt encoder: points and box corners become "sparse" tokens (a
//! random-Fourier positional encoding of the coordinate plus a learned
//! embedding of the point kind); without a mask prompt the "dense" embedding is
//! one learned vector broadcast over the image embedding grid. It also provides
//! the dense positional encoding of that grid for the mask decoder.
//!
//! Coordinates are in the model's input frame (e.g. 256×256 for LiteMedSAM):
//! x = column, y = row, pixel centres at integer + 0.5 (the +0.5 is added here).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};

use super::common::{INIT, layer_norm_2d, layer_norm_2d_init};

/// The kind of a point prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointLabel {
    /// Background: the object is not here.
    Negative,
    /// Foreground: the object is here.
    Positive,
    /// Padding (SAM adds one when there is no box).
    Padding,
}

/// Sizes of a prompt encoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptEncoderConfig {
    pub embed_dim: usize,
    /// Side of the image embedding grid.
    pub embedding_size: usize,
    /// Side of the (padded, square) model input image.
    pub input_size: usize,
    pub mask_in_chans: usize,
}

impl PromptEncoderConfig {
    /// Build the encoder (parameters zero until loaded).
    pub fn init(&self, device: &Device) -> PromptEncoder {
        let e = |n| {
            EmbeddingConfig::new(n, self.embed_dim)
                .with_initializer(INIT)
                .init(device)
        };
        let c4 = self.mask_in_chans / 4;
        let conv = |a, b, k: usize, s: usize| {
            Conv2dConfig::new([a, b], [k, k])
                .with_stride([s, s])
                .with_initializer(INIT)
                .init(device)
        };
        PromptEncoder {
            pe_gaussian: INIT.init([2, self.embed_dim / 2], device),
            point_embeddings: (0..4).map(|_| e(1)).collect(),
            not_a_point_embed: e(1),
            no_mask_embed: e(1),
            mask_downscaling: MaskDownscaling {
                conv1: conv(1, c4, 2, 2),
                norm1: layer_norm_2d_init(c4, device),
                conv2: conv(c4, self.mask_in_chans, 2, 2),
                norm2: layer_norm_2d_init(self.mask_in_chans, device),
                conv3: conv(self.mask_in_chans, self.embed_dim, 1, 1),
            },
            embedding_size: self.embedding_size,
            input_size: self.input_size,
        }
    }
}

/// The prompt encoder.
#[derive(Module, Debug)]
pub struct PromptEncoder {
    /// `[2, embed_dim/2]` random Fourier frequencies (PyTorch `pe_layer.positional_encoding_gaussian_matrix`).
    pub pe_gaussian: Param<Tensor<2>>,
    /// Negative point, positive point, box top-left, box bottom-right.
    pub point_embeddings: Vec<Embedding>,
    pub not_a_point_embed: Embedding,
    pub no_mask_embed: Embedding,
    /// Mask prompts (kept for weight compatibility; mask prompts are not used here).
    pub mask_downscaling: MaskDownscaling,
    pub embedding_size: usize,
    pub input_size: usize,
}

/// Convolutional encoder of a low-resolution mask prompt.
#[derive(Module, Debug)]
pub struct MaskDownscaling {
    pub conv1: Conv2d,
    pub norm1: LayerNorm,
    pub conv2: Conv2d,
    pub norm2: LayerNorm,
    pub conv3: Conv2d,
}

impl MaskDownscaling {
    /// Mask logits `[B, 1, 4E, 4E]` → dense embedding `[B, D, E, E]`.
    pub fn forward(&self, mask: Tensor<4>) -> Tensor<4> {
        let x = gelu(layer_norm_2d(&self.norm1, self.conv1.forward(mask)));
        let x = gelu(layer_norm_2d(&self.norm2, self.conv2.forward(x)));
        self.conv3.forward(x)
    }
}

/// Point prompts of a batch of prompts: `[B, N, 2]` coordinates (input frame) and labels.
pub struct PointBatch {
    pub coords: Tensor<3>,
    pub labels: Vec<Vec<PointLabel>>,
}

impl PromptEncoder {
    /// Fourier features of coordinates already normalised to [0, 1]: `[..., 2] → [..., D]`.
    fn pe_encoding<const D: usize>(&self, unit: Tensor<D>) -> Tensor<D> {
        let dims = unit.dims();
        let x = unit.mul_scalar(2.0).sub_scalar(1.0);
        let rows: usize = dims[..D - 1].iter().product();
        let g = self.pe_gaussian.val();
        let f = g.dims()[1];
        let proj = x
            .reshape([rows, 2])
            .matmul(g)
            .mul_scalar(2.0 * std::f32::consts::PI);
        let mut out = dims;
        out[D - 1] = 2 * f;
        Tensor::cat(vec![proj.clone().sin(), proj.cos()], 1).reshape(out)
    }

    /// Fourier features of pixel coordinates of the input frame `[B, N, 2]` (x, y), after the +0.5 shift.
    fn pe_pixels(&self, coords: Tensor<3>) -> Tensor<3> {
        let s = self.input_size as f32;
        self.pe_encoding(coords.add_scalar(0.5).div_scalar(s))
    }

    /// Dense positional encoding of the embedding grid: `[1, D, E, E]`.
    pub fn dense_pe(&self, device: &Device) -> Tensor<4> {
        let e = self.embedding_size;
        let mut xy = Vec::with_capacity(e * e * 2);
        for r in 0..e {
            for c in 0..e {
                xy.push((c as f32 + 0.5) / e as f32);
                xy.push((r as f32 + 0.5) / e as f32);
            }
        }
        let grid = Tensor::<3>::from_data(TensorData::new(xy, [e, e, 2]), device);
        self.pe_encoding(grid).permute([2, 0, 1]).unsqueeze::<4>()
    }

    /// Sparse tokens of a batch of prompts: points (padded with one "not a point"
    /// when there is no box, as SAM) then box corners → `[B, N, D]`.
    pub fn sparse(&self, points: Option<&PointBatch>, boxes: Option<Tensor<2>>) -> Tensor<3> {
        let mut parts = Vec::new();
        if let Some(p) = points {
            parts.push(self.embed_points(p, boxes.is_none()));
        }
        if let Some(b) = boxes {
            parts.push(self.embed_boxes(b));
        }
        assert!(!parts.is_empty(), "a prompt needs points or a box");
        Tensor::cat(parts, 1)
    }

    fn embed_points(&self, points: &PointBatch, pad: bool) -> Tensor<3> {
        let device = points.coords.device();
        let [b, n, _] = points.coords.dims();
        let mut coords = points.coords.clone();
        let mut labels = points.labels.clone();
        if pad {
            coords = Tensor::cat(vec![coords, Tensor::zeros([b, 1, 2], &device)], 1);
            labels.iter_mut().for_each(|l| l.push(PointLabel::Padding));
        }
        let n = n + pad as usize;
        let pe = self.pe_pixels(coords);
        // Per point: keep the encoding unless padding, then add the embedding of its kind.
        let weight = |kind: PointLabel, keep: bool| {
            let w: Vec<f32> = labels
                .iter()
                .flat_map(|l| l.iter().map(move |&k| ((k == kind) == keep) as u8 as f32))
                .collect();
            Tensor::<3>::from_data(TensorData::new(w, [b, n, 1]), &device)
        };
        let emb = |e: &Embedding| e.weight.val().reshape([1, 1, -1]);
        pe * weight(PointLabel::Padding, false)
            + weight(PointLabel::Padding, true) * emb(&self.not_a_point_embed)
            + weight(PointLabel::Negative, true) * emb(&self.point_embeddings[0])
            + weight(PointLabel::Positive, true) * emb(&self.point_embeddings[1])
    }

    fn embed_boxes(&self, boxes: Tensor<2>) -> Tensor<3> {
        let [b, _] = boxes.dims();
        let corners = self.pe_pixels(boxes.reshape([b, 2, 2]));
        let emb = |e: &Embedding| e.weight.val().reshape([1, 1, -1]);
        let kind = Tensor::cat(
            vec![
                emb(&self.point_embeddings[2]),
                emb(&self.point_embeddings[3]),
            ],
            1,
        );
        corners + kind
    }

    /// Dense prompt embedding without a mask prompt: `[1, D, E, E]` (broadcast over the batch).
    pub fn no_mask_dense(&self) -> Tensor<4> {
        let e = self.embedding_size;
        let w = self.no_mask_embed.weight.val();
        let d = w.dims()[1];
        w.reshape([1, d, 1, 1]).expand([1, d, e, e])
    }
}
