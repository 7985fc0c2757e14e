"""The rule that decides whether the synthetic model's recipe takes a newer trunk generator version.

``docs/synthetic_model.md`` ("Where the liver lies around the spine") wrote the rule down before any
version-4 model was trained, and took it over for version 5 ("Where the liver ends") before any
version-5 model was measured: two-fold models of the recipe trained on the new version's phantoms
(seeds 0 and 1) against the same recipe on the old version's (``--versions OLD NEW``, default 3 4),
on one machine, paired by case and seed:

1. on families 1 and 2 pooled (the 6 + 6 phantoms of ``synthetic_phantoms.py``), liver Dice higher,
   the lower end of the paired 95 % interval above -0.01;
2. neither family alone losing more than 0.02 in mean liver Dice;
3. on each arm's own development phantoms (the 20 of ``fov_ends.py``, both ends, each arm's drawn by
   its own generator version from the same seeds, predicted with the recipe's edge context 0.25), a
   mean loss of at most 0.01.

Pooling treats the two seeds' differences on one phantom as separate pairs ("paired by case and seed").
The real CT, and the false liver on each arm's own liver-free fields of view (``fov_ends.py --end
liver-free``), are reported and do not decide. This script computes nothing new: it reads the per-case
scores the three benchmarks stored (``synthetic_phantoms.json``, ``fov_ends.json``, ``real_ct.json``,
the latest run of each model), pairs them, and says which conditions hold and whether the comparison is
complete (both seeds, every case paired, one CPU model). Each ``--pair SEED=OLD_MODEL,NEW_MODEL`` names
the two models of one seed as the benchmarks recorded them. Not run by CI::

    .venv/bin/python benchmarks/trunk_version_rule.py \\
        --pair 0=benchmarks/work/cache_s49/models/synthetic.zip,benchmarks/work/cache_v4_s0/models/synthetic.zip
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

from bench_common import append_result, cpu_model  # noqa: E402

from autoseg.metrics import bootstrap_interval, mean_present  # noqa: E402

SEEDS = (0, 1)  # the rule's trainings per arm
FAMILY_SEED, FAMILY_CASES = 2512, 12  # synthetic_phantoms.py's default test phantoms (6 per family)
DEV_CASES = 10  # per end
DEV_SHARE = 0.25  # the recipe's edge context, which its models predict with
DEV_ENDS = ("mid-bladder", "below-bladder")
POOLED_LOWER_END, FAMILY_LOSS, DEV_LOSS = -0.01, 0.02, 0.01


class Reader:
    """The benchmarks' stored runs, each model's latest, and the CPUs of the runs it used. A run dated
    before the model's archive was last written (where the archive is on this machine) is of an older
    model at the same path, and is left out."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.cpus: set[str] = set()
        self._files: dict[str, list[dict[str, Any]]] = {}

    def runs(self, name: str, model: str) -> list[dict[str, Any]]:
        if name not in self._files:  # each results file is read once
            path = self.results / name
            self._files[name] = json.loads(path.read_text()) if path.is_file() else []
        runs = self._files[name]
        archive = Path(model) if Path(model).is_absolute() else REPO / model
        made = archive.stat().st_mtime if archive.is_file() else None
        return [r for r in runs if made is None or "date" not in r or datetime.fromisoformat(r["date"]).timestamp() >= made]

    def used(self, run: dict[str, Any]) -> dict[str, Any]:
        self.cpus.add(str(run.get("cpu")))
        return run

    def families(self, model: str) -> dict[str, float | None] | None:
        """Liver Dice per ``familyF/case`` of ``model``'s latest run on the rule's family phantoms."""
        runs = [r for r in self.runs("synthetic_phantoms.json", model)
                if r.get("model") == model and r.get("seed") == FAMILY_SEED and r.get("spacing") == "demo"
                and not r.get("predict_args") and len(r.get("cases", [])) == FAMILY_CASES]
        return ({f"family{c['family']}/{c['case']}": c["liver"] for c in self.used(runs[-1])["cases"]}
                if runs else None)

    def development(self, model: str, version: int, ends: tuple[str, ...] = DEV_ENDS,
                    figure: str = "liver") -> dict[str, float | None] | None:
        """``figure`` (liver Dice) per ``end/case`` of ``model``'s latest runs on the development phantoms
        drawn by generator ``version`` (each of ``ends``, 10 cases each), at the recipe's edge context;
        None unless every end is there."""
        out: dict[str, float | None] = {}
        for end in ends:
            found = None
            for run in self.runs("fov_ends.json", model):
                if run.get("end") != end or run.get("trunk_version") != version or len(run.get("cases", [])) != DEV_CASES:
                    continue
                for label, path in run["models"].items():
                    if path == model and f"{label} {DEV_SHARE}" in run["scores"]:
                        found = run
                        key = f"{label} {DEV_SHARE}"
            if found is None:
                return None
            out.update({f"{end}/{case}": figures[figure] for case, figures in self.used(found)["scores"][key].items()})
        return out

    def real(self, model: str) -> dict[str, float | None]:
        runs = [r for r in self.runs("real_ct.json", model) if r.get("model") == model and not r.get("predict_args")]
        return {c["case"]: (c.get("scores") or {}).get("dice") for c in runs[-1]["cases"]} if runs else {}


def differences(v3: dict[str, float | None], v4: dict[str, float | None], seed: int,
                prefix: str = "") -> dict[str, float]:
    """``v4 - v3`` per case both score (keys ``seed/case``), the cases filtered by ``prefix``."""
    out: dict[str, float] = {}
    for case, before in v3.items():
        after = v4.get(case)
        if case.startswith(prefix) and before is not None and after is not None:
            out[f"{seed}/{case}"] = after - before
    return out


def summary(diffs: dict[str, float]) -> dict[str, Any]:
    values = list(diffs.values())
    ci = bootstrap_interval(values)
    return {"n": len(values), "mean": mean_present(values), "ci95": list(ci) if ci else None}


def evaluate(pairs: dict[int, tuple[str, str]], results: Path, versions: tuple[int, int] = (3, 4)) -> dict[str, Any]:
    """The rule's three conditions from the stored scores of ``pairs`` (seed -> (old model, new model))
    for generator ``versions`` (old, new).

    Complete only with both seeds, four distinct models, every case of both arms paired (12 family and
    20 development phantoms a seed) and every deciding run made on one CPU model."""
    models = [m for pair in pairs.values() for m in pair]
    if len(set(models)) != len(models):
        raise SystemExit(f"the rule pairs four distinct models, got {models}: give each seed its own two")
    read = Reader(results)
    fam: dict[str, float] = {}
    per_family: dict[str, dict[str, float]] = {"family1": {}, "family2": {}}
    dev: dict[str, float] = {}
    missing: list[str] = []
    real: dict[str, Any] = {}
    liver_free: dict[str, dict[str, float | None]] = {}
    old, new = versions
    a_old, a_new = f"v{old}", f"v{new}"
    for seed, (v3, v4) in sorted(pairs.items()):  # v3: the old version's model, v4: the new one's
        f3, f4 = read.families(v3), read.families(v4)
        d3, d4 = read.development(v3, old), read.development(v4, new)
        for what, model, value in (("family phantoms", v3, f3), ("family phantoms", v4, f4),
                                   (f"version-{old} development phantoms", v3, d3),
                                   (f"version-{new} development phantoms", v4, d4)):
            if value is None:
                missing.append(f"seed {seed}: no stored scores on the {what} of {model}")
        if f3 is not None and f4 is not None:
            paired = differences(f3, f4, seed)
            fam.update(paired)
            if len(paired) != FAMILY_CASES or set(f3) != set(f4):
                missing.append(f"seed {seed}: {len(paired)} of {FAMILY_CASES} family phantoms paired")
            for family in per_family:
                per_family[family].update(differences(f3, f4, seed, family))
        if d3 is not None and d4 is not None:
            paired = differences(d3, d4, seed)
            dev.update(paired)
            if len(paired) != 2 * DEV_CASES or set(d3) != set(d4):
                missing.append(f"seed {seed}: {len(paired)} of {2 * DEV_CASES} development phantoms paired")
        free3, free4 = (read.development(m, v, ("liver-free",), "false_ml") for m, v in ((v3, old), (v4, new)))
        liver_free[str(seed)] = {arm: None if free is None else mean_present(list(free.values()))
                                 for arm, free in ((a_old, free3), (a_new, free4))}
        r3, r4 = read.real(v3), read.real(v4)
        real[str(seed)] = {case: {a_old: r3.get(case), a_new: r4.get(case)} for case in sorted(set(r3) | set(r4))}
    deciding_cpus = sorted(read.cpus)
    if len(deciding_cpus) > 1:
        missing.append(f"the runs were made on {len(deciding_cpus)} CPU models, not one: {deciding_cpus}")
    pooled, families, development = summary(fam), {k: summary(v) for k, v in per_family.items()}, summary(dev)
    conditions = {
        "1 families pooled: interval's lower end above -0.01": None if pooled["ci95"] is None
        else pooled["ci95"][0] > POOLED_LOWER_END and pooled["mean"] > 0,
        "2 neither family loses more than 0.02": None if any(s["n"] == 0 for s in families.values())
        else all(s["mean"] >= -FAMILY_LOSS for s in families.values()),
        "3 development phantoms lose at most 0.01": None if development["n"] == 0
        else development["mean"] >= -DEV_LOSS}
    complete = sorted(pairs) == list(SEEDS) and not missing
    holds = complete and all(conditions.values())
    return {"versions": [old, new], "pairs": {str(k): {a_old: v[0], a_new: v[1]} for k, v in pairs.items()},
            "complete": complete,
            "missing": missing, "cpus": deciding_cpus, "conditions": conditions, "adopt": holds,
            "families_pooled": pooled, "families": families, "development": development,
            "differences": {"families": fam, "development": dev}, "real_ct": real,
            "liver_free_false_ml": liver_free}


def parse_pair(text: str) -> tuple[int, tuple[str, str]]:
    seed, _, models = text.partition("=")
    parts = models.split(",")
    if not seed.lstrip("-").isdigit() or len(parts) != 2 or not all(parts):
        raise SystemExit(f"--pair takes SEED=OLD_MODEL,NEW_MODEL, got {text!r}")
    return int(seed), (parts[0], parts[1])


def fmt(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "-"
    ci = s["ci95"]
    return f"{s['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] (n {s['n']})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", action="append", required=True, metavar="SEED=OLD_MODEL,NEW_MODEL",
                   help="the two models of one seed, as the benchmarks recorded them; repeat for each seed")
    p.add_argument("--versions", type=int, nargs=2, default=[3, 4], metavar=("OLD", "NEW"),
                   help="the generator versions the two arms were trained on (default 3 4)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the benchmarks' results are")
    p.add_argument("--out", type=Path, default=RESULTS / "trunk_version_rule.json")
    args = p.parse_args(argv)
    pairs = dict(parse_pair(t) for t in args.pair)
    if len(pairs) != len(args.pair):
        raise SystemExit("each seed takes one --pair")
    from autoseg.errors import ConfigurationError
    from autoseg.phantom_trunk import check_version

    try:
        old, new = (check_version(v) for v in args.versions)
    except ConfigurationError as err:
        raise SystemExit(f"--versions: {err}") from None
    if old >= new:
        raise SystemExit(f"--versions takes the old version, then a newer one; got {old} {new}")
    result = evaluate(pairs, args.results, (old, new))
    print(f"| version {new} minus version {old}, liver Dice | mean [95 % CI] |")
    print("|---|---|")
    print(f"| families 1 + 2 | {fmt(result['families_pooled'])} |")
    for family, s in result["families"].items():
        print(f"| {family} | {fmt(s)} |")
    print(f"| development (each arm's own version) | {fmt(result['development'])} |")
    for name, held in result["conditions"].items():
        print(f"condition {name}: {'not measured' if held is None else 'holds' if held else 'fails'}")
    for seed, arms in result["liver_free_false_ml"].items():
        print(f"seed {seed}: false liver on liver-free fields, mean mL: "
              + ", ".join(f"{arm} {'-' if v is None else f'{v:.1f}'}" for arm, v in arms.items()))
    print(f"complete: {result['complete']} {result['missing'] or ''}; adopt: {result['adopt']}")
    append_result(args.out, {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
                             "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
