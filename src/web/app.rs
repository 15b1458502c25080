//! The browser app's DOM shell (wasm32 only): file inputs, the viewer panes,
//! status and downloads. All processing is the library's; this file only
//! moves bytes and pixels between the page and it. Files never leave the page.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    CanvasRenderingContext2d, Document, Event, HtmlAnchorElement, HtmlButtonElement,
    HtmlCanvasElement, HtmlElement, HtmlInputElement, HtmlSelectElement, ImageData, WheelEvent,
};

use super::BackendChoice;
use super::run::{self, Models, QueryOutcome, RunProgress, RunSettings, SliceEdit, SupportInput};
use super::viewer::{
    EXTREME_POINT_PROMPTS, PRESETS, Pane, ViewStyle, draw_marker, draw_rect, pane_size, pane_voxel,
    render_pane, result_view, voxel_on_pane,
};
use crate::metrics::LabelMetrics;
use crate::output::{METRICS_CSV_HEADER, boxes_json, metrics_csv_row};
use crate::sam::predictor::{PromptPoint, SlicePrompt};
use crate::types::{BoxMode, OrganLocalization};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
use crate::volume::{
    CtVolume, LabelVolume, Reorientation, Volume, read_nifti_bytes, write_labels_nifti_bytes,
};
use crate::{Error, Result};

/// A loaded CT with optional labels, kept on the canonical grid for viewing.
struct Case {
    name: String,
    canon: CtVolume,
    reorientation: Reorientation,
    file_affine_codes: String,
    /// Supports: their label map. Queries: the segmentation (after a run or an edit).
    labels: Option<LabelVolume>,
    /// Queries: the user's label map, used only for metrics.
    truth: Option<LabelVolume>,
    /// Organs marked by clicking their 6 extreme points (canonical voxels, extreme-point order).
    points: Vec<(u16, [[usize; 3]; 6])>,
    /// Queries: localizations and metrics of the last run.
    result: Option<ResultView>,
}

/// What a run gave for one query.
struct ResultView {
    organs: Vec<OrganLocalization>,
    metrics: Option<Vec<LabelMetrics>>,
}

/// A correction being drawn on the axial pane of the shown query.
#[derive(Default)]
struct EditState {
    /// The organ being corrected (`None`: clicks only move the cursor).
    organ: Option<u16>,
    /// Point tool (else box tool).
    point_tool: bool,
    drag_from: Option<[usize; 2]>,
    bbox: Option<[usize; 4]>,
    points: Vec<([usize; 2], bool)>,
}

#[derive(Default)]
struct App {
    supports: Vec<Case>,
    support_labels: Vec<(String, LabelVolume)>,
    queries: Vec<Case>,
    table: LabelTable,
    /// Index into `supports` then `queries` of the case shown.
    shown: Option<(bool, usize)>,
    cursor: [usize; 3],
    preset: usize,
    opacity: f32,
    hidden: Vec<u16>,
    /// Put the cursor in the middle of the volume at the next redraw.
    recentre: bool,
    /// Extreme points being clicked: the organ's label and the points so far.
    marking: Option<(u16, Vec<[usize; 3]>)>,
    query_labels: Vec<(String, LabelVolume)>,
    /// Organs the user unticked in the organ choice.
    unselected: Vec<u16>,
    hide_boxes: bool,
    edit: EditState,
    running: bool,
    /// The options last put in the viewer's case choice (rebuilt only when they change).
    case_options: String,
}

thread_local! {
    static APP: RefCell<App> = RefCell::new(App { opacity: 0.45, ..Default::default() });
    /// Built on the first Run, then kept for the page's life.
    static MODELS: RefCell<Option<Models>> = const { RefCell::new(None) };
}

/// Set by the Cancel button, read between slices.
static CANCEL: AtomicBool = AtomicBool::new(false);

fn doc() -> Document {
    web_sys::window()
        .expect("window")
        .document()
        .expect("document")
}

fn by_testid<T: JsCast>(id: &str) -> T {
    doc()
        .query_selector(&format!("[data-testid='{id}']"))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("page lacks data-testid={id}"))
        .dyn_into::<T>()
        .unwrap_or_else(|_| panic!("data-testid={id} has the wrong element type"))
}

/// Show a status line; errors are marked so the user (and tests) can tell.
pub fn set_status(msg: &str, is_error: bool) {
    let el: HtmlElement = by_testid("status");
    el.set_text_content(Some(msg));
    let _ = el.set_attribute("data-state", if is_error { "error" } else { "ok" });
}

fn case_name(file_name: &str) -> String {
    file_name.split('.').next().unwrap_or(file_name).to_string()
}

async fn read_file(file: web_sys::File) -> Result<Vec<u8>> {
    let buf = wasm_bindgen_futures::JsFuture::from(file.array_buffer())
        .await
        .map_err(|_| Error::InvalidArgument(format!("cannot read {}", file.name())))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

async fn files_of(input: &HtmlInputElement) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(list) = input.files() {
        for n in 0..list.length() {
            if let Some(f) = list.get(n) {
                let name = f.name();
                out.push((name, read_file(f).await?));
            }
        }
    }
    Ok(out)
}

fn to_case(name: &str, bytes: &[u8]) -> Result<Case> {
    let ct = read_nifti_bytes(bytes)
        .map_err(|e| prefix(name, e))?
        .into_ct()
        .map_err(|e| prefix(name, e))?;
    let codes = ct.affine.axis_codes();
    let (canon, reorientation) = ct.to_canonical();
    Ok(Case {
        name: case_name(name),
        canon,
        reorientation,
        file_affine_codes: codes,
        labels: None,
        truth: None,
        points: Vec::new(),
        result: None,
    })
}

fn prefix(name: &str, e: Error) -> Error {
    Error::InvalidArgument(format!("{name}: {e}"))
}

/// A label map (file grid) on a case's canonical grid, after checking they match.
fn labels_for(case: &Case, name: &str, labels: LabelVolume) -> Result<LabelVolume> {
    let (canon, r) = labels.to_canonical();
    if r != case.reorientation || !case.canon.same_grid(&canon) {
        return Err(Error::Mismatch(format!(
            "{name} does not match {} (different shape or geometry): is it the label map of another scan?",
            case.name
        )));
    }
    Ok(canon)
}

/// Pair label maps (file order) with cases one to one.
fn check_pairs(cases: usize, labels: usize, what: &str) -> Result<()> {
    if labels != cases {
        return Err(Error::Mismatch(format!(
            "{cases} {what} CTs but {labels} {what} label maps: give one label map per {what} CT"
        )));
    }
    Ok(())
}

/// Read every CT chosen in a file input.
async fn read_cases(input: &HtmlInputElement) -> Result<Vec<Case>> {
    files_of(input)
        .await?
        .iter()
        .map(|(n, b)| to_case(n, b))
        .collect()
}

async fn on_support_images(input: HtmlInputElement) -> Result<String> {
    let cases = read_cases(&input).await?;
    let n = cases.len();
    APP.with_borrow_mut(|a| {
        a.supports = cases;
        pair_support_labels(a)?;
        a.shown = (!a.supports.is_empty()).then_some((true, 0));
        a.recentre = true;
        Ok::<_, Error>(())
    })?;
    Ok(format!("{n} support CT(s) loaded"))
}

fn pair_support_labels(a: &mut App) -> Result<()> {
    if a.support_labels.is_empty() || a.supports.is_empty() {
        return Ok(());
    }
    check_pairs(a.supports.len(), a.support_labels.len(), "support")?;
    for (case, (name, lab)) in a.supports.iter_mut().zip(&a.support_labels) {
        case.labels = Some(labels_for(case, name, lab.clone())?);
    }
    Ok(())
}

fn pair_query_labels(a: &mut App) -> Result<()> {
    if a.query_labels.is_empty() || a.queries.is_empty() {
        return Ok(());
    }
    check_pairs(a.queries.len(), a.query_labels.len(), "query")?;
    for (case, (name, lab)) in a.queries.iter_mut().zip(&a.query_labels) {
        case.truth = Some(labels_for(case, name, lab.clone())?);
    }
    Ok(())
}

async fn read_label_maps(input: &HtmlInputElement) -> Result<Vec<(String, LabelVolume)>> {
    files_of(input)
        .await?
        .iter()
        .map(|(n, b)| {
            Ok((
                n.clone(),
                read_nifti_bytes(b)
                    .and_then(|f| f.into_labels())
                    .map_err(|e| prefix(n, e))?,
            ))
        })
        .collect()
}

async fn on_query_labels(input: HtmlInputElement) -> Result<String> {
    let labels = read_label_maps(&input).await?;
    let n = labels.len();
    APP.with_borrow_mut(|a| {
        a.query_labels = labels;
        pair_query_labels(a)
    })?;
    Ok(format!(
        "{n} query label map(s) loaded (used only for metrics)"
    ))
}

async fn on_support_labels(input: HtmlInputElement) -> Result<String> {
    let labels = read_label_maps(&input).await?;
    let n = labels.len();
    APP.with_borrow_mut(|a| {
        a.support_labels = labels;
        pair_support_labels(a)
    })?;
    Ok(format!("{n} support label map(s) loaded"))
}

async fn on_queries(input: HtmlInputElement) -> Result<String> {
    let cases = read_cases(&input).await?;
    let n = cases.len();
    APP.with_borrow_mut(|a| {
        a.queries = cases;
        a.shown = (!a.queries.is_empty()).then_some((false, 0));
        a.recentre = true;
        pair_query_labels(a)
    })?;
    Ok(format!(
        "{n} query CT(s) loaded; memory {:.0} MiB",
        super::wasm_memory_mib()
    ))
}

async fn on_label_table(input: HtmlInputElement) -> Result<String> {
    let files = files_of(&input).await?;
    let Some((name, bytes)) = files.into_iter().next() else {
        return Ok(String::new());
    };
    let table =
        LabelTable::from_json(&String::from_utf8_lossy(&bytes)).map_err(|e| prefix(&name, e))?;
    let n = table.0.len();
    APP.with_borrow_mut(|a| a.table = table);
    Ok(format!("{n} label names loaded"))
}

fn run_demo() -> Result<String> {
    let mut supports = Vec::new();
    for seed in 1..=3 {
        let (ct, lab) = phantom(&PhantomOptions {
            seed,
            ..Default::default()
        })?;
        let (canon, r) = ct.to_canonical();
        supports.push(Case {
            name: format!("phantom_support_{seed}"),
            canon,
            reorientation: r,
            file_affine_codes: ct.affine.axis_codes(),
            labels: Some(lab.to_canonical().0),
            truth: None,
            points: Vec::new(),
            result: None,
        });
    }
    let (q, q_labels) = phantom(&PhantomOptions {
        seed: 11,
        ras: true,
        ..Default::default()
    })?;
    let mut query = to_case(
        "phantom_query.nii.gz",
        &crate::volume::nifti_io::write_nifti_bytes(&q, false)?,
    )?;
    // The phantom's own organs: after a Run the page shows how well they were found.
    query.truth = Some(labels_for(&query, "phantom_query labels", q_labels)?);
    APP.with_borrow_mut(|a| {
        a.supports = supports;
        a.support_labels.clear();
        a.queries = vec![query];
        a.query_labels.clear();
        a.table = LabelTable(
            PHANTOM_LABELS
                .iter()
                .map(|&(v, n)| (v, n.to_string()))
                .collect(),
        );
        a.shown = Some((true, 0));
        a.recentre = true;
    });
    Ok("demo: 3 synthetic support phantoms with organ labels and 1 query phantom (RAS file) loaded: press Run to localize and segment the query's organs".into())
}

/// Organs the supports offer (label maps and clicked points), in label order.
fn offered_organs(a: &App) -> Vec<u16> {
    let mut v: Vec<u16> = a
        .supports
        .iter()
        .flat_map(|c| {
            let from_labels = c.labels.as_ref().map(classes).unwrap_or_default();
            from_labels
                .into_iter()
                .map(|(l, _)| l)
                .chain(c.points.iter().map(|(l, _)| *l))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Refresh the organ choice (a checkbox per organ the supports offer).
fn render_organ_choice() {
    APP.with_borrow(|a| {
        let el: HtmlElement = by_testid("organ-select");
        let organs = offered_organs(a);
        if organs.is_empty() {
            el.set_inner_html(
                "Organs: load supports with label maps, or mark an organ by 6 points",
            );
            return;
        }
        let boxes: String = organs
            .iter()
            .map(|&l| {
                format!(
                    "<label><input type=checkbox data-organ='{l}' {}> {l} {}</label>",
                    if a.unselected.contains(&l) {
                        ""
                    } else {
                        "checked"
                    },
                    html_escape(&a.table.name(l))
                )
            })
            .collect();
        el.set_inner_html(&format!("Organs: {boxes}"));
    });
}

fn set_progress(fraction: f64, text: &str) {
    let p: HtmlElement = by_testid("progress");
    let _ = p.set_attribute("value", &format!("{:.4}", fraction.clamp(0.0, 1.0)));
    let t: HtmlElement = by_testid("progress-text");
    t.set_text_content(Some(text));
}

fn fmt_eta(s: f64) -> String {
    if s < 60.0 {
        format!("about {:.0} s left", s.max(1.0))
    } else {
        format!("about {} min {:02.0} s left", (s / 60.0) as u64, s % 60.0)
    }
}

fn set_running(running: bool) {
    APP.with_borrow_mut(|a| a.running = running);
    let run: HtmlButtonElement = by_testid("run-button");
    run.set_disabled(running);
    let cancel: HtmlButtonElement = by_testid("cancel-button");
    cancel.set_disabled(!running);
}

/// The run's inputs, copied out of the app state (the state stays usable meanwhile).
type RunInputs = (
    Vec<SupportInput>,
    Vec<(CtVolume, Option<LabelVolume>)>,
    RunSettings,
);

fn run_inputs() -> Result<RunInputs> {
    let mode: HtmlSelectElement = by_testid("mode-select");
    let slab: HtmlInputElement = by_testid("slab-mm");
    let mode = match mode.value().as_str() {
        "wpl" => BoxMode::Wpl,
        _ => {
            let mm: f64 = slab.value().trim().parse().unwrap_or(f64::NAN);
            if !(mm.is_finite() && mm > 0.0) {
                return Err(Error::InvalidArgument(
                    "the slab thickness must be a positive number of mm".into(),
                ));
            }
            BoxMode::Spl { slab_mm: mm }
        }
    };
    APP.with_borrow(|a| {
        if a.supports.is_empty() {
            return Err(Error::InvalidArgument(
                "load support CTs (with label maps, or mark an organ by 6 points) first".into(),
            ));
        }
        if a.queries.is_empty() {
            return Err(Error::InvalidArgument("load query CTs first".into()));
        }
        let organs: Vec<u16> = offered_organs(a)
            .into_iter()
            .filter(|l| !a.unselected.contains(l))
            .collect();
        let supports = a
            .supports
            .iter()
            .map(|c| SupportInput {
                name: c.name.clone(),
                ct: c.canon.clone(),
                labels: c.labels.clone(),
                points: c.points.clone(),
            })
            .collect();
        let queries = a
            .queries
            .iter()
            .map(|c| (c.canon.clone(), c.truth.clone()))
            .collect();
        Ok((supports, queries, RunSettings { organs, mode }))
    })
}

/// The backend the page's address asks for (`?backend=cpu`).
fn backend_choice() -> BackendChoice {
    BackendChoice::from_url(&doc().url().unwrap_or_default())
}

/// The models, built on first use (weights downloaded with a progress bar).
async fn take_models() -> Result<Models> {
    if let Some(m) = MODELS.with_borrow_mut(|m| m.take()) {
        return Ok(m);
    }
    let m = run::load_models(backend_choice(), &mut |what, f| {
        set_progress(f, &format!("{what}: {:.0} %", 100.0 * f));
    })
    .await?;
    let gpu_el: HtmlElement = by_testid("gpu-status");
    gpu_el.set_text_content(Some(&format!("models run on: {}", m.backend)));
    Ok(m)
}

async fn on_run() -> Result<String> {
    let (supports, queries, settings) = run_inputs()?;
    CANCEL.store(false, Ordering::Relaxed);
    // Return to the browser first: the click ends and "running…" shows before any work.
    super::yield_to_browser().await;
    let mut models = take_models().await?;
    let names = APP.with_borrow(|a| a.table.clone());
    let n = queries.len();
    let start = web_time::Instant::now();
    let result = run::run(
        &mut models,
        supports,
        &queries,
        &settings,
        &CANCEL,
        &mut |p: RunProgress| {
            let eta = p.eta_s.map(fmt_eta).unwrap_or_default();
            set_progress(
                p.fraction,
                &format!("{} — {:.0} % {eta}", p.stage, 100.0 * p.fraction),
            );
        },
        &mut |qi, out: QueryOutcome| {
            APP.with_borrow_mut(|a| {
                if let Some(c) = a.queries.get_mut(qi) {
                    // Show the result where it is (not the middle of the volume).
                    if let Some(v) = result_view(&out.result.labels) {
                        a.cursor = v;
                        a.recentre = false;
                    }
                    c.labels = Some(out.result.labels);
                    c.result = Some(ResultView {
                        organs: out.result.organs,
                        metrics: out.metrics,
                    });
                }
                a.shown = Some((false, qi));
            });
            redraw();
        },
    )
    .await;
    MODELS.with_borrow_mut(|m| *m = Some(models));
    let times = result?;
    set_progress(1.0, "done");
    offer_result_downloads()?;
    render_metrics(&names);
    Ok(format!(
        "done: {n} query CT(s) segmented in {:.0} s ({}); memory {:.0} MiB",
        start.elapsed().as_secs_f64(),
        times.summary(),
        super::wasm_memory_mib()
    ))
}

/// Metrics of the shown query as an HTML table (when its label map was given).
fn render_metrics(names: &LabelTable) {
    let html = APP.with_borrow(|a| {
        let Some(m) = shown_case(a)
            .and_then(|c| c.result.as_ref())
            .and_then(|r| r.metrics.as_ref())
        else {
            return String::new();
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
        let rows: String = m
            .iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    r.label,
                    html_escape(&names.name(r.label)),
                    f(r.dsc),
                    f(r.hd95_mm),
                    f(r.box_iou),
                    f(r.wd_mm)
                )
            })
            .collect();
        format!(
            "<table><tr><th>label</th><th>organ</th><th>DSC %</th><th>HD95 mm</th><th>box IoU %</th><th>WD mm</th></tr>{rows}</table>"
        )
    });
    let el: HtmlElement = by_testid("metrics-table");
    el.set_inner_html(&html);
}

/// Offer the shown query's results: label map (file grid), boxes, label table, metrics.
fn offer_result_downloads() -> Result<()> {
    let files = APP.with_borrow(|a| {
        let case = shown_case(a).ok_or_else(|| Error::InvalidArgument("no case shown".into()))?;
        let labels = case
            .labels
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the shown case has no label map".into()))?;
        let seg = write_labels_nifti_bytes(&labels.from_canonical(&case.reorientation)?)?;
        let boxes = case.result.as_ref().map(|r| {
            let j = boxes_json(&case.name, &r.organs, &case.reorientation, &a.table);
            serde_json::to_string_pretty(&j).expect("serialisable")
        });
        let metrics = case
            .result
            .as_ref()
            .and_then(|r| r.metrics.as_ref())
            .map(|m| {
                let mut rows = vec![METRICS_CSV_HEADER.to_string()];
                rows.extend(
                    m.iter()
                        .map(|r| metrics_csv_row(&case.name, &a.table.name(r.label), r)),
                );
                rows.join("\n") + "\n"
            });
        Ok::<_, Error>((case.name.clone(), seg, boxes, metrics, a.table.to_json()))
    })?;
    let (name, seg, boxes, metrics, table) = files;
    offer_download(
        "download-seg",
        &seg,
        &format!("{name}.seg.nii.gz"),
        "application/gzip",
    )?;
    offer_download(
        "download-labels",
        table.as_bytes(),
        "labels.json",
        "application/json",
    )?;
    if let Some(b) = boxes {
        offer_download(
            "download-boxes",
            b.as_bytes(),
            &format!("{name}.boxes.json"),
            "application/json",
        )?;
    }
    if let Some(m) = metrics {
        offer_download("download-metrics", m.as_bytes(), "metrics.csv", "text/csv")?;
    }
    Ok(())
}

/// Fill the correction panel's organ choice from the shown query's result.
fn render_edit_organs() {
    APP.with_borrow(|a| {
        let sel: HtmlSelectElement = by_testid("edit-organ");
        let organs: Vec<u16> = match shown_case(a).filter(|_| a.shown.is_some_and(|s| !s.0)) {
            Some(c) => {
                let mut v: Vec<u16> = offered_organs(a);
                v.extend(
                    c.result
                        .iter()
                        .flat_map(|r| r.organs.iter().map(|o| o.label)),
                );
                v.sort_unstable();
                v.dedup();
                v
            }
            None => Vec::new(),
        };
        let current = a.edit.organ;
        let opts: String = std::iter::once("<option value=''>— (off)</option>".to_string())
            .chain(organs.iter().map(|&l| {
                format!(
                    "<option value='{l}' {}>{l} {}</option>",
                    if current == Some(l) { "selected" } else { "" },
                    html_escape(&a.table.name(l))
                )
            }))
            .collect();
        sel.set_inner_html(&opts);
    });
}

async fn on_resegment() -> Result<String> {
    let (ct, mut labels, edit, qi) = APP.with_borrow(|a| {
        let (support, qi) = a.shown.filter(|s| !s.0).ok_or_else(|| {
            Error::InvalidArgument("show a query to correct its segmentation".into())
        })?;
        let _ = support;
        let case = &a.queries[qi];
        let organ = a.edit.organ.ok_or_else(|| {
            Error::InvalidArgument("choose the organ to correct in the correction panel".into())
        })?;
        let prompt = SlicePrompt {
            bbox: a.edit.bbox.map(|b| b.map(|v| v as f32)),
            points: a
                .edit
                .points
                .iter()
                .map(|&(p, positive)| PromptPoint {
                    xy: [p[0] as f32, p[1] as f32],
                    positive,
                })
                .collect(),
        };
        let labels = case.labels.clone().map_or_else(
            || Volume::filled(case.canon.dims, 0u16, case.canon.affine),
            Ok,
        )?;
        Ok::<_, Error>((
            case.canon.clone(),
            labels,
            SliceEdit {
                organ,
                k: a.cursor[2],
                prompt,
            },
            qi,
        ))
    })?;
    let mut models = take_models().await?;
    let res = run::resegment_slice(&mut models, &ct, &mut labels, &edit).await;
    MODELS.with_borrow_mut(|m| *m = Some(models));
    let count = res?;
    APP.with_borrow_mut(|a| {
        let c = &mut a.queries[qi];
        c.labels = Some(labels);
        a.edit.bbox = None;
        a.edit.points.clear();
    });
    offer_result_downloads()?;
    Ok(format!(
        "slice {} re-segmented for organ {}: {count} voxels",
        edit.k, edit.organ
    ))
}

fn shown_case(a: &App) -> Option<&Case> {
    let (support, n) = a.shown?;
    if support {
        a.supports.get(n)
    } else {
        a.queries.get(n)
    }
}

/// The value of a case in the viewer's choice: `s0`, `s1`, … for supports, `q0`, … for queries.
fn case_key((support, n): (bool, usize)) -> String {
    format!("{}{n}", if support { 's' } else { 'q' })
}

/// The case a choice value names, if it is loaded.
fn case_of_key(a: &App, key: &str) -> Option<(bool, usize)> {
    let (support, n) = match key.split_at_checked(1)? {
        ("s", n) => (true, n),
        ("q", n) => (false, n),
        _ => return None,
    };
    let n: usize = n.parse().ok()?;
    let len = if support {
        a.supports.len()
    } else {
        a.queries.len()
    };
    (n < len).then_some((support, n))
}

/// The viewer's "Show" choice: one option per loaded case (supports, then queries), with the
/// shown case selected.
fn sync_case_select(a: &mut App) {
    let sel: HtmlSelectElement = by_testid("case-select");
    let mut options = String::new();
    for (support, cases) in [(true, &a.supports), (false, &a.queries)] {
        for (n, c) in cases.iter().enumerate() {
            options += &format!(
                "<option value=\"{}\">{}: {}</option>",
                case_key((support, n)),
                if support { "support" } else { "query" },
                html_escape(&c.name)
            );
        }
    }
    if options != a.case_options {
        sel.set_inner_html(&options);
        a.case_options = options;
    }
    if let Some(shown) = a.shown {
        sel.set_value(&case_key(shown));
    }
}

/// Redraw the three panes and the organ list.
pub fn redraw() {
    APP.with_borrow_mut(|a| {
        sync_case_select(a);
        let Some(case) = shown_case(a) else { return };
        let dims = case.canon.dims;
        let cursor = if a.recentre { dims.map(|d| d / 2) } else { [0, 1, 2].map(|t| a.cursor[t].min(dims[t] - 1)) };
        let (_, window, level) = PRESETS[a.preset];
        let style = ViewStyle { window, level, opacity: a.opacity, hidden: a.hidden.clone() };
        let spacing = case.canon.spacing_mm();
        for (pane, id) in [(Pane::Axial, "viewer-axial"), (Pane::Coronal, "viewer-coronal"), (Pane::Sagittal, "viewer-sagittal")] {
            let canvas: HtmlCanvasElement = by_testid(id);
            let (w, h) = pane_size(dims, pane);
            canvas.set_width(w as u32);
            canvas.set_height(h as u32);
            // Physical aspect ratio on screen.
            let (sx, sy) = match pane {
                Pane::Axial => (spacing[0], spacing[1]),
                Pane::Coronal => (spacing[0], spacing[2]),
                Pane::Sagittal => (spacing[1], spacing[2]),
            };
            let css_w = 300.0;
            let css_h = css_w * (h as f64 * sy) / (w as f64 * sx);
            let _ = canvas.style().set_property("height", &format!("{css_h:.0}px"));
            let mut px = render_pane(&case.canon, case.labels.as_ref(), pane, cursor, &style);
            let in_progress = a.marking.iter().filter(|_| a.shown.is_some_and(|s| s.0)).flat_map(|(_, p)| p.iter().map(|&v| (v, [255, 255, 255])));
            let marked = case.points.iter().flat_map(|(l, pts)| pts.iter().map(move |&v| (v, crate::output::label_colour(*l))));
            for (v, colour) in marked.chain(in_progress) {
                if let Some(xy) = voxel_on_pane(dims, pane, cursor, v) {
                    draw_marker(&mut px, w, h, xy, colour);
                }
            }
            if let Some(r) = case.result.as_ref().filter(|_| !a.hide_boxes) {
                for o in r.organs.iter().filter(|o| !a.hidden.contains(&o.label)) {
                    if let Some(rect) = organ_rect(o, pane, cursor, dims) {
                        draw_rect(&mut px, w, h, rect, crate::output::label_colour(o.label));
                    }
                }
            }
            if pane == Pane::Axial && a.edit.organ.is_some() && a.shown.is_some_and(|s| !s.0) {
                if let Some(b) = a.edit.bbox {
                    draw_rect(&mut px, w, h, b, [255, 255, 255]);
                }
                for &(p, positive) in &a.edit.points {
                    draw_marker(&mut px, w, h, (p[0], p[1]), if positive { [0, 255, 0] } else { [255, 0, 0] });
                }
            }
            let ctx: CanvasRenderingContext2d = canvas.get_context("2d").ok().flatten().expect("2d").dyn_into().expect("ctx");
            if let Ok(img) = ImageData::new_with_u8_clamped_array_and_sh(wasm_bindgen::Clamped(&px), w as u32, h as u32) {
                let _ = ctx.put_image_data(&img, 0.0, 0.0);
            }
        }
        let info: HtmlElement = by_testid("viewer-info");
        info.set_text_content(Some(&format!(
            "{} — {}×{}×{} voxels, file axes {} (shown in canonical LPS, radiological view), slice i={} j={} k={}",
            case.name, dims[0], dims[1], dims[2], case.file_affine_codes, cursor[0], cursor[1], cursor[2]
        )));
        let organs: HtmlElement = by_testid("organ-list");
        let present = case.labels.as_ref().map(classes).unwrap_or_default();
        let html: String = present
            .iter()
            .map(|(v, n)| {
                let c = crate::output::label_colour(*v);
                format!(
                    "<label><input type=checkbox data-label='{v}' {}> <span style='color:rgb({},{},{})'>■</span> {v} {} ({n} voxels)</label>",
                    if a.hidden.contains(v) { "" } else { "checked" },
                    c[0],
                    c[1],
                    c[2],
                    html_escape(&a.table.name(*v))
                )
            })
            .collect();
        let marked: String = case
            .points
            .iter()
            .map(|(v, _)| format!("<div>{v} {} (marked by 6 points)</div>", html_escape(&a.table.name(*v))))
            .collect();
        let confidence: String = case
            .result
            .iter()
            .flat_map(|r| run::confidences(&r.organs))
            .map(|(v, c, outside)| {
                let note = if outside { " — outside the scan's field of view: not segmented" } else { "" };
                format!("<div data-confidence='{v}'>{v} {}: localization confidence {c:.2}{note}</div>", html_escape(&a.table.name(v)))
            })
            .collect();
        organs.set_inner_html(&(html + &marked + &confidence));
        a.cursor = cursor;
        a.recentre = false;
    });
}

/// Where an organ's box shows on a pane: the slice box on the axial pane, the
/// 3-D box on the other two, when the cursor's slice crosses it (pane pixels, inclusive).
fn organ_rect(
    o: &OrganLocalization,
    pane: Pane,
    cursor: [usize; 3],
    dims: [usize; 3],
) -> Option<[usize; 4]> {
    let b = &o.bbox;
    let flip = |k: usize| dims[2] - 1 - k;
    match pane {
        Pane::Axial => o
            .slice_boxes
            .iter()
            .find(|s| s.k == cursor[2])
            .map(|s| [s.min[0], s.min[1], s.max[0], s.max[1]]),
        Pane::Coronal => (b.min[1]..=b.max[1])
            .contains(&cursor[1])
            .then(|| [b.min[0], flip(b.max[2]), b.max[0], flip(b.min[2])]),
        Pane::Sagittal => (b.min[0]..=b.max[0])
            .contains(&cursor[0])
            .then(|| [b.min[1], flip(b.max[2]), b.max[1], flip(b.min[2])]),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

fn on_async<F, Fut>(id: &str, event: &str, f: F)
where
    F: Fn(HtmlInputElement) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<String>> + 'static,
{
    let input: HtmlInputElement = by_testid(id);
    let f = Rc::new(f);
    let handler = Closure::<dyn FnMut(Event)>::new(move |_e: Event| {
        let (f, input) = (f.clone(), input.clone());
        wasm_bindgen_futures::spawn_local(async move {
            set_status("reading…", false);
            hide_downloads();
            match f(input).await {
                Ok(msg) => {
                    set_status(&msg, false);
                    redraw();
                    render_organ_choice();
                    render_edit_organs();
                }
                Err(e) => set_status(&format!("error: {e}"), true),
            }
        });
    });
    let el: HtmlElement = by_testid(id);
    el.add_event_listener_with_callback(event, handler.as_ref().unchecked_ref())
        .expect("listener");
    handler.forget();
}

fn on_click(id: &str, f: impl Fn() + 'static) {
    let el: HtmlElement = by_testid(id);
    let handler = Closure::<dyn FnMut(Event)>::new(move |_e: Event| f());
    el.add_event_listener_with_callback("click", handler.as_ref().unchecked_ref())
        .expect("listener");
    handler.forget();
}

fn on_event(id: &str, event: &str, f: impl Fn(Event) + 'static) {
    let el: HtmlElement = by_testid(id);
    let handler = Closure::<dyn FnMut(Event)>::new(f);
    el.add_event_listener_with_callback(event, handler.as_ref().unchecked_ref())
        .expect("listener");
    handler.forget();
}

/// Hide the download links (their content belongs to what was shown before).
fn hide_downloads() {
    for id in [
        "download-seg",
        "download-labels",
        "download-boxes",
        "download-metrics",
    ] {
        let a: HtmlElement = by_testid(id);
        let _ = a.set_attribute("hidden", "");
    }
}

/// Offer bytes as a download on the anchor with this test id.
fn offer_download(id: &str, bytes: &[u8], file_name: &str, mime: &str) -> Result<()> {
    let arr = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&arr);
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &opts)
        .map_err(|_| Error::InvalidArgument("cannot create a download".into()))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob)
        .map_err(|_| Error::InvalidArgument("cannot create a download".into()))?;
    let a: HtmlAnchorElement = by_testid(id);
    // Free the previous file's bytes.
    let old = a.href();
    if old.starts_with("blob:") {
        let _ = web_sys::Url::revoke_object_url(&old);
    }
    a.set_href(&url);
    a.set_download(file_name);
    let _ = a.remove_attribute("hidden");
    Ok(())
}

/// Offer the shown case's label map (file grid and affine) for download.
fn offer_label_download() -> Result<()> {
    let (bytes, name) = APP.with_borrow(|a| {
        let case = shown_case(a).ok_or_else(|| Error::InvalidArgument("no case shown".into()))?;
        let labels = case
            .labels
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("the shown case has no label map".into()))?;
        let file = labels.from_canonical(&case.reorientation)?;
        Ok::<_, Error>((
            write_labels_nifti_bytes(&file)?,
            format!("{}.seg.nii.gz", case.name),
        ))
    })?;
    offer_download("download-seg", &bytes, &name, "application/gzip")?;
    let table = APP.with_borrow(|a| a.table.to_json());
    offer_download(
        "download-labels",
        table.as_bytes(),
        "labels.json",
        "application/json",
    )
}

/// A click on a pane: the voxel under the mouse becomes the cursor and, while
/// marking, the next extreme point.
fn on_pane_click(
    pane: Pane,
    canvas: &HtmlCanvasElement,
    x_css: f64,
    y_css: f64,
    shift: bool,
) -> Result<Option<String>> {
    let (cw, ch) = (
        canvas.client_width().max(1) as f64,
        canvas.client_height().max(1) as f64,
    );
    let (x, y) = (
        (x_css * canvas.width() as f64 / cw) as usize,
        (y_css * canvas.height() as f64 / ch) as usize,
    );
    APP.with_borrow_mut(|a| {
        let Some(case) = shown_case(a) else {
            return Ok(None);
        };
        let dims = case.canon.dims;
        let v = pane_voxel(
            dims,
            pane,
            a.cursor,
            x.min(canvas.width() as usize - 1),
            y.min(canvas.height() as usize - 1),
        );
        let v = [0, 1, 2].map(|t| v[t].min(dims[t] - 1));
        a.cursor = v;
        if pane == Pane::Axial
            && a.edit.organ.is_some()
            && a.edit.point_tool
            && a.shown.is_some_and(|s| !s.0)
        {
            a.edit.points.push(([v[0], v[1]], !shift));
            return Ok(Some(format!(
                "{} point {} on slice {}: press Re-segment when done",
                if shift { "background" } else { "organ" },
                a.edit.points.len(),
                v[2]
            )));
        }
        let Some((label, pts)) = a.marking.as_mut() else {
            return Ok(None);
        };
        if a.shown.is_none_or(|s| !s.0) {
            return Err(Error::InvalidArgument(
                "show a support CT to mark points on it".into(),
            ));
        }
        pts.push(v);
        if pts.len() < 6 {
            return Ok(Some(format!(
                "organ {label}: click {} ({}/6)",
                EXTREME_POINT_PROMPTS[pts.len()],
                pts.len() + 1
            )));
        }
        let (label, pts) = (*label, std::mem::take(pts));
        a.marking = None;
        let (_, n) = a.shown.expect("a support is shown");
        let case = &mut a.supports[n];
        case.points.retain(|(l, _)| *l != label);
        case.points
            .push((label, [pts[0], pts[1], pts[2], pts[3], pts[4], pts[5]]));
        Ok(Some(format!(
            "organ {label} marked by 6 extreme points on {}",
            case.name
        )))
    })
}

/// Axial pane pixel `[i, j]` under a mouse position in CSS pixels.
fn axial_pixel(canvas: &HtmlCanvasElement, x_css: f64, y_css: f64) -> [usize; 2] {
    let (cw, ch) = (
        canvas.client_width().max(1) as f64,
        canvas.client_height().max(1) as f64,
    );
    let x = (x_css * canvas.width() as f64 / cw).max(0.0) as usize;
    let y = (y_css * canvas.height() as f64 / ch).max(0.0) as usize;
    [
        x.min(canvas.width().max(1) as usize - 1),
        y.min(canvas.height().max(1) as usize - 1),
    ]
}

fn start_marking() -> Result<String> {
    let input: HtmlInputElement = by_testid("points-label");
    let label: u16 = input
        .value()
        .trim()
        .parse()
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| {
            Error::InvalidArgument("enter the organ's label number (1-65535) first".into())
        })?;
    APP.with_borrow_mut(|a| {
        if a.shown.is_none_or(|s| !s.0) {
            return Err(Error::InvalidArgument(
                "load a support CT (and show it) before marking points".into(),
            ));
        }
        a.marking = Some((label, Vec::new()));
        Ok(format!(
            "organ {label}: click {} (1/6)",
            EXTREME_POINT_PROMPTS[0]
        ))
    })
}

fn undo_point() -> Option<String> {
    APP.with_borrow_mut(|a| {
        let (label, pts) = a.marking.as_mut()?;
        pts.pop();
        Some(format!(
            "organ {label}: click {} ({}/6)",
            EXTREME_POINT_PROMPTS[pts.len()],
            pts.len() + 1
        ))
    })
}

/// Wire up the page.
pub fn start() {
    console_error_panic_hook::set_once();
    let gpu = web_sys::window()
        .and_then(|w| js_sys::Reflect::get(&w.navigator(), &JsValue::from_str("gpu")).ok())
        .is_some_and(|g| !g.is_undefined() && !g.is_null());
    let gpu_el: HtmlElement = by_testid("gpu-status");
    gpu_el.set_text_content(Some(if backend_choice() == BackendChoice::Cpu {
        "models will run on the CPU in WebAssembly (chosen by ?backend=cpu in the address; slower)"
    } else if gpu {
        "WebGPU available"
    } else {
        "WebGPU not available in this browser: models will run on the CPU in WebAssembly (slower)"
    }));

    on_async("support-image-input", "change", on_support_images);
    on_async("support-label-input", "change", on_support_labels);
    on_async("query-input", "change", on_queries);
    on_async("label-table-input", "change", on_label_table);
    on_async("query-label-input", "change", on_query_labels);
    on_event("organ-select", "change", |e| {
        let inp: HtmlInputElement = e.target().unwrap().dyn_into().unwrap();
        if let Some(l) = inp
            .get_attribute("data-organ")
            .and_then(|s| s.parse::<u16>().ok())
        {
            APP.with_borrow_mut(|a| {
                a.unselected.retain(|&u| u != l);
                if !inp.checked() {
                    a.unselected.push(l);
                }
            });
        }
    });
    on_click("run-button", || {
        if APP.with_borrow(|a| a.running) {
            return;
        }
        set_running(true);
        hide_downloads();
        set_status("running…", false);
        wasm_bindgen_futures::spawn_local(async {
            match on_run().await {
                Ok(m) => set_status(&m, false),
                Err(e) if CANCEL.load(Ordering::Relaxed) => {
                    set_status(&format!("cancelled ({e})"), false)
                }
                Err(e) => set_status(&format!("error: {e}"), true),
            }
            set_running(false);
            redraw();
            render_edit_organs();
        });
    });
    on_click("cancel-button", || {
        CANCEL.store(true, Ordering::Relaxed);
        set_status("cancelling after this slice…", false);
    });
    on_event("boxes-toggle", "change", |e| {
        let inp: HtmlInputElement = e.target().unwrap().dyn_into().unwrap();
        APP.with_borrow_mut(|a| a.hide_boxes = !inp.checked());
        redraw();
    });
    on_event("edit-organ", "change", |e| {
        let sel: HtmlSelectElement = e.target().unwrap().dyn_into().unwrap();
        let organ = sel.value().parse::<u16>().ok();
        APP.with_borrow_mut(|a| {
            a.edit = EditState {
                organ,
                point_tool: a.edit.point_tool,
                ..Default::default()
            }
        });
        set_status(
            &match organ {
                Some(l) => format!(
                    "correcting organ {l}: draw a box or click points on the axial pane, then Re-segment"
                ),
                None => "correction off".into(),
            },
            false,
        );
        redraw();
    });
    for (id, point) in [("edit-tool-box", false), ("edit-tool-point", true)] {
        on_event(id, "change", move |_| {
            APP.with_borrow_mut(|a| a.edit.point_tool = point);
        });
    }
    on_event("viewer-axial", "mousedown", |e| {
        let m: web_sys::MouseEvent = e.dyn_into().unwrap();
        let canvas: HtmlCanvasElement = by_testid("viewer-axial");
        let p = axial_pixel(&canvas, m.offset_x() as f64, m.offset_y() as f64);
        APP.with_borrow_mut(|a| {
            if a.edit.organ.is_some() && !a.edit.point_tool {
                a.edit.drag_from = Some(p);
            }
        });
    });
    on_event("viewer-axial", "mouseup", |e| {
        let m: web_sys::MouseEvent = e.dyn_into().unwrap();
        let canvas: HtmlCanvasElement = by_testid("viewer-axial");
        let p = axial_pixel(&canvas, m.offset_x() as f64, m.offset_y() as f64);
        let msg = APP.with_borrow_mut(|a| {
            let from = a.edit.drag_from.take()?;
            if from[0].abs_diff(p[0]) < 2 || from[1].abs_diff(p[1]) < 2 {
                return None;
            }
            let b = [
                from[0].min(p[0]),
                from[1].min(p[1]),
                from[0].max(p[0]),
                from[1].max(p[1]),
            ];
            a.edit.bbox = Some(b);
            Some(format!(
                "box {:?}..{:?} drawn: press Re-segment",
                [b[0], b[1]],
                [b[2], b[3]]
            ))
        });
        if let Some(m) = msg {
            set_status(&m, false);
            redraw();
        }
    });
    on_click("resegment-button", || {
        wasm_bindgen_futures::spawn_local(async {
            set_status("re-segmenting the slice…", false);
            match on_resegment().await {
                Ok(m) => set_status(&m, false),
                Err(e) => set_status(&format!("error: {e}"), true),
            }
            redraw();
        });
    });
    on_click("clear-prompts-button", || {
        APP.with_borrow_mut(|a| {
            a.edit.bbox = None;
            a.edit.points.clear();
        });
        redraw();
    });
    on_click("demo-button", || match run_demo() {
        Ok(m) => {
            // The file inputs no longer describe what is loaded.
            for id in [
                "support-image-input",
                "support-label-input",
                "label-table-input",
                "query-input",
                "query-label-input",
            ] {
                by_testid::<HtmlInputElement>(id).set_value("");
            }
            set_status(&m, false);
            redraw();
            render_organ_choice();
            render_edit_organs();
            if let Err(e) = offer_label_download() {
                set_status(&format!("error: {e}"), true);
            }
        }
        Err(e) => set_status(&format!("error: {e}"), true),
    });
    on_event("case-select", "change", |e| {
        let sel: HtmlSelectElement = e.target().unwrap().dyn_into().unwrap();
        let v = sel.value();
        let (has_result, has_labels, names) = APP.with_borrow_mut(|a| {
            if let Some(shown) = case_of_key(a, &v) {
                a.shown = Some(shown);
            }
            a.recentre = true;
            let case = shown_case(a);
            (
                case.is_some_and(|c| c.result.is_some()),
                case.is_some_and(|c| c.labels.is_some()),
                a.table.clone(),
            )
        });
        redraw();
        // Downloads, metrics and corrections belong to the case shown.
        hide_downloads();
        let offered = match (has_result, has_labels) {
            (true, _) => offer_result_downloads(),
            (false, true) => offer_label_download(),
            _ => Ok(()),
        };
        if let Err(e) = offered {
            set_status(&format!("error: {e}"), true);
        }
        render_metrics(&names);
        render_edit_organs();
    });
    on_event("window-preset", "change", |e| {
        let sel: HtmlSelectElement = e.target().unwrap().dyn_into().unwrap();
        let idx = sel.value().parse().unwrap_or(0);
        APP.with_borrow_mut(|a| a.preset = idx.min(PRESETS.len() - 1));
        redraw();
    });
    on_event("opacity", "input", |e| {
        let inp: HtmlInputElement = e.target().unwrap().dyn_into().unwrap();
        let v = inp.value().parse::<f32>().unwrap_or(45.0) / 100.0;
        APP.with_borrow_mut(|a| a.opacity = v.clamp(0.0, 1.0));
        redraw();
    });
    on_event("organ-list", "change", |e| {
        let inp: HtmlInputElement = e.target().unwrap().dyn_into().unwrap();
        if let Some(l) = inp
            .get_attribute("data-label")
            .and_then(|s| s.parse::<u16>().ok())
        {
            APP.with_borrow_mut(|a| {
                a.hidden.retain(|&h| h != l);
                if !inp.checked() {
                    a.hidden.push(l);
                }
            });
            redraw();
        }
    });
    for (id, axis) in [
        ("viewer-axial", 2usize),
        ("viewer-coronal", 1),
        ("viewer-sagittal", 0),
    ] {
        on_event(id, "wheel", move |e| {
            let w: WheelEvent = e.dyn_into().unwrap();
            w.prevent_default();
            let step: isize = if w.delta_y() > 0.0 { -1 } else { 1 };
            APP.with_borrow_mut(|a| {
                let max = shown_case(a).map(|c| c.canon.dims[axis] - 1).unwrap_or(0);
                a.cursor[axis] = (a.cursor[axis] as isize + step).clamp(0, max as isize) as usize;
            });
            redraw();
        });
    }
    for (id, pane) in [
        ("viewer-axial", Pane::Axial),
        ("viewer-coronal", Pane::Coronal),
        ("viewer-sagittal", Pane::Sagittal),
    ] {
        on_event(id, "click", move |e| {
            let m: web_sys::MouseEvent = e.dyn_into().unwrap();
            let canvas: HtmlCanvasElement = by_testid(id);
            match on_pane_click(
                pane,
                &canvas,
                m.offset_x() as f64,
                m.offset_y() as f64,
                m.shift_key(),
            ) {
                Ok(Some(msg)) => set_status(&msg, false),
                Ok(None) => {}
                Err(e) => set_status(&format!("error: {e}"), true),
            }
            redraw();
        });
    }
    on_click("mark-points-button", || match start_marking() {
        Ok(m) => {
            set_status(&m, false);
            redraw();
        }
        Err(e) => set_status(&format!("error: {e}"), true),
    });
    on_click("undo-point-button", || {
        if let Some(m) = undo_point() {
            set_status(&m, false);
            redraw();
        }
    });
    set_status("ready: load CTs or press Demo", false);
}
