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
}
