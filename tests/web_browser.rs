//! Browser tests (wasm32 only), run in headless Chromium with SwiftShader WebGPU by
//! `wasm-bindgen-test-runner` (`./dev test` runs them; flags in `webdriver.json`):
//! the parts that differ in the browser — NIfTI from in-memory bytes, asynchronous
//! reads from the GPU —, that MedLAM computes the same numbers on WebGPU as on Burn's
//! CPU backend in the same page, and that the int8 web copy of LiteMedSAM on WebGPU
//! agrees with the PyTorch goldens.
#![cfg(target_arch = "wasm32")]

#[path = "common/numeric.rs"]
mod numeric;
use numeric::{max_abs_diff, range};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use medlsam::medlam::net::MedLamConfig;
use medlsam::sam::model::SamConfig;
use medlsam::sam::predictor::{SamSegmenter, SlicePrompt};
use medlsam::sam::preprocess::Preprocess;
use medlsam::sam::weights::load_bpk_bytes;
use medlsam::volume::nifti_io::write_nifti_bytes;
use medlsam::volume::read_nifti_bytes;
use medlsam::volume::synthetic::{PhantomOptions, phantom};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

thread_local! {
    static GPU: std::cell::RefCell<Option<Device>> = const { std::cell::RefCell::new(None) };
}

/// The page's WebGPU device (initialised once: the runtime registers it for the page's life).
async fn webgpu() -> Device {
    if let Some(d) = GPU.with_borrow(|g| g.clone()) {
        return d;
    }
    let d = Device::wgpu_options()
        .init_async()
        .await
        .expect("WebGPU device (Chromium needs --enable-unsafe-webgpu)");
    GPU.with_borrow_mut(|g| *g = Some(d.clone()));
    d
}

async fn read(t: Tensor<1>) -> Vec<f32> {
    t.into_data_async()
        .await
        .expect("async read")
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// Deterministic pseudo-random values in [0, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

#[wasm_bindgen_test]
fn nifti_round_trip_through_bytes() {
    let (ct, lab) = phantom(&PhantomOptions {
        dims: [24, 20, 16],
        spacing_mm: [6.0; 3],
        ras: true,
        ..Default::default()
    })
    .unwrap();
    let back = read_nifti_bytes(&write_nifti_bytes(&ct, true).unwrap())
        .unwrap()
        .into_ct()
        .unwrap();
    assert_eq!(back, ct);
    let back = read_nifti_bytes(&write_nifti_bytes(&lab, true).unwrap())
        .unwrap()
        .into_labels()
        .unwrap();
    assert_eq!(back, lab);
    let e = read_nifti_bytes(&[0x1f, 0x8b, 8, 0, 0])
        .err()
        .expect("truncated gzip is refused")
        .to_string();
    assert!(e.contains("corrupt") || e.contains("truncated"), "{e}");
}

#[wasm_bindgen_test]
async fn webgpu_reads_back_asynchronously() {
    let gpu = webgpu().await;
    let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.5], [3]), &gpu);
    assert_eq!(read(x.clone().mul_scalar(2.0)).await, vec![2.0, 4.0, 7.0]);
    assert_eq!(read(x.sum()).await, vec![6.5]);
}

/// The int8 web copy of LiteMedSAM on WebGPU against the PyTorch goldens
/// (`tools/sam_golden.py`) on a real abdominal slice: the browser's whole SAM path.
#[wasm_bindgen_test]
async fn litemedsam_int8_on_webgpu_agrees_with_pytorch() {
    const WEIGHTS: &[u8] = include_bytes!("../weights/lite_medsam.q8.bpk");
    const CT: &[u8] = include_bytes!("../../shared/data/abdomen/msd_spleen_008.ct.nii.gz");
    const EMBEDDING: &[u8] = include_bytes!("golden/sam/msd_spleen_008_k16_embedding.bin");
    const MASK: &[u8] = include_bytes!("golden/sam/msd_spleen_008_k16_label1_mask.bits");
    const STRIDE: usize = 8; // every 8th embedding channel is stored
    const BOX: [f32; 4] = [319.0, 195.0, 444.0, 368.0]; // the golden's spleen box, slice pixels

    let gpu = webgpu().await;
    let model = load_bpk_bytes(&SamConfig::lite_medsam(), WEIGHTS.to_vec(), &gpu).unwrap();
    let seg = SamSegmenter::new(model, gpu, Preprocess::default());
    let (ct, _) = read_nifti_bytes(CT)
        .unwrap()
        .into_ct()
        .unwrap()
        .to_canonical();
    let [w, h, _] = ct.dims;
    let slice: Vec<f32> = ct.axial_slice(16).iter().map(|&v| v as f32).collect();
    let emb = seg.embed(&slice, w, h).unwrap();

    let all = read(emb.embedding.clone().flatten(0, 3)).await;
    let ours: Vec<f32> = all
        .chunks(64 * 64)
        .step_by(STRIDE)
        .flatten()
        .copied()
        .collect();
    let gold: Vec<f32> = EMBEDDING
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let rel = max_abs_diff(&ours, &gold) / range(&gold);
    assert!(rel < 0.1, "int8 embedding differs by {rel:.3} of its range");

    let prob = seg
        .decode_probabilities(&emb, &[SlicePrompt::from_box(BOX)])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let gold_mask: Vec<bool> = (0..w * h)
        .map(|i| MASK[i / 8] >> (7 - i % 8) & 1 == 1)
        .collect();
    let mask: Vec<bool> = prob.iter().map(|&p| p > 0.5).collect();
    let inter = mask
        .iter()
        .zip(&gold_mask)
        .filter(|(a, b)| **a && **b)
        .count();
    let total = mask.iter().filter(|v| **v).count() + gold_mask.iter().filter(|v| **v).count();
    let dsc = 200.0 * inter as f64 / total as f64;
    assert!(
        dsc >= 98.0,
        "int8 on WebGPU: spleen mask DSC {dsc:.2} % vs PyTorch f32"
    );
}

#[wasm_bindgen_test]
async fn medlam_on_webgpu_matches_the_cpu_backend() {
    let (cpu, gpu) = (Device::flex(), webgpu().await);
    let config = MedLamConfig::new(32, [8, 16, 32, 64, 128], [64, 32, 16, 8], [128, 64])
        .with_decoder_levels(3);
    let net = config.init(&cpu).unwrap();
    let net_gpu = net.clone().to_device(&gpu);
    let p = config.patch;
    let x = noise(2 * p * p * p, 3);
    let input = |d: &Device| Tensor::<5>::from_data(TensorData::new(x.clone(), [2, 1, p, p, p]), d);
    let (oc, og) = (net.forward(input(&cpu)), net_gpu.forward(input(&gpu)));
    let (pc, pg) = (
        read(oc.position.flatten(0, 1)).await,
        read(og.position.flatten(0, 1)).await,
    );
    let d = max_abs_diff(&pc, &pg);
    assert!(d <= 1e-3 * range(&pc).max(1e-3), "position differs by {d}");
    for (fc, fg) in oc.features.into_iter().zip(og.features) {
        let (fc, fg) = (read(fc.flatten(0, 4)).await, read(fg.flatten(0, 4)).await);
        let d = max_abs_diff(&fc, &fg);
        assert!(d <= 1e-3 * range(&fc), "features differ by {d}");
    }
}
