"""Bad ``maskrcnn tune`` inputs: search-space files and storage URLs are one error line naming the
file or flag and the fix; nothing is trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from _bad_input import assert_clean_error, run_cli

pytest.importorskip("optuna")

#: (space file text, fragments of the message)
BAD_SPACES = [
    ("learning_rat: [0.1]\n", ("learning_rat", "not a config field")),
    ("learning_rate: {low: 0.1, high: 0.01}\n", ("learning_rate", "low < high")),
    ("learning_rate: {low: 0, high: 0.01, log: true}\n", ("learning_rate", "low > 0")),
    ("learning_rate: 0.1\n", ("learning_rate", "list of choices")),
    ("train_rois_per_image: [0, 64]\n", ("train_rois_per_image", "not valid")),
    ("- a\n- b\n", ("--space", "mapping")),
    ("a: [\n", ("--space", "not valid YAML")),
]


@pytest.mark.parametrize("text,fragments", BAD_SPACES, ids=[t.split(":")[0][:20] for t, _ in BAD_SPACES])
def test_bad_search_space(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(text)
    result = run_cli("tune", "--config", "shapes_demo", "--data", "shapes:2", "--val-data", "shapes:2", "--trials", "1",
                     "--minutes-per-trial", "0.01", "--space", space, "--out", tmp_path / "out")
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.parametrize("url,fragment", [("nosuchdb://x/y", "--storage"), ("sqlite:////no/such/dir/study.db", "--storage")])
def test_bad_storage_url(tmp_path: Path, url: str, fragment: str) -> None:
    result = run_cli("tune", "--config", "shapes_demo", "--data", "shapes:2", "--val-data", "shapes:2", "--trials", "1",
                     "--minutes-per-trial", "0.01", "--storage", url, "--out", tmp_path / "out")
    assert_clean_error(result, fragment, "sqlite:///study.db")
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.parametrize("flag,value", [("--trials", "0"), ("--minutes-per-trial", "-1"), ("--sampler", "cmaes")])
def test_bad_flags(tmp_path: Path, flag: str, value: str) -> None:
    argv = {"--trials": "1", "--minutes-per-trial": "0.01", "--sampler": "tpe", flag: value}
    result = run_cli("tune", "--config", "shapes_demo", "--data", "shapes:2", "--val-data", "shapes:2",
                     *[x for k, v in argv.items() for x in (k, v)], "--out", tmp_path / "out")
    assert result.code == 2 and flag in result.err and "Traceback" not in result.err
