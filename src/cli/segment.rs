//! `segment`, `eval-segment` and `eval-report`: the few-shot pipeline over files,
//! its evaluation, and the true-box ceiling (`segment --boxes-from-label`).

use std::path::{Path, PathBuf};

use medlsam::device::BackendChoice;
use medlsam::medlam::LocalizeOptions;
use medlsam::run::config::{Organs, RunConfig, parse_organs, read_list};
use medlsam::run::evaluate::{evaluate_pipeline, merged_summary, read_results, summary_table};
use medlsam::run::outputs::DicomOutputs;
use medlsam::run::segment::{
    QueryReport, SupportRun, TrueBoxRun, segment_true_boxes, segment_with_supports,
};
use medlsam::run::{default_out, peak_memory_mib};
use medlsam::types::{BoxMode, Progress};
use medlsam::volume::label_table::LabelTable;
use medlsam::{Error, Result};

use super::args::{LocalizerArg, ModeArg, QueryArgs, SearchArgs, SupportArgs, check_weight};
use super::progress::{SliceBar, print_slice_progress};

#[derive(clap::Args)]
pub struct SegmentArgs {
    /// Run configuration: the reference MedLSAM INI, or TOML/JSON (see README);
    /// options given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    supports: SupportArgs,
    #[command(flatten)]
    queries: QueryArgs,
    /// Text file listing query CTs, one path per line.
    #[arg(long)]
    query_list: Option<PathBuf>,
    /// Prompt with the true 2-D boxes of this label map (one query) instead of MedLAM.
    #[arg(long)]
    boxes_from_label: Option<PathBuf>,
    /// Organs: 1,3,4 or all (default: every label of the supports).
    #[arg(long)]
    organs: Option<String>,
    /// spl (a box per slab of --slab-mm) or wpl (one box per organ) [default: spl].
    #[arg(long, value_enum, ignore_case = true)]
    mode: Option<ModeArg>,
    #[arg(long)]
    slab_mm: Option<f64>,
    #[arg(long, default_value = "cpu")]
    backend: BackendChoice,
    /// MedLAM weights (default weights/medlam.bpk).
    #[arg(long)]
    medlam_weights: Option<PathBuf>,
    /// Segmenter weights: LiteMedSAM .bpk (default weights/lite_medsam.bpk), or a
    /// LiteMedSAM / SAM ViT-B .pth.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Box enlargement in pixels at SAM's 1024² scale (scaled to the slice size).
    #[arg(long, default_value_t = 10.0)]
    margin_px: f64,
    /// CT window low,high in HU mapped to the model's 0-255 input.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [-160.0, 240.0])]
    window: Vec<f32>,
    #[command(flatten)]
    search: SearchArgs,
    /// What places the organs: medlam, register (the supports registered to each query,
    /// their labels fused into priors that give the boxes and join LiteMedSAM's masks) or
    /// both (registration, MedLAM where it fails) [default: the config's, else both].
    /// eval-segment: medlam evaluates SPL, WPL and true boxes; register the
    /// registration modes and true boxes; both all of them.
    #[arg(long, value_enum, ignore_case = true)]
    localizer: Option<LocalizerArg>,
    /// Weight of the registration prior against LiteMedSAM's probability per pixel
    /// (0: LiteMedSAM alone in the prior's boxes, 1: the prior alone) for every organ.
    /// Default: 1, except with one registered support, where the organs LiteMedSAM
    /// segments with ≥ 90 % DSC inside their true boxes on a few of the support's slices
    /// get 0.
    #[arg(long)]
    prior_weight: Option<f32>,
    /// Also write <case>.rtstruct.dcm, an RT Structure Set of the result (contours per
    /// organ and slice); needs DICOM queries.
    #[arg(long)]
    rtstruct: bool,
    /// Also write <case>.seg.dcm, a DICOM Segmentation of the result (binary frames);
    /// needs DICOM queries.
    #[arg(long)]
    dicom_seg: bool,
    /// eval-segment only: evaluate just these of the --localizer's modes (e.g. reg or
    /// reg,oracle; default all of them).
    #[arg(long, value_delimiter = ',')]
    eval_modes: Vec<String>,
    /// Output folder (default: the config's seg_save_path, else medlsam_out).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl SegmentArgs {
    /// The run configuration: `--config` if given, with the command line's supports,
    /// queries, organs, mode, weights and search widths over it.
    fn run_config(&self) -> Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(p) => RunConfig::load(p)?,
            None => RunConfig::default(),
        };
        let supports = self.supports.cases()?;
        if !supports.is_empty() {
            cfg.supports = supports;
        }
        let mut queries = self.queries.query.clone();
        if let Some(list) = &self.query_list {
            queries.extend(read_list(list)?.into_iter().map(PathBuf::from));
        }
        let labels = &self.queries.query_label;
        if !queries.is_empty() {
            if !labels.is_empty() && labels.len() != queries.len() {
                return Err(Error::InvalidArgument(format!(
                    "{} --query-label for {} queries: give one label map per query, in order",
                    labels.len(),
                    queries.len()
                )));
            }
            cfg.queries = queries
                .into_iter()
                .enumerate()
                .map(|(n, image)| medlsam::run::config::CasePaths {
                    image,
                    label: labels.get(n).cloned(),
                })
                .collect();
        }
        if cfg.supports.is_empty() || cfg.queries.is_empty() {
            return Err(Error::InvalidArgument(
                "give supports (--support-image/--support-label) and queries (--query), or --config"
                    .into(),
            ));
        }
        if let Some(o) = &self.organs {
            cfg.organs = parse_organs(o)?;
        }
        let slab = self.slab_mm.or(match cfg.mode {
            BoxMode::Spl { slab_mm } => Some(slab_mm),
            BoxMode::Wpl => None,
        });
        if let Some(m) = self.mode {
            cfg.mode = m.box_mode(slab)?;
        } else if self.slab_mm.is_some() {
            cfg.mode = ModeArg::Spl.box_mode(slab)?;
        }
        cfg.out = self.out.clone().or(cfg.out);
        cfg.medlam_weights = self.medlam_weights.clone().or(cfg.medlam_weights);
        cfg.sam_weights = self.weights.clone().or(cfg.sam_weights);
        cfg.search_radius = self.search.search_radius.or(cfg.search_radius);
        cfg.template_radius = self.search.template_radius.or(cfg.template_radius);
        cfg.localizer = self.localizer.map(LocalizerArg::choice).or(cfg.localizer);
        Ok(cfg)
    }

    /// The DICOM objects asked for beside the NIfTI.
    fn dicom_outputs(&self) -> DicomOutputs {
        DicomOutputs {
            rtstruct: self.rtstruct,
            seg: self.dicom_seg,
        }
    }

    /// A few-shot run: the configuration and the options only the command line sets.
    fn support_run(&self) -> Result<SupportRun> {
        let config = self.run_config()?;
        let defaults = LocalizeOptions::default();
        if let Some(w) = self.prior_weight {
            check_weight("--prior-weight", w as f64)?;
        }
        Ok(SupportRun {
            prior_weight: self.prior_weight,
            dicom_outputs: self.dicom_outputs(),
            backend: self.backend,
            margin_px_1024: self.margin_px,
            window_hu: [self.window[0], self.window[1]],
            query_label_map: self.queries.label_map()?,
            localize: LocalizeOptions {
                search_radius_vox: config.search_radius.unwrap_or(defaults.search_radius_vox),
                template_radius_vox: config
                    .template_radius
                    .unwrap_or(defaults.template_radius_vox),
                ..defaults
            },
            config,
        })
    }
}

/// Peak memory for a summary line.
fn peak_memory() -> String {
    peak_memory_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
}

/// `medlsam segment`.
pub fn segment(a: SegmentArgs) -> Result<()> {
    if !a.eval_modes.is_empty() {
        return Err(Error::InvalidArgument(
            "--eval-modes belongs to eval-segment".into(),
        ));
    }
    if let Some(label) = &a.boxes_from_label {
        return segment_true_boxes_command(&a, label);
    }
    let run = a.support_run()?;
    let t = std::time::Instant::now();
    let mut bar = SliceBar::new(run.config.queries.len());
    let reports = segment_with_supports(&run, &mut |case, p| bar.show(case, p), &mut |l| {
        eprintln!("{l}")
    })?;
    let names = medlsam::run::inputs::support_label_table(&run.config.supports);
    let failed = print_reports(&reports, &names);
    if reports
        .iter()
        .any(|r| r.result.as_ref().is_ok_and(|o| !o.metrics.is_empty()))
    {
        print!("{}", medlsam::run::segment::summary_table(&reports, &names));
    }
    let (mut load, mut loc, mut enc, mut dec, mut write) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for ok in reports.iter().filter_map(|r| r.result.as_ref().ok()) {
        load += ok.load_s;
        loc += ok.times.localize.as_secs_f64();
        enc += ok.times.encode.as_secs_f64();
        dec += ok.times.decode.as_secs_f64();
        write += ok.write_s;
    }
    println!(
        "time: load {load:.1} s, localize {loc:.1} s, encode {enc:.1} s, decode {dec:.1} s, write {write:.1} s; total {:.1} s; peak memory {}",
        t.elapsed().as_secs_f64(),
        peak_memory()
    );
    let out = run.config.out.clone().unwrap_or_else(default_out);
    println!("wrote {}", out.display());
    if failed.is_empty() {
        Ok(())
    } else {
        for f in &failed {
            eprintln!("failed: {f}");
        }
        Err(Error::Failed(format!(
            "{} of {} queries failed (listed above)",
            failed.len(),
            reports.len()
        )))
    }
}

/// A line per query (slices, boxes, time, low-confidence organs and those outside the
/// field of view); returns the failures, `case: error`.
fn print_reports(reports: &[QueryReport], names: &LabelTable) -> Vec<String> {
    let mut failed = Vec::new();
    for r in reports {
        let ok = match &r.result {
            Ok(ok) => ok,
            Err(e) => {
                failed.push(format!("{}: {e}", r.case));
                continue;
            }
        };
        let low: Vec<String> = ok
            .found
            .iter()
            .filter(|(l, c)| *c < 0.5 && !ok.outside_view.contains(l))
            .map(|(l, c)| format!("{} ({c:.2})", names.name(*l)))
            .collect();
        let outside: Vec<String> = ok.outside_view.iter().map(|&l| names.name(l)).collect();
        let mut notes = String::new();
        if !low.is_empty() {
            notes += &format!("; low confidence: {}", low.join(", "));
        }
        if !outside.is_empty() {
            notes += &format!(
                "; outside the field of view (not segmented): {}",
                outside.join(", ")
            );
        }
        println!(
            "{}: {} slices, {} boxes in {:.1} s{notes}",
            r.case, ok.slices, ok.boxes, ok.seconds
        );
        for (l, w) in &ok.warnings {
            println!("{}: warning: {}: {w}", r.case, names.name(*l));
        }
    }
    failed
}

/// `segment --query Q --boxes-from-label L`: the true boxes as prompts, progress on
/// stderr and a per-organ summary on stdout.
fn segment_true_boxes_command(a: &SegmentArgs, label: &Path) -> Result<()> {
    let (Some(query), 1) = (a.queries.query.first(), a.queries.query.len()) else {
        return Err(Error::InvalidArgument(
            "--boxes-from-label needs exactly one --query".into(),
        ));
    };
    let out = a.out.clone().unwrap_or_else(default_out);
    let mut run = TrueBoxRun::new(query.clone(), label.to_path_buf(), out);
    run.organs = match a.organs.as_deref().map(parse_organs).transpose()? {
        Some(Organs::List(l)) => Some(l),
        _ => None,
    };
    run.margin_px_1024 = a.margin_px;
    run.backend = a.backend;
    run.weights = a.weights.clone();
    run.window_hu = [a.window[0], a.window[1]];
    run.dicom_outputs = a.dicom_outputs();
    let t = web_time::Instant::now();
    let reports = segment_true_boxes(&run, &mut print_slice_progress)?;
    let names = LabelTable::find_beside(&run.label).unwrap_or_default();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    for r in &reports {
        let ok = r.ok()?;
        println!(
            "{}: {} slices encoded, {} boxes decoded in {:.1} s (encoder {:.1} s, decoder {:.1} s)",
            r.case,
            ok.slices,
            ok.boxes,
            ok.seconds,
            ok.times.encode.as_secs_f64(),
            ok.times.decode.as_secs_f64()
        );
        println!(
            "{:>5}  {:<20} {:>8} {:>9}",
            "label", "name", "DSC%", "HD95mm"
        );
        for m in &ok.metrics {
            println!(
                "{:>5}  {:<20} {:>8} {:>9}",
                m.label,
                names.name(m.label),
                fmt(m.dsc),
                fmt(m.hd95_mm)
            );
        }
    }
    println!(
        "wrote {} in {:.1} s",
        run.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `medlsam eval-segment`.
pub fn eval_segment(a: SegmentArgs) -> Result<()> {
    if a.boxes_from_label.is_some() {
        return Err(Error::InvalidArgument(
            "eval-segment runs the true boxes itself (from --query-label): leave out --boxes-from-label"
                .into(),
        ));
    }
    if a.dicom_outputs().any() {
        return Err(Error::InvalidArgument(
            "eval-segment writes no RTSTRUCT/DICOM SEG: use segment --rtstruct/--dicom-seg".into(),
        ));
    }
    let run = a.support_run()?;
    if run.config.out.is_none() {
        return Err(Error::InvalidArgument(
            "give an output folder (--out): results are appended there and a stopped run resumes from them".into(),
        ));
    }
    let t = std::time::Instant::now();
    let n = run.config.queries.len();
    let mut current = String::new();
    let mut qi = 0;
    let (results, failures) = evaluate_pipeline(
        &run,
        &a.eval_modes,
        &mut |case, mode, p: Progress| {
            if case != current {
                current = case.to_string();
                qi += 1;
            }
            if p.stage == "segment" && (p.done.is_multiple_of(10) || p.done == p.total) {
                eprint!(
                    "\r[{qi}/{n}] {case} {mode:<6} slice {}/{}   ",
                    p.done, p.total
                );
            }
        },
        &mut |l| eprintln!("\r{l}"),
    )?;
    print!("{}", summary_table(&results));
    println!(
        "this run: {:.1} s, peak memory {}; results in {}",
        t.elapsed().as_secs_f64(),
        peak_memory(),
        run.config
            .out
            .as_ref()
            .map_or(String::new(), |o| o.display().to_string())
    );
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            eprintln!("failed: {}: {}", f.case, f.error);
        }
        Err(Error::Failed(format!(
            "{} queries failed (listed above; run again to retry them)",
            failures.len()
        )))
    }
}

/// `medlsam eval-report DIR [DIR ...]`.
pub fn eval_report(dirs: &[PathBuf]) -> Result<()> {
    let mut all = Vec::new();
    for dir in dirs {
        if !dir.join("times.csv").is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} holds no eval-segment results (times.csv)",
                dir.display()
            )));
        }
        all.push(read_results(dir)?);
    }
    match all.as_slice() {
        [one] => print!("{}", summary_table(one)),
        _ => print!("{}", merged_summary(&all)),
    }
    Ok(())
}
