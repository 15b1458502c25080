//! The command line: one module per command (group), shared option groups in
//! [`args`]; each command parses its options and calls the run layer
//! (`medlsam::run`), then prints.

mod args;
mod bench;
mod inspect;
mod localize;
mod phantom;
mod progress;
mod segment;
mod train;
mod weights;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use medlsam::device::BackendChoice;

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
    Train(Box<train::TrainArgs>),
    /// Localize organs in query CTs from labelled supports with MedLAM: writes
    /// DIR/<case>.boxes.json (file voxel indices) and, with --query-label, localization.csv.
    Localize(Box<localize::LocalizeArgs>),
    /// Few-shot localization evaluation on OpenKBP: baseline, UAM, MSS, UAM+MSS.
    EvalLocalize(Box<localize::EvalLocalizeArgs>),
    /// The whole pipeline with no user data: synthetic CT phantoms (two labelled supports,
    /// one query stored in RAS) are generated, the query is localized and segmented, and the
    /// DSC against its known organs is printed.
    Demo {
        #[arg(long, default_value = "demo_out")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        backend: BackendChoice,
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
    Weights(weights::WeightsCommand),
    /// Few-shot segmentation: localize each organ of the supports in every query with
    /// MedLAM, then segment the slices of its boxes with LiteMedSAM. With
    /// --boxes-from-label, prompts are a label map's true 2-D boxes instead (the paper's
    /// "manual box" ceiling).
    Segment(Box<segment::SegmentArgs>),
    /// Evaluate the pipeline on labelled queries (same options as segment; every query
    /// needs --query-label): each query is segmented with MedLAM SPL boxes, MedLAM WPL
    /// boxes and its true per-slice boxes (oracle), every slice encoded once for all
    /// three; writes OUT/eval.csv and OUT/times.csv as each query finishes and resumes
    /// from them; prints DSC per organ for each mode.
    EvalSegment(Box<segment::SegmentArgs>),
    /// Print the summary of an eval-segment output folder (OUT/eval.csv, OUT/times.csv)
    /// without evaluating anything, e.g. of a run still in progress. Several folders:
    /// their modes side by side on the queries all of them finished.
    EvalReport {
        /// The folders eval-segment wrote (its --out).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Benchmarks (timings and peak memory).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parse the command line, run the command, print an error as one line.
pub fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Info { file, json } => inspect::info(&file, json),
        Command::Metrics {
            pred,
            truth,
            labels,
            names,
            json,
        } => inspect::metrics(&pred, &truth, &labels, names.as_deref(), json),
        Command::Demo { out, seed, backend } => phantom::demo(&out, seed, backend),
        Command::Phantom {
            out,
            name,
            dims,
            spacing,
            seed,
            ras,
        } => phantom::write_phantom_command(&out, &name, &dims, &spacing, seed, ras),
        Command::Weights(c) => weights::weights(c),
        Command::Train(a) => train::train(*a),
        Command::Localize(a) => localize::localize(*a),
        Command::EvalLocalize(a) => localize::eval_localize_command(*a),
        Command::Segment(a) => segment::segment(*a),
        Command::EvalSegment(a) => segment::eval_segment(*a),
        Command::EvalReport { dirs } => segment::eval_report(&dirs),
        Command::Bench(c) => bench::bench(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
