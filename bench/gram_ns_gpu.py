"""Muon's Newton–Schulz in its Gram form (`newton_schulz(..., gram_form=True)`, `fastoptim.muon.gram_newton_schulz`:
Zhang, Amsel, Chen & Dao 2026, restarted once, in fp16) against the quintic as `newton_schulz` runs it in bf16, on an
H200: the time of each on stacks of 2048-row matrices of growing width, wide and tall (the LLM-like set's 2048×5504 and
5504×2048 among them), from both starts, which sets `gram_min_aspect`; then both against the quintic in fp64 on
Gaussian matrices and on spectra decaying over 2 and 4 decades.

On the GPU machine, from the repository root:
    python3 bench/gram_ns_gpu.py --out $OUT/gram_ns.md
"""
import argparse, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
import fastoptim.muon as muon
from fastoptim.muon import newton_schulz
from timing import median_ms, write_report

ap = argparse.ArgumentParser()
ap.add_argument('--stack', type=int, default=16)
ap.add_argument('--reps', type=int, default=10)
ap.add_argument('--out', default=None)
args = ap.parse_args()
dev = torch.device('cuda')


def decaying(k, m, n, decades, gen):
    "k matrices with singular values log-spaced over `decades` decades, random singular vectors"
    u, _ = torch.linalg.qr(torch.randn(k, m, m, device=dev, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(k, n, m, device=dev, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, -decades, m, device=dev, dtype=torch.float64)
    return (u * s) @ v.mT


def main():
    muon.gram_min_aspect = 1.  # here every stack takes the form asked for
    gen = torch.Generator(device=dev).manual_seed(0)
    lines = [f'# Newton–Schulz in its Gram form: {torch.cuda.get_device_name()}, torch {torch.__version__}', '',
             f'Command: `python3 {" ".join(sys.argv)}`; median of {args.reps}; the quintic\'s TFLOP/s counted as torch computes it '
             '(4m²n + 2m³ a matrix and iteration, m ≤ n).', '',
             '| stack | aspect | quintic ms | Gram form ms | quintic / Gram | AOL + quintic ms | AOL + Gram form ms | quintic / Gram, AOL |',
             '|---|---|---|---|---|---|---|---|']
    k = args.stack
    for shape in ((2048, 2048), (2048, 2560), (2048, 3072), (2048, 4096), (2048, 5504), (5504, 2048)):
        stack = torch.randn(k, *shape, device=dev, generator=gen).bfloat16()
        work = stack.clone()
        ms = {}
        for aol, steps in ((False, 5), (True, 4)):
            for gram_form in (False, True):
                ms[aol, gram_form] = median_ms(lambda: newton_schulz(work.copy_(stack), steps=steps, aol=aol, gram_form=gram_form),
                                               args.reps, dev, warmup=3)
        lines.append(f'| {k} × {shape[0]}×{shape[1]} | {max(shape) / min(shape):.2f} | {ms[False, False]:.2f} | {ms[False, True]:.2f} | '
                     f'{ms[False, False] / ms[False, True]:.2f} | {ms[True, False]:.2f} | {ms[True, True]:.2f} | {ms[True, False] / ms[True, True]:.2f} |')
        del stack, work
    lines += ['', 'Error: ‖result − the same iteration in fp64‖ / ‖the same iteration in fp64‖ (quintic, five steps; AOL, four), '
              '4 matrices 2048×5504 of each kind, bf16 in:', '',
              '| matrices | quintic, bf16 | Gram form, fp16 | AOL + quintic, bf16 | AOL + Gram form, fp16 |', '|---|---|---|---|---|']
    for name, decades in (('Gaussian', None), ('spectrum over 2 decades', 2), ('spectrum over 4 decades', 4)):
        y = torch.randn(4, 2048, 5504, device=dev, dtype=torch.float64, generator=gen) if decades is None else decaying(4, 2048, 5504, decades, gen)
        cells = []
        for aol, steps in ((False, 5), (True, 4)):
            ref = newton_schulz(y.clone(), steps=steps, aol=aol)  # in fp64: torch's products
            for gram_form in (False, True):
                got = newton_schulz(y.bfloat16(), steps=steps, aol=aol, gram_form=gram_form).double()
                cells.append(f'{((got - ref).norm() / ref.norm()).item():.4f}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__': main()
