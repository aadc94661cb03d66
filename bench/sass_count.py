"""SASS instructions of generated Triton kernels, counted on the CPU: the kernel is compiled for sm_90 by Triton,
assembled by the `ptxas` in Triton's wheel and disassembled by its `cuobjdump`; no GPU is needed. Counted: the
instructions of the branch a full block runs (1024 elements over 4 warps, 8 per thread), from the branch on the
block's size to the first EXIT.

From the repository root (any checkout holding fastoptim/, e.g. one made with `git archive REV fastoptim`):
    python3 bench/sass_count.py [--root DIR] --out bench/results/.../sass_counts.md
"""
import argparse, collections, datetime, importlib.util, os, re, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument('--root', default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                help='the checkout whose fastoptim/ is compiled')
ap.add_argument('--out', default=None)
args = ap.parse_args()
assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'unset TRITON_INTERPRET: the kernels are compiled, not interpreted'
sys.path.insert(0, args.root)
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
import fastoptim.all  # noqa: F401  (registers every algorithm)
from fastoptim.core import algorithms
from fastoptim.algorithm import quantized
from fastoptim.triton_engine import triton_code

BIN = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')
SIGNATURE = {'table': '*i64', 'block_tensors': '*i32', 'scalars': '*fp32', 'inputs': '*fp32', 'sums': '*fp32'}
ROUNDING = {'nearest': 0, 'kahan': 1, 'master24': 3}
KERNELS = [  # (label, algorithm, dtype, rounding)
    ('AdamW, bf16 weights, Kahan', algorithms['Adam'].algorithm, tl.bfloat16, 'kahan'),
    ('SGD momentum, bf16 weights, Kahan', algorithms['momentum'].algorithm, tl.bfloat16, 'kahan'),
    ('AdamW, bf16 weights, int8 residual', algorithms['Adam'].algorithm, tl.bfloat16, 'master24'),
    ('AdamW, bf16 weights, int8 residual, 8-bit moments', quantized(algorithms['Adam'].algorithm), tl.bfloat16, 'master24'),
    ('AdamW, fp32 weights', algorithms['Adam'].algorithm, tl.float32, 'nearest'),
    ('Adam-atan2, bf16 weights, Kahan', algorithms['AdamAtan2'].algorithm, tl.bfloat16, 'kahan'),
    ('Adan, bf16 weights, Kahan', algorithms['Adan'].algorithm, tl.bfloat16, 'kahan'),
    ('RAdam, bf16 weights, Kahan', algorithms['RAdam'].algorithm, tl.bfloat16, 'kahan'),
    ('RAdam with lookahead (Ranger), bf16 weights, Kahan', algorithms['RAdam+lookahead'].algorithm, tl.bfloat16, 'kahan'),
]


def full_block_sass(algorithm, dtype, rounding, block=1024, warps=4):
    "(instructions of the full-block branch, registers, the most frequent opcodes there)"
    code = triton_code(algorithm.plan())
    consts = dict(WIDTH=len(algorithm.plan().tensors) + 8, K=code.K, DTYPE=dtype, BLOCK=block, ROUNDING=ROUNDING[rounding], ALIGN=16)
    src = triton.compiler.ASTSource(fn=code.phases[0], signature={**SIGNATURE, **{k: 'constexpr' for k in consts}}, constexprs=consts)
    compiled = triton.compile(src, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=warps))
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, 'k.ptx'), os.path.join(d, 'k.cubin')
        # the PTX version Triton writes may be newer than this ptxas knows; the instructions used are not
        open(ptx, 'w').write(re.sub(r'\.version \d+\.\d+', '.version 8.8', compiled.asm['ptx']))
        assembler = next(os.path.join(BIN, n) for n in ('ptxas-blackwell', 'ptxas') if os.path.exists(os.path.join(BIN, n)))
        out = subprocess.run([assembler, '-arch=sm_90a', '-v', '-o', cubin, ptx], capture_output=True, text=True, check=True)
        sass = subprocess.run([os.path.join(BIN, 'cuobjdump'), '-sass', cubin], capture_output=True, text=True, check=True).stdout
    lines = re.findall(r'^\s+/\*[0-9a-f]{4}\*/\s+(.*?)\s*;', sass, re.M)
    start = next(i for i, l in enumerate(lines) if 'BRA' in l)  # the branch on the block's size
    stop = next(i for i, l in enumerate(lines) if l.endswith('EXIT'))
    ops = collections.Counter(l.split()[1 if l.startswith('@') else 0].split('.')[0] for l in lines[start:stop])
    return stop - start, int(re.search(r'Used (\d+) registers', out.stderr).group(1)), ops


def main():
    rows = []
    for label, algorithm, dtype, rounding in KERNELS:
        n, regs, ops = full_block_sass(algorithm, dtype, rounding)
        special = sum(ops[k] for k in ('MUFU', 'F2I', 'I2F', 'F2F', 'FRND'))
        rows.append(f"| {label} | {n} | {n / 8:.0f} | {regs} | {special} | {', '.join(f'{k} {v}' for k, v in ops.most_common(6))} |")
        print(rows[-1], flush=True)
    text = '\n'.join([f'# SASS instructions of a full block (sm_90, 1024 elements over 4 warps)', '',
                      f"{datetime.date.today()}; triton {triton.__version__}; checkout `{args.root}`; command: "
                      f"`python3 {' '.join(sys.argv)}`", '',
                      '| kernel | instructions per thread | per element | registers | MUFU, F2I, I2F, F2F, FRND | most frequent |', '|---|---|---|---|---|---|',
                      *rows]) + '\n'
    if args.out:
        os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
        open(args.out, 'w').write(text)


if __name__ == '__main__': main()
