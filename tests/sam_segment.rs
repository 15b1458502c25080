//! LiteMedSAM slice segmentation on real CTs with the true per-slice boxes of
//! a label map (the paper's "manual box" ceiling), through the library and the
//! `medlsam segment` command. DSC must clearly beat the trivial segmentation
//! that fills every (enlarged) box.

mod common;

use std::path::PathBuf;
use std::process::Command;

use medlsam::metrics::dice_pct;
use medlsam::pipeline::segment_slices;
use medlsam::run::segment::{TrueBoxRun, segment_true_boxes};
use medlsam::run::session::lite_medsam_segmenter;
use medlsam::sam::preprocess::SOFT_TISSUE_WINDOW_HU;
use medlsam::types::OrganBoxes;
use medlsam::volume::labels::{mask_of, slice_boxes};
use medlsam::volume::{LabelVolume, Volume, read_nifti_path};

fn need_weights() {
    let p = medlsam::sam::weights::default_weights_dir().join("lite_medsam.bpk");
    assert!(p.is_file(), "{} is missing: run ./dev setup", p.display());
}

/// DSC (%) of filling each slice's true box, enlarged like the prompts, with the organ.
fn box_fill_dsc(labels: &LabelVolume, label: u16) -> f64 {
    let (c, _) = labels.to_canonical();
    let [nx, ny, _] = c.dims;
    let margin = 10.0 * nx.max(ny) as f64 / 1024.0;
    let mut fill = Volume::filled(c.dims, false, c.affine).unwrap();
    for b in slice_boxes(&c, label) {
        let lo = |v: usize| (v as f64 - margin).max(0.0) as usize;
        let hi = |v: usize, n: usize| (v as f64 + margin).min((n - 1) as f64) as usize;
        for j in lo(b.min[1])..=hi(b.max[1], ny) {
            for i in lo(b.min[0])..=hi(b.max[0], nx) {
                let idx = fill.index(i, j, b.k);
                fill.data[idx] = true;
            }
        }
    }
    dice_pct(&fill, &mask_of(&c, label)).unwrap().unwrap()
}

fn run_case(ct: PathBuf, label: PathBuf, organs: &[u16], min_dsc: &[f64]) {
    need_weights();
    let out = common::Scratch::new(&format!("seg-{}", organs.len()));
    let mut run = TrueBoxRun::new(ct, label.clone(), out.0.clone());
    run.organs = Some(organs.to_vec());
    let mut last = None;
    let reports = segment_true_boxes(&run, &mut |_, p| last = Some((p.done, p.total))).unwrap();
    let ok = reports[0].result.as_ref().unwrap();
    let (done, total) = last.unwrap();
    assert_eq!(done, total, "progress reaches the total");
    for f in ["labels.json", "metrics.csv"] {
        assert!(out.0.join(f).is_file(), "{f} written");
    }
    let truth = read_nifti_path(&label).unwrap().into_labels().unwrap();
    for (m, &min) in ok.metrics.iter().zip(min_dsc) {
        let dsc = m.dsc.unwrap();
        let fill = box_fill_dsc(&truth, m.label);
        println!(
            "{} label {}: DSC {dsc:.2}% (box filling {fill:.2}%), HD95 {:?} mm",
            reports[0].case, m.label, m.hd95_mm
        );
        assert!(dsc >= min, "label {}: DSC {dsc:.2} < {min}", m.label);
        assert!(
            dsc >= fill + 10.0,
            "label {}: DSC {dsc:.2} not clearly above box filling {fill:.2}",
            m.label
        );
    }
}

#[test]
fn spleen_with_true_boxes() {
    let d = common::data_dir().join("abdomen");
    run_case(
        d.join("msd_spleen_008.ct.nii.gz"),
        d.join("msd_spleen_008.label.nii.gz"),
        &[1],
        &[88.0],
    );
}

#[test]
fn head_and_neck_with_true_boxes() {
    run_case(
        common::openkbp("okbp_002", "ct"),
        common::openkbp("okbp_002", "label"),
        &[1, 3, 4],
        &[60.0, 30.0, 30.0],
    );
}

#[test]
fn given_boxes_on_a_few_liver_slices() {
    need_weights();
    let d = common::data_dir().join("abdomen");
    let ct = read_nifti_path(d.join("ircadb_017.ct.nii.gz"))
        .unwrap()
        .into_ct()
        .unwrap();
    let lab = read_nifti_path(d.join("ircadb_017.label.nii.gz"))
        .unwrap()
        .into_labels()
        .unwrap();
    let (canon, _) = lab.to_canonical();
    let all = slice_boxes(&canon, 1);
    let boxes: Vec<_> = all.iter().step_by(all.len() / 3).take(3).copied().collect();
    let mut seg = lite_medsam_segmenter(
        None,
        medlsam::device::BackendChoice::Cpu,
        SOFT_TISSUE_WINDOW_HU,
    )
    .unwrap();
    let mut steps = 0;
    let res = pollster::block_on(segment_slices(
        &ct,
        &[OrganBoxes {
            label: 1,
            boxes: boxes.clone(),
        }],
        &mut seg,
        &mut |_| steps += 1,
    ))
    .unwrap();
    assert_eq!(res.slices_encoded, 3);
    assert!(steps >= 4);
    // DSC on the three segmented slices only.
    let (pred, _) = res.labels.to_canonical();
    let (mut inter, mut sum) = (0usize, 0usize);
    for b in &boxes {
        let p = pred.axial_slice(b.k);
        let t = canon.axial_slice(b.k);
        inter += p
            .iter()
            .zip(t)
            .filter(|(a, b)| **a == 1 && **b == 1)
            .count();
        sum += p.iter().filter(|v| **v == 1).count() + t.iter().filter(|v| **v == 1).count();
    }
    let dsc = 200.0 * inter as f64 / sum as f64;
    println!("ircadb_017 liver, 3 slices with given boxes: DSC {dsc:.2}%");
    assert!(dsc > 85.0, "liver DSC {dsc:.2}");
}

#[test]
fn segment_command_refuses_bad_requests_clearly() {
    let d = common::data_dir().join("abdomen");
    let bin = env!("CARGO_BIN_EXE_medlsam");
    let out = common::Scratch::new("seg-cli");
    let run = |extra: &[&str]| {
        let o = Command::new(bin)
            .args(["segment", "--query"])
            .arg(d.join("msd_spleen_008.ct.nii.gz"))
            .arg("--boxes-from-label")
            .arg(d.join("msd_spleen_008.label.nii.gz"))
            .arg("--out")
            .arg(&out.0)
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--organs", "5"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("organ 5 is not in"), "{err}");
    let (code, err) = run(&["--weights", "/nonexistent/w.bpk"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("run ./dev setup"), "{err}");
    let (code, err) = run(&["--backend", "cuda"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not built"), "{err}");
    let (code, err) = run(&["--margin-px=-3"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("margin") || err.contains("unexpected argument"),
        "{err}"
    );
}

/// The self-check that decides, with one registered support, which organs LiteMedSAM
/// draws inside the registration's boxes: on ts_example's liver and spleen it reaches the
/// trusted DSC; on okbp_002's head-and-neck organs nothing is trusted (the small ones are
/// not even checked, the mandible's ring is drawn filled).
#[test]
fn self_check_trusts_the_abdominal_organs_not_the_head_and_neck_ones() {
    use medlsam::device::BackendChoice;
    use medlsam::pipeline::SegmentOptions;
    use medlsam::pipeline::self_check::{TRUSTED_DSC, one_support_weights, self_check};
    need_weights();
    let mut sam = lite_medsam_segmenter(None, BackendChoice::Cpu, SOFT_TISSUE_WINDOW_HU).unwrap();
    let load = |ct: PathBuf, label: PathBuf| {
        let ct = read_nifti_path(ct).unwrap().into_ct().unwrap();
        let labels = read_nifti_path(label).unwrap().into_labels().unwrap();
        let (c, r) = ct.to_canonical();
        (c, labels.reoriented(&r))
    };
    let opt = SegmentOptions::default();
    let d = common::data_dir().join("abdomen");
    let (ct, labels) = load(
        d.join("ts_example.ct.nii.gz"),
        d.join("ts_example.label.nii.gz"),
    );
    let checks = pollster::block_on(self_check(&ct, &labels, &[1, 5], &mut sam, &opt)).unwrap();
    println!("ts_example: {checks:?}");
    for organ in [1, 5] {
        let c = checks
            .iter()
            .find(|c| c.label == organ)
            .expect("spleen and liver are checked");
        assert!(c.dsc >= TRUSTED_DSC, "organ {organ}: {:.1} %", c.dsc);
        assert!(
            !c.slices.is_empty() && c.slices.len() <= 3,
            "{:?}",
            c.slices
        );
    }
    let (trusted, lines) =
        pollster::block_on(one_support_weights(&[(&ct, &labels)], &[5], &mut sam, &opt)).unwrap();
    assert_eq!(trusted, vec![(5, 0.0)]);
    assert!(
        lines[0].contains("inside the registration's boxes"),
        "{lines:?}"
    );
    // Two supports: no self-check (their fused prior is kept).
    let two = [(&ct, &labels), (&ct, &labels)];
    let (none, _) = pollster::block_on(one_support_weights(&two, &[5], &mut sam, &opt)).unwrap();
    assert!(none.is_empty());

    let (ct, labels) = load(
        common::openkbp("okbp_002", "ct"),
        common::openkbp("okbp_002", "label"),
    );
    let organs: Vec<u16> = (1..=7).collect();
    let checks = pollster::block_on(self_check(&ct, &labels, &organs, &mut sam, &opt)).unwrap();
    println!("okbp_002: {checks:?}");
    assert!(checks.iter().all(|c| c.dsc < TRUSTED_DSC), "{checks:?}");
}
