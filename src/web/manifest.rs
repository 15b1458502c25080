//! The weights manifest: which model files the browser app fetches from its own
//! origin (`weights/`), with their sizes and SHA-256, so a truncated or
//! corrupted download (or a stale browser cache) is detected before a model is
//! built from it. Written natively by `medlsam weights manifest`, read by the page.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Name of the manifest file inside the weights folder.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The weights files the browser app uses (LiteMedSAM int8, MedLAM f32).
pub const WEB_WEIGHTS: [&str; 2] = ["lite_medsam.q8.bpk", "medlam.q8.bpk"];

/// One file the page fetches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name inside the web weights folder.
    pub name: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

/// All files of the web weights folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    /// Parse a manifest; a clear error if it is not one.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Weights(format!("weights manifest is not valid: {e}")))
    }

    /// The entry of a file, or an error naming what is missing.
    pub fn entry(&self, name: &str) -> Result<&ManifestEntry> {
        self.files.iter().find(|f| f.name == name).ok_or_else(|| {
            Error::Weights(format!(
                "weights file {name} is not in the weights manifest (was the app built after `./dev setup`?)"
            ))
        })
    }

    /// Check downloaded bytes against the entry of `name`.
    pub fn verify(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let e = self.entry(name)?;
        if bytes.len() as u64 != e.bytes {
            return Err(Error::Corrupt(format!(
                "weights file {name}: {} bytes received, {} expected (incomplete download?)",
                bytes.len(),
                e.bytes
            )));
        }
        let got = sha256_hex(bytes);
        if got != e.sha256 {
            return Err(Error::Corrupt(format!(
                "weights file {name}: SHA-256 {got} does not match the manifest's {}",
                e.sha256
            )));
        }
        Ok(())
    }
}

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Write `manifest.json` for the given files of `dir` (native; run after the weights are made).
#[cfg(not(target_arch = "wasm32"))]
pub fn write_manifest(dir: &std::path::Path, names: &[&str]) -> Result<Manifest> {
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        files.push(ManifestEntry {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    let m = Manifest { files };
    let text = serde_json::to_string_pretty(&m).expect("serialisable");
    crate::volume::nifti_io::write_file(&dir.join(MANIFEST_NAME), text.as_bytes())?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_detects_truncation_and_corruption() {
        let data = b"some weights".to_vec();
        let m = Manifest {
            files: vec![ManifestEntry {
                name: "w.bpk".into(),
                bytes: data.len() as u64,
                sha256: sha256_hex(&data),
            }],
        };
        let back = Manifest::from_json(&serde_json::to_string(&m).unwrap()).unwrap();
        back.verify("w.bpk", &data).unwrap();
        let e = back.verify("w.bpk", &data[..4]).unwrap_err().to_string();
        assert!(e.contains("incomplete download"), "{e}");
        let mut bad = data.clone();
        bad[0] ^= 1;
        let e = back.verify("w.bpk", &bad).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        let e = back.verify("other.bpk", &data).unwrap_err().to_string();
        assert!(e.contains("not in the weights manifest"), "{e}");
        assert!(Manifest::from_json("{").is_err());
    }
}
