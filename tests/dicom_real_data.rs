//! DICOM CT series reading on real slices (tests/data/dicom, 3D-IRCADb patient 1),
//! checked voxel by voxel in world coordinates against the NIfTI of the same patient
//! in ../shared/data, and the reader's errors on real files edited in memory.

mod common;

use std::path::PathBuf;

use common::*;
use medlsam::volume::dicom::{read_dicom_path, read_dicom_series_bytes};
use medlsam::volume::{load_ct, read_nifti_path, summarize_path};

fn dicom_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/ircadb_001")
}

/// The 28 committed slices as (name, bytes), in file-name order.
fn files() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dicom_dir())
        .expect("tests/data/dicom/ircadb_001 is committed with the project")
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert_eq!(v.len(), 28, "expected the 28 committed slices");
    v
}

fn nifti_ircadb_001() -> medlsam::volume::CtVolume {
    read_nifti_path(data_dir().join("abdomen/ircadb_001.ct.nii.gz"))
        .unwrap()
        .into_ct()
        .unwrap()
}

fn err_of<N: AsRef<str>, B: AsRef<[u8]>>(files: &[(N, B)]) -> String {
    match read_dicom_series_bytes(files, None) {
        Ok(s) => panic!("expected an error, read {:?}", s.ct.dims),
        Err(e) => e.to_string(),
    }
}

#[test]
fn series_gives_the_same_hu_as_the_nifti_at_the_same_world_points() {
    let s = read_dicom_path(dicom_dir(), None).unwrap();
    let ct = &s.ct;
    assert_eq!(ct.dims, [512, 512, 28]);
    let sp = ct.spacing_mm();
    assert!(
        (sp[0] - 0.57).abs() < 1e-4 && (sp[1] - 0.57).abs() < 1e-4 && (sp[2] - 1.6).abs() < 1e-4,
        "{sp:?}"
    );
    // DICOM rows run toward the patient's left and columns toward posterior: LPS.
    assert_eq!(ct.affine.axis_codes(), "LPS");
    assert_eq!(s.info.modality, "CT");
    assert_eq!(s.info.slices, 28);
    assert_eq!(s.info.sop_instance_uids.len(), 28);

    let nii = nifti_ircadb_001();
    assert_eq!(nii.dims, [512, 512, 129]);
    let to_nii = nii.affine.inverse().unwrap();
    let (mut max_diff, mut differing, mut max_off, mut compared) = (0i32, 0usize, 0f64, 0usize);
    for k in 0..ct.dims[2] {
        for j in 0..ct.dims[1] {
            for i in 0..ct.dims[0] {
                let w = ct.affine.voxel_to_world([i as f64, j as f64, k as f64]);
                let v = to_nii.voxel_to_world(w);
                let r = v.map(f64::round);
                let off = (0..3).map(|a| (v[a] - r[a]).abs()).fold(0.0, f64::max);
                max_off = max_off.max(off);
                assert!(
                    r.iter()
                        .zip(nii.dims)
                        .all(|(&x, d)| x >= 0.0 && x < d as f64),
                    "DICOM voxel {:?} maps outside the NIfTI grid ({v:?})",
                    [i, j, k]
                );
                let a = ct.get(i, j, k) as i32;
                let b = nii.get(r[0] as usize, r[1] as usize, r[2] as usize) as i32;
                let d = (a - b).abs();
                max_diff = max_diff.max(d);
                differing += (d != 0) as usize;
                compared += 1;
            }
        }
    }
    eprintln!(
        "DICOM vs NIfTI, ircadb_001: {compared} voxels compared, max |ΔHU| = {max_diff}, \
         {differing} differ, max distance of a DICOM voxel centre from a NIfTI voxel centre \
         = {max_off:.2e} voxel"
    );
    assert!(
        max_off < 1e-3,
        "voxel centres do not coincide: {max_off} voxel"
    );
    assert_eq!(
        max_diff, 0,
        "HU differ at the same world points ({differing} voxels)"
    );
    // The slices sit where their ImagePositionPatient says: z = 80.0 mm for image_50.
    let w0 = ct.affine.voxel_to_world([0.0, 0.0, 0.0]);
    assert!(
        w0.iter()
            .zip([0.0, 0.0, 80.0])
            .all(|(a, b)| (a - b).abs() < 1e-3),
        "{w0:?}"
    );
}

#[test]
fn bytes_paths_file_order_and_load_ct_agree() {
    let from_path = read_dicom_path(dicom_dir(), None).unwrap();
    let mut f = files();
    // Any names and any order: reversed and renamed.
    f.reverse();
    for (n, (name, _)) in f.iter_mut().enumerate() {
        *name = format!("x{n}.dcm");
    }
    let from_bytes = read_dicom_series_bytes(&f, None).unwrap();
    assert_eq!(from_bytes.ct, from_path.ct);
    assert_eq!(
        from_bytes.info.sop_instance_uids,
        from_path.info.sop_instance_uids
    );
    assert_eq!(load_ct(dicom_dir()).unwrap(), from_path.ct);
    // One slice file given: its series is read from the folder.
    assert_eq!(load_ct(dicom_dir().join("image_60")).unwrap(), from_path.ct);
    // DIR#SERIES_UID picks the series; a wrong UID lists the ones there.
    let uid = from_path.info.series_uid.clone();
    let picked = PathBuf::from(format!("{}#{uid}", dicom_dir().display()));
    assert_eq!(load_ct(&picked).unwrap(), from_path.ct);
    let wrong = PathBuf::from(format!("{}#1.2.3", dicom_dir().display()));
    let e = load_ct(&wrong).unwrap_err().to_string();
    assert!(
        e.contains("no series with SeriesInstanceUID 1.2.3") && e.contains(&uid),
        "{e}"
    );

    let info = summarize_path(dicom_dir()).unwrap();
    assert_eq!(info.volume.shape, [512, 512, 28]);
    assert_eq!(info.volume.orientation, "LPS");
    let d = info.dicom.unwrap();
    assert_eq!((d.slices, d.files, d.modality.as_str()), (28, 28, "CT"));
    assert!(
        d.transfer_syntax.contains("Explicit VR Little Endian"),
        "{}",
        d.transfer_syntax
    );
}

/// Parse a real file, change it, and write it back (same transfer syntax).
fn edited(bytes: &[u8], f: impl FnOnce(&mut dicom_object::DefaultDicomObject)) -> Vec<u8> {
    let mut obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(bytes)
        .unwrap();
    f(&mut obj);
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

fn put_str(
    obj: &mut dicom_object::DefaultDicomObject,
    tag: dicom_core::Tag,
    vr: dicom_core::VR,
    v: &str,
) {
    obj.put(dicom_core::DataElement::new(
        tag,
        vr,
        dicom_core::PrimitiveValue::from(v),
    ));
}

#[test]
fn rewritten_files_read_the_same() {
    // The editing used by the error tests changes nothing by itself.
    let f: Vec<(String, Vec<u8>)> = files()
        .into_iter()
        .map(|(n, b)| (n, edited(&b, |_| {})))
        .collect();
    let a = read_dicom_series_bytes(&f, None).unwrap();
    let b = read_dicom_path(dicom_dir(), None).unwrap();
    assert_eq!(a.ct, b.ct);
}

#[test]
fn truncated_file_is_named() {
    let mut f = files();
    let n = f[10].1.len();
    f[10].1.truncate(n / 2);
    let e = err_of(&f);
    assert!(e.contains(&f[10].0) && e.contains("truncated"), "{e}");
    // Cut inside the header.
    f[10].1.truncate(400);
    let e = err_of(&f);
    assert!(e.contains(&f[10].0), "{e}");
}

#[test]
fn non_ct_modality_is_refused() {
    use dicom_dictionary_std::tags;
    let f: Vec<(String, Vec<u8>)> = files()
        .into_iter()
        .map(|(n, b)| {
            (
                n,
                edited(&b, |o| put_str(o, tags::MODALITY, dicom_core::VR::CS, "MR")),
            )
        })
        .collect();
    let e = err_of(&f);
    assert!(
        e.contains("no CT series") && e.contains("MR (28 images)"),
        "{e}"
    );
    let uid = {
        let mut f1 = files();
        f1.truncate(1);
        read_dicom_series_bytes(&f1, None).unwrap().info.series_uid
    };
    let e = read_dicom_series_bytes(&f, Some(&uid))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Modality (0008,0060) is \"MR\""), "{e}");
    // One file of the series says MR.
    let mut f = files();
    f[3].1 = edited(&f[3].1, |o| {
        put_str(o, tags::MODALITY, dicom_core::VR::CS, "MR")
    });
    let e = err_of(&f);
    assert!(e.contains(&f[3].0) && e.contains("Modality"), "{e}");
}

#[test]
fn mixed_sizes_are_refused() {
    use dicom_dictionary_std::tags;
    let mut f = files();
    f[5].1 = edited(&f[5].1, |o| {
        o.put(dicom_core::DataElement::new(
            tags::ROWS,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(256u16),
        ));
    });
    let e = err_of(&f);
    assert!(e.contains("mixed sizes") && e.contains("256×512"), "{e}");
}

#[test]
fn gantry_tilt_is_refused() {
    use dicom_dictionary_std::tags;
    // Shift each slice 0.5 mm posterior per 1.6 mm slice: a 17° tilt.
    let f: Vec<(String, Vec<u8>)> = files()
        .into_iter()
        .map(|(n, b)| {
            let b = edited(&b, |o| {
                let p = o
                    .element(tags::IMAGE_POSITION_PATIENT)
                    .unwrap()
                    .to_multi_float64()
                    .unwrap();
                let y = p[2] / 1.6 * 0.5;
                put_str(
                    o,
                    tags::IMAGE_POSITION_PATIENT,
                    dicom_core::VR::DS,
                    &format!("{}\\{}\\{}", p[0], y, p[2]),
                );
            });
            (n, b)
        })
        .collect();
    let e = err_of(&f);
    assert!(e.contains("gantry tilt") && e.contains("17."), "{e}");
}

#[test]
fn missing_slice_and_duplicates_are_refused() {
    let mut f = files();
    let gone = f.remove(12);
    let e = err_of(&f);
    assert!(
        e.contains("uneven slice spacing")
            && e.contains("3.200 mm")
            && e.contains("1 slices missing"),
        "{e}"
    );
    f.insert(12, gone.clone());
    f.push(("copy".into(), gone.1));
    let e = err_of(&f);
    assert!(e.contains("same ImagePositionPatient"), "{e}");
}

#[test]
fn not_dicom_and_unsupported_syntax_are_clear() {
    let e = err_of(&[("notes.txt", b"hello".to_vec())]);
    assert!(e.contains("no DICOM file found"), "{e}");
    let e = err_of::<&str, Vec<u8>>(&[]);
    assert!(e.contains("no DICOM file found"), "{e}");
    // Non-DICOM files beside the series are skipped.
    let mut f = files();
    f.push(("README.txt".into(), b"slices of patient 1".to_vec()));
    let s = read_dicom_series_bytes(&f, None).unwrap();
    assert_eq!((s.ct.dims[2], s.info.skipped_files), (28, 1));

    // Transfer syntax → JPEG 2000 in the file meta group (the UID grows by 2 bytes, and
    // so does the group length).
    let mut f = files();
    let b = &f[0].1;
    let old = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0";
    let at = b
        .windows(old.len())
        .position(|w| w == old)
        .expect("TS element");
    let mut nb = b[..at].to_vec();
    nb.extend_from_slice(b"\x02\x00\x10\x00UI\x16\x001.2.840.10008.1.2.4.90");
    nb.extend_from_slice(&b[at + old.len()..]);
    assert_eq!(&nb[132..140], b"\x02\x00\x00\x00UL\x04\x00");
    let gl = u32::from_le_bytes(nb[140..144].try_into().unwrap()) + 2;
    nb[140..144].copy_from_slice(&gl.to_le_bytes());
    f[0].1 = nb;
    let e = err_of(&f);
    assert!(
        e.contains(&f[0].0)
            && e.contains("1.2.840.10008.1.2.4.90 (JPEG 2000 Lossless)")
            && e.contains("cannot be decoded"),
        "{e}"
    );
}
