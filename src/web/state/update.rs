//! What happens on the page ([`Msg`]), how it changes the state ([`update`]) and what
//! the DOM shell must do next ([`Effect`]).

use super::cases::{dicom_note, pair_query_labels, pair_support_labels, phantom_table};
use super::{App, Case, EditState, ResultView, Shown};
use crate::volume::LabelVolume;
use crate::volume::label_table::LabelTable;
use crate::volume::scan_files::LabelFile;
use crate::web::viewer::{EXTREME_POINT_PROMPTS, PRESETS, Pane, pane_voxel, result_view};
use crate::{Error, Result};

/// Something the user did, or something that finished, on the page.
pub enum Msg {
    /// Files were chosen or dropped and are being read.
    Reading,
    /// Reading what was chosen or dropped failed (the page stays as it was).
    LoadFailed(Error),
    SupportsLoaded(Vec<Case>),
    SupportLabelsLoaded(Vec<(String, LabelFile)>),
    /// `memory_mib`: the page's memory once they were read.
    QueriesLoaded {
        cases: Vec<Case>,
        memory_mib: f64,
    },
    /// Label maps of the queries (for metrics only).
    QueryLabelsLoaded(Vec<(String, LabelFile)>),
    /// A label table (`None`: the input was emptied).
    LabelTableLoaded(Option<LabelTable>),
    DemoLoaded {
        supports: Vec<Case>,
        query: Box<Case>,
    },
    /// An organ ticked (`chosen`) or unticked in the organ choice.
    OrganChosen {
        label: u16,
        chosen: bool,
    },
    RunPressed,
    CancelPressed,
    /// A query's segmentation arrived during the run.
    QueryDone {
        index: usize,
        labels: LabelVolume,
        result: ResultView,
    },
    /// The run ended: its summary, or why it stopped.
    RunFinished(Result<String>),
    /// The viewer's case choice changed to this value ([`Shown::key`]).
    ShowCase(String),
    /// The window/level preset (index into the viewer's presets).
    Preset(usize),
    /// The label overlay's opacity (0 to 1).
    Opacity(f32),
    /// A label's overlay shown or hidden in the organ list.
    LabelShown {
        label: u16,
        shown: bool,
    },
    /// Organ boxes shown or hidden.
    ShowBoxes(bool),
    /// The mouse wheel on the pane across `axis`: one slice up (`step` 1) or down (-1).
    Scroll {
        axis: usize,
        step: isize,
    },
    /// A click on a pane at a pixel (inside the pane); `shift`: a background point.
    PaneClick {
        pane: Pane,
        pixel: [usize; 2],
        shift: bool,
    },
    /// The organ chosen in the correction panel (`None`: correction off).
    EditOrgan(Option<u16>),
    /// The correction tool: points (else a box).
    EditTool {
        point: bool,
    },
    /// The mouse pressed on the axial pane (pixel).
    AxialPress([usize; 2]),
    /// The mouse released on the axial pane (pixel).
    AxialRelease([usize; 2]),
    ClearPrompts,
    ResegmentPressed,
    /// The shown query's slice was re-segmented: its new label map.
    SliceResegmented {
        query: usize,
        labels: LabelVolume,
    },
    /// The re-segmentation ended: what it did, or why it failed.
    ResegmentFinished(Result<String>),
    /// Mark points was pressed with this text in the label field.
    StartMarking(String),
    UndoPoint,
}

/// What the DOM shell does after an update, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A status line.
    Status(String),
    /// A status line marked as an error.
    Error(String),
    /// Redraw the viewer (panes, case choice, organ list).
    Redraw,
    RenderOrganChoice,
    RenderEditOrgans,
    /// The metrics table of the shown query.
    RenderMetrics,
    HideDownloads,
    /// Offer the shown query's result files.
    OfferResultDownloads,
    /// Offer the shown case's label map.
    OfferLabelDownload,
    /// Empty the file inputs (they no longer describe what is loaded).
    ClearFileInputs,
    /// Enable Cancel and disable Run (`true`), or the reverse.
    SetRunning(bool),
    StartRun,
    /// Tell the run in progress to stop after the slice it is on.
    CancelRun,
    StartResegment,
}

/// What the page says once the demo is loaded.
pub const DEMO_LOADED: &str = "demo: 3 synthetic support phantoms with organ labels and 1 query phantom (RAS file) loaded: press Run to localize and segment the query's organs";

fn error(e: impl std::fmt::Display) -> Effect {
    Effect::Error(format!("error: {e}"))
}

/// Apply what happened to the page's state; returns what the shell must do next.
pub fn update(a: &mut App, msg: Msg) -> Vec<Effect> {
    use Effect::*;
    match msg {
        Msg::Reading => vec![Status("reading…".into()), HideDownloads],
        Msg::LoadFailed(e) => vec![error(e)],
        Msg::SupportsLoaded(cases) => loaded(load_supports(a, cases)),
        Msg::SupportLabelsLoaded(labels) => loaded(load_support_labels(a, labels)),
        Msg::QueriesLoaded { cases, memory_mib } => loaded(load_queries(a, cases, memory_mib)),
        Msg::QueryLabelsLoaded(labels) => loaded(load_query_labels(a, labels)),
        Msg::LabelTableLoaded(table) => loaded(Ok(load_table(a, table))),
        Msg::DemoLoaded { supports, query } => load_demo(a, supports, query),
        Msg::OrganChosen { label, chosen } => choose_organ(a, label, chosen),
        Msg::RunPressed => press_run(a),
        Msg::CancelPressed => press_cancel(a),
        Msg::QueryDone {
            index,
            labels,
            result,
        } => query_done(a, index, labels, result),
        Msg::RunFinished(r) => run_finished(a, r),
        Msg::ShowCase(key) => show_case(a, &key),
        Msg::Preset(n) => set_preset(a, n),
        Msg::Opacity(v) => set_opacity(a, v),
        Msg::LabelShown { label, shown } => show_label(a, label, shown),
        Msg::ShowBoxes(show) => show_boxes(a, show),
        Msg::Scroll { axis, step } => scroll(a, axis, step),
        Msg::PaneClick { pane, pixel, shift } => {
            said_and_redrawn(pane_click(a, pane, pixel, shift))
        }
        Msg::EditOrgan(organ) => edit_organ(a, organ),
        Msg::EditTool { point } => edit_tool(a, point),
        Msg::AxialPress(p) => axial_press(a, p),
        Msg::AxialRelease(p) => axial_release(a, p),
        Msg::ClearPrompts => clear_prompts(a),
        Msg::ResegmentPressed => vec![Status("re-segmenting the slice…".into()), StartResegment],
        Msg::SliceResegmented { query, labels } => slice_resegmented(a, query, labels),
        Msg::ResegmentFinished(r) => vec![r.map_or_else(error, Status), Redraw],
        Msg::StartMarking(text) => match start_marking(a, &text) {
            Ok(m) => vec![Status(m), Redraw],
            Err(e) => vec![error(e)],
        },
        Msg::UndoPoint => undo_point(a).map_or_else(Vec::new, |m| vec![Status(m), Redraw]),
    }
}

/// Add `label` to `list` (`on`) or take it out.
fn toggle(list: &mut Vec<u16>, label: u16, on: bool) {
    list.retain(|&l| l != label);
    if on {
        list.push(label);
    }
}

fn choose_organ(a: &mut App, label: u16, chosen: bool) -> Vec<Effect> {
    toggle(&mut a.unselected, label, !chosen);
    vec![]
}

fn press_run(a: &mut App) -> Vec<Effect> {
    if a.running {
        return vec![];
    }
    a.running = true;
    a.cancel_requested = false;
    use Effect::*;
    vec![
        SetRunning(true),
        HideDownloads,
        Status("running…".into()),
        StartRun,
    ]
}

fn press_cancel(a: &mut App) -> Vec<Effect> {
    a.cancel_requested = true;
    use Effect::*;
    vec![CancelRun, Status("cancelling after this slice…".into())]
}

fn set_preset(a: &mut App, n: usize) -> Vec<Effect> {
    a.preset = n.min(PRESETS.len() - 1);
    vec![Effect::Redraw]
}

fn set_opacity(a: &mut App, v: f32) -> Vec<Effect> {
    a.opacity = v.clamp(0.0, 1.0);
    vec![Effect::Redraw]
}

fn show_label(a: &mut App, label: u16, shown: bool) -> Vec<Effect> {
    toggle(&mut a.hidden, label, !shown);
    vec![Effect::Redraw]
}

fn show_boxes(a: &mut App, show: bool) -> Vec<Effect> {
    a.hide_boxes = !show;
    vec![Effect::Redraw]
}

/// One slice up or down across `axis`, within the shown case.
fn scroll(a: &mut App, axis: usize, step: isize) -> Vec<Effect> {
    let max = a.shown_case().map(|c| c.canon.dims[axis] - 1).unwrap_or(0);
    a.cursor[axis] = (a.cursor[axis] as isize + step).clamp(0, max as isize) as usize;
    vec![Effect::Redraw]
}

/// What to tell the user, if anything, then a redraw.
fn said_and_redrawn(said: Result<Option<String>>) -> Vec<Effect> {
    let mut effects: Vec<Effect> = match said {
        Ok(m) => m.map(Effect::Status).into_iter().collect(),
        Err(e) => vec![error(e)],
    };
    effects.push(Effect::Redraw);
    effects
}

fn edit_tool(a: &mut App, point: bool) -> Vec<Effect> {
    a.edit.point_tool = point;
    vec![]
}

/// The start of a drag on the axial pane (a box, with the box tool).
fn axial_press(a: &mut App, p: [usize; 2]) -> Vec<Effect> {
    if a.edit.organ.is_some() && !a.edit.point_tool {
        a.edit.drag_from = Some(p);
    }
    vec![]
}

fn clear_prompts(a: &mut App) -> Vec<Effect> {
    a.edit.bbox = None;
    a.edit.points.clear();
    vec![Effect::Redraw]
}

/// The shown query's new label map after a re-segmentation; the correction is spent.
fn slice_resegmented(a: &mut App, query: usize, labels: LabelVolume) -> Vec<Effect> {
    if let Some(c) = a.queries.get_mut(query) {
        c.labels = Some(labels);
    }
    a.edit.bbox = None;
    a.edit.points.clear();
    vec![]
}

/// After loading: the status, the viewer and the organ and correction choices; an error
/// is only said.
fn loaded(r: Result<String>) -> Vec<Effect> {
    use Effect::*;
    match r {
        Ok(msg) => vec![Status(msg), Redraw, RenderOrganChoice, RenderEditOrgans],
        Err(e) => vec![error(e)],
    }
}

fn load_supports(a: &mut App, cases: Vec<Case>) -> Result<String> {
    let said = format!("{} support CT(s) loaded{}", cases.len(), dicom_note(&cases));
    a.supports = cases;
    pair_support_labels(a)?;
    a.shown = (!a.supports.is_empty()).then_some(Shown::Support(0));
    a.recentre = true;
    Ok(said)
}

fn load_support_labels(a: &mut App, labels: Vec<(String, LabelFile)>) -> Result<String> {
    let n = labels.len();
    a.support_labels = labels;
    pair_support_labels(a)?;
    Ok(format!("{n} support label map(s) loaded"))
}

fn load_queries(a: &mut App, cases: Vec<Case>, memory_mib: f64) -> Result<String> {
    let said = format!(
        "{} query CT(s) loaded{}; memory {memory_mib:.0} MiB",
        cases.len(),
        dicom_note(&cases)
    );
    a.queries = cases;
    a.shown = (!a.queries.is_empty()).then_some(Shown::Query(0));
    a.recentre = true;
    pair_query_labels(a)?;
    Ok(said)
}

fn load_query_labels(a: &mut App, labels: Vec<(String, LabelFile)>) -> Result<String> {
    let n = labels.len();
    a.query_labels = labels;
    pair_query_labels(a)?;
    Ok(format!(
        "{n} query label map(s) loaded (used only for metrics)"
    ))
}

fn load_table(a: &mut App, table: Option<LabelTable>) -> String {
    let Some(table) = table else {
        return String::new();
    };
    let n = table.0.len();
    a.table = table;
    a.table_chosen = true;
    format!("{n} label names loaded")
}

fn load_demo(a: &mut App, supports: Vec<Case>, query: Box<Case>) -> Vec<Effect> {
    a.supports = supports;
    a.support_labels.clear();
    a.queries = vec![*query];
    a.query_labels.clear();
    a.table_chosen = false;
    a.table = phantom_table();
    a.shown = Some(Shown::Support(0));
    a.recentre = true;
    use Effect::*;
    vec![
        ClearFileInputs,
        Status(DEMO_LOADED.into()),
        Redraw,
        RenderOrganChoice,
        RenderEditOrgans,
        OfferLabelDownload,
    ]
}

fn query_done(a: &mut App, index: usize, labels: LabelVolume, result: ResultView) -> Vec<Effect> {
    if let Some(c) = a.queries.get_mut(index) {
        // Show the result where it is (not the middle of the volume).
        if let Some(v) = result_view(&labels) {
            a.cursor = v;
            a.recentre = false;
        }
        c.labels = Some(labels);
        c.result = Some(result);
    }
    a.shown = Some(Shown::Query(index));
    vec![Effect::Redraw]
}

fn run_finished(a: &mut App, r: Result<String>) -> Vec<Effect> {
    a.running = false;
    let said = match r {
        Ok(m) => Effect::Status(m),
        Err(e) if e.is_cancelled() => Effect::Status("cancelled".into()),
        Err(e) if a.cancel_requested => Effect::Status(format!("cancelled ({e})")),
        Err(e) => error(e),
    };
    a.cancel_requested = false;
    use Effect::*;
    vec![said, SetRunning(false), Redraw, RenderEditOrgans]
}

/// Another case in the viewer: downloads, metrics and corrections belong to the case shown.
fn show_case(a: &mut App, key: &str) -> Vec<Effect> {
    if let Some(shown) = a.case_of_key(key) {
        a.shown = Some(shown);
    }
    a.recentre = true;
    let case = a.shown_case();
    let has_result = case.is_some_and(|c| c.result.is_some());
    let has_labels = case.is_some_and(|c| c.labels.is_some());
    use Effect::*;
    let mut effects = vec![Redraw, HideDownloads];
    match (has_result, has_labels) {
        (true, _) => effects.push(OfferResultDownloads),
        (false, true) => effects.push(OfferLabelDownload),
        _ => {}
    }
    effects.extend([RenderMetrics, RenderEditOrgans]);
    effects
}

fn edit_organ(a: &mut App, organ: Option<u16>) -> Vec<Effect> {
    a.edit = EditState {
        organ,
        point_tool: a.edit.point_tool,
        ..Default::default()
    };
    let said = match organ {
        Some(l) => format!(
            "correcting organ {l}: draw a box or click points on the axial pane, then Re-segment"
        ),
        None => "correction off".into(),
    };
    vec![Effect::Status(said), Effect::Redraw]
}

/// The end of a drag on the axial pane: the correction's box, when it is not a mere click.
fn axial_release(a: &mut App, p: [usize; 2]) -> Vec<Effect> {
    let Some(from) = a.edit.drag_from.take() else {
        return vec![];
    };
    if from[0].abs_diff(p[0]) < 2 || from[1].abs_diff(p[1]) < 2 {
        return vec![];
    }
    let b = [
        from[0].min(p[0]),
        from[1].min(p[1]),
        from[0].max(p[0]),
        from[1].max(p[1]),
    ];
    a.edit.bbox = Some(b);
    let said = format!(
        "box {:?}..{:?} drawn: press Re-segment",
        [b[0], b[1]],
        [b[2], b[3]]
    );
    vec![Effect::Status(said), Effect::Redraw]
}

/// The prompt for the next extreme point of the organ being marked.
fn next_point(label: u16, done: usize) -> String {
    format!(
        "organ {label}: click {} ({}/6)",
        EXTREME_POINT_PROMPTS[done],
        done + 1
    )
}

fn start_marking(a: &mut App, text: &str) -> Result<String> {
    let label: u16 = text.trim().parse().ok().filter(|&l| l > 0).ok_or_else(|| {
        Error::InvalidArgument("enter the organ's label number (1-65535) first".into())
    })?;
    if a.shown.is_none_or(Shown::is_query) {
        return Err(Error::InvalidArgument(
            "load a support CT (and show it) before marking points".into(),
        ));
    }
    a.marking = Some((label, Vec::new()));
    Ok(next_point(label, 0))
}

fn undo_point(a: &mut App) -> Option<String> {
    let (label, pts) = a.marking.as_mut()?;
    pts.pop();
    Some(next_point(*label, pts.len()))
}

/// A click on a pane: the voxel under the mouse becomes the cursor and, while
/// correcting with points, a point of the correction, else, while marking, the
/// next extreme point. Returns what to tell the user.
fn pane_click(a: &mut App, pane: Pane, [x, y]: [usize; 2], shift: bool) -> Result<Option<String>> {
    let Some(case) = a.shown_case() else {
        return Ok(None);
    };
    let dims = case.canon.dims;
    let v = pane_voxel(dims, pane, a.cursor, x, y);
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
    mark_point(a, v)
}

/// The next extreme point of the organ being marked (if one is) on the shown support.
fn mark_point(a: &mut App, v: [usize; 3]) -> Result<Option<String>> {
    let Some((label, pts)) = a.marking.as_mut() else {
        return Ok(None);
    };
    let Some(Shown::Support(n)) = a.shown else {
        return Err(Error::InvalidArgument(
            "show a support CT to mark points on it".into(),
        ));
    };
    pts.push(v);
    if pts.len() < 6 {
        return Ok(Some(next_point(*label, pts.len())));
    }
    let (label, pts) = (*label, std::mem::take(pts));
    a.marking = None;
    let Some(case) = a.supports.get_mut(n) else {
        return Ok(None);
    };
    case.points.retain(|(l, _)| *l != label);
    case.points
        .push((label, [pts[0], pts[1], pts[2], pts[3], pts[4], pts[5]]));
    Ok(Some(format!(
        "organ {label} marked by 6 extreme points on {}",
        case.name
    )))
}
