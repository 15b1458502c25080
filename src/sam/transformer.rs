//! SAM's two-way transformer: prompt tokens and image tokens attend to each
//! other in turn (token self-attention, tokens → image, MLP on tokens,
//! image → tokens), then a final tokens → image attention.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::module::attention;
use burn::tensor::{Device, Tensor};

use super::common::{MlpBlock, linear};

/// Multi-head attention whose projections may shrink the width (`downsample_rate`).
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    /// `dim` in and out, `dim / downsample_rate` inside.
    pub fn new(dim: usize, num_heads: usize, downsample_rate: usize, device: &Device) -> Self {
        let inner = dim / downsample_rate;
        Self {
            q_proj: linear(dim, inner, device),
            k_proj: linear(dim, inner, device),
            v_proj: linear(dim, inner, device),
            out_proj: linear(inner, dim, device),
            num_heads,
        }
    }

    fn heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, n, c] = x.dims();
        x.reshape([b, n, self.num_heads, c / self.num_heads])
            .swap_dims(1, 2)
    }

    /// Queries `[B, Nq, D]` attend to keys `[B, Nk, D]` with values `[B, Nk, D]` → `[B, Nq, D]`.
    /// Any of the three may have a batch of 1 that the other B share (the image of a batch of
    /// prompts): its projection is then computed once, not once per prompt.
    pub fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        self.attend(
            self.q_proj.forward(q),
            self.k_proj.forward(k),
            self.v_proj.forward(v),
        )
    }

    /// [`Self::forward`] on queries, keys and values already projected (`[B or 1, N, inner]`).
    pub fn attend(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let b = q.dims()[0].max(k.dims()[0]).max(v.dims()[0]);
        let shared = |x: Tensor<4>| {
            let [_, h, n, c] = x.dims();
            x.expand([b, h, n, c])
        };
        let q = shared(self.heads(q));
        let k = shared(self.heads(k));
        let v = shared(self.heads(v));
        let [_, h, n, c] = q.dims();
        let out = attention(q, k, v, None, None, Default::default());
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, n, h * c]))
    }
}

/// One two-way block.
#[derive(Module, Debug)]
pub struct TwoWayBlock {
    pub self_attn: Attention,
    pub norm1: LayerNorm,
    pub cross_attn_token_to_image: Attention,
    pub norm2: LayerNorm,
    pub mlp: MlpBlock,
    pub norm3: LayerNorm,
    pub norm4: LayerNorm,
    pub cross_attn_image_to_token: Attention,
    /// The first block does not add the positional encoding before self-attention.
    pub skip_first_layer_pe: bool,
}

/// What the first two-way block computes from the image alone, the same for every prompt on
/// it: kept with a slice's embedding, each decoded box reuses it ([`TwoWayTransformer::image`]).
#[derive(Clone, Debug)]
pub struct TransformerImage {
    /// `[1, HW, D]` image tokens (the embedding plus the dense prompt embedding).
    pub keys: Tensor<3>,
    /// `[1, HW, D]` their positional encoding.
    pub key_pe: Tensor<3>,
    /// `[1, HW, D/2]` each: the first block's tokens → image keys and values and its image →
    /// tokens queries (`TwoWayBlock::project_image`).
    pub first_block: (Tensor<3>, Tensor<3>, Tensor<3>),
    /// `[H, W]` of the image grid.
    pub grid: [usize; 2],
}

/// Tokens and image tokens flowing through the transformer, with their positional encodings.
pub struct TwoWayState {
    /// `[B, Nt, D]` prompt and output tokens.
    pub queries: Tensor<3>,
    /// `[B, HW, D]` image tokens.
    pub keys: Tensor<3>,
}

impl TwoWayBlock {
    fn new(dim: usize, heads: usize, mlp_dim: usize, first: bool, device: &Device) -> Self {
        let ln = || LayerNormConfig::new(dim).init(device);
        Self {
            self_attn: Attention::new(dim, heads, 1, device),
            norm1: ln(),
            cross_attn_token_to_image: Attention::new(dim, heads, 2, device),
            norm2: ln(),
            mlp: MlpBlock::new(dim, mlp_dim, device),
            norm3: ln(),
            norm4: ln(),
            cross_attn_image_to_token: Attention::new(dim, heads, 2, device),
            skip_first_layer_pe: first,
        }
    }

    /// One round of token/image attention; `query_pe` `[B, Nt, D]`, `key_pe` `[1, HW, D]`.
    /// The image tokens may come in with a batch of 1 (the first block: the image is the same
    /// for every prompt); they leave with the prompts' batch B.
    pub fn forward(&self, s: TwoWayState, query_pe: &Tensor<3>, key_pe: &Tensor<3>) -> TwoWayState {
        let image = self.project_image(&s.keys, key_pe);
        self.forward_projected(s, query_pe, image)
    }

    /// The image tokens' projections this block uses: (tokens → image keys
    /// `k_proj(keys + key_pe)`, tokens → image values `v_proj(keys)`, image → tokens queries
    /// `q_proj(keys + key_pe)`).
    fn project_image(
        &self,
        keys: &Tensor<3>,
        key_pe: &Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        let k = keys.clone() + key_pe.clone();
        (
            self.cross_attn_token_to_image.k_proj.forward(k.clone()),
            self.cross_attn_token_to_image.v_proj.forward(keys.clone()),
            self.cross_attn_image_to_token.q_proj.forward(k),
        )
    }

    /// [`Self::forward`] with the image tokens' projections given: (tokens → image keys,
    /// tokens → image values, image → tokens queries).
    fn forward_projected(
        &self,
        s: TwoWayState,
        query_pe: &Tensor<3>,
        (image_k, image_v, image_q): (Tensor<3>, Tensor<3>, Tensor<3>),
    ) -> TwoWayState {
        let TwoWayState { queries, keys } = s;
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.norm1.forward(queries);

        let q = queries.clone() + query_pe.clone();
        let attn = &self.cross_attn_token_to_image;
        let queries = queries + attn.attend(attn.q_proj.forward(q), image_k, image_v);
        let queries = self.norm2.forward(queries);

        let queries = queries.clone() + self.mlp.forward_relu(queries);
        let queries = self.norm3.forward(queries);

        let q = queries.clone() + query_pe.clone();
        let attn = &self.cross_attn_image_to_token;
        let keys = keys
            + attn.attend(
                image_q,
                attn.k_proj.forward(q),
                attn.v_proj.forward(queries.clone()),
            );
        let keys = self.norm4.forward(keys);
        TwoWayState { queries, keys }
    }
}

/// The two-way transformer of SAM's mask decoder.
#[derive(Module, Debug)]
pub struct TwoWayTransformer {
    pub layers: Vec<TwoWayBlock>,
    pub final_attn_token_to_image: Attention,
    pub norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// `depth` blocks of width `dim` (SAM: depth 2, dim 256, 8 heads, MLP 2048).
    pub fn new(depth: usize, dim: usize, heads: usize, mlp_dim: usize, device: &Device) -> Self {
        Self {
            layers: (0..depth)
                .map(|i| TwoWayBlock::new(dim, heads, mlp_dim, i == 0, device))
                .collect(),
            final_attn_token_to_image: Attention::new(dim, heads, 2, device),
            norm_final_attn: LayerNormConfig::new(dim).init(device),
        }
    }

    /// The image side of the first block ([`TransformerImage`]) for an image `[1, D, H, W]`
    /// and its positional encoding `[1, D, H, W]`.
    pub fn image(&self, image: Tensor<4>, image_pe: Tensor<4>) -> TransformerImage {
        let [bi, d, h, w] = image.dims();
        let keys = image.reshape([bi, d, h * w]).swap_dims(1, 2);
        let [bp, ..] = image_pe.dims();
        let key_pe = image_pe.reshape([bp, d, h * w]).swap_dims(1, 2);
        let first = self
            .layers
            .first()
            .expect("SAM's two-way transformer has at least one block");
        TransformerImage {
            first_block: first.project_image(&keys, &key_pe),
            keys,
            key_pe,
            grid: [h, w],
        }
    }

    /// Image `[1 or B, D, H, W]` with its positional encoding `[1, D, H, W]`, tokens `[B, Nt, D]`
    /// → (tokens `[B, Nt, D]`, image tokens `[B, HW, D]`).
    pub fn forward(
        &self,
        image: Tensor<4>,
        image_pe: Tensor<4>,
        tokens: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        self.forward_image(&self.image(image, image_pe), tokens)
    }

    /// [`Self::forward`] on an image prepared by [`Self::image`] (shared by the B prompts: the
    /// first block's image projections are not computed again).
    pub fn forward_image(
        &self,
        image: &TransformerImage,
        tokens: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let key_pe = image.key_pe.clone();
        let mut s = TwoWayState {
            queries: tokens.clone(),
            keys: image.keys.clone(),
        };
        let (first, rest) = self
            .layers
            .split_first()
            .expect("SAM's two-way transformer has at least one block");
        s = first.forward_projected(s, &tokens, image.first_block.clone());
        for layer in rest {
            s = layer.forward(s, &tokens, &key_pe);
        }
        let q = s.queries.clone() + tokens;
        let k = s.keys.clone() + key_pe;
        let queries = s.queries + self.final_attn_token_to_image.forward(q, k, s.keys.clone());
        (self.norm_final_attn.forward(queries), s.keys)
    }
}
