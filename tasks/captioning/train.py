"""Train ClipCap / CapDec captioners (official recipe) with resumable checkpoints.

``python -m tasks.captioning.train --mode clipcap --annotations data/coco/annotations/coco_karpathy_train.json
--images-root data/coco/images --clip-weights pretrained/clip/ViT-B-16.pt --lm pretrained/opt-125m
--out-dir output/clipcap_opt125m_transformer_coco_01`` (see ``scripts/train_clipcap_coco.sh``).

Recipe (both): 10 epochs, batch 40, AdamW (lr 2e-5, eps 1e-6, wd 0), 5000 linear warm-up steps then
linear decay, fp16 autocast + GradScaler(1000) on CUDA, L2-normalised prefix. CapDec trains on the
caption's CLIP *text* embedding with Gaussian noise of variance 0.016 (re-normalised).

Checkpoints (atomic, created with the normal umask): ``ckpt-latest.pt`` every ``save_every`` steps and at each
epoch end holds the model, optimizer, scheduler, GradScaler, epoch / step and RNG state (what resume needs);
``ckpt-epoch<E>.pt`` for the last ``keep_epochs`` epochs of the schedule hold the weights only (the model part:
mapper, config, the LM by path; what :func:`tasks.captioning.checkpoint.load_captioner` reads), as the official
release. A rerun resumes from ``ckpt-latest.pt``: batch order (seeded per epoch) and CapDec noise (seeded per step)
make it identical to an uninterrupted run.

Progress: one bar over the steps with loss, lr and ETA (rank 0), and a log line (and a ``train_log.jsonl`` row)
at the first step and every ``log_every`` steps (``--log-every``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import torch

from tasks.common.data import require_path
from tasks.common.progress import TrainProgress

from .checkpoint import captioner_state, opt_hint, save_atomic
from .features import TrainingSet
from .model import CaptionerConfig, PrefixCaptioner, noise_injection

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_captioner", "main"]


@dataclass
class TrainConfig:
    """Optimisation options (defaults: official ClipCap/CapDec-on-OPT recipe)."""

    epochs: int = 10
    lr: float = 2e-5
    weight_decay: float = 0.0
    eps: float = 1e-6
    warmup: int = 5000
    batch_size: int = 40
    amp: bool = True
    noise_variance: float = 0.0
    max_tokens: int | None = None
    save_every: int = 10000
    keep_epochs: int = 6
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 100


def _max_tokens(token_lists: Sequence[Sequence[int]]) -> int:
    """Official caption cut: ``min(mean + 10 std, max)`` of the token lengths."""
    lens = torch.tensor([len(t) for t in token_lists], dtype=torch.float)
    if len(lens) < 2:
        return int(lens.max()) if len(lens) else 1
    return max(1, min(int(lens.mean() + 10 * lens.std()), int(lens.max())))


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def train_captioner(captioner: PrefixCaptioner, data: TrainingSet, cfg: TrainConfig, out_dir: str | Path,
                    device: str | torch.device = "cpu", resume: bool = True, lm_path: str | Path | None = None,
                    callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Train the trainable part of ``captioner`` (the mapper; also the LM if ``train_lm``).

    Args:
        captioner: the model (moved to ``device``).
        data: features ``[N, D]``, captions and their feature rows.
        cfg: optimisation options.
        out_dir: checkpoints and ``train_log.jsonl``.
        resume: continue from ``out_dir/ckpt-latest.pt`` when it exists.
        lm_path: recorded in checkpoints for a frozen pretrained LM (so it is loaded by path).
        callback: ``callback(step, loss)`` after every step.
    Returns:
        The loss of every step run in this call.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    captioner.to(dev)
    tok_lists = captioner.tokenizer(list(data.captions), add_special_tokens=False).input_ids
    max_tokens = cfg.max_tokens or _max_tokens(tok_lists)
    n, bs = len(data), cfg.batch_size
    per_epoch = math.ceil(n / bs)
    total = cfg.epochs * per_epoch
    params = [p for p in captioner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, cfg.warmup, total)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", init_scale=1000.0, enabled=use_amp)
    step = 0
    latest = out / "ckpt-latest.pt"
    if resume and latest.is_file():
        from tasks.common.preflight import WeightFile, reading, require_intact

        hint = "it is this run's own checkpoint: move it away (or delete it) to train from the start"
        require_intact([WeightFile("resume checkpoint", latest, hint)])
        with reading(latest, "resume checkpoint", hint):
            ck = torch.load(latest, map_location="cpu", weights_only=False)
        captioner.mapper.load_state_dict(ck["model"]["mapper"])
        if captioner.train_lm:
            captioner.lm.load_state_dict(ck["model"]["lm"]["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        step = int(ck["step"])
        logger.info("resumed from %s at step %d (epoch %d)", latest, step, step // per_epoch)

    def save(path: Path, full: bool = True) -> None:
        """``full``: everything resume needs; else the weights and what describes them (epoch copies)."""
        state = {"model": captioner_state(captioner, lm_path), "epoch": step // per_epoch, "step": step,
                 "train_config": asdict(cfg), "max_tokens": max_tokens}
        if full:
            state.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                         rng=_rng_state())
        save_atomic(state, path)

    losses: list[float] = []
    end = total if cfg.max_steps is None else min(total, cfg.max_steps)
    order: tuple[int, torch.Tensor | None] = (-1, None)
    captioner.train()
    progress = TrainProgress(end, step, cfg.log_every, desc=f"train {out.name}")
    logged = 0   # losses[logged:] are the steps since the last log row
    with open(out / "train_log.jsonl", "a", encoding="utf-8") as log, progress:
        while step < end:
            epoch, b = divmod(step, per_epoch)
            if order[0] != epoch:
                order = (epoch, _epoch_order(n, cfg.seed, epoch))
            idx = order[1][b * bs:(b + 1) * bs]
            feats = data.features[data.feature_index[idx]].float()
            if cfg.noise_variance > 0:
                g = torch.Generator().manual_seed(cfg.seed * 7919 + step)   # per-step noise: exact resume
                feats = noise_injection(feats, cfg.noise_variance, g)
            ids, mask = captioner.pack([tok_lists[j] for j in idx.tolist()], max_tokens)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                loss = captioner.loss(feats.to(dev), ids, mask)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, losses[-1])
            lr = sched.get_last_lr()[0]
            if progress.step(step, loss=losses[-1], lr=lr, epoch=epoch):
                recent, logged = losses[logged:], len(losses)
                row = {"step": step, "epoch": epoch, "loss": sum(recent) / len(recent), "lr": lr}
                log.write(json.dumps(row) + "\n")
                log.flush()
                progress.log(logger, step, epoch=epoch, loss=row["loss"], lr=lr)
            if step % per_epoch == 0 or step % cfg.save_every == 0 or step == end:
                save(latest)
                e = step // per_epoch
                if step % per_epoch == 0 and e > cfg.epochs - cfg.keep_epochs:
                    save(out / f"ckpt-epoch{e}.pt", full=False)
    captioner.eval()
    return losses


#: TrainConfig fields' --help lines (their defaults: the official recipe; CapDec's noise_variance 0.016)
_FIELD_HELP = {"epochs": "training epochs", "lr": "AdamW learning rate", "weight_decay": "AdamW weight decay",
               "eps": "AdamW eps", "warmup": "linear warm-up steps", "batch_size": "captions per step",
               "noise_variance": "CapDec noise variance (clipcap: 0.0; capdec: 0.016)",
               "save_every": "write ckpt-latest.pt every N steps (and at every epoch end)",
               "keep_epochs": "keep weights-only copies ckpt-epoch<E>.pt of the last N epochs",
               "seed": "batch order and CapDec noise", "log_every": "a log line and a train_log.jsonl row every N "
               "steps (and at the first)"}


def _parser() -> argparse.ArgumentParser:
    from tasks.common.cli import HelpFormatter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--mode", choices=["clipcap", "capdec"], default="clipcap",
                    help="clipcap: on image embeddings; capdec: on caption embeddings + noise")
    ap.add_argument("--annotations", required=True, help="Karpathy dataset_coco.json or LAVIS coco_karpathy_train.json")
    ap.add_argument("--split", default="train", help="Karpathy split (train = train + restval)")
    ap.add_argument("--images-root", default=None, help="COCO images (ClipCap only; CapDec reads captions only)")
    ap.add_argument("--clip-arch", default="ViT-B/16", help="open_clip architecture (OpenAI spelling accepted)")
    ap.add_argument("--clip-weights", required=True, help="OpenAI .pt file or open_clip tag")
    ap.add_argument("--clip-config", default=None, help="open_clip architecture JSON (custom architectures)")
    ap.add_argument("--lm", default="pretrained/opt-125m", help="local OPT folder")
    ap.add_argument("--out-dir", required=True, help="checkpoints, train_log.jsonl, config.json")
    ap.add_argument("--feature-dir", default=None, help="feature cache folder (default: <out-dir>/../features)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers of the feature extraction")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (debugging)")
    ap.add_argument("--no-resume", action="store_true", help="start from step 0 even if ckpt-latest.pt exists")
    ap.add_argument("--restart", action="store_true", help="--out-dir holds a run of other settings: move its files "
                    "aside into old-<date>/ and start afresh (default: refuse, naming what differs)")
    for f in fields(TrainConfig):
        if f.name not in ("amp", "max_tokens", "max_steps"):
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=argparse.SUPPRESS,
                            help=f"{_FIELD_HELP.get(f.name, f.name)} (default: {f.default})")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all (resumable)")
    ap.add_argument("--no-amp", action="store_true", help="no fp16 autocast on CUDA")
    for name, default in (("prefix_length", 40), ("clip_length", 40), ("num_layers", 8), ("num_heads", 8)):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=argparse.SUPPRESS,
                        help=f"mapper {name.replace('_', ' ')} (default: {default}, official)")
    ap.add_argument("--mapping-type", choices=["transformer", "mlp"], default="transformer", help="the mapper")
    ap.add_argument("--stop-token", default="\n", help='caption end token (OPT: "\\n"); "eos" = the tokenizer\'s EOS')
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    ap.add_argument("--debug", action="store_true", help="full tracebacks for expected errors")
    return ap


#: options that do not change what training computes (the folder's fingerprint leaves them out)
_BOOKKEEPING = ("out_dir", "feature_dir", "device", "workers", "no_resume", "restart", "verbose", "debug", "max_steps",
                "log_every", "save_every", "keep_epochs")


def _preflight(args: argparse.Namespace) -> None:
    """Before any model is loaded: the CLIP weights, the LM's weights and a resume checkpoint are whole."""
    from tasks.common.clip import WEIGHTS_HINT, _is_path
    from tasks.common.preflight import WeightFile, require_intact

    files = [WeightFile("CLIP checkpoint", Path(args.clip_weights).expanduser(), WEIGHTS_HINT)] \
        if _is_path(args.clip_weights) else []
    files.append(WeightFile("language model weights", Path(args.lm).expanduser(), opt_hint(args.lm)))
    if not args.no_resume:
        files.append(WeightFile("resume checkpoint", Path(args.out_dir) / "ckpt-latest.pt",
                                "it is this run's own checkpoint: move it away (or delete it) to train from the start"))
    require_intact(files)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point; returns ``{"out_dir", "steps", "final_loss"}``. An expected error (missing data or
    weights: :class:`tasks.common.data.UserError`) is one line on stderr and exit code 2."""
    from tasks.common.cli import expected_errors, setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    with expected_errors(args.debug):
        return _train(args)


def _train(args: argparse.Namespace) -> dict:
    from tasks.common.clip import load_clip
    from tasks.common.outdir import claim

    from .checkpoint import load_pretrained_lm
    from .data import CaptionImageDataset, load_annotations
    from .features import build_training_set, cache_path

    require_path(args.annotations, "training annotations", "Get the Karpathy split (dataset_coco.json) or LAVIS "
                 "coco_karpathy_train.json (see scripts/train_clipcap_coco.sh).")
    if args.mode == "clipcap":
        require_path(args.images_root or "", "COCO images folder (with train2014/ and val2014/)",
                     "pass --images-root")
    lm_path = require_path(args.lm, "OPT-125m folder", opt_hint(args.lm))
    _preflight(args)
    defaults = {"noise_variance": 0.016 if args.mode == "capdec" else 0.0}
    tcfg = TrainConfig(**{**defaults, **{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                                         if getattr(args, f.name, None) is not None}})
    tcfg.amp = not args.no_amp
    items = load_annotations(args.annotations, args.split, merge_restval=True)[:args.limit]
    if args.mode == "clipcap":
        CaptionImageDataset(items, args.images_root)   # a wrong images root fails here, before any model
    # the folder is this run's (a rerun of the same settings resumes), before anything is written or loaded
    mapper = {k: getattr(args, k, None) for k in ("prefix_length", "clip_length", "num_layers", "num_heads")}
    fingerprint = {**{k: str(getattr(args, k)) for k in ("mode", "annotations", "split", "images_root", "clip_arch",
                                                         "clip_weights", "clip_config", "lm", "limit", "mapping_type",
                                                         "stop_token")},
                   "mapper": mapper, "train": {k: v for k, v in asdict(tcfg).items() if k not in _BOOKKEEPING}}
    claim(args.out_dir, fingerprint, restart=args.restart, what="a captioner training")
    clip, preprocess, clip_tok = load_clip(args.clip_arch, args.clip_weights, device=args.device,
                                           config_file=args.clip_config)
    dataset = Path(args.annotations).stem
    feat_dir = Path(args.feature_dir) if args.feature_dir else Path(args.out_dir).parent / "features"
    meta = {"arch": args.clip_arch, "weights": str(args.clip_weights), "annotations": str(args.annotations),
            "split": args.split}
    kind = "image" if args.mode == "clipcap" else "text"
    data = build_training_set(items, args.mode, clip, preprocess, clip_tok, args.images_root,
                              cache_path(feat_dir, dataset, args.split, args.clip_arch, args.clip_weights, kind),
                              meta, args.device, args.workers)
    del clip
    lm, tok = load_pretrained_lm(lm_path)
    over = {k: v for k, v in mapper.items() if v is not None}
    ccfg = CaptionerConfig(prefix_dim=int(data.features.shape[1]), mapping_type=args.mapping_type,
                           noise_variance=tcfg.noise_variance, stop_token=None if args.stop_token == "eos"
                           else args.stop_token, **over)
    captioner = PrefixCaptioner(ccfg, lm, tok)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"train": asdict(tcfg), "captioner": ccfg.to_dict(),
                                                 "args": vars(args)}, indent=2, default=str))
    losses = train_captioner(captioner, data, tcfg, out, args.device, resume=not args.no_resume, lm_path=lm_path)
    result = {"out_dir": str(out), "steps": len(losses), "final_loss": losses[-1] if losses else None}
    logger.info("done: %s", result)
    return result


if __name__ == "__main__":
    main()
