//! `train`: MedLAM's self-supervised training on CT scans.

use std::path::{Path, PathBuf};

use medlsam::{Error, Result};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// CT images: a .nii(.gz) file, a glob such as 'data/*.ct.nii.gz', a directory, or a
    /// text file listing paths (repeatable).
    #[arg(long, required = true)]
    images: Vec<String>,
    /// Inference weights written at every checkpoint and at the end.
    #[arg(long, default_value = "weights/medlam.bpk")]
    out: PathBuf,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Samples per step (each sample is 3 patches: A, augmented A, B).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Continue from the checkpoint in --checkpoint-dir.
    #[arg(long)]
    resume: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Checkpoint directory (default: OUT with extension .ckpt).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Cache of preprocessed CTs (default: the system temp dir /medlsam-cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Stop after this many steps (smoke runs); the schedule still follows --epochs.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Network sizes as JSON (a MedLamConfig); default: the CPU configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the training steps run: cpu (Burn Flex) or wgpu (the GPU through Vulkan).
    #[arg(long, default_value = "cpu")]
    backend: medlsam::device::BackendChoice,
    /// Only prepare: write each CT's training volume (3 mm, HU mapped, body-cropped,
    /// 8-bit) as DIR/<case>.medlam and stop. --images accepts these files, so a
    /// GPU machine can train from them without the original scans.
    #[arg(long, value_name = "DIR")]
    export_prepared: Option<PathBuf>,
    /// Start from these MedLAM weights (same network config) instead of a random
    /// init, e.g. to continue a finished run on another machine; ignored with --resume
    /// when a checkpoint exists.
    #[arg(long, value_name = "WEIGHTS")]
    init: Option<PathBuf>,
}

/// `medlsam train`.
pub fn train(a: TrainArgs) -> Result<()> {
    use medlsam::medlam::train::format_event;
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| Error::Backend(format!("--threads: {e}")))?;
    }
    if let Some(dir) = &a.export_prepared {
        return export_prepared(&a.images, dir);
    }
    let opts = train_options(a)?;
    eprintln!(
        "training MedLAM on {} CTs ({} backend): {:?}, {} epochs, batch {}, lr {}, seed {}",
        opts.images.len(),
        opts.backend.name(),
        opts.config,
        opts.epochs,
        opts.batch,
        opts.lr,
        opts.seed
    );
    let s = medlsam::medlam::train::train(&opts, &mut |e| eprintln!("{}", format_event(&e)))?;
    println!(
        "trained {} of {} steps on {} CTs in {:.0} s; last loss {:.4} (uam rmse {:.1} mm, mss {:.4}); \
         validation mss top-1 {:.1} %; weights: {}",
        s.steps,
        s.total_steps,
        s.volumes,
        s.wall_s,
        s.last.total,
        s.last.uam_rmse_mm(),
        s.last.mss,
        100.0 * s.validation.mss_top1,
        opts.out.display()
    );
    Ok(())
}

/// `--export-prepared DIR`: write the training volumes of `images` and stop.
fn export_prepared(images: &[String], dir: &Path) -> Result<()> {
    use medlsam::medlam::train::expand_images;
    let (written, skipped) = medlsam::medlam::train::export_prepared(&expand_images(images)?, dir)?;
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    println!(
        "wrote {} prepared training volumes to {}",
        written.len(),
        dir.display()
    );
    if written.is_empty() {
        Err(Error::Failed("no training volume could be prepared".into()))
    } else {
        Ok(())
    }
}

/// The training options of the arguments (the network config read from `--config`).
fn train_options(a: TrainArgs) -> Result<medlsam::medlam::train::TrainOptions> {
    use medlsam::medlam::train::{TrainOptions, default_config, expand_images};
    let config = match &a.config {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))?,
        None => default_config(),
    };
    Ok(TrainOptions {
        images: expand_images(&a.images)?,
        checkpoint_dir: a
            .checkpoint_dir
            .unwrap_or_else(|| a.out.with_extension("ckpt")),
        out: a.out,
        config,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        resume: a.resume,
        cache_dir: Some(
            a.cache_dir
                .unwrap_or_else(|| std::env::temp_dir().join("medlsam-cache")),
        ),
        checkpoint_every: a.checkpoint_every,
        log_every: a.log_every,
        max_steps: a.max_steps,
        sampling: Default::default(),
        backend: a.backend,
        init: a.init,
    })
}
