//! `localize` (MedLAM boxes for query CTs) and `eval-localize` (the few-shot
//! localization evaluation on OpenKBP).

use std::path::PathBuf;

use medlsam::Result;
use medlsam::device::BackendChoice;
use medlsam::medlam::LocalizeOptions;
use medlsam::run::config::{Organs, parse_organs};
use medlsam::run::eval_localize::{EvalOptions, eval_localize};
use medlsam::run::localize::{LocalizeRun, run_localize};

use super::args::{ModeArg, QueryArgs, SearchArgs, SupportArgs, check_weight};

#[derive(clap::Args)]
#[command(
    mut_arg("support_image", |a| a.required(true)),
    mut_arg("support_label", |a| a.required(true)),
    mut_arg("query", |a| a.required(true))
)]
pub struct LocalizeArgs {
    #[command(flatten)]
    supports: SupportArgs,
    #[command(flatten)]
    queries: QueryArgs,
    /// Organs, e.g. 1,3, or all (default: every label of the supports).
    #[arg(long)]
    organs: Option<String>,
    /// wpl (one box per organ) or spl (a box per slab of --slab-mm).
    #[arg(long, value_enum, ignore_case = true, default_value = "wpl")]
    mode: ModeArg,
    #[arg(long, default_value_t = 6.0)]
    slab_mm: f64,
    #[arg(long, default_value = "weights/medlam.bpk")]
    weights: PathBuf,
    #[arg(long, default_value = "cpu")]
    backend: BackendChoice,
    #[command(flatten)]
    search: SearchArgs,
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
    #[arg(long)]
    out: PathBuf,
}

/// `medlsam localize`.
pub fn localize(a: LocalizeArgs) -> Result<()> {
    check_weight("--shape-blend", a.shape_blend)?;
    check_weight("--layout-blend", a.layout_blend)?;
    let supports = a.supports.cases()?;
    let mode = a.mode.box_mode(Some(a.slab_mm))?;
    let query_label_map = a.queries.label_map()?;
    let defaults = LocalizeOptions::default();
    let run = LocalizeRun {
        supports,
        queries: a.queries.query,
        query_labels: a.queries.query_label,
        query_label_map,
        organs: a
            .organs
            .as_deref()
            .map(parse_organs)
            .transpose()?
            .unwrap_or(Organs::All),
        mode,
        options: LocalizeOptions {
            search_radius_vox: a.search.search_radius.unwrap_or(defaults.search_radius_vox),
            uam: !a.no_uam,
            mss: !a.no_mss,
            centred: !a.tiled,
            per_support: !a.mean_windows,
            shape_blend: a.shape_blend,
            layout_blend: a.layout_blend,
            template_radius_vox: a
                .search
                .template_radius
                .unwrap_or(defaults.template_radius_vox),
            mss_iterations: a.mss_iterations,
            ..defaults
        },
        weights: a.weights,
        device: a.backend.device(),
        out: a.out,
    };
    run_localize(&run, &mut |l| eprintln!("{l}"))?;
    println!("wrote {}", run.out.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalLocalizeArgs {
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
    backend: BackendChoice,
    #[arg(long, default_value = "out/eval_localize")]
    out: PathBuf,
}

/// `medlsam eval-localize`.
pub fn eval_localize_command(a: EvalLocalizeArgs) -> Result<()> {
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
        device: a.backend.device(),
        out: a.out,
    };
    eval_localize(&o, &mut |l| eprintln!("{l}"))?;
    println!("wrote {}", o.out.display());
    Ok(())
}
