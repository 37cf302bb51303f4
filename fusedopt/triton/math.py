"""Per-element rules of csrc/include/fusedopt/math.h as ``@triton.jit`` functions, in the same order of
operations: one rounding per operation (launch with ``enable_fp_fusion=False``, the counterpart of
``-ffp-contract=off``), divisions and square roots correctly rounded (``div_rn``/``sqrt_rn``; Triton's ``/`` and
``sqrt`` are approximate on NVIDIA GPUs), and ``fma`` exactly where math.h writes one (where torch's CPU
kernels fuse: ``add`` with alpha, ``addcmul``, ``lerp``).

Low-precision values move as their 16 bits (the kernels view bf16 memory as uint16) and convert with math.h's
bit formulas: the interpreter's own fp32->bf16 cast truncates instead of rounding, the formulas round to
nearest even on every target, so interpreter and GPU give the same bits. fp16 uses Triton's cast, which rounds
to nearest even on the GPU (cvt.rn) and in the interpreter (numpy), as math.h's float_to_fp16 does.
"""
import triton
import triton.language as tl

# Element kinds of a tensor in memory (constexpr switches of the kernels).
F32 = 0
BF16 = 1
F16 = 2
I16 = 3  # master remainders (master_weights="remainder")


@triton.jit
def as_pointer(address, KIND: tl.constexpr):
    """An int64 address from a table as a pointer to the elements of a ``KIND`` tensor (bf16 as its uint16
    bits)."""
    if KIND == 1:
        element = tl.uint16
    elif KIND == 2:
        element = tl.float16
    elif KIND == 3:
        element = tl.int16
    else:
        element = tl.float32
    return address.to(tl.pointer_type(element))


@triton.jit
def is_nonfinite(x):
    # Exponent all ones: inf or NaN, read from the bits as math.h does.
    return (x.to(tl.uint32, bitcast=True) & 0x7F800000) == 0x7F800000


@triton.jit
def bf16_to_float(h):
    return (h.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def float_to_bf16(x):
    u = x.to(tl.uint32, bitcast=True)
    # Round to nearest even: add just under half an ulp plus the lowest kept bit, then drop the low 16 bits.
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    # A NaN could round to inf (or wrap): keep its sign and top payload and force the quiet bit instead.
    nan = (u >> 16) | 0x0040
    # The test as math.h's, x != x. As an integer compare on the bits, LLVM's SLP vectorizer merged those of four
    # bf16 stores (the update kernel's bf16 param and three bf16 states) into one 64-lane compare that NVPTX
    # unpacks bit by bit, and the kernel spilled registers. (math.h adds the NaN's quiet bit as an addend instead
    # of this select, for GCC's vectorizer: the same bits.)
    is_nan = x != x
    return tl.where(is_nan, nan, rounded).to(tl.uint16)


@triton.jit
def split_bf16(m):
    """math.h's split_bf16: (bf16 bits, int16 remainder) holding the fp32 ``m`` exactly; the bf16 value is ``m``
    rounded to nearest, ties away from zero (on the bits: the magnitude rounds up when the low half is >=
    0x8000, and the remainder is that low half read as int16). A NaN keeps float_to_bf16's quiet NaN (its
    carry would reach the sign)."""
    u = m.to(tl.uint32, bitcast=True)
    low = u & 0xFFFF
    up = low >> 15
    is_nan = m != m  # float_to_bf16's test (see there)
    hi = tl.where(is_nan, (u >> 16) | 0x0040, (u >> 16) + up)
    lo = low.to(tl.int32) - (up.to(tl.int32) << 16)
    return hi.to(tl.uint16), lo.to(tl.int16)


@triton.jit
def join_bf16(hi, lo):
    """math.h's join_bf16: the fp32 master of bf16 bits ``hi`` and int16 remainder ``lo``, the rounding carry
    taken back unless ``hi`` is a NaN or a zero."""
    h = hi.to(tl.uint32)
    mag = h & 0x7FFF
    down = ((lo < 0) & (mag != 0) & (mag <= 0x7F80)).to(tl.uint32)
    low = lo.to(tl.uint16, bitcast=True).to(tl.uint32)
    return (((h - down) << 16) | low).to(tl.float32, bitcast=True)


@triton.jit
def load_joined(p_ptr, r_ptr, offs, mask):
    """The fp32 masters of bf16 params (``p_ptr``, as uint16) from their remainders (``r_ptr``, int16)."""
    return join_bf16(tl.load(p_ptr + offs, mask=mask, other=0), tl.load(r_ptr + offs, mask=mask, other=0))


@triton.jit
def store_split(p_ptr, r_ptr, offs, x, mask):
    """fp32 masters ``x`` stored as bf16 params and their remainders."""
    hi, lo = split_bf16(x)
    tl.store(p_ptr + offs, hi, mask=mask)
    tl.store(r_ptr + offs, lo, mask=mask)


@triton.jit
def load_float(ptr, offs, mask, KIND: tl.constexpr):
    """Elements of a ``KIND`` tensor as fp32."""
    x = tl.load(ptr + offs, mask=mask, other=0)
    if KIND == 1:
        return bf16_to_float(x)
    else:
        return x.to(tl.float32)


@triton.jit
def store_float(ptr, offs, x, mask, KIND: tl.constexpr):
    """fp32 values stored into a ``KIND`` tensor, rounded to nearest even."""
    if KIND == 1:
        tl.store(ptr + offs, float_to_bf16(x), mask=mask)
    elif KIND == 2:
        tl.store(ptr + offs, x.to(tl.float16), mask=mask)
    else:
        tl.store(ptr + offs, x, mask=mask)


@triton.jit
def splat_load(ptr, offs):
    """The value at ``ptr`` in every lane of ``offs``'s shape. Flags that mask a vector are compared as vectors:
    the interpreter mis-types comparisons of 0-d values (their result cannot be combined with a mask)."""
    return tl.load(ptr + tl.zeros_like(offs))


@triton.jit
def not_skipped(mask, found_inf_ptr, offs, HAS_FOUND_INF: tl.constexpr):
    """``mask`` with every lane off when found_inf != 0: a skipped step loads and stores nothing."""
    if HAS_FOUND_INF:
        mask = mask & (splat_load(found_inf_ptr, offs).to(tl.float32) == 0.0)
    return mask


@triton.jit
def lerp(start, end, weight):
    # torch.lerp: two branches (on |weight| < 0.5) so that weight 1 gives exactly `end`, each a single fused
    # multiply-add.
    return tl.where(tl.abs(weight) < 0.5, tl.fma(weight, end - start, start),
                    tl.fma(weight - 1.0, end - start, end))


@triton.jit
def maximum(a, b):
    # torch.maximum: a NaN in either operand wins.
    return tl.where((a != a) | (a > b), a, b)


@triton.jit
def pow_int(base, n):
    """``base ** n`` (float64) for an integral float32 count ``n`` < 2^32, by repeated squaring: no libdevice
    (the interpreter lacks it), within a few float64 ulps of Python's ``base ** n`` (far below float32's)."""
    k = n.to(tl.int64)
    result = tl.full(base.shape, 1.0, tl.float64)
    for _ in tl.static_range(32):
        result = tl.where((k & 1) != 0, result * base, result)
        base = base * base
        k = k >> 1
    return result


@triton.jit
def pow_real(base, exponent):
    """``base ** exponent`` (float64, base > 0) for any real exponent, as exp(exponent * log(base)) (no
    libdevice pow: the interpreter lacks it): within a few float64 ulps of Python's ``**`` for the moderate
    exponents of the rules (NAdam's 0.96^(step psi), ASGD's (1 + lambd lr step)^alpha), far below float32's."""
    return tl.exp(exponent * tl.log(base))


@triton.jit
def sign(x):
    # torch.sign: 1, -1 or 0, and 0 for NaN (math.h's sign).
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def clamp(x, lo, hi):
    # torch.clamp with float bounds: max with lo, then min with hi; a NaN x stays NaN (math.h's clamp).
    y = tl.where(lo > x, lo, x)
    return tl.where(hi < y, hi, y)


@triton.jit
def prepare_grad(g, grad_scale_ptr, clip_coef_ptr, grads_ptr, offs, mask, G_KIND: tl.constexpr,
                 HAS_GRAD_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr):
    """GradScaler unscale (written back to the grad), then clip and maximize as one factor (math.h's
    unscale_grad, grad_factor, prepare_grad)."""
    if HAS_GRAD_SCALE:
        g = tl.div_rn(g, tl.load(grad_scale_ptr).to(tl.float32))
        store_float(grads_ptr, offs, g, mask, G_KIND)
    if HAS_CLIP:
        factor = tl.load(clip_coef_ptr).to(tl.float32)
    else:
        factor = tl.full((), 1.0, tl.float32)
    if MAXIMIZE:
        factor = -factor
    return g * factor


# ---------------------------------------------------------------------------------------------------------------
# Stochastic rounding of bf16 params (param_rounding="stochastic"): math.h's section of the same name, line for
# line. Philox 4x32-10 (Salmon et al. 2011) on uint32 values, keyed by the optimizer's seed; element e of a param
# takes the high 16 bits of word e % 4 of the call with counter (e // 4 low word, e // 4 high word, param id,
# rounding step). Each lane computes its quad's whole call and keeps its word: the bits of math.h's one call per
# quad, whatever the block size.

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """math.h's philox4x32_10: uint32 counter words (blocks of one shape) and key words -> the four output
    words. Products wrap modulo 2^32 (their low words), umulhi gives the high words."""
    for r in tl.static_range(10):
        if r > 0:
            k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)
            k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = tl.mul(c0, PHILOX_M0, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = tl.mul(c2, PHILOX_M1, sanitize_overflow=False)
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
    return c0, c1, c2, c3


@triton.jit
def rounding_bits(offs, seed_lo, seed_hi, param_id, step):
    """math.h's rounding_bits for a block of element indices ``offs`` (int64) of one param: 16 random bits each
    (uint32). ``seed_lo``, ``seed_hi``, ``param_id``, ``step``: integers, their low 32 bits taken."""
    q = offs >> 2
    zero = tl.zeros_like(offs).to(tl.uint32)
    c0 = (q & 0xFFFFFFFF).to(tl.uint32)
    c1 = (q >> 32).to(tl.uint32)
    c2 = zero + param_id.to(tl.uint32)
    c3 = zero + step.to(tl.uint32)
    k0 = zero + seed_lo.to(tl.uint32)
    k1 = zero + seed_hi.to(tl.uint32)
    o0, o1, o2, o3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    word = offs & 3
    out = tl.where(word == 0, o0, tl.where(word == 1, o1, tl.where(word == 2, o2, o3)))
    return out >> 16


@triton.jit
def float_to_bf16_stochastic(x, random16):
    """math.h's float_to_bf16_stochastic: add 16 random bits to the low half, keep the high half (unbiased);
    NaN as float_to_bf16 (tested as x != x there too)."""
    u = x.to(tl.uint32, bitcast=True)
    rounded = (u + random16) >> 16
    nan = (u >> 16) | 0x0040
    is_nan = x != x
    return tl.where(is_nan, nan, rounded).to(tl.uint16)
