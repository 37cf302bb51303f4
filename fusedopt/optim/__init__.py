from fusedopt.optim.adam import Adam, AdamW
from fusedopt.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW"]
