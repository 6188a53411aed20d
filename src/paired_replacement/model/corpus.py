"""A real English corpus that every Debian machine has, split into parts by document.

The documents are the licence texts under ``/usr/share/common-licenses`` (Apache-2.0, GPL-3,
MPL-2.0, ...; ~260 kB of English prose). Symbolic links (``GPL -> GPL-3``) are the same document
and are counted once. The split is by document and deterministic: the files sorted by name, the
even positions (0, 2, ...) are the *calibration* part, the odd ones the *held-out* part, so no
document is in both. Every document is recorded with its path, size and sha256, and a slice
records its token ids, so a run can be checked and repeated.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

DEFAULT_ROOTS = (Path("/usr/share/common-licenses"),)
SPLITS = ("calibration", "heldout")


@dataclass(frozen=True)
class Document:
    name: str
    path: str
    sha256: str
    size: int
    split: str

    def text(self) -> str:
        data = Path(self.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise RuntimeError(f"{self.path} changed since the corpus was listed")
        return data.decode("utf-8", errors="replace")


def documents(roots: Sequence[Path] = DEFAULT_ROOTS) -> list[Document]:
    """Every document under ``roots`` (regular files, links resolved once), split by position."""
    seen: dict[Path, str] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            real = path.resolve()
            if real.is_file() and real not in seen:
                seen[real] = path.name
    if not seen:
        raise FileNotFoundError(
            "no corpus documents under " + ", ".join(map(str, roots))
            + " (Debian's base-files package provides /usr/share/common-licenses)"
        )
    docs = []
    for position, real in enumerate(sorted(seen, key=lambda p: (p.name, str(p)))):
        data = real.read_bytes()
        docs.append(
            Document(
                name=real.name,
                path=str(real),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                split=SPLITS[position % 2],
            )
        )
    return docs


@dataclass
class TokenSlice:
    """The first ``len(token_ids)`` tokens of one split, cut into forward passes (segments).

    Each segment is one teacher-forced forward with a fresh context: a document's tokens cut into
    pieces of at most ``context`` tokens. ``segments`` holds ``(start, stop)`` offsets into
    ``token_ids`` and ``sources`` the document each segment came from.
    """

    split: str
    token_ids: list[int]
    segments: list[tuple[int, int]]
    sources: list[str]
    documents: list[Document]

    def metadata(self) -> dict:
        return {
            "split": self.split,
            "num_tokens": len(self.token_ids),
            "token_ids_sha256": token_ids_sha256(self.token_ids),
            "segments": [list(s) for s in self.segments],
            "segment_documents": self.sources,
            "documents": [asdict(d) for d in self.documents],
        }


def token_ids_sha256(token_ids: Iterable[int]) -> str:
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()


def token_slice(
    split: str,
    num_tokens: int,
    encode: Callable[[str], list[int]],
    *,
    context: int = 1024,
    bos: int | None = None,
    roots: Sequence[Path] = DEFAULT_ROOTS,
) -> TokenSlice:
    """The first ``num_tokens`` tokens of ``split``, documents in name order.

    Each document is tokenized on its own (``bos``, if given, starts every segment); a split with
    fewer tokens than asked gives what it has.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_tokens < 1 or context < 2:
        raise ValueError(f"need num_tokens >= 1 and context >= 2, got {num_tokens}, {context}")
    docs = [d for d in documents(roots) if d.split == split]
    ids: list[int] = []
    segments: list[tuple[int, int]] = []
    sources: list[str] = []
    used: list[Document] = []
    step = context - (bos is not None)
    for doc in docs:
        if len(ids) >= num_tokens:
            break
        doc_ids = encode(doc.text())
        used.append(doc)
        for start in range(0, len(doc_ids), step):
            piece = doc_ids[start : start + step]
            if bos is not None:
                piece = [bos] + piece
            piece = piece[: num_tokens - len(ids)]
            if len(piece) < 2:
                break
            segments.append((len(ids), len(ids) + len(piece)))
            sources.append(doc.name)
            ids.extend(piece)
            if len(ids) >= num_tokens:
                break
    return TokenSlice(split, ids, segments, sources, used)
