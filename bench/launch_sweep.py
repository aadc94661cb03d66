"""The Triton backend's launch (elements per program, warps) swept for chosen algorithms on the ResNet-50-like (or
LLM-like) set, fp32 or bf16, each step replayed from a CUDA graph, as a fraction of its byte bound at the copy bandwidth measured in the
same run: to choose `TritonBackend.launch` and `register_cap` from measurements. A configuration is elements x warps
(`1024x4`: registers as `register_cap` chooses), optionally with `r` and the most registers per thread (`1024x4r56`; `r0`:
the compiler's choice); with lookahead each sample times `lookahead_k` steps.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/launch_sweep.py --out $OUT/launch_sweep.md
"""
import argparse, gc, os, re, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from fastoptim.core import backends
from catalogue_gpu import build, make_params, steps_per_sample
from shapes import llm_shapes, resnet50_shapes
from timing import bytes_per_step, capture, copy_bandwidth, median_ms, write_report

ap = argparse.ArgumentParser()
ap.add_argument('--algos', default='Adam,NAdam,QHAdam,Adamax,rmsprop_momentum,SimplifiedAdEMAMix,momentum')
ap.add_argument('--configs', default='512x4,512x8,1024x4,1024x8,2048x8,256x4')
ap.add_argument('--reps', type=int, default=30)
ap.add_argument('--set', default='resnet', help='resnet or llm')
ap.add_argument('--dtype', default='fp32', help='fp32, or bf16 (with Kahan summation, the default there)')
ap.add_argument('--out', default='launch_sweep.md')
args = ap.parse_args()
dev, triton_backend = torch.device('cuda'), backends['triton']
dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[args.dtype]
shapes = dict(resnet=resnet50_shapes, llm=llm_shapes)[args.set]()
def config(text):
    "(elements, warps, registers or None) from `1024x4` or `1024x4r56`"
    found = re.fullmatch(r'(\d+)x(\d+)(?:r(\d+))?', text.strip())
    if found is None: raise SystemExit(f'--configs: {text!r} is not ELEMENTSxWARPS[rREGISTERS], e.g. 1024x4 or 1024x4r56')
    b, w, r = found.groups()
    return int(b), int(w), int(r) if r else None
configs = [config(c) for c in args.configs.split(',')]
label = lambda b, w, r: f'{b}x{w}' + (f'r{r}' if r is not None else '')
bandwidth = copy_bandwidth(dev)
lines = [f'# Launch sweep: {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
         f'{dict(resnet="ResNet-50-like", llm="LLM-like")[args.set]} set, {args.dtype}, each step replayed from a CUDA graph (median of {args.reps}); fraction of the one-pass '
         f'byte bound at {bandwidth:.0f} GB/s (copy bandwidth measured in this run). Columns: elements per program x warps [r most registers per thread, r0 the compiler\'s choice]; in brackets, each kernel\'s cap (None: the compiler\'s choice).', '',
         '| algorithm | tensors | ' + ' | '.join(label(*c) for c in configs) + ' |', '|---|---|' + '---|' * len(configs)]
default, default_cap, default_wide = triton_backend.launch, triton_backend.register_cap, triton_backend.wide_launch
for name in args.algos.split(','):
    cells, tensors = [], None
    for block, warps, registers in configs:
        triton_backend.launch = lambda plan, size, cfg=(block, warps): cfg
        triton_backend.wide_launch = lambda plan, bucket, tensors, aligned: None  # the configuration as given, for 8-bit plans too
        if registers is not None: triton_backend.register_cap = lambda compiler_registers, size, gated=False, quantized=False, cap=registers: cap or None
        try:
            ps = make_params(shapes, dtype)
            opt = build(name, ps, lr=1e-4, triton=True, step_graph=False)
            opt.step(); opt.step()
            tensors = len(next(iter(opt.layout.buckets.values())).algorithm.plan('step').tensors)
            graph = capture(opt.step)
            every = steps_per_sample(opt)
            ms = median_ms(lambda: [graph.replay() for _ in range(every)], args.reps, dev, warmup=3) / every
            n, _ = bytes_per_step(opt)
            caps = [str(v) for c in opt.layout.caches.values() for v in c.get('registers', {}).values()]  # per kernel, None: the compiler's
            cells.append(f'{ms:.3f} ({n / bandwidth / 1e6 / ms:.2f}) [{"/".join(caps)}]')
            del opt, graph, ps
        finally: triton_backend.launch, triton_backend.register_cap, triton_backend.wide_launch = default, default_cap, default_wide
        gc.collect()  # anything a cycle still holds (a CUDA graph's pool, say) goes before the next build
        torch.cuda.empty_cache()
    lines.append(f'| {name} | {tensors} | ' + ' | '.join(cells) + ' |')
    print(lines[-1], flush=True)
write_report('\n'.join(lines), args.out)
