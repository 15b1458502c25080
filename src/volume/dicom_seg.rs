//! DICOM Segmentation (SEG, Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4) out of a
//! label map on a DICOM query's grid ([`write_dicom_seg`]) and back
//! ([`read_dicom_seg`]). Pure functions over bytes: the CLI and the page share them.
//!
//! SegmentationType BINARY, one segment per organ (SegmentNumber = position in the
//! organ list from 1, SegmentLabel from the label table, category and type the generic
//! SCT 123037004 / 91723000 "Anatomical Structure", algorithm AUTOMATIC "MedLSAM").
//! One frame per segment and axial slice where the segment has a voxel, ordered by
//! segment then slice, bit-packed (1 bit per pixel, first pixel in the lowest bit,
//! frames back to back). Each frame's PerFrameFunctionalGroupsSequence item holds
//! its PlanePositionSequence, DerivationImageSequence (the source slice's SOP Instance
//! UID), FrameContentSequence (dimension indices: segment, slice) and
//! SegmentIdentificationSequence; the SharedFunctionalGroupsSequence holds the plane
//! orientation and pixel measures. Patient, study and frame of reference are the
//! query's; UIDs are derived as [`super::dicom_derived`] explains.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use super::dicom::{DicomInfo, floats, parse, seq_item, text, uint};
use super::dicom_derived::{
    DerivedOptions, EXPLICIT_VR_LE, Elem, SliceGeometry, check_mask_matches, code, derived_uid, ds,
    ds_multi, el, el_is, el_seq, el_u16, el_ul, file_bytes, frame_of_reference_uid,
    image_reference, image_sop_class, item, mask_digest, patient_study_elements, ras_to_lps,
};
use super::label_table::LabelTable;
use super::{CtVolume, LabelVolume};
use crate::{Error, Result};

/// Segmentation Storage.
pub const SEG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// What [`write_dicom_seg`] made, besides the bytes.
#[derive(Clone, Debug)]
pub struct SegSummary {
    pub sop_instance_uid: String,
    pub series_uid: String,
    /// Frames per segment (organ order).
    pub frames: Vec<usize>,
}

fn el_at(tag: Tag, v: Tag) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::AT, PrimitiveValue::Tags([v].into_iter().collect()))
}

/// A DICOM Segmentation of `organs` in `mask` (a label map on the grid of the DICOM
/// query `info` describes), segment labels from `names`. Content date and time: from
/// `options`, else the study's.
pub fn write_dicom_seg(
    mask: &LabelVolume,
    info: &DicomInfo,
    organs: &[u16],
    names: &LabelTable,
    options: &DerivedOptions,
) -> Result<(Vec<u8>, SegSummary)> {
    check_mask_matches(mask, info, "DICOM SEG")?;
    if organs.is_empty() {
        return Err(Error::InvalidArgument(
            "DICOM SEG: no organ to write".into(),
        ));
    }
    let [w, h, _] = mask.dims;
    if w > u16::MAX as usize || h > u16::MAX as usize {
        return Err(Error::InvalidVolume(format!(
            "DICOM SEG: a {w}×{h} slice is larger than DICOM's 65535 rows/columns"
        )));
    }
    let uids = SegUids::of(mask, info, organs, names);
    let geo = SliceGeometry::of(&mask.affine, mask.dims);
    let (frames, per_segment) = seg_frames(mask, organs);
    let summary = SegSummary {
        sop_instance_uid: uids.sop.clone(),
        series_uid: uids.series.clone(),
        frames: per_segment,
    };
    if frames.is_empty() {
        return Err(Error::InvalidArgument(
            "DICOM SEG: no organ has a voxel in the mask (a segmentation needs a frame)".into(),
        ));
    }
    let bits = pack_frames(mask, organs, &frames);

    let mut e = patient_study_elements(info);
    e.extend(image_elements(info, options, &uids, frames.len(), [w, h]));
    e.extend(dimension_elements(&uids.dimensions));
    e.push(referenced_series(info));
    e.push(segment_sequence(organs, names));
    e.push(shared_groups(&geo));
    e.push(el_seq(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        frames
            .iter()
            .map(|&(seg, k)| frame_groups(info, &geo, seg, k))
            .collect(),
    ));
    e.push(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::from(PrimitiveValue::from(bits)),
    ));
    let bytes = file_bytes(InMemDicomObject::from_element_iter(e), EXPLICIT_VR_LE)?;
    Ok((bytes, summary))
}

/// The UIDs a segmentation is given, derived from the source series and the mask.
struct SegUids {
    sop: String,
    series: String,
    dimensions: String,
}

impl SegUids {
    fn of(mask: &LabelVolume, info: &DicomInfo, organs: &[u16], names: &LabelTable) -> Self {
        let digest = mask_digest(mask, organs, names);
        let series = info.series_uid.as_bytes();
        Self {
            sop: derived_uid("medlsam seg instance", &[series, &digest]),
            series: derived_uid("medlsam seg series", &[series, &digest]),
            dimensions: derived_uid("medlsam seg dimensions", &[series, &digest]),
        }
    }
}

/// The frames, (segment number, slice) segment-major: one per segment and slice where
/// the segment has a voxel; and the frames of each segment.
fn seg_frames(mask: &LabelVolume, organs: &[u16]) -> (Vec<(u16, usize)>, Vec<usize>) {
    let mut frames: Vec<(u16, usize)> = Vec::new();
    let mut per_segment = Vec::new();
    for (n, &organ) in organs.iter().enumerate() {
        let before = frames.len();
        for k in 0..mask.dims[2] {
            if mask.axial_slice(k).contains(&organ) {
                frames.push((n as u16 + 1, k));
            }
        }
        per_segment.push(frames.len() - before);
    }
    (frames, per_segment)
}

/// The frames bit-packed (first pixel in the lowest bit, frames back to back), padded
/// to an even length.
fn pack_frames(mask: &LabelVolume, organs: &[u16], frames: &[(u16, usize)]) -> Vec<u8> {
    let plane = mask.dims[0] * mask.dims[1];
    let mut bits = vec![0u8; (frames.len() * plane).div_ceil(8)];
    for (f, &(seg, k)) in frames.iter().enumerate() {
        let organ = organs[seg as usize - 1];
        for (p, &v) in mask.axial_slice(k).iter().enumerate() {
            if v == organ {
                let b = f * plane + p;
                bits[b / 8] |= 1 << (b % 8);
            }
        }
    }
    if !bits.len().is_multiple_of(2) {
        bits.push(0);
    }
    bits
}

/// The SOP, series, frame of reference, image pixel and segmentation attributes of
/// `n_frames` frames of `w`×`h` pixels.
fn image_elements(
    info: &DicomInfo,
    options: &DerivedOptions,
    uids: &SegUids,
    n_frames: usize,
    [w, h]: [usize; 2],
) -> Vec<Elem> {
    let (date, time) = if options.date.is_empty() {
        (&info.patient.study_date, &info.patient.study_time)
    } else {
        (&options.date, &options.time)
    };
    vec![
        el(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        el(tags::SOP_CLASS_UID, VR::UI, SEG_SOP_CLASS),
        el(tags::SOP_INSTANCE_UID, VR::UI, &uids.sop),
        el(tags::CONTENT_DATE, VR::DA, date),
        el(tags::CONTENT_TIME, VR::TM, time),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(tags::SERIES_DESCRIPTION, VR::LO, "MedLSAM segmentation"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        el(tags::SERIES_INSTANCE_UID, VR::UI, &uids.series),
        el_is(tags::SERIES_NUMBER, options.series_number.unwrap_or(902)),
        el_is(tags::INSTANCE_NUMBER, 1),
        el(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            frame_of_reference_uid(info),
        ),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        el_u16(tags::SAMPLES_PER_PIXEL, 1),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el_is(tags::NUMBER_OF_FRAMES, n_frames as i64),
        el_u16(tags::ROWS, h as u16),
        el_u16(tags::COLUMNS, w as u16),
        el_u16(tags::BITS_ALLOCATED, 1),
        el_u16(tags::BITS_STORED, 1),
        el_u16(tags::HIGH_BIT, 0),
        el_u16(tags::PIXEL_REPRESENTATION, 0),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::CONTENT_LABEL, VR::CS, "MEDLSAM"),
        el(tags::CONTENT_DESCRIPTION, VR::LO, "MedLSAM segmentation"),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, ""),
        el(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D"),
    ]
}

/// The dimension organization and its two indices: segment number, then position.
fn dimension_elements(dim_org_uid: &str) -> [Elem; 2] {
    let index = |pointer: Tag, group: Tag, label: &str| {
        item(vec![
            el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, dim_org_uid),
            el_at(tags::DIMENSION_INDEX_POINTER, pointer),
            el_at(tags::FUNCTIONAL_GROUP_POINTER, group),
            el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    [
        el_seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(vec![el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dim_org_uid,
            )])],
        ),
        el_seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                index(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "ReferencedSegmentNumber",
                ),
                index(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "ImagePositionPatient",
                ),
            ],
        ),
    ]
}

/// Common Instance Reference: the source series, each image once.
fn referenced_series(info: &DicomInfo) -> Elem {
    let mut instances: Vec<InMemDicomObject> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for uid in &info.sop_instance_uids {
        if seen.insert(uid.clone()) {
            instances.push(item(vec![
                el(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    image_sop_class(info),
                ),
                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, uid),
            ]));
        }
    }
    el_seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            el_seq(tags::REFERENCED_INSTANCE_SEQUENCE, instances),
            el(tags::SERIES_INSTANCE_UID, VR::UI, &info.series_uid),
        ])],
    )
}

/// One segment per organ: number, label, generic anatomical category and type, and
/// the algorithm.
fn segment_sequence(organs: &[u16], names: &LabelTable) -> Elem {
    el_seq(
        tags::SEGMENT_SEQUENCE,
        organs
            .iter()
            .enumerate()
            .map(|(n, &organ)| {
                item(vec![
                    el_seq(
                        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                        vec![code("123037004", "SCT", "Anatomical Structure")],
                    ),
                    el_u16(tags::SEGMENT_NUMBER, n as u16 + 1),
                    el(tags::SEGMENT_LABEL, VR::LO, names.name(organ)),
                    el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                    el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, "MedLSAM"),
                    el_seq(
                        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                        vec![code("91723000", "SCT", "Anatomical Structure")],
                    ),
                ])
            })
            .collect(),
    )
}

/// The functional groups every frame shares: plane orientation and pixel measures.
fn shared_groups(geo: &SliceGeometry) -> Elem {
    let thickness = ds(geo.slice_spacing);
    el_seq(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![item(vec![
            el_seq(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(vec![el(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    ds_multi(&geo.orientation),
                )])],
            ),
            el_seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(vec![
                    el(tags::SLICE_THICKNESS, VR::DS, &thickness),
                    el(tags::SPACING_BETWEEN_SLICES, VR::DS, &thickness),
                    el(tags::PIXEL_SPACING, VR::DS, ds_multi(&geo.pixel_spacing)),
                ])],
            ),
        ])],
    )
}

/// The functional groups of the frame of segment `seg` on slice `k`: its source image,
/// dimension indices, position and segment.
fn frame_groups(info: &DicomInfo, geo: &SliceGeometry, seg: u16, k: usize) -> InMemDicomObject {
    let mut source = image_reference(info, k);
    source.push(el_seq(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )],
    ));
    item(vec![
        el_seq(
            tags::DERIVATION_IMAGE_SEQUENCE,
            vec![item(vec![
                el_seq(tags::SOURCE_IMAGE_SEQUENCE, vec![item(source)]),
                el_seq(
                    tags::DERIVATION_CODE_SEQUENCE,
                    vec![code("113076", "DCM", "Segmentation")],
                ),
            ])],
        ),
        el_seq(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![item(vec![el_ul(
                tags::DIMENSION_INDEX_VALUES,
                &[seg as u32, k as u32 + 1],
            )])],
        ),
        el_seq(
            tags::PLANE_POSITION_SEQUENCE,
            vec![item(vec![el(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                ds_multi(&geo.positions[k]),
            )])],
        ),
        el_seq(
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            vec![item(vec![el_u16(tags::REFERENCED_SEGMENT_NUMBER, seg)])],
        ),
    ])
}

/// A label map read from a DICOM SEG: each segment's number is its label value.
#[derive(Clone, Debug)]
pub struct SegLabels {
    pub labels: LabelVolume,
    pub table: LabelTable,
    /// Frames read per segment number (index = number − 1).
    pub frames: Vec<usize>,
}

/// Read a BINARY DICOM SEG onto a DICOM CT's grid (`ct` as read with `info`): each
/// frame is placed on the slice at its ImagePositionPatient. Overlapping segments: the
/// higher segment number wins.
pub fn read_dicom_seg(
    bytes: &[u8],
    name: &str,
    ct: &CtVolume,
    info: &DicomInfo,
) -> Result<SegLabels> {
    let obj = open_seg(bytes, name, info)?;
    let bad = |m: String| Error::Dicom(format!("{name}: {m}"));
    let [w, h, _] = ct.dims;
    let (rows, cols) = (uint(&obj, tags::ROWS), uint(&obj, tags::COLUMNS));
    if (rows, cols) != (Some(h as u32), Some(w as u32)) {
        return Err(Error::Mismatch(format!(
            "{name}: frames of {rows:?}×{cols:?} pixels on a {h}×{w} image"
        )));
    }
    let table = segment_table(&obj, name)?;
    let frames = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    let n_frames = frames.len();
    let plane = w * h;
    let pixels = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| bad("no PixelData".into()))?
        .to_bytes()
        .map_err(|e| bad(format!("PixelData: {e}")))?;
    if pixels.len() * 8 < n_frames * plane {
        return Err(bad(format!(
            "PixelData holds {} bytes, {n_frames} frames need {}",
            pixels.len(),
            (n_frames * plane).div_ceil(8)
        )));
    }
    let max_seg = table.0.keys().max().copied().unwrap_or(0) as usize;
    let (order, counts) = place_frames(frames, ct, max_seg, name)?;
    let mut labels = LabelVolume::filled(ct.dims, 0, ct.affine)?;
    for (seg, f, k) in order {
        let out = &mut labels.data[k * plane..(k + 1) * plane];
        for (p, o) in out.iter_mut().enumerate() {
            let b = f * plane + p;
            if pixels[b / 8] >> (b % 8) & 1 == 1 {
                *o = seg;
            }
        }
    }
    Ok(SegLabels {
        labels,
        table,
        frames: counts,
    })
}

/// Parse a SEG file: a BINARY segmentation in the image's frame of reference.
fn open_seg(bytes: &[u8], name: &str, info: &DicomInfo) -> Result<DefaultDicomObject> {
    let obj = parse(|| Ok(bytes), Some(bytes.len() as u64), name, false)?.ok_or_else(|| {
        Error::Dicom(format!(
            "{name}: not a DICOM file (no \"DICM\" marker at byte 128)"
        ))
    })?;
    let bad = |m: String| Error::Dicom(format!("{name}: {m}"));
    if text(&obj, tags::MODALITY) != "SEG" {
        return Err(bad("not a DICOM Segmentation (Modality is not SEG)".into()));
    }
    if text(&obj, tags::SEGMENTATION_TYPE) != "BINARY"
        || uint(&obj, tags::BITS_ALLOCATED) != Some(1)
    {
        return Err(bad(
            "only BINARY segmentations (BitsAllocated 1) are read".into()
        ));
    }
    let for_uid = text(&obj, tags::FRAME_OF_REFERENCE_UID);
    if for_uid != frame_of_reference_uid(info) {
        return Err(Error::Mismatch(format!(
            "{name}: the segmentation's FrameOfReferenceUID {for_uid} is not the image's ({})",
            frame_of_reference_uid(info)
        )));
    }
    Ok(obj)
}

/// The segments' labels by SegmentNumber.
fn segment_table(obj: &InMemDicomObject, name: &str) -> Result<LabelTable> {
    let mut table = LabelTable::default();
    let items = obj
        .get(tags::SEGMENT_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    for s in items {
        let n = uint(s, tags::SEGMENT_NUMBER)
            .filter(|&n| (1..=u16::MAX as u32).contains(&n))
            .ok_or_else(|| Error::Dicom(format!("{name}: a segment without a SegmentNumber")))?;
        table.0.insert(n as u16, text(s, tags::SEGMENT_LABEL));
    }
    Ok(table)
}

/// A frame of the SEG placed on the image: (segment number, frame index, slice).
type FramePlace = (u16, usize, usize);

/// Each frame's (segment, frame, slice), sorted (so the higher segment is painted
/// last), and the frames of each segment number (1..=`max_seg`).
fn place_frames(
    frames: &[InMemDicomObject],
    ct: &CtVolume,
    max_seg: usize,
    name: &str,
) -> Result<(Vec<FramePlace>, Vec<usize>)> {
    let bad = |m: String| Error::Dicom(format!("{name}: {m}"));
    let to_voxel = ct.affine.inverse()?;
    let d = ct.dims[2];
    let mut counts = vec![0usize; max_seg];
    let mut order: Vec<FramePlace> = Vec::with_capacity(frames.len());
    for (f, fr) in frames.iter().enumerate() {
        let seg = seq_item(fr, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .and_then(|s| uint(s, tags::REFERENCED_SEGMENT_NUMBER))
            .filter(|&s| s >= 1 && (s as usize) <= max_seg)
            .ok_or_else(|| bad(format!("frame {}: no valid ReferencedSegmentNumber", f + 1)))?
            as u16;
        let pos = seq_item(fr, tags::PLANE_POSITION_SEQUENCE)
            .and_then(|p| floats(p, tags::IMAGE_POSITION_PATIENT))
            .filter(|p| p.len() == 3)
            .ok_or_else(|| bad(format!("frame {}: no ImagePositionPatient", f + 1)))?;
        let v = to_voxel.voxel_to_world(ras_to_lps([pos[0], pos[1], pos[2]]));
        let k = v[2].round();
        if v[0].abs() > 0.01
            || v[1].abs() > 0.01
            || (v[2] - k).abs() > 0.01
            || k < 0.0
            || k >= d as f64
        {
            return Err(bad(format!(
                "frame {}: ImagePositionPatient {pos:?} is not the first pixel of a slice of the image",
                f + 1
            )));
        }
        order.push((seg, f, k as usize));
        counts[seg as usize - 1] += 1;
    }
    order.sort();
    Ok((order, counts))
}
