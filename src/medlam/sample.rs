//! Training samples for self-supervised MedLAM (CPU arrays, deterministic for
//! a seed): from one prepared CT, a patch `A` at a random body position, an
//! augmented copy `A'` (random rotation and scaling, a shift, an elastic
//! deformation, an intensity remapping and noise, as the reference's
//! torchio pipeline) and further patches `B₁…Bₙ` anywhere in the same CT
//! (these only feed the position head, so they are cheap: more UAM pairs).
//!
//! - UAM targets: the grid positions of the patch centres (voxel `P/2`);
//!   offsets between them in mm are what `r·tanh(p − p')` regresses.
//! - MSS targets, per feature scale and in both directions (`A → A'`,
//!   `A' → A`): for a few query points, the feature voxels of the other patch
//!   whose true source position lies within one feature voxel (the reference's
//!   threshold: the scale's stride) of the point's true position.
//!
//! All coordinates are grid voxel indices of the 3 mm [`Prepared`] grid;
//! patches are indexed `u = (i, j, k)` in NIfTI order.

use super::prep::Prepared;

use crate::rng::Rng;

/// How samples are drawn and augmented.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SamplingOptions {
    /// Query points per direction and sample for the MSS loss.
    pub points: usize,
    /// Extra crops `B` per sample for the UAM loss (at least 1).
    pub extra_crops: usize,
    /// Probability of a random rotation and scaling of `A'`.
    pub p_affine: f64,
    /// Largest rotation about each axis (degrees).
    pub max_rotation_deg: f64,
    /// Scaling factors are drawn in `[1 − s, 1 + s]` per axis.
    pub scale_jitter: f64,
    /// Largest shift of `A'` against `A` per axis (voxels).
    pub max_shift_vox: f64,
    /// Probability of an elastic deformation of `A'`.
    pub p_elastic: f64,
    /// Control points per axis of the elastic deformation.
    pub elastic_points: usize,
    /// Largest displacement of a control point per axis (voxels).
    pub elastic_max_vox: f64,
    /// Probability of a random monotone intensity remapping of `A'`.
    pub p_intensity: f64,
    /// Probability of Gaussian noise on `A'`.
    pub p_noise: f64,
    /// The noise standard deviation is drawn in `[0, max]` (intensity units).
    pub noise_max_std: f64,
    /// Intensity above which a voxel counts as body when choosing positions and points.
    pub body_threshold: f32,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            points: 16,
            extra_crops: 3,
            p_affine: 0.5,
            max_rotation_deg: 15.0,
            scale_jitter: 0.1,
            max_shift_vox: 8.0,
            p_elastic: 0.5,
            elastic_points: 5,
            elastic_max_vox: 2.0,
            p_intensity: 0.5,
            p_noise: 0.5,
            noise_max_std: 0.15,
            body_threshold: 0.05,
        }
    }
}

/// A smooth random displacement field over a patch: displacements on a coarse
/// control grid spanning the patch, interpolated trilinearly (voxels).
#[derive(Clone, Debug)]
pub struct Elastic {
    n: usize,
    step: f64,
    disp: Vec<[f64; 3]>,
}

impl Elastic {
    /// Random control displacements in `[-max, max]` on an `n³` grid over a `patch³` patch.
    pub fn random(rng: &mut Rng, n: usize, patch: usize, max: f64) -> Self {
        let n = n.max(2);
        let disp = (0..n * n * n)
            .map(|_| [0; 3].map(|_| rng.range(-max, max)))
            .collect();
        Self {
            n,
            step: (patch as f64 - 1.0) / (n - 1) as f64,
            disp,
        }
    }

    /// Displacement at patch position `u`.
    pub fn at(&self, u: [f64; 3]) -> [f64; 3] {
        let n = self.n;
        let mut i0 = [0usize; 3];
        let mut w = [0f64; 3];
        for a in 0..3 {
            let x = (u[a] / self.step).clamp(0.0, (n - 1) as f64);
            i0[a] = (x.floor() as usize).min(n - 2);
            w[a] = x - i0[a] as f64;
        }
        let mut out = [0.0; 3];
        for c in 0..8 {
            let o = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
            let wt: f64 = (0..3)
                .map(|a| if o[a] == 1 { w[a] } else { 1.0 - w[a] })
                .product();
            let d = self.disp[(i0[0] + o[0]) + n * ((i0[1] + o[1]) + n * (i0[2] + o[2]))];
            for a in 0..3 {
                out[a] += wt * d[a];
            }
        }
        out
    }
}

/// Where each voxel of an augmented patch comes from: patch position `u` →
/// grid position `centre + shift + M·(u − P/2) + elastic(u)`.
#[derive(Clone, Debug)]
pub struct Warp {
    pub centre: [f64; 3],
    pub half: f64,
    pub m: [[f64; 3]; 3],
    pub shift: [f64; 3],
    pub elastic: Option<Elastic>,
}

impl Warp {
    /// The plain crop of a `patch³` patch whose voxel `P/2` is grid voxel `centre`.
    pub fn identity(centre: [f64; 3], patch: usize) -> Self {
        Self {
            centre,
            half: (patch / 2) as f64,
            m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            shift: [0.0; 3],
            elastic: None,
        }
    }

    /// Grid position of patch position `u`.
    pub fn apply(&self, u: [f64; 3]) -> [f64; 3] {
        let d = u.map(|x| x - self.half);
        let e = self.elastic.as_ref().map_or([0.0; 3], |el| el.at(u));
        [0, 1, 2].map(|r| {
            self.centre[r]
                + self.shift[r]
                + self.m[r][0] * d[0]
                + self.m[r][1] * d[1]
                + self.m[r][2] * d[2]
                + e[r]
        })
    }
}

/// Rotation about the three axes (radians) times a per-axis scaling.
fn rotation_scaling(angles: [f64; 3], scale: [f64; 3]) -> [[f64; 3]; 3] {
    let (sa, ca) = angles[0].sin_cos();
    let (sb, cb) = angles[1].sin_cos();
    let (sc, cc) = angles[2].sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, ca, -sa], [0.0, sa, ca]];
    let ry = [[cb, 0.0, sb], [0.0, 1.0, 0.0], [-sb, 0.0, cb]];
    let rz = [[cc, -sc, 0.0], [sc, cc, 0.0], [0.0, 0.0, 1.0]];
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut m = [[0.0; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                m[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
            }
        }
        m
    };
    let r = mul(rz, mul(ry, rx));
    let mut m = r;
    for row in m.iter_mut() {
        for c in 0..3 {
            row[c] *= scale[c];
        }
    }
    m
}

/// A random augmentation of the crop centred at `centre`.
pub fn random_warp(rng: &mut Rng, centre: [f64; 3], patch: usize, o: &SamplingOptions) -> Warp {
    let mut w = Warp::identity(centre, patch);
    if rng.chance(o.p_affine) {
        let max = o.max_rotation_deg.to_radians();
        let angles = [0; 3].map(|_| rng.range(-max, max));
        let scale = [0; 3].map(|_| rng.range(1.0 - o.scale_jitter, 1.0 + o.scale_jitter));
        w.m = rotation_scaling(angles, scale);
    }
    w.shift = [0; 3].map(|_| rng.range(-o.max_shift_vox, o.max_shift_vox).round());
    if rng.chance(o.p_elastic) {
        w.elastic = Some(Elastic::random(
            rng,
            o.elastic_points,
            patch,
            o.elastic_max_vox,
        ));
    }
    w
}

/// Resample a patch through a warp (trilinear, air outside), NIfTI order.
pub fn warped_patch(vol: &Prepared, warp: &Warp, patch: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(patch * patch * patch);
    for k in 0..patch {
        for j in 0..patch {
            for i in 0..patch {
                out.push(vol.sample(warp.apply([i as f64, j as f64, k as f64])));
            }
        }
    }
    out
}

/// The reference's random monotone intensity remapping: a sum of three steep
/// sigmoids at random knots in [0.2, 0.4], [0.4, 0.6], [0.6, 0.8].
pub fn remap_intensity(rng: &mut Rng, patch: &mut [f32]) {
    let knots = [0.2, 0.4, 0.6, 0.8];
    let u: Vec<f32> = (0..3)
        .map(|i| rng.range(knots[i], knots[i + 1]) as f32)
        .collect();
    for v in patch.iter_mut() {
        let x = *v;
        *v = u
            .iter()
            .map(|&ui| 1.0 / (3.0 * (1.0 + ((ui - x) / 0.1).exp())))
            .sum();
    }
}

/// Sparse MSS targets of one direction at one scale: per query point, the flat index
/// of its feature voxel in the source patch and the positive feature voxels of the
/// other patch (empty: the point is not visible there and is ignored).
#[derive(Clone, Debug, Default)]
pub struct MssDirection {
    pub query: Vec<usize>,
    pub positives: Vec<Vec<usize>>,
}

/// One training sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Patches in NIfTI order: the crop `A`, its augmented copy `A'`, the other crops `B`.
    pub a: Vec<f32>,
    pub a_aug: Vec<f32>,
    pub b: Vec<Vec<f32>>,
    /// Grid positions of the centre voxel (`P/2`) of `A`, `A'`, `B₁`, … `Bₙ`.
    pub centres: Vec<[f64; 3]>,
    /// Per feature scale (coarse → fine): `A → A'` and `A' → A` targets.
    pub mss: Vec<[MssDirection; 2]>,
}

/// A random grid voxel inside the body (up to 20 tries, as the reference).
fn body_position(rng: &mut Rng, vol: &Prepared, threshold: f32) -> [i64; 3] {
    let mut p = [0i64; 3];
    for _ in 0..20 {
        p = [0, 1, 2].map(|a| rng.below(vol.dims[a]) as i64);
        if vol.at(p) > threshold {
            break;
        }
    }
    p
}

/// A random patch voxel whose intensity is above `threshold` (up to 20 tries).
fn body_point(rng: &mut Rng, patch: &[f32], size: usize, threshold: f32) -> [usize; 3] {
    let mut u = [0usize; 3];
    for _ in 0..20 {
        u = [0; 3].map(|_| rng.below(size));
        if patch[u[0] + size * (u[1] + size * u[2])] > threshold {
            break;
        }
    }
    u
}

/// Draw one sample from a prepared CT.
pub fn draw_sample(
    vol: &Prepared,
    rng: &mut Rng,
    patch: usize,
    strides: [usize; 3],
    o: &SamplingOptions,
) -> Sample {
    let ca = body_position(rng, vol, o.body_threshold);
    let cb: Vec<[i64; 3]> = (0..o.extra_crops.max(1))
        .map(|_| body_position(rng, vol, o.body_threshold))
        .collect();
    let a = vol.patch(ca, patch);
    let b = cb.iter().map(|&c| vol.patch(c, patch)).collect();
    let ca_f = ca.map(|x| x as f64);
    let warp = random_warp(rng, ca_f, patch, o);
    let mut a_aug = warped_patch(vol, &warp, patch);
    if rng.chance(o.p_intensity) {
        remap_intensity(rng, &mut a_aug);
    }
    if rng.chance(o.p_noise) {
        let sd = rng.range(0.0, o.noise_max_std);
        for v in a_aug.iter_mut() {
            *v += (sd * rng.normal()) as f32;
        }
    }
    let half = (patch / 2) as f64;
    let plain = Warp::identity(ca_f, patch);
    let fwd_points: Vec<[usize; 3]> = (0..o.points)
        .map(|_| body_point(rng, &a, patch, o.body_threshold))
        .collect();
    let bwd_points: Vec<[usize; 3]> = (0..o.points)
        .map(|_| body_point(rng, &a_aug, patch, o.body_threshold))
        .collect();
    let mss = strides
        .iter()
        .map(|&s| {
            [
                mss_direction(&fwd_points, &plain, &warp, patch, s),
                mss_direction(&bwd_points, &warp, &plain, patch, s),
            ]
        })
        .collect();
    Sample {
        a,
        a_aug,
        b,
        centres: [ca_f, warp.apply([half; 3])]
            .into_iter()
            .chain(cb.iter().map(|c| c.map(|x| x as f64)))
            .collect(),
        mss,
    }
}

/// MSS targets for query points of the patch made by `from`, against the patch made by `to`.
fn mss_direction(
    points: &[[usize; 3]],
    from: &Warp,
    to: &Warp,
    patch: usize,
    stride: usize,
) -> MssDirection {
    let m = patch / stride;
    let s = stride as f64;
    // True grid position of every feature voxel centre of the target patch.
    let mut targets = Vec::with_capacity(m * m * m);
    for k in 0..m {
        for j in 0..m {
            for i in 0..m {
                let uc = [i, j, k].map(|x| (x as f64 + 0.5) * s - 0.5);
                targets.push(to.apply(uc));
            }
        }
    }
    let threshold2 = s * s;
    let mut out = MssDirection::default();
    for &u in points {
        let g = from.apply(u.map(|x| x as f64));
        let f = u.map(|x| x / stride);
        out.query.push(f[0] + m * (f[1] + m * f[2]));
        out.positives.push(
            targets
                .iter()
                .enumerate()
                .filter(|(_, t)| (0..3).map(|a| (t[a] - g[a]).powi(2)).sum::<f64>() <= threshold2)
                .map(|(idx, _)| idx)
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::resample::ResampleGrid;

    fn ramp(dims: [usize; 3]) -> Prepared {
        let mut data = Vec::new();
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    data.push(0.1 + 0.001 * (i + 2 * j + 3 * k) as f32);
                }
            }
        }
        Prepared::from_parts(
            dims,
            data,
            ResampleGrid::new(dims, [3.0; 3], [3.0; 3]).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn rng_is_deterministic_and_roughly_uniform() {
        let mut a = Rng::stream(7, 3);
        let mut b = Rng::stream(7, 3);
        let xs: Vec<f64> = (0..1000).map(|_| a.unit()).collect();
        assert!(
            xs.iter()
                .zip((0..1000).map(|_| b.unit()))
                .all(|(x, y)| *x == y)
        );
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert_ne!(Rng::stream(7, 4).next_u64(), Rng::stream(7, 3).next_u64());
        let n: Vec<f64> = (0..4000).map(|_| a.normal()).collect();
        let var = n.iter().map(|x| x * x).sum::<f64>() / 4000.0;
        assert!((var - 1.0).abs() < 0.1, "{var}");
    }

    #[test]
    fn warp_without_augmentation_is_the_crop_and_rotation_keeps_the_centre() {
        let vol = ramp([40, 40, 40]);
        let w = Warp::identity([20.0, 18.0, 21.0], 8);
        assert_eq!(warped_patch(&vol, &w, 8), vol.patch([20, 18, 21], 8));
        let m = rotation_scaling([0.2, -0.1, 0.25], [1.0; 3]);
        // A rotation: orthonormal rows, determinant 1.
        for r in 0..3 {
            let n: f64 = m[r].iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-12);
        }
        let rot = Warp {
            m,
            ..Warp::identity([20.0, 18.0, 21.0], 8)
        };
        assert_eq!(rot.apply([4.0; 3]), [20.0, 18.0, 21.0]);
        let e = Elastic::random(&mut Rng::new(1), 5, 8, 2.0);
        for u in [[0.0, 0.0, 0.0], [3.3, 7.0, 5.5]] {
            assert!(e.at(u).iter().all(|d| d.abs() <= 2.0));
        }
    }

    #[test]
    fn mss_positives_are_the_true_correspondences() {
        let patch = 16;
        let mut w = Warp::identity([20.0, 20.0, 20.0], patch);
        w.shift = [4.0, 0.0, -2.0];
        let plain = Warp::identity([20.0, 20.0, 20.0], patch);
        // Point at patch voxel (9, 8, 8) of A = grid (21, 20, 20) = A' voxel (5, 8, 10).
        let d = mss_direction(&[[9, 8, 8]], &plain, &w, patch, 2);
        let m = 8;
        assert_eq!(d.query[0], 4 + m * (4 + m * 4));
        // Feature voxel (2, 4, 5) of A' has centre (4.5, 8.5, 10.5) → grid (20.5, 20.5, 20.5):
        // distance sqrt(0.75) ≤ 2 from (21, 20, 20): positive. Voxel (0, 4, 5) is 4 away: not.
        assert!(d.positives[0].contains(&(2 + m * (4 + m * 5))));
        assert!(!d.positives[0].contains(&(m * (4 + m * 5))));
        // A point far outside the other patch has no positive.
        let far = Warp {
            shift: [40.0, 0.0, 0.0],
            ..plain.clone()
        };
        let d = mss_direction(&[[0, 0, 0]], &plain, &far, patch, 4);
        assert!(d.positives[0].is_empty());
    }

    #[test]
    fn samples_are_deterministic_and_consistent() {
        let vol = ramp([50, 45, 40]);
        let o = SamplingOptions::default();
        let s1 = draw_sample(&vol, &mut Rng::stream(3, 9), 16, [8, 4, 2], &o);
        let s2 = draw_sample(&vol, &mut Rng::stream(3, 9), 16, [8, 4, 2], &o);
        assert_eq!(s1.a, s2.a);
        assert_eq!(s1.a_aug, s2.a_aug);
        assert_eq!(s1.centres, s2.centres);
        assert_eq!(s1.a.len(), 16 * 16 * 16);
        assert_eq!(s1.mss.len(), 3);
        // The B are crops at their centres.
        assert_eq!(s1.b.len(), o.extra_crops);
        assert_eq!(s1.centres.len(), 2 + o.extra_crops);
        for (b, c) in s1.b.iter().zip(&s1.centres[2..]) {
            assert_eq!(*b, vol.patch(c.map(|x| x as i64), 16));
        }
        // Most query points are visible in the other patch at the coarsest scale.
        let visible = s1.mss[0][0]
            .positives
            .iter()
            .filter(|p| !p.is_empty())
            .count();
        assert!(visible >= o.points / 2, "{visible}");
    }
}
