//! What the DICOM files said about the series read (and the others among them), and
//! how `medlsam info` prints it.

/// A short description of one series found among the files (for `info` and errors).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SeriesBrief {
    pub series_uid: String,
    pub modality: String,
    pub description: String,
    /// Number of images (frames) in the series.
    pub images: usize,
}

/// What the DICOM files said about the series that was read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DicomInfo {
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
    pub modality: String,
    /// SeriesDescription (0008,103E), may be empty.
    pub description: String,
    /// Slices in the volume (its third dimension).
    pub slices: usize,
    /// Files that make up the series (1 for a multi-frame file).
    pub files: usize,
    /// Transfer syntax UID and name, e.g. `1.2.840.10008.1.2.1 (Explicit VR Little Endian)`.
    pub transfer_syntax: String,
    /// Stored pixel type, e.g. `"int16"` or `"uint16"`.
    pub stored_dtype: String,
    /// RescaleSlope/RescaleIntercept of the first slice (HU = raw · slope + intercept).
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// SOP Instance UID of each slice, in slice (k) order.
    #[serde(skip)]
    pub sop_instance_uids: Vec<String>,
    /// Frame number (1-based) of each slice in its file, in slice (k) order: 1 for
    /// single-frame files.
    #[serde(skip)]
    pub frame_numbers: Vec<u32>,
    /// SOP Class UID of the images (e.g. CT Image Storage `1.2.840.10008.5.1.4.1.1.2`).
    #[serde(skip)]
    pub sop_class_uid: String,
    /// Patient and study attributes, copied into derived objects (RTSTRUCT, SEG).
    #[serde(skip)]
    pub patient: PatientStudy,
    /// Other image series among the files (not read).
    pub other_series: Vec<SeriesBrief>,
    /// Files that were not DICOM images (skipped), e.g. a DICOMDIR or an RTSTRUCT.
    pub skipped_files: usize,
    /// Localizer (scout) images of the series that were left out.
    pub skipped_localizers: usize,
}

/// The patient and study attributes of a series, as its first image states them (kept
/// to write derived objects of the same patient and study; empty when absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatientStudy {
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub study_description: String,
}

/// The DICOM lines `medlsam info` prints after the NIfTI fields.
pub fn info_lines(d: &DicomInfo) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<13}{v}\n"));
    line("series_uid", &d.series_uid);
    line("modality", &d.modality);
    if !d.description.is_empty() {
        line("series_desc", &d.description);
    }
    line(
        "slices",
        &format!(
            "{} (from {} file{})",
            d.slices,
            d.files,
            if d.files == 1 { "" } else { "s" }
        ),
    );
    line("study_uid", &d.study_uid);
    if !d.frame_of_reference_uid.is_empty() {
        line("frame_of_ref", &d.frame_of_reference_uid);
    }
    line("transfer", &d.transfer_syntax);
    if d.skipped_localizers > 0 {
        line("localizers", &format!("{} left out", d.skipped_localizers));
    }
    if d.skipped_files > 0 {
        line(
            "skipped",
            &format!("{} files (not DICOM images)", d.skipped_files),
        );
    }
    for o in &d.other_series {
        line(
            "other_series",
            &format!(
                "{} {} ({} images){} — read it with PATH#{}",
                o.series_uid,
                o.modality,
                o.images,
                if o.description.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", o.description)
                },
                o.series_uid
            ),
        );
    }
    s
}
