//! What each file's header says (pixel data not read): the attributes of an image,
//! the geometry and scaling of each of its frames, and all headers grouped by series.

use std::collections::BTreeMap;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::info::{PatientStudy, SeriesBrief};
use super::source::Source;
use super::walk::parse;
use crate::{Error, Result};

/// Geometry and scaling of one frame.
#[derive(Clone, Debug)]
pub(super) struct Frame {
    pub(super) position: [f64; 3],
    pub(super) orientation: [f64; 6],
    /// PixelSpacing: (between rows, between columns) in mm.
    pub(super) spacing: [f64; 2],
    pub(super) slope: f64,
    pub(super) intercept: f64,
}

/// What one image file's header says (pixel data not read).
#[derive(Clone, Debug)]
pub(super) struct Header {
    pub(super) file: usize,
    pub(super) series_uid: String,
    pub(super) study_uid: String,
    pub(super) frame_of_reference_uid: String,
    pub(super) modality: String,
    pub(super) description: String,
    pub(super) sop_instance_uid: String,
    pub(super) sop_class_uid: String,
    pub(super) patient: PatientStudy,
    pub(super) transfer_syntax: String,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
    pub(super) signed: bool,
    pub(super) samples_per_pixel: u16,
    pub(super) localizer: bool,
    pub(super) gantry_tilt: Option<f64>,
    pub(super) slice_gap: Option<f64>,
    /// Per frame; an error message instead when the geometry is missing or invalid
    /// (reported only if this series is the one read).
    pub(super) frames: std::result::Result<Vec<Frame>, String>,
    pub(super) instance_number: Option<i64>,
}

impl Header {
    pub(super) fn frame_count(&self) -> usize {
        self.frames.as_ref().map(|f| f.len()).unwrap_or(1)
    }
}

pub(super) enum Parsed {
    Image(Box<Header>),
    /// A DICOM object that is not an image (e.g. DICOMDIR, RTSTRUCT): what it is.
    Other(String),
    NotDicom,
}

/// An attribute as text, trimmed of spaces and NULs (empty when absent).
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        })
        .unwrap_or_default()
}

/// An attribute's numbers (a DS or FD list).
pub(crate) fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag).and_then(|e| e.to_multi_float64().ok())
}

/// An attribute's (first) number, when finite.
fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.get(tag)
        .and_then(|e| e.to_float64().ok())
        .filter(|v| v.is_finite())
}

/// An attribute as an unsigned integer.
pub(crate) fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag).and_then(|e| e.to_int::<u32>().ok())
}

/// First item of sequence `seq` in `item`.
pub(crate) fn seq_item(item: &InMemDicomObject, seq: Tag) -> Option<&InMemDicomObject> {
    item.get(seq)?.items()?.first()
}

/// An attribute of a frame of an enhanced multi-frame image: from the frame's
/// PerFrameFunctionalGroupsSequence item, else the SharedFunctionalGroupsSequence,
/// else the top level.
fn frame_attr<T>(
    obj: &InMemDicomObject,
    frame: usize,
    macro_seq: Tag,
    get: impl Fn(&InMemDicomObject) -> Option<T>,
) -> Option<T> {
    let per_frame = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.get(frame))
        .and_then(|item| seq_item(item, macro_seq))
        .and_then(&get);
    per_frame
        .or_else(|| {
            seq_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
                .and_then(|item| seq_item(item, macro_seq))
                .and_then(&get)
        })
        .or_else(|| get(obj))
}

/// Position, orientation, spacing and rescaling of each frame, checked; an error
/// message (kept in the header) when one is missing or invalid.
fn frame_geometry(
    obj: &InMemDicomObject,
    n_frames: usize,
) -> std::result::Result<Vec<Frame>, String> {
    let mut frames = Vec::with_capacity(n_frames.min(4096));
    for f in 0..n_frames {
        let at = if n_frames > 1 {
            format!(" (frame {})", f + 1)
        } else {
            String::new()
        };
        let position = frame_attr(obj, f, tags::PLANE_POSITION_SEQUENCE, |o| {
            floats(o, tags::IMAGE_POSITION_PATIENT)
        })
        .ok_or(format!("no ImagePositionPatient (0020,0032){at}"))?;
        let orientation = frame_attr(obj, f, tags::PLANE_ORIENTATION_SEQUENCE, |o| {
            floats(o, tags::IMAGE_ORIENTATION_PATIENT)
        })
        .ok_or(format!("no ImageOrientationPatient (0020,0037){at}"))?;
        let spacing = frame_attr(obj, f, tags::PIXEL_MEASURES_SEQUENCE, |o| {
            floats(o, tags::PIXEL_SPACING)
        })
        .ok_or(format!("no PixelSpacing (0028,0030){at}"))?;
        let slope = frame_attr(obj, f, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, |o| {
            float(o, tags::RESCALE_SLOPE)
        })
        .unwrap_or(1.0);
        let intercept = frame_attr(obj, f, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, |o| {
            float(o, tags::RESCALE_INTERCEPT)
        })
        .unwrap_or(0.0);
        if position.len() != 3 || position.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "ImagePositionPatient (0020,0032) is not 3 numbers{at}"
            ));
        }
        if orientation.len() != 6 || orientation.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "ImageOrientationPatient (0020,0037) is not 6 numbers{at}"
            ));
        }
        if spacing.len() != 2 || spacing.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(format!(
                "PixelSpacing (0028,0030) is not 2 positive numbers{at}"
            ));
        }
        if slope == 0.0 {
            return Err(format!("RescaleSlope (0028,1053) is 0{at}"));
        }
        frames.push(Frame {
            position: [position[0], position[1], position[2]],
            orientation: [
                orientation[0],
                orientation[1],
                orientation[2],
                orientation[3],
                orientation[4],
                orientation[5],
            ],
            spacing: [spacing[0], spacing[1]],
            slope,
            intercept,
        });
    }
    Ok(frames)
}

/// Most frames accepted in one multi-frame file.
const MAX_FRAMES: usize = 65_535;

/// Parse the header of file `i`: an image, another DICOM object, or not DICOM.
pub(super) fn read_header(src: &dyn Source, i: usize) -> Result<Parsed> {
    let name = src.name(i);
    let Some(obj) = parse(|| src.reader(i), src.size(i).ok(), &name, true)? else {
        return Ok(Parsed::NotDicom);
    };
    let modality = text(&obj, tags::MODALITY);
    let (rows, cols) = (uint(&obj, tags::ROWS), uint(&obj, tags::COLUMNS));
    let (Some(rows), Some(cols)) = (rows, cols) else {
        let sop = obj.meta().media_storage_sop_class_uid().to_string();
        return not_an_image(&sop, &modality, &name);
    };
    let n_frames = number_of_frames(&obj, &name)?;
    let image_type = text(&obj, tags::IMAGE_TYPE).to_ascii_uppercase();
    Ok(Parsed::Image(Box::new(Header {
        file: i,
        series_uid: text(&obj, tags::SERIES_INSTANCE_UID),
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID),
        frame_of_reference_uid: text(&obj, tags::FRAME_OF_REFERENCE_UID),
        description: text(&obj, tags::SERIES_DESCRIPTION),
        sop_instance_uid: text(&obj, tags::SOP_INSTANCE_UID),
        sop_class_uid: text(&obj, tags::SOP_CLASS_UID),
        patient: patient_study(&obj),
        transfer_syntax: obj.meta().transfer_syntax().to_string(),
        rows: rows as usize,
        cols: cols as usize,
        bits_allocated: uint(&obj, tags::BITS_ALLOCATED).unwrap_or(0) as u16,
        bits_stored: uint(&obj, tags::BITS_STORED).unwrap_or(0) as u16,
        signed: uint(&obj, tags::PIXEL_REPRESENTATION) == Some(1),
        samples_per_pixel: uint(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
        localizer: image_type.split('\\').any(|t| t.trim() == "LOCALIZER"),
        gantry_tilt: float(&obj, tags::GANTRY_DETECTOR_TILT),
        slice_gap: slice_gap(&obj),
        frames: frame_geometry(&obj, n_frames),
        instance_number: obj
            .get(tags::INSTANCE_NUMBER)
            .and_then(|e| e.to_int::<i64>().ok()),
        modality,
    })))
}

/// A DICOM object without Rows/Columns: what it is, or an error for a CT image cut
/// short (the parser stops quietly at the end).
fn not_an_image(sop: &str, modality: &str, name: &str) -> Result<Parsed> {
    let ct_sop = [
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2.2",
    ];
    if ct_sop.contains(&sop) || modality == "CT" {
        return Err(Error::Dicom(format!(
            "{name}: a CT image without Rows/Columns (0028,0010/0011): the file is truncated or corrupt"
        )));
    }
    let what = if sop == "1.2.840.10008.1.3.10" {
        "a DICOMDIR".to_string()
    } else if modality.is_empty() {
        format!("a DICOM object without an image (SOP class {sop})")
    } else {
        format!("a {modality} object without an image")
    };
    Ok(Parsed::Other(what))
}

/// NumberOfFrames (1 when absent), checked against [`MAX_FRAMES`].
fn number_of_frames(obj: &InMemDicomObject, name: &str) -> Result<usize> {
    match obj.get(tags::NUMBER_OF_FRAMES) {
        None => Ok(1),
        Some(e) => match e.to_int::<i64>() {
            Ok(n) if (1..=MAX_FRAMES as i64).contains(&n) => Ok(n as usize),
            _ => Err(Error::Dicom(format!(
                "{name}: NumberOfFrames (0028,0008) is not a number between 1 and {MAX_FRAMES}"
            ))),
        },
    }
}

fn patient_study(obj: &InMemDicomObject) -> PatientStudy {
    PatientStudy {
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_id: text(obj, tags::PATIENT_ID),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        study_id: text(obj, tags::STUDY_ID),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        referring_physician_name: text(obj, tags::REFERRING_PHYSICIAN_NAME),
        study_description: text(obj, tags::STUDY_DESCRIPTION),
    }
}

/// The gap between slices a single slice states: SpacingBetweenSlices, else (from the
/// first frame's pixel measures) SpacingBetweenSlices or SliceThickness; positive.
fn slice_gap(obj: &InMemDicomObject) -> Option<f64> {
    float(obj, tags::SPACING_BETWEEN_SLICES)
        .or_else(|| {
            frame_attr(obj, 0, tags::PIXEL_MEASURES_SEQUENCE, |o| {
                float(o, tags::SPACING_BETWEEN_SLICES).or_else(|| float(o, tags::SLICE_THICKNESS))
            })
        })
        .filter(|v| *v > 0.0)
}

/// All image headers among the files, grouped by series.
pub(super) struct Scan {
    pub(super) series: BTreeMap<String, Vec<Header>>,
    pub(super) skipped: usize,
    pub(super) first_other: Option<(String, String)>,
}

impl Scan {
    fn images(hs: &[Header]) -> usize {
        hs.iter().map(Header::frame_count).sum()
    }

    pub(super) fn briefs(&self) -> Vec<SeriesBrief> {
        let mut v: Vec<SeriesBrief> = self
            .series
            .iter()
            .map(|(uid, hs)| SeriesBrief {
                series_uid: uid.clone(),
                modality: hs[0].modality.clone(),
                description: hs[0].description.clone(),
                images: Self::images(hs),
            })
            .collect();
        v.sort_by(|a, b| {
            b.images
                .cmp(&a.images)
                .then(a.series_uid.cmp(&b.series_uid))
        });
        v
    }
}

/// Every file's header.
pub(super) fn scan(src: &dyn Source) -> Result<Scan> {
    let mut s = Scan {
        series: BTreeMap::new(),
        skipped: 0,
        first_other: None,
    };
    for i in 0..src.count() {
        match read_header(src, i) {
            Ok(Parsed::Image(h)) => s.series.entry(h.series_uid.clone()).or_default().push(*h),
            Ok(Parsed::Other(what)) => {
                s.skipped += 1;
                s.first_other.get_or_insert((src.name(i), what));
            }
            Ok(Parsed::NotDicom) => s.skipped += 1,
            // A file marked DICOM that cannot be parsed is an error (never skipped in
            // silence: it may be a slice of the series).
            Err(e) => return Err(e),
        }
    }
    Ok(s)
}
