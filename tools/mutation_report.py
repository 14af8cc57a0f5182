"""Per-module scores of the last mutmut run (tools/mutation.sh; run in build/mutation/).

Prints, per module, the mutants and their outcomes and the score

    killed / (mutants - equivalent)      (a timeout counts as killed: the tests noticed)

where "equivalent" are the survivors judged not to change behaviour: those that only change the text
of an error or warning message (detected here from the code, see ``message_only``), and those listed
in tools/mutation_equivalents.toml with the reason. The reference twin (mac.reference plus
rollout.py's reference noise draw) is scored as one group; the rest of rollout.py (validation, native
dispatch) as another.
Writes every survivor's diff to survivors.txt beside mutants/.
"""

from __future__ import annotations

import ast
import json
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant, read_functions_from_index
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import mangled_name_from_mutant_name

import libcst as cst

TOOLS = Path(__file__).resolve().parent
# The reference twin: the pure PyTorch best-of-N and rollout (mac.reference, the tests' oracle) and
# the reference path's noise draw, which stayed in rollout.py beside the other backends' seeding.
TWIN = "reference twin (mac.reference, rollout._reference_noise)"
TWIN_IN_ROLLOUT = {"_reference_noise"}
TARGET = 0.90
TARGETED = ("mac.agent", "mac.data.sampler", TWIN)


def group_of(module: str, function: str) -> str:
    if module == "mac.reference":
        return TWIN
    if module == "mac.rollout":
        name = function.rpartition("ǁ")[2] if "ǁ" in function else function.removeprefix("x_")
        return TWIN if name in TWIN_IN_ROLLOUT else "mac.rollout (validation, dispatch)"
    return module


# ------------------------------------------------------------------------------------ equivalence

def _differences(a, b, path=()):
    """Where two ASTs differ: a list of (kind, path) with kind "constant" (a Constant's value),
    "node" (another node type) or "length" (a list of another length); path: (node, field, index)."""
    if type(a) is not type(b):
        return [("node", path)]
    if isinstance(a, ast.Constant):
        return [] if (type(a.value), a.value) == (type(b.value), b.value) else [("constant", path)]
    if isinstance(a, list):
        if len(a) != len(b):
            return [("length", path)]
        return [d for i, (x, y) in enumerate(zip(a, b))
                for d in _differences(x, y, path[:-1] + ((path[-1][0], path[-1][1], i),))]
    if not isinstance(a, ast.AST):
        return [] if a == b else [("node", path)]
    out = []
    for field in a._fields:
        out += _differences(getattr(a, field, None), getattr(b, field, None), path + ((a, field, None),))
    return out


def _is_warn(call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "warn") or (isinstance(f, ast.Name) and f.id == "warn")


def _message_call(path, i) -> str | None:
    """"raise" if path[i] is the call of a ``raise X(...)``, "warn" for ``warnings.warn(...)``."""
    node = path[i][0]
    if not isinstance(node, ast.Call):
        return None
    if i > 0 and isinstance(path[i - 1][0], ast.Raise) and path[i - 1][1] == "exc":
        return "raise"
    return "warn" if _is_warn(node) else None


def _message_only_difference(kind: str, path) -> bool:
    for i in range(len(path) - 1, -1, -1):
        node, field, index = path[i]
        if field != "args":
            continue
        call = _message_call(path, i)
        if call is None:
            continue
        if kind == "length" and i == len(path) - 1:   # the message dropped: raise X() (not a warning's:
            return call == "raise"                     # its category would become the message)
        if index != 0:         # another argument (a warning's category)
            return False
        inner = path[i + 1:]
        if kind == "node":     # the whole message replaced (by None)
            return not inner
        # a string constant of the message, not one inside a {formatted} expression
        return not any(isinstance(n, ast.FormattedValue) for n, _, _ in inner)
    return False


def message_only(orig: str, mutant: str) -> bool:
    """Whether the mutant differs from the original only in the message of a ``raise X(message)`` or a
    ``warnings.warn(message, ...)``: its string constants, or the whole message replaced by None or
    dropped (the exception's type and when it is raised are unchanged; an expression inside an
    f-string's braces does not count: it may raise)."""
    try:
        a, b = ast.parse(orig), ast.parse(mutant)
    except SyntaxError:
        return False
    diffs = _differences(a, b)
    return bool(diffs) and all(_message_only_difference(kind, path) for kind, path in diffs)


def _keyword_names(node) -> set[str]:
    return {k.arg for k in node} if isinstance(node, list) else set()


def device_only(orig: str, mutant: str) -> bool:
    """Whether the mutant differs from the original only in a ``device=`` keyword argument: its value
    changed (to None) or the keyword dropped. Every tensor of a run without an accelerator is on the
    CPU, the default device, so such a mutant cannot change a CPU-only run: the GPU tests kill it where
    a GPU is present. Reported in a column of its own, out of the score of a CPU-only run."""
    try:
        a, b = ast.parse(orig), ast.parse(mutant)
    except SyntaxError:
        return False
    diffs = _differences(a, b)

    if not diffs:
        return False
    for kind, path in diffs:
        if kind == "length":
            node, field, _ = path[-1]
            if field != "keywords":
                return False
            mutant_node = _follow(b, path)
            if mutant_node is None or _keyword_names(node.keywords) - _keyword_names(mutant_node.keywords) != {"device"}:
                return False
        elif not any(isinstance(n, ast.keyword) and n.arg == "device" for n, _, _ in path):
            return False
    return True


def _follow(tree, path):
    """The node of ``tree`` at ``path`` (a path into the other tree of the same shape)."""
    node = tree
    for _, field, index in path[:-1]:
        node = getattr(node, field, None)
        if index is not None:
            node = node[index] if isinstance(node, list) and index < len(node) else None
        if node is None:
            return None
    return node


def function_sources(name: str, path: Path) -> tuple[str, str]:
    functions = read_functions_from_index(name, path)
    if functions is None:
        raise RuntimeError(f"no line index for {name}: rerun tools/mutation.sh")
    codes = [cst.Module([f]).code for f in functions]
    # methods come out indented
    return tuple(_dedent(c) for c in codes)


def _dedent(code: str) -> str:
    import textwrap
    return textwrap.dedent(code)


def changed_lines(diff: str) -> tuple[str, str]:
    minus = "\n".join(line[1:].strip() for line in diff.splitlines()
                      if line.startswith("-") and not line.startswith("---"))
    plus = "\n".join(line[1:].strip() for line in diff.splitlines()
                     if line.startswith("+") and not line.startswith("+++"))
    return minus, plus


def _matches(entry: dict, plus: str) -> bool:
    """An entry names its mutant by the mutated line (``mutated``) or, for a family of mutants with one
    reason (e.g. every mutation of one no-op on the CPU), by a part of it (``mutated_contains``)."""
    if "mutated" in entry:
        return entry["mutated"].strip() == plus
    return entry["mutated_contains"] in plus


def load_listed() -> list[dict]:
    path = TOOLS / "mutation_equivalents.toml"
    if not path.exists():
        return []
    return tomllib.loads(path.read_text())["equivalent"]


# ------------------------------------------------------------------------------------ report

def main() -> int:
    metas = sorted(Path("mutants").glob("src/**/*.py.meta"))
    if not metas:
        print("no results: run tools/mutation.sh first")
        return 1
    listed = load_listed()
    used = Counter()
    rows = defaultdict(Counter)
    survivors_out = []
    left = defaultdict(list)
    for meta in metas:
        path = Path(str(meta.relative_to("mutants"))[: -len(".meta")])
        module = str(path.with_suffix("")).replace("/", ".").removeprefix("src.")
        data = json.loads(meta.read_text())
        for name, code in sorted(data["exit_code_by_key"].items()):
            function = mangled_name_from_mutant_name(name).rpartition(".")[2]
            group = group_of(module, function)
            status = status_by_exit_code[code]
            rows[group]["mutants"] += 1
            # a segfault is a test process that crashed under the mutant: the tests noticed
            if status in ("killed", "timeout", "caught by type check", "segfault"):
                rows[group]["killed" if status != "timeout" else "timeout"] += 1
                continue
            rows[group][status] += 1
            if status == "not checked":   # an interrupted run
                continue
            diff = get_diff_for_mutant(name, path=path)
            minus, plus = changed_lines(diff)
            why, kind = None, None
            sources = function_sources(name, path)
            if message_only(*sources):
                why, kind = "only the text of an error/warning message", "message text"
            elif device_only(*sources):
                why, kind = "only a device= argument (every tensor of a CPU-only run is on the CPU)", "device"
            else:
                for i, e in enumerate(listed):
                    if e["function"] == f"{module}.{function}" and _matches(e, plus):
                        why, kind = e["why"], "listed"
                        used[i] += 1
                        break
            if why is not None:
                rows[group]["equivalent"] += 1
                rows[group][f"equivalent: {kind}"] += 1
            else:
                left[group].append((name, status, minus, plus))
            survivors_out.append(f"# {name}: {status}" + (f" -- EQUIVALENT: {why}" if why else "") + f"\n{diff}\n")
    Path("survivors.txt").write_text("\n".join(survivors_out))

    head = (f"{'module':38} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} "
            f"{'other':>5} {'equiv.':>6} {'score':>7}")
    print(head)
    print("-" * len(head))
    total = Counter()
    for group in sorted(rows):
        r = rows[group]
        total.update(r)
        print(_row(group, r))
    print("-" * len(head))
    print(_row("all", total))
    print("score = (killed + timeout) / (mutants - equivalent); equivalent = message text "
          f"{total['equivalent: message text']}, device-only {total['equivalent: device']} (killed only "
          "where the GPU tests run), listed in tools/mutation_equivalents.toml with the reason "
          f"{total['equivalent: listed']}")
    for group in TARGETED:
        r = rows.get(group)
        if r:
            s = _score(r)
            print(f"target {TARGET:.0%} of the non-equivalent mutants killed: {group} {s:.1%} "
                  + ("ok" if s >= TARGET else "BELOW"))
    stale = [e for i, e in enumerate(listed) if not used[i]]
    if stale:
        print(f"\n{len(stale)} entries of tools/mutation_equivalents.toml match no survivor (killed now, or "
              "the code changed):")
        for e in stale:
            print(f"  {e['function']}: {e.get('mutated', e.get('mutated_contains'))}")
    print("\nnon-equivalent survivors (diffs of all survivors: build/mutation/survivors.txt;"
          " `tools/mutation.sh mutmut show NAME`):")
    for group in sorted(left):
        print(f"  {group}: {len(left[group])}")
        for name, status, minus, plus in left[group]:
            print(f"    {name} [{status}]\n      - {minus[:150]}\n      + {plus[:150]}")
    return 0


def _score(r: Counter) -> float:
    den = r["mutants"] - r["equivalent"]
    return (r["killed"] + r["timeout"]) / den if den else 1.0


def _row(group: str, r: Counter) -> str:
    other = r["mutants"] - r["killed"] - r["timeout"] - r["survived"] - r["no tests"]
    return (f"{group:38} {r['mutants']:7d} {r['killed']:6d} {r['timeout']:7d} {r['survived']:8d} "
            f"{r['no tests']:8d} {other:5d} {r['equivalent']:6d} {_score(r):7.1%}")


if __name__ == "__main__":
    sys.exit(main())
