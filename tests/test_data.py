"""The lessons' corpora: counts, labels, ids, stream orders, and the errors a newcomer meets.

These tests read the real files in data/. When those are missing they fail with the
DataMissingError message telling the reader to run ``make data`` (``make test`` runs it first).
"""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pytest

from helpers import data
from helpers.data import DOMAINS, DataMissingError, drift_order, load_records, shuffled, verify

# Rows in each file, and rows rated exactly 0 (left out of the labelled stream).
FILE_ROWS = {"tweets": 4200, "movie_reviews": 10605, "amazon_reviews": 3708, "nyt_editorials": 5190}
ZERO_RATED = {"tweets": 4, "movie_reviews": 37, "amazon_reviews": 98, "nyt_editorials": 244}
KEPT = {"tweets": 4196, "movie_reviews": 10568, "amazon_reviews": 3610, "nyt_editorials": 4946}


@pytest.fixture(scope="module")
def records() -> list[data.Record]:
    return load_records()


def longest_run(labels: list[str]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(labels))


def raw_rows(domain: str) -> list[list[str]]:
    """The file's rows split at the first two tabs, without any of helpers.data's processing."""
    text = (verify()[0].parent / DOMAINS[domain]).read_bytes().decode("utf-8")
    return [line.split("\t", 2) for line in text.split("\r\n")]


def test_verify_returns_the_four_files() -> None:
    assert [path.name for path in verify()] == list(DOMAINS.values())


def test_module_checksums_match_sha256sums_file() -> None:
    sums_file = Path(data.__file__).resolve().parent.parent / "data" / "SHA256SUMS"
    listed = {name: digest for digest, name in (line.split() for line in sums_file.read_text().splitlines())}
    assert listed == {DOMAINS[domain]: digest for domain, digest in data.SHA256.items()}


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_counts_per_domain(domain: str) -> None:
    rows = raw_rows(domain)
    assert len(rows) == FILE_ROWS[domain]
    assert sum(float(rating) == 0 for _, rating, _ in rows) == ZERO_RATED[domain]
    kept = load_records([domain])
    assert len(kept) == KEPT[domain] == FILE_ROWS[domain] - ZERO_RATED[domain]


def test_all_domains_in_domains_order(records: list[data.Record]) -> None:
    assert len(records) == sum(KEPT.values()) == 23320
    assert [domain for domain, _ in itertools.groupby(r["domain"] for r in records)] == list(DOMAINS)


def test_record_shape(records: list[data.Record]) -> None:
    types = {"id": str, "domain": str, "text": str, "rating": float, "label": str}
    for record in records:
        assert set(record) == set(types)
        assert all(type(record[key]) is kind for key, kind in types.items()), record  # type: ignore[literal-required]
        assert record["text"].strip() == record["text"] != ""
        assert -4 <= record["rating"] <= 4


def test_labels_follow_the_sign_of_the_rating(records: list[data.Record]) -> None:
    for record in records:
        assert record["rating"] != 0
        assert record["label"] == ("positive" if record["rating"] > 0 else "negative")


def test_ids_unique_across_domains(records: list[data.Record]) -> None:
    assert len({r["id"] for r in records}) == len(records)
    assert all(r["id"].startswith(r["domain"] + ":") for r in records)


def test_text_cleaning() -> None:
    nyt = {r["id"]: r["text"] for r in load_records(["nyt_editorials"])}
    assert nyt["nyt_editorials:15_1"].startswith("Skadden, Arps, Slate, Meagher & Flom,")  # was &amp;amp;
    texts = [r["text"] for r in load_records()]
    assert not any("&amp;" in t or "&lt;" in t or "&gt;" in t or "  " in t for t in texts)
    assert any("Château" in t for t in texts)  # the movie reviews are UTF-8


def test_single_domain_name_and_unknown_domain() -> None:
    assert len(load_records("tweets")) == KEPT["tweets"]
    with pytest.raises(ValueError, match="unknown domain"):
        load_records(["tweet"])


def test_shuffled_is_a_reproducible_permutation(records: list[data.Record]) -> None:
    first, again, other = shuffled(records), shuffled(records), shuffled(records, seed=7)
    assert first == again
    assert first != records and first != other
    assert sorted(r["id"] for r in first) == sorted(r["id"] for r in records)
    assert records == load_records()  # the input is not reordered in place


def test_drift_order_keeps_domains_contiguous_and_shuffles_within(records: list[data.Record]) -> None:
    order = ["movie_reviews", "tweets", "nyt_editorials", "amazon_reviews"]
    stream = drift_order(records, order)
    assert stream == drift_order(records, order)
    assert [domain for domain, _ in itertools.groupby(r["domain"] for r in stream)] == order
    assert sorted(r["id"] for r in stream) == sorted(r["id"] for r in records)
    for domain in order:
        in_file_order = [r["id"] for r in records if r["domain"] == domain]
        in_stream = [r["id"] for r in stream if r["domain"] == domain]
        assert in_stream != in_file_order and sorted(in_stream) == sorted(in_file_order)
    assert [d for d, _ in itertools.groupby(r["domain"] for r in drift_order(records))] == list(DOMAINS)
    assert {r["domain"] for r in drift_order(records, ["tweets"])} == {"tweets"}


def test_movie_reviews_are_sorted_by_label_until_shuffled() -> None:
    movies = load_records(["movie_reviews"])
    labels = [r["label"] for r in movies]
    assert longest_run(labels) > 100  # 200 in the file
    echo = sum(a == b for a, b in itertools.pairwise(labels)) / (len(labels) - 1)
    assert echo > 0.9  # "predict the previous label" scores about 0.95 in file order
    assert longest_run([r["label"] for r in shuffled(movies)]) < 20


def test_empty_directory_raises_data_missing_error(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="make data") as error:
        verify(tmp_path)
    assert "tweets_GroundTruth.txt" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataMissingError, match="make data"):
        load_records(data_dir=tmp_path)
    assert isinstance(error.value, FileNotFoundError)


def test_corrupt_file_raises_data_missing_error(tmp_path: Path) -> None:
    for path in verify():
        shutil.copy(path, tmp_path / path.name)
    verify(tmp_path)
    target = tmp_path / DOMAINS["amazon_reviews"]
    content = bytearray(target.read_bytes())
    content[1000] ^= 0x01
    target.write_bytes(bytes(content))
    with pytest.raises(DataMissingError, match="make data") as error:
        verify(tmp_path)
    assert target.name in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataMissingError, match=target.name):
        load_records(["amazon_reviews"], data_dir=tmp_path)
    assert len(load_records(["tweets"], data_dir=tmp_path)) == KEPT["tweets"]


def test_env_var_overrides_the_default_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBB_DATA_DIR", str(tmp_path))
    with pytest.raises(DataMissingError, match=re.escape(str(tmp_path))):
        verify()
