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
use crate::medlam::localize::{organ_localization, query_state};
use crate::medlam::net::{MedLam, MedLamConfig};
pub use crate::metrics::{BoxScores, score, slice_box_iou};
use crate::types::{BoxMode, OrganLocalization};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::{BoxVox, bounding_box, bounding_box_where, extreme_points};
use crate::volume::{CtVolume, LabelVolume};
use crate::{Error, Result};

mod methods;
use methods::evaluate_query;

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
    let complete = complete_cases(o, &index, &names)?;
    let mut rows = Vec::new();
    let mut query_seconds = Vec::new();
    for draw in 0..o.draws {
        let (supports_names, query_names) = draw_cases(o, &index, &complete, draw);
        let supports = supports_names
            .iter()
            .map(|c| {
                read_support(
                    &case_path(&o.data_dir, c, "ct"),
                    &case_path(&o.data_dir, c, "label"),
                )
            })
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
            let (mut results, lab) = eval_case(o, &net, &config, &supports, &atlas, case)?;
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
            line.push_str(&score_results(draw, case, results, &lab, &mut rows));
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

/// The OpenKBP cases that have every evaluated organ (at least `supports` of them).
fn complete_cases<'a>(
    o: &EvalOptions,
    index: &'a [(String, Vec<String>)],
    names: &LabelTable,
) -> Result<Vec<&'a String>> {
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
    Ok(complete)
}

/// An OpenKBP case's file of this kind (`ct`, `label`).
pub(super) fn case_path(data_dir: &Path, case: &str, kind: &str) -> PathBuf {
    data_dir.join(format!("openkbp/{case}.{kind}.nii.gz"))
}

/// Each method's name and organ localizations on one query.
type MethodResults = Vec<(String, Vec<OrganLocalization>)>;

/// Every method (the baseline first) on one query case; returns their localizations and
/// the query's canonical label map.
fn eval_case(
    o: &EvalOptions,
    net: &MedLam,
    config: &MedLamConfig,
    supports: &[SupportCase],
    atlas: &Atlas,
    case: &str,
) -> Result<(MethodResults, LabelVolume)> {
    let ct = load_ct(&case_path(&o.data_dir, case, "ct"))?;
    let lab = load_labels(&case_path(&o.data_dir, case, "label"))?;
    let (canon, _) = ct.to_canonical();
    let lab = lab.to_canonical().0;
    let present: Vec<u16> = o
        .organs
        .iter()
        .copied()
        .filter(|&l| bounding_box(&lab, l).is_some())
        .collect();
    let q = pollster::block_on(query_state(net, config, &canon, &o.device))?;
    let mut baseline = Vec::new();
    for &label in &present {
        baseline.extend(baseline_localization(supports, &canon, label)?);
    }
    let mut results = vec![("baseline".to_string(), baseline.clone())];
    // Every atlas organ is located (as the pipeline does for the organs asked for);
    // only those the query has are scored.
    results.extend(pollster::block_on(evaluate_query(
        net, atlas, &q, &o.organs, o,
    ))?);
    Ok((results, lab))
}

/// Score each method's boxes against `lab` into `rows`; returns the log line's part
/// (each method's mean IoU).
fn score_results(
    draw: usize,
    case: &str,
    results: MethodResults,
    lab: &LabelVolume,
    rows: &mut Vec<EvalRow>,
) -> String {
    let mut line = String::new();
    for (method, locs) in results {
        let mut ious = Vec::new();
        for l in &locs {
            if let Some(s) = score(l, lab) {
                ious.push(s.iou);
                rows.push(row(draw, case, l.label, &method, s));
            }
        }
        line.push_str(&format!(
            " {method} {:.1}",
            ious.iter().sum::<f64>() / ious.len().max(1) as f64
        ));
    }
    line
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
