//! Small building blocks shared by the SAM encoders and decoder: a convolution
//! followed by batch norm (TinyViT's `Conv2d_BN`), channel layer norm on
//! `[B, C, H, W]` maps (SAM's `LayerNorm2d`), the two MLP shapes and SAM's neck.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::{Device, Tensor};

/// Parameters start at zero: every model here is loaded from weights right after.
pub(crate) const INIT: Initializer = Initializer::Zeros;

/// Geometry of a [`ConvBn`]: kernel, stride, padding and groups (square).
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvSpec {
    /// A 1×1 convolution.
    pub const POINTWISE: Self = Self {
        kernel: 1,
        stride: 1,
        padding: 0,
        groups: 1,
    };

    /// A 3×3 depthwise convolution with padding 1 over `channels`.
    pub fn depthwise3(channels: usize, stride: usize) -> Self {
        Self {
            kernel: 3,
            stride,
            padding: 1,
            groups: channels,
        }
    }
}

/// Convolution without bias followed by batch norm (inference: running statistics).
/// [`ConvBn::fold_batch_norm`] merges the norm into the convolution for speed.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    /// `None` once folded into `conv`.
    pub bn: Option<BatchNorm>,
}

impl ConvBn {
    /// A `c_in → c_out` convolution with batch norm (eps 1e-5, as PyTorch's default).
    pub fn new(c_in: usize, c_out: usize, spec: ConvSpec, device: &Device) -> Self {
        let p = spec.padding;
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [spec.kernel, spec.kernel])
                .with_stride([spec.stride, spec.stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_groups(spec.groups)
                .with_bias(false)
                .with_initializer(INIT)
                .init(device),
            bn: Some(BatchNormConfig::new(c_out).init(device)),
        }
    }

    /// `[B, C_in, H, W] → [B, C_out, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv.forward(x);
        match &self.bn {
            Some(bn) => bn.forward(y),
            None => y,
        }
    }

    /// The same function as one convolution with bias: `w·γ/σ`, `β − μ·γ/σ`
    /// (σ = √(running var + ε)); saves a pass over the activations.
    pub fn fold_batch_norm(self) -> Self {
        let Some(bn) = self.bn else { return self };
        let mut conv = self.conv;
        let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
        let bias = bn.beta.val() - bn.running_mean.value() * scale.clone();
        let c = scale.dims()[0];
        conv.weight = conv.weight.map(|w| w * scale.reshape([c, 1, 1, 1]));
        conv.bias = Some(Param::from_tensor(bias));
        Self { conv, bn: None }
    }
}

/// Layer norm over the channels of a `[B, C, H, W]` map (SAM's `LayerNorm2d`, eps 1e-6).
pub fn layer_norm_2d(norm: &LayerNorm, x: Tensor<4>) -> Tensor<4> {
    norm.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

/// A [`LayerNorm`] for [`layer_norm_2d`] (eps 1e-6).
pub fn layer_norm_2d_init(channels: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(channels)
        .with_epsilon(1e-6)
        .init(device)
}

/// A linear layer initialised for loading.
pub fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_initializer(INIT)
        .init(device)
}

/// Two linear layers with an activation between them (SAM's `MLPBlock`: GELU in
/// the ViT encoder, ReLU in the two-way transformer).
#[derive(Module, Debug)]
pub struct MlpBlock {
    pub lin1: Linear,
    pub lin2: Linear,
}

impl MlpBlock {
    /// `dim → hidden → dim`.
    pub fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self {
            lin1: linear(dim, hidden, device),
            lin2: linear(hidden, dim, device),
        }
    }

    /// `[..., dim] → [..., dim]` with GELU.
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.lin2.forward(gelu(self.lin1.forward(x)))
    }

    /// `[..., dim] → [..., dim]` with ReLU.
    pub fn forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.lin2.forward(relu(self.lin1.forward(x)))
    }
}

/// A stack of linear layers with ReLU between them (the mask decoder's `MLP`).
#[derive(Module, Debug)]
pub struct MlpRelu {
    pub layers: Vec<Linear>,
}

impl MlpRelu {
    /// `num_layers` layers: `d_in → hidden → … → d_out`.
    pub fn new(
        d_in: usize,
        hidden: usize,
        d_out: usize,
        num_layers: usize,
        device: &Device,
    ) -> Self {
        let layers = (0..num_layers)
            .map(|i| {
                let a = if i == 0 { d_in } else { hidden };
                let b = if i + 1 == num_layers { d_out } else { hidden };
                linear(a, b, device)
            })
            .collect();
        Self { layers }
    }

    /// `[..., d_in] → [..., d_out]`.
    pub fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// SAM's neck: 1×1 conv, layer norm, 3×3 conv, layer norm (no biases in the convs).
#[derive(Module, Debug)]
pub struct Neck {
    pub conv1: Conv2d,
    pub norm1: LayerNorm,
    pub conv2: Conv2d,
    pub norm2: LayerNorm,
}

impl Neck {
    /// `c_in → c_out` channels.
    pub fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_bias(false)
                .with_initializer(INIT)
                .init(device),
            norm1: layer_norm_2d_init(c_out, device),
            conv2: Conv2dConfig::new([c_out, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .with_initializer(INIT)
                .init(device),
            norm2: layer_norm_2d_init(c_out, device),
        }
    }

    /// `[B, C_in, H, W] → [B, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = layer_norm_2d(&self.norm1, self.conv1.forward(x));
        layer_norm_2d(&self.norm2, self.conv2.forward(x))
    }
}
