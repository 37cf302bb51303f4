"""fusedopt: fused optimizer kernels for PyTorch, as drop-in torch.optim classes."""
from fusedopt.optim import SGD, Adam, AdamW

__version__ = "0.1.0"
__all__ = ["SGD", "Adam", "AdamW", "__version__"]

# issue 12 part 2: NAdam, RAdam, Adadelta, Rprop, ASGD; Adagrad, RMSprop, Adamax, Lion
from fusedopt.optim import ASGD, Adadelta, Adagrad, Adamax, Lion, NAdam, RAdam, RMSprop, Rprop  # noqa: E402

__all__ += ["NAdam", "RAdam", "Adadelta", "Rprop", "ASGD", "Adagrad", "RMSprop", "Adamax", "Lion"]
