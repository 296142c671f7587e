"""The LoRA study's numbers (results/lora/PROTOCOL.md) from its four run directories: validation accuracy at
steps 0/5/10/15/20, LoRA's lr chosen by the protocol's rule, LoRA vs full fine-tuning with binomial standard
errors. Writes results/lora/results.json and prints the markdown tables.

    python results/lora/summarize.py outputs/lora
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

LORA_LRS = ("1e-4", "3e-4", "1e-3")
RUNS = {**{f"lora_r8_lr{lr}": ("LoRA r8", lr) for lr in LORA_LRS}, "full_lr1e-4": ("full", "1e-4")}
VAL_STEPS = (0, 5, 10, 15, 20)
SELECTION_STEPS = range(16, 21)  # the rule: mean training accuracy over steps 16-20
VAL_SAMPLES = 256 * 4  # data.val_max_samples=256 problems, avg@4


def binomial_se(p: float, n: int = VAL_SAMPLES) -> float:
    return math.sqrt(p * (1 - p) / n)


def read_run(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    val = {r["step"]: r["val/acc"] for r in rows if "val/acc" in r}
    train = {r["step"]: r["reward/acc"] for r in rows if "reward/acc" in r}
    provenance = [
        json.loads(line) for line in (run_dir / "provenance.jsonl").read_text().splitlines() if line
    ]
    finite = all(r.get("train/nonfinite_total", 0) == 0 for r in rows)
    return {
        "val_acc": {s: val.get(s) for s in VAL_STEPS},
        "val_acc_se_binomial": {s: binomial_se(val[s]) for s in VAL_STEPS if s in val},
        "val_acc_se_per_problem": {s: r["val/acc_se"] for r in rows if "val/acc" in r for s in [r["step"]]},
        "train_acc_16_20": sum(train[s] for s in SELECTION_STEPS) / len(SELECTION_STEPS),
        "completed": all(s in train for s in SELECTION_STEPS) and finite,
        "commit": sorted({p["commit"] for p in provenance}),
        "dirty": any(p["dirty"] for p in provenance),
        "train_seconds": sum(r.get("timing/step", 0.0) for r in rows),
    }


def main(root: Path) -> None:
    runs = {name: {"arm": arm, "lr": lr, **read_run(root / name)} for name, (arm, lr) in RUNS.items()}
    lora = [n for n in RUNS if n.startswith("lora") and runs[n]["completed"]]
    # Highest mean training accuracy over steps 16-20; a tie goes to the smaller lr.
    chosen = max(lora, key=lambda n: (runs[n]["train_acc_16_20"], -float(runs[n]["lr"])))
    full = runs["full_lr1e-4"]
    final_lora, final_full = runs[chosen]["val_acc"][20], full["val_acc"][20]
    comparison = {
        "lora_run": chosen,
        "lora_final": final_lora,
        "lora_final_se": binomial_se(final_lora),
        "full_final": final_full,
        "full_final_se": binomial_se(final_full),
        "difference": final_lora - final_full,
        "difference_se": math.hypot(binomial_se(final_lora), binomial_se(final_full)),
    }
    out = {"runs": runs, "chosen_lora_lr": runs[chosen]["lr"], "comparison": comparison}
    Path(__file__).with_name("results.json").write_text(json.dumps(out, indent=1) + "\n")

    print(
        "| run | lr | "
        + " | ".join(f"val acc @{s}" for s in VAL_STEPS)
        + " | final - start | train acc 16-20 |"
    )
    print("|---|---|" + "---|" * (len(VAL_STEPS) + 2))
    for r in runs.values():
        v = r["val_acc"]
        cells = " | ".join(f"{v[s]:.3f}" for s in VAL_STEPS)
        print(f"| {r['arm']} | {r['lr']} | {cells} | {v[20] - v[0]:+.3f} | {r['train_acc_16_20']:.3f} |")
    c = comparison
    print(
        f"\nchosen LoRA lr {runs[chosen]['lr']}; final: LoRA {c['lora_final']:.3f} +- {c['lora_final_se']:.3f}, "
        f"full {c['full_final']:.3f} +- {c['full_final_se']:.3f}, "
        f"difference {c['difference']:+.3f} +- {c['difference_se']:.3f}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/lora"))
