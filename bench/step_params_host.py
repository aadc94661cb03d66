"""Host time of `step_params` (gradient release's call) with the Triton launches left out: a pass over the
ResNet-50-like set in groups of 8 tensors, when the gradients keep their addresses between passes, when they move
(two sets alternate), when the kept buckets are forgotten before every call (rebuilt), and with optimizer
accumulation (four micro-batches a step: three folds, then a fold and the step), gradients kept or moving.
CPU, Triton's interpreter imported but never launched; each mode timed in `--rounds` rounds in rotated order, the
fastest round reported (the others are this host's noise).

    python bench/step_params_host.py [--rounds 5] [--passes 20]
"""
import os; os.environ['TRITON_INTERPRET'] = '1'
import argparse, time, torch, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import resnet50_shapes
import fastoptim.all as fo
import fastoptim.triton_engine as te

class Stub:
    "A Triton kernel whose launches do nothing"
    __name__ = 'stub'
    def __getitem__(self, grid): return lambda *a, **k: None
compiled = te.triton_code
def stubbed(plan):
    c = compiled(plan); c.derive = Stub(); c.phases = [Stub() for _ in c.phases]; return c
te.triton_code, te.fold_gradients = stubbed, Stub()

parser = argparse.ArgumentParser()
parser.add_argument('--rounds', type=int, default=5)
parser.add_argument('--passes', type=int, default=20)
args = parser.parse_args()
params = [torch.nn.Parameter(torch.zeros(s)) for s in resnet50_shapes()]
opt = fo.Adam(params, lr=1e-3, triton=True)
pools = [{id(p): torch.zeros_like(p) for p in params} for _ in range(2)]
groups = [params[i:i + 8] for i in range(0, len(params), 8)]

def one_pass(k, moving=False, rebuilt=False, micro=None):
    "One backward's calls; `micro`: the micro-batch's index in a step of four (optimizer accumulation), else None"
    for g in groups:
        for p in g: p.grad = pools[k % 2 if moving else 0][id(p)]
        if micro is not None: opt.accumulate(0.25, micro == 3)
        opt.step_params(g, whole=micro is not None)
        if rebuilt: opt.layout.forget()
    opt.stop_accumulation()

modes = {'gradients stay': dict(), 'gradients move': dict(moving=True), 'rebuilt every call': dict(rebuilt=True),
         'accumulation, gradients stay': dict(accumulate=True), 'accumulation, gradients move': dict(accumulate=True, moving=True)}
def timed(accumulate=False, **kw):
    "Seconds per call over `--passes` passes, after two passes of warm-up"
    for k in range(2 if not accumulate else 4): one_pass(k, micro=k % 4 if accumulate else None, **kw)
    t = time.perf_counter()
    for k in range(args.passes): one_pass(k, micro=k % 4 if accumulate else None, **kw)
    return (time.perf_counter() - t) / args.passes / len(groups)
best = {m: float('inf') for m in modes}
for r in range(args.rounds):
    order = list(modes)[r % len(modes):] + list(modes)[:r % len(modes)]
    for m in order: best[m] = min(best[m], timed(**modes[m]))
print(f"torch {torch.__version__}; {len(params)} tensors in calls of 8; fastest of {args.rounds} rounds of {args.passes} passes")
for m, s in best.items(): print(f"{m}: {s * 1e6:.0f} us per step_params call")
