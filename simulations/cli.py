"""The `fedssl` command (thin: parse, validate, delegate)."""

from __future__ import annotations

import argparse
import signal
import sys

from common.run_config import ConfigError
from server.deployment.certs_command import (
    LOOPBACK_PORT,
    PUBLIC_PORT,
    add_certs_parser,
    certs_command,
)
from simulations.presets import preset_listing
from simulations.settings_help import settings_epilog
from simulations.sweep_command import add_sweep_parser, sweep_command


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedssl` console command."""
    parser = argparse.ArgumentParser(
        prog="fedssl", description="Federated self-supervised pretraining under DP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser(
        "simulate", help="run the whole pipeline in Flower's simulation engine",
        epilog=settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("--out", help="RUN_DIR for all outputs (default: runs/latest, or "
                          "runs/PRESET with --preset)")
    simulate.add_argument("--preset", metavar="NAME",
                          help="start from a ready-made setup (see --list-presets); "
                          "--set overrides its settings key by key")
    simulate.add_argument("--list-presets", action="store_true",
                          help="show the presets and their settings, then exit")
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
    check_data.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="check under a run setting (repeatable), e.g. --set truncate-records=true or "
        "--set max-length=256; also decides whether `simulate --set data=DIR` would accept it")
    check_data.add_argument(
        "--deid", nargs="?", const="presidio", default=None, metavar="ENGINE",
        help="also count, per identifier type, the spans a node's de-identification would "
        "replace and in how many records (counts only): presidio (default) or philter")
    compress = commands.add_parser(
        "compress", help="quantize and export a finished run's fine-tuned classifier; "
        "size and macro-F1 of each variant (docs/compression.md)")
    compress.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder")
    compress.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="point at moved inputs of the run (data, init, tokenizer); repeatable")
    compress.add_argument(
        "--prune-ratios", default="0.25,0.5", metavar="R,R,...",
        help="shares of attention heads and FFN neurons removed per layer, one pruned model "
        "each; 'none' skips structured pruning (default: 0.25,0.5)")
    compress.add_argument("--recover-epochs", type=int, default=2, metavar="N",
                          help="distillation passes that repair each pruned model (default 2)")
    compress.add_argument("--distill-epochs", type=int, default=10, metavar="N",
                          help="passes that train the small student; 0 skips the students "
                          "(default 10)")
    compress.add_argument("--transfer-records", type=int, default=8000, metavar="N",
                          help="public-corpus texts the teacher labels for recovery and "
                          "distillation; 0 uses the labeled set only (default 8000)")
    compress.add_argument("--quantize-only", action="store_true",
                          help="int8 and ONNX only: no pruning, no students (minutes)")
    gateway = commands.add_parser(
        "gateway", help="coordinator: the public TLS gateway that forwards the Fleet API only "
        "(docs/deploy.md)")
    gateway.add_argument("--listen", default=f"0.0.0.0:{PUBLIC_PORT}",
                         help=f"public HOST:PORT (default 0.0.0.0:{PUBLIC_PORT})")
    gateway.add_argument("--superlink", default=f"127.0.0.1:{LOOPBACK_PORT}",
                         help=f"the SuperLink's loopback HOST:PORT (default 127.0.0.1:{LOOPBACK_PORT})")
    gateway.add_argument("--ca", required=True, help="ca.crt (verifies the SuperLink)")
    gateway.add_argument("--certfile", required=True, help="the SuperLink's server.pem")
    gateway.add_argument("--keyfile", required=True, help="the SuperLink's server.key")
    add_certs_parser(commands)
    add_sweep_parser(commands)
    # The empirical privacy audit (docs/privacy-audit.md); its module imports torch lazily.
    from simulations.privacy_audit.empirical_audit_command import (
        add_empirical_audit_parser,
        empirical_audit_command,
    )

    add_empirical_audit_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "audit-empirical":
        return empirical_audit_command(args)
    # SIGTERM takes the same clean path as Ctrl-C: every started process gets stopped.
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        if args.command == "simulate":
            signal.signal(signal.SIGINT, _interrupt_once)
            if args.list_presets:
                print(preset_listing())
                return 0
            from simulations.simulate_command import simulate_command

            return simulate_command(args.out, args.settings, args.verbose, args.preset)
        if args.command == "audit":
            # Imported here: the audit loads opacus/dp-accounting, `--help` should not.
            from common.privacy.audit_command import audit_command

            return audit_command(args.path, args.json, args.delta, args.out)
        if args.command == "check-data":
            from client.check_data_command import check_data_command

            return check_data_command(args.data_dir, args.task, args.settings, args.deid)
        if args.command == "compress":
            # Imported here: ONNX Runtime and transformers load only for this command.
            from server.compression.compress_command import compress_command

            return compress_command(args.run_dir, args.settings, args)
        if args.command == "certs":
            return certs_command(args)
        if args.command == "gateway":
            from server.deployment.fleet_gateway import gateway_command

            return gateway_command(args.listen, args.superlink, args.ca, args.certfile,
                                   args.keyfile)
        if args.command == "sweep":
            return sweep_command(args)
    except ConfigError as err:
        print(f"fedssl: error: {err}", file=sys.stderr)
        return 2

    except KeyboardInterrupt:
        print("fedssl: interrupted; all processes stopped", file=sys.stderr)
        return 130
    return 2


def _interrupt_once(signum: int, frame: object) -> None:
    """First Ctrl-C/SIGTERM: unwind (stopping every started process); ignore repeats, so a
    second Ctrl-C cannot cut that cleanup short and leave processes behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
