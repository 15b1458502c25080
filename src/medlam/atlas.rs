//! The support atlas: what MedLAM keeps of the supports to localize organs in
//! queries. For each organ, each part (the whole organ for WPL, each slab for
//! SPL) and each of its 6 extreme points: the latent coordinate `p` of the
//! 3 mm patch centred on the point and the normalised multi-scale feature
//! windows around it, both averaged over the supports that contain the organ; and per
//! organ, each support's intensity [`Template`] of the organ's box.
//!
//! An organ is given on a support either by a label map or by its 6 extreme
//! points (canonical voxel indices, ordered `[i_min, i_max, j_min, j_max,
//! k_min, k_max]`); SPL needs label maps, so an organ given by points on any
//! support is localized whole (one part).

use burn::tensor::{Device, Tensor, TensorData};

use super::boxes::{MAX_SLABS, box_from_points, slab_count, slab_extreme_points, union_box};
use super::features::{WINDOWS, centre_windows};
use super::net::{MedLam, MedLamConfig};
use super::prep::Prepared;
use super::template::Template;
use crate::device::{patch_batch, read_f32};
use crate::types::BoxMode;
use crate::volume::labels::{bounding_box, extreme_points};
use crate::volume::{CtVolume, LabelVolume};
use crate::{Error, Result};

/// How the organs of one support are given (canonical grid of its CT).
#[derive(Clone, Debug)]
pub enum SupportOrgans {
    /// A label map on the support CT's canonical grid.
    Labels(LabelVolume),
    /// The 6 extreme points of each organ, canonical voxel indices.
    Points(Vec<(u16, [[usize; 3]; 6])>),
}

/// One support: a canonical CT and its organs.
#[derive(Clone, Debug)]
pub struct SupportCase {
    pub name: String,
    pub ct: CtVolume,
    pub organs: SupportOrgans,
}

/// Running sums of one point over supports: latent position and windows per scale.
type PointSum = ([f64; 3], [Vec<f32>; 3]);

/// One point on one support.
#[derive(Clone, Debug)]
pub struct SupportPoint {
    /// Latent coordinate (canonical axis order).
    pub position: [f32; 3],
    /// Normalised windows per scale, `C_s·w³` values in `[C][K][J][I]` order.
    pub windows: [Vec<f32>; 3],
}

/// One support point averaged over the supports (and each support's own values).
#[derive(Clone, Debug)]
pub struct PointAtlas {
    /// Mean latent coordinate (canonical axis order).
    pub position: [f32; 3],
    /// Mean normalised windows per scale, `C_s·w³` values in `[C][K][J][I]` order.
    pub windows: [Vec<f32>; 3],
    /// The point on each support that has the organ.
    pub per_support: Vec<SupportPoint>,
    /// Mean offset (mm, canonical axes) of the point from the centre of its part's box.
    pub offset_mm: [f64; 3],
}

/// One organ: its parts (1 for WPL, the slabs for SPL), each of 6 points.
#[derive(Clone, Debug)]
pub struct OrganAtlas {
    pub label: u16,
    pub parts: Vec<[PointAtlas; 6]>,
    /// Supports that contain the organ.
    pub supports: usize,
    /// On each support that contains it (support index, in the order given): the organ's
    /// centre, the mean of its parts' box centres, in mm along the canonical axes from the
    /// support's first voxel. Differences between organs give their typical layout.
    pub centres_mm: Vec<(usize, [f64; 3])>,
    /// Each support's intensity template of the organ's whole box (supports where it is
    /// flat have none).
    pub templates: Vec<Template>,
}

/// The atlas of a support set.
#[derive(Clone, Debug)]
pub struct Atlas {
    pub config: MedLamConfig,
    pub mode: BoxMode,
    pub organs: Vec<OrganAtlas>,
}

impl Atlas {
    /// The organ with this label, if the supports have it.
    pub fn organ(&self, label: u16) -> Option<&OrganAtlas> {
        self.organs.iter().find(|o| o.label == label)
    }

    /// The window tensors `[n, C_s, w, w, w]` of `n` window sets, one tensor per scale.
    pub fn window_tensors(&self, windows: &[&[Vec<f32>; 3]], device: &Device) -> [Tensor<5>; 3] {
        let channels = self.config.feature_channels();
        [0, 1, 2].map(|s| {
            let w = WINDOWS[s];
            let data: Vec<f32> = windows.iter().flat_map(|p| p[s].iter().copied()).collect();
            Tensor::from_data(
                TensorData::new(data, [windows.len(), channels[s], w, w, w]),
                device,
            )
        })
    }

    /// Build the atlas of `organs` from the supports (each organ must be in at least one).
    pub async fn build(
        net: &MedLam,
        config: &MedLamConfig,
        supports: &[SupportCase],
        organs: &[u16],
        mode: BoxMode,
        device: &Device,
    ) -> Result<Self> {
        if supports.is_empty() {
            return Err(Error::InvalidArgument("no support scans given".into()));
        }
        let part_counts = organs
            .iter()
            .map(|&label| part_count(supports, label, mode))
            .collect::<Result<Vec<_>>>()?;
        let channels = config.feature_channels();
        let sizes = [0, 1, 2].map(|s| channels[s] * WINDOWS[s].pow(3));
        let mut sums = Sums::new(part_counts, sizes);
        // Whole-volume passes (resampling, the organs' boxes) block the page in the browser
        // on the CPU backend: it gets a turn after each.
        crate::device::yield_on_cpu(device).await;
        for (si, s) in supports.iter().enumerate() {
            let prep = Prepared::from_canonical(&s.ct)?;
            crate::device::yield_on_cpu(device).await;
            let jobs = sums.add_boxes(si, s, &prep, organs);
            crate::device::yield_on_cpu(device).await;
            sums.add_points(net, config, &prep, &jobs, device).await?;
        }
        Ok(Self {
            config: config.clone(),
            mode,
            organs: sums.finish(organs)?,
        })
    }
}

/// Parts of one organ: SPL slab count from the shortest support extent (1 for WPL or an
/// organ given by points on any support).
fn part_count(supports: &[SupportCase], label: u16, mode: BoxMode) -> Result<usize> {
    let mut extents = Vec::new();
    let mut slices = usize::MAX;
    let mut by_points = false;
    for s in supports {
        match &s.organs {
            SupportOrgans::Labels(l) => {
                if let Some(b) = bounding_box(l, label) {
                    extents.push((b.max[2] - b.min[2] + 1) as f64 * l.spacing_mm()[2]);
                    slices = slices.min(b.max[2] - b.min[2] + 1);
                }
            }
            SupportOrgans::Points(p) => {
                if let Some((_, pts)) = p.iter().find(|(l, _)| *l == label) {
                    by_points = true;
                    extents.push((pts[5][2].abs_diff(pts[4][2]) + 1) as f64 * s.ct.spacing_mm()[2]);
                }
            }
        }
    }
    if extents.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "organ {label} is in none of the supports"
        )));
    }
    Ok(match mode {
        BoxMode::Spl { slab_mm } if !by_points => {
            slab_count(&extents, slab_mm, MAX_SLABS).min(slices)
        }
        _ => 1,
    })
}

/// The extreme points of each of the `n` parts of an organ on a support (fewer when the
/// organ is absent there or too thin for the slabs).
fn support_parts(s: &SupportCase, label: u16, n: usize) -> Vec<[[usize; 3]; 6]> {
    match &s.organs {
        SupportOrgans::Labels(l) => {
            if n > 1 {
                slab_extreme_points(l, label, n)
            } else {
                extreme_points(l, label).into_iter().collect()
            }
        }
        SupportOrgans::Points(p) => p
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, pts)| *pts)
            .collect(),
    }
}

/// One point to embed: (organ index, part, point index, grid voxel).
type Job = (usize, usize, usize, [i64; 3]);

/// What [`Atlas::build`] gathers over the supports, per organ (and part and point).
struct Sums {
    /// Parts per organ.
    part_counts: Vec<usize>,
    /// Values of one point's window at each scale.
    sizes: [usize; 3],
    /// Sums of the latent positions and windows.
    points: Vec<Vec<[PointSum; 6]>>,
    /// Each support's own values.
    singles: Vec<Vec<[Vec<SupportPoint>; 6]>>,
    /// Sums of the points' offsets from their part's box centre (mm).
    offsets: Vec<Vec<[[f64; 3]; 6]>>,
    /// Supports that have the organ.
    counts: Vec<usize>,
    centres: Vec<Vec<(usize, [f64; 3])>>,
    templates: Vec<Vec<Template>>,
}

impl Sums {
    fn new(part_counts: Vec<usize>, sizes: [usize; 3]) -> Self {
        let organs = part_counts.len();
        let points = part_counts
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| std::array::from_fn(|_| ([0.0; 3], sizes.map(|z| vec![0f32; z]))))
                    .collect()
            })
            .collect();
        let singles = part_counts
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| std::array::from_fn(|_| Vec::new()))
                    .collect()
            })
            .collect();
        let offsets = part_counts
            .iter()
            .map(|&n| vec![[[0.0; 3]; 6]; n])
            .collect();
        Self {
            part_counts,
            sizes,
            points,
            singles,
            offsets,
            counts: vec![0usize; organs],
            centres: vec![Vec::new(); organs],
            templates: vec![Vec::new(); organs],
        }
    }

    /// Support `si`'s organ boxes: counts, point offsets, centres and templates; returns
    /// the points to embed.
    fn add_boxes(
        &mut self,
        si: usize,
        s: &SupportCase,
        prep: &Prepared,
        organs: &[u16],
    ) -> Vec<Job> {
        let spacing = s.ct.spacing_mm();
        let mut jobs: Vec<Job> = Vec::new();
        for (o, &label) in organs.iter().enumerate() {
            let parts = support_parts(s, label, self.part_counts[o]);
            if parts.len() != self.part_counts[o] {
                continue; // organ absent (or too thin for the slabs) on this support
            }
            self.counts[o] += 1;
            let mut organ_centre = [0.0; 3];
            for (part, pts) in parts.iter().enumerate() {
                let b = box_from_points(pts);
                for a in 0..3 {
                    organ_centre[a] +=
                        (b.min[a] + b.max[a]) as f64 / 2.0 * spacing[a] / parts.len() as f64;
                }
                for (k, p) in pts.iter().enumerate() {
                    for a in 0..3 {
                        let centre = (b.min[a] + b.max[a]) as f64 / 2.0;
                        self.offsets[o][part][k][a] += (p[a] as f64 - centre) * spacing[a];
                    }
                }
                for (k, p) in pts.iter().enumerate() {
                    let g = prep.canonical_to_grid(p.map(|x| x as f64));
                    jobs.push((o, part, k, g.map(|x| x.round() as i64)));
                }
            }
            self.centres[o].push((si, organ_centre));
            let boxes: Vec<_> = parts.iter().map(box_from_points).collect();
            if let Some(b) = union_box(&boxes) {
                self.templates[o].extend(organ_template(prep, &b));
            }
        }
        jobs
    }

    /// Embed the points of `jobs` on one support and add them up.
    async fn add_points(
        &mut self,
        net: &MedLam,
        config: &MedLamConfig,
        prep: &Prepared,
        jobs: &[Job],
        device: &Device,
    ) -> Result<()> {
        let sizes = self.sizes;
        for chunk in jobs.chunks(patch_batch(device, 6)) {
            let centres: Vec<[i64; 3]> = chunk.iter().map(|job| job.3).collect();
            let out = net.forward(prep.patches(&centres, config.patch, device));
            let windows = centre_windows(out.features);
            let pos = read_f32(out.position).await?;
            let mut win = Vec::new();
            for w in windows {
                win.push(read_f32(w).await?);
            }
            for (b, &(o, part, k, _)) in chunk.iter().enumerate() {
                self.singles[o][part][k].push(SupportPoint {
                    position: [0, 1, 2].map(|a| pos[3 * b + a]),
                    windows: [0, 1, 2]
                        .map(|sc| win[sc][b * sizes[sc]..(b + 1) * sizes[sc]].to_vec()),
                });
                let entry = &mut self.points[o][part][k];
                for a in 0..3 {
                    entry.0[a] += pos[3 * b + a] as f64;
                }
                for sc in 0..3 {
                    let z = sizes[sc];
                    for (acc, v) in entry.1[sc].iter_mut().zip(&win[sc][b * z..(b + 1) * z]) {
                        *acc += v;
                    }
                }
            }
        }
        Ok(())
    }

    /// The means over the supports: one [`OrganAtlas`] per organ.
    fn finish(mut self, organs: &[u16]) -> Result<Vec<OrganAtlas>> {
        let mut out = Vec::new();
        for (o, &label) in organs.iter().enumerate() {
            if self.counts[o] == 0 {
                return Err(Error::InvalidArgument(format!(
                    "organ {label} could not be used on any support (too thin for {} slabs?)",
                    self.part_counts[o]
                )));
            }
            let n = self.counts[o] as f64;
            let parts = std::mem::take(&mut self.points[o])
                .into_iter()
                .zip(std::mem::take(&mut self.singles[o]))
                .zip(&self.offsets[o])
                .map(|((pts, single), off)| {
                    let mut single = single.into_iter();
                    let mut k = 0;
                    pts.map(|(pos, win)| {
                        k += 1;
                        PointAtlas {
                            position: pos.map(|x| (x / n) as f32),
                            windows: win.map(|w| w.into_iter().map(|x| x / n as f32).collect()),
                            per_support: single.next().unwrap_or_default(),
                            offset_mm: off[k - 1].map(|x| x / n),
                        }
                    })
                })
                .collect();
            out.push(OrganAtlas {
                label,
                parts,
                supports: self.counts[o],
                centres_mm: std::mem::take(&mut self.centres[o]),
                templates: std::mem::take(&mut self.templates[o]),
            });
        }
        Ok(out)
    }
}

/// The template of an organ box (canonical voxels, inclusive) on a support's 3 mm grid:
/// the grid voxels the box overlaps.
fn organ_template(prep: &Prepared, b: &crate::volume::labels::BoxVox) -> Option<Template> {
    let lo = prep.canonical_to_grid(b.min.map(|x| x as f64 - 0.5));
    let hi = prep.canonical_to_grid(b.max.map(|x| x as f64 + 0.5));
    let centre = prep.canonical_to_grid([0, 1, 2].map(|a| (b.min[a] + b.max[a]) as f64 / 2.0));
    Template::cut(
        prep,
        lo.map(|x| x.round() as i64),
        hi.map(|x| x.round() as i64),
        centre,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::synthetic::{PhantomOptions, phantom};

    fn tiny() -> (MedLam, MedLamConfig, Device) {
        let dev = Device::flex();
        dev.seed(11);
        let cfg =
            MedLamConfig::new(16, [4, 4, 8, 8, 8], [8, 8, 8, 8], [8, 4]).with_decoder_levels(3);
        (cfg.init(&dev).unwrap(), cfg, dev)
    }

    fn supports(by_points: bool) -> Vec<SupportCase> {
        (1..=2)
            .map(|seed| {
                let (ct, lab) = phantom(&PhantomOptions {
                    dims: [40, 40, 30],
                    spacing_mm: [3.0; 3],
                    seed,
                    ras: seed == 2,
                })
                .unwrap();
                let (ct, lab) = (ct.to_canonical().0, lab.to_canonical().0);
                let organs = if by_points {
                    SupportOrgans::Points(
                        [1u16, 2]
                            .iter()
                            .map(|&l| (l, extreme_points(&lab, l).unwrap()))
                            .collect(),
                    )
                } else {
                    SupportOrgans::Labels(lab)
                };
                SupportCase {
                    name: format!("p{seed}"),
                    ct,
                    organs,
                }
            })
            .collect()
    }

    #[test]
    fn atlas_from_points_equals_atlas_from_labels() {
        let (net, cfg, dev) = tiny();
        let build = |s: &[SupportCase], mode| {
            pollster::block_on(Atlas::build(&net, &cfg, s, &[1, 2], mode, &dev)).unwrap()
        };
        let from_labels = build(&supports(false), BoxMode::Wpl);
        let from_points = build(&supports(true), BoxMode::Wpl);
        assert_eq!(from_labels.organs.len(), 2);
        for (a, b) in from_labels.organs.iter().zip(&from_points.organs) {
            assert_eq!(a.supports, 2);
            assert_eq!(a.parts.len(), 1);
            for (p, q) in a.parts[0].iter().zip(&b.parts[0]) {
                assert_eq!(p.per_support.len(), 2);
                // The mean is the mean of the supports' own values.
                let mean0 = (p.per_support[0].position[0] + p.per_support[1].position[0]) / 2.0;
                assert!((p.position[0] - mean0).abs() < 1e-5);
                assert_eq!(p.position, q.position);
                assert_eq!(p.windows, q.windows);
                // Windows are means of unit vectors: no voxel norm above 1.
                assert!(p.windows[2].iter().all(|v| v.abs() <= 1.0 + 1e-5));
            }
        }
        // SPL cuts labelled organs into slabs; organs given by points stay whole.
        let spl = build(&supports(false), BoxMode::Spl { slab_mm: 6.0 });
        assert!(spl.organs.iter().all(|o| o.parts.len() > 1));
        let spl_pts = build(&supports(true), BoxMode::Spl { slab_mm: 6.0 });
        assert!(spl_pts.organs.iter().all(|o| o.parts.len() == 1));
        // An organ no support has is a clear error.
        let e = pollster::block_on(Atlas::build(
            &net,
            &cfg,
            &supports(false),
            &[9],
            BoxMode::Wpl,
            &dev,
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("organ 9 is in none of the supports"), "{e}");
    }
}
