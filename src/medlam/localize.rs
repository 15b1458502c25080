//! Localizing organs in a query CT with MedLAM and a support [`Atlas`].
//!
//! 1. The query (canonical grid) is resampled to 3 mm and intensity-mapped.
//! 2. **UAM (coarse)**: the latent coordinate of the query is the mean `p` of
//!    9 patches around its body centre (the centre and the 8 corners of a cube
//!    of ±P/4); each support point lands at `centre + r·tanh(p̄_s − p̄_q)`.
//! 3. **MSS (refinement)**: the query's feature maps are computed for the body
//!    region in one tiled pass (only tiles a search needs); each support window
//!    is correlated with them and the best voxel within `search_radius_vox` of
//!    the coarse point (or anywhere in the body without UAM) is the point.
//! 4. **Priors**: each part's points take the supports' mean shape around their
//!    robust centre ([`regularize_shape`]); each organ's centre is then pulled
//!    halfway to where the other organs' centres and the supports' organ layout
//!    put it ([`apply_layout`]).
//! 5. **Intensity templates**: each organ moves to the median of the centres its
//!    supports' intensity templates find around it ([`apply_templates`]).
//! 6. Points → boxes (WPL or SPL, see [`super::boxes`]) in canonical voxel
//!    indices of the query; the pipeline maps them to the file's grid.
//!
//! Device-generic and async (tensor reads are async), so it runs in the browser.

use burn::tensor::Device;

use super::atlas::{Atlas, PointAtlas};
use super::boxes::wpl_slice_boxes;
use super::boxes::{box_from_points, merge_extreme_points, spl_slice_boxes, union_box};
use super::features::{FeatureFrame, Search, WINDOWS, frame_for};
use super::net::{MedLam, MedLamConfig, UAM_RATIO_MM};
use super::prep::{Prepared, SPACING_MM};
use super::template::match_template;
use crate::device::read_f32;
use crate::output::median;
use crate::types::BoxMode;
use crate::types::{Localizer, MIN_IN_VIEW, OrganLocalization};
use crate::volume::CtVolume;
use crate::volume::labels::BoxVox;
use crate::{Error, Result};

/// How a query is localized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalizeOptions {
    /// Use the UAM coarse step (else MSS searches the whole body).
    pub uam: bool,
    /// Refine with MSS (else the UAM points are the result).
    pub mss: bool,
    /// Half-width (3 mm voxels) of the MSS search cube around each coarse point.
    pub search_radius_vox: usize,
    /// UAM passes: after the first (from patches at the body centre), each further pass
    /// re-estimates an organ part's points from a patch centred on their current mean.
    pub uam_iterations: usize,
    /// Match each support's windows separately and take the median point (else match the
    /// supports' mean windows).
    pub per_support: bool,
    /// Shape regularisation of each part's 6 points: 1 keeps the located points, 0 replaces
    /// them by the supports' mean shape placed at the located points' mean centre (see
    /// [`regularize_shape`]); in between blends the two.
    pub shape_blend: f64,
    /// Query features from a patch centred on each coarse point (as the reference and as
    /// the supports) instead of one tiled pass over the body.
    pub centred: bool,
    /// Centred MSS passes: each further pass re-centres the query patch on the previous
    /// match and searches again within half the previous radius (at least 2 voxels).
    pub mss_iterations: usize,
    /// Organ layout correction, applied after the shape regularisation when two or more
    /// organs are localized together: the weight of each organ's own centre against the
    /// estimate the other organs give (see [`apply_layout`]); 1 turns it off.
    pub layout_blend: f64,
    /// Half-width (3 mm voxels) of the intensity-template search around each organ's
    /// centre, the last step (see [`apply_templates`]); 0 turns it off.
    pub template_radius_vox: usize,
}

impl Default for LocalizeOptions {
    fn default() -> Self {
        Self {
            uam: true,
            mss: true,
            search_radius_vox: 16,
            uam_iterations: 1,
            per_support: true,
            shape_blend: 0.0,
            centred: true,
            mss_iterations: 2,
            layout_blend: 0.5,
            template_radius_vox: 5,
        }
    }
}

/// A query prepared for localization: its 3 mm grid, body box and mean latent coordinate.
pub struct QueryState {
    pub prep: Prepared,
    /// Body box on the 3 mm grid (inclusive), HU > −500.
    pub body_lo: [i64; 3],
    pub body_hi: [i64; 3],
    /// Mean latent coordinate of the query patches and their mean centre (grid voxel).
    pub position: [f64; 3],
    pub centre: [f64; 3],
    /// Canonical grid size of the query.
    pub canonical_dims: [usize; 3],
}

/// Body box of a prepared grid (intensity > 0.125 ⇔ HU > −500).
fn body_box(prep: &Prepared) -> Option<([i64; 3], [i64; 3])> {
    let [nx, ny, _] = prep.dims;
    let mut lo = [i64::MAX; 3];
    let mut hi = [i64::MIN; 3];
    for (idx, &v) in prep.data.iter().enumerate() {
        if v > 0.125 {
            let p = [
                (idx % nx) as i64,
                ((idx / nx) % ny) as i64,
                (idx / (nx * ny)) as i64,
            ];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
    }
    (lo[0] <= hi[0]).then_some((lo, hi))
}

/// Prepare a **canonical** query CT: 3 mm grid, body box, and the UAM query patches.
pub async fn query_state(
    net: &MedLam,
    config: &MedLamConfig,
    canon: &CtVolume,
    device: &Device,
) -> Result<QueryState> {
    let prep = Prepared::from_canonical(canon)?;
    let (body_lo, body_hi) = body_box(&prep).ok_or_else(|| {
        Error::InvalidVolume("no body found in the query (no voxel above −500 HU)".into())
    })?;
    let p = config.patch;
    let mid = [0, 1, 2].map(|a| (body_lo[a] + body_hi[a]) / 2);
    let q = (p / 4) as i64;
    let mut centres = vec![mid];
    for c in 0..8 {
        centres.push([0, 1, 2].map(|a| mid[a] + if (c >> a) & 1 == 1 { q } else { -q }));
    }
    let pos = read_f32(net.position(prep.patches(&centres, p, device))).await?;
    let n = centres.len() as f64;
    let position = [0, 1, 2].map(|a| {
        (0..centres.len())
            .map(|b| pos[3 * b + a] as f64)
            .sum::<f64>()
            / n
    });
    let centre = [0, 1, 2].map(|a| centres.iter().map(|c| c[a] as f64).sum::<f64>() / n);
    Ok(QueryState {
        prep,
        body_lo,
        body_hi,
        position,
        centre,
        canonical_dims: canon.dims,
    })
}

impl QueryState {
    /// Fraction of the box spanned by `points` (grid voxels, unclamped UAM estimates)
    /// that lies inside the query's grid: the product of the per-axis overlaps.
    pub fn fraction_in_view(&self, points: &[[f64; 3]]) -> f32 {
        let mut f = 1.0;
        for a in 0..3 {
            let lo = points.iter().map(|p| p[a]).fold(f64::INFINITY, f64::min);
            let hi = points
                .iter()
                .map(|p| p[a])
                .fold(f64::NEG_INFINITY, f64::max);
            if !(lo.is_finite() && hi.is_finite()) {
                return 0.0;
            }
            // A box at least one voxel wide, against the grid [-0.5, dims - 0.5].
            let (lo, hi) = (lo.min(hi - 1.0), hi);
            let (g0, g1) = (-0.5, self.prep.dims[a] as f64 - 0.5);
            let overlap = (hi.min(g1) - lo.max(g0)).max(0.0);
            f *= overlap / (hi - lo);
        }
        f as f32
    }

    /// UAM estimate (grid voxel, continuous) of a support point.
    pub fn uam_point(&self, point: &PointAtlas) -> [f64; 3] {
        [0, 1, 2].map(|a| {
            let d = (point.position[a] as f64 - self.position[a]).tanh() * UAM_RATIO_MM[a] as f64;
            self.centre[a] + d / SPACING_MM
        })
    }

    /// UAM estimates of groups of support points (e.g. an organ part's 6) re-made from one
    /// patch centred on each group's current mean estimate (grid voxels).
    pub async fn uam_refine(
        &self,
        net: &MedLam,
        config: &MedLamConfig,
        groups: &[Vec<&PointAtlas>],
        current: &[Vec<[f64; 3]>],
        device: &Device,
    ) -> Result<Vec<Vec<[f64; 3]>>> {
        let p = config.patch;
        let centres: Vec<[i64; 3]> = current
            .iter()
            .map(|pts| {
                let n = pts.len().max(1) as f64;
                [0, 1, 2].map(|a| (pts.iter().map(|x| x[a]).sum::<f64>() / n).round() as i64)
            })
            .collect();
        let mut out = Vec::with_capacity(groups.len());
        let batch = crate::device::patch_batch(device, 8);
        for (gs, cs) in groups.chunks(batch).zip(centres.chunks(batch)) {
            let pos = read_f32(net.position(self.prep.patches(cs, p, device))).await?;
            for (b, (g, c)) in gs.iter().zip(cs).enumerate() {
                out.push(
                    g.iter()
                        .map(|pt| {
                            [0, 1, 2].map(|a| {
                                let d = (pt.position[a] - pos[3 * b + a]) as f64;
                                c[a] as f64 + d.tanh() * UAM_RATIO_MM[a] as f64 / SPACING_MM
                            })
                        })
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// Canonical voxel of the query at a grid position (rounded, clamped to the volume).
    pub fn to_canonical(&self, grid: [f64; 3]) -> [usize; 3] {
        let c = self.prep.grid_to_canonical(grid);
        [0, 1, 2].map(|a| (c[a].round().max(0.0) as usize).min(self.canonical_dims[a] - 1))
    }

    /// The feature frame over the body, computing only the tiles these searches need
    /// (`starts` in grid voxels; `radius` as in [`Search`]).
    pub async fn frame(
        &self,
        net: &MedLam,
        config: &MedLamConfig,
        starts: &[[f64; 3]],
        radius: Option<usize>,
        device: &Device,
    ) -> Result<FeatureFrame> {
        let margin = (config.patch / 4) as i64;
        let (origin, size) = frame_for(self.body_lo, self.body_hi, margin, config.patch);
        // Window reach beyond the search box, in voxels.
        let reach = (0..3)
            .map(|s| (WINDOWS[s] / 2 * config.feature_strides()[s]) as i64)
            .max()
            .unwrap_or(0)
            + 1;
        let boxes: Vec<([i64; 3], [i64; 3])> = match radius {
            None => vec![([i64::MIN / 4; 3], [i64::MAX / 4; 3])],
            Some(r) => starts
                .iter()
                .map(|s| {
                    let c = [0, 1, 2].map(|a| s[a].round() as i64 - origin[a]);
                    (
                        c.map(|x| x - r as i64 - reach),
                        c.map(|x| x + r as i64 + reach),
                    )
                })
                .collect(),
        };
        let needed = |lo: [i64; 3], hi: [i64; 3]| {
            boxes
                .iter()
                .any(|(a, b)| (0..3).all(|k| lo[k] <= b[k] && a[k] <= hi[k]))
        };
        FeatureFrame::compute(net, config, &self.prep, origin, size, &needed, device).await
    }
}

/// Refine points (grid voxels) by MSS with the supports' mean windows: each is matched
/// within `radius` of its start (`None`: anywhere in the frame). Returns grid voxels and
/// scores.
pub async fn refine(
    frame: &FeatureFrame,
    atlas: &Atlas,
    points: &[&PointAtlas],
    starts: &[[f64; 3]],
    radius: Option<usize>,
    device: &Device,
) -> Result<Vec<([f64; 3], f32)>> {
    let windows: Vec<&[Vec<f32>; 3]> = points.iter().map(|p| &p.windows).collect();
    match_windows(frame, atlas, &windows, starts, radius, device).await
}

/// Refine points by MSS with each support's own windows, all searched around the same
/// start; the point is the per-axis median of the supports' matches, the score their mean.
pub async fn refine_per_support(
    frame: &FeatureFrame,
    atlas: &Atlas,
    points: &[&PointAtlas],
    starts: &[[f64; 3]],
    radius: Option<usize>,
    device: &Device,
) -> Result<Vec<([f64; 3], f32)>> {
    let mut windows = Vec::new();
    let mut st = Vec::new();
    for (p, s) in points.iter().zip(starts) {
        for sp in &p.per_support {
            windows.push(&sp.windows);
            st.push(*s);
        }
    }
    let found = match_windows(frame, atlas, &windows, &st, radius, device).await?;
    let mut out = Vec::with_capacity(points.len());
    let mut at = 0;
    for p in points {
        let n = p.per_support.len();
        let m = &found[at..at + n];
        at += n;
        let score = m.iter().map(|x| x.1).sum::<f32>() / n.max(1) as f32;
        out.push((
            [0, 1, 2].map(|a| median(m.iter().map(|x| x.0[a]).collect())),
            score,
        ));
    }
    Ok(out)
}

/// Refine points by MSS in query patches centred on their starts (one forward per point),
/// searching within `search_radius_vox` (at most half a patch); with `per_support`, each
/// support's windows separately and the median point.
pub async fn refine_centred(
    net: &MedLam,
    atlas: &Atlas,
    query: &QueryState,
    points: &[&PointAtlas],
    starts: &[[f64; 3]],
    options: &LocalizeOptions,
    device: &Device,
) -> Result<Vec<([f64; 3], f32)>> {
    let config = &atlas.config;
    let centres: Vec<[i64; 3]> = starts.iter().map(|s| s.map(|x| x.round() as i64)).collect();
    let radius = Some(options.search_radius_vox.min(config.patch / 2));
    let mut out = Vec::with_capacity(points.len());
    const CHUNK: usize = 8;
    for ((pts, st), cs) in points
        .chunks(CHUNK)
        .zip(starts.chunks(CHUNK))
        .zip(centres.chunks(CHUNK))
    {
        let frames = FeatureFrame::centred_tiles(net, config, &query.prep, cs, device).await?;
        for ((p, s), frame) in pts.iter().zip(st).zip(&frames) {
            let found = if options.per_support {
                refine_per_support(frame, atlas, &[*p], &[*s], radius, device).await?
            } else {
                refine(frame, atlas, &[*p], &[*s], radius, device).await?
            };
            out.extend(found);
            crate::device::yield_on_cpu(device).await;
        }
    }
    Ok(out)
}

/// Match window sets (one per start) in a frame; grid voxels and scores.
async fn match_windows(
    frame: &FeatureFrame,
    atlas: &Atlas,
    windows: &[&[Vec<f32>; 3]],
    starts: &[[f64; 3]],
    radius: Option<usize>,
    device: &Device,
) -> Result<Vec<([f64; 3], f32)>> {
    const CHUNK: usize = 24;
    let mut out = Vec::with_capacity(windows.len());
    for (win, st) in windows.chunks(CHUNK).zip(starts.chunks(CHUNK)) {
        let windows = atlas.window_tensors(win, device);
        let searches: Vec<Search> = st
            .iter()
            .map(|s| Search {
                centre: [0, 1, 2].map(|a| s[a] - frame.origin[a] as f64),
                radius,
            })
            .collect();
        for m in frame.best_matches(&windows, &searches).await? {
            out.push((
                [0, 1, 2].map(|a| (m.point[a] + frame.origin[a]) as f64),
                m.score,
            ));
        }
    }
    Ok(out)
}

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
fn organ_ranges(layout: &[(u16, usize)]) -> Vec<std::ops::Range<usize>> {
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

/// Assemble an organ's localization from its parts' points (canonical voxels of the query).
pub fn organ_localization(
    label: u16,
    parts: &[[[usize; 3]; 6]],
    mode: BoxMode,
    confidence: f32,
) -> Option<OrganLocalization> {
    let boxes: Vec<BoxVox> = parts.iter().map(box_from_points).collect();
    let bbox = union_box(&boxes)?;
    let extreme_points = merge_extreme_points(parts)?;
    let slice_boxes = match mode {
        BoxMode::Spl { .. } if parts.len() > 1 => spl_slice_boxes(&boxes),
        _ => wpl_slice_boxes(&bbox),
    };
    Some(OrganLocalization {
        label,
        confidence,
        in_view: 1.0,
        extreme_points,
        bbox,
        slice_boxes,
        source: "medlam",
        warning: None,
        prior: None,
    })
}

/// The points of an atlas's requested organs, in order, with each organ's part count.
pub fn organ_points<'a>(
    atlas: &'a Atlas,
    organs: &[u16],
) -> (Vec<&'a PointAtlas>, Vec<(u16, usize)>) {
    let mut points: Vec<&PointAtlas> = Vec::new();
    let mut layout = Vec::new();
    for &label in organs {
        if let Some(o) = atlas.organ(label) {
            layout.push((label, o.parts.len()));
            for part in &o.parts {
                points.extend(part.iter());
            }
        }
    }
    (points, layout)
}

/// Locate support points in a query (grid voxels and MSS scores; NaN without MSS):
/// UAM, then MSS as the options say; no shape regularisation.
pub async fn locate_points(
    net: &MedLam,
    atlas: &Atlas,
    query: &QueryState,
    points: &[&PointAtlas],
    options: &LocalizeOptions,
    device: &Device,
) -> Result<Vec<([f64; 3], f32)>> {
    let config = &atlas.config;
    let mut coarse: Vec<[f64; 3]> = points.iter().map(|p| query.uam_point(p)).collect();
    for _ in 1..options.uam_iterations.max(1) {
        let groups: Vec<Vec<&PointAtlas>> = points.chunks(6).map(|c| c.to_vec()).collect();
        let current: Vec<Vec<[f64; 3]>> = coarse.chunks(6).map(|c| c.to_vec()).collect();
        coarse = query
            .uam_refine(net, config, &groups, &current, device)
            .await?
            .concat();
    }
    let radius = if options.uam {
        Some(options.search_radius_vox)
    } else {
        None
    };
    Ok(if options.mss && options.centred && options.uam {
        let mut found = refine_centred(net, atlas, query, points, &coarse, options, device).await?;
        let mut o = *options;
        for _ in 1..options.mss_iterations.max(1) {
            o.search_radius_vox = (o.search_radius_vox / 2).max(2);
            let starts: Vec<[f64; 3]> = found.iter().map(|x| x.0).collect();
            found = refine_centred(net, atlas, query, points, &starts, &o, device).await?;
        }
        found
    } else if options.mss {
        let frame = query.frame(net, config, &coarse, radius, device).await?;
        if options.per_support {
            refine_per_support(&frame, atlas, points, &coarse, radius, device).await?
        } else {
            refine(&frame, atlas, points, &coarse, radius, device).await?
        }
    } else {
        coarse.iter().map(|&c| (c, f32::NAN)).collect()
    })
}

/// Share of each organ's box inside the scan, from its UAM points (not the refined ones:
/// MSS only searches inside the scan), per [`organ_points`] layout entry.
pub fn organs_in_view(
    query: &QueryState,
    points: &[&PointAtlas],
    layout: &[(u16, usize)],
) -> Vec<f32> {
    organ_ranges(layout)
        .into_iter()
        .map(|r| {
            let uam: Vec<[f64; 3]> = points[r].iter().map(|p| query.uam_point(p)).collect();
            query.fraction_in_view(&uam)
        })
        .collect()
}

/// Localize organs in a prepared query (canonical voxel results).
pub async fn localize_organs(
    net: &MedLam,
    atlas: &Atlas,
    query: &QueryState,
    organs: &[u16],
    options: &LocalizeOptions,
    device: &Device,
) -> Result<Vec<OrganLocalization>> {
    let (points, layout) = organ_points(atlas, organs);
    let mut located = locate_points(net, atlas, query, &points, options, device).await?;
    let in_view = organs_in_view(query, &points, &layout);
    // Priors, then the intensity templates (each a no-op when turned off).
    let mut pts: Vec<[f64; 3]> = located.iter().map(|x| x.0).collect();
    if options.shape_blend < 1.0 || options.layout_blend < 1.0 {
        let shaped = regularize_parts(&pts, &points, options.shape_blend);
        pts = apply_layout(
            &shaped,
            &points,
            &layout,
            atlas,
            options.layout_blend,
            &in_view,
        );
    }
    let pts = apply_templates(
        query,
        &pts,
        &points,
        &layout,
        atlas,
        &in_view,
        options.template_radius_vox,
        device,
    )
    .await?;
    for (l, r) in located.iter_mut().zip(pts) {
        l.0 = r;
    }
    let mut out = Vec::new();
    let mut at = 0;
    for (&(label, n_parts), &view) in layout.iter().zip(&in_view) {
        let mut parts = Vec::with_capacity(n_parts);
        let mut score = 0.0;
        for _ in 0..n_parts {
            let pts: [[usize; 3]; 6] =
                std::array::from_fn(|k| query.to_canonical(located[at + k].0));
            score += located[at..at + 6].iter().map(|x| x.1).sum::<f32>();
            parts.push(pts);
            at += 6;
        }
        let confidence = score / (6 * n_parts) as f32;
        if let Some(mut o) = organ_localization(label, &parts, atlas.mode, confidence) {
            o.in_view = view;
            if o.outside_view() {
                // Do not invent a mask for an organ the scan does not show.
                o.confidence = 0.0;
                o.slice_boxes.clear();
            }
            out.push(o);
        }
    }
    Ok(out)
}

/// MedLAM as the pipeline's [`Localizer`]: a network, a support atlas and options
/// (built by `run::session::medlam_localizer`).
#[derive(Clone)]
pub struct MedLamLocalizer {
    pub net: MedLam,
    pub atlas: Atlas,
    pub device: Device,
    pub options: LocalizeOptions,
}

impl Localizer for MedLamLocalizer {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        let q = query_state(&self.net, &self.atlas.config, query, &self.device).await?;
        localize_organs(
            &self.net,
            &self.atlas,
            &q,
            organs,
            &self.options,
            &self.device,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medlam::atlas::OrganAtlas;
    use crate::volume::resample::ResampleGrid;

    #[test]
    fn uam_moves_by_r_tanh_of_the_latent_difference() {
        let dims = [10, 10, 10];
        // Canonical CT at 1.5 mm: grid voxel g is canonical voxel 2g + 0.5.
        let prep = Prepared::from_parts(
            dims,
            vec![0.0; 1000],
            ResampleGrid::new([20, 20, 20], [1.5; 3], [3.0; 3]).unwrap(),
        )
        .unwrap();
        let q = QueryState {
            prep,
            body_lo: [0; 3],
            body_hi: [9; 3],
            position: [0.1, 0.0, -0.2],
            centre: [5.0, 5.0, 5.0],
            canonical_dims: [20, 20, 20],
        };
        let point = PointAtlas {
            position: [0.1, 0.05, 0.0],
            windows: [vec![], vec![], vec![]],
            per_support: vec![],
            offset_mm: [0.0; 3],
        };
        let g = q.uam_point(&point);
        assert!((g[0] - 5.0).abs() < 1e-5);
        assert!((g[1] - (5.0 + 600.0 * 0.05f64.tanh() / 3.0)).abs() < 1e-5);
        assert!((g[2] - (5.0 + 1500.0 * 0.2f64.tanh() / 3.0)).abs() < 1e-4);
        // Grid → canonical: 2g + 0.5, rounded and clamped to the volume.
        assert_eq!(q.to_canonical([3.0, 0.0, 100.0]), [7, 1, 19]);
    }

    #[test]
    fn shape_regularisation_keeps_a_robust_centre_and_the_support_shape() {
        let pt = |o: [f64; 3]| PointAtlas {
            position: [0.0; 3],
            windows: [vec![], vec![], vec![]],
            per_support: vec![],
            offset_mm: o,
        };
        // Support shape: points at ±6 mm (±2 voxels) along each axis from the centre.
        let atlas: Vec<PointAtlas> = (0..6)
            .map(|k| {
                let mut o = [0.0; 3];
                o[k / 2] = if k % 2 == 0 { -6.0 } else { 6.0 };
                pt(o)
            })
            .collect();
        let refs: Vec<&PointAtlas> = atlas.iter().collect();
        // Located: the shape around (10, 20, 30), with the i_max point 6 voxels too far.
        let mut located: Vec<[f64; 3]> = atlas
            .iter()
            .map(|p| {
                [
                    10.0 + p.offset_mm[0] / 3.0,
                    20.0 + p.offset_mm[1] / 3.0,
                    30.0 + p.offset_mm[2] / 3.0,
                ]
            })
            .collect();
        located[1][0] += 6.0;
        let prior = regularize_shape(&located, &refs, 0.0);
        // The median centre estimate ignores the one wrong point; the shape is the support's.
        assert_eq!(prior[0], [8.0, 20.0, 30.0]);
        assert_eq!(prior[1], [12.0, 20.0, 30.0]);
        assert_eq!(regularize_shape(&located, &refs, 1.0), located);
        let half = regularize_shape(&located, &refs, 0.5);
        assert!((half[1][0] - (located[1][0] + 12.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn layout_pulls_a_misplaced_organ_halfway_to_where_the_others_put_it() {
        let pt = || PointAtlas {
            position: [0.0; 3],
            windows: [vec![], vec![], vec![]],
            per_support: vec![],
            offset_mm: [0.0; 3],
        };
        // Three organs, one part each; on the two supports organ 2 lies 30 mm (10 voxels)
        // along i from organ 1 and organ 3 30 mm along j, with 6 mm of spread.
        let organ = |label: u16, c: [[f64; 3]; 2]| OrganAtlas {
            label,
            parts: vec![std::array::from_fn(|_| pt())],
            supports: 2,
            centres_mm: vec![(0, c[0]), (1, c[1])],
            templates: vec![],
        };
        let atlas = Atlas {
            config: MedLamConfig::new(16, [2, 2, 4, 4, 8], [4, 4, 4, 2], [8, 4]),
            mode: BoxMode::Wpl,
            organs: vec![
                organ(1, [[100.0, 100.0, 100.0], [200.0, 50.0, 80.0]]),
                organ(2, [[133.0, 100.0, 100.0], [227.0, 50.0, 80.0]]),
                organ(3, [[100.0, 130.0, 100.0], [200.0, 80.0, 80.0]]),
            ],
        };
        let (points, layout) = organ_points(&atlas, &[1, 2, 3]);
        assert_eq!(layout, vec![(1, 1), (2, 1), (3, 1)]);
        // Located: organs 1 and 3 where the layout puts them, organ 2 9 voxels off in k.
        let centres = [[20.0, 20.0, 20.0], [30.0, 20.0, 29.0], [20.0, 30.0, 20.0]];
        let located: Vec<[f64; 3]> = centres.iter().flat_map(|c| [*c; 6]).collect();
        let placed = apply_layout(&located, &points, &layout, &atlas, 0.5, &[1.0; 3]);
        // Organ 2: others' estimates (30, 20, 20) from organ 1 and from organ 3 → halfway.
        assert_eq!(placed[6], [30.0, 20.0, 24.5]);
        // Organ 1: estimates (20, 20, 29) from organ 2 and (20, 20, 20) from organ 3, median
        // (20, 20, 24.5) → halfway from its own centre.
        assert_eq!(placed[0], [20.0, 20.0, 22.25]);
        // An organ outside the view does not vote: organ 1 then follows organ 3 alone.
        let placed = apply_layout(&located, &points, &layout, &atlas, 0.5, &[1.0, 0.2, 1.0]);
        assert_eq!(placed[0], [20.0, 20.0, 20.0]);
        // Weight 1, or a single organ, leaves the points alone.
        assert_eq!(
            apply_layout(&located, &points, &layout, &atlas, 1.0, &[]),
            located
        );
        assert_eq!(
            apply_layout(
                &located[..6],
                &points[..6],
                &layout[..1],
                &atlas,
                0.5,
                &[1.0]
            ),
            located[..6]
        );
    }

    #[test]
    fn organ_localization_assembles_wpl_and_spl_boxes() {
        let slab = |k0: usize, k1: usize, i0: usize, i1: usize| -> [[usize; 3]; 6] {
            [
                [i0, 5, k0],
                [i1, 5, k1],
                [i0, 2, k0],
                [i1, 8, k1],
                [i0, 5, k0],
                [i1, 5, k1],
            ]
        };
        let parts = [slab(10, 12, 3, 6), slab(13, 15, 5, 9)];
        let wpl = organ_localization(3, &parts[..1], BoxMode::Wpl, 0.5).unwrap();
        assert_eq!(wpl.bbox.min, [3, 2, 10]);
        assert_eq!(wpl.slice_boxes.len(), 3);
        let spl = organ_localization(3, &parts, BoxMode::Spl { slab_mm: 6.0 }, 0.5).unwrap();
        assert_eq!(spl.bbox.min, [3, 2, 10]);
        assert_eq!(spl.bbox.max, [9, 8, 15]);
        assert_eq!(spl.slice_boxes.len(), 6);
        assert_eq!(spl.slice_boxes[0].max, [6, 8]);
        assert_eq!(spl.slice_boxes[5].min, [5, 2]);
        assert_eq!(spl.extreme_points[1], [9, 5, 15]);
    }
}
