//! The `medlsam` binary: info, metrics and demo on real files; errors are one line and exit non-zero.

mod common;

use std::process::Command;

use common::*;

fn medlsam(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medlsam"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn info_reports_geometry_and_labels() {
    let path = openkbp("okbp_004", "label");
    let (ok, out, _) = medlsam(&["info", path.to_str().unwrap(), "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["shape"], serde_json::json!([128, 128, 128]));
    assert_eq!(v["orientation"], "LPS");
    assert_eq!(v["source"]["dtype"], "uint8");
    assert_eq!(v["labels"].as_array().unwrap().len(), 7);
    let (ok, out, _) = medlsam(&["info", path.to_str().unwrap()]);
    assert!(
        ok && out.contains("Mandible") && out.contains("LPS"),
        "{out}"
    );
    let ct = data_dir().join("abdomen/ts_example.ct.nii.gz");
    let (ok, out, _) = medlsam(&["info", ct.to_str().unwrap()]);
    assert!(
        ok && out.contains("RAS") && out.contains("int32") && !out.contains("labels"),
        "{out}"
    );
}

#[test]
fn metrics_of_a_label_against_itself_and_another_case() {
    let a = openkbp("okbp_004", "label");
    let (ok, out, err) = medlsam(&[
        "metrics",
        "--pred",
        a.to_str().unwrap(),
        "--truth",
        a.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert_eq!(r["dsc"], 100.0);
        assert_eq!(r["hd95_mm"], 0.0);
        assert_eq!(r["box_iou"], 100.0);
    }
    assert_eq!(rows[0]["name"], "Brainstem");
    // Another patient's label: same grid shape but another voxel spacing: clear mismatch error.
    let b = openkbp("okbp_006", "label");
    let (ok, _, err) = medlsam(&[
        "metrics",
        "--pred",
        b.to_str().unwrap(),
        "--truth",
        a.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: mismatch: prediction and truth"),
        "{err}"
    );
}

#[test]
fn errors_are_one_line_with_non_zero_exit() {
    let scratch = Scratch::new("cli-errors");
    let dir = &scratch.0;
    let bad = dir.join("bad.nii.gz");
    let bytes = std::fs::read(openkbp("okbp_001", "ct")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    for args in [
        vec!["info", bad.to_str().unwrap()],
        vec!["info", "/no/such.nii"],
    ] {
        let (ok, out, err) = medlsam(&args);
        assert!(!ok && out.is_empty(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = medlsam(&["metrics", "--pred", "x"]);
    assert!(!ok && err.contains("--truth"), "{err}");
}

#[test]
fn demo_writes_phantoms_that_agree_across_orientations() {
    let scratch = Scratch::new("demo");
    let dir = &scratch.0;
    let (ok, out, err) = medlsam(&["demo", "--out", dir.to_str().unwrap(), "--seed", "3"]);
    assert!(ok, "{err}");
    for f in [
        "phantom_lps.ct.nii.gz",
        "phantom_ras.label.nii.gz",
        "labels.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let last_rows: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("kidney") && l.contains("100.00"))
        .collect();
    assert_eq!(last_rows.len(), 2, "{out}");
}
