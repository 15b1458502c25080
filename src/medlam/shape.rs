//! The priors applied to located points: each part's supports' mean shape around
//! its robust centre, the organ layout across organs, and the intensity templates.

use burn::tensor::Device;

use super::atlas::{Atlas, PointAtlas};
use super::prep::SPACING_MM;
use super::query::QueryState;
use super::template::match_template;
use crate::Result;
use crate::output::median;
use crate::types::MIN_IN_VIEW;

/// Robust centre (grid voxels) of one part from its located points: each point, minus its
/// mean offset from the part's box centre on the supports, estimates that centre; the
/// per-axis median of the estimates (so one badly located point does not move it).
pub fn part_centre(located: &[[f64; 3]], points: &[&PointAtlas]) -> [f64; 3] {
    [0, 1, 2].map(|a| {
        median(
            located
                .iter()
                .zip(points)
                .map(|(l, p)| l[a] - p.offset_mm[a] / SPACING_MM)
                .collect(),
        )
    })
}

/// Shape regularisation of one part's 6 located points (grid voxels): the prior points are
/// the supports' mean offsets around the part's robust centre ([`part_centre`]). Returns
/// `blend·located + (1 − blend)·prior`.
pub fn regularize_shape(located: &[[f64; 3]], points: &[&PointAtlas], blend: f64) -> Vec<[f64; 3]> {
    let centre = part_centre(located, points);
    located
        .iter()
        .zip(points)
        .map(|(l, p)| {
            [0, 1, 2]
                .map(|a| blend * l[a] + (1.0 - blend) * (centre[a] + p.offset_mm[a] / SPACING_MM))
        })
        .collect()
}

/// Apply [`regularize_shape`] to every part (consecutive groups of 6 points).
pub fn regularize_parts(located: &[[f64; 3]], points: &[&PointAtlas], blend: f64) -> Vec<[f64; 3]> {
    if blend >= 1.0 {
        return located.to_vec();
    }
    located
        .chunks(6)
        .zip(points.chunks(6))
        .flat_map(|(l, p)| regularize_shape(l, p, blend))
        .collect()
}

/// Correct organ centres by the organs' layout on the supports: every other organ's
/// located centre plus the supports' mean offset between the two organs estimates an
/// organ's centre; the per-axis median of those estimates (robust to a badly located
/// organ) is blended with the organ's own centre (the mean of its parts' [`part_centre`]s)
/// as `own·own centre + (1 − own)·others' estimate`, and the organ's points move with it.
/// `layout` is [`organ_points`]' (label, part count) list; grid voxels. Organs whose
/// `in_view` share ([`organs_in_view`]) is below [`MIN_IN_VIEW`] give no estimates (missing
/// shares count as in view). Needs two organs.
pub fn apply_layout(
    located: &[[f64; 3]],
    points: &[&PointAtlas],
    layout: &[(u16, usize)],
    atlas: &Atlas,
    own: f64,
    in_view: &[f32],
) -> Vec<[f64; 3]> {
    if own >= 1.0 || layout.len() < 2 {
        return located.to_vec();
    }
    let centres = organ_centres(located, points, layout);
    let mut targets = centres.clone();
    for (i, &(li, _)) in layout.iter().enumerate() {
        let Some(oi) = atlas.organ(li) else { continue };
        let mut estimates: Vec<[f64; 3]> = Vec::new();
        for (j, &(lj, _)) in layout.iter().enumerate() {
            let Some(oj) = atlas
                .organ(lj)
                .filter(|_| j != i && in_view.get(j).is_none_or(|&f| f >= MIN_IN_VIEW))
            else {
                continue;
            };
            // Mean offset (grid voxels) from organ j to organ i on the supports with both.
            let mut sum = [0.0; 3];
            let mut n = 0.0;
            for (s, ci) in &oi.centres_mm {
                if let Some((_, cj)) = oj.centres_mm.iter().find(|(t, _)| t == s) {
                    for a in 0..3 {
                        sum[a] += (ci[a] - cj[a]) / SPACING_MM;
                    }
                    n += 1.0;
                }
            }
            if n > 0.0 {
                estimates.push([0, 1, 2].map(|a| centres[j][a] + sum[a] / n));
            }
        }
        if !estimates.is_empty() {
            let others = [0, 1, 2].map(|a| median(estimates.iter().map(|e| e[a]).collect()));
            targets[i] = [0, 1, 2].map(|a| own * centres[i][a] + (1.0 - own) * others[a]);
        }
    }
    move_organs(located, layout, &centres, &targets)
}

/// Move each organ to where its supports' intensity templates put it: every template is
/// matched within `radius` grid voxels of the organ's centre ([`match_template`]) and the
/// organ's points move with its centre to the per-axis median of the matches. Organs less
/// than [`MIN_IN_VIEW`] in the scan (`in_view`: [`organs_in_view`]) or without templates stay.
#[allow(clippy::too_many_arguments)]
pub async fn apply_templates(
    query: &QueryState,
    located: &[[f64; 3]],
    points: &[&PointAtlas],
    layout: &[(u16, usize)],
    atlas: &Atlas,
    in_view: &[f32],
    radius: usize,
    device: &Device,
) -> Result<Vec<[f64; 3]>> {
    if radius == 0 {
        return Ok(located.to_vec());
    }
    let centres = organ_centres(located, points, layout);
    let mut targets = centres.clone();
    for (i, &(label, _)) in layout.iter().enumerate() {
        let Some(organ) = atlas.organ(label) else {
            continue;
        };
        if in_view.get(i).is_some_and(|&f| f < MIN_IN_VIEW) {
            continue;
        }
        let mut found: Vec<[f64; 3]> = Vec::new();
        for t in &organ.templates {
            if let Some((c, _)) = match_template(&query.prep, t, centres[i], radius, device).await?
            {
                found.push(c);
            }
        }
        if !found.is_empty() {
            targets[i] = [0, 1, 2].map(|a| median(found.iter().map(|c| c[a]).collect()));
        }
    }
    Ok(move_organs(located, layout, &centres, &targets))
}

/// The index ranges of each organ's points in a [`organ_points`] list.
pub(super) fn organ_ranges(layout: &[(u16, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0;
    layout
        .iter()
        .map(|&(_, n)| {
            at += 6 * n;
            at - 6 * n..at
        })
        .collect()
}

/// Each organ's centre (grid voxels): the mean of its parts' [`part_centre`]s.
fn organ_centres(
    located: &[[f64; 3]],
    points: &[&PointAtlas],
    layout: &[(u16, usize)],
) -> Vec<[f64; 3]> {
    organ_ranges(layout)
        .into_iter()
        .map(|r| {
            let cs: Vec<[f64; 3]> = located[r.clone()]
                .chunks(6)
                .zip(points[r].chunks(6))
                .map(|(l, p)| part_centre(l, p))
                .collect();
            [0, 1, 2].map(|a| cs.iter().map(|c| c[a]).sum::<f64>() / cs.len().max(1) as f64)
        })
        .collect()
}

/// Move each organ's points by `to − from` (its centre's move).
fn move_organs(
    located: &[[f64; 3]],
    layout: &[(u16, usize)],
    from: &[[f64; 3]],
    to: &[[f64; 3]],
) -> Vec<[f64; 3]> {
    let mut out = located.to_vec();
    for ((r, f), t) in organ_ranges(layout).into_iter().zip(from).zip(to) {
        for p in &mut out[r] {
            for a in 0..3 {
                p[a] += t[a] - f[a];
            }
        }
    }
    out
}
