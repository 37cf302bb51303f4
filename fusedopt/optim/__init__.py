from fusedopt.optim.adam import Adam, AdamW
from fusedopt.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW"]

# Issue 12 part 2 (algos1): Adagrad, RMSprop, Adamax, Lion.
from fusedopt.optim.adagrad import Adagrad  # noqa: E402
from fusedopt.optim.adamax import Adamax  # noqa: E402
from fusedopt.optim.lion import Lion  # noqa: E402
from fusedopt.optim.rmsprop import RMSprop  # noqa: E402

__all__ += ["Adagrad", "RMSprop", "Adamax", "Lion"]
