"""DDP and FSDP2 in two processes (gloo, on the CPU) against one process that sees the same global batch:
every algorithm, every backend on the representative ones, gradient release, optimizer accumulation, bf16,
fastai `Learner`s under `distrib_ctx` (DDP through accelerate) and `sharded_ctx` (FSDP2), and the refusals.

The two processes are started once for the module and run every case; each returns its weights (whole
tensors, gathered from the shards), and the tests compare them with each other and with the one-process run,
computed here. Triton runs in its CPU interpreter."""
import os
os.environ.setdefault('TRITON_INTERPRET', '1')

import socket, tempfile, traceback, warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastoptim.all  # registers every backend
from fastoptim.all import adam, muon
from fastoptim.core import algorithms
from fastoptim.distributed import shard_model, ShardedDL
from fastoptim.gradient_release import prepare_for_gradient_release, GradientRelease, OptimizerAccumulation
from fastoptim.bf16 import BF16

WORLD = 2

# ----------------------------------------------------------------------------------------------------------
# The cases: a plain loop (`Loop`) or a fastai Learner (`Fit`), each run in one process and in two

@dataclass(frozen=True)
class Loop:
    algo: str
    mode: str                  # 'ddp' (DDP, gradients copied to .grad), 'ddp_view' (gradient_as_bucket_view), 'fsdp',
                               # 'dp' (no wrapper: gradient release averages each group, data_parallel=True)
    backend: str = 'foreach'
    release: bool = False      # gradient release, with groups of 64 bytes (several per pass)
    micro: int = 1             # micro-batches folded by optimizer accumulation per step (1: none)
    dtype: str = 'float32'
    options: tuple = ()        # more optimizer arguments, as (name, value) pairs
    def name(self): return '-'.join(str(v) for v in (self.algo, self.mode, self.backend, 'release' * self.release,
                                                   f'micro{self.micro}' * (self.micro > 1), self.dtype, *self.options) if v)

@dataclass(frozen=True)
class Fit:
    mode: str                  # 'ddp': fastai's distrib_ctx; 'fsdp': sharded_ctx
    callbacks: tuple = ()      # 'release', 'accumulate', 'bf16'
    opt: str = 'adam'          # 'adam', or 'muon' (its orthogonalisation divided over the processes)
    def name(self): return '-'.join(('fit', self.mode, *self.callbacks, *(() if self.opt == 'adam' else (self.opt,))))

def whole_matrices(algo):
    "Whether `algo` applies a matrix function (Muon's orthogonalisation) or keeps factored states (Adafactor's row and column means), which FSDP2's shards cannot take"
    a = algorithms[algo].algorithm
    return any(x.plan().workspace or x.plan().factored for x in getattr(a, 'algorithms', {None: a}).values())

# every algorithm, elementwise or not; Muon in fp32 so that the order the processes average in stays below its iteration's rounding
OPTIONS = {'Muon': (('ns_dtype', 'fp32'),)}
LOOPS = [Loop(a, m, options=OPTIONS.get(a, ())) for a in algorithms for m in ('ddp', 'fsdp') if not (m == 'fsdp' and whole_matrices(a))]
LOOPS += [Loop('Muon', 'ddp', b, options=(('ns_dtype', 'fp32'), ('data_parallel', True))) for b in ('triton', 'foreach')]  # divided
LOOPS += [Loop('Muon', 'ddp_view', release=True, options=(('ns_dtype', 'fp32'),))]
LOOPS += [Loop(a, 'fsdp', b) for a in ('Adam', 'Lamb') for b in ('forloop', 'jit', 'triton')]  # LAMB: a reduction per tensor
LOOPS += [Loop('Lamb', 'ddp', 'triton'), Loop('Adam', 'fsdp', 'foreach', options=(('cautious', True),))]
LOOPS += [Loop(a, m, release=True) for a in ('Adam', 'Lamb') for m in ('ddp', 'ddp_view', 'fsdp')]
LOOPS += [Loop('Lamb', 'fsdp', 'triton', release=True), Loop('Adam', 'ddp_view', 'triton', release=True)]
LOOPS += [Loop(a, 'dp', b, release=True) for a, b in (('Adam', 'foreach'), ('Lamb', 'foreach'), ('Adam', 'triton'))]
LOOPS += [Loop('Adam', 'dp', release=True, micro=2), Loop('Adam', 'dp', release=True, dtype='bfloat16')]
LOOPS += [Loop('Adam', m, micro=2) for m in ('ddp', 'fsdp')] + [Loop('Adam', 'ddp_view', release=True, micro=2)]
LOOPS += [Loop('Adam', m, b, dtype='bfloat16') for m in ('ddp', 'fsdp') for b in ('foreach', 'triton')]
LOOPS += [Loop('Adam', 'fsdp', 'triton', dtype='bfloat16', options=(('stochastic_rounding', True),))]
LOOPS += [Loop('Adam', 'fsdp', b, dtype='bfloat16', options=(('master_weight_bits', 24), ('state_bits', 8))) for b in ('foreach', 'triton')]
LOOPS += [Loop('Adam', 'ddp', 'triton', micro=2, options=(('state_bits', 8),))]
LOOPS += [Loop('Lamb', 'ddp', 'triton', release=True, dtype='bfloat16', options=(('master_weight_bits', 32),))]
FITS = [Fit(m, cbs) for m in ('ddp', 'fsdp') for cbs in ((), ('release',), ('accumulate',), ('bf16',), ('release', 'accumulate'))]
FITS += [Fit('ddp', (), 'muon')]
CASES = {c.name(): c for c in LOOPS + FITS}
TOLERANCE = {'float32': 1e-5, 'bfloat16': 2e-2}  # relative to the weights: the processes average in another order

def small_model(dtype='float32'):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 5), nn.ReLU(), nn.Linear(5, 1)).to(getattr(torch, dtype))

def global_batches(steps=3, micro=1, bs=8):
    "Each step's micro-batches of `bs` samples, the same in every process"
    g = torch.Generator().manual_seed(1)
    return [[(torch.randn(bs, 6, generator=g), torch.randn(bs, 1, generator=g)) for _ in range(micro)] for _ in range(steps)]

def whole(model):
    "The model's weights as whole fp32 tensors on the CPU (gathered from the shards of a sharded model)"
    return [(p.full_tensor() if hasattr(p, 'full_tensor') else p).detach().float().clone() for p in model.parameters()]

def run_loop(case, rank=0, world=1):
    "Train the case's model for three steps on this process's part of each global micro-batch; its weights, and whether release freed every gradient during backward"
    dtype = getattr(torch, case.dtype)
    model = small_model(case.dtype)
    if case.mode == 'fsdp' and world > 1: wrapped = shard_model(model)
    elif case.mode.startswith('ddp') and world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=case.mode == 'ddp_view', bucket_cap_mb=1e-4)
    else: wrapped = model
    if case.mode == 'dp' and rank == 1:
        with torch.no_grad():  # release's data_parallel broadcasts process 0's weights: this must not survive
            for p in model.parameters(): p.add_(1)
    options = {k: v for k, v in case.options if not (k == 'data_parallel' and world == 1)}  # one process divides nothing
    opt = algorithms[case.algo](list(model.parameters()), lr=1e-2, wd=0.1, **{case.backend: True}, **options)
    opt.train()  # a schedule-free optimizer starts with its evaluation weights in place
    if case.release:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # DDP without bucket views: the warning that release frees nothing there
            prepare_for_gradient_release(wrapped, opt, group_bytes=64, data_parallel=case.mode == 'dp' and world > 1)
    freed = True
    for micro_batches in global_batches(micro=case.micro):
        for j, (x, y) in enumerate(micro_batches):
            n = len(x) // world
            x, y = x[rank * n:(rank + 1) * n].to(dtype), y[rank * n:(rank + 1) * n].to(dtype)
            if case.micro > 1: opt.accumulate(1 / case.micro, j == case.micro - 1)
            ((wrapped(x) - y) ** 2).mean().backward()
            if case.release: freed &= all(p.grad is None for p in model.parameters())
            opt.step(); opt.zero_grad()
    return whole(model), freed

def fit_data(world):
    "Items ordered so that one process's batch i of 16 holds what batch i of each of `world` processes holds (8 each)"
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g)
    if world == 1:  # DistributedDL gives process r the items [32r, 32r + 32): interleave them by batches of 8
        order = torch.tensor([h * 32 + b * 8 + k for b in range(4) for h in range(2) for k in range(8)])
        x, y = x[order], y[order]
    return x, y

def run_fit(case, rank=0, world=1):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    import fastai.callback.schedule, fastai.distributed, fastoptim.distributed
    x, y = fit_data(world)
    ds = list(zip(x, y))
    bs = 16 // world
    dls = DataLoaders(DataLoader(ds, bs=bs), DataLoader(ds[:16], bs=bs), device='cpu')
    cbs = {'release': GradientRelease(group_bytes=64), 'accumulate': OptimizerAccumulation(2 * bs),  # two micro-batches: n_acc counts one process's samples, as fastai's does
           'bf16': BF16()}
    opt_func = adam(foreach=True, wd=0.1) if case.opt == 'adam' else muon(foreach=True, wd=0.1, ns_dtype='fp32', data_parallel=world > 1)
    learn = Learner(dls, small_model(), loss_func=nn.MSELoss(), opt_func=opt_func,
                    cbs=[cbs[c] for c in case.callbacks])
    with learn.no_bar(), learn.no_logging():
        if world == 1: learn.fit_one_cycle(2, 1e-2)
        elif case.mode == 'ddp':
            with learn.distrib_ctx(cpu=True): learn.fit_one_cycle(2, 1e-2)  # accelerate runs several CPU processes only if told
        else:
            with learn.sharded_ctx(): learn.fit_one_cycle(2, 1e-2)
    return whole(learn.model), True

def run_case(case, rank=0, world=1):
    return (run_loop if isinstance(case, Loop) else run_fit)(case, rank, world)

# ----------------------------------------------------------------------------------------------------------
# The two processes

def refusals(rank):
    "What must be refused in two processes, each as the error's text (or None if nothing was raised)"
    out = {}
    model = small_model()
    opt = adam(list(model.parameters()), foreach=True)
    prepare_for_gradient_release(model, opt)  # before DDP wraps it: its hooks would see unreduced gradients
    ddp = nn.parallel.DistributedDataParallel(model)
    before = whole(model)
    try: ddp(torch.randn(4, 6)).sum().backward(); out['release before DDP'] = None
    except RuntimeError as e: out['release before DDP'] = str(e)
    out['release before DDP changed nothing'] = all(torch.equal(a, b) for a, b in zip(before, whole(model)))
    sharded = shard_model(small_model())
    opt = muon(list(sharded.parameters()), foreach=True)
    sharded(torch.randn(4, 6)).sum().backward()
    try: opt.step(); out['Muon on shards'] = None
    except RuntimeError as e: out['Muon on shards'] = str(e)
    sharded = shard_model(small_model())
    opt = algorithms['Adafactor'](list(sharded.parameters()), foreach=True)
    sharded(torch.randn(4, 6)).sum().backward()
    try: opt.step(); out['Adafactor on shards'] = None
    except RuntimeError as e: out['Adafactor on shards'] = str(e)
    ps = [torch.randn(8 + rank, 6, requires_grad=True)]  # the processes step different parameters: dividing would mix them
    opt = muon(ps, foreach=True, data_parallel=True)
    ps[0].grad = torch.ones_like(ps[0])
    try: opt.step(); out['Muon divided over different parameters'] = None
    except RuntimeError as e: out['Muon divided over different parameters'] = str(e)
    out['refused before any change'] = opt.state[ps[0]] == {}
    return out

def divided(rank):
    "The matrices each process orthogonalises in one Muon step of four 8×6 matrices: (with the work divided, without)"
    from fastoptim.muon import newton_schulz_fp32, newton_schulz
    counted = []
    def counting(stack, **kw):
        counted.append(len(stack))
        return newton_schulz(stack, **kw)
    object.__setattr__(newton_schulz_fp32, 'apply', counting)  # the function the engine calls, counting its matrices
    try:
        out = []
        for data_parallel in (True, False):
            counted.clear()
            ps = [torch.randn(8, 6, requires_grad=True) for _ in range(4)]
            opt = muon(ps, foreach=True, ns_dtype='fp32', data_parallel=data_parallel)
            for p in ps: p.grad = torch.ones_like(p)
            opt.step()
            out.append(sum(counted))
        return out
    finally: object.__setattr__(newton_schulz_fp32, 'apply', newton_schulz)

def resumed(rank, out_dir, backend, dtype='float32', **options):
    "FSDP2, three steps of Lamb uninterrupted, and the same with a DCP checkpoint after two loaded into a new model and optimizer"
    from fastoptim.distributed import save_checkpoint, load_checkpoint
    def fresh():
        model = shard_model(small_model(dtype))
        return model, algorithms['Lamb'](list(model.parameters()), lr=1e-2, wd=0.1, **options, **{backend: True})
    def train(model, opt, batches):
        for [(x, y)] in batches:
            n = len(x) // WORLD
            out = model(x[rank * n:(rank + 1) * n].to(getattr(torch, dtype))).float()
            ((out - y[rank * n:(rank + 1) * n]) ** 2).mean().backward()
            opt.step(); opt.zero_grad()
    batches = global_batches()
    model, opt = fresh(); train(model, opt, batches)
    uninterrupted = whole(model)
    model, opt = fresh(); train(model, opt, batches[:2])
    path = Path(out_dir) / f"checkpoint-{backend}-{dtype}{'-compressed' * bool(options)}"
    save_checkpoint(path, model, opt)
    model, opt = fresh()
    load_checkpoint(path, model, opt)
    train(model, opt, batches[2:])
    return uninterrupted, whole(model)

def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    from fastai.distributed import DistributedDL
    DistributedDL._broadcast = ShardedDL._broadcast  # fastai's sends the batch order through CUDA; the CPU has none
    results = {}
    for name, case in CASES.items():
        try: results[name] = run_case(case, rank, WORLD)
        except Exception: results[name] = traceback.format_exc()
        dist.barrier()
    for backend in ('foreach', 'triton'):
        try: results[f'resumed-{backend}'] = resumed(rank, out_dir, backend)
        except Exception: results[f'resumed-{backend}'] = traceback.format_exc()
        # compressed state: an int8 master residual and 8-bit moments (saved as fp32 values: see `state_of_shards`)
        try: results[f'resumed-{backend}-compressed'] = resumed(rank, out_dir, backend, 'bfloat16', master_weight_bits=24, state_bits=8)
        except Exception: results[f'resumed-{backend}-compressed'] = traceback.format_exc()
    try: results['refusals'] = refusals(rank)
    except Exception: results['refusals'] = traceback.format_exc()
    try: results['divided'] = divided(rank)
    except Exception: results['divided'] = traceback.format_exc()
    torch.save(results, Path(out_dir) / f'rank{rank}.pt')
    dist.destroy_process_group()

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@pytest.fixture(scope='module')
def ranks():
    "Each process's results, by case"
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(free_port(), tmp), nprocs=WORLD, join=True)
        return [torch.load(Path(tmp) / f'rank{r}.pt', weights_only=False) for r in range(WORLD)]

# ----------------------------------------------------------------------------------------------------------
# The tests

@pytest.mark.parametrize('name', list(CASES))
def test_against_one_process(ranks, name):
    "Every process ends with the same weights, and with those of one process that saw the same global batches"
    case = CASES[name]
    for r in ranks:
        assert not isinstance(r[name], str), r[name]
    (first, freed0), (second, freed1) = ranks[0][name], ranks[1][name]
    for a, b in zip(first, second): assert torch.equal(a, b)
    expected, _ = run_case(case)
    tol = TOLERANCE['bfloat16' if (isinstance(case, Loop) and case.dtype == 'bfloat16') or 'bf16' in getattr(case, 'callbacks', ()) else 'float32']
    for a, e in zip(first, expected):
        assert (a - e).abs().max() <= tol * e.abs().max().clamp(min=1e-3), (name, (a - e).abs().max(), e.abs().max())
    if isinstance(case, Loop) and case.release: assert freed0 and freed1, 'release left gradients after backward'

def test_release_prepared_before_ddp_is_refused(ranks):
    for r in ranks:
        assert not isinstance(r['refusals'], str), r['refusals']
        assert 'nothing reduces' in r['refusals']['release before DDP']
        assert r['refusals']['release before DDP changed nothing']

@pytest.mark.parametrize('case', ['foreach', 'triton', 'foreach-compressed', 'triton-compressed'])
def test_sharded_checkpoint_resumes(ranks, case):
    "A run saved with torch.distributed.checkpoint after two steps and loaded into a new model and optimizer continues as the uninterrupted run (with compressed state too)"
    for r in ranks:
        assert not isinstance(r[f'resumed-{case}'], str), r[f'resumed-{case}']
        uninterrupted, resumed = r[f'resumed-{case}']
        for a, b in zip(uninterrupted, resumed): assert torch.equal(a, b)

def test_whole_matrices_on_shards_are_refused(ranks):
    for r in ranks:
        assert not isinstance(r['refusals'], str), r['refusals']
        assert 'whole matrices' in r['refusals']['Muon on shards']
        assert 'rows and columns of whole matrices' in r['refusals']['Adafactor on shards']

def test_muon_divided_over_different_parameters_is_refused(ranks):
    for r in ranks:
        assert 'step different parameters' in r['refusals']['Muon divided over different parameters']
        assert r['refusals']['refused before any change']

def test_muon_divides_the_orthogonalisation(ranks):
    "Under DDP each process orthogonalises half of the four matrices, and all four with data_parallel=False"
    for r in ranks:
        assert not isinstance(r['divided'], str), r['divided']
        assert r['divided'] == [2, 4]
