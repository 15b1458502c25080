//! MedLAM input: a canonical (LPS) CT resampled to 3 mm isotropic with the
//! piecewise-linear MedLAM intensity mapping, and patches cut from it.
//!
//! Coordinates here are **grid** voxel indices of the 3 mm grid (continuous
//! where noted); [`Prepared::grid_to_canonical`] and
//! [`Prepared::canonical_to_grid`] convert to and from the canonical voxel
//! indices of the CT it came from. Patches are stored in NIfTI order (axis 0
//! fastest), which is the row-major order of a Burn tensor `[.., K, J, I]`:
//! the network sees the canonical axes reversed (z, y, x).

use crate::Result;
use crate::volume::intensity::medlam_intensity;
use crate::volume::resample::{ResampleGrid, resample_linear};
use crate::volume::{CtVolume, checked_voxel_count};
use burn::tensor::{Device, Tensor, TensorData};

/// Voxel size of the MedLAM grid in mm.
pub const SPACING_MM: f64 = 3.0;

/// A CT on the 3 mm MedLAM grid, intensities mapped to [0, 1].
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Grid size (canonical axis order).
    pub dims: [usize; 3],
    /// Mapped intensities in NIfTI order.
    pub data: Vec<f32>,
    /// How this grid sits on the canonical grid it was resampled from.
    pub grid: ResampleGrid,
}

impl Prepared {
    /// Resample a **canonical** CT to 3 mm and map its intensities.
    pub fn from_canonical(ct: &CtVolume) -> Result<Self> {
        let hu = resample_linear(ct, [SPACING_MM; 3])?;
        let grid = ResampleGrid::new(ct.dims, ct.spacing_mm(), [SPACING_MM; 3])?;
        Ok(Self {
            dims: hu.dims,
            data: hu.data.iter().map(|&v| medlam_intensity(v)).collect(),
            grid,
        })
    }

    /// A prepared grid from raw parts (intensities in NIfTI order); checks the length.
    pub fn from_parts(dims: [usize; 3], data: Vec<f32>, grid: ResampleGrid) -> Result<Self> {
        let n = checked_voxel_count(dims)?;
        if data.len() != n {
            return Err(crate::Error::InvalidVolume(format!(
                "{} intensities for a {dims:?} grid",
                data.len()
            )));
        }
        Ok(Self { dims, data, grid })
    }

    /// Continuous canonical voxel index of a continuous grid index.
    pub fn grid_to_canonical(&self, p: [f64; 3]) -> [f64; 3] {
        self.grid.new_to_old(p)
    }

    /// Continuous grid index of a continuous canonical voxel index.
    pub fn canonical_to_grid(&self, p: [f64; 3]) -> [f64; 3] {
        self.grid.old_to_new(p)
    }

    /// Intensity at grid voxel `p` (0, air, outside the grid).
    #[inline]
    pub fn at(&self, p: [i64; 3]) -> f32 {
        let d = self.dims;
        if (0..3).all(|a| p[a] >= 0 && (p[a] as usize) < d[a]) {
            self.data[p[0] as usize + d[0] * (p[1] as usize + d[1] * p[2] as usize)]
        } else {
            0.0
        }
    }

    /// Trilinear intensity at a continuous grid index; outside the grid counts as air (0).
    pub fn sample(&self, p: [f64; 3]) -> f32 {
        let f = p.map(|x| x.floor());
        let w = [0, 1, 2].map(|a| (p[a] - f[a]) as f32);
        let b = f.map(|x| x as i64);
        let mut acc = 0.0;
        for dz in 0..2 {
            let wz = if dz == 0 { 1.0 - w[2] } else { w[2] };
            for dy in 0..2 {
                let wy = if dy == 0 { 1.0 - w[1] } else { w[1] };
                for dx in 0..2 {
                    let wx = if dx == 0 { 1.0 - w[0] } else { w[0] };
                    let v = self.at([b[0] + dx, b[1] + dy, b[2] + dz]);
                    acc += wx * wy * wz * v;
                }
            }
        }
        acc
    }

    /// The cubic patch of edge `size` whose voxel `size/2` is grid voxel `centre`
    /// (air outside the grid), in NIfTI order.
    pub fn patch(&self, centre: [i64; 3], size: usize) -> Vec<f32> {
        let s = size as i64;
        let start = centre.map(|c| c - s / 2);
        let mut out = vec![0f32; size * size * size];
        let d = self.dims.map(|x| x as i64);
        // The overlapping range of the x axis, copied row by row.
        let x0 = (-start[0]).clamp(0, s);
        let x1 = (d[0] - start[0]).clamp(0, s);
        if x0 >= x1 {
            return out;
        }
        for z in 0..s {
            let gz = start[2] + z;
            if gz < 0 || gz >= d[2] {
                continue;
            }
            for y in 0..s {
                let gy = start[1] + y;
                if gy < 0 || gy >= d[1] {
                    continue;
                }
                let src = (start[0] + x0) as usize
                    + self.dims[0] * (gy as usize + self.dims[1] * gz as usize);
                let dst = x0 as usize + size * (y as usize + size * z as usize);
                let len = (x1 - x0) as usize;
                out[dst..dst + len].copy_from_slice(&self.data[src..src + len]);
            }
        }
        out
    }

    /// The patches of edge `size` centred on these grid voxels, stacked as the network's
    /// input `[centres, 1, size, size, size]`.
    pub fn patches(&self, centres: &[[i64; 3]], size: usize, device: &Device) -> Tensor<5> {
        let mut data = Vec::with_capacity(centres.len() * size * size * size);
        for c in centres {
            data.extend(self.patch(*c, size));
        }
        Tensor::from_data(
            TensorData::new(data, [centres.len(), 1, size, size, size]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, Volume};

    #[test]
    fn resamples_to_3mm_and_maps_intensity() {
        // 6 mm voxels along z, 1.5 mm in plane; HU ramp along x.
        let dims = [8, 4, 3];
        let mut data = Vec::new();
        for _k in 0..3 {
            for _j in 0..4 {
                for i in 0..8 {
                    data.push(-1000 + 250 * i as i16);
                }
            }
        }
        let ct = Volume::from_data(dims, data, Affine::from_diagonal([1.5, 1.5, 6.0], [0.0; 3]))
            .unwrap();
        let p = Prepared::from_canonical(&ct).unwrap();
        assert_eq!(p.dims, [4, 2, 6]);
        // Grid voxel 0 along x covers canonical voxels 0 and 1: centre at canonical 0.5.
        assert_eq!(p.grid_to_canonical([0.0, 0.0, 0.0])[0], 0.5);
        let back = p.canonical_to_grid(p.grid_to_canonical([1.25, 0.5, 3.0]));
        assert!((back[0] - 1.25).abs() < 1e-12 && (back[2] - 3.0).abs() < 1e-12);
        // HU at canonical x = 0.5 is -875 → (−875 + 1000)·0.2/800 = 0.03125.
        assert!((p.data[0] - 0.03125).abs() < 1e-6, "{}", p.data[0]);
        // Already at 3 mm: nothing changes (the reference crashed there).
        let ct3 = Volume::from_data(
            [2, 2, 2],
            vec![0i16; 8],
            Affine::from_diagonal([3.0; 3], [0.0; 3]),
        )
        .unwrap();
        let p3 = Prepared::from_canonical(&ct3).unwrap();
        assert_eq!(p3.dims, [2, 2, 2]);
        assert!(p3.data.iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }

    #[test]
    fn patches_are_air_outside_and_sampling_is_trilinear() {
        let dims = [4, 3, 2];
        let data: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let grid = ResampleGrid::new(dims, [3.0; 3], [3.0; 3]).unwrap();
        let p = Prepared::from_parts(dims, data, grid).unwrap();
        let patch = p.patch([0, 0, 0], 2);
        // Patch voxel (1,1,1) is grid voxel (0,0,0); everything with a −1 index is air.
        assert_eq!(patch[1 + 2 * (1 + 2)], 0.0 + p.at([0, 0, 0]));
        assert_eq!(patch[0], 0.0);
        let patch = p.patch([2, 1, 1], 2);
        assert_eq!(
            patch,
            vec![
                p.at([1, 0, 0]),
                p.at([2, 0, 0]),
                p.at([1, 1, 0]),
                p.at([2, 1, 0]),
                p.at([1, 0, 1]),
                p.at([2, 0, 1]),
                p.at([1, 1, 1]),
                p.at([2, 1, 1])
            ]
        );
        // value = i + 4j + 12k is linear: trilinear sampling is exact inside.
        assert!((p.sample([1.5, 0.25, 0.5]) - (1.5 + 1.0 + 6.0)).abs() < 1e-5);
        // Half-way past the last x voxel: mixes with air.
        assert!((p.sample([3.5, 0.0, 0.0]) - 1.5).abs() < 1e-5);
    }
}
