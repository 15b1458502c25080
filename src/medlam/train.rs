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
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::net::{MedLam, MedLamConfig, UAM_RATIO_MM};
use super::prep::Prepared;
use super::sample::{Sample, SamplingOptions, draw_sample};
use crate::device::BackendChoice;
use crate::rng::Rng;
use crate::volume::labels::bounding_box_where;
use crate::volume::resample::ResampleGrid;
use crate::{Error, Result};

/// UAM loss unit: errors are measured in cm.
const UAM_UNIT_MM: f32 = 10.0;
/// MSS softmax temperature on cosine similarities (the reference's 15).
pub const MSS_TEMPERATURE: f32 = 15.0;

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

/// A CT ready for sampling.
pub struct TrainVolume {
    pub name: String,
    pub vol: Prepared,
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

/// Expand image specifications: a `.nii`/`.nii.gz` (or prepared `.medlam`) path, a glob
/// (`*`, `?` in the file name), a directory (its `*.nii.gz`/`*.nii`/`*.medlam`), or a
/// text file listing paths.
pub fn expand_images(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for spec in specs {
        let path = Path::new(spec);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.contains('*') || name.contains('?') {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| glob_match(&name, &n.to_string_lossy()))
                })
                .collect();
            if hits.is_empty() {
                return Err(Error::InvalidArgument(format!("no file matches {spec}")));
            }
            hits.sort();
            out.extend(hits);
        } else if path.is_dir() {
            let mut hits: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_training_image(&p.to_string_lossy()))
                .collect();
            hits.sort();
            out.extend(hits);
        } else if name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".medlam") {
            out.push(path.to_path_buf());
        } else if path.is_file() {
            let text = std::fs::read_to_string(path)?;
            let base = path.parent().unwrap_or(Path::new("."));
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let p = Path::new(line);
                out.push(if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                });
            }
        } else {
            return Err(Error::InvalidArgument(format!(
                "{spec}: not a NIfTI file, a glob, a directory or a list file"
            )));
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("no training images given".into()));
    }
    Ok(out)
}

/// A file name `--images` takes as an image: NIfTI or a prepared `.medlam` volume.
fn is_training_image(name: &str) -> bool {
    name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".medlam")
}

/// Shell-style match of `*` and `?` against a whole file name.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Body crop margin in grid voxels.
const BODY_MARGIN: usize = 4;

/// Read, reorient, resample, map, body-crop and quantise one CT for training.
fn prepare_for_training(path: &Path) -> Result<Prepared> {
    let ct = crate::volume::load_ct(path)?;
    let (canon, _) = ct.to_canonical();
    let p = Prepared::from_canonical(&canon)?;
    // HU > −500 ⇔ intensity > 0.125.
    let bb = bounding_box_where(
        &crate::volume::Volume {
            dims: p.dims,
            data: p.data.clone(),
            affine: crate::volume::Affine::identity(),
        },
        |v| v > 0.125,
    )
    .ok_or_else(|| {
        Error::InvalidVolume(format!("{}: no body (HU > −500) found", path.display()))
    })?;
    let lo = bb.min.map(|x| x.saturating_sub(BODY_MARGIN));
    let hi = [0, 1, 2].map(|a| (bb.max[a] + BODY_MARGIN).min(p.dims[a] - 1));
    let dims = [0, 1, 2].map(|a| hi[a] - lo[a] + 1);
    let mut data = Vec::with_capacity(dims.iter().product());
    for k in lo[2]..=hi[2] {
        for j in lo[1]..=hi[1] {
            for i in lo[0]..=hi[0] {
                data.push(quantise(p.data[i + p.dims[0] * (j + p.dims[1] * k)]));
            }
        }
    }
    from_quantised(dims, &data)
}

fn quantise(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

fn from_quantised(dims: [usize; 3], data: &[u8]) -> Result<Prepared> {
    // Training needs relative positions only: the grid is its own reference.
    let grid = ResampleGrid::new(dims, [3.0; 3], [3.0; 3])?;
    Prepared::from_parts(dims, data.iter().map(|&q| q as f32 / 255.0).collect(), grid)
}

/// Cache file of one image: keyed by its absolute path, size and modification time.
fn cache_path(dir: &Path, image: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(image)?;
    let abs = std::fs::canonicalize(image)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let key = format!("{}|{}|{}|v1", abs.display(), meta.len(), mtime);
    // FNV-1a 64.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    Ok(dir.join(format!("{h:016x}.medlam")))
}

fn read_cache(path: &Path) -> Option<Prepared> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 16 || &bytes[..4] != b"MLC1" {
        return None;
    }
    let dim = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let dims = [dim(4), dim(8), dim(12)];
    let n: usize = dims.iter().product();
    (bytes.len() == 16 + n).then(|| from_quantised(dims, &bytes[16..]).ok())?
}

fn write_cache(path: &Path, vol: &Prepared) -> Result<()> {
    let mut bytes = b"MLC1".to_vec();
    for d in vol.dims {
        bytes.extend_from_slice(&(d as u32).to_le_bytes());
    }
    bytes.extend(vol.data.iter().map(|&v| quantise(v)));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// A prepared training volume (`.medlam`, written by [`export_prepared`] or the cache).
fn is_prepared(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "medlam")
}

/// A `.medlam` file read back, or a CT prepared now.
fn prepared_volume(path: &Path) -> Result<Prepared> {
    if is_prepared(path) {
        read_cache(path).ok_or_else(|| {
            Error::InvalidVolume(
                "not a prepared training volume (MLC1 header and 8-bit voxels)".into(),
            )
        })
    } else {
        prepare_for_training(path)
    }
}

/// Prepare each CT for training (3 mm, HU mapped, body-cropped, 8-bit) and write it as
/// `dir/<case>.medlam`, so that preparation runs once and training elsewhere (another
/// machine, a GPU) reads only these small files. Returns the written paths; CTs that
/// cannot be prepared are named in the second result.
pub fn export_prepared(images: &[PathBuf], dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    for path in images {
        match prepared_volume(path) {
            Ok(v) => {
                let out = dir.join(format!("{}.medlam", crate::batch::case_name(path)));
                write_cache(&out, &v)?;
                written.push(out);
            }
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((written, skipped))
}

/// Load and prepare the training CTs (from the cache when possible). Files that cannot
/// be read are skipped and named in the second result; none readable is an error.
pub fn load_volumes(
    images: &[PathBuf],
    cache_dir: Option<&Path>,
) -> Result<(Vec<TrainVolume>, Vec<String>)> {
    if let Some(d) = cache_dir {
        std::fs::create_dir_all(d)?;
    }
    use rayon::prelude::*;
    // One CT per thread; the order of the result is the order of `images`.
    let loaded: Vec<Result<std::result::Result<TrainVolume, String>>> = images
        .par_iter()
        .map(|path| {
            let name = crate::batch::case_name(path);
            // Prepared files are read as they are; CTs go through the cache.
            let cached = cache_dir
                .filter(|_| !is_prepared(path))
                .and_then(|d| cache_path(d, path).ok());
            if let Some(vol) = cached.as_deref().and_then(read_cache) {
                return Ok(Ok(TrainVolume { name, vol }));
            }
            match prepared_volume(path) {
                Ok(vol) => {
                    if let Some(c) = &cached {
                        write_cache(c, &vol)?;
                    }
                    Ok(Ok(TrainVolume { name, vol }))
                }
                Err(e) => Ok(Err(format!("{}: {e}", path.display()))),
            }
        })
        .collect();
    let mut vols = Vec::new();
    let mut skipped = Vec::new();
    for r in loaded {
        match r? {
            Ok(v) => vols.push(v),
            Err(s) => skipped.push(s),
        }
    }
    if vols.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "none of the {} training images could be used (first problem: {})",
            images.len(),
            skipped.first().map_or("-", |s| s.as_str())
        )));
    }
    Ok((vols, skipped))
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

/// Draw the samples of one step (deterministic for `(seed, step)`).
pub fn draw_batch(
    vols: &[TrainVolume],
    seed: u64,
    step: u64,
    batch: usize,
    config: &MedLamConfig,
    o: &SamplingOptions,
) -> Vec<Sample> {
    use rayon::prelude::*;
    // One generator per sample, seeded from the step's stream: the batch is the same
    // whatever the number of threads that draw it.
    let mut rng = Rng::stream(seed, step);
    let seeds: Vec<u64> = (0..batch).map(|_| rng.next_u64()).collect();
    seeds
        .into_par_iter()
        .map(|s| {
            let mut rng = Rng::new(s);
            let v = &vols[rng.below(vols.len())].vol;
            draw_sample(v, &mut rng, config.patch, config.feature_strides(), o)
        })
        .collect()
}

/// Patches as a network input `[N, 1, P, P, P]`.
fn patches_input<'a>(
    patches: impl Iterator<Item = &'a Vec<f32>>,
    patch: usize,
    device: &Device,
) -> Tensor<5> {
    let mut data = Vec::new();
    let mut n = 0;
    for p in patches {
        data.extend_from_slice(p);
        n += 1;
    }
    Tensor::from_data(TensorData::new(data, [n, 1, patch, patch, patch]), device)
}

/// Loss tensors of one batch, and the MSS top-1 accuracy at the finest scale when asked.
pub struct BatchLoss {
    pub total: Tensor<1>,
    pub uam: Tensor<1>,
    pub mss: Tensor<1>,
    pub top1: Option<f64>,
}

/// UAM + MSS loss of a batch of samples.
pub fn batch_loss(
    net: &MedLam,
    samples: &[Sample],
    config: &MedLamConfig,
    device: &Device,
    with_top1: bool,
) -> BatchLoss {
    let main = samples
        .iter()
        .map(|s| &s.a)
        .chain(samples.iter().map(|s| &s.a_aug));
    let out = net.forward(patches_input(main, config.patch, device));
    let extra = net.position(patches_input(
        samples.iter().flat_map(|s| s.b.iter()),
        config.patch,
        device,
    ));
    let uam = uam_loss(Tensor::cat(vec![out.position, extra], 0), samples, device);
    let (mss, top1) = mss_loss(out.features, samples, device, with_top1);
    BatchLoss {
        total: uam.clone() + mss.clone(),
        uam,
        mss,
        top1,
    }
}

/// UAM loss (cm²) from the latent positions `[2B + nB, 3]` of `A…, A'…, B₁₁…` (the
/// `B` of sample 0 first): `r·tanh(p − p')` for every pair `(A, Bₖ)`, `(A', Bₖ)`,
/// `(Bₖ, Bₗ)` of a sample against the true centre offset.
pub fn uam_loss(position: Tensor<2>, samples: &[Sample], device: &Device) -> Tensor<1> {
    let b = samples.len();
    let r =
        Tensor::<1>::from_data(TensorData::new(UAM_RATIO_MM.to_vec(), [3]), device).reshape([1, 3]);
    let (mut first, mut second, mut target) = (Vec::new(), Vec::new(), Vec::new());
    let mut extra_row = 2 * b;
    for (si, s) in samples.iter().enumerate() {
        let n = s.centres.len() - 2;
        // Rows and centres of this sample's patches: A, A', B₁…Bₙ.
        let rows: Vec<usize> = [si, b + si]
            .into_iter()
            .chain(extra_row..extra_row + n)
            .collect();
        extra_row += n;
        for i in 0..rows.len() {
            for j in (i + 1).max(2)..rows.len() {
                first.push(rows[i] as i64);
                second.push(rows[j] as i64);
                for a in 0..3 {
                    target.push(
                        ((s.centres[i][a] - s.centres[j][a]) * super::prep::SPACING_MM) as f32,
                    );
                }
            }
        }
    }
    let pairs = first.len();
    let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [pairs]), device);
    let p1 = position.clone().select(0, index(first));
    let p2 = position.select(0, index(second));
    let target = Tensor::<2>::from_data(TensorData::new(target, [pairs, 3]), device);
    let err = (p1 - p2).tanh() * r - target;
    err.powi_scalar(2)
        .mean()
        .div_scalar(UAM_UNIT_MM * UAM_UNIT_MM)
}

/// MSS loss averaged over the three scales (and, when asked, the top-1 accuracy of the
/// finest scale) from the feature maps of `A…, A'…, B…`.
pub fn mss_loss(
    features: [Tensor<5>; 3],
    samples: &[Sample],
    device: &Device,
    with_top1: bool,
) -> (Tensor<1>, Option<f64>) {
    let mut terms = Vec::new();
    let mut top1 = None;
    for (s, feat) in features.into_iter().enumerate() {
        let (loss, acc) = mss_scale_loss(feat, samples, s, device, with_top1 && s == 2);
        terms.push(loss);
        top1 = top1.or(acc);
    }
    let n = terms.len() as f32;
    let sum = terms
        .into_iter()
        .reduce(|a, b| a + b)
        .expect("three scales");
    (sum.div_scalar(n), top1)
}

/// Cross-entropy of one scale: each query point's softmax over the cosine similarities
/// (×[`MSS_TEMPERATURE`]) with all feature voxels of the other patch, against the
/// uniform distribution over its true correspondences; mean over visible points.
fn mss_scale_loss(
    feat: Tensor<5>,
    samples: &[Sample],
    scale: usize,
    device: &Device,
    with_top1: bool,
) -> (Tensor<1>, Option<f64>) {
    let b = samples.len();
    let [n3, c, m, _, _] = feat.dims();
    let mm = m * m * m;
    let norm = feat
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-6);
    let flat: Tensor<3> = (feat / norm).reshape([n3, c, mm]).swap_dims(1, 2); // [3B, M, C]
    let rows: Tensor<2> = flat.clone().reshape([n3 * mm, c]);
    let k = samples[0].mss[scale][0].query.len();
    let mut idx = Vec::with_capacity(2 * b * k);
    let mut weights = vec![0f32; 2 * b * k * mm];
    let mut valid = 0usize;
    for dir in 0..2 {
        for (bi, smp) in samples.iter().enumerate() {
            // Direction 0 queries A (rows 0..B), direction 1 queries A' (rows B..2B).
            let source = if dir == 0 { bi } else { b + bi };
            let d = &smp.mss[scale][dir];
            for (pi, (&q, pos)) in d.query.iter().zip(&d.positives).enumerate() {
                idx.push((source * mm + q) as i64);
                if !pos.is_empty() {
                    valid += 1;
                    let row = ((dir * b + bi) * k + pi) * mm;
                    let w = 1.0 / pos.len() as f32;
                    for &t in pos {
                        weights[row + t] = w;
                    }
                }
            }
        }
    }
    let index = Tensor::<1, Int>::from_data(TensorData::new(idx, [2 * b * k]), device);
    let queries: Tensor<3> = rows.select(0, index).reshape([2 * b, k, c]);
    // Direction 0 matches against A' (rows B..2B), direction 1 against A (rows 0..B).
    let keys = Tensor::cat(vec![flat.clone().narrow(0, b, b), flat.narrow(0, 0, b)], 0);
    let logits = queries
        .matmul(keys.swap_dims(1, 2))
        .mul_scalar(MSS_TEMPERATURE);
    let top1 = with_top1.then(|| {
        let best: Vec<i64> = logits
            .clone()
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap_or_default();
        let hits = best
            .iter()
            .enumerate()
            .filter(|(row, t)| weights[row * mm + **t as usize] > 0.0)
            .count();
        hits as f64 / valid.max(1) as f64
    });
    let w = Tensor::<3>::from_data(TensorData::new(weights, [2 * b, k, mm]), device);
    let logp = log_softmax(logits, 2);
    let loss = (w * logp).sum().neg().div_scalar(valid.max(1) as f32);
    (loss, top1)
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
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
    use crate::medlam::sample::MssDirection;

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
