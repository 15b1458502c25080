//! The series: which one is read, its headers checked against each other, its slices
//! sorted along the normal and checked for even spacing and no tilt, its affine, and
//! what [`DicomInfo`] records of it.

use super::DicomSeries;
use super::header::{Frame, Header, Scan, scan};
use super::info::{DicomInfo, SeriesBrief};
use super::pixels::{check_file_sizes, read_pixels};
use super::source::Source;
use super::syntax::transfer_syntax_name;
use crate::volume::{Affine, Volume, checked_voxel_count};
use crate::{Error, Result};

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// One slice of the volume: a frame of a file.
pub(super) struct Slot<'h> {
    pub(super) header: &'h Header,
    pub(super) frame: usize,
    pub(super) geo: &'h Frame,
    /// Position along the slice normal (mm).
    along: f64,
}

/// The series' in-plane directions (unit row and column vectors, their normal) and
/// pixel spacing (between rows, between columns).
struct Axes {
    row: [f64; 3],
    col: [f64; 3],
    normal: [f64; 3],
    spacing: [f64; 2],
}

/// `-0.0` → `0.0`, so that printed affines show no "-0.0000".
fn no_negative_zero(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x }
}

pub(super) fn dicom_err(m: String) -> Error {
    Error::Dicom(m)
}

/// Read the series `series_uid` (else the CT series with the most images) from the
/// files of `src`; `what` names them in messages.
pub(super) fn read_series(
    src: &dyn Source,
    series_uid: Option<&str>,
    what: &str,
) -> Result<DicomSeries> {
    let scan = scan(src)?;
    let briefs = scan.briefs();
    let uid = choose_series(src, &scan, &briefs, series_uid, what)?;
    let headers = &scan.series[&uid];
    let first = &headers[0];
    if first.modality != "CT" {
        return Err(dicom_err(format!(
            "{}: Modality (0008,0060) is {:?}: only CT series can be read (Hounsfield units)",
            src.name(first.file),
            first.modality
        )));
    }
    let other_series = briefs
        .iter()
        .filter(|b| b.series_uid != uid)
        .cloned()
        .collect();
    let volume_headers: Vec<&Header> = headers.iter().filter(|h| !h.localizer).collect();
    let skipped_localizers = headers.len() - volume_headers.len();
    let Some(&first) = volume_headers.first() else {
        return Err(dicom_err(format!(
            "{what}: series {uid} holds only localizer (scout) images"
        )));
    };
    check_headers(src, &volume_headers, first)?;

    let mut slots = slots(&volume_headers)?;
    let axes = axes(src, &slots)?;
    sort_along(&mut slots, axes.normal);
    let step = slice_step(src, &slots, &axes, first)?;
    let dims = [first.cols, first.rows, slots.len()];
    let nvox = checked_voxel_count(dims)?;
    let affine = affine(&axes, step, slots[0].geo.position)?;
    check_file_sizes(src, &volume_headers)?;
    let data = read_pixels(src, &volume_headers, &slots, first.rows * first.cols, nvox)?;
    let ct = Volume::from_data(dims, data, affine)?;
    let mut info = series_info(first, &slots, volume_headers.len(), uid);
    info.other_series = other_series;
    info.skipped_files = scan.skipped;
    info.skipped_localizers = skipped_localizers;
    Ok(DicomSeries { ct, info })
}

/// The SeriesInstanceUID to read: the one asked for, else the CT series with the most
/// images; an error when there is none.
fn choose_series(
    src: &dyn Source,
    scan: &Scan,
    briefs: &[SeriesBrief],
    series_uid: Option<&str>,
    what: &str,
) -> Result<String> {
    if scan.series.is_empty() {
        if let Some((name, other)) = &scan.first_other {
            return Err(dicom_err(format!(
                "{what}: no DICOM image found ({name} is {other})"
            )));
        }
        return Err(dicom_err(format!(
            "{what}: no DICOM file found ({} files, none with the \"DICM\" marker at byte 128)",
            src.count()
        )));
    }
    let listing = || {
        briefs
            .iter()
            .map(|b| format!("{} {} ({} images)", b.series_uid, b.modality, b.images))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match series_uid {
        Some(u) => {
            if !scan.series.contains_key(u) {
                return Err(dicom_err(format!(
                    "{what}: no series with SeriesInstanceUID {u}; found: {}",
                    listing()
                )));
            }
            Ok(u.to_string())
        }
        None => match briefs.iter().find(|b| b.modality == "CT") {
            Some(b) => Ok(b.series_uid.clone()),
            None => Err(dicom_err(format!(
                "{what}: no CT series (Modality (0008,0060) is not CT); found: {}",
                listing()
            ))),
        },
    }
}

/// Same modality, a decodable transfer syntax, and the same pixel format and grid in
/// every file; every file's geometry valid.
fn check_headers(src: &dyn Source, headers: &[&Header], first: &Header) -> Result<()> {
    for h in headers {
        let name = || src.name(h.file);
        if h.modality != first.modality {
            return Err(dicom_err(format!(
                "{}: Modality (0008,0060) {:?} differs from {:?} in {} of the same series",
                name(),
                h.modality,
                first.modality,
                src.name(first.file)
            )));
        }
        let (n, ok) = transfer_syntax_name(&h.transfer_syntax);
        if !ok {
            return Err(dicom_err(format!(
                "{}: transfer syntax {} ({n}) cannot be decoded here (supported: uncompressed, \
                 RLE, JPEG baseline and lossless); convert the series, e.g. `gdcmconv --raw`",
                name(),
                h.transfer_syntax
            )));
        }
        if (h.rows, h.cols) != (first.rows, first.cols) {
            return Err(dicom_err(format!(
                "{}: mixed sizes in one series: Rows×Columns (0028,0010/0011) is {}×{} but {} in {}",
                name(),
                h.rows,
                h.cols,
                format_args!("{}×{}", first.rows, first.cols),
                src.name(first.file)
            )));
        }
        check_pixel_format(src, h, first)?;
        if let Err(m) = &h.frames {
            return Err(dicom_err(format!("{}: {m}", name())));
        }
    }
    Ok(())
}

/// One sample per pixel of 8, 16 or 32 bits, as in the first file.
fn check_pixel_format(src: &dyn Source, h: &Header, first: &Header) -> Result<()> {
    let name = || src.name(h.file);
    if h.samples_per_pixel != 1 {
        return Err(dicom_err(format!(
            "{}: SamplesPerPixel (0028,0002) is {}: a CT image has one sample per pixel",
            name(),
            h.samples_per_pixel
        )));
    }
    if !matches!(h.bits_allocated, 8 | 16 | 32) {
        return Err(dicom_err(format!(
            "{}: BitsAllocated (0028,0100) is {}: only 8, 16 or 32 are supported",
            name(),
            h.bits_allocated
        )));
    }
    if (h.bits_allocated, h.signed) != (first.bits_allocated, first.signed) {
        return Err(dicom_err(format!(
            "{}: BitsAllocated/PixelRepresentation (0028,0100/0103) differ from {}",
            name(),
            src.name(first.file)
        )));
    }
    Ok(())
}

/// Every frame of every file, in file order.
fn slots<'h>(headers: &[&'h Header]) -> Result<Vec<Slot<'h>>> {
    let mut slots: Vec<Slot> = Vec::new();
    for h in headers {
        for (f, geo) in h
            .frames
            .as_ref()
            .map_err(|m| dicom_err(m.clone()))?
            .iter()
            .enumerate()
        {
            slots.push(Slot {
                header: h,
                frame: f,
                geo,
                along: 0.0,
            });
        }
    }
    Ok(slots)
}

/// A slice in messages: its file, and its frame in a multi-frame file.
fn slot_name(src: &dyn Source, s: &Slot) -> String {
    if s.header.frame_count() > 1 {
        format!("{} frame {}", src.name(s.header.file), s.frame + 1)
    } else {
        src.name(s.header.file)
    }
}

/// The first slice's orientation (two orthogonal unit vectors) and pixel spacing, the
/// same in every slice.
fn axes(src: &dyn Source, slots: &[Slot]) -> Result<Axes> {
    let o = slots[0].geo.orientation;
    let row = [o[0], o[1], o[2]];
    let col = [o[3], o[4], o[5]];
    let (nr, nc) = (norm(row), norm(col));
    if (nr - 1.0).abs() > 0.01 || (nc - 1.0).abs() > 0.01 || dot(row, col).abs() > 0.01 {
        return Err(dicom_err(format!(
            "{}: ImageOrientationPatient (0020,0037) {o:?} is not two orthogonal unit vectors",
            slot_name(src, &slots[0])
        )));
    }
    let row = scale(row, 1.0 / nr);
    let col = scale(col, 1.0 / nc);
    let normal = cross(row, col);
    let normal = scale(normal, 1.0 / norm(normal));
    let sp = slots[0].geo.spacing;
    for s in slots {
        let so = s.geo.orientation;
        if so.iter().zip(&o).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(dicom_err(format!(
                "{}: ImageOrientationPatient (0020,0037) {so:?} differs from {o:?} in {}: mixed orientations in one series",
                slot_name(src, s),
                slot_name(src, &slots[0])
            )));
        }
        let ss = s.geo.spacing;
        if ss
            .iter()
            .zip(&sp)
            .any(|(a, b)| (a - b).abs() > 1e-4 * b.max(1.0))
        {
            return Err(dicom_err(format!(
                "{}: PixelSpacing (0028,0030) {ss:?} differs from {sp:?} in {}",
                slot_name(src, s),
                slot_name(src, &slots[0])
            )));
        }
    }
    Ok(Axes {
        row,
        col,
        normal,
        spacing: sp,
    })
}

/// Sort the slices by position along the normal (then InstanceNumber).
fn sort_along(slots: &mut [Slot], normal: [f64; 3]) {
    for s in slots.iter_mut() {
        s.along = dot(s.geo.position, normal);
    }
    slots.sort_by(|a, b| {
        a.along
            .total_cmp(&b.along)
            .then(a.header.instance_number.cmp(&b.header.instance_number))
    });
}

/// The spacing between slices (mm): the mean gap of sorted slices, which must be even
/// and on a line along the normal; for a single slice, what its header states (else 1).
fn slice_step(src: &dyn Source, slots: &[Slot], axes: &Axes, first: &Header) -> Result<f64> {
    let n = slots.len();
    if n < 2 {
        return Ok(first.slice_gap.unwrap_or(1.0));
    }
    check_even_spacing(src, slots)?;
    check_no_tilt(src, slots, axes.normal, first)?;
    Ok((slots[n - 1].along - slots[0].along) / (n - 1) as f64)
}

/// No two slices at one position, and every gap within 5 % of the median gap.
fn check_even_spacing(src: &dyn Source, slots: &[Slot]) -> Result<()> {
    let mut gaps: Vec<f64> = slots.windows(2).map(|w| w[1].along - w[0].along).collect();
    for (w, &g) in slots.windows(2).zip(&gaps) {
        if g.abs() < 1e-3 {
            return Err(dicom_err(format!(
                "{} and {}: two slices at the same ImagePositionPatient (0020,0032) \
                 (duplicates, or several acquisitions in one series?)",
                slot_name(src, &w[0]),
                slot_name(src, &w[1])
            )));
        }
    }
    gaps.sort_by(f64::total_cmp);
    let median = gaps[(gaps.len() - 1) / 2];
    for w in slots.windows(2) {
        let g = w[1].along - w[0].along;
        if (g - median).abs() > 0.05 * median + 0.01 {
            let hint = if g > 1.5 * median {
                format!(
                    " (about {} slices missing?)",
                    (g / median).round() as i64 - 1
                )
            } else {
                String::new()
            };
            return Err(dicom_err(format!(
                "uneven slice spacing: {:.3} mm between {} and {} but {:.3} mm between most \
                 slices (ImagePositionPatient (0020,0032)){hint}",
                g,
                slot_name(src, &w[0]),
                slot_name(src, &w[1]),
                median
            )));
        }
    }
    Ok(())
}

/// Gantry tilt (or shifted slices): positions must lie on a line along the normal.
fn check_no_tilt(src: &dyn Source, slots: &[Slot], normal: [f64; 3], first: &Header) -> Result<()> {
    let p0 = slots[0].geo.position;
    for s in &slots[1..] {
        let d = sub(s.geo.position, p0);
        let off = sub(d, scale(normal, dot(d, normal)));
        let along = dot(d, normal).abs();
        if norm(off) > 0.01 + 2e-3 * along {
            let angle = norm(off).atan2(along).to_degrees();
            let tilt = first
                .gantry_tilt
                .map(|t| format!(", GantryDetectorTilt (0018,1120) {t}°"))
                .unwrap_or_default();
            return Err(dicom_err(format!(
                "{}: slices are sheared by {angle:.2}° from the slice normal (gantry tilt{tilt}); \
                 resample the series to an untilted grid first (e.g. dcm2niix does)",
                slot_name(src, s)
            )));
        }
    }
    Ok(())
}

/// Voxel → world (RAS) from the axes, the slice step and the first slice's position
/// (LPS → RAS: x and y negated); refused when singular.
fn affine(axes: &Axes, step: f64, origin: [f64; 3]) -> Result<Affine> {
    let mut m = [[0.0; 4]; 4];
    let sp = axes.spacing;
    for r in 0..3 {
        // LPS → RAS: negate x and y.
        let flip = if r < 2 { -1.0 } else { 1.0 };
        m[r][0] = no_negative_zero(flip * axes.row[r] * sp[1]);
        m[r][1] = no_negative_zero(flip * axes.col[r] * sp[0]);
        m[r][2] = no_negative_zero(flip * axes.normal[r] * step);
        m[r][3] = no_negative_zero(flip * origin[r]);
    }
    m[3][3] = 1.0;
    let affine = Affine { m };
    affine.inverse()?;
    Ok(affine)
}

/// What the series' first file and sorted slices say (other series, skipped files and
/// localizers are left for the caller).
fn series_info(first: &Header, slots: &[Slot], files: usize, uid: String) -> DicomInfo {
    let (ts_name, _) = transfer_syntax_name(&first.transfer_syntax);
    let stored_dtype = match (first.bits_allocated, first.signed) {
        (8, false) => "uint8",
        (8, true) => "int8",
        (16, false) => "uint16",
        (16, true) => "int16",
        (_, false) => "uint32",
        (_, true) => "int32",
    };
    DicomInfo {
        series_uid: uid,
        study_uid: first.study_uid.clone(),
        frame_of_reference_uid: first.frame_of_reference_uid.clone(),
        modality: first.modality.clone(),
        description: first.description.clone(),
        slices: slots.len(),
        files,
        transfer_syntax: format!("{} ({ts_name})", first.transfer_syntax),
        stored_dtype: stored_dtype.into(),
        rescale_slope: slots[0].geo.slope,
        rescale_intercept: slots[0].geo.intercept,
        sop_instance_uids: slots
            .iter()
            .map(|s| s.header.sop_instance_uid.clone())
            .collect(),
        frame_numbers: slots.iter().map(|s| s.frame as u32 + 1).collect(),
        sop_class_uid: first.sop_class_uid.clone(),
        patient: first.patient.clone(),
        other_series: Vec::new(),
        skipped_files: 0,
        skipped_localizers: 0,
    }
}
