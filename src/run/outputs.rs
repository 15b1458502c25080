//! The files a native run writes under its output folder: `labels.json`,
//! `<case>.seg.nii.gz`, `<case>.boxes.json`, `<case>.png`, for DICOM queries
//! `<case>.rtstruct.dcm` and `<case>.seg.dcm` when asked, `metrics.csv` and
//! `localization.csv`. What they contain is made in [`crate::output`]; this
//! module only writes it (each file whole, through a temporary name).

use std::path::Path;

use crate::metrics::LabelMetrics;
pub use crate::output::DicomOutputs;
use crate::output::{
    METRICS_CSV_HEADER, boxes_json, dicom_output_files, metrics_csv_row, overview_png, unix_now,
};
use crate::pipeline::QueryResult;
use crate::types::OrganLocalization;
use crate::volume::dicom::DicomInfo;
use crate::volume::label_table::LabelTable;
use crate::volume::nifti_io::write_file;
use crate::volume::{CtVolume, LabelVolume, Reorientation, write_labels_nifti_bytes};
use crate::{Error, Result};

/// Create the output folder.
pub fn create_out(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    Ok(())
}

/// `OUT/labels.json`: the organ names of the run.
pub fn write_labels_json(out: &Path, names: &LabelTable) -> Result<()> {
    write_file(&out.join("labels.json"), names.to_json().as_bytes())
}

/// `OUT/<case>.boxes.json`: the localizations (canonical indices) in the file's voxel indices.
pub fn write_boxes_json(
    out: &Path,
    case: &str,
    organs: &[OrganLocalization],
    reorientation: &Reorientation,
    names: &LabelTable,
) -> Result<()> {
    let json = boxes_json(case, organs, reorientation, names);
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Io(e.into()))?;
    write_file(&out.join(format!("{case}.boxes.json")), text.as_bytes())
}

/// A segmented query's files: `<case>.seg.nii.gz` (label map on the file grid),
/// `<case>.boxes.json` and the overview `<case>.png`.
pub fn write_query_outputs(
    out: &Path,
    case: &str,
    ct: &CtVolume,
    res: &QueryResult,
    names: &LabelTable,
) -> Result<()> {
    write_file(
        &out.join(format!("{case}.seg.nii.gz")),
        &write_labels_nifti_bytes(&res.labels)?,
    )?;
    write_boxes_json(out, case, &res.organs, &res.reorientation, names)?;
    write_file(
        &out.join(format!("{case}.png")),
        &overview_png(ct, &res.labels, &res.organs)?,
    )
}

/// `<case>.rtstruct.dcm` and/or `<case>.seg.dcm` of `organs` in `labels` (the query's
/// file grid), for a query read from DICOM (`info`); dated now (UTC).
pub fn write_dicom_outputs(
    out: &Path,
    case: &str,
    labels: &LabelVolume,
    organs: &[u16],
    names: &LabelTable,
    info: Option<&DicomInfo>,
    outputs: DicomOutputs,
) -> Result<()> {
    if !outputs.any() {
        return Ok(());
    }
    let info = info.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{case}: RTSTRUCT and DICOM SEG outputs need a DICOM query (this one is NIfTI)"
        ))
    })?;
    for (name, bytes) in dicom_output_files(case, labels, organs, names, info, outputs, unix_now())?
    {
        write_file(&out.join(name), &bytes)?;
    }
    Ok(())
}

/// The rows of `metrics.csv`, one per query and organ.
pub struct MetricsCsv(Vec<String>);

impl Default for MetricsCsv {
    fn default() -> Self {
        Self(vec![METRICS_CSV_HEADER.to_string()])
    }
}

impl MetricsCsv {
    /// Add a query's rows.
    pub fn push(&mut self, case: &str, metrics: &[LabelMetrics], names: &LabelTable) {
        for m in metrics {
            self.0.push(metrics_csv_row(case, &names.name(m.label), m));
        }
    }

    /// Write `OUT/metrics.csv`.
    pub fn write(&self, out: &Path) -> Result<()> {
        write_file(
            &out.join("metrics.csv"),
            (self.0.join("\n") + "\n").as_bytes(),
        )
    }
}

/// A CSV field, quoted where it holds a comma or a quote.
pub fn csv_field(s: &str) -> String {
    if s.contains(',') || s.contains('"') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
