//! MSS refinement: support windows matched in the query's feature maps, from
//! the supports' mean windows or each support's own (then the median point), in
//! one tiled frame or patches centred on the coarse points.

use burn::tensor::Device;

use super::atlas::{Atlas, PointAtlas};
use super::features::{FeatureFrame, Search};
use super::localize::LocalizeOptions;
use super::net::MedLam;
use super::query::QueryState;
use crate::Result;
use crate::output::median;

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
