//! An in-process mutation fuzzer of the file readers (NIfTI, DICOM CT series, RTSTRUCT,
//! DICOM SEG), on stable Rust.
//!
//! ```sh
//! cargo run --release --example fuzz_readers -- [--target all|nifti|dicom|rtstruct|seg]
//!     [--secs 10] [--seed 1] [--findings target/fuzz-findings] [--data ../shared/data]
//! cargo run --release --example fuzz_readers -- --target dicom --replay FILE
//! ```
//!
//! Seeds are real files, made at start: a 24 × 20 × 6 crop of a real OpenKBP CT (int16)
//! and of its label map (uint8, float32), each as `.nii` and `.nii.gz`; 4 + 3 of the
//! committed 3D-IRCADb slices (`tests/data/dicom`), subsampled in-plane to 128 × 128
//! (every 4th pixel, PixelSpacing × 4) for speed, in explicit and implicit VR, and the
//! explicit set re-encoded by DCMTK as RLE, JPEG lossless, JPEG baseline, deflate and
//! big endian with `--dcmtk-seeds` (DCMTK's `dcmcrle`, `dcmcjpeg`, `dcmconv` must be installed); two
//! RTSTRUCTs and a SEG written by our own writers on the first 4 (body and bone masks). Inputs are mutated (bit flips, interesting bytes/integers/floats, biased
//! towards NIfTI header fields and DICOM element headers and values, truncation, chunk
//! insert/delete/duplicate, splices of two seeds, gzip re-wrap; for DICOM sets also
//! dropped, duplicated and reordered slices) and fed to the same entry points the CLI
//! and the page use, each call inside `catch_unwind`. Inputs that give a new error
//! message (numbers and tags stripped) join the corpus (at most 512).
//!
//! A counting global allocator records the largest single allocation and refuses any
//! over 4 GiB (`--alloc-limit`): the input is saved and counted as a finding; a reader
//! that asked through `try_reserve` goes on with an error, any other request aborts the
//! process (after the input was saved: an allocation failure cannot be caught). A
//! panicking input is saved too; the exit status is 1 when anything was found.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use medlsam::rng::Rng;
use medlsam::volume::dicom::{
    DicomInfo, info_lines, is_dicom, list_dicom_series_bytes, read_dicom_series_bytes,
};
use medlsam::volume::dicom_derived::DerivedOptions;
use medlsam::volume::dicom_seg::{read_dicom_seg, write_dicom_seg};
use medlsam::volume::label_table::LabelTable;
use medlsam::volume::nifti_io::write_nifti_bytes;
use medlsam::volume::rtstruct::{read_rtstruct, rtstruct_roi_names, write_rtstruct};
use medlsam::volume::{CtVolume, LabelVolume, Volume, read_nifti_bytes, read_nifti_path};

// ---------------------------------------------------------------------------------
// The allocator

/// Allocations over this are refused (4 GiB, `--alloc-limit MiB` to change).
static ALLOC_LIMIT: AtomicUsize = AtomicUsize::new(4 << 30);
static MAX_ALLOC: AtomicUsize = AtomicUsize::new(0);
/// Allocations refused (a reader may survive one, through `try_reserve`: still a finding).
static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// The input being run (serialized), saved if an allocation is refused.
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static HUGE_PATH: OnceLock<PathBuf> = OnceLock::new();

thread_local! {
    static IN_REPORT: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

fn admit(size: usize) -> bool {
    if IN_REPORT.with(|r| r.get()) {
        return true;
    }
    MAX_ALLOC.fetch_max(size, Ordering::Relaxed);
    if size <= ALLOC_LIMIT.load(Ordering::Relaxed) {
        return true;
    }
    IN_REPORT.with(|r| r.set(true));
    REFUSED.fetch_add(1, Ordering::SeqCst);
    let ptr = CURRENT.load(Ordering::SeqCst);
    let len = CURRENT_LEN.load(Ordering::SeqCst);
    let mut saved = String::from("(no input recorded)");
    if let Some(path) = HUGE_PATH.get()
        && !ptr.is_null()
    {
        // SAFETY: the fuzz loop keeps the buffer alive while the input runs.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        if std::fs::write(path, bytes).is_ok() {
            saved = path.display().to_string();
        }
    }
    eprintln!(
        "FINDING: an allocation of {size} bytes (over {} MiB) was refused; input saved to {saved}\n{}",
        ALLOC_LIMIT.load(Ordering::Relaxed) >> 20,
        std::backtrace::Backtrace::force_capture()
    );
    IN_REPORT.with(|r| r.set(false));
    false
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if admit(l.size()) {
            unsafe { System.alloc(l) }
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if admit(l.size()) {
            unsafe { System.alloc_zeroed(l) }
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if admit(new_size) {
            unsafe { System.realloc(p, l, new_size) }
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------
// Inputs

#[derive(Clone)]
enum Input {
    Bytes(Vec<u8>),
    /// A set of files (name, bytes), as a folder or a page's file picker gives them.
    Files(Vec<(String, Vec<u8>)>),
}

const SET_MAGIC: &[u8; 8] = b"MLFZSET\0";

impl Input {
    /// One blob (a set of files: magic, then per file u32 name length, name, u32 size, bytes).
    fn serialize(&self) -> Vec<u8> {
        match self {
            Input::Bytes(b) => b.clone(),
            Input::Files(fs) => {
                let mut out = SET_MAGIC.to_vec();
                for (n, b) in fs {
                    out.extend((n.len() as u32).to_le_bytes());
                    out.extend(n.as_bytes());
                    out.extend((b.len() as u32).to_le_bytes());
                    out.extend(b);
                }
                out
            }
        }
    }

    fn deserialize(b: &[u8]) -> Input {
        let Some(mut rest) = b.strip_prefix(SET_MAGIC) else {
            return Input::Bytes(b.to_vec());
        };
        let mut files = Vec::new();
        let take = |n: usize, rest: &mut &[u8]| {
            let (a, r) = rest.split_at(n.min(rest.len()));
            *rest = r;
            a.to_vec()
        };
        while rest.len() >= 4 {
            let n = u32::from_le_bytes(take(4, &mut rest).try_into().unwrap()) as usize;
            let name = String::from_utf8_lossy(&take(n, &mut rest)).into_owned();
            let s = take(4, &mut rest);
            let s = u32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as usize;
            files.push((name, take(s, &mut rest)));
        }
        Input::Files(files)
    }
}

// ---------------------------------------------------------------------------------
// Targets

#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    Nifti,
    Dicom,
    Rtstruct,
    Seg,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Nifti => "nifti",
            Target::Dicom => "dicom",
            Target::Rtstruct => "rtstruct",
            Target::Seg => "seg",
        }
    }
}

/// What the targets need beside the input: the referenced CT series and a temp file.
struct Ctx {
    ct: CtVolume,
    info: DicomInfo,
    tmp: PathBuf,
    execs: u64,
}

/// Run one input through a target's entry points; the error message, if any.
fn execute(t: Target, input: &Input, ctx: &mut Ctx) -> Option<String> {
    ctx.execs += 1;
    let err = |e: medlsam::Error| Some(e.to_string());
    match (t, input) {
        (Target::Nifti, Input::Bytes(b)) => {
            let _ = is_dicom(b);
            // The CLI reads paths (a buffered stream), the page bytes: both, sometimes.
            let f = if ctx.execs.is_multiple_of(16) {
                std::fs::write(&ctx.tmp, b).ok()?;
                read_nifti_path(&ctx.tmp)
            } else {
                read_nifti_bytes(b)
            };
            let f = match f {
                Ok(f) => f,
                Err(e) => return err(e),
            };
            let _ = f.summary();
            let _ = f.is_integer_valued();
            let _ = f.to_f32();
            let r = if ctx.execs.is_multiple_of(2) {
                f.into_ct().map(|v| v.dims)
            } else {
                f.into_labels().map(|v| v.dims)
            };
            r.err().and_then(err)
        }
        (Target::Dicom, Input::Files(fs)) => {
            let briefs = match list_dicom_series_bytes(fs) {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            let mut first_err = None;
            for uid in
                std::iter::once(None).chain(briefs.iter().take(2).map(|b| Some(&b.series_uid)))
            {
                match read_dicom_series_bytes(fs, uid.map(String::as_str)) {
                    Ok(s) => {
                        let _ = s.summary();
                        let _ = info_lines(&s.info);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e.to_string());
                    }
                }
            }
            first_err
        }
        (Target::Rtstruct, Input::Bytes(b)) => {
            if let Err(e) = rtstruct_roi_names(b, "fuzz.rtstruct.dcm") {
                return err(e);
            }
            read_rtstruct(b, "fuzz.rtstruct.dcm", &ctx.ct, &ctx.info)
                .err()
                .and_then(err)
        }
        (Target::Seg, Input::Bytes(b)) => read_dicom_seg(b, "fuzz.seg.dcm", &ctx.ct, &ctx.info)
            .err()
            .and_then(err),
        _ => Some("input of the wrong kind for this target".into()),
    }
}

// ---------------------------------------------------------------------------------
// Seeds (real files)

fn crop<T: Copy>(v: &Volume<T>, lo: [usize; 3], size: [usize; 3]) -> Volume<T> {
    let mut data = Vec::with_capacity(size.iter().product());
    for k in 0..size[2] {
        for j in 0..size[1] {
            for i in 0..size[0] {
                data.push(v.get(lo[0] + i, lo[1] + j, lo[2] + k));
            }
        }
    }
    let mut affine = v.affine;
    let o = v
        .affine
        .voxel_to_world([lo[0] as f64, lo[1] as f64, lo[2] as f64]);
    for (r, x) in o.iter().enumerate() {
        affine.m[r][3] = *x;
    }
    Volume::from_data(size, data, affine).unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// A 24 × 20 × 6 crop of OpenKBP case 1's CT (int16) and label map (uint8 and float32),
/// each as `.nii` and `.nii.gz`.
fn nifti_seeds(data: &Path) -> Vec<Vec<u8>> {
    let ct = read_nifti_path(data.join("openkbp/okbp_001.ct.nii.gz"))
        .and_then(|f| f.into_ct())
        .expect("the real CT okbp_001 (../shared/data or MEDLSAM_DATA)");
    let lab = read_nifti_path(data.join("openkbp/okbp_001.label.nii.gz"))
        .and_then(|f| f.into_labels())
        .expect("the real label map okbp_001");
    // Where the labels are: the crop holds organ voxels.
    let [w, h, d] = lab.dims;
    let k = (0..d)
        .max_by_key(|&k| lab.axial_slice(k).iter().filter(|&&v| v != 0).count())
        .unwrap();
    let p = lab.axial_slice(k).iter().position(|&v| v != 0).unwrap_or(0);
    let size = [24, 20, 6];
    let lo = [
        (p % w).min(w - size[0]),
        (p / w).min(h - size[1]),
        k.saturating_sub(3).min(d - size[2]),
    ];
    let ct = crop(&ct, lo, size);
    let lab = crop(&lab, lo, size);
    let lab8 = lab.map(|v| v as u8);
    let labf = lab.map(|v| v as f32);
    let mut seeds = Vec::new();
    for plain in [
        write_nifti_bytes(&ct, false).unwrap(),
        write_nifti_bytes(&lab8, false).unwrap(),
        write_nifti_bytes(&labf, false).unwrap(),
    ] {
        seeds.push(gzip(&plain));
        seeds.push(plain);
    }
    seeds
}

/// Slices `image_50`..`image_53` of the committed 3D-IRCADb patient 1 series,
/// subsampled to 128 × 128 (every 4th pixel of every 4th row: the first pixel and so
/// ImagePositionPatient stay; PixelSpacing × 4), in transfer syntax `ts`.
fn dicom_seed_set(root: &Path, first: usize, n: usize, ts: &str) -> Vec<(String, Vec<u8>)> {
    (first..first + n)
        .map(|i| {
            let name = format!("image_{i}");
            let file = OpenFileOptions::new()
                .open_file(root.join("tests/data/dicom/ircadb_001").join(&name))
                .expect("a committed DICOM slice");
            let mut obj: InMemDicomObject = file.into_inner();
            let rows = obj.get(tags::ROWS).unwrap().to_int::<usize>().unwrap();
            let cols = obj.get(tags::COLUMNS).unwrap().to_int::<usize>().unwrap();
            let sp = obj
                .get(tags::PIXEL_SPACING)
                .unwrap()
                .to_multi_float64()
                .unwrap();
            let px = obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
            let mut small = Vec::new();
            for r in (0..rows).step_by(4) {
                for c in (0..cols).step_by(4) {
                    let o = 2 * (r * cols + c);
                    small.extend_from_slice(&px[o..o + 2]);
                }
            }
            let ds = |v: &[f64]| PrimitiveValue::Strs(v.iter().map(|x| format!("{x}")).collect());
            obj.put(DataElement::new(
                tags::ROWS,
                VR::US,
                PrimitiveValue::from((rows / 4) as u16),
            ));
            obj.put(DataElement::new(
                tags::COLUMNS,
                VR::US,
                PrimitiveValue::from((cols / 4) as u16),
            ));
            obj.put(DataElement::new(
                tags::PIXEL_SPACING,
                VR::DS,
                ds(&[sp[0] * 4.0, sp[1] * 4.0]),
            ));
            obj.put(DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::from(small),
            ));
            let file = obj
                .with_meta(dicom_object::meta::FileMetaTableBuilder::new().transfer_syntax(ts))
                .unwrap();
            let mut out = Vec::new();
            file.write_all(&mut out).unwrap();
            (name, out)
        })
        .collect()
}

/// The explicit-VR seed set re-encoded by DCMTK (Debian package `dcmtk`, which `./dev
/// setup` installs) into the compressed and rarer syntaxes the reader decodes: RLE, JPEG
/// lossless (process 14), JPEG baseline (8-bit, lossy), deflate and big endian. Each set
/// must read back as a series before fuzzing starts.
fn dcmtk_seed_sets(explicit: &[(String, Vec<u8>)], tmp: &Path) -> Vec<Vec<(String, Vec<u8>)>> {
    const TOOLS: [(&str, &str); 5] = [
        ("dcmcrle", ""),
        ("dcmcjpeg", "+el"),
        ("dcmcjpeg", "+eb"),
        ("dcmconv", "+td"),
        ("dcmconv", "+tb"),
    ];
    let dir = tmp.join("dcmtk-seeds");
    std::fs::create_dir_all(&dir).expect("a folder for the DCMTK seeds");
    TOOLS
        .iter()
        .map(|&(tool, flag)| {
            let set: Vec<(String, Vec<u8>)> = explicit
                .iter()
                .map(|(name, bytes)| {
                    let (src, dst) = (dir.join(format!("{name}.in")), dir.join(name));
                    std::fs::write(&src, bytes).unwrap();
                    let mut cmd = std::process::Command::new(tool);
                    if !flag.is_empty() {
                        cmd.arg(flag);
                    }
                    let ok = cmd.arg(&src).arg(&dst).status().unwrap_or_else(|e| {
                        panic!("cannot run {tool} ({e}): the fuzzer's seeds need DCMTK (apt-get install dcmtk; ./dev setup does)")
                    });
                    assert!(ok.success(), "{tool} {flag} failed on seed {name}");
                    (name.clone(), std::fs::read(&dst).unwrap())
                })
                .collect();
            read_dicom_series_bytes(&set, None)
                .unwrap_or_else(|e| panic!("the {tool} {flag} seed set does not read: {e}"));
            set
        })
        .collect()
}

/// Body (> −400 HU, lungs and bowel gas as holes) and bone (≥ 200 HU) of a CT.
fn real_mask(ct: &CtVolume) -> LabelVolume {
    ct.map(|v| {
        if v >= 200 {
            2
        } else if v > -400 {
            1
        } else {
            0
        }
    })
}

struct Seeds {
    nifti: Vec<Vec<u8>>,
    dicom: Vec<Vec<(String, Vec<u8>)>>,
    rtstruct: Vec<Vec<u8>>,
    seg: Vec<Vec<u8>>,
    ct: CtVolume,
    info: DicomInfo,
}

fn make_seeds(root: &Path, data: &Path, tmp: &Path, dcmtk: bool) -> Seeds {
    let explicit = dicom_seed_set(root, 50, 4, "1.2.840.10008.1.2.1");
    let implicit = dicom_seed_set(root, 60, 3, "1.2.840.10008.1.2");
    let mut dicom = vec![explicit.clone(), implicit];
    if dcmtk {
        dicom.extend(dcmtk_seed_sets(&explicit, tmp));
    }
    let series = read_dicom_series_bytes(&explicit, None).expect("the seed series reads");
    let mask = real_mask(&series.ct);
    let names = LabelTable(
        [(1, "body".to_string()), (2, "bone".to_string())]
            .into_iter()
            .collect(),
    );
    let opts = DerivedOptions {
        date: "20260101".into(),
        time: "120000".into(),
        series_number: Some(901),
    };
    let rt = write_rtstruct(&mask, &series.info, &[1, 2], &names, &opts)
        .unwrap()
        .0;
    let rt_bone = write_rtstruct(&mask, &series.info, &[2], &names, &opts)
        .unwrap()
        .0;
    let seg = write_dicom_seg(&mask, &series.info, &[1, 2], &names, &opts)
        .unwrap()
        .0;
    Seeds {
        nifti: nifti_seeds(data),
        dicom,
        rtstruct: vec![rt_bone, rt],
        seg: vec![seg],
        ct: series.ct,
        info: series.info,
    }
}

// ---------------------------------------------------------------------------------
// Mutations

const U8S: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0xfe, b'0', b'-', b'.', b'\\', b' '];
const U16S: &[u16] = &[0, 1, 2, 0x7fff, 0x8000, 0xffff, 0xfffe, 8, 16, 32, 255, 256];
const U32S: &[u32] = &[
    0,
    1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0xffff_fffe,
    0x0001_0000,
    0x4000_0000,
    348,
    352,
    540,
];
const F32S: &[f32] = &[
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    0.0,
    -0.0,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
    1e-45,
    1e30,
    -1.0,
];
/// Values a DICOM text number (DS/IS) may be replaced with.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "NaN",
    "inf",
    "-inf",
    "1e308",
    "-1e308",
    "1e-320",
    "65535",
    "65536",
    "4294967295",
    "-2147483648",
    "9999999999",
    "",
    " ",
    "\\",
    "0\\0",
    "1\\0\\0\\0\\1\\0",
    "0\\0\\0\\0\\0\\0",
];
const VRS: &[&[u8; 2]] = &[
    b"SQ", b"OB", b"OW", b"UN", b"US", b"UL", b"SS", b"DS", b"IS", b"UI", b"CS", b"FD", b"FL",
    b"AT", b"LO", b"UT", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV", b"XX",
];

/// Offsets worth mutating more often: NIfTI header fields, DICOM element headers.
#[derive(Clone, Default)]
struct Hot {
    /// (offset, size of the field: 2 or 4 bytes integer, 5 = f32)
    fields: Vec<(usize, u8)>,
    /// DICOM elements: (header offset, explicit VR?, value offset, value length).
    elements: Vec<(usize, bool, usize, usize)>,
}

fn nifti_hot() -> Hot {
    let mut fields = vec![
        (0, 4),
        (40, 2),
        (68, 2),
        (70, 2),
        (72, 2),
        (108, 5),
        (112, 5),
        (116, 5),
    ];
    fields.extend((42..56).step_by(2).map(|o| (o, 2)));
    fields.extend((76..108).step_by(4).map(|o| (o, 5)));
    fields.extend([(252, 2), (254, 2), (344, 4)]);
    fields.extend((256..328).step_by(4).map(|o| (o, 5)));
    Hot {
        fields,
        elements: Vec::new(),
    }
}

/// The element headers of a DICOM file, found by walking it (explicit or implicit VR
/// little endian; sequences and undefined lengths are stepped into).
fn dicom_hot(b: &[u8]) -> Hot {
    let mut h = Hot::default();
    let mut p = if b.get(128..132) == Some(b"DICM") {
        132
    } else {
        0
    };
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    while p + 8 <= b.len() {
        let group = u16_at(p);
        if group == 0xfffe {
            p += 8; // item or delimiter: step into
            continue;
        }
        let vr = [b[p + 4], b[p + 5]];
        let explicit = vr.iter().all(|c| c.is_ascii_uppercase());
        let (head, len) = if explicit {
            if matches!(
                &vr,
                b"OB"
                    | b"OW"
                    | b"OF"
                    | b"SQ"
                    | b"UT"
                    | b"UN"
                    | b"OD"
                    | b"OL"
                    | b"OV"
                    | b"UC"
                    | b"UR"
            ) {
                if p + 12 > b.len() {
                    break;
                }
                (12, u32_at(p + 8))
            } else {
                (8, u16_at(p + 6) as u32)
            }
        } else {
            (8, u32_at(p + 4))
        };
        let value = p + head;
        if &vr == b"SQ" || len == u32::MAX {
            h.elements.push((p, explicit, value, 0));
            p = value;
            continue;
        }
        h.elements.push((p, explicit, value, len as usize));
        p = value + len as usize;
    }
    h
}

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    for (i, &x) in v.iter().enumerate() {
        if let Some(y) = b.get_mut(at + i) {
            *y = x;
        }
    }
}

/// One to eight stacked mutations of `b`; `other` is a second seed for splicing.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, hot: &Hot, other: &[u8]) {
    let rounds = 1 + (rng.below(8) * rng.below(8)) / 8;
    for _ in 0..rounds {
        if b.is_empty() {
            b.extend_from_slice(&other[..other.len().min(1 + rng.below(400))]);
            continue;
        }
        let n = b.len();
        // A position: in a hot spot half of the time.
        let pos = |rng: &mut Rng| -> usize {
            if rng.chance(0.5) && !hot.fields.is_empty() {
                pick(rng, &hot.fields).0.min(n - 1)
            } else if rng.chance(0.5) && !hot.elements.is_empty() {
                let e = pick(rng, &hot.elements);
                (e.0 + rng.below(12)).min(n - 1)
            } else {
                rng.below(n)
            }
        };
        match rng.below(16) {
            0 => {
                let p = pos(rng);
                b[p] ^= 1 << rng.below(8);
            }
            1 => {
                let p = pos(rng);
                b[p] = *pick(rng, U8S);
            }
            2 => {
                let p = pos(rng);
                let v = *pick(rng, U16S);
                let v = if rng.chance(0.5) {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                put(b, p, &v);
            }
            3 => {
                let p = pos(rng);
                let v = *pick(rng, U32S);
                let v = if rng.chance(0.5) {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                put(b, p, &v);
            }
            4 => {
                let p = pos(rng);
                put(b, p, &pick(rng, F32S).to_le_bytes());
            }
            5 => {
                // A typed header field set to an extreme.
                if let Some(&(o, kind)) = (!hot.fields.is_empty()).then(|| pick(rng, &hot.fields)) {
                    match kind {
                        2 => put(b, o, &pick(rng, U16S).to_le_bytes()),
                        4 => put(b, o, &pick(rng, U32S).to_le_bytes()),
                        _ => put(b, o, &pick(rng, F32S).to_le_bytes()),
                    }
                } else {
                    let p = rng.below(n);
                    b[p] = b[p].wrapping_add(rng.below(5) as u8).wrapping_sub(2);
                }
            }
            6 => {
                // A DICOM element's length: an extreme, or off by a little.
                if let Some(&(o, explicit, _, len)) =
                    (!hot.elements.is_empty()).then(|| pick(rng, &hot.elements))
                {
                    let long = !explicit
                        || b.get(o + 4..o + 6).is_some_and(|vr| {
                            matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN")
                        });
                    let at = if !explicit {
                        o + 4
                    } else if long {
                        o + 8
                    } else {
                        o + 6
                    };
                    let v = if rng.chance(0.5) {
                        *pick(rng, U32S)
                    } else {
                        (len as u32)
                            .wrapping_add(rng.below(9) as u32)
                            .wrapping_sub(4)
                    };
                    if long {
                        put(b, at, &v.to_le_bytes());
                    } else {
                        put(b, at, &(v as u16).to_le_bytes());
                    }
                } else {
                    let p = rng.below(n);
                    b[p] = !b[p];
                }
            }
            7 => {
                // A DICOM element's VR or tag.
                if let Some(&(o, explicit, _, _)) =
                    (!hot.elements.is_empty()).then(|| pick(rng, &hot.elements))
                {
                    if explicit && rng.chance(0.5) {
                        put(b, o + 4, *pick(rng, VRS));
                    } else if rng.chance(0.5) {
                        let e = pick(rng, &hot.elements).0;
                        let t: Vec<u8> = b.get(e..e + 4).map(|t| t.to_vec()).unwrap_or_default();
                        put(b, o, &t);
                    } else {
                        let p = o + rng.below(4);
                        if p < n {
                            b[p] = b[p].wrapping_add(1);
                        }
                    }
                }
            }
            8 => {
                // A short DICOM value replaced by a number (text or binary).
                if let Some(&(_, _, v, len)) =
                    (!hot.elements.is_empty()).then(|| pick(rng, &hot.elements))
                    && len <= 64
                    && v + len <= n
                {
                    let s = pick(rng, NUMBERS).as_bytes();
                    let mut val = vec![b' '; len];
                    if rng.chance(0.7) {
                        put(&mut val, 0, s);
                    } else {
                        put(&mut val, 0, &pick(rng, U16S).to_le_bytes());
                    }
                    b[v..v + len].copy_from_slice(&val);
                }
            }
            9 => {
                let cut = rng.below(n);
                b.truncate(cut);
            }
            10 => {
                let a = rng.below(n);
                let len = (1 + rng.below(64)).min(n - a);
                b.drain(a..a + len);
            }
            11 => {
                // Insert random bytes or a copy of a chunk (duplicate).
                let a = rng.below(n + 1);
                let chunk: Vec<u8> = if rng.chance(0.5) {
                    (0..1 + rng.below(32))
                        .map(|_| rng.next_u64() as u8)
                        .collect()
                } else {
                    let s = rng.below(n);
                    b[s..(s + 1 + rng.below(256)).min(n)].to_vec()
                };
                b.splice(a..a, chunk);
            }
            12 => {
                // Overwrite a chunk with a chunk from elsewhere.
                let s = rng.below(n);
                let d = rng.below(n);
                let len = (1 + rng.below(64)).min(n - s).min(n - d);
                let c = b[s..s + len].to_vec();
                b[d..d + len].copy_from_slice(&c);
            }
            13 => {
                // Splice: this seed's start, the other's end.
                if !other.is_empty() {
                    let a = rng.below(n);
                    let c = rng.below(other.len());
                    b.truncate(a);
                    b.extend_from_slice(&other[c..]);
                }
            }
            14 => {
                // Arithmetic on a 16/32-bit value.
                let p = pos(rng);
                if p + 4 <= n {
                    let v = u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
                    let d = rng.below(33) as u32;
                    let v = if rng.chance(0.5) {
                        v.wrapping_add(d)
                    } else {
                        v.wrapping_sub(d)
                    };
                    put(b, p, &v.to_le_bytes());
                }
            }
            _ => {
                // Random bytes over a short run.
                let p = pos(rng);
                for i in 0..1 + rng.below(8) {
                    if let Some(x) = b.get_mut(p + i) {
                        *x = rng.next_u64() as u8;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The loop

#[derive(Default)]
struct Stats {
    execs: u64,
    /// Inputs that asked for an allocation over the limit.
    huge: u64,
    accepted: u64,
    panics: u64,
    slowest: Duration,
    errors: HashSet<String>,
    panic_sites: BTreeMap<String, (u64, PathBuf)>,
}

static PANIC_MSG: Mutex<Option<String>> = Mutex::new(None);

/// An error message with numbers (decimal or hex, e.g. tags) stripped: inputs that give
/// a new one join the corpus.
fn error_class(m: &str) -> String {
    m.chars()
        .take(200)
        .collect::<String>()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) {
                "#"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A corpus entry: the input and, for bytes, its hot spots.
struct Entry {
    input: Input,
    hot: Vec<Hot>,
}

fn entry(t: Target, input: Input) -> Entry {
    let hot = match &input {
        Input::Bytes(b) if t == Target::Nifti => {
            vec![if b.starts_with(&[0x1f, 0x8b]) {
                Hot::default()
            } else {
                nifti_hot()
            }]
        }
        Input::Bytes(b) => vec![dicom_hot(b)],
        Input::Files(fs) => fs.iter().map(|(_, b)| dicom_hot(b)).collect(),
    };
    Entry { input, hot }
}

fn mutant(t: Target, rng: &mut Rng, corpus: &[Entry], n_seeds: usize) -> Input {
    // A seed half of the time, else any corpus entry.
    let e = if rng.chance(0.5) {
        &corpus[rng.below(n_seeds)]
    } else {
        pick(rng, corpus)
    };
    let o = pick(rng, corpus);
    match &e.input {
        Input::Bytes(b) => {
            let other = match &o.input {
                Input::Bytes(x) => x.as_slice(),
                Input::Files(_) => &[],
            };
            let gz = b.starts_with(&[0x1f, 0x8b]);
            if t == Target::Nifti && gz && rng.chance(0.6) {
                // Mutate the NIfTI inside the gzip stream and re-wrap it.
                let mut plain = gunzip(b).unwrap_or_else(|| b.clone());
                mutate(rng, &mut plain, &nifti_hot(), other);
                let mut z = gzip(&plain);
                if rng.chance(0.1) {
                    z.extend(gzip(other)); // a second gzip member
                }
                Input::Bytes(z)
            } else {
                let mut m = b.clone();
                mutate(rng, &mut m, &e.hot[0], other);
                Input::Bytes(m)
            }
        }
        Input::Files(fs) => {
            let mut fs = fs.clone();
            let others: Vec<&(String, Vec<u8>)> = match &o.input {
                Input::Files(x) => x.iter().collect(),
                Input::Bytes(_) => Vec::new(),
            };
            let mut hot = e.hot.clone();
            for _ in 0..1 + rng.below(3) {
                if fs.is_empty() {
                    break;
                }
                let i = rng.below(fs.len());
                match rng.below(10) {
                    0 if fs.len() > 1 => {
                        fs.remove(i);
                        hot.remove(i);
                    }
                    1 => {
                        let f = fs[i].clone();
                        fs.push((format!("{}_dup", f.0), f.1));
                        hot.push(hot[i].clone());
                    }
                    2 if !others.is_empty() => {
                        let f = (*pick(rng, &others)).clone();
                        hot.push(dicom_hot(&f.1));
                        fs.push((format!("{}_other", f.0), f.1));
                    }
                    3 => {
                        let j = rng.below(fs.len());
                        fs.swap(i, j);
                        hot.swap(i, j);
                    }
                    _ => {
                        let other = others
                            .get(rng.below(others.len().max(1)))
                            .map(|f| f.1.as_slice())
                            .unwrap_or(&[]);
                        mutate(rng, &mut fs[i].1, &hot[i], other);
                    }
                }
            }
            Input::Files(fs)
        }
    }
}

fn ext(t: Target) -> &'static str {
    match t {
        Target::Nifti => "nii",
        Target::Dicom => "dcmset",
        _ => "dcm",
    }
}

fn fuzz(
    t: Target,
    seeds: Vec<Input>,
    ctx: &mut Ctx,
    secs: f64,
    seed: u64,
    findings: &Path,
) -> Stats {
    let mut rng = Rng::stream(seed, t as u64);
    let mut corpus: Vec<Entry> = seeds.into_iter().map(|s| entry(t, s)).collect();
    let n_seeds = corpus.len();
    let mut st = Stats::default();
    MAX_ALLOC.store(0, Ordering::Relaxed);
    let _ = HUGE_PATH.set(findings.join("huge-alloc.bin"));
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    let mut next_report = 60.0;
    while start.elapsed() < deadline {
        // The seeds themselves first, then mutants.
        let input = if (st.execs as usize) < corpus.len() {
            corpus[st.execs as usize].input.clone()
        } else {
            mutant(t, &mut rng, &corpus, n_seeds)
        };
        let blob = input.serialize();
        CURRENT_LEN.store(blob.len(), Ordering::SeqCst);
        CURRENT.store(blob.as_ptr() as *mut u8, Ordering::SeqCst);
        let refused = REFUSED.load(Ordering::SeqCst);
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(t, &input, ctx)));
        let dt = t0.elapsed();
        CURRENT.store(std::ptr::null_mut(), Ordering::SeqCst);
        st.execs += 1;
        st.slowest = st.slowest.max(dt);
        if REFUSED.load(Ordering::SeqCst) > refused {
            st.huge += 1;
            let path = findings.join(format!("{}-huge-alloc-{}.{}", t.name(), st.huge, ext(t)));
            let _ = std::fs::write(&path, &blob);
            println!(
                "FINDING [{}]: an allocation over the limit, input saved to {}",
                t.name(),
                path.display()
            );
        }
        match r {
            Ok(None) => st.accepted += 1,
            Ok(Some(m)) => {
                if st.errors.insert(error_class(&m)) && corpus.len() < 512 {
                    corpus.push(entry(t, input));
                }
            }
            Err(_) => {
                st.panics += 1;
                let msg = PANIC_MSG.lock().unwrap().take().unwrap_or_default();
                let site = msg.lines().next().unwrap_or("").to_string();
                if !st.panic_sites.contains_key(&site) {
                    let n = st.panic_sites.len();
                    let path = findings.join(format!("{}-panic-{n}.{}", t.name(), ext(t)));
                    let _ = std::fs::write(&path, &blob);
                    println!(
                        "FINDING [{}]: panic: {msg}\n  input saved to {}",
                        t.name(),
                        path.display()
                    );
                    st.panic_sites.insert(site.clone(), (0, path));
                }
                st.panic_sites.get_mut(&site).unwrap().0 += 1;
            }
        }
        if dt > Duration::from_secs(2) {
            let path = findings.join(format!("{}-slow-{}ms.{}", t.name(), dt.as_millis(), ext(t)));
            let _ = std::fs::write(&path, &blob);
            println!(
                "slow input [{}]: {:.1} s, saved to {}",
                t.name(),
                dt.as_secs_f64(),
                path.display()
            );
        }
        if start.elapsed().as_secs_f64() > next_report {
            next_report += 60.0;
            println!(
                "  [{}] {:.0} s: {} executions, {} panics, {} error kinds, corpus {}",
                t.name(),
                start.elapsed().as_secs_f64(),
                st.execs,
                st.panics,
                st.errors.len(),
                corpus.len()
            );
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{:<9} {:>6.0} s {:>9} executions {:>7.0}/s  panics {}  huge allocations {}  max allocation {:.1} MiB  \
         accepted {}  error kinds {}  slowest {:.0} ms  corpus {}",
        t.name(),
        el,
        st.execs,
        st.execs as f64 / el,
        st.panics,
        st.huge,
        MAX_ALLOC.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        st.accepted,
        st.errors.len(),
        st.slowest.as_secs_f64() * 1e3,
        corpus.len()
    );
    st
}

fn usage() -> ! {
    eprintln!(
        "usage: fuzz_readers [--target all|nifti|dicom|rtstruct|seg] [--secs N (per target)] \
         [--seed S] [--dcmtk-seeds] [--findings DIR] [--data DIR] [--replay FILE] [--alloc-limit MiB (4096)]"
    );
    std::process::exit(2);
}

fn main() {
    let mut targets = vec![Target::Nifti, Target::Dicom, Target::Rtstruct, Target::Seg];
    let mut secs = 10.0;
    let mut seed = 1u64;
    // DICOM seeds re-encoded by DCMTK (RLE, JPEG, deflate, big endian): off by default
    // until dicom-rs's RLE decoder stops panicking on short segments (README).
    let mut dcmtk = false;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut findings = root.join("target/fuzz-findings");
    let mut data = std::env::var_os("MEDLSAM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let mut replay = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--target" => {
                targets = match val().as_str() {
                    "all" => targets,
                    "nifti" => vec![Target::Nifti],
                    "dicom" => vec![Target::Dicom],
                    "rtstruct" => vec![Target::Rtstruct],
                    "seg" => vec![Target::Seg],
                    _ => usage(),
                }
            }
            "--secs" => secs = val().parse().unwrap_or_else(|_| usage()),
            "--seed" => seed = val().parse().unwrap_or_else(|_| usage()),
            "--dcmtk-seeds" => dcmtk = true,
            "--findings" => findings = PathBuf::from(val()),
            "--data" => data = PathBuf::from(val()),
            "--replay" => replay = Some(PathBuf::from(val())),
            "--alloc-limit" => {
                let mib: usize = val().parse().unwrap_or_else(|_| usage());
                ALLOC_LIMIT.store(mib << 20, Ordering::Relaxed);
            }
            _ => usage(),
        }
    }
    std::fs::create_dir_all(&findings).expect("the findings folder");
    std::panic::set_hook(Box::new(|p| {
        let loc = p.location().map(|l| l.to_string()).unwrap_or_default();
        let msg = p
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *PANIC_MSG.lock().unwrap() = Some(format!("at {loc}: {msg}"));
    }));
    let t0 = Instant::now();
    let seeds = make_seeds(&root, &data, &findings, dcmtk);
    let mut ctx = Ctx {
        ct: seeds.ct.clone(),
        info: seeds.info.clone(),
        tmp: findings.join("tmp.nii"),
        execs: 0,
    };
    println!(
        "seed {seed}; seeds (real files, {:.1} s): {} NIfTI, {} DICOM sets, {} RTSTRUCT, {} SEG",
        t0.elapsed().as_secs_f64(),
        seeds.nifti.len(),
        seeds.dicom.len(),
        seeds.rtstruct.len(),
        seeds.seg.len()
    );
    if let Some(path) = replay {
        let _ = HUGE_PATH.set(findings.join("huge-alloc.bin"));
        let input = Input::deserialize(&std::fs::read(&path).expect("the input to replay"));
        for &t in &targets {
            let _ = std::panic::take_hook();
            let r = execute(t, &input, &mut ctx);
            println!("{}: {r:?}", t.name());
        }
        return;
    }
    let mut found = 0;
    for &t in &targets {
        let s: Vec<Input> = match t {
            Target::Nifti => seeds.nifti.iter().cloned().map(Input::Bytes).collect(),
            Target::Dicom => seeds.dicom.iter().cloned().map(Input::Files).collect(),
            Target::Rtstruct => seeds.rtstruct.iter().cloned().map(Input::Bytes).collect(),
            Target::Seg => seeds.seg.iter().cloned().map(Input::Bytes).collect(),
        };
        let st = fuzz(t, s, &mut ctx, secs, seed, &findings);
        found += st.panics + st.huge;
    }
    if found > 0 {
        println!(
            "FAILED: {found} inputs panicked or asked for more than {} MiB (saved in {})",
            ALLOC_LIMIT.load(Ordering::Relaxed) >> 20,
            findings.display()
        );
        std::process::exit(1);
    }
    println!(
        "no panic, no allocation over {} MiB",
        ALLOC_LIMIT.load(Ordering::Relaxed) >> 20
    );
}
