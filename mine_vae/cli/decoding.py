"""How much the commands that decode (`generate`, `interpolate`) may decode at once: the memory free on the device
and what one sequence takes. The decoding itself is `mine_vae.text_latent`'s."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..text_latent import generation_limit as generation_limit  # re-exported: the decoding flags cap max_new_tokens


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`: the GPU's free memory, or the memory Linux reports available (all of
    the machine's where it cannot tell)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40  # cannot tell: the allocator will say so


def sequence_bytes(model: Any, max_new_tokens: int) -> int:
    """A generous estimate of the memory one sequence takes while it is decoded: the next-token scores over the
    vocabulary (a few copies: softmax, sampling) and the decoder's key/value cache over every position, in fp32."""
    head = model.decoder.get_output_embeddings()
    layers = getattr(model.config.decoder, "num_hidden_layers", 1) or 1
    positions = max_new_tokens + 2 + (getattr(model.config, "latent_memory_positions", 0) or 0)
    return 4 * (4 * head.out_features + 2 * layers * head.in_features * positions)


def most_that_fit(bytes_each: int, device: torch.device) -> int:
    """How many items of `bytes_each` bytes fit in the memory free on `device`, keeping a quarter of it free."""
    return available_memory(device) * 3 // 4 // max(1, bytes_each)


INTERPOLATION_BATCH = 64  # latents decoded at once: memory stays bounded however many steps are asked for
