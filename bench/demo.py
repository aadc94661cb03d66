"""fastoptim demo: train a small fastai model on scikit-learn's digits with the default backend, then time
`opt.step()` for every fastoptim backend against fastai's native Adam and torch.optim's AdamW.

Run from the repository root: `bash tools/demo.sh` (installs what it needs), or `python bench/demo.py`."""
import argparse, math, os, platform, sys, time, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
from torch import nn
from fastai.basics import Learner, DataLoaders, CrossEntropyLossFlat, accuracy, set_seed
import fastai.callback.schedule
from fastai.optimizer import Adam as FastaiAdam
from fastoptim.all import Adam, adam
from fastoptim.core import backends
from shapes import resnet50_shapes


def digits_learner(opt_func, seed=42):
    "A fastai Learner for an MLP on the 8x8 digits that ship with scikit-learn"
    from sklearn.datasets import load_digits
    set_seed(seed, reproducible=True)
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    train, valid = idx[:split], idx[split:]
    dls = DataLoaders.from_dsets(list(zip(x[train], y[train])), list(zip(x[valid], y[valid])), bs=64, device='cpu')
    model = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=opt_func)


def make_params(shapes, device, dtype, seed=0):
    "Parameters of the given shapes with random gradients (never zeros: zeros flatter some kernels)"
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = nn.Parameter(torch.randn(s, generator=g).mul_(0.02).to(device, dtype))
        p.grad = torch.randn(s, generator=g).to(device, dtype)
        params.append(p)
    return params


def implementations(device):
    "name -> optimizer constructor over a list of parameters (AdamW, lr 1e-3, wd 1e-2, fastai's defaults)"
    hp = dict(lr=1e-3, wd=1e-2)
    torch_hp = dict(lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.99), eps=1e-5)
    impls = {f'fastoptim {b}': (lambda ps, b=b: Adam(ps, **hp, **{b: True})) for b in ('forloop', 'foreach', 'jit', 'triton')}
    impls['fastai native Adam'] = lambda ps: FastaiAdam(ps, **hp)
    impls['torch AdamW for-loop'] = lambda ps: torch.optim.AdamW(ps, foreach=False, **torch_hp)
    impls['torch AdamW foreach'] = lambda ps: torch.optim.AdamW(ps, foreach=True, **torch_hp)
    impls['torch AdamW fused'] = lambda ps: torch.optim.AdamW(ps, fused=True, **torch_hp)
    return impls


def why_not(name, device, dtype):
    "Why an implementation cannot run here, or None"
    if name == 'fastoptim triton':
        return backends['triton'].check(device, dtype) and ('needs CUDA' if device.type == 'cpu' else 'unavailable')
    return None


def time_step(opt, device, warmup, reps):
    "Median milliseconds of `opt.step()`"
    for _ in range(warmup): opt.step()
    times = []
    if device.type == 'cuda':
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); opt.step(); end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter(); opt.step(); times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--reps', type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    print('1. Training an MLP on the digits with opt_func=adam() (the default backend for the device)\n')
    learn = digits_learner(adam())
    learn.fit_one_cycle(args.epochs, 1e-2)
    acc = learn.validate()[1]
    print(f'\nvalidation accuracy {acc:.4f}; optimizer: {learn.opt!r}\n')

    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    sets = [('digits MLP', [tuple(p.shape) for p in learn.model.parameters()]), ('ResNet-50-like', resnet50_shapes())]
    print(f'2. opt.step() time, AdamW (fastai defaults), fp32, on {device.type}: '
          f'{torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}. Median of {args.reps} steps after warm-up, '
          f'{"CUDA events" if device.type == "cuda" else "wall clock"}.\n')
    rows = {}
    for set_name, shapes in sets:
        n = sum(math.prod(s) for s in shapes)
        for name, make in implementations(device).items():
            reason = why_not(name, device, torch.float32)
            if reason: rows.setdefault(name, {})[set_name] = reason; continue
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                opt = make(make_params(shapes, device, torch.float32))
                rows.setdefault(name, {})[set_name] = time_step(opt, device, warmup=2, reps=args.reps)
        sets_info = f'{len(shapes)} tensors, {n / 1e6:.2f}M params'
        rows.setdefault('_info', {})[set_name] = sets_info

    names = [s for s, _ in sets]
    header = "| implementation | " + ' | '.join(f'{s} ({rows["_info"][s]}) ms' for s in names) + ' |'
    print(header)
    print('|' + '---|' * (len(names) + 1))
    base = rows['fastai native Adam']
    for name, r in rows.items():
        if name == '_info': continue
        cells = []
        for s in names:
            v = r[s]
            cells.append(v if isinstance(v, str) else f'{v:.3f} ({base[s] / v:.1f}x fastai)')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
