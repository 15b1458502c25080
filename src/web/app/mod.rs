//! The browser app's DOM shell (wasm32 only): its DOM helpers, [`dispatch`] (a
//! [`Msg`] through [`update`] on the page's state, then the [`Effect`]s it asks for)
//! and `start`; a module per panel, each wiring its controls: [`inputs`],
//! [`run_panel`], [`view`] (viewer and its events), [`corrections`], [`downloads`].
//! The state and its transitions are [`crate::web::state`] (native, unit-tested);
//! all processing is the library's; these only read the DOM, build messages and move
//! bytes and pixels between the page and the library. Files never leave the page.

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
use super::state::cases::{demo_cases, prefix, read_cases};
use super::state::{App, Case, Effect, Msg, ResultView, Shown, box_mode, mask_choice, update};
use super::viewer::{
    PRESETS, Pane, ViewStyle, draw_marker, draw_rect, pane_size, render_pane, voxel_on_pane,
};
use crate::metrics::LabelMetrics;
use crate::output::{
    DicomOutputs, METRICS_CSV_HEADER, boxes_json, dicom_output_files, metrics_csv_row, unix_now,
};
use crate::types::{LocalizerChoice, OrganLocalization};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::scan_files::{LabelFile, NamedFiles};
use crate::volume::{CtVolume, LabelVolume, write_labels_nifti_bytes};
use crate::{Error, Result};

thread_local! {
    static APP: RefCell<App> = RefCell::new(App::default());
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

/// Apply what happened to the page's state, then do what that asks of the page.
pub(super) fn dispatch(msg: Msg) {
    let effects = APP.with_borrow_mut(|a| update(a, msg));
    for effect in effects {
        if let Err(e) = apply(effect) {
            set_status(&format!("error: {e}"), true);
        }
    }
}

/// Do one thing an update asked of the page.
fn apply(effect: Effect) -> Result<()> {
    match effect {
        Effect::Status(msg) => set_status(&msg, false),
        Effect::Error(msg) => set_status(&msg, true),
        Effect::Redraw => redraw(),
        Effect::RenderOrganChoice => render_organ_choice(),
        Effect::RenderEditOrgans => render_edit_organs(),
        Effect::RenderMetrics => render_metrics(),
        Effect::HideDownloads => hide_downloads(),
        Effect::OfferResultDownloads => offer_result_downloads()?,
        Effect::OfferLabelDownload => offer_label_download()?,
        Effect::ClearFileInputs => clear_file_inputs(),
        Effect::SetRunning(running) => set_running(running),
        Effect::StartRun => start_run(),
        Effect::CancelRun => CANCEL.store(true, Ordering::Relaxed),
        Effect::StartResegment => start_resegment(),
    }
    Ok(())
}

/// Call `f` on each click on the element with this test id.
fn on_click(id: &str, f: impl Fn() + 'static) {
    on_event(id, "click", move |_| f());
}

/// Call `f` on each `event` on the element with this test id.
fn on_event(id: &str, event: &str, f: impl Fn(Event) + 'static) {
    let el: HtmlElement = by_testid(id);
    let handler = Closure::<dyn FnMut(Event)>::new(f);
    el.add_event_listener_with_callback(event, handler.as_ref().unchecked_ref())
        .expect("listener");
    handler.forget();
}

/// The input or select element an event came from.
fn target<T: JsCast>(e: &Event) -> T {
    e.target()
        .expect("event target")
        .dyn_into()
        .expect("target element type")
}

/// A checkbox event's label (its `attr` attribute, a label number) and whether it is now
/// checked; `None` when the attribute is missing or not a label.
fn checked_label(e: &Event, attr: &str) -> Option<(u16, bool)> {
    let inp: HtmlInputElement = target(e);
    let label = inp.get_attribute(attr)?.parse::<u16>().ok()?;
    Some((label, inp.checked()))
}

/// Say what the browser offers for the models: WebGPU, or the CPU in WebAssembly.
fn show_gpu_status() {
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
}

/// Wire up the page: each panel its controls.
pub fn start() {
    console_error_panic_hook::set_once();
    show_gpu_status();
    inputs::wire();
    run_panel::wire();
    corrections::wire();
    view::wire();
    set_status("ready: load CTs or press Demo", false);
}
