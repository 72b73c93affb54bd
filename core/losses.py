"""Training objectives: cross-entropy, metric losses from pytorch-metric-learning (with a miner), or both; the
embedding head they train, and retrieval metrics (recall@k) on what a model embeds.

`loss.name: cross_entropy` is the classifier alone. A metric loss (`triplet`, `contrastive`, `arcface`, ...)
trains the embedding head (`model.embedding_dim`: backbone features -> a D-dim embedding -> the classifier), with
`loss.ce_weight` x cross-entropy on that classifier added when > 0. The losses, miners and distances are
pytorch-metric-learning's (imported only when a metric loss is used); a loss with its own weights (ArcFace's class
centres) lives inside the model's head, so the optimizer, checkpoints and exports carry it like any other layer.

The embedding reaches the loss through a `FeatureTap`: a forward hook on the head that keeps its last embedding
(or, for a plain classifier, the features it classifies), so the model's forward still returns logits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import FtlError


@dataclass(frozen=True)
class MetricLossInfo:
    name: str  # what loss.name says
    cls: str  # pytorch_metric_learning.losses class
    tuples: bool  # True: needs positive pairs / triplets inside a batch; False: class proxies (labels suffice)
    margin_arg: str | None  # the constructor argument loss.margin sets
    description: str


METRIC_LOSSES: dict[str, MetricLossInfo] = {
    i.name: i
    for i in (
        MetricLossInfo("triplet", "TripletMarginLoss", True, "margin", "anchor-positive closer than anchor-negative"),
        MetricLossInfo("contrastive", "ContrastiveLoss", True, "neg_margin", "pulls pairs together, pushes others apart"),
        MetricLossInfo("multi_similarity", "MultiSimilarityLoss", True, "base", "weights pairs by relative similarity"),
        MetricLossInfo("circle", "CircleLoss", True, "m", "pair similarities re-weighted towards their optimum"),
        MetricLossInfo("supcon", "SupConLoss", True, None, "supervised contrastive (temperature softmax over pairs)"),
        MetricLossInfo("ntxent", "NTXentLoss", True, None, "normalised temperature cross-entropy over pairs"),
        MetricLossInfo("arcface", "ArcFaceLoss", False, "margin", "additive angular margin to learned class centres"),
        MetricLossInfo("cosface", "CosFaceLoss", False, "margin", "additive cosine margin to learned class centres"),
        MetricLossInfo("proxy_anchor", "ProxyAnchorLoss", False, "margin", "pairs of samples and class proxies"),
    )
}
LOSSES = ("cross_entropy", *METRIC_LOSSES)
MINERS: dict[str, tuple[str, dict]] = {  # loss.miner -> (pytorch_metric_learning.miners class, kwargs)
    "none": ("", {}),
    "batch_hard": ("BatchHardMiner", {}),
    "semihard": ("TripletMarginMiner", {"type_of_triplets": "semihard"}),
    "hard": ("TripletMarginMiner", {"type_of_triplets": "hard"}),
    "multi_similarity": ("MultiSimilarityMiner", {}),
    "pair_margin": ("PairMarginMiner", {}),
}


class EmbeddingHead(nn.Module):
    """features -> (dropout) -> Linear to the embedding -> the classifier (Linear) on the embedding. Returns
    logits; the embedding is what a FeatureTap on `embed` sees. `metric_loss` holds a metric loss's own weights."""

    def __init__(self, in_features: int, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.embed = nn.Linear(in_features, dim)
        self.fc = nn.Linear(dim, num_classes)
        self.metric_loss: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(self.drop(x)))


class FeatureTap:
    """Keeps the last embedding a model computed: the output of an EmbeddingHead's `embed`, or the input of a plain
    classifier head (the pooled features it classifies). A forward hook, so any wrapper (DDP, compile) feeds it."""

    def __init__(self, head: nn.Module):
        self.output: torch.Tensor | None = None
        # the hook ignores copies of the module (an EMA's deepcopy carries the hook along)
        if isinstance(head, EmbeddingHead):
            self.owner = head.embed
            self.handle = head.embed.register_forward_hook(lambda m, _i, out: self._keep(m, out))
        else:
            self.owner = head
            self.handle = head.register_forward_pre_hook(lambda m, args: self._keep(m, args[0]))

    def _keep(self, module: nn.Module, value: torch.Tensor) -> None:
        if module is self.owner:
            self.output = value

    def take(self) -> torch.Tensor:
        out, self.output = self.output, None
        if out is None:
            raise RuntimeError("FeatureTap: the model's head did not run")
        return out.flatten(1)

    def remove(self) -> None:
        self.handle.remove()


def head_module(model: nn.Module) -> nn.Module:
    """The model's classifier head module (timm's pretrained_cfg['classifier'])."""
    from core import zoo

    return model.get_submodule(zoo.classifier_prefixes(model)[0].rstrip("."))


def create_metric_loss(name: str, num_classes: int, embedding_dim: int, margin: float | None) -> nn.Module:
    """A pytorch-metric-learning loss by name (unknown names list the valid ones)."""
    if name not in METRIC_LOSSES:
        raise FtlError(f"loss.name={name!r} is not one of: {', '.join(LOSSES)}")
    from pytorch_metric_learning import losses

    info = METRIC_LOSSES[name]
    kwargs: dict = {} if info.tuples else {"num_classes": num_classes, "embedding_size": embedding_dim}
    if margin is not None:
        if info.margin_arg is None:
            raise FtlError(f"loss.margin: loss.name={name} has no margin; leave loss.margin unset")
        kwargs[info.margin_arg] = margin
    return getattr(losses, info.cls)(**kwargs)


def create_miner(name: str):
    if name not in MINERS:
        raise FtlError(f"loss.miner={name!r} is not one of: {', '.join(MINERS)}")
    cls, kwargs = MINERS[name]
    if not cls:
        return None
    from pytorch_metric_learning import miners

    return getattr(miners, cls)(**kwargs)


class Objective:
    """The training loss: cross-entropy on the logits (hard or MixUp/CutMix soft targets, label smoothing), a metric
    loss on the tapped embedding (with its miner), or ce_weight x the first + the second."""

    def __init__(self, label_smoothing: float, metric: nn.Module | None = None, miner=None, tap: FeatureTap | None = None,
                 ce_weight: float = 1.0):  # fmt: skip
        from timm.loss import SoftTargetCrossEntropy

        self.hard, self.soft = nn.CrossEntropyLoss(label_smoothing=label_smoothing), SoftTargetCrossEntropy()
        self.metric, self.miner, self.tap = metric, miner, tap
        self.ce_weight = ce_weight if metric is not None else 1.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = torch.zeros((), device=logits.device)
        if self.ce_weight:
            loss = (self.soft if targets.ndim == 2 else self.hard)(logits, targets) * self.ce_weight
        if self.metric is not None:
            embeddings = self.tap.take().float()
            pairs = self.miner(embeddings, targets) if self.miner is not None else None
            loss = loss + self.metric(embeddings, targets, pairs)
        return loss


def build_objective(model: nn.Module, loss_name: str, num_classes: int, label_smoothing: float, ce_weight: float = 0.0,
                    miner: str = "none", margin: float | None = None) -> tuple[Objective, FeatureTap | None]:  # fmt: skip
    """The run's objective. A metric loss needs the model's EmbeddingHead (model.embedding_dim): its loss module
    (and any weights it has) is put in the head, and a FeatureTap feeds it the embedding. Returns (objective, tap)."""
    if loss_name == "cross_entropy":
        return Objective(label_smoothing), None
    head = head_module(model)
    if not isinstance(head, EmbeddingHead):
        raise FtlError(f"loss.name={loss_name} trains an embedding: set model.embedding_dim (e.g. 128)")
    if head.metric_loss is None:
        head.metric_loss = create_metric_loss(loss_name, num_classes, head.embed.out_features, margin)
    tap = FeatureTap(head)
    return Objective(label_smoothing, head.metric_loss, create_miner(miner), tap, ce_weight), tap


def needs_tuples(loss_name: str) -> bool:
    """True when the loss compares samples of a batch with each other (pairs / triplets)."""
    return loss_name in METRIC_LOSSES and METRIC_LOSSES[loss_name].tuples


@torch.no_grad()
def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int], chunk: int = 1024) -> dict[int, float]:
    """Retrieval recall@k, leave-one-out: each sample queries all others by cosine similarity; a hit when one of
    its k nearest has its label (the metric-learning papers' Recall@K). Chunked: memory O(chunk x n)."""
    e = F.normalize(embeddings.float(), dim=1)
    n, kmax = len(e), min(max(ks), len(e) - 1)
    hits = {k: 0 for k in ks}
    if kmax < 1:
        return {k: 0.0 for k in ks}
    for start in range(0, n, chunk):
        sim = e[start : start + chunk] @ e.T
        rows = torch.arange(len(sim), device=sim.device)
        sim[rows, rows + start] = -float("inf")  # not itself
        nearest = labels[sim.topk(kmax, dim=1).indices] == labels[start : start + chunk, None]
        for k in ks:
            hits[k] += int(nearest[:, : min(k, kmax)].any(1).sum())
    return {k: hits[k] / n for k in ks}

