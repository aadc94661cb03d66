"""DDP and FSDP2 on two GPUs, in one call: correctness of every configuration in a fastai Learner, then memory and
step time of gradient release on a decoder-only LM.

Part 1, the table of the distributed issue: a small MLP trained by `fit_one_cycle(2)` under fastai's `distrib_ctx`
(DDP through accelerate) and under fastoptim's `sharded_ctx` (FSDP2), for each backend and callback. Each row says
whether the two processes end with identical weights, and the largest difference from the same configuration run
in one process on the same global batches (each process computes that run too, without communication; for
gradient release, the run without it, which the CPU tests show to be identical).

Part 2: the 0.94B LM of `release_memory.py` (pure bf16, Kahan AdamW, Triton, its loss in 8 checkpointed chunks
inside the model's forward, where DDP's and FSDP2's hooks act) under DDP (gradients copied into
.grad, DDP's default; and `gradient_as_bucket_view=True`) and FSDP2 (each block sharded), each with and without
gradient release, and gradient release averaging the gradients itself without DDP (`data_parallel=True`, mode dp): peak memory above the resident weights and state, the gradient bytes of one process for
reference, and the median time of a training step. Then the optimizer step alone (`opt.step()`, CUDA events) per
backend, under DDP and FSDP2, for Adam and LAMB (LAMB's norms are completed over the shards by one all-reduce).

Run on `nvidia-h200-x2` from the repository root (wheels: ../shared/gpu/wheels.sh accelerate and its dependencies):
    torchrun --nproc_per_node=2 bench/distributed_gpu.py --out $OUT
CPU dry run (gloo, tiny LM): torchrun --nproc_per_node=2 bench/distributed_gpu.py --device cpu --tiny --out /tmp/dg
"""
import argparse, datetime, gc, json, os, platform, statistics, sys, time, traceback, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--tiny', action='store_true', help='tiny LM, for CPU dry runs')
    ap.add_argument('--steps', type=int, default=6, help='measured training steps per LM configuration')
    ap.add_argument('--parts', default='12')
    ap.add_argument('--out', default=os.environ.get('OUT', 'distributed_results'))
    return ap.parse_args()


# ---------------------------------------------------------------- part 1: fastai Learners
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

def fit_data(world):
    "256 items; in one process, ordered so that its batch i of 32 holds what batch i of each of two processes holds"
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(256, 32, generator=g), torch.randn(256, 1, generator=g)
    if world == 1:
        order = torch.tensor([h * 128 + b * 16 + k for b in range(8) for h in range(2) for k in range(16)])
        x, y = x[order], y[order]
    return x, y

ROWS = [  # (name, mode, optimizer, callbacks)
    *[(f'adam({b}=True)', m, ('adam', b), ()) for m in ('ddp', 'fsdp') for b in ('triton', 'foreach', 'jit', 'forloop')],
    *[(f'{a}(triton=True)', m, (a, 'triton'), ()) for m in ('ddp', 'fsdp') for a in ('lamb', 'sgd')],
    ('lamb(foreach=True)', 'fsdp', ('lamb', 'foreach'), ()),
    *[(f'adam(triton=True) + {c}', m, ('adam', 'triton'), (c,)) for m in ('ddp', 'fsdp')
      for c in ('BF16', 'OptimizerAccumulation', 'GradientRelease', 'GradientRelease+OptimizerAccumulation')],
]

def whole(model):
    return [(p.full_tensor() if hasattr(p, 'full_tensor') else p).detach().float().cpu().clone() for p in model.parameters()]

def fit(mode, optimizer, callbacks, world, device):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    import fastai.callback.schedule, fastai.distributed  # noqa: F401
    import fastoptim.distributed  # noqa: F401  (Learner.sharded_ctx)
    from fastoptim.all import adam, lamb, sgd
    from fastoptim.gradient_release import GradientRelease, OptimizerAccumulation
    from fastoptim.bf16 import BF16
    x, y = fit_data(world)
    ds, bs = list(zip(x, y)), 32 // world
    dls = DataLoaders(DataLoader(ds, bs=bs), DataLoader(ds[:64], bs=bs), device=device)
    name, backend = optimizer
    kw = dict(mom=0.9) if name == 'sgd' else {}
    opt_func = dict(adam=adam, lamb=lamb, sgd=sgd)[name](**{backend: True}, wd=0.1, **kw)
    cbs = []
    for c in callbacks:
        for part in c.split('+'):
            cbs.append(dict(BF16=lambda: BF16(), OptimizerAccumulation=lambda: OptimizerAccumulation(4 * bs),
                            GradientRelease=lambda: GradientRelease(group_bytes=4096))[part]())
    learn = Learner(dls, mlp(), loss_func=nn.MSELoss(), opt_func=opt_func, cbs=cbs)
    with learn.no_bar(), learn.no_logging():
        if world == 1: learn.fit_one_cycle(2, 1e-2)
        elif mode == 'ddp':
            with learn.distrib_ctx(cpu=device == 'cpu'): learn.fit_one_cycle(2, 1e-2)
        else:
            with learn.sharded_ctx(): learn.fit_one_cycle(2, 1e-2)
    return whole(learn.model)

def part1(rank, world, device):
    rows = []
    for name, mode, optimizer, callbacks in ROWS:
        row = dict(configuration=name, mode=mode)
        try:
            t = time.perf_counter()
            weights = fit(mode, optimizer, callbacks, world, device)
            row['fit_s'] = time.perf_counter() - t
            gathered = [None] * world
            dist.all_gather_object(gathered, weights)
            row['ranks_identical'] = all(torch.equal(a, b) for a, b in zip(*gathered))
            reference = fit(mode, optimizer, tuple(c.replace('GradientRelease+', '') for c in callbacks if c != 'GradientRelease'), 1, device)
            row['max_abs_diff_vs_one_process'] = max((a - b).abs().max().item() for a, b in zip(weights, reference))
            row['max_abs_weight'] = max(b.abs().max().item() for b in reference)
        except Exception:
            row['error'] = traceback.format_exc()
        dist.barrier()
        rows.append(row)
        if rank == 0: print(row, flush=True)
    return rows


# ---------------------------------------------------------------- part 2: the LM
def lm_args(tiny):
    a = argparse.Namespace(layers=16, d_model=2048, heads=16, mlp=5504, vocab=32000, ctx=1024, batch=4, ckpt=True, offload=False)
    if tiny: a.layers, a.d_model, a.heads, a.mlp, a.vocab, a.ctx, a.batch = 2, 64, 4, 176, 256, 32, 2
    return a

class LossLM(nn.Module):
    "The LM with its loss in its forward (head and cross-entropy over 8 checkpointed token chunks, as `release_memory.py`), so that DDP's and FSDP2's forward hooks see the whole step"
    def __init__(self, lm): super().__init__(); self.lm = lm
    def forward(self, x, y):
        from release_memory import lm_loss
        return lm_loss(self.lm, x, y, 8)

def build_lm(args, device, mode, backend='triton', algo='Adam'):
    from release_memory import LM
    from fastoptim.bf16 import to_bf16
    from fastoptim.core import algorithms
    from fastoptim.distributed import shard_model
    torch.manual_seed(0)
    with torch.device(device):
        model = LossLM(LM(args.layers, args.d_model, args.heads, args.mlp, args.vocab, args.ckpt))
    to_bf16(model, keep_fp32=())
    if mode == 'fsdp': wrapped = shard_model(model, modules=list(model.lm.blocks))
    elif mode == 'dp': wrapped = model  # gradient release averages the gradients itself (data_parallel=True)
    else: wrapped = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=mode == 'ddp_view',
                                                         device_ids=[device.index] if device.type == 'cuda' else None)
    opt = algorithms[algo](list(model.parameters()), lr=1e-4, mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1, **{backend: True})
    return model, wrapped, opt

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def lm_config(args, device, mode, release, steps):
    from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release
    gc.collect()
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
    model, wrapped, opt = build_lm(args, device, mode)
    if release:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # DDP without bucket views: release frees nothing more there, measured here
            prepare_for_gradient_release(wrapped, opt, data_parallel=mode == 'dp')
    g = torch.Generator(device=device).manual_seed(dist.get_rank())
    warmup = 4  # DDP rebuilds its buckets after the first iteration
    data = [torch.randint(0, args.vocab, (args.batch, args.ctx + 1), device=device, generator=g) for _ in range(warmup + steps)]
    times, held, resident = [], [], None
    for i, tokens in enumerate(data):
        if i == warmup:
            sync(device)
            resident = torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0
            if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
        sync(device); t = time.perf_counter()
        wrapped(tokens[:, :-1], tokens[:, 1:]).backward()
        if i >= warmup and device.type == 'cuda': held.append(torch.cuda.memory_allocated(device))  # no sync: the allocator knows
        opt.step(); model.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup: times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else 0
    if release: remove_gradient_release(wrapped)
    local_numel = sum((p.to_local() if hasattr(p, 'to_local') else p).numel() for p in model.parameters())
    out = dict(mode=mode, release=release, resident_gib=resident / 2**30, peak_gib=peak / 2**30,
               peak_above_resident_gib=(peak - resident) / 2**30, grad_gib_this_process=local_numel * 2 / 2**30,
               after_backward_above_resident_gib=(max(held, default=0) - resident) / 2**30,
               step_s=statistics.median(times))
    del model, wrapped, opt
    return out

def opt_step_time(args, device, mode, backend, algo, reps=10):
    "opt.step() alone, median of CUDA events (perf_counter on the CPU), on gradients left by one backward"
    gc.collect()
    if device.type == 'cuda': torch.cuda.empty_cache()
    model, wrapped, opt = build_lm(args, device, mode, backend, algo)
    tokens = torch.randint(0, args.vocab, (args.batch, args.ctx + 1), device=device)
    wrapped(tokens[:, :-1], tokens[:, 1:]).backward()
    times = []
    for i in range(reps + 2):
        sync(device)
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); opt.step(); end.record(); end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t = time.perf_counter(); opt.step(); ms = (time.perf_counter() - t) * 1e3
        if i >= 2: times.append(ms)
    del model, wrapped, opt
    return dict(mode=mode, backend=backend, algo=algo, step_ms=statistics.median(times))

def part2(rank, device, args):
    lm = lm_args(args.tiny)
    memory = []
    for mode, release in [(m, r) for m in ('ddp', 'ddp_view', 'fsdp') for r in (False, True)] + [('dp', True)]:
        try: r = lm_config(lm, device, mode, release, args.steps)
        except Exception: r = dict(mode=mode, release=release, error=traceback.format_exc())
        dist.barrier()
        memory.append(r)
        if rank == 0: print(r, flush=True)
    steps = []
    for mode in ('ddp', 'fsdp'):
        for backend, algo in (('triton', 'Adam'), ('foreach', 'Adam'), ('jit', 'Adam'), ('triton', 'Lamb'), ('foreach', 'Lamb')):
            try: r = opt_step_time(lm, device, mode, backend, algo)
            except Exception: r = dict(mode=mode, backend=backend, algo=algo, error=traceback.format_exc())
            dist.barrier()
            steps.append(r)
            if rank == 0: print(r, flush=True)
    return dict(memory=memory, opt_steps=steps)


# ---------------------------------------------------------------- report
def report(results, args, seconds):
    import fastai, fastoptim, triton
    lines = ['# DDP and FSDP2 on two GPUs', '',
             f"{results['device']} ×2; {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; python "
             f"{platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, fastai {fastai.__version__}, "
             f"fastoptim {fastoptim.__version__}", '',
             f"Command: `torchrun --nproc_per_node=2 bench/distributed_gpu.py {' '.join(sys.argv[1:])}`; whole script {seconds:.0f} s.", '']
    if 'part1' in results:
        lines += ['## Every configuration in a fastai Learner (small MLP, `fit_one_cycle(2)`)', '',
                  'DDP: `Learner.distrib_ctx()` (accelerate); FSDP2: `Learner.sharded_ctx()`. "vs one process": the largest '
                  'absolute difference of a weight from the same configuration in one process on the same global batches '
                  '(largest weight in brackets).', '',
                  '| configuration | mode | ranks identical | vs one process | fit s |', '|---|---|---|---|---|']
        for r in results['part1']:
            if 'error' in r: lines.append(f"| {r['configuration']} | {r['mode']} | **error**: {r['error'].strip().splitlines()[-1][:150]} | | |")
            else: lines.append(f"| {r['configuration']} | {r['mode']} | {'yes' if r['ranks_identical'] else '**no**'} | "
                               f"{r['max_abs_diff_vs_one_process']:.2e} ({r['max_abs_weight']:.2f}) | {r['fit_s']:.1f} |")
        lines.append('')
    if 'part2' in results:
        lines += ['## Gradient release on the 0.94B LM (pure bf16, Kahan AdamW, Triton), per process', '',
                  '"peak above resident": `max_memory_allocated` over the measured steps minus `memory_allocated` after '
                  'four warm-up steps (weights, optimizer state and, under DDP, its gradient buckets); "after backward": '
                  '`memory_allocated` when backward returns, before `opt.step()`: the gradients still held. "gradient": the '
                  "bf16 gradients of this process's parameters (a shard of each under FSDP2).", '',
                  '| mode | release | resident GiB | after backward, above resident GiB | peak GiB | peak above resident GiB | gradient GiB | step s |',
                  '|---|---|---|---|---|---|---|---|']
        for r in results['part2']['memory']:
            if 'error' in r: lines.append(f"| {r['mode']} | {r['release']} | **error**: {r['error'].strip().splitlines()[-1][:150]} | | | | |")
            else: lines.append(f"| {r['mode']} | {r['release']} | {r['resident_gib']:.2f} | {r['after_backward_above_resident_gib']:.2f} | {r['peak_gib']:.2f} | "
                               f"{r['peak_above_resident_gib']:.2f} | {r['grad_gib_this_process']:.2f} | {r['step_s']:.3f} |")
        lines += ['', '## `opt.step()` alone on the LM, per process (median of 10, CUDA events)', '',
                  '| mode | algorithm | backend | ms |', '|---|---|---|---|']
        for r in results['part2']['opt_steps']:
            ms = f"{r['step_ms']:.2f}" if 'step_ms' in r else f"**error**: {r['error'].strip().splitlines()[-1][:150]}"
            lines.append(f"| {r['mode']} | {r['algo']} | {r['backend']} | {ms} |")
    return '\n'.join(lines) + '\n'

def main():
    args = parse_args()
    t0 = time.perf_counter()
    backend = 'nccl' if args.device == 'cuda' else 'gloo'
    rank = int(os.environ['RANK'])
    if args.device == 'cuda':
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
    else: device = torch.device('cpu')
    dist.init_process_group(backend)
    world = dist.get_world_size()
    if args.device == 'cpu':
        from fastai.distributed import DistributedDL
        from fastoptim.distributed import ShardedDL
        DistributedDL._broadcast = ShardedDL._broadcast  # fastai's sends the batch order through CUDA
    results = dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu')
    if '1' in args.parts: results['part1'] = part1(rank, world, str(device))
    if '2' in args.parts: results['part2'] = part2(rank, device, args)
    if rank == 0:
        out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
        (out / 'results.json').write_text(json.dumps(results, indent=1))
        md = report(results, args, time.perf_counter() - t0)
        (out / 'results.md').write_text(md)
        print(md)
    dist.destroy_process_group()

if __name__ == '__main__':
    main()
