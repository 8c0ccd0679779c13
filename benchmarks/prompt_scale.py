"""Does the token-embedding scale decide whether prompt tuning moves? A measurement on the world's policy.

    python benchmarks/prompt_scale.py [--limit 200] [--seed 0]

The world's CLIPs are trained from token embeddings of std 1 (``init_for_short_training``: std 0.02 stalls a
short run) and then rescaled exactly to CLIP's 0.02 (``rescale_text_tower``). This script runs TPT (1 step) and
RLCF prompt tuning (3 steps) with the *official* learning rates (5e-3, 7e-3) on ``dev`` samples, on the rescaled
tower and on the same tower rescaled back to std 1, and prints per method: the predictions changed against
zero-shot, the mean change of the class text features after the episode's steps (1 - cos), dev top-1; plus the
std-1 tower at ``lr / c`` (which Adam makes equal to the rescaled tower at ``lr``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.classification.task import DEFAULTS, ClassificationTask  # noqa: E402
from tasks.common.config import load_config  # noqa: E402
from tasks.common.train_clip import rescale_text_tower  # noqa: E402
from tasks.methods import load_all  # noqa: E402
from tasks.world.models import seed_root  # noqa: E402

CONFIGS = ROOT / "configs" / "world"


def run(config: str, lr: float, limit: int, policy_pt: Path, reward_pt: Path) -> dict:
    cfg = load_config(DEFAULTS, CONFIGS / config, [
        "data.set_id=world/dev", "run.device=cpu", f"adapt.lr={lr}", f"model.pretrained={policy_pt}",
        f"reward.pretrained={reward_pt}"])
    task = ClassificationTask.from_config(cfg)
    method, policy = task.method, task.method.policy
    zero_feats = policy.class_features().detach()
    captured: list[float] = []
    plain_predict = method.predict

    def predict(ep):   # the class features after the episode's last step, before the prediction
        captured.append(float(1 - (policy.class_features().detach() * zero_feats).sum(-1).mean()))
        return plain_predict(ep)

    method.predict = predict
    changed = correct = 0
    for i in range(limit):
        views, label = task.load(i)
        with torch.no_grad():
            zs = int(policy.logits(policy.encode_query(views[:1])).argmax())
        rec = task.process(i, (views, label))
        changed += rec["pred"] != zs
        correct += rec["pred"] == label
    return {"changed": changed, "top1": 100 * correct / limit, "drift": sum(captured) / max(1, len(captured)),
            "token_std": float(policy.clip.token_embedding.weight.detach().std())}


def std1_copy(policy_pt: Path, out: Path) -> tuple[Path, float]:
    """The policy checkpoint with its text tower rescaled to token std 1 (same features); returns the factor."""
    import open_clip

    from tasks.world.models import register_world_models

    register_world_models()
    model = open_clip.create_model("World-Policy-RN", pretrained=str(policy_pt))
    c = rescale_text_tower(model, 1.0)
    torch.save(model.state_dict(), out)
    return out, c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="pretrained/world")
    args = ap.parse_args()
    load_all()
    torch.set_num_threads(1)
    models = seed_root(Path(args.models), args.seed)
    print(f"world policy seed {args.seed}, {args.limit} dev samples, official learning rates\n")
    print("| method | lr | token std | predictions changed vs zero-shot | class-feature drift (1 - cos) | dev top-1 |")
    print("|---|---|---|---|---|---|")
    policy, reward = models / "policy.pt", models / "reward.pt"
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        big, c = std1_copy(policy, Path(tmp) / "policy-std1.pt")
        for config, lr in (("tpt-prompt.yaml", 5e-3), ("rlcf-prompt.yaml", 7e-3)):
            for pt, rate, what in ((policy, lr, f"{lr:g}"), (big, lr, f"{lr:g}"), (big, lr * c, f"{lr * c:.3g} (lr x {c:.0f})")):
                r = run(config, rate, args.limit, pt, reward)
                print(f"| {config[:-5]} | {what} | {r['token_std']:.3f} | {r['changed']} | {r['drift']:.2e} | "
                      f"{r['top1']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
