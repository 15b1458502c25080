//! Whole-pipeline evaluation (`medlsam eval-segment`): every labelled query is
//! localized with MedLAM and segmented three ways — SPL boxes, WPL boxes, and the
//! true per-slice boxes with the same margin ("oracle", the manual-prompt ceiling) —
//! with each slice encoded once for all three ([`EmbeddingCache`]).
//!
//! Results go to `OUT/eval.csv` (one row per mode, query and organ) and
//! `OUT/times.csv` (one row per query), appended as each query finishes: a
//! stopped run continues where it stopped when started again with the same `OUT`
//! (queries already in `times.csv` are skipped). The summary covers every row in
//! `OUT`, so a long evaluation can be run in parts.

use std::io::Write;
use std::path::Path;

use super::config::CasePaths;
use super::inputs::load_query;
use super::segment::SupportRun;
use super::session::RunLocalizer;
use crate::metrics::{LabelMetrics, evaluate_labels};
use crate::oracle::{Found, OracleLocalizer};
use crate::output::{mean_sd, median};
use crate::pipeline::{CanonicalResult, SegmentOptions, segment_canonical};
use crate::sam::cache::EmbeddingCache;
use crate::types::{
    BoxMode, Localizer, LocalizerChoice, OrganLocalization, Progress, SliceSegmenter,
};
use crate::volume::label_table::LabelTable;
use crate::volume::{CtVolume, case_name};
use crate::{Error, Result};

/// The modes of `--localizer medlam`: MedLAM's SPL and WPL boxes and the true boxes.
pub const MODES: [&str; 3] = ["spl", "wpl", "oracle"];
/// The modes of `--localizer register`: the registration prior alone (`reg`; with
/// `--localizer both` MedLAM places what registration cannot, as `segment` does), LiteMedSAM
/// in the prior's boxes (`reg_box`), the two combined (`reg_sam`, what `segment` does),
/// and the true boxes.
pub const REGISTER_MODES: [&str; 4] = ["reg", "reg_box", "reg_sam", "oracle"];
/// The modes of `--localizer both`.
pub const ALL_MODES: [&str; 6] = ["spl", "wpl", "reg", "reg_box", "reg_sam", "oracle"];

/// The modes an evaluation with `choice` runs, in order.
pub fn modes_for(choice: LocalizerChoice) -> &'static [&'static str] {
    match choice {
        LocalizerChoice::Medlam => &MODES,
        LocalizerChoice::Register => &REGISTER_MODES,
        LocalizerChoice::Both => &ALL_MODES,
    }
}

/// The modes of `choice` named in `only` (all of them when `only` is empty), in the
/// evaluation's order. `reg_box` and `reg_sam` reuse `reg`'s localization, so they need it.
pub fn select_modes(choice: LocalizerChoice, only: &[String]) -> Result<Vec<&'static str>> {
    let all = modes_for(choice);
    if let Some(m) = only.iter().find(|m| !all.contains(&m.as_str())) {
        return Err(Error::InvalidArgument(format!(
            "--eval-modes: {m} is not a mode of --localizer {} (its modes: {})",
            choice.name(),
            all.join(", ")
        )));
    }
    let modes: Vec<&'static str> = all
        .iter()
        .copied()
        .filter(|m| only.is_empty() || only.iter().any(|o| o == m))
        .collect();
    if modes.iter().any(|m| m.starts_with("reg_")) && !modes.contains(&"reg") {
        return Err(Error::InvalidArgument(
            "--eval-modes: reg_box and reg_sam reuse reg's localization: add reg".into(),
        ));
    }
    Ok(modes)
}

/// Whether a mode runs a localizer of its own (the others reuse one: `reg_box` and
/// `reg_sam` reuse `reg`'s, `oracle` reads the labels).
fn localizes(mode: &str) -> bool {
    matches!(mode, "spl" | "wpl" | "reg")
}

pub const EVAL_CSV_HEADER: &str =
    "mode,case,label,name,truth_voxels,pred_voxels,dsc,hd95,box_iou,wd,ale";
/// `times.csv`'s header for [`MODES`] (other mode sets: [`times_header`]).
pub const TIMES_CSV_HEADER: &str = "case,slices_encoded,boxes_spl,boxes_wpl,boxes_oracle,load_s,localize_spl_s,localize_wpl_s,encode_s,decode_s,total_s,backend";

/// `times.csv`'s header for `modes`: boxes decoded per mode, localization time per
/// mode that localizes.
pub fn times_header(modes: &[&str]) -> String {
    let boxes: Vec<String> = modes.iter().map(|m| format!("boxes_{m}")).collect();
    let loc: Vec<String> = modes
        .iter()
        .filter(|m| localizes(m))
        .map(|m| format!("localize_{m}_s"))
        .collect();
    format!(
        "case,slices_encoded,{},load_s,{},encode_s,decode_s,total_s,backend",
        boxes.join(","),
        loc.join(",")
    )
}

/// The modes a `times.csv` header names (inverse of [`times_header`]).
fn modes_of_header(header: &str) -> Option<Vec<String>> {
    let modes: Vec<String> = header
        .split(',')
        .filter_map(|c| c.strip_prefix("boxes_").map(String::from))
        .collect();
    let refs: Vec<&str> = modes.iter().map(String::as_str).collect();
    (times_header(&refs) == header).then_some(modes)
}

/// One row of `eval.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub mode: String,
    pub case: String,
    pub label: u16,
    pub name: String,
    pub truth_voxels: usize,
    pub pred_voxels: usize,
    pub dsc: Option<f64>,
    pub hd95_mm: Option<f64>,
    pub box_iou: Option<f64>,
    pub wd_mm: Option<f64>,
    pub ale_mm: Option<f64>,
}

impl EvalRow {
    fn new(mode: &str, case: &str, name: String, m: &LabelMetrics) -> Self {
        Self {
            mode: mode.into(),
            case: case.into(),
            label: m.label,
            name,
            truth_voxels: m.truth_voxels,
            pred_voxels: m.pred_voxels,
            dsc: m.dsc,
            hd95_mm: m.hd95_mm,
            box_iou: m.box_iou,
            wd_mm: m.wd_mm,
            ale_mm: m.ale_mm,
        }
    }

    fn to_csv(&self) -> String {
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        format!(
            "{},{},{},{},{},{},{},{},{},{},{}",
            self.mode,
            self.case,
            self.label,
            self.name.replace([',', '"', '\n'], " "),
            self.truth_voxels,
            self.pred_voxels,
            f(self.dsc),
            f(self.hd95_mm),
            f(self.box_iou),
            f(self.wd_mm),
            f(self.ale_mm)
        )
    }

    fn parse(line: &str) -> Result<Self> {
        let c: Vec<&str> = line.split(',').collect();
        let bad = || Error::InvalidArgument(format!("not an eval.csv row: {line:?}"));
        if c.len() != 11 {
            return Err(bad());
        }
        let f = |s: &str| -> Result<Option<f64>> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        Ok(Self {
            mode: c[0].into(),
            case: c[1].into(),
            label: c[2].parse().map_err(|_| bad())?,
            name: c[3].into(),
            truth_voxels: c[4].parse().map_err(|_| bad())?,
            pred_voxels: c[5].parse().map_err(|_| bad())?,
            dsc: f(c[6])?,
            hd95_mm: f(c[7])?,
            box_iou: f(c[8])?,
            wd_mm: f(c[9])?,
            ale_mm: f(c[10])?,
        })
    }
}

/// The measurements of one query.
#[derive(Clone, Debug, Default)]
pub struct QueryTimes {
    pub case: String,
    pub slices_encoded: usize,
    /// Boxes decoded per mode, in the evaluation's mode order.
    pub boxes: Vec<usize>,
    pub load_s: f64,
    /// Localization seconds per mode that localizes, in mode order.
    pub localize_s: Vec<f64>,
    pub encode_s: f64,
    pub decode_s: f64,
    pub total_s: f64,
    /// The backend the query ran on (`cpu`, `wgpu`): times are summarised per backend.
    pub backend: String,
}

impl QueryTimes {
    fn to_csv(&self) -> String {
        let boxes: Vec<String> = self.boxes.iter().map(|b| b.to_string()).collect();
        let loc: Vec<String> = self.localize_s.iter().map(|s| format!("{s:.2}")).collect();
        format!(
            "{},{},{},{:.2},{},{:.2},{:.2},{:.2},{}",
            self.case,
            self.slices_encoded,
            boxes.join(","),
            self.load_s,
            loc.join(","),
            self.encode_s,
            self.decode_s,
            self.total_s,
            self.backend
        )
    }

    /// A row of a `times.csv` whose header names `modes`.
    fn parse(line: &str, modes: &[String]) -> Result<Self> {
        let c: Vec<&str> = line.split(',').collect();
        let bad = || Error::InvalidArgument(format!("not a times.csv row: {line:?}"));
        let nm = modes.len();
        let nl = modes.iter().filter(|m| localizes(m)).count();
        if c.len() != 7 + nm + nl || c[c.len() - 1].is_empty() {
            return Err(bad());
        }
        let u = |s: &str| s.parse::<usize>().map_err(|_| bad());
        let f = |s: &str| s.parse::<f64>().map_err(|_| bad());
        let l = 3 + nm + nl;
        Ok(Self {
            case: c[0].into(),
            slices_encoded: u(c[1])?,
            boxes: c[2..2 + nm].iter().map(|s| u(s)).collect::<Result<_>>()?,
            load_s: f(c[2 + nm])?,
            localize_s: c[3 + nm..l].iter().map(|s| f(s)).collect::<Result<_>>()?,
            encode_s: f(c[l])?,
            decode_s: f(c[l + 1])?,
            total_s: f(c[l + 2])?,
            backend: c[l + 3].into(),
        })
    }
}

/// Everything evaluated so far under an output folder.
#[derive(Clone, Debug, Default)]
pub struct EvalResults {
    /// The modes of the evaluation, in order (empty when nothing was evaluated yet).
    pub modes: Vec<String>,
    pub rows: Vec<EvalRow>,
    pub times: Vec<QueryTimes>,
}

impl EvalResults {
    /// The evaluation's modes; [`MODES`] when nothing was evaluated yet.
    fn modes_or_default(&self) -> Vec<String> {
        if self.modes.is_empty() {
            MODES.iter().map(|m| m.to_string()).collect()
        } else {
            self.modes.clone()
        }
    }
}

/// The header and the non-empty lines of a CSV file; `None` when it does not exist.
fn csv_lines(path: &Path) -> Result<Option<(String, Vec<String>)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut it = text.lines();
    let header = it.next().unwrap_or("").to_string();
    let lines = it
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    Ok(Some((header, lines)))
}

fn another_header(path: &Path, expected: &str) -> Error {
    Error::InvalidArgument(format!(
        "{} has another header than this version writes ({expected}): use a new output folder",
        path.display()
    ))
}

/// Read `OUT/eval.csv` and `OUT/times.csv` (empty when absent). Rows of queries
/// missing from `times.csv` (a run stopped while writing them) are dropped.
pub fn read_results(out: &Path) -> Result<EvalResults> {
    let times_path = out.join("times.csv");
    let Some((header, time_lines)) = csv_lines(&times_path)? else {
        return Ok(EvalResults::default());
    };
    let modes =
        modes_of_header(&header).ok_or_else(|| another_header(&times_path, TIMES_CSV_HEADER))?;
    // A run killed while appending may leave the last times.csv line cut short: it is
    // dropped (its query runs again); any other bad line is an error.
    let mut times = Vec::new();
    for (n, l) in time_lines.iter().enumerate() {
        match QueryTimes::parse(l, &modes) {
            Ok(t) => times.push(t),
            Err(_) if n + 1 == time_lines.len() => {}
            Err(e) => return Err(e),
        }
    }
    let eval_path = out.join("eval.csv");
    let (eval_header, eval_lines) = csv_lines(&eval_path)?.unwrap_or_default();
    if !eval_lines.is_empty() && eval_header != EVAL_CSV_HEADER {
        return Err(another_header(&eval_path, EVAL_CSV_HEADER));
    }
    // Rows of queries not in times.csv (unfinished, possibly cut short) are dropped unread.
    let rows = eval_lines
        .iter()
        .filter(|l| {
            let case = l.split(',').nth(1).unwrap_or("");
            times.iter().any(|t| t.case == case)
        })
        .map(|l| EvalRow::parse(l))
        .collect::<Result<Vec<_>>>()?;
    Ok(EvalResults { modes, rows, times })
}

fn rewrite(path: &Path, header: &str, rows: impl Iterator<Item = String>) -> Result<()> {
    let mut text = format!("{header}\n");
    rows.for_each(|r| text += &(r + "\n"));
    std::fs::write(path, text)?;
    Ok(())
}

fn append(path: &Path, rows: &[String]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    for r in rows {
        writeln!(f, "{r}")?;
    }
    f.flush()?;
    Ok(())
}

/// A query that could not be evaluated.
#[derive(Clone, Debug)]
pub struct Failure {
    pub case: String,
    pub error: String,
}

/// Evaluate every query not yet in `OUT` (see the module doc); returns all results
/// under `OUT` and the queries that failed in this run (the others continue).
pub fn evaluate_pipeline(
    run: &SupportRun,
    only: &[String],
    progress: &mut dyn FnMut(&str, &str, Progress),
    log: &mut dyn FnMut(String),
) -> Result<(EvalResults, Vec<Failure>)> {
    let cfg = &run.config;
    let out = cfg
        .out
        .clone()
        .ok_or_else(|| Error::InvalidArgument("give an output folder (--out)".into()))?;
    let slab_mm = match cfg.mode {
        BoxMode::Spl { slab_mm } => slab_mm,
        BoxMode::Wpl => 6.0,
    };
    if let Some(q) = cfg.queries.iter().find(|q| q.label.is_none()) {
        return Err(Error::InvalidArgument(format!(
            "query {} has no label map: an evaluation needs one per query",
            q.image.display()
        )));
    }
    let choice = cfg.localizer.unwrap_or(LocalizerChoice::Medlam);
    let modes = select_modes(choice, only)?;
    let modes = modes.as_slice();
    let todo = resume(&out, &cfg.queries, modes)?;
    if todo.len() < cfg.queries.len() {
        log(format!(
            "{} of {} queries already evaluated in {}: skipped",
            cfg.queries.len() - todo.len(),
            cfg.queries.len(),
            out.display()
        ));
    }
    let mut failures = Vec::new();
    if !todo.is_empty() {
        let t = web_time::Instant::now();
        let mut session = run.session(log)?;
        let spl_mode = BoxMode::Spl { slab_mm };
        let build = |mode: &str| -> Result<Option<RunLocalizer>> {
            Ok(match mode {
                "spl" => Some(session.run_localizer(LocalizerChoice::Medlam, spl_mode)?),
                "wpl" => Some(session.run_localizer(LocalizerChoice::Medlam, BoxMode::Wpl)?),
                // `--localizer register`: registration alone (an organ it cannot place
                // gets no mask); `both`: MedLAM takes over there, as in `segment`.
                "reg" => Some(session.run_localizer(choice, spl_mode)?),
                _ => None,
            })
        };
        let mut localizers = Vec::new();
        for m in modes {
            localizers.push(build(m)?);
        }
        session.release_supports();
        log(format!(
            "{} supports, localizers ({}; SPL {slab_mm} mm) of {} organs in {:.1} s",
            cfg.supports.len(),
            modes.join(", "),
            session.organs.len(),
            t.elapsed().as_secs_f64()
        ));
        let mut segmenter = run.segmenter()?;
        let opt = run.segment_options();
        for q in todo {
            let case = case_name(&q.image);
            let mut cache = EmbeddingCache::new(&mut segmenter);
            let query = EvalQuery {
                paths: q,
                case: &case,
                organs: &session.organs,
                names: &session.names,
            };
            let result = evaluate_query(
                &query,
                modes,
                &mut localizers,
                &mut cache,
                run,
                &opt,
                progress,
            );
            match result {
                Ok((rows, times)) => {
                    let rows: Vec<String> = rows.iter().map(EvalRow::to_csv).collect();
                    append(&out.join("eval.csv"), &rows)?;
                    append(&out.join("times.csv"), &[times.to_csv()])?;
                    let loc: Vec<String> =
                        times.localize_s.iter().map(|s| format!("{s:.1}")).collect();
                    log(format!(
                        "{case}: {} slices, {:.1} s (localize {} s, encode {:.1} s, decode {:.1} s)",
                        times.slices_encoded,
                        times.total_s,
                        loc.join(" + "),
                        times.encode_s,
                        times.decode_s
                    ));
                }
                Err(e) => {
                    log(format!("{case}: failed: {e}"));
                    failures.push(Failure {
                        case,
                        error: e.to_string(),
                    });
                }
            }
        }
    }
    Ok((read_results(&out)?, failures))
}

/// Start or continue an evaluation in `out`: rewrite the finished queries' rows (a cut
/// last line is dropped) and return the queries still to evaluate.
fn resume<'a>(out: &Path, queries: &'a [CasePaths], modes: &[&str]) -> Result<Vec<&'a CasePaths>> {
    std::fs::create_dir_all(out)?;
    let before = read_results(out)?;
    let header = times_header(modes);
    if !before.times.is_empty() && before.modes != modes {
        return Err(Error::InvalidArgument(format!(
            "{} holds an evaluation of the modes {} (this run: {}): use a new output folder",
            out.display(),
            before.modes.join(", "),
            modes.join(", ")
        )));
    }
    let done: Vec<String> = before.times.iter().map(|t| t.case.clone()).collect();
    rewrite(
        &out.join("times.csv"),
        &header,
        before.times.iter().map(QueryTimes::to_csv),
    )?;
    rewrite(
        &out.join("eval.csv"),
        EVAL_CSV_HEADER,
        before.rows.iter().map(EvalRow::to_csv),
    )?;
    Ok(queries
        .iter()
        .filter(|q| !done.contains(&case_name(&q.image)))
        .collect())
}

/// One mode of a query: [`segment_canonical`] with `localizer`, not cancellable.
fn segment_with<L: Localizer, S: SliceSegmenter>(
    canon: &CtVolume,
    organs: &[u16],
    localizer: &mut L,
    segmenter: &mut S,
    opt: &SegmentOptions,
    report: &mut dyn FnMut(Progress),
) -> Result<CanonicalResult> {
    pollster::block_on(segment_canonical(
        canon, organs, localizer, segmenter, opt, None, report,
    ))
}

/// One query of an evaluation.
struct EvalQuery<'a> {
    paths: &'a CasePaths,
    case: &'a str,
    organs: &'a [u16],
    names: &'a LabelTable,
}

/// Segment one query in every mode (`localizers[n]` for `modes[n]`, `None` where the mode
/// reuses another's localization) and score each mode against the query's labels.
fn evaluate_query<S: SliceSegmenter>(
    q: &EvalQuery,
    modes: &[&str],
    localizers: &mut [Option<RunLocalizer>],
    cache: &mut EmbeddingCache<'_, S>,
    run: &SupportRun,
    opt: &SegmentOptions,
    progress: &mut dyn FnMut(&str, &str, Progress),
) -> Result<(Vec<EvalRow>, QueryTimes)>
where
    S::Embedding: Clone,
{
    let t0 = web_time::Instant::now();
    let (ct, truth) = load_query(q.paths, &run.query_label_map)?;
    let truth = truth.ok_or_else(|| Error::InvalidArgument("no label map".into()))?;
    let mut times = QueryTimes {
        case: q.case.into(),
        load_s: t0.elapsed().as_secs_f64(),
        backend: run.backend.name().into(),
        ..Default::default()
    };
    let (canon, r) = ct.to_canonical();
    // The true box of each slice (no slabs), with the same margin.
    let mut oracle = OracleLocalizer::new(&ct, &truth, BoxMode::Spl { slab_mm: 0.0 })?;
    // The registration's localization, shared by its three modes.
    let mut registered: Option<Vec<OrganLocalization>> = None;
    let mut rows = Vec::new();
    for (mode, localizer) in modes.iter().zip(localizers.iter_mut()) {
        let mut report = |p: Progress| progress(q.case, mode, p);
        let weight = match *mode {
            "reg" => 1.0,
            "reg_box" => 0.0,
            _ => opt.prior_weight,
        };
        let o = SegmentOptions {
            prior_weight: weight,
            ..opt.clone()
        };
        let res = match (localizer, *mode) {
            (Some(l), _) => segment_with(&canon, q.organs, l, cache, &o, &mut report)?,
            (None, "oracle") => {
                segment_with(&canon, q.organs, &mut oracle, cache, &o, &mut report)?
            }
            (None, m) => {
                let found = registered.clone().ok_or_else(|| {
                    Error::InvalidArgument(format!("mode {m} needs the reg mode before it"))
                })?;
                segment_with(&canon, q.organs, &mut Found(found), cache, &o, &mut report)?
            }
        };
        if *mode == "reg" {
            registered = Some(res.organs.clone());
        }
        if localizes(mode) {
            times.localize_s.push(res.times.localize.as_secs_f64());
        }
        times.encode_s += res.times.encode.as_secs_f64();
        times.decode_s += res.times.decode.as_secs_f64();
        times.boxes.push(res.boxes_decoded);
        let labels = res.labels.from_canonical(&r)?;
        for m in evaluate_labels(&labels, &truth, q.organs)? {
            rows.push(EvalRow::new(mode, q.case, q.names.name(m.label), &m));
        }
    }
    times.slices_encoded = cache.len();
    times.total_s = t0.elapsed().as_secs_f64();
    Ok((rows, times))
}

/// Per organ (organ instances present in the query labels): DSC mean ± sd for each
/// mode, and the SPL and WPL masks' box IoU; a last row over all instances; then the
/// time per query.
pub fn summary_table(res: &EvalResults) -> String {
    dsc_table(res) + &times_summary(res, &res.modes_or_default())
}

/// Several evaluations side by side (e.g. `eval/openkbp`'s SPL/WPL/oracle and a
/// registration run on the same queries): the DSC table over the queries every one of
/// them finished (a mode in two of them is taken from the first), then each one's times
/// on those queries.
pub fn merged_summary(all: &[EvalResults]) -> String {
    let mut common: Vec<&str> = all
        .first()
        .map(|r| r.times.iter().map(|t| t.case.as_str()).collect())
        .unwrap_or_default();
    common.retain(|c| all.iter().all(|r| r.times.iter().any(|t| t.case == *c)));
    let mut merged = EvalResults::default();
    for res in all {
        for m in &res.modes {
            if merged.modes.contains(m) {
                continue;
            }
            merged.modes.push(m.clone());
            merged.rows.extend(
                res.rows
                    .iter()
                    .filter(|r| r.mode == *m && common.contains(&r.case.as_str()))
                    .cloned(),
            );
        }
    }
    let mut out = format!(
        "{} queries in all {} evaluations\n",
        common.len(),
        all.len()
    );
    out += &dsc_table(&merged);
    for res in all {
        let on_common = EvalResults {
            modes: res.modes.clone(),
            rows: Vec::new(),
            times: res
                .times
                .iter()
                .filter(|t| common.contains(&t.case.as_str()))
                .cloned()
                .collect(),
        };
        out += &times_summary(&on_common, &res.modes);
    }
    out
}

/// [`summary_table`]'s DSC and box IoU part.
fn dsc_table(res: &EvalResults) -> String {
    let mut labels: Vec<(u16, String)> = res
        .rows
        .iter()
        .filter(|r| r.truth_voxels > 0)
        .map(|r| (r.label, r.name.clone()))
        .collect();
    labels.sort();
    labels.dedup_by_key(|l| l.0);
    let cell = |v: Vec<f64>| match mean_sd(&v) {
        Some((m, sd)) => format!("{:>12}", format!("{m:.1} ± {sd:.1}")),
        None => format!("{:>12}", "-"),
    };
    // Columns: DSC of the true boxes first, then of each other mode; box IoU of the modes
    // whose boxes come from a localizer's 3-D box.
    let modes = res.modes_or_default();
    let mut dsc_modes: Vec<&str> = modes.iter().map(String::as_str).collect();
    dsc_modes.sort_by_key(|m| *m != "oracle");
    let iou_modes: Vec<&str> = dsc_modes
        .iter()
        .copied()
        .filter(|m| matches!(*m, "spl" | "wpl" | "reg_sam"))
        .collect();
    let mut out = format!("{:>5}  {:<16} {:>4}", "label", "name", "n");
    for m in &dsc_modes {
        out += &format!("  {:>12}", format!("{} DSC", mode_title(m)));
    }
    for m in &iou_modes {
        out += &format!("  {:>12}", format!("{} boxIoU", mode_title(m)));
    }
    out += "\n";
    let mut line = |label: &str, name: &str, keep: &dyn Fn(&EvalRow) -> bool| {
        let pick = |mode: &str, f: fn(&EvalRow) -> Option<f64>| -> Vec<f64> {
            res.rows
                .iter()
                .filter(|r| r.mode == mode && r.truth_voxels > 0 && keep(r))
                .map(|r| f(r).unwrap_or(0.0))
                .collect()
        };
        let n = pick(dsc_modes[0], |r| r.dsc).len();
        out += &format!("{label:>5}  {name:<16} {n:>4}");
        for m in &dsc_modes {
            out += &format!("  {}", cell(pick(m, |r| r.dsc)));
        }
        for m in &iou_modes {
            out += &format!("  {}", cell(pick(m, |r| r.box_iou)));
        }
        out += "\n";
    };
    for (l, name) in &labels {
        line(&l.to_string(), name, &|r| r.label == *l);
    }
    line("", "all", &|_| true);
    out
}

/// A mode's name in the tables: `oracle` as it is, the others in capitals.
fn mode_title(mode: &str) -> String {
    if mode == "oracle" {
        mode.into()
    } else {
        mode.to_ascii_uppercase()
    }
}

/// One line per backend: the median time per query and per stage. Times per backend (a
/// run may be continued on another machine); medians, so a query that shared the machine
/// with other work does not skew them.
fn times_summary(res: &EvalResults, modes: &[String]) -> String {
    let loc_modes: Vec<&String> = modes.iter().filter(|m| localizes(m)).collect();
    let mut backends: Vec<&str> = res.times.iter().map(|t| t.backend.as_str()).collect();
    backends.sort();
    backends.dedup();
    let mut out = String::new();
    for backend in backends {
        let times: Vec<&QueryTimes> = res.times.iter().filter(|t| t.backend == backend).collect();
        let med = |f: &dyn Fn(&QueryTimes) -> f64| median(times.iter().map(|t| f(t)).collect());
        let (lo, hi) = times
            .iter()
            .map(|t| t.total_s)
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let loc: Vec<String> = loc_modes
            .iter()
            .enumerate()
            .map(|(n, m)| {
                let s = med(&|t| t.localize_s.get(n).copied().unwrap_or(0.0));
                format!("{} {s:.1} s", mode_title(m))
            })
            .collect();
        out += &format!(
            "{} queries on {backend}; per query, medians: {:.0} s (range {:.0}-{:.0} s; {:.0} slices; load {:.1} s, localize {}, encode {:.1} s, decode {:.1} s)\n",
            times.len(),
            med(&|t| t.total_s),
            lo,
            hi,
            med(&|t| t.slices_encoded as f64),
            med(&|t| t.load_s),
            loc.join(" + "),
            med(&|t| t.encode_s),
            med(&|t| t.decode_s),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_modes_pick_a_subset_in_order_and_keep_reg_before_its_reuses() {
        let sel = |c, only: &[&str]| {
            select_modes(c, &only.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(sel(LocalizerChoice::Register, &[]).unwrap(), REGISTER_MODES);
        assert_eq!(
            sel(LocalizerChoice::Both, &["oracle", "reg"]).unwrap(),
            ["reg", "oracle"]
        );
        assert!(sel(LocalizerChoice::Medlam, &["reg"]).is_err());
        assert!(sel(LocalizerChoice::Register, &["reg_sam"]).is_err());
        assert!(sel(LocalizerChoice::Register, &["nonsense"]).is_err());
    }

    #[test]
    fn merged_reports_compare_modes_on_the_queries_all_folders_finished() {
        let row = |mode: &str, case: &str, dsc: f64| {
            EvalRow::parse(&format!("{mode},{case},1,Brainstem,100,90,{dsc},1,,1,1")).unwrap()
        };
        let times = |case: &str, n: usize| QueryTimes {
            case: case.into(),
            boxes: vec![0; n],
            localize_s: vec![1.0],
            backend: "cpu".into(),
            ..Default::default()
        };
        let a = EvalResults {
            modes: vec!["spl".into(), "oracle".into()],
            rows: vec![
                row("spl", "q1", 40.0),
                row("oracle", "q1", 60.0),
                row("spl", "q2", 10.0),
                row("oracle", "q2", 20.0),
            ],
            times: vec![times("q1", 2), times("q2", 2)],
        };
        let b = EvalResults {
            modes: vec!["reg".into()],
            rows: vec![row("reg", "q1", 70.0)],
            times: vec![times("q1", 1)],
        };
        let t = merged_summary(&[a, b]);
        assert!(t.starts_with("1 queries in all 2 evaluations"), "{t}");
        // Only q1: oracle 60, SPL 40, REG 70.
        let all = t
            .lines()
            .find(|l| l.trim_start().starts_with("all"))
            .unwrap();
        let cells: Vec<&str> = all.split_whitespace().collect();
        assert_eq!(
            &cells[..8],
            ["all", "1", "60.0", "±", "0.0", "40.0", "±", "0.0"]
        );
        assert!(all.contains("70.0"), "{all}");
    }

    #[test]
    fn rows_survive_the_csv_and_a_stopped_query_is_dropped_on_reading() {
        let dir = std::env::temp_dir().join(format!("medlsam_eval_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |mode: &str, case: &str, dsc: Option<f64>| EvalRow {
            mode: mode.into(),
            case: case.into(),
            label: 3,
            name: "Right, Parotid".into(),
            truth_voxels: 10,
            pred_voxels: 12,
            dsc,
            hd95_mm: Some(4.5),
            box_iou: None,
            wd_mm: Some(1.25),
            ale_mm: Some(2.0),
        };
        let rows = [
            row("spl", "a", Some(50.0)),
            row("oracle", "a", Some(70.0)),
            row("spl", "b", None),
        ];
        rewrite(
            &dir.join("eval.csv"),
            EVAL_CSV_HEADER,
            rows.iter().map(EvalRow::to_csv),
        )
        .unwrap();
        let t = |case: &str, slices: usize, total_s: f64, backend: &str| QueryTimes {
            case: case.into(),
            slices_encoded: slices,
            boxes: vec![9, 8, 7],
            localize_s: vec![1.0, 2.0],
            total_s,
            backend: backend.into(),
            ..Default::default()
        };
        // "z" has no rows (no organ present): it counts for the times only. "g" ran on
        // another backend: its time is summarised apart.
        let times = [
            t("a", 7, 12.5, "cpu"),
            t("y", 9, 20.0, "cpu"),
            t("z", 30, 900.0, "cpu"),
            t("g", 40, 3.0, "wgpu"),
        ];
        rewrite(
            &dir.join("times.csv"),
            TIMES_CSV_HEADER,
            times.iter().map(QueryTimes::to_csv),
        )
        .unwrap();
        // A query cut short while its rows were written: a partial eval.csv line.
        append(&dir.join("eval.csv"), &["spl,c,3,Right Pa".into()]).unwrap();
        let back = read_results(&dir).unwrap();
        // "b" never reached times.csv: its row is dropped; a comma in a name is replaced.
        assert_eq!(back.rows.len(), 2);
        assert_eq!(back.rows[0].name, "Right  Parotid");
        assert_eq!(back.rows[0].dsc, Some(50.0));
        assert_eq!(back.rows[0].box_iou, None);
        assert_eq!(back.times[0].boxes, [9, 8, 7]);
        assert_eq!(back.modes, MODES);
        // A times.csv line cut short: that query is not counted.
        append(&dir.join("times.csv"), &["b,7,9".into()]).unwrap();
        assert_eq!(read_results(&dir).unwrap().times.len(), 4);
        let table = summary_table(&back);
        assert!(table.contains("70.0 ± 0.0"), "{table}");
        // Medians, so the 900 s query does not move the figures; the range shows it.
        assert!(
            table.contains("3 queries on cpu; per query, medians: 20 s (range 12-900 s; 9 slices;"),
            "{table}"
        );
        assert!(
            table.contains("1 queries on wgpu; per query, medians: 3 s (range 3-3 s; 40 slices;"),
            "{table}"
        );
        assert_eq!(back.times[3].backend, "wgpu");
        std::fs::write(dir.join("times.csv"), "case,other\n").unwrap();
        let e = read_results(&dir).unwrap_err().to_string();
        assert!(e.contains("another header"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
