"""``restartable k8s``: the manifests validate against the Kubernetes schema, pass our rules,
say what the issue asks for; the StatefulSet's idle wrapper behaves."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ci_env import unavailable
from restartable._entry import PERMANENT_CODES
from restartable.cli import main as cli_main
from restartable.errors import UsageError
from restartable.kube import WorkloadSpec, build, check, dump_yaml, enforce

PASSWORD = "s3cr3t-pw"
COMMAND = ("python", "/app/job.py", "--day", "$(DAY)")


def _spec(kind: str, store: str, **kw: Any) -> WorkloadSpec:
    stores = {
        "pvc": {"pvc": "1Gi"},
        "secret": {"store_secret": "ckpt-db:url"},
        "url": {"store_url": f"postgresql://app:{PASSWORD}@db.example:5432/app?schema=ckpt"},
    }
    sizing = {
        "indexed-job": {"completions": 4, "parallelism": 1 if store == "pvc" else 2},
        "cronjob": {"schedule": "30 2 * * *", "time_zone": "Europe/Paris"},
    }.get(kind, {})
    return WorkloadSpec(
        kind=kind,
        name="export",
        image="registry.example/export:1.4",
        command=COMMAND,  # type: ignore[arg-type]
        **{**stores[store], **sizing, **kw},
    )


KINDS = ("job", "indexed-job", "cronjob", "statefulset")
CASES = [(kind, store) for kind in KINDS for store in ("pvc", "secret", "url")]


def _kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


def _workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] in ("Job", "CronJob", "StatefulSet"))


def _job_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The Job (a CronJob's jobTemplate) or the StatefulSet: what holds the pod template."""
    return doc["spec"]["jobTemplate"] if doc["kind"] == "CronJob" else doc


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return _job_of(doc)["spec"]["template"]["spec"]


def _env(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _pod(doc)["containers"][0]["env"]}


# -- schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,store", CASES)
def test_every_manifest_validates_strictly_at_the_minimum_and_the_newest(kind: str, store: str) -> None:
    kv = _kv()
    newest = kv.utils.latest_version()
    for target in ("1.27", "1.28", "1.29", "1.31", "1.33", newest):
        docs = build(_spec(kind, store, kube_version=target)).documents
        # A manifest for version V validates against V's schema and every newer one we ship.
        for schema in sorted({target, "1.31", newest}, key=lambda v: tuple(map(int, v.split(".")[:2]))):
            if tuple(map(int, schema.split(".")[:2])) < tuple(map(int, target.split(".")[:2])):
                continue
            for doc in docs:
                kv.validate(doc, schema, strict=True)
        assert check(docs) == []


def test_yaml_round_trips_as_multi_document() -> None:
    docs = build(_spec("job", "url")).documents
    text = dump_yaml(docs)
    assert text.count("\n---\n") == 1
    assert list(yaml.safe_load_all(text)) == docs


# -- what the issue asks for ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["job", "indexed-job", "cronjob"])
def test_jobs_never_restart_in_place_and_fail_only_on_permanent_codes(kind: str) -> None:
    job = _workload(build(_spec(kind, "secret")).documents)
    spec = _job_of(job)["spec"]
    assert _pod(job)["restartPolicy"] == "Never"
    exit_rule, disruption = spec["podFailurePolicy"]["rules"]
    assert exit_rule["action"] == ("FailIndex" if kind == "indexed-job" else "FailJob")
    assert exit_rule["onExitCodes"] == {"containerName": "main", "operator": "In", "values": sorted(PERMANENT_CODES)}
    assert sorted(PERMANENT_CODES) == [2, 65, 77, 78]
    assert disruption == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["podReplacementPolicy"] == "Failed"
    # A CronJob keeps its finished Jobs by its history limits, which a TTL would undercut.
    assert spec.get("ttlSecondsAfterFinished") == (None if kind == "cronjob" else 86400)
    if kind == "indexed-job":
        assert spec["completionMode"] == "Indexed" and spec["completions"] == 4 and spec["parallelism"] == 2
        assert spec["backoffLimitPerIndex"] == 6 and "backoffLimit" not in spec
        assert _env(job)["RESTARTABLE_SHARDS"]["value"] == "4"
    else:
        assert spec["backoffLimit"] == 6 and "RESTARTABLE_SHARDS" not in _env(job)


@pytest.mark.parametrize("kind,store", CASES)
def test_pod_identity_run_grace_and_exec_form(kind: str, store: str) -> None:
    workload = _workload(build(_spec(kind, store, grace=120)).documents)
    pod, env = _pod(workload), _env(workload)
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == 120
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env["RESTARTABLE_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["RESTARTABLE_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["RESTARTABLE_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    if kind == "statefulset":
        assert "RESTARTABLE_RUN" not in env
        assert container["command"][:6] == [
            "python",
            "-m",
            "restartable.kube.idle",
            "--marker",
            "/data/COMPLETED",
            "--",
        ]
        argv = container["command"][6:]
    else:
        assert env["RESTARTABLE_RUN"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}
        }
        argv = container["command"]
    # Verbatim: Kubernetes turns $$ into $, so $(DAY) reaches the job unexpanded; `python SCRIPT.py`
    # runs under `python -m restartable run`, the same interpreter and process.
    assert argv == ["python", "-m", "restartable", "run", "/app/job.py", "--day", "$$(DAY)"]
    labels = workload["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "export" and labels["app.kubernetes.io/version"] == "1.4"
    assert _job_of(workload)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "export"


def test_pvc_job_is_the_article_shape_with_sqlite_on_the_claim() -> None:
    docs = build(_spec("job", "pvc", access_mode="ReadWriteOncePod", storage_class="fast")).documents
    pvc, job = docs
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOncePod"],
        "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "fast",
    }
    pod = _pod(job)
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "data", "mountPath": "/data"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert _env(job)["RESTARTABLE_STORE"] == {"name": "RESTARTABLE_STORE", "value": "sqlite:////data/checkpoints.db"}


def test_statefulset_idles_when_done_and_reports_readiness() -> None:
    sts = _workload(build(_spec("statefulset", "pvc")).documents)
    pod = _pod(sts)
    assert pod["restartPolicy"] == "Always"
    assert "podFailurePolicy" not in sts["spec"] and sts["spec"]["replicas"] == 1
    assert pod["containers"][0]["readinessProbe"]["exec"]["command"] == ["test", "-f", "/data/COMPLETED"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert sts["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("kind", KINDS)
def test_the_store_url_never_reaches_the_pod_spec(kind: str) -> None:
    built = build(_spec(kind, "url"))
    secret, workload = built.documents[0], _workload(built.documents)
    assert secret["kind"] == "Secret" and PASSWORD in secret["stringData"]["url"]
    assert PASSWORD not in yaml.safe_dump(workload) and "db.example" not in yaml.safe_dump(workload)
    assert _env(workload)["RESTARTABLE_STORE"]["valueFrom"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "url"}
    }
    assert any("credentials" in w for w in built.warnings)
    existing = build(_spec(kind, "secret"))
    assert all(d["kind"] != "Secret" for d in existing.documents)
    assert not any("credentials" in w for w in existing.warnings)
    assert _env(_workload(existing.documents))["RESTARTABLE_STORE"]["valueFrom"]["secretKeyRef"] == {
        "name": "ckpt-db",
        "key": "url",
    }


# -- versions --------------------------------------------------------------------------------


def test_older_versions_omit_what_they_do_not_enable_and_say_so() -> None:
    built = build(_spec("indexed-job", "secret", kube_version="1.28"))
    spec = _workload(built.documents)["spec"]
    assert "podReplacementPolicy" not in spec and "backoffLimitPerIndex" not in spec
    assert spec["backoffLimit"] == 6
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert len(built.warnings) == 2 and all("1.28" in w for w in built.warnings)
    newer = _workload(build(_spec("statefulset", "pvc", kube_version="1.33")).documents)
    assert "serviceName" not in newer["spec"]
    with pytest.raises(UsageError, match="too old"):
        build(_spec("job", "pvc", kube_version="1.26"))
    with pytest.raises(UsageError, match="invalid Kubernetes version"):
        build(_spec("job", "pvc", kube_version="latest"))


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"pvc": "1Gi", "parallelism": 2}, "serves one pod at a time"),
        ({"pvc": "1Gi", "store_secret": "x"}, "exactly one store"),
        ({}, "exactly one store"),
        ({"store_url": "sqlite:////data/x.db"}, "needs a volume"),
        ({"store_url": "memory://"}, "postgresql:// or redis://"),
        ({"pvc": "lots"}, "invalid volume size"),
        ({"pvc": "1Gi", "completions": 3}, "indexed-job"),
        ({"store_secret": "Bad_Name"}, "invalid --store-secret"),
        ({"store_secret": "db", "access_mode": "ReadWriteOncePod"}, "add --pvc"),
        ({"store_secret": "db", "pushgateway": "http://pg:9091"}, "HOST:PORT"),
    ],
)
def test_refusals_are_usage_errors(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build(WorkloadSpec(kind="job", name="export", image="img", command=("python", "j.py"), **kw))


def test_indexed_and_statefulset_refusals() -> None:
    base = {"name": "export", "image": "img", "command": ("python", "j.py")}
    with pytest.raises(UsageError, match="needs --completions"):
        build(WorkloadSpec(kind="indexed-job", store_secret="db", **base))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="serves one pod"):
        build(WorkloadSpec(kind="indexed-job", pvc="1Gi", completions=3, parallelism=3, **base))  # type: ignore[arg-type]
    # With a volume the default is one pod at a time; with a shared store all shards at once.
    pvc = _workload(build(WorkloadSpec(kind="indexed-job", pvc="1Gi", completions=3, **base)).documents)  # type: ignore[arg-type]
    shared = _workload(build(WorkloadSpec(kind="indexed-job", store_secret="db", completions=3, **base)).documents)  # type: ignore[arg-type]
    assert pvc["spec"]["parallelism"] == 1 and shared["spec"]["parallelism"] == 3
    with pytest.raises(UsageError, match="belong to Jobs"):
        build(WorkloadSpec(kind="statefulset", pvc="1Gi", parallelism=2, **base))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="invalid name"):
        build(WorkloadSpec(kind="job", pvc="1Gi", **{**base, "name": "Export_1"}))  # type: ignore[arg-type]


# -- our rules ---------------------------------------------------------------------------------


def _broken(kind: str, mutate: Any) -> list[str]:
    docs = copy.deepcopy(build(_spec(kind, "secret")).documents)
    mutate(_workload(docs))
    return check(docs)


def test_rules_catch_what_the_schema_cannot() -> None:
    def on_failure(d: dict[str, Any]) -> None:
        _pod(d)["restartPolicy"] = "OnFailure"

    def sts_never(d: dict[str, Any]) -> None:
        _pod(d)["restartPolicy"] = "Never"
        d["spec"]["podFailurePolicy"] = {"rules": []}

    def shell(d: dict[str, Any]) -> None:
        _pod(d)["containers"][0]["command"] = ["/bin/sh", "-c", "python /app/job.py"]

    def url_env(d: dict[str, Any]) -> None:
        _pod(d)["containers"][0]["env"].append({"name": "RESTARTABLE_STORE", "value": "redis://cache:6379/0"})

    def password_arg(d: dict[str, Any]) -> None:
        _pod(d)["containers"][0]["command"].append("--store=postgresql://u:pw@db/app")

    def fail_index(d: dict[str, Any]) -> None:
        del d["spec"]["backoffLimitPerIndex"]
        d["spec"]["podReplacementPolicy"] = "TerminatingOrFailed"

    def shards(d: dict[str, Any]) -> None:
        d["spec"]["completions"] = 5

    def no_container(d: dict[str, Any]) -> None:
        _pod(d)["containers"][0]["name"] = "app"

    assert [p.split(":")[0] for p in _broken("job", on_failure)] == ["never-with-failure-policy"]
    assert {p.split(":")[0] for p in _broken("statefulset", sts_never)} == {"statefulset-always"}
    assert len(_broken("statefulset", sts_never)) == 2
    assert [p.split(":")[0] for p in _broken("job", shell)] == ["exec-form"]
    assert [p.split(":")[0] for p in _broken("indexed-job", url_env)] == ["no-url-in-env"]
    assert [p.split(":")[0] for p in _broken("job", password_arg)] == ["no-url-in-env"]
    assert [p.split(":")[0] for p in _broken("indexed-job", fail_index)] == ["failure-policy"] * 2
    assert [p.split(":")[0] for p in _broken("indexed-job", shards)] == ["shard-count"]
    assert [p.split(":")[0] for p in _broken("job", no_container)] == ["failure-policy"]


def test_exec_in_a_shell_script_passes_and_enforce_raises() -> None:
    docs = copy.deepcopy(build(_spec("job", "pvc")).documents)
    _pod(_workload(docs))["containers"][0]["command"] = ["sh", "-c", "cd /app && exec python job.py"]
    assert check(docs) == []
    _pod(_workload(docs))["restartPolicy"] = "Always"
    with pytest.raises(UsageError, match="never-with-failure-policy"):
        enforce(docs)


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_prints_yaml_and_warns_about_credentials_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        [
            "k8s",
            "indexed-job",
            "export",
            "--image",
            "img:2",
            "--store",
            f"redis://:{PASSWORD}@cache:6379/0",
            "--completions",
            "3",
            "--",
            "python",
            "job.py",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["Secret", "Job"]
    assert PASSWORD not in yaml.safe_dump(docs[1])
    assert "warning" in err and "credentials" in err and PASSWORD not in err


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["job", "x", "--image", "i", "--pvc", "1Gi", "--parallelism", "4", "--", "python", "j.py"],
            "one pod at a time",
        ),
        (["job", "x", "--image", "i", "--pvc", "1Gi", "--", "bash", "-c", "python j.py"], "exec-form"),
        (["statefulset", "x", "--image", "i", "--pvc", "1Gi", "--ttl", "5", "--", "python", "j.py"], "belong to Jobs"),
    ],
)
def test_cli_errors_exit_2_with_one_clear_line(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["k8s", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and match in err and "Traceback" not in err


# -- the StatefulSet's idle wrapper ----------------------------------------------------------


def _idle(tmp_path: Path, script: str) -> subprocess.Popen[str]:
    marker = tmp_path / "COMPLETED"
    return subprocess.Popen(
        [sys.executable, "-m", "restartable.kube.idle", "--marker", str(marker), "--", sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_idle_marks_completion_then_idles_until_sigterm(tmp_path: Path) -> None:
    proc = _idle(tmp_path, "open('ran', 'a').write('x')")
    _wait_for(lambda: (tmp_path / "COMPLETED").exists())
    time.sleep(0.2)
    assert proc.poll() is None  # idle, not restarting in a loop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert (tmp_path / "COMPLETED").read_text().startswith("completed ")
    assert oct((tmp_path / "COMPLETED").stat().st_mode & 0o777) == "0o600"
    # A restarted container finds the marker and does not run the job again.
    again = _idle(tmp_path, "open('ran', 'a').write('x')")
    # Its first line comes after its handlers are installed: under load, startup can take >0.5 s.
    assert "already completed" in again.stderr.readline()  # type: ignore[union-attr]
    again.send_signal(signal.SIGTERM)
    assert again.wait(10) == 0
    assert (tmp_path / "ran").read_text() == "x"


def test_idle_on_a_permanent_code_without_marker_and_exits_on_a_temporary_one(tmp_path: Path) -> None:
    proc = _idle(tmp_path, "import sys; sys.exit(65)")
    time.sleep(0.8)
    assert proc.poll() is None and not (tmp_path / "COMPLETED").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 65
    assert "failed permanently" in proc.stderr.read()  # type: ignore[union-attr]
    temporary = _idle(tmp_path, "import sys; sys.exit(75)")
    assert temporary.wait(10) == 75 and not (tmp_path / "COMPLETED").exists()


def test_idle_passes_sigterm_to_the_running_job(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda s, f: (pathlib.Path('got-term').write_text('y'), sys.exit(143)))\n"
        "pathlib.Path('started').write_text('y')\n"
        "time.sleep(30)\n"
    )
    proc = _idle(tmp_path, script)
    _wait_for(lambda: (tmp_path / "started").exists())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 143
    assert (tmp_path / "got-term").exists() and not (tmp_path / "COMPLETED").exists()
