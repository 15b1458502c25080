//! What the DICOM objects derived from a query CT share (RT Structure Set in
//! [`super::rtstruct`], Segmentation in [`super::dicom_seg`]): deterministic UIDs,
//! the slices' patient geometry (LPS) from the volume's affine, the patient/study
//! attributes copied from the query, and writing a file to bytes.
//!
//! **UIDs** are made without any randomness: `2.25.` followed by the decimal value of
//! a 128-bit UUID (ISO/IEC 9834-8, the root any application may use without
//! registration) whose bits are the first 16 bytes of a SHA-256 over a purpose string
//! (e.g. `"medlsam rtstruct instance"`) and the content (the query's series UID and a
//! digest of the mask and organ names), with the UUID version set to 8 (custom) and
//! the RFC 4122 variant. The same mask of the same series therefore gets the same
//! UIDs on every run and machine, a different mask different ones.
//!
//! **Frame of reference**: derived objects carry the query's FrameOfReferenceUID.
//! Where the query has none (e.g. 3D-IRCADb's slices), one is derived from its
//! SeriesInstanceUID the same way ([`frame_of_reference_uid`]), so reader and writer
//! agree on it.

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use sha2::{Digest, Sha256};

use super::dicom::DicomInfo;
use super::label_table::LabelTable;
use super::{Affine, LabelVolume};
use crate::{Error, Result};

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian (used where an element is too long for explicit VR's
/// 16-bit lengths, e.g. a contour of more than about 2700 points).
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// CT Image Storage: referenced when the query's images do not state their class.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// The name derived objects give as Manufacturer and algorithm.
pub const SOFTWARE: &str = "MedLSAM-rs";

/// A UID from a purpose and content: `2.25.<UUID as a decimal integer>`, the UUID's
/// bits from SHA-256 (version 8, RFC 4122 variant). At most 44 characters.
pub fn derived_uid(purpose: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update((purpose.len() as u64).to_le_bytes());
    h.update(purpose.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// The query's FrameOfReferenceUID, or (when its files have none) one derived from its
/// SeriesInstanceUID.
pub fn frame_of_reference_uid(info: &DicomInfo) -> String {
    if info.frame_of_reference_uid.is_empty() {
        derived_uid("medlsam frame of reference", &[info.series_uid.as_bytes()])
    } else {
        info.frame_of_reference_uid.clone()
    }
}

/// The SOP Class UID the query's images are referenced with.
pub fn image_sop_class(info: &DicomInfo) -> &str {
    if info.sop_class_uid.is_empty() {
        CT_IMAGE_STORAGE
    } else {
        &info.sop_class_uid
    }
}

/// A digest of the label values `organs` in a mask (its grid and voxels) and their
/// names: the content part of derived UIDs.
pub fn mask_digest(mask: &LabelVolume, organs: &[u16], names: &LabelTable) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in mask.dims {
        h.update((d as u64).to_le_bytes());
    }
    for v in mask.affine.m.iter().flatten() {
        h.update(v.to_le_bytes());
    }
    for &o in organs {
        h.update(o.to_le_bytes());
        h.update(names.name(o).as_bytes());
        h.update([0]);
    }
    let mut bytes = Vec::with_capacity(mask.data.len());
    for &v in &mask.data {
        bytes.push(
            organs
                .iter()
                .position(|&o| o == v)
                .map_or(0, |p| p as u8 + 1),
        );
        if bytes.len() == 1 << 20 {
            h.update(&bytes);
            bytes.clear();
        }
    }
    h.update(&bytes);
    h.finalize().into()
}

/// RAS world (the crate's) → DICOM patient coordinates (LPS).
pub fn ras_to_lps(p: [f64; 3]) -> [f64; 3] {
    [-p[0], -p[1], p[2]]
}

/// The patient geometry of a volume's axial slices, as DICOM states it.
#[derive(Clone, Debug)]
pub struct SliceGeometry {
    /// ImagePositionPatient (LPS mm) of each slice's first pixel.
    pub positions: Vec<[f64; 3]>,
    /// ImageOrientationPatient: the row direction (along i), then the column direction
    /// (along j), unit vectors in LPS.
    pub orientation: [f64; 6],
    /// PixelSpacing: between rows (along j), between columns (along i), mm.
    pub pixel_spacing: [f64; 2],
    /// Distance between slice centres, mm.
    pub slice_spacing: f64,
}

impl SliceGeometry {
    /// From a volume's voxel → RAS affine and grid.
    pub fn of(affine: &Affine, dims: [usize; 3]) -> Self {
        let m = &affine.m;
        let axis = |c: usize| ras_to_lps([m[0][c], m[1][c], m[2][c]]);
        let len = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        let (a, b, c) = (axis(0), axis(1), axis(2));
        let (la, lb) = (len(a), len(b));
        let positions = (0..dims[2])
            .map(|k| ras_to_lps(affine.voxel_to_world([0.0, 0.0, k as f64])))
            .collect();
        Self {
            positions,
            orientation: [
                a[0] / la,
                a[1] / la,
                a[2] / la,
                b[0] / lb,
                b[1] / lb,
                b[2] / lb,
            ],
            pixel_spacing: [lb, la],
            slice_spacing: len(c),
        }
    }
}

/// One DS (decimal string) value of at most 16 characters: 6 significant decimals
/// at most, trailing zeros removed.
pub fn ds(v: f64) -> String {
    let v = if v.abs() < 5e-7 { 0.0 } else { v };
    for decimals in (0..=6).rev() {
        let mut s = format!("{v:.decimals$}");
        if s.contains('.') {
            s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        if s == "-0" {
            s = "0".into();
        }
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.3e}")
}

/// Several DS values, `\`-separated.
pub fn ds_multi(v: &[f64]) -> String {
    v.iter().map(|&x| ds(x)).collect::<Vec<_>>().join("\\")
}

pub(crate) type Elem = DataElement<InMemDicomObject>;

pub(crate) fn el(tag: Tag, vr: VR, v: impl Into<String>) -> Elem {
    DataElement::new(tag, vr, PrimitiveValue::from(v.into()))
}

pub(crate) fn el_u16(tag: Tag, v: u16) -> Elem {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

pub(crate) fn el_ul(tag: Tag, v: &[u32]) -> Elem {
    DataElement::new(
        tag,
        VR::UL,
        PrimitiveValue::U32(v.iter().copied().collect()),
    )
}

pub(crate) fn el_is(tag: Tag, v: i64) -> Elem {
    el(tag, VR::IS, v.to_string())
}

pub(crate) fn el_seq(tag: Tag, items: Vec<InMemDicomObject>) -> Elem {
    DataElement::new(tag, VR::SQ, Value::from(DataSetSequence::from(items)))
}

pub(crate) fn item(elements: Vec<Elem>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning).
pub(crate) fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// The Patient and General Study attributes of the query, and the equipment.
pub(crate) fn patient_study_elements(info: &DicomInfo) -> Vec<Elem> {
    let p = &info.patient;
    vec![
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::STUDY_DATE, VR::DA, &p.study_date),
        el(tags::STUDY_TIME, VR::TM, &p.study_time),
        el(tags::ACCESSION_NUMBER, VR::SH, &p.accession_number),
        el(tags::MANUFACTURER, VR::LO, SOFTWARE),
        el(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            &p.referring_physician_name,
        ),
        el(tags::STUDY_DESCRIPTION, VR::LO, &p.study_description),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, SOFTWARE),
        el(tags::PATIENT_NAME, VR::PN, &p.patient_name),
        el(tags::PATIENT_ID, VR::LO, &p.patient_id),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, &p.patient_birth_date),
        el(tags::PATIENT_SEX, VR::CS, &p.patient_sex),
        el(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            concat!("medlsam ", env!("CARGO_PKG_VERSION")),
        ),
        el(tags::STUDY_INSTANCE_UID, VR::UI, &info.study_uid),
        el(tags::STUDY_ID, VR::SH, &p.study_id),
    ]
}

/// A dataset as a DICOM file (preamble, file meta group) in transfer syntax `ts`.
pub(crate) fn file_bytes(obj: InMemDicomObject, ts: &str) -> Result<Vec<u8>> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .implementation_class_uid(derived_uid("medlsam implementation", &[]))
                .implementation_version_name("MEDLSAM_RS"),
        )
        .map_err(|e| Error::Dicom(format!("cannot make the file meta group: {e}")))?;
    let mut out = Vec::new();
    file.write_all(&mut out)
        .map_err(|e| Error::Dicom(format!("cannot encode the DICOM file: {e}")))?;
    Ok(out)
}

/// Error unless the mask is on the grid the query's DICOM series was read into.
pub(crate) fn check_mask_matches(mask: &LabelVolume, info: &DicomInfo, what: &str) -> Result<()> {
    if mask.dims[2] != info.sop_instance_uids.len() || info.frame_numbers.len() != mask.dims[2] {
        return Err(Error::Mismatch(format!(
            "{what}: the mask has {} slices but the query's DICOM series {}",
            mask.dims[2],
            info.sop_instance_uids.len()
        )));
    }
    if info.series_uid.is_empty() || info.study_uid.is_empty() {
        return Err(Error::Dicom(format!(
            "{what}: the query's DICOM series has no SeriesInstanceUID or StudyInstanceUID"
        )));
    }
    Ok(())
}

/// Whether the query's slices are frames of one multi-frame file (then references name
/// the frame too).
pub(crate) fn multi_frame(info: &DicomInfo) -> bool {
    info.files == 1 && info.sop_instance_uids.len() > 1
}

/// An image reference item (ReferencedSOPClassUID/InstanceUID and, for a frame of a
/// multi-frame image, ReferencedFrameNumber) for slice `k` of the query.
pub(crate) fn image_reference(info: &DicomInfo, k: usize) -> Vec<Elem> {
    let mut v = vec![
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            image_sop_class(info),
        ),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &info.sop_instance_uids[k],
        ),
    ];
    if multi_frame(info) {
        v.push(el_is(
            tags::REFERENCED_FRAME_NUMBER,
            info.frame_numbers[k] as i64,
        ));
    }
    v
}

/// Today's date and time in UTC as DICOM DA (`YYYYMMDD`) and TM (`HHMMSS`) from
/// seconds since 1970 (the caller gives the clock: the library reads none).
pub fn dicom_date_time(unix_seconds: u64) -> (String, String) {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60),
    )
}

/// What a derived object says about when and by what it was made.
#[derive(Clone, Debug, Default)]
pub struct DerivedOptions {
    /// Content/structure-set date (DA) and time (TM); empty: left empty (RTSTRUCT) or
    /// the study's (SEG, where they are required).
    pub date: String,
    pub time: String,
    /// SeriesNumber of the new series.
    pub series_number: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_deterministic() {
        let a = derived_uid("x", &[b"1.2.3"]);
        assert_eq!(a, derived_uid("x", &[b"1.2.3"]));
        assert_ne!(a, derived_uid("x", &[b"1.2.4"]));
        assert_ne!(a, derived_uid("y", &[b"1.2.3"]));
        assert!(a.starts_with("2.25.") && a.len() <= 64, "{a}");
        assert!(a[5..].chars().all(|c| c.is_ascii_digit()) && !a[5..].starts_with('0'));
    }

    #[test]
    fn ds_values_fit_16_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0000001), "0");
        assert_eq!(ds(-123.456789), "-123.456789");
        assert_eq!(ds(1.0), "1");
        assert!(ds(-123_456_789.123_456).len() <= 16);
        assert_eq!(ds_multi(&[1.0, 2.5]), "1\\2.5");
    }

    #[test]
    fn dates_from_unix_seconds() {
        assert_eq!(dicom_date_time(0), ("19700101".into(), "000000".into()));
        assert_eq!(
            dicom_date_time(1_709_210_096),
            ("20240229".into(), "123456".into())
        );
    }
}
