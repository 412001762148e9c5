"""What a real cluster needs beyond the schema: CronJobs, names, resources, scheduling, Kueue,
``--patch``, and the wrapped command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from restartable.cli import main as cli_main
from restartable.errors import MissingDriver, UsageError
from restartable.kube import WorkloadSpec, build, max_name_length, merge_patch
from restartable.kube.cron import check_schedule, check_time_zone

DNS_LABEL_MAX = 63


def _spec(kind: str = "job", **kw: Any) -> WorkloadSpec:
    base: dict[str, Any] = {
        "name": "export",
        "image": "reg/export:1",
        "command": ("python", "/app/job.py"),
        "store_secret": "db",
    }
    if kind == "cronjob":
        base["schedule"] = "30 2 * * *"
    if kind == "indexed-job":
        base["completions"] = 4
    return WorkloadSpec(kind=kind, **{**base, **kw})  # type: ignore[arg-type]


def _workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] in ("Job", "CronJob", "StatefulSet"))


def _job_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "CronJob" else doc


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return _job_of(doc)["spec"]["template"]["spec"]


# -- CronJob ---------------------------------------------------------------------------------------


def test_cronjob_is_the_job_on_a_schedule_forbidding_overlap() -> None:
    built = build(_spec("cronjob", pvc="1Gi", store_secret=None, time_zone="Europe/Paris"))
    pvc, cron = built.documents
    assert pvc["metadata"]["name"] == "export-checkpoints"
    spec = cron["spec"]
    assert spec["schedule"] == "30 2 * * *" and spec["timeZone"] == "Europe/Paris"
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] == 3600
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    # The same Job as `k8s job` (same pod template and failure policy), minus its TTL.
    job = _workload(build(_spec("job", pvc="1Gi", store_secret=None)).documents)
    del job["spec"]["ttlSecondsAfterFinished"]
    assert spec["jobTemplate"]["spec"] == job["spec"]
    env = {e["name"]: e for e in _pod(cron)["containers"][0]["env"]}
    assert (
        env["RESTARTABLE_RUN"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['batch.kubernetes.io/controller-uid']"
    )
    custom = _workload(
        build(_spec("cronjob", starting_deadline=600, successful_history=1, failed_history=5, ttl=7200)).documents
    )["spec"]
    assert (
        custom["startingDeadlineSeconds"],
        custom["successfulJobsHistoryLimit"],
        custom["failedJobsHistoryLimit"],
    ) == (600, 1, 5)
    assert custom["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] == 7200


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"schedule": None}, "needs --schedule"),
        ({"schedule": "CRON_TZ=UTC 0 2 * * *"}, "--time-zone"),
        ({"schedule": "TZ=Europe/Paris 0 2 * * *"}, "--time-zone"),
        ({"schedule": "0 2 * *"}, "4 fields"),
        ({"schedule": "0 0 2 * * *"}, "no seconds field"),
        ({"schedule": "60 2 * * *"}, "outside 0-59"),
        ({"schedule": "0 24 * * *"}, "outside 0-23"),
        ({"schedule": "0 2 0 * *"}, "outside 1-31"),
        ({"schedule": "0 2 * 13 *"}, "outside 1-12"),
        ({"schedule": "0 2 * * 7"}, "outside 0-6"),
        ({"schedule": "0 2 * * MON-XYZ"}, "not a number"),
        ({"schedule": "*/0 * * * *"}, "positive"),
        ({"schedule": "0 5-2 * * *"}, "ends before"),
        ({"schedule": "@fortnightly"}, "macros"),
        ({"time_zone": "Local"}, "explicit IANA"),
        ({"time_zone": "Mars/Olympus"}, "unknown --time-zone"),
        ({"time_zone": "europe/paris"}, "did you mean Europe/Paris"),
        ({"time_zone": "../../etc/passwd"}, "unknown --time-zone"),
        ({"starting_deadline": 5}, "at least 10"),
        ({"failed_history": -1}, "0 or more"),
        ({"completions": 3}, "indexed-job"),
    ],
)
def test_cronjob_refusals(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build(_spec("cronjob", **kw))


def test_cron_options_belong_to_cronjobs_only() -> None:
    with pytest.raises(UsageError, match="belong to CronJobs"):
        build(_spec("job", schedule="@daily"))
    with pytest.raises(UsageError, match="belong to CronJobs"):
        build(_spec("statefulset", time_zone="UTC"))


_FIELD = st.one_of(
    st.just("*"),
    st.integers(0, 59).map(str),
    st.tuples(st.integers(0, 29), st.integers(30, 59)).map(lambda r: f"{r[0]}-{r[1]}"),
    st.integers(1, 30).map(lambda s: f"*/{s}"),
)


@settings(max_examples=150, deadline=None)
@given(
    minute=_FIELD,
    hour=st.sampled_from(["*", "0", "23", "1-5", "*/6", "2,14"]),
    dom=st.sampled_from(["*", "?", "1", "31", "1-15", "*/2"]),
    month=st.sampled_from(["*", "1", "12", "JAN-MAR", "jun"]),
    dow=st.sampled_from(["*", "?", "0", "6", "MON-FRI", "sun,sat", "1-5/2"]),
)
def test_every_valid_five_field_schedule_is_accepted(minute: str, hour: str, dom: str, month: str, dow: str) -> None:
    schedule = f"{minute} {hour} {dom} {month} {dow}"
    assert check_schedule(f"  {schedule} ") == schedule


@pytest.mark.parametrize(
    "macro", ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@DAILY"]
)
def test_macros_are_accepted(macro: str) -> None:
    assert check_schedule(macro) == macro.lower()


def test_time_zones_are_iana_names() -> None:
    assert check_time_zone("America/New_York") == "America/New_York"
    assert check_time_zone("Etc/UTC") == "Etc/UTC"


# -- names a cluster accepts -----------------------------------------------------------------------


def _derived(kind: str, name: str, completions: int) -> list[str]:
    """The label values and hostnames Kubernetes derives from ``name`` (each must be a DNS label)."""
    if kind == "cronjob":
        # The Job: NAME-<scheduled time in minutes>; the API reserves 11 characters for it.
        return [f"{name}-{'9' * 10}"]
    if kind == "statefulset":
        return [f"{name}-{'x' * 10}", f"{name}-0"]  # controller-revision-hash (uint32, 10 chars); pod name
    if kind == "indexed-job":
        return [f"{name}-{completions - 1}"]  # the hostname of the highest index
    return [name]  # the job-name label


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["job", "indexed-job", "cronjob", "statefulset"]),
    length=st.integers(40, 70),
    completions=st.sampled_from([1, 9, 10, 11, 100, 101, 1000, 99999, 100000]),
)
def test_a_name_is_accepted_exactly_when_every_name_derived_from_it_is_valid(
    kind: str, length: int, completions: int
) -> None:
    name = ("a" * length)[:length]
    fits = length <= DNS_LABEL_MAX and all(len(d) <= DNS_LABEL_MAX for d in _derived(kind, name, completions))
    kw: dict[str, Any] = {"name": name}
    if kind == "indexed-job":
        kw["completions"] = completions
    if fits:
        docs = build(_spec(kind, **kw)).documents
        assert _workload(docs)["metadata"]["name"] == name
        assert length <= max_name_length(kind, completions if kind == "indexed-job" else None)
    else:
        with pytest.raises(UsageError, match=r"too long .*at most \d+ characters"):
            build(_spec(kind, **kw))


def test_the_name_limits_per_kind_and_their_reasons() -> None:
    assert max_name_length("job") == 63 and max_name_length("cronjob") == 52
    assert max_name_length("statefulset") == 52
    assert [max_name_length("indexed-job", c) for c in (1, 10, 11, 100_000)] == [61, 61, 60, 57]
    with pytest.raises(UsageError, match="kubernetes/kubernetes#64023"):
        build(_spec("statefulset", name="s" * 53))
    with pytest.raises(UsageError, match="hostname"):
        build(_spec("indexed-job", name="i" * 62, completions=11))
    with pytest.raises(UsageError, match="11 characters"):
        build(_spec("cronjob", name="c" * 53))
    # The claim and the Secret named after the longest Job are valid too.
    docs = build(_spec("job", name="j" * 63, store_secret=None, store_url="redis://cache:6379/0")).documents
    assert docs[0]["metadata"]["name"] == "j" * 63 + "-store"
    docs = build(_spec("job", name="j" * 63, store_secret=None, pvc="1Gi")).documents
    assert docs[0]["metadata"]["name"] == "j" * 63 + "-checkpoints"


# -- resources and scheduling ----------------------------------------------------------------------


def test_resources_default_to_requests_with_a_memory_limit_only() -> None:
    for kind in ("job", "indexed-job", "cronjob", "statefulset"):
        main = _pod(_workload(build(_spec(kind)).documents))["containers"][0]
        assert main["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}}
    main = _pod(_workload(build(_spec(cpu="2", memory="1.5Gi", cpu_limit="4", memory_limit="2Gi")).documents))[
        "containers"
    ][0]
    assert main["resources"] == {"requests": {"cpu": "2", "memory": "1.5Gi"}, "limits": {"cpu": "4", "memory": "2Gi"}}


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"memory": "256m"}, "millibytes"),
        ({"memory": "lots"}, "Kubernetes quantity"),
        ({"cpu": "0"}, "more than zero"),
        ({"cpu": "0.0001"}, "smallest CPU amount is 1m"),
        ({"cpu": "500m", "cpu_limit": "200m"}, "below the request"),
        ({"memory": "1Gi", "memory_limit": "512Mi"}, "below the request"),
        ({"active_deadline": 0}, "at least 1"),
        ({"priority_class": "High_Priority"}, "PriorityClass"),
        ({"queue": "Team Queue"}, "LocalQueue"),
    ],
)
def test_resource_and_scheduling_refusals(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build(_spec(**kw))


def test_quantities_compare_by_value_across_suffixes() -> None:
    build(_spec(memory="1G", memory_limit="1Gi"))  # 1e9 <= 2**30
    build(_spec(cpu="0.5", cpu_limit="500m"))
    with pytest.raises(UsageError, match="below the request"):
        build(_spec(memory="1Gi", memory_limit="1G"))


def test_deadline_priority_and_kueue_on_jobs_and_cronjobs() -> None:
    job = _workload(build(_spec(active_deadline=7200, priority_class="batch-low", queue="team-a")).documents)
    assert job["spec"]["activeDeadlineSeconds"] == 7200 and job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert _pod(job)["priorityClassName"] == "batch-low"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    cron = _workload(build(_spec("cronjob", queue="team-a", active_deadline=3600)).documents)
    template = cron["spec"]["jobTemplate"]
    assert template["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert template["spec"]["suspend"] is True and template["spec"]["activeDeadlineSeconds"] == 3600
    assert "kueue.x-k8s.io/queue-name" not in cron["metadata"]["labels"] and "suspend" not in cron["spec"]
    plain = _workload(build(_spec()).documents)
    assert "suspend" not in plain["spec"] and "priorityClassName" not in _pod(plain)
    sts = _workload(build(_spec("statefulset", priority_class="batch-low")).documents)
    assert _pod(sts)["priorityClassName"] == "batch-low"
    for kw in ({"queue": "team-a"}, {"active_deadline": 60}):
        with pytest.raises(UsageError, match="belong to Jobs"):
            build(_spec("statefulset", **kw))


# -- the command --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command,expected",
    [
        (("python", "/app/job.py", "-v"), ["python", "-m", "restartable", "run", "/app/job.py", "-v"]),
        (("/opt/venv/bin/python3.12", "job.py"), ["/opt/venv/bin/python3.12", "-m", "restartable", "run", "job.py"]),
        (("python", "-u", "/app/job.py"), ["python", "-u", "/app/job.py"]),  # interpreter options: left alone
        (("python", "-m", "app.export"), ["python", "-m", "app.export"]),
        (("/app/export", "--fast"), ["/app/export", "--fast"]),
        (("pythonista", "x.py"), ["pythonista", "x.py"]),
    ],
)
def test_a_plain_python_script_runs_under_the_exit_code_contract(command: tuple[str, ...], expected: list[str]) -> None:
    main = _pod(_workload(build(_spec(command=command)).documents))["containers"][0]
    assert main["command"] == expected
    verbatim = _pod(_workload(build(_spec(command=command, wrap=False)).documents))["containers"][0]
    assert verbatim["command"] == list(command)


def test_the_wrapped_command_gives_a_script_without_decorator_its_exit_code(tmp_path: Path) -> None:
    # What the pod runs: the library error escapes before any Job exists (a WorkQueue-only or
    # store-parsing script); the wrapper still ends it with the permanent code, one line.
    script = tmp_path / "job.py"
    script.write_text("from restartable.errors import UsageError\nraise UsageError('bad --day')\n")
    command = _pod(_workload(build(_spec(command=("python", str(script)))).documents))["containers"][0]["command"]
    proc = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "bad --day" in proc.stderr and "Traceback" not in proc.stderr


# -- --patch ------------------------------------------------------------------------------------------


RFC7386_EXAMPLES = [  # RFC 7386, Appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target,patch,result", RFC7386_EXAMPLES)
def test_merge_patch_follows_rfc_7386(target: Any, patch: Any, result: Any) -> None:
    before = json.dumps(target)
    assert merge_patch(target, patch) == result
    assert json.dumps(target) == before  # the target is not modified


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(target=_JSON, patch=_JSON)
def test_merge_patch_is_idempotent_and_leaves_no_nulls_it_was_given(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
    if isinstance(patch, dict):
        for key, value in patch.items():
            if value is None:
                assert key not in once
            elif not isinstance(value, dict):
                assert once[key] == value


def _kv_or_skip() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")


def test_patch_adds_fields_we_have_no_flag_for_and_is_validated(tmp_path: Path) -> None:
    _kv_or_skip()
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "nodeSelector": {"disktype": "ssd"},
                    "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                }
            }
        },
        "metadata": {"annotations": {"team": "data"}},
    }
    job = _workload(build(_spec(patch=patch)).documents)
    assert _pod(job)["nodeSelector"] == {"disktype": "ssd"} and _pod(job)["tolerations"][0]["key"] == "batch"
    assert job["metadata"]["annotations"] == {"team": "data"}
    assert _pod(job)["containers"][0]["name"] == "main"  # merged, not replaced
    cron = _workload(build(_spec("cronjob", patch={"spec": {"suspend": True}})).documents)
    assert cron["spec"]["suspend"] is True


@pytest.mark.parametrize(
    "patch,error,match",
    [
        (
            {"spec": {"template": {"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}}},
            UsageError,
            "pod-security/host-path-volumes",
        ),
        ({"spec": {"template": {"spec": {"securityContext": None}}}}, UsageError, "pod-security/running-as-non-root"),
        ({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}}, UsageError, "never-with-failure-policy"),
        ({"spec": {"template": {"spec": {"nodeSelectr": {"a": "b"}}}}}, UsageError, "Kubernetes schema"),
        ({"spec": {"backoffLimit": "six"}}, UsageError, "Kubernetes schema"),
        ({"metadata": {"name": "other"}}, UsageError, "metadata.name"),
        ({"kind": "Deployment"}, UsageError, "may not change kind"),
        ({"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "q"}}}, UsageError, "kueue"),
    ],
)
def test_patch_refused_when_the_result_breaks_a_rule_or_the_schema(
    patch: dict[str, Any], error: type, match: str
) -> None:
    _kv_or_skip()
    with pytest.raises(error, match=match):
        build(_spec(patch=patch))


def test_patch_without_the_validator_is_refused_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes_validate", None)  # import fails
    with pytest.raises(MissingDriver, match="pip install kubernetes-validate"):
        build(_spec(patch={"metadata": {"annotations": {"a": "b"}}}))


# -- the CLI ------------------------------------------------------------------------------------------


def test_cli_cronjob_with_every_new_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _kv_or_skip()
    patch = tmp_path / "patch.yaml"
    patch.write_text(
        "spec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          nodeSelector: {pool: batch}\n"
    )
    code = cli_main(
        [
            "k8s",
            "cronjob",
            "nightly-export",
            "--schedule",
            "0 1 * * *",
            "--time-zone",
            "Etc/UTC",
            "--image",
            "reg/export:1",
            "--pvc",
            "1Gi",
            "--cpu",
            "250m",
            "--memory",
            "512Mi",
            "--queue",
            "team-a",
            "--priority-class",
            "batch",
            "--active-deadline",
            "14400",
            "--run-as-user",
            "1000",
            "--patch",
            str(patch),
            "--",
            "python",
            "/app/export.py",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    pvc, cron = yaml.safe_load_all(out)
    assert cron["kind"] == "CronJob" and cron["spec"]["timeZone"] == "Etc/UTC"
    pod = _pod(cron)
    assert pod["nodeSelector"] == {"pool": "batch"} and pod["securityContext"]["runAsUser"] == 1000
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            [
                "cronjob",
                "x",
                "--schedule",
                "CRON_TZ=UTC 0 1 * * *",
                "--image",
                "i",
                "--pvc",
                "1Gi",
                "--",
                "python",
                "j.py",
            ],
            "--time-zone",
        ),
        (["statefulset", "s" * 53, "--image", "i", "--pvc", "1Gi", "--", "python", "j.py"], "at most 52"),
        (["job", "x", "--image", "i", "--pvc", "1Gi", "--memory", "512m", "--", "python", "j.py"], "millibytes"),
        (["job", "x", "--image", "i", "--pvc", "1Gi", "--run-as-user", "0", "--", "python", "j.py"], "--no-restricted"),
        (
            ["job", "x", "--image", "i", "--pvc", "1Gi", "--patch", "/nonexistent/p.yaml", "--", "python", "j.py"],
            "cannot read --patch",
        ),
    ],
)
def test_cli_refusals_exit_2_with_one_clear_line(
    argv: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["k8s", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and match in err and "Traceback" not in err


def test_cli_patch_file_must_be_one_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text, match in (
        ("- a\n- b\n", "not a list"),
        ("a: 1\n---\nb: 2\n", "not 2 documents"),
        ("a: [unclosed\n", "neither YAML nor JSON"),
    ):
        patch = tmp_path / "p.yaml"
        patch.write_text(text)
        assert (
            cli_main(["k8s", "job", "x", "--image", "i", "--pvc", "1Gi", "--patch", str(patch), "--", "python", "j.py"])
            == 2
        )
        out, err = capsys.readouterr()
        assert out == "" and match in err, err
