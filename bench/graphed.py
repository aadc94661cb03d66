"A step captured in a CUDA graph and replayed, as the benchmarks and the graph check use it."
import torch


class Graphed:
    """`opt` stepped through a CUDA graph: the first `step()` is a real one on a side stream (it creates the state and,
    for fastoptim, the device tables), then captures one step without running it; later calls replay the capture"""
    def __init__(self, opt): self.opt, self.graph = opt, None

    def step(self):
        if self.graph is not None: return self.graph.replay()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side): self.opt.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph): self.opt.step()
