from fusedopt.optim.adam import Adam, AdamW
from fusedopt.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW"]

# issue 12 part 2 (NAdam, RAdam, Adadelta, Rprop, ASGD; Adagrad, RMSprop, Adamax, Lion)
from fusedopt.optim.nadam import NAdam  # noqa: E402
from fusedopt.optim.radam import RAdam  # noqa: E402
from fusedopt.optim.adadelta import Adadelta  # noqa: E402
from fusedopt.optim.rprop import Rprop  # noqa: E402
from fusedopt.optim.asgd import ASGD  # noqa: E402
from fusedopt.optim.adagrad import Adagrad  # noqa: E402
from fusedopt.optim.adamax import Adamax  # noqa: E402
from fusedopt.optim.lion import Lion  # noqa: E402
from fusedopt.optim.rmsprop import RMSprop  # noqa: E402

__all__ += ["NAdam", "RAdam", "Adadelta", "Rprop", "ASGD", "Adagrad", "RMSprop", "Adamax", "Lion"]
