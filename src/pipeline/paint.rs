//! Painting slices: each organ's box as a prompt, the segmenter's probabilities and the
//! organs' priors competing per pixel, the winner's label written into the label map.

use crate::types::OrganLocalization;
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
        return Err(Error::InvalidArgument(format!(
            "segmenter returned {} masks for {} boxes",
            probs.len(),
            labels.len()
        )));
    }
    let mut best = vec![threshold; nx * ny];
    for (&label, prob) in labels.iter().zip(probs) {
        if prob.len() != nx * ny {
            return Err(Error::InvalidArgument(format!(
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
