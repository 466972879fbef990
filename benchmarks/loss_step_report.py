"""``loss_step.py``'s results as people read them: the scaling sweep's linear fit and the
markdown tables printed at the end of a run."""

from __future__ import annotations

import torch

FORMS = ("baseline", "fused", "swav", "floor")


def linear_fit(rows: list[dict]) -> tuple[float, float, float]:
    """Least-squares ``ms = a + b * (B * sum K)``: (a in ms, b in ns, largest relative residual)."""
    x = torch.tensor([float(r["batch"] * r["total_k"]) for r in rows], dtype=torch.float64)
    y = torch.tensor([r["ms"] for r in rows], dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    a, b = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1).tolist()
    residual = ((a + b * x - y).abs() / y).max().item()
    return a, b * 1e6, residual


def ratio_text(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if row[key] is not None else "-"


def print_tables(results: dict) -> None:
    env = results["environment"]
    print(f"\n## SeCu loss step ({env['device']}, torch {env['torch']}, {env['threads']} threads)")
    print(f"CPU: {env['cpu']}" + (f"; GPU: {env['gpu']}" if "gpu" in env else ""))
    print("Median ms per step (forward with assignment and state update, backward).\n")
    print(f"Load average at the start: {results['provenance']['load_average']}\n")
    header = "| heads | sum K | B | views | baseline ms | fused ms | SwaV ms | floor ms "
    header += "| fused/baseline | fused/SwaV | baseline/SwaV | fused/floor |"
    cuda = any("step_peak_mib" in row for row in results["forms"])
    if cuda:
        header += " peak MiB base/fused/SwaV |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in results["forms"]:
        ms = row["ms"]
        swav = f"{ms['swav']:.2f}" if "swav" in ms else "skipped"

        line = (
            f"| {row['heads']} | {sum(row['num_clusters'])} | {row['batch']} | {row['views']} "
            f"| {ms['baseline']:.2f} | {ms['fused']:.2f} | {swav} | {ms['floor']:.2f} "
            f"| {ratio_text(row, 'fused/baseline')} | {ratio_text(row, 'fused/swav')} "
            f"| {ratio_text(row, 'baseline/swav')} | {ratio_text(row, 'fused/floor')} |"
        )
        if cuda:
            peaks = row["step_peak_mib"]
            line += " " + "/".join(f"{peaks[f]:.0f}" if f in peaks else "-" for f in FORMS) + " |"
        print(line)
    if results.get("swav_skipped"):
        print(f"\n{results['swav_skipped']}")

    if results.get("scaling"):
        print("\n## Fused step against total K and batch (ImageNet-like heads)\n")
        print("| sweep | B | sum K | ms | ns per (B x sum K) | floor ms | fused/floor |")
        print("|---|---|---|---|---|---|---|")
        for row in results["scaling"]:
            print(
                f"| {row['sweep']} | {row['batch']} | {row['total_k']} | {row['ms']:.2f} "
                f"| {row['ns_per_bk']:.3f} | {row['floor_ms']:.2f} | {row['fused/floor']:.2f}x |"
            )
        for sweep, (a, b, residual) in results["scaling_fit"].items():
            print(
                f"\nLinear fit over the {sweep} sweep: ms = {a:.2f} + {b:.3f} ns x (B x sum K); "
                f"largest relative residual {100 * residual:.1f}%"
            )

    memory = results["bank_memory"]
    print(
        f"\n## Bank memory, N = {memory['num_instances']:,}, {memory['num_heads']} heads\n"
        f"assignment memory: {memory['dtype']}, {memory['bytes_per_instance_and_head']} bytes "
        f"per instance and head, {memory['memory_mb']:.1f} MB in all (centers, targets, counts "
        f"and duals of the ImageNet heads: {memory['centers_targets_counts_duals_mb']:.1f} MB)"
    )
