"""``dispatcher batch FILE.jsonl`` against the real system: results in input order, a summary,
and a run killed half-way resumes from its output file without submitting any line twice."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.system import System

pytestmark = pytest.mark.e2e


def _line(prompt: str, **extra: Any) -> str:
    return json.dumps({"app": "simulated/echo", "input": {"prompt": prompt, **extra}})


def _command(system: System, key: str, source: Path, out: Path, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "dispatcher", "batch", str(source), "--out", str(out),
        "--url", system.base_url, "--api-key", key, "--concurrency", str(concurrency),
    ]  # fmt: skip


def _results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _all_runs(client: httpx.Client) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/runs", params=params).json()
        ids += [run["id"] for run in page["data"]]
        if not (cursor := page["next_cursor"]):
            return ids


def test_a_batch_writes_one_result_per_line_in_order_and_a_summary(
    system: System, tmp_path: Path
) -> None:
    key = system.new_tenant("batch-summary")
    source, out = tmp_path / "runs.jsonl", tmp_path / "results.jsonl"
    lines = [_line(f"p{i}", latency_ms=(9 - i) * 40) for i in range(10)]
    lines[3] = "{not json"
    lines[5] = json.dumps({"app": "nobody/nothing", "input": {}})
    lines[7] = _line("x", fail_with=400)
    source.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        _command(system, key, source, out, 4), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    results = _results(out)
    assert [r["line"] for r in results] == list(range(1, 11))
    expected = ["succeeded"] * 10
    expected[3] = expected[5] = "rejected"
    expected[7] = "failed"
    assert [r["status"] for r in results] == expected
    assert results[0]["output"]["text"] == "p0" and results[9]["output"]["text"] == "p9"
    assert results[3]["error"]["code"] == "malformed_json"
    assert results[5]["error"]["code"] == "unknown_app"
    assert results[7]["error"]["code"] == "invalid_request"
    assert results[0]["provider"] == "simulated" and results[0]["usage"]["input_tokens"] == 1
    assert "10 lines: 7 succeeded, 3 failed (2 rejected by the API)" in done.stdout
    assert "by provider: simulated 7" in done.stdout and "cost: $" in done.stdout
    assert "10/10" in done.stderr and "/s ETA" in done.stderr


def test_a_killed_batch_resumes_from_its_output_without_duplicates(
    system: System, tmp_path: Path
) -> None:
    key = system.new_tenant("batch-resume")
    source, out = tmp_path / "runs.jsonl", tmp_path / "results.jsonl"
    total = 40
    source.write_text("\n".join(_line(f"p{i}", latency_ms=300) for i in range(total)) + "\n")
    command = _command(system, key, source, out, 4)

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not (out.exists() and out.read_text().count("\n") >= 8):
        assert first.poll() is None, "the batch ended before it could be interrupted"
        assert time.monotonic() < deadline, "no results after 90s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    written = out.read_text().count("\n")
    assert written < total
    with out.open("a") as file:  # a line torn by the kill
        file.write('{"line": ')

    second = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    results = _results(out)
    assert [r["line"] for r in results] == list(range(1, total + 1))
    assert all(r["status"] == "succeeded" for r in results)
    assert [r["output"]["text"] for r in results] == [f"p{i}" for i in range(total)]
    assert f"{total} lines: {total} succeeded" in second.stdout
    ids = {r["id"] for r in results}
    with system.client(key) as client:
        assert sorted(_all_runs(client)) == sorted(ids) and len(ids) == total


def test_a_batch_with_a_foreign_output_file_is_refused(system: System, tmp_path: Path) -> None:
    key = system.new_tenant("batch-foreign")
    source, out = tmp_path / "runs.jsonl", tmp_path / "results.jsonl"
    source.write_text(_line("p") + "\n")
    out.write_text('{"line": 7}\n')
    done = subprocess.run(
        _command(system, key, source, out, 1), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "does not hold results of this input" in done.stderr
