//! DICOM CT series in: a folder of single-slice DICOM files (any file names) or one
//! multi-frame (enhanced CT) file → a [`CtVolume`] in Hounsfield units with the
//! crate's voxel → world (RAS mm) affine.
//!
//! Parsing is done by dicom-rs (`dicom-object`); compressed pixel data go through
//! `dicom-pixeldata`'s pure-Rust decoders (RLE, JPEG baseline and lossless), so the
//! same code runs natively and in the browser, from paths or from in-memory bytes.
//!
//! Geometry. DICOM patient coordinates are LPS (x toward the patient's Left, y toward
//! Posterior, z toward Superior); the crate's world is RAS (as NIfTI), so the DICOM
//! affine is flipped in x and y: `RAS = diag(-1, -1, 1) · LPS`. Voxel `(i, j, k)`:
//! `i` = column (along the first ImageOrientationPatient vector, spaced by
//! PixelSpacing\[1\]), `j` = row (along the second vector, spaced by PixelSpacing\[0\]),
//! `k` = slice, sorted by ImagePositionPatient along the normal (row × column).
//! Voxel data therefore keep DICOM's row-major pixel order in each slice, which is
//! NIfTI order (`i` fastest).
//!
//! Anything that makes the series unusable (not DICOM, truncated, non-CT modality,
//! missing or unevenly spaced slices, gantry tilt, mixed sizes or orientations, a
//! compressed transfer syntax without a decoder here) is one [`Error::Dicom`] naming
//! the file and the DICOM attribute; nothing panics and nothing is allocated from a
//! size a file claims before it is checked against [`super::MAX_VOXELS`].
//!
//! Layout: `source` (in-memory files or a folder tree), `walk` (length checks over
//! element headers, then dicom-rs parsing), `header` (each file's attributes and frame
//! geometry, grouped by series), `series` (choosing and checking the series, sorting
//! its slices, the affine), `pixels` (decoding, HU), `info` (what was read, as
//! `medlsam info` prints it).

mod header;
mod info;
mod pixels;
mod series;
mod source;
mod syntax;
#[cfg(test)]
mod tests;
mod walk;

pub(crate) use header::{floats, seq_item, text, uint};
pub use info::{DicomInfo, PatientStudy, SeriesBrief, info_lines};
pub(crate) use walk::parse;

use super::nifti_io::VolumeSummary;
use super::{CtVolume, SourceInfo};
#[cfg(not(target_arch = "wasm32"))]
use crate::Error;
use crate::Result;
use header::scan;
#[cfg(not(target_arch = "wasm32"))]
use header::{Parsed, read_header};
use series::read_series;
use source::BytesSource;
#[cfg(not(target_arch = "wasm32"))]
use source::PathSource;

/// Whether these bytes start like a DICOM file: `DICM` after the 128-byte preamble
/// (or, for files written without the preamble, at the very start).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM")
}

/// A CT series read from DICOM: the volume (HU, RAS affine) and where it came from.
#[derive(Clone, Debug)]
pub struct DicomSeries {
    pub ct: CtVolume,
    pub info: DicomInfo,
}

impl DicomSeries {
    /// The fields `medlsam info` prints for NIfTI files (shape, spacing, orientation,
    /// stored type, scaling, value range, affine); the DICOM specifics are in `info`.
    pub fn summary(&self) -> VolumeSummary {
        let (mut lo, mut hi) = (i16::MAX, i16::MIN);
        for &v in &self.ct.data {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        VolumeSummary {
            shape: self.ct.dims,
            spacing_mm: self.ct.affine.spacing_mm(),
            orientation: self.ct.affine.axis_codes(),
            affine: self.ct.affine.m,
            source: SourceInfo {
                dtype: self.info.stored_dtype.clone(),
                affine_from: "DICOM ImagePositionPatient/ImageOrientationPatient/PixelSpacing"
                    .into(),
                sform_code: 0,
                qform_code: 0,
                scl_slope: self.info.rescale_slope,
                scl_inter: self.info.rescale_intercept,
                big_endian: false,
                description: self.info.description.clone(),
            },
            min: lo as f64,
            max: hi as f64,
            non_finite_voxels: 0,
            labels: None,
        }
    }
}

/// Read a CT series from in-memory files, as a web page gets them (`(name, bytes)`;
/// names are only used in messages). Files that are not DICOM images are skipped.
/// With several image series, the CT series with the most slices is read, or the one
/// whose SeriesInstanceUID is `series_uid`.
pub fn read_dicom_series_bytes<N: AsRef<str>, B: AsRef<[u8]>>(
    files: &[(N, B)],
    series_uid: Option<&str>,
) -> Result<DicomSeries> {
    read_series(&BytesSource(files), series_uid, "the files given")
}

/// [`read_dicom_series_bytes`] for the files of one folder, as a page gets a chosen or
/// dropped folder: messages name the folder (`folder`) instead of "the files given".
pub fn read_dicom_folder_bytes<N: AsRef<str>, B: AsRef<[u8]>>(
    folder: &str,
    files: &[(N, B)],
    series_uid: Option<&str>,
) -> Result<DicomSeries> {
    read_series(&BytesSource(files), series_uid, &format!("folder {folder}"))
}

/// The image series among in-memory files (most images first), without decoding pixels.
pub fn list_dicom_series_bytes<N: AsRef<str>, B: AsRef<[u8]>>(
    files: &[(N, B)],
) -> Result<Vec<SeriesBrief>> {
    let scan = scan(&BytesSource(files))?;
    Ok(scan.briefs())
}

/// Read a CT series from a path: a folder of DICOM files (searched a few levels deep;
/// any file names), one multi-frame file, or one slice file (then the series it
/// belongs to is read from its folder). `series_uid` picks a series as in
/// [`read_dicom_series_bytes`].
#[cfg(not(target_arch = "wasm32"))]
pub fn read_dicom_path(
    path: impl AsRef<std::path::Path>,
    series_uid: Option<&str>,
) -> Result<DicomSeries> {
    let path = path.as_ref();
    if path.is_dir() {
        let src = PathSource::from_dir(path)?;
        return read_series(&src, series_uid, &path.display().to_string());
    }
    // One file: a multi-frame file is the series; a single slice brings its folder.
    let one = PathSource {
        files: vec![path.to_path_buf()],
    };
    let header = match read_header(&one, 0)? {
        Parsed::Image(h) => h,
        Parsed::Other(what) => {
            return Err(Error::Dicom(format!(
                "{}: {what}, not a CT image",
                path.display()
            )));
        }
        Parsed::NotDicom => {
            return Err(Error::Dicom(format!(
                "{}: not a DICOM file (no \"DICM\" marker at byte 128)",
                path.display()
            )));
        }
    };
    if header.frame_count() > 1 {
        return read_series(&one, series_uid, &path.display().to_string());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let src = PathSource::from_dir(&dir)?;
    let uid = series_uid.unwrap_or(&header.series_uid).to_string();
    read_series(&src, Some(&uid), &dir.display().to_string())
}

/// The image series in a folder (or file), most images first, without decoding pixels.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_dicom_series_path(path: impl AsRef<std::path::Path>) -> Result<Vec<SeriesBrief>> {
    let path = path.as_ref();
    let src = if path.is_dir() {
        PathSource::from_dir(path)?
    } else {
        PathSource {
            files: vec![path.to_path_buf()],
        }
    };
    Ok(scan(&src)?.briefs())
}
