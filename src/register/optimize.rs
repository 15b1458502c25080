//! The optimisation behind [`super::register`] (Burn's autodiff and Adam, natively and in
//! the page).
//!
//! Fixed points are the voxels of the query's body box plus a margin (optionally only
//! its superior part), subsampled to stay within a point budget per level: every 2nd
//! (or 3rd, …) voxel at the coarse level, every voxel (or 2nd, …) at the fine level,
//! both images smoothed by [1 2 1]/4 (stride − 1) times first. Their world positions,
//! centred on the box, go through the affine `y = (L0 + 0.01·ΔL)·q + t0 + Δt` (+ the
//! B-spline displacement), then into moving voxel indices, where [`trilinear`] reads the
//! moving image. Before the gradient steps, the shift along z is searched every 6 mm at
//! the coarse level (scans of the same region start and stop at different heights).
//!
//! Why B-spline control points rather than a dense displacement field: a few thousand
//! parameters instead of ~1.5 million (a 21 mm grid over a head-and-neck box), a field
//! that is smooth by construction (C² cubic B-splines) so the optimiser cannot fold the
//! anatomy into noise, and the dense field is three small matmuls (separable basis), which
//! is cheap on the CPU and on a GPU alike. It is also what the classical baseline used.

use web_time::Instant;

use burn::optim::{Adam, AdamConfig, Optimizer};
use burn::tensor::{Device, Tensor, TensorData};

use super::sample::{ncc, trilinear};
use super::{RegImage, RegisterOptions, Registration};
use crate::device::Pacer;
use crate::volume::Affine;
use crate::volume::labels::BoxVox;
use crate::{Error, Result};

mod deform;

/// One resolution level: the fixed points and the moving image they are compared with.
struct Level {
    /// Fixed-grid voxel coordinates of the points along each axis (x, y, z).
    coords: [Vec<f64>; 3],
    /// Fixed intensities at the points, `[n]` (NIfTI order over `coords`).
    fixed: Tensor<1>,
    /// Homogeneous centred world positions `[n, 4]`.
    q: Tensor<2>,
    /// Which level (0 coarse, 1 fine): the moving image smoothed for it.
    level: usize,
}

impl Level {
    fn dims(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.coords[a].len())
    }
}

/// [1 2 1]/4 smoothing along each axis (border voxels repeated).
fn smooth121(data: &[f32], d: [usize; 3]) -> Vec<f32> {
    let mut cur = data.to_vec();
    let stride = [1, d[0], d[0] * d[1]];
    for a in 0..3 {
        let mut next = vec![0f32; cur.len()];
        for (idx, out) in next.iter_mut().enumerate() {
            let p = (idx / stride[a]) % d[a];
            let lo = if p > 0 { idx - stride[a] } else { idx };
            let hi = if p + 1 < d[a] { idx + stride[a] } else { idx };
            *out = 0.25 * cur[lo] + 0.5 * cur[idx] + 0.25 * cur[hi];
        }
        cur = next;
    }
    cur
}

fn read(t: Tensor<1>) -> Result<f64> {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map(|v| v.first().copied().unwrap_or(f64::NAN))
        .map_err(|e| Error::Backend(format!("registration: reading a result: {e:?}")))
}

/// Linear decay from `lr` to `0.2·lr` over `steps`.
fn lr_at(lr: f64, step: usize, steps: usize) -> f64 {
    lr * (1.0 - 0.8 * step as f64 / steps.max(1) as f64)
}

pub(super) async fn register(
    fixed: &RegImage,
    moving: &RegImage,
    inits: &[Affine],
    opts: &RegisterOptions,
    device: &Device,
    pacer: &Pacer,
) -> Result<Registration> {
    let t0 = Instant::now();
    let fbox = fixed.body_box()?;
    moving.body_box()?;
    let pb = Problem::new(fixed, fbox, moving, opts, device, pacer, t0)?;

    // Affine: the z search and the coarse level from each start, then the fine level
    // from the best one.
    let starts = pb.z_search(inits)?;
    let (ii, dz, theta) = pb.best_start(inits, &starts).await?;
    let p_init = pb.p0(&inits[ii], [0.0, 0.0, dz]);
    let ncc_init = pb.global(&pb.levels[1], p_init.clone(), None)?.0;
    let theta = pb
        .refine(&pb.levels[1], &p_init, theta, opts.affine_steps[1])
        .await?;
    pb.lap(&format!("affine: start {ii}, z {dz} mm, fine level done"));
    let p_aff = pb.affine_of(&p_init, theta);
    let (ncc_aff, frac) = pb.global(&pb.levels[1], p_aff.clone(), None)?;
    if frac < 0.3 || !ncc_aff.is_finite() {
        return Err(Error::Failed(format!(
            "registration: after the affine only {:.0} % of the query's body region overlaps the \
             support (NCC {ncc_aff:.3})",
            100.0 * frac
        )));
    }
    let affine = pb.world_affine(&p_aff)?;

    // B-spline stage on top of the affine.
    let (deform, ncc_def) = if opts.deformable {
        let (grid, ncc_def) = pb.deformable(p_aff).await?;
        (Some(grid), ncc_def)
    } else {
        (None, ncc_aff)
    };
    Ok(Registration {
        affine,
        deform,
        region: pb.region,
        ncc: [ncc_init, ncc_aff, ncc_def],
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The registered region of the fixed grid: its body box plus the margin, optionally only
/// the superior `top_mm` of it.
fn region_of(fixed: &RegImage, fbox: &BoxVox, opts: &RegisterOptions) -> BoxVox {
    let margin = (opts.margin_mm / super::SPACING_MM).round().max(0.0) as usize;
    let mut region = BoxVox {
        min: fbox.min.map(|v| v.saturating_sub(margin)),
        max: [0, 1, 2].map(|a| (fbox.max[a] + margin).min(fixed.dims[a] - 1)),
    };
    if opts.top_mm > 0.0 {
        // Canonical axis 2 runs toward superior.
        let keep = (opts.top_mm / super::SPACING_MM).round() as usize + margin;
        region.min[2] = region.min[2].max(region.max[2].saturating_sub(keep));
    }
    region
}

/// Strides that keep each level's point count near its budget (at least 2 and 1).
fn strides_for(region: &BoxVox, max_points: [usize; 2]) -> [usize; 2] {
    let region_n = region.voxel_count() as f64;
    let stride_for = |budget: f64, min: usize| -> usize {
        ((region_n / budget).cbrt().ceil() as usize).max(min)
    };
    [
        stride_for(max_points[0] as f64, 2),
        stride_for(max_points[1] as f64, 1),
    ]
}

/// Smoothing before subsampling: [1 2 1]/4 applied (stride − 1) times.
fn smoothed(data: &[f32], dims: [usize; 3], stride: usize) -> Vec<f32> {
    let mut d = data.to_vec();
    for _ in 1..stride {
        d = smooth121(&d, dims);
    }
    d
}

impl Level {
    /// Level `level`: every `stride`-th voxel of `region` of the smoothed fixed image,
    /// positions centred on `centre`.
    fn new(
        fixed: &RegImage,
        region: &BoxVox,
        centre: [f64; 3],
        stride: usize,
        level: usize,
        base: &Device,
    ) -> Self {
        let coords = [0, 1, 2].map(|a| {
            (region.min[a]..=region.max[a])
                .step_by(stride)
                .map(|v| v as f64)
                .collect::<Vec<_>>()
        });
        let src = smoothed(&fixed.data, fixed.dims, stride);
        let n = coords.iter().map(Vec::len).product::<usize>();
        let mut vals = Vec::with_capacity(n);
        let mut q = Vec::with_capacity(4 * n);
        for &z in &coords[2] {
            for &y in &coords[1] {
                for &x in &coords[0] {
                    vals.push(
                        src[x as usize + fixed.dims[0] * (y as usize + fixed.dims[1] * z as usize)],
                    );
                    let w = fixed.affine.voxel_to_world([x, y, z]);
                    q.extend([
                        (w[0] - centre[0]) as f32,
                        (w[1] - centre[1]) as f32,
                        (w[2] - centre[2]) as f32,
                        1.0,
                    ]);
                }
            }
        }
        Level {
            coords,
            fixed: Tensor::from_data(TensorData::new(vals, [n]), base),
            q: Tensor::from_data(TensorData::new(q, [n, 4]), base),
            level,
        }
    }
}

/// Moving world → moving voxel: v = R·y + o, applied as y·Rᵀ + o; returns (Rᵀ, o).
fn world_to_voxel(moving: &RegImage, base: &Device) -> Result<(Tensor<2>, Tensor<2>)> {
    let minv = moving.affine.inverse()?;
    let rt: Vec<f32> = (0..3)
        .flat_map(|c| (0..3).map(move |r| (c, r)))
        .map(|(c, r)| minv.m[r][c] as f32)
        .collect();
    let rt = Tensor::<2>::from_data(TensorData::new(rt, [3, 3]), base);
    let mo = Tensor::<2>::from_data(
        TensorData::new((0..3).map(|r| minv.m[r][3] as f32).collect(), [1, 3]),
        base,
    );
    Ok((rt, mo))
}

/// What every phase of one registration shares: the options, the region and its two
/// levels, the moving image per level and the map into its voxels, the optimiser.
struct Problem<'a> {
    moving_dims: [usize; 3],
    opts: &'a RegisterOptions,
    device: &'a Device,
    pacer: &'a Pacer,
    /// The device without autodiff.
    base: Device,
    region: BoxVox,
    /// World position of the region's centre (the origin of the points' `q`).
    centre: [f64; 3],
    levels: [Level; 2],
    /// The moving image smoothed for each level, `[moving.len()]`.
    mov: [Tensor<1>; 2],
    /// Moving world → moving voxel as y·Rᵀ + o: Rᵀ `[3, 3]` and o `[1, 3]`.
    rt: Tensor<2>,
    mo: Tensor<2>,
    /// Scale of the affine parameters: 0.01 on the linear part, 1 on the translation.
    scale: Tensor<2>,
    adam: Adam,
    t0: Instant,
    /// Timings to stderr (`MEDLSAM_REG_TRACE` set).
    trace: bool,
}

impl<'a> Problem<'a> {
    fn new(
        fixed: &RegImage,
        fbox: BoxVox,
        moving: &RegImage,
        opts: &'a RegisterOptions,
        device: &'a Device,
        pacer: &'a Pacer,
        t0: Instant,
    ) -> Result<Self> {
        let base = device.clone().inner();
        let region = region_of(fixed, &fbox, opts);
        let centre_vox = [0, 1, 2].map(|a| 0.5 * (region.min[a] + region.max[a]) as f64);
        let centre = fixed.affine.voxel_to_world(centre_vox);
        let strides = strides_for(&region, opts.max_points);
        let levels = [0, 1].map(|li| Level::new(fixed, &region, centre, strides[li], li, &base));
        let mn = moving.len();
        let mov = strides.map(|st| {
            Tensor::<1>::from_data(
                TensorData::new(smoothed(&moving.data, moving.dims, st), [mn]),
                &base,
            )
        });
        let (rt, mo) = world_to_voxel(moving, &base)?;
        let scale = Tensor::<2>::from_data(
            TensorData::new(
                (0..12)
                    .map(|i| if i % 4 == 3 { 1.0f32 } else { 0.01 })
                    .collect::<Vec<_>>(),
                [3, 4],
            ),
            &base,
        );
        Ok(Self {
            moving_dims: moving.dims,
            opts,
            device,
            pacer,
            base,
            region,
            centre,
            levels,
            mov,
            rt,
            mo,
            scale,
            adam: AdamConfig::new().build(),
            t0,
            trace: std::env::var_os("MEDLSAM_REG_TRACE").is_some(),
        })
    }

    fn lap(&self, what: &str) {
        if self.trace {
            eprintln!("  [{:6.2} s] {what}", self.t0.elapsed().as_secs_f64());
        }
    }

    /// Initial affine in centred coordinates: y = L0·q + (L0·c + t0).
    fn p0(&self, init: &Affine, shift: [f64; 3]) -> Tensor<2> {
        let centre = self.centre;
        let mut v = Vec::with_capacity(12);
        for r in 0..3 {
            for c in 0..3 {
                v.push(init.m[r][c] as f32);
            }
            let t = init.m[r][3] + (0..3).map(|c| init.m[r][c] * centre[c]).sum::<f64>() + shift[r];
            v.push(t as f32);
        }
        Tensor::from_data(TensorData::new(v, [3, 4]), &self.base)
    }

    fn affine_of(&self, p0: &Tensor<2>, theta: Tensor<1>) -> Tensor<2> {
        p0.clone()
            .add(theta.reshape([3, 4]).mul(self.scale.clone()))
    }

    /// Sample the moving image at the fixed points of a level mapped by P (+ displacement D).
    fn warp(&self, l: &Level, p: Tensor<2>, disp: Option<Tensor<2>>) -> (Tensor<1>, Tensor<1>) {
        let mut y = l.q.clone().matmul(p.transpose());
        if let Some(d) = disp {
            y = y.add(d);
        }
        let v = y.matmul(self.rt.clone()).add(self.mo.clone());
        trilinear(&self.mov[l.level], self.moving_dims, v)
    }

    /// (NCC, fraction of the points inside the moving image) of a level mapped by P (+ D).
    fn global(&self, l: &Level, p: Tensor<2>, disp: Option<Tensor<2>>) -> Result<(f64, f64)> {
        let (m, inside) = self.warp(l, p, disp);
        let frac = read(inside.clone().mean())?;
        Ok((read(ncc(l.fixed.clone(), m, inside))?, frac))
    }

    /// Initial shift along z: a coarse search of the NCC at 6 mm. Scans of one region
    /// start and stop at different heights, and a neck can match a skull base nearly as
    /// well as its own level: the best few local maxima (init, shift, NCC) are each refined
    /// by the coarse affine ([`Self::best_start`]).
    fn z_search(&self, inits: &[Affine]) -> Result<Vec<(usize, f64, f64)>> {
        let steps = (self.opts.z_search_mm / 6.0).floor() as i64;
        let mut starts = Vec::new();
        for (ii, init) in inits.iter().enumerate() {
            let mut profile = Vec::new();
            for s in -steps..=steps {
                let dz = 6.0 * s as f64;
                let (v, frac) =
                    self.global(&self.levels[0], self.p0(init, [0.0, 0.0, dz]), None)?;
                profile.push((
                    dz,
                    if frac > 0.3 && v.is_finite() {
                        v
                    } else {
                        f64::NEG_INFINITY
                    },
                ));
            }
            starts.extend(
                z_starts(&profile, 3, 24.0)
                    .into_iter()
                    .map(|(dz, v)| (ii, dz, v)),
            );
        }
        if starts.is_empty() {
            return Err(Error::Failed(
                "registration: the images do not overlap after initialisation".into(),
            ));
        }
        Ok(starts)
    }

    /// Adam on the 12 affine parameters at one level, from `theta`.
    async fn refine(
        &self,
        l: &Level,
        p_init: &Tensor<2>,
        theta: Tensor<1>,
        steps: usize,
    ) -> Result<Tensor<1>> {
        let loss = |th: Tensor<1>| {
            let p = self.affine_of(&p_init.clone().autodiff(), th);
            let (m, inside) = self.warp(l, p, None);
            ncc(l.fixed.clone(), m, inside).neg()
        };
        let names = ["affine", "the affine"];
        self.minimise(theta, steps, self.opts.affine_lr, names, loss)
            .await
    }

    /// `steps` Adam steps on `loss` from `params`, the learning rate decaying from `lr`;
    /// `names`: the loss and the parameters in errors.
    async fn minimise(
        &self,
        mut params: Tensor<1>,
        steps: usize,
        lr: f64,
        names: [&str; 2],
        loss_of: impl Fn(Tensor<1>) -> Tensor<1>,
    ) -> Result<Tensor<1>> {
        let mut state = None;
        for step in 0..steps {
            self.pacer.tick(self.device).await;
            let x = Tensor::<1>::from_inner(params.clone()).require_grad();
            let loss = loss_of(x.clone());
            let value = read(loss.clone().inner())?;
            if !value.is_finite() {
                return Err(Error::Failed(format!(
                    "registration: the {} loss is not finite ({value}) at step {step}",
                    names[0]
                )));
            }
            let grads = loss.backward();
            let g = x.grad(&grads).ok_or_else(|| {
                Error::Failed(format!("registration: no gradient for {}", names[1]))
            })?;
            let (t, s) = Optimizer::step(&self.adam, lr_at(lr, step, steps), params, g, state);
            params = t;
            state = s;
        }
        Ok(params)
    }

    /// The coarse affine from each start; the one with the highest NCC after it goes on:
    /// (init, z shift, parameters).
    async fn best_start(
        &self,
        inits: &[Affine],
        starts: &[(usize, f64, f64)],
    ) -> Result<(usize, f64, Tensor<1>)> {
        let mut best: Option<(f64, usize, f64, Tensor<1>)> = None;
        for &(ii, dz, v) in starts {
            let p = self.p0(&inits[ii], [0.0, 0.0, dz]);
            let theta = self
                .refine(
                    &self.levels[0],
                    &p,
                    Tensor::<1>::zeros([12], &self.base),
                    self.opts.affine_steps[0],
                )
                .await?;
            let (after, frac) =
                self.global(&self.levels[0], self.affine_of(&p, theta.clone()), None)?;
            self.lap(&format!(
                "start {ii}, z {dz} mm (ncc {v:.3}): coarse affine ncc {after:.3}"
            ));
            if frac > 0.3 && after.is_finite() && best.as_ref().is_none_or(|b| after > b.0) {
                best = Some((after, ii, dz, theta));
            }
        }
        let (_, ii, dz, theta) = best.ok_or_else(|| {
            Error::Failed("registration: no starting position keeps the images overlapping".into())
        })?;
        Ok((ii, dz, theta))
    }

    /// Back to an affine of world coordinates: y = P·[w − c; 1].
    fn world_affine(&self, p_aff: &Tensor<2>) -> Result<Affine> {
        let centre = self.centre;
        let pv = p_aff
            .clone()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_err(|e| Error::Backend(format!("registration: {e:?}")))?;
        let mut am = [[0.0; 4]; 4];
        for r in 0..3 {
            for c in 0..3 {
                am[r][c] = pv[4 * r + c];
            }
            am[r][3] = pv[4 * r + 3] - (0..3).map(|c| pv[4 * r + c] * centre[c]).sum::<f64>();
        }
        am[3][3] = 1.0;
        let affine = Affine { m: am };
        if !affine.is_finite() || affine.determinant().abs() < 0.1 {
            return Err(Error::Failed("registration: the affine degenerated".into()));
        }
        Ok(affine)
    }
}

/// The `k` best local maxima of a z-shift profile `(shift mm, NCC)` (non-finite values
/// never), at least `apart` mm from each other, best first.
fn z_starts(profile: &[(f64, f64)], k: usize, apart: f64) -> Vec<(f64, f64)> {
    let mut peaks: Vec<(f64, f64)> = profile
        .iter()
        .enumerate()
        .filter(|&(i, &(_, v))| {
            v.is_finite()
                && (i == 0 || profile[i - 1].1 <= v)
                && (i + 1 == profile.len() || profile[i + 1].1 <= v)
        })
        .map(|(_, &p)| p)
        .collect();
    peaks.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for p in peaks {
        if out.len() < k && out.iter().all(|q| (q.0 - p.0).abs() >= apart) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::z_starts;

    #[test]
    fn z_starts_are_separated_local_maxima_best_first() {
        let prof: Vec<(f64, f64)> = [0.1, 0.5, 0.4, 0.45, 0.9, 0.3, f64::NEG_INFINITY, 0.6, 0.2]
            .iter()
            .enumerate()
            .map(|(i, &v)| (6.0 * i as f64, v))
            .collect();
        // Maxima: 0.5 at 6, 0.9 at 24, 0.6 at 42 (0.45 at 18 is not one: 0.9 follows).
        assert_eq!(
            z_starts(&prof, 3, 12.0),
            vec![(24.0, 0.9), (42.0, 0.6), (6.0, 0.5)]
        );
        // Both others lie 18 mm from the best: dropped when 20 mm apart are asked for.
        assert_eq!(z_starts(&prof, 3, 20.0), vec![(24.0, 0.9)]);
        assert_eq!(z_starts(&prof, 2, 12.0), vec![(24.0, 0.9), (42.0, 0.6)]);
        assert!(z_starts(&[(0.0, f64::NAN)], 3, 6.0).is_empty());
    }
}
