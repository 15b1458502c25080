//! MedLAM on the real CTs: localization with the committed weights beats the
//! no-learning baseline, the `localize` command writes its outputs, and
//! training makes progress and resumes exactly.

mod common;

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use common::{Scratch, data_dir, openkbp};
use medlsam::medlam::localize::{localize_organs, query_state};
use medlsam::medlam::sample::SamplingOptions;
use medlsam::medlam::train::{TrainOptions, batch_loss, draw_batch, load_volumes, train};
use medlsam::medlam::{Atlas, LocalizeOptions, MedLam, MedLamConfig, SupportCase};
use medlsam::run::eval_localize::{baseline_localization, load_weights, score};
use medlsam::run::inputs::read_support;
use medlsam::types::BoxMode;
use medlsam::volume::{Volume, read_nifti_path};

fn weights() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/medlam.bpk");
    assert!(
        p.is_file(),
        "the committed MedLAM weights are missing: {}",
        p.display()
    );
    p
}

/// OpenKBP supports and their WPL atlas of `organs`.
fn wpl_atlas(
    net: &MedLam,
    cfg: &MedLamConfig,
    cases: &[&str],
    organs: &[u16],
    dev: &Device,
) -> (Vec<SupportCase>, Atlas) {
    let supports: Vec<_> = cases
        .iter()
        .map(|c| read_support(&openkbp(c, "ct"), &openkbp(c, "label")).unwrap())
        .collect();
    let atlas =
        pollster::block_on(Atlas::build(net, cfg, &supports, organs, BoxMode::Wpl, dev)).unwrap();
    (supports, atlas)
}

/// MedLAM with the default options on a canonical query.
fn localize(
    net: &MedLam,
    cfg: &MedLamConfig,
    atlas: &Atlas,
    canon: &Volume<i16>,
    organs: &[u16],
    dev: &Device,
) -> Vec<medlsam::types::OrganLocalization> {
    let q = pollster::block_on(query_state(net, cfg, canon, dev)).unwrap();
    pollster::block_on(localize_organs(
        net,
        atlas,
        &q,
        organs,
        &LocalizeOptions::default(),
        dev,
    ))
    .unwrap()
}

/// An OpenKBP case's CT and label map on the canonical grid.
fn canonical_case(case: &str) -> (Volume<i16>, Volume<u16>) {
    let ct = read_nifti_path(openkbp(case, "ct"))
        .unwrap()
        .into_ct()
        .unwrap();
    let lab = read_nifti_path(openkbp(case, "label"))
        .unwrap()
        .into_labels()
        .unwrap();
    (ct.to_canonical().0, lab.to_canonical().0)
}

/// Supports and queries: fixed, disjoint OpenKBP cases.
const SUPPORTS: [&str; 5] = ["okbp_004", "okbp_006", "okbp_011", "okbp_013", "okbp_016"];
const QUERIES: [&str; 3] = ["okbp_020", "okbp_031", "okbp_047"];

#[test]
fn localization_beats_the_body_box_baseline_on_head_and_neck_organs() {
    data_dir();
    let dev = Device::flex();
    let (net, cfg) = load_weights(&weights(), &dev).unwrap();
    // Brainstem, both parotids, mandible.
    let organs = [1u16, 3, 4, 7];
    let (supports, atlas) = wpl_atlas(&net, &cfg, &SUPPORTS, &organs, &dev);
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for case in QUERIES {
        let (canon, lab) = canonical_case(case);
        let found = localize(&net, &cfg, &atlas, &canon, &organs, &dev);
        for o in &found {
            let Some(s) = score(o, &lab) else { continue };
            ours.push(s.iou);
            let b = baseline_localization(&supports, &canon, o.label)
                .unwrap()
                .unwrap();
            base.push(score(&b, &lab).unwrap().iou);
            // Confidence is a mean cosine similarity.
            assert!((-1.0..=1.0).contains(&o.confidence), "{}", o.confidence);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (m, b) = (mean(&ours), mean(&base));
    eprintln!(
        "box IoU: MedLAM {m:.1} %, baseline {b:.1} % over {} organs",
        ours.len()
    );
    assert!(ours.len() >= 10);
    assert!(
        m > b + 10.0,
        "MedLAM {m:.1} % is not clearly above the baseline {b:.1} %"
    );
    assert!(m > 35.0, "MedLAM box IoU {m:.1} %");
}

/// Slices `k0..k1` of a volume, with the affine moved to keep every voxel in place.
fn crop_k<T: Copy>(v: &Volume<T>, k0: usize, k1: usize) -> Volume<T> {
    let [nx, ny, _] = v.dims;
    let data = v.data[k0 * nx * ny..k1 * nx * ny].to_vec();
    let mut affine = v.affine;
    let origin = v.affine.voxel_to_world([0.0, 0.0, k0 as f64]);
    for (r, o) in origin.iter().enumerate() {
        affine.m[r][3] = *o;
    }
    Volume::from_data([nx, ny, k1 - k0], data, affine).unwrap()
}

#[test]
fn organs_outside_a_cropped_scan_are_reported_and_get_no_boxes() {
    data_dir();
    let dev = Device::flex();
    let (net, cfg) = load_weights(&weights(), &dev).unwrap();
    // Brainstem (head) and esophagus (neck): two supports and a query that have both.
    let organs = [1u16, 5];
    let (_, atlas) = wpl_atlas(&net, &cfg, &["okbp_013", "okbp_011"], &organs, &dev);
    let (canon, lab) = canonical_case("okbp_004");
    let [nx, ny, nz] = lab.dims;
    let span = |l: u16| {
        let ks: Vec<usize> = (0..nz)
            .filter(|&k| lab.data[k * nx * ny..(k + 1) * nx * ny].contains(&l))
            .collect();
        (ks[0], *ks.last().unwrap())
    };
    let (b0, b1) = (span(1), span(5));
    // Keep the neck side of the scan only: the brainstem is cut off entirely.
    let (k0, k1) = if b1.1 < b0.0 {
        (0, b0.0 - 4)
    } else {
        (b0.1 + 5, nz)
    };
    let find = |ct: &Volume<i16>| localize(&net, &cfg, &atlas, ct, &organs, &dev);
    let found = find(&crop_k(&canon, k0, k1));
    let organ = |l: u16| found.iter().find(|o| o.label == l).unwrap();
    let (brainstem, esophagus) = (organ(1), organ(5));
    eprintln!(
        "slices {k0}..{k1} kept: brainstem in view {:.2} (confidence {:.2}), esophagus in view {:.2} (confidence {:.2})",
        brainstem.in_view, brainstem.confidence, esophagus.in_view, esophagus.confidence
    );
    assert!(brainstem.outside_view(), "brainstem {}", brainstem.in_view);
    assert!(brainstem.slice_boxes.is_empty() && brainstem.confidence == 0.0);
    assert!(!esophagus.outside_view(), "esophagus {}", esophagus.in_view);
    assert!(!esophagus.slice_boxes.is_empty() && esophagus.confidence > 0.5);
    // The uncropped scan shows both.
    let found = find(&canon);
    assert!(found.iter().all(|o| !o.outside_view() && o.in_view > 0.9));
}

#[test]
fn localize_command_writes_boxes_json_and_localization_csv() {
    data_dir();
    let out = Scratch::new("localize");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_medlsam"))
        .args(["localize", "--weights"])
        .arg(weights())
        .args(["--support-image"])
        .arg(openkbp(SUPPORTS[0], "ct"))
        .args(["--support-label"])
        .arg(openkbp(SUPPORTS[0], "label"))
        .args(["--support-image"])
        .arg(openkbp(SUPPORTS[1], "ct"))
        .args(["--support-label"])
        .arg(openkbp(SUPPORTS[1], "label"))
        .args(["--query"])
        .arg(openkbp(QUERIES[0], "ct"))
        .args(["--query-label"])
        .arg(openkbp(QUERIES[0], "label"))
        .args(["--organs", "1,7", "--mode", "spl", "--out"])
        .arg(&out.0)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(out.0.join(format!("{}.boxes.json", QUERIES[0]))).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["case"], QUERIES[0]);
    let organs = j["organs"].as_array().unwrap();
    assert_eq!(organs.len(), 2);
    let dims = read_nifti_path(openkbp(QUERIES[0], "ct"))
        .unwrap()
        .into_ct()
        .unwrap()
        .dims;
    for o in organs {
        assert!(["Brainstem", "Mandible"].contains(&o["name"].as_str().unwrap()));
        assert_eq!(o["extreme_points"].as_array().unwrap().len(), 6);
        let (lo, hi) = (&o["box"]["min"], &o["box"]["max"]);
        for a in 0..3 {
            let (l, h) = (
                lo[a].as_u64().unwrap() as usize,
                hi[a].as_u64().unwrap() as usize,
            );
            assert!(l <= h && h < dims[a], "{o}");
        }
        let sb = o["slice_boxes"].as_array().unwrap();
        // One box per slice of the 3-D box along the slice axis (2 for OpenKBP files).
        let span = hi[2].as_u64().unwrap() - lo[2].as_u64().unwrap() + 1;
        assert_eq!(sb.len() as u64, span);
    }
    let csv = std::fs::read_to_string(out.0.join("localization.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "case,label,name,iou,wd,ale");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with(&format!("{},1,Brainstem,", QUERIES[0])));
    // A mismatched number of support labels is a clear error.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_medlsam"))
        .args([
            "localize",
            "--support-image",
            "a.nii.gz",
            "--query",
            "q.nii.gz",
            "--support-label",
        ])
        .args(["b.nii.gz", "--support-label", "c.nii.gz", "--out"])
        .arg(&out.0)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("one label map per support image"));
    // So is a layout weight outside [0, 1].
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_medlsam"))
        .args(["localize", "--support-image", "a.nii.gz", "--support-label"])
        .args([
            "b.nii.gz",
            "--query",
            "q.nii.gz",
            "--layout-blend",
            "1.5",
            "--out",
        ])
        .arg(&out.0)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("--layout-blend 1.5: give a weight between 0 and 1"),
        "{e}"
    );
    // So is an organ that is not a label value (`all`, like `segment`'s, is one).
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_medlsam"))
        .args(["localize", "--support-image", "a.nii.gz", "--support-label"])
        .args([
            "b.nii.gz", "--query", "q.nii.gz", "--organs", "1,x", "--out",
        ])
        .arg(&out.0)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("organ \"x\" is not a label value"), "{e}");
}

/// Small widths; patch 32 so that the bottleneck after 4 poolings is 2³ (on a 1³ bottleneck
/// instance norm outputs zeros and the position head sees a constant).
/// Burn's CPU backend keeps one random generator per process (`Device::seed` sets it for
/// every thread): tests that seed it and initialise a network take this lock, or a test
/// running in parallel draws from the generator between their seed and their draws.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn backend_rng() -> std::sync::MutexGuard<'static, ()> {
    BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny_config() -> MedLamConfig {
    MedLamConfig::new(32, [4, 8, 8, 16, 16], [16, 8, 8, 8], [16, 8]).with_decoder_levels(3)
}

/// A small training run on `images` under `root/dir` (tiny network, 4 MSS points per patch).
fn tiny_run(root: &std::path::Path, dir: &str, images: &[PathBuf]) -> TrainOptions {
    TrainOptions {
        images: images.to_vec(),
        out: root.join(dir).join("w.bpk"),
        config: tiny_config(),
        epochs: 3,
        batch: 1,
        lr: 1e-3,
        seed: 7,
        resume: false,
        checkpoint_dir: root.join(dir).join("ckpt"),
        cache_dir: Some(root.join("cache")),
        checkpoint_every: 2,
        log_every: 1,
        max_steps: None,
        sampling: SamplingOptions {
            points: 4,
            ..Default::default()
        },
        backend: Default::default(),
        init: None,
    }
}

#[test]
fn training_steps_reduce_the_loss_on_real_ct_patches() {
    let _rng = backend_rng();
    let scratch = Scratch::new("train-steps");
    let images: Vec<PathBuf> = ["okbp_001", "okbp_002"]
        .iter()
        .map(|c| openkbp(c, "ct"))
        .collect();
    let (vols, skipped) = load_volumes(&images, Some(&scratch.0)).unwrap();
    assert!(skipped.is_empty() && vols.len() == 2);
    let cfg = tiny_config();
    let dev = Device::flex().autodiff();
    dev.seed(1);
    let mut net = cfg.init(&dev).unwrap();
    let mut optim = AdamConfig::new().init();
    let samples = draw_batch(&vols, 1, 0, 2, &cfg, &SamplingOptions::default());
    let value = |t: &burn::tensor::Tensor<1>| {
        t.clone()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap()[0]
    };
    let mut first = None;
    let mut last = (0.0, 0.0);
    for _ in 0..25 {
        let l = batch_loss(&net, &samples, &cfg, &dev, false);
        let (u, m) = (value(&l.uam), value(&l.mss));
        first.get_or_insert((u, m));
        last = (u, m);
        let grads = GradientsParams::from_grads(l.total.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    let first = first.unwrap();
    eprintln!(
        "uam {:.2} → {:.2}, mss {:.3} → {:.3}",
        first.0, last.0, first.1, last.1
    );
    assert!(last.0 < 0.5 * first.0, "UAM loss {first:?} → {last:?}");
    assert!(last.1 < 0.9 * first.1, "MSS loss {first:?} → {last:?}");
    assert!(net.num_params() > 0);
}

#[test]
fn training_run_checkpoints_and_resumes_exactly() {
    let _rng = backend_rng();
    let scratch = Scratch::new("train-resume");
    let images: Vec<PathBuf> = ["okbp_003", "okbp_005"]
        .iter()
        .map(|c| openkbp(c, "ct"))
        .collect();
    let opts = |dir: &str, max_steps| TrainOptions {
        resume: true,
        max_steps,
        ..tiny_run(&scratch.0, dir, &images)
    };
    let whole = train(&opts("a", None), &mut |_| {}).unwrap();
    assert_eq!(whole.steps, 6);
    assert_eq!(whole.history.len(), 3);
    // Interrupted after 3 steps, then resumed: same final validation losses.
    let part = train(&opts("b", Some(3)), &mut |_| {}).unwrap();
    assert_eq!(part.steps, 3);
    let mut resumed_at = None;
    let rest = train(&opts("b", None), &mut |e| {
        if let medlsam::medlam::train::TrainEvent::Resumed { step, .. } = e {
            resumed_at = Some(step);
        }
    })
    .unwrap();
    assert_eq!(resumed_at, Some(3));
    assert_eq!(rest.steps, 6);
    assert_eq!(rest.validation.total, whole.validation.total);
    assert_eq!(rest.validation.mss, whole.validation.mss);
    // The weights file loads with its config.
    let (_, cfg) = load_weights(&opts("b", None).out, &Device::flex()).unwrap();
    assert_eq!(cfg, tiny_config());
}

#[test]
fn prepared_training_volumes_load_like_their_ct_and_bad_ones_are_named() {
    use medlsam::medlam::train::{expand_images, export_prepared};
    let scratch = Scratch::new("train-prepared");
    let ct = openkbp("okbp_003", "ct");
    let dir = scratch.0.join("prepared");
    let (written, skipped) = export_prepared(std::slice::from_ref(&ct), &dir).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(written, vec![dir.join("okbp_003.medlam")]);
    // A file that is not a prepared volume is skipped with its name, not loaded.
    std::fs::write(dir.join("broken.medlam"), b"MLC1 truncated").unwrap();
    let listed = expand_images(&[dir.display().to_string()]).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (from_file, skipped) = load_volumes(&listed, None).unwrap();
    assert_eq!(from_file.len(), 1);
    assert!(
        skipped.len() == 1 && skipped[0].contains("broken.medlam"),
        "{skipped:?}"
    );
    let (from_ct, _) = load_volumes(&[ct], None).unwrap();
    assert_eq!(from_file[0].name, "okbp_003");
    assert_eq!(from_file[0].vol.dims, from_ct[0].vol.dims);
    assert_eq!(from_file[0].vol.data, from_ct[0].vol.data);
}

#[test]
fn training_can_start_from_given_weights_of_the_same_config() {
    let _rng = backend_rng();
    let scratch = Scratch::new("train-init");
    let images = vec![openkbp("okbp_003", "ct")];
    let opts = |dir: &str, lr: f64, init: Option<PathBuf>, config: MedLamConfig| TrainOptions {
        config,
        epochs: 2,
        lr,
        seed: 3,
        checkpoint_every: 10,
        init,
        ..tiny_run(&scratch.0, dir, &images)
    };
    let first = opts("a", 1e-3, None, tiny_config());
    train(&first, &mut |_| {}).unwrap();
    // With a zero learning rate the run keeps the initial weights: the written network
    // computes exactly what the given one does.
    let again = opts("b", 0.0, Some(first.out.clone()), tiny_config());
    train(&again, &mut |_| {}).unwrap();
    let dev = Device::flex();
    let (a, _) = load_weights(&first.out, &dev).unwrap();
    let (b, _) = load_weights(&again.out, &dev).unwrap();
    let x = burn::tensor::Tensor::<5>::random(
        [1, 1, 32, 32, 32],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &dev,
    );
    let (pa, pb) = (a.position(x.clone()), b.position(x));
    pa.into_data().assert_eq(&pb.into_data(), true);
    // Weights of another network are refused with a clear message.
    let other =
        MedLamConfig::new(32, [4, 8, 8, 16, 32], [16, 8, 8, 8], [16, 8]).with_decoder_levels(3);
    let e = train(
        &opts("c", 1e-3, Some(first.out.clone()), other),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("another config"), "{e}");
}
