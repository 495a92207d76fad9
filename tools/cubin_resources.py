"""Compile a Triton (or Gluon) kernel for a chosen GPU architecture on this machine (no GPU needed: the Triton
wheel ships ptxas and cuobjdump) and read its resources: registers, spilled stack bytes, shared memory."""

from __future__ import annotations

import inspect
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction


def kernel_resources(kernel, arg_types: dict, constexprs: dict, arch: int, num_warps: int, num_stages: int,
                     not_divisible: tuple[str, ...] = ()) -> dict:
    """`kernel` (a @triton.jit or @gluon.jit function) compiled for sm_`arch`. `arg_types` maps each runtime argument
    to a Triton type ("*bf16", "i32", "fp32"); every runtime argument outside `not_divisible` is
    taken as a multiple of 16, as the launches' strides, sizes and pointers are."""
    os.environ.pop("TRITON_INTERPRET", None)
    names = list(inspect.signature(kernel.fn).parameters)
    sig = {n: "constexpr" if n in constexprs else arg_types[n] for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in constexprs and n not in not_divisible and not arg_types[n].startswith("fp")}
    source = GluonASTSource if isinstance(kernel, GluonJITFunction) else ASTSource
    src = source(kernel, sig, attrs=attrs, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        report = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                                check=True).stdout
    fields = dict(f.split(":") for f in next(line for line in report.splitlines() if "REG:" in line).split()
                  if ":" in f)
    return {"registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]), "shared_bytes": k.metadata.shared,
            "num_warps": k.metadata.num_warps}
