"""Muon's stacks orthogonalised on CUDA streams of their own, timed against the committed engine before it is adopted.

The engine runs a bucket's stacks (one per shape: the LLM-like set's 64 square, 32 tall and 16 wide matrices) one
after another on the current stream, so each product's last wave of tiles, and each gap between launches, leaves
multiprocessors idle. Here `fastoptim.core.apply_matrices` is replaced, for the run of a variant, by one that forks
every stack onto a stream of its own and joins them before the step's last pass. The weights after the same steps are
compared with the committed engine's first (the same kernels on the same data: the same bits). Then Muon's step on the
112 hidden matrices (bf16 weights; the default and `aol=True`) against `torch.optim.Muon`, in interleaved rounds (ratio
per round, as `bench/muon_gpu.py`).

    PYTHONPATH=$PWD/.site:$PWD python3 bench/muon_streams_gpu.py --out $OUT/muon_streams.md
"""
import argparse, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch
from muon_gpu import hidden_matrices, make, replaced, Within, interleaved
import fastoptim.core as core


def apply_on_streams(plan, bucket, divide=None):
    "`apply_matrices` with each stack on a stream of its own, forked from and joined to the current one"
    if not plan.workspace or divide is not None: return committed(plan, bucket, divide)
    main = torch.cuda.current_stream()
    for name, (fn, options) in plan.workspace.items():
        for i, stack in enumerate(bucket.stacks[name]):
            side = streams[i % len(streams)]
            side.wait_stream(main)
            with torch.cuda.stream(side): fn.apply(stack, **dict(options))
    for side in streams: main.wait_stream(side)

committed = core.apply_matrices
streams = []


def on_streams(opt, count):
    "`opt` whose steps run its stacks on `count` streams (None: as committed)"
    if count is None: return opt
    streams[:] = [torch.cuda.Stream() for _ in range(count)]
    return Within(opt, lambda: replaced(core, 'apply_matrices', apply_on_streams))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='muon_streams.md')
    ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=5)
    args = ap.parse_args()
    from fastoptim.all import Muon
    dev = torch.device('cuda')
    ps, grads = make(hidden_matrices(), torch.bfloat16, dev)
    lines = [f'# Muon with its stacks on streams of their own: {torch.cuda.get_device_name()}', '',
             f'torch {torch.__version__}; `python3 bench/muon_streams_gpu.py`; LLM-like set\'s 112 hidden matrices, bf16 weights.', '']
    for options in ({}, dict(aol=True)):  # the same bits: three steps each way from the same weights and gradients
        results = []
        for count in (None, 3):
            ps2 = [p.detach().clone().requires_grad_() for p in ps]
            opt = on_streams(Muon(ps2, lr=1e-3, wd=0.1, triton=True, **options), count)
            for g in grads + grads[:1]:
                for p, gi in zip(ps2, g): p.grad = gi
                opt.step()
            torch.cuda.synchronize()
            results.append(ps2)
        same = all(torch.equal(a, b) for a, b in zip(*results))
        lines.append(f"- {options or 'default'}: three steps on 3 streams give the committed engine's weights bit for bit: {same}")
        print(lines[-1], flush=True)
    opts = {'torch.optim.Muon': (torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1, adjust_lr_fn='match_rms_adamw'), ps)}
    for label, options in (('default', {}), ('aol=True', dict(aol=True))):
        for count in (None, 3):
            ps2 = [p.detach().clone().requires_grad_() for p in ps]
            opts[f"{label} | {'one stream (committed)' if count is None else f'{count} streams'}"] = (on_streams(Muon(ps2, lr=1e-3, wd=0.1, triton=True, **options), count), ps2)
    times = interleaved(opts, grads, dev, args.reps, args.rounds)
    lines += ['', f"{args.rounds} rounds, each timing every optimizer ({args.reps} steps, median) in a rotated order; ratio to "
              "torch.optim.Muon in the same round", '',
              '| optimizer | stacks | median ms | median ratio | lowest | highest |', '|---|---|---|---|---|---|']
    for name in opts:
        ratios = sorted(t / m for t, m in zip(times['torch.optim.Muon'], times[name]))
        label = name if ' | ' in name else f'{name} | '
        lines.append(f"| {label} | {float(np.median(times[name])):.1f} | {ratios[len(ratios) // 2]:.3f}× | {ratios[0]:.3f}× | {ratios[-1]:.3f}× |")
        print(lines[-1], flush=True)
    open(args.out, 'w').write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
