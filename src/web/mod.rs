//! The browser app: a thin shell over the library. `viewer` renders slices
//! (pure Rust, tested natively); `app` is the DOM shell (wasm32 only).

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
pub mod fetch;
pub mod manifest;
#[cfg(target_arch = "wasm32")]
pub mod run;
pub mod viewer;

/// Let the browser run (paint, handle input) before continuing: a zero-delay timeout.
#[cfg(target_arch = "wasm32")]
pub async fn yield_to_browser() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
