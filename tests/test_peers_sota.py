"""The strongest peers (MTA, TPS, DMN-ZS, DPE, BoostAdapter): each core update against a restatement of its official
code (MaxZanella/MTA mta.py, elaine-sui/TPS shift_classification.py + model/shifter.py, YBZh/DMN dmn_main.py,
zhangce01/DPE-CLIP main_dpe.py + utils.py, taolinzhang/BoostAdapter runner.py), written here from those files in
numpy or plain torch on tiny random CLIPs; nothing below calls the implementations' helpers for the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlcf
from conftest import CLASSNAMES, make_clip
from tasks.classification.policies import EncoderPolicy, PrototypePolicy
from tasks.methods.mta import mta_mode


def image_and_text(clip, tok, views):
    """Normalised image features of the views and of the one-template class prompts, and the logit scale."""
    with torch.no_grad():
        img = F.normalize(clip.encode_image(views).float(), dim=-1)
        prompts = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES]
        text = F.normalize(clip.encode_text(tok(prompts)).float(), dim=-1)
    return img, text, float(clip.logit_scale.detach().exp())


def stream(n: int, v: int = 16, seed: int = 11) -> list[torch.Tensor]:
    """``n`` samples of ``v`` views, with per-sample contrast and brightness so that the pseudo-labels differ."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        scale, shift = 0.3 + 1.7 * torch.rand(1, generator=g), 4 * torch.rand(1, generator=g) - 2
        out.append(torch.randn(v, 3, 32, 32, generator=g) * scale + shift)
    return out


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# ------------------------------------------------------------------ MTA (mta.py solve_mta)
def official_mta(feats, logits, lambda_y=0.2, lambda_q=4.0, max_iter=5, th=1e-6):
    """``solve_mta`` in numpy (float64): per-point bandwidths from the 30% nearest neighbours, the logits' affinity,
    ``max_iter`` rounds of the inlierness loop and the mode loop (each at most ``max_iter``, stop below ``th``)."""
    x = np.asarray(feats, np.float64)
    n = len(x)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    k = int(0.3 * (n - 1))
    bandwidth = np.sqrt(0.5 * np.mean(np.sort(dist, axis=1)[:, 1:k + 1] ** 2, axis=1))
    p = np_softmax(np.asarray(logits, np.float64), 1)
    affinity = p @ p.T

    def kernel(mu):
        return np.exp(-np.linalg.norm(x - mu, axis=-1) ** 2 / (2 * bandwidth ** 2))

    y, mode = np.ones(n) / n, x[0]
    for _ in range(max_iter):
        density = kernel(mode)
        for i in range(1, max_iter + 1):
            old = y
            y = np_softmax(1 / lambda_y * (density + lambda_q * np.sum(affinity * y[None], axis=1)))
            if np.linalg.norm(old - y) < th or i >= max_iter:
                break
        for i in range(1, max_iter + 1):
            old = mode
            wd = kernel(mode) * y
            mode = np.sum(wd[:, None] * x, axis=0) / np.sum(wd)
            mode = mode / np.linalg.norm(mode)
            if np.linalg.norm(old - mode) < th or i >= max_iter:
                break
    return mode, y


def test_mta_one_meanshift_iteration_matches_the_official_formula():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(16, 8, generator=g), dim=-1)
    logits = 10 * feats @ F.normalize(torch.randn(5, 8, generator=g), dim=-1).t()
    # one round by hand: y = softmax((k(x_0) + 4 A 1/N) / 0.2), m = normalize(sum k(x_0) y x / sum k(x_0) y)
    x = feats.double().numpy()
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    h2 = 0.5 * np.sort(d2, axis=1)[:, 1:1 + int(0.3 * 15)].mean(1)
    kern = np.exp(-((x - x[0]) ** 2).sum(-1) / (2 * h2))
    p = np_softmax(logits.double().numpy(), 1)
    y1 = np_softmax((kern + 4.0 * (p @ p.T) @ np.full(16, 1 / 16)) / 0.2)
    m1 = (kern * y1) @ x / (kern * y1).sum()
    m1 /= np.linalg.norm(m1)
    mode, y = mta_mode(feats, logits, max_iter=1)
    assert np.allclose(y.numpy(), y1, atol=1e-6) and np.allclose(mode.numpy(), m1, atol=1e-5)
    mode, y = mta_mode(feats, logits)                       # the full procedure: 5 rounds with early stops
    ref_mode, ref_y = official_mta(feats.numpy(), logits.numpy())
    assert np.allclose(mode.numpy(), ref_mode, atol=1e-5) and np.allclose(y.numpy(), ref_y, atol=1e-5)
    assert not np.allclose(ref_mode, x[0], atol=1e-3)      # the mode moved off view 0


def test_mta_prediction_is_the_mode_against_the_text(views):
    clip, _, tok = make_clip()
    img, text, scale = image_and_text(clip, tok, views)
    mode, _ = official_mta(img.numpy(), (scale * img @ text.t()).numpy())
    expected = scale * torch.tensor(mode, dtype=torch.float32) @ text.t()
    method = rlcf.create_method("mta", EncoderPolicy(clip, CLASSNAMES, tok))
    with torch.no_grad():
        out = method(views)
    assert torch.allclose(out, expected, atol=1e-3) and method.episodic and method.config.steps == 0


# ------------------------------------------------------------------ TPS (shift_classification.py, shifter.py)
def test_tps_one_step_matches_the_official_shift_update(views):
    clip, _, tok = make_clip()
    img, text, scale = image_and_text(clip, tok, views)
    lr, sel = 5e-3, 0.25
    # official: shift = 0; logits = scale * img @ normalize(normalize(P) + shift)^T for every view; the 10%
    # (here 25%) lowest-entropy views; avg_entropy; one AdamW step (wd 0.01 on a zero shift moves nothing); predict
    # view 0 with the shifted prototypes
    shift = torch.zeros_like(text, requires_grad=True)
    logits = scale * img @ F.normalize(F.normalize(text, dim=-1) + shift, dim=-1).t()
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    out = logits[torch.argsort(ent, descending=False)[:int(16 * sel)]]
    lg = out - out.logsumexp(dim=-1, keepdim=True)
    avg = lg.logsumexp(dim=0) - np.log(lg.shape[0])
    loss = -(avg * torch.exp(avg)).sum(dim=-1)
    (grad,) = torch.autograd.grad(loss, shift)
    shift1 = -lr * grad / (grad.abs() + 1e-8)                                   # AdamW's first step
    expected = scale * img[0] @ F.normalize(text + shift1, dim=-1).t()
    policy = PrototypePolicy(clip, CLASSNAMES, tok)
    method = rlcf.create_method("tps", policy, selection=sel)
    with torch.no_grad():
        got = method(views)
    assert torch.allclose(got, expected.detach(), atol=1e-4), (got - expected).abs().max()
    assert method.last_info["losses"] == pytest.approx([float(loss.detach())], abs=1e-5)
    assert torch.equal(policy.shift, torch.zeros_like(policy.shift))           # reset per sample
    assert not torch.allclose(got, scale * img[0] @ text.t(), atol=1e-4)       # the step moved the prediction
    assert (method.config.lr, method.config.weight_decay, method.config.steps) == (5e-3, 0.01, 1)


def test_tps_needs_the_prototype_policy():
    clip, _, tok = make_clip()
    with pytest.raises(ValueError, match="does not support"):
        rlcf.create_method("tps", EncoderPolicy(clip, CLASSNAMES, tok))


# ------------------------------------------------------------------ DMN (dmn_main.py, n_shot 0)
def official_dmn(feats_stream, text, scale, memory_size=50, beta=5.5, sel=0.1, weight=1.0):
    """``direct_inference`` with ``DualMem`` in zero-shot mode, in numpy: memory update, then the
    similarity-weighted readout; returns each sample's ``p_text + weight * p_memory`` and whether a full class
    memory was met."""
    t = text.double().numpy()
    c, d = t.shape
    memory, entropy_mem = np.zeros((c, memory_size, d)), np.zeros((c, memory_size))
    count, full = np.zeros(c, dtype=int), False
    outs = []
    for f in feats_stream:
        f = f.double().numpy()
        probs = np_softmax(scale * f @ t.T, 1)
        ent = -(probs * np.log(probs + 1e-6)).sum(1)
        mean_prob = probs[np.argsort(ent, kind="stable")[:int(len(f) * sel)]].mean(0)
        pl, cur = int(mean_prob.argmax()), -(mean_prob * np.log(mean_prob + 1e-8)).sum()
        if count[pl] == memory_size:
            full = True
            if (cur < entropy_mem[pl]).sum() != 0:
                j = np.argsort(entropy_mem[pl])[-1]
                memory[pl, j], entropy_mem[pl, j] = f[0], cur
        else:
            memory[pl, count[pl]], entropy_mem[pl, count[pl]] = f[0], cur
            count[pl] += 1
        mem = np.concatenate([memory, t[:, None]], axis=1)
        with np.errstate(invalid="ignore"):
            keys = mem / np.linalg.norm(mem, axis=-1, keepdims=True)
        keys[mem.sum(-1) == 0] = 0
        img = f[0] / np.linalg.norm(f[0])
        sim = np.exp(-beta * (-(img * keys).sum(-1) + 1))
        adaptive = (keys * sim[..., None]).sum(1)
        adaptive /= np.linalg.norm(adaptive, axis=-1, keepdims=True)
        outs.append(probs[0] + weight * np_softmax(scale * adaptive @ img))
    return outs, full


def test_dmn_readout_and_memory_match_the_official_code():
    clip, _, tok = make_clip()
    xs = stream(6)
    xs += [x + 0.05 * torch.randn_like(x) for x in xs]                         # the same pseudo-labels come back
    feats = [image_and_text(clip, tok, x)[0] for x in xs]
    _, text, scale = image_and_text(clip, tok, xs[0])
    expected, full = official_dmn(feats, text, scale, memory_size=1, sel=0.25)
    assert full                                                                 # the replacement rule ran
    method = rlcf.create_method("dmn", EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25,
                                options={"memory_size": 1})
    with torch.no_grad():
        got = [method(x) for x in xs]
    for g, e in zip(got, expected):
        assert np.allclose(g.exp().numpy() * 2, e, atol=1e-5)                    # log((p_text + p_mem) / 2)
    assert not method.episodic and "record" not in method.last_info               # no search by default
    method.reset_stream()
    with torch.no_grad():
        assert torch.equal(method(xs[0]), got[0])


def test_dmn_test_label_search_is_opt_in_and_labelled():
    from tasks.methods.dmn import OFFICIAL_WEIGHT_GRID, TUNED_ON_TEST_LABELS

    clip, _, tok = make_clip()
    xs = stream(5)
    method = rlcf.create_method("dmn", EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25,
                                options={"search_weights_on_test_labels": True})
    records = []
    feats = [image_and_text(clip, tok, x)[0] for x in xs]
    _, text, scale = image_and_text(clip, tok, xs[0])
    with torch.no_grad():
        for i, x in enumerate(xs):
            method(x)
            records.append({"label": i % len(CLASSNAMES), **method.last_info["record"]})
    assert all(r["tuning"] == TUNED_ON_TEST_LABELS for r in records)
    # official search: p_text + w * p_mem for w in the grid, the first best accuracy on the labels
    per_w = []
    for w in OFFICIAL_WEIGHT_GRID:
        outs, _ = official_dmn(feats, text, scale, sel=0.25, weight=w)
        per_w.append(np.mean([int(o.argmax()) == r["label"] for o, r in zip(outs, records)]) * 100)
    m = method.summarize_records(records, {"top1": -1.0})
    assert m["top1"] == pytest.approx(max(per_w)) and m["tuning"] == TUNED_ON_TEST_LABELS
    assert m["top1_ci95_low"] <= m["top1"] <= m["top1_ci95_high"]                 # the CI of the searched predictions
    assert m["searched_fusion_weight"] == OFFICIAL_WEIGHT_GRID[int(np.argmax(per_w))] and m["top1_fixed_weight"] == -1.0


def test_dmn_search_marks_records_summary_and_table(tmp_path):
    import json

    from tasks.classification.run import main
    from test_runner import cli_args, make_dtd

    data = make_dtd(tmp_path / "data")
    cfg = ["--config", "configs/classification/dmn.yaml"]
    main(cfg + cli_args(data, tmp_path / "out", method="dmn",
                        extra=("policy=encoder", "adapt.options.search_weights_on_test_labels=true")))
    recs = [json.loads(line) for line in (tmp_path / "out" / "DTD" / "records-0.jsonl").read_text().splitlines()]
    assert recs and all(r["tuning"] == "tuned on test labels" for r in recs)
    summary = json.loads((tmp_path / "out" / "DTD" / "summary.json").read_text())
    assert summary["metrics"]["tuning"] == "tuned on test labels"
    assert "| tuning | tuned on test labels |" in (tmp_path / "out" / "DTD" / "summary.md").read_text()
    assert "dmn (tuned on test labels)" in (tmp_path / "out" / "results.md").read_text()
    main(cfg + cli_args(data, tmp_path / "fixed", method="dmn", extra=("policy=encoder",)))
    assert "tuning" not in json.loads((tmp_path / "fixed" / "DTD" / "summary.json").read_text())["metrics"]
    assert "tuned" not in (tmp_path / "fixed" / "results.md").read_text()


# ------------------------------------------------------------------ DPE (main_dpe.py run_test_dpe, utils.py)
def official_dpe(feats_stream, text, scale, lr=6e-4, alpha=6.0, beta=5.0, align=0.5, sel=0.25, capacity=3,
                 evolve=0.1, all_views=False):
    """``run_test_dpe`` in plain torch: TextResidue / PositiveCacheResidue at zero, ``get_clip_logits``, the cache
    update, one AdamW step (eps 1e-3, weight decay 0.1, fresh per sample), the prediction (all views on IN-A) and
    the cumulative average of the global textual prototypes. Returns each sample's final logits and the number of
    evolutions."""
    def avg_entropy(outputs):
        lg = outputs - outputs.logsumexp(dim=-1, keepdim=True)
        avg = lg.logsumexp(dim=0) - np.log(lg.shape[0])
        return -(avg * torch.exp(avg)).sum(dim=-1)

    def get_clip_logits(f, weights):                     # weights [D, C] as the official code holds them
        logits = scale * f @ weights
        if len(f) > 1:
            ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
            out = logits[torch.argsort(ent, descending=False)[:int(len(f) * sel)]]
            feat = f[torch.argsort(ent, descending=False)[:int(len(f) * sel)]].mean(0, keepdim=True)
            return feat, out.mean(0, keepdim=True), avg_entropy(out), int(out.mean(0).argmax())
        return f, logits, -(logits.softmax(1) * logits.log_softmax(1)).sum(1), int(logits.argmax())

    glob = text.t().clone()                              # [D, C]
    n_cls, cache, num_avg, outs = glob.shape[1], {}, 0, []
    for f in feats_stream:
        local = glob.clone()
        text_res = torch.zeros_like(local, requires_grad=True)
        feat, clip_logits, loss, pred = get_clip_logits(f, F.normalize(local + text_res, dim=0))
        item = [feat.detach(), float(loss.detach()) / math.log2(n_cls)]
        if pred in cache:                                # update_cache
            if len(cache[pred]) < capacity:
                cache[pred].append(item)
            elif item[1] < cache[pred][-1][1]:
                cache[pred][-1] = item
            cache[pred] = sorted(cache[pred], key=lambda it: it[1])
        else:
            cache[pred] = [item]
        classes = sorted(cache)
        keys = torch.cat([sum(it[0] / len(cache[c]) for it in cache[c]) for c in classes]).t()     # [D, K]
        values = F.one_hot(torch.tensor(classes), n_cls).float()
        cache_res = torch.zeros_like(keys, requires_grad=True)
        new_w = F.normalize(local + text_res, dim=0)
        new_keys = F.normalize(keys + cache_res, dim=0)
        final = clip_logits + alpha * ((-1) * (beta - beta * (feat @ new_keys))).exp() @ values
        q, k = F.normalize(new_keys.t(), dim=-1), F.normalize(new_w[:, classes].t(), dim=-1)
        loss = avg_entropy(final) + align * F.cross_entropy(q @ k.t() / 0.01, torch.arange(len(classes)))
        g_text, g_cache = torch.autograd.grad(loss, [text_res, cache_res])
        text1 = -lr * g_text / (g_text.abs() + 1e-3)     # AdamW's first step from zero (the decay moves nothing)
        cache1 = -lr * g_cache / (g_cache.abs() + 1e-3)
        with torch.no_grad():
            new_w = F.normalize(local + text1, dim=0)
            feat_p, clip_logits, _, _ = get_clip_logits(f if all_views else f[:1], new_w)
            final = clip_logits + alpha * ((-1) * (beta - beta * (feat_p @ F.normalize(keys + cache1, dim=0)))).exp() @ values
            if float(avg_entropy(final)) / math.log2(n_cls) < evolve:
                num_avg += 1
                glob = glob * (num_avg / (num_avg + 1)) + new_w * (1 / (num_avg + 1))
        outs.append(final[0])
    return outs, num_avg


@pytest.mark.parametrize("evolve,all_views", [(0.0, False), (0.1, False), (1.0, True)])
def test_dpe_step_cache_and_evolution_match_the_official_code(evolve, all_views):
    clip, _, tok = make_clip()
    xs = stream(4)
    feats = [image_and_text(clip, tok, x)[0] for x in xs]
    _, text, scale = image_and_text(clip, tok, xs[0])
    expected, evolutions = official_dpe(feats, text, scale, evolve=evolve, all_views=all_views, capacity=1)
    assert evolutions == {0.0: 0, 1.0: len(xs)}.get(evolve, evolutions)    # 0: never; 1: always (entropy / log2 C)
    method = rlcf.create_method("dpe", EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25,
                                options={"evolve_entropy": evolve, "predict_all_views": all_views, "pos_capacity": 1})
    with torch.no_grad():
        got = [method(x) for x in xs]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=2e-4), (g - e).abs().max()
    assert method.num_avg == evolutions and len(method.last_info["losses"]) == 1
    zs = scale * feats[-1][0] @ text.t()
    assert not torch.allclose(got[-1], zs, atol=1e-3)
    assert (method.config.eps, method.config.weight_decay, method.config.lr) == (1e-3, 0.1, 6e-4)


def test_dpe_refuses_engine_steps():
    clip, _, tok = make_clip()
    with pytest.raises(ValueError, match="update_steps"):
        rlcf.create_method("dpe", EncoderPolicy(clip, CLASSNAMES, tok), steps=1)


# ------------------------------------------------------------------ BoostAdapter (runner.py --mode boostadapter)
def official_boostadapter(feats_stream, text, scale, cfg, infer_ori_image=False):
    """``run_test_tda`` with ``--mode boostadapter`` in plain torch: the historical positive cache (``fifo=False``),
    a deep copy with ``shot_capacity + delta`` filled with the 10% lowest-entropy views, the negative cache (the
    default ``fifo=True``); returns each sample's final logits."""
    def update_cache(cache, pred, item, capacity, fifo=True):
        if pred in cache:
            cache[pred].append(item)
            if fifo:
                if len(cache[pred]) > capacity:
                    cache[pred] = cache[pred][1:]
            else:
                cache[pred] = sorted(cache[pred], key=lambda it: it[1])[:capacity]
        else:
            cache[pred] = [item]

    def cache_logits(f, cache, alpha, beta, mask=None):
        keys, values = [], []
        for c in sorted(cache):
            for it in cache[c]:
                keys.append(it[0])
                values.append(it[2] if mask else F.one_hot(torch.tensor([c]), len(text)).float())
        keys, values = torch.cat(keys).t(), torch.cat(values)
        if mask:
            values = ((values > mask[0]) & (values < mask[1])).float()
        return alpha * ((-1) * (beta - beta * (f @ keys))).exp() @ values

    def softmax_entropy(x):
        return -(x.softmax(1) * x.log_softmax(1)).sum(1)

    pos, neg, outs = {}, {}, []
    for f in feats_stream:
        logits = scale * f @ text.t()
        if infer_ori_image:
            feat, clip_logits = f[:1], logits[:1]
            loss, prob = softmax_entropy(clip_logits), clip_logits.softmax(1)
        else:
            idx = torch.argsort(softmax_entropy(logits), descending=False)[:int(len(f) * 0.25)]
            feat, out = f[idx].mean(0, keepdim=True), logits[idx]
            lg = out - out.logsumexp(dim=-1, keepdim=True)
            avg = lg.logsumexp(dim=0) - np.log(lg.shape[0])
            loss, prob, clip_logits = -(avg * avg.exp()).sum(-1), out.softmax(1).mean(0, keepdim=True), out.mean(0, keepdim=True)
        pred = int(clip_logits.argmax())
        update_cache(pos, pred, [feat, float(loss)], cfg["pos"], fifo=False)
        order = torch.argsort(softmax_entropy(logits), descending=False)[:int(len(f) * cfg["boost"])]
        sel_out = logits[order]
        sel_ent = -(sel_out.log_softmax(-1) * sel_out.log_softmax(-1).exp()).sum(-1)
        cur = {k: list(v) for k, v in pos.items()}
        for i in range(len(order)):
            update_cache(cur, int(sel_out[i].argmax()), [f[order[i]].unsqueeze(0), float(sel_ent[i])],
                         cfg["pos"] + cfg["delta"], fifo=False)
        if 0.0 < float(loss) / math.log2(len(text)) < 1.0:
            update_cache(neg, pred, [feat, float(loss), prob], cfg["neg"])
        final = clip_logits + cache_logits(feat, cur, 2.0, 5.0)
        final = final - cache_logits(feat, neg, 0.117, 1.0, (0.03, 1.0))
        outs.append(final[0])
    return outs


@pytest.mark.parametrize("view0", [False, True])
def test_boostadapter_prediction_and_boosting_cache_match_the_official_code(view0):
    clip, _, tok = make_clip()
    xs = stream(6)
    feats = [image_and_text(clip, tok, x)[0] for x in xs]
    _, text, scale = image_and_text(clip, tok, xs[0])
    cfg = {"pos": 1, "delta": 1, "neg": 1, "boost": 0.25}
    expected = official_boostadapter(feats, text, scale, cfg, infer_ori_image=view0)
    method = rlcf.create_method("boostadapter", EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25,
                                options={"pos_capacity": 1, "delta": 1, "neg_capacity": 1, "boost_selection": 0.25,
                                         "neg_entropy": [0.0, 1.0], "view0_history": view0})
    with torch.no_grad():
        got = [method(x) for x in xs]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-4), (g - e).abs().max()
    assert method.last_info["boost_size"] > method.last_info["pos_size"]       # the boosting views were in
    tda = rlcf.create_method("tda", EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25,
                             options={"pos_capacity": 1, "neg_capacity": 1, "neg_entropy": [0.0, 1.0]})
    with torch.no_grad():
        assert not torch.allclose(tda(xs[0]), got[0], atol=1e-4)                # boosting changes TDA's logits


def test_boostadapter_negative_cache_is_fifo_by_default():
    from tasks.methods.boostadapter import FIFOCache
    from tasks.methods.tda import TDACache

    f = torch.eye(3)
    fifo, lowest = FIFOCache(2), TDACache(2)
    for cache in (fifo, lowest):
        for i, loss in enumerate((0.1, 0.9, 0.5)):
            cache.update(0, f[i], loss)
    assert [e[1] for e in fifo.items[0]] == [0.9, 0.5] and [e[1] for e in lowest.items[0]] == [0.1, 0.5]
    clip, _, tok = make_clip()
    assert isinstance(rlcf.create_method("boostadapter", EncoderPolicy(clip, CLASSNAMES, tok)).neg, FIFOCache)
    clean = rlcf.create_method("boostadapter", EncoderPolicy(clip, CLASSNAMES, tok), options={"neg_fifo": False})
    assert type(clean.neg) is TDACache


# ------------------------------------------------------------------ every peer
@pytest.mark.parametrize("name", ["dmn", "dpe", "boostadapter"])
def test_online_peers_resume_a_stream_exactly(name):
    import copy

    clip, _, tok = make_clip()
    xs = stream(4)
    whole = rlcf.create_method(name, EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25)
    with torch.no_grad():
        expected = [whole(x) for x in xs]
        first = rlcf.create_method(name, EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25)
        for x in xs[:2]:
            first(x)
        resumed = rlcf.create_method(name, EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25)
        resumed.load_stream_state(copy.deepcopy(first.stream_state()))
        assert all(torch.equal(resumed(x), e) for x, e in zip(xs[2:], expected[2:]))
        fresh = rlcf.create_method(name, EncoderPolicy(clip, CLASSNAMES, tok), selection=0.25)
        assert not torch.equal(fresh(xs[2]), expected[2])                      # the stream state matters


def test_rlcf_methods_lists_the_peers_with_their_kind(capsys):
    from tasks.command import main

    main(["methods"])
    out = capsys.readouterr().out
    for name, kind in (("mta", "episodic"), ("tps", "episodic"), ("dmn", "online"), ("dpe", "online"),
                       ("boostadapter", "online")):
        assert any(line.split()[:2] == [name, kind] for line in out.splitlines()), (name, out)
