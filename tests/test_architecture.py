"""The import contracts of pyproject.toml: components share only `faashub`.

The gateway, the queue-worker, the provider and the connectors are deployed
apart, so none may import another's modules. What they share lives in the
`faashub` package, which imports no component outside its CLI. import-linter
checks the contracts over the real import graph.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_components_import_only_the_shared_package() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--no-cache",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout
