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

__all__ = ["Unit", "main", "setup_logging", "run_units", "run_main", "parse_command_line", "PROJECT_LOGGERS",
           "Results", "exit_code", "ERRORS_EXIT", "claim_folders", "config_epilog", "COMMON_MEANINGS", "HelpFormatter",
           "clip_meanings"]

logger = logging.getLogger("tasks")
#: the project's loggers; ``__main__`` is the logger of a module run as ``python -m tasks....`` (its
#: ``logging.getLogger(__name__)``), which would otherwise stay under the root's WARNING level
PROJECT_LOGGERS = ("tasks", "rlcf", "__main__")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` of every argparse command line: the description as written, each option with its default (unless
    its help already says it, or it has none: ``None``, an off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or "default" in text.lower() or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


@dataclass
class Unit:
    """One run of a command: its name (a set id, a direction), its full config and output folder."""

    name: str
    cfg: dict
    out: Path
    meta: dict = field(default_factory=dict)


def setup_logging(verbose: bool = False) -> None:
    """The one logging set-up of every command line: the project loggers (:data:`PROJECT_LOGGERS`, ``__main__``
    included) at INFO; the root logger (open_clip logs through it), transformers, timm and the rest at WARNING, or
    everything at INFO with ``verbose``. A new run: what :func:`tasks.common.logs.log_once` said before may be said
    again."""
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


#: the exit code of a command line whose run finished with error records (``run.allow_errors=true``: 0)
ERRORS_EXIT = 3


def clip_meanings(side: str, what: str) -> dict[str, str]:
    return {f"{side}.arch": f"{what}: open_clip name (ViT-B-16), OpenAI spelling (ViT-B/16), or hf:<folder>",
            f"{side}.pretrained": "its weights: a local checkpoint (state dict or OpenAI TorchScript .pt), an open_clip "
                                  "tag (openai), or null (random weights)",
            f"{side}.config_file": "an open_clip architecture JSON registered first (your own architecture)"}


#: the one-line meaning of the config keys every task shares (``--help``)
COMMON_MEANINGS: dict[str, str] = {
    "method": "the adaptation method (`rlcf methods` lists them with their kind)",
    **clip_meanings("model", "the policy CLIP"), **clip_meanings("reward", "the reward CLIP"),
    "reward.weight": "CLIPScore weight w: reward = w * max(cos, 0)",
    "reward.ensemble": "RLCF-S: a list of {arch, pretrained, config_file, confidence} reward CLIPs",
    "run.out_dir": "output folder: per-sample records, summary.json / .md, config.yaml, fingerprint.json",
    "run.workers": "DataLoader worker processes (at most the available cores; 0: in-process)",
    "run.limit": "process N samples only: a class-stratified subset for classification, else the first N; with "
                 "run.shuffle_seed a seeded random subset (the log and summary.json say which)",
    "run.shuffle_seed": "process in a seeded random order (null: dataset order)",
    "run.shuffle": "how run.shuffle_seed shuffles: python | torch_loader (a DataLoader's stream, as official TDA / -M)",
    "run.seed": "seed of random-weight models, views and sampling",
    "run.device": "auto (CUDA when available, else CPU) | cpu | cuda | cuda:N",
    "run.save_logits": "also write each sample's logits to its record",
    "run.allow_online_sharding": "let an online method (TDA, -M) run sharded under torchrun: one stream per shard",
    "run.batch": "samples adapted at once: null (1), an int, or auto; the records are the same",
    "run.restart": "run.out_dir holds records of another configuration: move them aside into old-<date>/ and start "
                   "afresh (default: refuse, naming the keys that differ)",
    "run.keep_errors": "keep error records of an earlier run (default: a rerun tries their samples again)",
    "run.allow_errors": f"exit 0 even when samples failed (default: exit code {ERRORS_EXIT})",
}


class Results(dict):
    """``{unit name: summary}`` (or one summary) with the command line's exit code: 0, or :data:`ERRORS_EXIT` when
    samples failed and ``run.allow_errors`` is off."""

    exit_code: int = 0


def exit_code(result: Any) -> int:
    """The exit code of a command line's ``main`` result: an int as it is, else its ``exit_code`` (0)."""
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return int(getattr(result, "exit_code", 0) or 0)


def claim_folders(units: Sequence[Unit]) -> None:
    """Before anything is written or loaded: every unit's output folder is free, or holds its own configuration's
    records (a rerun resumes), or (``run.restart=true``) gets its old records moved aside; otherwise one
    :class:`tasks.common.outdir.FolderInUseError` line names the differing keys and the ways on. Every rank
    reads; rank 0 moves."""
    from .clip import run_fingerprint
    from .outdir import check_folder, move_aside
    from .runner import barrier, dist_info

    moves = []
    for u in units:
        changed = check_folder(u.out, run_fingerprint(u.cfg), restart=bool(u.cfg["run"].get("restart")))
        if changed:
            moves.append((u, changed))
    if moves and dist_info()[0] == 0:
        for u, changed in moves:
            move_aside(u.out, why=changed)
    if moves:
        barrier()


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
                      batch=r.get("batch"), keep_errors=bool(r.get("keep_errors", False)))
        if summary is not None:
            line = report(u, summary) if report else f"{u.name}: {summary['metrics']}"
            errors = f", {summary['errors']} errors (metrics over the other {summary['n'] - summary['errors']})" \
                if summary["errors"] else ""
            logger.info("%s (%d samples%s) -> %s", line, summary["n"], errors, u.out)
            results[u.name] = summary
    return results


def _with_exit_code(units: Sequence[Unit], results: dict[str, dict], cfg: dict) -> Results:
    """``results`` with the exit code; a run with error records ends with one line counting them."""
    out = Results(results)
    errors, n = sum(s["errors"] for s in results.values()), sum(s["n"] for s in results.values())
    if errors:
        allow = bool(cfg.get("run", {}).get("allow_errors"))
        where = ", ".join(str(u.out) for u in units if results.get(u.name, {}).get("errors"))
        logger.warning("%d of %d samples failed (error records in %s/records-*.jsonl): rerun the same command to try "
                       "them again (run.keep_errors=true keeps them); exit code %d (run.allow_errors=true: 0)", errors,
                       n, where, 0 if allow else ERRORS_EXIT)
        out.exit_code = 0 if allow else ERRORS_EXIT
    return out


def config_epilog(defaults: dict, meanings: dict[str, str] | None = None) -> str:
    """The ``--help`` text of a config-driven command line: every key with its default and meaning."""
    from .config import config_help

    return ("--config FILE.yaml holds deltas over the defaults below (it may start with `base: other.yaml`, a file "
            "it builds on); key.sub=value overrides come last; ${NAME:-default} reads the environment.\n\n"
            "config keys (default: meaning):\n" + config_help(defaults, meanings))


def main(argv: Sequence[str] | None, *, description: str, defaults: dict, units: Callable[[dict], list[Unit]],
         build: Callable[[Unit], Any], report: Callable[[Unit, dict], str] | None = None,
         finish: Callable[[dict, dict[str, dict]], None] | None = None,
         desc: Callable[[Unit], str] | None = None, setup: Callable[[], Any] | None = None,
         preflight: Callable[[dict], list[str]] | None = None,
         meanings: dict[str, str] | None = None) -> Results:
    """Parse the command line, run its units, call ``finish(cfg, results)`` on rank 0 (see module docstring).
    ``setup()`` runs first (the tasks pass :func:`tasks.methods.load_all`); ``preflight(cfg)`` lists what would
    fail later (missing or damaged weight files, missing packages), checked before any model is loaded;
    ``meanings``: the one-line meaning of config keys for ``--help``.

    Returns ``{unit name: summary}`` (empty on other ranks) with its :attr:`Results.exit_code`; exits with code 2 on a
    :class:`UserError`. An output folder of another configuration raises
    :class:`tasks.common.outdir.FolderInUseError` before anything is written or loaded (the command line prints it
    as one line, exit code 2).
    """
    args = parse_command_line(argv, description, epilog=config_epilog(defaults, meanings))
    with expected_errors(args.debug):
        from .runner import init_distributed

        if setup is not None:
            setup()
        cfg = load_config(defaults, args.config, args.overrides)
        found = preflight(cfg) if preflight is not None else []
        if found:   # damaged weights, a missing package: before any model is loaded
            raise UserError(" | ".join(found))
        init_distributed()
        todo = units(cfg)
    claim_folders(todo)   # a refusal reaches the caller; the command line prints it as one line (exit code 2)
    with expected_errors(args.debug):
        results = run_units(todo, build, report, desc)
        if results and finish is not None:
            finish(cfg, results)
        return _with_exit_code(todo, results, cfg)


def parse_command_line(argv: Sequence[str] | None, description: str,
                       config_help: str = "YAML file of deltas over the defaults (configs/<task>/*.yaml; `base:` "
                                          "allowed)",
                       overrides_help: str = "key.sub=value overrides, e.g. adapt.steps=1 run.limit=10",
                       add_arguments: Callable[[argparse.ArgumentParser], Any] | None = None,
                       epilog: str | None = None) -> argparse.Namespace:
    """Parse ``[--config C.yaml] [key.sub=value ...] [--verbose] [--debug]`` (and a command's own options, added by
    ``add_arguments``) and set up logging (:func:`setup_logging`); ``epilog``: the end of ``--help`` (the config
    keys, :func:`config_epilog`)."""
    ap = argparse.ArgumentParser(description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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


def run_main(entry: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None,
             keep_debug: bool = False) -> None:
    """``if __name__ == "__main__": run_main(main)``: run a command line's ``main``; an expected error
    (:class:`UserError`: missing data or weights, a bad key or value, an output folder of another configuration) is
    one line on stderr and exit code 2, the traceback only with ``--debug``; the exit code is :func:`exit_code` of
    the result (an int as it is; a run with error records: :data:`ERRORS_EXIT`). ``keep_debug``: ``entry`` parses
    ``--debug`` itself (it stays in its arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug and not keep_debug:
        args.remove("--debug")
    with expected_errors(debug):
        out = entry(args)
    code = exit_code(out)
    if code:
        raise SystemExit(code)
