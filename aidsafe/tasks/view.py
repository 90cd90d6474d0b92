"""`aidsafe view`: one self-contained HTML page to read a run of any recipe: a filterable,
searchable list of its rows, a page per row (intents, deliberation, refiner removals, DPO sides,
UnsafeChain samples, judge verdicts, calls, grades) and run-level charts.

How it stays usable at 100,000 rows: each row's records are kept as one JSON line, and lines are
packed in chunks of ROWS_PER_CHUNK, each gzip-compressed and base64-encoded in its own inert
`<script>` block. The list, filters and counts read only a small index (ids, titles, facet
values, numbers), itself one such block; a row page decompresses the one chunk holding its row
(the browser's DecompressionStream); a search decompresses and scans the chunks one by one. The
list is paged, so the DOM holds one page of rows. No network, no CDN: the script, the style and
the charts (matplotlib SVG) are all inside the file, which works from file://."""

from __future__ import annotations

import base64
import gzip
import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from aidsafe.agents.grader import METRICS
from aidsafe.errors import UserError
from aidsafe.jsonl import read_jsonl
from aidsafe.metrics import CURVE_FIGURES
from aidsafe.recipes import registry
from aidsafe.recipes.base import Recipe
from aidsafe.run.directory import GRADES, JUDGE_SUMMARY, VIEW, RunDirectory
from aidsafe.schemas import REMOVAL_REASONS
from aidsafe.tasks import charts
from aidsafe.tasks.grading import GradeRows
from aidsafe.tasks.judging import JudgeResponses

ROWS_PER_CHUNK = 256
GRADE_BUCKETS = ("[1, 2)", "[2, 3)", "[3, 4)", "[4, 5]")
# The list's facets, in the order the page shows them: name -> label.
FACETS = {
    "status": "Status",
    "reason": "Failure reason",
    "policy": "Policies cited",
    "removal": "Refiner removals",
    "rounds": "Deliberation rounds",
    "ending": "Deliberation ended by",
    "pair": "DPO pair",
    "source": "UnsafeChain rows",
    "hard": "UnsafeChain prompt",
    "verdict": "Judge verdict",
    "violated": "Policies violated (judge)",
    "grade": "Mean grade",
}
NUMBERS = ("tokens", "latency", "rounds", "removed", "grade")


@dataclass
class ViewResult:
    path: Path
    rows: int
    bytes: int

    @property
    def bytes_per_row(self) -> float:
        return self.bytes / self.rows if self.rows else float(self.bytes)


# --- the rows of a run: one record per item, with every part the run holds for it ---------


def _primary(manifest: dict[str, Any]) -> tuple[str, Recipe]:
    """The part name and the recipe (its ledger and failure rule) of the run's first stage."""
    name = str(manifest.get("recipe") or "")
    if name == JudgeResponses.name:
        return "judgment", JudgeResponses("response", None)
    if name == GradeRows.name:
        return "grades", GradeRows()
    return "trace", registry.get(name)


def _ledger(run: RunDirectory, recipe: Recipe) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every line of a recipe's done and failures ledgers, with its failure reason (None: done;
    judgments and grades keep both in one file)."""
    done, failures = recipe.ledger.done, recipe.ledger.failures
    for record in read_jsonl(run.path(done)):
        yield record, recipe.failure_reason(record) if done == failures else None
    if failures != done:
        for record in read_jsonl(run.path(failures)):
            yield record, recipe.failure_reason(record) or "failed"


def run_rows(root: Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The manifest and the rows of a run directory, one dict per item:
    `id`, `status` (done or failed), `reason`, and the parts the run holds for it: `trace` or
    `failure` (generation, any recipe), `judgment`, `pair` or `pair_failure` (DPO), `grades`
    (one per graded SFT row: UnsafeChain makes several per prompt)."""
    run = RunDirectory(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such run directory")
    manifest = run.manifest()
    if manifest is None:
        raise UserError(f"{root}: not a run directory (no manifest.json)")
    part, recipe = _primary(manifest)
    return manifest, _merged(run, manifest, part, recipe)


def _merged(
    run: RunDirectory, manifest: dict[str, Any], part: str, recipe: Recipe
) -> Iterator[dict[str, Any]]:
    # The later stages' files are read first (by id), then the first stage's are streamed.
    pairs: dict[str, tuple[dict[str, Any], str | None]] = {}
    if "dpo" in manifest and part == "trace":
        pairs = {
            record["id"]: (record, reason) for record, reason in _ledger(run, registry.pairs())
        }
    grades: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if part != "grades":
        for grade in read_jsonl(run.path(GRADES)):
            grades[grade["id"]].append(grade)
    for record, reason in _ledger(run, recipe):
        row: dict[str, Any] = {"id": record["id"], "status": "failed" if reason else "done"}
        if reason:
            row["reason"] = reason
        if part == "grades":
            row["grades"] = [record]
            yield row
            continue
        row["failure" if reason and part == "trace" else part] = record
        if part == "trace":
            if record["id"] in pairs:
                pair, pair_reason = pairs.pop(record["id"])
                row["pair_failure" if pair_reason else "pair"] = pair
            graded = [record["id"]] if reason else _graded_ids(recipe, record)
            row["grades"] = [g for gid in graded for g in grades.pop(gid, [])]
        yield row
    for grade_id, left in grades.items():  # grades of rows no ledger holds (an edited run)
        yield {"id": grade_id, "status": "done", "grades": left}


def _graded_ids(recipe: Recipe, record: dict[str, Any]) -> list[str]:
    """The ids `aidsafe grade` gives this record's rows: its SFT rows' ids (UnsafeChain:
    PROMPT#SAMPLE), else its own."""
    ids = [row["id"] for row in recipe.derived(record)]
    return list(dict.fromkeys([record["id"], *ids]))


# --- what the list shows and filters on -----------------------------------------------------


def _calls(row: dict[str, Any]) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for part in ("trace", "failure", "judgment"):
        calls += row.get(part, {}).get("calls", [])
    calls += row.get("pair", {}).get("metadata", {}).get("calls", [])
    calls += row.get("pair_failure", {}).get("calls", [])
    for grade in row.get("grades", []):
        calls += grade.get("calls", [])
    return calls


def _verdicts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every judge verdict of the row (UnsafeChain samples and corrections, a judgment, the DPO
    rejected side), for the policies the judge found violated."""
    trace = row.get("trace", {})
    verdicts = [s.get("verdict") for s in trace.get("samples", [])]
    verdicts += [c.get("verdict") for c in trace.get("corrections", [])]
    verdicts.append(row.get("pair", {}).get("metadata", {}).get("rejected_verdict"))
    verdicts += [t.get("verdict") for t in row.get("pair_failure", {}).get("tries", [])]
    judgment = row.get("judgment")
    if judgment and judgment.get("safe") is not None:
        verdicts.append(judgment)
    return [v for v in verdicts if v]


def _cited(row: dict[str, Any]) -> list[str]:
    trace = row.get("trace", {})
    thoughts = list(trace.get("final_cot", []))
    for correction in trace.get("corrections", []):
        if correction.get("kept"):
            thoughts += correction.get("thoughts", [])
    return [p for thought in thoughts for p in thought.get("policies", [])]


def _mean_grade(row: dict[str, Any]) -> float | None:
    scores = [
        grade["score"]
        for record in row.get("grades", [])
        for grade in record.get("scores", {}).values()
        if grade
    ]
    return sum(scores) / len(scores) if scores else None


def _title(row: dict[str, Any]) -> str:
    for part in ("trace", "failure", "judgment", "pair_failure"):
        prompt = row.get(part, {}).get("prompt")
        if isinstance(prompt, str):
            return " ".join(prompt.split())[:160]
    return ""


def summarize(row: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, float | None]]:
    """A row's facet values (what the list filters on) and its numbers (what the list shows)."""
    facets: dict[str, list[str]] = {"status": [row["status"]]}
    if row.get("reason"):
        facets["reason"] = [row["reason"]]
    trace = row.get("trace", {})
    facets["policy"] = sorted(set(_cited(row)))
    removed = trace.get("removed", [])
    facets["removal"] = sorted({r["reason"] for r in removed})
    deliberation = trace.get("deliberation")
    if deliberation is not None:
        facets["rounds"] = [str(deliberation["rounds"])]
        if deliberation["turns"]:
            facets["ending"] = ["agreement" if deliberation["agreed"] else "budget spent"]
    if "pair" in row:
        facets["pair"] = [row["pair"]["metadata"].get("pair_rule") or "pair"]
    elif "pair_failure" in row:
        facets["pair"] = [f"none: {row['pair_failure']['reason']}"]
    if "samples" in trace:
        sources = {"original"} if any(_safe(s) for s in trace["samples"]) else set()
        for correction in trace.get("corrections", []):
            sources.add("corrected" if correction.get("kept") else "correction dropped")
        facets["source"] = sorted(sources)
        facets["hard"] = ["hard" if trace.get("hard") else "not hard"]
    judgment = row.get("judgment")
    if judgment is not None:
        safe = judgment.get("safe")
        facets["verdict"] = ["unjudged" if safe is None else "safe" if safe else "unsafe"]
    facets["violated"] = sorted({p for v in _verdicts(row) for p in v.get("violated", [])})
    grade = _mean_grade(row)
    if row.get("grades"):
        bucket = "unscored" if grade is None else GRADE_BUCKETS[min(3, int(grade) - 1)]
        facets["grade"] = [bucket]
    calls = _calls(row)
    numbers: dict[str, float | None] = {
        "tokens": sum(c.get("input_tokens", 0) + c.get("output_tokens", 0) for c in calls),
        "latency": round(sum(c.get("latency_s", 0.0) for c in calls), 3),
        "rounds": deliberation["rounds"] if deliberation else None,
        "removed": len(removed) if deliberation is not None else None,
        "grade": round(grade, 2) if grade is not None else None,
    }
    return {k: v for k, v in facets.items() if v}, numbers


def _safe(sample: dict[str, Any]) -> bool:
    return bool(sample.get("verdict") and sample["verdict"].get("safe"))


# --- run-level tallies, drawn as charts -----------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    pairs: Counter[str] = field(default_factory=Counter)
    rounds: Counter[tuple[int, str]] = field(default_factory=Counter)
    removals: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cited: Counter[str] = field(default_factory=Counter)
    violated: Counter[str] = field(default_factory=Counter)
    scores: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    samples: Counter[str] = field(default_factory=Counter)
    tries: Counter[tuple[int, str]] = field(default_factory=Counter)

    def add(self, row: dict[str, Any]) -> None:
        reason = row.get("reason")
        if "judgment" in row:
            safe = row["judgment"].get("safe")
            self.outcomes[f"unjudged: {reason}" if reason else "safe" if safe else "unsafe"] += 1
        else:
            self.outcomes[f"failed: {reason}" if reason else "done"] += 1
        trace = row.get("trace", {})
        deliberation = trace.get("deliberation")
        if deliberation is not None and deliberation["turns"]:
            ending = "agreement" if deliberation["agreed"] else "budget spent"
            self.rounds[(deliberation["rounds"], ending)] += 1
        self.removals.update(r["reason"] for r in trace.get("removed", []))
        for call in _calls(row):
            self.tokens[call["role"]][0] += call.get("input_tokens", 0)
            self.tokens[call["role"]][1] += call.get("output_tokens", 0)
            self.latency[call["role"]].append(call.get("latency_s", 0.0))
        self.cited.update(_cited(row))
        self.violated.update(p for v in _verdicts(row) for p in v.get("violated", []))
        for grade in row.get("grades", []):
            for metric, score in grade.get("scores", {}).items():
                self.scores[metric][score["score"] if score else 0] += 1
        if "pair" in row:
            meta = row["pair"]["metadata"]
            self.pairs[f"pair: {meta.get('pair_rule')}"] += 1
            self.tries[(meta.get("belief_tries", 0), "pair")] += 1
        elif "pair_failure" in row:
            self.pairs[f"no pair: {row['pair_failure']['reason']}"] += 1
            self.tries[(len(row["pair_failure"].get("tries", [])), "no pair")] += 1
        for sample in trace.get("samples", []):
            verdict = sample.get("verdict")
            self.samples[
                "unjudged" if verdict is None else "safe" if verdict["safe"] else "unsafe"
            ] += 1
        for correction in trace.get("corrections", []):
            kept = correction.get("kept")
            self.samples[
                "corrected: kept" if kept else f"corrected: {correction.get('dropped_reason')}"
            ] += 1

    def charts(self) -> list[str]:
        drawn = []

        def counts(title: str, counter: Counter[str], order: list[str] | None = None) -> None:
            names = order or [name for name, _ in counter.most_common()]
            if counter:
                values = [float(counter[n]) for n in names]
                drawn.append(
                    charts.bar_chart(
                        title, names, [("rows", values)], horizontal=True, xlabel="rows"
                    )
                )

        counts("Rows by outcome", self.outcomes)
        counts("DPO pairs by outcome", self.pairs)
        if self.rounds:
            most = max(r for r, _ in self.rounds)
            categories = [str(r) for r in range(most + 1)]
            series = [
                (ending, [float(self.rounds[(r, ending)]) for r in range(most + 1)])
                for ending in ("agreement", "budget spent")
            ]
            drawn.append(
                charts.bar_chart(
                    "Deliberation rounds, by how deliberation ended",
                    categories,
                    series,
                    stacked=True,
                    xlabel="rounds",
                    ylabel="rows",
                )
            )
        if self.rounds or self.removals:
            drawn.append(
                charts.bar_chart(
                    "Thoughts removed by the refiner, by reason",
                    list(REMOVAL_REASONS),
                    [("thoughts", [float(self.removals[r]) for r in REMOVAL_REASONS])],
                    horizontal=True,
                    xlabel="thoughts",
                )
            )
        if self.tokens:
            roles = sorted(self.tokens)
            drawn.append(
                charts.bar_chart(
                    "Tokens per role (whole run)",
                    roles,
                    [
                        ("input", [float(self.tokens[r][0]) for r in roles]),
                        ("output", [float(self.tokens[r][1]) for r in roles]),
                    ],
                    stacked=True,
                    horizontal=True,
                    xlabel="tokens",
                )
            )
            drawn.append(
                charts.box_chart(
                    "Latency per call, by role",
                    {r: self.latency[r] for r in roles},
                    xlabel="seconds",
                )
            )
        counts("Policy citations in the final chains of thought", self.cited)
        counts("Policies violated, in judge verdicts", self.violated)
        counts("UnsafeChain samples and corrections", self.samples)
        if self.tries:
            most = max(n for n, _ in self.tries)
            drawn.append(
                charts.bar_chart(
                    "Belief tries per DPO row",
                    [str(n) for n in range(most + 1)],
                    [
                        (o, [float(self.tries[(n, o)]) for n in range(most + 1)])
                        for o in ("pair", "no pair")
                    ],
                    stacked=True,
                    xlabel="tries",
                    ylabel="rows",
                )
            )
        if self.scores:
            metrics = [m for m in METRICS if m in self.scores] + sorted(
                set(self.scores) - set(METRICS)
            )
            panels = {
                m: [("rows", [float(self.scores[m][s]) for s in range(1, 6)])] for m in metrics
            }
            drawn.append(
                charts.distributions(
                    "Grade distributions (1-5), per metric",
                    panels,
                    [str(s) for s in range(1, 6)],
                    xlabel="score",
                    ylabel="rows",
                )
            )
        return drawn


# --- the page -------------------------------------------------------------------------------


def _pack(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, compresslevel=6, mtime=0)).decode("ascii")


def _line(row: dict[str, Any]) -> bytes:
    # a lone surrogate (a prompt that was invalid UTF-16) becomes its JSON escape
    text = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


def _block(name: str, payload: str, kind: str = "application/gzip+base64") -> str:
    return f'<script type="{kind}" id="{name}">{payload}</script>\n'


def _table(head: list[str], rows: list[list[Any]], kind: str = "") -> str:
    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return html.escape(text)

    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"] if head else []
    for row in rows:
        first, *rest = row
        tag = "th" if kind == "kv" else "td"
        lines.append(
            f"<tr><{tag}>{cell(first)}</{tag}>" + "".join(f"<td>{cell(v)}</td>" for v in rest)
        )
    return f"<table class='{kind}'>{''.join(lines)}</table>"


def _run_table(root: Path, manifest: dict[str, Any]) -> str:
    """The run's provenance as static tables: recipe, policy set, models per role, runs."""
    policy = manifest.get("policy_set") or {}
    stages = [("run", manifest)] + [(s, manifest[s]) for s in ("dpo", "grading") if s in manifest]
    facts: list[list[Any]] = [
        ["directory", str(root)],
        ["recipe", " then ".join(str(section.get("recipe")) for _, section in stages)],
        ["policy set", f"{policy.get('name')} {policy.get('version')} ({policy.get('sha256')})"],
        ["aidsafe", manifest.get("aidsafe_version")],
    ]
    models = [
        [stage, role, model]
        for stage, section in stages
        for role, model in (section.get("config", {}).get("models") or {}).items()
    ]
    runs = [
        [stage, *(entry.get(k) for k in ("started", "wall_s", "done", "failed", "engine"))]
        for stage, section in stages
        for entry in section.get("runs", [])
    ]
    return (
        _table([], facts, "kv")
        + "<h3>Models per role</h3>"
        + _table(["stage", "role", "model"], models)
        + "<h3>Invocations</h3>"
        + _table(["stage", "started", "wall s", "done", "failed", "engine"], runs)
    )


def _asset(name: str) -> str:
    return (files("aidsafe") / "data" / name).read_text(encoding="utf-8")


def _agreement_charts(root: Path) -> list[str]:
    """A judge run with labels and a guard's P(unsafe) (`judge --threshold`): its agreement with
    the labels against the cut-off, the cut-off of highest kappa dashed."""
    path = RunDirectory(root).path(JUDGE_SUMMARY)
    try:
        curve = json.loads(path.read_text(encoding="utf-8"))["agreement"]["threshold_curve"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    points = curve["points"]
    return [
        charts.line_chart(
            "Agreement with the labels, by P(unsafe) cut-off",
            [point["threshold"] for point in points],
            [(name.replace("_", " "), [point[name] for point in points]) for name in CURVE_FIGURES],
            xlabel=f"cut-off: unsafe when P(unsafe) >= it ({curve['n']} rows, ROC AUC "
            f"{curve['roc_auc']}; dashed: highest kappa)",
            ylabel="share, kappa",
            marker=curve["best_kappa_threshold"],
        )
    ]


def build_view(root: Path, out: Path | None = None) -> ViewResult:
    """Write the page for the run directory `root` (default: ROOT/view.html)."""
    manifest, rows = run_rows(root)
    target = out or root / VIEW
    index: dict[str, Any] = {
        "ids": [],
        "titles": [],
        "facets": {name: {"values": [], "rows": []} for name in FACETS},
        "numbers": {name: [] for name in NUMBERS},
    }
    positions: dict[str, dict[str, int]] = {name: {} for name in FACETS}
    tally = Tally()
    chunks: list[str] = []
    pending: list[bytes] = []
    for row in rows:
        facets, numbers = summarize(row)
        index["ids"].append(row["id"])
        index["titles"].append(_title(row))
        for name in FACETS:
            values = index["facets"][name]["values"]
            known = positions[name]
            codes = []
            for value in facets.get(name, []):
                if value not in known:
                    known[value] = len(values)
                    values.append(value)
                codes.append(known[value])
            index["facets"][name]["rows"].append(codes)
        for name in NUMBERS:
            index["numbers"][name].append(numbers[name])
        tally.add(row)
        pending.append(_line(row))
        if len(pending) == ROWS_PER_CHUNK:
            chunks.append(_pack(b"\n".join(pending)))
            pending = []
    if pending:
        chunks.append(_pack(b"\n".join(pending)))
    count = len(index["ids"])
    meta: dict[str, Any] = {
        "name": root.resolve().name,
        "recipe": manifest.get("recipe"),
        "rows": count,
        "rows_per_chunk": ROWS_PER_CHUNK,
        "chunks": len(chunks),
        "labels": FACETS,
        "size": 0,
    }
    drawn = tally.charts() + _agreement_charts(root)
    charts_html = "".join(f"<figure>{svg}</figure>" for svg in drawn)
    head = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>aidsafe view: {html.escape(meta['name'])}</title>"
        f"<style>{_asset('view.css')}</style></head><body>\n"
    )
    body = (
        f"<header><h1>{html.escape(meta['name'])} <small>{html.escape(str(meta['recipe']))}"
        "</small></h1><nav><a id='tab-rows' href='#'>Rows</a> <a id='tab-charts' "
        "href='#tab=charts'>Charts</a> <a id='tab-run' href='#tab=run'>Run</a></nav>"
        "<p id='size'></p></header>\n"
        "<main id='app'><p id='loading'>Loading…</p>"
        "<noscript>This page needs JavaScript to list the rows; the charts and the run "
        "are below.</noscript></main>\n"
        f"<section id='charts'>{charts_html or '<p>No data to chart.</p>'}</section>\n"
        f"<section id='run'>{_run_table(root, manifest)}</section>\n"
        "<pre id='errors' hidden></pre>\n"
    )
    packed = _pack(
        json.dumps(index, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace"
        )
    )
    data = _block("index", packed) + "".join(_block(f"chunk-{n}", c) for n, c in enumerate(chunks))
    tail = f"<script>{_asset('view.js')}</script>\n</body></html>\n"
    # The page states its own size, so the parts are measured before they are written: the
    # size's digits settle after a pass or two.
    parts = [head + body, data, tail]
    rest = sum(len(part.encode("utf-8")) for part in parts)
    size = 0
    while True:
        meta["size"] = size
        meta_block = _block("meta", json.dumps(meta).replace("<", "\\u003c"), "application/json")
        total = rest + len(meta_block.encode("utf-8"))
        if total == size:
            break
        size = total
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for part in (head + body, meta_block, data, tail):
            handle.write(part)
    return ViewResult(target, count, size)
