//! Tests of reading series from synthetic DICOM files (geometry, pixel formats, series
//! choice, multi-frame files, errors).

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::*;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const RLE: &str = "1.2.840.10008.1.2.5";

/// A synthetic CT image (explicit VR little endian unless `ts` says otherwise).
#[derive(Clone)]
struct Img {
    series: &'static str,
    modality: &'static str,
    sop: String,
    pos: [f64; 3],
    iop: [f64; 6],
    spacing: [f64; 2],
    rows: u16,
    cols: u16,
    raw: Vec<u16>,
    slope: f64,
    intercept: f64,
    signed: bool,
    bits_stored: u16,
    image_type: &'static str,
    ts: &'static str,
}

fn img(z: f64, fill: u16) -> Img {
    Img {
        series: "1.2.3.1",
        modality: "CT",
        sop: format!("1.2.3.9.{}", (z * 10.0) as i64),
        pos: [-100.0, -50.0, z],
        iop: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        spacing: [0.8, 0.6],
        rows: 2,
        cols: 3,
        raw: (0..6).map(|p| fill + p).collect(),
        slope: 1.0,
        intercept: -1024.0,
        signed: false,
        bits_stored: 16,
        image_type: "ORIGINAL\\PRIMARY\\AXIAL",
        ts: EXPLICIT_LE,
    }
}

fn ds(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::from(
        v.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join("\\"),
    )
}

fn el(tag: Tag, vr: VR, v: PrimitiveValue) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v)
}

/// RLE Lossless encoding of one 16-bit frame: two segments (high bytes, low bytes)
/// of literal runs.
fn rle_frame(raw: &[u16]) -> Vec<u8> {
    let seg = |bytes: Vec<u8>| {
        let mut s = Vec::new();
        for chunk in bytes.chunks(128) {
            s.push((chunk.len() - 1) as u8);
            s.extend_from_slice(chunk);
        }
        if s.len() % 2 == 1 {
            s.push(0x80); // no-op run, pads to an even length
        }
        s
    };
    let hi = seg(raw.iter().map(|v| (v >> 8) as u8).collect());
    let lo = seg(raw.iter().map(|v| *v as u8).collect());
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&2u32.to_le_bytes());
    out[4..8].copy_from_slice(&64u32.to_le_bytes());
    out[8..12].copy_from_slice(&(64 + hi.len() as u32).to_le_bytes());
    out.extend(hi);
    out.extend(lo);
    out
}

fn common_elements(i: &Img) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        el(
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.2".into(),
        ),
        el(tags::SOP_INSTANCE_UID, VR::UI, i.sop.as_str().into()),
        el(tags::IMAGE_TYPE, VR::CS, i.image_type.into()),
        el(tags::MODALITY, VR::CS, i.modality.into()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3".into()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, i.series.into()),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(i.rows)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(i.cols)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        el(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(i.bits_stored),
        ),
        el(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(i.bits_stored - 1),
        ),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(i.signed as u16),
        ),
    ]
}

fn write(obj: InMemDicomObject, ts: &str) -> Vec<u8> {
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

fn pixel_element(raws: &[&[u16]], ts: &str) -> DataElement<InMemDicomObject> {
    if ts == RLE {
        let frags: Vec<Vec<u8>> = raws.iter().map(|r| rle_frame(r)).collect();
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), frags)),
        )
    } else {
        let bytes: Vec<u8> = raws
            .iter()
            .flat_map(|r| r.iter())
            .flat_map(|v| v.to_le_bytes())
            .collect();
        el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
    }
}

fn encode(i: &Img) -> Vec<u8> {
    encode_with_pixels(i, pixel_element(&[&i.raw], i.ts))
}

fn encode_with_pixels(i: &Img, pixels: DataElement<InMemDicomObject>) -> Vec<u8> {
    let mut e = common_elements(i);
    e.extend([
        el(tags::SLICE_THICKNESS, VR::DS, ds(&[2.5])),
        el(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&i.pos)),
        el(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&i.iop)),
        el(tags::PIXEL_SPACING, VR::DS, ds(&i.spacing)),
        el(tags::RESCALE_INTERCEPT, VR::DS, ds(&[i.intercept])),
        el(tags::RESCALE_SLOPE, VR::DS, ds(&[i.slope])),
        pixels,
    ]);
    write(InMemDicomObject::from_element_iter(e), i.ts)
}

fn read(imgs: &[Img]) -> Result<DicomSeries> {
    let files: Vec<(String, Vec<u8>)> = imgs
        .iter()
        .enumerate()
        .map(|(n, i)| (format!("f{n}"), encode(i)))
        .collect();
    read_dicom_series_bytes(&files, None)
}

/// RAS world of a DICOM (LPS) point.
fn ras(p: [f64; 3]) -> [f64; 3] {
    [-p[0], -p[1], p[2]]
}

fn close(a: [f64; 3], b: [f64; 3]) -> bool {
    a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9)
}

/// Every slice's (i, j) pixel lands where DICOM puts it: IPP + i·Δc·row + j·Δr·col.
fn check_geometry(s: &DicomSeries, imgs: &[Img]) {
    for im in imgs {
        let o = im.iop;
        let k = s
            .info
            .sop_instance_uids
            .iter()
            .position(|u| *u == im.sop)
            .unwrap();
        for (i, j) in [(0usize, 0usize), (2, 0), (0, 1), (2, 1)] {
            let lps = [0, 1, 2].map(|a| {
                im.pos[a] + i as f64 * im.spacing[1] * o[a] + j as f64 * im.spacing[0] * o[3 + a]
            });
            let w = s.ct.affine.voxel_to_world([i as f64, j as f64, k as f64]);
            assert!(close(w, ras(lps)), "{w:?} vs {:?}", ras(lps));
            let want = im.raw[j * im.cols as usize + i] as f64 * im.slope + im.intercept;
            assert_eq!(s.ct.get(i, j, k) as f64, want);
        }
    }
}

#[test]
fn axial_series_sorted_rescaled_and_in_ras() {
    let imgs = vec![img(15.0, 300), img(10.0, 100), img(12.5, 200)];
    let s = read(&imgs).unwrap();
    assert_eq!(s.ct.dims, [3, 2, 3]);
    assert_eq!(s.ct.affine.axis_codes(), "LPS");
    let sp = s.ct.spacing_mm();
    assert!(close(sp, [0.6, 0.8, 2.5]), "{sp:?}");
    assert!(close(
        s.ct.affine.voxel_to_world([0.0; 3]),
        [100.0, 50.0, 10.0]
    ));
    assert_eq!(s.ct.get(0, 0, 0), 100 - 1024);
    assert_eq!(s.ct.get(2, 1, 2), 305 - 1024);
    check_geometry(&s, &imgs);
    assert_eq!(s.info.stored_dtype, "uint16");
    assert_eq!((s.info.slices, s.info.files), (3, 3));
}

#[test]
fn sagittal_and_oblique_series_keep_dicom_geometry() {
    // Sagittal: rows toward posterior, columns toward inferior; slices along x.
    let sag: Vec<Img> = [0.0, 3.0, 6.0]
        .iter()
        .map(|&x| Img {
            pos: [x, -20.0, 40.0],
            iop: [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
            sop: format!("1.2.4.{x}"),
            ..img(0.0, 10)
        })
        .collect();
    let s = read(&sag).unwrap();
    check_geometry(&s, &sag);
    assert!(close(s.ct.spacing_mm(), [0.6, 0.8, 3.0]));
    // Oblique: rotated 30° about z.
    let (c, sn) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let obl: Vec<Img> = (0..4)
        .map(|k| Img {
            pos: [5.0, 7.0, 2.0 * k as f64],
            iop: [c, sn, 0.0, -sn, c, 0.0],
            sop: format!("1.2.5.{k}"),
            ..img(0.0, 10 * k as u16)
        })
        .rev()
        .collect();
    let s = read(&obl).unwrap();
    check_geometry(&s, &obl);
}

#[test]
fn stored_bits_sign_and_clamping() {
    // 12 stored bits, signed: 0xFFFF → -1 and junk above bit 11 is ignored.
    let mut a = img(0.0, 0);
    a.signed = true;
    a.bits_stored = 12;
    a.intercept = 0.0;
    a.raw = vec![0x0FFF, 0xF001, 0x07FF, 0x0800, 0, 5];
    let s = read(&[a.clone()]).unwrap();
    assert_eq!(&s.ct.data[..], &[-1, 1, 2047, -2048, 0, 5]);
    assert_eq!(s.info.stored_dtype, "int16");
    // Single slice: spacing from SliceThickness.
    assert!((s.ct.spacing_mm()[2] - 2.5).abs() < 1e-9);
    // Unsigned 12 bits: high bits masked.
    a.signed = false;
    let s = read(&[a.clone()]).unwrap();
    assert_eq!(&s.ct.data[..2], &[4095, 1]);
    // HU beyond i16 clamp.
    a.bits_stored = 16;
    a.slope = 100.0;
    let s = read(&[a]).unwrap();
    assert_eq!(s.ct.data[0], i16::MAX);
}

#[test]
fn largest_ct_series_is_chosen_and_another_can_be_picked() {
    let mut imgs = vec![img(0.0, 1), img(1.0, 1), img(2.0, 1)];
    for z in 0..2 {
        imgs.push(Img {
            series: "1.2.3.2",
            sop: format!("1.2.3.2.{z}"),
            ..img(z as f64, 7)
        });
    }
    for z in 0..5 {
        imgs.push(Img {
            series: "1.2.3.3",
            modality: "MR",
            sop: format!("1.2.3.3.{z}"),
            ..img(z as f64, 9)
        });
    }
    // A localizer in the CT series, at another orientation: left out.
    imgs.push(Img {
        image_type: "ORIGINAL\\PRIMARY\\LOCALIZER",
        iop: [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
        sop: "1.2.3.1.99".into(),
        ..img(50.0, 1)
    });
    let files: Vec<(String, Vec<u8>)> = imgs
        .iter()
        .enumerate()
        .map(|(n, i)| (format!("f{n}"), encode(i)))
        .collect();
    let s = read_dicom_series_bytes(&files, None).unwrap();
    assert_eq!(s.info.series_uid, "1.2.3.1");
    assert_eq!((s.ct.dims[2], s.info.skipped_localizers), (3, 1));
    assert_eq!(s.info.other_series.len(), 2);
    let s = read_dicom_series_bytes(&files, Some("1.2.3.2")).unwrap();
    assert_eq!((s.ct.dims[2], s.ct.data[0]), (2, 7 - 1024));
    let list = list_dicom_series_bytes(&files).unwrap();
    let got: Vec<(&str, usize)> = list
        .iter()
        .map(|b| (b.series_uid.as_str(), b.images))
        .collect();
    assert_eq!(got, [("1.2.3.3", 5), ("1.2.3.1", 4), ("1.2.3.2", 2)]);
}

#[test]
fn rle_compressed_slices_decode() {
    let plain: Vec<Img> = (0..3)
        .map(|k| img(k as f64 * 2.0, 1000 + 7 * k as u16))
        .collect();
    let mut rle = plain.clone();
    for i in &mut rle {
        i.ts = RLE;
        i.raw = i.raw.iter().map(|v| v * 3 + 0x0100).collect();
    }
    let s = read(&rle).unwrap();
    check_geometry(&s, &rle);
    assert!(s.info.transfer_syntax.contains("RLE Lossless"));
}

/// Corrupt RLE frames are refused with the frame and the fault named; dicom-rs 0.10.1's
/// decoder panicked on each of these (found by `examples/fuzz_readers.rs --dcmtk-seeds`).
#[test]
fn corrupt_rle_frames_are_errors_not_panics() {
    let mut i = img(0.0, 0);
    i.ts = RLE;
    i.raw = vec![0x0102, 0x0304, 0x0506, 0x0708, 0x090a, 0x0b0c];
    let good = rle_frame(&i.raw);
    let with = |f: Vec<u8>| {
        let e = DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(Vec::<u32>::new(), vec![f])),
        );
        let bytes = encode_with_pixels(&i, e);
        read_dicom_series_bytes(&[("rle", bytes)], None)
    };
    assert!(with(good.clone()).is_ok());
    let set = |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let short = good[..40].to_vec();
    let mut many = good.clone();
    set(&mut many, 0, 0xffff_fff0);
    let mut one = good.clone();
    set(&mut one, 0, 1);
    let mut backwards = good.clone();
    set(&mut backwards, 8, 60);
    let mut outside = good.clone();
    set(&mut outside, 8, 100_000);
    // The low-byte segment cut to one literal byte: it expands to 1 of the 6 bytes needed.
    let hi_end = u32::from_le_bytes(good[8..12].try_into().unwrap()) as usize;
    let mut cut = good[..hi_end].to_vec();
    cut.extend([0u8, 7]);
    // Two literal bytes, then a repeat run without its byte (fragments keep an even
    // length: an odd one is padded with a zero, which would complete the run).
    let mut dangling = good[..hi_end].to_vec();
    dangling.extend([1u8, 7, 8, 0xfb]);
    for (what, f, want) in [
        ("short", short, "shorter than the 64-byte RLE header"),
        ("many", many, "segments"),
        ("one", one, "need 2 to 15"),
        ("backwards", backwards, "not increasing"),
        ("outside", outside, "not increasing"),
        (
            "cut",
            cut,
            "segment 2 expands to 1 bytes, Rows × Columns is 6",
        ),
        ("dangling", dangling, "segment 2 expands to 2 bytes"),
    ] {
        let m = with(f).unwrap_err().to_string();
        assert!(
            m.contains("rle: RLE Lossless frame 1") && m.contains(want),
            "{what}: {m}"
        );
    }
}

#[test]
fn enhanced_multi_frame_file() {
    let base = img(0.0, 0);
    let zs = [20.0, 10.0, 15.0];
    let frame_items: Vec<InMemDicomObject> = zs
        .iter()
        .map(|&z| {
            InMemDicomObject::from_element_iter([DataElement::new(
                tags::PLANE_POSITION_SEQUENCE,
                VR::SQ,
                Value::from(dicom_core::value::DataSetSequence::from(vec![
                    InMemDicomObject::from_element_iter([el(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds(&[1.0, 2.0, z]),
                    )]),
                ])),
            )])
        })
        .collect();
    let seq1 = |tag: Tag, elems: Vec<DataElement<InMemDicomObject>>| {
        DataElement::new(
            tag,
            VR::SQ,
            Value::from(dicom_core::value::DataSetSequence::from(vec![
                InMemDicomObject::from_element_iter(elems),
            ])),
        )
    };
    let shared = InMemDicomObject::from_element_iter([
        seq1(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![el(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&base.iop))],
        ),
        seq1(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![el(tags::PIXEL_SPACING, VR::DS, ds(&[0.5, 0.5]))],
        ),
        seq1(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            vec![
                el(tags::RESCALE_INTERCEPT, VR::DS, ds(&[-1000.0])),
                el(tags::RESCALE_SLOPE, VR::DS, ds(&[2.0])),
            ],
        ),
    ]);
    let raws: Vec<Vec<u16>> = (0..3u16).map(|f| vec![f * 10; 6]).collect();
    let mut e = common_elements(&Img {
        sop: "1.2.9".into(),
        ..base
    });
    e.extend([
        el(tags::NUMBER_OF_FRAMES, VR::IS, "3".into()),
        DataElement::new(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            VR::SQ,
            Value::from(dicom_core::value::DataSetSequence::from(vec![shared])),
        ),
        DataElement::new(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            VR::SQ,
            Value::from(dicom_core::value::DataSetSequence::from(frame_items)),
        ),
        pixel_element(
            &raws.iter().map(|r| &r[..]).collect::<Vec<_>>(),
            EXPLICIT_LE,
        ),
    ]);
    let bytes = write(InMemDicomObject::from_element_iter(e), EXPLICIT_LE);
    let s = read_dicom_series_bytes(&[("enhanced.dcm", bytes)], None).unwrap();
    assert_eq!(s.ct.dims, [3, 2, 3]);
    assert!(close(s.ct.spacing_mm(), [0.5, 0.5, 5.0]));
    assert!(close(
        s.ct.affine.voxel_to_world([0.0; 3]),
        [-1.0, -2.0, 10.0]
    ));
    // Sorted by z: frame 2 (z=10), frame 3 (z=15), frame 1 (z=20).
    let firsts: Vec<i16> = (0..3).map(|k| s.ct.get(0, 0, k)).collect();
    assert_eq!(firsts, [-1000 + 20, -1000 + 40, -1000]);
    assert_eq!(s.info.files, 1);
}

#[test]
fn geometry_errors_name_the_problem() {
    let e = |imgs: &[Img]| read(imgs).unwrap_err().to_string();
    // Missing slice.
    let m = e(&[img(0.0, 0), img(2.0, 0), img(6.0, 0), img(8.0, 0)]);
    assert!(
        m.contains("uneven slice spacing") && m.contains("f1") && m.contains("f2"),
        "{m}"
    );
    // Tilt.
    let tilted: Vec<Img> = (0..3)
        .map(|k| Img {
            pos: [0.0, k as f64, 2.0 * k as f64],
            sop: format!("1.{k}"),
            ..img(0.0, 0)
        })
        .collect();
    let m = e(&tilted);
    assert!(m.contains("gantry tilt") && m.contains("26.57°"), "{m}");
    // Mixed orientation.
    let mut b = img(2.0, 0);
    b.iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
    let m = e(&[img(0.0, 0), b]);
    assert!(m.contains("mixed orientations"), "{m}");
    // Bad orientation vectors.
    let mut b = img(0.0, 0);
    b.iop = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let m = e(&[b]);
    assert!(m.contains("not two orthogonal unit vectors"), "{m}");
    // Pixel spacing differs.
    let mut b = img(2.0, 0);
    b.spacing = [0.8, 0.7];
    let m = e(&[img(0.0, 0), b]);
    assert!(m.contains("PixelSpacing"), "{m}");
}

#[test]
fn missing_attributes_and_truncation_are_errors_not_panics() {
    let good = encode(&img(0.0, 0));
    // Every prefix of a file: an error or (for the whole file) a volume, never a panic.
    for cut in (0..good.len()).step_by(7) {
        let r = read_dicom_series_bytes(&[("cut", &good[..cut])], None);
        assert!(r.is_err(), "a file cut at {cut} bytes was accepted");
    }
    // No ImagePositionPatient.
    let mut e = common_elements(&img(0.0, 0));
    e.push(pixel_element(&[&[0; 6]], EXPLICIT_LE));
    let bytes = write(InMemDicomObject::from_element_iter(e), EXPLICIT_LE);
    let m = read_dicom_series_bytes(&[("nopos", bytes)], None)
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("nopos") && m.contains("ImagePositionPatient (0020,0032)"),
        "{m}"
    );
    assert!(!is_dicom(b"hello") && is_dicom(&good));
}
