//! Differentiable image sampling and similarity measures from Burn tensor ops.
//!
//! **What Burn lacks:** Burn 0.22 has no 3-D `grid_sample` and no trilinear
//! interpolation (`interpolate` is 4-D only), so [`trilinear`] is written here from
//! Burn ops: the 8 corners of each sample position are found with `floor`, read
//! from the flattened volume with `select`, and blended with the 8 products of the
//! per-axis weights. The corner indices carry no gradient; the weights do, so the
//! gradient of a sampled value with respect to its position is the local image
//! gradient (what `grid_sample`'s backward gives). Box filtering for the local NCC
//! uses cumulative sums (Burn has no 3-D average pooling either).

use burn::tensor::{Int, Tensor};

/// Trilinear samples of a volume at continuous voxel positions.
///
/// `volume` is flattened in NIfTI order (`i + dims[0]·(j + dims[1]·k)`), `pos` is
/// `[n, 3]` (columns i, j, k). Positions are clamped to the grid (border values
/// outside; no gradient there). Returns the `[n]` samples and an `[n]` 0/1 mask
/// (constant) of the positions that lie inside the grid.
pub fn trilinear(volume: &Tensor<1>, dims: [usize; 3], pos: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    let n = pos.dims()[0];
    let cols = pos.chunk(3, 1);
    let mut w1 = Vec::with_capacity(3); // weight of the upper corner, per axis
    let mut i0 = Vec::with_capacity(3);
    let mut i1 = Vec::with_capacity(3);
    let mut inside: Option<Tensor<1>> = None;
    for (a, col) in cols.into_iter().enumerate() {
        let hi = (dims[a] - 1) as f32;
        let p = col.reshape([n]);
        let plain = p.clone().detach();
        let ins = plain
            .clone()
            .greater_equal_elem(-1e-3)
            .float()
            .mul(plain.clone().lower_equal_elem(hi + 1e-3).float());
        inside = Some(match inside {
            None => ins,
            Some(m) => m.mul(ins),
        });
        let pc = p.clamp(0.0, hi);
        // The lower corner: floor, kept one voxel below the last one so the upper corner exists.
        let f = pc.clone().detach().floor().clamp(0.0, (hi - 1.0).max(0.0));
        let lo: Tensor<1, Int> = f.clone().int();
        let up: Tensor<1, Int> = if dims[a] > 1 {
            lo.clone().add_scalar(1)
        } else {
            lo.clone()
        };
        w1.push(pc.sub(f));
        i0.push(lo);
        i1.push(up);
    }
    let sx = dims[0] as i64;
    let sxy = (dims[0] * dims[1]) as i64;
    let index = |ix: &Tensor<1, Int>, iy: &Tensor<1, Int>, iz: &Tensor<1, Int>| {
        ix.clone() + iy.clone().mul_scalar(sx) + iz.clone().mul_scalar(sxy)
    };
    let mut out: Option<Tensor<1>> = None;
    for c in 0..8 {
        let pick = |a: usize| (c >> a) & 1 == 1;
        let ix = if pick(0) { &i1[0] } else { &i0[0] };
        let iy = if pick(1) { &i1[1] } else { &i0[1] };
        let iz = if pick(2) { &i1[2] } else { &i0[2] };
        let v = volume.clone().select(0, index(ix, iy, iz));
        let mut w: Option<Tensor<1>> = None;
        for a in 0..3 {
            let wa = if pick(a) {
                w1[a].clone()
            } else {
                w1[a].clone().neg().add_scalar(1.0)
            };
            w = Some(match w {
                None => wa,
                Some(w) => w.mul(wa),
            });
        }
        let term = v.mul(w.expect("three axes"));
        out = Some(match out {
            None => term,
            Some(o) => o.add(term),
        });
    }
    (
        out.expect("eight corners"),
        inside.expect("three axes").detach(),
    )
}

/// Weighted global normalised cross-correlation of two `[n]` signals (weights `[n]`, ≥ 0).
pub fn ncc(a: Tensor<1>, b: Tensor<1>, w: Tensor<1>) -> Tensor<1> {
    let sw = w.clone().sum().add_scalar(1e-6);
    let ma = a.clone().mul(w.clone()).sum().div(sw.clone());
    let mb = b.clone().mul(w.clone()).sum().div(sw.clone());
    let da = a.sub(ma);
    let db = b.sub(mb);
    let cov = da.clone().mul(db.clone()).mul(w.clone()).sum();
    let va = da.clone().mul(da).mul(w.clone()).sum();
    let vb = db.clone().mul(db).mul(w).sum();
    cov.div(va.mul(vb).add_scalar(1e-12).sqrt())
}

/// Box mean over a `win`³ window (zero padding, divided by the full window size) of
/// `[c, 1, d, h, w]` maps: per axis a cumulative sum and the difference of two shifted
/// views of it (Burn has no 3-D average pooling; this is cheaper than a `conv3d`).
pub fn box_mean(x: Tensor<5>, win: usize) -> Tensor<5> {
    let r = win / 2;
    let mut y = x;
    for axis in 2..5 {
        let dims = y.dims();
        let n = dims[axis];
        let mut front = dims;
        front[axis] = r + 1;
        let mut back = dims;
        back[axis] = r;
        let device = y.device();
        let padded = Tensor::cat(
            vec![
                Tensor::<5>::zeros(front, &device),
                y,
                Tensor::<5>::zeros(back, &device),
            ],
            axis,
        );
        let c = padded.cumsum(axis);
        y = c
            .clone()
            .narrow(axis, 2 * r + 1, n)
            .sub(c.narrow(axis, 0, n));
    }
    y.div_scalar((win * win * win) as f32)
}

/// Local NCC map (`[d·h·w]`, each voxel's correlation over its `win`³ window) of two
/// volumes given as `[d·h·w]` in NIfTI order with `dims` (x, y, z).
pub fn local_ncc(a: Tensor<1>, b: Tensor<1>, dims: [usize; 3], win: usize) -> Tensor<1> {
    let shape = [1, 1, dims[2], dims[1], dims[0]];
    let a5 = a.reshape(shape);
    let b5 = b.reshape(shape);
    let stack = Tensor::cat(
        vec![
            a5.clone(),
            b5.clone(),
            a5.clone().mul(a5.clone()),
            b5.clone().mul(b5.clone()),
            a5.mul(b5),
        ],
        0,
    );
    let m = box_mean(stack, win);
    let parts = m.chunk(5, 0);
    let n = dims.iter().product::<usize>();
    let [ma, mb, maa, mbb, mab]: [Tensor<1>; 5] = parts
        .into_iter()
        .map(|t| t.reshape([n]))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| unreachable!("five maps"));
    let cross = mab.sub(ma.clone().mul(mb.clone()));
    let va = maa.sub(ma.clone().mul(ma)).clamp_min(0.0);
    let vb = mbb.sub(mb.clone().mul(mb)).clamp_min(0.0);
    cross.div(va.mul(vb).add_scalar(1e-5).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::resample::sample_linear;
    use crate::volume::{Affine, Volume};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn trilinear_matches_sample_linear_and_has_the_image_gradient() {
        let dims = [7, 5, 4];
        let data: Vec<f32> = (0..140)
            .map(|v| ((v * 37) % 23) as f32 * 0.5 - 3.0)
            .collect();
        let vol = Volume::from_data(dims, data.clone(), Affine::identity()).unwrap();
        let pts: Vec<[f64; 3]> = vec![
            [0.0, 0.0, 0.0],
            [1.25, 2.5, 0.75],
            [5.9, 3.99, 2.01],
            [6.0, 4.0, 3.0],
            [3.3, 0.1, 1.7],
            [-2.0, 1.5, 1.5],
            [9.0, 4.5, 3.5],
        ];
        let device = Device::flex();
        let flat = Tensor::<1>::from_data(TensorData::new(data, [140]), &device);
        let pos: Vec<f32> = pts.iter().flat_map(|p| p.map(|x| x as f32)).collect();
        let pos = Tensor::<2>::from_data(TensorData::new(pos, [pts.len(), 3]), &device);
        let (v, inside) = trilinear(&flat, dims, pos);
        let v = v.into_data().try_to_vec::<f32>().unwrap();
        let inside = inside.into_data().try_to_vec::<f32>().unwrap();
        for (k, p) in pts.iter().enumerate() {
            let expect = sample_linear(&vol, *p);
            assert!((v[k] - expect).abs() < 1e-4, "{p:?}: {} vs {expect}", v[k]);
        }
        assert_eq!(inside, vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn gradient_of_a_sample_is_the_ramp_slope() {
        // value = 2i − 3j + 0.5k: the gradient with respect to the position is (2, −3, 0.5).
        let dims = [6, 6, 6];
        let mut data = Vec::new();
        for k in 0..6 {
            for j in 0..6 {
                for i in 0..6 {
                    data.push(2.0 * i as f32 - 3.0 * j as f32 + 0.5 * k as f32);
                }
            }
        }
        let device = Device::flex().autodiff();
        let flat = Tensor::<1>::from_data(TensorData::new(data, [216]), &Device::flex());
        let pos = Tensor::<2>::from_data(TensorData::new(vec![2.3f32, 1.6, 3.2], [1, 3]), &device)
            .require_grad();
        let (v, _) = trilinear(&flat, dims, pos.clone());
        let grads = v.sum().backward();
        let g = pos
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            (g[0] - 2.0).abs() < 1e-4 && (g[1] + 3.0).abs() < 1e-4 && (g[2] - 0.5).abs() < 1e-4
        );
    }

    #[test]
    fn ncc_and_local_ncc_of_related_signals() {
        let device = Device::flex();
        let dims = [9, 8, 7];
        let n = 9 * 8 * 7;
        let a: Vec<f32> = (0..n).map(|v| ((v * 13) % 17) as f32).collect();
        let b: Vec<f32> = a.iter().map(|v| 3.0 * v + 1.0).collect();
        let c: Vec<f32> = a.iter().map(|v| -v).collect();
        let t = |x: Vec<f32>| Tensor::<1>::from_data(TensorData::new(x, [n]), &device);
        let ones = Tensor::<1>::ones([n], &device);
        let s = |x: Tensor<1>| x.into_data().try_to_vec::<f32>().unwrap();
        assert!((s(ncc(t(a.clone()), t(b.clone()), ones.clone()))[0] - 1.0).abs() < 1e-4);
        assert!((s(ncc(t(a.clone()), t(c.clone()), ones))[0] + 1.0).abs() < 1e-4);
        let l = s(local_ncc(t(a.clone()), t(b), dims, 3));
        // Interior voxels (full windows): exactly 1.
        let centre = 4 + 9 * (4 + 8 * 3);
        assert!((l[centre] - 1.0).abs() < 1e-3, "{}", l[centre]);
        let l = s(local_ncc(t(a), t(c), dims, 3));
        assert!((l[centre] + 1.0).abs() < 1e-3, "{}", l[centre]);
    }
}
