//! Localizers from boxes that are already known: the true boxes of a label map
//! on the query's grid ([`OracleLocalizer`], the paper's "manual prompt" ceiling)
//! and boxes a user gave ([`GivenBoxes`]), all in canonical voxel indices.

use crate::medlam::boxes::wpl_slice_boxes;
use crate::types::{BoxMode, Localizer, OrganBoxes, OrganLocalization};
use crate::volume::labels::{BoxVox, SliceBox, bounding_box, extreme_points, slice_boxes};
use crate::volume::{CtVolume, LabelVolume};
use crate::{Error, Result};

/// A localizer that returns boxes it was given (canonical indices).
pub struct GivenBoxes(pub Vec<OrganBoxes>);

impl Localizer for GivenBoxes {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        let [nx, ny, nz] = query.dims;
        let mut out = Vec::new();
        for o in self.0.iter().filter(|o| organs.contains(&o.label)) {
            if let Some(b) = o.boxes.iter().find(|b| {
                b.k >= nz
                    || b.max[0] >= nx
                    || b.max[1] >= ny
                    || b.min[0] > b.max[0]
                    || b.min[1] > b.max[1]
            }) {
                return Err(Error::InvalidArgument(format!(
                    "box {b:?} of organ {} is not inside the {nx}×{ny}×{nz} canonical grid",
                    o.label
                )));
            }
            let (Some(k0), Some(k1)) = (
                o.boxes.iter().map(|b| b.k).min(),
                o.boxes.iter().map(|b| b.k).max(),
            ) else {
                continue;
            };
            let bbox = BoxVox {
                min: [
                    o.boxes.iter().map(|b| b.min[0]).min().unwrap_or(0),
                    o.boxes.iter().map(|b| b.min[1]).min().unwrap_or(0),
                    k0,
                ],
                max: [
                    o.boxes.iter().map(|b| b.max[0]).max().unwrap_or(0),
                    o.boxes.iter().map(|b| b.max[1]).max().unwrap_or(0),
                    k1,
                ],
            };
            // No extreme points are known: use the centres of the 3-D box's faces.
            let c = [0, 1, 2].map(|a| (bbox.min[a] + bbox.max[a]) / 2);
            let mut extreme = [c; 6];
            for a in 0..3 {
                extreme[2 * a][a] = bbox.min[a];
                extreme[2 * a + 1][a] = bbox.max[a];
            }
            out.push(OrganLocalization::placed(
                o.label,
                bbox,
                extreme,
                o.boxes.clone(),
                "given",
            ));
        }
        Ok(out)
    }
}

/// A localizer that returns localizations made before (e.g. one registration shared by
/// several evaluation modes), restricted to the organs asked for.
pub struct Found(pub Vec<OrganLocalization>);

impl Localizer for Found {
    async fn localize(
        &mut self,
        _query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        Ok(self
            .0
            .iter()
            .filter(|o| organs.contains(&o.label))
            .cloned()
            .collect())
    }
}

/// Localizer that reads the true organ boxes from a label map on the query's grid:
/// the "manual prompt" ceiling of the paper (never used for unlabeled queries).
pub struct OracleLocalizer {
    labels: LabelVolume,
    mode: BoxMode,
}

impl OracleLocalizer {
    /// `labels` must be on the query file's grid.
    pub fn new(query: &CtVolume, labels: &LabelVolume, mode: BoxMode) -> Result<Self> {
        query.check_same_grid(labels, "query image and label")?;
        Ok(Self {
            labels: labels.to_canonical().0,
            mode,
        })
    }
}

impl Localizer for OracleLocalizer {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        if query.dims != self.labels.dims {
            return Err(Error::Mismatch(
                "oracle labels are not on the query's grid".into(),
            ));
        }
        Ok(localize_from_labels(
            &self.labels,
            organs,
            self.mode,
            "oracle",
        ))
    }
}

/// The localization of each of `organs` present in a **canonical** label map: its
/// extreme points, 3-D box and per-slice boxes for `mode` (SPL: true boxes per slab),
/// tagged with `source`. Organs absent from the map are left out.
pub fn localize_from_labels(
    labels: &LabelVolume,
    organs: &[u16],
    mode: BoxMode,
    source: &'static str,
) -> Vec<OrganLocalization> {
    let mut out = Vec::new();
    for &label in organs {
        let (Some(bbox), Some(extreme)) =
            (bounding_box(labels, label), extreme_points(labels, label))
        else {
            continue;
        };
        let slice_boxes = match mode {
            BoxMode::Wpl => wpl_slice_boxes(&bbox),
            BoxMode::Spl { slab_mm } => spl_true_boxes(labels, label, &bbox, slab_mm),
        };
        out.push(OrganLocalization::placed(
            label,
            bbox,
            extreme,
            slice_boxes,
            source,
        ));
    }
    out
}

/// True per-slab boxes: slabs of `slab_mm` along axis 2 starting at the organ's first
/// slice; each slab's 2-D box on each of its slices. `slab_mm = 0` gives per-slice boxes.
pub fn spl_true_boxes(
    labels: &LabelVolume,
    label: u16,
    bbox: &BoxVox,
    slab_mm: f64,
) -> Vec<SliceBox> {
    let per = slice_boxes(labels, label);
    let sz = labels.spacing_mm()[2];
    let slab = ((slab_mm / sz).round() as usize).max(1);
    let mut out = Vec::new();
    let mut k0 = bbox.min[2];
    while k0 <= bbox.max[2] {
        let k1 = (k0 + slab - 1).min(bbox.max[2]);
        let in_slab: Vec<&SliceBox> = per.iter().filter(|s| s.k >= k0 && s.k <= k1).collect();
        if let (Some(i0), Some(j0), Some(i1), Some(j1)) = (
            in_slab.iter().map(|s| s.min[0]).min(),
            in_slab.iter().map(|s| s.min[1]).min(),
            in_slab.iter().map(|s| s.max[0]).max(),
            in_slab.iter().map(|s| s.max[1]).max(),
        ) {
            for k in k0..=k1 {
                out.push(SliceBox {
                    k,
                    min: [i0, j0],
                    max: [i1, j1],
                });
            }
        }
        k0 = k1 + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::synthetic::{PhantomOptions, phantom};

    #[test]
    fn spl_boxes_are_tighter_than_wpl() {
        let (_, lab) = phantom(&PhantomOptions::default()).unwrap();
        let (c, _) = lab.to_canonical();
        let bb = bounding_box(&c, 1).unwrap();
        let wpl = wpl_slice_boxes(&bb);
        let spl = spl_true_boxes(&c, 1, &bb, 6.0);
        assert_eq!(wpl.len(), spl.len());
        let area = |v: &[SliceBox]| -> usize {
            v.iter()
                .map(|s| (s.max[0] - s.min[0] + 1) * (s.max[1] - s.min[1] + 1))
                .sum()
        };
        assert!(area(&spl) < area(&wpl));
        // Two slices per 6 mm slab at 3 mm: neighbours in a slab share a box.
        assert_eq!(spl[0].min, spl[1].min);
    }
}
