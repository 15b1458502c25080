//! Self-supervised MedLAM training (native only).
//!
//! Data: any list of CT NIfTI files (labels are never read). Each CT is
//! reoriented to canonical LPS, resampled to 3 mm, intensity-mapped, cropped to
//! its body (HU > −500, plus a margin) and cached (8-bit, in a cache directory
//! outside the repository). A step draws `batch` samples (see
//! [`super::sample`]): patches `A`, `A'` (augmented `A`) and `B₁…Bₙ` from one
//! CT; all `A` and `A'` go through the whole network in one batch, the `B`
//! through the encoder and position head only, and
//! - **UAM**: for every pair `(A, Bₖ)`, `(A', Bₖ)`, `(Bₖ, Bₗ)`,
//!   `r·tanh(p − p')` regresses the true offset of the patch centres in mm
//!   (MSE, in cm² so both losses have similar size), `r = [600, 600, 1500]` mm
//!   along the canonical axes (the reference's `[1500, 600, 600]` for z, y, x);
//! - **MSS**: at each feature scale, L2-normalised features of query points
//!   in `A` (and in `A'`) are compared by cosine similarity (×15, as the
//!   reference) with every feature voxel of `A'` (of `A`); softmax over
//!   positions; cross-entropy against the true corresponding voxels.
//!
//! Adam with warm-up and cosine decay. Every `checkpoint_every` steps the
//! model, the optimizer state and the step are saved (so `resume` continues
//! exactly), and the inference weights are written to `out`. Sampling is
//! seeded per step, so a run is deterministic for a seed.

mod trainer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::loss::UAM_UNIT_MM;
use super::net::MedLamConfig;
use super::sample::SamplingOptions;
use crate::device::BackendChoice;
use crate::{Error, Result};
use trainer::Trainer;

pub use super::loss::{BatchLoss, MSS_TEMPERATURE, batch_loss, mss_loss, uam_loss};
pub use super::train_data::{
    TrainVolume, draw_batch, expand_images, export_prepared, load_volumes,
};

/// The network trained by default: 48³ patches, widths 8–128, three decoder
/// levels (feature scales 1/8, 1/4, 1/2). Chosen for 2-core CPU training;
/// see `weights/medlam.txt` for the measurements behind it.
pub fn default_config() -> MedLamConfig {
    MedLamConfig::new(48, [8, 16, 32, 64, 128], [64, 32, 16, 8], [128, 64]).with_decoder_levels(3)
}

/// Everything a training run needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub images: Vec<PathBuf>,
    /// Inference weights file written at every checkpoint and at the end.
    pub out: PathBuf,
    pub config: MedLamConfig,
    pub epochs: usize,
    /// Samples per step (each is 3 patches).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub seed: u64,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
    pub checkpoint_dir: PathBuf,
    /// Preprocessed-volume cache (outside the repository); none: no cache.
    pub cache_dir: Option<PathBuf>,
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// Stop after this many steps of this invocation (smoke runs); the schedule still
    /// follows `epochs`.
    pub max_steps: Option<usize>,
    pub sampling: SamplingOptions,
    /// Where the steps run (`cpu`: Burn Flex; `wgpu`: the GPU through Vulkan).
    #[serde(skip)]
    pub backend: BackendChoice,
    /// Start from these inference weights (same config) instead of a random init; the
    /// optimiser starts fresh. Ignored when resuming from a checkpoint.
    #[serde(default)]
    pub init: Option<PathBuf>,
}

/// Loss values of one step (or averaged over several).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LossParts {
    pub total: f64,
    /// UAM MSE in cm².
    pub uam: f64,
    /// MSS cross-entropy averaged over scales, directions and points.
    pub mss: f64,
    /// Fraction of MSS query points whose best match (finest scale) is a true correspondence.
    pub mss_top1: f64,
}

impl LossParts {
    /// Root mean squared UAM error in mm.
    pub fn uam_rmse_mm(&self) -> f64 {
        self.uam.max(0.0).sqrt() * UAM_UNIT_MM as f64
    }
}

/// Progress of a run as reported to the caller.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    Loaded {
        volumes: usize,
        skipped: Vec<String>,
        seconds: f64,
    },
    Resumed {
        step: usize,
        /// `(old, new)` total steps when `epochs` changed since the checkpoint.
        schedule: Option<(usize, usize)>,
    },
    Step {
        step: usize,
        total: usize,
        epoch: f64,
        lr: f64,
        loss: LossParts,
        steps_per_s: f64,
        eta_s: f64,
    },
    Checkpoint {
        step: usize,
        validation: LossParts,
    },
}

/// One line of text for a progress event (the CLI's progress display).
pub fn format_event(e: &TrainEvent) -> String {
    let hms = |s: f64| {
        let s = s.max(0.0).round() as u64;
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    match e {
        TrainEvent::Loaded {
            volumes,
            skipped,
            seconds,
        } => {
            let mut t = format!("loaded {volumes} CTs in {seconds:.1} s");
            for s in skipped {
                t.push_str(&format!("\n  skipped {s}"));
            }
            t
        }
        TrainEvent::Resumed { step, schedule } => format!(
            "resumed from the checkpoint at step {step}{}",
            schedule.map_or(String::new(), |(a, b)| format!(
                " (schedule changed from {a} to {b} steps: the learning rate follows the new one)"
            ))
        ),
        TrainEvent::Step {
            step,
            total,
            epoch,
            lr,
            loss,
            steps_per_s,
            eta_s,
        } => format!(
            "step {step}/{total} (epoch {epoch:.2}) loss {:.4} = uam {:.4} (rmse {:.1} mm) + mss {:.4} | lr {lr:.2e} | {steps_per_s:.3} it/s | ETA {}",
            loss.total,
            loss.uam,
            loss.uam_rmse_mm(),
            loss.mss,
            hms(*eta_s)
        ),
        TrainEvent::Checkpoint {
            step,
            validation: v,
        } => format!(
            "checkpoint at step {step}: validation loss {:.4} = uam {:.4} (rmse {:.1} mm) + mss {:.4}, mss top-1 {:.1} %",
            v.total,
            v.uam,
            v.uam_rmse_mm(),
            v.mss,
            100.0 * v.mss_top1
        ),
    }
}

/// Summary of a finished run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub volumes: usize,
    pub wall_s: f64,
    /// Mean training loss over the last `log_every` steps.
    pub last: LossParts,
    pub validation: LossParts,
    /// Validation at every checkpoint: (step, losses).
    pub history: Vec<(usize, LossParts)>,
}

/// Learning rate at a step: linear warm-up over the first 50 steps (from 10 %), then
/// cosine decay to 5 % of the peak at the last step.
pub fn learning_rate(peak: f64, step: usize, total: usize) -> f64 {
    let warm = 50.min(total / 10).max(1);
    if step < warm {
        return peak * (0.1 + 0.9 * step as f64 / warm as f64);
    }
    let t = (step - warm) as f64 / (total.saturating_sub(warm)).max(1) as f64;
    peak * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
}

/// Train MedLAM; `event` receives progress. Returns the summary of the run.
pub fn train(opts: &TrainOptions, event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
    opts.config.validate()?;
    if opts.batch == 0 || opts.epochs == 0 {
        return Err(Error::InvalidArgument(
            "--batch and --epochs must be at least 1".into(),
        ));
    }
    let t0 = std::time::Instant::now();
    let (vols, skipped) = load_volumes(&opts.images, opts.cache_dir.as_deref())?;
    event(TrainEvent::Loaded {
        volumes: vols.len(),
        skipped,
        seconds: t0.elapsed().as_secs_f64(),
    });
    let mut trainer = Trainer::new(opts, vols)?;
    trainer.resume(event)?;
    trainer.run(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medlam::train_data::glob_match;

    #[test]
    fn glob_and_schedule() {
        assert!(glob_match("okbp_*.ct.nii.gz", "okbp_001.ct.nii.gz"));
        assert!(!glob_match("okbp_*.ct.nii.gz", "okbp_001.label.nii.gz"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "abcd"));
        let total = 1000;
        assert!((learning_rate(1e-3, 0, total) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(1e-3, 50, total) - 1e-3).abs() < 1e-9);
        assert!((learning_rate(1e-3, total, total) - 5e-5).abs() < 1e-9);
        assert!(learning_rate(1e-3, 500, total) < learning_rate(1e-3, 400, total));
    }
}
