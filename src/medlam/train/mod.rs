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

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use super::net::{MedLam, MedLamConfig};
use super::sample::SamplingOptions;
use crate::device::BackendChoice;
use crate::{Error, Result};

#[allow(unused_imports)]
use super::loss::*;
pub use super::loss::{BatchLoss, MSS_TEMPERATURE, batch_loss, mss_loss, uam_loss};
#[allow(unused_imports)]
use super::train_data::*;
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

/// What a checkpoint directory holds besides the model and optimizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    config: MedLamConfig,
    seed: u64,
    batch: usize,
    lr: f64,
    total_steps: usize,
    wall_s: f64,
    history: Vec<(usize, LossParts)>,
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

/// Checkpoint file names inside the checkpoint directory.
fn ckpt_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join("model.bpk"),
        dir.join("optim.bpk"),
        dir.join("state.json"),
    ]
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

fn record_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("checkpoint: {e}"))
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
    let steps_per_epoch = vols.len().div_ceil(opts.batch);
    let total = opts.epochs * steps_per_epoch;

    let base = opts.backend.device();
    let device = base.clone().autodiff();
    device.seed(opts.seed);
    let mut net = opts.config.init(&device)?;
    let mut optim: ModuleOptimizer = AdamConfig::new()
        .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(5.0)))
        .init();
    let mut start = 0usize;
    let mut wall_before = 0.0;
    let mut history = Vec::new();
    std::fs::create_dir_all(&opts.checkpoint_dir)?;
    let [model_f, optim_f, state_f] = ckpt_files(&opts.checkpoint_dir);
    if opts.resume && state_f.is_file() {
        let st: CheckpointState =
            serde_json::from_str(&std::fs::read_to_string(&state_f)?).map_err(record_err)?;
        if st.config != opts.config || st.seed != opts.seed || st.batch != opts.batch {
            return Err(Error::InvalidArgument(format!(
                "the checkpoint in {} was made with other settings (config, seed or batch): \
                 use the same ones to resume, or another --checkpoint-dir",
                opts.checkpoint_dir.display()
            )));
        }
        if st.step > total {
            return Err(Error::InvalidArgument(format!(
                "the checkpoint is at step {} but --epochs gives only {total} steps",
                st.step
            )));
        }
        let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(std::fs::read(&model_f)?))
            .map_err(record_err)?;
        net = net.try_load_record(rec).map_err(record_err)?;
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(std::fs::read(&optim_f)?))
            .map_err(record_err)?;
        start = st.step;
        wall_before = st.wall_s;
        history = st.history;
        event(TrainEvent::Resumed {
            step: start,
            schedule: (st.total_steps != total).then_some((st.total_steps, total)),
        });
    } else if let Some(init) = &opts.init {
        let bytes = std::fs::read(init)
            .map_err(|e| Error::InvalidArgument(format!("--init {}: {e}", init.display())))?;
        let (loaded, config) = MedLam::from_bytes(&bytes, &device)?;
        if config != opts.config {
            return Err(Error::InvalidArgument(format!(
                "--init {} holds a network of another config ({config:?}); train with that \
                 config (--config) or start from scratch",
                init.display()
            )));
        }
        net = loaded;
    }

    // A fixed validation batch (drawn from the training CTs with a separate stream).
    let val_samples = draw_batch(
        &vols,
        opts.seed ^ 0x5A5A_5A5A,
        u64::MAX,
        4,
        &opts.config,
        &opts.sampling,
    );
    let validate = |net: &MedLam| -> LossParts {
        let inner = net.valid();
        let mut acc = LossParts::default();
        for pair in val_samples.chunks(2) {
            let l = batch_loss(&inner, pair, &opts.config, &base, true);
            acc.total += scalar(&l.total) / 2.0;
            acc.uam += scalar(&l.uam) / 2.0;
            acc.mss += scalar(&l.mss) / 2.0;
            acc.mss_top1 += l.top1.unwrap_or(0.0) / 2.0;
        }
        acc
    };

    let run_start = std::time::Instant::now();
    let end = opts.max_steps.map_or(total, |m| (start + m).min(total));
    let mut window = LossParts::default();
    let mut window_n = 0usize;
    let mut last = LossParts::default();
    let mut validation = LossParts::default();
    let mut window_start = std::time::Instant::now();
    let mut window_steps = 0usize;
    let mut step = start;
    while step < end {
        let lr = learning_rate(opts.lr, step, total);
        let samples = draw_batch(
            &vols,
            opts.seed,
            step as u64,
            opts.batch,
            &opts.config,
            &opts.sampling,
        );
        let loss = batch_loss(&net, &samples, &opts.config, &device, false);
        let grads = GradientsParams::from_grads(loss.total.backward(), &net);
        net = optim.step(lr, net, grads);
        let (t, u, m) = (scalar(&loss.total), scalar(&loss.uam), scalar(&loss.mss));
        if !t.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "training diverged at step {step} (loss {t}); try a lower --lr"
            )));
        }
        window.total += t;
        window.uam += u;
        window.mss += m;
        window_n += 1;
        window_steps += 1;
        step += 1;
        if step.is_multiple_of(opts.log_every.max(1)) || step == end {
            let n = window_n as f64;
            last = LossParts {
                total: window.total / n,
                uam: window.uam / n,
                mss: window.mss / n,
                mss_top1: f64::NAN,
            };
            let rate = window_steps as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            event(TrainEvent::Step {
                step,
                total,
                epoch: step as f64 / steps_per_epoch as f64,
                lr,
                loss: last,
                steps_per_s: rate,
                eta_s: (end - step) as f64 / rate.max(1e-9),
            });
            window = LossParts::default();
            window_n = 0;
            window_start = std::time::Instant::now();
            window_steps = 0;
        }
        if step.is_multiple_of(opts.checkpoint_every.max(1)) || step == end {
            validation = validate(&net);
            history.push((step, validation));
            let wall_s = wall_before + run_start.elapsed().as_secs_f64();
            save_checkpoint(
                opts,
                &net,
                &optim,
                &CheckpointState {
                    step,
                    config: opts.config.clone(),
                    seed: opts.seed,
                    batch: opts.batch,
                    lr: opts.lr,
                    total_steps: total,
                    wall_s,
                    history: history.clone(),
                },
            )?;
            event(TrainEvent::Checkpoint { step, validation });
        }
    }
    Ok(TrainSummary {
        steps: step,
        total_steps: total,
        volumes: vols.len(),
        wall_s: wall_before + run_start.elapsed().as_secs_f64(),
        last,
        validation,
        history,
    })
}

fn save_checkpoint(
    opts: &TrainOptions,
    net: &MedLam,
    optim: &ModuleOptimizer,
    st: &CheckpointState,
) -> Result<()> {
    let [model_f, optim_f, state_f] = ckpt_files(&opts.checkpoint_dir);
    let model = net.clone().into_record().into_bytes().map_err(record_err)?;
    write_atomic(&model_f, &model)?;
    write_atomic(&optim_f, &optim.into_bytes().map_err(record_err)?)?;
    write_atomic(
        &state_f,
        serde_json::to_string_pretty(st)
            .expect("serialisable")
            .as_bytes(),
    )?;
    let info = [
        ("medlam_step", st.step.to_string()),
        ("medlam_total_steps", st.total_steps.to_string()),
        ("medlam_seed", st.seed.to_string()),
        ("medlam_batch", st.batch.to_string()),
        ("medlam_wall_s", format!("{:.0}", st.wall_s)),
    ];
    let weights = net.valid().to_bytes(&opts.config, &info)?;
    if let Some(dir) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic(&opts.out, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medlam::prep::Prepared;
    use crate::medlam::sample::MssDirection;
    use crate::medlam::sample::Sample;
    use crate::volume::resample::ResampleGrid;
    use burn::tensor::{Device, Tensor, TensorData};

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

    fn one_sample(centres: Vec<[f64; 3]>, mss: Vec<[MssDirection; 2]>) -> Sample {
        Sample {
            a: vec![],
            a_aug: vec![],
            b: vec![],
            centres,
            mss,
        }
    }

    #[test]
    fn uam_loss_is_the_mse_of_the_tanh_offsets_in_cm2() {
        let dev = Device::flex();
        // p_A = (0.1, 0, 0.2), p_A' = (0, 0, 0), p_B = (0, 0.05, 0).
        let p = Tensor::<2>::from_data(
            TensorData::new(
                vec![0.1f32, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0],
                [3, 3],
            ),
            &dev,
        );
        // True centre offsets (grid voxels of 3 mm): A − B = (10, 0, 20), A' − B = (0, −4, 0).
        let s = one_sample(
            vec![[10.0, 0.0, 20.0], [0.0, -4.0, 0.0], [0.0, 0.0, 0.0]],
            vec![],
        );
        let got = scalar(&uam_loss(p, &[s], &dev));
        let pred1 = [
            600.0 * 0.1f64.tanh(),
            600.0 * (-0.05f64).tanh(),
            1500.0 * 0.2f64.tanh(),
        ];
        let true1 = [30.0, 0.0, 60.0];
        let pred2 = [0.0, 600.0 * (-0.05f64).tanh(), 0.0];
        let true2 = [0.0, -12.0, 0.0];
        let mse =
            |p: [f64; 3], t: [f64; 3]| (0..3).map(|a| (p[a] - t[a]).powi(2)).sum::<f64>() / 3.0;
        let want = (mse(pred1, true1) + mse(pred2, true2)) / 2.0 / 100.0;
        assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    }

    #[test]
    fn mss_loss_is_the_cross_entropy_over_true_correspondences() {
        let dev = Device::flex();
        // B = 1, 2 channels, 2³ feature voxels per patch (A, A', and an unused third).
        // A: every voxel (1, 0). A': voxel 5 is (1, 0), voxel 6 is (0.6, 0.8), others (0, 1).
        let mut v = vec![0f32; 3 * 2 * 8];
        for x in 0..8 {
            v[x] = 1.0; // A, channel 0
            let (c0, c1) = match x {
                5 => (1.0, 0.0),
                6 => (0.6, 0.8),
                _ => (0.0, 1.0),
            };
            v[16 + x] = c0;
            v[16 + 8 + x] = c1;
        }
        let feat = Tensor::<5>::from_data(TensorData::new(v, [3, 2, 2, 2, 2]), &dev);
        // A → A': one point (feature voxel 0 of A) whose true correspondences are A' voxels 5 and 6.
        // A' → A: one point with no correspondence (ignored).
        let dirs = [
            MssDirection {
                query: vec![0],
                positives: vec![vec![5, 6]],
            },
            MssDirection {
                query: vec![3],
                positives: vec![vec![]],
            },
        ];
        let s = one_sample(vec![[0.0; 3]; 3], vec![dirs.clone(), dirs.clone(), dirs]);
        let (loss, top1) = mss_scale_loss(feat, &[s], 2, &dev, true);
        // Logits 15·cos: voxel 5 → 15, voxel 6 → 9, six others → 0.
        let log_z = (15f64.exp() + 9f64.exp() + 6.0).ln();
        let want = -0.5 * ((15.0 - log_z) + (9.0 - log_z));
        let got = scalar(&loss);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        assert_eq!(top1, Some(1.0));
    }

    #[test]
    fn losses_of_a_real_batch_are_finite() {
        let cfg =
            MedLamConfig::new(16, [2, 4, 4, 8, 8], [8, 4, 4, 4], [8, 4]).with_decoder_levels(3);
        let dims = [30, 30, 30];
        let data: Vec<f32> = (0..27000)
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect();
        let vol = Prepared::from_parts(
            dims,
            data,
            ResampleGrid::new(dims, [3.0; 3], [3.0; 3]).unwrap(),
        )
        .unwrap();
        let vols = vec![TrainVolume {
            name: "x".into(),
            vol,
        }];
        let o = SamplingOptions {
            points: 4,
            ..Default::default()
        };
        let s = draw_batch(&vols, 1, 0, 2, &cfg, &o);
        let dev = Device::flex();
        let net = cfg.init(&dev).unwrap();
        let l = batch_loss(&net, &s, &cfg, &dev, true);
        let (u, m) = (scalar(&l.uam), scalar(&l.mss));
        assert!(
            u.is_finite() && u >= 0.0 && m.is_finite() && m > 0.0,
            "{u} {m}"
        );
        assert!((0.0..=1.0).contains(&l.top1.unwrap()));
    }
}
