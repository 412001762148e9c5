"""No secret is ever printed: store URL redaction, as a property and through every printing path.

``redact`` (restartable._url) is the one function that turns a store URL into the text
that may be shown (``Store.display``, every error message, the Job's first log line, the
CLI). These tests prove, for every URL form the stores accept (libpq multi-host, IPv6,
unix sockets, keyword/value DSNs, redis://:pw@, rediss://, secrets in the query), that
the password never comes out, percent-encoded or not, raw '@' included; that a URL
without secrets comes out unchanged; and that the real printing paths (the CLI in a
subprocess against an unreachable port, the Job's log) use it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from restartable import Job
from restartable._url import parse_store_url, redact, secret_values
from restartable.errors import ConfigError
from restartable.stores import open_store

#: A closed port on this machine: connecting fails at once, so the error path prints the URL.
DEAD = "127.0.0.1:1"

# -- examples: (url, display) --------------------------------------------------------------------

EXAMPLES = [
    # the defect: a raw '@' in the password printed its tail (u:***@ss@host)
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
    # the defect: ?sslpassword= was printed as it is
    ("postgresql://u@host/db?sslpassword=KEYPASS", "postgresql://u@host/db?sslpassword=***"),
    (
        "postgresql://u@host/db?sslmode=verify-full&sslpassword=K&sslkey=/k.pem",
        "postgresql://u@host/db?sslmode=verify-full&sslpassword=***&sslkey=/k.pem",
    ),
    (
        "postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write",
    ),
    ("postgresql://u:p%40ss%3Aw%2F@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    ("postgresql://u:pw@[::1]:5432,[fe80::1%25eth0]:5433/db", "postgresql://u:***@[::1]:5432,[fe80::1%25eth0]:5433/db"),
    ("postgresql:///db?host=/run/pg&password=x", "postgresql:///db?host=/run/pg&password=***"),
    (
        "postgresql:///db?host=%2Frun%2Fpg&user=u&password=x&passfile=/home/u/.pgpass",
        "postgresql:///db?host=%2Frun%2Fpg&user=u&password=***&passfile=/home/u/.pgpass",
    ),
    (
        "postgresql://u@host/db?oauth_client_secret=c&scram_client_key=k",
        "postgresql://u@host/db?oauth_client_secret=***&scram_client_key=***",
    ),
    ("postgresql://u@host/db?pass%77ord=x", "postgresql://u@host/db?pass%77ord=***"),  # libpq decodes names
    ("postgresql://u@host/db?PASSWORD=x", "postgresql://u@host/db?PASSWORD=***"),
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://default:pw@host:6379/0?prefix=p:", "redis://default:***@host:6379/0?prefix=p:"),
    (
        "rediss://u:pw@host:6380/0?ssl_cert_reqs=none&ssl_password=kp",
        "rediss://u:***@host:6380/0?ssl_cert_reqs=none&ssl_password=***",
    ),
    ("redis://host/0?password=pw&username=u", "redis://host/0?password=***&username=u"),
    (
        "redis://host/0?token=t&api_key=k&access_token=a&auth=x&client_secret=s",
        "redis://host/0?token=***&api_key=***&access_token=***&auth=***&client_secret=***",
    ),
    # keyword/value DSNs (refused as store URLs, but printed in the refusal)
    ("host=h port=5432 password=pw user=u", "host=h port=5432 password=*** user=u"),
    ("host=h password = 'a b\\' c' dbname=d", "host=h password = *** dbname=d"),
    ("password=pw", "password=***"),
    # raw '/', '?', '#' in a password: the URL is refused, but its refusal must not print it
    ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:12/34@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:/34@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:12?34@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:1#2@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u@host/db?password=a#b?c&x=1", "postgresql://u@host/db?password=***&x=1"),  # to the next '&'
    # over-redaction, by design: an unencoded '@' after a ':' in the authority looks like a raw password
    ("postgresql://h:5432/db?application_name=me@x", "postgresql://h:***@x"),
    # a message quoting URLs
    ("cannot reach 'redis://:pw@h:1/0' now", "cannot reach 'redis://:***@h:1/0' now"),
    (
        "cannot reach redis://h/0 nor postgresql://u:pw@h/db?sslpassword=k now",
        "cannot reach redis://h/0 nor postgresql://u:***@h/db?sslpassword=*** now",
    ),
    # ... and when several URLs have a ':', everything from the first to the last '@' (over-redacting is safe)
    ("redis://:pw@h:1/0 or postgresql://u:pw@h/db", "redis://:***@h/db"),
]

NO_SECRETS = [
    "sqlite:///.restartable/checkpoints.db",
    "sqlite:////abs/a:b@c.db",
    "file:///data/u:p@x/ckpt",
    "file:rel/dir",
    "memory://",
    "memory://name",
    "postgresql://u@host/db",
    "postgresql://host:5432/db?schema=s&retry=30s",
    "postgresql://u@h1:5432,h2:5433/db",
    "postgresql://[::1]:5432/db",
    "postgresql:///db?host=/run/pg",
    "postgresql://u:@host/db",  # an empty password is no secret
    "redis://host:6379/0?prefix=a:b:&ttl=7d",
    "rediss://host:6380/0?ssl_cert_reqs=none&ssl_keyfile=/k.pem",
    "redis://u@host/0",
    "postgresql://host/db?application_name=a@b",
    "redis://u@[::1]/0?client_name=a:b",
    "postgresql://host/db?passfile=/p&sslkey=/k",
    "host=h port=5432 user=u dbname=d",
    "ftp://example/x",
    "nonsense",
]


@pytest.mark.parametrize("url,display", EXAMPLES)
def test_redact_examples(url: str, display: str) -> None:
    assert redact(url) == display


@pytest.mark.parametrize("url", NO_SECRETS)
def test_a_url_without_secrets_is_unchanged(url: str) -> None:
    assert redact(url) == url
    assert secret_values(url) == ()


# -- the property --------------------------------------------------------------------------------

#: Every URL form, with {pw} where the (percent-encoded) password goes.
FORMS = [
    "postgresql://user:{pw}@db.example.com:5432/app",
    "postgres://user:{pw}@db.example.com/app?schema=s&retry=30s",
    "postgresql://user:{pw}@h1:5432,h2:5433/app?target_session_attrs=read-write",
    "postgresql://user:{pw}@[::1]:5432/app",
    "postgresql:///app?host=/run/postgresql&password={pw}",
    "postgresql://user@host/app?sslmode=verify-full&sslpassword={pw}&sslkey=/k.pem",
    "redis://:{pw}@cache:6379/0",
    "redis://default:{pw}@cache:6379/0?prefix=p:&ttl=7d",
    "rediss://user:{pw}@cache:6380/1?ssl_cert_reqs=none",
    "redis://cache:6379/0?password={pw}&prefix=x",
    "rediss://cache/0?ssl_password={pw}",
]
_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.characters(blacklist_categories=("Cs", "Cc"))
_specials = st.sampled_from(list("@:/?#&=%+ ;,[]'\"\\"))
passwords = st.text(_printable | _specials, min_size=1, max_size=24)


@given(st.sampled_from(FORMS), passwords)
@settings(max_examples=600, deadline=None)
@example("postgresql://user:{pw}@db.example.com:5432/app", "p@ss")
@example("redis://:{pw}@cache:6379/0", "12/34?#@")
def test_redact_hides_any_percent_encoded_password(form: str, password: str) -> None:
    """The display is the URL with exactly the password replaced: nothing else lost, nothing leaked."""
    url = form.format(pw=quote(password, safe=""))
    assert redact(url) == form.format(pw="***")
    assert password in secret_values(url)  # what a store scrubs from driver messages
    assert redact(url.replace("://", "://", 1)) == redact(redact(url))  # idempotent


#: Passwords as a careless user types them: raw delimiters, unencoded. Only upper-case
#: letters, which no form below contains, so any that survive in the display leaked.
raw_passwords = st.text(st.sampled_from(list("QWXZKJ@:/?#%=&;, !$'()*+[]")), min_size=1, max_size=16).filter(
    lambda s: any(c.isupper() for c in s)
)
RAW_FORMS = [
    "postgresql://user:{pw}@db.example.com:5432/app",
    "postgresql://user:{pw}@h1:5432,h2:5433/app?schema=s",
    "redis://:{pw}@cache:6379/0",
    "rediss://user:{pw}@cache/0?prefix=p",
]


@given(st.sampled_from(RAW_FORMS), raw_passwords)
@settings(max_examples=600, deadline=None)
@example("postgresql://user:{pw}@db.example.com:5432/app", "/?Q")
@example("postgresql://user:{pw}@db.example.com:5432/app", "QQ@/Q#@?")
@example("postgresql://user:{pw}@db.example.com:5432/app", "J://")
@example("postgresql://user:{pw}@db.example.com:5432/app", "J://Q@ X://")
def test_redact_hides_a_raw_password(form: str, password: str) -> None:
    shown = redact(form.format(pw=password))
    assert not any(c.isupper() for c in shown), shown


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_redact_never_raises_and_only_hides(text: str) -> None:
    shown = redact(text)
    # Every character shown is the text's own, in order, apart from the '***' markers.
    rest = iter(text)
    assert all(c in rest for c in shown.replace("***", ""))


# -- parse_store_url -----------------------------------------------------------------------------


def test_unix_socket_form_reaches_the_driver_intact() -> None:
    """urlunsplit turned postgresql:///db?host=/run/pg into postgresql:/db?host=..., which libpq refused."""
    url = parse_store_url(
        "postgresql:///db?host=/run/pg&schema=s&application_name=a+b", known_options=frozenset({"schema"})
    )
    assert url.driver_url == "postgresql:///db?host=/run/pg&application_name=a+b"
    assert url.options == {"schema": "s"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@ss@127.0.0.1:1/db?retry=0.1",
        "postgresql://u:12?34@127.0.0.1:1/db",
        "postgresql://u:1#2@127.0.0.1:1/db",
        "postgresql://u:pa/ss@127.0.0.1:1/db",
    ],
)
def test_libpq_ambiguous_userinfo_is_refused_without_printing_it(url: str) -> None:
    """libpq reads u:p@ss@host as password 'p' on host 'ss@host' and prints that host: refuse first."""
    with pytest.raises(ConfigError, match="percent-encode") as err:
        open_store(url)
    assert "ss@" not in str(err.value) and "34" not in str(err.value) and "2@" not in str(err.value)


# -- through the real printing paths -------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTARTABLE_")}
    return subprocess.run(
        [sys.executable, "-m", "restartable.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


CLI_CASES = [
    (f"postgresql://u:S3cr%40tPW@{DEAD}/db?sslpassword=KEYPASSW&retry=0.1", ("S3cr", "KEYPASSW"), 75),
    (f"postgresql://u:p@ssTAILPW@{DEAD}/db?retry=0.1", ("ssTAILPW",), 78),
    (f"postgresql:///db?host=/nonexistent/run&password=SOCKPW&retry=0.1", ("SOCKPW",), 75),
    (f"postgresql://u:pw@{DEAD}/db?pass%77ord=ENCPW&retry=0.1", ("ENCPW",), 75),
    (f"postgresql://u@{DEAD}/db?sslpassword=BAD%zzPW&retry=0.1", ("BAD%zzPW", "BAD"), 78),
    (f"redis://:REDIS%3APW@{DEAD}/0?retry=0.1", ("REDIS", "%3APW"), 75),
    (f"redis://u:p@ssREDTAIL@{DEAD}/0?retry=0.1", ("ssREDTAIL",), 75),
    (f"rediss://u:TLSPW@{DEAD}/0?retry=0.1&ssl_cert_reqs=none", ("TLSPW",), 75),
    (f"redis://{DEAD}/0?password=QUERYPW&retry=0.1", ("QUERYPW",), 75),
    (f"redis://{DEAD}/0?ssl_password=KEYPW&retry=0.1", ("KEYPW",), 78),
    ("host=127.0.0.1 port=1 password=DSNPW", ("DSNPW",), 78),
    ("postgresql://u:PORTPW@127.0.0.1:99999/db", ("PORTPW",), 78),
]


@pytest.mark.parametrize("command", ["status", "show"])
@pytest.mark.parametrize("url,secrets,code", CLI_CASES, ids=[c[0].split("?")[0][:40] for c in CLI_CASES])
def test_cli_never_prints_a_secret(command: str, url: str, secrets: tuple[str, ...], code: int) -> None:
    """The CLI on an unreachable or refused store: its error names the store, never its secrets."""
    if url.startswith("postgres") and "://" in url:
        pytest.importorskip("psycopg", reason="psycopg is not installed")
    if url.startswith("redis"):
        pytest.importorskip("redis", reason="redis-py is not installed")
    args = ["status", "--store", url] if command == "status" else ["show", "somejob", "--store", url]
    done = _cli(*args)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    assert "Traceback" not in out, out
    assert "***" in out or "host=" in out, out  # the store is named, redacted
    for secret in secrets:
        assert secret not in out, out


def test_job_log_and_errors_never_print_a_secret(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The Job's first log line ('store ...') on a real PostgreSQL given secrets it accepts (trust auth)."""
    url = postgres_url.replace("postgres@", "postgres:JOBPW%40x@", 1) + "&sslpassword=JOBKEYPW"
    assert "JOBPW" in url and url.startswith("postgresql://postgres:")
    with caplog.at_level(logging.DEBUG, logger="restartable"):
        with Job("redacted", store=url, progress=False, handle_signals=False) as job:
            for _ in job.iterate(range(3)):
                pass
            display = job.store.display
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"store {display}" in text, text
    assert "JOBPW" not in text + display and "JOBKEYPW" not in text + display, text


def test_a_file_store_display_keeps_its_path(tmp_path: Path) -> None:
    """Redaction never mangles a path holding ':' and '@' (no authority, nothing secret)."""
    root = tmp_path / "u:p@x"
    with open_store(f"file://{root}") as store:
        assert str(root) in store.display
