//! Pixel data: files too small for the pixels they claim refused before the volume is
//! allocated, each file's pixel data decoded once, stored values → Hounsfield units.

use std::collections::BTreeMap;

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;

use super::header::Header;
use super::series::{Slot, dicom_err};
use super::source::Source;
use super::syntax::{Coding, coding, transfer_syntax_name};
use super::walk::{chain, parse};
use crate::Result;

/// Files too small for the pixels their header claims are refused before the volume
/// is allocated (a few corrupt bytes could ask for 2 GiB): uncompressed pixel data are
/// in the file; deflate expands at most 1032 times. (RLE and JPEG data are checked by
/// their decoders.)
pub(super) fn check_file_sizes(src: &dyn Source, headers: &[&Header]) -> Result<()> {
    for h in headers {
        let ratio = match coding(&h.transfer_syntax) {
            Some(Coding::Native { .. }) => 1,
            Some(Coding::Deflated) => 1032,
            _ => continue,
        };
        let need = (h.frame_count() * h.rows * h.cols) as u64 * (h.bits_allocated as u64 / 8);
        let size = src.size(h.file)?;
        if size.saturating_mul(ratio) < need {
            return Err(dicom_err(format!(
                "{}: {} frame(s) of {}×{} pixels of {} bits need {need} bytes but the file holds \
                 {size} (truncated, or a wrong Rows/Columns (0028,0010/0011) or NumberOfFrames?)",
                src.name(h.file),
                h.frame_count(),
                h.rows,
                h.cols,
                h.bits_allocated
            )));
        }
    }
    Ok(())
}

/// The volume's voxels in HU (`nvox` of them, slices of `plane` pixels in `slots`
/// order), file by file: a multi-frame file is decoded once.
pub(super) fn read_pixels(
    src: &dyn Source,
    headers: &[&Header],
    slots: &[Slot],
    plane: usize,
    nvox: usize,
) -> Result<Vec<i16>> {
    let mut data = vec![0i16; nvox];
    let mut file_of: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new(); // file → (k, frame)
    for (k, s) in slots.iter().enumerate() {
        file_of.entry(s.header.file).or_default().push((k, s.frame));
    }
    for (&file, ks) in &file_of {
        let name = src.name(file);
        let h = headers
            .iter()
            .find(|h| h.file == file)
            .expect("slot of a listed file");
        let raw = decode_pixels(src, file, &name, h)?;
        for &(k, frame) in ks {
            let geo = &slots[k].geo;
            let out = &mut data[k * plane..(k + 1) * plane];
            to_hu(&raw, frame, plane, h, geo.slope, geo.intercept, out);
        }
    }
    Ok(data)
}

/// The pixel data of one file, uncompressed (little-endian samples, all frames).
fn decode_pixels(src: &dyn Source, file: usize, name: &str, h: &Header) -> Result<Vec<u8>> {
    let bytes = src.bytes(file)?;
    let obj =
        parse(|| Ok(&bytes[..]), Some(bytes.len() as u64), name, false)?.ok_or_else(|| {
            dicom_err(format!(
                "{name}: not a DICOM file any more (changed while reading?)"
            ))
        })?;
    let frames = h.frame_count();
    let need = frames * h.rows * h.cols * (h.bits_allocated as usize / 8);
    let elem = obj.get(tags::PIXEL_DATA).ok_or_else(|| {
        dicom_err(format!(
            "{name}: no PixelData (7FE0,0010): the file is truncated or holds no image"
        ))
    })?;
    let raw: Vec<u8> = match elem.value() {
        Value::Primitive(p) => p.to_bytes().into_owned(),
        Value::PixelSequence(seq) => {
            match coding(&h.transfer_syntax) {
                Some(Coding::Jpeg) => return decode_jpeg(name, h, seq.fragments()),
                Some(Coding::Rle) => check_rle(name, h, seq.fragments())?,
                _ => {}
            }
            obj.decode_pixel_data()
                .map_err(|e| undecodable(name, h, chain(&e)))?
                .into_data()
        }
        Value::Sequence(_) => {
            return Err(dicom_err(format!(
                "{name}: PixelData (7FE0,0010) is a sequence, not pixels"
            )));
        }
    };
    if raw.len() < need {
        return Err(dicom_err(format!(
            "{name}: PixelData (7FE0,0010) holds {} bytes but {} frame(s) of {}×{} pixels of {} bits need {need} (truncated?)",
            raw.len(),
            frames,
            h.rows,
            h.cols,
            h.bits_allocated
        )));
    }
    Ok(raw)
}

/// The error for pixel data the decoder refused: the file, the transfer syntax, why.
fn undecodable(name: &str, h: &Header, why: String) -> crate::Error {
    dicom_err(format!(
        "{name}: the {} pixel data cannot be decoded: {why}",
        transfer_syntax_name(&h.transfer_syntax).0
    ))
}

/// JPEG frames decoded as dicom-rs 0.10.1 decodes them (`adapters/jpeg.rs`: the fragments
/// joined, one JPEG per frame, the next frame at the next SOI marker), with the checks it
/// lacks: it copies each decoded image into a buffer sized by Rows × Columns without
/// comparing the two, and panics when the JPEG's own frame header is larger; and it lets
/// jpeg-decoder allocate whatever that header claims (65535² pixels from a few bytes).
/// Here each JPEG's size, components and precision must match the DICOM header before it is
/// decoded.
fn decode_jpeg(name: &str, h: &Header, fragments: &[impl AsRef<[u8]>]) -> Result<Vec<u8>> {
    let bytes = h.bits_allocated as usize / 8;
    let frame_bytes = h.rows * h.cols * bytes;
    let data: Vec<u8> = fragments.iter().flat_map(|f| f.as_ref()).copied().collect();
    let mut out = Vec::new();
    let mut cursor = std::io::Cursor::new(&data[..]);
    for i in 0..h.frame_count() {
        let bad = |what: String| undecodable(name, h, format!("JPEG frame {}: {what}", i + 1));
        let mut dec = jpeg_decoder::Decoder::new(&mut cursor);
        dec.read_info().map_err(|e| bad(e.to_string()))?;
        let info = dec.info().ok_or_else(|| bad("no frame header".into()))?;
        let px = info.pixel_format.pixel_bytes();
        if [info.width as usize, info.height as usize, px] != [h.cols, h.rows, bytes] {
            return Err(bad(format!(
                "the JPEG holds {}×{} pixels of {px} byte(s), the header says {}×{} of {bytes} \
                 (Columns × Rows (0028,0011/0010), BitsAllocated (0028,0100))",
                info.width, info.height, h.cols, h.rows
            )));
        }
        dec.set_max_decoding_buffer_size(frame_bytes);
        out.extend(dec.decode().map_err(|e| bad(e.to_string()))?);
        if i + 1 == h.frame_count() || !next_soi(&mut cursor) {
            break;
        }
    }
    Ok(out)
}

/// Move `cursor` to the next JPEG start-of-image marker (FF D8); false at the end of the
/// data.
fn next_soi(cursor: &mut std::io::Cursor<&[u8]>) -> bool {
    let data = *cursor.get_ref();
    let from = cursor.position() as usize;
    match data
        .get(from..)
        .and_then(|d| d.windows(2).position(|w| w == [0xff, 0xd8]))
    {
        Some(k) => {
            cursor.set_position((from + k) as u64);
            true
        }
        None => false,
    }
}

/// RLE Lossless frames (DICOM PS3.5 annex G) checked before dicom-rs decodes them: its
/// decoder (0.10.1, `rle_lossless.rs`) slices the 64-byte header and indexes segments that
/// decode shorter than Rows × Columns without checking, and panics on a corrupt file. Each
/// fragment (one per frame) needs a header with 1..=15 segments, at least one per byte of a
/// sample, offsets inside the fragment in increasing order, and each segment the decoder
/// reads must expand to at least Rows × Columns bytes.
fn check_rle(name: &str, h: &Header, fragments: &[impl AsRef<[u8]>]) -> Result<()> {
    let plane = h.rows * h.cols;
    let per_sample = (h.bits_allocated as usize / 8).max(1);
    for (i, frag) in fragments.iter().enumerate() {
        let f = frag.as_ref();
        let bad = |what: String| dicom_err(format!("{name}: RLE Lossless frame {}: {what}", i + 1));
        if f.len() < 64 {
            return Err(bad(format!(
                "{} bytes, shorter than the 64-byte RLE header (truncated?)",
                f.len()
            )));
        }
        let word = |k: usize| {
            u32::from_le_bytes([f[4 * k], f[4 * k + 1], f[4 * k + 2], f[4 * k + 3]]) as usize
        };
        let n = word(0);
        if !(per_sample..=15).contains(&n) {
            return Err(bad(format!(
                "the header lists {n} segments; {}-bit pixels need {per_sample} to 15",
                h.bits_allocated
            )));
        }
        let mut ends: Vec<usize> = (1..=n).map(word).collect();
        ends.push(f.len());
        if ends[0] < 64 || ends.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad(format!(
                "segment offsets {:?} are not increasing within the {}-byte fragment",
                &ends[..n],
                f.len()
            )));
        }
        for s in 0..per_sample {
            let got = packbits_len(&f[ends[s]..ends[s + 1]]);
            if got < plane {
                return Err(bad(format!(
                    "segment {} expands to {got} bytes, Rows × Columns is {plane} (corrupt or truncated)",
                    s + 1
                )));
            }
        }
    }
    Ok(())
}

/// The number of bytes a PackBits segment expands to, read as dicom-rs reads it (a literal
/// run cut by the end of the segment counts what is there; a repeat run without its byte,
/// nothing).
fn packbits_len(seg: &[u8]) -> usize {
    let (mut i, mut out) = (0, 0);
    while i < seg.len() {
        let h = seg[i] as i8;
        i += 1;
        if h >= 0 {
            let n = h as usize + 1;
            out += n.min(seg.len() - i);
            i += n;
        } else if h != -128 {
            if i >= seg.len() {
                break;
            }
            out += (1 - h as isize) as usize;
            i += 1;
        }
    }
    out
}

/// Stored values of one frame → HU (rounded, clamped to i16).
fn to_hu(
    raw: &[u8],
    frame: usize,
    plane: usize,
    h: &Header,
    slope: f64,
    inter: f64,
    out: &mut [i16],
) {
    let bytes = h.bits_allocated as usize / 8;
    let stored = if h.bits_stored == 0 || h.bits_stored > h.bits_allocated {
        h.bits_allocated as u32
    } else {
        h.bits_stored as u32
    };
    let shift = 32 - stored;
    let frame_bytes = &raw[frame * plane * bytes..(frame + 1) * plane * bytes];
    let value = |v: u32| -> i64 {
        // Keep the stored bits only; sign-extend them for signed pixels.
        if h.signed {
            (((v << shift) as i32) >> shift) as i64
        } else {
            ((v << shift) >> shift) as i64
        }
    };
    let hu = |v: i64| -> i16 {
        let x = (v as f64 * slope + inter).round();
        x.clamp(i16::MIN as f64, i16::MAX as f64) as i16
    };
    match bytes {
        1 => {
            for (o, &b) in out.iter_mut().zip(frame_bytes) {
                *o = hu(value(b as u32));
            }
        }
        2 => {
            for (o, c) in out.iter_mut().zip(frame_bytes.chunks_exact(2)) {
                *o = hu(value(u16::from_le_bytes([c[0], c[1]]) as u32));
            }
        }
        _ => {
            for (o, c) in out.iter_mut().zip(frame_bytes.chunks_exact(4)) {
                *o = hu(value(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
        }
    }
}
