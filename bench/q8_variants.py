"""The 8-bit moments' Triton step (issue 17), kernel variants side by side: AdamW with an int8 residual and 8-bit moments
on the bf16 LLM-like set, replayed in CUDA graphs, each variant of `load_q8`/`store_q8` at several launches, timed in
interleaved rounds in one process (every optimizer steps the same parameters: only the time is read).

Variants (each changes only how 8-bit codes are read and written; the codes mean the same):
- `committed`: fastoptim's own `load_q8`/`store_q8` (`magic_sqrt_scale` since this comparison; before it, `before`).
- `before`: c03ed69's: conversion instructions, a reciprocal square root squared, codes rounded by `floor(y + 0.5)`.
- `magic`: codes to floats and back by fp32 magic numbers (2^23 + the code's byte, and y + 1.5·2^23 whose low byte is
  y rounded half to even) instead of conversion instructions; one reciprocal where there was a reciprocal square root
  squared; the positive form's √v written from the algorithm's own √v (shared by the compiler).
- `magic_sqrt_scale`: `magic`, and the positive form read as (q²·√s/255²)², one √s per thread.
- `magic_plain`: `magic_sqrt_scale`'s reads, and the positive form written as before (√√t), no shared square root.
- `fast_inverse`: `magic_sqrt_scale` with each group's reciprocal scale by the fast division (0 for scales above 2^126).
- A `+barrier` suffix: a CTA barrier after the loads of every phase kernel (the compiler sinks the second moment's load
  below the first moment's arithmetic).

On the GPU machine, from the repository root:
    python3 bench/q8_variants.py --out $OUT/q8_variants.md
"""
import argparse, os, re, sys
ap = argparse.ArgumentParser()
ap.add_argument('--variants', default='committed,magic,magic_sqrt_scale,magic_plain')
ap.add_argument('--configs', default='1024x4,1024x4r0,2048x4,2048x8,512x4', help='ELEMENTSxWARPS[rREGISTERS] (r0: the compiler\'s choice; none: `register_cap`\'s rule), or engine (the launch and registers the engine chooses)')
ap.add_argument('--algos', default='AdamW', help='AdamW, Lion, SGD momentum, AdamW bf16 moments, or any registered algorithm (with the int8 residual and 8-bit states)')
ap.add_argument('--rounds', type=int, default=5)
ap.add_argument('--reps', type=int, default=10)
ap.add_argument('--small', action='store_true', help='every dimension divided by 64: for dry runs')
ap.add_argument('--device', default='cuda', help='cpu: a dry run in the Triton interpreter, stepped without graphs')
ap.add_argument('--out', default=None)
args = ap.parse_args()
if args.device == 'cpu': os.environ['TRITON_INTERPRET'] = '1'
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import numpy as np
import torch
import triton, triton.language as tl
import fastoptim.all  # noqa: F401
import fastoptim.triton_engine as te
from fastoptim.all import SGD, Adam, Lion
from fastoptim.algorithm import quantized
from fastoptim.core import algorithms, backends
from fastoptim.triton_engine import divide
from shapes import llm_shapes
from timing import bytes_per_step, capture, copy_bandwidth, median_ms, write_report


@triton.jit
def group_scales(x, mask, BLOCK: tl.constexpr, FORM: tl.constexpr, FAST: tl.constexpr):
    "The block as (BLOCK // 32, 32) groups, each group's new bf16 scale, and its reciprocal (by the fast division if FAST, which is 0 above 2**126)"
    groups = tl.reshape(tl.where(mask, x, 0.), (BLOCK // 32, 32))
    if FORM == 0: top = tl.max(tl.abs(groups), axis=1)
    else: top = tl.max(groups, axis=1)
    scale = ((top.to(tl.int32, bitcast=True) + 0xFFEF) & -65536).to(tl.float32, bitcast=True)
    scale = tl.where(top >= 1.1754943508222875e-38, scale, 0.).to(tl.bfloat16)
    if FAST: inverse = divide(1., tl.where(scale > 0, scale.to(tl.float32), 1.))
    else: inverse = 1 / tl.where(scale > 0, scale.to(tl.float32), 1.)
    return groups, scale, inverse


@triton.jit
def store_scales(scales, row, scale, BLOCK: tl.constexpr):
    group = (tl.program_id(0) - tl.load(row + 1)) * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    tl.store(scales + group, scale, mask=group * 32 < tl.load(row))


@triton.jit
def write_codes(codes, scales, row, offsets, y, scale, mask, BLOCK: tl.constexpr):
    "y rounded half to even into 8-bit codes (the low byte of y + 1.5·2**23), stored with the groups' scales"
    q = (y + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)
    tl.store(codes.to(tl.pointer_type(tl.int8)) + offsets, tl.reshape(q, (BLOCK,)), mask=mask)
    store_scales(scales, row, scale, BLOCK)


# c03ed69's, before this comparison
@triton.jit
def load_before(codes, scales, offsets, mask, FORM: tl.constexpr):
    s = tl.load(scales + offsets // 32, mask=mask, other=0.).to(tl.float32)
    q = tl.load(codes + offsets, mask=mask, other=0).to(tl.float32)
    if FORM == 0:
        r = tl.rsqrt(254 - tl.abs(q))
        return q * r * r * s
    else:
        q = q * q * 1.5378700499807768e-05
        return q * q * s


@triton.jit
def store_before(codes, scales, row, offsets, x, mask, BLOCK: tl.constexpr, FORM: tl.constexpr):
    groups, scale, inverse = group_scales(x, mask, BLOCK, FORM, False)
    t = groups * inverse[:, None]
    if FORM == 0:
        r = tl.rsqrt(tl.abs(t) + 1)
        q = tl.floor(t * r * r * 254 + 0.5).to(tl.int8)
    else:
        t = tl.minimum(tl.maximum(t, 0.), 1.)
        q = tl.floor(tl.sqrt(tl.sqrt(t)) * 255 + 0.5).to(tl.uint8)
    tl.store(codes + offsets, tl.reshape(q, (BLOCK,)), mask=mask)
    store_scales(scales, row, scale, BLOCK)


@triton.jit
def load_magic_any(codes, scales, offsets, mask, FORM: tl.constexpr, SQRT_SCALE: tl.constexpr):
    s = tl.load(scales + offsets // 32, mask=mask, other=0.).to(tl.float32)
    if FORM == 0:
        q = (tl.load(codes + offsets, mask=mask, other=0).to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
        return divide(q, 254 - tl.abs(q)) * s
    else:
        q = tl.load(codes + offsets, mask=mask, other=0).to(tl.int32).to(tl.float32)
        if SQRT_SCALE:
            q = q * q * (tl.sqrt(s) * 1.5378700499807768e-05)
            return q * q
        else:
            q = q * q * 1.5378700499807768e-05
            return q * q * s


@triton.jit
def load_magic(codes, scales, offsets, mask, FORM: tl.constexpr):
    return load_magic_any(codes, scales, offsets, mask, FORM, False)


@triton.jit
def load_sqrt_scale(codes, scales, offsets, mask, FORM: tl.constexpr):
    return load_magic_any(codes, scales, offsets, mask, FORM, True)


@triton.jit
def store_magic_any(codes, scales, row, offsets, x, mask, BLOCK: tl.constexpr, FORM: tl.constexpr, SHARED: tl.constexpr, FAST: tl.constexpr):
    groups, scale, inverse = group_scales(x, mask, BLOCK, FORM, FAST)
    if FORM == 0:
        t = groups * inverse[:, None]
        y = divide(t * 254, tl.abs(t) + 1)
    elif SHARED:  # from the algorithm's own √v, shared by the compiler
        y = tl.sqrt(tl.minimum(tl.sqrt(tl.reshape(x, (BLOCK // 32, 32))) * tl.sqrt(inverse)[:, None], 1.)) * 255
    else: y = tl.sqrt(tl.sqrt(tl.minimum(tl.maximum(groups * inverse[:, None], 0.), 1.))) * 255
    write_codes(codes, scales, row, offsets, y, scale, mask, BLOCK)


@triton.jit
def store_magic(codes, scales, row, offsets, x, mask, BLOCK: tl.constexpr, FORM: tl.constexpr):
    store_magic_any(codes, scales, row, offsets, x, mask, BLOCK, FORM, True, False)


@triton.jit
def store_plain(codes, scales, row, offsets, x, mask, BLOCK: tl.constexpr, FORM: tl.constexpr):
    store_magic_any(codes, scales, row, offsets, x, mask, BLOCK, FORM, False, False)


@triton.jit
def store_fast_inverse(codes, scales, row, offsets, x, mask, BLOCK: tl.constexpr, FORM: tl.constexpr):
    store_magic_any(codes, scales, row, offsets, x, mask, BLOCK, FORM, True, True)


VARIANTS = {'committed': (te.load_q8, te.store_q8), 'before': (load_before, store_before), 'magic': (load_magic, store_magic),
            'magic_sqrt_scale': (load_sqrt_scale, store_magic), 'magic_plain': (load_sqrt_scale, store_plain),
            'fast_inverse': (load_sqrt_scale, store_fast_inverse)}
ALGOS = {'AdamW': lambda ps: Adam(ps, lr=1e-3, wd=1e-2, triton=True, master_weight_bits=24, state_bits=8, step_graph=False),
         'Lion': lambda ps: Lion(ps, lr=1e-4, wd=1e-2, triton=True, master_weight_bits=24, state_bits=8, step_graph=False),
         'SGD momentum': lambda ps: SGD(ps, lr=1e-3, mom=0.9, wd=1e-2, triton=True, master_weight_bits=24, state_bits=8, step_graph=False),
         'AdamW bf16 moments': lambda ps: Adam(ps, lr=1e-3, wd=1e-2, triton=True, master_weight_bits=24, step_graph=False)}



def with_barrier(phase_source):
    "`phase_source` with a CTA barrier after the loads: the compiler may not sink a load below it"
    def patched(*a, **k):
        lines = phase_source(*a, **k).split('\n')
        out = []
        for line in lines:
            out.append(line)
            if line.strip().startswith('g = load_math('): out.append(line[:len(line) - len(line.lstrip())] + 'tl.debug_barrier()')
        return '\n'.join(out)
    return patched


def make(algo):
    "A maker of `algo`'s optimizer: one of ALGOS, or any registered algorithm by name with the int8 residual and 8-bit states"
    if algo in ALGOS: return ALGOS[algo]
    return lambda ps: algorithms[algo](ps, lr=1e-4, wd=1e-2, triton=True, master_weight_bits=24, state_bits=8, step_graph=False)


def build(algo, variant, config, params):
    "A captured step of `algo` with `variant`'s kernels at `config` (elements, warps, registers)"
    triton_backend = backends['triton']
    default = triton_backend.launch, triton_backend.register_cap, triton_backend.wide_launch, te.load_q8, te.store_q8, te.phase_source
    if config is not None:  # else the engine's own choice
        block, warps, registers = config
        triton_backend.launch = lambda plan, size: (block, warps)
        triton_backend.wide_launch = lambda plan, bucket, tensors, aligned: None
        if registers is not None: triton_backend.register_cap = lambda compiler_registers, size, gated=False, quantized=False: registers or None
    te.load_q8, te.store_q8 = VARIANTS[variant.removesuffix('+barrier')]
    if variant.endswith('+barrier'): te.phase_source = with_barrier(te.phase_source)
    try:
        for name in ('Adam', 'Lion', 'momentum', *([algo] if algo in algorithms else [])):
            for algorithm in (algorithms[name].algorithm, quantized(algorithms[name].algorithm)):
                algorithm.plan('step').code.pop('triton', None)  # compiled again, with this variant's helpers
        opt = make(algo)(params)
        opt.step(); opt.step(); opt.step()
        return opt, capture(opt.step) if args.device == 'cuda' else opt.step
    finally:
        triton_backend.launch, triton_backend.register_cap, triton_backend.wide_launch, te.load_q8, te.store_q8, te.phase_source = default


def main():
    dev = torch.device(args.device)
    bw = copy_bandwidth(dev) if dev.type == 'cuda' else 10.
    shapes = llm_shapes()
    if args.small: shapes = [tuple(max(1, d // 64) for d in s) for s in shapes]
    n = sum(int(np.prod(s)) for s in shapes)
    g = torch.Generator(device=dev).manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g, device=dev) * 0.02).bfloat16()) for s in shapes]
    for p in params: p.grad = torch.randn(p.shape, generator=g, device=dev).bfloat16()
    configs = []
    for text in args.configs.split(','):
        if text == 'engine':
            configs.append((text, None))
            continue
        b, w, r = re.fullmatch(r'(\d+)x(\d+)(?:r(\d+))?', text).groups()
        configs.append((text, (int(b), int(w), None if r is None else int(r))))
    cases = {}
    for algo in args.algos.split(','):
        for variant in (args.variants.split(',') if 'bf16' not in algo else ['committed']):
            for label, config in configs:
                opt, graph = build(algo, variant, config, params)
                caps = [f"{c['block']}x{c['warps']}:{v}" if label == 'engine' else str(v) for c in opt.layout.caches.values() for v in c.get('registers', {}).values()]
                cases[(algo, variant, label)] = (opt, graph, '/'.join(caps), bytes_per_step(opt)[0])
                print('built', algo, variant, label, caps, flush=True)
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (opt, graph, *_) in cases.items(): times[k].append(median_ms(getattr(graph, 'replay', graph), args.reps, dev, warmup=2))
    lines = [f'# 8-bit moments: kernel variants, {torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}, torch {torch.__version__}, triton {triton.__version__}', '',
             f'LLM-like set ({n / 1e9:.2f}B parameters), bf16 weights with an int8 residual, replayed in CUDA graphs; median over '
             f'{args.rounds} interleaved rounds of each round\'s median of {args.reps}. Fraction: the byte bound at {bw:.0f} GB/s '
             '(copy bandwidth measured in this run) over the time. Configuration: elements per program × warps, r: most '
             'registers (r0: the compiler\'s choice; none: the engine\'s rule); brackets: each kernel\'s cap.', '',
             f'Command: `python3 {" ".join(sys.argv)}`', '',
             '| algorithm | variant | configuration | ms | fraction |', '|---|---|---|---|---|']
    for (algo, variant, label), ts in times.items():
        ms = float(np.median(ts))
        nbytes = cases[(algo, variant, label)][3]
        lines.append(f'| {algo} | {variant} | {label} [{cases[(algo, variant, label)][2]}] | {ms:.3f} | {nbytes / (bw * 1e9) * 1e3 / ms:.3f} |')
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__': main()
