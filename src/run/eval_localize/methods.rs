//! MedLAM's variants on one query of [`super::eval_localize`]: UAM, MSS, UAM+MSS, each
//! shape-regularised and with the organ layout and the intensity templates.

use burn::tensor::Device;

use super::EvalOptions;
use crate::Result;
use crate::medlam::atlas::{Atlas, PointAtlas};
use crate::medlam::localize::{
    LocalizeOptions, QueryState, apply_layout, apply_templates, locate_points, organ_localization,
    organ_points, organs_in_view, regularize_parts,
};
use crate::medlam::net::MedLam;
use crate::types::OrganLocalization;

/// Every method but the baseline for one query: UAM (1 and 2 passes), MSS alone (one
/// tiled feature pass, whole-body search) and UAM+MSS (patches centred on the UAM points,
/// `mss_iterations` passes; `/med`: each support matched separately, median point, in
/// `tuning` runs also 1 pass and other radii), each also shape-regularised (`~0.5`, `~0`)
/// and, with the support shape, corrected by the organ layout (`~0+layout`) and then moved
/// by the intensity templates (`~0+layout+tmpl`, the default).
pub(super) async fn evaluate_query(
    net: &MedLam,
    atlas: &Atlas,
    q: &QueryState,
    organs: &[u16],
    o: &EvalOptions,
) -> Result<Vec<(String, Vec<OrganLocalization>)>> {
    let (points, layout) = organ_points(atlas, organs);
    let in_view = organs_in_view(q, &points, &layout);
    let methods = QueryMethods {
        net,
        atlas,
        q,
        organs,
        device: &o.device,
        points,
        layout,
        in_view,
        // The organ layout as the pipeline applies it: default weight, organs in view vote.
        layout_blend: LocalizeOptions::default().layout_blend,
        template_radius: LocalizeOptions::default().template_radius_vox,
    };
    let mut out = Vec::new();
    for (name, opt) in method_options(o) {
        methods.run(&mut out, name, opt).await?;
    }
    Ok(out)
}

/// The located methods of [`evaluate_query`], in order: name and options.
fn method_options(o: &EvalOptions) -> Vec<(String, LocalizeOptions)> {
    // Rows without `/med` match the supports' mean windows; the default (`/med~0+layout+tmpl`)
    // matches each support separately.
    let base = LocalizeOptions {
        mss_iterations: o.mss_iterations,
        per_support: false,
        ..LocalizeOptions::default()
    };
    if o.quick {
        let r = o.radii.first().copied().unwrap_or(16);
        return vec![(
            format!("uam+mss/med@{r}"),
            LocalizeOptions {
                per_support: true,
                search_radius_vox: r,
                ..base
            },
        )];
    }
    let uam = LocalizeOptions { mss: false, ..base };
    let mut out = vec![
        ("uam".into(), uam),
        (
            "uam2".into(),
            LocalizeOptions {
                uam_iterations: 2,
                ..uam
            },
        ),
        (
            "mss".into(),
            LocalizeOptions {
                uam: false,
                centred: false,
                ..base
            },
        ),
    ];
    for (i, &r) in o.radii.iter().enumerate() {
        let at = LocalizeOptions {
            search_radius_vox: r,
            ..base
        };
        if i == 0 || o.tuning {
            out.push((format!("uam+mss@{r}"), at));
            out.push((
                format!("uam+mss/med@{r}"),
                LocalizeOptions {
                    per_support: true,
                    ..at
                },
            ));
        }
        if o.tuning && i == 0 {
            out.push((
                format!("uam+mss@{r}x1"),
                LocalizeOptions {
                    mss_iterations: 1,
                    ..at
                },
            ));
        }
    }
    out
}

/// What the methods of [`evaluate_query`] share on one query.
struct QueryMethods<'a> {
    net: &'a MedLam,
    atlas: &'a Atlas,
    q: &'a QueryState,
    organs: &'a [u16],
    device: &'a Device,
    /// The atlas points of the organs, 6 per part, and the parts per organ.
    points: Vec<&'a PointAtlas>,
    layout: Vec<(u16, usize)>,
    /// How much of each organ is in view (its vote in the layout).
    in_view: Vec<f32>,
    layout_blend: f64,
    template_radius: usize,
}

impl QueryMethods<'_> {
    /// The organ boxes of located points (canonical grid of the query).
    fn assemble(&self, located: &[[f64; 3]]) -> Vec<OrganLocalization> {
        let (atlas, q) = (self.atlas, self.q);
        let mut out = Vec::new();
        let mut at = 0;
        for &label in self.organs {
            if let Some(org) = atlas.organ(label) {
                let mut parts = Vec::new();
                for _ in &org.parts {
                    parts.push(std::array::from_fn(|k| q.to_canonical(located[at + k])));
                    at += 6;
                }
                out.extend(organ_localization(label, &parts, atlas.mode, f32::NAN));
            }
        }
        out
    }

    /// One method (`name`, options `opt`) and its shape-regularised, layout and template
    /// variants, onto `out`.
    async fn run(
        &self,
        out: &mut Vec<(String, Vec<OrganLocalization>)>,
        name: String,
        opt: LocalizeOptions,
    ) -> Result<()> {
        let (atlas, q, points, layout) = (self.atlas, self.q, &self.points, &self.layout);
        let found = locate_points(self.net, atlas, q, points, &opt, self.device).await?;
        let located: Vec<[f64; 3]> = found.iter().map(|x| x.0).collect();
        for (suffix, blend) in [("", 1.0), ("~0.5", 0.5), ("~0", 0.0)] {
            let shaped = regularize_parts(&located, points, blend);
            if blend == 0.0 {
                let placed = apply_layout(
                    &shaped,
                    points,
                    layout,
                    atlas,
                    self.layout_blend,
                    &self.in_view,
                );
                let matched = apply_templates(
                    q,
                    &placed,
                    points,
                    layout,
                    atlas,
                    &self.in_view,
                    self.template_radius,
                    self.device,
                )
                .await?;
                out.push((
                    format!("{name}{suffix}+layout+tmpl"),
                    self.assemble(&matched),
                ));
                out.push((format!("{name}{suffix}+layout"), self.assemble(&placed)));
            }
            out.push((format!("{name}{suffix}"), self.assemble(&shaped)));
        }
        Ok(())
    }
}
