"""The core never imports the CLI layer (STYLE.md section 1): checked in a fresh interpreter."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("mufasa_cli.mfl.train, mufasa_cli.runtime.loop, mufasa_cli.metrics.ranking", ("typer", "rich", "yaml")),
        ("mufasa_cli.data.prepare", ("typer", "rich")),  # data/ reads custom YAML schemas
    ],
)
def test_core_modules_do_not_import_the_cli_layer(modules, forbidden):
    code = f"import sys\nimport {modules}\nprint(','.join(m for m in {forbidden!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{modules} import {out}"
