"""The one place that decides which compute device (and how many CPU threads) to use."""

from __future__ import annotations

from contextlib import contextmanager


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto"`` into ``"cuda"`` when a CUDA GPU is usable, else ``"cpu"``.

    Explicit ``"cuda"``/``"cuda:N"`` requests fail loudly when no GPU exists rather than
    silently running on the CPU.
    """
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested, but torch finds no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"expected device 'auto', 'cpu', 'cuda' or 'cuda:N', found {device!r}")
    return device


@contextmanager
def torch_threads_kept():
    """Restore torch's intra-op thread count after a call that changes it. Ultralytics sets it to
    ``cores - 1`` whenever it selects the CPU (meant for its own training): on a 2-core machine that
    left every later stage-2 forward on one core, at half speed."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16 inference is
    about 3x faster than fp32; elsewhere torch emulates it, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no way to tell, so no bf16
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
