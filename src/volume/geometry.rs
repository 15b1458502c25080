//! Voxel ↔ world geometry: the 4×4 affine (voxel index of the file → RAS mm),
//! spacing, axis orientation codes, and the exactly invertible reorientation
//! to the canonical axis order used by the models.
//!
//! Canonical orientation is **LPS**: canonical voxel axis 0 increases toward
//! the patient's Left, axis 1 toward Posterior, axis 2 toward Superior (the
//! DICOM convention; an axial slice `[j][i]` then displays in the usual
//! radiological view). Reorientation only permutes and flips axes, so it never
//! interpolates and is exactly invertible.

use crate::{Error, Result};

/// Voxel → world (RAS, millimetres) affine; `m[r][c]`, last row `[0,0,0,1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub m: [[f64; 4]; 4],
}

impl Affine {
    /// The identity affine (1 mm isotropic, axes along RAS).
    pub fn identity() -> Self {
        Self::from_diagonal([1.0; 3], [0.0; 3])
    }

    /// A diagonal affine with the given spacing (mm) and origin (world mm of voxel 0).
    pub fn from_diagonal(spacing_mm: [f64; 3], origin_mm: [f64; 3]) -> Self {
        let mut m = [[0.0; 4]; 4];
        for a in 0..3 {
            m[a][a] = spacing_mm[a];
            m[a][3] = origin_mm[a];
        }
        m[3][3] = 1.0;
        Self { m }
    }

    /// World (RAS mm) position of a continuous voxel index of this grid.
    pub fn voxel_to_world(&self, v: [f64; 3]) -> [f64; 3] {
        let mut w = [0.0; 3];
        for (r, wr) in w.iter_mut().enumerate() {
            *wr = self.m[r][0] * v[0] + self.m[r][1] * v[1] + self.m[r][2] * v[2] + self.m[r][3];
        }
        w
    }

    /// Continuous voxel index of this grid at a world (RAS mm) position.
    pub fn world_to_voxel(&self, w: [f64; 3]) -> Result<[f64; 3]> {
        Ok(self.inverse()?.voxel_to_world(w))
    }

    /// The 3×3 linear part.
    pub fn linear(&self) -> [[f64; 3]; 3] {
        let mut l = [[0.0; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                l[r][c] = self.m[r][c];
            }
        }
        l
    }

    /// Determinant of the linear part.
    pub fn determinant(&self) -> f64 {
        det3(&self.linear())
    }

    /// Inverse affine (world → voxel); fails on a singular matrix.
    pub fn inverse(&self) -> Result<Affine> {
        let l = self.linear();
        let d = det3(&l);
        if !(d.is_finite() && d.abs() > 1e-12) {
            return Err(Error::InvalidVolume(
                "the voxel-to-world affine is singular (zero or invalid voxel spacing)".into(),
            ));
        }
        let inv = [
            [
                (l[1][1] * l[2][2] - l[1][2] * l[2][1]) / d,
                (l[0][2] * l[2][1] - l[0][1] * l[2][2]) / d,
                (l[0][1] * l[1][2] - l[0][2] * l[1][1]) / d,
            ],
            [
                (l[1][2] * l[2][0] - l[1][0] * l[2][2]) / d,
                (l[0][0] * l[2][2] - l[0][2] * l[2][0]) / d,
                (l[0][2] * l[1][0] - l[0][0] * l[1][2]) / d,
            ],
            [
                (l[1][0] * l[2][1] - l[1][1] * l[2][0]) / d,
                (l[0][1] * l[2][0] - l[0][0] * l[2][1]) / d,
                (l[0][0] * l[1][1] - l[0][1] * l[1][0]) / d,
            ],
        ];
        let mut m = [[0.0; 4]; 4];
        for r in 0..3 {
            for c in 0..3 {
                m[r][c] = inv[r][c];
            }
            m[r][3] =
                -(inv[r][0] * self.m[0][3] + inv[r][1] * self.m[1][3] + inv[r][2] * self.m[2][3]);
        }
        m[3][3] = 1.0;
        Ok(Affine { m })
    }

    /// Matrix product `self · other` (apply `other` first).
    pub fn compose(&self, other: &Affine) -> Affine {
        let mut m = [[0.0; 4]; 4];
        for (r, row) in m.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|k| self.m[r][k] * other.m[k][c]).sum();
            }
        }
        Affine { m }
    }

    /// Voxel spacing (mm) along each voxel axis: the column norms.
    pub fn spacing_mm(&self) -> [f64; 3] {
        let mut s = [0.0; 3];
        for (c, sc) in s.iter_mut().enumerate() {
            *sc = (0..3)
                .map(|r| self.m[r][c] * self.m[r][c])
                .sum::<f64>()
                .sqrt();
        }
        s
    }

    /// For each voxel axis, the world axis (0=x R/L, 1=y A/P, 2=z S/I) it runs
    /// closest to and whether it runs toward + (R, A, S) or − (L, P, I).
    pub fn axis_directions(&self) -> [(usize, bool); 3] {
        // Greedy assignment on |direction cosines|, largest first, as nibabel's io_orientation.
        let sp = self.spacing_mm();
        let mut cos = [[0.0f64; 3]; 3]; // cos[world][voxel]
        for (w, row) in cos.iter_mut().enumerate() {
            for (v, c) in row.iter_mut().enumerate() {
                *c = if sp[v] > 0.0 {
                    self.m[w][v] / sp[v]
                } else {
                    0.0
                };
            }
        }
        let mut out = [(usize::MAX, true); 3];
        let mut used_w = [false; 3];
        let mut used_v = [false; 3];
        for _ in 0..3 {
            let mut best = (0.0f64, 0usize, 0usize);
            let mut found = false;
            for w in 0..3 {
                for v in 0..3 {
                    if !used_w[w] && !used_v[v] && (!found || cos[w][v].abs() > best.0) {
                        best = (cos[w][v].abs(), w, v);
                        found = true;
                    }
                }
            }
            let (_, w, v) = best;
            used_w[w] = true;
            used_v[v] = true;
            out[v] = (w, cos[w][v] >= 0.0);
        }
        out
    }

    /// Orientation codes of the voxel axes, e.g. `"LPS"` or `"RAS"`: the letter
    /// each axis increases toward.
    pub fn axis_codes(&self) -> String {
        self.axis_directions()
            .iter()
            .map(|&(w, pos)| match (w, pos) {
                (0, true) => 'R',
                (0, false) => 'L',
                (1, true) => 'A',
                (1, false) => 'P',
                (2, true) => 'S',
                _ => 'I',
            })
            .collect()
    }

    /// Whether every entry is finite.
    pub fn is_finite(&self) -> bool {
        self.m.iter().flatten().all(|v| v.is_finite())
    }
}

fn det3(l: &[[f64; 3]; 3]) -> f64 {
    l[0][0] * (l[1][1] * l[2][2] - l[1][2] * l[2][1])
        - l[0][1] * (l[1][0] * l[2][2] - l[1][2] * l[2][0])
        + l[0][2] * (l[1][0] * l[2][1] - l[1][1] * l[2][0])
}

/// Axis permutation and flips that take a file's voxel grid to the canonical
/// LPS grid. Canonical axis `a` is file axis `perm[a]`, reversed if `flip[a]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reorientation {
    /// File axis feeding each canonical axis.
    pub perm: [usize; 3],
    /// Whether that file axis is reversed.
    pub flip: [bool; 3],
    /// Dimensions of the file grid.
    pub file_dims: [usize; 3],
}

impl Reorientation {
    /// The reorientation of a grid with this affine and these dimensions to canonical LPS.
    pub fn to_canonical(affine: &Affine, file_dims: [usize; 3]) -> Self {
        let dirs = affine.axis_directions();
        let mut perm = [0; 3];
        let mut flip = [false; 3];
        for (v, &(w, toward_positive)) in dirs.iter().enumerate() {
            perm[w] = v;
            // Canonical axes 0 and 1 run toward − (L, P); axis 2 toward + (S).
            flip[w] = if w == 2 {
                !toward_positive
            } else {
                toward_positive
            };
        }
        Self {
            perm,
            flip,
            file_dims,
        }
    }

    /// Whether this is the identity (the file is already LPS).
    pub fn is_identity(&self) -> bool {
        self.perm == [0, 1, 2] && self.flip == [false; 3]
    }

    /// Dimensions of the canonical grid.
    pub fn canonical_dims(&self) -> [usize; 3] {
        [
            self.file_dims[self.perm[0]],
            self.file_dims[self.perm[1]],
            self.file_dims[self.perm[2]],
        ]
    }

    /// File voxel index of a canonical voxel index.
    pub fn canonical_to_file(&self, c: [usize; 3]) -> [usize; 3] {
        let mut f = [0; 3];
        for a in 0..3 {
            let n = self.file_dims[self.perm[a]];
            f[self.perm[a]] = if self.flip[a] { n - 1 - c[a] } else { c[a] };
        }
        f
    }

    /// Canonical voxel index of a file voxel index.
    pub fn file_to_canonical(&self, f: [usize; 3]) -> [usize; 3] {
        let mut c = [0; 3];
        for a in 0..3 {
            let n = self.file_dims[self.perm[a]];
            let v = f[self.perm[a]];
            c[a] = if self.flip[a] { n - 1 - v } else { v };
        }
        c
    }

    /// Continuous version of [`Self::canonical_to_file`] (for sub-voxel points).
    pub fn canonical_to_file_f(&self, c: [f64; 3]) -> [f64; 3] {
        let mut f = [0.0; 3];
        for a in 0..3 {
            let n = self.file_dims[self.perm[a]] as f64;
            f[self.perm[a]] = if self.flip[a] { n - 1.0 - c[a] } else { c[a] };
        }
        f
    }

    /// Continuous version of [`Self::file_to_canonical`].
    pub fn file_to_canonical_f(&self, f: [f64; 3]) -> [f64; 3] {
        let mut c = [0.0; 3];
        for a in 0..3 {
            let n = self.file_dims[self.perm[a]] as f64;
            let v = f[self.perm[a]];
            c[a] = if self.flip[a] { n - 1.0 - v } else { v };
        }
        c
    }

    /// The affine taking canonical voxel indices to file voxel indices.
    pub fn canonical_to_file_affine(&self) -> Affine {
        let mut m = [[0.0; 4]; 4];
        for a in 0..3 {
            let n = self.file_dims[self.perm[a]] as f64;
            if self.flip[a] {
                m[self.perm[a]][a] = -1.0;
                m[self.perm[a]][3] = n - 1.0;
            } else {
                m[self.perm[a]][a] = 1.0;
            }
        }
        m[3][3] = 1.0;
        Affine { m }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lps_affine() -> Affine {
        let mut a = Affine::from_diagonal([-2.0, -3.0, 4.0], [10.0, 20.0, -30.0]);
        a.m[0][3] = 100.0;
        a
    }

    #[test]
    fn axis_codes_of_common_orientations() {
        assert_eq!(Affine::identity().axis_codes(), "RAS");
        assert_eq!(lps_affine().axis_codes(), "LPS");
        // Permuted: voxel i runs along z (S), j along x (L), k along y (A).
        let mut m = [[0.0; 4]; 4];
        m[2][0] = 2.5;
        m[0][1] = -1.0;
        m[1][2] = 1.5;
        m[3][3] = 1.0;
        let a = Affine { m };
        assert_eq!(a.axis_codes(), "SLA");
        assert_eq!(a.spacing_mm(), [2.5, 1.0, 1.5]);
    }

    #[test]
    fn inverse_and_compose_round_trip() {
        let mut a = lps_affine();
        a.m[0][1] = 0.3; // a little shear/rotation
        let inv = a.inverse().unwrap();
        let p = [3.0, -7.5, 11.25];
        let back = inv.voxel_to_world(a.voxel_to_world(p));
        for k in 0..3 {
            assert!((back[k] - p[k]).abs() < 1e-9);
        }
        let id = a.compose(&inv);
        for r in 0..4 {
            for c in 0..4 {
                let e = if r == c { 1.0 } else { 0.0 };
                assert!((id.m[r][c] - e).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn singular_affine_is_an_error() {
        let a = Affine::from_diagonal([0.0, 1.0, 1.0], [0.0; 3]);
        let e = a.inverse().unwrap_err().to_string();
        assert!(e.contains("singular"), "{e}");
    }

    #[test]
    fn reorientation_is_a_bijection_and_reaches_lps() {
        let mut m = [[0.0; 4]; 4];
        m[2][0] = -2.5; // i runs toward I
        m[0][1] = 1.0; // j runs toward R
        m[1][2] = 1.5; // k runs toward A
        m[3][3] = 1.0;
        let a = Affine { m };
        let dims = [4, 5, 6];
        let r = Reorientation::to_canonical(&a, dims);
        assert_eq!(r.canonical_dims(), [5, 6, 4]);
        let can = a.compose(&r.canonical_to_file_affine());
        assert_eq!(can.axis_codes(), "LPS");
        let mut seen = std::collections::HashSet::new();
        for i in 0..4 {
            for j in 0..5 {
                for k in 0..6 {
                    let c = r.file_to_canonical([i, j, k]);
                    assert_eq!(r.canonical_to_file(c), [i, j, k]);
                    // The canonical affine maps c to the same world point as the file affine maps f.
                    let wf = a.voxel_to_world([i as f64, j as f64, k as f64]);
                    let wc = can.voxel_to_world([c[0] as f64, c[1] as f64, c[2] as f64]);
                    for t in 0..3 {
                        assert!((wf[t] - wc[t]).abs() < 1e-9);
                    }
                    assert!(seen.insert(c));
                }
            }
        }
        assert!(Reorientation::to_canonical(&lps_affine(), dims).is_identity());
    }
}
