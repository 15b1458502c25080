//! Painting slices: each organ's box as a prompt, the segmenter's probabilities and the
//! organs' priors competing per pixel, the winner's label written into the label map.

use super::SegmentOptions;
use crate::types::{OrganLocalization, SliceSegmenter, StageTimes};
use crate::volume::labels::SliceBox;
use crate::{Error, Result};

/// The boxes on each axial slice (`nz` slices): `(organ index, box)` pairs.
pub(super) fn boxes_per_slice(
    found: &[OrganLocalization],
    nz: usize,
) -> Vec<Vec<(usize, SliceBox)>> {
    let mut per_slice: Vec<Vec<(usize, SliceBox)>> = vec![Vec::new(); nz];
    for (o, loc) in found.iter().enumerate() {
        for sb in &loc.slice_boxes {
            if sb.k < nz {
                per_slice[sb.k].push((o, *sb));
            }
        }
    }
    per_slice
}

/// A slice box enlarged by `margin` pixels, clamped to the `nx`×`ny` slice: the
/// segmenter's prompt `[i_min, j_min, i_max, j_max]`.
pub(super) fn prompt_box(sb: &SliceBox, margin: f64, nx: usize, ny: usize) -> [f32; 4] {
    [
        (sb.min[0] as f64 - margin).max(0.0) as f32,
        (sb.min[1] as f64 - margin).max(0.0) as f32,
        (sb.max[0] as f64 + margin).min((nx - 1) as f64) as f32,
        (sb.max[1] as f64 + margin).min((ny - 1) as f64) as f32,
    ]
}

/// Paint one slice: the segmenter's `(labels, probabilities)` and the priors of the
/// organs `from_prior` (indices into `found`) compete per pixel.
pub(super) fn paint_with_priors(
    plane: &mut [u16],
    k: usize,
    (mut labels, mut probs): (Vec<u16>, Vec<Vec<f32>>),
    from_prior: &[usize],
    found: &[OrganLocalization],
    threshold: f32,
    [nx, ny]: [usize; 2],
) -> Result<()> {
    for &o in from_prior {
        labels.push(found[o].label);
        probs.push(prior_slice(&found[o], k, [nx, ny])?);
    }
    paint_slice(plane, &labels, &probs, threshold, [nx, ny])
}

/// An organ's prior on axial slice `k` (an `nx`×`ny` slice), checked against the grid.
pub(super) fn prior_slice(
    loc: &OrganLocalization,
    k: usize,
    [nx, ny]: [usize; 2],
) -> Result<Vec<f32>> {
    let prior = loc
        .prior
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument(format!("organ {} has no prior", loc.label)))?;
    if prior.dims[0] != nx || prior.dims[1] != ny || k >= prior.dims[2] {
        return Err(Error::Mismatch(format!(
            "the prior of organ {} ({:?}) does not match slice {k} of {nx}×{ny}",
            loc.label, prior.dims
        )));
    }
    Ok(prior.axial_slice(k).to_vec())
}

/// Write one slice's masks into its label plane: each pixel takes the label whose
/// probability is highest and above `threshold` (`labels[n]` for `probs[n]`).
fn paint_slice(
    plane: &mut [u16],
    labels: &[u16],
    probs: &[Vec<f32>],
    threshold: f32,
    [nx, ny]: [usize; 2],
) -> Result<()> {
    if probs.len() != labels.len() {
        return Err(Error::Model(format!(
            "segmenter returned {} masks for {} boxes",
            probs.len(),
            labels.len()
        )));
    }
    let mut best = vec![threshold; nx * ny];
    for (&label, prob) in labels.iter().zip(probs) {
        if prob.len() != nx * ny {
            return Err(Error::Model(format!(
                "segmenter returned {} probabilities for a {nx}×{ny} slice",
                prob.len()
            )));
        }
        for ((p, b), l) in prob.iter().zip(best.iter_mut()).zip(plane.iter_mut()) {
            if *p > *b {
                *b = *p;
                *l = label;
            }
        }
    }
    Ok(())
}

/// What the slices of one query are painted with: its organs' localizations, the
/// options, the prompt margin (pixels) and the slice size.
pub(super) struct Painter<'a> {
    pub(super) found: &'a [OrganLocalization],
    pub(super) opt: &'a SegmentOptions,
    pub(super) margin: f64,
    pub(super) dims: [usize; 2],
}

impl Painter<'_> {
    /// Whether organ `o` is painted from its prior alone (weight 1), not segmented.
    pub(super) fn prior_only(&self, o: usize) -> bool {
        self.opt.prior_weight_of(self.found[o].label) >= 1.0 && self.found[o].prior.is_some()
    }

    /// One encoded slice `k`: decode the boxes of the organs the segmenter places
    /// (`on_slice`, blended with their priors by the prior weight), then paint them with
    /// the prior-only organs into `plane`. Returns the boxes decoded.
    pub(super) async fn decode_slice<S: SliceSegmenter>(
        &self,
        segmenter: &mut S,
        emb: &S::Embedding,
        k: usize,
        on_slice: &[(usize, SliceBox)],
        plane: &mut [u16],
        times: &mut StageTimes,
    ) -> Result<usize> {
        let [nx, ny] = self.dims;
        let (sam, from_prior): (Vec<_>, Vec<_>) =
            on_slice.iter().partition(|&&(o, _)| !self.prior_only(o));
        let boxes: Vec<[f32; 4]> = sam
            .iter()
            .map(|(_, sb)| prompt_box(sb, self.margin, nx, ny))
            .collect();
        let t = web_time::Instant::now();
        let mut probs = segmenter.decode_boxes(emb, &boxes).await?;
        times.decode += t.elapsed();
        for (&(o, _), prob) in sam.iter().zip(probs.iter_mut()) {
            let w = self.opt.prior_weight_of(self.found[o].label);
            if self.found[o].prior.is_some() {
                let prior = prior_slice(&self.found[o], k, [nx, ny])?;
                for (p, q) in prob.iter_mut().zip(prior) {
                    *p = w * q + (1.0 - w) * *p;
                }
            }
        }
        let sam_labels: Vec<u16> = sam.iter().map(|&(o, _)| self.found[o].label).collect();
        let from_prior: Vec<usize> = from_prior.iter().map(|&(o, _)| o).collect();
        self.paint(plane, k, (sam_labels, probs), &from_prior)?;
        Ok(boxes.len())
    }

    /// Paint the slices whose organs are all painted from their priors (`per_slice`: the
    /// boxes on each slice; `labels`: the label map, slice after slice).
    pub(super) fn paint_prior_only(
        &self,
        per_slice: &[Vec<(usize, SliceBox)>],
        labels: &mut [u16],
    ) -> Result<()> {
        let [nx, ny] = self.dims;
        for (k, on_slice) in per_slice.iter().enumerate() {
            if on_slice.is_empty() || !on_slice.iter().all(|&(o, _)| self.prior_only(o)) {
                continue;
            }
            let plane = &mut labels[k * nx * ny..(k + 1) * nx * ny];
            let all: Vec<usize> = on_slice.iter().map(|&(o, _)| o).collect();
            self.paint(plane, k, (Vec::new(), Vec::new()), &all)?;
        }
        Ok(())
    }

    /// Paint slice `k`: the segmenter's `(labels, probabilities)` and the priors of the
    /// organs `from_prior` compete per pixel.
    fn paint(
        &self,
        plane: &mut [u16],
        k: usize,
        segmented: (Vec<u16>, Vec<Vec<f32>>),
        from_prior: &[usize],
    ) -> Result<()> {
        paint_with_priors(
            plane,
            k,
            segmented,
            from_prior,
            self.found,
            self.opt.threshold,
            self.dims,
        )
    }
}
