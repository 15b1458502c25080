//! Browser tests (wasm32 only), run in headless Chromium with SwiftShader WebGPU by
//! `wasm-bindgen-test-runner` (`./dev test` runs them; flags in `webdriver.json`):
//! the parts that differ in the browser — NIfTI from in-memory bytes, asynchronous
//! reads from the GPU — and that LiteMedSAM and MedLAM compute the same numbers on
//! WebGPU as on Burn's CPU backend in the same page (same randomly initialised weights:
//! the point is the kernels, not the weights, which the native golden tests cover).
#![cfg(target_arch = "wasm32")]

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
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
        .to_vec::<f32>()
        .expect("f32 data")
}

/// Deterministic pseudo-random values in [0, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn range(a: &[f32]) -> f32 {
    let (lo, hi) = a
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    hi - lo
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

#[wasm_bindgen_test]
async fn litemedsam_on_webgpu_matches_the_cpu_backend() {
    let (cpu, gpu) = (Device::flex(), webgpu().await);
    // The same weights on both devices, moved as the app moves them: burnpack bytes.
    let config = SamConfig::lite_medsam();
    let model = config.init(&cpu);
    let mut store = BurnpackStore::from_bytes(None);
    model.save_into(&mut store).unwrap();
    let bytes = store.get_bytes().unwrap().to_vec();
    let on_gpu_model = load_bpk_bytes(&config, bytes, &gpu).unwrap();
    let mut on_cpu = SamSegmenter::new(model, cpu, Preprocess::default());
    let mut on_gpu = SamSegmenter::new(on_gpu_model, gpu, Preprocess::default());
    // A 96×80 "slice" in HU with structure, and a box and a point prompt on it.
    let (w, h) = (96, 80);
    let slice: Vec<f32> = noise(w * h, 7)
        .iter()
        .enumerate()
        .map(|(p, v)| {
            let (i, j) = ((p % w) as f32, (p / w) as f32);
            let blob = ((i - 40.0).powi(2) + (j - 35.0).powi(2) < 300.0) as i32 as f32;
            -100.0 + 150.0 * blob + 60.0 * v
        })
        .collect();
    let (ec, eg) = (
        on_cpu.embed(&slice, w, h).unwrap(),
        on_gpu.embed(&slice, w, h).unwrap(),
    );
    let (vc, vg) = (
        read(ec.embedding.clone().flatten(0, 3)).await,
        read(eg.embedding.clone().flatten(0, 3)).await,
    );
    let d = max_abs_diff(&vc, &vg);
    assert!(
        d <= 1e-3 * range(&vc),
        "embedding differs by {d} (range {})",
        range(&vc)
    );
    let prompts = [
        SlicePrompt::from_box([20.0, 15.0, 60.0, 55.0]),
        SlicePrompt {
            bbox: None,
            points: vec![medlsam::sam::predictor::PromptPoint {
                xy: [40.0, 35.0],
                positive: true,
            }],
        },
    ];
    let pc = on_cpu.decode_probabilities(&ec, &prompts).await.unwrap();
    let pg = on_gpu.decode_probabilities(&eg, &prompts).await.unwrap();
    for (a, b) in pc.iter().zip(&pg) {
        assert_eq!(a.len(), w * h);
        let d = max_abs_diff(a, b);
        assert!(d < 1e-3, "probabilities differ by {d}");
    }
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
