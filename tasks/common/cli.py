"""The one command-line helper of every task's ``run`` entry point (classification, retrieval, captioning).

A task's ``run.py`` describes its runs and calls :func:`main`::

    def units(cfg) -> list[Unit]            # one run per dataset / direction / domain, each with its folder
    def build(unit) -> Task                 # the runner task of that unit
    def report(unit, summary) -> str        # the one line printed when it is done
    cli.main(argv, description=__doc__, defaults=DEFAULTS, units=units, build=build, report=report)

:func:`main` parses ``--config CONFIG.yaml key.sub=value ...``, sets up logging (the project's loggers at
INFO, third-party ones at WARNING unless ``--verbose``), joins the ``torchrun`` process group, and runs
each unit through :func:`tasks.common.runner.run` (records, resume, sharding, fingerprints). Expected
errors (:class:`tasks.common.data.UserError`: missing data or weights, a bad config key or override) are
one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .config import dump_config, load_config
from .data import UserError

__all__ = ["Unit", "main", "setup_logging", "run_units", "run_main", "parse_command_line", "PROJECT_LOGGERS"]

logger = logging.getLogger("tasks")
PROJECT_LOGGERS = ("tasks", "rlcf")


@dataclass
class Unit:
    """One run of a command: its name (a set id, a direction), its full config and output folder."""

    name: str
    cfg: dict
    out: Path
    meta: dict = field(default_factory=dict)


def setup_logging(verbose: bool = False) -> None:
    """Project loggers at INFO; the root logger (open_clip logs through it), transformers, timm and the
    rest at WARNING, or everything at INFO with ``verbose``. A new run: what :func:`tasks.common.logs.log_once`
    said before may be said again."""
    from .logs import reset_once

    reset_once()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    import os

    rank = int(os.environ.get("RANK", "0") or 0)   # under torchrun the other ranks say only what goes wrong
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if rank == 0 or verbose else logging.WARNING)
    if not verbose:
        for name in ("transformers", "timm", "open_clip", "urllib3", "PIL", "matplotlib"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*This DataLoader will create.*")


def run_units(units: Sequence[Unit], build: Callable[[Unit], Any], report: Callable[[Unit, dict], str] | None = None,
              desc: Callable[[Unit], str] | None = None) -> dict[str, dict]:
    """Run every unit (dump its config, build its task, run it resumably); ``{unit name: summary}`` on rank 0."""
    from .clip import resolve_device, run_fingerprint
    from .runner import run

    results = {}
    for u in units:
        u.out.mkdir(parents=True, exist_ok=True)
        dump_config(u.cfg, u.out / "config.yaml")
        task = build(u)
        r = u.cfg["run"]
        summary = run(task, u.out, workers=r["workers"], limit=r["limit"], shuffle_seed=r["shuffle_seed"],
                      shuffle=r.get("shuffle", "python"), allow_online_sharding=r.get("allow_online_sharding", False),
                      device=resolve_device(r["device"]), desc=desc(u) if desc else f"{u.cfg['method']} {u.name}",
                      fingerprint=run_fingerprint(u.cfg), meta={"method": u.cfg["method"], **u.meta},
                      batch=r.get("batch"))
        if summary is not None:
            line = report(u, summary) if report else f"{u.name}: {summary['metrics']}"
            errors = f", {summary['errors']} errors (metrics over the other {summary['n'] - summary['errors']})" \
                if summary["errors"] else ""
            logger.info("%s (%d samples%s) -> %s", line, summary["n"], errors, u.out)
            results[u.name] = summary
    return results


def main(argv: Sequence[str] | None, *, description: str, defaults: dict, units: Callable[[dict], list[Unit]],
         build: Callable[[Unit], Any], report: Callable[[Unit, dict], str] | None = None,
         finish: Callable[[dict, dict[str, dict]], None] | None = None,
         desc: Callable[[Unit], str] | None = None, setup: Callable[[], Any] | None = None) -> dict[str, dict]:
    """Parse the command line, run its units, call ``finish(cfg, results)`` on rank 0 (see module docstring).
    ``setup()`` runs first (the tasks pass :func:`tasks.methods.load_all`).

    Returns ``{unit name: summary}`` (empty on other ranks); exits with code 2 on a :class:`UserError`.
    """
    args = parse_command_line(argv, description)
    with expected_errors(args.debug):
        from .runner import init_distributed

        if setup is not None:
            setup()
        cfg = load_config(defaults, args.config, args.overrides)
        init_distributed()
        results = run_units(units(cfg), build, report, desc)
        if results and finish is not None:
            finish(cfg, results)
        return results


def parse_command_line(argv: Sequence[str] | None, description: str,
                       config_help: str = "YAML file of deltas over the defaults (configs/<task>/*.yaml)",
                       overrides_help: str = "key.sub=value overrides, e.g. adapt.steps=1 run.limit=10",
                       add_arguments: Callable[[argparse.ArgumentParser], Any] | None = None) -> argparse.Namespace:
    """Parse ``[--config C.yaml] [key.sub=value ...] [--verbose] [--debug]`` (and a command's own options, added by
    ``add_arguments``) and set up logging (:func:`setup_logging`)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_arguments is not None:
        add_arguments(ap)
    ap.add_argument("--config", help=config_help)
    ap.add_argument("overrides", nargs="*", help=overrides_help)
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    ap.add_argument("--debug", action="store_true", help="full tracebacks for expected errors")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    return args


def report_problems(find: Callable[[], list[str]]) -> int:
    """A pre-flight check's exit code: each problem ``find()`` returns as an ``ERROR:`` line on stderr, 1 if there
    is one, else 0; a bad config key or value while looking is a problem too."""
    try:
        found = find()
    except Exception as e:  # noqa: BLE001 - a bad config key or value
        found = [str(e)]
    for p in found:
        print(f"ERROR: {p}", file=sys.stderr)
    return 1 if found else 0


@contextmanager
def expected_errors(debug: bool = False) -> Iterator[None]:
    """``with expected_errors(args.debug): ...``: an expected error inside (:class:`UserError`: missing data or
    weights, a bad key or value) becomes one line on stderr and exit code 2; ``debug`` re-raises it."""
    try:
        yield
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run_main(entry: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """``if __name__ == "__main__": run_main(main)``: run a command line's ``main``; an expected error
    (:class:`UserError`: missing data or weights, a bad key or value) is one line on stderr and exit code 2,
    the traceback only with ``--debug``; an integer result is the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    with expected_errors(debug):
        out = entry(args)
    if isinstance(out, int) and not isinstance(out, bool):
        raise SystemExit(out)
