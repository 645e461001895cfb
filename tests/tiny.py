"""Tiny random-weight components for fast CPU tests."""
from __future__ import annotations

import torch

from shortcut_core import MaskGIT, MaskGITConfig, MaskGITMIGM, ShortcutConfig, VQGAN, VQGANConfig
from shortcut_core.checkpoints import fingerprint

TINY_MASKGIT = MaskGITConfig(hidden=32, depth=2, heads=4, mlp_dim=64, grid=4, codebook_size=16, num_classes=3)
TINY_VQGAN = VQGANConfig(embed_dim=8, n_embed=16, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=16,
                         ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
TINY_SHORTCUT = ShortcutConfig(dim=32, width=16, heads=4)


def tiny_migm(seed: int = 0, vqgan: bool = True) -> MaskGITMIGM:
    torch.manual_seed(seed)
    model = MaskGIT(TINY_MASKGIT)
    # Random init gives near-uniform logits; a larger bias makes sampled tokens depend on features.
    with torch.no_grad():
        model.bias.normal_(0, 1.0)
    vq = VQGAN(TINY_VQGAN) if vqgan else None
    return MaskGITMIGM(model, vq, name="tiny", class_names=["a", "b", "c"],
                       fingerprint=fingerprint(model.state_dict(), TINY_MASKGIT.to_dict()))


def tiny_shortcut(migm: MaskGITMIGM, seed: int = 1):
    torch.manual_seed(seed)
    return migm.build_shortcut(TINY_SHORTCUT).eval()
