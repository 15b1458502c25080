//! Native batch runs (`medlsam segment`): load and check the supports, then for
//! each query load, localize, segment and write `<case>.seg.nii.gz`,
//! `<case>.boxes.json`, `<case>.png`, and with query labels `metrics.csv`. A
//! failing query is reported and the others continue; a summary lists failures.

use std::path::{Path, PathBuf};

use crate::config::{CasePaths, Organs, RunConfig};
use crate::device::BackendChoice;
use crate::medlam::{AtlasMode, LocalizeOptions, MedLamLocalizer, SupportCase, SupportOrgans};
use crate::metrics::{LabelMetrics, evaluate_labels};
use crate::output::{METRICS_CSV_HEADER, boxes_json, mean_sd, metrics_csv_row, overview_png};
use crate::pipeline::{
    BoxMode, Localizer, Progress, SegmentOptions, SliceSegmenter, StageTimes, segment_query,
};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::nifti_io::write_file;
use crate::volume::{CtVolume, LabelVolume, load_ct, read_nifti_path, write_labels_nifti_bytes};
use crate::{Error, Result};

/// A loaded support: CT and label map on the same grid.
pub struct Support {
    pub name: String,
    pub image: CtVolume,
    pub labels: LabelVolume,
}

/// Case name of a file: its name up to the first dot.
pub fn case_name(path: &Path) -> String {
    let n = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    n.split('.').next().unwrap_or(&n).to_string()
}

/// Load the supports and check each image/label pair.
pub fn load_supports(paths: &[CasePaths]) -> Result<Vec<Support>> {
    if paths.is_empty() {
        return Err(Error::InvalidArgument("no support scans given".into()));
    }
    paths
        .iter()
        .map(|p| {
            let label_path = p.label.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("support {} has no label map", p.image.display()))
            })?;
            let image = load_ct(&p.image)?;
            let labels = read_nifti_path(label_path)?.into_labels()?;
            image.check_same_grid(
                &labels,
                &format!(
                    "support image {} and label {}",
                    p.image.display(),
                    label_path.display()
                ),
            )?;
            Ok(Support {
                name: case_name(&p.image),
                image,
                labels,
            })
        })
        .collect()
}

/// The organs to process: the requested ones, or every label of any support.
/// Errors if a requested organ is in no support; warns (returned) where only some lack it.
pub fn resolve_organs(supports: &[Support], organs: &Organs) -> Result<(Vec<u16>, Vec<String>)> {
    let present: Vec<Vec<u16>> = supports
        .iter()
        .map(|s| classes(&s.labels).into_iter().map(|(v, _)| v).collect())
        .collect();
    let wanted: Vec<u16> = match organs {
        Organs::List(l) => l.clone(),
        Organs::All => {
            let mut all: Vec<u16> = present.iter().flatten().copied().collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    let mut warnings = Vec::new();
    for &o in &wanted {
        let missing: Vec<&str> = supports
            .iter()
            .zip(&present)
            .filter(|(_, p)| !p.contains(&o))
            .map(|(s, _)| s.name.as_str())
            .collect();
        if missing.len() == supports.len() {
            return Err(Error::InvalidArgument(format!(
                "organ {o} is in none of the support label maps"
            )));
        }
        if !missing.is_empty() {
            warnings.push(format!(
                "organ {o} is missing in support(s) {}: they are not used for it",
                missing.join(", ")
            ));
        }
    }
    if wanted.is_empty() {
        return Err(Error::InvalidArgument(
            "the support label maps contain no organ".into(),
        ));
    }
    Ok((wanted, warnings))
}

/// Refuse queries without a body (e.g. not a CT in HU): fewer than 1000 voxels above −500 HU.
pub fn check_has_body(ct: &CtVolume) -> Result<()> {
    let body = ct.data.iter().filter(|&&v| v > -500).count();
    if body < 1000 {
        return Err(Error::InvalidVolume(format!(
            "no body found ({body} voxels above -500 HU): is this a CT in Hounsfield units?"
        )));
    }
    Ok(())
}

/// Read a query CT (refused without a body) and, when given, its label map on the same
/// grid with its values mapped to the supports' (`(support, query)` pairs).
pub fn load_query(
    q: &CasePaths,
    query_label_map: &[(u16, u16)],
) -> Result<(CtVolume, Option<LabelVolume>)> {
    let ct = load_ct(&q.image)?;
    check_has_body(&ct)?;
    let truth = match &q.label {
        Some(l) => {
            let lab = read_nifti_path(l)?.into_labels()?;
            ct.check_same_grid(
                &lab,
                &format!(
                    "query image {} and label {}",
                    q.image.display(),
                    l.display()
                ),
            )?;
            Some(crate::volume::labels::to_support_values(
                lab,
                query_label_map,
            ))
        }
        None => None,
    };
    Ok((ct, truth))
}

/// Outcome of one query.
pub struct QueryReport {
    pub case: String,
    pub result: Result<QueryOk>,
}

/// What a successful query produced.
pub struct QueryOk {
    pub metrics: Vec<LabelMetrics>,
    pub times: StageTimes,
    /// Reading (and checking) the query files, seconds.
    pub load_s: f64,
    /// Writing the outputs, seconds.
    pub write_s: f64,
    pub slices: usize,
    pub boxes: usize,
    pub seconds: f64,
    /// Organs found, with their confidence (canonical localizations).
    pub found: Vec<(u16, f32)>,
    /// Organs predicted outside the query's field of view (not segmented).
    pub outside_view: Vec<u16>,
}

/// Segment every query and write its outputs under `out`. `make_localizer` builds
/// the localizer for one query (given its file-grid CT and, when known, labels).
#[allow(clippy::too_many_arguments)]
pub fn run_queries<L: Localizer, S: SliceSegmenter>(
    queries: &[CasePaths],
    organs: &[u16],
    names: &LabelTable,
    out: &Path,
    query_label_map: &[(u16, u16)],
    make_localizer: &mut dyn FnMut(&CtVolume, Option<&LabelVolume>) -> Result<L>,
    segmenter: &mut S,
    opt: &SegmentOptions,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Vec<QueryReport>> {
    std::fs::create_dir_all(out)?;
    write_file(&out.join("labels.json"), names.to_json().as_bytes())?;
    let mut reports = Vec::new();
    let mut csv = vec![METRICS_CSV_HEADER.to_string()];
    for q in queries {
        let case = case_name(&q.image);
        let t0 = web_time::Instant::now();
        let result = (|| -> Result<QueryOk> {
            let (ct, truth) = load_query(q, query_label_map)?;
            let load_s = t0.elapsed().as_secs_f64();
            let mut loc = make_localizer(&ct, truth.as_ref())?;
            let res = pollster::block_on(segment_query(
                &ct,
                organs,
                &mut loc,
                segmenter,
                opt,
                None,
                &mut |p| progress(&case, p),
            ))?;
            let tw = web_time::Instant::now();
            write_file(
                &out.join(format!("{case}.seg.nii.gz")),
                &write_labels_nifti_bytes(&res.labels)?,
            )?;
            let bj = boxes_json(&case, &res.organs, &res.reorientation, names);
            let text = serde_json::to_string_pretty(&bj)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            write_file(&out.join(format!("{case}.boxes.json")), text.as_bytes())?;
            write_file(
                &out.join(format!("{case}.png")),
                &overview_png(&ct, &res.labels, &res.organs)?,
            )?;
            let write_s = tw.elapsed().as_secs_f64();
            let metrics = match &truth {
                Some(t) => evaluate_labels(&res.labels, t, organs)?,
                None => Vec::new(),
            };
            Ok(QueryOk {
                metrics,
                times: res.times,
                load_s,
                write_s,
                slices: res.slices_encoded,
                boxes: res.boxes_decoded,
                seconds: t0.elapsed().as_secs_f64(),
                found: res.organs.iter().map(|o| (o.label, o.confidence)).collect(),
                outside_view: res
                    .organs
                    .iter()
                    .filter(|o| o.outside_view())
                    .map(|o| o.label)
                    .collect(),
            })
        })();
        if let Ok(ok) = &result {
            for m in &ok.metrics {
                csv.push(metrics_csv_row(&case, &names.name(m.label), m));
            }
        }
        reports.push(QueryReport { case, result });
    }
    if queries.iter().any(|q| q.label.is_some()) {
        write_file(&out.join("metrics.csv"), (csv.join("\n") + "\n").as_bytes())?;
    }
    Ok(reports)
}

/// A few-shot run (`medlsam segment --support-image …` or `--config`): the
/// configuration plus the options that only the command line sets.
#[derive(Clone, Debug)]
pub struct SupportRun {
    pub config: RunConfig,
    pub backend: BackendChoice,
    /// Box enlargement in pixels at SAM's 1024² scale.
    pub margin_px_1024: f64,
    pub window_hu: [f32; 2],
    /// `(support, query)` label pairs where query label maps use other values.
    pub query_label_map: Vec<(u16, u16)>,
    pub localize: LocalizeOptions,
}

impl SupportRun {
    /// The run's segmenter: its weights, on its backend, with its CT window.
    pub fn segmenter(&self) -> Result<crate::sam::predictor::SamSegmenter> {
        crate::sam::commands::lite_medsam_segmenter(
            self.config.sam_weights.as_deref(),
            self.backend,
            self.window_hu,
        )
    }

    /// The slice-segmentation options of the run (its box margin).
    pub fn segment_options(&self) -> SegmentOptions {
        SegmentOptions {
            margin_px_1024: self.margin_px_1024,
            ..Default::default()
        }
    }
}

/// Organ names of a run: the label table beside the first support label map that has one.
pub fn support_label_table(config: &RunConfig) -> LabelTable {
    config
        .supports
        .iter()
        .find_map(|s| s.label.as_deref().and_then(LabelTable::find_beside))
        .unwrap_or_default()
}

/// The MedLAM weights a run uses: the configured file or `weights/medlam.bpk`.
pub fn medlam_weights_path(config: &RunConfig) -> PathBuf {
    config
        .medlam_weights
        .clone()
        .unwrap_or_else(|| crate::sam::weights::default_weights_dir().join("medlam.bpk"))
}

/// The bytes of the run's MedLAM weights (see [`medlam_weights_path`]).
pub fn read_medlam_weights(config: &RunConfig) -> Result<Vec<u8>> {
    let path = medlam_weights_path(config);
    std::fs::read(&path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read MedLAM weights {}: {e}",
            path.display()
        ))
    })
}

/// MedLAM with the atlas of `organs` built from the supports for box mode `mode`.
pub fn medlam_localizer(
    weights: &[u8],
    supports: &[Support],
    organs: &[u16],
    mode: BoxMode,
    options: LocalizeOptions,
    backend: BackendChoice,
) -> Result<MedLamLocalizer> {
    let cases: Vec<SupportCase> = supports
        .iter()
        .map(|s| SupportCase {
            name: s.name.clone(),
            ct: s.image.to_canonical().0,
            organs: SupportOrgans::Labels(s.labels.to_canonical().0),
        })
        .collect();
    let mode = match mode {
        BoxMode::Wpl => AtlasMode::Wpl,
        BoxMode::Spl { slab_mm } => AtlasMode::Spl { slab_mm },
    };
    pollster::block_on(MedLamLocalizer::from_supports(
        weights,
        &cases,
        organs,
        mode,
        options,
        &backend.device(),
    ))
}

/// Localize with MedLAM from the supports, then segment with LiteMedSAM, for
/// every query; writes the outputs under the configured folder. Warnings (e.g.
/// an organ missing in some supports) and stage times go to `log`.
pub fn segment_with_supports(
    run: &SupportRun,
    progress: &mut dyn FnMut(&str, Progress),
    log: &mut dyn FnMut(String),
) -> Result<Vec<QueryReport>> {
    let cfg = &run.config;
    if cfg.queries.is_empty() {
        return Err(Error::InvalidArgument("no query CT given".into()));
    }
    let t = web_time::Instant::now();
    let supports = load_supports(&cfg.supports)?;
    let (organs, warnings) = resolve_organs(&supports, &cfg.organs)?;
    warnings.into_iter().for_each(&mut *log);
    let names = support_label_table(cfg);
    let weights = read_medlam_weights(cfg)?;
    let load_s = t.elapsed().as_secs_f64();
    let t = web_time::Instant::now();
    let localizer = medlam_localizer(
        &weights,
        &supports,
        &organs,
        cfg.mode,
        run.localize,
        run.backend,
    )?;
    drop(supports);
    log(format!(
        "supports: {} loaded in {load_s:.1} s, atlas of {} organs built in {:.1} s",
        cfg.supports.len(),
        organs.len(),
        t.elapsed().as_secs_f64()
    ));
    let mut segmenter = run.segmenter()?;
    let opt = run.segment_options();
    let out = cfg.out.clone().unwrap_or_else(default_out);
    run_queries(
        &cfg.queries,
        &organs,
        &names,
        &out,
        &run.query_label_map,
        &mut |_, _| Ok(localizer.clone()),
        &mut segmenter,
        &opt,
        progress,
    )
}

/// Per-organ mean ± sd over queries of DSC, HD95, box IoU, WD and ALE, as a text table;
/// queries whose label map lacks the organ are left out (`metrics.csv` keeps them).
pub fn summary_table(reports: &[QueryReport], names: &LabelTable) -> String {
    let mut labels: Vec<u16> = reports
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .flat_map(|ok| {
            ok.metrics
                .iter()
                .filter(|m| m.truth_voxels > 0)
                .map(|m| m.label)
        })
        .collect();
    labels.sort_unstable();
    labels.dedup();
    let mut out = format!(
        "{:>5}  {:<18} {:>3}  {:>13}  {:>13}  {:>13}  {:>11}  {:>11}\n",
        "label", "name", "n", "DSC %", "HD95 mm", "box IoU %", "WD mm", "ALE mm"
    );
    let cell = |v: Vec<f64>, w: usize| match mean_sd(&v) {
        Some((m, sd)) => format!("{:>w$}", format!("{m:.1} ± {sd:.1}")),
        None => format!("{:>w$}", "-"),
    };
    for l in labels {
        let ms: Vec<&LabelMetrics> = reports
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .flat_map(|ok| {
                ok.metrics
                    .iter()
                    .filter(|m| m.label == l && m.truth_voxels > 0)
            })
            .collect();
        let col = |f: fn(&LabelMetrics) -> Option<f64>| ms.iter().filter_map(|m| f(m)).collect();
        out += &format!(
            "{:>5}  {:<18} {:>3}  {}  {}  {}  {}  {}\n",
            l,
            names.name(l),
            ms.len(),
            cell(col(|m| m.dsc), 13),
            cell(col(|m| m.hd95_mm), 13),
            cell(col(|m| m.box_iou), 13),
            cell(col(|m| m.wd_mm), 11),
            cell(col(|m| m.ale_mm), 11),
        );
    }
    out
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_memory_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Output directory default.
pub fn default_out() -> PathBuf {
    PathBuf::from("medlsam_out")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::synthetic::{PhantomOptions, phantom};
    use crate::volume::{Affine, Volume};

    #[test]
    fn organ_resolution_and_body_check() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [40, 40, 30],
            spacing_mm: [7.0; 3],
            ..Default::default()
        })
        .unwrap();
        let mut lab2 = lab.clone();
        lab2.data.iter_mut().for_each(|v| {
            if *v == 2 {
                *v = 0
            }
        });
        let s = vec![
            Support {
                name: "a".into(),
                image: ct.clone(),
                labels: lab,
            },
            Support {
                name: "b".into(),
                image: ct.clone(),
                labels: lab2,
            },
        ];
        let (o, w) = resolve_organs(&s, &Organs::All).unwrap();
        assert_eq!(o, vec![1, 2, 3, 4]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("organ 2 is missing in support(s) b"), "{w:?}");
        let e = resolve_organs(&s, &Organs::List(vec![9]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("organ 9 is in none"), "{e}");
        check_has_body(&ct).unwrap();
        let air = Volume::filled([20, 20, 20], -1000i16, Affine::identity()).unwrap();
        assert!(
            check_has_body(&air)
                .unwrap_err()
                .to_string()
                .contains("no body found")
        );
    }
}
