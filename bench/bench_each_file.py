"""Per-file overhead of ``restartable each-file`` against the article's bash loop with ``touch`` markers.

Both process the same tiny files with the same external command, measured side by
side (interleaved, median of several repetitions), each from a fresh start (a new
marker directory for the loop, a new run id for each-file):

* trivial command ``cp INPUT OUTPUT``: each-file -j 1 against the loop. Target <= 1.2x.
* sleep-bound command ``sleep 0.01``: each-file -j 2 against the loop. Target < 1x.

The loop is the article's script, verbatim except its directory variables and the
command it calls (``cp`` or ``sleep 0.01`` instead of ``./process-file.sh``).
each-file runs on the default store (SQLite in the working directory) and includes
its own process start (~0.3 s), as a user would pay it.

    python bench/bench_each_file.py [--quick] [--files N]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved, parser, report

LOOP = r"""#!/bin/bash
# process-with-checkpoints.sh

CHECKPOINT_DIR="$1"
INPUT_DIR="$2"
OUTPUT_DIR="$3"

mkdir -p "$CHECKPOINT_DIR"

# Get list of all input files
find "$INPUT_DIR" -name "*.csv" | sort > "$CHECKPOINT_DIR.all_files.txt"

while IFS= read -r input_file; do
  filename=$(basename "$input_file")
  checkpoint_file="$CHECKPOINT_DIR/$filename.done"

  # Skip if already processed
  if [ -f "$checkpoint_file" ]; then
    echo "Skipping $filename (already processed)"
    continue
  fi

  echo "Processing $filename..."

  # Process the file
  if @COMMAND@; then
    # Mark as complete
    touch "$checkpoint_file"
    echo "$filename complete"
  else
    echo "Error processing $filename"
    exit 1
  fi
done < "$CHECKPOINT_DIR.all_files.txt"

echo "All files processed"
"""

COMMANDS = {
    # (bash form, each-file form)
    "cp": ('cp "$input_file" "$OUTPUT_DIR/$filename"', ["cp", "{}", "{outdir}/{name}"]),
    "sleep": ("sleep 0.01", ["sleep", "0.01"]),
}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--files", type=int, default=None, help="how many input files (default 2000, --quick 300)")
    args = p.parse_args()
    n = args.files or (300 if args.quick else 2000)
    repeat = args.repeat or (3 if args.quick else 5)
    root = tempfile.mkdtemp(prefix="bench-each-file-")
    inputs = os.path.join(root, "input")
    os.makedirs(inputs)
    for i in range(n):
        with open(os.path.join(inputs, f"part-{i:05d}.csv"), "w") as f:
            f.write(f"id,value\n{i},{i * 7919 % 1000}\n")
    scripts = {}
    for kind, (bash_cmd, _) in COMMANDS.items():
        path = os.path.join(root, f"loop-{kind}.sh")
        with open(path, "w") as f:
            f.write(LOOP.replace("@COMMAND@", bash_cmd))
        os.chmod(path, 0o755)
        scripts[kind] = path
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTARTABLE_")}
    store = f"sqlite:///{root}/checkpoints.db"

    def fresh_out() -> str:
        out = os.path.join(root, "out-" + uuid.uuid4().hex[:8])
        os.makedirs(out)
        return out

    def bash_loop(kind: str):
        def run(_: int) -> None:
            out = fresh_out()
            subprocess.run([scripts[kind], os.path.join(root, "ck-" + uuid.uuid4().hex[:8]), inputs, out],
                           check=True, stdout=subprocess.DEVNULL, env=env, cwd=root)
            shutil.rmtree(out)
        return run

    def each_file(kind: str, jobs: int):
        def run(_: int) -> None:
            out = fresh_out()
            cmd = [a.replace("{outdir}", out) for a in COMMANDS[kind][1]]
            subprocess.run([sys.executable, "-m", "restartable", "each-file", "--store", store, "--job", "bench",
                            "--run", "r" + uuid.uuid4().hex[:8], "-j", str(jobs), os.path.join(inputs, "*.csv"),
                            "--", *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env, cwd=root)
            shutil.rmtree(out)
        return run

    try:
        t_cp = interleaved({"loop": bash_loop("cp"), "j1": each_file("cp", 1)}, n, repeat=repeat)
        t_sleep = interleaved({"loop": bash_loop("sleep"), "j1": each_file("sleep", 1),
                               "j2": each_file("sleep", 2)}, n, repeat=repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(f"each-file vs the article's bash loop, {n} files, per file (median of {repeat})", [
        ("each-file -j 1, cp", t_cp["j1"], "bash loop + touch, cp", t_cp["loop"], 1.2),
        ("each-file -j 1, sleep 0.01", t_sleep["j1"], "bash loop + touch, sleep 0.01", t_sleep["loop"], None),
        ("each-file -j 2, sleep 0.01", t_sleep["j2"], "bash loop + touch, sleep 0.01", t_sleep["loop"], 0.99),
    ])


if __name__ == "__main__":
    main()
