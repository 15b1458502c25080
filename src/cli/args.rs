//! Option groups several commands share (`#[command(flatten)]`): supports,
//! queries, localization search widths; and the box mode as a typed value.

use std::path::PathBuf;

use medlsam::run::config::CasePaths;
use medlsam::types::{BoxMode, LocalizerChoice};
use medlsam::{Error, Result};

/// Labelled support scans.
#[derive(clap::Args, Clone, Debug)]
pub struct SupportArgs {
    /// Support CT (repeat; pair each with a --support-label, in order).
    #[arg(long)]
    pub support_image: Vec<PathBuf>,
    /// Support label map on the same grid as its CT (repeat); for a DICOM support image
    /// also an RTSTRUCT file (its ROIs become labels 1..n, named by the ROI names).
    #[arg(long)]
    pub support_label: Vec<PathBuf>,
}

impl SupportArgs {
    /// `--support-image` and `--support-label` paired in order (one label map per image).
    pub fn cases(&self) -> Result<Vec<CasePaths>> {
        if self.support_image.len() != self.support_label.len() {
            return Err(Error::InvalidArgument(format!(
                "{} --support-image but {} --support-label: give one label map per support image",
                self.support_image.len(),
                self.support_label.len()
            )));
        }
        Ok(self
            .support_image
            .iter()
            .zip(&self.support_label)
            .map(|(image, label)| CasePaths {
                image: image.clone(),
                label: Some(label.clone()),
            })
            .collect())
    }
}

/// Query scans and, optionally, their label maps (for metrics only).
#[derive(clap::Args, Clone, Debug)]
pub struct QueryArgs {
    /// Query CT (repeatable).
    #[arg(long)]
    pub query: Vec<PathBuf>,
    /// Query label maps (optional, one per query, same order): used only for metrics
    /// (segment: metrics.csv; localize: localization.csv).
    #[arg(long)]
    pub query_label: Vec<PathBuf>,
    /// Where query label maps use other values than the supports: SUPPORT=QUERY pairs,
    /// e.g. 5=1 (support organ 5 is label 1 in the query labels).
    #[arg(long, value_delimiter = ',')]
    pub query_label_map: Vec<String>,
}

impl QueryArgs {
    /// The `--query-label-map` pairs `(support, query)`.
    pub fn label_map(&self) -> Result<Vec<(u16, u16)>> {
        medlsam::run::config::parse_label_map(&self.query_label_map)
    }
}

/// The localization's search widths (3 mm voxels).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct SearchArgs {
    /// MSS search half-width around the UAM point (3 mm voxels) [default: the
    /// config's search_radius (segment --config), else 16].
    #[arg(long)]
    pub search_radius: Option<usize>,
    /// Intensity-template search half-width around each organ's centre, the last
    /// localization step (3 mm voxels; 0: off) [default: the config's
    /// template_radius (segment --config), else 5].
    #[arg(long)]
    pub template_radius: Option<usize>,
}

/// How 2-D boxes are made from a localization: `spl` (a box per slab of --slab-mm
/// along the slice axis) or `wpl` (one box per organ on every slice it spans).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Spl,
    Wpl,
}

impl ModeArg {
    /// The box mode, SPL with slabs of `slab_mm` (default 6 mm; must be positive).
    pub fn box_mode(self, slab_mm: Option<f64>) -> Result<BoxMode> {
        match self {
            Self::Wpl => Ok(BoxMode::Wpl),
            Self::Spl => BoxMode::spl(slab_mm.unwrap_or(6.0)),
        }
    }
}

/// What places the organs (see [`LocalizerChoice`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalizerArg {
    Medlam,
    Register,
    Both,
}

impl LocalizerArg {
    /// The library's choice.
    pub fn choice(self) -> LocalizerChoice {
        match self {
            Self::Medlam => LocalizerChoice::Medlam,
            Self::Register => LocalizerChoice::Register,
            Self::Both => LocalizerChoice::Both,
        }
    }
}

/// Refuse a weight outside 0..=1, naming its flag.
pub fn check_weight(flag: &str, v: f64) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{flag} {v}: give a weight between 0 and 1"
        )))
    }
}
