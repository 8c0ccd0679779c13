"""The ``rlcf`` command (console script of ``setup.py``): one entry point over the tasks' own command lines.

::

    rlcf run classification --config configs/classification/rlcf-tune.yaml data.set_id=A run.limit=100
    rlcf run retrieval | captioning | caption-train | caption-rl ...   (the same key=value overrides)
    rlcf methods                       # the method registry, one line each
    rlcf check classification --config C.yaml [key=value ...]   # pre-flight: every missing file, and what to do
    rlcf diagnose --config C.yaml [key=value ...]   # headroom for TTA on your data, before any adaptation
    rlcf demo [--quick]                # the main job on the embedded world (torchrun over the local cores)
    rlcf train-clip --data list.csv --config MyArch.json        # your own small CLIP
    rlcf world                         # build the embedded world and train its models

``rlcf run <task> ARGS`` is exactly ``python -m <module> ARGS`` of that task (the table below), so the
``scripts/*.sh`` and the README's module commands stay valid. Under ``torchrun`` use the module form
(``torchrun --nproc_per_node=8 -m tasks.classification.run ...``) or ``torchrun $(which rlcf) run ...``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from typing import Callable, Sequence

__all__ = ["main", "TASKS", "CHECKS"]

#: ``rlcf run <name>`` -> the module whose ``main(argv)`` runs it
TASKS: dict[str, tuple[str, str]] = {
    "classification": ("tasks.classification.run", "zero-shot classification with test-time adaptation"),
    "retrieval": ("tasks.retrieval.run", "image->text / text->image retrieval with test-time adaptation"),
    "captioning": ("tasks.captioning.run", "caption test-time adaptation (ClipCap / CapDec)"),
    "caption-train": ("tasks.captioning.train", "train a ClipCap / CapDec captioner (COCO)"),
    "caption-rl": ("tasks.caption_rl.train", "RL training of a captioner with CLIP rewards"),
}
#: ``rlcf check <name>`` -> the module of its pre-flight check (``main(argv) -> exit code``)
CHECKS: dict[str, str] = {"classification": "tasks.classification.check", "retrieval": "tasks.retrieval.check",
                          "captioning": "tasks.captioning.check", "caption-rl": "tasks.caption_rl.check"}


def _call(module: str, argv: Sequence[str], attr: str = "main") -> int:
    from tasks.common.cli import exit_code

    fn: Callable = getattr(importlib.import_module(module), attr)
    return exit_code(fn(list(argv)))   # an int, or a run's exit code (3: finished with error records)


def _methods(args: argparse.Namespace) -> int:
    import rlcf
    from tasks.methods import load_all

    load_all()
    rows = []
    for name in rlcf.list_methods():
        cls = rlcf.get_method(name)
        cfg = cls.default_config
        kind = "online" if (not cls.episodic or cfg.momentum is not None) else "episodic"
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").replace("``", "")
        doc = doc if len(doc) <= 90 else doc[:87].rsplit(" ", 1)[0] + "..."
        rows.append((name, kind, "yes" if cls.needs_reward else "no", f"{cfg.steps}", doc))
    head = ("method", "kind", "reward", "steps", "what it does")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def _check(args: argparse.Namespace, rest: list[str]) -> int:
    module = CHECKS.get(args.task)
    if module is None:
        raise SystemExit(f"rlcf check: no pre-flight check for '{args.task}'; tasks with one: {', '.join(CHECKS)}")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise SystemExit(f"rlcf check: no pre-flight check for '{args.task}' yet; run it, its errors name what is "
                         "missing") from None
    rc = _call(module, rest)
    if rc == 0:
        print(f"rlcf check {args.task}: everything the config needs is there")
    return rc


def _demo(rest: list[str]) -> int:
    """The main job: ``scripts/demo.sh``'s launch, in Python (torchrun over up to 2 local cores)."""
    n = int(os.environ.get("RLCF_NPROC") or min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                  else os.cpu_count() or 1))
    if n > 1 and not os.environ.get("WORLD_SIZE"):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if "GLOO_SOCKET_IFNAME" not in env and os.path.exists("/sys/class/net/lo"):
            env["GLOO_SOCKET_IFNAME"] = "lo"   # gloo on the loopback device (the host name may not resolve)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "tasks.demo", *rest]
        try:
            rc = subprocess.call(cmd, env=env)
        except KeyboardInterrupt:
            return 130
        if rc == 0 or rc == 2 or rc >= 128 or rc < 0:   # done, a usage error, or interrupted
            return rc if rc >= 0 else 128 - rc
        print(f"rlcf demo: the {n}-process run failed (exit {rc}); finishing in one process, finished work is kept",
              file=sys.stderr)
    return _call("tasks.demo", rest)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rlcf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a task: " + ", ".join(TASKS), add_help=False,
                         description="\n".join(f"  {k:15s} {v[1]} (python -m {v[0]})" for k, v in TASKS.items()))
    run.add_argument("task", choices=list(TASKS), help="the task")
    sub.add_parser("methods", help="the method registry, one line each")
    check = sub.add_parser("check", help="pre-flight check of a config: every missing file", add_help=False)
    check.add_argument("task", choices=list(CHECKS))
    sub.add_parser("diagnose", help="headroom for test-time adaptation on a dataset, before any adaptation "
                   "(python -m tasks.classification.diagnose --help)", add_help=False)
    sub.add_parser("demo", help="the main job on the embedded world (python -m tasks.demo --help)", add_help=False)
    sub.add_parser("train-clip", help="train a small CLIP on your data (python -m tasks.train_clip --help)",
                   add_help=False)
    sub.add_parser("world", help="build the embedded world and its models (python -m tasks.world --help)",
                   add_help=False)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``rlcf COMMAND ...``; returns the exit code. Expected errors (missing files, a bad key) are one line on
    stderr and exit code 2, as in every task's command line (``--debug``: the traceback)."""
    from tasks.common.data import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except UserError as e:
        if "--debug" in argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:   # argparse and the tasks' command lines exit; the code is the answer
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    ap = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        ap.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        if not rest or rest[0] in ("-h", "--help"):
            print("usage: rlcf run TASK [--config C.yaml] [key.sub=value ...] [--verbose] [--debug]\n\ntasks:")
            for k, (module, what) in TASKS.items():
                print(f"  {k:15s} {what} (python -m {module} --help)")
            return 0 if rest else 2
        if rest[0] not in TASKS:
            ap.error(f"unknown task '{rest[0]}' for rlcf run; choose from {', '.join(TASKS)}")
        return _call(TASKS[rest[0]][0], rest[1:])
    if command == "check":
        if not rest or rest[0].startswith("-"):
            ap.error(f"rlcf check needs a task first: rlcf check <{'|'.join(CHECKS)}> --config C.yaml [key=value ...]")
        if rest[0] not in CHECKS:
            ap.error(f"unknown task '{rest[0]}' for rlcf check; choose from {', '.join(CHECKS)}")
        return _check(argparse.Namespace(task=rest[0]), rest[1:])
    if command == "methods":
        return _methods(ap.parse_args(argv))
    if command == "demo":
        return _demo(rest)
    if command == "diagnose":
        return _call("tasks.classification.diagnose", rest)
    if command == "train-clip":
        return _call("tasks.train_clip", rest)
    if command == "world":
        return _call("tasks.world.__main__", rest)
    ap.error(f"unknown command '{command}'; choose from run, methods, check, diagnose, demo, train-clip, world")
    return 2


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console()
