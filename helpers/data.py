"""The lessons' data: four corpora of human-rated text, as a stream of labelled records.

Hutto & Gilbert (ICWSM 2014) had every sentence rated by at least 20 people on a scale from
-4 (very negative) to +4 (very positive). The mean rating becomes the label: above 0 is
``"positive"``, below 0 is ``"negative"``, and rows rated exactly 0 are left out because they have
no side to learn (data/README.md counts them). ``make data`` fetches the files; this module only
reads them, and works when copied alone next to a notebook (point ``TBB_DATA_DIR`` at the files).

Loading all four files takes about 0.2 s, and every call checks the bytes it reads against their
SHA-256: hashing the 2.7 MB costs about 5 ms, and a truncated or edited file then fails loudly
instead of quietly teaching on different data.
"""

from __future__ import annotations

import hashlib
import html
import os
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, TypedDict

#: Where ``make data`` puts the files: the repository's data/ folder.
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: Domain name -> file name, in the order the lessons use.
DOMAINS: dict[str, str] = {
    "tweets": "tweets_GroundTruth.txt",
    "movie_reviews": "movieReviewSnippets_GroundTruth.txt",
    "amazon_reviews": "amazonReviewSnippets_GroundTruth.txt",
    "nyt_editorials": "nytEditorialSnippets_GroundTruth.txt",
}

#: Domain -> SHA-256 of its file: data/SHA256SUMS, repeated so this module works when copied alone.
SHA256: dict[str, str] = {
    "tweets": "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
    "movie_reviews": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
    "amazon_reviews": "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
    "nyt_editorials": "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
}

# The texts were HTML-escaped when collected ("&amp;", "&lt;", and once "&amp;amp;"). Only these
# complete entities are decoded: html.unescape alone would also turn "&para" inside a word into "¶".
_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);")


class Record(TypedDict):
    """One labelled event: what the lessons publish and learn from."""

    id: str  # "<domain>:<id in the file>"; the files reuse ids, so the domain keeps them unique
    domain: str
    text: str
    rating: float  # mean human rating in [-4, 4], never 0
    label: Literal["positive", "negative"]


class DataMissingError(FileNotFoundError):
    """A corpus file is missing or does not match its checksum; ``make data`` fixes both."""


def _data_dir(data_dir: str | Path | None) -> Path:
    """The argument if given, else $TBB_DATA_DIR if set, else DATA_DIR (read at call time)."""
    return Path(data_dir or os.environ.get("TBB_DATA_DIR") or DATA_DIR)


def _check_domains(domains: Iterable[str] | str | None) -> list[str]:
    if domains is None:
        return list(DOMAINS)
    names = [domains] if isinstance(domains, str) else list(domains)
    unknown = [name for name in names if name not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; choose from {list(DOMAINS)}")
    return names


def _read_verified(domain: str, data_dir: str | Path | None) -> bytes:
    """The domain's file as bytes; DataMissingError if it is absent or its SHA-256 is not the expected one."""
    path = _data_dir(data_dir) / DOMAINS[domain]
    if not path.is_file():
        raise DataMissingError(f"{path} is missing: run `make data` to fetch the corpora")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256[domain]:
        raise DataMissingError(f"{path} does not match its checksum (corrupt?): run `make data` to fetch it")
    return data


def verify(data_dir: str | Path | None = None) -> list[Path]:
    """Check that the four files exist and match their checksums; return their paths.

    Raises DataMissingError, whose one-line message names the file and says to run ``make data``.
    """
    for domain in DOMAINS:
        _read_verified(domain, data_dir)
    return [_data_dir(data_dir) / name for name in DOMAINS.values()]


def _clean(text: str) -> str:
    """Decode HTML entities (twice, for the double-escaped ones) and collapse runs of whitespace."""
    for _ in range(2):
        if "&" in text:
            text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return " ".join(text.split())


def load_records(
    domains: Iterable[str] | str | None = None, data_dir: str | Path | None = None
) -> list[Record]:
    """The labelled records of ``domains`` (default: all four, in DOMAINS order), in file order.

    Rows rated exactly 0 are left out: they are neither positive nor negative. File order is NOT a
    fair stream for the movie reviews (they come sorted by label); use ``shuffled`` or ``drift_order``.
    Raises DataMissingError if a file is missing or corrupt, and ValueError for an unknown domain.
    """
    records: list[Record] = []
    for domain in _check_domains(domains):
        raw = _read_verified(domain, data_dir)
        # UTF-8 (non-ASCII mostly in the movie reviews), CRLF line ends, no newline after the last row.
        for line in raw.decode("utf-8").split("\r\n"):
            if not line.strip():
                continue
            # Split at the first two tabs only, so a tab inside a text would stay in the text.
            # (Not csv: a text opening with a stray '"' would swallow the rows after it.)
            row_id, rating_text, text = line.split("\t", 2)
            rating = float(rating_text)
            if rating == 0:
                continue
            label: Literal["positive", "negative"] = "positive" if rating > 0 else "negative"
            records.append(
                {
                    "id": f"{domain}:{row_id}",
                    "domain": domain,
                    "text": _clean(text),
                    "rating": rating,
                    "label": label,
                }
            )
    return records


def shuffled(records: Sequence[Record], seed: int = 42) -> list[Record]:
    """A new list with the records in a random order that is the same for the same seed."""
    out = list(records)
    random.Random(seed).shuffle(out)
    return out


def drift_order(
    records: Sequence[Record], domains: Iterable[str] | str | None = None, seed: int = 42
) -> list[Record]:
    """One domain after another, shuffled within each: a stream whose topic shifts at known points.

    ``domains`` gives the order (default DOMAINS order); records of domains not named are left out.
    """
    order: list[Record] = []
    for domain in _check_domains(domains):
        order += shuffled([r for r in records if r["domain"] == domain], seed)
    return order
