"""The one place that decides which compute device to use."""

from __future__ import annotations


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
