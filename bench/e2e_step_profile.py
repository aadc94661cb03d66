"""Where a fastai `Learner`'s `opt.step()` spends its host time in training (issue 14): the ResNet-50 of
`learner_e2e.py` under bf16 autocast with fastoptim's `adam()`, gradients zeroed in place and set to None, one
warm-up epoch then one epoch with each stage of the step wrapped in a host clock (as `own_graph_host.py` does for
a step alone): how many steps replayed the optimizer's graph, how many captured one, and each stage's median µs.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/e2e_step_profile.py --out $OUT/e2e_step_profile.md
"""
import argparse, os, statistics, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import learner_e2e as e2e
import fastoptim.core as core
from timing import timed

ap = argparse.ArgumentParser()
ap.add_argument('--out', default='e2e_step_profile.md')
ap.add_argument('--batches', type=int, default=40)
args = ap.parse_args()
device = torch.device('cuda')
torch.backends.cudnn.benchmark = True
setup_args = argparse.Namespace(small=False, batches=args.batches)
out = e2e.setup('resnet', setup_args, device)
torch.manual_seed(0)
init = {k: v.clone() for k, v in out[0]().state_dict().items()}


lines = [f'# Host time of `opt.step()` inside a fastai Learner: {torch.cuda.get_device_name()}', '',
         f'torch {torch.__version__}; ResNet-50 of `learner_e2e.py`, bf16 autocast, batch 64, {args.batches} batches per epoch; '
         'stages timed in the second epoch (median µs; count: calls in that epoch).', '']
for opt_name in ('fastoptim', 'fastoptim-none'):
    learn, times = e2e.build(opt_name, device, init, out)
    e2e.epoch(learn)  # warm-up: the optimizer is made, the graph captured
    opt, stages = learn.opt, {}
    triton = core.backends['triton']  # shared by both optimizers: its methods are restored after each
    for owner, name, label in ((opt, 'step', 'opt.step (all)'), (opt.numbers, 'check', 'numbers.check'), (opt.layout, 'current', 'layout.current'),
                               (opt.layout, 'signature', 'layout.signature'), (opt.layout, 'rebind', 'layout.rebind'),
                               (opt.graph, 'step', 'graph.step'), (opt.graph, 'capture', 'graph.capture'), (opt, '_prepare', 'opt._prepare'),
                               (triton, 'prepare', 'triton prepare (per bucket)'), (triton, 'move_grads', 'triton move_grads (per bucket)'),
                               (opt, '_run', 'opt._run (eager step)'), (opt, '_count', 'opt._count (per bucket)'), (opt, 'zero_grad', 'opt.zero_grad')):
        timed(owner, name, label, stages)
    if opt.graph.graph is not None: timed(opt.graph.graph, 'replay', 'graph.replay', stages)
    replays = opt.graph.replays
    e2e.epoch(learn)
    lines += [f'## `{e2e.OPTIMIZERS[opt_name][0]}`', '', f'replays in the timed epoch: {opt.graph.replays - replays}', '',
              '| stage | calls | median µs |', '|---|---|---|']
    lines += [f'| {k} | {len(v)} | {statistics.median(v):.1f} |' for k, v in stages.items()]
    lines.append('')
    print('\n'.join(lines[-len(stages) - 6:]), flush=True)
    for name in ('prepare', 'move_grads'): del triton.__dict__[name]  # the class's again
    del learn, opt
    torch.cuda.empty_cache()
open(args.out, 'w').write('\n'.join(lines) + '\n')
