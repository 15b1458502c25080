//! `medlsam segment`: localize with MedLAM from the supports, segment with
//! LiteMedSAM, and for each query write `<case>.seg.nii.gz`, `<case>.boxes.json`,
//! `<case>.png`, and with query labels `metrics.csv`; also the true-box run
//! (`--boxes-from-label`, the manual-prompt ceiling). A failing query is reported
//! and the others continue.

use std::path::{Path, PathBuf};

use super::config::{CasePaths, RunConfig};
use super::default_out;
use super::inputs::{check_dicom_outputs, load_labels, load_query_with_dicom, medlam_weights_path};
use super::outputs::{
    DicomOutputs, MetricsCsv, create_out, write_dicom_outputs, write_labels_json,
    write_query_outputs,
};
use super::session::{RunLocalizer, Session, lite_medsam_segmenter, with_self_check};
use crate::device::BackendChoice;
use crate::medlam::LocalizeOptions;
use crate::metrics::{LabelMetrics, evaluate_labels};
use crate::oracle::OracleLocalizer;
use crate::output::mean_sd;
use crate::pipeline::{DEFAULT_PRIOR_WEIGHT, SegmentOptions, segment_query};
use crate::sam::preprocess::SOFT_TISSUE_WINDOW_HU;
use crate::types::{BoxMode, Localizer, LocalizerChoice, Progress, SliceSegmenter, StageTimes};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::{CtVolume, LabelVolume, case_name};
use crate::{Error, Result};

/// The localizer of a run that names none (chosen on OpenKBP dev queries).
pub const DEFAULT_LOCALIZER: LocalizerChoice = LocalizerChoice::Both;

/// Outcome of one query.
pub struct QueryReport {
    pub case: String,
    pub result: Result<QueryOk>,
}

impl QueryReport {
    /// The query's result, or its error as `case: error`.
    pub fn ok(&self) -> Result<&QueryOk> {
        self.result
            .as_ref()
            .map_err(|e| Error::Failed(format!("{}: {e}", self.case)))
    }
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
    /// Organs the localizer placed with a warning (e.g. MedLAM standing in for a failed
    /// registration), with the warning.
    pub warnings: Vec<(u16, String)>,
}

/// What [`run_queries`] segments, how, and where it writes.
pub struct QueryBatch<'a> {
    pub queries: &'a [CasePaths],
    pub organs: &'a [u16],
    pub names: &'a LabelTable,
    pub out: &'a Path,
    /// `(support, query)` label pairs where query label maps use other values.
    pub query_label_map: &'a [(u16, u16)],
    pub options: &'a SegmentOptions,
    /// RTSTRUCT / DICOM SEG beside the NIfTI (DICOM queries only).
    pub dicom_outputs: DicomOutputs,
}

/// Segment every query and write its outputs under `batch.out`. `make_localizer` builds
/// the localizer for one query (given its file-grid CT and, when known, labels).
pub fn run_queries<L: Localizer, S: SliceSegmenter>(
    batch: &QueryBatch,
    make_localizer: &mut dyn FnMut(&CtVolume, Option<&LabelVolume>) -> Result<L>,
    segmenter: &mut S,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Vec<QueryReport>> {
    let QueryBatch {
        queries,
        names,
        out,
        dicom_outputs,
        ..
    } = *batch;
    check_dicom_outputs(queries, dicom_outputs.rtstruct, dicom_outputs.seg)?;
    create_out(out)?;
    write_labels_json(out, names)?;
    let mut reports = Vec::new();
    let mut csv = MetricsCsv::default();
    for q in queries {
        let case = case_name(&q.image);
        let result = segment_one(batch, q, &case, make_localizer, segmenter, progress);
        if let Ok(ok) = &result {
            csv.push(&case, &ok.metrics, names);
        }
        reports.push(QueryReport { case, result });
    }
    if queries.iter().any(|q| q.label.is_some()) {
        csv.write(out)?;
    }
    Ok(reports)
}

/// One query of [`run_queries`]: load, localize, segment, write the outputs, score.
fn segment_one<L: Localizer, S: SliceSegmenter>(
    batch: &QueryBatch,
    q: &CasePaths,
    case: &str,
    make_localizer: &mut dyn FnMut(&CtVolume, Option<&LabelVolume>) -> Result<L>,
    segmenter: &mut S,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<QueryOk> {
    let QueryBatch {
        organs,
        names,
        out,
        query_label_map,
        options: opt,
        dicom_outputs,
        ..
    } = *batch;
    let t0 = web_time::Instant::now();
    let (ct, truth, dicom) = load_query_with_dicom(q, query_label_map)?;
    let load_s = t0.elapsed().as_secs_f64();
    let mut loc = make_localizer(&ct, truth.as_ref())?;
    let res = pollster::block_on(segment_query(
        &ct,
        organs,
        &mut loc,
        segmenter,
        opt,
        None,
        &mut |p| progress(case, p),
    ))?;
    let tw = web_time::Instant::now();
    write_query_outputs(out, case, &ct, &res, names)?;
    write_dicom_outputs(
        out,
        case,
        &res.labels,
        organs,
        names,
        dicom.as_ref(),
        dicom_outputs,
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
        warnings: res
            .organs
            .iter()
            .filter_map(|o| o.warning.clone().map(|w| (o.label, w)))
            .collect(),
    })
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
    /// Weight of registration priors against the segmenter (see [`SegmentOptions`]);
    /// `None`: automatic (the default weight, and the self-check of one registered support,
    /// [`crate::pipeline::self_check`]).
    pub prior_weight: Option<f32>,
    /// RTSTRUCT / DICOM SEG beside each query's NIfTI (DICOM queries only).
    pub dicom_outputs: DicomOutputs,
}

impl SupportRun {
    /// The run's segmenter: its weights, on its backend, with its CT window.
    pub fn segmenter(&self) -> Result<crate::sam::predictor::SamSegmenter> {
        lite_medsam_segmenter(
            self.config.sam_weights.as_deref(),
            self.backend,
            self.window_hu,
        )
    }

    /// The run's supports, organs and MedLAM network (see [`Session::open`]).
    pub fn session(&self, log: &mut dyn FnMut(String)) -> Result<Session> {
        Session::open(
            &self.config.supports,
            &self.config.organs,
            &medlam_weights_path(&self.config),
            self.backend.device(),
            self.localize,
            log,
        )
    }

    /// The slice-segmentation options of the run (its box margin).
    pub fn segment_options(&self) -> SegmentOptions {
        SegmentOptions {
            margin_px_1024: self.margin_px_1024,
            prior_weight: self.prior_weight.unwrap_or(DEFAULT_PRIOR_WEIGHT),
            ..Default::default()
        }
    }

    /// The slice options for `localizer` on the session's supports: [`Self::segment_options`]
    /// with, for one registered support and an automatic prior weight, the organs the
    /// segmenter draws well on it ([`with_self_check`]; encodes a few support slices).
    pub fn segment_options_for<S: SliceSegmenter>(
        &self,
        session: &Session,
        localizer: &RunLocalizer,
        segmenter: &mut S,
        log: &mut dyn FnMut(String),
    ) -> Result<SegmentOptions> {
        pollster::block_on(with_self_check(
            self.segment_options(),
            self.prior_weight.is_none(),
            localizer,
            &session.supports,
            &session.organs,
            segmenter,
            log,
        ))
    }

    /// The localizer the run asked for (config or command line), else the default.
    pub fn localizer_choice(&self) -> LocalizerChoice {
        self.config.localizer.unwrap_or(DEFAULT_LOCALIZER)
    }
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
    check_dicom_outputs(
        &cfg.queries,
        run.dicom_outputs.rtstruct,
        run.dicom_outputs.seg,
    )?;
    let t = web_time::Instant::now();
    let mut session = run.session(log)?;
    let load_s = t.elapsed().as_secs_f64();
    let t = web_time::Instant::now();
    let localizer = session.run_localizer(run.localizer_choice(), cfg.mode)?;
    log(format!(
        "supports: {} loaded in {load_s:.1} s, {} localizer of {} organs built in {:.1} s",
        cfg.supports.len(),
        run.localizer_choice().name(),
        session.organs.len(),
        t.elapsed().as_secs_f64()
    ));
    let mut segmenter = run.segmenter()?;
    let opt = run.segment_options_for(&session, &localizer, &mut segmenter, log)?;
    session.release_supports();
    let out = cfg.out.clone().unwrap_or_else(default_out);
    let batch = QueryBatch {
        queries: &cfg.queries,
        organs: &session.organs,
        names: &session.names,
        out: &out,
        query_label_map: &run.query_label_map,
        options: &opt,
        dicom_outputs: run.dicom_outputs,
    };
    run_queries(
        &batch,
        &mut |_, _| Ok(localizer.clone()),
        &mut segmenter,
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

/// Options of `medlsam segment --query Q --boxes-from-label L`.
#[derive(Clone, Debug)]
pub struct TrueBoxRun {
    pub query: PathBuf,
    /// Label map on the query's grid: its organs' true 2-D boxes are the prompts.
    pub label: PathBuf,
    /// Organs to segment (default: every label in the map).
    pub organs: Option<Vec<u16>>,
    /// Box enlargement in pixels at the 1024² SAM scale (the paper's 10).
    pub margin_px_1024: f64,
    pub backend: BackendChoice,
    /// `.bpk` weights (default `weights/lite_medsam.bpk`).
    pub weights: Option<PathBuf>,
    pub window_hu: [f32; 2],
    pub out: PathBuf,
    /// RTSTRUCT / DICOM SEG beside the NIfTI (a DICOM query only).
    pub dicom_outputs: DicomOutputs,
}

impl TrueBoxRun {
    /// Defaults for a query and its label map.
    pub fn new(query: PathBuf, label: PathBuf, out: PathBuf) -> Self {
        Self {
            query,
            label,
            organs: None,
            margin_px_1024: 10.0,
            backend: BackendChoice::Cpu,
            weights: None,
            window_hu: SOFT_TISSUE_WINDOW_HU,
            out,
            dicom_outputs: DicomOutputs::default(),
        }
    }
}

/// Segment every slice where the label map has each organ, prompted with that
/// slice's true box (the paper's "manual prompt" ceiling); writes
/// `<case>.seg.nii.gz`, `labels.json`, `metrics.csv`, `<case>.boxes.json`, `<case>.png`.
pub fn segment_true_boxes(
    run: &TrueBoxRun,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Vec<QueryReport>> {
    if !(run.margin_px_1024 >= 0.0 && run.margin_px_1024.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "the box margin must be ≥ 0 px, got {}",
            run.margin_px_1024
        )));
    }
    let labels = load_labels(&run.label)?;
    let present: Vec<u16> = classes(&labels).into_iter().map(|(v, _)| v).collect();
    let organs = match &run.organs {
        Some(list) => {
            if let Some(o) = list.iter().find(|o| !present.contains(o)) {
                return Err(Error::InvalidArgument(format!(
                    "organ {o} is not in {} (present: {present:?})",
                    run.label.display()
                )));
            }
            list.clone()
        }
        None => present,
    };
    if organs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} contains no organ",
            run.label.display()
        )));
    }
    let names = LabelTable::find_beside(&run.label).unwrap_or_default();
    let mut segmenter = lite_medsam_segmenter(run.weights.as_deref(), run.backend, run.window_hu)?;
    let opt = SegmentOptions {
        margin_px_1024: run.margin_px_1024,
        ..Default::default()
    };
    let query = CasePaths {
        image: run.query.clone(),
        label: Some(run.label.clone()),
    };
    let batch = QueryBatch {
        queries: &[query],
        organs: &organs,
        names: &names,
        out: &run.out,
        query_label_map: &[],
        options: &opt,
        dicom_outputs: run.dicom_outputs,
    };
    run_queries(
        &batch,
        &mut |ct, truth| {
            let truth = truth.ok_or_else(|| Error::InvalidArgument("no label map".into()))?;
            OracleLocalizer::new(ct, truth, BoxMode::Spl { slab_mm: 0.0 })
        },
        &mut segmenter,
        progress,
    )
}
