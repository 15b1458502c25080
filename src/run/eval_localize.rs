//! The few-shot localization evaluation on OpenKBP (`medlsam eval-localize`):
//! the no-learning baseline and MedLAM's variants (UAM, MSS, shape, layout,
//! templates) on random draws of supports and queries, and the box scores that
//! `localize` and `bench medlam` also report.
//!
//! Metrics are computed on the query's canonical grid (a permutation of its
//! file grid, so the values are those of the file grid): 3-D box IoU (%), WD
//! (mm) and ALE (mm) as in the paper.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use super::inputs::{load_ct, load_labels, read_support};
use super::outputs::csv_field;
use crate::medlam::atlas::{Atlas, SupportCase, SupportOrgans};
use crate::medlam::localize::{
    LocalizeOptions, QueryState, apply_layout, apply_templates, locate_points, organ_localization,
    organ_points, organs_in_view, query_state, regularize_parts,
};
use crate::medlam::net::{MedLam, MedLamConfig};
pub use crate::metrics::{BoxScores, score, slice_box_iou};
use crate::types::{BoxMode, OrganLocalization};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::{BoxVox, bounding_box, bounding_box_where, extreme_points};
use crate::volume::{CtVolume, LabelVolume};
use crate::{Error, Result};

/// Load MedLAM weights from a file onto a device.
pub fn load_weights(path: &Path, device: &Device) -> Result<(MedLam, MedLamConfig)> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Weights(format!(
            "cannot read MedLAM weights {}: {e} (train them with `medlsam train`, or pass --weights)",
            path.display()
        ))
    })?;
    MedLam::from_bytes(&bytes, device)
}

/// Body box (HU > −500) of a canonical CT, in canonical voxels.
fn body_box(ct: &CtVolume) -> Result<BoxVox> {
    bounding_box_where(ct, |v| v > -500)
        .ok_or_else(|| Error::InvalidVolume("no body (HU > −500) in the CT".into()))
}

/// The no-learning baseline: each support's organ box and extreme points, placed
/// relative to its body box, mapped into the query's body box and averaged over the
/// supports (canonical voxels of the query).
pub fn baseline_localization(
    supports: &[SupportCase],
    query: &CtVolume,
    label: u16,
) -> Result<Option<OrganLocalization>> {
    let qb = body_box(query)?;
    let mut sum = [[0.0f64; 3]; 6];
    let mut n = 0.0;
    for s in supports {
        let SupportOrgans::Labels(l) = &s.organs else {
            continue;
        };
        let Some(e) = extreme_points(l, label) else {
            continue;
        };
        let sb = body_box(&s.ct)?;
        for (k, p) in e.iter().enumerate() {
            for a in 0..3 {
                let span = (sb.max[a] - sb.min[a]).max(1) as f64;
                let rel = (p[a] as f64 - sb.min[a] as f64) / span;
                sum[k][a] += qb.min[a] as f64 + rel * (qb.max[a] - qb.min[a]) as f64;
            }
        }
        n += 1.0;
    }
    if n == 0.0 {
        return Ok(None);
    }
    let pts: [[usize; 3]; 6] = std::array::from_fn(|k| {
        [0, 1, 2].map(|a| ((sum[k][a] / n).round().max(0.0) as usize).min(query.dims[a] - 1))
    });
    Ok(organ_localization(label, &[pts], BoxMode::Wpl, f32::NAN))
}

/// The localization methods compared by the evaluation: the no-learning baseline, UAM
/// (1 and 2 passes), MSS alone (whole-body search), UAM(2)+MSS, and MSS from the baseline.
pub const METHODS: [&str; 7] = [
    "baseline", "uam", "uam2", "mss", "uam+mss", "uam2+mss", "base+mss",
];

/// Options of the OpenKBP few-shot evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub data_dir: PathBuf,
    pub weights: PathBuf,
    pub supports: usize,
    pub draws: usize,
    pub queries: usize,
    pub seed: u64,
    pub organs: Vec<u16>,
    /// MSS search radii (3 mm voxels) evaluated for UAM+MSS (only the first unless tuning).
    pub radii: Vec<usize>,
    /// Centred MSS passes of UAM+MSS.
    pub mss_iterations: usize,
    /// Also evaluate the tuning variants (other radii, a single MSS pass).
    pub tuning: bool,
    /// Only the baseline and the default method (UAM+MSS, each support matched).
    pub quick: bool,
    pub device: Device,
    /// Where `eval_localize.csv` and `eval_localize.txt` go.
    pub out: PathBuf,
}

/// One evaluated organ.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRow {
    pub draw: usize,
    pub case: String,
    pub label: u16,
    pub method: String,
    pub iou: f64,
    pub wd: f64,
    pub ale: f64,
}

/// OpenKBP cases with the organs each has (from `index.tsv`).
pub fn openkbp_index(data: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(data.join("openkbp/index.tsv")).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (the OpenKBP data are needed for the evaluation)",
                data.join("openkbp/index.tsv").display()
            ),
        ))
    })?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split('\t');
            let case = f.next()?.to_string();
            let organs = f
                .nth(1)
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect();
            Some((case, organs))
        })
        .collect())
}

/// Few-shot evaluation on OpenKBP: `draws` random draws of `supports` support cases
/// (having every evaluated organ) and `queries` other cases; every method on every
/// query. Writes the per-organ rows and a summary; returns the rows.
pub fn eval_localize(o: &EvalOptions, log: &mut dyn FnMut(String)) -> Result<Vec<EvalRow>> {
    let (net, config) = load_weights(&o.weights, &o.device)?;
    let index = openkbp_index(&o.data_dir)?;
    let names = LabelTable::find_beside(&o.data_dir.join("openkbp/okbp_001.label.nii.gz"))
        .unwrap_or_default();
    let wanted: Vec<String> = o.organs.iter().map(|&l| names.name(l)).collect();
    let complete: Vec<&String> = index
        .iter()
        .filter(|(_, org)| wanted.iter().all(|w| org.contains(w)))
        .map(|(c, _)| c)
        .collect();
    if complete.len() < o.supports {
        return Err(Error::InvalidArgument(format!(
            "only {} OpenKBP cases have all of {wanted:?}",
            complete.len()
        )));
    }
    let path = |case: &str, kind: &str| o.data_dir.join(format!("openkbp/{case}.{kind}.nii.gz"));
    let mut rows = Vec::new();
    let mut query_seconds = Vec::new();
    for draw in 0..o.draws {
        let (supports_names, query_names) = draw_cases(o, &index, &complete, draw);
        let supports = supports_names
            .iter()
            .map(|c| read_support(&path(c, "ct"), &path(c, "label")))
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        let atlas = pollster::block_on(Atlas::build(
            &net,
            &config,
            &supports,
            &o.organs,
            BoxMode::Wpl,
            &o.device,
        ))?;
        log(format!(
            "draw {draw}: supports {} (atlas {:.1} s); {} queries",
            supports_names.join(" "),
            t.elapsed().as_secs_f64(),
            query_names.len()
        ));
        for case in &query_names {
            let t = Instant::now();
            let ct = load_ct(&path(case, "ct"))?;
            let lab = load_labels(&path(case, "label"))?;
            let (canon, _) = ct.to_canonical();
            let lab = lab.to_canonical().0;
            let present: Vec<u16> = o
                .organs
                .iter()
                .copied()
                .filter(|&l| bounding_box(&lab, l).is_some())
                .collect();
            let q = pollster::block_on(query_state(&net, &config, &canon, &o.device))?;
            let mut baseline = Vec::new();
            for &label in &present {
                baseline.extend(baseline_localization(&supports, &canon, label)?);
            }
            let mut results = vec![("baseline".to_string(), baseline.clone())];
            // Every atlas organ is located (as the pipeline does for the organs asked for);
            // only those the query has are scored.
            results.extend(pollster::block_on(evaluate_query(
                &net, &atlas, &q, &o.organs, o,
            ))?);
            query_seconds.push(t.elapsed().as_secs_f64());
            let mut line = format!("  {case} ({:.1} s):", t.elapsed().as_secs_f64());
            // Diagnostics of the default: its box moved to the true centre (what remains is
            // the size error), and the true box size at its centre (the centre error).
            let default_name = format!(
                "uam+mss/med@{}~0+layout+tmpl",
                o.radii.first().unwrap_or(&16)
            );
            let diag = true_box_diagnostics(&results, &default_name, &lab);
            results.extend(diag);
            for (method, locs) in results {
                let mut ious = Vec::new();
                for l in &locs {
                    if let Some(s) = score(l, &lab) {
                        ious.push(s.iou);
                        rows.push(row(draw, case, l.label, &method, s));
                    }
                }
                line.push_str(&format!(
                    " {method} {:.1}",
                    ious.iter().sum::<f64>() / ious.len().max(1) as f64
                ));
            }
            log(line);
        }
    }
    write_rows(&o.out, &rows, &names)?;
    let mean_s = query_seconds.iter().sum::<f64>() / query_seconds.len().max(1) as f64;
    let summary = summarize(&rows, &o.organs, &names, mean_s);
    std::fs::write(o.out.join("eval_localize.txt"), &summary)?;
    log(summary);
    Ok(rows)
}

/// One draw's supports (from the cases having every evaluated organ) and queries (from
/// the other cases), drawn from the draw's own random stream.
fn draw_cases(
    o: &EvalOptions,
    index: &[(String, Vec<String>)],
    complete: &[&String],
    draw: usize,
) -> (Vec<String>, Vec<String>) {
    let mut rng = crate::rng::Rng::stream(o.seed, draw as u64);
    let mut pool: Vec<&String> = complete.to_vec();
    let mut supports_names = Vec::new();
    for _ in 0..o.supports {
        supports_names.push(pool.remove(rng.below(pool.len())).clone());
    }
    let mut others: Vec<&String> = index
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !supports_names.contains(c))
        .collect();
    let mut query_names = Vec::new();
    for _ in 0..o.queries.min(others.len()) {
        query_names.push(others.remove(rng.below(others.len())).clone());
    }
    (supports_names, query_names)
}

/// The `default_name` method's boxes moved to the true centre (`@true-centre`: what
/// remains is the size error) and the true box size at their centre (`@true-size`: the
/// centre error); `lab` is the true label map on the query's canonical grid.
fn true_box_diagnostics(
    results: &[(String, Vec<OrganLocalization>)],
    default_name: &str,
    lab: &LabelVolume,
) -> Vec<(String, Vec<OrganLocalization>)> {
    results
        .iter()
        .filter(|(m, _)| m == default_name)
        .flat_map(|(m, locs)| {
            let moved = |keep_size: bool| -> Vec<OrganLocalization> {
                locs.iter()
                    .filter_map(|l| {
                        let t = bounding_box(lab, l.label)?;
                        let (c, size) = if keep_size { (t, l.bbox) } else { (l.bbox, t) };
                        let mut out = l.clone();
                        for a in 0..3 {
                            let s = size.max[a] - size.min[a];
                            let c2 = c.min[a] + c.max[a];
                            out.bbox.min[a] = c2.saturating_sub(s) / 2;
                            out.bbox.max[a] = out.bbox.min[a] + s;
                        }
                        Some(out)
                    })
                    .collect()
            };
            [
                (format!("{m}@true-centre"), moved(true)),
                (format!("{m}@true-size"), moved(false)),
            ]
        })
        .collect()
}

/// `eval_localize.csv`: one row per draw, query, organ and method.
fn write_rows(out: &Path, rows: &[EvalRow], names: &LabelTable) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut csv = String::from("draw,case,label,name,method,iou,wd,ale\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{:.4},{:.4},{:.4}\n",
            r.draw,
            r.case,
            r.label,
            csv_field(&names.name(r.label)),
            r.method,
            r.iou,
            r.wd,
            r.ale
        ));
    }
    std::fs::write(out.join("eval_localize.csv"), csv)?;
    Ok(())
}

fn row(draw: usize, case: &str, label: u16, method: &str, s: BoxScores) -> EvalRow {
    EvalRow {
        draw,
        case: case.to_string(),
        label,
        method: method.to_string(),
        iou: s.iou,
        wd: s.wd,
        ale: s.ale,
    }
}

/// Every method but the baseline for one query: UAM (1 and 2 passes), MSS alone (one
/// tiled feature pass, whole-body search) and UAM+MSS (patches centred on the UAM points,
/// `mss_iterations` passes; `/med`: each support matched separately, median point, in
/// `tuning` runs also 1 pass and other radii), each also shape-regularised (`~0.5`, `~0`)
/// and, with the support shape, corrected by the organ layout (`~0+layout`) and then moved
/// by the intensity templates (`~0+layout+tmpl`, the default).
async fn evaluate_query(
    net: &MedLam,
    atlas: &Atlas,
    q: &QueryState,
    organs: &[u16],
    o: &EvalOptions,
) -> Result<Vec<(String, Vec<OrganLocalization>)>> {
    let (points, layout) = organ_points(atlas, organs);
    let assemble = |located: &[[f64; 3]]| -> Vec<OrganLocalization> {
        let mut out = Vec::new();
        let mut at = 0;
        for &label in organs {
            if let Some(org) = atlas.organ(label) {
                let mut parts = Vec::new();
                for _ in &org.parts {
                    parts.push(std::array::from_fn(|k| q.to_canonical(located[at + k])));
                    at += 6;
                }
                out.extend(organ_localization(label, &parts, atlas.mode, f32::NAN));
            }
        }
        out
    };
    // The organ layout as the pipeline applies it: default weight, organs in view vote.
    let layout_blend = LocalizeOptions::default().layout_blend;
    let template_radius = LocalizeOptions::default().template_radius_vox;
    let in_view = organs_in_view(q, &points, &layout);
    let mut out = Vec::new();
    let mut run = async |name: String, opt: LocalizeOptions| -> Result<()> {
        let found = locate_points(net, atlas, q, &points, &opt, &o.device).await?;
        let located: Vec<[f64; 3]> = found.iter().map(|x| x.0).collect();
        for (suffix, blend) in [("", 1.0), ("~0.5", 0.5), ("~0", 0.0)] {
            let shaped = regularize_parts(&located, &points, blend);
            if blend == 0.0 {
                let placed = apply_layout(&shaped, &points, &layout, atlas, layout_blend, &in_view);
                let matched = apply_templates(
                    q,
                    &placed,
                    &points,
                    &layout,
                    atlas,
                    &in_view,
                    template_radius,
                    &o.device,
                )
                .await?;
                out.push((format!("{name}{suffix}+layout+tmpl"), assemble(&matched)));
                out.push((format!("{name}{suffix}+layout"), assemble(&placed)));
            }
            out.push((format!("{name}{suffix}"), assemble(&shaped)));
        }
        Ok(())
    };
    // Rows without `/med` match the supports' mean windows; the default (`/med~0+layout+tmpl`)
    // matches each support separately.
    let base = LocalizeOptions {
        mss_iterations: o.mss_iterations,
        per_support: false,
        ..LocalizeOptions::default()
    };
    if o.quick {
        let r = o.radii.first().copied().unwrap_or(16);
        run(
            format!("uam+mss/med@{r}"),
            LocalizeOptions {
                per_support: true,
                search_radius_vox: r,
                ..base
            },
        )
        .await?;
        return Ok(out);
    }
    let uam = LocalizeOptions { mss: false, ..base };
    run("uam".into(), uam).await?;
    run(
        "uam2".into(),
        LocalizeOptions {
            uam_iterations: 2,
            ..uam
        },
    )
    .await?;
    run(
        "mss".into(),
        LocalizeOptions {
            uam: false,
            centred: false,
            ..base
        },
    )
    .await?;
    for (i, &r) in o.radii.iter().enumerate() {
        let at = LocalizeOptions {
            search_radius_vox: r,
            ..base
        };
        if i == 0 || o.tuning {
            run(format!("uam+mss@{r}"), at).await?;
            run(
                format!("uam+mss/med@{r}"),
                LocalizeOptions {
                    per_support: true,
                    ..at
                },
            )
            .await?;
        }
        if o.tuning && i == 0 {
            run(
                format!("uam+mss@{r}x1"),
                LocalizeOptions {
                    mss_iterations: 1,
                    ..at
                },
            )
            .await?;
        }
    }
    Ok(out)
}

/// A text table: per method, per organ mean box IoU / WD / ALE, and the means.
pub fn summarize(rows: &[EvalRow], organs: &[u16], names: &LabelTable, query_s: f64) -> String {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut t = String::new();
    t.push_str(&format!(
        "{:<16} {:<14} {:>6} {:>9} {:>8} {:>8}\n",
        "method", "organ", "n", "IoU %", "WD mm", "ALE mm"
    ));
    let mut methods: Vec<&str> = Vec::new();
    for r in rows {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    for method in methods {
        let of = |l: Option<u16>| -> Vec<&EvalRow> {
            rows.iter()
                .filter(|r| r.method == method && l.is_none_or(|l| r.label == l))
                .collect()
        };
        for &l in organs {
            let r = of(Some(l));
            if r.is_empty() {
                continue;
            }
            t.push_str(&format!(
                "{:<16} {:<14} {:>6} {:>9.1} {:>8.1} {:>8.1}\n",
                method,
                names.name(l),
                r.len(),
                mean(&r.iter().map(|x| x.iou).collect::<Vec<_>>()),
                mean(&r.iter().map(|x| x.wd).collect::<Vec<_>>()),
                mean(&r.iter().map(|x| x.ale).collect::<Vec<_>>())
            ));
        }
        // Mean over organs of the per-organ means.
        let per_organ = |f: &dyn Fn(&EvalRow) -> f64, set: &[u16]| {
            let v: Vec<f64> = set
                .iter()
                .filter_map(|&l| {
                    let r = of(Some(l));
                    (!r.is_empty()).then(|| mean(&r.iter().map(|x| f(x)).collect::<Vec<_>>()))
                })
                .collect();
            mean(&v)
        };
        t.push_str(&format!(
            "{:<16} {:<14} {:>6} {:>9.1} {:>8.1} {:>8.1}\n",
            method,
            "mean",
            of(None).len(),
            per_organ(&|x| x.iou, organs),
            per_organ(&|x| x.wd, organs),
            per_organ(&|x| x.ale, organs)
        ));
        let target: Vec<u16> = organs
            .iter()
            .copied()
            .filter(|l| [1, 3, 4, 7].contains(l))
            .collect();
        if !target.is_empty() {
            t.push_str(&format!(
                "{:<16} {:<14} {:>6} {:>9.1} {:>8.1} {:>8.1}\n",
                method,
                "mean(1,3,4,7)",
                "",
                per_organ(&|x| x.iou, &target),
                per_organ(&|x| x.wd, &target),
                per_organ(&|x| x.ale, &target)
            ));
        }
    }
    t.push_str(&format!(
        "mean time per query (all methods, one feature pass): {query_s:.1} s\n"
    ));
    t
}
