//! A run's models, built once: the MedLAM localizer (network + support atlas,
//! [`medlam_localizer`], the one way every shell builds it: CLI, evaluation and
//! the page) and, natively, a [`Session`] that loads the supports and the MedLAM
//! weights from files, and the LiteMedSAM segmenter ([`lite_medsam_segmenter`]).
//!
//! Another localizer kind (e.g. registration giving per-organ priors) would be
//! built beside [`Session::localizer`] from the same supports and organs.

use burn::tensor::Device;

use crate::Result;
use crate::medlam::{
    Atlas, LocalizeOptions, MedLam, MedLamConfig, MedLamLocalizer, SupportCase, SupportOrgans,
};
use crate::pipeline::SegmentOptions;
use crate::pipeline::self_check::one_support_weights;
use crate::register::RegisterLocalizer;
use crate::types::{BoxMode, Localizer, LocalizerChoice, OrganLocalization, SliceSegmenter};
use crate::volume::{CtVolume, LabelVolume};

/// MedLAM with the atlas of `organs` built from the supports (canonical grids) for
/// box mode `mode`.
pub async fn medlam_localizer(
    net: &MedLam,
    config: &MedLamConfig,
    supports: &[SupportCase],
    organs: &[u16],
    mode: BoxMode,
    options: LocalizeOptions,
    device: &Device,
) -> Result<MedLamLocalizer> {
    let atlas = Atlas::build(net, config, supports, organs, mode, device).await?;
    Ok(MedLamLocalizer {
        net: net.clone(),
        atlas,
        device: device.clone(),
        options,
    })
}

/// Where the registration runs: the run's device natively; in the browser always Burn's
/// CPU backend in wasm (its many small autodiff steps were never tried on WebGPU, whose
/// software adapter in the tests is ~30× slower than the CPU backend).
fn registration_device(device: &Device) -> Device {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = device;
        Device::flex()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        device.clone()
    }
}

/// The localizer a run chose ([`LocalizerChoice`]), built once.
#[derive(Clone)]
pub enum RunLocalizer {
    Medlam(Box<MedLamLocalizer>),
    /// Registration; with MedLAM as its fallback for [`LocalizerChoice::Both`].
    Register(Box<RegisterLocalizer>),
}

impl RunLocalizer {
    /// Build the `choice` localizer of `organs` from the supports for box mode `mode`.
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        choice: LocalizerChoice,
        net: &MedLam,
        config: &MedLamConfig,
        supports: &[SupportCase],
        organs: &[u16],
        mode: BoxMode,
        options: LocalizeOptions,
        device: &Device,
    ) -> Result<Self> {
        let medlam = || medlam_localizer(net, config, supports, organs, mode, options, device);
        let device = &registration_device(device);
        Ok(match choice {
            LocalizerChoice::Medlam => Self::Medlam(Box::new(medlam().await?)),
            LocalizerChoice::Register => Self::Register(Box::new(
                RegisterLocalizer::new(supports, organs, mode, device).await?,
            )),
            LocalizerChoice::Both => {
                let fallback = medlam().await?;
                match RegisterLocalizer::new(supports, organs, mode, device).await {
                    Ok(r) => Self::Register(Box::new(r.with_fallback(fallback))),
                    // No support with a label map to register (extreme points only).
                    Err(_) => Self::Medlam(Box::new(fallback)),
                }
            }
        })
    }
}

impl Localizer for RunLocalizer {
    async fn localize(
        &mut self,
        query: &CtVolume,
        organs: &[u16],
    ) -> Result<Vec<OrganLocalization>> {
        match self {
            Self::Medlam(m) => m.localize(query, organs).await,
            Self::Register(r) => r.localize(query, organs).await,
        }
    }
}

/// The run's slice options `opt` for `localizer`, with the organs trusted to the segmenter
/// when registration places them from one labelled support and the prior weight is automatic
/// (`auto`: the user did not set one): see [`crate::pipeline::self_check`]. Each checked
/// organ's line goes to `log`.
#[allow(clippy::too_many_arguments)]
pub async fn with_self_check<S: SliceSegmenter>(
    opt: SegmentOptions,
    auto: bool,
    localizer: &RunLocalizer,
    supports: &[SupportCase],
    organs: &[u16],
    segmenter: &mut S,
    log: &mut dyn FnMut(String),
) -> Result<SegmentOptions> {
    if !auto || !matches!(localizer, RunLocalizer::Register(_)) {
        return Ok(opt);
    }
    let labelled: Vec<(&CtVolume, &LabelVolume)> = supports
        .iter()
        .filter_map(|s| match &s.organs {
            SupportOrgans::Labels(l) => Some((&s.ct, l)),
            SupportOrgans::Points(_) => None,
        })
        .collect();
    let (trusted, lines) = one_support_weights(&labelled, organs, segmenter, &opt).await?;
    lines.into_iter().for_each(&mut *log);
    Ok(SegmentOptions {
        organ_prior_weights: trusted,
        ..opt
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use burn::tensor::Device;

    use super::super::config::{CasePaths, Organs};
    use super::super::inputs::{
        load_supports, read_medlam_weights, resolve_organs, support_label_table,
    };
    use super::{RunLocalizer, medlam_localizer};
    use crate::device::BackendChoice;
    use crate::medlam::{LocalizeOptions, MedLam, MedLamConfig, MedLamLocalizer, SupportCase};
    use crate::sam::SamConfig;
    use crate::sam::predictor::SamSegmenter;
    use crate::sam::preprocess::Preprocess;
    use crate::sam::weights::{LITE_MEDSAM_BPK, default_weights_dir, load_bpk, load_pth};
    use crate::types::{BoxMode, LocalizerChoice};
    use crate::volume::label_table::LabelTable;
    use crate::{Error, Result};

    /// The supports of a run (canonical grids), the organs to process with their
    /// names, and the MedLAM network on its device: what every localizer of the run
    /// is built from.
    pub struct Session {
        pub supports: Vec<SupportCase>,
        pub organs: Vec<u16>,
        pub names: LabelTable,
        pub net: MedLam,
        pub config: MedLamConfig,
        pub device: Device,
        pub options: LocalizeOptions,
    }

    impl Session {
        /// Load the supports, resolve the organs (warnings go to `log`), read the MedLAM
        /// weights onto `device`.
        pub fn open(
            supports: &[CasePaths],
            organs: &Organs,
            medlam_weights: &Path,
            device: Device,
            options: LocalizeOptions,
            log: &mut dyn FnMut(String),
        ) -> Result<Self> {
            let loaded = load_supports(supports)?;
            let (organs, warnings) = resolve_organs(&loaded, organs)?;
            warnings.into_iter().for_each(&mut *log);
            let names = support_label_table(supports);
            let weights = read_medlam_weights(medlam_weights)?;
            let (net, config) = MedLam::from_bytes(&weights, &device)?;
            let supports = loaded.into_iter().map(|s| s.to_case()).collect();
            Ok(Self {
                supports,
                organs,
                names,
                net,
                config,
                device,
                options,
            })
        }

        /// MedLAM with the atlas of the session's organs for box mode `mode`.
        pub fn localizer(&self, mode: BoxMode) -> Result<MedLamLocalizer> {
            pollster::block_on(medlam_localizer(
                &self.net,
                &self.config,
                &self.supports,
                &self.organs,
                mode,
                self.options,
                &self.device,
            ))
        }

        /// The `choice` localizer of the session's organs for box mode `mode`.
        pub fn run_localizer(
            &self,
            choice: LocalizerChoice,
            mode: BoxMode,
        ) -> Result<RunLocalizer> {
            pollster::block_on(RunLocalizer::build(
                choice,
                &self.net,
                &self.config,
                &self.supports,
                &self.organs,
                mode,
                self.options,
                &self.device,
            ))
        }

        /// Free the support scans once every localizer is built.
        pub fn release_supports(&mut self) {
            self.supports = Vec::new();
        }
    }

    /// A LiteMedSAM segmenter from `weights` (default `weights/lite_medsam.bpk`; a
    /// LiteMedSAM or SAM ViT-B `.pth` also loads) on a backend, with a CT window.
    pub fn lite_medsam_segmenter(
        weights: Option<&Path>,
        backend: BackendChoice,
        window_hu: [f32; 2],
    ) -> Result<SamSegmenter> {
        let path = weights
            .map(Path::to_path_buf)
            .unwrap_or_else(|| default_weights_dir().join(LITE_MEDSAM_BPK));
        let device = backend.device();
        let model = if path.extension().is_some_and(|e| e == "pth") {
            // A user's PyTorch checkpoint: LiteMedSAM, else the SAM/MedSAM ViT-B layout.
            load_pth(&SamConfig::lite_medsam(), &path, &device).or_else(|lite| {
                load_pth(&SamConfig::vit_b(), &path, &device).map_err(|vit| {
                    Error::Weights(format!(
                        "{} is neither a LiteMedSAM ({lite}) nor a SAM ViT-B checkpoint ({vit})",
                        path.display()
                    ))
                })
            })?
        } else {
            load_bpk(&SamConfig::lite_medsam(), &path, &device)?
        };
        // Two slices in flight on the CPU backend (see `SamSegmenter::with_slices_in_flight`).
        let in_flight = match backend {
            BackendChoice::Cpu => {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
            }
            _ => 1,
        };
        Ok(SamSegmenter::new(
            model,
            device,
            Preprocess {
                window_hu,
                ..Default::default()
            },
        )
        .with_slices_in_flight(in_flight))
    }
}
