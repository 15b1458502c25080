//! Corrections: re-segmenting one axial slice from a user's box or points, and
//! marking a support organ by its 6 extreme points.

use super::*;

/// Fill the correction panel's organ choice from the shown query's result.
pub(super) fn render_edit_organs() {
    APP.with_borrow(|a| {
        let sel: HtmlSelectElement = by_testid("edit-organ");
        let organs: Vec<u16> = match shown_case(a).filter(|_| a.shown.is_some_and(Shown::is_query))
        {
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

pub(super) async fn on_resegment() -> Result<String> {
    let (ct, mut labels, edit, qi) = APP.with_borrow(|a| {
        let Some(Shown::Query(qi)) = a.shown else {
            return Err(Error::InvalidArgument(
                "show a query to correct its segmentation".into(),
            ));
        };
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

pub(super) fn start_marking() -> Result<String> {
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
        if a.shown.is_none_or(Shown::is_query) {
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

pub(super) fn undo_point() -> Option<String> {
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
