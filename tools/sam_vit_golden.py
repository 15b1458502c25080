#!/usr/bin/env python3
"""Golden data for the SAM/MedSAM ViT architecture port (run by hand, not in CI).

The real ViT-B checkpoints (sam_vit_b_01ec64.pth, medsam_vit_b.pth) are not
available here, so this builds a *reduced* SAM with the reference code of the
PyPI package `segment-anything` (ImageEncoderViT with windowed and global
blocks, relative positions and neck; PromptEncoder; MaskDecoder with a
TwoWayTransformer), fills every parameter with seeded random values (the
reference zero-initialises the position tables, which would test nothing),
and saves:

  * `sam_vit_tiny.pth`: its state dict, in the key layout of SAM's checkpoints
    (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`);
  * the image embedding of a fixed input image, and the low-resolution mask
    logits of a box prompt and of a box + point prompt;
  * `index.json` with the configuration and array descriptors (raw
    little-endian float32 `.bin` files).

The input image is defined by a formula exact in float32 (the Rust test
rebuilds it): x[c, i, j] = ((7 i + 3 j + 11 c) mod 17) / 16 - 0.5.

Usage: /tmp/tv/bin/python tools/sam_vit_golden.py [--out tests/golden/sam_vit]
"""

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

CONFIG = {
    "img_size": 256,
    "patch_size": 16,
    "embed_dim": 48,
    "depth": 4,
    "num_heads": 4,
    "mlp_ratio": 4,
    "out_chans": 32,
    "window_size": 7,
    "global_attn_indexes": [1, 3],
    "decoder_depth": 2,
    "decoder_heads": 2,
    "decoder_mlp_dim": 64,
    "mask_in_chans": 16,
}


def build():
    c = CONFIG
    emb = c["img_size"] // c["patch_size"]
    encoder = ImageEncoderViT(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        out_chans=c["out_chans"],
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=c["window_size"],
        global_attn_indexes=c["global_attn_indexes"],
    )
    prompt = PromptEncoder(
        embed_dim=c["out_chans"],
        image_embedding_size=(emb, emb),
        input_image_size=(c["img_size"], c["img_size"]),
        mask_in_chans=c["mask_in_chans"],
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=c["decoder_depth"],
            embedding_dim=c["out_chans"],
            mlp_dim=c["decoder_mlp_dim"],
            num_heads=c["decoder_heads"],
        ),
        transformer_dim=c["out_chans"],
        iou_head_depth=3,
        iou_head_hidden_dim=c["out_chans"],
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def input_image():
    c, i, j = np.meshgrid(np.arange(3), np.arange(CONFIG["img_size"]), np.arange(CONFIG["img_size"]), indexing="ij")
    x = ((7 * i + 3 * j + 11 * c) % 17).astype(np.float32) / np.float32(16) - np.float32(0.5)
    return torch.from_numpy(x)[None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/sam_vit")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2024)
    sam = build().eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / max(fan_in, 1) ** 0.5)
        sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(
            torch.randn((2, CONFIG["out_chans"] // 2), generator=gen)
        )
    torch.save(sam.state_dict(), out / "sam_vit_tiny.pth")

    arrays = {}

    def put(name, t):
        a = np.ascontiguousarray(t.detach().numpy(), dtype="<f4")
        a.tofile(out / f"{name}.bin")
        arrays[name] = {"file": f"{name}.bin", "dtype": "float32", "shape": list(a.shape)}

    prompts = [
        {"name": "box", "box": [40.0, 60.0, 180.0, 200.0], "points": None},
        {"name": "box_point", "box": [40.0, 60.0, 180.0, 200.0], "points": [[[100.0, 120.0], 1]]},
    ]
    with torch.no_grad():
        x = input_image()
        emb = sam.image_encoder(x)
        put("embedding", emb[0])
        pe = sam.prompt_encoder.get_dense_pe()
        for p in prompts:
            pts = None
            if p["points"]:
                pts = (torch.tensor([[q[0] for q in p["points"]]]), torch.tensor([[q[1] for q in p["points"]]], dtype=torch.float32))
            sparse, dense = sam.prompt_encoder(points=pts, boxes=torch.tensor([[p["box"]]]), masks=None)
            logits, iou = sam.mask_decoder(
                image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=False,
            )
            put(f"{p['name']}_logits", logits[0, 0])
    index = {
        "description": "reduced SAM (random weights) from tools/sam_vit_golden.py, segment-anything reference code",
        "torch": torch.__version__,
        "config": CONFIG,
        "prompts": prompts,
        "arrays": arrays,
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB), embedding range {float(emb.min()):.3f}..{float(emb.max()):.3f}")


if __name__ == "__main__":
    main()
