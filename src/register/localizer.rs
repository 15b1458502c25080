//! Registration as the pipeline's [`Localizer`]: every support with a label map is
//! registered to the query, its organs warped and fused into a prior per organ
//! ([`super::fuse`]) and sharpened by each organ's intensities learnt from the supports
//! ([`super::intensity`]); each organ's boxes come from its prior (the voxels where it is at
//! least 0.5, the highest organ winning), and the prior travels with the localization
//! so the segmentation can combine it with LiteMedSAM's probabilities.
//!
//! With a MedLAM fallback ([`RegisterLocalizer::with_fallback`]) MedLAM takes over when
//! every registration fails (no overlap, flat image, loss not finite) and places the
//! organs the prior does not find; with a single registered support (nothing to agree
//! with) it also checks each organ and takes over where the two place it far apart
//! ([`CROSS_CHECK_MM`]). Each such organ carries a warning, printed by the shells and
//! written to `boxes.json`.

use std::sync::Arc;

use burn::tensor::Device;

use super::fuse::WarpedSupport;
use super::intensity::{
    DEFAULT_ALPHA, DEFAULT_BAND_MM, DEFAULT_KAPPA, IntensityModel, learn_models, model_for,
};
use super::{
    FuseMode, OrganMaps, RegImage, RegisterOptions, Registration, fuse, prior_to_canonical_pausing,
    register, warp_labels_pausing,
};
use crate::device::{Pacer, yield_on_cpu};
use crate::medlam::{MedLamLocalizer, SupportCase, SupportOrgans};
use crate::metrics::{box_centre_distance_mm, box_diagonal_mm};
use crate::oracle::localize_from_labels;
use crate::types::{BoxMode, Localizer, OrganLocalization};
use crate::volume::{CtVolume, Volume};
use crate::{Error, Result};

/// The default fusion: votes weighted by the local similarity of each warped support
/// to the query (chosen on OpenKBP dev queries).
pub const DEFAULT_FUSE: FuseMode = FuseMode::LocalNcc {
    window: 7,
    power: 3.0,
};

/// With one registered support, MedLAM takes over an organ whose box centre lies more
/// than this far from MedLAM's (or [`CROSS_CHECK_FRACTION`] of MedLAM's box diagonal, if
/// more). Chosen on OpenKBP dev queries (`examples/single_support.rs`: each of okbp_001-005
/// alone → okbp_006-015, 192 organ instances, registration prior 48.1 % mean DSC): the rule
/// hands 34 organs to MedLAM whose registration DSC averaged 22.1 % (MedLAM's box centre
/// nearer the truth in 28 of them); the 158 kept average 53.7 %.
pub const CROSS_CHECK_MM: f64 = 25.0;
/// See [`CROSS_CHECK_MM`].
pub const CROSS_CHECK_FRACTION: f64 = 0.25;

/// Registered supports → organ priors → boxes (see the module doc). Clones share the
/// prepared supports.
#[derive(Clone)]
pub struct RegisterLocalizer {
    /// Each support with a label map: its 3 mm image and one-hot organ maps.
    supports: Arc<Vec<(String, RegImage, OrganMaps)>>,
    /// Each organ's HU inside and around it in the supports ([`super::intensity`]).
    models: Arc<Vec<IntensityModel>>,
    /// Exponent of the intensity likelihood ratio (0: the fused prior as it is).
    pub alpha: f32,
    /// Evidence (nats) an organ's exponent is raised to reach, up to `2 · alpha`
    /// ([`IntensityModel::exponent`]; 0: every organ gets `alpha`).
    pub kappa: f32,
    pub options: RegisterOptions,
    pub fuse: FuseMode,
    pub mode: BoxMode,
    pub device: Device,
    /// MedLAM, for queries or organs registration cannot place.
    pub fallback: Option<MedLamLocalizer>,
    /// What the last query's registrations did, one line per support (for logs).
    pub report: Vec<String>,
}

impl RegisterLocalizer {
    /// Prepare the supports that have label maps (point-only supports cannot be warped
    /// and are left to MedLAM). `Err` when no support has a label map. In the browser on
    /// the CPU backend the page gets turns between the whole-volume passes.
    pub async fn new(
        supports: &[SupportCase],
        organs: &[u16],
        mode: BoxMode,
        device: &Device,
    ) -> Result<Self> {
        let pacer = Pacer::default();
        let mut prepared = Vec::new();
        let mut labelled = Vec::new();
        for s in supports {
            if let SupportOrgans::Labels(labels) = &s.organs {
                let image = RegImage::from_canonical(&s.ct)?;
                pacer.tick(device).await;
                let maps =
                    OrganMaps::from_canonical_labels_pausing(labels, &image, organs, &mut || {
                        pacer.tick(device)
                    })
                    .await?;
                prepared.push((s.name.clone(), image, maps));
                labelled.push((&s.ct, labels));
            }
        }
        let models = learn_models(&labelled, organs, DEFAULT_BAND_MM)?;
        pacer.tick(device).await;
        if prepared.is_empty() {
            return Err(Error::InvalidArgument(
                "registration needs at least one support with a label map (extreme points alone cannot be warped)".into(),
            ));
        }
        Ok(Self {
            supports: Arc::new(prepared),
            models: Arc::new(models),
            alpha: DEFAULT_ALPHA,
            kappa: DEFAULT_KAPPA,
            options: RegisterOptions::default(),
            fuse: DEFAULT_FUSE,
            mode,
            device: device.clone(),
            fallback: None,
            report: Vec::new(),
        })
    }

    /// Let MedLAM place what registration cannot (see the module doc).
    pub fn with_fallback(mut self, medlam: MedLamLocalizer) -> Self {
        self.fallback = Some(medlam);
        self
    }

    /// Register every support to `query` (canonical grid) and fuse their organs: one
    /// prior probability volume per organ on the canonical grid, refined by the
    /// organs' intensities when [`Self::alpha`] > 0. Registrations that
    /// fail are skipped (noted in [`Self::report`]); `Err` when all fail.
    pub async fn priors(&mut self, query: &CtVolume) -> Result<Vec<(u16, Volume<f32>)>> {
        // In the browser on the CPU backend: the page gets a turn between steps.
        yield_on_cpu(&self.device).await;
        let pacer = Pacer::default();
        let fixed = RegImage::from_canonical(query)?;
        pacer.tick(&self.device).await;
        self.report.clear();
        let mut warped = Vec::new();
        let results = self.register_all(&fixed, &pacer).await;
        for ((name, _, _), result) in self.supports.iter().zip(results) {
            match result {
                Ok((r, w)) => {
                    self.report.push(format!(
                        "{name}: NCC {:.3} → {:.3} → {:.3} in {:.1} s",
                        r.ncc[0], r.ncc[1], r.ncc[2], r.seconds
                    ));
                    warped.push(w);
                }
                Err(e) => self
                    .report
                    .push(format!("{name}: registration failed: {e}")),
            }
        }
        if warped.is_empty() {
            return Err(Error::Failed(format!(
                "every support's registration failed ({})",
                self.report.join("; ")
            )));
        }
        let prior = fuse(&fixed, &warped, self.fuse)?;
        pacer.tick(&self.device).await;
        let mut priors =
            prior_to_canonical_pausing(&fixed, &prior, &mut || pacer.tick(&self.device)).await?;
        if self.alpha > 0.0 {
            for (organ, p) in &mut priors {
                pacer.tick(&self.device).await;
                if let Some(m) = model_for(&self.models, *organ) {
                    *p = m.refine(p, query, m.exponent(self.alpha, self.kappa))?;
                }
            }
        }
        Ok(priors)
    }
}

/// One support registered to the query and its organ maps warped.
type Registered = Result<(Registration, WarpedSupport)>;

impl RegisterLocalizer {
    /// Support `i` registered to `fixed`, its organ maps warped onto it.
    async fn register_one(&self, fixed: &RegImage, i: usize, pacer: &Pacer) -> Registered {
        let (_, image, maps) = &self.supports[i];
        let r = register(fixed, image, None, &self.options, &self.device, pacer).await?;
        pacer.tick(&self.device).await;
        let w =
            warp_labels_pausing(fixed, image, maps, &r, &mut || pacer.tick(&self.device)).await?;
        pacer.tick(&self.device).await;
        Ok((r, w))
    }

    /// Every support registered to `fixed`, in the supports' order. In the browser one
    /// after the other, the page getting turns; natively on up to one thread per core, since
    /// one registration's small tensors keep about one core busy (5 OpenKBP supports on 2
    /// cores: wall ≈ user time before). Each registration is computed alone as before, so
    /// the results do not depend on the threads.
    async fn register_all(&self, fixed: &RegImage, pacer: &Pacer) -> Vec<Registered> {
        #[cfg(target_arch = "wasm32")]
        {
            let mut out = Vec::with_capacity(self.supports.len());
            for i in 0..self.supports.len() {
                out.push(self.register_one(fixed, i, pacer).await);
            }
            out
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = pacer;
            let n = self.supports.len();
            let threads = std::thread::available_parallelism()
                .map_or(1, |c| c.get())
                .clamp(1, n.max(1));
            let next = std::sync::atomic::AtomicUsize::new(0);
            let mut out: Vec<Registered> = (0..n)
                .map(|_| Err(Error::Failed("registration thread stopped".into())))
                .collect();
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut mine = Vec::new();
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if i >= n {
                                    break mine;
                                }
                                let pacer = Pacer::default();
                                mine.push((
                                    i,
                                    pollster::block_on(self.register_one(fixed, i, &pacer)),
                                ));
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    // A panicking registration leaves its supports' "stopped" errors.
                    if let Ok(done) = w.join() {
                        for (i, r) in done {
                            out[i] = r;
                        }
                    }
                }
            });
            out
        }
    }
}

/// The organ map where each voxel takes the organ whose prior is highest and at least
/// 0.5 (0 elsewhere), on the priors' grid.
pub fn prior_labels(priors: &[(u16, Volume<f32>)]) -> Result<crate::volume::LabelVolume> {
    let first = priors
        .first()
        .ok_or_else(|| Error::InvalidArgument("no organ priors".into()))?;
    let mut labels = Volume::filled(first.1.dims, 0u16, first.1.affine)?;
    let mut best = vec![0.5f32; labels.len()];
    for (organ, p) in priors {
        first.1.check_same_grid(p, "organ priors")?;
        for ((l, b), &v) in labels.data.iter_mut().zip(best.iter_mut()).zip(&p.data) {
            if v >= *b {
                *b = v;
                *l = *organ;
            }
        }
    }
    Ok(labels)
}

impl Localizer for RegisterLocalizer {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        let mut found = match self.priors(query).await {
            Ok(priors) => {
                // Whole-volume passes: the page gets a turn after each (browser, CPU backend).
                yield_on_cpu(&self.device).await;
                let labels = prior_labels(&priors)?;
                yield_on_cpu(&self.device).await;
                let mut found = localize_from_labels(&labels, organs, self.mode, "register");
                yield_on_cpu(&self.device).await;
                let priors: Vec<(u16, Arc<Volume<f32>>)> =
                    priors.into_iter().map(|(o, p)| (o, Arc::new(p))).collect();
                for loc in &mut found {
                    loc.prior = priors
                        .iter()
                        .find(|(o, _)| *o == loc.label)
                        .map(|(_, p)| Arc::clone(p));
                }
                found
            }
            Err(e) if self.fallback.is_some() => {
                self.report
                    .push(format!("registration failed, MedLAM takes over: {e}"));
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let missing: Vec<u16> = organs
            .iter()
            .copied()
            .filter(|o| !found.iter().any(|l| l.label == *o))
            .collect();
        let Some(medlam) = &mut self.fallback else {
            return Ok(found);
        };
        // One registered support has no other to agree with: MedLAM checks it.
        let check = self.supports.len() == 1 && !found.is_empty();
        if missing.is_empty() && !check {
            return Ok(found);
        }
        let asked = if check {
            organs.to_vec()
        } else {
            missing.clone()
        };
        let located = medlam.localize(query, &asked).await?;
        if check {
            for loc in &mut found {
                let Some(m) = located
                    .iter()
                    .find(|m| m.label == loc.label && !m.outside_view())
                else {
                    continue;
                };
                let d = box_centre_distance_mm(&loc.bbox, &m.bbox, &query.affine);
                let limit = CROSS_CHECK_MM
                    .max(CROSS_CHECK_FRACTION * box_diagonal_mm(&m.bbox, &query.affine));
                if d > limit {
                    *loc = m.clone();
                    loc.warning = Some(format!(
                        "one support: its registration and MedLAM place this organ {d:.0} mm apart: MedLAM placed it"
                    ));
                }
            }
        }
        let why = if found.is_empty() {
            "registration failed: MedLAM placed this organ"
        } else {
            "the registered supports did not agree on this organ: MedLAM placed it"
        };
        for mut loc in located.into_iter().filter(|l| missing.contains(&l.label)) {
            loc.warning = Some(why.into());
            found.push(loc);
        }
        found.sort_by_key(|l| organs.iter().position(|o| *o == l.label));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    #[test]
    fn prior_labels_take_the_highest_organ_at_or_above_one_half() {
        let a = Affine::from_diagonal([1.0; 3], [0.0; 3]);
        let p = |v: Vec<f32>| Volume::from_data([4, 1, 1], v, a).unwrap();
        let priors = vec![
            (3, p(vec![0.9, 0.5, 0.2, 0.6])),
            (7, p(vec![0.4, 0.49, 0.3, 0.8])),
        ];
        assert_eq!(prior_labels(&priors).unwrap().data, vec![3, 3, 0, 7]);
        assert!(prior_labels(&[]).is_err());
        let other = (5, Volume::from_data([2, 1, 1], vec![1.0, 1.0], a).unwrap());
        assert!(prior_labels(&[priors[0].clone(), other]).is_err());
    }
}
