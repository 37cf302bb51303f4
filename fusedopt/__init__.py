"""fusedopt: fused optimizer kernels for PyTorch, as drop-in torch.optim classes."""
from fusedopt.optim import SGD, Adam, AdamW

__version__ = "0.1.0"
__all__ = ["SGD", "Adam", "AdamW", "__version__"]

# Issue 12 part 2 (algos1): Adagrad, RMSprop, Adamax, Lion.
from fusedopt.optim import Adagrad, Adamax, Lion, RMSprop  # noqa: E402

__all__ += ["Adagrad", "RMSprop", "Adamax", "Lion"]
