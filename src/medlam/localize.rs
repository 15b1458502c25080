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
use super::net::MedLam;
use crate::Result;
use crate::types::BoxMode;
use crate::types::{Localizer, OrganLocalization};
use crate::volume::CtVolume;
use crate::volume::labels::BoxVox;

pub use super::query::{QueryState, query_state};
pub use super::refine::{refine, refine_centred, refine_per_support};
use super::shape::organ_ranges;
pub use super::shape::{
    apply_layout, apply_templates, part_centre, regularize_parts, regularize_shape,
};

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
        mask_from: None,
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
    use crate::medlam::net::MedLamConfig;
    use crate::medlam::prep::Prepared;
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
