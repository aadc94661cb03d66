"""Misuse, in every backend: edits of the state between steps, autograd's in-place check, refused steps inside
gradient release, bad hypers and parameters; then a fuzz test of random valid and invalid operations against
the for-loop backend as the oracle.

CI has no GPU, so Triton runs in its CPU interpreter: TRITON_INTERPRET must be set before triton is imported."""
import os
os.environ.setdefault('TRITON_INTERPRET', '1')

import copy, random, time
import numpy as np
import pytest
import torch
from torch import nn

import fastoptim.all  # registers every backend
from fastoptim.all import Adam, Lamb
from fastoptim.core import algorithms
from fastoptim.gradient_release import prepare_for_gradient_release, remove_gradient_release
from fastoptim.low_precision import seed_master_weights
from fastoptim.testing import rel_diff

ALL_BACKENDS = ('forloop', 'foreach', 'jit', 'triton')


def snapshot(opt, params):
    "Copies of the parameters and of every state value, to check that a refused operation changed nothing"
    return ([p.detach().clone() for p in params],
            [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()} for p in params])


def assert_unchanged(opt, params, snap):
    before_params, before_states = snap
    for p, b in zip(params, before_params): assert torch.equal(p, b)
    for p, s in zip(params, before_states):
        assert opt.state[p].keys() == s.keys()
        for k, v in s.items():
            assert torch.equal(opt.state[p][k], v) if isinstance(v, torch.Tensor) else opt.state[p][k] == v


# ----------------------------------------------------------------------------------------------------------
# Edits of the state between steps are seen (fastai's optimizer reads them every step)

def edited_run(backend, edit, dtype=torch.float32, steps=4, reload=False):
    """Adam on two tensors, `edit(opt, params)` before the third step; with `reload`, the edit is made on a new
    optimizer that has just loaded the state: the route on which the state is always read afresh"""
    torch.manual_seed(0)
    ps = [torch.randn(6, 5, dtype=dtype, requires_grad=True), torch.randn(5, dtype=dtype, requires_grad=True)]
    def make(): return Adam(ps, lr=1e-2, wd=0.1, **{backend: True})
    opt = make()
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        for p in ps:  # at fixed addresses, as fastai's zero_grad and backward keep them: the layout is kept
            draw = torch.randn(p.shape, generator=g).to(dtype)
            if p.grad is None: p.grad = draw
            else: p.grad.copy_(draw)
        if i == 2:
            if reload:
                sd = opt.state_dict()
                opt = make(); opt.load_state_dict(sd)
            edit(opt, ps)
        opt.step()
    return opt, ps


def replace_moment(opt, ps): opt.state[ps[0]]['grad_avg'] = torch.full((6, 5), 0.5)
def no_decay(opt, ps): opt.state[ps[0]]['do_wd'] = False
def restart_count(opt, ps): opt.state[ps[1]]['step'] = 0
def new_state(opt, ps): opt.state[ps[0]] = {}
def kahan_from_fp32(opt, ps): seed_master_weights(opt, [p.detach().float() + 1e-3 for p in ps])
EDITS = dict(replace_moment=replace_moment, no_decay=no_decay, restart_count=restart_count, new_state=new_state,
             kahan_from_fp32=kahan_from_fp32)


@pytest.mark.parametrize('backend', ALL_BACKENDS)
@pytest.mark.parametrize('edit', list(EDITS))
def test_state_edits_are_seen(edit, backend):
    "An edit between steps acts as it does on a freshly loaded state (seed_master_weights after steps once gave Triton garbage)"
    dtype = torch.bfloat16 if edit == 'kahan_from_fp32' else torch.float32
    expected_opt, expected = edited_run(backend, EDITS[edit], dtype, reload=True)
    opt, ps = edited_run(backend, EDITS[edit], dtype)
    assert rel_diff(ps, expected) == 0.
    for p, q in zip(ps, expected):
        assert opt.state[p]['step'] == expected_opt.state[q]['step']
        assert rel_diff([opt.state[p]['grad_avg']], [expected_opt.state[q]['grad_avg']]) == 0.
    _, unedited = edited_run(backend, lambda opt, ps: None, dtype)
    assert rel_diff(ps, unedited) > 0.  # the edit made a difference


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_step_params_keeps_and_renews_its_buckets(backend):
    "step_params reuses its buckets while they are current, and renews them after a step elsewhere, a state edit or a new gradient"
    def run(mix):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(7))]
        grads = [torch.zeros_like(p) for p in ps]  # the same tensors every step, as DDP's bucket views are
        opt = Adam(ps, lr=1e-2, wd=0.1, **{backend: True})
        gen = torch.Generator().manual_seed(1)
        for step in range(7):
            for p, g in zip(ps, grads): g.copy_(torch.randn(g.shape, generator=gen)); p.grad = g
            if step == 3: opt.state[ps[0]]['grad_avg'] = opt.state[ps[0]]['grad_avg'] * 0.5
            if step == 5: ps[1].grad = grads[1] = grads[1].clone()
            if mix and step % 3 != 1: opt.step_params(ps)
            else: opt.step()
        return opt, ps
    opt, mixed = run(True)
    _, plain = run(False)
    assert rel_diff(mixed, plain) == 0.
    assert opt.layout.one_off and [opt.state[p]['step'] for p in mixed] == [7, 7]


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_bad_state_edit_refused_before_any_write(backend):
    for bad, match in [(dict(grad_avg=torch.zeros(2)), r'shape \(2,\)'), (dict(step=-1), '`step`'),
                       (dict(do_wd='no'), 'bool')]:
        opt, ps = edited_run(backend, lambda opt, ps: None, steps=2)
        opt.state[ps[1]].update(bad)  # the second parameter: the first would be written first
        snap = snapshot(opt, ps)
        with pytest.raises((ValueError, TypeError), match=match): opt.step()
        assert_unchanged(opt, ps, snap)


# ----------------------------------------------------------------------------------------------------------
# Autograd's in-place check sees every backend's writes

@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_step_bumps_version_counters(backend):
    w = torch.randn(5, requires_grad=True)
    opt = Adam([w], lr=1e-2, **{backend: True})
    loss = (w * w).sum()  # saves w for backward
    loss.backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError, match='modified by an inplace operation'): loss.backward()


# ----------------------------------------------------------------------------------------------------------
# Gradient release: a refused step leaves nothing queued, and no parameter is stepped twice

@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_release_after_refused_step(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = Adam(model.parameters(), lr=1e-2, **{backend: True})
    prepare_for_gradient_release(model, opt, group_bytes=0)
    params = list(model.parameters())
    snap = snapshot(opt, params)
    opt.set_hyper('lr', 1e39)
    with pytest.raises(ValueError, match='finite'): model(torch.randn(3, 4)).sum().backward()
    assert_unchanged(opt, params, snap)
    opt.set_hyper('lr', 1e-2)
    for _ in range(2): model(torch.randn(3, 4)).sum().backward()
    assert [opt.state[p]['step'] for p in params] == [2] * 4
    remove_gradient_release(model)


# ----------------------------------------------------------------------------------------------------------
# Bad hypers and parameters, at construction and between steps

@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_bad_values_refused_before_any_write(backend):
    ps = [torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    opt = Lamb(ps, lr=1e-2, **{backend: True})
    for p in ps: p.grad = torch.randn_like(p)
    opt.step()
    for k, v in [('lr', 1e39), ('lr', -1.), ('eps', float('inf')), ('sqr_mom', 1.)]:
        opt.set_hyper(k, v)
        snap = snapshot(opt, ps)
        with pytest.raises(ValueError, match=k): opt.step()
        assert_unchanged(opt, ps, snap)
        opt.set_hyper(k, dict(lr=1e-2, eps=1e-6, sqr_mom=0.99)[k])
    for bad in (None, torch.tensor(1e-3), np.array(1e-3), 1e39):
        with pytest.raises((TypeError, ValueError), match='`lr`'): Lamb(ps, lr=bad, **{backend: True})
    with pytest.raises(ValueError, match='no parameters'): Lamb([[], []], lr=1e-3, **{backend: True})
    with pytest.raises(ValueError, match='non-leaf'): Lamb([ps[0] * 2], lr=1e-3, **{backend: True})


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_lamb_float64(backend):
    if backend == 'triton': pytest.skip('Triton steps float32, bfloat16 and float16 (float64 is refused in its check)')
    ps = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True)]
    opt = Lamb(ps, lr=1e-2, **{backend: True})
    ps[0].grad = torch.randn_like(ps[0])
    opt.step(); opt.step()
    assert opt.state[ps[0]]['step'] == 2 and ps[0].isfinite().all()


# ----------------------------------------------------------------------------------------------------------
# Fuzz: random sequences of valid and invalid operations, each backend against the for-loop oracle

class Pair:
    "The same model and operations twice: `oracle` (for-loop backend) and `subject` (any backend, changing on loads)"
    def __init__(self, algo, backend, rng):
        self.algo, self.rng, self.ctor = algo, rng, algorithms[algo]
        torch.manual_seed(rng.randrange(2**31))
        self.models = [nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)) for _ in range(2)]
        self.models[1].load_state_dict(self.models[0].state_dict())
        self.opts = [self.make(self.models[0], 'forloop'), self.make(self.models[1], backend)]
        self.release, self.refused = False, 0

    def make(self, model, backend, **kw):
        extra = dict(ns_dtype='fp32') if self.algo == 'Muon' else {}  # see test_matrix: bf16 would round the backends apart
        opt = self.ctor([list(model[0].parameters()), list(model[2].parameters())], lr=slice(1e-3, 1e-2),
                        wd=0.05, **{backend: True}, **extra, **kw)
        opt.train()  # a schedule-free optimizer starts with its evaluation weights in place
        return opt

    @property
    def params(self): return [list(m.parameters()) for m in self.models]

    def train_step(self):
        """A batch on both: backward (which steps the subject, with release on), `step()`, `zero_grad()`.
        If it raises, both must raise the same type, the subject be unchanged, and both left with zeroed gradients"""
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(self.rng.randrange(2**31)))
        snap = snapshot(self.opts[1], self.params[1])
        errors = []
        for opt, model in zip(self.opts, self.models):
            try:
                model(x).pow(2).mean().backward()
                opt.step(); errors.append(None)
            except (ValueError, TypeError, KeyError, RuntimeError) as e: errors.append(type(e))
            opt.zero_grad()
        assert errors[0] == errors[1], f"oracle raised {errors[0]}, subject {errors[1]}"
        if errors[1] is not None:
            assert_unchanged(self.opts[1], self.params[1], snap)
            self.refused += 1
        for m in self.models:  # release steps and frees in backward, and `step()` what it left: no gradient survives
            assert not self.release or all(p.grad is None or not p.grad.any() for p in m.parameters())
        return errors[1]

    def check(self):
        a, b = self.params
        assert rel_diff(b, a) < 1e-5, rel_diff(b, a)
        for p, q in zip(a, b):
            sa, sb = self.opts[0].state[p], self.opts[1].state[q]
            assert {k for k, v in sa.items() if isinstance(v, torch.Tensor)} == {k for k, v in sb.items() if isinstance(v, torch.Tensor)}
            assert sa.get('step', 0) == sb.get('step', 0)
            for k, v in sa.items():
                if isinstance(v, torch.Tensor): assert rel_diff([sb[k]], [v]) < 1e-5, k


def op_step(pair): pair.train_step()

def op_hyper(pair):
    hypers = pair.ctor.hypers
    name = pair.rng.choice(['lr', *[k for k in hypers if k != 'wd']])
    spec = hypers.get(name)
    if pair.rng.random() < 0.3: value = pair.rng.choice([-1., float('nan'), 1e39])  # out of range
    elif name == 'lr': value = pair.rng.uniform(1e-4, 2e-2)
    else: value = spec.default * pair.rng.uniform(0.9, 1.0) if spec.default else pair.rng.uniform(0, 0.1)
    for opt in pair.opts: opt.set_hyper(name, value)
    if pair.train_step() is not None:
        for opt in pair.opts: opt.set_hyper(name, spec.default if spec else 1e-3)

def op_state_edit(pair):
    i = pair.rng.randrange(4)
    kinds = ['do_wd', 'step']
    tensors = [k for k, v in pair.opts[0].state[pair.params[0][i]].items() if isinstance(v, torch.Tensor)]
    kinds += ['tensor'] * bool(tensors) + ['bad_shape'] * bool(tensors)
    kind = pair.rng.choice(kinds)
    if kind == 'do_wd': value = pair.rng.random() < 0.5
    elif kind == 'step': value = pair.rng.randrange(0, 5)
    else: k = pair.rng.choice(tensors)
    state = pair.opts[0].state[pair.params[0][i]]
    number = kind in ('tensor', 'bad_shape') and state[k].dim() == 0  # a number state: a 0-d tensor
    shared = number and pair.ctor.algorithm.states[k].shape == 'shared'
    noise = torch.rand(state[k].shape if kind in ('tensor', 'bad_shape') else (), generator=torch.Generator().manual_seed(pair.rng.randrange(2**31)))
    if number: noise = state[k].detach().cpu() * (0.5 + noise)  # near its value: a number like Prodigy's d sets the scale of every step
    def put(opt, ps, value):
        "`value` as state `k` of parameter i; a shared number in every state that has it (the step makes the copies one tensor)"
        for q in (ps if shared else [ps[i]]):
            if q is ps[i] or k in opt.state[q]: opt.state[q][k] = value.clone()
    for opt, ps in zip(pair.opts, pair.params):
        if kind in ('do_wd', 'step'): opt.state[ps[i]][kind] = value
        elif kind == 'tensor': put(opt, ps, noise)
        else: opt.state[ps[i]][k] = torch.zeros(3)
    if kind == 'bad_shape':
        pair.train_step()  # refused by both, unless the parameter is frozen (its state then is not read)
        for opt, ps in zip(pair.opts, pair.params): put(opt, ps, noise)

def op_save_load(pair):
    backend = pair.rng.choice(ALL_BACKENDS)
    sd = copy.deepcopy(pair.opts[1].state_dict())
    release = pair.release
    if release: op_release(pair)
    pair.opts[1] = pair.make(pair.models[1], backend)
    pair.opts[1].load_state_dict(sd)
    if release: op_release(pair)

def op_freeze(pair):
    n = pair.rng.choice([0, 1])
    for opt in pair.opts: opt.freeze_to(n)

def op_release(pair):
    if pair.release: remove_gradient_release(pair.models[1])
    else:
        try: prepare_for_gradient_release(pair.models[1], pair.opts[1], group_bytes=pair.rng.choice([0, 2**24]))
        except RuntimeError as e:  # Prodigy's sums over every tensor: refused up front
            assert 'sums over every tensor' in str(e), e
            return
    pair.release = not pair.release

OPS = [(op_step, 8), (op_hyper, 2), (op_state_edit, 2), (op_save_load, 1), (op_freeze, 1), (op_release, 1)]


@pytest.mark.parametrize('algo', list(algorithms))
def test_fuzz_against_forloop(algo):
    rng = random.Random(f'fuzz-{algo}')
    start, refused = time.monotonic(), 0
    for sequence in range(3):
        pair = Pair(algo, rng.choice(ALL_BACKENDS[1:]), rng)
        ops = [op for op, weight in OPS for _ in range(weight)]
        for _ in range(40):
            op = rng.choice(ops)
            op(pair)
            pair.check()
        if pair.release: op_release(pair)
        refused += pair.refused
    assert refused > 0, "the sequences must include refused operations"
    assert time.monotonic() - start < 120, "the fuzz test must stay short"
