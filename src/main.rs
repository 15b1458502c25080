//! `medlsam`: the native command-line shell over the library (commands in `src/cli/`).
//! Every error is printed as one line on stderr with a non-zero exit status.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}
