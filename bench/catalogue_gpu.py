"""GPU check of the catalogue and of this session's reliability changes, in one call: every registered algorithm
(and each modifier) in every backend against the for-loop reference on CUDA, fp32 and bf16 with Kahan, and with 8-bit
states where it has some; each
algorithm's Triton step captured in a CUDA graph and replayed against eager; autograd's in-place check after a
Triton step; a state edit between steps; then each algorithm's Triton step timed on the ResNet-50-like (fp32) and
LLM-like (bf16 + Kahan) sets, eager and replayed, as a fraction of the copy bandwidth measured in the same run, beside
peers' implementations where there are some.

Run on the GPU machine from the repository root (wheels: ../shared/gpu/wheels.sh pytorch-optimizer==4.1.0
adam-atan2-pytorch==0.4.1 einops):
    python3 bench/catalogue_gpu.py --out $OUT
"""
import argparse, copy, datetime, gc, json, math, os, sys, traceback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET to run the kernels on the GPU'

import torch
import triton
import fastoptim.all  # noqa: F401  (registers every backend and algorithm)
from fastoptim.core import algorithms
from fastoptim.low_precision import seed_master_weights
from fastoptim.testing import drive, rel_diff
from shapes import llm_shapes, resnet50_shapes
from timing import bytes_per_step, capture, copy_bandwidth, median_ms, write_report

dev = torch.device('cuda')
BACKENDS = ('foreach', 'jit', 'triton')
MODIFIERS = {'cautious': dict(cautious=True), 'grams': dict(grams=True), 'lookahead': dict(lookahead=True, lookahead_k=4),
             'orthograd': dict(orthograd=True)}


def build(name, *args, **kwargs):
    "Optimizer `name` (a registered one, or one with a modifier: `Adam+cautious`), in training mode (a schedule-free one starts in evaluation mode)"
    base, *modifiers = [name] if name in algorithms else name.split('+')
    unknown = [m for m in modifiers if m not in MODIFIERS]
    if base not in algorithms or unknown: raise SystemExit(f'{name}: not an algorithm, or modifiers {unknown} not among {sorted(MODIFIERS)}')
    opt = algorithms[base](*args, **kwargs, **{k: v for m in modifiers for k, v in MODIFIERS[m].items()})
    opt.train()
    return opt

EXTRA = {'Muon': dict(ns_dtype='fp32')}  # its iteration in fp32: bf16 would round the backends' inputs apart

def make(name, backend, **kw):
    return lambda g: build(name, g, lr=slice(1e-3, 1e-2), wd=0.1, **{backend: True}, **EXTRA.get(name, {}), **kw)

def carries(name):
    "Whether an algorithm works out numbers on the host at each step (schedule-free): a CUDA graph cannot capture its step"
    a = algorithms[name if name in algorithms else name.split('+')[0]].algorithm
    return any(x.carries for x in getattr(a, 'algorithms', {None: a}).values())


def correctness():
    rows = []
    for name in algorithms:
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
            _, expected = drive(make(name, 'forloop'), device=dev, dtype=dtype, steps=24, frozen=(8, 16))
            for b in BACKENDS:
                _, actual = drive(make(name, b), device=dev, dtype=dtype, steps=24, frozen=(8, 16))
                d = rel_diff(actual, expected)
                rows.append(dict(check=f'{name} {str(dtype)[6:]}', backend=b, value=d, ok=d < tol))
    for name in ('Adam', 'Lion', 'AdEMAMix', 'Lamb'):
        for mod, kw in MODIFIERS.items():
            if mod in ('cautious', 'orthograd') and name == 'Lamb': continue  # refused: a third pass
            _, expected = drive(make(name, 'forloop', **kw), device=dev, steps=24, frozen=(8, 16))
            _, actual = drive(make(name, 'triton', **kw), device=dev, steps=24, frozen=(8, 16))
            d = rel_diff(actual, expected)
            rows.append(dict(check=f'{name}+{mod} fp32', backend='triton', value=d, ok=d < 1e-5))
    return rows


EIGHT = dict(state_bits=8, master_weight_bits=24)  # 8-bit states, on bf16 weights with the int8 residual

def eight_bit_names():
    "The algorithms with states that have an 8-bit form"
    return [n for n in algorithms if any(spec.quantize for x in getattr(algorithms[n].algorithm, 'algorithms', {None: algorithms[n].algorithm}).values()
                                         for spec in x.states.values())]

def eight_bit(only=None):
    "Every algorithm with 8-bit states (of `only`, if given) in every backend against the for-loop's torch ops; each one's Triton step replayed from a CUDA graph against eager"
    rows = []
    for name in [n for n in eight_bit_names() if only is None or n in only]:
        _, expected = drive(make(name, 'forloop', **EIGHT), device=dev, dtype=torch.bfloat16, steps=24, frozen=(8, 16))
        for b in BACKENDS:
            _, actual = drive(make(name, b, **EIGHT), device=dev, dtype=torch.bfloat16, steps=24, frozen=(8, 16))
            d = rel_diff(actual, expected)
            rows.append(dict(check=f'{name} bf16, 8-bit states', backend=b, value=d, ok=d < 3e-2))
        if not carries(name):
            d = capture_check(name, torch.bfloat16, **EXTRA.get(name, {}), **EIGHT)
            rows.append(dict(check=f'{name} bf16, 8-bit states: graph replay vs eager', backend='triton', value=d, ok=d == 0.))
    return rows


def capture_check(name, dtype=torch.float32, **kw):
    "Eager Triton steps, then the same steps replayed from a CUDA graph on a copy: the two runs must agree exactly"
    gen = torch.Generator(device=dev).manual_seed(0)
    shapes = [(256, 64), (64,), (1000,), (3000, 5)]
    def params(): return [torch.randn(s, device=dev, generator=torch.Generator(device=dev).manual_seed(i)).to(dtype).requires_grad_()
                          for i, s in enumerate(shapes)]
    a, b = params(), params()
    grads = [[torch.randn(s, device=dev, generator=gen).to(dtype) for s in shapes] for _ in range(8)]
    oa, ob = build(name, a, lr=1e-3, triton=True, **kw), build(name, b, lr=1e-3, triton=True, **kw)
    for p, q, g in zip(a, b, grads[0]): p.grad, q.grad = g.clone(), g.clone()
    oa.step(); ob.step()  # outside the graph: builds the tables
    if carries(name):  # refused, clearly and before anything changes: the capture fails inside the step
        try:
            with torch.cuda.graph(torch.cuda.CUDAGraph()): ob.step()
        except RuntimeError as e:
            return 0. if 'carries' in str(e) else math.inf
    graph = capture(ob.step)
    for gs in grads[1:]:
        for p, q, g in zip(a, b, gs): p.grad.copy_(g); q.grad.copy_(g)
        oa.step(); graph.replay()
    torch.cuda.synchronize()
    return rel_diff(b, a)


def reliability_checks():
    rows = []
    w = torch.randn(1000, device=dev, requires_grad=True)
    opt = algorithms['Adam']([w], lr=1e-2, triton=True)
    loss = (w * w).sum(); loss.backward(retain_graph=True); opt.step()
    try: loss.backward(); refused = False
    except RuntimeError as e: refused = 'inplace' in str(e)
    rows.append(dict(check='backward through weights a Triton step changed is refused', backend='triton', value=float(refused), ok=refused))
    ps = [torch.randn(300, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opts = [algorithms['Adam'](x, lr=1e-3, triton=True) for x in (ps, qs)]
    for i in range(4):
        g = [torch.randn(300, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        for x, o in zip((ps, qs), opts):
            for p, gi in zip(x, g):
                if p.grad is None: p.grad = gi.clone()
                else: p.grad.copy_(gi)
            if i == 2:  # on the live optimizer, and on a fresh one that loads the state first: the same result
                if o is opts[1]:
                    sd = o.state_dict(); opts[1] = o = algorithms['Adam'](qs, lr=1e-3, triton=True); o.load_state_dict(sd)
                seed_master_weights(o, [p.detach().float() + 1e-3 for p in x])
            o.step()
    d = rel_diff(ps, qs)
    rows.append(dict(check='seed_master_weights after two steps, live vs reloaded', backend='triton', value=d, ok=d == 0.))
    # a deep copy after steps (its register caps known, its own graph not yet captured) steps as the original does
    opt = algorithms['Adam'](ps, lr=1e-3, triton=True, step_graph=False)
    opt.step()
    twin = copy.deepcopy(opt)
    for o in (opt, twin):
        for p in o.param_lists[0]: p.grad.fill_(0.5)
        o.step()
    d = rel_diff(opt.param_lists[0], twin.param_lists[0])
    rows.append(dict(check='deep copy after a step steps as the original', backend='triton', value=d, ok=d == 0.))
    # dropping an optimizer frees its device memory at once, without the garbage collector
    del opt, twin, opts
    torch.cuda.synchronize(); gc.collect(); gc.disable()
    before = torch.cuda.memory_allocated()
    big = [torch.randn(2**20, device=dev, requires_grad=True) for _ in range(4)]
    for p in big: p.grad = torch.randn_like(p)
    opt = algorithms['Adam'](big, lr=1e-3, triton=True)
    for _ in range(3): opt.step()  # the third replays its own graph
    held = torch.cuda.memory_allocated()
    del opt
    left = torch.cuda.memory_allocated() - before - sum(p.numel() * 8 for p in big)  # the weights and gradients stay
    gc.enable()
    rows.append(dict(check=f'del opt frees its {(held - before) / 2**20:.0f} MiB without the collector: bytes left', backend='triton',
                     value=float(left), ok=left <= 0))
    return rows


def make_params(shapes, dtype):
    gen = torch.Generator(device=dev).manual_seed(0)
    ps = []
    for s in shapes:
        p = torch.randn(s, device=dev, generator=gen).mul_(0.02).to(dtype).requires_grad_()
        p.grad = torch.randn(s, device=dev, generator=gen).to(dtype)
        ps.append(p)
    return ps


def peers():
    "Other people's implementations, to time beside ours (only those that are installed): name -> [(label, constructor)]; optimi with Kahan summation on bf16 weights, as ours"
    out = {'Adam': [('torch.optim fused', lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True))],
           'Adamax': [('torch.optim foreach', lambda ps: torch.optim.Adamax(ps, lr=1e-3, foreach=True))],
           'nesterov': [('torch.optim foreach', lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, foreach=True))],
           'momentum': [('torch.optim fused', lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True))],
           'rmsprop': [('torch.optim foreach', lambda ps: torch.optim.RMSprop(ps, lr=1e-3, foreach=True))],
           'RAdam': [('torch.optim foreach', lambda ps: torch.optim.RAdam(ps, lr=1e-3, decoupled_weight_decay=True, foreach=True))],
           'NAdam': [('torch.optim foreach', lambda ps: torch.optim.NAdam(ps, lr=1e-3, decoupled_weight_decay=True, foreach=True))]}
    def add(name, label, ctor): out.setdefault(name, []).append((label, ctor))
    try:
        import optimi
        kahan = lambda ps: ps[0].dtype == torch.bfloat16
        for name, cls, kw in (('Adam', optimi.AdamW, {}), ('RAdam', optimi.RAdam, dict(decouple_wd=True)), ('Lion', optimi.Lion, {}),
                              ('Adan', optimi.Adan, {}), ('RAdam+lookahead', optimi.Ranger, {}),
                              ('StableAdamW', optimi.StableAdamW, {}), ('momentum', optimi.SGD, dict(momentum=0.9))):
            for backend in ('triton', 'foreach'):
                add(name, f'optimi {backend}', lambda ps, cls=cls, kw=kw, backend=backend:
                    cls(ps, lr=1e-3, kahan_sum=kahan(ps), **{backend: True}, **kw))
    except ImportError: pass
    try:
        import pytorch_optimizer as po
        add('Adan', 'pytorch_optimizer foreach', lambda ps: po.Adan(ps, lr=1e-3, weight_decouple=True, foreach=True))
        add('ADOPT', 'pytorch_optimizer foreach', lambda ps: po.ADOPT(ps, lr=1e-3, foreach=True))
        add('AdEMAMix', 'pytorch_optimizer foreach', lambda ps: po.AdEMAMix(ps, lr=1e-3, foreach=True))
    except ImportError: pass
    try:
        import schedulefree
        def sf(ps):
            opt = schedulefree.AdamWScheduleFree(ps, lr=1e-3, foreach=True)
            opt.train()
            return opt
        add('ScheduleFreeAdamW', 'schedulefree foreach', sf)
    except ImportError: pass
    try:
        from adam_atan2_pytorch import AdamAtan2
        add('AdamAtan2', 'adam_atan2_pytorch (reference)', lambda ps: AdamAtan2(ps, lr=1e-3))
    except ImportError: pass
    return out


def steps_per_sample(opt):
    "Steps each timed sample takes: a gated state's traffic comes once every `lookahead_k` steps, so that many, one sync among them"
    return int(opt.param_groups[0]['lookahead_k']) if any(opt.algorithm_of(p).plan().gates for p in opt.flat_params) else 1


def timing(bandwidth, reps, names):
    rows = []
    sets = [('ResNet-50-like', resnet50_shapes(), torch.float32), ('LLM-like', llm_shapes(), torch.bfloat16)]
    others = peers()
    for set_name, shapes, dtype in sets:
        for name in names:
            if name in ('sgd', 'Muon'): continue  # Muon's step is timed by muon_gpu.py
            ps = make_params(shapes, dtype)
            opt = build(name, ps, lr=1e-4, triton=True)
            opt.step(); opt.step()
            every = steps_per_sample(opt)
            steps = lambda fn: (lambda: [fn() for _ in range(every)])
            eager = median_ms(steps(opt.step), reps, dev, warmup=3) / every
            graph, replay = None, math.nan
            if not carries(name):
                graph = capture(opt.step)
                replay = median_ms(steps(graph.replay), reps, dev, warmup=3) / every
            n, phases = bytes_per_step(opt)
            bound = n / bandwidth / 1e6
            row = dict(set=set_name, dtype=str(dtype)[6:], algorithm=name, passes=phases, eager_ms=eager, graph_ms=replay,
                       bound_ms=bound, eager_frac=bound / eager, graph_frac=bound / replay)
            del opt, graph
            row['peers'] = []
            for label, ctor in others.get(name, []):  # eager, as their users call them
                try:
                    qs = make_params(shapes, dtype)
                    peer = ctor(qs); peer.step()
                    row['peers'].append((label, f'{median_ms(peer.step, reps, dev, warmup=3):.3f}'))
                    del peer, qs
                except Exception as e: row['peers'].append((label, f'{type(e).__name__}: {str(e)[:80]}'))
                gc.collect(); torch.cuda.empty_cache()
            rows.append(row)
            del ps
            gc.collect()  # anything a cycle still holds (a CUDA graph's pool, a peer's hooks) goes before the next build
            torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.environ.get('OUT', 'catalogue_gpu'))
    ap.add_argument('--reps', type=int, default=30)
    ap.add_argument('--parts', default='correctness,eight_bit,reliability,capture,timing', help='which parts to run')
    ap.add_argument('--algos', default=None, help='the algorithms to time and to check with 8-bit states (registry names, or with a modifier: Adam+cautious; comma-separated): all, and three modified, by default')
    args = ap.parse_args()
    parts = args.parts.split(',')
    names = args.algos.split(',') if args.algos else list(algorithms) + ['Adam+cautious', 'Adam+grams', 'Lion+cautious']
    os.makedirs(args.out, exist_ok=True)
    head = (f"# Catalogue on the GPU\n\n{datetime.date.today()}, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"triton {triton.__version__}; command: `python3 {' '.join(sys.argv)}`\n")
    results = {}
    for part, fn in (('correctness', correctness), ('eight_bit', lambda: eight_bit(args.algos and names)), ('reliability', reliability_checks),
                     ('capture', lambda: [dict(check=f"{n}: {'capture refused (carries)' if carries(n) else 'graph replay vs eager'}",
                                               backend='triton', value=capture_check(n))
                                          for n in algorithms])):
        if part not in parts: results[part] = []; continue
        try: results[part] = fn()
        except Exception: results[part] = [dict(check=f'{part} crashed', backend='', value=math.nan, ok=False, error=traceback.format_exc()[-2000:])]
        json.dump(results, open(os.path.join(args.out, 'results.json'), 'w'), indent=1, default=str)
    for r in results['capture']: r['ok'] = r.get('ok', r['value'] < 1e-6)
    bandwidth = copy_bandwidth(dev)
    try: results['timing'] = timing(bandwidth, args.reps, names) if 'timing' in parts else []
    except Exception: results['timing'] = [dict(error=traceback.format_exc()[-2000:])]
    json.dump(results, open(os.path.join(args.out, 'results.json'), 'w'), indent=1, default=str)
    lines = [head, f"Copy bandwidth measured in this run: {bandwidth:.0f} GB/s.\n", '## Checks\n',
             '| check | backend | value | ok |', '|---|---|---|---|']
    for part in ('correctness', 'eight_bit', 'reliability', 'capture'):
        for r in results[part]:
            lines.append(f"| {r['check']} | {r['backend']} | {r['value']:.3g} | {'yes' if r.get('ok') else '**NO**'} |")
            if 'error' in r: lines.append(f"\n```\n{r['error']}\n```\n")
    lines += ['', '## Triton step time (median of CUDA events; fraction = one-pass byte bound / time; with lookahead, both per step over `lookahead_k` steps)\n',
              '| set | dtype | algorithm | passes | eager ms (frac) | graph ms (frac) | others, eager ms |', '|---|---|---|---|---|---|---|']
    for r in results['timing']:
        if 'error' in r: lines.append(f"\n```\n{r['error']}\n```\n"); continue
        lines.append(f"| {r['set']} | {r['dtype']} | {r['algorithm']} | {r['passes']} | {r['eager_ms']:.3f} ({r['eager_frac']:.2f}) | "
                     f"{r['graph_ms']:.3f} ({r['graph_frac']:.2f}) | {'; '.join(f'{label} {ms}' for label, ms in r['peers'])} |")
    bad = [r for part in ('correctness', 'eight_bit', 'reliability', 'capture') for r in results[part] if not r.get('ok')]
    lines.append(f"\n{len(bad)} failed checks.")
    write_report('\n'.join(lines), os.path.join(args.out, 'catalogue_gpu.md'))


if __name__ == '__main__':
    main()
