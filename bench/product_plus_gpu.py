"""aX + BX, the product of the Newton–Schulz iteration with an addend, on the LLM-like set's stacks (bf16): torch.baddbmm (what
fastoptim.muon runs) against torch.bmm with an fp32 result (`out_dtype`) and aX added in a second pass, each checked against
fp64 and for equality with baddbmm; a plain bf16 bmm for scale. The tall stack arrives as a transposed view, as in the
iteration's first step.

On the GPU machine, from the repository root: PYTHONPATH=$PWD python3 bench/product_plus_gpu.py
"""
import torch, sys
sys.path.insert(0, 'bench')
from timing import median_ms
dev = torch.device('cuda')
a = 3.4445
for k, m, n, tr in ((64, 2048, 2048, False), (32, 5504, 2048, True), (16, 2048, 5504, False)):
    x0 = torch.randn(k, m, n, device=dev, dtype=torch.bfloat16) * 0.02
    x = x0.mT if tr else x0
    b = torch.randn(k, x.shape[1], x.shape[1], device=dev, dtype=torch.bfloat16) * 0.02
    b = (b + b.mT) / 2
    ref = torch.baddbmm(x, b, x, beta=a)
    def plus():
        y = torch.bmm(b, x, out_dtype=torch.float32)
        return torch.add(y, x, alpha=a, out=torch.empty(x.shape, device=dev, dtype=torch.bfloat16))
    def plus_inplace():
        y = torch.bmm(b, x, out_dtype=torch.float32)
        return y.add_(x, alpha=a).to(torch.bfloat16)
    exact = torch.baddbmm(x.double(), b.double(), x.double(), beta=a)
    for name, fn in (('baddbmm', lambda: torch.baddbmm(x, b, x, beta=a)), ('bmm fp32 + add', plus), ('bmm fp32 + add_ + to', plus_inplace),
                     ('bmm bf16', lambda: torch.bmm(b, x))):
        out = fn()
        ms = median_ms(fn, 10, dev, warmup=3)
        err = ((out.double() - exact).abs().max() / exact.abs().max()).item() if name != 'bmm bf16' else float('nan')
        same = (out == ref).float().mean().item() if name != 'bmm bf16' else float('nan')
        print(f'{k}x{m}x{n}{" T" if tr else ""} {name}: {ms:.3f} ms, {2*k*x.shape[1]**2*x.shape[2]/ms/1e9:.0f} TFLOP/s, err vs fp64 {err:.2e}, equal to baddbmm {same:.4f}', flush=True)
