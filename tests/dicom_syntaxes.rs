//! The DICOM reader on every transfer syntax it claims, from real slices: the 28
//! committed slices of 3D-IRCADb patient 1 (tests/data/dicom, Explicit VR Little
//! Endian) re-encoded by DCMTK (`dcmcrle`, `dcmcjpeg`, `dcmconv`, Debian package
//! `dcmtk`, installed by `./dev setup`) into RLE, JPEG lossless (process 14 and its
//! first-order prediction), JPEG baseline and extended (lossy), deflate, big endian
//! and implicit VR. Lossless syntaxes must give the original HU at every voxel; lossy
//! ones the same geometry and HU within the codec's error.

use std::path::PathBuf;
use std::process::Command;

use medlsam::volume::dicom::{DicomSeries, read_dicom_path};

fn dicom_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/ircadb_001")
}

/// Re-encodes every slice of the committed series with `tool args… in out` into a
/// fresh folder and reads it back as a series.
fn reencoded(tool: &str, args: &[&str], tag: &str) -> DicomSeries {
    let out = std::env::temp_dir().join(format!("medlsam-syntax-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dicom_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 28, "expected the 28 committed slices");
    for name in &names {
        let status = Command::new(tool)
            .args(args)
            .arg(dicom_dir().join(name))
            .arg(out.join(name))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {tool} ({e}): this test needs DCMTK (Debian package dcmtk; ./dev setup installs it)"
                )
            });
        assert!(status.success(), "{tool} {args:?} failed on {name:?}");
    }
    let s = read_dicom_path(&out, None)
        .unwrap_or_else(|e| panic!("{tag}: the re-encoded series does not read: {e}"));
    std::fs::remove_dir_all(&out).unwrap();
    s
}

fn original() -> DicomSeries {
    read_dicom_path(dicom_dir(), None).unwrap()
}

fn assert_same_geometry(s: &DicomSeries, o: &DicomSeries, tag: &str) {
    assert_eq!(s.ct.dims, o.ct.dims, "{tag}: dims");
    assert_eq!(s.ct.affine, o.ct.affine, "{tag}: affine");
    assert_eq!(s.info.series_uid, o.info.series_uid, "{tag}: series UID");
}

fn check_lossless(tool: &str, args: &[&str], tag: &str, syntax_uid: &str) {
    let o = original();
    let s = reencoded(tool, args, tag);
    assert!(
        s.info.transfer_syntax.starts_with(syntax_uid),
        "{tag}: read as {}",
        s.info.transfer_syntax
    );
    assert_same_geometry(&s, &o, tag);
    let differ =
        s.ct.data
            .iter()
            .zip(&o.ct.data)
            .filter(|(a, b)| a != b)
            .count();
    assert_eq!(
        differ, 0,
        "{tag}: {differ} voxels differ from the uncompressed series"
    );
}

#[test]
fn rle_lossless_gives_the_original_hu() {
    check_lossless("dcmcrle", &[], "rle", "1.2.840.10008.1.2.5");
}

#[test]
fn jpeg_lossless_first_order_gives_the_original_hu() {
    check_lossless("dcmcjpeg", &["+e1"], "jpeg-sv1", "1.2.840.10008.1.2.4.70");
}

#[test]
fn jpeg_lossless_process_14_gives_the_original_hu() {
    check_lossless("dcmcjpeg", &["+el"], "jpeg-p14", "1.2.840.10008.1.2.4.57");
}

#[test]
fn deflate_big_endian_and_implicit_vr_give_the_original_hu() {
    check_lossless("dcmconv", &["+td"], "deflate", "1.2.840.10008.1.2.1.99");
    check_lossless("dcmconv", &["+tb"], "big-endian", "1.2.840.10008.1.2.2");
    check_lossless("dcmconv", &["+ti"], "implicit", "1.2.840.10008.1.2 ");
}

/// Lossy JPEG: DCMTK scales the HU range into 8 bits (baseline: RescaleSlope ≈ 8 HU per
/// step) or 12 bits (extended); the reader must apply the new rescale and decode.
fn check_lossy(args: &[&str], tag: &str, syntax_uid: &str, max_mean_abs_hu: f64) {
    let o = original();
    let s = reencoded("dcmcjpeg", args, tag);
    assert!(
        s.info.transfer_syntax.starts_with(syntax_uid),
        "{tag}: read as {}",
        s.info.transfer_syntax
    );
    // A lossy copy gets new SOP Instance UIDs but stays in the series.
    assert_same_geometry(&s, &o, tag);
    let n = o.ct.data.len() as f64;
    let mean_abs: f64 =
        s.ct.data
            .iter()
            .zip(&o.ct.data)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / n;
    // Soft tissue (what is segmented): HU in −200..300 must stay within a few steps.
    let (mut m, mut c) = (0.0, 0usize);
    for (a, b) in s.ct.data.iter().zip(&o.ct.data) {
        if (-200..=300).contains(b) {
            m += (*a as f64 - *b as f64).abs();
            c += 1;
        }
    }
    let soft = m / c.max(1) as f64;
    eprintln!(
        "{tag}: mean |ΔHU| {mean_abs:.2} over all voxels, {soft:.2} in soft tissue ({c} voxels); slope {}",
        s.info.rescale_slope
    );
    assert!(
        mean_abs <= max_mean_abs_hu && soft <= max_mean_abs_hu,
        "{tag}: mean |ΔHU| {mean_abs:.2} (soft tissue {soft:.2}) above {max_mean_abs_hu}"
    );
}

/// Baseline: 8 bits at ≈ 8 HU per step, then the DCT's loss (measured: mean |ΔHU| 7.0 over
/// all voxels, 9.2 in soft tissue): at most 1.5 steps on average.
#[test]
fn jpeg_baseline_8_bit_reads_within_its_quantisation() {
    check_lossy(&["+eb"], "jpeg-baseline", "1.2.840.10008.1.2.4.50", 12.0);
}

/// JPEG Extended with 12-bit samples: the pure-Rust decoder (jpeg-decoder, what builds for
/// wasm32) does not do 12-bit precision; the reader must say so in one line, naming the file.
#[test]
fn jpeg_extended_12_bit_is_refused_clearly() {
    let out = std::env::temp_dir().join(format!("medlsam-syntax-{}-ext", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let src = dicom_dir().join("image_50");
    let status = Command::new("dcmcjpeg")
        .args(["+ee"])
        .arg(&src)
        .arg(out.join("image_50"))
        .status()
        .expect("this test needs DCMTK (Debian package dcmtk; ./dev setup installs it)");
    assert!(status.success());
    let e = match read_dicom_path(&out, None) {
        Ok(_) => panic!("12-bit JPEG Extended read: update this test and the README"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(&out).unwrap();
    assert!(
        e.contains("image_50") && e.contains("JPEG Extended") && e.contains("cannot be decoded"),
        "{e}"
    );
}

/// A JPEG whose own frame header is larger than the DICOM header's Rows: refused with both
/// sizes named (dicom-rs 0.10.1's JPEG adapter copied the larger image into a buffer sized
/// by Rows × Columns and panicked; found by `examples/fuzz_readers.rs --dcmtk-seeds`).
#[test]
fn jpeg_larger_than_its_rows_is_refused() {
    let out = std::env::temp_dir().join(format!("medlsam-syntax-{}-rows", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("image_50");
    let status = Command::new("dcmcjpeg")
        .args(["+el"])
        .arg(dicom_dir().join("image_50"))
        .arg(&file)
        .status()
        .expect("this test needs DCMTK (Debian package dcmtk; ./dev setup installs it)");
    assert!(status.success());
    // Rows (0028,0010) US in explicit VR little endian: 28 00 10 00 'U' 'S' 02 00, value.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == [0x28, 0x00, 0x10, 0x00, b'U', b'S', 0x02, 0x00])
        .expect("Rows in the re-encoded slice")
        + 8;
    let rows = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    bytes[at..at + 2].copy_from_slice(&(rows - 16).to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let e = match read_dicom_path(&out, None) {
        Ok(_) => panic!("a JPEG larger than Rows × Columns was read"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(&out).unwrap();
    let want = format!("the header says {rows}×{} of 2", rows - 16);
    assert!(
        e.contains("image_50") && e.contains("JPEG frame 1") && e.contains(&want),
        "{e}"
    );
}
