"""The foreach backend on 16-bit weights stages each tensor it passes to a phase through an fp32 copy, and writes
back what changed. This times `opt.step()` on the CPU for plans of one and two phases (Adam; LAMB and Muon's
elementwise passes, whose phases each read only part of the plan's tensors), bf16 weights with Kahan summation.

    python bench/foreach_staging_cpu.py --out bench/results/foreach_staging_cpu_<date>.md
"""
import argparse, os, sys, time, platform, datetime
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
import fastoptim.all
from fastoptim.all import Adam, Lamb, Muon
from timing import median_ms, write_report

def params(n=16, shape=(512, 512)):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(shape, generator=g).bfloat16().requires_grad_() for _ in range(n)]
    for p in ps: p.grad = torch.randn(shape, generator=g).bfloat16()
    return ps

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=None)
    ap.add_argument('--reps', type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from fastoptim.muon import newton_schulz_fp32
    object.__setattr__(newton_schulz_fp32, 'apply', lambda stack, **kw: stack)  # Muon's elementwise passes alone
    from fastoptim.foreach import foreach_functions
    rows = []
    for name, make in (('Adam (one pass)', lambda ps: Adam(ps, lr=1e-3, foreach=True)),
                       ('Lamb (two passes)', lambda ps: Lamb(ps, lr=1e-3, foreach=True)),
                       ('Muon, iteration skipped (two passes)', lambda ps: Muon(ps, lr=1e-3, ns_dtype='fp32', foreach=True))):
        ps = params()
        opt = make(ps)
        opt.step()
        fns = [fn for a in set(opt.algorithms) for fn in foreach_functions(a.plan())]
        policies = {'what each phase uses': [(fn.touches, fn.writes) for fn in fns]}
        policies['every tensor (before)'] = [({*a.plan().tensors, 'kahan_comp'}, {*a.plan().tensors, 'kahan_comp'} - {'g'})
                                             for a in set(opt.algorithms) for _ in foreach_functions(a.plan())]
        times = {k: [] for k in policies}
        for _ in range(args.reps):  # interleaved, so that the machine's drift hits both alike
            for k, sets in policies.items():
                for fn, (touches, writes) in zip(fns, sets): fn.touches, fn.writes = touches, writes
                t0 = time.perf_counter(); opt.step(); times[k].append((time.perf_counter() - t0) * 1e3)
        for fn, (touches, writes) in zip(fns, policies['what each phase uses']): fn.touches, fn.writes = touches, writes
        rows.append((name, *[float(np.median(times[k])) for k in policies]))
    lines = [f"# foreach steps on bf16 weights, CPU", f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, 2 threads; 16 tensors of 512×512; median of {args.reps} interleaved steps; "
             "command: python bench/foreach_staging_cpu.py", '',
             '| optimizer | ms, staging what each phase uses | ms, staging every tensor (before) |', '|---|---|---|']
    lines += [f'| {n} | {a:.1f} | {b:.1f} |' for n, a, b in rows]
    write_report('\n'.join(lines), args.out)

if __name__ == '__main__':
    main()
