"""A run's end: its privacy section (from the run ledger), summary.json and report.md, and the
closing lines of the server's output."""

from __future__ import annotations

import time
from typing import Any

from common.run_config import RunConfig
from common.run_layout import SUMMARY_FILE
from server.privacy_summary import privacy_section
from server.run_report import build_summary, epsilon_text, summary_table, write_reports
from server.run_start import RunStart


def report_run(config: RunConfig, run: RunStart, downstream: dict[str, Any],
               started: float) -> None:
    """Write the run's reports; `started`: time.monotonic() when the ServerApp started."""
    recorder = run.recorder
    privacy = privacy_section(run.ledger, run.coverage, config, recorder.run_ids,
                              recorder.records, recorder.refusals,
                              secure_rounds=recorder.secure_rounds)
    summary = build_summary(config, downstream, privacy, rounds_done=recorder.rounds_done,
                            wall_seconds=time.monotonic() - started, run_ids=recorder.run_ids,
                            rounds_trained=recorder.rounds_trained)
    write_reports(run.run_dir, summary)
    print("[fedssl] results\n" + summary_table(summary), flush=True)
    print(f"[fedssl] {epsilon_text(privacy)}; wrote {run.run_dir / SUMMARY_FILE}", flush=True)
