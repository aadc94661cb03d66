"""The states' alignment and the Triton step: AdamW on 24 matrices of 2048×2048 and a 1-element parameter, with the
engine's states (`end_to_end`) at each start aligned to 512, 128 (the default) or 16 bytes, and unpadded (each start
right after the previous tensor's end), the 1-element parameter first (every later state then off by its bytes
where unpadded) or last; bf16 with Kahan summation, 24-bit master weights, and fp32. Median of
50 synchronised steps, in 2 rounds.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/state_alignment_gpu.py > $OUT/state_alignment.md
"""
import os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
import fastoptim.core as core
from fastoptim.all import Adam
from timing import median_ms

dev = torch.device('cuda')
default = core.state_alignment

def step_ms(alignment, scalar_first, dtype, kw):
    core.state_alignment = alignment
    try:
        g = torch.Generator(device=dev).manual_seed(0)
        mats = [torch.randn(2048, 2048, device=dev, generator=g).to(dtype) for _ in range(24)]
        scalar = [torch.ones(1, device=dev, dtype=dtype)]
        ps = [torch.nn.Parameter(t) for t in (scalar + mats if scalar_first else mats + scalar)]
        for p in ps: p.grad = torch.randn(p.shape, device=dev, generator=g).to(dtype)
        opt = Adam(ps, lr=1e-4, triton=True, **kw)
        for _ in range(3): opt.step()
        offsets = {v.data_ptr() % 16 for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
        return median_ms(opt.step, 50, dev, warmup=3), sorted(offsets)
    finally: core.state_alignment = default

print(f'# State alignment and the Triton AdamW step: {torch.cuda.get_device_name()}, torch {torch.__version__}\n')
print('| weights | states | 1-element parameter | ms per step, 2 rounds | state addresses mod 16 |\n|---|---|---|---|---|')
for label, dtype, kw in (('bf16, Kahan', torch.bfloat16, {}), ('bf16, master_weight_bits=24', torch.bfloat16, dict(master_weight_bits=24)),
                         ('fp32', torch.float32, {})):
    for name, alignment in (('512 bytes', 512), ('128 bytes', 128), ('16 bytes', 16), ('unpadded', 1)):
        for first in (True, False):
            runs = [step_ms(alignment, first, dtype, kw) for _ in range(2)]
            print(f"| {label} | {name} | {'first' if first else 'last'} | {', '.join(f'{ms:.3f}' for ms, _ in runs)} | {runs[0][1]} |", flush=True)
