"""The generic adapter (any module + a per-layer feature function) and the past/future views, on a
small APC-style model (causal GRUs on log-mel frames, trained here with APC's objective) and real
generated speech."""
from __future__ import annotations

import pytest
import torch

from conftest import require

N_FFT, HOP, OFFSET = 400, 320, 3  # 25 ms windows, 20 ms frames, predict 60 ms ahead


class TinyAPC(torch.nn.Module):
    """Autoregressive predictive coding (Chung et al. 2019) at toy size: log-mel -> causal GRUs;
    the head predicts the log-mel frame ``OFFSET`` frames ahead."""

    def __init__(self, hidden: int = 32, layers: int = 2, bidirectional: bool = False) -> None:
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=N_FFT, hop_length=HOP, n_mels=40, center=False)
        sizes = [40] + [hidden] * layers
        self.rnns = torch.nn.ModuleList(
            torch.nn.GRU(sizes[i], hidden // (2 if bidirectional else 1), batch_first=True, bidirectional=bidirectional)
            for i in range(layers)
        )
        self.head = torch.nn.Linear(hidden, 40)

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(waveforms) + 1e-6).transpose(1, 2)  # [B, F, 40]

    def layer_outputs(self, waveforms: torch.Tensor) -> list[torch.Tensor]:
        hidden, outputs = self.log_mel(waveforms), []
        for rnn in self.rnns:
            hidden = rnn(hidden)[0]
            outputs.append(hidden)
        return outputs

    def apc_loss(self, waveforms: torch.Tensor) -> torch.Tensor:
        target = self.log_mel(waveforms)
        prediction = self.head(self.layer_outputs(waveforms)[-1])
        return (prediction[:, :-OFFSET] - target[:, OFFSET:]).abs().mean()


def apc_adapter(causal: bool = True):
    from ssl_mi_callback.features.generic import FunctionAdapter

    return FunctionAdapter(
        lambda model, waveforms: model.layer_outputs(waveforms), num_layers=2, frame_hop=HOP, frame_length=N_FFT,
        num_frames=lambda samples: (samples - N_FFT) // HOP + 1, causal=causal,
    )


def evaluator(subset, adapter, **settings):
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator

    config = EvaluationConfig(**{"clusters": 8, "bootstrap": 50, "mask_length": 5, "layers": (1, 2), **settings})
    return Evaluator(config, subset, adapter)


@pytest.fixture(scope="module")
def subset(tiny_corpus):
    require("torchaudio")
    from ssl_mi_callback.data import load_heldout

    return load_heldout(tiny_corpus / "heldout.tsv")


def test_waveform_mask_zeroes_exactly_the_samples_of_masked_frames():
    from ssl_mi_callback.views import zero_masked_frames

    waveforms = torch.ones(2, 20)
    frame_mask = torch.tensor([[False, True, False, False, False], [True, False, False, False, True]])
    masked = zero_masked_frames(waveforms, frame_mask, frame_hop=4, frame_length=6)
    # frame t covers samples [4t, 4t + 6)
    assert masked[0].tolist() == [1.0] * 4 + [0.0] * 6 + [1.0] * 10
    assert masked[1].tolist() == [0.0] * 6 + [1.0] * 10 + [0.0] * 4


def test_trained_apc_is_scored_with_past_future_views(subset, tiny_corpus, one_torch_thread):
    from ssl_mi_callback.data import load_heldout

    torch.manual_seed(0)
    model = TinyAPC()
    scorer = evaluator(subset, apc_adapter())
    scorer.check_model(model)
    before = scorer.evaluate(model)
    assert before["views"] == {"pair": "past_future", "future_offset": OFFSET, "mask_placement": None}
    assert before["settings"]["view_pair"] == "past_future" and before["settings"]["adapter"] == "function"

    train = [u.waveform for u in load_heldout(tiny_corpus / "train.tsv").utterances]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        waveform = torch.as_tensor(train[step % len(train)])[None]
        loss = model.apc_loss(waveform)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10])  # the APC objective is learnt

    after = scorer.evaluate(model)
    for record in (before, after):
        for layer in ("1", "2"):
            result = record["layers"][layer]
            assert result["mi_bits"] == pytest.approx(result["h_c_bits"] - result["ce_bits"], abs=2e-3)
            # a bound, so at most the reference term; at least about 0 (slightly negative by chance)
            assert -0.02 <= result["mi_bits"] <= result["h_c_bits"] + 1e-6
    # one pair per frame that has a frame OFFSET later (utterances cropped to the batch length)
    frames = sum(len(b.utterances) * ((b.num_samples - N_FFT) // HOP + 1 - OFFSET) for b in scorer.batches)
    assert after["subset"]["frames"] == frames


def test_masked_views_of_a_model_without_mask_embedding_use_waveform_masking(subset, one_torch_thread):
    torch.manual_seed(0)
    record = evaluator(subset, apc_adapter(causal=False)).evaluate(TinyAPC())
    assert record["views"] == {"pair": "masked", "future_offset": None, "mask_placement": "waveform"}
    assert all(0.0 <= record["layers"][k]["mi_bits"] < 10 for k in ("1", "2"))


def test_a_bidirectional_model_is_refused_for_past_future_views(subset, one_torch_thread):
    from ssl_mi_callback.features import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="not causal"):
        evaluator(subset, apc_adapter()).check_model(TinyAPC(bidirectional=True))


def test_past_future_views_need_a_causal_adapter(subset):
    require("fairseq")
    from test_evaluator import tiny_wav2vec2

    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    scorer = Evaluator(EvaluationConfig(views="past_future", clusters=8), subset, FairseqMaskedPredictionAdapter())
    with pytest.raises(ValueError, match="views=past_future needs a causal model"):
        scorer.check_model(tiny_wav2vec2())


def test_features_that_disagree_with_num_frames_get_a_clear_error(subset, one_torch_thread):
    from ssl_mi_callback.evaluator import EvaluationError
    from ssl_mi_callback.features.generic import FunctionAdapter

    wrong = FunctionAdapter(lambda model, waveforms: model.layer_outputs(waveforms), num_layers=2, frame_hop=HOP)
    with pytest.raises(EvaluationError, match=r"expected \[1, 25, dim\] \(its num_frames disagrees with its features\)"):
        evaluator(subset, wrong).evaluate(TinyAPC())


def test_a_masked_view_of_another_shape_gets_a_clear_error(subset, one_torch_thread):
    """Frame pairs are taken by index from both views: a masked view one frame short must stop with the
    adapter's shape error (not an index error, or a device-side assert on a GPU)."""
    from ssl_mi_callback.evaluator import EvaluationError

    class ShortMaskedView(type(apc_adapter(causal=False))):
        def extract_views(self, model, waveforms, frame_mask, layers):
            masked, unmasked = super().extract_views(model, waveforms, frame_mask, layers)
            return {layer: value[:, :-1] for layer, value in masked.items()}, unmasked

    good = apc_adapter(causal=False)
    short = ShortMaskedView(good.features_fn, num_layers=2, frame_hop=HOP, frame_length=N_FFT,
                            num_frames=good._num_frames)
    with pytest.raises(EvaluationError, match=r"the function adapter returned layer 1 features of shape .*its num_frames disagrees"):
        evaluator(subset, short, views="masked").evaluate(TinyAPC())
