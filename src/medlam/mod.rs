//! MedLAM: the self-supervised 3-D localization model, its training (native
//! only), the support atlas, query localization (UAM coarse step, MSS
//! refinement) and the WPL/SPL boxes.
//!
//! Data flow: canonical CT → [`prep::Prepared`] (3 mm, intensity-mapped) →
//! [`net::MedLam`] on patches → atlas (supports) / localization (queries).

pub mod atlas;
pub mod boxes;
pub mod features;
pub mod localize;
#[cfg(not(target_arch = "wasm32"))]
pub mod loss;
pub mod net;
pub mod prep;
pub mod query;
pub mod refine;
#[cfg(not(target_arch = "wasm32"))]
pub mod sample;
pub mod shape;
pub mod template;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
#[cfg(not(target_arch = "wasm32"))]
pub mod train_data;

pub use atlas::{Atlas, SupportCase, SupportOrgans};
pub use localize::{LocalizeOptions, MedLamLocalizer};
pub use net::{MedLam, MedLamConfig, MedLamOutput};
