"""files.py: no process side effects (the umask is neither read nor changed), new files get the umask's modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, os, sys
from pathlib import Path
calls = []
real = os.umask
os.umask = lambda mask: calls.append(mask) or real(mask)
real(0o027)
import pathoucc.files as files
out = Path(sys.argv[1])
files.write_text(out / "a.txt", "x")
with files.atomic_dir(out / "folder") as tmp:
    (tmp / "inside.txt").write_text("y")
modes = [oct(path.stat().st_mode & 0o777) for path in (out / "a.txt", out / "folder")]
print(json.dumps({"calls": calls, "umask": oct(real(0o027)), "modes": modes}))
"""


def test_files_never_touch_the_umask_and_writes_follow_it(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["calls"] == [] and seen["umask"] == "0o27"  # import and writes: no os.umask call, umask unchanged
    assert seen["modes"] == ["0o640", "0o750"]  # 0o666 / 0o777 less the umask, as for any new file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]  # no temporary left behind
