"""What torch.compile may assume about rnnfast's own helpers."""
from __future__ import annotations


def compile_constant(fn):
    """Marks `fn` as torch.compiler.assume_constant_result does: torch.compile calls it
    once while tracing and keeps the result as a constant (for checks it cannot trace:
    the file system, a build, the CPU or GPU at hand). That decorator imports
    torch._dynamo, which made `import rnnfast` take 1.4 s instead of 0.1 s; it only sets
    this attribute, and tests/test_compile.py checks that it still does."""
    fn._dynamo_marked_constant = True
    return fn
