#!/usr/bin/env python3
"""Run the plugin's TensorBoard-facing tests against several TensorBoard and Python releases.

For each row of MATRIX: a virtualenv with that Python, that TensorBoard (and whatever
`tensorboard-data-server` it pins) and this project with its test extras; then the tests
marked `tb_matrix` (pytest.ini) run in it. Virtualenvs are cached under --cache (default
~/.cache/tb-rsync-matrix), one per TensorBoard, Python, pins and setup.py content, so a
re-run only refreshes the project's editable install; one unused for a month is removed.
The results replace the table between the `<!-- tested-versions -->` markers in README.md.

    python3 scripts/version-matrix.py            # every row, then README.md
    python3 scripts/version-matrix.py --row 2.17.1 --no-readme

Standard library only: it runs with any Python 3.9+, and each row's Python comes from
pyenv (~/.pyenv/versions/X.Y.*) or PATH.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKER = "tested-versions"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tb-rsync-matrix")
LATEST = "latest"  # resolved to the newest TensorBoard on the package index at run time

# (TensorBoard, Python, pins): the oldest release setup.py allows (its floor), one in the
# middle, the newest on the index; each with a Python it supports, together spanning 3.9 to
# 3.13. Pins give a row what that TensorBoard itself needs to start, which its own metadata
# does not say: before 2.21 it imports `pkg_resources`, gone in setuptools 82; before 2.17 it
# uses `np.string_`, gone in numpy 2 (TensorFlow of those releases keeps numpy below 2);
# before 2.14 it imports `six` without declaring it. README.md says the same to users.
MATRIX = (
    ("2.10.1", "3.9", ("six", "numpy<2", "setuptools<82")),
    ("2.17.1", "3.12", ("setuptools<82",)),
    (LATEST, "3.13", ()),
)
# Versions each row reports in the table, read from its virtualenv.
REPORTED = ("tensorboard", "tensorboard-data-server", "protobuf", "numpy")


class MatrixError(Exception):
    """A row could not be set up; the message says what to fix."""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=os.environ.get("TB_RSYNC_MATRIX_CACHE", DEFAULT_CACHE),
                        help="where the virtualenvs are kept (default %(default)s)")
    parser.add_argument("--row", action="append", default=[], metavar="TENSORBOARD",
                        help="run only this row (its TensorBoard version or 'latest'); "
                             "repeatable")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not rewrite README.md's table of tested versions")
    args = parser.parse_args(argv)
    rows = [row for row in MATRIX if not args.row or row[0] in args.row]
    if not rows:
        parser.error(f"no row matches {args.row}; rows: {[r[0] for r in MATRIX]}")
    results = []
    for tensorboard, python, pins in rows:
        started = time.monotonic()
        try:
            result = run_row(tensorboard, python, pins, args.cache)
        except MatrixError as e:
            result = {"tensorboard": tensorboard, "python": python, "ok": False,
                      "summary": f"not run: {e}"}
        result["pins"] = pins
        result["seconds"] = round(time.monotonic() - started)
        print(f"matrix: TensorBoard {result['tensorboard']} on Python {result['python']}: "
              f"{result['summary']} ({result['seconds']} s)", flush=True)
        results.append(result)
    prune(args.cache)
    if not args.no_readme:
        if len(rows) == len(MATRIX):
            write_readme_table(results)
        else:
            print("matrix: README.md not rewritten (only some rows ran)")
    failed = [r for r in results if not r["ok"]]
    print(f"matrix: {len(results) - len(failed)} of {len(results)} rows passed"
          + "".join(f"; failed: TensorBoard {r['tensorboard']} on Python {r['python']}"
                    for r in failed))
    return 1 if failed else 0


def run_row(tensorboard, python, pins, cache):
    interpreter = find_python(python)
    if tensorboard == LATEST:
        tensorboard = newest_tensorboard()
    venv = ensure_venv(cache, tensorboard, interpreter, pins)
    venv_python = os.path.join(venv, "bin", "python")
    # The cached virtualenv may map an older checkout: point it at this one (seconds).
    pip(venv_python, "install", "--no-deps", "--no-build-isolation", "-e", ROOT)
    versions = installed_versions(venv_python)
    report = os.path.join(venv, "last-run.xml")
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "tb_matrix",
               "-rfEs", f"--junitxml={report}", "tests"]
    print("matrix: running", " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    counts = junit_counts(report)
    ok = code == 0 and counts["passed"] > 0 and counts["skipped"] == 0
    summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "no test ran"
    if not ok and counts["failed"] + counts["errors"] and not counts["skipped"]:
        # Once more, said out loud: these tests drive real TensorBoards and a browser, and an
        # old data server on a loaded machine has missed a deadline (README, "Supported
        # versions"). A row that fails twice fails.
        print(f"matrix: TensorBoard {tensorboard}: {summary}; running the row once more",
              flush=True)
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        counts = junit_counts(report)
        ok = code == 0 and counts["passed"] > 0 and counts["skipped"] == 0
        summary = (", ".join(f"{n} {what}" for what, n in counts.items() if n) or
                   "no test ran") + f" (second run; the first: {summary})"
    return {"tensorboard": tensorboard, "python": versions["python"], "ok": ok,
            "summary": summary, "versions": versions}


def find_python(version):
    """The interpreter for 'X.Y': pyenv's newest X.Y.*, else pythonX.Y on PATH."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin",
                                               f"python{version}")),
                        key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[-3])])
    on_path = shutil.which(f"python{version}")
    for path in candidates[::-1] + ([on_path] if on_path else []):
        # A pyenv shim exists for every installed version but fails unless it is selected.
        if subprocess.run([path, "-c", ""], capture_output=True).returncode == 0:
            return os.path.realpath(path)
    raise MatrixError(f"no Python {version} found (pyenv install {version}, or put "
                      f"python{version} on PATH)")


def newest_tensorboard():
    result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tensorboard"],
                            capture_output=True, text=True)
    match = re.search(r"^tensorboard \(([^)]+)\)", result.stdout, re.M)
    if not match:
        raise MatrixError("pip could not list TensorBoard's releases: "
                          f"{result.stderr.strip()[-300:] or '(no error output)'}")
    return match.group(1)


def ensure_venv(cache, tensorboard, interpreter, pins):
    """A virtualenv with this TensorBoard and the project's dependencies, built once."""
    with open(os.path.join(ROOT, "setup.py"), "rb") as f:
        key = hashlib.sha256(f.read() + repr((interpreter, pins)).encode()).hexdigest()[:10]
    python = re.search(r"python(\d+\.\d+)$", interpreter).group(1)
    venv = os.path.join(cache, f"tb{tensorboard}-py{python}-{key}")
    done = os.path.join(venv, "complete")
    if os.path.exists(done):
        return venv
    shutil.rmtree(venv, ignore_errors=True)  # a half-built one from an interrupted run
    os.makedirs(cache, exist_ok=True)
    print(f"matrix: building {venv}", flush=True)
    run([interpreter, "-m", "venv", venv])
    venv_python = os.path.join(venv, "bin", "python")
    # setuptools>=64 builds PEP 660 editable installs without build isolation (re-runs).
    pip(venv_python, "install", "--upgrade", "pip", "setuptools>=64", "wheel")
    pip(venv_python, "install", f"tensorboard=={tensorboard}", *pins, "-e", ROOT + "[test]")
    with open(done, "w") as f:
        f.write(tensorboard + "\n")
    return venv


def prune(cache, max_age_s=30 * 86400):
    """Remove virtualenvs no run has used for a month (setup.py edits leave old ones)."""
    for venv in glob.glob(os.path.join(cache, "tb*-py*-*")):
        try:
            used = os.path.getmtime(os.path.join(venv, "last-run.xml"))
        except OSError:
            used = os.path.getmtime(venv)
        if time.time() - used > max_age_s:
            shutil.rmtree(venv, ignore_errors=True)


def pip(venv_python, *args):
    run([venv_python, "-m", "pip", "-q", *args])


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "is ignored" not in line]
        raise MatrixError(f"`{' '.join(command)}` exited {result.returncode}: "
                          + " | ".join(lines[-5:]))


def installed_versions(venv_python):
    script = ("import json, platform; from importlib import metadata\n"
              f"names = {list(REPORTED)!r}\n"
              "print(json.dumps(dict({n: metadata.version(n) for n in names}, "
              "python=platform.python_version())))")
    result = subprocess.run([venv_python, "-c", script], capture_output=True, text=True)
    if result.returncode != 0:
        raise MatrixError(f"reading installed versions failed: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout)


def junit_counts(path):
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total = int(suite.get("tests", 0))
    for key, attr in (("failed", "failures"), ("errors", "errors"), ("skipped", "skipped")):
        counts[key] = int(suite.get(attr, 0))
    counts["passed"] = total - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def write_readme_table(results):
    lines = ["| TensorBoard | Python | also installed | tensorboard-data-server | protobuf | "
             "numpy | tests |", "|---|---|---|---|---|---|---|"]
    for r in results:
        v = r.get("versions", {})
        pins = ", ".join(f"`{pin}`" for pin in r["pins"]) or "-"
        lines.append(f"| {r['tensorboard']} | {r['python']} | {pins} | "
                     f"{v.get('tensorboard-data-server', '?')} | {v.get('protobuf', '?')} | "
                     f"{v.get('numpy', '?')} | {r['summary']} |")
    with open(README, encoding="utf-8") as f:
        text = f.read()
    block = re.compile(rf"(<!-- {MARKER} -->\n).*?(<!-- /{MARKER} -->)", re.S)
    if not block.search(text):
        raise SystemExit(f"README.md has no <!-- {MARKER} --> block to write the table into.")
    text = block.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text)
    with open(README, "w", encoding="utf-8") as f:
        f.write(text)
    print("matrix: wrote the table of tested versions into README.md")


if __name__ == "__main__":
    sys.exit(main())
