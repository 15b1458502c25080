//! NIfTI-1 reading (`.nii`, `.nii.gz`; from a path or an in-memory byte
//! buffer, as the browser gets files) and writing (label maps and images, with
//! the input's affine in both qform and sform).
//!
//! The header is parsed by the `nifti` crate; everything that decides whether
//! a file is usable (dimensions, voxel count cap, truncation, data type) is
//! checked here first, so bad input becomes a clear [`Error`] and never a
//! panic or a huge allocation. Coordinates: the affine maps the file's own
//! voxel indices to world RAS mm.

//!
//! Layout: `header` (recognising and validating the header: dimensions, affine,
//! scaling), `read` (files and bytes → [`NiftiFile`]), `write` (volumes → files and
//! bytes).

mod header;
mod read;
mod write;

pub use read::read_nifti_bytes;
#[cfg(not(target_arch = "wasm32"))]
pub use read::read_nifti_path;
pub use write::{NiftiScalar, write_labels_nifti_bytes, write_nifti_bytes};
#[cfg(not(target_arch = "wasm32"))]
pub use write::{write_ct_nifti_path, write_file, write_labels_nifti_path};

use super::{Affine, CtVolume, LabelVolume, Volume};
use crate::{Error, Result};

const HEADER_SIZE: usize = 348;
const DATA_OFFSET: usize = 352;

/// Voxel data types this reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    fn from_code(code: i16) -> Result<Self> {
        Ok(match code {
            2 => Self::U8,
            256 => Self::I8,
            4 => Self::I16,
            512 => Self::U16,
            8 => Self::I32,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            16 => Self::F32,
            64 => Self::F64,
            32 | 1792 | 2048 => {
                return Err(Error::Unsupported(
                    "complex-valued voxels cannot be a CT or a label map".into(),
                ));
            }
            128 | 2304 => {
                return Err(Error::Unsupported(
                    "RGB voxels cannot be a CT or a label map".into(),
                ));
            }
            1536 => {
                return Err(Error::Unsupported(
                    "128-bit float voxels are not supported".into(),
                ));
            }
            c => return Err(Error::Corrupt(format!("unknown voxel data type code {c}"))),
        })
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// Lower-case name, e.g. `"int16"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }
}

/// What the file said about itself, for `medlsam info` and for provenance.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceInfo {
    /// Stored voxel type, e.g. `"int16"`.
    pub dtype: String,
    /// Which header field gave the affine: `"sform"`, `"qform"` or `"pixdim"`.
    pub affine_from: String,
    pub sform_code: i16,
    pub qform_code: i16,
    /// Intensity scaling applied on read (`value = raw · slope + inter`).
    pub scl_slope: f64,
    pub scl_inter: f64,
    /// `true` if the data were big-endian.
    pub big_endian: bool,
    /// The header's description field.
    pub description: String,
}

/// A parsed NIfTI file: geometry and still-encoded voxel bytes; convert with
/// [`NiftiFile::into_ct`], [`NiftiFile::into_labels`] or [`NiftiFile::to_f32`].
pub struct NiftiFile {
    pub dims: [usize; 3],
    pub affine: Affine,
    pub info: SourceInfo,
    dtype: DataType,
    raw: Vec<u8>,
}

/// What `medlsam info` prints about a file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VolumeSummary {
    pub shape: [usize; 3],
    pub spacing_mm: [f64; 3],
    pub orientation: String,
    pub affine: [[f64; 4]; 4],
    pub source: SourceInfo,
    pub min: f64,
    pub max: f64,
    pub non_finite_voxels: usize,
    /// Label values present (> 0) with voxel counts, when the file looks like a label map
    /// (integer values in 0..=65535, at most 1000 distinct).
    pub labels: Option<Vec<(u16, usize)>>,
}

impl NiftiFile {
    /// Shape, spacing, orientation, value range and (for label maps) classes.
    pub fn summary(&self) -> VolumeSummary {
        let (min, max, bad) = self.value_stats();
        let mut labels = None;
        if bad == 0 && min >= 0.0 && max <= 65535.0 && self.is_integer_valued() {
            let mut counts = std::collections::BTreeMap::<u16, usize>::new();
            self.for_each_value(|v| *counts.entry(v as u16).or_default() += 1);
            if counts.len() <= 1000 {
                labels = Some(counts.into_iter().filter(|&(v, _)| v > 0).collect());
            }
        }
        VolumeSummary {
            shape: self.dims,
            spacing_mm: self.affine.spacing_mm(),
            orientation: self.affine.axis_codes(),
            affine: self.affine.m,
            source: self.info.clone(),
            min,
            max,
            non_finite_voxels: bad,
            labels,
        }
    }

    /// Stored voxel type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Visit every voxel value (scaling applied) in NIfTI order.
    fn for_each_value(&self, mut f: impl FnMut(f64)) {
        let (s, o) = (self.info.scl_slope, self.info.scl_inter);
        macro_rules! each {
            ($t:ty, $n:expr) => {
                for c in self.raw.chunks_exact($n) {
                    f(<$t>::from_ne_bytes(c.try_into().unwrap()) as f64 * s + o)
                }
            };
        }
        match self.dtype {
            DataType::U8 => each!(u8, 1),
            DataType::I8 => each!(i8, 1),
            DataType::I16 => each!(i16, 2),
            DataType::U16 => each!(u16, 2),
            DataType::I32 => each!(i32, 4),
            DataType::U32 => each!(u32, 4),
            DataType::I64 => each!(i64, 8),
            DataType::U64 => each!(u64, 8),
            DataType::F32 => each!(f32, 4),
            DataType::F64 => each!(f64, 8),
        }
    }

    /// Min and max of the finite values and the count of NaN/infinite ones.
    pub fn value_stats(&self) -> (f64, f64, usize) {
        let (mut lo, mut hi, mut bad) = (f64::INFINITY, f64::NEG_INFINITY, 0);
        self.for_each_value(|v| {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            } else {
                bad += 1;
            }
        });
        (lo, hi, bad)
    }

    /// Whether every value is a finite integer (so it may be a label map).
    pub fn is_integer_valued(&self) -> bool {
        if !self.dtype.is_float()
            && self.info.scl_slope.fract() == 0.0
            && self.info.scl_inter.fract() == 0.0
        {
            return true;
        }
        let mut ok = true;
        self.for_each_value(|v| ok &= v.is_finite() && v.fract() == 0.0);
        ok
    }

    fn check_finite(&self, what: &str) -> Result<()> {
        if !self.dtype.is_float() {
            return Ok(());
        }
        let (_, _, bad) = self.value_stats();
        if bad > 0 {
            return Err(Error::InvalidVolume(format!(
                "{what} contains {bad} NaN or infinite voxels"
            )));
        }
        Ok(())
    }

    /// As a CT in Hounsfield units (`i16`; values rounded, clamped to the i16 range).
    pub fn into_ct(self) -> Result<CtVolume> {
        self.check_finite("the image")?;
        let mut data = Vec::with_capacity(self.dims.iter().product());
        self.for_each_value(|v| {
            data.push(v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16)
        });
        Volume::from_data(self.dims, data, self.affine)
    }

    /// As `f32` values (scaling applied).
    pub fn to_f32(&self) -> Result<Volume<f32>> {
        self.check_finite("the image")?;
        let mut data = Vec::with_capacity(self.dims.iter().product());
        self.for_each_value(|v| data.push(v as f32));
        Volume::from_data(self.dims, data, self.affine)
    }

    /// As a label map: values must be integers in 0..=65535.
    pub fn into_labels(self) -> Result<LabelVolume> {
        self.check_finite("the label map")?;
        let mut data = Vec::with_capacity(self.dims.iter().product());
        let mut bad: Option<f64> = None;
        self.for_each_value(|v| {
            if v.fract() != 0.0 || !(0.0..=65535.0).contains(&v) {
                bad.get_or_insert(v);
                data.push(0);
            } else {
                data.push(v as u16);
            }
        });
        if let Some(v) = bad {
            return Err(Error::InvalidVolume(format!(
                "not a label map: it holds the value {v} (labels must be whole numbers from 0 to 65535); \
                 was an image given where a label map was expected?"
            )));
        }
        Volume::from_data(self.dims, data, self.affine)
    }
}

#[cfg(test)]
mod tests {
    use nifti::NiftiHeader;

    use super::header::{header_affine, spatial_dims};
    use super::*;

    fn affine_from_qform_of(a: &Affine) -> Affine {
        let bytes = write_nifti_bytes(&Volume::filled([2, 3, 4], 0u8, *a).unwrap(), false).unwrap();
        let mut h = NiftiHeader::from_reader(&bytes[..HEADER_SIZE]).unwrap();
        h.sform_code = 0;
        header_affine(&h).unwrap().0
    }

    #[test]
    fn qform_reproduces_rotated_affines() {
        let cases = [
            Affine::from_diagonal([-0.7, -0.7, 2.5], [120.0, 100.0, -50.0]), // LPS
            Affine::from_diagonal([3.0, 3.0, 3.0], [-10.0, 5.0, 7.0]),       // RAS
        ];
        let mut permuted = [[0.0; 4]; 4];
        permuted[2][0] = -2.0;
        permuted[0][1] = 0.8;
        permuted[1][2] = -1.2;
        permuted[0][3] = 4.0;
        permuted[3][3] = 1.0;
        let mut oblique = Affine::from_diagonal([1.0, 1.0, 1.0], [0.0; 3]);
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        oblique.m[0][0] = c;
        oblique.m[0][1] = -s;
        oblique.m[1][0] = s;
        oblique.m[1][1] = c;
        let extra = [Affine { m: permuted }, oblique];
        for a in cases.iter().chain(extra.iter()) {
            let q = affine_from_qform_of(a);
            for (x, y) in q.m.iter().flatten().zip(a.m.iter().flatten()) {
                assert!((x - y).abs() < 1e-4, "qform {:?} vs affine {:?}", q.m, a.m);
            }
        }
    }

    #[test]
    fn round_trip_bytes_plain_and_gzip() {
        let a = Affine::from_diagonal([-1.5, -1.5, 3.0], [1.0, 2.0, 3.0]);
        let v = Volume::from_data([3, 2, 2], (0..12).map(|x| x * 300).collect::<Vec<u16>>(), a)
            .unwrap();
        for gz in [false, true] {
            let bytes = write_nifti_bytes(&v, gz).unwrap();
            let f = read_nifti_bytes(&bytes).unwrap();
            assert_eq!(f.info.dtype, "uint16");
            assert_eq!(f.info.affine_from, "sform");
            let back = f.into_labels().unwrap();
            assert_eq!(back.data, v.data);
            assert!(back.same_grid(&v));
        }
    }

    #[test]
    fn four_d_with_one_volume_is_accepted_else_refused() {
        let mut d = [4u16, 2, 2, 2, 1, 1, 1, 1];
        assert_eq!(spatial_dims(&d).unwrap(), [2, 2, 2]);
        d[4] = 5;
        let e = spatial_dims(&d).unwrap_err().to_string();
        assert!(e.contains("4-D volume with 5 entries"), "{e}");
    }
}
