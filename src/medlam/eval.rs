//! Native runs of MedLAM localization: `medlsam localize` (support scans with
//! label maps → `<case>.boxes.json` per query, `localization.csv` with query
//! labels), the few-shot evaluation on OpenKBP (`medlsam eval-localize`) and
//! the CPU benchmark (`medlsam bench medlam`).
//!
//! Metrics are computed on the query's canonical grid (a permutation of its
//! file grid, so the values are those of the file grid): 3-D box IoU (%), WD
//! (mm) and ALE (mm) as in the paper.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use super::atlas::{Atlas, AtlasMode, SupportCase, SupportOrgans};
use super::localize::{
    LocalizeOptions, QueryState, apply_layout, apply_templates, localize_organs, locate_points,
    organ_localization, organ_points, organs_in_view, query_state, regularize_parts,
};
use super::net::{MedLam, MedLamConfig};
use crate::config::Organs;
use crate::metrics::{ale_mm, box_iou_pct, wall_distance_mm};
use crate::output::boxes_json;
use crate::pipeline::OrganLocalization;
use crate::volume::label_table::LabelTable;
use crate::volume::labels::{BoxVox, bounding_box, bounding_box_where, extreme_points};
use crate::volume::{CtVolume, LabelVolume, load_ct, read_nifti_path};
use crate::{Error, Result};

/// Load MedLAM weights from a file onto a device.
pub fn load_weights(path: &Path, device: &Device) -> Result<(MedLam, MedLamConfig)> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read MedLAM weights {}: {e} (train them with `medlsam train`, or pass --weights)",
            path.display()
        ))
    })?;
    MedLam::from_bytes(&bytes, device)
}

/// Box IoU (%), WD (mm) and ALE (mm) of one organ.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BoxScores {
    pub iou: f64,
    pub wd: f64,
    pub ale: f64,
}

/// Score a localization against the truth (both on the query's canonical grid).
pub fn score(pred: &OrganLocalization, truth: &LabelVolume) -> Option<BoxScores> {
    let tb = bounding_box(truth, pred.label)?;
    let te = extreme_points(truth, pred.label)?;
    Some(BoxScores {
        iou: box_iou_pct(&pred.bbox, &tb),
        wd: wall_distance_mm(&pred.bbox, &tb, truth.spacing_mm()),
        ale: ale_mm(&pred.extreme_points, &te, &truth.affine),
    })
}

/// Mean 2-D IoU (%) of the per-slice boxes against the true per-slice boxes, over every
/// slice that has either (a slice with only one of them counts 0).
pub fn slice_box_iou(pred: &OrganLocalization, truth: &LabelVolume) -> Option<f64> {
    let true_boxes = crate::volume::labels::slice_boxes(truth, pred.label);
    if true_boxes.is_empty() {
        return None;
    }
    let mut ks: Vec<usize> = true_boxes
        .iter()
        .map(|b| b.k)
        .chain(pred.slice_boxes.iter().map(|b| b.k))
        .collect();
    ks.sort_unstable();
    ks.dedup();
    let area = |b: &crate::volume::labels::SliceBox| {
        ((b.max[0] - b.min[0] + 1) * (b.max[1] - b.min[1] + 1)) as f64
    };
    let total: f64 = ks
        .iter()
        .map(|&k| {
            let (Some(p), Some(t)) = (
                pred.slice_boxes.iter().find(|b| b.k == k),
                true_boxes.iter().find(|b| b.k == k),
            ) else {
                return 0.0;
            };
            let w = |a: usize| {
                (p.max[a].min(t.max[a]) + 1).saturating_sub(p.min[a].max(t.min[a])) as f64
            };
            let inter = w(0) * w(1);
            100.0 * inter / (area(p) + area(t) - inter)
        })
        .sum();
    Some(total / ks.len() as f64)
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
    Ok(organ_localization(label, &[pts], AtlasMode::Wpl, f32::NAN))
}

/// Read a support (CT and label map, same grid) into canonical space.
pub fn read_support(image: &Path, label: &Path) -> Result<SupportCase> {
    let ct = load_ct(image)?;
    let lab = read_nifti_path(label)?.into_labels()?;
    ct.check_same_grid(
        &lab,
        &format!("support {} and {}", image.display(), label.display()),
    )?;
    Ok(SupportCase {
        name: crate::batch::case_name(image),
        ct: ct.to_canonical().0,
        organs: SupportOrgans::Labels(lab.to_canonical().0),
    })
}

/// Options of `medlsam localize`.
pub struct LocalizeRun {
    pub supports: Vec<(PathBuf, PathBuf)>,
    pub queries: Vec<PathBuf>,
    /// Query label maps (same order as `queries`), for `localization.csv`.
    pub query_labels: Vec<PathBuf>,
    /// `(support label, query label)` pairs where the query labels use other values.
    pub query_label_map: Vec<(u16, u16)>,
    /// Organs ([`Organs::All`]: every label of any support).
    pub organs: Organs,
    pub mode: AtlasMode,
    pub options: LocalizeOptions,
    pub weights: PathBuf,
    pub device: Device,
    pub out: PathBuf,
}

/// `medlsam localize`: write `<case>.boxes.json` for every query (and `localization.csv`
/// with query labels). Returns a short report per query.
pub fn run_localize(run: &LocalizeRun, log: &mut dyn FnMut(String)) -> Result<()> {
    if !run.query_labels.is_empty() && run.query_labels.len() != run.queries.len() {
        return Err(Error::InvalidArgument(format!(
            "{} --query-label for {} --query: give one label map per query, in the same order",
            run.query_labels.len(),
            run.queries.len()
        )));
    }
    if run.queries.is_empty() {
        return Err(Error::InvalidArgument("no --query given".into()));
    }
    let (net, config) = load_weights(&run.weights, &run.device)?;
    let supports = run
        .supports
        .iter()
        .map(|(i, l)| read_support(i, l))
        .collect::<Result<Vec<_>>>()?;
    let names = run
        .supports
        .first()
        .and_then(|(_, l)| LabelTable::find_beside(l))
        .unwrap_or_default();
    let organs: Vec<u16> = if let Organs::List(list) = &run.organs {
        list.clone()
    } else {
        let mut all: Vec<u16> = supports
            .iter()
            .flat_map(|s| match &s.organs {
                SupportOrgans::Labels(l) => crate::volume::labels::classes(l)
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect::<Vec<_>>(),
                SupportOrgans::Points(p) => p.iter().map(|(v, _)| *v).collect(),
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let t = Instant::now();
    let atlas = pollster::block_on(Atlas::build(
        &net,
        &config,
        &supports,
        &organs,
        run.mode,
        &run.device,
    ))?;
    log(format!(
        "atlas of {} organs from {} supports in {:.1} s",
        atlas.organs.len(),
        supports.len(),
        t.elapsed().as_secs_f64()
    ));
    std::fs::create_dir_all(&run.out)?;
    let mut csv = String::from("case,label,name,iou,wd,ale\n");
    for (qi, qpath) in run.queries.iter().enumerate() {
        let case = crate::batch::case_name(qpath);
        let t = Instant::now();
        let ct = load_ct(qpath)?;
        let (canon, r) = ct.to_canonical();
        let q = pollster::block_on(query_state(&net, &config, &canon, &run.device))?;
        let found = pollster::block_on(localize_organs(
            &net,
            &atlas,
            &q,
            &organs,
            &run.options,
            &run.device,
        ))?;
        let json = boxes_json(&case, &found, &r, &names);
        std::fs::write(
            run.out.join(format!("{case}.boxes.json")),
            serde_json::to_string_pretty(&json).expect("serialisable"),
        )?;
        let mut line = format!(
            "{case}: {} organs in {:.1} s",
            found.len(),
            t.elapsed().as_secs_f64()
        );
        if let Some(lp) = run.query_labels.get(qi) {
            let lab = read_nifti_path(lp)?.into_labels()?;
            ct.check_same_grid(
                &lab,
                &format!("query {} and its label map", qpath.display()),
            )?;
            let lab = crate::volume::labels::to_support_values(
                lab.to_canonical().0,
                &run.query_label_map,
            );
            for o in &found {
                if let Some(s) = score(o, &lab) {
                    let name = names.name(o.label);
                    csv.push_str(&format!(
                        "{case},{},{},{:.4},{:.4},{:.4}\n",
                        o.label,
                        csv_field(&name),
                        s.iou,
                        s.wd,
                        s.ale
                    ));
                    line.push_str(&format!(
                        " | {name} IoU {:.1} % WD {:.1} mm ALE {:.1} mm",
                        s.iou, s.wd, s.ale
                    ));
                }
            }
        }
        log(line);
    }
    if !run.query_labels.is_empty() {
        std::fs::write(run.out.join("localization.csv"), csv)?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains(',') || s.contains('"') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
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
fn openkbp_index(data: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(data.join("openkbp/index.tsv")).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: {e} (the OpenKBP data are needed for the evaluation)",
            data.join("openkbp/index.tsv").display()
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
        let mut rng = crate::rng::Rng::stream(o.seed, draw as u64);
        let mut pool: Vec<&String> = complete.clone();
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
            AtlasMode::Wpl,
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
            let ct = read_nifti_path(path(case, "ct"))?.into_ct()?;
            let lab = read_nifti_path(path(case, "label"))?.into_labels()?;
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
            let diag: Vec<(String, Vec<OrganLocalization>)> = results
                .iter()
                .filter(|(m, _)| *m == default_name)
                .flat_map(|(m, locs)| {
                    let moved = |keep_size: bool| -> Vec<OrganLocalization> {
                        locs.iter()
                            .filter_map(|l| {
                                let t = bounding_box(&lab, l.label)?;
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
                .collect();
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
    std::fs::create_dir_all(&o.out)?;
    let mut csv = String::from("draw,case,label,name,method,iou,wd,ale\n");
    for r in &rows {
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
    std::fs::write(o.out.join("eval_localize.csv"), csv)?;
    let mean_s = query_seconds.iter().sum::<f64>() / query_seconds.len().max(1) as f64;
    let summary = summarize(&rows, &o.organs, &names, mean_s);
    std::fs::write(o.out.join("eval_localize.txt"), &summary)?;
    log(summary);
    Ok(rows)
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

/// `medlsam bench medlam`: time the atlas (5 supports, 7 organs) and the localization of
/// a few OpenKBP queries, WPL and SPL, on a device. Returns the report.
pub fn bench_medlam(
    data_dir: &Path,
    weights: &Path,
    queries: usize,
    device: &Device,
    log: &mut dyn FnMut(String),
) -> Result<String> {
    let (net, config) = load_weights(weights, device)?;
    let index = openkbp_index(data_dir)?;
    let organs: Vec<u16> = (1..=7).collect();
    let all = [
        "Brainstem",
        "SpinalCord",
        "RightParotid",
        "LeftParotid",
        "Esophagus",
        "Larynx",
        "Mandible",
    ];
    let complete: Vec<&String> = index
        .iter()
        .filter(|(_, o)| all.iter().all(|w| o.iter().any(|x| x == w)))
        .map(|(c, _)| c)
        .collect();
    if complete.len() < 5 + queries {
        return Err(Error::InvalidArgument(
            "not enough complete OpenKBP cases for the benchmark".into(),
        ));
    }
    let path = |case: &str, kind: &str| data_dir.join(format!("openkbp/{case}.{kind}.nii.gz"));
    let supports = complete[..5]
        .iter()
        .map(|c| read_support(&path(c, "ct"), &path(c, "label")))
        .collect::<Result<Vec<_>>>()?;
    let mut report = format!(
        "MedLAM benchmark: {} (patch {}), 5 supports ({}), 7 organs\n",
        weights.display(),
        config.patch,
        complete[..5]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for mode in [
        AtlasMode::Wpl,
        AtlasMode::Spl {
            slab_mm: super::boxes::DEFAULT_SLAB_MM,
        },
    ] {
        let t = Instant::now();
        let atlas = pollster::block_on(Atlas::build(
            &net, &config, &supports, &organs, mode, device,
        ))?;
        let atlas_s = t.elapsed().as_secs_f64();
        let points: usize = atlas.organs.iter().map(|o| 6 * o.parts.len()).sum();
        let mut times = Vec::new();
        let (mut ious, mut slice_ious) = (Vec::new(), Vec::new());
        for case in &complete[5..5 + queries] {
            let ct = read_nifti_path(path(case, "ct"))?.into_ct()?;
            let (canon, _) = ct.to_canonical();
            let lab = read_nifti_path(path(case, "label"))?
                .into_labels()?
                .to_canonical()
                .0;
            let t = Instant::now();
            let q = pollster::block_on(query_state(&net, &config, &canon, device))?;
            let found = pollster::block_on(localize_organs(
                &net,
                &atlas,
                &q,
                &organs,
                &LocalizeOptions::default(),
                device,
            ))?;
            times.push(t.elapsed().as_secs_f64());
            for o in &found {
                ious.extend(score(o, &lab).map(|s| s.iou));
                slice_ious.extend(slice_box_iou(o, &lab));
            }
            log(format!(
                "{mode:?} {case}: {} organs in {:.2} s",
                found.len(),
                times.last().unwrap()
            ));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        report.push_str(&format!(
            "{:<28} atlas {:>6.1} s ({points} support points) | per query (7 organs): mean {:.2} s, min {:.2} s over {} queries | 3-D box IoU {:.1} %, 2-D slice-box IoU {:.1} %\n",
            format!("{mode:?}"),
            atlas_s,
            mean(&times),
            times.iter().copied().fold(f64::INFINITY, f64::min),
            times.len(),
            mean(&ious),
            mean(&slice_ious)
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::labels::SliceBox;
    use crate::volume::{Affine, Volume};

    #[test]
    fn slice_box_iou_counts_missing_slices_as_zero() {
        let mut lab = Volume::filled([10, 10, 4], 0u16, Affine::identity()).unwrap();
        for k in 1..=2 {
            for j in 2..=5 {
                for i in 2..=3 {
                    let idx = lab.index(i, j, k);
                    lab.data[idx] = 5;
                }
            }
        }
        let sb = |k, min, max| SliceBox { k, min, max };
        let pred = |boxes: Vec<SliceBox>| OrganLocalization {
            label: 5,
            confidence: 0.0,
            in_view: 1.0,
            extreme_points: [[0; 3]; 6],
            bbox: BoxVox {
                min: [0; 3],
                max: [0; 3],
            },
            slice_boxes: boxes,
        };
        let exact = pred(vec![sb(1, [2, 2], [3, 5]), sb(2, [2, 2], [3, 5])]);
        assert_eq!(slice_box_iou(&exact, &lab), Some(100.0));
        // Slice 2 half as wide (IoU 50 %), and an extra slice 3 (0): (100 + 50 + 0) / 3.
        let off = pred(vec![
            sb(1, [2, 2], [3, 5]),
            sb(2, [2, 2], [2, 5]),
            sb(3, [2, 2], [3, 5]),
        ]);
        assert!((slice_box_iou(&off, &lab).unwrap() - 50.0).abs() < 1e-9);
        let mut other = lab.clone();
        other.data.iter_mut().for_each(|v| *v = 0);
        assert_eq!(slice_box_iou(&exact, &other), None);
    }
}
