//! The SAM/MedSAM ViT architecture (encoder with windowed and global blocks,
//! relative positions, neck; prompt encoder; mask decoder) against the PyTorch
//! reference code of `segment-anything`, on a reduced, randomly initialised
//! model saved in SAM's checkpoint key layout (`tools/sam_vit_golden.py`,
//! `tests/golden/sam_vit/`). Loads the `.pth` natively with burn-store.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use medlsam::sam::SamConfig;
use medlsam::sam::mask_decoder::MaskDecoderConfig;
use medlsam::sam::model::{EncoderConfig, PromptBatch};
use medlsam::sam::prompt_encoder::{PointBatch, PointLabel};
use medlsam::sam::vit::VitConfig;
use medlsam::sam::weights::load_pth;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sam_vit")
}

fn index() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("index.json")).unwrap()).unwrap()
}

fn f32s(index: &Value, name: &str) -> Vec<f32> {
    let file = index["arrays"][name]["file"].as_str().unwrap();
    std::fs::read(dir().join(file))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn config(index: &Value, max_bias_bytes: usize) -> SamConfig {
    let c = &index["config"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    SamConfig {
        encoder: EncoderConfig::Vit(VitConfig {
            img_size: u("img_size"),
            patch_size: u("patch_size"),
            in_chans: 3,
            embed_dim: u("embed_dim"),
            depth: u("depth"),
            num_heads: u("num_heads"),
            mlp_ratio: u("mlp_ratio"),
            out_chans: u("out_chans"),
            window_size: u("window_size"),
            global_attn_indexes: c["global_attn_indexes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect(),
            max_bias_bytes,
        }),
        decoder: MaskDecoderConfig {
            transformer_dim: u("out_chans"),
            transformer_depth: u("decoder_depth"),
            transformer_heads: u("decoder_heads"),
            transformer_mlp_dim: u("decoder_mlp_dim"),
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: u("out_chans"),
        },
        mask_in_chans: u("mask_in_chans"),
    }
}

/// x[c, i, j] = ((7 i + 3 j + 11 c) mod 17) / 16 − 0.5, as the golden script.
fn input_image(size: usize, device: &Device) -> Tensor<4> {
    let mut v = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for i in 0..size {
            for j in 0..size {
                v.push(((7 * i + 3 * j + 11 * c) % 17) as f32 / 16.0 - 0.5);
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 3, size, size]), device)
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let (mn, mx) = b
        .iter()
        .fold((f32::MAX, f32::MIN), |(m, n), &v| (m.min(v), n.max(v)));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / (mx - mn)
}

fn check(max_bias_bytes: usize) {
    let index = index();
    let device = Device::flex();
    let cfg = config(&index, max_bias_bytes);
    let sam = load_pth(&cfg, &dir().join("sam_vit_tiny.pth"), &device).unwrap();
    let size = cfg.input_size();
    let emb = sam.encode(input_image(size, &device));
    let ours: Vec<f32> = emb.clone().into_data().try_into_vec().unwrap();
    let rel = max_rel(&ours, &f32s(&index, "embedding"));
    println!("ViT (bias chunks ≤ {max_bias_bytes} B): embedding max |Δ| = {rel:.2e} of range");
    assert!(rel < 1e-4, "embedding differs by {rel:.2e} of its range");

    let pe = sam.prompt_encoder.dense_pe(&device);
    for p in index["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let b: Vec<f32> = p["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let points = p["points"].as_array().map(|pts| {
            let xy: Vec<f32> = pts
                .iter()
                .flat_map(|q| {
                    q[0].as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                })
                .collect();
            PointBatch {
                coords: Tensor::from_data(TensorData::new(xy, [1, pts.len(), 2]), &device),
                labels: vec![
                    pts.iter()
                        .map(|q| {
                            if q[1].as_i64().unwrap() == 1 {
                                PointLabel::Positive
                            } else {
                                PointLabel::Negative
                            }
                        })
                        .collect(),
                ],
            }
        });
        let prompt = PromptBatch {
            points,
            boxes: Some(Tensor::from_data(TensorData::new(b, [1, 4]), &device)),
        };
        let out = sam.decode(emb.clone(), pe.clone(), prompt, false);
        let logits: Vec<f32> = out.masks.into_data().try_into_vec().unwrap();
        let rel = max_rel(&logits, &f32s(&index, &format!("{name}_logits")));
        println!("ViT {name}: logits max |Δ| = {rel:.2e} of range");
        assert!(
            rel < 1e-4,
            "{name}: logits differ by {rel:.2e} of their range"
        );
    }
}

#[test]
fn vit_sam_matches_reference_in_one_attention_chunk() {
    check(usize::MAX);
}

#[test]
fn vit_sam_matches_reference_with_chunked_global_attention() {
    // 16×16 tokens, 4 heads: one query row of bias is 4·16·256·4 B = 64 KiB; 100 KiB → 1 row per chunk.
    check(100 << 10);
}
