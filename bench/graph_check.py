"""CUDA graph check: fastoptim's Triton step captured with `torch.cuda.graph` and replayed gives the weights and step
counts of the same steps taken normally, follows an lr change after `upload_hypers()`, never waits for the host, and
refuses what a replay cannot do with a clear error. The optimizer's own graph (`step_graph`, the default) gives the
weights, states and step counts of `step_graph=False` through schedules, moved gradients, state edits, a reload and a
frozen parameter, without waiting for the host. Also the Triton stochastic rounding against the torch reference.

On the GPU machine, from the repository root (wheels from ../shared/gpu/wheels.sh carried in .whl/):
    python3 bench/graph_check.py --out $OUT/graph_check.md
"""
import argparse, datetime, os, sys, time
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET to run the kernels on the GPU'

import torch
import triton
from fastoptim.all import SGD, Adam, Lamb, RAdam, Lion, Adafactor, Ranger
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
    opt = make(ps, **({} if graph else dict(step_graph=False)))  # user-captured, against launches from Python
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
            factory = lambda ps, **extra: make(ps, **opt_kw, **extra)
            plain, plain_steps, *_ = run(factory, dtype, graph=False)
            graphed, graph_steps, *_ = run(factory, dtype, graph=True)
            stale, *_ = run(factory, dtype, graph=True, lr_change=False)
            rows.append((name, prec, max_rel(graphed, plain), plain_steps == graph_steps == [STEPS] * len(SHAPES),
                         max_rel(stale, plain)))
    return rows


def own_graph_run(make, dtype, step_graph):
    "Weights, states and step counts after STEPS steps of `opt.step()` in two param groups, with an lr schedule, fresh gradient tensors every third step, a state edited in place (step 4) and replaced (step 6), a state_dict reload (step 8), a parameter frozen from step 10; and the steps replayed from the optimizer's graph"
    ps = [torch.nn.Parameter(t) for t in randn(SHAPES, dtype, 0)]
    half = len(ps) // 2
    opt = make([ps[:half], ps[half:]], step_graph=step_graph)
    for i in range(STEPS):
        grads = randn(SHAPES, dtype, 100 + i)
        for p, g in zip(ps, grads):
            if p.grad is None or i % 3 == 0: p.grad = g  # new addresses: the layout takes them (`Layout.rebind`)
            else: p.grad.copy_(g)
        if i >= 10: ps[1].grad = None
        opt.set_hyper('lr', [1e-2 * 0.9 ** i, 2e-2 * 0.8 ** i])
        if i == 4:
            for v in opt.state[ps[-1]].values():
                if isinstance(v, torch.Tensor) and v.is_floating_point(): v.mul_(0.5)
        if i == 6: opt.state[ps[0]] = dict(opt.state[ps[0]])
        if i == 8: opt.load_state_dict(opt.state_dict())
        opt.step()
    torch.cuda.synchronize()
    states = [{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()} for p in ps]
    return [p.detach().float() for p in ps], states, opt.graph.replays


def own_graph():
    "Per algorithm and precision: the optimizer's own graph against step_graph=False (exact: the same kernels on the same numbers)"
    rows = []
    for name, make in ALGOS.items():
        for prec, (dtype, kw) in PRECISIONS.items():
            factory = lambda groups, **extra: make(groups, triton=True, **kw, **extra)
            (w0, s0, r0), (w1, s1, r1) = own_graph_run(factory, dtype, False), own_graph_run(factory, dtype, None)
            floor = max_rel(own_graph_run(factory, dtype, False)[0], w0)  # LAMB's sums are added by atomics, in no set order
            states_equal = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                                            for k in a) for a, b in zip(s0, s1))
            rows.append((name, prec, max_rel(w1, w0), floor, states_equal, [s['step'] for s in s1] == [s['step'] for s in s0], r0, r1))
    return rows


def set_to_none_runs():
    "`set_to_none=True`, each step's gradients made anew after `zero_grad()` (as backward writes them): the own graph against step_graph=False, for AdamW, Adafactor (a factored plan: its gradients are read by address) and Ranger (a gated state)"
    makers = {'AdamW': lambda ps, **kw: Adam(ps, lr=1e-2, wd=0.1, **kw), 'Adafactor': lambda ps, **kw: Adafactor(ps, lr=1e-2, **kw),
              'Ranger': lambda ps, **kw: Ranger(ps, lr=1e-2, wd=0.1, **kw)}
    rows = []
    for name, make in makers.items():
        runs = []
        for step_graph in (False, None):
            ps = [torch.nn.Parameter(t) for t in randn(SHAPES, torch.float32, 0)]
            opt = make(ps, triton=True, set_to_none=True, step_graph=step_graph)
            for i in range(STEPS):
                for p, g in zip(ps, randn(SHAPES, torch.float32, 100 + i)): p.grad = g
                opt.step(); opt.zero_grad()
            torch.cuda.synchronize()
            runs.append(([p.detach().float() for p in ps], opt.graph.replays))
        rows.append((name, max_rel(runs[1][0], runs[0][0]), runs[0][1], runs[1][1]))
    return rows


def own_graph_no_sync():
    "Steps 1 (eager), 2 (captured) and 3 to 6 (replayed, with an lr change and moved gradients) of AdamW under set_sync_debug_mode('error')"
    ps = [torch.nn.Parameter(t) for t in randn(SHAPES, torch.float32, 0)]
    for p, g in zip(ps, randn(SHAPES, torch.float32, 1)): p.grad = g
    opt = Adam(ps, lr=1e-2, triton=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for i in range(6):
            if i == 3: opt.set_hyper('lr', 2e-3)
            if i == 4:
                for p in ps: p.grad = p.grad.clone()
            opt.step()
        return f'ok ({opt.graph.replays} replays)'
    except RuntimeError as e: return f'SYNC: {str(e).splitlines()[0][:100]}'
    finally: torch.cuda.set_sync_debug_mode('default')


def cpu_copies(ps):
    "Parameters on the CPU with the gradients of `ps`"
    out = [torch.nn.Parameter(p.detach().cpu()) for p in ps]
    for p, q in zip(out, ps): p.grad = q.grad.cpu()
    return out


def own_graph_refusals():
    "What step_graph=True refuses, and the first line of each message"
    def first_step(make):
        ps = [torch.nn.Parameter(t) for t in randn(SHAPES[:3], torch.float32, 0)]
        for p, g in zip(ps, randn(SHAPES[:3], torch.float32, 1)): p.grad = g
        try: make(ps).step(); return 'stepped (NOT refused)'
        except RuntimeError as e: return str(e).splitlines()[0]
    return {'foreach backend': first_step(lambda ps: Adam(ps, lr=1e-2, foreach=True, step_graph=True)),
            'CPU parameters': first_step(lambda ps: Adam(cpu_copies(ps), lr=1e-2, step_graph=True))}


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
    lines += ['', "## The optimizer's own graph (`step_graph`)", '',
              f'`opt.step()` as called (`step_graph=None`) against `step_graph=False`: two param groups, {STEPS} steps of an '
              'lr schedule, fresh gradient tensors every third step, a state edited in place at step 5 and replaced at '
              'step 7, `load_state_dict(state_dict())` before step 9, the second parameter frozen from step 11.', '',
              '| algorithm | precision | max rel. diff of weights | the same, two runs with step_graph=False | states equal | step counts equal | replays, step_graph=False | replays, default |',
              '|---|---|---|---|---|---|---|---|']
    lines += [f'| {a} | {p} | {d:.1e} | {f:.1e} | {"yes" if se else "NO"} | {"yes" if ce else "NO"} | {r0} | {r1} |'
              for a, p, d, f, se, ce, r0, r1 in own_graph()]
    lines += ['', f'`set_to_none=True`, {STEPS} steps, new gradient tensors after each `zero_grad()`: the default against `step_graph=False`', '',
              '| algorithm | max rel. diff of weights | replays, step_graph=False | replays, default |', '|---|---|---|---|']
    lines += [f'| {a} | {d:.1e} | {r0} | {r1} |' for a, d, r0, r1 in set_to_none_runs()]
    lines += ['', f'Six default steps (eager, captured, four replays with an lr change and moved gradients) under '
              f'`set_sync_debug_mode("error")`: {own_graph_no_sync()}.', '', '| step_graph=True with | error |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in own_graph_refusals().items()]
    lines += ['', f'Triton vs forloop stochastic rounding (SGD, 3 steps, 2^20 bf16 elements): '
              f'{stochastic_bits():.2e} of elements differ.', '', f'total time {time.time() - t0:.0f} s']
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__':
    main()
