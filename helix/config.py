"""Cluster YAML -> ClusterSpec. Every error is a SpecError whose path names the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from helix.planner.catalog import GPU_CATALOG, resolve_gpu, resolve_model
from helix.planner.spec import (
    ClusterSpec,
    GpuSpec,
    LinkSpec,
    NetworkSpec,
    NodeSpec,
    Profile,
    SpecError,
)

_TOP_KEYS = {"model", "gpus", "nodes", "network", "profiles", "coordinator"}


def load_cluster(path: str | Path) -> ClusterSpec:
    """Read and validate a cluster file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("", f"cannot read cluster file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            "", f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None
    return cluster_from_dict(data, base_dir=path.parent)


def cluster_from_dict(data: Any, base_dir: Path | None = None) -> ClusterSpec:
    if not isinstance(data, dict):
        raise SpecError("", "the cluster file must be a mapping with model, nodes, ...")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpecError(
            str(unknown[0]), f"unknown key; expected one of {', '.join(sorted(_TOP_KEYS))}"
        )
    if "model" not in data:
        raise SpecError("model", "missing: a built-in model name or a path to config.json")
    model_value = data["model"]
    if not isinstance(model_value, str):
        raise SpecError("model", "must be a string")
    model = resolve_model(model_value, base_dir)
    gpus = _gpus(data.get("gpus") or {})
    nodes = _nodes(data.get("nodes"), gpus)
    coordinator, coordinator_region, coordinator_address = _coordinator(
        data.get("coordinator"), nodes
    )
    names = {node.name for node in nodes} | {coordinator}
    regions = {node.region for node in nodes} | {coordinator_region}
    network = _network(data.get("network") or {}, names, regions)
    profiles = _profiles(data.get("profiles") or {}, gpus)
    return ClusterSpec(
        model=model,
        gpus=gpus,
        nodes=tuple(nodes),
        network=network,
        profiles=profiles,
        coordinator=coordinator,
        coordinator_region=coordinator_region,
        coordinator_address=coordinator_address,
        model_source=_model_source(model_value, base_dir),
    )


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _number(
    entry: dict[str, Any],
    key: str,
    path: str,
    *,
    positive: bool = True,
    default: float | None = None,
) -> float:
    if key not in entry:
        if default is not None:
            return default
        raise SpecError(f"{path}.{key}", "missing")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{path}.{key}", f"must be a number, got {value!r}")
    if positive and value <= 0:
        raise SpecError(f"{path}.{key}", f"must be > 0, got {value}")
    if value < 0:
        raise SpecError(f"{path}.{key}", f"must be >= 0, got {value}")
    return float(value)


def _check_keys(entry: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in sorted(entry, key=str):
        if key not in allowed:
            raise SpecError(
                f"{path}.{key}", f"unknown key; expected one of {', '.join(sorted(allowed))}"
            )


def _gpus(section: Any) -> dict[str, GpuSpec]:
    gpus = dict(GPU_CATALOG)
    fields = {"memory_gb", "bf16_tflops", "hbm_gbps", "base"}
    for name, entry in _mapping(section, "gpus").items():
        path = f"gpus.{name}"
        entry = _mapping(entry or {}, path)
        _check_keys(entry, fields, path)
        base: GpuSpec | None
        if "base" in entry:
            base = resolve_gpu(str(entry["base"]))
            if base is None:
                raise SpecError(f"{path}.base", f"unknown GPU kind {entry['base']!r}")
        else:
            base = resolve_gpu(str(name))
        values = {}
        for key in ("memory_gb", "bf16_tflops", "hbm_gbps"):
            fallback = getattr(base, key) if base else None
            values[key] = _number(entry, key, path, default=fallback)
        gpus[str(name)] = GpuSpec(str(name), **values)
    return gpus


def _nodes(section: Any, gpus: dict[str, GpuSpec]) -> list[NodeSpec]:
    if not isinstance(section, list) or not section:
        raise SpecError("nodes", "must be a non-empty list of {name, gpu, ...}")
    fields = {"name", "gpu", "region", "nic_gbps", "address", "count"}
    nodes: list[NodeSpec] = []
    for i, entry in enumerate(section):
        path = f"nodes[{i}]"
        entry = _mapping(entry, path)
        _check_keys(entry, fields, path)
        for key in ("name", "gpu"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise SpecError(f"{path}.{key}", "missing or not a string")
        gpu = entry["gpu"]
        if gpu not in gpus:
            spec = resolve_gpu(gpu)
            if spec is None:
                raise SpecError(
                    f"{path}.gpu",
                    f"unknown GPU kind {gpu!r}; known: "
                    f"{', '.join(sorted(gpus))} (or define it under gpus:)",
                )
            gpus[gpu] = GpuSpec(gpu, spec.memory_gb, spec.bf16_tflops, spec.hbm_gbps)
        nic = _number(entry, "nic_gbps", path) if "nic_gbps" in entry else None
        region = str(entry.get("region", "default"))
        address = entry.get("address")
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SpecError(f"{path}.count", f"must be a positive integer, got {count!r}")
        if count > 1 and address is not None:
            raise SpecError(f"{path}.address", "cannot be shared by a group (count > 1)")
        for j in range(count):
            name = entry["name"] if count == 1 else f"{entry['name']}-{j}"
            nodes.append(
                NodeSpec(name, gpu, region, nic, None if address is None else str(address))
            )
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise SpecError("nodes", f"duplicate node name {node.name!r}")
        seen[node.name] = i
    return nodes


def _coordinator(value: Any, nodes: list[NodeSpec]) -> tuple[str, str, str | None]:
    default_region = nodes[0].region
    if value is None:
        return "coordinator", default_region, None
    if isinstance(value, str):
        return value, default_region, None
    entry = _mapping(value, "coordinator")
    _check_keys(entry, {"name", "region", "address"}, "coordinator")
    address = entry.get("address")
    return (
        str(entry.get("name", "coordinator")),
        str(entry.get("region", default_region)),
        None if address is None else str(address),
    )


def _model_source(value: str, base_dir: Path | None) -> str:
    """Built-in names stay names; paths become absolute so a node started elsewhere finds them."""
    from helix.planner.catalog import MODEL_CATALOG

    if value.lower() in MODEL_CATALOG:
        return value.lower()
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    return str(path.resolve())


def _link(entry: Any, path: str) -> LinkSpec:
    entry = _mapping(entry, path)
    return LinkSpec(
        gbps=_number(entry, "gbps", path),
        latency_ms=_number(entry, "latency_ms", path, positive=False, default=0.0),
    )


def _pairs(
    section: Any, path: str, known: set[str], what: str
) -> tuple[tuple[str, str, LinkSpec], ...]:
    if not isinstance(section, list):
        raise SpecError(path, "must be a list of {between: [a, b], gbps, latency_ms}")
    out = []
    for i, entry in enumerate(section):
        item = f"{path}[{i}]"
        entry = _mapping(entry, item)
        _check_keys(entry, {"between", "gbps", "latency_ms"}, item)
        between = entry.get("between")
        if not isinstance(between, list) or len(between) != 2:
            raise SpecError(f"{item}.between", f"must name two {what}s")
        for end in between:
            if str(end) not in known:
                raise SpecError(f"{item}.between", f"unknown {what} {end!r}")
        if between[0] == between[1]:
            raise SpecError(f"{item}.between", f"a link needs two different {what}s")
        out.append((str(between[0]), str(between[1]), _link(entry, item)))
    return tuple(out)


def _network(section: Any, names: set[str], regions: set[str]) -> NetworkSpec:
    section = _mapping(section, "network")
    _check_keys(
        section, {"default", "intra_region", "inter_region", "region_links", "links"}, "network"
    )
    single = {
        key: _link(section[key], f"network.{key}")
        for key in ("default", "intra_region", "inter_region")
        if key in section
    }
    return NetworkSpec(
        default=single.get("default"),
        intra_region=single.get("intra_region"),
        inter_region=single.get("inter_region"),
        region_links=_pairs(
            section.get("region_links", []), "network.region_links", regions, "region"
        ),
        links=_pairs(section.get("links", []), "network.links", names, "node"),
    )


def _profiles(section: Any, gpus: dict[str, GpuSpec]) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for name, entry in _mapping(section, "profiles").items():
        path = f"profiles.{name}"
        if name not in gpus:
            raise SpecError(path, f"unknown GPU kind {name!r}")
        entry = _mapping(entry, path)
        _check_keys(
            entry,
            {
                "max_layers",
                "tokens_per_s",
                "decode_layer_ms",
                "schema_version",
                "model",
                "dtype",
                "prompt_layer_ms_by_tokens",
                "decode_layer_ms_by_batch",
                "head_ms_by_batch",
                "prompt_pass_ms_by_tokens",
                "decode_pass_ms_by_batch",
                "threads",
                "co_runners",
                "statistic",
            },
            path,
        )
        threads = entry.get("threads")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise SpecError(f"{path}.threads", f"must be a positive integer, got {threads!r}")
        co_runners = entry.get("co_runners", 0)
        if isinstance(co_runners, bool) or not isinstance(co_runners, int) or co_runners < 0:
            raise SpecError(
                f"{path}.co_runners", f"must be a non-negative integer, got {co_runners!r}"
            )
        from helix.planner.sim_compute import parse_layer_tables

        tables = parse_layer_tables(entry, path)
        values = entry.get("tokens_per_s")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}.tokens_per_s", "must be a non-empty list [T(1), ..., T(max)]")
        tokens = tuple(
            _number({"v": v}, "v", f"{path}.tokens_per_s[{i}]") for i, v in enumerate(values)
        )
        max_layers = entry.get("max_layers", len(tokens))
        if isinstance(max_layers, bool) or not isinstance(max_layers, int):
            raise SpecError(f"{path}.max_layers", f"must be an integer, got {max_layers!r}")
        decode = entry.get("decode_layer_ms")
        try:
            profiles[str(name)] = Profile(
                max_layers,
                tokens,
                None if decode is None else float(decode),
                None if tables is None else tables.prompt_layer_ms_by_tokens,
                None if tables is None else tables.decode_layer_ms_by_batch,
                None if tables is None else tables.head_ms_by_batch or None,
                None if tables is None else tables.prompt_pass_ms_by_tokens or None,
                None if tables is None else tables.decode_pass_ms_by_batch or None,
            )
        except SpecError as exc:
            raise SpecError(f"{path}.{exc.path}", exc.message) from None
    return profiles


def cluster_to_dict(cluster: ClusterSpec) -> dict[str, Any]:
    """The YAML form of a cluster (round-trips through cluster_from_dict)."""

    def link(spec: LinkSpec) -> dict[str, float]:
        return {"gbps": spec.gbps, "latency_ms": spec.latency_ms}

    net = cluster.network
    network: dict[str, Any] = {
        key: link(getattr(net, key))
        for key in ("default", "intra_region", "inter_region")
        if getattr(net, key) is not None
    }
    if net.region_links:
        network["region_links"] = [{"between": [a, b], **link(s)} for a, b, s in net.region_links]
    if net.links:
        network["links"] = [{"between": [a, b], **link(s)} for a, b, s in net.links]
    used = {node.gpu for node in cluster.nodes} | set(cluster.profiles)
    nodes = []
    for node in cluster.nodes:
        entry: dict[str, Any] = {"name": node.name, "gpu": node.gpu, "region": node.region}
        if node.nic_gbps is not None:
            entry["nic_gbps"] = node.nic_gbps
        if node.address is not None:
            entry["address"] = node.address
        nodes.append(entry)
    return {
        "model": cluster.model_source or cluster.model.name,
        "gpus": {
            name: {"memory_gb": g.memory_gb, "bf16_tflops": g.bf16_tflops, "hbm_gbps": g.hbm_gbps}
            for name, g in sorted(cluster.gpus.items())
            if name in used
        },
        "nodes": nodes,
        "network": network,
        "coordinator": {
            "name": cluster.coordinator,
            "region": cluster.coordinator_region,
            **({"address": cluster.coordinator_address} if cluster.coordinator_address else {}),
        },
        "profiles": {name: _profile_dict(p) for name, p in sorted(cluster.profiles.items())},
    }


def _profile_dict(profile: Profile) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_layers": profile.max_layers,
        "tokens_per_s": list(profile.tokens_per_s),
    }
    if profile.decode_layer_ms is not None:
        out["decode_layer_ms"] = profile.decode_layer_ms
    from helix.planner.sim_compute import OPTIONAL_KEYS, TABLE_KEYS

    for key in (*TABLE_KEYS, *OPTIONAL_KEYS):
        table = getattr(profile, key)
        if table is not None:
            out[key] = {int(n): float(ms) for n, ms in table}
    return out
