"""Just enough PromQL lexing to list the metric names an expression reads.

Used by the tests of the alert rules and the Grafana dashboards: every name they reference
must be a metric the code exports, so a renamed metric cannot silently leave an alert that
never fires or a dashboard panel that stays empty.

Rules: string literals, label matchers ``{...}``, range/subquery brackets ``[...]``, numbers,
durations and Grafana variables (``$symbol``, ``${x}``, ``$__rate_interval``) are skipped; an
identifier followed by ``(`` is a function or aggregation; the parenthesised label lists after
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` are labels; keywords and
the binary set operators are not names. Everything else is a metric name.
"""
from __future__ import annotations

import re

_IDENT_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_IDENT = _IDENT_START | set("0123456789")
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LIST_KEYWORDS | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}


class PromQLSyntaxError(ValueError):
    pass


def _skip_string(s: str, i: int) -> int:
    quote = s[i]
    i += 1
    while i < len(s):
        if s[i] == "\\" and quote != "`":
            i += 2
            continue
        if s[i] == quote:
            return i + 1
        i += 1
    raise PromQLSyntaxError(f"unterminated string in {s!r}")


def _skip_block(s: str, i: int, close: str) -> int:
    i += 1
    while i < len(s):
        c = s[i]
        if c in "\"'`":
            i = _skip_string(s, i)
            continue
        if c == close:
            return i + 1
        i += 1
    raise PromQLSyntaxError(f"unbalanced {close!r} in {s!r}")


def tokenize(expr: str) -> list[str]:
    """Identifiers and punctuation; ``{`` / ``[`` stand for a whole matcher / range block."""
    s, i, out = expr, 0, []
    while i < len(s):
        c = s[i]
        if c.isspace():
            i += 1
        elif c == "#":  # comment to end of line
            while i < len(s) and s[i] != "\n":
                i += 1
        elif c in "\"'`":
            i = _skip_string(s, i)
            out.append('"')
        elif c == "{":
            i = _skip_block(s, i, "}")
            out.append("{")
        elif c == "[":
            i = _skip_block(s, i, "]")
            out.append("[")
        elif c == "$":  # Grafana variable: $name, ${name...}
            i += 1
            if i < len(s) and s[i] == "{":
                i = _skip_block(s, i, "}")
            else:
                while i < len(s) and s[i] in _IDENT:
                    i += 1
            out.append("$")
        elif c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
            while i < len(s) and (s[i] in _IDENT or s[i] == "." or (s[i] in "+-" and s[i - 1] in "eE")):
                i += 1
            out.append("0")
        elif c in _IDENT_START:
            j = i
            while j < len(s) and s[j] in _IDENT:
                j += 1
            out.append(s[i:j])
            i = j
        else:
            out.append(c)
            i += 1
    if out.count("(") != out.count(")"):
        raise PromQLSyntaxError(f"unbalanced parentheses in {expr!r}")
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by ``expr``."""
    toks = tokenize(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        t = toks[i]
        if not (t[0] in _IDENT_START):
            i += 1
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        low = t.lower()
        if low in _LABEL_LIST_KEYWORDS:
            if nxt == "(":  # skip the label list
                depth, i = 0, i + 1
                while i < len(toks):
                    depth += toks[i] == "("
                    depth -= toks[i] == ")"
                    i += 1
                    if depth == 0:
                        break
                continue
        elif low in _KEYWORDS:
            pass
        elif nxt == "(" or nxt.lower() in ("by", "without"):
            pass  # function, or aggregation (``sum by (x) (...)``)
        else:
            names.add(t)
        i += 1
    return names


# --------------------------------------------------------------------------- Grafana dashboards
#: Values for Grafana's built-in variables and the dashboards' own when a panel's query runs
#: outside Grafana (promtool, Prometheus' HTTP API): a plain PromQL expression.
GRAFANA_VARIABLES: dict[str, str] = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                                     "$service": ".*"}


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """``(where, expr)`` of every PromQL query of a Grafana dashboard (JSON model): each
    panel target (``where`` = the panel's title) and the metric selector of each
    ``label_values(<selector>, <label>)`` variable (``where`` = ``variable <name>``)."""
    out = [(p["title"], t["expr"]) for p in dashboard.get("panels", []) for t in p.get("targets", [])]
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if m:
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def expand_grafana_variables(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` with the Grafana variables of ``values`` (default ``GRAFANA_VARIABLES``)
    replaced; raises ``ValueError`` if a ``$`` variable is left."""
    for k, v in sorted((values or GRAFANA_VARIABLES).items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(k, v)
    if "$" in expr:
        raise ValueError(f"unexpanded Grafana variable in {expr!r}")
    return expr
