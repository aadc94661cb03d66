"""Which optimizer? The byte-level GPT of bf16_gpt.py trained with each algorithm of the catalogue, at its authors'
recommended hypers, on the same tokens from the same initial weights: validation curves, step time and optimizer
state per parameter. Pure bf16 weights with Kahan summation (fastoptim's default), Triton backend, warm-up then
cosine learning rate, gradient clipping at 1, no weight decay on biases and LayerNorm gains.

On the GPU machine, from the repository root (wheels from ../shared/gpu/wheels.sh in .whl/):
    python3 bench/which_optimizer.py --steps 400 --out $OUT
CPU dry run: python bench/which_optimizer.py --device cpu --tiny --out /tmp/which
"""
import argparse, datetime, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument('--device', default='cuda')
ap.add_argument('--tiny', action='store_true', help='a 2-layer model, 20 steps, 3 algorithms: for dry runs')
ap.add_argument('--steps', type=int, default=400)
ap.add_argument('--evals', type=int, default=10)
ap.add_argument('--only', default='', help='comma-separated labels to run (default: all)')
ap.add_argument('--out', default=os.environ.get('OUT', 'which_optimizer'))
ap.add_argument('--plot', default=None, help='only draw curves.png (beside it) from this results.json')
ARGS = ap.parse_args()
if ARGS.device == 'cpu': os.environ['TRITON_INTERPRET'] = '1'

import torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import bf16_gpt as g
from fastoptim.all import (Adam, Lamb, RAdam, Ranger, Lion, RMSProp, QHAdam, Adamax, Adan, ADOPT, AdEMAMix, AdamAtan2, SGD, NAdam,
                           Muon, mark_roles, ScheduleFreeAdamW, ScheduleFreeSGD, StableAdamW, Larc, Lars, SimplifiedAdEMAMix, Prodigy,
                           DAdaptAdam, DAdaptLion, Adafactor, to_bf16, seed_master_weights)

# label: (constructor, peak lr, hypers), the hypers those of the paper or the authors' code for language models
def catalogue(steps):
    return {
        'AdamW': (Adam, 1e-3, dict(mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1)),
        'AdamW, cautious': (Adam, 1e-3, dict(mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1, cautious=True)),
        'AdamW, grams': (Adam, 1e-3, dict(mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1, grams=True)),
        'Lion': (Lion, 1e-4, dict(beta1=0.9, beta2=0.99, wd=1.0)),
        'LAMB': (Lamb, 1e-3, dict(mom=0.9, sqr_mom=0.999, eps=1e-6, wd=0.1)),
        'RAdam': (RAdam, 1e-3, dict(mom=0.9, sqr_mom=0.999, eps=1e-8, wd=0.1)),
        'Ranger': (Ranger, 1e-3, dict(mom=0.95, eps=1e-6, wd=0.1)),
        'Adan': (Adan, 1.5e-3, dict(mom=0.98, diff_mom=0.92, sqr_mom=0.99, eps=1e-8, wd=0.02)),
        'ADOPT': (ADOPT, 1e-3, dict(mom=0.9, sqr_mom=0.9999, eps=1e-6, wd=0.1)),
        'AdEMAMix': (AdEMAMix, 1e-3, dict(mom=0.9, sqr_mom=0.999, slow_mom=0.9999, alpha=5., t_warmup=steps, wd=0.1)),
        'Adam-atan2': (AdamAtan2, 1e-3, dict(mom=0.9, sqr_mom=0.95, wd=0.1)),
        'QHAdam': (QHAdam, 1e-3, dict(mom=0.999, sqr_mom=0.999, nu_1=0.7, nu_2=1.0, eps=1e-8, wd=0.1)),
        'Adamax': (Adamax, 2e-3, dict(mom=0.9, inf_mom=0.999, eps=1e-8, wd=0.1)),
        'RMSProp': (RMSProp, 3e-4, dict(sqr_mom=0.99, mom=0., eps=1e-8, wd=0.1)),
        'SGD, Nesterov': (SGD, 3e-1, dict(mom=0.9, nesterov=True, wd=1e-4)),
        'NAdam': (NAdam, 2e-3, dict(mom=0.9, sqr_mom=0.999, eps=1e-8, momentum_decay=4e-3, wd=0.1)),
        # Muon for the blocks' matrices, AdamW (the row above's hypers) for the embedding, positions, gains and biases;
        # Moonlight's RMS-matching scale lets both use AdamW's learning rate
        'Muon + AdamW': (Muon, 1e-3, dict(mom=0.95, rms_match=0.2, adam_mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1)),
        'Muon (aol=True) + AdamW': (Muon, 1e-3, dict(mom=0.95, rms_match=0.2, adam_mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1, aol=True)),
        # schedule-free: a constant lr after the same warm-up (its own `warmup_steps`), the authors' default lr for AdamW;
        # validated on the evaluation weights
        'Schedule-free AdamW': (ScheduleFreeAdamW, 2.5e-3, dict(mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1)),
        'Schedule-free SGD': (ScheduleFreeSGD, 1.0, dict(mom=0.9, wd=1e-4)),
        # the authors' setting: β1 warmed up from 0.9 to 0.99 over the run, no gradient term (α = 0), a 10× smaller lr
        'Simplified AdEMAMix': (SimplifiedAdEMAMix, 1e-4, dict(mom=0.99, min_mom=0.9, t_warmup=steps, sqr_mom=0.95, alpha=0.,
                                                               eps=1e-8, wd=0.1)),
        'StableAdamW': (StableAdamW, 1e-3, dict(mom=0.9, sqr_mom=0.95, eps=1e-6, wd=0.1)),
        # LARS and LARC are large-batch methods for vision, with no recommendation for language models: fastai's trust
        # coefficient, and a learning rate that makes a step about 2% of each tensor's norm
        'LARS': (Lars, 0.1, dict(mom=0.9, trust_coeff=0.02, wd=1e-4)),
        'LARC': (Larc, 0.1, dict(mom=0.9, trust_coeff=0.02, wd=1e-4)),
        # learning-rate-free: lr multiplies the step size d they estimate (1, under the same warm-up and cosine); prodigyopt's
        # advice with a warm-up: safeguard_warmup and Adam's bias correction
        'Prodigy': (Prodigy, 1., dict(mom=0.9, sqr_mom=0.999, wd=0.1, safeguard_warmup=True, bias_correction=True)),
        'D-Adapt Adam': (DAdaptAdam, 1., dict(mom=0.9, sqr_mom=0.999, wd=0.1)),
        'D-Adapt Lion': (DAdaptLion, 1., dict(beta1=0.9, beta2=0.99, wd=1.0)),
        # AdamW's row with Kourkoutas-β: the author's transformer setting (β2 down to 0.88 on spikes, α = 0.93, 350 warm-up steps)
        'Kourkoutas-β AdamW': (Adam, 1e-3, dict(mom=0.9, sqr_mom=0.95, eps=1e-8, wd=0.1, kourkoutas=True, kourkoutas_min=0.88,
                                                 kourkoutas_alpha=0.93, kourkoutas_warmup=350)),
        # the paper's setting: the schedule's lr (peak 1e-2, the paper's cap) caps the relative step min(lr, 1/√t), no weight decay
        'Adafactor': (Adafactor, 1e-2, dict(decay_rate=-0.8, clip_threshold=1., scale_eps=1e-3, wd=0.)),
    }


def plot(results, path):
    "Validation curves, best last value first in the legend, each optimizer its own colour"
    fig, ax = plt.subplots(figsize=(8, 5))
    ranked = sorted(results.items(), key=lambda kv: kv[1]['final_val_loss'])
    colours = plt.get_cmap('tab20')
    for i, (label, r) in enumerate(ranked):
        xs, ys = zip(*r['curve'])
        ax.plot(xs, ys, marker='.o^s'[i % 4], markersize=3, color=colours(i % 20), label=f"{label} ({r['final_val_loss']:.3f})")
    ax.set_xlabel('step'); ax.set_ylabel('validation loss (nats per byte)'); ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
    ax.legend(fontsize=7); fig.tight_layout(); fig.savefig(path, dpi=110)


def main():
    device = torch.device(ARGS.device)
    sys.argv = [sys.argv[0], '--device', ARGS.device] + (['--tiny'] if ARGS.tiny else [])
    args = g.parse_args()
    steps = 20 if ARGS.tiny else ARGS.steps
    train_np, val_np, stats = g.load_stdlib(args.max_files)
    train, val = torch.from_numpy(train_np).to(device), torch.from_numpy(val_np).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, len(train) - args.ctx - 1, (steps, args.batch), generator=gen).to(device)
    val_starts = torch.randint(0, len(val) - args.ctx - 1, (args.val_batches, args.batch), generator=gen).to(device)
    torch.manual_seed(args.seed)
    init = {k: v.clone() for k, v in g.GPT(args.layers, args.d_model, args.heads, args.ctx).state_dict().items()}
    configs = catalogue(steps)
    if ARGS.tiny and not ARGS.only: configs = {k: configs[k] for k in ('AdamW', 'Lion', 'AdEMAMix')}
    if ARGS.only: configs = {k: v for k, v in configs.items() if k in ARGS.only.split(',')}
    backend = 'triton' if device.type == 'cuda' else 'foreach'
    results = {}
    for label, (ctor, lr, hypers) in configs.items():
        g.free(device)
        model = g.GPT(args.layers, args.d_model, args.heads, args.ctx)
        model.load_state_dict(init); model.to(device); to_bf16(model, keep_fp32=())
        if ctor is Muon: mark_roles(model, others=[model.pos])  # the output layer is the embedding's weight (tied)
        params = list(model.parameters())
        schedule_free = ctor in (ScheduleFreeAdamW, ScheduleFreeSGD)
        if schedule_free: hypers = dict(hypers, warmup_steps=max(1, round(args.warmup_frac * steps)))
        opt = ctor(params, lr=lr, **hypers, **{backend: True})
        opt.train()  # a schedule-free optimizer starts with its evaluation weights in place (the others have one set)
        for p in params:
            if p.ndim < 2: opt.state[p]['do_wd'] = False
        seed_master_weights(opt, [init[n] for n, _ in model.named_parameters()])
        every = max(1, steps // ARGS.evals)
        curve, watch, skip = [(0, g.evaluate(model, val, val_starts, args.ctx, False))], g.Stopwatch(device), min(10, steps // 4)
        opt_watch = g.Stopwatch(device)
        args.lr, args.min_lr = lr, lr / 10
        for step, s in enumerate(starts):
            if step == skip: watch.start()
            if not schedule_free: opt.set_hyper('lr', g.lr_at(step, steps, args))
            x, y = g.batch(train, s, args.ctx)
            loss = g.forward_loss(model, x, y, False)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if step >= skip: opt_watch.start()
            opt.step()
            if step >= skip: opt_watch.stop()
            if step == steps - 1: state_bytes = sum(t.nbytes for p in params for t in opt.state[p].values() if isinstance(t, torch.Tensor))
            opt.zero_grad()
            if (step + 1) % every == 0 or step + 1 == steps:
                watch.stop()
                opt.eval()  # the evaluation weights, where they differ
                curve.append((step + 1, g.evaluate(model, val, val_starts, args.ctx, False)))
                opt.train()
                if step + 1 < steps: watch.start()
        n = sum(p.numel() for p in params)
        results[label] = dict(curve=curve, final_val_loss=curve[-1][1], step_ms=watch.total / (steps - skip) * 1e3,
                              opt_step_ms=opt_watch.total / (steps - skip) * 1e3, state_bytes_per_param=state_bytes / n,
                              lr=lr, hypers={k: v for k, v in hypers.items()}, optimizer=repr(opt))
        print(f"{label}: val {curve[-1][1]:.4f}, {results[label]['step_ms']:.1f} ms/step, opt.step {results[label]['opt_step_ms']:.2f} ms, "
              f"state {state_bytes / n:.1f} B/param", flush=True)
        del model, opt, params
    os.makedirs(ARGS.out, exist_ok=True)
    json.dump(results, open(os.path.join(ARGS.out, 'results.json'), 'w'), indent=1)
    plot(results, os.path.join(ARGS.out, 'curves.png'))
    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'
    lines = [f"# Which optimizer? A byte-level GPT, {steps} steps\n",
             f"{datetime.date.today()}, {name}, torch {torch.__version__}; model {args.layers} layers, d {args.d_model}, "
             f"context {args.ctx}, batch {args.batch}; {stats['train_bytes']} training bytes; pure bf16 with Kahan summation, "
             f"backend {backend}; command: `python3 bench/which_optimizer.py --steps {steps}"
             f"{f' --only {ARGS.only!r}' if ARGS.only else ''} --out $OUT`\n",
             '| optimizer | peak lr | final validation loss | ms per training step | ms per opt.step() | optimizer state, bytes per parameter |',
             '|---|---|---|---|---|---|']
    for label, r in sorted(results.items(), key=lambda kv: kv[1]['final_val_loss']):
        lines.append(f"| {label} | {r['lr']:g} | {r['final_val_loss']:.4f} | {r['step_ms']:.1f} | {r['opt_step_ms']:.2f} | "
                     f"{r['state_bytes_per_param']:.1f} |")
    text = '\n'.join(lines)
    print(text)
    open(os.path.join(ARGS.out, 'which_optimizer.md'), 'w').write(text + '\n')


if __name__ == '__main__':
    if ARGS.plot: plot(json.load(open(ARGS.plot)), os.path.join(os.path.dirname(ARGS.plot), 'curves.png'))
    else: main()
