"""Whether the Hugging Face Hub can be reached, asked without waiting on its client's retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_unreachable() -> bool:
    """True when the Hub's host does not resolve (no network), so loaders go straight to the local cache."""
    # huggingface_hub retries a failed connection for ~25 s; a failed DNS lookup answers in milliseconds.
    # Offline mode (local HF cache) and proxies are left to `datasets` itself.
    if any(os.environ.get(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False
