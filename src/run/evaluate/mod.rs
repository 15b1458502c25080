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

mod report;
mod results;

pub use report::{merged_summary, summary_table};
pub use results::{
    EVAL_CSV_HEADER, EvalResults, EvalRow, QueryTimes, TIMES_CSV_HEADER, read_results, times_header,
};
use results::{append, rewrite};

use super::config::CasePaths;
use super::inputs::load_query;
use super::segment::SupportRun;
use super::session::{RunLocalizer, Session};
use crate::metrics::evaluate_labels;
use crate::oracle::{Found, OracleLocalizer};
use crate::pipeline::{CanonicalResult, SegmentOptions, segment_canonical};
use crate::sam::cache::EmbeddingCache;
use crate::types::{
    BoxMode, Localizer, LocalizerChoice, OrganLocalization, Progress, SliceSegmenter,
};
use crate::volume::label_table::LabelTable;
use crate::volume::{CtVolume, case_name};
use crate::{Error, Result};
use std::path::Path;

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
        let mut localizers = build_localizers(&session, choice, modes, slab_mm)?;
        log(format!(
            "{} supports, localizers ({}; SPL {slab_mm} mm) of {} organs in {:.1} s",
            cfg.supports.len(),
            modes.join(", "),
            session.organs.len(),
            t.elapsed().as_secs_f64()
        ));
        let mut segmenter = run.segmenter()?;
        // Only reg_sam uses the run's per-organ weights: the self-check encodes support
        // slices, so it runs only when that mode is evaluated.
        let reg = localizers.iter().zip(modes).find(|(_, m)| **m == "reg");
        let opt = match reg {
            Some((Some(reg), _)) if modes.contains(&"reg_sam") => {
                run.segment_options_for(&session, reg, &mut segmenter, log)?
            }
            _ => run.segment_options(),
        };
        session.release_supports();
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
                Ok((rows, times)) => record_query(&out, &case, &rows, &times, log)?,
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

/// The localizer of each mode (`None` where the mode reuses another's localization or
/// uses the true boxes).
fn build_localizers(
    session: &Session,
    choice: LocalizerChoice,
    modes: &[&str],
    slab_mm: f64,
) -> Result<Vec<Option<RunLocalizer>>> {
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
    Ok(localizers)
}

/// Append a finished query's rows and times to `OUT` and log its times.
fn record_query(
    out: &Path,
    case: &str,
    rows: &[EvalRow],
    times: &QueryTimes,
    log: &mut dyn FnMut(String),
) -> Result<()> {
    let rows: Vec<String> = rows.iter().map(EvalRow::to_csv).collect();
    append(&out.join("eval.csv"), &rows)?;
    append(&out.join("times.csv"), &[times.to_csv()])?;
    let loc: Vec<String> = times.localize_s.iter().map(|s| format!("{s:.1}")).collect();
    log(format!(
        "{case}: {} slices, {:.1} s (localize {} s, encode {:.1} s, decode {:.1} s)",
        times.slices_encoded,
        times.total_s,
        loc.join(" + "),
        times.encode_s,
        times.decode_s
    ));
    Ok(())
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
        // reg and reg_box: one weight for every organ; reg_sam: the run's (as `segment`).
        let o = match *mode {
            "reg" | "reg_box" => SegmentOptions {
                prior_weight: if *mode == "reg" { 1.0 } else { 0.0 },
                organ_prior_weights: Vec::new(),
                ..opt.clone()
            },
            _ => opt.clone(),
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
}
