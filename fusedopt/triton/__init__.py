"""fusedopt's Triton backend: ``check`` and the generic ``update`` of op contract v4 as Triton kernels (norm.py,
update.py), over rules.py (the Triton twins of math.h's update rules, by name: ``RULES``) and math.py (the Triton
twin of csrc/include/fusedopt/math.h's shared pieces).

Runs CUDA tensors with compiled kernels, and CPU tensors under the Triton interpreter when TRITON_INTERPRET=1
was set before this package was imported (for tests: the interpreter is slow).
"""
from fusedopt.triton import _multi_tensor
from fusedopt.triton._multi_tensor import interpreted
from fusedopt.triton.norm import check
from fusedopt.triton.rules import RULES
from fusedopt.triton.update import _update_kernel, update

INTERPRETED = interpreted(_update_kernel)


def check_device(device) -> None:
    """Raise a clear error unless these kernels can run tensors on ``device`` (CUDA when compiled, CPU when
    interpreted)."""
    _multi_tensor.check_device(device, _update_kernel)

__all__ = ["INTERPRETED", "RULES", "check", "check_device", "update"]
