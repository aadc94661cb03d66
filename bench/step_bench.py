"""Time `opt.step()` of SGD-momentum, AdamW and LAMB for fastoptim's backends and the peers (torch.optim, fastai,
optimi) on an LLM-like and a ResNet-50-like parameter set, fp32 and bf16; check each against an fp64 reference and
check that fastoptim's step never waits for the host. Everything in one process, so the figures compare as ratios.

On the GPU machine, from the repository root (wheels from ../shared/gpu/wheels.sh carried in .whl/):
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl && \
    export PYTHONPATH=$PWD/.site:$PWD; python3 bench/step_bench.py --out $OUT
CPU dry run: python bench/step_bench.py --device cpu --small --quick --out /tmp/sb
Re-render results.md and roofline.png from a results.json: python bench/step_bench.py --from-json R/results.json --out R
"""
import argparse, datetime, gc, json, math, os, platform, shlex, sys, time, warnings


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sets', default='llm,resnet', help='parameter sets: llm, resnet')
    ap.add_argument('--dtypes', default='fp32,bf16', help='parameter dtypes: fp32, bf16')
    ap.add_argument('--algos', default='sgd,adamw,lamb', help='algorithms: sgd, adamw, lamb')
    ap.add_argument('--impls', default='', help='keep implementations whose name contains one of these comma-separated '
                    'words, e.g. fastoptim,torch-fused (default: all)')
    ap.add_argument('--warmup', type=int, default=10, help='untimed steps after the first one')
    ap.add_argument('--reps', type=int, default=50, help='timed steps (the median is reported)')
    ap.add_argument('--check-steps', type=int, default=5, help='steps of the correctness check')
    ap.add_argument('--quick', action='store_true', help='3 warm-up and 10 timed steps')
    ap.add_argument('--small', action='store_true', help='every dimension divided by 16 (at least 1): for dry runs')
    ap.add_argument('--device', default='cuda', help='cuda (default) or cpu')
    ap.add_argument('--from-json', default=None, help='only write results.md and roofline.png from this results.json')
    ap.add_argument('--out', default=os.environ.get('OUT', 'step_bench_results'), help='folder for results.md, '
                    'results.json and roofline.png (default: $OUT, else ./step_bench_results)')
    args = ap.parse_args()
    if args.quick: args.warmup, args.reps = min(args.warmup, 3), min(args.reps, 10)
    return args


# Parsed before torch and triton are imported: on the CPU, Triton kernels run only in its interpreter, which
# TRITON_INTERPRET=1 selects when triton is first imported (by fastoptim).
ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None and ARGS.device == 'cpu': os.environ['TRITON_INTERPRET'] = '1'
elif ARGS is not None and os.environ.get('TRITON_INTERPRET', '0') == '1':
    sys.exit('Unset TRITON_INTERPRET to run the Triton kernels on the GPU.')

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import fastai
from fastai.optimizer import SGD as FastaiSGD, Adam as FastaiAdam, Lamb as FastaiLamb
import fastoptim
from fastoptim.all import SGD, Adam, Lamb
from shapes import llm_shapes, resnet50_shapes
from graphed import Graphed
from timing import copy_bandwidth, median_ms
try: import triton
except ImportError: triton = None
try: import optimi
except ImportError as e: optimi, OPTIMI_ERROR = None, f'{type(e).__name__}: {e}'

# Bytes one step must move per parameter at the least: reads and writes of p and the states, a read of g.
# fp32 AdamW: p r/w 8, g r 4, m r/w 8, v r/w 8; SGD-momentum has no v; LAMB moves what AdamW does, plus reductions.
BYTES = {('sgd', 'fp32'): 20, ('adamw', 'fp32'): 28, ('lamb', 'fp32'): 28,
         ('sgd', 'bf16'): 10, ('adamw', 'bf16'): 14, ('lamb', 'bf16'): 14}
KAHAN_BYTES = 4  # a bf16 Kahan compensation buffer, read and written
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
SETS = {'llm': llm_shapes, 'resnet': resnet50_shapes}
SET_TITLES = {'llm': 'LLM-like', 'resnet': 'ResNet-50-like'}
ALGO_TITLES = {'sgd': 'SGD-momentum (L2 wd)', 'adamw': 'AdamW', 'lamb': 'LAMB'}
HP = dict(lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=1e-2)  # the same for every implementation
TOL = {'fp32': 1e-5, 'bf16': 2 ** -5}  # max relative error allowed after the check steps; bf16: 4 bf16 epsilons
GRAPH_SKIP = None if torch.cuda.is_available() else 'CUDA graphs need CUDA'
CPU_TRITON_STEPS = (1, 3)  # warm-up and timed steps of the Triton interpreter on the CPU
INTERPRETER_MAX_PARAMS = 1e6  # larger sets would keep the interpreter busy for minutes


def fastoptim_impl(flag, kahan_sum, **options):
    "fastoptim with one backend flag (None: the default, no flag) and `options`; SGD with L2 weight decay (`decouple_wd=False`), as torch's SGD does"
    kw = {'kahan_sum': kahan_sum, **({flag: True} if flag else {}), **options}
    return {'sgd': lambda ps: SGD(ps, HP['lr'], mom=HP['mom'], wd=HP['wd'], decouple_wd=False, **kw),
            'adamw': lambda ps: Adam(ps, HP['lr'], mom=HP['mom'], sqr_mom=HP['sqr_mom'], eps=HP['eps'], wd=HP['wd'], **kw),
            'lamb': lambda ps: Lamb(ps, HP['lr'], mom=HP['mom'], sqr_mom=HP['sqr_mom'], eps=HP['eps'], wd=HP['wd'], **kw)}


def torch_impl(**kw):
    "torch.optim SGD (momentum, L2 weight decay) and AdamW; torch has no LAMB"
    return {'sgd': lambda ps: torch.optim.SGD(ps, lr=HP['lr'], momentum=HP['mom'], weight_decay=HP['wd'], **kw),
            'adamw': lambda ps: torch.optim.AdamW(ps, lr=HP['lr'], betas=(HP['mom'], HP['sqr_mom']), eps=HP['eps'],
                                                  weight_decay=HP['wd'], **kw)}


def fastai_impl():
    "fastai's native optimizers (one callback call per tensor; Lamb reads its trust ratio on the host)"
    return {'sgd': lambda ps: FastaiSGD(ps, HP['lr'], mom=HP['mom'], wd=HP['wd'], decouple_wd=False),
            'adamw': lambda ps: FastaiAdam(ps, HP['lr'], mom=HP['mom'], sqr_mom=HP['sqr_mom'], eps=HP['eps'], wd=HP['wd']),
            'lamb': lambda ps: FastaiLamb(ps, HP['lr'], mom=HP['mom'], sqr_mom=HP['sqr_mom'], eps=HP['eps'], wd=HP['wd'])}


def optimi_impl(**kw):
    "optimi SGD (undampened momentum, L2 weight decay by default) and AdamW; optimi 0.3.3 has no LAMB"
    return {'sgd': lambda ps: optimi.SGD(ps, lr=HP['lr'], momentum=HP['mom'], weight_decay=HP['wd'], **kw),
            'adamw': lambda ps: optimi.AdamW(ps, lr=HP['lr'], betas=(HP['mom'], HP['sqr_mom']), eps=HP['eps'],
                                             weight_decay=HP['wd'], **kw)}


def graphed(factories):
    "The same factories, each optimizer wrapped in `Graphed`"
    return {a: (lambda make: lambda ps: Graphed(make(ps)))(make) for a, make in factories.items()}


def implementations(args):
    "name -> (factories per algorithm, dtypes, extra bytes per parameter, reason to skip or None)"
    both, no_optimi = ('fp32', 'bf16'), None if optimi else f'optimi is not importable ({OPTIMI_ERROR})'
    impls = {}
    for b in ('foreach', 'jit', 'triton'):  # fastoptim's bf16 default is Kahan: time both ways
        impls[f'fastoptim-{b}'] = (fastoptim_impl(b, kahan_sum=False), both, 0, None)
        impls[f'fastoptim-{b}-kahan'] = (fastoptim_impl(b, kahan_sum=True), ('bf16',), KAHAN_BYTES, None)
    # Triton without the optimizer's own CUDA graph: every step launches its kernels from Python
    impls['fastoptim-triton-nograph'] = (fastoptim_impl('triton', kahan_sum=False, step_graph=False), both, 0, None)
    impls['fastoptim-triton-kahan-nograph'] = (fastoptim_impl('triton', kahan_sum=True, step_graph=False), ('bf16',), KAHAN_BYTES, None)
    # no flag and no kahan_sum: what `adam()` does (Kahan in bf16), against the flagged backend it picks
    impls['fastoptim-default'] = (fastoptim_impl(None, kahan_sum=None), ('fp32',), 0, None)
    impls['fastoptim-default-kahan'] = (fastoptim_impl(None, kahan_sum=None), ('bf16',), KAHAN_BYTES, None)
    impls['fastoptim-triton-graph'] = (graphed(fastoptim_impl('triton', kahan_sum=False)), both, 0, GRAPH_SKIP)
    impls['fastoptim-triton-kahan-graph'] = (graphed(fastoptim_impl('triton', kahan_sum=True)), ('bf16',), KAHAN_BYTES,
                                             GRAPH_SKIP)
    impls |= {'torch-forloop': (torch_impl(foreach=False), both, 0, None),
              'torch-foreach': (torch_impl(foreach=True), both, 0, None),
              'torch-fused': (torch_impl(fused=True), both, 0, None),
              'torch-fused-graph': (graphed({'sgd': torch_impl(fused=True)['sgd'],
                                             'adamw': torch_impl(fused=True, capturable=True)['adamw']}), both, 0, GRAPH_SKIP),
              'fastai': (fastai_impl(), both, 0, None),
              'optimi-foreach': (optimi_impl(foreach=True, triton=False, kahan_sum=False), both, 0, no_optimi),
              'optimi-triton': (optimi_impl(foreach=False, triton=True, kahan_sum=False), both, 0, no_optimi),
              'optimi-triton-kahan': (optimi_impl(foreach=False, triton=True, kahan_sum=True), ('bf16',), KAHAN_BYTES,
                                      no_optimi)}
    words = [w for w in args.impls.split(',') if w]
    return {k: v for k, v in impls.items() if not words or any(w in k for w in words)}


def cpu_skip(name, device, n_params):
    "Why Triton `name` cannot run on this CPU set, or None"
    if device.type != 'cpu' or 'triton' not in name: return None
    if name.startswith('optimi'): return "optimi's Triton kernels need CUDA tensors"
    if n_params > INTERPRETER_MAX_PARAMS:
        return (f'Triton runs on the CPU only in its interpreter (~6 ms per 512-element block): skipped above '
                f'{INTERPRETER_MAX_PARAMS / 1e6:g}M parameters (use --small on the ResNet set)')


def shrink(shapes, small):
    "Every dimension divided by 16 (at least 1) when `small`"
    return [tuple(max(1, d // 16) for d in s) for s in shapes] if small else shapes


def make_tensors(shapes, dtype, device, seed):
    "Standard normal tensors drawn in fp32 on `device` from a seeded generator, then cast to `dtype`"
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(s, generator=g, device=device).to(dtype) for s in shapes]


def make_params(shapes, dtype, device, seed=0):
    "Random parameters with random gradients"
    ps = [torch.nn.Parameter(t) for t in make_tensors(shapes, dtype, device, seed)]
    for p, g in zip(ps, make_tensors(shapes, dtype, device, seed + 1)): p.grad = g
    return ps


def describe(e):
    "An exception in one line: its type and first non-empty line"
    return f"{type(e).__name__}: {next((l for l in str(e).splitlines() if l.strip()), '')[:200]}"


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def free():
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache()


# fp64 references with fastai's formulas; t is the 1-based step; SGD adds L2 weight decay to the gradient,
# AdamW and LAMB decay p by lr·wd first (LAMB's r1 is the RMS of the decayed p).
def ref_sgd(p, g, m, v, t):
    m = HP['mom'] * m + g + HP['wd'] * p
    return p - HP['lr'] * m, m, v


def _moments(p, g, m, v, t):
    m = HP['mom'] * m + (1 - HP['mom']) * g
    v = HP['sqr_mom'] * v + (1 - HP['sqr_mom']) * g * g
    u = (m / (1 - HP['mom'] ** t)) / ((v / (1 - HP['sqr_mom'] ** t)).sqrt() + HP['eps'])
    return p * (1 - HP['lr'] * HP['wd']), m, v, u


def ref_adamw(p, g, m, v, t):
    p, m, v, u = _moments(p, g, m, v, t)
    return p - HP['lr'] * u, m, v


def ref_lamb(p, g, m, v, t):
    p, m, v, u = _moments(p, g, m, v, t)
    r1, r2 = p.pow(2).mean().sqrt().item(), u.pow(2).mean().sqrt().item()
    q = 1. if r1 == 0 or r2 == 0 else min(r1 / r2, 10.)
    return p - HP['lr'] * q * u, m, v


REFERENCES = {'sgd': ref_sgd, 'adamw': ref_adamw, 'lamb': ref_lamb}


def reference(algo, p0, grads):
    "Parameters after one step per entry of `grads`, in fp64 from the same starting values"
    ps = [p.double() for p in p0]
    ms, vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    for t, gs in enumerate(grads, 1):
        for i, g in enumerate(gs): ps[i], ms[i], vs[i] = REFERENCES[algo](ps[i], g.double(), ms[i], vs[i], t)
    return ps


def run_steps(make_opt, p0, grads):
    "Parameters after `make_opt` took one step per entry of `grads` (copied in fresh: some peers overwrite p.grad)"
    ps = [torch.nn.Parameter(p.clone()) for p in p0]
    for p in ps: p.grad = torch.empty_like(p)
    opt = make_opt(ps)
    for gs in grads:
        for p, g in zip(ps, gs): p.grad.copy_(g)
        opt.step()
    return [p.detach() for p in ps]


def rel_err(actual, expected):
    "Worst over tensors of max|actual - expected| / max|expected|; inf on NaN"
    worst = 0.
    for a, e in zip(actual, expected):
        d = ((a.double() - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        worst = max(worst, d if not math.isnan(d) else math.inf)
    return worst


def correctness(algo, impls, shapes, dtype, device, steps):
    "Max relative error (or the exception) of each implementation after `steps` steps against the fp64 reference"
    p0 = make_tensors(shapes, dtype, device, seed=100)
    grads = [make_tensors(shapes, dtype, device, seed=101 + i) for i in range(steps)]
    expected = reference(algo, p0, grads)
    res = {}
    for name, make in impls.items():
        try: res[name] = rel_err(run_steps(make, p0, grads), expected)
        except Exception as e: res[name] = describe(e)
        finally: free()
    return res


def sync_check(opt, device):
    "'ok' if one `opt.step()` runs under torch.cuda.set_sync_debug_mode('error'), else 'SYNC' and the message"
    if device.type != 'cuda': return 'n/a', None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try: opt.step(); return 'ok', None
    except RuntimeError as e: return 'SYNC', describe(e)
    finally: torch.cuda.set_sync_debug_mode('default')


def host_ms(fn, reps, device):
    "Host time per call of `fn` in ms, over `reps` calls queued without waiting for the GPU (then synchronised)"
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps): fn()
    ms = (time.perf_counter() - t0) * 1e3 / reps
    sync(device)
    return ms


def time_step(make_opt, shapes, dtype, device, warmup, reps):
    "Median step ms, host ms, extra MiB allocated during the timed steps (None on the CPU), sync check: after a first step"
    ps = make_params(shapes, dtype, device)
    opt = make_opt(ps)
    opt.step()
    for _ in range(warmup): opt.step()
    sync(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    ms = median_ms(opt.step, reps, device)
    extra = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if device.type == 'cuda' else None
    host = host_ms(opt.step, reps, device)
    status, msg = sync_check(opt, device)
    del opt, ps
    return ms, host, extra, status, msg


def bench(args, device, bw):
    "One row per (set, dtype, algorithm, implementation): correctness first, then timing"
    impls, rows = implementations(args), []
    for set_name in args.sets.split(','):
        shapes = shrink(SETS[set_name](), args.small)
        n_params = sum(math.prod(s) for s in shapes)
        for dt in args.dtypes.split(','):
            for algo in args.algos.split(','):
                todo = {k: v for k, v in impls.items() if algo in v[0] and dt in v[1]}
                skips = {k: v[3] or cpu_skip(k, device, n_params) for k, v in todo.items()}
                run = {k: v[0][algo] for k, v in todo.items() if not skips[k]}
                t0 = time.time()
                errs = correctness(algo, run, shapes[:6] + shapes[-2:], DTYPES[dt], device, args.check_steps)
                print(f'{set_name} {dt} {algo}: correctness {time.time() - t0:.1f}s', flush=True)
                for name, (_, _, kahan, _) in todo.items():
                    row = dict(set=set_name, dtype=dt, algo=algo, impl=name, n_params=n_params,
                               bytes_per_param=BYTES[algo, dt] + kahan, ms=None, host_ms=None, reps=None, fraction=None, extra_mib=None,
                               rel_err=None, tol=TOL[dt], check=None, sync=None, note=skips[name])
                    rows.append(row)
                    if name not in run: continue
                    if isinstance(errs[name], str): row.update(check='ERROR', note=errs[name]); continue
                    row.update(rel_err=errs[name], check='ok' if errs[name] <= TOL[dt] else 'FAIL')
                    warm, reps = CPU_TRITON_STEPS if device.type == 'cpu' and 'triton' in name else (args.warmup, args.reps)
                    t0 = time.time()
                    try: ms, host, extra, status, msg = time_step(run[name], shapes, DTYPES[dt], device, warm, reps)
                    except Exception as e: row.update(note=describe(e)); continue
                    finally: free()
                    row.update(ms=ms, host_ms=host, reps=reps, extra_mib=extra, sync=status, note=msg,
                               fraction=row['bytes_per_param'] * n_params / (bw * 1e9) * 1e3 / ms)
                    print(f'  {name}: {ms:.3f} ms ({time.time() - t0:.1f}s)', flush=True)
    return rows


def fmt(v, spec):
    return '-' if v is None else format(v, spec)


def table(rows, full=False):
    "Markdown table of the timed rows; `full` adds untimed rows, bytes per parameter, the ratio to the fastest, notes"
    head = ['set', 'dtype', 'algo', 'impl', 'ms', 'fraction', 'host ms', 'extra MiB', 'max rel err', 'sync']
    if full: head += ['bytes/param', 'x fastest', 'note']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        if r['ms'] is None and not full: continue
        err = '-' if r['rel_err'] is None else f"{r['rel_err']:.1e}" + (' FAIL' if r['check'] == 'FAIL' else '')
        cells = [r['set'], r['dtype'], r['algo'], r['impl'], fmt(r['ms'], '.3f'), fmt(r['fraction'], '.2f'), fmt(r['host_ms'], '.3f'),
                 fmt(r['extra_mib'], '.0f'), err, r['sync'] or '-']
        if full:
            same = [q['ms'] for q in rows if q['ms'] and (q['set'], q['dtype'], q['algo']) == (r['set'], r['dtype'], r['algo'])]
            cells += [str(r['bytes_per_param']), fmt(r['ms'] and r['ms'] / min(same), '.2f'), (r['note'] or '').replace('|', '/')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def set_title(set_name, small):
    "e.g. 'LLM-like, 147 tensors, 940.4M params'"
    shapes = shrink(SETS[set_name](), small)
    n = sum(map(math.prod, shapes))
    return f"{SET_TITLES[set_name]}{' --small' if small else ''}, {len(shapes)} tensors, {n / 1e6:.1f}M params"


def roofline(rows, order, small, path):
    "Bars of the fraction of copy bandwidth, one panel per (set, dtype), grouped by algorithm, colours by implementation"
    rows = [r for r in rows if r['fraction'] is not None]
    panels = list(dict.fromkeys((r['set'], r['dtype']) for r in rows))
    names = [n for n in order if any(r['impl'] == n for r in rows)]
    colors = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    fig, axes = plt.subplots(max(len(panels), 1), 1, figsize=(11, 3 * max(len(panels), 1) + 0.6), squeeze=False)
    for ax, (s, dt) in zip(axes[:, 0], panels):
        groups = {}
        for r in rows:
            if (r['set'], r['dtype']) == (s, dt): groups.setdefault(r['algo'], {})[r['impl']] = r['fraction']
        width = 0.8 / max(map(len, groups.values()))
        for i, fracs in enumerate(groups.values()):
            present = [n for n in names if n in fracs]
            for j, n in enumerate(present):
                ax.bar(i + (j - (len(present) - 1) / 2) * width, fracs[n], width, color=colors[n])
        ax.axhline(1, color='k', lw=0.8, ls='--')
        ax.set_xticks(range(len(groups)), [ALGO_TITLES[a] for a in groups])
        ax.set_ylabel('fraction of copy bandwidth')
        ax.set_title(f'{set_title(s, small)}, {dt}', fontsize=10)
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=colors[n]) for n in names], names, loc='upper center',
               ncol=min(len(names), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / (3 * max(len(panels), 1) + 0.6)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_meta(args, device, bw, seconds):
    "What results.json records about the run"
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
            f'CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)')
    return dict(device=name, date=datetime.datetime.now().isoformat(timespec='seconds'), command=shlex.join(sys.orig_argv),
                python=platform.python_version(), torch=torch.__version__, triton=getattr(triton, '__version__', None),
                fastai=fastai.__version__, optimi=getattr(optimi, '__version__', None), fastoptim=fastoptim.__version__,
                copy_bandwidth_gbs=bw, hyperparameters=HP, warmup=args.warmup, reps=args.reps,
                check_steps=args.check_steps, small=args.small, tolerance=TOL, seconds=seconds)


def report(args, meta, rows):
    "results.md and roofline.png under args.out, from a run's meta and rows"
    os.makedirs(args.out, exist_ok=True)
    name, bw, seconds, on_cpu = meta['device'], meta['copy_bandwidth_gbs'], meta['seconds'], meta['device'].startswith('CPU')
    roofline(rows, list(implementations(args)), args.small, os.path.join(args.out, 'roofline.png'))
    bounds = [f"| {set_title(s, args.small)} | {dt} | {a} | {BYTES[a, dt]} | "
              f"{BYTES[a, dt] * sum(map(math.prod, shrink(SETS[s](), args.small))) / (bw * 1e9) * 1e3:.3f} |"
              for s in args.sets.split(',') for dt in args.dtypes.split(',') for a in args.algos.split(',')]
    md = [f'# `opt.step()` benchmark: {name}', '',
          f"{meta['date']}; Python {meta['python']}, torch {meta['torch']}, triton {meta['triton']}, fastai {meta['fastai']}, "
          f"optimi {meta['optimi'] or 'not installed'}, fastoptim {meta['fastoptim']}.", '',
          f"Command: `{meta['command']}` ({seconds:.0f} s).", '',
          f'Copy bandwidth: {bw:.0f} GB/s (`copy_` of a {"256 MiB" if on_cpu else "1 GiB"} buffer, '
          'bytes read + written). fraction = (bytes per parameter × parameters / copy bandwidth) / step time.', '',
          f"Hyperparameters for every implementation: lr={HP['lr']}, mom (β1)={HP['mom']}, sqr_mom (β2)={HP['sqr_mom']}, "
          f"eps={HP['eps']}, wd={HP['wd']}. AdamW and LAMB decay weights decoupled (p ← p(1 − lr·wd)). SGD uses L2 weight "
          "decay (g ← g + wd·p) everywhere, because torch's SGD only has L2: fastoptim `decouple_wd=False`, fastai "
          "`decouple_wd=False`, optimi's default; momentum undampened (fastai's `grad_avg`, torch `dampening=0`).", '',
          f"Timing: median of {args.reps} steps after a first step (which creates the state) and {args.warmup} warm-up "
          "steps; CUDA events around each step, synchronised after it, so host launch time counts where the GPU "
          f"waits for it. On the CPU, perf_counter; Triton there runs in its interpreter (sets up to "
          f"{INTERPRETER_MAX_PARAMS / 1e6:g}M parameters) with {CPU_TRITON_STEPS[0]} warm-up and {CPU_TRITON_STEPS[1]} "
          "timed steps. host ms: host time per step over the same number of steps queued without waiting (a step "
          "whose host ms exceeds its GPU time is host-bound). `-graph` rows: the step captured in a CUDA graph after "
          "one real step on a side stream, then replayed (torch's AdamW with `capturable=True`). fastoptim's Triton rows "
          "without `-graph` are `opt.step()` as called, which replays the optimizer's own graph (`step_graph`); "
          "`-nograph` rows pass `step_graph=False`: every step launches its kernels from Python. "
          "extra MiB: max_memory_allocated during the timed steps "
          "minus memory_allocated before them. sync: one step under `torch.cuda.set_sync_debug_mode('error')`.", '',
          f"Correctness: the first 6 and the last 2 tensors of the set, {args.check_steps} steps with fresh random "
          "gradients copied into `p.grad` before each step (optimi's paths and L2 weight decay in fastai and optimi "
          "overwrite `p.grad`), against an fp64 reference of fastai's formulas on the same device; max rel err = worst "
          "over tensors of max|p − p_ref| / max|p_ref|; FAIL above "
          f"{TOL['fp32']:g} (fp32) or {TOL['bf16']:g} (bf16: parameters and states stored in bf16).", '',
          "Not benchmarked: LAMB in torch.optim and optimi 0.3.3 (neither has it). `-kahan` rows: bf16 with Kahan-"
          "compensated updates (4 more bytes per parameter); fastoptim's bf16 default is Kahan (`kahan_sum=None`), its "
          "other rows pass `kahan_sum=False`, optimi's pass `kahan_sum=False` except optimi-triton-kahan. "
          "optimi's foreach and Kahan paths and its L2 weight decay write into `p.grad`, so its timed steps run on "
          "overwritten gradients (timing, not values, is measured there).", '',
          '## Bytes per parameter and the bound they give at the measured copy bandwidth (Kahan: 4 more bytes)', '',
          '| set | dtype | algo | bytes/param | bound ms |', '|---|---|---|---|---|', *bounds, '',
          '## Results (x fastest: step time over the fastest implementation of the same set, dtype and algorithm)', '',
          table(rows, full=True), '', '![fraction of copy bandwidth](roofline.png)', '']
    with open(os.path.join(args.out, 'results.md'), 'w') as f: f.write('\n'.join(md))


def rerender(args):
    "results.md and roofline.png again from args.from_json (e.g. when only results.json came back from the GPU machine)"
    saved = json.load(open(args.from_json))
    meta, rows = saved['meta'], saved['rows']
    args.small, args.warmup, args.reps, args.check_steps = meta['small'], meta['warmup'], meta['reps'], meta['check_steps']
    args.sets, args.dtypes, args.algos = (','.join(dict.fromkeys(r[k] for r in rows)) for k in ('set', 'dtype', 'algo'))
    report(args, meta, rows)
    print(f'wrote {args.out}/results.md, roofline.png from {args.from_json}')


def main(args):
    if args.from_json: return rerender(args)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): sys.exit('No CUDA device: use --device cpu for a dry run.')
    warnings.filterwarnings('ignore', message='Parameter `foreach` is deprecated')  # optimi's, for foreach=True
    t0 = time.time()
    bw = copy_bandwidth(device)
    print(f'copy bandwidth {bw:.0f} GB/s', flush=True)
    rows = bench(args, device, bw)
    meta = run_meta(args, device, bw, time.time() - t0)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'results.json'), 'w') as f: json.dump(dict(meta=meta, rows=rows), f, indent=1)
    report(args, meta, rows)
    for r in rows:
        if r['ms'] is None: print(f"not timed: {r['set']} {r['dtype']} {r['algo']} {r['impl']}: {r['note']}")
    print(f"\nwrote {args.out}/results.md, results.json, roofline.png; copy bandwidth {bw:.0f} GB/s; {time.time() - t0:.0f} s\n")
    print(table(rows))


if __name__ == '__main__':
    main(ARGS)
