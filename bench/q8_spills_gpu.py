"""Registers and local memory (spills) of the 8-bit step kernels as the GPU's Triton compiles them, at a launch and a
register cap: what a launch rule for 8-bit plans can read before it launches (Triton's `n_spills`: local memory per
thread, in 4-byte words).

On the GPU machine, from the repository root:
    python3 bench/q8_spills_gpu.py --algos Adam,Lion,... --configs 1024x4,2048x4r72 --out $OUT/q8_spills.md
"""
import argparse, os, re, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
import fastoptim.all  # noqa: F401
import triton.language as tl
from fastoptim.core import algorithms, backends
from fastoptim.triton_engine import compiled_kernel
from timing import write_report

ap = argparse.ArgumentParser()
ap.add_argument('--algos', default='Adam,Lion,momentum,RAdam,rmsprop_momentum,NAdam,ADOPT,Adan,AdEMAMix')
ap.add_argument('--configs', default='1024x4,2048x4r72,2048x4r80')
ap.add_argument('--out', default=None)
args = ap.parse_args()


def probe(name, block, warps, registers):
    "(registers, local words) of each phase kernel of `name`'s 8-bit step at this launch, on small bf16 tensors"
    tb = backends['triton']
    found = []
    default = tb.launch, tb.register_cap, tb.launch_phase, tb.wide_launch
    tb.launch, tb.wide_launch = lambda plan, size: (block, warps), lambda plan, bucket, tensors, aligned: None
    if registers is not None: tb.register_cap = lambda compiler_registers, size, gated=False, quantized=False: registers
    def spy(kernel, plan, bucket, cache, inputs, sums):
        default[2](kernel, plan, bucket, cache, inputs, sums)
        args = (cache['table'], cache['block_tensors'], cache['scalars'], inputs, sums)
        meta = dict(WIDTH=cache['width'], K=cache['scalars'].shape[1], DTYPE=tl.bfloat16, BLOCK=cache['block'], ROUNDING=3,
                    ALIGN=cache['align'], num_warps=cache['warps'], maxnreg=cache['registers'][kernel.__name__])
        compiled = compiled_kernel(kernel, args, meta)  # as launched: the same compiled kernel
        found.append((kernel.__name__, compiled.n_regs, compiled.n_spills))
    tb.launch_phase = spy
    try:
        ps = [torch.nn.Parameter(torch.randn(s, device='cuda').bfloat16()) for s in ((4096, 64), (1000,))]
        for p in ps: p.grad = torch.randn_like(p)
        opt = algorithms[name](ps, lr=1e-4, triton=True, master_weight_bits=24, state_bits=8, step_graph=False)
        opt.step()
    finally: tb.launch, tb.register_cap, tb.launch_phase, tb.wide_launch = default
    return found


def main():
    lines = [f'# 8-bit step kernels: registers and local memory, {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
             f'Command: `python3 {" ".join(sys.argv)}`', '', 'Each phase kernel: registers / local memory in 4-byte words (Triton\'s `n_spills`).', '',
             '| algorithm | ' + ' | '.join(args.configs.split(',')) + ' |', '|---|' + '---|' * len(args.configs.split(','))]
    for name in args.algos.split(','):
        cells = []
        for text in args.configs.split(','):
            b, w, r = re.fullmatch(r'(\d+)x(\d+)(?:r(\d+))?', text).groups()
            cells.append(', '.join(f'{regs}/{spills}' for _, regs, spills in probe(name, int(b), int(w), None if r is None else int(r))))
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
        print(lines[-1], flush=True)
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__': main()
