"""The staged search: candidates as ordinary cached steps, judged against the source.

Each candidate is one step (prune, distill, simplify or quantize) applied to an earlier
candidate (or the source), run as a one-step pipeline by the engine in its own folder under
the search's work folder: the content-addressed cache makes an interrupted search resume and
a re-run all cache hits. Every candidate is verified against the *source* on the held-out
inputs (the task metric when the run has one, else the output budget), and each stage's
verified candidates are timed interleaved with the source. Only the Pareto front of
(speed-up, score) is expanded by the next stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from onnxopt import _fs, deadline
from onnxopt.config import OptimizeStep, PipelineConfig
from onnxopt.modelio import model_digest
from onnxopt.records import CandidateRow
from onnxopt.steps.base import StepContext
from onnxopt.steps.candidates import judge, record_failure, time_rows
from onnxopt.steps.optimize.space import STEP_RULES
from onnxopt.verify import Reference, Verification, resolve_tolerance

log = logging.getLogger("onnxopt")

Row = CandidateRow


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def pareto(rows: list[Row]) -> list[Row]:
    """The rows no other row beats on both speed-up and score, fastest first."""
    timed = [r for r in rows if r.get("speedup") is not None and r.get("score") is not None]
    front = [
        r
        for r in timed
        if not any(
            o is not r
            and o["speedup"] >= r["speedup"]
            and o["score"] >= r["score"]
            and (o["speedup"] > r["speedup"] or o["score"] > r["score"])
            for o in timed
        )
    ]
    return sorted(front, key=lambda r: -r["speedup"])


class Search:
    """One search from ``src`` (see the module's docstring)."""

    def __init__(self, src: Path, cfg: OptimizeStep, ctx: StepContext, work: Path) -> None:
        self.src = src
        self.cfg = cfg
        self.ctx = ctx
        self.work = work
        self.tol = resolve_tolerance(cfg)
        self.started = time.monotonic()
        self.rows: list[Row] = []
        self.paths: dict[str, Path] = {"source": src}
        self.notes: list[str] = []
        self.verifications: dict[str, Verification] = {}
        self.stopped: str | None = None
        self.refused_structure: str | None = None
        #: (stage, parent id) pairs already expanded
        self.expanded: set[tuple[str, str]] = set()
        self.reference: Reference = ctx.reference(src)
        self.source = self._source_row()

    # ------------------------------------------------------------------ bookkeeping

    def _source_row(self) -> Row:
        row: Row = {"id": "source", "stage": "source", "label": "source", "chain": [],
                    "status": "verified"}  # fmt: skip
        row.update({"status": "verified", "speedup": 1.0, "cosine": 1.0})
        if self.ctx.evaluator is not None:
            scores = self.ctx.evaluator.scores(self.src)
            primary = self.ctx.evaluator.cfg.primary or next(iter(scores))
            row["task_score"] = scores[primary]
        row["score"] = row.get("task_score", 1.0)
        self.rows.append(row)
        return row

    def out_of_time(self) -> bool:
        """Whether the time budget is spent (then the search says so, once)."""
        budget = self.cfg.time_budget
        if budget is None or time.monotonic() - self.started < budget:
            return False
        if self.stopped is None:
            self.stopped = f"time budget of {budget:g} s reached"
            log.info("optimize: %s; stopping with the best so far", self.stopped)
        return True

    def _progress(self, text: str) -> None:
        done = sum(1 for r in self.rows if r["id"] != "source" and r["status"] != "not tried")
        best = max((r["speedup"] for r in self.verified() if r.get("speedup")), default=1.0)
        self.ctx.report_progress(f"{text} ({done} candidates done, best {best:.2f}x)")

    def verified(self) -> list[Row]:
        """The rows within budget (the source included)."""
        return [r for r in self.rows if r["status"] == "verified"]

    def skip(self, stage: str, label: str, parent: Row, why: str) -> Row:
        """A candidate the search did not try, with the reason."""
        row: Row = {"id": f"c{len(self.rows):02d}", "stage": stage, "label": label,
                    "parent": parent["id"], "chain": parent["chain"], "status": "not tried",
                    "reason": why}  # fmt: skip
        self.rows.append(row)
        return row

    # ------------------------------------------------------------------ one candidate

    def candidate(self, stage: str, label: str, parent: Row, step: dict[str, Any]) -> Row:
        """Run ``step`` on ``parent``'s model as a cached one-step pipeline, then judge it."""
        row: Row = {"id": f"c{len(self.rows):02d}", "stage": stage, "label": label,
                    "parent": parent["id"], "chain": [*parent["chain"], step],
                    "status": "running"}  # fmt: skip
        self.rows.append(row)
        if self.out_of_time():
            row.update({"status": "not tried", "reason": self.stopped or ""})
            return row
        self._progress(f"{stage}: {label}")
        parent_path = self.paths[parent["id"]]
        key = hashlib.sha256(
            json.dumps([model_digest(parent_path), step], sort_keys=True).encode()
        ).hexdigest()[:12]
        folder = self.work / f"{_slug(label)}-{key}"
        started = time.monotonic()
        try:
            manifest = self._run(parent_path, step, folder, f"{stage}: {label}")
        except Exception as err:  # noqa: BLE001 - one candidate never ends the search
            self._failed(row, "build", err, started)
            return row
        row["seconds"] = round(time.monotonic() - started, 2)
        entry = manifest["steps"][-1]
        row["cached"] = entry.get("status") == "cached"
        if entry.get("kept_parent"):
            row.update({"status": "kept its parent", "reason": entry.get("kept_parent_reason", "")})
            return row
        report = entry.get("report") or {}
        if STEP_RULES[step["type"]].pins_choice and report.get("chosen_config"):
            row["chain"] = [*parent["chain"], {"type": "quantize", **report["chosen_config"]}]
            row["recipe"] = str(report.get("chosen"))
        path = folder / manifest["final_artifact"]
        try:
            self._judge(row, path)
        except Exception as err:  # noqa: BLE001 - recorded; the search goes on
            self._failed(row, "verify", err, started)
            return row
        self.paths[row["id"]] = path
        return row

    def _failed(self, row: Row, where: str, err: Exception, started: float) -> None:
        """Record a candidate that raised (``where``: build or verify) and go on; only the
        user's own errors (a bad config, a missing extra) end the search."""
        record_failure(row, where, err, self.work)
        row["seconds"] = round(time.monotonic() - started, 2)

    def _run(self, parent: Path, step: dict[str, Any], folder: Path, what: str) -> Any:
        assert self.ctx.run_pipeline is not None, "the engine runs optimize's candidates"
        base = self.ctx.config.model_dump(mode="json", exclude_defaults=True)
        if not STEP_RULES[step["type"]].keeps_evaluate:
            base.pop("evaluate", None)
        base.update(
            name="optimize-candidate", model={"path": str(parent)}, steps=[step],
            output_dir=str(folder),
        )  # fmt: skip
        config = PipelineConfig.model_validate(base)

        def on_event(event: str, **data: Any) -> None:
            if event == "step_progress":
                self.ctx.report_progress(f"{what}: {data['text']}")

        # from the folder the run started from: the user's code (evaluate) runs there
        budget = self.cfg.time_budget
        ends = None if budget is None else self.started + budget
        with _fs.user_cwd(self.ctx.invocation_dir), deadline.until(ends):
            return self.ctx.run_pipeline(
                config, self.ctx.base_dir, out_dir=folder, on_event=on_event
            )

    def _judge(self, row: Row, path: Path) -> None:
        """Verify the candidate at ``path`` against the source on the held-out inputs."""
        verification = self.ctx.verify(path, self.reference, self.tol)
        self.verifications[row["id"]] = verification
        judge(row, verification, self.tol)

    # ------------------------------------------------------------------ timing

    def time(self, rows: list[Row], trials: int | None = None) -> None:
        """Time ``rows`` interleaved with the source (fresh sessions, the held-out inputs);
        a candidate not faster beyond the noise is marked so (it stays in the report)."""
        todo = [(r, self.paths[r["id"]]) for r in rows if r["id"] in self.paths]
        timing = self.cfg.timing
        time_rows(
            self.src, todo, self.ctx,
            warmup=timing.warmup, runs=timing.runs, trials=trials or timing.trials,
            scratch=self.work,
        )  # fmt: skip
