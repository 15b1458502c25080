//! One support at a time: where does registration place each organ compared with MedLAM
//! and with the truth? The data behind the one-support cross-check of
//! `RegisterLocalizer` (MedLAM takes over an organ when the two disagree).
//!
//! ```sh
//! cargo run --release --example single_support -- [--supports 1-5] [--queries 6-15] \
//!     [--data ../shared/data] > single.csv
//! ```
//! One CSV row per (support, query, organ present in both): the registration prior's DSC,
//! the distance (mm) between the centres of the boxes of the prior, MedLAM (WPL) and the
//! truth, and the truth box's diagonal; then the same three for the registration that also
//! starts from MedLAM's organ points (`_start`), and whether `RegisterLocalizer` (one support
//! with its MedLAM fallback) keeps that one ([`agreement`] with MedLAM). A summary on
//! stderr: mean DSC of the registration priors from the body boxes, from MedLAM's points, and
//! as chosen.

use std::path::PathBuf;

use medlsam::metrics::{box_centre_distance_mm, box_diagonal_mm, dice_pct};
use medlsam::oracle::localize_from_labels;
use medlsam::register::{RegisterLocalizer, agreement, located_points, prior_labels};
use medlsam::run::config::{CasePaths, Organs};
use medlsam::run::session::Session;
use medlsam::types::{BoxMode, Localizer, OrganLocalization};
use medlsam::volume::labels::{BoxVox, mask_of};
use medlsam::volume::read_nifti_path;

fn cases(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().expect("number"), b.parse().expect("number"));
        out.extend((a..=b).map(|n| format!("okbp_{n:03}")));
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut supports = cases("1-5");
    let mut queries = cases("6-15");
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    while let Some(a) = args.next() {
        let v = args.next().expect("a value");
        match a.as_str() {
            "--supports" => supports = cases(&v),
            "--queries" => queries = cases(&v),
            "--data" => data = PathBuf::from(v),
            _ => panic!("unknown argument {a}"),
        }
    }
    let dir = data.join("openkbp");
    let exists = |c: &String| dir.join(format!("{c}.ct.nii.gz")).is_file();
    supports.retain(exists);
    queries.retain(exists);
    assert!(
        !queries.is_empty(),
        "no OpenKBP queries under {}",
        dir.display()
    );
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/medlam.bpk");
    let device = burn::tensor::Device::flex();
    println!(
        "support,query,organ,reg_dsc,reg_err_mm,medlam_err_mm,disagree_mm,truth_diag_mm,\
         reg_start_dsc,reg_start_err_mm,disagree_start_mm,start_kept,ncc,ncc_start,medlam_conf"
    );
    // DSC sums of the registration from the body boxes, from MedLAM's points, as chosen.
    let mut sums = [0.0f64; 3];
    let (mut rows, mut pairs, mut kept) = (0usize, 0usize, 0usize);
    for s in &supports {
        let paths = [CasePaths {
            image: dir.join(format!("{s}.ct.nii.gz")),
            label: Some(dir.join(format!("{s}.label.nii.gz"))),
        }];
        let session = Session::open(
            &paths,
            &Organs::All,
            &weights,
            device.clone(),
            Default::default(),
            &mut |_| {},
        )
        .expect("support");
        let mut medlam = session.localizer(BoxMode::Wpl).expect("MedLAM");
        let mut reg = pollster::block_on(RegisterLocalizer::new(
            &session.supports,
            &session.organs,
            BoxMode::Wpl,
            &device,
        ))
        .expect("registration");
        for q in &queries {
            let ct = read_nifti_path(dir.join(format!("{q}.ct.nii.gz")))
                .and_then(|f| f.into_ct())
                .expect("query CT");
            let truth = read_nifti_path(dir.join(format!("{q}.label.nii.gz")))
                .and_then(|f| f.into_labels())
                .expect("query labels");
            let (ct, r) = ct.to_canonical();
            let truth = truth.reoriented(&r);
            let organs = &session.organs;
            let boxes =
                |l: &[OrganLocalization], o: u16| l.iter().find(|x| x.label == o).map(|x| x.bbox);
            let truth_boxes = localize_from_labels(&truth, organs, BoxMode::Wpl, "oracle");
            let found = pollster::block_on(medlam.localize(&ct, organs)).expect("MedLAM");
            let priors = match pollster::block_on(reg.priors(&ct)) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{s} → {q}: {e}");
                    continue;
                }
            };
            let labels = prior_labels(&priors).expect("labels");
            let ncc = reg.ncc.first().copied().unwrap_or(f64::NAN);
            let reg_boxes = localize_from_labels(&labels, organs, BoxMode::Wpl, "register");
            let located = located_points(&found, &ct.affine);
            let started = match pollster::block_on(reg.priors_from(&ct, &located)) {
                Ok(p) => prior_labels(&p).expect("labels"),
                Err(e) => {
                    eprintln!("{s} → {q} (MedLAM start): {e}");
                    continue;
                }
            };
            let ncc_start = reg.ncc.first().copied().unwrap_or(f64::NAN);
            let started_boxes = localize_from_labels(&started, organs, BoxMode::Wpl, "register");
            let keep = agreement(&started_boxes, &found, &ct) > agreement(&reg_boxes, &found, &ct);
            pairs += 1;
            kept += usize::from(keep);
            for &o in organs {
                let Some(tb) = boxes(&truth_boxes, o) else {
                    continue;
                };
                let diag = box_diagonal_mm(&tb, &ct.affine);
                let rb = boxes(&reg_boxes, o);
                let mb = boxes(&found, o);
                let from_truth =
                    |b: Option<BoxVox>| b.map(|b| box_centre_distance_mm(&b, &tb, &ct.affine));
                let dice = |l: &medlsam::volume::LabelVolume| {
                    dice_pct(&mask_of(l, o), &mask_of(&truth, o))
                        .ok()
                        .flatten()
                        .unwrap_or(0.0)
                };
                let (dsc, dsc_start) = (dice(&labels), dice(&started));
                let sb = boxes(&started_boxes, o);
                let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
                let apart = |r: Option<BoxVox>| {
                    r.zip(mb)
                        .map(|(a, b)| box_centre_distance_mm(&a, &b, &ct.affine))
                };
                sums[0] += dsc;
                sums[1] += dsc_start;
                sums[2] += if keep { dsc_start } else { dsc };
                rows += 1;
                println!(
                    "{s},{q},{o},{dsc:.1},{},{},{},{diag:.1},{dsc_start:.1},{},{},{},{ncc:.4},{ncc_start:.4},{}",
                    f(from_truth(rb)),
                    f(from_truth(mb)),
                    f(apart(rb)),
                    f(from_truth(sb)),
                    f(apart(sb)),
                    u8::from(keep),
                    found
                        .iter()
                        .find(|x| x.label == o)
                        .map_or(String::new(), |x| format!("{:.3}", x.confidence)),
                );
            }
        }
    }
    let mean = |x: f64| x / rows.max(1) as f64;
    eprintln!(
        "{rows} organ instances, {pairs} support-query pairs: registration prior DSC from the body boxes {:.2} %, also from MedLAM's points {:.2} %, as chosen {:.2} % (MedLAM's start kept in {kept} pairs)",
        mean(sums[0]),
        mean(sums[1]),
        mean(sums[2]),
    );
}
