#!/usr/bin/env python3
"""Classical multi-atlas segmentation with SimpleITK: the baseline issue 27 has to beat.

Each support CT is registered to the query (moments-initialised affine on Mattes mutual
information, multi-resolution; then a B-spline deformable step on a 6x6x6 control grid),
its label map warped nearest-neighbour, and the warped maps fused by majority vote per organ
(a voxel gets the organ with the largest share of votes, if at least half of the
supports that have that organ vote for it). Prints the DSC
per organ against the query's label map and appends rows to a CSV.

  python3 tools/sitk_multiatlas.py --data ../shared/data/openkbp \
      --supports okbp_001,okbp_002,okbp_003,okbp_004,okbp_005 \
      --queries okbp_016,okbp_017 --out eval/sitk/eval.csv [--threads 1]

Needs `pip install SimpleITK numpy`. Not part of the product (which stays Rust): a reference.
"""
import argparse
import csv
import json
import os
import time

import numpy as np
import SimpleITK as sitk


def read(data, case, kind):
    return sitk.ReadImage(os.path.join(data, f"{case}.{kind}.nii.gz"))


def register(fixed, moving, deformable):
    """Affine (then B-spline) transform mapping fixed-image points to moving-image points."""
    f = sitk.Cast(fixed, sitk.sitkFloat32)
    m = sitk.Cast(moving, sitk.sitkFloat32)
    init = sitk.CenteredTransformInitializer(
        f, m, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=150, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    affine = reg.Execute(f, m)
    if not deformable:
        return affine
    bspline = sitk.BSplineTransformInitializer(f, [6, 6, 6])
    reg2 = sitk.ImageRegistrationMethod()
    reg2.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg2.SetMetricSamplingStrategy(reg2.RANDOM)
    reg2.SetMetricSamplingPercentage(0.1, seed=1)
    reg2.SetInterpolator(sitk.sitkLinear)
    reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=60)
    reg2.SetShrinkFactorsPerLevel([2, 1])
    reg2.SetSmoothingSigmasPerLevel([1, 0])
    reg2.SetMovingInitialTransform(affine)
    reg2.SetInitialTransform(bspline, inPlace=True)
    reg2.Execute(f, m)
    return sitk.CompositeTransform([affine, bspline])


def dsc(a, b):
    s = a.sum() + b.sum()
    return float("nan") if s == 0 else 200.0 * np.logical_and(a, b).sum() / s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/openkbp")
    ap.add_argument("--supports", default="okbp_001,okbp_002,okbp_003,okbp_004,okbp_005")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--out", default="eval/sitk/eval.csv")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--affine-only", action="store_true")
    a = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(a.threads)
    names = json.load(open(os.path.join(a.data, "labels.json")))
    supports = [(read(a.data, s, "ct"), read(a.data, s, "label")) for s in a.supports.split(",")]
    have = np.zeros(8)
    for _, slab in supports:
        present = np.unique(sitk.GetArrayFromImage(slab))
        have[present[(present > 0) & (present < 8)]] += 1
    mode = "sitk_affine" if a.affine_only else "sitk_bspline"
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    new = not os.path.exists(a.out)
    with open(a.out, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["mode", "case", "label", "name", "truth_voxels", "pred_voxels", "dsc", "seconds"])
        for q in a.queries.split(","):
            t0 = time.time()
            qct, qlab = read(a.data, q, "ct"), read(a.data, q, "label")
            truth = sitk.GetArrayFromImage(qlab)
            votes = np.zeros((8,) + truth.shape, np.uint8)
            for sct, slab in supports:
                tx = register(qct, sct, not a.affine_only)
                warped = sitk.Resample(slab, qct, tx, sitk.sitkNearestNeighbor, 0, slab.GetPixelID())
                arr = sitk.GetArrayFromImage(warped)
                for lab in range(1, 8):
                    votes[lab] += arr == lab
            # An organ needs the votes of at least half of the supports that have it.
            frac = votes / np.maximum(have, 1).reshape(8, 1, 1, 1)
            best = frac.argmax(0)
            fused = np.where(frac.max(0) >= 0.5, best, 0)
            secs = time.time() - t0
            for lab in range(1, 8):
                t = truth == lab
                if t.sum() == 0:
                    continue
                p = fused == lab
                d = dsc(p, t)
                w.writerow([mode, q, lab, names[str(lab)], int(t.sum()), int(p.sum()), f"{d:.4f}", f"{secs:.1f}"])
                print(f"{q} {names[str(lab)]:>13}: DSC {d:5.1f} %")
            fh.flush()
            print(f"{q}: {secs:.1f} s for {len(supports)} supports ({mode})", flush=True)


if __name__ == "__main__":
    main()
