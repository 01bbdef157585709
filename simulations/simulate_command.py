"""`fedssl simulate`: resolve the settings (preset, then --set), check the data, run, report.

Everything that can be wrong with the settings or the data is found here, before any process
starts: a bad setting exits 2, a bad data folder exits 1 with the message `fedssl check-data`
gives. Ctrl-C (or SIGTERM) stops every started process and exits 130, saying which round
RUN_DIR holds, so the same command continues the run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common.data.data_folders import DataFolderError
from common.run_config import RunConfig, parse_overrides
from common.run_layout import (
    LEDGER_FILE,
    NODES_DIR,
    RUN_OWNER,
    SIMULATION_LOG,
    SUMMARY_FILE,
    SUPERLINK_LOG,
)
from simulations.presets import preset_settings

PROG = "fedssl simulate"


def resolve_config(preset: str | None, settings: list[str], out: str | None) -> RunConfig:
    """Defaults, then the preset's settings, then each `--set`, then `--out`; validated.

    Paths (`run-dir`, `data`, `tokenizer`) become absolute: Flower resolves relative paths
    where the SuperLink started. Raises ConfigError naming the first bad setting.
    """
    values = RunConfig().to_mapping()
    if preset is not None:
        values.update(preset_settings(preset))
    values.update(parse_overrides(settings))
    if out:
        values["run-dir"] = out
    config = RunConfig.from_mapping(values)
    absolute = {key: str(Path(value).expanduser().resolve())
                for key, value in (("run_dir", config.run_dir), ("data", config.data),
                                   ("tokenizer", config.tokenizer)) if value}
    return config.replace(**absolute)


def simulate_command(
    out: str | None, settings: list[str], verbose: bool, preset: str | None = None
) -> int:
    """Validate the settings and data, run the simulation, print the summary table.

    Raises ConfigError for a bad setting (the caller prints it and exits 2).
    """
    # Imported here so `fedssl --help` and config errors answer without loading torch/Flower.
    from common.privacy.ledger import LedgerError
    from common.tasks import check_run_data
    from server.deployment.flower_processes import SimulationError
    from server.run_checkpoint import ResumeError, find_checkpoint
    from server.run_lock import RunDirBusy, check_run_dir_free
    from server.run_report import epsilon_text, summary_table
    from simulations.flower_launcher import run_app, simulation_superlink

    config = resolve_config(preset, settings, out)
    run_dir = Path(config.run_dir)
    try:
        check_run_data(config)  # bad folder or impossible split: fail before anything starts
    except DataFolderError as err:
        print(f"{PROG}: {err.kind}: {err}", file=sys.stderr)
        return 1
    warn_about_lengths(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_dir = Path(config.sim_state_dir).expanduser() if config.sim_state_dir \
        else run_dir / NODES_DIR
    try:
        check_run_dir_free(run_dir)  # the ServerApp holds it for the run; fail early here
    except RunDirBusy as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 1
    try:
        checkpoint = find_checkpoint(run_dir, config)  # a different run there: ConfigError
        if checkpoint is not None:
            checkpoint.verify()  # a truncated model file: say so now, not inside Flower
        _check_run_ledger(run_dir)
    except (ResumeError, LedgerError) as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 2
    if checkpoint is not None:
        print(f"fedssl: {run_dir} holds this run up to round {checkpoint.round}/"
              f"{config.num_rounds}; continuing it (use a new --out for a new run)", flush=True)
    elif any(state_dir.glob(f"*/{LEDGER_FILE}")):
        print(f"fedssl: note: the simulated nodes in {state_dir} already spent privacy in "
              "earlier runs; their ledgers continue, so their ε starts from there (use a new "
              "--out for a fresh federation)", flush=True)
    summary_file = run_dir / SUMMARY_FILE
    summary_file.unlink(missing_ok=True)
    log_file = run_dir / SIMULATION_LOG
    log_file.unlink(missing_ok=True)

    def echo(line: str) -> None:
        if verbose or "[fedssl]" in line or "ERROR" in line:
            print(line, flush=True)

    started = time.monotonic()
    data = f"data {config.data}" if config.data else "embedded demo data"
    print(f"fedssl: simulating {config.num_clients} clients x {config.num_rounds} rounds on "
          f"{data}; RUN_DIR {run_dir}; full log in {log_file}", flush=True)
    try:
        with simulation_superlink(run_dir / SUPERLINK_LOG) as env:
            code = run_app(env, config.to_mapping(), config.num_clients, log_file, echo)
    except SimulationError as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The launcher's cleanup has run by now: every started process is stopped.
        print(interrupted_message(run_dir, config), file=sys.stderr, flush=True)
        return 130
    # `flwr run --stream` exits 0 even when the run failed: the summary is the proof.
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    if summary is not None and untrained(summary, config):
        print(f"fedssl: error: no federated round trained: all {summary['rounds']} round(s) "
              f"were skipped ({summary['privacy']['budget_refusals']} budget refusal(s)); "
              f"every node's status is in {run_dir}/metrics.jsonl, its spend in the summary",
              file=sys.stderr)
        return 1
    if code != 0 or summary is None:
        print(f"fedssl: error: the run did not finish (flwr exit code {code}); "
              f"last lines of {log_file}:", file=sys.stderr)
        print("\n".join(log_file.read_text().splitlines()[-30:]), file=sys.stderr)
        return 1
    print(f"\nfedssl: done in {time.monotonic() - started:.0f}s; results in {run_dir}\n")
    if summary["arms"]:  # none when downstream=false (pretraining only)
        print(summary_table(summary))
    print(f"\nrecord-level DP per client: {epsilon_text(summary['privacy'])}")
    return 0


def warn_about_lengths(config: RunConfig) -> None:
    """One line on stderr when max-length cuts off most of a typical record of the user's
    own text (`data`): silently training on the first 14% of each document misleads."""
    from common.data.record_lengths import run_length_coverage
    from common.tasks import get_task

    if not config.data or get_task(config.task).data_kind != "text":
        return
    coverage = run_length_coverage(config)
    warning = coverage.warning() if coverage is not None else None
    if warning:
        print(f"fedssl: {warning}", file=sys.stderr, flush=True)


def untrained(summary: dict[str, object], config: RunConfig) -> bool:
    """The run asked for federated rounds and none of them used a single update."""
    return config.num_rounds > 0 and summary.get("rounds_trained") == 0


def interrupted_message(run_dir: Path, config: RunConfig) -> str:
    """What an interrupted run left in RUN_DIR, and how to continue it."""
    from server.run_checkpoint import ResumeError, find_checkpoint

    try:
        checkpoint = find_checkpoint(run_dir, config)
    except (ResumeError, ValueError):
        checkpoint = None
    head = "fedssl: interrupted; all processes stopped"
    if checkpoint is None:
        return f"{head}; no round was committed in {run_dir}"
    return (f"{head}; {run_dir} holds rounds 1-{checkpoint.round} of {config.num_rounds}: "
            "run the same command again to continue")


def _check_run_ledger(run_dir: Path) -> None:
    """LedgerError (one line) if RUN_DIR already holds a ledger that cannot be read.

    The run ledger is never reset, so a corrupt one must stop the run before any privacy is
    spent: the server could not record the clients' entries.
    """
    from common.privacy.ledger import LedgerError, read_ledger

    path = run_dir / LEDGER_FILE
    if not path.exists():
        return
    ledger = read_ledger(path)
    if ledger.owner != RUN_OWNER:
        raise LedgerError(f"{path} is a node's ledger (owner '{ledger.owner}'), not a run's")
    ledger.rows()
