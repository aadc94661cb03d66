"""Where the time of Muon's Newton–Schulz iteration goes on the GPU: `torch.profiler` over `newton_schulz` on each of the
LLM-like set's stacks (bf16), the quintic's five steps and AOL's four, each kernel's total time per call, against the
wall time of the same calls (CUDA events). Writes DIR/ns_profile.md.

On the GPU machine, from the repository root: python3 bench/ns_profile_gpu.py --out DIR
"""
import argparse, collections, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
from torch.profiler import profile, ProfilerActivity
from fastoptim.muon import newton_schulz
from timing import median_ms, write_report

ap = argparse.ArgumentParser()
ap.add_argument('--out', required=True)
ap.add_argument('--reps', type=int, default=5)
args = ap.parse_args()
dev = torch.device('cuda')
lines = [f'# Newton–Schulz, kernel by kernel: {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
         f'Command: `python3 {" ".join(sys.argv)}`; `torch.profiler` over {args.reps} calls, times per call.', '']
for k, shape in ((64, (2048, 2048)), (32, (5504, 2048)), (16, (2048, 5504))):
    stack = torch.randn(k, *shape, device=dev, dtype=torch.bfloat16)
    work = stack.clone()
    for steps, aol in ((5, False), (4, True)):
        call = lambda: newton_schulz(work.copy_(stack), steps=steps, aol=aol)
        copy_ms = median_ms(lambda: work.copy_(stack), 10, dev, warmup=2)
        wall = median_ms(call, 10, dev, warmup=2) - copy_ms
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.reps): call()
            torch.cuda.synchronize()
        kernels = collections.defaultdict(lambda: [0., 0])
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels[e.name][0] += e.device_time / 1e3 / args.reps
                kernels[e.name][1] += 1
        busy = sum(t for t, _ in kernels.values())
        lines += [f'## {k} × {shape[0]}×{shape[1]}, {"AOL + " if aol else ""}{steps} steps: {wall:.2f} ms wall (the copy of the input, '
                  f'{copy_ms:.2f} ms, taken off), kernels {busy:.2f} ms', '', '| kernel | ms per call | launches per call |', '|---|---|---|']
        lines += [f'| `{name[:110]}` | {t:.3f} | {n / args.reps:.0f} |' for name, (t, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])]
        lines.append('')
    del stack, work
write_report('\n'.join(lines), os.path.join(args.out, 'ns_profile.md'))
