//! Every kind of bad input gives a clear error message (never a panic), on real files.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use medlsam::volume::dicom::{list_dicom_series_bytes, read_dicom_path, read_dicom_series_bytes};
use medlsam::volume::dicom_derived::DerivedOptions;
use medlsam::volume::dicom_seg::{read_dicom_seg, write_dicom_seg};
use medlsam::volume::label_table::LabelTable;
use medlsam::volume::nifti_io::write_nifti_bytes;
use medlsam::volume::rtstruct::{read_rtstruct, rtstruct_roi_names, write_rtstruct};
use medlsam::volume::{Affine, Volume, read_nifti_bytes, read_nifti_path};

// The largest single allocation of the current thread (tests run in parallel threads):
// a reader must not allocate what a corrupt file claims.
struct Counting;

thread_local! {
    static MAX_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = MAX_ALLOC.try_with(|m| m.set(m.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(p, l, new_size) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `f`'s result and the largest allocation it made (on this thread).
fn max_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    MAX_ALLOC.with(|m| m.set(0));
    let r = f();
    (r, MAX_ALLOC.with(|m| m.get()))
}

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

// ---------------------------------------------------------------------------------
// DICOM (found by examples/fuzz_readers.rs): dicom-rs allocates and zeroes the length an
// element claims before reading its value, and steps over the whole length of a binary
// value it read only whole values of; the readers now walk the element headers first.

fn dicom_slices() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/ircadb_001")
}

/// Offset of the explicit-VR element header of `(group, element)` (the first one).
fn element_at(b: &[u8], group: u16, element: u16) -> usize {
    let mut tag = group.to_le_bytes().to_vec();
    tag.extend(element.to_le_bytes());
    (0..b.len() - 6)
        .find(|&i| b[i..i + 4] == tag[..] && b[i + 4..i + 6].iter().all(u8::is_ascii_uppercase))
        .unwrap_or_else(|| panic!("no element ({group:04X},{element:04X})"))
}

/// An element's header rewritten with VR `vr` and a 4-byte length `len` (the layout of
/// OB/OW/UN/SQ… and of unknown VRs, which dicom-rs reads as UN).
fn set_long_header(b: &mut [u8], at: usize, vr: &[u8; 2], len: u32) {
    b[at + 4..at + 6].copy_from_slice(vr);
    b[at + 6..at + 8].copy_from_slice(&[0, 0]);
    b[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
}

fn dicom_err(files: &[(&str, Vec<u8>)]) -> (String, usize) {
    let (r, max) = max_alloc(|| read_dicom_series_bytes(files, None));
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => (e.to_string(), max),
    }
}

const MIB: usize = 1 << 20;

#[test]
fn dicom_value_lengths_beyond_the_file_are_refused_without_allocating_them() {
    let slice = std::fs::read(dicom_slices().join("image_50")).unwrap();
    // PixelData claiming 4 GiB (was: a 4 GiB zeroed allocation, then "truncated").
    let mut b = slice.clone();
    let at = element_at(&b, 0x7FE0, 0x0010);
    b[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let (e, max) = dicom_err(&[("image_50", b)]);
    assert!(
        e.contains("image_50") && e.contains("(7FE0,0010) claims a value of 4294967280 bytes"),
        "{e}"
    );
    assert!(max < 64 * MIB, "{max} bytes allocated");
    // An unknown VR is read with a 4-byte length: Modality as "XX" claiming 4 GiB, in the
    // header the series listing reads, behind a meta group length given as IS.
    let mut b = slice.clone();
    let at = element_at(&b, 0x0008, 0x0060);
    set_long_header(&mut b, at, b"XX", 0xFFFF_FFF0);
    b[136..138].copy_from_slice(b"IS");
    let (r, max) = max_alloc(|| list_dicom_series_bytes(&[("image_50", &b)]));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("(0008,0060) claims a value of 4294967280 bytes"),
        "{e}"
    );
    assert!(max < 64 * MIB, "{max} bytes allocated");
}

#[test]
fn dicom_binary_values_of_a_wrong_length_are_refused() {
    let mut b = std::fs::read(dicom_slices().join("image_50")).unwrap();
    // Rows (US) with 3 bytes: dicom-rs read one value, then every later element 1 byte off.
    let at = element_at(&b, 0x0028, 0x0010);
    b[at + 6] = 3;
    b.insert(at + 10, 0);
    let (e, _) = dicom_err(&[("image_50", b)]);
    assert!(
        e.contains("(0028,0010) of VR US has a length of 3 bytes, not a multiple of 2"),
        "{e}"
    );
}

#[test]
fn rtstruct_and_seg_value_lengths_beyond_the_file_are_refused_without_allocating_them() {
    let s = read_dicom_path(dicom_slices(), None).unwrap();
    let mask = s.ct.map(|v| u16::from(v > -400));
    let names = LabelTable([(1, "body".to_string())].into_iter().collect());
    let opts = DerivedOptions::default();
    let rt = write_rtstruct(&mask, &s.info, &[1], &names, &opts)
        .unwrap()
        .0;
    let seg = write_dicom_seg(&mask, &s.info, &[1], &names, &opts)
        .unwrap()
        .0;
    // ContourData's text read as UN: its first characters become a length of hundreds
    // of MB (was: allocated and zeroed).
    let mut b = rt.clone();
    let at = element_at(&b, 0x3006, 0x0050);
    b[at + 4..at + 6].copy_from_slice(b"UN");
    let (r, max) = max_alloc(|| rtstruct_roi_names(&b, "x.rtstruct.dcm"));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("x.rtstruct.dcm") && e.contains("(3006,0050) claims a value of"),
        "{e}"
    );
    assert!(max < 16 * MIB, "{max} bytes allocated");
    let (r, max) = max_alloc(|| read_rtstruct(&b, "x.rtstruct.dcm", &s.ct, &s.info).map(|_| ()));
    assert!(r.unwrap_err().to_string().contains("claims a value of"));
    assert!(max < 16 * MIB, "{max} bytes allocated");
    // The SEG's PixelData claiming 4 GiB.
    let mut b = seg.clone();
    let at = element_at(&b, 0x7FE0, 0x0010);
    b[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let (r, max) = max_alloc(|| read_dicom_seg(&b, "x.seg.dcm", &s.ct, &s.info).map(|_| ()));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("(7FE0,0010) claims a value of 4294967280 bytes"),
        "{e}"
    );
    assert!(max < 16 * MIB, "{max} bytes allocated");
}

#[test]
fn dicom_rows_and_columns_larger_than_the_file_are_refused_before_allocating() {
    let mut b = std::fs::read(dicom_slices().join("image_50")).unwrap();
    // 16384 × 16384 pixels claimed by a 0.5 MB slice (was: a 512 MiB volume allocated
    // before the pixel data were found short).
    for tag in [0x0010, 0x0011] {
        let at = element_at(&b, 0x0028, tag);
        b[at + 8..at + 10].copy_from_slice(&16384u16.to_le_bytes());
    }
    let (e, max) = dicom_err(&[("image_50", b)]);
    assert!(
        e.contains("image_50: 1 frame(s) of 16384×16384 pixels of 16 bits need 536870912 bytes"),
        "{e}"
    );
    assert!(max < 64 * MIB, "{max} bytes allocated");
}
