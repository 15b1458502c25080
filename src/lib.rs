//! MedLSAM in Rust: few-shot localize-then-segment any organ in 3D CT.
//!
//! The modules follow the data flow:
//! volume I/O → preprocessing → support atlas → localization → boxes →
//! segmentation → outputs. The CLI (`src/main.rs`) and the web app are thin
//! shells over this library.

// Geometry and image code indexes several arrays by one axis variable; index loops read best there.
#![allow(clippy::needless_range_loop)]

pub mod error;

// Deterministic random numbers (training samples, synthetic phantoms).
pub mod rng;

// Compute backends (Burn devices).
pub mod device;

// CT volumes in and out, geometry, preprocessing, labels.
pub mod volume;

// 2-D promptable segmentation (LiteMedSAM, SAM/MedSAM ViT-B).
pub mod sam;

// The 3-D localizer (network, training, atlas, localization, boxes).
pub mod medlam;

// Localize → segment each slice → label map on the file grid.
pub mod pipeline;

// Registration of supports to a query, label warping and fusion (multi-atlas prior).
pub mod register;

// Evaluation and outputs.
pub mod metrics;
pub mod output;

// Native batch runs and their configuration files.
#[cfg(not(target_arch = "wasm32"))]
pub mod batch;
#[cfg(not(target_arch = "wasm32"))]
pub mod config;
// Whole-pipeline evaluation on labelled queries (`medlsam eval-segment`).
#[cfg(not(target_arch = "wasm32"))]
pub mod evaluate;

// The browser app.
pub mod web;

pub use error::{Error, Result};
