//! Cubic B-spline free-form deformation on the fixed (query) 3 mm grid.
//!
//! Control point `k` along an axis sits at fixed-grid voxel `origin + (k − 1)·step`;
//! a voxel between control points `c + 1` and `c + 2` (fraction `t`) takes the
//! displacements of `c .. c + 3` with the cubic B-spline weights. Outside the
//! registered region the displacement is that of its nearest border (clamped).
//! The dense field is separable: a product of three basis matrices (one per axis),
//! which is how the optimiser evaluates it with Burn matmuls.

/// A cubic B-spline displacement field (world mm) over a box of the fixed 3 mm grid.
#[derive(Clone, Debug, PartialEq)]
pub struct BsplineGrid {
    /// Fixed-grid voxel index of the first knot (control point 1) along each axis.
    pub origin: [f64; 3],
    /// Control point spacing in fixed-grid voxels.
    pub step: f64,
    /// Control points along each axis (x, y, z).
    pub dims: [usize; 3],
    /// Displacements, world mm: component `c` (0..3) of control point `(x, y, z)` at
    /// `c·n + x + dims[0]·(y + dims[1]·z)`, `n` the control point count.
    pub coef: Vec<f32>,
}

/// The 4 cubic B-spline weights at fraction `t` ∈ [0, 1].
pub fn weights(t: f64) -> [f64; 4] {
    let t2 = t * t;
    let t3 = t2 * t;
    [
        (1.0 - t).powi(3) / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    ]
}

impl BsplineGrid {
    /// A zero field covering `len` voxels from `origin` with control points every `step` voxels.
    pub fn zeros(origin: [f64; 3], len: [usize; 3], step: f64) -> Self {
        let dims = len.map(|l| ((l.max(1) - 1) as f64 / step).floor() as usize + 4);
        Self {
            origin,
            step,
            dims,
            coef: vec![0.0; 3 * dims.iter().product::<usize>()],
        }
    }

    /// Number of control points.
    pub fn count(&self) -> usize {
        self.dims.iter().product()
    }

    /// First control index and the 4 weights at fixed-grid coordinate `x` along `axis`.
    pub fn basis(&self, axis: usize, x: f64) -> (usize, [f64; 4]) {
        let cells = self.dims[axis] - 3;
        let u = ((x - self.origin[axis]) / self.step).clamp(0.0, cells as f64);
        let c = (u.floor() as usize).min(cells - 1);
        (c, weights(u - c as f64))
    }

    /// Row-major `[positions.len(), dims[axis]]` matrix of basis weights.
    pub fn basis_matrix(&self, axis: usize, positions: &[f64]) -> Vec<f32> {
        let n = self.dims[axis];
        let mut m = vec![0f32; positions.len() * n];
        for (r, &x) in positions.iter().enumerate() {
            let (c, w) = self.basis(axis, x);
            for (k, wk) in w.iter().enumerate() {
                m[r * n + c + k] = *wk as f32;
            }
        }
        m
    }

    /// Displacement (world mm) at a continuous fixed-grid voxel index.
    pub fn displacement(&self, p: [f64; 3]) -> [f64; 3] {
        let b = [0, 1, 2].map(|a| self.basis(a, p[a]));
        let n = self.count();
        let mut out = [0.0; 3];
        for (dz, wz) in b[2].1.iter().enumerate() {
            for (dy, wy) in b[1].1.iter().enumerate() {
                let wzy = wz * wy;
                let row = b[0].0 + self.dims[0] * (b[1].0 + dy + self.dims[1] * (b[2].0 + dz));
                for (dx, wx) in b[0].1.iter().enumerate() {
                    let w = wzy * wx;
                    for (c, o) in out.iter_mut().enumerate() {
                        *o += w * self.coef[c * n + row + dx] as f64;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_partition_unity_and_constant_fields_are_exact() {
        for t in [0.0, 0.3, 0.5, 1.0] {
            let w = weights(t);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let mut g = BsplineGrid::zeros([2.0, 2.0, 2.0], [20, 10, 7], 4.0);
        assert_eq!(g.dims, [8, 6, 5]);
        let n = g.count();
        for i in 0..n {
            g.coef[i] = 1.5;
            g.coef[2 * n + i] = -2.0;
        }
        for p in [[0.0, 0.0, 0.0], [7.3, 5.1, 3.9], [40.0, -3.0, 9.0]] {
            let d = g.displacement(p);
            assert!((d[0] - 1.5).abs() < 1e-6 && d[1].abs() < 1e-9 && (d[2] + 2.0).abs() < 1e-6);
        }
        let m = g.basis_matrix(0, &[2.0, 5.0, 21.0]);
        assert_eq!(m.len(), 3 * 8);
        for r in 0..3 {
            assert!((m[r * 8..(r + 1) * 8].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
