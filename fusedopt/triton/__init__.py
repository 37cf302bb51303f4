"""fusedopt's Triton backend: ``check``, ``sgd_update`` and ``adam_update`` (op contract v2) as Triton kernels,
one file per algorithm (norm.py, sgd.py, adam.py) over math.py, the Triton twin of csrc/include/fusedopt/math.h.

Runs CUDA tensors with compiled kernels, and CPU tensors under the Triton interpreter when TRITON_INTERPRET=1
was set before this package was imported (for tests: the interpreter is slow).
"""
from fusedopt.triton import _multi_tensor
from fusedopt.triton._multi_tensor import interpreted
from fusedopt.triton.adam import _adam_kernel, adam_update
from fusedopt.triton.norm import check
from fusedopt.triton.sgd import sgd_update

INTERPRETED = interpreted(_adam_kernel)


def check_device(device) -> None:
    """Raise a clear error unless these kernels can run tensors on ``device`` (CUDA when compiled, CPU when
    interpreted)."""
    _multi_tensor.check_device(device, _adam_kernel)

__all__ = ["INTERPRETED", "adam_update", "check", "check_device", "sgd_update"]
