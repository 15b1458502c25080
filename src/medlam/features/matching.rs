//! Matching support windows in a [`FeatureFrame`]: each window correlated with the frame
//! at its scale, the three scales sampled at every candidate voxel and averaged, the
//! best voxel of each search kept.

use burn::tensor::Tensor;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;

use super::{FeatureFrame, WINDOWS};
use crate::{Error, Result};

/// A search for one support window.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// Where the search is centred (frame voxel, continuous).
    pub centre: [f64; 3],
    /// Half-width of the search cube (voxels); `None` searches the whole frame.
    pub radius: Option<usize>,
}

/// The best match of one search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// Frame voxel of the matched point.
    pub point: [i64; 3],
    /// Mean cosine similarity over the window, averaged over the scales.
    pub score: f32,
}

impl FeatureFrame {
    /// Best matches of support windows (`windows[s]`: `[n, C_s, w, w, w]`, one per search).
    pub async fn best_matches(
        &self,
        windows: &[Tensor<5>; 3],
        searches: &[Search],
    ) -> Result<Vec<Match>> {
        let n = searches.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if windows.iter().any(|w| w.dims()[0] != n) {
            return Err(Error::Model(format!(
                "{} searches but {} support windows",
                n,
                windows[0].dims()[0]
            )));
        }
        let boxes = self.candidate_boxes(searches);
        let mut blocks: Vec<Vec<SimilarityBlock>> = Vec::new();
        for (s, window) in windows.iter().enumerate() {
            blocks.push(self.similarities(s, window, &boxes).await?);
        }
        Ok(self.combine_scales(&boxes, &blocks))
    }

    /// Candidate boxes (frame voxels, inclusive) per search.
    fn candidate_boxes(&self, searches: &[Search]) -> Vec<([i64; 3], [i64; 3])> {
        searches
            .iter()
            .map(|s| {
                let c = s.centre.map(|x| x.round() as i64);
                let lo = [0, 1, 2].map(|a| match s.radius {
                    Some(r) => (c[a] - r as i64).clamp(0, self.size[a] as i64 - 1),
                    None => 0,
                });
                let hi = [0, 1, 2].map(|a| match s.radius {
                    Some(r) => (c[a] + r as i64).clamp(0, self.size[a] as i64 - 1),
                    None => self.size[a] as i64 - 1,
                });
                (lo, hi)
            })
            .collect()
    }

    /// Scale `s`: similarity samples on the lattice t (window centre at t·s − 0.5), for
    /// t in t0..t0+len per axis, one block per search box (`window`: `[n, C_s, w, w, w]`).
    async fn similarities(
        &self,
        s: usize,
        window: &Tensor<5>,
        boxes: &[([i64; 3], [i64; 3])],
    ) -> Result<Vec<SimilarityBlock>> {
        let n = boxes.len();
        let st = self.strides[s] as i64;
        let w = WINDOWS[s];
        let g = self.margins[s] as i64;
        let m = self.size.map(|x| x as i64 / st);
        let c = self.maps[s].dims()[1];
        // Lattice range per search (t0 ≥ 0, t1 ≤ m); a common length for batching.
        let spans: Vec<[i64; 3]> = boxes
            .iter()
            .map(|(lo, _)| [0, 1, 2].map(|a| (lo[a] / st).clamp(0, m[a])))
            .collect();
        let len = [0, 1, 2].map(|a| {
            boxes
                .iter()
                .zip(&spans)
                .map(|((_, hi), t0)| ((hi[a] + st - 1) / st).min(m[a]) - t0[a] + 1)
                .max()
                .unwrap_or(1) as usize
        });
        // Shift a span back if it would run past the end (the map has only `g` margin).
        let spans: Vec<[i64; 3]> = spans
            .iter()
            .map(|t0| [0, 1, 2].map(|a| t0[a].min(m[a] + 1 - len[a] as i64).max(0)))
            .collect();
        let len = [0, 1, 2].map(|a| len[a].min(m[a] as usize + 1));
        // Input crops: feature voxels t0 − w/2 .. t0 + len − 1 + w/2 (in map coordinates + g).
        let crop = |t0: &[i64; 3]| {
            let r = [0, 1, 2].map(|a| {
                let a0 = (t0[a] - (w / 2) as i64 + g) as usize;
                a0..a0 + len[a] + w - 1
            });
            self.maps[s]
                .clone()
                .slice([0..1, 0..c, r[2].clone(), r[1].clone(), r[0].clone()])
        };
        // Searches over the same span (e.g. whole-frame ones) share one crop; otherwise
        // each window is correlated with its own crop (a grouped convolution).
        let sim = if spans.iter().all(|t| t == &spans[0]) {
            conv3d(
                crop(&spans[0]),
                window.clone(),
                None,
                ConvOptions::new([1, 1, 1], [0, 0, 0], [1, 1, 1], 1),
            )
        } else {
            let input = Tensor::cat(spans.iter().map(crop).collect(), 1); // [1, n·C, ..]
            conv3d(
                input,
                window.clone(),
                None,
                ConvOptions::new([1, 1, 1], [0, 0, 0], [1, 1, 1], n),
            )
        }
        .div_scalar((w * w * w) as f32);
        let data = sim
            .into_data_async()
            .await
            .map_err(|e| Error::Backend(format!("reading similarities: {e:?}")))?;
        let values: Vec<f32> = data
            .convert::<f32>()
            .try_into_vec()
            .map_err(|e| Error::Backend(format!("reading similarities: {e:?}")))?;
        let per = len[0] * len[1] * len[2];
        Ok(spans
            .iter()
            .enumerate()
            .map(|(i, t0)| (values[i * per..(i + 1) * per].to_vec(), *t0, len))
            .collect())
    }

    /// Combine the scales at every candidate voxel of each box; keep the best.
    fn combine_scales(
        &self,
        boxes: &[([i64; 3], [i64; 3])],
        blocks: &[Vec<SimilarityBlock>],
    ) -> Vec<Match> {
        boxes
            .iter()
            .enumerate()
            .map(|(i, (lo, hi))| {
                let mut best = Match {
                    point: *lo,
                    score: f32::NEG_INFINITY,
                };
                for k in lo[2]..=hi[2] {
                    for j in lo[1]..=hi[1] {
                        for x in lo[0]..=hi[0] {
                            let q = [x, j, k];
                            let mut score = 0.0;
                            for (s, b) in blocks.iter().enumerate() {
                                let (vals, t0, len) = &b[i];
                                let st = self.strides[s] as f64;
                                let t = [0, 1, 2].map(|a| q[a] as f64 / st - t0[a] as f64);
                                score += lattice_sample(vals, *len, t);
                            }
                            let score = score / 3.0;
                            if score > best.score {
                                best = Match { point: q, score };
                            }
                        }
                    }
                }
                best
            })
            .collect()
    }
}

/// Similarities of one search at one scale: values `[z][y][x]`, lattice start and size.
type SimilarityBlock = (Vec<f32>, [i64; 3], [usize; 3]);

/// Trilinear sample of a `[z][y][x]` block (x fastest) at continuous index `t` (clamped).
fn lattice_sample(vals: &[f32], len: [usize; 3], t: [f64; 3]) -> f32 {
    let mut i0 = [0usize; 3];
    let mut w = [0f32; 3];
    for a in 0..3 {
        let x = t[a].clamp(0.0, (len[a] - 1) as f64);
        i0[a] = (x.floor() as usize).min(len[a].saturating_sub(2));
        w[a] = (x - i0[a] as f64) as f32;
        if len[a] == 1 {
            w[a] = 0.0;
        }
    }
    let at = |dx: usize, dy: usize, dz: usize| {
        let (x, y, z) = (
            (i0[0] + dx).min(len[0] - 1),
            (i0[1] + dy).min(len[1] - 1),
            (i0[2] + dz).min(len[2] - 1),
        );
        vals[x + len[0] * (y + len[1] * z)]
    };
    let mut acc = 0.0;
    for dz in 0..2 {
        for dy in 0..2 {
            for dx in 0..2 {
                let wt = (if dx == 1 { w[0] } else { 1.0 - w[0] })
                    * (if dy == 1 { w[1] } else { 1.0 - w[1] })
                    * (if dz == 1 { w[2] } else { 1.0 - w[2] });
                if wt != 0.0 {
                    acc += wt * at(dx, dy, dz);
                }
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::super::tests::{random_vol, tiny};
    use super::*;
    use crate::medlam::features::{centre_windows, frame_for};

    #[test]
    fn lattice_sampling_is_trilinear_and_clamped() {
        // value = x + 10 y + 100 z on a 3×2×2 block.
        let mut v = Vec::new();
        for z in 0..2 {
            for y in 0..2 {
                for x in 0..3 {
                    v.push((x + 10 * y + 100 * z) as f32);
                }
            }
        }
        let f = |t| lattice_sample(&v, [3, 2, 2], t);
        assert!((f([1.5, 0.5, 0.25]) - (1.5 + 5.0 + 25.0)).abs() < 1e-4);
        assert_eq!(f([-1.0, 0.0, 0.0]), 0.0);
        assert_eq!(f([5.0, 3.0, 3.0]), 112.0);
    }

    #[test]
    fn a_support_window_matches_its_own_centred_patch_exactly() {
        // A frame of exactly one tile centred on the point: the support window (from the
        // same patch) must be found at the point itself with score 1.
        let (net, cfg, dev) = tiny();
        let vol = random_vol([40, 36, 32], 4);
        let point = [20i64, 17, 15];
        let (origin, size) = frame_for(point, point, 0, 16);
        assert_eq!(size, [16; 3]);
        assert_eq!(origin, [12, 9, 7]);
        let frame = pollster::block_on(FeatureFrame::compute(
            &net,
            &cfg,
            &vol,
            origin,
            size,
            &|_, _| true,
            &dev,
        ))
        .unwrap();
        let x = Tensor::<5>::from_data(
            burn::tensor::TensorData::new(vol.patch(point, 16), [1, 1, 16, 16, 16]),
            &dev,
        );
        let windows = centre_windows(net.forward(x).features);
        let centre = [0, 1, 2].map(|a| (point[a] - origin[a]) as f64);
        let m = pollster::block_on(frame.best_matches(
            &windows,
            &[Search {
                centre,
                radius: None,
            }],
        ))
        .unwrap();
        assert_eq!(m[0].point, centre.map(|x| x as i64));
        assert!(m[0].score > 0.95, "{:?}", m[0]);
    }

    #[test]
    fn a_window_cut_from_the_frame_is_found_where_it_was_cut() {
        let (net, cfg, dev) = tiny();
        let vol = random_vol([40, 36, 32], 9);
        let (origin, size) = frame_for([0; 3], [39, 35, 31], 0, 16);
        let frame = pollster::block_on(FeatureFrame::compute(
            &net,
            &cfg,
            &vol,
            origin,
            size,
            &|_, _| true,
            &dev,
        ))
        .unwrap();
        // Point q (a multiple of every stride): windows cut at lattice t = q/s of each scale.
        let q = [16i64, 24, 16];
        let windows: [Tensor<5>; 3] = std::array::from_fn(|s| {
            let (st, w, g) = (
                frame.strides[s] as i64,
                WINDOWS[s] as i64,
                frame.margins[s] as i64,
            );
            let c = frame.maps[s].dims()[1];
            let r = [0, 1, 2].map(|a| {
                let lo = (q[a] / st - w / 2 + g) as usize;
                lo..lo + w as usize
            });
            let win =
                frame.maps[s]
                    .clone()
                    .slice([0..1, 0..c, r[2].clone(), r[1].clone(), r[0].clone()]);
            Tensor::cat(vec![win.clone(), win], 0)
        });
        let centre = [10.0, 20.0, 14.0];
        let m = pollster::block_on(frame.best_matches(
            &windows,
            &[
                Search {
                    centre,
                    radius: None,
                },
                Search {
                    centre,
                    radius: Some(8),
                },
            ],
        ))
        .unwrap();
        // The score is the mean cosine over the window voxels: 1 except where a voxel's
        // features are all zero (ReLU), which counts 0.
        for found in m {
            assert_eq!(found.point, q);
            assert!(found.score > 0.95 && found.score <= 1.0 + 1e-5, "{found:?}");
        }
        // A search that cannot reach q finds something else, inside its cube.
        let far = pollster::block_on(frame.best_matches(
            &windows.clone().map(|w| w.narrow(0, 0, 1)),
            &[Search {
                centre: [30.0, 5.0, 5.0],
                radius: Some(3),
            }],
        ))
        .unwrap();
        assert!((27..=33).contains(&far[0].point[0]) && far[0].score < 1.0 - 1e-4);
    }
}
