"""Where the host time of `opt.step()` goes when it replays the optimizer's own CUDA graph (`step_graph`), on the
ResNet-50-like set with the GPU idle before each step: the whole call, each stage (layout check, numbers, the
backends' `prepare`, the replay, the counts), and a replay alone, beside a graph captured by the user (`Graphed`).

    PYTHONPATH=$PWD/.site:$PWD python3 bench/own_graph_host.py --out $OUT/own_graph_host.md
"""
import argparse, os, statistics, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import fastoptim.core as core
from fastoptim.all import SGD, Adam
from graphed import Graphed
from shapes import resnet50_shapes
from timing import idle_ms, timed

ap = argparse.ArgumentParser()
ap.add_argument('--out', default='own_graph_host.md')
ap.add_argument('--dtype', default='fp32')
args = ap.parse_args()
dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[args.dtype]


def params():
    g = torch.Generator(device='cuda').manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g, device='cuda').mul_(0.02).to(dtype)) for s in resnet50_shapes()]
    for p in ps: p.grad = torch.randn(p.shape, generator=g, device='cuda').to(dtype)
    return ps


stages = {}


lines = [f'# Host time of opt.step() replaying its own graph: {torch.cuda.get_device_name()}', '',
         f'torch {torch.__version__}; ResNet-50-like set (161 tensors), {args.dtype}; median µs over 100 calls, each '
         'started with the GPU idle (synchronised before, not after).', '',
         '| optimizer | opt.step() | replay alone | user graph replay (`Graphed`) |', '|---|---|---|---|']
for name, make in (('SGD momentum', lambda ps, **kw: SGD(ps, 1e-2, mom=0.9, wd=1e-2, triton=True, **kw)),
                   ('AdamW', lambda ps, **kw: Adam(ps, 1e-3, wd=1e-2, triton=True, **kw))):
    opt = make(params())
    for _ in range(5): opt.step()
    step = idle_ms(opt.step, 100) * 1e3
    replay = idle_ms(opt.graph.graph.replay, 100) * 1e3
    user = Graphed(make(params(), step_graph=False))
    for _ in range(3): user.step()
    user_replay = idle_ms(user.graph.replay, 100) * 1e3
    lines.append(f'| {name} | {step:.1f} | {replay:.1f} | {user_replay:.1f} |')
    print(lines[-1], flush=True)

opt = Adam(params(), 1e-3, wd=1e-2, triton=True)
for _ in range(5): opt.step()
timed(opt.layout, 'current', 'layout.current (signature)', stages)
timed(opt.numbers, 'check', 'numbers.check', stages)
timed(opt.graph, 'refusal', 'graph.refusal', stages)
timed(opt, '_prepare', 'opt._prepare', stages)
timed(core.backends['triton'], 'prepare', 'triton prepare (per bucket)', stages)
timed(opt.graph.graph, 'replay', 'graph.replay', stages)
timed(opt, '_count', 'opt._count (per bucket)', stages)
timed(opt.graph, 'step', 'graph.step (all but the layout and numbers)', stages)
total = idle_ms(opt.step, 100) * 1e3
lines += ['', f'AdamW, each stage (median µs; the whole call {total:.1f}):', '', '| stage | µs |', '|---|---|']
lines += [f'| {k} | {statistics.median(v):.1f} |' for k, v in stages.items()]
open(args.out, 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines[-len(stages) - 4:]))
