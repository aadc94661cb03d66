"""GPU check for the foundation: every backend on CUDA against the fp32 reference and fastai, no host sync
inside `opt.step()`, and a first timing of AdamW on the LLM-like and ResNet-50-like parameter sets.

Run on the GPU machine from the repository root (see ../shared/GPU.md for the wheels):
    python3 bench/gpu_check.py --out results/gpu_check.md
"""
import argparse, datetime, math, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET to run the kernels on the GPU'

import numpy as np
import torch
import triton
import fastai
from fastai.optimizer import SGD as FastaiSGD, Adam as FastaiAdam, Lamb as FastaiLamb, RAdam as FastaiRAdam
from fastoptim.all import SGD, Adam, Lamb, RAdam
from fastoptim.testing import drive, rel_diff
from shapes import llm_shapes, resnet50_shapes
from timing import copy_bandwidth, median_ms, write_report

dev = torch.device('cuda')
BACKENDS = ('forloop', 'foreach', 'jit', 'triton')
ALGOS = {
    'SGD-momentum': (lambda g, **kw: SGD(g, lr=1e-2, mom=0.9, wd=0.1, **kw), lambda g: FastaiSGD(g, lr=1e-2, mom=0.9, wd=0.1)),
    'AdamW': (lambda g, **kw: Adam(g, lr=1e-2, wd=0.1, **kw), lambda g: FastaiAdam(g, lr=1e-2, wd=0.1)),
    'LAMB': (lambda g, **kw: Lamb(g, lr=1e-2, wd=0.1, **kw), lambda g: FastaiLamb(g, lr=1e-2, wd=0.1)),
    'RAdam': (lambda g, **kw: RAdam(g, lr=1e-2, wd=0.1, **kw), lambda g: FastaiRAdam(g, lr=1e-2, wd=0.1)),
}


ROUNDINGS = {'bf16 Kahan': {}, 'bf16 stochastic': dict(stochastic_rounding=True, seed=5), 'bf16 nearest': dict(kahan_sum=False)}


def correctness():
    "rel_diff of each backend to fastai (fp32), and to the reference in bf16 for each rounding, all on the GPU"
    rows = []
    for name, (ours, fastai_opt) in ALGOS.items():
        _, expected = drive(fastai_opt, device=dev)
        refs = {r: drive(lambda g: ours(g, forloop=True, **kw), device=dev, dtype=torch.bfloat16)[1] for r, kw in ROUNDINGS.items()}
        for b in BACKENDS:
            _, a32 = drive(lambda g: ours(g, **{b: True}), device=dev)
            diffs = [rel_diff(drive(lambda g: ours(g, **{b: True}, **kw), device=dev, dtype=torch.bfloat16)[1], refs[r])
                     for r, kw in ROUNDINGS.items()]
            rows.append((name, b, rel_diff(a32, expected), *diffs))
    return rows


def accumulation():
    "Optimizer accumulation, 4 micro-batches per step for 5 steps, each backend against forloop on the GPU, fp32 and bf16; last column: Triton with every other micro-batch's gradients one element into a buffer (off the 16-byte alignment the fold's kept tables promise, so they are rebuilt, then pointed back)"
    from fastoptim.testing import param_groups
    def run(make, dtype, misaligned=False):
        groups = param_groups(0, dtype, dev)
        params, opt, gen = [p for grp in groups for p in grp], make(groups), torch.Generator().manual_seed(1)
        for i in range(20):
            for p in params:
                g = torch.randn(p.shape, generator=gen).to(dev, dtype)
                p.grad = torch.cat([g.new_zeros(1), g.flatten()])[1:].view_as(g) if misaligned and i % 2 else g
            opt.accumulate(0.25, i % 4 == 3)
            opt.step()
        return [p.detach().clone() for p in params]
    rows = []
    for name, (ours, _) in ALGOS.items():
        for dtype in (torch.float32, torch.bfloat16):
            ref = run(lambda g: ours(g, forloop=True), dtype)
            rows.append((name, str(dtype).replace('torch.', ''),
                         *[rel_diff(run(lambda g: ours(g, **{b: True}), dtype), ref) for b in BACKENDS[1:]],
                         rel_diff(run(lambda g: ours(g, triton=True), dtype, misaligned=True), ref)))
    return rows


def stochastic_bits():
    "Fraction of elements where the Triton kernel's stochastic rounding on the GPU differs from the torch reference"
    from fastoptim.core import Bucket, update_param, as_math, hash32
    from fastoptim.core import backends as registry
    from fastoptim.sgd import sgd_algorithm
    g = torch.Generator(device=dev).manual_seed(0)
    p = torch.randn(1 << 20, generator=g, device=dev).bfloat16()
    grad = torch.randn(1 << 20, generator=g, device=dev).bfloat16()
    expected = p.clone()
    seed_base, step = np.array([987654321]), np.array([1])
    update_param(expected, as_math(expected), as_math(grad), -1e-3, 0., None, None, int(hash32(seed_base ^ step)[0]))
    b = Bucket(dev, torch.bfloat16)
    b.params, b.grads, b.states, b.groups = [p], [grad], [{}], [0]
    b.rounding, b.seed_bases, b.step_counts = 'stochastic', seed_base, step - 1
    registry['triton'].step(sgd_algorithm.plan(), b, dict(lr=np.array([1e-3]), decay=np.array([0.]), l2=np.array([0.]),
                                                          step=step.astype(float)), {})
    return (p != expected).float().mean().item()


def make_params(shapes, dtype, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g, device=dev, dtype=torch.float32).mul_(0.02).to(dtype))
        p.grad = torch.randn(s, generator=g, device=dev, dtype=torch.float32).to(dtype)
        ps.append(p)
    return ps


def no_sync():
    "Does opt.step() run with torch.cuda.set_sync_debug_mode('error')? (after a first step that creates state)"
    res = {}
    for name, (ours, _) in ALGOS.items():
        for b in BACKENDS:
            opt = ours(make_params(resnet50_shapes()[:20], torch.float32), **{b: True})
            opt.step(); torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode('error')
            try: opt.step(); res[(name, b)] = 'ok'
            except RuntimeError as e: res[(name, b)] = f'SYNC: {str(e).splitlines()[0][:80]}'
            finally: torch.cuda.set_sync_debug_mode('default')
    return res


def timings(bw):
    impls = {f'fastoptim {b}': (lambda ps, b=b: Adam(ps, lr=1e-3, wd=1e-2, **{b: True})) for b in ('foreach', 'jit', 'triton')}
    thp = dict(lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.99), eps=1e-5)
    impls['fastai native'] = lambda ps: FastaiAdam(ps, lr=1e-3, wd=1e-2)
    impls['torch foreach'] = lambda ps: torch.optim.AdamW(ps, foreach=True, **thp)
    impls['torch fused'] = lambda ps: torch.optim.AdamW(ps, fused=True, **thp)
    rows = []
    for set_name, shapes in (('LLM-like', llm_shapes()), ('ResNet-50-like', resnet50_shapes())):
        n = sum(math.prod(s) for s in shapes)
        limit = 28 * n / (bw * 1e9) * 1e3
        for name, make in impls.items():
            if set_name == 'LLM-like' and name == 'fastai native': continue
            ps = make_params(shapes, torch.float32)
            opt = make(ps)
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            opt.step(); torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            ms = median_ms(opt.step, 30, dev, warmup=5)
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append((set_name, name, ms, limit / ms, extra))
            del opt, ps
            torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    lines = [f'# GPU check: {torch.cuda.get_device_name()}', '',
             f'{datetime.date.today()}; torch {torch.__version__}, triton {triton.__version__}, fastai {fastai.__version__}; '
             f'command: `python3 bench/gpu_check.py`', '']
    t0 = time.time()
    rows = correctness()
    lines += ['## Correctness on the GPU (the `drive` protocol of nbs/04_testing, 60 steps)', '',
              '| algorithm | backend | fp32: rel. diff to fastai | ' + ' | '.join(f'{r}: rel. diff to forloop' for r in ROUNDINGS) + ' |',
              '|---|---|---|' + '---|' * len(ROUNDINGS)]
    lines += [f'| {a} | {b} | ' + ' | '.join(f'{x:.2e}' for x in xs) + ' |' for a, b, *xs in rows]
    lines += ['', f'Triton stochastic rounding on the GPU vs the torch reference, 2^20 bf16 elements: '
              f'{stochastic_bits():.2e} of elements differ.']
    lines += ['', '## Optimizer accumulation on the GPU (4 micro-batches per step, 5 steps): rel. diff to forloop', '',
              '| algorithm | dtype | ' + ' | '.join(BACKENDS[1:]) + ' | triton, misaligned gradients |', '|---|---|' + '---|' * len(BACKENDS)]
    lines += [f'| {a} | {d} | ' + ' | '.join(f'{x:.2e}' for x in xs) + ' |' for a, d, *xs in accumulation()]
    sync = no_sync()
    lines += ['', '## `opt.step()` under `torch.cuda.set_sync_debug_mode("error")`', '',
              '| algorithm | ' + ' | '.join(BACKENDS) + ' |', '|---|' + '---|' * len(BACKENDS)]
    lines += [f'| {a} | ' + ' | '.join(sync[(a, b)] for b in BACKENDS) + ' |' for a in ALGOS]
    bw = copy_bandwidth(dev)
    trows = timings(bw)
    lines += ['', f'## AdamW fp32 `opt.step()`: median of 30 (CUDA events); copy bandwidth {bw:.0f} GB/s (read+write), '
              '28 bytes per parameter', '', '| set | implementation | ms | fraction of copy bandwidth | extra memory during step (MiB) |',
              '|---|---|---|---|---|']
    lines += [f'| {s} | {n} | {ms:.3f} | {f:.2f} | {x:.0f} |' for s, n, ms, f, x in trows]
    lines += ['', f'total time {time.time() - t0:.0f} s']
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__':
    main()
