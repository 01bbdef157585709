"""The `fedssl` command (thin: parse, validate, delegate)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from common.run_config import ConfigError, RunConfig, parse_overrides
from simulations.certs_command import add_certs_parser, certs_command


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedssl` console command."""
    parser = argparse.ArgumentParser(
        prog="fedssl", description="Federated self-supervised pretraining under DP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser(
        "simulate", help="run the whole pipeline in Flower's simulation engine"
    )
    simulate.add_argument("--out", help="RUN_DIR for all outputs (default: runs/latest)")
    simulate.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="override a run setting (repeatable), e.g. --set num-rounds=5",
    )
    simulate.add_argument(
        "--verbose", action="store_true", help="show Flower's full log, not only fedssl lines"
    )
    audit = commands.add_parser(
        "audit", help="verify a privacy ledger and recompute every node's epsilon"
    )
    audit.add_argument("path", help="RUN_DIR, a node's state dir, or a ledger.sqlite file")
    audit.add_argument("--json", action="store_true",
                       help="print one JSON document (raw events, recomputed values, verdict)")
    audit.add_argument("--delta", help="report epsilon at this delta (claims and budgets are "
                       "still checked at each entry's own delta)")
    audit.add_argument("--out", help="folder for audit.md and epsilon.png "
                       "(default: <RUN_DIR or ledger folder>/audit)")
    check_data = commands.add_parser(
        "check-data", help="check that a node's data folder loads (prints counts, never content)"
    )
    check_data.add_argument("data_dir", metavar="DIR", help="the folder a node's data-dir names")
    check_data.add_argument("--task", default="mlm",
                            help="SSL task whose data kind to expect (default: mlm)")
    add_certs_parser(commands)
    args = parser.parse_args(argv)
    # SIGTERM takes the same clean path as Ctrl-C: every started process gets stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.command == "simulate":
            return simulate_command(args.out, args.settings, args.verbose)
        if args.command == "audit":
            # Imported here: the audit loads opacus/dp-accounting, `--help` should not.
            from simulations.audit_command import audit_command

            return audit_command(args.path, args.json, args.delta, args.out)
        if args.command == "check-data":
            from simulations.check_data_command import check_data_command

            return check_data_command(args.data_dir, args.task)
        if args.command == "certs":
            return certs_command(args)
    except ConfigError as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 2

    except KeyboardInterrupt:
        print("fedssl: interrupted; all processes stopped", file=sys.stderr)
        return 130
    return 2


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def simulate_command(out: str | None, settings: list[str], verbose: bool) -> int:
    """Validate the settings, run the simulation, print the summary table."""
    # Imported here so `fedssl --help` and config errors answer without loading torch/Flower.
    from common.privacy_ledger import LedgerError
    from common.tasks import check_demo_data
    from server.run_checkpoint import ResumeError, find_checkpoint
    from server.run_report import summary_table
    from simulations.flower_launcher import SimulationError, run_app, simulation_superlink

    values = parse_overrides(settings)
    if out:
        values["run-dir"] = out
    config = RunConfig.from_mapping({**RunConfig().to_mapping(), **values})
    run_dir = Path(config.run_dir).expanduser().resolve()
    config = config.replace(run_dir=str(run_dir))
    check_demo_data(config)  # fail fast on impossible splits (more clients than records...)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_dir = Path(config.sim_state_dir).expanduser() if config.sim_state_dir \
        else run_dir / "nodes"
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
    elif any(state_dir.glob("*/ledger.sqlite")):
        print(f"fedssl: note: the simulated nodes in {state_dir} already spent privacy in "
              "earlier runs; their ledgers continue, so their ε starts from there (use a new "
              "--out for a fresh federation)", flush=True)
    summary_file = run_dir / "summary.json"
    summary_file.unlink(missing_ok=True)
    log_file = run_dir / "simulation.log"
    log_file.unlink(missing_ok=True)

    def echo(line: str) -> None:
        if verbose or "[fedssl]" in line or "ERROR" in line:
            print(line, flush=True)

    started = time.monotonic()
    print(f"fedssl: simulating {config.num_clients} clients x {config.num_rounds} rounds; "
          f"RUN_DIR {run_dir}; full log in {log_file}", flush=True)
    try:
        with simulation_superlink(run_dir / "superlink.log") as env:
            code = run_app(env, config.to_mapping(), config.num_clients, log_file, echo)
    except SimulationError as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 1
    # `flwr run --stream` exits 0 even when the run failed: the summary is the proof.
    if code != 0 or not summary_file.exists():
        print(f"fedssl: error: the run did not finish (flwr exit code {code}); "
              f"last lines of {log_file}:", file=sys.stderr)
        print("\n".join(log_file.read_text().splitlines()[-30:]), file=sys.stderr)
        return 1
    summary = json.loads(summary_file.read_text())
    print(f"\nfedssl: done in {time.monotonic() - started:.0f}s; results in {run_dir}\n")
    print(summary_table(summary))
    privacy = summary["privacy"]
    print(f"\nrecord-level DP per client: max epsilon {privacy['max_epsilon']:.3f} "
          f"at delta {privacy['delta']:g} ({privacy['accountant'].upper()})")
    return 0


def _check_run_ledger(run_dir: Path) -> None:
    """LedgerError (one line) if RUN_DIR already holds a ledger that cannot be read.

    The run ledger is never reset, so a corrupt one must stop the run before any privacy is
    spent: the server could not record the clients' entries.
    """
    from common.privacy_ledger import LedgerError, read_ledger
    from server.run_ledger import RUN_LEDGER, RUN_OWNER

    path = run_dir / RUN_LEDGER
    if not path.exists():
        return
    ledger = read_ledger(path)
    if ledger.owner != RUN_OWNER:
        raise LedgerError(f"{path} is a node's ledger (owner '{ledger.owner}'), not a run's")
    ledger.rows()


if __name__ == "__main__":
    sys.exit(main())
