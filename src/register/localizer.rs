//! Registration as the pipeline's [`Localizer`]: every support with a label map is
//! registered to the query, its organs warped and fused into a prior per organ
//! ([`super::fuse`]) and sharpened by each organ's intensities learnt from the supports
//! ([`super::intensity`]); each organ's boxes come from its prior (the voxels where it is at
//! least 0.5, the highest organ winning), and the prior travels with the localization
//! so the segmentation can combine it with LiteMedSAM's probabilities.
//!
//! With a MedLAM fallback ([`RegisterLocalizer::with_fallback`]) MedLAM takes over when
//! every registration fails (no overlap, flat image, loss not finite) and places the
//! organs the prior does not find. With a single registered support (nothing to agree
//! with) MedLAM places the organs first; the support is registered from the body boxes
//! and again also from MedLAM's organ points, and the registration whose organs agree
//! better with MedLAM's goes on ([`agreement`]); MedLAM then checks each organ and takes
//! over where the two place it far apart ([`CROSS_CHECK_MM`]). Each such organ carries a
//! warning, printed by the shells and written to `boxes.json`.

use std::sync::Arc;

use burn::tensor::Device;

use super::fuse::WarpedSupport;
use super::intensity::{
    DEFAULT_ALPHA, DEFAULT_BAND_MM, DEFAULT_KAPPA, IntensityModel, learn_models, model_for,
};
use super::{
    FuseMode, OrganMaps, OrganPoints, RegImage, RegisterOptions, Registration, fuse, label_points,
    located_points, points_init, prior_to_canonical_pausing, register, warp_labels_pausing,
};
use crate::device::{Pacer, yield_on_cpu};
use crate::medlam::{MedLamLocalizer, SupportCase, SupportOrgans};
use crate::metrics::{box_centre_distance_mm, box_diagonal_mm};
use crate::oracle::localize_from_labels;
use crate::types::{BoxMode, Localizer, OrganLocalization};
use crate::volume::{Affine, CtVolume, Volume};
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
    /// Each support's organ extreme points (world mm), for starts from MedLAM's points.
    points: Arc<Vec<Vec<OrganPoints>>>,
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
    /// The final NCC of each support registered to the last query (failed ones left out).
    pub ncc: Vec<f64>,
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
        let mut points = Vec::new();
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
                points.push(label_points(labels, organs));
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
            points: Arc::new(points),
            models: Arc::new(models),
            alpha: DEFAULT_ALPHA,
            kappa: DEFAULT_KAPPA,
            options: RegisterOptions::default(),
            fuse: DEFAULT_FUSE,
            mode,
            device: device.clone(),
            fallback: None,
            report: Vec::new(),
            ncc: Vec::new(),
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
        self.priors_from(query, &[]).await
    }

    /// [`Self::priors`], each support's registration also starting from the affine through
    /// `located` (organ points placed in `query`, e.g. by MedLAM) and the support's own
    /// points of those organs ([`points_init`]), where at least two organs are shared.
    pub async fn priors_from(
        &mut self,
        query: &CtVolume,
        located: &[OrganPoints],
    ) -> Result<Vec<(u16, Volume<f32>)>> {
        // In the browser on the CPU backend: the page gets a turn between steps.
        yield_on_cpu(&self.device).await;
        let pacer = Pacer::default();
        let fixed = RegImage::from_canonical(query)?;
        pacer.tick(&self.device).await;
        self.report.clear();
        self.ncc.clear();
        let mut warped = Vec::new();
        let starts: Vec<Option<Affine>> = self
            .points
            .iter()
            .map(|p| points_init(located, p))
            .collect();
        let results = self.register_all(&fixed, &starts, &pacer).await;
        for ((name, _, _), result) in self.supports.iter().zip(results) {
            match result {
                Ok((r, w)) => {
                    self.report.push(format!(
                        "{name}: NCC {:.3} → {:.3} → {:.3} in {:.1} s",
                        r.ncc[0], r.ncc[1], r.ncc[2], r.seconds
                    ));
                    self.ncc.push(r.ncc[2]);
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
    async fn register_one(
        &self,
        fixed: &RegImage,
        i: usize,
        start: Option<&Affine>,
        pacer: &Pacer,
    ) -> Registered {
        let (_, image, maps) = &self.supports[i];
        let r = register(fixed, image, start, &self.options, &self.device, pacer).await?;
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
    async fn register_all(
        &self,
        fixed: &RegImage,
        starts: &[Option<Affine>],
        pacer: &Pacer,
    ) -> Vec<Registered> {
        #[cfg(target_arch = "wasm32")]
        {
            let mut out = Vec::with_capacity(self.supports.len());
            for i in 0..self.supports.len() {
                out.push(self.register_one(fixed, i, starts[i].as_ref(), pacer).await);
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
                                    pollster::block_on(self.register_one(
                                        fixed,
                                        i,
                                        starts[i].as_ref(),
                                        &pacer,
                                    )),
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

impl RegisterLocalizer {
    /// The organs placed by the supports registered to `query` (see [`Self::priors_from`]),
    /// each carrying its prior.
    async fn registered(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
        located: &[OrganPoints],
    ) -> Result<Vec<OrganLocalization>> {
        let priors = self.priors_from(query, located).await?;
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
        Ok(found)
    }
}

/// How far MedLAM's box `m` lies from `loc`'s (box centres, mm) and the distance beyond
/// which the two disagree ([`CROSS_CHECK_MM`], or [`CROSS_CHECK_FRACTION`] of MedLAM's box
/// diagonal if more).
fn medlam_distance(loc: &OrganLocalization, m: &OrganLocalization, query: &CtVolume) -> (f64, f64) {
    let d = box_centre_distance_mm(&loc.bbox, &m.bbox, &query.affine);
    let limit = CROSS_CHECK_MM.max(CROSS_CHECK_FRACTION * box_diagonal_mm(&m.bbox, &query.affine));
    (d, limit)
}

/// How well one registration's organs agree with MedLAM's (one support: the referee
/// between the registration from the body boxes and the one also started from MedLAM's
/// points): the organs MedLAM places in view whose registered box centre lies within the
/// cross-check distance, then (higher is better) minus the summed centre distances, an
/// organ the registration did not place counting 1000 mm. Compare with `>`: ties keep the
/// first registration.
pub fn agreement(
    found: &[OrganLocalization],
    medlam: &[OrganLocalization],
    query: &CtVolume,
) -> (usize, f64) {
    let mut agree = 0;
    let mut sum = 0.0;
    for m in medlam.iter().filter(|m| !m.outside_view()) {
        match found.iter().find(|l| l.label == m.label) {
            Some(l) => {
                let (d, limit) = medlam_distance(l, m, query);
                agree += usize::from(d <= limit);
                sum += d.min(1000.0);
            }
            None => sum += 1000.0,
        }
    }
    (agree, -sum)
}

impl Localizer for RegisterLocalizer {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        // One registered support has nothing to agree with: MedLAM places every organ
        // first, to check each registered organ and to start a second registration from
        // its organ points; the registration agreeing better with MedLAM goes on (chosen
        // on OpenKBP dev queries, `examples/single_support.rs`).
        let one = self.supports.len() == 1 && self.fallback.is_some();
        let medlam_first = match (&mut self.fallback, one) {
            (Some(medlam), true) => Some(medlam.localize(query, organs).await?),
            _ => None,
        };
        let mut failure = None;
        let mut found = match self.registered(query, organs, &[]).await {
            Ok(found) => found,
            Err(e) if self.fallback.is_some() => {
                self.report
                    .push(format!("registration failed, MedLAM takes over: {e}"));
                failure = Some(e.to_string());
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if let Some(medlam) = &medlam_first {
            let points = located_points(medlam, &query.affine);
            if points_init(&points, &self.points[0]).is_some() {
                // Reports and NCCs of the registration that goes on.
                let body = (self.report.clone(), self.ncc.clone());
                match self.registered(query, organs, &points).await {
                    Ok(started)
                        if agreement(&started, medlam, query)
                            > agreement(&found, medlam, query) =>
                    {
                        found = started;
                        failure = None;
                        self.report
                            .push("the registration started from MedLAM's organ points agrees better with MedLAM: kept".into());
                    }
                    Ok(_) => {
                        (self.report, self.ncc) = body;
                        self.report.push("the registration started from MedLAM's organ points agrees no better with MedLAM: not kept".into());
                    }
                    Err(e) => {
                        (self.report, self.ncc) = body;
                        self.report.push(format!(
                            "the registration started from MedLAM's organ points failed: {e}"
                        ));
                    }
                }
            }
        }
        let missing: Vec<u16> = organs
            .iter()
            .copied()
            .filter(|o| !found.iter().any(|l| l.label == *o))
            .collect();
        let Some(medlam) = &mut self.fallback else {
            return Ok(found);
        };
        let check = one && !found.is_empty();
        if missing.is_empty() && !check {
            return Ok(found);
        }
        let located = match medlam_first {
            Some(f) => f,
            None => medlam.localize(query, &missing).await?,
        };
        if check {
            for loc in &mut found {
                let Some(m) = located
                    .iter()
                    .find(|m| m.label == loc.label && !m.outside_view())
                else {
                    continue;
                };
                let (d, limit) = medlam_distance(loc, m, query);
                if d > limit {
                    *loc = m.clone();
                    loc.warning = Some(format!(
                        "one support: its registration and MedLAM place this organ {d:.0} mm apart: MedLAM placed it"
                    ));
                }
            }
        }
        let why = match &failure {
            Some(e) => format!("registration failed ({e}): MedLAM placed this organ"),
            None if found.is_empty() => {
                "registration placed no organ: MedLAM placed this organ".into()
            }
            None => "the registered supports did not agree on this organ: MedLAM placed it".into(),
        };
        for mut loc in located.into_iter().filter(|l| missing.contains(&l.label)) {
            loc.warning = Some(why.clone());
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

    /// Organs as boxes on a 100³ grid of 1 mm voxels: `(label, min corner)`, 10 mm cubes.
    fn cubes(at: &[(u16, [usize; 3])]) -> Vec<OrganLocalization> {
        let a = Affine::from_diagonal([1.0; 3], [0.0; 3]);
        let mut labels = Volume::filled([100, 100, 100], 0u16, a).unwrap();
        for &(o, m) in at {
            for k in m[2]..m[2] + 10 {
                for j in m[1]..m[1] + 10 {
                    for i in m[0]..m[0] + 10 {
                        labels.data[i + 100 * (j + 100 * k)] = o;
                    }
                }
            }
        }
        let organs: Vec<u16> = at.iter().map(|(o, _)| *o).collect();
        localize_from_labels(&labels, &organs, BoxMode::Wpl, "test")
    }

    #[test]
    fn agreement_counts_organs_near_medlam_then_prefers_the_nearer() {
        let query = Volume::filled([100, 100, 100], 0i16, Affine::identity()).unwrap();
        let medlam = cubes(&[(1, [10, 10, 10]), (2, [60, 60, 60])]);
        // Organ 1 near MedLAM's (5 mm), organ 2 far (45 mm along x).
        let one_near = cubes(&[(1, [15, 10, 10]), (2, [15, 60, 60])]);
        let both_near = cubes(&[(1, [15, 10, 10]), (2, [60, 70, 60])]);
        let one_missing = cubes(&[(1, [10, 10, 10])]);
        let a = agreement(&one_near, &medlam, &query);
        let b = agreement(&both_near, &medlam, &query);
        let c = agreement(&one_missing, &medlam, &query);
        assert_eq!((a.0, b.0, c.0), (1, 2, 1), "{a:?} {b:?} {c:?}");
        assert!((a.1 + 50.0).abs() < 1e-9, "{a:?}");
        assert!(b > a && a > c, "{a:?} {b:?} {c:?}");
        // A tie keeps the first registration (the caller compares with `>`).
        assert!(agreement(&one_near, &medlam, &query) <= a);
        // Organs MedLAM places outside the view are not counted.
        let mut outside = medlam.clone();
        outside[1].in_view = 0.2;
        assert_eq!(agreement(&one_near, &outside, &query), (1, -5.0));
    }

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
