"""The docstring paragraphs every torch.optim namesake shares (its states, its arguments and fusedopt's extras),
written here once and appended to each class's own docstring (the algorithm and what is particular to it) by
``FusedOptimizer.__init_subclass__``."""
from __future__ import annotations

import inspect
import textwrap

import torch

WIDTH = 112  # the docstrings' line length, their indent apart

# Where they are described (the other classes point to fusedopt.SGD's docstring).
EXTRAS = """\
- ``max_grad_norm``: clip the global L2 norm of all gradients to this (as ``clip_grad_norm_``), folded
  into the update: the ``.grad`` tensors are left unclipped.
- ``nonfinite``: ``"ignore"`` (torch's behaviour), ``"skip"`` (a step with any NaN/inf gradient changes
  nothing), ``"raise"`` (raise, naming the offending parameters; this one syncs with the host).
- ``backend``: ``"auto"``, ``"cpu"`` (compiled C++ kernels), ``"cuda"``, ``"triton"`` or ``"reference"``
  (pure torch).
- ``master_weights``: keep an fp32 master copy of each bf16/fp16 param (state entry ``"master_param"``,
  saved with the state_dict): the update runs on the master and the param gets its value rounded to
  nearest even, so updates below half an ulp of the param are not lost. No copy for fp32/fp64 params.
  ``"remainder"``: bf16 params keep only the low 16 bits of their fp32 master (state entry
  ``"master_remainder"``, int16): param and remainder hold the master exactly, so the master, the states
  and every later step equal ``True``'s bit for bit in 2 bytes per param instead of 4; the param is the
  master rounded to nearest with ties away from zero (``True`` rounds ties to even). float16 params are
  refused (a 16-bit remainder cannot complete fp16 to fp32). Checkpoints of either kind load into the other.
- ``state_dtype``: ``None`` (fp32 states for bf16/fp16/fp32 params) or ``torch.bfloat16`` (half the
  memory; the math stays fp32, stores round to nearest even). fp64 and complex params keep their own dtype.
- ``param_rounding``: ``"nearest"`` (default) or ``"stochastic"``: bf16 params without a master copy get
  their new fp32 value rounded to bf16 stochastically (up with probability proportional to the distance:
  unbiased, so small updates survive on average at no extra memory). The random bits are Philox 4x32-10's
  for (``seed``, the param's position in the param groups, the optimizer's rounding step, the element's
  index): the same bits on every backend and thread count. fp32/fp64 params are unaffected (nothing to
  round); fp16 params and ``master_weights`` (``True`` or ``"remainder"``) are refused.
- ``seed``: the 64-bit key of stochastic rounding (default: drawn from torch's generator at construction).
  Seed and rounding step are saved in the state_dict (``"param_rounding"``) and restored by
  ``load_state_dict``."""
# Their names, in EXTRAS's order, for the classes that point to it.
EXTRA_NAMES = tuple(line[4:line.index("``", 4)] for line in EXTRAS.splitlines() if line.startswith("- ``"))


def _quoted(names) -> str:
    return ", ".join(f"``{name}``" for name in names)


def tail(cls) -> str | None:
    """The shared paragraphs for ``cls``, a class with its own ``_RULE`` and a torch.optim namesake (else None),
    from its rule (states), its constructor's signature (the compatibility arguments, differentiable) and
    ``_SPARSE_GRADS``."""
    name = cls.__name__
    if not hasattr(torch.optim, name):
        return None
    rule = cls._RULE
    signature = inspect.signature(cls.__init__).parameters
    compat = [arg for arg in ("foreach", "fused", "capturable") if arg in signature]
    states = f"States ({_quoted((*rule.scalars, *rule.states))}) have torch.optim's names and layout: tensor states " \
             f"are fp32 for bf16/fp16 params (or ``state_dtype``)"
    if rule.scalars:
        what = "0-dim fp32 tensors" if len(rule.scalars) > 1 else "a 0-dim fp32 tensor"
        states += f", {_quoted(rule.scalars)} {what} on the param's device"
    args = f"Args are torch.optim.{name}'s ({'/'.join(f'``{arg}``' for arg in compat)} accepted for " \
           f"compatibility: fusedopt always runs its own fused kernels, equal to torch's results up to rounding)"
    if name == "SGD":  # the extras are described here
        args = textwrap.fill(args + ", plus keyword-only:", WIDTH) + "\n\n" + EXTRAS
    else:
        names = _quoted(EXTRA_NAMES[:-1]) + f" and ``{EXTRA_NAMES[-1]}``"
        args = textwrap.fill(args + f", plus keyword-only {names} as described in :class:`fusedopt.SGD`.", WIDTH)
    paragraphs = [textwrap.fill(states + ".", WIDTH), args]
    if "differentiable" in signature:
        what = "``differentiable=True`` and sparse gradients" if cls._SPARSE_GRADS else "``differentiable=True``"
        paragraphs.append(textwrap.fill(
            f"{what} {'are' if cls._SPARSE_GRADS else 'is'} supported as in torch.optim.{name}: such a step runs "
            f"torch.optim's own single-tensor {name} (see ``fusedopt.optim._torch_path``), with the extras applied "
            f"around it.", WIDTH))
    paragraphs.append(textwrap.fill(
        f"Every backend has the rule (``{rule.name.capitalize()}Rule`` of csrc/include/fusedopt/math.h for the CPU "
        f"and CUDA, its Triton twin in fusedopt/triton/rules.py).", WIDTH))
    return "\n\n".join(paragraphs)


def with_tail(cls) -> str | None:
    """``cls.__doc__`` with the shared paragraphs appended, indented as the docstring's own lines."""
    text = tail(cls)
    doc = cls.__dict__.get("__doc__")
    if text is None or not doc:
        return doc
    indent = " " * min((len(line) - len(line.lstrip()) for line in doc.splitlines()[1:] if line.strip()), default=0)
    lines = "\n".join(indent + line if line else line for line in text.splitlines())
    return f"{doc.rstrip()}\n\n{lines}\n{indent}"
