//! The NIfTI-1 header: recognising it (size, magic, not NIfTI-2 or a .hdr/.img pair),
//! the spatial dimensions, the voxel → world affine (sform, qform or pixdim) and the
//! intensity scaling it states.

use nifti::NiftiHeader;

use super::HEADER_SIZE;
use crate::volume::Affine;
use crate::{Error, Result};

/// Whether the first `got` bytes of a file (`head`) start a single-file NIfTI-1 header.
pub(super) fn check_start(head: &[u8; HEADER_SIZE], got: usize) -> Result<()> {
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
        b"n+1\0" => Ok(()),
        b"ni1\0" => Err(Error::Unsupported(
            "this is the header of a separate .hdr/.img pair; convert it to a single .nii or .nii.gz file".into(),
        )),
        _ => Err(Error::NotNifti(
            "wrong magic string (expected \"n+1\")".into(),
        )),
    }
}

/// The three spatial dimensions; a 4th..7th dimension is accepted only if it is 1.
pub(super) fn spatial_dims(dim: &[u16; 8]) -> Result<[usize; 3]> {
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
pub(super) fn header_affine(h: &NiftiHeader) -> Result<(Affine, &'static str)> {
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

/// The qform affine: the quaternion's rotation, pixdim spacing (k negated when qfac is
/// -1) and the offsets.
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

/// The intensity scaling (`value = raw · slope + inter`): identity when the slope is 0
/// or not finite; a non-finite intercept is 0.
pub(super) fn scaling(h: &NiftiHeader) -> (f64, f64) {
    let (mut slope, mut inter) = (h.scl_slope as f64, h.scl_inter as f64);
    if slope == 0.0 || !slope.is_finite() {
        slope = 1.0;
        inter = 0.0;
    }
    if !inter.is_finite() {
        inter = 0.0;
    }
    (slope, inter)
}

/// The header's description field, trimmed.
pub(super) fn description(h: &NiftiHeader) -> String {
    String::from_utf8_lossy(&h.descrip)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}
