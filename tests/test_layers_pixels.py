"""PixelNormalize: (pixels - mean) / std per channel, for one image or a batch, in the pixels' dtype."""

import pytest
import torch

from hf_distill.layers import PixelNormalize


def test_normalizes_each_channel_by_hand():
    normalize = PixelNormalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    image = torch.full((3, 2, 2), 0.5)
    expected = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 0.25)])
    torch.testing.assert_close(normalize(image), expected)
    batch = torch.stack([image, torch.zeros(3, 2, 2)])
    out = normalize(batch)
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    assert normalize(batch.half()).dtype == torch.float16
    # The statistics are not weights: nothing in the state dict.
    assert normalize.state_dict() == {}


def test_rejects_bad_statistics_and_shapes():
    with pytest.raises(ValueError, match="3 values"):
        PixelNormalize([0.5], [0.5])
    with pytest.raises(ValueError, match="positive"):
        PixelNormalize([0.5] * 3, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"\(3, H, W\) or \(N, 3, H, W\), got \(1, 4, 4\)"):
        PixelNormalize([0.5] * 3, [0.5] * 3)(torch.zeros(1, 4, 4))
