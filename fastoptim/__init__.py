"""fastoptim: the fastest, most memory-frugal optimizers for fastai. `from fastoptim.all import *` gives every optimizer
(`Adam`, `adam`, ...), callback (`BF16`, `GradientRelease`, `OptimizerAccumulation`) and backend; the notebooks in `nbs/`
are the source and the documentation."""
__version__ = "0.0.1"
