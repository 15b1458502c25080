//! Intensity templates: the last localization step. On each support, the organ's bounding
//! box cut from its 3 mm grid (MedLAM intensities) is a template; in the query it is slid
//! around the organ's located centre, and the placement with the highest normalised
//! cross-correlation (NCC) is that support's estimate of the organ's centre. The organ
//! moves to the per-axis median of the supports' estimates (see
//! [`super::localize::apply_templates`]).
//!
//! MSS compares learned feature windows of a few voxels; the template compares the raw
//! intensities of the whole organ box, which pins bone-anchored organs (mandible,
//! brainstem) and the parotids closer than the features of our small network do
//! (README: MedLAM localization). NCC is invariant to the scanner's intensity scale.
//!
//! The correlation runs as Burn `conv3d` (query region ⊛ template, and ⊛ ones for the
//! region's local sums), so it runs on any backend, in the browser too.

use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};

use super::prep::Prepared;
use crate::Result;
use crate::device::read_f32;

/// One support's template of one organ.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    /// Size on the 3 mm grid (canonical axis order).
    pub dims: [usize; 3],
    /// The box's intensities with their mean subtracted and scaled to unit norm (what the
    /// correlation uses), in NIfTI order (axis 0 fastest).
    pub weights: Vec<f32>,
    /// The organ's box centre in template voxels (continuous).
    pub centre: [f64; 3],
}

/// Values below this spread (variance per voxel) are flat: no template, no match.
const MIN_VARIANCE: f64 = 1e-6;

impl Template {
    /// The template of the grid box `lo..=hi` (grid voxels, clamped to the grid) around an
    /// organ whose box centre is `centre` (grid voxels); `None` if the box is empty or flat.
    pub fn cut(prep: &Prepared, lo: [i64; 3], hi: [i64; 3], centre: [f64; 3]) -> Option<Self> {
        let d = prep.dims.map(|x| x as i64);
        let lo = [0, 1, 2].map(|a| lo[a].clamp(0, d[a] - 1));
        let hi = [0, 1, 2].map(|a| hi[a].clamp(0, d[a] - 1));
        if (0..3).any(|a| hi[a] < lo[a]) {
            return None;
        }
        let dims = [0, 1, 2].map(|a| (hi[a] - lo[a] + 1) as usize);
        let mut data = Vec::with_capacity(dims.iter().product());
        for k in lo[2]..=hi[2] {
            for j in lo[1]..=hi[1] {
                for i in lo[0]..=hi[0] {
                    data.push(prep.at([i, j, k]));
                }
            }
        }
        let n = data.len() as f64;
        let mean = data.iter().map(|&x| x as f64).sum::<f64>() / n;
        let variance = data.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        if variance < MIN_VARIANCE {
            return None;
        }
        let norm = (variance * n).sqrt();
        Some(Self {
            dims,
            weights: data
                .iter()
                .map(|&v| ((v as f64 - mean) / norm) as f32)
                .collect(),
            centre: [0, 1, 2].map(|a| centre[a] - lo[a] as f64),
        })
    }

    /// The template's weight tensor `[1, 1, K, J, I]`.
    fn tensor(&self, device: &Device) -> Tensor<5> {
        let [x, y, z] = self.dims;
        Tensor::from_data(
            TensorData::new(self.weights.clone(), [1, 1, z, y, x]),
            device,
        )
    }
}

/// Slide `t` so that its organ centre lands within `radius` grid voxels (per axis) of
/// `centre` in the query; the best placement's organ centre (grid voxels) and its NCC.
/// `None` where every placement covers a flat region (e.g. all air).
pub async fn match_template(
    query: &Prepared,
    t: &Template,
    centre: [f64; 3],
    radius: usize,
    device: &Device,
) -> Result<Option<([f64; 3], f32)>> {
    let r = radius as i64;
    // Grid voxel of the template's first voxel at zero shift.
    let base = [0, 1, 2].map(|a| (centre[a] - t.centre[a]).round() as i64);
    let dims = [0, 1, 2].map(|a| t.dims[a] + 2 * radius);
    let mut region = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] as i64 {
        for j in 0..dims[1] as i64 {
            for i in 0..dims[0] as i64 {
                region.push(query.at([base[0] - r + i, base[1] - r + j, base[2] - r + k]));
            }
        }
    }
    let squares: Vec<f32> = region.iter().map(|v| v * v).collect();
    let shape = [1, 1, dims[2], dims[1], dims[0]];
    let region = Tensor::<5>::from_data(TensorData::new(region, shape), device);
    let squares = Tensor::<5>::from_data(TensorData::new(squares, shape), device);
    let [x, y, z] = t.dims;
    let ones = Tensor::<5>::ones([1, 1, z, y, x], device);
    let opts = || ConvOptions::new([1, 1, 1], [0, 0, 0], [1, 1, 1], 1);
    // Σ region·t̂ (t̂ zero-mean, unit norm), Σ region and Σ region² under each placement,
    // read back from the device together (one read-back per template, not three).
    let maps = Tensor::cat(
        vec![
            conv3d(region.clone(), t.tensor(device), None, opts()),
            conv3d(region, ones.clone(), None, opts()),
            conv3d(squares, ones, None, opts()),
        ],
        1,
    );
    let all = read_f32(maps).await?;
    let placements = all.len() / 3;
    let (num, rest) = all.split_at(placements);
    let (sum, sum2) = rest.split_at(placements);
    let n = t.weights.len() as f64;
    let side = 2 * radius + 1;
    let mut best: Option<(usize, f32)> = None;
    for (idx, ((&c, &s), &s2)) in num.iter().zip(sum).zip(sum2).enumerate() {
        // Flat regions (also relative to the sums, below the f32 rounding of the sums).
        let var = s2 as f64 - (s as f64).powi(2) / n;
        if var < MIN_VARIANCE * n || var < 1e-4 * s2 as f64 {
            continue;
        }
        let score = (c as f64 / var.sqrt()) as f32;
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((idx, score));
        }
    }
    Ok(best.map(|(idx, score)| {
        let shift = [idx % side, (idx / side) % side, idx / (side * side)];
        (
            [0, 1, 2].map(|a| (base[a] - r + shift[a] as i64) as f64 + t.centre[a]),
            score,
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::resample::ResampleGrid;

    /// A 3 mm grid with a bright ellipsoid and a dimmer block (NIfTI order).
    fn grid(dims: [usize; 3], shift: [i64; 3]) -> Prepared {
        let mut data = Vec::new();
        for k in 0..dims[2] as i64 {
            for j in 0..dims[1] as i64 {
                for i in 0..dims[0] as i64 {
                    let p = [i - shift[0], j - shift[1], k - shift[2]];
                    let e = ((p[0] - 12) as f64 / 4.0).powi(2)
                        + ((p[1] - 10) as f64 / 3.0).powi(2)
                        + ((p[2] - 9) as f64 / 5.0).powi(2);
                    let block = (16..20).contains(&p[0]) && (4..8).contains(&p[1]);
                    data.push(if e < 1.0 {
                        0.9
                    } else if block {
                        0.5
                    } else {
                        0.2 + 0.01 * (p[0] * 7 + p[1] * 3 + p[2]).rem_euclid(5) as f32
                    });
                }
            }
        }
        let g = ResampleGrid::new(dims, [3.0; 3], [3.0; 3]).unwrap();
        Prepared::from_parts(dims, data, g).unwrap()
    }

    #[test]
    fn template_finds_the_shifted_organ() {
        let dev = Device::flex();
        let support = grid([30, 26, 22], [0, 0, 0]);
        // The organ box around the ellipsoid and the block, centre (14, 8.5, 9).
        let t = Template::cut(&support, [8, 4, 4], [20, 14, 14], [14.0, 9.0, 9.0]).unwrap();
        assert_eq!(t.dims, [13, 11, 11]);
        assert_eq!(t.centre, [6.0, 5.0, 5.0]);
        // In the query everything lies 3, −2, 2 voxels away; start 1 voxel off the truth.
        let query = grid([30, 26, 22], [3, -2, 2]);
        let start = [16.0, 8.0, 11.0];
        let (found, score) = pollster::block_on(match_template(&query, &t, start, 3, &dev))
            .unwrap()
            .unwrap();
        assert_eq!(found, [17.0, 7.0, 11.0]);
        assert!(score > 0.99, "{score}");
        // Out of reach (radius 0): the start itself, with a lower score.
        let (at0, s0) = pollster::block_on(match_template(&query, &t, start, 0, &dev))
            .unwrap()
            .unwrap();
        assert_eq!(at0, start);
        assert!(s0 < score);
    }

    #[test]
    fn flat_templates_and_regions_give_nothing() {
        let dev = Device::flex();
        let g = ResampleGrid::new([40; 3], [3.0; 3], [3.0; 3]).unwrap();
        let flat = Prepared::from_parts([40; 3], vec![0.3; 64000], g).unwrap();
        assert!(Template::cut(&flat, [2, 2, 2], [5, 5, 5], [3.5; 3]).is_none());
        // A box entirely outside the grid is clamped onto its border, still flat here.
        assert!(Template::cut(&flat, [50, 50, 50], [55, 55, 55], [52.0; 3]).is_none());
        let support = grid([30, 26, 22], [0, 0, 0]);
        let t = Template::cut(&support, [8, 4, 4], [20, 14, 14], [14.0, 9.0, 9.0]).unwrap();
        let m = pollster::block_on(match_template(&flat, &t, [20.0; 3], 2, &dev)).unwrap();
        assert!(m.is_none());
        // Partly outside the grid (air there) is not flat.
        let m = pollster::block_on(match_template(&flat, &t, [3.0; 3], 2, &dev)).unwrap();
        assert!(m.is_some());
    }

    #[test]
    fn apply_templates_moves_the_organ_to_the_supports_median_match() {
        use crate::medlam::atlas::{Atlas, OrganAtlas, PointAtlas};
        use crate::medlam::localize::{QueryState, apply_templates, organ_points, organs_in_view};
        use crate::medlam::net::MedLamConfig;
        use crate::types::BoxMode;
        let dev = Device::flex();
        let cut = |shift: [i64; 3]| {
            let s = grid([30, 26, 22], shift);
            let c = [
                14.0 + shift[0] as f64,
                9.0 + shift[1] as f64,
                9.0 + shift[2] as f64,
            ];
            let lo = [8 + shift[0], 4 + shift[1], 4 + shift[2]];
            let hi = [20 + shift[0], 14 + shift[1], 14 + shift[2]];
            Template::cut(&s, lo, hi, c).unwrap()
        };
        // Three supports with the organ at three places: the templates are the same
        // (each cut around its organ), so all three find the query's organ.
        let pt = PointAtlas {
            position: [0.0; 3],
            windows: [vec![], vec![], vec![]],
            per_support: vec![],
            offset_mm: [0.0; 3],
        };
        let atlas = Atlas {
            config: MedLamConfig::new(16, [2, 2, 4, 4, 8], [4, 4, 4, 2], [8, 4]),
            mode: BoxMode::Wpl,
            organs: vec![OrganAtlas {
                label: 1,
                parts: vec![std::array::from_fn(|_| pt.clone())],
                supports: 3,
                centres_mm: vec![],
                templates: vec![cut([0, 0, 0]), cut([1, 1, 0]), cut([-2, 0, 1])],
            }],
        };
        let prep = grid([30, 26, 22], [3, -2, 2]);
        let q = QueryState {
            prep,
            body_lo: [0; 3],
            body_hi: [29, 25, 21],
            position: [0.0; 3],
            centre: [15.0, 13.0, 11.0],
            canonical_dims: [30, 26, 22],
        };
        let (points, layout) = organ_points(&atlas, &[1]);
        let in_view = organs_in_view(&q, &points, &layout);
        // Located 2 voxels off along each axis (all 6 points at the centre, zero offsets).
        let located = vec![[19.0, 5.0, 13.0]; 6];
        let moved = |r| {
            pollster::block_on(apply_templates(
                &q, &located, &points, &layout, &atlas, &in_view, r, &dev,
            ))
            .unwrap()
        };
        assert_eq!(moved(3), vec![[17.0, 7.0, 11.0]; 6]);
        // Radius 0 turns the step off.
        assert_eq!(moved(0), located);
    }
}
