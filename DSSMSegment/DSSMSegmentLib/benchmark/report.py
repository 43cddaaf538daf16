"""The report: Markdown tables of a benchmark's results (end to end, per stage, batched throughput) and the
issue-5 targets, met or not."""

from __future__ import annotations

from typing import List

from .measurement import BENCH_SAMPLES, MIB

METHOD_ORDER = {"dssm": 0, "samples": 1, "tta": 2, "uncertainty": 3, "baseline": 4, "naive": 5}
DSSM_METHODS = ("dssm", "samples", "tta", "uncertainty")  # rows of DSSM at a K (the others: references)


def method_label(row: dict, with_k: bool = False) -> str:
    """How the tables name a result row's method."""
    k = f" K={row['steps']}" if with_k else ""
    return {"dssm": f"DSSM{k}", "samples": f"DSSM{k}, {row.get('samples', BENCH_SAMPLES)} samples",
            "tta": f"DSSM{k} + TTA", "uncertainty": f"DSSM{k} + uncertainty map, {row.get('samples')} chains",
            "baseline": "baseline",
            "naive": f"naive {row['steps']}" + ("" if with_k else "-step DDPM")}[row["method"]]


def _fmt_s(s: dict) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def _fmt_ms(s: dict) -> str:
    return f"{1000 * s['median']:.1f} [{1000 * s['min']:.1f}-{1000 * s['max']:.1f}]"


def markdown_tables(report: dict) -> str:
    lines = []
    results = report["results"]
    for device in report["devices"]:
        rows = [r for r in results if r["device"].startswith(device)]
        if not rows:
            continue
        gpu = device.startswith("cuda")
        fmt = _fmt_ms if gpu else _fmt_s
        unit = "ms" if gpu else "s"
        lines.append(f"### {device}: {report['meta']['device_names'].get(device, device)}, "
                     f"{report['meta']['threads']} CPU threads\n")
        lines.append(f"End to end per case (read -> written mask), median [min-max] over {report['meta']['repeats']} "
                     f"runs after a warm-up; x K=0 = time / time at K=0 of the same case.\n")
        head = (f"| case | method | K | time ({unit}) | x K=0 | network ({unit}) | cold ({unit}) | slices/s | "
                f"peak RAM (MiB) |" + (" peak GPU (MiB) |" if gpu else "") + " GFLOP/slice | Dice |")
        lines.append(head)
        lines.append("|" + "---|" * (head.count("|") - 1))
        for case in report["cases"]:
            crow = [r for r in rows if r["case"] == case]
            k0 = next((r for r in crow if r["method"] == "dssm" and r["steps"] == 0), None)
            for r in sorted(crow, key=lambda r: (METHOD_ORDER[r["method"]], r["steps"])):
                ratio = r["time_s"]["median"] / k0["time_s"]["median"] if k0 else float("nan")
                cold = "-" if r["cold_s"] is None else (f"{r['cold_s']:.3f}" if not gpu else f"{1000 * r['cold_s']:.1f}")
                name = method_label(r)
                k = r["steps"] if r["method"] in DSSM_METHODS else "-"
                fl = r.get("flops_per_slice")
                dice = "-" if r.get("dice") is None else f"{r['dice']:.3f}"
                cells = [case, name, str(k), fmt(r["time_s"]), f"{ratio:.2f}", fmt(r["network_s"]),
                         cold, f"{r['slices_per_s']:.1f}",
                         f"{r['peak_rss_mib']:.0f}"]
                if gpu:
                    cells.append(f"{r.get('peak_gpu_mib', float('nan')):.0f}")
                cells += ["-" if fl is None else f"{fl / 1e9:.2f}", dice]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        # stages
        lines.append(f"Per stage, median {unit} (DSSM at the default K, and the references):\n")
        for case in report["cases"]:
            crow = [r for r in rows if r["case"] == case]
            default_k = report["meta"]["default_steps"].get(case, 4)
            picks = [r for r in crow if (r["method"] == "dssm" and r["steps"] in (0, default_k))
                     or r["method"] != "dssm"]
            names = []
            for r in picks:
                for s in r["stages_s"]:
                    if s not in names:
                        names.append(s)
            names = _order_stages(names)
            scale = 1000 if gpu else 1
            head = "| case | method | " + " | ".join(names) + " |"
            lines.append(head)
            lines.append("|" + "---|" * (len(names) + 2))
            for r in picks:
                label = method_label(r, with_k=True)
                cells = []
                for s in names:
                    v = r["stages_s"].get(s)
                    cells.append("-" if v is None else (f"{v * scale:.1f}" if gpu else f"{v:.3f}"))
                lines.append(f"| {case} | {label} | " + " | ".join(cells) + " |")
            lines.append("")
    if report.get("throughput"):
        lines.append("Batched network-only throughput (256x256 slices):\n")
        lines.append("| device | model | method | K | batch | time per batch (s) | slices/s | GFLOP/slice | "
                     "achieved TFLOP/s | of measured matmul peak |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in report["throughput"]:
            ach = r.get("achieved_flops_per_s")
            frac = r.get("fraction_of_peak")
            lines.append(f"| {r['device']} | {r['model']} | {r['method']} | {r['steps']} | {r['batch']} | "
                         f"{_fmt_s(r['time_s'])} | {r['slices_per_s']:.1f} | "
                         f"{(r['flops_per_slice'] or 0) / 1e9:.2f} | {'-' if ach is None else f'{ach / 1e12:.3f}'} | "
                         f"{'-' if frac is None else f'{100 * frac:.1f}%'} |")
        for dev, peak in report.get("matmul_peak", {}).items():
            if peak:
                lines.append(f"\nMeasured matmul peak on {dev}: {peak['flops_per_s'] / 1e12:.3f} TFLOP/s "
                             f"({peak['dtype']}, {peak['n']}^3).")
        lines.append("")
    if report.get("targets"):
        lines.append("Targets (issue 5, and issue 14's for the uncertainty map):\n")
        lines.append("| device | target | measured | met |")
        lines.append("|---|---|---|---|")
        for t in report["targets"]:
            lines.append(f"| {t['device']} | {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def _order_stages(names: List[str]) -> List[str]:
    order = ["read", "preprocess", "semantic pass", "first prediction + encode"]
    steps = sorted((n for n in names if n.startswith("markov step")), key=lambda n: int(n.split()[-1]))
    tail = ["naive DDPM steps", "decode", "bayesian head", "head", "network other", "resample back", "uncertainty",
            "postprocess", "write"]
    known = order + steps + tail
    return [n for n in known if n in names] + [n for n in names if n not in known]


def targets(report: dict) -> List[dict]:
    out = []
    for device in report["devices"]:
        rows = [r for r in report["results"] if r["device"].startswith(device) and r["method"] == "dssm"]
        gpu = device.startswith("cuda")
        for case in report["cases"]:
            k = report["meta"]["default_steps"].get(case, 4)
            r0 = next((r for r in rows if r["case"] == case and r["steps"] == 0), None)
            rk = next((r for r in rows if r["case"] == case and r["steps"] == k), None)
            if r0 and rk:
                ratio = rk["time_s"]["median"] / r0["time_s"]["median"]
                out.append({"device": device, "target": f"{case}: time at K={k} <= 1.5x time at K=0",
                            "measured": f"{ratio:.2f}x", "met": ratio <= 1.5})
            ru = next((r for r in report["results"] if r["device"].startswith(device) and r["case"] == case
                       and r["method"] == "uncertainty"), None)
            if rk and ru:
                ratio = ru["time_s"]["median"] / rk["time_s"]["median"]
                out.append({"device": device, "target": f"{case}: with the uncertainty map <= 2x time at K={k} "
                            "(issue 14)", "measured": f"{ratio:.2f}x", "met": ratio <= 2.0})
        acdc = next((r for r in rows if r["case"] == "acdc" and r["steps"] == report["meta"]["default_steps"].get("acdc", 4)), None)
        xray = next((r for r in rows if r["case"] == "xray512" and r["steps"] == report["meta"]["default_steps"].get("xray512", 4)), None)
        if report["meta"].get("quick"):
            continue  # --quick runs a crop of the ACDC volume: no absolute targets
        if not gpu:
            if acdc:
                out.append({"device": device, "target": "ACDC volume end to end <= 3 s",
                            "measured": f"{acdc['time_s']['median']:.3f} s", "met": acdc["time_s"]["median"] <= 3.0})
            if xray:
                out.append({"device": device, "target": "512x512 X-ray end to end <= 1 s",
                            "measured": f"{xray['time_s']['median']:.3f} s", "met": xray["time_s"]["median"] <= 1.0})
            peak = max((r["peak_rss_mib"] for r in report["results"] if r["device"].startswith(device)), default=None)
            if peak is not None:
                out.append({"device": device, "target": "peak RAM < 1.5 GB (any case, K, or reference)",
                            "measured": f"{peak:.0f} MiB", "met": peak * MIB < 1.5e9})
        else:
            if acdc:
                net = acdc["network_s"]["median"]
                out.append({"device": device, "target": "ACDC volume, model part <= 15 ms",
                            "measured": f"{1000 * net:.1f} ms", "met": net <= 0.015})
            tp = [t for t in report.get("throughput", []) if t["device"].startswith(device) and t["method"] == "dssm"]
            best = max((t["slices_per_s"] for t in tp if t["steps"] == report["meta"]["default_steps"].get("acdc", 4)),
                       default=None)
            if best is not None:
                out.append({"device": device, "target": ">= 2000 slices/s batched (default K)",
                            "measured": f"{best:.0f} slices/s", "met": best >= 2000})
            peak = max((r.get("peak_gpu_mib", 0) for r in report["results"] if r["device"].startswith(device)),
                       default=None)
            if peak is not None:
                out.append({"device": device, "target": "< 2 GB GPU memory (per case)",
                            "measured": f"{peak:.0f} MiB", "met": peak * MIB < 2e9})
    return out
