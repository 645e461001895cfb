"""Growing a trained MaskGIT in depth (how the shipped Fashion-MNIST model was made)."""
import dataclasses

import pytest
import torch

from shortcut_core import MaskGIT, save_migm
from tests.tiny import TINY_MASKGIT, tiny_migm
from training.fmnist.train_maskgit import grow_from, init_weights


@pytest.fixture(scope="module")
def shallow(tmp_path_factory):
    path = tmp_path_factory.mktemp("grow") / "shallow.safetensors"
    migm = tiny_migm()
    save_migm(migm, path)
    return migm, path


def test_grown_model_computes_what_it_grew_from(shallow):
    migm, path = shallow
    deep = MaskGIT(dataclasses.replace(TINY_MASKGIT, depth=3 * TINY_MASKGIT.depth))
    init_weights(deep)
    message = grow_from(deep, path)
    assert f"depth {TINY_MASKGIT.depth} -> {3 * TINY_MASKGIT.depth}" in message
    tokens = torch.randint(0, TINY_MASKGIT.codebook_size + 1, (4, TINY_MASKGIT.num_image_tokens))
    classes = torch.tensor([0, 1, 2, TINY_MASKGIT.null_class])
    with torch.no_grad():
        torch.testing.assert_close(deep(tokens, classes), migm.model(tokens, classes), rtol=0, atol=1e-6)
        # New blocks are the identity through zeroed output projections, with random inner weights
        # so that gradients reach them.
        assert deep.transformer.layers[1][0].fn.mha.out_proj.weight.abs().sum() == 0
        assert deep.transformer.layers[1][0].fn.mha.in_proj_weight.abs().sum() > 0


def test_growing_refuses_a_different_width(shallow):
    _, path = shallow
    wider = MaskGIT(dataclasses.replace(TINY_MASKGIT, hidden=2 * TINY_MASKGIT.hidden, depth=4))
    with pytest.raises(ValueError, match="only the depth may differ"):
        grow_from(wider, path)
