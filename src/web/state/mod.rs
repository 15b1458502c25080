//! The page's state and its transitions, free of the DOM (compiled natively, so unit
//! tests drive it): [`App`] and the cases it holds, [`Msg`] (what happened on the page)
//! and [`update`], which changes the state and answers with the [`Effect`]s the DOM
//! shell (`web::app`, wasm32 only) carries out. [`cases`] reads CTs and label maps into
//! [`Case`]s.

pub mod cases;
mod update;

pub use update::{Effect, Msg, update};

use crate::metrics::LabelMetrics;
use crate::sam::predictor::{PromptPoint, SlicePrompt};
use crate::types::{BoxMode, OrganLocalization};
use crate::volume::dicom::DicomInfo;
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::scan_files::LabelFile;
use crate::volume::{CtVolume, LabelVolume, Reorientation, Volume};
use crate::{Error, Result};

/// A loaded CT with optional labels, kept on the canonical grid for viewing.
pub struct Case {
    pub name: String,
    pub canon: CtVolume,
    pub reorientation: Reorientation,
    pub file_affine_codes: String,
    /// Supports: their label map. Queries: the segmentation (after a run or an edit).
    pub labels: Option<LabelVolume>,
    /// Queries: the user's label map, used only for metrics.
    pub truth: Option<LabelVolume>,
    /// Organs marked by clicking their 6 extreme points (canonical voxels, extreme-point order).
    pub points: Vec<(u16, [[usize; 3]; 6])>,
    /// Queries: localizations and metrics of the last run.
    pub result: Option<ResultView>,
    /// What its DICOM series said, when it was read from one (RTSTRUCT labels of a
    /// support; RTSTRUCT and SEG downloads of a query).
    pub dicom: Option<DicomInfo>,
}

/// What a run gave for one query.
pub struct ResultView {
    /// The organs the run was asked for (label order).
    pub asked: Vec<u16>,
    pub organs: Vec<OrganLocalization>,
    pub metrics: Option<Vec<LabelMetrics>>,
}

/// The case shown in the viewer: a support or a query, by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    Support(usize),
    Query(usize),
}

impl Shown {
    pub fn is_support(self) -> bool {
        matches!(self, Self::Support(_))
    }

    pub fn is_query(self) -> bool {
        matches!(self, Self::Query(_))
    }

    /// The value of a case in the viewer's choice: `s0`, `s1`, … for supports, `q0`, … for queries.
    pub fn key(self) -> String {
        match self {
            Self::Support(n) => format!("s{n}"),
            Self::Query(n) => format!("q{n}"),
        }
    }
}

/// A correction being drawn on the axial pane of the shown query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EditState {
    /// The organ being corrected (`None`: clicks only move the cursor).
    pub organ: Option<u16>,
    /// Point tool (else box tool).
    pub point_tool: bool,
    pub drag_from: Option<[usize; 2]>,
    pub bbox: Option<[usize; 4]>,
    pub points: Vec<([usize; 2], bool)>,
}

impl EditState {
    /// The box and points drawn so far as a prompt for the segmenter (slice pixels).
    pub fn prompt(&self) -> SlicePrompt {
        SlicePrompt {
            bbox: self.bbox.map(|b| b.map(|v| v as f32)),
            points: self
                .points
                .iter()
                .map(|&(p, positive)| PromptPoint {
                    xy: [p[0] as f32, p[1] as f32],
                    positive,
                })
                .collect(),
        }
    }
}

/// A correction of the shown query's segmentation on the cursor's axial slice.
#[derive(Clone, Debug, PartialEq)]
pub struct Correction {
    /// The query's index.
    pub query: usize,
    pub organ: u16,
    /// The axial slice.
    pub k: usize,
    pub prompt: SlicePrompt,
}

impl Case {
    /// Its label map, or an empty one on its grid.
    pub fn labels_or_empty(&self) -> Result<LabelVolume> {
        self.labels.clone().map_or_else(
            || Volume::filled(self.canon.dims, 0u16, self.canon.affine),
            Ok,
        )
    }
}

/// Everything the page holds.
pub struct App {
    pub supports: Vec<Case>,
    pub support_labels: Vec<(String, LabelFile)>,
    pub queries: Vec<Case>,
    pub table: LabelTable,
    /// The label table was chosen by the user (labels.json): RTSTRUCT ROI names keep out.
    pub table_chosen: bool,
    /// The case shown in the viewer.
    pub shown: Option<Shown>,
    pub cursor: [usize; 3],
    /// Index into the viewer's window/level presets.
    pub preset: usize,
    pub opacity: f32,
    pub hidden: Vec<u16>,
    /// Put the cursor in the middle of the volume at the next redraw.
    pub recentre: bool,
    /// Extreme points being clicked: the organ's label and the points so far.
    pub marking: Option<(u16, Vec<[usize; 3]>)>,
    pub query_labels: Vec<(String, LabelFile)>,
    /// Organs the user unticked in the organ choice.
    pub unselected: Vec<u16>,
    pub hide_boxes: bool,
    pub edit: EditState,
    pub running: bool,
    /// Cancel was pressed during the current run.
    pub cancel_requested: bool,
    /// The options last put in the viewer's case choice (rebuilt only when they change).
    pub case_options: String,
}

impl Default for App {
    fn default() -> Self {
        Self {
            supports: Vec::new(),
            support_labels: Vec::new(),
            queries: Vec::new(),
            table: LabelTable::default(),
            table_chosen: false,
            shown: None,
            cursor: [0; 3],
            preset: 0,
            opacity: 0.45,
            hidden: Vec::new(),
            recentre: false,
            marking: None,
            query_labels: Vec::new(),
            unselected: Vec::new(),
            hide_boxes: false,
            edit: EditState::default(),
            running: false,
            cancel_requested: false,
            case_options: String::new(),
        }
    }
}

impl App {
    /// The case shown in the viewer, if any.
    pub fn shown_case(&self) -> Option<&Case> {
        match self.shown? {
            Shown::Support(n) => self.supports.get(n),
            Shown::Query(n) => self.queries.get(n),
        }
    }

    /// The case a choice value ([`Shown::key`]) names, if it is loaded.
    pub fn case_of_key(&self, key: &str) -> Option<Shown> {
        let (support, n) = match key.split_at_checked(1)? {
            ("s", n) => (true, n),
            ("q", n) => (false, n),
            _ => return None,
        };
        let n: usize = n.parse().ok()?;
        if support {
            (n < self.supports.len()).then_some(Shown::Support(n))
        } else {
            (n < self.queries.len()).then_some(Shown::Query(n))
        }
    }

    /// Every loaded case for the viewer's choice: supports, then queries.
    pub fn all_cases(&self) -> impl Iterator<Item = (Shown, &Case)> {
        let supports = self.supports.iter().enumerate();
        let queries = self.queries.iter().enumerate();
        supports
            .map(|(n, c)| (Shown::Support(n), c))
            .chain(queries.map(|(n, c)| (Shown::Query(n), c)))
    }

    /// Organs the supports offer (label maps and clicked points), in label order.
    pub fn offered_organs(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
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

    /// The organs a run is asked for (offered and not unticked), once supports and
    /// queries are loaded.
    pub fn run_organs(&self) -> Result<Vec<u16>> {
        if self.supports.is_empty() {
            return Err(Error::InvalidArgument(
                "load support CTs (with label maps, or mark an organ by 6 points) first".into(),
            ));
        }
        if self.queries.is_empty() {
            return Err(Error::InvalidArgument("load query CTs first".into()));
        }
        Ok(self
            .offered_organs()
            .into_iter()
            .filter(|l| !self.unselected.contains(l))
            .collect())
    }

    /// Organs the correction panel offers for the shown query: those the supports offer
    /// and those its result holds (none when a support or nothing is shown).
    pub fn edit_organs(&self) -> Vec<u16> {
        let Some(c) = self
            .shown_case()
            .filter(|_| self.shown.is_some_and(Shown::is_query))
        else {
            return Vec::new();
        };
        let mut v = self.offered_organs();
        v.extend(
            c.result
                .iter()
                .flat_map(|r| r.organs.iter().map(|o| o.label)),
        );
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The correction drawn on the shown query, as the segmenter takes it.
    pub fn correction(&self) -> Result<Correction> {
        let Some(Shown::Query(query)) = self.shown.filter(|_| self.shown_case().is_some()) else {
            return Err(Error::InvalidArgument(
                "show a query to correct its segmentation".into(),
            ));
        };
        let organ = self.edit.organ.ok_or_else(|| {
            Error::InvalidArgument("choose the organ to correct in the correction panel".into())
        })?;
        Ok(Correction {
            query,
            organ,
            k: self.cursor[2],
            prompt: self.edit.prompt(),
        })
    }

    /// The cursor for drawing the shown case (its middle after [`App::recentre`], else
    /// the cursor kept inside the volume), now the app's cursor; `None` with no case shown.
    pub fn settle_cursor(&mut self) -> Option<[usize; 3]> {
        let dims = self.shown_case()?.canon.dims;
        let cursor = if self.recentre {
            dims.map(|d| d / 2)
        } else {
            [0, 1, 2].map(|t| self.cursor[t].min(dims[t] - 1))
        };
        self.cursor = cursor;
        self.recentre = false;
        Some(cursor)
    }
}

/// The prior weight the page's Mask choice asks for: `None` (automatic, as the CLI without
/// `--prior-weight`), the prior alone (1) or LiteMedSAM in the prior's boxes (0).
pub fn mask_choice(value: &str) -> Result<Option<f32>> {
    match value {
        "auto" => Ok(None),
        "prior" => Ok(Some(1.0)),
        "sam" => Ok(Some(0.0)),
        other => Err(Error::InvalidArgument(format!(
            "unknown mask choice {other:?}"
        ))),
    }
}

/// The box mode the run panel asks for: `wpl`, else SPL with the slab thickness (mm) given.
pub fn box_mode(mode: &str, slab_mm: &str) -> Result<BoxMode> {
    if mode == "wpl" {
        return Ok(BoxMode::Wpl);
    }
    let mm: f64 = slab_mm.trim().parse().unwrap_or(f64::NAN);
    if !(mm.is_finite() && mm > 0.0) {
        return Err(Error::InvalidArgument(
            "the slab thickness must be a positive number of mm".into(),
        ));
    }
    Ok(BoxMode::Spl { slab_mm: mm })
}

#[cfg(test)]
mod tests;
