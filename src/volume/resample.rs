//! Resampling to a target spacing (trilinear for images, nearest for labels)
//! and cropping/padding patches around a point. All positions here are voxel
//! indices of the volume passed in; the returned volumes carry affines that
//! place them exactly in the same world space.

use super::{Affine, Volume, checked_voxel_count};
use crate::{Error, Result};

/// Voxel types that can be interpolated.
pub trait Sample: Copy {
    fn to_f32(self) -> f32;
}
impl Sample for i16 {
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Sample for u16 {
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Sample for u8 {
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl Sample for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

/// How a grid at a new spacing sits on the old one: new voxel `o` has old
/// continuous index `(o + 0.5)·scale − 0.5` (voxel corners aligned, so the
/// world extent is kept up to rounding of the voxel count).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResampleGrid {
    pub new_dims: [usize; 3],
    /// New spacing divided by old spacing, per axis.
    pub scale: [f64; 3],
}

impl ResampleGrid {
    /// The grid at `target_mm` spacing over a volume of `dims` voxels at `spacing_mm`.
    pub fn new(dims: [usize; 3], spacing_mm: [f64; 3], target_mm: [f64; 3]) -> Result<Self> {
        let mut new_dims = [0; 3];
        let mut scale = [0.0; 3];
        for a in 0..3 {
            if !(target_mm[a] > 0.0 && spacing_mm[a] > 0.0 && target_mm[a].is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "cannot resample from spacing {:?} mm to {:?} mm",
                    spacing_mm, target_mm
                )));
            }
            scale[a] = target_mm[a] / spacing_mm[a];
            new_dims[a] = ((dims[a] as f64 / scale[a]).round() as usize).max(1);
        }
        checked_voxel_count(new_dims)?;
        Ok(Self { new_dims, scale })
    }

    /// Old continuous voxel index of a new continuous voxel index.
    pub fn new_to_old(&self, p: [f64; 3]) -> [f64; 3] {
        [0, 1, 2].map(|a| (p[a] + 0.5) * self.scale[a] - 0.5)
    }

    /// New continuous voxel index of an old continuous voxel index.
    pub fn old_to_new(&self, p: [f64; 3]) -> [f64; 3] {
        [0, 1, 2].map(|a| (p[a] + 0.5) / self.scale[a] - 0.5)
    }

    /// The affine taking new voxel indices to old ones.
    pub fn new_to_old_affine(&self) -> Affine {
        let mut m = [[0.0; 4]; 4];
        for a in 0..3 {
            m[a][a] = self.scale[a];
            m[a][3] = 0.5 * self.scale[a] - 0.5;
        }
        m[3][3] = 1.0;
        Affine { m }
    }
}

/// Trilinear interpolation at a continuous voxel index, indices clamped to the grid.
pub fn sample_linear<T: Sample>(vol: &Volume<T>, p: [f64; 3]) -> f32 {
    let mut i0 = [0usize; 3];
    let mut i1 = [0usize; 3];
    let mut w = [0f32; 3];
    for a in 0..3 {
        let n = vol.dims[a];
        let x = p[a].clamp(0.0, (n - 1) as f64);
        let f = x.floor();
        i0[a] = f as usize;
        i1[a] = (i0[a] + 1).min(n - 1);
        w[a] = (x - f) as f32;
    }
    let g = |i: usize, j: usize, k: usize| vol.get(i, j, k).to_f32();
    let c00 = g(i0[0], i0[1], i0[2]) * (1.0 - w[0]) + g(i1[0], i0[1], i0[2]) * w[0];
    let c10 = g(i0[0], i1[1], i0[2]) * (1.0 - w[0]) + g(i1[0], i1[1], i0[2]) * w[0];
    let c01 = g(i0[0], i0[1], i1[2]) * (1.0 - w[0]) + g(i1[0], i0[1], i1[2]) * w[0];
    let c11 = g(i0[0], i1[1], i1[2]) * (1.0 - w[0]) + g(i1[0], i1[1], i1[2]) * w[0];
    let c0 = c00 * (1.0 - w[1]) + c10 * w[1];
    let c1 = c01 * (1.0 - w[1]) + c11 * w[1];
    c0 * (1.0 - w[2]) + c1 * w[2]
}

/// Resample onto the grid at `target_mm` spacing over the same extent (see [`ResampleGrid`]).
fn resample_with<T: Copy, U>(
    vol: &Volume<T>,
    target_mm: [f64; 3],
    f: impl Fn([f64; 3]) -> U,
) -> Result<Volume<U>> {
    let grid = ResampleGrid::new(vol.dims, vol.spacing_mm(), target_mm)?;
    let affine = vol.affine.compose(&grid.new_to_old_affine());
    resample_to_grid_with(vol, grid.new_dims, &affine, f)
}

/// Resample an image to `target_mm` spacing with trilinear interpolation.
pub fn resample_linear<T: Sample>(vol: &Volume<T>, target_mm: [f64; 3]) -> Result<Volume<f32>> {
    resample_with(vol, target_mm, |p| sample_linear(vol, p))
}

/// Resample a label map to `target_mm` spacing with nearest-neighbour lookup.
pub fn resample_nearest<T: Copy>(vol: &Volume<T>, target_mm: [f64; 3]) -> Result<Volume<T>> {
    resample_with(vol, target_mm, |p| {
        let q = [0, 1, 2].map(|a| (p[a].round().max(0.0) as usize).min(vol.dims[a] - 1));
        vol.get(q[0], q[1], q[2])
    })
}

fn resample_to_grid_with<T: Copy, U>(
    vol: &Volume<T>,
    dims: [usize; 3],
    affine: &Affine,
    f: impl Fn([f64; 3]) -> U,
) -> Result<Volume<U>> {
    checked_voxel_count(dims)?;
    // target voxel → world → source voxel
    let to_src = vol.affine.inverse()?.compose(affine);
    let mut data = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                data.push(f(to_src.voxel_to_world([i as f64, j as f64, k as f64])));
            }
        }
    }
    Ok(Volume {
        dims,
        data,
        affine: *affine,
    })
}

/// Resample a label map onto another grid (`dims`, `affine`) by nearest neighbour in
/// world space; target voxels outside the source get `outside`.
pub fn resample_nearest_to_grid<T: Copy>(
    vol: &Volume<T>,
    dims: [usize; 3],
    affine: &Affine,
    outside: T,
) -> Result<Volume<T>> {
    resample_to_grid_with(vol, dims, affine, |p| {
        let q = p.map(|x| x.round());
        if (0..3).all(|a| q[a] >= 0.0 && q[a] < vol.dims[a] as f64) {
            vol.get(q[0] as usize, q[1] as usize, q[2] as usize)
        } else {
            outside
        }
    })
}

/// Resample an image onto another grid by trilinear interpolation in world space
/// (positions outside the source are clamped to its border).
pub fn resample_linear_to_grid<T: Sample>(
    vol: &Volume<T>,
    dims: [usize; 3],
    affine: &Affine,
) -> Result<Volume<f32>> {
    resample_to_grid_with(vol, dims, affine, |p| sample_linear(vol, p))
}

/// A `size` patch whose first voxel is at `start` (may lie outside the volume);
/// voxels outside are `fill`. The patch's affine keeps it in place in world space.
pub fn crop_patch<T: Copy>(
    vol: &Volume<T>,
    start: [i64; 3],
    size: [usize; 3],
    fill: T,
) -> Result<Volume<T>> {
    let n = checked_voxel_count(size)?;
    let mut data = vec![fill; n];
    let d = vol.dims.map(|x| x as i64);
    // Per axis, the overlapping range in patch coordinates.
    let lo = [0, 1, 2].map(|a| (-start[a]).clamp(0, size[a] as i64) as usize);
    let hi = [0, 1, 2].map(|a| (d[a] - start[a]).clamp(0, size[a] as i64) as usize);
    if (0..3).all(|a| lo[a] < hi[a]) {
        for k in lo[2]..hi[2] {
            for j in lo[1]..hi[1] {
                let src_k = (start[2] + k as i64) as usize;
                let src_j = (start[1] + j as i64) as usize;
                let src_i = (start[0] + lo[0] as i64) as usize;
                let src = vol.index(src_i, src_j, src_k);
                let dst = lo[0] + size[0] * (j + size[1] * k);
                let len = hi[0] - lo[0];
                data[dst..dst + len].copy_from_slice(&vol.data[src..src + len]);
            }
        }
    }
    let shift = Affine::from_diagonal([1.0; 3], start.map(|s| s as f64));
    Ok(Volume {
        dims: size,
        data,
        affine: vol.affine.compose(&shift),
    })
}

/// A `size` patch centred on voxel `center` (the centre is voxel `size/2` of the patch).
pub fn crop_around<T: Copy>(
    vol: &Volume<T>,
    center: [i64; 3],
    size: [usize; 3],
    fill: T,
) -> Result<Volume<T>> {
    crop_patch(
        vol,
        [0, 1, 2].map(|a| center[a] - (size[a] / 2) as i64),
        size,
        fill,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_resample_of_a_ramp_is_exact_inside() {
        // value = 2·i + 3·j + 5·k: trilinear interpolation is exact for linear functions.
        let dims = [10, 8, 6];
        let mut data = Vec::new();
        for k in 0..6 {
            for j in 0..8 {
                for i in 0..10 {
                    data.push((2 * i + 3 * j + 5 * k) as f32);
                }
            }
        }
        let v = Volume::from_data(dims, data, Affine::from_diagonal([1.0, 1.0, 2.0], [0.0; 3]))
            .unwrap();
        let r = resample_linear(&v, [0.5, 2.0, 1.0]).unwrap();
        assert_eq!(r.dims, [20, 4, 12]);
        assert_eq!(r.spacing_mm(), [0.5, 2.0, 1.0]);
        let grid = ResampleGrid::new(dims, [1.0, 1.0, 2.0], [0.5, 2.0, 1.0]).unwrap();
        for (i, j, k) in [(3, 1, 4), (10, 2, 6), (15, 2, 8)] {
            let o = grid.new_to_old([i as f64, j as f64, k as f64]);
            let expect = 2.0 * o[0] + 3.0 * o[1] + 5.0 * o[2];
            assert!((r.get(i, j, k) as f64 - expect).abs() < 1e-4);
            // The affine puts the new voxel at the world position of the old continuous index.
            let w_new = r.affine.voxel_to_world([i as f64, j as f64, k as f64]);
            let w_old = v.affine.voxel_to_world(o);
            assert!((0..3).all(|a| (w_new[a] - w_old[a]).abs() < 1e-9));
        }
    }

    #[test]
    fn crop_pads_with_fill_and_keeps_world_position() {
        let v = Volume::from_data(
            [4, 4, 4],
            (0..64).map(|x| x as i16).collect(),
            Affine::identity(),
        )
        .unwrap();
        let p = crop_around(&v, [0, 0, 0], [3, 3, 3], -1000).unwrap();
        assert_eq!(p.get(0, 0, 0), -1000);
        assert_eq!(p.get(1, 1, 1), v.get(0, 0, 0));
        assert_eq!(p.get(2, 2, 2), v.get(1, 1, 1));
        assert_eq!(p.affine.voxel_to_world([1.0, 1.0, 1.0]), [0.0, 0.0, 0.0]);
        let far = crop_patch(&v, [10, 10, 10], [2, 2, 2], 7).unwrap();
        assert!(far.data.iter().all(|&x| x == 7));
    }
}
