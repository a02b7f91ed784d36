"""The declared `rust-version` must hold: no dependency (normal or build, of any workspace
crate) may declare a newer one. The toolchain of that version cannot be fetched here (no
rustup server), so this check and clippy's `incompatible_msrv` lint (which reads the same
field) are what keeps the declaration honest."""

import json
import subprocess
import sys


def ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")[:3])


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
ours = {p["id"]: p for p in meta["packages"] if p["id"] in meta["workspace_members"]}
declared = {ver(p["rust_version"]) for p in ours.values()}
if len(declared) != 1:
    sys.exit(f"msrv: workspace crates declare different rust-versions: {sorted(declared)}")
msrv = declared.pop()
# runtime graph only: dev-dependencies (criterion, ...) are built by developers on stable
runtime: set[str] = set()
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
todo = list(ours)
while todo:
    pid = todo.pop()
    if pid in runtime:
        continue
    runtime.add(pid)
    for d in nodes[pid]["deps"]:
        if any(k["kind"] in (None, "build") for k in d["dep_kinds"]):
            todo.append(d["pkg"])
bad = [
    f"{p['name']} {p['version']} needs {p['rust_version']}"
    for p in meta["packages"]
    if p["id"] in runtime and p.get("rust_version") and ver(p["rust_version"]) > msrv
]
if bad:
    sys.exit(
        "msrv: declared rust-version " + ".".join(map(str, msrv)) + " is false: " + "; ".join(bad)
    )
print("msrv: every runtime dependency builds with rust " + ".".join(map(str, msrv)))
