//! DICOM RT Structure Set (RTSTRUCT, SOP class 1.2.840.10008.5.1.4.1.1.481.3) out of
//! a label map on a DICOM query's grid ([`write_rtstruct`]) and into a label map on a
//! DICOM CT's grid ([`read_rtstruct`]). Pure functions over bytes: the CLI and the
//! page share them.
//!
//! Writing: one ROI per organ (StructureSetROISequence, ROIContourSequence,
//! RTROIObservationsSequence; ROI number = position in the organ list, from 1; names
//! from the label table). On each axial slice, every region of the organ is traced
//! ([`super::contours::trace`]) into CLOSED_PLANAR contours in patient coordinates (LPS
//! mm) through the slice's centre plane; holes are separate contours (readers apply
//! the even-odd rule, as this one does). Each contour references its slice's SOP
//! Instance UID; the ReferencedFrameOfReferenceSequence lists every slice of the
//! series. Study, patient and frame of reference are the query's (see
//! [`super::dicom_derived`] for UIDs and a query without FrameOfReferenceUID).
//!
//! Reading: the ROIs in StructureSetROISequence order become labels 1..n (their names
//! the label table); each contour is placed on the slice whose plane it lies in
//! (within a quarter of the slice spacing) and rasterised by the even-odd rule over
//! all the ROI's contours on that slice, so holes stay holes. Where ROIs overlap, the
//! later ROI wins.

use std::collections::BTreeMap;

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::contours::{Polygon, fill_even_odd, trace};
use super::dicom::{DicomInfo, floats, parse, text};
use super::dicom_derived::{
    DerivedOptions, EXPLICIT_VR_LE, Elem, IMPLICIT_VR_LE, check_mask_matches, derived_uid, ds, el,
    el_is, el_seq, file_bytes, frame_of_reference_uid, image_reference, item, mask_digest,
    patient_study_elements, ras_to_lps,
};
use super::label_table::LabelTable;
use super::{Affine, CtVolume, LabelVolume};
use crate::{Error, Result};

/// RT Structure Set Storage.
pub const RTSTRUCT_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.481.3";

/// Display colours cycled over ROIs (RGB).
const COLORS: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// What [`write_rtstruct`] made, besides the bytes.
#[derive(Clone, Debug)]
pub struct RtStructSummary {
    pub sop_instance_uid: String,
    pub series_uid: String,
    /// Contours per ROI (organ order).
    pub contours: Vec<usize>,
    pub points: usize,
}

/// The contours of one organ on slice `k` of `mask`, in voxel coordinates (i, j, k).
fn slice_contours(mask: &LabelVolume, label: u16, k: usize) -> Vec<Polygon> {
    let [w, h, _] = mask.dims;
    let plane = mask.axial_slice(k);
    if !plane.contains(&label) {
        return Vec::new();
    }
    let bin: Vec<bool> = plane.iter().map(|&v| v == label).collect();
    trace(&bin, w, h)
}

/// An RT Structure Set of `organs` in `mask` (a label map on the grid of the DICOM
/// query `info` describes), ROI names from `names`.
pub fn write_rtstruct(
    mask: &LabelVolume,
    info: &DicomInfo,
    organs: &[u16],
    names: &LabelTable,
    options: &DerivedOptions,
) -> Result<(Vec<u8>, RtStructSummary)> {
    check_mask_matches(mask, info, "RTSTRUCT")?;
    if organs.is_empty() {
        return Err(Error::InvalidArgument("RTSTRUCT: no organ to write".into()));
    }
    let digest = mask_digest(mask, organs, names);
    let series = info.series_uid.as_bytes();
    let sop_uid = derived_uid("medlsam rtstruct instance", &[series, &digest]);
    let series_uid = derived_uid("medlsam rtstruct series", &[series, &digest]);
    let for_uid = frame_of_reference_uid(info);

    let mut e = patient_study_elements(info);
    e.extend([
        el(tags::SOP_CLASS_UID, VR::UI, RTSTRUCT_SOP_CLASS),
        el(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        el(tags::MODALITY, VR::CS, "RTSTRUCT"),
        el(tags::SERIES_DESCRIPTION, VR::LO, "MedLSAM contours"),
        el(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid),
        el_is(tags::SERIES_NUMBER, options.series_number.unwrap_or(901)),
        el(tags::OPERATORS_NAME, VR::PN, ""),
        el_is(tags::INSTANCE_NUMBER, 1),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, &for_uid),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        el(tags::STRUCTURE_SET_LABEL, VR::SH, "MedLSAM"),
        el(tags::STRUCTURE_SET_NAME, VR::LO, "MedLSAM segmentation"),
        el(tags::STRUCTURE_SET_DATE, VR::DA, &options.date),
        el(tags::STRUCTURE_SET_TIME, VR::TM, &options.time),
    ]);
    e.push(referenced_frame_of_reference(info, &for_uid, mask.dims[2]));
    let mut summary = RtStructSummary {
        sop_instance_uid: sop_uid.clone(),
        series_uid: series_uid.clone(),
        contours: Vec::new(),
        points: 0,
    };
    let (rois, longest) = roi_sequences(mask, info, organs, names, &for_uid, &mut summary);
    e.extend(rois);
    e.push(el(tags::APPROVAL_STATUS, VR::CS, "UNAPPROVED"));
    // Explicit VR stores a DS in at most 65534 bytes; longer contours need implicit VR.
    let ts = if longest <= 65_534 {
        EXPLICIT_VR_LE
    } else {
        IMPLICIT_VR_LE
    };
    let bytes = file_bytes(InMemDicomObject::from_element_iter(e), ts)?;
    Ok((bytes, summary))
}

/// The frame of reference, its study and series, and every slice of the series (the
/// contour image list).
fn referenced_frame_of_reference(info: &DicomInfo, for_uid: &str, slices: usize) -> Elem {
    let all_images: Vec<InMemDicomObject> = (0..slices)
        .map(|k| item(image_reference(info, k)))
        .collect();
    let series_item = item(vec![
        el(tags::SERIES_INSTANCE_UID, VR::UI, &info.series_uid),
        el_seq(tags::CONTOUR_IMAGE_SEQUENCE, all_images),
    ]);
    let study_item = item(vec![
        // Detached Study Management (retired), the class RTSTRUCTs name a study with.
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.3.1.2.3.1",
        ),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &info.study_uid),
        el_seq(tags::RT_REFERENCED_SERIES_SEQUENCE, vec![series_item]),
    ]);
    el_seq(
        tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE,
        vec![item(vec![
            el(tags::FRAME_OF_REFERENCE_UID, VR::UI, for_uid),
            el_seq(tags::RT_REFERENCED_STUDY_SEQUENCE, vec![study_item]),
        ])],
    )
}

/// StructureSetROISequence, ROIContourSequence and RTROIObservationsSequence, one item
/// per organ (contours and points counted in `summary`), and the longest ContourData
/// (characters).
fn roi_sequences(
    mask: &LabelVolume,
    info: &DicomInfo,
    organs: &[u16],
    names: &LabelTable,
    for_uid: &str,
    summary: &mut RtStructSummary,
) -> ([Elem; 3], usize) {
    let mut roi_items = Vec::new();
    let mut contour_items = Vec::new();
    let mut observation_items = Vec::new();
    let mut longest = 0usize;
    for (n, &organ) in organs.iter().enumerate() {
        let roi = (n + 1) as i64;
        roi_items.push(item(vec![
            el_is(tags::ROI_NUMBER, roi),
            el(tags::REFERENCED_FRAME_OF_REFERENCE_UID, VR::UI, for_uid),
            el(tags::ROI_NAME, VR::LO, names.name(organ)),
            el(tags::ROI_GENERATION_ALGORITHM, VR::CS, "AUTOMATIC"),
        ]));
        let contours = organ_contours(mask, info, organ, summary, &mut longest);
        summary.contours.push(contours.len());
        let c = COLORS[n % COLORS.len()];
        let mut ci = vec![
            el(
                tags::ROI_DISPLAY_COLOR,
                VR::IS,
                format!("{}\\{}\\{}", c[0], c[1], c[2]),
            ),
            el_is(tags::REFERENCED_ROI_NUMBER, roi),
        ];
        if !contours.is_empty() {
            ci.insert(1, el_seq(tags::CONTOUR_SEQUENCE, contours));
        }
        contour_items.push(item(ci));
        observation_items.push(item(vec![
            el_is(tags::OBSERVATION_NUMBER, roi),
            el_is(tags::REFERENCED_ROI_NUMBER, roi),
            el(tags::RTROI_INTERPRETED_TYPE, VR::CS, "ORGAN"),
            el(tags::ROI_INTERPRETER, VR::PN, ""),
        ]));
    }
    let sequences = [
        el_seq(tags::STRUCTURE_SET_ROI_SEQUENCE, roi_items),
        el_seq(tags::ROI_CONTOUR_SEQUENCE, contour_items),
        el_seq(tags::RTROI_OBSERVATIONS_SEQUENCE, observation_items),
    ];
    (sequences, longest)
}

/// The ContourSequence items of one organ, slice by slice (points counted in
/// `summary`, the longest ContourData kept in `longest`).
fn organ_contours(
    mask: &LabelVolume,
    info: &DicomInfo,
    organ: u16,
    summary: &mut RtStructSummary,
    longest: &mut usize,
) -> Vec<InMemDicomObject> {
    let mut contours = Vec::new();
    for k in 0..mask.dims[2] {
        for poly in slice_contours(mask, organ, k) {
            let mut data = String::with_capacity(poly.len() * 24);
            for (t, p) in poly.iter().enumerate() {
                let w = ras_to_lps(mask.affine.voxel_to_world([p[0], p[1], k as f64]));
                if t > 0 {
                    data.push('\\');
                }
                data.push_str(&format!("{}\\{}\\{}", ds2(w[0]), ds2(w[1]), ds2(w[2])));
            }
            *longest = (*longest).max(data.len());
            summary.points += poly.len();
            contours.push(item(vec![
                el_seq(
                    tags::CONTOUR_IMAGE_SEQUENCE,
                    vec![item(image_reference(info, k))],
                ),
                el(tags::CONTOUR_GEOMETRIC_TYPE, VR::CS, "CLOSED_PLANAR"),
                el_is(tags::NUMBER_OF_CONTOUR_POINTS, poly.len() as i64),
                el_is(tags::CONTOUR_NUMBER, contours.len() as i64 + 1),
                el(tags::CONTOUR_DATA, VR::DS, data),
            ]));
        }
    }
    contours
}

/// A contour coordinate: 0.01 mm (a contour vertex is never closer than 0.35 pixel to
/// a pixel centre, so this rounding cannot move a pixel in or out).
fn ds2(v: f64) -> String {
    ds((v * 100.0).round() / 100.0)
}

/// A label map read from an RTSTRUCT: labels 1..n in ROI order, their names.
#[derive(Clone, Debug)]
pub struct RtStructLabels {
    pub labels: LabelVolume,
    pub table: LabelTable,
    /// Contours rasterised per ROI (ROI order).
    pub contours: Vec<usize>,
}

fn sequence(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

fn int(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    obj.get(tag).and_then(|e| e.to_int::<i64>().ok())
}

/// The ROI names of an RTSTRUCT as a label table (1..n in StructureSetROISequence
/// order), without rasterising anything.
pub fn rtstruct_roi_names(bytes: &[u8], name: &str) -> Result<LabelTable> {
    let obj = open(bytes, name)?;
    Ok(rois(&obj, name)?.1)
}

fn open(bytes: &[u8], name: &str) -> Result<dicom_object::DefaultDicomObject> {
    let obj = parse(|| Ok(bytes), Some(bytes.len() as u64), name, false)?.ok_or_else(|| {
        Error::Dicom(format!(
            "{name}: not a DICOM file (no \"DICM\" marker at byte 128)"
        ))
    })?;
    let class = obj
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0');
    let modality = text(&obj, tags::MODALITY);
    if class != RTSTRUCT_SOP_CLASS && modality != "RTSTRUCT" {
        return Err(Error::Dicom(format!(
            "{name}: not an RT Structure Set (SOP class {class}, Modality {modality:?})"
        )));
    }
    Ok(obj)
}

/// ROI number → (label value, frame of reference), and the label table.
type RoiMap = BTreeMap<i64, (u16, String)>;

fn rois(obj: &InMemDicomObject, name: &str) -> Result<(RoiMap, LabelTable)> {
    let mut map = BTreeMap::new();
    let mut table = LabelTable::default();
    for (n, r) in sequence(obj, tags::STRUCTURE_SET_ROI_SEQUENCE)
        .iter()
        .enumerate()
    {
        let number = int(r, tags::ROI_NUMBER).ok_or_else(|| {
            Error::Dicom(format!(
                "{name}: StructureSetROISequence item {} has no ROINumber (3006,0022)",
                n + 1
            ))
        })?;
        let label = u16::try_from(n + 1)
            .map_err(|_| Error::Dicom(format!("{name}: more than 65535 ROIs")))?;
        let mut roi_name = text(r, tags::ROI_NAME);
        if roi_name.is_empty() {
            roi_name = format!("ROI {number}");
        }
        table.0.insert(label, roi_name);
        map.insert(
            number,
            (label, text(r, tags::REFERENCED_FRAME_OF_REFERENCE_UID)),
        );
    }
    if map.is_empty() {
        return Err(Error::Dicom(format!(
            "{name}: the RT Structure Set has no ROI (StructureSetROISequence (3006,0020) is empty)"
        )));
    }
    Ok((map, table))
}

/// The frame of reference (and series) an RTSTRUCT's contours are in, checked against
/// the image's.
fn check_frame_of_reference(
    obj: &InMemDicomObject,
    rois: &RoiMap,
    info: &DicomInfo,
    name: &str,
) -> Result<()> {
    let image_for = frame_of_reference_uid(info);
    let mut fors: Vec<String> = sequence(obj, tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE)
        .iter()
        .map(|f| text(f, tags::FRAME_OF_REFERENCE_UID))
        .chain(rois.values().map(|(_, f)| f.clone()))
        .filter(|f| !f.is_empty())
        .collect();
    fors.sort();
    fors.dedup();
    let series: Vec<String> = sequence(obj, tags::REFERENCED_FRAME_OF_REFERENCE_SEQUENCE)
        .iter()
        .flat_map(|f| sequence(f, tags::RT_REFERENCED_STUDY_SEQUENCE))
        .flat_map(|s| sequence(s, tags::RT_REFERENCED_SERIES_SEQUENCE))
        .map(|s| text(s, tags::SERIES_INSTANCE_UID))
        .collect();
    if let Some(other) = fors.iter().find(|f| **f != image_for) {
        // An image without a FrameOfReferenceUID of its own: the RTSTRUCT may name its
        // series instead.
        if !(info.frame_of_reference_uid.is_empty() && series.contains(&info.series_uid)) {
            return Err(Error::Mismatch(format!(
                "{name}: the RT Structure Set's FrameOfReferenceUID {other} is not the image's \
                 ({image_for}, series {}): the contours belong to another scan",
                info.series_uid
            )));
        }
    }
    Ok(())
}

/// Rasterise an RTSTRUCT onto a DICOM CT's grid (`ct` as read with `info`): labels 1..n
/// in ROI order. Errors: not an RTSTRUCT, another frame of reference, no contour at
/// all, a contour off the image's slices or not in an axial plane.
pub fn read_rtstruct(
    bytes: &[u8],
    name: &str,
    ct: &CtVolume,
    info: &DicomInfo,
) -> Result<RtStructLabels> {
    let obj = open(bytes, name)?;
    let (rois, table) = rois(&obj, name)?;
    check_frame_of_reference(&obj, &rois, info, name)?;
    let to_voxel = ct.affine.inverse()?;
    // (slice, label) → polygons in voxel (i, j).
    let mut per_slice: BTreeMap<(usize, u16), Vec<Polygon>> = BTreeMap::new();
    let mut counts = vec![0usize; table.0.len()];
    for (n, rc) in sequence(&obj, tags::ROI_CONTOUR_SEQUENCE)
        .iter()
        .enumerate()
    {
        let number = int(rc, tags::REFERENCED_ROI_NUMBER).ok_or_else(|| {
            Error::Dicom(format!(
                "{name}: ROIContourSequence item {} has no ReferencedROINumber (3006,0084)",
                n + 1
            ))
        })?;
        let Some((label, _)) = rois.get(&number) else {
            return Err(Error::Dicom(format!(
                "{name}: ROIContourSequence item {} refers to ROI {number}, which \
                 StructureSetROISequence does not define",
                n + 1
            )));
        };
        let roi_name = table.name(*label);
        for (c, contour) in sequence(rc, tags::CONTOUR_SEQUENCE).iter().enumerate() {
            let at = || format!("{name}: ROI {roi_name:?}, contour {}", c + 1);
            let Some((k, poly)) = place_contour(contour, ct, &to_voxel, at)? else {
                continue;
            };
            per_slice.entry((k, *label)).or_default().push(poly);
            counts[*label as usize - 1] += 1;
        }
    }
    if counts.iter().all(|&c| c == 0) {
        return Err(Error::Dicom(format!(
            "{name}: the RT Structure Set has no closed planar contour (ROIs: {})",
            table.0.values().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(RtStructLabels {
        labels: rasterise(&per_slice, ct)?,
        table,
        contours: counts,
    })
}

/// A CLOSED_PLANAR contour as the slice it lies in and its polygon in voxel (i, j);
/// `None` for other contour types (points and open curves enclose nothing). `at` names
/// the contour in messages.
fn place_contour(
    contour: &InMemDicomObject,
    ct: &CtVolume,
    to_voxel: &Affine,
    at: impl Fn() -> String,
) -> Result<Option<(usize, Polygon)>> {
    let kind = text(contour, tags::CONTOUR_GEOMETRIC_TYPE);
    if kind != "CLOSED_PLANAR" {
        return Ok(None);
    }
    let d = ct.dims[2];
    let data = floats(contour, tags::CONTOUR_DATA).unwrap_or_default();
    if data.len() < 9 || !data.len().is_multiple_of(3) || data.iter().any(|v| !v.is_finite()) {
        return Err(Error::Dicom(format!(
            "{}: ContourData (3006,0050) is not at least 3 points of 3 numbers",
            at()
        )));
    }
    let pts: Vec<[f64; 3]> = data
        .chunks_exact(3)
        .map(|p| to_voxel.voxel_to_world(ras_to_lps([p[0], p[1], p[2]])))
        .collect();
    let (kmin, kmax) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p[2]), b.max(p[2]))
        });
    let z_of = |k: f64| ras_to_lps(ct.affine.voxel_to_world([0.0, 0.0, k]))[2];
    if kmax - kmin > 0.1 {
        return Err(Error::Dicom(format!(
            "{}: the contour is not in an axial plane of the image (it spans {:.2} \
             slices along the slice normal)",
            at(),
            kmax - kmin
        )));
    }
    let kf = (kmin + kmax) / 2.0;
    let k = kf.round();
    if k < 0.0 || k > (d - 1) as f64 || (kf - k).abs() > 0.25 {
        return Err(Error::Dicom(format!(
            "{}: off the image's grid: the contour lies at z = {:.2} mm, {}; the image's \
             slices are at z = {:.2} … {:.2} mm every {:.2} mm",
            at(),
            z_of(kf),
            if k < 0.0 || k > (d - 1) as f64 {
                "outside the image's slices".to_string()
            } else {
                format!("between slices {} and {}", kf.floor(), kf.floor() + 1.0)
            },
            z_of(0.0),
            z_of((d - 1) as f64),
            ct.spacing_mm()[2]
        )));
    }
    let poly: Polygon = pts.iter().map(|p| [p[0], p[1]]).collect();
    Ok(Some((k as usize, poly)))
}

/// The label map: each (slice, label)'s polygons filled by the even-odd rule, later
/// labels over earlier ones.
fn rasterise(
    per_slice: &BTreeMap<(usize, u16), Vec<Polygon>>,
    ct: &CtVolume,
) -> Result<LabelVolume> {
    let [w, h, _] = ct.dims;
    let mut labels = LabelVolume::filled(ct.dims, 0, ct.affine)?;
    let plane = w * h;
    let mut scratch = vec![false; plane];
    for ((k, label), polys) in per_slice {
        scratch.iter_mut().for_each(|v| *v = false);
        fill_even_odd(polys, w, h, &mut scratch, true);
        let out = &mut labels.data[k * plane..(k + 1) * plane];
        for (o, &inside) in out.iter_mut().zip(&scratch) {
            if inside {
                *o = *label;
            }
        }
    }
    Ok(labels)
}
