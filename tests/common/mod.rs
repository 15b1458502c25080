//! Shared helpers for integration tests: where the real CT data live.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod numeric;

/// `../shared/data` beside the project (or `$MEDLSAM_DATA`). Fails loudly when missing:
/// these tests must never pass without the real data.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("MEDLSAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    assert!(
        dir.join("openkbp/index.tsv").is_file() && dir.join("abdomen").is_dir(),
        "real CT data not found at {}: these tests need ../shared/data (openkbp/ and abdomen/, see README) \
         or MEDLSAM_DATA pointing to it",
        dir.display()
    );
    dir
}

/// All OpenKBP case ids (okbp_NNN), from index.tsv.
pub fn openkbp_cases() -> Vec<String> {
    let text = std::fs::read_to_string(data_dir().join("openkbp/index.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .map(str::to_string)
        .collect()
}

pub fn openkbp(case: &str, kind: &str) -> PathBuf {
    data_dir().join(format!("openkbp/{case}.{kind}.nii.gz"))
}

/// A fresh scratch directory for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("medlsam-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
