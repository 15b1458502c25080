//! `info` (describe a NIfTI volume or DICOM series) and `metrics` (compare a label map with the truth).

use std::path::Path;

use medlsam::metrics::{LabelMetrics, evaluate_labels};
use medlsam::volume::label_table::LabelTable;
use medlsam::volume::labels::classes;
use medlsam::volume::read_nifti_path;
use medlsam::{Error, Result};

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable")
}

pub fn info(path: &Path, json: bool) -> Result<()> {
    let full = medlsam::volume::summarize_path(path)?;
    if json {
        println!("{}", to_json(&full));
        return Ok(());
    }
    let s = &full.volume;
    println!("file         {}", path.display());
    println!(
        "shape        {} x {} x {}",
        s.shape[0], s.shape[1], s.shape[2]
    );
    println!(
        "spacing_mm   {:.4} x {:.4} x {:.4}",
        s.spacing_mm[0], s.spacing_mm[1], s.spacing_mm[2]
    );
    println!(
        "orientation  {} (affine from {})",
        s.orientation, s.source.affine_from
    );
    println!(
        "dtype        {}{}",
        s.source.dtype,
        if s.source.big_endian {
            " (big-endian)"
        } else {
            ""
        }
    );
    if s.source.scl_slope != 1.0 || s.source.scl_inter != 0.0 {
        println!(
            "scaling      value = raw * {} + {}",
            s.source.scl_slope, s.source.scl_inter
        );
    }
    println!("range        {} .. {}", s.min, s.max);
    if s.non_finite_voxels > 0 {
        println!(
            "non-finite   {} voxels (NaN or infinite)",
            s.non_finite_voxels
        );
    }
    for r in &s.affine[..3] {
        println!(
            "affine       [{:10.4} {:10.4} {:10.4} {:10.4}]",
            r[0], r[1], r[2], r[3]
        );
    }
    if let Some(labels) = &s.labels {
        let names = LabelTable::find_beside(path).unwrap_or_default();
        println!("labels       {} classes", labels.len());
        for (v, n) in labels {
            println!("  {v:>5}  {:<24} {n} voxels", names.name(*v));
        }
    }
    if let Some(d) = &full.dicom {
        print!("{}", medlsam::volume::dicom::info_lines(d));
    }
    Ok(())
}

pub fn metrics(
    pred: &Path,
    truth: &Path,
    labels: &[u16],
    names: Option<&Path>,
    json: bool,
) -> Result<()> {
    let p = read_nifti_path(pred)?.into_labels()?;
    let t = read_nifti_path(truth)?.into_labels()?;
    let table = match names {
        Some(n) => LabelTable::from_json(&std::fs::read_to_string(n)?)?,
        None => LabelTable::find_beside(truth).unwrap_or_default(),
    };
    let labels: Vec<u16> = if labels.is_empty() {
        classes(&t).into_iter().map(|(v, _)| v).collect()
    } else {
        labels.to_vec()
    };
    if labels.is_empty() {
        return Err(Error::InvalidArgument(
            "the truth label map is empty and no --labels were given".into(),
        ));
    }
    let rows = evaluate_labels(&p, &t, &labels)?;
    if json {
        #[derive(serde::Serialize)]
        struct Named<'a> {
            name: String,
            #[serde(flatten)]
            m: &'a LabelMetrics,
        }
        let named: Vec<_> = rows
            .iter()
            .map(|m| Named {
                name: table.name(m.label),
                m,
            })
            .collect();
        println!("{}", to_json(&named));
    } else {
        print_metrics(&rows, &table);
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}"))
}

fn print_metrics(rows: &[LabelMetrics], table: &LabelTable) {
    println!(
        "{:>5}  {:<20} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "label", "name", "DSC%", "HD95mm", "boxIoU%", "WDmm", "ALEmm"
    );
    for m in rows {
        println!(
            "{:>5}  {:<20} {:>8} {:>9} {:>9} {:>8} {:>8}",
            m.label,
            table.name(m.label),
            fmt(m.dsc),
            fmt(m.hd95_mm),
            fmt(m.box_iou),
            fmt(m.wd_mm),
            fmt(m.ale_mm)
        );
    }
}
