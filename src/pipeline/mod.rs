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

mod paint;
pub mod self_check;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::yield_to_page;
use crate::oracle::GivenBoxes;
use crate::types::{
    Localizer, OrganBoxes, OrganLocalization, Progress, SliceSegmenter, StageTimes,
};
use crate::volume::{CtVolume, LabelVolume, Reorientation, Volume};
use crate::{Error, Result};
use paint::{Painter, boxes_per_slice};

/// Options of [`segment_query`].
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// Box enlargement in pixels at the 1024² SAM scale (the paper's 10 px),
    /// scaled to each slice's longest side.
    pub margin_px_1024: f64,
    /// Probability above which a pixel is foreground.
    pub threshold: f32,
    /// Weight of an organ's registration prior (where the localizer gives one) against
    /// the segmenter's probability: `w·prior + (1 − w)·segmenter` per pixel (0: the
    /// segmenter alone, 1: the prior alone).
    pub prior_weight: f32,
    /// Organs whose prior weight differs from [`Self::prior_weight`] (`(label, weight)`),
    /// e.g. those the segmenter draws well on the one registered support
    /// ([`self_check::trusted_organs`]).
    pub organ_prior_weights: Vec<(u16, f32)>,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            margin_px_1024: 10.0,
            threshold: 0.5,
            prior_weight: DEFAULT_PRIOR_WEIGHT,
            organ_prior_weights: Vec::new(),
        }
    }
}

impl SegmentOptions {
    /// The prior weight of organ `label`.
    pub fn prior_weight_of(&self, label: u16) -> f32 {
        self.organ_prior_weights
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(self.prior_weight, |&(_, w)| w)
    }
}

/// Default [`SegmentOptions::prior_weight`]: the prior alone, the best of the three
/// weights 0, 0.5 and 1 on OpenKBP okbp_016, 017, 018, 020 (DSC 40.3, 48.1, 56.0 %).
pub const DEFAULT_PRIOR_WEIGHT: f32 = 1.0;

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
    let mut found = localizer.localize(canon, organs).await?;
    times.localize = t.elapsed();
    for loc in found.iter_mut().filter(|l| l.prior.is_some()) {
        let w = opt.prior_weight_of(loc.label);
        loc.mask_from = (w < 1.0).then(|| {
            if w <= 0.0 {
                "LiteMedSAM inside the registration's boxes".to_string()
            } else {
                format!("the registration prior blended with LiteMedSAM (prior weight {w})")
            }
        });
    }
    progress(Progress {
        stage: "localize",
        done: 1,
        total: 1,
    });

    let [nx, ny, nz] = canon.dims;
    let painter = Painter {
        found: &found,
        opt,
        margin: opt.margin_px_1024 * nx.max(ny) as f64 / 1024.0,
        dims: [nx, ny],
    };
    let per_slice = boxes_per_slice(&found, nz);
    // Organs whose prior alone decides (weight 1) are painted from it, not segmented:
    // a slice holding only such organs is never encoded.
    let todo: Vec<usize> = (0..nz)
        .filter(|&k| per_slice[k].iter().any(|&(o, _)| !painter.prior_only(o)))
        .collect();
    let mut out = Volume::filled(canon.dims, 0u16, canon.affine)?;
    let (mut slices_encoded, mut boxes_decoded) = (0, 0);
    let chunk = segmenter.slices_in_flight().max(1);
    for (n, group) in todo.chunks(chunk).enumerate() {
        progress(Progress {
            stage: "segment",
            done: n * chunk,
            total: todo.len(),
        });
        // The page shows the progress and takes a Cancel click before the slices' work.
        yield_to_page().await;
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let t = web_time::Instant::now();
        let embeddings = encode_slices(segmenter, canon, group).await?;
        times.encode += t.elapsed();
        slices_encoded += group.len();
        for (&k, emb) in group.iter().zip(embeddings) {
            let plane = &mut out.data[k * nx * ny..(k + 1) * nx * ny];
            boxes_decoded += painter
                .decode_slice(segmenter, &emb, k, &per_slice[k], plane, &mut times)
                .await?;
        }
    }
    painter.paint_prior_only(&per_slice, &mut out.data)?;
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

/// Encode the axial slices `ks` of a canonical CT together (one embedding each).
async fn encode_slices<S: SliceSegmenter>(
    segmenter: &mut S,
    canon: &CtVolume,
    ks: &[usize],
) -> Result<Vec<S::Embedding>> {
    let [nx, ny, _] = canon.dims;
    let slices: Vec<Vec<f32>> = ks
        .iter()
        .map(|&k| canon.axial_slice(k).iter().map(|&v| v as f32).collect())
        .collect();
    let embeddings = segmenter.encode_many(&slices, nx, ny).await?;
    if embeddings.len() != ks.len() {
        return Err(Error::Model(format!(
            "segmenter returned {} embeddings for {} slices",
            embeddings.len(),
            ks.len()
        )));
    }
    Ok(embeddings)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::dice_pct;
    use crate::oracle::OracleLocalizer;
    use crate::sam::cache::EmbeddingCache;
    use crate::types::BoxMode;
    use crate::volume::labels::{mask_of, slice_boxes};
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

    #[test]
    fn an_organ_prior_is_blended_with_the_segmenter_by_its_weight() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [48, 48, 30],
            spacing_mm: [6.0; 3],
            ..Default::default()
        })
        .unwrap();
        let (canon, _) = ct.to_canonical();
        let (canon_lab, _) = lab.to_canonical();
        // A prior that says "organ 2" with certainty on its true voxels and nowhere else,
        // with the boxes of the whole label map's organ 2: the Threshold segmenter marks
        // every soft-tissue pixel in the box, the prior only the organ.
        let prior = std::sync::Arc::new(canon_lab.map(|v| if v == 2 { 1.0f32 } else { 0.0 }));
        let mut found =
            crate::oracle::localize_from_labels(&canon_lab, &[2], BoxMode::Wpl, "register");
        found[0].prior = Some(prior);
        let run = |w: f32| {
            let opt = SegmentOptions {
                prior_weight: w,
                ..Default::default()
            };
            let mut loc = crate::oracle::Found(found.clone());
            pollster::block_on(segment_canonical(
                &canon,
                &[2],
                &mut loc,
                &mut Threshold,
                &opt,
                None,
                &mut |_| {},
            ))
            .unwrap()
            .labels
        };
        let truth = mask_of(&canon_lab, 2);
        let dsc = |l: &LabelVolume| dice_pct(&mask_of(l, 2), &truth).unwrap().unwrap();
        // Weight 1: exactly the prior; weight 0: the segmenter alone (a whole box of
        // tissue, worse); 0.5: only where both agree (0.5·1 + 0.5·0.9 > 0.5), i.e. the prior.
        assert_eq!(dsc(&run(1.0)), 100.0);
        assert!(dsc(&run(0.0)) < 100.0);
        assert_eq!(run(0.5).data, run(1.0).data);
        // Weight 1: the prior alone, no slice encoded.
        let mut counting = Counting(0);
        let opt = SegmentOptions {
            prior_weight: 1.0,
            ..Default::default()
        };
        let res = pollster::block_on(segment_canonical(
            &canon,
            &[2],
            &mut crate::oracle::Found(found.clone()),
            &mut counting,
            &opt,
            None,
            &mut |_| {},
        ))
        .unwrap();
        assert_eq!((res.slices_encoded, counting.0), (0, 0));
        assert_eq!(dsc(&res.labels), 100.0);
        // A prior on another grid is refused, not read out of bounds.
        found[0].prior = Some(std::sync::Arc::new(
            Volume::filled([4, 4, 4], 1.0f32, canon.affine).unwrap(),
        ));
        let mut loc = crate::oracle::Found(found.clone());
        let e = pollster::block_on(segment_canonical(
            &canon,
            &[2],
            &mut loc,
            &mut Threshold,
            &SegmentOptions::default(),
            None,
            &mut |_| {},
        ));
        assert!(e.is_err());
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
        assert!(matches!(e, Err(Error::Cancelled)));
    }
}
