//! The browser app: a thin shell over the library. `viewer` renders slices
//! (pure Rust, tested natively); `app` is the DOM shell (wasm32 only).

#[cfg(target_arch = "wasm32")]
pub mod app;
pub mod viewer;
