"""Compressed optimizer state (issue 17): AdamW on bf16 weights with Kahan summation, with compressed master weights
(int16 and int8 residuals), with 8-bit moments, beside FlashOptim's FlashAdamW and torch's fused AdamW, on the LLM-like and the
ResNet-50-like parameter sets. Per implementation: the step (eager, and replayed in a CUDA graph where it can be
captured) as a fraction of its own byte bound at the copy bandwidth measured in the same run, the optimizer state's
bytes per parameter (`torch.cuda.memory_allocated` after the first step, less before the optimizer was made), and the
error of the weights each holds after 5 steps against an fp64 AdamW from the same start on the same gradients.
And the 8-bit moments of the Triton step against the foreach step's, code by code.

On the GPU machine, from the repository root (wheels from ../shared/gpu/wheels.sh flashoptim==0.1.4, in .whl/):
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl && \
    export PYTHONPATH=$PWD/.site:$PWD; python3 bench/compressed_bench.py --out $OUT
CPU dry run (no FlashOptim, no graphs): python bench/compressed_bench.py --device cpu --small --reps 2 --out /tmp/cb
"""
import argparse, gc, json, os, sys

ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
ap.add_argument('--sets', default='llm,resnet')
ap.add_argument('--warmup', type=int, default=10)
ap.add_argument('--reps', type=int, default=50)
ap.add_argument('--small', action='store_true', help='every dimension divided by 16: for dry runs')
ap.add_argument('--device', default='cuda')
ap.add_argument('--out', default=os.environ.get('OUT', 'compressed_bench_results'))
ARGS = ap.parse_args()
if ARGS.device == 'cpu': os.environ['TRITON_INTERPRET'] = '1'

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import numpy as np
import torch
import fastoptim.all
from fastoptim.all import Adam, master_weights
from shapes import llm_shapes, resnet50_shapes
from graphed import Graphed
from timing import copy_bandwidth, median_ms
try: import flashoptim
except ImportError: flashoptim = None

LR, WD, BETAS, EPS = 1e-3, 0.01, (0.9, 0.99), 1e-5
# bytes one step must move per parameter: bf16 p read and written (4), bf16 g read (2), bf16 m and v read and written
# (8), and what the rounding keeps, read and written: a bf16 compensation or int16 residual (4), an int8 residual (2);
# 8-bit moments: a byte each way for each, and a 2-byte scale per 32 elements each way
EIGHT_BIT_MOMENTS = 2 * (2 + 2 * 2 / 32)
BYTES = {'kahan': 18, 'master32': 18, 'master24': 16, 'master24, 8-bit moments': 4 + 2 + 2 + EIGHT_BIT_MOMENTS,
         'kahan, 8-bit moments': 4 + 4 + 2 + EIGHT_BIT_MOMENTS, 'flash 24-bit, 8-bit moments': 4 + 2 + 2 + EIGHT_BIT_MOMENTS,
         'flash 24-bit, bf16 moments': 16, 'torch fused (no compensation)': 14}


def implementations(device):
    "name -> (make(params), capturable)"
    fast = dict(lr=LR, wd=WD, mom=BETAS[0], sqr_mom=BETAS[1], eps=EPS)
    out = {'kahan': (lambda ps: Adam(ps, triton=True, **fast), True),
           'master32': (lambda ps: Adam(ps, triton=True, master_weight_bits=32, **fast), True),
           'master24': (lambda ps: Adam(ps, triton=True, master_weight_bits=24, **fast), True),
           'master24, 8-bit moments': (lambda ps: Adam(ps, triton=True, master_weight_bits=24, state_bits=8, **fast), True),
           'kahan, 8-bit moments': (lambda ps: Adam(ps, triton=True, state_bits=8, **fast), True),
           'master24 foreach': (lambda ps: Adam(ps, foreach=True, master_weight_bits=24, **fast), False),
           'master24, 8-bit moments foreach': (lambda ps: Adam(ps, foreach=True, master_weight_bits=24, state_bits=8, **fast), False)}
    if device.type == 'cuda':
        out['torch fused (no compensation)'] = (lambda ps: torch.optim.AdamW(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, fused=True), False)
        if flashoptim is not None:
            for name, quantize in (('flash 24-bit, 8-bit moments', True), ('flash 24-bit, bf16 moments', False)):
                out[name] = (lambda ps, q=quantize: flashoptim.FlashAdamW(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                                                                           master_weight_bits=24, quantize=q), False)
    return out


def held_weights(name, opt, params):
    "The fp32 weights the optimizer holds"
    if not name.startswith('flash'):
        return [w for w in master_weights(opt).values()] if hasattr(opt, 'param_lists') else [p.float() for p in params]
    out = []
    for p in params:
        bits = opt.state[p].get('error_bits')
        out.append(flashoptim.reconstruct_fp32_param(p.detach(), bits) if bits is not None else p.float())
    return out


def fp64_adamw(p0, grads):
    ps = [p.double() for p in p0]
    ms, vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
    for t, gs in enumerate(grads, 1):
        for p, g, m, v in zip(ps, gs, ms, vs):
            g = g.double()
            p.mul_(1 - LR * WD)
            m.lerp_(g, 1 - BETAS[0]); v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            p.addcdiv_(m, (v / (1 - BETAS[1] ** t)).sqrt() + EPS, value=-LR / (1 - BETAS[0] ** t))
    return ps


def params_like(shapes, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return [(torch.randn(s, generator=g, device=device) * 0.02).bfloat16().requires_grad_() for s in shapes]


def run_set(set_name, shapes, device, bw):
    rows, n = [], sum(int(np.prod(s)) for s in shapes)
    g = torch.Generator(device=device).manual_seed(1)
    grads = [[torch.randn(s, generator=g, device=device).bfloat16() for s in shapes] for _ in range(5)]
    p0 = [p.detach().clone() for p in params_like(shapes, device, 0)]
    expected = fp64_adamw(p0, grads)
    moved = max((e - p.double()).abs().max().item() for e, p in zip(expected, p0))
    for name, (make, capturable) in implementations(device).items():
        params = [p.detach().clone().requires_grad_() for p in p0]
        for p, gr in zip(params, grads[0]): p.grad = gr.clone()
        gc.collect()
        if device.type == 'cuda': torch.cuda.synchronize(); before = torch.cuda.memory_allocated()
        opt = make(params)
        opt.step()
        if device.type == 'cuda': torch.cuda.synchronize(); state_bytes = (torch.cuda.memory_allocated() - before) / n
        else: state_bytes = float('nan')
        for gs in grads[1:]:
            for p, gr in zip(params, gs): p.grad.copy_(gr)
            opt.step()
        held = held_weights(name, opt, params)
        error = max((h.double() - e).abs().max().item() for h, e in zip(held, expected)) / moved
        eager = median_ms(opt.step, ARGS.reps, device, warmup=ARGS.warmup)
        replayed = None
        if capturable and device.type == 'cuda':
            graph = Graphed(opt)
            replayed = median_ms(graph.step, ARGS.reps, device, warmup=ARGS.warmup)
        bound_ms = BYTES[name.split(' foreach')[0]] * n / (bw * 1e9) * 1e3
        rows.append(dict(set=set_name, impl=name, params=n, state_bytes_per_param=state_bytes, eager_ms=eager,
                         replayed_ms=replayed, bytes_per_param=BYTES[name.split(' foreach')[0]],
                         eager_fraction=bound_ms / eager, replayed_fraction=bound_ms / replayed if replayed else None,
                         error_vs_fp64=error))
        print(rows[-1], flush=True)
        del opt, params, held
    return rows


def code_parity(shapes, device, steps=5):
    "The 8-bit moments the Triton step writes against the foreach step's (torch ops, `fastoptim.core.quantize_into`) from the same weights and gradients, after each step: the fraction of codes that differ, the largest difference in codes, and the fraction of scales that differ"
    g = torch.Generator(device=device).manual_seed(2)
    grads = [[torch.randn(s, generator=g, device=device).bfloat16() for s in shapes] for _ in range(steps)]
    p0 = params_like(shapes, device, 3)
    opts, params = {}, {}
    for backend in ('triton', 'foreach'):
        params[backend] = [p.detach().clone().requires_grad_() for p in p0]
        opts[backend] = Adam(params[backend], lr=LR, wd=WD, mom=BETAS[0], sqr_mom=BETAS[1], eps=EPS, master_weight_bits=24,
                             state_bits=8, **{backend: True})
    rows = []
    for step, gs in enumerate(grads, 1):
        for backend, opt in opts.items():
            for p, gr in zip(params[backend], gs): p.grad = gr.clone()
            opt.step()
        for name in ('grad_avg', 'sqr_avg'):
            pairs = [(opts['triton'].state[a][name], opts['foreach'].state[b][name]) for a, b in zip(params['triton'], params['foreach'])]
            scale_pairs = [(opts['triton'].state[a][f'{name}_scales'], opts['foreach'].state[b][f'{name}_scales'])
                           for a, b in zip(params['triton'], params['foreach'])]
            n = sum(x.numel() for x, _ in pairs)
            differ = sum(int((x != y).sum()) for x, y in pairs)
            largest = max(int((x.int() - y.int()).abs().max()) for x, y in pairs)
            scales = sum(int((x != y).sum()) for x, y in scale_pairs) / sum(x.numel() for x, _ in scale_pairs)
            rows.append(dict(step=step, state=name, codes_differing=differ / n, largest_code_difference=largest, scales_differing=scales))
            print(rows[-1], flush=True)
    return rows


def main():
    device = torch.device(ARGS.device)
    os.makedirs(ARGS.out, exist_ok=True)
    bw = copy_bandwidth(device) if device.type == 'cuda' else 10.
    rows = []
    for s in ARGS.sets.split(','):
        shapes = llm_shapes() if s == 'llm' else resnet50_shapes()
        if ARGS.small: shapes = [tuple(max(1, d // 16) for d in sh) for sh in shapes]
        rows += run_set(s, shapes, device, bw)
    parity = code_parity(shapes, device)  # the last set's shapes
    meta = dict(device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu', torch=torch.__version__,
                copy_bandwidth_GBps=bw, flashoptim=getattr(flashoptim, '__version__', None), argv=sys.argv)
    json.dump(dict(meta=meta, rows=rows, parity=parity), open(os.path.join(ARGS.out, 'results.json'), 'w'), indent=1)
    lines = [f"# Compressed state: AdamW on bf16 weights\n\n{meta['device']}, torch {meta['torch']}, copy bandwidth "
             f"{bw:.0f} GB/s. Fraction: the implementation's own byte bound at that bandwidth over its step time. Error: "
             "max |held − fp64| over the fp64 run's largest move, after 5 steps.\n",
             '| set | implementation | state B/param | eager ms | fraction | replayed ms | fraction | bytes/param moved | error vs fp64 |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        rep = f"{r['replayed_ms']:.3f} | {r['replayed_fraction']:.2f}" if r['replayed_ms'] else '– | –'
        lines.append(f"| {r['set']} | {r['impl']} | {r['state_bytes_per_param']:.2f} | {r['eager_ms']:.3f} | {r['eager_fraction']:.2f} | "
                     f"{rep} | {r['bytes_per_param']:.2f} | {r['error_vs_fp64']:.2e} |")
    lines += ['', f"8-bit moments, the Triton step against the foreach step (the formulas of `fastoptim.core.quantize_into` in torch "
              f"ops) from the same weights and gradients ({ARGS.sets.split(',')[-1]} set), after each step:", '',
              '| step | state | codes differing | largest difference (codes) | scales differing |', '|---|---|---|---|---|']
    lines += [f"| {r['step']} | {r['state']} | {r['codes_differing']:.2e} | {r['largest_code_difference']} | {r['scales_differing']:.2e} |" for r in parity]
    open(os.path.join(ARGS.out, 'results.md'), 'w').write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__': main()
