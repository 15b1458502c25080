//! How well the segmenter draws each organ from a box, measured where the truth is known:
//! on a support, a few of its own axial slices, each prompted with the organ's true box on
//! that slice (the "oracle" prompt, same margin). With one registered support nothing
//! checks the registration's shape of an organ, and LiteMedSAM drawing inside the prior's
//! boxes beats the prior on the organs it draws well: one support, liver, prior 55.2 / 75.6 %
//! DSC vs LiteMedSAM in its boxes 62.2 / 81.4 % (ts_example → ircadb_017 and back), where
//! LiteMedSAM inside the true boxes reaches 93-97 %; on the head-and-neck organs (38-67 %
//! inside the true boxes on OpenKBP) the prior stays better. So an organ whose self-check
//! reaches [`TRUSTED_DSC`] is segmented by LiteMedSAM inside the prior's boxes (prior
//! weight 0); the others keep the run's prior weight.

use crate::Result;
use crate::oracle::{Found, localize_from_labels};
use crate::types::{BoxMode, OrganLocalization, SliceSegmenter};
use crate::volume::{CtVolume, LabelVolume};

use super::{SegmentOptions, segment_canonical};

/// Slices checked per organ: at a quarter, half and three quarters of its axial extent.
pub const SELF_CHECK_SLICES: usize = 3;
/// DSC (%) on the support from which an organ is trusted to the segmenter.
pub const TRUSTED_DSC: f64 = 90.0;
/// Organs whose largest axial box on the support is smaller (cm²) are not checked: every
/// such head-and-neck organ stays far below [`TRUSTED_DSC`] inside its true boxes on
/// OpenKBP (brainstem 67, parotids 57-60, larynx 50, esophagus 38 %), and skipping them
/// saves encoding their slices.
pub const MIN_BOX_CM2: f64 = 30.0;

/// One organ's self-check: its label, the support slices checked and the segmenter's DSC
/// (%) over them.
#[derive(Clone, Debug, PartialEq)]
pub struct OrganCheck {
    pub label: u16,
    pub slices: Vec<usize>,
    pub dsc: f64,
}

/// The segmenter's DSC on each of `organs` in a support (`ct` and `labels` on its
/// canonical grid), over [`SELF_CHECK_SLICES`] slices prompted with their true boxes and
/// `opt`'s margin. Organs absent from the labels or smaller than [`MIN_BOX_CM2`] are left
/// out.
pub async fn self_check<S: SliceSegmenter>(
    ct: &CtVolume,
    labels: &LabelVolume,
    organs: &[u16],
    segmenter: &mut S,
    opt: &SegmentOptions,
) -> Result<Vec<OrganCheck>> {
    ct.check_same_grid(labels, "support image and label")?;
    let sp = ct.spacing_mm();
    let mut found = localize_from_labels(labels, organs, BoxMode::Spl { slab_mm: 0.0 }, "support");
    found.retain(|l| largest_box_mm2(l, [sp[0], sp[1]]) >= MIN_BOX_CM2 * 100.0);
    for loc in &mut found {
        let picks = pick_slices(loc);
        loc.slice_boxes.retain(|b| picks.contains(&b.k));
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let checked: Vec<u16> = found.iter().map(|l| l.label).collect();
    let plain = SegmentOptions {
        prior_weight: 0.0,
        organ_prior_weights: Vec::new(),
        ..opt.clone()
    };
    let mut given = Found(found.clone());
    let res = segment_canonical(
        ct,
        &checked,
        &mut given,
        segmenter,
        &plain,
        None,
        &mut |_| {},
    )
    .await?;
    let [nx, ny, _] = ct.dims;
    let plane = nx * ny;
    Ok(found
        .iter()
        .map(|loc| {
            let slices: Vec<usize> = loc.slice_boxes.iter().map(|b| b.k).collect();
            let (mut both, mut sum) = (0usize, 0usize);
            for &k in &slices {
                let got = &res.labels.data[k * plane..(k + 1) * plane];
                let truth = &labels.data[k * plane..(k + 1) * plane];
                for (&g, &t) in got.iter().zip(truth) {
                    let (g, t) = (g == loc.label, t == loc.label);
                    both += usize::from(g && t);
                    sum += usize::from(g) + usize::from(t);
                }
            }
            OrganCheck {
                label: loc.label,
                slices,
                dsc: if sum == 0 {
                    0.0
                } else {
                    200.0 * both as f64 / sum as f64
                },
            }
        })
        .collect())
}

/// The organs of `checks` trusted to the segmenter, with prior weight 0 (see the module doc).
pub fn trusted_organs(checks: &[OrganCheck]) -> Vec<(u16, f32)> {
    checks
        .iter()
        .filter(|c| c.dsc >= TRUSTED_DSC)
        .map(|c| (c.label, 0.0))
        .collect()
}

/// Self-check the organs of the only labelled support among `supports` and return the
/// ones trusted to the segmenter (prior weight 0) with a line per checked organ for the
/// log. Nothing with several labelled supports (their fused prior beat LiteMedSAM on every
/// OpenKBP organ) or none.
pub async fn one_support_weights<S: SliceSegmenter>(
    supports: &[(&CtVolume, &LabelVolume)],
    organs: &[u16],
    segmenter: &mut S,
    opt: &SegmentOptions,
) -> Result<(Vec<(u16, f32)>, Vec<String>)> {
    let [(ct, labels)] = supports else {
        return Ok((Vec::new(), Vec::new()));
    };
    let checks = self_check(ct, labels, organs, segmenter, opt)
        .await
        .map_err(|e| e.context("checking LiteMedSAM on the support"))?;
    let lines = checks
        .iter()
        .map(|c| {
            let what = if c.dsc >= TRUSTED_DSC {
                "it segments this organ inside the registration's boxes"
            } else {
                "the registration prior is kept"
            };
            format!(
                "organ {}: LiteMedSAM {:.1} % DSC on the support's slices {:?} in their true boxes: {what}",
                c.label, c.dsc, c.slices
            )
        })
        .collect();
    Ok((trusted_organs(&checks), lines))
}

/// The area (mm²) of an organ's largest per-slice box.
fn largest_box_mm2(loc: &OrganLocalization, spacing: [f64; 2]) -> f64 {
    loc.slice_boxes
        .iter()
        .map(|b| {
            let w = (b.max[0] - b.min[0] + 1) as f64 * spacing[0];
            let h = (b.max[1] - b.min[1] + 1) as f64 * spacing[1];
            w * h
        })
        .fold(0.0, f64::max)
}

/// Up to [`SELF_CHECK_SLICES`] distinct slices of an organ, spread over its extent.
fn pick_slices(loc: &OrganLocalization) -> Vec<usize> {
    let mut ks: Vec<usize> = loc.slice_boxes.iter().map(|b| b.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let n = ks.len();
    let mut picks: Vec<usize> = (1..=SELF_CHECK_SLICES)
        .filter(|_| n > 0)
        .map(|q| ks[(q * n / (SELF_CHECK_SLICES + 1)).min(n - 1)])
        .collect();
    picks.dedup();
    picks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::labels::{BoxVox, SliceBox};

    fn loc(ks: std::ops::Range<usize>) -> OrganLocalization {
        let bbox = BoxVox {
            min: [0; 3],
            max: [9, 19, 0],
        };
        let boxes = ks
            .map(|k| SliceBox {
                k,
                min: [0, 0],
                max: [9, 19],
            })
            .collect();
        OrganLocalization::placed(1, bbox, [[0; 3]; 6], boxes, "test")
    }

    #[test]
    fn slices_are_spread_over_the_organ() {
        assert_eq!(pick_slices(&loc(10..30)), vec![15, 20, 25]);
        assert_eq!(pick_slices(&loc(4..6)), vec![4, 5]);
        assert_eq!(pick_slices(&loc(7..8)), vec![7]);
        assert!(pick_slices(&loc(0..0)).is_empty());
        assert_eq!(
            largest_box_mm2(&loc(0..3), [0.5, 2.0]),
            10.0 * 0.5 * 20.0 * 2.0
        );
    }

    #[test]
    fn only_organs_at_the_threshold_are_trusted() {
        let c = |label, dsc| OrganCheck {
            label,
            slices: vec![1],
            dsc,
        };
        assert_eq!(
            trusted_organs(&[c(1, 97.0), c(2, 89.9), c(5, 90.0)]),
            vec![(1, 0.0), (5, 0.0)]
        );
    }
}
