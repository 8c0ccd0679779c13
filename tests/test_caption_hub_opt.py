"""``load_pretrained_lm`` on a folder laid out exactly as the hub ships ``facebook/opt-125m`` (config.json,
generation_config.json, pytorch_model.bin or model.safetensors, vocab.json, merges.txt, special_tokens_map.json,
tokenizer_config.json), built locally: a tiny random ``OPTForCausalLM`` and a byte-level BPE tokenizer trained on a
few sentences, with OPT's tokenizer settings (GPT2Tokenizer, BOS = EOS = ``</s>`` prepended, pad ``<pad>``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.captioning.checkpoint import load_pretrained_lm
from tasks.captioning.model import CaptionerConfig, PrefixCaptioner
from tasks.common.data import MissingDataError

SENTENCES = ["a photo of a red circle.", "a blue square on a green background.", "two stars in the sky.\n",
             "a small yellow triangle next to a dog.", "people walk down a busy street."]
HUB_FILES = {"config.json", "generation_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
             "tokenizer_config.json"}


def _token(content: str) -> dict:
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True,
            "__type": "AddedToken"}


def hub_opt_folder(folder: Path, weights: str) -> dict[str, torch.Tensor]:
    """The facebook/opt-125m file set with tiny random weights (``weights``: ``safetensors`` as
    ``save_pretrained`` writes it, or ``bin``: a ``torch.save``d ``OPTForCausalLM`` state dict with ``model.``
    prefixes and the tied ``lm_head.weight``, as opt-125m's pytorch_model.bin); returns the state dict."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import OPTConfig, OPTForCausalLM

    folder.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=320, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])   # OPT's ids 0, 1, 2, 3
    bpe.save_model(str(folder))                                              # vocab.json + merges.txt
    specials = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "errors": "replace", **{k: _token(v) for k, v in specials.items()}, "add_prefix_space": False,
        "add_bos_token": True, "special_tokens_map_file": None, "name_or_path": "patrickvonplaten/opt-30b",
        "tokenizer_class": "GPT2Tokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in _token(v).items() if kk != "__type"} for k, v in specials.items()}))
    vocab = len(json.loads((folder / "vocab.json").read_text()))
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                    max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                    eos_token_id=2, dropout=0.1, prefix="</s>", torch_dtype="float16")   # as opt-125m's config
    lm = OPTForCausalLM(cfg)
    lm.save_pretrained(str(folder))                           # config.json, generation_config.json, safetensors
    state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    if weights == "bin":
        (folder / "model.safetensors").unlink()
        torch.save({k: v.clone() for k, v in state.items()}, folder / "pytorch_model.bin")
    assert {p.name for p in folder.iterdir()} == HUB_FILES | {"model.safetensors" if weights != "bin"
                                                              else "pytorch_model.bin"}
    return state


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hub_layout_opt_loads_and_captions(tmp_path, weights):
    state = hub_opt_folder(tmp_path / "opt-125m", weights)
    lm, tok = load_pretrained_lm(tmp_path / "opt-125m")
    assert type(lm).__name__ == "OPTForCausalLM" and not lm.training and lm.dtype == torch.float32
    for k, v in lm.state_dict().items():                     # every weight from the file, none re-initialised
        assert torch.equal(v, state[k].float()), k
    assert lm.lm_head.weight.data_ptr() == lm.model.decoder.embed_tokens.weight.data_ptr()   # tied
    ids = tok("a red circle").input_ids
    assert ids[0] == 2 and tok.bos_token_id == tok.eos_token_id == 2                        # BOS prepended
    assert tok.pad_token_id == lm.config.pad_token_id == 1 and tok.decode(ids, skip_special_tokens=True) == "a red circle"
    assert tok(["a dog", "two stars in the sky"], padding=True).input_ids[0][-1] == 1       # pads with <pad>
    assert len(tok("\n", add_special_tokens=False).input_ids) == 1                           # OPT's stop token

    torch.manual_seed(0)
    cap = PrefixCaptioner(CaptionerConfig(prefix_dim=16, prefix_length=4, clip_length=4, num_layers=1, num_heads=2,
                                          max_new_tokens=5), lm, tok)
    assert cap.stop_id == tok("\n", add_special_tokens=False).input_ids[0] and cap.pad_id == 1 and cap.bos_id == 2
    emb = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    texts = cap.generate(emb, num_return_sequences=3)
    assert len(texts) == 2 and all(len(row) == 3 and all(isinstance(t, str) for t in row) for row in texts)
    score = cap.official_tta_logprob(emb, ["a red circle.", "two stars in the sky."])   # the official TTA loss
    assert score.shape == (2,) and torch.isfinite(score).all() and (score < 0).all()
    (-score.mean()).backward()
    assert all(p.grad is None for p in lm.parameters())
    assert sum(float(p.grad.abs().sum()) for p in cap.mapper.parameters() if p.grad is not None) > 0


def test_incomplete_hub_folders_are_named(tmp_path):
    hub_opt_folder(tmp_path / "opt", "safetensors")
    (tmp_path / "opt" / "merges.txt").unlink()
    with pytest.raises(MissingDataError, match="tokenizer files"):
        load_pretrained_lm(tmp_path / "opt")
    hub_opt_folder(tmp_path / "opt2", "bin")
    sd = torch.load(tmp_path / "opt2" / "pytorch_model.bin", weights_only=True)
    torch.save({k: v for k, v in sd.items() if "layers.1." not in k}, tmp_path / "opt2" / "pytorch_model.bin")
    with pytest.raises(MissingDataError, match="lack .* tensors.*layers.1"):   # never silently random weights
        load_pretrained_lm(tmp_path / "opt2")
    (tmp_path / "opt2" / "pytorch_model.bin").unlink()
    with pytest.raises(MissingDataError, match="no weights file"):
        load_pretrained_lm(tmp_path / "opt2")
