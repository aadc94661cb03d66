"""Host time of `step_params` (gradient release's call) with the Triton launches left out: a pass over the
ResNet-50-like set in groups of 8 tensors, when the gradients keep their addresses between passes, when they move
(two sets alternate), and when the kept buckets are forgotten before every call (rebuilt). CPU, Triton's interpreter
imported but never launched.

    python bench/step_params_host.py
"""
import os; os.environ['TRITON_INTERPRET'] = '1'
import time, torch, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import resnet50_shapes
import fastoptim.all as fo
import fastoptim.triton_engine as te
class Stub:
    def __getitem__(self, grid): return lambda *a, **k: None
orig = te.triton_code
def stubbed(plan):
    c = orig(plan); c.derive = Stub(); c.phases = [Stub() for _ in c.phases]; return c
te.triton_code = stubbed
params = [torch.nn.Parameter(torch.zeros(s)) for s in resnet50_shapes()]
opt = fo.Adam(params, lr=1e-3, triton=True)
pools = [{id(p): torch.zeros_like(p) for p in params} for _ in range(2)]
groups = [params[i:i + 8] for i in range(0, len(params), 8)]
def one_pass(k):
    for g in groups:
        for p in g: p.grad = pools[k % 2 if moving else 0][id(p)]
        opt.step_params(g)
for moving in (False, True):
    for k in range(2): one_pass(k)
    t = time.perf_counter()
    for k in range(20): one_pass(k)
    print('gradients move' if moving else 'gradients stay', f'{(time.perf_counter() - t) / 20 / len(groups) * 1e6:.0f} us per step_params call (8 tensors, launches stubbed)')
opt.layout.forget()
def fresh_pass():
    for g in groups:
        for p in g: p.grad = pools[0][id(p)]
        opt.step_params(g); opt.layout.forget()
t = time.perf_counter()
for k in range(20): fresh_pass()
print('rebuilt every call', f'{(time.perf_counter() - t) / 20 / len(groups) * 1e6:.0f} us')
