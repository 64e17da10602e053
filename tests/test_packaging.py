"""The wheel works on its own: installed into a fresh venv, TensorBoard finds the plugin
through its entry point and serves the frontend from inside the package."""

import os
import re
import subprocess
import sys
import zipfile

import pytest

from tests.fixtures_tensorboard import TensorBoardProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), ROOT], check=True, timeout=300)
    (path,) = out.glob("tb_rsync_plugin-*.whl")
    return path


def test_wheel_ships_frontend_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    # Every module and the stylesheet (test_plugin_wsgi: the plugin serves exactly these).
    frontend = [name for name in os.listdir(os.path.join(ROOT, "frontend"))
                if name.endswith((".js", ".css"))]
    assert "views.js" in frontend and "format.js" in frontend
    for name in frontend:
        assert f"tb_rsync_plugin/frontend/{name}" in names
    assert "rsync = tb_rsync_plugin.tensorboard.plugin:RsyncPluginLoader" in entry_points
    assert "tb-rsync = tb_rsync_plugin.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)


def see_our_packages(python):
    """Make the venv of `python` see the packages this interpreter sees, after its own.

    Its `--system-site-packages` shows the base interpreter's, which is not enough when the
    tests run inside a virtualenv (the usual way): the dependencies installed there
    (google-crc32c...) were missing. The folders go in as plain lines of a .pth file, so the
    .pth files inside them (an editable install of this checkout) are not run.
    """
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    ours = [p for p in sys.path
            if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    with open(os.path.join(own, "tests-outer-packages.pth"), "w") as f:
        f.write("".join(p + "\n" for p in ours))


def test_wheel_in_fresh_venv_serves_the_tab(wheel, tmp_path):
    venv = tmp_path / "venv"
    # Reusing the installed dependencies needs no network; the plugin itself comes only
    # from the wheel (the venv's own site-packages come first).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    python = venv / "bin" / "python"
    see_our_packages(python)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True, timeout=300)
    where = subprocess.run(
        [str(python), "-c", "import tb_rsync_plugin, os; print(tb_rsync_plugin.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(venv) in where, "the plugin must be imported from the venv, not the checkout"
    help_text = subprocess.run([str(venv / "bin" / "tb-rsync"), "--help"], check=True,
                               capture_output=True, text=True, cwd=tmp_path).stdout
    assert "sync" in help_text
    logdir = tmp_path / "logs"
    logdir.mkdir()
    remote = tmp_path / "remote"
    remote.mkdir()
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    tb = TensorBoardProcess(logdir, ["--rsync_source", f"r={remote}/", "--rsync_staging",
                                     tmp_path / "staging"], tmp_path / "tb.log", env=env,
                            # -I: the checkout (the working folder) stays off sys.path.
                            executable=[str(python), "-I", "-m", "tensorboard.main"])
    try:
        tb.wait_ready()
        listing = tb.get_json("/data/plugins_listing")
        assert listing["rsync"]["enabled"] and listing["rsync"]["tab_name"] == "Sync"
        status, body = tb.get("/data/plugin/rsync/index.js")
        assert status == 200 and re.search(rb"export\s+(async\s+)?function\s+render", body)
        with zipfile.ZipFile(wheel) as zf:
            assert body == zf.read("tb_rsync_plugin/frontend/index.js"), "served from the wheel"
    finally:
        tb.stop()
