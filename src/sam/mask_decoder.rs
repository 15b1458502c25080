//! SAM's mask decoder: learned output tokens (IoU + 4 masks) join the prompt
//! tokens, the two-way transformer mixes them with the image embedding, the
//! image tokens are upscaled ×4 with transposed convolutions, and each mask
//! token's hypernetwork MLP gives the weights of a per-pixel dot product → mask
//! logits at 4× the embedding size (256² for a 64² embedding).

use burn::module::Module;
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::common::{INIT, MlpRelu, layer_norm_2d, layer_norm_2d_init};
use super::transformer::{TransformerImage, TwoWayTransformer};

/// Sizes of a mask decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskDecoderConfig {
    pub transformer_dim: usize,
    pub transformer_depth: usize,
    pub transformer_heads: usize,
    pub transformer_mlp_dim: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
}

impl Default for MaskDecoderConfig {
    /// SAM's (and LiteMedSAM's) decoder.
    fn default() -> Self {
        Self {
            transformer_dim: 256,
            transformer_depth: 2,
            transformer_heads: 8,
            transformer_mlp_dim: 2048,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
        }
    }
}

impl MaskDecoderConfig {
    /// Build the decoder (parameters zero until loaded).
    pub fn init(&self, device: &Device) -> MaskDecoder {
        let d = self.transformer_dim;
        let n_masks = self.num_multimask_outputs + 1;
        let emb = |n| {
            EmbeddingConfig::new(n, d)
                .with_initializer(INIT)
                .init(device)
        };
        let up = |a, b| {
            ConvTranspose2dConfig::new([a, b], [2, 2])
                .with_stride([2, 2])
                .with_initializer(INIT)
                .init(device)
        };
        MaskDecoder {
            transformer: TwoWayTransformer::new(
                self.transformer_depth,
                d,
                self.transformer_heads,
                self.transformer_mlp_dim,
                device,
            ),
            iou_token: emb(1),
            mask_tokens: emb(n_masks),
            output_upscaling: Upscaling {
                deconv1: up(d, d / 4),
                norm: layer_norm_2d_init(d / 4, device),
                deconv2: up(d / 4, d / 8),
            },
            output_hypernetworks_mlps: (0..n_masks)
                .map(|_| MlpRelu::new(d, d, d / 8, 3, device))
                .collect(),
            iou_prediction_head: MlpRelu::new(
                d,
                self.iou_head_hidden_dim,
                n_masks,
                self.iou_head_depth,
                device,
            ),
        }
    }
}

/// Transposed-conv upscaling ×4 of the image tokens.
#[derive(Module, Debug)]
pub struct Upscaling {
    pub deconv1: ConvTranspose2d,
    pub norm: LayerNorm,
    pub deconv2: ConvTranspose2d,
}

impl Upscaling {
    /// `[B, D, E, E] → [B, D/8, 4E, 4E]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = gelu(layer_norm_2d(&self.norm, self.deconv1.forward(x)));
        gelu(self.deconv2.forward(x))
    }
}

/// The mask decoder.
#[derive(Module, Debug)]
pub struct MaskDecoder {
    pub transformer: TwoWayTransformer,
    pub iou_token: Embedding,
    pub mask_tokens: Embedding,
    pub output_upscaling: Upscaling,
    pub output_hypernetworks_mlps: Vec<MlpRelu>,
    pub iou_prediction_head: MlpRelu,
}

/// Inputs of [`MaskDecoder::forward`].
pub struct DecoderInput {
    /// `[1, D, E, E]` image embedding (shared by every prompt of the batch).
    pub image_embedding: Tensor<4>,
    /// `[1, D, E, E]` dense positional encoding of the embedding grid.
    pub image_pe: Tensor<4>,
    /// `[B, N, D]` prompt tokens.
    pub sparse: Tensor<3>,
    /// `[1 or B, D, E, E]` dense prompt embedding.
    pub dense: Tensor<4>,
}

/// Outputs of [`MaskDecoder::forward`].
pub struct DecoderOutput {
    /// `[B, M, 4E, 4E]` mask logits (M = 1 single-mask, 3 multimask).
    pub masks: Tensor<4>,
    /// `[B, M]` predicted IoU of each mask.
    pub iou: Tensor<2>,
}

impl MaskDecoder {
    /// Predict masks for a batch of prompts against one image. Single-mask output
    /// (`multimask = false`) computes only the first mask token's mask, as SAM returns.
    pub fn forward(&self, input: DecoderInput, multimask: bool) -> DecoderOutput {
        let DecoderInput {
            image_embedding,
            image_pe,
            sparse,
            dense,
        } = input;
        let image = self.image(image_embedding, image_pe, dense);
        self.forward_image(&image, sparse, multimask)
    }

    /// What the decoder computes from the image alone (embedding `[1, D, E, E]`, its positional
    /// encoding `[1, D, E, E]`, the dense prompt embedding `[1, D, E, E]`): the same for every
    /// prompt, so it is computed once per slice and reused by each decoded box.
    pub fn image(
        &self,
        image_embedding: Tensor<4>,
        image_pe: Tensor<4>,
        dense: Tensor<4>,
    ) -> TransformerImage {
        self.transformer.image(image_embedding + dense, image_pe)
    }

    /// [`Self::forward`] for prompt tokens `[B, N, D]` on an image prepared by [`Self::image`].
    pub fn forward_image(
        &self,
        image: &TransformerImage,
        sparse: Tensor<3>,
        multimask: bool,
    ) -> DecoderOutput {
        let [b, _, d] = sparse.dims();
        let [eh, ew] = image.grid;
        let n_masks = self.mask_tokens.weight.dims()[0];
        let output_tokens = Tensor::cat(
            vec![self.iou_token.weight.val(), self.mask_tokens.weight.val()],
            0,
        )
        .unsqueeze::<3>()
        .expand([b, 1 + n_masks, d]);
        let tokens = Tensor::cat(vec![output_tokens, sparse], 1);

        // The image is not expanded to the B prompts: its first-block projections are shared
        // (the image tokens become per prompt after that block's image → token attention).
        let (hs, src) = self.transformer.forward_image(image, tokens);

        let upscaled = self
            .output_upscaling
            .forward(src.swap_dims(1, 2).reshape([b, d, eh, ew]));
        let [_, c, uh, uw] = upscaled.dims();
        let chosen: Vec<usize> = if multimask {
            (1..n_masks).collect()
        } else {
            vec![0]
        };
        let hyper: Vec<Tensor<3>> = chosen
            .iter()
            .map(|&i| {
                let token = hs.clone().slice([0..b, 1 + i..2 + i, 0..d]);
                self.output_hypernetworks_mlps[i].forward(token)
            })
            .collect();
        let hyper = Tensor::cat(hyper, 1); // [B, M, C]
        let m = chosen.len();
        let masks = hyper
            .matmul(upscaled.reshape([b, c, uh * uw]))
            .reshape([b, m, uh, uw]);

        let iou_all = self
            .iou_prediction_head
            .forward(hs.slice([0..b, 0..1, 0..d]).reshape([b, d]));
        let iou = if multimask {
            iou_all.slice([0..b, 1..n_masks])
        } else {
            iou_all.slice([0..b, 0..1])
        };
        DecoderOutput { masks, iou }
    }
}
