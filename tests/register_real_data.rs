//! Registration on real CTs: okbp_004 (support) registered to okbp_002 (query) brings
//! the support's organs onto the query far better than lining up the body boxes.

mod common;

use burn::tensor::Device;
use common::openkbp;
use medlsam::metrics::dice_pct;
use medlsam::register::{
    FuseMode, OrganMaps, RegImage, RegisterOptions, Registration, body_box_init, fuse,
    prior_to_canonical, register, warp_labels,
};
use medlsam::volume::labels::mask_of;
use medlsam::volume::{LabelVolume, read_nifti_path};

fn case(name: &str) -> (RegImage, LabelVolume) {
    let ct = read_nifti_path(openkbp(name, "ct"))
        .unwrap()
        .into_ct()
        .unwrap();
    let lab = read_nifti_path(openkbp(name, "label"))
        .unwrap()
        .into_labels()
        .unwrap();
    let (ct_c, r) = ct.to_canonical();
    (RegImage::from_canonical(&ct_c).unwrap(), lab.reoriented(&r))
}

/// Mean DSC (%) over the query's organs of the support's labels warped by `reg`.
fn mean_dsc(
    query: &RegImage,
    truth: &LabelVolume,
    support: &RegImage,
    maps: &OrganMaps,
    reg: &Registration,
) -> (f64, Vec<f64>) {
    let w = warp_labels(query, support, maps, reg).unwrap();
    let prior = fuse(query, &[w], FuseMode::Mean).unwrap();
    let mut d = Vec::new();
    for (o, p) in prior_to_canonical(query, &prior).unwrap() {
        if !truth.data.contains(&o) || maps.maps[(o - 1) as usize].is_empty() {
            continue;
        }
        let pred = p.map(|v| v >= 0.5);
        d.push(dice_pct(&pred, &mask_of(truth, o)).unwrap().unwrap_or(0.0));
    }
    (d.iter().sum::<f64>() / d.len() as f64, d)
}

#[test]
fn registration_beats_body_box_alignment_on_real_ct() {
    let (query, truth) = case("okbp_002");
    let (support, slab) = case("okbp_004");
    let organs: Vec<u16> = (1..=7).collect();
    let maps = OrganMaps::from_canonical_labels(&slab, &support, &organs).unwrap();
    let opts = RegisterOptions {
        top_mm: 250.0,
        ..Default::default()
    };
    let reg = pollster::block_on(register(
        &query,
        &support,
        None,
        &opts,
        &Device::flex(),
        &Default::default(),
    ))
    .unwrap();
    let base = Registration {
        affine: body_box_init(&query, &support).unwrap(),
        deform: None,
        ..reg.clone()
    };
    let (d0, per0) = mean_dsc(&query, &truth, &support, &maps, &base);
    let (d1, per1) = mean_dsc(&query, &truth, &support, &maps, &reg.affine_only());
    let (d2, per2) = mean_dsc(&query, &truth, &support, &maps, &reg);
    println!(
        "body box {d0:.1} {per0:.0?}\naffine {d1:.1} {per1:.0?}\n+bspline {d2:.1} {per2:.0?}\n\
         ncc {:.3?} in {:.1} s",
        reg.ncc, reg.seconds
    );
    assert!(reg.ncc[2] > reg.ncc[0], "{:?}", reg.ncc);
    assert!(
        d1 > d0 + 10.0,
        "the affine should beat body-box alignment clearly: {d1:.1} vs {d0:.1}"
    );
    assert!(
        d2 > d1 + 2.0,
        "the deformable step should improve on the affine: {d2:.1} vs {d1:.1}"
    );
}
