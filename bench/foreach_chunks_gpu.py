"""The foreach backend's chunk length for 16-bit buckets on a GPU: bf16 SGD-momentum and AdamW (rounded to nearest, and
with Kahan summation) on the LLM-like and ResNet-like sets, with chunks of 2**22, 2**23 and 2**24 elements: step time
(median of 12, CUDA events, synchronised) and the temporaries (max_memory_allocated during the steps minus before).

On the GPU machine, from the repository root (wheels as in ../shared/GPU.md):
    python3 bench/foreach_chunks_gpu.py --out $OUT/foreach_chunks.md
"""
import argparse, datetime, gc, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
from fastoptim.all import SGD, Adam
from fastoptim.core import backends
from shapes import llm_shapes, resnet50_shapes
from timing import median_ms, write_report
ap = argparse.ArgumentParser(); ap.add_argument('--out', default=None); args = ap.parse_args()
fe, rows = backends['foreach'], []
for set_name, shapes in (('llm', llm_shapes()), ('resnet', resnet50_shapes())):
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, device='cuda').mul_(0.02).bfloat16()); p.grad = torch.randn(s, device='cuda').bfloat16(); ps.append(p)
    for algo, make in (('sgd', lambda k: SGD(ps, 1e-2, mom=0.9, wd=1e-2, decouple_wd=False, foreach=True, kahan_sum=k)),
                       ('adamw', lambda k: Adam(ps, 1e-2, wd=1e-2, foreach=True, kahan_sum=k))):
        for kahan in (False, True):
            for narrow in (2**22, 2**23, 2**24):
                fe.narrow_chunk_numel = {'cuda': narrow, 'cpu': 2**18}
                opt = make(kahan)
                opt.step(); torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
                ms = median_ms(opt.step, 12, torch.device('cuda'), warmup=2)
                extra = (torch.cuda.max_memory_allocated() - base) / 2**20
                rows.append(f'| {set_name} | {algo} | {"Kahan" if kahan else "nearest"} | 2^{narrow.bit_length() - 1} | {ms:.2f} | {extra:.0f} |')
                print(rows[-1], flush=True)
                del opt; gc.collect(); torch.cuda.empty_cache()
    del ps; gc.collect(); torch.cuda.empty_cache()
lines = [f'# foreach backend, 16-bit chunk length: {torch.cuda.get_device_name()}', '',
         f'{datetime.date.today()}; torch {torch.__version__}; command: `python3 bench/foreach_chunks_gpu.py`', '',
         '| set | algo | rounding | chunk elements | ms | extra MiB |', '|---|---|---|---|---|---|', *rows]
write_report('\n'.join(lines), args.out)
