//! A query prepared for MedLAM: its 3 mm grid, body box and mean latent coordinate
//! (UAM's reference), and the feature frames MSS searches in.

use burn::tensor::Device;

use super::atlas::PointAtlas;
use super::features::{FeatureFrame, WINDOWS, frame_for};
use super::net::{MedLam, MedLamConfig, UAM_RATIO_MM};
use super::prep::{Prepared, SPACING_MM};
use crate::device::read_f32;
use crate::volume::CtVolume;
use crate::{Error, Result};

/// A query prepared for localization: its 3 mm grid, body box and mean latent coordinate.
pub struct QueryState {
    pub prep: Prepared,
    /// Body box on the 3 mm grid (inclusive), HU > −500.
    pub body_lo: [i64; 3],
    pub body_hi: [i64; 3],
    /// Mean latent coordinate of the query patches and their mean centre (grid voxel).
    pub position: [f64; 3],
    pub centre: [f64; 3],
    /// Canonical grid size of the query.
    pub canonical_dims: [usize; 3],
}

/// Body box of a prepared grid (intensity > 0.125 ⇔ HU > −500).
fn body_box(prep: &Prepared) -> Option<([i64; 3], [i64; 3])> {
    let [nx, ny, _] = prep.dims;
    let mut lo = [i64::MAX; 3];
    let mut hi = [i64::MIN; 3];
    for (idx, &v) in prep.data.iter().enumerate() {
        if v > 0.125 {
            let p = [
                (idx % nx) as i64,
                ((idx / nx) % ny) as i64,
                (idx / (nx * ny)) as i64,
            ];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
    }
    (lo[0] <= hi[0]).then_some((lo, hi))
}

/// Prepare a **canonical** query CT: 3 mm grid, body box, and the UAM query patches.
pub async fn query_state(
    net: &MedLam,
    config: &MedLamConfig,
    canon: &CtVolume,
    device: &Device,
) -> Result<QueryState> {
    let prep = Prepared::from_canonical(canon)?;
    crate::device::yield_on_cpu(device).await;
    let (body_lo, body_hi) = body_box(&prep).ok_or_else(|| {
        Error::InvalidVolume("no body found in the query (no voxel above −500 HU)".into())
    })?;
    let p = config.patch;
    let mid = [0, 1, 2].map(|a| (body_lo[a] + body_hi[a]) / 2);
    let q = (p / 4) as i64;
    let mut centres = vec![mid];
    for c in 0..8 {
        centres.push([0, 1, 2].map(|a| mid[a] + if (c >> a) & 1 == 1 { q } else { -q }));
    }
    let mut pos = Vec::with_capacity(3 * centres.len());
    for cs in centres.chunks(crate::device::patch_batch(device, centres.len())) {
        pos.extend(read_f32(net.position(prep.patches(cs, p, device))).await?);
    }
    let n = centres.len() as f64;
    let position = [0, 1, 2].map(|a| {
        (0..centres.len())
            .map(|b| pos[3 * b + a] as f64)
            .sum::<f64>()
            / n
    });
    let centre = [0, 1, 2].map(|a| centres.iter().map(|c| c[a] as f64).sum::<f64>() / n);
    Ok(QueryState {
        prep,
        body_lo,
        body_hi,
        position,
        centre,
        canonical_dims: canon.dims,
    })
}

impl QueryState {
    /// Fraction of the box spanned by `points` (grid voxels, unclamped UAM estimates)
    /// that lies inside the query's grid: the product of the per-axis overlaps.
    pub fn fraction_in_view(&self, points: &[[f64; 3]]) -> f32 {
        let mut f = 1.0;
        for a in 0..3 {
            let lo = points.iter().map(|p| p[a]).fold(f64::INFINITY, f64::min);
            let hi = points
                .iter()
                .map(|p| p[a])
                .fold(f64::NEG_INFINITY, f64::max);
            if !(lo.is_finite() && hi.is_finite()) {
                return 0.0;
            }
            // A box at least one voxel wide, against the grid [-0.5, dims - 0.5].
            let (lo, hi) = (lo.min(hi - 1.0), hi);
            let (g0, g1) = (-0.5, self.prep.dims[a] as f64 - 0.5);
            let overlap = (hi.min(g1) - lo.max(g0)).max(0.0);
            f *= overlap / (hi - lo);
        }
        f as f32
    }

    /// UAM estimate (grid voxel, continuous) of a support point.
    pub fn uam_point(&self, point: &PointAtlas) -> [f64; 3] {
        [0, 1, 2].map(|a| {
            let d = (point.position[a] as f64 - self.position[a]).tanh() * UAM_RATIO_MM[a] as f64;
            self.centre[a] + d / SPACING_MM
        })
    }

    /// UAM estimates of groups of support points (e.g. an organ part's 6) re-made from one
    /// patch centred on each group's current mean estimate (grid voxels).
    pub async fn uam_refine(
        &self,
        net: &MedLam,
        config: &MedLamConfig,
        groups: &[Vec<&PointAtlas>],
        current: &[Vec<[f64; 3]>],
        device: &Device,
    ) -> Result<Vec<Vec<[f64; 3]>>> {
        let p = config.patch;
        let centres: Vec<[i64; 3]> = current
            .iter()
            .map(|pts| {
                let n = pts.len().max(1) as f64;
                [0, 1, 2].map(|a| (pts.iter().map(|x| x[a]).sum::<f64>() / n).round() as i64)
            })
            .collect();
        let mut out = Vec::with_capacity(groups.len());
        let batch = crate::device::patch_batch(device, 8);
        for (gs, cs) in groups.chunks(batch).zip(centres.chunks(batch)) {
            let pos = read_f32(net.position(self.prep.patches(cs, p, device))).await?;
            for (b, (g, c)) in gs.iter().zip(cs).enumerate() {
                out.push(
                    g.iter()
                        .map(|pt| {
                            [0, 1, 2].map(|a| {
                                let d = (pt.position[a] - pos[3 * b + a]) as f64;
                                c[a] as f64 + d.tanh() * UAM_RATIO_MM[a] as f64 / SPACING_MM
                            })
                        })
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// Canonical voxel of the query at a grid position (rounded, clamped to the volume).
    pub fn to_canonical(&self, grid: [f64; 3]) -> [usize; 3] {
        let c = self.prep.grid_to_canonical(grid);
        [0, 1, 2].map(|a| (c[a].round().max(0.0) as usize).min(self.canonical_dims[a] - 1))
    }

    /// The feature frame over the body, computing only the tiles these searches need
    /// (`starts` in grid voxels; `radius` as in [`Search`]).
    pub async fn frame(
        &self,
        net: &MedLam,
        config: &MedLamConfig,
        starts: &[[f64; 3]],
        radius: Option<usize>,
        device: &Device,
    ) -> Result<FeatureFrame> {
        let margin = (config.patch / 4) as i64;
        let (origin, size) = frame_for(self.body_lo, self.body_hi, margin, config.patch);
        // Window reach beyond the search box, in voxels.
        let reach = (0..3)
            .map(|s| (WINDOWS[s] / 2 * config.feature_strides()[s]) as i64)
            .max()
            .unwrap_or(0)
            + 1;
        let boxes: Vec<([i64; 3], [i64; 3])> = match radius {
            None => vec![([i64::MIN / 4; 3], [i64::MAX / 4; 3])],
            Some(r) => starts
                .iter()
                .map(|s| {
                    let c = [0, 1, 2].map(|a| s[a].round() as i64 - origin[a]);
                    (
                        c.map(|x| x - r as i64 - reach),
                        c.map(|x| x + r as i64 + reach),
                    )
                })
                .collect(),
        };
        let needed = |lo: [i64; 3], hi: [i64; 3]| {
            boxes
                .iter()
                .any(|(a, b)| (0..3).all(|k| lo[k] <= b[k] && a[k] <= hi[k]))
        };
        FeatureFrame::compute(net, config, &self.prep, origin, size, &needed, device).await
    }
}
