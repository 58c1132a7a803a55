"""The `lmms_eval.models` entry point (pyproject.toml). lmms-eval loads every plugin's entry point when it starts,
whatever model it runs, so this names the model without importing it (jobs/lmms_eval_model.py, loaded only for
`--model pave`)."""
from lmms_eval.models.registry_v2 import ModelManifest


def manifest() -> ModelManifest:
    return ModelManifest(model_id="pave", simple_class_path="jobs.lmms_eval_model.PaveModel")
