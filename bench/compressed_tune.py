"""Launch tuning of the compressed-state Triton steps (issue 17): AdamW on the bf16 LLM-like set, replayed in a CUDA
graph, for Kahan summation, compressed master weights and 8-bit moments, at each (elements per program, warps).
The fraction is each configuration's own byte bound (see compressed_bench.py) at the copy bandwidth measured in the
same run, over its step time.

On the GPU machine, from the repository root (wheels as in ../shared/GPU.md):
    python3 bench/compressed_tune.py --out $OUT/tune.md
"""
import argparse, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
from fastoptim.all import Adam
from fastoptim.core import backends
from shapes import llm_shapes
from graphed import Graphed
from timing import copy_bandwidth, median_ms, write_report

ap = argparse.ArgumentParser()
ap.add_argument('--out', default=os.path.join(os.environ.get('OUT', '.'), 'compressed_tune.md'))
ap.add_argument('--reps', type=int, default=30)
args = ap.parse_args()
dev = torch.device('cuda')
EIGHT = 2 * (2 + 2 * 2 / 32)
CONFIGS = {'kahan': ({}, 18), 'master32': (dict(master_weight_bits=32), 18), 'master24': (dict(master_weight_bits=24), 16),
           'master24, 8-bit moments': (dict(master_weight_bits=24, state_bits=8), 8 + EIGHT),
           'kahan, 8-bit moments': (dict(state_bits=8), 10 + EIGHT)}
LAUNCHES = [(512, 4), (512, 8), (1024, 4), (1024, 8), (2048, 8)]


def main():
    bw = copy_bandwidth(dev)
    shapes = llm_shapes()
    n = sum(torch.Size(s).numel() for s in shapes)
    g = torch.Generator(device=dev).manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g, device=dev) * 0.02).bfloat16()) for s in shapes]
    for p in params: p.grad = torch.randn(p.shape, generator=g, device=dev).bfloat16()
    default, default_wide = backends['triton'].launch, backends['triton'].wide_launch
    backends['triton'].wide_launch = lambda plan, bucket, tensors, aligned: None  # each launch as given, for 8-bit plans too
    lines = [f'# Compressed-state Triton steps by launch\n\n{torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s; '
             f'AdamW, bf16 LLM-like set ({n / 1e9:.2f}B parameters), replayed in a CUDA graph, median of {args.reps}.\n',
             '| configuration | ' + ' | '.join(f'{b} × {w} warps' for b, w in LAUNCHES) + ' |', '|---|' + '---|' * len(LAUNCHES)]
    try:
        for name, (options, nbytes) in CONFIGS.items():
            cells = []
            for block, warps in LAUNCHES:
                backends['triton'].launch = lambda plan, element_size, b=block, w=warps: (b, w)
                opt = Adam(params, lr=1e-3, wd=1e-2, triton=True, **options)
                graph = Graphed(opt)
                ms = median_ms(graph.step, args.reps, dev, warmup=5)
                cells.append(f'{ms:.3f} ms ({nbytes * n / (bw * 1e9) * 1e3 / ms:.2f})')
                print(name, block, warps, cells[-1], flush=True)
                del graph, opt
                torch.cuda.empty_cache()
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    finally: backends['triton'].launch, backends['triton'].wide_launch = default, default_wide
    write_report('\n'.join(lines) + '\n', args.out)


if __name__ == '__main__': main()
