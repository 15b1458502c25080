//! The 2-D segmentation stage: SAM-family promptable segmenters in Burn.
//!
//! LiteMedSAM (TinyViT encoder, 256² input) is the default model; the ViT-B
//! encoder of SAM/MedSAM (1024² input) shares the prompt encoder and mask
//! decoder. Files follow the model's blocks: [`tiny_vit`] and [`vit`] (image
//! encoders), [`prompt_encoder`], [`transformer`] (two-way transformer),
//! [`mask_decoder`], [`model`] (the assembled model). Model code takes a
//! [`Device`](burn::tensor::Device) and never names a backend.

pub mod cache;
pub mod common;
pub mod mask_decoder;
pub mod model;
pub mod predictor;
pub mod preprocess;
pub mod prompt_encoder;
pub mod tiny_vit;
pub mod transformer;
pub mod vit;
pub mod weights;

pub use model::{EncoderConfig, PromptBatch, Sam, SamConfig};
