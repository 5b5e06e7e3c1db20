"""bench --plan: the configuration with the most throughput within a latency budget, a
bounded search, and exit 4 when nothing meets the budget."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from onnxopt.api import bench
from onnxopt.errors import ExitCode
from tests.conftest import error_line, run_cli


def test_plan_picks_the_fastest_configuration_within_the_budget(mlp_onnx: Path) -> None:
    report = bench(
        [mlp_onnx], plan=True, latency_budget_ms=1000.0, concurrency_requests=200, runs=5,
        trials=1, warmup=2,
    )  # fmt: skip
    (plan,) = report["plans"]
    assert plan["searched"] == plan["of"] == len(plan["table"])
    modes = {r["mode"] for r in plan["table"]}
    assert "session" in modes and ("processes" in modes or mp.cpu_count() == 1)
    meeting = [r for r in plan["table"] if r["meets_budget"]]
    best = max(meeting, key=lambda r: r["throughput_rps"])
    chosen = plan["chosen"]
    assert chosen["throughput_rps"] == best["throughput_rps"]
    # planted: batching a tiny MLP multiplies its throughput, so a batch above 1 wins
    assert chosen["batch"] > 1
    assert plan["runner_up"]["throughput_rps"] <= chosen["throughput_rps"]
    assert chosen["session_options"]["intra_op_num_threads"] == chosen["threads"]
    # the top two were measured again, alternately, and keep the median of their rounds
    assert plan["confirmed"] == {"rounds": 4, "interleaved": True}
    assert sorted(r.get("rounds", 1) for r in plan["table"])[-2:] == [4, 4]
    for row in plan["table"]:
        assert row["request_latency_ms"] >= row["batching_delay_ms"] >= 0
    assert all(g["passed"] for g in report["gates"] if g["gate"] == "serving_plan")
    assert mp.active_children() == []


def test_an_impossible_budget_exits_4_with_the_table(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = run_cli(
        "bench", mlp_onnx, "--plan", "--latency-budget", "0.0001ms", "--concurrency-requests",
        "50", "--runs", "5", "--trials", "1", "--output", out, "--markdown", tmp_path / "p.md",
    )  # fmt: skip
    assert proc.returncode == ExitCode.GATE, proc.stderr
    assert "no configuration meets the budget" in error_line(proc)
    markdown = (tmp_path / "p.md").read_text()
    assert "Serving plan for" in markdown and "no configuration meets the budget" in markdown
    assert "**FAIL**: serving plan" in markdown
    plan = json.loads(out.read_text())["plans"][0]
    assert plan["chosen"] is None and plan["table"]
    assert not any(r["meets_budget"] for r in plan["table"])
    # larger batches are not tried once a call alone misses the budget
    assert plan["pruned"] and all("missed the budget" in p["why"] for p in plan["pruned"])


def test_the_search_stops_at_its_time_budget(mlp_onnx: Path) -> None:
    report = bench(
        [mlp_onnx], plan=True, plan_seconds=0.001, latency_budget_ms=1000.0,
        concurrency_requests=30, runs=5, trials=1,
    )  # fmt: skip
    plan = report["plans"][0]
    assert plan["searched"] == 1 and "time budget" in plan["stopped"]
    assert len(plan["pruned"]) == plan["of"] - 1


def test_plan_needs_a_budget(mlp_onnx: Path) -> None:
    proc = run_cli("bench", mlp_onnx, "--plan")
    assert proc.returncode == ExitCode.USAGE
    assert "plan needs latency_budget_ms" in error_line(proc)
