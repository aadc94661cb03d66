"""Where the eager step of an algorithm with number states spends its time: torch.profiler over 20 Triton steps on the
ResNet-50-like set (fp32), for StableAdamW (two passes, no number state) and Prodigy (shared numbers), CPU-side time by
operator and the CUDA kernels launched per step.

On the GPU machine, from the repository root: python3 bench/profile_numbers.py --out $OUT
"""
import argparse, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from torch.profiler import profile, ProfilerActivity
import fastoptim.all  # noqa: F401
from fastoptim.core import algorithms
from shapes import resnet50_shapes
from timing import write_report

ap = argparse.ArgumentParser()
ap.add_argument('--out', default=os.environ.get('OUT', 'profile_numbers'))
args = ap.parse_args()
dev = torch.device('cuda')
lines = [f"# Eager steps with number states, profiled ({torch.cuda.get_device_name()}, torch {torch.__version__})\n",
         "command: `python3 bench/profile_numbers.py --out $OUT`; 20 Triton steps, ResNet-50-like set, fp32\n"]
for name, kw in (('StableAdamW', {}), ('Prodigy', {}), ('Adam', dict(kourkoutas=True))):
    gen = torch.Generator(device=dev).manual_seed(0)
    ps = [torch.randn(s, device=dev, generator=gen).requires_grad_() for s in resnet50_shapes()]
    for p in ps: p.grad = torch.randn_like(p)
    opt = algorithms[name](ps, lr=1e-3, triton=True, **kw)
    for _ in range(5): opt.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(20): opt.step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 20
    lines += [f"## {name} {kw}\n", f"CUDA kernels and copies per step: {kernels:.0f}\n", '```',
              events.table(sort_by='self_cpu_time_total', row_limit=25, max_name_column_width=60), '```\n']
write_report('\n'.join(lines), os.path.join(args.out, 'profile_numbers.md'))
