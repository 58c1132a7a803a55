"""ray_cluster.yaml must pass Ray's own cluster-launcher validation (the same code path `ray up` uses)."""
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


def load_prepared():
    return prepare_config(yaml.safe_load(CONFIG.read_text()))


def test_cluster_yaml_passes_ray_validation():
    config = load_prepared()
    validate_config(config)
    node_types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert {"cpu_worker", "gpu_worker"} <= set(node_types)
    assert node_types["head"]["resources"] == {"CPU": 0}
    assert any("pip install" in c and "/home/ray/pave" in c for c in config["setup_commands"])


def test_validation_rejects_a_broken_config():
    # Proves the check above can fail: an unknown top-level key violates Ray's schema.
    config = load_prepared()
    config["max_wokers"] = 3
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(config)
