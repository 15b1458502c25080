//! The browser app's DOM shell (wasm32 only): file inputs, the viewer panes,
//! status and downloads. All processing is the library's; this file only
//! moves bytes and pixels between the page and it. Files never leave the page.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    CanvasRenderingContext2d, Document, Event, HtmlAnchorElement, HtmlCanvasElement, HtmlElement,
    HtmlInputElement, HtmlSelectElement, ImageData, WheelEvent,
};

use super::viewer::{
    EXTREME_POINT_PROMPTS, PRESETS, Pane, ViewStyle, draw_marker, pane_size, pane_voxel,
    render_pane, voxel_on_pane,
};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
use crate::volume::{
    CtVolume, LabelVolume, Reorientation, read_nifti_bytes, write_labels_nifti_bytes,
};
use crate::{Error, Result};

/// A loaded CT with optional labels, kept on the canonical grid for viewing.
struct Case {
    name: String,
    canon: CtVolume,
    reorientation: Reorientation,
    file_affine_codes: String,
    labels: Option<LabelVolume>,
    /// Organs marked by clicking their 6 extreme points (canonical voxels, extreme-point order).
    points: Vec<(u16, [[usize; 3]; 6])>,
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
}

thread_local! {
    static APP: RefCell<App> = RefCell::new(App { opacity: 0.45, ..Default::default() });
}

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
        points: Vec::new(),
    })
}

fn prefix(name: &str, e: Error) -> Error {
    Error::InvalidArgument(format!("{name}: {e}"))
}

/// Attach a label map (file grid) to a case after checking they match.
fn attach_labels(case: &mut Case, name: &str, labels: LabelVolume) -> Result<()> {
    let (canon, r) = labels.to_canonical();
    if r != case.reorientation || !case.canon.same_grid(&canon) {
        return Err(Error::Mismatch(format!(
            "{name} does not match {} (different shape or geometry): is it the label map of another scan?",
            case.name
        )));
    }
    case.labels = Some(canon);
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
    if a.support_labels.len() != a.supports.len() {
        return Err(Error::Mismatch(format!(
            "{} support CTs but {} support label maps: give one label map per support CT",
            a.supports.len(),
            a.support_labels.len()
        )));
    }
    for (case, (name, lab)) in a.supports.iter_mut().zip(&a.support_labels) {
        attach_labels(case, name, lab.clone())?;
    }
    Ok(())
}

async fn on_support_labels(input: HtmlInputElement) -> Result<String> {
    let files = files_of(&input).await?;
    let labels = files
        .iter()
        .map(|(n, b)| {
            Ok((
                n.clone(),
                read_nifti_bytes(b)
                    .and_then(|f| f.into_labels())
                    .map_err(|e| prefix(n, e))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
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
    });
    Ok(format!("{n} query CT(s) loaded"))
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
            points: Vec::new(),
        });
    }
    let (q, _) = phantom(&PhantomOptions {
        seed: 11,
        ras: true,
        ..Default::default()
    })?;
    let query = to_case(
        "phantom_query.nii.gz",
        &crate::volume::nifti_io::write_nifti_bytes(&q, false)?,
    )?;
    APP.with_borrow_mut(|a| {
        a.supports = supports;
        a.support_labels.clear();
        a.queries = vec![query];
        a.table = LabelTable(
            PHANTOM_LABELS
                .iter()
                .map(|&(v, n)| (v, n.to_string()))
                .collect(),
        );
        a.shown = Some((true, 0));
        a.recentre = true;
    });
    Ok("demo: 3 synthetic support phantoms with organ labels and 1 query phantom (RAS file) loaded".into())
}

fn shown_case(a: &App) -> Option<&Case> {
    let (support, n) = a.shown?;
    if support {
        a.supports.get(n)
    } else {
        a.queries.get(n)
    }
}

/// Redraw the three panes and the organ list.
pub fn redraw() {
    APP.with_borrow_mut(|a| {
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
        organs.set_inner_html(&(html + &marked));
        a.cursor = cursor;
        a.recentre = false;
    });
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
    for id in ["download-seg", "download-labels"] {
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
    gpu_el.set_text_content(Some(if gpu {
        "WebGPU available"
    } else {
        "WebGPU not available in this browser: models will run on the CPU in WebAssembly (slower)"
    }));

    on_async("support-image-input", "change", on_support_images);
    on_async("support-label-input", "change", on_support_labels);
    on_async("query-input", "change", on_queries);
    on_async("label-table-input", "change", on_label_table);
    on_click("demo-button", || match run_demo() {
        Ok(m) => {
            set_status(&m, false);
            redraw();
            if let Err(e) = offer_label_download() {
                set_status(&format!("error: {e}"), true);
            }
        }
        Err(e) => set_status(&format!("error: {e}"), true),
    });
    on_event("case-select", "change", |e| {
        let sel: HtmlSelectElement = e.target().unwrap().dyn_into().unwrap();
        let v = sel.value();
        APP.with_borrow_mut(|a| {
            a.shown = match v.as_str() {
                "support" => (!a.supports.is_empty()).then_some((true, 0)),
                _ => (!a.queries.is_empty()).then_some((false, 0)),
            };
            a.recentre = true;
        });
        redraw();
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
            match on_pane_click(pane, &canvas, m.offset_x() as f64, m.offset_y() as f64) {
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
