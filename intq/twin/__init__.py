"""The PyTorch twin of a compiled model: a second, independent implementation of the integer
graph in torch (it reads the graph; it never calls the numpy reference or the Numba
kernels), for layer-by-layer verification (`intq.verify`), the fake-quant drift report and
quantization-aware training. Torch lives here and nowhere in the core.

    import intq, intq.twin
    model = intq.load("resnet.intq")
    twin = intq.twin.from_compiled(model)        # a torch.nn.Module
    logits = twin(images)                         # exact: the integer model's bits, as S * q
    ints = twin.trace(images)                     # every integer tensor, by graph name
    drift = twin.trace(images, mode="naive")      # float fake quantization, for comparison
"""
from .model import MODES, TwinModel, from_compiled

__all__ = ["MODES", "TwinModel", "from_compiled"]
