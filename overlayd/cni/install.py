"""Install the ``overlay`` plugin (and optionally a conflist) on a node.

The plugin is installed as a zipapp: one executable file holding the few modules it
imports, each with a precompiled ``.pyc`` (unchecked hash, so no source stat or compile at
run time), behind the shebang ``#!<python> -IS``. The host's Python runs it with isolated
mode and without ``site``: no virtualenv, no PYTHONPATH, nothing from the environment a
runtime passes decides what code runs as root. Files are replaced atomically (temp file +
rename), so a runtime never executes a half-written plugin or reads a half-written conflist.

Usage (the Kubernetes init container runs this)::

    python -m overlayd.cni.install --bin-dir /host/opt/cni/bin \
        [--python /usr/bin/python3] [--conflist FILE --conf-dir /host/etc/cni/net.d]
"""

from __future__ import annotations

import argparse
import json
import os
import py_compile
import shutil
import tempfile
import zipapp
from pathlib import Path

PLUGIN_NAME = "overlay"
DEFAULT_PYTHON = "/usr/bin/python3"
# Everything ``overlayd.cni.plugin`` imports from this project; test_install runs the
# zipapp, so a module missing here fails a test rather than a node.
PLUGIN_MODULES = (
    "overlayd/__init__.py",
    "overlayd/values/errors.py",
    "overlayd/values/lease_rules.py",
    "overlayd/values/registration.py",
    "overlayd/values/text.py",
    "overlayd/disk/atomic.py",
    "overlayd/disk/subnet_file.py",
    "overlayd/cni/__init__.py",
    "overlayd/cni/cache.py",
    "overlayd/cni/delegate.py",
    "overlayd/cni/errors.py",
    "overlayd/cni/names.py",
    "overlayd/cni/netconf.py",
    "overlayd/cni/plugin.py",
    "overlayd/cni/spec.py",
)
_MAIN = "from overlayd.cni.plugin import main\nraise SystemExit(main())\n"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _compile(source: Path) -> None:
    py_compile.compile(
        str(source),
        cfile=str(source.with_suffix(".pyc")),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


def build_zipapp(target: Path, python: str = DEFAULT_PYTHON) -> None:
    """Write the plugin zipapp to ``target`` (atomically, mode 0755)."""
    with tempfile.TemporaryDirectory(prefix="overlay-cni-") as tmp:
        staging = Path(tmp) / "app"
        for module in PLUGIN_MODULES:
            destination = staging / module
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_SOURCE_ROOT / module, destination)
            _compile(destination)
        (staging / "__main__.py").write_text(_MAIN)
        _compile(staging / "__main__.py")
        partial = target.with_name(f".{target.name}.tmp")
        zipapp.create_archive(staging, partial, interpreter=f"{python} -IS")
        os.chmod(partial, 0o755)
        os.replace(partial, target)


def install_conflist(conflist: Path, conf_dir: Path) -> Path:
    """Copy a conflist into the runtime's config directory (validated, atomically)."""
    text = conflist.read_text()
    json.loads(text)  # refuse to install a file the runtime could not parse
    conf_dir.mkdir(parents=True, exist_ok=True)
    target = conf_dir / conflist.name
    partial = conf_dir / f".{conflist.name}.tmp"
    partial.write_text(text)
    os.chmod(partial, 0o644)
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the overlay CNI plugin.")
    parser.add_argument("--bin-dir", type=Path, required=True, help="CNI plugin directory")
    parser.add_argument(
        "--python", default=DEFAULT_PYTHON, help="the node's Python (3.11+) that runs the plugin"
    )
    parser.add_argument("--conflist", type=Path, help="conflist file to install too")
    parser.add_argument("--conf-dir", type=Path, help="CNI config directory for --conflist")
    args = parser.parse_args(argv)
    if (args.conflist is None) != (args.conf_dir is None):
        parser.error("--conflist and --conf-dir go together")
    args.bin_dir.mkdir(parents=True, exist_ok=True)
    build_zipapp(args.bin_dir / PLUGIN_NAME, args.python)
    print(f"installed {args.bin_dir / PLUGIN_NAME} (runs with {args.python} -IS)")
    if args.conflist is not None:
        print(f"installed {install_conflist(args.conflist, args.conf_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
