//! Timings of single Burn operations at LiteMedSAM's encoder shapes on the CPU
//! backend (Flex), to see what limits `medlsam bench sam`; the same operations in
//! PyTorch: `tools/flex_ops_torch.py`. Run: `cargo run --release --example flex_ops`.

use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};

fn t<F: FnMut() -> Tensor<4>>(name: &str, mut f: F) {
    let _ = f().into_data();
    let mut v = vec![];
    for _ in 0..5 {
        let s = std::time::Instant::now();
        let y = f();
        let _ = y.slice([0..1, 0..1, 0..1, 0..1]).into_data();
        v.push(s.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    println!("{name:<40}{:8.1} ms", v[2]);
}

fn main() {
    println!("Flex CPU, median of 5 runs");
    let d = Device::flex();
    let x64 = Tensor::<4>::random([1, 64, 256, 256], Distribution::Normal(0.0, 1.0), &d);
    let x256 = Tensor::<4>::random([1, 256, 256, 256], Distribution::Normal(0.0, 1.0), &d);
    let c1 = Conv2dConfig::new([64, 256], [1, 1]).init(&d);
    let c1nb = Conv2dConfig::new([64, 256], [1, 1])
        .with_bias(false)
        .init(&d);
    let dw = Conv2dConfig::new([256, 256], [3, 3])
        .with_groups(256)
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&d);
    let c3 = Conv2dConfig::new([256, 64], [1, 1]).init(&d);
    let bn = BatchNormConfig::new(256).init(&d);
    t("conv1x1 64->256 @256^2 bias", || c1.forward(x64.clone()));
    t("conv1x1 64->256 @256^2 nobias", || {
        c1nb.forward(x64.clone())
    });
    t("dwconv3x3 256 @256^2", || dw.forward(x256.clone()));
    t("conv1x1 256->64 @256^2", || c3.forward(x256.clone()));
    t("batchnorm 256 @256^2", || bn.forward(x256.clone()));
    t("gelu 256 @256^2", || gelu(x256.clone()));
    t("add 256 @256^2", || x256.clone() + x256.clone());
    t("clone-only (no-op) ", || x256.clone());
    // tokens-style matmul: stage 1 MLP
    let tok = Tensor::<3>::random([1, 128 * 128, 128], Distribution::Normal(0.0, 1.0), &d);
    let fc = burn::nn::LinearConfig::new(128, 512).init(&d);
    t("linear 128->512 x16384", || {
        fc.forward(tok.clone()).unsqueeze()
    });
    let ln = burn::nn::LayerNormConfig::new(128).init(&d);
    t("layernorm 128 x16384", || {
        ln.forward(tok.clone()).unsqueeze()
    });
    // windowed attention stage 1: 361 windows, 4 heads, 49 tokens, 32 dims
    let q = Tensor::<4>::random([361, 4, 49, 32], Distribution::Normal(0.0, 1.0), &d);
    let bias = Tensor::<4>::random([1, 4, 49, 49], Distribution::Normal(0.0, 1.0), &d);
    t("attention 361x4x49x32 (+bias)", || {
        burn::tensor::module::attention(
            q.clone(),
            q.clone(),
            q.clone(),
            None,
            Some(bias.clone()),
            Default::default(),
        )
    });
    t("matmul qk^T 361x4x49x32", || {
        q.clone().matmul(q.clone().swap_dims(2, 3))
    });
    t("swap_dims(1,2)+reshape tokens", || {
        tok.clone().swap_dims(1, 2).reshape([1, 128, 128, 128])
    });
    // The mask decoder's shapes (64² embedding of 256 channels, 4096 image tokens).
    let e = Tensor::<4>::random([1, 256, 64, 64], Distribution::Normal(0.0, 1.0), &d);
    let up1 = burn::nn::conv::ConvTranspose2dConfig::new([256, 64], [2, 2])
        .with_stride([2, 2])
        .init(&d);
    let u1 = Tensor::<4>::random([1, 64, 128, 128], Distribution::Normal(0.0, 1.0), &d);
    let up2 = burn::nn::conv::ConvTranspose2dConfig::new([64, 32], [2, 2])
        .with_stride([2, 2])
        .init(&d);
    t("deconv 256->64 k2s2 @64^2", || up1.forward(e.clone()));
    t("deconv 64->32 k2s2 @128^2", || up2.forward(u1.clone()));
    t("gelu 64 @128^2", || gelu(u1.clone()));
    let itok = Tensor::<3>::random([1, 4096, 256], Distribution::Normal(0.0, 1.0), &d);
    let fc256 = burn::nn::LinearConfig::new(256, 128).init(&d);
    t("linear 256->128 x4096", || {
        fc256.forward(itok.clone()).unsqueeze()
    });
    let fc2048 = burn::nn::LinearConfig::new(256, 2048).init(&d);
    t("linear 256->2048 x4096 (mlp)", || {
        fc2048.forward(itok.clone()).unsqueeze()
    });
    let q8 = Tensor::<4>::random([1, 8, 7, 16], Distribution::Normal(0.0, 1.0), &d);
    let k8 = Tensor::<4>::random([1, 8, 4096, 16], Distribution::Normal(0.0, 1.0), &d);
    t("attention tokens->image 8x7x4096x16", || {
        burn::tensor::module::attention(
            q8.clone(),
            k8.clone(),
            k8.clone(),
            None,
            None,
            Default::default(),
        )
    });
    t("attention image->tokens 8x4096x7x16", || {
        burn::tensor::module::attention(
            k8.clone(),
            q8.clone(),
            q8.clone(),
            None,
            None,
            Default::default(),
        )
    });
    let ln256 = burn::nn::LayerNormConfig::new(256).init(&d);
    t("layernorm 256 x4096", || {
        ln256.forward(itok.clone()).unsqueeze()
    });
    let m = Tensor::<4>::random([1, 1, 256, 256], Distribution::Normal(0.0, 1.0), &d);
    t("bilinear 256^2 -> 512^2", || {
        burn::tensor::module::interpolate(
            m.clone(),
            burn::tensor::ops::InterpolateOptions::new(
                burn::tensor::ops::InterpolateMode::Bilinear,
            )
            .with_output_size([512, 512])
            .with_align_corners(false),
        )
    });
}
