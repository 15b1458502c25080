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
