//! MedLSAM in Rust: few-shot localize-then-segment any organ in 3D CT.
//!
//! The modules follow the data flow:
//! volume I/O → preprocessing → support atlas → localization → boxes →
//! segmentation → outputs. The CLI (`src/main.rs`) and the web app are thin
//! shells over this library.

// Geometry and image code indexes several arrays by one axis variable; index loops read best there.
#![allow(clippy::needless_range_loop)]

#[cfg(not(target_arch = "wasm32"))]
pub mod config;
pub mod error;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod volume;
pub mod web;

pub use error::{Error, Result};
