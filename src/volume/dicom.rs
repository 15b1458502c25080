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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use dicom_core::Tag;
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;

use super::nifti_io::VolumeSummary;
use super::{Affine, CtVolume, SourceInfo, Volume, checked_voxel_count};
use crate::{Error, Result};

/// Whether these bytes start like a DICOM file: `DICM` after the 128-byte preamble
/// (or, for files written without the preamble, at the very start).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM")
}

/// A short description of one series found among the files (for `info` and errors).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesBrief {
    pub series_uid: String,
    pub modality: String,
    pub description: String,
    /// Number of images (frames) in the series.
    pub images: usize,
}

/// What the DICOM files said about the series that was read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DicomInfo {
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
    pub modality: String,
    /// SeriesDescription (0008,103E), may be empty.
    pub description: String,
    /// Slices in the volume (its third dimension).
    pub slices: usize,
    /// Files that make up the series (1 for a multi-frame file).
    pub files: usize,
    /// Transfer syntax UID and name, e.g. `1.2.840.10008.1.2.1 (Explicit VR Little Endian)`.
    pub transfer_syntax: String,
    /// Stored pixel type, e.g. `"int16"` or `"uint16"`.
    pub stored_dtype: String,
    /// RescaleSlope/RescaleIntercept of the first slice (HU = raw · slope + intercept).
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// SOP Instance UID of each slice, in slice (k) order.
    #[serde(skip)]
    pub sop_instance_uids: Vec<String>,
    /// Frame number (1-based) of each slice in its file, in slice (k) order: 1 for
    /// single-frame files.
    #[serde(skip)]
    pub frame_numbers: Vec<u32>,
    /// SOP Class UID of the images (e.g. CT Image Storage `1.2.840.10008.5.1.4.1.1.2`).
    #[serde(skip)]
    pub sop_class_uid: String,
    /// Patient and study attributes, copied into derived objects (RTSTRUCT, SEG).
    #[serde(skip)]
    pub patient: PatientStudy,
    /// Other image series among the files (not read).
    pub other_series: Vec<SeriesBrief>,
    /// Files that were not DICOM images (skipped), e.g. a DICOMDIR or an RTSTRUCT.
    pub skipped_files: usize,
    /// Localizer (scout) images of the series that were left out.
    pub skipped_localizers: usize,
}

/// The patient and study attributes of a series, as its first image states them (kept
/// to write derived objects of the same patient and study; empty when absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatientStudy {
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub study_description: String,
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

// ---------------------------------------------------------------------------------
// Sources of files

/// Where the files come from: in-memory bytes or paths.
trait Source {
    fn count(&self) -> usize;
    fn name(&self, i: usize) -> String;
    /// The whole file.
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>>;
    /// A reader over the file from its start (for header-only parsing).
    fn reader(&self, i: usize) -> Result<Box<dyn Read + '_>>;
    /// The file's size in bytes.
    fn size(&self, i: usize) -> Result<u64>;
}

struct BytesSource<'a, N, B>(&'a [(N, B)]);

impl<N: AsRef<str>, B: AsRef<[u8]>> Source for BytesSource<'_, N, B> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn name(&self, i: usize) -> String {
        self.0[i].0.as_ref().to_string()
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.0[i].1.as_ref()))
    }
    fn reader(&self, i: usize) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.0[i].1.as_ref()))
    }
    fn size(&self, i: usize) -> Result<u64> {
        Ok(self.0[i].1.as_ref().len() as u64)
    }
}

#[cfg(not(target_arch = "wasm32"))]
struct PathSource {
    files: Vec<std::path::PathBuf>,
}

#[cfg(not(target_arch = "wasm32"))]
impl PathSource {
    /// Deepest folder level searched below the folder given.
    const MAX_DEPTH: usize = 6;
    /// Most files considered in one folder tree.
    const MAX_FILES: usize = 200_000;

    fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let mut files = Vec::new();
        Self::walk(dir, 0, &mut files)?;
        files.sort();
        Ok(Self { files })
    }

    fn walk(dir: &std::path::Path, depth: usize, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read folder {}: {e}", dir.display()),
            ))
        })?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let kind = std::fs::metadata(&path)?;
            if kind.is_dir() {
                if depth < Self::MAX_DEPTH {
                    Self::walk(&path, depth + 1, out)?;
                }
            } else if kind.is_file() {
                if out.len() >= Self::MAX_FILES {
                    return Err(Error::Dicom(format!(
                        "{}: more than {} files; give the folder of one series",
                        dir.display(),
                        Self::MAX_FILES
                    )));
                }
                out.push(path);
            }
        }
        Ok(())
    }

    fn open(&self, i: usize) -> Result<std::fs::File> {
        let p = &self.files[i];
        std::fs::File::open(p).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", p.display()),
            ))
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Source for PathSource {
    fn count(&self) -> usize {
        self.files.len()
    }
    fn name(&self, i: usize) -> String {
        self.files[i].display().to_string()
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let mut v = Vec::new();
        self.open(i)?.read_to_end(&mut v)?;
        Ok(Cow::Owned(v))
    }
    fn reader(&self, i: usize) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(std::io::BufReader::new(self.open(i)?)))
    }
    fn size(&self, i: usize) -> Result<u64> {
        Ok(self.open(i)?.metadata()?.len())
    }
}

// ---------------------------------------------------------------------------------
// Headers

/// Geometry and scaling of one frame.
#[derive(Clone, Debug)]
struct Frame {
    position: [f64; 3],
    orientation: [f64; 6],
    /// PixelSpacing: (between rows, between columns) in mm.
    spacing: [f64; 2],
    slope: f64,
    intercept: f64,
}

/// What one image file's header says (pixel data not read).
#[derive(Clone, Debug)]
struct Header {
    file: usize,
    series_uid: String,
    study_uid: String,
    frame_of_reference_uid: String,
    modality: String,
    description: String,
    sop_instance_uid: String,
    sop_class_uid: String,
    patient: PatientStudy,
    transfer_syntax: String,
    rows: usize,
    cols: usize,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    samples_per_pixel: u16,
    localizer: bool,
    gantry_tilt: Option<f64>,
    slice_gap: Option<f64>,
    /// Per frame; an error message instead when the geometry is missing or invalid
    /// (reported only if this series is the one read).
    frames: std::result::Result<Vec<Frame>, String>,
    instance_number: Option<i64>,
}

impl Header {
    fn frame_count(&self) -> usize {
        self.frames.as_ref().map(|f| f.len()).unwrap_or(1)
    }
}

enum Parsed {
    Image(Box<Header>),
    /// A DICOM object that is not an image (e.g. DICOMDIR, RTSTRUCT): what it is.
    Other(String),
    NotDicom,
}

/// The messages of an error and its sources, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// Parse a file; `open` gives a reader positioned at its start (it is called twice:
/// the element lengths are checked first, see [`check_lengths`]); `header_only` stops
/// before the pixel data.
pub(crate) fn parse<R: Read>(
    mut open: impl FnMut() -> Result<R>,
    size: Option<u64>,
    name: &str,
    header_only: bool,
) -> Result<Option<DefaultDicomObject>> {
    let mut r = open()?;
    let mut head = [0u8; 132];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    let head = &head[..got];
    let corrupt = |m: String| {
        Error::Dicom(format!(
            "{name}: cannot be read as DICOM (truncated or corrupt?): {m}"
        ))
    };
    let skip = if head.get(128..132) == Some(b"DICM") {
        132
    } else if head.starts_with(b"DICM") {
        4
    } else {
        return Ok(None);
    };
    // The parser allocates a value's claimed length before reading it: a few bytes could
    // make it zero 4 GiB. Walk the element headers first, without allocating.
    let after_dicm = std::io::Cursor::new(head[skip..].to_vec()).chain(r);
    let rest_size = size.map(|s| s.saturating_sub(skip as u64));
    check_lengths(after_dicm, rest_size, header_only).map_err(corrupt)?;
    let mut r = open()?;
    std::io::copy(&mut (&mut r).take(skip as u64), &mut std::io::sink())?;
    let rest = std::io::Cursor::new(b"DICM".to_vec()).chain(r);
    let mut opts = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    if header_only {
        opts = opts.read_until(tags::PIXEL_DATA);
    }
    opts.from_reader(rest)
        .map(Some)
        .map_err(|e| corrupt(chain(&e)))
}

/// A reader that counts the bytes read, and knows the stream's length when it can.
struct Counted<R> {
    inner: R,
    pos: u64,
    len: Option<u64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Counted<R> {
    /// Exactly `N` bytes, or `None` at the end of the stream (a cut header is left to
    /// the parser to report).
    fn take_array<const N: usize>(&mut self) -> std::result::Result<Option<[u8; N]>, String> {
        let mut b = [0u8; N];
        let mut got = 0;
        while got < N {
            match self.read(&mut b[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Some(b))
    }

    /// An error if a length read at this point runs past the end of the stream (when
    /// its length is known), in whatever context the parser reads it.
    fn fits(&self, tag: (u16, u16), len: u32) -> std::result::Result<(), String> {
        match self.len {
            Some(total) if len != u32::MAX && self.pos + len as u64 > total => Err(format!(
                "element ({:04X},{:04X}) claims a value of {len} bytes but the file ends {} bytes later",
                tag.0,
                tag.1,
                total.saturating_sub(self.pos)
            )),
            _ => Ok(()),
        }
    }

    /// Skip a value of `len` bytes by reading it (no allocation): an error if the
    /// stream ends first.
    fn skip(&mut self, tag: (u16, u16), len: u32) -> std::result::Result<(), String> {
        let n = std::io::copy(&mut (&mut *self).take(len as u64), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if n < len as u64 {
            return Err(format!(
                "element ({:04X},{:04X}) claims a value of {len} bytes but the file ends {n} bytes later",
                tag.0, tag.1
            ));
        }
        Ok(())
    }
}

/// Whether an explicit-VR header has a 4-byte length: all VRs but those PS3.5 7.1.2
/// lists with a 2-byte length (an unknown VR is read as UN, as dicom-rs does).
fn long_vr(vr: &[u8; 2]) -> bool {
    !matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Check that no element of a DICOM stream (positioned after "DICM") claims a value
/// longer than the rest of the stream, walking its element headers (file meta group,
/// then the data set in its transfer syntax: implicit or explicit VR, little or big
/// endian, deflated; into sequences and items; over pixel fragments) and skipping
/// values by reading them, so nothing is allocated from a claimed length. With
/// `header_only`, stops at the top-level PixelData. A cut header is left to the parser.
pub(crate) fn check_lengths(
    r: impl Read,
    len: Option<u64>,
    header_only: bool,
) -> std::result::Result<(), String> {
    let mut r = Counted {
        inner: r,
        pos: 0,
        len,
    };
    // File meta group: explicit VR little endian, as long as (0002,0000) says (as
    // dicom-object reads it).
    let Some(h) = r.take_array::<8>()? else {
        return Ok(());
    };
    let bad_meta = || "the file meta group does not start with its length (0002,0000)".to_string();
    if h[..4] != [0x02, 0x00, 0x00, 0x00] {
        return Err(bad_meta());
    }
    let len = if long_vr(&[h[4], h[5]]) {
        r.take_array::<4>()?.map(u32::from_le_bytes)
    } else {
        Some(u16::from_le_bytes([h[6], h[7]]) as u32)
    };
    let (Some(4), Some(v)) = (len, r.take_array::<4>()?) else {
        return Err(bad_meta());
    };
    let group_end = r.pos + u32::from_le_bytes(v) as u64;
    let mut ts = String::new();
    while r.pos < group_end {
        let Some(h) = r.take_array::<8>()? else {
            return Ok(());
        };
        let (g, e) = (
            u16::from_le_bytes([h[0], h[1]]),
            u16::from_le_bytes([h[2], h[3]]),
        );
        let vr = [h[4], h[5]];
        let len = if long_vr(&vr) {
            let Some(l) = r.take_array::<4>()? else {
                return Ok(());
            };
            u32::from_le_bytes(l)
        } else {
            u16::from_le_bytes([h[6], h[7]]) as u32
        };
        if len == u32::MAX {
            return Err(format!(
                "file meta element ({g:04X},{e:04X}) has an undefined length"
            ));
        }
        r.fits((g, e), len)?;
        if (g, e) == (0x0002, 0x0010) && len <= 128 {
            let mut v = vec![0u8; len as usize];
            if r.read_exact(&mut v).is_err() {
                return Ok(());
            }
            ts = String::from_utf8_lossy(&v)
                .trim_end_matches(['\0', ' '])
                .to_string();
        } else {
            r.skip((g, e), len)?;
        }
    }
    let rest_len = r.len.map(|l| l.saturating_sub(r.pos));
    let rest = r.inner;
    match ts.as_str() {
        "1.2.840.10008.1.2" => walk_data_set(rest, rest_len, false, false, header_only),
        "1.2.840.10008.1.2.2" => walk_data_set(rest, rest_len, true, true, header_only),
        "1.2.840.10008.1.2.1.99" => walk_data_set(
            flate2::read::DeflateDecoder::new(rest),
            None,
            true,
            false,
            header_only,
        ),
        _ => walk_data_set(rest, rest_len, true, false, header_only),
    }
}

fn walk_data_set(
    r: impl Read,
    len: Option<u64>,
    explicit: bool,
    big_endian: bool,
    header_only: bool,
) -> std::result::Result<(), String> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    #[derive(PartialEq)]
    enum Open {
        Sequence,
        Item,
        Fragments,
    }
    let mut r = Counted {
        inner: r,
        pos: 0,
        len,
    };
    let u16_of = |b: [u8; 2]| {
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_of = |b: [u8; 4]| {
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    // Open containers, each with its end when its length is defined.
    let mut open: Vec<(Open, Option<u64>)> = Vec::new();
    let dict = dicom_dictionary_std::StandardDataDictionary;
    loop {
        while open
            .last()
            .is_some_and(|(_, end)| end.is_some_and(|e| r.pos >= e))
        {
            open.pop();
        }
        let Some(t) = r.take_array::<4>()? else {
            return Ok(());
        };
        let tag = (u16_of([t[0], t[1]]), u16_of([t[2], t[3]]));
        if tag.0 == 0xFFFE {
            // Items and delimiters: no VR, a 4-byte length.
            let Some(l) = r.take_array::<4>()? else {
                return Ok(());
            };
            let len = u32_of(l);
            r.fits(tag, len)?;
            if open.is_empty() && tag.1 != 0xE00D {
                // Outside any sequence dicom-rs reads an item or a sequence delimiter as an
                // element with a value (an item delimiter it skips).
                if len != u32::MAX {
                    r.skip(tag, len)?;
                }
                continue;
            }
            match tag.1 {
                0xE000 if open.last().is_some_and(|(k, _)| *k == Open::Fragments) => {
                    if len == u32::MAX {
                        return Err("a pixel data fragment of undefined length".into());
                    }
                    r.skip(tag, len)?;
                }
                0xE000 => {
                    let end = (len != u32::MAX).then(|| r.pos + len as u64);
                    open.push((Open::Item, end));
                }
                0xE00D => {
                    while let Some((k, _)) = open.pop() {
                        if k == Open::Item {
                            break;
                        }
                    }
                }
                0xE0DD => {
                    while let Some((k, _)) = open.pop() {
                        if k != Open::Item {
                            break;
                        }
                    }
                }
                _ => r.skip(tag, len)?,
            }
            continue;
        }
        if header_only && open.is_empty() && tag == (0x7FE0, 0x0010) {
            return Ok(());
        }
        let (vr, len) = if explicit {
            let Some(v) = r.take_array::<2>()? else {
                return Ok(());
            };
            if long_vr(&v) {
                let Some(l) = r.take_array::<6>()? else {
                    return Ok(());
                };
                (Some(v), u32_of([l[2], l[3], l[4], l[5]]))
            } else {
                let Some(l) = r.take_array::<2>()? else {
                    return Ok(());
                };
                (Some(v), u16_of(l) as u32)
            }
        } else {
            let Some(l) = r.take_array::<4>()? else {
                return Ok(());
            };
            (None, u32_of(l))
        };
        // The VR: explicit, else the dictionary's (as the parser takes it).
        let vr = vr.or_else(|| match dict.by_tag(Tag(tag.0, tag.1)).map(|e| e.vr()) {
            Some(VirtualVr::Exact(v)) => Some(*v.to_string().as_bytes().first_chunk()?),
            Some(VirtualVr::Xs) => Some(*b"US"),
            _ => None,
        });
        r.fits(tag, len)?;
        let is_sequence = vr == Some(*b"SQ");
        // dicom-rs reads whole numbers of binary values but steps over the whole length:
        // a length that is not a multiple of the value's size would shift the rest.
        let size = match vr.as_ref() {
            Some(b"OW" | b"SS" | b"US") => 2,
            Some(b"AT" | b"FL" | b"OF" | b"OL" | b"SL" | b"UL") => 4,
            Some(b"FD" | b"OD" | b"OV" | b"SV" | b"UV") => 8,
            _ => 1,
        };
        if len != u32::MAX && len % size != 0 {
            return Err(format!(
                "element ({:04X},{:04X}) of VR {} has a length of {len} bytes, not a multiple of {size}",
                tag.0,
                tag.1,
                String::from_utf8_lossy(vr.as_ref().map(|v| &v[..]).unwrap_or(b"??"))
            ));
        }
        if len == u32::MAX {
            // As dicom-rs: undefined-length PixelData holds fragments, any other
            // undefined-length element is a sequence.
            let kind = if tag == (0x7FE0, 0x0010) {
                Open::Fragments
            } else {
                Open::Sequence
            };
            open.push((kind, None));
        } else if is_sequence {
            open.push((Open::Sequence, Some(r.pos + len as u64)));
        } else {
            r.skip(tag, len)?;
        }
    }
}

pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        })
        .unwrap_or_default()
}

pub(crate) fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag).and_then(|e| e.to_multi_float64().ok())
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.get(tag)
        .and_then(|e| e.to_float64().ok())
        .filter(|v| v.is_finite())
}

pub(crate) fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag).and_then(|e| e.to_int::<u32>().ok())
}

/// First item of sequence `seq` in `item`.
pub(crate) fn seq_item(item: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    item.get(seq)?.items()?.first()
}

/// An attribute of a frame of an enhanced multi-frame image: from the frame's
/// PerFrameFunctionalGroupsSequence item, else the SharedFunctionalGroupsSequence,
/// else the top level.
fn frame_attr<T>(
    obj: &InMemDicomObject,
    frame: usize,
    macro_seq: Tag,
    get: impl Fn(&InMemDicomObject) -> Option<T>,
) -> Option<T> {
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.get(frame))
        .and_then(|item| seq_item(item, macro_seq))
        .and_then(&get);
    per_frame
        .or_else(|| {
            seq_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
                .and_then(|item| seq_item(item, macro_seq))
                .and_then(&get)
        })
        .or_else(|| get(obj))
}

fn frame_geometry(
    obj: &InMemDicomObject,
    n_frames: usize,
) -> std::result::Result<Vec<Frame>, String> {
    let mut frames = Vec::with_capacity(n_frames.min(4096));
    for f in 0..n_frames {
        let at = if n_frames > 1 {
            format!(" (frame {})", f + 1)
        } else {
            String::new()
        };
        let position = frame_attr(obj, f, tags::PLANE_POSITION_SEQUENCE, |o| {
            floats(o, tags::IMAGE_POSITION_PATIENT)
        })
        .ok_or(format!("no ImagePositionPatient (0020,0032){at}"))?;
        let orientation = frame_attr(obj, f, tags::PLANE_ORIENTATION_SEQUENCE, |o| {
            floats(o, tags::IMAGE_ORIENTATION_PATIENT)
        })
        .ok_or(format!("no ImageOrientationPatient (0020,0037){at}"))?;
        let spacing = frame_attr(obj, f, tags::PIXEL_MEASURES_SEQUENCE, |o| {
            floats(o, tags::PIXEL_SPACING)
        })
        .ok_or(format!("no PixelSpacing (0028,0030){at}"))?;
        let slope = frame_attr(obj, f, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, |o| {
            float(o, tags::RESCALE_SLOPE)
        })
        .unwrap_or(1.0);
        let intercept = frame_attr(obj, f, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, |o| {
            float(o, tags::RESCALE_INTERCEPT)
        })
        .unwrap_or(0.0);
        if position.len() != 3 || position.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "ImagePositionPatient (0020,0032) is not 3 numbers{at}"
            ));
        }
        if orientation.len() != 6 || orientation.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "ImageOrientationPatient (0020,0037) is not 6 numbers{at}"
            ));
        }
        if spacing.len() != 2 || spacing.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(format!(
                "PixelSpacing (0028,0030) is not 2 positive numbers{at}"
            ));
        }
        if slope == 0.0 {
            return Err(format!("RescaleSlope (0028,1053) is 0{at}"));
        }
        frames.push(Frame {
            position: [position[0], position[1], position[2]],
            orientation: [
                orientation[0],
                orientation[1],
                orientation[2],
                orientation[3],
                orientation[4],
                orientation[5],
            ],
            spacing: [spacing[0], spacing[1]],
            slope,
            intercept,
        });
    }
    Ok(frames)
}

/// Most frames accepted in one multi-frame file.
const MAX_FRAMES: usize = 65_535;

fn read_header(src: &dyn Source, i: usize) -> Result<Parsed> {
    let name = src.name(i);
    let Some(obj) = parse(|| src.reader(i), src.size(i).ok(), &name, true)? else {
        return Ok(Parsed::NotDicom);
    };
    let modality = text(&obj, tags::MODALITY);
    let (rows, cols) = (uint(&obj, tags::ROWS), uint(&obj, tags::COLUMNS));
    let (Some(rows), Some(cols)) = (rows, cols) else {
        let sop = obj.meta().media_storage_sop_class_uid().to_string();
        // A CT image without its size: cut short (the parser stops quietly at the end).
        let ct_sop = [
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.2.1",
            "1.2.840.10008.5.1.4.1.1.2.2",
        ];
        if ct_sop.contains(&sop.as_str()) || modality == "CT" {
            return Err(Error::Dicom(format!(
                "{name}: a CT image without Rows/Columns (0028,0010/0011): the file is truncated or corrupt"
            )));
        }
        let what = if sop == "1.2.840.10008.1.3.10" {
            "a DICOMDIR".to_string()
        } else if modality.is_empty() {
            format!("a DICOM object without an image (SOP class {sop})")
        } else {
            format!("a {modality} object without an image")
        };
        return Ok(Parsed::Other(what));
    };
    let n_frames = match obj.get(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(e) => match e.to_int::<i64>() {
            Ok(n) if (1..=MAX_FRAMES as i64).contains(&n) => n as usize,
            _ => {
                return Err(Error::Dicom(format!(
                    "{name}: NumberOfFrames (0028,0008) is not a number between 1 and {MAX_FRAMES}"
                )));
            }
        },
    };
    let image_type = text(&obj, tags::IMAGE_TYPE).to_ascii_uppercase();
    Ok(Parsed::Image(Box::new(Header {
        file: i,
        series_uid: text(&obj, tags::SERIES_INSTANCE_UID),
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID),
        frame_of_reference_uid: text(&obj, tags::FRAME_OF_REFERENCE_UID),
        description: text(&obj, tags::SERIES_DESCRIPTION),
        sop_instance_uid: text(&obj, tags::SOP_INSTANCE_UID),
        sop_class_uid: text(&obj, tags::SOP_CLASS_UID),
        patient: PatientStudy {
            patient_name: text(&obj, tags::PATIENT_NAME),
            patient_id: text(&obj, tags::PATIENT_ID),
            patient_birth_date: text(&obj, tags::PATIENT_BIRTH_DATE),
            patient_sex: text(&obj, tags::PATIENT_SEX),
            study_date: text(&obj, tags::STUDY_DATE),
            study_time: text(&obj, tags::STUDY_TIME),
            study_id: text(&obj, tags::STUDY_ID),
            accession_number: text(&obj, tags::ACCESSION_NUMBER),
            referring_physician_name: text(&obj, tags::REFERRING_PHYSICIAN_NAME),
            study_description: text(&obj, tags::STUDY_DESCRIPTION),
        },
        transfer_syntax: obj.meta().transfer_syntax().to_string(),
        rows: rows as usize,
        cols: cols as usize,
        bits_allocated: uint(&obj, tags::BITS_ALLOCATED).unwrap_or(0) as u16,
        bits_stored: uint(&obj, tags::BITS_STORED).unwrap_or(0) as u16,
        signed: uint(&obj, tags::PIXEL_REPRESENTATION) == Some(1),
        samples_per_pixel: uint(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
        localizer: image_type.split('\\').any(|t| t.trim() == "LOCALIZER"),
        gantry_tilt: float(&obj, tags::GANTRY_DETECTOR_TILT),
        slice_gap: float(&obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| {
                frame_attr(&obj, 0, tags::PIXEL_MEASURES_SEQUENCE, |o| {
                    float(o, tags::SPACING_BETWEEN_SLICES)
                        .or_else(|| float(o, tags::SLICE_THICKNESS))
                })
            })
            .filter(|v| *v > 0.0),
        frames: frame_geometry(&obj, n_frames),
        instance_number: obj
            .get(tags::INSTANCE_NUMBER)
            .and_then(|e| e.to_int::<i64>().ok()),
        modality,
    })))
}

/// All image headers among the files, grouped by series.
struct Scan {
    series: BTreeMap<String, Vec<Header>>,
    skipped: usize,
    first_other: Option<(String, String)>,
}

impl Scan {
    fn images(hs: &[Header]) -> usize {
        hs.iter().map(Header::frame_count).sum()
    }

    fn briefs(&self) -> Vec<SeriesBrief> {
        let mut v: Vec<SeriesBrief> = self
            .series
            .iter()
            .map(|(uid, hs)| SeriesBrief {
                series_uid: uid.clone(),
                modality: hs[0].modality.clone(),
                description: hs[0].description.clone(),
                images: Self::images(hs),
            })
            .collect();
        v.sort_by(|a, b| {
            b.images
                .cmp(&a.images)
                .then(a.series_uid.cmp(&b.series_uid))
        });
        v
    }
}

fn scan(src: &dyn Source) -> Result<Scan> {
    let mut s = Scan {
        series: BTreeMap::new(),
        skipped: 0,
        first_other: None,
    };
    for i in 0..src.count() {
        match read_header(src, i) {
            Ok(Parsed::Image(h)) => s.series.entry(h.series_uid.clone()).or_default().push(*h),
            Ok(Parsed::Other(what)) => {
                s.skipped += 1;
                s.first_other.get_or_insert((src.name(i), what));
            }
            Ok(Parsed::NotDicom) => s.skipped += 1,
            // A file marked DICOM that cannot be parsed is an error (never skipped in
            // silence: it may be a slice of the series).
            Err(e) => return Err(e),
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------
// The series

fn transfer_syntax_name(uid: &str) -> (&'static str, bool) {
    match uid {
        "1.2.840.10008.1.2" => ("Implicit VR Little Endian", true),
        "1.2.840.10008.1.2.1" => ("Explicit VR Little Endian", true),
        "1.2.840.10008.1.2.1.99" => ("Deflated Explicit VR Little Endian", true),
        "1.2.840.10008.1.2.2" => ("Explicit VR Big Endian", true),
        "1.2.840.10008.1.2.5" => ("RLE Lossless", true),
        "1.2.840.10008.1.2.4.50" => ("JPEG Baseline", true),
        "1.2.840.10008.1.2.4.51" => ("JPEG Extended", true),
        "1.2.840.10008.1.2.4.57" => ("JPEG Lossless", true),
        "1.2.840.10008.1.2.4.70" => ("JPEG Lossless SV1", true),
        "1.2.840.10008.1.2.4.80" => ("JPEG-LS Lossless", false),
        "1.2.840.10008.1.2.4.81" => ("JPEG-LS Near-Lossless", false),
        "1.2.840.10008.1.2.4.90" => ("JPEG 2000 Lossless", false),
        "1.2.840.10008.1.2.4.91" => ("JPEG 2000", false),
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => ("JPEG 2000 Part 2", false),
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            ("High-Throughput JPEG 2000", false)
        }
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            ("JPEG XL", false)
        }
        _ => ("unknown", false),
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// One slice of the volume: a frame of a file.
struct Slot<'h> {
    header: &'h Header,
    frame: usize,
    geo: &'h Frame,
    /// Position along the slice normal (mm).
    along: f64,
}

/// `-0.0` → `0.0`, so that printed affines show no "-0.0000".
fn no_negative_zero(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x }
}

fn dicom_err(m: String) -> Error {
    Error::Dicom(m)
}

fn read_series(src: &dyn Source, series_uid: Option<&str>, what: &str) -> Result<DicomSeries> {
    let scan = scan(src)?;
    if scan.series.is_empty() {
        if let Some((name, other)) = scan.first_other {
            return Err(dicom_err(format!(
                "{what}: no DICOM image found ({name} is {other})"
            )));
        }
        return Err(dicom_err(format!(
            "{what}: no DICOM file found ({} files, none with the \"DICM\" marker at byte 128)",
            src.count()
        )));
    }
    let briefs = scan.briefs();
    let listing = || {
        briefs
            .iter()
            .map(|b| format!("{} {} ({} images)", b.series_uid, b.modality, b.images))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let uid = match series_uid {
        Some(u) => {
            if !scan.series.contains_key(u) {
                return Err(dicom_err(format!(
                    "{what}: no series with SeriesInstanceUID {u}; found: {}",
                    listing()
                )));
            }
            u.to_string()
        }
        None => match briefs.iter().find(|b| b.modality == "CT") {
            Some(b) => b.series_uid.clone(),
            None => {
                return Err(dicom_err(format!(
                    "{what}: no CT series (Modality (0008,0060) is not CT); found: {}",
                    listing()
                )));
            }
        },
    };
    let headers = &scan.series[&uid];
    let first = &headers[0];
    if first.modality != "CT" {
        return Err(dicom_err(format!(
            "{}: Modality (0008,0060) is {:?}: only CT series can be read (Hounsfield units)",
            src.name(first.file),
            first.modality
        )));
    }
    let other_series = briefs
        .iter()
        .filter(|b| b.series_uid != uid)
        .cloned()
        .collect();
    let volume_headers: Vec<&Header> = headers.iter().filter(|h| !h.localizer).collect();
    let skipped_localizers = headers.len() - volume_headers.len();
    let Some(&first) = volume_headers.first() else {
        return Err(dicom_err(format!(
            "{what}: series {uid} holds only localizer (scout) images"
        )));
    };

    // Same pixel format and grid in every file.
    let (ts_name, _) = transfer_syntax_name(&first.transfer_syntax);
    for h in &volume_headers {
        let name = || src.name(h.file);
        if h.modality != first.modality {
            return Err(dicom_err(format!(
                "{}: Modality (0008,0060) {:?} differs from {:?} in {} of the same series",
                name(),
                h.modality,
                first.modality,
                src.name(first.file)
            )));
        }
        let (n, ok) = transfer_syntax_name(&h.transfer_syntax);
        if !ok {
            return Err(dicom_err(format!(
                "{}: transfer syntax {} ({n}) cannot be decoded here (supported: uncompressed, \
                 RLE, JPEG baseline and lossless); convert the series, e.g. `gdcmconv --raw`",
                name(),
                h.transfer_syntax
            )));
        }
        if (h.rows, h.cols) != (first.rows, first.cols) {
            return Err(dicom_err(format!(
                "{}: mixed sizes in one series: Rows×Columns (0028,0010/0011) is {}×{} but {} in {}",
                name(),
                h.rows,
                h.cols,
                format_args!("{}×{}", first.rows, first.cols),
                src.name(first.file)
            )));
        }
        if h.samples_per_pixel != 1 {
            return Err(dicom_err(format!(
                "{}: SamplesPerPixel (0028,0002) is {}: a CT image has one sample per pixel",
                name(),
                h.samples_per_pixel
            )));
        }
        if !matches!(h.bits_allocated, 8 | 16 | 32) {
            return Err(dicom_err(format!(
                "{}: BitsAllocated (0028,0100) is {}: only 8, 16 or 32 are supported",
                name(),
                h.bits_allocated
            )));
        }
        if (h.bits_allocated, h.signed) != (first.bits_allocated, first.signed) {
            return Err(dicom_err(format!(
                "{}: BitsAllocated/PixelRepresentation (0028,0100/0103) differ from {}",
                name(),
                src.name(first.file)
            )));
        }
        if let Err(m) = &h.frames {
            return Err(dicom_err(format!("{}: {m}", name())));
        }
    }

    // Slices: every frame, sorted along the normal.
    let mut slots: Vec<Slot> = Vec::new();
    for h in &volume_headers {
        for (f, geo) in h
            .frames
            .as_ref()
            .map_err(|m| dicom_err(m.clone()))?
            .iter()
            .enumerate()
        {
            slots.push(Slot {
                header: h,
                frame: f,
                geo,
                along: 0.0,
            });
        }
    }
    let slot_name = |s: &Slot| {
        if s.header.frame_count() > 1 {
            format!("{} frame {}", src.name(s.header.file), s.frame + 1)
        } else {
            src.name(s.header.file)
        }
    };
    let o = slots[0].geo.orientation;
    let row = [o[0], o[1], o[2]];
    let col = [o[3], o[4], o[5]];
    let (nr, nc) = (norm(row), norm(col));
    if (nr - 1.0).abs() > 0.01 || (nc - 1.0).abs() > 0.01 || dot(row, col).abs() > 0.01 {
        return Err(dicom_err(format!(
            "{}: ImageOrientationPatient (0020,0037) {o:?} is not two orthogonal unit vectors",
            slot_name(&slots[0])
        )));
    }
    let row = scale(row, 1.0 / nr);
    let col = scale(col, 1.0 / nc);
    let normal = cross(row, col);
    let normal = scale(normal, 1.0 / norm(normal));
    let sp = slots[0].geo.spacing;
    for s in &slots {
        let so = s.geo.orientation;
        if so.iter().zip(&o).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(dicom_err(format!(
                "{}: ImageOrientationPatient (0020,0037) {so:?} differs from {o:?} in {}: mixed orientations in one series",
                slot_name(s),
                slot_name(&slots[0])
            )));
        }
        let ss = s.geo.spacing;
        if ss
            .iter()
            .zip(&sp)
            .any(|(a, b)| (a - b).abs() > 1e-4 * b.max(1.0))
        {
            return Err(dicom_err(format!(
                "{}: PixelSpacing (0028,0030) {ss:?} differs from {sp:?} in {}",
                slot_name(s),
                slot_name(&slots[0])
            )));
        }
    }
    for s in slots.iter_mut() {
        s.along = dot(s.geo.position, normal);
    }
    slots.sort_by(|a, b| {
        a.along
            .total_cmp(&b.along)
            .then(a.header.instance_number.cmp(&b.header.instance_number))
    });
    let n = slots.len();
    let step = if n >= 2 {
        let mut gaps: Vec<f64> = slots.windows(2).map(|w| w[1].along - w[0].along).collect();
        for (w, &g) in slots.windows(2).zip(&gaps) {
            if g.abs() < 1e-3 {
                return Err(dicom_err(format!(
                    "{} and {}: two slices at the same ImagePositionPatient (0020,0032) \
                     (duplicates, or several acquisitions in one series?)",
                    slot_name(&w[0]),
                    slot_name(&w[1])
                )));
            }
        }
        let mean = (slots[n - 1].along - slots[0].along) / (n - 1) as f64;
        gaps.sort_by(f64::total_cmp);
        let median = gaps[(gaps.len() - 1) / 2];
        for w in slots.windows(2) {
            let g = w[1].along - w[0].along;
            if (g - median).abs() > 0.05 * median + 0.01 {
                let hint = if g > 1.5 * median {
                    format!(
                        " (about {} slices missing?)",
                        (g / median).round() as i64 - 1
                    )
                } else {
                    String::new()
                };
                return Err(dicom_err(format!(
                    "uneven slice spacing: {:.3} mm between {} and {} but {:.3} mm between most \
                     slices (ImagePositionPatient (0020,0032)){hint}",
                    g,
                    slot_name(&w[0]),
                    slot_name(&w[1]),
                    median
                )));
            }
        }
        // Gantry tilt (or shifted slices): positions must lie on a line along the normal.
        let p0 = slots[0].geo.position;
        for s in &slots[1..] {
            let d = sub(s.geo.position, p0);
            let off = sub(d, scale(normal, dot(d, normal)));
            let along = dot(d, normal).abs();
            if norm(off) > 0.01 + 2e-3 * along {
                let angle = norm(off).atan2(along).to_degrees();
                let tilt = first
                    .gantry_tilt
                    .map(|t| format!(", GantryDetectorTilt (0018,1120) {t}°"))
                    .unwrap_or_default();
                return Err(dicom_err(format!(
                    "{}: slices are sheared by {angle:.2}° from the slice normal (gantry tilt{tilt}); \
                     resample the series to an untilted grid first (e.g. dcm2niix does)",
                    slot_name(s)
                )));
            }
        }
        mean
    } else {
        first.slice_gap.unwrap_or(1.0)
    };

    let dims = [first.cols, first.rows, n];
    let nvox = checked_voxel_count(dims)?;
    let mut m = [[0.0; 4]; 4];
    let origin = slots[0].geo.position;
    for r in 0..3 {
        // LPS → RAS: negate x and y.
        let flip = if r < 2 { -1.0 } else { 1.0 };
        m[r][0] = no_negative_zero(flip * row[r] * sp[1]);
        m[r][1] = no_negative_zero(flip * col[r] * sp[0]);
        m[r][2] = no_negative_zero(flip * normal[r] * step);
        m[r][3] = no_negative_zero(flip * origin[r]);
    }
    m[3][3] = 1.0;
    let affine = Affine { m };
    affine.inverse()?;

    // Files too small for the pixels their header claims are refused before the volume
    // is allocated (a few corrupt bytes could ask for 2 GiB): uncompressed pixel data
    // are in the file; deflate expands at most 1032 times. (RLE and JPEG data are
    // checked by their decoders.)
    for h in &volume_headers {
        let ratio = match h.transfer_syntax.as_str() {
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" => 1,
            "1.2.840.10008.1.2.1.99" => 1032,
            _ => continue,
        };
        let need = (h.frame_count() * h.rows * h.cols) as u64 * (h.bits_allocated as u64 / 8);
        let size = src.size(h.file)?;
        if size.saturating_mul(ratio) < need {
            return Err(dicom_err(format!(
                "{}: {} frame(s) of {}×{} pixels of {} bits need {need} bytes but the file holds \
                 {size} (truncated, or a wrong Rows/Columns (0028,0010/0011) or NumberOfFrames?)",
                src.name(h.file),
                h.frame_count(),
                h.rows,
                h.cols,
                h.bits_allocated
            )));
        }
    }

    // Pixels, file by file (a multi-frame file is decoded once).
    let plane = first.rows * first.cols;
    let mut data = vec![0i16; nvox];
    let mut file_of: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new(); // file → (k, frame)
    for (k, s) in slots.iter().enumerate() {
        file_of.entry(s.header.file).or_default().push((k, s.frame));
    }
    for (&file, ks) in &file_of {
        let name = src.name(file);
        let h = volume_headers
            .iter()
            .find(|h| h.file == file)
            .expect("slot of a listed file");
        let raw = decode_pixels(src, file, &name, h)?;
        for &(k, frame) in ks {
            let geo = &slots[k].geo;
            let out = &mut data[k * plane..(k + 1) * plane];
            to_hu(&raw, frame, plane, h, geo.slope, geo.intercept, out);
        }
    }
    let ct = Volume::from_data(dims, data, affine)?;
    let stored_dtype = match (first.bits_allocated, first.signed) {
        (8, false) => "uint8",
        (8, true) => "int8",
        (16, false) => "uint16",
        (16, true) => "int16",
        (_, false) => "uint32",
        (_, true) => "int32",
    };
    let info = DicomInfo {
        series_uid: uid,
        study_uid: first.study_uid.clone(),
        frame_of_reference_uid: first.frame_of_reference_uid.clone(),
        modality: first.modality.clone(),
        description: first.description.clone(),
        slices: n,
        files: volume_headers.len(),
        transfer_syntax: format!("{} ({ts_name})", first.transfer_syntax),
        stored_dtype: stored_dtype.into(),
        rescale_slope: slots[0].geo.slope,
        rescale_intercept: slots[0].geo.intercept,
        sop_instance_uids: slots
            .iter()
            .map(|s| s.header.sop_instance_uid.clone())
            .collect(),
        frame_numbers: slots.iter().map(|s| s.frame as u32 + 1).collect(),
        sop_class_uid: first.sop_class_uid.clone(),
        patient: first.patient.clone(),
        other_series,
        skipped_files: scan.skipped,
        skipped_localizers,
    };
    Ok(DicomSeries { ct, info })
}

/// The pixel data of one file, uncompressed (little-endian samples, all frames).
fn decode_pixels(src: &dyn Source, file: usize, name: &str, h: &Header) -> Result<Vec<u8>> {
    let bytes = src.bytes(file)?;
    let obj =
        parse(|| Ok(&bytes[..]), Some(bytes.len() as u64), name, false)?.ok_or_else(|| {
            dicom_err(format!(
                "{name}: not a DICOM file any more (changed while reading?)"
            ))
        })?;
    let frames = h.frame_count();
    let need = frames * h.rows * h.cols * (h.bits_allocated as usize / 8);
    let elem = obj.get(tags::PIXEL_DATA).ok_or_else(|| {
        dicom_err(format!(
            "{name}: no PixelData (7FE0,0010): the file is truncated or holds no image"
        ))
    })?;
    let raw: Vec<u8> = match elem.value() {
        Value::Primitive(p) => p.to_bytes().into_owned(),
        Value::PixelSequence(_) => obj
            .decode_pixel_data()
            .map_err(|e| {
                dicom_err(format!(
                    "{name}: the {} pixel data cannot be decoded: {}",
                    transfer_syntax_name(&h.transfer_syntax).0,
                    chain(&e)
                ))
            })?
            .into_data(),
        Value::Sequence(_) => {
            return Err(dicom_err(format!(
                "{name}: PixelData (7FE0,0010) is a sequence, not pixels"
            )));
        }
    };
    if raw.len() < need {
        return Err(dicom_err(format!(
            "{name}: PixelData (7FE0,0010) holds {} bytes but {} frame(s) of {}×{} pixels of {} bits need {need} (truncated?)",
            raw.len(),
            frames,
            h.rows,
            h.cols,
            h.bits_allocated
        )));
    }
    Ok(raw)
}

/// Stored values of one frame → HU (rounded, clamped to i16).
fn to_hu(
    raw: &[u8],
    frame: usize,
    plane: usize,
    h: &Header,
    slope: f64,
    inter: f64,
    out: &mut [i16],
) {
    let bytes = h.bits_allocated as usize / 8;
    let stored = if h.bits_stored == 0 || h.bits_stored > h.bits_allocated {
        h.bits_allocated as u32
    } else {
        h.bits_stored as u32
    };
    let shift = 32 - stored;
    let frame_bytes = &raw[frame * plane * bytes..(frame + 1) * plane * bytes];
    let value = |v: u32| -> i64 {
        // Keep the stored bits only; sign-extend them for signed pixels.
        if h.signed {
            (((v << shift) as i32) >> shift) as i64
        } else {
            ((v << shift) >> shift) as i64
        }
    };
    let hu = |v: i64| -> i16 {
        let x = (v as f64 * slope + inter).round();
        x.clamp(i16::MIN as f64, i16::MAX as f64) as i16
    };
    match bytes {
        1 => {
            for (o, &b) in out.iter_mut().zip(frame_bytes) {
                *o = hu(value(b as u32));
            }
        }
        2 => {
            for (o, c) in out.iter_mut().zip(frame_bytes.chunks_exact(2)) {
                *o = hu(value(u16::from_le_bytes([c[0], c[1]]) as u32));
            }
        }
        _ => {
            for (o, c) in out.iter_mut().zip(frame_bytes.chunks_exact(4)) {
                *o = hu(value(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
        }
    }
}

/// The DICOM lines `medlsam info` prints after the NIfTI fields.
pub fn info_lines(d: &DicomInfo) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<13}{v}\n"));
    line("series_uid", &d.series_uid);
    line("modality", &d.modality);
    if !d.description.is_empty() {
        line("series_desc", &d.description);
    }
    line(
        "slices",
        &format!(
            "{} (from {} file{})",
            d.slices,
            d.files,
            if d.files == 1 { "" } else { "s" }
        ),
    );
    line("study_uid", &d.study_uid);
    if !d.frame_of_reference_uid.is_empty() {
        line("frame_of_ref", &d.frame_of_reference_uid);
    }
    line("transfer", &d.transfer_syntax);
    if d.skipped_localizers > 0 {
        line("localizers", &format!("{} left out", d.skipped_localizers));
    }
    if d.skipped_files > 0 {
        line(
            "skipped",
            &format!("{} files (not DICOM images)", d.skipped_files),
        );
    }
    for o in &d.other_series {
        line(
            "other_series",
            &format!(
                "{} {} ({} images){} — read it with PATH#{}",
                o.series_uid,
                o.modality,
                o.images,
                if o.description.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", o.description)
                },
                o.series_uid
            ),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::PixelFragmentSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::FileMetaTableBuilder;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const RLE: &str = "1.2.840.10008.1.2.5";

    /// A synthetic CT image (explicit VR little endian unless `ts` says otherwise).
    #[derive(Clone)]
    struct Img {
        series: &'static str,
        modality: &'static str,
        sop: String,
        pos: [f64; 3],
        iop: [f64; 6],
        spacing: [f64; 2],
        rows: u16,
        cols: u16,
        raw: Vec<u16>,
        slope: f64,
        intercept: f64,
        signed: bool,
        bits_stored: u16,
        image_type: &'static str,
        ts: &'static str,
    }

    fn img(z: f64, fill: u16) -> Img {
        Img {
            series: "1.2.3.1",
            modality: "CT",
            sop: format!("1.2.3.9.{}", (z * 10.0) as i64),
            pos: [-100.0, -50.0, z],
            iop: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            spacing: [0.8, 0.6],
            rows: 2,
            cols: 3,
            raw: (0..6).map(|p| fill + p).collect(),
            slope: 1.0,
            intercept: -1024.0,
            signed: false,
            bits_stored: 16,
            image_type: "ORIGINAL\\PRIMARY\\AXIAL",
            ts: EXPLICIT_LE,
        }
    }

    fn ds(v: &[f64]) -> PrimitiveValue {
        PrimitiveValue::from(
            v.iter()
                .map(|x| format!("{x}"))
                .collect::<Vec<_>>()
                .join("\\"),
        )
    }

    fn el(tag: Tag, vr: VR, v: PrimitiveValue) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, vr, v)
    }

    /// RLE Lossless encoding of one 16-bit frame: two segments (high bytes, low bytes)
    /// of literal runs.
    fn rle_frame(raw: &[u16]) -> Vec<u8> {
        let seg = |bytes: Vec<u8>| {
            let mut s = Vec::new();
            for chunk in bytes.chunks(128) {
                s.push((chunk.len() - 1) as u8);
                s.extend_from_slice(chunk);
            }
            if s.len() % 2 == 1 {
                s.push(0x80); // no-op run, pads to an even length
            }
            s
        };
        let hi = seg(raw.iter().map(|v| (v >> 8) as u8).collect());
        let lo = seg(raw.iter().map(|v| *v as u8).collect());
        let mut out = vec![0u8; 64];
        out[0..4].copy_from_slice(&2u32.to_le_bytes());
        out[4..8].copy_from_slice(&64u32.to_le_bytes());
        out[8..12].copy_from_slice(&(64 + hi.len() as u32).to_le_bytes());
        out.extend(hi);
        out.extend(lo);
        out
    }

    fn common_elements(i: &Img) -> Vec<DataElement<InMemDicomObject>> {
        vec![
            el(
                tags::SOP_CLASS_UID,
                VR::UI,
                "1.2.840.10008.5.1.4.1.1.2".into(),
            ),
            el(tags::SOP_INSTANCE_UID, VR::UI, i.sop.as_str().into()),
            el(tags::IMAGE_TYPE, VR::CS, i.image_type.into()),
            el(tags::MODALITY, VR::CS, i.modality.into()),
            el(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3".into()),
            el(tags::SERIES_INSTANCE_UID, VR::UI, i.series.into()),
            el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            el(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                "MONOCHROME2".into(),
            ),
            el(tags::ROWS, VR::US, PrimitiveValue::from(i.rows)),
            el(tags::COLUMNS, VR::US, PrimitiveValue::from(i.cols)),
            el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            el(
                tags::BITS_STORED,
                VR::US,
                PrimitiveValue::from(i.bits_stored),
            ),
            el(
                tags::HIGH_BIT,
                VR::US,
                PrimitiveValue::from(i.bits_stored - 1),
            ),
            el(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(i.signed as u16),
            ),
        ]
    }

    fn write(obj: InMemDicomObject, ts: &str) -> Vec<u8> {
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
            .unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    fn pixel_element(raws: &[&[u16]], ts: &str) -> DataElement<InMemDicomObject> {
        if ts == RLE {
            let frags: Vec<Vec<u8>> = raws.iter().map(|r| rle_frame(r)).collect();
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), frags)),
            )
        } else {
            let bytes: Vec<u8> = raws
                .iter()
                .flat_map(|r| r.iter())
                .flat_map(|v| v.to_le_bytes())
                .collect();
            el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
        }
    }

    fn encode(i: &Img) -> Vec<u8> {
        let mut e = common_elements(i);
        e.extend([
            el(tags::SLICE_THICKNESS, VR::DS, ds(&[2.5])),
            el(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&i.pos)),
            el(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&i.iop)),
            el(tags::PIXEL_SPACING, VR::DS, ds(&i.spacing)),
            el(tags::RESCALE_INTERCEPT, VR::DS, ds(&[i.intercept])),
            el(tags::RESCALE_SLOPE, VR::DS, ds(&[i.slope])),
            pixel_element(&[&i.raw], i.ts),
        ]);
        write(InMemDicomObject::from_element_iter(e), i.ts)
    }

    fn read(imgs: &[Img]) -> Result<DicomSeries> {
        let files: Vec<(String, Vec<u8>)> = imgs
            .iter()
            .enumerate()
            .map(|(n, i)| (format!("f{n}"), encode(i)))
            .collect();
        read_dicom_series_bytes(&files, None)
    }

    /// RAS world of a DICOM (LPS) point.
    fn ras(p: [f64; 3]) -> [f64; 3] {
        [-p[0], -p[1], p[2]]
    }

    fn close(a: [f64; 3], b: [f64; 3]) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    /// Every slice's (i, j) pixel lands where DICOM puts it: IPP + i·Δc·row + j·Δr·col.
    fn check_geometry(s: &DicomSeries, imgs: &[Img]) {
        for im in imgs {
            let o = im.iop;
            let k = s
                .info
                .sop_instance_uids
                .iter()
                .position(|u| *u == im.sop)
                .unwrap();
            for (i, j) in [(0usize, 0usize), (2, 0), (0, 1), (2, 1)] {
                let lps = [0, 1, 2].map(|a| {
                    im.pos[a]
                        + i as f64 * im.spacing[1] * o[a]
                        + j as f64 * im.spacing[0] * o[3 + a]
                });
                let w = s.ct.affine.voxel_to_world([i as f64, j as f64, k as f64]);
                assert!(close(w, ras(lps)), "{w:?} vs {:?}", ras(lps));
                let want = im.raw[j * im.cols as usize + i] as f64 * im.slope + im.intercept;
                assert_eq!(s.ct.get(i, j, k) as f64, want);
            }
        }
    }

    #[test]
    fn axial_series_sorted_rescaled_and_in_ras() {
        let imgs = vec![img(15.0, 300), img(10.0, 100), img(12.5, 200)];
        let s = read(&imgs).unwrap();
        assert_eq!(s.ct.dims, [3, 2, 3]);
        assert_eq!(s.ct.affine.axis_codes(), "LPS");
        let sp = s.ct.spacing_mm();
        assert!(close(sp, [0.6, 0.8, 2.5]), "{sp:?}");
        assert!(close(
            s.ct.affine.voxel_to_world([0.0; 3]),
            [100.0, 50.0, 10.0]
        ));
        assert_eq!(s.ct.get(0, 0, 0), 100 - 1024);
        assert_eq!(s.ct.get(2, 1, 2), 305 - 1024);
        check_geometry(&s, &imgs);
        assert_eq!(s.info.stored_dtype, "uint16");
        assert_eq!((s.info.slices, s.info.files), (3, 3));
    }

    #[test]
    fn sagittal_and_oblique_series_keep_dicom_geometry() {
        // Sagittal: rows toward posterior, columns toward inferior; slices along x.
        let sag: Vec<Img> = [0.0, 3.0, 6.0]
            .iter()
            .map(|&x| Img {
                pos: [x, -20.0, 40.0],
                iop: [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
                sop: format!("1.2.4.{x}"),
                ..img(0.0, 10)
            })
            .collect();
        let s = read(&sag).unwrap();
        check_geometry(&s, &sag);
        assert!(close(s.ct.spacing_mm(), [0.6, 0.8, 3.0]));
        // Oblique: rotated 30° about z.
        let (c, sn) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let obl: Vec<Img> = (0..4)
            .map(|k| Img {
                pos: [5.0, 7.0, 2.0 * k as f64],
                iop: [c, sn, 0.0, -sn, c, 0.0],
                sop: format!("1.2.5.{k}"),
                ..img(0.0, 10 * k as u16)
            })
            .rev()
            .collect();
        let s = read(&obl).unwrap();
        check_geometry(&s, &obl);
    }

    #[test]
    fn stored_bits_sign_and_clamping() {
        // 12 stored bits, signed: 0xFFFF → -1 and junk above bit 11 is ignored.
        let mut a = img(0.0, 0);
        a.signed = true;
        a.bits_stored = 12;
        a.intercept = 0.0;
        a.raw = vec![0x0FFF, 0xF001, 0x07FF, 0x0800, 0, 5];
        let s = read(&[a.clone()]).unwrap();
        assert_eq!(&s.ct.data[..], &[-1, 1, 2047, -2048, 0, 5]);
        assert_eq!(s.info.stored_dtype, "int16");
        // Single slice: spacing from SliceThickness.
        assert!((s.ct.spacing_mm()[2] - 2.5).abs() < 1e-9);
        // Unsigned 12 bits: high bits masked.
        a.signed = false;
        let s = read(&[a.clone()]).unwrap();
        assert_eq!(&s.ct.data[..2], &[4095, 1]);
        // HU beyond i16 clamp.
        a.bits_stored = 16;
        a.slope = 100.0;
        let s = read(&[a]).unwrap();
        assert_eq!(s.ct.data[0], i16::MAX);
    }

    #[test]
    fn largest_ct_series_is_chosen_and_another_can_be_picked() {
        let mut imgs = vec![img(0.0, 1), img(1.0, 1), img(2.0, 1)];
        for z in 0..2 {
            imgs.push(Img {
                series: "1.2.3.2",
                sop: format!("1.2.3.2.{z}"),
                ..img(z as f64, 7)
            });
        }
        for z in 0..5 {
            imgs.push(Img {
                series: "1.2.3.3",
                modality: "MR",
                sop: format!("1.2.3.3.{z}"),
                ..img(z as f64, 9)
            });
        }
        // A localizer in the CT series, at another orientation: left out.
        imgs.push(Img {
            image_type: "ORIGINAL\\PRIMARY\\LOCALIZER",
            iop: [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
            sop: "1.2.3.1.99".into(),
            ..img(50.0, 1)
        });
        let files: Vec<(String, Vec<u8>)> = imgs
            .iter()
            .enumerate()
            .map(|(n, i)| (format!("f{n}"), encode(i)))
            .collect();
        let s = read_dicom_series_bytes(&files, None).unwrap();
        assert_eq!(s.info.series_uid, "1.2.3.1");
        assert_eq!((s.ct.dims[2], s.info.skipped_localizers), (3, 1));
        assert_eq!(s.info.other_series.len(), 2);
        let s = read_dicom_series_bytes(&files, Some("1.2.3.2")).unwrap();
        assert_eq!((s.ct.dims[2], s.ct.data[0]), (2, 7 - 1024));
        let list = list_dicom_series_bytes(&files).unwrap();
        let got: Vec<(&str, usize)> = list
            .iter()
            .map(|b| (b.series_uid.as_str(), b.images))
            .collect();
        assert_eq!(got, [("1.2.3.3", 5), ("1.2.3.1", 4), ("1.2.3.2", 2)]);
    }

    #[test]
    fn rle_compressed_slices_decode() {
        let plain: Vec<Img> = (0..3)
            .map(|k| img(k as f64 * 2.0, 1000 + 7 * k as u16))
            .collect();
        let mut rle = plain.clone();
        for i in &mut rle {
            i.ts = RLE;
            i.raw = i.raw.iter().map(|v| v * 3 + 0x0100).collect();
        }
        let s = read(&rle).unwrap();
        check_geometry(&s, &rle);
        assert!(s.info.transfer_syntax.contains("RLE Lossless"));
    }

    #[test]
    fn enhanced_multi_frame_file() {
        let base = img(0.0, 0);
        let zs = [20.0, 10.0, 15.0];
        let frame_items: Vec<InMemDicomObject> = zs
            .iter()
            .map(|&z| {
                InMemDicomObject::from_element_iter([DataElement::new(
                    tags::PLANE_POSITION_SEQUENCE,
                    VR::SQ,
                    Value::from(dicom_core::value::DataSetSequence::from(vec![
                        InMemDicomObject::from_element_iter([el(
                            tags::IMAGE_POSITION_PATIENT,
                            VR::DS,
                            ds(&[1.0, 2.0, z]),
                        )]),
                    ])),
                )])
            })
            .collect();
        let seq1 = |tag: Tag, elems: Vec<DataElement<InMemDicomObject>>| {
            DataElement::new(
                tag,
                VR::SQ,
                Value::from(dicom_core::value::DataSetSequence::from(vec![
                    InMemDicomObject::from_element_iter(elems),
                ])),
            )
        };
        let shared = InMemDicomObject::from_element_iter([
            seq1(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![el(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&base.iop))],
            ),
            seq1(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![el(tags::PIXEL_SPACING, VR::DS, ds(&[0.5, 0.5]))],
            ),
            seq1(
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                vec![
                    el(tags::RESCALE_INTERCEPT, VR::DS, ds(&[-1000.0])),
                    el(tags::RESCALE_SLOPE, VR::DS, ds(&[2.0])),
                ],
            ),
        ]);
        let raws: Vec<Vec<u16>> = (0..3u16).map(|f| vec![f * 10; 6]).collect();
        let mut e = common_elements(&Img {
            sop: "1.2.9".into(),
            ..base
        });
        e.extend([
            el(tags::NUMBER_OF_FRAMES, VR::IS, "3".into()),
            DataElement::new(
                tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
                VR::SQ,
                Value::from(dicom_core::value::DataSetSequence::from(vec![shared])),
            ),
            DataElement::new(
                tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
                VR::SQ,
                Value::from(dicom_core::value::DataSetSequence::from(frame_items)),
            ),
            pixel_element(
                &raws.iter().map(|r| &r[..]).collect::<Vec<_>>(),
                EXPLICIT_LE,
            ),
        ]);
        let bytes = write(InMemDicomObject::from_element_iter(e), EXPLICIT_LE);
        let s = read_dicom_series_bytes(&[("enhanced.dcm", bytes)], None).unwrap();
        assert_eq!(s.ct.dims, [3, 2, 3]);
        assert!(close(s.ct.spacing_mm(), [0.5, 0.5, 5.0]));
        assert!(close(
            s.ct.affine.voxel_to_world([0.0; 3]),
            [-1.0, -2.0, 10.0]
        ));
        // Sorted by z: frame 2 (z=10), frame 3 (z=15), frame 1 (z=20).
        let firsts: Vec<i16> = (0..3).map(|k| s.ct.get(0, 0, k)).collect();
        assert_eq!(firsts, [-1000 + 20, -1000 + 40, -1000]);
        assert_eq!(s.info.files, 1);
    }

    #[test]
    fn geometry_errors_name_the_problem() {
        let e = |imgs: &[Img]| read(imgs).unwrap_err().to_string();
        // Missing slice.
        let m = e(&[img(0.0, 0), img(2.0, 0), img(6.0, 0), img(8.0, 0)]);
        assert!(
            m.contains("uneven slice spacing") && m.contains("f1") && m.contains("f2"),
            "{m}"
        );
        // Tilt.
        let tilted: Vec<Img> = (0..3)
            .map(|k| Img {
                pos: [0.0, k as f64, 2.0 * k as f64],
                sop: format!("1.{k}"),
                ..img(0.0, 0)
            })
            .collect();
        let m = e(&tilted);
        assert!(m.contains("gantry tilt") && m.contains("26.57°"), "{m}");
        // Mixed orientation.
        let mut b = img(2.0, 0);
        b.iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
        let m = e(&[img(0.0, 0), b]);
        assert!(m.contains("mixed orientations"), "{m}");
        // Bad orientation vectors.
        let mut b = img(0.0, 0);
        b.iop = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let m = e(&[b]);
        assert!(m.contains("not two orthogonal unit vectors"), "{m}");
        // Pixel spacing differs.
        let mut b = img(2.0, 0);
        b.spacing = [0.8, 0.7];
        let m = e(&[img(0.0, 0), b]);
        assert!(m.contains("PixelSpacing"), "{m}");
    }

    #[test]
    fn missing_attributes_and_truncation_are_errors_not_panics() {
        let good = encode(&img(0.0, 0));
        // Every prefix of a file: an error or (for the whole file) a volume, never a panic.
        for cut in (0..good.len()).step_by(7) {
            let r = read_dicom_series_bytes(&[("cut", &good[..cut])], None);
            assert!(r.is_err(), "a file cut at {cut} bytes was accepted");
        }
        // No ImagePositionPatient.
        let mut e = common_elements(&img(0.0, 0));
        e.push(pixel_element(&[&[0; 6]], EXPLICIT_LE));
        let bytes = write(InMemDicomObject::from_element_iter(e), EXPLICIT_LE);
        let m = read_dicom_series_bytes(&[("nopos", bytes)], None)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("nopos") && m.contains("ImagePositionPatient (0020,0032)"),
            "{m}"
        );
        assert!(!is_dicom(b"hello") && is_dicom(&good));
    }
}
