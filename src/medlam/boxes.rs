//! Boxes from extreme points, and the sub-patch (SPL) slabs.
//!
//! - **WPL**: one 3-D box from an organ's 6 extreme points; every axial slice
//!   it spans gets the same 2-D box.
//! - **SPL**: on each support the organ is cut along the slice axis (canonical
//!   axis 2) into `S` slabs of equal slice count, `S = ⌊shortest support extent
//!   / slab_mm⌋` clamped to `1..=max_slabs` (the reference caps the count at
//!   6); slab `s` of every support describes the same part of the organ. Each
//!   slab is localized on its own (6 points → a box), and each query slice gets
//!   the 2-D box of the slab(s) covering it.
//!
//! Every index here is a canonical voxel index of one volume (axis 2 = slices);
//! boxes are inclusive. The paper's margin (10 px at 1024²) is **not** added
//! here: `pipeline::segment_query` enlarges the 2-D boxes when it prompts the
//! segmenter, and `boxes.json` stores these unenlarged boxes.

use crate::volume::LabelVolume;
use crate::volume::labels::{BoxVox, SliceBox, bounding_box, extreme_points};

/// Default SPL slab thickness (mm), as the paper.
pub const DEFAULT_SLAB_MM: f64 = 6.0;
/// Largest number of SPL slabs per organ (as the reference).
pub const MAX_SLABS: usize = 6;

/// Per-slice 2-D boxes of a whole-organ (WPL) localization: its 3-D box on every
/// slice it spans (canonical indices).
pub fn wpl_slice_boxes(bbox: &BoxVox) -> Vec<SliceBox> {
    (bbox.min[2]..=bbox.max[2])
        .map(|k| SliceBox {
            k,
            min: [bbox.min[0], bbox.min[1]],
            max: [bbox.max[0], bbox.max[1]],
        })
        .collect()
}

/// The inclusive box spanned by 6 extreme points `[i_min, i_max, j_min, j_max, k_min, k_max]`
/// (each axis from its own pair of points, ordered).
pub fn box_from_points(points: &[[usize; 3]; 6]) -> BoxVox {
    let mut min = [0; 3];
    let mut max = [0; 3];
    for a in 0..3 {
        let (x, y) = (points[2 * a][a], points[2 * a + 1][a]);
        min[a] = x.min(y);
        max[a] = x.max(y);
    }
    BoxVox { min, max }
}

/// Number of SPL slabs for an organ whose slice-axis extents on the supports are
/// `extents_mm`.
pub fn slab_count(extents_mm: &[f64], slab_mm: f64, max_slabs: usize) -> usize {
    let shortest = extents_mm.iter().copied().fold(f64::INFINITY, f64::min);
    if slab_mm.is_nan() || slab_mm <= 0.0 || !shortest.is_finite() {
        return 1;
    }
    ((shortest / slab_mm).floor() as usize).clamp(1, max_slabs.max(1))
}

/// Inclusive slice ranges of `n` slabs of (nearly) equal slice count over `k_min..=k_max`.
pub fn slab_ranges(k_min: usize, k_max: usize, n: usize) -> Vec<(usize, usize)> {
    let len = k_max + 1 - k_min;
    let n = n.clamp(1, len);
    (0..n)
        .map(|s| (k_min + s * len / n, k_min + (s + 1) * len / n - 1))
        .collect()
}

/// The organ's extreme points within each of `n` slabs (see [`slab_ranges`]).
pub fn slab_extreme_points(labels: &LabelVolume, label: u16, n: usize) -> Vec<[[usize; 3]; 6]> {
    let Some(bb) = bounding_box(labels, label) else {
        return Vec::new();
    };
    let plane = labels.dims[0] * labels.dims[1];
    slab_ranges(bb.min[2], bb.max[2], n)
        .into_iter()
        .filter_map(|(k0, k1)| {
            let mut part = labels.clone();
            for (idx, v) in part.data.iter_mut().enumerate() {
                let k = idx / plane;
                if k < k0 || k > k1 {
                    *v = 0;
                }
            }
            extreme_points(&part, label)
        })
        .collect()
}

/// The 6 extreme points of an organ localized as slabs: the outermost of the slabs'
/// points along each axis direction.
pub fn merge_extreme_points(parts: &[[[usize; 3]; 6]]) -> Option<[[usize; 3]; 6]> {
    let first = parts.first()?;
    let mut out = *first;
    for p in &parts[1..] {
        for a in 0..3 {
            if p[2 * a][a] < out[2 * a][a] {
                out[2 * a] = p[2 * a];
            }
            if p[2 * a + 1][a] > out[2 * a + 1][a] {
                out[2 * a + 1] = p[2 * a + 1];
            }
        }
    }
    Some(out)
}

/// Per-slice 2-D boxes from slab boxes: a slice covered by several slabs gets the union
/// of their boxes; a slice between slabs (inside the overall range) takes the nearest slab's.
pub fn spl_slice_boxes(parts: &[BoxVox]) -> Vec<SliceBox> {
    let (Some(k0), Some(k1)) = (
        parts.iter().map(|b| b.min[2]).min(),
        parts.iter().map(|b| b.max[2]).max(),
    ) else {
        return Vec::new();
    };
    (k0..=k1)
        .map(|k| {
            let covering: Vec<&BoxVox> = parts
                .iter()
                .filter(|b| b.min[2] <= k && k <= b.max[2])
                .collect();
            let chosen: Vec<&BoxVox> = if covering.is_empty() {
                let dist = |b: &BoxVox| b.min[2].abs_diff(k).min(b.max[2].abs_diff(k));
                let best = parts.iter().map(dist).min().unwrap_or(0);
                parts.iter().filter(|b| dist(b) == best).collect()
            } else {
                covering
            };
            SliceBox {
                k,
                min: [
                    chosen.iter().map(|b| b.min[0]).min().unwrap_or(0),
                    chosen.iter().map(|b| b.min[1]).min().unwrap_or(0),
                ],
                max: [
                    chosen.iter().map(|b| b.max[0]).max().unwrap_or(0),
                    chosen.iter().map(|b| b.max[1]).max().unwrap_or(0),
                ],
            }
        })
        .collect()
}

/// The bounding box of several boxes.
pub fn union_box(boxes: &[BoxVox]) -> Option<BoxVox> {
    let first = boxes.first()?;
    let mut u = *first;
    for b in &boxes[1..] {
        for a in 0..3 {
            u.min[a] = u.min[a].min(b.min[a]);
            u.max[a] = u.max[a].max(b.max[a]);
        }
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, Volume};

    #[test]
    fn box_from_points_orders_each_axis() {
        let pts = [
            [5, 2, 3],
            [1, 2, 3],
            [2, 0, 3],
            [2, 7, 3],
            [2, 2, 9],
            [2, 2, 4],
        ];
        let b = box_from_points(&pts);
        assert_eq!(b.min, [1, 0, 4]);
        assert_eq!(b.max, [5, 7, 9]);
    }

    #[test]
    fn slabs_split_evenly_and_are_capped() {
        assert_eq!(slab_count(&[40.0, 31.0], 6.0, 6), 5);
        assert_eq!(slab_count(&[400.0], 6.0, 6), 6);
        assert_eq!(slab_count(&[4.0], 6.0, 6), 1);
        assert_eq!(slab_count(&[], 6.0, 6), 1);
        assert_eq!(slab_ranges(10, 19, 3), vec![(10, 12), (13, 15), (16, 19)]);
        assert_eq!(slab_ranges(4, 5, 6), vec![(4, 4), (5, 5)]);
    }

    #[test]
    fn slab_points_cover_the_organ_and_merge_back_to_its_extremes() {
        // A slanted bar: voxel (i, j, k) in the organ for k in 2..=9, i in k..k+2, j in 1..=3.
        let mut v = Volume::filled([14, 6, 12], 0u16, Affine::identity()).unwrap();
        for k in 2..=9 {
            for j in 1..=3 {
                for i in k..k + 3 {
                    let idx = v.index(i, j, k);
                    v.data[idx] = 4;
                }
            }
        }
        let parts = slab_extreme_points(&v, 4, 4);
        assert_eq!(parts.len(), 4);
        // Slab 0 holds k = 2, 3: its i-range is 2..=5.
        assert_eq!(box_from_points(&parts[0]).min, [2, 1, 2]);
        assert_eq!(box_from_points(&parts[0]).max, [5, 3, 3]);
        let merged = merge_extreme_points(&parts).unwrap();
        assert_eq!(box_from_points(&merged), bounding_box(&v, 4).unwrap());
        // SPL 2-D boxes are tighter than the WPL box on every slice.
        let boxes: Vec<BoxVox> = parts.iter().map(box_from_points).collect();
        let sb = spl_slice_boxes(&boxes);
        assert_eq!(sb.len(), 8);
        assert_eq!(sb[0].min, [2, 1]);
        assert_eq!(sb[7].max, [11, 3]);
        assert_eq!(union_box(&boxes).unwrap(), bounding_box(&v, 4).unwrap());
    }

    #[test]
    fn spl_fills_gaps_and_unites_overlaps() {
        let b = |i0, i1, k0, k1| BoxVox {
            min: [i0, 0, k0],
            max: [i1, 1, k1],
        };
        let sb = spl_slice_boxes(&[b(0, 2, 0, 2), b(5, 6, 6, 7), b(1, 3, 2, 3)]);
        assert_eq!(sb.len(), 8);
        assert_eq!((sb[2].min[0], sb[2].max[0]), (0, 3)); // k = 2: union of slabs 0 and 2
        assert_eq!((sb[4].min[0], sb[4].max[0]), (1, 3)); // gap: nearest is slab 2 (k = 3)
        assert_eq!((sb[5].min[0], sb[5].max[0]), (5, 6)); // gap: nearest is slab 1 (k = 6)
    }
}
