"""One evaluation: held-out audio -> two-view features -> estimators -> a result record.

Data flows one way: the subset and the masks are fixed at construction; :meth:`Evaluator.evaluate`
only reads the model. Forward passes are sharded over ranks and gathered (see :mod:`.distributed`),
so every rank returns the same record.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from . import estimators
from .data import Batch, HeldOutSubset, Source, load_heldout, plan_batches
from .distributed import GatherFn, gather_objects
from .features import VIEW_PAIRS, FeatureAdapter, resolve_layers
from .views import MaskConfig, span_mask

SAMPLE_RATE = 16000
METRIC_DECIMALS = 4
"""The flat ``metrics`` are rounded to 1e-4 (far below the estimator's noise), so a host that logs
and compares them at 4 decimals (fairseq's validation line) selects on exactly the same numbers."""
logger = logging.getLogger("ssl_mi_callback")


@dataclass
class EvaluationConfig:
    """Settings of one evaluation; all of them are written into every record."""

    layers: tuple[int, ...] = field(default=(-1,), metadata={"help": "transformer layers to score, 1-based; negative counts from the end (-1 = last, e.g. -1 or 4,8,12)"})
    selection: str = field(default="last", metadata={"help": "what becomes the selection metric mi_bits: 'last' (last scored layer), 'mean' (mean over scored layers) or a layer number"})
    clusters: int = field(default=50, metadata={"help": "k-means clusters K on the unmasked view (paper: 50)"})
    probe: str = field(default="linear", metadata={"help": "probe q(c|Za): 'linear' (multinomial logistic regression) or 'mlp'"})
    views: str = field(default="auto", metadata={"help": "view pair: 'masked' (Za masked input, Zb unmasked, at the masked frames), 'past_future' (Za at frame t, Zb at frame t+future_offset; causal models such as APC) or 'auto' (the adapter's default)"})
    centering: str = field(default="utterance", metadata={"help": "'utterance': subtract each utterance's mean feature from both views before k-means and the probe (removes voice/channel structure shared by the views; chosen by the selection benchmark); 'none': raw features (the paper)"})
    position_control: bool = field(default=True, metadata={"help": "also estimate I(Za; c | P), the MI beyond what the frame's position in its utterance (P: distances to the edges) predicts of the clusters, as CE(c | P) - CE(c | Za, P), and select by it (two more probes; removes structure the views share without audio, which made destroyed checkpoints score; chosen by the selection benchmark, round 2); false: select by the plain bound"})
    future_offset: int = field(default=3, metadata={"help": "k of the past_future views in frames (3 frames = 60 ms at 20 ms frames)"})
    mask_prob: float = field(default=0.5, metadata={"help": "span-mask probability of the masked view"})
    mask_length: int = field(default=10, metadata={"help": "span-mask length in frames"})
    mask_seed: int = field(default=0, metadata={"help": "seed of the fixed masks"})
    estimator_seed: int = field(default=0, metadata={"help": "seed of the utterance split, k-means init and probe"})
    fit_fraction: float = field(default=0.5, metadata={"help": "share of held-out utterances used to fit k-means and the probe; the rest measures the bound"})
    bootstrap: int = field(default=200, metadata={"help": "bootstrap resamples over utterances for the 95% interval"})
    baselines: bool = field(default=True, metadata={"help": "also compute the label-free baselines RankMe and RankMe-t (k-means inertia is always reported)"})
    batch_seconds: float = field(default=64.0, metadata={"help": "audio seconds per forward batch (memory bound of the forward)"})
    length_quantum_seconds: float = field(default=0.5, metadata={"help": "crop utterances to a multiple of this many seconds so equal lengths batch without padding (0: no cropping, batch size 1 for unequal lengths)"})

    def validate(self) -> None:
        if not self.layers:
            raise ValueError("layers is empty: give at least one layer, e.g. -1 for the last")
        if self.selection not in ("last", "mean"):
            try:
                int(self.selection)
            except ValueError:
                raise ValueError(f"selection must be 'last', 'mean' or a layer number, got {self.selection!r}") from None
        if self.clusters < 2:
            raise ValueError(f"clusters must be >= 2, got {self.clusters}")
        if self.views not in ("auto", *VIEW_PAIRS):
            raise ValueError(f"views must be 'auto', {', '.join(repr(v) for v in VIEW_PAIRS)}; got {self.views!r}")
        if self.centering not in ("none", "utterance"):
            raise ValueError(f"centering must be 'none' or 'utterance', got {self.centering!r}")
        if self.future_offset < 1:
            raise ValueError(f"future_offset must be >= 1 frame, got {self.future_offset}")
        if self.probe not in ("linear", "mlp"):
            raise ValueError(f"probe must be 'linear' or 'mlp', got {self.probe!r}")
        if not 0.0 < self.fit_fraction < 1.0:
            raise ValueError(f"fit_fraction must be in (0, 1), got {self.fit_fraction}")
        if self.batch_seconds <= 0 or self.length_quantum_seconds < 0:
            raise ValueError("batch_seconds must be > 0 and length_quantum_seconds >= 0")
        self.mask_config().validate()

    @classmethod
    def from_settings(cls, settings: dict) -> "EvaluationConfig":
        """The config recorded in a result's ``settings`` (extra keys such as ``adapter`` ignored)."""
        fields = {key: value for key, value in settings.items() if key in cls.__dataclass_fields__}
        if "layers" in fields:
            fields["layers"] = tuple(fields["layers"])
        return cls(**fields)

    def mask_config(self) -> MaskConfig:
        return MaskConfig(mask_prob=self.mask_prob, mask_length=self.mask_length, seed=self.mask_seed)


class EvaluationError(RuntimeError):
    """An evaluation failed on some rank (the message names the rank and the cause).

    ``out_of_memory``: the cause was ``torch.cuda.OutOfMemoryError`` (the evaluator has already
    returned its cached CUDA memory, so training can go on)."""

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


def _stage_failure(rank: int, error: BaseException) -> EvaluationError:
    """What a rank whose stage raised hands to the next collective instead of its result, so every
    rank reaches that collective and fails the evaluation together (none waits forever)."""
    return EvaluationError(f"rank {rank}: {type(error).__name__}: {error}",
                           out_of_memory=isinstance(error, torch.cuda.OutOfMemoryError))


def _release_cuda_memory_after(outcome: object) -> None:
    """After an out-of-memory failure (its traceback, and the tensors it held, already dropped),
    return the cached CUDA blocks so the training step after the evaluation gets them back."""
    if isinstance(outcome, EvaluationError) and outcome.out_of_memory and torch.cuda.is_available():
        torch.cuda.empty_cache()


class BatchPairs(NamedTuple):
    """One batch's frame pairs: {layer: (Za, Zb)}, the utterance index, frame index (0-based) and the
    utterance's frame count of every pair."""

    index: int
    per_layer: dict
    groups: torch.Tensor
    frame_index: torch.Tensor
    num_frames: torch.Tensor


UnmaskedSink = Callable[[Batch, dict[int, torch.Tensor]], None]
"""Called by :meth:`Evaluator.evaluate` with each of this rank's batches and its unmasked features of every
frame ({layer: [B, F, D]}), e.g. to reuse the forward for a supervised probe (``scoring``)."""


class _Estimate(NamedTuple):
    """The estimator stage's result on one rank."""

    per_layer: dict[int, dict]
    metrics: dict[str, float]
    baseline_seconds: float
    frames: int


@contextlib.contextmanager
def _evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval() + no_grad for the duration; training mode and every RNG state restored afterwards."""
    was_training = model.training
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


_POSITION_NAMES = {
    "mi_given_control_bits": "mi_given_position_bits",
    "ci95_given_control_bits": "ci95_given_position_bits",
    "control_mi_bits": "mi_position_bits",
}


def _name_position_control(result: dict) -> dict:
    """The estimator's generic control fields named for the position control (P = frame position)."""
    return {_POSITION_NAMES.get(key, key): value for key, value in result.items()}


def _check_finite(layer: int, utterances: Sequence, masked: torch.Tensor, unmasked: torch.Tensor) -> None:
    """Raise one line naming the utterances whose layer features hold NaN/inf ([B, F, D] views)."""
    finite = torch.isfinite(masked).flatten(1).all(dim=1) & torch.isfinite(unmasked).flatten(1).all(dim=1)
    if bool(finite.all()):
        return
    bad = [u.uid for u, ok in zip(utterances, finite.tolist()) if not ok]
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    cause = ("the model's output is not finite (diverged training?)" if len(bad) == len(utterances)
             else "check that audio (the model gives finite features for the rest of the batch)")
    raise ValueError(
        f"non-finite features (NaN/inf) at layer {layer} for {len(bad)} of {len(utterances)} utterances in a "
        f"batch ({shown}): {cause}"
    )


def _check_frames(adapter: str, features: dict[int, torch.Tensor], batch_size: int, num_frames: int) -> None:
    """Raise one line if an adapter's features are not [batch, num_frames(model, samples), D]."""
    for layer, value in features.items():
        if value.dim() != 3 or value.shape[0] != batch_size or value.shape[1] != num_frames:
            raise ValueError(
                f"the {adapter} adapter returned layer {layer} features of shape {tuple(value.shape)}, expected "
                f"[{batch_size}, {num_frames}, dim] (its num_frames disagrees with its features)"
            )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class Evaluator:
    """Scores a model on a fixed held-out subset with the two-view MI bound (DESIGN.md section 2).

    ``evaluate(model)`` returns a JSON-able record: ``metrics`` (flat scalars for loggers:
    ``mi_bits`` = the selection value, and per layer ``mi_bits_l{k}``, ``h_c_bits_l{k}``, ...),
    ``layers`` (each layer's full estimator result), ``settings``, ``subset`` and ``seconds``.
    """

    def __init__(
        self,
        config: EvaluationConfig,
        subset: HeldOutSubset,
        adapter: FeatureAdapter,
        *,
        rank: int = 0,
        world_size: int = 1,
        gather: GatherFn = gather_objects,
    ) -> None:
        config.validate()
        self.config = config
        self.subset = subset
        self.adapter = adapter
        self.rank, self.world_size = rank, world_size
        self.gather = gather
        self.batches = plan_batches(
            subset.utterances, batch_seconds=config.batch_seconds,
            length_quantum_seconds=config.length_quantum_seconds, sample_rate=SAMPLE_RATE,
        )

    @classmethod
    def from_heldout(
        cls,
        config: Optional[EvaluationConfig],
        heldout: Source,
        adapter: FeatureAdapter,
        *,
        max_seconds: Optional[float] = 300.0,
        max_utterance_seconds: Optional[float] = 15.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> "Evaluator":
        """Load the held-out audio (manifest, folder or list of files; see :func:`~ssl_mi_callback.data.load_heldout`),
        log what was loaded, and build the evaluator (``config`` None: the defaults)."""
        subset = load_heldout(heldout, max_seconds=max_seconds, max_utterance_seconds=max_utterance_seconds)
        logger.info("MI held-out subset: %s", subset.describe())
        return cls(config if config is not None else EvaluationConfig(), subset, adapter, rank=rank, world_size=world_size)

    @property
    def view_pair(self) -> str:
        """The view pair this evaluator uses (``views`` with ``auto`` resolved by the adapter)."""
        return self.adapter.default_views if self.config.views == "auto" else self.config.views

    def settings(self) -> dict:
        return {
            **asdict(self.config), "layers": list(self.config.layers), "adapter": self.adapter.name,
            "view_pair": self.view_pair,
        }

    def _mask_placement(self, model: torch.nn.Module) -> Optional[str]:
        if self.view_pair != "masked":
            return None
        placement_for = getattr(self.adapter, "mask_placement_for", None)
        return placement_for(model) if placement_for is not None else self.adapter.mask_placement

    def _pair_count(self, num_frames: int, uid: str) -> int:
        if self.view_pair == "past_future":
            return max(num_frames - self.config.future_offset, 0)
        return int(span_mask(num_frames, self.config.mask_config(), uid).sum())

    def masked_frame_count(self, model: torch.nn.Module) -> int:
        """How many (Za, Zb) frame pairs one evaluation of ``model`` yields (masked frames for the
        masked views, frames with a frame ``future_offset`` later for the past/future views)."""
        total = 0
        for batch in self.batches:
            num_frames = self.adapter.num_frames(model, batch.num_samples)
            total += sum(self._pair_count(num_frames, u.uid) for u in batch.utterances)
        return total

    def _check_adapter(self, model: torch.nn.Module) -> None:
        self.adapter.check(model)
        if self.view_pair == "past_future" and not getattr(self.adapter, "causal", False):
            raise ValueError(
                f"views=past_future needs a causal model (Za at frame t must see only the past), and the "
                f"{self.adapter.name} adapter is not causal; use views=masked, or an adapter built with causal=True"
            )

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise ValueError (one line) before training if an evaluation of ``model`` could not work:
        a model the adapter does not fit, a requested or selected layer it lacks, or a held-out subset
        too small for the estimate (at least 4 utterances and about 2 masked frames per cluster in the
        smaller of the fit/eval parts)."""
        self._check_adapter(model)
        num_layers = self.adapter.num_layers(model)
        layers = resolve_layers(self.config.layers, num_layers)
        selection = self.config.selection
        if selection not in ("last", "mean") and resolve_layers([int(selection)], num_layers)[0] not in layers:
            raise ValueError(f"selection layer {selection} is not among the scored layers {list(self.config.layers)}")
        utterances = len(self.subset.utterances)
        frames = self.masked_frame_count(model)
        smaller_share = min(self.config.fit_fraction, 1.0 - self.config.fit_fraction)
        if utterances < 4 or frames * smaller_share < 2 * self.config.clusters:
            raise ValueError(
                f"the held-out subset is too small for the estimate: {utterances} utterances, {frames} frame pairs "
                f"(need >= 4 utterances and >= {int(2 * self.config.clusters / smaller_share)} frame pairs "
                f"for {self.config.clusters} clusters); give more held-out audio or fewer clusters"
            )

    def _batch_views(
        self, model: torch.nn.Module, batch, layers: list[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor, dict[int, torch.Tensor]]:
        """(Za source, Zb source, pair mask [B, F'], unmasked features of every frame [B, F, D]):
        Za = first[layer][pairs], Zb = second[layer][pairs]."""
        waveforms = batch.waveforms()
        num_frames = self.adapter.num_frames(model, batch.num_samples)
        if self.view_pair == "past_future":
            features = self.adapter.extract(model, waveforms, layers)
            _check_frames(self.adapter.name, features, len(batch.utterances), num_frames)
            k = self.config.future_offset
            past = {layer: value[:, : num_frames - k] for layer, value in features.items()}
            future = {layer: value[:, k:] for layer, value in features.items()}
            pairs = torch.ones(len(batch.utterances), max(num_frames - k, 0), dtype=torch.bool)
            return past, future, pairs, features
        mask_config = self.config.mask_config()
        masks = torch.stack([span_mask(num_frames, mask_config, u.uid) for u in batch.utterances])
        masked, unmasked = self.adapter.extract_views(model, waveforms, masks, layers)
        for view in (masked, unmasked):  # pairs are taken by index: a view of another shape must stop here
            _check_frames(self.adapter.name, view, len(batch.utterances), num_frames)
        return masked, unmasked, masks, unmasked

    def _local_features(
        self, model: torch.nn.Module, layers: list[int], unmasked_sink: Optional[UnmaskedSink] = None
    ) -> list[BatchPairs]:
        results = []
        device = _model_device(model)
        for batch in self.batches[self.rank :: self.world_size]:
            first, second, pairs, unmasked = self._batch_views(model, batch, layers)
            if unmasked_sink is not None:
                unmasked_sink(batch, unmasked)
            pair_rows = torch.nonzero(pairs)  # (utterance, frame) of every pair, row-major; pairs is on the CPU
            utterance, frame = pair_rows.to(device).unbind(1)
            per_layer = {}
            for layer in layers:
                _check_finite(layer, batch.utterances, first[layer], second[layer])
                za, zb = first[layer][utterance, frame].float(), second[layer][utterance, frame].float()
                per_layer[layer] = (za.cpu(), zb.cpu()) if self.world_size > 1 else (za, zb)  # the gather pickles CPU tensors
            groups = torch.repeat_interleave(torch.tensor([u.index for u in batch.utterances]), pairs.sum(dim=1))
            frame_index = pair_rows[:, 1]
            num_frames = torch.full_like(frame_index, self.adapter.num_frames(model, batch.num_samples))
            results.append(BatchPairs(batch.index, per_layer, groups, frame_index, num_frames))
        return results

    def _gather_or_raise(self, local: object) -> list:
        """All-gather every rank's stage result (or its stage error); raises the same
        :class:`EvaluationError` on every rank if any rank failed."""
        gathered = self.gather(local)
        errors = [str(part) for part in gathered if isinstance(part, EvaluationError)]
        if errors:
            raise EvaluationError("; ".join(errors))
        return gathered

    @staticmethod
    def _assemble(
        gathered: list, with_positions: bool
    ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor, Optional[torch.Tensor]]:
        """Every rank's batches in global batch order: ({layer: (Za, Zb)}, utterance index per frame pair,
        position features per frame pair, or None without ``with_positions``)."""
        items: list[BatchPairs] = [item for rank_items in gathered for item in rank_items]
        if not items:
            raise EvaluationError("the held-out subset produced no batches")
        items.sort(key=lambda item: item.index)
        features = {
            layer: (torch.cat([i.per_layer[layer][0] for i in items]), torch.cat([i.per_layer[layer][1] for i in items]))
            for layer in items[0].per_layer
        }
        positions = None
        if with_positions:
            positions = estimators.position_features(
                torch.cat([i.frame_index for i in items]), torch.cat([i.num_frames for i in items])
            )
        return features, torch.cat([i.groups for i in items]), positions

    def evaluate(self, model: torch.nn.Module, unmasked_sink: Optional[UnmaskedSink] = None) -> dict:
        """Run one evaluation; raises on failure (the callback decides what a failure costs).

        Safe to call from a host's validation loop: the probes need autograd, so inference mode and
        no_grad of the caller are lifted for the estimators (the forward itself runs without grad).
        ``unmasked_sink`` (see :data:`UnmaskedSink`) receives each batch's unmasked features.
        """
        with torch.inference_mode(False), torch.enable_grad():
            return self._evaluate(model, unmasked_sink)

    def _evaluate(self, model: torch.nn.Module, unmasked_sink: Optional[UnmaskedSink] = None) -> dict:
        """Two stages, each guarded per rank: a rank whose stage raises (bad audio, out of memory, a
        numerical failure) hands an :class:`EvaluationError` to the collective that follows the
        stage, so every rank raises the same error there instead of the others waiting forever."""
        started = time.perf_counter()
        self._check_adapter(model)
        num_layers = self.adapter.num_layers(model)
        layers = resolve_layers(self.config.layers, num_layers)
        device = _model_device(model)
        with _evaluation_mode(model):
            try:  # feature stage: this rank's share of the forward passes
                local: object = self._local_features(model, layers, unmasked_sink)
            except Exception as error:
                local = _stage_failure(self.rank, error)
            _release_cuda_memory_after(local)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_done = time.perf_counter()
            gathered_features = self._gather_or_raise(local)  # collective 1
        gathered = time.perf_counter()
        try:  # estimator stage: the same k-means + probe on every rank, from the same gathered features
            estimate = self._estimate(gathered_features, device, num_layers)
            shared: Union[dict, EvaluationError] = estimate.metrics
        except Exception as error:
            if self.world_size == 1:
                raise
            shared = _stage_failure(self.rank, error)
        del gathered_features
        _release_cuda_memory_after(shared)
        record_extra = self._agree_across_ranks(shared)  # collective 2; raises on every rank if any failed
        per_layer, metrics, baseline_seconds = estimate.per_layer, estimate.metrics, estimate.baseline_seconds
        finished = time.perf_counter()
        return {
            **record_extra,
            "status": "ok",
            "views": {
                "pair": self.view_pair,
                "future_offset": self.config.future_offset if self.view_pair == "past_future" else None,
                "mask_placement": self._mask_placement(model),
            },
            "metrics": metrics,
            "layers": {str(layer): result for layer, result in per_layer.items()},
            "settings": self.settings(),
            "subset": {
                "fingerprint": self.subset.fingerprint(),
                "utterances": len(self.subset.utterances),
                "seconds": round(self.subset.total_seconds, 3),
                "frames": estimate.frames,
            },
            "seconds": {
                "forward": round(forward_done - started, 4),
                "gather": round(gathered - forward_done, 4),
                "estimators": round(finished - gathered - baseline_seconds, 4),
                "baselines": round(baseline_seconds, 4),
                "total": round(finished - started, 4),
            },
        }

    def _estimate(self, gathered: list, device: torch.device, num_layers: int) -> _Estimate:
        """Per layer: (centering,) k-means on Zb, probe on Za, the bound and its interval, baselines."""
        features, groups, positions = self._assemble(gathered, self.config.position_control)
        per_layer: dict[int, dict] = {}
        metrics: dict[str, float] = {}
        baseline_seconds = 0.0
        for layer, (za, zb) in features.items():
            za, zb, layer_groups = za.to(device), zb.to(device), groups.to(device)
            mi_za, mi_zb = za, zb
            if self.config.centering == "utterance":
                mi_za, mi_zb = estimators.center_by_group(za, layer_groups), estimators.center_by_group(zb, layer_groups)
            result = estimators.unsupervised_mi(
                mi_za, mi_zb, layer_groups,
                clusters=self.config.clusters, probe=self.config.probe, seed=self.config.estimator_seed,
                fit_fraction=self.config.fit_fraction, bootstrap=self.config.bootstrap,
                control=positions.to(device) if positions is not None else None,
            ).to_dict()
            result = _name_position_control(result)
            if self.config.baselines:
                baseline_started = time.perf_counter()
                result["rankme"] = float(estimators.rankme(zb))
                result["rankme_t"] = float(estimators.rankme_utterance(zb, layer_groups))
                baseline_seconds += time.perf_counter() - baseline_started
            per_layer[layer] = result
            for key in ("mi_bits", "h_c_bits", "h_c_plugin_bits", "ce_bits", "mi_normalized", "kmeans_inertia_eval", "rankme", "rankme_t",
                        "mi_given_position_bits", "mi_position_bits"):
                if isinstance(result.get(key), (int, float)):
                    metrics[f"{key}_l{layer}"] = float(result[key])
            if result.get("ci95_bits") is not None:
                low, high = result["ci95_bits"]
                metrics[f"mi_ci95_low_l{layer}"], metrics[f"mi_ci95_high_l{layer}"] = float(low), float(high)
            if result.get("ci95_given_position_bits") is not None:
                low, high = result["ci95_given_position_bits"]
                metrics[f"mi_given_position_ci95_low_l{layer}"] = float(low)
                metrics[f"mi_given_position_ci95_high_l{layer}"] = float(high)
        metrics["mi_bits"] = self._selection_value(per_layer, num_layers)
        metrics = {key: round(value, METRIC_DECIMALS) for key, value in metrics.items()}
        return _Estimate(per_layer, metrics, baseline_seconds, int(groups.numel()))

    def _agree_across_ranks(self, shared: Union[dict, EvaluationError]) -> dict:
        """All-gather every rank's metrics (or its estimator-stage error). Any error: every rank
        raises the same :class:`EvaluationError`. Every rank computed from the same gathered
        features, so the values must match; any difference (a non-deterministic kernel) is logged,
        and rank 0's metrics are used everywhere."""
        if self.world_size == 1:
            return {}
        everyone = self._gather_or_raise(shared)
        assert isinstance(shared, dict)
        rank_values = [float(m["mi_bits"]) for m in everyone]
        spread = max(rank_values) - min(rank_values)
        if spread > 1e-9:
            logger.warning("ranks disagree on mi_bits by %.3g bits (%s); using rank 0's value", spread, rank_values)
            shared.clear()
            shared.update(everyone[0])
        return {"distributed": {"world_size": self.world_size, "rank_mi_bits": rank_values}}

    def _selection_value(self, per_layer: dict[int, dict], num_layers: int) -> float:
        """The configured layer or mean over layers of mi_bits (of mi_given_position_bits with position_control)."""
        key = "mi_given_position_bits" if self.config.position_control else "mi_bits"
        selection = self.config.selection
        if selection == "last":
            return float(per_layer[max(per_layer)][key])
        if selection == "mean":
            return float(sum(r[key] for r in per_layer.values()) / len(per_layer))
        layer = resolve_layers([int(selection)], num_layers)[0]
        if layer not in per_layer:
            raise ValueError(f"selection layer {layer} is not among the scored layers {sorted(per_layer)}")
        return float(per_layer[layer][key])
