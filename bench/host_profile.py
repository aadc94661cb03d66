"""Where the host time of an eager `opt.step()` goes: for each algorithm and backend on the ResNet-50-like set,
the synchronised step time (median), the number of aten calls and CUDA kernel launches per step, and the ops
with the most host time (torch.profiler). Run it on two checkouts to compare them on one host:

    PYTHONPATH=$PWD/.site:$PWD python3 bench/host_profile.py --out $OUT/host_new.md

`--python N`: also the N Python functions with the most own time over 200 steps (cProfile), per row;
`--step-graph none,false`: a row per value of the optimizer's `step_graph` (Triton).
"""
import argparse, cProfile, io, os, pstats, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from torch.profiler import profile, ProfilerActivity
import fastoptim
from fastoptim.all import SGD, Adam, Lamb
from shapes import resnet50_shapes

ap = argparse.ArgumentParser()
ap.add_argument('--algos', default='sgd,adamw,lamb')
ap.add_argument('--backends', default='foreach,jit,triton')
ap.add_argument('--dtype', default='fp32')
ap.add_argument('--out', default='host_profile.md')
ap.add_argument('--python', type=int, default=0)
ap.add_argument('--step-graph', default='none')
args = ap.parse_args()
dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[args.dtype]
MAKE = dict(sgd=lambda ps, **kw: SGD(ps, 1e-2, mom=0.9, wd=1e-2, decouple_wd=False, **kw),
            adamw=lambda ps, **kw: Adam(ps, 1e-2, wd=1e-2, **kw), lamb=lambda ps, **kw: Lamb(ps, 1e-2, wd=1e-2, **kw))

def params():
    g = torch.Generator(device='cuda').manual_seed(0)
    ps = []
    for s in resnet50_shapes():
        p = torch.nn.Parameter(torch.randn(s, generator=g, device='cuda').mul_(0.02).to(dtype))
        p.grad = torch.randn(s, generator=g, device='cuda').to(dtype)
        ps.append(p)
    return ps

lines = [f'# Host profile of eager opt.step(): {torch.cuda.get_device_name()}', '',
         f'fastoptim at {os.path.dirname(fastoptim.__file__)}; torch {torch.__version__}; ResNet-50-like set, {args.dtype}', '',
         '| algo | backend | step ms (median of 30, synchronised) | aten calls | kernel launches | top host ops (self ms) |',
         '|---|---|---|---|---|---|']
python_lines = []
GRAPH = dict(none=None, false=False, true=True)
for algo, b, graph in [(a, b, g) for a in args.algos.split(',') for b in args.backends.split(',')
                       for g in (args.step_graph.split(',') if b == 'triton' else ['none'])]:
    opt = MAKE[algo](params(), **{b: True}, step_graph=GRAPH[graph])
    for _ in range(5): opt.step()
    torch.cuda.synchronize()
    times = []
    for _ in range(30):
        t = time.perf_counter(); opt.step(); torch.cuda.synchronize(); times.append((time.perf_counter() - t) * 1e3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        opt.step(); torch.cuda.synchronize()
    ev = prof.key_averages()
    aten = sum(e.count for e in ev if e.key.startswith('aten::'))
    launches = sum(e.count for e in ev if e.key in ('cudaLaunchKernel', 'cuLaunchKernel', 'cuLaunchKernelEx', 'cudaLaunchKernelExC'))
    top = sorted((e for e in ev if e.key.startswith('aten::')), key=lambda e: -e.self_cpu_time_total)[:5]
    tops = ', '.join(f"{e.key[6:]}×{e.count} {e.self_cpu_time_total / 1e3:.2f}" for e in top)
    lines.append(f'| {algo} | {b}{"" if graph == "none" else ", step_graph=" + graph} | {statistics.median(times):.3f} | {aten} | {launches} | {tops} |')
    print(lines[-1], flush=True)
    if args.python:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200): opt.step()
        prof.disable()
        torch.cuda.synchronize()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats('tottime').print_stats(args.python)
        python_lines.append(f'### {algo}, {b}, step_graph={graph}: 200 steps\n\n```\n' + out.getvalue().split('\n\n', 2)[-1].strip() + '\n```\n')
open(args.out, 'w').write('\n'.join(lines) + '\n\n' + '\n'.join(python_lines))
