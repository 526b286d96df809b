"""The fusion network: modality vectors of different widths -> one fused item vector z.

Per modality a LayerNorm + Linear to d_model, plus a learned modality-type embedding; a
genre embedding on every token; one learnable fusion token; a small pre-LN transformer
encoder over the M+1 tokens in which absent modalities are masked out (their values are
zeroed before anything reads them, and no token attends to them); the fusion token's output
through LayerNorm + Linear is z. A linear head maps z to the title space for eq. 1.

Legend: B items, M modalities, D d_model, d z width (= CF width), d_t title width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mufasa_cli.config import MFLConfig


class FusionNetwork(nn.Module):
    def __init__(
        self, modality_dims: dict[str, int], num_genres: int, out_dim: int, title_dim: int | None, cfg: MFLConfig
    ):
        super().__init__()
        if not modality_dims:
            raise ValueError("the fusion network needs at least one modality")
        D = cfg.d_model
        self.modality_names = list(modality_dims)
        self.project = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, D)) for d in modality_dims.values())
        self.modality_embedding = nn.Parameter(torch.randn(len(modality_dims), D) * 0.02)
        self.genre_embedding = nn.Embedding(max(num_genres, 1), D)
        nn.init.normal_(self.genre_embedding.weight, std=0.02)
        self.fusion_token = nn.Parameter(torch.randn(D) * 0.02)
        layer = nn.TransformerEncoderLayer(
            D, cfg.num_heads, 4 * D, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, out_dim))
        # Always a learned map, even when the widths agree: eq. 2 pins z to the CF space, so
        # eq. 1 must compare titles through a map rather than in z's own coordinates.
        self.title_head = nn.Linear(out_dim, title_dim) if title_dim else nn.Identity()

    def forward(self, features: list[torch.Tensor], present: torch.Tensor, genre: torch.Tensor) -> torch.Tensor:
        """features[m]: (B, d_m) float32; present: (B, M) bool; genre: (B,) int64 -> z (B, d)."""
        B, M = present.shape
        tokens = torch.stack([proj(x) for proj, x in zip(self.project, features, strict=True)], dim=1)  # (B, M, D)
        tokens = torch.where(present[..., None], tokens, torch.zeros_like(tokens))  # absent values never enter
        g = self.genre_embedding(genre)[:, None, :]  # (B, 1, D)
        tokens = tokens + self.modality_embedding[None] + g
        fusion = self.fusion_token.expand(B, 1, -1) + g
        x = torch.cat([fusion, tokens], dim=1)  # (B, 1+M, D)
        ignore = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=present.device), ~present], dim=1)
        *early, last = self.encoder.layers
        for layer in early:
            x = layer(x, src_key_padding_mask=ignore)  # (B, 1+M, D)
        return self.out(fusion_token_output(last, x, ignore))  # (B, d)


def fusion_token_output(layer: nn.TransformerEncoderLayer, x: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """layer(x, src_key_padding_mask=ignore)[:, 0] (pre-norm, batch first), computing only the
    fusion token's row: z reads nothing else from the last layer, so the other tokens need
    their keys and values there, but no query, attention output or feed-forward. The same
    function as the layer's own forward, with dropout where it puts it; about a third less
    arithmetic for the MFL, which align-train with --finetune-mfl --full-softmax runs over the
    whole catalogue every step."""
    attn = layer.self_attn
    B, T, D = x.shape
    H = attn.num_heads
    h = layer.norm1(x)
    w_q, w_kv = attn.in_proj_weight.split([D, 2 * D])
    b_q, b_kv = attn.in_proj_bias.split([D, 2 * D])
    q = F.linear(h[:, :1], w_q, b_q).view(B, 1, H, D // H).transpose(1, 2)  # (B, H, 1, dh)
    k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in F.linear(h, w_kv, b_kv).chunk(2, dim=-1))
    keep = ~ignore[:, None, None, :]  # (B, 1, 1, T): the fusion token always sees itself
    p_attn = attn.dropout if layer.training else 0.0
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p_attn)  # (B, H, 1, dh)
    y = x[:, 0] + layer.dropout1(attn.out_proj(a.transpose(1, 2).reshape(B, D)))
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(y)))))
    return y + layer.dropout2(ff)
