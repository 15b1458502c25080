//! Writing NIfTI-1 files: label maps and images with the affine in both sform and
//! qform (the qform as the closest rotation's quaternion), gzipped or not; atomic
//! file writes.

use std::io::Write;

use super::{DATA_OFFSET, HEADER_SIZE};
#[cfg(not(target_arch = "wasm32"))]
use crate::volume::CtVolume;
use crate::volume::{Affine, LabelVolume, Volume};
use crate::{Error, Result};

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

/// The 348-byte header of a volume of `dims` voxels of type `code` (`bits` each).
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

/// A 3×3 matrix as a 4×4 affine without translation.
fn lift(r: [[f64; 3]; 3]) -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    for row in 0..3 {
        m[row][..3].copy_from_slice(&r[row]);
    }
    m[3][3] = 1.0;
    m
}
