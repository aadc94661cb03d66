"""`opt.zero_grad()` on the ResNet-50-like set (161 tensors, fp32): fastai's (two ops per tensor, in Python) against
fastoptim's (one `torch._foreach_zero_`), and torch's `set_to_none` (no kernel), host and GPU time per call.

Run on the GPU machine from the repository root: python3 bench/zero_grad.py --out $OUT/zero_grad
"""
import argparse, json, os, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pathlib import Path
import torch
import fastai.optimizer
import fastoptim.all  # noqa: F401
from fastoptim.all import Adam
from shapes import resnet50_shapes

def timed(fn, grads_again, reps=200):
    "Median ms per call: wall time of the call and the GPU work it queued (synchronised), with fresh gradients before each"
    times = []
    for i in range(reps + 20):
        grads_again()
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i >= 20: times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--out', default='zero_grad_results'); args = ap.parse_args()
    params = [torch.nn.Parameter(torch.randn(s, device='cuda')) for s in resnet50_shapes()]
    grads = [torch.randn_like(p) for p in params]
    def grads_again():
        for p, g in zip(params, grads): p.grad = g
    opt = Adam(params, lr=1e-3)
    def to_none():
        for p in params: p.grad = None
    rows = {"fastai's Optimizer.zero_grad": timed(lambda: fastai.optimizer.Optimizer.zero_grad(opt), grads_again),
            "fastoptim's zero_grad (one _foreach_zero_)": timed(opt.zero_grad, grads_again),
            "p.grad = None for each (torch's set_to_none)": timed(to_none, grads_again)}
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    md = [f'# zero_grad, ResNet-50-like set (161 fp32 tensors), {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
          'Median of 200 calls, each synchronised before and after (host and GPU time together), fresh gradients before each.', '',
          '| zero_grad | ms per call |', '|---|---|'] + [f'| {k} | {v:.3f} |' for k, v in rows.items()]
    (out / 'results.md').write_text('\n'.join(md) + '\n'); (out / 'results.json').write_text(json.dumps(rows, indent=1))
    print('\n'.join(md))

if __name__ == '__main__': main()
