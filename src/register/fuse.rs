//! Warping support labels onto the query and fusing them into a per-organ prior.
//!
//! Plain Rust on the CPU (no gradients are needed here, and it runs the same in
//! the browser): each voxel of the registered region of the query's 3 mm grid is
//! mapped through the registration and the support's one-hot maps and image are
//! read there trilinearly (zero outside the support's grid).

use super::{OrganMaps, RegImage, Registration};
use crate::device::no_pause;
use crate::volume::Volume;
use crate::volume::labels::BoxVox;
use crate::{Error, Result};

/// One support's organ maps and image on the query's 3 mm grid, inside `region`.
#[derive(Clone, Debug)]
pub struct WarpedSupport {
    /// The query's 3 mm grid size.
    pub dims: [usize; 3],
    /// The box of that grid the values cover.
    pub region: BoxVox,
    /// Organ label values.
    pub organs: Vec<u16>,
    /// Per organ, probabilities over `region` (NIfTI order over the box); empty when the
    /// support lacks that organ.
    pub maps: Vec<Vec<f32>>,
    /// The support image (mapped intensities) over `region`.
    pub image: Vec<f32>,
}

/// Corner indices and weights of a trilinear read at `p`; corners outside the grid
/// get weight 0 (reads outside count as 0).
#[inline]
fn corners(dims: [usize; 3], p: [f64; 3]) -> Option<([usize; 8], [f32; 8])> {
    let f = p.map(f64::floor);
    if (0..3).any(|a| f[a] < -1.0 || f[a] > dims[a] as f64 - 1.0 || f[a].is_nan()) {
        return None;
    }
    let b = f.map(|x| x as i64);
    let t = [0, 1, 2].map(|a| (p[a] - f[a]) as f32);
    let mut idx = [0usize; 8];
    let mut w = [0f32; 8];
    for c in 0..8 {
        let mut weight = 1.0;
        let mut ok = true;
        let mut q = [0i64; 3];
        for a in 0..3 {
            let up = (c >> a) & 1 == 1;
            q[a] = b[a] + up as i64;
            weight *= if up { t[a] } else { 1.0 - t[a] };
            ok &= q[a] >= 0 && q[a] < dims[a] as i64;
        }
        if ok {
            idx[c] = q[0] as usize + dims[0] * (q[1] as usize + dims[1] * q[2] as usize);
            w[c] = weight;
        }
    }
    Some((idx, w))
}

#[inline]
fn read(data: &[f32], cw: &([usize; 8], [f32; 8])) -> f32 {
    (0..8).map(|c| cw.1[c] * data[cw.0[c]]).sum()
}

/// Warp a support's organ maps (and its image) onto the query's 3 mm grid with a
/// registration of that support (`moving`) to the query (`fixed`).
pub fn warp_labels(
    fixed: &RegImage,
    moving: &RegImage,
    labels: &OrganMaps,
    reg: &Registration,
) -> Result<WarpedSupport> {
    pollster::block_on(warp_labels_pausing(
        fixed,
        moving,
        labels,
        reg,
        &mut no_pause,
    ))
}

/// [`warp_labels`], awaiting `pause()` after each slice of the region (the page's turn in
/// the browser, where this computes synchronously: about a second for a head-and-neck CT).
pub async fn warp_labels_pausing<F: Future<Output = ()>>(
    fixed: &RegImage,
    moving: &RegImage,
    labels: &OrganMaps,
    reg: &Registration,
    pause: &mut impl FnMut() -> F,
) -> Result<WarpedSupport> {
    if labels.dims != moving.dims {
        return Err(Error::Mismatch(format!(
            "organ maps {:?} are not on the support's 3 mm grid {:?}",
            labels.dims, moving.dims
        )));
    }
    let r = reg.region;
    if (0..3).any(|a| r.max[a] >= fixed.dims[a] || r.min[a] > r.max[a]) {
        return Err(Error::Mismatch(
            "the registration was made for another query grid".into(),
        ));
    }
    // fixed voxel → moving voxel: Minv·(A·(F·x) + d(x)).
    let minv = moving.affine.inverse()?;
    let fa = reg.affine.compose(&fixed.affine);
    let n = r.voxel_count();
    let mut maps: Vec<Vec<f32>> = labels
        .maps
        .iter()
        .map(|m| {
            if m.is_empty() {
                Vec::new()
            } else {
                Vec::with_capacity(n)
            }
        })
        .collect();
    let mut image = Vec::with_capacity(n);
    for k in r.min[2]..=r.max[2] {
        for j in r.min[1]..=r.max[1] {
            for i in r.min[0]..=r.max[0] {
                let x = [i as f64, j as f64, k as f64];
                let mut y = fa.voxel_to_world(x);
                if let Some(g) = &reg.deform {
                    let d = g.displacement(x);
                    for a in 0..3 {
                        y[a] += d[a];
                    }
                }
                let v = minv.voxel_to_world(y);
                match corners(moving.dims, v) {
                    Some(cw) => {
                        image.push(read(&moving.data, &cw));
                        for (out, m) in maps.iter_mut().zip(&labels.maps) {
                            if !m.is_empty() {
                                out.push(read(m, &cw));
                            }
                        }
                    }
                    None => {
                        image.push(0.0);
                        for (out, m) in maps.iter_mut().zip(&labels.maps) {
                            if !m.is_empty() {
                                out.push(0.0);
                            }
                        }
                    }
                }
            }
        }
        pause().await;
    }
    Ok(WarpedSupport {
        dims: fixed.dims,
        region: r,
        organs: labels.organs.clone(),
        maps,
        image,
    })
}

/// How the warped supports vote.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FuseMode {
    /// Plain average of the warped probabilities (majority vote when thresholded at 0.5).
    Mean,
    /// Each support's vote at a voxel weighted by `(max(lncc, 0) + 0.01)^power`, lncc the
    /// local NCC of the warped support image and the query over a `window`³ box.
    LocalNcc { window: usize, power: f32 },
}

impl Default for FuseMode {
    /// The weighted vote chosen on the OpenKBP dev queries: 7³ windows, power 3.
    fn default() -> Self {
        Self::LocalNcc {
            window: 7,
            power: 3.0,
        }
    }
}

/// A per-organ prior probability on the query's 3 mm grid.
#[derive(Clone, Debug)]
pub struct FusedPrior {
    /// The query's 3 mm grid size.
    pub dims: [usize; 3],
    /// Organ label values.
    pub organs: Vec<u16>,
    /// Per organ, probabilities over the whole grid (NIfTI order, 0 outside the registered
    /// region); all zero when no support has the organ.
    pub maps: Vec<Vec<f32>>,
    /// Per organ, how many supports voted (had the organ).
    pub voters: Vec<usize>,
}

/// Box mean over `(2r+1)³` windows, averaging only the voxels inside the grid.
fn box_mean(data: &[f32], d: [usize; 3], r: usize) -> Vec<f32> {
    let mut cur = data.to_vec();
    let stride = [1, d[0], d[0] * d[1]];
    for a in 0..3 {
        let mut next = vec![0f32; cur.len()];
        let lines = cur.len() / d[a];
        let mut line = vec![0f64; d[a] + 1];
        for l in 0..lines {
            // The start index of line l along axis a.
            let start = match a {
                0 => l * d[0],
                1 => (l % d[0]) + (l / d[0]) * d[0] * d[1],
                _ => l,
            };
            for p in 0..d[a] {
                line[p + 1] = line[p] + cur[start + p * stride[a]] as f64;
            }
            for p in 0..d[a] {
                let lo = p.saturating_sub(r);
                let hi = (p + r + 1).min(d[a]);
                next[start + p * stride[a]] = ((line[hi] - line[lo]) / (hi - lo) as f64) as f32;
            }
        }
        cur = next;
    }
    cur
}

/// Local NCC of two images on the same box grid (window `(2r+1)³`).
pub fn local_ncc_cpu(a: &[f32], b: &[f32], d: [usize; 3], r: usize) -> Vec<f32> {
    let ma = box_mean(a, d, r);
    let mb = box_mean(b, d, r);
    let prod = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).collect::<Vec<_>>();
    let maa = box_mean(&prod(a, a), d, r);
    let mbb = box_mean(&prod(b, b), d, r);
    let mab = box_mean(&prod(a, b), d, r);
    (0..a.len())
        .map(|i| {
            let cross = mab[i] - ma[i] * mb[i];
            let va = (maa[i] - ma[i] * ma[i]).max(0.0);
            let vb = (mbb[i] - mb[i] * mb[i]).max(0.0);
            cross / (va * vb + 1e-5).sqrt()
        })
        .collect()
}

/// Fuse the warped supports of one query into a prior per organ. Supports without an
/// organ do not vote for it.
pub fn fuse(fixed: &RegImage, warped: &[WarpedSupport], mode: FuseMode) -> Result<FusedPrior> {
    let first = warped
        .first()
        .ok_or_else(|| Error::InvalidArgument("fuse: no warped supports".into()))?;
    if warped
        .iter()
        .any(|w| w.dims != fixed.dims || w.organs != first.organs)
    {
        return Err(Error::Mismatch(
            "fuse: the warped supports are not on the query's grid or list other organs".into(),
        ));
    }
    let n = fixed.len();
    let organs = first.organs.clone();
    let mut acc = vec![vec![0f32; n]; organs.len()];
    let mut wsum = vec![vec![0f32; n]; organs.len()];
    let mut voters = vec![0usize; organs.len()];
    for w in warped {
        let r = w.region;
        let size = r.size();
        let weights: Vec<f32> = match mode {
            FuseMode::Mean => vec![1.0; r.voxel_count()],
            FuseMode::LocalNcc { window, power } => {
                let mut q = Vec::with_capacity(r.voxel_count());
                for k in r.min[2]..=r.max[2] {
                    for j in r.min[1]..=r.max[1] {
                        let row = r.min[0] + fixed.dims[0] * (j + fixed.dims[1] * k);
                        q.extend_from_slice(&fixed.data[row..row + size[0]]);
                    }
                }
                local_ncc_cpu(&q, &w.image, size, window / 2)
                    .into_iter()
                    .map(|c| (c.max(0.0) + 0.01).powf(power))
                    .collect()
            }
        };
        for (o, m) in w.maps.iter().enumerate() {
            if m.is_empty() {
                continue;
            }
            voters[o] += 1;
            let mut t = 0;
            for k in r.min[2]..=r.max[2] {
                for j in r.min[1]..=r.max[1] {
                    let row = fixed.dims[0] * (j + fixed.dims[1] * k);
                    for i in r.min[0]..=r.max[0] {
                        acc[o][row + i] += weights[t] * m[t];
                        wsum[o][row + i] += weights[t];
                        t += 1;
                    }
                }
            }
        }
    }
    let maps = acc
        .into_iter()
        .zip(wsum)
        .map(|(a, s)| {
            a.iter()
                .zip(&s)
                .map(|(&a, &s)| if s > 0.0 { a / s } else { 0.0 })
                .collect()
        })
        .collect();
    Ok(FusedPrior {
        dims: fixed.dims,
        organs,
        maps,
        voters,
    })
}

/// Resample each organ's prior onto the query's canonical full-resolution grid (the
/// grid `fixed` was made from, where LiteMedSAM's axial slices live): trilinear,
/// 0 outside the 3 mm grid.
pub fn prior_to_canonical(fixed: &RegImage, prior: &FusedPrior) -> Result<Vec<(u16, Volume<f32>)>> {
    pollster::block_on(prior_to_canonical_pausing(fixed, prior, &mut no_pause))
}

/// [`prior_to_canonical`], awaiting `pause()` after each slice of the canonical grid (the
/// page's turn: every organ at full resolution takes seconds in the browser).
pub async fn prior_to_canonical_pausing<F: Future<Output = ()>>(
    fixed: &RegImage,
    prior: &FusedPrior,
    pause: &mut impl FnMut() -> F,
) -> Result<Vec<(u16, Volume<f32>)>> {
    if prior.dims != fixed.dims {
        return Err(Error::Mismatch(
            "the prior is not on this query's 3 mm grid".into(),
        ));
    }
    let cd = fixed.canonical_dims;
    let mut outs: Vec<Vec<f32>> = prior
        .maps
        .iter()
        .map(|_| Vec::with_capacity(cd.iter().product()))
        .collect();
    for k in 0..cd[2] {
        for j in 0..cd[1] {
            for i in 0..cd[0] {
                let g = fixed.grid.old_to_new([i as f64, j as f64, k as f64]);
                let cw = corners(fixed.dims, g);
                for (out, m) in outs.iter_mut().zip(&prior.maps) {
                    out.push(cw.as_ref().map_or(0.0, |cw| read(m, cw)));
                }
            }
        }
        pause().await;
    }
    prior
        .organs
        .iter()
        .zip(outs)
        .map(|(&o, data)| Ok((o, Volume::from_data(cd, data, fixed.canonical_affine)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_mean_and_local_ncc_on_small_grids() {
        let d = [5, 4, 3];
        let ones = vec![2.0f32; 60];
        assert!(box_mean(&ones, d, 1).iter().all(|v| (v - 2.0).abs() < 1e-6));
        let ramp: Vec<f32> = (0..60).map(|v| (v % 5) as f32).collect();
        let m = box_mean(&ramp, d, 1);
        // x = 2 (interior): mean of 1, 2, 3 = 2; x = 0 (border): mean of 0, 1.
        assert!((m[2] - 2.0).abs() < 1e-6 && (m[0] - 0.5).abs() < 1e-6);
        let a: Vec<f32> = (0..60).map(|v| ((v * 7) % 11) as f32).collect();
        let b: Vec<f32> = a.iter().map(|v| 2.0 * v + 3.0).collect();
        let l = local_ncc_cpu(&a, &b, d, 1);
        assert!(l.iter().all(|&c| c > 0.99), "{l:?}");
    }
}
