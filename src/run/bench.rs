//! Benchmarks: LiteMedSAM per slice and per box (`medlsam bench sam`) and MedLAM's
//! atlas and localization on OpenKBP (`medlsam bench medlam`), with peak memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use super::eval_localize::{case_path, load_weights, openkbp_index, score, slice_box_iou};
use super::inputs::{load_ct, load_labels, read_support};
use super::peak_memory_mib;
use super::session::{lite_medsam_segmenter, medlam_localizer};
use crate::device::BackendChoice;
use crate::medlam::LocalizeOptions;
use crate::medlam::localize::MedLamLocalizer;
use crate::sam::predictor::{SamSegmenter, SliceEmbedding, SlicePrompt};
use crate::sam::preprocess::SOFT_TISSUE_WINDOW_HU;
use crate::types::{BoxMode, Localizer, SliceSegmenter};
use crate::{Error, Result};

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
    let (canon, _) = load_ct(&b.ct)?.to_canonical();
    let [nx, ny, nz] = canon.dims;
    let n = b.slices.max(1);
    let ks: Vec<usize> = (0..=n).map(|i| nz / 4 + i * (nz / 2) / (n + 1)).collect();
    let boxes = bench_boxes(nx, ny, b.boxes.max(1));
    let slices: Vec<Vec<f32>> = ks
        .iter()
        .map(|&k| canon.axial_slice(k).iter().map(|&v| v as f32).collect())
        .collect();
    let times = time_slices(&seg, &ks, &slices, &boxes, [nx, ny])?;
    let (em, emed) = stats(&times.enc);
    let (d1m, d1med) = stats(&times.dec_single);
    let (dbm, dbmed) = stats(&times.dec_batch);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "LiteMedSAM on {} ({}), {} slices {nx}×{ny} of {}, {} boxes per slice",
        b.backend.name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        times.enc.len(),
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
    if let crate::sam::model::ImageEncoder::TinyVit(enc) = &seg.model.image_encoder {
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

/// `count` centred boxes from 30 % to 80 % of the slice.
fn bench_boxes(nx: usize, ny: usize, count: usize) -> Vec<[f32; 4]> {
    (0..count)
        .map(|i| {
            let f = 0.15 + 0.25 * i as f32 / count as f32;
            let (cx, cy) = (nx as f32 / 2.0, ny as f32 / 2.0);
            let (hw, hh) = (f * nx as f32, f * ny as f32);
            [cx - hw, cy - hh, cx + hw, cy + hh]
        })
        .collect()
}

/// Wait for an embedding (read back one value).
fn sync(e: &SliceEmbedding) {
    let _ = e
        .embedding
        .clone()
        .slice([0..1, 0..1, 0..1, 0..1])
        .into_data();
}

fn print_peak(note: &str) {
    match peak_memory_mib() {
        Some(m) => println!("peak memory          {m:8.0} MiB ({note})"),
        None => println!("peak memory          unknown"),
    }
}

/// Mean and median.
fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s.iter().sum::<f64>() / s.len() as f64, s[s.len() / 2])
}

/// Milliseconds per timed slice (the first one warms up).
struct SliceTimes {
    /// Encoder per slice.
    enc: Vec<f64>,
    /// Decoder per box, one box per call.
    dec_single: Vec<f64>,
    /// Decoder per box, all boxes in one call.
    dec_batch: Vec<f64>,
}

/// Encode each slice (`dims` = [nx, ny]) and decode the boxes on it, one by one and batched.
fn time_slices(
    seg: &SamSegmenter,
    ks: &[usize],
    slices: &[Vec<f32>],
    boxes: &[[f32; 4]],
    [nx, ny]: [usize; 2],
) -> Result<SliceTimes> {
    let mut enc = Vec::new();
    let mut dec_single = Vec::new();
    let mut dec_batch = Vec::new();
    for (i, (&k, slice)) in ks.iter().zip(slices).enumerate() {
        let t = web_time::Instant::now();
        let emb = seg.embed(slice, nx, ny)?;
        sync(&emb);
        let e = t.elapsed().as_secs_f64() * 1e3;
        // The batch gets its own copy: the decoder's image side, made by the first decode on an
        // embedding and kept with it, is timed in both (once per slice in each).
        let emb_batch = emb.clone();
        let t = web_time::Instant::now();
        for &bb in boxes {
            pollster::block_on(seg.decode_probabilities(&emb, &[SlicePrompt::from_box(bb)]))?;
        }
        let d1 = t.elapsed().as_secs_f64() * 1e3 / boxes.len() as f64;
        let prompts: Vec<SlicePrompt> = boxes.iter().map(|&bb| SlicePrompt::from_box(bb)).collect();
        let t = web_time::Instant::now();
        pollster::block_on(seg.decode_probabilities(&emb_batch, &prompts))?;
        let db = t.elapsed().as_secs_f64() * 1e3 / boxes.len() as f64;
        if i == 0 {
            println!("warm-up slice {k}: encoder {e:.0} ms, decoder {d1:.0} ms/box");
            continue;
        }
        enc.push(e);
        dec_single.push(d1);
        dec_batch.push(db);
    }
    Ok(SliceTimes {
        enc,
        dec_single,
        dec_batch,
    })
}

/// Median wall time of each TinyViT stage (the device is synchronised after each).
fn tiny_vit_stage_times(
    enc: &crate::sam::tiny_vit::TinyVit,
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

/// `medlsam bench medlam`: time the atlas (5 supports, 7 organs) and the localization of
/// a few OpenKBP queries, WPL and SPL, on a device. Returns the report.
pub fn bench_medlam(
    data_dir: &Path,
    weights: &Path,
    queries: usize,
    device: &Device,
    log: &mut dyn FnMut(String),
) -> Result<String> {
    let (net, config) = load_weights(weights, device)?;
    let index = openkbp_index(data_dir)?;
    let organs: Vec<u16> = (1..=7).collect();
    let complete = complete_cases(&index, queries)?;
    let supports = complete[..5]
        .iter()
        .map(|c| {
            read_support(
                &case_path(data_dir, c, "ct"),
                &case_path(data_dir, c, "label"),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut report = format!(
        "MedLAM benchmark: {} (patch {}), 5 supports ({}), 7 organs\n",
        weights.display(),
        config.patch,
        complete[..5]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for mode in [
        BoxMode::Wpl,
        BoxMode::Spl {
            slab_mm: crate::medlam::boxes::DEFAULT_SLAB_MM,
        },
    ] {
        let t = Instant::now();
        let mut localizer = pollster::block_on(medlam_localizer(
            &net,
            &config,
            &supports,
            &organs,
            mode,
            LocalizeOptions::default(),
            device,
        ))?;
        let atlas_s = t.elapsed().as_secs_f64();
        let cases = &complete[5..5 + queries];
        report.push_str(&bench_mode(
            &mut localizer,
            mode,
            data_dir,
            cases,
            &organs,
            atlas_s,
            log,
        )?);
    }
    Ok(report)
}

/// The OpenKBP cases with all 7 organs (at least 5 supports and `queries` more).
fn complete_cases(index: &[(String, Vec<String>)], queries: usize) -> Result<Vec<&String>> {
    let all = [
        "Brainstem",
        "SpinalCord",
        "RightParotid",
        "LeftParotid",
        "Esophagus",
        "Larynx",
        "Mandible",
    ];
    let complete: Vec<&String> = index
        .iter()
        .filter(|(_, o)| all.iter().all(|w| o.iter().any(|x| x == w)))
        .map(|(c, _)| c)
        .collect();
    if complete.len() < 5 + queries {
        return Err(Error::InvalidArgument(
            "not enough complete OpenKBP cases for the benchmark".into(),
        ));
    }
    Ok(complete)
}

/// Localize the query `cases` with the localizer of one box mode (its atlas took `atlas_s`):
/// the report's line.
fn bench_mode(
    localizer: &mut MedLamLocalizer,
    mode: BoxMode,
    data_dir: &Path,
    cases: &[&String],
    organs: &[u16],
    atlas_s: f64,
    log: &mut dyn FnMut(String),
) -> Result<String> {
    let points: usize = localizer
        .atlas
        .organs
        .iter()
        .map(|o| 6 * o.parts.len())
        .sum();
    let mut times = Vec::new();
    let (mut ious, mut slice_ious) = (Vec::new(), Vec::new());
    for case in cases {
        let ct = load_ct(&case_path(data_dir, case, "ct"))?;
        let (canon, _) = ct.to_canonical();
        let lab = load_labels(&case_path(data_dir, case, "label"))?
            .to_canonical()
            .0;
        let t = Instant::now();
        let found = pollster::block_on(localizer.localize(&canon, organs))?;
        times.push(t.elapsed().as_secs_f64());
        for o in &found {
            ious.extend(score(o, &lab).map(|s| s.iou));
            slice_ious.extend(slice_box_iou(o, &lab));
        }
        log(format!(
            "{mode:?} {case}: {} organs in {:.2} s",
            found.len(),
            times.last().unwrap()
        ));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(format!(
        "{:<28} atlas {:>6.1} s ({points} support points) | per query (7 organs): mean {:.2} s, min {:.2} s over {} queries | 3-D box IoU {:.1} %, 2-D slice-box IoU {:.1} %\n",
        format!("{mode:?}"),
        atlas_s,
        mean(&times),
        times.iter().copied().fold(f64::INFINITY, f64::min),
        times.len(),
        mean(&ious),
        mean(&slice_ious)
    ))
}
