//! Starting affines for [`super::register`] (fixed world → moving world): from the
//! body boxes, or a least-squares fit through organ extreme points both images have.

use super::RegImage;
use crate::volume::{Affine, LabelVolume};
use crate::{Error, Result};

/// The starting affine (fixed world → moving world) from the bodies alone: a pure
/// translation (heads differ in size by a few per cent, far less than scan fields of view
/// do) that lines up the centres of the body boxes across (x, y) and their superior
/// ends along z (the inferior end depends on how far down each scan goes). The search
/// along z in [`register`] then corrects the z shift.
pub fn body_box_init(fixed: &RegImage, moving: &RegImage) -> Result<Affine> {
    let (fc, fe) = world_box(fixed)?;
    let (mc, me) = world_box(moving)?;
    let top = |c: [f64; 3], e: [f64; 3]| c[2] + 0.5 * e[2];
    let t = [mc[0] - fc[0], mc[1] - fc[1], top(mc, me) - top(fc, fe)];
    Ok(Affine::from_diagonal([1.0; 3], t))
}

/// Centre and extent (world mm, per world axis) of an image's body box.
fn world_box(img: &RegImage) -> Result<([f64; 3], [f64; 3])> {
    let b = img.body_box()?;
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for c in 0..8 {
        let v = [0, 1, 2].map(|a| {
            if c >> a & 1 == 0 {
                b.min[a] as f64 - 0.5
            } else {
                b.max[a] as f64 + 0.5
            }
        });
        let w = img.affine.voxel_to_world(v);
        for a in 0..3 {
            lo[a] = lo[a].min(w[a]);
            hi[a] = hi[a].max(w[a]);
        }
    }
    Ok((
        [0, 1, 2].map(|a| 0.5 * (lo[a] + hi[a])),
        [0, 1, 2].map(|a| (hi[a] - lo[a]).max(1.0)),
    ))
}

/// The least-squares affine taking `fixed` world points to `moving` world points (e.g.
/// MedLAM's located organ points in the query and the same points in a support). With
/// fewer than 4 points, or points that span no volume, it falls back to a translation
/// and an isotropic scale fitted to them (one point: translation only).
pub fn affine_from_points(fixed: &[[f64; 3]], moving: &[[f64; 3]]) -> Result<Affine> {
    let n = fixed.len();
    if n == 0 || n != moving.len() {
        return Err(Error::InvalidArgument(format!(
            "affine_from_points: {} fixed and {} moving points",
            fixed.len(),
            moving.len()
        )));
    }
    let mean = |p: &[[f64; 3]]| [0, 1, 2].map(|a| p.iter().map(|q| q[a]).sum::<f64>() / n as f64);
    let (cf, cm) = (mean(fixed), mean(moving));
    let mut m = [[0.0; 4]; 4];
    m[3][3] = 1.0;
    // Normal equations: (Σ f fᵀ) Aᵀ = Σ f mᵀ on centred points.
    let mut ff = [[0.0; 3]; 3];
    let mut fm = [[0.0; 3]; 3];
    for (f, g) in fixed.iter().zip(moving) {
        for r in 0..3 {
            for c in 0..3 {
                ff[r][c] += (f[r] - cf[r]) * (f[c] - cf[c]);
                fm[r][c] += (f[r] - cf[r]) * (g[c] - cm[c]);
            }
        }
    }
    let full = n >= 4 && {
        let inv = Affine {
            m: [
                [ff[0][0], ff[0][1], ff[0][2], 0.0],
                [ff[1][0], ff[1][1], ff[1][2], 0.0],
                [ff[2][0], ff[2][1], ff[2][2], 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        };
        let tr = ff[0][0] + ff[1][1] + ff[2][2];
        let det = inv.determinant();
        if det.abs() > 1e-6 * tr.powi(3).max(1e-12) {
            let inv = inv.inverse()?;
            for r in 0..3 {
                for c in 0..3 {
                    // A[r][c] = Σ_k fm[k][r] · inv[k][c]
                    m[r][c] = (0..3).map(|k| fm[k][r] * inv.m[k][c]).sum();
                }
            }
            true
        } else {
            false
        }
    };
    if !full {
        let sf: f64 = fixed
            .iter()
            .map(|f| (0..3).map(|a| (f[a] - cf[a]).powi(2)).sum::<f64>())
            .sum();
        let sm: f64 = moving
            .iter()
            .map(|g| (0..3).map(|a| (g[a] - cm[a]).powi(2)).sum::<f64>())
            .sum();
        let s = if sf > 1.0 && sm > 1.0 {
            (sm / sf).sqrt().clamp(0.7, 1.4)
        } else {
            1.0
        };
        for a in 0..3 {
            m[a][a] = s;
        }
    }
    for r in 0..3 {
        m[r][3] = cm[r] - (0..3).map(|c| m[r][c] * cf[c]).sum::<f64>();
    }
    let a = Affine { m };
    if !a.is_finite() {
        return Err(Error::Failed(
            "affine_from_points: the points give no finite affine".into(),
        ));
    }
    Ok(a)
}

/// An organ's 6 extreme points in world coordinates (RAS mm), ordered as
/// [`crate::volume::labels::extreme_points`].
pub type OrganPoints = (u16, [[f64; 3]; 6]);

/// The world extreme points of each of `organs` present in a label map.
pub fn label_points(labels: &LabelVolume, organs: &[u16]) -> Vec<OrganPoints> {
    organs
        .iter()
        .filter_map(|&o| {
            let p = crate::volume::labels::extreme_points(labels, o)?;
            Some((
                o,
                p.map(|v| labels.affine.voxel_to_world(v.map(|x| x as f64))),
            ))
        })
        .collect()
}

/// The world extreme points of the organs a localizer placed in view (at least
/// [`crate::types::MIN_IN_VIEW`]) on the grid with `affine` (the query's canonical grid).
pub fn located_points(
    found: &[crate::types::OrganLocalization],
    affine: &Affine,
) -> Vec<OrganPoints> {
    found
        .iter()
        .filter(|l| l.in_view >= crate::types::MIN_IN_VIEW)
        .map(|l| {
            (
                l.label,
                l.extreme_points
                    .map(|v| affine.voxel_to_world(v.map(|x| x as f64))),
            )
        })
        .collect()
}

/// A starting affine (fixed world → moving world) through the organ points both sides
/// have (e.g. MedLAM's points in the query and the support's own label points): `None`
/// with fewer than 2 shared organs or an implausible fit (a scale outside 0.6–1.6 or a
/// reflection).
pub fn points_init(fixed: &[OrganPoints], moving: &[OrganPoints]) -> Option<Affine> {
    let mut f = Vec::new();
    let mut m = Vec::new();
    let mut shared = 0;
    for (o, pf) in fixed {
        if let Some((_, pm)) = moving.iter().find(|(q, _)| q == o) {
            f.extend_from_slice(pf);
            m.extend_from_slice(pm);
            shared += 1;
        }
    }
    if shared < 2 {
        return None;
    }
    let a = affine_from_points(&f, &m).ok()?;
    let plausible = a.determinant() > 0.0 && a.spacing_mm().iter().all(|s| (0.6..=1.6).contains(s));
    plausible.then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_from_points_recovers_an_affine_and_falls_back_to_translation() {
        let truth = Affine {
            m: [
                [1.1, 0.05, 0.0, 4.0],
                [-0.02, 0.95, 0.1, -7.0],
                [0.0, 0.03, 1.05, 12.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        };
        let f: Vec<[f64; 3]> = (0..8)
            .map(|c| [0, 1, 2].map(|a| if c >> a & 1 == 1 { 40.0 } else { -30.0 } + a as f64))
            .collect();
        let m: Vec<[f64; 3]> = f.iter().map(|&p| truth.voxel_to_world(p)).collect();
        let a = affine_from_points(&f, &m).unwrap();
        for r in 0..3 {
            for c in 0..4 {
                assert!((a.m[r][c] - truth.m[r][c]).abs() < 1e-9, "{a:?}");
            }
        }
        let one = affine_from_points(&[[1.0, 2.0, 3.0]], &[[4.0, 4.0, 4.0]]).unwrap();
        assert_eq!(one.voxel_to_world([1.0, 2.0, 3.0]), [4.0, 4.0, 4.0]);
        assert_eq!(one.spacing_mm(), [1.0, 1.0, 1.0]);
        assert!(affine_from_points(&[], &[]).is_err());
    }
}
