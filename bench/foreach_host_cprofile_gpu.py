"""Where the host time of a bf16 foreach AdamW step with Kahan summation goes, on the ResNet-50-like set: cProfile of
50 steps (the step is host-bound: its kernels take a third of its time), sorted by own time.

    PYTHONPATH=$PWD/.site:$PWD python3 bench/foreach_host_cprofile_gpu.py > $OUT/foreach_host_cprofile.txt
"""
import cProfile, io, os, pstats, sys
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import torch
from fastoptim.all import Adam
from shapes import resnet50_shapes
from foreach_bf16_profile_gpu import params

ps = params(resnet50_shapes())
opt = Adam(ps, 1e-3, wd=1e-2, foreach=True, kahan_sum=True)
for _ in range(5): opt.step()
torch.cuda.synchronize()
prof = cProfile.Profile()
prof.enable()
for _ in range(50): opt.step()
torch.cuda.synchronize()
prof.disable()
out = io.StringIO()
pstats.Stats(prof, stream=out).sort_stats('tottime').print_stats(40)
print(out.getvalue())
out = io.StringIO()
pstats.Stats(prof, stream=out).sort_stats('cumulative').print_stats(40)
print(out.getvalue())
