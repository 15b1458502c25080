//! The MedLAM network: a 3-D U-Net-like encoder/decoder on CT patches (3 mm
//! isotropic, MedLAM intensity mapping), with
//! - a **position head** on the flattened bottleneck → a latent anatomical
//!   coordinate `p ∈ R³` (UAM: `r·tanh(p_s − p_q)` is the offset in mm), and
//! - **three decoder feature scales** (coarse → fine) for multi-scale
//!   similarity (MSS) matching.
//!
//! Block = Conv3d k3 pad 1 (+bias) → InstanceNorm (no affine) → ReLU. The
//! reference design (base width 24) is [`MedLamConfig::reference`]; widths, the
//! patch size and how far the decoder goes back up are all in the config.
//! Burn has no MaxPool3d nor trilinear interpolation: [`max_pool_2`] and
//! [`upsample_2x`] build them exactly from tensor ops.
//!
//! Tensor layout is `[N, C, K, J, I]`: the canonical LPS voxel axes reversed
//! (z, y, x), so patch buffers in NIfTI order (see `prep`) feed it directly.
//! Weights are a burnpack file whose metadata carries the config
//! ([`MedLam::to_bytes`], [`MedLam::from_bytes`]; bytes, so the browser can load them).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, Linear, LinearConfig, PaddingConfig3d};
use burn::store::burn_pack::Reader;
use burn::store::{BurnpackStore, FloatCastAdapter, HalfPrecisionAdapter, ModuleSnapshot};
use burn::tensor::activation::relu;
use burn::tensor::{Bytes, DType, Device, Tensor};

use crate::device::{quantize_int8, to_f32_on};
use crate::{Error, Result};

/// UAM distance ratio `r` (mm) along the canonical axes (i, j, k): the offset between two
/// patch centres is `r·tanh(p − p')` (the reference's `[1500, 600, 600]` for z, y, x).
pub const UAM_RATIO_MM: [f32; 3] = [600.0, 600.0, 1500.0];

/// Sizes of a MedLAM network.
#[derive(Config, Debug, PartialEq)]
pub struct MedLamConfig {
    /// Patch edge in voxels (cubic patches); a multiple of 16 (four 2× poolings).
    pub patch: usize,
    /// Output widths of the 5 encoder levels (full resolution … bottleneck at 1/16).
    /// Level 0 is `1→e0→e0`; level `l ≥ 1` is `e(l−1)→e(l−1)→e(l)` (as the reference).
    pub encoder: [usize; 5],
    /// Widths of the decoder levels at 1/8, 1/4, 1/2 and full resolution; a level is
    /// `(up + skip)→d→d`. Only the first `decoder_levels` are built.
    pub decoder: [usize; 4],
    /// How many decoder levels are built (3 or 4). The last three built levels are the
    /// three MSS feature scales (4: 1/4, 1/2, 1 as the reference; 3: 1/8, 1/4, 1/2).
    #[config(default = 4)]
    pub decoder_levels: usize,
    /// Hidden widths of the 3-layer position head (`flat → h0 → h1 → 3`, no activations).
    pub head: [usize; 2],
}

impl MedLamConfig {
    /// The reference MedLAM (base width 24, 64³ patches, about 15 M parameters).
    pub fn reference() -> Self {
        Self::new(64, [48, 48, 96, 192, 384], [192, 96, 96, 96], [192, 96])
    }

    /// Check the sizes; a clear error instead of a panic in the layers.
    pub fn validate(&self) -> Result<()> {
        if self.patch == 0 || !self.patch.is_multiple_of(16) {
            return Err(Error::InvalidArgument(format!(
                "MedLAM patch size {} is not a positive multiple of 16",
                self.patch
            )));
        }
        if !(3..=4).contains(&self.decoder_levels) {
            return Err(Error::InvalidArgument(format!(
                "MedLAM decoder_levels must be 3 or 4, not {}",
                self.decoder_levels
            )));
        }
        let widths = self.encoder.iter().chain(&self.decoder).chain(&self.head);
        if widths.into_iter().any(|&w| w == 0 || w > 4096) {
            return Err(Error::InvalidArgument(format!(
                "MedLAM widths out of range: {self:?}"
            )));
        }
        Ok(())
    }

    /// Downsampling factor of each of the three MSS feature scales (coarse → fine).
    pub fn feature_strides(&self) -> [usize; 3] {
        match self.decoder_levels {
            3 => [8, 4, 2],
            _ => [4, 2, 1],
        }
    }

    /// Channels of each of the three MSS feature scales (coarse → fine).
    pub fn feature_channels(&self) -> [usize; 3] {
        let n = self.decoder_levels;
        [
            self.decoder[n - 3],
            self.decoder[n - 2],
            self.decoder[n - 1],
        ]
    }

    /// Edge of the bottleneck grid (patch / 16).
    pub fn bottleneck_edge(&self) -> usize {
        self.patch / 16
    }

    /// Build the network with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Result<MedLam> {
        self.validate()?;
        let e = self.encoder;
        let d = self.decoder;
        let mut encoder = vec![Level::new(1, e[0], e[0], device)];
        for l in 1..5 {
            encoder.push(Level::new(e[l - 1], e[l - 1], e[l], device));
        }
        let mut decoder = Vec::new();
        let mut below = e[4];
        for l in 0..self.decoder_levels {
            let skip = e[3 - l];
            decoder.push(Level::new(below + skip, d[l], d[l], device));
            below = d[l];
        }
        let flat = e[4] * self.bottleneck_edge().pow(3);
        Ok(MedLam {
            encoder,
            decoder,
            fc1: LinearConfig::new(flat, self.head[0]).init(device),
            fc2: LinearConfig::new(self.head[0], self.head[1]).init(device),
            fc3: LinearConfig::new(self.head[1], 3).init(device),
        })
    }

    /// Multiply–accumulate operations of one forward pass on one patch (convolutions and head).
    pub fn forward_macs(&self) -> u64 {
        let v = |stride: usize| (self.patch / stride).pow(3) as u64 * 27;
        let e = self.encoder.map(|x| x as u64);
        let d = self.decoder.map(|x| x as u64);
        let mut macs = v(1) * (e[0] + e[0] * e[0]);
        for l in 1..5 {
            macs += v(1 << l) * (e[l - 1] * e[l - 1] + e[l - 1] * e[l]);
        }
        let mut below = e[4];
        for l in 0..self.decoder_levels {
            macs += v(8 >> l) * ((below + e[3 - l]) * d[l] + d[l] * d[l]);
            below = d[l];
        }
        let flat = e[4] * self.bottleneck_edge().pow(3) as u64;
        let h = self.head.map(|x| x as u64);
        macs + flat * h[0] + h[0] * h[1] + h[1] * 3
    }
}

/// Two conv blocks at one resolution: `in→mid→out`.
#[derive(Module, Debug)]
pub struct Level {
    conv1: Conv3d,
    norm1: InstanceNorm,
    conv2: Conv3d,
    norm2: InstanceNorm,
}

impl Level {
    fn new(cin: usize, mid: usize, out: usize, device: &Device) -> Self {
        let conv = |a: usize, b: usize| {
            Conv3dConfig::new([a, b], [3, 3, 3])
                .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                .init(device)
        };
        let norm = |c: usize| InstanceNormConfig::new(c).with_affine(false).init(device);
        Self {
            conv1: conv(cin, mid),
            norm1: norm(mid),
            conv2: conv(mid, out),
            norm2: norm(out),
        }
    }

    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = relu(self.norm1.forward(self.conv1.forward(x)));
        relu(self.norm2.forward(self.conv2.forward(x)))
    }
}

/// The MedLAM network (build with [`MedLamConfig::init`]).
#[derive(Module, Debug)]
pub struct MedLam {
    encoder: Vec<Level>,
    decoder: Vec<Level>,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

/// Outputs of one forward pass.
pub struct MedLamOutput {
    /// Latent coordinates `[N, 3]` (canonical axes order).
    pub position: Tensor<2>,
    /// The three MSS feature maps, coarse → fine, `[N, C_s, P/s, P/s, P/s]` (not normalised).
    pub features: [Tensor<5>; 3],
}

impl MedLam {
    /// Encoder: the skip outputs of levels 0–3 and the bottleneck.
    fn encode(&self, x: Tensor<5>) -> (Vec<Tensor<5>>, Tensor<5>) {
        let mut skips = Vec::with_capacity(4);
        let mut x = self.encoder[0].forward(x);
        for level in &self.encoder[1..] {
            skips.push(x.clone());
            x = level.forward(max_pool_2(x));
        }
        (skips, x)
    }

    fn head(&self, bottleneck: Tensor<5>) -> Tensor<2> {
        let flat: Tensor<2> = bottleneck.flatten(1, 4);
        self.fc3.forward(self.fc2.forward(self.fc1.forward(flat)))
    }

    /// Latent position only (encoder and head; no decoder) of patches `[N, 1, P, P, P]`.
    pub fn position(&self, x: Tensor<5>) -> Tensor<2> {
        let (_, bottleneck) = self.encode(x);
        self.head(bottleneck)
    }

    /// Full forward pass on patches `[N, 1, P, P, P]`: position and the three feature scales.
    pub fn forward(&self, x: Tensor<5>) -> MedLamOutput {
        let (skips, bottleneck) = self.encode(x);
        let position = self.head(bottleneck.clone());
        let mut x = bottleneck;
        let mut outs = Vec::with_capacity(self.decoder.len());
        for (l, level) in self.decoder.iter().enumerate() {
            let up = upsample_2x(x);
            x = level.forward(Tensor::cat(vec![up, skips[3 - l].clone()], 1));
            outs.push(x.clone());
        }
        let n = outs.len();
        let features = [
            outs[n - 3].clone(),
            outs[n - 2].clone(),
            outs[n - 1].clone(),
        ];
        MedLamOutput { position, features }
    }
}

/// Metadata key of the config in a weights file.
const CONFIG_KEY: &str = "medlam_config";
/// Metadata key marking the page's int8 copy ([`MedLam::q8_copy`]).
const QUANTIZED_KEY: &str = "medlam_quantized";

impl MedLam {
    /// Serialise the weights (f32) with the config in the file's metadata (burnpack bytes).
    pub fn to_bytes(&self, config: &MedLamConfig, info: &[(&str, String)]) -> Result<Vec<u8>> {
        self.to_bytes_as(config, info, false)
    }

    /// As [`Self::to_bytes`]; `half` stores the convolution and linear tensors as f16 (the
    /// page's download: half the bytes; [`Self::from_bytes`] makes them f32 again).
    pub fn to_bytes_as(
        &self,
        config: &MedLamConfig,
        info: &[(&str, String)],
        half: bool,
    ) -> Result<Vec<u8>> {
        let json = serde_json::to_string(config).expect("config serialises");
        let mut store = BurnpackStore::from_bytes(None).metadata(CONFIG_KEY, json);
        for (k, v) in info {
            store = store.metadata(*k, v.clone());
        }
        if half {
            store = store.with_to_adapter(HalfPrecisionAdapter::new());
        }
        self.save_into(&mut store)
            .map_err(|e| Error::Weights(format!("cannot serialise MedLAM weights: {e}")))?;
        let bytes = store
            .get_bytes()
            .map_err(|e| Error::Weights(format!("cannot serialise MedLAM weights: {e}")))?;
        Ok(bytes.to_vec())
    }

    /// Load weights written by [`Self::to_bytes`] onto `device`; returns the network and its config.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<(Self, MedLamConfig)> {
        let bad = |e: String| Error::Weights(format!("not a MedLAM weights file: {e}"));
        let data = Bytes::from_bytes_vec(bytes.to_vec());
        let reader = Reader::from_bytes(data.clone()).map_err(|e| bad(e.to_string()))?;
        let json = reader
            .metadata()
            .get(CONFIG_KEY)
            .ok_or_else(|| bad("no MedLAM config in its metadata".into()))?;
        let config: MedLamConfig =
            serde_json::from_str(json).map_err(|e| bad(format!("config: {e}")))?;
        // An int8 file (the page's) is read on the CPU backend and made f32 on `device`
        // (see `to_f32_on`); others load directly (a training device keeps its autodiff).
        let quantized = reader.metadata().contains_key(QUANTIZED_KEY);
        let load_device = if quantized {
            Device::flex()
        } else {
            device.clone()
        };
        let mut net = config.init(&load_device)?;
        let mut store = BurnpackStore::from_bytes(Some(data))
            .with_from_adapter(FloatCastAdapter::to(DType::F32));
        let applied = net.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
        if !applied.errors.is_empty() || !applied.missing.is_empty() {
            return Err(bad(format!(
                "{} tensors missing, {} errors (first: {:?})",
                applied.missing.len(),
                applied.errors.len(),
                applied.errors.first()
            )));
        }
        let net = if quantized {
            to_f32_on(net, device)
        } else {
            net
        };
        Ok((net, config))
    }

    /// The page's copy of a weights file (`medlsam weights medlam-q8`): the same network and
    /// metadata, every convolution kernel stored as symmetric int8 with one f16 scale per
    /// 3×3×3 kernel (one per output/input channel pair), the head's linear weights int8 with
    /// one scale per block of 32 outputs where they split so, biases f16: a quarter of the
    /// f32 file. [`Self::from_bytes`] dequantises it on the CPU and makes it f32 again.
    pub fn q8_copy(bytes: &[u8]) -> Result<Vec<u8>> {
        let (net, config) = Self::from_bytes(bytes, &Device::flex())?;
        let meta = Self::file_metadata(bytes)?;
        let mut info: Vec<(&str, String)> = meta
            .iter()
            .filter(|(k, _)| ![CONFIG_KEY, QUANTIZED_KEY].contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        info.push((QUANTIZED_KEY, "int8".into()));
        // Convolution kernels [out, in, 3, 3, 3]: one scale per kernel; linear weights
        // [in, out]: per 32 outputs where they divide.
        let weights: Vec<(String, Vec<u8>)> = net
            .collect(None, None, false)
            .into_iter()
            .filter(|t| t.name.ends_with("weight"))
            .filter_map(|t| match *t.shape.as_slice() {
                [_, _, _, _, _] => Some((t.name, vec![1, 1, 3, 3, 3])),
                [_, out] if out.is_multiple_of(32) => Some((t.name, vec![1, 32])),
                _ => None,
            })
            .collect();
        let net = quantize_int8(net, weights);
        net.to_bytes_as(&config, &info, true)
    }

    /// Metadata of a weights file (the config and the training record), without loading it.
    pub fn file_metadata(bytes: &[u8]) -> Result<std::collections::BTreeMap<String, String>> {
        let reader = Reader::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
            .map_err(|e| Error::Weights(format!("not a MedLAM weights file: {e}")))?;
        Ok(reader.metadata().clone())
    }
}

/// Max pooling with a 2×2×2 window and stride 2 on `[N, C, X, Y, Z]` (even sizes):
/// reshape to `[N·C·X/2, 2, Y/2, 2, Z/2, 2]` and take the max over the size-2 axes.
pub fn max_pool_2(x: Tensor<5>) -> Tensor<5> {
    let [n, c, dx, dy, dz] = x.dims();
    let (hx, hy, hz) = (dx / 2, dy / 2, dz / 2);
    let x: Tensor<6> = x.reshape([n * c * hx, 2, hy, 2, hz, 2]);
    x.max_dim(5)
        .max_dim(3)
        .max_dim(1)
        .reshape([n, c, hx, hy, hz])
}

/// Trilinear ×2 upsampling of `[N, C, X, Y, Z]` with `align_corners = false`
/// (PyTorch's `Upsample(scale_factor=2, mode='trilinear')`), as three separable
/// linear passes.
pub fn upsample_2x(x: Tensor<5>) -> Tensor<5> {
    upsample_axis(upsample_axis(upsample_axis(x, 2), 3), 4)
}

/// Linear ×2 upsampling along one axis: `out[2i] = ¾x[i] + ¼x[i−1]`,
/// `out[2i+1] = ¾x[i] + ¼x[i+1]`, indices clamped at the edges.
fn upsample_axis(x: Tensor<5>, axis: usize) -> Tensor<5> {
    let n = x.dims()[axis];
    let (prev, next) = if n == 1 {
        (x.clone(), x.clone())
    } else {
        let first = x.clone().narrow(axis, 0, 1);
        let last = x.clone().narrow(axis, n - 1, 1);
        (
            Tensor::cat(vec![first, x.clone().narrow(axis, 0, n - 1)], axis),
            Tensor::cat(vec![x.clone().narrow(axis, 1, n - 1), last], axis),
        )
    };
    let three_q = x.mul_scalar(0.75);
    let even = three_q.clone() + prev.mul_scalar(0.25);
    let odd = three_q + next.mul_scalar(0.25);
    let mut dims = even.dims();
    let stacked: Tensor<6> = Tensor::stack(vec![even, odd], axis + 1);
    dims[axis] *= 2;
    stacked.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn tensor5(values: Vec<f32>, dims: [usize; 5]) -> Tensor<5> {
        Tensor::from_data(TensorData::new(values, dims), &Device::flex())
    }

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn max_pool_takes_the_max_of_each_2x2x2_block() {
        // [1, 1, 4, 2, 2]: index i + 4·(j + 2·k) in the stored order x,y,z → value.
        let dims = [1, 1, 4, 2, 2];
        let mut v = vec![0f32; 16];
        for (idx, x) in v.iter_mut().enumerate() {
            *x = ((idx * 7) % 16) as f32;
        }
        // Burn's layout is row-major over [N, C, X, Y, Z]: z fastest.
        let t = tensor5(v.clone(), dims);
        let out = max_pool_2(t);
        assert_eq!(out.dims(), [1, 1, 2, 1, 1]);
        let got = values(out);
        let at = |x: usize, y: usize, z: usize| v[(x * 2 + y) * 2 + z];
        for (bx, g) in got.iter().enumerate() {
            let mut m = f32::MIN;
            for x in 2 * bx..2 * bx + 2 {
                for y in 0..2 {
                    for z in 0..2 {
                        m = m.max(at(x, y, z));
                    }
                }
            }
            assert_eq!(*g, m);
        }
    }

    #[test]
    fn upsampling_matches_hand_computed_trilinear_values() {
        // 1-D along z: [0, 4, 8] → PyTorch trilinear ×2 (align_corners=false):
        // [0, 1, 3, 5, 7, 8].
        // The size-1 axes are doubled too (by copies): 4 equal rows.
        let out = values(upsample_2x(tensor5(vec![0.0, 4.0, 8.0], [1, 1, 1, 1, 3])));
        assert_eq!(out.len(), 24);
        for row in out.chunks(6) {
            assert_eq!(row, [0.0, 1.0, 3.0, 5.0, 7.0, 8.0]);
        }
        // 2×2 in x,y (z = 1): corners 0, 1 / 2, 3 → 4×4; out[1][1] = .75·.75·0 + .75·.25·1
        // + .25·.75·2 + .25·.25·3 = 0.75; out[0][0] = 0 (clamped); out[3][3] = 3.
        let out = values(upsample_2x(tensor5(
            vec![0.0, 1.0, 2.0, 3.0],
            [1, 1, 2, 2, 1],
        )));
        assert_eq!(out.len(), 32);
        // layout [x][y][z] with z of size 2 (both equal, z was size 1)
        let at = |x: usize, y: usize| out[(x * 4 + y) * 2];
        assert!((at(1, 1) - 0.75).abs() < 1e-6);
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(3, 3), 3.0);
        assert!((at(0, 1) - 0.25).abs() < 1e-6); // x clamped: .75·0 + .25·1 along y
        assert!((at(2, 0) - 1.5).abs() < 1e-6); // along x: .75·2 + .25·0
        assert_eq!(out[1], out[0]);
    }

    #[test]
    fn pooling_and_upsampling_match_pytorch() {
        // Golden values from tools/medlam_ops_golden.py (PyTorch MaxPool3d, trilinear Upsample).
        let text = include_str!("../../tests/golden/medlam_ops.json");
        let g: serde_json::Value = serde_json::from_str(text).unwrap();
        let vec = |k: &str| -> Vec<f32> {
            g[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        };
        let dims = |k: &str| -> [usize; 5] {
            let v: Vec<usize> = g[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            [v[0], v[1], v[2], v[3], v[4]]
        };
        let x = tensor5(vec("input"), dims("input_shape"));
        let pool = max_pool_2(x.clone());
        assert_eq!(pool.dims(), dims("pool_shape"));
        assert_eq!(values(pool), vec("pool"));
        let up = upsample_2x(x);
        assert_eq!(up.dims(), dims("up_shape"));
        for (a, b) in values(up).iter().zip(vec("up")) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn small_network_has_the_configured_shapes() {
        let cfg = MedLamConfig::new(16, [2, 2, 4, 4, 8], [4, 4, 4, 2], [8, 4]);
        let net = cfg.init(&Device::flex()).unwrap();
        let x = Tensor::<5>::zeros([2, 1, 16, 16, 16], &Device::flex());
        let out = net.forward(x.clone());
        assert_eq!(out.position.dims(), [2, 3]);
        assert_eq!(out.features[0].dims(), [2, 4, 4, 4, 4]);
        assert_eq!(out.features[1].dims(), [2, 4, 8, 8, 8]);
        assert_eq!(out.features[2].dims(), [2, 2, 16, 16, 16]);
        assert_eq!(net.position(x).dims(), [2, 3]);
        let three = MedLamConfig {
            decoder_levels: 3,
            ..cfg.clone()
        };
        assert_eq!(three.feature_strides(), [8, 4, 2]);
        let out = three
            .init(&Device::flex())
            .unwrap()
            .forward(Tensor::zeros([1, 1, 16, 16, 16], &Device::flex()));
        assert_eq!(out.features[2].dims(), [1, 4, 8, 8, 8]);
        assert!(
            MedLamConfig { patch: 40, ..cfg }
                .validate()
                .unwrap_err()
                .to_string()
                .contains("multiple of 16")
        );
    }

    #[test]
    fn weights_round_trip_through_bytes_with_their_config() {
        let cfg = MedLamConfig::new(16, [2, 2, 4, 4, 8], [4, 4, 4, 2], [8, 4]);
        let dev = Device::flex();
        let net = cfg.init(&dev).unwrap();
        let bytes = net.to_bytes(&cfg, &[("note", "x".into())]).unwrap();
        let (back, cfg2) = MedLam::from_bytes(&bytes, &dev).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(MedLam::file_metadata(&bytes).unwrap()["note"], "x");
        let x = Tensor::<5>::random(
            [1, 1, 16, 16, 16],
            burn::tensor::Distribution::Default,
            &dev,
        );
        let a = net
            .position(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = back.position(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a, b);
        let e = MedLam::from_bytes(b"garbage", &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a MedLAM weights file"), "{e}");
    }

    #[test]
    fn q8_copy_keeps_metadata_and_outputs_within_int8_rounding() {
        // Wide enough that the weights, not the file's names and metadata, make its size.
        let cfg = MedLamConfig::new(16, [8, 8, 16, 16, 32], [16, 16, 8, 8], [32, 4]);
        let dev = Device::flex();
        let net = cfg.init(&dev).unwrap();
        let full = net.to_bytes(&cfg, &[("note", "x".into())]).unwrap();
        let q8 = MedLam::q8_copy(&full).unwrap();
        assert!(
            q8.len() * 10 < full.len() * 3,
            "{} vs {}",
            q8.len(),
            full.len()
        );
        let meta = MedLam::file_metadata(&q8).unwrap();
        assert_eq!(
            (meta["note"].as_str(), meta[QUANTIZED_KEY].as_str()),
            ("x", "int8")
        );
        // Quantising the page's copy again works (it is read back as f32).
        assert!(MedLam::q8_copy(&q8).is_ok());
        let (back, cfg2) = MedLam::from_bytes(&q8, &dev).unwrap();
        assert_eq!(cfg2, cfg);
        let x = Tensor::<5>::random(
            [1, 1, 16, 16, 16],
            burn::tensor::Distribution::Default,
            &dev,
        );
        let (a, b) = (net.forward(x.clone()), back.forward(x));
        for (a, b) in [
            (a.features[2].clone(), b.features[2].clone()),
            (
                a.position.reshape([1, 1, 1, 1, 3]),
                b.position.reshape([1, 1, 1, 1, 3]),
            ),
        ] {
            let diff: f32 = (a.clone() - b).abs().max().into_scalar();
            let scale: f32 = a.abs().max().into_scalar();
            assert!(
                diff > 0.0 && diff < 5e-2 * scale,
                "max |diff| {diff} vs max |a| {scale}"
            );
        }
    }

    #[test]
    fn reference_config_is_about_15_million_parameters() {
        let n = MedLamConfig::reference()
            .init(&Device::flex())
            .unwrap()
            .num_params();
        assert!((14_000_000..16_500_000).contains(&n), "{n}");
    }
}
