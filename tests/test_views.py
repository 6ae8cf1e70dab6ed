import pytest
import torch

from ssl_mi_callback.views import MaskConfig, span_mask


def test_mask_is_a_pure_function_of_seed_uid_and_length():
    config = MaskConfig(mask_prob=0.5, mask_length=10, seed=3)
    first = span_mask(400, config, "utt-1")
    assert torch.equal(first, span_mask(400, config, "utt-1"))
    assert not torch.equal(first, span_mask(400, config, "utt-2"))
    assert not torch.equal(first, span_mask(400, MaskConfig(0.5, 10, seed=4), "utt-1"))


def test_masked_fraction_matches_fairseq_span_sampling():
    # n_spans ~ p*T/L with overlapping spans: expected masked share ~ 1 - exp(-p) for long utterances
    config = MaskConfig(mask_prob=0.5, mask_length=10, seed=0)
    share = torch.stack([span_mask(1000, config, f"u{i}") for i in range(200)]).float().mean().item()
    assert 0.36 < share < 0.42


@pytest.mark.parametrize("frames", [1, 5, 10, 11, 37])
def test_short_utterances_keep_an_unmasked_frame_and_mask_something(frames):
    mask = span_mask(frames, MaskConfig(mask_prob=0.5, mask_length=10), "short")
    assert mask.shape == (frames,)
    assert mask.sum() >= (1 if frames > 1 else 0)
    if frames <= 10:
        assert not mask[0]


def test_invalid_mask_settings_are_rejected():
    with pytest.raises(ValueError, match="mask_prob"):
        MaskConfig(mask_prob=1.5).validate()
    with pytest.raises(ValueError, match="mask_length"):
        MaskConfig(mask_length=0).validate()
