"""`opt.step()` of this checkout against an older one, interleaved in one process on the same GPU: the fair form of the
"within 3% of the committed step_bench figures" check (issue 10), which a run on another machine cannot give (the
host's speed varies between the device tool's machines by up to 1.6×, and the eager ResNet-like steps are host-bound).

The older checkout is imported as the package `fastoptim_old` (fastoptim's modules import each other relatively).
For every set, dtype, algorithm and backend, each version steps its own copy of the same parameters and gradients;
the timing alternates between them in rounds (CUDA events around each step, synchronised after it, as
`bench/step_bench.py` times), and the table gives each version's median and their ratio. `-graph` rows: the step
captured in a CUDA graph and replayed (`bench/graphed.py`).

On the GPU machine, from the repository root, with the older checkout's files in OLD (e.g. `git archive ebb1a1d | tar -x -C OLD`):
    python3 bench/ab_step.py --old OLD --out $OUT/ab.md
CPU dry run: python bench/ab_step.py --old OLD --device cpu --small --backends foreach --out /tmp/ab.md
"""
import argparse, datetime, importlib, importlib.util, os, platform, shlex, sys


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--old', required=True, help='root of the older checkout (holding fastoptim/)')
    ap.add_argument('--sets', default='resnet,llm')
    ap.add_argument('--dtypes', default='fp32,bf16')
    ap.add_argument('--algos', default='sgd,adamw,lamb', help='sgd, adamw, lamb (step_bench\'s hypers) or any class name (Adan, Ranger)')
    ap.add_argument('--backends', default='triton,triton-graph,foreach,jit')
    ap.add_argument('--rounds', type=int, default=5, help='alternations between the versions')
    ap.add_argument('--reps', type=int, default=10, help='timed steps per version and round')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--small', action='store_true', help='every dimension divided by 16: for dry runs')
    ap.add_argument('--out', default=None)
    return ap.parse_args()


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ARGS.device == 'cpu': os.environ['TRITON_INTERPRET'] = '1'
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import numpy as np
import torch
import fastoptim
import fastoptim.all as new
from shapes import llm_shapes, resnet50_shapes
from graphed import Graphed
from timing import median_ms, write_report

HP = dict(lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=1e-2)  # step_bench's
SETS = {'llm': llm_shapes, 'resnet': resnet50_shapes}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def load_old(root):
    "The package at `root`/fastoptim, imported as `fastoptim_old`, and its `all` module"
    spec = importlib.util.spec_from_file_location('fastoptim_old', os.path.join(root, 'fastoptim', '__init__.py'),
                                                  submodule_search_locations=[os.path.join(root, 'fastoptim')])
    package = importlib.util.module_from_spec(spec)
    sys.modules['fastoptim_old'] = package
    spec.loader.exec_module(package)
    return importlib.import_module('fastoptim_old.all')


def factory(lib, algo, flag, kahan):
    "A maker of `lib`'s optimizer `algo` on one backend, with step_bench's hypers (SGD with L2 decay, as torch's)"
    kw, h = {flag: True, 'kahan_sum': kahan}, HP
    known = {'sgd': lambda ps: lib.SGD(ps, h['lr'], mom=h['mom'], wd=h['wd'], decouple_wd=False, **kw),
             'adamw': lambda ps: lib.Adam(ps, h['lr'], mom=h['mom'], sqr_mom=h['sqr_mom'], eps=h['eps'], wd=h['wd'], **kw),
             'lamb': lambda ps: lib.Lamb(ps, h['lr'], mom=h['mom'], sqr_mom=h['sqr_mom'], eps=h['eps'], wd=h['wd'], **kw)}
    # any other algorithm by its class name (`Adan`, `AdEMAMix`, `Ranger`), at its own defaults but `lr` and `wd`
    return known[algo] if algo in known else lambda ps: getattr(lib, algo)(ps, h['lr'], wd=h['wd'], **kw)


def params(shapes, dtype, device, small):
    g = torch.Generator(device=device).manual_seed(0)
    out = []
    for s in shapes:
        if small: s = tuple(max(1, d // 16) for d in s)
        p = torch.nn.Parameter(torch.randn(s, generator=g, device=device).mul_(0.02).to(dtype))
        p.grad = torch.randn(s, generator=g, device=device).to(dtype)
        out.append(p)
    return out


def main(args):
    device = torch.device(args.device)
    old = load_old(args.old)
    rows = []
    for set_name in args.sets.split(','):
        for dtype_name in args.dtypes.split(','):
            for algo in args.algos.split(','):
                for backend in args.backends.split(','):
                    for kahan in ((False, True) if dtype_name == 'bf16' else (False,)):
                        flag, graphed = backend.removesuffix('-graph'), backend.endswith('-graph')
                        if graphed and device.type != 'cuda': continue
                        steps = {}
                        for name, lib in (('old', old), ('new', new)):
                            ps = params(SETS[set_name](), DTYPES[dtype_name], device, args.small)
                            opt = factory(lib, algo, flag, kahan)(ps)
                            if graphed: opt = Graphed(opt)
                            steps[name] = (opt, ps)
                        times = {'old': [], 'new': []}
                        for name in times: median_ms(steps[name][0].step, 2, device, warmup=1)  # state, tables, compilation
                        for _ in range(args.rounds):
                            for name in times: times[name].append(median_ms(steps[name][0].step, args.reps, device))
                        o, n = float(np.median(times['old'])), float(np.median(times['new']))
                        impl = f"fastoptim-{flag}{'-kahan' if kahan else ''}{'-graph' if graphed else ''}"
                        rows.append((set_name, dtype_name, algo, impl, o, n))
                        print(f'{set_name} {dtype_name} {algo} {impl}: old {o:.3f} ms, new {n:.3f} ms, ×{n / o:.3f}', flush=True)
                        del steps
                        if device.type == 'cuda': torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'
    lines = [f'# `opt.step()`, this checkout against an older one, interleaved: {name}', '',
             f"{datetime.date.today()}; torch {torch.__version__}; fastoptim {fastoptim.__version__}; older checkout "
             f"`{args.old}`; command: `{' '.join(map(shlex.quote, ['python3', *sys.argv]))}`", '',
             f"Median over {args.rounds} alternating rounds of each round's median of {args.reps} steps (CUDA events, "
             "synchronised after each step).", '',
             '| set | dtype | algo | impl | old ms | new ms | new / old |', '|---|---|---|---|---|---|---|']
    lines += [f'| {s} | {d} | {a} | {i} | {o:.3f} | {n:.3f} | {n / o:.3f} |' for s, d, a, i, o, n in rows]
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__':
    main(ARGS)
