//! `bench sam | medlam | segment`: timings and peak memory.

use std::path::{Path, PathBuf};

use medlsam::device::BackendChoice;
use medlsam::run::bench::{SamBench, bench_medlam, bench_sam};
use medlsam::run::inputs::default_data_dir;
use medlsam::volume::synthetic::PhantomOptions;
use medlsam::{Error, Result};

use super::phantom::{phantom_options, write_phantom};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// LiteMedSAM: encoder ms/slice, decoder ms/box, peak memory.
    Sam {
        #[arg(long, default_value = "cpu")]
        backend: BackendChoice,
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
        backend: BackendChoice,
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
        backend: BackendChoice,
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
    },
}

/// Run a benchmark.
pub fn bench(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Sam {
            backend,
            slices,
            boxes,
            ct,
            weights,
        } => bench_sam(&SamBench {
            backend,
            slices,
            boxes,
            ct: ct.unwrap_or_else(|| default_data_dir().join("abdomen/ircadb_017.ct.nii.gz")),
            weights,
        }),
        BenchCommand::Segment {
            dims,
            spacing,
            organs,
            backend,
            work,
        } => bench_segment(&dims, &spacing, &organs, backend, &work),
        BenchCommand::Medlam {
            weights,
            queries,
            backend,
            data,
        } => {
            let r = bench_medlam(
                &data,
                &weights,
                queries.max(1),
                &backend.device(),
                &mut |l| eprintln!("{l}"),
            )?;
            print!("{r}");
            Ok(())
        }
    }
}

/// Write two small support phantoms and one large query phantom, then run
/// `medlsam segment` on them in a child process (so that its peak memory is the
/// pipeline's alone) and relay what it prints.
pub fn bench_segment(
    dims: &[usize],
    spacing: &[f64],
    organs: &str,
    backend: BackendChoice,
    work: &Path,
) -> Result<()> {
    let opt = phantom_options(dims, spacing, 3, true)?;
    let ([nx, ny, nz], [sx, sy, sz]) = (opt.dims, opt.spacing_mm);
    let inputs = work.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let t = std::time::Instant::now();
    let (query, query_label, _) = write_phantom(&inputs, &format!("query_{nx}x{ny}x{nz}"), &opt)?;
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
        return Err(Error::Failed(format!("segment failed: {status}")));
    }
    Ok(())
}
