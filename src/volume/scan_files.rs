//! The CT scans among the files a page was given (chosen with a file or folder picker,
//! or dropped): each NIfTI file is a scan, each folder holding DICOM files is one DICOM
//! series set (any file names; the files that are not DICOM are skipped, and of several
//! series the CT series with the most slices is read, as natively). Label maps may be
//! NIfTI or, for a DICOM scan, an RTSTRUCT file. Pure functions over bytes (the page
//! reads the files and keeps them: nothing is uploaded).

use super::dicom::{DicomInfo, is_dicom, read_dicom_folder_bytes};
use super::label_table::LabelTable;
use super::rtstruct::read_rtstruct;
use super::{CtVolume, LabelVolume, read_nifti_bytes};
use crate::{Error, Result};

/// Files as a page gets them: (path inside what was chosen or dropped, bytes).
pub type NamedFiles = Vec<(String, Vec<u8>)>;

/// The files of one scan: a NIfTI file or a folder of DICOM files.
#[derive(Clone, Debug, PartialEq)]
pub enum ScanFiles {
    Nifti {
        name: String,
        bytes: Vec<u8>,
    },
    /// `files`: (path inside the page's selection, bytes), DICOM or not.
    DicomFolder {
        folder: String,
        files: NamedFiles,
    },
}

/// A scan read from its files: case name, CT on its file grid, and what the DICOM
/// series said (for RTSTRUCT labels and RTSTRUCT/SEG outputs) when it is one.
#[derive(Clone, Debug)]
pub struct ScanRead {
    pub name: String,
    pub ct: CtVolume,
    pub dicom: Option<DicomInfo>,
}

/// The case name of a file: its base name up to the first dot (`a/b/x.ct.nii.gz` → `x`).
pub fn file_case_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split('.').next().unwrap_or(base).to_string()
}

fn is_nifti_name(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.ends_with(".nii") || p.ends_with(".nii.gz")
}

/// Group files (`path` relative to what was chosen or dropped: `folder/…/file` for a
/// folder's files, a bare name for a loose file) into scans, in the order first seen:
/// a folder with any DICOM file is one DICOM series set (named after the folder); a
/// folder without one gives its NIfTI files, each a scan, or (when it has none either)
/// a DICOM set that the reader refuses with a message; the loose files (in the place of
/// the first one) give one set of all the loose DICOM files (named after the first),
/// then each other loose file as a NIfTI scan.
pub fn group_scans(files: NamedFiles) -> Vec<ScanFiles> {
    let mut groups: Vec<(Option<String>, NamedFiles)> = Vec::new();
    for (path, bytes) in files {
        let path = path.trim_start_matches('/').to_string();
        let top = path.split_once('/').map(|(t, _)| t.to_string());
        match groups.iter_mut().find(|(t, _)| *t == top) {
            Some((_, g)) => g.push((path, bytes)),
            None => groups.push((top, vec![(path, bytes)])),
        }
    }
    let mut scans = Vec::new();
    for (top, files) in groups {
        match top {
            Some(folder) => {
                if files.iter().any(|(_, b)| is_dicom(b))
                    || !files.iter().any(|(p, _)| is_nifti_name(p))
                {
                    scans.push(ScanFiles::DicomFolder { folder, files });
                } else {
                    scans.extend(
                        files
                            .into_iter()
                            .filter(|(p, _)| is_nifti_name(p))
                            .map(|(name, bytes)| ScanFiles::Nifti { name, bytes }),
                    );
                }
            }
            None => {
                let (dicom, other): (Vec<_>, Vec<_>) =
                    files.into_iter().partition(|(_, b)| is_dicom(b));
                if let Some((first, _)) = dicom.first() {
                    scans.push(ScanFiles::DicomFolder {
                        folder: file_case_name(first),
                        files: dicom,
                    });
                }
                scans.extend(
                    other
                        .into_iter()
                        .map(|(name, bytes)| ScanFiles::Nifti { name, bytes }),
                );
            }
        }
    }
    scans
}

fn prefix(name: &str, e: Error) -> Error {
    e.context(name)
}

/// Read a scan: a NIfTI CT, or the largest CT series of a DICOM folder.
pub fn read_scan(scan: &ScanFiles) -> Result<ScanRead> {
    match scan {
        ScanFiles::Nifti { name, bytes } => Ok(ScanRead {
            name: file_case_name(name),
            ct: read_nifti_bytes(bytes)
                .and_then(|f| f.into_ct())
                .map_err(|e| prefix(name, e))?,
            dicom: None,
        }),
        ScanFiles::DicomFolder { folder, files } => {
            let s = read_dicom_folder_bytes(folder, files, None)?;
            Ok(ScanRead {
                name: folder.clone(),
                ct: s.ct,
                dicom: Some(s.info),
            })
        }
    }
}

/// A label map as chosen: NIfTI (read) or an RTSTRUCT (kept as bytes until it meets
/// the DICOM scan it was drawn on).
#[derive(Clone, Debug)]
pub enum LabelFile {
    Map(LabelVolume),
    RtStruct(Vec<u8>),
}

impl LabelFile {
    /// Read a label file: DICOM bytes are taken for an RTSTRUCT, others for NIfTI.
    pub fn read(name: &str, bytes: Vec<u8>) -> Result<Self> {
        if is_dicom(&bytes) {
            return Ok(Self::RtStruct(bytes));
        }
        Ok(Self::Map(
            read_nifti_bytes(&bytes)
                .and_then(|f| f.into_labels())
                .map_err(|e| prefix(name, e))?,
        ))
    }

    /// The label map on the scan's file grid (`ct`, `dicom` as read by [`read_scan`]);
    /// for an RTSTRUCT also its ROI names (labels 1..n in ROI order), as natively
    /// (`--support-label X.rtstruct.dcm`).
    pub fn on_scan(
        &self,
        name: &str,
        scan: &str,
        ct: &CtVolume,
        dicom: Option<&DicomInfo>,
    ) -> Result<(LabelVolume, Option<LabelTable>)> {
        match self {
            Self::Map(l) => Ok((l.clone(), None)),
            Self::RtStruct(bytes) => {
                let info = dicom.ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{name} is a DICOM file (an RTSTRUCT?) but {scan} is not a DICOM series: \
                         an RTSTRUCT label needs the DICOM series it was drawn on"
                    ))
                })?;
                let r = read_rtstruct(bytes, name, ct, info)?;
                Ok((r.labels, Some(r.table)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dicom_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 132];
        b[128..132].copy_from_slice(b"DICM");
        b
    }

    #[test]
    fn files_group_by_top_folder() {
        let f = |p: &str, b: Vec<u8>| (p.to_string(), b);
        let scans = group_scans(vec![
            f("a/1", dicom_bytes()),
            f("x.ct.nii.gz", vec![1]),
            f("a/sub/2.dcm", dicom_bytes()),
            f("a/README", b"hello".to_vec()),
            f("b/n.nii.gz", vec![2]),
            f("b/notes.txt", vec![3]),
            f("c/DICOMDIR.txt", vec![4]),
            f("s1", dicom_bytes()),
            f("s2", dicom_bytes()),
        ]);
        let kinds: Vec<String> = scans
            .iter()
            .map(|s| match s {
                ScanFiles::Nifti { name, .. } => format!("nifti {name}"),
                ScanFiles::DicomFolder { folder, files } => {
                    format!("dicom {folder} {}", files.len())
                }
            })
            .collect();
        assert_eq!(
            kinds,
            // Folders and the loose files in the order first seen; loose DICOM files
            // together, before the loose NIfTI files.
            [
                "dicom a 3",
                "dicom s1 2",
                "nifti x.ct.nii.gz",
                "nifti b/n.nii.gz",
                "dicom c 1"
            ]
        );
        assert_eq!(file_case_name("b/n.ct.nii.gz"), "n");
    }

    #[test]
    fn a_folder_without_dicom_is_refused_with_its_name() {
        let scans = group_scans(vec![("notes/readme.txt".into(), b"hi".to_vec())]);
        let e = read_scan(&scans[0]).unwrap_err().to_string();
        assert!(e.contains("folder notes") && e.contains("no DICOM"), "{e}");
    }

    #[test]
    fn the_committed_dicom_folder_reads_as_natively() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom");
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir.join("ircadb_001")).unwrap() {
            let p = e.unwrap().path();
            let rel = format!("ircadb_001/{}", p.file_name().unwrap().to_string_lossy());
            files.push((rel, std::fs::read(&p).unwrap()));
        }
        files.push(("ircadb_001/README".into(), b"not DICOM".to_vec()));
        let scans = group_scans(files);
        assert_eq!(scans.len(), 1);
        let r = read_scan(&scans[0]).unwrap();
        let native = super::super::dicom::read_dicom_path(dir.join("ircadb_001"), None).unwrap();
        assert_eq!(r.name, "ircadb_001");
        assert_eq!(r.ct, native.ct);
        let info = r.dicom.unwrap();
        // What RTSTRUCT and SEG outputs are made of is what the CLI reads (only the count
        // of skipped files differs: the README).
        assert_eq!(info.sop_instance_uids, native.info.sop_instance_uids);
        assert_eq!(info.frame_numbers, native.info.frame_numbers);
        assert_eq!(info.sop_class_uid, native.info.sop_class_uid);
        assert_eq!(info.patient, native.info.patient);
        assert_eq!(
            [
                &info.series_uid,
                &info.study_uid,
                &info.frame_of_reference_uid
            ],
            [
                &native.info.series_uid,
                &native.info.study_uid,
                &native.info.frame_of_reference_uid
            ]
        );
        assert_eq!(info.skipped_files, native.info.skipped_files + 1);
        // An RTSTRUCT needs a DICOM scan.
        let l = LabelFile::RtStruct(dicom_bytes());
        let e = l
            .on_scan("x.dcm", "q", &r.ct, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a DICOM series"), "{e}");
    }
}
