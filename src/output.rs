//! Outputs of a run, all in the query **file's** voxel indices: the boxes JSON
//! (`<case>.boxes.json`), the metrics CSV rows, and a PNG overview with
//! coloured label overlays and boxes. Writing to disk is left to the shells
//! (CLI: files; web: downloads), so these functions return values or bytes.

use serde::Serialize;

use crate::metrics::LabelMetrics;
use crate::types::OrganLocalization;
use crate::volume::dicom::DicomInfo;
use crate::volume::dicom_derived::{DerivedOptions, dicom_date_time};
use crate::volume::dicom_seg::write_dicom_seg;
use crate::volume::label_table::LabelTable;
use crate::volume::labels::BoxVox;
use crate::volume::rtstruct::write_rtstruct;
use crate::volume::{CtVolume, LabelVolume, Reorientation};
use crate::{Error, Result};

/// `<case>.boxes.json`.
#[derive(Clone, Debug, Serialize)]
pub struct BoxesJson {
    pub case: String,
    /// File voxel axis along which `slice_boxes` are cut (the axial axis; 2 for usual files).
    pub slice_axis: usize,
    pub organs: Vec<OrganBoxesJson>,
}

/// One organ in [`BoxesJson`]; indices are the query file's voxel indices, inclusive.
#[derive(Clone, Debug, Serialize)]
pub struct OrganBoxesJson {
    pub label: u16,
    pub name: String,
    /// What placed the organ: `medlam`, `register`, `oracle` or `given`.
    pub localizer: &'static str,
    /// Why the preferred localizer was not used for this organ, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// How the mask was drawn when not from the registration prior alone (organs the
    /// registration placed), e.g. "LiteMedSAM inside the registration's boxes".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_from: Option<String>,
    pub confidence: f32,
    /// Fraction of the predicted box inside the scan.
    pub in_view: f32,
    /// Predicted (mostly) outside the scan: no slice boxes and no mask.
    pub outside_field_of_view: bool,
    pub extreme_points: Vec<[usize; 3]>,
    #[serde(rename = "box")]
    pub bbox: BoxVox,
    pub slice_boxes: Vec<SliceBoxJson>,
}

/// A 2-D box on slice `k` of the slice axis; `min`/`max` over the other two file axes in order.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SliceBoxJson {
    pub k: usize,
    pub min: [usize; 2],
    pub max: [usize; 2],
}

fn file_box(r: &Reorientation, a: [usize; 3], b: [usize; 3]) -> BoxVox {
    let (fa, fb) = (r.canonical_to_file(a), r.canonical_to_file(b));
    BoxVox {
        min: [0, 1, 2].map(|t| fa[t].min(fb[t])),
        max: [0, 1, 2].map(|t| fa[t].max(fb[t])),
    }
}

/// Convert canonical localizations to the file-index JSON of one case.
pub fn boxes_json(
    case: &str,
    organs: &[OrganLocalization],
    r: &Reorientation,
    names: &LabelTable,
) -> BoxesJson {
    let slice_axis = r.perm[2];
    let others: Vec<usize> = (0..3).filter(|&a| a != slice_axis).collect();
    let organs = organs
        .iter()
        .map(|o| OrganBoxesJson {
            label: o.label,
            name: names.name(o.label),
            localizer: o.source,
            warning: o.warning.clone(),
            mask_from: o.mask_from.clone(),
            confidence: o.confidence,
            in_view: o.in_view,
            outside_field_of_view: o.outside_view(),
            extreme_points: o
                .extreme_points
                .iter()
                .map(|&p| r.canonical_to_file(p))
                .collect(),
            bbox: file_box(r, o.bbox.min, o.bbox.max),
            slice_boxes: o
                .slice_boxes
                .iter()
                .map(|s| {
                    let b = file_box(r, [s.min[0], s.min[1], s.k], [s.max[0], s.max[1], s.k]);
                    SliceBoxJson {
                        k: b.min[slice_axis],
                        min: [b.min[others[0]], b.min[others[1]]],
                        max: [b.max[others[0]], b.max[others[1]]],
                    }
                })
                .collect(),
        })
        .collect();
    BoxesJson {
        case: case.to_string(),
        slice_axis,
        organs,
    }
}

/// Header of `metrics.csv`.
pub const METRICS_CSV_HEADER: &str = "case,label,name,dsc,hd95,box_iou,wd,ale";

/// One `metrics.csv` row (empty fields where a metric is undefined).
pub fn metrics_csv_row(case: &str, name: &str, m: &LabelMetrics) -> String {
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
    let name = if name.contains(',') || name.contains('"') {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.into()
    };
    format!(
        "{case},{},{name},{},{},{},{},{}",
        m.label,
        f(m.dsc),
        f(m.hd95_mm),
        f(m.box_iou),
        f(m.wd_mm),
        f(m.ale_mm)
    )
}

/// Per-label mean ± sample standard deviation over cases of one metric.
pub fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some((mean, sd))
}

/// Median of values (mean of the middle two for an even count; 0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A distinct colour per label value.
pub fn label_colour(label: u16) -> [u8; 3] {
    const P: [[u8; 3]; 10] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ];
    P[(label as usize + P.len() - 1) % P.len()]
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[u8; 3]>,
}

impl Canvas {
    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            self.px[y * self.w + x] = c;
        }
    }
}

/// PNG overview of a result: axial slices through the organs (boxes drawn) and one
/// coronal slice, soft-tissue window, labels blended at 45 %. Inputs on the file
/// grid; drawn in the canonical radiological view (patient's right on the left).
pub fn overview_png(
    ct: &CtVolume,
    seg: &LabelVolume,
    organs: &[OrganLocalization],
) -> Result<Vec<u8>> {
    ct.check_same_grid(seg, "image and segmentation")?;
    let (c, _) = ct.to_canonical();
    let (s, _) = seg.to_canonical();
    let [nx, ny, nz] = c.dims;
    let sp = c.spacing_mm();
    let picks = axial_picks(&s, organs);
    let jc = coronal_j(&s);
    // Display scale: each tile about 256 px wide, mm-isotropic.
    let scale = 256.0 / (nx as f64 * sp[0]);
    let tile_w = 256usize;
    let ax_h = ((ny as f64 * sp[1]) * scale).round().max(1.0) as usize;
    let co_h = ((nz as f64 * sp[2]) * scale).round().max(1.0) as usize;
    let h = ax_h.max(co_h);
    let mut cv = Canvas {
        w: tile_w * (picks.len() + 1),
        h,
        px: vec![[0, 0, 0]; tile_w * (picks.len() + 1) * h],
    };
    let tiles = Tiles {
        ct: &c,
        seg: &s,
        sp,
        scale,
        tile_w,
    };
    for (t, &k) in picks.iter().enumerate() {
        tiles.axial(&mut cv, k, t, ax_h);
        tiles.boxes(&mut cv, organs, k, t);
    }
    tiles.coronal(&mut cv, jc, picks.len(), co_h);
    encode_png(&cv)
}

/// Axial slices: quartiles of the segmented (or boxed) slice range, else the middle
/// (canonical `seg`).
fn axial_picks(s: &LabelVolume, organs: &[OrganLocalization]) -> Vec<usize> {
    let nz = s.dims[2];
    let mut ks: Vec<usize> = (0..nz)
        .filter(|&k| s.axial_slice(k).iter().any(|&v| v > 0))
        .collect();
    if ks.is_empty() {
        ks = organs
            .iter()
            .flat_map(|o| o.slice_boxes.iter().map(|b| b.k))
            .collect();
        ks.sort_unstable();
    }
    if ks.is_empty() {
        vec![nz / 2]
    } else {
        [1, 2, 3].map(|q| ks[(ks.len() - 1) * q / 4]).to_vec()
    }
}

/// Coronal slice through the labelled voxels' mean j (or the middle), canonical `seg`.
fn coronal_j(s: &LabelVolume) -> usize {
    let [nx, ny, _] = s.dims;
    let (mut sj, mut cnt) = (0usize, 0usize);
    for (idx, &v) in s.data.iter().enumerate() {
        if v > 0 {
            sj += (idx / nx) % ny;
            cnt += 1;
        }
    }
    sj.checked_div(cnt).unwrap_or(ny / 2)
}

/// Soft-tissue window of a HU value, grey level.
fn window(hu: i16) -> u8 {
    (((hu as f32 + 160.0) / 400.0).clamp(0.0, 1.0) * 255.0) as u8
}

/// A grey level with label `l`'s colour blended at 45 %.
fn blend(g: u8, l: u16) -> [u8; 3] {
    if l == 0 {
        [g, g, g]
    } else {
        let c = label_colour(l);
        c.map(|x| (0.55 * g as f32 + 0.45 * x as f32) as u8)
    }
}

/// The canonical CT and labels drawn into the overview's tiles, `scale` px per mm.
struct Tiles<'a> {
    ct: &'a CtVolume,
    seg: &'a LabelVolume,
    sp: [f64; 3],
    scale: f64,
    tile_w: usize,
}

impl Tiles<'_> {
    /// Axial slice `k` into tile `t` (`ax_h` rows).
    fn axial(&self, cv: &mut Canvas, k: usize, t: usize, ax_h: usize) {
        let (c, s, sp, scale, tile_w) = (self.ct, self.seg, self.sp, self.scale, self.tile_w);
        let [nx, ny, _] = c.dims;
        for y in 0..ax_h {
            let j = ((y as f64 / scale / sp[1]) as usize).min(ny - 1);
            for x in 0..tile_w {
                let i = ((x as f64 / scale / sp[0]) as usize).min(nx - 1);
                cv.put(
                    t * tile_w + x,
                    y,
                    blend(window(c.get(i, j, k)), s.get(i, j, k)),
                );
            }
        }
    }

    /// The organs' boxes on axial slice `k` into tile `t`.
    fn boxes(&self, cv: &mut Canvas, organs: &[OrganLocalization], k: usize, t: usize) {
        let (sp, scale, tile_w) = (self.sp, self.scale, self.tile_w);
        for o in organs {
            for b in o.slice_boxes.iter().filter(|b| b.k == k) {
                let col = label_colour(o.label);
                let x0 = (b.min[0] as f64 * sp[0] * scale) as usize + t * tile_w;
                let x1 = ((b.max[0] + 1) as f64 * sp[0] * scale) as usize + t * tile_w;
                let y0 = (b.min[1] as f64 * sp[1] * scale) as usize;
                let y1 = ((b.max[1] + 1) as f64 * sp[1] * scale) as usize;
                for x in x0..=x1.min((t + 1) * tile_w - 1) {
                    cv.put(x, y0, col);
                    cv.put(x, y1, col);
                }
                for y in y0..=y1 {
                    cv.put(x0, y, col);
                    cv.put(x1.min((t + 1) * tile_w - 1), y, col);
                }
            }
        }
    }

    /// Coronal slice `jc` into tile `t` (`co_h` rows), superior at the top.
    fn coronal(&self, cv: &mut Canvas, jc: usize, t: usize, co_h: usize) {
        let (c, s, sp, scale, tile_w) = (self.ct, self.seg, self.sp, self.scale, self.tile_w);
        let [nx, _, nz] = c.dims;
        for y in 0..co_h {
            // superior at the top
            let k = nz - 1 - ((y as f64 / scale / sp[2]) as usize).min(nz - 1);
            for x in 0..tile_w {
                let i = ((x as f64 / scale / sp[0]) as usize).min(nx - 1);
                cv.put(
                    t * tile_w + x,
                    y,
                    blend(window(c.get(i, jc, k)), s.get(i, jc, k)),
                );
            }
        }
    }
}

fn encode_png(cv: &Canvas) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, cv.w as u32, cv.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc
            .write_header()
            .map_err(|e| Error::Io(std::io::Error::other(format!("png: {e}"))))?;
        let data: Vec<u8> = cv.px.iter().flatten().copied().collect();
        wr.write_image_data(&data)
            .map_err(|e| Error::Io(std::io::Error::other(format!("png: {e}"))))?;
    }
    Ok(out)
}

/// The DICOM objects a run writes beside the NIfTI of a DICOM query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DicomOutputs {
    /// `<case>.rtstruct.dcm`: an RT Structure Set (contours).
    pub rtstruct: bool,
    /// `<case>.seg.dcm`: a DICOM Segmentation (binary frames).
    pub seg: bool,
}

impl DicomOutputs {
    /// Both objects.
    pub const BOTH: Self = Self {
        rtstruct: true,
        seg: true,
    };

    pub fn any(&self) -> bool {
        self.rtstruct || self.seg
    }
}

/// The seconds since 1970 (UTC) now, for the date of derived objects (0 if the clock is
/// before 1970).
pub fn unix_now() -> u64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `<case>.rtstruct.dcm` and/or `<case>.seg.dcm` of `organs` in `labels` (the query's
/// file grid) for a query read from DICOM (`info`), dated `unix_seconds` (UTC): their
/// file names and bytes. The CLI writes them as files, the page offers them as
/// downloads: both call this, so their files differ only in the date and time
/// (StructureSetDate/Time, ContentDate/Time). A SEG needs a frame: a result without
/// any of the organs gets no SEG (the NIfTI says so).
pub fn dicom_output_files(
    case: &str,
    labels: &LabelVolume,
    organs: &[u16],
    names: &LabelTable,
    info: &DicomInfo,
    outputs: DicomOutputs,
    unix_seconds: u64,
) -> Result<Vec<(String, Vec<u8>)>> {
    let (date, time) = dicom_date_time(unix_seconds);
    let options = DerivedOptions {
        date,
        time,
        series_number: None,
    };
    let mut files = Vec::new();
    if outputs.rtstruct {
        let (bytes, _) = write_rtstruct(labels, info, organs, names, &options)?;
        files.push((format!("{case}.rtstruct.dcm"), bytes));
    }
    if outputs.seg && organs.iter().any(|o| labels.data.contains(o)) {
        let (bytes, _) = write_dicom_seg(labels, info, organs, names, &options)?;
        files.push((format!("{case}.seg.dcm"), bytes));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::OracleLocalizer;
    use crate::types::{BoxMode, Localizer};
    use crate::volume::synthetic::{PhantomOptions, phantom};

    #[test]
    fn boxes_json_uses_file_indices_in_any_orientation() {
        let opt = PhantomOptions {
            dims: [40, 36, 30],
            spacing_mm: [6.0; 3],
            ..Default::default()
        };
        let mut per_orientation = Vec::new();
        for ras in [false, true] {
            let (ct, lab) = phantom(&PhantomOptions { ras, ..opt.clone() }).unwrap();
            let (c, r) = ct.to_canonical();
            let mut loc = OracleLocalizer::new(&ct, &lab, BoxMode::Wpl).unwrap();
            let found = pollster::block_on(loc.localize(&c, &[2])).unwrap();
            let j = boxes_json("x", &found, &r, &LabelTable::default());
            let o = &j.organs[0];
            // The file-index box is the file label map's own bounding box.
            assert_eq!(
                o.bbox,
                crate::volume::labels::bounding_box(&lab, 2).unwrap()
            );
            for p in &o.extreme_points {
                assert_eq!(lab.get(p[0], p[1], p[2]), 2);
            }
            assert_eq!(j.slice_axis, 2);
            assert_eq!(o.slice_boxes.len(), o.bbox.size()[2]);
            assert_eq!(o.slice_boxes[0].min, [o.bbox.min[0], o.bbox.min[1]]);
            per_orientation.push(o.bbox);
            let text = serde_json::to_string(&j).unwrap();
            assert!(text.contains("\"box\":{\"min\""));
        }
        // RAS flips i and j: the same organ has mirrored file indices.
        assert_eq!(
            per_orientation[1].min[0],
            40 - 1 - per_orientation[0].max[0]
        );
    }

    #[test]
    fn csv_and_png() {
        let m = LabelMetrics {
            label: 3,
            pred_voxels: 1,
            truth_voxels: 1,
            dsc: Some(91.5),
            hd95_mm: None,
            box_iou: Some(80.0),
            wd_mm: Some(1.25),
            ale_mm: Some(2.0),
        };
        assert_eq!(
            metrics_csv_row("c1", "a,b", &m),
            "c1,3,\"a,b\",91.5000,,80.0000,1.2500,2.0000"
        );
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0]).unwrap();
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [40, 36, 30],
            spacing_mm: [6.0; 3],
            ..Default::default()
        })
        .unwrap();
        let png = overview_png(&ct, &lab, &[]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
