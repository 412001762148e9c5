"""The progress bar on a real terminal, and the log lines without one.

A small job runs under a pseudo-terminal (``pty.fork``: the pty is its controlling
terminal), and the test types Ctrl-C (``\\x03``) into it, as a person would: the line
discipline sends SIGINT to the job and echoes ``^C`` onto the bar's line. What the job
wrote is replayed on a minimal terminal emulator (the escape sequences rich uses:
carriage return, erase line, cursor up), and the screen must show the SIGINT notice
starting on its own line, whole, and the bar once, with thousands separators and the
word ``done``. Without a terminal, each save is one ``saved N/M items`` line, and the
final save of a loop that ended right on a checkpoint is not logged a second time.
"""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

from restartable import Job, _progress

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")

JOB = r"""
import sys, time
from restartable import Job

with Job("ticker", store=sys.argv[1]) as job:
    for i in job.iterate(range(200_000), every=500):
        if i == 2_000:
            print("\nREADY", file=sys.stderr, flush=True)  # the test types Ctrl-C after this
        time.sleep(0.0005)
"""

COLUMNS = 100
ESCAPE = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")


def screen(raw: bytes, width: int = COLUMNS) -> list[str]:
    """The lines a terminal ``width`` columns wide shows after ``raw`` (the subset rich emits)."""
    lines: list[list[str]] = [[]]
    row = col = 0
    text = raw.decode("utf-8", "replace")
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            m = ESCAPE.match(text, i)
            if m is None:
                i += 1
                continue
            arg, cmd = m.groups()
            if cmd == "K":  # erase line (rich: 2K, the whole line)
                lines[row] = []
                col = 0 if arg == "2" else col
            elif cmd == "A":  # cursor up
                row = max(0, row - int(arg or 1))
            i = m.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            while len(lines) <= row:
                lines.append([])
        else:
            if col >= width:  # the terminal wraps a line that is too long
                row += 1
                col = 0
                while len(lines) <= row:
                    lines.append([])
            cells = lines[row]
            while len(cells) <= col:
                cells.append(" ")
            cells[col] = ch
            col += 1
        i += 1
    return ["".join(cells).rstrip() for cells in lines]


def run_under_pty(tmp_path: Path, *, ctrl_c: bool) -> tuple[int, bytes]:
    """Run the job on a pseudo-terminal; type Ctrl-C once it said READY. Returns (exit code, output)."""
    import fcntl
    import pty
    import termios

    script = tmp_path / "ticker.py"
    script.write_text(JOB)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    src = str(Path(_progress.__file__).resolve().parents[1])
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.environ.update(COLUMNS=str(COLUMNS), LINES="40", TERM="xterm-256color", PYTHONPATH=src)
            for name in [n for n in os.environ if n.startswith("RESTARTABLE_")]:
                del os.environ[name]
            os.execv(sys.executable, [sys.executable, str(script), store])
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    out = b""
    typed = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if ctrl_c and not typed and b"READY" in out:
                time.sleep(0.3)  # let the bar draw a few frames after the marker
                os.write(fd, b"\x03")  # Ctrl-C: SIGINT to the foreground group, "^C" echoed
                typed = True
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child ended and the pty closed
                break
            if not data:
                break
            out += data
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def test_ctrl_c_on_a_terminal_puts_the_notice_on_its_own_line_and_the_bar_once(tmp_path):
    code, raw = run_under_pty(tmp_path, ctrl_c=True)
    lines = screen(raw)
    shown = "\n".join(lines)
    assert code == 130, shown
    notice = [ln for ln in lines if "SIGINT received" in ln]
    assert len(notice) == 1, shown
    # On its own line: it starts at the left margin, not after the bar or the echoed ^C.
    assert notice[0].startswith("restartable: job 'ticker'"), shown
    assert "^C" not in notice[0] and "ETA" not in notice[0], shown
    # The notice is whole: its words are not broken across lines.
    assert re.search(r"finishing the item in flight, then\s*(\n\s*)?checkpointing", shown), shown
    # The bar is on screen once (its last frame), with thousands separators and "done".
    bars = [ln for ln in lines if "/200,000 done" in ln]
    assert len(bars) == 1, shown
    assert re.search(r"\b\d{1,3}(,\d{3})+/200,000 done", bars[0]), bars[0]
    final = [ln for ln in lines if "interrupted by SIGINT" in ln]
    assert len(final) == 1 and final[0].startswith("restartable: "), shown
    assert lines.index(final[0]) > lines.index(bars[0]) > lines.index(notice[0]), shown


def test_a_final_save_at_the_last_logged_point_is_not_logged_twice(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(_progress, "LOG_INTERVAL", 0.0)  # log every save: the duplicate would show at once
    url = f"sqlite:///{tmp_path}/ckpt.db"
    with caplog.at_level(logging.INFO, logger="restartable"):
        with Job("twice", store=url, progress=False) as job:
            with pytest.raises(RuntimeError):
                for i in job.iterate(range(20), every=10):
                    if i == 15:
                        raise RuntimeError("stop")  # the run is saved failed at 15
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="restartable"):
        with Job("twice", store=url, progress=False) as job:  # the resume ends right on a checkpoint
            list(job.iterate(range(20), every=5))
    saves = [r.getMessage() for r in caplog.records if ": saved " in r.getMessage()]
    assert saves == ["job 'twice' run 'default': saved 20/20 items (100.0%), " + saves[-1].split("(100.0%), ", 1)[1]], (
        saves
    )
    resumed = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert resumed and "saved items" in resumed[0], resumed


def test_log_lines_use_thousands_separators_and_say_saved(caplog):
    p = _progress.Progress(label="job 'big'", enabled=False)
    p.start("0", 0, 2_000_000)
    with caplog.at_level(logging.INFO, logger="restartable"):
        p.checkpointed("0", 1_234_567, 2_000_000, force=True)
        p.checkpointed("0", 1_234_567, 2_000_000, force=True)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("job 'big': saved 1,234,567/2,000,000 items (61.7%)"), line
    assert _progress.done_text(91_621, 200_000) == "91,621/200,000 done"
