"""Where the GPU time of a foreach step goes: fastoptim's foreach backend against torch's foreach optimizers on the
LLM-like set (fp32), total kernel time per step by kernel, from torch.profiler, and the number of kernels launched.

On the GPU machine, from the repository root (wheels as in ../shared/GPU.md):
    python3 bench/profile_foreach.py --out $OUT/profile_foreach.md
"""
import argparse, datetime, os, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
from torch.profiler import profile, ProfilerActivity
from fastoptim.all import SGD, Adam
from shapes import llm_shapes
from timing import write_report

dev = torch.device('cuda')
HP = dict(lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=1e-2)
IMPLS = {
    ('sgd', 'fastoptim-foreach'): lambda ps: SGD(ps, HP['lr'], mom=HP['mom'], wd=HP['wd'], decouple_wd=False, foreach=True),
    ('sgd', 'torch-foreach'): lambda ps: torch.optim.SGD(ps, lr=HP['lr'], momentum=HP['mom'], weight_decay=HP['wd'], foreach=True),
    ('adamw', 'fastoptim-foreach'): lambda ps: Adam(ps, HP['lr'], mom=HP['mom'], sqr_mom=HP['sqr_mom'], eps=HP['eps'], wd=HP['wd'], foreach=True),
    ('adamw', 'torch-foreach'): lambda ps: torch.optim.AdamW(ps, lr=HP['lr'], betas=(HP['mom'], HP['sqr_mom']), eps=HP['eps'],
                                                            weight_decay=HP['wd'], foreach=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    lines = [f'# foreach step profile: {torch.cuda.get_device_name()}', '',
             f'{datetime.datetime.now().isoformat(timespec="seconds")}; torch {torch.__version__}; command: '
             '`python3 bench/profile_foreach.py --out $OUT/profile_foreach.md`; LLM-like set, fp32, 5 profiled steps.', '',
             '| algo | impl | kernels per step | kernel ms per step | top kernels (ms per step) |', '|---|---|---|---|---|']
    g = torch.Generator(device=dev).manual_seed(0)
    for (algo, impl), make in IMPLS.items():
        ps = [torch.nn.Parameter(torch.randn(s, generator=g, device=dev)) for s in llm_shapes()]
        for p in ps: p.grad = torch.randn(p.shape, generator=g, device=dev)
        opt = make(ps)
        for _ in range(3): opt.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5): opt.step()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.key]
        total = sum(e.device_time_total for e in events) / 1e3 / 5
        count = sum(e.count for e in events) / 5
        top = sorted(events, key=lambda e: -e.device_time_total)[:4]
        tops = '; '.join(f'{e.key[:70]} ×{e.count // 5}: {e.device_time_total / 1e3 / 5:.2f}' for e in top)
        lines.append(f'| {algo} | {impl} | {count:.0f} | {total:.2f} | {tops.replace("|", "/")} |')
        print(lines[-1], flush=True)
        del opt, ps
        torch.cuda.empty_cache()
    write_report('\n'.join(lines), args.out)


if __name__ == '__main__':
    main()
