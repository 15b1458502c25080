//! Evaluation metrics in physical units, as defined in the MedLSAM paper:
//! DSC (%) of masks, HD95 (mm) of mask surfaces, IoU (%) of 3-D boxes, WD (mm,
//! mean absolute distance between the 6 box faces) and ALE (mm, mean distance
//! over the 6 extreme points). Masks and boxes are on one voxel grid; spacing
//! or the affine turns voxels into millimetres.

use serde::Serialize;

use crate::types::OrganLocalization;
use crate::volume::labels::{BoxVox, SliceBox, bounding_box, extreme_points, mask_of, slice_boxes};
use crate::volume::{Affine, LabelVolume, Volume};
use crate::{Error, Result};

fn check_pair(a: &Volume<bool>, b: &Volume<bool>) -> Result<()> {
    if a.dims != b.dims {
        return Err(Error::Mismatch(format!(
            "masks have different shapes {:?} and {:?}",
            a.dims, b.dims
        )));
    }
    Ok(())
}

/// Dice similarity coefficient in %; `None` when both masks are empty.
pub fn dice_pct(pred: &Volume<bool>, truth: &Volume<bool>) -> Result<Option<f64>> {
    check_pair(pred, truth)?;
    let (mut inter, mut np, mut nt) = (0usize, 0usize, 0usize);
    for (&p, &t) in pred.data.iter().zip(&truth.data) {
        inter += (p && t) as usize;
        np += p as usize;
        nt += t as usize;
    }
    Ok((np + nt > 0).then(|| 200.0 * inter as f64 / (np + nt) as f64))
}

/// Voxels of the mask with a 6-neighbour outside it (the grid border counts as outside).
fn surface(m: &Volume<bool>) -> Vec<usize> {
    let [nx, ny, nz] = m.dims;
    let mut out = Vec::new();
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let idx = m.index(i, j, k);
                if !m.data[idx] {
                    continue;
                }
                let inside = |di: isize, dj: isize, dk: isize| {
                    let (a, b, c) = (i as isize + di, j as isize + dj, k as isize + dk);
                    a >= 0
                        && b >= 0
                        && c >= 0
                        && (a as usize) < nx
                        && (b as usize) < ny
                        && (c as usize) < nz
                        && m.get(a as usize, b as usize, c as usize)
                };
                let border = !(inside(-1, 0, 0)
                    && inside(1, 0, 0)
                    && inside(0, -1, 0)
                    && inside(0, 1, 0)
                    && inside(0, 0, -1)
                    && inside(0, 0, 1));
                if border {
                    out.push(idx);
                }
            }
        }
    }
    out
}

/// Squared Euclidean distance (mm²) from every voxel of a box-shaped grid to the
/// nearest feature voxel (exact, separable lower-envelope algorithm of
/// Felzenszwalb and Huttenlocher with per-axis spacing).
fn squared_edt(feature: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut d: Vec<f64> = feature
        .iter()
        .map(|&f| if f { 0.0 } else { f64::INFINITY })
        .collect();
    let strides = [1, dims[0], dims[0] * dims[1]];
    for axis in 0..3 {
        let n = dims[axis];
        let s = spacing[axis];
        let (o1, o2) = match axis {
            0 => (1, 2),
            1 => (0, 2),
            _ => (0, 1),
        };
        let mut f = vec![0.0; n];
        let mut out = vec![0.0; n];
        let mut v = vec![0usize; n];
        let mut z = vec![0.0f64; n + 1];
        for b in 0..dims[o2] {
            for a in 0..dims[o1] {
                let base = a * strides[o1] + b * strides[o2];
                for (q, fq) in f.iter_mut().enumerate() {
                    *fq = d[base + q * strides[axis]];
                }
                lower_envelope(&f, s, &mut out, &mut v, &mut z);
                for (q, &o) in out.iter().enumerate() {
                    d[base + q * strides[axis]] = o;
                }
            }
        }
    }
    d
}

fn lower_envelope(f: &[f64], s: f64, out: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    let pos = |q: usize| q as f64 * s;
    // Only finite entries take part.
    let mut kk: isize = -1;
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            if kk < 0 {
                kk = 0;
                v[0] = q;
                z[0] = f64::NEG_INFINITY;
                z[1] = f64::INFINITY;
                break;
            }
            let p = v[kk as usize];
            let x =
                ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            if x <= z[kk as usize] {
                kk -= 1;
                continue;
            }
            kk += 1;
            v[kk as usize] = q;
            z[kk as usize] = x;
            z[kk as usize + 1] = f64::INFINITY;
            break;
        }
    }
    if kk < 0 {
        out.iter_mut().for_each(|o| *o = f64::INFINITY);
        return;
    }
    let mut k = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < pos(q) {
            k += 1;
        }
        let dq = pos(q) - pos(v[k]);
        *o = dq * dq + f[v[k]];
    }
}

/// Distances (mm) from each surface voxel of `from` to the nearest surface voxel of `to`.
fn surface_distances(
    from: &[usize],
    to: &[usize],
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    // Work inside the bounding box of both surfaces (exact: all features and queries lie in it).
    let coord = |idx: usize| {
        [
            idx % dims[0],
            (idx / dims[0]) % dims[1],
            idx / (dims[0] * dims[1]),
        ]
    };
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for &idx in from.iter().chain(to) {
        let c = coord(idx);
        for a in 0..3 {
            lo[a] = lo[a].min(c[a]);
            hi[a] = hi[a].max(c[a]);
        }
    }
    let bd = [0, 1, 2].map(|a| hi[a] - lo[a] + 1);
    let local = |idx: usize| {
        let c = coord(idx);
        (c[0] - lo[0]) + bd[0] * ((c[1] - lo[1]) + bd[1] * (c[2] - lo[2]))
    };
    let mut feature = vec![false; bd.iter().product()];
    for &idx in to {
        feature[local(idx)] = true;
    }
    let d2 = squared_edt(&feature, bd, spacing);
    from.iter().map(|&idx| d2[local(idx)].sqrt()).collect()
}

/// 95th percentile (mm) of the symmetric surface distances (pooled, as medpy's
/// `hd95`); `None` when either mask is empty.
pub fn hd95_mm(
    pred: &Volume<bool>,
    truth: &Volume<bool>,
    spacing_mm: [f64; 3],
) -> Result<Option<f64>> {
    check_pair(pred, truth)?;
    let (sp, st) = (surface(pred), surface(truth));
    if sp.is_empty() || st.is_empty() {
        return Ok(None);
    }
    let mut d = surface_distances(&sp, &st, pred.dims, spacing_mm);
    d.extend(surface_distances(&st, &sp, pred.dims, spacing_mm));
    Ok(Some(percentile(&mut d, 95.0)))
}

/// Percentile with linear interpolation between order statistics (numpy's default).
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// IoU (%) of two inclusive voxel boxes on the same grid.
pub fn box_iou_pct(a: &BoxVox, b: &BoxVox) -> f64 {
    let inter = a.intersection(b).map_or(0, |i| i.voxel_count());
    100.0 * inter as f64 / (a.voxel_count() + b.voxel_count() - inter) as f64
}

/// WD (mm): mean absolute distance between the 6 faces of two boxes.
pub fn wall_distance_mm(a: &BoxVox, b: &BoxVox, spacing_mm: [f64; 3]) -> f64 {
    let mut sum = 0.0;
    for ax in 0..3 {
        sum += (a.min[ax] as f64 - b.min[ax] as f64).abs() * spacing_mm[ax];
        sum += (a.max[ax] as f64 - b.max[ax] as f64).abs() * spacing_mm[ax];
    }
    sum / 6.0
}

/// Distance (mm) between two world points.
pub fn world_distance_mm(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Distance (mm) between the centres of two inclusive voxel boxes on the grid of `affine`.
pub fn box_centre_distance_mm(a: &BoxVox, b: &BoxVox, affine: &Affine) -> f64 {
    let centre =
        |x: &BoxVox| affine.voxel_to_world([0, 1, 2].map(|i| 0.5 * (x.min[i] + x.max[i]) as f64));
    world_distance_mm(centre(a), centre(b))
}

/// Length (mm) of an inclusive voxel box's diagonal, corner voxel to corner voxel, on the
/// grid of `affine`.
pub fn box_diagonal_mm(b: &BoxVox, affine: &Affine) -> f64 {
    let corner = |v: [usize; 3]| affine.voxel_to_world(v.map(|x| x as f64));
    world_distance_mm(corner(b.min), corner(b.max))
}

/// ALE (mm): mean world distance between corresponding extreme points (voxel indices of one grid).
pub fn ale_mm(pred: &[[usize; 3]; 6], truth: &[[usize; 3]; 6], affine: &Affine) -> f64 {
    let w = |p: [usize; 3]| affine.voxel_to_world(p.map(|x| x as f64));
    let sum: f64 = pred
        .iter()
        .zip(truth)
        .map(|(&p, &t)| world_distance_mm(w(p), w(t)))
        .sum();
    sum / 6.0
}

/// All metrics of one label of a predicted label map against the truth.
#[derive(Clone, Debug, Serialize)]
pub struct LabelMetrics {
    pub label: u16,
    pub pred_voxels: usize,
    pub truth_voxels: usize,
    pub dsc: Option<f64>,
    pub hd95_mm: Option<f64>,
    pub box_iou: Option<f64>,
    pub wd_mm: Option<f64>,
    pub ale_mm: Option<f64>,
}

/// Evaluate each label of `pred` against `truth` (same grid required).
/// Metrics that need both organs present are `None` when one is empty.
pub fn evaluate_labels(
    pred: &LabelVolume,
    truth: &LabelVolume,
    labels: &[u16],
) -> Result<Vec<LabelMetrics>> {
    truth.check_same_grid(pred, "prediction and truth")?;
    let spacing = truth.spacing_mm();
    labels
        .iter()
        .map(|&label| {
            let (pm, tm) = (mask_of(pred, label), mask_of(truth, label));
            let (pb, tb) = (bounding_box(pred, label), bounding_box(truth, label));
            let both = pb.zip(tb);
            let ale = extreme_points(pred, label)
                .zip(extreme_points(truth, label))
                .map(|(p, t)| ale_mm(&p, &t, &truth.affine));
            Ok(LabelMetrics {
                label,
                pred_voxels: pm.data.iter().filter(|&&b| b).count(),
                truth_voxels: tm.data.iter().filter(|&&b| b).count(),
                dsc: dice_pct(&pm, &tm)?,
                hd95_mm: hd95_mm(&pm, &tm, spacing)?,
                box_iou: both.map(|(p, t)| box_iou_pct(&p, &t)),
                wd_mm: both.map(|(p, t)| wall_distance_mm(&p, &t, spacing)),
                ale_mm: ale,
            })
        })
        .collect()
}

/// Box IoU (%), WD (mm) and ALE (mm) of one organ.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BoxScores {
    pub iou: f64,
    pub wd: f64,
    pub ale: f64,
}

/// Score a localization against the truth (both on the query's canonical grid).
pub fn score(pred: &OrganLocalization, truth: &LabelVolume) -> Option<BoxScores> {
    let tb = bounding_box(truth, pred.label)?;
    let te = extreme_points(truth, pred.label)?;
    Some(BoxScores {
        iou: box_iou_pct(&pred.bbox, &tb),
        wd: wall_distance_mm(&pred.bbox, &tb, truth.spacing_mm()),
        ale: ale_mm(&pred.extreme_points, &te, &truth.affine),
    })
}

/// Mean 2-D IoU (%) of the per-slice boxes against the true per-slice boxes, over every
/// slice that has either (a slice with only one of them counts 0).
pub fn slice_box_iou(pred: &OrganLocalization, truth: &LabelVolume) -> Option<f64> {
    let true_boxes = slice_boxes(truth, pred.label);
    if true_boxes.is_empty() {
        return None;
    }
    let mut ks: Vec<usize> = true_boxes
        .iter()
        .map(|b| b.k)
        .chain(pred.slice_boxes.iter().map(|b| b.k))
        .collect();
    ks.sort_unstable();
    ks.dedup();
    let area = |b: &SliceBox| ((b.max[0] - b.min[0] + 1) * (b.max[1] - b.min[1] + 1)) as f64;
    let total: f64 = ks
        .iter()
        .map(|&k| {
            let (Some(p), Some(t)) = (
                pred.slice_boxes.iter().find(|b| b.k == k),
                true_boxes.iter().find(|b| b.k == k),
            ) else {
                return 0.0;
            };
            let w = |a: usize| {
                (p.max[a].min(t.max[a]) + 1).saturating_sub(p.min[a].max(t.min[a])) as f64
            };
            let inter = w(0) * w(1);
            100.0 * inter / (area(p) + area(t) - inter)
        })
        .sum();
    Some(total / ks.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(dims: [usize; 3], on: impl Fn(usize, usize, usize) -> bool) -> Volume<bool> {
        let mut v = Volume::filled(dims, false, Affine::identity()).unwrap();
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let idx = v.index(i, j, k);
                    v.data[idx] = on(i, j, k);
                }
            }
        }
        v
    }

    #[test]
    fn dice_by_hand() {
        // a: 8 voxels (2×2×2 at origin), b: 12 voxels (3×2×2 at origin): overlap 8 → 2·8/20 = 80 %.
        let a = mask([4, 4, 4], |i, j, k| i < 2 && j < 2 && k < 2);
        let b = mask([4, 4, 4], |i, j, k| i < 3 && j < 2 && k < 2);
        assert!((dice_pct(&a, &b).unwrap().unwrap() - 80.0).abs() < 1e-12);
        let e = mask([4, 4, 4], |_, _, _| false);
        assert_eq!(dice_pct(&e, &e).unwrap(), None);
        assert_eq!(dice_pct(&a, &e).unwrap(), Some(0.0));
        let other = mask([4, 4, 5], |_, _, _| false);
        assert!(dice_pct(&a, &other).is_err());
    }

    #[test]
    fn hd95_of_shifted_slabs_is_the_shift_in_mm() {
        // Two single-voxel-thick planes k=2 and k=5, spacing 2.5 mm along k:
        // every surface voxel is 3 voxels = 7.5 mm from the other plane.
        let a = mask([5, 5, 8], |_, _, k| k == 2);
        let b = mask([5, 5, 8], |_, _, k| k == 5);
        let h = hd95_mm(&a, &b, [1.0, 1.0, 2.5]).unwrap().unwrap();
        assert!((h - 7.5).abs() < 1e-9, "{h}");
        assert_eq!(hd95_mm(&a, &a, [1.0; 3]).unwrap(), Some(0.0));
    }

    #[test]
    fn hd95_matches_brute_force_on_blobs() {
        let a = mask([9, 8, 7], |i, j, k| {
            (i as f64 - 4.0).powi(2) + (j as f64 - 3.0).powi(2) + (k as f64 - 3.0).powi(2) < 7.0
        });
        let b = mask([9, 8, 7], |i, j, k| {
            (3..=7).contains(&i) && j <= 5 && (1..=4).contains(&k)
        });
        let sp = [0.8, 1.3, 2.1];
        let (sa, sb) = (surface(&a), surface(&b));
        let brute = |from: &[usize], to: &[usize]| -> Vec<f64> {
            let c = |x: usize| [x % 9, (x / 9) % 8, x / 72];
            from.iter()
                .map(|&p| {
                    to.iter()
                        .map(|&q| {
                            let (p, q) = (c(p), c(q));
                            (0..3)
                                .map(|t| ((p[t] as f64 - q[t] as f64) * sp[t]).powi(2))
                                .sum::<f64>()
                                .sqrt()
                        })
                        .fold(f64::INFINITY, f64::min)
                })
                .collect()
        };
        let mut all = brute(&sa, &sb);
        all.extend(brute(&sb, &sa));
        let expect = percentile(&mut all, 95.0);
        let got = hd95_mm(&a, &b, sp).unwrap().unwrap();
        assert!((got - expect).abs() < 1e-9, "{got} vs {expect}");
    }

    #[test]
    fn box_metrics_by_hand() {
        let a = BoxVox {
            min: [0, 0, 0],
            max: [1, 1, 1],
        }; // 8 voxels
        let b = BoxVox {
            min: [1, 0, 0],
            max: [2, 1, 1],
        }; // 8 voxels, 4 shared
        assert!((box_iou_pct(&a, &b) - 100.0 * 4.0 / 12.0).abs() < 1e-12);
        assert_eq!(box_iou_pct(&a, &a), 100.0);
        let far = BoxVox {
            min: [5, 5, 5],
            max: [6, 6, 6],
        };
        assert_eq!(box_iou_pct(&a, &far), 0.0);
        // Faces differ by 1 voxel along i (both min and max): 2 faces × 2 mm / 6.
        assert!((wall_distance_mm(&a, &b, [2.0, 1.0, 1.0]) - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn ale_by_hand() {
        let aff = Affine::from_diagonal([1.0, 2.0, 3.0], [0.0; 3]);
        let t = [[0, 0, 0]; 6];
        let mut p = t;
        p[0] = [3, 2, 0]; // (3 mm, 4 mm) → 5 mm
        p[5] = [0, 0, 2]; // 6 mm
        assert!((ale_mm(&p, &t, &aff) - 11.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn slice_box_iou_counts_missing_slices_as_zero() {
        let mut lab = Volume::filled([10, 10, 4], 0u16, Affine::identity()).unwrap();
        for k in 1..=2 {
            for j in 2..=5 {
                for i in 2..=3 {
                    let idx = lab.index(i, j, k);
                    lab.data[idx] = 5;
                }
            }
        }
        let sb = |k, min, max| SliceBox { k, min, max };
        let zero = BoxVox {
            min: [0; 3],
            max: [0; 3],
        };
        let pred =
            |boxes: Vec<SliceBox>| OrganLocalization::placed(5, zero, [[0; 3]; 6], boxes, "given");
        let exact = pred(vec![sb(1, [2, 2], [3, 5]), sb(2, [2, 2], [3, 5])]);
        assert_eq!(slice_box_iou(&exact, &lab), Some(100.0));
        // Slice 2 half as wide (IoU 50 %), and an extra slice 3 (0): (100 + 50 + 0) / 3.
        let off = pred(vec![
            sb(1, [2, 2], [3, 5]),
            sb(2, [2, 2], [2, 5]),
            sb(3, [2, 2], [3, 5]),
        ]);
        assert!((slice_box_iou(&off, &lab).unwrap() - 50.0).abs() < 1e-9);
        let mut other = lab.clone();
        other.data.iter_mut().for_each(|v| *v = 0);
        assert_eq!(slice_box_iou(&exact, &other), None);
    }
}
