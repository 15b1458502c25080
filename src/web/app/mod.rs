//! The browser app's DOM shell (wasm32 only): the page's state, its DOM helpers
//! and `start` (wiring every control); a module per panel: [`inputs`],
//! [`run_panel`], [`view`] (viewer and its events), [`corrections`],
//! [`downloads`]. All processing is the library's; these only move bytes and
//! pixels between the page and it. Files never leave the page.

mod corrections;
mod downloads;
mod inputs;
mod run_panel;
mod view;

use corrections::*;
use downloads::*;
use inputs::*;
use run_panel::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use view::*;

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
use crate::output::{
    DicomOutputs, METRICS_CSV_HEADER, boxes_json, dicom_output_files, metrics_csv_row, unix_now,
};
use crate::sam::predictor::{PromptPoint, SlicePrompt};
use crate::types::{BoxMode, LocalizerChoice, OrganLocalization};
use crate::volume::dicom::DicomInfo;
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::scan_files::{
    LabelFile, NamedFiles, ScanFiles, ScanRead, group_scans, read_scan,
};
use crate::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
use crate::volume::{CtVolume, LabelVolume, Reorientation, Volume, write_labels_nifti_bytes};
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
    /// What its DICOM series said, when it was read from one (RTSTRUCT labels of a
    /// support; RTSTRUCT and SEG downloads of a query).
    dicom: Option<DicomInfo>,
}

/// What a run gave for one query.
struct ResultView {
    /// The organs the run was asked for (label order).
    asked: Vec<u16>,
    organs: Vec<OrganLocalization>,
    metrics: Option<Vec<LabelMetrics>>,
}

/// The case shown in the viewer: a support or a query, by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shown {
    Support(usize),
    Query(usize),
}

impl Shown {
    fn is_support(self) -> bool {
        matches!(self, Self::Support(_))
    }

    fn is_query(self) -> bool {
        matches!(self, Self::Query(_))
    }
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
    support_labels: Vec<(String, LabelFile)>,
    queries: Vec<Case>,
    table: LabelTable,
    /// The label table was chosen by the user (labels.json): RTSTRUCT ROI names keep out.
    table_chosen: bool,
    /// The case shown in the viewer.
    shown: Option<Shown>,
    cursor: [usize; 3],
    preset: usize,
    opacity: f32,
    hidden: Vec<u16>,
    /// Put the cursor in the middle of the volume at the next redraw.
    recentre: bool,
    /// Extreme points being clicked: the organ's label and the points so far.
    marking: Option<(u16, Vec<[usize; 3]>)>,
    query_labels: Vec<(String, LabelFile)>,
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
            after_load(f(input).await);
        });
    });
    let el: HtmlElement = by_testid(id);
    el.add_event_listener_with_callback(event, handler.as_ref().unchecked_ref())
        .expect("listener");
    handler.forget();
}

/// Loading of what the user chose or dropped: status, redraw, the organ and correction
/// choices; an error leaves the page as it was, with its message.
fn after_load(result: Result<String>) {
    match result {
        Ok(msg) => {
            set_status(&msg, false);
            redraw();
            render_organ_choice();
            render_edit_organs();
        }
        Err(e) => set_status(&format!("error: {e}"), true),
    }
}

/// Folders and files dropped on the element with this test id go to `load`.
fn on_drop(id: &str, load: fn(NamedFiles) -> Result<String>) {
    let el: HtmlElement = by_testid(id);
    let over = Closure::<dyn FnMut(Event)>::new(|e: Event| e.prevent_default());
    el.add_event_listener_with_callback("dragover", over.as_ref().unchecked_ref())
        .expect("listener");
    over.forget();
    let drop = Closure::<dyn FnMut(Event)>::new(move |e: Event| {
        e.prevent_default();
        let Ok(d) = e.dyn_into::<web_sys::DragEvent>() else {
            return;
        };
        let (entries, files) = dropped(&d);
        wasm_bindgen_futures::spawn_local(async move {
            set_status("reading…", false);
            hide_downloads();
            let files = read_dropped(entries, files).await.and_then(|f| {
                if f.is_empty() {
                    // A text or link dragged in: keep what is loaded.
                    return Err(Error::InvalidArgument(
                        "nothing to load in what was dropped: drop CT files or DICOM folders"
                            .into(),
                    ));
                }
                Ok(f)
            });
            after_load(files.and_then(load));
        });
    });
    el.add_event_listener_with_callback("drop", drop.as_ref().unchecked_ref())
        .expect("listener");
    drop.forget();
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
    on_async("support-folder-input", "change", on_support_images);
    on_async("query-folder-input", "change", on_queries);
    on_drop("support-drop", load_supports);
    on_drop("query-drop", load_queries);
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
                Err(e) if e.is_cancelled() => set_status("cancelled", false),
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
                "support-folder-input",
                "query-folder-input",
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
