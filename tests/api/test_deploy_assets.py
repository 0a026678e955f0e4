"""deploy/: the Grafana dashboard and the Prometheus alert rules ask only for metrics, labels
and label values that a real coordinator's GET /metrics exports.

A misspelt name in PromQL is not an error anywhere: the panel stays empty and the alert never
fires. So every query is read here (a small PromQL tokeniser: selectors, their matchers,
``by``/``without``/``on`` label lists, function names) and checked against a scrape of a
coordinator on a real Postgres that has just done some work.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from coordinator.api.console.filters import FILTER_FIELDS
from coordinator.core.states import (
    CancelReason,
    Decision,
    GlobalStatus,
    Phase,
    TryVerdict,
)
from coordinator.dialects.base import CallOutcome
from coordinator.dialects.registry import names as dialect_names
from coordinator.metrics import ConnectionState, LoginRefusal, Metrics, ShedReason
from coordinator.settings import Settings
from tests.conftest import CoordinatorClient
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tcc-coordinator.json"
RULES = DEPLOY / "prometheus" / "tcc-alerts.yml"

# --- reading PromQL ------------------------------------------------------------------------

FUNCTIONS = frozenset(
    re.findall(
        r"\S+",
        """
        abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
        changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month
        day_of_week day_of_year days_in_month deg delta deriv double_exponential_smoothing
        end exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
        histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase
        irate label_join label_replace last_over_time ln log10 log2 mad_over_time
        max_over_time min_over_time minute month pi predict_linear present_over_time
        quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
        sort_by_label_desc sort_desc sqrt start stddev_over_time stdvar_over_time
        sum_over_time tan tanh time timestamp vector year
        """,
    )
)
AGGREGATIONS = frozenset(
    re.findall(
        r"\S+",
        """
        avg bottomk count count_values group limit_ratio limitk max min quantile stddev
        stdvar sum topk
        """,
    )
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LISTS | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
# Added by Prometheus to every series it scrapes; `up` is Prometheus's own.
TARGET_LABELS = frozenset({"job", "instance"})
PROMETHEUS_OWN = frozenset({"up"})

TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
                 (?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)
    at: int  # token index


@dataclass(frozen=True)
class Grouping:
    keyword: str
    labels: tuple[str, ...]
    scope: tuple[int, int]  # token indexes of the expression these labels apply to


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    groupings: list[Grouping] = field(default_factory=list)
    unknown_functions: list[str] = field(default_factory=list)


def tokenise(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:]!r} in {expr!r}")
        assert m.lastgroup is not None
        if m.lastgroup != "space":
            tokens.append(Token(m.lastgroup, m.group()))
        pos = m.end()
    return tokens


def unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def pairs(tokens: list[Token]) -> dict[int, int]:
    """Each bracket's partner, both ways."""
    partner: dict[int, int] = {}
    stack: list[int] = []
    for i, t in enumerate(tokens):
        if t.text in "({":
            stack.append(i)
        elif t.text in ")}":
            opening = stack.pop()
            partner[opening], partner[i] = i, opening
    assert not stack, "unbalanced brackets"
    return partner


def read_promql(expr: str) -> Query:
    tokens = tokenise(expr)
    partner = pairs(tokens)
    query = Query()

    def text(i: int) -> str:
        return tokens[i].text if 0 <= i < len(tokens) else ""

    def matchers(opening: int) -> tuple[tuple[str, str, str], ...]:
        inside = [t for t in tokens[opening + 1 : partner[opening]] if t.text != ","]
        assert len(inside) % 3 == 0, f"cannot read the matchers in {expr!r}"
        return tuple(
            (
                unquote(name.text) if name.kind == "string" else name.text,
                op.text,
                unquote(value.text),
            )
            for name, op, value in zip(inside[::3], inside[1::3], inside[2::3], strict=True)
        )

    i = 0
    while i < len(tokens):
        token = tokens[i]
        lowered = token.text.lower()
        if token.kind == "ident" and lowered in LABEL_LISTS and text(i + 1) == "(":
            close = partner[i + 1]
            labels = tuple(t.text for t in tokens[i + 2 : close] if t.kind == "ident")
            if lowered not in ("by", "without"):
                scope = (0, len(tokens))
            elif text(i - 1) == ")":  # sum (expr) by (labels)
                scope = (partner[i - 1], i - 1)
            else:  # sum by (labels) (expr)
                scope = (close + 1, partner[close + 1])
            query.groupings.append(Grouping(lowered, labels, scope))
            i = close + 1
        elif token.kind == "ident" and lowered in KEYWORDS:
            i += 1
        elif token.kind == "ident" and text(i + 1) == "(":
            if lowered not in FUNCTIONS | AGGREGATIONS:
                query.unknown_functions.append(token.text)
            i += 1
        elif token.kind == "ident" and lowered in AGGREGATIONS and text(i + 1) in LABEL_LISTS:
            i += 1
        elif token.kind == "ident":
            found = matchers(i + 1) if text(i + 1) == "{" else ()
            query.selectors.append(Selector(token.text, found, i))
            i = partner[i + 1] + 1 if text(i + 1) == "{" else i + 1
        elif token.text == "{":  # {__name__="..."}
            found = matchers(i)
            name = next((v for label, op, v in found if (label, op) == ("__name__", "=")), None)
            assert name is not None, f"a selector without a metric name in {expr!r}"
            query.selectors.append(Selector(name, found, i))
            i = partner[i] + 1
        else:
            i += 1
    return query


# --- what a scrape exports ----------------------------------------------------------------


@dataclass
class Exported:
    """Sample names a scrape exposes, with the labels and (where known) values of each."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    family: dict[str, str] = field(default_factory=dict)


SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def exported_by(scrape: str) -> Exported:
    """What the scrape shows; label names of families without samples yet from their
    declarations in coordinator/metrics.py; label values from the scrape and, for labels
    whose values are an enum of the coordinator, from that enum."""
    out = Exported()
    declared = {
        m._name: m._labelnames for m in vars(Metrics()).values() if isinstance(m, MetricWrapperBase)
    }
    for family in text_string_to_metric_families(scrape):
        names = [family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",))]
        for name in names:
            out.family[name] = family.name
            out.labels[name] = set(declared.get(family.name, ())) | (
                {"le"} if name.endswith("_bucket") else set()
            )
        for sample in family.samples:
            out.family.setdefault(sample.name, family.name)
            out.labels.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                out.values.setdefault((sample.name, label), set()).add(value)
    for name, family_name in out.family.items():
        for label in out.labels[name]:
            domain = label_domain(family_name, label)
            if domain is not None:
                out.values.setdefault((name, label), set()).update(domain)
    return out


def label_domain(family: str, label: str) -> frozenset[str] | None:
    """Every value a label can take, where the coordinator has an enum of them."""
    if label == "outcome":
        if family.startswith("tcc_participant_call"):
            return frozenset(v.value for v in (*TryVerdict, *CallOutcome))
        return None  # tcc_alerts: plain strings; only what a scrape shows is known
    if label == "reason":
        reasons: dict[str, frozenset[str]] = {
            "tcc_decisions": frozenset(r.value for r in CancelReason) | {"requested"},
            "tcc_inbound_connections_shed": frozenset(r.value for r in ShedReason),
            "tcc_console_login_refusals": frozenset(r.value for r in LoginRefusal),
        }
        return reasons.get(family)
    enums: dict[str, frozenset[str]] = {
        "status": frozenset(s.value for s in GlobalStatus),
        "phase": frozenset(p.value for p in Phase),
        "decision": frozenset(d.value for d in Decision),
        "dialect": frozenset(dialect_names()),
        "state": frozenset(s.value for s in ConnectionState),
    }
    return enums.get(label)


def problems(expr: str, exported: Exported) -> list[str]:
    """What in one query is not what the coordinator exports; empty when all is well."""
    query = read_promql(expr)
    found = [f"unknown function {f}()" for f in query.unknown_functions]
    if not query.selectors:
        found.append("no metric at all")

    def labels_of(metric: str) -> set[str]:
        if metric in PROMETHEUS_OWN:
            return set(TARGET_LABELS)
        return exported.labels.get(metric, set()) | TARGET_LABELS

    for s in query.selectors:
        if s.metric not in PROMETHEUS_OWN and s.metric not in exported.labels:
            close = difflib.get_close_matches(s.metric, exported.labels, n=1)
            found.append(f"{s.metric} is not exported" + (f" ({close[0]}?)" if close else ""))
            continue
        for label, op, value in s.matchers:
            if label == "__name__":
                continue
            if label not in labels_of(s.metric):
                found.append(f"{s.metric} has no label {label}")
                continue
            known = exported.values.get((s.metric, label))
            literal = op == "=" or (op == "=~" and re.fullmatch(r"[\w|]+", value))
            if known and literal and "$" not in value:
                for v in value.split("|") if op == "=~" else [value]:
                    if v not in known:
                        found.append(f'{s.metric}{{{label}="{v}"}} never occurs: {sorted(known)}')
    everywhere = [s.metric for s in query.selectors]
    for g in query.groupings:
        start, end = g.scope
        metrics = [s.metric for s in query.selectors if start <= s.at <= end] or everywhere
        for label in g.labels:
            # by (...) groups every series of its argument; on/ignoring/group_* need it on one side
            if g.keyword == "by":
                missing = [m for m in metrics if label not in labels_of(m)]
            else:
                missing = [] if any(label in labels_of(m) for m in metrics) else metrics
            if missing:
                found.append(f"{g.keyword} ({label}): not a label of {', '.join(missing)}")
    return found


# --- the files ----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too; rows themselves are not panels."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel.get("type") == "row":
            out.extend(panels({"panels": panel.get("panels", [])}))
        else:
            out.append(panel)
    return out


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def variable_queries(board: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """Grafana's ``label_values(selector, label)`` of each query variable: the selector,
    and the label it lists."""
    out: list[tuple[str, str, str | None]] = []
    for var in board["templating"]["list"]:
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
        assert m, f"variable {var['name']}: only label_values(selector, label) is checked"
        out.append((f"variable {var['name']}", m.group(1), m.group(2)))
    return out


def every_query() -> list[tuple[str, str]]:
    board = dashboard()
    queries = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in panels(board)
        for t in p["targets"]
    ]
    queries += [(where, expr) for where, expr, _ in variable_queries(board)]
    queries += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    return queries


# --- the tests ----------------------------------------------------------------------------


def test_dashboard__is_importable_grafana_json_whose_panels_all_query_prometheus() -> None:
    board = dashboard()
    assert board["title"]
    assert board["uid"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    rows = [p for p in board["panels"] if p.get("type") == "row"]
    ids = [p["id"] for p in board["panels"]] + [c["id"] for r in rows for c in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert panels(board)
    for panel in panels(board):
        assert panel["title"], panel
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_rules__each_alert_says_how_long_how_bad_and_what_to_do() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        name = rule.get("alert")
        assert isinstance(name, str), rule
        assert name, rule
        assert isinstance(rule.get("expr"), str), name
        assert rule["expr"].strip(), name
        assert re.fullmatch(r"(\d+(ms|[smhdwy]))+", str(rule.get("for"))), name
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
    assert len({r["alert"] for r in rules}) == len(rules)


def test_rules__cover_what_an_operator_must_hear_about() -> None:
    used = {s.metric for rule in alert_rules() for s in read_promql(rule["expr"]).selectors}
    assert {
        "up",
        "tcc_log_up",
        "tcc_parked_transactions",
        "tcc_oldest_unfinished_age_seconds",
        "tcc_participant_calls_total",
        "tcc_timeouts_total",
        "tcc_alerts_total",
        "tcc_inbound_connections",
        "tcc_inbound_connections_limit",
        "tcc_inbound_connections_shed_total",
    } <= used
    parked = next(r for r in alert_rules() if "tcc_parked_transactions" in r["expr"])
    assert "tcc list --status failed_to_confirm" in parked["annotations"]["description"]
    assert "/ui/" in parked["annotations"]["description"]


def test_promql_reader__finds_metrics_labels_and_groupings_not_functions_or_keywords() -> None:
    query = read_promql(
        'histogram_quantile(0.99, sum by (le, phase) (rate(a_bucket{job=~"$job", x="y"}'
        "[$__rate_interval]))) / on (job) group_left (z) sum(b_total offset 5m) > bool 1e3"
        ' and max(c) by (status) or {__name__="d"}'
    )
    assert [s.metric for s in query.selectors] == ["a_bucket", "b_total", "c", "d"]
    assert query.selectors[0].matchers == (("job", "=~", "$job"), ("x", "=", "y"))
    assert [(g.keyword, g.labels) for g in query.groupings] == [
        ("by", ("le", "phase")),
        ("on", ("job",)),
        ("group_left", ("z",)),
        ("by", ("status",)),
    ]
    assert not query.unknown_functions
    assert read_promql("rat(x[5m])").unknown_functions == ["rat"]


def test_checker__catches_a_misspelt_metric_label_value_or_grouping() -> None:
    exported = Exported(
        labels={"tcc_timeouts_total": set(), "tcc_participant_calls_total": {"phase", "outcome"}},
        values={("tcc_participant_calls_total", "phase"): {"try", "confirm", "cancel"}},
    )
    assert problems("sum(rate(tcc_timeouts_total[5m]))", exported) == []
    assert problems("sum by (job) (rate(tcc_timeouts_total[5m])) > 0 or up == 0", exported) == []
    assert problems("rate(tcc_timeout_total[5m])", exported) == [
        "tcc_timeout_total is not exported (tcc_timeouts_total?)"
    ]
    assert problems('tcc_participant_calls_total{phse="try"}', exported) == [
        "tcc_participant_calls_total has no label phse"
    ]
    assert problems('tcc_participant_calls_total{phase=~"try|confrim"}', exported) == [
        "tcc_participant_calls_total{phase=\"confrim\"} never occurs: ['cancel', 'confirm', 'try']"
    ]
    assert problems("sum by (outcome) (rate(tcc_timeouts_total[5m]))", exported) == [
        "by (outcome): not a label of tcc_timeouts_total"
    ]


async def drive_some_transactions(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> str:
    """Confirmed, refused, timed out by recovery, cancelled by an operator, one left open;
    then the scrape."""
    await coordinator.post("/v1/transactions", {"gid": "ok"})
    await coordinator.post("/v1/transactions/ok/try", participant.branch("b"))
    await coordinator.post("/v1/transactions/ok/confirm")

    await coordinator.post("/v1/transactions", {"gid": "no"})
    participant.script("try", Reply(status=409))
    await coordinator.post("/v1/transactions/no/try", participant.branch("b"))

    await coordinator.post("/v1/transactions", {"gid": "late", "timeout_s": 0.3})
    await coordinator.post("/v1/transactions/late/try", participant.branch("b"))

    await coordinator.post("/v1/transactions", {"gid": "op"})
    await coordinator.post("/v1/transactions/op/cancel", {"reason": "by hand"})

    await coordinator.post("/v1/transactions", {"gid": "open"})

    # A registered participant, so that its breaker's state is exported.
    await coordinator.request(
        "PUT", "/v1/participants/stock", {"base_url": "http://127.0.0.1:9/stock"}
    )

    async def scrape() -> str:
        status, text, _ = await coordinator.request("GET", "/metrics")
        assert status == 200
        assert isinstance(text, str)
        return text

    def timed_out(text: str) -> bool:  # recovery cancelled "late" at its deadline
        samples = (s for f in text_string_to_metric_families(text) for s in f.samples)
        return any(s.name == "tcc_timeouts_total" and s.value >= 1 for s in samples)

    return await eventually(scrape, timed_out)


async def test_deploy_assets__ask_only_for_metrics_labels_and_values_a_coordinator_exports(
    coordinator: CoordinatorClient, participant: FakeParticipant
) -> None:
    exported = exported_by(await drive_some_transactions(coordinator, participant))
    assert "tcc_recovery_claims_total" in exported.labels  # the scrape is a real one
    assert exported.labels["tcc_recovery_claims_total"] >= {"status"}

    found = [f"{where}: {p}" for where, expr in every_query() for p in problems(expr, exported)]
    for where, expr, label in variable_queries(dashboard()):
        for s in read_promql(expr).selectors:
            if label not in exported.labels.get(s.metric, set()) | TARGET_LABELS:
                found.append(f"{where}: {s.metric} has no label {label}")
    assert not found, "\n".join(found)


async def test_dashboard__shows_every_metric_the_coordinator_exports(
    coordinator: CoordinatorClient,
) -> None:
    status, text, _ = await coordinator.request("GET", "/metrics")
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(text)}
    board = dashboard()
    shown = {
        exported_family
        for p in panels(board)
        for t in p["targets"]
        for s in read_promql(t["expr"]).selectors
        for exported_family in [re.sub(r"_(total|bucket|sum|count)$", "", s.metric), s.metric]
    }
    missing = sorted(families - shown)
    assert missing == [], f"add a panel to {DASHBOARD.name} for {missing}"


CONSOLE_URL = "${console_url}"


def console_links(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, url) of every dashboard link and panel data link."""
    links = [(f"dashboard link {link['title']!r}", link["url"]) for link in board["links"]]
    for panel in panels(board):
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
            links.append((f"panel {panel['title']!r} link {link['title']!r}", link["url"]))
    return links


def test_dashboard__links_to_the_consoles_filtered_list_under_a_console_url_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    console = variables["console_url"]
    assert console["type"] == "textbox"
    assert console["query"] == "http://127.0.0.1:36789"  # tcc serve's default port
    links = console_links(board)
    urls = [url for _, url in links]
    assert f"{CONSOLE_URL}/ui/transactions?status=failed_to_confirm" in urls
    assert f"{CONSOLE_URL}/ui/transactions?status=failed_to_cancel" in urls
    # Panels of a status link to that status: the park counters and the backlog at least.
    with_links = {where.split(" link ")[0] for where, _ in links if where.startswith("panel")}
    assert {"panel 'Parked (need an operator)'", "panel 'Unfinished transactions by status'"} <= (
        with_links
    )
    statuses = {s.value for s in GlobalStatus}
    for where, url in links:
        assert url.startswith(f"{CONSOLE_URL}/ui/"), where
        path, _, query = url.removeprefix(CONSOLE_URL).partition("?")
        assert path in {"/ui/", "/ui/transactions"}, where
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            assert name in FILTER_FIELDS, f"{where}: the console's list has no filter {name}"
            if name == "status" and not value.startswith("${"):
                assert value in statuses, f"{where}: no status {value}"


async def test_dashboard__console_links_open_the_list_filtered(
    coordinator: CoordinatorClient,
) -> None:
    """Each link, with Grafana's variables filled in as a panel would, opens a real
    console's list (not a 400 for a filter it does not know)."""
    await coordinator.post("/v1/transactions", {"gid": "shown-when-trying"})
    filled = {"${__field.labels.status}": "trying", "${__field.labels.dialect}": "tcc"}
    for where, url in console_links(dashboard()):
        path = url.removeprefix(CONSOLE_URL)
        for variable, example in filled.items():
            path = path.replace(variable, example)
        assert "$" not in path, f"{where}: a variable this test does not fill in"
        status, page, _ = await coordinator.request("GET", path)
        assert status == 200, f"{where}: {path} answered {status}"
        if "status=" in path:  # the list is filtered: only the trying transaction's status
            assert ("shown-when-trying" in page) == ("status=trying" in path), where


def test_deploy_docs__name_only_settings_and_statuses_that_exist() -> None:
    text = "\n".join(p.read_text() for p in sorted(DEPLOY.rglob("*")) if p.is_file())
    settings = {f"TCC_{name.upper()}" for name in Settings.model_fields}
    assert set(re.findall(r"\bTCC_[A-Z_]+[A-Z]\b", text)) <= settings
    statuses = set(re.findall(r"tcc list --status (\w+)", text))
    assert statuses
    assert statuses <= {s.value for s in GlobalStatus}
