"""The long matrix: every algorithm x backend x weight-decay mode x dtype against the for-loop reference,
fastai's own optimizers, `p.grad` left alone, state_dict round trips across backends, and the error cases.

CI has no GPU, so Triton runs in its CPU interpreter: TRITON_INTERPRET must be set before triton is imported."""
import os
os.environ.setdefault('TRITON_INTERPRET', '1')

import copy, io, subprocess, sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch import nn

import fastai.optimizer as fastai_optim
import fastoptim.all  # registers every backend
from fastoptim.all import SGD, Adam, Lamb, adam
from fastoptim.core import backends, algorithms, refuse_partial_steps
from fastoptim.algorithm import modified
from fastoptim.triton_support import interpreting
from functools import partial
from fastoptim.testing import drive as full_drive, rel_diff, param_groups, accumulation_runs
from fastoptim.low_precision import master_weights
from fastoptim.core import dequantize
# The matrix runs a shorter `drive` than the notebooks (12 steps, a group frozen for steps 4-7): it still
# changes gradients, slices and schedules lr and mom, freezes and unfreezes, and keeps CI's Triton interpreter
# runs short as the catalogue grows; each algorithm notebook runs the full 60 steps against its oracle.
drive = partial(full_drive, steps=12, frozen=(4, 8))

REPO = Path(__file__).resolve().parents[1]
# Every run here keeps lr <= max_lr per group: the decouple_lr warning would mean a test set its hypers wrongly
pytestmark = pytest.mark.filterwarnings('error:lr .* exceeds max_lr:UserWarning')

# ----------------------------------------------------------------------------------------------------------
# The axes of the matrix

# Every registered algorithm (`make_optimizer`), so a new algorithm notebook joins the matrix without editing it
def training(ctor):
    "`ctor`, its optimizer put in training mode (a schedule-free one starts with its evaluation weights in place)"
    def build(*args, **kwargs):
        opt = ctor(*args, **kwargs)
        opt.train()
        return opt
    build.algorithm, build.hypers, build.__name__ = ctor.algorithm, ctor.hypers, ctor.__name__
    return build

ALGOS = {name: (training(ctor), {}) for name, ctor in algorithms.items()}
# LARS/LARC's default trust coefficient (0.02) makes steps so small against the weights that L2's effect on a
# 12-step run falls below what `test_weight_decay_matters` can see: a trust coefficient of 1 keeps the runs telling
ALGOS.update({name: (training(algorithms[name]), dict(trust_coeff=1.)) for name in ('Larc', 'Lars')})
# Muon's orthogonalisation in fp32: in bf16 (its default) it rounds its input, and an fp32 ulp between two backends'
# elementwise passes may round to another bf16 value (the notebook compares bf16 runs at bf16's tolerance)
ALGOS['Muon'] = (training(algorithms['Muon']), dict(ns_dtype='fp32'))
# Prodigy and D-Adaptation scale the step and the decay by d, which starts at d0 = 1e-6 and needs more than a short run
# to grow: starting at 1 keeps the decay visible in `test_weight_decay_matters`
ALGOS.update({name: (training(algorithms[name]), dict(d0=1.)) for name in ('Prodigy', 'DAdaptAdam', 'DAdaptLion')})

def descriptions(ctor):
    "The algorithms a constructor's optimizer runs: its own, or every one of a Hybrid's"
    a = ctor.algorithm
    return list(a.algorithms.values()) if hasattr(a, 'algorithms') else [a]
FASTAI = {  # registry name: (fastai's own optimizer, its extra kwargs), where fastai has the algorithm
    'sgd': (fastai_optim.SGD, {}), 'momentum': (fastai_optim.SGD, dict(mom=0.9)), 'Adam': (fastai_optim.Adam, {}),
    'Lamb': (fastai_optim.Lamb, {}), 'RAdam': (fastai_optim.RAdam, {}),
    'Larc': (fastai_optim.Larc, dict(trust_coeff=1.)), 'Lars': (fastai_optim.Larc, dict(clip=False, trust_coeff=1.)),
}
ALL_BACKENDS = ('forloop', 'foreach', 'jit', 'triton')
BACKENDS = ('foreach', 'jit', 'triton')  # compared against forloop
# `drive` peaks at lr ≈ 1.18e-2 (slice over 3 groups); max_lr sits just above, so decay stays below wd
WD_MODES = {
    'l2':              dict(decouple_wd=False),
    'decoupled':       dict(decouple_wd=True),
    'fully_decoupled': dict(decouple_wd=True, decouple_lr=True, max_lr=slice(1.2e-3, 1.2e-2)),
}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}

# The matrix grows with the catalogue, so it is not a full product. What depends on the algorithm (its generated
# code in each backend, in each dtype) runs for every algorithm; what is the engine's own (the three forms of weight
# decay, rounding, state dicts across backends, sparse gradients, release) runs in full on representative
# algorithms, one for each kind of plan: no state (sgd), one pass (Adam), a per-tensor reduction (Lamb), per-step
# formulas with switches (RAdam), and every algorithm on a reduced set of those axes.
REPRESENTATIVE = ('sgd', 'Adam', 'Lamb', 'RAdam')

def cases(*axes, full=REPRESENTATIVE, reduced):
    "(algo, *axis values): the full product for the representative algorithms, `reduced` (a list of tuples) for the others"
    import itertools
    return [(a, *rest) for a in ALGOS for rest in (itertools.product(*axes) if a in full else reduced)]
TOL = {'fp32': 1e-5, 'bf16': 3e-2}
WD = 0.1
LR = 1e-2


def make(algo, backend, mode='decoupled', wd=WD, lr=slice(LR / 10, LR)):
    "A `make_opt` for `drive`: algorithm `algo` on `backend` in weight-decay `mode`"
    ctor, extra = ALGOS[algo]
    return lambda groups: ctor(groups, lr=lr, wd=wd, **extra, **WD_MODES[mode], **{backend: True})


@lru_cache(maxsize=None)
def reference(algo, mode, dtype_name, wd=WD):
    "The for-loop run of `drive`, shared by the three backends compared against it"
    _, params = drive(make(algo, 'forloop', mode, wd=wd), dtype=DTYPES[dtype_name])
    return tuple(params)


def test_triton_runs_in_the_interpreter():
    assert 'triton' in backends and interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported"


# ----------------------------------------------------------------------------------------------------------
# 2. Each backend against the for-loop reference

@pytest.mark.parametrize('algo,backend,mode,dtype_name',
    cases(BACKENDS, WD_MODES, DTYPES, reduced=[(b, 'decoupled', d) for b in BACKENDS for d in DTYPES]))
def test_backend_matches_forloop(algo, backend, mode, dtype_name):
    opt, actual = drive(make(algo, backend, mode), dtype=DTYPES[dtype_name])
    assert set(opt.backends_used.values()) == {backend}
    expected = reference(algo, mode, dtype_name)
    assert all(p.dtype == DTYPES[dtype_name] for p in actual)
    d = rel_diff(actual, list(expected))
    assert d < TOL[dtype_name], f"{algo}/{backend}/{mode}/{dtype_name}: rel_diff {d:.3g} vs forloop"


MODIFIERS = {'cautious': dict(cautious=True), 'grams': dict(grams=True), 'lookahead': dict(lookahead=True, lookahead_k=4),
             'orthograd': dict(orthograd=True)}

# Every modifier on every algorithm with foreach, and in every backend on algorithms that stand for the kinds of
# plan there are (one pass; a per-tensor reduction; per-step formulas): the generated code differs by plan kind
MODIFIER_CASES = [(a, b) for a in ALGOS if '+' not in a for b in ('foreach',)] + \
                 [(a, b) for a in ('Adam', 'Lamb', 'AdEMAMix') for b in ('jit', 'triton')]

@pytest.mark.parametrize('modifier', list(MODIFIERS))
@pytest.mark.parametrize('algo,backend', MODIFIER_CASES)
def test_modifiers_match_forloop(algo, backend, modifier):
    "Each modifier of the description against the for-loop backend, fp32, decoupled decay (their oracles are in their notebooks)"
    ctor, extra = ALGOS[algo]
    def run(b): return drive(lambda g: ctor(g, lr=slice(LR / 10, LR), wd=WD, **extra, **MODIFIERS[modifier], **{b: True}))
    if modifier != 'orthograd' and any(a.modes for a in descriptions(ctor)):  # it would change the step, not the weights' modes
        with pytest.raises(ValueError, match='would change'): run(backend)
        return
    if modifier in ('cautious', 'orthograd'):
        try: [modified(a, **MODIFIERS[modifier]).plan() for a in descriptions(ctor)]
        except NotImplementedError:  # a sum that needs the update's own (a trust ratio, Prodigy's d) or a matrix function: a third
            # pass; or a projected gradient where the engine factors the plain one's square (Adafactor)
            with pytest.raises(NotImplementedError, match='third pass|projected gradient'): run(backend)
            assert any(a.plan().reduction_kinds or a.plan().workspace or a.plan().factored for a in descriptions(ctor))
            return
    (opt, actual), (_, expected) = run(backend), run('forloop')
    assert modifier in opt.algorithm.name
    d = rel_diff(actual, expected)
    assert d < TOL['fp32'], f"{algo}/{modifier}/{backend}: rel_diff {d:.3g} vs forloop"


ROUNDINGS = {'nearest': dict(kahan_sum=False), 'stochastic': dict(stochastic_rounding=True, seed=3),
             'master32': dict(master_weight_bits=32), 'master24': dict(master_weight_bits=24)}
# compressed master weights are read where the engine reads p (the same code for every algorithm): the representative
# algorithms cover them in every backend; the others run plain and stochastic rounding on Triton
RESIDUALS = {'master32': torch.int16, 'master24': torch.int8}
# the master weights the runs hold, compared: fp32 (int16) or a 24-bit float (int8). Backends differ by fp32's rounding,
# which the 24-bit rounding may turn into one of its units, and an algorithm in two passes (Lamb in foreach and Triton)
# re-reads the bf16 moments its first pass stored, where the one-pass reference uses them unrounded: 6.8e-5 for Lamb
# after 12 steps. Master weights that ignored their residual would be off by bf16's rounding, 2e-3.
MASTER_TOL = {'master32': 1e-4, 'master24': 2e-4}

@lru_cache(maxsize=None)
def bf16_reference(algo, rounding):
    ctor, extra = ALGOS[algo]
    opt, params = drive(lambda g: ctor(g, lr=slice(LR / 10, LR), wd=WD, **extra, forloop=True, **ROUNDINGS[rounding]),
                        dtype=torch.bfloat16)
    return tuple(params), tuple(master_weights(opt).values())

@pytest.mark.parametrize('algo,backend,rounding', cases(BACKENDS, ROUNDINGS, reduced=[('triton', r) for r in ('nearest', 'stochastic')]))
def test_bf16_rounding_modes_match_forloop(algo, backend, rounding):
    "Kahan summation (the bf16 default) is covered above; plain rounding, stochastic rounding and compressed master weights here"
    ctor, extra = ALGOS[algo]
    opt, actual = drive(lambda g: ctor(g, lr=slice(LR / 10, LR), wd=WD, **extra, **{backend: True}, **ROUNDINGS[rounding]),
                        dtype=torch.bfloat16)
    assert not any('kahan_comp' in s for s in opt.state.values())
    expected, expected_master = bf16_reference(algo, rounding)
    d = rel_diff(actual, list(expected))
    assert d < TOL['bf16'], f"{algo}/{backend}/{rounding}: rel_diff {d:.3g} vs forloop"
    if rounding in RESIDUALS:
        assert all(s['master_residual'].dtype == RESIDUALS[rounding] for s in opt.state.values())
        d = rel_diff(list(master_weights(opt).values()), list(expected_master))
        assert d < MASTER_TOL[rounding], f"{algo}/{backend}/{rounding}: master weights rel_diff {d:.3g} vs forloop"


@pytest.mark.parametrize('mode', list(WD_MODES))
@pytest.mark.parametrize('algo', list(ALGOS))
def test_weight_decay_matters(algo, mode):
    "wd=0.1 visibly changes the run, so the matrix above really checks the decay"
    d = rel_diff(list(reference(algo, mode, 'fp32')), list(reference(algo, mode, 'fp32', wd=0.)))
    assert d > 1e-3, f"{algo}/{mode}: wd={WD} changes the run by only {d:.3g}"


# ----------------------------------------------------------------------------------------------------------
# 3. fp32 against fastai's own optimizers (fastai has no decouple_lr); triton is covered through forloop above

@pytest.mark.parametrize('backend', ('forloop', 'foreach', 'jit'))
@pytest.mark.parametrize('mode', ('l2', 'decoupled'))
@pytest.mark.parametrize('algo', list(FASTAI))
def test_matches_fastai(algo, mode, backend):
    fastai_ctor, extra = FASTAI[algo]
    _, expected = drive(lambda groups: fastai_ctor(groups, lr=slice(LR / 10, LR), wd=WD, **extra, **WD_MODES[mode]))
    actual = list(reference(algo, mode, 'fp32')) if backend == 'forloop' else drive(make(algo, backend, mode))[1]
    d = rel_diff(actual, expected)
    assert d < 1e-5, f"{algo}/{backend}/{mode}: rel_diff {d:.3g} vs fastai"


# ----------------------------------------------------------------------------------------------------------
# 4. step() leaves p.grad alone

@pytest.mark.parametrize('algo,backend,mode,dtype_name',
    cases(ALL_BACKENDS, WD_MODES, DTYPES, reduced=[(b, 'l2', 'fp32') for b in ALL_BACKENDS]))  # fp32 and L2: where g could be hit
def test_grad_unchanged(algo, backend, mode, dtype_name):
    dtype = DTYPES[dtype_name]
    groups = param_groups(dtype=dtype)
    params = [p for g in groups for p in g]
    opt = make(algo, backend, mode)(groups)
    opt.state[params[1]]['do_wd'] = False
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in params: p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        before = [p.grad.clone() for p in params]
        opt.step()
        for i, (p, b) in enumerate(zip(params, before)):
            assert torch.equal(p.grad, b), f"{algo}/{backend}/{mode}/{dtype_name}: step() changed the grad of param {i}"
    assert set(opt.backends_used.values()) == {backend}


# ----------------------------------------------------------------------------------------------------------
# 5. state_dict round trip across backends

RT_STEPS = 4

def round_trip_grads(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen) for p in sum(param_groups(), [])] for _ in range(2 * RT_STEPS)]

def run_steps(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs): p.grad = g.clone()
        opt.step()

def new_opt(algo, backend, groups):
    ctor, extra = ALGOS[algo]
    return ctor(groups, lr=slice(1e-3, 1e-2), wd=WD, **extra, **{backend: True})

def clone_groups(groups):
    return [[p.detach().clone().requires_grad_() for p in g] for g in groups]

def state_tensors(opt, params):
    return [t for p in params for k, t in sorted(opt.state[p].items()) if isinstance(t, torch.Tensor)]

@lru_cache(maxsize=None)
def uninterrupted(algo, backend):
    groups = param_groups()
    params = [p for g in groups for p in g]
    opt = new_opt(algo, backend, groups)
    for p in params:
        if p.dim() == 1: opt.state[p]['do_wd'] = False
    run_steps(opt, params, round_trip_grads())
    return [p.detach().clone() for p in params], state_tensors(opt, params), [opt.state[p]['step'] for p in params]

@pytest.mark.parametrize('algo,first,second', cases(ALL_BACKENDS, ALL_BACKENDS, full=('Adam', 'Lamb'),
    reduced=list(zip(ALL_BACKENDS, ALL_BACKENDS[1:] + ALL_BACKENDS[:1]))))  # each backend saves once and loads once
def test_state_dict_round_trip(algo, first, second):
    grads = round_trip_grads()
    groups = param_groups()
    params = [p for g in groups for p in g]
    opt = new_opt(algo, first, groups)
    for p in params:
        if p.dim() == 1: opt.state[p]['do_wd'] = False
    run_steps(opt, params, grads[:RT_STEPS])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)

    groups2 = clone_groups(groups)
    params2 = [p for g in groups2 for p in g]
    opt2 = new_opt(algo, second, groups2)
    opt2.load_state_dict(sd)
    run_steps(opt2, params2, grads[RT_STEPS:])
    assert set(opt2.backends_used.values()) == {second}

    expected, expected_state, expected_steps = uninterrupted(algo, first)
    d = rel_diff([p.detach() for p in params2], expected)
    assert d < 1e-6, f"{algo}: {first} -> {second}: params rel_diff {d:.3g} vs an uninterrupted {first} run"
    ds = rel_diff(state_tensors(opt2, params2), expected_state)
    assert ds < 1e-6, f"{algo}: {first} -> {second}: state rel_diff {ds:.3g} vs an uninterrupted {first} run"
    assert [opt2.state[p]['step'] for p in params2] == expected_steps == [2 * RT_STEPS] * len(params2)


# ----------------------------------------------------------------------------------------------------------
# 6. Errors

def one_param(dtype=torch.float32): return [torch.randn(4, 3, dtype=dtype, requires_grad=True)]

def test_two_backend_flags():
    with pytest.raises(ValueError, match=r"Choose one backend, got foreach=True and jit=True"):
        Adam(one_param(), lr=1e-3, foreach=True, jit=True)
    with pytest.raises(ValueError, match=r"Choose one backend, got forloop=True and triton=True"):
        SGD(one_param(), lr=1e-3, forloop=True, triton=True)
    with pytest.raises(ValueError, match=r"Choose one backend, got foreach=True and jit=True and triton=True"):
        Lamb(one_param(), lr=1e-3, foreach=True, jit=True, triton=True)
    with pytest.raises(ValueError, match=r"Choose one backend, got jit=True and triton=True"):
        adam(jit=True, triton=True)

@pytest.mark.parametrize('algo', [a for a, (ctor, _) in ALGOS.items() if 'mom' in ctor.hypers])
def test_bad_mom(algo):
    ctor, extra = ALGOS[algo]
    with pytest.raises(ValueError, match=r"Hyperparameter `mom`=1\.0 is invalid: it must be in [\[(]0, 1\)"):  # schedule-free: (0, 1)
        ctor(one_param(), lr=1e-3, **{**extra, 'mom': 1.0})

@pytest.mark.parametrize('ctor', [Adam, Lamb])
def test_bad_sqr_mom(ctor):
    with pytest.raises(ValueError, match=r"Hyperparameter `sqr_mom`=1\.0 is invalid: it must be in \[0, 1\)"):
        ctor(one_param(), lr=1e-3, sqr_mom=1.0)

@pytest.mark.parametrize('ctor', [Adam, Lamb])
def test_bad_eps(ctor):
    with pytest.raises(ValueError, match=r"Hyperparameter `eps`=0 is invalid: it must be in \(0, inf\)"):
        ctor(one_param(), lr=1e-3, eps=0)

@pytest.mark.parametrize('algo', list(ALGOS))
def test_bad_lr_and_wd(algo):
    ctor, extra = ALGOS[algo]
    with pytest.raises(ValueError, match=r"Hyperparameter `lr`=-1 is invalid: it must be in \[0, inf\)"):
        ctor(one_param(), lr=-1, **extra)
    with pytest.raises(ValueError, match=r"Hyperparameter `wd`=-1 is invalid: it must be in \[0, inf\)"):
        ctor(one_param(), lr=1e-3, wd=-1, **extra)

@pytest.mark.parametrize('algo', list(ALGOS))
def test_complex_and_integer_params(algo):
    ctor, extra = ALGOS[algo]
    with pytest.raises(TypeError, match=r"complex parameters \(torch\.complex64\) are not supported"):
        ctor([torch.zeros(3, dtype=torch.complex64, requires_grad=True)], lr=1e-3, **extra)
    with pytest.raises(TypeError, match=r"parameters must be floating point, got torch\.int64"):
        ctor([torch.zeros(3, dtype=torch.int64)], lr=1e-3, **extra)

@pytest.mark.parametrize('algo,backend', cases(ALL_BACKENDS, full=('Adam',), reduced=[('foreach',)]))
def test_sparse_grad(algo, backend):
    torch.manual_seed(0)
    emb, lin = nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2)
    params = [emb.weight, *lin.parameters()]
    opt = make(algo, backend)([params])
    for p in params: p.grad = torch.randn_like(p)  # a dense first step, so there is state to protect
    opt.step()
    params_before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy([opt.state[p] for p in params])

    for p in params: p.grad = None
    lin(emb(torch.tensor([1, 3, 3]))).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match=r"sparse gradients are not supported \(use a dense embedding, `sparse=False`\)"):
        opt.step()

    for p, b in zip(params, params_before): assert torch.equal(p.detach(), b)
    for p, sb in zip(params, state_before):
        s = opt.state[p]
        assert s.keys() == sb.keys()
        for k in sb:
            if isinstance(sb[k], torch.Tensor): assert torch.equal(s[k], sb[k]), f"state {k} changed"
            else: assert s[k] == sb[k], f"state {k} changed: {sb[k]} -> {s[k]}"

TRITON_ON_CPU = """
import torch
from fastoptim.all import Adam
from fastoptim.triton_support import interpreting
assert not interpreting()
p = torch.randn(4, 3, requires_grad=True)
auto = Adam([p], lr=1e-3)
p.grad = torch.randn_like(p)
auto.step()
print(repr(auto), flush=True)
opt = Adam([p], lr=1e-3, triton=True)
p.grad = torch.randn_like(p)
opt.step()
"""

def test_triton_on_cpu_without_interpreter():
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    res = subprocess.run([sys.executable, '-c', TRITON_ON_CPU], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0, res.stdout + res.stderr
    assert 'RuntimeError' in res.stderr and 'TRITON_INTERPRET=1' in res.stderr, res.stderr[-3000:]
    assert 'foreach on cpu' in res.stdout, res.stdout  # without the interpreter, no flag means foreach

@pytest.mark.parametrize('algo', list(ALGOS))
def test_auto_backend_on_cpu_is_foreach(algo):
    ctor, extra = ALGOS[algo]
    p = torch.randn(4, 3, requires_grad=True)
    opt = ctor([p], lr=1e-3, **extra)
    p.grad = torch.randn_like(p)
    opt.step()
    assert 'foreach on cpu' in repr(opt), repr(opt)
    assert list(opt.backends_used.values()) == ['foreach']


# ----------------------------------------------------------------------------------------------------------
# Gradient release and optimizer accumulation, through the package's own module (not a notebook's namespace)

@pytest.mark.parametrize('algo,backend,group_bytes', cases(ALL_BACKENDS, (0, 2**24), reduced=[(b, 0) for b in ALL_BACKENDS]))
def test_release_and_accumulation_match_plain_loop(algo, backend, group_bytes):
    from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release
    ctor, extra = ALGOS[algo]
    try: refuse_partial_steps(descriptions(ctor)); whole_steps_only = False
    except RuntimeError: whole_steps_only = True  # sums over every tensor (Prodigy): release refused before it starts
    if whole_steps_only:
        model = nn.Linear(3, 2)
        with pytest.raises(RuntimeError, match='sums over every tensor'):
            prepare_for_gradient_release(model, ctor(model.parameters(), lr=LR, **extra, **{backend: True}))
    try: [a.plan('apply') for a in descriptions(ctor)]; reproducible = True
    except NotImplementedError: reproducible = False
    if not reproducible:  # the description says, or its plan finds, that accumulation cannot reproduce it: refused before any change
        p = torch.randn(3, 2, requires_grad=True); p.grad = torch.randn(3, 2)  # a matrix: Muon steps it
        opt = ctor([p], lr=LR, **extra, **{backend: True}); opt.accumulate(0.5, False)
        with pytest.raises(NotImplementedError, match='Optimizer accumulation cannot reproduce'): opt.step()
        assert opt.state[p] == {}
    def run(release):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
        opt = ctor(model.parameters(), lr=LR, wd=WD, **extra, **{backend: True})
        if release: prepare_for_gradient_release(model, opt, group_bytes)
        g = torch.Generator().manual_seed(1)
        for i in range(8):
            if reproducible: opt.accumulate(0.5, i % 2 == 1)  # else release alone
            model(torch.randn(4, 6, generator=g)).pow(2).mean().backward()
            assert not release or all(p.grad is None for p in model.parameters())
            opt.step(); opt.zero_grad()
        if release: remove_gradient_release(model)
        return [p.detach().clone() for p in model.parameters()]
    if not whole_steps_only: assert rel_diff(run(True), run(False)) == 0.


@pytest.mark.parametrize('algo,backend', [(a, b) for a in ('Adam', 'Lamb') for b in ALL_BACKENDS])
def test_release_and_accumulation_with_compressed_state(algo, backend):
    "bf16 weights with an int8 master residual, 8-bit moments and L2 decay (accumulation's fold reads the master weights and folds into the 8-bit moments): release and accumulation step exactly as the plain loop does, and the compressed state is saved and loaded"
    from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release
    ctor, extra = ALGOS[algo]
    def run(release, reload=False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).bfloat16()
        make = lambda: ctor(model.parameters(), lr=LR, wd=WD, decouple_wd=False, master_weight_bits=24, state_bits=8, **extra,
                            **{backend: True})
        opt = make()
        if release: prepare_for_gradient_release(model, opt)
        g = torch.Generator().manual_seed(1)
        for i in range(8):
            if reload and i == 4:  # a state saved halfway and loaded into a new optimizer
                sd = copy.deepcopy(opt.state_dict())
                opt = make(); opt.load_state_dict(sd)
            opt.accumulate(0.5, i % 2 == 1)
            model(torch.randn(4, 6, generator=g).bfloat16()).float().pow(2).mean().backward()
            opt.step(); opt.zero_grad()
        if release: remove_gradient_release(model)
        assert all(s['master_residual'].dtype == torch.int8 and s['grad_avg'].dtype == torch.int8 and s['sqr_avg'].dtype == torch.uint8
                   for s in opt.state.values())
        return list(master_weights(opt).values())
    plain = run(False)
    assert rel_diff(run(True), plain) == 0.
    assert rel_diff(run(False, reload=True), plain) == 0.


# 8-bit states: every algorithm whose description allows them, in every backend against the reference; the engine's
# part (cutting at whole groups, accumulation, state dicts) on the representative algorithms above and below
EIGHT_BIT = [a for a, (ctor, _) in ALGOS.items() if any(s.quantize for d in descriptions(ctor) for s in d.states.values())]
# backends differ by fp32's rounding, which may move a value across the midpoint between two codes: then by a code
EIGHT_BIT_TOL = {'fp32': 1e-3, 'bf16': TOL['bf16']}

@lru_cache(maxsize=None)
def eight_bit_reference(algo, dtype_name):
    ctor, extra = ALGOS[algo]
    _, params = drive(lambda g: ctor(g, lr=slice(LR / 10, LR), wd=WD, state_bits=8, **extra, forloop=True), dtype=DTYPES[dtype_name])
    return tuple(params)

@pytest.mark.parametrize('algo,backend,dtype_name', [(a, b, d) for a in EIGHT_BIT for b in BACKENDS for d in DTYPES
                                                     if a in REPRESENTATIVE or (b == 'triton' and d == 'bf16')])
def test_8bit_states_match_forloop(algo, backend, dtype_name):
    ctor, extra = ALGOS[algo]
    opt, actual = drive(lambda g: ctor(g, lr=slice(LR / 10, LR), wd=WD, state_bits=8, **extra, **{backend: True}), dtype=DTYPES[dtype_name])
    held = 0
    for p in opt.flat_params:  # each parameter's algorithm (a Hybrid's: Muon's own momentum has no 8-bit form, its AdamW's moments do)
        for k, spec in opt.algorithm_of(p).states.items():
            if spec.dtype == 'q8' and k in opt.state[p]:
                assert opt.state[p][k].dtype == {'signed': torch.int8, 'positive': torch.uint8}[spec.quantize]
                held += opt.state[p][f'{k}_scales'].dtype == torch.bfloat16
    assert held > 0
    d = rel_diff(actual, list(eight_bit_reference(algo, dtype_name)))
    assert d < EIGHT_BIT_TOL[dtype_name], f"{algo}/{backend}/{dtype_name}: rel_diff {d:.3g} vs forloop"
    if dtype_name == 'fp32':  # and 8 bits change the run, a little
        d = rel_diff(actual, list(reference(algo, 'decoupled', 'fp32')))
        assert 0 < d < 0.1, f"{algo}/{backend}: 8-bit states moved the weights {d:.3g} from the full-precision run's"


# an algorithm with states but no moments (SGD with Nesterov momentum, NAdam, schedule-free, ...): accumulation sums the
# gradients, and the step on the last micro-batch reads the sum everywhere, its states too (they once read the last
# micro-batch's gradient)
NO_MOMENTS = [a for a, (ctor, _) in ALGOS.items() if all(d.states and not d.moments and not d.accumulation for d in descriptions(ctor))]

@pytest.mark.parametrize('algo', NO_MOMENTS)
def test_accumulation_without_moments_is_a_step_on_the_sum(algo):
    ctor, extra = ALGOS[algo]
    folded, on_mean = accumulation_runs(lambda groups: ctor(groups, lr=LR, wd=WD, foreach=True, **extra))
    assert rel_diff(folded, on_mean) < 1e-6


# ----------------------------------------------------------------------------------------------------------
# Loaded state checked against the description before anything changes (a smaller state once made Triton
# write past its end)

@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_wrong_shape_state_is_refused(backend):
    ps = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    opt = Adam(ps, lr=LR, **{backend: True})
    for p in ps: p.grad = torch.randn_like(p)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd['state'][0]['grad_avg'] = torch.zeros(2)
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match=r'State `grad_avg` has shape \(2,\), its parameter \(4, 3\)'): opt.load_state_dict(sd)
    assert opt.state[ps[0]]['grad_avg'].shape == (4, 3)
    opt.step()  # still the optimizer it was
    assert all(not torch.equal(p, b) for p, b in zip(ps, before))
    sgd_opt = SGD([p.detach().clone().requires_grad_() for p in ps], lr=LR, **{backend: True})
    with pytest.raises(ValueError, match='another algorithm'): sgd_opt.load_state_dict(opt.state_dict())


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_8bit_state_dicts_convert_and_bad_ones_are_refused(backend):
    "A full-precision state loads into an 8-bit optimizer (quantized) and an 8-bit one into a full-precision optimizer (read back), each continuing within the quantization's error; malformed codes or scales are refused before anything changes"
    def steps(opt, ps, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in ps: p.grad = torch.randn(p.shape, generator=g)
            opt.step()
    torch.manual_seed(0)
    ps = [torch.randn(40, 3, requires_grad=True), torch.randn(70, requires_grad=True)]
    full = Adam(ps, lr=LR, **{backend: True}); steps(full, ps, 3, 1)
    for source, bits in ((full, 8), (None, None)):
        twin = [p.detach().clone().requires_grad_() for p in ps]
        sd = copy.deepcopy(source.state_dict()) if source is not None else copy.deepcopy(eight.state_dict())
        opt = Adam(twin, lr=LR, state_bits=bits, **{backend: True}); opt.load_state_dict(sd); opt.create_state(twin)
        for p, q in zip(twin, ps):
            s = opt.state[p]
            if bits: assert s['grad_avg'].dtype == torch.int8 and s['sqr_avg'].dtype == torch.uint8 and 'grad_avg_scales' in s
            else: assert s['grad_avg'].dtype == torch.float32 and 'grad_avg_scales' not in s
            assert rel_diff([s['grad_avg'].float() if not bits else dequantize(s['grad_avg'], s['grad_avg_scales'], 'signed')],
                            [full.state[q]['grad_avg']]) < 0.01
        if bits: eight = opt
    with pytest.raises(ValueError, match='no state with an 8-bit form'): SGD(ps, lr=LR, state_bits=8, **{backend: True})
    with pytest.raises(ValueError, match='state_bits must be 8'): Adam(ps, lr=LR, state_bits=4, **{backend: True})
    sd = copy.deepcopy(eight.state_dict())
    bad_codes, bad_scales = copy.deepcopy(sd), copy.deepcopy(sd)
    bad_codes['state'][0]['grad_avg'] = bad_codes['state'][0]['grad_avg'].to(torch.uint8)
    bad_scales['state'][0]['sqr_avg_scales'] = bad_scales['state'][0]['sqr_avg_scales'][:2]
    before = copy.deepcopy(eight.state_dict())
    with pytest.raises(TypeError, match='torch.int8 codes'): eight.load_state_dict(bad_codes)
    with pytest.raises(TypeError, match='needs `sqr_avg_scales`'): eight.load_state_dict(bad_scales)
    assert all(torch.equal(a, b) for a, b in zip(eight.state_dict()['state'][0].values(), before['state'][0].values()) if isinstance(a, torch.Tensor))


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_compressed_state_edge_cases(backend):
    "8-bit codes loaded into another memory order keep their values; a residual the new configuration does not keep is dropped; tiny moments quantize to zeros, not NaN; bad options are refused"
    conv = nn.Conv2d(3, 5, 3)
    conv.weight.grad, conv.bias.grad = torch.randn_like(conv.weight), torch.randn_like(conv.bias)
    opt = Adam(conv.parameters(), lr=LR, state_bits=8, **{backend: True})
    for _ in range(2): opt.step()
    sd, before = copy.deepcopy(opt.state_dict()), dequantize(opt.state[conv.weight]['sqr_avg'], opt.state[conv.weight]['sqr_avg_scales'], 'positive')
    conv.to(memory_format=torch.channels_last)  # what fastai's ChannelsLast does to a resumed model
    moved = Adam(conv.parameters(), lr=LR, state_bits=8, **{backend: True})
    moved.load_state_dict(sd); moved.create_state([conv.weight])
    s = moved.state[conv.weight]
    assert s['sqr_avg'].stride() == conv.weight.stride()
    assert rel_diff([dequantize(s['sqr_avg'], s['sqr_avg_scales'], 'positive')], [before]) < 0.02
    p = torch.randn(64, dtype=torch.bfloat16, requires_grad=True); p.grad = torch.randn_like(p)
    master = Adam([p], lr=LR, master_weight_bits=24, **{backend: True}); master.step()
    plain = Adam([p], lr=LR, kahan_sum=False, **{backend: True}); plain.load_state_dict(master.state_dict()); plain.step()
    assert 'master_residual' not in plain.state[p]
    q = torch.randn(64, requires_grad=True); q.grad = torch.full_like(q, 1e-20)  # v = 1e-42: an fp32 subnormal, whose inverse is ∞
    tiny = Adam([q], lr=LR, state_bits=8, **{backend: True}); tiny.step()
    assert q.isfinite().all() and (tiny.state[q]['sqr_avg_scales'] == 0).all()
    with pytest.raises(ValueError, match='must be 32'): Adam([p], lr=LR, master_weight_bits=24.0)
    from fastoptim.algorithm import State
    with pytest.raises(ValueError, match='starts at zero'): State(init='param', quantize='signed')


def test_every_op_in_every_dialect():
    "An op of the description language that one dialect lacks would fail only when some algorithm first used it there"
    from fastoptim.algorithm import TorchDialect, host_ops, reduction_ops
    from fastoptim.foreach import ForeachDialect
    from fastoptim.core import number_ops
    from fastoptim.triton_engine import triton_ops
    elementwise = set(TorchDialect.ops) - {'maximum_s', 'minimum_s'}
    assert elementwise <= set(ForeachDialect.ops) and elementwise <= set(triton_ops), elementwise - set(ForeachDialect.ops) - set(triton_ops)
    numbers = set(host_ops) - set(reduction_ops)
    assert numbers <= set(TorchDialect.device_ops) | {'lerp', 'addcmul', 'addcdiv'}, numbers - set(TorchDialect.device_ops)
    assert set(TorchDialect.device_ops) <= set(number_ops) and set(TorchDialect.device_ops) <= set(triton_ops) | {'pow'}
