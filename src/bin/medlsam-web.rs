//! Entry point of the browser app (built by Trunk for wasm32). Natively it only
//! says how to start the app.

#[cfg(target_arch = "wasm32")]
fn main() {
    medlsam::web::app::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("medlsam-web is the browser app: start it with `./dev app` (trunk serve)");
}
