"""Champion/challenger decisions against the real MLflow registry (sqlite)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from maskflow.promote import decide


@pytest.fixture
def registry(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient()
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    versions = []

    def add(accuracy: float, digest: str = "d1", **tags: str) -> str:
        run = client.create_run(exp)
        client.log_text(run.info.run_id, "model", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        if not versions:
            client.create_registered_model("m")
        v = client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_model_version_tag("m", v.version, "test_accuracy", str(accuracy))
        client.set_model_version_tag("m", v.version, "data_digest", digest)
        for key, value in tags.items():
            client.set_model_version_tag("m", v.version, key, value)
        versions.append(v.version)
        return str(v.version)

    yield client, add
    mlflow.set_tracking_uri(None)


def test_first_version_becomes_champion_and_rerun_is_idempotent(registry):
    client, add = registry
    v1 = add(0.90)
    assert decide(client, "m", v1, "test_accuracy")[0] == "champion"
    assert decide(client, "m", v1, "test_accuracy") == ("champion", "already champion")


def test_better_takes_champion_worse_becomes_challenger(registry):
    client, add = registry
    v1 = add(0.90)
    decide(client, "m", v1, "test_accuracy")
    v2 = add(0.85)
    assert decide(client, "m", v2, "test_accuracy")[0] == "challenger"
    assert str(client.get_model_version_by_alias("m", "champion").version) == v1
    v3 = add(0.95)
    assert decide(client, "m", v3, "test_accuracy")[0] == "champion"
    assert str(client.get_model_version_by_alias("m", "champion").version) == v3


def test_other_test_split_never_takes_champion(registry):
    client, add = registry
    v1 = add(0.90)
    decide(client, "m", v1, "test_accuracy")
    v2 = add(0.99, digest="other")
    alias, reason = decide(client, "m", v2, "test_accuracy")
    assert alias == "challenger" and "another test split" in reason


def test_champion_re_registered_with_a_newer_pyfunc_contract_stays_champion(registry):
    client, add = registry
    v1 = add(0.90, model_sha256="abc")  # registered before pyfunc_api tags existed
    decide(client, "m", v1, "test_accuracy")
    assert decide(client, "m", add(0.90, model_sha256="other", pyfunc_api="2"), "test_accuracy")[0] == "challenger"
    v3 = add(0.90, model_sha256="abc", pyfunc_api="2")
    alias, reason = decide(client, "m", v3, "test_accuracy")
    assert alias == "champion" and "newer pyfunc contract" in reason


def test_a_tie_is_decided_by_the_tiebreak_tag(registry):
    # The same cached classifier registered with another detector: test_accuracy ties.
    client, add = registry
    v1 = add(0.99, scenes_map50="0.0")
    decide(client, "m", v1, "test_accuracy", tiebreak="scenes_map50")
    alias, reason = decide(client, "m", add(0.99, scenes_map50="0.74"), "test_accuracy", tiebreak="scenes_map50")
    assert alias == "champion" and "ties" in reason
    v3 = add(0.99, scenes_map50="0.70")  # worse detector, same classifier
    assert decide(client, "m", v3, "test_accuracy", tiebreak="scenes_map50")[0] == "challenger"
    v4 = add(0.98, scenes_map50="0.95")  # a better detector never outweighs a worse primary metric
    assert decide(client, "m", v4, "test_accuracy", tiebreak="scenes_map50")[0] == "challenger"
    v5 = add(0.99, scenes_map50="0.99", scenes_images="20")  # scored on other scenes: not comparable
    assert decide(client, "m", v5, "test_accuracy", tiebreak="scenes_map50")[0] == "challenger"


def test_without_a_tiebreak_a_tie_keeps_the_champion(registry):
    client, add = registry
    v1 = add(0.99, scenes_map50="0.0")
    decide(client, "m", v1, "test_accuracy")
    assert decide(client, "m", add(0.99, scenes_map50="0.74"), "test_accuracy")[0] == "challenger"
    v3 = add(0.99)  # no tiebreak tag to compare: the champion stays
    assert decide(client, "m", v3, "test_accuracy", tiebreak="scenes_map50")[0] == "challenger"
    assert str(client.get_model_version_by_alias("m", "champion").version) == v1


def test_a_winner_that_detects_worse_stays_challenger(registry):
    # Measured: scene-only fine-tuning epochs raised test crop accuracy (0.9585 -> 0.9663)
    # and lowered test scenes_map50 (0.642 -> 0.610); the detect CLI would have got it.
    client, add = registry
    v1 = add(0.9585, scenes_map50="0.6415")
    decide(client, "m", v1, "test_accuracy", guard="scenes_map50")
    alias, reason = decide(client, "m", add(0.9663, scenes_map50="0.6103"), "test_accuracy", guard="scenes_map50")
    assert alias == "challenger" and "scenes_map50 0.6103 falls below" in reason
    v3 = add(0.9663, scenes_map50="0.6103")  # without the guard it would have won
    assert decide(client, "m", v3, "test_accuracy")[0] == "champion"
    v4 = add(0.97, scenes_map50="0.6103")  # equal on the guard: no worse, so it wins
    assert decide(client, "m", v4, "test_accuracy", guard="scenes_map50")[0] == "champion"
    v5 = add(0.98, scenes_map50="0.20", scenes_images="20")  # other scenes: the guard cannot compare, metric decides
    assert decide(client, "m", v5, "test_accuracy", guard="scenes_map50")[0] == "champion"
    v6 = add(0.99)  # no guard tag: the metric decides
    assert decide(client, "m", v6, "test_accuracy", guard="scenes_map50")[0] == "champion"


def test_the_champions_classifier_under_a_newer_pyfunc_contract_takes_champion(registry):
    # An upgrade re-registers the same classifier with new settings (an operating point):
    # another model_sha256, the same classifier_sha256; serving must run the new contract.
    client, add = registry
    v1 = add(0.90, pyfunc_api="3", model_sha256="a", classifier_sha256="k")
    decide(client, "m", v1, "test_accuracy")
    v2 = add(0.90, pyfunc_api="4", model_sha256="b", classifier_sha256="k")
    alias, reason = decide(client, "m", v2, "test_accuracy")
    assert alias == "champion" and "newer pyfunc contract" in reason
    v3 = add(0.90, pyfunc_api="5", model_sha256="c", classifier_sha256="other")  # another classifier: scored as usual
    assert decide(client, "m", v3, "test_accuracy")[0] == "challenger"
    # A champion registered before classifier_sha256 existed: the same classifier scores alike.
    scores = {"test_f1_macro": "0.8", "test_loss": "0.21", "test_ece": "0.03", "test_roc_auc": "0.97", "backbone": "b"}
    old = add(0.91, pyfunc_api="3", model_sha256="x", **scores)
    client.set_registered_model_alias("m", "champion", old)
    same = add(0.91, pyfunc_api="4", model_sha256="y", classifier_sha256="k2", **scores)
    assert decide(client, "m", same, "test_accuracy")[0] == "champion"
    client.set_registered_model_alias("m", "champion", old)
    other = add(0.91, pyfunc_api="4", model_sha256="z", classifier_sha256="k3", **{**scores, "test_loss": "0.22"})
    assert decide(client, "m", other, "test_accuracy")[0] == "challenger"
