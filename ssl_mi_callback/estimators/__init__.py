"""Estimators: pure tensor math (torch + numpy), no framework imports.

Online k-means, probes, the unsupervised and supervised MI lower bounds with bootstrap intervals,
and label-free baselines. Inputs may be numpy arrays or torch tensors; computation runs on the
input's device. Bad input raises :class:`EstimatorInputError` (a ``ValueError``) with one line.
"""
from .baselines import davies_bouldin, kmeans_inertia, rankme, rankme_utterance
from .bootstrap import EvalStatistics, basic_interval, bound_interval
from .bounds import MIResult, SupervisedMIResult, UnsupervisedMIResult, supervised_mi, unsupervised_mi
from .information import entropy_bits
from .kmeans import OnlineKMeans, fit_sample_rows, kmeans_plusplus
from .position import position_features
from .probes import PROBES, LinearProbe, MLPProbe, make_probe
from .reduce import ReduceFn, no_reduce
from .splits import center_by_group, split_by_group
from .validation import EstimatorInputError

__all__ = [
    "EstimatorInputError",
    "EvalStatistics",
    "LinearProbe",
    "MIResult",
    "MLPProbe",
    "OnlineKMeans",
    "PROBES",
    "ReduceFn",
    "SupervisedMIResult",
    "UnsupervisedMIResult",
    "basic_interval",
    "bound_interval",
    "center_by_group",
    "davies_bouldin",
    "entropy_bits",
    "fit_sample_rows",
    "kmeans_inertia",
    "kmeans_plusplus",
    "make_probe",
    "no_reduce",
    "position_features",
    "rankme",
    "rankme_utterance",
    "split_by_group",
    "supervised_mi",
    "unsupervised_mi",
]
