"""When a newly registered model becomes the champion: a pure policy, returned as a record.

The alias moves to the candidate only if there is no champion yet, or if the
candidate beats the champion on the same folds: a paired t-test over the folds'
macro PR-AUC with p below the level and a positive mean difference (NOTES 11:
the folds must be identical, which their digests prove). ``force`` moves it
anyway and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from ..evaluation.stats import paired_ttest


@dataclass(frozen=True)
class Evidence:
    """What a model was measured on: per-fold macro PR-AUC and the digest of its folds."""

    pr_auc_folds: tuple[float, ...]
    folds_digest: str
    version: Optional[str] = None
    model_digest: str = ""

    @property
    def mean(self) -> float:
        return sum(self.pr_auc_folds) / len(self.pr_auc_folds)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    forced: bool = False
    p_value: Optional[float] = None
    mean_diff: Optional[float] = None  # candidate - champion, macro PR-AUC
    candidate_pr_auc: Optional[float] = None
    champion_pr_auc: Optional[float] = None
    champion_version: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(candidate: Evidence, champion: Optional[Evidence], level: float = 0.05, force: bool = False) -> Decision:
    """Promote the candidate over the champion? See the module docstring for the rule."""
    if champion is None:
        return Decision(True, "no champion yet", forced=False, candidate_pr_auc=candidate.mean)
    base = dict(candidate_pr_auc=candidate.mean, champion_pr_auc=champion.mean, champion_version=champion.version)
    if candidate.model_digest and candidate.model_digest == champion.model_digest:
        return Decision(force, "the candidate is the champion's model (same weights digest)", forced=force, **base)
    if candidate.folds_digest != champion.folds_digest:
        return Decision(force, f"not comparable: evaluated on different folds ({candidate.folds_digest} vs "
                               f"{champion.folds_digest}); fine-tune the candidate with --folds set to the "
                               "champion's folds.json" + ("; promoted because --force" if force else ""),
                        forced=force, **base)
    t = paired_ttest(champion.pr_auc_folds, candidate.pr_auc_folds)
    better = t["mean_diff"] > 0 and t["p"] < level
    verdict = (f"macro PR-AUC {100 * candidate.mean:.2f} vs {100 * champion.mean:.2f} "
               f"({100 * t['mean_diff']:+.2f} points, paired t-test over {len(candidate.pr_auc_folds)} folds "
               f"p = {t['p']:.4f}, needs p < {level} and a gain)")
    if better:
        return Decision(True, "beats the champion: " + verdict, p_value=t["p"], mean_diff=t["mean_diff"], **base)
    return Decision(force, ("does not beat the champion: " + verdict) + ("; promoted because --force" if force else ""),
                    forced=force, p_value=t["p"], mean_diff=t["mean_diff"], **base)


def evidence_from_metrics(metrics: dict, version: Optional[str] = None) -> Evidence:
    """Evidence from a fine-tuning ``metrics.json`` record."""
    folds: Sequence[float] = metrics["summary"]["pr_auc"]["folds"]
    return Evidence(tuple(float(v) for v in folds), metrics["folds_digest"], version,
                    (metrics.get("model") or {}).get("digest", ""))
