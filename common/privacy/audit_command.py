"""`fedssl audit PATH`: verify a privacy ledger, recompute every ε, write and print the report.

Exit codes: 0 intact, consistent and within budget; 1 the audit failed (reasons on stderr);
2 PATH or --delta cannot be used (one line on stderr, no traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common.privacy.audit_report import (
    MARKDOWN_FILE,
    PLOT_FILE,
    json_document,
    markdown_report,
    plot_epsilon,
    text_report,
)
from common.privacy.ledger_audit import AuditInputError, audit
from common.run_layout import AUDIT_DIR

MAX_REASONS_SHOWN = 20  # the rest are in audit.md and the JSON document


def audit_command(path: str, as_json: bool = False, delta: str | None = None,
                  out: str | None = None) -> int:
    """Run the audit on `path`, write audit.md + epsilon.png to `out`, print, return exit code."""
    try:
        report = audit(path, _parse_delta(delta))
    except AuditInputError as err:
        return _bad_input(str(err))
    out_dir = Path(out).expanduser() if out else report.ledger_path.parent / AUDIT_DIR
    outputs = {"markdown": str(out_dir / MARKDOWN_FILE), "plot": str(out_dir / PLOT_FILE)}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MARKDOWN_FILE).write_text(markdown_report(report, PLOT_FILE))
        plot_epsilon(report, out_dir / PLOT_FILE)
    except OSError as err:
        return _bad_input(f"cannot write the report to {out_dir}: {err}")
    if as_json:
        # Strict JSON (no Infinity) and nothing else on stdout, so it pipes into jq & co.
        print(json.dumps(json_document(report, outputs), indent=2, allow_nan=False))
    else:
        print(text_report(report))
        print(f"report: {outputs['markdown']}\nplot:   {outputs['plot']}")
    if report.ok:
        return 0
    reasons = report.reasons
    print(f"fedssl audit: FAIL: {len(reasons)} problem(s):", file=sys.stderr)
    for reason in reasons[:MAX_REASONS_SHOWN]:
        print(f"  - {reason}", file=sys.stderr)
    if len(reasons) > MAX_REASONS_SHOWN:
        print(f"  ... and {len(reasons) - MAX_REASONS_SHOWN} more (see {outputs['markdown']})",
              file=sys.stderr)
    return 1


def _parse_delta(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise AuditInputError(f"--delta must be a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise AuditInputError(f"--delta must be a number in (0, 1), got {text!r}")
    return value


def _bad_input(message: str) -> int:
    print(f"fedssl audit: error: {message}", file=sys.stderr)
    return 2
