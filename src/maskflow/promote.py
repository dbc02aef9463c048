"""Stage ``promote``: move the ``champion`` alias only to a model that beats it.

The new version becomes ``champion`` when there is none, or when it beats the current
champion on ``export.promote_metric`` measured on the same test split (same data
digest). On a tie (the same cached classifier registered with a retrained detector
scores the same ``test_accuracy``) ``export.promote_tiebreak`` decides, when both
versions carry it. A version that wins so but falls below the champion on
``export.promote_guard`` (``scenes_map50``: the detector users run) stays ``challenger``:
a better crop classifier must not quietly make the detect CLI and serving worse.
Otherwise it gets ``challenger``. Re-running changes nothing
(idempotent), and every decision is logged to MLflow.

Also a command: ``python -m maskflow.promote --name maskflow --version 7``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from omegaconf import DictConfig

from maskflow.config import PROJECT_ROOT
from maskflow.contracts import Exported, StageContext

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger(__name__)


def decide(client, name: str, version: str, metric: str, mode: str = "max", tiebreak: str | None = None,
           guard: str | None = None) -> tuple[str, str]:
    """Set ``champion`` or ``challenger`` on ``name``/``version``; return (alias, reason).
    ``tiebreak``: a tag (higher is better) that decides when ``metric`` ties. ``guard``: a
    tag (higher is better) the new version must not fall below the champion's on, when
    both carry it (and, for ``scenes_*`` tags, were scored on the same scenes)."""
    candidate = client.get_model_version(name, version)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except Exception:  # noqa: BLE001 - MLflow raises when the alias does not exist
        champion = None
    if champion is not None and str(champion.version) == str(version):
        return "champion", "already champion"
    new_score = candidate.tags.get(metric)
    if new_score is None:
        raise ValueError(f"version {version} of {name} has no tag {metric!r} to compare on")
    if champion is None:
        alias, reason = "champion", "no champion yet"
    elif _same_model_newer_contract(champion.tags, candidate.tags):
        # The champion's own trained model, re-registered with a newer pyfunc contract
        # (serving.PYFUNC_API): the same scores, a newer interface.
        alias, reason = "champion", f"same model as champion v{champion.version}, newer pyfunc contract"
    else:
        old_score = champion.tags.get(metric)
        same_split = champion.tags.get("data_digest") == candidate.tags.get("data_digest")
        better = old_score is not None and (float(new_score) > float(old_score) if mode == "max" else float(new_score) < float(old_score))
        tied = old_score is not None and float(new_score) == float(old_score)
        new_tb, old_tb = _comparable(tiebreak, candidate.tags, champion.tags)
        if not same_split:
            alias, reason = "challenger", f"champion v{champion.version} was scored on another test split"
        elif better:
            alias, reason = "champion", f"{metric} {float(new_score):.4f} beats champion v{champion.version} ({float(old_score):.4f})"
        elif tied and new_tb is not None and old_tb is not None and float(new_tb) > float(old_tb):
            alias, reason = "champion", (f"{metric} ties champion v{champion.version}; {tiebreak} {float(new_tb):.4f} "
                                         f"beats its {float(old_tb):.4f}")
        else:
            alias, reason = "challenger", f"{metric} {float(new_score):.4f} does not beat champion v{champion.version} ({old_score})"
        new_g, old_g = _comparable(guard, candidate.tags, champion.tags)
        if alias == "champion" and new_g is not None and old_g is not None and float(new_g) < float(old_g):
            alias, reason = "challenger", (f"{reason}, but {guard} {float(new_g):.4f} falls below the champion's "
                                           f"{float(old_g):.4f}")
    client.set_registered_model_alias(name, alias, version)
    log.info("promote: %s v%s -> %s (%s)", name, version, alias, reason)
    return alias, reason


def _comparable(tag: str | None, candidate: dict, champion: dict) -> tuple[str | None, str | None]:
    """(candidate's, champion's) value of ``tag``; both None when it is unset, or a
    ``scenes_*`` tag scored on other scenes (evaluate.scenes.data/split/limit)."""
    if not tag or (tag.startswith("scenes_") and
                   any(champion.get(k) != candidate.get(k) for k in ("scenes_images", "scenes_faces"))):
        return None, None
    return candidate.get(tag), champion.get(tag)


def _same_model_newer_contract(champion: dict, candidate: dict) -> bool:
    """The champion's trained model under a newer pyfunc contract: the same files and
    settings, or the same classifier with the settings a newer maskflow stores (an
    operating point, say)."""
    same = any(champion.get(tag) and champion.get(tag) == candidate.get(tag) for tag in ("model_sha256", "classifier_sha256"))
    if not same and not champion.get("classifier_sha256"):
        # Versions registered before 2026-12-04 carry no classifier_sha256: the same
        # classifier scores every test_* tag (accuracy, loss, ECE, per class: dozens, to 6
        # digits) alike on the same split; a few equal numbers are not enough to say so.
        scores = sorted(k for k in champion if k.startswith("test_"))
        same = len(scores) >= 5 and all(champion.get(k) == candidate.get(k) for k in scores + ["data_digest", "backbone"])
    return same and int(candidate.get("pyfunc_api", 1)) > int(champion.get("pyfunc_api", 1))


def run(cfg: DictConfig, ctx: StageContext) -> Exported:
    import mlflow
    from mlflow.tracking import MlflowClient

    exported: Exported = ctx.need("export")
    if not exported.version:
        raise RuntimeError("promote needs a registered model version (run export with MLflow tracking)")
    tiebreak, guard = cfg.export.get("promote_tiebreak"), cfg.export.get("promote_guard")
    alias, reason = decide(MlflowClient(), exported.registered_model, exported.version,
                           str(cfg.export.promote_metric), str(cfg.export.promote_mode), str(tiebreak) if tiebreak else None,
                           str(guard) if guard else None)
    if mlflow.active_run() is not None:
        mlflow.set_tags({"promote_alias": alias, "promote_reason": reason})
    return replace(exported, alias=alias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="maskflow", help="registered model name")
    parser.add_argument("--version", required=True, help="model version to consider")
    parser.add_argument("--metric", default="test_accuracy", help="tag compared against the champion")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--tiebreak", default="scenes_map50", help="tag (higher is better) deciding a tie; '' for none")
    parser.add_argument("--guard", default="scenes_map50", help="tag (higher is better) it must not fall below the champion on; '' for none")
    parser.add_argument("--tracking-uri", default=None, help="default: the project's sqlite store")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri or f"sqlite:///{PROJECT_ROOT}/mlflow.db")
    alias, reason = decide(MlflowClient(), args.name, args.version, args.metric, args.mode, args.tiebreak or None, args.guard or None)
    print(f"{args.name} v{args.version}: {alias} ({reason})")


if __name__ == "__main__":
    main()
