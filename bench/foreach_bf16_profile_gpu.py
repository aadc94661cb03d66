"""Where the time of a bf16 foreach AdamW step goes: fastoptim's foreach backend (Kahan and rounded to nearest, each with
a chunk's pieces passed as runs and as pieces, and with each piece of a state staged by its own copy rather than a stretch of them at once) against torch's foreach AdamW on bf16 weights, on the ResNet-50-like and
LLM-like sets. First, that runs and pieces give the same bits (Kahan, stochastic, nearest, 24-bit master weights; three
groups with their own learning rates, so that chunks hold several runs). For each: the step's median time,
synchronised after it; its host time (the call alone, the GPU idle before it); and from torch.profiler the kernels
a step launches and their total GPU time. Then the same foreach operation, an in-place add, over a chunk's pieces
(the flat buffer cut at the tensors' bounds, as the backend stages a 16-bit chunk) and over the flat buffer as one
tensor.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/foreach_bf16_profile_gpu.py --out $OUT/foreach_bf16_profile.md
"""
import argparse, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import numpy as np
import torch
from torch.profiler import profile, ProfilerActivity
from fastoptim.all import Adam
import fastoptim.foreach as foreach
from fastoptim.foreach import ForeachBackend
from muon_gpu import replaced, Within
from shapes import llm_shapes, resnet50_shapes
from timing import idle_ms, median_ms

dev = torch.device('cuda')
HP = dict(lr=1e-3, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=1e-2)


def adam(ps, **kw):
    return Adam(ps, HP['lr'], mom=HP['mom'], sqr_mom=HP['sqr_mom'], eps=HP['eps'], wd=HP['wd'], foreach=True, **kw)


def pieces(opt):
    "`opt` stepped with the foreach backend's runs turned off: each piece its own tensor, as before runs"
    return Within(opt, lambda: replaced(ForeachBackend, 'runs', lambda self, *args: None))


def unjoined(opt):
    "`opt` stepped with the joined stretches turned off: each piece of a state staged and written back by its own copy, as before the states lay end to end"
    return Within(opt, lambda: replaced(foreach, 'joined', lambda pieces: None))


IMPLS = {
    'fastoptim foreach, Kahan': lambda ps: adam(ps, kahan_sum=True),
    'fastoptim foreach, nearest': lambda ps: adam(ps, kahan_sum=False),
    'fastoptim foreach, Kahan, pieces': lambda ps: pieces(adam(ps, kahan_sum=True)),
    'fastoptim foreach, nearest, pieces': lambda ps: pieces(adam(ps, kahan_sum=False)),
    'fastoptim foreach, Kahan, unjoined': lambda ps: unjoined(adam(ps, kahan_sum=True)),
    'torch foreach AdamW': lambda ps: torch.optim.AdamW(ps, lr=HP['lr'], betas=(HP['mom'], HP['sqr_mom']), eps=HP['eps'], weight_decay=HP['wd'], foreach=True)}


def same_bits(shapes):
    "Whether three steps with runs and with pieces give the same weights and states, for each rounding"
    out = []
    for label, kw in (('Kahan', dict(kahan_sum=True)), ('stochastic', dict(stochastic_rounding=True, seed=3)),
                      ('nearest', dict(kahan_sum=False)), ('master 24', dict(master_weight_bits=24))):
        results = []
        for wrap in (lambda o: o, pieces):
            ps = params(shapes)
            third = len(ps) // 3
            opt = Adam([ps[:third], ps[third:2 * third], ps[2 * third:]], HP['lr'], wd=HP['wd'], foreach=True, **kw)
            opt.set_hyper('lr', [1e-3, 2e-3, 1e-3])
            stepper, g = wrap(opt), torch.Generator(device=dev).manual_seed(1)
            for _ in range(3):
                for p in ps: p.grad = torch.randn(p.shape, device=dev, generator=g).bfloat16()
                stepper.step()
            results.append([p.detach() for p in ps] + [v for p in ps for v in opt.state[p].values() if isinstance(v, torch.Tensor)])
        out.append((label, all(torch.equal(a, b) for a, b in zip(*results))))
    return out


def params(shapes):
    g = torch.Generator(device=dev).manual_seed(0)
    ps = [torch.randn(s, device=dev, generator=g).mul_(0.02).bfloat16().requires_grad_() for s in shapes]
    for p in ps: p.grad = torch.randn(p.shape, device=dev, generator=g).bfloat16()
    return ps


def kernels(fn, steps=3):
    "Kernels a call launches and their GPU ms, per call"
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps): fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == 'CUDA']
    return sum(e.count for e in events) / steps, sum(e.device_time_total for e in events) / steps / 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='foreach_bf16_profile.md')
    ap.add_argument('--reps', type=int, default=20)
    ap.add_argument('--rounds', type=int, default=9)
    args = ap.parse_args()
    sets = (('ResNet-50-like', resnet50_shapes()), ('LLM-like', llm_shapes()))
    lines = [f'# bf16 foreach AdamW, where the time goes: {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}; `python3 bench/foreach_bf16_profile_gpu.py`.', '']
    for set_name, shapes in sets:
        checks = same_bits(shapes)
        lines.append(f'- {set_name}, runs and pieces give the same bits after three steps: ' + ', '.join(f'{k} {"yes" if ok else "NO"}' for k, ok in checks))
        print(lines[-1], flush=True)
    lines += ['', f'Step: median of {args.reps} synchronised steps; host: the call alone, the GPU idle before it (median of 10); '
              'kernels: torch.profiler, per step. "pieces": the same optimizer with runs turned off; "unjoined": with each piece of a state staged and written back by its own copy.', '',
              '| set | optimizer | step ms | host ms | kernels | kernel ms |', '|---|---|---|---|---|---|']
    for set_name, shapes in sets:
        for name, make in IMPLS.items():
            ps = params(shapes)
            opt = make(ps)
            for _ in range(3): opt.step()
            step = median_ms(opt.step, args.reps, dev, warmup=2)
            host = idle_ms(opt.step)
            count, kernel_ms = kernels(opt.step)
            lines.append(f'| {set_name} | {name} | {step:.3f} | {host:.3f} | {count:.0f} | {kernel_ms:.3f} |')
            print(lines[-1], flush=True)
            del opt, ps
            torch.cuda.empty_cache()
    # the ResNet-50-like set is host-bound, and the host's speed drifts within a run: rounds in rotated order
    names = ['fastoptim foreach, Kahan', 'fastoptim foreach, nearest', 'torch foreach AdamW']
    opts = {n: IMPLS[n](params(resnet50_shapes())) for n in names}
    for opt in opts.values():
        for _ in range(3): opt.step()
    times = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]: times[n].append(median_ms(opts[n].step, args.reps, dev, warmup=2))
    torch_ms = np.array(times['torch foreach AdamW'])
    lines += ['', f'ResNet-50-like, {args.rounds} rounds in rotated order, each the median of {args.reps} synchronised steps:', '',
              '| optimizer | median ms | min–max ms | × torch foreach, median of rounds (min–max) |', '|---|---|---|---|']
    for n in names:
        t, ratio = np.array(times[n]), np.array(times[n]) / torch_ms
        lines.append(f'| {n} | {np.median(t):.3f} | {t.min():.3f}–{t.max():.3f} | {np.median(ratio):.2f} ({ratio.min():.2f}–{ratio.max():.2f}) |')
        print(lines[-1], flush=True)
    del opts
    torch.cuda.empty_cache()
    # one foreach add over a chunk's pieces against the same over the flat buffer
    sizes = [int(np.prod(s)) for s in resnet50_shapes()]
    half = len(sizes) // 2
    lines += ['', '| in-place foreach add, fp32 | pieces | elements | ms, synchronised | host ms |', '|---|---|---|---|---|']
    for label, cut in (('ResNet-50-like first chunk, cut at its tensors', sizes[:half]), ('the same, one flat tensor', [sum(sizes[:half])])):
        a, b = torch.randn(sum(cut), device=dev), torch.randn(sum(cut), device=dev)
        la, lb = list(a.split(cut)), list(b.split(cut))
        fn = lambda: torch._foreach_add_(la, lb)
        lines.append(f'| {label} | {len(cut)} | {sum(cut)} | {median_ms(fn, args.reps, dev, warmup=3):.3f} | {idle_ms(fn):.3f} |')
        print(lines[-1], flush=True)
    open(args.out, 'w').write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
