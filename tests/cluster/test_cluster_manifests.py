"""Launch manifests for Kubernetes and Ray from a plan."""

from __future__ import annotations

import yaml

from helix.cli import main

PAPER = "clusters/helix-single24.yaml"


def test_kubernetes_and_ray_manifests(tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"
    assert main(["plan", PAPER, "--solver", "swarm", "-o", str(plan)]) == 0
    capsys.readouterr()
    out = tmp_path / "helix.yaml"
    assert main(["manifests", "--cluster", PAPER, "--plan", str(plan), "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    planned = yaml.safe_load(plan.read_text())["nodes"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == len(planned) + 1  # one per node, plus the coordinator
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    node_cluster = yaml.safe_load(config["cluster.yaml"])
    assert node_cluster["coordinator"]["address"] == "tcp://helix-coordinator:7000"
    addressed = {n["name"]: n.get("address") for n in node_cluster["nodes"]}
    assert all(addressed[name].startswith("tcp://helix-") for name in planned)
    node = next(d for d in deployments if d["metadata"]["name"] == "helix-a100-6")
    container = node["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["helix", "node"] and "a100-6" in container["command"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert node["spec"]["template"]["spec"]["nodeSelector"] == {"helix.io/gpu": "A100"}
    assert main(["manifests", "--cluster", PAPER, "--plan", str(plan), "--format", "ray"]) == 0
    script = capsys.readouterr().out
    compile(script, "helix_ray.py", "exec")
    assert script.count(").remote(") == len(planned)
