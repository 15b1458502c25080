//! The viewer: which case is shown, drawing its three panes with labels and boxes,
//! and clicks on the panes.

use super::*;

/// The case shown in the viewer, if any.
pub(super) fn shown_case(a: &App) -> Option<&Case> {
    match a.shown? {
        Shown::Support(n) => a.supports.get(n),
        Shown::Query(n) => a.queries.get(n),
    }
}

/// The value of a case in the viewer's choice: `s0`, `s1`, … for supports, `q0`, … for queries.
pub(super) fn case_key(shown: Shown) -> String {
    match shown {
        Shown::Support(n) => format!("s{n}"),
        Shown::Query(n) => format!("q{n}"),
    }
}

/// The case a choice value names, if it is loaded.
pub(super) fn case_of_key(a: &App, key: &str) -> Option<Shown> {
    let (support, n) = match key.split_at_checked(1)? {
        ("s", n) => (true, n),
        ("q", n) => (false, n),
        _ => return None,
    };
    let n: usize = n.parse().ok()?;
    if support {
        (n < a.supports.len()).then_some(Shown::Support(n))
    } else {
        (n < a.queries.len()).then_some(Shown::Query(n))
    }
}

/// The viewer's "Show" choice: one option per loaded case (supports, then queries), with the
/// shown case selected.
pub(super) fn sync_case_select(a: &mut App) {
    let sel: HtmlSelectElement = by_testid("case-select");
    let mut options = String::new();
    for (support, cases) in [(true, &a.supports), (false, &a.queries)] {
        for (n, c) in cases.iter().enumerate() {
            options += &format!(
                "<option value=\"{}\">{}: {}</option>",
                case_key(if support {
                    Shown::Support(n)
                } else {
                    Shown::Query(n)
                }),
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
            let in_progress = a.marking.iter().filter(|_| a.shown.is_some_and(Shown::is_support)).flat_map(|(_, p)| p.iter().map(|&v| (v, [255, 255, 255])));
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
            if pane == Pane::Axial && a.edit.organ.is_some() && a.shown.is_some_and(Shown::is_query) {
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
            .map(|o| {
                let v = o.label;
                let note = if o.outside_view() { " — outside the scan's field of view: not segmented" } else { "" };
                let placed = match o.source {
                    "register" => "placed by registration",
                    "medlam" => "placed by MedLAM",
                    other => other,
                };
                let warning = o.warning.as_deref().map_or(String::new(), |w| format!(" ({})", html_escape(w)));
                format!(
                    "<div data-confidence='{v}' data-source='{}'>{v} {}: {placed}{warning}, localization confidence {:.2}{note}</div>",
                    o.source,
                    html_escape(&a.table.name(v)),
                    o.confidence
                )
            })
            .collect();
        organs.set_inner_html(&(html + &marked + &confidence));
        a.cursor = cursor;
        a.recentre = false;
    });
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

/// A click on a pane: the voxel under the mouse becomes the cursor and, while
/// marking, the next extreme point.
pub(super) fn on_pane_click(
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
            && a.shown.is_some_and(Shown::is_query)
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
        if a.shown.is_none_or(Shown::is_query) {
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
        let Some(Shown::Support(n)) = a.shown else {
            unreachable!("a support is shown")
        };
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
pub(super) fn axial_pixel(canvas: &HtmlCanvasElement, x_css: f64, y_css: f64) -> [usize; 2] {
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
