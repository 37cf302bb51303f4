"""The Triton backend's one update op (op contract v4, see fusedopt/reference.py): ``update(rule, ...)`` runs any
rule of fusedopt/triton/rules.py over all tensors of a call in at most two launches, whatever their number:

1. ``_per_tensor_kernel`` (rules with scalar states or per-tensor coefficients; one program per TENSOR_BLOCK
   tensors): the rule's ``per_tensor`` advances each tensor's scalar states on the device (unless the step is
   skipped) and writes its coefficients (Adam: the bias corrections, in float64 from the new count) to a
   scratch table.
2. ``_update_kernel`` (one program per BLOCK elements of one tensor): loads the param (or its fp32 master, or
   the master joined from a bf16 param and its remainder), the grad (unscaled, written back, clipped,
   sign-flipped: math.py's prepare_grad) and the states in use, calls the rule's ``element``, stores the param
   (rounded to nearest, or for bf16 params without a master stochastically: flags bit 16), the master (or param
   and remainder split from it) and the states.

The rule's functions reach the kernels as constexpr arguments (``HYPER``, ``ELEMENT``, ``PER_TENSOR``): Triton
compiles one kernel per rule and switch set, and the interpreter calls them as Python functions. A skipped step
(found_inf != 0) masks every load and store of the caller's tensors off: nothing is written.

Adding a rule on the Triton side (after its fusedopt/rules.py entry, its math.h struct and its reference body):
its ``hyper``, ``element`` and (with scalar states or per-tensor coefficients) ``per_tensor`` as ``@triton.jit``
functions in fusedopt/triton/rules.py, mirroring math.h line for line, and one ``register(TritonRule(...))``.
Nothing here changes: the records, validation, version bumps, custom op (``fusedopt::triton_update``) and fake
are generic over the rule's lists. Its configs in tests/test_triton.py then run it against the reference and the
CPU backend. Limits: at most rules.MAX_HYPER hyperparameters; states share one dtype per call.
"""
# No `from __future__ import annotations`: Triton reads the kernels' "fp64" annotations as written (postponed,
# they are the strings "'fp64'", which it ignores: the hyperparameters became fp32 arguments).
import torch
import triton
import triton.language as tl

from fusedopt import rules as rule_table
from fusedopt.triton import _multi_tensor as mt
from fusedopt.triton.math import (I16, as_pointer, float_to_bf16_stochastic, load_float, load_joined, not_skipped,
                                  prepare_grad, rounding_bits, splat_load, store_float, store_split)
from fusedopt.triton.rules import MAX_HYPER, RULES

# Record of tensor i: numel, the addresses of param, grad, master, then of each state of the rule (Rule.states
# order) and each scalar state (Rule.scalars order), then is_first (0/1) for rules that take it, then the param id
# under stochastic rounding. Absent lists repeat the param's address; constexpr switches keep the kernels from
# touching them.
_PARAM, _GRAD, _MASTER, _STATES = (tl.constexpr(k) for k in range(1, 5))
_REMAINDER_KIND = tl.constexpr(I16)  # the element kind of master remainders (a kernel reads only constexpr globals)


def reload_addresses(has_master: bool, n_used: int) -> bool:
    """The update kernel's RELOAD: with six tensors per element (param, grad, master, three states) it stores the
    states through addresses computed again rather than kept from their loads. Kept, they stayed live across the
    element math and ptxas spilled registers (Adam with master weights and amsgrad, sm_90: 30 to 65 local loads
    and stores per thread); computed again, no spills, for ~3% more instructions, which fewer tensors do not
    need (no spills with five: sass of every Adam and SGD variant, tests/triton_ptx.py's compile)."""
    return 2 + has_master + n_used >= 6


def _record_size(rule: rule_table.Rule, stochastic: bool = False) -> int:
    return _STATES.value + len(rule.states) + len(rule.scalars) + int(rule.takes_is_first) + int(stochastic)


@triton.jit
def _hyper(lr64, h1, h2, h3, h4, h5, h6, h7):
    """The op's hyperparameters as the tuple of float64 values the rules take (h[0]: lr). (Compiled, the float64
    arguments are float64 scalars already; interpreted, Python floats: ``full`` types both.)"""
    return (lr64, tl.full((), h1, tl.float64), tl.full((), h2, tl.float64), tl.full((), h3, tl.float64),
            tl.full((), h4, tl.float64), tl.full((), h5, tl.float64), tl.full((), h6, tl.float64),
            tl.full((), h7, tl.float64))


@triton.jit(do_not_specialize=["n_tensors"])  # any count, one compilation
def _per_tensor_kernel(records, n_tensors, coefs, h0: "fp64", h1: "fp64", h2: "fp64", h3: "fp64", h4: "fp64",
                       h5: "fp64", h6: "fp64", h7: "fp64", lr_ptr, found_inf_ptr, PER_TENSOR: tl.constexpr,
                       N_STATES: tl.constexpr, N_SCALARS: tl.constexpr, N_COEFS: tl.constexpr,
                       TAKES_FIRST: tl.constexpr, HAS_LR_TENSOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                       STOCHASTIC: tl.constexpr, RECORD: tl.constexpr, TENSOR_BLOCK: tl.constexpr):
    t = tl.program_id(0) * TENSOR_BLOCK + tl.arange(0, TENSOR_BLOCK)
    mask = t < n_tensors
    record = records + t * RECORD
    if HAS_LR_TENSOR:
        lr64 = splat_load(lr_ptr, t).to(tl.float64)
    else:
        lr64 = tl.full((), h0, tl.float64)
    h = _hyper(lr64, h1, h2, h3, h4, h5, h6, h7)
    pointers = ()
    values = ()
    for j in tl.static_range(N_SCALARS):
        ptr = tl.load(record + (_STATES + N_STATES + j), mask=mask, other=0).to(tl.pointer_type(tl.float32))
        pointers = pointers + (ptr,)
        values = values + (tl.load(ptr, mask=mask, other=0.0),)
    if TAKES_FIRST:
        first = tl.load(record + (RECORD - 1 - STOCHASTIC), mask=mask, other=0) != 0
    else:
        first = t < 0
    values, c = PER_TENSOR(h, values, first)
    written = not_skipped(mask, found_inf_ptr, t, HAS_FOUND_INF)
    for j in tl.static_range(N_SCALARS):
        tl.store(pointers[j], values[j], mask=written)
    for k in tl.static_range(N_COEFS):
        tl.store(coefs + N_COEFS * t + k, c[k], mask=mask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])  # any seed, one compilation
def _update_kernel(records, work, coefs, h0: "fp64", h1: "fp64", h2: "fp64", h3: "fp64", h4: "fp64", h5: "fp64",
                   h6: "fp64", h7: "fp64", lr_ptr, grad_scale_ptr, clip_coef_ptr, found_inf_ptr, rounding_step_ptr,
                   seed_lo, seed_hi, HYPER: tl.constexpr, ELEMENT: tl.constexpr, FLAGS: tl.constexpr,
                   USED: tl.constexpr, N_STATES: tl.constexpr, N_COEFS: tl.constexpr, TAKES_FIRST: tl.constexpr,
                   P_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_MASTER: tl.constexpr, REMAINDER: tl.constexpr,
                   HAS_LR_TENSOR: tl.constexpr,
                   HAS_GRAD_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                   MAXIMIZE: tl.constexpr, RELOAD: tl.constexpr, STOCHASTIC: tl.constexpr, RECORD: tl.constexpr,
                   BLOCK: tl.constexpr):
    _, t, record, offs, mask = mt.work_item(records, work, RECORD, BLOCK)
    mask = not_skipped(mask, found_inf_ptr, offs, HAS_FOUND_INF)

    # The rule's per-call coefficients, as math.h's hyper() computes them on the host.
    if HAS_LR_TENSOR:
        lr64 = tl.load(lr_ptr).to(tl.float64)
    else:
        lr64 = tl.full((), h0, tl.float64)
    h = HYPER(_hyper(lr64, h1, h2, h3, h4, h5, h6, h7))
    c = ()
    for k in tl.static_range(N_COEFS):
        c = c + (tl.load(coefs + N_COEFS * t + k),)

    p_ptr = as_pointer(tl.load(record + _PARAM), P_KIND)
    g_ptr = as_pointer(tl.load(record + _GRAD), P_KIND)
    g = load_float(g_ptr, offs, mask, P_KIND)
    g = prepare_grad(g, grad_scale_ptr, clip_coef_ptr, g_ptr, offs, mask, P_KIND, HAS_GRAD_SCALE, HAS_CLIP,
                     MAXIMIZE)
    if HAS_MASTER and REMAINDER:  # bf16 params with master remainders (math.py's join_bf16)
        master_ptr = as_pointer(tl.load(record + _MASTER), _REMAINDER_KIND)
        p = load_joined(p_ptr, master_ptr, offs, mask)
    elif HAS_MASTER:
        master_ptr = as_pointer(tl.load(record + _MASTER), 0)
        p = load_float(master_ptr, offs, mask, 0)
    else:
        p = load_float(p_ptr, offs, mask, P_KIND)
    if TAKES_FIRST:
        is_first = splat_load(record + (RECORD - 1 - STOCHASTIC), offs)
        state_mask = mask & (is_first == 0)  # a state with no history yet is not read
    else:
        is_first = tl.zeros_like(offs)
        state_mask = mask
    s_ptrs = ()  # (the param's pointer stands in for the states not in use)
    s = ()
    for k in tl.static_range(N_STATES):
        if (USED >> k) & 1:
            s_ptr = as_pointer(tl.load(record + (_STATES + k)), S_KIND)
            x = load_float(s_ptr, offs, state_mask, S_KIND)
        else:
            s_ptr = p_ptr
            x = tl.zeros_like(p)
        s_ptrs = s_ptrs + (s_ptr,)
        s = s + (x,)

    p, s = ELEMENT(p, g, s, h, c, is_first != 0, FLAGS, USED)

    for k in tl.static_range(N_STATES):
        if (USED >> k) & 1:
            if RELOAD:  # a fresh base: the addresses are computed again instead of kept across the element math
                s_ptr = as_pointer(tl.load(record + (_STATES + k)), S_KIND)
            else:
                s_ptr = s_ptrs[k]
            store_float(s_ptr, offs, s[k], mask, S_KIND)
    # The param's store: split with its remainder; else the fp32 master (when kept) and the param rounded from
    # the value, to nearest or (flags bit 16: bf16 params without a master, the op checks it) stochastically.
    # Remainders and stochastic rounding never meet (the op refuses master_params under flags bit 16).
    if HAS_MASTER and REMAINDER:
        if RELOAD:  # as the states' (kept, the remainder's address made ptxas spill: Adam, amsgrad, bf16 states)
            master_ptr = as_pointer(tl.load(record + _MASTER), _REMAINDER_KIND)
        store_split(p_ptr, master_ptr, offs, p, mask)
    else:
        if HAS_MASTER:
            store_float(master_ptr, offs, p, mask, 0)
        if STOCHASTIC:  # rounded with the bits of (seed, param id, step, element)
            bits = rounding_bits(offs, seed_lo, seed_hi, tl.load(record + (RECORD - 1)), tl.load(rounding_step_ptr))
            tl.store(p_ptr + offs, float_to_bf16_stochastic(p, bits), mask=mask)
        else:
            store_float(p_ptr, offs, p, mask, P_KIND)


def rule_of(name: str):
    """The Triton rule named ``name``, or an error in the ops' words."""
    rule = rule_table.get(name)  # unknown names: fusedopt/rules.py's error
    if name not in RULES:
        mt._fail(f"the Triton backend has no kernel for the update rule {name!r} (it has "
                 f"{', '.join(sorted(RULES))})")
    return rule, RULES[name]


def _check_layout(rule, used, n, states, scalars, is_first, flags) -> None:
    """The flat lists' lengths and the flag bits, in the compiled ops' words (csrc/validate.h)."""
    if not 0 <= flags < 1 << len(rule.flags):
        mt._fail(f"flags is {flags}; rule {rule.name!r} has {len(rule.flags)} flag bits "
                 f"({', '.join(rule.flags) or 'none'})")
    if len(states) != len(used) * n:
        mt._fail(f"states has {len(states)} entries, expected {len(used) * n} ({len(used)} state lists "
                 f"({', '.join(map(rule_table.list_name, used)) or 'none'}) of {n} params)")
    if len(scalars) != len(rule.scalars) * n:
        mt._fail(f"scalars has {len(scalars)} entries, expected {len(rule.scalars) * n} ({len(rule.scalars)} "
                 f"scalar lists ({', '.join(rule.scalars) or 'none'}) of {n} params)")
    if is_first:
        mt.check_length(len(is_first), n, "is_first")


def update(rule, params, grads, states, master_params, scalars, is_first, hyper, flags, maximize, lr_tensor=None,
           grad_scale=None, clip_coef=None, found_inf=None) -> None:
    r, tr = rule_of(rule)
    hyper, flags, scalars, rounding = rule_table.rounding_args(r, params, master_params, hyper, flags, scalars)
    h = r.hyper_dict(hyper)
    used = r.used_states(h, r.flag_names(flags))
    n = len(params)
    checked = mt.check_params(params, grads, _update_kernel)
    _check_layout(r, used, n, states, scalars, is_first, flags)
    if checked is None:
        mt.check_length(len(master_params), 0, "master_params")
        return
    device, numels = checked
    by_state = {key: states[u * n:(u + 1) * n] for u, key in enumerate(used)}
    by_scalar = {key: scalars[j * n:(j + 1) * n] for j, key in enumerate(r.scalars)}
    state_dtype = mt.check_states({rule_table.list_name(k): v for k, v in by_state.items()}, device, numels)
    has_master, remainder = mt.check_master(master_params, device, numels, params[0].dtype)
    for key, tensors in by_scalar.items():
        mt.check_list(tensors, rule_table.list_name(key), device, (torch.float32,), (1,) * n, n,
                      numels_of_params=False)
    mt.check_optional(device, lr_tensor, grad_scale, clip_coef, found_inf)

    block = mt.block_size(_update_kernel)
    columns = [params, grads, master_params if has_master else params,
               *(by_state.get(key, params) for key in r.states), *by_scalar.values()]
    extra = ()  # the records' last entries: is_first for rules that take it (none given: no fresh state), the id
    if r.takes_is_first:
        extra = tuple((int(bool(f)),) for f in is_first) if is_first else ((0,),) * n
    if rounding is not None:
        extra = tuple((*e, i) for e, i in zip(extra or ((),) * n, rounding.param_ids))
    disjoint = [params, grads, *by_state.values(), *([master_params] if has_master else [])]
    records, work, n_work = mt.tables(device, columns, numels, block, extra=extra, disjoint=disjoint)
    mt.bump_versions(params, master_params, states, scalars, grads if grad_scale is not None else [])

    slots = [float(x) for x in hyper] + [0.0] * (MAX_HYPER - len(hyper))
    dummy = records  # absent optional tensors: never read (a constexpr says so)
    lr_arg, found_inf_arg = mt.pointer_or_dummy(lr_tensor, dummy), mt.pointer_or_dummy(found_inf, dummy)
    n_coefs = len(tr.coefficients)
    stochastic = rounding is not None
    common = dict(N_STATES=len(r.states), N_COEFS=n_coefs, TAKES_FIRST=r.takes_is_first,
                  HAS_LR_TENSOR=lr_tensor is not None, HAS_FOUND_INF=found_inf is not None,
                  STOCHASTIC=int(stochastic), RECORD=_record_size(r, stochastic))
    coefs = dummy
    if tr.per_tensor is not None:
        if n_coefs:
            coefs = torch.empty((n, n_coefs), dtype=torch.float32, device=device)
        mt.launch(_per_tensor_kernel, (triton.cdiv(n, mt.TENSOR_BLOCK),), records, n, coefs, *slots, lr_arg,
                  found_inf_arg, PER_TENSOR=tr.per_tensor, N_SCALARS=len(r.scalars), **common,
                  TENSOR_BLOCK=mt.TENSOR_BLOCK)
    if n_work == 0:
        return
    mt.launch(_update_kernel, (n_work,), records, work, coefs, *slots, lr_arg, mt.pointer_or_dummy(grad_scale, dummy),
              mt.pointer_or_dummy(clip_coef, dummy), found_inf_arg, rounding.step if stochastic else dummy,
              rounding.seed_lo if stochastic else 0, rounding.seed_hi if stochastic else 0, HYPER=tr.hyper,
              ELEMENT=tr.element,
              FLAGS=int(flags), USED=tr.used_mask(used), P_KIND=mt.KIND[params[0].dtype], S_KIND=mt.KIND[state_dtype],
              HAS_MASTER=has_master, REMAINDER=remainder, HAS_GRAD_SCALE=grad_scale is not None,
              HAS_CLIP=clip_coef is not None, MAXIMIZE=bool(maximize), RELOAD=reload_addresses(has_master, len(used)),
              BLOCK=block, **common)
