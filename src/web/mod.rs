//! The browser app: a thin shell over the library. `viewer` renders slices and
//! `state` holds the page's state and its transitions (`Msg` → `update`), both pure
//! Rust, tested natively; `app` is the DOM shell (wasm32 only).

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
pub mod fetch;
pub mod manifest;
#[cfg(target_arch = "wasm32")]
pub mod run;
pub mod state;
pub mod viewer;

/// Where the models run, as the page's address asks: `?backend=cpu` forces Burn's
/// CPU backend in WebAssembly; otherwise WebGPU when available (the CPU as fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cpu,
}

impl BackendChoice {
    /// From the page's full URL: its query string's `backend` parameter (`cpu`), case-insensitive.
    pub fn from_url(url: &str) -> Self {
        let query = url.split('#').next().unwrap_or("");
        let Some((_, query)) = query.split_once('?') else {
            return Self::Auto;
        };
        let cpu = query.split('&').any(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| k == "backend" && v.eq_ignore_ascii_case("cpu"))
        });
        if cpu { Self::Cpu } else { Self::Auto }
    }
}

/// What the page says about the backend when the address chose the CPU.
pub const CPU_CHOSEN: &str =
    "CPU in WebAssembly (chosen by ?backend=cpu in the address; WebGPU not used); slower";

#[cfg(target_arch = "wasm32")]
pub use crate::device::yield_to_browser;

/// The page's WebAssembly memory in MiB. It only grows, so this is the peak so far.
#[cfg(target_arch = "wasm32")]
pub fn wasm_memory_mib() -> f64 {
    core::arch::wasm32::memory_size(0) as f64 * 65536.0 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::BackendChoice;

    #[test]
    fn backend_from_url() {
        let cpu = BackendChoice::Cpu;
        let auto = BackendChoice::Auto;
        assert_eq!(BackendChoice::from_url("http://h/"), auto);
        assert_eq!(BackendChoice::from_url("http://h/?backend=cpu"), cpu);
        assert_eq!(
            BackendChoice::from_url("http://h/index.html?a=1&backend=CPU"),
            cpu
        );
        assert_eq!(BackendChoice::from_url("http://h/?backend=webgpu"), auto);
        assert_eq!(BackendChoice::from_url("http://h/?xbackend=cpu"), auto);
        assert_eq!(BackendChoice::from_url("http://h/#?backend=cpu"), auto);
        assert_eq!(BackendChoice::from_url("http://h/?backend=cpu#top"), cpu);
    }
}
