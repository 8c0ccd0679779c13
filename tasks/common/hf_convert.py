"""open_clip ``CLIP`` (ViT vision tower, built-in text tower) -> transformers ``CLIPModel`` with the same weights.

The two implementations compute the same functions: pre-norm residual blocks, one fused ``in_proj`` (open_clip's
``nn.MultiheadAttention``) = HF's ``q/k/v_proj``, ``[W, D]`` projections = HF's ``Linear(W, D).weight.T``, the
class token pooled after ``ln_post`` (HF ``post_layernorm``), text features at the end-of-text token. What
differs in the configuration (QuickGELU or GELU, layer-norm eps, head counts, context length) is read from the
open_clip modules. Options HF CLIP has no counterpart for are refused (attentional pooling, layer scale, patch
or token pooling other than the class / EOT token, a logit bias, projection biases).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["open_clip_to_hf"]


def _act(mlp: nn.Module) -> str:
    act = mlp.gelu
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    raise NotImplementedError(f"activation {type(act).__name__} has no HF CLIP counterpart")


def _eps(*modules: nn.Module) -> float:
    eps = {m.eps for mod in modules for m in mod.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        raise NotImplementedError(f"one layer-norm eps per tower is needed (HF config), got {sorted(eps)}")
    return float(eps.pop())


def _blocks(blocks: nn.ModuleList, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """open_clip residual blocks -> HF ``{prefix}.layers.{i}.*`` tensors, and the tower's config fields."""
    sd: dict[str, Tensor] = {}
    for i, b in enumerate(blocks):
        for name in ("ls_1", "ls_2", "ln_attn"):
            if not isinstance(getattr(b, name, nn.Identity()), nn.Identity):
                raise NotImplementedError(f"open_clip block option '{name}' has no HF CLIP counterpart")
        if not isinstance(getattr(b.mlp, "ln", nn.Identity()), nn.Identity) \
                or not isinstance(b.attn, nn.MultiheadAttention):
            raise NotImplementedError("only open_clip blocks with nn.MultiheadAttention and a plain MLP are supported")
        q, k, v = b.attn.in_proj_weight.chunk(3)
        qb, kb, vb = b.attn.in_proj_bias.chunk(3)
        p = f"{prefix}.layers.{i}."
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.q_proj.bias": qb,
                   p + "self_attn.k_proj.weight": k, p + "self_attn.k_proj.bias": kb,
                   p + "self_attn.v_proj.weight": v, p + "self_attn.v_proj.bias": vb,
                   p + "self_attn.out_proj.weight": b.attn.out_proj.weight,
                   p + "self_attn.out_proj.bias": b.attn.out_proj.bias})
        for oc, hf in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
            sd[p + hf + ".weight"], sd[p + hf + ".bias"] = getattr(b, oc).weight, getattr(b, oc).bias
        for oc, hf in (("c_fc", "fc1"), ("c_proj", "fc2")):
            lin = getattr(b.mlp, oc)
            sd[p + "mlp." + hf + ".weight"], sd[p + "mlp." + hf + ".bias"] = lin.weight, lin.bias
    b0 = blocks[0]
    cfg = {"hidden_size": b0.attn.embed_dim, "num_attention_heads": b0.attn.num_heads,
           "intermediate_size": b0.mlp.c_fc.out_features, "num_hidden_layers": len(blocks), "hidden_act": _act(b0.mlp)}
    return sd, cfg


def open_clip_to_hf(model: nn.Module) -> Any:
    """A transformers ``CLIPModel`` with the weights of an open_clip ``CLIP`` (ViT, built-in text tower).

    Args:
        model: open_clip ``CLIP`` whose text features are read at the EOT token (``text_pool_type='argmax'``:
            the EOT id is the highest, ``vocab_size - 1``, which becomes the HF ``eos_token_id``).
    Returns:
        ``CLIPModel`` in eval mode, float32, on the CPU, with ``encode_image`` / ``encode_text`` equal to the
        open_clip model's (within float tolerance) through :class:`tasks.common.hf_clip.HFCLIP`.
    Raises:
        NotImplementedError: an open_clip option HF CLIP cannot express.
    """
    from open_clip.transformer import VisionTransformer
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    vis = model.visual
    if not isinstance(vis, VisionTransformer) or getattr(model, "transformer", None) is None:
        raise NotImplementedError("open_clip_to_hf converts ViT CLIPs with the built-in text tower only")
    if vis.attn_pool is not None or vis.pool_type != "tok" or isinstance(vis.ln_pre, nn.Identity):
        raise NotImplementedError("HF CLIP pools the class token after a pre-LN: attentional / average pooling "
                                  "and no_ln_pre have no counterpart")
    if getattr(model, "text_pool_type", "argmax") != "argmax" or model.attn_mask is None \
            or getattr(model, "logit_bias", None) is not None:
        raise NotImplementedError("HF CLIP needs a causal text tower pooled at the EOT token and no logit bias")
    if not isinstance(vis.proj, nn.Parameter) or not isinstance(model.text_projection, nn.Parameter) \
            or vis.conv1.bias is not None:
        raise NotImplementedError("projections must be bias-free [W, D] matrices and the patch conv bias-free")
    vsd, vcfg = _blocks(vis.transformer.resblocks, "vision_model.encoder")
    tsd, tcfg = _blocks(model.transformer.resblocks, "text_model.encoder")
    embed_dim = int(vis.proj.shape[1])
    vocab, context = model.token_embedding.num_embeddings, model.positional_embedding.shape[0]
    vision_config = CLIPVisionConfig(**vcfg, image_size=int(vis.image_size[0]), patch_size=int(vis.patch_size[0]),
                                     layer_norm_eps=_eps(vis), projection_dim=embed_dim)
    text_config = CLIPTextConfig(**tcfg, vocab_size=vocab, max_position_embeddings=context,
                                 layer_norm_eps=_eps(model.transformer, model.ln_final), projection_dim=embed_dim,
                                 eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=0)
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                        projection_dim=embed_dim, logit_scale_init_value=float(model.logit_scale.detach()))
    sd = {**vsd, **tsd,
          "vision_model.embeddings.class_embedding": vis.class_embedding,
          "vision_model.embeddings.patch_embedding.weight": vis.conv1.weight,
          "vision_model.embeddings.position_embedding.weight": vis.positional_embedding,
          "vision_model.pre_layrnorm.weight": vis.ln_pre.weight, "vision_model.pre_layrnorm.bias": vis.ln_pre.bias,
          "vision_model.post_layernorm.weight": vis.ln_post.weight,
          "vision_model.post_layernorm.bias": vis.ln_post.bias,
          "visual_projection.weight": vis.proj.t(),
          "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
          "text_model.embeddings.position_embedding.weight": model.positional_embedding,
          "text_model.final_layer_norm.weight": model.ln_final.weight,
          "text_model.final_layer_norm.bias": model.ln_final.bias,
          "text_projection.weight": model.text_projection.t(),
          "logit_scale": model.logit_scale}
    hf = CLIPModel(config)
    with torch.no_grad():
        hf.load_state_dict({k: v.detach().float().cpu().clone() for k, v in sd.items()}, strict=True)
    return hf.eval()
