//! Every kind of bad input gives a clear error message (never a panic), on real files.

mod common;

use common::*;
use medlsam::volume::nifti_io::write_nifti_bytes;
use medlsam::volume::{Affine, Volume, read_nifti_bytes, read_nifti_path};

fn real_label_bytes() -> Vec<u8> {
    std::fs::read(openkbp("okbp_001", "label")).unwrap()
}

fn uncompressed(v: &Volume<f32>) -> Vec<u8> {
    write_nifti_bytes(v, false).unwrap()
}

fn err_of(bytes: &[u8]) -> String {
    match read_nifti_bytes(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn set_i16(bytes: &mut [u8], off: usize, v: i16) {
    bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn truncated_gzip_is_reported() {
    let b = real_label_bytes();
    let e = err_of(&b[..b.len() / 2]);
    assert!(
        e.contains("gzip stream is corrupt or truncated") || e.contains("truncated"),
        "{e}"
    );
    let e = err_of(&b[..40]);
    assert!(e.contains("gzip") || e.contains("too short"), "{e}");
}

#[test]
fn corrupt_gzip_bytes_are_reported() {
    let mut b = real_label_bytes();
    for x in &mut b[200..400] {
        *x ^= 0x5a;
    }
    let e = err_of(&b);
    assert!(e.contains("corrupt") || e.contains("truncated"), "{e}");
}

#[test]
fn wrong_magic_and_non_nifti_files() {
    let v = Volume::filled([4, 4, 4], 1.0f32, Affine::identity()).unwrap();
    let mut b = uncompressed(&v);
    b[344..348].copy_from_slice(b"xyz\0");
    assert!(err_of(&b).contains("wrong magic"), "{}", err_of(&b));
    b[344..348].copy_from_slice(b"ni1\0");
    assert!(err_of(&b).contains(".hdr/.img pair"), "{}", err_of(&b));
    let png = b"\x89PNG\r\n\x1a\n0000000000000000000000000000000000000000";
    assert!(err_of(png).contains("not a NIfTI"), "{}", err_of(png));
    assert!(err_of(b"").contains("too short"), "{}", err_of(b""));
    let mut n2 = vec![0u8; 600];
    n2[..4].copy_from_slice(&540i32.to_le_bytes());
    assert!(err_of(&n2).contains("NIfTI-2"), "{}", err_of(&n2));
}

#[test]
fn header_claiming_more_data_than_present() {
    let v = Volume::filled([8, 8, 8], 1.0f32, Affine::identity()).unwrap();
    let b = uncompressed(&v);
    let e = err_of(&b[..b.len() - 100]);
    assert!(e.contains("truncated") && e.contains("512 voxels"), "{e}");
    // A header claiming a large grid on a tiny file: refused quickly, without allocating the claim.
    let mut big = b.clone();
    set_i16(&mut big, 42, 1000);
    set_i16(&mut big, 44, 1000);
    set_i16(&mut big, 46, 1000);
    let e = err_of(&big);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn four_d_volumes() {
    let v = Volume::filled([4, 4, 4], 2.0f32, Affine::identity()).unwrap();
    let mut b = uncompressed(&v);
    set_i16(&mut b, 40, 4);
    set_i16(&mut b, 48, 1); // t = 1: accepted as 3-D
    assert_eq!(read_nifti_bytes(&b).unwrap().dims, [4, 4, 4]);
    set_i16(&mut b, 48, 3); // t = 3: refused
    let e = err_of(&b);
    assert!(
        e.contains("4-D volume with 3 entries") && e.contains("single 3-D volume"),
        "{e}"
    );
}

#[test]
fn zero_negative_and_absurd_dimensions() {
    let v = Volume::filled([4, 4, 4], 2.0f32, Affine::identity()).unwrap();
    let mut b = uncompressed(&v);
    set_i16(&mut b, 44, 0);
    let e = err_of(&b);
    assert!(e.contains("dimension 2 is 0"), "{e}");
    set_i16(&mut b, 44, -5);
    let e = err_of(&b);
    assert!(e.contains("dimension 2 is -5"), "{e}");
    for a in 0..3 {
        set_i16(&mut b, 42 + 2 * a, 32767);
    }
    let e = err_of(&b);
    assert!(
        e.contains("more than the") && e.contains("this tool accepts"),
        "{e}"
    );
    let mut bad_nd = uncompressed(&v);
    set_i16(&mut bad_nd, 40, 0);
    let e = err_of(&bad_nd);
    assert!(e.contains("number of dimensions"), "{e}");
}

#[test]
fn nan_and_infinite_values() {
    let mut v = Volume::filled([4, 4, 4], 10.0f32, Affine::identity()).unwrap();
    v.data[3] = f32::NAN;
    v.data[9] = f32::INFINITY;
    let f = read_nifti_bytes(&uncompressed(&v)).unwrap();
    assert_eq!(f.summary().non_finite_voxels, 2);
    let e = f.into_ct().unwrap_err().to_string();
    assert!(e.contains("2 NaN or infinite voxels"), "{e}");
}

#[test]
fn unsupported_dtype_and_singular_affine() {
    let v = Volume::filled([4, 4, 4], 1.0f32, Affine::identity()).unwrap();
    let mut b = uncompressed(&v);
    set_i16(&mut b, 70, 32); // complex64
    assert!(err_of(&b).contains("complex"), "{}", err_of(&b));
    set_i16(&mut b, 70, 77);
    assert!(
        err_of(&b).contains("unknown voxel data type code 77"),
        "{}",
        err_of(&b)
    );
    let flat = Volume::filled(
        [4, 4, 4],
        1.0f32,
        Affine::from_diagonal([1.0, 0.0, 1.0], [0.0; 3]),
    )
    .unwrap();
    let e = err_of(&uncompressed(&flat));
    assert!(e.contains("singular"), "{e}");
}

#[test]
fn image_given_as_label_and_mismatched_pairs() {
    let ct = read_nifti_path(openkbp("okbp_001", "ct")).unwrap();
    let e = ct.into_labels().unwrap_err().to_string();
    assert!(e.contains("not a label map") && e.contains("-1000"), "{e}");
    let ct = read_nifti_path(openkbp("okbp_001", "ct"))
        .unwrap()
        .into_ct()
        .unwrap();
    let other = read_nifti_path(openkbp("okbp_002", "label"))
        .unwrap()
        .into_labels()
        .unwrap();
    let same_shape = ct.check_same_grid(&other, "support image and label");
    let e = same_shape.unwrap_err().to_string();
    assert!(
        e.contains("support image and label") && e.contains("affines"),
        "{e}"
    );
    let small = Volume::filled([64, 64, 64], 0u16, ct.affine).unwrap();
    let e = ct
        .check_same_grid(&small, "support image and label")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shapes differ (128×128×128 vs 64×64×64)"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let e = read_nifti_path("/nonexistent/x.nii.gz")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot open /nonexistent/x.nii.gz"), "{e}");
}
