"""Human-facing views of a Plan: a rich table, a PNG drawing of the placement, YAML I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helix.planner.plan import Plan


def plan_table(plan: Plan) -> Any:
    """A rich Table: node, GPU, layers, capacity, flow through it."""
    from rich.table import Table

    table = Table(title=f"{plan.model}: {len(plan.nodes)} nodes used, {plan.num_layers} layers")
    for column in ("node", "GPU", "layers", "capacity tok/s", "flow tok/s", "use"):
        table.add_column(column, justify="right" if "tok" in column or column == "use" else "left")
    for name, node in sorted(plan.nodes.items(), key=lambda kv: (kv[1].start, kv[1].end, kv[0])):
        use = (
            node.flow_tokens_per_s / node.capacity_tokens_per_s if node.capacity_tokens_per_s else 0
        )
        table.add_row(
            name,
            node.gpu,
            f"[{node.start}, {node.end})",
            f"{node.capacity_tokens_per_s:,.1f}",
            f"{node.flow_tokens_per_s:,.1f}",
            f"{use:.0%}",
        )
    return table


def plan_summary(plan: Plan) -> str:
    s = plan.stats
    hops = f" (limit {plan.max_hops})" if plan.max_hops else ""
    return (
        f"throughput {plan.throughput_tokens_per_s:,.2f} tokens/s | bound "
        f"{plan.upper_bound_tokens_per_s:,.2f} | gap {plan.gap:.2%} | solver {plan.solver.name} "
        f"({plan.solver.status}, {plan.solver.seconds:.1f} s) | hops max {s.hops_max}{hops}, "
        f"mean {s.hops_mean:.1f} | latency/token mean {s.latency_ms_mean:.1f} ms, "
        f"max {s.latency_ms_max:.1f} ms"
    )


def save_plan(plan: Plan, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(plan.to_dict(), sort_keys=False))


def load_plan(path: str | Path) -> Plan:
    import yaml

    from helix.planner.spec import SpecError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SpecError("", f"cannot read plan {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError("", f"{path} is not valid YAML: {exc}") from None
    return Plan.from_dict(data)


def draw_plan(plan: Plan, path: str | Path) -> None:
    """Layer ranges per node as horizontal bars coloured by GPU kind; bar opacity is the node's
    share of its capacity in use; the flow through each node is written on its bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = sorted(plan.nodes.items(), key=lambda kv: (kv[1].start, kv[1].end, kv[0]))
    kinds = sorted({node.gpu for _, node in nodes})
    palette = plt.get_cmap("tab10")
    colour = {kind: palette(i % 10) for i, kind in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(nodes) + 1.6))
    for row, (_, node) in enumerate(nodes):
        use = (
            node.flow_tokens_per_s / node.capacity_tokens_per_s if node.capacity_tokens_per_s else 0
        )
        ax.barh(
            row,
            node.end - node.start,
            left=node.start,
            color=colour[node.gpu],
            alpha=0.35 + 0.65 * min(1.0, use),
            edgecolor="black",
            linewidth=0.5,
        )
        ax.text(
            node.start + 0.2, row, f"{node.flow_tokens_per_s:,.0f} tok/s", va="center", fontsize=7
        )
    ax.set_yticks(range(len(nodes)), [f"{name} ({node.gpu})" for name, node in nodes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, plan.num_layers)
    ax.set_xlabel("layer")
    ax.set_title(
        f"{plan.model}: {plan.throughput_tokens_per_s:,.1f} tokens/s "
        f"(bound {plan.upper_bound_tokens_per_s:,.1f}), {plan.solver.name}, "
        f"{plan.stats.hops_max} hops",
        fontsize=9,
    )
    from matplotlib.patches import Rectangle

    handles = [Rectangle((0, 0), 1, 1, color=colour[kind]) for kind in kinds]
    ax.legend(handles, kinds, loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
