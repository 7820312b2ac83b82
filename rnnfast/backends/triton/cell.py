"""Device functions shared by the forward and backward kernels: the cell's pointwise
math, the products, the row geometry of a time step, the weights a program holds, the
barrier that ends each phase of a step, and the wait for tagged words."""
import triton
import triton.language as tl


# The cell's pointwise math, forward and backward, is all in these two functions: a
# different cell type changes them (and the number of gates), not the kernels' loops.
# tanh(x) is written 2 / (1 + exp(-2x)) - 1: libdevice's tanh is unavailable in the
# interpreter, and one formula everywhere keeps GPU and CI numerics alike (it is exact
# at both saturations). Each is one function, not nested helpers, because the
# interpreter pays about a millisecond per device-function call.

@triton.jit
def lstm_cell(pre_i, pre_f, pre_g, pre_o, c_prev):
    """Gate pre-activations and c(t-1) -> activated gates i, f, g, o, then c(t), h(t)."""
    gate_i = 1.0 / (1.0 + tl.exp(-pre_i))
    gate_f = 1.0 / (1.0 + tl.exp(-pre_f))
    gate_g = 2.0 / (1.0 + tl.exp(-2.0 * pre_g)) - 1.0
    gate_o = 1.0 / (1.0 + tl.exp(-pre_o))
    c = gate_f * c_prev + gate_i * gate_g
    h = gate_o * (2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0)
    return gate_i, gate_f, gate_g, gate_o, c, h


@triton.jit
def lstm_cell_backward(gate_i, gate_f, gate_g, gate_o, c, c_prev, dh, dc_carried):
    """Saved gates, c(t), c(t-1), dL/dh(t) and the dL/dc(t) carried from t+1 ->
    dL/d(pre-activations) of i, f, g, o and dL/dc(t-1)."""
    tanh_c = 2.0 / (1.0 + tl.exp(-2.0 * c)) - 1.0
    dc = dc_carried + dh * gate_o * (1.0 - tanh_c * tanh_c)
    d_i = dc * gate_g * gate_i * (1.0 - gate_i)
    d_f = dc * c_prev * gate_f * (1.0 - gate_f)
    d_g = dc * gate_i * (1.0 - gate_g * gate_g)
    d_o = dh * tanh_c * gate_o * (1.0 - gate_o)
    return d_i, d_f, d_g, d_o, dc * gate_f


@triton.jit
def dot(a, b, acc, ACC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET_BF16: tl.constexpr,
        INTERPRET_TF32X3: tl.constexpr):
    """acc + a @ b in ACC, as the GPU computes it: every recurrent product goes through
    here, so that the interpreter checks the GPU's arithmetic. On a GPU (both flags
    False) this is tl.dot alone. The interpreter gets bf16 products wrong (INTERPRET_BF16:
    the operands are taken as fp32, which holds their products exactly), and it ignores
    input_precision: for fp32 operands with PRECISION "tf32x3" (INTERPRET_TF32X3) the
    three tf32 products that Triton's F32DotTC pass (3.6, 3.7) issues are made here from
    the same parts, in the same order. (tl.dot's operands share one dtype.)"""
    if INTERPRET_TF32X3 and a.dtype == tl.float32:
        a_big, a_small = tf32_parts(a)
        b_big, b_small = tf32_parts(b)
        small = tl.dot(a_small, b_big, tl.zeros_like(acc), input_precision="ieee", out_dtype=ACC)
        small = tl.dot(a_big, b_small, small, input_precision="ieee", out_dtype=ACC)
        small = tl.where(small == small, small, 0.0)  # NaN (from an Inf operand) -> 0
        acc += tl.dot(a_big, b_big, small, input_precision="ieee", out_dtype=ACC)
    else:
        if INTERPRET_BF16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def tf32_parts(x):
    """fp32 x -> (big, small) as a tf32 mma reads them: |x - big - small| < 2^-21 |x|.
    big: x rounded to tf32 (10 mantissa bits) to nearest, ties away from zero, as
    cvt.rna.tf32.f32 does; Inf and NaN unchanged. small: x - big (exact in fp32, up to
    13 more bits), then truncated to tf32: the mma reads only the top 19 bits of an
    operand register and ignores the rest; Triton does not round it."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded_bits = (bits + 0x1000) & 0xFFFFE000
    finite = (bits & 0x7F800000) != 0x7F800000
    big = tl.where(finite, rounded_bits.to(tl.float32, bitcast=True), x)
    small_bits = (x - big).to(tl.uint32, bitcast=True) & 0xFFFFE000
    return big, small_bits.to(tl.float32, bitcast=True)


@triton.jit
def step_rows(offsets_ptr, sizes_ptr, k, T, B, REVERSE: tl.constexpr, PACKED: tl.constexpr):
    """Rows of processed step k: (first row, active rows) of step k and of step k - 1
    (0 active rows before the first step). Packed input reads them from the step tables
    (already in processing order); dense input has B rows per step."""
    if PACKED:
        k_prev = tl.maximum(k - 1, 0)
        offset = tl.load(offsets_ptr + k)
        size = tl.load(sizes_ptr + k)
        offset_prev = tl.load(offsets_ptr + k_prev)
        size_prev = tl.where(k > 0, tl.load(sizes_ptr + k_prev), 0)
    else:
        if REVERSE:
            t = T - 1 - k
            t_prev = t + 1
        else:
            t = k
            t_prev = t - 1
        offset = t.to(tl.int64) * B
        offset_prev = t_prev.to(tl.int64) * B
        size = B
        size_prev = tl.where(k > 0, B, 0)
    return offset, size, offset_prev, size_prev


@triton.jit
def held_chunks(ptrs, k_index, mask, K, k_stride, W_CHUNKS: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """A weight tile loaded once, for the whole sequence: a tuple of W_CHUNKS tiles, chunk
    c covering reduction indices c * BLOCK_K + k_index (k_index < K are loaded, the rest
    are zero). Chunks of BLOCK_K rather than one tile of K padded to a power of two: no
    registers and no multiplies are spent on padding (P = 768 would pad to 1024).

    ptrs: the tile's pointers at reduction index k_index (0 .. BLOCK_K - 1, broadcast
    against the tile); k_stride: elements between consecutive reduction indices;
    mask: which of the tile's other indices exist."""
    chunks = ()
    for c in tl.static_range(W_CHUNKS):
        chunks = chunks + (tl.load(ptrs + c * BLOCK_K * k_stride,
                                   mask=mask & (c * BLOCK_K + k_index < K), other=0.0),)
    return chunks


@triton.jit
def end_phase(arrivals_ptr, expected, timeout_ptr, USE_BARRIER: tl.constexpr,
              SPIN_LIMIT: tl.constexpr):
    """Makes this phase's global stores visible to whoever reads them next.

    Alone in its batch block, a program only needs its own threads in step
    (bar.sync orders global memory within the block). Sharing the batch block with
    other programs, it counts its arrival and waits until `expected` arrivals have been
    counted: a grid barrier, safe because barrier plans are launched cooperatively
    (all programs resident at once). The wait is bounded: after SPIN_LIMIT polls (far
    above any real wait) the program raises the counter to 2**30, above any count a
    plan expects (plan.py keeps them below), so that no wait of this batch block blocks
    again, and sets the flag at timeout_ptr: a hang ends as an error the host raises,
    not a frozen process. The polls are plain volatile loads; one acquire read after
    them orders this program's later loads after every arrival's stores. That read
    decides whether the wait gave up: Triton drops an atomic whose result is unused
    (3.6 and 3.7 compiled this barrier without its acquire), so the result must be
    used (tests/test_triton_aot.py checks every barrier plan's PTX for it)."""
    tl.debug_barrier()
    if USE_BARRIER:
        tl.atomic_add(arrivals_ptr, 1, sem="release", scope="gpu")
        polls = 0
        while (tl.load(arrivals_ptr, volatile=True) < expected) & (polls < SPIN_LIMIT):
            polls += 1
        seen = tl.atomic_add(arrivals_ptr, 0, sem="acquire", scope="gpu")
        if seen < expected:
            tl.atomic_max(arrivals_ptr, 1 << 30, sem="relaxed", scope="gpu")
            tl.atomic_xchg(timeout_ptr, 1, sem="relaxed", scope="gpu")
        tl.debug_barrier()


# Tagged words (Plan.tagged): what a step exchanges goes between programs as 8-byte
# words, the step's tag in the high 32 bits and the data in the low 32: two 16-bit
# values (the first in bits 0-15) or one fp32. They are written whole by single-copy-
# atomic 8-byte stores (atomic_xchg), so a word that shows its tag shows its data: no
# barrier and no fence are needed, and volatile loads (strong, like the stores) keep
# the reads from racing them.

@triton.jit
def tagged_word(low, tag):
    """int32 data halves `low` and the step's `tag` -> int64 words."""
    return (tl.cast(tag, tl.int64) << 32) | (low.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def half_bits(value):
    """fp16 / bf16 `value` -> its 16 bits in the low half of an int32."""
    if value.dtype == tl.float16:
        bits = value.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    else:  # bf16: the top half of its exact fp32 value
        bits = (value.to(tl.float32).to(tl.int32, bitcast=True) >> 16) & 0xFFFF
    return bits


@triton.jit
def word_value(low, part, like_ptr, WORD_UNITS: tl.constexpr):
    """Value `part` (0: bits 0-15, 1: bits 16-31; one fp32 value: the whole half) of
    the words' data halves `low` (int32), in like_ptr's element type."""
    if WORD_UNITS == 1:
        value = low.to(tl.float32, bitcast=True)
    else:
        bits = (low >> (16 * part)) & 0xFFFF
        if like_ptr.dtype.element_ty == tl.float16:
            value = bits.to(tl.int16).to(tl.float16, bitcast=True)
        else:
            value = (bits << 16).to(tl.float32, bitcast=True).to(tl.bfloat16)  # exact
    return value


@triton.jit
def word_tile(base_ptr, rows, row_mask, cols, row_length, BATCH_AS_N: tl.constexpr):
    """Pointers and mask of [rows, cols] of a row-major [B, row_length] array, taken
    transposed ([cols, rows]) with BATCH_AS_N, as the products read their operand."""
    if BATCH_AS_N:
        ptrs = base_ptr + rows[None, :] * row_length + cols[:, None]
        mask = row_mask[None, :] & (cols < row_length)[:, None]
    else:
        ptrs = base_ptr + rows[:, None] * row_length + cols[None, :]
        mask = row_mask[:, None] & (cols < row_length)[None, :]
    return ptrs, mask


@triton.jit
def load_words(words_ptr, rows, row_mask, row_words, W_CHUNKS: tl.constexpr,
               WORDS: tl.constexpr, BATCH_AS_N: tl.constexpr):
    """Every chunk's words of the rows, all loads in flight before any is waited for
    (so that a step pays one wait, not one a chunk): a tuple of W_CHUNKS [BLOCK_B,
    WORDS] int64 (transposed with BATCH_AS_N), as chunk_values takes them.
    words_ptr: [B, row_words] int64, the slot being read; row_mask: rows to read."""
    loaded = ()
    for c in tl.static_range(W_CHUNKS):
        ptrs, mask = word_tile(words_ptr, rows, row_mask, c * WORDS + tl.arange(0, WORDS),
                               row_words, BATCH_AS_N)
        loaded = loaded + (tl.load(ptrs, mask=mask, other=0, volatile=True),)
    return loaded


@triton.jit
def chunk_words(loaded, words_ptr, rows, row_mask, c, row_words, tag, spin_limit,
                WORDS: tl.constexpr, BATCH_AS_N: tl.constexpr):
    """Chunk c of load_words once each of its words shows `tag`: -> (the words' data
    halves, int32; whether a wait gave up)."""
    ptrs, mask = word_tile(words_ptr, rows, row_mask, c * WORDS + tl.arange(0, WORDS),
                           row_words, BATCH_AS_N)
    words, waiting = wait_for_tag(loaded, ptrs, mask, tag, spin_limit)
    return words.to(tl.int32), waiting


@triton.jit
def wait_for_tag(words, ptrs, mask, tag, spin_limit):
    """words (int64, loaded from ptrs with volatile loads) once each one under mask
    carries `tag` in its high 32 bits: those that do not yet are loaded again, and only
    they, up to spin_limit times. -> (words, whether some never showed the tag)."""
    pending = mask & ((words >> 32).to(tl.int32) != tag)
    polls = 0
    while (tl.max(pending.to(tl.int32)) > 0) & (polls < spin_limit):
        words = tl.where(pending, tl.load(ptrs, mask=pending, other=0, volatile=True), words)
        pending = mask & ((words >> 32).to(tl.int32) != tag)
        polls += 1
    return words, tl.max(pending.to(tl.int32)) > 0


@triton.jit
def rounded(value, out_ptr, INTERPRET_BF16: tl.constexpr):
    """value (ACC) in out_ptr's element type, rounded to nearest even. A GPU's
    conversion does that; Triton's interpreter truncates to bf16 (twice the error,
    measured), so there the bits are rounded first and the conversion is then exact."""
    if INTERPRET_BF16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        value = tl.where(value == value, bits.to(tl.float32, bitcast=True), value)  # NaN stays NaN
    return value.to(out_ptr.dtype.element_ty)
