"""Where the host time of a step with moved gradients goes, on one GPU: the ResNet-50-like set (161 tensors), AdamW,
Triton backend, the optimizer's own graph (the default), gradients alternating between two sets of tensors at every
step (what `zero_grad(set_to_none=True)` gives when backward puts them elsewhere) against one set kept. Host µs of
`opt.step()` with the GPU idle before each call, and of the Triton backend's `move_grads` (which points the table's
gradient column at the new addresses) with its parts: reading the addresses, waiting on the last upload's event,
the copies, recording the event.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/move_grads_gpu.py --out $OUT/move_grads.md
"""
import argparse, os, statistics, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
import fastoptim.triton_engine as te
from fastoptim.all import Adam
from shapes import resnet50_shapes

ap = argparse.ArgumentParser()
ap.add_argument('--out', default='move_grads.md')
ap.add_argument('--steps', type=int, default=100)
args = ap.parse_args()

parts, inside = {}, [False]
def clocked(owner, name, label):
    "Wrap `owner.name` to add its host time to `parts[label]` while `move_grads` runs"
    original = getattr(owner, name)
    def wrapper(*a, **k):
        if not inside[0]: return original(*a, **k)
        t = time.perf_counter()
        try: return original(*a, **k)
        finally: parts.setdefault(label, []).append(time.perf_counter() - t)
    setattr(owner, name, wrapper)
clocked(np, 'fromiter', 'reading the addresses (np.fromiter of data_ptr)')
clocked(te, 'table_align', 'the alignment check')
clocked(torch.cuda.Event, 'synchronize', "waiting on the last upload's event")
clocked(torch.Tensor, 'copy_', 'the two copies (pinned → device, device → the column)')
clocked(torch.cuda.Event, 'record', 'recording the event')
move_grads = te.TritonBackend.move_grads
def timed_move(self, *a, **k):
    inside[0] = True
    t = time.perf_counter()
    try: return move_grads(self, *a, **k)
    finally:
        inside[0] = False
        parts.setdefault('move_grads, all of it', []).append(time.perf_counter() - t)
te.TritonBackend.move_grads = timed_move

g = torch.Generator(device='cuda').manual_seed(0)
params = [torch.nn.Parameter(torch.randn(s, generator=g, device='cuda').mul_(0.02)) for s in resnet50_shapes()]
pools = [[torch.randn(p.shape, generator=g, device='cuda') for p in params] for _ in range(2)]
opt = Adam(params, 1e-3, wd=1e-2, triton=True)

def steps(moving):
    "Median host µs of `opt.step()` over `--steps` steps, gradients alternating between the two sets or kept"
    ts = []
    for k in range(args.steps):
        for p, x in zip(params, pools[k % 2 if moving else 0]): p.grad = x
        torch.cuda.synchronize()
        t = time.perf_counter(); opt.step(); ts.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return statistics.median(ts) * 1e6

for k in range(6): steps(True); steps(False)  # compiled, captured, warm
parts.clear()
rows = {}
for r in range(3):
    for moving in (True, False): rows.setdefault(moving, []).append(steps(moving))
lines = [f'# Steps with moved gradients: {torch.cuda.get_device_name()}', '',
         f'torch {torch.__version__}, triton {te.triton.__version__}; `python3 bench/move_grads_gpu.py {" ".join(sys.argv[1:])}`; '
         f'ResNet-50-like set ({len(params)} tensors), AdamW, Triton backend, the optimizer\'s own graph; '
         f'{args.steps} steps a round, 3 rounds each, the GPU idle before each step.', '',
         '| gradients | host µs per `opt.step()`, median of each round | replays |', '|---|---|---|',
         f"| alternating between two sets | {', '.join(f'{v:.0f}' for v in rows[True])} | |",
         f"| kept | {', '.join(f'{v:.0f}' for v in rows[False])} | {opt.graph.replays} of {6 * 2 * args.steps + 6 * args.steps} steps in all |",
         '', '| part of `move_grads` | calls | median µs |', '|---|---|---|']
lines += [f'| {k} | {len(v)} | {statistics.median(v) * 1e6:.1f} |' for k, v in parts.items()]
open(args.out, 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines))
