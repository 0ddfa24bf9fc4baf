"""Metrics records (JSONL, host 0 only) and progress bars."""

import json

from hobs_jax.train import MetricsWriter, progress, read_metrics


def test_jsonl_records_append_and_encode_non_finite(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    w.write("train", 3, {"loss": 0.5, "lr": float("nan")})
    w.close()
    w = MetricsWriter(str(tmp_path), tensorboard=False)  # a resumed run appends
    w.write("eval", 4, {"top1": 0.25})
    w.close()
    records = read_metrics(str(tmp_path))
    assert [(r["kind"], r["step"]) for r in records] == [("train", 3), ("eval", 4)]
    assert records[0]["lr"] == "nan" and records[0]["loss"] == 0.5
    assert read_metrics(str(tmp_path), "eval")[0]["top1"] == 0.25
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(str(tmp_path / "other_host"), enabled=False)
    w.write("train", 1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "other_host").exists()


def test_without_a_terminal_progress_is_logged_as_lines_at_most_every_few_seconds(monkeypatch, caplog):
    import logging

    monkeypatch.setenv("HOBS_JAX_PROGRESS_SECONDS", "0.000001")  # pytest captures stderr: not a TTY
    with caplog.at_level(logging.INFO, logger="hobs_jax.progress"):
        assert list(progress(range(3), total=3, desc="search", unit="episode")) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "hobs_jax.progress"]
    assert lines and all("\r" not in ln for ln in lines) and "search" in lines[-1] and "3/3" in lines[-1]
    monkeypatch.setenv("HOBS_JAX_PROGRESS_SECONDS", "0")
    bar = progress(range(3), total=3, desc="x")
    assert bar.disable and list(bar) == [0, 1, 2]
    assert progress(range(3), total=3, enabled=False).disable
