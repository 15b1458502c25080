//! The run layer: what the CLI, the evaluation and the page share to run the
//! pipeline. Data flow: [`inputs`] (CT scans, supports, queries, organs) →
//! [`session`] (the localizer and the segmenter, built once) → the command
//! drivers ([`segment`], [`localize`], [`evaluate`], [`eval_localize`],
//! [`bench`]) → [`outputs`] (seg, boxes, png, csv files).
//!
//! Plug-in points: CT files are read by [`inputs::load_ct`] only (a DICOM series
//! reader goes there); localizers are built by [`session`] (another localizer
//! kind, e.g. registration, goes beside [`session::medlam_localizer`]).
//! Only [`session::medlam_localizer`] builds for the browser; the rest reads and
//! writes files (native).

pub mod session;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval_localize;
#[cfg(not(target_arch = "wasm32"))]
pub mod evaluate;
#[cfg(not(target_arch = "wasm32"))]
pub mod inputs;
#[cfg(not(target_arch = "wasm32"))]
pub mod localize;
#[cfg(not(target_arch = "wasm32"))]
pub mod outputs;
#[cfg(not(target_arch = "wasm32"))]
pub mod segment;

/// Peak resident memory of this process in MiB (Linux), if known.
#[cfg(not(target_arch = "wasm32"))]
pub fn peak_memory_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Output directory default.
#[cfg(not(target_arch = "wasm32"))]
pub fn default_out() -> std::path::PathBuf {
    std::path::PathBuf::from("medlsam_out")
}
