"""Host cost of checking moved gradients against their parameters (`Layout.rebind`, at every step of
`set_to_none=True`), on the CPU: `_grad_error` per pair, the bulk check of both lists' `tensor_kinds`, and the check
`rebind` makes (the parameters' kinds kept, their strides read again). The ResNet-50-like set's 161 shapes; best of
7 repeats of 300 calls, µs per call.

    python bench/grad_check_cpu.py --out bench/results/.../grad_check_cpu.md
"""
import argparse, os, platform, sys, timeit
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from torch import Tensor
from fastoptim.core import _grad_error, tensor_kinds
from shapes import resnet50_shapes

ap = argparse.ArgumentParser()
ap.add_argument('--out', default=None)
args = ap.parse_args()
params = [torch.nn.Parameter(torch.randn(s)) for s in resnet50_shapes()]
grads = [torch.randn(s) for s in resnet50_shapes()]
kinds = tensor_kinds(params)
us = lambda fn: min(timeit.repeat(fn, number=300, repeat=7)) / 300 * 1e6
rows = [('`_grad_error` per pair', us(lambda: any(_grad_error(p, g) for p, g in zip(params, grads)))),
        ('both lists\' `tensor_kinds`', us(lambda: tensor_kinds(grads) != tensor_kinds(params))),
        ('`rebind`\'s: the parameters\' kinds kept, their strides read', us(lambda: list(map(Tensor.stride, params)) != kinds[1] or tensor_kinds(grads) != kinds))]
text = '\n'.join([f'# Checking {len(params)} moved gradients on the host: {platform.processor() or platform.machine()}, torch {torch.__version__}', '',
                  '| check | µs per call |', '|---|---|', *[f'| {name} | {t:.1f} |' for name, t in rows]]) + '\n'
print(text)
if args.out: open(args.out, 'w').write(text)
