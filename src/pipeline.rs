//! The MedLSAM pipeline for one query CT: localize each requested organ (a
//! [`Localizer`]: MedLAM, or the true boxes of a label map for the "manual
//! prompt" ceiling), then segment every axial slice that has a box with a
//! [`SliceSegmenter`] — the image embedding of a slice is computed **once** and
//! every organ's box on that slice is decoded against it — resolve overlaps
//! (higher probability wins), and map the label map back to the file's grid.
//!
//! Which slices are segmented comes from the localizer's boxes only, never from
//! query labels. Work happens on the canonical LPS grid (axial slices along
//! axis 2, rows `j`, columns `i`); results are returned on the file grid.
//!
//! The traits are `async` because in the browser every GPU read-back is
//! asynchronous; native callers drive them with `pollster::block_on`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::volume::labels::{BoxVox, SliceBox, bounding_box, extreme_points, slice_boxes};
use crate::volume::{CtVolume, LabelVolume, Reorientation, Volume};
use crate::{Error, Result};

/// Where one organ is in a query, in **canonical** voxel indices of the query.
#[derive(Clone, Debug, Serialize)]
pub struct OrganLocalization {
    pub label: u16,
    /// Higher is more certain; 0 when the organ could not be found.
    pub confidence: f32,
    /// Fraction of the organ's predicted box inside the scan (1 for given boxes).
    /// Below [`MIN_IN_VIEW`] the organ is outside the field of view: no slice
    /// boxes, confidence 0, no mask.
    pub in_view: f32,
    pub extreme_points: [[usize; 3]; 6],
    pub bbox: BoxVox,
    /// One 2-D box per axial slice to segment (inclusive, `[i, j]`).
    pub slice_boxes: Vec<SliceBox>,
}

/// Organs whose predicted box lies less than this fraction inside the query scan
/// are reported as outside its field of view and not segmented.
pub const MIN_IN_VIEW: f32 = 0.5;

impl OrganLocalization {
    /// Whether the organ was predicted (mostly) outside the query's field of view.
    pub fn outside_view(&self) -> bool {
        self.in_view < MIN_IN_VIEW
    }
}

/// Finds organs in a query CT given on the canonical grid.
#[allow(async_fn_in_trait)] // used through generics only, never as `dyn`
pub trait Localizer {
    /// Localize `organs` in `query` (canonical grid); organs not found are left out.
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>>;
}

/// Segments one 2-D slice from a box prompt.
#[allow(async_fn_in_trait)] // used through generics only, never as `dyn`
pub trait SliceSegmenter {
    type Embedding;
    /// Encode an axial slice: HU values row-major `[j][i]`, `width` = columns (i), `height` = rows (j).
    async fn encode(
        &mut self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<Self::Embedding>;
    /// Slices worth encoding together with [`Self::encode_many`] (1: one at a time).
    fn slices_in_flight(&self) -> usize {
        1
    }
    /// Encode several slices of one size (default: one after the other).
    async fn encode_many(
        &mut self,
        slices: &[Vec<f32>],
        width: usize,
        height: usize,
    ) -> Result<Vec<Self::Embedding>> {
        let mut out = Vec::with_capacity(slices.len());
        for s in slices {
            out.push(self.encode(s, width, height).await?);
        }
        Ok(out)
    }
    /// Foreground probability per slice pixel (row-major, slice size) for the box
    /// `[i_min, j_min, i_max, j_max]` in slice pixel coordinates (inclusive corners).
    async fn decode_box(&mut self, embedding: &Self::Embedding, bbox: [f32; 4])
    -> Result<Vec<f32>>;
    /// Probabilities for several boxes of one slice, in order (default: one
    /// [`Self::decode_box`] each; segmenters may decode them as one batch).
    async fn decode_boxes(
        &mut self,
        embedding: &Self::Embedding,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(boxes.len());
        for &b in boxes {
            out.push(self.decode_box(embedding, b).await?);
        }
        Ok(out)
    }
}

/// A [`SliceSegmenter`] that keeps every slice embedding it computes, so several runs
/// over one query (SPL, WPL and true boxes in an evaluation) encode each slice once.
/// A slice is recognised by its size and pixel values; make one per query (it holds
/// every embedding until dropped).
pub struct EmbeddingCache<'a, S: SliceSegmenter> {
    inner: &'a mut S,
    cache: HashMap<u64, S::Embedding>,
}

impl<'a, S: SliceSegmenter> EmbeddingCache<'a, S> {
    pub fn new(inner: &'a mut S) -> Self {
        Self {
            inner,
            cache: HashMap::new(),
        }
    }

    /// Slices encoded (and kept) since the last [`Self::clear`].
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

fn slice_key(slice: &[f32], width: usize, height: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (width, height).hash(&mut h);
    for v in slice {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

impl<S: SliceSegmenter> SliceSegmenter for EmbeddingCache<'_, S>
where
    S::Embedding: Clone,
{
    type Embedding = S::Embedding;

    async fn encode(
        &mut self,
        slice_hu: &[f32],
        width: usize,
        height: usize,
    ) -> Result<Self::Embedding> {
        Ok(self
            .encode_many(&[slice_hu.to_vec()], width, height)
            .await?
            .remove(0))
    }

    fn slices_in_flight(&self) -> usize {
        self.inner.slices_in_flight()
    }

    async fn encode_many(
        &mut self,
        slices: &[Vec<f32>],
        width: usize,
        height: usize,
    ) -> Result<Vec<Self::Embedding>> {
        let keys: Vec<u64> = slices.iter().map(|s| slice_key(s, width, height)).collect();
        let mut missing: Vec<usize> = Vec::new();
        for (n, key) in keys.iter().enumerate() {
            if !self.cache.contains_key(key) && !missing.iter().any(|&m| keys[m] == *key) {
                missing.push(n);
            }
        }
        if !missing.is_empty() {
            let todo: Vec<Vec<f32>> = missing.iter().map(|&n| slices[n].clone()).collect();
            let new = self.inner.encode_many(&todo, width, height).await?;
            if new.len() != todo.len() {
                return Err(Error::InvalidArgument(format!(
                    "segmenter returned {} embeddings for {} slices",
                    new.len(),
                    todo.len()
                )));
            }
            for (&n, e) in missing.iter().zip(new) {
                self.cache.insert(keys[n], e);
            }
        }
        Ok(keys.iter().map(|k| self.cache[k].clone()).collect())
    }

    async fn decode_box(
        &mut self,
        embedding: &Self::Embedding,
        bbox: [f32; 4],
    ) -> Result<Vec<f32>> {
        self.inner.decode_box(embedding, bbox).await
    }

    async fn decode_boxes(
        &mut self,
        embedding: &Self::Embedding,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Vec<f32>>> {
        self.inner.decode_boxes(embedding, boxes).await
    }
}

/// How 2-D boxes are derived from a localization.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum BoxMode {
    /// Whole-patch: the organ's 3-D box on every slice it spans.
    Wpl,
    /// Sub-patch: a box per slab of this many mm along the slice axis.
    Spl { slab_mm: f64 },
}

/// Options of [`segment_query`].
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// Box enlargement in pixels at the 1024² SAM scale (the paper's 10 px),
    /// scaled to each slice's longest side.
    pub margin_px_1024: f64,
    /// Probability above which a pixel is foreground.
    pub threshold: f32,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            margin_px_1024: 10.0,
            threshold: 0.5,
        }
    }
}

/// Progress of one query.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
}

/// Time spent per stage.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageTimes {
    pub localize: Duration,
    pub encode: Duration,
    pub decode: Duration,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: Self) {
        self.localize += o.localize;
        self.encode += o.encode;
        self.decode += o.decode;
    }
}

/// The result for one query on its canonical grid (what the browser keeps).
pub struct CanonicalResult {
    /// Multi-label map on the query's **canonical** grid.
    pub labels: LabelVolume,
    /// Localizations in canonical indices.
    pub organs: Vec<OrganLocalization>,
    pub times: StageTimes,
    pub slices_encoded: usize,
    pub boxes_decoded: usize,
}

/// The result for one query on its file grid.
pub struct QueryResult {
    /// Multi-label map on the query **file's** grid (its affine).
    pub labels: LabelVolume,
    /// Localizations in canonical indices (convert with [`Reorientation`] for output).
    pub organs: Vec<OrganLocalization>,
    /// Reorientation file → canonical of the query.
    pub reorientation: Reorientation,
    pub times: StageTimes,
    pub slices_encoded: usize,
    pub boxes_decoded: usize,
}

/// Run localization and slice segmentation on one query CT (file grid in, file grid out).
pub async fn segment_query<L: Localizer, S: SliceSegmenter>(
    query: &CtVolume,
    organs: &[u16],
    localizer: &mut L,
    segmenter: &mut S,
    opt: &SegmentOptions,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<QueryResult> {
    let (canon, r) = query.to_canonical();
    let res =
        segment_canonical(&canon, organs, localizer, segmenter, opt, cancel, progress).await?;
    Ok(QueryResult {
        labels: res.labels.from_canonical(&r)?,
        organs: res.organs,
        reorientation: r,
        times: res.times,
        slices_encoded: res.slices_encoded,
        boxes_decoded: res.boxes_decoded,
    })
}

/// Localize `organs` in a query on its canonical grid, then segment every slice
/// that has a box: one encode per slice, one decode per organ box on it, and
/// where organs overlap the higher probability wins.
pub async fn segment_canonical<L: Localizer, S: SliceSegmenter>(
    canon: &CtVolume,
    organs: &[u16],
    localizer: &mut L,
    segmenter: &mut S,
    opt: &SegmentOptions,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<CanonicalResult> {
    let mut times = StageTimes::default();
    progress(Progress {
        stage: "localize",
        done: 0,
        total: 1,
    });
    let t = web_time::Instant::now();
    let found = localizer.localize(canon, organs).await?;
    times.localize = t.elapsed();
    progress(Progress {
        stage: "localize",
        done: 1,
        total: 1,
    });

    let [nx, ny, nz] = canon.dims;
    let margin = opt.margin_px_1024 * nx.max(ny) as f64 / 1024.0;
    // Slices to segment, each with the (organ index, box) pairs on it.
    let mut per_slice: Vec<Vec<(usize, SliceBox)>> = vec![Vec::new(); nz];
    for (o, loc) in found.iter().enumerate() {
        for sb in &loc.slice_boxes {
            if sb.k < nz {
                per_slice[sb.k].push((o, *sb));
            }
        }
    }
    let todo: Vec<usize> = (0..nz).filter(|&k| !per_slice[k].is_empty()).collect();
    let mut out = Volume::filled(canon.dims, 0u16, canon.affine)?;
    let mut best = vec![0f32; nx * ny];
    let (mut slices_encoded, mut boxes_decoded) = (0, 0);
    let chunk = segmenter.slices_in_flight().max(1);
    let mut n = 0;
    for group in todo.chunks(chunk) {
        yield_to_page().await;
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::InvalidArgument("cancelled".into()));
        }
        progress(Progress {
            stage: "segment",
            done: n,
            total: todo.len(),
        });
        let slices: Vec<Vec<f32>> = group
            .iter()
            .map(|&k| canon.axial_slice(k).iter().map(|&v| v as f32).collect())
            .collect();
        let t = web_time::Instant::now();
        let embeddings = segmenter.encode_many(&slices, nx, ny).await?;
        times.encode += t.elapsed();
        if embeddings.len() != group.len() {
            return Err(Error::InvalidArgument(format!(
                "segmenter returned {} embeddings for {} slices",
                embeddings.len(),
                group.len()
            )));
        }
        slices_encoded += group.len();
        n += group.len();
        for (&k, emb) in group.iter().zip(embeddings) {
            best.iter_mut().for_each(|b| *b = opt.threshold);
            let plane = &mut out.data[k * nx * ny..(k + 1) * nx * ny];
            let boxes: Vec<[f32; 4]> = per_slice[k]
                .iter()
                .map(|&(_, sb)| {
                    [
                        (sb.min[0] as f64 - margin).max(0.0) as f32,
                        (sb.min[1] as f64 - margin).max(0.0) as f32,
                        (sb.max[0] as f64 + margin).min((nx - 1) as f64) as f32,
                        (sb.max[1] as f64 + margin).min((ny - 1) as f64) as f32,
                    ]
                })
                .collect();
            let t = web_time::Instant::now();
            let probs = segmenter.decode_boxes(&emb, &boxes).await?;
            times.decode += t.elapsed();
            boxes_decoded += boxes.len();
            if probs.len() != boxes.len() {
                return Err(Error::InvalidArgument(format!(
                    "segmenter returned {} masks for {} boxes",
                    probs.len(),
                    boxes.len()
                )));
            }
            for (&(o, _), prob) in per_slice[k].iter().zip(&probs) {
                if prob.len() != nx * ny {
                    return Err(Error::InvalidArgument(format!(
                        "segmenter returned {} probabilities for a {nx}×{ny} slice",
                        prob.len()
                    )));
                }
                for ((p, b), l) in prob.iter().zip(best.iter_mut()).zip(plane.iter_mut()) {
                    if *p > *b {
                        *b = *p;
                        *l = found[o].label;
                    }
                }
            }
        }
    }
    progress(Progress {
        stage: "segment",
        done: todo.len(),
        total: todo.len(),
    });
    Ok(CanonicalResult {
        labels: out,
        organs: found,
        times,
        slices_encoded,
        boxes_decoded,
    })
}

/// In the browser, let the page paint and take input (a Cancel click), e.g. between
/// slices; natively nothing.
pub async fn yield_to_page() {
    #[cfg(target_arch = "wasm32")]
    crate::web::yield_to_browser().await;
}

/// How many MedLAM patches to stack in one forward pass: `native` (better use of a GPU or
/// of the CPU's threads), but 2 in the browser on the CPU backend, where a pass blocks the
/// page until it ends (~0.3 s per 48³ patch, wasm running on one thread); [`yield_on_cpu`]
/// follows each pass.
pub fn patch_batch(device: &burn::tensor::Device, native: usize) -> usize {
    #[cfg(target_arch = "wasm32")]
    if *device == burn::tensor::Device::flex() {
        return native.min(2);
    }
    let _ = device;
    native
}

/// In the browser on the CPU backend, where every tensor operation computes
/// synchronously, let the page run (see [`yield_to_page`]); elsewhere nothing (on
/// WebGPU the work is queued on the GPU and the page is not blocked).
pub async fn yield_on_cpu(device: &burn::tensor::Device) {
    #[cfg(target_arch = "wasm32")]
    if *device == burn::tensor::Device::flex() {
        crate::web::yield_to_browser().await;
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = device;
}

/// 2-D boxes of one organ on axial slices, in **canonical** voxel indices (e.g. drawn by a user).
#[derive(Clone, Debug)]
pub struct OrganBoxes {
    pub label: u16,
    pub boxes: Vec<SliceBox>,
}

/// A localizer that returns boxes it was given (canonical indices).
struct GivenBoxes(Vec<OrganBoxes>);

impl Localizer for GivenBoxes {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        let [nx, ny, nz] = query.dims;
        let mut out = Vec::new();
        for o in self.0.iter().filter(|o| organs.contains(&o.label)) {
            if let Some(b) = o.boxes.iter().find(|b| {
                b.k >= nz
                    || b.max[0] >= nx
                    || b.max[1] >= ny
                    || b.min[0] > b.max[0]
                    || b.min[1] > b.max[1]
            }) {
                return Err(Error::InvalidArgument(format!(
                    "box {b:?} of organ {} is not inside the {nx}×{ny}×{nz} canonical grid",
                    o.label
                )));
            }
            let (Some(k0), Some(k1)) = (
                o.boxes.iter().map(|b| b.k).min(),
                o.boxes.iter().map(|b| b.k).max(),
            ) else {
                continue;
            };
            let bbox = BoxVox {
                min: [
                    o.boxes.iter().map(|b| b.min[0]).min().unwrap_or(0),
                    o.boxes.iter().map(|b| b.min[1]).min().unwrap_or(0),
                    k0,
                ],
                max: [
                    o.boxes.iter().map(|b| b.max[0]).max().unwrap_or(0),
                    o.boxes.iter().map(|b| b.max[1]).max().unwrap_or(0),
                    k1,
                ],
            };
            // No extreme points are known: use the centres of the 3-D box's faces.
            let c = [0, 1, 2].map(|a| (bbox.min[a] + bbox.max[a]) / 2);
            let mut extreme = [c; 6];
            for a in 0..3 {
                extreme[2 * a][a] = bbox.min[a];
                extreme[2 * a + 1][a] = bbox.max[a];
            }
            out.push(OrganLocalization {
                label: o.label,
                confidence: 1.0,
                in_view: 1.0,
                extreme_points: extreme,
                bbox,
                slice_boxes: o.boxes.clone(),
            });
        }
        Ok(out)
    }
}

/// Segment given per-slice boxes (canonical indices, used as they are: no margin)
/// on a query CT (file grid in, file grid out): each slice is encoded once and
/// all boxes on it decoded against that embedding; `progress` reports slices done / total.
pub async fn segment_slices<S: SliceSegmenter>(
    query: &CtVolume,
    organs: &[OrganBoxes],
    segmenter: &mut S,
    progress: &mut dyn FnMut(Progress),
) -> Result<QueryResult> {
    let labels: Vec<u16> = organs.iter().map(|o| o.label).collect();
    let opt = SegmentOptions {
        margin_px_1024: 0.0,
        ..Default::default()
    };
    segment_query(
        query,
        &labels,
        &mut GivenBoxes(organs.to_vec()),
        segmenter,
        &opt,
        None,
        progress,
    )
    .await
}

/// Per-slice 2-D boxes of a 3-D localization: WPL repeats the 3-D box on each
/// slice; SPL uses the given slab boxes (canonical indices).
pub fn wpl_slice_boxes(bbox: &BoxVox) -> Vec<SliceBox> {
    (bbox.min[2]..=bbox.max[2])
        .map(|k| SliceBox {
            k,
            min: [bbox.min[0], bbox.min[1]],
            max: [bbox.max[0], bbox.max[1]],
        })
        .collect()
}

/// Localizer that reads the true organ boxes from a label map on the query's grid:
/// the "manual prompt" ceiling of the paper (never used for unlabeled queries).
pub struct OracleLocalizer {
    labels: LabelVolume,
    mode: BoxMode,
}

impl OracleLocalizer {
    /// `labels` must be on the query file's grid.
    pub fn new(query: &CtVolume, labels: &LabelVolume, mode: BoxMode) -> Result<Self> {
        query.check_same_grid(labels, "query image and label")?;
        Ok(Self {
            labels: labels.to_canonical().0,
            mode,
        })
    }
}

impl Localizer for OracleLocalizer {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        if query.dims != self.labels.dims {
            return Err(Error::Mismatch(
                "oracle labels are not on the query's grid".into(),
            ));
        }
        let mut out = Vec::new();
        for &label in organs {
            let (Some(bbox), Some(extreme)) = (
                bounding_box(&self.labels, label),
                extreme_points(&self.labels, label),
            ) else {
                continue;
            };
            let slice_boxes = match self.mode {
                BoxMode::Wpl => wpl_slice_boxes(&bbox),
                BoxMode::Spl { slab_mm } => spl_true_boxes(&self.labels, label, &bbox, slab_mm),
            };
            out.push(OrganLocalization {
                label,
                confidence: 1.0,
                in_view: 1.0,
                extreme_points: extreme,
                bbox,
                slice_boxes,
            });
        }
        Ok(out)
    }
}

/// True per-slab boxes: slabs of `slab_mm` along axis 2 starting at the organ's first
/// slice; each slab's 2-D box on each of its slices. `slab_mm = 0` gives per-slice boxes.
pub fn spl_true_boxes(
    labels: &LabelVolume,
    label: u16,
    bbox: &BoxVox,
    slab_mm: f64,
) -> Vec<SliceBox> {
    let per = slice_boxes(labels, label);
    let sz = labels.spacing_mm()[2];
    let slab = ((slab_mm / sz).round() as usize).max(1);
    let mut out = Vec::new();
    let mut k0 = bbox.min[2];
    while k0 <= bbox.max[2] {
        let k1 = (k0 + slab - 1).min(bbox.max[2]);
        let in_slab: Vec<&SliceBox> = per.iter().filter(|s| s.k >= k0 && s.k <= k1).collect();
        if let (Some(i0), Some(j0), Some(i1), Some(j1)) = (
            in_slab.iter().map(|s| s.min[0]).min(),
            in_slab.iter().map(|s| s.min[1]).min(),
            in_slab.iter().map(|s| s.max[0]).max(),
            in_slab.iter().map(|s| s.max[1]).max(),
        ) {
            for k in k0..=k1 {
                out.push(SliceBox {
                    k,
                    min: [i0, j0],
                    max: [i1, j1],
                });
            }
        }
        k0 = k1 + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::dice_pct;
    use crate::volume::labels::mask_of;
    use crate::volume::synthetic::{PhantomOptions, phantom};

    /// A stand-in segmenter for testing the pipeline's mechanics: soft-tissue pixels
    /// (0..80 HU) inside the box. Not a model.
    struct Threshold;
    impl SliceSegmenter for Threshold {
        type Embedding = (Vec<f32>, usize);
        async fn encode(&mut self, s: &[f32], w: usize, _h: usize) -> Result<Self::Embedding> {
            Ok((s.to_vec(), w))
        }
        async fn decode_box(&mut self, e: &Self::Embedding, b: [f32; 4]) -> Result<Vec<f32>> {
            let (s, w) = (&e.0, e.1);
            Ok(s.iter()
                .enumerate()
                .map(|(p, &v)| {
                    let (i, j) = ((p % w) as f32, (p / w) as f32);
                    let inside = i >= b[0] && i <= b[2] && j >= b[1] && j <= b[3];
                    if inside && (0.0..80.0).contains(&v) {
                        0.9
                    } else {
                        0.0
                    }
                })
                .collect())
        }
    }

    #[test]
    fn oracle_boxes_segment_each_slice_once_and_map_back_to_any_orientation() {
        for ras in [false, true] {
            let opt = PhantomOptions {
                dims: [64, 64, 40],
                spacing_mm: [4.5, 4.5, 4.5],
                ras,
                ..Default::default()
            };
            let (ct, lab) = phantom(&opt).unwrap();
            let mut loc = OracleLocalizer::new(&ct, &lab, BoxMode::Spl { slab_mm: 0.0 }).unwrap();
            let mut seg = Threshold;
            let mut calls = 0;
            let res = pollster::block_on(segment_query(
                &ct,
                &[2, 3, 4],
                &mut loc,
                &mut seg,
                &SegmentOptions::default(),
                None,
                &mut |_| calls += 1,
            ))
            .unwrap();
            assert!(calls > 2);
            assert_eq!(res.labels.affine, ct.affine, "result is on the file grid");
            // Spleen and kidneys are far apart; one encode per slice, one decode per organ box.
            let spans: usize = res.organs.iter().map(|o| o.slice_boxes.len()).sum();
            assert_eq!(res.boxes_decoded, spans);
            let distinct: std::collections::BTreeSet<usize> = res
                .organs
                .iter()
                .flat_map(|o| o.slice_boxes.iter().map(|s| s.k))
                .collect();
            assert_eq!(res.slices_encoded, distinct.len());
            for l in [2, 3, 4] {
                let d = dice_pct(&mask_of(&res.labels, l), &mask_of(&lab, l))
                    .unwrap()
                    .unwrap();
                assert!(d > 80.0, "organ {l} dsc {d} (ras={ras})");
            }
            assert!(
                res.labels.data.iter().all(|&v| v != 1),
                "liver was not requested"
            );
        }
    }

    /// Counts the slices it encodes.
    struct Counting(usize);
    impl SliceSegmenter for Counting {
        type Embedding = (Vec<f32>, usize);
        async fn encode(&mut self, s: &[f32], w: usize, h: usize) -> Result<Self::Embedding> {
            self.0 += 1;
            Threshold.encode(s, w, h).await
        }
        async fn decode_box(&mut self, e: &Self::Embedding, b: [f32; 4]) -> Result<Vec<f32>> {
            Threshold.decode_box(e, b).await
        }
    }

    #[test]
    fn an_embedding_cache_encodes_each_slice_once_over_several_runs() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [48, 48, 30],
            spacing_mm: [6.0; 3],
            ..Default::default()
        })
        .unwrap();
        let (canon, _) = ct.to_canonical();
        let mut inner = Counting(0);
        let mut cached = EmbeddingCache::new(&mut inner);
        let organs = [1, 2, 3, 4];
        let mut results = Vec::new();
        for mode in [BoxMode::Spl { slab_mm: 6.0 }, BoxMode::Wpl] {
            let mut loc = OracleLocalizer::new(&ct, &lab, mode).unwrap();
            results.push(
                pollster::block_on(segment_canonical(
                    &canon,
                    &organs,
                    &mut loc,
                    &mut cached,
                    &SegmentOptions::default(),
                    None,
                    &mut |_| {},
                ))
                .unwrap(),
            );
        }
        let kept = cached.len();
        // SPL and WPL span the same slices: the second run encodes nothing new.
        assert_eq!(results[0].slices_encoded, results[1].slices_encoded);
        assert_eq!(inner.0, results[0].slices_encoded);
        assert_eq!(kept, inner.0);
        // The same masks as without the cache.
        let mut loc = OracleLocalizer::new(&ct, &lab, BoxMode::Wpl).unwrap();
        let plain = pollster::block_on(segment_canonical(
            &canon,
            &organs,
            &mut loc,
            &mut Counting(0),
            &SegmentOptions::default(),
            None,
            &mut |_| {},
        ))
        .unwrap();
        assert_eq!(plain.labels.data, results[1].labels.data);
    }

    #[test]
    fn given_boxes_segment_their_slices_and_bad_boxes_are_refused() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [48, 48, 30],
            spacing_mm: [6.0; 3],
            ..Default::default()
        })
        .unwrap();
        let (canon_lab, _) = lab.to_canonical();
        let boxes = slice_boxes(&canon_lab, 2);
        let mut seen = Vec::new();
        let res = pollster::block_on(segment_slices(
            &ct,
            &[OrganBoxes {
                label: 2,
                boxes: boxes.clone(),
            }],
            &mut Threshold,
            &mut |p| seen.push((p.stage, p.done, p.total)),
        ))
        .unwrap();
        assert_eq!(res.slices_encoded, boxes.len());
        assert!(seen.contains(&("segment", boxes.len(), boxes.len())));
        let d = dice_pct(&mask_of(&res.labels, 2), &mask_of(&lab, 2))
            .unwrap()
            .unwrap();
        assert!(d > 80.0, "dsc {d}");
        let mut bad = boxes[0];
        bad.max[0] = 48;
        let e = pollster::block_on(segment_slices(
            &ct,
            &[OrganBoxes {
                label: 2,
                boxes: vec![bad],
            }],
            &mut Threshold,
            &mut |_| {},
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("not inside"), "{e}");
    }

    #[test]
    fn cancellation_stops_between_slices() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [32, 32, 24],
            spacing_mm: [9.0; 3],
            ..Default::default()
        })
        .unwrap();
        let mut loc = OracleLocalizer::new(&ct, &lab, BoxMode::Wpl).unwrap();
        let flag = AtomicBool::new(true);
        let e = pollster::block_on(segment_query(
            &ct,
            &[1],
            &mut loc,
            &mut Threshold,
            &SegmentOptions::default(),
            Some(&flag),
            &mut |_| {},
        ));
        assert!(e.err().unwrap().to_string().contains("cancelled"));
    }

    #[test]
    fn spl_boxes_are_tighter_than_wpl() {
        let (_, lab) = phantom(&PhantomOptions::default()).unwrap();
        let (c, _) = lab.to_canonical();
        let bb = bounding_box(&c, 1).unwrap();
        let wpl = wpl_slice_boxes(&bb);
        let spl = spl_true_boxes(&c, 1, &bb, 6.0);
        assert_eq!(wpl.len(), spl.len());
        let area = |v: &[SliceBox]| -> usize {
            v.iter()
                .map(|s| (s.max[0] - s.min[0] + 1) * (s.max[1] - s.min[1] + 1))
                .sum()
        };
        assert!(area(&spl) < area(&wpl));
        // Two slices per 6 mm slab at 3 mm: neighbours in a slab share a box.
        assert_eq!(spl[0].min, spl[1].min);
    }
}
