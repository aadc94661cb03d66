"""Tune the Triton backend's launch (elements per program, warps) per element size, and show where a step's
time goes: host time per `opt.step()` (no synchronisation), the GPU time of its kernels (torch.profiler),
and the step's median by CUDA events.

Run on the GPU machine from the repository root (wheels as in ../shared/GPU.md):
    python3 bench/tune_triton.py --out $OUT/tune.md
"""
import argparse, datetime, math, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
import triton
from fastoptim.all import SGD, Adam, Lamb
from fastoptim.core import backends
from shapes import llm_shapes, resnet50_shapes
from graphed import Graphed
from timing import copy_bandwidth, median_ms, write_report

dev = torch.device('cuda')
BYTES = {('adamw', torch.float32, False): 28, ('adamw', torch.bfloat16, False): 14, ('adamw', torch.bfloat16, True): 18,
         ('sgd', torch.float32, False): 20}
OPTS = {'adamw': lambda ps, kahan: Adam(ps, lr=1e-3, wd=1e-2, triton=True, kahan_sum=kahan),
        'sgd': lambda ps, kahan: SGD(ps, lr=1e-3, mom=0.9, wd=1e-2, decouple_wd=False, triton=True, kahan_sum=kahan)}


def make_params(shapes, dtype):
    g = torch.Generator(device=dev).manual_seed(0)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g, device=dev).mul_(0.02).to(dtype))
        p.grad = torch.randn(s, generator=g, device=dev).to(dtype)
        ps.append(p)
    return ps


def event_ms(opt, reps=40):
    "Median step ms by CUDA events after 5 warm-up steps"
    return median_ms(opt.step, reps, dev, warmup=5)


def host_ms(opt, reps=200):
    "Median host time of a step that does not wait for the GPU (the queue is drained every 20 steps)"
    ts = []
    for i in range(reps):
        t0 = time.perf_counter(); opt.step(); ts.append((time.perf_counter() - t0) * 1e3)
        if i % 20 == 19: torch.cuda.synchronize()
    return float(np.median(ts))


def kernels_ms(opt, reps=20):
    "GPU time per step of each CUDA kernel or copy of the step, by name, from torch.profiler"
    from torch.profiler import profile, ProfilerActivity
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps): opt.step()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / 1e3 / reps for e in prof.key_averages() if e.device_time_total > 0 and e.key}


def kernel_ms(opt, reps=20):
    "GPU time of the step's CUDA kernels and copies per step, from torch.profiler"
    return sum(kernels_ms(opt, reps).values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    bw = copy_bandwidth(dev)
    triton_backend = backends['triton']
    default_launch = triton_backend.launch  # a method: (BLOCK, warps) from the plan and the element size
    lines = [f'# Triton launch tuning: {torch.cuda.get_device_name()}', '',
             f'{datetime.date.today()}; torch {torch.__version__}, triton {triton.__version__}; copy bandwidth {bw:.0f} GB/s; '
             'command: `python3 bench/tune_triton.py --out $OUT/tune.md`', '',
             '## Step by (elements per program, warps): median ms by CUDA events (fraction of copy bandwidth)', '']
    cases = [('LLM-like', llm_shapes(), 'adamw', torch.float32, False), ('LLM-like', llm_shapes(), 'adamw', torch.bfloat16, True),
             ('LLM-like', llm_shapes(), 'adamw', torch.bfloat16, False), ('LLM-like', llm_shapes(), 'sgd', torch.float32, False),
             ('ResNet-50-like', resnet50_shapes(), 'adamw', torch.float32, False),
             ('ResNet-50-like', resnet50_shapes(), 'adamw', torch.bfloat16, True),
             ('ResNet-50-like', resnet50_shapes(), 'sgd', torch.float32, False)]
    configs = [(256, 1), (256, 2), (512, 2), (512, 4), (512, 8), (1024, 4), (1024, 8), (2048, 8)]

    def sweep(graph):
        "One table row per case, one cell per launch configuration"
        out = ['| set | algo | dtype | ' + ' | '.join(f'{b}/{w}' for b, w in configs) + ' |', '|---|---|---|' + '---|' * len(configs)]
        for name, shapes, algo, dtype, kahan in cases:
            n = sum(math.prod(s) for s in shapes)
            bound = BYTES[(algo, dtype, kahan)] * n / (bw * 1e9) * 1e3
            ps = make_params(shapes, dtype)
            cells = []
            for block, warps in configs:
                triton_backend.launch = lambda plan, size, launch=(block, warps): launch
                opt = OPTS[algo](ps, kahan)
                ms = event_ms(Graphed(opt) if graph else opt)
                cells.append(f'{ms:.3f} ({bound / ms:.2f})')
                del opt
            triton_backend.launch = default_launch
            out.append(f"| {name} | {algo} | {str(dtype).replace('torch.', '')}{' Kahan' if kahan else ''} | " + ' | '.join(cells) + ' |')
            print(out[-1], flush=True)
            del ps
            torch.cuda.empty_cache()
        return out

    lines += sweep(graph=False)
    lines += ['', '## The same, the step captured in a CUDA graph and replayed (no host time): median ms (fraction)', '']
    lines += sweep(graph=True)
    lines += ['', '## Where the time of a ResNet-50-like step goes (default launch)', '',
              '| dtype | step, CUDA events (ms) | host time per step, no sync (ms) | GPU kernel time per step (ms) | bound (ms) |',
              '|---|---|---|---|---|']
    for dtype, kahan in ((torch.float32, False), (torch.bfloat16, True)):
        shapes = resnet50_shapes()
        bound = BYTES[('adamw', dtype, kahan)] * sum(math.prod(s) for s in shapes) / (bw * 1e9) * 1e3
        opt = Adam(make_params(shapes, dtype), lr=1e-3, wd=1e-2, triton=True, kahan_sum=kahan)
        lines.append(f'| {str(dtype).replace("torch.", "")}{" Kahan" if kahan else ""} | {event_ms(opt):.3f} | '
                     f'{host_ms(opt):.3f} | {kernel_ms(opt):.3f} | {bound:.3f} |')
        print(lines[-1], flush=True)
    lines += ['', '## LAMB (default launch): GPU time of each kernel per step, torch.profiler (ms)', '',
              'Bytes each kernel must move per parameter (fp32): the sums pass reads p, g, m, v and writes m, v (24); '
              'the update pass reads p, m, v and writes p (16): 40 in all, against 28 for one pass.', '',
              '| set | dtype | kernel | ms | bound at its own bytes (ms) | fraction |', '|---|---|---|---|---|---|']
    for dtype, kahan in ((torch.float32, False), (torch.bfloat16, True)):
        shapes = llm_shapes()
        n = sum(math.prod(s) for s in shapes)
        size = 4 if dtype == torch.float32 else 2
        own = {'phase0': 6 * size, 'phase1': 4 * size + (4 if kahan else 0)}  # the generated kernels: lamb_step<n>_phase<i>
        opt = Lamb(make_params(shapes, dtype), lr=1e-3, wd=1e-2, triton=True, kahan_sum=kahan)
        for _ in range(3): opt.step()
        for name, ms in kernels_ms(opt).items():
            b = next((v for k, v in own.items() if k in name), None)
            bound = b * n / (bw * 1e9) * 1e3 if b else None
            lines.append(f'| LLM-like | {str(dtype).replace("torch.", "")}{" Kahan" if kahan else ""} | {name[:60]} | {ms:.3f} | '
                         f'{"-" if bound is None else f"{bound:.3f}"} | {"-" if bound is None else f"{bound / ms:.2f}"} |')
        del opt
        torch.cuda.empty_cache()
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__':
    main()
