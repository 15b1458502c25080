"""Golden values for MedLAM's Burn workarounds: PyTorch's MaxPool3d(2, 2) and
Upsample(scale_factor=2, mode='trilinear') (align_corners=False) on a fixed
random tensor. Writes tests/golden/medlam_ops.json, read by a unit test in
src/medlam/net.rs.  Run: /tmp/tv/bin/python tools/medlam_ops_golden.py"""
import json, pathlib
import torch

torch.manual_seed(0)
x = torch.randn(2, 3, 4, 6, 2)
pool = torch.nn.MaxPool3d(2, 2)(x)
up = torch.nn.Upsample(scale_factor=2, mode="trilinear")(x)
out = {
    "input_shape": list(x.shape), "input": x.flatten().tolist(),
    "pool_shape": list(pool.shape), "pool": pool.flatten().tolist(),
    "up_shape": list(up.shape), "up": up.flatten().tolist(),
}
path = pathlib.Path(__file__).resolve().parent.parent / "tests/golden/medlam_ops.json"
path.write_text(json.dumps(out))
print("wrote", path)
