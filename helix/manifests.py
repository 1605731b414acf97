"""Launch manifests from a plan for an existing orchestrator (Kubernetes or Ray), so that nobody
runs a home-made cluster manager. Each planned node becomes one `helix node` process pinned to a
GPU of its kind; the coordinator runs `helix serve --cluster ... --plan ...`.

    helix manifests --cluster CLUSTER.yaml --plan PLAN.yaml --format k8s -o helix.yaml
    kubectl apply -f helix.yaml
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

NODE_PORT = 7001
COORDINATOR_PORT = 7000
HTTP_PORT = 8000


def _dns(name: str) -> str:
    return "helix-" + "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def cluster_for_services(cluster: Any, plan: Any) -> Any:
    """The cluster with every planned node and the coordinator addressed by its Service name."""
    nodes = tuple(replace(n, address=f"tcp://{_dns(n.name)}:{NODE_PORT}") if n.name in plan.nodes
                  else n for n in cluster.nodes)
    return replace(cluster, nodes=nodes,
                   coordinator_address=f"tcp://0.0.0.0:{COORDINATOR_PORT}")


def kubernetes(cluster: Any, plan: Any, image: str) -> list[dict[str, Any]]:
    """A ConfigMap with both files, then a Deployment + Service per node and for the coordinator."""
    import yaml

    from helix.config import cluster_to_dict

    served = cluster_for_services(cluster, plan)
    node_view = cluster_to_dict(served)
    node_view["coordinator"]["address"] = f"tcp://helix-coordinator:{COORDINATOR_PORT}"
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "helix-config"},
        "data": {"cluster.yaml": yaml.safe_dump(node_view, sort_keys=False),
                 "coordinator.yaml": yaml.safe_dump(cluster_to_dict(served), sort_keys=False),
                 "plan.yaml": yaml.safe_dump(plan.to_dict(), sort_keys=False)}}]
    gpu_of = {n.name: n.gpu for n in cluster.nodes}
    for name in sorted(plan.nodes):
        command = ["helix", "node", "--cluster", "/etc/helix/cluster.yaml", "--plan",
                   "/etc/helix/plan.yaml", "--name", name]
        docs += _deployment(_dns(name), image, command, NODE_PORT,
                            {"nvidia.com/gpu": 1}, {"helix.io/gpu": gpu_of[name]})
    command = ["helix", "serve", "--cluster", "/etc/helix/coordinator.yaml", "--plan",
               "/etc/helix/plan.yaml", "--host", "0.0.0.0", "--port", str(HTTP_PORT)]
    docs += _deployment("helix-coordinator", image, command, COORDINATOR_PORT, {}, {},
                        extra_port=HTTP_PORT)
    return docs


def _deployment(name: str, image: str, command: list[str], port: int, limits: dict[str, int],
                selector: dict[str, str], extra_port: int | None = None) -> list[dict[str, Any]]:
    ports = [port] + ([extra_port] if extra_port else [])
    container: dict[str, Any] = {
        "name": name, "image": image, "command": command,
        "ports": [{"containerPort": p} for p in ports],
        "volumeMounts": [{"name": "config", "mountPath": "/etc/helix"}]}
    if limits:
        container["resources"] = {"limits": limits}
    pod: dict[str, Any] = {"containers": [container],
                           "volumes": [{"name": "config", "configMap": {"name": "helix-config"}}]}
    if selector:
        pod["nodeSelector"] = selector
    labels = {"app": name}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels, "ports": [{"name": f"p{p}", "port": p} for p in ports]}},
    ]


def ray_script(cluster: Any, plan: Any) -> str:
    """A Ray driver: one task per node on a GPU of its kind (accelerator_type resource)."""
    lines = [
        '"""Start a helix-serve cluster on Ray: `python helix_ray.py` on the head node.',
        "Node addresses in cluster.yaml must be reachable from each Ray worker.",
        '"""',
        "import subprocess",
        "",
        "import ray",
        "",
        "ray.init()",
        "",
        "",
        "@ray.remote(num_gpus=1)",
        "def node(name: str) -> int:",
        '    cmd = ["helix", "node", "--cluster", "cluster.yaml", "--plan", "plan.yaml",',
        '           "--name", name]',
        "    return subprocess.call(cmd)",
        "",
        "",
        "handles = [",
    ]
    gpu_of = {n.name: n.gpu for n in cluster.nodes}
    for name in sorted(plan.nodes):
        lines.append(f"    node.options(resources={{'accelerator_type:{gpu_of[name]}': 0.001}})"
                     f".remote({name!r}),")
    lines += ["]",
              'subprocess.call(["helix", "serve", "--cluster", "cluster.yaml", "--plan", '
              '"plan.yaml", "--host", "0.0.0.0"])',
              "ray.get(handles)", ""]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("manifests", help="Kubernetes or Ray launch files for a planned cluster")
    p.add_argument("--cluster", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--format", choices=["k8s", "ray"], default="k8s")
    p.add_argument("--image", default="helix-serve:latest", help="container image (k8s)")
    p.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    import yaml

    from helix.config import load_cluster
    from helix.report import load_plan

    cluster, plan = load_cluster(args.cluster), load_plan(args.plan)
    unknown = sorted(set(plan.nodes) - {n.name for n in cluster.nodes})
    if unknown:
        raise ValueError(f"--plan: nodes {unknown} are not in {args.cluster}")
    if args.format == "k8s":
        text = yaml.safe_dump_all(kubernetes(cluster, plan, args.image), sort_keys=False)
    else:
        text = ray_script(cluster, plan)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0
