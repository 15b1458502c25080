//! The viewer: which case is shown, drawing its three panes with labels and boxes,
//! and its controls (case choice, window, opacity, organ list, wheel and clicks).

use super::*;

/// The three panes and their canvases.
const PANES: [(Pane, &str); 3] = [
    (Pane::Axial, "viewer-axial"),
    (Pane::Coronal, "viewer-coronal"),
    (Pane::Sagittal, "viewer-sagittal"),
];

/// The viewer's "Show" choice: one option per loaded case (supports, then queries), with the
/// shown case selected.
pub(super) fn sync_case_select(a: &mut App) {
    let sel: HtmlSelectElement = by_testid("case-select");
    let options: String = a
        .all_cases()
        .map(|(shown, c)| {
            format!(
                "<option value=\"{}\">{}: {}</option>",
                shown.key(),
                if shown.is_support() {
                    "support"
                } else {
                    "query"
                },
                html_escape(&c.name)
            )
        })
        .collect();
    if options != a.case_options {
        sel.set_inner_html(&options);
        a.case_options = options;
    }
    if let Some(shown) = a.shown {
        sel.set_value(&shown.key());
    }
}

/// Redraw the three panes, the viewer's line about the case and the organ list.
pub fn redraw() {
    APP.with_borrow_mut(|a| {
        sync_case_select(a);
        let Some(cursor) = a.settle_cursor() else {
            return;
        };
        let a = &*a;
        let Some(case) = a.shown_case() else { return };
        for (pane, id) in PANES {
            draw_pane(a, case, pane, id, cursor);
        }
        let dims = case.canon.dims;
        let info: HtmlElement = by_testid("viewer-info");
        info.set_text_content(Some(&format!(
            "{} — {}×{}×{} voxels, file axes {} (shown in canonical LPS, radiological view), slice i={} j={} k={}",
            case.name, dims[0], dims[1], dims[2], case.file_affine_codes, cursor[0], cursor[1], cursor[2]
        )));
        let organs: HtmlElement = by_testid("organ-list");
        organs.set_inner_html(&(present_html(a, case) + &marked_html(a, case) + &confidence_html(a, case)));
    });
}

/// Size a pane's canvas to the grid, with the physical aspect ratio on screen; returns
/// its size in pixels.
fn fit_canvas(canvas: &HtmlCanvasElement, case: &Case, pane: Pane) -> (usize, usize) {
    let (w, h) = pane_size(case.canon.dims, pane);
    canvas.set_width(w as u32);
    canvas.set_height(h as u32);
    let spacing = case.canon.spacing_mm();
    let (sx, sy) = match pane {
        Pane::Axial => (spacing[0], spacing[1]),
        Pane::Coronal => (spacing[0], spacing[2]),
        Pane::Sagittal => (spacing[1], spacing[2]),
    };
    let css_w = 300.0;
    let css_h = css_w * (h as f64 * sy) / (w as f64 * sx);
    let _ = canvas
        .style()
        .set_property("height", &format!("{css_h:.0}px"));
    (w, h)
}

/// Draw one pane of the shown case at the cursor.
fn draw_pane(a: &App, case: &Case, pane: Pane, id: &str, cursor: [usize; 3]) {
    let canvas: HtmlCanvasElement = by_testid(id);
    let (w, h) = fit_canvas(&canvas, case, pane);
    let px = pane_pixels(a, case, pane, cursor, (w, h));
    let ctx: CanvasRenderingContext2d = canvas
        .get_context("2d")
        .ok()
        .flatten()
        .expect("2d")
        .dyn_into()
        .expect("ctx");
    if let Ok(img) =
        ImageData::new_with_u8_clamped_array_and_sh(wasm_bindgen::Clamped(&px), w as u32, h as u32)
    {
        let _ = ctx.put_image_data(&img, 0.0, 0.0);
    }
}

/// A pane's RGBA pixels: the CT with its label overlay, the marked extreme points, the
/// organs' boxes, and on the axial pane of a query the correction being drawn.
fn pane_pixels(
    a: &App,
    case: &Case,
    pane: Pane,
    cursor: [usize; 3],
    (w, h): (usize, usize),
) -> Vec<u8> {
    let dims = case.canon.dims;
    let (_, window, level) = PRESETS[a.preset];
    let style = ViewStyle {
        window,
        level,
        opacity: a.opacity,
        hidden: a.hidden.clone(),
    };
    let mut px = render_pane(&case.canon, case.labels.as_ref(), pane, cursor, &style);
    let in_progress = a
        .marking
        .iter()
        .filter(|_| a.shown.is_some_and(Shown::is_support))
        .flat_map(|(_, p)| p.iter().map(|&v| (v, [255, 255, 255])));
    let marked = case.points.iter().flat_map(|(l, pts)| {
        pts.iter()
            .map(move |&v| (v, crate::output::label_colour(*l)))
    });
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
    if pane == Pane::Axial && a.edit.organ.is_some() && a.shown.is_some_and(Shown::is_query) {
        if let Some(b) = a.edit.bbox {
            draw_rect(&mut px, w, h, b, [255, 255, 255]);
        }
        for &(p, positive) in &a.edit.points {
            let colour = if positive { [0, 255, 0] } else { [255, 0, 0] };
            draw_marker(&mut px, w, h, (p[0], p[1]), colour);
        }
    }
    px
}

/// The organ list's labels present in the shown case, each with a checkbox to hide it.
fn present_html(a: &App, case: &Case) -> String {
    let present = case.labels.as_ref().map(classes).unwrap_or_default();
    present
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
        .collect()
}

/// The organ list's organs marked by 6 points on the shown case.
fn marked_html(a: &App, case: &Case) -> String {
    case.points
        .iter()
        .map(|(v, _)| {
            format!(
                "<div>{v} {} (marked by 6 points)</div>",
                html_escape(&a.table.name(*v))
            )
        })
        .collect()
}

/// The organ list's localizations of the shown query: what placed each organ and how sure.
fn confidence_html(a: &App, case: &Case) -> String {
    case.result
        .iter()
        .flat_map(|r| run::confidences(&r.organs))
        .map(|o| {
            let v = o.label;
            let note = if o.outside_view() {
                " — outside the scan's field of view: not segmented"
            } else {
                ""
            };
            let placed = match o.source {
                "register" => "placed by registration",
                "medlam" => "placed by MedLAM",
                other => other,
            };
            let warning = o
                .warning
                .as_deref()
                .map_or(String::new(), |w| format!(" ({})", html_escape(w)));
            let drawn = o
                .mask_from
                .as_deref()
                .map_or(String::new(), |m| format!(", drawn by {}", html_escape(m)));
            format!(
                "<div data-confidence='{v}' data-source='{}'>{v} {}: {placed}{warning}{drawn}, localization confidence {:.2}{note}</div>",
                o.source,
                html_escape(&a.table.name(v)),
                o.confidence
            )
        })
        .collect()
}

/// Where an organ's box shows on a pane: the slice box on the axial pane, the
/// 3-D box on the other two, when the cursor's slice crosses it (pane pixels, inclusive).
pub(super) fn organ_rect(
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

pub(super) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

/// Pane pixel `[x, y]` under a mouse position in CSS pixels (inside the canvas).
pub(super) fn pane_pixel(canvas: &HtmlCanvasElement, x_css: f64, y_css: f64) -> [usize; 2] {
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

/// Wire the viewer's controls: case choice, window preset, opacity, boxes, organ list,
/// the wheel (slices) and clicks (cursor, extreme points, correction points) on the panes.
pub(super) fn wire() {
    on_event("case-select", "change", |e| {
        dispatch(Msg::ShowCase(target::<HtmlSelectElement>(&e).value()))
    });
    on_event("window-preset", "change", |e| {
        let sel: HtmlSelectElement = target(&e);
        dispatch(Msg::Preset(sel.value().parse().unwrap_or(0)));
    });
    on_event("opacity", "input", |e| {
        let inp: HtmlInputElement = target(&e);
        dispatch(Msg::Opacity(
            inp.value().parse::<f32>().unwrap_or(45.0) / 100.0,
        ));
    });
    on_event("boxes-toggle", "change", |e| {
        dispatch(Msg::ShowBoxes(target::<HtmlInputElement>(&e).checked()))
    });
    on_event("organ-list", "change", |e| {
        if let Some((label, shown)) = checked_label(&e, "data-label") {
            dispatch(Msg::LabelShown { label, shown });
        }
    });
    for ((pane, id), axis) in PANES.into_iter().zip([2usize, 1, 0]) {
        on_event(id, "wheel", move |e| {
            let w: &WheelEvent = e.dyn_ref().expect("wheel event");
            w.prevent_default();
            let step: isize = if w.delta_y() > 0.0 { -1 } else { 1 };
            dispatch(Msg::Scroll { axis, step });
        });
        on_event(id, "click", move |e| {
            let m: &web_sys::MouseEvent = e.dyn_ref().expect("mouse event");
            let canvas: HtmlCanvasElement = by_testid(id);
            let pixel = pane_pixel(&canvas, m.offset_x() as f64, m.offset_y() as f64);
            let shift = m.shift_key();
            dispatch(Msg::PaneClick { pane, pixel, shift });
        });
    }
}
