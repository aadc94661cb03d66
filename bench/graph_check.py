"""CUDA graph check: fastoptim's Triton step captured with `torch.cuda.graph` and replayed gives the weights and step
counts of the same steps taken normally, follows an lr change after `upload_hypers()`, never waits for the host, and
refuses what a replay cannot do with a clear error. Also the Triton stochastic rounding against the torch reference.

On the GPU machine, from the repository root (wheels from ../shared/gpu/wheels.sh carried in .whl/):
    python3 bench/graph_check.py --out $OUT/graph_check.md
"""
import argparse, datetime, os, sys, time
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET to run the kernels on the GPU'

import torch
import triton
from fastoptim.all import SGD, Adam, Lamb, RAdam, Lion
from graphed import Graphed
from shapes import resnet50_shapes
from timing import write_report

dev = torch.device('cuda')
ALGOS = {'SGD-momentum': lambda ps, **kw: SGD(ps, lr=1e-2, mom=0.9, wd=0.1, **kw),
         'AdamW': lambda ps, **kw: Adam(ps, lr=1e-2, wd=0.1, **kw),
         'LAMB': lambda ps, **kw: Lamb(ps, lr=1e-2, wd=0.1, **kw),
         'RAdam': lambda ps, **kw: RAdam(ps, lr=1e-2, wd=0.1, **kw),
         'Lion': lambda ps, **kw: Lion(ps, lr=1e-3, wd=0.1, **kw)}
PRECISIONS = {'fp32': (torch.float32, {}), 'bf16 Kahan': (torch.bfloat16, {}),
              'bf16 stochastic': (torch.bfloat16, dict(stochastic_rounding=True, seed=3)),
              'bf16 nearest': (torch.bfloat16, dict(kahan_sum=False))}
SHAPES = resnet50_shapes()[:12] + resnet50_shapes()[-2:]  # tiny to 2M-element tensors
STEPS, LR_CHANGE = 12, 7


def randn(shapes, dtype, seed):
    g = torch.Generator(device=dev).manual_seed(seed)
    return [torch.randn(s, generator=g, device=dev).to(dtype) for s in shapes]


def run(make, dtype, graph, lr_change=True):
    "Weights and step counts after STEPS steps of fresh gradients (lr halved before step LR_CHANGE), graphed or not"
    ps = [torch.nn.Parameter(t) for t in randn(SHAPES, dtype, 0)]
    for p in ps: p.grad = torch.empty_like(p)
    opt = make(ps)
    stepper = Graphed(opt) if graph else opt
    for i in range(STEPS):
        for p, g in zip(ps, randn(SHAPES, dtype, 100 + i)): p.grad.copy_(g)
        if lr_change and i == LR_CHANGE:
            opt.set_hyper('lr', 5e-3)
            if graph: opt.upload_hypers()
        stepper.step()
    steps = [s['step'] for s in opt.state_dict()['state']]
    return [p.detach().float() for p in ps], steps, opt, stepper


def max_rel(a, b):
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def replays():
    "Per algorithm and precision: graphed vs normal weights, step counts, and the effect of skipping upload_hypers"
    rows = []
    for name, make in ALGOS.items():
        for prec, (dtype, kw) in PRECISIONS.items():
            opt_kw = dict(triton=True, **kw)
            plain, plain_steps, *_ = run(lambda ps: make(ps, **opt_kw), dtype, graph=False)
            graphed, graph_steps, *_ = run(lambda ps: make(ps, **opt_kw), dtype, graph=True)
            stale, *_ = run(lambda ps: make(ps, **opt_kw), dtype, graph=True, lr_change=False)
            rows.append((name, prec, max_rel(graphed, plain), plain_steps == graph_steps == [STEPS] * len(SHAPES),
                         max_rel(stale, plain)))
    return rows


def no_sync():
    "An AdamW step with a changed lr (which uploads the scalar table) under set_sync_debug_mode('error')"
    ps = [torch.nn.Parameter(t) for t in randn(SHAPES, torch.float32, 0)]
    for p, g in zip(ps, randn(SHAPES, torch.float32, 1)): p.grad = g
    opt = Adam(ps, lr=1e-2, triton=True)
    opt.step(); torch.cuda.synchronize()
    opt.set_hyper('lr', 2e-3)
    torch.cuda.set_sync_debug_mode('error')
    try: opt.step(); opt.upload_hypers(); return 'ok'
    except RuntimeError as e: return f'SYNC: {str(e).splitlines()[0][:100]}'
    finally: torch.cuda.set_sync_debug_mode('default')


def refusals():
    "What capturing must refuse, and the first line of each message"
    def capture(opt, before=None):
        if before: before(opt)
        try:
            with torch.cuda.graph(torch.cuda.CUDAGraph()): opt.step()
            return 'captured (NOT refused)'
        except RuntimeError as e: return str(e).splitlines()[0]
    def fresh(**kw):
        ps = [torch.nn.Parameter(t) for t in randn(SHAPES[:3], torch.float32, 0)]
        for p, g in zip(ps, randn(SHAPES[:3], torch.float32, 1)): p.grad = g
        return Adam(ps, lr=1e-2, **kw)
    def warm(opt): opt.step(); torch.cuda.synchronize()
    def warm_then_lr(opt): warm(opt); opt.set_hyper('lr', 1e-3)
    return {'no step before the capture': capture(fresh(triton=True)),
            'lr changed, upload_hypers() not called': capture(fresh(triton=True), warm_then_lr),
            'foreach backend': capture(fresh(foreach=True), warm)}


def stochastic_bits():
    "Fraction of 2^20 bf16 elements where the Triton kernel's stochastic rounding differs from the torch reference"
    p0, g = randn([(1 << 20,)], torch.bfloat16, 7)[0], randn([(1 << 20,)], torch.bfloat16, 8)[0]
    out = []
    for flag in ('forloop', 'triton'):
        p = torch.nn.Parameter(p0.clone()); p.grad = g.clone()
        opt = SGD([p], lr=1e-3, stochastic_rounding=True, seed=11, **{flag: True})
        for _ in range(3): opt.step()
        out.append(p.detach())
    return (out[0] != out[1]).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    t0 = time.time()
    lines = [f'# CUDA graph check: {torch.cuda.get_device_name()}', '',
             f'{datetime.datetime.now().isoformat(timespec="seconds")}; torch {torch.__version__}, triton {triton.__version__}; '
             f'command: `python3 bench/graph_check.py`', '',
             f'{len(SHAPES)} ResNet-50 tensors (3 to 2M elements), {STEPS} steps of fresh random gradients, lr halved before '
             f'step {LR_CHANGE + 1}. Graphed: one real step on a side stream, one captured, then replays '
             '(`bench/graphed.py`), with `upload_hypers()` after the lr change.', '',
             '| algorithm | precision | graphed vs normal: max rel. diff | step counts right after state_dict() | '
             'without upload_hypers(): max rel. diff |', '|---|---|---|---|---|']
    lines += [f'| {a} | {p} | {d:.1e} | {"yes" if ok else "NO"} | {s:.1e} |' for a, p, d, ok, s in replays()]
    lines += ['', f'Step after an lr change (uploads the table) and `upload_hypers()` under '
              f'`set_sync_debug_mode("error")`: {no_sync()}.', '', '## Refused captures', '', '| case | error |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in refusals().items()]
    lines += ['', f'Triton vs forloop stochastic rounding (SGD, 3 steps, 2^20 bf16 elements): '
              f'{stochastic_bits():.2e} of elements differ.', '', f'total time {time.time() - t0:.0f} s']
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__':
    main()
