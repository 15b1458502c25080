//! Volume I/O, geometry and label utilities on the real CTs in ../shared/data.

mod common;

use common::*;
use medlsam::volume::labels::{bounding_box, classes, extreme_points, slice_boxes};
use medlsam::volume::nifti_io::{write_labels_nifti_bytes, write_nifti_bytes};
use medlsam::volume::resample::{resample_linear, resample_nearest, resample_nearest_to_grid};
use medlsam::volume::{Affine, LabelVolume, Volume, read_nifti_bytes, read_nifti_path};

#[test]
fn every_openkbp_label_round_trips_bit_exactly() {
    let cases = openkbp_cases();
    assert_eq!(cases.len(), 203, "expected 203 OpenKBP cases");
    for case in &cases {
        let f = read_nifti_path(openkbp(case, "label")).unwrap();
        assert_eq!(f.info.dtype, "uint8");
        let lab = f.into_labels().unwrap();
        let bytes = write_labels_nifti_bytes(&lab).unwrap();
        let back = read_nifti_bytes(&bytes).unwrap();
        assert_eq!(back.info.dtype, "uint8", "{case}");
        let back = back.into_labels().unwrap();
        assert_eq!(back.dims, lab.dims, "{case}");
        assert_eq!(back.data, lab.data, "{case}: voxels changed");
        assert_eq!(back.affine, lab.affine, "{case}: affine changed");
    }
}

#[test]
fn ct_values_and_geometry_match_the_data_readme() {
    let ct = read_nifti_path(openkbp("okbp_001", "ct")).unwrap();
    assert_eq!(ct.dims, [128, 128, 128]);
    assert_eq!(ct.affine.axis_codes(), "LPS");
    let (lo, hi, bad) = ct.value_stats();
    assert_eq!((lo, bad), (-1000.0, 0), "air is -1000 HU");
    assert!(hi > 1000.0, "bone present");
    let ct = ct.into_ct().unwrap();
    assert_eq!(ct.get(0, 0, 0), -1000);

    let spleen = read_nifti_path(data_dir().join("abdomen/msd_spleen_008.ct.nii.gz")).unwrap();
    assert_eq!(spleen.dims, [512, 512, 32]);
    let sp = spleen.affine.spacing_mm();
    assert!(
        (sp[0] - 0.79).abs() < 0.01 && (sp[2] - 7.5).abs() < 0.01,
        "{sp:?}"
    );
    let ts = read_nifti_path(data_dir().join("abdomen/ts_example.ct.nii.gz")).unwrap();
    assert_eq!(ts.affine.axis_codes(), "RAS");
}

/// Brute force: all voxels of the label, grouped by plane, sorted in the reference's raster order.
fn extreme_points_brute_force(lab: &LabelVolume, label: u16) -> [[usize; 3]; 6] {
    let mut pts = Vec::new();
    for k in 0..lab.dims[2] {
        for j in 0..lab.dims[1] {
            for i in 0..lab.dims[0] {
                if lab.get(i, j, k) == label {
                    pts.push([i, j, k]);
                }
            }
        }
    }
    let mut out = [[0; 3]; 6];
    for a in 0..3 {
        let lo = pts.iter().map(|p| p[a]).min().unwrap();
        let hi = pts.iter().map(|p| p[a]).max().unwrap();
        for (m, plane) in [lo, hi].into_iter().enumerate() {
            let mut on: Vec<[usize; 3]> = pts.iter().copied().filter(|p| p[a] == plane).collect();
            on.sort_by_key(|p| (p[(a + 2) % 3], p[(a + 1) % 3]));
            out[2 * a + m] = on[on.len() / 2];
        }
    }
    out
}

#[test]
fn extreme_points_boxes_and_slices_of_real_organs() {
    for case in ["okbp_001", "okbp_004", "okbp_150"] {
        let lab = read_nifti_path(openkbp(case, "label"))
            .unwrap()
            .into_labels()
            .unwrap();
        for (label, count) in classes(&lab) {
            let e = extreme_points(&lab, label).unwrap();
            assert_eq!(
                e,
                extreme_points_brute_force(&lab, label),
                "{case} label {label}"
            );
            let b = bounding_box(&lab, label).unwrap();
            for a in 0..3 {
                assert_eq!(e[2 * a][a], b.min[a]);
                assert_eq!(e[2 * a + 1][a], b.max[a]);
            }
            for p in e {
                assert_eq!(
                    lab.get(p[0], p[1], p[2]),
                    label,
                    "extreme point inside the organ"
                );
            }
            let sb = slice_boxes(&lab, label);
            assert_eq!(
                sb.len(),
                b.max[2] - b.min[2] + 1,
                "{case} {label}: organ slices are contiguous"
            );
            let area: usize = sb
                .iter()
                .map(|s| (s.max[0] - s.min[0] + 1) * (s.max[1] - s.min[1] + 1))
                .sum();
            assert!(area >= count, "slice boxes cover the organ");
        }
    }
}

fn centroids_world(lab: &LabelVolume) -> Vec<(u16, [f64; 3])> {
    classes(lab)
        .into_iter()
        .map(|(v, n)| {
            let mut s = [0.0; 3];
            for k in 0..lab.dims[2] {
                for j in 0..lab.dims[1] {
                    for i in 0..lab.dims[0] {
                        if lab.get(i, j, k) == v {
                            s = [s[0] + i as f64, s[1] + j as f64, s[2] + k as f64];
                        }
                    }
                }
            }
            (v, lab.affine.voxel_to_world(s.map(|x| x / n as f64)))
        })
        .collect()
}

/// The same voxels stored with a permuted and flipped axis order (a different file, same anatomy).
fn permuted(lab: &LabelVolume) -> LabelVolume {
    // new axes: (k reversed, i, j)
    let [nx, ny, nz] = lab.dims;
    let mut data = Vec::with_capacity(lab.len());
    for j in 0..ny {
        for i in 0..nx {
            for kk in 0..nz {
                data.push(lab.get(i, j, nz - 1 - kk));
            }
        }
    }
    // new index (a, b, c) = (nz-1-k, i, j) → old (i, j, k) = (b, c, nz-1-a)
    let mut m = [[0.0; 4]; 4];
    m[0][1] = 1.0;
    m[1][2] = 1.0;
    m[2][0] = -1.0;
    m[2][3] = (nz - 1) as f64;
    m[3][3] = 1.0;
    Volume::from_data([nz, nx, ny], data, lab.affine.compose(&Affine { m })).unwrap()
}

#[test]
fn lps_ras_and_permuted_files_share_one_canonical_volume() {
    let lab = read_nifti_path(openkbp("okbp_004", "label"))
        .unwrap()
        .into_labels()
        .unwrap();
    let (canon, _) = lab.to_canonical();
    // RAS copy: flip i and j.
    let [nx, ny, nz] = lab.dims;
    let mut ras_data = Vec::with_capacity(lab.len());
    for k in 0..nz {
        for j in (0..ny).rev() {
            for i in (0..nx).rev() {
                ras_data.push(lab.get(i, j, k));
            }
        }
    }
    let mut flip =
        Affine::from_diagonal([-1.0, -1.0, 1.0], [(nx - 1) as f64, (ny - 1) as f64, 0.0]);
    flip.m[3][3] = 1.0;
    let ras = Volume::from_data(lab.dims, ras_data, lab.affine.compose(&flip)).unwrap();
    let perm = permuted(&lab);
    for (name, v, codes) in [("ras", ras, "RAS"), ("permuted", perm, "ILP")] {
        // Through a real file write/read.
        let v = read_nifti_bytes(&write_labels_nifti_bytes(&v).unwrap())
            .unwrap()
            .into_labels()
            .unwrap();
        assert_eq!(v.affine.axis_codes(), codes, "{name}");
        let (c, r) = v.to_canonical();
        assert_eq!(c.dims, canon.dims, "{name}");
        assert_eq!(c.data, canon.data, "{name}: canonical voxels differ");
        for (x, y) in c
            .affine
            .m
            .iter()
            .flatten()
            .zip(canon.affine.m.iter().flatten())
        {
            assert!((x - y).abs() < 1e-3, "{name}: canonical affines differ");
        }
        let back = c.from_canonical(&r).unwrap();
        assert_eq!(back.data, v.data, "{name}: back to file order");
        for ((l1, c1), (l2, c2)) in centroids_world(&v).iter().zip(centroids_world(&lab).iter()) {
            assert_eq!(l1, l2);
            assert!(
                (0..3).all(|a| (c1[a] - c2[a]).abs() < 1e-3),
                "{name}: organ {l1} moved"
            );
        }
    }
}

#[test]
fn reorient_resample_and_back_keep_organ_centroids() {
    for case in ["okbp_002", "okbp_010"] {
        let lab = read_nifti_path(openkbp(case, "label"))
            .unwrap()
            .into_labels()
            .unwrap();
        let perm = permuted(&lab);
        let (canon, _) = perm.to_canonical();
        let iso = resample_nearest(&canon, [3.0, 3.0, 3.0]).unwrap();
        assert!(iso.spacing_mm().iter().all(|s| (s - 3.0).abs() < 1e-9));
        let back = resample_nearest_to_grid(&iso, perm.dims, &perm.affine, 0).unwrap();
        let orig = centroids_world(&lab);
        let sp = lab.spacing_mm();
        for (stage, v, tol) in [
            ("3 mm", &iso, [3.0; 3]),
            ("back", &back, sp.map(|s| s / 2.0)),
        ] {
            let got = centroids_world(v);
            for (l, c) in &orig {
                let Some((_, g)) = got.iter().find(|(v, _)| v == l) else {
                    panic!("{case}: organ {l} lost at {stage}")
                };
                // Nearest-neighbour sampling on the 3 mm grid may alias a thin organ by up to one
                // coarse voxel; the round trip back to the file grid must land within half a voxel.
                for a in 0..3 {
                    assert!(
                        (g[a] - c[a]).abs() <= tol[a],
                        "{case} {stage}: organ {l} centroid axis {a} moved {}",
                        (g[a] - c[a]).abs()
                    );
                }
            }
        }
    }
}

#[test]
fn full_resolution_ct_resamples_to_3mm_in_place() {
    let f = read_nifti_path(data_dir().join("abdomen/ircadb_017.ct.nii.gz")).unwrap();
    let ct = f.into_ct().unwrap();
    let (c, _) = ct.to_canonical();
    let iso = resample_linear(&c, [3.0; 3]).unwrap();
    assert_eq!(iso.dims, [127, 127, 63]);
    // The world centre of the volume stays put (corner-aligned grids).
    let centre =
        |dims: [usize; 3], aff: &Affine| aff.voxel_to_world(dims.map(|d| (d as f64 - 1.0) / 2.0));
    let (a, b) = (centre(c.dims, &c.affine), centre(iso.dims, &iso.affine));
    assert!((0..3).all(|t| (a[t] - b[t]).abs() < 3.0), "{a:?} vs {b:?}");
    // And HU stay in range; a float f32 copy written and read back is identical.
    assert!(iso.data.iter().all(|&v| (-1024.0..=1023.0).contains(&v)));
    let bytes = write_nifti_bytes(&iso, false).unwrap();
    assert_eq!(
        read_nifti_bytes(&bytes).unwrap().to_f32().unwrap().data,
        iso.data
    );
}
