//! Label-map utilities: classes present, voxel counts, 3-D bounding boxes, the
//! 6 extreme points of an organ, and per-slice 2-D boxes. Indices are voxel
//! indices of the volume passed in (callers pass the canonical volume when they
//! need axial slices; axis 2 is the slice axis here).

use serde::{Deserialize, Serialize};

use super::{LabelVolume, Volume};

/// Labels present (value > 0) with their voxel counts, in increasing value order.
pub fn classes(labels: &LabelVolume) -> Vec<(u16, usize)> {
    let mut counts = vec![0usize; 65536];
    for &v in &labels.data {
        counts[v as usize] += 1;
    }
    counts
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, c)| **c > 0)
        .map(|(v, &c)| (v as u16, c))
        .collect()
}

/// An inclusive box of voxel indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxVox {
    pub min: [usize; 3],
    pub max: [usize; 3],
}

impl BoxVox {
    /// Voxels along each axis.
    pub fn size(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.max[a] - self.min[a] + 1)
    }

    /// Number of voxels inside.
    pub fn voxel_count(&self) -> usize {
        self.size().iter().product()
    }

    /// The box of the voxels in both, if any.
    pub fn intersection(&self, other: &BoxVox) -> Option<BoxVox> {
        let min = [0, 1, 2].map(|a| self.min[a].max(other.min[a]));
        let max = [0, 1, 2].map(|a| self.max[a].min(other.max[a]));
        (0..3)
            .all(|a| min[a] <= max[a])
            .then_some(BoxVox { min, max })
    }
}

/// An inclusive 2-D box on axial slice `k`: `min`/`max` are `[i, j]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceBox {
    pub k: usize,
    pub min: [usize; 2],
    pub max: [usize; 2],
}

/// A query label map in the supports' values: each `(support, query)` pair maps
/// `query` to `support`; other labels become background. Empty map: unchanged.
pub fn to_support_values(labels: LabelVolume, map: &[(u16, u16)]) -> LabelVolume {
    if map.is_empty() {
        return labels;
    }
    labels.map(|v| map.iter().find(|(_, q)| *q == v).map_or(0, |(s, _)| *s))
}

/// Bounding box of the voxels where `pred` holds.
pub fn bounding_box_where<T: Copy>(vol: &Volume<T>, pred: impl Fn(T) -> bool) -> Option<BoxVox> {
    let [nx, ny, _] = vol.dims;
    let mut min = [usize::MAX; 3];
    let mut max = [0usize; 3];
    let mut any = false;
    for (idx, &v) in vol.data.iter().enumerate() {
        if pred(v) {
            let p = [idx % nx, (idx / nx) % ny, idx / (nx * ny)];
            for a in 0..3 {
                min[a] = min[a].min(p[a]);
                max[a] = max[a].max(p[a]);
            }
            any = true;
        }
    }
    any.then_some(BoxVox { min, max })
}

/// Bounding box of one label.
pub fn bounding_box(labels: &LabelVolume, label: u16) -> Option<BoxVox> {
    bounding_box_where(labels, |v| v == label)
}

/// The 6 extreme points of one label, ordered `[i_min, i_max, j_min, j_max,
/// k_min, k_max]`. On each extreme plane the point is the median mask voxel in
/// raster order of the other two axes (as the reference MedLSAM does), so it
/// always lies inside the organ.
pub fn extreme_points(labels: &LabelVolume, label: u16) -> Option<[[usize; 3]; 6]> {
    let bb = bounding_box(labels, label)?;
    let mut out = [[0usize; 3]; 6];
    for a in 0..3 {
        for (m, plane) in [bb.min[a], bb.max[a]].into_iter().enumerate() {
            // Other axes in the reference's order: slowest (a+2)%3, fastest (a+1)%3.
            let (slow, fast) = ((a + 2) % 3, (a + 1) % 3);
            let mut pts = Vec::new();
            for s in bb.min[slow]..=bb.max[slow] {
                for f in bb.min[fast]..=bb.max[fast] {
                    let mut p = [0; 3];
                    p[a] = plane;
                    p[slow] = s;
                    p[fast] = f;
                    if labels.get(p[0], p[1], p[2]) == label {
                        pts.push(p);
                    }
                }
            }
            out[2 * a + m] = pts[pts.len() / 2];
        }
    }
    Some(out)
}

/// Per axial slice (axis 2) where the label is present, its inclusive 2-D box.
pub fn slice_boxes(labels: &LabelVolume, label: u16) -> Vec<SliceBox> {
    let [nx, ny, nz] = labels.dims;
    let mut out = Vec::new();
    for k in 0..nz {
        let s = labels.axial_slice(k);
        let mut min = [usize::MAX; 2];
        let mut max = [0usize; 2];
        for j in 0..ny {
            for i in 0..nx {
                if s[i + nx * j] == label {
                    min = [min[0].min(i), min[1].min(j)];
                    max = [max[0].max(i), max[1].max(j)];
                }
            }
        }
        if min[0] != usize::MAX {
            out.push(SliceBox { k, min, max });
        }
    }
    out
}

/// A boolean mask of one label.
pub fn mask_of(labels: &LabelVolume, label: u16) -> Volume<bool> {
    labels.map(|v| v == label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    fn toy() -> LabelVolume {
        let mut v = Volume::filled([6, 5, 4], 0u16, Affine::identity()).unwrap();
        for (i, j, k) in [
            (1, 1, 1),
            (2, 1, 1),
            (3, 2, 1),
            (2, 3, 2),
            (4, 2, 2),
            (2, 2, 3),
        ] {
            let idx = v.index(i, j, k);
            v.data[idx] = 3;
        }
        let idx = v.index(5, 4, 0);
        v.data[idx] = 7;
        v
    }

    #[test]
    fn classes_boxes_and_slices() {
        let v = toy();
        assert_eq!(classes(&v), vec![(3, 6), (7, 1)]);
        let b = bounding_box(&v, 3).unwrap();
        assert_eq!(
            b,
            BoxVox {
                min: [1, 1, 1],
                max: [4, 3, 3]
            }
        );
        assert_eq!(b.voxel_count(), 4 * 3 * 3);
        assert_eq!(bounding_box(&v, 9), None);
        let sb = slice_boxes(&v, 3);
        assert_eq!(sb.len(), 3);
        assert_eq!(
            sb[0],
            SliceBox {
                k: 1,
                min: [1, 1],
                max: [3, 2]
            }
        );
        assert_eq!(
            sb[2],
            SliceBox {
                k: 3,
                min: [2, 2],
                max: [2, 2]
            }
        );
    }

    #[test]
    fn extreme_points_lie_on_the_box_faces_inside_the_organ() {
        let v = toy();
        let e = extreme_points(&v, 3).unwrap();
        assert_eq!(e[0], [1, 1, 1]); // only voxel with i = 1
        assert_eq!(e[1], [4, 2, 2]); // only voxel with i = 4
        assert_eq!(e[3], [2, 3, 2]); // only voxel with j = 3
        assert_eq!(e[5], [2, 2, 3]); // only voxel with k = 3
        // k_min plane (k = 1) holds (1,1),(2,1),(3,2) in (j slow, i fast) order: median is (2,1).
        assert_eq!(e[4], [2, 1, 1]);
        // j_min plane (j = 1): (1,1,1),(2,1,1); order k slow... both k = 1, i fast: median index 1 → (2,1,1).
        assert_eq!(e[2], [2, 1, 1]);
    }
}
