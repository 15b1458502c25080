//! The inputs of a native run, read from files: CT scans ([`load_ct`], the one
//! place every command reads a CT from a path), label maps, supports (CT and
//! label map on one grid), queries (refused without a body), the organs to
//! process, their names and the MedLAM weights.

use std::path::{Path, PathBuf};

use super::config::{CasePaths, Organs, RunConfig};
use crate::medlam::{SupportCase, SupportOrgans};
use crate::volume::dicom::DicomInfo;
use crate::volume::label_table::LabelTable;
use crate::volume::labels::{classes, to_support_values};
use crate::volume::rtstruct::{read_rtstruct, rtstruct_roi_names};
use crate::volume::{
    CtVolume, LabelVolume, case_name, is_dicom_path, load_ct_with_dicom, read_nifti_path,
};
use crate::{Error, Result};

/// Read a CT image (Hounsfield units, file grid) from a path: NIfTI, or a DICOM
/// series (a folder, one of its files, or `DIR#SERIES_UID`). Every command reads its
/// CT inputs here.
pub fn load_ct(path: &Path) -> Result<CtVolume> {
    crate::volume::load_ct(path)
}

/// Read a label map (file grid) from a path.
pub fn load_labels(path: &Path) -> Result<LabelVolume> {
    read_nifti_path(path)?.into_labels()
}

/// Whether a label path is a DICOM file (an RTSTRUCT, for a DICOM image), not NIfTI.
pub fn is_dicom_label(path: &Path) -> bool {
    path.is_file() && is_dicom_path(path)
}

/// Read an RTSTRUCT file onto the grid of a DICOM CT: labels 1..n in ROI order, the ROI
/// names as their table.
pub fn load_rtstruct_labels(
    path: &Path,
    image: &Path,
    ct: &CtVolume,
    info: Option<&DicomInfo>,
) -> Result<(LabelVolume, LabelTable)> {
    let Some(info) = info else {
        return Err(Error::InvalidArgument(format!(
            "{} is a DICOM file (an RTSTRUCT?) but the image {} is not DICOM: an RTSTRUCT \
             label needs the DICOM series it was drawn on",
            path.display(),
            image.display()
        )));
    };
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    let r = read_rtstruct(&bytes, &path.display().to_string(), ct, info)?;
    Ok((r.labels, r.table))
}

/// A loaded support: CT and label map on the same grid (the file's).
pub struct Support {
    pub name: String,
    pub image: CtVolume,
    pub labels: LabelVolume,
}

impl Support {
    /// Read a support's CT and label map and check that they share a grid.
    /// The label map is NIfTI, or an RTSTRUCT when the image is a DICOM series.
    pub fn load(image: &Path, label: &Path) -> Result<Self> {
        let (ct, labels) = if is_dicom_label(label) {
            let (ct, info) = load_ct_with_dicom(image)?;
            let labels = load_rtstruct_labels(label, image, &ct, info.as_ref())?.0;
            (ct, labels)
        } else {
            (load_ct(image)?, load_labels(label)?)
        };
        ct.check_same_grid(
            &labels,
            &format!(
                "support image {} and label {}",
                image.display(),
                label.display()
            ),
        )?;
        Ok(Self {
            name: case_name(image),
            image: ct,
            labels,
        })
    }

    /// The support as the atlas takes it: CT and label map on the canonical grid.
    pub fn to_case(&self) -> SupportCase {
        SupportCase {
            name: self.name.clone(),
            ct: self.image.to_canonical().0,
            organs: SupportOrgans::Labels(self.labels.to_canonical().0),
        }
    }
}

/// Read a support (CT and label map, same grid) onto the canonical grid.
pub fn read_support(image: &Path, label: &Path) -> Result<SupportCase> {
    Ok(Support::load(image, label)?.to_case())
}

/// Load the supports and check each image/label pair.
pub fn load_supports(paths: &[CasePaths]) -> Result<Vec<Support>> {
    if paths.is_empty() {
        return Err(Error::InvalidArgument("no support scans given".into()));
    }
    paths
        .iter()
        .map(|p| {
            let label_path = p.label.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("support {} has no label map", p.image.display()))
            })?;
            Support::load(&p.image, label_path)
        })
        .collect()
}

/// The organs to process: the requested ones, or every label of any support.
/// Errors if a requested organ is in no support; warns (returned) where only some lack it.
pub fn resolve_organs(supports: &[Support], organs: &Organs) -> Result<(Vec<u16>, Vec<String>)> {
    let present: Vec<Vec<u16>> = supports
        .iter()
        .map(|s| classes(&s.labels).into_iter().map(|(v, _)| v).collect())
        .collect();
    let wanted: Vec<u16> = match organs {
        Organs::List(l) => l.clone(),
        Organs::All => {
            let mut all: Vec<u16> = present.iter().flatten().copied().collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    let mut warnings = Vec::new();
    for &o in &wanted {
        let missing: Vec<&str> = supports
            .iter()
            .zip(&present)
            .filter(|(_, p)| !p.contains(&o))
            .map(|(s, _)| s.name.as_str())
            .collect();
        if missing.len() == supports.len() {
            return Err(Error::InvalidArgument(format!(
                "organ {o} is in none of the support label maps"
            )));
        }
        if !missing.is_empty() {
            warnings.push(format!(
                "organ {o} is missing in support(s) {}: they are not used for it",
                missing.join(", ")
            ));
        }
    }
    if wanted.is_empty() {
        return Err(Error::InvalidArgument(
            "the support label maps contain no organ".into(),
        ));
    }
    Ok((wanted, warnings))
}

/// Refuse queries without a body (e.g. not a CT in HU): fewer than 1000 voxels above −500 HU.
pub fn check_has_body(ct: &CtVolume) -> Result<()> {
    let body = ct.data.iter().filter(|&&v| v > -500).count();
    if body < 1000 {
        return Err(Error::InvalidVolume(format!(
            "no body found ({body} voxels above -500 HU): is this a CT in Hounsfield units?"
        )));
    }
    Ok(())
}

/// Read a query's label map, check it is on the query's grid and map its values to the
/// supports' (`(support, query)` pairs).
pub fn load_query_labels(
    ct: &CtVolume,
    image: &Path,
    label: &Path,
    query_label_map: &[(u16, u16)],
) -> Result<LabelVolume> {
    let lab = load_labels(label)?;
    ct.check_same_grid(
        &lab,
        &format!(
            "query image {} and label {}",
            image.display(),
            label.display()
        ),
    )?;
    Ok(to_support_values(lab, query_label_map))
}

/// Read a query CT (refused without a body) and, when given, its label map on the same
/// grid with its values mapped to the supports' (`(support, query)` pairs).
pub fn load_query(
    q: &CasePaths,
    query_label_map: &[(u16, u16)],
) -> Result<(CtVolume, Option<LabelVolume>)> {
    let (ct, truth, _) = load_query_with_dicom(q, query_label_map)?;
    Ok((ct, truth))
}

/// [`load_query`], with what the DICOM series said when the query is one.
pub fn load_query_with_dicom(
    q: &CasePaths,
    query_label_map: &[(u16, u16)],
) -> Result<(CtVolume, Option<LabelVolume>, Option<DicomInfo>)> {
    let (ct, info) = load_ct_with_dicom(&q.image)?;
    check_has_body(&ct)?;
    let truth = match &q.label {
        Some(l) => Some(load_query_labels(&ct, &q.image, l, query_label_map)?),
        None => None,
    };
    Ok((ct, truth, info))
}

/// Organ names of a run: the ROI names of the first support label that is an
/// RTSTRUCT, else the label table beside the first support label map that has one.
pub fn support_label_table(supports: &[CasePaths]) -> LabelTable {
    supports
        .iter()
        .find_map(|s| {
            let l = s.label.as_deref()?;
            if is_dicom_label(l) {
                let bytes = std::fs::read(l).ok()?;
                rtstruct_roi_names(&bytes, &l.display().to_string()).ok()
            } else {
                LabelTable::find_beside(l)
            }
        })
        .unwrap_or_default()
}

/// Refuse RTSTRUCT/SEG outputs for queries that are not DICOM series (before any work).
pub fn check_dicom_outputs(queries: &[CasePaths], rtstruct: bool, seg: bool) -> Result<()> {
    if !(rtstruct || seg) {
        return Ok(());
    }
    let what = match (rtstruct, seg) {
        (true, true) => "--rtstruct and --dicom-seg need",
        (true, false) => "--rtstruct (an RT Structure Set) needs",
        _ => "--dicom-seg (a DICOM Segmentation) needs",
    };
    if let Some(q) = queries.iter().find(|q| !is_dicom_path(&q.image)) {
        return Err(Error::InvalidArgument(format!(
            "{what} a DICOM query (its slices' UIDs and the patient's identity): {} is not a \
             DICOM series",
            q.image.display()
        )));
    }
    Ok(())
}

/// The MedLAM weights a run uses: the configured file or `weights/medlam.bpk`.
pub fn medlam_weights_path(config: &RunConfig) -> PathBuf {
    config
        .medlam_weights
        .clone()
        .unwrap_or_else(|| crate::sam::weights::default_weights_dir().join("medlam.bpk"))
}

/// Read MedLAM weights (burnpack bytes) from a file.
pub fn read_medlam_weights(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Weights(format!(
            "cannot read MedLAM weights {}: {e}",
            path.display()
        ))
    })
}

/// `../shared/data` (or `$MEDLSAM_DATA`) for defaults of developer commands.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("MEDLSAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::synthetic::{PhantomOptions, phantom};
    use crate::volume::{Affine, Volume};

    #[test]
    fn organ_resolution_and_body_check() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [40, 40, 30],
            spacing_mm: [7.0; 3],
            ..Default::default()
        })
        .unwrap();
        let mut lab2 = lab.clone();
        lab2.data.iter_mut().for_each(|v| {
            if *v == 2 {
                *v = 0
            }
        });
        let s = vec![
            Support {
                name: "a".into(),
                image: ct.clone(),
                labels: lab,
            },
            Support {
                name: "b".into(),
                image: ct.clone(),
                labels: lab2,
            },
        ];
        let (o, w) = resolve_organs(&s, &Organs::All).unwrap();
        assert_eq!(o, vec![1, 2, 3, 4]);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("organ 2 is missing in support(s) b"), "{w:?}");
        let e = resolve_organs(&s, &Organs::List(vec![9]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("organ 9 is in none"), "{e}");
        check_has_body(&ct).unwrap();
        let air = Volume::filled([20, 20, 20], -1000i16, Affine::identity()).unwrap();
        assert!(
            check_has_body(&air)
                .unwrap_err()
                .to_string()
                .contains("no body found")
        );
    }
}
