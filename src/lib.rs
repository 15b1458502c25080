//! MedLSAM in Rust: few-shot localize-then-segment any organ in 3D CT.
//!
//! The modules follow the data flow:
//! volume I/O → preprocessing → support atlas → localization → boxes →
//! segmentation → outputs. The run layer ([`run`]) drives whole runs for the
//! CLI (`src/main.rs`, `src/cli/`) and the web app, thin shells over it.
//!
//! Layers, bottom up: [`types`] and [`device`] (shared types and traits, the
//! compute device) → [`volume`] → the models ([`medlam`], [`sam`]) → [`oracle`]
//! and [`pipeline`] (segmenting one query) → [`metrics`], [`output`] → [`run`] →
//! [`web`] / the CLI.

// Geometry and image code indexes several arrays by one axis variable; index loops read best there.
#![allow(clippy::needless_range_loop)]

pub mod error;

// The types every layer shares: box modes, localizations, the stage traits.
pub mod types;

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

// Localizers from known boxes (label maps, a user's boxes).
pub mod oracle;

// Localize → segment each slice → label map on the file grid.
pub mod pipeline;

// Registration of supports to a query, label warping and fusion (multi-atlas prior).
pub mod register;

// Evaluation and outputs.
pub mod metrics;
pub mod output;

// Whole runs: inputs, the models built once, command drivers, output files.
pub mod run;

// The browser app.
pub mod web;

pub use error::{Error, Result};
