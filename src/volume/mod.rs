//! CT volumes: a 3-D voxel grid with its voxel→world affine, NIfTI I/O (paths
//! and in-memory bytes), reorientation, resampling, patches, intensity
//! mappings and label utilities.
//!
//! Voxel data are stored in NIfTI (Fortran) order: index `i + nx·(j + ny·k)`.
//! CT images are kept as `i16` Hounsfield units (half the memory of `f32`);
//! label maps as `u16`.

pub mod contours;
pub mod dicom;
pub mod dicom_derived;
pub mod dicom_seg;
pub mod geometry;
pub mod intensity;
pub mod label_table;
pub mod labels;
pub mod nifti_io;
pub mod resample;
pub mod rtstruct;
pub mod scan_files;
pub mod synthetic;

pub use geometry::{Affine, Reorientation};
pub use nifti_io::{NiftiFile, SourceInfo, read_nifti_bytes, write_labels_nifti_bytes};
#[cfg(not(target_arch = "wasm32"))]
pub use nifti_io::{read_nifti_path, write_labels_nifti_path};

use crate::{Error, Result};

/// `medlsam info`'s view of a file: the NIfTI fields, plus the series for DICOM.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathSummary {
    #[serde(flatten)]
    pub volume: nifti_io::VolumeSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<dicom::DicomInfo>,
}

/// A CT path and the DICOM series asked for: `DIR#SERIES_UID` (when no file of that
/// exact name exists) picks one series of a DICOM folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn split_series_uid(path: &std::path::Path) -> (std::path::PathBuf, Option<String>) {
    if !path.exists() {
        let s = path.to_string_lossy();
        if let Some((p, uid)) = s.rsplit_once('#')
            && !uid.is_empty()
            && uid.chars().all(|c| c.is_ascii_digit() || c == '.')
        {
            return (std::path::PathBuf::from(p), Some(uid.to_string()));
        }
    }
    (path.to_path_buf(), None)
}

/// Whether a path is DICOM input: a folder, or a file with the "DICM" marker at byte 128.
#[cfg(not(target_arch = "wasm32"))]
pub fn is_dicom_path(path: &std::path::Path) -> bool {
    let (path, uid) = split_series_uid(path);
    if uid.is_some() || path.is_dir() {
        return true;
    }
    let mut head = Vec::with_capacity(132);
    match std::fs::File::open(&path) {
        Ok(f) => {
            use std::io::Read;
            let _ = f.take(132).read_to_end(&mut head);
            dicom::is_dicom(&head)
        }
        Err(_) => false,
    }
}

/// Read a CT from any path the command line takes: a NIfTI file, a DICOM folder
/// (`DIR#SERIES_UID` to pick a series) or a DICOM file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_ct(path: impl AsRef<std::path::Path>) -> Result<CtVolume> {
    let path = path.as_ref();
    if is_dicom_path(path) {
        let (p, uid) = split_series_uid(path);
        Ok(dicom::read_dicom_path(&p, uid.as_deref())?.ct)
    } else {
        read_nifti_path(path)?.into_ct()
    }
}

/// Read a CT like [`load_ct`], with what the DICOM series said when it is one (the
/// query's identity and slice UIDs, for RTSTRUCT and SEG outputs).
#[cfg(not(target_arch = "wasm32"))]
pub fn load_ct_with_dicom(
    path: impl AsRef<std::path::Path>,
) -> Result<(CtVolume, Option<dicom::DicomInfo>)> {
    let path = path.as_ref();
    if is_dicom_path(path) {
        let (p, uid) = split_series_uid(path);
        let s = dicom::read_dicom_path(&p, uid.as_deref())?;
        Ok((s.ct, Some(s.info)))
    } else {
        Ok((read_nifti_path(path)?.into_ct()?, None))
    }
}

/// What `medlsam info` prints about a NIfTI file or a DICOM series.
#[cfg(not(target_arch = "wasm32"))]
pub fn summarize_path(path: impl AsRef<std::path::Path>) -> Result<PathSummary> {
    let path = path.as_ref();
    if is_dicom_path(path) {
        let (p, uid) = split_series_uid(path);
        let s = dicom::read_dicom_path(&p, uid.as_deref())?;
        Ok(PathSummary {
            volume: s.summary(),
            dicom: Some(s.info),
        })
    } else {
        Ok(PathSummary {
            volume: read_nifti_path(path)?.summary(),
            dicom: None,
        })
    }
}

/// Largest voxel count accepted (about 1.07 billion, e.g. 1024×1024×1024):
/// files claiming more are refused before anything is allocated.
pub const MAX_VOXELS: usize = 1 << 30;

/// A CT image in Hounsfield units.
pub type CtVolume = Volume<i16>;
/// A label map (0 = background).
pub type LabelVolume = Volume<u16>;

/// A 3-D grid of voxels with its geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume<T> {
    /// Grid size along voxel axes (i, j, k).
    pub dims: [usize; 3],
    /// Voxels in NIfTI order (`i` fastest).
    pub data: Vec<T>,
    /// Voxel index → world (RAS mm).
    pub affine: Affine,
}

impl<T: Copy> Volume<T> {
    /// A volume filled with one value.
    pub fn filled(dims: [usize; 3], value: T, affine: Affine) -> Result<Self> {
        let n = checked_voxel_count(dims)?;
        Ok(Self {
            dims,
            data: vec![value; n],
            affine,
        })
    }

    /// A volume from data in NIfTI order; checks the length.
    pub fn from_data(dims: [usize; 3], data: Vec<T>, affine: Affine) -> Result<Self> {
        let n = checked_voxel_count(dims)?;
        if data.len() != n {
            return Err(Error::InvalidVolume(format!(
                "{} voxels given for a {}×{}×{} grid",
                data.len(),
                dims[0],
                dims[1],
                dims[2]
            )));
        }
        Ok(Self { dims, data, affine })
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the volume has no voxels (never true for a valid volume).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Linear index of voxel `(i, j, k)` (file voxel space).
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.dims[0] * (j + self.dims[1] * k)
    }

    /// Voxel value at `(i, j, k)` (file voxel space).
    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> T {
        self.data[self.index(i, j, k)]
    }

    /// Voxel spacing in mm along each voxel axis.
    pub fn spacing_mm(&self) -> [f64; 3] {
        self.affine.spacing_mm()
    }

    /// Same grid, other values.
    pub fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> Volume<U> {
        Volume {
            dims: self.dims,
            data: self.data.iter().map(|&v| f(v)).collect(),
            affine: self.affine,
        }
    }

    /// Whether another volume has the same grid (dimensions and affine within 1e-3 mm).
    pub fn same_grid<U>(&self, other: &Volume<U>) -> bool {
        self.dims == other.dims
            && self
                .affine
                .m
                .iter()
                .flatten()
                .zip(other.affine.m.iter().flatten())
                .all(|(a, b)| (a - b).abs() <= 1e-3)
    }

    /// Error unless `other` has the same grid; `what` names the pair in the message.
    pub fn check_same_grid<U>(&self, other: &Volume<U>, what: &str) -> Result<()> {
        if self.dims != other.dims {
            return Err(Error::Mismatch(format!(
                "{what}: shapes differ ({}×{}×{} vs {}×{}×{})",
                self.dims[0],
                self.dims[1],
                self.dims[2],
                other.dims[0],
                other.dims[1],
                other.dims[2]
            )));
        }
        if !self.same_grid(other) {
            return Err(Error::Mismatch(format!(
                "{what}: same shape but different voxel-to-world affines (the files are not aligned)"
            )));
        }
        Ok(())
    }

    /// Reorient to canonical LPS (a permutation/flip of the axes, no interpolation).
    pub fn to_canonical(&self) -> (Volume<T>, Reorientation) {
        let r = Reorientation::to_canonical(&self.affine, self.dims);
        (self.reoriented(&r), r)
    }

    /// Apply a reorientation computed for this grid (file → canonical).
    pub fn reoriented(&self, r: &Reorientation) -> Volume<T> {
        assert_eq!(
            r.file_dims, self.dims,
            "reorientation made for another grid"
        );
        if r.is_identity() {
            return self.clone();
        }
        let cd = r.canonical_dims();
        let mut data = Vec::with_capacity(self.data.len());
        for k in 0..cd[2] {
            for j in 0..cd[1] {
                for i in 0..cd[0] {
                    let f = r.canonical_to_file([i, j, k]);
                    data.push(self.get(f[0], f[1], f[2]));
                }
            }
        }
        Volume {
            dims: cd,
            data,
            affine: self.affine.compose(&r.canonical_to_file_affine()),
        }
    }

    /// Undo [`Self::to_canonical`]: take a canonical volume back to the file grid of `r`.
    pub fn from_canonical(&self, r: &Reorientation) -> Result<Volume<T>> {
        if self.dims != r.canonical_dims() {
            return Err(Error::Mismatch(
                "volume is not on the canonical grid of this reorientation".into(),
            ));
        }
        let fd = r.file_dims;
        let mut data = Vec::with_capacity(self.data.len());
        for k in 0..fd[2] {
            for j in 0..fd[1] {
                for i in 0..fd[0] {
                    let c = r.file_to_canonical([i, j, k]);
                    data.push(self.get(c[0], c[1], c[2]));
                }
            }
        }
        let affine = self
            .affine
            .compose(&r.canonical_to_file_affine().inverse()?);
        Ok(Volume {
            dims: fd,
            data,
            affine,
        })
    }

    /// One axial slice (fixed k) as a row-major `[j][i]` buffer of `dims[0]·dims[1]` values.
    pub fn axial_slice(&self, k: usize) -> &[T] {
        let n = self.dims[0] * self.dims[1];
        &self.data[k * n..(k + 1) * n]
    }
}

/// Voxel count of a grid, refusing zero and absurd sizes before any allocation.
pub fn checked_voxel_count(dims: [usize; 3]) -> Result<usize> {
    if dims.contains(&0) {
        return Err(Error::InvalidVolume(format!(
            "zero dimension in a {}×{}×{} grid",
            dims[0], dims[1], dims[2]
        )));
    }
    let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match n {
        Some(n) if n <= MAX_VOXELS => Ok(n),
        _ => Err(Error::InvalidVolume(format!(
            "{}×{}×{} voxels is more than the {MAX_VOXELS} this tool accepts",
            dims[0], dims[1], dims[2]
        ))),
    }
}

/// Case name of a file: its name up to the first dot (`okbp_001.ct.nii.gz` → `okbp_001`).
pub fn case_name(path: &std::path::Path) -> String {
    let n = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    n.split('.').next().unwrap_or(&n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorient_round_trip_is_exact() {
        let mut m = [[0.0; 4]; 4];
        m[1][0] = 1.0;
        m[2][1] = -2.0;
        m[0][2] = 3.0;
        m[3][3] = 1.0;
        let dims = [3, 4, 5];
        let data: Vec<u16> = (0..60).collect();
        let v = Volume::from_data(dims, data, Affine { m }).unwrap();
        let (c, r) = v.to_canonical();
        assert_eq!(c.affine.axis_codes(), "LPS");
        let back = c.from_canonical(&r).unwrap();
        assert_eq!(back.data, v.data);
        for (a, b) in back
            .affine
            .m
            .iter()
            .flatten()
            .zip(v.affine.m.iter().flatten())
        {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn refuses_zero_and_huge_grids() {
        assert!(
            checked_voxel_count([0, 3, 3])
                .unwrap_err()
                .to_string()
                .contains("zero dimension")
        );
        let e = checked_voxel_count([65535, 65535, 65535])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than"), "{e}");
        let e = Volume::from_data([2, 2, 2], vec![0u8; 7], Affine::identity())
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 voxels"), "{e}");
    }
}
