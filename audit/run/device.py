"""Where and how models run: the device, the dtype, the batch size, and the process group of a launched run."""

from __future__ import annotations

import torch

from audit.errors import AuditError
from audit.run.distributed import ProcessGroup, local_device, process_group
from audit.settings import CompareSettings

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


AUTO_BATCH = {"classifier": {"cuda": 256, "cpu": 64}, "lm": {"cuda": 16, "cpu": 4}}  # rows (examples or windows)


def resolve_device(device: str | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise AuditError(f"expected a device like cpu, cuda or cuda:1, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AuditError(f"expected an available device, got {device!r} but CUDA is not available; use --device cpu")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise AuditError(f"expected device cpu, cuda or mps, got {device!r}")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> bf16 on GPUs that support it, else fp32."""
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if dtype not in DTYPES:
        raise AuditError(f"expected --dtype auto, fp32, bf16 or fp16, got {dtype!r}")
    return DTYPES[dtype]


def resolve_batch_size(batch_size: int | str, device: torch.device, kind: str = "classifier") -> int:
    """"auto" -> :data:`AUTO_BATCH` for the model kind and device type; an int as given."""
    if batch_size != "auto":
        return int(batch_size)
    sizes = AUTO_BATCH["lm" if kind == "lm" else "classifier"]
    return sizes.get(device.type, sizes["cpu"])


def resolve_run(settings: CompareSettings) -> tuple[torch.device, ProcessGroup, torch.dtype]:
    """The device this process evaluates on (``cuda:LOCAL_RANK`` in a launched run), its process group, and
    the dtype models run in."""
    device = resolve_device(settings.device)
    group = process_group(device)
    device = local_device(device, group)
    return device, group, resolve_dtype(settings.dtype, device)
