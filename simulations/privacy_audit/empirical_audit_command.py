"""`fedssl audit-empirical`: the canary experiment at a run's or preset's settings, on the CLI.

Light at import (argparse only): torch, Opacus and the task load when the command runs.
Exit codes: 0 no trial's lower bound exceeds its claim; 1 some trial refutes its claim (the
mechanism is broken: expected under `--plant-bug`); 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MARKDOWN_FILE, JSON_FILE = "audit-empirical.md", "audit-empirical.json"


def add_empirical_audit_parser(commands: Any) -> None:
    """Register `audit-empirical` on the `fedssl` subcommand parsers."""
    parser = commands.add_parser(
        "audit-empirical", help="measure a lower bound on a node's ε with canaries "
        "(one-run audit, Steinke-Nasr-Jagielski 2023) next to the claimed ε "
        "(docs/privacy-audit.md)")
    parser.add_argument("--preset", metavar="NAME", help="audit at this preset's settings")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="a run setting (repeatable), as in simulate")
    parser.add_argument("--canaries", type=int, default=1000, metavar="M",
                        help="canary slots, each holding its canary by a secret coin "
                        "(default 1000)")
    parser.add_argument("--records", type=int, default=0, metavar="N",
                        help="the node's real records kept beside the slots (default 0: all "
                        "of partition 0)")
    parser.add_argument("--trials", type=int, default=1, help="independent runs (default 1)")
    parser.add_argument("--beta", type=float, default=0.05,
                        help="the bound holds with probability 1-beta (default 0.05)")
    parser.add_argument("--plant-bug", default="none", metavar="BUG",
                        help="train a deliberately broken mechanism to see the audit catch "
                        "it: no-noise, no-clipping, known-seed (default none)")
    parser.add_argument("--out", help="folder for audit-empirical.md/.json "
                        "(default runs/audit-empirical)")
    parser.add_argument("--json", action="store_true", help="print the JSON document only")


def empirical_audit_command(args: argparse.Namespace) -> int:
    """Validate, run the trials with progress lines, print and write the results."""
    from common.config_error import ConfigError
    from simulations.privacy_audit.audit_tables import json_document, markdown_table
    from simulations.privacy_audit.empirical_audit import (
        AuditSettings,
        node_real_records,
        run_trial,
        unresolvable_claim_warning,
    )
    from simulations.privacy_audit.planted_bugs import parse_bug, warning_line

    try:
        settings = AuditSettings(config=_run_config(args.preset, args.settings),
                                 canaries=args.canaries, real_records=args.records,
                                 trials=args.trials, beta=args.beta,
                                 bug=parse_bug(args.plant_bug))
    except (ConfigError, ValueError) as err:
        return _bad_input(str(err))
    if problems := settings.problems():
        return _bad_input(problems[0])
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if warning := warning_line(settings.bug):
        print(warning, file=sys.stderr)
    try:
        unresolvable = unresolvable_claim_warning(settings)
    except ConfigError as err:
        return _bad_input(str(err))
    if unresolvable:
        print(unresolvable, file=sys.stderr)
    config = settings.config
    log(f"empirical audit: task={config.task}, m={settings.canaries} canaries, "
        f"{settings.trials} trial(s), β={settings.beta:g}, bug={settings.bug.value}")
    try:
        log("loading the node's records (partition 0 of the run's split)")
        real = node_real_records(settings)
        log(f"  {len(real[0])} real records + {settings.canaries} canary slots")
        results = []
        for trial in range(settings.trials):
            log(f"trial {trial + 1}/{settings.trials}")
            result = run_trial(settings, trial, real, log)
            results.append(result)
            log(f"  claimed ε={result.claimed_epsilon:.3f}, lower bound "
                f"{result.lower_bound:.3f} ({result.seconds:.0f}s)")
    except (ConfigError, ValueError) as err:
        return _bad_input(str(err))
    except KeyboardInterrupt:
        print("fedssl audit-empirical: interrupted", file=sys.stderr)
        return 130
    document = json_document(settings, results)
    out = Path(args.out or "runs/audit-empirical").expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_FILE).write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        (out / MARKDOWN_FILE).write_text(markdown_table(settings, results))
    except OSError as err:
        return _bad_input(f"cannot write the report to {out}: {err}")
    if args.json:
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        print(markdown_table(settings, results))
        print(f"report: {out / MARKDOWN_FILE}\njson:   {out / JSON_FILE}")
    return 1 if any(r.refutes_claim for r in results) else 0


def _run_config(preset: str | None, overrides: list[str]) -> Any:
    """The run's settings: the preset's (if any), then `--set` key by key (ConfigError)."""
    from common.config_error import ConfigError
    from common.run_config import RunConfig
    from simulations.presets import preset_settings

    values = preset_settings(preset) if preset else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "expected --set KEY=VALUE")
        values[key.strip()] = value.strip()
    return RunConfig.from_mapping(values)


def _bad_input(message: str) -> int:
    print(f"fedssl audit-empirical: error: {message}", file=sys.stderr)
    return 2
