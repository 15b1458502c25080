//! Slice rendering for the browser viewer: axial, coronal and sagittal panes
//! of a canonical (LPS) CT with a label overlay, as RGBA pixel buffers.
//! Pure Rust (no DOM), so it is unit-tested natively.

use crate::output::label_colour;
use crate::volume::{CtVolume, LabelVolume};

/// Window/level presets (width, level) in HU.
pub const PRESETS: [(&str, f32, f32); 4] = [
    ("soft tissue", 400.0, 40.0),
    ("bone", 1800.0, 400.0),
    ("lung", 1500.0, -600.0),
    ("brain", 80.0, 40.0),
];

/// Which pane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Axial,
    Coronal,
    Sagittal,
}

/// How to draw.
#[derive(Clone, Debug)]
pub struct ViewStyle {
    pub window: f32,
    pub level: f32,
    pub opacity: f32,
    /// Labels not drawn.
    pub hidden: Vec<u16>,
}

/// Pixel size of a pane (columns, rows) for a canonical grid.
pub fn pane_size(dims: [usize; 3], pane: Pane) -> (usize, usize) {
    match pane {
        Pane::Axial => (dims[0], dims[1]),
        Pane::Coronal => (dims[0], dims[2]),
        Pane::Sagittal => (dims[1], dims[2]),
    }
}

/// Canonical voxel shown at pane pixel `(x, y)` with the cursor at `cursor`.
/// Radiological view: patient's right on the left (canonical i grows to the left
/// of the patient = rightwards on screen), anterior / superior at the top.
pub fn pane_voxel(
    dims: [usize; 3],
    pane: Pane,
    cursor: [usize; 3],
    x: usize,
    y: usize,
) -> [usize; 3] {
    match pane {
        Pane::Axial => [x, y, cursor[2]],
        Pane::Coronal => [x, cursor[1], dims[2] - 1 - y],
        Pane::Sagittal => [cursor[0], x, dims[2] - 1 - y],
    }
}

/// The 6 extreme points in the order of [`crate::volume::labels::extreme_points`]
/// (canonical LPS: i grows toward the patient's left, j posterior, k superior),
/// as a user is asked to click them.
pub const EXTREME_POINT_PROMPTS: [&str; 6] = [
    "the organ's point furthest to the patient's RIGHT",
    "the organ's point furthest to the patient's LEFT",
    "the organ's most ANTERIOR point (toward the face)",
    "the organ's most POSTERIOR point (toward the back)",
    "the organ's most INFERIOR point (toward the feet)",
    "the organ's most SUPERIOR point (toward the head)",
];

/// Pane pixel `(x, y)` where a canonical voxel is drawn, if it lies on the pane's slice.
pub fn voxel_on_pane(
    dims: [usize; 3],
    pane: Pane,
    cursor: [usize; 3],
    v: [usize; 3],
) -> Option<(usize, usize)> {
    match pane {
        Pane::Axial => (v[2] == cursor[2]).then_some((v[0], v[1])),
        Pane::Coronal => (v[1] == cursor[1]).then_some((v[0], dims[2] - 1 - v[2])),
        Pane::Sagittal => (v[0] == cursor[0]).then_some((v[1], dims[2] - 1 - v[2])),
    }
}

/// Draw a small cross of `colour` centred at pane pixel `(x, y)` into RGBA bytes.
pub fn draw_marker(px: &mut [u8], w: usize, h: usize, (x, y): (usize, usize), colour: [u8; 3]) {
    for d in -2i64..=2 {
        for (xx, yy) in [(x as i64 + d, y as i64), (x as i64, y as i64 + d)] {
            if xx >= 0 && yy >= 0 && (xx as usize) < w && (yy as usize) < h {
                let p = (yy as usize * w + xx as usize) * 4;
                px[p..p + 3].copy_from_slice(&colour);
            }
        }
    }
}

/// Draw the outline of the rectangle `[x0, y0, x1, y1]` (inclusive pane pixels) into RGBA bytes.
pub fn draw_rect(px: &mut [u8], w: usize, h: usize, rect: [usize; 4], colour: [u8; 3]) {
    let [x0, y0, x1, y1] = rect;
    let mut put = |x: usize, y: usize| {
        if x < w && y < h {
            let p = (y * w + x) * 4;
            px[p..p + 3].copy_from_slice(&colour);
        }
    };
    for x in x0..=x1 {
        put(x, y0);
        put(x, y1);
    }
    for y in y0..=y1 {
        put(x0, y);
        put(x1, y);
    }
}

/// Render a pane to RGBA bytes (`pane_size` pixels).
pub fn render_pane(
    ct: &CtVolume,
    labels: Option<&LabelVolume>,
    pane: Pane,
    cursor: [usize; 3],
    st: &ViewStyle,
) -> Vec<u8> {
    let (w, h) = pane_size(ct.dims, pane);
    let lo = st.level - st.window / 2.0;
    let mut out = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let v = pane_voxel(ct.dims, pane, cursor, x, y);
            let g = (((ct.get(v[0], v[1], v[2]) as f32 - lo) / st.window).clamp(0.0, 1.0) * 255.0)
                as u8;
            let mut px = [g, g, g];
            if let Some(l) = labels
                .map(|l| l.get(v[0], v[1], v[2]))
                .filter(|&l| l > 0 && !st.hidden.contains(&l))
            {
                let c = label_colour(l);
                for t in 0..3 {
                    px[t] = ((1.0 - st.opacity) * px[t] as f32 + st.opacity * c[t] as f32) as u8;
                }
            }
            out.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
    }
    out
}

/// Where to look at a segmentation: its fullest axial slice, at the centre of the labelled
/// voxels there (canonical indices); `None` when nothing is labelled.
pub fn result_view(labels: &LabelVolume) -> Option<[usize; 3]> {
    let [nx, _, nz] = labels.dims;
    let count = |k: usize| labels.axial_slice(k).iter().filter(|&&v| v > 0).count();
    // The first of equally full slices.
    let (k, n) = (0..nz)
        .map(|k| (k, count(k)))
        .fold((0, 0), |best, c| if c.1 > best.1 { c } else { best });
    if n == 0 {
        return None;
    }
    let (mut si, mut sj) = (0, 0);
    for (o, _) in labels
        .axial_slice(k)
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0)
    {
        si += o % nx;
        sj += o / nx;
    }
    Some([si / n, sj / n, k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::synthetic::{PhantomOptions, phantom};

    #[test]
    fn panes_show_the_right_voxels() {
        let (ct, lab) = phantom(&PhantomOptions {
            dims: [20, 16, 12],
            spacing_mm: [12.0; 3],
            ..Default::default()
        })
        .unwrap();
        let (c, _) = ct.to_canonical();
        let st = ViewStyle {
            window: 400.0,
            level: 40.0,
            opacity: 0.0,
            hidden: vec![],
        };
        for pane in [Pane::Axial, Pane::Coronal, Pane::Sagittal] {
            let (w, h) = pane_size(c.dims, pane);
            let px = render_pane(&c, Some(&lab), pane, [10, 8, 6], &st);
            assert_eq!(px.len(), w * h * 4);
        }
        // Clicked pixel → voxel → drawn at the same pixel.
        for pane in [Pane::Axial, Pane::Coronal, Pane::Sagittal] {
            let v = pane_voxel(c.dims, pane, [10, 8, 6], 3, 2);
            assert_eq!(voxel_on_pane(c.dims, pane, [10, 8, 6], v), Some((3, 2)));
        }
        assert_eq!(
            voxel_on_pane(c.dims, Pane::Axial, [10, 8, 6], [1, 1, 5]),
            None
        );
        // Coronal row 0 is the top (superior) slice.
        assert_eq!(
            pane_voxel(c.dims, Pane::Coronal, [1, 2, 3], 4, 0),
            [4, 2, 11]
        );
        // Opacity 1 shows the pure label colour.
        let st1 = ViewStyle { opacity: 1.0, ..st };
        let (cl, _) = lab.to_canonical();
        let idx = cl.data.iter().position(|&v| v == 2).unwrap();
        let (i, j, k) = (idx % 20, (idx / 20) % 16, idx / 320);
        let px = render_pane(&c, Some(&cl), Pane::Axial, [0, 0, k], &st1);
        let p = (j * 20 + i) * 4;
        assert_eq!(&px[p..p + 3], &label_colour(2));
    }

    #[test]
    fn result_view_is_the_centre_of_the_fullest_slice() {
        let affine = crate::volume::Affine::identity();
        let mut lab = LabelVolume::from_data([6, 5, 4], vec![0; 120], affine).unwrap();
        assert_eq!(result_view(&lab), None);
        // Slice 1: one voxel; slice 2: a 3×2 block at i 2-4, j 1-2.
        let one = lab.index(0, 0, 1);
        lab.data[one] = 3;
        for (i, j) in [(2, 1), (3, 1), (4, 1), (2, 2), (3, 2), (4, 2)] {
            let o = lab.index(i, j, 2);
            lab.data[o] = 1;
        }
        assert_eq!(result_view(&lab), Some([3, 1, 2]));
    }

    #[test]
    fn rectangles_are_outlines_clipped_to_the_pane() {
        let (w, h) = (8, 6);
        let mut px = vec![0u8; w * h * 4];
        draw_rect(&mut px, w, h, [1, 1, 3, 4], [9, 9, 9]);
        let lit = |x: usize, y: usize| px[(y * w + x) * 4] == 9;
        assert!(lit(1, 1) && lit(3, 4) && lit(2, 1) && lit(1, 3));
        assert!(!lit(2, 2), "inside stays clear");
        assert!(!lit(0, 0) && !lit(4, 1));
        // Partly outside: no panic, visible part drawn.
        draw_rect(&mut px, w, h, [6, 4, 20, 30], [7, 7, 7]);
        assert_eq!(px[(4 * w + 7) * 4], 7);
    }
}
