//! A whole SAM-family model: image encoder (TinyViT for LiteMedSAM, ViT for
//! SAM/MedSAM), prompt encoder and mask decoder, with the PyTorch parameter
//! names of the reference implementations (`image_encoder.…`,
//! `prompt_encoder.…`, `mask_decoder.…`).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::mask_decoder::{DecoderOutput, MaskDecoder, MaskDecoderConfig};
use super::prompt_encoder::{PointBatch, PromptEncoder, PromptEncoderConfig};
use super::tiny_vit::{TinyVit, TinyVitConfig};
use super::transformer::TransformerImage;
use super::vit::{Vit, VitConfig};

/// Which image encoder.
#[derive(Clone, Debug, PartialEq)]
pub enum EncoderConfig {
    TinyVit(TinyVitConfig),
    Vit(VitConfig),
}

/// Sizes of a SAM-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct SamConfig {
    pub encoder: EncoderConfig,
    pub decoder: MaskDecoderConfig,
    pub mask_in_chans: usize,
}

impl SamConfig {
    /// LiteMedSAM (TinyViT encoder, 256² input, 64² embedding).
    pub fn lite_medsam() -> Self {
        Self {
            encoder: EncoderConfig::TinyVit(TinyVitConfig::lite_medsam()),
            decoder: MaskDecoderConfig::default(),
            mask_in_chans: 16,
        }
    }

    /// SAM / MedSAM ViT-B (1024² input, 64² embedding).
    pub fn vit_b() -> Self {
        Self {
            encoder: EncoderConfig::Vit(VitConfig::vit_b()),
            decoder: MaskDecoderConfig::default(),
            mask_in_chans: 16,
        }
    }

    /// Side of the (square, padded) model input image, pixels.
    pub fn input_size(&self) -> usize {
        match &self.encoder {
            EncoderConfig::TinyVit(c) => c.img_size,
            EncoderConfig::Vit(c) => c.img_size,
        }
    }

    /// Side of the image embedding grid.
    pub fn embedding_size(&self) -> usize {
        match &self.encoder {
            EncoderConfig::TinyVit(c) => c.embedding_size(),
            EncoderConfig::Vit(c) => c.embedding_size(),
        }
    }

    /// Build the model (parameters zero until loaded).
    pub fn init(&self, device: &Device) -> Sam {
        let image_encoder = match &self.encoder {
            EncoderConfig::TinyVit(c) => ImageEncoder::TinyVit(c.init(device)),
            EncoderConfig::Vit(c) => ImageEncoder::Vit(c.init(device)),
        };
        Sam {
            image_encoder,
            prompt_encoder: PromptEncoderConfig {
                embed_dim: self.decoder.transformer_dim,
                embedding_size: self.embedding_size(),
                input_size: self.input_size(),
                mask_in_chans: self.mask_in_chans,
            }
            .init(device),
            mask_decoder: self.decoder.init(device),
        }
    }
}

/// The image encoder of a [`Sam`].
// One instance per model: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ImageEncoder {
    TinyVit(TinyVit),
    Vit(Vit),
}

impl ImageEncoder {
    /// Preprocessed image `[B, 3, S, S]` → embedding `[B, 256, E, E]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        match self {
            Self::TinyVit(e) => e.forward(image),
            Self::Vit(e) => e.forward(image),
        }
    }

    /// [`Self::forward`], awaiting `pause()` between the steps of the TinyViT encoder
    /// (see [`TinyVit::forward_pausing`]); the ViT-B encoder runs in one piece.
    pub async fn forward_pausing<F: Future<Output = ()>>(
        &self,
        image: Tensor<4>,
        pause: &mut impl FnMut() -> F,
    ) -> Tensor<4> {
        match self {
            Self::TinyVit(e) => e.forward_pausing(image, pause).await,
            Self::Vit(e) => e.forward(image),
        }
    }
}

/// A SAM-family model.
#[derive(Module, Debug)]
pub struct Sam {
    pub image_encoder: ImageEncoder,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
}

/// A batch of prompts in the model input frame (x = column, y = row).
pub struct PromptBatch {
    /// Point prompts, the same number per prompt.
    pub points: Option<PointBatch>,
    /// `[B, 4]` boxes `[x0, y0, x1, y1]`.
    pub boxes: Option<Tensor<2>>,
}

impl Sam {
    /// The same model prepared for inference: batch norms folded into convolutions.
    pub fn for_inference(self) -> Self {
        let image_encoder = match self.image_encoder {
            ImageEncoder::TinyVit(e) => ImageEncoder::TinyVit(e.fold_batch_norms()),
            other => other,
        };
        Self {
            image_encoder,
            ..self
        }
    }

    /// Preprocessed image `[B, 3, S, S]` → embedding `[B, 256, E, E]`.
    pub fn encode(&self, image: Tensor<4>) -> Tensor<4> {
        self.image_encoder.forward(image)
    }

    /// Mask logits `[B, M, 4E, 4E]` and IoU predictions for a batch of prompts
    /// against one image embedding `[1, 256, E, E]`; `image_pe` from
    /// [`PromptEncoder::dense_pe`] (computed once and reused).
    pub fn decode(
        &self,
        image_embedding: Tensor<4>,
        image_pe: Tensor<4>,
        prompts: PromptBatch,
        multimask: bool,
    ) -> DecoderOutput {
        let image = self.decoder_image(image_embedding, image_pe);
        self.decode_image(&image, prompts, multimask)
    }

    /// The decoder's image side for an embedding `[1, 256, E, E]` (no mask prompt): computed
    /// once per slice, then [`Self::decode_image`] for each batch of prompts.
    pub fn decoder_image(
        &self,
        image_embedding: Tensor<4>,
        image_pe: Tensor<4>,
    ) -> TransformerImage {
        let dense = self.prompt_encoder.no_mask_dense();
        self.mask_decoder.image(image_embedding, image_pe, dense)
    }

    /// [`Self::decode`] on an image prepared by [`Self::decoder_image`].
    pub fn decode_image(
        &self,
        image: &TransformerImage,
        prompts: PromptBatch,
        multimask: bool,
    ) -> DecoderOutput {
        let sparse = self
            .prompt_encoder
            .sparse(prompts.points.as_ref(), prompts.boxes);
        self.mask_decoder.forward_image(image, sparse, multimask)
    }
}
