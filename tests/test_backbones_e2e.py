"""Every backbone config runs the whole pipeline with random weights on a CI-sized subset
(small input size to fit CI time); real weights are exercised by test_pipeline."""

from __future__ import annotations

import pytest

from .conftest import copy_real_faces, needs_shared
from .test_backbones import MODEL_CONFIGS
from .test_pipeline import _client, run_pipeline

SIZES = {"xception": 96, "inceptionv3": 96}  # minimum input sizes differ per backbone


@pytest.fixture(scope="module")
def shared_run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    copy_real_faces(root / "data", per_class=10)
    return root


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_backbone_end_to_end_random_weights(model, shared_run_dir):
    tmp = shared_run_dir
    run_pipeline(
        tmp, "debug=tiny", f"model={model}", "model.weights=null", f"model.input_size={SIZES.get(model, 64)}",
        "data=mask-faces-4k", f"data.root={tmp / 'data'}", "data.limit_per_class=null", "data.workers=1", "evaluate.extra=[]",
        "export.formats=[keras]", "tune.max_trials=1", f"run_name=e2e-{model}",
    )
    client = _client(tmp)
    exp = client.get_experiment_by_name("maskflow")
    (run,) = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = 'e2e-{model}'")
    assert run.data.params["weights_origin"] == "random"
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    assert run.data.metrics["params_total"] > 0 and run.data.metrics["export_keras_test_accuracy"] >= 0.0
