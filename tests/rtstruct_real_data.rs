//! RTSTRUCT and DICOM SEG out and RTSTRUCT in, on the real DICOM slices in
//! tests/data/dicom (3D-IRCADb patient 1, 28 slices) with real organ masks:
//! - "liver": the manual liver of 3D-IRCADb patient 17 (../shared/data/abdomen,
//!   512 × 512 slices like patient 1), its 28 consecutive slices with the most liver
//!   placed voxel for voxel on patient 1's grid (patient 1 has no label map: this is a
//!   real organ outline, not patient 1's liver);
//! - "bone": patient 1's bone (≥ 250 HU) thresholded on the NIfTI of the same patient
//!   and taken to the DICOM voxels through world coordinates (they coincide);
//! - "body": the rest of the body (> −400 HU), a region with large holes.
//!
//! The RTSTRUCT is written, read back onto the CT grid (DSC per organ) and its
//! errors checked; the SEG is written, re-parsed with dicom-object (frames, segment
//! numbers, references) and read back.

mod common;

use std::path::PathBuf;

use common::*;
use dicom_dictionary_std::tags;
use medlsam::metrics::dice_pct;
use medlsam::volume::dicom::{DicomSeries, read_dicom_path};
use medlsam::volume::dicom_derived::DerivedOptions;
use medlsam::volume::dicom_seg::{read_dicom_seg, write_dicom_seg};
use medlsam::volume::label_table::LabelTable;
use medlsam::volume::rtstruct::{read_rtstruct, rtstruct_roi_names, write_rtstruct};
use medlsam::volume::{LabelVolume, read_nifti_path};

fn dicom_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom/ircadb_001")
}

fn names() -> LabelTable {
    LabelTable(
        [(1, "liver"), (2, "bone"), (3, "body")]
            .into_iter()
            .map(|(v, n)| (v, n.to_string()))
            .collect(),
    )
}

/// The three real masks on the DICOM grid (see the module comment).
fn real_mask(s: &DicomSeries) -> LabelVolume {
    let ct = &s.ct;
    let [w, h, d] = ct.dims;
    let plane = w * h;
    let data = data_dir();
    let lab17 = read_nifti_path(data.join("abdomen/ircadb_017.label.nii.gz"))
        .unwrap()
        .into_labels()
        .unwrap();
    assert_eq!(&lab17.dims[..2], &[w, h], "ircadb_017 slices are 512 × 512");
    let liver_per_slice: Vec<usize> = (0..lab17.dims[2])
        .map(|k| lab17.axial_slice(k).iter().filter(|&&v| v == 1).count())
        .collect();
    let start = (0..=lab17.dims[2] - d)
        .max_by_key(|&s| liver_per_slice[s..s + d].iter().sum::<usize>())
        .unwrap();
    let nii = read_nifti_path(data.join("abdomen/ircadb_001.ct.nii.gz"))
        .unwrap()
        .into_ct()
        .unwrap();
    let to_nii = nii.affine.inverse().unwrap();
    let mut mask = LabelVolume::filled(ct.dims, 0, ct.affine).unwrap();
    for k in 0..d {
        let liver = lab17.axial_slice(start + k);
        for j in 0..h {
            for i in 0..w {
                let p = j * w + i;
                let v = to_nii
                    .voxel_to_world(ct.affine.voxel_to_world([i as f64, j as f64, k as f64]))
                    .map(|x| x.round() as usize);
                let hu = nii.get(v[0], v[1], v[2]);
                mask.data[k * plane + p] = if liver[p] == 1 {
                    1
                } else if hu >= 250 {
                    2
                } else if hu > -400 {
                    3
                } else {
                    0
                };
            }
        }
    }
    mask
}

fn dsc(a: &LabelVolume, b: &LabelVolume, label: u16) -> f64 {
    dice_pct(&a.map(|v| v == label), &b.map(|v| v == label))
        .unwrap()
        .unwrap()
}

fn options() -> DerivedOptions {
    DerivedOptions {
        date: "20250101".into(),
        time: "120000".into(),
        series_number: None,
    }
}

#[test]
fn rtstruct_round_trip_on_real_slices() {
    let s = read_dicom_path(dicom_dir(), None).unwrap();
    let mask = real_mask(&s);
    let organs = [1u16, 2, 3];
    let t = std::time::Instant::now();
    let (bytes, summary) = write_rtstruct(&mask, &s.info, &organs, &names(), &options()).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let back = read_rtstruct(&bytes, "rt.dcm", &s.ct, &s.info).unwrap();
    let read_s = t.elapsed().as_secs_f64();
    eprintln!(
        "RTSTRUCT: {} bytes, {} contours {:?}, {} points; written in {write_s:.2} s, read in {read_s:.2} s",
        bytes.len(),
        summary.contours.iter().sum::<usize>(),
        summary.contours,
        summary.points
    );
    assert_eq!(back.table, names());
    assert_eq!(back.contours, summary.contours);
    for o in organs {
        let voxels = mask.data.iter().filter(|&&v| v == o).count();
        let d = dsc(&back.labels, &mask, o);
        eprintln!("  {:<6} {voxels:>8} voxels, DSC {d:.3} %", names().name(o));
        assert!(d >= 95.0, "{}: DSC {d}", names().name(o));
    }
    // The pixel-edge-midpoint contours give back the very voxels.
    assert_eq!(back.labels.data, mask.data);
    assert_eq!(rtstruct_roi_names(&bytes, "rt.dcm").unwrap(), names());
    // Deterministic: same input, same bytes and UIDs.
    let (again, s2) = write_rtstruct(&mask, &s.info, &organs, &names(), &options()).unwrap();
    assert_eq!(
        (again == bytes, &s2.sop_instance_uid),
        (true, &summary.sop_instance_uid)
    );

    // Structure, re-parsed with dicom-object.
    let obj = dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .unwrap();
    let txt = |o: &dicom_object::InMemDicomObject, t| {
        o.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .trim()
            .to_string()
    };
    assert_eq!(
        txt(&obj, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.481.3"
    );
    assert_eq!(txt(&obj, tags::STUDY_INSTANCE_UID), s.info.study_uid);
    let rc = obj
        .element(tags::ROI_CONTOUR_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    for roi in rc {
        for c in roi
            .element(tags::CONTOUR_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
        {
            let img = &c
                .element(tags::CONTOUR_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            let uid = txt(img, tags::REFERENCED_SOP_INSTANCE_UID);
            assert!(s.info.sop_instance_uids.contains(&uid), "{uid}");
        }
    }
}

#[test]
fn rtstruct_errors_are_clear() {
    let s = read_dicom_path(dicom_dir(), None).unwrap();
    let mask = real_mask(&s);
    let (bytes, _) = write_rtstruct(&mask, &s.info, &[1, 2], &names(), &options()).unwrap();
    // Another frame of reference.
    let mut other = s.info.clone();
    other.frame_of_reference_uid = "1.2.826.0.1.3680043.9.9999".into();
    let e = read_rtstruct(&bytes, "rt.dcm", &s.ct, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FrameOfReferenceUID") && e.contains("another scan"),
        "{e}"
    );
    // No contours: an organ absent from the mask.
    let (empty, sum) = write_rtstruct(&mask, &s.info, &[7], &names(), &options()).unwrap();
    assert_eq!(sum.contours, vec![0]);
    let e = read_rtstruct(&empty, "rt.dcm", &s.ct, &s.info)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no closed planar contour"), "{e}");
    // Off the grid: the contours of all 28 slices onto the first 14.
    let half: Vec<(String, Vec<u8>)> = {
        let mut f: Vec<PathBuf> = std::fs::read_dir(dicom_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f.iter()
            .take(14)
            .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
            .collect()
    };
    let s14 = medlsam::volume::dicom::read_dicom_series_bytes(&half, None).unwrap();
    let e = read_rtstruct(&bytes, "rt.dcm", &s14.ct, &s14.info)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("off the image's grid") && e.contains("outside the image's slices"),
        "{e}"
    );
    // Not an RTSTRUCT.
    let ct_file = std::fs::read(dicom_dir().join("image_60")).unwrap();
    let e = read_rtstruct(&ct_file, "image_60", &s.ct, &s.info)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an RT Structure Set"), "{e}");
}

#[test]
fn dicom_seg_round_trip_on_real_slices() {
    let s = read_dicom_path(dicom_dir(), None).unwrap();
    let mask = real_mask(&s);
    let organs = [1u16, 2, 3];
    let t = std::time::Instant::now();
    let (bytes, summary) = write_dicom_seg(&mask, &s.info, &organs, &names(), &options()).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let per_organ: Vec<usize> = organs
        .iter()
        .map(|&o| {
            (0..28)
                .filter(|&k| mask.axial_slice(k).contains(&o))
                .count()
        })
        .collect();
    assert_eq!(summary.frames, per_organ);
    let n_frames: usize = per_organ.iter().sum();
    eprintln!(
        "SEG: {} bytes, {n_frames} frames {per_organ:?}, written in {write_s:.2} s",
        bytes.len()
    );

    // Re-parsed with dicom-object: frames, segments, references.
    let obj = dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .unwrap();
    let txt = |o: &dicom_object::InMemDicomObject, t| {
        o.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .trim()
            .to_string()
    };
    assert_eq!(
        txt(&obj, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.66.4"
    );
    assert_eq!(txt(&obj, tags::SEGMENTATION_TYPE), "BINARY");
    assert_eq!(
        obj.element(tags::NUMBER_OF_FRAMES)
            .unwrap()
            .to_int::<usize>()
            .unwrap(),
        n_frames
    );
    let segs = obj
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let seg_names: Vec<(u16, String)> = segs
        .iter()
        .map(|i| {
            (
                i.element(tags::SEGMENT_NUMBER)
                    .unwrap()
                    .to_int::<u16>()
                    .unwrap(),
                txt(i, tags::SEGMENT_LABEL),
            )
        })
        .collect();
    assert_eq!(
        seg_names,
        vec![(1, "liver".into()), (2, "bone".into()), (3, "body".into())]
    );
    let frames = obj
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(frames.len(), n_frames);
    let mut seg_of_frame = Vec::new();
    for f in frames {
        let sid = &f
            .element(tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        seg_of_frame.push(
            sid.element(tags::REFERENCED_SEGMENT_NUMBER)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
        );
        let der = &f
            .element(tags::DERIVATION_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let src = &der
            .element(tags::SOURCE_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        let uid = txt(src, tags::REFERENCED_SOP_INSTANCE_UID);
        assert!(s.info.sop_instance_uids.contains(&uid), "{uid}");
    }
    let want: Vec<u16> = per_organ
        .iter()
        .enumerate()
        .flat_map(|(n, &c)| std::iter::repeat_n(n as u16 + 1, c))
        .collect();
    assert_eq!(seg_of_frame, want);
    let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(pixels.len(), (n_frames * 512 * 512).div_ceil(8));

    // And back onto the grid: the same voxels.
    let back = read_dicom_seg(&bytes, "seg.dcm", &s.ct, &s.info).unwrap();
    assert_eq!(back.table, names());
    for o in organs {
        let d = dsc(&back.labels, &mask, o);
        eprintln!("  {:<6} DSC {d:.3} %", names().name(o));
        assert!(d >= 95.0);
    }
    assert_eq!(back.labels.data, mask.data);
}

fn medlsam(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medlsam"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The CLI end to end: `segment --rtstruct --dicom-seg` on the DICOM query (registration
/// of ircadb_017's liver, the prior alone: seconds), the RTSTRUCT read back onto the CT
/// equals the NIfTI it wrote, and the RTSTRUCT as a support label; the flags are refused
/// for a NIfTI query, an RTSTRUCT label for a NIfTI image.
#[test]
fn segment_writes_rtstruct_and_seg_and_takes_rtstruct_supports() {
    let scratch = Scratch::new("rtstruct-cli");
    let d = data_dir().join("abdomen");
    let (ct17, lab17) = (
        d.join("ircadb_017.ct.nii.gz"),
        d.join("ircadb_017.label.nii.gz"),
    );
    let q = dicom_dir();
    let out = scratch.0.join("run");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ok, stdout, err) = medlsam(&[
        "segment",
        "--support-image",
        &s(&ct17),
        "--support-label",
        &s(&lab17),
        "--query",
        &s(&q),
        "--organs",
        "1",
        "--localizer",
        "register",
        "--rtstruct",
        "--dicom-seg",
        "--out",
        &s(&out),
    ]);
    assert!(ok, "{stdout}\n{err}");
    let series = read_dicom_path(&q, None).unwrap();
    let nii = read_nifti_path(out.join("ircadb_001.seg.nii.gz"))
        .unwrap()
        .into_labels()
        .unwrap();
    let liver = nii.data.iter().filter(|&&v| v == 1).count();
    assert!(liver > 10_000, "the run found no liver ({liver} voxels)");
    let rt = std::fs::read(out.join("ircadb_001.rtstruct.dcm")).unwrap();
    let back = read_rtstruct(&rt, "rt", &series.ct, &series.info).unwrap();
    assert_eq!(back.table.name(1), "liver");
    let d_rt = dsc(&back.labels, &nii, 1);
    let seg = std::fs::read(out.join("ircadb_001.seg.dcm")).unwrap();
    let back_seg = read_dicom_seg(&seg, "seg", &series.ct, &series.info).unwrap();
    let d_seg = dsc(&back_seg.labels, &nii, 1);
    eprintln!(
        "segment --rtstruct --dicom-seg: liver {liver} voxels; RTSTRUCT {} bytes, DSC {d_rt:.3} %; \
         SEG {} bytes, DSC {d_seg:.3} %",
        rt.len(),
        seg.len()
    );
    assert!(d_rt >= 95.0 && d_seg >= 95.0);

    // The RTSTRUCT as the support label of the same DICOM series.
    let out2 = scratch.0.join("from_rtstruct");
    let (ok, stdout, err) = medlsam(&[
        "segment",
        "--support-image",
        &s(&q),
        "--support-label",
        &s(&out.join("ircadb_001.rtstruct.dcm")),
        "--query",
        &s(&q),
        "--query-label",
        &s(&out.join("ircadb_001.seg.nii.gz")),
        "--organs",
        "1",
        "--localizer",
        "register",
        "--out",
        &s(&out2),
    ]);
    assert!(ok, "{stdout}\n{err}");
    assert!(stdout.contains("liver"), "{stdout}");
    let table = std::fs::read_to_string(out2.join("labels.json")).unwrap();
    assert!(table.contains("\"1\": \"liver\""), "{table}");

    // Refusals: a NIfTI query; an RTSTRUCT label with a NIfTI image.
    let (ok, _, err) = medlsam(&[
        "segment",
        "--support-image",
        &s(&ct17),
        "--support-label",
        &s(&lab17),
        "--query",
        &s(&ct17),
        "--rtstruct",
        "--out",
        &s(&scratch.0.join("x")),
    ]);
    assert!(
        !ok && err.contains("--rtstruct") && err.contains("needs a DICOM query"),
        "{err}"
    );
    let (ok, _, err) = medlsam(&[
        "segment",
        "--support-image",
        &s(&ct17),
        "--support-label",
        &s(&out.join("ircadb_001.rtstruct.dcm")),
        "--query",
        &s(&q),
        "--out",
        &s(&scratch.0.join("y")),
    ]);
    assert!(
        !ok && err.contains("RTSTRUCT") && err.contains("not DICOM"),
        "{err}"
    );
}
