//! MedLAM's training losses: UAM (relative position regression) and MSS
//! (multi-scale similarity, cross-entropy over positions) of a batch of samples.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::net::{MedLam, MedLamConfig, UAM_RATIO_MM};
use super::sample::Sample;

/// UAM loss unit: errors are measured in cm.
pub(super) const UAM_UNIT_MM: f32 = 10.0;
/// MSS softmax temperature on cosine similarities (the reference's 15).
pub const MSS_TEMPERATURE: f32 = 15.0;

/// Patches as a network input `[N, 1, P, P, P]`.
pub(super) fn patches_input<'a>(
    patches: impl Iterator<Item = &'a Vec<f32>>,
    patch: usize,
    device: &Device,
) -> Tensor<5> {
    let mut data = Vec::new();
    let mut n = 0;
    for p in patches {
        data.extend_from_slice(p);
        n += 1;
    }
    Tensor::from_data(TensorData::new(data, [n, 1, patch, patch, patch]), device)
}

/// Loss tensors of one batch, and the MSS top-1 accuracy at the finest scale when asked.
pub struct BatchLoss {
    pub total: Tensor<1>,
    pub uam: Tensor<1>,
    pub mss: Tensor<1>,
    pub top1: Option<f64>,
}

/// UAM + MSS loss of a batch of samples.
pub fn batch_loss(
    net: &MedLam,
    samples: &[Sample],
    config: &MedLamConfig,
    device: &Device,
    with_top1: bool,
) -> BatchLoss {
    let main = samples
        .iter()
        .map(|s| &s.a)
        .chain(samples.iter().map(|s| &s.a_aug));
    let out = net.forward(patches_input(main, config.patch, device));
    let extra = net.position(patches_input(
        samples.iter().flat_map(|s| s.b.iter()),
        config.patch,
        device,
    ));
    let uam = uam_loss(Tensor::cat(vec![out.position, extra], 0), samples, device);
    let (mss, top1) = mss_loss(out.features, samples, device, with_top1);
    BatchLoss {
        total: uam.clone() + mss.clone(),
        uam,
        mss,
        top1,
    }
}

/// UAM loss (cm²) from the latent positions `[2B + nB, 3]` of `A…, A'…, B₁₁…` (the
/// `B` of sample 0 first): `r·tanh(p − p')` for every pair `(A, Bₖ)`, `(A', Bₖ)`,
/// `(Bₖ, Bₗ)` of a sample against the true centre offset.
pub fn uam_loss(position: Tensor<2>, samples: &[Sample], device: &Device) -> Tensor<1> {
    let b = samples.len();
    let r =
        Tensor::<1>::from_data(TensorData::new(UAM_RATIO_MM.to_vec(), [3]), device).reshape([1, 3]);
    let (mut first, mut second, mut target) = (Vec::new(), Vec::new(), Vec::new());
    let mut extra_row = 2 * b;
    for (si, s) in samples.iter().enumerate() {
        let n = s.centres.len() - 2;
        // Rows and centres of this sample's patches: A, A', B₁…Bₙ.
        let rows: Vec<usize> = [si, b + si]
            .into_iter()
            .chain(extra_row..extra_row + n)
            .collect();
        extra_row += n;
        for i in 0..rows.len() {
            for j in (i + 1).max(2)..rows.len() {
                first.push(rows[i] as i64);
                second.push(rows[j] as i64);
                for a in 0..3 {
                    target.push(
                        ((s.centres[i][a] - s.centres[j][a]) * super::prep::SPACING_MM) as f32,
                    );
                }
            }
        }
    }
    let pairs = first.len();
    let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [pairs]), device);
    let p1 = position.clone().select(0, index(first));
    let p2 = position.select(0, index(second));
    let target = Tensor::<2>::from_data(TensorData::new(target, [pairs, 3]), device);
    let err = (p1 - p2).tanh() * r - target;
    err.powi_scalar(2)
        .mean()
        .div_scalar(UAM_UNIT_MM * UAM_UNIT_MM)
}

/// MSS loss averaged over the three scales (and, when asked, the top-1 accuracy of the
/// finest scale) from the feature maps of `A…, A'…, B…`.
pub fn mss_loss(
    features: [Tensor<5>; 3],
    samples: &[Sample],
    device: &Device,
    with_top1: bool,
) -> (Tensor<1>, Option<f64>) {
    let mut terms = Vec::new();
    let mut top1 = None;
    for (s, feat) in features.into_iter().enumerate() {
        let (loss, acc) = mss_scale_loss(feat, samples, s, device, with_top1 && s == 2);
        terms.push(loss);
        top1 = top1.or(acc);
    }
    let n = terms.len() as f32;
    let sum = terms
        .into_iter()
        .reduce(|a, b| a + b)
        .expect("three scales");
    (sum.div_scalar(n), top1)
}

/// Cross-entropy of one scale: each query point's softmax over the cosine similarities
/// (×[`MSS_TEMPERATURE`]) with all feature voxels of the other patch, against the
/// uniform distribution over its true correspondences; mean over visible points.
pub(super) fn mss_scale_loss(
    feat: Tensor<5>,
    samples: &[Sample],
    scale: usize,
    device: &Device,
    with_top1: bool,
) -> (Tensor<1>, Option<f64>) {
    let b = samples.len();
    let [n3, c, m, _, _] = feat.dims();
    let mm = m * m * m;
    let norm = feat
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-6);
    let flat: Tensor<3> = (feat / norm).reshape([n3, c, mm]).swap_dims(1, 2); // [3B, M, C]
    let rows: Tensor<2> = flat.clone().reshape([n3 * mm, c]);
    let k = samples[0].mss[scale][0].query.len();
    let mut idx = Vec::with_capacity(2 * b * k);
    let mut weights = vec![0f32; 2 * b * k * mm];
    let mut valid = 0usize;
    for dir in 0..2 {
        for (bi, smp) in samples.iter().enumerate() {
            // Direction 0 queries A (rows 0..B), direction 1 queries A' (rows B..2B).
            let source = if dir == 0 { bi } else { b + bi };
            let d = &smp.mss[scale][dir];
            for (pi, (&q, pos)) in d.query.iter().zip(&d.positives).enumerate() {
                idx.push((source * mm + q) as i64);
                if !pos.is_empty() {
                    valid += 1;
                    let row = ((dir * b + bi) * k + pi) * mm;
                    let w = 1.0 / pos.len() as f32;
                    for &t in pos {
                        weights[row + t] = w;
                    }
                }
            }
        }
    }
    let index = Tensor::<1, Int>::from_data(TensorData::new(idx, [2 * b * k]), device);
    let queries: Tensor<3> = rows.select(0, index).reshape([2 * b, k, c]);
    // Direction 0 matches against A' (rows B..2B), direction 1 against A (rows 0..B).
    let keys = Tensor::cat(vec![flat.clone().narrow(0, b, b), flat.narrow(0, 0, b)], 0);
    let logits = queries
        .matmul(keys.swap_dims(1, 2))
        .mul_scalar(MSS_TEMPERATURE);
    let top1 = with_top1.then(|| {
        let best: Vec<i64> = logits
            .clone()
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap_or_default();
        let hits = best
            .iter()
            .enumerate()
            .filter(|(row, t)| weights[row * mm + **t as usize] > 0.0)
            .count();
        hits as f64 / valid.max(1) as f64
    });
    let w = Tensor::<3>::from_data(TensorData::new(weights, [2 * b, k, mm]), device);
    let logp = log_softmax(logits, 2);
    let loss = (w * logp).sum().neg().div_scalar(valid.max(1) as f32);
    (loss, top1)
}

pub(super) fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medlam::prep::Prepared;
    use crate::medlam::sample::{MssDirection, SamplingOptions};
    use crate::medlam::train_data::{TrainVolume, draw_batch};
    use crate::volume::resample::ResampleGrid;

    fn one_sample(centres: Vec<[f64; 3]>, mss: Vec<[MssDirection; 2]>) -> Sample {
        Sample {
            a: vec![],
            a_aug: vec![],
            b: vec![],
            centres,
            mss,
        }
    }

    #[test]
    fn uam_loss_is_the_mse_of_the_tanh_offsets_in_cm2() {
        let dev = Device::flex();
        // p_A = (0.1, 0, 0.2), p_A' = (0, 0, 0), p_B = (0, 0.05, 0).
        let p = Tensor::<2>::from_data(
            TensorData::new(
                vec![0.1f32, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0],
                [3, 3],
            ),
            &dev,
        );
        // True centre offsets (grid voxels of 3 mm): A − B = (10, 0, 20), A' − B = (0, −4, 0).
        let s = one_sample(
            vec![[10.0, 0.0, 20.0], [0.0, -4.0, 0.0], [0.0, 0.0, 0.0]],
            vec![],
        );
        let got = scalar(&uam_loss(p, &[s], &dev));
        let pred1 = [
            600.0 * 0.1f64.tanh(),
            600.0 * (-0.05f64).tanh(),
            1500.0 * 0.2f64.tanh(),
        ];
        let true1 = [30.0, 0.0, 60.0];
        let pred2 = [0.0, 600.0 * (-0.05f64).tanh(), 0.0];
        let true2 = [0.0, -12.0, 0.0];
        let mse =
            |p: [f64; 3], t: [f64; 3]| (0..3).map(|a| (p[a] - t[a]).powi(2)).sum::<f64>() / 3.0;
        let want = (mse(pred1, true1) + mse(pred2, true2)) / 2.0 / 100.0;
        assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    }

    #[test]
    fn mss_loss_is_the_cross_entropy_over_true_correspondences() {
        let dev = Device::flex();
        // B = 1, 2 channels, 2³ feature voxels per patch (A, A', and an unused third).
        // A: every voxel (1, 0). A': voxel 5 is (1, 0), voxel 6 is (0.6, 0.8), others (0, 1).
        let mut v = vec![0f32; 3 * 2 * 8];
        for x in 0..8 {
            v[x] = 1.0; // A, channel 0
            let (c0, c1) = match x {
                5 => (1.0, 0.0),
                6 => (0.6, 0.8),
                _ => (0.0, 1.0),
            };
            v[16 + x] = c0;
            v[16 + 8 + x] = c1;
        }
        let feat = Tensor::<5>::from_data(TensorData::new(v, [3, 2, 2, 2, 2]), &dev);
        // A → A': one point (feature voxel 0 of A) whose true correspondences are A' voxels 5 and 6.
        // A' → A: one point with no correspondence (ignored).
        let dirs = [
            MssDirection {
                query: vec![0],
                positives: vec![vec![5, 6]],
            },
            MssDirection {
                query: vec![3],
                positives: vec![vec![]],
            },
        ];
        let s = one_sample(vec![[0.0; 3]; 3], vec![dirs.clone(), dirs.clone(), dirs]);
        let (loss, top1) = mss_scale_loss(feat, &[s], 2, &dev, true);
        // Logits 15·cos: voxel 5 → 15, voxel 6 → 9, six others → 0.
        let log_z = (15f64.exp() + 9f64.exp() + 6.0).ln();
        let want = -0.5 * ((15.0 - log_z) + (9.0 - log_z));
        let got = scalar(&loss);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        assert_eq!(top1, Some(1.0));
    }

    #[test]
    fn losses_of_a_real_batch_are_finite() {
        let cfg =
            MedLamConfig::new(16, [2, 4, 4, 8, 8], [8, 4, 4, 4], [8, 4]).with_decoder_levels(3);
        let dims = [30, 30, 30];
        let data: Vec<f32> = (0..27000)
            .map(|i| ((i * 37) % 101) as f32 / 101.0)
            .collect();
        let vol = Prepared::from_parts(
            dims,
            data,
            ResampleGrid::new(dims, [3.0; 3], [3.0; 3]).unwrap(),
        )
        .unwrap();
        let vols = vec![TrainVolume {
            name: "x".into(),
            vol,
        }];
        let o = SamplingOptions {
            points: 4,
            ..Default::default()
        };
        let s = draw_batch(&vols, 1, 0, 2, &cfg, &o);
        let dev = Device::flex();
        let net = cfg.init(&dev).unwrap();
        let l = batch_loss(&net, &s, &cfg, &dev, true);
        let (u, m) = (scalar(&l.uam), scalar(&l.mss));
        assert!(
            u.is_finite() && u >= 0.0 && m.is_finite() && m > 0.0,
            "{u} {m}"
        );
        assert!((0.0..=1.0).contains(&l.top1.unwrap()));
    }
}
