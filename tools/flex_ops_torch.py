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
# The mask decoder's shapes (64² embedding of 256 channels, 4096 image tokens).
e=torch.randn(1,256,64,64); u1=torch.randn(1,64,128,128)
up1=nn.ConvTranspose2d(256,64,2,2); up2=nn.ConvTranspose2d(64,32,2,2)
t("deconv 256->64 k2s2 @64^2", lambda: up1(e))
t("deconv 64->32 k2s2 @128^2", lambda: up2(u1))
t("gelu 64 @128^2", lambda: F.gelu(u1))
itok=torch.randn(1,4096,256); fc256=nn.Linear(256,128); fc2048=nn.Linear(256,2048); ln256=nn.LayerNorm(256)
t("linear 256->128 x4096", lambda: fc256(itok))
t("linear 256->2048 x4096 (mlp)", lambda: fc2048(itok))
q8=torch.randn(1,8,7,16); k8=torch.randn(1,8,4096,16)
t("attention tokens->image 8x7x4096x16", lambda: F.scaled_dot_product_attention(q8,k8,k8))
t("attention image->tokens 8x4096x7x16", lambda: F.scaled_dot_product_attention(k8,q8,q8))
t("layernorm 256 x4096", lambda: ln256(itok))
m=torch.randn(1,1,256,256)
t("bilinear 256^2 -> 512^2", lambda: F.interpolate(m,size=(512,512),mode="bilinear",align_corners=False))
