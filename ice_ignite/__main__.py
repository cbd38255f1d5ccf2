"""``python -m ice_ignite``: ``resume RUN_DIR`` runs a run's kept script again and continues it
where it stopped; ``show RUN_DIR`` prints what the run directory records.

    python -m ice_ignite resume runs/exp      # e.g. the whole of a SLURM job script
    python -m ice_ignite show runs/exp
"""

from __future__ import annotations

import argparse
import sys

from ice_ignite.replay import RecordError, resume, show


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python -m ice_ignite``."""
    parser = argparse.ArgumentParser(prog="python -m ice_ignite", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "resume",
        help="run a run's script again from its run directory alone and continue where it stopped",
        description="Run RUN_DIR's kept script (src/) with its recorded arguments and working directory; "
        "its run continues from RUN_DIR's newest checkpoint (or starts, when it has none). Under torchrun, "
        "`torchrun --nproc_per_node=N -m ice_ignite resume RUN_DIR`.",
    )
    p.add_argument("run_dir", help="the run directory (out_dir/run_id)")
    p = commands.add_parser("show", help="print what a run directory records")
    p.add_argument("run_dir", help="the run directory (out_dir/run_id)")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print(show(args.run_dir))
        else:
            resume(args.run_dir)
    except RecordError as e:  # the script's own errors are its own
        print(f"python -m ice_ignite {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
