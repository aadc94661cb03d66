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


def time_interleaved(opts, device, rounds, reps):
    """Per optimizer, (median over rounds, spread) of `opt.step()` in ms. Each round times `reps` steps of every
    optimizer in turn, the order rotated between rounds, so that a slow spell of a shared machine falls on all of
    them; a round's time is its median step, and the spread is (max - min) / median over the rounds"""
    names = list(opts)
    for opt in opts.values(): opt.step(); opt.step()  # warm-up: state created, code compiled
    per_round = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times = []
            for _ in range(reps):
                if device.type == 'cuda':
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record(); opts[name].step(); end.record(); end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter(); opts[name].step(); times.append((time.perf_counter() - t0) * 1e3)
            per_round[name].append(float(np.median(times)))
    return {k: (float(np.median(v)), (max(v) - min(v)) / float(np.median(v))) for k, v in per_round.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--reps', type=int, default=3)
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
          f'{torch.get_num_threads()} threads, torch {torch.__version__}. {args.rounds} interleaved rounds of '
          f'{args.reps} steps of every implementation, after 2 warm-up steps; each round\'s median step, then the '
          f'median over rounds, {"CUDA events" if device.type == "cuda" else "wall clock"}. "spread": (slowest - '
          f'fastest round) / median, the noise of this machine during the run.\n')
    rows, info = {}, {}
    for set_name, shapes in sets:
        info[set_name] = f'{len(shapes)} tensors, {sum(math.prod(s) for s in shapes) / 1e6:.2f}M params'
        params = make_params(shapes, device, torch.float32)  # one set, stepped by every implementation in turn
        opts = {}
        for name, make in implementations(device).items():
            reason = why_not(name, device, torch.float32)
            if reason: rows.setdefault(name, {})[set_name] = reason; continue
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                opts[name] = make(params)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            for name, result in time_interleaved(opts, device, args.rounds, args.reps).items():
                rows.setdefault(name, {})[set_name] = result
        del opts, params

    names = [s for s, _ in sets]
    print("| implementation | " + ' | '.join(f'{s} ({info[s]}) ms' for s in names) + ' |')
    print('|' + '---|' * (len(names) + 1))
    base = rows['fastai native Adam']
    for name, r in rows.items():
        cells = []
        for s in names:
            v = r[s]
            cells.append(v if isinstance(v, str) else f'{v[0]:.3f} ({base[s][0] / v[0]:.1f}x fastai; spread {v[1]:.0%})')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
