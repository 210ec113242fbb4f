"""ray_cluster.yaml passes Ray's own launcher validation offline, and a typo does not."""

import copy

import pytest
import yaml


@pytest.fixture
def cluster(repo):
    return yaml.safe_load((repo / "ray_cluster.yaml").read_text())


def check(config):
    from ray.autoscaler._private.util import prepare_config, validate_config  # private: Ray is pinned

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_the_ray_launcher(cluster):
    check(cluster)
    assert cluster["provider"]["type"] == "local" and len(cluster["provider"]["worker_ips"]) >= 2


def test_a_typo_in_the_cluster_yaml_is_refused_naming_the_key(cluster):
    from jsonschema.exceptions import ValidationError

    bad = copy.deepcopy(cluster)
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(ValidationError, match="setup_comands"):
        check(bad)


def test_every_node_runs_with_token_auth_and_the_pinned_install(cluster):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token" in c for c in starts) == 2  # head and workers
    assert "~/.ray/auth_token" in cluster["file_mounts"]  # one token shared by every node
    assert any("make install" in c for c in cluster["setup_commands"])
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])  # job API not exposed
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert "NCCL_P2P_DISABLE=1" in worker and "NCCL_SOCKET_IFNAME" in worker


def test_nodes_carry_the_type_labels_the_placement_defaults_expect(cluster):
    """The head, and each worker by whether it has a GPU, label themselves as `placement` expects."""
    from activessf.config import PlacementConfig

    p = PlacementConfig()
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    assert f"--labels={p.label}=head" in head
    assert f"--labels={p.label}=$(nvidia-smi -L >/dev/null 2>&1 && echo {p.train} || echo {p.data})" in worker
    assert p.store == p.data  # the store actor goes to the CPU workers too

