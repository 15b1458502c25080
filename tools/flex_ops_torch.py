#!/usr/bin/env python3
"""PyTorch CPU (2 threads) timings of the single operations timed by
`cargo run --release --example flex_ops` (LiteMedSAM encoder shapes).
Run by hand: /tmp/tv/bin/python tools/flex_ops_torch.py"""
import torch, time, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
print("PyTorch", torch.__version__, "CPU, 2 threads, median of 5 runs")
def t(name, f):
    with torch.no_grad():
        f(); v=[]
        for _ in range(5):
            s=time.perf_counter(); f(); v.append((time.perf_counter()-s)*1e3)
    v.sort(); print(f"{name:<40}{v[2]:8.1f} ms")
x64=torch.randn(1,64,256,256); x256=torch.randn(1,256,256,256)
c1=nn.Conv2d(64,256,1); dw=nn.Conv2d(256,256,3,1,1,groups=256); c3=nn.Conv2d(256,64,1); bn=nn.BatchNorm2d(256).eval()
t("conv1x1 64->256 @256^2 bias", lambda: c1(x64))
t("dwconv3x3 256 @256^2", lambda: dw(x256))
t("conv1x1 256->64 @256^2", lambda: c3(x256))
t("batchnorm 256 @256^2", lambda: bn(x256))
t("gelu 256 @256^2", lambda: F.gelu(x256))
t("add 256 @256^2", lambda: x256+x256)
tok=torch.randn(1,128*128,128); fc=nn.Linear(128,512); ln=nn.LayerNorm(128)
t("linear 128->512 x16384", lambda: fc(tok))
t("layernorm 128 x16384", lambda: ln(tok))
q=torch.randn(361,4,49,32); bias=torch.randn(1,4,49,49)
t("attention 361x4x49x32 (+bias)", lambda: torch.softmax(q@q.transpose(-2,-1)*32**-0.5+bias,-1)@q)
t("matmul qk^T 361x4x49x32", lambda: q@q.transpose(-2,-1))
t("swap_dims(1,2)+reshape tokens", lambda: tok.transpose(1,2).reshape(1,128,128,128).contiguous())
