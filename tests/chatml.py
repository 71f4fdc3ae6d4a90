"""ChatML walked by hand, for the chat tests: an independent account of which tokens are the assistant's."""

from __future__ import annotations


def assistant_positions(ids: list[int], tokenizer) -> list[int]:
    """The tokens after each ``<|im_start|>assistant\\n`` header through the next ``<|im_end|>``."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + len(header)] == header:
            i += len(header)
            while ids[i] != end:
                out.append(i)
                i += 1
            out.append(i)
        i += 1
    return out
