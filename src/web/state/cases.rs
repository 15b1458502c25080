//! Cases as the page keeps them: CTs read from their files (NIfTI, DICOM series) onto
//! the canonical grid, label maps paired with them one to one, the demo's phantoms.

use super::{App, Case};
use crate::volume::label_table::LabelTable;
use crate::volume::scan_files::{
    LabelFile, NamedFiles, ScanFiles, ScanRead, group_scans, read_scan,
};
use crate::volume::synthetic::{PHANTOM_LABELS, PhantomOptions, phantom};
use crate::volume::{CtVolume, LabelVolume};
use crate::{Error, Result};

/// A CT (file grid) as a case: put on the canonical grid, no labels yet.
pub fn case_of_ct(name: String, ct: &CtVolume) -> Case {
    let (canon, reorientation) = ct.to_canonical();
    Case {
        name,
        canon,
        reorientation,
        file_affine_codes: ct.affine.axis_codes(),
        labels: None,
        truth: None,
        points: Vec::new(),
        result: None,
        dicom: None,
    }
}

/// A CT read from its files (NIfTI, or a DICOM series) as the page keeps it.
pub fn scan_case(scan: ScanRead) -> Case {
    Case {
        dicom: scan.dicom,
        ..case_of_ct(scan.name, &scan.ct)
    }
}

/// A NIfTI file's bytes as a case.
pub fn to_case(name: &str, bytes: &[u8]) -> Result<Case> {
    read_scan(&ScanFiles::Nifti {
        name: name.to_string(),
        bytes: bytes.to_vec(),
    })
    .map(scan_case)
}

/// An error about a named file.
pub fn prefix(name: &str, e: Error) -> Error {
    e.context(name)
}

/// A label map (file grid) on a case's canonical grid, after checking they match.
pub fn labels_for(case: &Case, name: &str, labels: LabelVolume) -> Result<LabelVolume> {
    let (canon, r) = labels.to_canonical();
    if r != case.reorientation || !case.canon.same_grid(&canon) {
        return Err(Error::Mismatch(format!(
            "{name} does not match {} (different shape or geometry): is it the label map of another scan?",
            case.name
        )));
    }
    Ok(canon)
}

/// A chosen label file (NIfTI, or an RTSTRUCT of a DICOM case) on a case's canonical
/// grid, with the RTSTRUCT's ROI names.
fn label_file_for(
    case: &Case,
    name: &str,
    file: &LabelFile,
) -> Result<(LabelVolume, Option<LabelTable>)> {
    let ct = match file {
        LabelFile::Map(_) => None,
        LabelFile::RtStruct(_) => Some(case.canon.from_canonical(&case.reorientation)?),
    };
    let grid = ct.as_ref().unwrap_or(&case.canon);
    let (labels, table) = file.on_scan(name, &case.name, grid, case.dicom.as_ref())?;
    Ok((labels_for(case, name, labels)?, table))
}

/// Pair label maps (file order) with cases one to one.
pub fn check_pairs(cases: usize, labels: usize, what: &str) -> Result<()> {
    if labels != cases {
        return Err(Error::Mismatch(format!(
            "{cases} {what} CTs but {labels} {what} label maps: give one label map per {what} CT"
        )));
    }
    Ok(())
}

/// Read the CTs among files (NIfTI files; DICOM folders, each one series).
pub fn read_cases(files: NamedFiles) -> Result<Vec<Case>> {
    group_scans(files)
        .iter()
        .map(|s| read_scan(s).map(scan_case))
        .collect()
}

/// " (n DICOM series)" when some cases were read from DICOM.
pub fn dicom_note(cases: &[Case]) -> String {
    match cases.iter().filter(|c| c.dicom.is_some()).count() {
        0 => String::new(),
        n => format!(" ({n} DICOM series)"),
    }
}

/// Put the support label maps on the supports (when both are loaded).
pub fn pair_support_labels(a: &mut App) -> Result<()> {
    if a.support_labels.is_empty() || a.supports.is_empty() {
        return Ok(());
    }
    check_pairs(a.supports.len(), a.support_labels.len(), "support")?;
    let mut roi_names = None;
    for (case, (name, lab)) in a.supports.iter_mut().zip(&a.support_labels) {
        let (labels, table) = label_file_for(case, name, lab)?;
        case.labels = Some(labels);
        roi_names = roi_names.or(table);
    }
    // As natively: an RTSTRUCT's ROI names name the organs, unless a label table was chosen.
    if let Some(t) = roi_names.filter(|_| !a.table_chosen) {
        a.table = t;
    }
    Ok(())
}

/// Put the query label maps (for metrics) on the queries (when both are loaded).
pub fn pair_query_labels(a: &mut App) -> Result<()> {
    if a.query_labels.is_empty() || a.queries.is_empty() {
        return Ok(());
    }
    check_pairs(a.queries.len(), a.query_labels.len(), "query")?;
    for (case, (name, lab)) in a.queries.iter_mut().zip(&a.query_labels) {
        case.truth = Some(label_file_for(case, name, lab)?.0);
    }
    Ok(())
}

/// The demo: 3 synthetic support phantoms with their organ labels and 1 query phantom
/// (stored in RAS, read back through NIfTI as a user's file) with its own labels as truth.
pub fn demo_cases() -> Result<(Vec<Case>, Case)> {
    let mut supports = Vec::new();
    for seed in 1..=3 {
        let (ct, lab) = phantom(&PhantomOptions {
            seed,
            ..Default::default()
        })?;
        let mut case = case_of_ct(format!("phantom_support_{seed}"), &ct);
        case.labels = Some(lab.to_canonical().0);
        supports.push(case);
    }
    let (q, q_labels) = phantom(&PhantomOptions {
        seed: 11,
        ras: true,
        ..Default::default()
    })?;
    let mut query = to_case(
        "phantom_query.nii.gz",
        &crate::volume::nifti_io::write_nifti_bytes(&q, false)?,
    )?;
    // The phantom's own organs: after a Run the page shows how well they were found.
    query.truth = Some(labels_for(&query, "phantom_query labels", q_labels)?);
    Ok((supports, query))
}

/// The demo phantoms' organ names.
pub fn phantom_table() -> LabelTable {
    LabelTable(
        PHANTOM_LABELS
            .iter()
            .map(|&(v, n)| (v, n.to_string()))
            .collect(),
    )
}
