//! Registration-only accuracy on labelled OpenKBP cases: each support registered to
//! each query, the warped labels fused, thresholded at 0.5 on the query's own grid
//! and compared with its label map (DSC per organ present in the query).
//!
//! Three results per organ: (a) affine only, majority vote; (b) affine + B-spline,
//! majority vote; (c) affine + B-spline, votes weighted by local similarity (one
//! column per weighted mode asked for).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use super::intensity::{IntensityModel, learn_models, model_for};
use super::{
    FuseMode, OrganMaps, OrganPoints, RegImage, RegisterOptions, Registration, fuse, label_points,
    points_init, prior_to_canonical, register, warp_labels,
};
use crate::metrics::dice_pct;
use crate::volume::labels::mask_of;
use crate::volume::{CtVolume, LabelVolume, Reorientation, Volume, read_nifti_path};
use crate::{Error, Result};

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Folder with `okbp_NNN.ct.nii.gz` and `okbp_NNN.label.nii.gz`.
    pub openkbp_dir: PathBuf,
    /// Support case ids (e.g. `okbp_001`).
    pub supports: Vec<String>,
    /// Query case ids.
    pub queries: Vec<String>,
    /// Organ labels (1..=7 on OpenKBP).
    pub organs: Vec<u16>,
    pub register: RegisterOptions,
    /// The weighted fusion modes (column c, one per mode).
    pub weighted: Vec<FuseMode>,
    /// Intensity refinement of the last fused prior, one more column per `α`
    /// ([`super::intensity`]).
    pub alphas: Vec<f32>,
    /// Then one more column per `κ`: each organ's exponent raised from 1 to reach `κ` nats
    /// of evidence ([`IntensityModel::exponent`]).
    pub kappas: Vec<f32>,
    /// The band around each organ whose HU make its "around" histogram, mm.
    pub band_mm: f64,
}

/// One query's result.
#[derive(Clone, Debug)]
pub struct QueryResult {
    pub case: String,
    /// Per organ present in the query: (label, DSC % of a, b, then each weighted mode).
    pub dsc: Vec<(u16, Vec<f64>)>,
    /// Registration seconds for all supports (affine + deformable).
    pub register_s: f64,
    /// Warping and fusion seconds.
    pub fuse_s: f64,
    /// Mean NCC over supports after init, affine, deformable.
    pub ncc: [f64; 3],
    /// Supports whose registration failed (with the message).
    pub failures: Vec<String>,
}

struct Case {
    /// The canonical CT.
    ct: CtVolume,
    image: RegImage,
    labels: LabelVolume,
    reorientation: Reorientation,
}

fn load(dir: &Path, case: &str) -> Result<Case> {
    let ct = read_nifti_path(dir.join(format!("{case}.ct.nii.gz")))?.into_ct()?;
    let labels = read_nifti_path(dir.join(format!("{case}.label.nii.gz")))?.into_labels()?;
    ct.check_same_grid(&labels, case)?;
    let (ct_c, reorientation) = ct.to_canonical();
    Ok(Case {
        image: RegImage::from_canonical(&ct_c)?,
        ct: ct_c,
        labels,
        reorientation,
    })
}

/// Where the second start of each registration comes from (beside the body boxes).
pub enum InitPoints<'a> {
    /// None: the body boxes only.
    Body,
    /// The query's own organ points (its label map: an upper bound for a localizer).
    Truth,
    /// A localizer's organ points in the canonical query (e.g. MedLAM's).
    Located(&'a mut dyn FnMut(&CtVolume) -> Result<Vec<OrganPoints>>),
}

/// One support: its image, organ maps and organ points.
type Support = (RegImage, OrganMaps, Vec<OrganPoints>);

/// A fused prior per organ on the canonical query grid.
type CanonicalPrior = Vec<(u16, Volume<f32>)>;

/// Run the evaluation; `log` gets one line per query as it finishes.
pub fn run(
    opts: &EvalOptions,
    mut init: InitPoints,
    device: &Device,
    mut log: impl FnMut(&QueryResult),
) -> Result<Vec<QueryResult>> {
    let (supports, models) = load_supports(opts)?;
    let mut out = Vec::new();
    for q in &opts.queries {
        let res = eval_query(opts, &supports, &models, q, &mut init, device)?;
        log(&res);
        out.push(res);
    }
    Ok(out)
}

/// The supports, and the intensity models learnt on them when `alphas` asks for any.
fn load_supports(opts: &EvalOptions) -> Result<(Vec<Support>, Vec<IntensityModel>)> {
    let dir = &opts.openkbp_dir;
    let mut supports = Vec::new();
    let mut appearance = Vec::new();
    for s in &opts.supports {
        let c = load(dir, s)?;
        let canon = c.labels.reoriented(&c.reorientation);
        let maps = OrganMaps::from_canonical_labels(&canon, &c.image, &opts.organs)?;
        let points = label_points(&canon, &opts.organs);
        supports.push((c.image, maps, points));
        appearance.push((c.ct, canon));
    }
    let models = if opts.alphas.is_empty() && opts.kappas.is_empty() {
        Vec::new()
    } else {
        let pairs: Vec<_> = appearance.iter().map(|(c, l)| (c, l)).collect();
        learn_models(&pairs, &opts.organs, opts.band_mm)?
    };
    Ok((supports, models))
}

/// One query: every support registered to it, fused and scored.
fn eval_query(
    opts: &EvalOptions,
    supports: &[Support],
    models: &[IntensityModel],
    q: &str,
    init: &mut InitPoints,
    device: &Device,
) -> Result<QueryResult> {
    let query = load(&opts.openkbp_dir, q)?;
    let fixed = &query.image;
    let t0 = Instant::now();
    let located = match init {
        InitPoints::Body => Vec::new(),
        InitPoints::Truth => {
            label_points(&query.labels.reoriented(&query.reorientation), &opts.organs)
        }
        InitPoints::Located(f) => f(&query.ct)?,
    };
    let (regs, failures) = register_supports(opts, supports, fixed, &located, device);
    let register_s = t0.elapsed().as_secs_f64();
    if regs.is_empty() {
        return Err(Error::Failed(format!(
            "{q}: every registration failed: {failures:?}"
        )));
    }
    let t1 = Instant::now();
    let canons = canonical_priors(opts, supports, models, &query, &regs)?;
    let dsc = dsc_rows(opts, &query, &canons)?;
    let nr = regs.len() as f64;
    let ncc = [0, 1, 2].map(|i| regs.iter().map(|(_, r)| r.ncc[i]).sum::<f64>() / nr);
    Ok(QueryResult {
        case: q.to_string(),
        dsc,
        register_s,
        fuse_s: t1.elapsed().as_secs_f64(),
        ncc,
        failures,
    })
}

/// Each support registered to the query: (support index, registration) of those that
/// succeeded, and a message per failure.
fn register_supports(
    opts: &EvalOptions,
    supports: &[Support],
    fixed: &RegImage,
    located: &[OrganPoints],
    device: &Device,
) -> (Vec<(usize, Registration)>, Vec<String>) {
    let mut regs = Vec::new();
    let mut failures = Vec::new();
    for (si, (img, _, points)) in supports.iter().enumerate() {
        let start = points_init(located, points);
        match pollster::block_on(register(
            fixed,
            img,
            start.as_ref(),
            &opts.register,
            device,
            &Default::default(),
        )) {
            Ok(r) => regs.push((si, r)),
            Err(e) => failures.push(format!("{}: {e}", opts.supports[si])),
        }
    }
    (regs, failures)
}

/// The fused priors on the canonical query grid, one per column: affine, B-spline, each
/// weighted mode, then the last one refined with each `α`.
fn canonical_priors(
    opts: &EvalOptions,
    supports: &[Support],
    models: &[IntensityModel],
    query: &Case,
    regs: &[(usize, Registration)],
) -> Result<Vec<CanonicalPrior>> {
    let fixed = &query.image;
    let mut warped_aff = Vec::new();
    let mut warped_def = Vec::new();
    for (si, r) in regs {
        let (img, maps, _) = &supports[*si];
        warped_aff.push(warp_labels(fixed, img, maps, &r.affine_only())?);
        warped_def.push(warp_labels(fixed, img, maps, r)?);
    }
    let mut priors = vec![
        fuse(fixed, &warped_aff, FuseMode::Mean)?,
        fuse(fixed, &warped_def, FuseMode::Mean)?,
    ];
    for m in &opts.weighted {
        priors.push(fuse(fixed, &warped_def, *m)?);
    }
    let mut canons = Vec::new();
    for prior in &priors {
        canons.push(prior_to_canonical(fixed, prior)?);
    }
    if let Some(last) = canons.last().cloned() {
        let columns = opts.alphas.iter().map(|&a| (a, 0.0));
        for (alpha, kappa) in columns.chain(opts.kappas.iter().map(|&k| (1.0, k))) {
            let mut refined = Vec::new();
            for (o, p) in &last {
                match model_for(models, *o) {
                    Some(m) => {
                        refined.push((*o, m.refine(p, &query.ct, m.exponent(alpha, kappa))?))
                    }
                    None => refined.push((*o, p.clone())),
                }
            }
            canons.push(refined);
        }
    }
    Ok(canons)
}

/// Per organ present in the query: its DSC % in each column (prior ≥ 0.5).
fn dsc_rows(
    opts: &EvalOptions,
    query: &Case,
    canons: &[CanonicalPrior],
) -> Result<Vec<(u16, Vec<f64>)>> {
    let present: Vec<u16> = opts
        .organs
        .iter()
        .copied()
        .filter(|o| query.labels.data.contains(o))
        .collect();
    let mut dsc: Vec<(u16, Vec<f64>)> = present.iter().map(|&o| (o, Vec::new())).collect();
    for canon in canons {
        for (o, row) in dsc.iter_mut() {
            let (_, p) = canon
                .iter()
                .find(|(l, _)| l == o)
                .ok_or_else(|| Error::Failed(format!("organ {o} not fused")))?;
            let mask: Volume<bool> = p.map(|v| v >= 0.5).from_canonical(&query.reorientation)?;
            let truth = mask_of(&query.labels, *o);
            row.push(dice_pct(&mask, &truth)?.unwrap_or(0.0));
        }
    }
    Ok(dsc)
}

/// One line per query: case, seconds, NCC, mean DSC per column.
pub fn query_line(r: &QueryResult) -> String {
    let cols = r.dsc.first().map_or(0, |d| d.1.len());
    let means: Vec<String> = (0..cols)
        .map(|c| {
            let v: f64 = r.dsc.iter().map(|d| d.1[c]).sum::<f64>() / r.dsc.len().max(1) as f64;
            format!("{v:5.1}")
        })
        .collect();
    format!(
        "{}  reg {:5.1} s  fuse {:4.1} s  ncc {:.3}/{:.3}/{:.3}  mean DSC {}{}",
        r.case,
        r.register_s,
        r.fuse_s,
        r.ncc[0],
        r.ncc[1],
        r.ncc[2],
        means.join(" "),
        if r.failures.is_empty() {
            String::new()
        } else {
            format!("  FAILED: {}", r.failures.join("; "))
        }
    )
}

/// The per-organ table (mean DSC over the queries that have the organ) and the overall
/// mean over (query, organ) pairs; `names` gives organ names.
pub fn summary_table(results: &[QueryResult], names: &dyn Fn(u16) -> String) -> String {
    let cols = results
        .iter()
        .find_map(|r| r.dsc.first().map(|d| d.1.len()))
        .unwrap_or(0);
    let mut header = format!("{:<14}{:>4}", "organ", "n");
    let labels = ["(a) affine", "(b) +bspline"];
    for c in 0..cols {
        let name = labels
            .get(c)
            .map_or(format!("(c{}) weighted", c - 1), |s| s.to_string());
        header.push_str(&format!("{name:>15}"));
    }
    let mut lines = vec![header];
    let mut organs: Vec<u16> = results
        .iter()
        .flat_map(|r| r.dsc.iter().map(|d| d.0))
        .collect();
    organs.sort_unstable();
    organs.dedup();
    let mut all = vec![Vec::new(); cols];
    for o in organs {
        let rows: Vec<&Vec<f64>> = results
            .iter()
            .flat_map(|r| r.dsc.iter().filter(|d| d.0 == o).map(|d| &d.1))
            .collect();
        let mut line = format!("{:<14}{:>4}", names(o), rows.len());
        for c in 0..cols {
            let v: Vec<f64> = rows.iter().map(|r| r[c]).collect();
            all[c].extend(v.iter().copied());
            line.push_str(&format!(
                "{:>15.1}",
                v.iter().sum::<f64>() / v.len().max(1) as f64
            ));
        }
        lines.push(line);
    }
    let mut line = format!(
        "{:<14}{:>4}",
        "mean (pairs)",
        all.first().map_or(0, Vec::len)
    );
    for v in &all {
        line.push_str(&format!(
            "{:>15.1}",
            v.iter().sum::<f64>() / v.len().max(1) as f64
        ));
    }
    lines.push(line);
    let n = results.len().max(1) as f64;
    let reg: Vec<f64> = results.iter().map(|r| r.register_s).collect();
    lines.push(format!(
        "registration per query: mean {:.1} s (max {:.1} s); warping+fusion mean {:.1} s; {} queries",
        reg.iter().sum::<f64>() / n,
        reg.iter().copied().fold(0.0, f64::max),
        results.iter().map(|r| r.fuse_s).sum::<f64>() / n,
        results.len()
    ));
    lines.join("\n")
}
