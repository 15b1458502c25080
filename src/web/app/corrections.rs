//! Corrections: re-segmenting one axial slice from a user's box or points, and
//! marking a support organ by its 6 extreme points.

use super::*;

/// Fill the correction panel's organ choice from the shown query's result.
pub(super) fn render_edit_organs() {
    APP.with_borrow(|a| {
        let sel: HtmlSelectElement = by_testid("edit-organ");
        let current = a.edit.organ;
        let opts: String = std::iter::once("<option value=''>— (off)</option>".to_string())
            .chain(a.edit_organs().iter().map(|&l| {
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

/// Re-segment the cursor's axial slice of the shown query from the correction drawn.
pub(super) async fn on_resegment() -> Result<String> {
    let (ct, mut labels, fix) = APP.with_borrow(|a| {
        let fix = a.correction()?;
        let case = a
            .queries
            .get(fix.query)
            .ok_or_else(|| Error::InvalidArgument("no query shown".into()))?;
        Ok::<_, Error>((case.canon.clone(), case.labels_or_empty()?, fix))
    })?;
    let edit = SliceEdit {
        organ: fix.organ,
        k: fix.k,
        prompt: fix.prompt,
    };
    let mut models = take_models().await?;
    let res = run::resegment_slice(&mut models, &ct, &mut labels, &edit).await;
    MODELS.with_borrow_mut(|m| *m = Some(models));
    let count = res?;
    dispatch(Msg::SliceResegmented {
        query: fix.query,
        labels,
    });
    offer_result_downloads()?;
    Ok(format!(
        "slice {} re-segmented for organ {}: {count} voxels",
        edit.k, edit.organ
    ))
}

/// Re-segment in the background; its end goes to the page's state.
pub(super) fn start_resegment() {
    wasm_bindgen_futures::spawn_local(async {
        let r = on_resegment().await;
        dispatch(Msg::ResegmentFinished(r));
    });
}

/// Pixel of the axial pane under the mouse.
fn axial_at(e: &Event) -> [usize; 2] {
    let m: &web_sys::MouseEvent = e.dyn_ref().expect("mouse event");
    let canvas: HtmlCanvasElement = by_testid("viewer-axial");
    pane_pixel(&canvas, m.offset_x() as f64, m.offset_y() as f64)
}

/// Wire the correction panel (organ, tool, box drawn on the axial pane, Re-segment,
/// Clear) and the marking of an organ by its extreme points.
pub(super) fn wire() {
    on_event("edit-organ", "change", |e| {
        let sel: HtmlSelectElement = target(&e);
        dispatch(Msg::EditOrgan(sel.value().parse::<u16>().ok()));
    });
    for (id, point) in [("edit-tool-box", false), ("edit-tool-point", true)] {
        on_event(id, "change", move |_| dispatch(Msg::EditTool { point }));
    }
    on_event("viewer-axial", "mousedown", |e| {
        dispatch(Msg::AxialPress(axial_at(&e)))
    });
    on_event("viewer-axial", "mouseup", |e| {
        dispatch(Msg::AxialRelease(axial_at(&e)))
    });
    on_click("resegment-button", || dispatch(Msg::ResegmentPressed));
    on_click("clear-prompts-button", || dispatch(Msg::ClearPrompts));
    on_click("mark-points-button", || {
        let input: HtmlInputElement = by_testid("points-label");
        dispatch(Msg::StartMarking(input.value()))
    });
    on_click("undo-point-button", || dispatch(Msg::UndoPoint));
}
