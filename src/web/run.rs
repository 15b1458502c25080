//! The Run flow in the browser (wasm32 only): the compute device (WebGPU, or
//! the CPU backend in wasm when WebGPU is missing), the models built from
//! weights fetched from the page's origin, the support atlas, and for each
//! query localize → segment every slice once, with progress, ETA and Cancel.
//! Also re-segmenting one slice from a user's box or points.
//!
//! Nothing here touches the DOM: the app shell passes callbacks for progress.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use burn::tensor::Device;

use super::fetch::{fetch_manifest, fetch_weights};
use crate::medlam::atlas::{SupportCase, SupportOrgans};
use crate::medlam::localize::LocalizeOptions;
use crate::medlam::net::{MedLam, MedLamConfig};
use crate::metrics::{LabelMetrics, evaluate_labels};
use crate::pipeline::{CanonicalResult, DEFAULT_PRIOR_WEIGHT, SegmentOptions, segment_canonical};
use crate::run::session::{RunLocalizer, with_self_check};
use crate::sam::model::SamConfig;
use crate::sam::predictor::{SamSegmenter, SlicePrompt};
use crate::sam::preprocess::Preprocess;
use crate::sam::weights::load_bpk_bytes;
use crate::types::{
    BoxMode, LocalizerChoice, OrganLocalization, Progress, SliceSegmenter, StageTimes,
};
use crate::volume::{CtVolume, LabelVolume};
use crate::{Error, Result};

use super::manifest::WEB_WEIGHTS;
use super::{BackendChoice, CPU_CHOSEN};

/// Weights files of the web build (in `weights/`).
const SAM_WEIGHTS: &str = WEB_WEIGHTS[0];
const MEDLAM_WEIGHTS: &str = WEB_WEIGHTS[1];

/// The device and the two models, built once per page.
pub struct Models {
    pub device: Device,
    /// What the user is told about the backend.
    pub backend: String,
    /// The models run on WebGPU (else on the CPU in wasm).
    pub webgpu: bool,
    pub sam: SamSegmenter,
    pub medlam: MedLam,
    pub medlam_config: MedLamConfig,
}

/// WebGPU when the browser has it and an adapter comes up, else Burn's CPU backend
/// in wasm; the CPU backend straight away when the page asked for it (`?backend=cpu`).
/// Returns the device, what the user is told about it, and whether it is WebGPU.
pub async fn init_device(choice: BackendChoice) -> (Device, String, bool) {
    if choice == BackendChoice::Cpu {
        return (Device::flex(), CPU_CHOSEN.into(), false);
    }
    match Device::wgpu_options().init_async().await {
        Ok(d) => (d, "WebGPU".into(), true),
        Err(e) => (
            Device::flex(),
            format!("CPU in WebAssembly (WebGPU unavailable: {e}); slower"),
            false,
        ),
    }
}

/// Fetch, verify and build both models; `progress(what, fraction)` while downloading.
pub async fn load_models(
    choice: BackendChoice,
    progress: &mut dyn FnMut(&str, f64),
) -> Result<Models> {
    progress("starting the compute device", 0.0);
    let (device, backend, webgpu) = init_device(choice).await;
    let manifest = fetch_manifest().await?;
    let total: u64 = [SAM_WEIGHTS, MEDLAM_WEIGHTS]
        .iter()
        .map(|n| manifest.entry(n).map(|e| e.bytes))
        .sum::<Result<u64>>()?;
    let mut before = 0u64;
    let mut files = Vec::new();
    for name in [SAM_WEIGHTS, MEDLAM_WEIGHTS] {
        let label = format!("downloading model weights ({name})");
        let bytes = fetch_weights(&manifest, name, &mut |got, _| {
            progress(&label, (before + got) as f64 / total.max(1) as f64)
        })
        .await?;
        before += bytes.len() as u64;
        files.push(bytes);
    }
    progress("building the models", 1.0);
    // The page gets a turn before and between the two (each blocks it ~1 s on a laptop core).
    super::yield_to_browser().await;
    let medlam_bytes = files.pop().expect("two files");
    let sam_bytes = files.pop().expect("two files");
    let sam_model = load_bpk_bytes(&SamConfig::lite_medsam(), sam_bytes, &device)?;
    let sam = SamSegmenter::new(sam_model, device.clone(), Preprocess::default());
    super::yield_to_browser().await;
    let (medlam, medlam_config) = MedLam::from_bytes(&medlam_bytes, &device)?;
    Ok(Models {
        device,
        backend,
        webgpu,
        sam,
        medlam,
        medlam_config,
    })
}

/// A support as the page holds it (canonical grid).
pub struct SupportInput {
    pub name: String,
    pub ct: CtVolume,
    pub labels: Option<LabelVolume>,
    pub points: Vec<(u16, [[usize; 3]; 6])>,
}

/// What one query gave.
pub struct QueryOutcome {
    pub result: CanonicalResult,
    /// Against the query's label map, when the user gave one.
    pub metrics: Option<Vec<LabelMetrics>>,
}

/// Progress of a whole run: stage, fraction of the run done, seconds left (estimated).
#[derive(Clone, Debug)]
pub struct RunProgress {
    pub stage: String,
    pub fraction: f64,
    pub eta_s: Option<f64>,
}

/// Time spent per stage over a whole run (all queries).
#[derive(Clone, Copy, Debug, Default)]
pub struct RunTimes {
    pub atlas: Duration,
    /// Summed over the queries.
    pub queries: StageTimes,
    /// The models ran on WebGPU: its work is queued and finishes at the next read-back (the
    /// decoder's masks), so the encoder/decoder split of the clock means nothing there.
    pub gpu: bool,
}

impl RunTimes {
    /// One line for the user, e.g. "atlas 3 s, localization 4 s, segmentation 98 s (encoder 94 s,
    /// decoder 4 s)"; without the split on WebGPU.
    pub fn summary(&self) -> String {
        let q = &self.queries;
        let mut line = format!(
            "atlas {:.0} s, localization {:.0} s, segmentation {:.0} s",
            self.atlas.as_secs_f64(),
            q.localize.as_secs_f64(),
            (q.encode + q.decode).as_secs_f64(),
        );
        if !self.gpu {
            line += &format!(
                " (encoder {:.0} s, decoder {:.0} s)",
                q.encode.as_secs_f64(),
                q.decode.as_secs_f64()
            );
        }
        line
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub organs: Vec<u16>,
    pub mode: BoxMode,
    /// What places the organs (as the CLI's `--localizer`).
    pub localizer: LocalizerChoice,
    /// Weight of the registration priors (as the CLI's `--prior-weight`; `None`: automatic).
    pub prior_weight: Option<f32>,
}

fn support_cases(supports: Vec<SupportInput>) -> Result<Vec<SupportCase>> {
    supports
        .into_iter()
        .map(|s| {
            let organs = match (s.labels, s.points.is_empty()) {
                (Some(l), true) => SupportOrgans::Labels(l),
                (None, false) => SupportOrgans::Points(s.points),
                (Some(_), false) => {
                    return Err(Error::InvalidArgument(format!(
                        "support {} has both a label map and clicked points: remove one",
                        s.name
                    )));
                }
                (None, true) => {
                    return Err(Error::InvalidArgument(format!(
                        "support {} has no label map and no organ marked by 6 points",
                        s.name
                    )));
                }
            };
            Ok(SupportCase {
                name: s.name,
                ct: s.ct,
                organs,
            })
        })
        .collect()
}

/// Localize and segment every query; `on_query(index, outcome)` as each one ends.
/// Returns the time spent per stage.
pub async fn run(
    models: &mut Models,
    supports: Vec<SupportInput>,
    queries: &[(CtVolume, Option<LabelVolume>)],
    settings: &RunSettings,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(RunProgress),
    on_query: &mut dyn FnMut(usize, QueryOutcome),
) -> Result<RunTimes> {
    if queries.is_empty() {
        return Err(Error::InvalidArgument("load at least one query CT".into()));
    }
    if settings.organs.is_empty() {
        return Err(Error::InvalidArgument("choose at least one organ".into()));
    }
    let start = web_time::Instant::now();
    progress(RunProgress {
        stage: "support atlas".into(),
        fraction: 0.0,
        eta_s: None,
    });
    // Let the page paint the progress (the CPU backend's work never yields by itself).
    super::yield_to_browser().await;
    let mut times = RunTimes {
        gpu: models.webgpu,
        ..Default::default()
    };
    let cases = support_cases(supports)?;
    let mut localizer = build_localizer(models, &cases, settings).await?;
    // One registered support: the organs LiteMedSAM draws well on it are drawn by it.
    let opt = with_self_check(
        SegmentOptions {
            prior_weight: settings.prior_weight.unwrap_or(DEFAULT_PRIOR_WEIGHT),
            ..Default::default()
        },
        settings.prior_weight.is_none(),
        &localizer,
        &cases,
        &settings.organs,
        &mut models.sam,
        // Each organ's list entry says how its mask was drawn (`mask_from`).
        &mut |_| {},
    )
    .await?;
    drop(cases);
    times.atlas = start.elapsed();
    for (qi, (ct, truth)) in queries.iter().enumerate() {
        let mut report = |p: Progress| {
            let elapsed_s = start.elapsed().as_secs_f64();
            progress(query_progress(&p, qi, queries.len(), elapsed_s));
        };
        let outcome = run_query(
            models,
            &mut localizer,
            (ct, truth.as_ref()),
            settings,
            &opt,
            cancel,
            &mut report,
        )
        .await?;
        times.queries += outcome.result.times;
        on_query(qi, outcome);
    }
    Ok(times)
}

/// The supports' atlas (or registration set) that places the organs in the queries.
async fn build_localizer(
    models: &Models,
    cases: &[SupportCase],
    settings: &RunSettings,
) -> Result<RunLocalizer> {
    RunLocalizer::build(
        settings.localizer,
        &models.medlam,
        &models.medlam_config,
        cases,
        &settings.organs,
        settings.mode,
        LocalizeOptions::default(),
        &models.device,
    )
    .await
}

/// The share of the run the support atlas takes; each query an equal share of the rest.
const ATLAS_SHARE: f64 = 0.1;

/// A query's progress as the whole run's: within a query, localization takes a tenth and
/// segmentation the rest; an estimate of the time left once past the atlas.
fn query_progress(p: &Progress, qi: usize, queries: usize, elapsed_s: f64) -> RunProgress {
    let within = match p.stage {
        "localize" => 0.1 * p.done as f64 / p.total.max(1) as f64,
        _ => 0.1 + 0.9 * p.done as f64 / p.total.max(1) as f64,
    };
    let fraction = ATLAS_SHARE + (1.0 - ATLAS_SHARE) * (qi as f64 + within) / queries as f64;
    let eta_s = (fraction > ATLAS_SHARE + 0.01).then(|| elapsed_s * (1.0 - fraction) / fraction);
    RunProgress {
        stage: format!(
            "query {}/{}: {} {}/{}",
            qi + 1,
            queries,
            p.stage,
            p.done,
            p.total
        ),
        fraction,
        eta_s,
    }
}

/// Localize and segment one query, and measure it against its label map when given.
async fn run_query(
    models: &mut Models,
    localizer: &mut RunLocalizer,
    (ct, truth): (&CtVolume, Option<&LabelVolume>),
    settings: &RunSettings,
    opt: &SegmentOptions,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(Progress),
) -> Result<QueryOutcome> {
    report(Progress {
        stage: "localize",
        done: 0,
        total: 1,
    });
    super::yield_to_browser().await;
    let result = segment_canonical(
        ct,
        &settings.organs,
        localizer,
        &mut models.sam,
        opt,
        Some(cancel),
        report,
    )
    .await?;
    let metrics = match truth {
        Some(t) => Some(evaluate_labels(&result.labels, t, &settings.organs)?),
        None => None,
    };
    Ok(QueryOutcome { result, metrics })
}

/// A user's correction on one axial slice: a box, points, or both (slice pixels `[i, j]`).
#[derive(Clone, Debug, Default)]
pub struct SliceEdit {
    pub organ: u16,
    pub k: usize,
    pub prompt: SlicePrompt,
}

/// Re-segment one slice of a canonical query from a user's prompt and write the
/// organ's new mask into `labels` (the organ's old voxels on that slice are cleared;
/// other organs' voxels are kept). Returns the number of voxels now labelled.
pub async fn resegment_slice(
    models: &mut Models,
    ct: &CtVolume,
    labels: &mut LabelVolume,
    edit: &SliceEdit,
) -> Result<usize> {
    let [nx, ny, nz] = ct.dims;
    if edit.k >= nz {
        return Err(Error::InvalidArgument(format!(
            "slice {} is outside the query ({} slices)",
            edit.k, nz
        )));
    }
    if edit.prompt.bbox.is_none() && edit.prompt.points.is_empty() {
        return Err(Error::InvalidArgument(
            "draw a box or click at least one point on the axial slice first".into(),
        ));
    }
    let slice: Vec<f32> = ct.axial_slice(edit.k).iter().map(|&v| v as f32).collect();
    let emb = models.sam.encode(&slice, nx, ny).await?;
    let prob = models
        .sam
        .decode_probabilities(&emb, std::slice::from_ref(&edit.prompt))
        .await?
        .pop()
        .expect("one prompt");
    let plane = &mut labels.data[edit.k * nx * ny..(edit.k + 1) * nx * ny];
    let mut count = 0;
    for (l, p) in plane.iter_mut().zip(&prob) {
        if *l == edit.organ {
            *l = 0;
        }
        if *p > 0.5 && *l == 0 {
            *l = edit.organ;
            count += 1;
        }
    }
    Ok(count)
}

/// The organs of a result in label order, as the page lists them (confidence, what
/// placed each one, its warning, whether it lies outside the scan's field of view).
pub fn confidences(organs: &[OrganLocalization]) -> Vec<&OrganLocalization> {
    let mut v: Vec<&OrganLocalization> = organs.iter().collect();
    v.sort_by_key(|o| o.label);
    v
}
