//! Multi-scale similarity (MSS) machinery on the device.
//!
//! - **Support windows**: from a patch centred on a point, the L2-normalised
//!   feature window of even edge `w` around the patch centre at each scale
//!   (its centre sits half a voxel before patch voxel `P/2`).
//! - **Query frame**: the feature maps of a whole region of a query
//!   ("whole-volume feature pass"): the region is tiled with patches at a
//!   stride of `P/2`; every feature voxel is taken from the tile whose centre
//!   is nearest, so it always has at least `P/4` voxels of context. Tiles no
//!   search needs are skipped.
//! - **Matching**: each window is correlated with the frame (mean cosine over
//!   the window); the three scales are interpolated to grid voxels and
//!   averaged; the best voxel within a search radius of a starting point wins.
//!
//! Coordinates: *frame* voxel indices of the 3 mm grid (grid index minus the
//! frame origin), canonical axis order; tensors are `[N, C, K, J, I]`.

use burn::tensor::{Device, Tensor};

mod matching;

pub use matching::{Match, Search};

use super::net::{MedLam, MedLamConfig};
use super::prep::Prepared;
use crate::{Error, Result};

/// Edge (feature voxels, even) of the support window at each scale, coarse → fine.
pub const WINDOWS: [usize; 3] = [2, 2, 4];

/// Divide every feature vector by its L2 norm (over channels).
pub fn normalize_channels(f: Tensor<5>) -> Tensor<5> {
    let norm = f.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-6);
    f / norm
}

/// The normalised centre windows `[N, C, w, w, w]` of the three feature maps of centred patches.
pub fn centre_windows(features: [Tensor<5>; 3]) -> [Tensor<5>; 3] {
    let mut i = 0;
    features.map(|f| {
        let w = WINDOWS[i];
        i += 1;
        let m = f.dims()[2];
        let lo = m / 2 - w / 2;
        let [n, c, ..] = f.dims();
        normalize_channels(f.slice([0..n, 0..c, lo..lo + w, lo..lo + w, lo..lo + w]))
    })
}

/// Feature maps of a region of a prepared CT, stitched from overlapping tiles.
pub struct FeatureFrame {
    /// Grid voxel of frame voxel `[0, 0, 0]`.
    pub origin: [i64; 3],
    /// Frame size in grid voxels (a multiple of `P/2`, at least `P`).
    pub size: [usize; 3],
    /// Stride of each scale (coarse → fine).
    pub strides: [usize; 3],
    /// Zero margin around each map (feature voxels, per scale).
    margins: [usize; 3],
    /// Normalised maps `[1, C, K + 2·margin, J + 2·margin, I + 2·margin]`.
    maps: Vec<Tensor<5>>,
    /// Tiles computed (of the total).
    pub tiles_computed: usize,
    pub tiles_total: usize,
}

/// Frame origin and size covering the grid box `lo..=hi` plus `margin`, in whole tiles.
pub fn frame_for(lo: [i64; 3], hi: [i64; 3], margin: i64, patch: usize) -> ([i64; 3], [usize; 3]) {
    let half = (patch / 2) as i64;
    let mut origin = [0; 3];
    let mut size = [0; 3];
    for a in 0..3 {
        let (a0, a1) = (lo[a] - margin, hi[a] + margin + 1);
        let len = (a1 - a0).max(patch as i64);
        let len = (len + half - 1) / half * half;
        origin[a] = (a0 + a1 - len) / 2;
        size[a] = len as usize;
    }
    (origin, size)
}

/// For each feature index along one axis (stride `s`), the tile owning it: the tile whose
/// centre is nearest to the feature voxel's centre. Tiles are at `t·P/2`, `n` of them.
fn owners(m: usize, stride: usize, patch: usize, n: usize) -> Vec<usize> {
    let half = (patch / 2) as f64;
    (0..m)
        .map(|f| {
            let centre = (f as f64 + 0.5) * stride as f64 - 0.5;
            let t = ((centre - half + 0.5) / half).round();
            t.clamp(0.0, (n - 1) as f64) as usize
        })
        .collect()
}

/// Contiguous `[lo, hi)` feature ranges owned by each tile along one axis.
fn owned_ranges(m: usize, stride: usize, patch: usize, n: usize) -> Vec<(usize, usize)> {
    let own = owners(m, stride, patch, n);
    (0..n)
        .map(|t| {
            let lo = own.iter().position(|&o| o == t).unwrap_or(0);
            let hi = own.iter().rposition(|&o| o == t).map_or(0, |x| x + 1);
            (lo, hi.max(lo))
        })
        .collect()
}

/// The tiles (of `tiles` per axis) to compute: those whose owned grid box at the finest
/// scale (`ranges` per axis, feature voxels of `stride`) intersects a search (`needed`).
fn tiles_needed(
    tiles: [usize; 3],
    ranges: &[Vec<(usize, usize)>; 3],
    stride: usize,
    needed: &dyn Fn([i64; 3], [i64; 3]) -> bool,
) -> Vec<[usize; 3]> {
    let mut todo = Vec::new();
    for tk in 0..tiles[2] {
        for tj in 0..tiles[1] {
            for ti in 0..tiles[0] {
                let t = [ti, tj, tk];
                let lo = [0, 1, 2].map(|a| (ranges[a][t[a]].0 * stride) as i64);
                let hi = [0, 1, 2].map(|a| (ranges[a][t[a]].1 * stride) as i64 - 1);
                if needed(lo, hi) {
                    todo.push(t);
                }
            }
        }
    }
    todo
}

/// Write a tile's owned feature block into a scale's map at the feature voxels `r`
/// (per axis) plus the map's margin `g`.
fn place_block(
    map: &mut Tensor<5>,
    block: Tensor<5>,
    r: [(usize, usize); 3],
    g: usize,
    device: &Device,
) {
    let c = block.dims()[1];
    let old = std::mem::replace(map, Tensor::zeros([1, 1, 1, 1, 1], device));
    *map = old.slice_assign(
        [
            0..1,
            0..c,
            g + r[2].0..g + r[2].1,
            g + r[1].0..g + r[1].1,
            g + r[0].0..g + r[0].1,
        ],
        block,
    );
}

impl FeatureFrame {
    /// Compute the frame `origin`, `size` of `vol`; `needed(lo, hi)` says whether the
    /// grid box a tile owns (inclusive, frame voxels) must be computed.
    pub async fn compute(
        net: &MedLam,
        config: &MedLamConfig,
        vol: &Prepared,
        origin: [i64; 3],
        size: [usize; 3],
        needed: &dyn Fn([i64; 3], [i64; 3]) -> bool,
        device: &Device,
    ) -> Result<Self> {
        let p = config.patch;
        let half = p / 2;
        if (0..3).any(|a| size[a] < p || !size[a].is_multiple_of(half)) {
            return Err(Error::Model(format!(
                "feature frame {size:?} is not a multiple of {half} voxels of at least {p}"
            )));
        }
        let strides = config.feature_strides();
        let channels = config.feature_channels();
        let tiles = size.map(|s| s / half - 1);
        let margins = [0, 1, 2].map(|s| WINDOWS[s] / 2 + 1);
        let mut maps: Vec<Tensor<5>> = (0..3)
            .map(|s| {
                let m = size.map(|x| x / strides[s] + 2 * margins[s]);
                Tensor::zeros([1, channels[s], m[2], m[1], m[0]], device)
            })
            .collect();
        // Ownership per scale and axis.
        let ranges: Vec<[Vec<(usize, usize)>; 3]> = (0..3)
            .map(|s| [0, 1, 2].map(|a| owned_ranges(size[a] / strides[s], strides[s], p, tiles[a])))
            .collect();
        let todo = tiles_needed(tiles, &ranges[2], strides[2], needed);
        for chunk in todo.chunks(crate::device::patch_batch(device, 4)) {
            let centres: Vec<[i64; 3]> = chunk
                .iter()
                .map(|t| [0, 1, 2].map(|a| origin[a] + (t[a] * half + half) as i64))
                .collect();
            let out = net.forward(vol.patches(&centres, p, device));
            crate::device::yield_on_cpu(device).await;
            for (s, feat) in out.features.into_iter().enumerate() {
                let feat = normalize_channels(feat);
                let c = channels[s];
                let step = half / strides[s];
                for (b, t) in chunk.iter().enumerate() {
                    let r = [0, 1, 2].map(|a| ranges[s][a][t[a]]);
                    if (0..3).any(|a| r[a].0 >= r[a].1) {
                        continue;
                    }
                    let local = [0, 1, 2].map(|a| r[a].0 - t[a] * step..r[a].1 - t[a] * step);
                    let block = feat.clone().slice([
                        b..b + 1,
                        0..c,
                        local[2].clone(),
                        local[1].clone(),
                        local[0].clone(),
                    ]);
                    place_block(&mut maps[s], block, r, margins[s], device);
                }
            }
            // Placing the blocks copies the maps: the page gets another turn.
            crate::device::yield_on_cpu(device).await;
        }
        Ok(Self {
            origin,
            size,
            strides,
            margins,
            maps,
            tiles_computed: todo.len(),
            tiles_total: tiles.iter().product(),
        })
    }

    /// One single-tile frame per centre (grid voxel): the patch centred there, so the point
    /// of interest sits at the patch centre as on the supports (the reference's per-point
    /// query patches).
    pub async fn centred_tiles(
        net: &MedLam,
        config: &MedLamConfig,
        vol: &Prepared,
        centres: &[[i64; 3]],
        device: &Device,
    ) -> Result<Vec<Self>> {
        let p = config.patch;
        let strides = config.feature_strides();
        let channels = config.feature_channels();
        let margins = [0, 1, 2].map(|s| WINDOWS[s] / 2 + 1);
        let mut out = Vec::with_capacity(centres.len());
        for chunk in centres.chunks(crate::device::patch_batch(device, 4)) {
            let feats = net
                .forward(vol.patches(chunk, p, device))
                .features
                .map(normalize_channels);
            crate::device::yield_on_cpu(device).await;
            for (b, c) in chunk.iter().enumerate() {
                let maps = (0..3)
                    .map(|s| {
                        let m = p / strides[s];
                        let g = margins[s];
                        let f =
                            feats[s]
                                .clone()
                                .slice([b..b + 1, 0..channels[s], 0..m, 0..m, 0..m]);
                        Tensor::zeros([1, channels[s], m + 2 * g, m + 2 * g, m + 2 * g], device)
                            .slice_assign([0..1, 0..channels[s], g..g + m, g..g + m, g..g + m], f)
                    })
                    .collect();
                out.push(Self {
                    origin: c.map(|x| x - (p / 2) as i64),
                    size: [p; 3],
                    strides,
                    margins,
                    maps,
                    tiles_computed: 1,
                    tiles_total: 1,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_own_contiguous_ranges_nearest_their_centre() {
        // Frame of 96 voxels, patch 48: tiles at 0, 24, 48; stride 2 → 48 feature voxels.
        let r = owned_ranges(48, 2, 48, 3);
        assert_eq!(r, vec![(0, 18), (18, 30), (30, 48)]);
        // Every feature voxel is owned exactly once and at least P/4 = 12 voxels from a tile edge
        // except at the frame border.
        let r8 = owned_ranges(12, 8, 48, 3);
        assert_eq!(r8.first().unwrap().0, 0);
        assert_eq!(r8.last().unwrap().1, 12);
        for w in r8.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        let (o, s) = frame_for([10, 20, 30], [40, 50, 120], 6, 48);
        assert_eq!(s, [48, 48, 120]);
        assert!(o[0] <= 4 && o[0] + 48 >= 47);
        assert!(o[2] <= 24 && o[2] + 120 >= 127);
    }

    pub(super) fn random_vol(dims: [usize; 3], seed: u64) -> Prepared {
        let mut rng = crate::rng::Rng::new(seed);
        let data: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|_| rng.unit() as f32)
            .collect();
        let grid = crate::volume::resample::ResampleGrid::new(dims, [3.0; 3], [3.0; 3]).unwrap();
        Prepared::from_parts(dims, data, grid).unwrap()
    }

    pub(super) fn tiny() -> (MedLam, MedLamConfig, Device) {
        let dev = Device::flex();
        dev.seed(3);
        let cfg =
            MedLamConfig::new(16, [4, 4, 8, 8, 8], [8, 8, 8, 8], [8, 4]).with_decoder_levels(3);
        (cfg.init(&dev).unwrap(), cfg, dev)
    }

    #[test]
    fn frame_voxels_come_from_the_tile_that_owns_them() {
        let (net, cfg, dev) = tiny();
        let vol = random_vol([40, 30, 30], 5);
        // 24 × 16 × 16 frame at origin (4, 6, 7): tiles at x = 0 and 8 (patch 16, stride 8).
        let origin = [4, 6, 7];
        let frame = pollster::block_on(FeatureFrame::compute(
            &net,
            &cfg,
            &vol,
            origin,
            [24, 16, 16],
            &|_, _| true,
            &dev,
        ))
        .unwrap();
        assert_eq!((frame.tiles_computed, frame.tiles_total), (2, 2));
        // Tile 1 (x from 8) as a lone patch, centred at frame voxel (16, 8, 8).
        let centre = [origin[0] + 16, origin[1] + 8, origin[2] + 8];
        let x = Tensor::<5>::from_data(
            burn::tensor::TensorData::new(vol.patch(centre, 16), [1, 1, 16, 16, 16]),
            &dev,
        );
        let tile = normalize_channels(net.forward(x).features[2].clone()); // stride 2: 8³
        // Frame feature voxels x in 6..12 (stride 2) belong to tile 1 (its local 2..8).
        let owned = owned_ranges(12, 2, 16, 2);
        assert_eq!(owned[1], (6, 12));
        let g = frame.margins[2];
        let from_frame = frame.maps[2]
            .clone()
            .slice([0..1, 0..8, g..g + 8, g..g + 8, g + 6..g + 12])
            .into_data()
            .convert::<f32>();
        let from_tile = tile
            .slice([0..1, 0..8, 0..8, 0..8, 2..8])
            .into_data()
            .convert::<f32>();
        from_frame.assert_approx_eq::<f32>(&from_tile, burn::tensor::Tolerance::absolute(1e-5));
        // A frame whose size is not whole tiles is refused.
        assert!(
            pollster::block_on(FeatureFrame::compute(
                &net,
                &cfg,
                &vol,
                origin,
                [20, 16, 16],
                &|_, _| true,
                &dev
            ))
            .is_err()
        );
    }
}
