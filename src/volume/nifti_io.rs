//! NIfTI-1 reading (`.nii`, `.nii.gz`; from a path or an in-memory byte
//! buffer, as the browser gets files) and writing (label maps and images, with
//! the input's affine in both qform and sform).
//!
//! The header is parsed by the `nifti` crate; everything that decides whether
//! a file is usable (dimensions, voxel count cap, truncation, data type) is
//! checked here first, so bad input becomes a clear [`Error`] and never a
//! panic or a huge allocation. Coordinates: the affine maps the file's own
//! voxel indices to world RAS mm.

use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use nifti::{Endianness, NiftiHeader};

use super::{Affine, CtVolume, LabelVolume, MAX_VOXELS, Volume, checked_voxel_count};
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

/// Read a NIfTI-1 volume from bytes (gzipped or not), as dropped into a web page.
pub fn read_nifti_bytes(bytes: &[u8]) -> Result<NiftiFile> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_nifti_stream(MultiGzDecoder::new(bytes), true)
    } else {
        read_nifti_stream(bytes, false)
    }
}

/// Read a NIfTI-1 volume from a file path (`.nii` or `.nii.gz`, detected from the content).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_nifti_path(path: impl AsRef<std::path::Path>) -> Result<NiftiFile> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot open {}: {e}", path.display()),
        ))
    })?;
    let mut reader = std::io::BufReader::new(file);
    let gz = {
        use std::io::BufRead;
        reader.fill_buf()?.starts_with(&[0x1f, 0x8b])
    };
    let result = if gz {
        read_nifti_stream(MultiGzDecoder::new(reader), true)
    } else {
        read_nifti_stream(reader, false)
    };
    result.map_err(|e| prefix_path(e, path))
}

#[cfg(not(target_arch = "wasm32"))]
fn prefix_path(e: Error, path: &std::path::Path) -> Error {
    let p = path.display();
    match e {
        Error::NotNifti(m) => Error::NotNifti(format!("{p}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("{p}: {m}")),
        Error::Corrupt(m) => Error::Corrupt(format!("{p}: {m}")),
        Error::InvalidVolume(m) => Error::InvalidVolume(format!("{p}: {m}")),
        other => other,
    }
}

fn stream_error(e: std::io::Error, gz: bool) -> Error {
    if gz {
        Error::Corrupt(format!("the gzip stream is corrupt or truncated ({e})"))
    } else {
        Error::Io(e)
    }
}

/// Read as many bytes as possible into `buf`; returns how many were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8], gz: bool) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(e, gz)),
        }
    }
    Ok(n)
}

fn read_nifti_stream<R: Read>(mut r: R, gz: bool) -> Result<NiftiFile> {
    let mut head = [0u8; HEADER_SIZE];
    let got = read_full(&mut r, &mut head, gz)?;
    if got >= 4 {
        let le = i32::from_le_bytes(head[0..4].try_into().unwrap());
        let be = i32::from_be_bytes(head[0..4].try_into().unwrap());
        if le == 540 || be == 540 {
            return Err(Error::Unsupported(
                "NIfTI-2 files are not supported; save the volume as NIfTI-1 (e.g. with nibabel or 3D Slicer)".into(),
            ));
        }
        if le != 348 && be != 348 {
            return Err(Error::NotNifti(
                "the first bytes are not a NIfTI-1 header (header size is not 348)".into(),
            ));
        }
    }
    if got < HEADER_SIZE {
        return Err(Error::NotNifti(format!(
            "only {got} bytes: too short for a NIfTI-1 header (348 bytes)"
        )));
    }
    match &head[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(Error::Unsupported(
                "this is the header of a separate .hdr/.img pair; convert it to a single .nii or .nii.gz file".into(),
            ));
        }
        _ => {
            return Err(Error::NotNifti(
                "wrong magic string (expected \"n+1\")".into(),
            ));
        }
    }
    let h = NiftiHeader::from_reader(&head[..])
        .map_err(|e| Error::NotNifti(format!("the header cannot be parsed ({e})")))?;
    let dims = spatial_dims(&h.dim)?;
    let n = checked_voxel_count(dims)?;
    let dtype = DataType::from_code(h.datatype)?;
    let nbytes_u64 = n as u64 * dtype.size() as u64;
    if nbytes_u64 > MAX_VOXELS as u64 * 4 || usize::try_from(nbytes_u64).is_err() {
        return Err(Error::InvalidVolume(format!(
            "{n} voxels of {} are more data than this tool accepts",
            dtype.name()
        )));
    }
    let nbytes = nbytes_u64 as usize;

    // Skip extensions up to vox_offset (at least 352).
    let vox_offset = h.vox_offset;
    if !(0.0..=1.0e9).contains(&vox_offset) {
        return Err(Error::Corrupt(format!("invalid data offset {vox_offset}")));
    }
    let offset = (vox_offset as usize).max(DATA_OFFSET);
    let skip = (offset - HEADER_SIZE) as u64;
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .map_err(|e| stream_error(e, gz))?;
    if skipped < skip {
        return Err(Error::Corrupt(format!(
            "truncated: the header says voxel data start at byte {offset} but the file ends at byte {}",
            HEADER_SIZE as u64 + skipped
        )));
    }

    // Grow the buffer as data arrive, so a lying header with a short file allocates little.
    let mut raw = Vec::with_capacity(nbytes.min(64 << 20));
    (&mut r)
        .take(nbytes as u64)
        .read_to_end(&mut raw)
        .map_err(|e| stream_error(e, gz))?;
    if raw.len() < nbytes {
        return Err(Error::Corrupt(format!(
            "truncated: the header promises {} voxels ({} bytes of {}) but the file holds only {} bytes of voxel data",
            n,
            nbytes,
            dtype.name(),
            raw.len()
        )));
    }
    if h.endianness == Endianness::Big && dtype.size() > 1 {
        for chunk in raw.chunks_exact_mut(dtype.size()) {
            chunk.reverse();
        }
    }

    let (affine, affine_from) = header_affine(&h)?;
    let (mut slope, mut inter) = (h.scl_slope as f64, h.scl_inter as f64);
    if slope == 0.0 || !slope.is_finite() {
        slope = 1.0;
        inter = 0.0;
    }
    if !inter.is_finite() {
        inter = 0.0;
    }
    let description = String::from_utf8_lossy(&h.descrip)
        .trim_end_matches('\0')
        .trim()
        .to_string();
    Ok(NiftiFile {
        dims,
        affine,
        info: SourceInfo {
            dtype: dtype.name().into(),
            affine_from: affine_from.into(),
            sform_code: h.sform_code,
            qform_code: h.qform_code,
            scl_slope: slope,
            scl_inter: inter,
            big_endian: h.endianness == Endianness::Big,
            description,
        },
        dtype,
        raw,
    })
}

/// The three spatial dimensions; a 4th..7th dimension is accepted only if it is 1.
fn spatial_dims(dim: &[u16; 8]) -> Result<[usize; 3]> {
    let nd = dim[0] as usize;
    if nd == 0 || nd > 7 {
        return Err(Error::Corrupt(format!(
            "invalid number of dimensions {}",
            dim[0] as i16
        )));
    }
    let mut dims = [1usize; 3];
    for a in 0..3.min(nd) {
        let d = dim[a + 1] as i16;
        if d <= 0 {
            return Err(Error::InvalidVolume(format!(
                "dimension {} is {d}: a volume needs at least one voxel per axis",
                a + 1
            )));
        }
        dims[a] = d as usize;
    }
    for (a, &d) in dim.iter().enumerate().take(nd + 1).skip(4) {
        if d as i16 != 1 {
            return Err(Error::Unsupported(format!(
                "{nd}-D volume with {} entries along dimension {a}: give a single 3-D volume (split it first, e.g. one time point)",
                d as i16
            )));
        }
    }
    Ok(dims)
}

/// The voxel→world affine: sform if its code is set, else qform, else the pixdim diagonal.
fn header_affine(h: &NiftiHeader) -> Result<(Affine, &'static str)> {
    let (affine, from) = if h.sform_code > 0 {
        let mut m = [[0.0; 4]; 4];
        for c in 0..4 {
            m[0][c] = h.srow_x[c] as f64;
            m[1][c] = h.srow_y[c] as f64;
            m[2][c] = h.srow_z[c] as f64;
        }
        m[3][3] = 1.0;
        (Affine { m }, "sform")
    } else if h.qform_code > 0 {
        (quaternion_affine(h), "qform")
    } else {
        let sp = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
        (Affine::from_diagonal(sp.map(f64::abs), [0.0; 3]), "pixdim")
    };
    if !affine.is_finite() {
        return Err(Error::Corrupt(format!(
            "the {from} affine contains NaN or infinite values"
        )));
    }
    affine.inverse().map_err(|_| {
        Error::InvalidVolume(format!(
            "the {from} affine is singular (a voxel spacing of zero?)"
        ))
    })?;
    Ok((affine, from))
}

fn quaternion_affine(h: &NiftiHeader) -> Affine {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let a2 = 1.0 - (b * b + c * c + d * d);
    let (a, b, c, d) = if a2 < 1e-7 {
        let s = (b * b + c * c + d * d).sqrt();
        (0.0, b / s, c / s, d / s)
    } else {
        (a2.sqrt(), b, c, d)
    };
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let sp = [
        h.pixdim[1].abs() as f64,
        h.pixdim[2].abs() as f64,
        h.pixdim[3].abs() as f64 * qfac,
    ];
    let mut m = [[0.0; 4]; 4];
    for row in 0..3 {
        for col in 0..3 {
            m[row][col] = r[row][col] * sp[col];
        }
    }
    m[0][3] = h.quatern_x as f64;
    m[1][3] = h.quatern_y as f64;
    m[2][3] = h.quatern_z as f64;
    m[3][3] = 1.0;
    Affine { m }
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

/// Voxel types the writer can store.
pub trait NiftiScalar: Copy {
    const CODE: i16;
    const BITS: i16;
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! scalar {
    ($t:ty, $code:expr) => {
        impl NiftiScalar for $t {
            const CODE: i16 = $code;
            const BITS: i16 = (std::mem::size_of::<$t>() * 8) as i16;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
scalar!(u8, 2);
scalar!(i16, 4);
scalar!(u16, 512);
scalar!(f32, 16);

/// Encode a volume as NIfTI-1 bytes (gzipped if `gzip`), the affine stored in
/// both sform and qform (code 1, scanner), spatial units mm.
pub fn write_nifti_bytes<T: NiftiScalar>(vol: &Volume<T>, gzip: bool) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(DATA_OFFSET + vol.len() * (T::BITS as usize / 8));
    out.extend_from_slice(&header_bytes(vol.dims, &vol.affine, T::CODE, T::BITS)?);
    out.extend_from_slice(&[0u8; 4]); // no extensions
    for &v in &vol.data {
        v.put(&mut out);
    }
    if !gzip {
        return Ok(out);
    }
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(out.len() / 8),
        flate2::Compression::new(6),
    );
    enc.write_all(&out)?;
    Ok(enc.finish()?)
}

/// Encode a label map as `.nii.gz` bytes: `uint8` when every value fits, else `uint16`.
pub fn write_labels_nifti_bytes(labels: &LabelVolume) -> Result<Vec<u8>> {
    if labels.data.iter().all(|&v| v <= 255) {
        write_nifti_bytes(&labels.map(|v| v as u8), true)
    } else {
        write_nifti_bytes(labels, true)
    }
}

/// Write a label map to a `.nii.gz` path (see [`write_labels_nifti_bytes`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_labels_nifti_path(
    labels: &LabelVolume,
    path: impl AsRef<std::path::Path>,
) -> Result<()> {
    write_file(path.as_ref(), &write_labels_nifti_bytes(labels)?)
}

/// Write a CT (int16) to a `.nii.gz` path.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_ct_nifti_path(ct: &CtVolume, path: impl AsRef<std::path::Path>) -> Result<()> {
    write_file(path.as_ref(), &write_nifti_bytes(ct, true)?)
}

/// Write bytes atomically (temporary file, then rename) so that no half-written output remains.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", path.display()),
        ))
    })
}

fn header_bytes(
    dims: [usize; 3],
    affine: &Affine,
    code: i16,
    bits: i16,
) -> Result<[u8; HEADER_SIZE]> {
    let mut h = [0u8; HEADER_SIZE];
    let mut put = |off: usize, b: &[u8]| h[off..off + b.len()].copy_from_slice(b);
    put(0, &348i32.to_le_bytes());
    put(38, b"r");
    let mut dim = [1i16; 8];
    dim[0] = 3;
    for a in 0..3 {
        dim[a + 1] = i16::try_from(dims[a]).map_err(|_| {
            Error::InvalidVolume(format!("dimension {} cannot be stored in NIfTI-1", dims[a]))
        })?;
    }
    for (t, d) in dim.iter().enumerate() {
        put(40 + 2 * t, &d.to_le_bytes());
    }
    put(70, &code.to_le_bytes());
    put(72, &bits.to_le_bytes());
    let q = Quatern::from_affine(affine);
    let mut pixdim = [1.0f32; 8];
    pixdim[0] = q.qfac as f32;
    for a in 0..3 {
        pixdim[a + 1] = q.spacing[a] as f32;
    }
    for (t, p) in pixdim.iter().enumerate() {
        put(76 + 4 * t, &p.to_le_bytes());
    }
    put(108, &(DATA_OFFSET as f32).to_le_bytes());
    put(112, &1.0f32.to_le_bytes());
    put(123, &[2u8]); // mm
    put(148, b"medlsam");
    put(252, &1i16.to_le_bytes()); // qform_code: scanner
    put(254, &1i16.to_le_bytes()); // sform_code: scanner
    for (t, v) in [
        q.b,
        q.c,
        q.d,
        affine.m[0][3],
        affine.m[1][3],
        affine.m[2][3],
    ]
    .iter()
    .enumerate()
    {
        put(256 + 4 * t, &(*v as f32).to_le_bytes());
    }
    for r in 0..3 {
        for c in 0..4 {
            put(280 + 16 * r + 4 * c, &(affine.m[r][c] as f32).to_le_bytes());
        }
    }
    put(344, b"n+1\0");
    Ok(h)
}

/// The qform representation of an affine (NIfTI-1 quaternion, `qfac`, spacing);
/// a sheared affine is represented by its closest rotation (the sform stays exact).
struct Quatern {
    b: f64,
    c: f64,
    d: f64,
    qfac: f64,
    spacing: [f64; 3],
}

impl Quatern {
    fn from_affine(a: &Affine) -> Self {
        let spacing = a.spacing_mm();
        let mut r = [[0.0; 3]; 3];
        for row in 0..3 {
            for col in 0..3 {
                r[row][col] = if spacing[col] > 0.0 {
                    a.m[row][col] / spacing[col]
                } else {
                    (row == col) as u8 as f64
                };
            }
        }
        // Closest orthogonal matrix by polar iteration Q ← (Q + Q⁻ᵀ)/2.
        for _ in 0..30 {
            let inv = Affine { m: lift(r) }
                .inverse()
                .map(|i| i.linear())
                .unwrap_or(r);
            for row in 0..3 {
                for col in 0..3 {
                    r[row][col] = 0.5 * (r[row][col] + inv[col][row]);
                }
            }
        }
        let mut qfac = 1.0;
        if (Affine { m: lift(r) }).determinant() < 0.0 {
            qfac = -1.0;
            for row in r.iter_mut() {
                row[2] = -row[2];
            }
        }
        let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
        let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
        let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
        let trace = r11 + r22 + r33 + 1.0;
        let (mut qa, mut qb, mut qc, mut qd);
        if trace > 0.5 {
            qa = 0.5 * trace.sqrt();
            qb = 0.25 * (r32 - r23) / qa;
            qc = 0.25 * (r13 - r31) / qa;
            qd = 0.25 * (r21 - r12) / qa;
        } else {
            let xd = 1.0 + r11 - (r22 + r33);
            let yd = 1.0 + r22 - (r11 + r33);
            let zd = 1.0 + r33 - (r11 + r22);
            if xd > 1.0 {
                qb = 0.5 * xd.sqrt();
                qc = 0.25 * (r12 + r21) / qb;
                qd = 0.25 * (r13 + r31) / qb;
                qa = 0.25 * (r32 - r23) / qb;
            } else if yd > 1.0 {
                qc = 0.5 * yd.sqrt();
                qb = 0.25 * (r12 + r21) / qc;
                qd = 0.25 * (r23 + r32) / qc;
                qa = 0.25 * (r13 - r31) / qc;
            } else {
                qd = 0.5 * zd.sqrt();
                qb = 0.25 * (r13 + r31) / qd;
                qc = 0.25 * (r23 + r32) / qd;
                qa = 0.25 * (r21 - r12) / qd;
            }
            if qa < 0.0 {
                qb = -qb;
                qc = -qc;
                qd = -qd;
                qa = -qa;
            }
        }
        let _ = qa;
        Self {
            b: qb,
            c: qc,
            d: qd,
            qfac,
            spacing,
        }
    }
}

fn lift(r: [[f64; 3]; 3]) -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    for row in 0..3 {
        m[row][..3].copy_from_slice(&r[row]);
    }
    m[3][3] = 1.0;
    m
}

#[cfg(test)]
mod tests {
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
