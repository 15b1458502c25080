//! Reading a NIfTI-1 file from bytes or a path: the header checked, extensions
//! skipped, the voxel bytes read (growing as they arrive) and put in native order.

use std::io::Read;

use flate2::read::MultiGzDecoder;
use nifti::{Endianness, NiftiHeader};

use super::header::{check_start, description, header_affine, scaling, spatial_dims};
use super::{DATA_OFFSET, DataType, HEADER_SIZE, NiftiFile, SourceInfo};
use crate::volume::{MAX_VOXELS, checked_voxel_count};
use crate::{Error, Result};

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
    let h = read_header(&mut r, gz)?;
    let dims = spatial_dims(&h.dim)?;
    let n = checked_voxel_count(dims)?;
    let dtype = DataType::from_code(h.datatype)?;
    let nbytes = data_bytes(n, dtype)?;
    skip_to_data(&mut r, h.vox_offset, gz)?;
    let raw = read_voxels(&mut r, n, nbytes, dtype, h.endianness, gz)?;
    let (affine, affine_from) = header_affine(&h)?;
    let (slope, inter) = scaling(&h);
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
            description: description(&h),
        },
        dtype,
        raw,
    })
}

/// The 348-byte header, recognised and parsed.
fn read_header<R: Read>(r: &mut R, gz: bool) -> Result<NiftiHeader> {
    let mut head = [0u8; HEADER_SIZE];
    let got = read_full(r, &mut head, gz)?;
    check_start(&head, got)?;
    NiftiHeader::from_reader(&head[..])
        .map_err(|e| Error::NotNifti(format!("the header cannot be parsed ({e})")))
}

/// Bytes of `n` voxels of `dtype`, refused above what this tool accepts.
fn data_bytes(n: usize, dtype: DataType) -> Result<usize> {
    let nbytes_u64 = n as u64 * dtype.size() as u64;
    if nbytes_u64 > MAX_VOXELS as u64 * 4 || usize::try_from(nbytes_u64).is_err() {
        return Err(Error::InvalidVolume(format!(
            "{n} voxels of {} are more data than this tool accepts",
            dtype.name()
        )));
    }
    Ok(nbytes_u64 as usize)
}

/// Skip extensions up to vox_offset (at least 352).
fn skip_to_data<R: Read>(r: &mut R, vox_offset: f32, gz: bool) -> Result<()> {
    if !(0.0..=1.0e9).contains(&vox_offset) {
        return Err(Error::Corrupt(format!("invalid data offset {vox_offset}")));
    }
    let offset = (vox_offset as usize).max(DATA_OFFSET);
    let skip = (offset - HEADER_SIZE) as u64;
    let skipped =
        std::io::copy(&mut r.take(skip), &mut std::io::sink()).map_err(|e| stream_error(e, gz))?;
    if skipped < skip {
        return Err(Error::Corrupt(format!(
            "truncated: the header says voxel data start at byte {offset} but the file ends at byte {}",
            HEADER_SIZE as u64 + skipped
        )));
    }
    Ok(())
}

/// The `nbytes` of voxel data (`n` voxels of `dtype`), in native (little-endian) order.
fn read_voxels<R: Read>(
    r: &mut R,
    n: usize,
    nbytes: usize,
    dtype: DataType,
    endianness: Endianness,
    gz: bool,
) -> Result<Vec<u8>> {
    // Grow the buffer as data arrive, so a lying header with a short file allocates little.
    let mut raw = Vec::with_capacity(nbytes.min(64 << 20));
    r.take(nbytes as u64)
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
    if endianness == Endianness::Big && dtype.size() > 1 {
        for chunk in raw.chunks_exact_mut(dtype.size()) {
            chunk.reverse();
        }
    }
    Ok(raw)
}
