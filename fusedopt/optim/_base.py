"""FusedOptimizer: what every fusedopt optimizer shares.

``step()`` flows one way, all or nothing: ``_plan`` validates every group's hyperparameters, params and grads
and prepares every update call, creating lazy state without installing it (a raise here changes nothing) ->
check pass (global sum of squares and non-finite flag, only when clipping or a non-finite policy needs it; it
only reads) -> ``_launch``: install the new state, one update call per (param group, dtype) bucket on the chosen
backend. The clip coefficient, the skip flag
and the GradScaler scale stay tensors on the params' device, and so does a tensor lr (passed as ``lr_tensor``):
nothing in the step reads them on the host except ``nonfinite="raise"`` (which must), the reference backend, and
a param's first SGD momentum step with ``dampening != 0`` that may be skipped (see ``SGD``).

Mixed precision (``master_weights``, ``state_dtype``): the fp32 master copy of a bf16/fp16 param is its state
entry ``"master_param"``; the kernels read the value from it and write both it and the rounded param. With
``master_weights="remainder"`` a bf16 param's master is instead its state entry ``"master_remainder"`` (int16):
the kernels join param and remainder into the exact fp32 master and split the new value back into both (math.h's
split_bf16). A checkpoint of either kind loads into the other (converted exactly on the next step).

Stochastic rounding (``param_rounding="stochastic"``, bf16 params without a master copy): each update call of a
bf16 bucket sets the op's stochastic rounding bit and passes the optimizer's ``seed``, each param's position in
the param groups (its id) and the optimizer's rounding step (a 0-dim int64 tensor on the params' device, advanced
on the device after every step, skipped ones included, so nothing is read on the host); seed and step are saved in
the state_dict under ``"param_rounding"``.
"""
from __future__ import annotations

import functools
import math
import numbers
import operator
import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from fusedopt import ops, reference, rules
from fusedopt.optim import _checks, _dist, _doc, _torch_path

NONFINITE_POLICIES = ("ignore", "skip", "raise")
LOW_PRECISION = (torch.bfloat16, torch.float16)
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64,
                    torch.complex128)
_REAL_DTYPE = {torch.complex64: torch.float32, torch.complex128: torch.float64}
# Clipping follows torch.nn.utils.clip_grad_norm_: coef = clamp(max_norm / (norm + 1e-6), max=1).
CLIP_EPS = 1e-6
# Devices whose params fused=True takes (fusedopt's kernels; torch raises for others, e.g. meta, at the step).
_FUSED_DEVICES = ("cpu", "cuda")


# What the state_dtype argument may be: None (the default below), or a dtype for the states of real
# bf16/fp16/fp32 params.
STATE_DTYPES = (None, torch.float32, torch.bfloat16)
MASTER_KEY = "master_param"
# master_weights="remainder": a bf16 param's master is this int16 entry (the low 16 bits of the fp32 master).
REMAINDER_KEY = "master_remainder"
ROUNDING_KEY = "param_rounding"  # the state_dict entry of stochastic rounding: {"seed": int, "step": count}


def state_dtype(param: Tensor, requested: torch.dtype | None = None) -> torch.dtype:
    """Optimizer state is fp32 for bf16/fp16 params (math is fp32 anyway), else the param's dtype; the
    optimizer's ``state_dtype`` (``requested``) overrides that for real bf16/fp16/fp32 params. fp64 and complex
    params keep states of their own dtype (their math is fp64, or runs on the real view)."""
    if requested is not None and param.dtype in (torch.float32, *LOW_PRECISION):
        return requested
    return torch.float32 if param.dtype in LOW_PRECISION else param.dtype


def group_lr(optimizer, group: dict) -> float:
    """A group's lr as a host float: the initial value of states that torch starts at lr (``_INITIAL_STATE``)."""
    return optimizer._hyper(group["lr"])


def _is_dense(t: Tensor) -> bool:
    """True when ``t`` covers exactly ``numel`` consecutive elements of its storage (any dim order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda ss: ss[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


@dataclass
class Bucket:
    """Everything one backend call needs: kernel-ready (contiguous, real) views plus where to copy back."""

    backend: Any
    params: list[Tensor] = field(default_factory=list)  # the original params
    states: list[dict] = field(default_factory=list)  # their optimizer state
    kparams: list[Tensor] = field(default_factory=list)
    kgrads: list[Tensor] = field(default_factory=list)
    kstates: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))
    kmasters: list[Tensor] = field(default_factory=list)  # fp32 master copies or int16 remainders, or none
    is_first: list[bool] = field(default_factory=list)  # state created this step (no history yet)
    param_ids: list[int] | None = None  # stochastic rounding: each param's position in the param groups
    writeback: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (original, temporary) pairs
    occurrence: int = 0  # > 0: a later listing of params listed more than once (see FusedOptimizer._plan)


class _KernelLayout:
    """Maps a param and its companions (grad, states) onto tensors the kernels can take.

    Kernels see contiguous, aligned real tensors with plain bits. A contiguous param passes through as is; a
    dense param in another dim order (channels_last, a transposed weight) is viewed flat in memory order, and
    companions with the same strides are viewed the same way (autograd's grad layout contract and ``zeros_like``
    make that the usual case); anything else goes through a temporary copied back after the update: other
    layouts, a lazy conjugation or negation bit (``copy_`` resolves it both ways), misaligned data.
    """

    def __init__(self, param: Tensor):
        self.param = param
        self.flat = not param.is_contiguous() and _is_dense(param) and not _needs_copy(param)

    def view(self, t: Tensor, writeback: list | None) -> Tensor:
        """A kernel-ready view of ``t``; when that takes a temporary, ``(t, tmp)`` goes to ``writeback``."""
        if not _needs_copy(t):
            real = torch.view_as_real(t) if t.is_complex() else t
            if not self.flat:
                if real.is_contiguous():
                    return real
            elif t.stride() == self.param.stride():
                return _flat(real)
        if self.flat:  # in the param's memory order, as its other companions are viewed
            tmp = torch.empty_like(self.param, dtype=t.dtype).copy_(t)
        else:
            tmp = torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
        if writeback is not None:
            writeback.append((t, tmp))
        real = torch.view_as_real(tmp) if tmp.is_complex() else tmp
        return _flat(real) if self.flat else real


def _split_by_dtype(tensors: list[Tensor]) -> dict[torch.dtype, Sequence[int]]:
    """Indices of ``tensors`` per dtype (one backend call each); cheap in the usual single-dtype case."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1:
        return {dtypes.pop(): range(len(tensors))}
    index: dict[torch.dtype, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        index[t.dtype].append(i)
    return index


def _values(t: Tensor) -> Tensor:
    """The stored values of a sparse tensor (duplicates uncoalesced: fine for finiteness), else ``t``."""
    return t._values() if t.is_sparse else t


def _flat(t: Tensor) -> Tensor:
    """A dense tensor viewed as 1-D in memory order."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _needs_copy(t: Tensor) -> bool:
    """Whether the kernels must get a temporary instead of ``t``'s memory: a lazy conjugation or negation bit
    (its memory holds the other sign), or data off its element alignment (``torch.frombuffer`` at an odd offset:
    the kernels' typed loads would be undefined behaviour on the CPU and fault on a GPU)."""
    # While torch.compile traces, none of this is known (fake tensors have no addresses): eager steps check it.
    if torch.compiler.is_compiling():
        return False
    return t.is_conj() or t.is_neg() or t.data_ptr() % t.element_size() != 0


def _read_only_input(t: Tensor) -> Tensor:
    """``t`` as a contiguous, aligned real tensor with plain bits, for a pass that only reads it."""
    if _needs_copy(t):
        t = torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
    t = torch.view_as_real(t) if t.is_complex() else t
    return t if t.is_contiguous() else t.contiguous()


def _span(t: Tensor) -> tuple[int, int] | None:
    """[first, last + 1) byte address of ``t``'s elements (None when it has none)."""
    if t.numel() == 0:
        return None
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _element_addresses(t: Tensor) -> Tensor:
    """The byte address of every byte of every element of ``t`` (for the rare exact overlap test)."""
    offsets = torch.zeros((), dtype=torch.int64)
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.dim()
        shape[dim] = size
        offsets = offsets + (torch.arange(size, dtype=torch.int64) * stride).view(shape)
    starts = offsets.reshape(-1) * t.element_size() + t.data_ptr()
    return (starts[:, None] + torch.arange(t.element_size(), dtype=torch.int64)).reshape(-1)


_SHARED_CACHE: dict[tuple, bool] = {}  # exact overlap tests of strided views, by their geometry
_SHARED_CACHE_SIZE = 256


def _geometry(t: Tensor) -> tuple:
    return t.data_ptr(), tuple(t.shape), t.stride(), t.element_size()


def _share_memory(a: Tensor, b: Tensor) -> bool:
    """Whether tensors whose spans overlap share an element: always for dense tensors; strided views with gaps
    (``w[:, :k]`` and ``w[:, k:]``) may interleave without touching. The exact test depends only on the two
    geometries, so a step over the same views reuses its answer."""
    if _is_dense(a) and _is_dense(b):
        return True
    key = (_geometry(a), _geometry(b))
    shared = _SHARED_CACHE.get(key)
    if shared is None:
        shared = bool(torch.isin(_element_addresses(a), _element_addresses(b)).any())
        if len(_SHARED_CACHE) >= _SHARED_CACHE_SIZE:
            _SHARED_CACHE.clear()
        _SHARED_CACHE[key] = shared
    return shared


def _overlaps_itself(t: Tensor) -> bool:
    """Whether two elements of ``t`` are one memory location (an ``expand``ed tensor): a write to it is
    ill-defined. Decided from the strides when each dim steps over everything the smaller-stride dims span (all
    views made by slicing, transposing and permuting), exactly otherwise."""
    if t.numel() < 2:
        return False
    reach = 0  # elements spanned by the dims taken so far, minus one
    for size, stride in sorted((ss for ss in zip(t.shape, t.stride()) if ss[0] > 1), key=lambda ss: ss[1]):
        if stride <= reach:
            return _element_addresses(t)[:: t.element_size()].unique().numel() != t.numel()
        reach += (size - 1) * stride
    return False


def _check_memory(optimizer, per_group, per_local, grads_written: bool) -> bool:
    """Raise when tensors the step writes share memory with other tensors of the step: params that are
    overlapping views of one storage (their updates would race and depend on the thread count), a grad that
    aliases a param, grads sharing memory when the step writes them (GradScaler's unscale), or a written tensor
    whose elements overlap each other. Returns whether a param is listed more than once (the same tensor: that is
    not an error, see ``_plan``). One sort of the tensors' spans; the exact element test only for strided views
    whose spans overlap."""
    name = type(optimizer).__name__
    entries = []  # (begin, end, is_param, gi, position, local tensor, param)
    for gi, ((params, _), (lparams, lgrads)) in enumerate(zip(per_group, per_local)):
        for j, (p, lp, lg) in enumerate(zip(params, lparams, lgrads)):
            if lp.device.type == "meta":  # no memory
                continue
            for is_param, t in ((True, lp), (False, lg)):
                span = _span(t)
                if span is not None:
                    entries.append((*span, is_param, gi, j, t, p))
    entries.sort(key=lambda e: e[0])

    def describe(entry) -> str:
        _, _, is_param, gi, j, _, p = entry
        pi = [i for i, q in enumerate(optimizer.param_groups[gi]["params"]) if q is p][0]
        return ("" if is_param else "the gradient of ") + optimizer._describe(gi, pi)

    # Listed twice: by identity (a param without elements has no span to overlap).
    duplicated = len({id(p) for params, _ in per_group for p in params}) != sum(len(ps) for ps, _ in per_group)
    written = [e for e in entries if e[2] or grads_written]
    for entry in written:
        if _overlaps_itself(entry[5]):
            raise RuntimeError(f"{name}: {describe(entry)} has elements that share one memory location (an "
                               f"expanded view); an in-place update of it is not well defined")
    open_entries: list = []
    for entry in entries:
        begin, _, is_param, _, _, t, p = entry
        open_entries = [e for e in open_entries if e[1] > begin]
        for other in open_entries:
            if other[6] is p:
                if other[2] == is_param:  # the same param listed twice (and its one grad)
                    duplicated = True
                    continue
            elif not (other[2] or is_param or grads_written):
                continue  # two grads that are only read
            if _share_memory(other[5], t):
                raise RuntimeError(
                    f"{name}: {describe(other)} and {describe(entry)} share memory (overlapping views of one "
                    f"storage); the update of one would overwrite the other. Give each parameter and gradient its "
                    f"own memory")
        open_entries.append(entry)
    return duplicated


def _occurrences(per_group) -> list[list[int]]:
    """For each param of each group, how many times it was listed before (in any group)."""
    seen: dict[int, int] = {}
    result = []
    for params, _ in per_group:
        occ = []
        for p in params:
            k = seen.get(id(p), 0)
            seen[id(p)] = k + 1
            occ.append(k)
        result.append(occ)
    return result


@dataclass
class _TorchStep:
    """A step that runs torch.optim's functional for-loop instead (see _torch_path)."""

    per_group: list  # (params, grads) per group, for the params with grads


class _GroupArgs(NamedTuple):
    """A group's update-call arguments besides lr and maximize (``FusedOptimizer._group_args``)."""

    state_keys: tuple[str, ...]  # the state entries passed to the kernel, in its argument order
    hyper: list[float]  # the rule's hyperparameters after lr, as host floats
    bits: int  # the op's flags int


# The types of group values that cannot change in place (a tuple of them neither).
_PLAIN_TYPES = (float, int, bool, str, type(None))


def _is_plain(value) -> bool:
    return type(value) in _PLAIN_TYPES or (type(value) is tuple and all(type(v) in _PLAIN_TYPES for v in value))


@dataclass
class _StepPlan:
    """A validated step, prepared but not yet run (``FusedOptimizer._plan`` -> ``_launch``)."""

    per_group: list  # (params, grads) per group, for the params with grads
    per_local: list  # the same, as the kernels get them (local shards of DTensors)
    check_grads: list[Tensor]  # what the check pass reads (each param's grad once)
    device: torch.device
    ready: bool  # the fast path: kernels take the tensors as they are
    reduction: Any  # _dist.Reduction, or None
    new_state: dict = field(default_factory=dict)  # param -> state entries created this step, installed at launch
    # param -> state keys dropped at launch, and (param, value) written at launch: a master converted to the
    # other kind (a checkpoint of the other master_weights mode; _group_states)
    dropped: dict = field(default_factory=dict)
    param_writes: list = field(default_factory=list)
    fresh: set = field(default_factory=set)  # params whose state is created this step (no history yet)
    fresh_local: set = field(default_factory=set)  # the same, as the tensors the kernels get
    calls: list = field(default_factory=list)  # (group, buckets or a function preparing them at launch)
    positions: dict = field(default_factory=dict)  # stochastic rounding: id(kernel param) -> its param id
    dtypes: set = field(default_factory=set)  # the param dtypes of the update calls

    def grad_dtype(self) -> torch.dtype | None:
        """The one dtype of every grad the check pass reads, when the plan knows it without a look at each (the
        fast path's grads have their params' dtypes), else None."""
        return next(iter(self.dtypes)) if self.ready and len(self.dtypes) == 1 else None


class FusedOptimizer(torch.optim.Optimizer):
    """Base of the fusedopt optimizers. A subclass names its update rule (``_RULE``, fusedopt/rules.py) and has
    torch.optim's constructor and checks; the rule's states, their initial values (``_INITIAL_STATE``) and where
    a param group holds the rule's arguments (``_GROUP_KEYS``) drive the state layout and every update call."""

    _RULE: rules.Rule
    # Where torch.optim's param groups hold a rule's hyperparameters and switches when not under the rule's own
    # names: rule name -> group key, or (group key, index) for one entry of a pair.
    _GROUP_KEYS: dict[str, str | tuple[str, int]] = {
        "beta1": ("betas", 0), "beta2": ("betas", 1), "decoupled": "decoupled_weight_decay",
        "etaminus": ("etas", 0), "etaplus": ("etas", 1), "step_size_min": ("step_sizes", 0),
        "step_size_max": ("step_sizes", 1)}
    # The initial values of the rule's states that torch.optim's namesake does not start at zero: state key -> a
    # number, or a function (optimizer, group) -> number. A scalar state holds it in fp32; a tensor state is
    # filled with it (both parts of a complex one: two real numbers, as in torch).
    _INITIAL_STATE: dict[str, Any] = {}

    # GradScaler hands us grad_scale/found_inf instead of unscaling the grads itself.
    _step_supports_amp_scaling = True
    _EXTRA_ATTRS = ("max_grad_norm", "nonfinite", "backend", "master_weights", "state_dtype", "_last_step",
                    "param_rounding", "seed", "_rounding_step")
    # Names of per-param state tensors that have the param's shape (kernels update them in place): the rule's.
    _TENSOR_STATE_KEYS: tuple[str, ...] = ()
    # Flags that older checkpoints may lack, with the values torch.optim's namesake fills in (not this
    # optimizer's constructor values).
    _LEGACY_FLAG_DEFAULTS: dict[str, Any] = {}
    # Whether sparse gradients are taken (as torch.optim's namesake does; they run torch's for-loop, _torch_path).
    _SPARSE_GRADS = False

    def __init_subclass__(cls, **kwargs) -> None:
        # What follows from the rule of a class that names one (AdamW takes Adam's): its tensor states, the group
        # entries holding its hyperparameters (unless the class lists more), the shared docstring paragraphs.
        super().__init_subclass__(**kwargs)
        rule = cls.__dict__.get("_RULE")
        if rule is None:
            return
        cls._TENSOR_STATE_KEYS = rule.states
        # The group entries _group_args reads (all of the rule's hyperparameters but lr, and its switches).
        cls._ARG_KEYS = tuple(dict.fromkeys(w if isinstance(w, str) else w[0] for w in (
            cls._GROUP_KEYS.get(name, name) for name in (*rule.hyper[1:], *rule.flags))))
        if "_HYPERPARAMETERS" not in cls.__dict__:
            where = (cls._GROUP_KEYS.get(name, name) for name in rule.hyper)
            cls._HYPERPARAMETERS = tuple(dict.fromkeys(w if isinstance(w, str) else w[0] for w in where))
        cls.__doc__ = _doc.with_tail(cls)

    def __init__(self, params, defaults: dict, *, max_grad_norm: float | None, nonfinite: str, backend: str,
                 master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        if defaults.get("fused") and defaults.get("differentiable"):
            raise RuntimeError("`fused` does not support `differentiable`")
        if defaults.get("differentiable") and (master_weights or state_dtype is not None):
            raise ValueError("differentiable=True runs torch.optim's single-tensor implementation, which keeps "
                             "states in the param's dtype: master_weights and state_dtype do not apply")
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float))
                                              and 0.0 <= max_grad_norm < math.inf):
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"Invalid nonfinite value: {nonfinite!r}; expected 'ignore', 'skip' or 'raise'")
        _checks.check_master_weights(master_weights)
        if not any(state_dtype is d for d in STATE_DTYPES):
            raise ValueError(f"Invalid state_dtype: {state_dtype!r}; expected None, torch.float32 or torch.bfloat16")
        _checks.check_param_rounding(param_rounding, seed, master_weights, bool(defaults.get("differentiable")))
        ops.check_backend_name(backend)
        ops.check_backend_rule(backend, self._RULE.name)
        super().__init__(params, defaults)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.nonfinite = nonfinite
        self.backend = backend
        self.master_weights = master_weights
        self.state_dtype = state_dtype
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                self._master_key(p.dtype, lambda: self._describe(gi, pi))  # fp16 refuses "remainder" here
        self.param_rounding = param_rounding
        # Drawn from torch's default generator when not given, so torch.manual_seed makes a run reproducible.
        self.seed = None if param_rounding == "nearest" else (
            int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)) if seed is None else int(seed))
        self._rounding_step: Tensor | None = None  # created on the params' device at the first step
        # grad_norm/found_nonfinite of the last step, in a dict made here: torch.compile (2.13) replays a compiled
        # step's writes into a dict but drops attribute writes on an Optimizer object.
        self._last_step: dict[str, Tensor | None] = {"grad_norm": None, "found_nonfinite": None}

    # --- attributes that must survive deepcopy/pickle (the base class keeps only defaults/state/groups) ---
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in self._EXTRA_ATTRS:
            state[name] = getattr(self, name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also how load_state_dict installs the loaded groups.
        super().__setstate__(state)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("nonfinite", "ignore")
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("master_weights", False)
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("_last_step", {"grad_norm": None, "found_nonfinite": None})
        self.__dict__.setdefault("param_rounding", "nearest")
        self.__dict__.setdefault("seed", None)
        self.__dict__.setdefault("_rounding_step", None)
        for group in self.param_groups:
            for key, value in self._LEGACY_FLAG_DEFAULTS.items():
                group.setdefault(key, value)

    @property
    def grad_norm(self) -> Tensor | None:
        """Global L2 norm of all grads before clipping (0-dim fp32, fp64 with fp64 grads, on the params'
        device), from the last step if it computed it (``max_grad_norm`` set or ``nonfinite`` != "ignore");
        under GradScaler, unscaled; with DTensor (FSDP2) params, over all ranks' shards."""
        return self._last_step["grad_norm"]

    @property
    def found_nonfinite(self) -> Tensor | None:
        """0-dim bool tensor: whether the last step saw a NaN/inf gradient (and so, under "skip" or GradScaler,
        changed nothing)."""
        return self._last_step["found_nonfinite"]

    def __repr__(self) -> str:
        extras = f"    max_grad_norm: {self.max_grad_norm}\n    nonfinite: {self.nonfinite}\n" \
                 f"    backend: {self.backend}\n    master_weights: {self.master_weights}\n" \
                 f"    state_dtype: {self.state_dtype}\n    param_rounding: {self.param_rounding}\n"
        text = super().__repr__()
        return text[:-1] + extras + ")" if text.endswith(")") else text

    # --- subclass interface ---
    def _missing_states(self, states: list[dict | None], group: dict) -> list[int]:
        """Indices of the params whose state ``_init_state`` must (re)create before the update."""
        if all(states):  # the steady state: one C-level pass
            return []
        return [i for i, state in enumerate(states) if not state]

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        """Create the state entries of ``param``: the rule's scalar states (0-dim fp32 on the param's device) and
        the tensor states the group uses (``_new_state``: the param's layout, which the fast path relies on),
        each zero or its ``_INITIAL_STATE`` value."""
        for key in self._RULE.scalars:
            value = self._initial_value(key, group)
            state[key] = torch.zeros((), dtype=torch.float32, device=param.device) if value is None else \
                torch.tensor(value, dtype=torch.float32, device=param.device)
        for key in self._state_keys(group):
            state[key] = self._new_state(param, self._initial_value(key, group))

    def _initial_value(self, key: str, group: dict) -> float | None:
        """A state's ``_INITIAL_STATE`` value for this group; None for zero."""
        value = self._INITIAL_STATE.get(key)
        return value(self, group) if callable(value) else value

    def _group_value(self, group: dict, name: str):
        """The group's value of the rule's hyperparameter or switch ``name`` (see ``_GROUP_KEYS``)."""
        where = self._GROUP_KEYS.get(name, name)
        return group[where] if isinstance(where, str) else group[where[0]][where[1]]

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        """State entries passed to the kernel for this group, in the kernel's argument order."""
        return self._group_args(group).state_keys

    def _group_args(self, group: dict) -> _GroupArgs:
        """What a group's update calls take besides lr and maximize: the state keys, the rule's other
        hyperparameters as host floats and its flag bits. Kept from the last call while the group holds the very
        same objects under the rule's keys (lr's excepted: a scheduler sets it every step, and nothing here
        depends on it) and all of them are plain immutable values (a tensor, a list or a numpy array may change
        in place: such a group is read again at every call). A step over many params makes these calls for
        every bucket, so they are a visible part of its host cost."""
        compiling = torch.compiler.is_compiling()  # a traced step computes them (torch.compile guards the values)
        if not compiling:
            values = tuple(map(group.__getitem__, self._ARG_KEYS))
            memo = self.__dict__.get("_group_args_memo")
            entry = None if memo is None else memo.get(id(group))
            if entry is not None and entry[0] is group and all(map(operator.is_, entry[1], values)):
                return entry[2]
        rule = self._RULE
        hyper, flags = self._rule_args(group)
        if rule.optional:
            # The rule's conditions on its optional states, on the group's own values (as torch's classes test
            # them); without lr, which the memo does not follow (a condition on it would raise KeyError).
            state_keys = rule.used_states(dict(zip(rule.hyper[1:], hyper)), frozenset(flags))
        else:
            state_keys = rule.states
        args = _GroupArgs(state_keys, hyper, rule.flag_bits(flags))
        if not compiling and all(map(_is_plain, values)):
            if memo is None:
                memo = self.__dict__["_group_args_memo"] = {}
            if len(memo) >= len(self.param_groups):  # forget groups that are gone (load_state_dict replaces them)
                live = set(map(id, self.param_groups))
                for gone in [k for k in memo if k not in live]:
                    del memo[gone]
            memo[id(group)] = (group, values, args)
        return args

    def _new_state(self, param: Tensor, value: float | None = None) -> Tensor:
        """A state tensor for ``param``, zero or filled with ``value``: the param's layout, and the dtype
        ``state_dtype`` says."""
        dtype = state_dtype(param, self.state_dtype)
        if value is None:
            return torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        return torch.full_like(param, complex(value, value) if param.is_complex() else value, dtype=dtype,
                               memory_format=torch.preserve_format)

    def _keeps_master(self, param_dtype: torch.dtype) -> bool:
        """Whether params of this dtype get a master (only bf16/fp16 ones need it): an fp32 copy or a remainder."""
        return bool(self.master_weights) and param_dtype in LOW_PRECISION

    def _master_key(self, param_dtype: torch.dtype, describe=None) -> str | None:
        """The state entry holding the master of params of this dtype: ``"master_param"`` (fp32 copy),
        ``"master_remainder"`` (bf16 params under master_weights="remainder"), or None (no master). Raises for
        fp16 params under "remainder" (naming the param by ``describe()`` when given)."""
        if not self._keeps_master(param_dtype):
            return None
        if self.master_weights != "remainder":
            return MASTER_KEY
        _checks.check_remainder_dtype(type(self).__name__, param_dtype, describe)
        return REMAINDER_KEY

    @staticmethod
    def _lr(group: dict, device: torch.device) -> tuple[float, Tensor | None]:
        """``(lr, lr_tensor)`` for an update call. A tensor lr is passed as a 1-element fp32 tensor on the params'
        device, never read on the host: as is when it already is one (so in-place scheduler updates are seen),
        else converted for this call. The float lr is then ignored by the backends. The exception is a CPU lr
        for GPU params, read on the host as a float (no sync; torch's non-capturable paths do the same)."""
        lr = group["lr"]
        if not torch.is_tensor(lr):
            return float(lr), None
        if lr.device.type == "cpu" and device.type != "cpu":
            # A CPU lr for GPU params (torch's usual tensor lr): read on the host, which costs no sync, where
            # copying it to the device every step would wait for the copy.
            return float(lr.to(torch.float32).item()), None
        if lr.dtype != torch.float32 or lr.device != device:
            lr = lr.to(device=device, dtype=torch.float32)
        return 0.0, lr

    def _rule_args(self, group: dict) -> tuple[list[float], list[str]]:
        """The update rule's hyperparameters after lr (``_RULE.hyper[1:]``, host floats) and the names of its
        switches that are on, for this group."""
        rule = self._RULE
        return ([self._hyper(self._group_value(group, name)) for name in rule.hyper[1:]],
                [name for name in rule.flags if self._group_value(group, name)])

    def _update(self, bucket: Bucket, group: dict, grad_scale, clip_coef, found_inf) -> None:
        """One backend ``update`` call (op contract v4, fusedopt/reference.py) for a bucket."""
        rule = self._RULE
        lr, lr_tensor = self._lr(group, bucket.kparams[0].device)
        args = self._group_args(group)
        states = list(chain.from_iterable(map(bucket.kstates.__getitem__, args.state_keys)))
        scalars = [state[key] for key in rule.scalars for state in bucket.states]
        is_first = bucket.is_first if rule.takes_is_first and states else []
        hyper, bits = [lr, *args.hyper], args.bits
        if bucket.param_ids is not None:  # stochastic rounding (op contract v4, fusedopt.rules.rounding_args)
            hyper += [float(self.seed & 0xFFFFFFFF), float(self.seed >> 32), *map(float, bucket.param_ids)]
            bits |= rules.STOCHASTIC_ROUNDING
            scalars.append(self._rounding_step)
        bucket.backend.update(rule.name, bucket.kparams, bucket.kgrads, states, bucket.kmasters, scalars, is_first,
                              hyper, bits, bool(group["maximize"]), lr_tensor, grad_scale, clip_coef, found_inf)

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """The update of one group by torch.optim's functional for-loop (see _torch_path), grads prepared."""
        raise NotImplementedError

    # --- the step ---
    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step (see the class docstring for the math).

        All or nothing: every group's params, grads and hyperparameters are validated and every update call is
        prepared (``_plan``) before anything is written; only then is lazy state installed and are the kernels
        launched (``_launch``). A step that raises before its first launch leaves params, grads and state as
        they were, bit for bit.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        last = self._last_step
        last["grad_norm"] = last["found_nonfinite"] = None
        grad_scale = getattr(self, "grad_scale", None)
        grad_scale = None if grad_scale is None else grad_scale.reshape(()).to(torch.float32)
        plan = self._plan(grad_scale is not None)
        if plan is None:
            return loss
        if isinstance(plan, _TorchStep):  # differentiable=True or sparse grads: torch's own implementation
            return _torch_path.step(self, plan.per_group, loss)

        scaler_found_inf = getattr(self, "found_inf", None)
        found_inf = None if scaler_found_inf is None else scaler_found_inf.reshape(()).to(torch.float32)
        clip_coef = None
        if found_inf is not None:
            last["found_nonfinite"] = found_inf > 0
        if self.max_grad_norm is not None or self.nonfinite != "ignore":
            # The check pass only reads; "raise" raises here, before anything is written.
            norm, nonfinite = self._check(plan.check_grads, plan.device, grad_scale, plan.ready, plan.reduction,
                                          plan.grad_dtype())
            last["grad_norm"] = norm
            last["found_nonfinite"] = nonfinite if found_inf is None else nonfinite | (found_inf > 0)
            if self.nonfinite == "raise":
                self._raise_if_nonfinite(nonfinite, found_inf)
            elif self.nonfinite == "skip":
                flag = nonfinite.to(torch.float32)
                found_inf = flag if found_inf is None else torch.maximum(found_inf, flag)
            if self.max_grad_norm is not None:
                clip_coef = torch.clamp(self.max_grad_norm / (norm + CLIP_EPS), max=1.0)
        self._launch(plan, grad_scale, clip_coef, found_inf)
        if self.param_rounding == "stochastic":
            self._rounding_step.add_(1)  # on the device; every step, so a skipped one needs no host read
        return loss

    def _plan(self, grads_written: bool) -> _StepPlan | _TorchStep | None:
        """Everything the step will do, checked and prepared, with nothing written: None when no param has a
        grad. Raises a clear error for any param, grad or hyperparameter the step cannot take."""
        per_group = self._params_with_grads()
        # Flat lists of all groups (the group's own lists when there is one: nothing here mutates them).
        all_params = per_group[0][0] if len(per_group) == 1 else [p for params, _ in per_group for p in params]
        if not all_params:
            return None
        if _torch_path.takes(self):  # differentiable=True: torch's own implementation, under autograd
            return _TorchStep(per_group)
        all_grads = per_group[0][1] if len(per_group) == 1 else [g for _, grads in per_group for g in grads]
        for gi, (group, (params, _)) in enumerate(zip(self.param_groups, per_group)):
            if params:
                self._check_group(group, gi)
        # DTensor params (FSDP2, tensor parallel): the kernels take their local shards, and the check pass
        # reduces over the ranks that shard them (see _dist).
        reduction = _dist.plan(all_params, all_grads)
        if reduction is not None:
            n_params = sum(len(group["params"]) for group in self.param_groups)
            if getattr(self, "_dist_checked", None) != n_params:  # first step, or after add_param_group
                _dist.check_same_params(self, reduction)
                self._dist_checked = n_params
            per_local = [([_dist.local(p) for p in params], [_dist.local(g) for g in grads])
                         for params, grads in per_group]
            all_params = [p for params, _ in per_local for p in params]
            all_grads = [g for _, grads in per_local for g in grads]
        else:
            per_local = per_group
        # Fast path: every grad is valid and every param/grad is a contiguous, aligned real tensor, no two
        # sharing memory (checked in one native call). Otherwise validate in Python (clear errors) and take the
        # general path.
        ready = ops.kernel_ready(all_params, all_grads)
        duplicated = False if ready else self._validate(per_group, per_local, grads_written)
        if duplicated is _torch_path.SPARSE:  # sparse grads (SGD): torch's own implementation
            if self.param_rounding == "stochastic":
                raise RuntimeError(f"{type(self).__name__}: param_rounding='stochastic' does not take sparse "
                                   f"gradients (their steps run torch.optim's own implementation)")
            return _TorchStep(per_group)
        plan = _StepPlan(per_group=per_group, per_local=per_local, check_grads=all_grads,
                         device=all_params[0].device, ready=ready, reduction=reduction)
        if duplicated:
            # A param listed twice is updated twice, one after the other, as torch.optim's for-loop does; its
            # grad counts once in the global norm.
            unique: dict[int, int] = {}
            for i, p in enumerate(p for params, _ in per_group for p in params):
                unique.setdefault(id(p), i)
            plan.check_grads = [all_grads[i] for i in unique.values()]

        # Lazy state, created but not installed: _launch installs it.
        states_per_group = [self._group_states(group, params, plan)
                            for group, (params, _) in zip(self.param_groups, per_group)]
        if reduction is not None:  # kernels get the local shards of params, grads and states
            plan.fresh_local = {lp for (params, _), (lparams, _) in zip(per_group, per_local)
                                for p, lp in zip(params, lparams) if p in plan.fresh}
            states_per_group = [_dist.local_states(states) for states in states_per_group]
        else:
            plan.fresh_local = plan.fresh
        if self.param_rounding == "stochastic":
            plan.positions = self._param_positions(per_group, per_local)
        occurrences = _occurrences(per_group) if duplicated else [None] * len(per_group)
        for group, (params, grads), states, occ in zip(self.param_groups, per_local, states_per_group, occurrences):
            if not params:
                continue
            buckets = self._buckets(group, params, grads, states, plan, grads_written, occ)  # validates
            if plan.param_writes:  # temporaries must copy the params written at launch: prepared then again
                buckets = functools.partial(self._buckets, group, params, grads, states, plan, grads_written, occ)
            plan.calls.append((group, buckets))
            # A later listing of a param reads what the earlier one wrote: its calls are prepared at launch.
            for k in range(1, max(occ) + 1 if occ else 1):
                plan.calls.append((group, functools.partial(self._buckets, group, params, grads, states, plan,
                                                            grads_written, occ, k)))
        return plan

    def _launch(self, plan: _StepPlan, grad_scale, clip_coef, found_inf) -> None:
        """Installs the state ``_plan`` created, then runs every update call and copies temporaries back. Should
        the first call refuse its arguments (only the kernels check state replaced by hand), the installed state
        is taken back out: nothing was written yet."""
        if self.param_rounding == "stochastic":
            self._place_rounding_step(plan.device)
        previous = {p: dict(self.state[p]) if p in self.state else None for p in plan.new_state}
        for p, entries in plan.new_state.items():
            self.state[p].update(entries)
        for p, keys in plan.dropped.items():
            for key in keys:
                del self.state[p][key]
        written = [(t, t.clone()) for t, _ in plan.param_writes]
        for t, value in plan.param_writes:
            t.copy_(value)
        launched = False
        for group, buckets in plan.calls:
            for bucket in buckets() if callable(buckets) else buckets:
                # A later occurrence of a duplicated param finds its grad unscaled already.
                scale = grad_scale if bucket.occurrence == 0 else None
                try:
                    self._update(bucket, group, scale, clip_coef, found_inf)
                except RuntimeError as error:
                    if not launched:
                        for p, state in previous.items():
                            if state is None:
                                del self.state[p]
                            else:
                                self.state[p].clear()
                                self.state[p].update(state)
                        for t, old in written:
                            t.copy_(old)
                    raise self._named_error(error, plan, group, bucket) from error
                launched = True
                for original, tmp in bucket.writeback:
                    original.copy_(tmp)
        if plan.fresh and found_inf is not None:
            self._after_skippable_first_step(plan.fresh, found_inf)

    def _named_error(self, error: RuntimeError, plan: _StepPlan, group: dict, bucket: Bucket) -> RuntimeError:
        """A backend's error names an index within its call ("params[1]", "param 1"); say which param of which
        group that is. (The step's own validation catches bad input before any call; this is for what only a
        kernel checks, such as a state tensor replaced by hand.)"""
        message = str(error)
        found = re.search(r"\[(\d+)\]|param (\d+)", message) if message.startswith("fusedopt:") else None
        if not found or int(found.group(1) or found.group(2)) >= len(bucket.params):
            return error
        kernel_param = bucket.params[int(found.group(1) or found.group(2))]
        return type(error)(f"{type(self).__name__}: {self._describe_kernel_param(plan, group, kernel_param)}: "
                           f"{message}")

    def _describe_kernel_param(self, plan: _StepPlan, group: dict, kernel_param: Tensor) -> str:
        """``_describe`` of a tensor the kernels get: buckets hold those (local shards of DTensors), so its place
        in the group is found through the plan's per_local lists."""
        gi = next(i for i, g in enumerate(self.param_groups) if g is group)
        j = next(j for j, lp in enumerate(plan.per_local[gi][0]) if lp is kernel_param)
        param = plan.per_group[gi][0][j]
        pi = next(i for i, p in enumerate(group["params"]) if p is param)
        return self._describe(gi, pi)

    # --- stochastic rounding (param_rounding="stochastic") ---
    def _param_positions(self, per_group, per_local) -> dict[int, int]:
        """id(tensor the kernels get) -> the param's position in the param groups (its first listing): the id
        that keys its random bits, independent of how the step buckets the params."""
        position = {}
        for p in chain.from_iterable(group["params"] for group in self.param_groups):
            position.setdefault(id(p), len(position))
        return {id(lp): position[id(p)] for (params, _), (lparams, _) in zip(per_group, per_local)
                for p, lp in zip(params, lparams)}

    def _place_rounding_step(self, device: torch.device) -> None:
        """The rounding step on the params' device (created at 0 at the first step; moved with the params)."""
        step = self._rounding_step
        if step is None:
            self._rounding_step = torch.zeros((), dtype=torch.int64, device=device)
        elif step.device != device:
            self._rounding_step = step.to(device)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict; with ``param_rounding="stochastic"`` also ``"param_rounding"``: the seed and
        the rounding step (the tensor itself, as torch keeps its ``step`` tensors), so a loaded run continues with
        the same random bits."""
        state_dict = super().state_dict()
        if self.param_rounding == "stochastic":
            step = self._rounding_step if self._rounding_step is not None else torch.zeros((), dtype=torch.int64)
            state_dict[ROUNDING_KEY] = {"seed": self.seed, "step": step}
        return state_dict

    def _after_skippable_first_step(self, fresh: set[Tensor], found_inf: Tensor) -> None:
        """Called when some params got their state this step and the step may have been skipped."""

    def _params_with_grads(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """(params, grads) per group, for the params that have a grad."""
        per_group = []
        for group in self.param_groups:
            params = group["params"]
            grads = [p.grad for p in params]  # one read of each .grad (a property: not free per param)
            for g in grads:
                if g is None:
                    grads = [g for g in grads if g is not None]
                    params = [p for p in params if p.grad is not None]
                    break
            per_group.append((params, grads))
        return per_group

    # --- validation at step time ---
    _HYPERPARAMETERS: tuple[str, ...] = ()  # the numeric hyperparameters of a group (a tuple value: each entry)

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        """The constructor's checks of a group's hyperparameters, in torch.optim's order and words. At step time
        (``at_step``) a tensor value is compared only when that needs no sync (see ``_checks._readable``)."""

    def _check_group(self, group: dict, gi: int, remember: bool = True) -> None:
        """A group's hyperparameters as the constructor checks them (they may have been written into
        ``param_groups`` or loaded since): numbers or tensors, in range. The error says which group. A group
        whose values are the very objects checked at the last step is not checked again (``remember``)."""
        values = tuple(group.values())
        checked = self.__dict__.get("_checked_groups")
        if checked is not None and gi < len(checked) and checked[gi][0] is group \
                and len(checked[gi][1]) == len(values) and all(map(operator.is_, checked[gi][1], values)):
            return
        mutable = False  # a tensor or a list may change in place: such a group is checked at every step
        for key in self._HYPERPARAMETERS:
            mutable |= isinstance(group[key], list)
            for value in (group[key] if isinstance(group[key], (tuple, list)) else (group[key],)):
                if type(value) in (float, int):
                    continue
                mutable |= isinstance(value, Tensor)
                if isinstance(value, str) or not isinstance(value, (numbers.Real, Tensor)):
                    raise TypeError(f"Invalid {key} value: {group[key]!r} in param group {gi}; expected a number "
                                    f"or a 1-element tensor, got {type(value).__name__}")
        try:
            self._check_hyperparameters(group, at_step=True)
        except ValueError as error:
            raise ValueError(f"{error} (param group {gi})") from None
        if remember and not mutable and not torch.compiler.is_compiling():
            if checked is None:
                checked = self.__dict__["_checked_groups"] = []
            checked.extend([(None, ())] * (gi + 1 - len(checked)))
            checked[gi] = (group, values)

    def _validate(self, per_group, per_local=None, grads_written: bool = False) -> bool | object:
        """Raise a clear error for any param or grad the step cannot take, naming it in its group, before
        anything is changed. Returns whether some param is listed more than once (then updated once per
        listing, in order), or ``_torch_path.SPARSE`` when valid grads include sparse ones (taken by torch's
        for-loop). Input valid but not kernel-ready (layouts, lazy negation, misalignment) takes the general
        path's temporaries. Without ``per_local`` (torch's for-loop, _torch_path, which updates one tensor after
        another) memory shared between tensors is not checked."""
        name = type(self).__name__
        device = None
        sparse = False
        # While torch.compile traces, tensors have no addresses and inference mode cannot be queried: those checks
        # are left to eager steps.
        compiling = torch.compiler.is_compiling()
        inference_ok = compiling or torch.is_inference_mode_enabled()
        for gi, (group, (params, grads)) in enumerate(zip(self.param_groups, per_group)):
            index = iter(range(len(group["params"])))
            for p, g in zip(params, grads):
                pi = next(i for i in index if group["params"][i] is p)
                where = self._describe(gi, pi)
                if g.is_sparse:
                    if not self._SPARSE_GRADS:
                        raise RuntimeError(f"{name} does not support sparse gradients ({where}); "
                                           f"please consider torch.optim.SparseAdam instead")
                    sparse = True
                if group.get("fused") and p.device.type not in _FUSED_DEVICES:
                    # torch's check and words (it runs at the step too, for params with grads)
                    raise RuntimeError(f"`fused=True` requires all the params to be floating point Tensors of "
                                       f"supported devices: {list(_FUSED_DEVICES)} but {p.dtype} and "
                                       f"{p.device.type}")
                if p.dtype not in SUPPORTED_DTYPES:
                    raise RuntimeError(f"{name}: unsupported parameter dtype {p.dtype} ({where})")
                if g.dtype != p.dtype or g.shape != p.shape or g.device != p.device:
                    raise RuntimeError(
                        f"{name}: gradient of {where} does not match its parameter: grad "
                        f"{g.dtype}{list(g.shape)} on {g.device}, param {p.dtype}{list(p.shape)} on {p.device}")
                if device is None:
                    device = p.device
                elif p.device != device:
                    raise RuntimeError(
                        f"{name}: all parameters with gradients must be on one device (global-norm clipping "
                        f"and the non-finite check span them all); got {device} and {p.device} ({where})")
                if not inference_ok and p.is_inference():
                    # torch.optim's in-place update raises this (torch's words), after updating earlier params.
                    raise RuntimeError(f"{name}: {where} is an inference tensor (created under "
                                       f"torch.inference_mode()): Inplace update to inference tensor outside "
                                       f"InferenceMode is not allowed. Make a clone to get a normal tensor")
        if sparse:
            return _torch_path.SPARSE
        if compiling or per_local is None:
            return False
        return _check_memory(self, per_group, per_local, grads_written)

    def _describe(self, group_index: int, param_index: int) -> str:
        group = self.param_groups[group_index]
        names = group.get("param_names")
        if names:
            return f"parameter {names[param_index]!r}"
        return f"parameter {param_index} of param group {group_index}"

    def _check(self, grads, device, grad_scale, ready: bool, reduction: _dist.Reduction | None = None,
               dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The check pass: global norm (unscaled, pre-clip) and the non-finite flag, both on the device. With
        ``reduction`` (DTensor params), ``grads`` are local shards and the sums are all-reduced over the ranks.
        ``dtype``: the dtype of every grad, when the caller knows it."""
        if not ready:  # kernels take contiguous real tensors; this pass only reads, so copies need no writeback
            grads = [_read_only_input(g) for g in grads]
        if reduction is None:
            total = self._check_sums(grads, device, dtype)
        else:
            total = None
            for weight, index in reduction.classes:
                part = self._check_sums([grads[i] for i in index], device, dtype)
                part = part if weight == 1 else part * weight
                total = part if total is None else total + part
            total = reduction.all_reduce(total)
        sumsq, flag = total.unbind()  # one op for both views
        nonfinite = flag > 0
        norm = sumsq.sqrt()
        if grad_scale is not None:
            norm = norm / grad_scale
        return norm, nonfinite

    def _check_sums(self, grads, device, dtype: torch.dtype | None = None) -> Tensor:
        """[sum of squares, non-finite flag] over ``grads``: one backend call per dtype (``dtype``: the dtype of
        every grad, when the caller knows it)."""
        total = None
        split = _split_by_dtype(grads) if dtype is None else {dtype: range(len(grads))}
        for dtype, index in split.items():
            part = grads if len(index) == len(grads) else [grads[i] for i in index]
            partial = ops.resolve(self.backend, device, dtype).check(part)
            total = partial if total is None else total + partial
        return total

    def _raise_if_nonfinite(self, nonfinite: Tensor, found_inf: Tensor | None) -> None:
        # "raise" must look at the flag on the host. Under GradScaler, inf/NaN in scaled grads is the scaler's
        # normal signal to skip and shrink its scale, so it is not an error.
        if not bool(nonfinite) or (found_inf is not None and bool(found_inf > 0)):
            return
        bad = [self._describe(gi, pi)
               for gi, group in enumerate(self.param_groups)
               for pi, p in enumerate(group["params"])
               if p.grad is not None and not bool(torch.isfinite(_values(_dist.local(p.grad))).all())]
        where = ", ".join(bad) or "another rank's shard (DTensor parameters)"
        raise RuntimeError(f"{type(self).__name__}: non-finite gradient (NaN or inf) in {where}; "
                           f"nothing was updated")

    def _installed_group_states(self, group: dict, params: list[Tensor]) -> list[dict]:
        """The state of each param, missing entries created and installed at once: for torch's for-loop
        (_torch_path), which has validated its input and writes from here on."""
        plan = _StepPlan(per_group=[], per_local=[], check_grads=[], device=None, ready=False, reduction=None)
        self._group_states(group, params, plan)
        for p, entries in plan.new_state.items():
            self.state[p].update(entries)
        return [self.state[p] for p in params]

    def _group_states(self, group: dict, params: list[Tensor], plan: _StepPlan) -> list[dict | None]:
        """The state of each param: its own, or one created now (lazy state creation; torch.compile runs this
        part eagerly) and recorded in ``plan`` (``new_state``, ``fresh``) for ``_launch`` to install."""
        states = list(map(self.state.get, params))
        new_state = plan.new_state
        for i in self._missing_states(states, group):
            p = params[i]
            entries = new_state.get(p)  # a param listed twice gets one state
            if entries is None:
                entries = {}
                self._init_state(p, entries, group)
                if not entries:  # a stateless algorithm (SGD without momentum) leaves no empty entry behind
                    continue
                new_state[p] = entries
                plan.fresh.add(p)
            states[i] = {**(states[i] or {}), **entries}
        if self.master_weights:
            # Created from the param on its first step, also for states loaded from a torch checkpoint, or from a
            # loaded master of the other kind (a checkpoint of the other master_weights mode).
            for i, p in enumerate(params):
                key = self._master_key(p.dtype, lambda p=p: self._describe(*self._locate(group, p)))
                if key is None or key in (states[i] or ()):
                    continue
                entries = new_state.setdefault(p, {})
                if key not in entries:
                    entries[key] = self._new_master(p, states[i] or {}, key, plan)
                states[i] = {**(states[i] or {}), **entries}
        return states

    def _locate(self, group: dict, param: Tensor) -> tuple[int, int]:
        """(group index, index in the group) of ``param`` of ``group``, for error messages."""
        gi = next(i for i, g in enumerate(self.param_groups) if g is group)
        return gi, next(i for i, p in enumerate(group["params"]) if p is param)

    @staticmethod
    def _new_master(p: Tensor, state: dict, key: str, plan: _StepPlan) -> Tensor:
        """A master of kind ``key`` for ``p`` (state layout: the param's): from a loaded master of the other kind
        when the state holds one, exactly (join_bf16 of param and remainder is the fp32 master; split_bf16 of an
        fp32 master gives its remainder and a param that may differ from the one master_weights=True rounded:
        at ties to even, or where the param was changed after the checkpoint, so the plan writes that param at
        launch), else from the param. The other kind's entry is dropped at launch. DTensors: on local shards."""
        other_key = REMAINDER_KEY if key == MASTER_KEY else MASTER_KEY
        other = state.get(other_key)
        if other is not None:
            plan.dropped.setdefault(p, []).append(other_key)
        local = _dist.local(p)
        if key == MASTER_KEY:
            master = torch.empty_like(p, dtype=torch.float32)
            if other is not None and p.dtype == torch.bfloat16:
                local = reference.join_bf16(local, _dist.local(other))
            _dist.local(master).copy_(local)
            return master
        remainder = torch.zeros_like(p, dtype=torch.int16, memory_format=torch.preserve_format)
        if other is not None:
            hi, lo = reference.split_bf16(_dist.local(other).to(torch.float32))
            _dist.local(remainder).copy_(lo)
            plan.param_writes.append((local, hi))
        return remainder

    def _buckets(self, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict | None],
                 plan: _StepPlan, grads_written: bool, occurrences: list[int] | None = None,
                 occurrence: int = 0) -> list[Bucket]:
        """Split a group's params by dtype into backend calls, with kernel-ready tensor lists. With
        ``occurrences`` (some param is listed twice), only the params at that ``occurrence`` of theirs."""
        keys = self._state_keys(group)
        fresh, ready = plan.fresh_local, plan.ready
        buckets = []
        split = _split_by_dtype(params)
        plan.dtypes.update(split)
        for dtype, index in split.items():
            if occurrences is not None:
                index = [i for i in index if occurrences[i] == occurrence]
                if not index:
                    continue
            real_dtype = _REAL_DTYPE.get(dtype, dtype)
            bucket = Bucket(ops.resolve(self.backend, params[index[0]].device, real_dtype, self._RULE.name),
                            occurrence=occurrence)
            whole = len(index) == len(params)  # the usual single-dtype group: no re-indexed copies
            bucket.params = params if whole else [params[i] for i in index]
            bucket.states = states if whole else [states[i] for i in index]
            # A param listed twice is new at each listing of its first step, as in torch.optim's for-loop (which
            # reads every listing's momentum buffer before updating any).
            bucket.is_first = [p in fresh for p in bucket.params] if fresh else [False] * len(index)
            master = self._master_key(dtype)
            if self.param_rounding == "stochastic":
                if dtype == torch.float16:
                    raise RuntimeError(f"{type(self).__name__}: param_rounding='stochastic' rounds bfloat16 params; "
                                       f"{self._describe_kernel_param(plan, group, bucket.params[0])} is float16 (use "
                                       f"master_weights=True for fp16 params)")
                if dtype == torch.bfloat16:  # fp32 and fp64 params hold the exact result: nothing to round
                    bucket.param_ids = [plan.positions[id(p)] for p in bucket.params]
            if ready:
                # States and master copies share their param's layout (_init_state, _group_states,
                # _restore_loaded_state), so contiguous too.
                bucket.kparams = bucket.params
                bucket.kgrads = grads if whole else [grads[i] for i in index]
                for key in keys:
                    bucket.kstates[key] = [state[key] for state in bucket.states]
                if master:
                    bucket.kmasters = [state[master] for state in bucket.states]
            else:
                grad_writeback = bucket.writeback if grads_written and occurrence == 0 else None
                for i in index:
                    layout = _KernelLayout(params[i])
                    bucket.kparams.append(layout.view(params[i], bucket.writeback))
                    bucket.kgrads.append(layout.view(grads[i], grad_writeback))
                    for key in keys:
                        bucket.kstates[key].append(layout.view(states[i][key], bucket.writeback))
                    if master:
                        bucket.kmasters.append(layout.view(states[i][master], bucket.writeback))
            buckets.append(bucket)
        return buckets

    @staticmethod
    def _hyper(value) -> float:
        """A hyperparameter as a host float (1-element tensor betas or weight_decay are read here, as torch's
        non-capturable paths do; a tensor lr is not, see ``_lr``)."""
        return float(value.item()) if torch.is_tensor(value) else float(value)

    # --- state_dict: torch's format; fp32 state for low-precision params; shapes checked first ---
    def load_state_dict(self, state_dict: dict) -> None:
        # Work on the dict the user's pre-hooks produced: a temporary pre-hook that runs after theirs validates
        # it (before the base class changes anything) and a temporary post-hook that runs before theirs restores
        # full precision from it.
        loaded: dict[str, dict] = {}

        def validate(optimizer, sd):
            self._validate_loaded_state(sd)
            loaded["state_dict"] = sd

        def restore(optimizer):
            self._restore_loaded_state(loaded["state_dict"])

        _checks.check_loaded_rounding(state_dict.get(ROUNDING_KEY))
        handles = (self.register_load_state_dict_pre_hook(validate),
                   self.register_load_state_dict_post_hook(restore, prepend=True))
        try:
            super().load_state_dict(state_dict)
        finally:
            for handle in handles:
                handle.remove()
        # A checkpoint without it (torch.optim's, or one rounded to nearest) leaves this optimizer's seed and step.
        loaded_rounding = state_dict.get(ROUNDING_KEY)
        if loaded_rounding is not None and self.param_rounding == "stochastic":
            self.seed = int(loaded_rounding["seed"])
            step = loaded_rounding["step"]
            step = step.detach().reshape(()) if torch.is_tensor(step) else torch.tensor(int(step))
            self._rounding_step = step.to(dtype=torch.int64, copy=True)

    def _restore_loaded_state(self, state_dict: dict) -> None:
        """``step`` becomes a 0-dim fp32 tensor on the param's device; state tensors get the param's layout and
        ``state_dtype``'s dtype (fp32 for bf16/fp16 params by default: the base class cast them to the param's
        dtype, so they are taken again from the saved values). A saved master (fp32 copy or int16 remainder) is
        restored as saved when this optimizer keeps a master for the param, of either kind (one of the other kind
        is converted exactly on the next step, see ``_new_master``; should both be saved, the own kind is kept),
        and dropped otherwise (the param itself is the value then)."""
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            state = self.state.get(p)
            if not saved or not state:
                continue
            for key, value in saved.items():
                if key in self._RULE.scalars:  # "step", NAdam's "mu_product", ASGD's "eta" and "mu"
                    state[key] = torch.as_tensor(float(value), dtype=torch.float32, device=p.device) \
                        if not torch.is_tensor(value) else value.to(dtype=torch.float32, device=p.device)
                elif key in self._TENSOR_STATE_KEYS and torch.is_tensor(value):
                    # The state dtype (the base class cast to the param's dtype), and the param's layout (what
                    # _init_state gives, and the fast path relies on).
                    dtype = state_dtype(p, self.state_dtype)
                    if state[key].dtype != dtype or state[key].stride() != p.stride() or _needs_copy(state[key]):
                        state[key] = torch.empty_like(p, dtype=dtype).copy_(value)
                elif key in (MASTER_KEY, REMAINDER_KEY):
                    keeps = self._keeps_master(p.dtype) and torch.is_tensor(value)
                    if keeps and key == REMAINDER_KEY:  # only bf16 params have remainders
                        keeps = p.dtype == torch.bfloat16
                    if keeps:
                        dtype = torch.float32 if key == MASTER_KEY else torch.int16
                        state[key] = torch.empty_like(p, dtype=dtype).copy_(value)
                    else:
                        del state[key]
            if MASTER_KEY in state and REMAINDER_KEY in state:  # both kept: a bf16 param with masters
                del state[REMAINDER_KEY if self.master_weights is True else MASTER_KEY]

    def _validate_loaded_state(self, state_dict: dict) -> None:
        """The whole dict, before anything is installed (a load that raises changes nothing): the groups'
        hyperparameters as ``step`` checks them, and every state entry: tensor states of the param's shape (and
        sharding), floating or complex, with values that can be moved to the param's device; ``step`` counts
        that are non-negative numbers (a count of -1 would divide by a zero bias correction)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            return  # the base class raises its own error for this
        for gi, (saved_group, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved_group["params"]) != len(group["params"]):
                return
            # What the group will hold after the load: the saved values, flags an older checkpoint lacks filled
            # in (see __setstate__), and this group's value for anything else it lacks.
            self._check_group({**group, **self._LEGACY_FLAG_DEFAULTS, **saved_group}, gi, remember=False)
        for gi, (saved_group, group) in enumerate(zip(saved_groups, self.param_groups)):
            for pi, (saved_id, p) in enumerate(zip(saved_group["params"], group["params"])):
                where = self._describe(gi, pi)
                for key, value in state_dict["state"].get(saved_id, {}).items():
                    if key in self._RULE.scalars:
                        _check_loaded_scalar(key, value, p, where)
                        continue
                    if not torch.is_tensor(value) or not (key in self._TENSOR_STATE_KEYS or key == MASTER_KEY
                                                          or key == REMAINDER_KEY):
                        continue
                    if key in self._TENSOR_STATE_KEYS:
                        _dist.check_state_layout(value, p, where, key)
                    if value.shape != p.shape:
                        raise ValueError(
                            f"loaded state dict does not match {where}: state {key!r} has shape "
                            f"{list(value.shape)}, the parameter has shape {list(p.shape)}")
                    if key == REMAINDER_KEY:
                        if value.dtype != torch.int16:
                            raise ValueError(f"loaded state dict does not match {where}: state {key!r} has dtype "
                                             f"{value.dtype}; master remainders are int16")
                    elif not (value.is_floating_point() or value.is_complex()):
                        raise ValueError(f"loaded state dict does not match {where}: state {key!r} has dtype "
                                         f"{value.dtype}; optimizer states are floating tensors")
                    _check_movable(value, p, where, key)


def _check_movable(value: Tensor, param: Tensor, where: str, key: str) -> None:
    """A loaded tensor must be copyable to its param's device (a meta tensor holds no values)."""
    if value.device.type == "meta" and param.device.type != "meta":
        raise ValueError(f"loaded state dict does not match {where}: state {key!r} is a meta tensor (no values), "
                         f"the parameter is on {param.device}")


def _check_loaded_scalar(key: str, value, param: Tensor, where: str) -> None:
    """A scalar state of the rule (``step``, NAdam's ``mu_product``, ASGD's ``eta``/``mu``): a real number or a
    one-element real tensor; a step count must also be non-negative."""
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"loaded state dict does not match {where}: {key!r} must be a number or a one-element "
                             f"real tensor, got {value.dtype}{list(value.shape)}")
        _check_movable(value, param, where, key)
        if value.device.type == "meta":
            return
        count = float(value.item())  # once per load, not per step
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        count = float(value)
    else:
        raise ValueError(f"loaded state dict does not match {where}: {key!r} must be a number or a one-element "
                         f"real tensor, got {type(value).__name__} {value!r}")
    if key == "step" and not count >= 0.0:
        raise ValueError(f"loaded state dict does not match {where}: 'step' is {count:g}; step counts are "
                         f"non-negative")
