//! The B-spline stage of [`super::register`]: a cubic B-spline free-form deformation on
//! top of the affine, optimised with Adam on local (or global) NCC plus a bending penalty.

use burn::tensor::{Device, Tensor, TensorData};

use super::{Level, Problem};
use crate::register::bspline::BsplineGrid;
use crate::register::sample::{local_ncc, ncc};
use crate::volume::labels::BoxVox;
use crate::{Error, Result};

impl Problem<'_> {
    /// The B-spline stage from the affine `p_fixed`, coarse then fine level: the control
    /// grid and the fine level's NCC after it.
    pub(super) async fn deformable(&self, p_fixed: Tensor<2>) -> Result<(BsplineGrid, f64)> {
        let mut ffd = Ffd::new(&self.region, &self.levels, self.opts.grid_mm, &self.base);
        let nc = ffd.grid.count();
        let mut coef = Tensor::<1>::zeros([3 * nc], &self.base);
        for li in 0..self.levels.len() {
            let loss = |c: Tensor<1>| self.deform_loss(&ffd, li, &p_fixed, c);
            let (steps, lr) = (self.opts.deform_steps[li], self.opts.deform_lr);
            let names = ["deformable", "the control grid"];
            coef = self.minimise(coef, steps, lr, names, loss).await?;
            self.lap(&format!("deformable level {li}: {} controls", nc));
        }
        let disp = ffd.dense(coef.clone(), 1, self.levels[1].dims());
        let ncc_def = self.global(&self.levels[1], p_fixed, Some(disp))?.0;
        ffd.grid.coef = coef
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Backend(format!("registration: {e:?}")))?;
        if ffd.grid.coef.iter().any(|v| !v.is_finite()) {
            return Err(Error::Failed(
                "registration: the deformation is not finite".into(),
            ));
        }
        Ok((ffd.grid, ncc_def))
    }

    /// −similarity (local NCC when `lncc_window` ≥ 3, else global) + bending penalty, at
    /// level `li` with control coefficients `c`.
    fn deform_loss(&self, ffd: &Ffd, li: usize, p_fixed: &Tensor<2>, c: Tensor<1>) -> Tensor<1> {
        let l = &self.levels[li];
        let d = l.dims();
        let disp = ffd.dense(c.clone(), li, d);
        let (m, inside) = self.warp(l, p_fixed.clone(), Some(disp));
        let sim = if self.opts.lncc_window >= 3 {
            let win = self.opts.lncc_window | 1;
            let lncc = local_ncc(l.fixed.clone(), m, d, win);
            lncc.mul(inside.clone())
                .sum()
                .div(inside.sum().add_scalar(1e-6))
        } else {
            ncc(l.fixed.clone(), m, inside)
        };
        sim.neg()
            .add(ffd.bending(c).mul_scalar(self.opts.bending as f32))
    }
}

/// The B-spline control grid over the region and its basis matrices at each level.
struct Ffd {
    grid: BsplineGrid,
    /// Basis matrices, transposed to [controls, points], per level and axis.
    bases: Vec<[Tensor<2>; 3]>,
}

impl Ffd {
    fn new(region: &BoxVox, levels: &[Level; 2], grid_mm: f64, base: &Device) -> Self {
        let len = [0, 1, 2].map(|a| region.max[a] - region.min[a] + 1);
        let step_vox = (grid_mm / crate::register::SPACING_MM).max(1.0);
        let grid = BsplineGrid::zeros(region.min.map(|v| v as f64), len, step_vox);
        let cd = grid.dims;
        let bases = levels
            .iter()
            .map(|l| {
                [0, 1, 2].map(|a| {
                    let m = grid.basis_matrix(a, &l.coords[a]);
                    Tensor::<2>::from_data(TensorData::new(m, [l.coords[a].len(), cd[a]]), base)
                        .transpose()
                })
            })
            .collect();
        Self { grid, bases }
    }

    /// The dense displacement `[n, 3]` at the points (dims `d`) of level `li`.
    fn dense(&self, c: Tensor<1>, li: usize, d: [usize; 3]) -> Tensor<2> {
        let cd = self.grid.dims;
        let b = &self.bases[li];
        // c: [3·cz·cy·cx] → [3, nz, ny, nx] → [n, 3].
        let t = c
            .reshape([3 * cd[2] * cd[1], cd[0]])
            .matmul(b[0].clone()) // [3·cz·cy, nx]
            .reshape([3 * cd[2], cd[1], d[0]])
            .swap_dims(1, 2)
            .reshape([3 * cd[2] * d[0], cd[1]])
            .matmul(b[1].clone()) // [3·cz·nx, ny]
            .reshape([3, cd[2], d[0] * d[1]])
            .swap_dims(1, 2)
            .reshape([3 * d[0] * d[1], cd[2]])
            .matmul(b[2].clone()) // [3·nx·ny, nz] (x before y)
            .reshape([3, d[0], d[1], d[2]])
            .permute([0, 3, 2, 1]) // [3, nz, ny, nx]
            .reshape([3, d[0] * d[1] * d[2]]);
        t.transpose()
    }

    /// Bending penalty: mean squared second differences of the coefficients per axis.
    fn bending(&self, c: Tensor<1>) -> Tensor<1> {
        let cd = self.grid.dims;
        let c4 = c.reshape([3, cd[2], cd[1], cd[0]]);
        let mut pen = Tensor::<1>::zeros([1], &c4.device());
        for axis in 1..4 {
            let n = c4.dims()[axis];
            if n < 3 {
                continue;
            }
            let a = c4.clone().narrow(axis, 0, n - 2);
            let b = c4.clone().narrow(axis, 1, n - 2);
            let e = c4.clone().narrow(axis, 2, n - 2);
            let d2 = a.add(e).sub(b.mul_scalar(2.0));
            pen = pen.add(d2.clone().mul(d2).mean().reshape([1]));
        }
        pen
    }
}
