//! The types every layer shares, at the bottom of the crate: how boxes are made
//! ([`BoxMode`]), where an organ is in a query ([`OrganLocalization`], canonical
//! voxels), the two stages' traits ([`Localizer`], [`SliceSegmenter`]) and what a
//! run reports ([`Progress`], [`StageTimes`]). Only the volume types sit below them.
//!
//! The traits are `async` because in the browser every GPU read-back is
//! asynchronous; native callers drive them with `pollster::block_on`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::volume::labels::{BoxVox, SliceBox};
use crate::volume::{CtVolume, Volume};
use crate::{Error, Result};

/// Where one organ is in a query, in **canonical** voxel indices of the query.
#[derive(Clone, Debug, Serialize)]
pub struct OrganLocalization {
    pub label: u16,
    /// Higher is more certain; 0 when the organ could not be found.
    pub confidence: f32,
    /// Fraction of the organ's predicted box inside the scan (1 for given boxes).
    /// Below [`MIN_IN_VIEW`] the organ is outside the field of view: no slice
    /// boxes, confidence 0, no mask.
    pub in_view: f32,
    pub extreme_points: [[usize; 3]; 6],
    pub bbox: BoxVox,
    /// One 2-D box per axial slice to segment (inclusive, `[i, j]`).
    pub slice_boxes: Vec<SliceBox>,
    /// What placed the organ: `medlam`, `register` (registered supports), `oracle`
    /// (true boxes) or `given` (boxes from the user).
    pub source: &'static str,
    /// Why the preferred localizer was not used for this organ (e.g. registration failed
    /// and MedLAM took over), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The organ's prior probability on the query's canonical grid (registered supports'
    /// labels, fused); the segmentation combines it with the segmenter's probabilities.
    #[serde(skip)]
    pub prior: Option<Arc<Volume<f32>>>,
    /// How the mask of an organ with a prior was drawn when not from the prior alone, e.g.
    /// "LiteMedSAM inside the registration's boxes" (set by the segmentation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_from: Option<String>,
}

/// Organs whose predicted box lies less than this fraction inside the query scan
/// are reported as outside its field of view and not segmented.
pub const MIN_IN_VIEW: f32 = 0.5;

impl OrganLocalization {
    /// An organ placed with certainty (confidence 1, inside the scan), with no warning,
    /// prior or note: true boxes, boxes a user gave.
    pub fn placed(
        label: u16,
        bbox: BoxVox,
        extreme_points: [[usize; 3]; 6],
        slice_boxes: Vec<SliceBox>,
        source: &'static str,
    ) -> Self {
        Self {
            label,
            confidence: 1.0,
            in_view: 1.0,
            extreme_points,
            bbox,
            slice_boxes,
            source,
            warning: None,
            prior: None,
            mask_from: None,
        }
    }

    /// Whether the organ was predicted (mostly) outside the query's field of view.
    pub fn outside_view(&self) -> bool {
        self.in_view < MIN_IN_VIEW
    }
}

/// Finds organs in a query CT given on the canonical grid.
#[allow(async_fn_in_trait)] // used through generics only, never as `dyn`
pub trait Localizer {
    /// Localize `organs` in `query` (canonical grid); organs not found are left out.
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>>;
}

/// Segments one 2-D slice from a box prompt.
#[allow(async_fn_in_trait)] // used through generics only, never as `dyn`
pub trait SliceSegmenter {
    type Embedding;
    /// Encode an axial slice: HU values row-major `[j][i]`, `width` = columns (i), `height` = rows (j).
    async fn encode(
        &mut self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<Self::Embedding>;
    /// Slices worth encoding together with [`Self::encode_many`] (1: one at a time).
    fn slices_in_flight(&self) -> usize {
        1
    }
    /// Encode several slices of one size (default: one after the other).
    async fn encode_many(
        &mut self,
        slices: &[Vec<f32>],
        width: usize,
        height: usize,
    ) -> Result<Vec<Self::Embedding>> {
        let mut out = Vec::with_capacity(slices.len());
        for s in slices {
            out.push(self.encode(s, width, height).await?);
        }
        Ok(out)
    }
    /// Foreground probability per slice pixel (row-major, slice size) for the box
    /// `[i_min, j_min, i_max, j_max]` in slice pixel coordinates (inclusive corners).
    async fn decode_box(&mut self, embedding: &Self::Embedding, bbox: [f32; 4])
    -> Result<Vec<f32>>;
    /// Probabilities for several boxes of one slice, in order (default: one
    /// [`Self::decode_box`] each; segmenters may decode them as one batch).
    async fn decode_boxes(
        &mut self,
        embedding: &Self::Embedding,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(boxes.len());
        for &b in boxes {
            out.push(self.decode_box(embedding, b).await?);
        }
        Ok(out)
    }
}

/// How 2-D boxes are derived from a localization.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum BoxMode {
    /// Whole-patch: the organ's 3-D box on every slice it spans.
    Wpl,
    /// Sub-patch: a box per slab of this many mm along the slice axis.
    Spl { slab_mm: f64 },
}

impl BoxMode {
    /// SPL with slabs of `slab_mm`, refused unless positive and finite.
    pub fn spl(slab_mm: f64) -> Result<Self> {
        if !(slab_mm > 0.0 && slab_mm.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "slab thickness must be positive, got {slab_mm} mm"
            )));
        }
        Ok(Self::Spl { slab_mm })
    }

    /// Parse `spl` or `wpl` (any case); SPL slabs of `slab_mm` (default 6 mm).
    pub fn parse(mode: &str, slab_mm: Option<f64>) -> Result<Self> {
        match mode.trim().to_ascii_lowercase().as_str() {
            "wpl" => Ok(Self::Wpl),
            "spl" => Self::spl(slab_mm.unwrap_or(6.0)),
            m => Err(Error::InvalidArgument(format!(
                "box mode {m:?} is neither spl nor wpl"
            ))),
        }
    }
}

/// Which localizer places the organs of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalizerChoice {
    /// MedLAM (landmark search with the support atlas).
    Medlam,
    /// The supports registered to the query, their labels fused into organ priors;
    /// the priors give the boxes and are combined with the segmenter's masks.
    Register,
    /// Registration, with MedLAM for what it cannot place (registration failed, an
    /// organ the registered supports do not agree on, supports given as points).
    Both,
}

impl LocalizerChoice {
    /// Parse `medlam`, `register` or `both` (any case).
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "medlam" => Ok(Self::Medlam),
            "register" => Ok(Self::Register),
            "both" => Ok(Self::Both),
            t => Err(Error::InvalidArgument(format!(
                "localizer {t:?} is none of medlam, register, both"
            ))),
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Medlam => "medlam",
            Self::Register => "register",
            Self::Both => "both",
        }
    }
}

/// Progress of one query.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
}

/// Time spent per stage.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageTimes {
    pub localize: Duration,
    pub encode: Duration,
    pub decode: Duration,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: Self) {
        self.localize += o.localize;
        self.encode += o.encode;
        self.decode += o.decode;
    }
}

/// 2-D boxes of one organ on axial slices, in **canonical** voxel indices (e.g. drawn by a user).
#[derive(Clone, Debug)]
pub struct OrganBoxes {
    pub label: u16,
    pub boxes: Vec<SliceBox>,
}
