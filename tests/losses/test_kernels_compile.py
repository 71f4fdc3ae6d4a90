"""Every variant of the fused kernels compiles for an H100 (sm_90) with Triton's bundled ptxas.

The CPU test run executes the kernels under the interpreter, which accepts code the GPU compiler may not;
this compiles them ahead of time, without a device, in a subprocess where ``TRITON_INTERPRET`` is unset.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from audit.losses.kernels import fused

target = GPUTarget("cuda", 90, 32)
args = dict(s_ptr="*bf16", s_stride="i32", t_ptr="*bf16", t_stride="i32", y_ptr="*i64", y_stride="i32",
            g_ptr="*bf16", g_stride="i32", loss_ptr="*fp32", scale_ptr="*fp32", N="i32", K="i32",
            ignore_index="i32", smooth="fp32", smooth_per_class="fp32", ce_coef="fp32", kl_coef="fp32",
            kl_grad_coef="fp32", inv_t="fp32")
for k in (5, 3000, 32000):
    for teacher, labels, grad in itertools.product((True, False), repeat=3):
        if not (teacher or labels):
            continue
        cfg = fused.config(k, 2 if teacher else 1)
        consts = dict(HAS_TEACHER=teacher, HAS_LABELS=labels, COMPUTE_GRAD=grad, SINGLE_PASS=cfg.single_pass,
                      BLOCK_ROWS=cfg.block_rows, BLOCK_K=cfg.block_k)
        source = ASTSource(fused.fused_loss_kernel, dict(args, **dict.fromkeys(consts, "constexpr")), constexprs=consts)
        triton.compile(source, target=target, options={"num_warps": cfg.num_warps})
    cfg = fused.config(k, 1)
    consts = dict(BLOCK_ROWS=cfg.block_rows, BLOCK_K=cfg.block_k)
    signature = dict(g_ptr="*bf16", g_stride="i32", go_ptr="*fp32", go_stride="i32", N="i32", K="i32",
                     **dict.fromkeys(consts, "constexpr"))
    triton.compile(ASTSource(fused.scale_grad_kernel, signature, constexprs=consts), target=target)
print("compiled")
"""


@pytest.mark.slow
def test_all_variants_compile_for_sm90() -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
